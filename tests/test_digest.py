"""The digest email: which posts, subject and preheader, rendering once with reader
placeholders, the HTML and text it makes, author templates, and `newsletter preview-digest`."""

from __future__ import annotations

import email
import hashlib
import re
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import lxml.etree
import lxml.html
import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter import create_app, digest, placeholders, rendering
from newsletter.appctx import get_services
from newsletter.config import ConfigError
from newsletter.db import db
from newsletter.mail import ReaderParts, reader_greeting
from newsletter.models import Campaign, Post
from newsletter.rendering import RenderedEmail, TemplateError
from newsletter.sending import campaign_template
from newsletter.services import Services
from tests.conftest import BLOG_ORIGIN, PUBLIC_URL, FrozenClock

POSTAL_ADDRESS = "12 Willow Lane, Springfield"  # as in conftest's config
PRIVACY_URL = f"{BLOG_ORIGIN}/privacy"

SAMPLE_POSTS: list[dict[str, Any]] = [
    {
        "source_key": "rest-is-not-a-reward",
        "title": "Rest Is Not a Reward",
        "subtitle": "Why slowing down is part of the work, not the prize for finishing it",
        "summary": "Many of us treat rest as something we earn once the list is done. This week: "
        "what happens in the body when rest becomes a daily practice.",
        "content_html": "<p>Rest is a practice.</p><ul><li>Breathe in for four.</li>"
        "<li>Breathe out for six.</li></ul>"
        f'<p>More on <a href="{BLOG_ORIGIN}/breath">the breath</a>.</p>',
        "image_url": f"{BLOG_ORIGIN}/images/sunrise.jpg",
        "days_ago": 1,
    },
    {
        "source_key": "a-letter-to-your-tired-self",
        "title": "A Letter to Your Tired Self",
        "subtitle": "Writing as a way back to gentleness",
        "summary": "When you are worn out, the inner voice gets sharp. Answer it on paper, in "
        "the words of someone who loves you.",
        "content_html": "<p>Take a pen and a sheet of paper.</p>",
        "image_url": "/images/letter.jpg",  # relative: made absolute against the post URL
        "days_ago": 4,
    },
    {
        "source_key": "five-breaths",
        "title": "Five Breaths at the Kitchen Table",
        "subtitle": None,
        "summary": "No mat, no app. Five slow breaths between the day's work and the evening.",
        "content_html": "<p>Sit down. Feet on the floor.</p>",
        "image_url": None,
        "days_ago": 7,
    },
]


def add_post(
    session: Session,
    clock: FrozenClock,
    source_key: str,
    *,
    days_ago: float | None = 1,
    **fields: Any,
) -> Post:
    """Insert a synced post directly, as the posts engine would have stored it."""
    values: dict[str, Any] = {
        "source_key": source_key,
        "url": f"{BLOG_ORIGIN}/posts/{source_key}",
        "title": source_key.replace("-", " ").title(),
        "subtitle": None,
        "summary": f"A few calm words about {source_key}.",
        "content_html": f"<p>The whole post about {source_key}.</p>",
        "image_url": None,
        "published_at": None if days_ago is None else clock() - timedelta(days=days_ago),
        "first_seen_at": clock(),
        "content_hash": hashlib.sha256(source_key.encode()).hexdigest(),
    }
    values.update(fields)
    post = Post(**values)
    session.add(post)
    session.commit()
    return post


def add_samples(session: Session, clock: FrozenClock) -> list[Post]:
    return [add_post(session, clock, **dict(sample)) for sample in SAMPLE_POSTS]


def rendered_samples(session: Session, services: Services, clock: FrozenClock) -> RenderedEmail:
    return digest.render_digest(add_samples(session, clock), services)


def parse(html: str) -> Any:
    return lxml.html.document_fromstring(html)


def personalised(rendered: RenderedEmail, services: Services, reader: ReaderParts) -> EmailMessage:
    template = campaign_template(services, rendered, services.clock())
    data = template.personalise(reader)
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None
    return part.get_content()  # type: ignore[no-any-return]


def reader(n: int, name: str | None = None) -> ReaderParts:
    return ReaderParts(
        recipient=f"reader{n}@example.com",
        unsubscribe_url=f"{PUBLIC_URL}/unsubscribe/token-{n}",
        message_id=f"<digest-{n}@blog.example.com>",
        greeting=reader_greeting(name),
    )


# --- which posts ----------------------------------------------------------------------------


def test_selects_new_posts_newest_first(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    add_post(session, clock, "older", days_ago=5)
    add_post(session, clock, "newest", days_ago=0.5)
    add_post(session, clock, "middle", days_ago=2)
    chosen = digest.select_digest_posts(session, services)
    assert [p.source_key for p in chosen] == ["newest", "middle", "older"]


def test_drafts_future_archived_and_already_mailed_posts_wait(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    add_post(session, clock, "ready", days_ago=1)
    add_post(session, clock, "undated", days_ago=None)
    add_post(session, clock, "draft", draft=True)
    add_post(session, clock, "future", days_ago=-1)
    add_post(session, clock, "archived", archived=True)
    mailed = add_post(session, clock, "mailed")
    digest.create_digest_campaign(session, services, [mailed])
    session.commit()
    chosen = {p.source_key for p in digest.select_digest_posts(session, services)}
    assert chosen == {"ready", "undated"}

    clock.advance(days=2)  # the future post's day has come
    assert "future" in {p.source_key for p in digest.select_digest_posts(session, services)}


def test_a_digest_has_at_most_the_configured_number_of_posts(
    config: dict[str, Any], app: Flask, session: Session, clock: FrozenClock
) -> None:
    for n in range(12):
        add_post(session, clock, f"post-{n}", days_ago=n + 1)
    assert len(digest.select_digest_posts(session, get_services(app))) == 10  # the default
    get_services(app).config["DIGEST_MAX_POSTS"] = 3
    chosen = digest.select_digest_posts(session, get_services(app))
    assert [p.source_key for p in chosen] == ["post-0", "post-1", "post-2"]


# --- subject and preheader ------------------------------------------------------------------


def test_subject_is_the_title_of_a_single_post(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    post = add_post(session, clock, "slow-mornings", title="Slow Mornings")
    assert digest.render_digest([post], services).subject == "Slow Mornings"


def test_subject_names_the_first_post_and_how_many_more(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    rendered = rendered_samples(session, services, clock)
    assert rendered.subject == "Rest Is Not a Reward + 2 more from Calm Corner"


def test_subject_follows_a_custom_template(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    services.config["DIGEST_SUBJECT"] = (
        "{{ site_name }}: {{ count }} new {{ 'post' if count == 1 else 'posts' }}, "
        "starting with {{ first.title }}"
    )
    rendered = rendered_samples(session, services, clock)
    assert rendered.subject == "Calm Corner: 3 new posts, starting with Rest Is Not a Reward"


def test_subject_template_error_names_the_setting(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    services.config["DIGEST_SUBJECT"] = "{{ first.no_such_field }}"
    with pytest.raises(TemplateError, match="NEWSLETTER_DIGEST_SUBJECT"):
        rendered_samples(session, services, clock)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("DIGEST_SUBJECT", "{{ first.title", "NEWSLETTER_DIGEST_SUBJECT: is not a valid Jinja"),
        ("DIGEST_SUBJECT", "  ", "NEWSLETTER_DIGEST_SUBJECT: must not be empty"),
        ("DIGEST_PREHEADER", "{% if %}", "NEWSLETTER_DIGEST_PREHEADER: is not a valid Jinja"),
        ("DIGEST_STYLE", "fancy", "NEWSLETTER_DIGEST_STYLE: expected summary or full"),
        ("DIGEST_MAX_POSTS", "0", "NEWSLETTER_DIGEST_MAX_POSTS: expected a number from 1"),
        ("DIGEST_MAX_POSTS", "ten", "NEWSLETTER_DIGEST_MAX_POSTS: expected a number"),
    ],
)
def test_bad_digest_settings_stop_start_up(
    config: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv("NEWSLETTER_INSTANCE_PATH", str(tmp_path / "instance"))
    with pytest.raises(ConfigError) as caught:
        create_app({**config, setting: value})
    assert str(caught.value).startswith(message)


def test_digest_settings_from_the_environment(
    config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("NEWSLETTER_DIGEST_MAX_POSTS", "4")
    monkeypatch.setenv("NEWSLETTER_DIGEST_STYLE", "Full")
    app = create_app(config)
    assert app.config["DIGEST_MAX_POSTS"] == 4
    assert app.config["DIGEST_STYLE"] == "full"
    with app.app_context():
        db.engine.dispose()


def test_preheader_is_the_first_subtitle_else_the_summary_start(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    posts = add_samples(session, clock)
    assert digest.render(posts, services).preheader == SAMPLE_POSTS[0]["subtitle"]
    long_summary = " ".join(["breathe"] * 60)
    plain = add_post(session, clock, "plain", subtitle=None, summary=long_summary)
    preheader = digest.render([plain], services).preheader
    assert preheader.startswith("breathe breathe") and preheader.endswith("…")
    assert len(preheader) <= digest.PREHEADER_CHARS + 1


def test_preheader_is_in_the_html_but_hidden(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    services.config["DIGEST_PREHEADER"] = "{{ count }} calm reads for your week"
    rendered = rendered_samples(session, services, clock)
    (hidden,) = parse(rendered.html).find_class("preheader")
    assert hidden.text_content().startswith("3 calm reads for your week")
    assert "display:none" in hidden.get("style").replace(" ", "")
    assert "3 calm reads" not in rendered.text


# --- the rendered email ---------------------------------------------------------------------


def test_html_has_inlined_styles_and_nothing_active(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    doc = parse(rendered_samples(session, services, clock).html)
    assert doc.xpath("//script") == []
    assert doc.xpath("//link") == []
    assert not doc.xpath("//@*[starts-with(name(), 'on')]")
    assert doc.get("lang") == "en"
    for element in doc.xpath("//body | //td[@class] | //p | //h2 | //a"):
        assert element.get("style"), f"no inline style on {lxml.html.tostring(element)[:80]!r}"
    # Only what cannot be inlined stays in <style>: the mobile and dark-mode media queries.
    (style,) = doc.xpath("//style")
    assert "@media (prefers-color-scheme: dark)" in style.text
    assert re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", style.text).strip() == ""


def test_layout_tables_are_presentational_and_images_have_alt_text(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    doc = parse(rendered_samples(session, services, clock).html)
    tables = doc.xpath("//table")
    assert tables and all(t.get("role") == "presentation" for t in tables)
    images = doc.xpath("//img")
    assert [img.get("alt") for img in images] == [
        SAMPLE_POSTS[0]["title"],
        SAMPLE_POSTS[1]["title"],
    ]
    assert all(img.get("width") == "536" for img in images)
    # 600 pixels wide: fluid up to max-width for most clients, a fixed table for Outlook.
    (container,) = doc.find_class("container")
    assert "max-width:600px" in container.get("style").replace(" ", "")
    (ghost,) = [c.text for c in doc.iter(lxml.etree.Comment) if "[if mso]><table" in c.text]
    assert 'width="600"' in ghost


def test_every_link_and_image_is_absolute(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    rendered = rendered_samples(session, services, clock)
    doc = parse(rendered.html)
    links = [a.get("href") for a in doc.xpath("//a")]
    # Before personalising, the only non-URL is the stand-in for the reader's unsubscribe link.
    assert links.count(placeholders.UNSUBSCRIBE_URL) == 1
    for url in [*links, *(img.get("src") for img in doc.xpath("//img"))]:
        assert url == placeholders.UNSUBSCRIBE_URL or re.match(r"https?://[^/]+", url), url
    assert f"{BLOG_ORIGIN}/posts/a-letter-to-your-tired-self" in links
    assert doc.xpath("//img/@src")[1] == f"{BLOG_ORIGIN}/images/letter.jpg"

    message = personalised(rendered, services, reader(1))
    doc = parse(body(message, "html"))
    for url in [*doc.xpath("//a/@href"), *doc.xpath("//img/@src")]:
        assert re.match(r"https?://[^/]+", url), url


def test_post_parts_are_shown_with_a_read_more_button(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    doc = parse(rendered_samples(session, services, clock).html)
    assert doc.find_class("site-name")[0].text_content() == "Calm Corner"
    titles = [h.text_content() for h in doc.xpath("//h2")]
    assert titles == [p["title"] for p in SAMPLE_POSTS]
    title_links = doc.xpath("//h2/a/@href")
    assert title_links == [f"{BLOG_ORIGIN}/posts/{p['source_key']}" for p in SAMPLE_POSTS]
    buttons = [a for a in doc.xpath("//a") if a.text_content() == "Read More"]
    assert [a.get("href") for a in buttons] == title_links
    assert buttons[0].get("aria-label") == "Read More: Rest Is Not a Reward"
    summaries = [p.text_content() for p in doc.find_class("post-summary")]
    assert summaries == [p["summary"] for p in SAMPLE_POSTS]
    subtitles = [p.text_content() for p in doc.find_class("post-subtitle")]
    assert subtitles == [p["subtitle"] for p in SAMPLE_POSTS if p["subtitle"]]
    assert doc.find_class("post-date")[0].text_content() == "1 November 2026"
    assert not doc.find_class("post-content")  # summaries, not whole posts, by default


def test_footer_says_why_and_links_unsubscribe_and_privacy(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    (footer,) = parse(rendered_samples(session, services, clock).html).find_class("footer")
    words = footer.text_content()
    assert "because you subscribed" in words and "Calm Corner" in words
    assert POSTAL_ADDRESS in words
    assert {a.text_content(): a.get("href") for a in footer.xpath(".//a")} == {
        "Unsubscribe": placeholders.UNSUBSCRIBE_URL,
        "Privacy Policy": PRIVACY_URL,
    }


def test_reader_parts_are_placeholders_in_the_rendered_digest(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    rendered = rendered_samples(session, services, clock)
    doc = parse(rendered.html)
    assert doc.find_class("greeting")[0].text_content() == placeholders.GREETING
    assert rendered.html.count(placeholders.UNSUBSCRIBE_URL) == 1
    assert rendered.text.count(placeholders.UNSUBSCRIBE_URL) == 1
    assert rendered.text.splitlines()[3] == placeholders.GREETING
    assert "__NEWSLETTER_" not in rendered.subject


def test_each_reader_gets_their_own_unsubscribe_link_and_greeting(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    rendered = rendered_samples(session, services, clock)
    for n, name in ((1, "Ada"), (2, None)):
        message = personalised(rendered, services, reader(n, name))
        raw = message.as_string()
        assert "__NEWSLETTER_" not in raw
        own = f"{PUBLIC_URL}/unsubscribe/token-{n}"
        assert message["To"] == f"reader{n}@example.com"
        assert message["List-Unsubscribe"] == f"<{own}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        doc = parse(body(message, "html"))
        assert doc.xpath("//a[text()='Unsubscribe']/@href") == [own]
        greeting = "Hi Ada," if name else "Hello,"
        assert doc.find_class("greeting")[0].text_content() == greeting
        text = body(message, "plain")
        assert f"Unsubscribe: {own}" in text and greeting in text
        other = f"token-{3 - n}"
        assert other not in raw


def test_text_part_is_complete_and_plain(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    text = rendered_samples(session, services, clock).text
    for post in SAMPLE_POSTS:
        assert post["title"] in text
        if post["subtitle"]:
            assert post["subtitle"] in text
        assert f"Read More: {BLOG_ORIGIN}/posts/{post['source_key']}" in text
        first_words = " ".join(post["summary"].split()[:6])
        assert first_words in " ".join(text.split())
    assert f"Unsubscribe: {placeholders.UNSUBSCRIBE_URL}" in text
    assert f"Privacy Policy: {PRIVACY_URL}" in text
    assert POSTAL_ADDRESS in text
    assert "because you subscribed" in text
    assert not re.search(r"</?[a-z]+[\s>]", text)
    assert all(len(line) <= 78 or "http" in line for line in text.splitlines())


def test_summary_is_cut_to_about_sixty_words(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    words = [f"word{n}" for n in range(100)]
    post = add_post(session, clock, "long", summary=" ".join(words))
    rendered = digest.render_digest([post], services)
    (summary,) = parse(rendered.html).find_class("post-summary")
    assert summary.text_content() == " ".join(words[:60]) + "…"
    assert "word60" not in rendered.text and "word59…" in rendered.text


def test_summary_falls_back_to_the_post_text(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    post = add_post(
        session,
        clock,
        "no-summary",
        summary=None,
        content_html="<h2>Begin</h2><p>Sit <em>quietly</em> for a while.</p>",
    )
    (summary,) = parse(digest.render_digest([post], services).html).find_class("post-summary")
    assert summary.text_content() == "Begin Sit quietly for a while."


def test_full_style_puts_the_whole_post_in(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    services.config["DIGEST_STYLE"] = "full"
    rendered = rendered_samples(session, services, clock)
    doc = parse(rendered.html)
    assert not doc.find_class("post-summary")
    first = doc.find_class("post-content")[0]
    assert [li.text_content() for li in first.xpath(".//li")] == [
        "Breathe in for four.",
        "Breathe out for six.",
    ]
    assert all(li.get("style") for li in first.xpath(".//li"))  # inlined like the rest
    assert first.xpath(".//a/@href") == [f"{BLOG_ORIGIN}/breath"]
    assert "Many of us treat rest" not in rendered.text
    assert "- Breathe in for four.\n- Breathe out for six." in rendered.text
    assert f"More on the breath ({BLOG_ORIGIN}/breath)." in rendered.text


def test_full_style_shows_an_image_from_the_post_body_once(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    image = f"{BLOG_ORIGIN}/images/teapot.jpg"
    post = add_post(
        session,
        clock,
        "tea",
        image_url=image,
        content_html=f'<p>Steep.</p><p><img src="{image}" alt="A teapot"></p>',
    )
    services.config["DIGEST_STYLE"] = "full"
    assert parse(digest.render_digest([post], services).html).xpath("//img/@src") == [image]
    services.config["DIGEST_STYLE"] = "summary"
    assert parse(digest.render_digest([post], services).html).xpath("//img/@alt") == ["Tea"]


def test_full_style_never_carries_active_content(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    services.config["DIGEST_STYLE"] = "full"
    post = add_post(
        session,
        clock,
        "unsafe",
        content_html=(
            '<p onclick="steal()">Hello<script>alert(1)</script></p>'
            '<a href="javascript:alert(2)">click</a><iframe src="https://evil.example"></iframe>'
            '<style>p{}</style><form action="https://evil.example"><input></form>'
        ),
    )
    html = digest.render_digest([post], services).html
    doc = parse(html)
    assert not doc.xpath("//script | //iframe | //form | //input | //@onclick")
    assert "javascript:" not in html and "alert" not in html


def test_titles_and_text_are_escaped_in_html_and_raw_in_text(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    title = "Less <b>more</b> & \"quotes\" 'too'"
    post = add_post(
        session,
        clock,
        "escape",
        title=title,
        subtitle="Tea & <biscuits>",
        image_url=f"{BLOG_ORIGIN}/tea.jpg",
        summary="1 < 2 & 3 > 2, wrap in <em>",
    )
    rendered = digest.render_digest([post], services)
    assert rendered.subject == title
    doc = parse(rendered.html)
    assert doc.xpath("//h2")[0].text_content() == title
    assert doc.xpath("//h2//b") == []
    assert doc.xpath("//img/@alt") == [title]
    assert doc.find_class("post-subtitle")[0].text_content() == "Tea & <biscuits>"
    assert doc.find_class("post-summary")[0].text_content() == "1 < 2 & 3 > 2, wrap in <em>"
    assert "<b>more</b>" not in rendered.html and "<biscuits>" not in rendered.html
    assert title in rendered.text and "1 < 2 & 3 > 2, wrap in <em>" in rendered.text
    assert "&amp;" not in rendered.text


def test_unsafe_or_relative_image_and_link_urls(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    odd = add_post(session, clock, "odd", url="/posts/odd", image_url="javascript:alert(1)")
    data = add_post(session, clock, "data", url=None, image_url="data:image/png;base64,AAAA")
    views = digest.digest_posts([odd, data], services.config)
    assert views[0].url == f"{BLOG_ORIGIN}/posts/odd" and views[0].image_url is None
    assert views[1].url == BLOG_ORIGIN and views[1].image_url is None


def test_text_contrast_is_sufficient(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    doc = parse(rendered_samples(session, services, clock).html)
    checked = 0
    for element in doc.xpath("//body//*[contains(@style, 'color:#')]"):
        foreground = _style(element, "color")
        if foreground is None or not element.text_content().strip():
            continue
        ratio = _contrast(foreground, _background(element))
        assert ratio >= 4.5, (lxml.html.tostring(element)[:120], ratio)
        checked += 1
    assert checked > 10


def test_dark_mode_colours_keep_their_contrast(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    doc = parse(rendered_samples(session, services, clock).html)
    css = doc.xpath("//style")[0].text
    dark = css[css.index("prefers-color-scheme: dark") :]
    rules: dict[str, dict[str, str]] = {}
    for selectors, body_ in re.findall(r"([^{}]+)\{([^{}]*)\}", dark):
        declarations = dict(re.findall(r"([\w-]+)\s*:\s*(#[0-9a-fA-F]{3,6})", body_))
        for selector in selectors.split(","):
            rules.setdefault(selector.strip(), {}).update(declarations)
    card, page = rules[".card"]["background-color"], rules[".wrapper"]["background-color"]
    for selector in (".content", ".intro", "h2", ".post-title a", "a", ".post-subtitle"):
        assert _contrast(rules[selector]["color"], card) >= 4.5, selector
    for selector in (".footer", ".tagline", ".site-name"):
        assert _contrast(rules[selector]["color"], page) >= 4.5, selector
    assert _contrast(rules[".post-date"]["color"], card) >= 4.5
    assert (
        _contrast(rules[".button-link"]["color"], rules[".button-cell"]["background-color"]) >= 4.5
    )


def _style(element: Any, name: str) -> str | None:
    for declaration in (element.get("style") or "").split(";"):
        key, _, value = declaration.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def _background(element: Any) -> str:
    while element is not None:
        colour = _style(element, "background-color") or element.get("bgcolor")
        if colour:
            return colour
        element = element.getparent()
    return "#ffffff"


def _contrast(first: str, second: str) -> float:
    def luminance(colour: str) -> float:
        hex_ = colour.lstrip("#")
        if len(hex_) == 3:
            hex_ = "".join(c * 2 for c in hex_)
        channels = [int(hex_[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


# --- rendering once -------------------------------------------------------------------------


def test_premailer_runs_once_per_digest_not_per_reader(
    session: Session, services: Services, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = rendering.inline_css

    def counting_inline_css(html: str) -> str:
        calls.append(len(html))
        return original(html)

    monkeypatch.setattr(rendering, "inline_css", counting_inline_css)
    rendered = rendered_samples(session, services, clock)
    template = campaign_template(services, rendered, clock())
    copies = [template.personalise(reader(n)) for n in range(5)]
    assert len(calls) == 1
    assert len(set(copies)) == 5


# --- the campaign ---------------------------------------------------------------------------


def test_create_digest_campaign_marks_posts_and_leaves_the_commit_to_the_caller(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    posts = add_samples(session, clock)
    campaign = digest.create_digest_campaign(session, services, posts)
    assert campaign.id is not None
    assert (campaign.kind, campaign.status) == ("digest", "sending")
    assert campaign.subject == "Rest Is Not a Reward + 2 more from Calm Corner"
    assert campaign.preheader == SAMPLE_POSTS[0]["subtitle"]
    assert campaign.created_at == clock()
    assert placeholders.UNSUBSCRIBE_URL in campaign.html
    assert placeholders.UNSUBSCRIBE_URL in campaign.text
    assert campaign.content_hash == digest.posts_key(posts)
    assert {p.campaign_id for p in posts} == {campaign.id}
    assert digest.select_digest_posts(session, services) == []

    session.rollback()  # nothing was committed: the sender commits with its deliveries
    assert session.scalar(select(func.count()).select_from(Campaign)) == 0
    assert len(digest.select_digest_posts(session, services)) == 3


def test_a_post_cannot_be_in_two_digests(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    post = add_post(session, clock, "once")
    digest.create_digest_campaign(session, services, [post])
    with pytest.raises(ValueError, match="already in a digest"):
        digest.create_digest_campaign(session, services, [post])
    with pytest.raises(ValueError, match="at least one post"):
        digest.create_digest_campaign(session, services, [])


def test_compose_next_digest(session: Session, services: Services, clock: FrozenClock) -> None:
    assert digest.compose_next_digest(session, services) is None
    add_samples(session, clock)
    campaign = digest.compose_next_digest(session, services)
    assert campaign is not None and campaign.subject.startswith("Rest Is Not a Reward")
    session.commit()
    assert digest.compose_next_digest(session, services) is None


# --- the author's own templates -------------------------------------------------------------


def _override(config: dict[str, Any], tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "my-emails"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    config["EMAIL_TEMPLATES"] = str(folder)
    return folder


def test_author_templates_override_the_defaults(
    config: dict[str, Any], tmp_path: Path, clock: FrozenClock
) -> None:
    _override(
        config,
        tmp_path,
        {
            "digest.html": (
                '{% extends "layout.html" %}{% block content %}'
                '<p class="mine">{{ greeting }} Fresh from the garden:</p>'
                '{% for post in posts %}<h2><a href="{{ post.url }}">{{ post.title }}</a></h2>'
                "{% endfor %}{% endblock %}"
            )
        },
    )
    test_app = create_app(config)
    try:
        with test_app.app_context():
            rendered = digest.render_digest(
                add_samples(db.session(), clock), get_services(test_app)
            )
    finally:
        test_app.extensions["newsletter.outbox_sender"].stop()
        with test_app.app_context():
            db.engine.dispose()
    doc = parse(rendered.html)
    assert doc.find_class("mine")[0].text_content().endswith("Fresh from the garden:")
    assert doc.find_class("mine")[0].get("style")  # the shared stylesheet still applies
    assert placeholders.UNSUBSCRIBE_URL in rendered.html  # the shared footer still applies
    assert "Read More: " in rendered.text  # digest.txt was not overridden


@pytest.mark.parametrize(
    ("template", "line", "words"),
    [
        (
            '{% extends "layout.html" %}\n{% block content %}\n{% for post in posts %}\n'
            "{{ post.title }}\n{% endblock %}\n",
            5,
            "endfor",
        ),
        (
            '{% extends "layout.html" %}\n{% block content %}\n\n{{ post.no_such_thing }}\n'
            "{% endblock %}\n",
            4,
            "undefined",
        ),
    ],
)
def test_broken_author_template_is_reported_with_file_and_line(
    config: dict[str, Any],
    tmp_path: Path,
    app: Flask,
    session: Session,
    clock: FrozenClock,
    template: str,
    line: int,
    words: str,
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "digest.html").write_text(template, encoding="utf-8")
    services = get_services(app)
    services.config["EMAIL_TEMPLATES"] = str(folder)
    services._renderer = None  # pick up the changed folder
    with pytest.raises(TemplateError) as caught:
        rendered_samples(session, services, clock)
    problem = caught.value
    assert problem.filename is not None and problem.filename.endswith("digest.html")
    assert problem.lineno == line
    assert words in str(problem) and f"line {line}" in str(problem)


# --- newsletter preview-digest --------------------------------------------------------------


@pytest.fixture
def posts_dir(config: dict[str, Any], tmp_path: Path) -> Path:
    """An empty Markdown folder as the post source; ask for it before ``app``."""
    folder = tmp_path / "posts"
    folder.mkdir()
    config["POSTS_DIR"] = str(folder)
    return folder


def write_markdown_posts(folder: Path) -> None:
    """The sample posts as an author on a static-site generator would write them."""
    for n, sample in enumerate(SAMPLE_POSTS):
        front = {
            "title": sample["title"],
            "subtitle": sample["subtitle"],
            "date": f"2026-11-0{1 - n if n == 0 else 1}T08:00:00Z"
            if n == 0
            else f"2026-10-{29 - 3 * n}T08:00:00Z",
            "slug": f"posts/{sample['source_key']}",
            "summary": sample["summary"],
            "image": sample["image_url"],
        }
        lines = "".join(
            f"{key}: {value!r}\n" if isinstance(value, str) else "" for key, value in front.items()
        )
        (folder / f"{sample['source_key']}.md").write_text(
            f"---\n{lines}---\nRest is a practice.\n\n- Breathe in for four.\n", encoding="utf-8"
        )


def first_sync(app: Flask) -> None:
    """The install's first sync, on the still empty folder: nothing is archived."""
    from newsletter.posts import sync_posts

    with app.app_context():
        sync_posts(db.session(), get_services(app))


def test_preview_digest_writes_html_text_and_a_complete_eml(
    posts_dir: Path, app: Flask, runner: FlaskCliRunner, session: Session, tmp_path: Path
) -> None:
    first_sync(app)
    write_markdown_posts(posts_dir)
    out = tmp_path / "out"
    result = runner.invoke(args=["preview-digest", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "Rest Is Not a Reward + 2 more from Calm Corner" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["digest.eml", "digest.html", "digest.txt"]

    message = email.message_from_bytes((out / "digest.eml").read_bytes(), policy=policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    for header in (
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ):
        assert message[header], header
    assert message["From"] == "Calm Corner <hello@blog.example.com>"
    assert message["Subject"] == "Rest Is Not a Reward + 2 more from Calm Corner"
    unsubscribe = message["List-Unsubscribe"].strip("<>")
    assert unsubscribe.startswith(f"{PUBLIC_URL}/unsubscribe/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert b"__NEWSLETTER_" not in (out / "digest.eml").read_bytes()

    html = (out / "digest.html").read_text(encoding="utf-8")
    assert html == body(message, "html").replace("\r\n", "\n")
    doc = parse(html)
    assert doc.xpath("//a[text()='Unsubscribe']/@href") == [unsubscribe]
    assert doc.find_class("greeting")[0].text_content() == "Hi Ada,"
    assert [h.text_content() for h in doc.xpath("//h2")] == [p["title"] for p in SAMPLE_POSTS]
    assert doc.xpath("//img/@src") == [
        f"{BLOG_ORIGIN}/images/sunrise.jpg",
        f"{BLOG_ORIGIN}/images/letter.jpg",
    ]
    text = (out / "digest.txt").read_text(encoding="utf-8")
    assert text == body(message, "plain").replace("\r\n", "\n")
    assert f"Unsubscribe: {unsubscribe}" in text
    assert f"Read More: {BLOG_ORIGIN}/posts/five-breaths" in text

    session.expire_all()  # a preview marks nothing as mailed
    assert len(digest.select_digest_posts(session, get_services(app))) == 3
    assert session.scalar(select(func.count()).select_from(Campaign)) == 0


def test_preview_digest_defaults_to_a_preview_folder_and_can_open_it(
    posts_dir: Path,
    app: Flask,
    runner: FlaskCliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[str] = []

    def fake_open(url: str, *args: Any, **kwargs: Any) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr("webbrowser.open", fake_open)
    first_sync(app)
    write_markdown_posts(posts_dir)
    result = runner.invoke(args=["preview-digest", "--open"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "preview" / "digest.html"  # the app fixture runs in tmp_path
    assert written.is_file()
    assert opened == [written.resolve().as_uri()]


def test_preview_digest_with_nothing_new_writes_nothing(
    posts_dir: Path, app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    # A new install's first sync records the posts already there as published before.
    write_markdown_posts(posts_dir)
    out = tmp_path / "out"
    first = runner.invoke(args=["preview-digest", "--output", str(out)])
    assert first.exit_code == 0, first.output
    assert "No new posts" in first.output and "nothing written" in first.output
    assert "first sync" in first.output and "3 published posts were recorded" in first.output
    again = runner.invoke(args=["preview-digest", "--output", str(out)])
    assert again.exit_code == 0, again.output
    assert again.output.strip().splitlines() == [
        "No new posts since the last digest: nothing to preview, nothing written."
    ]
    assert not out.exists()


def test_preview_digest_backfills_on_a_first_sync(
    posts_dir: Path, app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    write_markdown_posts(posts_dir)
    out = tmp_path / "out"
    result = runner.invoke(args=["preview-digest", "--backfill", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "Rest Is Not a Reward + 1 more from Calm Corner" in result.output
    assert (out / "digest.eml").is_file()


def test_preview_digest_without_a_post_source_says_what_to_set(
    runner: FlaskCliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(args=["preview-digest", "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "NEWSLETTER_POSTS_DIR" in result.output and len(result.output.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_preview_digest_reports_a_template_problem_in_one_line(
    posts_dir: Path, app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "digest.txt").write_text(
        "{{ greeting }}\n\n\n{{ posts | no_such_filter }}\n", encoding="utf-8"
    )
    services = get_services(app)
    services.config["EMAIL_TEMPLATES"] = str(folder)
    services._renderer = None
    first_sync(app)
    write_markdown_posts(posts_dir)
    out = tmp_path / "out"
    result = runner.invoke(args=["preview-digest", "--output", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert str(folder / "digest.txt") in lines[0] and "line 4" in lines[0]
    assert "no_such_filter" in lines[0]
    assert not out.exists()


# Every stand-in the sender fills per reader, including the To header's own.
EVERY_PLACEHOLDER = [
    placeholders.UNSUBSCRIBE_URL,
    placeholders.GREETING,
    placeholders.RECIPIENT,
    placeholders.MESSAGE_ID,
    placeholders.CONFIRM_URL,
    placeholders.DATE,
    "__NEWSLETTER_TO_HEADER__",
]


def test_placeholder_text_in_a_post_never_becomes_a_readers_data(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    every = " ".join(EVERY_PLACEHOLDER)
    services.config["DIGEST_STYLE"] = "full"
    post = add_post(
        session,
        clock,
        "hostile-feed",
        title=f"Title {every}",
        subtitle=f"Subtitle {every}",
        summary=f"Summary {every}",
        author=f"Author {every}",
        content_html=f"<p>Body {every}</p>"
        f'<p><a href="{BLOG_ORIGIN}/{placeholders.UNSUBSCRIBE_URL}">'
        f"link {placeholders.RECIPIENT}</a></p>",
    )
    rendered = digest.render_digest([post], services)
    name = 'Ada <b onmouseover="x">'
    message = personalised(
        rendered,
        services,
        ReaderParts(
            recipient="ada@example.com",
            unsubscribe_url=f"{PUBLIC_URL}/unsubscribe/ada-token",
            message_id="<digest-ada@blog.example.com>",
            greeting=reader_greeting(name),
            name=name,
        ),
    )
    html, text = body(message, "html"), body(message, "plain")
    # The reader's data is only where the template put it: greeting, footer, headers.
    for part in (html, text):
        assert "ada@example.com" not in part
        assert "digest-ada@blog.example.com" not in part
        assert part.count("ada-token") == 1  # the footer's Unsubscribe link, nothing else
        assert part.count("onmouseover") == 1  # in the greeting only
    assert "<b onmouseover" not in html  # and escaped there
    doc = parse(html)
    assert doc.find_class("greeting")[0].text_content().startswith("Hi Ada")
    assert "Unsubscribe:" in text and text.count("Hi Ada") == 1
    # ... and the post's text shows the literal words, harmlessly.
    shown = doc.text_content()
    readable = text.replace("\u200b", "")
    for placeholder in EVERY_PLACEHOLDER:
        assert f"Body {every}" in shown.replace("\u200b", "")
        assert placeholder in shown and placeholder in readable
    assert doc.xpath("//a[starts-with(text(), 'link')]/@href") == [
        f"{BLOG_ORIGIN}/{placeholders.UNSUBSCRIBE_URL}"
    ]

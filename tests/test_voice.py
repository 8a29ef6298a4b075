"""Issue 13: the digest carries the author's voice and her media.

A feed shaped like a hosted site builder's (tests/fixtures/feeds/site_builder.xml: RSS 2.0,
HTML in <description>, media:thumbnail, dc:creator, media:description, a YouTube, a youtu.be,
a Vimeo and an unknown iframe, images with and without width, a javascript: link, emoji) is
synced and rendered in both digest styles; each rule of the issue is checked on the result.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select

from newsletter import digest, placeholders
from newsletter.appctx import get_services
from newsletter.archive import archive_key
from newsletter.config import ConfigError, contrast_ratio
from newsletter.content.embeds import OTHER_EMBED_LABEL, PLAY_MARK, replace_embeds, youtube_id
from newsletter.db import db
from newsletter.models import SENT, Campaign, Post
from newsletter.posts import sync_posts
from newsletter.posts.feeds import parse_feed
from newsletter.rendering import RenderedEmail
from tests.conftest import BLOG_ORIGIN, PUBLIC_URL, link_in, wait_for_outbox
from tests.smtp_sink import SmtpSink

FEED = Path(__file__).parent / "fixtures" / "feeds" / "site_builder.xml"
SHOULDERS = f"{BLOG_ORIGIN}/post/softening-the-shoulders"
CUP = f"{BLOG_ORIGIN}/post/a-cup-of-something-warm"
YOUTUBE = "https://www.youtube.com/watch?v=HqFzPlGzMVY"
YOUTUBE_STILL = "https://i.ytimg.com/vi/HqFzPlGzMVY/hqdefault.jpg"


@pytest.fixture
def builder_app(make_app: Callable[..., Flask]) -> Flask:
    """An app whose post source is the site-builder feed, both posts waiting as new."""
    app = make_app(FEED_URL=str(FEED))
    with app.app_context():
        sync_posts(db.session, get_services(app), backfill=2)
    return app


def render(app: Flask, style: str = "summary", **settings: Any) -> RenderedEmail:
    with app.app_context():
        services = get_services(app)
        services.config.update(DIGEST_STYLE=style, **settings)
        posts = digest.select_digest_posts(db.session, services)
        assert [p.title for p in posts] == ["Softening the Shoulders 🌿", "A Cup of Something Warm"]
        return digest.render_digest(posts, services)


def parse(html: str) -> Any:
    return lxml.html.document_fromstring(html)


def post_tables(html: str) -> list[Any]:
    return parse(html).find_class("post")


# --- media ---------------------------------------------------------------------------------


def test_a_youtube_iframe_becomes_its_linked_still_image_with_a_play_mark_and_title(
    builder_app: Flask,
) -> None:
    html = render(builder_app, "full").html
    doc = parse(html)
    (still,) = doc.xpath(f"//a[@href='{YOUTUBE}']/img[@src='{YOUTUBE_STILL}']")
    assert (
        still.get("alt")
        == f"{PLAY_MARK} Play the video: Softening the shoulders: a guided practice"
    )
    caption_links = doc.xpath(f"//p[@class='figcaption']/a[@href='{YOUTUBE}']")
    captions = [a.text_content() for a in caption_links]
    assert captions == [f"{PLAY_MARK} Softening the shoulders: a guided practice"]
    # Nothing empty is left where the player was.
    assert not re.search(r"<figure[^>]*>\s*<div[^>]*>\s*</div>\s*</figure>", html)
    assert "<iframe" not in html


def test_youtu_be_and_nocookie_players_are_recognised_and_titleless_ones_say_watch() -> None:
    assert youtube_id("https://youtu.be/dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert youtube_id("https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ?rel=0") == "dQw4w9WgXcQ"
    assert youtube_id("//www.youtube.com/embed/dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert youtube_id("https://evil.example/embed/dQw4w9WgXcQ") is None
    html = replace_embeds('<iframe src="https://youtu.be/dQw4w9WgXcQ"></iframe>', None)
    assert 'href="https://www.youtube.com/watch?v=dQw4w9WgXcQ"' in html
    assert f"{PLAY_MARK} Watch the video</a>" in html


def test_vimeo_becomes_a_captioned_link_and_other_iframes_a_link_to_the_post(
    builder_app: Flask,
) -> None:
    doc = parse(render(builder_app, "full").html)
    vimeo = [a.text_content() for a in doc.xpath("//a[@href='https://vimeo.com/76979871']")]
    assert vimeo == [f"{PLAY_MARK} Evening stretch"]
    others = doc.xpath(f"//a[text()='{OTHER_EMBED_LABEL}']/@href")
    assert others == [SHOULDERS]


def test_the_summary_names_the_videos_of_a_post(builder_app: Flask) -> None:
    rendered = render(builder_app, "summary")
    first, second = post_tables(rendered.html)
    assert [a.get("href") for a in first.find_class("post-videos")[0].xpath(".//a")] == [YOUTUBE]
    videos = [p.text_content() for p in first.find_class("post-videos")]
    assert videos == [
        f"{PLAY_MARK} Softening the shoulders: a guided practice (YouTube)",
        f"{PLAY_MARK} Evening stretch (Vimeo)",
    ]
    assert [p.text_content() for p in second.find_class("post-videos")] == [
        f"{PLAY_MARK} Watch the video (YouTube)"
    ]
    assert f"Softening the shoulders: a guided practice (YouTube): {YOUTUBE}" in rendered.text
    # The summary is the post's words: no captions of videos or embeds in it.
    summary = first.find_class("post-summary")[0].text_content()
    assert summary.startswith("Most of us carry the day")
    assert PLAY_MARK not in summary and OTHER_EMBED_LABEL not in summary
    assert "The window where I practise" not in summary


def test_images_keep_their_alt_and_are_never_enlarged(builder_app: Flask) -> None:
    full = parse(render(builder_app, "full").html)
    (stones,) = full.xpath("//img[contains(@src, 'stones.jpg')]")
    assert stones.get("width") == "400" and stones.get("alt") == "Three smooth stones on a shelf"
    summary = post_tables(render(builder_app, "summary").html)
    (cup,) = summary[1].find_class("post-image")
    # The hero is the post's first image: its own alt, not the post's title.
    assert cup.get("alt") == "A steaming cup held in two hands"
    assert cup.get("width") == "536"  # width unknown: the column's


def test_figures_and_captions_are_centred_and_the_hero_lines_up(builder_app: Flask) -> None:
    doc = parse(render(builder_app, "full").html)
    # As a div and a paragraph: HTML5 figure elements go unstyled in Outlook, Yahoo and Gmail.
    assert not doc.xpath("//figure | //figcaption")
    blocks = doc.xpath("//div[@class='figure'] | //p[@class='figcaption']")
    # Post 1: the feed's own figure around the YouTube one, YouTube, Vimeo, the other embed
    # and the window photo; post 2: youtu.be. Each a div, all but the outer one captioned.
    assert len(blocks) == 11
    for element in blocks:
        assert "text-align:center" in element.get("style", "").replace(" ", "")
    for cell in doc.find_class("post-image-cell"):
        assert cell.get("align") == "center"


def test_a_javascript_link_leaves_plain_text(builder_app: Flask) -> None:
    html = render(builder_app, "full").html
    doc = parse(html)
    (paragraph,) = doc.xpath("//p[contains(., 'tap here')]")
    assert paragraph.xpath(".//a") == []
    assert "If the video does not load, tap here and try again later." in paragraph.text_content()


def test_full_style_has_a_quiet_read_on_link_and_no_read_more_button(builder_app: Flask) -> None:
    full = render(builder_app, "full")
    doc = parse(full.html)
    assert not doc.find_class("button-link")
    assert doc.xpath("//p[@class='read-on']/a/@href") == [SHOULDERS, CUP]
    assert "Read More" not in full.text and f"Read on the blog: {CUP}" in full.text
    summary = parse(render(builder_app, "summary").html)
    assert [a.text_content() for a in summary.find_class("button-link")] == ["Read More"] * 2


def test_markdown_tables_in_announcements_get_borders_padding_and_a_header_row(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    from newsletter.announcements import read_announcement, render_campaign

    path = tmp_path / "table.md"
    path.write_text(
        "---\nsubject: Times\n---\n\n| Day | Practice |\n| --- | --- |\n| Mon | Breath |\n",
        encoding="utf-8",
    )
    app = make_app()
    with app.app_context():
        announcement = read_announcement(path)
        html = render_campaign(announcement, get_services(app)).email.html
    doc = parse(html)
    # An announcement links to its web view too.
    assert doc.xpath("//a[text()='View in your browser']/@href") == [
        f"{PUBLIC_URL}/archive/{archive_key(announcement.content_hash)}"
    ]
    (header,) = doc.xpath("//th[text()='Day']")
    style = header.get("style").replace(" ", "")
    assert "border:1pxsolid" in style and "padding:6px10px" in style
    assert "background-color:#f4efe9" in style and "font-weight:bold" in style
    (cell,) = doc.xpath("//td[text()='Breath']")
    assert "border:1pxsolid" in cell.get("style").replace(" ", "")


# --- the author's voice --------------------------------------------------------------------


def test_the_feed_gives_author_and_subtitle(builder_app: Flask) -> None:
    with builder_app.app_context():
        posts = {p.title: p for p in db.session.scalars(select(Post))}
    shoulders = posts["Softening the Shoulders 🌿"]
    assert shoulders.author == "Mira Holt"
    assert shoulders.subtitle == "A five-minute practice for the end of a long day"
    # media:description did not push the post's own HTML aside as plain text.
    assert "<iframe" not in (shoulders.content_html or "") and "&lt;p&gt;" not in (
        shoulders.content_html or ""
    )
    assert "carry the day in our shoulders" in (shoulders.content_html or "")


def test_itunes_subtitle_and_json_feed_summary_are_subtitles() -> None:
    rss = (
        b'<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel>'
        b"<item><title>T</title><link>https://b.example/t</link>"
        b"<itunes:subtitle>A line about it</itunes:subtitle><description>&lt;p&gt;Body&lt;/p&gt;"
        b"</description></item></channel></rss>"
    )
    (post,) = parse_feed(rss)
    assert post.subtitle == "A line about it" and post.content_html == "<p>Body</p>"
    json_feed = (
        b'{"version": "https://jsonfeed.org/version/1.1", "items": [{"id": "1", "title": "J",'
        b' "summary": "The short of it", "content_html": "<p>Long</p>",'
        b' "authors": [{"name": "Mira Holt"}]}]}'
    )
    (post,) = parse_feed(json_feed)
    assert post.subtitle == "The short of it" and post.author == "Mira Holt"


def test_byline_and_sign_off_carry_the_authors_name(builder_app: Flask) -> None:
    rendered = render(builder_app, "summary")
    doc = parse(rendered.html)
    assert [p.text_content() for p in doc.find_class("post-date")] == [
        "1 November 2026 · by Mira Holt",
        "29 October 2026 · by Mira Holt",
    ]
    (sign_off,) = doc.find_class("sign-off")
    assert sign_off.text_content() == "With warmth,Mira Holt"
    assert "With warmth,\nMira Holt\n" in rendered.text
    named = parse(render(builder_app, "summary", AUTHOR_NAME="M. Holt").html)
    assert named.find_class("sign-off")[0].text_content() == "With warmth,M. Holt"


def test_intro_tagline_and_sign_off_are_settings(builder_app: Flask) -> None:
    rendered = render(
        builder_app,
        "summary",
        DIGEST_INTRO="{{ count }} letters from {{ site_name }}, with love.",
        DIGEST_TAGLINE="Letters on rest",
        DIGEST_SIGN_OFF="Until next week,",
    )
    doc = parse(rendered.html)
    assert doc.find_class("intro")[0].text_content() == "2 letters from Calm Corner, with love."
    assert doc.find_class("tagline")[0].text_content() == "Letters on rest"
    assert doc.find_class("sign-off")[0].text_content() == "Until next week,Mira Holt"
    assert "calm moment" not in rendered.html and "calm moment" not in rendered.text


def test_brand_colour_font_and_logo_without_templates(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        FEED_URL=str(FEED),
        BRAND_COLOR="#1F5C4A",
        FONT="sans-serif",
        LOGO_URL="https://blog.example.com/logo.png",
    )
    with app.app_context():
        sync_posts(db.session, get_services(app), backfill=2)
    html = render(app, "summary").html
    doc = parse(html)
    assert {c.get("bgcolor") for c in doc.find_class("button-cell")} == {"#1f5c4a"}
    assert "background-color:#1f5c4a" in doc.find_class("button-cell")[0].get("style").replace(
        " ", ""
    )
    assert "Helvetica, Arial, sans-serif" in doc.find_class("content")[0].get("style")
    (logo,) = doc.find_class("logo")
    assert (
        logo.get("src") == "https://blog.example.com/logo.png" and logo.get("alt") == "Calm Corner"
    )
    assert not doc.find_class("site-name")
    # Dark mode keeps the button on the brand colour (white on it passes AA, checked at start).
    assert re.search(r"\.button-cell\s*\{\s*background-color:\s*#1f5c4a\s*!important", html)


@pytest.mark.parametrize(("color", "ratio"), [("#ffcc00", "1.51"), ("#a0a0a0", "2.61")])
def test_a_brand_colour_white_text_cannot_be_read_on_is_refused(
    make_app: Callable[..., Flask], color: str, ratio: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_app(BRAND_COLOR=color)
    message = str(caught.value)
    assert message.startswith("NEWSLETTER_BRAND_COLOR:") and f"{ratio}:1" in message
    assert "4.5:1" in message and "darker" in message


def test_brand_colour_contrast_is_computed_as_wcag_does(make_app: Callable[..., Flask]) -> None:
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    app = make_app(BRAND_COLOR="#767676")  # just passes AA
    assert app.config["BRAND_COLOR"] == "#767676"
    assert make_app(BRAND_COLOR="036").config["BRAND_COLOR"] == "#003366"
    with pytest.raises(ConfigError, match="NEWSLETTER_BRAND_COLOR: expected a colour"):
        make_app(BRAND_COLOR="plum")
    with pytest.raises(ConfigError, match="NEWSLETTER_FONT: expected serif or sans-serif"):
        make_app(FONT="comic")


def test_the_authors_preview_greets_her_and_carries_her_note(
    builder_app: Flask, tmp_path: Path
) -> None:
    runner = builder_app.test_cli_runner()
    note = tmp_path / "note.md"
    note.write_text(
        "Dear friends, **thank you** for your letters.\n\n<script>alert(1)</script>\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = runner.invoke(args=["preview-digest", "--output", str(out), "--note", str(note)])
    assert result.exit_code == 0, result.output
    doc = parse((out / "digest.html").read_text(encoding="utf-8"))
    assert doc.find_class("greeting")[0].text_content() == "Hi there,"
    (shown,) = doc.find_class("note")
    assert shown.xpath(".//strong/text()") == ["thank you"]
    assert "alert" not in shown.text_content() and not doc.xpath("//script")
    text = (out / "digest.txt").read_text(encoding="utf-8")
    assert "Dear friends, thank you for your letters." in text and "Ada" not in text
    builder_app.config["AUTHOR_NAME"] = "Mira"
    runner.invoke(args=["preview-digest", "--output", str(out)])
    doc = parse((out / "digest.html").read_text(encoding="utf-8"))
    assert doc.find_class("greeting")[0].text_content() == "Hi Mira,"
    assert not doc.find_class("note")


def test_a_note_too_long_is_refused_before_anything_runs(
    builder_app: Flask, tmp_path: Path
) -> None:
    note = tmp_path / "long.md"
    note.write_text("word " * 5000, encoding="utf-8")
    result = builder_app.test_cli_runner().invoke(
        args=["send-digest", "--yes", "--note", str(note)]
    )
    assert result.exit_code == 2
    assert "long.md: the note has 24,999 characters" in result.output
    with builder_app.app_context():
        assert db.session.scalars(select(Campaign)).first() is None


def test_a_missing_note_file_is_a_clear_usage_error(
    builder_app: Flask, runner: FlaskCliRunner
) -> None:
    result = runner.invoke(args=["preview-digest", "--note", "nowhere.md"])
    assert result.exit_code == 2
    assert "nowhere.md: no such file" in result.output


def test_send_digest_note_goes_out_and_is_stored_with_the_campaign(
    builder_app: Flask, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    runner = builder_app.test_cli_runner()
    from tests.test_sending import add_readers

    with builder_app.app_context():
        add_readers(db.session, get_services(builder_app).clock, 2)
    note = tmp_path / "note.md"
    note.write_text("A short word before the posts.\n", encoding="utf-8")
    result = runner.invoke(args=["send-digest", "--yes", "--note", str(note)])
    assert result.exit_code == 0, result.output
    messages = smtp_sink.wait_for(2)
    assert all("A short word before the posts." in m.body("plain") for m in messages)
    assert all("A short word before the posts." in m.body("html") for m in messages)
    with builder_app.app_context():
        (campaign,) = db.session.scalars(select(Campaign))
        assert campaign.note == "A short word before the posts."


def test_the_welcome_email_greets_the_reader_by_name_in_the_authors_words(
    make_app: Callable[..., Flask], smtp_sink: SmtpSink
) -> None:
    app = make_app(WELCOME_TEXT="So glad you are here, in the {{ site_name }} circle.")
    client = app.test_client()
    client.post("/subscribe", data={"email": "ada@example.com", "name": "Ada"})
    (confirmation,) = smtp_sink.wait_for(1)
    wait_for_outbox(app)
    client.post(link_in(confirmation.body("plain"), "confirm"))
    welcome = smtp_sink.wait_for(2)[1]
    doc = parse(welcome.body("html"))
    assert doc.find_class("greeting")[0].text_content() == "Hi Ada,"
    assert "So glad you are here, in the Calm Corner circle." in welcome.body("plain")
    assert "Hi Ada," in welcome.body("plain")


# --- the web view --------------------------------------------------------------------------


def sent_digest(app: Flask) -> Campaign:
    with app.app_context():
        services = get_services(app)
        posts = digest.select_digest_posts(db.session, services)
        campaign = digest.create_digest_campaign(db.session, services, posts)
        campaign.status = SENT
        db.session.commit()
        db.session.refresh(campaign)
        db.session.expunge(campaign)
        return campaign


def test_every_digest_links_to_its_web_view_without_the_readers_parts(builder_app: Flask) -> None:
    campaign = sent_digest(builder_app)
    url = f"{PUBLIC_URL}/archive/{archive_key(campaign.content_hash)}"
    doc = parse(campaign.html)
    assert doc.xpath("//a[text()='View in your browser']/@href") == [url]
    assert f"View in your browser: {url}" in campaign.text
    page = builder_app.test_client().get(url.removeprefix(PUBLIC_URL))
    assert page.status_code == 200
    shown = page.get_data(as_text=True)
    assert placeholders.PREFIX not in shown
    view = parse(shown)
    assert view.find_class("greeting")[0].text_content() == "Hi there,"
    assert not view.xpath("//a[contains(@href, 'unsubscribe')]")
    assert view.xpath("//a[text()='Subscribe to Calm Corner']/@href") == [f"{PUBLIC_URL}/subscribe"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert builder_app.test_client().get("/archive/0123456789abcdef0123").status_code == 404
    assert builder_app.test_client().get("/archive/not-a-key").status_code == 404


def test_the_archive_list_and_its_feed_are_off_unless_public(builder_app: Flask) -> None:
    campaign = sent_digest(builder_app)
    client = builder_app.test_client()
    assert client.get("/archive").status_code == 404
    assert client.get("/archive/feed.xml").status_code == 404
    builder_app.config["PUBLIC_ARCHIVE"] = True
    listing = client.get("/archive")
    assert listing.status_code == 200
    key = archive_key(campaign.content_hash)
    assert parse(listing.get_data(as_text=True)).xpath("//ul[@class='archive']//a/@href") == [
        f"/archive/{key}"
    ]
    feed = client.get("/archive/feed.xml")
    assert feed.headers["Content-Type"].startswith("application/rss+xml")
    (item,) = parse_feed(feed.data, url=f"{PUBLIC_URL}/archive/feed.xml")
    assert item.url == f"{PUBLIC_URL}/archive/{key}" and item.title == campaign.subject


# --- NEWSLETTER_FETCH_POST_META ------------------------------------------------------------


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        self.hits.append(self.path)
        body = self.pages.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8" if body else "text/plain")
        self.end_headers()
        self.wfile.write(body or b"not here")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def blog_server() -> Iterator[str]:
    _Pages.pages, _Pages.hits = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_fetch_post_meta_reads_each_new_posts_page_once_for_subtitle_and_image(
    make_app: Callable[..., Flask], blog_server: str
) -> None:
    feed = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>B</title>'
        f"<link>{blog_server}/</link>"
        f"<item><title>Quiet</title><link>{blog_server}/post/quiet</link><guid>q</guid>"
        "<pubDate>Sun, 01 Nov 2026 08:00:00 GMT</pubDate>"
        "<description>&lt;p&gt;Words.&lt;/p&gt;</description></item>"
        f"<item><title>Gone</title><link>{blog_server}/post/gone</link><guid>g</guid>"
        "<pubDate>Sat, 31 Oct 2026 08:00:00 GMT</pubDate>"
        "<description>&lt;p&gt;More.&lt;/p&gt;</description></item></channel></rss>"
    )
    _Pages.pages = {
        "/feed.xml": feed.encode(),
        "/post/quiet": (
            b'<html><head><meta property="og:description" '
            b'content="A &amp; B, &lt;b&gt;gently&lt;/b&gt;">'
            b'<meta property="og:image" content="/media/quiet.jpg"></head><body></body></html>'
        ),
    }
    app = make_app(FEED_URL=f"{blog_server}/feed.xml", FETCH_POST_META=True)
    with app.app_context():
        services = get_services(app)
        sync_posts(db.session, services, backfill=2)
        posts = {p.title: p for p in db.session.scalars(select(Post))}
        quiet = posts["Quiet"]
        assert quiet.subtitle == "A & B, gently"  # sanitised to plain text
        assert quiet.image_url == f"{blog_server}/media/quiet.jpg"
        # A page that cannot be read leaves the post as the feed gave it.
        assert posts["Gone"].subtitle is None and posts["Gone"].image_url is None
        hash_before = quiet.content_hash
        sync_posts(db.session, services)  # nothing new: no page is read again
        db.session.refresh(quiet)
        assert quiet.subtitle == "A & B, gently" and quiet.content_hash == hash_before
    assert sorted(p for p in _Pages.hits if p.startswith("/post/")) == ["/post/gone", "/post/quiet"]


def test_fetch_post_meta_is_off_by_default(
    make_app: Callable[..., Flask], blog_server: str
) -> None:
    _Pages.pages = {
        "/feed.xml": (
            '<?xml version="1.0"?><rss version="2.0"><channel><title>B</title>'
            f"<item><title>Quiet</title><link>{blog_server}/post/quiet</link><guid>q</guid>"
            "<description>x</description></item></channel></rss>"
        ).encode()
    }
    app = make_app(FEED_URL=f"{blog_server}/feed.xml")
    with app.app_context():
        sync_posts(db.session, get_services(app), backfill=1)
    assert _Pages.hits == ["/feed.xml"]

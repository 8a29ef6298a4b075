"""One-off campaigns: the Markdown file, rendering each construct (HTML and text), the button,
sanitising, relative URLs, and `send-campaign` / `preview-campaign` against a real SMTP sink:
headers, resume after an interruption (an SMTP failure, and SIGKILL), the duplicate guard,
`--again`, `--dry-run`, `--to`, and the errors that send nothing."""

from __future__ import annotations

import email
import re
import signal
from collections import Counter
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import lxml.html
import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from newsletter import placeholders
from newsletter.announcements import (
    ANNOUNCEMENT,
    Announcement,
    AnnouncementComposer,
    CampaignFileError,
    RenderedCampaign,
    read_announcement,
    render_campaign,
)
from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.models import CONFIRMED, Campaign, Delivery, Subscriber
from newsletter.sending import SendLock, SendOptions, send_new_campaign
from newsletter.services import Services
from tests.conftest import (
    BLOG_ORIGIN,
    PUBLIC_URL,
    FrozenClock,
    add_readers,
    copies,
    newsletter_process,
    state_dir,
)
from tests.smtp_sink import SmtpSink
from tests.test_mail import rsa_key

EXAMPLE = Path(__file__).parent / "fixtures" / "campaigns" / "quiet-hour.md"
EXAMPLE_SUBJECT = "The Quiet Hour is finished: a first look at the book"
SHOP_URL = "https://shop.example.com/the-quiet-hour"

FRONT = "---\nsubject: Slow mornings, the book\n---\n\n"

# Every construct the README promises, with what the text part should say for it.
CONSTRUCTS = """\
# A new season

Some **strong words**, some *gentle ones* and a [link to the shop](https://shop.example.com/).

## What is inside

![A teacup on a windowsill](images/cup.jpg)

- Twelve practices
- A plan for mornings
    - with a tracker
- The [reading list](/reading-list)

1. Read a chapter.
2. Try one practice.

> Rest is not a reward.
> It is a practice.

### Small print

```
breathe in  4
breathe out 6
```

---

Write to me at <mailto:maya@example.com>.
"""


def announcement(
    body: str, subject: str = "Slow mornings, the book", preheader: str | None = None
) -> Announcement:
    return Announcement(
        path=Path("announcement.md"), subject=subject, preheader=preheader, body=body
    )


def rendered(services: Services, body: str, **kwargs: Any) -> RenderedCampaign:
    return render_campaign(announcement(body, **kwargs), services)


def parse(html: str) -> Any:
    return lxml.html.document_fromstring(html)


def body_of(html: str) -> Any:
    """The announcement's own part of the rendered HTML."""
    (content,) = parse(html).find_class("post-content")
    return content


def text_body(text: str) -> str:
    """The announcement's own part of the text: after the greeting, before the footer."""
    start = text.index(placeholders.GREETING) + len(placeholders.GREETING)
    return text[start : text.index("\n--\n")].strip("\n")


def write_file(
    folder: Path, content: str = FRONT + "Pre-orders are open.\n", name: str = "announcement.md"
) -> Path:
    path = folder / name
    path.write_text(content, encoding="utf-8")
    return path


def campaign_rows(session: Session) -> list[tuple[int, str, str]]:
    session.commit()
    return [
        tuple(row)
        for row in session.execute(  # type: ignore[misc]
            select(Campaign.id, Campaign.kind, Campaign.status).order_by(Campaign.id)
        )
    ]


# --- the file ---------------------------------------------------------------------------------


def test_reads_subject_preheader_and_body(tmp_path: Path) -> None:
    path = write_file(
        tmp_path,
        "---\nsubject: '  The book:\n  finished '\npreheader: Pre-orders"
        " open\n---\n# Hello\n\nText.\n",
    )
    read = read_announcement(path)
    assert (read.subject, read.preheader) == ("The book: finished", "Pre-orders open")
    assert read.body == "# Hello\n\nText.\n"


def test_the_content_hash_follows_subject_and_body_only() -> None:
    base = announcement("Hello.\n\nSecond line.\n")
    same = [
        announcement("Hello.\r\n\r\nSecond line.   \r\n\n"),
        announcement("Hello.\n\nSecond line.\n", preheader="A different preheader"),
    ]
    different = [
        announcement("Hello.\n\nSecond line!\n"),
        announcement("Hello.\n\nSecond line.\n", subject="Another subject"),
    ]
    assert all(a.content_hash == base.content_hash for a in same)
    assert all(a.content_hash != base.content_hash for a in different)


# --- rendering: each construct in HTML and text ----------------------------------------------


def test_each_markdown_construct_renders_in_the_html(services: Services) -> None:
    content = body_of(rendered(services, CONSTRUCTS).email.html)
    assert [h.text_content() for h in content.xpath(".//h1|.//h2|.//h3")] == [
        "A new season",
        "What is inside",
        "Small print",
    ]
    assert content.xpath(".//strong")[0].text_content() == "strong words"
    assert content.xpath(".//em")[0].text_content() == "gentle ones"
    links = {a.text_content(): a.get("href") for a in content.xpath(".//a")}
    assert links["link to the shop"] == "https://shop.example.com/"
    assert links["reading list"] == f"{BLOG_ORIGIN}/reading-list"
    assert links["maya@example.com"] == "mailto:maya@example.com"
    (image,) = content.xpath(".//img")
    assert image.get("src") == f"{BLOG_ORIGIN}/images/cup.jpg"
    assert image.get("alt") == "A teacup on a windowsill"
    assert "max-width:100%" in image.get("style").replace(" ", "")
    (bullets,) = content.xpath("./ul")
    assert [li.text.strip() for li in bullets.xpath("./li")] == [
        "Twelve practices",
        "A plan for mornings",
        "The",
    ]
    assert bullets.xpath("./li/ul/li")[0].text_content() == "with a tracker"
    assert [li.text_content() for li in content.xpath("./ol/li")] == [
        "Read a chapter.",
        "Try one practice.",
    ]
    (quote,) = content.xpath("./blockquote")
    assert " ".join(quote.text_content().split()) == "Rest is not a reward. It is a practice."
    assert "border-left" in quote.get("style")  # styled, and inlined
    assert "breathe out 6" in content.xpath("./pre")[0].text_content()
    assert content.xpath("./hr")


def test_each_markdown_construct_reads_well_in_the_text(services: Services) -> None:
    text = text_body(rendered(services, CONSTRUCTS).email.text)
    assert (
        text
        == """\
A new season
============

Some *strong words*, some _gentle ones_ and a link to the shop
(https://shop.example.com/).

What is inside
--------------

[A teacup on a windowsill]

- Twelve practices
- A plan for mornings
  - with a tracker
- The reading list (https://blog.example.com/reading-list)

1. Read a chapter.
2. Try one practice.

> Rest is not a reward. It is a practice.

Small print

    breathe in  4
    breathe out 6

* * *

Write to me at maya@example.com."""
    )


def test_paragraphs_are_rewrapped_but_hard_breaks_kept(services: Services) -> None:
    body = (
        "A line that the author broke\nin the middle, as Markdown allows.\n\n"
        "With warmth,<br>\nMaya\n\nKind regards,  \nSam\n\n" + "word " * 40 + "\n"
    )
    text = text_body(rendered(services, body).email.text)
    paragraphs = text.split("\n\n")
    assert paragraphs[0] == "A line that the author broke in the middle, as Markdown allows."
    assert paragraphs[1:3] == ["With warmth,\nMaya", "Kind regards,\nSam"]
    assert max(len(line) for line in paragraphs[3].splitlines()) <= 72
    assert len(paragraphs[3].splitlines()) == 3


def test_entities_and_escapes_read_as_characters_in_the_text(services: Services) -> None:
    text = text_body(
        rendered(
            services,
            r"Tea &amp; toast &mdash; \*not emphasis\* & more."
            "\n",
        ).email.text
    )
    assert text == "Tea & toast — *not emphasis* & more."


def test_greeting_and_unsubscribe_link_are_reader_placeholders(services: Services) -> None:
    email_ = rendered(services, "Hello there.\n").email
    doc = parse(email_.html)
    assert doc.find_class("greeting")[0].text_content() == placeholders.GREETING
    assert doc.xpath("//a[text()='Unsubscribe']/@href") == [placeholders.UNSUBSCRIBE_URL]
    assert email_.text.splitlines()[3] == placeholders.GREETING
    assert f"Unsubscribe: {placeholders.UNSUBSCRIBE_URL}" in email_.text


def test_the_layout_is_the_digests_with_styles_inlined(services: Services) -> None:
    email_ = rendered(services, "## Heading\n\nA paragraph.\n").email
    doc = parse(email_.html)
    assert doc.find_class("site-name")[0].text_content() == "Calm Corner"
    footer = doc.find_class("footer")[0].text_content()
    assert "because you subscribed to the Calm Corner newsletter" in footer
    assert "Privacy Policy" in footer and "12 Willow Lane, Springfield" in footer
    assert not doc.xpath("//body//style")  # the campaign's own rules were inlined
    assert "margin-top:32px" not in doc.xpath("//h2")[0].get("style").replace(" ", "")
    later = parse(rendered(services, "A paragraph.\n\n## Heading\n").email.html)
    assert "margin-top:32px" in later.xpath("//h2")[0].get("style").replace(" ", "")
    assert all(t.get("role") == "presentation" for t in doc.xpath("//table"))


def test_the_preheader_is_the_front_matters_else_the_first_paragraph(services: Services) -> None:
    given = rendered(services, "# Title\n\nFirst words.\n", preheader="Open today")
    assert given.preheader == "Open today"
    assert (
        parse(given.email.html).find_class("preheader")[0].text_content().startswith("Open today")
    )
    long = "Every word here counts toward the preheader, " * 5
    fallback = rendered(services, f"# Title\n\n[[Go]](https://x.example)\n\n{long}\n")
    assert fallback.preheader.startswith("Every word here counts toward the preheader,")
    assert len(fallback.preheader) <= 121 and fallback.preheader.endswith("…")


# --- the button -----------------------------------------------------------------------------


def test_the_button_is_a_bulletproof_table_in_html_and_label_url_in_text(
    services: Services,
) -> None:
    body = (
        "Pre-orders are open.\n\n[[Pre-order the book →]](https://shop.example.com/book)\n\n"
        "Thank you.\n"
    )
    result = rendered(services, body)
    content = body_of(result.email.html)
    (table,) = content.xpath(".//table")
    assert table.get("role") == "presentation"
    (cell,) = table.xpath(".//td")
    assert cell.get("bgcolor") == "#7a5c8e" and "background-color:#7a5c8e" in cell.get("style")
    (link,) = cell.xpath("./a")
    assert link.get("href") == "https://shop.example.com/book"
    assert link.text_content() == "Pre-order the book →"
    assert "display:inline-block" in link.get("style") and "color:#fff" in link.get("style")
    # In its place between the paragraphs, and no brackets left anywhere.
    assert [e.tag for e in content] == ["p", "table", "p"]
    assert "[" not in content.text_content()
    text = text_body(result.email.text)
    assert text.split("\n\n") == [
        "Pre-orders are open.",
        "Pre-order the book: https://shop.example.com/book",
        "Thank you.",
    ]
    assert result.body.buttons[0].label == "Pre-order the book →"


def test_a_relative_button_link_resolves_and_in_a_sentence_it_is_a_plain_link(
    services: Services,
) -> None:
    body = "[[Read the first chapter]](/chapter-one)\n\nOr see [[the shop]](https://s.example).\n"
    result = rendered(services, body)
    content = body_of(result.email.html)
    assert content.xpath(".//td/a/@href") == [f"{BLOG_ORIGIN}/chapter-one"]
    inline = content.xpath(".//p/a")[-1]
    assert (inline.text_content(), inline.get("href")) == ("the shop", "https://s.example")
    assert text_body(result.email.text).split("\n\n") == [
        f"Read the first chapter: {BLOG_ORIGIN}/chapter-one",
        "Or see the shop (https://s.example).",
    ]


@pytest.mark.parametrize("target", ["javascript:alert(1)", "", "ftp://files.example/book"])
def test_a_button_without_a_web_address_is_an_error(services: Services, target: str) -> None:
    with pytest.raises(CampaignFileError, match=r"the button \[\[Buy\]\].*needs"):
        rendered(services, f"Hello.\n\n[[Buy]]({target})\n")


# --- sanitising and URLs --------------------------------------------------------------------

UNSAFE = """\
Hello <span onclick="steal()">friend</span>, <a href="javascript:alert(1)">click</a>.

<div onmouseover="steal()"><script>document.write('evil')</script>Safe words.
<iframe src="https://evil.example/"></iframe><img src="x.png" onerror="steal()" alt="pic">
<a href="https://ok.example/" style="color:red" target="_blank">fine</a></div>

<form action="https://evil.example/"><input name="card"></form>

A [markdown link](javascript:alert(2)){: onclick="steal()" }.
"""


def test_raw_html_and_markdown_are_sanitised(services: Services) -> None:
    result = rendered(services, UNSAFE)
    doc = parse(result.email.html)
    assert not doc.xpath("//script|//iframe|//form|//input|//object|//embed")
    for element in doc.iter():
        for name, value in element.attrib.items():
            assert not name.startswith("on"), (element.tag, name)
            assert "javascript:" not in value.lower(), (element.tag, name)
    content = body_of(result.email.html)
    assert "evil" not in content.text_content()
    assert {a.get("href") for a in content.xpath(".//a") if a.get("href")} == {
        "https://ok.example/"
    }
    assert content.xpath(".//img/@src") == [f"{BLOG_ORIGIN}/x.png"]
    text = text_body(result.email.text)
    assert "evil" not in text and "javascript" not in text and "steal" not in text
    assert "Hello friend, click." in text and "fine (https://ok.example/)" in text
    assert "A markdown link." in text


@pytest.mark.parametrize(
    ("site_url", "base"),
    [
        (BLOG_ORIGIN, BLOG_ORIGIN),
        (f"{BLOG_ORIGIN}/journal", f"{BLOG_ORIGIN}/journal"),
        (f"{BLOG_ORIGIN}/journal/", f"{BLOG_ORIGIN}/journal"),
    ],
)
def test_relative_urls_resolve_against_the_site_url(
    services: Services, site_url: str, base: str
) -> None:
    services.config["SITE_URL"] = site_url
    body = (
        "![Cover](images/cover.jpg) [About](/about) [Shop](shop/book?x=1#top) "
        '<a href="notes.html">notes</a> <img src="/raw.png" alt="raw">\n\n'
        "[[Get it]](buy)\n"
    )
    result = rendered(services, body)
    content = body_of(result.email.html)
    assert content.xpath(".//img/@src") == [f"{base}/images/cover.jpg", f"{BLOG_ORIGIN}/raw.png"]
    assert content.xpath(".//a/@href") == [
        f"{BLOG_ORIGIN}/about",
        f"{base}/shop/book?x=1#top",
        f"{base}/notes.html",
        f"{base}/buy",
    ]
    text = " ".join(text_body(result.email.text).split())
    assert f"About ({BLOG_ORIGIN}/about)" in text and f"Shop ({base}/shop/book?x=1#top)" in text
    assert f"notes ({base}/notes.html)" in text and f"Get it: {base}/buy" in text


def test_an_image_can_carry_the_width_outlook_needs(services: Services) -> None:
    content = body_of(
        rendered(
            services, '![Cover](c.jpg){: width="536" }\n\n![Big](b.jpg){: width="2000" }\n'
        ).email.html
    )
    assert [img.get("width") for img in content.xpath(".//img")] == ["536", None]


# --- sending ----------------------------------------------------------------------------------


def test_send_campaign_mails_each_confirmed_reader_once_with_the_list_headers(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink, runner: FlaskCliRunner
) -> None:
    readers = add_readers(session, clock, 4)
    add_readers(session, clock, 1, status="pending", start=50)
    add_readers(session, clock, 1, status="unsubscribed", start=60)

    result = runner.invoke(args=["send-campaign", str(EXAMPLE), "--yes", "--connections", "2"])

    assert result.exit_code == 0, result.output
    assert f'Sending campaign 1 "{EXAMPLE_SUBJECT}": 4 deliveries to make.' in result.output
    assert "sent 4, failed 0, deferred 0, skipped 0 in" in result.output
    assert copies(smtp_sink) == Counter(readers)
    assert campaign_rows(session) == [(1, ANNOUNCEMENT, "sent")]
    for received in smtp_sink.messages:
        message = received.message
        assert message["Subject"] == EXAMPLE_SUBJECT
        assert message["From"] == "Calm Corner <hello@blog.example.com>"
        unsubscribe = message["List-Unsubscribe"].strip("<>")
        assert unsubscribe.startswith(f"{PUBLIC_URL}/unsubscribe/")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["List-Id"]
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
        name = received.recipients[0].split("@")[0].replace("reader", "Reader ")
        text = received.body("plain").replace("\r\n", "\n")
        assert text.startswith("Calm Corner\n") and f"Hi {name}," in text
        assert f"Pre-order the book: {SHOP_URL}" in text
        assert f"Unsubscribe: {unsubscribe}" in text
        doc = parse(received.body("html"))
        assert doc.xpath("//a[text()='Unsubscribe']/@href") == [unsubscribe]
        assert doc.xpath("//td[@class='button-cell']/a/@href") == [SHOP_URL]
        assert "__NEWSLETTER_" not in received.data.decode()

    listed = runner.invoke(args=["campaigns"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[1].split()[:2] == ["1", "announcement"]


def test_placeholder_text_in_an_announcement_never_becomes_a_readers_data(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    every = [
        placeholders.UNSUBSCRIBE_URL,
        placeholders.GREETING,
        placeholders.RECIPIENT,
        placeholders.MESSAGE_ID,
        placeholders.CONFIRM_URL,
        placeholders.DATE,
        "__NEWSLETTER_TO_HEADER__",
    ]
    code = " ".join(f"`{p}`" for p in every)
    escaped = " ".join(p.replace("_", "\\_") for p in every)
    path = write_file(
        tmp_path,
        f"---\nsubject: Every stand-in {every[2]}\n---\n\n"
        f"Code {code}\n\nPlain {escaped}\n\n"
        f"[a link]({BLOG_ORIGIN}/{every[0]})\n",
    )
    session.execute(
        insert(Subscriber),
        [
            {
                "email": "ada@example.com",
                "name": 'Ada <b onmouseover="x">',
                "status": CONFIRMED,
                "token_generation": 0,
                "created_at": clock(),
                "updated_at": clock(),
            }
        ],
    )
    session.commit()

    result = runner.invoke(args=["send-campaign", str(path), "--yes"])

    assert result.exit_code == 0, result.output
    [received] = smtp_sink.messages
    unsubscribe = received.message["List-Unsubscribe"].strip("<>")
    token = unsubscribe.rsplit("/", 1)[1]
    html = received.body("html")
    text = received.body("plain").replace("\r\n", "\n")
    for part in (html, text):
        assert "ada@example.com" not in part
        assert part.count(token) == 1  # the footer's link only
        assert part.count("onmouseover") == 1  # in the greeting only
    assert "<b onmouseover" not in html  # and escaped there
    doc = parse(html)
    shown = doc.text_content()
    readable = text.replace("\u200b", "")
    for placeholder in every:
        assert f"`{placeholder}`" not in readable  # the code span is plain text ...
        assert placeholder in shown and placeholder in readable  # ... showing the words
    assert doc.xpath("//a[text()='a link']/@href") == [f"{BLOG_ORIGIN}/{every[0]}"]
    assert received.message["Subject"] == f"Every stand-in {every[2]}"


def test_a_signed_campaign_verifies_with_dkim(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    private, public = rsa_key()
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(private)
    app.config.update(
        DKIM_DOMAIN="blog.example.com", DKIM_SELECTOR="news2026", DKIM_PRIVATE_KEY=str(key_file)
    )
    add_readers(session, clock, 2)
    result = runner.invoke(args=["send-campaign", str(EXAMPLE), "--yes"])
    assert result.exit_code == 0, result.output

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return b"v=DKIM1; k=rsa; p=" + public

    for received in smtp_sink.messages:
        assert dkim.verify(received.data, dnsfunc=dns)
        assert "list-unsubscribe-post" in received.message["DKIM-Signature"].lower()


def test_campaigns_list_announcements_beside_digests(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    add_readers(session, clock, 1)
    session.add(
        Campaign(
            kind="digest",
            subject="Slow mornings",
            preheader=None,
            content_hash="d" * 64,
            status="sent",
            created_at=clock(),
            html="<p>x</p>",
            text="x",
        )
    )
    session.commit()
    clock.advance(days=1)
    assert runner.invoke(args=["send-campaign", str(EXAMPLE), "--yes"]).exit_code == 0
    result = runner.invoke(args=["campaigns"])
    rows = [line.split()[:2] for line in result.output.splitlines()[1:]]
    assert rows == [["2", "announcement"], ["1", "digest"]]
    shown = runner.invoke(args=["campaigns", "show", "2"])
    assert f'Campaign 2 (announcement): "{EXAMPLE_SUBJECT}"' in shown.output


def test_the_same_content_is_refused_unless_again(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    readers = add_readers(session, clock, 3)
    path = write_file(tmp_path)
    assert runner.invoke(args=["send-campaign", str(path), "--yes"]).exit_code == 0

    # The same subject and body, even with other line endings and another preheader.
    path.write_text(
        FRONT.replace("\n---\n\n", "\npreheader: New!\n---\n\n").replace("\n", "\r\n")
        + "Pre-orders are open.  \r\n",
        encoding="utf-8",
    )
    refused = runner.invoke(args=["send-campaign", str(path), "--yes"])
    assert refused.exit_code == 1
    assert refused.output.strip() == (
        "send-campaign: this announcement (the same subject and body) was already sent as "
        "campaign 1 on 2026-11-02 09:00 UTC; to send it to everyone once more, add --again"
    )
    assert copies(smtp_sink) == Counter(readers)
    assert len(campaign_rows(session)) == 1

    again = runner.invoke(args=["send-campaign", str(path), "--yes", "--again"])
    assert again.exit_code == 0, again.output
    assert 'Campaign 2 "Slow mornings, the book": sent 3' in again.output
    assert copies(smtp_sink) == Counter(readers * 2)
    assert campaign_rows(session) == [(1, ANNOUNCEMENT, "sent"), (2, ANNOUNCEMENT, "sent")]

    edited = write_file(tmp_path, FRONT + "Pre-orders are open until Friday.\n")
    assert runner.invoke(args=["send-campaign", str(edited), "--yes"]).exit_code == 0
    assert len(campaign_rows(session)) == 3


def interrupt(app: Flask, path: Path, smtp_sink: SmtpSink, stuck: str) -> None:
    """Send ``path`` until the server goes down at ``stuck``'s message: the run stops with the
    rest queued, as after a crash or an outage."""
    smtp_sink.script.outage_from = stuck
    with app.app_context():
        lock = SendLock(state_dir(app), db.engine)
        with lock:
            run = send_new_campaign(
                db.session(),
                get_services(app),
                AnnouncementComposer(read_announcement(path)),
                lock=lock,
                options=SendOptions(
                    connections=1,
                    reconnect_delay=0.01,
                    flush_interval=0.05,
                    max_connection_failures=2,
                ),
            )
    assert run.report is not None and run.report.error and run.report.left > 0
    smtp_sink.script.outage_from = None
    smtp_sink.down = False


def test_an_interrupted_send_is_resumed_by_running_the_command_again(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    readers = add_readers(session, clock, 6)
    path = write_file(tmp_path)
    interrupt(app, path, smtp_sink, readers[2])
    assert copies(smtp_sink) == Counter(readers[:2])
    assert campaign_rows(session) == [(1, ANNOUNCEMENT, "sending")]

    dry = runner.invoke(args=["send-campaign", str(path), "--dry-run"])
    assert (
        'Would resume campaign 1 "Slow mornings, the book", which was interrupted: '
        "4 deliveries left." in dry.output
    )

    result = runner.invoke(args=["send-campaign", str(path), "--yes"])
    assert result.exit_code == 0, result.output
    assert 'Campaign 1 "Slow mornings, the book": sent 4' in result.output
    assert "it was resumed, and nobody gets it twice" in result.output
    assert copies(smtp_sink) == Counter(readers)
    assert campaign_rows(session) == [(1, ANNOUNCEMENT, "sent")]


def test_again_resumes_an_interrupted_copy_first_and_never_doubles_it(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    readers = add_readers(session, clock, 5)
    path = write_file(tmp_path)
    interrupt(app, path, smtp_sink, readers[1])

    resumed = runner.invoke(args=["send-campaign", str(path), "--yes", "--again"])
    assert resumed.exit_code == 0, resumed.output
    assert "--again sends a fresh copy once this one is finished" in resumed.output
    assert copies(smtp_sink) == Counter(readers)
    assert len(campaign_rows(session)) == 1

    fresh = runner.invoke(args=["send-campaign", str(path), "--yes", "--again"])
    assert fresh.exit_code == 0, fresh.output
    assert copies(smtp_sink) == Counter(readers * 2)
    assert len(campaign_rows(session)) == 2


def test_another_interrupted_announcement_is_finished_first(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    readers = add_readers(session, clock, 4)
    old = write_file(tmp_path, FRONT + "The first version.\n", name="old.md")
    interrupt(app, old, smtp_sink, readers[1])
    new = write_file(tmp_path, FRONT + "The corrected version.\n", name="new.md")

    dry = runner.invoke(args=["send-campaign", str(new), "--dry-run"])
    assert "Would first finish the interrupted campaign 1" in dry.output

    first = runner.invoke(args=["send-campaign", str(new), "--yes"])
    assert first.exit_code == 3, first.output
    assert "was finished first; run `newsletter send-campaign" in first.output
    assert copies(smtp_sink) == Counter(readers)  # the old version, once each
    assert campaign_rows(session) == [(1, ANNOUNCEMENT, "sent")]

    second = runner.invoke(args=["send-campaign", str(new), "--yes"])
    assert second.exit_code == 0, second.output
    assert copies(smtp_sink) == Counter(readers * 2)
    assert campaign_rows(session)[1] == (2, ANNOUNCEMENT, "sent")


@pytest.mark.slow
def test_a_send_killed_with_sigkill_resumes_and_mails_nobody_twice_but_in_flight_ones(
    config: dict[str, Any],
    tmp_path: Path,
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
) -> None:
    readers = add_readers(session, clock, 200)
    smtp_sink.script.data_delay = 0.02
    connections = "3"
    args = ("send-campaign", str(EXAMPLE), "--yes", "--connections", connections)
    first = newsletter_process(config, tmp_path, *args)
    try:
        smtp_sink.wait_for(40, timeout=30)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert len(smtp_sink.messages) < len(readers)

    smtp_sink.script.data_delay = 0.0
    second = newsletter_process(config, tmp_path, *args)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, out + err
    assert "Campaign 1" in out and "it was resumed" in out

    counts = copies(smtp_sink)
    assert set(counts) == set(readers)
    twice = [reader for reader, n in counts.items() if n > 1]
    assert len(twice) <= int(connections) and max(counts.values()) <= 2
    assert campaign_rows(session) == [(1, ANNOUNCEMENT, "sent")]  # never a second copy
    statuses = session.scalars(select(Delivery.status).distinct()).all()
    assert statuses == ["sent"]


def test_send_campaign_exits_3_when_some_fail(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    add_readers(session, clock, 3)
    smtp_sink.script.rcpt_replies["reader2@example.com"] = "550 5.1.1 No such user"
    result = runner.invoke(args=["send-campaign", str(write_file(tmp_path)), "--yes"])
    assert result.exit_code == 3, result.output
    assert "sent 2, failed 1" in result.output
    assert "newsletter campaigns show 1" in result.output


def test_send_campaign_exits_1_and_plans_nothing_when_smtp_is_down(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    add_readers(session, clock, 2)
    smtp_sink.stop()
    result = runner.invoke(args=["send-campaign", str(write_file(tmp_path)), "--yes"])
    assert result.exit_code == 1
    assert "cannot reach SMTP server" in result.output
    assert campaign_rows(session) == []


def test_with_no_confirmed_readers_nothing_is_created(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    add_readers(session, clock, 2, status="pending")
    result = runner.invoke(args=["send-campaign", str(write_file(tmp_path)), "--yes"])
    assert result.exit_code == 0, result.output
    assert "No confirmed readers yet: nothing sent." in result.output
    assert campaign_rows(session) == [] and not smtp_sink.messages


@pytest.mark.parametrize(("answer", "sent"), [("n\n", 0), ("y\n", 3)])
def test_a_terminal_is_asked_before_mailing_the_readers(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    sent: int,
) -> None:
    import newsletter.cli.sending

    monkeypatch.setattr(newsletter.cli.sending, "_interactive", lambda: True)
    add_readers(session, clock, 3)
    result = runner.invoke(args=["send-campaign", str(write_file(tmp_path))], input=answer)
    assert result.exit_code == 0, result.output
    assert 'Announcement: "Slow mornings, the book"' in result.output
    assert "Send it to 3 readers now? [y/N]" in result.output
    assert len(smtp_sink.messages) == sent
    assert len(campaign_rows(session)) == (1 if sent else 0)


def test_dry_run_says_what_would_happen_and_changes_nothing(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    add_readers(session, clock, 7)
    path = write_file(tmp_path)
    result = runner.invoke(args=["send-campaign", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        'Would send "Slow mornings, the book" to 7 confirmed readers.',
        "Preheader: Pre-orders are open.",
        "(Dry run: nothing was planned or sent.)",
    ]
    assert not smtp_sink.messages and campaign_rows(session) == []

    assert runner.invoke(args=["send-campaign", str(path), "--yes"]).exit_code == 0
    refused = runner.invoke(args=["send-campaign", str(path), "--dry-run"])
    assert (
        'Would refuse: "Slow mornings, the book" was already sent as campaign 1' in refused.output
    )
    again = runner.invoke(args=["send-campaign", str(path), "--dry-run", "--again"])
    assert "to 7 confirmed readers (again: sent before as campaign 1)." in again.output
    assert len(smtp_sink.messages) == 7 and len(campaign_rows(session)) == 1
    both = runner.invoke(args=["send-campaign", str(path), "--dry-run", "--to", "a@b.example"])
    assert both.exit_code == 2


def test_to_address_sends_one_test_copy_and_marks_nothing(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    readers = add_readers(session, clock, 3)
    result = runner.invoke(args=["send-campaign", str(EXAMPLE), "--to", "Author@Example.com"])
    assert result.exit_code == 0, result.output
    assert (
        f'Sent "{EXAMPLE_SUBJECT}" to Author@Example.com as a test; nothing was marked.'
        in result.output
    )
    (received,) = smtp_sink.messages
    assert received.recipients == ["author@example.com"]
    assert (
        received.body("plain")
        .replace("\r\n", "\n")
        .startswith("Calm Corner\n===========\n\nHello,\n\nThe book is finished\n")
    )
    assert received.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert campaign_rows(session) == []
    # A test copy is not a send: the real one still goes out to everyone.
    real = runner.invoke(args=["send-campaign", str(EXAMPLE), "--yes"])
    assert real.exit_code == 0, real.output
    assert copies(smtp_sink) == Counter([*readers, "author@example.com"])
    bad = runner.invoke(args=["send-campaign", str(EXAMPLE), "--to", "not an address"])
    assert bad.exit_code == 2 and "--to" in bad.output


# --- errors that send nothing ---------------------------------------------------------------

BROKEN_FILES = [
    pytest.param(None, "no such file", id="missing file"),
    pytest.param(
        "Just text, no front matter.\n",
        "no front matter; start the file with a ---",
        id="no front matter",
    ),
    pytest.param(
        "---\nsubject: Hello\n\nBody.\n",
        "the front matter has no closing --- line",
        id="unclosed front matter",
    ),
    pytest.param(
        "---\nsubject: Hello: world\n---\nBody.\n",
        "the front matter is not valid YAML (line 2: mapping values are not allowed",
        id="broken yaml",
    ),
    pytest.param(
        "---\n- subject\n---\nBody.\n",
        "the front matter must be `key: value` lines",
        id="front matter not a mapping",
    ),
    pytest.param(
        "---\npreheader: Hi\n---\nBody.\n", "the front matter has no subject", id="missing subject"
    ),
    pytest.param(
        "---\nsubject: '   '\n---\nBody.\n", "the front matter has no subject", id="empty subject"
    ),
    pytest.param(
        "---\nsubject: [a, b]\n---\nBody.\n", "the subject must be text", id="subject not text"
    ),
    pytest.param(
        "---\nsubjet: Hello\n---\nBody.\n", "unknown front matter key 'subjet'", id="misspelt key"
    ),
    pytest.param(
        "---\nsubject: Hello\n---\n\n  \n",
        "there is no text after the front matter",
        id="empty body",
    ),
    pytest.param(
        "---\nsubject: Hello\n---\n<script>alert(1)</script>\n",
        "nothing is left of the body once unsafe HTML is removed",
        id="body only unsafe html",
    ),
    pytest.param(
        "---\nsubject: Hello\n---\nHi.\n\n[[Buy]](javascript:void(0))\n",
        "the button [[Buy]](javascript:void(0)) needs",
        id="bad button link",
    ),
]


@pytest.mark.parametrize(("content", "message"), BROKEN_FILES)
@pytest.mark.parametrize("command", ["send-campaign", "preview-campaign"])
def test_a_broken_file_is_one_clear_line_and_sends_nothing(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
    content: str | None,
    message: str,
    command: str,
) -> None:
    add_readers(session, clock, 2)
    path = tmp_path / "announcement.md"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    extra = ["--yes"] if command == "send-campaign" else ["--output", str(tmp_path / "out")]
    result = runner.invoke(args=[command, str(path), *extra])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"{command}: {path}") and message in lines[0]
    assert not smtp_sink.messages
    assert campaign_rows(session) == []
    assert not (tmp_path / "out").exists()


def test_a_broken_template_is_reported_in_one_line_and_sends_nothing(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "campaign.txt").write_text(
        "{{ greeting }}\n\n{{ text | no_such_filter }}\n", encoding="utf-8"
    )
    services = get_services(app)
    services.config["EMAIL_TEMPLATES"] = str(folder)
    services._renderer = None
    add_readers(session, clock, 2)
    path = write_file(tmp_path)
    for args in (
        ["send-campaign", str(path), "--yes"],
        ["send-campaign", str(path), "--to", "me@example.com"],
        ["preview-campaign", str(path), "--output", str(tmp_path / "out")],
    ):
        result = runner.invoke(args=args)
        assert result.exit_code == 1, result.output
        (line,) = result.output.strip().splitlines()
        assert str(folder / "campaign.txt") in line and "line 3" in line, line
        assert "no_such_filter" in line
    assert not smtp_sink.messages and campaign_rows(session) == []
    assert not (tmp_path / "out").exists()


# --- preview ----------------------------------------------------------------------------------


def eml(path: Path) -> EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore


def test_preview_campaign_writes_html_text_and_a_complete_eml(
    app: Flask, session: Session, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(args=["preview-campaign", str(EXAMPLE), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"Announcement: {EXAMPLE_SUBJECT}"
    assert sorted(p.name for p in out.iterdir()) == [
        "campaign.eml",
        "campaign.html",
        "campaign.txt",
    ]
    message = eml(out / "campaign.eml")
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
    assert message["Subject"] == EXAMPLE_SUBJECT
    assert message["To"] == "Ada <ada@example.com>"
    unsubscribe = message["List-Unsubscribe"].strip("<>")
    assert b"__NEWSLETTER_" not in (out / "campaign.eml").read_bytes()

    html = (out / "campaign.html").read_text(encoding="utf-8")
    assert html == message.get_body(("html",)).get_content().replace("\r\n", "\n")  # type: ignore
    doc = parse(html)
    assert doc.find_class("greeting")[0].text_content() == "Hi Ada,"
    assert doc.xpath("//a[text()='Unsubscribe']/@href") == [unsubscribe]
    assert doc.xpath("//td[@class='button-cell']/a/@href") == [SHOP_URL]
    assert doc.xpath("//img/@src") == [f"{BLOG_ORIGIN}/images/quiet-hour-cover.png"]
    assert doc.xpath("//img/@width") == ["536"]
    assert doc.find_class("preheader")[0].text_content().startswith("Pre-orders open today")
    text = (out / "campaign.txt").read_text(encoding="utf-8")
    assert text == message.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore
    assert "Hi Ada,\n\nThe book is finished\n====================\n" in text
    assert f"Pre-order the book: {SHOP_URL}" in text
    assert "With warmth,\nMaya" in text
    assert f"Unsubscribe: {unsubscribe}" in text
    assert session.scalar(select(func.count()).select_from(Campaign)) == 0


def test_preview_campaign_defaults_to_a_preview_folder_and_can_open_it(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []

    def fake_open(url: str, *args: Any, **kwargs: Any) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr("webbrowser.open", fake_open)
    result = runner.invoke(args=["preview-campaign", str(EXAMPLE), "--open"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "preview" / "campaign.html"  # the app fixture runs in tmp_path
    assert written.is_file()
    assert opened == [written.resolve().as_uri()]


def test_the_readme_example_uses_every_construct(services: Services) -> None:
    result = render_campaign(read_announcement(EXAMPLE), services)
    content = body_of(result.email.html)
    tags = {element.tag for element in content.iter()}
    assert {
        "h1",
        "h2",
        "h3",
        "strong",
        "em",
        "a",
        "img",
        "ul",
        "ol",
        "li",
        "blockquote",
        "table",
        "hr",
        "br",
        "small",
    } <= tags
    assert re.search(r"^> Calm is not something", result.email.text, re.MULTILINE)


def test_the_readme_shows_the_example_file_as_it_is() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## One-off campaigns") :]
    shown = re.search(r"^````markdown\n(.*?)^````$", section, re.DOTALL | re.MULTILINE)
    assert shown is not None
    assert shown.group(1) == EXAMPLE.read_text(encoding="utf-8")

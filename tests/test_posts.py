"""Post sources: RSS, Atom and JSON feeds (files and a real HTTP server on 127.0.0.1) and Markdown
folders, synced into the posts table; sanitising; the ``fetch-posts`` command."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, select

from newsletter import create_app
from newsletter.appctx import get_services
from newsletter.config import ConfigError
from newsletter.db import db
from newsletter.digest import select_digest_posts
from newsletter.models import CONFIRMED, Campaign, Post, SourceState, Subscriber
from newsletter.posts import (
    IMAGE_STYLE,
    NoPostSourceError,
    PostSourceError,
    SyncReport,
    sanitise_html,
    summarise,
    sync_posts,
)
from newsletter.sending import SendLock, sending_state_dir
from tests.conftest import BLOG_ORIGIN, FrozenClock

FIXTURES = Path(__file__).parent / "fixtures"
FEEDS = FIXTURES / "feeds"
POSTS = FIXTURES / "posts"
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # the conftest clock


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours proxy variables; requests to 127.0.0.1 must not go through one."""
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config["FEED_TIMEOUT"] = 10
    return config


# --- helpers -------------------------------------------------------------------------------


def use_feed(app: Flask, location: str | Path) -> None:
    app.config["FEED_URL"] = str(location)
    app.config["POSTS_DIR"] = None


def use_folder(app: Flask, folder: Path) -> None:
    app.config["FEED_URL"] = None
    app.config["POSTS_DIR"] = str(folder)


def sync(app: Flask, backfill: int | None = None) -> SyncReport:
    with app.app_context():
        return sync_posts(db.session, get_services(app), backfill=backfill)


def stored(app: Flask) -> dict[str, Post]:
    """Every stored post by title, detached from the session."""
    with app.app_context():
        posts = db.session.execute(select(Post).order_by(Post.id)).scalars().all()
        db.session.expunge_all()
    return {post.title: post for post in posts}


def snapshot(app: Flask) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Everything a sync may change, to show that a failed one changed nothing."""
    with app.app_context():
        posts = db.session.execute(
            select(Post.source_key, Post.title, Post.content_hash, Post.archived).order_by(Post.id)
        ).all()
        states = db.session.execute(
            select(
                SourceState.source,
                SourceState.etag,
                SourceState.last_modified,
                SourceState.synced_at,
            )
        ).all()
    return [tuple(row) for row in posts], [tuple(row) for row in states]


def rss(items: list[dict[str, Any]], *, encoding: str = "utf-8") -> bytes:
    """An RSS 2.0 feed; each item has a title and may have guid, link, date, body."""
    parts = [
        f'<?xml version="1.0" encoding="{encoding}"?>\n<rss version="2.0"><channel>'
        f"<title>Calm Corner</title><link>{BLOG_ORIGIN}/</link>"
        "<description>Small practices</description>\n"
    ]
    for item in items:
        parts.append(f"<item><title>{escape(item['title'])}</title>")
        if item.get("link"):
            parts.append(f"<link>{item['link']}</link>")
        if item.get("guid"):
            parts.append(f'<guid isPermaLink="false">{item["guid"]}</guid>')
        if item.get("date"):
            parts.append(f"<pubDate>{format_datetime(item['date'], usegmt=True)}</pubDate>")
        parts.append(
            f"<description><![CDATA[{item.get('body', '<p>A short post.</p>')}]]>"
            "</description></item>\n"
        )
    parts.append("</channel></rss>\n")
    return "".join(parts).encode(encoding)


def dated_items(count: int, *, newest: datetime) -> list[dict[str, Any]]:
    """``count`` posts a week apart, newest first, the newest dated ``newest``."""
    return [
        {
            "title": f"Weekly Practice {count - n}",
            "guid": f"practice-{count - n}",
            "link": f"{BLOG_ORIGIN}/posts/practice-{count - n}",
            "date": newest - timedelta(weeks=n),
        }
        for n in range(count)
    ]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def tags_in(html_text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html_text)
    parser.close()
    return parser.tags


def assert_email_safe(html_text: str) -> None:
    """No active content, every URL absolute http(s) or mailto, images bounded."""
    for tag, attrs in tags_in(html_text):
        assert tag not in {
            "script",
            "style",
            "iframe",
            "form",
            "input",
            "button",
            "object",
            "embed",
            "svg",
        }, (tag, html_text)
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert "javascript" not in (value or "").lower(), (tag, name, value)
            if name in ("href", "src"):
                assert (value or "").startswith(("https://", "http://", "mailto:")), value
        if tag == "img":
            assert attrs.get("style") == IMAGE_STYLE
            assert "height" not in attrs
            assert int(attrs.get("width") or 0) <= 600
        else:
            assert "style" not in attrs, (tag, attrs)


# --- a real HTTP server --------------------------------------------------------------------


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "application/rss+xml; charset=utf-8"
    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    gzip: bool = False
    declare_length: bool = True
    location: str | None = None


@dataclass
class FeedServer:
    """http.server on 127.0.0.1 serving ``routes``; remembers each request's headers."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append((self.path, dict(self.headers.items())))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                fresh = (route.etag and self.headers.get("If-None-Match") == route.etag) or (
                    route.last_modified
                    and self.headers.get("If-Modified-Since") == route.last_modified
                )
                if fresh:
                    self.send_response(304)
                    if route.etag:
                        self.send_header("ETag", route.etag)
                    self.end_headers()
                    return
                body = gzip.compress(route.body) if route.gzip else route.body
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                if route.location:
                    self.send_header("Location", route.location)
                if route.etag:
                    self.send_header("ETag", route.etag)
                if route.last_modified:
                    self.send_header("Last-Modified", route.last_modified)
                if route.gzip:
                    self.send_header("Content-Encoding", "gzip")
                if route.declare_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()  # HTTP/1.0: without a length, closing ends the body
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), server.handler())
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections (the kernel does) and never says a word."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/feed.xml"
    sock.close()


@dataclass
class DripServer:
    """An HTTP server on 127.0.0.1 that sends its answer one byte at a time, a byte every
    ``interval`` seconds (well inside any per-read timeout), for as long as the client stays."""

    url: str
    replying: threading.Event  # the first byte is out
    finished: threading.Event  # every byte went out: the drip was allowed to run its course
    client_left: threading.Event  # a write failed: the client hung up mid-drip


@pytest.fixture
def drip_server(request: pytest.FixtureRequest) -> Iterator[DripServer]:
    """``request.param``: "headers" drips the status line and headers too, "body" sends those
    at once and drips a declared-length body."""
    # About 5 s of dripping: ten times the timeout the tests set, yet a run without a total
    # deadline fails in seconds rather than hanging.
    body = b'<rss version="2.0"><channel><title>Drip</title></channel></rss>'.ljust(250)
    head = (
        b"HTTP/1.0 200 OK\r\nContent-Type: application/rss+xml\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()
    server = DripServer(
        f"http://127.0.0.1:{listener.getsockname()[1]}/feed.xml",
        threading.Event(),
        threading.Event(),
        threading.Event(),
    )
    at_once, dripped = (b"", head + body) if request.param == "headers" else (head, body)

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the test is over
            with connection:
                connection.recv(65536)  # the request (small: one recv holds it)
                try:
                    connection.sendall(at_once)
                    for n in range(len(dripped)):
                        connection.sendall(dripped[n : n + 1])
                        server.replying.set()
                        if stop.wait(0.02):
                            return
                except OSError:
                    server.client_left.set()
                    continue
                server.finished.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join()


# --- feeds ---------------------------------------------------------------------------------


def test_rss_with_cdata_and_entities_becomes_clean_posts(app: Flask) -> None:
    use_feed(app, FEEDS / "rss20.xml")
    sync(app, backfill=10)
    posts = stored(app)
    assert list(posts) == ["Tea & Quiet Minutes", "Rest, Then Repair", "Five Breaths at the Door"]

    tea = posts["Tea & Quiet Minutes"]
    assert tea.source_key == "calm-corner-post-41"  # the guid, not the link
    assert tea.url == f"{BLOG_ORIGIN}/posts/tea-and-quiet-minutes"
    assert tea.author == "Mira Holm"
    assert tea.published_at == datetime(2026, 10, 29, 7, 15, tzinfo=UTC)
    # The description is the post's own summary: plain text, entities decoded, "[…]" tidied.
    assert tea.summary == (
        "Brewing a pot of tea takes four minutes — long enough to notice your "
        "shoulders & let them drop…"
    )
    assert "<em>exactly</em>" in (tea.content_html or "")
    assert "tension &amp; to let it go" in (tea.content_html or "")
    assert tea.image_url == f"{BLOG_ORIGIN}/images/teapot.jpg"  # the first image in the body

    rest = posts["Rest, Then Repair"]  # CDATA title; escaped HTML in the description
    assert "<strong>first</strong>" in (rest.content_html or "")
    assert (rest.summary or "").startswith("When a day goes badly, the first repair is rest.")
    assert "drink water & sleep" in (rest.summary or "")
    assert rest.image_url == "https://cdn.example.com/rest.jpg"  # media:thumbnail

    breaths = posts["Five Breaths at the Door"]
    assert breaths.image_url == "https://cdn.example.com/door.jpg"  # image enclosure
    assert breaths.source_key == f"{BLOG_ORIGIN}/posts/five-breaths"


def test_scripts_event_handlers_and_javascript_urls_never_survive(app: Flask) -> None:
    use_feed(app, FEEDS / "rss20.xml")
    sync(app)
    content = stored(app)["Tea & Quiet Minutes"].content_html or ""
    assert_email_safe(content)
    for gone in ("document.cookie", "evil.example", "display: none", "alert", "no frames"):
        assert gone not in content
    images = {attrs["alt"]: attrs for tag, attrs in tags_in(content) if tag == "img"}
    # Relative sources become absolute against the post's URL; a 1200px width is dropped,
    # a 300px one kept.
    assert images["A blue teapot on a wooden table"]["src"] == f"{BLOG_ORIGIN}/images/teapot.jpg"
    assert "width" not in images["A blue teapot on a wooden table"]
    assert images["Steam rising"]["src"] == f"{BLOG_ORIGIN}/posts/steam.png"
    assert images["Steam rising"]["width"] == "300"
    links = [attrs for tag, attrs in tags_in(content) if tag == "a"]
    assert links[0]["href"] == f"{BLOG_ORIGIN}/posts/slow-mornings"
    assert all(link["rel"] == "noopener" for link in links)
    assert [link.get("href") for link in links[1:]] == [None, None]  # javascript: links
    assert "Watch the leaves unfurl." in content  # the text of a cleaned tag stays


@pytest.mark.parametrize(
    "dirty",
    [
        '<img src="x.png" onerror="alert(1)">',
        '<a href="javascript:alert(1)">x</a>',
        '<a href="  JAVASCRIPT:alert(1)">x</a>',
        '<a href="java\tscript:alert(1)">x</a>',
        '<a href="&#106;avascript:alert(1)">x</a>',
        '<a href="data:text/html,<script>alert(1)</script>">x</a>',
        '<img src="data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=">',
        '<svg onload="alert(1)"><circle r="4"/></svg>',
        '<p style="background:url(javascript:alert(1))">x</p>',
        '<div onmouseover="alert(1)">x</div>',
        '<iframe src="https://evil.example/"></iframe>',
        '<form action="https://evil.example/"><input name="q"></form>',
        '<object data="https://evil.example/x.swf"></object><embed src="https://evil.example/">',
        '<style>@import "https://evil.example/x.css";</style>',
        '<script src="https://evil.example/x.js"></script>',
        "<scr<script>ipt>alert(1)</script>",
        '<base href="javascript:alert(1)//"><a href="x">x</a>',
        '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
        "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></table></math>",
        '<a href="/relative" onclick="alert(1)" target="_top">x</a>',
    ],
)
def test_sanitise_html_removes_dangerous_markup(dirty: str) -> None:
    clean = sanitise_html(dirty, f"{BLOG_ORIGIN}/posts/a-post")
    assert_email_safe(clean)
    assert "evil.example" not in clean


def test_sanitise_html_makes_urls_absolute_and_bounds_images() -> None:
    clean = sanitise_html(
        '<p><a href="../about#me">About</a> <a href="mailto:mira@example.com">Write</a> '
        '<a href="//cdn.example.com/guide.pdf">Guide</a></p>'
        '<img src="pics/a.jpg" width="800" height="600" alt="Wide">'
        '<img src="/pics/b.jpg" width="450px" height="300" alt="Narrow">',
        f"{BLOG_ORIGIN}/posts/a-post/",
    )
    tags = tags_in(clean)
    hrefs = [attrs["href"] for tag, attrs in tags if tag == "a"]
    assert hrefs == [
        f"{BLOG_ORIGIN}/posts/about#me",
        "mailto:mira@example.com",
        "https://cdn.example.com/guide.pdf",
    ]
    images = [attrs for tag, attrs in tags if tag == "img"]
    assert images[0] == {
        "alt": "Wide",
        "src": f"{BLOG_ORIGIN}/posts/a-post/pics/a.jpg",
        "style": IMAGE_STYLE,
    }
    assert images[1]["src"] == f"{BLOG_ORIGIN}/pics/b.jpg" and images[1]["width"] == "450"
    # Without a base a relative link cannot be made absolute, so it goes.
    assert tags_in(sanitise_html('<a href="/x">x</a>', None)) == [("a", {"rel": "noopener"})]


def test_summarise_cuts_at_about_sixty_words_with_an_ellipsis() -> None:
    words = [f"word{n}" for n in range(100)]
    html_text = "<p>" + " ".join(words[:50]) + "</p><p>" + " ".join(words[50:]) + ",</p>"
    summary = summarise(html_text)
    assert summary == " ".join(words[:60]) + "…"
    assert summarise("<h2>Title</h2><p>Two <b>bold</b> words.</p><script>x()</script>") == (
        "Title Two bold words."
    )
    assert summarise("Short &amp; sweet.") == "Short & sweet."
    assert summarise("One two three four", words=3) == "One two three…"
    assert summarise("An excerpt that ends like WordPress does [&#8230;]") == (
        "An excerpt that ends like WordPress does…"
    )


def test_atom_relative_links_resolve_against_xml_base(app: Flask) -> None:
    use_feed(app, FEEDS / "atom.xml")
    sync(app, backfill=10)
    posts = stored(app)
    comforts = posts["Noticing Small Comforts"]  # type="html" title: markup removed
    assert comforts.url == f"{BLOG_ORIGIN}/2026/10/small-comforts/"
    assert comforts.summary == (
        "A warm mug, a soft jumper, the first light on the wall: "
        "comfort is everywhere once you look."
    )
    assert comforts.updated_at == datetime(2026, 10, 30, 9, 30, tzinfo=UTC)
    tags = tags_in(comforts.content_html or "")
    assert ("a", {"href": f"{BLOG_ORIGIN}/comforts-list", "rel": "noopener"}) in tags
    assert comforts.image_url == f"{BLOG_ORIGIN}/2026/10/images/mug.jpg"

    tidy = posts["The Ten-Minute Tidy"]  # xhtml content, only an <updated> date
    assert tidy.url == f"{BLOG_ORIGIN}/posts/ten-minute-tidy/"
    assert tidy.published_at == datetime(2026, 10, 23, 8, 0, tzinfo=UTC)
    assert f'href="{BLOG_ORIGIN}/checklists/one-surface.pdf"' in (tidy.content_html or "")
    assert tidy.image_url == f"{BLOG_ORIGIN}/media/desk.jpg"
    assert tidy.author == "Mira Holm"  # inherited from the feed


def test_atom_relative_links_without_xml_base_resolve_against_the_entry_link(app: Flask) -> None:
    use_feed(app, FEEDS / "atom_no_base.xml")
    sync(app, backfill=1)
    post = stored(app)["Soft Edges"]
    tags = tags_in(post.content_html or "")
    assert [attrs.get("src") or attrs.get("href") for tag, attrs in tags if tag != "p"] == [
        f"{BLOG_ORIGIN}/posts/soft-edges/edge.jpg",
        f"{BLOG_ORIGIN}/posts/gentle-goals/",
        f"{BLOG_ORIGIN}/posts/soft-edges/#practice",
    ]


def test_json_feed_is_read(app: Flask) -> None:
    use_feed(app, FEEDS / "jsonfeed.json")
    sync(app, backfill=10)
    posts = stored(app)
    phone = posts["Letting the Phone Ring"]
    assert phone.source_key == "post-61"
    assert phone.published_at == datetime(2026, 10, 28, 8, 0, tzinfo=UTC)  # +02:00 → UTC
    assert phone.summary == "Not every call needs answering right now."
    assert phone.image_url == f"{BLOG_ORIGIN}/images/phone.jpg"
    assert phone.author == "Mira Holm"
    assert f'href="{BLOG_ORIGIN}/posts/boundaries"' in (phone.content_html or "")
    assert_email_safe(phone.content_html or "")

    window = posts["The Window Seat <3"]  # a text title keeps its "<"
    assert window.source_key == "60"  # a numeric id
    assert window.url == f"{BLOG_ORIGIN}/posts/the-window-seat"  # against home_page_url
    assert window.content_html == (
        "<p>Pick one window in your home.</p><p>Sit by it for five "
        "minutes a day &amp; watch the weather change.</p>"
    )


def test_entries_without_dates_or_ids_get_stable_keys(app: Flask, clock: FrozenClock) -> None:
    use_feed(app, FEEDS / "no_ids.xml")
    sync(app)
    first = stored(app)
    walk, note = first["A Walk Around the Block"], first["A Note Without a Home"]
    assert walk.source_key == f"{BLOG_ORIGIN}/posts/around-the-block"  # the link
    assert note.source_key.startswith("sha256:") and note.url is None  # a hash of the text
    # No date: published when first seen, and it stays that way.
    assert walk.published_at == NOW and note.published_at == NOW

    clock.advance(days=3)
    report = sync(app)
    assert (report.new_titles, report.updated, report.unchanged) == ([], 0, 2)
    again = stored(app)
    assert {p.source_key for p in again.values()} == {walk.source_key, note.source_key}
    assert again["A Walk Around the Block"].published_at == NOW


def test_duplicate_ids_keep_the_first_entry(app: Flask) -> None:
    use_feed(app, FEEDS / "duplicates.xml")
    report = sync(app, backfill=10)
    assert report.duplicates == 1
    assert report.new_titles == ["Gentle Goals (second version)", "Permission to Pause"]
    assert list(stored(app)) == ["Gentle Goals (second version)", "Permission to Pause"]
    assert sync(app).duplicates == 1  # and the same one on every sync
    assert list(stored(app)) == ["Gentle Goals (second version)", "Permission to Pause"]


def test_edited_post_is_updated_not_duplicated(
    app: Flask, tmp_path: Path, clock: FrozenClock
) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes((FEEDS / "edit_before.xml").read_bytes())
    use_feed(app, feed)
    sync(app, backfill=10)
    before = stored(app)["Evening Wind-Dwon"]

    clock.advance(hours=2)
    feed.write_bytes((FEEDS / "edit_after.xml").read_bytes())
    report = sync(app)
    assert (report.new_titles, report.updated_titles, report.unchanged) == (
        [],
        ["Evening Wind-Down"],
        1,
    )
    posts = stored(app)
    assert list(posts) == ["Evening Wind-Down", "Permission to Pause"]
    after = posts["Evening Wind-Down"]
    assert after.id == before.id and after.first_seen_at == before.first_seen_at
    assert after.content_hash != before.content_hash
    assert "phone in another room" in (after.content_html or "")


def test_a_broken_feed_that_still_has_entries_is_read(app: Flask) -> None:
    # An undefined &nbsp; and an unclosed <rss>: feedparser flags it (bozo) and reads it anyway.
    use_feed(app, FEEDS / "bozo.xml")
    assert sync(app, backfill=1).new_titles == ["Sunday Reset"]
    assert stored(app)["Sunday Reset"].summary == (
        "Clear one shelf, water one plant, write one line."
    )


@pytest.mark.parametrize(
    ("name", "title", "text"),
    [
        ("latin1.xml", "Crème brûlée au maïs, à la française", "Naïve rêverie ½ heure, © Mira"),
        ("windows1252.xml", "“Enough” Is a Whole Sentence – Mira’s Notes", "Say “no” kindly… and"),
    ],
)
def test_non_utf8_feed_files_decode(app: Flask, name: str, title: str, text: str) -> None:
    use_feed(app, FEEDS / name)
    assert sync(app, backfill=1).new_titles == [title]
    assert text in (stored(app)[title].summary or "")


def test_non_utf8_feed_served_as_text_xml_decodes(app: Flask, feed_server: FeedServer) -> None:
    # RFC 3023 makes text/xml without a charset us-ascii; the XML declaration must still win.
    feed_server.routes["/feed.xml"] = Route(
        (FEEDS / "latin1.xml").read_bytes(), content_type="text/xml"
    )
    use_feed(app, feed_server.url("/feed.xml"))
    assert sync(app, backfill=1).new_titles == ["Crème brûlée au maïs, à la française"]


def test_five_megabyte_feed_is_synced(app: Flask, feed_server: FeedServer, tmp_path: Path) -> None:
    paragraph = "<p>" + "Breathe in for four and out for six; notice your feet. " * 80 + "</p>"
    items = [
        {
            "title": f"Practice {n}",
            "guid": f"practice-{n}",
            "body": paragraph,
            "link": f"{BLOG_ORIGIN}/posts/practice-{n}",
            "date": datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=n),
        }
        for n in range(1200)
    ]
    body = rss(items)
    assert len(body) > 5 * 1024 * 1024
    feed_server.routes["/feed.xml"] = Route(body)
    use_feed(app, feed_server.url("/feed.xml"))  # the default 10 MB cap
    report = sync(app, backfill=5)
    assert len(report.new_titles) == 5 and len(report.archived_titles) == 1195
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Post)) == 1200


def test_conditional_get_with_etag_gets_304_and_changes_nothing(
    app: Flask, feed_server: FeedServer, clock: FrozenClock
) -> None:
    feed_server.routes["/feed.xml"] = Route(
        (FEEDS / "rss20.xml").read_bytes(),
        etag='"v1"',
        last_modified="Thu, 29 Oct 2026 07:15:00 GMT",
    )
    use_feed(app, feed_server.url("/feed.xml"))
    first = sync(app)
    assert not first.not_modified and first.first_sync
    assert "If-None-Match" not in feed_server.requests[0][1]
    before = snapshot(app)
    assert before[1][0][1:3] == ('"v1"', "Thu, 29 Oct 2026 07:15:00 GMT")

    clock.advance(hours=1)
    second = sync(app)
    headers = feed_server.requests[1][1]
    assert headers["If-None-Match"] == '"v1"'
    assert headers["If-Modified-Since"] == "Thu, 29 Oct 2026 07:15:00 GMT"
    assert second.not_modified and not second.first_sync
    assert (second.new_titles, second.updated, second.unchanged) == ([], 0, 0)
    after = snapshot(app)
    assert after[0] == before[0]  # posts untouched; only the time of the sync moves
    assert after[1][0][1:3] == before[1][0][1:3]


def test_a_changed_feed_is_fetched_again_with_its_new_etag(
    app: Flask, feed_server: FeedServer
) -> None:
    feed_server.routes["/feed.xml"] = Route((FEEDS / "edit_before.xml").read_bytes(), etag='"a"')
    use_feed(app, feed_server.url("/feed.xml"))
    sync(app)
    feed_server.routes["/feed.xml"] = Route((FEEDS / "edit_after.xml").read_bytes(), etag='"b"')
    report = sync(app)
    assert report.updated_titles == ["Evening Wind-Down"] and not report.not_modified
    assert snapshot(app)[1][0][1] == '"b"'


def test_gzip_and_redirects_are_followed(app: Flask, feed_server: FeedServer) -> None:
    feed_server.routes["/feed.xml"] = Route((FEEDS / "rss20.xml").read_bytes(), gzip=True)
    feed_server.routes["/old-feed"] = Route(status=301, location="/feed.xml")
    use_feed(app, feed_server.url("/old-feed"))
    assert len(sync(app, backfill=3).new_titles) == 3
    assert feed_server.requests[-1][1]["Accept-Encoding"] == "gzip"


def test_server_that_never_answers_times_out_quickly(app: Flask, silent_server: str) -> None:
    use_feed(app, silent_server)
    app.config["FEED_TIMEOUT"] = 0.5
    started = time.monotonic()
    with pytest.raises(PostSourceError, match="did not finish within 0.5 seconds"):
        sync(app)
    assert time.monotonic() - started < 5
    assert snapshot(app) == ([], [])


@pytest.mark.parametrize("drip_server", ["headers", "body"], indirect=True)
def test_a_server_that_drips_bytes_is_cut_off_at_the_total_timeout(
    app: Flask, drip_server: DripServer
) -> None:
    # A byte every 0.02 s never trips a 0.5 s per-read timeout; only a total deadline stops it.
    use_feed(app, drip_server.url)
    app.config["FEED_TIMEOUT"] = 0.5
    with pytest.raises(PostSourceError) as caught:
        sync(app)
    assert str(caught.value) == (
        f"the feed at {drip_server.url} did not finish within 0.5 seconds; try again later or "
        "raise NEWSLETTER_FEED_TIMEOUT"
    )
    assert drip_server.replying.is_set() and not drip_server.finished.is_set()
    assert snapshot(app) == ([], [])  # nothing half-synced, not even the source's state
    assert drip_server.client_left.wait(10)  # and the connection was closed, not left open


@pytest.mark.parametrize("drip_server", ["body"], indirect=True)
def test_fetch_posts_and_send_digest_stop_on_a_dripping_feed_and_free_the_send_lock(
    app: Flask, runner: FlaskCliRunner, drip_server: DripServer, clock: FrozenClock
) -> None:
    use_feed(app, drip_server.url)
    app.config["FEED_TIMEOUT"] = 0.5
    message = (
        f"Cannot read the posts: the feed at {drip_server.url} did not finish within 0.5 "
        "seconds; try again later or raise NEWSLETTER_FEED_TIMEOUT\n"
    )

    fetched = runner.invoke(args=["fetch-posts"])
    assert (fetched.exit_code, fetched.stdout, fetched.stderr) == (1, "", message)

    with app.app_context():
        db.session.add(
            Subscriber(
                email="reader@example.com", status=CONFIRMED, created_at=clock(), updated_at=clock()
            )
        )
        db.session.commit()
    sent = runner.invoke(args=["send-digest", "--yes"])
    assert sent.exit_code == 1 and message in sent.stderr
    assert not drip_server.finished.is_set()
    assert snapshot(app) == ([], [])
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Campaign)) == 0
        # The lock went with the command: the next sender gets it at once.
        with SendLock(
            sending_state_dir(app.config["SQLALCHEMY_DATABASE_URI"], app.instance_path), db.engine
        ) as lock:
            assert lock.held


@pytest.mark.parametrize(
    "route",
    [
        Route(b"<rss>" + b"x" * 5000 + b"</rss>"),  # Content-Length says so up front
        Route(b"<rss>" + b"x" * 5000 + b"</rss>", declare_length=False),  # found while reading
        Route(b"<rss>" + b" " * 2_000_000 + b"</rss>", gzip=True),  # small on the wire only
    ],
    ids=["declared", "undeclared", "gzip-bomb"],
)
def test_oversized_feed_is_refused(app: Flask, feed_server: FeedServer, route: Route) -> None:
    feed_server.routes["/feed.xml"] = route
    use_feed(app, feed_server.url("/feed.xml"))
    app.config["FEED_MAX_BYTES"] = 4096
    with pytest.raises(PostSourceError, match="larger than 4,096 bytes.*NEWSLETTER_FEED_MAX_BYTES"):
        sync(app)
    assert snapshot(app) == ([], [])


def test_oversized_feed_file_is_refused(app: Flask) -> None:
    use_feed(app, FEEDS / "rss20.xml")
    app.config["FEED_MAX_BYTES"] = 1024
    with pytest.raises(PostSourceError, match="larger than 1,024 bytes"):
        sync(app)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda server, tmp: str(tmp / "missing.xml"), "there is no feed file"),
        (lambda server, tmp: str(FEEDS / "not_a_feed.html"), "not an RSS, Atom or JSON feed"),
        (lambda server, tmp: server.url("/nowhere.xml"), "answered HTTP 404"),
        (lambda server, tmp: server.url("/broken"), "answered HTTP 503.*try again later"),
        (lambda server, tmp: server.url("/empty"), "not an RSS, Atom or JSON feed"),
        (lambda server, tmp: server.url("/bad.json"), "not valid JSON"),
        (lambda server, tmp: server.url("/other.json"), "not a JSON Feed"),
        (lambda server, tmp: server.url("/to-ftp"), "redirected to an address that is not http"),
        (lambda server, tmp: "http://127.0.0.1:9/feed.xml", "could not reach"),  # nothing listens
    ],
    ids=[
        "missing-file",
        "html-page",
        "404",
        "503",
        "empty",
        "bad-json",
        "not-json-feed",
        "ftp-redirect",
        "refused",
    ],
)
def test_unreadable_sources_raise_one_line_and_change_nothing(
    app: Flask, feed_server: FeedServer, tmp_path: Path, setup: Any, message: str
) -> None:
    feed_server.routes.update(
        {
            "/broken": Route(b"oops", status=503, content_type="text/plain"),
            "/empty": Route(b""),
            "/bad.json": Route(b'{"items": [', content_type="application/feed+json"),
            "/other.json": Route(b'{"name": "not a feed"}', content_type="application/json"),
            "/to-ftp": Route(status=302, location="ftp://127.0.0.1/feed.xml"),
        }
    )
    use_feed(app, FEEDS / "edit_before.xml")
    sync(app)
    before = snapshot(app)
    use_feed(app, setup(feed_server, tmp_path))
    with pytest.raises(PostSourceError, match=message) as caught:
        sync(app)
    assert "\n" not in str(caught.value)
    assert snapshot(app) == before


def test_no_source_configured_is_an_error(app: Flask) -> None:
    with pytest.raises(NoPostSourceError, match="NEWSLETTER_FEED_URL.*NEWSLETTER_POSTS_DIR"):
        sync(app)


# --- first sync, backfill, waiting posts ---------------------------------------------------


def test_first_sync_archives_published_posts_and_later_ones_are_new(
    app: Flask, tmp_path: Path, clock: FrozenClock
) -> None:
    feed = tmp_path / "feed.xml"
    scheduled = {
        "title": "Winter Solstice Walk",
        "guid": "solstice",
        "link": f"{BLOG_ORIGIN}/s",
        "date": datetime(2026, 12, 21, 8, 0, tzinfo=UTC),
    }
    published = dated_items(5, newest=datetime(2026, 10, 30, 8, 0, tzinfo=UTC))
    feed.write_bytes(rss([scheduled, *published]))
    use_feed(app, feed)

    first = sync(app)
    assert first.first_sync
    assert first.archived_titles == [f"Weekly Practice {n}" for n in (5, 4, 3, 2, 1)]
    assert [(p.title, p.waiting) for p in first.new] == [
        ("Winter Solstice Walk", "scheduled for 2026-12-21 08:00 UTC")
    ]
    posts = stored(app)
    assert all(posts[f"Weekly Practice {n}"].archived for n in range(1, 6))
    assert not posts["Winter Solstice Walk"].archived  # it goes out once it is due

    clock.advance(days=1)
    fresh = {
        "title": "A New Week",
        "guid": "new-week",
        "link": f"{BLOG_ORIGIN}/new-week",
        "date": datetime(2026, 11, 3, 7, 0, tzinfo=UTC),
    }
    feed.write_bytes(rss([scheduled, fresh, *published]))
    second = sync(app)
    assert not second.first_sync
    assert (second.new_titles, second.archived_titles, second.unchanged) == (["A New Week"], [], 6)
    assert not stored(app)["A New Week"].archived
    assert all(stored(app)[f"Weekly Practice {n}"].archived for n in range(1, 6))


def test_backfill_on_a_later_sync_brings_back_the_newest_posts_never_mailed(
    app: Flask, tmp_path: Path, clock: FrozenClock
) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes(rss(dated_items(5, newest=datetime(2026, 10, 30, tzinfo=UTC))))
    use_feed(app, feed)
    sync(app)  # the first sync archives all five
    with app.app_context():
        mail_posts(app, ["Weekly Practice 5"])  # as if an earlier digest had carried it
    report = sync(app, backfill=2)
    assert not report.first_sync and report.new_titles == []
    assert report.backfilled_titles == ["Weekly Practice 4", "Weekly Practice 3"]
    with app.app_context():
        chosen = select_digest_posts(db.session, get_services(app))
        assert [p.title for p in chosen] == ["Weekly Practice 4", "Weekly Practice 3"]
    assert sorted(t for t, p in stored(app).items() if p.archived) == [
        "Weekly Practice 1",
        "Weekly Practice 2",
    ]


def mail_posts(app: Flask, titles: list[str]) -> None:
    """Put the posts with these titles into a sent digest, as send-digest would have."""
    campaign = Campaign(
        kind="digest",
        subject="Earlier digest",
        content_hash="0" * 64,
        status="sent",
        created_at=NOW,
        html="<p>x</p>",
        text="x",
    )
    db.session.add(campaign)
    db.session.flush()
    for post in db.session.scalars(select(Post).where(Post.title.in_(titles))):
        post.campaign_id, post.archived = campaign.id, False
    db.session.commit()


@pytest.mark.parametrize(("backfill", "mailed"), [(0, []), (2, [5, 4]), (9, [5, 4, 3, 2, 1])])
def test_backfill_keeps_the_newest_posts_for_the_first_digest(
    app: Flask, tmp_path: Path, backfill: int, mailed: list[int]
) -> None:
    feed = tmp_path / "feed.xml"
    items = dated_items(5, newest=datetime(2026, 10, 30, tzinfo=UTC))
    feed.write_bytes(rss(items[2:] + items[:2]))  # order in the feed does not matter; dates do
    use_feed(app, feed)
    report = sync(app, backfill=backfill)
    assert report.new_titles == [f"Weekly Practice {n}" for n in mailed]
    posts = stored(app)
    assert sorted(t for t, p in posts.items() if not p.archived) == sorted(report.new_titles)


def test_future_dated_and_draft_posts_wait(app: Flask, clock: FrozenClock, tmp_path: Path) -> None:
    folder = tmp_path / "posts"
    folder.mkdir()
    for path in POSTS.glob("*.md"):
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    use_folder(app, folder)
    report = sync(app)
    assert {p.title: p.waiting for p in report.new} == {
        "Winter Light": "scheduled for 2026-11-20 08:00 UTC",
        "Unfinished Thoughts": "draft",
    }
    posts = stored(app)
    winter, unfinished = posts["Winter Light"], posts["Unfinished Thoughts"]
    assert winter.published_at == datetime(2026, 11, 20, 8, 0, tzinfo=UTC) > NOW
    assert not winter.draft and not winter.archived
    assert unfinished.draft and not unfinished.archived
    assert posts["Morning Pages, Gently"].archived

    # Publishing the draft later is an update of the same post, still not archived.
    draft_file = folder / "unfinished-thoughts.md"
    draft_file.write_text(
        draft_file.read_text(encoding="utf-8").replace("draft: true\n", ""), encoding="utf-8"
    )
    clock.advance(days=1)
    later = sync(app)
    assert later.updated_titles == ["Unfinished Thoughts"] and later.new == []
    published = stored(app)["Unfinished Thoughts"]
    assert not published.draft and not published.archived and published.id == unfinished.id


# --- Markdown folder -----------------------------------------------------------------------


def test_markdown_folder_posts(app: Flask) -> None:
    use_folder(app, POSTS)
    report = sync(app, backfill=10)
    posts = stored(app)
    # _index.md, notes.txt are not posts; a page bundle is.
    assert sorted(posts) == sorted(
        [
            "Morning Pages, Gently",
            "The Long Exhale: Why Breathing Out Matters",
            "Letters to Myself",
            "Winter Light",
            "Unfinished Thoughts",
            "Tea for One",
        ]
    )
    assert report.new_titles == [  # newest first, drafts and scheduled posts included
        "Winter Light",
        "Unfinished Thoughts",
        "Letters to Myself",
        "The Long Exhale: Why Breathing Out Matters",
        "Tea for One",
        "Morning Pages, Gently",
    ]

    pages = posts["Morning Pages, Gently"]
    assert pages.url == f"{BLOG_ORIGIN}/morning-pages"  # the slug
    assert pages.subtitle == "Three pages, no rules, before the day begins"
    assert pages.summary == (
        "Write three pages by hand each morning. Not to produce anything; "
        "just to empty the mind onto paper."
    )
    assert pages.image_url == f"{BLOG_ORIGIN}/images/notebook.jpg"
    assert pages.author == "Mira Holm"
    assert pages.published_at == datetime(2026, 10, 5, 6, 45, tzinfo=UTC)
    assert "<strong>not even you</strong>" in (pages.content_html or "")

    exhale = posts["The Long Exhale: Why Breathing Out Matters"]
    assert exhale.url == f"{BLOG_ORIGIN}/2026-10-19-the-long-exhale"  # slug: the file's stem
    assert exhale.published_at == datetime(2026, 10, 19, tzinfo=UTC)  # a bare date
    assert exhale.image_url == f"{BLOG_ORIGIN}/breath.png"  # the first image in the body
    assert "<table>" in (exhale.content_html or "")
    assert_email_safe(exhale.content_html or "")
    assert "should never reach an inbox" not in (exhale.content_html or "")

    letters = posts["Letters to Myself"]
    assert letters.url == f"{BLOG_ORIGIN}/archive/2026/letters-to-myself.html"  # the url key
    assert letters.published_at == datetime(2026, 10, 26, 8, 30, tzinfo=UTC)
    assert posts["Tea for One"].url == f"{BLOG_ORIGIN}/tea-for-one"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("---\ntitle: [unclosed\n---\nBody\n", "not valid YAML"),
        ("---\ntitle: No end\nBody\n", "no closing --- line"),
        ("---\n- a list\n---\nBody\n", "key: value"),
        ("---\ntitle: x\ndate: next tuesday\n---\nBody\n", "is not a date"),
        ("+++\ntitle = 'toml'\n+++\nBody\n", "TOML front matter"),
    ],
)
def test_bad_markdown_post_names_the_file(
    app: Flask, tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "good.md").write_text("---\ntitle: Fine\n---\nFine.\n", encoding="utf-8")
    (tmp_path / "broken-post.md").write_text(text, encoding="utf-8")
    use_folder(app, tmp_path)
    with pytest.raises(PostSourceError, match=f"broken-post.md.*{message}"):
        sync(app)
    assert snapshot(app) == ([], [])


def test_missing_posts_folder_is_an_error(app: Flask, tmp_path: Path) -> None:
    use_folder(app, tmp_path / "nope")
    with pytest.raises(PostSourceError, match="no folder .*NEWSLETTER_POSTS_DIR"):
        sync(app)


# --- the fetch-posts command ---------------------------------------------------------------


def test_fetch_posts_prints_new_titles_and_counts(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes((FEEDS / "edit_before.xml").read_bytes())
    use_feed(app, feed)
    first = runner.invoke(args=["fetch-posts", "--backfill", "1"])
    assert first.exit_code == 0, first.output
    assert "First sync of the feed file" in first.output
    assert (
        "the newest 1 of the 2 posts already published go into the next digest "
        "(--backfill 1); the other 1 are recorded as sent before"
    ) in first.output
    assert "New posts (1):\n  Evening Wind-Dwon\n" in first.output

    feed.write_bytes((FEEDS / "edit_after.xml").read_bytes())
    second = runner.invoke(args=["fetch-posts"])
    assert second.exit_code == 0, second.output
    assert second.output == "No new posts.\nUpdated 1, unchanged 1.\n"


ARCHIVED_ALL = (
    "5 post(s) already published are recorded as sent before and will not be "
    "mailed (`newsletter fetch-posts --backfill N` mails the newest N, now or later)."
)


@pytest.mark.parametrize(
    ("args", "message", "mailed"),
    [
        ([], ARCHIVED_ALL, []),
        (["--backfill", "0"], ARCHIVED_ALL, []),
        (
            ["--backfill", "2"],
            "the newest 2 of the 5 posts already published go into the next "
            "digest (--backfill 2); the other 3 are recorded as sent before and will not be "
            "mailed.",
            [5, 4],
        ),
        (
            ["--backfill", "5"],
            "all 5 post(s) already published go into the next digest (--backfill 5).",
            [5, 4, 3, 2, 1],
        ),
        (
            ["--backfill", "9"],
            "all 5 post(s) already published go into the next digest (--backfill 9).",
            [5, 4, 3, 2, 1],
        ),
    ],
)
def test_fetch_posts_says_what_a_first_sync_did_with_the_published_posts(
    app: Flask,
    runner: FlaskCliRunner,
    tmp_path: Path,
    args: list[str],
    message: str,
    mailed: list[int],
) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes(rss(dated_items(5, newest=datetime(2026, 10, 30, tzinfo=UTC))))
    use_feed(app, feed)
    result = runner.invoke(args=["fetch-posts", *args])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"First sync of the feed file {feed}: {message}\n")
    assert "ignored" not in result.output
    assert sorted(t for t, p in stored(app).items() if not p.archived) == sorted(
        f"Weekly Practice {n}" for n in mailed
    )


def test_fetch_posts_backfill_on_a_first_sync_with_nothing_published_says_so(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes(
        rss(
            [
                {
                    "title": "Winter Solstice Walk",
                    "guid": "solstice",
                    "date": datetime(2026, 12, 21, 8, 0, tzinfo=UTC),
                }
            ]
        )
    )
    use_feed(app, feed)
    result = runner.invoke(args=["fetch-posts", "--backfill", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        f"First sync of the feed file {feed}: no post is published there yet, so --backfill 2 "
        "found none to mail.\nNew posts (1):\n"
    )


def test_fetch_posts_backfill_works_on_later_syncs_and_says_what_it_did(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes(rss(dated_items(5, newest=datetime(2026, 10, 30, tzinfo=UTC))))
    use_feed(app, feed)
    assert runner.invoke(args=["fetch-posts"]).exit_code == 0  # archives all five

    def fetch(*args: str) -> str:
        result = runner.invoke(args=["fetch-posts", *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert fetch("--backfill", "2") == (
        "--backfill 2: 2 post(s) published before and never mailed go into the next digest:\n"
        "  Weekly Practice 5\n  Weekly Practice 4\n"
        "No new posts.\nUpdated 0, unchanged 5.\n"
    )
    assert fetch("--backfill", "1").startswith(
        "--backfill 1: the newest 1 published post(s) never mailed are already new, waiting "
        "for the next digest; nothing changed.\n"
    )
    assert fetch("--backfill", "0").startswith("--backfill 0 marks no post as new.\n")
    with app.app_context():
        mail_posts(app, ["Weekly Practice 5", "Weekly Practice 4"])
    # Posts in a digest are not "never mailed": the next newest ones come back instead.
    assert fetch("--backfill", "2").startswith(
        "--backfill 2: 2 post(s) published before and never mailed go into the next digest:\n"
        "  Weekly Practice 3\n  Weekly Practice 2\n"
    )
    assert fetch("--backfill", "9").startswith(
        "--backfill 9: 1 post(s) published before and never mailed go into the next digest:\n"
        "  Weekly Practice 1\n"
    )
    assert fetch("--backfill", "9").startswith(
        "--backfill 9: all 3 published post(s) never mailed are already new, waiting for the "
        "next digest; nothing changed.\n"
    )
    with app.app_context():
        mail_posts(app, ["Weekly Practice 3", "Weekly Practice 2", "Weekly Practice 1"])
    assert fetch("--backfill", "3").startswith(
        "--backfill 3: no published post is left that was never mailed; nothing changed.\n"
    )
    assert [t for t, p in stored(app).items() if p.archived] == []


def test_fetch_posts_backfill_works_when_the_feed_has_not_changed(
    app: Flask, runner: FlaskCliRunner, feed_server: FeedServer
) -> None:
    feed_server.routes["/feed.xml"] = Route(
        rss(dated_items(3, newest=datetime(2026, 10, 30, tzinfo=UTC))), etag='"v1"'
    )
    use_feed(app, feed_server.url("/feed.xml"))
    assert runner.invoke(args=["fetch-posts"]).exit_code == 0  # archives all three
    result = runner.invoke(args=["fetch-posts", "--backfill", "1"])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "--backfill 1: 1 post(s) published before and never mailed go into the next digest:\n"
        "  Weekly Practice 3\n"
        f"No new posts: the feed at {feed_server.url('/feed.xml')} has not changed since the "
        "last fetch.\n"
    )
    assert feed_server.requests[-1][1]["If-None-Match"] == '"v1"'  # it was a 304
    assert not stored(app)["Weekly Practice 3"].archived


def test_fetch_posts_reports_waiting_posts(app: Flask, runner: FlaskCliRunner) -> None:
    use_folder(app, POSTS)
    result = runner.invoke(args=["fetch-posts"])
    assert result.exit_code == 0, result.output
    assert "  Winter Light  [waiting: scheduled for 2026-11-20 08:00 UTC]\n" in result.output
    assert "  Unfinished Thoughts  [waiting: draft]\n" in result.output
    assert "4 post(s) already published" in result.output


def test_fetch_posts_error_is_one_line_with_exit_status_1(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    use_feed(app, tmp_path / "gone.xml")
    result = runner.invoke(args=["fetch-posts"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Cannot read the posts: there is no feed file ")
    assert "NEWSLETTER_FEED_URL" in result.stderr


def test_fetch_posts_without_a_source_names_both_settings(
    app: Flask, runner: FlaskCliRunner
) -> None:
    result = runner.invoke(args=["fetch-posts"])
    assert result.exit_code == 1
    assert "NEWSLETTER_FEED_URL" in result.stderr and "NEWSLETTER_POSTS_DIR" in result.stderr


def test_fetch_posts_rejects_a_negative_backfill(app: Flask, runner: FlaskCliRunner) -> None:
    use_folder(app, POSTS)
    result = runner.invoke(args=["fetch-posts", "--backfill", "-1"])
    assert result.exit_code == 2
    assert snapshot(app) == ([], [])


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"FEED_URL": "https://blog.example.com/feed.xml", "POSTS_DIR": "posts"},
            "NEWSLETTER_FEED_URL: is set, and so is NEWSLETTER_POSTS_DIR; set only one",
        ),
        ({"FEED_URL": "ftp://blog.example.com/feed.xml"}, "NEWSLETTER_FEED_URL: expected an http"),
        ({"FEED_URL": "https:///feed.xml"}, "NEWSLETTER_FEED_URL: expected an http"),
        ({"FEED_TIMEOUT": 0}, "NEWSLETTER_FEED_TIMEOUT"),
        ({"FEED_MAX_BYTES": "lots"}, "NEWSLETTER_FEED_MAX_BYTES: expected a number"),
    ],
)
def test_bad_post_settings_stop_start_up(
    config: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.setenv("NEWSLETTER_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        create_app({**config, **settings})


def test_post_settings_are_normalised(
    config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.chdir(tmp_path)
    app = create_app(
        {
            **config,
            "FEED_URL": "  feed.xml ",
            "POSTS_DIR": "",
            "FEED_TIMEOUT": "2.5",
            "FEED_MAX_BYTES": "5000000",
        }
    )
    try:
        assert (app.config["FEED_URL"], app.config["POSTS_DIR"]) == ("feed.xml", None)
        assert (app.config["FEED_TIMEOUT"], app.config["FEED_MAX_BYTES"]) == (2.5, 5_000_000)
    finally:
        app.extensions["newsletter.outbox_sender"].stop()
        with app.app_context():
            db.engine.dispose()

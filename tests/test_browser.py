"""A real headless Chromium on the reader's whole journey: the blog's embedded form on one
127.0.0.1 port posts cross-origin to the service on another; the emails come from the test's SMTP
server; confirm and unsubscribe happen by clicking the pages' buttons.

Debian's ``chromium`` package provides the browser (``.ci/run`` installs it); Playwright drives
it through ``executable_path``, so no browser download is needed. In CI (``CI`` set, as
``.ci/run`` runs) a missing Chromium fails the test: CI must run it. On a developer's machine
without Chromium it is skipped with a reason saying how to install it, like the PostgreSQL tests.

``NEWSLETTER_SCREENSHOT_DIR=docs pytest tests/test_browser.py`` refreshes the README's pictures.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.serving import BaseWSGIServer, make_server

from newsletter.db import db
from newsletter.embed import OOPS, THANKS, render_snippet
from newsletter.mailcatcher import free_port
from newsletter.models import Subscriber
from tests.conftest import wait_for_outbox
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("NEWSLETTER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
POST_PATH = "/posts/five-slow-breaths"
# Resolved now: the app fixture changes the working directory.
SCREENSHOT_DIR = (
    Path(os.environ["NEWSLETTER_SCREENSHOT_DIR"]).resolve()
    if os.environ.get("NEWSLETTER_SCREENSHOT_DIR")
    else None
)

BLOG_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Five slow breaths before breakfast</title>
<style>
  body {{ font: 17px/1.6 Georgia, serif; color: #2b2b2b; background: #fbf8f4; margin: 0; }}
  main {{ max-width: 34rem; margin: 2rem auto; padding: 0 1.25rem; }}
  h1 {{ font-weight: normal; }} h2 {{ font-weight: normal; margin-top: 2rem; }}
</style></head>
<body><main>
<h1>Five slow breaths before breakfast</h1>
<p>Most mornings begin at a run: the alarm, the kettle, the first messages of the day. Before
any of that, try this. Sit on the edge of the bed, feet flat on the floor, and breathe in for a
count of four and out for a count of six. Five times. That is all.</p>
<h2>Join the Community!</h2>
<p>One gentle email when a new post is out. No spam, ever.</p>
{snippet}
</main></body></html>
"""


@dataclass
class Site:
    """The blog (static pages) and the service, each on its own 127.0.0.1 port."""

    blog: str
    service: str
    app: Flask
    shots: Path


class _BlogHandler(BaseHTTPRequestHandler):
    pages: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        page = self.pages.get(self.path.split("?")[0].split("#")[0])
        body = (page or "Not found").encode()
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the test's output is the browser's story, not an access log."""


@pytest.fixture
def ports() -> dict[str, int]:
    return {"blog": free_port(), "service": free_port()}


@pytest.fixture
def config(config: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
    """The service on a real port, with the blog's origin allowed."""
    blog = f"http://127.0.0.1:{ports['blog']}"
    config.update(
        PUBLIC_URL=f"http://127.0.0.1:{ports['service']}",
        SITE_URL=blog,
        ALLOWED_ORIGINS=blog,
        PRIVACY_POLICY_URL=f"{blog}/privacy",
    )
    return config


@pytest.fixture
def site(app: Flask, ports: dict[str, int], tmp_path: Path) -> Iterator[Site]:
    blog = f"http://127.0.0.1:{ports['blog']}"
    snippet = render_snippet(app.config, f"{blog}{POST_PATH}")
    handler = type(
        "BlogHandler",
        (_BlogHandler,),
        {
            "pages": {
                POST_PATH: BLOG_PAGE.format(snippet=snippet),
                "/privacy": "<h1>Privacy Policy</h1>"
                "<p>We keep your address to send the newsletter.</p>",
            }
        },
    )
    blog_server = ThreadingHTTPServer(("127.0.0.1", ports["blog"]), handler)
    service_server: BaseWSGIServer = make_server("127.0.0.1", ports["service"], app, threaded=True)
    threads = [
        threading.Thread(target=server.serve_forever, daemon=True)
        for server in (blog_server, service_server)
    ]
    for thread in threads:
        thread.start()
    shots = SCREENSHOT_DIR or tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Site(blog=blog, service=app.config["PUBLIC_URL"], app=app, shots=shots)
    finally:
        for server in (blog_server, service_server):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(5)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        message = (
            f"Chromium is missing at {CHROMIUM}: install Debian's chromium package "
            "(apt-get install -y chromium chromium-driver; .ci/run does it) or set "
            "NEWSLETTER_CHROMIUM to the browser's path."
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


def snap(page: Any, path: Path, selector: str = "main", pad: int = 24) -> None:
    """A picture of one part of the page (the README's screenshots), with a margin."""
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not on the page"
    top = max(box["y"] - pad, 0)
    page.screenshot(
        path=str(path),
        clip={
            "x": max(box["x"] - pad, 0),
            "y": top,
            "width": min(box["width"] + 2 * pad, page.viewport_size["width"]),
            "height": box["height"] + pad + min(pad, box["y"]),
        },
    )


def link(text: str, base: str, path: str) -> str:
    """The first absolute link to ``base/path/...`` in an email body."""
    match = re.search(re.escape(base) + "/" + path + r"/[A-Za-z0-9_.\-]+", text)
    assert match, f"no {path} link in:\n{text}"
    return match.group(0)


def reader(app: Flask, email: str) -> Subscriber:
    with app.app_context():
        found = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert found is not None, f"no reader {email}"
        events = list(found.events)
        db.session.expunge_all()
        found.__dict__["events"] = events
        return found


def test_the_reader_journey_in_a_real_browser(
    site: Site, browser: Any, smtp_sink: SmtpSink
) -> None:
    page = browser.new_page(viewport={"width": 640, "height": 1000})
    page.set_default_timeout(15_000)

    # The hosted subscribe page, for the README.
    page.goto(f"{site.service}/subscribe")
    assert page.locator("h1").inner_text() == "Join the Community!"
    snap(page, site.shots / "subscribe-page.png")

    # The blog's embedded form posts cross-origin with fetch and answers in place.
    page.goto(f"{site.blog}{POST_PATH}?utm_source=calm-friends")
    page.fill("#nl-email", "Rosa.Reader@Example.com")
    page.fill("#nl-name", "Rosa")
    page.click("#newsletter-form button[type=submit]")
    status = page.locator("#newsletter-form .nl-status").first
    status.filter(has_text=THANKS).wait_for()
    assert status.inner_text() == THANKS
    assert page.url == f"{site.blog}{POST_PATH}?utm_source=calm-friends"  # never left the page
    assert page.input_value("#nl-email") == ""
    snap(page, site.shots / "embed-thanks.png")

    confirmation = smtp_sink.wait_for(1)[0]
    wait_for_outbox(site.app)
    assert confirmation.recipients == ["rosa.reader@example.com"]
    requested = reader(site.app, "rosa.reader@example.com").events[0]
    assert requested.source_url == f"{site.blog}{POST_PATH}"  # the page, without its query
    assert requested.consent_text == site.app.config["CONSENT_TEXT"]

    # The link in the email shows one button; clicking it confirms.
    page.goto(link(confirmation.body("plain"), site.service, "confirm"))
    assert page.locator("h1").inner_text() == "One more step"
    snap(page, site.shots / "confirm-page.png")
    page.click("text=Confirm my subscription")
    page.locator("h1", has_text="You're subscribed!").wait_for()
    assert reader(site.app, "rosa.reader@example.com").status == "confirmed"

    # Later, the welcome email's unsubscribe link: a page with one button.
    welcome = smtp_sink.wait_for(2)[1]
    page.goto(link(welcome.body("html"), site.service, "unsubscribe"))
    page.click("button:has-text('Unsubscribe')")
    page.locator("h1", has_text="You're unsubscribed").wait_for()
    left = reader(site.app, "rosa.reader@example.com")
    assert left.status == "unsubscribed"
    assert [e.kind for e in left.events] == [
        "requested",
        "confirmation_sent",
        "confirmed",
        "withdrawn",
    ]
    page.close()


def test_the_embedded_form_without_script_comes_back_to_the_page(
    site: Site, browser: Any, smtp_sink: SmtpSink
) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{site.blog}{POST_PATH}")
    assert not page.locator("#newsletter-thanks").is_visible()
    page.fill("#nl-email", "plain.form@example.com")
    page.click("#newsletter-form button[type=submit]")
    page.wait_for_url(f"{site.blog}{POST_PATH}#newsletter-thanks")
    assert page.locator("#newsletter-thanks").is_visible()
    assert page.locator("#newsletter-thanks").inner_text() == THANKS
    assert smtp_sink.wait_for(1)[0].recipients == ["plain.form@example.com"]
    signed_up = reader(site.app, "plain.form@example.com")
    assert signed_up.status == "pending" and signed_up.events[0].method == "form"
    context.close()


def test_the_embedded_form_reports_problems_in_place(site: Site, browser: Any) -> None:
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{site.blog}{POST_PATH}")
    page.fill("#nl-email", "someone@nowhere")  # the browser accepts it; the service does not
    page.click("#newsletter-form button[type=submit]")
    status = page.locator("#newsletter-form .nl-status.nl-error")
    status.wait_for()
    assert status.inner_text().startswith(OOPS)
    assert "doesn't look like an email address" in status.inner_text()

    # The same page on an origin that is not allowed: CORS stops the post in the browser.
    page.goto(f"http://localhost:{site.blog.rsplit(':', 1)[1]}{POST_PATH}")
    page.fill("#nl-email", "elsewhere@example.com")
    page.click("#newsletter-form button[type=submit]")
    page.locator("#newsletter-form .nl-status.nl-error").wait_for()
    assert page.locator("#newsletter-form .nl-status").first.inner_text() == OOPS
    with site.app.app_context():
        assert db.session.scalars(select(Subscriber.email)).all() == []
    page.close()

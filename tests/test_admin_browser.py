"""A real headless Chromium drives the dashboard as the author would: sign in, find a reader,
preview the next digest at phone width, leave a post out, send a test, send now and watch it
finish, compose and send an announcement, change the brand colour and run the health checks
(against a local DNS server publishing nothing).

The service runs on a real 127.0.0.1 port and a real worker loop runs in a thread, against the
test's SMTP server. Chromium as in tests/test_browser.py: skipped without it locally, a failure
in CI. ``NEWSLETTER_SCREENSHOT_DIR=docs`` (see docs/make_admin_screenshots.py) writes the
README's pictures of each page.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.mailcatcher import free_port
from newsletter.posts import sync_posts
from newsletter.worker import Worker
from tests.admin_helpers import AUTHOR, PASSWORD, make_author
from tests.dns_server import DnsServer
from tests.smtp_sink import SmtpSink
from tests.test_browser import SCREENSHOT_DIR, browser  # noqa: F401 (the fixture)
from tests.test_sending import add_readers, write_post

pytestmark = pytest.mark.browser


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture
def config(
    config: dict[str, Any], port: int, tmp_path: Path, dns_server: DnsServer
) -> dict[str, Any]:
    folder = tmp_path / "posts"
    folder.mkdir()
    config.update(
        DNS_SERVER=dns_server.address,
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        POSTS_DIR=str(folder),
        SEND_CONNECTIONS=1,
        WORKER_POLL_SECONDS=0.2,
    )
    return config


@pytest.fixture
def service(app: Flask, port: int, config: dict[str, Any]) -> Iterator[str]:
    """The service on its port, a worker loop beside it, readers and two new posts."""
    folder = Path(config["POSTS_DIR"])
    with app.app_context():
        sync_posts(db.session(), get_services(app))  # the first sync: nothing archived later
        add_readers(db.session(), get_services(app).clock, 3)
        db.session.remove()
    write_post(folder, "rain", "Rain on the Roof", "2026-11-01")
    write_post(folder, "snow", "First Snow", "2026-10-31")
    make_author(app)
    server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True)
    worker = Worker(app, out=io.StringIO(), worker_id="browser:1:a")
    threads = [
        threading.Thread(target=server.serve_forever, daemon=True),
        threading.Thread(target=lambda: worker.run(install_signals=False), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield app.config["PUBLIC_URL"]
    finally:
        worker.stop()
        server.shutdown()
        server.server_close()
        for thread in threads:
            thread.join(10)


def shot(page: Any, name: str, tmp_path: Path) -> None:
    folder = SCREENSHOT_DIR or tmp_path
    page.screenshot(path=str(folder / f"admin-{name}.png"), full_page=True)


def test_the_author_does_her_day_to_day_work_in_the_dashboard(
    service: str,
    browser: Any,  # noqa: F811
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)

    # Sign in: the dashboard sends her to the sign-in page first.
    page.goto(f"{service}/admin/")
    assert "/admin/login" in page.url
    page.get_by_label("Email").fill(AUTHOR)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{service}/admin/")
    assert page.locator("h1").inner_text() == "Overview"
    shot(page, "overview", tmp_path)

    # Find a reader.
    page.get_by_role("link", name="Readers").click()
    page.get_by_label("Address or name").fill("reader2")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="reader2@example.com").click()
    assert page.locator("h1").inner_text() == "reader2@example.com"
    assert page.get_by_role("heading", name="Consent events").is_visible()
    shot(page, "reader", tmp_path)

    # The next digest: the preview at phone width, then leave a post out.
    page.get_by_role("link", name="Next digest").click()
    page.get_by_role("button", name="Phone").click()
    frame = page.locator("#digest-frame")
    assert frame.bounding_box()["width"] <= 376
    preview = page.frame_locator("#digest-frame")
    preview.get_by_text("First Snow").first.wait_for()
    shot(page, "digest-phone", tmp_path)
    page.locator("li", has_text="First Snow").get_by_role(
        "button", name="Leave out of this digest"
    ).click()
    assert page.get_by_role("heading", name="Left out").is_visible()
    preview.get_by_text("Rain on the Roof").first.wait_for()
    assert preview.get_by_text("First Snow").count() == 0

    # A personal note above the posts: typed, saved, seen in the preview.
    page.get_by_label("Personal note").fill("Back from the **hills**, with stories.")
    page.get_by_role("button", name="Save the note").click()
    assert page.get_by_text("Note saved for the next digest").is_visible()
    preview.locator("strong", has_text="hills").wait_for()
    page.get_by_role("button", name="Phone").click()
    preview.locator("strong", has_text="hills").wait_for()
    shot(page, "digest-note", tmp_path)

    # A test to herself.
    page.get_by_role("button", name="Send a test to me").click()
    assert page.get_by_text(f"Test sent to {AUTHOR}").is_visible()
    assert smtp_sink.to(AUTHOR)

    # Send now: she confirms with the number of readers and watches it finish.
    page.get_by_role("button", name="Send now").click()
    assert page.get_by_role("heading", name="to 3 readers?").is_visible()
    page.get_by_role("button", name="Yes, send to 3 readers").click()
    page.wait_for_url("**/admin/jobs/*")
    page.locator('[data-field="status"]', has_text="done").wait_for()
    assert page.locator('[data-field="sent"]').inner_text() == "3"
    shot(page, "send-now", tmp_path)
    assert "hills" in smtp_sink.to("reader1@example.com")[0].body("plain")

    # An announcement: compose with the live preview, then send.
    page.get_by_role("link", name="Campaigns").click()
    page.get_by_label("Subject").fill("A workshop in spring")
    page.get_by_label("Body (Markdown)").fill("Come and **breathe** with us on 4 April.")
    page.frame_locator("#campaign-frame").locator("strong", has_text="breathe").wait_for()
    shot(page, "campaigns", tmp_path)
    page.get_by_role("button", name="Send to readers").click()
    page.get_by_role("button", name="Yes, send to 3 readers").click()
    page.wait_for_url("**/admin/jobs/*")
    page.locator('[data-field="status"]', has_text="done").wait_for()
    assert len(smtp_sink.to("reader1@example.com")) == 2  # the digest and the announcement

    # The brand colour.
    page.get_by_role("link", name="Settings").click()
    page.get_by_label("Brand colour").fill("#aa3300")
    page.get_by_role("button", name="Save").click()
    assert page.get_by_text("Settings saved").is_visible()
    assert page.get_by_label("Brand colour").input_value() == "#aa3300"
    shot(page, "settings", tmp_path)
    # ... and sees it in the preview of the next digest (the post she left out waits there).
    page.get_by_role("link", name="Next digest").click()
    preview = page.frame_locator("#digest-frame")
    preview.get_by_text("First Snow").first.wait_for()
    assert "#aa3300" in preview.locator("body").inner_html().lower()

    # Health: the doctor's checks, run when she asks; the Overview then flags the problems.
    page.get_by_role("link", name="Health").click()
    page.get_by_role("button", name="Run the checks").click()
    page.get_by_role("heading", name="DNS records").wait_for()
    assert page.locator(".check.problem .status").first.inner_text() == "PROBLEM"
    shot(page, "health", tmp_path)
    page.get_by_role("link", name="Overview").click()
    assert page.get_by_text("problems need you").is_visible()

    # On a phone.
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, storage_state=context.storage_state()
    )
    mobile = phone.new_page()
    mobile.goto(f"{service}/admin/")
    assert mobile.evaluate("document.documentElement.scrollWidth") <= 390
    shot(mobile, "overview-phone", tmp_path)
    phone.close()
    context.close()

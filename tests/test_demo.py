"""`newsletter demo` as a newcomer runs it: a real process, real HTTP, its own mail catcher."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from newsletter.mailcatcher import free_port


def fetch(url: str, data: dict[str, str] | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Accept": "text/html"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        return response.status, response.read().decode()


def wait_for_server(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            fetch(url)
            return
        except OSError:
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.2)


def wait_for_worker(base: str) -> dict[str, object]:
    """The demo's worker has finished its first round (its heartbeat is in /healthz)."""
    deadline = time.monotonic() + 30
    while True:
        worker = json.loads(fetch(f"{base}/healthz")[1])["worker"]
        if worker["running"]:
            return worker  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"the demo's worker is not running: {worker}"
        time.sleep(0.2)


def test_demo_runs_with_no_setup_and_shows_caught_emails(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from newsletter.cli import main; main()",
            "demo",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{base}/healthz", process)
        worker = wait_for_worker(base)  # it sends the emails, as under `newsletter serve`
        assert worker["status"] == "1 running" and worker["last_error"] is None
        status, page = fetch(f"{base}/subscribe")
        assert status == 200 and "Join the Community!" in page
        status, thanks = fetch(f"{base}/subscribe", {"email": "newcomer@example.com"})
        assert status == 200 and "Please check your inbox" in thanks

        deadline = time.monotonic() + 10
        while "Please confirm" not in (mailbox := fetch(f"{base}/demo/mail")[1]):
            assert time.monotonic() < deadline, "no email was caught"
            time.sleep(0.2)
        html_link = re.search(r'href="(/demo/mail/[^"]+\.html)"', mailbox)
        assert html_link
        _, email_html = fetch(base + html_link.group(1))
        confirm = re.search(rf'href="({re.escape(base)}/confirm/[^"]+)"', email_html)
        assert confirm, email_html
        status, confirmed = fetch(confirm.group(1), {})
        assert "You&#39;re subscribed!" in confirmed

        caught = sorted((tmp_path / "instance" / "demo-mail").glob("*.eml"))
        deadline = time.monotonic() + 10
        while len(caught) < 2:
            assert time.monotonic() < deadline, "no welcome email was caught"
            time.sleep(0.2)
            caught = sorted((tmp_path / "instance" / "demo-mail").glob("*.eml"))
        assert b"Subject: Welcome to" in caught[1].read_bytes()
        assert (tmp_path / "instance" / "demo-posts").is_dir()

        # Every link in the welcome email answers: the blog, the privacy policy, unsubscribe.
        mailbox = fetch(f"{base}/demo/mail")[1]
        welcome_link = re.findall(r'href="(/demo/mail/[^"]+\.html)"', mailbox)[0]  # newest first
        _, welcome = fetch(base + welcome_link)
        links = set(re.findall(r'href="([^"]+)"', welcome))
        assert f"{base}/demo/blog" in links and f"{base}/demo/privacy" in links
        for link in links:
            assert link.startswith(base), link
            status, _ = fetch(link)
            assert status == 200, link
    finally:
        process.terminate()
        process.wait(timeout=10)
        output = process.stdout.read() if process.stdout else ""
        if process.stdout:
            process.stdout.close()
    # The worker sent them (the web process only queued): its log says so.
    assert re.search(r"Z worker started id=\S+ schedule=none", output), output
    assert len(re.findall(r"Z outbox sent=1 retrying=0 failed=0", output)) == 2, output


def test_the_demo_has_a_digest_ready_to_preview_in_the_browser(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from newsletter.cli import main; main()",
            "demo",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{base}/healthz", process)
        wait_for_worker(base)  # its first poll of the posts leaves the sample digest ready
        # Linked from the demo's own pages.
        for page in ("/subscribe", "/demo/mail", "/demo/blog"):
            assert 'href="/demo/digest"' in fetch(base + page)[1], page
        status, digest = fetch(f"{base}/demo/digest")
        assert status == 200
        for title in ("Slow Mornings", "Walking Without a Goal", "The Kindest Voice in the Room"):
            assert title in digest
        # Its post links lead to the demo's sample blog, which answers.
        post_links = set(re.findall(rf'href="({re.escape(base)}/demo/blog/[^"]+)"', digest))
        assert len(post_links) == 3
        for link in post_links:
            status, post = fetch(link)
            assert status == 200 and "<h1>" in post
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()

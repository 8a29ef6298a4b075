"""``newsletter worker`` and ``newsletter serve`` as real processes (the venv's console script)
against a real SMTP sink: SIGTERM in the middle of a send, then a restart; and the whole
service answering HTTP with the worker sending the confirmation email."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from newsletter.db import db
from newsletter.mailcatcher import free_port
from newsletter.models import QUEUED, SENT, Campaign, Delivery
from newsletter.worker_models import WorkerHeartbeat
from tests.conftest import needs_postgres
from tests.smtp_sink import Received, SmtpSink
from tests.test_sending import write_post
from tests.test_worker import ready

NEWSLETTER = str(Path(sys.executable).with_name("newsletter"))
GUARD = 60.0  # seconds: only so a broken build fails instead of hanging


class HoldingSink(SmtpSink):
    """A sink that, on its ``hold_at``-th message, takes it and then holds the reply until the
    test releases it: a send caught in flight, by handshake rather than by timing."""

    def __init__(self, hold_at: int | None) -> None:
        super().__init__()
        self.hold_at = hold_at
        self.holding = threading.Event()
        self.release = threading.Event()

    def _store(self, received: Received) -> None:
        super()._store(received)
        if self.hold_at is not None and len(self.messages) == self.hold_at:
            self.holding.set()
            self.release.wait(GUARD)


@pytest.fixture
def holding_sink() -> Iterator[HoldingSink]:
    sink = HoldingSink(hold_at=3).start()
    yield sink
    sink.release.set()
    sink.stop()


def process_env(config: dict[str, Any], tmp_path: Path, **extra: Any) -> dict[str, str]:
    """The test's settings as NEWSLETTER_* variables for a child process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    settings = {key: value for key, value in config.items() if key != "TESTING"}
    # A child runs as in production, where a short key is refused.
    settings["SECRET_KEY"] = "worker-process-test-key-" + "k" * 24
    settings.update(extra)
    env.update(
        {f"NEWSLETTER_{key}": str(value) for key, value in settings.items() if value is not None}
    )
    env["NEWSLETTER_INSTANCE_PATH"] = str(tmp_path / "instance")
    return env


class Output:
    """A child's output lines, read in a thread; ``seen`` waits for a line containing text."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def close(self, process: subprocess.Popen[str]) -> None:
        """Once the process has ended: read to the end and close the pipe."""
        self._thread.join(GUARD)
        assert process.stdout is not None
        process.stdout.close()

    def seen(self, *texts: str) -> bool:
        """Wait for a line containing any of ``texts``."""
        with self._cond:
            return self._cond.wait_for(
                lambda: any(text in line for line in self.lines for text in texts), GUARD
            )


def start_worker(env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[str], Output]:
    process = subprocess.Popen(
        [NEWSLETTER, "worker"],
        env=env,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return process, Output(process)


def statuses(app: Flask) -> Counter[str]:
    with app.app_context():
        found = Counter(db.session.scalars(select(Delivery.status)))
        db.session.remove()
    return found


@pytest.mark.slow
def test_sigterm_mid_send_exits_0_and_a_restart_mails_everyone_exactly_once(
    config: dict[str, Any], make_app: Any, holding_sink: HoldingSink, tmp_path: Path
) -> None:
    folder = tmp_path / "posts"
    folder.mkdir()
    config.update(POSTS_DIR=str(folder), SMTP_PORT=holding_sink.port)
    app = make_app()
    emails = ready(app, readers=20)
    write_post(folder, "rain", "Rain on the Roof", "2026-11-02")
    env = process_env(
        config, tmp_path, DIGEST_SCHEDULE="* * * * *", WORKER_POLL_SECONDS=0.2, SEND_CONNECTIONS=1
    )

    process, output = start_worker(env, tmp_path)
    try:
        assert holding_sink.holding.wait(GUARD), "".join(output.lines)
        process.send_signal(signal.SIGTERM)
        assert output.seen("stopping: SIGTERM"), "".join(output.lines)
        holding_sink.release.set()  # the message in hand gets its 250
        assert process.wait(GUARD) == 0, "".join(output.lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.close(process)
    # It stopped mid-send: the held message was finished and written down, and the rest
    # wait (a message the connection had already started as the signal came may go too).
    # The ledger says exactly what the server took.
    mailed = len(holding_sink.messages)
    assert 3 <= mailed < len(emails), [m.recipients for m in holding_sink.messages]
    assert statuses(app) == {SENT: mailed, QUEUED: len(emails) - mailed}
    assert output.seen("worker stopped")
    with app.app_context():
        assert db.session.scalar(select(WorkerHeartbeat.stopped_at)) is not None
        db.session.remove()

    holding_sink.hold_at = None
    process, output = start_worker(env, tmp_path)
    try:
        holding_sink.wait_for(len(emails), timeout=GUARD)
        assert output.seen("sent campaign=1"), "".join(output.lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(GUARD) == 0, "".join(output.lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.close(process)
    copies = Counter(address for m in holding_sink.messages for address in m.recipients)
    assert copies == {email: 1 for email in emails}
    assert statuses(app) == {SENT: len(emails)}
    with app.app_context():
        assert db.session.scalar(select(Campaign.status)) == SENT
        db.session.remove()


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


def wait_until_healthy(base: str, process: subprocess.Popen[str]) -> None:
    """Wait until ``base/healthz`` answers 200 (a 503, a refused connection: not yet): a
    readiness handshake, bounded only by the guard; fails at once if the process died."""
    deadline = threading.Event()
    timer = threading.Timer(GUARD, deadline.set)
    timer.start()
    try:
        while True:
            try:
                assert _get(f"{base}/healthz") == 200
                return
            except (urllib.error.URLError, ConnectionError):
                assert not deadline.is_set(), "serve never answered"
                assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
                deadline.wait(0.1)
    finally:
        timer.cancel()


@pytest.mark.slow
def test_serve_answers_http_and_its_worker_sends_the_confirmation_email(
    config: dict[str, Any], make_app: Any, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    make_app()  # the database is migrated already; this checks the settings load
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(
        config,
        tmp_path,
        PUBLIC_URL=base,
        OUTBOX_SEND_AFTER_REQUEST="false",
        WORKER_POLL_SECONDS=0.2,
    )
    process = subprocess.Popen(
        [NEWSLETTER, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_healthy(base, process)
        form = urllib.parse.urlencode({"email": "ada@example.com"}).encode()
        request = urllib.request.Request(
            f"{base}/subscribe", data=form, headers={"Accept": "text/html"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        # Web processes only queue (OUTBOX_SEND_AFTER_REQUEST=false): the worker sends it.
        (message,) = smtp_sink.wait_for(1, timeout=GUARD)
        assert message.recipients == ["ada@example.com"]
        assert f"{base}/confirm/" in message.body("plain")
        process.send_signal(signal.SIGTERM)
        assert process.wait(GUARD) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()  # type: ignore[union-attr]
    with pytest.raises(urllib.error.URLError):  # nothing of the tree is left listening
        _get(f"{base}/healthz")


def distinct_claimers(app: Flask) -> int:
    with app.app_context():
        found = (
            db.session.scalar(
                select(func.count(func.distinct(Delivery.claimed_by))).where(
                    Delivery.claimed_by.is_not(None)
                )
            )
            or 0
        )
        db.session.remove()
    return int(found)


@needs_postgres
@pytest.mark.postgres
@pytest.mark.slow
def test_two_worker_processes_on_postgres_make_one_digest_and_share_the_sending(
    config: dict[str, Any], make_app: Any, holding_sink: HoldingSink, tmp_path: Path
) -> None:
    folder = tmp_path / "posts"
    folder.mkdir()
    config.update(POSTS_DIR=str(folder), SMTP_PORT=holding_sink.port)
    app = make_app()
    emails = ready(app, readers=30)
    write_post(folder, "rain", "Rain on the Roof", "2026-11-02")
    # A rate of 2 messages a second per worker makes each claim 20 rows, so the digest is
    # more than one worker's claim.
    env = process_env(
        config,
        tmp_path,
        DIGEST_SCHEDULE="* * * * *",
        WORKER_POLL_SECONDS=0.2,
        SEND_CONNECTIONS=1,
        SEND_RATE=2,
    )
    workers = [start_worker(env, tmp_path) for _ in range(2)]
    try:
        # The first to claim the tick composes and starts sending; hold its third message
        # until the other worker has claimed rows of the same digest too.
        assert holding_sink.holding.wait(GUARD)
        stop_waiting = threading.Event()
        timer = threading.Timer(GUARD, stop_waiting.set)
        timer.start()
        try:
            while distinct_claimers(app) < 2:
                assert not stop_waiting.is_set(), "the second worker never joined in"
                stop_waiting.wait(0.05)
        finally:
            timer.cancel()
        holding_sink.release.set()
        holding_sink.wait_for(len(emails), timeout=GUARD)
        for process, output in workers:
            # The tick's winner reports its send with the tick, the other as a helper.
            assert output.seen("outcome='digest 1 sent to", "sent campaign=1"), "".join(
                output.lines
            )
            process.send_signal(signal.SIGTERM)
        for process, output in workers:
            assert process.wait(GUARD) == 0, "".join(output.lines)
    finally:
        for process, output in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            output.close(process)
    copies = Counter(address for m in holding_sink.messages for address in m.recipients)
    assert copies == {email: 1 for email in emails}
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Campaign)) == 1
        db.session.remove()
    sent_by = [
        sum(
            int(n)
            for n in re.findall(
                r"(?:sent campaign=1 sent=|digest 1 sent to )(\d+)", "".join(output.lines)
            )
        )
        for _, output in workers
    ]
    assert sum(sent_by) == len(emails) and all(sent_by), sent_by


def test_serve_migrates_the_embedded_default_database_itself(
    config: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(config, tmp_path, PUBLIC_URL=base)
    del env["NEWSLETTER_DATABASE_URL"]  # the embedded default, instance/newsletter.sqlite
    process = subprocess.Popen(
        [NEWSLETTER, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--no-worker"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # /healthz answers 503 on a database without this version's schema.
        wait_until_healthy(base, process)
        assert (tmp_path / "instance" / "newsletter.sqlite").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(GUARD) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()  # type: ignore[union-attr]

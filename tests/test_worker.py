"""The worker: scheduled digests against a real SMTP sink with the clock driven by the test,
the author's approval end to end, missed ticks, two workers, jobs and the status it reports."""

from __future__ import annotations

import io
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.jobs import JobError, enqueue_job
from newsletter.models import ERASED, Campaign, Subscriber
from newsletter.posts import sync_posts
from newsletter.worker import Worker
from newsletter.worker_models import (
    APPROVAL_LAPSED,
    APPROVAL_SENT,
    JOB_DONE,
    DigestApproval,
    DigestTick,
    Job,
)
from tests.conftest import PUBLIC_URL, FrozenClock
from tests.smtp_sink import SmtpSink
from tests.test_sending import add_readers, write_post

AUTHOR = "author@blog.example.com"


@pytest.fixture
def posts(config: dict[str, Any], tmp_path: Path) -> Path:
    """An empty Markdown folder as the post source, every minute as the schedule."""
    folder = tmp_path / "posts"
    folder.mkdir()
    config.update(POSTS_DIR=str(folder), DIGEST_SCHEDULE="* * * * *", SEND_CONNECTIONS=1)
    return folder


def ready(app: Flask, readers: int = 2) -> list[str]:
    """The install's first sync (an empty folder: nothing archived) and confirmed readers."""
    with app.app_context():
        sync_posts(db.session(), get_services(app))
        emails = add_readers(db.session(), get_services(app).clock, readers)
        db.session.remove()
    return emails


def worker_for(app: Flask, clock: FrozenClock, worker_id: str = "test:1:a") -> Worker:
    return Worker(
        app,
        out=io.StringIO(),
        sleep=lambda seconds: clock.advance(seconds=seconds),
        worker_id=worker_id,
    )


def digests_to(sink: SmtpSink, emails: list[str]) -> Counter[str]:
    """How many digest copies each reader got."""
    return Counter(
        address for message in sink.messages for address in message.recipients if address in emails
    )


def count(app: Flask, model: Any) -> int:
    with app.app_context():
        value = db.session.scalar(select(func.count()).select_from(model)) or 0
        db.session.remove()
    return int(value)


def test_a_new_post_between_ticks_is_mailed_once_and_no_new_post_means_no_mail(
    posts: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    app = make_app()
    emails = ready(app)
    worker = worker_for(app, clock)
    worker.run_once()  # the 09:00 tick: nothing new yet
    assert smtp_sink.messages == []
    write_post(posts, "rain", "Rain on the Roof", "2026-11-02")
    clock.advance(seconds=30)
    worker.run_once()  # between ticks: nothing happens
    assert smtp_sink.messages == []
    clock.advance(seconds=30)
    worker.run_once()  # 09:01: syncs, finds the post, mails it
    assert digests_to(smtp_sink, emails) == {email: 1 for email in emails}
    assert "Rain on the Roof" in smtp_sink.messages[0].message["Subject"]
    for _ in range(3):  # 09:02, 09:03, 09:04: no new post, no mail
        clock.advance(minutes=1)
        worker.run_once()
    assert len(smtp_sink.messages) == len(emails)
    assert count(app, Campaign) == 1
    log = worker.out.getvalue()  # type: ignore[attr-defined]
    assert re.search(
        r"2026-11-02T09:01:00Z digest tick tick=2026-11-02T09:01Z "
        r"outcome='digest 1 sent to 2'",
        log,
    ), log
    assert "outcome='no new posts'" in log


def test_a_missed_tick_sends_once_when_the_worker_starts_within_the_catch_up(
    posts: Path, config: dict[str, Any], make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    config["DIGEST_SCHEDULE"] = "0 8 * * *"
    app = make_app()
    clock.now = clock.now.replace(hour=7)
    emails = ready(app)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    clock.now = clock.now.replace(hour=9, minute=30)  # down at 8:00, up at 9:30
    worker = worker_for(app, clock)
    worker.run_once()
    assert digests_to(smtp_sink, emails) == {email: 1 for email in emails}
    assert "late=90min" in worker.out.getvalue()  # type: ignore[attr-defined]
    # A restart (a new worker) on the same day finds the tick done: no second digest, even
    # with another new post.
    write_post(posts, "snow", "Snow in the Garden", "2026-11-02")
    clock.advance(minutes=15)
    worker_for(app, clock, "test:2:b").run_once()
    assert len(smtp_sink.messages) == len(emails)
    assert count(app, DigestTick) == 1


def test_a_tick_missed_by_more_than_the_catch_up_is_skipped(
    posts: Path, config: dict[str, Any], make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    config.update(DIGEST_SCHEDULE="0 8 * * *", DIGEST_CATCHUP_HOURS=1)
    app = make_app()
    ready(app)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    clock.now = clock.now.replace(hour=9, minute=1)  # 61 minutes late
    worker = worker_for(app, clock)
    worker.run_once()
    assert smtp_sink.messages == []
    assert worker.next_tick is not None and worker.next_tick.day == 3  # tomorrow at 8


def test_many_missed_ticks_make_one_digest(
    posts: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    app = make_app()
    emails = ready(app)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    clock.advance(hours=3)  # three hours of every-minute ticks went by
    worker_for(app, clock).run_once()
    assert digests_to(smtp_sink, emails) == {email: 1 for email in emails}
    assert count(app, DigestTick) == 1


def test_two_workers_at_the_same_tick_make_one_digest(
    posts: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    """Two workers on one database (PostgreSQL: two machines; SQLite: two started by mistake)
    wake at the same moment, tick after tick: each tick makes one digest."""
    app = make_app()
    emails = ready(app, readers=6)
    workers = [worker_for(app, clock, f"host{n}:1:x") for n in (1, 2)]
    for minute, slug in enumerate(("rain", "snow", "fog"), start=1):
        write_post(posts, slug, slug.title(), "2026-11-02")
        clock.now = clock.now.replace(minute=minute)
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(
            worker: Worker, start: threading.Barrier = start, errors: list[BaseException] = errors
        ) -> None:
            try:
                start.wait()
                worker.run_once()
            except BaseException as err:  # noqa: BLE001  (reported below)
                errors.append(err)

        threads = [threading.Thread(target=run, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        # The loser of the tick may have been kept out by the send lock (SQLite): its next
        # round finds the tick claimed and only helps send.
        for worker in workers:
            worker.run_once()
        assert count(app, Campaign) == minute
        assert digests_to(smtp_sink, emails) == {email: minute for email in emails}
    with app.app_context():
        claimed = Counter(db.session.scalars(select(DigestTick.claimed_by)))
        db.session.remove()
    assert sum(claimed.values()) == 3


# --- approval ---------------------------------------------------------------------------------


@pytest.fixture
def approving(posts: Path, config: dict[str, Any]) -> Path:
    config.update(DIGEST_SCHEDULE="0 8 * * *", DIGEST_APPROVAL=True, AUTHOR_EMAIL=AUTHOR)
    return posts


def approval_link(sink: SmtpSink) -> str:
    mails = sink.to(AUTHOR)
    assert mails, "no approval email"
    text = mails[-1].body("plain")
    match = re.search(re.escape(PUBLIC_URL) + r"(/digest/approve/[A-Za-z0-9_.\-]+)", text)
    assert match, text
    return match.group(1)


def test_an_approved_digest_is_sent_once_after_the_authors_post(
    approving: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    clock.now = clock.now.replace(hour=7, minute=59)
    app = make_app()
    emails = ready(app)
    write_post(approving, "rain", "Rain on the Roof", "2026-11-01")
    worker = worker_for(app, clock)
    clock.advance(minutes=1)
    worker.run_once()  # 8:00: the digest is prepared and the author's email queued
    clock.advance(seconds=5)
    worker.run_once()  # the outbox sends it
    assert digests_to(smtp_sink, emails) == {}
    mail = smtp_sink.to(AUTHOR)[0]
    assert "Rain on the Roof" in mail.message["Subject"]
    assert "Approve and send" in mail.body("html") and "Rain on the Roof" in mail.body("html")
    link = approval_link(smtp_sink)

    client = app.test_client()
    page = client.get(link)  # a link scanner, or the author reading: changes nothing
    assert page.status_code == 200
    assert "Rain on the Roof" in page.text and "Approve and send" in page.text
    clock.advance(seconds=5)
    worker.run_once()
    assert digests_to(smtp_sink, emails) == {}

    approved = client.post(link)
    assert approved.status_code == 200 and "approved" in approved.text
    clock.advance(seconds=5)
    worker.run_once()
    assert digests_to(smtp_sink, emails) == {email: 1 for email in emails}
    assert "Rain on the Roof" in smtp_sink.to(emails[0])[0].message["Subject"]

    again = client.post(link)  # single use
    assert again.status_code == 400 and "already approved" in again.text
    clock.advance(minutes=1)
    worker.run_once()
    assert digests_to(smtp_sink, emails) == {email: 1 for email in emails}
    with app.app_context():
        assert db.session.scalar(select(DigestApproval.status)) == APPROVAL_SENT
        db.session.remove()


def test_an_approved_digest_carries_the_note_the_author_saved_and_clears_it(
    approving: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    from newsletter.settings import next_digest_note, save_next_digest_note

    clock.now = clock.now.replace(hour=7, minute=59)
    app = make_app()
    emails = ready(app)
    write_post(approving, "rain", "Rain on the Roof", "2026-11-01")
    with app.app_context():
        save_next_digest_note(db.session(), "A **quiet** week here.", now=clock())
        db.session.remove()
    worker = worker_for(app, clock)
    clock.advance(minutes=1)
    worker.run_once()  # 8:00: the preview (with the note) goes to the author
    clock.advance(seconds=5)
    worker.run_once()
    assert "A <strong>quiet</strong> week here." in smtp_sink.to(AUTHOR)[0].body("html")

    assert app.test_client().post(approval_link(smtp_sink)).status_code == 200
    clock.advance(seconds=5)
    worker.run_once()
    assert digests_to(smtp_sink, emails) == {email: 1 for email in emails}
    assert "A quiet week here." in smtp_sink.to(emails[0])[0].body("plain")
    with app.app_context():
        assert db.session.scalar(select(Campaign.note)) == "A **quiet** week here."
        assert next_digest_note(db.session()) is None  # it went out once
        db.session.remove()


def test_an_unapproved_digest_lapses_and_its_posts_wait_for_the_next(
    approving: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    clock.now = clock.now.replace(hour=7, minute=59)
    app = make_app()
    emails = ready(app)
    write_post(approving, "rain", "Rain on the Roof", "2026-11-01")
    worker = worker_for(app, clock)
    clock.advance(minutes=1)
    worker.run_once()
    clock.advance(seconds=5)
    worker.run_once()
    first_link = approval_link(smtp_sink)
    clock.advance(days=1)  # the next tick, unapproved
    worker.run_once()
    clock.advance(seconds=5)
    worker.run_once()
    assert digests_to(smtp_sink, emails) == {}
    client = app.test_client()
    lapsed = client.post(first_link)
    assert lapsed.status_code == 400 and "lapsed" in lapsed.text
    assert client.get(first_link).status_code == 400
    with app.app_context():
        statuses = list(
            db.session.scalars(select(DigestApproval.status).order_by(DigestApproval.id))
        )
        db.session.remove()
    assert statuses == [APPROVAL_LAPSED, "pending"]
    # The next approval carries the same post, and approving it sends it.
    second = smtp_sink.to(AUTHOR)[-1]
    assert "Rain on the Roof" in second.message["Subject"]
    assert client.post(approval_link(smtp_sink)).status_code == 200
    worker.run_once()
    assert digests_to(smtp_sink, emails) == {email: 1 for email in emails}


def test_a_tampered_approval_link_is_refused(
    approving: Path, make_app: Any, clock: FrozenClock
) -> None:
    app = make_app()
    response = app.test_client().post("/digest/approve/eyJhIjoxfQ.forged")
    assert response.status_code == 400 and "not valid" in response.text


# --- jobs, outbox, status -------------------------------------------------------------------


def test_queued_jobs_run_with_their_progress_in_the_table(
    posts: Path, config: dict[str, Any], make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    config["DIGEST_SCHEDULE"] = ""
    app = make_app()
    emails = ready(app, readers=3)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    with app.app_context():
        session: Session = db.session()
        send_now = enqueue_job(session, "send_digest_now", {}, now=clock()).id
        erase = enqueue_job(session, "erase_reader", {"email": emails[0]}, now=clock()).id
        with pytest.raises(JobError, match="unknown job kind"):
            enqueue_job(session, "make_coffee", now=clock())
        session.commit()
        db.session.remove()
    worker = worker_for(app, clock)
    worker.run_once()  # one job per round
    worker.run_once()
    with app.app_context():
        jobs = {job.id: job for job in db.session.scalars(select(Job))}
        assert jobs[send_now].status == JOB_DONE
        assert (jobs[send_now].progress_done, jobs[send_now].progress_total) == (3, 3)
        assert '"sent": 3' in (jobs[send_now].result or "")
        assert jobs[erase].status == JOB_DONE
        assert db.session.scalar(select(Subscriber.status).where(Subscriber.id == 1)) == ERASED
        db.session.remove()
    assert digests_to(smtp_sink, emails) == {email: 1 for email in emails}


def test_the_worker_sends_the_outbox_when_web_processes_only_queue(
    make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    app = make_app(OUTBOX_SEND_AFTER_REQUEST=False)
    response = app.test_client().post("/subscribe", data={"email": "ada@example.com"})
    assert response.status_code in (200, 303)
    assert smtp_sink.messages == []
    worker_for(app, clock).run_once()
    assert [m.recipients for m in smtp_sink.messages] == [["ada@example.com"]]


def test_healthz_and_status_say_whether_a_worker_runs(
    posts: Path, make_app: Any, clock: FrozenClock
) -> None:
    app = make_app()
    client = app.test_client()
    assert client.get("/healthz").json["worker"]["status"] == "not running"
    result = app.test_cli_runner().invoke(args=["worker", "--status"])
    assert result.exit_code == 1 and "not running" in result.output
    worker = worker_for(app, clock)
    worker.run_once()
    health = client.get("/healthz")
    assert health.status_code == 200
    status = health.json["worker"]
    assert status["running"] is True
    assert status["last_tick"] == "2026-11-02T09:00:00Z"
    assert status["next_tick"] == "2026-11-02T09:01:00Z"
    assert status["last_error"] is None
    result = app.test_cli_runner().invoke(args=["worker", "--status"])
    assert result.exit_code == 0 and "next tick: 2026-11-02T09:01:00Z" in result.output
    clock.advance(minutes=5)  # no heartbeat for five minutes
    assert client.get("/healthz").json["worker"]["running"] is False


def test_an_error_is_logged_kept_for_healthz_and_the_loop_goes_on(
    posts: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    app = make_app()
    emails = ready(app)
    posts.rename(posts.with_name("gone"))  # the folder vanished: sync fails
    worker = worker_for(app, clock)
    worker.run_once()
    assert "error" in worker.out.getvalue()  # type: ignore[attr-defined]
    status = app.test_client().get("/healthz").json["worker"]
    assert status["running"] is True and status["last_error"]
    posts.with_name("gone").rename(posts)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-02")
    clock.advance(minutes=1)
    worker.run_once()
    assert digests_to(smtp_sink, emails) == {email: 1 for email in emails}


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("DIGEST_SCHEDULE", "0 8 * * fry", "NEWSLETTER_DIGEST_SCHEDULE: day of week"),
        ("TIMEZONE", "Europe/Atlantis", "NEWSLETTER_TIMEZONE: unknown time zone"),
        ("DIGEST_APPROVAL", "yes please", "NEWSLETTER_DIGEST_APPROVAL: expected true or false"),
        ("AUTHOR_EMAIL", "not an address", "NEWSLETTER_AUTHOR_EMAIL: expected an address"),
        ("DIGEST_CATCHUP_HOURS", "-1", "NEWSLETTER_DIGEST_CATCHUP_HOURS"),
        ("FEED_POLL_MINUTES", "0", "NEWSLETTER_FEED_POLL_MINUTES"),
    ],
)
def test_bad_worker_settings_stop_start_up_naming_the_variable(
    make_app: Any, setting: str, value: str, words: str
) -> None:
    from newsletter.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(words)):
        make_app(**{setting: value})


def test_approval_without_an_author_address_is_refused(make_app: Any) -> None:
    from newsletter.config import ConfigError

    with pytest.raises(ConfigError, match="NEWSLETTER_AUTHOR_EMAIL: is required"):
        make_app(DIGEST_APPROVAL="true")

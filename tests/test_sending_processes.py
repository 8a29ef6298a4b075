"""Several senders on one digest (PostgreSQL): claims with SKIP LOCKED, leases that a live
sender renews and a dead one's rows taken over, one campaign however many start at once,
`send-digest --workers N`, and what SQLite refuses instead."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from newsletter.db import db
from newsletter.models import Campaign, Delivery
from newsletter.sending import SendInProgressError, SendLock, SendOptions, _DatabaseMarks
from tests.conftest import (
    ON_POSTGRES,
    FrozenClock,
    add_readers,
    copies,
    digest_ready,
    make_campaign,
    needs_postgres,
    newsletter_process,
    sent_in,
    state_dir,
    statuses,
)
from tests.smtp_sink import SmtpSink
from tests.test_sending import FAST, posts_folder, send

__all__ = ["posts_folder"]  # a fixture shared with test_sending

# Short leases, so a dead sender's rows go to the others within seconds.
LEASE = "2"


def claimed_by(session: Session, fragment: str) -> int:
    """Queued rows whose claim names ``fragment`` (e.g. a process id)."""
    session.commit()
    return (
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.status == "queued", Delivery.claimed_by.contains(f":{fragment}:"))
        )
        or 0
    )


# --- the locks --------------------------------------------------------------------------------


@needs_postgres
def test_senders_share_the_lock_but_compose_one_at_a_time(app: Flask) -> None:
    with app.app_context():
        first, second = SendLock(state_dir(app), db.engine), SendLock(state_dir(app), db.engine)
        with first, second:
            assert first.held and second.held and first.shared
            busy = pytest.raises(
                SendInProgressError, match="another process has been composing a campaign"
            )
            with first.composing(), busy, second.composing(wait=0.3):
                pass  # pragma: no cover
            with second.composing(wait=0.3):  # free again once the first is done
                pass


@pytest.mark.skipif(ON_POSTGRES, reason="checks what SQLite refuses")
def test_workers_are_refused_on_sqlite_with_a_reason(
    runner: FlaskCliRunner,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    posts_folder: Path,
) -> None:
    add_readers(session, clock, 3)
    digest_ready(runner, posts_folder)
    result = runner.invoke(args=["send-digest", "--yes", "--workers", "3"])
    assert result.exit_code == 2
    assert "--workers needs PostgreSQL" in result.output
    assert not smtp_sink.messages
    assert session.scalars(select(Campaign.id)).all() == []


# --- claims and leases, in one process --------------------------------------------------------


@needs_postgres
def test_a_live_senders_claims_are_never_taken(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    readers = add_readers(session, clock, 30)
    campaign_id = make_campaign(session, clock)
    held = list(session.scalars(select(Delivery.id).order_by(Delivery.id).limit(10)))
    stop, claimed = threading.Event(), threading.Event()

    def other_sender_renewing() -> None:
        """Another machine's sender holding ten rows and renewing them as a live one does."""
        with app.app_context():
            while not stop.is_set():
                db.session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(held))
                    .values(
                        claimed_by="elsewhere:1:0123456789ab",
                        claimed_until=text("(now() AT TIME ZONE 'UTC') + interval '1 second'"),
                    )
                )
                db.session.commit()
                claimed.set()
                stop.wait(0.2)
            db.session.remove()

    renewer = threading.Thread(target=other_sender_renewing)
    renewer.start()
    try:
        assert claimed.wait(30), "the other sender never claimed its rows"
        # It waits for them while they are renewed, and leaves them to their sender once they
        # have not moved for twice the lease.
        report = send(
            app,
            campaign_id,
            SendOptions(connections=2, flush_interval=0.05, lease=timedelta(seconds=1)),
        )
    finally:
        stop.set()
        renewer.join()
    assert (report.sent, report.left) == (20, 10) and not report.finished
    assert copies(smtp_sink) == Counter(readers[10:])


@needs_postgres
def test_a_dead_senders_claims_are_taken_once_its_lease_runs_out(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    readers = add_readers(session, clock, 12)
    campaign_id = make_campaign(session, clock)
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id <= 5)
        .values(
            claimed_by="elsewhere:1:0123456789ab",
            claimed_until=text("(now() AT TIME ZONE 'UTC') + interval '1 second'"),
        )
    )
    session.commit()
    report = send(
        app,
        campaign_id,
        SendOptions(connections=2, flush_interval=0.05, lease=timedelta(seconds=2)),
    )
    assert report.sent == 12 and report.finished
    assert copies(smtp_sink) == Counter(readers)


@needs_postgres
def test_a_dead_sender_on_this_machine_is_released_at_once(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    """Its journal file is unlocked: no need to wait for its lease (an hour here)."""
    readers = add_readers(session, clock, 8)
    campaign_id = make_campaign(session, clock)
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id <= 4)
        .values(
            claimed_by="this-host:999:0123456789ab",
            claimed_until=text("(now() AT TIME ZONE 'UTC') + interval '1 hour'"),
        )
    )
    session.commit()
    folder = state_dir(app)
    folder.mkdir(parents=True)
    (folder / "journal-999-0123456789ab.log").write_bytes(b"")
    # A one-second lease of its own: were the dead sender's rows left to their hour-long lease,
    # this run would give them up after two seconds of waiting, with four of them left.
    report = send(app, campaign_id, replace(FAST, lease=timedelta(seconds=1)))
    assert report.sent == 8 and report.finished
    assert copies(smtp_sink) == Counter(readers)
    assert not list(folder.glob("journal-*"))


@needs_postgres
def test_a_250_the_database_cannot_take_stops_the_run_and_is_written_with_the_batch(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import psycopg

    readers = add_readers(session, clock, 20)
    campaign_id = make_campaign(session, clock)
    record = _DatabaseMarks.record
    calls = 0

    def connection_lost_at_the_fifth(marks: _DatabaseMarks, delivery_id: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        record(marks, delivery_id)

    monkeypatch.setattr(_DatabaseMarks, "record", connection_lost_at_the_fifth)
    report = send(app, campaign_id, SendOptions(connections=1, flush_interval=0.05))
    assert report.error and "cannot record deliveries in the database" in report.error
    assert report.sent == 5 and report.left == 15
    assert copies(smtp_sink) == Counter(readers[:5])
    got = statuses(session, campaign_id)
    assert [got[reader] for reader in readers[:5]] == ["sent"] * 5  # the fifth by the batch
    assert (
        session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.claimed_by.is_not(None))
        )
        == 0
    )  # the rest released for the next run


# --- several processes ------------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Sender processes a test starts; any still running at the end are killed."""
    started: list[Any] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


@needs_postgres
@pytest.mark.slow
def test_three_senders_and_a_sigkill_mail_every_reader_once_but_the_ones_in_flight(
    config: dict[str, Any],
    tmp_path: Path,
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
    processes: list[Any],
) -> None:
    """Three machines (each its own instance folder) send one digest; one is killed mid-run.
    Its claimed rows wait for its lease and then go to the other two, which meanwhile renew
    their own leases (a claimed batch takes longer to send than a lease lasts)."""
    readers = add_readers(session, clock, 5000, names=False)
    digest_ready(runner, posts_folder)
    smtp_sink.script.data_delay = 0.02  # a claimed batch takes longer than a lease
    connections = 3
    for machine in range(3):
        processes.append(
            newsletter_process(
                config,
                tmp_path,
                "send-digest",
                "--yes",
                "--connections",
                str(connections),
                NEWSLETTER_INSTANCE_PATH=str(tmp_path / f"machine-{machine}"),
                NEWSLETTER_SEND_LEASE_SECONDS=LEASE,
            )
        )
    first, victim, third = processes
    smtp_sink.wait_for(1500, timeout=60)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert len(smtp_sink.messages) < len(readers)  # it died mid-run
    orphans = claimed_by(session, str(victim.pid))
    assert orphans > 0  # claimed and unsent: only its lease running out frees them

    outputs = [process.communicate(timeout=90) for process in (first, third)]
    for process, (out, err) in zip((first, third), outputs, strict=True):
        assert process.returncode == 0, out + err
    counts = copies(smtp_sink)
    assert set(counts) == set(readers)  # nobody skipped
    twice = sorted(reader for reader, n in counts.items() if n > 1)
    print(
        f"\n{len(smtp_sink.messages)} messages for {len(readers)} readers; "
        f"{len(twice)} got two copies (at most {connections} allowed); the killed sender "
        f"held {orphans} unsent rows; survivors sent "
        f"{[sent_in(out) for out, _ in outputs]}"
    )
    assert len(twice) <= connections and max(counts.values()) <= 2
    assert set(statuses(session, 1).values()) == {"sent"}
    assert session.scalar(select(Campaign.status).where(Campaign.id == 1)) == "sent"
    assert len(session.scalars(select(Campaign.id)).all()) == 1


@needs_postgres
@pytest.mark.slow
def test_senders_starting_at_the_same_moment_make_one_campaign(
    config: dict[str, Any],
    tmp_path: Path,
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
    processes: list[Any],
) -> None:
    readers = add_readers(session, clock, 400, names=False)
    digest_ready(runner, posts_folder)
    processes.extend(
        newsletter_process(config, tmp_path, "send-digest", "--yes", "--connections", "2")
        for _ in range(3)
    )
    outputs = [process.communicate(timeout=60) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, out + err
    assert len(session.scalars(select(Campaign.id)).all()) == 1
    assert copies(smtp_sink) == Counter(readers)
    # Whoever composed it, the processes that found campaign 1 unfinished sent it together,
    # each reader exactly once; one that started after it was all sent had nothing to do.
    reports = [out for out, _ in outputs if 'Campaign 1 "' in out]
    assert reports
    assert sum(sent_in(out) for out in reports) == len(readers)
    composed = [out for out, _ in outputs if "No new posts" not in out]
    assert len(composed) == 1


@needs_postgres
@pytest.mark.slow
def test_workers_send_one_digest_and_report_it_as_one(
    config: dict[str, Any],
    tmp_path: Path,
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
    processes: list[Any],
) -> None:
    readers = add_readers(session, clock, 1500, names=False)
    digest_ready(runner, posts_folder)
    smtp_sink.script.data_delay = 0.005
    smtp_sink.script.rcpt_replies["reader7@example.com"] = "550 5.1.1 No such user"
    processes.append(
        newsletter_process(
            config, tmp_path, "send-digest", "--yes", "--workers", "3", "--connections", "2"
        )
    )
    out, err = processes[0].communicate(timeout=60)
    assert processes[0].returncode == 3, out + err  # one failed
    assert out.count('Sending campaign 1 "Rest Is Not a Reward": 1,500 deliveries') == 1
    assert 'Campaign 1 "Rest Is Not a Reward": sent 1,499, failed 1, deferred 0, skipped 0 ' in out
    assert "newsletter campaigns show 1" in err
    assert copies(smtp_sink) == Counter(r for r in readers if r != "reader7@example.com")
    # One connection to check the server first, then at least one per worker.
    assert smtp_sink.connections >= 4
    assert session.scalar(select(Campaign.status).where(Campaign.id == 1)) == "sent"


@needs_postgres
@pytest.mark.slow
def test_a_dead_worker_is_reported_and_the_others_take_over_its_rows_at_once(
    config: dict[str, Any],
    tmp_path: Path,
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
    processes: list[Any],
) -> None:
    """Same machine: its lock file is free, so its rows need not wait for the lease (an hour)."""
    readers = add_readers(session, clock, 800, names=False)
    digest_ready(runner, posts_folder)
    smtp_sink.script.data_delay = 0.01
    parent = newsletter_process(
        config,
        tmp_path,
        "send-digest",
        "--yes",
        "--workers",
        "2",
        "--connections",
        "2",
        NEWSLETTER_SEND_LEASE_SECONDS="3600",
    )
    processes.append(parent)
    smtp_sink.wait_for(150, timeout=30)  # both hold a claimed batch by now
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
    assert len(children) == 2
    victim = int(children[0])
    os.kill(victim, signal.SIGKILL)
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 1, out + err
    assert f"a sender process (pid {victim}) was killed by signal 9" in err
    counts = copies(smtp_sink)
    assert set(counts) == set(readers)
    assert sum(n - 1 for n in counts.values()) <= 2  # at most one per connection it had
    assert set(statuses(session, 1).values()) == {"sent"}

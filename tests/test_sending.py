"""Sending a campaign: the delivery ledger, SMTP outcomes against a real (scripted) server,
resuming after SIGKILL, one run at a time, and the `send-digest` / `campaigns` commands."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.models import CONFIRMED, Campaign, Delivery, Post, Subscriber
from newsletter.sending import (
    Journal,
    SendInProgressError,
    SendLock,
    SendOptions,
    SendPace,
    SendReport,
    read_journal,
    send_campaign,
)
from newsletter.subscriptions import RequestInfo, unsubscribe
from tests.conftest import (
    ON_POSTGRES,
    PUBLIC_URL,
    FrozenClock,
    add_readers,
    copies,
    digest_ready,
    make_campaign,
    newsletter_process,
    sent_in,
    state_dir,
    statuses,
    write_post,
)
from tests.smtp_sink import DROP, Hold, SmtpSink

FAST = SendOptions(connections=2, retry_delay=0.05, reconnect_delay=0.01, flush_interval=0.05)
# On SQLite one sender at a time; on PostgreSQL senders share the work
# (tests/test_sending_processes.py).
exclusive_lock = pytest.mark.skipif(
    ON_POSTGRES,
    reason="on PostgreSQL several senders run at once (tests/test_sending_processes.py)",
)


@pytest.fixture(autouse=True)
def posts_folder(config: dict[str, Any], tmp_path: Path) -> Path:
    """A Markdown posts folder holding one post already published before the first sync."""
    folder = tmp_path / "posts"
    folder.mkdir()
    write_post(folder, "older-post", "An Older Post", "2020-01-01")
    config["POSTS_DIR"] = str(folder)
    return folder


def send(app: Flask, campaign_id: int, options: SendOptions = FAST, **engine: Any) -> SendReport:
    """Send one campaign under the send lock; ``engine``: its clock and pace, if given."""
    with app.app_context():
        lock = SendLock(state_dir(app), db.engine)
        with lock:
            return send_campaign(
                db.session, get_services(app), campaign_id, lock=lock, options=options, **engine
            )


# --- the ledger and the happy path ----------------------------------------------------------


def test_plans_one_delivery_per_confirmed_reader_and_sends_each_once(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    readers = add_readers(session, clock, 12)
    add_readers(session, clock, 2, status="pending", start=100)
    add_readers(session, clock, 2, status="unsubscribed", start=200)
    campaign_id = make_campaign(session, clock)

    report = send(app, campaign_id, FAST)

    assert (report.sent, report.failed, report.deferred, report.skipped) == (12, 0, 0, 0)
    assert report.complete and report.finished and report.total == 12
    assert copies(smtp_sink) == Counter(readers)
    assert set(statuses(session, campaign_id).values()) == {"sent"}
    assert session.get(Campaign, campaign_id).status == "sent"
    assert not list(state_dir(app).glob("journal-*"))  # folded in and removed


def test_a_rerun_after_completion_sends_nothing(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    add_readers(session, clock, 5)
    campaign_id = make_campaign(session, clock)
    send(app, campaign_id)
    again = send(app, campaign_id)
    assert again.sent == 0 and again.finished
    assert len(smtp_sink.messages) == 5


def test_reader_parts_are_filled_in_per_reader(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    add_readers(session, clock, 1, names=False)
    add_readers(session, clock, 1, start=2)
    campaign_id = make_campaign(session, clock)
    send(app, campaign_id)
    by_address = {m.recipients[0]: m for m in smtp_sink.messages}
    nameless, named = by_address["reader1@example.com"], by_address["reader2@example.com"]
    assert nameless.body("plain").startswith("Hello,")
    assert named.body("plain").startswith("Hi Reader 2,")
    assert named.message["To"] == "Reader 2 <reader2@example.com>"
    for received in (nameless, named):
        assert "__NEWSLETTER_" not in received.data.decode()
        url = received.message["List-Unsubscribe"].strip("<>")
        assert url.startswith(f"{PUBLIC_URL}/unsubscribe/")
        assert f"Unsubscribe: {url}" in received.body("plain")
        assert f'href="{url}"' in received.body("html")
    assert nameless.message["List-Unsubscribe"] != named.message["List-Unsubscribe"]
    # Fixed per (campaign, reader): a rare second copy is recognisably the same message.
    assert named.message["Message-ID"].startswith(f"<c{campaign_id}.r2.")


def test_unsubscribe_link_in_the_message_unsubscribes_that_reader(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    add_readers(session, clock, 2)
    send(app, make_campaign(session, clock))
    received = smtp_sink.to("reader2@example.com")[0]
    path = received.message["List-Unsubscribe"].strip("<>").removeprefix(PUBLIC_URL)
    response = app.test_client().post(path, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    session.commit()
    status = session.scalar(
        select(Subscriber.status).where(Subscriber.email == "reader2@example.com")
    )
    assert status == "unsubscribed"


# --- SMTP outcomes --------------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_5xx_fails_the_delivery_with_the_reply_stored(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink, pipelining: bool
) -> None:
    smtp_sink.script.offer_pipelining = pipelining
    add_readers(session, clock, 6)
    smtp_sink.script.rcpt_replies["reader2@example.com"] = "550 5.1.1 No such user here"
    smtp_sink.script.data_replies["reader5@example.com"] = "554 5.7.1 Message refused as spam"
    campaign_id = make_campaign(session, clock)

    report = send(app, campaign_id)

    assert (report.sent, report.failed, report.deferred) == (4, 2, 0)
    assert not report.complete and report.finished
    got = statuses(session, campaign_id)
    assert got["reader2@example.com"] == got["reader5@example.com"] == "failed"
    replies = dict(
        session.execute(
            select(Subscriber.email, Delivery.smtp_reply)
            .join(Delivery)
            .where(Delivery.status == "failed")
        ).all()
    )
    assert replies == {
        "reader2@example.com": "550 5.1.1 No such user here",
        "reader5@example.com": "554 5.7.1 Message refused as spam",
    }
    assert len(smtp_sink.messages) == 4


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_4xx_is_deferred_and_retried_within_the_run(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink, pipelining: bool
) -> None:
    smtp_sink.script.offer_pipelining = pipelining
    add_readers(session, clock, 4)
    smtp_sink.script.rcpt_sequence["reader3@example.com"] = ["451 4.7.1 Greylisted, try later"]
    smtp_sink.script.data_sequence["reader4@example.com"] = ["452 4.2.2 Mailbox full", "450 no"]
    campaign_id = make_campaign(session, clock)

    report = send(app, campaign_id)

    assert (report.sent, report.failed, report.deferred) == (4, 0, 0) and report.complete
    assert copies(smtp_sink) == Counter(f"reader{n}@example.com" for n in range(1, 5))
    attempts = dict(
        session.execute(select(Subscriber.email, Delivery.attempts).join(Delivery)).all()
    )
    assert attempts["reader3@example.com"] == 2 and attempts["reader4@example.com"] == 3


def test_a_lasting_4xx_stays_deferred_for_the_next_run_then_is_sent(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    add_readers(session, clock, 3)
    smtp_sink.script.data_replies["reader2@example.com"] = "421 4.3.2 Not now"  # session drop
    smtp_sink.script.rcpt_replies["reader3@example.com"] = "450 4.2.1 Mailbox busy"
    campaign_id = make_campaign(session, clock)

    report = send(app, campaign_id)

    # reader2's 421 every time: tried again on a fresh connection, then deferred like a 4xx.
    assert (report.sent, report.deferred) == (1, 2) and not report.complete
    assert report.error is None
    delivery = session.execute(
        select(Delivery).join(Subscriber).where(Subscriber.email == "reader3@example.com")
    ).scalar_one()
    assert delivery.status == "deferred" and delivery.smtp_reply == "450 4.2.1 Mailbox busy"
    assert delivery.deferred_since == clock() and delivery.next_attempt_at > clock()
    assert session.get(Campaign, campaign_id).status == "sending"

    smtp_sink.script.data_replies.clear()
    smtp_sink.script.rcpt_replies.clear()
    clock.advance(hours=1)
    again = send(app, campaign_id)
    assert (again.sent, again.deferred, again.failed) == (2, 0, 0) and again.finished
    assert copies(smtp_sink) == Counter(f"reader{n}@example.com" for n in range(1, 4))
    assert session.get(Campaign, campaign_id).status == "sent"


def test_a_4xx_past_the_give_up_age_fails(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    add_readers(session, clock, 2)
    campaign_id = make_campaign(session, clock)
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == 1)
        .values(
            status="deferred",
            attempts=9,
            deferred_since=clock() - timedelta(hours=80),
            next_attempt_at=clock() - timedelta(minutes=1),
            smtp_reply="451 later",
        )
    )
    session.commit()
    smtp_sink.script.rcpt_replies["reader1@example.com"] = "451 4.4.1 Still not reachable"

    report = send(app, campaign_id)

    assert (report.sent, report.failed, report.deferred) == (1, 1, 0) and report.finished
    reply = session.scalar(select(Delivery.smtp_reply).where(Delivery.subscriber_id == 1))
    assert reply == "gave up after 72 hours of temporary failures: 451 4.4.1 Still not reachable"


def test_421_at_the_greeting_reconnects_with_backoff(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    readers = add_readers(session, clock, 6)
    smtp_sink.script.greeting_replies = ["421 4.3.2 Too busy", "421 4.3.2 Too busy"]
    before = smtp_sink.connections
    report = send(app, make_campaign(session, clock))
    assert report.sent == 6 and report.complete
    assert copies(smtp_sink) == Counter(readers)
    assert smtp_sink.connections - before == 4  # two refused, then one per connection


@pytest.mark.parametrize("pipelining", [True, False])
def test_421_mid_session_reconnects_and_sends_each_message_once(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink, pipelining: bool
) -> None:
    smtp_sink.script.offer_pipelining = pipelining
    readers = add_readers(session, clock, 10)
    smtp_sink.script.messages_per_session = 3
    before = smtp_sink.connections  # the controller's own readiness check connects once
    report = send(
        app,
        make_campaign(session, clock),
        SendOptions(connections=1, reconnect_delay=0.01, flush_interval=0.05),
    )
    assert report.sent == 10 and report.complete
    assert copies(smtp_sink) == Counter(readers)
    assert smtp_sink.connections - before == 4


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_drop_after_the_final_dot_defers_only_that_message_to_the_next_run(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink, pipelining: bool
) -> None:
    smtp_sink.script.offer_pipelining = pipelining
    readers = add_readers(session, clock, 6)
    smtp_sink.script.data_sequence["reader3@example.com"] = [DROP]
    campaign_id = make_campaign(session, clock)
    report = send(app, campaign_id)
    # Its reply never came, so its outcome is unknown: not sent again at once, but deferred.
    assert (report.sent, report.deferred) == (5, 1) and not report.complete
    assert copies(smtp_sink) == Counter(readers)
    clock.advance(minutes=5)
    again = send(app, campaign_id)
    assert again.sent == 1 and again.complete and again.finished
    assert copies(smtp_sink) == Counter([*readers, "reader3@example.com"])  # only it, again


def test_a_reply_slower_than_the_timeout_defers_each_message_once(
    config: dict[str, Any], app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    app.config["SMTP_TIMEOUT"] = 0.3
    readers = add_readers(session, clock, 3)
    smtp_sink.script.data_delay = 0.6
    campaign_id = make_campaign(session, clock)
    report = send(
        app,
        campaign_id,
        SendOptions(connections=1, reconnect_delay=0.01, max_connection_failures=2),
    )
    assert report.error is None and report.sent == 0 and report.deferred == 3
    assert set(statuses(session, campaign_id).values()) == {"deferred"}
    assert (
        set(copies(smtp_sink)) <= set(readers) and max(copies(smtp_sink).values(), default=0) <= 1
    )

    smtp_sink.script.data_delay = 0.1  # slow, but within the timeout
    app.config["SMTP_TIMEOUT"] = 5
    clock.advance(minutes=5)
    assert send(app, campaign_id).sent == 3


def test_an_unreachable_server_stops_the_run_and_leaves_the_rest_queued(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    add_readers(session, clock, 4)
    campaign_id = make_campaign(session, clock)
    smtp_sink.stop()
    report = send(
        app,
        campaign_id,
        SendOptions(connections=2, reconnect_delay=0.01, max_connection_failures=3),
    )
    assert report.error is not None and "cannot reach SMTP server" in report.error
    assert report.sent == 0 and report.left == 4 and not report.finished
    assert set(statuses(session, campaign_id).values()) == {"queued"}


@pytest.mark.parametrize(
    ("login", "settings", "words"),
    [
        (("ada", "right"), {"SMTP_USERNAME": "ada", "SMTP_PASSWORD": "wrong"}, "login"),
        (None, {"SMTP_SECURITY": "starttls"}, "STARTTLS"),
    ],
)
def test_a_login_or_tls_failure_stops_before_anything_is_marked(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    login: tuple[str, str] | None,
    settings: dict[str, str],
    words: str,
) -> None:
    add_readers(session, clock, 3)
    campaign_id = make_campaign(session, clock)
    sink = SmtpSink(login=login).start()
    try:
        app.config.update(SMTP_PORT=sink.port, **settings)
        report = send(app, campaign_id)
    finally:
        sink.stop()
    assert report.error is not None and words in report.error
    rows = session.execute(select(Delivery.status, Delivery.attempts)).all()
    assert {tuple(r) for r in rows} == {("queued", 0)}
    assert not sink.messages


class Ticks:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pace_spaces_slots_over_all_callers_by_one_over_the_rate() -> None:
    ticks, stopped = Ticks(), threading.Event()
    stopped.set()  # the waits are computed, not slept
    pace = SendPace(20, ticks)
    # Sixteen callers at the same instant (four connections' worth) get slots 1/20 s apart.
    assert [pace.wait(stopped) for _ in range(16)] == pytest.approx([n / 20 for n in range(16)])
    assert pace.next_slot == pytest.approx(16 / 20)
    ticks.now = 10.0  # a caller long after the last slot goes at once
    assert pace.wait(stopped) == 0.0
    assert pace.wait(stopped) == pytest.approx(1 / 20)
    assert SendPace(None, ticks).wait(stopped) == 0.0  # no cap: nobody waits


def test_the_rate_is_honoured_across_all_connections(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    """Every connection takes its slot from the one pace on the injected clock: with time
    standing still, sixteen messages at 20 a second use the slots 0 to 15/20 s."""
    add_readers(session, clock, 16)
    campaign_id = make_campaign(session, clock)
    ticks = Ticks()
    pace = SendPace(20, ticks)
    options = SendOptions(connections=4, rate=20, flush_interval=0.05)
    report = send(app, campaign_id, options, monotonic=ticks, pace=pace)
    assert report.sent == 16
    assert copies(smtp_sink) == Counter(f"reader{n}@example.com" for n in range(1, 17))
    assert pace.next_slot == pytest.approx(16 / 20)


def test_a_reader_who_unsubscribes_mid_send_is_skipped(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    add_readers(session, clock, 24)
    campaign_id = make_campaign(session, clock)
    smtp_sink.script.data_delay = 0.03

    def leave_while_sending() -> None:
        smtp_sink.wait_for(2)
        with app.app_context():
            unsubscribe(db.session, get_services(app), 20, RequestInfo(method="one-click"))
            db.session.remove()

    leaver = threading.Thread(target=leave_while_sending)
    leaver.start()
    report = send(app, campaign_id, SendOptions(connections=1, batch_size=4, flush_interval=0.05))
    leaver.join()
    assert (report.sent, report.skipped) == (23, 1) and report.complete
    assert statuses(session, campaign_id)["reader20@example.com"] == "skipped"
    assert not smtp_sink.to("reader20@example.com")


# --- ordinary faults: one reader's unknown outcome, a broken relay, a reader who leaves ----

FAULTY = "reader3@example.com"


def drop_after_the_final_dot(app: Flask, sink: SmtpSink) -> None:
    sink.script.drop_after_data.add(FAULTY)


def reply_slower_than_the_timeout(app: Flask, sink: SmtpSink) -> None:
    app.config["SMTP_TIMEOUT"] = 0.5
    sink.script.slow_replies[FAULTY] = 1.5


def a_421_at_rcpt(app: Flask, sink: SmtpSink) -> None:
    sink.script.rcpt_replies[FAULTY] = "421 4.7.0 Try again later"


@pytest.mark.parametrize(
    "fault", [drop_after_the_final_dot, reply_slower_than_the_timeout, a_421_at_rcpt]
)
def test_one_readers_fault_defers_only_them_and_the_rest_go_once(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink, fault: Any
) -> None:
    readers = add_readers(session, clock, 8)
    fault(app, smtp_sink)
    campaign_id = make_campaign(session, clock)
    options = SendOptions(
        connections=1, retry_delay=0.05, reconnect_delay=0.01, flush_interval=0.05
    )

    report = send(app, campaign_id, options)

    others = Counter(r for r in readers if r != FAULTY)
    got = copies(smtp_sink)
    assert got - Counter({FAULTY: got[FAULTY]}) == others  # everybody else once, same run
    assert got[FAULTY] <= 2
    assert report.error is None and (report.sent, report.deferred) == (7, 1)
    assert not report.complete  # exit status 3
    delivery = session.execute(
        select(Delivery).join(Subscriber).where(Subscriber.email == FAULTY)
    ).scalar_one()
    assert delivery.status == "deferred" and delivery.next_attempt_at > clock()

    clock.advance(hours=1)  # a later run, the fault still there
    again = send(app, campaign_id, options)
    assert again.error is None and again.sent == 0 and again.deferred == 1
    got = copies(smtp_sink)
    assert got[FAULTY] <= 3 and got - Counter({FAULTY: got[FAULTY]}) == others


def test_a_dropped_reply_defers_and_the_next_run_sends_it_once_more(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
) -> None:
    readers = add_readers(session, clock, 5)
    digest_ready(runner, posts_folder)
    smtp_sink.script.data_sequence[FAULTY] = [DROP]

    result = runner.invoke(args=["send-digest", "--yes", "--connections", "1"])

    assert result.exit_code == 3, result.output
    assert "sent 4, failed 0, deferred 1" in result.output
    assert copies(smtp_sink) == Counter(readers)  # the dropped one arrived once already
    reply = session.scalar(
        select(Delivery.smtp_reply).join(Subscriber).where(Subscriber.email == FAULTY)
    )
    assert reply is not None and "may have" in reply

    clock.advance(hours=1)
    again = runner.invoke(args=["send-digest", "--yes"])
    assert again.exit_code == 0, again.output
    assert copies(smtp_sink) == Counter([*readers, FAULTY])  # its one possible second copy


def add_readers_at_domains(
    session: Session, clock: FrozenClock, count: int, domains: int = 4
) -> list[str]:
    """Readers spread over ``domains`` mail domains."""
    emails = [f"reader{n}@mail{n % domains}.example" for n in range(1, count + 1)]
    session.execute(
        insert(Subscriber),
        [
            {
                "email": email,
                "name": None,
                "status": CONFIRMED,
                "token_generation": 0,
                "created_at": clock(),
                "updated_at": clock(),
            }
            for email in emails
        ],
    )
    session.commit()
    return emails


@pytest.mark.parametrize("where", ["every_rcpt", "every_data"])
def test_a_relay_that_refuses_everything_stops_early_and_fails_nobody(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink, where: str
) -> None:
    add_readers_at_domains(session, clock, 120)
    setattr(smtp_sink.script, where, "552 5.3.4 Mailbox full (quota exceeded)")
    campaign_id = make_campaign(session, clock)

    report = send(app, campaign_id)

    assert report.error is not None
    assert "552 5.3.4 Mailbox full (quota exceeded)" in report.error
    assert "in a row at 4 domains" in report.error and "nothing was marked failed" in report.error
    assert report.failed == 0 and report.sent == 0 and report.left == 120
    assert set(statuses(session, campaign_id).values()) == {"queued"}
    tried = session.scalar(select(func.count()).select_from(Delivery).where(Delivery.attempts > 0))
    assert tried is not None and tried < 40  # stopped early, not after the whole list

    setattr(smtp_sink.script, where, None)  # the author fixed the relay
    again = send(app, campaign_id)
    assert (again.sent, again.failed) == (120, 0) and again.complete
    assert set(copies(smtp_sink).values()) == {1}


def test_send_digest_stops_at_the_brake_naming_the_reply_and_exits_1(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
) -> None:
    readers = add_readers_at_domains(session, clock, 60)
    digest_ready(runner, posts_folder)
    smtp_sink.script.every_data = "554 5.7.0 Account suspended"

    result = runner.invoke(args=["send-digest", "--yes", "--connections", "1"])

    assert result.exit_code == 1, result.output
    assert (
        "Stopped: the SMTP server answered '554 5.7.0 Account suspended' to 20 readers in "
        "a row at 4 domains"
    ) in result.output
    assert "nothing was marked failed" in result.output
    assert "failed 0" in result.output and "still queued 60" in result.output
    assert "Run `newsletter send-digest` again" in result.output

    smtp_sink.script.every_data = None
    again = runner.invoke(args=["send-digest", "--yes"])
    assert again.exit_code == 0, again.output
    assert copies(smtp_sink) == Counter(readers)


def test_refusals_between_messages_that_go_through_do_not_stop_the_run(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    emails = add_readers_at_domains(session, clock, 60)
    for n, email in enumerate(emails, 1):  # many stale addresses, but the relay works
        if n % 10:
            smtp_sink.script.rcpt_replies[email] = f"550 5.1.1 <{email}>... User unknown"
    report = send(app, make_campaign(session, clock), replace(FAST, connections=1))
    assert report.error is None and (report.sent, report.failed) == (6, 54)


def test_a_reader_who_leaves_after_their_batch_was_claimed_gets_nothing(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    readers = add_readers(session, clock, 12)
    hold = smtp_sink.script.holds["reader4@example.com"] = Hold()
    campaign_id = make_campaign(session, clock)

    def leave_while_reader4_is_held() -> None:
        assert hold.reached.wait(10)
        # Reader 6's delivery is claimed already (one batch holds all twelve).
        with app.app_context():
            unsubscribe(db.session, get_services(app), 6, RequestInfo(method="one-click"))
            db.session.remove()
        hold.release.set()

    leaver = threading.Thread(target=leave_while_reader4_is_held)
    leaver.start()
    report = send(
        app, campaign_id, SendOptions(connections=1, flush_interval=0.05, status_check_age=0.0)
    )
    leaver.join()
    assert (report.sent, report.skipped) == (11, 1) and report.complete
    assert statuses(session, campaign_id)["reader6@example.com"] == "skipped"
    assert not smtp_sink.to("reader6@example.com")
    assert copies(smtp_sink) == Counter(r for r in readers if r != "reader6@example.com")


# --- --retry-failed: the failed deliveries of the latest campaign, once the cause is fixed ---

QUIET_HOUR = Path(__file__).parent / "fixtures" / "campaigns" / "quiet-hour.md"


@pytest.mark.parametrize("command", [["send-digest", "--yes"], ["send-campaign", "--yes"]])
def test_retry_failed_sends_the_latest_campaigns_failed_deliveries_once(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
    command: list[str],
) -> None:
    readers = add_readers(session, clock, 6)
    refused = readers[1:4]
    for email in refused:  # e.g. a sender address the relay did not allow yet
        smtp_sink.script.rcpt_replies[email] = "550 5.7.1 Sender address rejected"
    if command[0] == "send-digest":
        digest_ready(runner, posts_folder)
        first = runner.invoke(args=command)
    else:
        first = runner.invoke(args=[*command, str(QUIET_HOUR)])
    assert first.exit_code == 3, first.output
    assert "sent 3, failed 3" in first.output
    with app.app_context():  # one of them leaves before the retry
        unsubscribe(db.session, get_services(app), 4, RequestInfo(method="one-click"))
        db.session.remove()

    smtp_sink.script.rcpt_replies.clear()  # the author fixed the cause
    again = runner.invoke(args=[*command, "--retry-failed"])

    assert again.exit_code == 0, again.output
    assert "Moved 3 failed deliveries of campaign 1 back to the queue." in again.output
    assert "sent 2, failed 0, deferred 0, skipped 1" in again.output
    assert copies(smtp_sink) == Counter(r for r in readers if r != "reader4@example.com")
    assert session.get(Campaign, 1).status == "sent"
    assert set(statuses(session, 1).values()) == {"sent", "skipped"}

    nothing = runner.invoke(args=[*command, "--retry-failed"])
    assert nothing.exit_code == 0, nothing.output
    assert "Moved 0 failed deliveries of campaign 1" in nothing.output
    assert len(smtp_sink.messages) == 5


def test_retry_failed_for_announcements_takes_no_file(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["send-campaign", str(QUIET_HOUR), "--retry-failed"])
    assert result.exit_code == 2 and "without FILE.md" in result.output
    missing = runner.invoke(args=["send-campaign", "--yes"])
    assert missing.exit_code == 2 and "missing FILE.md" in missing.output


# --- crashes, journals and one run at a time ------------------------------------------------


def test_read_journal_ignores_a_line_cut_short_by_a_kill() -> None:
    assert read_journal(b"") == []
    assert read_journal(b"12\n345\n67") == [12, 345]


def test_a_dead_runs_journal_is_folded_in_before_anything_is_sent(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    readers = add_readers(session, clock, 5)
    campaign_id = make_campaign(session, clock)
    ids = list(session.scalars(select(Delivery.id).order_by(Delivery.id)))
    folder = state_dir(app)
    folder.mkdir(parents=True)
    # A killed run had journaled the first two 250s and was writing a third id when it died.
    (folder / "journal-999-dead.log").write_bytes(f"{ids[0]}\n{ids[1]}\n{ids[2]}"[:-1].encode())

    report = send(app, campaign_id)

    assert report.sent == 3
    assert copies(smtp_sink) == Counter(readers[2:])
    assert set(statuses(session, campaign_id).values()) == {"sent"}
    assert not list(folder.glob("journal-*"))


def test_a_live_runs_journal_is_left_alone(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    add_readers(session, clock, 2)
    campaign_id = make_campaign(session, clock)
    live = Journal(state_dir(app))  # holds its flock like a running sender
    live.record(1)
    try:
        send(app, campaign_id)
        assert live.path.exists()
    finally:
        live.close(remove=True)


@exclusive_lock
def test_a_second_lock_holder_is_told_who_holds_it(app: Flask) -> None:
    with (
        app.app_context(),
        SendLock(state_dir(app), db.engine),
        pytest.raises(SendInProgressError, match=f"another send is running.*pid {os.getpid()}"),
    ):
        SendLock(state_dir(app), db.engine).acquire()
    with app.app_context(), SendLock(state_dir(app), db.engine) as again:
        assert again.held  # released when the first holder let go


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_mails_nobody_twice_but_in_flight_ones(
    config: dict[str, Any],
    tmp_path: Path,
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
) -> None:
    readers = add_readers(session, clock, 200)
    digest_ready(runner, posts_folder)
    smtp_sink.script.data_delay = 0.02
    connections = "3"
    first = newsletter_process(
        config, tmp_path, "send-digest", "--yes", "--connections", connections
    )
    try:
        smtp_sink.wait_for(40, timeout=30)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    delivered_before = len(smtp_sink.messages)
    assert delivered_before < len(readers)

    smtp_sink.script.data_delay = 0.0
    second = newsletter_process(
        config, tmp_path, "send-digest", "--yes", "--connections", connections
    )
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, out + err
    assert "Campaign 1" in out and "No new posts since the last digest" in out

    counts = copies(smtp_sink)
    assert set(counts) == set(readers)
    twice = [reader for reader, n in counts.items() if n > 1]
    assert len(twice) <= int(connections) and max(counts.values()) <= 2
    assert set(statuses(session, 1).values()) == {"sent"}
    assert session.scalar(select(Campaign.status).where(Campaign.id == 1)) == "sent"
    assert len(session.scalars(select(Campaign.id)).all()) == 1  # never a second copy


@pytest.mark.slow
def test_two_runs_at_once_never_both_send(
    config: dict[str, Any],
    tmp_path: Path,
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
) -> None:
    """SQLite: the second stops at once. PostgreSQL: it joins in, and nobody gets two."""
    readers = add_readers(session, clock, 150)
    digest_ready(runner, posts_folder)
    # A handshake instead of a race: the sink holds the first sender at the fourth reader (on
    # every connection) until the second process has started.
    hold = Hold()
    for reader in readers[3:]:
        smtp_sink.script.holds[reader] = hold
    first = newsletter_process(config, tmp_path, "send-digest", "--yes", "--connections", "2")
    try:
        assert hold.reached.wait(30), "the first sender never reached the held reader"
        second = newsletter_process(config, tmp_path, "send-digest", "--yes")
        assert second.stdout is not None
        # Its first line: it is sending (PostgreSQL), or the end of its output (SQLite: refused).
        started = second.stdout.readline()
        assert len(smtp_sink.messages) < len(readers)  # the first is still at it
    finally:
        hold.release.set()
        first_out, first_err = first.communicate(timeout=60)
    out, err = second.communicate(timeout=60)
    out = started + out
    assert first.returncode == 0, first_out + first_err
    if ON_POSTGRES:
        assert second.returncode == 0, out + err
        # It joined in (its share may be none: the first had claimed every row already).
        assert sent_in(first_out) + sent_in(out) == len(readers)
    else:
        assert second.returncode == 1, out + err
        assert "another send is running for this database" in err
    assert copies(smtp_sink) == Counter(readers)
    assert len(session.scalars(select(Campaign.id)).all()) == 1


# --- the commands ----------------------------------------------------------------------------


def test_send_digest_mails_the_new_posts_and_prints_a_summary(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import newsletter.cli.progress

    monkeypatch.setattr(newsletter.cli.progress, "PROGRESS_LOG_INTERVAL", 0.0)
    readers = add_readers(session, clock, 3)
    digest_ready(runner, posts_folder)

    result = runner.invoke(args=["send-digest", "--yes", "--connections", "2"])

    assert result.exit_code == 0, result.output
    assert 'Sending campaign 1 "Rest Is Not a Reward": 3 deliveries to make.' in result.output
    assert "sent 3, failed 0, deferred 0, skipped 0 in" in result.output
    assert "messages per second" in result.output
    assert copies(smtp_sink) == Counter(readers)
    subject = smtp_sink.messages[0].message["Subject"]
    assert subject == "Rest Is Not a Reward"
    assert "An Older Post" not in smtp_sink.messages[0].body("plain")  # archived by first sync

    again = runner.invoke(args=["send-digest", "--yes"])
    assert again.exit_code == 0, again.output
    assert "No new posts since the last digest" in again.output
    assert len(smtp_sink.messages) == 3

    listed = runner.invoke(args=["campaigns"])
    assert listed.exit_code == 0, listed.output
    row = listed.output.splitlines()[1].split()
    assert row[:2] == ["1", "digest"] and row[4:10] == ["sent", "3", "0", "0", "0", "0"]


def test_send_digest_exits_3_when_some_fail_and_campaigns_show_says_why(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
) -> None:
    add_readers(session, clock, 3)
    digest_ready(runner, posts_folder)
    smtp_sink.script.rcpt_replies["reader2@example.com"] = "550 5.1.1 No such user"

    result = runner.invoke(args=["send-digest", "--yes"])

    assert result.exit_code == 3, result.output
    assert "sent 2, failed 1" in result.output
    assert "newsletter campaigns show 1" in result.output
    shown = runner.invoke(args=["campaigns", "show", "1"])
    assert shown.exit_code == 0, shown.output
    assert "Deliveries: sent 2, failed 1, deferred 0, skipped 0, queued 0 (of 3)." in shown.output
    assert "reader2@example.com  failed  1 attempt  550 5.1.1 No such user" in shown.output
    missing = runner.invoke(args=["campaigns", "show", "99"])
    assert missing.exit_code == 1 and "There is no campaign 99" in missing.output


def test_send_digest_exits_1_and_plans_nothing_when_smtp_is_down(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
) -> None:
    add_readers(session, clock, 3)
    digest_ready(runner, posts_folder)
    smtp_sink.stop()
    result = runner.invoke(args=["send-digest", "--yes"])
    assert result.exit_code == 1
    assert "cannot reach SMTP server" in result.output
    assert session.scalars(select(Campaign.id)).all() == []  # the posts wait for the next run


def test_send_digest_resumes_an_unfinished_campaign_first(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink, runner: FlaskCliRunner
) -> None:
    readers = add_readers(session, clock, 4)
    campaign_id = make_campaign(session, clock, subject="Interrupted")
    session.execute(update(Delivery).where(Delivery.subscriber_id <= 2).values(status="sent"))
    session.commit()
    runner.invoke(args=["fetch-posts"])  # the older post is archived: nothing new
    result = runner.invoke(args=["send-digest", "--yes"])
    assert result.exit_code == 0, result.output
    assert f'Campaign {campaign_id} "Interrupted": sent 2' in result.output
    assert copies(smtp_sink) == Counter(readers[2:])


def test_dry_run_says_what_would_be_sent_and_changes_nothing(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
) -> None:
    add_readers(session, clock, 7)
    digest_ready(runner, posts_folder)
    runner.invoke(args=["fetch-posts"])
    result = runner.invoke(args=["send-digest", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert 'Would send "Rest Is Not a Reward" to 7 confirmed readers:' in result.output
    assert "  - Rest Is Not a Reward" in result.output
    assert not smtp_sink.messages
    assert session.scalars(select(Campaign.id)).all() == []


def test_to_address_sends_one_test_copy_and_marks_nothing(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
) -> None:
    add_readers(session, clock, 3)
    digest_ready(runner, posts_folder)
    result = runner.invoke(args=["send-digest", "--to", "Author@Example.com"])
    assert result.exit_code == 0, result.output
    assert 'Sent "Rest Is Not a Reward" to Author@Example.com as a test' in result.output
    (received,) = smtp_sink.messages
    assert received.recipients == ["author@example.com"]
    assert received.body("plain").startswith("Calm Corner")
    assert session.scalars(select(Campaign.id)).all() == []
    assert (
        session.scalar(select(Post.campaign_id).where(Post.title == "Rest Is Not a Reward")) is None
    )
    bad = runner.invoke(args=["send-digest", "--to", "not an address"])
    assert bad.exit_code == 2 and "--to" in bad.output


@pytest.mark.parametrize(("answer", "sent"), [("n\n", 0), ("y\n", 3)])
def test_a_terminal_is_asked_before_mailing_the_readers(
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
    posts_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    sent: int,
) -> None:
    import newsletter.cli.sending

    monkeypatch.setattr(newsletter.cli.sending, "_interactive", lambda: True)
    add_readers(session, clock, 3)
    digest_ready(runner, posts_folder)
    result = runner.invoke(args=["send-digest"], input=answer)
    assert result.exit_code == 0, result.output
    assert "Send it to 3 readers now? [y/N]" in result.output
    assert len(smtp_sink.messages) == sent
    assert len(session.scalars(select(Campaign.id)).all()) == (1 if sent else 0)


@exclusive_lock
def test_send_digest_stops_with_a_clear_message_while_another_run_sends(
    app: Flask,
    runner: FlaskCliRunner,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    posts_folder: Path,
) -> None:
    add_readers(session, clock, 2)
    digest_ready(runner, posts_folder)
    with SendLock(state_dir(app), db.engine):
        result = runner.invoke(args=["send-digest", "--yes"])
    assert result.exit_code == 1
    assert "another send is running for this database" in result.output
    assert not smtp_sink.messages


def test_progress_off_a_terminal_is_a_plain_line_every_few_seconds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import newsletter.cli.progress

    monkeypatch.setattr(newsletter.cli.progress, "PROGRESS_LOG_INTERVAL", 0.0)
    progress = newsletter.cli.progress.SendProgress(quiet=False, terminal=False)
    report = SendReport(campaign_id=4, subject="Slow mornings", total=2000)
    progress.start(report)
    progress.update(500)
    progress.update(2000)
    progress.finish(report)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'Sending campaign 4 "Slow mornings": 2,000 deliveries to make.'
    assert lines[1].startswith("  500 of 2,000 done, ") and "messages/s, about" in lines[1]
    assert len(lines) == 2  # nothing once all are done

    quiet = newsletter.cli.progress.SendProgress(quiet=True, terminal=False)
    quiet.start(report)
    quiet.update(500)
    assert capsys.readouterr().out == ""


def killed_mid_run(
    app: Flask, session: Session, clock: FrozenClock, readers: int, delivered: int
) -> tuple[int, Path]:
    """What a sender killed with SIGKILL leaves: its claims on every row, all still queued in
    the database, and its journal holding the ids of the first ``delivered`` (their 250s)."""
    add_readers(session, clock, readers)
    campaign_id = make_campaign(session, clock)
    ids = list(session.scalars(select(Delivery.id).order_by(Delivery.id)))
    session.execute(
        update(Delivery).values(
            claimed_by="sender-host:999:deadbeef0000", claimed_until=clock() + timedelta(minutes=10)
        )
    )
    session.commit()
    journal = state_dir(app) / "journal-999-deadbeef0000.log"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_bytes(b"".join(b"%d\n" % i for i in ids[:delivered]))
    return campaign_id, journal


def test_campaigns_fold_in_what_a_killed_send_left_before_counting(
    app: Flask, session: Session, clock: FrozenClock, runner: FlaskCliRunner
) -> None:
    campaign_id, journal = killed_mid_run(app, session, clock, readers=5, delivered=3)

    listed = runner.invoke(args=["campaigns"])
    assert listed.exit_code == 0, listed.output
    row = listed.output.splitlines()[1].split()
    assert row[:2] == [str(campaign_id), "digest"]
    assert row[4:10] == ["sending", "3", "0", "0", "0", "2"]
    assert "A send is running" not in listed.output
    assert not journal.exists()
    shown = runner.invoke(args=["campaigns", "show", str(campaign_id)])
    assert shown.exit_code == 0, shown.output
    assert "Deliveries: sent 3, failed 0, deferred 0, skipped 0, queued 2 (of 5)." in shown.output
    # The dead sender's claims are released too, so the next run takes those rows at once.
    session.commit()
    assert session.scalars(
        select(Delivery.claimed_by).where(Delivery.status == "queued")
    ).all() == [None, None]


def test_stats_fold_in_what_a_killed_send_left_before_counting(
    app: Flask, session: Session, clock: FrozenClock, runner: FlaskCliRunner
) -> None:
    campaign_id, journal = killed_mid_run(app, session, clock, readers=5, delivered=3)

    result = runner.invoke(args=["stats", "--format", "json"])

    assert result.exit_code == 0, result.output
    (figures,) = [c for c in json.loads(result.output)["campaigns"] if c["id"] == campaign_id]
    assert (figures["deliveries"]["sent"], figures["deliveries"]["queued"]) == (3, 2), figures
    assert not journal.exists()


def test_campaigns_show_a_killed_send_that_had_delivered_everything_as_sent(
    app: Flask, session: Session, clock: FrozenClock, runner: FlaskCliRunner
) -> None:
    campaign_id, journal = killed_mid_run(app, session, clock, readers=3, delivered=3)

    shown = runner.invoke(args=["campaigns", "show", str(campaign_id)])

    assert shown.exit_code == 0, shown.output
    assert "Status sent; created 2026-11-02 09:00 UTC, finished 2026-11-02 09:00." in shown.output
    assert "Deliveries: sent 3, failed 0, deferred 0, skipped 0, queued 0 (of 3)." in shown.output
    assert not journal.exists()


@exclusive_lock
def test_campaigns_say_so_while_a_send_is_running(
    app: Flask, session: Session, clock: FrozenClock, runner: FlaskCliRunner
) -> None:
    campaign_id, journal = killed_mid_run(app, session, clock, readers=2, delivered=1)
    with SendLock(state_dir(app), db.engine):  # a sender is at work: its journal is its own
        listed = runner.invoke(args=["campaigns"])
        shown = runner.invoke(args=["campaigns", "show", str(campaign_id)])
    for result in (listed, shown):
        assert result.exit_code == 0, result.output
        assert result.output.endswith(
            "A send is running now: these counts are live and keep moving (the last few "
            "seconds' messages show once it writes them).\n"
        )
    assert journal.exists()


def test_campaigns_with_none_yet(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["campaigns"])
    assert result.exit_code == 0 and "No campaigns yet" in result.output


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"DKIM_DOMAIN": "blog.example.com"}, "NEWSLETTER_DKIM_SELECTOR"),
        (
            {
                "DKIM_DOMAIN": "blog.example.com",
                "DKIM_SELECTOR": "s1",
                "DKIM_PRIVATE_KEY": "/nonexistent/dkim.pem",
            },
            "NEWSLETTER_DKIM_PRIVATE_KEY",
        ),
        ({"SEND_CONNECTIONS": 0}, "NEWSLETTER_SEND_CONNECTIONS"),
        ({"SEND_RATE": "fast"}, "NEWSLETTER_SEND_RATE"),
        ({"DEFER_GIVE_UP_HOURS": -1}, "NEWSLETTER_DEFER_GIVE_UP_HOURS"),
    ],
)
def test_bad_sending_settings_stop_start_up_naming_the_variable(
    config: dict[str, Any], settings: dict[str, Any], variable: str
) -> None:
    from newsletter import create_app
    from newsletter.config import ConfigError

    with pytest.raises(ConfigError, match=f"^{variable}: "):
        create_app({**config, **settings})


def test_sending_settings_become_the_default_options(config: dict[str, Any]) -> None:
    options = SendOptions.from_config(
        {
            **config,
            "SEND_RATE": 12.5,
            "SEND_CONNECTIONS": 3,
            "DEFER_RETRY_SECONDS": 30,
            "DEFER_GIVE_UP_HOURS": 24,
        },
        connections=None,
        rate=40,
    )
    assert (options.connections, options.rate, options.retry_delay) == (3, 40, 30)
    assert options.give_up_after == timedelta(hours=24)

"""Queued confirmation and welcome emails: nothing is lost while SMTP is down."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select

from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.models import ConsentEvent, OutboxEmail
from newsletter.outbox import deliver_queued
from tests.conftest import FrozenClock, link_in
from tests.smtp_sink import SmtpSink


def outbox_rows(app: Flask) -> list[tuple[str, int, str | None]]:
    with app.app_context():
        return [
            (r.status, r.attempts, r.last_error)
            for r in db.session.scalars(select(OutboxEmail).order_by(OutboxEmail.id))
        ]


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def run_outbox(app: Flask) -> None:
    """One pass of the outbox sender, as `send-queued` or the background thread makes it."""
    with app.app_context():
        services = get_services(app)
        transport = services.open_transport()
        try:
            deliver_queued(
                db.session,
                transport,
                sender="hello@blog.example.com",
                now=services.clock(),
                max_attempts=5,
            )
        finally:
            transport.close()
            db.session.remove()


def test_smtp_down_then_up_loses_no_confirmation(
    make_app: Callable[..., Flask], smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    port = smtp_sink.port
    smtp_sink.stop()  # the mail server is down
    app = make_app()
    client = app.test_client()
    response = client.post("/subscribe", json={"email": "patient@example.com"})
    assert response.status_code == 202  # the reader is not told about our SMTP trouble
    wait_until(lambda: outbox_rows(app)[0][1] == 1)  # the background sender tried once
    status, attempts, error = outbox_rows(app)[0]
    assert status == "queued" and "cannot reach SMTP server" in (error or "")

    restarted = SmtpSink(port=port).start()
    try:
        result = app.test_cli_runner().invoke(args=["send-queued"])
        assert result.exit_code == 0, result.output
        assert "Sent 1" in result.output
        (message,) = restarted.wait_for(1)
        assert message.recipients == ["patient@example.com"]
        confirm = link_in(message.body("plain"), "confirm")
        assert client.post(confirm).status_code == 200
        restarted.wait_for(2)  # the welcome email, sent in the background
        wait_until(lambda: all(row[0] == "sent" for row in outbox_rows(app)))
    finally:
        restarted.stop()
    assert outbox_rows(app)[0][0] == "sent"
    with app.app_context():
        kinds = db.session.scalars(select(ConsentEvent.kind).order_by(ConsentEvent.id)).all()
    assert kinds[:3] == ["requested", "confirmation_sent", "confirmed"]


def test_send_queued_says_what_to_do_when_smtp_is_down(
    app: Flask, runner: FlaskCliRunner, smtp_sink: SmtpSink
) -> None:
    smtp_sink.stop()
    app.config["OUTBOX_SEND_AFTER_REQUEST"] = False
    app.test_client().post("/subscribe", json={"email": "later@example.com"})
    result = runner.invoke(args=["send-queued"])
    assert result.exit_code == 3
    assert "stay queued" in result.output
    assert outbox_rows(app)[0][0] == "queued"


def test_background_sweep_retries_when_the_backoff_is_over(
    make_app: Callable[..., Flask], smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    port = smtp_sink.port
    smtp_sink.stop()
    app = make_app(OUTBOX_RETRY_INTERVAL=0.1)
    app.test_client().post("/subscribe", json={"email": "sweep@example.com"})
    wait_until(lambda: outbox_rows(app)[0][1] == 1)
    restarted = SmtpSink(port=port).start()
    try:
        clock.advance(seconds=31)  # past the first backoff
        restarted.wait_for(1)
        wait_until(lambda: outbox_rows(app)[0][0] == "sent")
    finally:
        restarted.stop()


def test_permanent_rejection_marks_the_email_failed(app: Flask, smtp_sink: SmtpSink) -> None:
    app.config["OUTBOX_SEND_AFTER_REQUEST"] = False
    smtp_sink.script.rcpt_replies["nobody@example.com"] = "550 5.1.1 No such user"
    app.test_client().post("/subscribe", json={"email": "nobody@example.com"})
    with app.app_context():
        services = get_services(app)
        transport = services.open_transport()
        try:
            report = deliver_queued(
                db.session,
                transport,
                sender="hello@blog.example.com",
                now=services.clock(),
                max_attempts=5,
            )
        finally:
            transport.close()
    assert report.failed == 1 and report.sent == 0
    status, attempts, error = outbox_rows(app)[0]
    assert status == "failed" and attempts == 1 and "550" in (error or "")


def test_temporary_rejection_is_retried_with_backoff(
    app: Flask, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    app.config["OUTBOX_SEND_AFTER_REQUEST"] = False
    smtp_sink.script.rcpt_replies["busy@example.com"] = "451 4.3.0 Try again later"
    app.test_client().post("/subscribe", json={"email": "busy@example.com"})

    run_outbox(app)
    assert outbox_rows(app)[0][:2] == ("queued", 1)
    run_outbox(app)  # not due yet: the backoff holds it
    assert outbox_rows(app)[0][:2] == ("queued", 1)
    del smtp_sink.script.rcpt_replies["busy@example.com"]
    clock.advance(seconds=31)
    run_outbox(app)
    assert outbox_rows(app)[0][:2] == ("sent", 2)
    assert len(smtp_sink.wait_for(1)) == 1


def test_two_senders_never_send_one_email_twice(app: Flask, smtp_sink: SmtpSink) -> None:
    import threading

    app.config["OUTBOX_SEND_AFTER_REQUEST"] = False
    client = app.test_client()
    for n in range(20):
        client.post(
            "/subscribe",
            json={"email": f"race{n}@example.com"},
            environ_base={"REMOTE_ADDR": f"192.0.2.{n}"},
        )

    threads = [threading.Thread(target=run_outbox, args=(app,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages = smtp_sink.wait_for(20)
    recipients = sorted(r for m in messages for r in m.recipients)
    assert recipients == sorted(f"race{n}@example.com" for n in range(20))
    assert {row[0] for row in outbox_rows(app)} == {"sent"}

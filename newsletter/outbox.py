"""The outbox: transactional emails (confirmation, welcome) queued in the transaction that causes
them, claimed by exactly one sender, and marked sent only after the server's 250.

Whoever sends (the web process's background sender right after a request, ``newsletter
send-queued``, or a sweep for retries) claims a row first with a conditional UPDATE, so two
processes never send one email twice. A failed attempt goes back to the queue with backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask
from sqlalchemy import bindparam, case, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from .bounces.verp import envelope_senders
from .models import CONFIRMATION_SENT, FAILED, QUEUED, SENDING, SENT, ConsentEvent, OutboxEmail
from .smtp import SmtpConfigError, SmtpRejectedError, SmtpUnavailableError, Transport

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)

CONFIRMATION = "confirmation"
WELCOME = "welcome"
CLAIM_LEASE = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=1)


def queue_email(
    session: Session,
    *,
    subscriber_id: int | None,
    kind: str,
    recipient: str,
    message: bytes,
    now: datetime,
) -> OutboxEmail:
    """Add a serialised email to the outbox in the caller's transaction."""
    row = OutboxEmail(
        subscriber_id=subscriber_id,
        kind=kind,
        recipient=recipient,
        message=message,
        status=QUEUED,
        attempts=0,
        created_at=now,
        next_attempt_at=now,
    )
    session.add(row)
    return row


_QUEUE_ROW = insert(OutboxEmail).returning(OutboxEmail.id)
_RECENT_COUNTS = select(
    *(
        func.coalesce(func.sum(case((OutboxEmail.created_at >= bindparam(since), 1), else_=0)), 0)
        for since in ("since1", "since2")
    )
).where(OutboxEmail.subscriber_id == bindparam("sid"), OutboxEmail.kind == bindparam("kind"))


def queue_email_row(
    session: Session,
    *,
    subscriber_id: int | None,
    kind: str,
    recipient: str,
    message: bytes,
    now: datetime,
) -> int:
    """Like ``queue_email``, in one prepared INSERT without an ORM object; returns the id."""
    return int(
        session.connection()
        .execute(
            _QUEUE_ROW,
            {
                "subscriber_id": subscriber_id,
                "kind": kind,
                "recipient": recipient,
                "message": message,
                "status": QUEUED,
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
                "claimed_until": None,
                "sent_at": None,
                "last_error": None,
            },
        )
        .scalar_one()
    )


def recent_counts(
    session: Session, subscriber_id: int, kind: str, since1: datetime, since2: datetime
) -> tuple[int, int]:
    """How many emails of ``kind`` were queued for a reader since each of two moments (counted
    across all processes), in one query."""
    row = (
        session.connection()
        .execute(
            _RECENT_COUNTS, {"sid": subscriber_id, "kind": kind, "since1": since1, "since2": since2}
        )
        .one()
    )
    return int(row[0]), int(row[1])


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, ... up to an hour between attempts."""
    return min(timedelta(seconds=30 * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


@dataclass
class OutboxReport:
    """What one pass over the outbox did."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _claimable(now: datetime, due_only: bool):  # type: ignore[no-untyped-def]
    queued = OutboxEmail.status == QUEUED
    if due_only:
        queued = queued & (OutboxEmail.next_attempt_at <= now)
    abandoned = (OutboxEmail.status == SENDING) & (OutboxEmail.claimed_until < now)
    return or_(queued, abandoned)


def _claim_batch(session: Session, now: datetime, due_only: bool, size: int) -> list[Any]:
    """Claim up to ``size`` due emails in one statement; another sender never gets the same
    rows (SKIP LOCKED on PostgreSQL; SQLite has one writer at a time)."""
    candidates = (
        select(OutboxEmail.id)
        .where(_claimable(now, due_only))
        .order_by(OutboxEmail.id)
        .limit(size)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(OutboxEmail)
        # The condition again, so a row another sender claimed meanwhile is left out.
        .where(OutboxEmail.id.in_(candidates.scalar_subquery()), _claimable(now, due_only))
        .values(status=SENDING, claimed_until=now + CLAIM_LEASE)
        .returning(
            OutboxEmail.id,
            OutboxEmail.kind,
            OutboxEmail.subscriber_id,
            OutboxEmail.recipient,
            OutboxEmail.message,
            OutboxEmail.attempts,
        )
    ).all()
    session.commit()
    return sorted(rows, key=lambda row: row.id)


def _commit_quickly(session: Session) -> None:
    """Commit a delivery mark. On PostgreSQL without waiting for the WAL flush: a mark lost in
    a database crash re-sends one short email, which is better than every sign-up waiting."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit = off"))
    session.commit()


def deliver_queued(
    session: Session,
    transport: Transport,
    *,
    sender: str | Callable[[int | None], str],
    now: datetime,
    max_attempts: int,
    due_only: bool = True,
    limit: int = 500,
    batch: int = 50,
) -> OutboxReport:
    """Send the queued emails (only those due, unless ``due_only`` is false); returns a report.
    ``sender`` is the envelope sender, or a function of the reader's id giving it (VERP).

    Stops early, leaving the rest queued, when the SMTP server cannot be reached or refuses
    our credentials: every later email would fail the same way.
    """
    report = OutboxReport()
    handled = 0
    while handled < limit and not report.errors:
        rows = _claim_batch(session, now, due_only, min(batch, limit - handled))
        if not rows:
            break
        handled += len(rows)
        for position, row in enumerate(rows):
            try:
                envelope = sender(row.subscriber_id) if callable(sender) else sender
                transport.send(envelope, row.recipient, row.message)
            except SmtpRejectedError as err:
                _attempt_failed(
                    session,
                    row,
                    now,
                    max_attempts,
                    str(err),
                    permanent=not err.temporary,
                    report=report,
                )
                continue
            except (SmtpUnavailableError, SmtpConfigError) as err:
                _attempt_failed(
                    session, row, now, max_attempts, str(err), permanent=False, report=report
                )
                report.errors.append(str(err))
                # Give back what this pass claimed but did not try.
                untried = [r.id for r in rows[position + 1 :]]
                if untried:
                    session.execute(
                        update(OutboxEmail)
                        .where(OutboxEmail.id.in_(untried))
                        .values(status=QUEUED, claimed_until=None)
                    )
                    session.commit()
                break
            session.execute(
                update(OutboxEmail)
                .where(OutboxEmail.id == row.id)
                .values(status=SENT, sent_at=now, claimed_until=None, attempts=row.attempts + 1)
            )
            if row.kind == CONFIRMATION and row.subscriber_id is not None:
                session.execute(
                    insert(ConsentEvent).values(
                        subscriber_id=row.subscriber_id,
                        kind=CONFIRMATION_SENT,
                        occurred_at=now,
                        method="system",
                    )
                )
            _commit_quickly(session)
            report.sent += 1
    return report


def deliver_queued_now(
    session: Session, services: Services, transport: Transport, *, due_only: bool = True
) -> OutboxReport:
    """``deliver_queued`` with the app's settings: its envelope sender (VERP when
    NEWSLETTER_BOUNCE_ADDRESS is set), its clock and NEWSLETTER_OUTBOX_MAX_ATTEMPTS; what the
    background sender and ``newsletter send-queued`` both run."""
    return deliver_queued(
        session,
        transport,
        sender=envelope_senders(services.config, None),
        now=services.clock(),
        max_attempts=services.config["OUTBOX_MAX_ATTEMPTS"],
        due_only=due_only,
    )


def _attempt_failed(
    session: Session,
    row: Any,
    now: datetime,
    max_attempts: int,
    error: str,
    *,
    permanent: bool,
    report: OutboxReport,
) -> None:
    attempts = row.attempts + 1
    changes: dict[str, Any] = {
        "attempts": attempts,
        "last_error": error[:2000],
        "claimed_until": None,
    }
    if permanent or attempts >= max_attempts:
        changes["status"] = FAILED
        report.failed += 1
        log.warning("giving up on outbox email %s: %s", row.id, error)
    else:
        changes.update(status=QUEUED, next_attempt_at=now + backoff(attempts))
        report.retrying += 1
        log.info("outbox email %s will be retried: %s", row.id, error)
    session.execute(update(OutboxEmail).where(OutboxEmail.id == row.id).values(**changes))
    session.commit()


class OutboxSender:
    """A background thread in each web process: sends new emails as soon as a request queues
    them (``wake``) and sweeps for due retries every ``interval`` seconds."""

    def __init__(self, app: Flask, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the thread once per process."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        """Send what is queued now rather than at the next sweep."""
        self.start()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        from . import ratelimit
        from .appctx import get_services
        from .db import db

        transport: Transport | None = None
        while not self._stop.is_set():
            woken = self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            with self.app.app_context():
                services = get_services(self.app)
                # Keep the connection while requests keep coming; close it once idle.
                transport = transport or services.open_transport()
                try:
                    report = deliver_queued_now(db.session(), services, transport)
                    if not woken:
                        ratelimit.sweep(db.session(), services.clock())
                except Exception:  # keep the thread alive; the rows stay queued
                    log.exception("the background outbox sender failed; will try again")
                    db.session.rollback()
                    report = None
                finally:
                    db.session.remove()
                if report is None or report.errors or not woken:
                    transport.close()
                    transport = None
        if transport is not None:
            transport.close()

"""GDPR erasure and the retention purge of never-confirmed sign-ups.

Erasure blanks a reader's personal data everywhere it is held (the reader row, their consent
events, their transactional emails, their delivery rows' SMTP replies), appends an ``erased``
event, and keeps only a keyed hash of the address in ``suppressions`` so imports refuse it.
The reader row and the delivery rows stay, as anonymous records, for the statistics.

On SQLite, "removed" must mean gone from the file. The erasing connection turns on
``secure_delete`` (what it frees is overwritten with zeros), but copies freed *earlier* without
it (a row rewritten when its status changed, an email's overflow pages) can still sit in free
space, so the file is then rebuilt with ``VACUUM`` and a ``wal_checkpoint(TRUNCATE)`` copies the
new pages into the file and empties the write-ahead log that held the old ones. On PostgreSQL,
old row versions stay in the table files until ``VACUUM FULL`` rewrites them (see the README).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import case, delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from .addresses import address_hash, normalise_address
from .models import (
    BOUNCED_EVENT,
    COMPLAINED,
    DEFERRED,
    ERASED,
    ERASED_EVENT,
    PENDING,
    QUEUED,
    SENDING,
    SKIPPED,
    BounceRecord,
    ConsentEvent,
    Delivery,
    OutboxEmail,
    Subscriber,
    Suppression,
)
from .services import Services

ERASED_REASON = "erased"
PURGE_BATCH = 500
CHECKPOINT_TRIES = 20


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure did. ``outcome``: ``erased`` (personal data removed just now),
    ``already_erased`` (nothing left to remove) or ``not_held`` (no reader had the address;
    its hash is now suppressed all the same, so imports refuse it)."""

    outcome: str
    subscriber_id: int | None = None
    events: int = 0
    emails: int = 0
    deliveries: int = 0
    # SQLite: the file was rebuilt and its write-ahead log emptied (None: not SQLite).
    file_scrubbed: bool | None = True


@dataclass(frozen=True)
class PurgeReport:
    """How many never-confirmed sign-ups were removed, and whether the file is clean."""

    removed: int
    cutoff: datetime
    file_scrubbed: bool | None = True


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _secure_delete(session: Session) -> None:
    """Make this transaction's connection overwrite whatever it frees (SQLite)."""
    if _is_sqlite(session):
        session.connection().exec_driver_sql("PRAGMA secure_delete=ON")


def scrub_file(engine: Engine, tries: int = CHECKPOINT_TRIES) -> bool | None:
    """Leave no copy of freed data in the SQLite files: rebuild the file (``VACUUM``), copy the
    write-ahead log into it and truncate the log. True when done, False when other connections
    kept it busy throughout (run it again), None on databases other than SQLite."""
    if engine.dialect.name != "sqlite":
        return None
    for attempt in range(tries):
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM")
                busy, _log, _done = connection.exec_driver_sql(
                    "PRAGMA wal_checkpoint(TRUNCATE)"
                ).one()
        except OperationalError:
            busy = 1  # another connection is writing: wait and try again
        if not busy:
            return True
        time.sleep(min(0.05 * 2**attempt, 1.0))
    return False


def _page_only(url: str | None) -> str | None:
    """The page a sign-up came from, without a query or fragment that might name the reader."""
    if not url:
        return None
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) or None


def erase_reader(
    session: Session, services: Services, email: str, method: str = "cli"
) -> ErasureReport:
    """Erase everything personal held about an address; idempotent. Raises InvalidAddressError."""
    address = normalise_address(email)
    digest = address_hash(services.config["SECRET_KEY"], address)
    now = services.clock()
    _secure_delete(session)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == address))
    # Emails queued for the address without a reader (or for the reader) lose it too.
    email_filter = OutboxEmail.recipient == address
    if subscriber is not None:
        email_filter = email_filter | (OutboxEmail.subscriber_id == subscriber.id)
    emails = session.execute(
        update(OutboxEmail)
        .where(email_filter)
        .values(
            recipient=None,
            message=None,
            last_error=None,
            claimed_until=None,
            status=case(
                (OutboxEmail.status.in_((QUEUED, SENDING)), SKIPPED), else_=OutboxEmail.status
            ),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    suppressed = session.get(Suppression, digest) is not None
    if not suppressed:
        session.execute(
            insert(Suppression).values(address_hash=digest, reason=ERASED_REASON, created_at=now)
        )
    if subscriber is None:
        session.commit()
        scrubbed = scrub_file(session.get_bind())  # type: ignore[arg-type]
        outcome = "already_erased" if suppressed else "not_held"
        return ErasureReport(outcome, emails=emails, file_scrubbed=scrubbed)

    events = 0
    for event in subscriber.events:
        event.ip = None
        event.user_agent = None
        event.source_url = _page_only(event.source_url)
        if event.kind in (BOUNCED_EVENT, COMPLAINED):
            event.note = None  # a server's diagnostic usually quotes the address
        events += 1
    session.execute(
        update(BounceRecord)
        .where(BounceRecord.subscriber_id == subscriber.id)
        .values(diagnostic=None)
        .execution_options(synchronize_session=False)
    )
    deliveries = session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber.id)
        .values(
            smtp_reply=None,
            status=case(
                (Delivery.status.in_((QUEUED, DEFERRED, SENDING)), SKIPPED), else_=Delivery.status
            ),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    subscriber.email = None
    subscriber.name = None
    subscriber.status = ERASED
    subscriber.updated_at = now
    # Confirm links already in an inbox die; unsubscribe links find no reader any more.
    subscriber.token_generation += 1
    subscriber.events.append(ConsentEvent(kind=ERASED_EVENT, occurred_at=now, method=method))
    subscriber_id = subscriber.id
    session.commit()
    scrubbed = scrub_file(session.get_bind())  # type: ignore[arg-type]
    return ErasureReport("erased", subscriber_id, events, emails, deliveries, scrubbed)


def purge_pending(session: Session, services: Services, *, dry_run: bool = False) -> PurgeReport:
    """Delete never-confirmed pending sign-ups whose last request is older than
    ``PENDING_RETENTION_DAYS``, with their events and emails; keeps nothing about them.

    Deleting (rather than erasing) is deliberate: an unconfirmed sign-up never became consent,
    so there is nothing to prove later, and no suppression is kept: the person may sign up
    again. Readers who once confirmed keep their history (it proves their withdrawal).
    """
    now = services.clock()
    cutoff = now - timedelta(days=services.config["PENDING_RETENTION_DAYS"])
    stale = (
        select(Subscriber.id)
        .where(
            Subscriber.status == PENDING,
            Subscriber.confirmed_at.is_(None),
            Subscriber.updated_at < cutoff,
        )
        .order_by(Subscriber.id)
    )
    if dry_run:
        count = len(session.scalars(stale).all())
        session.rollback()
        return PurgeReport(count, cutoff)
    removed = 0
    while True:
        _secure_delete(session)
        ids = session.scalars(stale.limit(PURGE_BATCH)).all()
        if not ids:
            session.rollback()
            break
        for table in (OutboxEmail, ConsentEvent, Delivery, BounceRecord):
            session.execute(
                delete(table)
                .where(table.subscriber_id.in_(ids))
                .execution_options(synchronize_session=False)
            )
        session.execute(
            delete(Subscriber)
            .where(Subscriber.id.in_(ids))
            .execution_options(synchronize_session=False)
        )
        session.commit()
        removed += len(ids)
    scrubbed = scrub_file(session.get_bind()) if removed else True  # type: ignore[arg-type]
    return PurgeReport(removed, cutoff, scrubbed)

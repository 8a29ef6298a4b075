"""The author's reader list: listing, counting and exporting readers, and adding or
unsubscribing one by hand, with the consent rules of the web journey. (Importing a CSV file is
newsletter.reader_import.)

Large lists stream: rows are read with ``yield_per`` and no ORM object outlives its batch.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .addresses import normalise_address
from .errors import NewsletterError
from .models import ERASED, SUBSCRIBER_STATUSES, UNSUBSCRIBED, ConsentEvent, Subscriber
from .services import Services
from .subscriptions import (
    ReaderNotFoundError,
    RequestInfo,
    SubscribeOutcome,
    find_subscriber,
    is_suppressed,
    subscribe,
    unsubscribe,
)

BATCH_SIZE = 2000
#: Columns ``export`` writes; ``import`` reads email, name, subscribed_at, source and status.
EXPORT_COLUMNS = (
    "email",
    "name",
    "status",
    "subscribed_at",
    "confirmed_at",
    "unsubscribed_at",
    "source",
)

SUBSCRIBERS = Subscriber.__table__
EVENTS = ConsentEvent.__table__


class ReadersError(NewsletterError):
    """A reader operation cannot go ahead; the message says what to do instead."""


class AddressSuppressedError(ReadersError):
    """The address was erased at the reader's request: only the reader may sign up again."""


# --- listing, counting, exporting ------------------------------------------------------------


@dataclass(frozen=True)
class ReaderRow:
    """One reader as listed and exported (no consent history: see ``subscriptions.describe``)."""

    id: int
    email: str | None
    name: str | None
    status: str
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    source: str | None

    @property
    def subscribed_at(self) -> datetime:
        """When the reader's consent was given: the confirmation, else the sign-up."""
        return self.confirmed_at or self.created_at


def _check_status(status: str | None) -> None:
    if status is not None and status not in SUBSCRIBER_STATUSES:
        choices = ", ".join(SUBSCRIBER_STATUSES)
        raise ReadersError(f"unknown status {status!r}: use one of {choices}")


def iter_readers(
    session: Session, status: str | None = None, *, batch_size: int = BATCH_SIZE
) -> Iterator[ReaderRow]:
    """Readers in id order, streamed; all but the erased ones unless ``status`` asks for them."""
    _check_status(status)
    first_source = (
        select(ConsentEvent.source_url)
        .where(ConsentEvent.subscriber_id == Subscriber.id, ConsentEvent.source_url.is_not(None))
        .order_by(ConsentEvent.id)
        .limit(1)
        .correlate(Subscriber)
        .scalar_subquery()
    )
    query = select(
        Subscriber.id,
        Subscriber.email,
        Subscriber.name,
        Subscriber.status,
        Subscriber.created_at,
        Subscriber.confirmed_at,
        Subscriber.unsubscribed_at,
        first_source,
    ).order_by(Subscriber.id)
    if status is None:
        query = query.where(Subscriber.status != ERASED)
    else:
        query = query.where(Subscriber.status == status)
    result = session.execute(query.execution_options(yield_per=batch_size))
    for row in result:
        yield ReaderRow(*row)


def count_by_status(session: Session) -> dict[str, int]:
    """How many readers have each status (every status present, zero included)."""
    counts = dict.fromkeys(SUBSCRIBER_STATUSES, 0)
    for status, number in session.execute(
        select(Subscriber.status, func.count()).group_by(Subscriber.status)
    ):
        counts[status] = number
    return counts


def iso(value: datetime | None) -> str:
    """A UTC time as ISO 8601 to the second (what export writes and import reads), or ''."""
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else ""


def export_readers(session: Session, out: IO[str], status: str | None = None) -> int:
    """Write readers as CSV (header first) with their consent dates; returns the row count.

    The file imports again as it is: ``email``, ``name``, ``subscribed_at`` and ``source`` are
    import's columns, and import brings in only the rows whose ``status`` is ``confirmed``.
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for reader in iter_readers(session, status):
        if reader.email is None:
            continue  # erased: nothing to export
        writer.writerow(
            [
                reader.email,
                reader.name or "",
                reader.status,
                iso(reader.subscribed_at),
                iso(reader.confirmed_at),
                iso(reader.unsubscribed_at),
                reader.source or "",
            ]
        )
        count += 1
    return count


# --- one reader by hand ----------------------------------------------------------------------


def add_reader(
    session: Session, services: Services, email: str, *, name: str | None = None
) -> SubscribeOutcome:
    """Sign a reader up on their behalf: pending, with the double-opt-in email queued.

    Raises InvalidAddressError, or AddressSuppressedError for an address erased at the
    reader's request.
    """
    if find_subscriber(session, email) is None and is_suppressed(session, services, email):
        raise AddressSuppressedError(
            "This address was erased at the reader's request, so it cannot be added for them. "
            "They can subscribe again themselves through the form."
        )
    return subscribe(session, services, email, name=name, info=RequestInfo(method="cli"))


def unsubscribe_reader(session: Session, services: Services, email: str) -> tuple[Subscriber, bool]:
    """Withdraw a reader's consent (method ``cli``); returns the reader and whether it changed.

    Raises InvalidAddressError, or ReaderNotFoundError when no reader has the address.
    """
    subscriber = find_subscriber(session, email)
    if subscriber is None:
        raise ReaderNotFoundError(f"No reader with the address {normalise_address(email)}.")
    already = subscriber.status == UNSUBSCRIBED
    unsubscribe(session, services, subscriber.id, RequestInfo(method="cli"))
    return subscriber, not already

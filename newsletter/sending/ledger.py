"""The delivery ledger's SQL: planning, counting and marking deliveries."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.orm import Session

from ..db import UTCDateTime
from ..models import CONFIRMED, DEFERRED, QUEUED, SENT
from .options import ID_CHUNK, MAX_BACKOFF, SendReport, _campaigns, _deliveries, _subscribers


def plan_deliveries(session: Session, campaign_id: int, now: datetime) -> int:
    """Queue one delivery per confirmed reader in one INSERT ... SELECT (no rows in Python).

    Runs in the caller's transaction (plan in the one that creates the campaign, then commit).
    """
    readers = (
        select(
            literal(campaign_id),
            _subscribers.c.id,
            literal(QUEUED),
            literal(0),
            literal(now, UTCDateTime()),
        )
        .where(_subscribers.c.status == CONFIRMED, _subscribers.c.email.is_not(None))
        .order_by(_subscribers.c.id)
    )
    result = session.execute(
        insert(_deliveries).from_select(
            ["campaign_id", "subscriber_id", "status", "attempts", "updated_at"], readers
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def confirmed_readers(session: Session) -> int:
    """How many readers a campaign planned now would go to."""
    return (
        session.scalar(
            select(func.count())
            .select_from(_subscribers)
            .where(_subscribers.c.status == CONFIRMED, _subscribers.c.email.is_not(None))
        )
        or 0
    )


def _chunks(ids: Sequence[int], size: int = ID_CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def mark_sent(
    session: Session, ids: Sequence[int], now: datetime, *, only_unsent: bool = False
) -> int:
    """Bulk-mark deliveries sent (in the caller's transaction); returns rows changed."""
    changed = 0
    for chunk in _chunks(ids):
        statement = update(_deliveries).where(_deliveries.c.id.in_(chunk))
        if only_unsent:
            statement = statement.where(_deliveries.c.status != SENT)
        result = session.execute(
            statement.values(
                status=SENT,
                attempts=_deliveries.c.attempts + 1,
                updated_at=now,
                next_attempt_at=None,
                claimed_until=None,
                claimed_by=None,
                smtp_reply=None,
            )
        )
        changed += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return changed


def backoff(attempts: int, first: float) -> timedelta:
    """``first`` seconds, then twice as long after each further 4xx, up to six hours."""
    return min(timedelta(seconds=first * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


@dataclass(slots=True)
class _Work:
    """One claimed delivery on its way to a sender thread (plain values, no ORM object)."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str | None
    attempts: int
    deferred_since: datetime | None
    # Set by the feeder: when (monotonic) the status check that covered it began, and whether
    # it found the reader gone.
    checked_at: float = -math.inf
    withdrawn: bool = False


@dataclass(slots=True)
class _Outcome:
    status: str
    delivery_id: int
    reply: str | None = None
    attempts: int = 0
    deferred_since: datetime | None = None
    in_db: bool = False  # already written by the sending thread (a 250 on PostgreSQL)
    unknown: bool = False  # no reply to the final dot: never retried in the same run
    domain: str = ""  # the reader's mail domain, for the brake
    requeue: bool = False  # the brake put it back in the queue (not the reader's fault)


def settle_campaign(session: Session, report: SendReport, now: datetime) -> None:
    """Put what is left of the report's campaign into it (still queued, deferred) and mark the
    campaign sent when no row is left to try; commits."""
    d = _deliveries
    counts: dict[str, int] = dict(
        session.execute(
            select(d.c.status, func.count())
            .where(d.c.campaign_id == report.campaign_id, d.c.status.in_((QUEUED, DEFERRED)))
            .group_by(d.c.status)
        ).all()
    )
    report.left = counts.get(QUEUED, 0)
    # Every delivery still waiting for a retry, including ones deferred by earlier runs.
    report.deferred = counts.get(DEFERRED, 0)
    if not counts:
        session.execute(
            update(_campaigns)
            .where(_campaigns.c.id == report.campaign_id, _campaigns.c.status != SENT)
            .values(status=SENT, finished_at=now)
        )
        report.finished = True
    session.commit()

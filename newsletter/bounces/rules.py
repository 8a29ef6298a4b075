"""What a bounce or complaint does to a reader.

- A hard bounce marks the reader ``bounced`` (suppressed from every later send) with a
  ``bounced`` consent event carrying the diagnostic.
- Soft bounces are counted: NEWSLETTER_SOFT_BOUNCE_LIMIT (3) of them spread over at least
  NEWSLETTER_SOFT_BOUNCE_DAYS (15) days, with no successful delivery in between, make the
  reader ``bounced`` too.
- A complaint marks the reader ``unsubscribed`` with a ``complained`` event; imports never
  re-activate an unsubscribed reader.
Every bounce and complaint is kept as a :class:`BounceRecord`, the evidence and what campaign
rates are counted from. A bounced reader who signs up again goes through double opt-in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..models import (
    BOUNCED,
    BOUNCED_EVENT,
    COMPLAINED,
    CONFIRMED,
    ERASED,
    PENDING,
    SENT,
    UNSUBSCRIBED,
    BounceRecord,
    Campaign,
    ConsentEvent,
    Delivery,
    Subscriber,
)
from .classify import COMPLAINT, HARD, SOFT

# What applying an outcome did (for reports and tests).
MARKED_BOUNCED = "marked bounced"
COUNTED = "counted"
MARKED_COMPLAINED = "marked unsubscribed (complaint)"
RECORDED = "recorded"  # the reader had already left: kept as evidence only


@dataclass(frozen=True)
class Outcome:
    """A bounce or complaint about one reader, from any source."""

    subscriber_id: int
    kind: str  # hard, soft, complaint
    source: str  # mailbox, ses, mailgun, postmark
    campaign_id: int | None = None
    status_code: str | None = None
    diagnostic: str | None = None


def _event(subscriber: Subscriber, kind: str, now: datetime, note: str | None) -> None:
    subscriber.events.append(
        ConsentEvent(
            kind=kind, occurred_at=now, method="system", note=(note or None) and note[:2000]
        )
    )


def _soft_bounces_reached(
    session: Session, config: Mapping[str, Any], subscriber_id: int, now: datetime
) -> bool:
    """Whether the reader's soft bounces since their last successful delivery are enough."""
    bounced_campaigns = select(BounceRecord.campaign_id).where(
        BounceRecord.subscriber_id == subscriber_id, BounceRecord.campaign_id.is_not(None)
    )
    # A delivery the server took and that never bounced reached the reader: it resets the count.
    last_success = session.scalar(
        select(func.max(Delivery.updated_at)).where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.status == SENT,
            Delivery.campaign_id.not_in(bounced_campaigns),
        )
    )
    query = select(func.count(), func.min(BounceRecord.occurred_at)).where(
        BounceRecord.subscriber_id == subscriber_id, BounceRecord.kind == SOFT
    )
    if last_success is not None:
        query = query.where(BounceRecord.occurred_at > last_success)
    count, first = session.execute(query).one()
    if count < config["SOFT_BOUNCE_LIMIT"] or first is None:
        return False
    return bool(now - first >= timedelta(days=config["SOFT_BOUNCE_DAYS"]))


def apply_outcome(
    session: Session, config: Mapping[str, Any], clock: Callable[[], datetime], outcome: Outcome
) -> str:
    """Record ``outcome`` and apply the rules to its reader; commits. Returns what it did."""
    now = clock()
    subscriber = session.get(Subscriber, outcome.subscriber_id, with_for_update=True)
    if subscriber is None:
        raise LookupError(f"no reader with id {outcome.subscriber_id}")
    campaign_id = outcome.campaign_id or None
    if campaign_id is not None and session.get(Campaign, campaign_id) is None:
        campaign_id = None  # a token from before a database reset: keep the evidence anyway
    session.add(
        BounceRecord(
            subscriber_id=subscriber.id,
            campaign_id=campaign_id,
            kind=outcome.kind,
            source=outcome.source,
            status_code=outcome.status_code,
            diagnostic=(outcome.diagnostic or None) and outcome.diagnostic[:2000],
            occurred_at=now,
        )
    )
    session.flush()
    result = RECORDED
    active = subscriber.status in (PENDING, CONFIRMED)
    if outcome.kind == COMPLAINT:
        if subscriber.status != ERASED and not any(e.kind == COMPLAINED for e in subscriber.events):
            if subscriber.status != UNSUBSCRIBED:
                subscriber.status = UNSUBSCRIBED
                subscriber.unsubscribed_at = now
                subscriber.token_generation += 1  # void a confirm link still in an inbox
            subscriber.updated_at = now
            _event(subscriber, COMPLAINED, now, outcome.diagnostic or "spam complaint")
            result = MARKED_COMPLAINED
    elif active and (
        outcome.kind == HARD or _soft_bounces_reached(session, config, subscriber.id, now)
    ):
        subscriber.status = BOUNCED
        subscriber.updated_at = now
        subscriber.token_generation += 1
        why = (
            f"{outcome.status_code} {outcome.diagnostic or ''}".strip()
            if outcome.status_code and outcome.status_code not in (outcome.diagnostic or "")
            else outcome.diagnostic
        ) or "bounced"
        if outcome.kind == SOFT:
            why = (
                f"{config['SOFT_BOUNCE_LIMIT']} soft bounces over "
                f"{config['SOFT_BOUNCE_DAYS']:g} days; last: {why}"
            )
        _event(subscriber, BOUNCED_EVENT, now, why)
        result = MARKED_BOUNCED
    elif outcome.kind == SOFT and active:
        result = COUNTED
    session.commit()
    return result

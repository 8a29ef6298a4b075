"""Looking back: campaigns and their counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..models import DEFERRED, FAILED, QUEUED, SENDING, SENT
from .ledger import _chunks
from .lock import SendLock, recover
from .options import (
    JOURNAL_GLOB,
    CampaignNotFoundError,
    SendInProgressError,
    _campaigns,
    _deliveries,
    _subscribers,
)


@dataclass(frozen=True)
class CampaignSummary:
    """One campaign with its deliveries counted by status."""

    id: int
    kind: str
    subject: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class DeliveryProblem:
    """A failed or deferred delivery and the server's words."""

    email: str | None
    status: str
    attempts: int
    reply: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class CampaignDetails:
    """A campaign's summary and its failed and deferred deliveries."""

    summary: CampaignSummary
    problems: list[DeliveryProblem]
    more_problems: int  # beyond the ones listed


def _counts(session: Session, campaign_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    d = _deliveries
    counts: dict[int, dict[str, int]] = {cid: {} for cid in campaign_ids}
    for chunk in _chunks(campaign_ids):
        for campaign_id, status, count in session.execute(
            select(d.c.campaign_id, d.c.status, func.count())
            .where(d.c.campaign_id.in_(chunk))
            .group_by(d.c.campaign_id, d.c.status)
        ):
            counts[campaign_id][status] = count
    return counts


def list_campaigns(session: Session, limit: int | None = None) -> list[CampaignSummary]:
    """Every campaign, newest first, with its counts."""
    c = _campaigns
    query = select(
        c.c.id, c.c.kind, c.c.subject, c.c.status, c.c.created_at, c.c.finished_at
    ).order_by(c.c.created_at.desc(), c.c.id.desc())
    if limit:
        query = query.limit(limit)
    rows = session.execute(query).all()
    counts = _counts(session, [r.id for r in rows])
    return [CampaignSummary(*row, counts=counts[row.id]) for row in rows]


def fold_interrupted(session: Session, lock: SendLock, now: datetime) -> bool:
    """Make the counts exact before they are shown, after a sender was killed: fold in the
    journals it left and release its claims (what the next send does first), and mark sent a
    campaign with no row left to try.

    Takes the send lock only when there is a journal, and briefly. Returns False when another
    process holds it: a sender is running, which folded any leftovers when it started and
    writes its own marks as it goes, so the counts are live but a few seconds behind.
    """
    if not any(lock.directory.glob(JOURNAL_GLOB)):
        return True  # nothing left behind: the database has every mark
    try:
        lock.acquire()
    except SendInProgressError:
        return False
    try:
        recover(session, lock, now)
        c, d = _campaigns, _deliveries
        waiting = (
            select(d.c.id)
            .where(d.c.campaign_id == c.c.id, d.c.status.in_((QUEUED, DEFERRED)))
            .exists()
        )
        session.execute(
            update(c).where(c.c.status == SENDING, ~waiting).values(status=SENT, finished_at=now)
        )
        session.commit()
    finally:
        lock.release()
    return True


def describe_campaign(session: Session, campaign_id: int, limit: int = 100) -> CampaignDetails:
    """One campaign's counts and its failed and deferred deliveries with their replies."""
    c, d, s = _campaigns, _deliveries, _subscribers
    row = session.execute(
        select(c.c.id, c.c.kind, c.c.subject, c.c.status, c.c.created_at, c.c.finished_at).where(
            c.c.id == campaign_id
        )
    ).one_or_none()
    if row is None:
        raise CampaignNotFoundError(
            f"there is no campaign {campaign_id}; `newsletter campaigns` lists them"
        )
    summary = CampaignSummary(*row, counts=_counts(session, [campaign_id])[campaign_id])
    problem = d.c.campaign_id == campaign_id, d.c.status.in_((FAILED, DEFERRED))
    problems = [
        DeliveryProblem(*r)
        for r in session.execute(
            select(s.c.email, d.c.status, d.c.attempts, d.c.smtp_reply, d.c.updated_at)
            .join_from(d, s, d.c.subscriber_id == s.c.id)
            .where(*problem)
            .order_by(d.c.status.desc(), d.c.id)
            .limit(limit)
        )
    ]
    total = summary.counts.get(FAILED, 0) + summary.counts.get(DEFERRED, 0)
    return CampaignDetails(summary, problems, max(0, total - len(problems)))

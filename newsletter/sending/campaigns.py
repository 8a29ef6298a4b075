"""Running campaigns: send one, settle it, retry its failures, find the unfinished."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..models import FAILED, QUEUED, SENDING, SENT
from ..services import Services
from .engine import CampaignSender
from .lock import SendLock, recover
from .options import (
    DIGEST,
    CampaignNotFoundError,
    Progress,
    SendError,
    SendOptions,
    SendReport,
    _campaigns,
    _deliveries,
    _NoProgress,
    log,
)
from .pace import SendPace

# A delivery put back in the queue as if never tried: no retry time, no claim.
_AS_NEW = dict.fromkeys(("next_attempt_at", "deferred_since", "claimed_until", "claimed_by"))


def send_campaign(
    session: Session,
    services: Services,
    campaign_id: int,
    *,
    lock: SendLock,
    options: SendOptions | None = None,
    progress: Progress | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    pace: SendPace | None = None,
) -> SendReport:
    """Send what is left of a campaign: queued rows and deferred rows now due, and (with the
    shared lock, PostgreSQL) rows other senders held when they died. ``monotonic`` times
    leases, the rate and status checks; ``pace`` (default: ``options.rate``) spaces messages.

    Needs the send lock; folds in what an interrupted run left first. Never raises for SMTP
    trouble: a run stopped by it has ``report.error`` set and leaves the rest queued.
    """
    if not lock.held:
        raise SendError("send_campaign() needs the send lock")
    if not lock.recovered:
        # Rows a killed run delivered are still queued until its journal is folded in.
        recover(session, lock, services.clock())
    c = _campaigns
    campaign = session.execute(
        select(
            c.c.id, c.c.subject, c.c.html, c.c.text, c.c.created_at, c.c.status, c.c.content_hash
        ).where(c.c.id == campaign_id)
    ).one_or_none()
    session.commit()
    if campaign is None:
        raise CampaignNotFoundError(
            f"there is no campaign {campaign_id}; `newsletter campaigns` lists them"
        )
    if campaign.status == SENT:
        return SendReport(campaign_id=campaign_id, subject=campaign.subject, finished=True)
    sender = CampaignSender(
        session,
        services,
        campaign,
        lock,
        options or SendOptions.from_config(services.config),
        progress or _NoProgress(),
        monotonic,
        pace,
    )
    return sender.execute()


def retry_failed(session: Session, kind: str, now: datetime) -> tuple[int, int] | None:
    """Put the ``failed`` deliveries of the latest campaign of ``kind`` back in the queue (and
    the campaign back to sending), once the cause is fixed; commits. Returns (campaign id,
    deliveries moved), or None when there is no such campaign. Readers who left meanwhile
    are skipped when their turn comes, as always."""
    c, d = _campaigns, _deliveries
    latest = session.scalar(select(c.c.id).where(c.c.kind == kind).order_by(c.c.id.desc()).limit(1))
    if latest is None:
        session.rollback()
        return None
    result = session.execute(
        update(d)
        .where(d.c.campaign_id == latest, d.c.status == FAILED)
        .values(status=QUEUED, updated_at=now, **_AS_NEW)
    )
    moved = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if moved:
        session.execute(update(c).where(c.c.id == latest).values(status=SENDING, finished_at=None))
    session.commit()
    log.info("moved %d failed deliveries of campaign %d back to the queue", moved, latest)
    return latest, moved


def unfinished_campaigns(session: Session, kind: str | None = None) -> list[int]:
    """Ids of campaigns still being sent, oldest first (the order senders work them off)."""
    query = select(_campaigns.c.id).where(_campaigns.c.status == SENDING)
    if kind is not None:
        query = query.where(_campaigns.c.kind == kind)
    return list(session.scalars(query.order_by(_campaigns.c.id)))


def send_unfinished(
    session: Session,
    services: Services,
    *,
    lock: SendLock,
    kind: str | None = DIGEST,
    options: SendOptions | None = None,
    progress: Progress | None = None,
) -> list[SendReport]:
    """Send what is left of every unfinished campaign (of ``kind``), oldest first, stopping
    after one that SMTP trouble stopped. Other senders may be at it too (PostgreSQL)."""
    if not lock.recovered:
        recover(session, lock, services.clock())
    return send_each(
        session,
        services,
        unfinished_campaigns(session, kind),
        lock=lock,
        options=options,
        progress=progress,
    )


def send_each(
    session: Session,
    services: Services,
    campaign_ids: Sequence[int],
    *,
    lock: SendLock,
    options: SendOptions | None = None,
    progress: Progress | None = None,
) -> list[SendReport]:
    """Send what is left of each campaign in turn, stopping after one that SMTP trouble
    stopped (the later ones wait for the next run)."""
    reports = []
    for campaign_id in campaign_ids:
        report = send_campaign(
            session, services, campaign_id, lock=lock, options=options, progress=progress
        )
        reports.append(report)
        if report.error:
            break
    return reports

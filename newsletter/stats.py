"""List statistics from what the service already records: reader statuses, consent events and
delivery rows. Nothing here needs tracking pixels or click tracking, and none is collected."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, distinct, func, select
from sqlalchemy.orm import Session

from .bounces.figures import CampaignBounceFigures, campaign_bounce_figures
from .models import (
    CONFIRMED_EVENT,
    DEFERRED,
    FAILED,
    IMPORTED,
    QUEUED,
    REQUESTED,
    SENT,
    SKIPPED,
    WITHDRAWN,
    Campaign,
    ConsentEvent,
    Delivery,
)
from .readers import count_by_status

WEEKS = 12
CAMPAIGNS = 10
#: Weekly columns: the consent event counted in each (distinct readers per week).
WEEKLY_EVENTS = {
    "sign_ups": REQUESTED,
    "confirmed": CONFIRMED_EVENT,
    "imported": IMPORTED,
    "withdrawn": WITHDRAWN,
}
DELIVERY_STATUSES = (SENT, FAILED, DEFERRED, SKIPPED, QUEUED)


@dataclass(frozen=True)
class Week:
    """One week (Monday 00:00 UTC onwards): distinct readers with each kind of event."""

    start: datetime
    sign_ups: int
    confirmed: int
    imported: int
    withdrawn: int


@dataclass(frozen=True)
class CampaignFigures:
    """One campaign and its deliveries by status."""

    id: int
    kind: str
    subject: str
    created_at: datetime
    deliveries: dict[str, int]


@dataclass(frozen=True)
class ListStats:
    """Everything ``newsletter stats`` shows."""

    generated_at: datetime
    readers: dict[str, int]
    weeks: list[Week]
    sign_ups: int  # readers who ever asked to subscribe (form, API, CLI)
    sign_ups_confirmed: int  # of those, how many confirmed
    campaigns: list[CampaignFigures] = field(default_factory=list)
    bounces: dict[int, CampaignBounceFigures] = field(default_factory=dict)  # by campaign id

    @property
    def confirmation_rate(self) -> float | None:
        """Share of sign-ups that were confirmed, or None before the first sign-up."""
        return self.sign_ups_confirmed / self.sign_ups if self.sign_ups else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "generated_at": self.generated_at.isoformat(),
            "readers": self.readers,
            "weeks": [
                {
                    "week_of": w.start.date().isoformat(),
                    "sign_ups": w.sign_ups,
                    "confirmed": w.confirmed,
                    "imported": w.imported,
                    "withdrawn": w.withdrawn,
                }
                for w in self.weeks
            ],
            "sign_ups": self.sign_ups,
            "sign_ups_confirmed": self.sign_ups_confirmed,
            "confirmation_rate": self.confirmation_rate,
            "campaigns": [
                {
                    "id": c.id,
                    "kind": c.kind,
                    "subject": c.subject,
                    "created_at": c.created_at.isoformat(),
                    "deliveries": c.deliveries,
                    **({"bounces": self.bounces[c.id].as_dict()} if c.id in self.bounces else {}),
                }
                for c in self.campaigns
            ],
        }


def week_starts(now: datetime, weeks: int = WEEKS) -> list[datetime]:
    """Mondays 00:00 UTC of the last ``weeks`` weeks, oldest first, the current week last."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    monday = today - timedelta(days=today.weekday())
    return [monday - timedelta(weeks=n) for n in range(weeks - 1, -1, -1)]


def _weekly(session: Session, starts: list[datetime]) -> list[Week]:
    """One query: per event kind, distinct readers in each week's window."""
    bounds = [*starts, starts[-1] + timedelta(weeks=1)]
    columns = [
        func.count(
            distinct(
                case(
                    (
                        and_(
                            ConsentEvent.occurred_at >= bounds[i],
                            ConsentEvent.occurred_at < bounds[i + 1],
                        ),
                        ConsentEvent.subscriber_id,
                    )
                )
            )
        ).label(f"w{i}")
        for i in range(len(starts))
    ]
    query = (
        select(ConsentEvent.kind, *columns)
        .where(
            ConsentEvent.kind.in_(list(WEEKLY_EVENTS.values())),
            ConsentEvent.occurred_at >= bounds[0],
            ConsentEvent.occurred_at < bounds[-1],
        )
        .group_by(ConsentEvent.kind)
    )
    per_kind = {kind: counts for kind, *counts in session.execute(query)}
    zeros = [0] * len(starts)
    return [
        Week(start, **{name: per_kind.get(kind, zeros)[i] for name, kind in WEEKLY_EVENTS.items()})
        for i, start in enumerate(starts)
    ]


def _confirmation(session: Session) -> tuple[int, int]:
    """(readers who asked to subscribe, of them those who confirmed), all time."""
    asked = select(ConsentEvent.subscriber_id).where(ConsentEvent.kind == REQUESTED)
    sign_ups = (
        session.scalar(
            select(func.count(distinct(ConsentEvent.subscriber_id))).where(
                ConsentEvent.kind == REQUESTED
            )
        )
        or 0
    )
    confirmed = (
        session.scalar(
            select(func.count(distinct(ConsentEvent.subscriber_id))).where(
                ConsentEvent.kind == CONFIRMED_EVENT, ConsentEvent.subscriber_id.in_(asked)
            )
        )
        or 0
    )
    return sign_ups, confirmed


def _campaigns(session: Session, limit: int) -> list[CampaignFigures]:
    recent = session.execute(
        select(Campaign.id, Campaign.kind, Campaign.subject, Campaign.created_at)
        .order_by(Campaign.created_at.desc(), Campaign.id.desc())
        .limit(limit)
    ).all()
    counts: dict[int, dict[str, int]] = {
        row.id: dict.fromkeys(DELIVERY_STATUSES, 0) for row in recent
    }
    if recent:
        for campaign_id, status, number in session.execute(
            select(Delivery.campaign_id, Delivery.status, func.count())
            .where(Delivery.campaign_id.in_(list(counts)))
            .group_by(Delivery.campaign_id, Delivery.status)
        ):
            counts[campaign_id][status] = number
    return [
        CampaignFigures(row.id, row.kind, row.subject, row.created_at, counts[row.id])
        for row in recent
    ]


def list_stats(
    session: Session,
    now: datetime,
    *,
    weeks: int = WEEKS,
    campaigns: int = CAMPAIGNS,
    config: Mapping[str, Any] | None = None,
) -> ListStats:
    """Readers by status, the last ``weeks`` weeks of sign-ups, confirmations and withdrawals,
    the confirmation rate of sign-ups and the last ``campaigns`` campaigns' delivery counts
    with their bounce and complaint figures (warning thresholds from ``config``)."""
    sign_ups, confirmed = _confirmation(session)
    recent = _campaigns(session, campaigns)
    return ListStats(
        generated_at=now,
        readers=count_by_status(session),
        weeks=_weekly(session, week_starts(now, weeks)),
        sign_ups=sign_ups,
        sign_ups_confirmed=confirmed,
        campaigns=recent,
        bounces=campaign_bounce_figures(session, [c.id for c in recent], config),
    )


def format_stats(stats: ListStats) -> str:
    """The figures as plain text for a terminal."""
    lines = ["Readers"]
    total = sum(stats.readers.values())
    for status, number in stats.readers.items():
        lines.append(f"  {status:<14}{number:>8}")
    lines.append(f"  {'total':<14}{total:>8}")
    lines += [
        "",
        f"Last {len(stats.weeks)} weeks (week of, UTC)",
        f"  {'week of':<12}{'sign-ups':>10}{'confirmed':>11}{'imported':>10}{'withdrawn':>11}",
    ]
    for week in stats.weeks:
        lines.append(
            f"  {week.start.date().isoformat():<12}{week.sign_ups:>10}"
            f"{week.confirmed:>11}{week.imported:>10}{week.withdrawn:>11}"
        )
    rate = stats.confirmation_rate
    lines += [
        "",
        "Confirmation rate of sign-ups: "
        + (
            f"{rate:.0%} ({stats.sign_ups_confirmed} of {stats.sign_ups} confirmed)"
            if rate is not None
            else "no sign-ups yet"
        ),
    ]
    lines += ["", "Last campaigns"]
    if not stats.campaigns:
        lines.append("  none yet")
    else:
        lines.append(
            f"  {'id':>4}  {'date':<10}  {'kind':<12}"
            + "".join(f"{status:>9}" for status in DELIVERY_STATUSES)
            + "  subject"
        )
        for c in stats.campaigns:
            subject = c.subject if len(c.subject) <= 50 else c.subject[:49] + "…"
            lines.append(
                f"  {c.id:>4}  {c.created_at.date().isoformat():<10}  {c.kind:<12}"
                + "".join(f"{c.deliveries[s]:>9}" for s in DELIVERY_STATUSES)
                + f"  {subject}"
            )
    lines += _bounce_lines(stats)
    lines += ["", "No tracking pixels or click tracking: opens and clicks are not measured."]
    return "\n".join(lines)


def _bounce_lines(stats: ListStats) -> list[str]:
    """Bounces and complaints per recent campaign (rates over the messages sent), then the
    warnings past the thresholds, each naming what to do."""
    if not stats.campaigns:
        return []
    lines = [
        "",
        "Bounces and complaints (readers, rates of those sent)",
        f"  {'id':>4}{'sent':>9}{'hard':>7}{'rate':>8}{'soft':>7}{'complaints':>12}{'rate':>8}",
    ]
    warnings = []
    for c in stats.campaigns:
        b = stats.bounces.get(c.id) or CampaignBounceFigures(c.id)
        lines.append(
            f"  {c.id:>4}{b.sent:>9}{b.hard_bounces:>7}{b.hard_bounce_rate:>8.2%}"
            f"{b.soft_bounces:>7}{b.complaints:>12}{b.complaint_rate:>8.2%}"
        )
        warnings += [f"  Campaign {c.id}: {warning}" for warning in b.warnings]
    return lines + (["", "Warnings", *warnings] if warnings else [])

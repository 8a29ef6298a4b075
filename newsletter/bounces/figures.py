"""Bounce and complaint figures per campaign, and the warnings they call for. ``campaigns
show``, ``stats`` and the dashboard print these (see the README's "Bounces and complaints")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..models import SENT, BounceRecord, Delivery
from .classify import COMPLAINT, HARD, SOFT

# Gmail and Yahoo require bulk senders to stay under 0.3% complaints; warn well before.
DEFAULT_COMPLAINT_RATE_WARNING = 0.001
DEFAULT_HARD_BOUNCE_RATE_WARNING = 0.02
# Past these a sender is being (or about to be) blocked: `newsletter doctor` says PROBLEM.
COMPLAINT_RATE_PROBLEM = 0.003
HARD_BOUNCE_RATE_PROBLEM = 0.05


def bounce_processing_enabled(config: Mapping[str, Any]) -> bool:
    """Whether bounces reach the newsletter: a bounce mailbox or a provider webhook is set."""
    return bool(
        config.get("BOUNCE_MAILBOX")
        or config.get("SES_TOPIC_ARNS")
        or config.get("MAILGUN_SIGNING_KEY")
        or config.get("POSTMARK_WEBHOOK_USER")
    )


def last_campaign_figures(
    session: Session, config: Mapping[str, Any]
) -> CampaignBounceFigures | None:
    """The figures of the newest campaign that reached anyone; None before the first."""
    newest = session.scalar(
        select(Delivery.campaign_id)
        .where(Delivery.status == SENT)
        .order_by(Delivery.campaign_id.desc())
        .limit(1)
    )
    if newest is None:
        return None
    return campaign_bounce_figures(session, [newest], config)[newest]


@dataclass
class CampaignBounceFigures:
    """One campaign's counts (distinct readers) and rates over the messages the server took."""

    campaign_id: int
    sent: int = 0
    hard_bounces: int = 0
    soft_bounces: int = 0
    complaints: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def hard_bounce_rate(self) -> float:
        return self.hard_bounces / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    def summary(self) -> str:
        """One line: ``hard bounces 3 (1.50%), soft bounces 1, complaints 0 (0.00%)``."""
        return (
            f"hard bounces {self.hard_bounces:,} ({self.hard_bounce_rate:.2%}), "
            f"soft bounces {self.soft_bounces:,}, "
            f"complaints {self.complaints:,} ({self.complaint_rate:.2%})"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counts, rates and warnings."""
        return {
            "sent": self.sent,
            "hard_bounces": self.hard_bounces,
            "soft_bounces": self.soft_bounces,
            "complaints": self.complaints,
            "hard_bounce_rate": self.hard_bounce_rate,
            "complaint_rate": self.complaint_rate,
            "warnings": list(self.warnings),
        }


def campaign_bounce_figures(
    session: Session, campaign_ids: Iterable[int], config: Mapping[str, Any] | None = None
) -> dict[int, CampaignBounceFigures]:
    """Figures for each campaign in ``campaign_ids``, with warnings past the thresholds
    (NEWSLETTER_COMPLAINT_RATE_WARNING, NEWSLETTER_HARD_BOUNCE_RATE_WARNING)."""
    ids = list(campaign_ids)
    figures = {cid: CampaignBounceFigures(cid) for cid in ids}
    if not ids:
        return figures
    for cid, sent in session.execute(
        select(Delivery.campaign_id, func.count())
        .where(Delivery.campaign_id.in_(ids), Delivery.status == SENT)
        .group_by(Delivery.campaign_id)
    ):
        figures[cid].sent = int(sent or 0)
    for campaign, kind, readers in session.execute(
        select(
            BounceRecord.campaign_id,
            BounceRecord.kind,
            func.count(func.distinct(BounceRecord.subscriber_id)),
        )
        .where(BounceRecord.campaign_id.in_(ids))
        .group_by(BounceRecord.campaign_id, BounceRecord.kind)
    ):
        if campaign is None:
            continue
        if kind == HARD:
            figures[campaign].hard_bounces = readers
        elif kind == SOFT:
            figures[campaign].soft_bounces = readers
        elif kind == COMPLAINT:
            figures[campaign].complaints = readers
    settings = config or {}
    complaint_limit = settings.get("COMPLAINT_RATE_WARNING", DEFAULT_COMPLAINT_RATE_WARNING)
    bounce_limit = settings.get("HARD_BOUNCE_RATE_WARNING", DEFAULT_HARD_BOUNCE_RATE_WARNING)
    for item in figures.values():
        item.warnings = bounce_warnings(item, complaint_limit, bounce_limit)
    return figures


def bounce_warnings(
    figures: CampaignBounceFigures, complaint_limit: float, bounce_limit: float
) -> list[str]:
    """The warnings for one campaign's figures, each naming what to do."""
    warnings = []
    if figures.complaint_rate > complaint_limit:
        warnings.append(
            f"Complaint rate {figures.complaint_rate:.2%} is over {complaint_limit:.2%}: Gmail "
            "and Yahoo block senders over 0.3%. Check the sign-up form for abuse (sign-ups the "
            "readers did not make), stop mailing any old imported segment, and make the "
            "unsubscribe link easy to find."
        )
    if figures.hard_bounce_rate > bounce_limit:
        warnings.append(
            f"Hard-bounce rate {figures.hard_bounce_rate:.2%} is over {bounce_limit:.2%}: "
            "providers suspend senders with many bounces. Remove old imported segments (the "
            "bounced readers are already suppressed) and check the sign-up form for abuse."
        )
    return warnings

"""Shared by the bounce tests: fixtures on disk, readers and campaigns in the database."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from newsletter.models import CONFIRMED, SENT, Campaign, Delivery, Subscriber

SAMPLES = Path(__file__).parent / "data" / "bounces"


def sample(name: str, verp: str = "", rcpt: str = "") -> bytes:
    """A fixture's bytes, with ``{verp}`` and ``{rcpt}`` filled in for the written ones."""
    raw = (SAMPLES / name).read_bytes()
    if name.startswith("flufl_"):
        return raw
    return raw.replace(b"{verp}", verp.encode()).replace(b"{rcpt}", rcpt.encode())


def add_reader(session: Session, email: str, now: datetime, status: str = CONFIRMED) -> int:
    reader = Subscriber(
        email=email,
        status=status,
        token_generation=0,
        created_at=now,
        updated_at=now,
        confirmed_at=now,
    )
    session.add(reader)
    session.commit()
    return reader.id


def add_campaign(session: Session, now: datetime, subject: str = "New on Calm Corner") -> int:
    campaign = Campaign(
        kind="digest",
        subject=subject,
        content_hash=subject,
        status="sent",
        created_at=now,
        html="<p>hi</p>",
        text="hi",
    )
    session.add(campaign)
    session.commit()
    return campaign.id


def add_delivery(
    session: Session, campaign_id: int, subscriber_id: int, now: datetime, status: str = SENT
) -> None:
    session.add(
        Delivery(
            campaign_id=campaign_id,
            subscriber_id=subscriber_id,
            status=status,
            attempts=1,
            updated_at=now,
        )
    )
    session.commit()

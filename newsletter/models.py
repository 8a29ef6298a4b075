"""Tables. Consent events are append-only; subscribers change status and are never deleted
(erasure blanks their personal data and keeps a keyed hash in ``suppressions``)."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import Base, UTCDateTime

# Subscriber statuses.
PENDING = "pending"
CONFIRMED = "confirmed"
UNSUBSCRIBED = "unsubscribed"
ERASED = "erased"
# Mail to the address bounced for good: suppressed from every later send until a fresh
# subscribe and confirm (a new consent).
BOUNCED = "bounced"
SUBSCRIBER_STATUSES = (PENDING, CONFIRMED, UNSUBSCRIBED, ERASED, BOUNCED)

# Consent event kinds.
REQUESTED = "requested"
CONFIRMATION_SENT = "confirmation_sent"
CONFIRMED_EVENT = "confirmed"
WITHDRAWN = "withdrawn"
IMPORTED = "imported"
ERASED_EVENT = "erased"
BOUNCED_EVENT = "bounced"  # a hard bounce, or too many soft ones: the note holds the diagnostic
COMPLAINED = "complained"  # the reader marked an email as spam: unsubscribed for good

# Delivery statuses (campaign deliveries) and outbox statuses (transactional emails).
QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
DEFERRED = "deferred"
SKIPPED = "skipped"


def new_link_key() -> str:
    """A reader's random link key (64 bits, hex): confirm links carry it."""
    return secrets.token_hex(8)


class Subscriber(Base):
    """A reader. ``email`` is normalised (domain lower-cased, IDNA) and NULL once erased."""

    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    # Bumped when a reader leaves (unsubscribe) and by erasure: confirm links carry it, so links
    # sent before stop working, while unsubscribe links (which do not carry it) keep working.
    # A new sign-up request never bumps it: every link sent while pending stays good.
    token_generation: Mapped[int] = mapped_column(Integer, default=0)
    # Random per reader and never reused, unlike ``id`` (SQLite gives a purged reader's id to
    # the next sign-up): a confirm link must match it, so it can never confirm someone else.
    # NULL only in rows written by hand; such a reader gets a key with their next link.
    link_key: Mapped[str | None] = mapped_column(String(16), default=new_link_key)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    events: Mapped[list[ConsentEvent]] = relationship(
        back_populates="subscriber", order_by="ConsentEvent.id"
    )


class ConsentEvent(Base):
    """One step of consent, as proof: who, when, from where, how, and the exact words shown."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    method: Mapped[str] = mapped_column(String(16))  # form, api, one-click, cli, import, system
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    source_url: Mapped[str | None] = mapped_column(String(2048))
    # Stored by value: changing the configured text later never changes older events.
    consent_text: Mapped[str | None] = mapped_column(Text)
    privacy_policy_url: Mapped[str | None] = mapped_column(String(2048))
    note: Mapped[str | None] = mapped_column(Text)

    subscriber: Mapped[Subscriber] = relationship(back_populates="events")


class OutboxEmail(Base):
    """A transactional email (confirmation, welcome), written in the same transaction as the
    change that causes it and sent by whoever claims it first."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str | None] = mapped_column(String(320))
    message: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)


class RateLimitWindow(Base):
    """A fixed-window counter, shared by every process that uses the database."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class Suppression(Base):
    """A keyed hash (HMAC) of an erased address, so imports refuse it without keeping it."""

    __tablename__ = "suppressions"

    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Post(Base):
    """A blog post synced from the feed or the Markdown folder."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    source_key: Mapped[str] = mapped_column(String(1024), unique=True)
    url: Mapped[str | None] = mapped_column(String(2048))
    title: Mapped[str] = mapped_column(String(1024))
    subtitle: Mapped[str | None] = mapped_column(String(1024))
    author: Mapped[str | None] = mapped_column(String(512))
    summary: Mapped[str | None] = mapped_column(Text)
    content_html: Mapped[str | None] = mapped_column(Text)
    image_url: Mapped[str | None] = mapped_column(String(2048))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    content_hash: Mapped[str] = mapped_column(String(64))
    draft: Mapped[bool] = mapped_column(default=False)
    # Published before this install's first sync: never mailed (unless backfilled).
    archived: Mapped[bool] = mapped_column(default=False)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"), index=True)


class SourceState(Base):
    """What the last fetch of a post source left behind: validators for conditional GET."""

    __tablename__ = "source_state"

    source: Mapped[str] = mapped_column(String(2048), primary_key=True)
    etag: Mapped[str | None] = mapped_column(String(512))
    last_modified: Mapped[str | None] = mapped_column(String(128))
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Campaign(Base):
    """Something sent to the whole list: a digest of posts or a one-off announcement."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # digest, announcement
    subject: Mapped[str] = mapped_column(String(998))
    preheader: Mapped[str | None] = mapped_column(String(998))
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))  # sending, sent
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)


class Delivery(Base):
    """One campaign to one reader: the ledger row that makes sending exact.

    ``queued`` → ``sent`` (after the server's 250) | ``failed`` (5xx, or 4xx past the give-up
    age) | ``deferred`` (4xx; retried from ``next_attempt_at``) | ``skipped`` (the reader left
    first). A sender claims a batch by setting ``claimed_until`` and ``claimed_by`` and renews
    the lease while it lives; a claim past that time is abandoned and any sender may take the
    rows again.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("campaign_id", "subscriber_id"),
        # Senders walk one campaign's queued rows in id order (keyset pagination).
        Index("ix_deliveries_campaign_status", "campaign_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    # When the first 4xx came: a delivery still deferred this long after is given up.
    deferred_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Which sender holds the claim ("host:pid:token"): it renews only its own claims, and the
    # next sender on that host releases them at once if that process died.
    claimed_by: Mapped[str | None] = mapped_column(String(100))


class BounceRecord(Base):
    """One bounce or complaint as it arrived (DSN, feedback report or provider event): the
    evidence behind a reader's ``bounced`` or ``complained`` event, and what soft bounces and
    per-campaign rates are counted from. ``kind`` is ``hard``, ``soft`` or ``complaint``."""

    __tablename__ = "bounce_records"
    __table_args__ = (Index("ix_bounce_records_subscriber_time", "subscriber_id", "occurred_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"))
    # NULL for transactional emails (confirmation, welcome) and when nothing names a campaign.
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))  # mailbox, ses, mailgun, postmark
    status_code: Mapped[str | None] = mapped_column(String(16))
    diagnostic: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookReplay(Base):
    """An id (SNS MessageId, Mailgun token, Postmark event id) already accepted: a request that
    repeats it within the freshness window is a replay and refused."""

    __tablename__ = "webhook_replays"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

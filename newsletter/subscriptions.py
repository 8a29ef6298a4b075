"""Subscribe, confirm and unsubscribe: plain functions over a database session, with every
consent step appended to the ledger. Web and CLI call these; they never touch HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import outbox, transactional
from .addresses import address_hash, normalise_address
from .errors import NewsletterError
from .models import (
    CONFIRMED,
    CONFIRMED_EVENT,
    ERASED,
    PENDING,
    REQUESTED,
    UNSUBSCRIBED,
    WITHDRAWN,
    ConsentEvent,
    Subscriber,
    new_link_key,
)
from .services import Services
from .tokens import ConfirmClaim, ExpiredTokenError, InvalidTokenError

METHODS = ("form", "api", "one-click", "cli", "import", "system")


@dataclass(frozen=True)
class RequestInfo:
    """Where a consent step came from: recorded on its event as proof."""

    method: str
    ip: str | None = None
    user_agent: str | None = None
    source_url: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown consent method {self.method!r}")


@dataclass(frozen=True)
class SubscribeOutcome:
    """What a subscribe request did. Callers must answer the same whatever it says, so that
    nobody can learn who is subscribed; it exists for logs and tests."""

    subscriber_id: int
    status: str
    confirmation_queued: bool
    outbox_ids: tuple[int, ...] = ()


class ReaderNotFoundError(NewsletterError):
    """No such reader (or the link points at a reader that was erased)."""


def _event_values(kind: str, info: RequestInfo, now: datetime) -> dict[str, Any]:
    return {
        "kind": kind,
        "occurred_at": now,
        "method": info.method,
        "ip": _clip(info.ip, 64),
        "user_agent": _clip(info.user_agent, 512),
        "source_url": _clip(info.source_url, 2048),
    }


def _event(
    subscriber: Subscriber, kind: str, info: RequestInfo, now: datetime, **extra: Any
) -> ConsentEvent:
    event = ConsentEvent(**_event_values(kind, info, now), **extra)
    subscriber.events.append(event)
    return event


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value else None


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    """The reader with this address (any case), or None."""
    return session.scalar(select(Subscriber).where(Subscriber.email == normalise_address(email)))


def subscribe(
    session: Session, services: Services, email: str, *, name: str | None, info: RequestInfo
) -> SubscribeOutcome:
    """Record a subscribe request and queue a confirmation email, in one transaction.

    Raises InvalidAddressError for a bad address. A confirmed reader stays confirmed; an
    unsubscribed one starts double opt-in again. Per-address limits hold back the email. A
    request never voids a confirm link already sent (with or without an email of its own):
    otherwise anyone could keep a reader from confirming by signing them up again and again.
    """
    address = normalise_address(email)
    name = (name or "").strip()[:200] or None
    try:
        return _subscribe(session, services, address, name, info)
    except IntegrityError:
        # Another request added this address between our look-up and our insert: the reader
        # exists now, so the second attempt takes the "already here" path.
        session.rollback()
        return _subscribe(session, services, address, name, info)


# The web's hottest path is a handful of statements built once, with bound parameters, and
# run on the session's connection: no ORM objects and no statement building per request.
_FIND_FOR_SIGN_UP = (
    select(Subscriber.id, Subscriber.status, Subscriber.token_generation, Subscriber.link_key)
    .where(Subscriber.email == bindparam("email"))
    .with_for_update()
)
_ADD_READER = insert(Subscriber).returning(Subscriber.id)
_RENEW_REQUEST = (
    update(Subscriber)
    .where(Subscriber.id == bindparam("sid"))
    .values(
        status=PENDING,
        updated_at=bindparam("now"),
        link_key=func.coalesce(Subscriber.link_key, bindparam("new_key")),
        name=func.coalesce(bindparam("new_name"), Subscriber.name),
    )
)
_ADD_EVENT = insert(ConsentEvent)


def _subscribe(
    session: Session, services: Services, address: str, name: str | None, info: RequestInfo
) -> SubscribeOutcome:
    config = services.config
    now = services.clock()
    connection = session.connection()
    # FOR UPDATE serialises concurrent requests for one address on PostgreSQL (SQLite
    # serialises writers anyway), so the per-address email limits cannot be raced.
    found = connection.execute(_FIND_FOR_SIGN_UP, {"email": address}).first()
    if found is None:
        generation, key = 1, new_link_key()
        subscriber_id = connection.execute(
            _ADD_READER,
            {
                "email": address,
                "name": name,
                "status": PENDING,
                "token_generation": generation,
                "link_key": key,
                "created_at": now,
                "updated_at": now,
            },
        ).scalar_one()
    elif found.status == CONFIRMED:
        # Nothing to do, and nothing to tell: the answer must not reveal the reader is here.
        session.commit()
        return SubscribeOutcome(found.id, CONFIRMED, confirmation_queued=False)
    else:
        # The generation stays: links sent while pending keep working. (Leaving bumped it, so
        # links sent before an unsubscribe stay void.)
        subscriber_id, generation = found.id, found.token_generation
        key = found.link_key or new_link_key()
        connection.execute(
            _RENEW_REQUEST, {"sid": subscriber_id, "now": now, "new_name": name, "new_key": key}
        )
    connection.execute(
        _ADD_EVENT,
        {
            "subscriber_id": subscriber_id,
            **_event_values(REQUESTED, info, now),
            "consent_text": config["CONSENT_TEXT"],
            "privacy_policy_url": config.get("PRIVACY_POLICY_URL"),
            "note": None,
        },
    )
    queued = _queue_confirmation(session, services, subscriber_id, address, generation, key, now)
    session.commit()
    return SubscribeOutcome(subscriber_id, PENDING, queued is not None, (queued,) if queued else ())


def confirmation_allowed(
    session: Session, services: Services, subscriber_id: int, now: datetime
) -> bool:
    """At most one confirmation email per address per interval and a few a day, whoever asks."""
    config = services.config
    interval = timedelta(seconds=config["CONFIRMATION_MIN_INTERVAL"])
    recent, today = outbox.recent_counts(
        session, subscriber_id, outbox.CONFIRMATION, now - interval, now - timedelta(days=1)
    )
    return not (interval and recent) and today < config["CONFIRMATIONS_PER_DAY"]


def _queue_confirmation(
    session: Session,
    services: Services,
    subscriber_id: int,
    address: str,
    generation: int,
    key: str,
    now: datetime,
) -> int | None:
    """Queue the confirmation email within the per-address limits; returns its outbox id."""
    if not confirmation_allowed(session, services, subscriber_id, now):
        return None
    token = services.tokens.confirm_token(subscriber_id, generation, key)
    confirm_url = services.public_url(f"confirm/{token}")
    message = transactional.confirmation_message(services, address, confirm_url, now)
    return outbox.queue_email_row(
        session,
        subscriber_id=subscriber_id,
        kind=outbox.CONFIRMATION,
        recipient=address,
        message=message,
        now=now,
    )


def resend_confirmation(
    session: Session, services: Services, expired: ExpiredTokenError, info: RequestInfo
) -> bool:
    """Send a fresh confirm link for an expired one, if the reader is still pending and the
    per-address limits allow. Returns whether an email was queued."""
    subscriber = session.get(Subscriber, expired.subscriber_id)
    claim = ConfirmClaim(expired.subscriber_id, expired.generation, expired.key, expired.issued_at)
    if subscriber is None or subscriber.status != PENDING or not _names(claim, subscriber):
        return False
    if subscriber.token_generation != expired.generation:
        return False  # the reader left (or was erased) since that link was made
    now = services.clock()
    subscriber.updated_at = now
    if not queue_confirmation(session, services, subscriber, now):
        session.rollback()
        return False
    session.commit()
    return True


def _names(claim: ConfirmClaim, subscriber: Subscriber) -> bool:
    """Whether a confirm link was made for this very reader, not an earlier holder of the id."""
    if claim.key is not None:
        return claim.key == subscriber.link_key
    # A link from before link keys: good only for a reader that existed when it was made (a
    # purged reader's id goes to a later sign-up). Its time is in whole seconds.
    return claim.issued_at is not None and (
        subscriber.created_at < claim.issued_at + timedelta(seconds=1)
    )


def check_confirm_link(session: Session, services: Services, token: str) -> Subscriber:
    """The reader a confirm link would confirm (or has confirmed), changing nothing.

    Raises InvalidTokenError (tampered, made for a reader who left, was erased or purged) or
    ExpiredTokenError, as :func:`confirm` would.
    """
    claim = services.tokens.read_confirm_token(token)
    subscriber = session.get(Subscriber, claim.subscriber_id)
    if subscriber is None or subscriber.status == ERASED or not _names(claim, subscriber):
        raise InvalidTokenError("This link is not valid any more.")
    if subscriber.status != CONFIRMED and (
        subscriber.status != PENDING or subscriber.token_generation != claim.generation
    ):
        raise InvalidTokenError("This link has been replaced by a newer one.")
    return subscriber


def confirm(session: Session, services: Services, token: str, info: RequestInfo) -> Subscriber:
    """Confirm the subscription a confirm token names; idempotent for a confirmed reader.

    Raises InvalidTokenError (tampered, or superseded by a newer request) or ExpiredTokenError.
    """
    claim = services.tokens.read_confirm_token(token)
    now = services.clock()
    # One conditional UPDATE, before anything is read: of two clicks at once exactly one
    # changes the row (the other waits for it, then finds the reader confirmed), so the
    # confirmation, its event and the welcome email happen once.
    changed = session.execute(
        update(Subscriber)
        .where(
            Subscriber.id == claim.subscriber_id,
            Subscriber.status == PENDING,
            Subscriber.token_generation == claim.generation,
        )
        .values(status=CONFIRMED, confirmed_at=now, unsubscribed_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    subscriber = session.get(Subscriber, claim.subscriber_id, populate_existing=True)
    if subscriber is None or subscriber.status == ERASED or not _names(claim, subscriber):
        session.rollback()  # the id now belongs to someone else (or to nobody)
        raise InvalidTokenError("This link is not valid any more.")
    if not changed:
        if subscriber.status == CONFIRMED:
            session.commit()  # nothing changed; ends the transaction the UPDATE began
            return subscriber  # a double click, or an older link of a confirmed reader
        session.rollback()
        raise InvalidTokenError("This link has been replaced by a newer one.")
    _event(subscriber, CONFIRMED_EVENT, info, now)
    if services.config["WELCOME_EMAIL"]:
        _queue_welcome(session, services, subscriber, now)
    session.commit()
    return subscriber


def _queue_welcome(
    session: Session, services: Services, subscriber: Subscriber, now: datetime
) -> None:
    unsubscribe_url = services.public_url(
        f"unsubscribe/{services.tokens.unsubscribe_token(subscriber.id)}"
    )
    message = transactional.welcome_message(services, subscriber.email or "", unsubscribe_url, now)
    outbox.queue_email(
        session,
        subscriber_id=subscriber.id,
        kind=outbox.WELCOME,
        recipient=subscriber.email or "",
        message=message,
        now=now,
    )


def unsubscribe(
    session: Session, services: Services, subscriber_id: int, info: RequestInfo
) -> Subscriber:
    """Withdraw consent; idempotent, and a no-op for an erased reader. Raises
    ReaderNotFoundError for an
    unknown reader."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise ReaderNotFoundError("No subscription matches this link.")
    if subscriber.status in (UNSUBSCRIBED, ERASED):
        # An erased reader gets nothing any more: the link in an old email still says so,
        # and records nothing (an event would hold personal data again).
        return subscriber
    now = services.clock()
    subscriber.status = UNSUBSCRIBED
    subscriber.unsubscribed_at = now
    subscriber.updated_at = now
    # Void any confirm link still in an inbox.
    subscriber.token_generation += 1
    _event(subscriber, WITHDRAWN, info, now)
    session.commit()
    return subscriber


def is_suppressed(session: Session, services: Services, address: str) -> bool:
    """Whether an (erased) address is on the suppression list."""
    from .models import Suppression

    digest = address_hash(services.config["SECRET_KEY"], normalise_address(address))
    return session.get(Suppression, digest) is not None


def describe(session: Session, subscriber: Subscriber) -> dict[str, Any]:
    """Everything held about one reader, as JSON-ready data: status, consent history, every
    campaign delivery and every transactional email (a GDPR access request's answer)."""
    from .models import Campaign, Delivery, OutboxEmail

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    deliveries = session.execute(
        select(
            Delivery.campaign_id,
            Campaign.kind,
            Campaign.subject,
            Campaign.created_at,
            Delivery.status,
        )
        .join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(Delivery.subscriber_id == subscriber.id)
        .order_by(Delivery.id)
    )
    emails = session.execute(
        select(OutboxEmail.kind, OutboxEmail.status, OutboxEmail.created_at, OutboxEmail.sent_at)
        .where(OutboxEmail.subscriber_id == subscriber.id)
        .order_by(OutboxEmail.id)
    )

    return {
        "id": subscriber.id,
        "email": subscriber.email,
        "name": subscriber.name,
        "status": subscriber.status,
        "created_at": when(subscriber.created_at),
        "confirmed_at": when(subscriber.confirmed_at),
        "unsubscribed_at": when(subscriber.unsubscribed_at),
        "events": [
            {
                "kind": e.kind,
                "at": when(e.occurred_at),
                "method": e.method,
                "ip": e.ip,
                "user_agent": e.user_agent,
                "source_url": e.source_url,
                "consent_text": e.consent_text,
                "privacy_policy_url": e.privacy_policy_url,
                "note": e.note,
            }
            # In time order: an import's event carries the consent's own (earlier) date.
            for e in sorted(subscriber.events, key=lambda e: (e.occurred_at, e.id))
        ],
        "deliveries": [
            {
                "campaign_id": campaign_id,
                "kind": kind,
                "subject": subject,
                "campaign_created_at": when(created),
                "status": status,
            }
            for campaign_id, kind, subject, created, status in deliveries
        ],
        "emails": [
            {"kind": kind, "status": status, "queued_at": when(queued), "sent_at": when(sent)}
            for kind, status, queued, sent in emails
        ],
    }


def queue_confirmation(
    session: Session, services: Services, subscriber: Subscriber, now: datetime
) -> bool:
    """Queue the double-opt-in email for a pending reader the author added (import, CLI), within
    the per-address limits; returns whether it was queued. The caller commits."""
    subscriber.link_key = subscriber.link_key or new_link_key()
    session.flush()
    return (
        _queue_confirmation(
            session,
            services,
            subscriber.id,
            subscriber.email or "",
            subscriber.token_generation,
            subscriber.link_key,
            now,
        )
        is not None
    )

"""Provider webhooks: authenticate each request as the provider documents, refuse stale and
replayed ones, and turn the events into :class:`~newsletter.bounces.rules.Outcome` s.

- Amazon SES through SNS: the SNS message signature (SignatureVersion 1, SHA1withRSA, or 2,
  SHA256withRSA) over the documented canonical string, with the signing certificate fetched
  only over https from an ``sns.<region>.amazonaws.com`` host, and cached; only the topics in
  NEWSLETTER_SES_TOPIC_ARNS are accepted; a SubscriptionConfirmation is confirmed by fetching
  its SubscribeURL (same host rule).
- Mailgun: HMAC-SHA256 of timestamp + token with the webhook signing key.
- Postmark: HTTP basic auth with the credentials configured here and in Postmark.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..addresses import InvalidAddressError, normalise_address
from ..errors import NewsletterError
from ..models import Subscriber, WebhookReplay
from .classify import COMPLAINT, HARD, SOFT
from .rules import Outcome, apply_outcome
from .verp import InvalidVerpError, claim_from_address

SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
CertificateFetcher = Callable[[str], bytes]


class WebhookRefusedError(NewsletterError):
    """A request that is not authentic, fresh and new; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Event:
    """One provider event about one address."""

    address: str
    kind: str  # hard, soft, complaint
    status_code: str | None = None
    diagnostic: str | None = None
    envelope_sender: str | None = None


def fetch_https(url: str, timeout: float = 10.0) -> bytes:
    """GET ``url`` (the default certificate and SubscribeURL fetcher)."""
    from urllib.request import urlopen

    with urlopen(url, timeout=timeout) as response:  # noqa: S310 - https only, host checked
        return bytes(response.read(256 * 1024))


def check_sns_url(url: str) -> None:
    """Refuse any URL but https on an SNS host, before anything is fetched."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not SNS_HOST.match(parts.hostname or "") or parts.port:
        raise WebhookRefusedError(
            403, "signing certificate or subscribe URL is not on an sns.<region>.amazonaws.com host"
        )


_SNS_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _SNS_CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _SNS_CONFIRMATION_FIELDS,
}


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The canonical string SNS signs: each present field's name and value, one a line."""
    fields = _SNS_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise WebhookRefusedError(400, "unknown SNS message type")
    out = []
    for name in fields:
        if name == "Subject" and message.get(name) is None:
            continue
        if not isinstance(message.get(name), str):
            raise WebhookRefusedError(400, f"SNS message without {name}")
        out.append(f"{name}\n{message[name]}\n")
    return "".join(out).encode()


def _parse_time(value: Any) -> datetime:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise WebhookRefusedError(400, "unreadable timestamp") from None
    if when.tzinfo is None:
        raise WebhookRefusedError(400, "timestamp without a time zone")
    return when


def check_fresh(when: datetime, now: datetime, max_age: float) -> None:
    """Refuse a request signed too long ago (or too far in the future)."""
    if abs((now - when).total_seconds()) > max_age:
        raise WebhookRefusedError(403, "stale timestamp: refused")


def remember_once(session: Session, key: str, now: datetime, max_age: float) -> None:
    """Record ``key`` as seen, refusing it if it was seen within the freshness window (a
    replay); older keys are forgotten, since a stale request is refused anyway."""
    session.execute(
        delete(WebhookReplay).where(WebhookReplay.seen_at < now - timedelta(seconds=2 * max_age))
    )
    if session.get(WebhookReplay, key[:200]) is not None:
        session.rollback()
        raise WebhookRefusedError(403, "replayed request: refused")
    session.add(WebhookReplay(key=key[:200], seen_at=now))
    try:
        session.commit()
    except IntegrityError:  # the same request twice at once: the other one won
        session.rollback()
        raise WebhookRefusedError(403, "replayed request: refused") from None


def verify_sns(
    message: Mapping[str, Any],
    config: Mapping[str, Any],
    now: datetime,
    fetch: CertificateFetcher,
    cache: dict[str, Any],
) -> None:
    """Check an SNS message's topic, freshness and signature; raise
    :class:`WebhookRefusedError` if one fails."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if message.get("TopicArn") not in config["SES_TOPIC_ARNS"]:
        raise WebhookRefusedError(403, "topic not in NEWSLETTER_SES_TOPIC_ARNS: refused")
    version = str(message.get("SignatureVersion"))
    algorithm = {"1": hashes.SHA1, "2": hashes.SHA256}.get(version)
    if algorithm is None:
        raise WebhookRefusedError(400, "unknown SNS SignatureVersion")
    cert_url = str(message.get("SigningCertURL") or message.get("SigningCertUrl") or "")
    check_sns_url(cert_url)
    string_to_sign = sns_string_to_sign(message)
    check_fresh(_parse_time(message.get("Timestamp")), now, config["WEBHOOK_MAX_AGE"])
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except ValueError:
        raise WebhookRefusedError(403, "bad signature") from None
    key = cache.get(cert_url)
    if key is None:
        try:
            pem = fetch(cert_url)
        except OSError as err:
            # Amazon unreachable for a moment: a 5xx makes SNS deliver the message again later.
            raise WebhookRefusedError(
                502, f"cannot fetch the SNS signing certificate: {err}"
            ) from err
        try:
            certificate = x509.load_pem_x509_certificate(pem)
        except ValueError as err:
            raise WebhookRefusedError(
                400, f"cannot load the SNS signing certificate: {err}"
            ) from err
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise WebhookRefusedError(400, "the SNS signing certificate has no RSA key")
        cache[cert_url] = key
    try:
        key.verify(signature, string_to_sign, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise WebhookRefusedError(403, "bad signature") from None


def ses_events(notification: Mapping[str, Any]) -> list[Event]:
    """The bounce and complaint events in an SES notification (SNS Message, parsed)."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") or {}
    sender = mail.get("source")
    events: list[Event] = []
    if kind == "Bounce":
        bounce = notification.get("bounce") or {}
        severity = HARD if bounce.get("bounceType") == "Permanent" else SOFT
        for item in bounce.get("bouncedRecipients") or []:
            events.append(
                Event(
                    str(item.get("emailAddress", "")),
                    severity,
                    item.get("status"),
                    item.get("diagnosticCode") or bounce.get("bounceSubType"),
                    sender,
                )
            )
    elif kind == "Complaint":
        complaint = notification.get("complaint") or {}
        for item in complaint.get("complainedRecipients") or []:
            events.append(
                Event(
                    str(item.get("emailAddress", "")),
                    COMPLAINT,
                    None,
                    f"feedback: {complaint.get('complaintFeedbackType', 'abuse')}",
                    sender,
                )
            )
    return events


def verify_mailgun(signature: Mapping[str, Any], config: Mapping[str, Any], now: datetime) -> str:
    """Check a Mailgun signature block; returns its token (the replay key)."""
    timestamp, token = str(signature.get("timestamp", "")), str(signature.get("token", ""))
    given = str(signature.get("signature", ""))
    if not timestamp.isdigit() or not token or not given:
        raise WebhookRefusedError(403, "unsigned request: refused")
    expected = hmac.new(
        str(config["MAILGUN_SIGNING_KEY"]).encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, given.lower()):
        raise WebhookRefusedError(403, "bad signature")
    check_fresh(datetime.fromtimestamp(int(timestamp), now.tzinfo), now, config["WEBHOOK_MAX_AGE"])
    return token


def mailgun_events(data: Mapping[str, Any]) -> list[Event]:
    """The event in Mailgun's ``event-data``."""
    name = data.get("event")
    recipient = str(data.get("recipient", ""))
    sender = (data.get("envelope") or {}).get("sender")
    if name == "failed":
        status = data.get("delivery-status") or {}
        kind = HARD if data.get("severity") == "permanent" else SOFT
        code = status.get("code")
        return [
            Event(
                recipient,
                kind,
                str(code) if code else None,
                status.get("description") or status.get("message") or data.get("reason"),
                sender,
            )
        ]
    if name == "complained":
        return [Event(recipient, COMPLAINT, None, "complaint (Mailgun)", sender)]
    return []


def verify_postmark(authorization: tuple[str, str] | None, config: Mapping[str, Any]) -> None:
    """Check HTTP basic auth against NEWSLETTER_POSTMARK_WEBHOOK_USER/PASSWORD."""
    if authorization is None:
        raise WebhookRefusedError(403, "unsigned request: refused")
    user, password = authorization
    good_user = hmac.compare_digest(user.encode(), str(config["POSTMARK_WEBHOOK_USER"]).encode())
    good_password = hmac.compare_digest(
        password.encode(), str(config["POSTMARK_WEBHOOK_PASSWORD"]).encode()
    )
    if not (good_user and good_password):
        raise WebhookRefusedError(403, "bad credentials")


# Postmark bounce types that mean the address is gone; the rest are temporary or not bounces.
_POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "AddressChange"}
_POSTMARK_SOFT = {
    "SoftBounce",
    "Transient",
    "DnsError",
    "MailFrontier",
    "Blocked",
    "SMTPApiError",
    "InboundError",
    "DMARCPolicy",
    "TemplateRenderingFailed",
}


def postmark_event(body: Mapping[str, Any]) -> tuple[list[Event], str, datetime]:
    """The event in a Postmark bounce or spam-complaint webhook, its id and its time."""
    record = body.get("RecordType")
    kind_name = str(body.get("Type", ""))
    if record == "SpamComplaint" or kind_name == "SpamComplaint":
        kind: str | None = COMPLAINT
    elif record == "Bounce" and kind_name in _POSTMARK_HARD:
        kind = HARD
    elif record == "Bounce" and kind_name in _POSTMARK_SOFT:
        kind = SOFT
    else:
        kind = None
    event_id = str(body.get("ID") or "")
    if not event_id:
        raise WebhookRefusedError(400, "Postmark event without an ID")
    when = _parse_time(body.get("BouncedAt") or body.get("ReceivedAt") or "")
    if kind is None:
        return [], event_id, when
    return (
        [
            Event(
                str(body.get("Email", "")),
                kind,
                None,
                str(body.get("Description") or body.get("Details") or kind_name),
            )
        ],
        event_id,
        when,
    )


def apply_events(
    session: Session,
    config: Mapping[str, Any],
    clock: Callable[[], datetime],
    events: list[Event],
    source: str,
) -> list[str]:
    """Apply each event to its reader (VERP token first, then the address); returns results."""
    results = []
    for event in events:
        subscriber_id: int | None = None
        campaign_id: int | None = None
        if event.envelope_sender:
            try:
                claim = claim_from_address(config, event.envelope_sender)
            except InvalidVerpError:
                claim = None
            if claim is not None and session.get(Subscriber, claim.subscriber_id) is not None:
                subscriber_id, campaign_id = claim.subscriber_id, claim.campaign_id or None
        if subscriber_id is None:
            try:
                address = normalise_address(event.address)
            except InvalidAddressError:
                continue
            subscriber_id = session.scalar(select(Subscriber.id).where(Subscriber.email == address))
        if subscriber_id is None:
            results.append("unmatched")
            continue
        results.append(
            apply_outcome(
                session,
                config,
                clock,
                Outcome(
                    subscriber_id,
                    event.kind,
                    source,
                    campaign_id,
                    event.status_code,
                    event.diagnostic,
                ),
            )
        )
    return results


def parse_json(body: bytes) -> Any:
    """A JSON body, or a 400."""
    try:
        return json.loads(body)
    except ValueError:
        raise WebhookRefusedError(400, "the body is not JSON") from None

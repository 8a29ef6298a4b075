"""The author's approval of a scheduled digest (``NEWSLETTER_DIGEST_APPROVAL=true``).

At a tick the worker prepares the digest and emails the author a preview with a signed,
single-use "Approve and send" link that lapses at the next tick. Opening the link (GET) shows
the preview and a button; the button (POST) approves. The worker then composes exactly the
posts she saw into the digest and sends it through the usual ledger. An approval that lapses
sends nothing, and its posts wait for the next digest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from html import escape

from itsdangerous import BadData
from itsdangerous.url_safe import URLSafeSerializer
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .errors import NewsletterError
from .mail import build_message
from .models import Post
from .outbox import queue_email
from .rendering import RenderedEmail
from .services import Services
from .worker_models import (
    APPROVAL_APPROVED,
    APPROVAL_LAPSED,
    APPROVAL_PENDING,
    APPROVAL_SENT,
    DigestApproval,
)

APPROVAL_SALT = "newsletter.digest-approval.v1"
APPROVAL_EMAIL = "digest_approval"  # the outbox kind
APPROVE_PATH = "digest/approve"


class ApprovalError(NewsletterError):
    """An approval link that cannot be used; the message is for the author."""


def approval_token(secret_key: str, approval_id: int) -> str:
    """The signed token in an approval link (its expiry and single use live in the row)."""
    return URLSafeSerializer(secret_key, salt=APPROVAL_SALT).dumps({"a": approval_id})


def read_approval_token(secret_key: str, token: str) -> int:
    """The approval id a token names; raises ApprovalError for a tampered or foreign one."""
    try:
        data = URLSafeSerializer(secret_key, salt=APPROVAL_SALT).loads(token)
        return int(data["a"])
    except (BadData, KeyError, TypeError, ValueError):
        raise ApprovalError(
            "This approval link is not valid. Use the link in the most recent approval email."
        ) from None


def approval_url(services: Services, approval_id: int) -> str:
    """The absolute "Approve and send" link for an approval."""
    token = approval_token(services.config["SECRET_KEY"], approval_id)
    return services.public_url(f"{APPROVE_PATH}/{token}")


@dataclass(frozen=True)
class PreparedApproval:
    """What :func:`prepare_approval` made: the row and the link it mailed."""

    approval_id: int
    subject: str
    titles: list[str]
    url: str


def prepare_approval(
    session: Session, services: Services, *, tick: datetime, expires_at: datetime, author_email: str
) -> PreparedApproval | None:
    """Render the next digest's preview, store it as a pending approval and queue the email
    to the author, in one transaction; None (nothing written) when no post is new."""
    from .digest import preview_digest, select_digest_posts
    from .settings import next_digest_note

    # The author approves what she sees: her saved note too (it goes out with this digest).
    preview = preview_digest(session, services, note=next_digest_note(session))
    if preview is None:
        session.rollback()
        return None
    posts = select_digest_posts(session, services)
    now = services.clock()
    approval = DigestApproval(
        tick_at=tick,
        status=APPROVAL_PENDING,
        subject=preview.subject,
        post_ids=json.dumps([post.id for post in posts]),
        html=preview.html,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(approval)
    session.flush()
    url = approval_url(services, approval.id)
    titles = [post.title for post in posts]
    message = build_message(
        _approval_email(services, preview.subject, preview.html, titles, url, expires_at),
        sender=services.config["MAIL_FROM"],
        sender_name=services.config["MAIL_FROM_NAME"],
        recipient=author_email,
        date=now,
    )
    queue_email(
        session,
        subscriber_id=None,
        kind=APPROVAL_EMAIL,
        recipient=author_email,
        message=bytes(message),
        now=now,
    )
    session.commit()
    return PreparedApproval(approval.id, preview.subject, titles, url)


def _approval_email(
    services: Services,
    subject: str,
    preview_html: str,
    titles: list[str],
    url: str,
    expires_at: datetime,
) -> RenderedEmail:
    """The author's email: a banner with the link above the digest exactly as readers get it."""
    until = f"{expires_at:%Y-%m-%d %H:%M} UTC"
    listed = "\n".join(f"  - {title}" for title in titles)
    text = (
        f'Your next digest is ready: "{subject}"\n\n{listed}\n\n'
        f"Approve and send it to your readers:\n{url}\n\n"
        f"The link works once, until {until}; without your approval nothing is sent and "
        "these posts wait for the next digest.\n"
    )
    banner = (
        '<div style="border:2px solid #2a6;padding:12px;margin:12px;font-family:sans-serif">'
        f"<p>Your next digest is ready: <strong>{escape(subject)}</strong>. This is how your "
        "readers will see it.</p>"
        f'<p><a href="{escape(url)}" style="font-weight:bold">Approve and send</a></p>'
        f"<p>The link works once, until {escape(until)}; without your approval nothing is "
        "sent and these posts wait for the next digest.</p></div>"
    )
    html, count = re.subn(r"(<body[^>]*>)", lambda m: m.group(1) + banner, preview_html, count=1)
    if not count:
        html = banner + preview_html
    return RenderedEmail(subject=f"Approve your digest: {subject}", html=html, text=text)


@dataclass(frozen=True)
class ApprovalView:
    """What the approval page shows."""

    approval_id: int
    subject: str
    html: str
    titles: list[str]
    expires_at: datetime


def _usable(session: Session, services: Services, token: str) -> DigestApproval:
    approval_id = read_approval_token(services.config["SECRET_KEY"], token)
    approval = session.get(DigestApproval, approval_id)
    if approval is None:
        raise ApprovalError(
            "This approval link is not valid. Use the link in the most recent approval email."
        )
    if approval.status in (APPROVAL_APPROVED, APPROVAL_SENT):
        raise ApprovalError("This digest is already approved; it is being sent or was sent.")
    if approval.status == APPROVAL_LAPSED or approval.expires_at <= services.clock():
        raise ApprovalError(
            "This approval has lapsed: the next scheduled digest came first. "
            "Its posts go into that one."
        )
    return approval


def view_approval(session: Session, services: Services, token: str) -> ApprovalView:
    """The preview behind a link; raises ApprovalError when it cannot be approved."""
    approval = _usable(session, services, token)
    ids = json.loads(approval.post_ids)
    titles = [post.title for post in session.scalars(select(Post).where(Post.id.in_(ids)))]
    view = ApprovalView(approval.id, approval.subject, approval.html, titles, approval.expires_at)
    session.rollback()
    return view


def approve(session: Session, services: Services, token: str) -> int:
    """Approve the digest behind a link, once; returns its id. Raises ApprovalError."""
    approval = _usable(session, services, token)
    now = services.clock()
    changed = session.execute(
        update(DigestApproval)
        .where(
            DigestApproval.id == approval.id,
            DigestApproval.status == APPROVAL_PENDING,
            DigestApproval.expires_at > now,
        )
        .values(status=APPROVAL_APPROVED, approved_at=now)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if not changed:
        raise ApprovalError("This digest is already approved, or has just lapsed.")
    return approval.id


def lapse_expired(session: Session, now: datetime) -> int:
    """Mark pending approvals whose time is up as lapsed; returns how many. Commits."""
    lapsed = session.execute(
        update(DigestApproval)
        .where(DigestApproval.status == APPROVAL_PENDING, DigestApproval.expires_at <= now)
        .values(status=APPROVAL_LAPSED)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return int(lapsed or 0)


def approved_waiting(session: Session) -> list[int]:
    """Ids of approved digests not yet composed, oldest first."""
    ids = list(
        session.scalars(
            select(DigestApproval.id)
            .where(DigestApproval.status == APPROVAL_APPROVED)
            .order_by(DigestApproval.id)
        )
    )
    session.rollback()
    return ids


def compose_approved(
    session: Session, services: Services, approval_id: int, *, lock: object
) -> int | None:
    """Compose an approved digest from exactly the posts the author saw (those still not in a
    digest) and plan its deliveries, in one transaction with marking it sent; returns the
    campaign id (None if it was composed already or none of its posts is left).

    Needs the send lock; holds its composing part, so two workers never compose it twice.
    """
    from .digest import create_digest_campaign
    from .sending import plan_deliveries
    from .settings import NEXT_DIGEST_NOTE, next_digest_note, store_value

    with lock.composing():  # type: ignore[attr-defined]
        session.commit()  # look afresh: another worker may have composed it meanwhile
        approval = session.get(DigestApproval, approval_id)
        if approval is None or approval.status != APPROVAL_APPROVED:
            session.rollback()
            return None
        ids = json.loads(approval.post_ids)
        found = {
            post.id: post
            for post in session.scalars(
                select(Post).where(Post.id.in_(ids), Post.campaign_id.is_(None))
            )
        }
        posts = [found[post_id] for post_id in ids if post_id in found]
        if not posts:
            approval.status = APPROVAL_LAPSED
            session.commit()
            return None
        try:
            # The note saved for the next digest goes out with it, then is cleared.
            note = next_digest_note(session)
            campaign = create_digest_campaign(session, services, posts, note=note)
            if note is not None:
                store_value(session, NEXT_DIGEST_NOTE, None, now=services.clock())
            plan_deliveries(session, campaign.id, services.clock())
            approval.status = APPROVAL_SENT
            approval.campaign_id = campaign.id
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return campaign.id

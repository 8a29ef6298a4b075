"""Announcements: a one-off campaign written in Markdown, rendered once and sent to every
confirmed reader through the same delivery ledger as a digest.

The file is YAML front matter (``subject``, optional ``preheader``) and a Markdown body. The
body becomes the HTML part (sanitised like feed content, relative URLs made absolute against
``NEWSLETTER_SITE_URL``, in ``emails/campaign.html``) and, separately, the plain-text part:
a walk over the parsed Markdown, not a stripping of the HTML.

A call-to-action button is a link whose text is in double brackets, alone in its paragraph::

    [[Get the book]](https://shop.example.com/book)

It becomes a bulletproof table button in HTML and ``Get the book: https://...`` in text;
elsewhere Markdown shows it as a link reading "[Get the book]". (The Markdown rendering
itself lives in newsletter.content.markdown; this module is what an announcement is, how it
becomes an email and how it is sent.)

Sending the same subject and body twice is refused unless asked for (``again``); running the
command on an announcement that was interrupted resumes it instead of starting a second copy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import placeholders
from .addresses import normalise_address
from .archive import archive_path
from .content.frontmatter import FrontMatterError, split_front_matter
from .content.markdown import CampaignBody, MarkdownBodyError, render_markdown
from .errors import NewsletterError
from .models import DEFERRED, QUEUED, SENDING, Campaign, Delivery, Subscriber
from .rendering import RenderedEmail
from .sending import (
    Backlog,
    Draft,
    SendOutcome,
    confirmed_readers,
    send_test_copy,
    unfinished_campaigns,
)
from .sending.orchestrate import add_campaign, unfinished_summary
from .sending.preview import EmailPreview, preview_campaign_email
from .services import Services
from .transactional import email_context

ANNOUNCEMENT = "announcement"  # the campaign kind
TEMPLATE = "campaign"  # emails/campaign.html + emails/campaign.txt
FRONT_MATTER_KEYS = ("subject", "preheader")
SUBJECT_LIMIT = 998  # characters: the campaigns.subject column (and RFC 5322's line limit)
PREHEADER_CHARS = 120

_campaigns = Campaign.__table__
_deliveries = Delivery.__table__
_subscribers = Subscriber.__table__


class CampaignError(NewsletterError):
    """An announcement cannot be sent as asked; the message says what to do next."""


class CampaignFileError(CampaignError):
    """The Markdown file is missing or unusable: front matter, subject, body or a button."""


class AlreadySentError(CampaignError):
    """The same subject and body went out before; ``--again`` sends them anyway."""

    def __init__(self, campaign_id: int, created_at: datetime) -> None:
        super().__init__(
            f"this announcement (the same subject and body) was already sent as campaign "
            f"{campaign_id} on {created_at:%Y-%m-%d %H:%M} UTC; to send it to everyone once "
            "more, add --again"
        )
        self.campaign_id = campaign_id


# --- the file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Announcement:
    """An announcement as read from its file: subject, optional preheader, Markdown body."""

    path: Path
    subject: str
    preheader: str | None
    body: str

    @property
    def content_hash(self) -> str:
        """A sha256 of the subject and body: the same announcement is recognised when it is
        sent again, whatever happened to line endings and trailing spaces."""
        lines = [line.rstrip() for line in self.body.strip("\n").splitlines()]
        digest = hashlib.sha256(ANNOUNCEMENT.encode())
        digest.update(b"\0" + self.subject.encode() + b"\0" + "\n".join(lines).encode())
        return digest.hexdigest()


def read_announcement(path: str | Path) -> Announcement:
    """Read ``path``: YAML front matter with ``subject`` (and optional ``preheader``), then the
    Markdown body. Raises CampaignFileError with a one-line reason."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CampaignFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CampaignFileError(f"{path} is a folder; give the announcement's .md file") from None
    except UnicodeDecodeError:
        raise CampaignFileError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise CampaignFileError(f"cannot read {path} ({err.strerror or err})") from None
    meta, body = _front_matter(content, path)
    unknown = sorted(str(key) for key in meta if key not in FRONT_MATTER_KEYS)
    if unknown:
        raise CampaignFileError(
            f"{path}: unknown front matter key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; an announcement takes subject and "
            "preheader"
        )
    subject = _one_line(meta.get("subject"), "subject", path)
    if not subject:
        raise CampaignFileError(
            f"{path}: the front matter has no subject; add a line like "
            "`subject: The new book is here`"
        )
    if len(subject) > SUBJECT_LIMIT:
        raise CampaignFileError(
            f"{path}: the subject is {len(subject)} characters long, over "
            f"the limit of {SUBJECT_LIMIT}; shorten it (under 80 reads best)"
        )
    if not body.strip():
        raise CampaignFileError(
            f"{path}: there is no text after the front matter; write the "
            "announcement below the closing --- line"
        )
    return Announcement(
        path=path,
        subject=subject,
        preheader=_one_line(meta.get("preheader"), "preheader", path) or None,
        body=body,
    )


def _front_matter(content: str, path: Path) -> tuple[dict[Any, Any], str]:
    try:
        split = split_front_matter(content)
    except FrontMatterError as err:
        hint = {
            "unclosed": "; add one after the subject",
            "yaml": "; put a value that holds a colon in quotes",
            "shape": " (subject, preheader)",
        }[err.kind]
        raise CampaignFileError(f"{path}: {err}{hint}") from None
    if not split.present:
        raise CampaignFileError(
            f"{path}: no front matter; start the file with a --- line, "
            "then `subject: ...`, then another --- line"
        )
    return split.meta, split.body


def _one_line(value: object, key: str, path: Path) -> str:
    """A front matter value as one line of text ('' when missing)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CampaignFileError(f"{path}: the {key} must be text; put it in quotes")
    return " ".join(str(value).split())


# --- the email ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedCampaign:
    """An announcement rendered once for everyone, with the reader placeholders."""

    email: RenderedEmail
    preheader: str
    body: CampaignBody


def render_campaign(announcement: Announcement, services: Services) -> RenderedCampaign:
    """Render ``announcement`` once into ``emails/campaign.html`` + ``campaign.txt`` (Jinja2
    and premailer run here only). Raises CampaignFileError or TemplateError."""
    config = services.config
    try:
        body = render_markdown(announcement.body, str(config["SITE_URL"]))
    except MarkdownBodyError as err:
        raise CampaignFileError(f"{announcement.path}: {err}") from None
    preheader = announcement.preheader or _shorten(body.first_paragraph, PREHEADER_CHARS)
    context = {
        **email_context(config),
        "content": list(body.content),
        "text": body.text,
        "preheader": preheader,
        # Stand-ins for each reader's own parts, filled in per reader after rendering.
        "greeting": placeholders.GREETING,
        "unsubscribe_url": placeholders.UNSUBSCRIBE_URL,
        "archive_url": services.public_url(archive_path(announcement.content_hash)),
    }
    email = services.renderer.render(TEMPLATE, announcement.subject, context)
    return RenderedCampaign(email=email, preheader=preheader, body=body)


def _shorten(words: str, limit: int) -> str:
    if len(words) <= limit:
        return words
    return words[:limit].rsplit(" ", 1)[0].rstrip(".,;:!?-–—") + "…"


# --- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EarlierCopy:
    """A campaign with the same content as the announcement at hand."""

    id: int
    status: str
    created_at: datetime
    left: int  # deliveries still queued or deferred


def earlier_copies(session: Session, content_hash: str) -> list[EarlierCopy]:
    """Announcements with this content hash, oldest first, with what each has left to send."""
    c, d = _campaigns, _deliveries
    left = (
        select(func.count())
        .select_from(d)
        .where(d.c.campaign_id == c.c.id, d.c.status.in_((QUEUED, DEFERRED)))
        .scalar_subquery()
    )
    rows = session.execute(
        select(c.c.id, c.c.status, c.c.created_at, left)
        .where(c.c.kind == ANNOUNCEMENT, c.c.content_hash == content_hash)
        .order_by(c.c.id)
    ).all()
    return [EarlierCopy(*row) for row in rows]


@dataclass
class AnnouncementComposer:
    """How an announcement is composed, for :func:`~newsletter.sending.send_new_campaign`.

    Its rules: the file and template are checked before SMTP; an interrupted copy of this
    content is resumed and the run ends there (even with ``again``: one run never mails anyone
    a second copy); content sent before is refused (AlreadySentError) unless ``again``; any
    other interrupted announcement is finished first, and if it had anything to send the run
    ends there (run again). When another sender has just created this very announcement, the
    run joins in sending it instead of composing a second copy.
    """

    announcement: Announcement
    again: bool = False
    kind: str = ANNOUNCEMENT
    sends_unfinished: bool = False
    rendered: RenderedCampaign | None = None

    def prepare(self, services: Services) -> None:
        """Render the file: a bad file or template stops the run before anything else."""
        self.rendered = render_campaign(self.announcement, services)

    def backlog(self, session: Session) -> Backlog:
        """An interrupted copy of this content (final), else the other unfinished ones."""
        copies = earlier_copies(session, self.announcement.content_hash)
        unfinished = [copy.id for copy in copies if copy.status == SENDING]
        if unfinished:
            return Backlog(unfinished, final=True)
        if copies and not self.again:
            raise AlreadySentError(copies[-1].id, copies[-1].created_at)
        return Backlog(unfinished_campaigns(session, ANNOUNCEMENT))

    def draft(self, session: Session, services: Services, outcome: SendOutcome) -> Draft | int:
        """The announcement, or the unfinished copy another sender created meanwhile."""
        copies = earlier_copies(session, self.announcement.content_hash)
        unfinished = [copy.id for copy in copies if copy.status == SENDING]
        if unfinished:
            return unfinished[0]
        if copies and not self.again:
            raise AlreadySentError(copies[-1].id, copies[-1].created_at)
        return Draft(self.announcement.subject)

    def compose(self, session: Session, services: Services, draft: Draft) -> int:
        """Add the announcement's campaign."""
        rendered = self.rendered or render_campaign(self.announcement, services)
        content_hash = self.announcement.content_hash
        campaign = add_campaign(session, services, ANNOUNCEMENT, rendered, content_hash)
        return campaign.id


@dataclass(frozen=True)
class CampaignPlan:
    """What ``send-campaign --dry-run`` shows."""

    subject: str
    preheader: str
    readers: int
    copies: list[EarlierCopy]  # earlier campaigns with the same content
    other_unfinished: list[tuple[int, str, int]]  # (id, subject, deliveries left)

    @property
    def resumes(self) -> EarlierCopy | None:
        """The interrupted copy a run would resume, if any."""
        return next((copy for copy in self.copies if copy.status == SENDING), None)


def plan_campaign(session: Session, services: Services, announcement: Announcement) -> CampaignPlan:
    """What a run would do now; renders (so a bad file shows up) and changes nothing."""
    rendered = render_campaign(announcement, services)
    copies = earlier_copies(session, announcement.content_hash)
    others = unfinished_summary(session, ANNOUNCEMENT, leave_out=[copy.id for copy in copies])
    plan = CampaignPlan(
        subject=announcement.subject,
        preheader=rendered.preheader,
        readers=confirmed_readers(session),
        copies=copies,
        other_unfinished=others,
    )
    session.rollback()
    return plan


def send_test_campaign(
    session: Session, services: Services, announcement: Announcement, address: str
) -> str:
    """Send the announcement to ``address`` only; returns its subject. Creates no campaign
    and marks nothing. Raises InvalidAddressError, CampaignError, TemplateError or an
    SmtpError."""
    address = normalise_address(address)
    rendered = render_campaign(announcement, services)
    send_test_copy(session, services, rendered.email, address)
    return announcement.subject


# --- preview ----------------------------------------------------------------------------------


def preview_campaign(services: Services, announcement: Announcement) -> EmailPreview:
    """Render the announcement and fill in a sample reader's parts, built exactly as the
    sender builds each reader's copy. Touches no database. Raises CampaignError or
    TemplateError."""
    rendered = render_campaign(announcement, services).email
    return preview_campaign_email(services, rendered, name="campaign")

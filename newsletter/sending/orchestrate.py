"""From composing to sent: the steps every campaign kind shares.

:func:`send_new_campaign` is the one way a new campaign goes out, whoever asks (the CLI, the
worker, the dashboard): fold in what a killed run left, check SMTP, finish what must be
finished first, compose and plan the campaign under the composing lock, then send. Each kind
(a digest, an announcement) supplies only how it composes, as a :class:`Composer`; the
caller supplies the confirmation and the progress display as callbacks, so nothing here knows
about a terminal.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import make_msgid
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..mail import ReaderParts, mail_domain, reader_greeting
from ..models import DEFERRED, QUEUED, SENDING, Campaign
from ..rendering import RenderedEmail
from ..services import Services
from .campaigns import send_each, send_unfinished, unfinished_campaigns
from .ledger import confirmed_readers, plan_deliveries
from .lock import SendLock, recover
from .messages import campaign_template, check_smtp, connect_transport
from .options import (
    Progress,
    SendOptions,
    SendReport,
    _campaigns,
    _deliveries,
    _NoProgress,
    _subscribers,
)
from .processes import SenderProcesses


class NotComposed(enum.Enum):
    """Why a run composed no new campaign (it may still have resumed earlier ones)."""

    SOURCE_ERROR = "the posts could not be read"  # the detail is in ``SendOutcome.problem``
    NOTHING_NEW = "nothing new to send"
    NO_READERS = "no confirmed readers yet"
    DECLINED = "the confirmation was declined"
    RESUMED = "an interrupted copy of this very campaign was resumed instead"
    WAITING = "an earlier unfinished campaign was finished first; run again"


@dataclass
class SendOutcome:
    """What one run of :func:`send_new_campaign` did: campaigns resumed, the new campaign's
    report, or why nothing new was composed."""

    kind: str
    subject: str | None = None  # of the new campaign, once known
    resumed: list[SendReport] = field(default_factory=list)  # campaigns it did not compose
    report: SendReport | None = None  # the campaign this run composed (or joined)
    not_composed: NotComposed | None = None
    problem: str | None = None  # why the content could not be read (SOURCE_ERROR)
    notes: list[str] = field(default_factory=list)  # what the composer found (new posts)

    @property
    def reports(self) -> list[SendReport]:
        """Every campaign report of the run, resumed ones first."""
        return [*self.resumed, *([self.report] if self.report else [])]

    @property
    def stopped(self) -> bool:
        """Whether SMTP (or the brake) stopped a campaign of this run."""
        return any(report.error for report in self.reports)

    @property
    def complete(self) -> bool:
        """Every delivery of the run was sent or skipped."""
        return all(report.complete for report in self.reports)


@dataclass(frozen=True)
class Draft:
    """What a composer would compose now: shown in the confirmation before anything is made."""

    subject: str
    titles: Sequence[str] = ()  # the posts in it (a digest), for the confirmation


@dataclass(frozen=True)
class Backlog:
    """Campaigns to finish before composing. ``final``: the run ends with them (they are an
    interrupted copy of the very campaign asked for); otherwise, if they had anything to send,
    the run ends too and the new campaign waits for the next run."""

    campaign_ids: Sequence[int] = ()
    final: bool = False


# Asked before mailing: (the draft, confirmed readers) -> go ahead?
Confirm = Callable[[Draft, int], bool]


class Composer(Protocol):
    """How one kind of campaign is composed; :func:`send_new_campaign` does the rest."""

    kind: str  # the campaigns.kind of what it composes
    # True: after composing, every unfinished campaign of ``kind`` is sent, oldest first (the
    # digest's resume). False: only the one composed (earlier ones came from :meth:`backlog`).
    sends_unfinished: bool

    def prepare(self, services: Services) -> None:
        """Check what can be checked before SMTP is (a file, a template); raise to stop."""

    def backlog(self, session: Session) -> Backlog:
        """What to finish before composing (may raise to refuse the run)."""

    def draft(
        self, session: Session, services: Services, outcome: SendOutcome
    ) -> Draft | int | None:
        """Under the composing lock: what to compose, the id of an unfinished campaign with
        the same content to join instead, or None (with ``outcome.not_composed`` set)."""

    def compose(self, session: Session, services: Services, draft: Draft) -> int:
        """Add the campaign (flushed, not committed) and return its id."""


def send_new_campaign(
    session: Session,
    services: Services,
    composer: Composer,
    *,
    lock: SendLock,
    confirm: Confirm | None = None,
    options: SendOptions | None = None,
    progress: Progress | None = None,
    senders: SenderProcesses | None = None,
) -> SendOutcome:
    """Compose a new campaign with ``composer`` and send it to every confirmed reader.

    In order: ``composer.prepare`` (a bad file or template stops here), fold in what a killed
    run left, check SMTP (SmtpConfigError / SmtpUnavailableError before anything is planned),
    finish the composer's backlog, then, holding the lock's composing part (only one process
    at a time composes, so none composes twice), draft, ``confirm``, create the campaign and
    plan one delivery per confirmed reader in one transaction; then send. With ``senders``,
    those processes send instead. Needs the send lock held.
    """
    options = options or SendOptions.from_config(services.config)
    outcome = SendOutcome(kind=composer.kind)
    composer.prepare(services)
    if not lock.recovered:
        recover(session, lock, services.clock())  # so the ledger is exact before we look
    check_smtp(services)
    backlog = composer.backlog(session)
    session.rollback()
    if backlog.campaign_ids:
        outcome.resumed = send_each(
            session, services, backlog.campaign_ids, lock=lock, options=options, progress=progress
        )
        if backlog.final:
            outcome.not_composed = NotComposed.RESUMED
            return outcome
        if outcome.stopped:
            return outcome  # SMTP trouble: the rest waits for the next run
        if any(report.total for report in outcome.resumed):
            outcome.not_composed = NotComposed.WAITING
            return outcome
    new_id = _compose(session, services, composer, lock, outcome, confirm)
    session.expunge_all()  # nothing from the ORM is kept while sending
    if not composer.sends_unfinished:
        ids = [new_id] if new_id is not None else []
        reports = send_each(session, services, ids, lock=lock, options=options, progress=progress)
    elif senders is None:
        reports = send_unfinished(
            session, services, lock=lock, kind=composer.kind, options=options, progress=progress
        )
    elif unfinished_campaigns(session, composer.kind):
        reports = senders.run(session, services, progress or _NoProgress())
    else:
        reports = []
    session.commit()
    for report in reports:
        if report.campaign_id == new_id:
            outcome.report = report
        else:
            outcome.resumed.append(report)
    return outcome


def _compose(
    session: Session,
    services: Services,
    composer: Composer,
    lock: SendLock,
    outcome: SendOutcome,
    confirm: Confirm | None,
) -> int | None:
    """Draft, confirm, create and plan in one transaction under the composing lock; the new
    campaign's id (or the one joined), or None with the reason in ``outcome``."""
    with lock.composing():
        try:
            session.commit()  # look afresh: another process may have composed while we waited
            draft = composer.draft(session, services, outcome)
            if draft is None or isinstance(draft, int):
                session.rollback()
                return draft
            outcome.subject = draft.subject
            readers = confirmed_readers(session)
            if not readers:
                outcome.not_composed = NotComposed.NO_READERS  # the content waits
                session.rollback()
                return None
            if confirm is not None and not confirm(draft, readers):
                outcome.not_composed = NotComposed.DECLINED
                session.rollback()
                return None
            campaign_id = composer.compose(session, services, draft)
            plan_deliveries(session, campaign_id, services.clock())
            session.commit()
        except BaseException:
            session.rollback()  # nothing half-made survives the composing lock
            raise
    return campaign_id


class Rendered(Protocol):
    """A campaign's email rendered once, with its preheader (a digest's or an announcement's)."""

    @property
    def email(self) -> RenderedEmail: ...

    @property
    def preheader(self) -> str: ...


def add_campaign(
    session: Session, services: Services, kind: str, rendered: Rendered, content_hash: str
) -> Campaign:
    """Add a ``sending`` campaign of ``kind`` for the email rendered once; flushes (so it has
    its id), does not commit: the caller plans its deliveries in the same transaction."""
    campaign = Campaign(
        kind=kind,
        subject=rendered.email.subject,
        preheader=rendered.preheader,
        html=rendered.email.html,
        text=rendered.email.text,
        content_hash=content_hash,
        status=SENDING,
        created_at=services.clock(),
    )
    session.add(campaign)
    session.flush()
    return campaign


def unfinished_summary(
    session: Session, kind: str, *, leave_out: Sequence[int] = ()
) -> list[tuple[int, str, int]]:
    """(id, subject, deliveries left) of each unfinished campaign of ``kind``, for a dry run."""
    c, d = _campaigns, _deliveries
    summary = []
    for campaign_id in unfinished_campaigns(session, kind):
        if campaign_id in leave_out:
            continue
        subject = session.scalar(select(c.c.subject).where(c.c.id == campaign_id)) or ""
        left = (
            session.scalar(
                select(func.count())
                .select_from(d)
                .where(d.c.campaign_id == campaign_id, d.c.status.in_((QUEUED, DEFERRED)))
            )
            or 0
        )
        summary.append((campaign_id, subject, left))
    return summary


TEST_UNSUBSCRIBE_PATH = "unsubscribe/test-send"


def send_test_copy(
    session: Session, services: Services, rendered: RenderedEmail, address: str
) -> None:
    """Send one copy of a campaign's email to ``address`` as a test, marking nothing. A reader
    testing gets their own working unsubscribe link; anyone else a harmless test one."""
    template = campaign_template(services, rendered, services.clock())
    reader = session.execute(
        select(_subscribers.c.id, _subscribers.c.name).where(_subscribers.c.email == address)
    ).one_or_none()
    session.rollback()
    if reader is not None:
        unsubscribe = services.public_url(
            f"unsubscribe/{services.tokens.unsubscribe_token(reader.id)}"
        )
    else:
        unsubscribe = services.public_url(TEST_UNSUBSCRIBE_PATH)
    name = reader.name if reader is not None else None
    parts = ReaderParts(
        recipient=address,
        unsubscribe_url=unsubscribe,
        message_id=make_msgid("test", domain=mail_domain(str(services.config["MAIL_FROM"]))),
        greeting=reader_greeting(name),
        name=name,
    )
    transport = services.open_transport()
    try:
        data = template.personalise(parts, eight_bit=connect_transport(transport))
        transport.send(str(services.config["MAIL_FROM"]), address, data)
    finally:
        transport.close()

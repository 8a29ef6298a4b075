"""From composing to sent: the steps every campaign kind shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import make_msgid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..mail import ReaderParts, reader_greeting
from ..models import DEFERRED, QUEUED
from ..rendering import RenderedEmail
from ..services import Services
from .campaigns import send_unfinished, unfinished_campaigns
from .ledger import confirmed_readers, plan_deliveries
from .lock import SendLock, recover
from .messages import campaign_template, check_smtp, connect_transport
from .options import (
    DIGEST,
    Progress,
    SendOptions,
    SendReport,
    _campaigns,
    _deliveries,
    _NoProgress,
    _subscribers,
)
from .processes import SenderProcesses


@dataclass
class DigestRun:
    """What ``send-digest`` did: campaigns resumed, the new digest, or why nothing was sent."""

    resumed: list[SendReport] = field(default_factory=list)  # campaigns it did not compose
    report: SendReport | None = None
    new_posts: list[str] = field(default_factory=list)  # titles the sync found
    sync_error: str | None = None
    nothing_new: bool = False
    no_readers: bool = False
    declined: bool = False

    @property
    def reports(self) -> list[SendReport]:
        """Every campaign report of the run, resumed ones first."""
        return [*self.resumed, *([self.report] if self.report else [])]


# Asked before mailing: (subject, post titles, readers) -> go ahead?
Confirm = Callable[[str, Sequence[str], int], bool]


def send_digest(
    session: Session,
    services: Services,
    *,
    lock: SendLock,
    options: SendOptions | None = None,
    progress: Progress | None = None,
    confirm: Confirm | None = None,
    senders: SenderProcesses | None = None,
    note: str | None = None,
) -> DigestRun:
    """Sync posts, compose the digest of new posts and plan one delivery per confirmed reader
    (only one process at a time does this), then send every unfinished digest, oldest first:
    one an earlier run left, the new one, and one another sender composed meanwhile (several
    senders share the work on PostgreSQL). With ``senders``, those processes send instead.

    Raises SmtpConfigError / SmtpUnavailableError when the server cannot be used at all (before
    anything is planned), TemplateError for a broken template. ``note`` (Markdown) goes above
    the posts of the new digest and is stored with it.
    """
    run = DigestRun()
    if not lock.recovered:
        recover(session, lock, services.clock())
    check_smtp(services)
    with lock.composing():
        try:
            new_id = _compose_digest(session, services, run, confirm, note)
        except BaseException:
            session.rollback()  # nothing half-made survives the composing lock
            raise
    session.expunge_all()  # nothing from the ORM is kept while sending
    if senders is None:
        reports = send_unfinished(session, services, lock=lock, options=options, progress=progress)
    elif unfinished_campaigns(session, DIGEST):
        reports = senders.run(session, services, progress or _NoProgress())
    else:
        reports = []
    session.commit()
    for report in reports:
        if report.campaign_id == new_id:
            run.report = report
        else:
            run.resumed.append(report)
    return run


def _compose_digest(
    session: Session,
    services: Services,
    run: DigestRun,
    confirm: Confirm | None,
    note: str | None = None,
) -> int | None:
    """Sync the posts and, if any are new, create the digest campaign and plan its deliveries
    in one transaction; returns its id. Why nothing was composed goes into ``run``."""
    from .. import digest, posts

    session.commit()  # look afresh: another process may have composed while we waited
    try:
        synced = posts.sync_posts(session, services)
    except posts.PostSourceError as err:
        run.sync_error = str(err)
        return None
    run.new_posts = [getattr(p, "title", str(p)) for p in synced.new]
    chosen = digest.select_digest_posts(session, services)
    if not chosen:
        run.nothing_new = True
        return None
    readers = confirmed_readers(session)
    if not readers:
        run.no_readers = True  # the posts wait for the first reader
        return None
    if confirm is not None:
        subject = digest.subject_of(chosen, services.config)
        if not confirm(subject, [p.title for p in chosen], readers):
            run.declined = True
            session.rollback()
            return None
    campaign = digest.create_digest_campaign(session, services, chosen, note=note)
    plan_deliveries(session, campaign.id, services.clock())
    session.commit()
    return campaign.id


@dataclass(frozen=True)
class DigestPlan:
    """What ``send-digest --dry-run`` shows: unfinished campaigns and the next digest."""

    unfinished: list[tuple[int, str, int]]  # (id, subject, deliveries left)
    subject: str | None
    titles: list[str]
    readers: int


def plan_digest(session: Session, services: Services) -> DigestPlan:
    """What a run would send now, from the posts already synced; changes nothing."""
    from .. import digest

    d = _deliveries
    unfinished = []
    for campaign_id in unfinished_campaigns(session, DIGEST):
        subject = (
            session.scalar(select(_campaigns.c.subject).where(_campaigns.c.id == campaign_id)) or ""
        )
        left = (
            session.scalar(
                select(func.count())
                .select_from(d)
                .where(d.c.campaign_id == campaign_id, d.c.status.in_((QUEUED, DEFERRED)))
            )
            or 0
        )
        unfinished.append((campaign_id, subject, left))
    chosen = digest.select_digest_posts(session, services)
    subject = digest.subject_of(chosen, services.config) if chosen else None
    plan = DigestPlan(unfinished, subject, [p.title for p in chosen], confirmed_readers(session))
    session.rollback()
    return plan


TEST_UNSUBSCRIBE_PATH = "unsubscribe/test-send"


def send_test_digest(
    session: Session, services: Services, address: str, *, note: str | None = None
) -> str | None:
    """Sync posts and send the next digest to ``address`` only; returns its subject, or None
    when nothing is new. Creates no campaign and marks nothing.

    Raises InvalidAddressError, PostSourceError, TemplateError or an SmtpError.
    """
    from .. import digest, posts
    from ..addresses import normalise_address

    address = normalise_address(address)
    posts.sync_posts(session, services)
    chosen = digest.select_digest_posts(session, services)
    if not chosen:
        return None
    rendered = digest.render_digest(chosen, services, note=note)
    send_test_copy(session, services, rendered, address)
    return rendered.subject


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
    domain = str(services.config["MAIL_FROM"]).rpartition("@")[2] or "localhost"
    parts = ReaderParts(
        recipient=address,
        unsubscribe_url=unsubscribe,
        message_id=make_msgid("test", domain=domain),
        greeting=reader_greeting(name),
        name=name,
    )
    transport = services.open_transport()
    try:
        data = template.personalise(parts, eight_bit=connect_transport(transport))
        transport.send(str(services.config["MAIL_FROM"]), address, data)
    finally:
        transport.close()

"""The delivery ledger and the campaign sender: planning, sending, resuming, rate, progress.

A campaign (a digest or a one-off announcement) is sent to its readers through one
``deliveries`` row each, planned in one transaction. Senders drain the queued rows over reused
SMTP connections, in parallel, and a row becomes ``sent`` only after the server's 250.

Senders claim queued rows in batches (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL)
with a lease: ``claimed_until`` and ``claimed_by``. :class:`SendLock` says who may send:

- SQLite (one writer, one machine): one sender process at a time, an exclusive ``flock`` on a
  file beside the database. Crash safety without a commit per message: the moment a server
  answers 250, the sender appends the delivery's id to its journal file (one small write, no
  fsync: it survives the process being killed because it is already in the operating system's
  cache); the journal is folded into the database in batches (one bulk UPDATE and one commit
  per batch), and the next run folds in any journal that a killed run left behind.
- PostgreSQL: any number of sender processes on any machines. Only composing and planning a
  campaign is exclusive (an advisory lock), so two processes never create two copies of one
  digest. A journal would only help a sender on the same machine, so each 250 is recorded in
  the database at once instead: one autocommit UPDATE on the sending thread's own connection,
  with ``synchronous_commit`` off (no wait for the disk; a killed client loses nothing the
  server has acknowledged). A live sender renews its lease; a dead one's claimed rows go to
  the others when its lease runs out, or at once when the next sender on its machine finds its
  journal file unlocked.

Either way a killed sender costs at most one message per connection, the one whose reply never
arrived, which is sent again with the same Message-ID. Only a machine crash (of the sender on
SQLite, of the database server on PostgreSQL) can lose the last few marks.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid
from pathlib import Path
from typing import IO, Any, Protocol

from sqlalchemy import (
    bindparam,
    create_engine,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from . import placeholders
from .db import UTCDateTime
from .mail import (
    DkimSigner,
    MessageTemplate,
    ReaderParts,
    SmtpConfigProblem,
    SmtpOutcomeUnknown,
    SmtpRejected,
    SmtpUnavailable,
    Transport,
    reader_greeting,
)
from .models import (
    CONFIRMED,
    DEFERRED,
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    SKIPPED,
    Campaign,
    Delivery,
    Subscriber,
)
from .rendering import RenderedEmail
from .services import Services
from .subscriptions import list_headers

log = logging.getLogger(__name__)

_deliveries = Delivery.__table__
_subscribers = Subscriber.__table__
_campaigns = Campaign.__table__

DIGEST = "digest"
# Bulk statements name at most this many ids (SQLite allows 32766 parameters; keep it modest).
ID_CHUNK = 500
# In one run a deferred delivery is retried after retry_delay, 2x and 4x that; later tries
# wait for the next run.
IN_RUN_RETRIES = 3
MAX_BACKOFF = timedelta(hours=6)
JOURNAL_GLOB = "journal-*.log"
# The brake: this many identical refusals in a row, at this many mail domains or more, mean
# the server (or the account on it) is broken, not the readers.
BRAKE_RUN = 20
BRAKE_DOMAINS = 3
# What a refusal says with the reader's own address taken out, so the same fault compares equal.
_ADDRESS_IN_REPLY = re.compile(r"<?[^\s<>@]+@[^\s<>@]+>?")
# How long a second process waits for another to finish composing a campaign (PostgreSQL).
COMPOSE_WAIT = 300.0


class SendError(Exception):
    """A send could not start or had to stop; the message says what to do next."""


class SendInProgress(SendError):
    """Another run holds the send lock for this database (SQLite), or is still composing a
    campaign after a long wait (PostgreSQL)."""


class CampaignNotFound(SendError):
    """No campaign has that id."""


# --- options, report, progress --------------------------------------------------------------


@dataclass(frozen=True)
class SendOptions:
    """How to send: parallel connections, rate cap and retry timing."""

    connections: int = 4
    rate: float | None = None  # messages per second over all connections; None: no cap
    batch_size: int = 500  # rows claimed and status writes folded per batch
    retry_delay: float = 60.0  # first in-run retry of a 4xx, in seconds; doubles each time
    give_up_after: timedelta = timedelta(hours=72)  # a 4xx after this long deferred fails it
    reconnect_delay: float = 1.0  # first wait after a dropped connection; doubles
    max_connection_failures: int = 5  # in a row on one connection, then the run stops
    # How long a claimed batch stays ours without renewal. A live sender renews it every
    # sixth of that and sends nothing more once half of it has passed without a renewal, so a
    # claim runs out only for a sender that is dead (or frozen longer than that).
    lease: timedelta = timedelta(minutes=2)
    flush_interval: float = 0.5  # seconds between status writes while sending
    # A reader's status is read again at most this many seconds before their message is
    # handed to SMTP (one indexed query for every message waiting), so one who unsubscribes
    # after their batch was claimed is skipped. 0: read it after the sender is ready for it.
    status_check_age: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> SendOptions:
        """Options from ``NEWSLETTER_SEND_*`` / ``DEFER_*`` settings; ``None`` overrides ignored."""
        options = cls(
            connections=int(config.get("SEND_CONNECTIONS") or 4),
            rate=float(config["SEND_RATE"]) if config.get("SEND_RATE") else None,
            retry_delay=float(config.get("DEFER_RETRY_SECONDS") or 60.0),
            give_up_after=timedelta(hours=float(config.get("DEFER_GIVE_UP_HOURS") or 72.0)),
            lease=timedelta(seconds=float(config.get("SEND_LEASE_SECONDS") or 120.0)),
        )
        return replace(options, **{k: v for k, v in overrides.items() if v is not None})

    def claim_size(self) -> int:
        """Rows per claim: smaller under a low rate, so a claim is worked off in seconds and a
        reader who unsubscribes meanwhile is noticed soon."""
        if self.rate is None:
            return self.batch_size
        return max(self.connections * 2, min(self.batch_size, int(self.rate * 10)))


@dataclass
class SendReport:
    """What one run did for one campaign."""

    campaign_id: int
    subject: str
    total: int = 0  # deliveries this run set out to send
    sent: int = 0
    failed: int = 0
    deferred: int = 0  # still deferred when the run ended (waiting for a later run)
    skipped: int = 0
    left: int = 0  # still queued when the run ended (it stopped early)
    elapsed: float = 0.0
    error: str | None = None
    finished: bool = False  # the campaign has nothing left to try

    @property
    def rate(self) -> float:
        """Messages per second sent in this run."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Every delivery was sent or skipped (the command's exit status 0)."""
        return self.error is None and not (self.failed or self.deferred or self.left)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for a worker process to hand its report to the parent as JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SendReport:
        """The report :meth:`as_dict` gave (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


class Progress(Protocol):
    """Told how a run goes; called from the thread that called :func:`send_campaign`."""

    def start(self, report: SendReport) -> None: ...

    def update(self, done: int) -> None: ...

    def finish(self, report: SendReport) -> None: ...


class _NoProgress:
    def start(self, report: SendReport) -> None:
        pass

    def update(self, done: int) -> None:
        pass

    def finish(self, report: SendReport) -> None:
        pass


# --- who may send: the lock, the journal and recovery ---------------------------------------


def sending_state_dir(database_url: str, instance_path: str | Path) -> Path:
    """Where the send lock and journals live: beside a SQLite file (so every process using
    that file shares them), else in the instance folder."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        return path.with_name(path.name + ".sending")
    return Path(instance_path) / "sending"


# A fixed key for PostgreSQL's advisory lock: "news" in ASCII.
_ADVISORY_KEY = 0x6E657773


class SendLock:
    """Who may send for one database; released when the process ends (even by SIGKILL).

    On SQLite it is exclusive: ``flock`` on a file beside the database, so a second sender
    waits or stops with a clear message. On PostgreSQL it is shared: any number of senders,
    on any machines, work at once (their claims keep them apart), and only
    :meth:`composing` is exclusive, an advisory lock keyed by schema.
    """

    def __init__(self, directory: Path, engine: Engine | None = None) -> None:
        self.directory = directory
        self.engine = engine
        # Several senders at once: only where rows can be claimed with SKIP LOCKED.
        self.shared = engine is not None and engine.dialect.name == "postgresql"
        self._fd: int | None = None
        self._held = False
        self.recovered = False  # set by recover(): journals folded, stale claims released

    def __enter__(self) -> SendLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (shared or exclusive)."""
        return self._held

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds for an exclusive one; raises
        SendInProgress. A shared lock (PostgreSQL) is always granted."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.shared:
            self._held = True
            return
        path = self.directory / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise SendInProgress(
                        "another send is running for this database"
                        + (f" ({holder})" if holder else "")
                        + "; wait for it to finish (it resumes any unfinished campaign), or "
                          "stop that process first") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
                      .encode(), 0)
        self._fd = fd
        self._held = True

    @contextmanager
    def composing(self, wait: float | None = None) -> Iterator[None]:
        """Hold this while composing and planning a campaign, so two processes never create
        two copies of it. Exclusive already on SQLite; on PostgreSQL an advisory lock (keyed by
        schema too, so two installs sharing a database do not block each other), waited for
        up to ``wait`` seconds (default COMPOSE_WAIT)."""
        if not self.held:
            raise SendError("composing() needs the send lock")
        if not self.shared:
            yield
            return
        assert self.engine is not None
        wait = COMPOSE_WAIT if wait is None else wait
        key = {"key": _ADVISORY_KEY}
        connection: Connection = self.engine.connect()
        try:
            deadline = time.monotonic() + wait
            while not connection.scalar(
                    text("SELECT pg_try_advisory_lock(:key, hashtext(current_schema()))"), key):
                connection.commit()
                if time.monotonic() >= deadline:
                    raise SendInProgress(
                        f"another process has been composing a campaign for over {wait:.0f}s; "
                        "run `newsletter send-digest` again once it is done (it joins in "
                        "sending whatever that process planned)")
                time.sleep(0.1)
            connection.commit()  # the lock is the session's; no transaction stays open
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key, "
                                        "hashtext(current_schema()))"), key)
                connection.commit()
        finally:
            connection.close()

    def release(self) -> None:
        """Give the lock up."""
        self._held = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Journal:
    """One sender's file while it sends a campaign, locked with ``flock`` while it lives, so a
    later sender on this machine can tell a dead sender's file (fold it in, release its claims)
    from a live one's. Created under a temporary name and renamed once locked.

    On SQLite it is also the list of delivered ids, one per line, appended at each 250; on
    PostgreSQL the ids go straight to the database and the file only marks the sender alive.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        name = f"journal-{os.getpid()}-{token}.log"
        temporary = directory / f".{name}.new"
        self._fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.path = directory / name
        os.rename(temporary, self.path)
        # What this sender writes into ``claimed_by``: readable, and ending in what the file
        # name holds, so the file leads back to the claims.
        self.sender_id = f"{socket.gethostname()[:60]}{_sender_suffix(self.path)}"

    def record(self, delivery_id: int) -> None:
        """Note a delivery the server accepted: one write(2), safe from any thread."""
        os.write(self._fd, b"%d\n" % delivery_id)

    def close(self, *, remove: bool) -> None:
        """Close; ``remove`` once every id in it is committed to the database."""
        if remove:
            with suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)


def _sender_suffix(journal: Path) -> str:
    """``:PID:TOKEN`` from ``journal-PID-TOKEN.log``: the end of that sender's ``claimed_by``."""
    return ":" + journal.name.removeprefix("journal-").removesuffix(".log").replace("-", ":", 1)


def read_journal(data: bytes) -> list[int]:
    """The ids in a journal; a last line cut short by a kill (no newline) is ignored."""
    complete = data[:data.rfind(b"\n") + 1]
    return [int(line) for line in complete.split(b"\n") if line.strip()]


def fold_journals(session: Session, directory: Path, now: datetime) -> int:
    """Mark ``sent`` every id in journals that dead senders left behind, release the rows
    those senders still held, then delete the journals.

    Returns how many rows were marked sent. Journals of live senders (still locked) are left
    alone.
    """
    changed = 0
    for path in sorted(directory.glob(JOURNAL_GLOB)):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its sender is alive (or another is folding it right now)
            if not _still_there(fd, path):
                continue  # another sender on this machine has just folded and removed it
            with os.fdopen(os.dup(fd), "rb") as journal:
                ids = read_journal(journal.read())
            changed += mark_sent(session, ids, now, only_unsent=True)
            # Its process is gone, so its claims need not wait for the lease to run out.
            released = release_claims(session, sender_suffix=_sender_suffix(path))
            session.commit()
            log.info("folded %d delivered id(s) and released %d claimed row(s) left by an "
                     "interrupted sender (%s)", len(ids), released, path.name)
            path.unlink()
        finally:
            os.close(fd)
    return changed


def _still_there(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def release_claims(session: Session, *, sender_suffix: str) -> int:
    """Give back the unsent rows a sender holds (in the caller's transaction)."""
    d = _deliveries
    result = session.execute(update(d).where(
        d.c.claimed_by.endswith(sender_suffix, autoescape=True),
        d.c.status.in_((QUEUED, DEFERRED))).values(claimed_until=None, claimed_by=None))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def recover(session: Session, lock: SendLock, now: datetime) -> int:
    """Make the ledger exact after an interrupted sender: fold its journal, release its claims.

    With the exclusive lock (SQLite) no other sender can be alive, so every claim is released;
    with the shared one (PostgreSQL) only those of dead senders on this machine, and other
    machines' dead senders' claims wait for their lease to run out. Returns rows marked sent.
    """
    if not lock.held:
        raise SendError("recover() needs the send lock")
    folded = fold_journals(session, lock.directory, now)
    if not lock.shared:
        session.execute(update(_deliveries).where(_deliveries.c.claimed_until.is_not(None))
                        .values(claimed_until=None, claimed_by=None))
    session.commit()
    lock.recovered = True
    return folded


# --- the ledger -----------------------------------------------------------------------------


def plan_deliveries(session: Session, campaign_id: int, now: datetime) -> int:
    """Queue one delivery per confirmed reader in one INSERT ... SELECT (no rows in Python).

    Runs in the caller's transaction (plan in the one that creates the campaign, then commit).
    """
    readers = (
        select(literal(campaign_id), _subscribers.c.id, literal(QUEUED), literal(0),
               literal(now, UTCDateTime()))
        .where(_subscribers.c.status == CONFIRMED, _subscribers.c.email.is_not(None))
        .order_by(_subscribers.c.id)
    )
    result = session.execute(insert(_deliveries).from_select(
        ["campaign_id", "subscriber_id", "status", "attempts", "updated_at"], readers))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def confirmed_readers(session: Session) -> int:
    """How many readers a campaign planned now would go to."""
    return session.scalar(select(func.count()).select_from(_subscribers).where(
        _subscribers.c.status == CONFIRMED, _subscribers.c.email.is_not(None))) or 0


def _chunks(ids: Sequence[int], size: int = ID_CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def mark_sent(session: Session, ids: Sequence[int], now: datetime, *,
              only_unsent: bool = False) -> int:
    """Bulk-mark deliveries sent (in the caller's transaction); returns rows changed."""
    changed = 0
    for chunk in _chunks(ids):
        statement = update(_deliveries).where(_deliveries.c.id.in_(chunk))
        if only_unsent:
            statement = statement.where(_deliveries.c.status != SENT)
        result = session.execute(statement.values(
            status=SENT, attempts=_deliveries.c.attempts + 1, updated_at=now,
            next_attempt_at=None, claimed_until=None, claimed_by=None, smtp_reply=None))
        changed += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return changed


def backoff(attempts: int, first: float) -> timedelta:
    """``first`` seconds, then twice as long after each further 4xx, up to six hours."""
    return min(timedelta(seconds=first * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


@dataclass(slots=True)
class _Work:
    """One claimed delivery on its way to a sender thread (plain values, no ORM object)."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str | None
    attempts: int
    deferred_since: datetime | None
    # Set by the feeder: when (monotonic) the status check that covered it began, and whether
    # it found the reader gone.
    checked_at: float = -math.inf
    withdrawn: bool = False


@dataclass(slots=True)
class _Outcome:
    status: str
    delivery_id: int
    reply: str | None = None
    attempts: int = 0
    deferred_since: datetime | None = None
    in_db: bool = False  # already written by the sending thread (a 250 on PostgreSQL)
    unknown: bool = False  # no reply to the final dot: never retried in the same run
    domain: str = ""  # the reader's mail domain, for the brake
    requeue: bool = False  # the brake put it back in the queue (not the reader's fault)


# --- the sender ------------------------------------------------------------------------------


class RateLimiter:
    """At most ``rate`` messages per second over all threads (slots spaced 1/rate apart)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        """Block until this caller's slot (returns early when ``stop`` is set)."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            stop.wait(slot - now)


def campaign_template(services: Services, rendered: RenderedEmail,
                      date: datetime) -> MessageTemplate:
    """A campaign's whole message, serialised once with a slot for each reader's parts:
    From, To, Subject, Date, Message-ID, Reply-To, List-Id, List-Unsubscribe(-Post), the text
    part and the HTML part; DKIM-signed per reader when configured."""
    config = services.config
    headers = {"Reply-To": config["REPLY_TO"]} if config.get("REPLY_TO") else {}
    headers.update(list_headers(config, placeholders.UNSUBSCRIBE_URL))
    return MessageTemplate.build(rendered, sender=config["MAIL_FROM"],
                                 sender_name=config.get("MAIL_FROM_NAME"), headers=headers,
                                 date=date, dkim=services.cached(  # keys parsed once
                                     DkimSigner.cache_key(config),
                                     lambda: DkimSigner.from_config(config)))


class ReaderFactory:
    """Each reader's own parts: address, name, unsubscribe link, a Message-ID fixed per
    (campaign, reader) so a rare second copy is recognisably the same message."""

    def __init__(self, services: Services, campaign_id: int, content_hash: str) -> None:
        self._tokens = services.tokens  # one token maker for the whole run
        self._unsubscribe = services.public_url("unsubscribe/")
        domain = str(services.config["MAIL_FROM"]).rpartition("@")[2] or "localhost"
        self._id_suffix = f"{(content_hash or 'x')[:12]}@{domain}"
        self._campaign_id = campaign_id

    def __call__(self, subscriber_id: int, email: str, name: str | None) -> ReaderParts:
        return ReaderParts(
            recipient=email,
            unsubscribe_url=self._unsubscribe + self._tokens.unsubscribe_token(subscriber_id),
            message_id=f"<c{self._campaign_id}.r{subscriber_id}.{self._id_suffix}>",
            greeting=reader_greeting(name), name=name)


def connect_transport(transport: Transport) -> bool:
    """Open the connection now and say whether the server takes 8-bit bodies."""
    connect = getattr(transport, "connect", None)
    if connect is not None:
        connect()
    return bool(getattr(transport, "supports_8bit", False))


def check_smtp(services: Services) -> None:
    """Connect and log in once; raises SmtpConfigProblem or SmtpUnavailable before anything
    is planned or marked."""
    transport = services.open_transport()
    try:
        connect_transport(transport)
    finally:
        transport.close()


class _DatabaseMarks:
    """Records each 250 in the database at once (PostgreSQL): one autocommit UPDATE on the
    sending thread's own connection with ``synchronous_commit`` off, so it costs one round
    trip and no wait for the disk, and a killed sender loses nothing the server acknowledged.

    The connections come from an engine of their own without a pool: up to 50 sending threads
    would exhaust the application's pool, and the setting must not leak into it. This runs once
    per message on the sender's busiest path, so the statement is compiled once and executed
    on the driver's cursor (a third less CPU than a Core execute, which all threads share
    under the GIL).
    """

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self._engine = create_engine(engine.url, poolclass=NullPool)
        self._clock = clock
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        d = _deliveries
        compiled = update(d).where(d.c.id == bindparam("b_id")).values(
            status=SENT, attempts=d.c.attempts + 1, updated_at=bindparam("b_now"),
            next_attempt_at=None, claimed_until=None, claimed_by=None, smtp_reply=None,
        ).compile(dialect=self._engine.dialect)
        self._sql = str(compiled)
        self._params = dict(compiled.params)
        # What record() raises when the database cannot take the mark.
        self.errors: tuple[type[Exception], ...] = (
            SQLAlchemyError, self._engine.dialect.loaded_dbapi.Error)

    def record(self, delivery_id: int) -> None:
        """Mark one delivery sent and committed; raises one of :attr:`errors`."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            with self._lock:
                self._connections.append(connection)
            connection.exec_driver_sql("SET synchronous_commit = off")
            cursor = self._local.cursor = connection.connection.cursor()
        # The column stores naive UTC (see UTCDateTime), which this path must do by hand.
        now = self._clock().astimezone(UTC).replace(tzinfo=None)
        cursor.execute(self._sql, {**self._params, "b_id": delivery_id, "b_now": now})

    def close(self) -> None:
        """Close every thread's connection (call once the threads are done)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with suppress(SQLAlchemyError):
                connection.close()
        self._engine.dispose()


class _CampaignRun:
    """One run of one campaign: a feeding thread (the caller's, the only one touching the
    database except for the 250 marks on PostgreSQL) and ``connections`` sender threads, each
    with its own SMTP connection."""

    def __init__(self, session: Session, services: Services, campaign: Any,
                 lock: SendLock, options: SendOptions, progress: Progress) -> None:
        self.session = session
        self.services = services
        self.clock = services.clock
        self.campaign_id: int = campaign.id
        self.options = options
        self.progress = progress
        self.lock = lock
        self.shared = lock.shared  # other senders may be working on this campaign too
        self.sender_address = str(services.config["MAIL_FROM"])
        rendered = RenderedEmail(subject=campaign.subject, html=campaign.html, text=campaign.text)
        self.template = campaign_template(services, rendered, campaign.created_at)
        self.reader = ReaderFactory(services, campaign.id, campaign.content_hash)
        self.report = SendReport(campaign_id=campaign.id, subject=campaign.subject)
        self.limiter = RateLimiter(options.rate)
        self.stop = threading.Event()
        self.work: queue.Queue[_Work | None] = queue.Queue(maxsize=8 * options.connections)
        self.outcomes: deque[_Outcome] = deque()  # appended by senders, drained by the feeder
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._retry_due: dict[int, float] = {}  # deferred this run: id -> monotonic due time
        self._retries: dict[int, int] = {}  # in-run retries so far per id
        self._deferred: set[int] = set()
        self._done = 0
        self._last_flush = time.monotonic()
        self._thread_error: BaseException | None = None
        self.journal: Journal | None = None
        self.sender_id = ""
        self.marks: _DatabaseMarks | None = None
        self._lease_seconds = options.lease.total_seconds()
        # Monotonic times: no message is started after the fence (our lease may be running
        # out), and the next lease renewal. Never, with the exclusive lock.
        self._fence = math.inf
        self._next_renewal = math.inf
        # Messages handed out and not yet done, by delivery id, whose readers' status the
        # feeder reads again; the senders wait on ``_checked`` for a fresh enough check.
        self._pending: dict[int, _Work] = {}
        self._checked = threading.Condition()
        self._check_wanted = threading.Event()
        self._last_check = -math.inf
        self._claimed_at = -math.inf  # when the last claim (which reads the status) began
        # The brake: the current run of identical refusals, and the one that stopped the run.
        self._streak: list[_Outcome] = []
        self._streak_key: str | None = None
        self._streak_domains: set[str] = set()
        self._braked: str | None = None

    # the feeding side (the caller's thread)

    def execute(self) -> SendReport:
        started = time.monotonic()
        report = self.report
        report.total = self._count_due()
        self.progress.start(report)
        self.journal = Journal(self.lock.directory)
        self.sender_id = self.journal.sender_id
        if self.shared:
            assert self.lock.engine is not None
            self.marks = _DatabaseMarks(self.lock.engine, self.clock)
            self._lease_renewed(time.monotonic())  # every claim from now on ends later
        threads = [threading.Thread(target=self._sender, name=f"smtp-{n + 1}", daemon=True)
                   for n in range(self.options.connections)]
        committed = False
        try:
            for thread in threads:
                thread.start()
            self._feed()
        except BaseException:
            # Ctrl-C or a database error: each sender finishes the message in its hands
            # (journal and all), then the outcomes so far are written below.
            self.stop.set()
            self.session.rollback()
            raise
        finally:
            self._shut_down(threads)
            try:
                self._flush()
                self._finish()
                committed = True
            finally:
                if self.marks is not None:
                    self.marks.close()
                # Remove the journal only once everything in it is committed; otherwise the
                # next run folds it in (and releases this sender's claims).
                self.journal.close(remove=committed)
                report.elapsed = time.monotonic() - started
                self.progress.finish(report)
        if self._thread_error is not None:
            raise SendError(f"a sender thread failed: {self._thread_error!r}") \
                from self._thread_error
        return report

    def _feed(self) -> None:
        """Pass over the queued rows (and deferred ones now due) in id order, retry this run's
        4xx deliveries after their backoff, then (with other senders) take over what a dead
        sender left until nothing is held elsewhere."""
        for status in (QUEUED, DEFERRED):
            self._pass(status)
        self._drain()
        while not self.stop.is_set():
            self._retry_deferred()
            if not (self.shared and self._take_over()):
                return

    def _pass(self, status: str) -> int:
        """Claim and hand out every row of ``status`` nobody holds, in id order; returns how
        many."""
        after = taken = 0
        while not self.stop.is_set():
            rows = self._claim(status=status, after=after)
            if not rows:
                break
            after = rows[-1].id
            taken += len(rows)
            self._dispatch(rows)
        return taken

    def _retry_deferred(self) -> None:
        """Retry this run's 4xx deliveries once their backoff has passed."""
        while self._retry_due and not self.stop.is_set():
            due = min(self._retry_due.values())
            while not self.stop.is_set() and time.monotonic() < due:
                self.stop.wait(min(due - time.monotonic(), self.options.flush_interval))
                self._flush()
                self._renew_if_due()
            now = time.monotonic()
            ids = sorted(i for i, when in self._retry_due.items() if when <= now)
            for delivery_id in ids:
                del self._retry_due[delivery_id]
            for chunk in _chunks(ids, self.options.claim_size()):
                if self.stop.is_set():
                    break
                self._dispatch(self._claim(ids=chunk))
            self._drain()

    def _take_over(self) -> bool:
        """Wait while other senders hold queued rows of this campaign, taking any whose sender
        died (its lease ran out, or its journal on this machine is unlocked). True once some
        were taken and sent (they may need retries), False when none is held elsewhere."""
        poll = min(1.0, self._lease_seconds / 4)
        seen, since = -1, time.monotonic()
        while not self.stop.is_set():
            fold_journals(self.session, self.lock.directory, self.clock())
            if self._pass(QUEUED):
                self._drain()
                return True
            held = self._held_elsewhere()
            if not held:
                return False
            now = time.monotonic()
            if held != seen:
                seen, since = held, now
            elif now - since > 2 * self._lease_seconds:
                # Renewed all along but not moving: leave them to their sender or a later run.
                log.warning("%d deliveries held by another sender have not moved for %.0fs; "
                            "leaving them to it", held, now - since)
                return False
            deadline = now + poll
            while not self.stop.is_set() and time.monotonic() < deadline:
                self.stop.wait(min(self.options.flush_interval, deadline - time.monotonic()))
                self._tick()
        return False

    def _held_elsewhere(self) -> int:
        d = _deliveries
        now, _ = self._lease_clock()
        held = self.session.scalar(select(func.count()).select_from(d).where(
            d.c.campaign_id == self.campaign_id, d.c.status == QUEUED,
            d.c.claimed_until >= now,
            or_(d.c.claimed_by.is_(None), d.c.claimed_by != self.sender_id))) or 0
        self.session.commit()
        return held

    def _lease_clock(self) -> tuple[Any, Any]:
        """(now, the end of a lease taken now) in the one clock all senders compare: the
        database server's on PostgreSQL (machines' clocks may differ), ours on SQLite."""
        if self.shared:
            now = "(statement_timestamp() AT TIME ZONE 'UTC')"
            return (literal_column(now),
                    literal_column(f"{now} + interval '{self._lease_seconds:.3f} seconds'"))
        current = self.clock()
        return current, current + self.options.lease

    def _claim(self, *, status: str = QUEUED, after: int = 0,
               ids: Sequence[int] | None = None) -> Sequence[Any]:
        """Claim the next batch: rows nobody holds, locked against other senders, with the
        reader's current status (a reader who left since planning is skipped)."""
        d, s = _deliveries, _subscribers
        now, until = self._lease_clock()
        self.session.commit()  # read the readers' status afresh, not from an older snapshot
        self._claimed_at = time.monotonic()
        query = (
            select(d.c.id, d.c.subscriber_id, d.c.attempts, d.c.deferred_since,
                   s.c.email, s.c.name, s.c.status.label("reader_status"))
            .join_from(d, s, d.c.subscriber_id == s.c.id)
            .where(d.c.campaign_id == self.campaign_id,
                   or_(d.c.claimed_until.is_(None), d.c.claimed_until < now))
        )
        if ids is not None:
            query = query.where(d.c.id.in_(ids), d.c.status == DEFERRED)
        else:
            query = query.where(d.c.status == status, d.c.id > after)
            if status == DEFERRED:
                query = query.where(d.c.next_attempt_at <= self.clock())
        query = (query.order_by(d.c.id).limit(self.options.claim_size())
                 .with_for_update(skip_locked=True, of=d))
        rows = self.session.execute(query).all()
        if rows:
            self.session.execute(update(d).where(d.c.id.in_([r.id for r in rows]))
                                 .values(claimed_until=until, claimed_by=self.sender_id))
        self.session.commit()
        return rows

    def _renew_if_due(self) -> None:
        """Extend the lease on every row this sender still holds (PostgreSQL)."""
        if time.monotonic() < self._next_renewal:
            return
        started = time.monotonic()
        _, until = self._lease_clock()
        d = _deliveries
        self.session.execute(update(d).where(
            d.c.campaign_id == self.campaign_id, d.c.status.in_((QUEUED, DEFERRED)),
            d.c.claimed_by == self.sender_id).values(claimed_until=until))
        self.session.commit()
        self._lease_renewed(started)

    def _lease_renewed(self, at: float) -> None:
        # The database set the lease no earlier than ``at``: it holds until at + lease. Stop
        # starting messages at half of that, so one in progress ends long before.
        self._fence = at + self._lease_seconds / 2
        self._next_renewal = at + self._lease_seconds / 6

    def _dispatch(self, rows: Iterable[Any]) -> None:
        for row in rows:
            if row.reader_status != CONFIRMED or not row.email:
                self.outcomes.append(_Outcome(SKIPPED, row.id))
                continue
            self._put(_Work(row.id, row.subscriber_id, row.email, row.name, row.attempts,
                            row.deferred_since, checked_at=self._claimed_at))
        self._tick()

    def _put(self, item: _Work) -> None:
        with self._in_flight_lock:
            self._in_flight += 1
        with self._checked:
            self._pending[item.delivery_id] = item
        while not self.stop.is_set():
            try:
                self.work.put(item, timeout=0.1)
                return
            except queue.Full:
                self._tick()
        with self._in_flight_lock:
            self._in_flight -= 1
        with self._checked:
            self._pending.pop(item.delivery_id, None)

    def _drain(self) -> None:
        """Wait until the senders have finished every item handed out, writing as we go."""
        while self._in_flight and not self.stop.is_set():
            time.sleep(0.01)
            self._tick()
        self._flush()

    def _tick(self) -> None:
        """What the feeder does while it waits: write outcomes, renew the lease when due, read
        again the status of the readers whose messages wait."""
        self._flush_if_due()
        self._renew_if_due()
        self._check_readers_if_due()

    def _check_readers_if_due(self) -> None:
        """One indexed query for every waiting message's reader: those who left since their
        row was claimed are marked withdrawn, and the sender skips them."""
        started = time.monotonic()
        if not (self._check_wanted.is_set()
                or started - self._last_check >= self.options.status_check_age / 2):
            return
        self._check_wanted.clear()
        self._last_check = started
        with self._checked:
            items = list(self._pending.values())
        if not items:
            return
        s = _subscribers
        self.session.commit()  # a fresh snapshot: see withdrawals committed until now
        gone: set[int] = set()
        for chunk in _chunks(sorted({item.subscriber_id for item in items})):
            gone.update(self.session.scalars(select(s.c.id).where(
                s.c.id.in_(chunk), or_(s.c.status != CONFIRMED, s.c.email.is_(None)))))
        self.session.commit()
        with self._checked:
            for item in items:
                item.withdrawn = item.withdrawn or item.subscriber_id in gone
                item.checked_at = max(item.checked_at, started)
            self._checked.notify_all()

    def _flush_if_due(self) -> None:
        if (len(self.outcomes) >= self.options.batch_size
                or time.monotonic() - self._last_flush >= self.options.flush_interval):
            self._flush()

    def _flush(self) -> None:
        """Write the outcomes gathered so far: one bulk UPDATE per status, one commit."""
        self._last_flush = time.monotonic()
        if not self.outcomes:
            return
        batch: list[_Outcome] = []
        while self.outcomes:
            batch.append(self.outcomes.popleft())
        now = self.clock()
        sent = [o.delivery_id for o in batch if o.status == SENT and not o.in_db]
        skipped = [o.delivery_id for o in batch if o.status == SKIPPED]
        requeue = self._brake(batch)
        replies = [o for o in batch if o.status in (FAILED, DEFERRED) and not o.requeue]
        d = _deliveries
        mark_sent(self.session, sent, now)
        for chunk in _chunks(skipped):
            self.session.execute(update(d).where(d.c.id.in_(chunk)).values(
                status=SKIPPED, updated_at=now, claimed_until=None, claimed_by=None,
                next_attempt_at=None))
        if replies:
            self.session.execute(
                update(d).where(d.c.id == bindparam("b_id")).values(
                    status=bindparam("b_status"), attempts=d.c.attempts + 1,
                    smtp_reply=bindparam("b_reply"), deferred_since=bindparam("b_since"),
                    next_attempt_at=bindparam("b_next"), updated_at=now, claimed_until=None,
                    claimed_by=None),
                [{"b_id": o.delivery_id, "b_status": o.status, "b_reply": o.reply,
                  "b_since": o.deferred_since,
                  "b_next": (now + backoff(o.attempts + 1, self.options.retry_delay)
                             if o.status == DEFERRED else None)} for o in replies])
        if requeue:
            # Back in the queue, as if never tried: the server was at fault, not the reader.
            self.session.execute(
                update(d).where(d.c.id == bindparam("b_id")).values(
                    status=QUEUED, smtp_reply=bindparam("b_reply"), next_attempt_at=None,
                    updated_at=now, claimed_until=None, claimed_by=None),
                [{"b_id": o.delivery_id, "b_reply": o.reply} for o in requeue])
        self.session.commit()
        self._count(batch)

    def _brake(self, batch: Sequence[_Outcome]) -> list[_Outcome]:
        """Watch for a broken server: BRAKE_RUN identical refusals in a row at BRAKE_DOMAINS
        mail domains or more stop the run. Returns the outcomes to put back in the queue
        (the whole run of them, some written and counted by earlier batches)."""
        requeue: list[_Outcome] = []
        for outcome in batch:
            if outcome.status not in (FAILED, DEFERRED):
                if self._braked is None:
                    self._streak, self._streak_key, self._streak_domains = [], None, set()
                continue
            if outcome.unknown:
                continue  # no reply at all: says nothing about what the server answers
            key = _ADDRESS_IN_REPLY.sub("<address>", outcome.reply or "").strip().lower()
            if self._braked is not None:
                if key == self._braked:  # messages that were in flight when it stopped
                    outcome.requeue = True
                    requeue.append(outcome)
                continue
            if key != self._streak_key:
                self._streak, self._streak_key, self._streak_domains = [], key, set()
            self._streak.append(outcome)
            self._streak_domains.add(outcome.domain)
            if len(self._streak) >= BRAKE_RUN and len(self._streak_domains) >= BRAKE_DOMAINS:
                self._braked = key
                in_batch = {id(o) for o in batch}
                for earlier in self._streak:
                    if id(earlier) not in in_batch:
                        self._uncount(earlier)
                    earlier.requeue = True
                requeue.extend(self._streak)
                self._halt(
                    f"the SMTP server answered '{outcome.reply}' to {len(self._streak)} "
                    f"readers in a row at {len(self._streak_domains)} domains, so the fault is "
                    "the server's (a full disk, a suspended account, a quota), not theirs; "
                    "nothing was marked failed: those deliveries and the rest stay queued. Fix "
                    "the cause with the server or its operator, then send again")
        return requeue

    def _uncount(self, outcome: _Outcome) -> None:
        """Take back an outcome counted by an earlier batch (the brake requeued it)."""
        if outcome.status == FAILED:
            self.report.failed -= 1
        else:
            self._deferred.discard(outcome.delivery_id)
            self._retry_due.pop(outcome.delivery_id, None)
        self._done -= 1

    def _count(self, batch: Sequence[_Outcome]) -> None:
        report = self.report
        for outcome in batch:
            if outcome.requeue:
                continue
            delivery_id = outcome.delivery_id
            retry = delivery_id in self._deferred
            self._deferred.discard(delivery_id)
            if outcome.status == SENT:
                report.sent += 1
            elif outcome.status == SKIPPED:
                report.skipped += 1
            elif outcome.status == FAILED:
                report.failed += 1
            else:
                self._deferred.add(delivery_id)
                tries = self._retries.get(delivery_id, 0)
                if tries < IN_RUN_RETRIES and not outcome.unknown:
                    self._retries[delivery_id] = tries + 1
                    self._retry_due[delivery_id] = (
                        time.monotonic() + self.options.retry_delay * 2 ** tries)
            if not retry:
                self._done += 1
        report.deferred = len(self._deferred)
        self.progress.update(min(self._done, report.total))

    def _count_due(self) -> int:
        d = _deliveries
        now = self.clock()
        return self.session.scalar(
            select(func.count()).select_from(d).where(
                d.c.campaign_id == self.campaign_id,
                or_(d.c.status == QUEUED, (d.c.status == DEFERRED) & (d.c.next_attempt_at <= now)))
        ) or 0

    def _shut_down(self, threads: Sequence[threading.Thread]) -> None:
        """Let every sender finish the message in its hands, then stop it."""
        if self.stop.is_set():
            # Items still waiting in the queue are not sent; their claims are released below.
            with suppress(queue.Empty):
                while True:
                    self.work.get_nowait()
        for _ in threads:
            self.work.put(None)
        for thread in threads:
            thread.join()

    def _finish(self) -> None:
        """Release this sender's unworked claims; the campaign is sent when no row is left."""
        d = _deliveries
        self.session.execute(update(d).where(d.c.campaign_id == self.campaign_id,
                                             d.c.claimed_by == self.sender_id)
                             .values(claimed_until=None, claimed_by=None))
        settle_campaign(self.session, self.report, self.clock())

    # the sending side (one thread per connection)

    def _sender(self) -> None:
        transport = self.services.open_transport()
        try:
            while True:
                item = self.work.get()
                if item is None:
                    return
                try:
                    self._deliver(item, transport)
                finally:
                    with self._checked:
                        self._pending.pop(item.delivery_id, None)
                    with self._in_flight_lock:
                        self._in_flight -= 1
        except BaseException as err:  # a bug: stop the run and let the caller raise it
            self._thread_error = err
            self.stop.set()
            log.exception("sender thread failed")
        finally:
            transport.close()

    def _deliver(self, item: _Work, transport: Transport) -> None:
        """Send one message, reconnecting after drops, until it has an outcome or the run
        stops (it then stays queued). A message whose outcome became unknown, or whose
        exchange failed on two connections in a row (a 421 or a hang-up before the final dot),
        is deferred instead: one reader never holds up the list."""
        failures = 0
        refused = 0  # exchanges of this message that failed after connecting
        delay = self.options.reconnect_delay
        while not self.stop.is_set():
            connected = False
            try:
                eight_bit = connect_transport(transport)
                connected = True
                reader = self.reader(item.subscriber_id, item.email, item.name)
                send_prepared = getattr(transport, "send_prepared", None)
                if send_prepared is not None:
                    data = self.template.personalise_for_smtp(reader, eight_bit=eight_bit)
                else:
                    data = self.template.personalise(reader, eight_bit=eight_bit)
                self._wait_for_lease()
                self.limiter.wait(self.stop)
                if not self._status_checked(item):
                    return
                if item.withdrawn:
                    self.outcomes.append(_Outcome(SKIPPED, item.delivery_id))
                    return
                (send_prepared or transport.send)(self.sender_address, item.email, data)
            except SmtpOutcomeUnknown as err:
                # The server may have it (RFC 5321 4.1.1.4): sending it again at once could
                # mail a copy per try. Deferred: the next run tries once more, after backoff.
                self.outcomes.append(self._deferral(
                    item, f"{err}; tried again by a later run", unknown=True))
                return
            except SmtpRejected as err:
                self.outcomes.append(self._rejected(item, err))
                return
            except SmtpConfigProblem as err:
                self._halt(str(err))
                return
            except SmtpUnavailable as err:
                # Not taken (the final dot never went out): it stays ours and goes again, once
                # more on a fresh connection; failing there too, it may be about this reader.
                if connected:
                    refused += 1
                    if refused >= 2:
                        self.outcomes.append(self._deferral(
                            item, f"{err.code} {err.reply or ''}".strip() if err.code
                            else str(err)))
                        return
                failures += 1
                if failures >= self.options.max_connection_failures:
                    self._halt(f"stopped after {failures} failed attempts in a row to reach "
                               f"the SMTP server ({err}); the rest stay queued")
                    return
                log.warning("SMTP connection problem (%s); reconnecting in %.2fs", err, delay)
                self.stop.wait(delay)
                delay *= 2
                continue
            self._record_sent(item.delivery_id)
            return

    def _status_checked(self, item: _Work) -> bool:
        """Wait until the reader's status was read at most ``status_check_age`` seconds ago
        (the feeder does it); False if the run stops meanwhile."""
        ready = time.monotonic()
        with self._checked:
            while item.checked_at < ready - self.options.status_check_age:
                if self.stop.is_set():
                    return False
                self._check_wanted.set()
                self._checked.wait(0.05)
        return not self.stop.is_set()

    def _wait_for_lease(self) -> None:
        """Start no message while this sender's lease may be running out (its renewals have
        stopped): another sender could take the row over and send it too."""
        while time.monotonic() > self._fence and not self.stop.is_set():
            self.stop.wait(0.05)

    def _record_sent(self, delivery_id: int) -> None:
        """Write a 250 down before anything else: a kill from here on loses nothing."""
        if self.marks is None:
            assert self.journal is not None
            self.journal.record(delivery_id)
            self.outcomes.append(_Outcome(SENT, delivery_id))
            return
        try:
            self.marks.record(delivery_id)
        except self.marks.errors as err:
            # The feeder writes it with the batch if it still can; else it is this
            # connection's one message in flight, sent again later.
            self._halt(f"cannot record deliveries in the database ({err.__class__.__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}); the rest stay queued")
            self.outcomes.append(_Outcome(SENT, delivery_id))
            return
        self.outcomes.append(_Outcome(SENT, delivery_id, in_db=True))

    def _rejected(self, item: _Work, err: SmtpRejected) -> _Outcome:
        reply = f"{err.code} {err.reply or ''}".strip()
        if not err.temporary:
            return _Outcome(FAILED, item.delivery_id, reply, item.attempts,
                            domain=_domain(item.email))
        return self._deferral(item, reply)

    def _deferral(self, item: _Work, reply: str, *, unknown: bool = False) -> _Outcome:
        """Deferred with ``reply``, or failed once the give-up age has passed."""
        now = self.clock()
        since = item.deferred_since or now
        if now - since >= self.options.give_up_after:
            hours = self.options.give_up_after.total_seconds() / 3600
            return _Outcome(FAILED, item.delivery_id,
                            f"gave up after {hours:g} hours of temporary failures: {reply}",
                            item.attempts, since, domain=_domain(item.email))
        return _Outcome(DEFERRED, item.delivery_id, reply, item.attempts, since,
                        unknown=unknown, domain=_domain(item.email))

    def _halt(self, reason: str) -> None:
        if self.report.error is None:
            self.report.error = reason
        self.stop.set()


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def send_campaign(session: Session, services: Services, campaign_id: int, *, lock: SendLock,
                  options: SendOptions | None = None,
                  progress: Progress | None = None) -> SendReport:
    """Send what is left of a campaign: queued rows and deferred rows now due, and (with the
    shared lock, PostgreSQL) rows other senders held when they died.

    Needs the send lock; folds in what an interrupted run left first. Never raises for SMTP
    trouble: a run stopped by it has ``report.error`` set and leaves the rest queued.
    """
    if not lock.held:
        raise SendError("send_campaign() needs the send lock")
    if not lock.recovered:
        # Rows a killed run delivered are still queued until its journal is folded in.
        recover(session, lock, services.clock())
    c = _campaigns
    campaign = session.execute(
        select(c.c.id, c.c.subject, c.c.html, c.c.text, c.c.created_at, c.c.status,
               c.c.content_hash).where(c.c.id == campaign_id)).one_or_none()
    session.commit()
    if campaign is None:
        raise CampaignNotFound(f"there is no campaign {campaign_id}; `newsletter campaigns` "
                               "lists them")
    if campaign.status == SENT:
        return SendReport(campaign_id=campaign_id, subject=campaign.subject, finished=True)
    run = _CampaignRun(session, services, campaign, lock,
                       options or SendOptions.from_config(services.config),
                       progress or _NoProgress())
    return run.execute()


def settle_campaign(session: Session, report: SendReport, now: datetime) -> None:
    """Put what is left of the report's campaign into it (still queued, deferred) and mark the
    campaign sent when no row is left to try; commits."""
    d = _deliveries
    counts: dict[str, int] = dict(session.execute(
        select(d.c.status, func.count()).where(d.c.campaign_id == report.campaign_id,
                                               d.c.status.in_((QUEUED, DEFERRED)))
        .group_by(d.c.status)).all())
    report.left = counts.get(QUEUED, 0)
    # Every delivery still waiting for a retry, including ones deferred by earlier runs.
    report.deferred = counts.get(DEFERRED, 0)
    if not counts:
        session.execute(update(_campaigns).where(
            _campaigns.c.id == report.campaign_id, _campaigns.c.status != SENT)
            .values(status=SENT, finished_at=now))
        report.finished = True
    session.commit()


def retry_failed(session: Session, kind: str, now: datetime) -> tuple[int, int] | None:
    """Put the ``failed`` deliveries of the latest campaign of ``kind`` back in the queue (and
    the campaign back to sending), once the cause is fixed; commits. Returns (campaign id,
    deliveries moved), or None when there is no such campaign. Readers who left meanwhile
    are skipped when their turn comes, as always."""
    c, d = _campaigns, _deliveries
    latest = session.scalar(select(c.c.id).where(c.c.kind == kind)
                            .order_by(c.c.id.desc()).limit(1))
    if latest is None:
        session.rollback()
        return None
    result = session.execute(update(d).where(d.c.campaign_id == latest, d.c.status == FAILED)
                             .values(status=QUEUED, next_attempt_at=None, deferred_since=None,
                                     claimed_until=None, claimed_by=None, updated_at=now))
    moved = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if moved:
        session.execute(update(c).where(c.c.id == latest)
                        .values(status=SENDING, finished_at=None))
    session.commit()
    log.info("moved %d failed deliveries of campaign %d back to the queue", moved, latest)
    return latest, moved


def unfinished_campaigns(session: Session, kind: str | None = None) -> list[int]:
    """Ids of campaigns still being sent, oldest first (the order senders work them off)."""
    query = select(_campaigns.c.id).where(_campaigns.c.status == SENDING)
    if kind is not None:
        query = query.where(_campaigns.c.kind == kind)
    return list(session.scalars(query.order_by(_campaigns.c.id)))


def send_unfinished(session: Session, services: Services, *, lock: SendLock,
                    kind: str | None = DIGEST, options: SendOptions | None = None,
                    progress: Progress | None = None) -> list[SendReport]:
    """Send what is left of every unfinished campaign (of ``kind``), oldest first, stopping
    after one that SMTP trouble stopped. Other senders may be at it too (PostgreSQL)."""
    if not lock.recovered:
        recover(session, lock, services.clock())
    reports = []
    for campaign_id in unfinished_campaigns(session, kind):
        report = send_campaign(session, services, campaign_id, lock=lock, options=options,
                               progress=progress)
        reports.append(report)
        if report.error:
            break  # SMTP trouble: the later ones wait for the next run
    return reports


# --- several sender processes on one machine (send-digest --workers N) -----------------------


class WorkerProgress:
    """A worker process's progress as JSON lines on ``stream`` (its stdout, read by the
    parent's :class:`SenderProcesses`)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream: IO[str] | None = stream

    def _emit(self, event: str, **values: Any) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(json.dumps({"event": event, **values}) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            # The parent is gone (killed, or its terminal closed): keep sending what this
            # worker holds, with nobody left to tell.
            self._stream = None

    def start(self, report: SendReport) -> None:
        self._emit("start", report=report.as_dict())

    def update(self, done: int) -> None:
        self._emit("update", done=done)

    def finish(self, report: SendReport) -> None:
        self._emit("finish", report=report.as_dict())


@dataclass
class _Merged:
    """One campaign as several workers report it."""

    report: SendReport
    done: dict[int, int] = field(default_factory=dict)  # worker -> messages done
    started: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)


class SenderProcesses:
    """``count`` sender processes on this machine, each running ``argv``: a ``send-digest``
    worker that sends every unfinished digest (as :func:`send_unfinished`) and reports through
    :class:`WorkerProgress`. Their progress is added up and their reports merged."""

    def __init__(self, argv: Sequence[str], count: int) -> None:
        self.argv = list(argv)
        self.count = count

    def run(self, session: Session, services: Services, progress: Progress) -> list[SendReport]:
        """Start the workers, relay their progress, wait for them all; one report per campaign
        (sent, failed and skipped added up; what is left counted afresh). Raises SendError if
        every worker failed before reporting anything."""
        processes = [subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
                     for _ in range(self.count)]
        events: queue.Queue[tuple[int, str | None]] = queue.Queue()
        readers = [threading.Thread(target=_relay_lines, args=(n, p.stdout, events), daemon=True)
                   for n, p in enumerate(processes)]
        for reader in readers:
            reader.start()
        merged: dict[int, _Merged] = {}
        current: dict[int, int] = {}  # worker -> campaign it is on
        try:
            self._follow(events, merged, current, progress)
        except KeyboardInterrupt:
            # At a terminal the workers got the Ctrl-C too; elsewhere pass it on. Each then
            # finishes the messages in hand and writes everything down.
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            for process in processes:
                process.wait()
            raise
        for process in processes:
            process.wait()
        problems = [(n, _ended(process)) for n, process in enumerate(processes)
                    if process.returncode != 0]
        if not merged:
            if problems:
                raise SendError("; ".join(problem for _, problem in problems))
            return []
        last = max(merged)
        for n, problem in problems:
            entry = merged[current.get(n, last)]
            if entry.report.error is None:
                entry.report.error = problem
        reports = [merged[campaign_id].report for campaign_id in sorted(merged)]
        for report in reports:
            settle_campaign(session, report, services.clock())
        return reports

    def _follow(self, events: queue.Queue[tuple[int, str | None]], merged: dict[int, _Merged],
                current: dict[int, int], progress: Progress) -> None:
        """Add up what the workers say until every one has closed its output."""
        open_outputs = self.count
        active: _Merged | None = None  # the campaign the progress display shows
        while open_outputs:
            worker, line = events.get()
            if line is None:
                open_outputs -= 1
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                log.warning("sender %d: %s", worker + 1, line.rstrip())
                continue
            if event["event"] == "start":
                started = SendReport.from_dict(event["report"])
                entry = merged.setdefault(started.campaign_id, _Merged(
                    SendReport(campaign_id=started.campaign_id, subject=started.subject)))
                entry.report.total = max(entry.report.total, started.total)
                entry.started.add(worker)
                current[worker] = started.campaign_id
                if active is not entry:
                    if active is not None:
                        progress.finish(active.report)
                    active = entry
                    progress.start(entry.report)
            elif event["event"] == "update":
                entry = merged[current[worker]]
                entry.done[worker] = int(event["done"])
                if entry is active:
                    progress.update(min(sum(entry.done.values()), entry.report.total))
            elif event["event"] == "finish":
                finished = SendReport.from_dict(event["report"])
                entry = merged[finished.campaign_id]
                total = entry.report
                total.sent += finished.sent
                total.failed += finished.failed
                total.skipped += finished.skipped
                total.elapsed = max(total.elapsed, finished.elapsed)
                total.error = total.error or finished.error
                entry.finished.add(worker)
                if entry is active and entry.finished >= entry.started:
                    progress.finish(total)
                    active = None
        if active is not None:
            progress.finish(active.report)


def _relay_lines(worker: int, output: IO[str] | None,
                 events: queue.Queue[tuple[int, str | None]]) -> None:
    """Pass a worker's output lines on, then None when it closes."""
    if output is not None:
        with output:
            for line in output:
                events.put((worker, line))
    events.put((worker, None))


def _ended(process: subprocess.Popen[str]) -> str:
    code = process.returncode
    how = f"was killed by signal {-code}" if code < 0 else f"stopped with exit status {code}"
    return (f"a sender process (pid {process.pid}) {how} (what it sent is not counted above); "
            "what it held went to the other senders, and anything left goes with the next run")


# --- the digest, from posts to sent ----------------------------------------------------------


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


def send_digest(session: Session, services: Services, *, lock: SendLock,
                options: SendOptions | None = None, progress: Progress | None = None,
                confirm: Confirm | None = None,
                senders: SenderProcesses | None = None) -> DigestRun:
    """Sync posts, compose the digest of new posts and plan one delivery per confirmed reader
    (only one process at a time does this), then send every unfinished digest, oldest first:
    one an earlier run left, the new one, and one another sender composed meanwhile (several
    senders share the work on PostgreSQL). With ``senders``, those processes send instead.

    Raises SmtpConfigProblem / SmtpUnavailable when the server cannot be used at all (before
    anything is planned), TemplateProblem for a broken template.
    """
    run = DigestRun()
    if not lock.recovered:
        recover(session, lock, services.clock())
    check_smtp(services)
    with lock.composing():
        try:
            new_id = _compose_digest(session, services, run, confirm)
        except BaseException:
            session.rollback()  # nothing half-made survives the composing lock
            raise
    session.expunge_all()  # nothing from the ORM is kept while sending
    if senders is None:
        reports = send_unfinished(session, services, lock=lock, options=options,
                                  progress=progress)
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


def _compose_digest(session: Session, services: Services, run: DigestRun,
                    confirm: Confirm | None) -> int | None:
    """Sync the posts and, if any are new, create the digest campaign and plan its deliveries
    in one transaction; returns its id. Why nothing was composed goes into ``run``."""
    from . import digest, posts

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
    campaign = digest.create_digest_campaign(session, services, chosen)
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
    from . import digest

    d = _deliveries
    unfinished = []
    for campaign_id in unfinished_campaigns(session, DIGEST):
        subject = session.scalar(select(_campaigns.c.subject)
                                 .where(_campaigns.c.id == campaign_id)) or ""
        left = session.scalar(select(func.count()).select_from(d).where(
            d.c.campaign_id == campaign_id, d.c.status.in_((QUEUED, DEFERRED)))) or 0
        unfinished.append((campaign_id, subject, left))
    chosen = digest.select_digest_posts(session, services)
    subject = digest.subject_of(chosen, services.config) if chosen else None
    plan = DigestPlan(unfinished, subject, [p.title for p in chosen], confirmed_readers(session))
    session.rollback()
    return plan


TEST_UNSUBSCRIBE_PATH = "unsubscribe/test-send"


def send_test_digest(session: Session, services: Services, address: str) -> str | None:
    """Sync posts and send the next digest to ``address`` only; returns its subject, or None
    when nothing is new. Creates no campaign and marks nothing.

    Raises InvalidAddress, PostSourceError, TemplateProblem or an SmtpProblem.
    """
    from . import digest, posts
    from .addresses import normalise_address

    address = normalise_address(address)
    posts.sync_posts(session, services)
    chosen = digest.select_digest_posts(session, services)
    if not chosen:
        return None
    rendered = digest.render_digest(chosen, services)
    send_test_copy(session, services, rendered, address)
    return rendered.subject


def send_test_copy(session: Session, services: Services, rendered: RenderedEmail,
                   address: str) -> None:
    """Send one copy of a campaign's email to ``address`` as a test, marking nothing. A reader
    testing gets their own working unsubscribe link; anyone else a harmless test one."""
    template = campaign_template(services, rendered, services.clock())
    reader = session.execute(select(_subscribers.c.id, _subscribers.c.name)
                             .where(_subscribers.c.email == address)).one_or_none()
    session.rollback()
    if reader is not None:
        unsubscribe = services.public_url(
            f"unsubscribe/{services.tokens.unsubscribe_token(reader.id)}")
    else:
        unsubscribe = services.public_url(TEST_UNSUBSCRIBE_PATH)
    name = reader.name if reader is not None else None
    domain = str(services.config["MAIL_FROM"]).rpartition("@")[2] or "localhost"
    parts = ReaderParts(recipient=address, unsubscribe_url=unsubscribe,
                        message_id=make_msgid("test", domain=domain),
                        greeting=reader_greeting(name), name=name)
    transport = services.open_transport()
    try:
        data = template.personalise(parts, eight_bit=connect_transport(transport))
        transport.send(str(services.config["MAIL_FROM"]), address, data)
    finally:
        transport.close()


# --- looking back: campaigns and their counts ------------------------------------------------


@dataclass(frozen=True)
class CampaignSummary:
    """One campaign with its deliveries counted by status."""

    id: int
    kind: str
    subject: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class DeliveryProblem:
    """A failed or deferred delivery and the server's words."""

    email: str | None
    status: str
    attempts: int
    reply: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class CampaignDetails:
    """A campaign's summary and its failed and deferred deliveries."""

    summary: CampaignSummary
    problems: list[DeliveryProblem]
    more_problems: int  # beyond the ones listed


def _counts(session: Session, campaign_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    d = _deliveries
    counts: dict[int, dict[str, int]] = {cid: {} for cid in campaign_ids}
    for chunk in _chunks(campaign_ids):
        for campaign_id, status, count in session.execute(
                select(d.c.campaign_id, d.c.status, func.count())
                .where(d.c.campaign_id.in_(chunk)).group_by(d.c.campaign_id, d.c.status)):
            counts[campaign_id][status] = count
    return counts


def list_campaigns(session: Session, limit: int | None = None) -> list[CampaignSummary]:
    """Every campaign, newest first, with its counts."""
    c = _campaigns
    query = (select(c.c.id, c.c.kind, c.c.subject, c.c.status, c.c.created_at, c.c.finished_at)
             .order_by(c.c.created_at.desc(), c.c.id.desc()))
    if limit:
        query = query.limit(limit)
    rows = session.execute(query).all()
    counts = _counts(session, [r.id for r in rows])
    return [CampaignSummary(*row, counts=counts[row.id]) for row in rows]


def fold_interrupted(session: Session, lock: SendLock, now: datetime) -> bool:
    """Make the counts exact before they are shown, after a sender was killed: fold in the
    journals it left and release its claims (what the next send does first), and mark sent a
    campaign with no row left to try.

    Takes the send lock only when there is a journal, and briefly. Returns False when another
    process holds it: a sender is running, which folded any leftovers when it started and
    writes its own marks as it goes, so the counts are live but a few seconds behind.
    """
    if not any(lock.directory.glob(JOURNAL_GLOB)):
        return True  # nothing left behind: the database has every mark
    try:
        lock.acquire()
    except SendInProgress:
        return False
    try:
        recover(session, lock, now)
        c, d = _campaigns, _deliveries
        waiting = select(d.c.id).where(d.c.campaign_id == c.c.id,
                                       d.c.status.in_((QUEUED, DEFERRED))).exists()
        session.execute(update(c).where(c.c.status == SENDING, ~waiting)
                        .values(status=SENT, finished_at=now))
        session.commit()
    finally:
        lock.release()
    return True


def describe_campaign(session: Session, campaign_id: int, limit: int = 100) -> CampaignDetails:
    """One campaign's counts and its failed and deferred deliveries with their replies."""
    c, d, s = _campaigns, _deliveries, _subscribers
    row = session.execute(select(c.c.id, c.c.kind, c.c.subject, c.c.status, c.c.created_at,
                                 c.c.finished_at).where(c.c.id == campaign_id)).one_or_none()
    if row is None:
        raise CampaignNotFound(f"there is no campaign {campaign_id}; `newsletter campaigns` "
                               "lists them")
    summary = CampaignSummary(*row, counts=_counts(session, [campaign_id])[campaign_id])
    problem = d.c.campaign_id == campaign_id, d.c.status.in_((FAILED, DEFERRED))
    problems = [DeliveryProblem(*r) for r in session.execute(
        select(s.c.email, d.c.status, d.c.attempts, d.c.smtp_reply, d.c.updated_at)
        .join_from(d, s, d.c.subscriber_id == s.c.id).where(*problem)
        .order_by(d.c.status.desc(), d.c.id).limit(limit))]
    total = summary.counts.get(FAILED, 0) + summary.counts.get(DEFERRED, 0)
    return CampaignDetails(summary, problems, max(0, total - len(problems)))

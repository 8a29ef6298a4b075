"""Who may send: the send lock, the journal of 250s and recovery after a crash."""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from sqlalchemy import text, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session

from ..models import DEFERRED, QUEUED
from .ledger import mark_sent
from .options import COMPOSE_WAIT, JOURNAL_GLOB, SendError, SendInProgressError, _deliveries, log


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
        SendInProgressError. A shared lock (PostgreSQL) is always granted."""
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
                    raise SendInProgressError(
                        "another send is running for this database"
                        + (f" ({holder})" if holder else "")
                        + "; wait for it to finish (it resumes any unfinished campaign), or "
                        "stop that process first"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0
        )
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
                text("SELECT pg_try_advisory_lock(:key, hashtext(current_schema()))"), key
            ):
                connection.commit()
                if time.monotonic() >= deadline:
                    raise SendInProgressError(
                        f"another process has been composing a campaign for over {wait:.0f}s; "
                        "run `newsletter send-digest` again once it is done (it joins in "
                        "sending whatever that process planned)"
                    )
                time.sleep(0.1)
            connection.commit()  # the lock is the session's; no transaction stays open
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key, hashtext(current_schema()))"), key
                )
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
    complete = data[: data.rfind(b"\n") + 1]
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
            log.info(
                "folded %d delivered id(s) and released %d claimed row(s) left by an "
                "interrupted sender (%s)",
                len(ids),
                released,
                path.name,
            )
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
    result = session.execute(
        update(d)
        .where(
            d.c.claimed_by.endswith(sender_suffix, autoescape=True),
            d.c.status.in_((QUEUED, DEFERRED)),
        )
        .values(claimed_until=None, claimed_by=None)
    )
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
        session.execute(
            update(_deliveries)
            .where(_deliveries.c.claimed_until.is_not(None))
            .values(claimed_until=None, claimed_by=None)
        )
    session.commit()
    lock.recovered = True
    return folded

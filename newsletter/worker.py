"""The worker: one long-running loop that sends the digest on its schedule (or asks the author
first), polls the posts, reads the bounce mailbox, sends the outbox, purges stale sign-ups daily
and runs queued jobs.

Several workers may run at once (two started by mistake on one machine, or one per machine on
PostgreSQL). Each schedule tick makes at most one digest: the first worker to insert the tick's
row into ``digest_ticks`` (its primary key is the tick's UTC time) composes it, under the send
lock's composing part, and the others only help send. Sending, resuming and the guarantees are
those of ``newsletter send-digest``: the same function does it.

Time is injected (a clock and a sleep function), so tests drive the loop without waiting. On
SIGTERM or SIGINT the worker stops claiming, lets each SMTP connection finish the message in
hand, writes everything down, releases what it held, and returns; a restart resumes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any
from zoneinfo import ZoneInfo

from flask import Flask
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .schedule import Schedule, latest_tick, next_tick, parse_schedule, zone_named
from .worker_models import DigestTick, WorkerHeartbeat

PURGE_INTERVAL = timedelta(days=1)
# A worker whose heartbeat is older than this many poll intervals (and at least a minute) is
# reported as not running.
STALE_POLLS = 4
MIN_STALE = timedelta(seconds=60)


class WorkerStopping(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT while a send is in flight: the send then
    stops as on Ctrl-C (messages in hand finished, everything written down)."""


@dataclass(frozen=True)
class WorkerSettings:
    """The worker's settings, read once from the configuration."""

    schedule: Schedule | None
    zone: ZoneInfo
    approval: bool
    author_email: str | None
    feed_poll: timedelta
    bounce_poll: timedelta | None  # None: no NEWSLETTER_BOUNCE_MAILBOX to read
    catchup: timedelta
    poll_seconds: float

    @classmethod
    def from_config(cls, config: Any) -> WorkerSettings:
        """Settings from ``NEWSLETTER_DIGEST_SCHEDULE`` and friends (validated at start-up)."""
        text = str(config.get("DIGEST_SCHEDULE") or "").strip()
        return cls(
            schedule=parse_schedule(text) if text else None,
            zone=zone_named(str(config.get("TIMEZONE") or "UTC")),
            approval=bool(config.get("DIGEST_APPROVAL")),
            author_email=config.get("AUTHOR_EMAIL") or None,
            feed_poll=timedelta(minutes=float(config.get("FEED_POLL_MINUTES") or 60)),
            bounce_poll=timedelta(minutes=float(config.get("BOUNCE_POLL_MINUTES") or 5))
            if config.get("BOUNCE_MAILBOX")
            else None,
            catchup=timedelta(hours=float(config.get("DIGEST_CATCHUP_HOURS") or 0)),
            poll_seconds=float(config.get("WORKER_POLL_SECONDS") or 5.0),
        )


def new_worker_id() -> str:
    """``host:pid:token``: readable, and unique even when a pid is reused."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """The loop. ``run`` until stopped; ``run_once`` does one round (what tests call)."""

    def __init__(
        self,
        app: Flask,
        *,
        out: IO[str] | None = None,
        sleep: Callable[[float], None] | None = None,
        worker_id: str | None = None,
    ) -> None:
        from .appctx import get_services

        self.app = app
        self.services = get_services(app)
        self.settings = WorkerSettings.from_config(app.config)
        self.out = out if out is not None else sys.stdout
        self.stopping = threading.Event()
        self.sleep = sleep or self.stopping.wait
        self.worker_id = worker_id or new_worker_id()
        self.started_at: datetime | None = None
        self.last_tick: datetime | None = None
        self.next_tick: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self._tick_seen: datetime | None = None  # the newest tick this worker has dealt with
        self._last_poll: datetime | None = None
        self._last_bounce_poll: datetime | None = None
        self._last_purge: datetime | None = None
        self._interruptible = False

    # --- the clock and the log ---------------------------------------------------------------

    def now(self) -> datetime:
        """The current time, from the app's (injectable) clock."""
        return self.services.clock()

    def log(self, what: str, **counts: Any) -> None:
        """One line per action on standard output: time, what, counts."""
        values = " ".join(f"{key}={value}" for key, value in counts.items() if value is not None)
        line = f"{self.now():%Y-%m-%dT%H:%M:%SZ} {what}" + (f" {values}" if values else "")
        self.out.write(line + "\n")
        self.out.flush()

    # --- running -------------------------------------------------------------------------------

    def run(self, *, install_signals: bool = True) -> None:
        """Run rounds until SIGTERM/SIGINT (or ``stop``), then stop cleanly."""
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        schedule = self.settings.schedule
        self.log(
            "worker started",
            id=self.worker_id,
            schedule=repr(schedule.text) if schedule else "none",
            zone=self.settings.zone.key,
            approval=self.settings.approval,
        )
        try:
            while not self.stopping.is_set():
                self.run_once()
                if not self.stopping.is_set():
                    self.sleep(self.settings.poll_seconds)
        except WorkerStopping:
            pass
        finally:
            self._stopped()

    def stop(self) -> None:
        """Ask the loop to stop after what it is doing (thread-safe)."""
        self.stopping.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping.set()
        # os.write, not the buffered stream: the main thread may be in the middle of a write.
        with suppress(OSError, ValueError, AttributeError):
            os.write(
                self.out.fileno(),
                f"{self.now():%Y-%m-%dT%H:%M:%SZ} stopping: "
                f"{signal.Signals(signum).name}, finishing what is in hand\n".encode(),
            )
        if self._interruptible:
            self._interruptible = False
            raise WorkerStopping()

    @contextmanager
    def _interrupt_while_sending(self) -> Iterator[_StopAware]:
        """Let a stop signal interrupt the send (from its start: composing is never cut)."""
        progress = _StopAware(self)
        try:
            yield progress
        finally:
            self._interruptible = False

    def run_once(self) -> None:
        """One round: heartbeat, outbox, posts, bounces, schedule, approvals, sending, jobs,
        purge."""
        from .db import db

        with self.app.app_context():
            session = db.session()
            try:
                self._stored_settings(session)
                if self.started_at is None:
                    self.started_at = self.now()
                for action in (
                    self._outbox,
                    self._poll_posts,
                    self._poll_bounces,
                    self._digest_tick,
                    self._approvals,
                    self._help_send,
                    self._jobs,
                    self._purge,
                ):
                    if self.stopping.is_set():
                        break
                    self._guarded(session, action)
                self._heartbeat(session)
            finally:
                db.session.remove()

    def _stored_settings(self, session: Session) -> None:
        """The settings the author changed in the dashboard win over the environment's; a new
        schedule or approval setting applies from this round on."""
        from .settings import apply_stored_settings

        def apply(session: Session) -> None:
            apply_stored_settings(session, self.app.config)
            self.settings = WorkerSettings.from_config(self.app.config)

        self._guarded(session, apply)

    def _guarded(self, session: Session, action: Callable[[Session], None]) -> None:
        """Run one action; an error is logged and kept for /healthz, and the loop goes on."""
        try:
            action(session)
        except WorkerStopping:
            session.rollback()
            raise
        except Exception as err:  # a bad feed or a full disk must not stop the other actions
            session.rollback()
            name = action.__name__.strip("_").replace("_", " ")
            self.last_error = f"{name}: {err}"
            self.last_error_at = self.now()
            self.log("error", action=repr(name), error=repr(str(err)[:500]))

    def _lock(self) -> Any:
        """A fresh send lock for this database, taken without waiting; None when another
        process holds it (SQLite: one sender at a time), so this round skips sending."""
        from .db import db
        from .sending import SendInProgressError, SendLock, sending_state_dir

        lock = SendLock(
            sending_state_dir(self.app.config["SQLALCHEMY_DATABASE_URI"], self.app.instance_path),
            db.engine,
        )
        try:
            lock.acquire()
        except SendInProgressError:
            return None
        return lock

    # --- the actions ---------------------------------------------------------------------------

    def _outbox(self, session: Session) -> None:
        """Send queued confirmation, welcome and approval emails."""
        from .bounces.verp import envelope_senders
        from .outbox import deliver_queued

        transport = self.services.open_transport()
        try:
            report = deliver_queued(
                session,
                transport,
                sender=envelope_senders(self.services.config, None),
                now=self.now(),
                max_attempts=self.services.config["OUTBOX_MAX_ATTEMPTS"],
            )
        finally:
            transport.close()
        if report.sent or report.retrying or report.failed:
            self.log("outbox", sent=report.sent, retrying=report.retrying, failed=report.failed)
        if report.errors:
            raise RuntimeError(report.errors[0])

    def _poll_posts(self, session: Session) -> None:
        """Sync the post source every NEWSLETTER_FEED_POLL_MINUTES."""
        from .posts import NoPostSourceError, post_source, sync_posts

        now = self.now()
        if self._last_poll is not None and now - self._last_poll < self.settings.feed_poll:
            return
        self._last_poll = now
        try:
            post_source(self.services.config)
        except NoPostSourceError:
            return
        report = sync_posts(session, self.services)
        self.log(
            "posts synced",
            new=len(report.new),
            updated=report.updated,
            not_modified=report.not_modified or None,
        )

    def _poll_bounces(self, session: Session) -> None:
        """Read NEWSLETTER_BOUNCE_MAILBOX every NEWSLETTER_BOUNCE_POLL_MINUTES, as
        ``newsletter process-bounces`` does."""
        from .bounces.mailbox import process_configured_mailbox

        every = self.settings.bounce_poll
        now = self.now()
        if every is None or (
            self._last_bounce_poll is not None and now - self._last_bounce_poll < every
        ):
            return
        self._last_bounce_poll = now
        report = process_configured_mailbox(session, self.services.config, self.services.clock)
        handled = sum(report.kinds.values()) - report.unrecognised
        if handled or report.unrecognised:
            self.log(
                "bounces processed",
                handled=handled,
                unrecognised=report.unrecognised,
                unmatched=report.unmatched or None,
                **{kind.replace("-", "_"): n for kind, n in sorted(report.kinds.items())},
            )

    def _digest_tick(self, session: Session) -> None:
        """At a tick (or on start, for a tick missed within the catch-up window), claim it and
        send the digest, or ask the author to approve it. Only the claiming worker does."""
        schedule = self.settings.schedule
        if schedule is None:
            return
        now = self.now()
        zone = self.settings.zone
        self.next_tick = next_tick(schedule, zone, now)
        due = latest_tick(schedule, zone, now, since=now - self.settings.catchup)
        if due is None or (self._tick_seen is not None and due <= self._tick_seen):
            return
        lock = self._lock()
        if lock is None:
            return  # another process is sending; try again next round
        try:
            if not claim_tick(session, due, self.worker_id, now):
                self._tick_seen = due
                return
            self._tick_seen = due
            self.last_tick = due
            late = now - due
            if self.settings.approval:
                outcome = self._ask_for_approval(session, due)
            else:
                outcome = self._send_digest(session, lock)
            record_tick(session, due, outcome)
            self.log(
                "digest tick",
                tick=f"{due:%Y-%m-%dT%H:%M}Z",
                late=f"{late.total_seconds() / 60:.0f}min"
                if late >= timedelta(minutes=1)
                else None,
                outcome=repr(outcome),
            )
        finally:
            lock.release()

    def _send_digest(self, session: Session, lock: Any) -> str:
        from .jobs import digest_composer
        from .sending import NotComposed, send_new_campaign

        with self._interrupt_while_sending() as progress:
            outcome = send_new_campaign(
                session, self.services, digest_composer(session), lock=lock, progress=progress
            )
        if outcome.not_composed is NotComposed.SOURCE_ERROR:
            raise RuntimeError(f"cannot read the posts: {outcome.problem}")
        sent = sum(report.sent for report in outcome.reports)
        if outcome.report is not None:
            return f"digest {outcome.report.campaign_id} sent to {sent}"
        if outcome.not_composed is NotComposed.NO_READERS:
            return "no confirmed readers yet"
        return "no new posts" + (f"; resumed, sent {sent}" if outcome.resumed else "")

    def _ask_for_approval(self, session: Session, tick: datetime) -> str:
        from .approval import lapse_expired, prepare_approval
        from .posts import NoPostSourceError, post_source, sync_posts

        lapse_expired(session, self.now())
        try:
            post_source(self.services.config)
            sync_posts(session, self.services)
        except NoPostSourceError:
            pass
        author = self.settings.author_email
        if not author:
            raise RuntimeError(
                "NEWSLETTER_DIGEST_APPROVAL is on but NEWSLETTER_AUTHOR_EMAIL "
                "is not set: set it to the address that approves digests"
            )
        assert self.settings.schedule is not None
        expires = next_tick(self.settings.schedule, self.settings.zone, tick)
        prepared = prepare_approval(
            session, self.services, tick=tick, expires_at=expires, author_email=author
        )
        if prepared is None:
            return "no new posts"
        return f"approval {prepared.approval_id} asked of the author ({len(prepared.titles)} posts)"

    def _approvals(self, session: Session) -> None:
        """Lapse approvals whose time ran out; compose and send the approved ones."""
        from .approval import approved_waiting, compose_approved, lapse_expired

        lapsed = lapse_expired(session, self.now())
        if lapsed:
            self.log("approval lapsed", count=lapsed)
        waiting = approved_waiting(session)
        if not waiting:
            return
        lock = self._lock()
        if lock is None:
            return
        try:
            from .sending import recover

            recover(session, lock, self.now())
            for approval_id in waiting:
                campaign_id = compose_approved(session, self.services, approval_id, lock=lock)
                if campaign_id is not None:
                    self.log("approved digest composed", approval=approval_id, campaign=campaign_id)
            session.expunge_all()
            self._send_unfinished(session, lock)
        finally:
            lock.release()

    def _help_send(self, session: Session) -> None:
        """Send what is left of unfinished digests (another worker's, or one a stopped run
        left), when rows are due."""
        if not due_deliveries(session, self.now()):
            return
        lock = self._lock()
        if lock is None:
            return
        try:
            self._send_unfinished(session, lock)
        finally:
            lock.release()

    def _send_unfinished(self, session: Session, lock: Any) -> None:
        """Send what is left of the unfinished digests, logging each campaign's counts."""
        from .sending import send_unfinished

        with self._interrupt_while_sending() as progress:
            reports = send_unfinished(session, self.services, lock=lock, progress=progress)
        for report in reports:
            self.log(
                "sent",
                campaign=report.campaign_id,
                sent=report.sent,
                failed=report.failed,
                deferred=report.deferred,
                left=report.left,
            )

    def _jobs(self, session: Session) -> None:
        """Run the jobs queued for workers (one per round, so a tick is never kept waiting
        behind a long queue)."""
        from .jobs import JobContext, claim_job, finish_job, release_job, run_job, update_progress

        job = claim_job(session, self.worker_id, self.now())
        if job is None:
            return
        job_id, kind = job.id, job.kind
        payload = json.loads(job.payload or "{}")
        session.rollback()
        self.log("job started", id=job_id, kind=kind)
        lock = self._lock() if kind == "send_digest_now" else None
        if kind == "send_digest_now" and lock is None:
            release_job(session, job_id)
            return

        def progress(done: int, total: int | None) -> None:
            update_progress(session, job_id, done, total, now=self.now())

        context = JobContext(session, self.services, job_id, payload, lock, progress)
        try:
            result = run_job(context, kind)
        except WorkerStopping:
            session.rollback()
            release_job(session, job_id)
            raise
        except Exception as err:
            session.rollback()
            finish_job(session, job_id, now=self.now(), error=str(err) or repr(err))
            self.log("job failed", id=job_id, kind=kind, error=repr(str(err)[:300]))
            return
        finally:
            if lock is not None:
                lock.release()
        finish_job(session, job_id, now=self.now(), result=result)
        self.log("job done", id=job_id, kind=kind)

    def _purge(self, session: Session) -> None:
        """Remove never-confirmed sign-ups past the retention, once a day."""
        from .privacy import purge_pending

        now = self.now()
        if self._last_purge is not None and now - self._last_purge < PURGE_INTERVAL:
            return
        self._last_purge = now
        report = purge_pending(session, self.services)
        self.log("purge", removed=report.removed)

    # --- status --------------------------------------------------------------------------------

    def _heartbeat(self, session: Session, *, stopped: bool = False) -> None:
        row = session.get(WorkerHeartbeat, self.worker_id)
        now = self.now()
        if row is None:
            row = WorkerHeartbeat(
                worker_id=self.worker_id,
                host=socket.gethostname()[:255],
                pid=os.getpid(),
                started_at=self.started_at or now,
            )
            session.add(row)
        row.updated_at = now
        row.last_tick = self.last_tick
        row.next_tick = self.next_tick
        row.last_error = self.last_error
        row.last_error_at = self.last_error_at
        row.stopped_at = now if stopped else None
        session.commit()

    def _stopped(self) -> None:
        from .db import db

        with self.app.app_context():
            try:
                self._heartbeat(db.session(), stopped=True)
            finally:
                db.session.remove()
        self.log("worker stopped", id=self.worker_id)


class _StopAware:
    """The send's progress hook: from the moment a campaign starts sending (composing is
    done), a stop signal interrupts it; a signal that came while composing stops it here."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def start(self, report: Any) -> None:
        if self.worker.stopping.is_set():
            raise WorkerStopping()
        self.worker._interruptible = True

    def update(self, done: int) -> None:
        pass

    def finish(self, report: Any) -> None:
        self.worker._interruptible = False


def claim_tick(session: Session, tick: datetime, worker_id: str, now: datetime) -> bool:
    """Insert the tick's row; True for the one worker whose insert wins. Commits."""
    session.add(DigestTick(tick_at=tick, claimed_by=worker_id, claimed_at=now))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True


def record_tick(session: Session, tick: datetime, outcome: str) -> None:
    """Note what a claimed tick did; commits."""
    row = session.get(DigestTick, tick)
    if row is not None:
        row.outcome = outcome[:2000]
    session.commit()


def due_deliveries(session: Session, now: datetime) -> int:
    """How many deliveries of unfinished digests could be sent now (queued and unclaimed or
    with a lapsed claim, or deferred and due)."""
    from .models import DEFERRED, QUEUED, SENDING, Campaign, Delivery

    d = Delivery
    count = (
        session.scalar(
            select(func.count())
            .select_from(d)
            .join(Campaign, Campaign.id == d.campaign_id)
            .where(
                Campaign.status == SENDING,
                Campaign.kind == "digest",
                or_(d.status == QUEUED, (d.status == DEFERRED) & (d.next_attempt_at <= now)),
                or_(d.claimed_until.is_(None), d.claimed_until < now),
            )
        )
        or 0
    )
    session.rollback()
    return int(count)


def worker_status(session: Session, now: datetime, poll_seconds: float) -> dict[str, Any]:
    """What the workers last said, for ``/healthz`` and ``worker --status``: ``running`` is
    false when no heartbeat is newer than a few poll intervals."""
    stale = max(timedelta(seconds=poll_seconds * STALE_POLLS), MIN_STALE)
    rows = list(
        session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.updated_at.desc()))
    )
    live = [row for row in rows if row.stopped_at is None and now - row.updated_at <= stale]
    session.rollback()

    def iso(value: datetime | None) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value else None

    newest = live[0] if live else (rows[0] if rows else None)
    status: dict[str, Any] = {
        "running": bool(live),
        "status": f"{len(live)} running" if live else "not running",
        "workers": [
            {
                "id": row.worker_id,
                "host": row.host,
                "pid": row.pid,
                "updated_at": iso(row.updated_at),
            }
            for row in live
        ],
    }
    if newest is not None:
        status.update(
            last_seen=iso(newest.updated_at),
            last_tick=iso(newest.last_tick),
            next_tick=iso(newest.next_tick),
            last_error=newest.last_error,
            last_error_at=iso(newest.last_error_at),
        )
    return status

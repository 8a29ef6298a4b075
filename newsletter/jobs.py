"""Jobs: work queued in the database (by the dashboard, say) and run by a worker.

``enqueue_job`` writes a row; a worker ``claim_job``\\ s it with a lease, runs the handler
registered for its kind (each calls the same domain function the CLI calls), reports
``update_progress`` as it goes, and ``finish_job`` records the result or the error. The row is
the progress anyone can watch. A job whose worker died is claimed again once its lease runs out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .errors import NewsletterError
from .services import Services
from .worker_models import JOB_DONE, JOB_FAILED, JOB_QUEUED, JOB_RUNNING, Job

log = logging.getLogger(__name__)

JOB_LEASE = timedelta(minutes=10)
MAX_ATTEMPTS = 3  # a job that kills its worker this often is marked failed


class JobError(NewsletterError):
    """A job cannot be queued or run as asked; the message says what to change."""


@dataclass
class JobContext:
    """What a handler gets: the session, services, its payload, the send lock (when the worker
    holds one) and a way to report progress."""

    session: Session
    services: Services
    job_id: int
    payload: Mapping[str, Any]
    lock: Any = None
    progress: Callable[[int, int | None], None] = lambda done, total: None


Handler = Callable[[JobContext], Any]
HANDLERS: dict[str, Handler] = {}


def job_handler(kind: str) -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of ``kind``."""

    def register(function: Handler) -> Handler:
        HANDLERS[kind] = function
        return function

    return register


def enqueue_job(
    session: Session, kind: str, payload: Mapping[str, Any] | None = None, *, now: datetime
) -> Job:
    """Queue a job of a known kind (in the caller's transaction; flushed for its id)."""
    if kind not in HANDLERS:
        raise JobError(f"unknown job kind {kind!r}; known: {', '.join(sorted(HANDLERS))}")
    job = Job(
        kind=kind,
        payload=json.dumps(dict(payload or {})),
        status=JOB_QUEUED,
        progress_done=0,
        attempts=0,
        created_at=now,
    )
    session.add(job)
    session.flush()
    return job


def _claimable(now: datetime) -> Any:
    return or_(Job.status == JOB_QUEUED, (Job.status == JOB_RUNNING) & (Job.claimed_until < now))


def claim_job(
    session: Session, worker_id: str, now: datetime, lease: timedelta = JOB_LEASE
) -> Job | None:
    """Claim the oldest queued job (or one whose worker's lease ran out); commits. Two
    workers never get the same job: SKIP LOCKED on PostgreSQL, a conditional UPDATE on both."""
    candidate = session.scalar(
        select(Job.id)
        .where(_claimable(now))
        .order_by(Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if candidate is None:
        session.rollback()
        return None
    claimed = session.execute(
        update(Job)
        .where(Job.id == candidate, _claimable(now))
        .values(
            status=JOB_RUNNING,
            claimed_by=worker_id,
            claimed_until=now + lease,
            started_at=now,
            attempts=Job.attempts + 1,
        )
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if not claimed:
        return None
    return session.get(Job, candidate)


def update_progress(
    session: Session,
    job_id: int,
    done: int,
    total: int | None,
    *,
    now: datetime,
    lease: timedelta = JOB_LEASE,
) -> None:
    """Record a job's progress and renew its lease; commits."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(progress_done=done, progress_total=total, claimed_until=now + lease)
    )
    session.commit()


def finish_job(
    session: Session, job_id: int, *, now: datetime, result: Any = None, error: str | None = None
) -> None:
    """Mark a job done (with its result, as JSON) or failed (with the error); commits."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            status=JOB_FAILED if error else JOB_DONE,
            finished_at=now,
            claimed_by=None,
            claimed_until=None,
            error=error,
            result=None if result is None else json.dumps(_plain(result), default=str),
        )
    )
    session.commit()


def release_job(session: Session, job_id: int) -> None:
    """Give a claimed job back to the queue (the worker is stopping); commits."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JOB_RUNNING)
        .values(status=JOB_QUEUED, claimed_by=None, claimed_until=None)
    )
    session.commit()


def run_job(context: JobContext, kind: str) -> Any:
    """Run a claimed job's handler; returns its result (raises what the handler raises)."""
    handler = HANDLERS.get(kind)
    if handler is None:
        raise JobError(
            f"no handler for job kind {kind!r}: this worker is older than the "
            "process that queued it; upgrade it"
        )
    return handler(context)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# --- the handlers: each calls the domain function the CLI calls -------------------------------


def digest_composer(session: Session) -> Any:
    """A DigestComposer carrying the note saved in the dashboard for the next digest; the note
    is removed in the transaction that creates the campaign, so it goes out once."""
    from .digest import DigestComposer
    from .settings import NEXT_DIGEST_NOTE, next_digest_note, store_value

    class _NotedComposer(DigestComposer):
        def compose(self, session: Session, services: Any, draft: Any) -> int:
            campaign_id = super().compose(session, services, draft)
            if self.note is not None and next_digest_note(session) == self.note:
                store_value(session, NEXT_DIGEST_NOTE, None, now=services.clock())
            return campaign_id

    return _NotedComposer(note=next_digest_note(session))


@job_handler("send_digest_now")
def _send_digest_now(context: JobContext) -> dict[str, Any]:
    """The dashboard's "send now": the same run as ``newsletter send-digest --yes``, with the
    note the author saved for the next digest."""
    from .sending import NotComposed, send_new_campaign

    if context.lock is None:
        raise JobError("send_digest_now needs the send lock")

    class _Progress:
        def start(self, report: Any) -> None:
            self.total = report.total
            context.progress(0, report.total)

        def update(self, done: int) -> None:
            context.progress(done, getattr(self, "total", None))

        def finish(self, report: Any) -> None:
            context.progress(report.sent + report.failed + report.skipped, report.total)

    outcome = send_new_campaign(
        context.session,
        context.services,
        digest_composer(context.session),
        lock=context.lock,
        progress=_Progress(),
    )
    return {
        "new_posts": outcome.notes,
        "nothing_new": outcome.not_composed is NotComposed.NOTHING_NEW,
        "no_readers": outcome.not_composed is NotComposed.NO_READERS,
        "sync_error": outcome.problem,
        "reports": [report.as_dict() for report in outcome.reports],
    }


@job_handler("import_readers")
def _import_readers(context: JobContext) -> Any:
    """Import a CSV file of readers (payload: path, consent_note, require_confirmation,
    skip_invalid), as ``newsletter import-readers``."""
    from .reader_import import import_readers

    payload = context.payload
    if not payload.get("path") or not payload.get("consent_note"):
        raise JobError("import_readers needs a path and a consent_note")
    report = import_readers(
        context.session,
        context.services,
        Path(str(payload["path"])),
        consent_note=str(payload["consent_note"]),
        require_confirmation=bool(payload.get("require_confirmation")),
        skip_invalid=bool(payload.get("skip_invalid")),
    )
    return {
        "file_name": report.file_name,
        "rows": report.rows,
        "added": report.added,
        "already_present": report.already_present,
        "confirmations_queued": report.confirmations_queued,
        "committed": report.committed,
    }


@job_handler("erase_reader")
def _erase_reader(context: JobContext) -> Any:
    """Erase everything personal about an address (payload: email), as ``newsletter erase``."""
    from .privacy import erase_reader

    email = context.payload.get("email")
    if not email:
        raise JobError("erase_reader needs an email")
    report = erase_reader(
        context.session,
        context.services,
        str(email),
        method=str(context.payload.get("method") or "dashboard"),
    )
    return asdict(report)

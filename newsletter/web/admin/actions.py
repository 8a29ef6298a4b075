"""The dashboard's calls into the domain, in one place: each is a thin adapter over the function
the CLI calls, so the send orchestration can be re-pointed here alone when it changes shape."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ...jobs import JobContext, JobError, enqueue_job, job_handler
from ...models import Post
from ...services import Services
from ...worker_models import Job

ANNOUNCEMENT_SOURCE = Path("dashboard")
# An upload that was checked (dry run) but never imported is deleted after this long.
UPLOAD_KEPT = timedelta(days=1)  # what an announcement composed here says it came from


@dataclass(frozen=True)
class Preview:
    """An email as a sample reader gets it."""

    subject: str
    html: str
    text: str


# --- readers ----------------------------------------------------------------------------------


def add_reader(session: Session, services: Services, email: str, name: str | None) -> Any:
    """Sign a reader up on their behalf (the opt-in email is queued)."""
    from ...readers import add_reader as add

    return add(session, services, email, name=name or None)


def unsubscribe_reader(session: Session, services: Services, email: str) -> bool:
    """Withdraw a reader's consent; True when it changed anything."""
    from ...readers import unsubscribe_reader as unsubscribe

    return unsubscribe(session, services, email)[1]


def queue_erasure(session: Session, services: Services, email: str) -> Job:
    """Queue the erasure of an address as a worker job; commits."""
    job = enqueue_job(
        session, "erase_reader", {"email": email, "method": "dashboard"}, now=services.clock()
    )
    session.commit()
    return job


def queue_import(
    session: Session, services: Services, path: Path, consent_note: str, skip_invalid: bool
) -> Job:
    """Queue a CSV import of an uploaded file as a worker job; commits."""
    payload = {"path": str(path), "consent_note": consent_note, "skip_invalid": skip_invalid}
    job = enqueue_job(session, "import_uploaded_readers", payload, now=services.clock())
    session.commit()
    return job


@job_handler("import_uploaded_readers")
def _import_uploaded_readers(context: JobContext) -> Any:
    """``import_readers`` on a file uploaded to the dashboard, which is deleted once the import
    has run (it holds personal data). A worker killed mid-import leaves it for the retry."""
    from ...jobs import HANDLERS

    path = Path(str(context.payload.get("path") or ""))
    try:
        return HANDLERS["import_readers"](context)
    finally:
        path.unlink(missing_ok=True)


def remove_stale_uploads(folder: Path, now: datetime, age: timedelta = UPLOAD_KEPT) -> int:
    """Delete uploads never imported (the author stopped at the dry run); returns how many."""
    removed = 0
    for path in folder.glob("*.csv"):
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        if now - modified > age:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@dataclass
class ImportSummary:
    """What an import would do, before anything is stored."""

    rows: int = 0
    valid: int = 0
    already_present: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)


def dry_run_import(session: Session, services: Services, path: Path) -> ImportSummary:
    """Read the CSV file and check every row as the import would; stores nothing. Raises
    ImportFileError for a file that is not CSV with an ``email`` column."""
    import csv

    from ...addresses import InvalidAddressError, normalise_address
    from ...reader_import import ImportFileError
    from ...subscriptions import find_subscriber

    summary = ImportSummary()
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            sample = handle.read(4096)
            handle.seek(0)
            delimiter = ";" if sample.count(";") > sample.count(",") else ","
            reader = csv.DictReader(handle, delimiter=delimiter)
            fields = [name.strip().lower() for name in reader.fieldnames or []]
            if "email" not in fields:
                raise ImportFileError("The file needs a header row with an email column.")
            reader.fieldnames = fields
            seen: set[str] = set()
            for record in reader:
                summary.rows += 1
                line = reader.line_num
                raw = (record.get("email") or "").strip()
                try:
                    address = normalise_address(raw)
                except InvalidAddressError as err:
                    summary.invalid.append((line, f"{raw!r}: {err}"))
                    continue
                if address in seen:
                    summary.invalid.append((line, f"{address} appears twice"))
                    continue
                seen.add(address)
                summary.valid += 1
                if find_subscriber(session, address) is not None:
                    summary.already_present += 1
    except UnicodeDecodeError as err:
        raise ImportFileError("The file is not UTF-8 text; save it as CSV UTF-8.") from err
    except csv.Error as err:
        raise ImportFileError(f"The file is not valid CSV: {err}") from err
    session.rollback()
    return summary


# --- the next digest --------------------------------------------------------------------------


def waiting_posts(session: Session, services: Services) -> list[Post]:
    """The posts the next digest carries."""
    from ...digest import select_digest_posts

    return select_digest_posts(session, services)


def held_posts(session: Session) -> list[Post]:
    """The posts left out of the next digest."""
    return list(
        session.scalars(
            select(Post)
            .where(Post.held_until_next.is_(True), Post.campaign_id.is_(None))
            .order_by(Post.id.desc())
        )
    )


def hold_post(session: Session, post_id: int, held: bool) -> None:
    """Leave a post out of the next digest (or bring it back); commits."""
    session.execute(
        update(Post)
        .where(Post.id == post_id, Post.campaign_id.is_(None))
        .values(held_until_next=held)
    )
    session.commit()


def preview_digest(session: Session, services: Services) -> Preview | None:
    """The next digest as a sample reader gets it; None when nothing waits."""
    from ...digest import preview_digest as preview
    from ...settings import next_digest_note

    result = preview(session, services, note=next_digest_note(session))
    session.rollback()
    return None if result is None else Preview(result.subject, result.html, result.text)


def send_test_digest(session: Session, services: Services, address: str) -> str | None:
    """Send the next digest (with the saved note) to ``address`` only; returns its subject
    (None: nothing new)."""
    from ...digest import send_test_digest as send_test
    from ...settings import next_digest_note

    return send_test(session, services, address, note=next_digest_note(session))


def save_note(session: Session, services: Services, note: str) -> str | None:
    """Store the note for the next digest (blank removes it); raises NoteError."""
    from ...settings import save_next_digest_note

    return save_next_digest_note(session, note, now=services.clock())


def confirmed_readers(session: Session) -> int:
    """How many readers a send would reach."""
    from ...sending import confirmed_readers as count

    number = int(count(session))
    session.rollback()
    return number


def queue_send_digest(session: Session, services: Services) -> Job:
    """Queue "send the digest now" for the worker; commits."""
    job = enqueue_job(session, "send_digest_now", {}, now=services.clock())
    session.commit()
    return job


# --- announcements ----------------------------------------------------------------------------


def announcement(subject: str, preheader: str | None, body: str) -> Any:
    """An announcement composed in the dashboard."""
    from ...announcements import Announcement

    return Announcement(
        path=ANNOUNCEMENT_SOURCE,
        subject=" ".join(subject.split()),
        preheader=" ".join((preheader or "").split()) or None,
        body=body.replace("\r\n", "\n"),
    )


def preview_announcement(services: Services, subject: str, preheader: str, body: str) -> Preview:
    """The announcement as a sample reader gets it. Raises CampaignError or TemplateError."""
    from ...announcements import preview_campaign

    result = preview_campaign(services, announcement(subject, preheader, body))
    return Preview(result.subject, result.html, result.text)


def send_test_announcement(
    session: Session, services: Services, subject: str, preheader: str, body: str, address: str
) -> str:
    """Send the announcement to ``address`` only."""
    from ...announcements import send_test_campaign

    return send_test_campaign(session, services, announcement(subject, preheader, body), address)


def check_announcement(
    session: Session, services: Services, subject: str, preheader: str, body: str
) -> Any:
    """What a send would do (renders, so a bad body shows up); raises AlreadySentError for
    content sent before: the same duplicate guard as ``send-campaign``."""
    from ...announcements import AlreadySentError, plan_campaign

    plan = plan_campaign(session, services, announcement(subject, preheader, body))
    done = [copy for copy in plan.copies if copy.status != "sending"]
    if done and plan.resumes is None:
        raise AlreadySentError(done[-1].id, done[-1].created_at)
    return plan


def queue_send_announcement(
    session: Session, services: Services, subject: str, preheader: str, body: str
) -> Job:
    """Queue the announcement's send for the worker; commits."""
    payload = {"subject": subject, "preheader": preheader, "body": body}
    job = enqueue_job(session, "send_announcement", payload, now=services.clock())
    session.commit()
    return job


@job_handler("send_announcement")
def _send_announcement(context: JobContext) -> dict[str, Any]:
    """The dashboard's "send": the same run as ``newsletter send-campaign --yes``, holding the
    send lock itself (the worker hands its lock only to digest jobs)."""
    from flask import current_app

    from ...announcements import AnnouncementComposer
    from ...db import db
    from ...sending import SendInProgressError, SendLock, send_new_campaign, sending_state_dir

    payload = context.payload
    item = announcement(
        str(payload.get("subject") or ""),
        str(payload.get("preheader") or ""),
        str(payload.get("body") or ""),
    )
    lock = SendLock(
        sending_state_dir(current_app.config["SQLALCHEMY_DATABASE_URI"], current_app.instance_path),
        db.engine,
    )
    try:
        lock.acquire()
    except SendInProgressError as err:
        raise JobError(f"another send is running; try again when it ends ({err})") from err

    class _Progress:
        total: int | None = None

        def start(self, report: Any) -> None:
            self.total = report.total
            context.progress(0, report.total)

        def update(self, done: int) -> None:
            context.progress(done, self.total)

        def finish(self, report: Any) -> None:
            context.progress(report.sent + report.failed + report.skipped, report.total)

    try:
        outcome = send_new_campaign(
            context.session,
            context.services,
            AnnouncementComposer(item),
            lock=lock,
            progress=_Progress(),
        )
    finally:
        lock.release()
    why = outcome.not_composed
    return {
        "subject": outcome.subject,
        "no_readers": why is not None and why.name == "NO_READERS",
        "waiting": why is not None and why.name == "WAITING",
        "reports": [report.as_dict() for report in outcome.reports],
    }


# --- health ----------------------------------------------------------------------------------


def run_health_checks(session: Session, services: Services, config: Any) -> dict[str, Any]:
    """Run ``newsletter doctor``'s checks and store the run (time and findings) as the last
    one; commits. Returns the stored run: ``{"at": ISO time, "checks": [...]}``."""
    from ...doctor import DoctorInputs, run_doctor
    from ...settings import LAST_HEALTH_RUN, store_value

    checks = run_doctor(
        DoctorInputs(config, session, services.clock, services.tokens.unsubscribe_token)
    )
    session.rollback()  # the checks only read; start the write afresh
    now = services.clock()
    run = {"at": now.isoformat(), "checks": [check.as_dict() for check in checks]}
    store_value(session, LAST_HEALTH_RUN, json.dumps(run), now=now)
    session.commit()
    return run


def last_health_run(session: Session) -> dict[str, Any] | None:
    """The last stored run of the checks, or None before the first."""
    from ...settings import LAST_HEALTH_RUN, stored_value

    raw = stored_value(session, LAST_HEALTH_RUN)
    if raw is None:
        return None
    try:
        run = json.loads(raw)
    except ValueError:
        return None
    return run if isinstance(run, dict) and isinstance(run.get("checks"), list) else None


def health_problems(run: dict[str, Any] | None) -> int:
    """How many PROBLEMs the run found."""
    return sum(1 for c in (run or {}).get("checks", []) if c.get("status") == "PROBLEM")


# --- jobs -------------------------------------------------------------------------------------


def job_view(job: Job, now: Any) -> dict[str, Any]:
    """A job's progress as the page shows it: done, total, rate per second and time left."""
    elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
    done, total = job.progress_done or 0, job.progress_total
    rate = done / elapsed if elapsed > 0 and done else None
    left = (total - done) / rate if rate and total is not None else None
    result = json.loads(job.result) if job.result else None
    sent = failed = None
    if isinstance(result, dict) and result.get("reports"):
        sent = sum(int(r.get("sent", 0)) for r in result["reports"])
        failed = sum(int(r.get("failed", 0)) for r in result["reports"])
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "done": done,
        "total": total,
        "rate": round(rate, 1) if rate else None,
        "seconds_left": round(left) if left is not None else None,
        "sent": sent,
        "failed": failed,
        "error": job.error,
        "result": result,
    }


def recent_jobs(session: Session, limit: int = 10) -> list[Job]:
    """The latest jobs, newest first."""
    return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))


def count_jobs(session: Session) -> int:
    """How many jobs there are."""
    return int(session.scalar(select(func.count()).select_from(Job)) or 0)

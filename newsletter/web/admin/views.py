"""The dashboard's pages: overview, readers, the next digest, campaigns, settings and jobs."""

from __future__ import annotations

import io
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import Markup, escape
from sqlalchemy import func, or_, select

from ...addresses import InvalidAddressError
from ...appctx import get_services
from ...db import db
from ...errors import NewsletterError
from ...models import (
    SUBSCRIBER_STATUSES,
    BounceRecord,
    Campaign,
    ConsentEvent,
    Delivery,
    OutboxEmail,
    Subscriber,
)
from ...settings import FIELDS, SettingsError, environment_default, save_settings, stored_settings
from ...worker_models import Job
from . import actions, bp

PAGE_SIZE = 50


def _ok(message: str) -> None:
    flash(message, "ok")


def _problem(message: str) -> None:
    flash(message, "problem")


# --- overview ---------------------------------------------------------------------------------


def _bounce_figures(campaign_ids: list[int]) -> dict[int, Any]:
    """Each campaign's bounce and complaint figures, with the warnings past the thresholds."""
    from ...bounces.figures import campaign_bounce_figures

    return campaign_bounce_figures(db.session(), campaign_ids, current_app.config)


def weekly_chart(weeks: list[Any]) -> Markup:
    """New confirmed readers and withdrawals per week as a small SVG bar chart (no script)."""
    width, height, pad = 640, 160, 20
    peak = max([1] + [max(w.confirmed + w.imported, w.withdrawn) for w in weeks])
    slot = (width - 2 * pad) / max(1, len(weeks))
    bar = max(2.0, slot / 2 - 2)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height + 30}" role="img" '
        'aria-labelledby="chart-title"><title id="chart-title">New confirmed readers (dark) '
        "and withdrawals (light) per week</title>"
    ]
    for index, week in enumerate(weeks):
        x = pad + index * slot
        for offset, value, css in (
            (0, week.confirmed + week.imported, "bar-new"),
            (bar + 1, week.withdrawn, "bar-left"),
        ):
            h = (height - pad) * value / peak
            parts.append(
                f'<rect class="{css}" x="{x + offset:.1f}" y="{height - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}"><title>{week.start:%d %b}: {value}</title>'
                "</rect>"
            )
        if index % 2 == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height + 18}" class="axis">{week.start:%d %b}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def _problems(stats: Any, worker: dict[str, Any]) -> list[str]:
    found: list[str] = []
    health = actions.last_health_run(db.session())
    failing = actions.health_problems(health)
    if health is not None and failing:
        when = str(health.get("at", ""))[:16].replace("T", " ")
        found.append(f"{failing} problems need you: the health checks of {when} UTC found them.")
    if not worker.get("running"):
        found.append("The worker is not running: start it with `newsletter worker`.")
    if worker.get("last_error"):
        found.append(f"The worker's last error: {worker['last_error']}")
    figures = _bounce_figures([campaign.id for campaign in stats.campaigns])
    for campaign in stats.campaigns:
        for warning in figures[campaign.id].warnings:
            found.append(f"“{campaign.subject}”: {warning}")
        if campaign.deliveries.get("failed"):
            found.append(
                f"{campaign.deliveries['failed']} deliveries of “{campaign.subject}” failed."
            )
    paused = db.session().scalar(
        select(func.count()).select_from(Campaign).where(Campaign.status == "sending")
    )
    if paused:
        found.append(f"{paused} campaign(s) not finished: the worker resumes them.")
    failed_jobs = db.session().scalars(
        select(Job).where(Job.status == "failed").order_by(Job.id.desc()).limit(3)
    )
    for job in failed_jobs:
        found.append(f"Job {job.id} ({job.kind}) failed: {job.error}")
    return found


@bp.get("/")
def overview() -> str:
    """Readers by status, weekly chart, campaigns, waiting posts, the worker, problems."""
    from ...stats import list_stats
    from ...worker import worker_status

    services = get_services()
    now = services.clock()
    stats = list_stats(db.session(), now, weeks=12, campaigns=5)
    worker = worker_status(
        db.session(), now, float(current_app.config.get("WORKER_POLL_SECONDS") or 5)
    )
    waiting = actions.waiting_posts(db.session(), services)
    return render_template(
        "admin/overview.html",
        stats=stats,
        chart=weekly_chart(stats.weeks),
        worker=worker,
        waiting=waiting,
        problems=_problems(stats, worker),
        schedule=current_app.config.get("DIGEST_SCHEDULE") or "",
    )


# --- readers ----------------------------------------------------------------------------------


@bp.get("/readers")
def readers() -> str:
    """Search, filter and keyset pages (newest first; ``before`` is the last id shown)."""
    q = " ".join(request.args.get("q", "").split())[:320]
    status = request.args.get("status", "")
    before = request.args.get("before", type=int)
    query = select(
        Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.status, Subscriber.created_at
    )
    if status in SUBSCRIBER_STATUSES:
        query = query.where(Subscriber.status == status)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(
                Subscriber.email.ilike(pattern, escape="\\"),
                Subscriber.name.ilike(pattern, escape="\\"),
            )
        )
    if before:
        query = query.where(Subscriber.id < before)
    rows = db.session().execute(query.order_by(Subscriber.id.desc()).limit(PAGE_SIZE + 1)).all()
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    from ...readers import count_by_status

    return render_template(
        "admin/readers.html",
        rows=rows,
        q=q,
        status=status,
        statuses=SUBSCRIBER_STATUSES,
        counts=count_by_status(db.session()),
        next_before=rows[-1].id if more and rows else None,
    )


def _reader_or_404(reader_id: int) -> Subscriber:
    reader = db.session().get(Subscriber, reader_id)
    if reader is None:
        abort(404)
    return reader


@bp.get("/readers/<int:reader_id>")
def reader(reader_id: int) -> str:
    """Everything held about one reader: consent events, deliveries, bounces, emails."""
    subscriber = _reader_or_404(reader_id)
    events = (
        db.session()
        .scalars(
            select(ConsentEvent)
            .where(ConsentEvent.subscriber_id == reader_id)
            .order_by(ConsentEvent.id)
        )
        .all()
    )
    deliveries = (
        db.session()
        .execute(
            select(Delivery, Campaign.subject)
            .join(Campaign, Campaign.id == Delivery.campaign_id)
            .where(Delivery.subscriber_id == reader_id)
            .order_by(Delivery.id.desc())
        )
        .all()
    )
    bounces = (
        db.session()
        .scalars(
            select(BounceRecord)
            .where(BounceRecord.subscriber_id == reader_id)
            .order_by(BounceRecord.id)
        )
        .all()
    )
    emails = (
        db.session()
        .scalars(
            select(OutboxEmail)
            .where(OutboxEmail.subscriber_id == reader_id)
            .order_by(OutboxEmail.id)
        )
        .all()
    )
    return render_template(
        "admin/reader.html",
        reader=subscriber,
        events=events,
        deliveries=deliveries,
        bounces=bounces,
        emails=emails,
    )


@bp.post("/readers/add")
def add_reader() -> Any:
    """Sign a reader up on their behalf: the opt-in email goes out."""
    services = get_services()
    email = request.form.get("email", "")
    try:
        outcome = actions.add_reader(db.session(), services, email, request.form.get("name"))
    except (InvalidAddressError, NewsletterError) as err:
        _problem(str(err))
        return redirect(url_for("admin.readers"), 303)
    _ok(f"{email.strip()}: the confirmation email is on its way.")
    return redirect(url_for("admin.reader", reader_id=outcome.subscriber_id), 303)


@bp.post("/readers/<int:reader_id>/unsubscribe")
def unsubscribe_reader(reader_id: int) -> Any:
    """Withdraw the reader's consent (a ``withdrawn`` event)."""
    subscriber = _reader_or_404(reader_id)
    if subscriber.email is None:
        _problem("This reader was erased.")
    else:
        changed = actions.unsubscribe_reader(db.session(), get_services(), subscriber.email)
        _ok("Unsubscribed." if changed else "Already unsubscribed.")
    return redirect(url_for("admin.reader", reader_id=reader_id), 303)


@bp.post("/readers/<int:reader_id>/erase")
def erase_reader(reader_id: int) -> Any:
    """Erase, once the author typed the address again; runs as a worker job."""
    subscriber = _reader_or_404(reader_id)
    typed = " ".join(request.form.get("confirm_email", "").split()).lower()
    if subscriber.email is None:
        _problem("This reader was already erased.")
        return redirect(url_for("admin.reader", reader_id=reader_id), 303)
    if typed != subscriber.email.lower():
        _problem(f"To erase, type the address {subscriber.email} exactly.")
        return redirect(url_for("admin.reader", reader_id=reader_id), 303)
    job = actions.queue_erasure(db.session(), get_services(), subscriber.email)
    return redirect(url_for("admin.job", job_id=job.id), 303)


@bp.get("/readers/export.csv")
def export_readers() -> Response:
    """Every reader (but the erased) as CSV, with consent dates; imports again as it is."""
    from ...readers import export_readers as export

    status = request.args.get("status") or None
    if status is not None and status not in SUBSCRIBER_STATUSES:
        abort(400, "Unknown status.")
    out = io.StringIO()
    export(db.session(), out, status)
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="readers.csv"'},
    )


def _import_dir() -> Path:
    folder = Path(current_app.instance_path) / "admin-imports"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


@bp.get("/readers/import")
def import_page() -> str:
    """Upload a CSV file."""
    return render_template("admin/import.html", summary=None)


@bp.post("/readers/import")
def import_upload() -> Any:
    """Step 1: store the upload and show a dry run; step 2 (``token``): queue the import."""
    note = " ".join(request.form.get("consent_note", "").split())
    token = request.form.get("token", "")
    if token:
        if not token.isalnum():
            abort(400)
        path = _import_dir() / f"{token}.csv"
        if not path.exists():
            _problem("That upload is gone; upload the file again.")
            return redirect(url_for("admin.import_page"), 303)
        job = actions.queue_import(
            db.session(), get_services(), path, note, bool(request.form.get("skip_invalid"))
        )
        return redirect(url_for("admin.job", job_id=job.id), 303)
    upload = request.files.get("file")
    if not note:
        _problem("Say where the consent was collected (the consent note) before importing.")
        return redirect(url_for("admin.import_page"), 303)
    if upload is None or not upload.filename:
        _problem("Choose a CSV file to import.")
        return redirect(url_for("admin.import_page"), 303)
    actions.remove_stale_uploads(_import_dir(), datetime.now(UTC))
    token = secrets.token_hex(16)
    path = _import_dir() / f"{token}.csv"
    upload.save(path)
    try:
        summary = actions.dry_run_import(db.session(), get_services(), path)
    except NewsletterError as err:
        path.unlink(missing_ok=True)
        _problem(str(err))
        return redirect(url_for("admin.import_page"), 303)
    return render_template(
        "admin/import.html", summary=summary, token=token, note=note, file_name=upload.filename
    )


# --- the next digest --------------------------------------------------------------------------


@bp.get("/digest")
def digest() -> Any:
    """The posts waiting, the personal note, the preview, test and send."""
    return _digest_page()


def _digest_page(note: str | None = None, problem: str | None = None, status: int = 200) -> Any:
    from ...settings import next_digest_note

    services = get_services()
    saved = next_digest_note(db.session())
    page = render_template(
        "admin/digest.html",
        note=saved or "" if note is None else note,
        note_saved=saved is not None,
        note_problem=problem,
        posts=actions.waiting_posts(db.session(), services),
        held=actions.held_posts(db.session()),
        readers=actions.confirmed_readers(db.session()),
        schedule=current_app.config.get("DIGEST_SCHEDULE") or "",
        approval=bool(current_app.config.get("DIGEST_APPROVAL")),
        author=g.admin.email,
    )
    return page, status


@bp.post("/digest/note")
def digest_note() -> Any:
    """Save (or, blank, remove) the personal note above the posts of the next digest."""
    note = request.form.get("note", "")
    try:
        saved = actions.save_note(db.session(), get_services(), note)
    except NewsletterError as err:
        return _digest_page(note, str(err), 400)
    _ok("Note saved for the next digest." if saved else "The next digest goes out without a note.")
    return redirect(url_for("admin.digest"), 303)


def _preview_response(html: str) -> Response:
    g.preview = True
    return Response(html, mimetype="text/html")


@bp.get("/digest/preview")
def digest_preview() -> Any:
    """The next digest's HTML, for the preview frame (or its text part with ``?part=text``)."""
    preview = actions.preview_digest(db.session(), get_services())
    if preview is None:
        return _preview_response("<p>No new posts wait for the next digest.</p>")
    if request.args.get("part") == "text":
        return Response(preview.text, mimetype="text/plain")
    return _preview_response(preview.html)


@bp.post("/digest/posts/<int:post_id>/hold")
def hold_post(post_id: int) -> Any:
    """Leave a post out of this digest (``held=1``) or bring it back (``held=0``)."""
    actions.hold_post(db.session(), post_id, request.form.get("held", "1") == "1")
    return redirect(url_for("admin.digest"), 303)


@bp.post("/digest/test")
def digest_test() -> Any:
    """Send the next digest to the author only."""
    try:
        subject = actions.send_test_digest(db.session(), get_services(), g.admin.email)
    except NewsletterError as err:
        _problem(f"The test was not sent: {err}")
    else:
        _ok(f"Test sent to {g.admin.email}: “{subject}”." if subject else "No new posts to send.")
    return redirect(url_for("admin.digest"), 303)


@bp.post("/digest/send")
def digest_send() -> Any:
    """Send now, once confirmed with the number of readers: a worker job."""
    readers = actions.confirmed_readers(db.session())
    if request.form.get("confirm_readers") != str(readers):
        return render_template("admin/confirm_send.html", readers=readers, what="the digest")
    job = actions.queue_send_digest(db.session(), get_services())
    return redirect(url_for("admin.job", job_id=job.id), 303)


# --- campaigns --------------------------------------------------------------------------------


def _compose_fields() -> tuple[str, str, str]:
    return (
        request.form.get("subject", ""),
        request.form.get("preheader", ""),
        request.form.get("body", ""),
    )


@bp.get("/campaigns")
def campaigns() -> str:
    """Compose an announcement; the history of every campaign."""
    from ...sending import list_campaigns

    history = list_campaigns(db.session(), limit=200)
    return render_template(
        "admin/campaigns.html",
        campaigns=history,
        figures=_bounce_figures([c.id for c in history]),
        subject="",
        preheader="",
        body="",
    )


@bp.post("/campaigns/preview")
def campaign_preview() -> Any:
    """The announcement as a reader gets it, into the preview frame."""
    subject, preheader, body = _compose_fields()
    if not subject.strip() or not body.strip():
        return _preview_response("<p>Write a subject and a body to see the preview.</p>")
    try:
        preview = actions.preview_announcement(get_services(), subject, preheader, body)
    except NewsletterError as err:
        return _preview_response(f"<p>{escape(str(err))}</p>")
    if request.form.get("part") == "text":
        return Response(preview.text, mimetype="text/plain")
    return _preview_response(preview.html)


def _compose_again(subject: str, preheader: str, body: str, status: int = 200) -> Any:
    from ...sending import list_campaigns

    history = list_campaigns(db.session(), limit=200)
    page = render_template(
        "admin/campaigns.html",
        campaigns=history,
        figures=_bounce_figures([c.id for c in history]),
        subject=subject,
        preheader=preheader,
        body=body,
    )
    return page, status


@bp.post("/campaigns/test")
def campaign_test() -> Any:
    """Send the announcement to the author only."""
    subject, preheader, body = _compose_fields()
    try:
        actions.send_test_announcement(
            db.session(), get_services(), subject, preheader, body, g.admin.email
        )
    except NewsletterError as err:
        _problem(f"The test was not sent: {err}")
        return _compose_again(subject, preheader, body, 400)
    _ok(f"Test sent to {g.admin.email}.")
    return _compose_again(subject, preheader, body)


@bp.post("/campaigns/send")
def campaign_send() -> Any:
    """Send to every confirmed reader, once confirmed; refused for content sent before."""
    subject, preheader, body = _compose_fields()
    try:
        actions.check_announcement(db.session(), get_services(), subject, preheader, body)
    except NewsletterError as err:
        _problem(f"Not sent: {err}")
        return _compose_again(subject, preheader, body, 409)
    readers = actions.confirmed_readers(db.session())
    if request.form.get("confirm_readers") != str(readers):
        return render_template(
            "admin/confirm_send.html",
            readers=readers,
            what=f"“{subject}”",
            subject=subject,
            preheader=preheader,
            body=body,
            action=url_for("admin.campaign_send"),
        )
    job = actions.queue_send_announcement(db.session(), get_services(), subject, preheader, body)
    return redirect(url_for("admin.job", job_id=job.id), 303)


@bp.get("/campaigns/<int:campaign_id>")
def campaign(campaign_id: int) -> str:
    """One campaign's counts and its failures with the SMTP replies."""
    from ...sending import CampaignNotFoundError, describe_campaign

    try:
        details = describe_campaign(db.session(), campaign_id, limit=500)
    except CampaignNotFoundError:
        abort(404)
    figures = _bounce_figures([campaign_id])[campaign_id]
    return render_template("admin/campaign.html", details=details, figures=figures)


# --- settings ---------------------------------------------------------------------------------


@bp.route("/settings", methods=["GET", "POST"])
def settings() -> Any:
    """Texts and branding stored in the database, over the environment's defaults."""
    stored = stored_settings(db.session())
    problems: dict[str, str] = {}
    values = dict(stored)
    status = 200
    if request.method == "POST":
        values = {field.key: request.form.get(field.key, "") for field in FIELDS}
        try:
            save_settings(db.session(), values, now=get_services().clock())
        except SettingsError as err:
            problems = err.problems
            status = 400
        else:
            _ok("Settings saved; they apply from the next email on.")
            return redirect(url_for("admin.settings"), 303)
    defaults = {f.key: environment_default(current_app.config, f.key) for f in FIELDS}
    page = render_template(
        "admin/settings.html", fields=FIELDS, values=values, defaults=defaults, problems=problems
    )
    return page, status


# --- health ----------------------------------------------------------------------------------


@bp.get("/health")
def health() -> str:
    """The last run of ``newsletter doctor``'s checks; they run only when asked (network I/O)."""
    run = actions.last_health_run(db.session())
    areas: dict[str, list[dict[str, str]]] = {}
    for check in (run or {}).get("checks", []):
        areas.setdefault(str(check.get("area", "")), []).append(check)
    counts = {
        status: sum(1 for c in (run or {}).get("checks", []) if c.get("status") == status)
        for status in ("PROBLEM", "WARN", "OK")
    }
    return render_template("admin/health.html", run=run, areas=areas, counts=counts)


@bp.post("/health")
def health_run() -> Any:
    """Run the checks now and store the result as the last run."""
    run = actions.run_health_checks(db.session(), get_services(), current_app.config)
    problems = actions.health_problems(run)
    if problems:
        _problem(f"The checks found {problems} problem(s); what to do is under each.")
    else:
        _ok("The checks ran: no problem found.")
    return redirect(url_for("admin.health"), 303)


# --- jobs -------------------------------------------------------------------------------------


def _job_or_404(job_id: int) -> Job:
    job = db.session().get(Job, job_id)
    if job is None:
        abort(404)
    return job


@bp.get("/jobs/<int:job_id>")
def job(job_id: int) -> str:
    """A job's progress; the page refreshes itself through the API while it runs."""
    view = actions.job_view(_job_or_404(job_id), get_services().clock())
    return render_template("admin/job.html", job=view)


@bp.get("/api/jobs/<int:job_id>")
def job_api(job_id: int) -> Any:
    """A job's progress as JSON: done, total, rate, time left, status, result."""
    return jsonify(actions.job_view(_job_or_404(job_id), get_services().clock()))

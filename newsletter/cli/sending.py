"""Sending: send-digest, send-campaign, preview-campaign and send-queued (what a person sees
of a send is in cli/progress.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from .base import EXIT_ERROR, EXIT_INCOMPLETE, _services, register
from .notes import NOTE_FILE, NOTE_HELP
from .previews import preview_options, write_preview
from .progress import SendProgress, confirmation, exit_status, summary


@register
@click.command("send-queued")
@with_appcontext
def send_queued_command() -> None:
    """Send the queued confirmation and welcome emails now, retrying ones that failed."""
    from ..db import db
    from ..outbox import deliver_queued_now

    services = _services()
    transport = services.open_transport()
    try:
        report = deliver_queued_now(db.session(), services, transport, due_only=False)
    finally:
        transport.close()
    click.echo(f"Sent {report.sent}, will retry {report.retrying}, gave up on {report.failed}.")
    for error in report.errors:
        click.echo(f"SMTP problem: {error}", err=True)
    if report.errors:
        click.echo(
            "The unsent emails stay queued; run `newsletter send-queued` again once the "
            "SMTP server is reachable.",
            err=True,
        )
        sys.exit(3)


def _interactive() -> bool:
    """Whether a person is at a terminal who can answer a question."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _send_lock() -> Any:
    from ..db import db
    from ..sending import SendLock, sending_state_dir

    app = current_app
    return SendLock(
        sending_state_dir(app.config["SQLALCHEMY_DATABASE_URI"], app.instance_path), db.engine
    )


@contextmanager
def _stops_cleanly(command: str, resume: str, problems: tuple[type[BaseException], ...]) -> Any:
    """Turn a send's errors into one line on stderr and exit status 1 (a bad --to address
    into a usage error), and Ctrl-C into how to resume."""
    from ..addresses import InvalidAddressError

    try:
        yield
    except InvalidAddressError as err:
        raise click.BadParameter(str(err), param_hint="--to") from None
    except problems as err:
        click.echo(f"{command}: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo(
            f"\nInterrupted. Every message sent so far is recorded; run `{resume}` "
            "again to send the rest.",
            err=True,
        )
        sys.exit(EXIT_ERROR)


def _send_new(
    composer: Any,
    options: Any,
    *,
    quiet: bool,
    confirm: Any,
    retry_kind: str | None = None,
    senders: Any = None,
) -> Any:
    """send-digest's and send-campaign's run: take the send lock, requeue the failed
    deliveries first if asked, and send a new campaign composed by ``composer``."""
    from ..db import db
    from ..sending import send_new_campaign

    lock = _send_lock()
    if senders is not None and not lock.shared:
        raise click.UsageError(
            "--workers needs PostgreSQL: SQLite takes one writer at a time, so run one "
            "sender process and raise --connections instead"
        )
    lock.acquire()
    try:
        if retry_kind is not None:
            _retry_failed(_services(), retry_kind)
        return send_new_campaign(
            db.session(),
            _services(),
            composer,
            lock=lock,
            options=options,
            progress=SendProgress(quiet, sys.stdout.isatty()),
            confirm=confirm,
            senders=senders,
        )
    finally:
        lock.release()


def send_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The --yes, --rate and --connections options of send-digest and send-campaign."""
    command = click.option(
        "--connections",
        type=click.IntRange(1, 50),
        metavar="N",
        help="Parallel SMTP connections (default: NEWSLETTER_SEND_CONNECTIONS, 4).",
    )(command)
    command = click.option(
        "--rate",
        type=click.FloatRange(min=0.01),
        metavar="N",
        help="At most N messages per second over all connections "
        "(default: NEWSLETTER_SEND_RATE, else no cap).",
    )(command)
    return click.option("--yes", is_flag=True, help="Do not ask before mailing the readers.")(
        command
    )


@register
@click.command("send-digest")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say what would be sent and to how many readers, from the posts already "
    "fetched; change nothing.",
)
@click.option(
    "--to",
    "to_address",
    metavar="ADDRESS",
    help="Send the next digest to this one address as a test; marks nothing.",
)
@send_options
@click.option(
    "--workers",
    type=click.IntRange(1, 32),
    default=1,
    metavar="N",
    help="Sender processes on this machine, each with --connections connections "
    "and its share of --rate (PostgreSQL only; default 1).",
)
@click.option(
    "--worker",
    "as_worker",
    is_flag=True,
    hidden=True,
    help="Internal: one of --workers N's processes.",
)
@click.option(
    "--retry-failed",
    "retry",
    is_flag=True,
    help="First put the failed deliveries of the latest digest back in the queue "
    "(once the cause is fixed), then send as usual.",
)
@click.option(
    "--quiet",
    is_flag=True,
    help="No progress and no summary unless something went wrong (for cron).",
)
@click.option("--note", "note", type=NOTE_FILE, help=NOTE_HELP)
@with_appcontext
def send_digest_command(
    dry_run: bool,
    to_address: str | None,
    yes: bool,
    rate: float | None,
    connections: int | None,
    workers: int,
    as_worker: bool,
    retry: bool,
    quiet: bool,
    note: str | None,
) -> None:
    """Mail the new posts to every confirmed reader, and finish any unfinished digest.

    Exit status: 0 all sent (or skipped: the reader left), 3 some failed or were deferred,
    1 an error stopped the run.
    """
    from ..db import db
    from ..digest import DigestComposer, plan_digest, send_test_digest
    from ..dkim import DkimError
    from ..posts import PostSourceError
    from ..rendering import TemplateError
    from ..sending import DIGEST, NotComposed, SenderProcesses, SendError, SendOptions
    from ..smtp import SmtpError

    services = _services()
    resume = "newsletter send-digest"
    problems = (SmtpError, DkimError, TemplateError, SendError, PostSourceError)
    if dry_run and to_address:
        raise click.UsageError("use either --dry-run or --to, not both")
    if retry and (dry_run or to_address):
        raise click.UsageError("--retry-failed sends to readers; use it without --dry-run and --to")
    options = SendOptions.from_config(services.config, rate=rate, connections=connections)
    with _stops_cleanly("send-digest", resume, problems):
        if as_worker:
            _send_as_worker(services, options)
            return
        if dry_run:
            _show_plan(plan_digest(db.session(), services))
            return
        if to_address:
            subject = send_test_digest(db.session(), services, to_address, note=note)
            click.echo(
                f'Sent "{subject}" to {to_address} as a test; nothing was marked.'
                if subject
                else "No new posts since the last digest: nothing to send."
            )
            return
        outcome = _send_new(
            DigestComposer(note=note),
            options,
            quiet=quiet,
            confirm=None if yes or not _interactive() else confirmation("Next digest"),
            retry_kind=DIGEST if retry else None,
            senders=SenderProcesses(_worker_argv(options, workers), workers)
            if workers > 1
            else None,
        )
    for report in outcome.reports:
        summary(report, quiet, resume)
    why = outcome.not_composed
    if why is NotComposed.SOURCE_ERROR:
        click.echo(f"Cannot read the posts: {outcome.problem}", err=True)
    elif why is NotComposed.DECLINED:
        click.echo("Not sent.")
    elif why is NotComposed.NO_READERS:
        click.echo("No confirmed readers yet: nothing sent; the new posts wait for the next run.")
    elif why is NotComposed.NOTHING_NEW and not quiet:
        click.echo("No new posts since the last digest: nothing new to send.")
    exit_status(outcome.reports, error=why is NotComposed.SOURCE_ERROR)


def _retry_failed(services: Any, kind: str) -> None:
    """Put the latest campaign's failed deliveries back in the queue and say how many."""
    from ..db import db
    from ..sending import retry_failed

    moved = retry_failed(db.session(), kind, services.clock())
    if moved is None:
        click.echo(f"No {kind} has been sent yet: no failed deliveries to retry.")
        return
    campaign_id, count = moved
    click.echo(
        f"Moved {count:,} failed deliver{'y' if count == 1 else 'ies'} of campaign "
        f"{campaign_id} back to the queue."
    )


def _worker_argv(options: Any, workers: int) -> list[str]:
    """The command line of one of ``--workers N``'s processes: this command in worker mode,
    with the same settings (inherited environment and working directory) and its share of the
    rate."""
    argv = [
        sys.executable,
        "-c",
        "from newsletter.cli import main; main()",
        "send-digest",
        "--worker",
        "--connections",
        str(options.connections),
    ]
    if options.rate:
        argv += ["--rate", repr(max(options.rate / workers, 0.01))]
    return argv


def _send_as_worker(services: Any, options: Any) -> None:
    """One of ``--workers N``'s processes: send what is left of every unfinished digest (the
    parent composed and planned it), telling the parent how it goes on stdout."""
    from ..db import db
    from ..sending import WorkerProgress, send_unfinished

    lock = _send_lock()
    lock.acquire()
    try:
        send_unfinished(
            db.session(), services, lock=lock, options=options, progress=WorkerProgress(sys.stdout)
        )
    finally:
        lock.release()


def _show_plan(plan: Any) -> None:
    for campaign_id, subject, left in plan.unfinished:
        click.echo(f'Would resume campaign {campaign_id} "{subject}": {left:,} deliveries left.')
    if plan.subject is None:
        click.echo("No new posts since the last digest: nothing new would be sent.")
    else:
        click.echo(
            f'Would send "{plan.subject}" to {plan.readers:,} confirmed reader'
            f"{'' if plan.readers == 1 else 's'}:"
        )
        for title in plan.titles:
            click.echo(f"  - {title}")
    click.echo(
        "(Dry run: nothing was fetched, planned or sent. `newsletter fetch-posts` brings "
        "in new posts first.)"
    )


@register
@click.command("send-campaign")
@click.argument("file", metavar="FILE.md", type=click.Path(path_type=Path), required=False)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say what would be sent and to how many readers; change nothing.",
)
@click.option(
    "--to",
    "to_address",
    metavar="ADDRESS",
    help="Send it to this one address as a test; creates no campaign, marks nothing.",
)
@click.option(
    "--again",
    is_flag=True,
    help="Send it although the same subject and body were sent before. (A copy that "
    "was interrupted is resumed instead, never sent twice.)",
)
@send_options
@click.option(
    "--retry-failed",
    "retry",
    is_flag=True,
    help="Instead of a FILE: put the failed deliveries of the latest announcement "
    "back in the queue (once the cause is fixed) and send them.",
)
@click.option(
    "--quiet", is_flag=True, help="No progress and no summary unless something went wrong."
)
@with_appcontext
def send_campaign_command(
    file: Path | None,
    dry_run: bool,
    to_address: str | None,
    again: bool,
    yes: bool,
    rate: float | None,
    connections: int | None,
    retry: bool,
    quiet: bool,
) -> None:
    """Mail an announcement written in Markdown (FILE.md) to every confirmed reader; run it
    again after an interruption to resume it.

    Exit status: 0 all sent (or skipped: the reader left), 3 some failed or were deferred (or
    an earlier interrupted announcement was finished first: run again), 1 an error stopped the
    run (including a file, template or SMTP problem, and content already sent without --again).
    """
    from ..announcements import (
        AnnouncementComposer,
        CampaignError,
        plan_campaign,
        read_announcement,
        send_test_campaign,
    )
    from ..db import db
    from ..dkim import DkimError
    from ..rendering import TemplateError
    from ..sending import NotComposed, SendError, SendOptions
    from ..smtp import SmtpError

    services = _services()
    problems = (CampaignError, SmtpError, DkimError, TemplateError, SendError)
    if dry_run and to_address:
        raise click.UsageError("use either --dry-run or --to, not both")
    if retry:
        if file is not None or dry_run or to_address or again:
            raise click.UsageError(
                "--retry-failed retries the latest announcement: use it "
                "without FILE.md, --dry-run, --to and --again"
            )
        _retry_failed_announcement(services, rate, connections, quiet)
        return
    if file is None:
        raise click.UsageError("missing FILE.md: the announcement to send (or --retry-failed)")
    resume = f"newsletter send-campaign {file}"
    with _stops_cleanly("send-campaign", resume, problems):
        announcement = read_announcement(file)
        if dry_run:
            _show_campaign_plan(plan_campaign(db.session(), services, announcement), again)
            return
        if to_address:
            subject = send_test_campaign(db.session(), services, announcement, to_address)
            click.echo(f'Sent "{subject}" to {to_address} as a test; nothing was marked.')
            return
        outcome = _send_new(
            AnnouncementComposer(announcement, again=again),
            SendOptions.from_config(services.config, rate=rate, connections=connections),
            quiet=quiet,
            confirm=None if yes or not _interactive() else confirmation("Announcement"),
        )
    for report in outcome.reports:
        summary(report, quiet, resume)
    why = outcome.not_composed
    if why is NotComposed.RESUMED:
        if not quiet:
            click.echo(
                "This announcement had been interrupted: it was resumed, and nobody "
                "gets it twice."
                + (" (--again sends a fresh copy once this one is finished.)" if again else "")
            )
    elif why is NotComposed.WAITING:
        click.echo(
            f"An earlier announcement had been interrupted and was finished first; run "
            f'`{resume}` again to send "{announcement.subject}".',
            err=True,
        )
        sys.exit(EXIT_INCOMPLETE)
    elif why is NotComposed.DECLINED:
        click.echo("Not sent.")
    elif why is NotComposed.NO_READERS:
        click.echo("No confirmed readers yet: nothing sent.")
    exit_status(outcome.reports)


def _retry_failed_announcement(
    services: Any, rate: float | None, connections: int | None, quiet: bool
) -> None:
    """``send-campaign --retry-failed``: requeue the latest announcement's failed deliveries
    and send what is left of every unfinished announcement."""
    from ..announcements import ANNOUNCEMENT
    from ..db import db
    from ..sending import SendError, SendOptions, check_smtp, send_unfinished
    from ..smtp import SmtpError

    resume = "newsletter send-campaign --retry-failed"
    options = SendOptions.from_config(services.config, rate=rate, connections=connections)
    lock = _send_lock()
    with _stops_cleanly("send-campaign", resume, (SmtpError, SendError)):
        lock.acquire()
        try:
            check_smtp(services)
            _retry_failed(services, ANNOUNCEMENT)
            reports = send_unfinished(
                db.session(),
                services,
                lock=lock,
                kind=ANNOUNCEMENT,
                options=options,
                progress=SendProgress(quiet, sys.stdout.isatty()),
            )
        finally:
            lock.release()
    for report in reports:
        summary(report, quiet, resume)
    exit_status(reports)


def _show_campaign_plan(plan: Any, again: bool) -> None:
    resumes = plan.resumes
    readers = f"{plan.readers:,} confirmed reader{'' if plan.readers == 1 else 's'}"
    if resumes is not None:
        click.echo(
            f'Would resume campaign {resumes.id} "{plan.subject}", which was '
            f"interrupted: {resumes.left:,} deliveries left. Nobody gets it twice."
        )
    elif plan.copies and not again:
        last = plan.copies[-1]
        click.echo(
            f'Would refuse: "{plan.subject}" was already sent as campaign {last.id} on '
            f"{last.created_at:%Y-%m-%d %H:%M} UTC (--again sends it anyway)."
        )
    elif plan.other_unfinished:
        for campaign_id, subject, left in plan.other_unfinished:
            click.echo(
                f'Would first finish the interrupted campaign {campaign_id} "{subject}": '
                f"{left:,} deliveries left."
            )
        click.echo(f'Then, on the next run, "{plan.subject}" to {readers}.')
    else:
        again_note = (
            f" (again: sent before as campaign {plan.copies[-1].id})" if plan.copies else ""
        )
        click.echo(f'Would send "{plan.subject}" to {readers}{again_note}.')
        click.echo(f"Preheader: {plan.preheader}")
    click.echo("(Dry run: nothing was planned or sent.)")


@register
@click.command("preview-campaign")
@click.argument("file", metavar="FILE.md", type=click.Path(path_type=Path))
@preview_options("campaign")
@with_appcontext
def preview_campaign_command(file: Path, output: str, open_browser: bool) -> None:
    """Write an announcement (FILE.md) as a sample reader would get it; sends nothing."""
    from ..announcements import CampaignError, preview_campaign, read_announcement
    from ..rendering import TemplateError

    try:
        preview = preview_campaign(_services(), read_announcement(file))
    except TemplateError as err:
        click.echo(f"Email template problem: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except CampaignError as err:
        click.echo(f"preview-campaign: {err}", err=True)
        sys.exit(EXIT_ERROR)
    write_preview(preview, output, open_browser, f"Announcement: {preview.subject}")

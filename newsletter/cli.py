"""The ``newsletter`` command: thin click commands over the domain functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TypeVar

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext

from .cli_bounces import COMMANDS as BOUNCE_COMMANDS
from .cli_worker import COMMANDS as WORKER_COMMANDS
from .config import DEFAULTS, ConfigError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INCOMPLETE = 3  # some deliveries failed or were deferred

COMMANDS: list[click.Command] = []


CommandT = TypeVar("CommandT", bound=click.Command)


def register(command: CommandT) -> CommandT:
    """Add a command (or group) to the ``newsletter`` CLI."""
    COMMANDS.append(command)
    return command


def _services() -> Any:
    from .services import get_services

    return get_services()


@register
@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database schema, or upgrade it to this version. Safe to run again."""
    from sqlalchemy.exc import SQLAlchemyError

    from .db import upgrade_schema

    url = current_app.config["SQLALCHEMY_DATABASE_URI"]
    where = _display_url(url)
    try:
        before, after = upgrade_schema(current_app)  # type: ignore[arg-type]
    except (SQLAlchemyError, OSError) as err:
        raise click.ClickException(f"cannot create the schema in {where}: {_one_line(err)}. "
                                   "Check NEWSLETTER_DATABASE_URL and that the database server "
                                   "is running.") from None
    if before == after:
        click.echo(f"Database {where} is up to date (schema {after}).")
    elif before is None:
        click.echo(f"Created the database schema in {where} (schema {after}).")
    else:
        click.echo(f"Upgraded {where} from schema {before} to {after}.")


def _one_line(err: Exception) -> str:
    """The first line of a database error's own message, without SQLAlchemy's decoration."""
    cause = getattr(err, "orig", None) or err
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else cause.__class__.__name__


def _display_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@register
@click.command("doctor")
@click.option("--send-test", "send_test", metavar="ADDRESS",
              help="Also send one test message to ADDRESS (nothing is sent otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON, for scripts.")
@with_appcontext
def doctor_command(send_test: str | None, as_json: bool) -> None:
    """Check the set-up (settings, SMTP, DNS, the service, the list); exit 1 on a PROBLEM."""
    from .db import db
    from .doctor import DoctorInputs, exit_code, run_doctor, summary

    services = _services()
    checks = run_doctor(DoctorInputs(current_app.config, db.session(), services.clock,
                                     services.tokens.unsubscribe_token), send_test=send_test)
    if as_json:
        click.echo(json.dumps({"checks": [c.as_dict() for c in checks],
                               "summary": summary(checks)}, indent=2))
    else:
        width = max(len(c.label) for c in checks)
        for check in checks:
            click.echo(f"{check.status:<8} {check.label:<{width}}  {check.found}")
            if check.to_do:
                click.echo(f"{'':<8} {'':<{width}}  -> {check.to_do}")
        counts = summary(checks)
        click.echo(f"\n{counts['ok']} OK, {counts['warn']} WARN, {counts['problem']} PROBLEM")
    sys.exit(exit_code(checks))


@register
@click.command("send-queued")
@with_appcontext
def send_queued_command() -> None:
    """Send the queued confirmation and welcome emails now, retrying ones that failed."""
    from .db import db
    from .outbox import deliver_queued

    services = _services()
    transport = services.open_transport()
    try:
        report = deliver_queued(db.session, transport, sender=current_app.config["MAIL_FROM"],
                                now=services.clock(),
                                max_attempts=current_app.config["OUTBOX_MAX_ATTEMPTS"],
                                due_only=False)
    finally:
        transport.close()
    click.echo(f"Sent {report.sent}, will retry {report.retrying}, gave up on {report.failed}.")
    for error in report.errors:
        click.echo(f"SMTP problem: {error}", err=True)
    if report.errors:
        click.echo("The unsent emails stay queued; run `newsletter send-queued` again once the "
                   "SMTP server is reachable.", err=True)
        sys.exit(3)


@register
@click.group("subscribers")
def subscribers_group() -> None:
    """Look after readers: list, count, import, export, add, unsubscribe, show, erase."""


@subscribers_group.command("show")
@click.argument("email")
@with_appcontext
def subscribers_show(email: str) -> None:
    """Print a reader's status and complete consent history as JSON."""
    from .addresses import InvalidAddress
    from .db import db
    from .subscriptions import describe, find_subscriber, is_suppressed

    try:
        subscriber = find_subscriber(db.session, email)
    except InvalidAddress as err:
        raise click.BadParameter(str(err), param_hint="EMAIL") from None
    if subscriber is None:
        if is_suppressed(db.session, _services(), email):
            click.echo(f"No reader with the address {email}: it was erased, and only a keyed "
                       "hash of it is kept (so imports refuse it).", err=True)
        else:
            click.echo(f"No reader with the address {email}.", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(json.dumps(describe(db.session, subscriber), indent=2, ensure_ascii=False))


@register
@click.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Web port.")
@click.option("--smtp-port", default=0, type=int,
              help="Port of the demo's mail catcher (default: any free port).")
@with_appcontext
def demo_command(host: str, port: int, smtp_port: int) -> None:
    """Run the service with a local mail catcher and sample posts: nothing to set up."""
    from werkzeug.serving import run_simple

    from .db import db, upgrade_schema
    from .demo import mailbox_dir, prepare_sample_digest, write_sample_posts
    from .mailcatcher import MailCatcher
    from .posts import PostSourceError

    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    if not app.config["DEMO"]:
        raise click.UsageError("run the demo as `newsletter demo` (or set NEWSLETTER_DEMO=1)")
    upgrade_schema(app)
    catcher = MailCatcher(mailbox_dir(app), port=smtp_port).start()
    app.config.update(SMTP_HOST="127.0.0.1", SMTP_PORT=catcher.port, SMTP_SECURITY="none",
                      SMTP_USERNAME=None, SMTP_PASSWORD=None)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    app.config["PUBLIC_URL"] = base
    # There is no blog and no privacy policy in the demo: its own pages stand in, so every link
    # in its emails answers.
    if app.config["SITE_URL"] == DEFAULTS["SITE_URL"]:
        app.config["SITE_URL"] = f"{base}/demo/blog"
    if not app.config["PRIVACY_POLICY_URL"]:
        app.config["PRIVACY_POLICY_URL"] = f"{base}/demo/privacy"
    posts = write_sample_posts(app)
    try:
        # Only the sample folder's posts are kept unmailed; a feed of the author's own stays as
        # its first sync leaves it.
        waiting = prepare_sample_digest(db.session, _services(),
                                        keep_unmailed=app.config["POSTS_DIR"] == str(posts))
        digest = (f"{base}/demo/digest   (a preview of {_count(waiting, 'sample post')})"
                  if waiting else "none waiting: add a post to the sample folder")
    except PostSourceError as err:
        db.session.rollback()
        digest = f"none: cannot read the posts ({err})"
    click.echo(f"""
  newsletter demo is running.

  Subscribe:      {base}/subscribe
  Caught emails:  {base}/demo/mail   (also as .eml files in {mailbox_dir(app)})
  Next digest:    {digest}
  Sample blog:    {base}/demo/blog
  Mail catcher:   SMTP on 127.0.0.1:{catcher.port}
  Sample posts:   {posts}
  Database:       {_display_url(app.config['SQLALCHEMY_DATABASE_URI'])}

  Press Ctrl+C to stop.
""")
    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        catcher.stop()


# --- posts and digests (fetch-posts, preview-digest) ---------------------------------------


@register
@click.command("fetch-posts")
@click.option("--backfill", type=click.IntRange(min=0), default=None, metavar="N",
              help="Also mail the newest N posts already published that were never mailed: "
                   "the next digest carries them (default: none; works on any sync).")
@with_appcontext
def fetch_posts_command(backfill: int | None) -> None:
    """Sync posts from NEWSLETTER_FEED_URL or NEWSLETTER_POSTS_DIR and list what is new."""
    from .db import db
    from .posts import PostSourceError, sync_posts

    try:
        report = sync_posts(db.session, _services(), backfill=backfill)
    except PostSourceError as err:
        click.echo(f"Cannot read the posts: {err}", err=True)
        sys.exit(EXIT_ERROR)
    for line in _backfill_lines(report):
        click.echo(line)
    if report.not_modified:
        click.echo(f"No new posts: {report.source} has not changed since the last fetch.")
        return
    if report.new:
        click.echo(f"New posts ({len(report.new)}):")
        for post in report.new:
            click.echo(f"  {post.title}" + (f"  [waiting: {post.waiting}]" if post.waiting else ""))
    else:
        click.echo("No new posts.")
    click.echo(f"Updated {report.updated}, unchanged {report.unchanged}.")
    if report.duplicates:
        click.echo(f"Skipped {report.duplicates} entr{'y' if report.duplicates == 1 else 'ies'} "
                   "repeating an id seen earlier in the source.")


def _backfill_lines(report: Any) -> list[str]:
    """What a sync did with the posts already published: archived on a first sync, and what
    ``--backfill N`` made new (or why nothing)."""
    n, backfilled, archived = report.backfill, report.backfilled_titles, report.archived_titles
    flag = f"--backfill {n}"
    if report.first_sync:
        published = len(archived) + len(backfilled)
        if archived and backfilled:
            return [f"First sync of {report.source}: the newest {len(backfilled)} of the "
                    f"{published} posts already published go into the next digest ({flag}); "
                    f"the other {len(archived)} are recorded as sent before and will not be "
                    "mailed."]
        if archived:
            return [f"First sync of {report.source}: {len(archived)} post(s) already published "
                    "are recorded as sent before and will not be mailed (`newsletter "
                    "fetch-posts --backfill N` mails the newest N, now or later)."]
        if backfilled:
            return [f"First sync of {report.source}: all {published} post(s) already published "
                    f"go into the next digest ({flag})."]
        if n:
            return [f"First sync of {report.source}: no post is published there yet, so "
                    f"{flag} found none to mail."]
        return []
    if n is None:
        return []
    if n == 0:
        return [f"{flag} marks no post as new."]
    if backfilled:
        return [f"{flag}: {len(backfilled)} post(s) published before and never mailed go "
                "into the next digest:", *(f"  {title}" for title in backfilled)]
    found = report.backfill_found
    if found:
        which = f"the newest {found}" if found == n else f"all {found}"
        return [f"{flag}: {which} published post(s) never mailed are already new, waiting for "
                "the next digest; nothing changed."]
    return [f"{flag}: no published post is left that was never mailed; nothing changed."]


def _sync_posts_for_digest(services: Any, backfill: int | None) -> Any:
    """Bring the posts table up to date from the feed or Markdown folder and return the sync
    report; a source problem (none configured, unreachable, unparseable) ends the command with
    one line."""
    from . import posts
    from .db import db

    try:
        return posts.sync_posts(db.session, services, backfill=backfill)
    except posts.PostSourceError as err:
        click.echo(f"Cannot read the posts: {err}", err=True)
        sys.exit(EXIT_ERROR)


@register
@click.command("preview-digest")
@click.option("--output", "output", default="preview", show_default=True,
              type=click.Path(file_okay=False, writable=True),
              help="Folder to write digest.html, digest.txt and digest.eml into.")
@click.option("--open", "open_browser", is_flag=True, help="Open digest.html in a web browser.")
@click.option("--backfill", type=click.IntRange(min=0), default=None, metavar="N",
              help="Count the newest N posts already published that were never mailed as "
                   "new (as `fetch-posts --backfill N` does).")
@with_appcontext
def preview_digest_command(output: str, open_browser: bool, backfill: int | None) -> None:
    """Write the next digest as a sample reader would get it; marks nothing as sent."""
    import webbrowser

    from .db import db
    from .digest import preview_digest
    from .rendering import TemplateProblem

    services = _services()
    synced = _sync_posts_for_digest(services, backfill)
    try:
        preview = preview_digest(db.session, services)
    except TemplateProblem as err:
        click.echo(f"Email template problem: {err}", err=True)
        sys.exit(EXIT_ERROR)
    if preview is None:
        click.echo("No new posts since the last digest: nothing to preview, nothing written.")
        archived = len(synced.archived_titles)
        if synced.first_sync and archived:
            click.echo(f"(This was the first sync of {synced.source}: its {archived} published "
                       f"post{'s were' if archived != 1 else ' was'} recorded as sent before. "
                       "Posts added from now on go into the next digest.)")
        return
    paths = preview.write(output)
    count = len(preview.titles)
    click.echo(f"Next digest ({count} post{'s' if count != 1 else ''}): {preview.subject}")
    for path in paths:
        click.echo(f"  {path}")
    if open_browser:
        webbrowser.open(paths[0].resolve().as_uri())


# --- sending and campaigns (send-digest, campaigns, send-campaign) -------------------------

PROGRESS_LOG_INTERVAL = 5.0  # seconds between progress lines when output is not a terminal


def _interactive() -> bool:
    """Whether a person is at a terminal who can answer a question."""
    return sys.stdin.isatty() and sys.stdout.isatty()


class _SendProgress:
    """A progress bar (count, rate, time left) on a terminal, a plain line every few seconds
    otherwise (cron mail, logs), nothing with --quiet."""

    def __init__(self, quiet: bool, terminal: bool) -> None:
        self.quiet = quiet
        self.terminal = terminal
        self._bar: Any = None
        self._shown = 0
        self._total = 0
        self._started = 0.0
        self._logged = 0.0

    def start(self, report: Any) -> None:
        import time

        self._total, self._shown = report.total, 0
        self._started = self._logged = time.monotonic()
        if self.quiet:
            return
        click.echo(f'Sending campaign {report.campaign_id} "{report.subject}": '
                   f"{report.total:,} deliver{'y' if report.total == 1 else 'ies'} to make.")
        if self.terminal and report.total:
            self._bar = click.progressbar(length=report.total, label="Sending", show_pos=True,
                                          show_eta=True, item_show_func=lambda rate: rate)
            self._bar.__enter__()

    def update(self, done: int) -> None:
        import time

        if self.quiet:
            return
        now = time.monotonic()
        rate = done / (now - self._started) if now > self._started else 0.0
        if self._bar is not None:
            self._bar.update(done - self._shown, f"{rate:,.0f}/s")
        elif now - self._logged >= PROGRESS_LOG_INTERVAL and done < self._total:
            left = (self._total - done) / rate if rate else 0
            click.echo(f"  {done:,} of {self._total:,} done, {rate:,.0f} messages/s, "
                       f"about {left:,.0f}s left")
            self._logged = now
        self._shown = done

    def finish(self, report: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _send_lock() -> Any:
    from .db import db
    from .sending import SendLock, sending_state_dir

    app = current_app
    return SendLock(sending_state_dir(app.config["SQLALCHEMY_DATABASE_URI"], app.instance_path),
                    db.engine)


def _summary(report: Any, quiet: bool, resume: str = "newsletter send-digest") -> None:
    """One campaign's outcome; problems always go to stderr, even with --quiet. ``resume`` is
    the command that resumes it."""
    if not quiet or not report.complete:
        left = f", still queued {report.left:,}" if report.left else ""
        click.echo(f'Campaign {report.campaign_id} "{report.subject}": sent {report.sent:,}, '
                   f"failed {report.failed:,}, deferred {report.deferred:,}, "
                   f"skipped {report.skipped:,}{left} in {report.elapsed:.1f}s "
                   f"({report.rate:,.0f} messages per second).")
    if report.error:
        click.echo(f"Stopped: {report.error}", err=True)
        click.echo(f"Run `{resume}` again to resume: it sends what is left and "
                   "nothing twice.", err=True)
    elif report.failed or report.deferred:
        click.echo(f"See who and why: newsletter campaigns show {report.campaign_id}"
                   + (" (deferred ones are retried by the next run)" if report.deferred
                      else ""), err=True)


def _ask_before_sending(subject: str, titles: Any, readers: int) -> bool:
    if readers <= 1:
        return True
    click.echo(f'Next digest: "{subject}"')
    for title in titles:
        click.echo(f"  - {title}")
    return click.confirm(f"Send it to {readers:,} readers now?", default=False)


@register
@click.command("send-digest")
@click.option("--dry-run", is_flag=True,
              help="Say what would be sent and to how many readers, from the posts already "
                   "fetched; change nothing.")
@click.option("--to", "to_address", metavar="ADDRESS",
              help="Send the next digest to this one address as a test; marks nothing.")
@click.option("--yes", is_flag=True, help="Do not ask before mailing the readers.")
@click.option("--rate", type=click.FloatRange(min=0.01), metavar="N",
              help="At most N messages per second over all connections "
                   "(default: NEWSLETTER_SEND_RATE, else no cap).")
@click.option("--connections", type=click.IntRange(1, 50), metavar="N",
              help="Parallel SMTP connections (default: NEWSLETTER_SEND_CONNECTIONS, 4).")
@click.option("--workers", type=click.IntRange(1, 32), default=1, metavar="N",
              help="Sender processes on this machine, each with --connections connections "
                   "and its share of --rate (PostgreSQL only; default 1).")
@click.option("--worker", "as_worker", is_flag=True, hidden=True,
              help="Internal: one of --workers N's processes.")
@click.option("--retry-failed", "retry", is_flag=True,
              help="First put the failed deliveries of the latest digest back in the queue "
                   "(once the cause is fixed), then send as usual.")
@click.option("--quiet", is_flag=True,
              help="No progress and no summary unless something went wrong (for cron).")
@with_appcontext
def send_digest_command(dry_run: bool, to_address: str | None, yes: bool, rate: float | None,
                        connections: int | None, workers: int, as_worker: bool, retry: bool,
                        quiet: bool) -> None:
    """Mail the new posts to every confirmed reader, and finish any unfinished digest.

    Exit status: 0 all sent (or skipped: the reader left), 3 some failed or were deferred,
    1 an error stopped the run.
    """
    from .addresses import InvalidAddress
    from .db import db
    from .mail import DkimProblem, SmtpProblem
    from .posts import PostSourceError
    from .rendering import TemplateProblem
    from .sending import (
        DIGEST,
        SenderProcesses,
        SendError,
        SendOptions,
        plan_digest,
        send_digest,
        send_test_digest,
    )

    services = _services()
    problems = (SmtpProblem, DkimProblem, TemplateProblem, SendError, PostSourceError)
    if dry_run and to_address:
        raise click.UsageError("use either --dry-run or --to, not both")
    if retry and (dry_run or to_address):
        raise click.UsageError("--retry-failed sends to readers; use it without --dry-run and "
                               "--to")
    try:
        if as_worker:
            _send_as_worker(services, SendOptions.from_config(
                services.config, rate=rate, connections=connections))
            return
        if dry_run:
            _show_plan(plan_digest(db.session, services))
            return
        if to_address:
            subject = send_test_digest(db.session, services, to_address)
            click.echo(f'Sent "{subject}" to {to_address} as a test; nothing was marked.'
                       if subject else "No new posts since the last digest: nothing to send.")
            return
        options = SendOptions.from_config(services.config, rate=rate, connections=connections)
        lock = _send_lock()
        senders = None
        if workers > 1:
            if not lock.shared:
                raise click.UsageError(
                    "--workers needs PostgreSQL: SQLite takes one writer at a time, so run one "
                    "sender process and raise --connections instead")
            senders = SenderProcesses(_worker_argv(options, workers), workers)
        lock.acquire()
        try:
            if retry:
                _retry_failed(services, DIGEST)
            run = send_digest(db.session, services, lock=lock, options=options,
                              progress=_SendProgress(quiet, sys.stdout.isatty()),
                              confirm=None if yes or not _interactive() else _ask_before_sending,
                              senders=senders)
        finally:
            lock.release()
    except InvalidAddress as err:
        raise click.BadParameter(str(err), param_hint="--to") from None
    except problems as err:
        click.echo(f"send-digest: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo("\nInterrupted. Every message sent so far is recorded; run "
                   "`newsletter send-digest` again to send the rest.", err=True)
        sys.exit(EXIT_ERROR)
    for report in run.reports:
        _summary(report, quiet)
    if run.sync_error:
        click.echo(f"Cannot read the posts: {run.sync_error}", err=True)
    elif run.declined:
        click.echo("Not sent.")
    elif run.no_readers:
        click.echo("No confirmed readers yet: nothing sent; the new posts wait for the next run.")
    elif run.nothing_new and not quiet:
        click.echo("No new posts since the last digest: nothing new to send.")
    if run.sync_error or any(r.error for r in run.reports):
        sys.exit(EXIT_ERROR)
    if any(not r.complete for r in run.reports):
        sys.exit(EXIT_INCOMPLETE)


def _retry_failed(services: Any, kind: str) -> None:
    """Put the latest campaign's failed deliveries back in the queue and say how many."""
    from .db import db
    from .sending import retry_failed

    moved = retry_failed(db.session, kind, services.clock())
    if moved is None:
        click.echo(f"No {kind} has been sent yet: no failed deliveries to retry.")
        return
    campaign_id, count = moved
    click.echo(f"Moved {count:,} failed deliver{'y' if count == 1 else 'ies'} of campaign "
               f"{campaign_id} back to the queue.")


def _worker_argv(options: Any, workers: int) -> list[str]:
    """The command line of one of ``--workers N``'s processes: this command in worker mode,
    with the same settings (inherited environment and working directory) and its share of the
    rate."""
    argv = [sys.executable, "-c", "from newsletter.cli import main; main()", "send-digest",
            "--worker", "--connections", str(options.connections)]
    if options.rate:
        argv += ["--rate", repr(max(options.rate / workers, 0.01))]
    return argv


def _send_as_worker(services: Any, options: Any) -> None:
    """One of ``--workers N``'s processes: send what is left of every unfinished digest (the
    parent composed and planned it), telling the parent how it goes on stdout."""
    from .db import db
    from .sending import WorkerProgress, send_unfinished

    lock = _send_lock()
    lock.acquire()
    try:
        send_unfinished(db.session, services, lock=lock, options=options,
                        progress=WorkerProgress(sys.stdout))
    finally:
        lock.release()


def _show_plan(plan: Any) -> None:
    for campaign_id, subject, left in plan.unfinished:
        click.echo(f'Would resume campaign {campaign_id} "{subject}": {left:,} deliveries left.')
    if plan.subject is None:
        click.echo("No new posts since the last digest: nothing new would be sent.")
    else:
        click.echo(f'Would send "{plan.subject}" to {plan.readers:,} confirmed reader'
                   f"{'' if plan.readers == 1 else 's'}:")
        for title in plan.titles:
            click.echo(f"  - {title}")
    click.echo("(Dry run: nothing was fetched, planned or sent. `newsletter fetch-posts` brings "
               "in new posts first.)")


@register
@click.group("campaigns", invoke_without_command=True)
@click.pass_context
@with_appcontext
def campaigns_group(ctx: click.Context) -> None:
    """List everything sent to the list, newest first, with counts; `show ID` for one."""
    if ctx.invoked_subcommand is not None:
        return
    from .db import db
    from .sending import list_campaigns

    live = _fold_interrupted_sends()
    campaigns = list_campaigns(db.session)
    if not campaigns:
        click.echo("No campaigns yet: `newsletter send-digest` or `newsletter send-campaign "
                   "FILE.md` sends the first.")
        return
    click.echo(f"{'ID':>5}  {'KIND':<12}  {'CREATED (UTC)':<16}  {'STATUS':<8}  {'SENT':>7}  "
               f"{'FAILED':>6}  {'DEFER':>5}  {'SKIP':>5}  {'QUEUED':>6}  SUBJECT")
    for c in campaigns:
        n = c.counts
        click.echo(f"{c.id:>5}  {c.kind:<12}  {c.created_at:%Y-%m-%d %H:%M}  {c.status:<8}  "
                   f"{n.get('sent', 0):>7}  {n.get('failed', 0):>6}  {n.get('deferred', 0):>5}  "
                   f"{n.get('skipped', 0):>5}  {n.get('queued', 0):>6}  {c.subject}")
    if live:
        click.echo(live)


def _fold_interrupted_sends() -> str | None:
    """Fold in what a killed send left behind, so the counts shown are exact; a note to show
    instead when a send is running right now."""
    from .db import db
    from .sending import fold_interrupted

    if fold_interrupted(db.session, _send_lock(), _services().clock()):
        return None
    return ("A send is running now: these counts are live and keep moving (the last few "
            "seconds' messages show once it writes them).")


@campaigns_group.command("show")
@click.argument("campaign_id", type=int, metavar="ID")
@with_appcontext
def campaigns_show(campaign_id: int) -> None:
    """One campaign: per-status counts and the failed and deferred deliveries with the SMTP
    server's replies."""
    from .db import db
    from .sending import CampaignNotFound, describe_campaign

    live = _fold_interrupted_sends()
    try:
        details = describe_campaign(db.session, campaign_id)
    except CampaignNotFound as err:
        click.echo(str(err).capitalize(), err=True)
        sys.exit(EXIT_ERROR)
    c = details.summary
    click.echo(f'Campaign {c.id} ({c.kind}): "{c.subject}"')
    finished = f", finished {c.finished_at:%Y-%m-%d %H:%M}" if c.finished_at else ""
    click.echo(f"Status {c.status}; created {c.created_at:%Y-%m-%d %H:%M} UTC{finished}.")
    counts = ", ".join(f"{status} {c.counts.get(status, 0):,}" for status in
                       ("sent", "failed", "deferred", "skipped", "queued"))
    click.echo(f"Deliveries: {counts} (of {c.total:,}).")
    if details.problems:
        click.echo("Not delivered:")
        for p in details.problems:
            tries = f"{p.attempts} attempt{'' if p.attempts == 1 else 's'}"
            click.echo(f"  {p.email or '(erased reader)'}  {p.status}  {tries}  "
                       f"{p.reply or '(no reply recorded)'}")
        if details.more_problems:
            click.echo(f"  ... and {details.more_problems:,} more.")
    if live:
        click.echo(live)


def _ask_before_sending_campaign(subject: str, readers: int) -> bool:
    if readers <= 1:
        return True
    click.echo(f'Announcement: "{subject}"')
    return click.confirm(f"Send it to {readers:,} readers now?", default=False)


@register
@click.command("send-campaign")
@click.argument("file", metavar="FILE.md", type=click.Path(path_type=Path), required=False)
@click.option("--dry-run", is_flag=True,
              help="Say what would be sent and to how many readers; change nothing.")
@click.option("--to", "to_address", metavar="ADDRESS",
              help="Send it to this one address as a test; creates no campaign, marks nothing.")
@click.option("--again", is_flag=True,
              help="Send it although the same subject and body were sent before. (A copy that "
                   "was interrupted is resumed instead, never sent twice.)")
@click.option("--yes", is_flag=True, help="Do not ask before mailing the readers.")
@click.option("--rate", type=click.FloatRange(min=0.01), metavar="N",
              help="At most N messages per second over all connections "
                   "(default: NEWSLETTER_SEND_RATE, else no cap).")
@click.option("--connections", type=click.IntRange(1, 50), metavar="N",
              help="Parallel SMTP connections (default: NEWSLETTER_SEND_CONNECTIONS, 4).")
@click.option("--retry-failed", "retry", is_flag=True,
              help="Instead of a FILE: put the failed deliveries of the latest announcement "
                   "back in the queue (once the cause is fixed) and send them.")
@click.option("--quiet", is_flag=True,
              help="No progress and no summary unless something went wrong.")
@with_appcontext
def send_campaign_command(file: Path | None, dry_run: bool, to_address: str | None,
                          again: bool, yes: bool, rate: float | None, connections: int | None,
                          retry: bool, quiet: bool) -> None:
    """Mail an announcement written in Markdown (FILE.md) to every confirmed reader; run it
    again after an interruption to resume it.

    Exit status: 0 all sent (or skipped: the reader left), 3 some failed or were deferred (or
    an earlier interrupted announcement was finished first: run again), 1 an error stopped the
    run (including a file, template or SMTP problem, and content already sent without --again).
    """
    from .addresses import InvalidAddress
    from .campaigns import (
        CampaignError,
        plan_campaign,
        read_announcement,
        send_announcement,
        send_test_campaign,
    )
    from .db import db
    from .mail import DkimProblem, SmtpProblem
    from .rendering import TemplateProblem
    from .sending import SendError, SendOptions

    services = _services()
    problems = (CampaignError, SmtpProblem, DkimProblem, TemplateProblem, SendError)
    if dry_run and to_address:
        raise click.UsageError("use either --dry-run or --to, not both")
    if retry:
        if file is not None or dry_run or to_address or again:
            raise click.UsageError("--retry-failed retries the latest announcement: use it "
                                   "without FILE.md, --dry-run, --to and --again")
        _retry_failed_announcement(services, rate, connections, quiet)
        return
    if file is None:
        raise click.UsageError("missing FILE.md: the announcement to send (or --retry-failed)")
    resume = f"newsletter send-campaign {file}"
    try:
        announcement = read_announcement(file)
        if dry_run:
            _show_campaign_plan(plan_campaign(db.session, services, announcement), again)
            return
        if to_address:
            subject = send_test_campaign(db.session, services, announcement, to_address)
            click.echo(f'Sent "{subject}" to {to_address} as a test; nothing was marked.')
            return
        options = SendOptions.from_config(services.config, rate=rate, connections=connections)
        lock = _send_lock()
        lock.acquire()
        try:
            run = send_announcement(
                db.session, services, announcement, lock=lock, options=options,
                progress=_SendProgress(quiet, sys.stdout.isatty()), again=again,
                confirm=None if yes or not _interactive() else _ask_before_sending_campaign)
        finally:
            lock.release()
    except InvalidAddress as err:
        raise click.BadParameter(str(err), param_hint="--to") from None
    except problems as err:
        click.echo(f"send-campaign: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted. Every message sent so far is recorded; run `{resume}` "
                   "again to send the rest.", err=True)
        sys.exit(EXIT_ERROR)
    for report in run.reports:
        _summary(report, quiet, resume)
    if run.resumed_this:
        if not quiet:
            click.echo("This announcement had been interrupted: it was resumed, and nobody "
                       "gets it twice." + (" (--again sends a fresh copy once this one is "
                                           "finished.)" if again else ""))
    elif run.waiting:
        click.echo(f'An earlier announcement had been interrupted and was finished first; run '
                   f'`{resume}` again to send "{run.subject}".', err=True)
        sys.exit(EXIT_INCOMPLETE)
    elif run.declined:
        click.echo("Not sent.")
    elif run.no_readers:
        click.echo("No confirmed readers yet: nothing sent.")
    if any(r.error for r in run.reports):
        sys.exit(EXIT_ERROR)
    if any(not r.complete for r in run.reports):
        sys.exit(EXIT_INCOMPLETE)


def _retry_failed_announcement(services: Any, rate: float | None, connections: int | None,
                               quiet: bool) -> None:
    """``send-campaign --retry-failed``: requeue the latest announcement's failed deliveries
    and send what is left of every unfinished announcement."""
    from .campaigns import ANNOUNCEMENT
    from .db import db
    from .mail import SmtpProblem
    from .sending import SendError, SendOptions, check_smtp, send_unfinished

    resume = "newsletter send-campaign --retry-failed"
    options = SendOptions.from_config(services.config, rate=rate, connections=connections)
    lock = _send_lock()
    try:
        lock.acquire()
        try:
            check_smtp(services)
            _retry_failed(services, ANNOUNCEMENT)
            reports = send_unfinished(db.session, services, lock=lock, kind=ANNOUNCEMENT,
                                      options=options,
                                      progress=_SendProgress(quiet, sys.stdout.isatty()))
        finally:
            lock.release()
    except (SmtpProblem, SendError) as err:
        click.echo(f"send-campaign: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted. Every message sent so far is recorded; run `{resume}` "
                   "again to send the rest.", err=True)
        sys.exit(EXIT_ERROR)
    for report in reports:
        _summary(report, quiet, resume)
    if any(r.error for r in reports):
        sys.exit(EXIT_ERROR)
    if any(not r.complete for r in reports):
        sys.exit(EXIT_INCOMPLETE)


def _show_campaign_plan(plan: Any, again: bool) -> None:
    resumes = plan.resumes
    readers = f"{plan.readers:,} confirmed reader{'' if plan.readers == 1 else 's'}"
    if resumes is not None:
        click.echo(f'Would resume campaign {resumes.id} "{plan.subject}", which was '
                   f"interrupted: {resumes.left:,} deliveries left. Nobody gets it twice.")
    elif plan.copies and not again:
        last = plan.copies[-1]
        click.echo(f'Would refuse: "{plan.subject}" was already sent as campaign {last.id} on '
                   f"{last.created_at:%Y-%m-%d %H:%M} UTC (--again sends it anyway).")
    elif plan.other_unfinished:
        for campaign_id, subject, left in plan.other_unfinished:
            click.echo(f'Would first finish the interrupted campaign {campaign_id} "{subject}": '
                       f"{left:,} deliveries left.")
        click.echo(f'Then, on the next run, "{plan.subject}" to {readers}.')
    else:
        again_note = f" (again: sent before as campaign {plan.copies[-1].id})" \
            if plan.copies else ""
        click.echo(f'Would send "{plan.subject}" to {readers}{again_note}.')
        click.echo(f"Preheader: {plan.preheader}")
    click.echo("(Dry run: nothing was planned or sent.)")


@register
@click.command("preview-campaign")
@click.argument("file", metavar="FILE.md", type=click.Path(path_type=Path))
@click.option("--output", "output", default="preview", show_default=True,
              type=click.Path(file_okay=False, writable=True),
              help="Folder to write campaign.html, campaign.txt and campaign.eml into.")
@click.option("--open", "open_browser", is_flag=True,
              help="Open campaign.html in a web browser.")
@with_appcontext
def preview_campaign_command(file: Path, output: str, open_browser: bool) -> None:
    """Write an announcement (FILE.md) as a sample reader would get it; sends nothing."""
    import webbrowser

    from .campaigns import CampaignError, preview_campaign, read_announcement
    from .rendering import TemplateProblem

    try:
        preview = preview_campaign(_services(), read_announcement(file))
    except TemplateProblem as err:
        click.echo(f"Email template problem: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except CampaignError as err:
        click.echo(f"preview-campaign: {err}", err=True)
        sys.exit(EXIT_ERROR)
    paths = preview.write(output)
    click.echo(f"Announcement: {preview.subject}")
    for path in paths:
        click.echo(f"  {path}")
    if open_browser:
        webbrowser.open(paths[0].resolve().as_uri())


# --- the author's toolkit (subscribers list/import/export/erase, purge, stats, embed) -------


def _send_now(services: Any) -> None:
    """Hand the emails just queued to SMTP; if it is down they stay queued for the service's
    background sender or `newsletter send-queued`."""
    from .db import db
    from .outbox import deliver_queued

    sent = 0
    transport = services.open_transport()
    try:
        while True:
            report = deliver_queued(db.session, transport, sender=services.config["MAIL_FROM"],
                                    now=services.clock(),
                                    max_attempts=services.config["OUTBOX_MAX_ATTEMPTS"])
            sent += report.sent
            if report.errors:
                click.echo(f"SMTP problem: {report.errors[0]}. The emails stay queued; the "
                           "running service or `newsletter send-queued` sends them later.",
                           err=True)
                break
            if not report.sent:
                break
    finally:
        transport.close()
    if sent:
        click.echo(f"Sent {sent} email{'s' if sent != 1 else ''}.")


def _address_or_fail(error: Exception) -> None:
    raise click.BadParameter(str(error), param_hint="EMAIL") from None


_STATUS = click.Choice(["pending", "confirmed", "unsubscribed", "erased", "bounced"])


@subscribers_group.command("list")
@click.option("--status", type=_STATUS, help="Only readers with this status "
              "(default: all but the erased).")
@click.option("--format", "fmt", type=click.Choice(["text", "csv", "json"]), default="text",
              show_default=True, help="text: a table to read; csv: the export's columns; "
                                      "json: a list of readers, for scripts.")
@with_appcontext
def subscribers_list(status: str | None, fmt: str) -> None:
    """List readers with their status and subscription dates."""
    from .db import db
    from .readers import export_readers, iso, iter_readers

    if fmt == "csv":
        export_readers(db.session, sys.stdout, status)
        return
    if fmt == "json":
        click.echo("[", nl=False)
        for number, reader in enumerate(iter_readers(db.session, status)):
            item = {"id": reader.id, "email": reader.email, "name": reader.name,
                    "status": reader.status, "subscribed_at": iso(reader.subscribed_at),
                    "confirmed_at": iso(reader.confirmed_at) or None,
                    "unsubscribed_at": iso(reader.unsubscribed_at) or None,
                    "source": reader.source}
            click.echo(("," if number else "") + "\n  " + json.dumps(item, ensure_ascii=False),
                       nl=False)
        click.echo("\n]")
        return
    count = 0
    click.echo(f"{'id':>7}  {'email':<40}  {'status':<12}  {'subscribed':<10}  name")
    for reader in iter_readers(db.session, status):
        email = reader.email or "(erased)"
        click.echo(f"{reader.id:>7}  {email:<40}  {reader.status:<12}  "
                   f"{reader.subscribed_at.date().isoformat():<10}  {reader.name or ''}")
        count += 1
    click.echo(f"{count} reader{'s' if count != 1 else ''}.")


@subscribers_group.command("count")
@with_appcontext
def subscribers_count() -> None:
    """How many readers have each status."""
    from .db import db
    from .readers import count_by_status

    counts = count_by_status(db.session)
    for status, number in counts.items():
        click.echo(f"{status:<14}{number:>8}")
    click.echo(f"{'total':<14}{sum(counts.values()):>8}")


def _print_problems(title: str, problems: Any) -> None:
    if not problems.count:
        return
    click.echo(f"{title}: {problems.count}", err=True)
    for line, reason in problems.details[:50]:
        click.echo(f"  line {line}: {reason}", err=True)
    if problems.count > 50:
        click.echo(f"  ... and {problems.count - 50} more", err=True)


@subscribers_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--consent-note", required=True,
              help="Where and how these readers agreed to get the newsletter (kept with each "
                   "reader as proof), e.g. 'sign-up sheet at the May 2025 workshop'.")
@click.option("--require-confirmation", is_flag=True,
              help="Make them pending and send each the double-opt-in email instead.")
@click.option("--skip-invalid", is_flag=True,
              help="Import the valid rows even when some are invalid.")
@with_appcontext
def subscribers_import(file: Path, consent_note: str, require_confirmation: bool,
                       skip_invalid: bool) -> None:
    """Import readers from a CSV file: email, and optionally name, subscribed_at, source."""
    from .db import db
    from .readers import ImportInterrupted, ReadersError, import_readers

    services = _services()
    try:
        report = import_readers(db.session, services, file, consent_note=consent_note,
                                require_confirmation=require_confirmation,
                                skip_invalid=skip_invalid)
    except ImportInterrupted as err:
        click.echo(f"Import stopped: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except ReadersError as err:
        db.session.rollback()
        click.echo(f"Nothing imported: {err}", err=True)
        sys.exit(EXIT_ERROR)
    _print_problems("Invalid rows", report.invalid)
    if not report.committed:
        click.echo(f"Nothing imported: {report.invalid.count} of {report.rows} rows are invalid. "
                   "Fix them, or run again with --skip-invalid to import the rest.", err=True)
        sys.exit(EXIT_ERROR)
    _print_problems("Unsubscribed, not re-activated", report.unsubscribed)
    _print_problems("Erased at the reader's request, refused", report.erased)
    _print_problems("Skipped (their status in the file)", report.skipped)
    _print_problems("Duplicates in the file, merged", report.duplicates)
    state = "pending (asked to confirm)" if require_confirmation else "confirmed"
    # Every row is counted once, so the parts add up to the rows read.
    click.echo(f"Read {_count(report.rows, 'row')} from {file.name}: "
               f"{_count(report.added, 'new reader')} {state}, "
               f"{_count(report.confirmed_pending, 'waiting reader')} confirmed, "
               f"{report.already_present} "
               f"already here, {report.duplicates.count} repeated in the file (merged), "
               f"{report.unsubscribed.count} unsubscribed and "
               f"{report.erased.count} erased refused, {report.skipped.count} skipped, "
               f"{report.invalid.count} invalid.")
    if require_confirmation:
        click.echo(f"Confirmation emails queued: {report.confirmations_queued}"
                   + (f" ({report.confirmations_held} held back: one went to them recently)"
                      if report.confirmations_held else "") + ".")
        _send_now(services)


@subscribers_group.command("export")
@click.option("--status", type=_STATUS, help="Only readers with this status "
              "(default: all but the erased). Import brings back only confirmed ones.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write to this file instead of standard output.")
@with_appcontext
def subscribers_export(status: str | None, output: Path | None) -> None:
    """Write readers as CSV with their consent dates (the file imports again as it is)."""
    from .db import db
    from .readers import export_readers

    if output is None:
        export_readers(db.session, sys.stdout, status)
        return
    with output.open("w", newline="", encoding="utf-8") as handle:
        count = export_readers(db.session, handle, status)
    click.echo(f"Wrote {count} reader{'s' if count != 1 else ''} to {output}.")


@subscribers_group.command("add")
@click.argument("email")
@click.option("--name", help="The reader's first name (optional).")
@with_appcontext
def subscribers_add(email: str, name: str | None) -> None:
    """Sign a reader up on their behalf: they get the double-opt-in email to confirm."""
    from .addresses import InvalidAddress
    from .db import db
    from .readers import AddressSuppressed, add_reader

    services = _services()
    try:
        outcome = add_reader(db.session, services, email, name=name)
    except InvalidAddress as err:
        db.session.rollback()
        _address_or_fail(err)
        return
    except AddressSuppressed as err:
        db.session.rollback()
        click.echo(str(err), err=True)
        sys.exit(EXIT_ERROR)
    if outcome.status == "confirmed":
        click.echo(f"{email} is already a confirmed reader; nothing sent.")
        return
    if outcome.confirmation_queued:
        click.echo(f"Asked {email} to confirm: the double-opt-in email is queued.")
        _send_now(services)
    else:
        click.echo(f"{email} is waiting to confirm; a confirmation email went to them recently, "
                   "so no new one was sent (at most one per "
                   f"{services.config['CONFIRMATION_MIN_INTERVAL'] // 60} minutes and "
                   f"{services.config['CONFIRMATIONS_PER_DAY']} a day).")


@subscribers_group.command("unsubscribe")
@click.argument("email")
@with_appcontext
def subscribers_unsubscribe(email: str) -> None:
    """Unsubscribe a reader (for example one who asked by email); recorded as method cli."""
    from .addresses import InvalidAddress
    from .db import db
    from .readers import unsubscribe_reader
    from .subscriptions import NotFound

    try:
        subscriber, changed = unsubscribe_reader(db.session, _services(), email)
    except InvalidAddress as err:
        _address_or_fail(err)
        return
    except NotFound as err:
        click.echo(str(err), err=True)
        sys.exit(EXIT_ERROR)
    if changed:
        click.echo(f"Unsubscribed {subscriber.email}.")
    else:
        click.echo(f"{subscriber.email} was already unsubscribed; nothing changed.")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _scrub_note(scrubbed: bool | None) -> None:
    if scrubbed is False:
        click.echo("The database file could not be compacted because other connections kept it "
                   "busy; run the command again (it is safe to repeat).", err=True)
    elif scrubbed is None:
        click.echo("On PostgreSQL, run VACUUM FULL on subscribers, consent_events, outbox and "
                   "deliveries to remove the old row versions from the data files.")


@subscribers_group.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def subscribers_erase(email: str, yes: bool) -> None:
    """Erase everything personal held about a reader (GDPR); keeps only a keyed hash of the
    address so imports refuse it. Safe to repeat."""
    from .addresses import InvalidAddress
    from .db import db
    from .privacy import erase_reader

    if not yes:
        click.confirm(f"Erase {email} for good? This cannot be undone", abort=True)
    try:
        report = erase_reader(db.session, _services(), email)
    except InvalidAddress as err:
        _address_or_fail(err)
        return
    if report.outcome == "erased":
        click.echo(f"Erased reader {report.subscriber_id}: address, name, IP addresses and user "
                   f"agents removed from the reader, {_count(report.events, 'consent event')}, "
                   f"{_count(report.emails, 'email')} and "
                   f"{_count(report.deliveries, 'delivery record')}. An 'erased' event and a "
                   "keyed hash of the address remain, so imports refuse it.")
    elif report.outcome == "already_erased":
        click.echo("Already erased: nothing personal is held about this address"
                   + (f" (cleared {report.emails} leftover emails)" if report.emails else "")
                   + ".")
    else:
        click.echo("No reader had this address; nothing personal is held. Its keyed hash is now "
                   "on the suppression list, so imports refuse it.")
    _scrub_note(report.file_scrubbed)


@register
@click.command("purge")
@click.option("--dry-run", is_flag=True, help="Only say how many would be removed.")
@with_appcontext
def purge_command(dry_run: bool) -> None:
    """Remove sign-ups never confirmed within NEWSLETTER_PENDING_RETENTION_DAYS (default 30),
    with their events and emails; nothing about them is kept."""
    from .db import db
    from .privacy import purge_pending

    services = _services()
    report = purge_pending(db.session, services, dry_run=dry_run)
    days = services.config["PENDING_RETENTION_DAYS"]
    verb = "Would remove" if dry_run else "Removed"
    click.echo(f"{verb} {report.removed} sign-up{'s' if report.removed != 1 else ''} not "
               f"confirmed within {days} days (last asked before "
               f"{report.cutoff.date().isoformat()}).")
    if report.removed and not dry_run:
        _scrub_note(report.file_scrubbed)


@register
@click.command("stats")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="text: tables to read; json: the same figures, for "
                                      "scripts.")
@click.option("--weeks", default=12, show_default=True, type=click.IntRange(1, 104),
              help="How many weeks of sign-ups, confirmations and withdrawals to show (1-104).")
@with_appcontext
def stats_command(fmt: str, weeks: int) -> None:
    """Readers by status, weekly sign-ups, confirmations and withdrawals, the confirmation rate
    and the last campaigns' deliveries. No tracking pixels, no click tracking."""
    from .db import db
    from .stats import format_stats, list_stats

    live = _fold_interrupted_sends()
    stats = list_stats(db.session, _services().clock(), weeks=weeks)
    if fmt == "json":
        click.echo(json.dumps(stats.as_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_stats(stats))
        if live:
            click.echo(f"\n{live}")


@register
@click.command("embed-snippet")
@click.option("--page-url", help="The blog page the form sits on, where a reader without "
              "JavaScript comes back to (default: NEWSLETTER_SITE_URL).")
@click.option("--no-script", is_flag=True, help="Only the plain form, without the script.")
@with_appcontext
def embed_snippet_command(page_url: str | None, no_script: bool) -> None:
    """Print the subscribe form to paste into an embed block on the blog."""
    from urllib.parse import urlsplit

    from .embed import render_snippet

    config = current_app.config
    if page_url:
        parts = urlsplit(page_url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise click.BadParameter("expected the page's full http(s) URL",
                                     param_hint="--page-url")
        if origin not in config["ALLOWED_ORIGINS"]:
            click.echo(f"Note: {origin} is not in NEWSLETTER_ALLOWED_ORIGINS, so the form's "
                       "script will be refused and readers without script will land on this "
                       "service's thank-you page. Add it there.", err=True)
    elif not config["ALLOWED_ORIGINS"]:
        click.echo("Note: NEWSLETTER_ALLOWED_ORIGINS is empty; set it to the blog's origin "
                   "(https://blog.example.com) so the form may post from there.", err=True)
    click.echo(render_snippet(config, page_url, with_script=not no_script), nl=False)


COMMANDS.extend(WORKER_COMMANDS)  # newsletter worker, newsletter serve
COMMANDS.extend(BOUNCE_COMMANDS)  # newsletter process-bounces


def init_app(app: Flask) -> None:
    """Register the commands on the app, so `flask --app app ...` has them too."""
    for command in COMMANDS:
        app.cli.add_command(command)


# Commands that may start on a database without tables: init-db makes them; the demo and the
# development server and `serve` migrate the embedded SQLite default themselves; shell and
# routes only look.
_NO_SCHEMA_NEEDED = {"init-db", "shell", "routes"}
_MIGRATES_DEFAULT_DATABASE = {"demo", "run", "serve"}


def _create_app() -> Flask:
    """The app for the command being run, with its database ready for it.

    A missing setting or a database without this version's schema ends the command with one
    line saying what to do; the embedded SQLite default is migrated by `run`, `serve` and `demo`.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from . import create_app
    from .db import schema_problem, upgrade_schema

    try:
        app = create_app()
    except ConfigError as err:
        raise click.ClickException(f"{err}") from None
    context = click.get_current_context(silent=True)
    command = context.find_root().invoked_subcommand if context else None
    if command in _NO_SCHEMA_NEEDED:
        return app
    where = _display_url(app.config["SQLALCHEMY_DATABASE_URI"])
    try:
        problem = schema_problem(app)
        if problem and (command == "demo" or (command in _MIGRATES_DEFAULT_DATABASE
                                              and app.config["DATABASE_IS_DEFAULT"])):
            upgrade_schema(app)
            problem = None
    except SQLAlchemyError as err:
        raise click.ClickException(
            f"cannot use the database {where}: {_one_line(err)}. Check "
            "NEWSLETTER_DATABASE_URL and that the database server is running.") from None
    if problem:
        hint = (" (this is the default database in ./instance: run `newsletter` in the folder "
                "that holds the service's .env and instance folder, or set "
                "NEWSLETTER_DATABASE_URL)" if app.config["DATABASE_IS_DEFAULT"] else "")
        raise click.ClickException(f"{problem}. Database: {where}{hint}.")
    return app


class NewsletterGroup(FlaskGroup):
    """Flask's command group, with help that always works: our commands are listed without
    loading the app (so a missing setting cannot hide them), and the app is built only when a
    command needs it. Flask's --app and --debug options do not apply here and are left out."""

    def __init__(self, **extra: Any) -> None:
        super().__init__(create_app=_create_app, add_version_option=False, **extra)
        self.params = [p for p in self.params if p.name not in ("app", "debug")]
        for command in COMMANDS:
            self.add_command(command)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Our commands, Flask's run/shell/routes and plugins; never loads the app."""
        self._load_plugin_commands()
        return click.Group.get_command(self, ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command, without loading the app."""
        self._load_plugin_commands()
        return sorted(click.Group.list_commands(self, ctx))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("newsletter")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main() -> None:
    """Entry point of the ``newsletter`` console script."""
    group = NewsletterGroup(
        help="A self-hosted newsletter: subscriptions with double opt-in, digests of new posts, "
             "one-click unsubscribe. Settings come from NEWSLETTER_* variables and a .env file.",
        params=[click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                             help="Show the name and version of newsletter and exit.",
                             callback=_print_version)],
    )
    group.main(prog_name="newsletter")


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"newsletter {_version()}")
    ctx.exit()


if __name__ == "__main__":
    main()

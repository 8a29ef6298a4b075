"""The reader list: subscribers list/count/show/add/import/export/unsubscribe/erase, and purge."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from flask.cli import with_appcontext

# The domain is imported inside each command, lazily: it pulls in SQLAlchemy (see base.py).
from .base import EXIT_ERROR, _services, _session, register

if TYPE_CHECKING:
    from ..reader_import import RowProblems
    from ..services import Services


@register
@click.group("subscribers")
def subscribers_group() -> None:
    """Look after readers: list, count, import, export, add, unsubscribe, show, erase."""


@subscribers_group.command("show")
@click.argument("email")
@with_appcontext
def subscribers_show(email: str) -> None:
    """Print a reader's status and complete consent history as JSON."""
    from ..addresses import InvalidAddressError
    from ..subscriptions import describe, find_subscriber, is_suppressed

    try:
        subscriber = find_subscriber(_session(), email)
    except InvalidAddressError as err:
        raise click.BadParameter(str(err), param_hint="EMAIL") from None
    if subscriber is None:
        if is_suppressed(_session(), _services(), email):
            click.echo(
                f"No reader with the address {email}: it was erased, and only a keyed "
                "hash of it is kept (so imports refuse it).",
                err=True,
            )
        else:
            click.echo(f"No reader with the address {email}.", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(json.dumps(describe(_session(), subscriber), indent=2, ensure_ascii=False))


def _send_now(services: Services) -> None:
    """Hand the emails just queued to SMTP; if it is down they stay queued for the service's
    background sender or `newsletter send-queued`."""
    from ..bounces.verp import envelope_senders
    from ..outbox import deliver_queued

    sent = 0
    transport = services.open_transport()
    try:
        while True:
            report = deliver_queued(
                _session(),
                transport,
                sender=envelope_senders(services.config, None),
                now=services.clock(),
                max_attempts=services.config["OUTBOX_MAX_ATTEMPTS"],
            )
            sent += report.sent
            if report.errors:
                click.echo(
                    f"SMTP problem: {report.errors[0]}. The emails stay queued; the "
                    "running service or `newsletter send-queued` sends them later.",
                    err=True,
                )
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
@click.option(
    "--status", type=_STATUS, help="Only readers with this status (default: all but the erased)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "csv", "json"]),
    default="text",
    show_default=True,
    help="text: a table to read; csv: the export's columns; json: a list of readers, for scripts.",
)
@with_appcontext
def subscribers_list(status: str | None, fmt: str) -> None:
    """List readers with their status and subscription dates."""
    from ..readers import export_readers, iso, iter_readers

    if fmt == "csv":
        export_readers(_session(), sys.stdout, status)
        return
    if fmt == "json":
        click.echo("[", nl=False)
        for number, reader in enumerate(iter_readers(_session(), status)):
            item = {
                "id": reader.id,
                "email": reader.email,
                "name": reader.name,
                "status": reader.status,
                "subscribed_at": iso(reader.subscribed_at),
                "confirmed_at": iso(reader.confirmed_at) or None,
                "unsubscribed_at": iso(reader.unsubscribed_at) or None,
                "source": reader.source,
            }
            click.echo(
                ("," if number else "") + "\n  " + json.dumps(item, ensure_ascii=False), nl=False
            )
        click.echo("\n]")
        return
    count = 0
    click.echo(f"{'id':>7}  {'email':<40}  {'status':<12}  {'subscribed':<10}  name")
    for reader in iter_readers(_session(), status):
        email = reader.email or "(erased)"
        click.echo(
            f"{reader.id:>7}  {email:<40}  {reader.status:<12}  "
            f"{reader.subscribed_at.date().isoformat():<10}  {reader.name or ''}"
        )
        count += 1
    click.echo(f"{count} reader{'s' if count != 1 else ''}.")


@subscribers_group.command("count")
@with_appcontext
def subscribers_count() -> None:
    """How many readers have each status."""
    from ..readers import count_by_status

    counts = count_by_status(_session())
    for status, number in counts.items():
        click.echo(f"{status:<14}{number:>8}")
    click.echo(f"{'total':<14}{sum(counts.values()):>8}")


def _print_problems(title: str, problems: RowProblems) -> None:
    if not problems.count:
        return
    click.echo(f"{title}: {problems.count}", err=True)
    for line, reason in problems.details[:50]:
        click.echo(f"  line {line}: {reason}", err=True)
    if problems.count > 50:
        click.echo(f"  ... and {problems.count - 50} more", err=True)


@subscribers_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--consent-note",
    required=True,
    help="Where and how these readers agreed to get the newsletter (kept with each "
    "reader as proof), e.g. 'sign-up sheet at the May 2025 workshop'.",
)
@click.option(
    "--require-confirmation",
    is_flag=True,
    help="Make them pending and send each the double-opt-in email instead.",
)
@click.option(
    "--skip-invalid", is_flag=True, help="Import the valid rows even when some are invalid."
)
@with_appcontext
def subscribers_import(
    file: Path, consent_note: str, require_confirmation: bool, skip_invalid: bool
) -> None:
    """Import readers from a CSV file: email, and optionally name, subscribed_at, source."""
    from ..reader_import import ImportInterruptedError, import_readers
    from ..readers import ReadersError

    services = _services()
    try:
        report = import_readers(
            _session(),
            services,
            file,
            consent_note=consent_note,
            require_confirmation=require_confirmation,
            skip_invalid=skip_invalid,
        )
    except ImportInterruptedError as err:
        click.echo(f"Import stopped: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except ReadersError as err:
        _session().rollback()
        click.echo(f"Nothing imported: {err}", err=True)
        sys.exit(EXIT_ERROR)
    _print_problems("Invalid rows", report.invalid)
    if not report.committed:
        click.echo(
            f"Nothing imported: {report.invalid.count} of {report.rows} rows are invalid. "
            "Fix them, or run again with --skip-invalid to import the rest.",
            err=True,
        )
        sys.exit(EXIT_ERROR)
    _print_problems("Unsubscribed, not re-activated", report.unsubscribed)
    _print_problems("Erased at the reader's request, refused", report.erased)
    _print_problems("Skipped (their status in the file)", report.skipped)
    _print_problems("Duplicates in the file, merged", report.duplicates)
    state = "pending (asked to confirm)" if require_confirmation else "confirmed"
    # Every row is counted once, so the parts add up to the rows read.
    click.echo(
        f"Read {_count(report.rows, 'row')} from {file.name}: "
        f"{_count(report.added, 'new reader')} {state}, "
        f"{_count(report.confirmed_pending, 'waiting reader')} confirmed, "
        f"{report.already_present} "
        f"already here, {report.duplicates.count} repeated in the file (merged), "
        f"{report.unsubscribed.count} unsubscribed and "
        f"{report.erased.count} erased refused, {report.skipped.count} skipped, "
        f"{report.invalid.count} invalid."
    )
    if require_confirmation:
        click.echo(
            f"Confirmation emails queued: {report.confirmations_queued}"
            + (
                f" ({report.confirmations_held} held back: one went to them recently)"
                if report.confirmations_held
                else ""
            )
            + "."
        )
        _send_now(services)


@subscribers_group.command("export")
@click.option(
    "--status",
    type=_STATUS,
    help="Only readers with this status "
    "(default: all but the erased). Import brings back only confirmed ones.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of standard output.",
)
@with_appcontext
def subscribers_export(status: str | None, output: Path | None) -> None:
    """Write readers as CSV with their consent dates (the file imports again as it is)."""
    from ..readers import export_readers

    if output is None:
        export_readers(_session(), sys.stdout, status)
        return
    with output.open("w", newline="", encoding="utf-8") as handle:
        count = export_readers(_session(), handle, status)
    click.echo(f"Wrote {count} reader{'s' if count != 1 else ''} to {output}.")


@subscribers_group.command("add")
@click.argument("email")
@click.option("--name", help="The reader's first name (optional).")
@with_appcontext
def subscribers_add(email: str, name: str | None) -> None:
    """Sign a reader up on their behalf: they get the double-opt-in email to confirm."""
    from ..addresses import InvalidAddressError
    from ..readers import AddressSuppressedError, add_reader

    services = _services()
    try:
        outcome = add_reader(_session(), services, email, name=name)
    except InvalidAddressError as err:
        _session().rollback()
        _address_or_fail(err)
        return
    except AddressSuppressedError as err:
        _session().rollback()
        click.echo(str(err), err=True)
        sys.exit(EXIT_ERROR)
    if outcome.status == "confirmed":
        click.echo(f"{email} is already a confirmed reader; nothing sent.")
        return
    if outcome.confirmation_queued:
        click.echo(f"Asked {email} to confirm: the double-opt-in email is queued.")
        _send_now(services)
    else:
        click.echo(
            f"{email} is waiting to confirm; a confirmation email went to them recently, "
            "so no new one was sent (at most one per "
            f"{services.config['CONFIRMATION_MIN_INTERVAL'] // 60} minutes and "
            f"{services.config['CONFIRMATIONS_PER_DAY']} a day)."
        )


@subscribers_group.command("unsubscribe")
@click.argument("email")
@with_appcontext
def subscribers_unsubscribe(email: str) -> None:
    """Unsubscribe a reader (for example one who asked by email); recorded as method cli."""
    from ..addresses import InvalidAddressError
    from ..readers import unsubscribe_reader
    from ..subscriptions import ReaderNotFoundError

    try:
        subscriber, changed = unsubscribe_reader(_session(), _services(), email)
    except InvalidAddressError as err:
        _address_or_fail(err)
        return
    except ReaderNotFoundError as err:
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
        click.echo(
            "The database file could not be compacted because other connections kept it "
            "busy; run the command again (it is safe to repeat).",
            err=True,
        )
    elif scrubbed is None:
        click.echo(
            "On PostgreSQL, run VACUUM FULL on subscribers, consent_events, outbox and "
            "deliveries to remove the old row versions from the data files."
        )


@subscribers_group.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def subscribers_erase(email: str, yes: bool) -> None:
    """Erase everything personal held about a reader (GDPR); keeps only a keyed hash of the
    address so imports refuse it. Safe to repeat."""
    from ..addresses import InvalidAddressError
    from ..privacy import erase_reader

    if not yes:
        click.confirm(f"Erase {email} for good? This cannot be undone", abort=True)
    try:
        report = erase_reader(_session(), _services(), email)
    except InvalidAddressError as err:
        _address_or_fail(err)
        return
    if report.outcome == "erased":
        click.echo(
            f"Erased reader {report.subscriber_id}: address, name, IP addresses and user "
            f"agents removed from the reader, {_count(report.events, 'consent event')}, "
            f"{_count(report.emails, 'email')} and "
            f"{_count(report.deliveries, 'delivery record')}. An 'erased' event and a "
            "keyed hash of the address remain, so imports refuse it."
        )
    elif report.outcome == "already_erased":
        click.echo(
            "Already erased: nothing personal is held about this address"
            + (f" (cleared {report.emails} leftover emails)" if report.emails else "")
            + "."
        )
    else:
        click.echo(
            "No reader had this address; nothing personal is held. Its keyed hash is now "
            "on the suppression list, so imports refuse it."
        )
    _scrub_note(report.file_scrubbed)


@register
@click.command("purge")
@click.option("--dry-run", is_flag=True, help="Only say how many would be removed.")
@with_appcontext
def purge_command(dry_run: bool) -> None:
    """Remove sign-ups never confirmed within NEWSLETTER_PENDING_RETENTION_DAYS (default 30),
    with their events and emails; nothing about them is kept."""
    from ..privacy import purge_pending

    services = _services()
    report = purge_pending(_session(), services, dry_run=dry_run)
    days = services.config["PENDING_RETENTION_DAYS"]
    verb = "Would remove" if dry_run else "Removed"
    click.echo(
        f"{verb} {report.removed} sign-up{'s' if report.removed != 1 else ''} not "
        f"confirmed within {days} days (last asked before "
        f"{report.cutoff.date().isoformat()})."
    )
    if report.removed and not dry_run:
        _scrub_note(report.file_scrubbed)

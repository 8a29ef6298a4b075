"""``newsletter process-bounces``: read the bounce mailbox and apply what it holds."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

# The domain is imported inside each command, lazily: it pulls in SQLAlchemy (see base.py).
from .base import _services, _session, register

_RESULT_LABELS = {
    "marked bounced": "readers marked bounced",
    "marked unsubscribed (complaint)": "readers unsubscribed after a complaint",
    "counted": "soft bounces counted",
    "recorded": "about readers who had already left (recorded only)",
}


@register
@click.command("process-bounces")
@click.option(
    "--delete",
    is_flag=True,
    help="Delete processed messages instead of moving them to the processed folder.",
)
@with_appcontext
def process_bounces_command(delete: bool) -> None:
    """Read new bounces, complaints and auto-replies from NEWSLETTER_BOUNCE_MAILBOX, apply them
    to the readers, and move processed messages away; unrecognised ones stay."""
    from ..bounces.mailbox import MailboxError, process_configured_mailbox

    try:
        report = process_configured_mailbox(
            _session(), current_app.config, _services().clock, delete=delete
        )
    except MailboxError as err:
        raise click.ClickException(str(err)) from None
    handled = sum(report.kinds.values()) - report.unrecognised
    click.echo(
        f"Processed {handled} message(s); {report.unrecognised} unrecognised "
        f"(left in the mailbox); {report.unmatched} about nobody on the list."
    )
    for kind, number in sorted(report.kinds.items()):
        click.echo(f"  {kind}: {number}")
    for result, label in _RESULT_LABELS.items():
        if report.results.get(result):
            click.echo(f"  {label}: {report.results[result]}")

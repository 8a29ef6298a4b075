"""``newsletter process-bounces``: read the bounce mailbox and apply what it holds.
(A module of its own for now; it joins the ``newsletter.cli`` package later.)"""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import with_appcontext


@click.command("process-bounces")
@click.option("--delete", is_flag=True,
              help="Delete processed messages instead of moving them to the processed folder.")
@with_appcontext
def process_bounces_command(delete: bool) -> None:
    """Read new bounces, complaints and auto-replies from NEWSLETTER_BOUNCE_MAILBOX, apply them
    to the readers, and move processed messages away; unrecognised ones stay."""
    from .bounces.mailbox import MailboxError, open_mailbox, process_mailbox
    from .db import db
    from .services import get_services

    config = current_app.config
    if not config["BOUNCE_MAILBOX"]:
        raise click.ClickException(
            "NEWSLETTER_BOUNCE_MAILBOX is not set: set it to imaps://user:password@host/INBOX, "
            "imap://... (STARTTLS), pop3s://... or maildir:///path")
    try:
        box = open_mailbox(config["BOUNCE_MAILBOX"],
                           processed_folder=config["BOUNCE_PROCESSED_FOLDER"],
                           timeout=config["SMTP_TIMEOUT"])
        report = process_mailbox(db.session(), config, get_services().clock, box, delete=delete)
    except MailboxError as err:
        raise click.ClickException(str(err)) from None
    handled = sum(report.kinds.values()) - report.unrecognised
    click.echo(f"Processed {handled} message(s); {report.unrecognised} unrecognised "
               f"(left in the mailbox); {report.unmatched} about nobody on the list.")
    for kind, number in sorted(report.kinds.items()):
        click.echo(f"  {kind}: {number}")
    for result, number in sorted(report.results.items()):
        click.echo(f"  readers {result}: {number}")


def init_app(app: Flask) -> None:
    """Register the command on the app."""
    app.cli.add_command(process_bounces_command)

"""The ``newsletter`` command: thin click commands over the domain functions."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext

from .config import DEFAULTS, ConfigError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INCOMPLETE = 3  # some deliveries failed or were deferred

COMMANDS: list[click.Command] = []


def register(command: click.Command) -> click.Command:
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
    from .db import upgrade_schema

    before, after = upgrade_schema(current_app)  # type: ignore[arg-type]
    url = current_app.config["SQLALCHEMY_DATABASE_URI"]
    where = _display_url(url)
    if before == after:
        click.echo(f"Database {where} is up to date (schema {after}).")
    elif before is None:
        click.echo(f"Created the database schema in {where} (schema {after}).")
    else:
        click.echo(f"Upgraded {where} from schema {before} to {after}.")


def _display_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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
    """Look after readers: show one reader's consent history."""


@subscribers_group.command("show")
@click.argument("email")
@with_appcontext
def subscribers_show(email: str) -> None:
    """Print a reader's status and complete consent history as JSON."""
    from .addresses import InvalidAddress
    from .db import db
    from .subscriptions import describe, find_subscriber

    try:
        subscriber = find_subscriber(db.session, email)
    except InvalidAddress as err:
        raise click.BadParameter(str(err), param_hint="EMAIL") from None
    if subscriber is None:
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

    from .db import upgrade_schema
    from .demo import mailbox_dir, write_sample_posts
    from .mailcatcher import MailCatcher

    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    if not app.config["DEMO"]:
        raise click.UsageError("run the demo as `newsletter demo` (or set NEWSLETTER_DEMO=1)")
    upgrade_schema(app)
    catcher = MailCatcher(mailbox_dir(app), port=smtp_port).start()
    app.config.update(SMTP_HOST="127.0.0.1", SMTP_PORT=catcher.port, SMTP_SECURITY="none",
                      SMTP_USERNAME=None, SMTP_PASSWORD=None)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    app.config["PUBLIC_URL"] = base
    if app.config["SITE_URL"] == DEFAULTS["SITE_URL"]:
        app.config["SITE_URL"] = base  # there is no blog in the demo; link to our own pages
    posts = write_sample_posts(app)
    click.echo(f"""
  newsletter demo is running.

  Subscribe:      {base}/subscribe
  Caught emails:  {base}/demo/mail   (also as .eml files in {mailbox_dir(app)})
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


# --- sending and campaigns (send-digest, campaigns, send-campaign) -------------------------


# --- the author's toolkit (subscribers list/import/export/erase, purge, stats, embed) -------


def init_app(app: Flask) -> None:
    """Register the commands on the app, so `flask --app app ...` has them too."""
    for command in COMMANDS:
        app.cli.add_command(command)


def _create_app() -> Flask:
    from . import create_app

    try:
        return create_app()
    except ConfigError as err:
        raise click.ClickException(f"{err}") from None


def main() -> None:
    """Entry point of the ``newsletter`` console script."""
    group = FlaskGroup(
        create_app=_create_app,
        help="A self-hosted newsletter: subscriptions with double opt-in, digests of new posts, "
             "one-click unsubscribe. Settings come from NEWSLETTER_* variables and a .env file.",
    )
    group.main(prog_name="newsletter")

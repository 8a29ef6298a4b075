"""``newsletter worker`` and ``newsletter serve``: thin click commands over :mod:`worker` and
:mod:`serve`. (Registered in :mod:`cli`; kept apart while the CLI becomes a package.)"""

from __future__ import annotations

import json
import sys

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from ..serve import ServeError, serve

# The domain is imported inside each command, lazily: it pulls in SQLAlchemy (see base.py).
from .base import _services, _session, register


@register
@click.command("worker")
@click.option(
    "--status",
    is_flag=True,
    help="Print what the workers last reported (last tick, next tick, last error) "
    "and exit: 0 when one is running, 1 when none is.",
)
@click.option("--json", "as_json", is_flag=True, help="With --status: as JSON.")
@with_appcontext
def worker_command(status: bool, as_json: bool) -> None:
    """Run the worker: the scheduled digest (NEWSLETTER_DIGEST_SCHEDULE), post polling, the
    outbox, daily purge and queued jobs. Stops cleanly on SIGTERM or Ctrl-C."""
    from ..worker import Worker, worker_status

    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    if status:
        report = worker_status(_session(), _services().clock(), app.config["WORKER_POLL_SECONDS"])
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            click.echo(f"Worker: {report['status']}.")
            for worker in report["workers"]:
                click.echo(f"  {worker['id']} (last seen {worker['updated_at']})")
            for key in ("last_seen", "last_tick", "next_tick", "last_error", "last_error_at"):
                if report.get(key):
                    click.echo(f"  {key.replace('_', ' ')}: {report[key]}")
        sys.exit(0 if report["running"] else 1)
    Worker(app).run()


@register
@click.command("serve")
@click.option(
    "--bind",
    default="127.0.0.1:8000",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the web server listens (behind a TLS proxy).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Web server processes (gunicorn) or 4x as many threads (waitress).",
)
@click.option(
    "--no-worker", is_flag=True, help="Only the web server (run `newsletter worker` elsewhere)."
)
@with_appcontext
def serve_command(bind: str, workers: int, no_worker: bool) -> None:
    """Run the whole service: a production web server plus one worker, stopped together by
    SIGTERM or Ctrl-C. Run `newsletter init-db` first."""
    try:
        code = serve(bind, workers, with_worker=not no_worker)
    except ServeError as err:
        raise click.ClickException(str(err)) from None
    sys.exit(code)

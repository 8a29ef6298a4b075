"""List statistics: stats."""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

# The domain is imported inside each command, lazily: it pulls in SQLAlchemy (see base.py).
from .base import _services, _session, register
from .campaigns import _fold_interrupted_sends


@register
@click.command("stats")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: tables to read; json: the same figures, for scripts.",
)
@click.option(
    "--weeks",
    default=12,
    show_default=True,
    type=click.IntRange(1, 104),
    help="How many weeks of sign-ups, confirmations and withdrawals to show (1-104).",
)
@with_appcontext
def stats_command(fmt: str, weeks: int) -> None:
    """Readers by status, weekly sign-ups, confirmations and withdrawals, the confirmation rate
    and the last campaigns' deliveries. No tracking pixels, no click tracking."""
    from ..stats import format_stats, list_stats

    live = _fold_interrupted_sends()
    services = _services()
    stats = list_stats(_session(), services.clock(), weeks=weeks, config=services.config)
    if fmt == "json":
        click.echo(json.dumps(stats.as_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_stats(stats))
        if live:
            click.echo(f"\n{live}")

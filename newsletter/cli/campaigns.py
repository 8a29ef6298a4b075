"""Campaign history: campaigns and campaigns show."""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from .base import EXIT_ERROR, _services, register
from .sending import _send_lock


@register
@click.group("campaigns", invoke_without_command=True)
@click.pass_context
@with_appcontext
def campaigns_group(ctx: click.Context) -> None:
    """List everything sent to the list, newest first, with counts; `show ID` for one."""
    if ctx.invoked_subcommand is not None:
        return
    from ..db import db
    from ..sending import list_campaigns

    live = _fold_interrupted_sends()
    campaigns = list_campaigns(db.session())
    if not campaigns:
        click.echo(
            "No campaigns yet: `newsletter send-digest` or `newsletter send-campaign "
            "FILE.md` sends the first."
        )
        return
    click.echo(
        f"{'ID':>5}  {'KIND':<12}  {'CREATED (UTC)':<16}  {'STATUS':<8}  {'SENT':>7}  "
        f"{'FAILED':>6}  {'DEFER':>5}  {'SKIP':>5}  {'QUEUED':>6}  SUBJECT"
    )
    for c in campaigns:
        n = c.counts
        click.echo(
            f"{c.id:>5}  {c.kind:<12}  {c.created_at:%Y-%m-%d %H:%M}  {c.status:<8}  "
            f"{n.get('sent', 0):>7}  {n.get('failed', 0):>6}  {n.get('deferred', 0):>5}  "
            f"{n.get('skipped', 0):>5}  {n.get('queued', 0):>6}  {c.subject}"
        )
    if live:
        click.echo(live)


def _fold_interrupted_sends() -> str | None:
    """Fold in what a killed send left behind, so the counts shown are exact; a note to show
    instead when a send is running right now."""
    from ..db import db
    from ..sending import fold_interrupted

    if fold_interrupted(db.session(), _send_lock(), _services().clock()):
        return None
    return (
        "A send is running now: these counts are live and keep moving (the last few "
        "seconds' messages show once it writes them)."
    )


def _echo_bounce_figures(campaign_id: int) -> None:
    """The campaign's bounce and complaint counts and rates, and any warning they call for."""
    from flask import current_app

    from ..bounces.figures import campaign_bounce_figures
    from ..db import db

    figures = campaign_bounce_figures(db.session(), [campaign_id], current_app.config)[campaign_id]
    click.echo(f"Bounces and complaints: {figures.summary()}.")
    for warning in figures.warnings:
        click.echo(f"Warning: {warning}")


@campaigns_group.command("show")
@click.argument("campaign_id", type=int, metavar="ID")
@with_appcontext
def campaigns_show(campaign_id: int) -> None:
    """One campaign: per-status counts and the failed and deferred deliveries with the SMTP
    server's replies."""
    from ..db import db
    from ..sending import CampaignNotFoundError, describe_campaign

    live = _fold_interrupted_sends()
    try:
        details = describe_campaign(db.session(), campaign_id)
    except CampaignNotFoundError as err:
        click.echo(str(err).capitalize(), err=True)
        sys.exit(EXIT_ERROR)
    c = details.summary
    click.echo(f'Campaign {c.id} ({c.kind}): "{c.subject}"')
    finished = f", finished {c.finished_at:%Y-%m-%d %H:%M}" if c.finished_at else ""
    click.echo(f"Status {c.status}; created {c.created_at:%Y-%m-%d %H:%M} UTC{finished}.")
    counts = ", ".join(
        f"{status} {c.counts.get(status, 0):,}"
        for status in ("sent", "failed", "deferred", "skipped", "queued")
    )
    click.echo(f"Deliveries: {counts} (of {c.total:,}).")
    _echo_bounce_figures(c.id)
    if details.problems:
        click.echo("Not delivered:")
        for p in details.problems:
            tries = f"{p.attempts} attempt{'' if p.attempts == 1 else 's'}"
            click.echo(
                f"  {p.email or '(erased reader)'}  {p.status}  {tries}  "
                f"{p.reply or '(no reply recorded)'}"
            )
        if details.more_problems:
            click.echo(f"  ... and {details.more_problems:,} more.")
    if live:
        click.echo(live)

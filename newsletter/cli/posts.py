"""Posts and the next digest: fetch-posts and preview-digest."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
from flask.cli import with_appcontext

from .base import EXIT_ERROR, _services, register
from .notes import NOTE_FILE, NOTE_HELP
from .previews import preview_options, write_preview


def backfill_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The --backfill N option, explained by ``help``."""
    return click.option(
        "--backfill", type=click.IntRange(min=0), default=None, metavar="N", help=help
    )


@register
@click.command("fetch-posts")
@backfill_option(
    "Also mail the newest N posts already published that were never mailed: "
    "the next digest carries them (default: none; works on any sync)."
)
@with_appcontext
def fetch_posts_command(backfill: int | None) -> None:
    """Sync posts from NEWSLETTER_FEED_URL or NEWSLETTER_POSTS_DIR and list what is new."""
    from ..db import db
    from ..posts import PostSourceError, sync_posts

    try:
        report = sync_posts(db.session(), _services(), backfill=backfill)
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
        click.echo(
            f"Skipped {report.duplicates} entr{'y' if report.duplicates == 1 else 'ies'} "
            "repeating an id seen earlier in the source."
        )


def _backfill_lines(report: Any) -> list[str]:
    """What a sync did with the posts already published: archived on a first sync, and what
    ``--backfill N`` made new (or why nothing)."""
    n, backfilled, archived = report.backfill, report.backfilled_titles, report.archived_titles
    flag = f"--backfill {n}"
    if report.first_sync:
        published = len(archived) + len(backfilled)
        if archived and backfilled:
            return [
                f"First sync of {report.source}: the newest {len(backfilled)} of the "
                f"{published} posts already published go into the next digest ({flag}); "
                f"the other {len(archived)} are recorded as sent before and will not be "
                "mailed."
            ]
        if archived:
            return [
                f"First sync of {report.source}: {len(archived)} post(s) already published "
                "are recorded as sent before and will not be mailed (`newsletter "
                "fetch-posts --backfill N` mails the newest N, now or later)."
            ]
        if backfilled:
            return [
                f"First sync of {report.source}: all {published} post(s) already published "
                f"go into the next digest ({flag})."
            ]
        if n:
            return [
                f"First sync of {report.source}: no post is published there yet, so "
                f"{flag} found none to mail."
            ]
        return []
    if n is None:
        return []
    if n == 0:
        return [f"{flag} marks no post as new."]
    if backfilled:
        return [
            f"{flag}: {len(backfilled)} post(s) published before and never mailed go "
            "into the next digest:",
            *(f"  {title}" for title in backfilled),
        ]
    found = report.backfill_found
    if found:
        which = f"the newest {found}" if found == n else f"all {found}"
        return [
            f"{flag}: {which} published post(s) never mailed are already new, waiting for "
            "the next digest; nothing changed."
        ]
    return [f"{flag}: no published post is left that was never mailed; nothing changed."]


def _sync_posts_for_digest(services: Any, backfill: int | None) -> Any:
    """Bring the posts table up to date from the feed or Markdown folder and return the sync
    report; a source problem (none configured, unreachable, unparseable) ends the command with
    one line."""
    from .. import posts
    from ..db import db

    try:
        return posts.sync_posts(db.session(), services, backfill=backfill)
    except posts.PostSourceError as err:
        click.echo(f"Cannot read the posts: {err}", err=True)
        sys.exit(EXIT_ERROR)


@register
@click.command("preview-digest")
@preview_options("digest")
@backfill_option(
    "Count the newest N posts already published that were never mailed as "
    "new (as `fetch-posts --backfill N` does)."
)
@click.option("--note", "note", type=NOTE_FILE, help=NOTE_HELP)
@with_appcontext
def preview_digest_command(
    output: str, open_browser: bool, backfill: int | None, note: str | None
) -> None:
    """Write the next digest as a sample reader would get it; marks nothing as sent."""
    from ..db import db
    from ..digest import preview_digest
    from ..rendering import TemplateError

    services = _services()
    synced = _sync_posts_for_digest(services, backfill)
    try:
        preview = preview_digest(db.session(), services, note=note)
    except TemplateError as err:
        click.echo(f"Email template problem: {err}", err=True)
        sys.exit(EXIT_ERROR)
    if preview is None:
        click.echo("No new posts since the last digest: nothing to preview, nothing written.")
        archived = len(synced.archived_titles)
        if synced.first_sync and archived:
            click.echo(
                f"(This was the first sync of {synced.source}: its {archived} published "
                f"post{'s were' if archived != 1 else ' was'} recorded as sent before. "
                "Posts added from now on go into the next digest.)"
            )
        return
    count = len(preview.titles)
    heading = f"Next digest ({count} post{'s' if count != 1 else ''}): {preview.subject}"
    write_preview(preview, output, open_browser, heading)

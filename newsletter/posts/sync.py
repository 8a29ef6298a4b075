"""Syncing a source into the posts table: read everything, then write in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import Post, SourceState
from .feeds import parse_feed
from .fetch import FetchedFeed, fetch_feed, read_feed_file
from .folder import read_posts_dir
from .source import PostSource, PostSourceError, SourcePost, _fit, post_source


class SyncContext(Protocol):
    """What a sync needs of the app: its configuration and its clock (``Services`` has both).
    Sources never see the mail transport, the renderer or the tokens."""

    @property
    def config(self) -> Mapping[str, Any]: ...

    @property
    def clock(self) -> Callable[[], datetime]: ...


@dataclass(frozen=True)
class NewPost:
    """A post this sync added; ``waiting`` says why it is not due yet (draft, scheduled)."""

    title: str
    url: str | None
    waiting: str | None = None


@dataclass
class SyncReport:
    """What a sync found: new posts, edited ones, and what was recorded as published-before."""

    source: str
    new: list[NewPost] = field(default_factory=list)
    updated_titles: list[str] = field(default_factory=list)
    unchanged: int = 0
    archived_titles: list[str] = field(default_factory=list)  # first sync: never mailed
    backfill: int | None = None  # the N of --backfill N, if asked
    # Posts already published that --backfill made new: on a first sync, the newest N of the
    # source's (also in ``new``); later, archived ones brought back for the next digest.
    backfilled_titles: list[str] = field(default_factory=list)
    # Later syncs: how many posts --backfill found that were never mailed (at most N), those
    # already new included.
    backfill_found: int = 0
    duplicates: int = 0  # entries dropped because an earlier entry had the same id
    not_modified: bool = False  # HTTP 304: the feed has not changed since the last fetch
    first_sync: bool = False

    @property
    def new_titles(self) -> list[str]:
        """Titles of the new posts (archived ones excluded), newest first."""
        return [post.title for post in self.new]

    @property
    def updated(self) -> int:
        """How many stored posts were edited in the source."""
        return len(self.updated_titles)


def read_source(
    source: PostSource, config: Mapping[str, Any], state: SourceState | None = None
) -> tuple[list[SourcePost] | None, FetchedFeed | None]:
    """Everything the source holds (None when a conditional GET says nothing changed)."""
    if source.kind == "folder":
        return read_posts_dir(Path(source.location), site_url=config["SITE_URL"]), None
    max_bytes = int(config["FEED_MAX_BYTES"])
    if source.kind == "file":
        body = read_feed_file(Path(source.location), max_bytes)
        return parse_feed(body, site_url=config["SITE_URL"], where=source.location), None
    fetched = fetch_feed(
        source.location,
        etag=state.etag if state else None,
        last_modified=state.last_modified if state else None,
        timeout=float(config["FEED_TIMEOUT"]),
        max_bytes=max_bytes,
        user_agent=f"newsletter (+{config['SITE_URL']})",
    )
    if fetched.body is None:
        return None, fetched
    posts = parse_feed(
        fetched.body,
        url=fetched.url,
        content_type=fetched.content_type,
        site_url=config["SITE_URL"],
        where=source.location,
    )
    return posts, fetched


def sync_posts(
    session: Session, services: SyncContext, *, backfill: int | None = None
) -> SyncReport:
    """Sync the configured post source into ``posts``, in one transaction.

    The first sync of a source records the posts already published there as archived (never
    mailed). ``backfill`` N, on any sync, makes the newest N published posts that were never
    mailed new, so the next digest carries them. Raises :class:`PostSourceError`, changing
    nothing.
    """
    source = post_source(services.config)
    now = services.clock()
    state = session.get(SourceState, source.state_key)
    report = SyncReport(source=source.describe(), first_sync=state is None, backfill=backfill)
    try:
        posts, fetched = read_source(source, services.config, state)
        if state is None:
            state = SourceState(source=source.state_key)
            session.add(state)
        state.synced_at = now
        if fetched is not None:
            state.etag = _fit(fetched.etag, 512)
            state.last_modified = _fit(fetched.last_modified, 128)
        if posts is None:
            report.not_modified = True
        else:
            _store(session, posts, report, now=now, backfill=backfill or 0)
        if backfill and not report.first_sync:
            _backfill(session, report, backfill, now=now)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise PostSourceError(
            "another sync of the posts ran at the same time; run it again"
        ) from None
    except BaseException:
        session.rollback()
        raise
    return report


def _store(
    session: Session, posts: list[SourcePost], report: SyncReport, *, now: datetime, backfill: int
) -> None:
    """Insert new posts, update edited ones; on a first sync, archive the published ones."""
    unique: dict[str, SourcePost] = {}
    for post in posts:
        # Document order decides which duplicate stays: the same feed gives the same result.
        if post.key in unique:
            report.duplicates += 1
        else:
            unique[post.key] = post
    existing = _load_posts(session, list(unique))
    fresh = [p for p in unique.values() if p.key not in existing]
    # Newest first; sorted() is stable, so equal dates keep the source's order.
    fresh.sort(key=lambda p: p.published_at or now, reverse=True)
    archive: set[str] = set()
    if report.first_sync:
        published = [p for p in fresh if not p.draft and (p.published_at or now) <= now]
        archive = {p.key for p in published[backfill:]}
        report.backfilled_titles = [p.title for p in published[:backfill]]
    for post in fresh:
        archived = post.key in archive
        session.add(
            Post(
                source_key=post.key,
                url=post.url,
                title=post.title,
                subtitle=post.subtitle,
                author=post.author,
                summary=post.summary,
                content_html=post.content_html,
                image_url=post.image_url,
                published_at=post.published_at or now,
                updated_at=post.updated_at,
                first_seen_at=now,
                content_hash=post.content_hash,
                draft=post.draft,
                archived=archived,
            )
        )
        if archived:
            report.archived_titles.append(post.title)
        else:
            report.new.append(NewPost(post.title, post.url, _waiting(post, now)))
    for post in unique.values():
        row = existing.get(post.key)
        if row is None:
            continue
        if row.content_hash == post.content_hash:
            report.unchanged += 1
            continue
        row.url, row.title, row.subtitle = post.url, post.title, post.subtitle
        row.author, row.summary, row.content_html = post.author, post.summary, post.content_html
        row.image_url, row.updated_at, row.draft = post.image_url, post.updated_at, post.draft
        row.content_hash = post.content_hash
        if post.published_at is not None:  # a dateless entry keeps the time it was first seen
            row.published_at = post.published_at
        report.updated_titles.append(post.title)


def _backfill(session: Session, report: SyncReport, count: int, *, now: datetime) -> None:
    """Make the newest ``count`` published posts that were never in a digest new again: the
    archived ones among them are no longer archived, so the next digest carries them."""
    newest = func.coalesce(Post.published_at, Post.first_seen_at)
    never_mailed = session.scalars(
        select(Post)
        .where(Post.campaign_id.is_(None), Post.draft.is_(False), newest <= now)
        .order_by(newest.desc(), Post.id)  # ties: the order the first sync stored them in
        .limit(count)
    ).all()
    report.backfill_found = len(never_mailed)
    for post in never_mailed:
        if post.archived:
            post.archived = False
            report.backfilled_titles.append(post.title)


def _load_posts(session: Session, keys: list[str]) -> dict[str, Post]:
    found: dict[str, Post] = {}
    for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
        chunk = keys[start : start + 500]
        for post in session.execute(select(Post).where(Post.source_key.in_(chunk))).scalars():
            found[post.source_key] = post
    return found


def _waiting(post: SourcePost, now: datetime) -> str | None:
    if post.draft:
        return "draft"
    if post.published_at is not None and post.published_at > now:
        return f"scheduled for {post.published_at:%Y-%m-%d %H:%M} UTC"
    return None

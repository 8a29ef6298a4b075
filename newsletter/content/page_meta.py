"""``NEWSLETTER_FETCH_POST_META``: a subtitle and image from each new post's own page.

Many site builders' feeds carry neither a subtitle nor an image, but every post page carries
``og:description`` and ``og:image`` for link previews. With the setting on, each new post's
page is read once, with the feed's timeout, size cap and user agent, and what it says is
sanitised as feed content is (plain text; an absolute http(s) image URL).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..models import Post
from ..posts.fetch import fetch_feed
from ..posts.source import PostSourceError, SourcePost
from .sanitise import absolute_url
from .text import html_to_words

log = logging.getLogger(__name__)

SUBTITLE_CHARS = 500


@dataclass(frozen=True)
class PageMeta:
    """What a post's page says about itself for link previews."""

    description: str | None
    image: str | None


class _OpenGraph(HTMLParser):
    """Reads og:description and og:image (and description) from a page's meta tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta":
            return
        values = dict(attrs)
        name = (values.get("property") or values.get("name") or "").strip().lower()
        content = values.get("content")
        if name in ("og:description", "og:image", "og:image:url", "description") and content:
            self.values.setdefault(name, content)


def read_page_meta(body: bytes, page_url: str, charset: str | None = None) -> PageMeta:
    """The og:description (else description) and og:image of an HTML page, sanitised."""
    reader = _OpenGraph()
    reader.feed(body.decode(charset or "utf-8", errors="replace"))
    reader.close()
    found = reader.values
    description = html_to_words(found.get("og:description") or found.get("description") or "")
    image = found.get("og:image") or found.get("og:image:url")
    return PageMeta(
        description=description[:SUBTITLE_CHARS] or None,
        image=absolute_url(image, page_url) if image else None,
    )


def fetch_page_meta(url: str, config: Mapping[str, Any]) -> PageMeta | None:
    """Read one post page's meta tags; None (and a log line) when the page cannot be read:
    a page that fails must not stop the posts from syncing."""
    if urlsplit(url).scheme not in ("http", "https"):
        return None
    try:
        page = fetch_feed(
            url,
            timeout=float(config["FEED_TIMEOUT"]),
            max_bytes=int(config["FEED_MAX_BYTES"]),
            user_agent=f"newsletter (+{config['SITE_URL']})",
        )
    except PostSourceError as err:
        log.warning("NEWSLETTER_FETCH_POST_META: %s", err)
        return None
    if page.body is None:
        return None
    charset = None
    for part in (page.content_type or "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip('"')
    try:
        return read_page_meta(page.body, page.url or url, charset)
    except LookupError:  # an unknown charset
        return read_page_meta(page.body, page.url or url)


def page_meta_for_new_posts(
    session: Session,
    posts: Sequence[SourcePost],
    config: Mapping[str, Any],
    *,
    limit: int | None = None,
) -> dict[str, PageMeta]:
    """Page meta for the posts not stored yet that lack a subtitle or an image, by key.

    ``limit`` caps how many pages are read (a first sync reads only the posts it will mail).
    """
    keys = [post.key for post in posts]
    stored = set(session.scalars(select(Post.source_key).where(Post.source_key.in_(keys))))
    wanted = [
        post
        for post in posts
        if post.key not in stored and post.url and not (post.subtitle and post.image_url)
    ]
    found: dict[str, PageMeta] = {}
    for post in wanted[:limit] if limit is not None else wanted:
        assert post.url is not None
        meta = fetch_page_meta(post.url, config)
        if meta is not None:
            found[post.key] = meta
    return found


def apply_page_meta(session: Session, pages: Mapping[str, PageMeta]) -> None:
    """Fill the subtitle and image the feed left empty on posts just added to ``session``.

    The stored content hash stays the feed's own, so the next sync does not take the page's
    words for an edit of the post.
    """
    for row in session.new:
        if isinstance(row, Post) and (meta := pages.get(row.source_key)):
            row.subtitle = row.subtitle or meta.description
            row.image_url = row.image_url or meta.image

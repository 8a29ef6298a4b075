"""Which source the settings name, its errors, and a post as any source yields it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from ..content.sanitise import absolute_url, first_image, sanitise_html
from ..content.text import html_to_words, summarise
from ..errors import NewsletterError

# Column sizes (models.Post): PostgreSQL refuses longer strings, so values are fitted first.
_KEY_CHARS = 1024
_TITLE_CHARS = 1024
_AUTHOR_CHARS = 512
_URL_CHARS = 2048

_CHUNK = 64 * 1024
_MARKDOWN_SUFFIXES = (".md", ".markdown")


class PostSourceError(NewsletterError):
    """The post source could not be read; the message is one line that says what to do."""


class NoPostSourceError(PostSourceError):
    """Neither ``NEWSLETTER_FEED_URL`` nor ``NEWSLETTER_POSTS_DIR`` is set."""

    def __init__(self) -> None:
        super().__init__(
            "no post source is configured: set NEWSLETTER_FEED_URL to your blog's feed (an "
            "http(s) URL or a file) or NEWSLETTER_POSTS_DIR to a folder of Markdown posts"
        )


@dataclass(frozen=True)
class PostSource:
    """Where posts come from: a feed at a URL, a feed file, or a folder of Markdown files."""

    kind: Literal["url", "file", "folder"]
    location: str  # an http(s) URL, or an absolute path

    @property
    def state_key(self) -> str:
        """The ``source_state`` row of this source."""
        return f"{self.kind}:{self.location}"

    def describe(self) -> str:
        """For messages: what the author configured, in her words."""
        return {
            "url": "the feed at {}",
            "file": "the feed file {}",
            "folder": "the Markdown folder {}",
        }[self.kind].format(self.location)


def post_source(config: Mapping[str, Any]) -> PostSource:
    """The configured post source; :class:`NoPostSourceError` when there is none."""
    feed = str(config.get("FEED_URL") or "").strip()
    folder = str(config.get("POSTS_DIR") or "").strip()
    if feed:  # config validation refuses both at once; the feed is the documented winner
        scheme = urlsplit(feed).scheme.lower()
        if scheme in ("http", "https"):
            return PostSource("url", feed)
        if scheme == "file":
            feed = url2pathname(urlsplit(feed).path)
        return PostSource("file", str(Path(feed).expanduser().resolve()))
    if folder:
        return PostSource("folder", str(Path(folder).expanduser().resolve()))
    raise NoPostSourceError()


@dataclass(frozen=True)
class SourcePost:
    """One post as the source describes it, normalised and sanitised, before it is stored."""

    key: str
    title: str
    url: str | None = None
    subtitle: str | None = None
    author: str | None = None
    summary: str | None = None
    content_html: str | None = None
    image_url: str | None = None
    published_at: datetime | None = None  # None: the source gives no date
    updated_at: datetime | None = None
    draft: bool = False

    @property
    def content_hash(self) -> str:
        """A sha256 over everything stored, so an edit anywhere is seen as an update."""
        fields = {
            "title": self.title,
            "url": self.url,
            "subtitle": self.subtitle,
            "author": self.author,
            "summary": self.summary,
            "content": self.content_html,
            "image": self.image_url,
            "draft": self.draft,
            "published": self.published_at.isoformat() if self.published_at else None,
            "updated": self.updated_at.isoformat() if self.updated_at else None,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _fit(text: str | None, limit: int) -> str | None:
    """``text`` cut to a column's size, with an ellipsis when cut."""
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _fit_url(url: str | None) -> str | None:
    # A cut URL is a broken link: drop it instead.
    return url if url and len(url) <= _URL_CHARS else None


def _key(*candidates: str | None, fallback: str) -> str:
    """The first non-empty candidate, else a hash of ``fallback``; hashed when too long."""
    key = next((c.strip() for c in candidates if c and c.strip()), None)
    if key is None:
        key = "sha256:" + hashlib.sha256(fallback.encode()).hexdigest()
    elif len(key) > _KEY_CHARS:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def _make_post(
    *,
    key: str,
    title: str | None,
    url: str | None,
    content_html: str | None,
    summary: str | None = None,
    subtitle: str | None = None,
    author: str | None = None,
    image_url: str | None = None,
    published_at: datetime | None = None,
    updated_at: datetime | None = None,
    draft: bool = False,
) -> SourcePost:
    """Sanitise and fit one post. ``summary`` is the source's own (HTML or text), if any."""
    content = sanitise_html(content_html, url) if content_html else None
    text_summary = summarise(summary) if summary else ""
    text_summary = text_summary or (summarise(content) if content else "")
    title_text = html_to_words(title or "") or summarise(content or "", words=10) or "Untitled post"
    image = absolute_url(image_url, url) if image_url else None
    image = image or first_image(content)
    return SourcePost(
        key=key,
        title=_fit(title_text, _TITLE_CHARS) or "Untitled post",
        url=_fit_url(url),
        subtitle=_fit(html_to_words(subtitle or ""), _TITLE_CHARS),
        author=_fit(html_to_words(author or ""), _AUTHOR_CHARS),
        summary=text_summary or None,
        content_html=content or None,
        image_url=_fit_url(image),
        published_at=published_at,
        updated_at=updated_at,
        draft=draft,
    )

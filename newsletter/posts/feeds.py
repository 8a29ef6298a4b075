"""Parsing RSS, Atom and JSON Feed into posts."""

from __future__ import annotations

import calendar
import html
import io
import json
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import feedparser

from ..content.sanitise import absolute_url
from ..content.text import html_to_words, text_to_html
from .fetch import _one_line
from .source import PostSourceError, SourcePost, _key, _make_post


def _as_utc(value: object) -> datetime | None:
    """A date from a feed or front matter as an aware UTC datetime; naive counts as UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, time.struct_time):
        return datetime.fromtimestamp(calendar.timegm(value), UTC)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            try:
                moment = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
    else:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_feed(
    body: bytes,
    *,
    url: str | None = None,
    content_type: str | None = None,
    site_url: str | None = None,
    where: str = "the feed",
) -> list[SourcePost]:
    """The posts of an RSS, Atom or JSON feed, in the feed's order.

    ``url`` is where the feed came from (resolves relative links); ``where`` names it in errors.
    """
    base = url or site_url
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if "json" in (content_type or "").lower() or start in (b"{", b"["):
        return _parse_json_feed(body, url=url, site_url=site_url, where=where)
    headers = {"content-type": content_type} if content_type else {}
    if url:
        headers["content-location"] = url  # feedparser's base for relative links
    # Bytes in a stream, so feedparser never fetches anything itself; nh3 sanitises later.
    parsed = feedparser.parse(io.BytesIO(body), response_headers=headers, sanitize_html=False)
    if not parsed.entries and not parsed.get("version"):
        problem = parsed.get("bozo_exception")
        detail = f" ({_one_line(problem)})" if problem else ""
        raise PostSourceError(
            f"{where} is not an RSS, Atom or JSON feed{detail}; point "
            "NEWSLETTER_FEED_URL at the feed itself, not the blog's page"
        )
    feed_author = parsed.feed.get("author")
    return [_from_feed_entry(entry, base=base, feed_author=feed_author) for entry in parsed.entries]


def _from_feed_entry(
    entry: dict[str, Any], *, base: str | None, feed_author: str | None = None
) -> SourcePost:
    url = absolute_url(entry.get("link"), base)
    contents = entry.get("content") or []
    content = _best_content(contents)
    summary = _detail_html(entry.get("summary"), entry.get("summary_detail"))
    if content is None:
        # RSS without content:encoded: the description is the post itself.
        content, summary = summary, None
    elif summary is not None and html_to_words(summary) == html_to_words(content):
        summary = None
    # dict.get: feedparser's own get() maps a missing "updated" to "published", with a warning.
    published = dict.get(entry, "published_parsed")
    updated = dict.get(entry, "updated_parsed")
    title = entry.get("title")
    title_type = (entry.get("title_detail") or {}).get("type", "text/plain")
    if title and "html" not in title_type:
        # feedparser hands plain-text titles over as text; keep "<" in them as written.
        title = html.escape(title, quote=False)
    return _make_post(
        key=_key(entry.get("id"), url, fallback=f"{entry.get('title', '')}\n{content or ''}"),
        title=title,
        url=url,
        content_html=content,
        summary=summary,
        author=entry.get("author") or feed_author,
        image_url=_feed_image(entry),
        published_at=_as_utc(published or updated or dict.get(entry, "created_parsed")),
        updated_at=_as_utc(updated),
    )


def _detail_html(value: str | None, detail: Mapping[str, Any] | None) -> str | None:
    """A feed text construct as HTML, whatever its declared type."""
    if not value or not value.strip():
        return None
    kind = (detail or {}).get("type", "text/html")
    return value if "html" in kind else text_to_html(value)


def _best_content(contents: Iterable[Mapping[str, Any]]) -> str | None:
    """The HTML one of an entry's content elements, else the first one as HTML."""
    options = [c for c in contents if (c.get("value") or "").strip()]
    for content in options:
        if "html" in content.get("type", ""):
            return str(content["value"])
    return _detail_html(options[0].get("value"), options[0]) if options else None


_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif")


def _feed_image(entry: dict[str, Any]) -> str | None:
    """The entry's own image: media:thumbnail, media:content or an image enclosure."""
    for thumbnail in entry.get("media_thumbnail") or []:
        if thumbnail.get("url"):
            return str(thumbnail["url"])
    for media in entry.get("media_content") or []:
        kind = f"{media.get('medium', '')} {media.get('type', '')}"
        path = urlsplit(media.get("url") or "").path.lower()
        if media.get("url") and ("image" in kind or path.endswith(_IMAGE_EXTENSIONS)):
            return str(media["url"])
    for enclosure in entry.get("enclosures") or []:
        if enclosure.get("href") and str(enclosure.get("type", "")).startswith("image/"):
            return str(enclosure["href"])
    image = entry.get("image")
    return str(image["href"]) if isinstance(image, Mapping) and image.get("href") else None


def _parse_json_feed(
    body: bytes, *, url: str | None, site_url: str | None, where: str
) -> list[SourcePost]:
    """JSON Feed 1.0/1.1 (https://jsonfeed.org/version/1.1): simple enough to read directly."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PostSourceError(
            f"{where} is not valid JSON ({_one_line(err)}); check "
            "NEWSLETTER_FEED_URL points at an RSS, Atom or JSON feed"
        ) from None
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise PostSourceError(
            f'{where} is JSON but not a JSON Feed (no "items" list); check NEWSLETTER_FEED_URL'
        )
    base = url or absolute_url(_text(document.get("home_page_url")), None) or site_url
    return [_from_json_item(item, base=base) for item in items if isinstance(item, dict)]


def _from_json_item(item: Mapping[str, Any], *, base: str | None) -> SourcePost:
    url = absolute_url(_text(item.get("url")) or _text(item.get("external_url")), base)
    content = _text(item.get("content_html"))
    if not content and _text(item.get("content_text")):
        content = text_to_html(_text(item.get("content_text")))
    authors = item.get("authors") or ([item["author"]] if item.get("author") else [])
    names = [_text(a.get("name")) for a in authors if isinstance(a, dict)]
    return _make_post(
        key=_key(_text(item.get("id")), url, fallback=f"{_text(item.get('title'))}\n{content}"),
        title=html.escape(_text(item.get("title")), quote=False),  # JSON Feed titles are text
        url=url,
        content_html=content or None,
        summary=html.escape(_text(item.get("summary")), quote=False) or None,
        author=", ".join(n for n in names if n) or None,
        image_url=_text(item.get("image")) or _text(item.get("banner_image")) or None,
        published_at=_as_utc(item.get("date_published") or item.get("date_modified")),
        updated_at=_as_utc(item.get("date_modified")),
    )


def _text(value: object) -> str:
    """A JSON value as a string ("" for null, objects and lists); ids may be numbers."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""

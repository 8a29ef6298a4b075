"""Post sources (an RSS/Atom/JSON feed, or a folder of Markdown files) → normalised, sanitised
posts, synced into the ``posts`` table.

A sync reads the whole source first and only then writes, in one transaction, so a source that
cannot be read changes nothing. Post bodies are sanitised here, once, with nh3: what reaches
``Post.content_html`` is safe to put into an email, with absolute links and bounded images.
"""

from __future__ import annotations

import calendar
import hashlib
import html
import http.client
import io
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit
from urllib.request import url2pathname

import feedparser
import markdown
import nh3
import yaml
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Post, SourceState
from .services import Services

SUMMARY_WORDS = 60
MAX_IMAGE_WIDTH = 536  # pixels: the digest card's content column (600 less its padding)
IMAGE_STYLE = "max-width:100%;height:auto"

# Column sizes (models.Post): PostgreSQL refuses longer strings, so values are fitted first.
_KEY_CHARS = 1024
_TITLE_CHARS = 1024
_AUTHOR_CHARS = 512
_URL_CHARS = 2048

_CHUNK = 64 * 1024
_MARKDOWN_SUFFIXES = (".md", ".markdown")


class PostSourceError(Exception):
    """The post source could not be read; the message is one line that says what to do."""


class NoPostSource(PostSourceError):
    """Neither ``NEWSLETTER_FEED_URL`` nor ``NEWSLETTER_POSTS_DIR`` is set."""

    def __init__(self) -> None:
        super().__init__(
            "no post source is configured: set NEWSLETTER_FEED_URL to your blog's feed (an "
            "http(s) URL or a file) or NEWSLETTER_POSTS_DIR to a folder of Markdown posts")


# --- sources -------------------------------------------------------------------------------


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
        return {"url": "the feed at {}", "file": "the feed file {}",
                "folder": "the Markdown folder {}"}[self.kind].format(self.location)


def post_source(config: Mapping[str, Any]) -> PostSource:
    """The configured post source; :class:`NoPostSource` when there is none."""
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
    raise NoPostSource()


# --- fetching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchedFeed:
    """The bytes of a feed and the validators for the next conditional GET."""

    body: bytes | None  # None: not modified since the validators we sent (HTTP 304)
    url: str | None = None  # after redirects, for resolving relative links
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None

    @property
    def not_modified(self) -> bool:
        """Whether the server said nothing changed."""
        return self.body is None


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only; urllib would also follow one to ftp."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            return None  # urllib then raises HTTPError for the 3xx, reported below
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """One fetch's total time limit. A socket timeout bounds each wait, not the fetch: a
    server that sends a byte every second never trips it. When the deadline passes, a timer
    shuts down every socket of the fetch, which ends any read or write blocked on it at once."""

    def __init__(self, seconds: float) -> None:
        self.expired = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> socket.socket:
        """Shut ``sock`` down when the deadline passes (at once if it has passed)."""
        with self._lock:
            self._sockets.append(sock)
            if self.expired.is_set():
                _shut_down(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._sockets:
                _shut_down(sock)

    def cancel(self) -> None:
        """The fetch is over: the timer need not fire."""
        self._timer.cancel()


def _shut_down(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for a TLS socket: it only wakes the reader, leaving
    # the TLS state to the thread that owns it. A closed or detached socket raises; fine.
    with suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watched_connection(base: type[http.client.HTTPConnection],
                        deadline: _Deadline) -> Callable[..., http.client.HTTPConnection]:
    """A connection class like ``base`` whose sockets ``deadline`` watches (the TCP socket
    from the start, so connecting and the TLS handshake count too; then the TLS socket)."""

    class Watched(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            create: Callable[..., socket.socket] = self._create_connection  # type: ignore[has-type]
            self._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))

        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Watched


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._connection = _watched_connection(http.client.HTTPConnection, deadline)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._connection = _watched_connection(http.client.HTTPSConnection, deadline)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req,  # type: ignore[arg-type]
                            context=self._context)  # type: ignore[attr-defined]


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_HttpOnlyRedirects, _WatchedHTTPHandler(deadline),
                                       _WatchedHTTPSHandler(deadline))


def fetch_feed(url: str, *, etag: str | None = None, last_modified: str | None = None,
               timeout: float = 20.0, max_bytes: int = 10 * 1024 * 1024,
               user_agent: str = "newsletter") -> FetchedFeed:
    """GET a feed with a timeout, a size cap and conditional-GET validators."""
    headers = {
        "User-Agent": user_agent,
        "Accept": "application/rss+xml, application/atom+xml, application/feed+json, "
                  "application/json;q=0.9, application/xml;q=0.9, text/xml;q=0.8, */*;q=0.5",
        "Accept-Encoding": "gzip",
    }
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    request = urllib.request.Request(url, headers=headers)
    # The socket timeout bounds each wait; the deadline bounds the whole fetch (redirects
    # included), so a server that trickles bytes cannot hold the command, or the send lock.
    deadline = _Deadline(timeout)
    try:
        with _opener(deadline).open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_big(url, max_bytes)
            gzipped = response.headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip")
            body = _read_capped(response, url, max_bytes, deadline, gzipped=gzipped)
            return FetchedFeed(body=body, url=response.geturl(),
                               content_type=response.headers.get("Content-Type"),
                               etag=response.headers.get("ETag"),
                               last_modified=response.headers.get("Last-Modified"))
    except urllib.error.HTTPError as err:
        with err:  # closes the error's response, which holds the socket
            if deadline.expired.is_set():
                raise _timed_out(url, timeout) from None
            if err.code == 304:
                return FetchedFeed(body=None, url=url,
                                   etag=err.headers.get("ETag") or etag,
                                   last_modified=err.headers.get("Last-Modified") or last_modified)
            if 300 <= err.code < 400:
                problem = "redirected to an address that is not http(s)"
            elif err.code >= 500:
                problem = f"answered HTTP {err.code} {err.reason}; try again later"
            else:
                problem = f"answered HTTP {err.code} {err.reason}; check NEWSLETTER_FEED_URL"
        raise PostSourceError(f"{url} {problem}") from None
    except TimeoutError:
        raise _timed_out(url, timeout) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError) or deadline.expired.is_set():
            raise _timed_out(url, timeout) from None
        raise PostSourceError(f"could not reach {url} ({_one_line(err.reason)}); check "
                              "NEWSLETTER_FEED_URL and the network") from None
    except (OSError, http.client.HTTPException) as err:
        if deadline.expired.is_set():  # the deadline shut the socket: that is the failure
            raise _timed_out(url, timeout) from None
        raise PostSourceError(f"reading {url} failed ({_one_line(err) or type(err).__name__});"
                              " try again later") from None
    finally:
        deadline.cancel()


def _read_capped(response: Any, url: str, max_bytes: int, deadline: _Deadline, *,
                 gzipped: bool) -> bytes:
    """The body, refusing more than ``max_bytes`` (after decompression) or a late finish."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := response.read(_CHUNK):
            if deadline.expired.is_set():
                raise TimeoutError
            if inflater is not None:
                # Bounded output: a small gzip bomb cannot inflate past the cap.
                chunk = inflater.decompress(chunk, max_bytes + 1 - size)
            size += len(chunk)
            if size > max_bytes:
                raise _too_big(url, max_bytes)
            chunks.append(chunk)
        if inflater is not None:
            tail = inflater.flush()
            if size + len(tail) > max_bytes:
                raise _too_big(url, max_bytes)
            chunks.append(tail)
    except zlib.error as err:
        if deadline.expired.is_set():
            raise TimeoutError from None
        raise PostSourceError(f"{url} sent a damaged gzip body ({err}); try again later") from None
    if deadline.expired.is_set():  # the shut-down socket looked like the end of the body
        raise TimeoutError
    return b"".join(chunks)


def read_feed_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a local feed file, refusing one larger than ``max_bytes``."""
    try:
        if path.stat().st_size > max_bytes:
            raise _too_big(str(path), max_bytes)
        return path.read_bytes()
    except FileNotFoundError:
        raise PostSourceError(f"there is no feed file {path}; set NEWSLETTER_FEED_URL to your "
                              "feed's http(s) URL or to an existing file") from None
    except OSError as err:
        raise PostSourceError(f"cannot read the feed file {path} ({err.strerror or err}); "
                              "check NEWSLETTER_FEED_URL and the file's permissions") from None


def _too_big(where: str, max_bytes: int) -> PostSourceError:
    return PostSourceError(f"{where} is larger than {max_bytes:,} bytes; raise "
                           "NEWSLETTER_FEED_MAX_BYTES if the feed really is that big")


def _timed_out(url: str, timeout: float) -> PostSourceError:
    return PostSourceError(f"the feed at {url} did not finish within {timeout:g} seconds; try "
                           "again later or raise NEWSLETTER_FEED_TIMEOUT")


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


# --- normalised posts ----------------------------------------------------------------------


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
            "title": self.title, "url": self.url, "subtitle": self.subtitle,
            "author": self.author, "summary": self.summary, "content": self.content_html,
            "image": self.image_url, "draft": self.draft,
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


def _make_post(*, key: str, title: str | None, url: str | None, content_html: str | None,
               summary: str | None = None, subtitle: str | None = None,
               author: str | None = None, image_url: str | None = None,
               published_at: datetime | None = None, updated_at: datetime | None = None,
               draft: bool = False) -> SourcePost:
    """Sanitise and fit one post. ``summary`` is the source's own (HTML or text), if any."""
    content = sanitise_html(content_html, url) if content_html else None
    text_summary = summarise(summary) if summary else ""
    text_summary = text_summary or (summarise(content) if content else "")
    title_text = _plain(title or "") or summarise(content or "", words=10) or "Untitled post"
    image = _absolute_url(image_url, url) if image_url else None
    image = image or _first_image(content)
    return SourcePost(
        key=key,
        title=_fit(title_text, _TITLE_CHARS) or "Untitled post",
        url=_fit_url(url),
        subtitle=_fit(_plain(subtitle or ""), _TITLE_CHARS),
        author=_fit(_plain(author or ""), _AUTHOR_CHARS),
        summary=text_summary or None,
        content_html=content or None,
        image_url=_fit_url(image),
        published_at=published_at,
        updated_at=updated_at,
        draft=draft,
    )


# --- content safety ------------------------------------------------------------------------

_ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "div", "dl",
    "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
    "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "small", "span", "strong", "sub",
    "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width"},  # no height: height:auto keeps the aspect ratio
    "abbr": {"title"},
    "ol": {"start"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
}
# Removed with everything inside: their content is code, widgets or fallbacks, not prose.
_REMOVED_WITH_CONTENT = {
    "script", "style", "iframe", "object", "embed", "form", "template", "noscript", "svg",
    "math", "audio", "video", "canvas", "select", "textarea", "button",
}
_URL_SCHEMES = {"http", "https", "mailto"}


def sanitise_html(html_text: str, base_url: str | None) -> str:
    """Post HTML made safe for email: no scripts, styles, frames, forms, event handlers or
    ``javascript:`` URLs; links and images absolute against ``base_url``; images at most
    the digest column wide."""

    def rewrite(tag: str, attribute: str, value: str) -> str | None:
        # nh3 has already dropped disallowed schemes; this makes the rest absolute (or drops
        # a relative URL with no base), and must never raise: nh3 would only print the error.
        if attribute in ("href", "src"):
            return _absolute_url(value, base_url)
        if tag == "img" and attribute == "width":
            width = value.strip().removesuffix("px")
            return width if width.isdigit() and 0 < int(width) <= MAX_IMAGE_WIDTH else None
        return value

    return nh3.clean(
        html_text,
        tags=_ALLOWED_TAGS,
        clean_content_tags=_REMOVED_WITH_CONTENT,
        attributes=_ALLOWED_ATTRIBUTES,
        attribute_filter=rewrite,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener",
        set_tag_attribute_values={"img": {"style": IMAGE_STYLE}},
        strip_comments=True,
    ).strip()


def _absolute_url(value: str | None, base_url: str | None) -> str | None:
    """``value`` made absolute against ``base_url``; None unless http(s) (or mailto)."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        absolute = urljoin(base_url, value) if base_url else value
        parts = urlsplit(absolute)
    except ValueError:  # e.g. a broken IPv6 host
        return None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https") and parts.netloc:
        return absolute
    return absolute if scheme == "mailto" else None


class _TextExtractor(HTMLParser):
    """HTML → words: text only, with a space wherever a block ends, scripts skipped."""

    _SKIPPED = {"script", "style", "template", "noscript", "head", "title", "svg", "math"}
    _BLOCKS = {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
        "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
        "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIPPED:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _plain(html_or_text: str) -> str:
    """The text of an HTML fragment (or of plain text), whitespace collapsed."""
    if "<" not in html_or_text and "&" not in html_or_text:
        return " ".join(html_or_text.split())
    extractor = _TextExtractor()
    extractor.feed(html_or_text)
    extractor.close()
    return " ".join("".join(extractor.parts).split())


_TRAILING_MORE = re.compile(r"\s*(?:\[(?:…|\.\.\.)\]|…|\.\.\.)\s*$")


def summarise(html_or_text: str, words: int = SUMMARY_WORDS) -> str:
    """Plain text of about ``words`` words, ending with an ellipsis when cut."""
    text = _plain(html_or_text)
    # Blog engines end excerpts with "[…]"; one ellipsis of our own reads better.
    cut = bool(_TRAILING_MORE.search(text))
    text = _TRAILING_MORE.sub("", text)
    all_words = text.split()
    if len(all_words) > words:
        all_words, cut = all_words[:words], True
    text = " ".join(all_words)
    if cut and text:
        text = text.rstrip(".,;:!?-–— ") + "…"
    return text


def _first_image(content: str | None) -> str | None:
    """The src of the first image in sanitised HTML (already absolute)."""
    if not content or "<img" not in content:
        return None
    finder = _FirstImage()
    finder.feed(content)
    finder.close()
    return finder.src


class _FirstImage(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.src: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img" and self.src is None:
            self.src = dict(attrs).get("src") or None


def _text_to_html(text: str) -> str:
    """Plain text as HTML paragraphs (blank lines part them, single newlines break lines)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs)


# --- dates ---------------------------------------------------------------------------------


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


# --- feeds ---------------------------------------------------------------------------------


def parse_feed(body: bytes, *, url: str | None = None, content_type: str | None = None,
               site_url: str | None = None, where: str = "the feed") -> list[SourcePost]:
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
        raise PostSourceError(f"{where} is not an RSS, Atom or JSON feed{detail}; point "
                              "NEWSLETTER_FEED_URL at the feed itself, not the blog's page")
    feed_author = parsed.feed.get("author")
    return [_from_feed_entry(entry, base=base, feed_author=feed_author)
            for entry in parsed.entries]


def _from_feed_entry(entry: dict[str, Any], *, base: str | None,
                     feed_author: str | None = None) -> SourcePost:
    url = _absolute_url(entry.get("link"), base)
    contents = entry.get("content") or []
    content = _best_content(contents)
    summary = _detail_html(entry.get("summary"), entry.get("summary_detail"))
    if content is None:
        # RSS without content:encoded: the description is the post itself.
        content, summary = summary, None
    elif summary is not None and _plain(summary) == _plain(content):
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
    return value if "html" in kind else _text_to_html(value)


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


def _parse_json_feed(body: bytes, *, url: str | None, site_url: str | None,
                     where: str) -> list[SourcePost]:
    """JSON Feed 1.0/1.1 (https://jsonfeed.org/version/1.1): simple enough to read directly."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PostSourceError(f"{where} is not valid JSON ({_one_line(err)}); check "
                              "NEWSLETTER_FEED_URL points at an RSS, Atom or JSON feed") from None
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise PostSourceError(f"{where} is JSON but not a JSON Feed (no \"items\" list); check "
                              "NEWSLETTER_FEED_URL")
    base = url or _absolute_url(_text(document.get("home_page_url")), None) or site_url
    return [_from_json_item(item, base=base) for item in items if isinstance(item, dict)]


def _from_json_item(item: Mapping[str, Any], *, base: str | None) -> SourcePost:
    url = _absolute_url(_text(item.get("url")) or _text(item.get("external_url")), base)
    content = _text(item.get("content_html"))
    if not content and _text(item.get("content_text")):
        content = _text_to_html(_text(item.get("content_text")))
    authors = item.get("authors") or ([item["author"]] if item.get("author") else [])
    names = [_text(a.get("name")) for a in authors if isinstance(a, dict)]
    return _make_post(
        key=_key(_text(item.get("id")), url,
                 fallback=f"{_text(item.get('title'))}\n{content}"),
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


# --- Markdown folder -----------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*\r?$\n?",
                           re.DOTALL | re.MULTILINE)
_DATED_NAME = re.compile(r"\A(\d{4}-\d{2}-\d{2})-")
_TRUE_WORDS = {"true", "yes", "on", "1"}


def read_posts_dir(folder: Path, *, site_url: str) -> list[SourcePost]:
    """The posts of a folder of Markdown files with YAML front matter, ordered by path.

    Files and folders whose names start with ``_`` or ``.`` are skipped (Hugo's ``_index.md``,
    Jekyll's ``_drafts``); a page bundle's ``index.md`` takes its slug from its folder.
    """
    if not folder.is_dir():
        raise PostSourceError(f"there is no folder {folder}; set NEWSLETTER_POSTS_DIR to the "
                              "folder of your Markdown posts")
    paths = sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in _MARKDOWN_SUFFIXES and path.is_file()
        and not any(part.startswith(("_", ".")) for part in path.relative_to(folder).parts)
    )
    return [_read_markdown_post(path, site_url=site_url.rstrip("/")) for path in paths]


def _read_markdown_post(path: Path, *, site_url: str) -> SourcePost:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PostSourceError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise PostSourceError(f"cannot read {path} ({err.strerror or err})") from None
    meta, body = _split_front_matter(text, path)
    stem = path.parent.name if path.stem.lower() == "index" else path.stem
    slug = str(meta.get("slug") or stem).strip().strip("/")
    url = _text(meta.get("url")).strip()
    if url and not urlsplit(url).scheme:
        url = f"{site_url}/{url.lstrip('/')}"  # site-relative, as static-site generators mean it
    url = url or f"{site_url}/{quote(slug, safe='/-._~')}"
    published = _as_utc(meta.get("date"))
    dated_name = _DATED_NAME.match(path.name)
    if published is None and dated_name:  # Jekyll's 2026-11-02-title.md
        published = _as_utc(dated_name.group(1))
    if meta.get("date") not in (None, "") and published is None:
        raise PostSourceError(f"{path}: the date {meta['date']!r} is not a date; write it as "
                              "2026-11-02 or 2026-11-02T08:00:00Z")
    draft = _truthy(meta.get("draft")) or meta.get("published") is False
    return _make_post(
        key=_key(url, fallback=str(path)),
        title=html.escape(_text(meta.get("title")) or _title_from_name(stem), quote=False),
        url=url,
        content_html=markdown.markdown(body, extensions=["extra", "sane_lists"]),
        summary=html.escape(_text(meta.get("summary")), quote=False) or None,
        subtitle=html.escape(_text(meta.get("subtitle")), quote=False) or None,
        author=html.escape(_text(meta.get("author")), quote=False) or None,
        image_url=_text(meta.get("image")) or None,
        published_at=published,
        updated_at=_as_utc(meta.get("updated") or meta.get("lastmod")),
        draft=draft,
    )


def _split_front_matter(text: str, path: Path) -> tuple[dict[str, Any], str]:
    """The YAML front matter as a dict, and the Markdown after it."""
    if text.startswith("+++"):
        raise PostSourceError(f"{path}: TOML front matter (+++) is not supported; write it as "
                              "YAML between --- lines")
    if not re.match(r"---[ \t]*\r?\n", text):
        return {}, text
    match = _FRONT_MATTER.match(text)
    if match is None:
        raise PostSourceError(f"{path}: the front matter has no closing --- line; add one")
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 2}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or err
        raise PostSourceError(f"{path}: the front matter is not valid YAML ({line}"
                              f"{_one_line(problem)}); fix it") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise PostSourceError(f"{path}: the front matter must be key: value lines")
    return meta, text[match.end():]


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_WORDS
    return bool(value)


def _title_from_name(stem: str) -> str:
    words = _DATED_NAME.sub("", stem).replace("-", " ").replace("_", " ").strip()
    return words[:1].upper() + words[1:] if words else "Untitled post"


# --- syncing -------------------------------------------------------------------------------


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
    source: PostSource, config: Mapping[str, Any], state: SourceState | None = None,
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
    posts = parse_feed(fetched.body, url=fetched.url, content_type=fetched.content_type,
                       site_url=config["SITE_URL"], where=source.location)
    return posts, fetched


def sync_posts(session: Session, services: Services, *, backfill: int | None = None) -> SyncReport:
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
        raise PostSourceError("another sync of the posts ran at the same time; run it "
                              "again") from None
    except BaseException:
        session.rollback()
        raise
    return report


def _store(session: Session, posts: list[SourcePost], report: SyncReport, *, now: datetime,
           backfill: int) -> None:
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
        session.add(Post(
            source_key=post.key, url=post.url, title=post.title, subtitle=post.subtitle,
            author=post.author, summary=post.summary, content_html=post.content_html,
            image_url=post.image_url, published_at=post.published_at or now,
            updated_at=post.updated_at, first_seen_at=now, content_hash=post.content_hash,
            draft=post.draft, archived=archived,
        ))
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
        .limit(count)).all()
    report.backfill_found = len(never_mailed)
    for post in never_mailed:
        if post.archived:
            post.archived = False
            report.backfilled_titles.append(post.title)


def _load_posts(session: Session, keys: list[str]) -> dict[str, Post]:
    found: dict[str, Post] = {}
    for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
        chunk = keys[start:start + 500]
        for post in session.execute(select(Post).where(Post.source_key.in_(chunk))).scalars():
            found[post.source_key] = post
    return found


def _waiting(post: SourcePost, now: datetime) -> str | None:
    if post.draft:
        return "draft"
    if post.published_at is not None and post.published_at > now:
        return f"scheduled for {post.published_at:%Y-%m-%d %H:%M} UTC"
    return None

"""Fetching a feed over HTTP(S) or from a file: conditional GET, a size cap, and one deadline
for the whole fetch."""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .source import _CHUNK, PostSourceError


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

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
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


def _watched_connection(
    base: type[http.client.HTTPConnection], deadline: _Deadline
) -> Callable[..., http.client.HTTPConnection]:
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
        # HTTPSHandler keeps its SSL context in _context, which typeshed does not declare.
        return self.do_open(self._connection, req, context=self._context)  # type: ignore[attr-defined]


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        _HttpOnlyRedirects, _WatchedHTTPHandler(deadline), _WatchedHTTPSHandler(deadline)
    )


def fetch_feed(
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    timeout: float = 20.0,
    max_bytes: int = 10 * 1024 * 1024,
    user_agent: str = "newsletter",
) -> FetchedFeed:
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
            return FetchedFeed(
                body=body,
                url=response.geturl(),
                content_type=response.headers.get("Content-Type"),
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
            )
    except urllib.error.HTTPError as err:
        with err:  # closes the error's response, which holds the socket
            if deadline.expired.is_set():
                raise _timed_out(url, timeout) from None
            if err.code == 304:
                return FetchedFeed(
                    body=None,
                    url=url,
                    etag=err.headers.get("ETag") or etag,
                    last_modified=err.headers.get("Last-Modified") or last_modified,
                )
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
        raise PostSourceError(
            f"could not reach {url} ({_one_line(err.reason)}); check "
            "NEWSLETTER_FEED_URL and the network"
        ) from None
    except (OSError, http.client.HTTPException) as err:
        if deadline.expired.is_set():  # the deadline shut the socket: that is the failure
            raise _timed_out(url, timeout) from None
        raise PostSourceError(
            f"reading {url} failed ({_one_line(err) or type(err).__name__}); try again later"
        ) from None
    finally:
        deadline.cancel()


def _read_capped(
    response: Any, url: str, max_bytes: int, deadline: _Deadline, *, gzipped: bool
) -> bytes:
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
        raise PostSourceError(
            f"there is no feed file {path}; set NEWSLETTER_FEED_URL to your "
            "feed's http(s) URL or to an existing file"
        ) from None
    except OSError as err:
        raise PostSourceError(
            f"cannot read the feed file {path} ({err.strerror or err}); "
            "check NEWSLETTER_FEED_URL and the file's permissions"
        ) from None


def _too_big(where: str, max_bytes: int) -> PostSourceError:
    return PostSourceError(
        f"{where} is larger than {max_bytes:,} bytes; raise "
        "NEWSLETTER_FEED_MAX_BYTES if the feed really is that big"
    )


def _timed_out(url: str, timeout: float) -> PostSourceError:
    return PostSourceError(
        f"the feed at {url} did not finish within {timeout:g} seconds; try "
        "again later or raise NEWSLETTER_FEED_TIMEOUT"
    )


def _one_line(value: object) -> str:
    return " ".join(str(value).split())

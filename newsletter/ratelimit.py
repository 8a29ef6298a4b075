"""Fixed-window rate limits that hold across processes and restarts: counted in the database
by default, or in Redis (``NEWSLETTER_RATELIMIT_STORAGE_URI=redis://...``) for busy sites."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Insert, delete
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from .models import RateLimitWindow

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    """Counts hits per key and fixed window."""

    def hit(self, key: str, *, limit: int, window_seconds: int, now: datetime) -> bool:
        """Count one hit; True while the window's count is within ``limit``."""
        ...


def _window(now: datetime, window_seconds: int) -> int:
    return int(now.timestamp()) // window_seconds * window_seconds


def _upsert(dialect: str) -> ReturningInsert[int]:
    from sqlalchemy.dialects import postgresql, sqlite

    key, bump = ["key", "window_start"], {"count": RateLimitWindow.count + 1}
    upsert: Insert
    if dialect == "postgresql":
        upsert = postgresql.insert(RateLimitWindow).on_conflict_do_update(
            index_elements=key, set_=bump
        )
    else:
        upsert = sqlite.insert(RateLimitWindow).on_conflict_do_update(index_elements=key, set_=bump)
    return upsert.returning(RateLimitWindow.count)


# Built once per dialect: a sign-up runs this on every request.
_UPSERTS = {dialect: _upsert(dialect) for dialect in ("postgresql", "sqlite")}


def hit(
    session: Session,
    key: str,
    *,
    limit: int,
    window_seconds: int,
    now: datetime,
    commit: bool = True,
) -> bool:
    """Count one hit against ``key`` in the database: one atomic upsert. With ``commit`` false
    it joins the caller's transaction (which must commit, whatever happens next)."""
    connection = session.connection()
    statement = _UPSERTS.get(connection.dialect.name, _UPSERTS["sqlite"])
    count = connection.execute(
        statement, {"key": key[:200], "window_start": _window(now, window_seconds), "count": 1}
    ).scalar_one()
    if commit:
        session.commit()
    return bool(count <= limit)


def sweep(session: Session, now: datetime, keep_seconds: int = 24 * 3600) -> int:
    """Delete windows that ended long ago; run now and then (the outbox sender's sweep does)."""
    cutoff = int(now.timestamp()) - keep_seconds
    result = session.execute(delete(RateLimitWindow).where(RateLimitWindow.window_start < cutoff))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class DatabaseRateLimiter:
    """Counts in the ``rate_limits`` table of the app's database, inside the request's own
    transaction: the sign-up's commit records the hit too, saving a commit per request."""

    def __init__(self, session: Callable[[], Session]) -> None:
        self._session = session

    def hit(self, key: str, *, limit: int, window_seconds: int, now: datetime) -> bool:
        return hit(
            self._session(), key, limit=limit, window_seconds=window_seconds, now=now, commit=False
        )


class RedisRateLimiter:
    """Counts in Redis: INCR and EXPIRE in one round trip.

    If Redis cannot be reached the request is let through (and the error logged): sign-ups
    matter more than this limit, and the per-address email limits still hold in the database.
    """

    def __init__(self, url: str, client: Any = None) -> None:
        import redis

        self.url = url
        self._errors = (redis.RedisError, OSError)
        self._client = client or redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2
        )

    def hit(self, key: str, *, limit: int, window_seconds: int, now: datetime) -> bool:
        name = f"newsletter:rate:{key}:{_window(now, window_seconds)}"
        try:
            pipe = self._client.pipeline()
            pipe.incr(name)
            pipe.expire(name, window_seconds * 2)
            count, _ = pipe.execute()
        except self._errors as err:
            log.error("rate limiting is off: Redis at %s cannot be reached (%s)", self.url, err)
            return True
        return int(count) <= limit

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def limiter_from_config(config: Any, session: Callable[[], Session]) -> RateLimiter:
    """The limiter ``NEWSLETTER_RATELIMIT_STORAGE_URI`` asks for (the database by default)."""
    uri = config.get("RATELIMIT_STORAGE_URI")
    if uri:
        return RedisRateLimiter(uri)
    return DatabaseRateLimiter(session)

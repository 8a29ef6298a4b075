"""Fixed-window rate limits counted in the database, so they hold across processes and restarts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from .models import RateLimitWindow


def _insert(session: Session):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(RateLimitWindow)


def hit(session: Session, key: str, *, limit: int, window_seconds: int, now: datetime) -> bool:
    """Count one hit against ``key``; True while the window's count is within ``limit``.

    One atomic upsert, committed at once so that other processes see it.
    """
    window = int(now.timestamp()) // window_seconds * window_seconds
    statement = _insert(session).values(key=key[:200], window_start=window, count=1)
    statement = statement.on_conflict_do_update(
        index_elements=["key", "window_start"],
        set_={"count": RateLimitWindow.count + 1},
    ).returning(RateLimitWindow.count)
    count = session.execute(statement).scalar_one()
    session.commit()
    return count <= limit


def sweep(session: Session, now: datetime, keep_seconds: int = 24 * 3600) -> int:
    """Delete windows that ended long ago; run now and then (the outbox sender's sweep does)."""
    cutoff = int(now.timestamp()) - keep_seconds
    result = session.execute(delete(RateLimitWindow).where(RateLimitWindow.window_start < cutoff))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]

"""Per-IP limits hold across processes: in the database, or in Redis when configured."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from flask import Flask

from newsletter.ratelimit import RedisRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/15"


def redis_reachable() -> bool:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
        return True
    except Exception:  # noqa: BLE001 - any failure means no Redis here
        return False


needs_redis = pytest.mark.skipif(not redis_reachable(), reason="needs Redis on 127.0.0.1:6379")


def test_two_apps_on_one_database_share_the_limit(make_app: Callable[..., Flask]) -> None:
    first, second = make_app(SUBSCRIBE_RATE_LIMIT=3), make_app(SUBSCRIBE_RATE_LIMIT=3)
    codes = [
        app.test_client().post("/subscribe", json={"email": f"s{n}@example.com"}).status_code
        for n, app in enumerate([first, second, first, second])
    ]
    assert codes == [202, 202, 202, 429]


@needs_redis
def test_redis_limiter_counts_per_key_and_window() -> None:
    limiter = RedisRateLimiter(REDIS_URL)
    key = f"test:{uuid.uuid4()}"
    now = datetime(2026, 11, 2, 9, 0, 5, tzinfo=UTC)
    try:
        assert [limiter.hit(key, limit=2, window_seconds=60, now=now) for _ in range(3)] == [
            True,
            True,
            False,
        ]
        assert limiter.hit(f"{key}:other", limit=2, window_seconds=60, now=now)
        later = datetime(2026, 11, 2, 9, 1, 0, tzinfo=UTC)
        assert limiter.hit(key, limit=2, window_seconds=60, now=later)
    finally:
        limiter.close()


@needs_redis
def test_apps_configured_with_redis_share_the_limit_there(make_app: Callable[..., Flask]) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()
    first = make_app(SUBSCRIBE_RATE_LIMIT=2, RATELIMIT_STORAGE_URI=REDIS_URL)
    second = make_app(SUBSCRIBE_RATE_LIMIT=2, RATELIMIT_STORAGE_URI=REDIS_URL)
    codes = [
        app.test_client().post("/subscribe", json={"email": f"r{n}@example.com"}).status_code
        for n, app in enumerate([first, second, first])
    ]
    assert codes == [202, 202, 429]
    from newsletter.db import db
    from newsletter.models import RateLimitWindow

    with first.app_context():
        assert db.session.query(RateLimitWindow).count() == 0  # counted in Redis, not here
    for app in (first, second):
        app.extensions["newsletter"].rate_limiter.close()


def test_unreachable_redis_lets_sign_ups_through(make_app: Callable[..., Flask]) -> None:
    from newsletter.mailcatcher import free_port

    app = make_app(RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0")
    response = app.test_client().post("/subscribe", json={"email": "open@example.com"})
    assert response.status_code == 202
    app.extensions["newsletter"].rate_limiter.close()


def test_a_bad_storage_uri_names_the_variable(make_app: Callable[..., Flask]) -> None:
    from newsletter.config import ConfigError

    with pytest.raises(ConfigError, match="NEWSLETTER_RATELIMIT_STORAGE_URI"):
        make_app(RATELIMIT_STORAGE_URI="memcached://127.0.0.1")

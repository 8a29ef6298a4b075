"""POST /subscribe: bodies, answers, bad input, abuse limits and CORS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from newsletter.db import db
from newsletter.models import ConsentEvent, OutboxEmail, Subscriber
from tests.conftest import BLOG_ORIGIN, PUBLIC_URL, FrozenClock
from tests.smtp_sink import SmtpSink

THANKS = "Thank you! Please check your inbox to confirm your subscription."


def count(app: Flask, model: Any) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model)) or 0


def subscriber(app: Flask, email: str) -> Subscriber | None:
    with app.app_context():
        row = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
        if row is not None:
            db.session.expunge(row)
        return row


def test_json_request_gets_202_and_json(client: FlaskClient, app: Flask) -> None:
    response = client.post("/subscribe", json={"email": "a@example.com"})
    assert response.status_code == 202
    assert response.json == {"ok": True, "message": THANKS}
    assert subscriber(app, "a@example.com").status == "pending"  # type: ignore[union-attr]


def test_multipart_form_is_accepted(client: FlaskClient, app: Flask) -> None:
    response = client.post(
        "/subscribe", data={"email": "m@example.com"}, content_type="multipart/form-data"
    )
    assert response.status_code == 303
    assert subscriber(app, "m@example.com") is not None


def test_accept_json_on_a_form_post_gets_json(client: FlaskClient) -> None:
    response = client.post(
        "/subscribe", data={"email": "f@example.com"}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 202 and response.json["ok"] is True


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("*/*", 303),  # curl -d
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", 303),  # a browser
        ("application/json", 202),
        ("application/json, text/plain, */*", 202),  # common script libraries
        ("text/html, application/json;q=0.5", 303),
    ],
)
def test_a_form_post_is_answered_by_what_accept_names(
    client: FlaskClient, accept: str, status: int
) -> None:
    response = client.post(
        "/subscribe", data={"email": "curl@example.com"}, headers={"Accept": accept}
    )
    assert response.status_code == status
    if status == 303:
        assert response.headers["Location"].endswith("/subscribe/thanks")
    else:
        assert response.json["ok"] is True


@pytest.mark.parametrize(
    "address",
    [
        "",
        "   ",
        "not-an-address",
        "a@",
        "@example.com",
        "a@b@example.com",
        "one@example.com, two@example.com",
        "one@example.com;two@example.com",
        "a@example.com\r\nBcc: victim@example.com",
        "x" * 250 + "@example.com",
        "a@exa mple.com",
        "a@[127.0.0.1]",
    ],
)
def test_bad_addresses_get_a_helpful_400_and_store_nothing(
    client: FlaskClient, app: Flask, address: str
) -> None:
    response = client.post("/subscribe", json={"email": address})
    assert response.status_code == 400
    assert response.json["ok"] is False
    assert response.json["message"]
    assert count(app, Subscriber) == 0 and count(app, OutboxEmail) == 0


def test_bad_address_in_a_form_post_shows_the_form_again(client: FlaskClient) -> None:
    response = client.post("/subscribe", data={"email": "nope", "name": "Ada"})
    assert response.status_code == 400
    assert b'role="alert"' in response.data
    assert b'value="nope"' in response.data


def test_json_body_that_is_not_an_object_is_refused(client: FlaskClient) -> None:
    response = client.post("/subscribe", data="[1, 2]", content_type="application/json")
    assert response.status_code == 400 and response.json["ok"] is False


def test_address_is_normalised_and_case_does_not_make_a_second_reader(
    client: FlaskClient, app: Flask, clock: FrozenClock
) -> None:
    client.post("/subscribe", json={"email": "Ada.Lovelace@EXAMPLE.com"})
    clock.advance(minutes=11)
    client.post("/subscribe", json={"email": "ada.lovelace@example.COM"})
    assert count(app, Subscriber) == 1
    assert subscriber(app, "ada.lovelace@example.com") is not None


def test_internationalised_domain_is_stored_in_idna(client: FlaskClient, app: Flask) -> None:
    assert client.post("/subscribe", json={"email": "leser@bücher.example"}).status_code == 202
    assert subscriber(app, "leser@xn--bcher-kva.example") is not None


def test_answer_is_the_same_for_new_pending_confirmed_and_unsubscribed(
    client: FlaskClient, app: Flask, clock: FrozenClock
) -> None:
    from newsletter.models import CONFIRMED, UNSUBSCRIBED

    answers = [client.post("/subscribe", json={"email": "same@example.com"})]
    clock.advance(minutes=11)
    answers.append(client.post("/subscribe", json={"email": "same@example.com"}))
    with app.app_context():
        row = db.session.scalar(select(Subscriber))
        assert row is not None
        row.status = CONFIRMED
        db.session.commit()
    answers.append(client.post("/subscribe", json={"email": "same@example.com"}))
    with app.app_context():
        row = db.session.scalar(select(Subscriber))
        assert row is not None and row.status == CONFIRMED  # never set back to pending
        row.status = UNSUBSCRIBED
        db.session.commit()
    clock.advance(minutes=11)
    answers.append(client.post("/subscribe", json={"email": "same@example.com"}))
    assert {(a.status_code, a.get_data()) for a in answers} == {
        (answers[0].status_code, answers[0].get_data())
    }
    # The unsubscribed reader goes through double opt-in again.
    assert subscriber(app, "same@example.com").status == "pending"  # type: ignore[union-attr]


def test_honeypot_looks_successful_but_stores_and_sends_nothing(
    client: FlaskClient, app: Flask
) -> None:
    response = client.post(
        "/subscribe", json={"email": "bot@example.com", "website": "http://spam.example"}
    )
    assert response.status_code == 202 and response.json["ok"] is True
    form = client.post("/subscribe", data={"email": "bot2@example.com", "website": "x"})
    assert form.status_code == 303
    assert count(app, Subscriber) == 0 and count(app, OutboxEmail) == 0


def test_per_ip_rate_limit_answers_429(client: FlaskClient, app: Flask, clock: FrozenClock) -> None:
    for n in range(10):
        assert client.post("/subscribe", json={"email": f"r{n}@example.com"}).status_code == 202
    blocked = client.post("/subscribe", json={"email": "r10@example.com"})
    assert blocked.status_code == 429
    assert blocked.json["ok"] is False and blocked.headers["Retry-After"] == "60"
    assert subscriber(app, "r10@example.com") is None
    # Another address is counted separately, and the next minute is a fresh window.
    other = client.post(
        "/subscribe", json={"email": "o@example.com"}, environ_base={"REMOTE_ADDR": "198.51.100.7"}
    )
    assert other.status_code == 202
    clock.advance(minutes=1)
    assert client.post("/subscribe", json={"email": "r10@example.com"}).status_code == 202


def test_rate_limit_is_configurable(make_app: Callable[..., Flask]) -> None:
    app = make_app(SUBSCRIBE_RATE_LIMIT=2)
    client = app.test_client()
    codes = [
        client.post("/subscribe", json={"email": f"x{n}@example.com"}).status_code for n in range(3)
    ]
    assert codes == [202, 202, 429]


def test_forwarded_for_is_ignored_without_proxy_count(client: FlaskClient, app: Flask) -> None:
    client.post(
        "/subscribe", json={"email": "p@example.com"}, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    with app.app_context():
        event = db.session.scalar(select(ConsentEvent))
        assert event is not None and event.ip == "127.0.0.1"


def test_forwarded_for_is_trusted_with_proxy_count(make_app: Callable[..., Flask]) -> None:
    app = make_app(PROXY_COUNT=1)
    client = app.test_client()
    for n in range(10):
        client.post(
            "/subscribe",
            json={"email": f"p{n}@example.com"},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
    # Limits apply to the forwarded address, not to the proxy's.
    assert (
        client.post(
            "/subscribe",
            json={"email": "q@example.com"},
            headers={"X-Forwarded-For": "203.0.113.9"},
        ).status_code
        == 429
    )
    assert (
        client.post(
            "/subscribe",
            json={"email": "q@example.com"},
            headers={"X-Forwarded-For": "203.0.113.10"},
        ).status_code
        == 202
    )
    with app.app_context():
        event = db.session.scalar(
            select(ConsentEvent)
            .where(ConsentEvent.kind == "requested")
            .order_by(ConsentEvent.id.desc())
        )
        assert event is not None and event.ip == "203.0.113.10"


def test_one_confirmation_per_address_per_ten_minutes_and_five_a_day(
    client: FlaskClient, app: Flask, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    def ask(ip: str) -> None:
        response = client.post(
            "/subscribe", json={"email": "victim@example.com"}, environ_base={"REMOTE_ADDR": ip}
        )
        assert response.status_code == 202

    ask("192.0.2.1")
    ask("192.0.2.2")  # someone else asks at once: no second email
    assert count(app, OutboxEmail) == 1
    for n in range(6):
        clock.advance(minutes=11)
        ask(f"192.0.2.{10 + n}")
    assert count(app, OutboxEmail) == 5  # the day's cap
    clock.advance(hours=24)
    ask("192.0.2.50")
    assert count(app, OutboxEmail) == 6
    # Every request is still on record as a consent request.
    with app.app_context():
        requested = db.session.scalar(
            select(func.count()).select_from(ConsentEvent).where(ConsentEvent.kind == "requested")
        )
    assert requested == 9


def test_oversized_body_is_refused(client: FlaskClient, app: Flask) -> None:
    response = client.post("/subscribe", json={"email": "big@example.com", "name": "x" * 70_000})
    assert response.status_code == 413
    assert response.json["ok"] is False
    assert count(app, Subscriber) == 0


def test_cors_allows_exactly_the_configured_origins(client: FlaskClient) -> None:
    preflight = client.options(
        "/subscribe",
        headers={
            "Origin": BLOG_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == BLOG_ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = client.post(
        "/subscribe", json={"email": "c@example.com"}, headers={"Origin": BLOG_ORIGIN}
    )
    assert allowed.status_code == 202
    assert allowed.headers["Access-Control-Allow-Origin"] == BLOG_ORIGIN

    foreign = client.options(
        "/subscribe",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in foreign.headers
    refused = client.post(
        "/subscribe", json={"email": "d@example.com"}, headers={"Origin": "https://evil.example"}
    )
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_form_post_returns_to_next_on_an_allowed_origin_only(client: FlaskClient) -> None:
    back = client.post(
        "/subscribe", data={"email": "n@example.com", "next": f"{BLOG_ORIGIN}/thanks"}
    )
    assert back.status_code == 303 and back.headers["Location"] == f"{BLOG_ORIGIN}/thanks"
    elsewhere = client.post(
        "/subscribe", data={"email": "n2@example.com", "next": "https://evil.example/phish"}
    )
    assert elsewhere.status_code == 303
    assert elsewhere.headers["Location"].endswith("/subscribe/thanks")


def test_source_falls_back_to_the_referer(client: FlaskClient, app: Flask) -> None:
    client.post(
        "/subscribe",
        data={"email": "ref@example.com"},
        headers={"Referer": f"{BLOG_ORIGIN}/posts/walking"},
    )
    with app.app_context():
        event = db.session.scalar(select(ConsentEvent))
        assert event is not None
        assert event.source_url == f"{BLOG_ORIGIN}/posts/walking"
        assert event.method == "form"


def test_api_method_is_recorded_for_json(client: FlaskClient, app: Flask) -> None:
    client.post("/subscribe", json={"email": "api@example.com", "source": "https://x.example/p"})
    with app.app_context():
        event = db.session.scalar(select(ConsentEvent))
        assert event is not None and event.method == "api"
        assert event.source_url == "https://x.example/p"


def test_consent_text_is_stored_by_value(
    app: Flask, client: FlaskClient, clock: FrozenClock
) -> None:
    from newsletter.config import DEFAULTS

    client.post("/subscribe", json={"email": "v1@example.com"})
    app.config["CONSENT_TEXT"] = "A new wording."
    clock.advance(minutes=11)
    client.post("/subscribe", json={"email": "v2@example.com"})
    with app.app_context():
        texts = db.session.scalars(
            select(ConsentEvent.consent_text)
            .where(ConsentEvent.kind == "requested")
            .order_by(ConsentEvent.id)
        ).all()
    assert texts == [DEFAULTS["CONSENT_TEXT"], "A new wording."]


def test_hosted_pages_and_security_headers(client: FlaskClient) -> None:
    page = client.get("/subscribe")
    assert page.status_code == 200
    assert b"Join the Community!" in page.data
    assert b"Privacy Policy" in page.data and b'name="website"' in page.data
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    thanks = client.get("/subscribe/thanks")
    assert b"Please check your inbox to confirm your subscription." in thanks.data


def test_simultaneous_sign_ups_of_one_new_address_make_one_reader_and_one_email(app: Flask) -> None:
    import threading

    app.config["OUTBOX_SEND_AFTER_REQUEST"] = False
    barrier = threading.Barrier(8)
    codes: list[int] = []

    def sign_up(n: int) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(
            "/subscribe",
            json={"email": "rush@example.com"},
            environ_base={"REMOTE_ADDR": f"192.0.2.{n}"},
        )
        codes.append(response.status_code)

    threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [202] * 8
    assert count(app, Subscriber) == 1
    assert count(app, OutboxEmail) == 1
    assert count(app, ConsentEvent) == 8


def stored_anything(app: Flask) -> bool:
    from newsletter.models import RateLimitWindow

    return any(
        count(app, model) for model in (Subscriber, ConsentEvent, OutboxEmail, RateLimitWindow)
    )


DEEP_JSON = '{"email": "deep@example.com", "x": ' + "[" * 20_000 + "]" * 20_000 + "}"


@pytest.mark.parametrize(
    ("body", "kind", "words"),
    [
        (
            {"email": "crlf@example.com", "next": f"{BLOG_ORIGIN}/thanks\r\nSet-Cookie: a=b"},
            "form",
            b"The &#39;next&#39; address is not a valid web address",
        ),
        (DEEP_JSON, "json", b"nested too deeply"),
        ('{"email": "lone@example.com", "name": "Ada \\ud800"}', "json", b"not allowed"),
        ('{"email": "nul@example.com", "name": "Ada\\u0000"}', "json", b"not allowed"),
        ('{"email": "obj@example.com", "name": {"first": "Ada"}}', "json", b"must be text"),
    ],
)
def test_hostile_input_gets_a_400_with_a_message_and_writes_nothing(
    client: FlaskClient, app: Flask, body: Any, kind: str, words: bytes
) -> None:
    if kind == "form":
        response = client.post("/subscribe", data=body)
    else:
        response = client.post("/subscribe", data=body, content_type="application/json")
    assert response.status_code == 400
    assert words in response.data
    if kind == "json":
        assert response.json["ok"] is False
    assert not stored_anything(app)


def test_origin_null_is_refused_unless_configured(
    client: FlaskClient, make_app: Callable[..., Flask]
) -> None:
    refused = client.post(
        "/subscribe", json={"email": "sandbox@example.com"}, headers={"Origin": "null"}
    )
    assert refused.status_code == 403
    allowed_app = make_app(ALLOWED_ORIGINS=f"{BLOG_ORIGIN}, null")
    allowed = allowed_app.test_client().post(
        "/subscribe", json={"email": "sandbox@example.com"}, headers={"Origin": "null"}
    )
    assert allowed.status_code == 202
    assert allowed.headers["Access-Control-Allow-Origin"] == "null"


def test_a_spoofed_host_never_makes_an_allowed_next(client: FlaskClient) -> None:
    spoofed = {"Host": "evil.example"}
    for origin in ({}, {"Origin": "http://evil.example"}):
        sent = client.post(
            "/subscribe",
            data={"email": "host@example.com", "next": "http://evil.example/phish"},
            headers={**spoofed, **origin},
        )
        assert sent.status_code == 303 and sent.headers["Location"] == "/subscribe/thanks"


def test_next_is_rebuilt_on_the_configured_origin(client: FlaskClient) -> None:
    back = client.post(
        "/subscribe",
        data={
            "email": "rebuilt@example.com",
            "next": "HTTPS://Blog.Example.com/thanks page?from=form&x=<y>#top",
        },
    )
    assert back.status_code == 303
    assert back.headers["Location"] == f"{BLOG_ORIGIN}/thanks%20page?from=form&x=%3Cy%3E#top"
    own = client.post(
        "/subscribe", data={"email": "own@example.com", "next": f"{PUBLIC_URL}/welcome"}
    )
    assert own.headers["Location"] == f"{PUBLIC_URL}/welcome"


def test_a_refused_origin_is_logged_once_an_hour_naming_origin_and_setting(
    client: FlaskClient, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    www = "https://www.blog.example.com"

    def attempt(origin: str) -> None:
        response = client.post(
            "/subscribe", data={"email": "w@example.com"}, headers={"Origin": origin}
        )
        assert response.status_code == 403

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "newsletter.web.public"
        ]

    with caplog.at_level(logging.WARNING, logger="newsletter.web.public"):
        attempt(www)
        [first] = warnings()
        assert www in first and "NEWSLETTER_ALLOWED_ORIGINS" in first and BLOG_ORIGIN in first
        clock.advance(minutes=59)
        attempt(www)
        client.options(
            "/subscribe", headers={"Origin": www, "Access-Control-Request-Method": "POST"}
        )
        assert len(warnings()) == 1
        attempt("https://staging.blog.example.com")  # another origin: its own warning
        assert len(warnings()) == 2
        clock.advance(minutes=1)
        attempt(www)
        assert len(warnings()) == 3

"""The dashboard's access rules: sign-in, throttling, sessions, CSRF, cookies and headers."""

from __future__ import annotations

import logging
from typing import Any

import pyotp
import pytest
from flask import Flask
from sqlalchemy import select

from newsletter.admin_auth import set_password, set_totp_secret
from newsletter.admin_models import AdminLoginAttempt, AdminSession, AdminUser
from newsletter.appctx import get_services
from newsletter.db import db
from tests.admin_helpers import AUTHOR, PASSWORD, log_in, make_author, signed_in
from tests.conftest import FrozenClock

PAGES = [
    "/admin/",
    "/admin/readers",
    "/admin/readers/1",
    "/admin/digest",
    "/admin/campaigns",
    "/admin/settings",
    "/admin/jobs/1",
    "/admin/readers/export.csv",
]


@pytest.mark.parametrize("path", PAGES)
def test_an_unauthenticated_page_redirects_to_the_sign_in_page(app: Flask, path: str) -> None:
    response = app.test_client().get(path)
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/admin/login?next=")


def test_an_unauthenticated_api_call_gets_401(app: Flask) -> None:
    response = app.test_client().get("/admin/api/jobs/1")
    assert response.status_code == 401
    assert response.json == {"error": "sign in first"}


def test_an_unauthenticated_post_redirects_and_changes_nothing(app: Flask) -> None:
    response = app.test_client().post("/admin/settings", data={"SITE_NAME": "Hacked"})
    assert response.status_code == 303
    with app.app_context():
        assert db.session.scalar(select(AdminSession)) is None


def test_the_sign_in_page_has_email_and_password_fields(app: Flask) -> None:
    page = app.test_client().get("/admin/login").text
    assert 'name="email"' in page and 'name="password"' in page
    assert '<label for="email">' in page and '<label for="password">' in page


def test_signing_in_opens_a_server_side_session_with_safe_cookie_flags(app: Flask) -> None:
    make_author(app)
    client = app.test_client()
    response = log_in(client, next_path="/admin/readers")
    assert response.status_code == 303 and response.headers["Location"] == "/admin/readers"
    cookie = next(
        h for h in response.headers.getlist("Set-Cookie") if h.startswith("newsletter_admin=")
    )
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # PUBLIC_URL is http in the tests
    assert client.get("/admin/").status_code == 200
    with app.app_context():
        stored = db.session.scalar(select(AdminSession))
        assert stored is not None
        value = cookie.split(";")[0].split("=", 1)[1]
        assert value not in stored.id_hash  # only a hash of the cookie is kept


def test_the_session_cookie_is_secure_when_public_url_is_https(make_app: Any) -> None:
    app = make_app(PUBLIC_URL="https://newsletter.example.com")
    make_author(app)
    response = log_in(app.test_client())
    cookies = response.headers.getlist("Set-Cookie")
    assert any(h.startswith("newsletter_admin=") and "Secure" in h for h in cookies)


def test_a_wrong_password_is_refused(app: Flask) -> None:
    make_author(app)
    client = app.test_client()
    response = log_in(client, password="not the password at all")
    assert response.status_code == 401
    assert client.get("/admin/").status_code == 303


def test_next_never_redirects_off_the_dashboard(app: Flask) -> None:
    make_author(app)
    response = log_in(app.test_client(), next_path="//evil.example/admin/")
    assert response.headers["Location"] == "/admin/"


def test_signing_in_without_the_forms_token_is_refused_with_400(app: Flask) -> None:
    make_author(app)
    response = app.test_client().post("/admin/login", data={"email": AUTHOR, "password": PASSWORD})
    assert response.status_code == 400


def test_ten_failures_for_one_account_lock_it_for_the_window_even_with_the_right_password(
    app: Flask, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    make_author(app)
    client = app.test_client()
    caplog.set_level(logging.INFO, logger="newsletter.admin_auth")
    for n in range(10):
        assert log_in(client, password=f"wrong password {n}", ip=f"10.0.0.{n}").status_code == 401
    refused = log_in(client, ip="10.0.1.1")
    assert refused.status_code == 429
    assert "15 minutes" in refused.text
    assert client.get("/admin/").status_code == 303
    clock.advance(minutes=14)
    assert log_in(client, ip="10.0.1.1").status_code == 429
    clock.advance(minutes=2)  # the window has passed since the failures
    assert log_in(client, ip="10.0.1.1").status_code == 303
    with app.app_context():
        outcomes = [a.outcome for a in db.session.scalars(select(AdminLoginAttempt))]
        assert outcomes == ["failed"] * 10 + ["refused", "refused", "ok"]
        assert all(a.ip for a in db.session.scalars(select(AdminLoginAttempt)))
    assert "admin login failed" in caplog.text and "ip=10.0.0.3" in caplog.text
    assert "admin login ok" in caplog.text


def test_ten_failures_from_one_address_lock_that_address(app: Flask) -> None:
    make_author(app)
    client = app.test_client()
    for n in range(10):
        assert log_in(client, email=f"someone{n}@example.com", ip="10.9.9.9").status_code == 401
    assert log_in(client, ip="10.9.9.9").status_code == 429
    assert log_in(client, ip="10.9.9.10").status_code == 303  # another address may sign in


def test_signing_out_deletes_the_session_on_the_server(app: Flask) -> None:
    client, token = signed_in(app)
    cookie = client.get_cookie("newsletter_admin", path="/admin")
    assert cookie is not None
    response = client.post("/admin/logout", data={"csrf_token": token})
    assert response.status_code == 303
    # The same cookie, replayed, no longer works: the server forgot the session.
    replay = app.test_client()
    replay.set_cookie("newsletter_admin", cookie.value, path="/admin")
    assert replay.get("/admin/").status_code == 303
    with app.app_context():
        assert db.session.scalar(select(AdminSession)) is None


def test_a_password_change_signs_out_every_session(app: Flask, clock: FrozenClock) -> None:
    client, _token = signed_in(app)
    other = app.test_client()
    assert log_in(other).status_code == 303
    with app.app_context():
        set_password(db.session(), AUTHOR, "a brand new passphrase", now=clock())
    assert client.get("/admin/").status_code == 303
    assert other.get("/admin/").status_code == 303
    assert log_in(other).status_code == 401
    assert log_in(other, password="a brand new passphrase").status_code == 303


def test_an_idle_session_times_out(make_app: Any, clock: FrozenClock) -> None:
    app = make_app(ADMIN_SESSION_HOURS=2)
    client, _token = signed_in(app)
    clock.advance(hours=1, minutes=59)
    assert client.get("/admin/").status_code == 200  # use renews it
    clock.advance(hours=1, minutes=59)
    assert client.get("/admin/").status_code == 200
    clock.advance(hours=2, minutes=1)
    assert client.get("/admin/").status_code == 303


@pytest.mark.parametrize("hours", ["soon", 0, -1])
def test_a_bad_session_length_stops_start_up_naming_the_variable(make_app: Any, hours: Any) -> None:
    from newsletter.config import ConfigError

    with pytest.raises(ConfigError, match="NEWSLETTER_ADMIN_SESSION_HOURS"):
        make_app(ADMIN_SESSION_HOURS=hours)


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_a_state_changing_request_without_the_csrf_token_is_refused_with_400(
    app: Flask, token: str | None
) -> None:
    client, _good = signed_in(app)
    data = {"SITE_NAME": "Changed"}
    if token is not None:
        data["csrf_token"] = token
    assert client.post("/admin/settings", data=data).status_code == 400
    assert client.post("/admin/logout", data=data).status_code == 400
    assert client.get("/admin/").status_code == 200  # still signed in


def test_the_csrf_token_may_come_in_a_header(app: Flask) -> None:
    client, token = signed_in(app)
    response = client.post("/admin/settings", data={}, headers={"X-CSRF-Token": token})
    assert response.status_code == 303


def test_admin_pages_forbid_caching_framing_and_inline_script(app: Flask) -> None:
    client, _token = signed_in(app)
    for path in ["/admin/", "/admin/login", "/admin/readers"]:
        response = client.get(path)
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Frame-Options"] == "DENY"
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in response.text and " on" + "click=" not in response.text
    unauthenticated = app.test_client().get("/admin/")
    assert unauthenticated.headers["Cache-Control"] == "no-store"


def test_a_preview_may_be_framed_by_the_dashboard_only(app: Flask) -> None:
    client, _token = signed_in(app)
    response = client.get("/admin/digest/preview")
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp and "sandbox" in csp and "script-src" not in csp


def test_the_second_factor_is_asked_when_turned_on(app: Flask, clock: FrozenClock) -> None:
    make_author(app)
    secret = pyotp.random_base32()
    with app.app_context():
        set_totp_secret(db.session(), AUTHOR, secret)
    client = app.test_client()
    assert log_in(client).status_code == 401
    code = pyotp.TOTP(secret).at(clock())
    wrong = f"{(int(code) + 500000) % 1000000:06d}"
    assert log_in(client, code=wrong).status_code == 401
    assert log_in(client, code=code).status_code == 303


# --- the CLI ----------------------------------------------------------------------------------


def test_admin_create_reads_the_password_from_stdin_and_hashes_it(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["admin", "create", AUTHOR, "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        user = db.session.scalar(select(AdminUser))
        assert user is not None and user.email == AUTHOR
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    assert log_in(app.test_client()).status_code == 303


def test_admin_create_asks_twice_on_a_terminal(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["admin", "create", AUTHOR], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("Password") == 1 and "Repeat" in result.output


def test_a_short_password_is_refused(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["admin", "create", AUTHOR, "--password-stdin"], input="short pass\n"
    )
    assert result.exit_code == 1 and "at least 12 characters" in result.output


def test_set_password_changes_it_and_signs_out(app: Flask) -> None:
    client, _token = signed_in(app)
    result = app.test_cli_runner().invoke(
        args=["admin", "set-password", AUTHOR, "--password-stdin"], input="another long one!\n"
    )
    assert result.exit_code == 0, result.output
    assert client.get("/admin/").status_code == 303
    assert log_in(client, password="another long one!").status_code == 303


def test_the_clock_of_the_app_is_used_for_sessions(app: Flask) -> None:
    _client, _token = signed_in(app)
    with app.app_context():
        stored = db.session.scalar(select(AdminSession))
        assert stored is not None and stored.created_at == get_services(app).clock()

"""The author's dashboard at ``/admin/``: sign-in, server-side sessions, CSRF, security headers,
and the pages (see :mod:`.views`). Translation only: the work is in the domain modules, reached
through :mod:`.actions`.

Access rules: every page but the sign-in page needs a live session (else 303 to the sign-in
page; the JSON API answers 401); every state-changing request carries the session's CSRF token
(form field ``csrf_token`` or header ``X-CSRF-Token``), else 400. CSRF is a per-session token
checked here rather than Flask-WTF: the token lives in the server-side session row, so signing
out or changing the password revokes it too, and no client-side signed session is needed.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy.exc import OperationalError, ProgrammingError

from ... import admin_auth
from ...appctx import get_services
from ...db import db
from ...settings import apply_stored_settings

bp = Blueprint(
    "admin",
    __name__,
    url_prefix="/admin",
    static_folder="../../static/admin",
    static_url_path="/static",
)

SESSION_COOKIE = "newsletter_admin"
LOGIN_CSRF_COOKIE = "newsletter_admin_login"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_ENDPOINTS = frozenset({"admin.login", "admin.login_post", "admin.static"})

# No inline script anywhere; the email previews are framed from this origin only.
ADMIN_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
    "frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)
# An email preview: its own inline styles and remote images, no script, framed only by us.
PREVIEW_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
)


def _secure() -> bool:
    return str(current_app.config.get("PUBLIC_URL", "")).startswith("https://")


def _idle() -> timedelta:
    return timedelta(hours=float(current_app.config.get("ADMIN_SESSION_HOURS") or 12))


def client_ip() -> str:
    """The client's address (behind NEWSLETTER_PROXY_COUNT proxies, the one they saw)."""
    return request.remote_addr or "unknown"


def csrf_token() -> str:
    """The signed-in session's CSRF token, for forms and scripts."""
    return str(g.admin.csrf_token)


def _is_api() -> bool:
    return request.path.startswith("/admin/api/")


@bp.before_request
def require_session() -> Any:
    """Sign-in and CSRF checks for every dashboard request."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    now = get_services().clock()
    g.admin = admin_auth.current_session(
        db.session(), request.cookies.get(SESSION_COOKIE), now=now, idle=_idle()
    )
    if g.admin is None:
        if _is_api():
            return jsonify(error="sign in first"), 401
        target = request.full_path if request.method == "GET" else request.path
        return redirect(url_for("admin.login", next=target.rstrip("?")), 303)
    if request.method not in SAFE_METHODS:
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
        if not hmac.compare_digest(sent.encode(), g.admin.csrf_token.encode()):
            abort(400, "The form's security token is missing or stale: reload the page.")
    return None


@bp.after_request
def security_headers(response: Response) -> Response:
    """No caching, no framing by others, no inline script."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if getattr(g, "preview", False):
        response.headers["Content-Security-Policy"] = PREVIEW_CSP
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
    else:
        response.headers["Content-Security-Policy"] = ADMIN_CSP
        response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.app_context_processor
def template_values() -> dict[str, Any]:
    """What every dashboard template may use."""
    admin = getattr(g, "admin", None)
    return {"admin": admin, "csrf_token": admin.csrf_token if admin else ""}


def _safe_next(target: str | None) -> str:
    """Only a path inside the dashboard: never an open redirect."""
    if target and target.startswith("/admin/") and not urlsplit(target).netloc:
        return target
    return url_for("admin.overview")


def _login_page(status: int = 200, error: str | None = None) -> Response:
    token = secrets.token_urlsafe(32)
    page = render_template(
        "admin/login.html", error=error, login_token=token, next=request.values.get("next", "")
    )
    response = Response(page, status)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=_secure(),
        path="/admin/login",
    )
    return response


@bp.get("/login")
def login() -> Response:
    """The sign-in form."""
    return _login_page()


@bp.post("/login")
def login_post() -> Any:
    """Check the form; 429 once throttled; a new server-side session on success."""
    sent = request.form.get("csrf_token", "")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not sent or not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
        abort(400, "The form's security token is missing or stale: reload the page.")
    now = get_services().clock()
    try:
        signed_in = admin_auth.log_in(
            db.session(),
            request.form.get("email", ""),
            request.form.get("password", ""),
            ip=client_ip(),
            now=now,
            code=request.form.get("code", ""),
        )
    except admin_auth.LoginRefusedError as err:
        return _login_page(429, str(err))
    if signed_in is None:
        return _login_page(401, "That address, password or code is not right.")
    response = redirect(_safe_next(request.form.get("next")), 303)
    response.set_cookie(
        SESSION_COOKIE,
        signed_in.cookie,
        httponly=True,
        samesite="Lax",
        secure=_secure(),
        path="/admin",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin/login")
    return response


@bp.post("/logout")
def logout() -> Any:
    """Delete the session on the server; the cookie is then worthless."""
    admin_auth.log_out(db.session(), request.cookies.get(SESSION_COOKIE))
    response = redirect(url_for("admin.login"), 303)
    response.delete_cookie(SESSION_COOKIE, path="/admin", secure=_secure(), httponly=True)
    return response


# Requests that read no stored setting: the health check must not touch (or create) the
# database beyond its own check, and static files need none.
NO_SETTINGS_ENDPOINTS = frozenset({"web.healthz", "static", "admin.static"})


def _apply_settings() -> None:
    """Stored settings win over the environment's, in every request of every process."""
    if request.endpoint in NO_SETTINGS_ENDPOINTS:
        return
    try:
        apply_stored_settings(db.session(), current_app.config)
    except (OperationalError, ProgrammingError):
        # The schema is older than migration 0007 (`newsletter migrate` not run yet): the
        # environment's values stand, and the sign-up pages keep working.
        db.session().rollback()


def init_app(app: Flask) -> None:
    """Register the dashboard; a bad NEWSLETTER_ADMIN_SESSION_HOURS stops start-up."""
    from ...config import _as_number
    from . import views  # noqa: F401  (routes on ``bp``)

    if app.config.get("ADMIN_SESSION_HOURS") is None:
        app.config["ADMIN_SESSION_HOURS"] = 12
    _as_number(app.config, "ADMIN_SESSION_HOURS", float, 0.05, 24 * 90)

    app.before_request(_apply_settings)
    app.register_blueprint(bp)

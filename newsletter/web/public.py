"""HTTP routes: translate requests into calls of ``subscriptions`` and results into pages."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .. import subscriptions
from ..addresses import InvalidAddressError
from ..appctx import get_services
from ..db import db
from ..embed import consent_html
from ..subscriptions import RequestInfo
from ..tokens import PROBE_SUBSCRIBER_ID, ExpiredTokenError, InvalidTokenError

bp = Blueprint("web", __name__)

THANKS = "Thank you! Please check your inbox to confirm your subscription."
OOPS = "Oops! Something went wrong while submitting the form."
RATE_LIMITED = "Too many sign-ups from your network just now. Please try again in a minute."
ONE_CLICK_BODY = "List-Unsubscribe=One-Click"
# The fields a sign-up reads; each must be text (a JSON body could send anything).
FIELDS = ("email", "name", "next", "source", "website")
# How often the author is told about one refused origin, and how many origins are remembered.
ORIGIN_WARNING_EVERY = timedelta(hours=1)
ORIGIN_WARNINGS_KEPT = 1000

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    """JSON for scripts, pages and redirects for browsers, decided as browsers send requests:
    a JSON body, or an Accept header that names application/json itself (not through */*) at
    least as high as text/html. A plain form post with ``Accept: */*`` (curl -d) is a form."""
    if request.is_json:
        return True
    accept = request.accept_mimetypes
    if "application/json" not in {value.lower() for value, _quality in accept}:
        return False
    return accept["application/json"] >= accept["text/html"]


def _origin_of(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def _own_origin() -> str | None:
    # From the configuration only: the Host header is whatever the client chose to send.
    return _origin_of(current_app.config["PUBLIC_URL"])


def _origin_allowed(origin: str | None) -> bool:
    """Whether a sign-up may come from a page on ``origin``: the configured origins, this
    service's own, or the very origin the request was sent to (the hosted page opened as
    localhost rather than PUBLIC_URL's 127.0.0.1, say: a browser cannot fake that, and a
    script that can fake it can fake any Origin). "null" only when configured."""
    return origin is not None and (
        origin in current_app.config["ALLOWED_ORIGINS"]
        or origin in (_own_origin(), _origin_of(request.host_url))
    )


def _warn_refused_origin(origin: str) -> None:
    """Tell the author, at most once an hour per origin, that a sign-up form is refused: the
    reader sees only an error, and a www. or staging address is an easy slip."""
    origin = origin[:200]  # a header can be long; this is only for the log
    state = current_app.extensions.setdefault(
        "newsletter.origin_warnings", {"lock": threading.Lock(), "last": {}}
    )
    now = get_services().clock()
    last: dict[str, datetime] = state["last"]
    with state["lock"]:
        previous = last.get(origin)
        if previous is not None and now - previous < ORIGIN_WARNING_EVERY:
            return
        if len(last) >= ORIGIN_WARNINGS_KEPT:  # a flood of made-up origins stays small
            for seen, when in list(last.items()):
                if now - when >= ORIGIN_WARNING_EVERY:
                    del last[seen]
            if len(last) >= ORIGIN_WARNINGS_KEPT:
                return
        last[origin] = now
    allowed = ", ".join(current_app.config["ALLOWED_ORIGINS"]) or "(empty)"
    log.warning(
        "Refused a sign-up from origin %r: it is not in NEWSLETTER_ALLOWED_ORIGINS "
        "(now %s). If that form is yours, add the origin exactly as shown (scheme, "
        "www. or not, port) to NEWSLETTER_ALLOWED_ORIGINS.",
        origin,
        allowed,
    )


def _has_bad_characters(value: str, *, controls: bool) -> bool:
    """Lone surrogates (invalid Unicode, unstorable) or, with ``controls``, control codes."""
    return any(
        0xD800 <= ord(c) <= 0xDFFF or (controls and (ord(c) < 32 or 0x7F <= ord(c) < 0xA0))
        for c in value
    )


def _check_fields(fields: dict[str, Any]) -> None:
    """Refuse, before anything is written, a field no reader's browser would send."""
    for key in FIELDS:
        value = fields.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            abort(400, description=f"The field {key!r} must be text.")
        # The address and ``next`` get their own, more helpful, messages further on.
        if _has_bad_characters(value, controls=key in ("name", "source")):
            abort(
                400,
                description=f"The field {key!r} contains characters that are not allowed "
                "(control characters or invalid Unicode). Please retype it.",
            )


def _safe_next(next_url: str) -> str | None:
    """Where to send the browser after a form post: ``next`` rebuilt on the allowed origin it
    names, or None (the thanks page). Built from the configured origin, never from input."""
    next_url = next_url.strip()
    if not next_url:
        return None
    if _has_bad_characters(next_url, controls=True) or len(next_url) > 2048:
        abort(
            400,
            description="The 'next' address is not a valid web address: it must be one "
            "line, like https://blog.example.com/thanks.",
        )
    try:
        parts = urlsplit(next_url)
    except ValueError:
        abort(
            400,
            description="The 'next' address is not a valid web address: it must be one "
            "line, like https://blog.example.com/thanks.",
        )
    origin = _origin_of(next_url)
    allowed: list[str] = [
        o for o in [*current_app.config["ALLOWED_ORIGINS"], _own_origin()] if o and o == origin
    ]
    if not allowed:
        return None
    safe = "/%:@!$&'()*+,;=-._~"
    rebuilt = allowed[0] + (quote(parts.path, safe=safe) or "/")
    if parts.query:
        rebuilt += "?" + quote(parts.query, safe=safe + "?")
    if parts.fragment:
        rebuilt += "#" + quote(parts.fragment, safe=safe + "?")
    return rebuilt


def _request_info(method: str, source: str | None = None) -> RequestInfo:
    return RequestInfo(
        method=method,
        ip=request.remote_addr,
        user_agent=request.user_agent.string or None,
        source_url=source,
    )


def _wake_outbox() -> None:
    sender = current_app.extensions.get("newsletter.outbox_sender")
    if sender is not None and current_app.config["OUTBOX_SEND_AFTER_REQUEST"]:
        sender.wake()


def _subscribe_fields() -> dict[str, Any]:
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:
            abort(
                400,
                description="The JSON body is nested too deeply. Send one flat object, "
                'such as {"email": "ada@example.com"}.',
            )
        if not isinstance(body, dict):
            abort(400, description="The request body must be a JSON object.")
        return body
    return request.form.to_dict()


def _answer(
    ok: bool, message: str, status: int, *, page: str = "subscribe.html", **context: Any
) -> tuple[Response | str, int]:
    if _wants_json():
        return jsonify(ok=ok, message=message), status
    return render_template(page, message=message, ok=ok, **context), status


@bp.get("/subscribe", provide_automatic_options=False)
def subscribe_page() -> str:
    """The hosted subscribe form."""
    return render_template("subscribe.html", form={})


@bp.post("/subscribe", provide_automatic_options=False)
def subscribe() -> Any:
    """Accept a sign-up from the hosted page, the blog's form, or a script."""
    origin = request.headers.get("Origin")
    if origin and not _origin_allowed(origin.lower()):
        _warn_refused_origin(origin.lower())
        return _answer(
            False,
            "This site may not sign readers up here: its origin is not in "
            "NEWSLETTER_ALLOWED_ORIGINS.",
            403,
            form={},
        )
    fields = _subscribe_fields()
    _check_fields(fields)
    form = {k: str(fields.get(k) or "") for k in ("email", "name")}
    next_url = _safe_next(str(fields.get("next") or ""))
    method = "api" if request.is_json else "form"
    if str(fields.get("website") or "").strip():
        # A bot filled the hidden field: look successful, store nothing, send nothing.
        return _accepted(next_url)
    services = get_services()
    allowed = services.rate_limiter.hit(
        f"subscribe-ip:{request.remote_addr}",
        limit=current_app.config["SUBSCRIBE_RATE_LIMIT"],
        window_seconds=60,
        now=services.clock(),
    )
    if not allowed:
        db.session.commit()  # the database limiter counts in the request's transaction
        response = _answer(False, RATE_LIMITED, 429, form=form)
        return _with_retry_after(response)
    source = str(fields.get("source") or "") or request.referrer
    try:
        subscriptions.subscribe(
            db.session(),
            services,
            str(fields.get("email") or ""),
            name=str(fields.get("name") or "") or None,
            info=_request_info(method, source[:2048] if source else None),
        )
    except InvalidAddressError as err:
        db.session.commit()  # nothing but the rate-limit count was written
        return _answer(False, str(err), 400, form=form)
    _wake_outbox()
    return _accepted(next_url)


def _with_retry_after(response: Any) -> Any:
    body, status = response
    if isinstance(body, Response):
        body.headers["Retry-After"] = "60"
        return body, status
    return body, status, {"Retry-After": "60"}


def _accepted(next_url: str | None) -> Any:
    if _wants_json():
        return jsonify(ok=True, message=THANKS), 202
    if next_url:  # already checked and rebuilt by _safe_next
        return redirect(next_url, code=303)
    return redirect(url_for("web.thanks"), code=303)


@bp.get("/subscribe/thanks")
def thanks() -> str:
    """Where a plain form post lands."""
    return render_template("message.html", title="Thank you!", message=THANKS)


@bp.route("/subscribe", methods=["OPTIONS"])
def subscribe_preflight() -> Response:
    """CORS preflight for script posts from the blog."""
    origin = (request.headers.get("Origin") or "").lower()
    if origin and not _origin_allowed(origin):
        # The browser stops a refused script here, so this is the author's only clue.
        _warn_refused_origin(origin)
    return Response(status=204)


@bp.after_app_request
def _cors(response: Response) -> Response:
    if request.endpoint in ("web.subscribe", "web.subscribe_preflight"):
        origin = (request.headers.get("Origin") or "").lower()
        if origin in current_app.config["ALLOWED_ORIGINS"]:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = "POST"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Accept"
            response.headers["Access-Control-Max-Age"] = "600"
        response.vary.add("Origin")
    return response


@bp.get("/confirm/<token>")
def confirm_page(token: str) -> Any:
    """One button, so link scanners that only GET confirm nothing."""
    try:
        subscriptions.check_confirm_link(db.session(), get_services(), token)
    except ExpiredTokenError:
        return render_template("expired.html", token=token), 410
    except InvalidTokenError:
        return _bad_link()
    finally:
        db.session.rollback()  # only read
    return render_template("confirm.html", token=token)


@bp.post("/confirm/<token>")
def confirm(token: str) -> Any:
    """Confirm the subscription."""
    try:
        subscriptions.confirm(db.session(), get_services(), token, _request_info("form"))
    except ExpiredTokenError:
        db.session.rollback()
        return render_template("expired.html", token=token), 410
    except InvalidTokenError:
        db.session.rollback()
        return _bad_link()
    _wake_outbox()
    return render_template(
        "message.html",
        title="You're subscribed!",
        message="Thank you for confirming. New posts will come to your inbox.",
    )


@bp.post("/confirm/<token>/resend")
def resend(token: str) -> Any:
    """Send a fresh link in place of an expired one."""
    services = get_services()
    try:
        services.tokens.read_confirm_token(token)
    except ExpiredTokenError as expired:
        subscriptions.resend_confirmation(db.session(), services, expired, _request_info("form"))
        _wake_outbox()
        # The same answer whatever happened, like the subscribe form.
        return render_template(
            "message.html",
            title="Check your inbox",
            message="If your subscription is still waiting for confirmation, "
            "a new link is on its way.",
        )
    except InvalidTokenError:
        return _bad_link()
    return redirect(url_for("web.confirm_page", token=token), code=303)


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> Any:
    """One button; a GET never unsubscribes (link scanners follow links)."""
    try:
        get_services().tokens.read_unsubscribe_token(token)
    except InvalidTokenError:
        return _bad_link()
    return render_template("unsubscribe.html", token=token)


@bp.post("/unsubscribe/<token>")
def unsubscribe(token: str) -> Any:
    """Unsubscribe: the page's button, or RFC 8058 one-click from a mail client."""
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    services = get_services()
    try:
        subscriber_id = services.tokens.read_unsubscribe_token(token)
        if subscriber_id == PROBE_SUBSCRIBER_ID:  # `newsletter doctor` checking the route
            return Response(
                "Unsubscribe works (a test link: nothing changed).\n",
                status=200,
                mimetype="text/plain",
            )
        subscriptions.unsubscribe(
            db.session(),
            services,
            subscriber_id,
            _request_info("one-click" if one_click else "form"),
        )
    except (InvalidTokenError, subscriptions.ReaderNotFoundError):
        db.session.rollback()
        if one_click:
            return Response(
                "This unsubscribe link is not valid.\n", status=400, mimetype="text/plain"
            )
        return _bad_link()
    if one_click:
        return Response("You have been unsubscribed.\n", status=200, mimetype="text/plain")
    return render_template(
        "message.html",
        title="You're unsubscribed",
        message="You will get no more emails from us. "
        "Changed your mind? You can subscribe again any time.",
        show_subscribe=True,
    )


@bp.get("/healthz")
def healthz() -> Any:
    """200 when the database answers with this version's schema; 503, saying why, when it
    cannot be reached, has no tables or has an older schema. ``worker`` says what the worker
    last reported (its status does not change the code: a site may run without one)."""
    from ..db import schema_problem
    from ..worker import worker_status

    try:
        problem = schema_problem(current_app)
    except SQLAlchemyError:
        db.session.rollback()
        return jsonify(
            ok=False, database="unreachable", message="the database cannot be reached"
        ), 503
    if problem:
        return jsonify(ok=False, database="schema", message=problem), 503
    worker = worker_status(
        db.session(), get_services().clock(), current_app.config["WORKER_POLL_SECONDS"]
    )
    return jsonify(ok=True, database="ok", worker=worker), 200


@bp.get("/")
def index() -> Any:
    """The service's root points at the subscribe page."""
    return redirect(url_for("web.subscribe_page"))


def _bad_link() -> tuple[str, int]:
    return render_template(
        "message.html",
        title="Oops! Something went wrong...",
        message="This link is not valid. It may have been cut short by your email program, or "
        "replaced by a newer one. Please use the link in the most recent email from us.",
    ), 400


def _error_page(err: HTTPException) -> Any:
    if isinstance(err, RequestEntityTooLarge):
        message = "That request was too large."
    else:
        message = err.description or OOPS
    if request.path.startswith("/subscribe") and _wants_json():
        return jsonify(ok=False, message=message), err.code
    return render_template(
        "message.html", title="Oops! Something went wrong...", message=message
    ), err.code


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self' "
        "{origins}; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Permissions-Policy": "interest-cohort=()",
}


def _security_headers(response: Response) -> Response:
    origins = " ".join(o for o in current_app.config["ALLOWED_ORIGINS"] if o != "null")
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value.format(origins=origins).replace("  ", " "))
    if request.path.startswith(("/confirm/", "/unsubscribe/")):
        response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Register the routes, error pages and security headers."""
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _error_page)
    app.after_request(_security_headers)

    @app.context_processor
    def _site() -> dict[str, Any]:
        return {
            "site_name": app.config["SITE_NAME"],
            "site_url": app.config["SITE_URL"],
            "privacy_policy_url": app.config["PRIVACY_POLICY_URL"],
            "consent_text": app.config["CONSENT_TEXT"],
            "consent_html": consent_html(
                app.config["CONSENT_TEXT"], app.config["PRIVACY_POLICY_URL"]
            ),
        }

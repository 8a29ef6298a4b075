"""HTTP routes: translate requests into calls of ``subscriptions`` and results into pages."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

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
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import subscriptions
from .addresses import InvalidAddress
from .db import db
from .embed import consent_html
from .services import get_services
from .subscriptions import RequestInfo
from .tokens import PROBE_SUBSCRIBER_ID, TokenExpired, TokenInvalid

bp = Blueprint("web", __name__)

THANKS = "Thank you! Please check your inbox to confirm your subscription."
OOPS = "Oops! Something went wrong while submitting the form."
RATE_LIMITED = "Too many sign-ups from your network just now. Please try again in a minute."
ONE_CLICK_BODY = "List-Unsubscribe=One-Click"


def _wants_json() -> bool:
    if request.is_json:
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes["application/json"] >= \
        request.accept_mimetypes["text/html"]


def _origin_of(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def _own_origins() -> set[str]:
    own = {_origin_of(current_app.config["PUBLIC_URL"]), _origin_of(request.host_url)}
    return {o for o in own if o}


def _origin_allowed(origin: str | None) -> bool:
    return origin in current_app.config["ALLOWED_ORIGINS"] or origin in _own_origins()


def _request_info(method: str, source: str | None = None) -> RequestInfo:
    return RequestInfo(
        method=method, ip=request.remote_addr, user_agent=request.user_agent.string or None,
        source_url=source,
    )


def _wake_outbox() -> None:
    sender = current_app.extensions.get("newsletter.outbox_sender")
    if sender is not None and current_app.config["OUTBOX_SEND_AFTER_REQUEST"]:
        sender.wake()


def _subscribe_fields() -> dict[str, Any]:
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, description="The request body must be a JSON object.")
        return body
    return request.form.to_dict()


def _answer(ok: bool, message: str, status: int, *, page: str = "subscribe.html",
            **context: Any) -> Response | tuple[str, int]:
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
    if origin and origin != "null" and not _origin_allowed(origin.lower()):
        return _answer(False, "This site may not sign readers up here: its origin is not in "
                       "NEWSLETTER_ALLOWED_ORIGINS.", 403, form={})
    fields = _subscribe_fields()
    form = {k: str(fields.get(k) or "") for k in ("email", "name")}
    next_url = str(fields.get("next") or "")
    method = "api" if request.is_json else "form"
    if str(fields.get("website") or "").strip():
        # A bot filled the hidden field: look successful, store nothing, send nothing.
        return _accepted(next_url)
    services = get_services()
    allowed = services.rate_limiter.hit(
        f"subscribe-ip:{request.remote_addr}",
        limit=current_app.config["SUBSCRIBE_RATE_LIMIT"], window_seconds=60, now=services.clock())
    if not allowed:
        db.session.commit()  # the database limiter counts in the request's transaction
        response = _answer(False, RATE_LIMITED, 429, form=form)
        return _with_retry_after(response)
    source = str(fields.get("source") or "") or request.referrer
    try:
        subscriptions.subscribe(
            db.session, services, str(fields.get("email") or ""),
            name=str(fields.get("name") or "") or None,
            info=_request_info(method, source[:2048] if source else None),
        )
    except InvalidAddress as err:
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


def _accepted(next_url: str) -> Any:
    if _wants_json():
        return jsonify(ok=True, message=THANKS), 202
    if next_url and _origin_allowed(_origin_of(next_url)):
        return redirect(next_url, code=303)
    return redirect(url_for("web.thanks"), code=303)


@bp.get("/subscribe/thanks")
def thanks() -> str:
    """Where a plain form post lands."""
    return render_template("message.html", title="Thank you!", message=THANKS)


@bp.route("/subscribe", methods=["OPTIONS"])
def subscribe_preflight() -> Response:
    """CORS preflight for script posts from the blog."""
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
        get_services().tokens.read_confirm_token(token)
    except TokenExpired:
        return render_template("expired.html", token=token), 410
    except TokenInvalid:
        return _bad_link()
    return render_template("confirm.html", token=token)


@bp.post("/confirm/<token>")
def confirm(token: str) -> Any:
    """Confirm the subscription."""
    try:
        subscriptions.confirm(db.session, get_services(), token, _request_info("form"))
    except TokenExpired:
        db.session.rollback()
        return render_template("expired.html", token=token), 410
    except TokenInvalid:
        db.session.rollback()
        return _bad_link()
    _wake_outbox()
    return render_template("message.html", title="You're subscribed!",
                           message="Thank you for confirming. New posts will come to your inbox.")


@bp.post("/confirm/<token>/resend")
def resend(token: str) -> Any:
    """Send a fresh link in place of an expired one."""
    services = get_services()
    try:
        services.tokens.read_confirm_token(token)
    except TokenExpired as expired:
        subscriptions.resend_confirmation(db.session, services, expired, _request_info("form"))
        _wake_outbox()
        # The same answer whatever happened, like the subscribe form.
        return render_template("message.html", title="Check your inbox",
                               message="If your subscription is still waiting for confirmation, "
                                       "a new link is on its way.")
    except TokenInvalid:
        return _bad_link()
    return redirect(url_for("web.confirm_page", token=token), code=303)


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> Any:
    """One button; a GET never unsubscribes (link scanners follow links)."""
    try:
        get_services().tokens.read_unsubscribe_token(token)
    except TokenInvalid:
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
            return Response("Unsubscribe works (a test link: nothing changed).\n", status=200,
                            mimetype="text/plain")
        subscriptions.unsubscribe(db.session, services, subscriber_id,
                                  _request_info("one-click" if one_click else "form"))
    except (TokenInvalid, subscriptions.NotFound):
        db.session.rollback()
        if one_click:
            return Response("This unsubscribe link is not valid.\n", status=400,
                            mimetype="text/plain")
        return _bad_link()
    if one_click:
        return Response("You have been unsubscribed.\n", status=200, mimetype="text/plain")
    return render_template("message.html", title="You're unsubscribed",
                           message="You will get no more emails from us. "
                                   "Changed your mind? You can subscribe again any time.",
                           show_subscribe=True)


@bp.get("/healthz")
def healthz() -> Any:
    """200 when the database answers, 503 when it does not; ``worker`` says what the worker
    last reported (its status does not change the code: a site may run without one)."""
    from .worker import worker_status

    try:
        db.session.execute(text("SELECT 1"))
        worker = worker_status(db.session, get_services().clock(),
                               current_app.config["WORKER_POLL_SECONDS"])
    except SQLAlchemyError:
        db.session.rollback()
        return jsonify(ok=False, database="unreachable"), 503
    return jsonify(ok=True, database="ok", worker=worker), 200


@bp.get("/")
def index() -> Any:
    """The service's root points at the subscribe page."""
    return redirect(url_for("web.subscribe_page"))


def _bad_link() -> tuple[str, int]:
    return render_template(
        "message.html", title="Oops! Something went wrong...",
        message="This link is not valid. It may have been cut short by your email program, or "
                "replaced by a newer one. Please use the link in the most recent email from us."
    ), 400


def _error_page(err: HTTPException) -> Any:
    if isinstance(err, RequestEntityTooLarge):
        message = "That request was too large."
    else:
        message = err.description or OOPS
    if request.path.startswith("/subscribe") and _wants_json():
        return jsonify(ok=False, message=message), err.code
    return render_template("message.html", title="Oops! Something went wrong...",
                           message=message), err.code


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
    origins = " ".join(current_app.config["ALLOWED_ORIGINS"])
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
        return {"site_name": app.config["SITE_NAME"], "site_url": app.config["SITE_URL"],
                "privacy_policy_url": app.config["PRIVACY_POLICY_URL"],
                "consent_text": app.config["CONSENT_TEXT"],
                "consent_html": consent_html(app.config["CONSENT_TEXT"],
                                             app.config["PRIVACY_POLICY_URL"])}

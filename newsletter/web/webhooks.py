"""``/webhooks/ses``, ``/webhooks/mailgun``, ``/webhooks/postmark``: provider bounce and
complaint events. Each is 404 until its secret is set, answers 403 or 400 with a short reason
when a request is not authentic, fresh and new, and 200 when it was applied. Translation only:
the checks and rules are in :mod:`newsletter.bounces.webhooks`."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, request

from ..appctx import get_services
from ..bounces import webhooks as hooks
from ..db import db

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
FETCHER_KEY = "newsletter.sns_fetch"
CERT_CACHE_KEY = "newsletter.sns_certificates"


def _answer(message: str, status: int = 200) -> Response:
    return Response(message + "\n", status=status, mimetype="text/plain")


def _refused(err: hooks.WebhookRefusedError) -> Response:
    return _answer(str(err), err.status)


@bp.post("/ses")
def ses() -> Response:
    """Amazon SES bounce and complaint notifications through an SNS topic."""
    config = current_app.config
    if not config["SES_TOPIC_ARNS"]:
        abort(404)
    services = get_services()
    fetch = current_app.extensions[FETCHER_KEY]
    session = db.session()
    try:
        message = hooks.parse_json(request.get_data())
        if not isinstance(message, dict):
            raise hooks.WebhookRefusedError(400, "expected an SNS message")
        now = services.clock()
        hooks.verify_sns(message, config, now, fetch, current_app.extensions[CERT_CACHE_KEY])
        if message["Type"] == "SubscriptionConfirmation":
            # Confirming twice is harmless, and a retry after a failed fetch must not count as
            # a replay: no replay record for these.
            hooks.check_sns_url(str(message.get("SubscribeURL", "")))
            fetch(message["SubscribeURL"])
            return _answer("subscription confirmed")
        hooks.remember_once(
            session, f"sns:{message.get('MessageId')}", now, config["WEBHOOK_MAX_AGE"]
        )
        if message["Type"] != "Notification":
            return _answer("ok")
        try:
            notification = json.loads(message["Message"])
        except ValueError:
            return _answer("not an SES notification: ignored")
        events = hooks.ses_events(notification if isinstance(notification, dict) else {})
        hooks.apply_events(session, config, services.clock, events, "ses")
    except hooks.WebhookRefusedError as err:
        return _refused(err)
    except OSError as err:
        return _answer(f"cannot reach SNS: {err}", 502)
    return _answer("ok")


@bp.post("/mailgun")
def mailgun() -> Response:
    """Mailgun ``failed`` and ``complained`` events."""
    config = current_app.config
    if not config["MAILGUN_SIGNING_KEY"]:
        abort(404)
    services = get_services()
    session = db.session()
    try:
        body = hooks.parse_json(request.get_data())
        if not isinstance(body, dict):
            raise hooks.WebhookRefusedError(400, "expected a Mailgun webhook")
        now = services.clock()
        token = hooks.verify_mailgun(body.get("signature") or {}, config, now)
        hooks.remember_once(session, f"mailgun:{token}", now, config["WEBHOOK_MAX_AGE"])
        events = hooks.mailgun_events(body.get("event-data") or {})
        hooks.apply_events(session, config, services.clock, events, "mailgun")
    except hooks.WebhookRefusedError as err:
        return _refused(err)
    return _answer("ok")


@bp.post("/postmark")
def postmark() -> Response:
    """Postmark bounce and spam-complaint webhooks, with HTTP basic auth."""
    config = current_app.config
    if not (config["POSTMARK_WEBHOOK_USER"] and config["POSTMARK_WEBHOOK_PASSWORD"]):
        abort(404)
    services = get_services()
    session = db.session()
    auth = request.authorization
    credentials = (
        (auth.username or "", auth.password or "")
        if auth is not None and auth.type == "basic"
        else None
    )
    try:
        hooks.verify_postmark(credentials, config)
        body = hooks.parse_json(request.get_data())
        if not isinstance(body, dict):
            raise hooks.WebhookRefusedError(400, "expected a Postmark webhook")
        now = services.clock()
        events, event_id, when = hooks.postmark_event(body)
        hooks.check_fresh(when, now, config["WEBHOOK_MAX_AGE"])
        hooks.remember_once(
            session, f"postmark:{body.get('RecordType')}:{event_id}", now, config["WEBHOOK_MAX_AGE"]
        )
        hooks.apply_events(session, config, services.clock, events, "postmark")
    except hooks.WebhookRefusedError as err:
        return _refused(err)
    return _answer("ok")


def init_app(app: Flask, fetch: Any = None) -> None:
    """Register the webhooks; ``fetch`` (url -> bytes) replaces the HTTPS fetcher in tests."""
    app.extensions.setdefault(FETCHER_KEY, fetch or hooks.fetch_https)
    app.extensions.setdefault(CERT_CACHE_KEY, {})
    app.register_blueprint(bp)

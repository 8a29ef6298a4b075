"""The author's "Approve and send" page for a scheduled digest: GET shows the preview and a
button (link scanners change nothing), POST approves. Translation only; see :mod:`approval`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, render_template

from ..appctx import get_services
from ..approval import APPROVE_PATH, ApprovalError, approve, view_approval
from ..db import db

bp = Blueprint("approval", __name__)

# The preview is the digest's own HTML (inline styles, remote images) in a sandboxed frame.
PAGE_CSP = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src https: http: data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _page(template: str, status: int = 200, **values: Any) -> Any:
    headers = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"}
    return render_template(template, **values), status, headers


@bp.get(f"/{APPROVE_PATH}/<token>")
def approve_page(token: str) -> Any:
    """The preview and one button."""
    try:
        view = view_approval(db.session(), get_services(), token)
    except ApprovalError as err:
        return _page("message.html", 400, title="Digest approval", message=str(err))
    return _page("approve_digest.html", view=view, token=token)


@bp.post(f"/{APPROVE_PATH}/<token>")
def approve_digest(token: str) -> Any:
    """Approve: the worker sends the digest within moments."""
    try:
        approve(db.session(), get_services(), token)
    except ApprovalError as err:
        return _page("message.html", 400, title="Digest approval", message=str(err))
    return _page(
        "message.html",
        title="Approved",
        message="Thank you: the digest is approved, and the worker is sending it now.",
    )


def init_app(app: Flask) -> None:
    """Register the approval page."""
    app.register_blueprint(bp)

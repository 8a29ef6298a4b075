"""The web view of past issues: ``/archive/KEY`` for one issue as sent (every email links to
it), and with ``NEWSLETTER_PUBLIC_ARCHIVE`` the list at ``/archive`` and its RSS feed at
``/archive/feed.xml``. Translation only; see :mod:`newsletter.archive`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, abort, current_app, render_template

from ..appctx import get_services
from ..archive import find_issue, issues_feed, list_issues
from ..db import db

bp = Blueprint("archive", __name__)

# An issue is the email's own HTML: inline styles and remote images, nothing else.
ISSUE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def _public() -> None:
    """The list and the feed exist only when the author made the archive public."""
    if not current_app.config["PUBLIC_ARCHIVE"]:
        abort(404)


@bp.get("/archive")
def index() -> Any:
    """Past issues, newest first."""
    _public()
    issues = list_issues(db.session())
    return render_template("archive.html", title="Past issues", issues=issues)


@bp.get("/archive/feed.xml")
def feed() -> Any:
    """The newsletter as an RSS feed, for readers who prefer a feed reader."""
    _public()
    body = issues_feed(
        list_issues(db.session()), current_app.config, current_app.config["PUBLIC_URL"]
    )
    return body, 200, {"Content-Type": "application/rss+xml; charset=utf-8"}


@bp.get("/archive/<key>")
def issue(key: str) -> Any:
    """One issue as it was sent, with no reader's greeting or unsubscribe link in it."""
    found = find_issue(
        db.session(), key, get_services().public_url("subscribe"), current_app.config["SITE_NAME"]
    )
    if found is None:
        abort(404)
    headers = {"Content-Security-Policy": ISSUE_CSP, "Content-Type": "text/html; charset=utf-8"}
    return found.html, 200, headers


def init_app(app: Flask) -> None:
    """Register the archive routes."""
    app.register_blueprint(bp)

"""The web view of past issues: each campaign as sent, without any reader's personal parts.

Every digest and announcement links to ``/archive/KEY`` ("View in your browser"). KEY is the
start of the campaign's content hash, which is known before the campaign is rendered (so the
link is in the email rendered once for everyone) and cannot be guessed, so issues stay
unlisted unless ``NEWSLETTER_PUBLIC_ARCHIVE`` lists them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from html import escape
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import placeholders
from .content.voice import AUTHOR_GREETING
from .models import SENT, Campaign

KEY_CHARS = 20  # 80 bits of the sha256: unguessable, and a short enough link
_KEY = re.compile(rf"[0-9a-f]{{{KEY_CHARS}}}")
# The footer's personal unsubscribe link, whole, so it can become a subscribe link.
_UNSUBSCRIBE_LINK = re.compile(
    rf'<a\b[^>]*href="{re.escape(placeholders.UNSUBSCRIBE_URL)}"[^>]*>.*?</a>', re.DOTALL
)
_ANY_PLACEHOLDER = re.compile(r"__NEWSLETTER_[A-Z_]+__")


def archive_key(content_hash: str) -> str:
    """The part of a campaign's content hash that names it in ``/archive/KEY``."""
    return content_hash[:KEY_CHARS]


def archive_path(content_hash: str) -> str:
    """The path of a campaign's web view, relative to the service's public URL."""
    return f"archive/{archive_key(content_hash)}"


@dataclass(frozen=True)
class ArchivedIssue:
    """One past issue as the web view shows it."""

    key: str
    subject: str
    preheader: str | None
    sent_at: datetime
    html: str


def find_issue(
    session: Session, key: str, subscribe_url: str, site_name: str
) -> ArchivedIssue | None:
    """The newest campaign named by ``key``, with its personal parts made neutral; None if
    no campaign has that key."""
    if not _KEY.fullmatch(key):
        return None
    campaign = session.scalars(
        select(Campaign)
        .where(func.substr(Campaign.content_hash, 1, KEY_CHARS) == key)
        .order_by(Campaign.id.desc())
        .limit(1)
    ).first()
    if campaign is None:
        return None
    return ArchivedIssue(
        key=key,
        subject=campaign.subject,
        preheader=campaign.preheader,
        sent_at=campaign.finished_at or campaign.created_at,
        html=neutral_html(campaign.html, subscribe_url, site_name),
    )


def neutral_html(html: str, subscribe_url: str, site_name: str) -> str:
    """A campaign's stored HTML with each reader's parts filled by values for anyone:
    "Hi there," for the greeting, and a subscribe link where the unsubscribe link was."""
    subscribe = escape(subscribe_url)
    html = _UNSUBSCRIBE_LINK.sub(
        f'<a href="{subscribe}">Subscribe to {escape(site_name)}</a>', html
    )
    html = html.replace(placeholders.GREETING, escape(AUTHOR_GREETING))
    # Anything else personal (none today) must not show as a stand-in either.
    return _ANY_PLACEHOLDER.sub(subscribe, html)


def list_issues(session: Session, limit: int = 100) -> list[ArchivedIssue]:
    """Past issues that went out, newest first (the HTML left empty: a list needs none)."""
    rows = session.execute(
        select(
            Campaign.content_hash,
            Campaign.subject,
            Campaign.preheader,
            Campaign.created_at,
            Campaign.finished_at,
        )
        .where(Campaign.status == SENT)
        .order_by(Campaign.created_at.desc(), Campaign.id.desc())
        .limit(limit)
    ).all()
    seen: set[str] = set()
    issues = []
    for content_hash, subject, preheader, created_at, finished_at in rows:
        key = archive_key(content_hash)
        if key in seen:  # an announcement sent twice is one issue
            continue
        seen.add(key)
        issues.append(ArchivedIssue(key, subject, preheader, finished_at or created_at, ""))
    return issues


def issues_feed(issues: list[ArchivedIssue], config: Mapping[str, Any], public_url: str) -> str:
    """The newsletter's own RSS 2.0 feed: one item per past issue, linking to its web view."""
    site = xml_escape(str(config["SITE_NAME"]))
    items = []
    for issue in issues:
        link = xml_escape(f"{public_url}/archive/{issue.key}")
        description = (
            f"<description>{xml_escape(issue.preheader)}</description>" if issue.preheader else ""
        )
        items.append(
            f"<item><title>{xml_escape(issue.subject)}</title><link>{link}</link>"
            f'<guid isPermaLink="true">{link}</guid>'
            f"<pubDate>{format_datetime(issue.sent_at, usegmt=True)}</pubDate>{description}</item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
        f"<title>{site} newsletter</title><link>{xml_escape(public_url)}/archive</link>"
        f"<description>Past issues of the {site} newsletter</description>"
        + "".join(items)
        + "</channel></rss>\n"
    )

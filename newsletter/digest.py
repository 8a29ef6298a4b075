"""The digest: choosing the posts not mailed yet and rendering them into one campaign, once.

Rendering (Jinja2 over ``emails/digest.html`` + ``digest.txt``, then premailer) happens once per
digest; every reader-specific part is a stand-in from :mod:`placeholders` that the sender swaps
for each reader's value in the serialised message. Nothing here knows about readers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urljoin, urlsplit

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import placeholders
from .addresses import normalise_address
from .content.text import html_to_text
from .models import Campaign, Post
from .posts import SUMMARY_WORDS, PostSourceError, sanitise_html, summarise, sync_posts
from .rendering import RenderedEmail, TemplateError
from .sending.ledger import confirmed_readers
from .sending.options import DIGEST  # the campaign kind
from .sending.orchestrate import (
    Backlog,
    Draft,
    NotComposed,
    SendOutcome,
    add_campaign,
    send_test_copy,
    unfinished_summary,
)
from .sending.preview import EmailPreview, preview_campaign_email
from .services import Services
from .transactional import email_context

TEMPLATE = "digest"  # emails/digest.html + emails/digest.txt
PREHEADER_CHARS = 120


@dataclass(frozen=True)
class DigestPost:
    """One post as the digest templates see it: plain values, URLs already absolute.

    ``content`` is the sanitised post HTML (used with ``NEWSLETTER_DIGEST_STYLE=full``) and
    ``content_text`` its plain-text reading for the text part; ``image_in_content`` says the
    post's image is already in ``content`` (so a full digest does not show it twice).
    """

    title: str
    subtitle: str | None
    url: str
    image_url: str | None
    summary: str
    content: Markup
    content_text: str
    author: str | None
    published_at: datetime | None
    image_in_content: bool = False

    @property
    def date(self) -> str:
        """The publication date as "2 November 2026", or an empty string."""
        when = self.published_at
        return f"{when.day} {when:%B %Y}" if when else ""


def select_digest_posts(session: Session, services: Services) -> list[Post]:
    """The posts the next digest carries: synced, never in a digest, not archived, not a draft,
    published by now (or undated), newest first, at most ``NEWSLETTER_DIGEST_MAX_POSTS``."""
    now = services.clock()
    newest = func.coalesce(Post.published_at, Post.first_seen_at)
    query = (
        select(Post)
        .where(Post.campaign_id.is_(None), Post.archived.is_(False), Post.draft.is_(False))
        .where((Post.published_at.is_(None)) | (Post.published_at <= now))
        .order_by(newest.desc(), Post.id.desc())
        .limit(int(services.config["DIGEST_MAX_POSTS"]))
    )
    return list(session.scalars(query))


def digest_posts(posts: Sequence[Post], config: Mapping[str, Any]) -> list[DigestPost]:
    """The template view of ``posts``: absolute links, a summary of about 60 words, safe HTML."""
    return [_digest_post(post, config) for post in posts]


def _digest_post(post: Post, config: Mapping[str, Any]) -> DigestPost:
    site_url = str(config["SITE_URL"])
    url = _absolute(post.url, site_url) or site_url
    # Bodies are sanitised when synced; sanitising again (same rules, idempotent) means a row
    # written by any other route still cannot put a script or an event handler into an email.
    content = sanitise_html(post.content_html or "", url)
    content_text = html_to_text(content)
    # The stored summary is plain text ("<" is a character there); the body is HTML.
    summary = _words(_squash(post.summary or ""), SUMMARY_WORDS) or summarise(content)
    image_url = _absolute(post.image_url, url)
    return DigestPost(
        title=_squash(post.title) or "Untitled",
        subtitle=_squash(post.subtitle or "") or None,
        url=url,
        image_url=image_url,
        summary=summary,
        content=Markup(content),  # sanitised just above
        content_text=content_text,
        author=_squash(post.author or "") or None,
        published_at=post.published_at,
        image_in_content=image_url is not None and f'src="{escape(image_url)}"' in content,
    )


def _absolute(url: str | None, base: str) -> str | None:
    """``url`` made absolute against ``base``; None unless it ends up http(s)."""
    if not url or not url.strip():
        return None
    absolute = urljoin(base, url.strip())
    parts = urlsplit(absolute)
    return absolute if parts.scheme in ("http", "https") and parts.netloc else None


def _squash(text: str) -> str:
    return " ".join(text.split())


def _words(text: str, limit: int) -> str:
    words = text.split()
    if len(words) <= limit:
        return text
    return " ".join(words[:limit]).rstrip(".,;:!?-–—") + "…"


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(".,;:!?-–—") + "…"


def _template_values(posts: Sequence[DigestPost], config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "posts": list(posts),
        "first": posts[0],
        "count": len(posts),
        "more": len(posts) - 1,
        "site_name": config["SITE_NAME"],
    }


def _render_setting(key: str, posts: Sequence[DigestPost], config: Mapping[str, Any]) -> str:
    """Render the Jinja template in setting ``key`` to one line of plain text."""
    env = SandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined)
    name = f"NEWSLETTER_{key}"
    try:
        text = env.from_string(str(config[key])).render(_template_values(posts, config))
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(err.message or str(err), name, err.lineno) from err
    except jinja2.TemplateError as err:
        raise TemplateError(str(err), name, 1) from err
    return _squash(text)


def digest_subject(posts: Sequence[DigestPost], config: Mapping[str, Any]) -> str:
    """The subject from ``NEWSLETTER_DIGEST_SUBJECT``; by default the post's title, or
    "<first title> + N more from <site name>"."""
    if not posts:
        raise ValueError("a digest needs at least one post")
    subject = _render_setting("DIGEST_SUBJECT", posts, config)
    if not subject:
        raise TemplateError(
            "the subject template renders an empty subject", "NEWSLETTER_DIGEST_SUBJECT", 1
        )
    return subject


def digest_preheader(posts: Sequence[DigestPost], config: Mapping[str, Any]) -> str:
    """The line mail clients show after the subject: ``NEWSLETTER_DIGEST_PREHEADER`` when set,
    else the first post's subtitle, else the start of its summary."""
    if not posts:
        raise ValueError("a digest needs at least one post")
    if config.get("DIGEST_PREHEADER"):
        text = _render_setting("DIGEST_PREHEADER", posts, config)
    else:
        text = posts[0].subtitle or posts[0].summary
    return _shorten(text, PREHEADER_CHARS)


@dataclass(frozen=True)
class RenderedDigest:
    """A digest rendered once for everyone, with its preheader and the posts it shows."""

    email: RenderedEmail
    preheader: str
    posts: tuple[DigestPost, ...]


def render(posts: Sequence[Post], services: Services) -> RenderedDigest:
    """Render the digest of ``posts`` once: Jinja2 and premailer run here and nowhere else.

    Raises TemplateError (with file and line) for a broken template.
    """
    config = services.config
    views = digest_posts(posts, config)
    subject = digest_subject(views, config)
    preheader = digest_preheader(views, config)
    context = {
        **email_context(config),
        "posts": views,
        "style": config["DIGEST_STYLE"],
        "preheader": preheader,
        # Stand-ins for each reader's own parts, filled in per reader after rendering.
        "greeting": placeholders.GREETING,
        "unsubscribe_url": placeholders.UNSUBSCRIBE_URL,
    }
    email = services.renderer.render(TEMPLATE, subject, context)
    return RenderedDigest(email=email, preheader=preheader, posts=tuple(views))


def subject_of(posts: Sequence[Post], config: Mapping[str, Any]) -> str:
    """The subject a digest of ``posts`` would have, without rendering the email."""
    return digest_subject(digest_posts(posts, config), config)


def render_digest(posts: Sequence[Post], services: Services) -> RenderedEmail:
    """The digest of ``posts`` as subject, inlined HTML and text, with reader placeholders."""
    return render(posts, services).email


def posts_key(posts: Sequence[Post]) -> str:
    """A sha256 naming this set of posts, so the same digest is recognised when seen again."""
    digest = hashlib.sha256(DIGEST.encode())
    for post in posts:
        digest.update(b"\0" + post.source_key.encode())
    return digest.hexdigest()


def create_digest_campaign(session: Session, services: Services, posts: Sequence[Post]) -> Campaign:
    """Add a ``sending`` digest campaign for ``posts`` and mark them as in it; flushes, does
    not commit, so the caller can plan deliveries in the same transaction."""
    if not posts:
        raise ValueError("a digest needs at least one post")
    taken = [post.title for post in posts if post.campaign_id is not None]
    if taken:
        raise ValueError(f"already in a digest: {', '.join(taken)}")
    rendered = render(posts, services)
    campaign = add_campaign(session, services, DIGEST, rendered, posts_key(posts))
    for post in posts:
        post.campaign_id = campaign.id
    session.flush()
    return campaign


def compose_next_digest(session: Session, services: Services) -> Campaign | None:
    """The next digest's campaign, added and flushed (not committed); None with no new posts."""
    posts = select_digest_posts(session, services)
    return create_digest_campaign(session, services, posts) if posts else None


@dataclass
class DigestComposer:
    """How a digest is composed, for :func:`~newsletter.sending.send_new_campaign`: sync the
    posts, take the ones not mailed yet, render them once. Every unfinished digest is sent
    after composing, oldest first (the resume of an interrupted one)."""

    kind: str = DIGEST
    sends_unfinished: bool = True
    posts: list[Post] = field(default_factory=list)

    def prepare(self, services: Services) -> None:
        """Nothing to check before SMTP: the posts are read under the composing lock."""

    def backlog(self, session: Session) -> Backlog:
        """None: unfinished digests are sent after composing, with the new one."""
        return Backlog()

    def draft(self, session: Session, services: Services, outcome: SendOutcome) -> Draft | None:
        """Sync the posts and choose the new ones; None when the source fails or none is new."""
        try:
            synced = sync_posts(session, services)
        except PostSourceError as err:
            outcome.not_composed, outcome.problem = NotComposed.SOURCE_ERROR, str(err)
            return None
        outcome.notes = [getattr(p, "title", str(p)) for p in synced.new]
        self.posts = select_digest_posts(session, services)
        if not self.posts:
            outcome.not_composed = NotComposed.NOTHING_NEW
            return None
        return Draft(subject_of(self.posts, services.config), [p.title for p in self.posts])

    def compose(self, session: Session, services: Services, draft: Draft) -> int:
        """Create the digest campaign of the drafted posts."""
        return create_digest_campaign(session, services, self.posts).id


@dataclass(frozen=True)
class DigestPlan:
    """What ``send-digest --dry-run`` shows: unfinished campaigns and the next digest."""

    unfinished: list[tuple[int, str, int]]  # (id, subject, deliveries left)
    subject: str | None
    titles: list[str]
    readers: int


def plan_digest(session: Session, services: Services) -> DigestPlan:
    """What a run would send now, from the posts already synced; changes nothing."""
    unfinished = unfinished_summary(session, DIGEST)
    chosen = select_digest_posts(session, services)
    subject = subject_of(chosen, services.config) if chosen else None
    plan = DigestPlan(unfinished, subject, [p.title for p in chosen], confirmed_readers(session))
    session.rollback()
    return plan


def send_test_digest(session: Session, services: Services, address: str) -> str | None:
    """Sync posts and send the next digest to ``address`` only; returns its subject, or None
    when nothing is new. Creates no campaign and marks nothing.

    Raises InvalidAddressError, PostSourceError, TemplateError or an SmtpError.
    """
    address = normalise_address(address)
    sync_posts(session, services)
    chosen = select_digest_posts(session, services)
    if not chosen:
        return None
    rendered = render_digest(chosen, services)
    send_test_copy(session, services, rendered, address)
    return rendered.subject


def preview_digest(session: Session, services: Services) -> EmailPreview | None:
    """Render the next digest and fill in a sample reader's parts; None when nothing is new.

    Changes nothing in the database. Raises TemplateError for a broken template. The
    message is built exactly as the sender builds each reader's copy.
    """
    posts = select_digest_posts(session, services)
    if not posts:
        return None
    rendered = render_digest(posts, services)
    return preview_campaign_email(
        services, rendered, name="digest", titles=tuple(p.title for p in posts)
    )

"""The digest: choosing the posts not mailed yet and rendering them into one campaign, once.

Rendering (Jinja2 over ``emails/digest.html`` + ``digest.txt``, then premailer) happens once per
digest; every reader-specific part is a stand-in from :mod:`placeholders` that the sender swaps
for each reader's value in the serialised message. Nothing here knows about readers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import make_msgid
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast
from urllib.parse import urljoin, urlsplit

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from . import placeholders
from .mail import ReaderParts, reader_greeting
from .models import SENDING, Campaign, Post
from .posts import SUMMARY_WORDS, sanitise_html, summarise
from .rendering import RenderedEmail, TemplateError, write_preview
from .services import Services
from .subscriptions import email_context

DIGEST = "digest"  # the campaign kind
TEMPLATE = "digest"  # emails/digest.html + emails/digest.txt
PREHEADER_CHARS = 120

# What the preview fills in where each reader's own parts go.
SAMPLE_RECIPIENT = "ada@example.com"
SAMPLE_NAME = "Ada"
SAMPLE_UNSUBSCRIBE_PATH = "unsubscribe/sample-reader-preview"


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
    published by now (or undated), newest first, at most ``NEWSLETTER_DIGEST_MAX_POSTS``.
    Posts the author left out of this digest (``held_until_next``) wait for the next one."""
    now = services.clock()
    newest = func.coalesce(Post.published_at, Post.first_seen_at)
    query = (
        select(Post)
        .where(Post.campaign_id.is_(None), Post.archived.is_(False), Post.draft.is_(False))
        .where(Post.held_until_next.is_(False))
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
    campaign = Campaign(
        kind=DIGEST,
        subject=rendered.email.subject,
        preheader=rendered.preheader,
        html=rendered.email.html,
        text=rendered.email.text,
        content_hash=posts_key(posts),
        status=SENDING,
        created_at=services.clock(),
    )
    session.add(campaign)
    session.flush()
    for post in posts:
        post.campaign_id = campaign.id
    # The posts left out of this digest have waited their turn: the next digest carries them.
    session.execute(
        update(Post).where(Post.held_until_next.is_(True)).values(held_until_next=False)
    )
    session.flush()
    return campaign


def compose_next_digest(session: Session, services: Services) -> Campaign | None:
    """The next digest's campaign, added and flushed (not committed); None with no new posts."""
    posts = select_digest_posts(session, services)
    return create_digest_campaign(session, services, posts) if posts else None


@dataclass(frozen=True)
class DigestPreview:
    """The next digest as a sample reader would get it."""

    subject: str
    titles: tuple[str, ...]
    html: str
    text: str
    message: bytes  # the whole .eml, headers and both parts

    def write(self, folder: str | Path) -> list[Path]:
        """Write ``digest.html``, ``digest.txt`` and ``digest.eml`` into ``folder``."""
        return write_preview(folder, "digest", self.html, self.text, self.message)


def preview_digest(session: Session, services: Services) -> DigestPreview | None:
    """Render the next digest and fill in a sample reader's parts; None when nothing is new.

    Changes nothing in the database. Raises TemplateError for a broken template. The
    message is built exactly as the sender builds each reader's copy.
    """
    from .sending import campaign_template

    posts = select_digest_posts(session, services)
    if not posts:
        return None
    rendered = render_digest(posts, services)
    now = services.clock()
    config = services.config
    reader = ReaderParts(
        recipient=SAMPLE_RECIPIENT,
        unsubscribe_url=services.public_url(SAMPLE_UNSUBSCRIBE_PATH),
        message_id=make_msgid(domain=str(config["MAIL_FROM"]).rpartition("@")[2]),
        greeting=reader_greeting(SAMPLE_NAME),
        name=SAMPLE_NAME,
    )
    data = campaign_template(services, rendered, now).personalise(reader)
    # The .html and .txt files are the reader's parts read back out of that very message.
    # With the default policy the parser makes EmailMessage objects.
    message = cast(EmailMessage, BytesParser(policy=email_policy.default).parsebytes(data))
    return DigestPreview(
        subject=rendered.subject,
        titles=tuple(p.title for p in posts),
        html=_part(message, "html"),
        text=_part(message, "plain"),
        message=data,
    )


def _part(message: EmailMessage, subtype: str) -> str:
    """One body part's text, with the platform's newlines rather than the wire's CRLF."""
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        raise TemplateError(f"the rendered digest has no text/{subtype} part")
    return str(part.get_content()).replace("\r\n", "\n")


# --- a plain-text reading of sanitised post HTML, for the text part of a full digest -------

_BLOCKS = {
    "p",
    "div",
    "section",
    "article",
    "blockquote",
    "figure",
    "figcaption",
    "pre",
    "table",
    "tr",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "dl",
    "dt",
    "dd",
}


class _TextReader(HTMLParser):
    """Collects text with paragraphs, list items, headings and link targets kept readable."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.links: list[tuple[str | None, int]] = []  # open links: target, first chunk
        self.lists: list[list[int]] = []  # per open list: [is_ordered, next number]
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("script", "style", "head", "title"):
            self.skip += 1
        elif tag in _BLOCKS:
            self.chunks.append("\n\n")
            if tag in ("ul", "ol"):
                self.lists.append([tag == "ol", 1])
            elif tag == "blockquote":
                self.chunks.append("> ")
        elif tag == "li":
            marker = "- "
            if self.lists and self.lists[-1][0]:
                marker = f"{self.lists[-1][1]}. "
                self.lists[-1][1] += 1
            self.chunks.append("\n" + "  " * max(0, len(self.lists) - 1) + marker)
        elif tag == "br":
            self.chunks.append("\n")
        elif tag == "a":
            self.links.append((values.get("href"), len(self.chunks)))
        elif tag == "img" and values.get("alt"):
            self.chunks.append(f"[{values['alt']}]")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in ("ul", "ol") and self.lists:
            self.lists.pop()
            self.chunks.append("\n\n")
        elif tag in _BLOCKS:
            self.chunks.append("\n\n")
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.chunks[start:]).strip()
            target = (href or "").removeprefix("mailto:")
            # A link whose words are its address already shows where it goes.
            if href and href.startswith(("http://", "https://", "mailto:")) and label != target:
                self.chunks.append(f" ({target})")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.chunks.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self.chunks).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> str:
    """Readable plain text of a (sanitised) post body: paragraphs, lists, "text (link)"."""
    reader = _TextReader()
    reader.feed(html)
    reader.close()
    return reader.text()

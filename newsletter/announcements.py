"""Announcements: a one-off campaign written in Markdown, rendered once and sent to every
confirmed reader through the same delivery ledger as a digest.

The file is YAML front matter (``subject``, optional ``preheader``) and a Markdown body. The
body becomes the HTML part (sanitised like feed content, relative URLs made absolute against
``NEWSLETTER_SITE_URL``, in ``emails/campaign.html``) and, separately, the plain-text part:
a walk over the parsed Markdown, not a stripping of the HTML.

A call-to-action button is a link whose text is in double brackets, alone in its paragraph::

    [[Get the book]](https://shop.example.com/book)

It becomes a bulletproof table button in HTML and ``Get the book: https://...`` in text;
elsewhere Markdown shows it as a link reading "[Get the book]".

Sending the same subject and body twice is refused unless asked for (``again``); running the
command on an announcement that was interrupted resumes it instead of starting a second copy.
"""

from __future__ import annotations

import hashlib
import re
import textwrap
import uuid
import xml.etree.ElementTree as etree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import markdown
from markdown.treeprocessors import Treeprocessor
from markdown.util import AMP_SUBSTITUTE, HTML_PLACEHOLDER_RE
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import placeholders
from .addresses import normalise_address
from .content.frontmatter import FrontMatterError, split_front_matter
from .content.sanitise import REMOVED_WITH_CONTENT
from .content.text import html_to_text
from .errors import NewsletterError
from .models import DEFERRED, QUEUED, SENDING, Campaign, Delivery, Subscriber
from .posts import sanitise_html
from .rendering import RenderedEmail
from .sending import (
    Backlog,
    Draft,
    SendOutcome,
    confirmed_readers,
    send_test_copy,
    unfinished_campaigns,
)
from .sending.orchestrate import add_campaign, unfinished_summary
from .sending.preview import EmailPreview, preview_campaign_email
from .services import Services
from .transactional import email_context

ANNOUNCEMENT = "announcement"  # the campaign kind
TEMPLATE = "campaign"  # emails/campaign.html + emails/campaign.txt
FRONT_MATTER_KEYS = ("subject", "preheader")
SUBJECT_LIMIT = 998  # characters: the campaigns.subject column (and RFC 5322's line limit)
PREHEADER_CHARS = 120
TEXT_WIDTH = 72
# Markdown beyond the basics: ``` code blocks, tables, and attribute lists, so that an image
# can carry the width Outlook on Windows sizes it by: ![Cover](cover.jpg){: width="536" }.
# (The sanitiser keeps only such safe attributes. No footnotes: their #links fail in mail.)
MARKDOWN_EXTENSIONS = ("fenced_code", "tables", "sane_lists", "attr_list")

_campaigns = Campaign.__table__
_deliveries = Delivery.__table__
_subscribers = Subscriber.__table__


class CampaignError(NewsletterError):
    """An announcement cannot be sent as asked; the message says what to do next."""


class CampaignFileError(CampaignError):
    """The Markdown file is missing or unusable: front matter, subject, body or a button."""


class AlreadySentError(CampaignError):
    """The same subject and body went out before; ``--again`` sends them anyway."""

    def __init__(self, campaign_id: int, created_at: datetime) -> None:
        super().__init__(
            f"this announcement (the same subject and body) was already sent as campaign "
            f"{campaign_id} on {created_at:%Y-%m-%d %H:%M} UTC; to send it to everyone once "
            "more, add --again"
        )
        self.campaign_id = campaign_id


# --- the file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Announcement:
    """An announcement as read from its file: subject, optional preheader, Markdown body."""

    path: Path
    subject: str
    preheader: str | None
    body: str

    @property
    def content_hash(self) -> str:
        """A sha256 of the subject and body: the same announcement is recognised when it is
        sent again, whatever happened to line endings and trailing spaces."""
        lines = [line.rstrip() for line in self.body.strip("\n").splitlines()]
        digest = hashlib.sha256(ANNOUNCEMENT.encode())
        digest.update(b"\0" + self.subject.encode() + b"\0" + "\n".join(lines).encode())
        return digest.hexdigest()


def read_announcement(path: str | Path) -> Announcement:
    """Read ``path``: YAML front matter with ``subject`` (and optional ``preheader``), then the
    Markdown body. Raises CampaignFileError with a one-line reason."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CampaignFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CampaignFileError(f"{path} is a folder; give the announcement's .md file") from None
    except UnicodeDecodeError:
        raise CampaignFileError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise CampaignFileError(f"cannot read {path} ({err.strerror or err})") from None
    meta, body = _front_matter(content, path)
    unknown = sorted(str(key) for key in meta if key not in FRONT_MATTER_KEYS)
    if unknown:
        raise CampaignFileError(
            f"{path}: unknown front matter key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; an announcement takes subject and "
            "preheader"
        )
    subject = _one_line(meta.get("subject"), "subject", path)
    if not subject:
        raise CampaignFileError(
            f"{path}: the front matter has no subject; add a line like "
            "`subject: The new book is here`"
        )
    if len(subject) > SUBJECT_LIMIT:
        raise CampaignFileError(
            f"{path}: the subject is {len(subject)} characters long, over "
            f"the limit of {SUBJECT_LIMIT}; shorten it (under 80 reads best)"
        )
    if not body.strip():
        raise CampaignFileError(
            f"{path}: there is no text after the front matter; write the "
            "announcement below the closing --- line"
        )
    return Announcement(
        path=path,
        subject=subject,
        preheader=_one_line(meta.get("preheader"), "preheader", path) or None,
        body=body,
    )


def _front_matter(content: str, path: Path) -> tuple[dict[Any, Any], str]:
    try:
        split = split_front_matter(content)
    except FrontMatterError as err:
        hint = {
            "unclosed": "; add one after the subject",
            "yaml": "; put a value that holds a colon in quotes",
            "shape": " (subject, preheader)",
        }[err.kind]
        raise CampaignFileError(f"{path}: {err}{hint}") from None
    if not split.present:
        raise CampaignFileError(
            f"{path}: no front matter; start the file with a --- line, "
            "then `subject: ...`, then another --- line"
        )
    return split.meta, split.body


def _one_line(value: object, key: str, path: Path) -> str:
    """A front matter value as one line of text ('' when missing)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CampaignFileError(f"{path}: the {key} must be text; put it in quotes")
    return " ".join(str(value).split())


# --- Markdown to HTML and text --------------------------------------------------------------


@dataclass(frozen=True)
class Button:
    """A call-to-action button: ``[[label]](url)`` alone in its paragraph."""

    label: str
    url: str


@dataclass(frozen=True)
class CampaignBody:
    """The Markdown body rendered once: HTML pieces and buttons in order, and plain text."""

    content: tuple[Markup | Button, ...]  # sanitised HTML (as Markup) and buttons, in order
    text: str
    first_paragraph: str  # plain text, for a preheader when the file gives none

    @property
    def buttons(self) -> list[Button]:
        """The body's buttons, in order."""
        return [part for part in self.content if isinstance(part, Button)]


def site_base(site_url: str) -> str:
    """The base relative URLs in an announcement resolve against: the site's folder, so
    ``images/cover.jpg`` is under the site and ``/images/cover.jpg`` under its host."""
    return site_url.rstrip("/") + "/"


def resolve_url(url: str | None, base: str) -> str | None:
    """``url`` made absolute against ``base``; None unless it is http(s) or mailto."""
    url = (url or "").strip()
    if not url:
        return None
    try:
        absolute = urljoin(base, url)
        parts = urlsplit(absolute)
    except ValueError:
        return None
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return absolute
    return absolute if parts.scheme.lower() == "mailto" and parts.path else None


class _ButtonFinder(Treeprocessor):
    """Turns each paragraph holding only ``[[label]](url)`` into a token paragraph (which
    survives sanitising and is swapped for the button afterwards); elsewhere a double-bracket
    link just loses its inner brackets."""

    def __init__(self, md: markdown.Markdown, token: str) -> None:
        super().__init__(md)
        self.token = token
        self.buttons: list[tuple[str, str | None]] = []  # label, href as written

    def run(self, root: etree.Element) -> None:
        alone = [
            p
            for p in root.iter("p")
            if len(p) == 1
            and not (p.text or "").strip()
            and not (p[0].tail or "").strip()
            and _is_button_link(p[0])
        ]
        for paragraph in alone:
            link = paragraph[0]
            label = " ".join("".join(link.itertext()).split())[1:-1].strip()
            self.buttons.append((label, link.get("href")))
            paragraph.remove(link)
            paragraph.text = f"{self.token}{len(self.buttons) - 1}x"
        for link in root.iter("a"):
            if not _is_button_link(link) or link.text is None:
                continue
            link.text = link.text.lstrip().removeprefix("[")
            if len(link) == 0:
                link.text = link.text.rstrip().removesuffix("]")
            elif link[-1].tail:
                link[-1].tail = (link[-1].tail or "").rstrip().removesuffix("]")


def _is_button_link(element: etree.Element) -> bool:
    words = "".join(element.itertext()).strip()
    return element.tag == "a" and len(words) > 2 and words[0] == "[" and words[-1] == "]"


class _TreeKeeper(Treeprocessor):
    """Keeps the finished element tree, for the plain-text part."""

    tree: etree.Element | None = None

    def run(self, root: etree.Element) -> None:
        self.tree = root


def render_markdown(source: str, site_url: str) -> CampaignBody:
    """Render an announcement's Markdown once: sanitised HTML with buttons, and plain text.

    Raises CampaignFileError for a button whose link is not a web or mailto address, or a
    body that is empty once unsafe HTML is removed.
    """
    base = site_base(site_url)
    token = f"newsletterbutton{uuid.uuid4().hex}n"
    md = markdown.Markdown(extensions=list(MARKDOWN_EXTENSIONS), output_format="html")
    finder = _ButtonFinder(md, token)
    keeper = _TreeKeeper(md)
    # After "inline" (20) and "unescape" (0), so labels and escapes are final.
    md.treeprocessors.register(finder, "newsletter-buttons", -10)
    md.treeprocessors.register(keeper, "newsletter-tree", -20)
    html = sanitise_html(md.convert(source), base)
    assert keeper.tree is not None
    buttons = []
    for label, href in finder.buttons:
        url = resolve_url(href, base)
        if url is None or not label:
            raise CampaignFileError(
                f"the button [[{label}]]({href or ''}) needs a label and a web (https://...) "
                "or mailto: address"
            )
        buttons.append(Button(label=label, url=url))
    content: list[Markup | Button] = []
    pieces = re.split(rf"<p>\s*{token}(\d+)x\s*</p>", html)
    for index, piece in enumerate(pieces):
        if index % 2:
            content.append(buttons[int(piece)])
        elif piece.strip():
            content.append(Markup(piece))  # sanitised above
    if not any(isinstance(part, Button) or _has_substance(part) for part in content):
        raise CampaignFileError(
            "nothing is left of the body once unsafe HTML is removed; "
            "write the announcement in Markdown"
        )
    stash = [
        block if isinstance(block, str) else etree.tostring(block, encoding="unicode")
        for block in md.htmlStash.rawHtmlBlocks
    ]
    writer = _TextWriter(stash, base, token, buttons)
    text = writer.document(keeper.tree)
    return CampaignBody(
        content=tuple(content), text=text, first_paragraph=writer.first_paragraph(keeper.tree)
    )


def _has_substance(html: str) -> bool:
    """Whether a piece of HTML shows anything: words or an image."""
    return bool(re.sub(r"<[^>]*>|&nbsp;|\s", "", html)) or "<img" in html


# The plain-text part is written from the parsed Markdown. Emphasis keeps a plain-text
# convention (*strong*, _emphasis_); links read "text (url)", as in the digest's text part.
_BLOCK_TAGS = {
    "p",
    *(f"h{level}" for level in range(1, 7)),
    "ul",
    "ol",
    "blockquote",
    "pre",
    "hr",
    "table",
    "div",
    "dl",
    "li",
}
# Raw inline HTML whose content is never shown: what the sanitiser removes with its content.
_HIDDEN_TAGS = REMOVED_WITH_CONTENT
_TRAILING_ARROWS = " \t:→⟶➔➜➝➞»›>"
# A line break the author asked for (<br>, or two spaces at a line's end); other newlines in
# a paragraph are Markdown's soft breaks and are re-wrapped.
_HARD_BREAK = "\u2028"
# Python-Markdown writes an autolinked address as character references behind this marker.
_OBFUSCATED = re.compile(re.escape(AMP_SUBSTITUTE) + r"(#?[0-9A-Za-z]+;)")
_SINGLE_TAG = re.compile(r"\A<[^<>]*>\Z")
_ONLY_PLACEHOLDER = re.compile(r"\A\s*" + HTML_PLACEHOLDER_RE.pattern + r"\s*\Z")


class _InlineHtml(HTMLParser):
    """Reads raw inline HTML that the Markdown passes through, piece by piece: hidden
    elements, link targets, line breaks and image alt text."""

    def __init__(self, writer: _TextWriter) -> None:
        super().__init__(convert_charrefs=True)
        self.writer = writer
        self.hidden = 0
        self.links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in _HIDDEN_TAGS:
            self.hidden += 1
        elif self.hidden:
            return
        elif tag == "br":
            self.writer.out.append(_HARD_BREAK)
        elif tag == "img" and values.get("alt"):
            self.writer.out.append(f"[{values['alt']}]")
        elif tag == "a":
            self.links.append(resolve_url(values.get("href"), self.writer.base))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HIDDEN_TAGS:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "a" and self.links and not self.hidden:
            url = self.links.pop()
            if url:
                self.writer.out.append(f" ({url.removeprefix('mailto:')})")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.writer.out.append(data)


class _TextWriter:
    """Plain text from the Markdown element tree: underlined headings, wrapped paragraphs,
    "- " and "1. " lists, "> " quotes, indented code, [alt text], "Label: URL" buttons."""

    def __init__(
        self, stash: Sequence[str], base: str, token: str, buttons: Sequence[Button]
    ) -> None:
        self.stash = stash
        self.base = base
        self.button_text = re.compile(rf"^\s*{token}(\d+)x\s*$")
        self.buttons = buttons
        self.out: list[str] = []
        self.inline_html = _InlineHtml(self)

    def document(self, root: etree.Element) -> str:
        """The whole body."""
        return "\n\n".join(self.blocks(root)).strip("\n")

    def first_paragraph(self, root: etree.Element) -> str:
        """The first paragraph's words (buttons skipped), on one line."""
        for paragraph in root.iter("p"):
            if self.button_text.match(paragraph.text or ""):
                continue
            words = " ".join(self.inline(paragraph).split())
            if words:
                return words
        return ""

    # blocks

    def blocks(self, container: etree.Element) -> list[str]:
        """The container's content as blocks; loose inline content becomes paragraphs."""
        blocks: list[str] = []
        run: list[tuple[str | None, etree.Element | None]] = [(container.text, None)]

        def flush() -> None:
            words = self._inline_run(run)
            if words.strip():
                blocks.append(self._wrap(words))
            run.clear()

        for child in container:
            if child.tag in _BLOCK_TAGS:
                flush()
                block = self.block(child)
                if block.strip():
                    blocks.append(block)
                run.append((child.tail, None))
            else:
                run.append((None, child))
                run.append((child.tail, None))
        flush()
        return blocks

    def block(self, element: etree.Element) -> str:
        """One block element as text."""
        tag = element.tag
        if tag == "p":
            alone = element.text or "" if len(element) == 0 else ""
            button = self.button_text.match(alone)
            if button:
                item = self.buttons[int(button.group(1))]
                return f"{item.label.rstrip(_TRAILING_ARROWS) or item.label}: {item.url}"
            raw = _ONLY_PLACEHOLDER.match(alone)
            if raw:  # a block of raw HTML, or a fenced code block
                return self._raw_block(self.stash[int(raw.group(1))].strip())
            return self._wrap(self.inline(element))
        if tag in ("h1", "h2"):
            title = " ".join(self.inline(element).split())
            return f"{title}\n{('=' if tag == 'h1' else '-') * len(title)}"
        if tag in ("h3", "h4", "h5", "h6"):
            return " ".join(self.inline(element).split())
        if tag in ("ul", "ol"):
            return self._list(element)
        if tag == "blockquote":
            inner = "\n\n".join(self.blocks(element))
            return "\n".join(f"> {line}".rstrip() for line in inner.splitlines())
        if tag == "pre":  # an indented code block (its text is HTML-escaped in the tree)
            return _indent_code(unescape("".join(element.itertext())))
        if tag == "hr":
            return "* * *"
        if tag == "table":
            rows = []
            for row in element.iter("tr"):
                rows.append(" | ".join(" ".join(self.inline(cell).split()) for cell in row))
            return "\n".join(rows)
        return "\n\n".join(self.blocks(element))  # div, dl, a stray li

    def _list(self, element: etree.Element) -> str:
        ordered = element.tag == "ol"
        number = int(element.get("start") or 1) if ordered else 1
        items = [child for child in element if child.tag == "li"]
        loose = any(child.tag == "p" for item in items for child in item)
        lines: list[str] = []
        for item in items:
            marker = f"{number}. " if ordered else "- "
            number += 1
            body = ("\n\n" if loose else "\n").join(self.blocks(item))
            indent = " " * len(marker)
            first, *rest = body.splitlines() or [""]
            lines.append(marker + first)
            lines.extend(indent + line if line else "" for line in rest)
            if loose:
                lines.append("")
        return "\n".join(lines).rstrip("\n")

    # inline content

    def inline(self, element: etree.Element) -> str:
        """An element's inline content as one string (line breaks kept)."""
        return self._inline_run([(element.text, None), *self._children(element)])

    @staticmethod
    def _children(element: etree.Element) -> Iterator[tuple[str | None, etree.Element | None]]:
        for child in element:
            yield None, child
            yield child.tail, None

    def _inline_run(self, run: Sequence[tuple[str | None, etree.Element | None]]) -> str:
        saved, self.out = self.out, []
        for words, element in run:
            if element is not None:
                self._element(element)
            elif words:
                self._words(words)
        result, self.out = "".join(self.out), saved
        return result

    def _element(self, element: etree.Element) -> None:
        tag = element.tag
        if self.inline_html.hidden:
            return
        if tag == "br":
            self.out.append(_HARD_BREAK)
        elif tag == "img":
            alt = " ".join((element.get("alt") or "").split())
            if alt:
                self.out.append(f"[{alt}]")
        elif tag == "a":
            label = self.inline(element).strip()
            url = resolve_url(_plain(element.get("href") or ""), self.base)
            target = url.removeprefix("mailto:") if url else None
            if target and label and label not in (url, target):
                self.out.append(f"{label} ({target})")
            else:
                self.out.append(label or target or "")
        elif tag == "strong":
            self.out.append(f"*{self.inline(element)}*")
        elif tag == "em":
            self.out.append(f"_{self.inline(element)}_")
        else:  # code, del, sub, sup, span and the like: their words
            self.out.append(self.inline(element))

    def _words(self, words: str) -> None:
        """Text from the tree, with raw-HTML placeholders read as the HTML they stand for."""
        position = 0
        for match in HTML_PLACEHOLDER_RE.finditer(words):
            if not self.inline_html.hidden:
                self.out.append(_plain(words[position : match.start()]))
            position = match.end()
            raw = self.stash[int(match.group(1))].strip()
            if raw.startswith("<!--"):
                continue
            if _SINGLE_TAG.match(raw):  # inline HTML comes one tag at a time
                self.inline_html.feed(raw)
            elif raw.startswith("<"):
                self.out.append(html_to_text(sanitise_html(raw, self.base)))
            elif not self.inline_html.hidden:
                self.out.append(unescape(raw))  # an entity such as &mdash;
        if not self.inline_html.hidden:
            self.out.append(_plain(words[position:]))

    def _raw_block(self, raw: str) -> str:
        """A stashed block: code, or raw HTML read through the sanitiser."""
        if raw.startswith("<pre"):
            return _indent_code(unescape(re.sub(r"<[^>]*>", "", raw)))
        if raw.startswith("<!--"):
            return ""
        if _SINGLE_TAG.match(raw):  # say, an <img> on a line of its own
            saved, self.out = self.out, []
            self.inline_html.feed(raw)
            words, self.out = "".join(self.out), saved
            return self._wrap(words)
        return html_to_text(sanitise_html(raw, self.base))

    @staticmethod
    def _wrap(words: str) -> str:
        lines = []
        for line in words.strip().split(_HARD_BREAK):
            squashed = " ".join(line.split())
            lines.append(
                textwrap.fill(squashed, TEXT_WIDTH, break_long_words=False, break_on_hyphens=False)
                if squashed
                else ""
            )
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _plain(words: str) -> str:
    """Tree text with Python-Markdown's encoded characters (in autolinks) decoded."""
    return str(_OBFUSCATED.sub(lambda match: unescape("&" + match.group(1)), words))


def _indent_code(code: str) -> str:
    """A code block as text: indented four spaces, never wrapped."""
    return "\n".join(f"    {line}".rstrip() for line in code.strip("\n").splitlines())


# --- the email ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedCampaign:
    """An announcement rendered once for everyone, with the reader placeholders."""

    email: RenderedEmail
    preheader: str
    body: CampaignBody


def render_campaign(announcement: Announcement, services: Services) -> RenderedCampaign:
    """Render ``announcement`` once into ``emails/campaign.html`` + ``campaign.txt`` (Jinja2
    and premailer run here only). Raises CampaignFileError or TemplateError."""
    config = services.config
    try:
        body = render_markdown(announcement.body, str(config["SITE_URL"]))
    except CampaignFileError as err:
        raise CampaignFileError(f"{announcement.path}: {err}") from None
    preheader = announcement.preheader or _shorten(body.first_paragraph, PREHEADER_CHARS)
    context = {
        **email_context(config),
        "content": list(body.content),
        "text": body.text,
        "preheader": preheader,
        # Stand-ins for each reader's own parts, filled in per reader after rendering.
        "greeting": placeholders.GREETING,
        "unsubscribe_url": placeholders.UNSUBSCRIBE_URL,
    }
    email = services.renderer.render(TEMPLATE, announcement.subject, context)
    return RenderedCampaign(email=email, preheader=preheader, body=body)


def _shorten(words: str, limit: int) -> str:
    if len(words) <= limit:
        return words
    return words[:limit].rsplit(" ", 1)[0].rstrip(".,;:!?-–—") + "…"


# --- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EarlierCopy:
    """A campaign with the same content as the announcement at hand."""

    id: int
    status: str
    created_at: datetime
    left: int  # deliveries still queued or deferred


def earlier_copies(session: Session, content_hash: str) -> list[EarlierCopy]:
    """Announcements with this content hash, oldest first, with what each has left to send."""
    c, d = _campaigns, _deliveries
    left = (
        select(func.count())
        .select_from(d)
        .where(d.c.campaign_id == c.c.id, d.c.status.in_((QUEUED, DEFERRED)))
        .scalar_subquery()
    )
    rows = session.execute(
        select(c.c.id, c.c.status, c.c.created_at, left)
        .where(c.c.kind == ANNOUNCEMENT, c.c.content_hash == content_hash)
        .order_by(c.c.id)
    ).all()
    return [EarlierCopy(*row) for row in rows]


@dataclass
class AnnouncementComposer:
    """How an announcement is composed, for :func:`~newsletter.sending.send_new_campaign`.

    Its rules: the file and template are checked before SMTP; an interrupted copy of this
    content is resumed and the run ends there (even with ``again``: one run never mails anyone
    a second copy); content sent before is refused (AlreadySentError) unless ``again``; any
    other interrupted announcement is finished first, and if it had anything to send the run
    ends there (run again). When another sender has just created this very announcement, the
    run joins in sending it instead of composing a second copy.
    """

    announcement: Announcement
    again: bool = False
    kind: str = ANNOUNCEMENT
    sends_unfinished: bool = False
    rendered: RenderedCampaign | None = None

    def prepare(self, services: Services) -> None:
        """Render the file: a bad file or template stops the run before anything else."""
        self.rendered = render_campaign(self.announcement, services)

    def backlog(self, session: Session) -> Backlog:
        """An interrupted copy of this content (final), else the other unfinished ones."""
        copies = earlier_copies(session, self.announcement.content_hash)
        unfinished = [copy.id for copy in copies if copy.status == SENDING]
        if unfinished:
            return Backlog(unfinished, final=True)
        if copies and not self.again:
            raise AlreadySentError(copies[-1].id, copies[-1].created_at)
        return Backlog(unfinished_campaigns(session, ANNOUNCEMENT))

    def draft(self, session: Session, services: Services, outcome: SendOutcome) -> Draft | int:
        """The announcement, or the unfinished copy another sender created meanwhile."""
        copies = earlier_copies(session, self.announcement.content_hash)
        unfinished = [copy.id for copy in copies if copy.status == SENDING]
        if unfinished:
            return unfinished[0]
        if copies and not self.again:
            raise AlreadySentError(copies[-1].id, copies[-1].created_at)
        return Draft(self.announcement.subject)

    def compose(self, session: Session, services: Services, draft: Draft) -> int:
        """Add the announcement's campaign."""
        rendered = self.rendered or render_campaign(self.announcement, services)
        content_hash = self.announcement.content_hash
        campaign = add_campaign(session, services, ANNOUNCEMENT, rendered, content_hash)
        return campaign.id


@dataclass(frozen=True)
class CampaignPlan:
    """What ``send-campaign --dry-run`` shows."""

    subject: str
    preheader: str
    readers: int
    copies: list[EarlierCopy]  # earlier campaigns with the same content
    other_unfinished: list[tuple[int, str, int]]  # (id, subject, deliveries left)

    @property
    def resumes(self) -> EarlierCopy | None:
        """The interrupted copy a run would resume, if any."""
        return next((copy for copy in self.copies if copy.status == SENDING), None)


def plan_campaign(session: Session, services: Services, announcement: Announcement) -> CampaignPlan:
    """What a run would do now; renders (so a bad file shows up) and changes nothing."""
    rendered = render_campaign(announcement, services)
    copies = earlier_copies(session, announcement.content_hash)
    others = unfinished_summary(session, ANNOUNCEMENT, leave_out=[copy.id for copy in copies])
    plan = CampaignPlan(
        subject=announcement.subject,
        preheader=rendered.preheader,
        readers=confirmed_readers(session),
        copies=copies,
        other_unfinished=others,
    )
    session.rollback()
    return plan


def send_test_campaign(
    session: Session, services: Services, announcement: Announcement, address: str
) -> str:
    """Send the announcement to ``address`` only; returns its subject. Creates no campaign
    and marks nothing. Raises InvalidAddressError, CampaignError, TemplateError or an
    SmtpError."""
    address = normalise_address(address)
    rendered = render_campaign(announcement, services)
    send_test_copy(session, services, rendered.email, address)
    return announcement.subject


# --- preview ----------------------------------------------------------------------------------


def preview_campaign(services: Services, announcement: Announcement) -> EmailPreview:
    """Render the announcement and fill in a sample reader's parts, built exactly as the
    sender builds each reader's copy. Touches no database. Raises CampaignError or
    TemplateError."""
    rendered = render_campaign(announcement, services).email
    return preview_campaign_email(services, rendered, name="campaign")

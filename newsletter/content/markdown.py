"""Markdown to an email body, rendered once: sanitised HTML with call-to-action buttons, and
the plain-text part written from the parsed Markdown (not by stripping the HTML).

A call-to-action button is a link whose text is in double brackets, alone in its paragraph::

    [[Get the book]](https://shop.example.com/book)

It becomes a ``Button`` (a bulletproof table button in the HTML template) and
``Get the book: https://...`` in text; elsewhere it shows as a link reading "[Get the book]".
Relative URLs resolve against the site's URL. Announcements (newsletter.announcements) are the
user; this module knows nothing of campaigns.
"""

from __future__ import annotations

import re
import textwrap
import uuid
import xml.etree.ElementTree as etree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import markdown
from markdown.treeprocessors import Treeprocessor
from markdown.util import AMP_SUBSTITUTE, HTML_PLACEHOLDER_RE
from markupsafe import Markup

from ..errors import NewsletterError
from ..posts import sanitise_html
from .sanitise import REMOVED_WITH_CONTENT
from .text import html_to_text

TEXT_WIDTH = 72
# Markdown beyond the basics: ``` code blocks, tables, and attribute lists, so that an image
# can carry the width Outlook on Windows sizes it by: ![Cover](cover.jpg){: width="536" }.
# (The sanitiser keeps only such safe attributes. No footnotes: their #links fail in mail.)
MARKDOWN_EXTENSIONS = ("fenced_code", "tables", "sane_lists", "attr_list")


class MarkdownBodyError(NewsletterError):
    """A Markdown body that cannot become an email: a bad button, or nothing left to show."""


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

    Raises MarkdownBodyError for a button whose link is not a web or mailto address, or a
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
            raise MarkdownBodyError(
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
        raise MarkdownBodyError(
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

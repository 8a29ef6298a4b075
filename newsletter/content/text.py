"""HTML to plain text, the one place that reads HTML for its words: the readable text part of
an email (paragraphs, lists, "words (link)"), the one-line words of a title or summary, and
summaries cut to a number of words; and plain text back to HTML paragraphs."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

SUMMARY_WORDS = 60

# Removed with everything inside: code, styles and widgets are not words.
_SKIPPED = frozenset({"script", "style", "template", "noscript", "head", "title", "svg", "math"})
# Elements that start a paragraph of their own (lists are counted apart, for their numbers).
_SECTIONS = {"address", "article", "aside", "footer", "header", "main", "nav", "section"}
_PARAGRAPHS = {"blockquote", "div", "figcaption", "figure", "hr", "p", "pre"}
_HEADINGS = {f"h{level}" for level in range(1, 7)}
_BLOCKS = frozenset(_SECTIONS | _PARAGRAPHS | _HEADINGS | {"dl", "dt", "dd", "table", "tr"})
_LISTS = {"ul", "ol"}
_CELLS = {"td", "th"}
# A nested list item's indent, kept apart from spaces so that trimming each line keeps it.
_INDENT = "\ue000"


class _TextReader(HTMLParser):
    """Walks HTML once, collecting its text. ``readable`` keeps the shape a reader needs in a
    text email (paragraphs, numbered and nested lists, quotes, link targets, image alt text);
    without it, only the words, for titles, summaries and comparisons."""

    def __init__(self, *, readable: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.readable = readable
        self.chunks: list[str] = []
        self.links: list[tuple[str | None, int]] = []  # open links: target, first chunk
        self.lists: list[list[int]] = []  # per open list: [is_ordered, next number]
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skip += 1
        elif not self.readable:
            if tag in _BLOCKS or tag in _LISTS or tag in _CELLS or tag in ("li", "br"):
                self.chunks.append(" ")
        elif tag in _BLOCKS or tag in _LISTS:
            self.chunks.append("\n\n")
            if tag in _LISTS:
                self.lists.append([tag == "ol", 1])
            elif tag == "blockquote":
                self.chunks.append("> ")
        elif tag == "li":
            marker = "- "
            if self.lists and self.lists[-1][0]:
                marker = f"{self.lists[-1][1]}. "
                self.lists[-1][1] += 1
            self.chunks.append("\n" + _INDENT * 2 * max(0, len(self.lists) - 1) + marker)
        elif tag == "br":
            self.chunks.append("\n")
        elif tag in _CELLS:
            self.chunks.append(" ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.chunks)))
        elif tag == "img" and (alt := dict(attrs).get("alt")):
            self.chunks.append(f"[{alt}]")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skip = max(0, self.skip - 1)
        elif not self.readable:
            if tag in _BLOCKS or tag in _LISTS or tag in _CELLS or tag == "li":
                self.chunks.append(" ")
        elif tag in _LISTS and self.lists:
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
            self.chunks.append(re.sub(r"\s+", " ", data) if self.readable else data)

    def text(self) -> str:
        if not self.readable:
            return " ".join("".join(self.chunks).split())
        lines = [line.strip() for line in "".join(self.chunks).split("\n")]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        return text.replace(_INDENT, " ")


def _read(html_text: str, *, readable: bool) -> str:
    reader = _TextReader(readable=readable)
    reader.feed(html_text)
    reader.close()
    return reader.text()


def html_to_text(html_text: str) -> str:
    """Readable plain text of a (sanitised) post body: paragraphs, lists, "text (link)"."""
    return _read(html_text, readable=True)


def html_to_words(html_or_text: str) -> str:
    """The words of an HTML fragment (or of plain text) on one line, whitespace collapsed."""
    if "<" not in html_or_text and "&" not in html_or_text:
        return " ".join(html_or_text.split())
    return _read(html_or_text, readable=False)


_TRAILING_MORE = re.compile(r"\s*(?:\[(?:…|\.\.\.)\]|…|\.\.\.)\s*$")


def summarise(html_or_text: str, words: int = SUMMARY_WORDS) -> str:
    """Plain text of about ``words`` words, ending with an ellipsis when cut."""
    text = html_to_words(html_or_text)
    # Blog engines end excerpts with "[…]"; one ellipsis of our own reads better.
    cut = bool(_TRAILING_MORE.search(text))
    text = _TRAILING_MORE.sub("", text)
    all_words = text.split()
    if len(all_words) > words:
        all_words, cut = all_words[:words], True
    text = " ".join(all_words)
    if cut and text:
        text = text.rstrip(".,;:!?-–— ") + "…"
    return text


def text_to_html(text: str) -> str:
    """Plain text as HTML paragraphs (blank lines part them, single newlines break lines)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs)

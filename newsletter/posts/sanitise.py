"""Content safety: sanitised post HTML with absolute links and bounded images, summaries."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import nh3

from ..content.embeds import replace_embeds
from ..content.links import unwrap_dead_links

SUMMARY_WORDS = 60
MAX_IMAGE_WIDTH = 536  # pixels: the digest card's content column (600 less its padding)
IMAGE_STYLE = "max-width:100%;height:auto"


_ALLOWED_TAGS = {
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "dd",
    "del",
    "div",
    "dl",
    "dt",
    "em",
    "figcaption",
    "figure",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "mark",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "u",
    "ul",
}
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width"},  # no height: height:auto keeps the aspect ratio
    "abbr": {"title"},
    "ol": {"start"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
}
# Removed with everything inside: their content is code, widgets or fallbacks, not prose.
_REMOVED_WITH_CONTENT = {
    "script",
    "style",
    "iframe",
    "object",
    "embed",
    "form",
    "template",
    "noscript",
    "svg",
    "math",
    "audio",
    "video",
    "canvas",
    "select",
    "textarea",
    "button",
}
_URL_SCHEMES = {"http", "https", "mailto"}


def sanitise_html(html_text: str, base_url: str | None) -> str:
    """Post HTML made safe for email: no scripts, styles, frames, forms, event handlers or
    ``javascript:`` URLs; links and images absolute against ``base_url``; images at most
    the digest column wide."""

    def rewrite(tag: str, attribute: str, value: str) -> str | None:
        # nh3 has already dropped disallowed schemes; this makes the rest absolute (or drops
        # a relative URL with no base), and must never raise: nh3 would only print the error.
        if attribute in ("href", "src"):
            return _absolute_url(value, base_url)
        if tag == "img" and attribute == "width":
            width = value.strip().removesuffix("px")
            return width if width.isdigit() and 0 < int(width) <= MAX_IMAGE_WIDTH else None
        return value

    html_text = replace_embeds(html_text, base_url)  # iframes would be removed with nothing left
    cleaned = nh3.clean(
        html_text,
        tags=_ALLOWED_TAGS,
        clean_content_tags=_REMOVED_WITH_CONTENT,
        attributes=_ALLOWED_ATTRIBUTES,
        attribute_filter=rewrite,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener",
        set_tag_attribute_values={"img": {"style": IMAGE_STYLE}},
        strip_comments=True,
    ).strip()
    return unwrap_dead_links(cleaned)


def _absolute_url(value: str | None, base_url: str | None) -> str | None:
    """``value`` made absolute against ``base_url``; None unless http(s) (or mailto)."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        absolute = urljoin(base_url, value) if base_url else value
        parts = urlsplit(absolute)
    except ValueError:  # e.g. a broken IPv6 host
        return None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https") and parts.netloc:
        return absolute
    return absolute if scheme == "mailto" else None


class _TextExtractor(HTMLParser):
    """HTML → words: text only, with a space wherever a block ends, scripts skipped."""

    # Figures (images, captions, embedded videos) are not the post's words: no summary text.
    _SKIPPED = {"script", "style", "template", "noscript", "head", "title", "svg", "math", "figure"}
    _BLOCKS = {
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "td",
        "th",
        "tr",
        "ul",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIPPED:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _plain(html_or_text: str) -> str:
    """The text of an HTML fragment (or of plain text), whitespace collapsed."""
    if "<" not in html_or_text and "&" not in html_or_text:
        return " ".join(html_or_text.split())
    extractor = _TextExtractor()
    extractor.feed(html_or_text)
    extractor.close()
    return " ".join("".join(extractor.parts).split())


_TRAILING_MORE = re.compile(r"\s*(?:\[(?:…|\.\.\.)\]|…|\.\.\.)\s*$")


def summarise(html_or_text: str, words: int = SUMMARY_WORDS) -> str:
    """Plain text of about ``words`` words, ending with an ellipsis when cut."""
    text = _plain(html_or_text)
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


def _first_image(content: str | None) -> str | None:
    """The src of the first image in sanitised HTML (already absolute)."""
    if not content or "<img" not in content:
        return None
    finder = _FirstImage()
    finder.feed(content)
    finder.close()
    return finder.src


class _FirstImage(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.src: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img" and self.src is None:
            self.src = dict(attrs).get("src") or None


def _text_to_html(text: str) -> str:
    """Plain text as HTML paragraphs (blank lines part them, single newlines break lines)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs)

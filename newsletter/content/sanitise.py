"""Content safety: sanitised post HTML with absolute links and bounded images."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import nh3

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
REMOVED_WITH_CONTENT = {
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
            return absolute_url(value, base_url)
        if tag == "img" and attribute == "width":
            width = value.strip().removesuffix("px")
            return width if width.isdigit() and 0 < int(width) <= MAX_IMAGE_WIDTH else None
        return value

    return nh3.clean(
        html_text,
        tags=_ALLOWED_TAGS,
        clean_content_tags=REMOVED_WITH_CONTENT,
        attributes=_ALLOWED_ATTRIBUTES,
        attribute_filter=rewrite,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener",
        set_tag_attribute_values={"img": {"style": IMAGE_STYLE}},
        strip_comments=True,
    ).strip()


def absolute_url(value: str | None, base_url: str | None) -> str | None:
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


def first_image(content: str | None) -> str | None:
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

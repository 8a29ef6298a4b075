"""The post image as the digest shows it: its own alt text and a width it is never enlarged past."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

COLUMN_WIDTH = 536  # pixels: the digest card's text column (600 less its padding)


@dataclass(frozen=True)
class ImageFacts:
    """What a post's body says about one of its images: its alt text and width, if given."""

    alt: str | None
    width: int | None


class _ImageReader(HTMLParser):
    def __init__(self, src: str) -> None:
        super().__init__(convert_charrefs=True)
        self.src = src
        self.found: ImageFacts | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag != "img" or self.found is not None or values.get("src") != self.src:
            return
        width = (values.get("width") or "").strip().removesuffix("px")
        alt = values.get("alt")
        self.found = ImageFacts(
            alt=" ".join(alt.split()) if alt is not None else None,
            width=int(width) if width.isdigit() and int(width) > 0 else None,
        )


def image_facts(content_html: str, src: str | None) -> ImageFacts:
    """The alt text and width the post body gives the image at ``src`` (both None if absent)."""
    if not src or "<img" not in content_html:
        return ImageFacts(alt=None, width=None)
    reader = _ImageReader(src)
    reader.feed(content_html)
    reader.close()
    return reader.found or ImageFacts(alt=None, width=None)


def display_width(width: int | None) -> int:
    """The width to show an image at: its own when known and narrower, else the column's."""
    return min(width, COLUMN_WIDTH) if width else COLUMN_WIDTH


# Sanitised HTML writes these tags bare (the sanitiser keeps no attributes on them).
_FIGURE_TAGS = {
    "<figure>": '<div class="figure">',
    "</figure>": "</div>",
    "<figcaption>": '<p class="figcaption">',
    "</figcaption>": "</p>",
}
_FIGURE = re.compile("|".join(map(re.escape, _FIGURE_TAGS)))


def figures_as_blocks(html_text: str) -> str:
    """Sanitised HTML with ``<figure>``/``<figcaption>`` as a div and a paragraph: Outlook,
    Yahoo and Gmail apps do not style HTML5 elements, but every client centres a div."""
    return _FIGURE.sub(lambda match: _FIGURE_TAGS[match.group()], html_text)

"""Embedded players made email-safe: an ``<iframe>`` becomes a linked thumbnail or a link.

Email clients play no video and drop iframes, so a post's YouTube or Vimeo player becomes
what good newsletters send instead: the video's still image (YouTube gives one for every
video) linked to the video, with a visible play mark and the video's title under it. Any
other iframe becomes a plain link to the post, so a reader knows something is there.

This runs on raw post HTML *before* the sanitiser, which removes iframes with their content;
the markup it writes uses only tags and attributes the sanitiser keeps, so it survives
sanitising (and sanitising again) unchanged in meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape, unescape
from html.parser import HTMLParser
from urllib.parse import SplitResult, parse_qs, urlsplit

PLAY_MARK = "\u25b6"  # ▶, text rather than an overlay image: it shows with images off too
WATCH_LABEL = "Watch the video"
OTHER_EMBED_LABEL = "This post has an embedded item: view it on the blog"
THUMBNAIL_WIDTH = 480  # pixels: YouTube's hqdefault.jpg is 480 × 360

_YOUTUBE_HOSTS = {
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "youtube-nocookie.com",
    "www.youtube-nocookie.com",
}
_VIMEO_HOSTS = {"player.vimeo.com", "vimeo.com", "www.vimeo.com"}
_YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{6,20}")
# An iframe with its (fallback) content, or a lone opening tag; tags are matched
# case-insensitively, as browsers do.
_IFRAME = re.compile(r"<iframe\b([^>]*)>(?:.*?</iframe\s*>)?", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Video:
    """A video a post embeds: where to watch it, its still image (if known), its title."""

    url: str
    thumbnail: str | None
    title: str | None
    provider: str  # "YouTube" or "Vimeo"

    @property
    def label(self) -> str:
        """The text under the thumbnail: the video's title, else "Watch the video"."""
        return self.title or WATCH_LABEL


def _split(src: str) -> SplitResult | None:
    """``src`` split into parts; protocol-relative ("//host/...") read as https."""
    src = src.strip()
    try:
        return urlsplit("https:" + src if src.startswith("//") else src)
    except ValueError:  # e.g. a broken IPv6 host
        return None


def youtube_id(src: str) -> str | None:
    """The video id of a YouTube player or page URL (embed, nocookie, youtu.be, watch?v=)."""
    parts = _split(src)
    if parts is None:
        return None
    host = (parts.hostname or "").lower()
    candidate: str | None = None
    if host == "youtu.be":
        candidate = parts.path.strip("/").split("/")[0]
    elif host in _YOUTUBE_HOSTS:
        path = parts.path.split("/")
        if len(path) >= 3 and path[1] in ("embed", "v", "shorts", "live"):
            candidate = path[2]
        elif parts.path == "/watch":
            candidate = (parse_qs(parts.query).get("v") or [""])[0]
    return candidate if candidate and _YOUTUBE_ID.fullmatch(candidate) else None


def vimeo_id(src: str) -> str | None:
    """The video id of a Vimeo player (player.vimeo.com/video/ID) or page (vimeo.com/ID) URL."""
    parts = _split(src)
    if parts is None:
        return None
    host = (parts.hostname or "").lower()
    if host not in _VIMEO_HOSTS:
        return None
    digits = [piece for piece in parts.path.split("/") if piece.isdigit()]
    return digits[0] if digits else None


def video_for(src: str, title: str | None = None) -> Video | None:
    """The :class:`Video` an iframe's ``src`` plays, or None for anything else."""
    title = " ".join((title or "").split()) or None
    if title and title.lower() in ("youtube video player", "vimeo video player"):
        title = None  # the players' generic titles say nothing about the video
    if found := youtube_id(src):
        return Video(
            url=f"https://www.youtube.com/watch?v={found}",
            thumbnail=f"https://i.ytimg.com/vi/{found}/hqdefault.jpg",
            title=title,
            provider="YouTube",
        )
    if found := vimeo_id(src):
        # Vimeo's still images need its API; a linked caption is what we can give offline.
        return Video(
            url=f"https://vimeo.com/{found}", thumbnail=None, title=title, provider="Vimeo"
        )
    return None


def video_html(video: Video) -> str:
    """A linked thumbnail (when known) and a linked "▶ title" caption, in a figure."""
    url = escape(video.url)
    label = escape(video.label)
    picture = ""
    if video.thumbnail:
        alt = escape(f"{PLAY_MARK} Play the video: {video.label}")
        picture = (
            f'<a href="{url}"><img src="{escape(video.thumbnail)}" alt="{alt}" '
            f'width="{THUMBNAIL_WIDTH}"></a>'
        )
    caption = f'<a href="{url}">{PLAY_MARK} {label}</a>'
    if not video.thumbnail:
        caption = f'<a href="{url}">{PLAY_MARK} {label}</a> (on {video.provider})'
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def other_embed_html(post_url: str | None) -> str:
    """What an iframe that is no known video becomes: a link to the post, or just the words."""
    words = OTHER_EMBED_LABEL
    if post_url:
        words = f'<a href="{escape(post_url)}">{OTHER_EMBED_LABEL}</a>'
    return f"<figure><figcaption>{words}</figcaption></figure>"


class _Attributes(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.values = {name: value or "" for name, value in attrs}


def _attributes(opening: str) -> dict[str, str]:
    reader = _Attributes()
    reader.feed(f"<iframe{opening}>")
    reader.close()
    return reader.values


def replace_embeds(html_text: str, post_url: str | None) -> str:
    """``html_text`` with every iframe replaced: videos by a linked thumbnail and caption,
    anything else by a link to the post (``post_url``)."""
    if "<iframe" not in html_text.lower():
        return html_text

    def replace(match: re.Match[str]) -> str:
        values = _attributes(match.group(1))
        src = unescape(values.get("src") or values.get("data-src") or "")
        video = video_for(src, values.get("title"))
        return video_html(video) if video else other_embed_html(post_url)

    return _IFRAME.sub(replace, html_text)


class _VideoFinder(HTMLParser):
    """Finds the videos :func:`video_html` left in sanitised HTML, by their links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.videos: list[Video] = []
        self._href: str | None = None
        self._text: list[str] = []
        self._image: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a":
            self._href, self._text = values.get("href"), []
        elif tag == "img" and self._href and values.get("src"):
            self._image = values["src"]

    def handle_endtag(self, tag: str) -> None:
        if tag != "a" or not self._href:
            return
        text = " ".join("".join(self._text).split())
        if text.startswith(PLAY_MARK):
            video = video_for(self._href, text.removeprefix(PLAY_MARK).strip())
            if video and all(v.url != video.url for v in self.videos):
                title = None if video.title == WATCH_LABEL else video.title
                thumbnail = video.thumbnail if video.provider == "YouTube" else self._image
                self.videos.append(
                    Video(url=video.url, thumbnail=thumbnail, title=title, provider=video.provider)
                )
            self._image = None
        self._href = None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)


def videos_in(html_text: str) -> list[Video]:
    """The videos a (sanitised) post body shows as linked thumbnails, in order, once each."""
    if PLAY_MARK not in html_text:
        return []
    finder = _VideoFinder()
    finder.feed(html_text)
    finder.close()
    return finder.videos

"""A folder of Markdown posts with front matter."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import markdown

from ..content.frontmatter import FrontMatterError, split_front_matter
from .feeds import _as_utc, _text
from .source import _MARKDOWN_SUFFIXES, PostSourceError, SourcePost, _key, _make_post

_DATED_NAME = re.compile(r"\A(\d{4}-\d{2}-\d{2})-")
_TRUE_WORDS = {"true", "yes", "on", "1"}


def read_posts_dir(folder: Path, *, site_url: str) -> list[SourcePost]:
    """The posts of a folder of Markdown files with YAML front matter, ordered by path.

    Files and folders whose names start with ``_`` or ``.`` are skipped (Hugo's ``_index.md``,
    Jekyll's ``_drafts``); a page bundle's ``index.md`` takes its slug from its folder.
    """
    if not folder.is_dir():
        raise PostSourceError(
            f"there is no folder {folder}; set NEWSLETTER_POSTS_DIR to the "
            "folder of your Markdown posts"
        )
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in _MARKDOWN_SUFFIXES
        and path.is_file()
        and not any(part.startswith(("_", ".")) for part in path.relative_to(folder).parts)
    )
    return [_read_markdown_post(path, site_url=site_url.rstrip("/")) for path in paths]


def _read_markdown_post(path: Path, *, site_url: str) -> SourcePost:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PostSourceError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise PostSourceError(f"cannot read {path} ({err.strerror or err})") from None
    meta, body = _split_front_matter(text, path)
    stem = path.parent.name if path.stem.lower() == "index" else path.stem
    slug = str(meta.get("slug") or stem).strip().strip("/")
    url = _text(meta.get("url")).strip()
    if url and not urlsplit(url).scheme:
        url = f"{site_url}/{url.lstrip('/')}"  # site-relative, as static-site generators mean it
    url = url or f"{site_url}/{quote(slug, safe='/-._~')}"
    published = _as_utc(meta.get("date"))
    dated_name = _DATED_NAME.match(path.name)
    if published is None and dated_name:  # Jekyll's 2026-11-02-title.md
        published = _as_utc(dated_name.group(1))
    if meta.get("date") not in (None, "") and published is None:
        raise PostSourceError(
            f"{path}: the date {meta['date']!r} is not a date; write it as "
            "2026-11-02 or 2026-11-02T08:00:00Z"
        )
    draft = _truthy(meta.get("draft")) or meta.get("published") is False
    return _make_post(
        key=_key(url, fallback=str(path)),
        title=html.escape(_text(meta.get("title")) or _title_from_name(stem), quote=False),
        url=url,
        content_html=markdown.markdown(body, extensions=["extra", "sane_lists"]),
        summary=html.escape(_text(meta.get("summary")), quote=False) or None,
        subtitle=html.escape(_text(meta.get("subtitle")), quote=False) or None,
        author=html.escape(_text(meta.get("author")), quote=False) or None,
        image_url=_text(meta.get("image")) or None,
        published_at=published,
        updated_at=_as_utc(meta.get("updated") or meta.get("lastmod")),
        draft=draft,
    )


def _split_front_matter(text: str, path: Path) -> tuple[dict[str, Any], str]:
    """The YAML front matter as a dict, and the Markdown after it."""
    if text.startswith("+++"):
        raise PostSourceError(
            f"{path}: TOML front matter (+++) is not supported; write it as YAML between --- lines"
        )
    try:
        split = split_front_matter(text)
    except FrontMatterError as err:
        hint = {"unclosed": "; add one", "yaml": "; fix it", "shape": ""}[err.kind]
        raise PostSourceError(f"{path}: {err}{hint}") from None
    return split.meta, split.body


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_WORDS
    return bool(value)


def _title_from_name(stem: str) -> str:
    words = _DATED_NAME.sub("", stem).replace("-", " ").replace("_", " ").strip()
    return words[:1].upper() + words[1:] if words else "Untitled post"

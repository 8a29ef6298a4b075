"""The author's voice in an email: her name, her words around the posts, her note, her brand.

Everything here is a setting with a good default (README: "The author's voice"), so the
author changes the words and the look without editing templates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jinja2
import markdown
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from ..config import FONT_STACKS
from ..errors import NewsletterError

# The Markdown a note may use: the same extensions as announcements.
NOTE_EXTENSIONS = ("fenced_code", "tables", "sane_lists")
NOTE_MAX_CHARS = 20_000
# The author's own preview greets her, never a stranger.
AUTHOR_GREETING = "Hi there,"


class NoteError(NewsletterError):
    """A personal note that cannot go into the digest; says what to change."""


class _Authored(Protocol):
    @property
    def author(self) -> str | None: ...


def author_name(posts: Sequence[_Authored], config: Mapping[str, Any]) -> str | None:
    """``NEWSLETTER_AUTHOR_NAME``, else the name most of the posts carry from the feed."""
    if config.get("AUTHOR_NAME"):
        return str(config["AUTHOR_NAME"])
    names = Counter(post.author for post in posts if post.author)
    return names.most_common(1)[0][0] if names else None


def author_greeting(config: Mapping[str, Any]) -> str:
    """How the author's own preview greets her: by ``NEWSLETTER_AUTHOR_NAME``, or "Hi there,"."""
    name = " ".join(str(config.get("AUTHOR_NAME") or "").split())
    return f"Hi {name}," if name else AUTHOR_GREETING


def render_words(key: str, template: str | None, values: Mapping[str, Any]) -> str:
    """One setting's Jinja template (``NEWSLETTER_<key>``) rendered to one line of text."""
    from ..rendering import TemplateError

    env = SandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined)
    try:
        text = env.from_string(template or "").render(dict(values))
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(err.message or str(err), f"NEWSLETTER_{key}", err.lineno) from err
    except jinja2.TemplateError as err:
        raise TemplateError(str(err), f"NEWSLETTER_{key}", 1) from err
    return " ".join(text.split())


def welcome_text(config: Mapping[str, Any]) -> str:
    """The welcome email's words (``NEWSLETTER_WELCOME_TEXT``, a template over site_name)."""
    values = {"site_name": config["SITE_NAME"], "site_url": config["SITE_URL"]}
    return render_words("WELCOME_TEXT", config.get("WELCOME_TEXT"), values)


def appearance(config: Mapping[str, Any]) -> dict[str, Any]:
    """The brand every email template sees: colour, font stack and logo."""
    return {
        "brand_color": config.get("BRAND_COLOR") or "#7a5c8e",
        "font_stack": FONT_STACKS.get(str(config.get("FONT") or "serif"), FONT_STACKS["serif"]),
        "logo_url": config.get("LOGO_URL") or None,
    }


def check_note(source: str) -> None:
    """Raise NoteError for a note that cannot go above the posts: too long, or nothing left
    once unsafe HTML is removed."""
    source = source.strip()
    if len(source) > NOTE_MAX_CHARS:
        raise NoteError(
            f"the note has {len(source):,} characters; a note above the posts should stay "
            f"under {NOTE_MAX_CHARS:,}: shorten it, or send an announcement instead"
        )
    if source and not note_parts(source, "https://example.com")[1].strip():
        raise NoteError(
            "nothing is left of the note once unsafe HTML is removed: write it in Markdown"
        )


def note_parts(source: str | None, site_url: str) -> tuple[Markup | None, str]:
    """A personal note's Markdown as sanitised HTML and as plain text (None, "" without one).

    Raises NoteError for a note too long to be a note.
    """
    from ..posts import sanitise_html
    from .text import html_to_text

    source = (source or "").strip()
    if not source:
        return None, ""
    if len(source) > NOTE_MAX_CHARS:
        check_note(source)
    html = sanitise_html(markdown.markdown(source, extensions=list(NOTE_EXTENSIONS)), site_url)
    return Markup(html), html_to_text(html)  # sanitised just above


def digest_voice(
    posts: Sequence[_Authored],
    config: Mapping[str, Any],
    words: Mapping[str, Any],
    *,
    note: str | None = None,
) -> dict[str, Any]:
    """The digest template's values for the author's voice: name, tagline, intro, sign-off and
    note; ``words`` are the values the intro template may use (count, site_name, ...)."""
    note_html, note_text = note_parts(note, str(config["SITE_URL"]))
    return {
        "author_name": author_name(posts, config),
        "tagline": config.get("DIGEST_TAGLINE") or "",
        "intro": render_words("DIGEST_INTRO", config.get("DIGEST_INTRO"), words),
        "sign_off": config.get("DIGEST_SIGN_OFF") or "",
        "note": note_html,
        "note_text": note_text,
    }

"""``--note FILE.md``: the author's personal note above the posts of a digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..content.voice import NoteError, check_note

NOTE_HELP = (
    "A personal note above the posts: a Markdown file, sanitised like posts, in both the "
    "HTML and the text part, and stored with the digest."
)


class NoteFile(click.ParamType):  # type: ignore[type-arg]
    """A Markdown file read as UTF-8 text and checked as a note; the option's value is the text."""

    name = "FILE.md"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The file's text; a clear usage error for a missing, unreadable or unfit file."""
        if not isinstance(value, str):
            return str(value)
        try:
            text = Path(value).read_text(encoding="utf-8")
        except FileNotFoundError:
            self.fail(f"{value}: no such file; give the path of your note (Markdown)", param, ctx)
        except UnicodeDecodeError:
            self.fail(f"{value}: not UTF-8 text; save the note as UTF-8", param, ctx)
        except OSError as err:
            self.fail(f"{value}: cannot be read ({err.strerror})", param, ctx)
        try:
            check_note(text)
        except NoteError as err:
            self.fail(f"{value}: {err}", param, ctx)
        return text


NOTE_FILE = NoteFile()

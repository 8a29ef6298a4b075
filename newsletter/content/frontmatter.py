"""YAML front matter: the ``---`` block at the top of a Markdown post or announcement."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from ..errors import NewsletterError

_START = re.compile(r"---[ \t]*\r?\n")
_BLOCK = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*\r?$\n?", re.DOTALL | re.MULTILINE)


class FrontMatterError(NewsletterError):
    """The front matter cannot be read. The message names the problem (not the file); the
    caller adds the file and what to do, by ``kind``."""

    def __init__(self, message: str, kind: Literal["unclosed", "yaml", "shape"]) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class FrontMatter:
    """A file split into its front matter (``present`` False when there is none) and body."""

    body: str
    meta: dict[Any, Any] = field(default_factory=dict)
    present: bool = False


def split_front_matter(text: str) -> FrontMatter:
    """Split ``text`` into its YAML front matter (between ``---`` lines; a ``...`` line may
    close it) and the Markdown after it. Raises FrontMatterError."""
    if not _START.match(text):
        return FrontMatter(body=text)
    match = _BLOCK.match(text)
    if match is None:
        raise FrontMatterError("the front matter has no closing --- line", "unclosed")
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 2}: " if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise FrontMatterError(
            f"the front matter is not valid YAML ({line}{problem})", "yaml"
        ) from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise FrontMatterError("the front matter must be `key: value` lines", "shape")
    return FrontMatter(body=text[match.end() :], meta=meta, present=True)

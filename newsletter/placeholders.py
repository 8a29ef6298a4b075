"""Stand-ins for each reader's own parts in a campaign rendered once for everyone.

Templates render these strings where the reader's values go; the sender swaps them for each
reader's values in the serialised message. They use only letters, digits and underscores so
that premailer, HTML serialisation, quoted-printable and header folding leave them intact.

Content (a post from a feed, an announcement's Markdown, a title) may contain the same text.
It must never turn into a reader's data, so :func:`protect` and :func:`finish` bracket every
render: the code's own stand-ins go into the template under a random name, every
``__NEWSLETTER_`` left in the output after rendering came from content and is neutralised (it
still reads the same), and only then do the stand-ins get their real names back.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any


class Placeholder(str):
    """A stand-in put into a template by the code, never text that came from content."""

    __slots__ = ()


UNSUBSCRIBE_URL = Placeholder("__NEWSLETTER_UNSUBSCRIBE_URL__")
# "Hi Ada," or "Hello," — filled per reader, HTML-escaped in the HTML part.
GREETING = Placeholder("__NEWSLETTER_GREETING__")
# Header values, filled per reader.
RECIPIENT = Placeholder("__NEWSLETTER_RECIPIENT__")
MESSAGE_ID = Placeholder("__NEWSLETTER_MESSAGE_ID__")
# The confirm link in a confirmation email, filled per message.
CONFIRM_URL = Placeholder("__NEWSLETTER_CONFIRM_URL__")
# The Date header of a transactional email built once per process and sent many times.
DATE = Placeholder("__NEWSLETTER_DATE__")

# Every stand-in starts with this; in rendered content it is neutralised.
PREFIX = "__NEWSLETTER_"
# How the neutralised prefix is written: the same to a reader, but no stand-in. In HTML the
# second "_" is a character reference; in plain text a zero-width space splits the "__".
_HTML_PREFIX = "_&#95;NEWSLETTER_"
_TEXT_PREFIX = "_\u200b_NEWSLETTER_"


def protect(context: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``context`` with each :class:`Placeholder` value under a random name content cannot
    know, and the map back to the real names (for :func:`finish`)."""
    nonce = secrets.token_hex(8)
    protected: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in context.items():
        if isinstance(value, Placeholder):
            hidden = f"__SLOT{nonce}{len(names)}__"
            names[hidden] = str(value)
            value = hidden
        protected[key] = value
    return protected, names


def finish(rendered: str, names: Mapping[str, str], *, html: bool) -> str:
    """Neutralise every stand-in that came from content, then restore the code's own."""
    rendered = rendered.replace(PREFIX, _HTML_PREFIX if html else _TEXT_PREFIX)
    if names:
        rendered = re.sub("|".join(map(re.escape, names)), lambda m: names[m.group()], rendered)
    return rendered

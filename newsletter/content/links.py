"""Links the sanitiser emptied: an ``<a>`` whose address was removed becomes its plain text."""

from __future__ import annotations

import re

# The sanitiser writes attributes in double quotes and never nests links, so an opening <a>
# without href up to its own </a> is exactly one emptied link.
_DEAD_LINK = re.compile(r"<a(?![^>]*\shref=)(?:\s[^>]*)?>(.*?)</a>", re.IGNORECASE | re.DOTALL)


def unwrap_dead_links(html_text: str) -> str:
    """``html_text`` (sanitised) with every link that has no address left as its text only.

    A ``javascript:`` link loses its href in the sanitiser; kept as ``<a>`` it would still be
    styled as a link that goes nowhere.
    """
    return _DEAD_LINK.sub(lambda match: match.group(1), html_text)

"""Post sources (an RSS/Atom/JSON feed, or a folder of Markdown files) → normalised, sanitised
posts, synced into the ``posts`` table.

A sync reads the whole source first and only then writes, in one transaction, so a source that
cannot be read changes nothing. Post bodies are sanitised here, once, by the rules in
``newsletter.content``: what reaches ``Post.content_html`` is safe to put into an email, with
absolute links and bounded images.
"""

from __future__ import annotations

# The content rules live in newsletter.content; these names stay here for older imports.
from ..content.sanitise import IMAGE_STYLE as IMAGE_STYLE
from ..content.sanitise import sanitise_html as sanitise_html
from ..content.text import SUMMARY_WORDS as SUMMARY_WORDS
from ..content.text import summarise as summarise
from .source import NoPostSourceError as NoPostSourceError
from .source import PostSourceError as PostSourceError
from .source import post_source as post_source
from .sync import SyncReport as SyncReport
from .sync import sync_posts as sync_posts

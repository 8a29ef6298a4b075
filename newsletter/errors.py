"""The one root of every error a command or page reports.

Each module defines its own errors under :class:`NewsletterError`, named with the suffix
``Error``; the message says what went wrong and what to do next, so a command can print it as
it is (``except NewsletterError``) rather than catch a tuple of classes.
"""

from __future__ import annotations


class NewsletterError(Exception):
    """Something a command or page reports to a person; the message says what to do next."""

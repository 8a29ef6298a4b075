"""The web service's blueprints: they translate HTTP to calls of the domain and back.

- :mod:`.public`: subscribe, confirm, unsubscribe (RFC 8058 one-click), /healthz.
- :mod:`.approval`: the author's "Approve and send" page for a scheduled digest.
- :mod:`.webhooks`: bounce and complaint events from mail providers.
- :mod:`.archive`: each issue in a browser, and the public archive with its feed.
- :mod:`.admin`: the author's dashboard at /admin/.
"""

from __future__ import annotations

from flask import Flask

from . import admin, approval, archive, public, webhooks


def init_app(app: Flask) -> None:
    """Register every blueprint and its app-wide hooks on ``app``."""
    public.init_app(app)
    approval.init_app(app)
    webhooks.init_app(app)
    archive.init_app(app)
    admin.init_app(app)

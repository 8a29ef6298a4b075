"""newsletter: a self-hosted newsletter for a blog, with double opt-in and a consent ledger."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Flask is imported by create_app: `newsletter --version` does without it
    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: configuration, database, services, routes and commands."""
    from flask import Flask

    from . import appctx, cli, config, db, demo, web, worker_models  # noqa: F401
    from .outbox import OutboxSender

    instance = os.environ.get("NEWSLETTER_INSTANCE_PATH") or str(Path.cwd() / "instance")
    app = Flask(
        __name__, instance_path=str(Path(instance).resolve()), instance_relative_config=True
    )
    overrides = dict(test_config or {})
    if config.running_demo() and "DEMO" not in overrides:
        overrides["DEMO"] = True
    config.load_config(app, overrides)
    if app.config["PROXY_COUNT"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        count = app.config["PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)  # type: ignore[method-assign]
    db.init_app(app)
    appctx.init_app(app)
    web.init_app(app)
    cli.init_app(app)
    demo.init_app(app)
    sender = OutboxSender(app, interval=app.config["OUTBOX_RETRY_INTERVAL"])
    app.extensions["newsletter.outbox_sender"] = sender
    if app.config["OUTBOX_SEND_AFTER_REQUEST"]:
        # Each web process sends its queued emails in the background and sweeps for retries.
        app.before_request(sender.start)
    return app

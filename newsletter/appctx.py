"""The glue between a Flask app and the domain: the app's :class:`Services` (with the SMTP
transport and the app's database session) is made here and looked up here, so that
``services.py`` and everything under it stay free of Flask."""

from __future__ import annotations

from flask import Flask, current_app
from sqlalchemy.orm import Session

from .db import db
from .services import Services
from .smtp import SmtpSettings, SmtpTransport, Transport

EXTENSION_KEY = "newsletter"


def init_app(app: Flask) -> Services:
    """Attach a Services object to ``app``: SMTP from the app's settings, the app's session."""

    def open_smtp() -> Transport:
        return SmtpTransport(SmtpSettings.from_config(app.config))

    def session() -> Session:
        return db.session()

    services = Services(config=app.config, transport_factory=open_smtp, session_factory=session)
    app.extensions[EXTENSION_KEY] = services
    return services


def get_services(app: Flask | None = None) -> Services:
    """The Services of ``app`` or of the current app."""
    services = (app or current_app).extensions[EXTENSION_KEY]
    assert isinstance(services, Services)
    return services

"""The side effects the domain needs, gathered once per app and passed in: the clock, the token
maker, the email renderer and a way to open SMTP connections. Tests swap the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from flask import Flask, current_app

from .content.voice import appearance
from .db import utcnow
from .ratelimit import RateLimiter, limiter_from_config
from .rendering import EmailRenderer
from .smtp import SmtpSettings, SmtpTransport, Transport
from .tokens import Tokens

EXTENSION_KEY = "newsletter"
T = TypeVar("T")


@dataclass
class Services:
    """Per-app collaborators of the domain functions."""

    config: dict[str, Any]
    clock: Callable[[], datetime] = utcnow
    transport_factory: Callable[[], Transport] | None = None
    _renderer: EmailRenderer | None = field(default=None, repr=False)
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)
    _rate_limiter: RateLimiter | None = field(default=None, repr=False)

    @property
    def tokens(self) -> Tokens:
        """Token maker bound to the current clock (cheap to build)."""
        return Tokens(self.config["SECRET_KEY"], self.clock, self.config["CONFIRM_TOKEN_MAX_AGE"])

    @property
    def renderer(self) -> EmailRenderer:
        """The email renderer, with the author's template folder first when configured."""
        if self._renderer is None:
            self._renderer = EmailRenderer(
                self.config.get("EMAIL_TEMPLATES"), brand=appearance(self.config)
            )
        return self._renderer

    def cached(self, key: tuple[Any, ...], make: Callable[[], T]) -> T:
        """``make()``, computed once per process for each ``key`` (a rendered template, say:
        templates and CSS inlining cost milliseconds, a cached copy nothing)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]  # type: ignore[no-any-return]

    @property
    def rate_limiter(self) -> RateLimiter:
        """Where per-IP limits are counted: the database, or Redis when configured."""
        if self._rate_limiter is None:
            from .db import db

            self._rate_limiter = limiter_from_config(self.config, lambda: db.session)
        return self._rate_limiter

    def smtp_settings(self) -> SmtpSettings:
        """SMTP settings from the configuration."""
        return SmtpSettings.from_config(self.config)

    def open_transport(self) -> Transport:
        """A new SMTP connection (opened lazily on first send)."""
        if self.transport_factory is not None:
            return self.transport_factory()
        return SmtpTransport(self.smtp_settings())

    def public_url(self, path: str) -> str:
        """An absolute URL on this service, for links inside emails."""
        return f"{self.config['PUBLIC_URL']}/{path.lstrip('/')}"


def init_app(app: Flask) -> Services:
    """Attach a Services object to ``app``."""
    services = Services(config=app.config)
    app.extensions[EXTENSION_KEY] = services
    return services


def get_services(app: Flask | None = None) -> Services:
    """The Services of ``app`` or of the current app."""
    return (app or current_app).extensions[EXTENSION_KEY]  # type: ignore[no-any-return]

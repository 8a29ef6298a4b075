"""The side effects the domain needs, gathered once per app and passed in: the clock, the token
maker, the email renderer and a way to open mail connections. Tests swap the clock.

Nothing here knows Flask or SMTP: the app factory (``newsletter.appctx``) builds a Services with
the transport and session factories it chooses, and the domain only calls them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.orm import Session

from .db import utcnow
from .errors import NewsletterError
from .ratelimit import RateLimiter, limiter_from_config
from .rendering import EmailRenderer
from .tokens import Tokens

if TYPE_CHECKING:
    from .smtp import Transport

T = TypeVar("T")


class MissingServiceError(NewsletterError):
    """A Services was built without a collaborator the caller needs (a transport, a session)."""


@dataclass
class Services:
    """Per-app collaborators of the domain functions."""

    config: dict[str, Any]
    clock: Callable[[], datetime] = utcnow
    transport_factory: Callable[[], Transport] | None = None
    # The session per-IP limits are counted in (the app's scoped session, in the web app).
    session_factory: Callable[[], Session] | None = field(default=None, repr=False)
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
            self._renderer = EmailRenderer(self.config.get("EMAIL_TEMPLATES"))
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
            if self.session_factory is None:
                raise MissingServiceError("no database session factory was given to Services")
            self._rate_limiter = limiter_from_config(self.config, self.session_factory)
        return self._rate_limiter

    def open_transport(self) -> Transport:
        """A new mail connection (SMTP in the app; opened lazily on first send)."""
        if self.transport_factory is None:
            raise MissingServiceError(
                "no mail transport was given to Services: build it with "
                "newsletter.appctx.init_app(app), or pass transport_factory"
            )
        return self.transport_factory()

    def public_url(self, path: str) -> str:
        """An absolute URL on this service, for links inside emails."""
        return f"{self.config['PUBLIC_URL']}/{path.lstrip('/')}"

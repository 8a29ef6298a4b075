"""Configuration: defaults, ``NEWSLETTER_*`` environment variables and a ``.env`` file.

Every setting has a default that runs on one machine with no set-up, except the secret key,
which production must set. :func:`load_config` reads the environment; :func:`validate_config`
turns a bad value into a :class:`ConfigError` that names the variable to fix.

Over 600 lines for one reason: about 150 are the table of defaults, and the rest are the
checks, one ``_validate_*`` per area, kept beside the defaults they check so that a new setting
is added in one file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from .errors import NewsletterError

PREFIX = "NEWSLETTER"

DEFAULTS: dict[str, Any] = {
    "SECRET_KEY": None,
    "DATABASE_URL": None,  # default: a SQLite file in the instance folder
    "PUBLIC_URL": "http://127.0.0.1:5000",
    "SITE_NAME": "My Blog",
    "SITE_URL": "http://127.0.0.1:5000",
    "MAIL_FROM": "newsletter@localhost",
    "MAIL_FROM_NAME": None,  # default: the site name
    "REPLY_TO": None,
    "SMTP_HOST": "localhost",
    "SMTP_PORT": 25,
    "SMTP_USERNAME": None,
    "SMTP_PASSWORD": None,
    "SMTP_SECURITY": "none",
    "SMTP_TIMEOUT": 30.0,
    "ALLOWED_ORIGINS": "",
    "PRIVACY_POLICY_URL": None,
    "CONSENT_TEXT": (
        "Yes, I'd like to receive the newsletter by email. "
        "By subscribing you agree to our Privacy Policy."
    ),
    "POSTAL_ADDRESS": "",
    "CONFIRM_TOKEN_MAX_AGE": 7 * 24 * 3600,
    "SUBSCRIBE_RATE_LIMIT": 10,  # per IP and minute
    "PROXY_COUNT": 0,
    "CONFIRMATION_MIN_INTERVAL": 600,  # seconds between two confirmation emails to one address
    "CONFIRMATIONS_PER_DAY": 5,
    "WELCOME_EMAIL": True,
    "OUTBOX_MAX_ATTEMPTS": 20,
    "OUTBOX_RETRY_INTERVAL": 30.0,  # seconds between the background sender's sweeps
    "OUTBOX_SEND_AFTER_REQUEST": True,  # hand new queued emails to SMTP right after the request
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # Blog posts: one source, a feed (http(s) URL or file) or a folder of Markdown files.
    "FEED_URL": None,
    "POSTS_DIR": None,
    "FEED_TIMEOUT": 20.0,  # seconds a feed fetch may take
    "FEED_MAX_BYTES": 10 * 1024 * 1024,
    "UNSUBSCRIBE_MAILTO": None,
    # Sending campaigns: a cap in messages per second over all connections (none: as fast as
    # the server takes them), parallel SMTP connections, the first retry of a 4xx after this
    # many seconds (doubling), and when a reader still deferred is given up.
    "SEND_RATE": None,
    "SEND_CONNECTIONS": 4,
    "DEFER_RETRY_SECONDS": 60.0,
    "DEFER_GIVE_UP_HOURS": 72.0,
    # Several senders (PostgreSQL): how long a claimed batch stays one sender's without its
    # renewal (it renews while alive); a dead sender's batch goes to the others after this.
    "SEND_LEASE_SECONDS": 120.0,
    # DKIM signing: all three or none; the key is a file holding an RSA private key (PEM).
    "DKIM_DOMAIN": None,
    "DKIM_SELECTOR": None,
    "DKIM_PRIVATE_KEY": None,
    # An additional ed25519-sha256 signature (RFC 8463), never the only one: both or neither,
    # and only with the RSA key above. The key is a PEM file or dkimpy's base64 seed.
    "DKIM_ED25519_SELECTOR": None,
    "DKIM_ED25519_PRIVATE_KEY": None,
    "EMAIL_TEMPLATES": None,
    # The digest: how many posts at most, summaries or whole posts, and its subject line and
    # preheader as Jinja templates over posts, first, count, more and site_name.
    "DIGEST_MAX_POSTS": 10,
    "DIGEST_STYLE": "summary",  # summary or full
    "DIGEST_SUBJECT": (
        "{{ first.title }}{% if more %} + {{ more }} more from {{ site_name }}{% endif %}"
    ),
    "DIGEST_PREHEADER": None,  # default: the first post's subtitle, else its summary's start
    # The author's voice and branding (README: "The author's voice"): her name (else the
    # feed's), the digest's words, and the look, without editing templates.
    "AUTHOR_NAME": None,
    "DIGEST_TAGLINE": "New on the blog",
    "DIGEST_INTRO": (
        "{% if count == 1 %}There is a new post on {{ site_name }}. I hope it brings you a calm "
        "moment today.{% else %}There are {{ count }} new posts on {{ site_name }}. I hope they "
        "bring you a calm moment today.{% endif %}"
    ),
    "DIGEST_SIGN_OFF": "With warmth,",
    "WELCOME_TEXT": (
        "Thank you for joining the {{ site_name }} community. New posts, wellness tips and "
        "resources will come to this inbox; nothing else, and never too often."
    ),
    "BRAND_COLOR": "#7a5c8e",
    "LOGO_URL": None,
    "FONT": "serif",  # serif or sans-serif: email-safe font stacks
    "FETCH_POST_META": False,  # read each new post's page once for og:description / og:image
    "PUBLIC_ARCHIVE": False,  # list past issues at /archive, with an RSS feed of them
    "LIST_ID": None,  # default: derived from the site URL
    # Never-confirmed sign-ups older than this many days are removed by `newsletter purge`.
    "PENDING_RETENTION_DAYS": 30,
    "DEMO": False,
    "RATELIMIT_STORAGE_URI": None,  # default: the database; or redis://host:6379/0
    # `newsletter doctor` asks this DNS server (host:port) instead of the system's: split DNS.
    "DNS_SERVER": None,
    # The worker (`newsletter worker`, `newsletter serve`): the digest's cron schedule in a time
    # zone (empty: no scheduled digest), the author's approval first, how late a missed tick
    # may still send, how often posts are polled, and how often the loop wakes.
    "DIGEST_SCHEDULE": "",
    "TIMEZONE": "UTC",
    "DIGEST_APPROVAL": False,
    "AUTHOR_EMAIL": None,
    "DIGEST_CATCHUP_HOURS": 12.0,
    "FEED_POLL_MINUTES": 60.0,
    "WORKER_POLL_SECONDS": 5.0,
    # Bounces and complaints (README: "Bounces and complaints").
    "BOUNCE_ADDRESS": None,  # bounces@example.com: each delivery's Return-Path is bounces+TOKEN@
    "BOUNCE_MAILBOX": None,  # imaps://user:password@host/INBOX, imap://, pop3s://, maildir:///
    "BOUNCE_PROCESSED_FOLDER": "Processed",
    "BOUNCE_POLL_MINUTES": 5.0,  # how often the worker reads the bounce mailbox
    "SOFT_BOUNCE_LIMIT": 3,  # this many soft bounces ...
    "SOFT_BOUNCE_DAYS": 15,  # ... spread over at least this many days make a reader bounced
    "COMPLAINT_RATE_WARNING": 0.001,
    "HARD_BOUNCE_RATE_WARNING": 0.02,
    "SES_TOPIC_ARNS": "",  # comma-separated SNS topic ARNs; enables POST /webhooks/ses
    "MAILGUN_SIGNING_KEY": None,  # enables POST /webhooks/mailgun
    "POSTMARK_WEBHOOK_USER": None,  # with the password, enables POST /webhooks/postmark
    "POSTMARK_WEBHOOK_PASSWORD": None,
    "WEBHOOK_MAX_AGE": 900,  # seconds: older webhook requests are refused as stale
}

_SENDER_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[A-Za-z0-9.-]+")
SMTP_SECURITY_CHOICES = ("none", "starttls", "ssl")
_BOOLEAN_WORDS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


class ConfigError(NewsletterError):
    """A setting is missing or invalid; the message names the variable and the fix."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.variable = f"{PREFIX}_{setting}"
        super().__init__(f"{self.variable}: {problem}")


def load_dotenv_file(path: Path | None = None) -> None:
    """Load ``.env`` from the working directory; real environment variables win."""
    from dotenv import load_dotenv

    load_dotenv(path or Path.cwd() / ".env", override=False)


def load_config(app: Flask, overrides: dict[str, Any] | None = None) -> None:
    """Fill ``app.config`` from defaults, the environment and ``overrides`` (tests); check it."""
    for key, value in DEFAULTS.items():
        if app.config.get(key) is None:  # Flask pre-sets some keys (MAX_CONTENT_LENGTH) to None
            app.config[key] = value
    load_dotenv_file()
    app.config.from_prefixed_env(PREFIX)
    if overrides:
        app.config.update(overrides)
    # Whether the database is the embedded default (not a setting): only that one is migrated
    # without asking, by `newsletter run` and `newsletter demo`.
    app.config["DATABASE_IS_DEFAULT"] = not app.config["DATABASE_URL"]
    if not app.config["DATABASE_URL"]:
        name = "demo.sqlite" if app.config["DEMO"] else "newsletter.sqlite"
        path = Path(app.instance_path) / name
        app.config["DATABASE_URL"] = f"sqlite:///{path}"
    app.config["SQLALCHEMY_DATABASE_URI"] = app.config["DATABASE_URL"]
    validate_config(app.config)


def _as_bool(config: dict[str, Any], key: str) -> None:
    value = config[key]
    if isinstance(value, bool):
        return
    word = str(value).strip().lower()
    if word not in _BOOLEAN_WORDS:
        raise ConfigError(key, f"expected true or false, got {value!r}")
    config[key] = _BOOLEAN_WORDS[word]


def _as_number(
    config: dict[str, Any], key: str, kind: type, minimum: float, maximum: float
) -> None:
    value = config[key]
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not minimum <= number <= maximum:
        raise ConfigError(key, f"expected a number from {minimum:g} to {maximum:g}, got {value!r}")
    config[key] = number


def _as_url(config: dict[str, Any], key: str, *, required: bool = True) -> None:
    value = config[key]
    if value in (None, ""):
        if required:
            raise ConfigError(key, "is required: set it to an http(s) URL")
        config[key] = None
        return
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            key, f"expected an http(s) URL such as https://example.com, got {value!r}"
        )
    config[key] = str(value).rstrip("/")


def _validate_post_source(config: dict[str, Any]) -> None:
    """The post source: at most one of a feed and a Markdown folder, and sane fetch limits."""
    _as_number(config, "FEED_TIMEOUT", float, 0.1, 600)
    _as_number(config, "FEED_MAX_BYTES", int, 1024, 1024 * 1024 * 1024)
    for key in ("FEED_URL", "POSTS_DIR"):
        value = config[key]
        config[key] = (str(value).strip() or None) if value is not None else None
    feed = config["FEED_URL"]
    if feed and config["POSTS_DIR"]:
        # Two sources would make "what is new" ambiguous; the author picks one.
        raise ConfigError(
            "FEED_URL",
            "is set, and so is NEWSLETTER_POSTS_DIR; set only one: "
            "the feed or the folder of Markdown posts",
        )
    if feed and "://" in feed:
        parts = urlsplit(feed)
        if parts.scheme not in ("http", "https", "file") or (
            parts.scheme != "file" and not parts.netloc
        ):
            raise ConfigError(
                "FEED_URL",
                "expected an http(s) URL such as "
                f"https://blog.example.com/feed.xml or a file path, "
                f"got {feed!r}",
            )


# The key signs every confirm and unsubscribe link: a guessable one lets anyone forge them.
MIN_SECRET_KEY_LENGTH = 32
PLACEHOLDER_SECRET_KEY = "change-me-to-a-long-random-string"  # the one in .env.example
GOOD_KEY_COMMAND = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
_DEMO_AND_TESTING_KEY = "not-a-secret-demo-and-testing-only"


def _validate_secret_key(config: dict[str, Any]) -> None:
    """A secret key is required, and must not be weak, except in the demo and in tests.

    "The demo and tests" means ``DEMO`` (set by ``newsletter demo`` or NEWSLETTER_DEMO) or
    Flask's ``TESTING`` (set by the test suite's configuration, or NEWSLETTER_TESTING).
    """
    key = config.get("SECRET_KEY")
    lenient = bool(config.get("TESTING") or config["DEMO"])
    make_one = (
        f"Make a good one with {GOOD_KEY_COMMAND} and put it in the environment or in "
        "a .env file (or try `newsletter demo`, which needs none)."
    )
    if not key:
        if lenient:
            config["SECRET_KEY"] = _DEMO_AND_TESTING_KEY
            return
        raise ConfigError("SECRET_KEY", f"is not set. {make_one}")
    if lenient:
        return
    key = str(key)
    if key.strip().lower().startswith("change-me") or key == _DEMO_AND_TESTING_KEY:
        raise ConfigError("SECRET_KEY", f"is still the placeholder from .env.example. {make_one}")
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(
            "SECRET_KEY",
            f"is too short ({len(key)} characters; at least "
            f"{MIN_SECRET_KEY_LENGTH} are needed, as anyone who "
            f"guesses it can forge links). {make_one}",
        )


def validate_config(config: dict[str, Any]) -> None:
    """Normalise types and raise :class:`ConfigError` for the first bad setting."""
    for key in ("DEMO", "WELCOME_EMAIL", "OUTBOX_SEND_AFTER_REQUEST"):
        _as_bool(config, key)
    _validate_secret_key(config)
    _as_number(config, "SMTP_PORT", int, 1, 65535)
    _as_number(config, "SMTP_TIMEOUT", float, 0.1, 600)
    _as_number(config, "CONFIRM_TOKEN_MAX_AGE", int, 60, 10 * 365 * 24 * 3600)
    _as_number(config, "SUBSCRIBE_RATE_LIMIT", int, 1, 1_000_000)
    _as_number(config, "PROXY_COUNT", int, 0, 10)
    _as_number(config, "CONFIRMATION_MIN_INTERVAL", int, 0, 7 * 24 * 3600)
    _as_number(config, "CONFIRMATIONS_PER_DAY", int, 1, 1000)
    _as_number(config, "OUTBOX_MAX_ATTEMPTS", int, 1, 1000)
    _as_number(config, "OUTBOX_RETRY_INTERVAL", float, 0.05, 24 * 3600)
    _as_number(config, "MAX_CONTENT_LENGTH", int, 1024, 100 * 1024 * 1024)
    _as_number(config, "PENDING_RETENTION_DAYS", int, 1, 3650)
    security = str(config["SMTP_SECURITY"]).strip().lower()
    if security not in SMTP_SECURITY_CHOICES:
        raise ConfigError("SMTP_SECURITY", f"expected one of none, starttls, ssl; got {security!r}")
    config["SMTP_SECURITY"] = security
    _as_url(config, "PUBLIC_URL")
    storage = config.get("RATELIMIT_STORAGE_URI")
    if storage and urlsplit(str(storage)).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "RATELIMIT_STORAGE_URI",
            f"expected a Redis URL such as redis://127.0.0.1:6379/0, got {storage!r}",
        )
    _as_url(config, "SITE_URL")
    _as_url(config, "PRIVACY_POLICY_URL", required=False)
    _validate_post_source(config)
    for key in ("MAIL_FROM", "REPLY_TO"):
        if key == "REPLY_TO" and not config[key]:
            continue
        # A plain shape check: the sender may be on a local name (localhost) in a demo.
        value = str(config[key]).strip()
        if not _SENDER_ADDRESS.fullmatch(value):
            raise ConfigError(key, f"expected an address such as news@example.com, got {value!r}")
        config[key] = value
    origins = config["ALLOWED_ORIGINS"]
    if isinstance(origins, str):
        origins = [o.strip() for o in origins.split(",") if o.strip()]
    cleaned = []
    for origin in origins:
        if origin.lower() == "null":
            # Sandboxed frames and file:// pages send "Origin: null": only when asked for.
            cleaned.append("null")
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(
                "ALLOWED_ORIGINS",
                f"expected comma-separated origins like https://blog.example.com, got {origin!r}",
            )
        cleaned.append(f"{parts.scheme}://{parts.netloc}".lower())
    config["ALLOWED_ORIGINS"] = cleaned
    config["SITE_NAME"] = str(config["SITE_NAME"]).strip() or "My Blog"
    config["MAIL_FROM_NAME"] = config["MAIL_FROM_NAME"] or config["SITE_NAME"]
    config["CONSENT_TEXT"] = str(config["CONSENT_TEXT"]).strip()
    if not config["CONSENT_TEXT"]:
        raise ConfigError("CONSENT_TEXT", "must not be empty: it is what readers agree to")
    config["POSTAL_ADDRESS"] = str(config["POSTAL_ADDRESS"] or "").strip()
    _validate_digest(config)
    _validate_voice(config)
    _validate_sending(config)
    _validate_worker(config)
    _validate_bounces(config)
    if not config["LIST_ID"]:
        host = urlsplit(config["SITE_URL"]).hostname or "localhost"
        config["LIST_ID"] = f"newsletter.{host}"


DIGEST_STYLES = ("summary", "full")


def _validate_digest(config: dict[str, Any]) -> None:
    """The digest settings: a post count, a style, and subject/preheader templates that parse."""
    _as_number(config, "DIGEST_MAX_POSTS", int, 1, 100)
    style = str(config["DIGEST_STYLE"]).strip().lower()
    if style not in DIGEST_STYLES:
        raise ConfigError("DIGEST_STYLE", f"expected summary or full, got {style!r}")
    config["DIGEST_STYLE"] = style
    for key in ("DIGEST_SUBJECT", "DIGEST_PREHEADER"):
        template = str(config[key] or "").strip()
        if key == "DIGEST_SUBJECT" and not template:
            raise ConfigError(key, "must not be empty: it is the digest's subject line")
        config[key] = _jinja_template(key, template)


FONT_STACKS = {
    "serif": "Georgia, 'Times New Roman', serif",
    "sans-serif": "Helvetica, Arial, sans-serif",
}
# The contrast WCAG 2 level AA asks of normal-size text; white button labels and links on the
# white card both sit at the brand colour's contrast with white.
MIN_CONTRAST = 4.5
_HEX_COLOR = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")


def relative_luminance(color: str) -> float:
    """WCAG 2's relative luminance of a ``#rrggbb`` colour (0 black … 1 white)."""
    channels = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2's contrast ratio of two ``#rrggbb`` colours, from 1 to 21."""
    lighter, darker = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _validate_voice(config: dict[str, Any]) -> None:
    """The author's name and words, and a brand colour white text can be read on (WCAG AA)."""
    for key in ("FETCH_POST_META", "PUBLIC_ARCHIVE"):
        _as_bool(config, key)
    for key in ("AUTHOR_NAME", "DIGEST_TAGLINE", "DIGEST_SIGN_OFF"):
        value = config.get(key)
        config[key] = " ".join(str(value).split()) or None if value is not None else None
    for key in ("DIGEST_INTRO", "WELCOME_TEXT"):
        config[key] = _jinja_template(key, str(config.get(key) or "").strip())
    _as_url(config, "LOGO_URL", required=False)
    font = str(config.get("FONT") or "serif").strip().lower()
    if font not in FONT_STACKS:
        raise ConfigError("FONT", f"expected serif or sans-serif, got {font!r}")
    config["FONT"] = font
    color = str(config.get("BRAND_COLOR") or "").strip()
    match = _HEX_COLOR.fullmatch(color)
    if not match:
        raise ConfigError(
            "BRAND_COLOR", f"expected a colour such as #7a5c8e (#rrggbb), got {color!r}"
        )
    digits = match.group(1).lower()
    color = "#" + ("".join(c * 2 for c in digits) if len(digits) == 3 else digits)
    ratio = contrast_ratio(color, "#ffffff")
    if ratio < MIN_CONTRAST:
        raise ConfigError(
            "BRAND_COLOR",
            f"{color} has a contrast of {ratio:.2f}:1 with white, below the {MIN_CONTRAST}:1 "
            "that WCAG AA asks for button labels and links; choose a darker shade",
        )
    config["BRAND_COLOR"] = color


def _validate_sending(config: dict[str, Any]) -> None:
    """Campaign sending: rate, connections, retry timing, and DKIM given completely or not at
    all, with a key file that can be read."""
    if config["SEND_RATE"] in (None, "", 0, "0"):
        config["SEND_RATE"] = None
    else:
        _as_number(config, "SEND_RATE", float, 0.01, 1_000_000)
    _as_number(config, "SEND_CONNECTIONS", int, 1, 50)
    _as_number(config, "DEFER_RETRY_SECONDS", float, 0.01, 24 * 3600)
    _as_number(config, "DEFER_GIVE_UP_HOURS", float, 0.01, 30 * 24)
    _as_number(config, "SEND_LEASE_SECONDS", float, 2, 24 * 3600)
    dkim = {
        key: (str(config[key]).strip() or None) if config[key] is not None else None
        for key in ("DKIM_DOMAIN", "DKIM_SELECTOR", "DKIM_PRIVATE_KEY")
    }
    config.update(dkim)
    missing = [key for key, value in dkim.items() if not value]
    if missing and len(missing) < len(dkim):
        raise ConfigError(
            missing[0],
            "is needed for DKIM signing: set NEWSLETTER_DKIM_DOMAIN, "
            "NEWSLETTER_DKIM_SELECTOR and NEWSLETTER_DKIM_PRIVATE_KEY "
            "together, or none of them",
        )
    key_path = dkim["DKIM_PRIVATE_KEY"]
    _require_readable("DKIM_PRIVATE_KEY", key_path, "of a PEM file holding the RSA private key")
    ed25519 = {
        key: (str(config[key]).strip() or None) if config.get(key) is not None else None
        for key in ("DKIM_ED25519_SELECTOR", "DKIM_ED25519_PRIVATE_KEY")
    }
    config.update(ed25519)
    given = [key for key, value in ed25519.items() if value]
    if given and len(given) < len(ed25519):
        missing_key = next(key for key in ed25519 if key not in given)
        raise ConfigError(
            missing_key,
            "is needed for the Ed25519 signature: set "
            "NEWSLETTER_DKIM_ED25519_SELECTOR and "
            "NEWSLETTER_DKIM_ED25519_PRIVATE_KEY together, or neither",
        )
    if given and not key_path:
        raise ConfigError(
            "DKIM_ED25519_PRIVATE_KEY",
            "is an additional signature, never the only one: set "
            "NEWSLETTER_DKIM_DOMAIN, NEWSLETTER_DKIM_SELECTOR and "
            "NEWSLETTER_DKIM_PRIVATE_KEY (RSA) as well",
        )
    _require_readable(
        "DKIM_ED25519_PRIVATE_KEY",
        ed25519["DKIM_ED25519_PRIVATE_KEY"],
        "of the Ed25519 private key (PEM, or the base64 seed dknewkey writes)",
    )


def _jinja_template(key: str, template: str) -> str | None:
    """A Jinja template setting checked for syntax (None when empty); ConfigError says where."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import SandboxedEnvironment

    try:
        SandboxedEnvironment().parse(template)
    except TemplateSyntaxError as err:
        raise ConfigError(
            key, f"is not a valid Jinja template ({err.message}, line {err.lineno}): {template!r}"
        ) from None
    return template or None


def _require_readable(key: str, path: str | None, what: str) -> None:
    """Refuse a key file that is set but cannot be read; ``what`` says which file to give."""
    if path and not os.access(path, os.R_OK):
        raise ConfigError(key, f"cannot read the key file {path!r}: give the path {what}")


BOUNCE_MAILBOX_SCHEMES = ("imaps", "imap", "pop3s", "maildir")


def _validate_bounces(config: dict[str, Any]) -> None:
    """Bounce handling: the VERP address, the mailbox URL, the rule thresholds, webhooks."""
    for key in (
        "BOUNCE_ADDRESS",
        "BOUNCE_MAILBOX",
        "MAILGUN_SIGNING_KEY",
        "POSTMARK_WEBHOOK_USER",
        "POSTMARK_WEBHOOK_PASSWORD",
    ):
        value = config[key]
        config[key] = (str(value).strip() or None) if value is not None else None
    address = config["BOUNCE_ADDRESS"]
    if address:
        local = address.rpartition("@")[0]
        # The token (up to about 30 characters) must fit in RFC 5321's 64 for a local part.
        if not _SENDER_ADDRESS.fullmatch(address) or "+" in local or len(local) > 30:
            raise ConfigError(
                "BOUNCE_ADDRESS",
                "expected an address such as bounces@example.com "
                "(no '+', local part up to 30 characters), got "
                f"{address!r}",
            )
    mailbox = config["BOUNCE_MAILBOX"]
    if mailbox:
        parts = urlsplit(mailbox)
        if (
            parts.scheme not in BOUNCE_MAILBOX_SCHEMES
            or (parts.scheme != "maildir" and not (parts.hostname and parts.username))
            or (parts.scheme == "maildir" and not parts.path)
        ):
            raise ConfigError(
                "BOUNCE_MAILBOX",
                "expected imaps://user:password@host/INBOX, "
                "imap://... (STARTTLS), pop3s://user:password@host"
                " or maildir:///path; got "
                f"{parts.scheme or mailbox!r}",
            )
    config["BOUNCE_PROCESSED_FOLDER"] = (
        str(config["BOUNCE_PROCESSED_FOLDER"] or "").strip() or "Processed"
    )
    _as_number(config, "BOUNCE_POLL_MINUTES", float, 0.1, 24 * 60)
    _as_number(config, "SOFT_BOUNCE_LIMIT", int, 1, 100)
    _as_number(config, "SOFT_BOUNCE_DAYS", float, 0, 365)
    _as_number(config, "COMPLAINT_RATE_WARNING", float, 0, 1)
    _as_number(config, "HARD_BOUNCE_RATE_WARNING", float, 0, 1)
    _as_number(config, "WEBHOOK_MAX_AGE", int, 60, 24 * 3600)
    topics = config["SES_TOPIC_ARNS"] or ""
    if isinstance(topics, str):
        topics = [t.strip() for t in topics.split(",") if t.strip()]
    for topic in topics:
        if not topic.startswith("arn:aws"):
            raise ConfigError(
                "SES_TOPIC_ARNS",
                "expected comma-separated SNS topic ARNs such "
                "as arn:aws:sns:eu-west-1:123456789012:bounces, "
                f"got {topic!r}",
            )
    config["SES_TOPIC_ARNS"] = list(topics)
    if bool(config["POSTMARK_WEBHOOK_USER"]) != bool(config["POSTMARK_WEBHOOK_PASSWORD"]):
        raise ConfigError(
            "POSTMARK_WEBHOOK_PASSWORD",
            "set NEWSLETTER_POSTMARK_WEBHOOK_USER and "
            "NEWSLETTER_POSTMARK_WEBHOOK_PASSWORD "
            "together, or neither",
        )


def env_var(setting: str) -> str:
    """The environment variable that sets ``setting``."""
    return f"{PREFIX}_{setting}"


def running_demo(argv: list[str] | None = None) -> bool:
    """Whether this process runs ``newsletter demo`` (or ``flask ... demo``): no secret needed."""
    if os.environ.get(env_var("DEMO"), "").lower() in ("1", "true", "yes", "on"):
        return True
    import sys

    args = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")]
    # `flask --app app demo` leaves the app's name before the command.
    return "demo" in args[:3]


def _validate_worker(config: dict[str, Any]) -> None:
    """The worker's settings: a cron schedule that parses, a known time zone, and an author
    address when digests wait for her approval."""
    from .schedule import ScheduleError, parse_schedule, zone_named

    _as_bool(config, "DIGEST_APPROVAL")
    _as_number(config, "DIGEST_CATCHUP_HOURS", float, 0, 24 * 31)
    _as_number(config, "FEED_POLL_MINUTES", float, 0.1, 7 * 24 * 60)
    _as_number(config, "WORKER_POLL_SECONDS", float, 0.05, 3600)
    schedule = str(config.get("DIGEST_SCHEDULE") or "").strip()
    try:
        if schedule:
            parse_schedule(schedule)
    except ScheduleError as err:
        raise ConfigError(
            "DIGEST_SCHEDULE",
            f"{err} (for example '0 8 * * fri': Fridays at 8:00; empty: no scheduled digest)",
        ) from None
    config["DIGEST_SCHEDULE"] = schedule
    zone = str(config.get("TIMEZONE") or "UTC").strip()
    try:
        zone_named(zone)
    except ScheduleError as err:
        raise ConfigError("TIMEZONE", str(err)) from None
    config["TIMEZONE"] = zone
    author = str(config.get("AUTHOR_EMAIL") or "").strip() or None
    if author and not _SENDER_ADDRESS.fullmatch(author):
        raise ConfigError(
            "AUTHOR_EMAIL", f"expected an address such as you@example.com, got {author!r}"
        )
    if config["DIGEST_APPROVAL"] and not author:
        raise ConfigError(
            "AUTHOR_EMAIL",
            "is required when NEWSLETTER_DIGEST_APPROVAL is on: "
            "it is where the digest waits for your approval",
        )
    config["AUTHOR_EMAIL"] = author

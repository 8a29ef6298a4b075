"""Settings the author edits in the dashboard: stored in the database, validated, and taking
precedence over the environment's value (which stays the default when one is cleared).

Only texts and branding that need no restart are here; secrets (SMTP password, secret key,
DKIM key) stay in the environment and are never stored or shown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .admin_models import StoredSetting
from .config import FONT_STACKS, MIN_CONTRAST, contrast_ratio
from .errors import NewsletterError

# The environment's values, kept aside the first time stored settings are applied.
DEFAULTS_KEY = "_ENV_DEFAULTS_OF_STORED_SETTINGS"


class SettingsError(NewsletterError):
    """A setting's value is not valid; ``problems`` maps each field to what to change."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{key}: {why}" for key, why in problems.items()))
        self.problems = dict(problems)


def _text(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"keep it under {limit} characters (it has {len(value)})")
        if "\x00" in value:
            raise ValueError("remove the NUL character")
        return value

    return check


def _line(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        value = " ".join(value.split())
        return _text(limit)(value)

    return check


def _colour(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        raise ValueError("write it as # and six hexadecimal digits, for example #1a5fb4")
    ratio = contrast_ratio(value, "#ffffff")
    if ratio < MIN_CONTRAST:
        # The same rule as NEWSLETTER_BRAND_COLOR: white button labels must stay readable.
        raise ValueError(
            f"{value.lower()} has a contrast of {ratio:.2f}:1 with white, below the "
            f"{MIN_CONTRAST}:1 that WCAG AA asks for; choose a darker shade"
        )
    return value.lower()


def _template_text(limit: int) -> Callable[[str], str]:
    """Text that may use the digest's values ({{ posts|length }}): it must parse as Jinja."""
    text = _text(limit)

    def check(value: str) -> str:
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import SandboxedEnvironment

        value = text(value)
        try:
            SandboxedEnvironment().parse(value)
        except TemplateSyntaxError as err:
            raise ValueError(f"{err.message} (line {err.lineno}); check the {{ and }}") from None
        return value

    return check


def _font(value: str) -> str:
    value = value.strip().lower()
    if value not in FONT_STACKS:
        raise ValueError("choose serif or sans-serif")
    return value


def _https_url(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError("give a full https:// address of the image, for example https://...")
    return value


def _style(value: str) -> str:
    value = value.strip()
    if value not in ("summary", "full"):
        raise ValueError("choose summary or full")
    return value


def _switch(value: str) -> str:
    word = value.strip().lower()
    if word in ("on", "true", "yes", "1"):
        return "true"
    if word in ("off", "false", "no", "0"):
        return "false"
    raise ValueError("choose on or off")


def _schedule(value: str) -> str:
    from .schedule import parse_schedule

    value = " ".join(value.split())
    if value:
        parse_schedule(value)  # raises with a message that says what it understands
    return value


@dataclass(frozen=True)
class SettingField:
    """One editable setting: the configuration key, its label and its check."""

    key: str
    label: str
    check: Callable[[str], str]
    help: str = ""
    multiline: bool = False
    choices: tuple[str, ...] = ()  # shown as a list to choose from
    # How the stored text becomes the configuration's value (a switch becomes a bool).
    convert: Callable[[str], Any] = str


FIELDS: tuple[SettingField, ...] = (
    SettingField("SITE_NAME", "Site name", _line(200), "Shown in every email and page."),
    SettingField("DIGEST_TAGLINE", "Tagline", _line(200), "Above the digest's title."),
    SettingField(
        "DIGEST_INTRO", "Intro line", _template_text(500), "The first line of each digest."
    ),
    SettingField("DIGEST_SIGN_OFF", "Sign-off", _line(200), "Closes each digest, above your name."),
    SettingField(
        "WELCOME_TEXT",
        "Welcome text",
        _template_text(4000),
        "Sent when a reader confirms.",
        multiline=True,
    ),
    SettingField(
        "BRAND_COLOR",
        "Brand colour",
        _colour,
        "Links and buttons, as #rrggbb; dark enough for white text on it.",
    ),
    SettingField("LOGO_URL", "Logo address", _https_url, "An https:// image address."),
    SettingField("FONT", "Font", _font, "serif or sans-serif.", choices=("serif", "sans-serif")),
    SettingField(
        "DIGEST_STYLE", "Digest style", _style, "summary or full.", choices=("summary", "full")
    ),
    SettingField(
        "DIGEST_SCHEDULE",
        "Digest schedule",
        _schedule,
        "Cron, for example 0 9 * * 5 (Fridays at 09:00); empty: none. Applies at once.",
    ),
    SettingField(
        "DIGEST_APPROVAL",
        "Approve each scheduled digest",
        _switch,
        "true: the worker emails you a preview to approve first. Applies at once.",
        choices=("true", "false"),
        convert=lambda value: value == "true",
    ),
)
BY_KEY = {field.key: field for field in FIELDS}


def stored_settings(session: Session) -> dict[str, str]:
    """Every stored setting (key to value)."""
    return {row.key: row.value for row in session.scalars(select(StoredSetting))}


def validate(values: Mapping[str, str]) -> dict[str, str]:
    """The cleaned values (empty means "use the environment's"); raises SettingsError with
    one message per bad field."""
    cleaned: dict[str, str] = {}
    problems: dict[str, str] = {}
    for key, raw in values.items():
        field = BY_KEY.get(key)
        if field is None:
            problems[key] = "not a setting the dashboard can change"
            continue
        raw = raw.replace("\r\n", "\n")
        if not raw.strip():
            cleaned[key] = ""
            continue
        try:
            cleaned[key] = field.check(raw)
        except (ValueError, NewsletterError) as err:
            problems[key] = str(err)
    if problems:
        raise SettingsError(problems)
    return cleaned


def save_settings(session: Session, values: Mapping[str, str], *, now: datetime) -> dict[str, str]:
    """Validate and store ``values`` (an empty value removes the stored one); commits.
    Returns the cleaned values. Raises SettingsError and stores nothing when any is bad."""
    cleaned = validate(values)
    for key, value in cleaned.items():
        row = session.get(StoredSetting, key)
        if not value:
            if row is not None:
                session.execute(delete(StoredSetting).where(StoredSetting.key == key))
            continue
        if row is None:
            session.add(StoredSetting(key=key, value=value, updated_at=now))
        else:
            row.value, row.updated_at = value, now
    session.commit()
    return cleaned


def apply_stored_settings(session: Session, config: MutableMapping[str, Any]) -> None:
    """Overlay ``config`` with the stored settings; a setting no longer stored gets the
    environment's value back. Keys never stored are left alone."""
    overridden: dict[str, Any] = config.setdefault(DEFAULTS_KEY, {})
    stored = stored_settings(session)
    for key, value in stored.items():
        if key not in BY_KEY:
            continue
        if key not in overridden:
            overridden[key] = config.get(key)
        config[key] = BY_KEY[key].convert(value)
    for key in [key for key in overridden if key not in stored]:
        config[key] = overridden.pop(key)


def environment_default(config: Mapping[str, Any], key: str) -> Any:
    """What the environment says for ``key`` (before stored settings)."""
    defaults = config.get(DEFAULTS_KEY) or {}
    return defaults.get(key, config.get(key))


# --- rows the dashboard keeps that are not configuration ------------------------------------

# The author's note for the next digest (Markdown); cleared once a digest carrying it is composed.
NEXT_DIGEST_NOTE = "next_digest_note"
# The last run of the doctor's checks from the dashboard's Health page (JSON).
LAST_HEALTH_RUN = "last_health_run"


def stored_value(session: Session, key: str) -> str | None:
    """One stored row's value (``NEXT_DIGEST_NOTE``, ``LAST_HEALTH_RUN``, ...); None if unset."""
    row = session.get(StoredSetting, key)
    return row.value if row is not None else None


def store_value(session: Session, key: str, value: str | None, *, now: datetime) -> None:
    """Store (or, with None or blank, remove) one row; does not commit."""
    row = session.get(StoredSetting, key)
    if value is None or not value.strip():
        if row is not None:
            session.execute(delete(StoredSetting).where(StoredSetting.key == key))
    elif row is None:
        session.add(StoredSetting(key=key, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now


def next_digest_note(session: Session) -> str | None:
    """The note saved for the next digest, or None."""
    return stored_value(session, NEXT_DIGEST_NOTE)


def save_next_digest_note(session: Session, note: str, *, now: datetime) -> str | None:
    """Check and store the note for the next digest (blank removes it); commits. Raises
    NoteError (too long, or nothing left once unsafe HTML is removed) and stores nothing."""
    from .content.voice import check_note

    note = note.replace("\r\n", "\n").strip()
    if note:
        check_note(note)
    store_value(session, NEXT_DIGEST_NOTE, note or None, now=now)
    session.commit()
    return note or None

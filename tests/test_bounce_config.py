"""Bounce settings: defaults, types from the environment, and errors naming the variable."""

from __future__ import annotations

from typing import Any

import pytest

from newsletter.config import DEFAULTS, ConfigError, validate_config


def _config(**overrides: Any) -> dict[str, Any]:
    config = {**DEFAULTS, "TESTING": True, **overrides}
    validate_config(config)
    return config


def test_defaults_leave_everything_off() -> None:
    config = _config()
    assert config["BOUNCE_ADDRESS"] is None and config["BOUNCE_MAILBOX"] is None
    assert config["SES_TOPIC_ARNS"] == [] and config["MAILGUN_SIGNING_KEY"] is None
    assert (config["SOFT_BOUNCE_LIMIT"], config["SOFT_BOUNCE_DAYS"]) == (3, 15)
    assert (config["COMPLAINT_RATE_WARNING"], config["HARD_BOUNCE_RATE_WARNING"]) == (0.001, 0.02)


def test_environment_strings_are_typed() -> None:
    config = _config(
        SOFT_BOUNCE_LIMIT="5",
        SOFT_BOUNCE_DAYS="30",
        WEBHOOK_MAX_AGE="600",
        SES_TOPIC_ARNS="arn:aws:sns:eu-west-1:1:a, arn:aws:sns:us-east-1:1:b",
        BOUNCE_MAILBOX="imaps://u:p%40ss@imap.example.com/INBOX",
    )
    assert config["SOFT_BOUNCE_LIMIT"] == 5 and config["WEBHOOK_MAX_AGE"] == 600
    assert config["SES_TOPIC_ARNS"] == ["arn:aws:sns:eu-west-1:1:a", "arn:aws:sns:us-east-1:1:b"]


@pytest.mark.parametrize(
    ("setting", "value", "variable"),
    [
        ("BOUNCE_ADDRESS", "not an address", "NEWSLETTER_BOUNCE_ADDRESS"),
        ("BOUNCE_ADDRESS", "bounces+x@example.com", "NEWSLETTER_BOUNCE_ADDRESS"),
        ("BOUNCE_ADDRESS", "a" * 31 + "@example.com", "NEWSLETTER_BOUNCE_ADDRESS"),
        ("BOUNCE_MAILBOX", "http://example.com", "NEWSLETTER_BOUNCE_MAILBOX"),
        ("BOUNCE_MAILBOX", "imaps://imap.example.com/INBOX", "NEWSLETTER_BOUNCE_MAILBOX"),
        ("BOUNCE_MAILBOX", "maildir://", "NEWSLETTER_BOUNCE_MAILBOX"),
        ("SOFT_BOUNCE_LIMIT", "0", "NEWSLETTER_SOFT_BOUNCE_LIMIT"),
        ("COMPLAINT_RATE_WARNING", "2", "NEWSLETTER_COMPLAINT_RATE_WARNING"),
        ("SES_TOPIC_ARNS", "my-topic", "NEWSLETTER_SES_TOPIC_ARNS"),
        ("POSTMARK_WEBHOOK_USER", "postmark", "NEWSLETTER_POSTMARK_WEBHOOK_PASSWORD"),
    ],
)
def test_bad_bounce_settings_name_the_variable(setting: str, value: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        _config(**{setting: value})

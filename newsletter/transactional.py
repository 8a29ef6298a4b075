"""What every email says about the list, and the transactional emails (confirmation, welcome):
the template context and headers campaigns share, and each transactional message built once per
process and personalised per reader. Consent rules stay in ``subscriptions``; this only formats."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.utils import format_datetime, make_msgid
from typing import Any

from . import placeholders
from .mail import MessageTemplate, ReaderParts, mail_domain
from .services import Services


def email_context(config: Mapping[str, Any]) -> dict[str, Any]:
    """What every email template may use: the site, the sender, the footer's facts."""
    return {
        "site_name": config["SITE_NAME"],
        "site_url": config["SITE_URL"],
        "privacy_policy_url": config.get("PRIVACY_POLICY_URL"),
        "postal_address": config.get("POSTAL_ADDRESS") or "",
        "public_url": config["PUBLIC_URL"],
    }


def common_headers(config: Mapping[str, Any]) -> dict[str, str]:
    """Headers every email carries (Reply-To when configured)."""
    return {"Reply-To": config["REPLY_TO"]} if config.get("REPLY_TO") else {}


def list_headers(config: Mapping[str, Any], unsubscribe_url: str) -> dict[str, str]:
    """RFC 2369 / RFC 8058 headers every email to a confirmed reader carries."""
    targets = [f"<{unsubscribe_url}>"]
    if config.get("UNSUBSCRIBE_MAILTO"):
        targets.append(f"<mailto:{config['UNSUBSCRIBE_MAILTO']}?subject=unsubscribe>")
    return {
        "List-Id": f"{config['SITE_NAME']} <{config['LIST_ID']}>",
        "List-Unsubscribe": ", ".join(targets),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def confirmation_message(
    services: Services, address: str, confirm_url: str, now: datetime
) -> bytes:
    """The double-opt-in email to ``address``, with its confirm link."""
    config = services.config
    days = max(1, round(config["CONFIRM_TOKEN_MAX_AGE"] / 86400))
    # The reader's name is deliberately absent: echoing it would let anyone send text of
    # their choosing to any address through our confirmation emails.
    template = _template(
        services,
        "confirm",
        f"Please confirm your subscription to {config['SITE_NAME']}",
        {**email_context(config), "confirm_url": placeholders.CONFIRM_URL, "expires_days": days},
        common_headers(config),
    )
    return template.personalise(
        _parts(services, address, now, confirm_url=confirm_url), eight_bit=False
    )


def welcome_message(services: Services, address: str, unsubscribe_url: str, now: datetime) -> bytes:
    """The welcome email a newly confirmed reader gets, with the list headers."""
    config = services.config
    template = _template(
        services,
        "welcome",
        f"Welcome to {config['SITE_NAME']}",
        {**email_context(config), "unsubscribe_url": placeholders.UNSUBSCRIBE_URL},
        {**common_headers(config), **list_headers(config, placeholders.UNSUBSCRIBE_URL)},
    )
    return template.personalise(
        _parts(services, address, now, unsubscribe_url=unsubscribe_url), eight_bit=False
    )


def _template(
    services: Services, name: str, subject: str, context: dict[str, Any], headers: dict[str, str]
) -> MessageTemplate:
    """A transactional email rendered and serialised once per process, with slots for the
    recipient, Date, Message-ID and links: each message then costs a few replacements."""
    return services.cached(
        ("transactional", name, subject, tuple(sorted(context.items())), tuple(headers.items())),
        lambda: MessageTemplate.build(
            services.renderer.render(name, subject, context),
            sender=services.config["MAIL_FROM"],
            sender_name=services.config["MAIL_FROM_NAME"],
            headers=headers,
            date=None,
        ),
    )


def _parts(
    services: Services,
    address: str,
    now: datetime,
    *,
    confirm_url: str = "",
    unsubscribe_url: str = "",
) -> ReaderParts:
    return ReaderParts(
        recipient=address,
        unsubscribe_url=unsubscribe_url,
        message_id=make_msgid(domain=mail_domain(services.config["MAIL_FROM"])),
        confirm_url=confirm_url,
        date=format_datetime(now),
    )

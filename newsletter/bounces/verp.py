"""VERP: each delivery's envelope sender (Return-Path) names the campaign and the reader, so a
bounce that comes back to ``bounces+TOKEN@example.com`` says whose mail bounced.

TOKEN is base32 (lower case: many relays fold local parts to one case) of the campaign id and the
subscriber id as varints, followed by a 10-byte HMAC keyed from SECRET_KEY for this purpose only.
Campaign 0 marks a transactional email (confirmation, welcome). A token for campaign 10 000 and
reader 1 000 000 is 24 characters, well inside RFC 5321's 64 for a local part.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import NewsletterError

# Separates the bounce address's local part from the token (the Postfix/qmail convention:
# Postfix's recipient_delimiter = + delivers every bounces+TOKEN to the bounces mailbox).
DELIMITER = "+"
MAC_BYTES = 10
TRANSACTIONAL = 0  # the campaign id that marks confirmation and welcome emails
_PURPOSE = b"newsletter.verp.v1"
_MAX_LOCAL_PART = 64


class InvalidVerpError(NewsletterError, ValueError):
    """A token that was not made here, or was changed on the way: nobody can be matched."""


@dataclass(frozen=True)
class VerpClaim:
    """What a valid token says: the campaign (0 for a transactional email) and the reader."""

    campaign_id: int
    subscriber_id: int

    @property
    def transactional(self) -> bool:
        return self.campaign_id == TRANSACTIONAL


def _key(secret_key: str) -> bytes:
    # A key of its own, so a VERP MAC can never stand in for any other signature made from the
    # same secret.
    return hmac.new(secret_key.encode(), _PURPOSE, hashlib.sha256).digest()


def _varint(number: int) -> bytes:
    if number < 0:
        raise ValueError(f"ids are not negative: {number}")
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _read_varints(data: bytes) -> list[int]:
    numbers, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise InvalidVerpError("id too long")
        if not byte & 0x80:
            numbers.append(value)
            value, shift = 0, 0
    if shift:
        raise InvalidVerpError("truncated id")
    return numbers


def make_token(secret_key: str, campaign_id: int, subscriber_id: int) -> str:
    """The signed token for one delivery (``campaign_id`` 0: a transactional email)."""
    payload = _varint(campaign_id) + _varint(subscriber_id)
    mac = hmac.new(_key(secret_key), payload, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.b32encode(payload + mac).decode().rstrip("=").lower()


def read_token(secret_key: str, token: str) -> VerpClaim:
    """The campaign and reader a token names; :class:`InvalidVerpError` if it is not genuine."""
    text = token.strip().upper()
    if not text or len(text) > _MAX_LOCAL_PART:
        raise InvalidVerpError("not a VERP token")
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError) as err:
        raise InvalidVerpError("not a VERP token") from err
    if base64.b32encode(raw).decode().rstrip("=") != text:
        # Unused trailing bits set: the same bytes spelt another way; only one spelling is ours.
        raise InvalidVerpError("not a VERP token")
    payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    expected = hmac.new(_key(secret_key), payload, hashlib.sha256).digest()[:MAC_BYTES]
    if len(payload) < 2 or not hmac.compare_digest(mac, expected):
        raise InvalidVerpError("the token's signature does not match")
    numbers = _read_varints(payload)
    if len(numbers) != 2:
        raise InvalidVerpError("not a VERP token")
    return VerpClaim(campaign_id=numbers[0], subscriber_id=numbers[1])


def verp_address(config: Mapping[str, Any], campaign_id: int, subscriber_id: int) -> str:
    """``bounces+TOKEN@example.com`` for NEWSLETTER_BOUNCE_ADDRESS ``bounces@example.com``."""
    bounce_address = config["BOUNCE_ADDRESS"]
    if not bounce_address:
        raise ValueError("NEWSLETTER_BOUNCE_ADDRESS is not set")
    local, _, domain = str(bounce_address).rpartition("@")
    token = make_token(config["SECRET_KEY"], campaign_id, subscriber_id)
    address_local = f"{local}{DELIMITER}{token}"
    if len(address_local) > _MAX_LOCAL_PART:
        # Only a very long configured local part gets here; config validation refuses those.
        raise ValueError(f"the VERP local part {address_local!r} is over 64 characters")
    return f"{address_local}@{domain}"


def envelope_sender_for(
    config: Mapping[str, Any], campaign_id: int | None, subscriber_id: int | None
) -> str:
    """The envelope sender (MAIL FROM) for one message: the VERP address when
    NEWSLETTER_BOUNCE_ADDRESS is set, else MAIL_FROM as before. ``campaign_id`` None (or 0)
    is a transactional email; ``subscriber_id`` None (no reader, a test message) gets MAIL_FROM.
    """
    if not config.get("BOUNCE_ADDRESS") or subscriber_id is None:
        return str(config["MAIL_FROM"])
    return verp_address(config, campaign_id or TRANSACTIONAL, subscriber_id)


def envelope_senders(
    config: Mapping[str, Any], campaign_id: int | None
) -> Callable[[int | None], str]:
    """``envelope_sender_for`` for one campaign (None: transactional emails) as a function of
    the reader, for a sender that makes thousands a second: the key and the address's fixed
    parts are worked out once, so each reader costs one HMAC, and nothing without the setting.
    """
    mail_from = str(config["MAIL_FROM"])
    bounce_address = config.get("BOUNCE_ADDRESS")
    if not bounce_address:
        return lambda subscriber_id: mail_from
    local, _, domain = str(bounce_address).rpartition("@")
    prefix, suffix = f"{local}{DELIMITER}", f"@{domain}"
    campaign = _varint(campaign_id or TRANSACTIONAL)
    keyed = hmac.new(_key(config["SECRET_KEY"]), digestmod=hashlib.sha256)

    def sender(subscriber_id: int | None) -> str:
        if subscriber_id is None:
            return mail_from
        payload = campaign + _varint(subscriber_id)
        mac = keyed.copy()
        mac.update(payload)
        token = base64.b32encode(payload + mac.digest()[:MAC_BYTES]).decode().rstrip("=")
        return f"{prefix}{token.lower()}{suffix}"

    return sender


def claim_from_address(config: Mapping[str, Any], address: str) -> VerpClaim | None:
    """The claim in ``address`` if it is a VERP address of this list's bounce address with a
    genuine token; None if it is not one of ours. A forged token raises
    :class:`InvalidVerpError`."""
    bounce_address = config.get("BOUNCE_ADDRESS")
    if not bounce_address:
        return None
    local, _, domain = address.strip().strip("<>").rpartition("@")
    base_local, _, base_domain = str(bounce_address).rpartition("@")
    if domain.lower() != base_domain.lower():
        return None
    prefix = f"{base_local}{DELIMITER}".lower()
    if not local.lower().startswith(prefix):
        return None
    return read_token(config["SECRET_KEY"], local[len(prefix) :])

"""Email address validation and normalisation: one reader per address, whatever its case."""

from __future__ import annotations

import hashlib
import hmac

from email_validator import EmailNotValidError, validate_email

from .errors import NewsletterError

MAX_ADDRESS_LENGTH = 254


class InvalidAddressError(NewsletterError, ValueError):
    """The text is not one valid email address; the message tells the reader what to fix."""


def normalise_address(raw: object) -> str:
    """Return the canonical form of one address (domain lower-cased, IDNA), or raise
    InvalidAddressError.

    The local part is lower-cased too: nearly every mail system treats it case-insensitively,
    and two readers differing only in case would be a surprise to the author.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidAddressError("Please enter your email address.")
    text = raw.strip()
    if "\r" in text or "\n" in text or "\x00" in text:
        raise InvalidAddressError("The email address must be on one line.")
    if "," in text or ";" in text or " " in text:
        raise InvalidAddressError("Please enter just one email address.")
    if len(text) > MAX_ADDRESS_LENGTH:
        raise InvalidAddressError("That email address is too long.")
    try:
        result = validate_email(
            text,
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
        )
    except EmailNotValidError as err:
        raise InvalidAddressError(f"That doesn't look like an email address: {err}") from None
    address = f"{result.local_part.lower()}@{result.ascii_domain.lower()}"
    if len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidAddressError("That email address is too long.")
    return address


def address_hash(secret_key: str, address: str) -> str:
    """A keyed hash of a normalised address: lets us recognise an erased address, not recover it."""
    return hmac.new(secret_key.encode(), address.encode(), hashlib.sha256).hexdigest()

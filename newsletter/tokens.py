"""Signed links: confirm (expires, carries the subscriber's token generation and link key) and
unsubscribe (never expires). One salt per purpose, so a token made for one use is refused for the
other.

A confirm link names a reader by id *and* by their random link key: SQLite hands a purged
reader's id to the next sign-up, and the key (never reused) keeps an old link from confirming
that other person. Unsubscribe links carry only the id, as they always have, so links in emails
already sent keep working; they are only ever made for readers who confirmed, and such readers
are never deleted (erasure keeps the row), so their ids are never handed out again."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from itsdangerous import BadData, BadSignature, SignatureExpired, TimestampSigner
from itsdangerous.url_safe import URLSafeSerializer, URLSafeTimedSerializer

from .errors import NewsletterError

CONFIRM_SALT = "newsletter.confirm.v1"
UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"
# `newsletter doctor` posts a one-click unsubscribe on this id to see the route answer; ids
# start at 1, so it is nobody, and the route answers it without touching a reader.
PROBE_SUBSCRIBER_ID = 0


class TokenError(NewsletterError):
    """A link's token cannot be used."""


class InvalidTokenError(TokenError):
    """Tampered, truncated or made for another purpose."""


class ExpiredTokenError(TokenError):
    """Genuine but too old; carries who it was for so a new link can be offered."""

    def __init__(
        self,
        subscriber_id: int,
        generation: int,
        key: str | None = None,
        issued_at: datetime | None = None,
    ) -> None:
        super().__init__("This link has expired.")
        self.subscriber_id = subscriber_id
        self.generation = generation
        self.key = key
        self.issued_at = issued_at


@dataclass(frozen=True)
class ConfirmClaim:
    """What a valid confirm token says."""

    subscriber_id: int
    generation: int
    # The reader's link key; None in a link made before keys existed (see ``issued_at``).
    key: str | None = None
    # When the link was made: a keyless link is only good for a reader created before then.
    issued_at: datetime | None = None


def _clocked_signer(clock: Callable[[], datetime]) -> type[TimestampSigner]:
    class ClockedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock().timestamp())

    return ClockedSigner


class Tokens:
    """Makes and reads the tokens in confirm and unsubscribe links."""

    def __init__(
        self, secret_key: str, clock: Callable[[], datetime], confirm_max_age: int
    ) -> None:
        self._confirm = URLSafeTimedSerializer(
            secret_key, salt=CONFIRM_SALT, signer=_clocked_signer(clock)
        )
        self._unsubscribe = URLSafeSerializer(secret_key, salt=UNSUBSCRIBE_SALT)
        self._max_age = confirm_max_age
        # A send makes one unsubscribe token per reader: the signer's key is derived once and
        # the HMAC state keyed once, instead of per token (itsdangerous does both per call).
        signer = self._unsubscribe.make_signer()
        self._unsubscribe_mac = hmac.new(signer.derive_key(), digestmod=signer.digest_method)

    def confirm_token(self, subscriber_id: int, generation: int, key: str) -> str:
        """A token for the confirm link of the reader with this id and link key."""
        return self._confirm.dumps([subscriber_id, generation, key])

    def read_confirm_token(self, token: str) -> ConfirmClaim:
        """The claim in a confirm token, or InvalidTokenError / ExpiredTokenError."""
        try:
            payload, timestamp = self._confirm.loads(
                token, max_age=self._max_age, return_timestamp=True
            )
        except SignatureExpired as err:
            claim = self._claim(
                self._confirm.load_payload(err.payload) if err.payload else None, err.date_signed
            )
            raise ExpiredTokenError(
                claim.subscriber_id, claim.generation, claim.key, claim.issued_at
            ) from err
        except (BadSignature, BadData) as err:
            raise InvalidTokenError("This link is not valid.") from err
        return self._claim(payload, timestamp)

    def unsubscribe_token(self, subscriber_id: int) -> str:
        """A token for the unsubscribe link; it never expires.

        The same string as ``URLSafeSerializer.dumps``: the compact JSON of an id is its
        digits, and zlib (at least 9 octets with its header and checksum) never shortens nine
        digits or fewer, so the payload is their URL-safe base64."""
        if type(subscriber_id) is not int or not 0 <= subscriber_id < 10**9:
            return self._unsubscribe.dumps(subscriber_id)
        payload = base64.urlsafe_b64encode(b"%d" % subscriber_id).rstrip(b"=")
        mac = self._unsubscribe_mac.copy()
        mac.update(payload)
        signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")
        return (payload + b"." + signature).decode("ascii")

    def read_unsubscribe_token(self, token: str) -> int:
        """The subscriber id in an unsubscribe token, or InvalidTokenError."""
        try:
            payload = self._unsubscribe.loads(token)
        except (BadSignature, BadData) as err:
            raise InvalidTokenError("This link is not valid.") from err
        if not isinstance(payload, int) or isinstance(payload, bool):
            raise InvalidTokenError("This link is not valid.")
        return payload

    @staticmethod
    def _claim(payload: Any, issued_at: datetime | None = None) -> ConfirmClaim:
        # [id, generation, key]; [id, generation] from before link keys existed.
        if (
            not isinstance(payload, list)
            or len(payload) not in (2, 3)
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in payload[:2])
            or (len(payload) == 3 and not isinstance(payload[2], str))
        ):
            raise InvalidTokenError("This link is not valid.")
        return ConfirmClaim(
            subscriber_id=payload[0],
            generation=payload[1],
            key=payload[2] if len(payload) == 3 else None,
            issued_at=issued_at.astimezone(UTC) if issued_at else None,
        )

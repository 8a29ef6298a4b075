"""Signed links: confirm (expires, carries the subscriber's token generation) and unsubscribe
(never expires). One salt per purpose, so a token made for one use is refused for the other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itsdangerous import BadData, BadSignature, SignatureExpired, TimestampSigner
from itsdangerous.url_safe import URLSafeSerializer, URLSafeTimedSerializer

CONFIRM_SALT = "newsletter.confirm.v1"
UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"
# `newsletter doctor` posts a one-click unsubscribe on this id to see the route answer; ids
# start at 1, so it is nobody, and the route answers it without touching a reader.
PROBE_SUBSCRIBER_ID = 0


class TokenError(Exception):
    """A link's token cannot be used."""


class TokenInvalid(TokenError):
    """Tampered, truncated or made for another purpose."""


class TokenExpired(TokenError):
    """Genuine but too old; carries who it was for so a new link can be offered."""

    def __init__(self, subscriber_id: int, generation: int) -> None:
        super().__init__("This link has expired.")
        self.subscriber_id = subscriber_id
        self.generation = generation


@dataclass(frozen=True)
class ConfirmClaim:
    """What a valid confirm token says."""

    subscriber_id: int
    generation: int


def _clocked_signer(clock: Callable[[], datetime]) -> type[TimestampSigner]:
    class ClockedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock().timestamp())

    return ClockedSigner


class Tokens:
    """Makes and reads the tokens in confirm and unsubscribe links."""

    def __init__(self, secret_key: str, clock: Callable[[], datetime],
                 confirm_max_age: int) -> None:
        self._confirm = URLSafeTimedSerializer(
            secret_key, salt=CONFIRM_SALT, signer=_clocked_signer(clock)
        )
        self._unsubscribe = URLSafeSerializer(secret_key, salt=UNSUBSCRIBE_SALT)
        self._max_age = confirm_max_age

    def confirm_token(self, subscriber_id: int, generation: int) -> str:
        """A token for the confirm link."""
        return self._confirm.dumps([subscriber_id, generation])

    def read_confirm_token(self, token: str) -> ConfirmClaim:
        """The claim in a confirm token, or TokenInvalid / TokenExpired."""
        try:
            payload = self._confirm.loads(token, max_age=self._max_age)
        except SignatureExpired as err:
            claim = self._claim(self._confirm.load_payload(err.payload) if err.payload else None)
            raise TokenExpired(claim.subscriber_id, claim.generation) from err
        except (BadSignature, BadData) as err:
            raise TokenInvalid("This link is not valid.") from err
        return self._claim(payload)

    def unsubscribe_token(self, subscriber_id: int) -> str:
        """A token for the unsubscribe link; it never expires."""
        return self._unsubscribe.dumps(subscriber_id)

    def read_unsubscribe_token(self, token: str) -> int:
        """The subscriber id in an unsubscribe token, or TokenInvalid."""
        try:
            payload = self._unsubscribe.loads(token)
        except (BadSignature, BadData) as err:
            raise TokenInvalid("This link is not valid.") from err
        if not isinstance(payload, int) or isinstance(payload, bool):
            raise TokenInvalid("This link is not valid.")
        return payload

    @staticmethod
    def _claim(payload: Any) -> ConfirmClaim:
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in payload)
        ):
            raise TokenInvalid("This link is not valid.")
        return ConfirmClaim(subscriber_id=payload[0], generation=payload[1])

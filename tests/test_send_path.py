"""The per-reader hot path of a send: what each reader's copy costs stays per campaign where it
can, and gives exactly what the slower general code gives."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from itsdangerous import Signer
from itsdangerous.url_safe import URLSafeSerializer

from newsletter.tokens import UNSUBSCRIBE_SALT, InvalidTokenError, Tokens

SECRET = "a-test-secret-key-that-is-long-enough-for-production"


def _tokens_clock() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


def _tokens() -> Tokens:
    return Tokens(SECRET, _tokens_clock, 3600)


@pytest.mark.parametrize("subscriber_id", [0, 1, 7, 99, 12_345, 10**9, 2**31 + 5, 10**18, 2**70])
def test_unsubscribe_tokens_are_itsdangerous_tokens(subscriber_id: int) -> None:
    # Links already in readers' inboxes were made by itsdangerous: the fast path must give the
    # very same string, and read back to the same id.
    tokens = _tokens()
    expected = URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT).dumps(subscriber_id)
    assert tokens.unsubscribe_token(subscriber_id) == expected
    assert tokens.read_unsubscribe_token(expected) == subscriber_id


def test_an_unsubscribe_token_of_another_secret_is_refused() -> None:
    other = Tokens("another-secret-key-that-is-long-enough-too", _tokens_clock, 3600)
    with pytest.raises(InvalidTokenError):
        _tokens().read_unsubscribe_token(other.unsubscribe_token(5))


def test_a_send_derives_the_unsubscribe_signing_key_once_not_per_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    derive = Signer.derive_key

    def counting(self: Signer, secret_key: str | bytes | None = None) -> bytes:
        nonlocal calls
        calls += 1
        return derive(self, secret_key)

    monkeypatch.setattr(Signer, "derive_key", counting)
    tokens = _tokens()
    made = [tokens.unsubscribe_token(n) for n in range(1, 201)]
    assert len(set(made)) == 200
    assert calls <= 1


def test_a_sender_wakes_the_feeder_once_half_the_queue_is_free_not_at_every_message() -> None:
    # The feeder waits on a full work queue; waking it (a thread hand-off) for every message
    # taken costs more than the message's own work. It is woken once half the queue is free.
    import queue

    from newsletter.sending.engine import _take
    from newsletter.sending.ledger import _Work

    work: queue.Queue[_Work | None] = queue.Queue(maxsize=8)
    for n in range(8):
        work.put(_Work(n, n, f"reader{n}@example.com", None, 0, None))
    wakes = 0
    notify = work.not_full.notify

    def counting(n: int = 1) -> None:
        nonlocal wakes
        wakes += 1
        notify(n)

    work.not_full.notify = counting  # type: ignore[method-assign]
    taken = [_take(work) for _ in range(8)]
    assert [item.delivery_id for item in taken if item is not None] == list(range(8))
    assert wakes == 5  # at 4, 3, 2, 1 and 0 left: never more than half the queue goes unfed
    work.put(None)
    assert _take(work) is None

"""VERP tokens: short, lower case, signed; they round-trip and refuse tampering."""

from __future__ import annotations

import pytest

from newsletter.bounces.verp import (
    InvalidVerpError,
    VerpClaim,
    claim_from_address,
    envelope_sender_for,
    envelope_senders,
    make_token,
    read_token,
    verp_address,
)

CONFIG = {
    "SECRET_KEY": "test-secret",
    "BOUNCE_ADDRESS": "bounces@example.com",
    "MAIL_FROM": "hello@example.com",
}


@pytest.mark.parametrize(
    ("campaign", "subscriber"), [(0, 1), (1, 1), (127, 128), (10_000, 1_000_000), (2**40, 2**31)]
)
def test_token_round_trips(campaign: int, subscriber: int) -> None:
    token = make_token("test-secret", campaign, subscriber)
    assert token == token.lower() and token.isalnum()
    assert read_token("test-secret", token) == VerpClaim(campaign, subscriber)


def test_address_is_short_and_case_insensitive() -> None:
    address = verp_address(CONFIG, 10_000, 1_000_000)
    local, domain = address.split("@")
    assert domain == "example.com" and local.startswith("bounces+")
    assert len(local) <= 64
    # Relays may fold the local part's case on the way back.
    assert claim_from_address(CONFIG, address.upper()) == VerpClaim(10_000, 1_000_000)
    assert claim_from_address(CONFIG, f"<{address}>") == VerpClaim(10_000, 1_000_000)


def test_tampered_token_is_rejected() -> None:
    token = make_token("test-secret", 5, 42)
    for position in range(len(token)):
        changed = (
            token[:position] + ("a" if token[position] != "a" else "b") + token[position + 1 :]
        )
        with pytest.raises(InvalidVerpError):
            read_token("test-secret", changed)


def test_token_made_with_another_secret_is_rejected() -> None:
    with pytest.raises(InvalidVerpError):
        read_token("test-secret", make_token("other-secret", 5, 42))


@pytest.mark.parametrize("junk", ["", "a", "!!!!", "aaaaaaaaaaaaaaaaaaaaaaaa", "x" * 80])
def test_junk_is_rejected(junk: str) -> None:
    with pytest.raises(InvalidVerpError):
        read_token("test-secret", junk)


def test_other_addresses_are_not_claims() -> None:
    assert claim_from_address(CONFIG, "someone@example.com") is None
    assert claim_from_address(CONFIG, "bounces+abc@elsewhere.example") is None
    assert claim_from_address({**CONFIG, "BOUNCE_ADDRESS": None}, "bounces+abc@example.com") is None


def test_envelope_sender_is_mail_from_without_a_bounce_address() -> None:
    assert envelope_sender_for({**CONFIG, "BOUNCE_ADDRESS": None}, 3, 7) == "hello@example.com"
    assert envelope_sender_for(CONFIG, 3, None) == "hello@example.com"
    sender = envelope_sender_for(CONFIG, 3, 7)
    assert claim_from_address(CONFIG, sender) == VerpClaim(3, 7)
    # Transactional emails (confirmation, welcome) get a token with campaign 0.
    transactional = claim_from_address(CONFIG, envelope_sender_for(CONFIG, None, 7))
    assert transactional == VerpClaim(0, 7) and transactional.transactional


def test_the_per_run_sender_gives_the_same_addresses_as_envelope_sender_for() -> None:
    for campaign in (None, 0, 7, 10_000):
        senders = envelope_senders(CONFIG, campaign)
        for reader in (None, 1, 128, 1_000_000):
            assert senders(reader) == envelope_sender_for(CONFIG, campaign, reader)
    plain = {**CONFIG, "BOUNCE_ADDRESS": None}
    assert envelope_senders(plain, 7)(42) == "hello@example.com"

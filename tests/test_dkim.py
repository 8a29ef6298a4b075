"""DKIM signing (newsletter/dkim.py): signatures that dkimpy verifies on campaign messages and on
the edge cases of relaxed canonicalisation, the per-campaign body hash checked against a
whole-body canonicalisation, Ed25519 as an additional signature, and keys parsed once per run."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter import dkim as ourdkim
from newsletter import placeholders as ph
from newsletter.db import db
from newsletter.dkim import BodyHasher, DkimError, DkimSigner, relaxed_body
from newsletter.mail import MessageTemplate, ReaderParts, reader_greeting
from newsletter.rendering import RenderedEmail
from tests.conftest import PUBLIC_URL
from tests.smtp_sink import SmtpSink
from tests.test_sending import add_readers, digest_ready, posts_folder

__all__ = ["posts_folder"]  # a fixture shared with test_sending

DOMAIN = "blog.example.com"
NAMES = [None, "Ada", "Zoë Ångström", "李小龙 " * 8, 'O\'Brien, "Bob"', ".dot", "a" * 90]


# --- keys and a DNS that knows them ----------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_pem() -> tuple[bytes, bytes]:
    """A 2048-bit RSA key: (PEM private key, base64 public key for the TXT record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public)


@pytest.fixture(scope="module")
def ed_pem() -> tuple[bytes, bytes]:
    """An Ed25519 key: (PEM private key, base64 raw public key, as RFC 8463 puts it in DNS)."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return pem, base64.b64encode(public)


def dns(rsa_public: bytes, ed_public: bytes | None = None) -> Callable[..., bytes]:
    """dkimpy's DNS lookup, answering for selector s1 (RSA) and e1 (Ed25519) only."""
    records = {f"s1._domainkey.{DOMAIN}.".encode(): b"v=DKIM1; k=rsa; p=" + rsa_public}
    if ed_public is not None:
        records[f"e1._domainkey.{DOMAIN}.".encode()] = b"v=DKIM1; k=ed25519; p=" + ed_public

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return records[name]

    return lookup


def verified(data: bytes, lookup: Callable[..., bytes]) -> list[str]:
    """The a= of every DKIM-Signature that dkimpy verifies; fails on any that it does not."""
    algorithms = re.findall(rb"(?m)^DKIM-Signature:.*? a=([\w-]+);", data)
    assert algorithms, "not signed"
    for index in range(len(algorithms)):
        checker = dkim.DKIM(data)
        assert checker.verify(idx=index, dnsfunc=lookup), f"signature {index} does not verify"
    return [a.decode() for a in algorithms]


def signer(rsa_pem: tuple[bytes, bytes], ed_pem: tuple[bytes, bytes] | None = None) -> DkimSigner:
    return DkimSigner(
        DOMAIN,
        "s1",
        ourdkim.load_rsa_key(rsa_pem[0], "RSA"),
        "e1" if ed_pem else None,
        ourdkim.load_ed25519_key(ed_pem[0], "ED") if ed_pem else None,
        now=lambda: 1_790_000_000.0,
    )


def template(
    made_signer: DkimSigner, text: str, html: str = "", subject: str = "Hello"
) -> MessageTemplate:
    html = html or f'<p>{ph.GREETING}</p>\n<p><a href="{ph.UNSUBSCRIBE_URL}">leave</a></p>'
    return MessageTemplate.build(
        RenderedEmail(subject=subject, html=html, text=text),
        sender=f"news@{DOMAIN}",
        sender_name="Café Calme",
        date=datetime(2026, 11, 2, tzinfo=UTC),
        headers={
            "List-Id": f"Calm Corner <news.{DOMAIN}>",
            "List-Unsubscribe": f"<{ph.UNSUBSCRIBE_URL}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        dkim=made_signer,
    )


def reader(n: int, name: str | None) -> ReaderParts:
    return ReaderParts(
        recipient=f"reader{n}@example.com",
        unsubscribe_url=f"{PUBLIC_URL}/unsubscribe/tok{n}.abc-_x",
        message_id=f"<c1.r{n}.abc@{DOMAIN}>",
        greeting=reader_greeting(name),
        name=name,
    )


def unstuffed(wire: bytes) -> bytes:
    """What an SMTP server stores for DATA ``wire`` (RFC 5321 4.5.2)."""
    return re.sub(rb"(?m)^\.", b"", wire)


# --- signatures on campaign messages ---------------------------------------------------------

DIGEST_TEXT = (
    f"{ph.GREETING}\n\nThree new posts this week.\n\n"
    "Rest Is Not a Reward\nhttps://blog.example.com/rest\n\n"
    f"Unsubscribe: {ph.UNSUBSCRIBE_URL}\n"
)

CASES = {
    "plain digest": dict(text=DIGEST_TEXT),
    "non-ASCII subject": dict(
        text=DIGEST_TEXT, subject="Grüße — slow mornings ☕, und noch viel mehr Ruhe " * 3
    ),
    "long header that folds": dict(text=DIGEST_TEXT, subject="A calm subject " * 20),
    "lines starting with a dot": dict(
        text=f"{ph.GREETING}\n.\n..two dots\n.hidden\n{ph.UNSUBSCRIBE_URL}\n.",
        html=f"<p>{ph.GREETING}</p>\n.<br>\n..<br>",
    ),
    "trailing blank lines and white space": dict(
        text=f"{ph.GREETING}  \t\n\n  spaced   out\t\n{ph.UNSUBSCRIBE_URL}\n \n\t\n\n\n"
    ),
    "white space next to the slots": dict(
        text=f"x  {ph.GREETING}  y\t\n\t{ph.UNSUBSCRIBE_URL} \n{ph.RECIPIENT}\n"
    ),
    "long 8-bit lines": dict(
        text="é" * 400 + f" {ph.GREETING}\n" + "y" * 650 + f" {ph.UNSUBSCRIBE_URL}\n"
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("eight_bit", [True, False])
def test_each_copy_verifies_with_dkimpy_as_built_and_as_sent(
    rsa_pem: tuple[bytes, bytes], case: str, eight_bit: bool
) -> None:
    made = template(signer(rsa_pem), **CASES[case])
    lookup = dns(rsa_pem[1])
    for n, name in enumerate(NAMES):
        data = made.personalise(reader(n, name), eight_bit=eight_bit)
        assert verified(data, lookup) == ["rsa-sha256"]
        # The copy for SMTP is signed before its line-leading dots are doubled.
        wire = made.personalise_for_smtp(reader(n, name), eight_bit=eight_bit)
        assert unstuffed(wire) == data
        assert verified(unstuffed(wire), lookup) == ["rsa-sha256"]
        tampered = data.replace(b"tok", b"tak", 1)
        assert tampered != data and not dkim.verify(tampered, dnsfunc=lookup)


def test_the_signature_covers_the_unsubscribe_headers_and_stays_short_per_line(
    rsa_pem: tuple[bytes, bytes],
) -> None:
    data = template(signer(rsa_pem), DIGEST_TEXT).personalise(reader(1, "Ada"))
    field = re.match(rb"DKIM-Signature:.*?\r\n(?![ \t])", data, re.S)
    assert field
    assert all(len(line) <= 128 for line in field.group().split(b"\r\n"))
    h = re.search(rb"h=([^;]+);", field.group().replace(b"\r\n", b"")).group(1)  # type: ignore[union-attr]
    signed = h.decode().split(":")
    assert {
        "list-unsubscribe",
        "list-unsubscribe-post",
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-id",
        "mime-version",
        "content-type",
    } <= set(signed)
    assert b"t=1790000000;" in field.group() and b"c=relaxed/relaxed;" in field.group()
    # A second List-Unsubscribe-Post added below the signed one breaks the signature.
    extra = data.replace(b"\r\n\r\n", b"\r\nList-Unsubscribe-Post: nothing\r\n\r\n", 1)
    assert not dkim.verify(extra, dnsfunc=dns(rsa_pem[1]))


def test_ed25519_is_an_additional_signature_and_both_verify(
    rsa_pem: tuple[bytes, bytes], ed_pem: tuple[bytes, bytes]
) -> None:
    made = template(signer(rsa_pem, ed_pem), **CASES["lines starting with a dot"])
    lookup = dns(rsa_pem[1], ed_pem[1])
    for eight_bit in (True, False):
        data = made.personalise(reader(1, "Zoë"), eight_bit=eight_bit)
        # RSA first: a verifier that looks only at the top signature still finds it.
        assert verified(data, lookup) == ["rsa-sha256", "ed25519-sha256"]
        assert verified(
            unstuffed(made.personalise_for_smtp(reader(1, "Zoë"), eight_bit=eight_bit)), lookup
        ) == ["rsa-sha256", "ed25519-sha256"]


def test_whole_messages_sign_like_the_template_does(rsa_pem: tuple[bytes, bytes]) -> None:
    made = signer(rsa_pem)
    fast = template(made, **CASES["trailing blank lines and white space"])
    data = fast.personalise(reader(3, "Ada"))
    signature, message = data.split(b"\r\nFrom: ", 1)
    assert made.sign(b"From: " + message) == data
    assert verified(made.sign(b"From: a@" + DOMAIN.encode() + b"\r\n\r\n"), dns(rsa_pem[1])) == [
        "rsa-sha256"
    ]  # an empty body


def test_a_digest_template_takes_the_shortcut_for_ordinary_readers(
    rsa_pem: tuple[bytes, bytes],
) -> None:
    made = template(signer(rsa_pem), DIGEST_TEXT)
    # The body hasher of each serialisation (private: this checks the shortcut is in use).
    for serialised in (made._eight_bit, made._seven_bit):
        signing = made._signing[id(serialised)]
        assert signing is not None and signing.body.piecewise
        for n, name in enumerate(NAMES):
            from newsletter.mail import _slot_values

            values = _slot_values(serialised.slots, reader(n, name))
            assert signing.body.safe(values[signing.head_slots :]), name


# --- the body hash: piece by piece equals whole -----------------------------------------------

_CHUNK = st.lists(
    st.sampled_from([b"a", b".", b" ", b"\t", b"\r\n", b"\r", b"\n", b"=", b"\xc3\xa9"]),
    max_size=12,
).map(b"".join)


@settings(max_examples=400, deadline=None, database=None)
@given(_CHUNK)
def test_our_relaxed_body_is_dkimpys(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=1500, deadline=None, database=None)
@given(st.lists(_CHUNK, min_size=1, max_size=6), st.data())
def test_the_body_hash_piece_by_piece_is_the_whole_bodys(
    literals: list[bytes], data: st.DataObject
) -> None:
    values = data.draw(st.lists(_CHUNK, min_size=len(literals) - 1, max_size=len(literals) - 1))
    body = literals[0] + b"".join(v + lit for v, lit in zip(values, literals[1:], strict=True))
    hasher = BodyHasher(literals)
    assert hasher.digest(values) == hashlib.sha256(Relaxed.canonicalize_body(body)).digest()


def test_the_body_hash_shortcut_is_taken_only_where_joins_are_safe() -> None:
    hasher = BodyHasher([b"Hi ", b" there\r\n", b"\nend\r\n\r\n"])
    assert hasher.safe([b"Ada", b"x"])
    assert not hasher.safe([b" Ada", b"x"])  # a run of spaces across the join
    assert not hasher.safe([b"Ada", b"x\r"])  # a CRLF split across the join
    assert not hasher.safe([b"", b"x"])  # an empty value joins two literals
    assert not BodyHasher([b"a", b"\r\n \r\n"]).safe([b"b"])  # the end is all blank lines
    for values in ([b" Ada", b"x"], [b"Ada", b"x\r"], [b"", b"x"]):
        whole = b"Hi " + values[0] + b" there\r\n" + values[1] + b"\nend\r\n\r\n"
        assert hasher.digest(values) == hashlib.sha256(relaxed_body(whole)).digest()


# --- keys: read once, bad ones named ---------------------------------------------------------


def test_a_run_signs_every_copy_and_parses_each_key_once(
    make_app: Callable[..., Flask],
    tmp_path: Path,
    posts_folder: Path,
    smtp_sink: SmtpSink,
    rsa_pem: tuple[bytes, bytes],
    ed_pem: tuple[bytes, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "dkim.pem").write_bytes(rsa_pem[0])
    (tmp_path / "dkim-ed25519.pem").write_bytes(ed_pem[0])
    loads: list[bytes] = []
    real_load = ourdkim.load_pem_private_key

    def counting_load(data: bytes, password: Any = None) -> Any:
        loads.append(data)
        return real_load(data, password=password)

    monkeypatch.setattr(ourdkim, "load_pem_private_key", counting_load)
    app = make_app(
        DKIM_DOMAIN=DOMAIN,
        DKIM_SELECTOR="s1",
        DKIM_PRIVATE_KEY=str(tmp_path / "dkim.pem"),
        DKIM_ED25519_SELECTOR="e1",
        DKIM_ED25519_PRIVATE_KEY=str(tmp_path / "dkim-ed25519.pem"),
    )
    from tests.conftest import FrozenClock

    with app.app_context():
        add_readers(db.session(), FrozenClock(datetime(2026, 11, 2, 9, tzinfo=UTC)), 6)
    runner = app.test_cli_runner()
    digest_ready(runner, posts_folder)
    # A test copy first, then the digest: one process, one parse of each key.
    for args in (["--to", "author@example.com"], ["--yes"]):
        result = runner.invoke(args=["send-digest", *args])
        assert result.exit_code == 0, result.output
    assert len(smtp_sink.messages) == 7
    lookup = dns(rsa_pem[1], ed_pem[1])
    for got in smtp_sink.messages:
        assert verified(got.data, lookup) == ["rsa-sha256", "ed25519-sha256"]
        assert got.message["List-Unsubscribe"]
    assert sorted(loads) == sorted([rsa_pem[0], ed_pem[0]])  # each key once for the whole run


def test_dkimpys_ed25519_seed_file_is_accepted(rsa_pem: tuple[bytes, bytes]) -> None:
    seed = b"nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="  # RFC 8463's example private key
    key = ourdkim.load_ed25519_key(seed + b"\n", "NEWSLETTER_DKIM_ED25519_PRIVATE_KEY")
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert base64.b64encode(public) == b"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


@pytest.mark.parametrize(
    ("settings_", "variable"),
    [
        ({"DKIM_ED25519_SELECTOR": "e1"}, "NEWSLETTER_DKIM_ED25519_PRIVATE_KEY"),
        ({"DKIM_ED25519_PRIVATE_KEY": "KEY"}, "NEWSLETTER_DKIM_ED25519_SELECTOR"),
        (
            {
                "DKIM_DOMAIN": None,
                "DKIM_SELECTOR": None,
                "DKIM_PRIVATE_KEY": None,
                "DKIM_ED25519_SELECTOR": "e1",
                "DKIM_ED25519_PRIVATE_KEY": "KEY",
            },
            "NEWSLETTER_DKIM_ED25519_PRIVATE_KEY",
        ),
        (
            {"DKIM_ED25519_SELECTOR": "e1", "DKIM_ED25519_PRIVATE_KEY": "/nonexistent/ed.pem"},
            "NEWSLETTER_DKIM_ED25519_PRIVATE_KEY",
        ),
    ],
)
def test_bad_ed25519_settings_stop_start_up_naming_the_variable(
    config: dict[str, Any],
    tmp_path: Path,
    rsa_pem: tuple[bytes, bytes],
    ed_pem: tuple[bytes, bytes],
    settings_: dict[str, Any],
    variable: str,
) -> None:
    from newsletter import create_app
    from newsletter.config import ConfigError

    (tmp_path / "rsa.pem").write_bytes(rsa_pem[0])
    (tmp_path / "ed.pem").write_bytes(ed_pem[0])
    base = {
        "DKIM_DOMAIN": DOMAIN,
        "DKIM_SELECTOR": "s1",
        "DKIM_PRIVATE_KEY": str(tmp_path / "rsa.pem"),
    }
    given_ = {k: (str(tmp_path / "ed.pem") if v == "KEY" else v) for k, v in settings_.items()}
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        create_app({**config, **base, **given_})


@pytest.mark.parametrize(
    ("rsa_file", "message"),
    [
        (b"not a key", "NEWSLETTER_DKIM_PRIVATE_KEY: not an unencrypted private key in PEM form"),
        ("ed25519", "NEWSLETTER_DKIM_PRIVATE_KEY: the key is not an RSA key"),
    ],
)
def test_a_key_that_is_not_an_rsa_key_is_named(
    tmp_path: Path, ed_pem: tuple[bytes, bytes], rsa_file: Any, message: str
) -> None:
    path = tmp_path / "dkim.pem"
    path.write_bytes(ed_pem[0] if rsa_file == "ed25519" else rsa_file)
    with pytest.raises(DkimError, match=f"^{re.escape(message)}"):
        DkimSigner.from_config(
            {"DKIM_DOMAIN": DOMAIN, "DKIM_SELECTOR": "s1", "DKIM_PRIVATE_KEY": str(path)}
        )

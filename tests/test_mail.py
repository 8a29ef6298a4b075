"""The campaign message: headers, MIME structure, encodings, line lengths, 8BITMIME fallback
and DKIM, checked on what a real SMTP server received, plus the quoted-printable pieces."""

from __future__ import annotations

import base64
import quopri
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from flask import Flask
from sqlalchemy.orm import Session

from newsletter import placeholders as ph
from newsletter.db import db
from newsletter.dkim import DKIM_HEADERS
from newsletter.mail import MessageTemplate, ReaderParts, qp_value, reader_greeting, to_header_value
from newsletter.rendering import RenderedEmail
from newsletter.smtp import SmtpSettings, SmtpTransport
from tests.conftest import PUBLIC_URL, FrozenClock
from tests.smtp_sink import Received, SmtpSink
from tests.test_sending import add_readers, make_campaign, send

NAMES = [
    "Zoë Ångström",
    'O\'Brien, "Bob"',
    "李小龙",
    "Ada",
    "=?utf-8?q?not-a-word?= =",
    "a" * 90,
    "Émilie  \t spaced   out ",
]


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    with app.app_context():
        yield db.session()


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def parts(message: EmailMessage) -> list[EmailMessage]:
    return list(message.iter_parts())  # type: ignore[arg-type]


def headers_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


# --- what readers receive -------------------------------------------------------------------


def sent_campaign(
    app: Flask, session: Session, clock: FrozenClock, sink: SmtpSink, **kwargs: Any
) -> list[Received]:
    from sqlalchemy import update

    from newsletter.models import Subscriber

    add_readers(session, clock, len(NAMES))
    for n, name in enumerate(NAMES, 1):
        session.execute(update(Subscriber).where(Subscriber.id == n).values(name=name))
    session.commit()
    send(app, make_campaign(session, clock, **kwargs))
    return sorted(sink.messages, key=lambda m: int(re.sub(r"\D", "", m.recipients[0])))


def test_every_header_a_list_message_needs(
    config: dict[str, Any], app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    app.config.update(
        UNSUBSCRIBE_MAILTO="leave@blog.example.com",
        MAIL_FROM_NAME="Café Calme",
        REPLY_TO="author@blog.example.com",
    )
    received = sent_campaign(app, session, clock, smtp_sink, subject="Grüße — slow mornings ☕")
    for n, got in enumerate(received, 1):
        message = got.message
        assert message["From"] == "Café Calme <hello@blog.example.com>"
        assert message["Subject"] == "Grüße — slow mornings ☕"
        assert message["Date"] == "Mon, 02 Nov 2026 09:00:00 +0000"
        assert message["Reply-To"] == "author@blog.example.com"
        assert message["MIME-Version"] == "1.0"
        assert message["List-Id"] == "Calm Corner <newsletter.blog.example.com>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url, mailto = (t.strip(" <>") for t in message["List-Unsubscribe"].split(","))
        assert url.startswith(f"{PUBLIC_URL}/unsubscribe/") and len(url) > 40
        assert mailto == "mailto:leave@blog.example.com?subject=unsubscribe"
        assert re.fullmatch(r"<c1\.r\d+\.[0-9a-f]{12}@blog\.example\.com>", message["Message-ID"])
        assert message["To"].addresses[0].addr_spec == f"reader{n}@example.com"
        # (Python's parser puts a space between adjacent encoded-words; mail clients do not.)
        shown = message["To"].addresses[0].display_name
        assert " ".join(shown.split()) == " ".join(NAMES[n - 1].split())
        # Non-ASCII names and subjects are RFC 2047-encoded: the header block is ASCII.
        assert headers_of(got.data).isascii()


def test_text_part_first_html_last_and_no_line_over_998_octets(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    long_html = (
        "<html><body><p class=greeting>"
        + ph.GREETING
        + "</p><p>"
        + "Grüße aus der Küche. " * 200
        + "</p>"
        + f'<a href="{ph.UNSUBSCRIBE_URL}">Unsubscribe</a></body></html>'
    )
    received = sent_campaign(app, session, clock, smtp_sink, html=long_html)
    for n, got in enumerate(received):
        message = got.message
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in parts(message)] == ["text/plain", "text/html"]
        assert max(len(line) for line in lines(got.data)) <= 998
        greeting = reader_greeting(NAMES[n])
        assert got.body("plain").startswith(greeting)
        html = got.body("html")
        assert (
            f"<p class=greeting>{greeting.replace('&', '&amp;').replace('<', '&lt;')}"
            in html.replace("&#x27;", "'").replace("&quot;", '"')
        )
        assert "Grüße aus der Küche. " * 200 in html
        # The 4,000-octet paragraph cannot go 8-bit: that part is quoted-printable.
        assert parts(message)[1]["Content-Transfer-Encoding"] == "quoted-printable"
        assert parts(message)[0]["Content-Transfer-Encoding"] == "8bit"
        assert ("BODY=8BITMIME" in got.mail_options) == (not got.data.isascii())


def test_without_8bitmime_every_part_is_7bit_and_still_reads_the_same(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    smtp_sink.script.offer_8bitmime = False
    received = sent_campaign(
        app,
        session,
        clock,
        smtp_sink,
        text=f"{ph.GREETING}\n\nGrüße = ☕\n\nUnsubscribe: {ph.UNSUBSCRIBE_URL}\n",
    )
    for n, got in enumerate(received):
        assert got.data.isascii() and "BODY=8BITMIME" not in got.mail_options
        for part in parts(got.message):
            assert part["Content-Transfer-Encoding"] == "quoted-printable"
        body = got.data.split(b"\r\n\r\n", 1)[1]
        assert max(len(line) for line in lines(body)) <= 76
        url = got.message["List-Unsubscribe"].strip("<>")
        assert got.body("plain").replace("\r\n", "\n") == (
            f"{reader_greeting(NAMES[n])}\n\nGrüße = ☕\n\nUnsubscribe: {url}\n"
        )


def rsa_key(bits: int = 1024) -> tuple[bytes, bytes]:
    """A fresh RSA key: (PKCS#1 PEM private key, base64 SubjectPublicKeyInfo for DNS)."""

    def prime(size: int) -> int:
        while True:
            # The top two bits set make p * q exactly ``bits`` long (dkimpy wants 1024+).
            candidate = secrets.randbits(size) | (3 << (size - 2)) | 1
            if all(
                pow(a, candidate - 1, candidate) == 1 for a in (2, 3, 5, 7, 11, 13, 17)
            ) and _miller_rabin(candidate):
                return candidate

    e = 65537
    while True:
        p, q = prime(bits // 2), prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            break
    n, d = p * q, pow(e, -1, phi)
    private = _seq(*(_int(v) for v in (0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))))
    rsa_oid = _der(0x06, bytes.fromhex("2a864886f70d010101"))
    public = _seq(_seq(rsa_oid, _der(0x05, b"")), _der(0x03, b"\0" + _seq(_int(n), _int(e))))
    pem = (
        b"-----BEGIN RSA PRIVATE KEY-----\n"
        + base64.encodebytes(private)
        + b"-----END RSA PRIVATE KEY-----\n"
    )
    return pem, base64.b64encode(public)


def _miller_rabin(n: int, rounds: int = 20) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def _int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def test_dkim_signature_verifies_and_covers_the_unsubscribe_headers(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    private, public = rsa_key()
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(private)
    app.config.update(
        DKIM_DOMAIN="blog.example.com", DKIM_SELECTOR="news2026", DKIM_PRIVATE_KEY=str(key_file)
    )
    lookups: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        lookups.append(name)
        return b"v=DKIM1; k=rsa; p=" + public

    received = sent_campaign(app, session, clock, smtp_sink)
    for got in received:
        assert dkim.verify(got.data, dnsfunc=dns)
        signature = got.message["DKIM-Signature"]
        signed = {
            h.strip().lower()
            for h in re.search(r"h=([^;]+)", signature.replace("\r\n", "")).group(1).split(":")
        }
        assert {
            "from",
            "to",
            "subject",
            "message-id",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "list-id",
        } <= signed
        assert re.search(r"d=blog\.example\.com", signature)
        # A changed unsubscribe header breaks the signature.
        tampered = got.data.replace(
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            b"List-Unsubscribe-Post: List-Unsubscribe=Two-Click",
        )
        assert tampered != got.data and not dkim.verify(tampered, dnsfunc=dns)
    assert set(lookups) == {b"news2026._domainkey.blog.example.com."}
    assert {h.lower() for h in DKIM_HEADERS} >= {"list-unsubscribe", "list-unsubscribe-post"}


# --- the template itself -------------------------------------------------------------------


def template(text: str, html: str, subject: str = "Hello") -> MessageTemplate:
    return MessageTemplate.build(
        RenderedEmail(subject=subject, html=html, text=text),
        sender="news@example.com",
        sender_name="News",
        date=datetime(2026, 11, 2, tzinfo=UTC),
        headers={"List-Unsubscribe": f"<{ph.UNSUBSCRIBE_URL}>"},
    )


def reader(name: str | None, url: str = f"{PUBLIC_URL}/unsubscribe/abc") -> ReaderParts:
    return ReaderParts(
        recipient="ada@example.com",
        unsubscribe_url=url,
        message_id="<c1.r1.x@example.com>",
        greeting=reader_greeting(name),
        name=name,
    )


@pytest.mark.parametrize("eight_bit", [True, False])
def test_the_to_header_slot_in_a_body_is_escaped_like_every_other(eight_bit: bool) -> None:
    slot = "__NEWSLETTER_TO_HEADER__"  # rendering neutralises it; a stored body may not be
    data = template(f"To: {slot}\n", f"<p>{slot}</p>").personalise(
        reader('Ada <b onmouseover="x">'), eight_bit=eight_bit
    )
    plain, rich = parts(message_from_bytes(data, policy=policy.default))  # type: ignore[misc]
    assert "<b onmouseover" not in rich.get_content()
    assert "&lt;b onmouseover=" in rich.get_content()
    assert "ada@example.com" in plain.get_content()


@pytest.mark.parametrize("eight_bit", [True, False])
@pytest.mark.parametrize("name", [*NAMES, None])
def test_placeholders_survive_any_value_in_any_encoding(eight_bit: bool, name: str | None) -> None:
    text = (
        f"{ph.GREETING}\n" + "x" * 990 + f" {ph.GREETING}\n.\ntrailing space \n"
        f"{ph.UNSUBSCRIBE_URL}=end\n"
    )
    html = f'<p>{ph.GREETING}</p>\n<a href="{ph.UNSUBSCRIBE_URL}">x</a>'
    url = f"{PUBLIC_URL}/unsubscribe/" + "t" * 150
    data = template(text, html).personalise(reader(name, url), eight_bit=eight_bit)
    assert max(len(line) for line in lines(data)) <= 998
    assert eight_bit or data.isascii()
    message = message_from_bytes(data, policy=policy.default)
    plain, rich = parts(message)  # type: ignore[misc]
    greeting = reader_greeting(name)
    assert plain.get_content().replace("\r\n", "\n") == text.replace(ph.GREETING, greeting).replace(
        ph.UNSUBSCRIBE_URL, url
    )
    escaped = (
        greeting.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )
    assert (
        rich.get_content().replace("\r\n", "\n")
        == html.replace(ph.GREETING, escaped).replace(ph.UNSUBSCRIBE_URL, url) + "\n"
    )
    for part in (plain, rich):
        if part["Content-Transfer-Encoding"] == "quoted-printable":
            encoded = part.get_payload(decode=False).encode()
            assert max(len(line) for line in encoded.split(b"\n")) <= 77  # 76 + CR


def test_an_8bit_line_that_a_long_value_would_overflow_falls_back_to_quoted_printable() -> None:
    text = f"{ph.GREETING} " + "y" * 600 + f" {ph.UNSUBSCRIBE_URL}\n"
    made = template(text, "<p>hi</p>")
    short = made.personalise(reader("Ada"))
    assert b"Content-Transfer-Encoding: 8bit" in short
    url = f"{PUBLIC_URL}/unsubscribe/" + "t" * 200
    long = made.personalise(reader("Ada " + "😀" * 55, url))  # 4 octets each: past 998
    assert b"Content-Transfer-Encoding: 8bit" not in long
    assert max(len(line) for line in lines(long)) <= 998
    decoded = message_from_bytes(long, policy=policy.default)
    assert parts(decoded)[0].get_content().replace("\r\n", "\n") == (  # type: ignore[index]
        "Hi Ada " + "😀" * 55 + ", " + "y" * 600 + f" {url}\n"
    )


@pytest.mark.parametrize("eight_bit", [True, False])
def test_the_smtp_copy_is_the_copy_with_line_leading_dots_doubled(eight_bit: bool) -> None:
    text = f"{ph.GREETING}\n.\n..two\n{ph.RECIPIENT}\n{ph.UNSUBSCRIBE_URL}\nx.{ph.GREETING}\n"
    made = template(text, f"<p>{ph.GREETING}</p>\n.<br>")
    for name in [".dot", "Ada", "." * 120, "a" * 70 + "." * 10]:
        parts_ = ReaderParts(
            recipient=".ada@example.com",
            name=name,
            unsubscribe_url="." + "u" * 74 + "." * 10,
            message_id="<1@x>",
            greeting=f".{name}",
        )
        plain = made.personalise(parts_, eight_bit=eight_bit)
        assert made.personalise_for_smtp(parts_, eight_bit=eight_bit) == re.sub(
            rb"(?m)^\.", b"..", plain
        )


def test_qp_values_wrap_and_decode_back() -> None:
    for value in ["plain", "Grüße = ☕ ", "x" * 300, "ends in tab\t", "é" * 40]:
        encoded = qp_value(value)
        assert encoded.isascii()
        assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
        assert not encoded.endswith((b" ", b"\t"))
        assert quopri.decodestring(encoded.replace(b"\r\n", b"\n")).decode() == value


def test_to_header_quotes_or_encodes_names() -> None:
    assert to_header_value("a@example.com", None) == "a@example.com"
    assert to_header_value("a@example.com", "Ada  Lovelace") == "Ada Lovelace <a@example.com>"
    assert (
        to_header_value("a@example.com", 'Bob "B" O\'Neil, Jr.')
        == '"Bob \\"B\\" O\'Neil, Jr." <a@example.com>'
    )
    encoded = to_header_value("a@example.com", "Zoë\r\nBcc: evil@example.com")
    assert "\r\nBcc" not in encoded and encoded.isascii()
    assert all(len(word) <= 75 for word in re.findall(r"=\?[^ ]+\?=", encoded))


def test_transport_sends_with_8bitmime_only_for_8bit_messages(smtp_sink: SmtpSink) -> None:
    with SmtpTransport(SmtpSettings(host="127.0.0.1", port=smtp_sink.port, timeout=5)) as smtp:
        made = template(f"{ph.GREETING}\n", "<p>x</p>")
        reply = smtp.send("news@example.com", "ada@example.com", made.personalise(reader("Zoë")))
        smtp.send("news@example.com", "bob@example.com", made.personalise(reader("Bob")))
    assert reply.startswith("250")
    first, second = smtp_sink.messages
    assert "BODY=8BITMIME" in first.mail_options and "BODY=8BITMIME" not in second.mail_options

"""Building email messages. Nothing here knows about readers, the database or SMTP.

Campaign messages are serialised once (:class:`MessageTemplate`) with a slot for each reader's
own parts, and each reader's copy is that byte string with the slots filled in. Transactional
emails are few and use :func:`build_message`.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid

from . import placeholders as ph
from .dkim import DKIM_HEADERS, BodyHasher, DkimError, DkimSigner  # noqa: F401 (re-exported)
from .rendering import RenderedEmail
from .smtp import dot_stuff

# RFC 5322: a line is at most 998 octets plus CRLF. Quoted-printable lines are at most 76.
MAX_LINE = 998
QP_LINE = 76
# What may go between < and > in MAIL FROM / RCPT TO without being checked again.


def format_address(address: str, name: str | None = None) -> str:
    """A header value for an address with an optional display name, encoded as needed."""
    if not name:
        return address
    local, _, domain = address.rpartition("@")
    return str(Address(display_name=name, username=local, domain=domain))


def mail_domain(address: str) -> str:
    """The domain of the sender's ``address``, for Message-IDs ("localhost" if it has none)."""
    return address.rpartition("@")[2] or "localhost"


def build_message(
    rendered: RenderedEmail,
    *,
    sender: str,
    sender_name: str | None,
    recipient: str,
    message_id: str | None = None,
    date: datetime | None = None,
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """A multipart/alternative message: the text part first, the HTML part last."""
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = format_address(sender, sender_name)
    message["To"] = recipient
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(date or datetime.now().astimezone())
    message["Message-ID"] = message_id or make_msgid(domain=mail_domain(sender))
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message


# --- one reader's parts ---------------------------------------------------------------------

GREETING_NAME_LIMIT = 60


def reader_greeting(name: str | None) -> str:
    """ "Hi Ada," for a reader with a name, "Hello," without one (whitespace squashed)."""
    name = " ".join((name or "").split())[:GREETING_NAME_LIMIT].strip()
    return f"Hi {name}," if name else "Hello,"


@dataclass(frozen=True)
class ReaderParts:
    """One reader's own values for a campaign message rendered once for everyone.

    ``name``, when given, becomes the display name in the To header.
    """

    recipient: str
    unsubscribe_url: str
    message_id: str
    greeting: str = "Hello,"
    name: str | None = None
    # Transactional emails only: the confirm link, and the Date when the template has none.
    confirm_url: str = ""
    date: str = ""


_ATEXT_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")


def to_header_value(address: str, name: str | None) -> str:
    """The To header's value: the bare address, or ``name <address>`` with the name quoted or
    RFC 2047-encoded (and so folded) as needed. Cheap, because it runs once per reader."""
    name = " ".join((name or "").split())
    if not name:
        return address
    # Text that looks like an encoded-word ("=?...?=") would be decoded by mail clients, so
    # such names are encoded like non-ASCII ones.
    if name.isascii() and name.isprintable() and "=?" not in name:
        if _ATEXT_NAME.fullmatch(name):
            return f"{name} <{address}>"
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{address}>'
    return f"{_encoded_words(name)} <{address}>"


def _encoded_words(text: str) -> str:
    """RFC 2047 base64 encoded-words of at most 75 characters, folded onto several lines."""
    import base64

    words: list[str] = []
    chunk = ""
    for char in text:
        # 45 octets of UTF-8 make 60 characters of base64: with "=?utf-8?b?" and "?=" that is
        # 72, inside the limit of 75; a character is never split across two words. White
        # space between encoded-words is dropped by readers (RFC 2047 6.2), so a space stays
        # inside a word, and a word is preferably ended before one.
        if len((chunk + char).encode()) > 45 or (char == " " and len(chunk.encode()) > 30):
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w.encode()).decode()}?=" for w in words)


# --- a campaign message serialised once ----------------------------------------------------

# The To header is the reader's address with their name; bodies use RECIPIENT for the address.
_TO_HEADER = "__NEWSLETTER_TO_HEADER__"
_PLACEHOLDERS = (
    ph.UNSUBSCRIBE_URL,
    ph.GREETING,
    ph.RECIPIENT,
    ph.MESSAGE_ID,
    _TO_HEADER,
    ph.CONFIRM_URL,
    ph.DATE,
)
_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in _PLACEHOLDERS))
# Where a slot sits decides how its value is written: raw in a header, as UTF-8 in an 8-bit
# part, quoted-printable in a QP part; HTML-escaped in an HTML part.
HEADER, TEXT_8BIT, HTML_8BIT, TEXT_QP, HTML_QP = "header", "text8", "html8", "textqp", "htmlqp"
# A line holding a slot keeps this much room for the reader's value before the part is
# written quoted-printable instead of 8-bit; a longer value falls back per reader.
_SLOT_ROOM = 300


@dataclass(frozen=True)
class _Slot:
    placeholder: str
    context: str


class _Serialised:
    """One serialised message with slots: literal bytes between them, joined by ``%``."""

    def __init__(
        self, pieces: Sequence[bytes | _Slot], guarded: Sequence[tuple[int, tuple[int, ...]]]
    ) -> None:
        literals: list[bytes] = []
        self.slots: list[_Slot] = []
        current = b""
        for piece in pieces:
            if isinstance(piece, _Slot):
                literals.append(current)
                current = b""
                self.slots.append(piece)
            else:
                current += piece
        literals.append(current)
        self.literals = literals
        # bytes % tuple runs in C: one pass and one allocation per reader.
        self.format = b"%s".join(lit.replace(b"%", b"%%") for lit in literals)
        self.template = self.format % tuple(s.placeholder.encode() for s in self.slots)
        # The same, made ready for SMTP's DATA once: a "." starting a line doubled (RFC 5321
        # 4.5.2), so no reader's copy needs smtplib's regex pass over the whole message. A
        # literal after a slot starts mid-line: only dots after a line break count there.
        self.wire_format = b"%s".join(
            dot_stuff(lit, at_line_start=(i == 0)).replace(b"%", b"%%")
            for i, lit in enumerate(literals)
        )
        # Slots that begin a line: a value starting with "." is doubled there.
        self.line_start = [
            lit.endswith(b"\n") or (i == 0 and not lit) for i, lit in enumerate(literals[:-1])
        ]
        # Lines of 8-bit parts that hold slots: (octets without the slots, slot indexes).
        self.guarded = guarded
        self.room = min((MAX_LINE - base for base, _ in guarded), default=MAX_LINE)
        self.guarded_slots = sorted({i for _, idx in guarded for i in idx})


class MessageTemplate:
    """A campaign message built and serialised once, with slots for each reader's parts.

    Two serialisations are kept: one with 8-bit parts for servers that offer 8BITMIME (lines
    checked against the 998-octet limit) and one that is 7-bit throughout (quoted-printable),
    for servers that do not and for a reader whose values would make an 8-bit line too long.
    ``personalise`` fills the slots: a few small encodings and one join, not a MIME build.
    """

    def __init__(
        self, eight_bit: _Serialised, seven_bit: _Serialised, dkim: DkimSigner | None = None
    ) -> None:
        self._eight_bit = eight_bit
        self._seven_bit = seven_bit
        self.dkim = dkim
        # The body of each serialisation canonicalised for DKIM once, not once per reader.
        self._signing = (
            {id(s): _Signing.of(s) for s in (eight_bit, seven_bit)} if dkim is not None else {}
        )

    @property
    def data(self) -> bytes:
        """The 8-bit serialisation with the placeholders in place (for inspection)."""
        return self._eight_bit.template

    @classmethod
    def build(
        cls,
        rendered: RenderedEmail,
        *,
        sender: str,
        sender_name: str | None,
        headers: Mapping[str, str],
        date: datetime | None,
        dkim: DkimSigner | None = None,
    ) -> MessageTemplate:
        """Serialise ``rendered`` with slots in To, Message-ID, ``headers`` and both bodies.

        ``headers`` may hold placeholders (List-Unsubscribe holds the unsubscribe URL's).
        With ``date`` None the Date header is a slot too (``ReaderParts.date``), for a
        template that is built once and sent at many times.
        """
        head = _header_block(
            rendered.subject, sender=sender, sender_name=sender_name, headers=headers, date=date
        )
        boundary = _boundary(rendered)
        variants = []
        for allow_8bit in (True, False):
            pieces: list[bytes | _Slot] = [*head]
            pieces.append(
                b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; "
                b'boundary="' + boundary + b'"\r\n\r\n'
            )
            guarded: list[tuple[int, tuple[int, ...]]] = []
            for subtype, body in (("plain", rendered.text), ("html", rendered.html)):
                pieces.append(b"--" + boundary + b"\r\n")
                _add_part(pieces, guarded, subtype, body, allow_8bit)
                # The line break before a boundary belongs to the boundary (RFC 2046), so
                # this one keeps the part's own final line break.
                pieces.append(b"\r\n")
            pieces.append(b"--" + boundary + b"--\r\n")
            variants.append(_Serialised(pieces, guarded))
        return cls(variants[0], variants[1], dkim)

    def _variant(self, reader: ReaderParts, eight_bit: bool) -> tuple[_Serialised, list[bytes]]:
        """The serialisation this reader's copy uses, and its slot values: 8-bit when allowed
        and the reader's values keep every guarded line within the limit, else 7-bit."""
        serialised = self._eight_bit if eight_bit else self._seven_bit
        values = _slot_values(serialised.slots, reader)
        if eight_bit and serialised.guarded and not _fits(serialised, values):
            serialised = self._seven_bit
            values = _slot_values(serialised.slots, reader)
        return serialised, values

    def personalise(self, reader: ReaderParts, *, eight_bit: bool = True) -> bytes:
        """One reader's copy; ``eight_bit=False`` for a server without 8BITMIME."""
        serialised, values = self._variant(reader, eight_bit)
        data = serialised.format % tuple(values)
        return self._signature(serialised, values) + data if self.dkim is not None else data

    def personalise_for_smtp(self, reader: ReaderParts, *, eight_bit: bool = True) -> bytes:
        """One reader's copy ready for SMTP's DATA (dot-stuffed; see ``SmtpTransport.send``)."""
        serialised, values = self._variant(reader, eight_bit)
        # The signature covers the message as read, so it is made before the dots are doubled
        # (no line of a DKIM-Signature field starts with a dot).
        signature = self._signature(serialised, values) if self.dkim is not None else b""
        for i, starts in enumerate(serialised.line_start):
            if starts and values[i][:1] == b".":
                values[i] = b"." + values[i]
        return signature + serialised.wire_format % tuple(values)

    def _signature(self, serialised: _Serialised, values: Sequence[bytes]) -> bytes:
        """The DKIM-Signature fields for the copy with these slot ``values``."""
        assert self.dkim is not None
        signing = self._signing[id(serialised)]
        if signing is not None:
            head = signing.head_format % tuple(values[: signing.head_slots])
            if b"\r\n\r\n" not in head:
                body_hash = signing.body.digest(values[signing.head_slots :])
                return self.dkim.signature_headers(head, body_hash)
        # A header value that ended the header block early: sign what a verifier will see.
        return self.dkim.signature_for(serialised.format % tuple(values))


@dataclass(frozen=True)
class _Signing:
    """A serialisation split for DKIM: its header block as a format over the first
    ``head_slots`` slots, and the hasher of its body over the other slots."""

    head_format: bytes
    head_slots: int
    body: BodyHasher

    @classmethod
    def of(cls, serialised: _Serialised) -> _Signing | None:
        """The split, or None when no literal holds the blank line that ends the headers."""
        literals = serialised.literals
        for k, literal in enumerate(literals):
            end = literal.find(b"\r\n\r\n")
            if end >= 0:
                head = [*literals[:k], literal[: end + 2]]
                return cls(
                    b"%s".join(lit.replace(b"%", b"%%") for lit in head),
                    k,
                    BodyHasher([literal[end + 4 :], *literals[k + 1 :]]),
                )
        return None


def _fits(serialised: _Serialised, values: Sequence[bytes]) -> bool:
    """Whether every 8-bit line with a slot stays within 998 octets for these values."""
    if sum(len(values[i]) for i in serialised.guarded_slots) <= serialised.room:
        return True  # even all of them on the fullest line would fit
    return all(
        base + sum(len(values[i]) for i in idx) <= MAX_LINE for base, idx in serialised.guarded
    )


def _slot_values(slots: Iterable[_Slot], reader: ReaderParts) -> list[bytes]:
    raw: dict[str, str] = {
        ph.UNSUBSCRIBE_URL: reader.unsubscribe_url,
        ph.GREETING: reader.greeting,
        ph.RECIPIENT: reader.recipient,
        ph.MESSAGE_ID: reader.message_id.strip().strip("<>"),
        ph.CONFIRM_URL: reader.confirm_url,
        ph.DATE: reader.date,
    }
    values: list[bytes] = []
    for slot in slots:
        context = slot.context
        if slot.placeholder == _TO_HEADER:
            value = to_header_value(reader.recipient, reader.name)
            if context == HEADER:
                # Already encoded and folded; the address was checked when the reader signed up.
                values.append(value.encode("ascii"))
                continue
        else:
            value = raw[slot.placeholder]
        if context == HEADER:
            if not value.isascii() or "\r" in value or "\n" in value or len(value) > 900:
                raise ValueError(f"header value {value!r} must be one short line of ASCII")
            values.append(value.encode("ascii"))
        elif context == TEXT_8BIT:
            values.append(value.encode())
        elif context == HTML_8BIT:
            values.append(html.escape(value).encode())
        elif context == TEXT_QP:
            values.append(qp_value(value))
        else:
            values.append(qp_value(html.escape(value)))
    return values


def _header_block(
    subject: str,
    *,
    sender: str,
    sender_name: str | None,
    headers: Mapping[str, str],
    date: datetime | None,
) -> list[bytes | _Slot]:
    pieces: list[bytes | _Slot] = [
        _fold("From", format_address(sender, sender_name)),
        b"To: ",
        _Slot(_TO_HEADER, HEADER),
        b"\r\n",
        _fold("Subject", subject),
        *(
            [_fold("Date", format_datetime(date))]
            if date is not None
            else [b"Date: ", _Slot(ph.DATE, HEADER), b"\r\n"]
        ),
        b"Message-ID: <",
        _Slot(ph.MESSAGE_ID, HEADER),
        b">\r\n",
    ]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} must be one line")
        folded = _fold(name, value)
        pieces.extend(_split_slots(folded.decode("ascii"), HEADER))
    return pieces


def _fold(name: str, value: str) -> bytes:
    """``Name: value`` folded and RFC 2047-encoded as needed, CRLF-terminated."""
    folded: str = SMTP_POLICY.header_factory(name, value).fold(policy=SMTP_POLICY)
    return folded.encode("ascii")


def _split_slots(text: str, context: str) -> list[bytes | _Slot]:
    pieces: list[bytes | _Slot] = []
    position = 0
    for match in _PLACEHOLDER_RE.finditer(text):
        pieces.append(text[position : match.start()].encode())
        pieces.append(_Slot(match.group(), context))
        position = match.end()
    pieces.append(text[position:].encode())
    return pieces


def _boundary(rendered: RenderedEmail) -> bytes:
    """A boundary that cannot occur in the parts: "=_" never appears in quoted-printable."""
    seed = hashlib.sha256((rendered.text + rendered.html).encode()).hexdigest()
    boundary = f"=_newsletter_{seed[:24]}"
    while boundary in rendered.text or boundary in rendered.html:
        boundary += "_"
    return boundary.encode()


def _lines(body: str) -> list[str]:
    return body.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")


def _add_part(
    pieces: list[bytes | _Slot],
    guarded: list[tuple[int, tuple[int, ...]]],
    subtype: str,
    body: str,
    allow_8bit: bool,
) -> None:
    """Append one text part: 7bit when plain ASCII with short lines and no slots, 8bit when
    allowed and every line fits, else quoted-printable (always valid)."""
    lines = _lines(body)
    has_slots = _PLACEHOLDER_RE.search(body) is not None
    lengths = [len(_PLACEHOLDER_RE.sub("", line).encode()) for line in lines]
    short = all(n <= MAX_LINE for n in lengths) and all(
        n <= MAX_LINE - _SLOT_ROOM
        for n, line in zip(lengths, lines, strict=True)
        if _PLACEHOLDER_RE.search(line)
    )
    if short and body.isascii() and not has_slots:
        cte = "7bit"
    elif short and allow_8bit:
        cte = "8bit"
    else:
        cte = "quoted-printable"
    pieces.append(
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode()
    )
    if cte == "quoted-printable":
        pieces.extend(_qp_body(lines, HTML_QP if subtype == "html" else TEXT_QP))
        return
    context = HTML_8BIT if subtype == "html" else TEXT_8BIT
    slot_index = sum(isinstance(p, _Slot) for p in pieces)
    for line, base in zip(lines, lengths, strict=True):
        line_pieces = _split_slots(line, context)
        slots = [p for p in line_pieces if isinstance(p, _Slot)]
        if slots:
            guarded.append((base, tuple(range(slot_index, slot_index + len(slots)))))
            slot_index += len(slots)
        pieces.extend(line_pieces)
        pieces.append(b"\r\n")


# --- quoted-printable with slots -------------------------------------------------------------

_QP_SAFE = frozenset(chr(c) for c in range(33, 127) if c != ord("=")) | {" ", "\t"}


def _qp_tokens(text: str) -> list[str]:
    return [c if c in _QP_SAFE else "".join(f"={b:02X}" for b in c.encode()) for c in text]


def _qp_wrap(tokens: Sequence[str], out: list[str], line: str = "") -> str:
    """Append full soft-broken lines to ``out``, continuing the unfinished ``line``; return the
    new unfinished line. A line with its soft-break "=" stays within 76 characters, and an
    escape such as "=C3" is never split."""
    for token in tokens:
        if len(line) + len(token) > QP_LINE - 1:
            out.append(line + "=\r\n")
            line = ""
        if not line and token == ".":
            token = "=2E"  # a line starting with "." would need doubling for SMTP
        line += token
    return line


def _qp_body(lines: Sequence[str], context: str) -> list[bytes | _Slot]:
    """A quoted-printable body in which each slot sits alone between two soft line breaks,
    so a value of any length can be wrapped into it without breaking the 76-character rule."""
    pieces: list[bytes | _Slot] = []
    for line in lines:
        out: list[str] = []
        current = ""
        position = 0
        for match in [*_PLACEHOLDER_RE.finditer(line), None]:
            end = match.start() if match else len(line)
            tokens = _qp_tokens(line[position:end])
            if match is None and tokens and tokens[-1] in (" ", "\t"):
                # Trailing white space at a hard line break must be encoded (RFC 2045).
                tokens[-1] = "=20" if tokens[-1] == " " else "=09"
            current = _qp_wrap(tokens, out, current)
            if match is None:
                break
            if current:
                out.append(current + "=\r\n")
                current = ""
            pieces.append("".join(out).encode("ascii"))
            out = []
            pieces.append(_Slot(match.group(), context))
            pieces.append(b"=\r\n")
            position = match.end()
        out.append(current + "\r\n")
        pieces.append("".join(out).encode("ascii"))
    return pieces


def qp_value(value: str) -> bytes:
    """A reader's value for a quoted-printable slot: encoded, wrapped with soft breaks, and
    never ending in white space (the template puts a soft break after it)."""
    if (
        len(value) <= QP_LINE - 1
        and value.isascii()
        and value.isprintable()
        and "=" not in value
        and not value.endswith((" ", "\t"))
        and not value.startswith(".")
    ):
        return value.encode("ascii")
    tokens = _qp_tokens(value)
    if tokens and tokens[-1] in (" ", "\t"):
        tokens[-1] = "=20" if tokens[-1] == " " else "=09"
    out: list[str] = []
    last = _qp_wrap(tokens, out)
    return ("".join(out) + last).encode("ascii")

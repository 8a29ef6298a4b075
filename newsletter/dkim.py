"""DKIM signing (RFC 6376, relaxed/relaxed): rsa-sha256, plus ed25519-sha256 (RFC 8463) as an
additional signature when a second key is configured.

The keys are parsed once, and the signatures are made by OpenSSL (``cryptography``). A campaign
message is one serialised template with slots for each reader's values (see
:class:`newsletter.mail.MessageTemplate`), so its body is canonicalised once: a
:class:`BodyHasher` keeps the canonical form of every piece of the body between the slots and
the hash state of the part before the first slot, and per reader canonicalises and hashes only
what differs. It does so only where that is provably the same as canonicalising the whole body
(see :meth:`BodyHasher.digest`), and canonicalises the whole body otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NewsletterError

if TYPE_CHECKING:  # cryptography (8 MB) is imported only when a key is loaded or used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

# RFC 6376 recommends these; List-Unsubscribe-Post must be signed too (RFC 8058 section 4),
# and dkimpy's default list leaves it out.
DKIM_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
_SIGNED_NAMES = tuple(name.lower().encode() for name in DKIM_HEADERS)
# RFC 8301: verifiers ignore signatures by RSA keys shorter than this.
MIN_RSA_BITS = 1024


class DkimError(NewsletterError):
    """The DKIM key cannot be read or used; the message names the setting to fix."""


# --- canonicalisation (RFC 6376 section 3.4) -------------------------------------------------

_FIELD_BREAK = re.compile(rb"\r\n(?![ \t])")
_FOLD = re.compile(rb"\r?\n")


def _relaxed_lines(data: bytes) -> bytes:
    """Relaxed body canonicalisation without the end-of-body rule: white space at line ends
    removed, every other run of spaces and tabs made one space."""
    # bytes.replace runs in C, many times faster here than a regular expression: tabs become
    # spaces, each pass halves every run of spaces, and then a line's last space is its only
    # trailing white space.
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    if b" \r\n" in data:
        data = data.replace(b" \r\n", b"\r\n")
    return data


def _relaxed_end(data: bytes) -> bytes:
    """The end-of-body rule on already canonical lines: empty lines at the end dropped, and a
    final CRLF added when missing; an empty body stays empty (RFC 6376 errata 3133)."""
    end = len(data)
    while data.endswith(b"\r\n", 0, end):
        end -= 2
    return data[:end] + b"\r\n" if end else b""


def relaxed_body(body: bytes) -> bytes:
    """``body`` in relaxed canonical form (RFC 6376 section 3.4.4)."""
    return _relaxed_end(_relaxed_lines(body))


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One header field in relaxed canonical form (RFC 6376 section 3.4.2), CRLF-terminated:
    the name lower-cased, the value unfolded, runs of white space made one space, and white
    space around the colon and at the end removed."""
    # bytes.replace rather than regular expressions: this runs for every signed field of
    # every copy, and most values have nothing to change.
    if b"\n" in value:
        value = _FOLD.sub(b"", value)
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    while b"  " in value:
        value = value.replace(b"  ", b" ")
    return name.strip(b" \t").lower() + b":" + value.strip(b" ") + b"\r\n"


def header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The (name, raw value) of each field of a header block, folded lines kept in the value."""
    fields = []
    for raw in _FIELD_BREAK.split(head.rstrip(b"\r\n")):
        name, colon, value = raw.partition(b":")
        if colon:
            fields.append((name, value))
    return fields


# --- the body hash, once per campaign --------------------------------------------------------

# A piece that ends in one of these and a piece that begins with one of the next may interact
# when canonicalised (a run of white space across the join, a CR and its LF split apart, white
# space before a line end), so such a join is never taken piece by piece.
_RISKY_END = frozenset(b" \t\r")
_RISKY_START = frozenset(b" \t\r\n")
_BLANK = frozenset(b" \t\r\n")


class BodyHasher:
    """The SHA-256 of the relaxed canonical body of messages whose bodies are ``literals``
    (the same for every reader) with one reader's ``values`` between them.

    Relaxed canonicalisation acts on runs of spaces and tabs, on line ends, and on empty lines
    at the very end. So canonicalising each piece alone and joining the results gives the
    canonical body exactly when no join touches such a run or splits a CRLF (no join has a
    space, tab or CR on its left and a space, tab, CR or LF on its right), no piece is empty,
    and the last piece holds something other than white space and line ends (so the empty
    lines at the end are all inside it). The literals are checked once here, a reader's values
    in :meth:`digest`; any other body is canonicalised whole.
    """

    def __init__(self, literals: Sequence[bytes]) -> None:
        self.literals = list(literals)
        last = self.literals[-1]
        self.piecewise = all(self.literals) and any(c not in _BLANK for c in last)
        # For each slot: may the literal before it / after it interact with a value?
        self._left_risky = [lit[-1] in _RISKY_END if lit else True for lit in self.literals[:-1]]
        self._right_risky = [lit[0] in _RISKY_START if lit else True for lit in self.literals[1:]]
        canonical = [_relaxed_lines(lit) for lit in self.literals]
        if canonical:
            canonical[-1] = _relaxed_end(canonical[-1])
        # The hash of everything before the first slot, and the rest (each slot with the
        # literal after it) as a bytes % format.
        self._prefix = hashlib.sha256(canonical[0])
        self._rest = b"".join(b"%s" + c.replace(b"%", b"%%") for c in canonical[1:])

    def safe(self, values: Sequence[bytes]) -> bool:
        """Whether the body with these ``values`` can be canonicalised piece by piece."""
        if not self.piecewise:
            return False
        for value, left, right in zip(values, self._left_risky, self._right_risky, strict=True):
            if (
                not value
                or (left and value[0] in _RISKY_START)
                or (right and value[-1] in _RISKY_END)
            ):
                return False
        return True

    def digest(self, values: Sequence[bytes]) -> bytes:
        """The SHA-256 digest of the canonical body with ``values`` in the slots."""
        if not self.safe(values):
            return self.slow_digest(values)
        state = self._prefix.copy()
        if self._rest:
            state.update(self._rest % tuple(_relaxed_lines(v) for v in values))
        return state.digest()

    def slow_digest(self, values: Sequence[bytes]) -> bytes:
        """The same digest from the whole body canonicalised at once."""
        body = bytearray(self.literals[0])
        for value, literal in zip(values, self.literals[1:], strict=True):
            body += value
            body += literal
        return hashlib.sha256(relaxed_body(bytes(body))).digest()


# --- keys and signatures ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    prefix: bytes  # the DKIM-Signature field up to the tags that vary per message
    sign: Callable[[bytes], bytes]  # the header hash input -> signature

    @property
    def algorithm(self) -> str:
        return re.search(rb" a=([^;]+);", self.prefix).group(1).decode()  # type: ignore[union-attr]


def load_pem_private_key(data: bytes, password: bytes | None) -> Any:
    """cryptography's ``load_pem_private_key``, imported on first use."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key as load

    return load(data, password=password)


def load_rsa_key(data: bytes, setting: str) -> RSAPrivateKey:
    """An RSA private key from PEM (PKCS#1 or PKCS#8); DkimError names ``setting``."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise DkimError(
            f"{setting}: not an unencrypted private key in PEM form ({err}); "
            "make one with `openssl genrsa -out dkim.pem 2048`"
        ) from err
    if not isinstance(key, RSAPrivateKey):
        raise DkimError(f"{setting}: the key is not an RSA key; give the RSA key here")
    if key.key_size < MIN_RSA_BITS:
        raise DkimError(
            f"{setting}: the RSA key has {key.key_size} bits; receivers ignore "
            f"signatures by keys under {MIN_RSA_BITS} bits (2048 is usual)"
        )
    return key


def load_ed25519_key(data: bytes, setting: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (``openssl genpkey -algorithm ed25519``) or the base64
    32-octet seed that dkimpy's ``dknewkey --ktype ed25519`` writes."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        if b"-----BEGIN" in data:
            key = load_pem_private_key(data, password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(
                base64.b64decode(data.strip(), validate=True)
            )
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise DkimError(
            f"{setting}: not an Ed25519 private key ({err}); make one with "
            "`openssl genpkey -algorithm ed25519 -out dkim-ed25519.pem`"
        ) from err
    if not isinstance(key, Ed25519PrivateKey):
        raise DkimError(f"{setting}: the key is not an Ed25519 key")
    return key


def _read(path: Any, setting: str) -> bytes:
    try:
        return Path(str(path)).read_bytes()
    except OSError as err:
        raise DkimError(f"NEWSLETTER_{setting}: cannot read {path}: {err.strerror}") from err


def _b64_folded(data: bytes) -> bytes:
    """Base64 in lines of 72 characters joined by folding white space (allowed in b=)."""
    text = base64.b64encode(data)
    return b"\r\n ".join(text[i : i + 72] for i in range(0, len(text), 72))


@dataclass(frozen=True)
class DkimSigner:
    """Signs messages for one domain: rsa-sha256 with ``selector``, and ed25519-sha256 with
    ``ed25519_selector`` as well when an Ed25519 key is given. The keys are parsed objects, so
    signing parses nothing; ``now`` gives the t= tag."""

    domain: str
    selector: str
    rsa_key: RSAPrivateKey
    ed25519_selector: str | None = None
    ed25519_key: Ed25519PrivateKey | None = None
    now: Callable[[], float] = field(default=time.time, compare=False)
    _keys: tuple[_Key, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        for value, setting in (
            (self.domain, "NEWSLETTER_DKIM_DOMAIN"),
            (self.selector, "NEWSLETTER_DKIM_SELECTOR"),
            (self.ed25519_selector or "x", "NEWSLETTER_DKIM_ED25519_SELECTOR"),
        ):
            if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", value):
                raise DkimError(
                    f"{setting}: {value!r} is not a domain name or selector "
                    "(letters, digits, dots and hyphens)"
                )

        def prefix(algorithm: str, selector: str) -> bytes:
            return (
                f"DKIM-Signature: v=1; a={algorithm}; c=relaxed/relaxed; d={self.domain}; "
                f"s={selector};\r\n"
            ).encode("ascii")

        rsa_key, pkcs1, sha256 = self.rsa_key, padding.PKCS1v15(), hashes.SHA256()
        keys = [
            _Key(
                prefix("rsa-sha256", self.selector), lambda data: rsa_key.sign(data, pkcs1, sha256)
            )
        ]
        if self.ed25519_key is not None and self.ed25519_selector:
            ed_key = self.ed25519_key
            # RFC 8463: Ed25519 (PureEdDSA) over the SHA-256 hash of the header hash input.
            keys.append(
                _Key(
                    prefix("ed25519-sha256", self.ed25519_selector),
                    lambda data: ed_key.sign(hashlib.sha256(data).digest()),
                )
            )
        object.__setattr__(self, "_keys", tuple(keys))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DkimSigner | None:
        """The signer the settings describe (keys read and parsed now), or None when DKIM is
        not configured."""
        domain, selector = config.get("DKIM_DOMAIN"), config.get("DKIM_SELECTOR")
        if not domain:
            return None
        rsa_key = load_rsa_key(
            _read(config.get("DKIM_PRIVATE_KEY"), "DKIM_PRIVATE_KEY"), "NEWSLETTER_DKIM_PRIVATE_KEY"
        )
        ed_selector = config.get("DKIM_ED25519_SELECTOR")
        ed_key = None
        if ed_selector:
            ed_key = load_ed25519_key(
                _read(config.get("DKIM_ED25519_PRIVATE_KEY"), "DKIM_ED25519_PRIVATE_KEY"),
                "NEWSLETTER_DKIM_ED25519_PRIVATE_KEY",
            )
        return cls(
            str(domain), str(selector), rsa_key, str(ed_selector) if ed_selector else None, ed_key
        )

    @staticmethod
    def cache_key(config: Mapping[str, Any]) -> tuple[Any, ...]:
        """What a cached signer depends on: the settings, and the key files' modification
        times and sizes, so a long-running process picks up a replaced key."""
        parts: list[Any] = ["dkim"]
        for setting in (
            "DKIM_DOMAIN",
            "DKIM_SELECTOR",
            "DKIM_PRIVATE_KEY",
            "DKIM_ED25519_SELECTOR",
            "DKIM_ED25519_PRIVATE_KEY",
        ):
            value = config.get(setting)
            parts.append(value)
            if setting.endswith("PRIVATE_KEY") and value:
                try:
                    stat = os.stat(str(value))
                    parts.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
                except OSError:
                    parts.append(None)  # from_config says what is wrong
        return tuple(parts)

    @property
    def algorithms(self) -> list[str]:
        """The signatures each message gets, by a= value."""
        return [key.algorithm for key in self._keys]

    def sign(self, message: bytes) -> bytes:
        """``message`` with DKIM-Signature headers in front of it."""
        return self.signature_for(message) + message

    def signature_for(self, message: bytes) -> bytes:
        """The DKIM-Signature header fields for a whole serialised ``message``."""
        head, blank, body = message.partition(b"\r\n\r\n")
        if not blank:  # no body at all
            head, body = message.removesuffix(b"\r\n"), b""
        body_hash = hashlib.sha256(relaxed_body(body)).digest()
        return self.signature_headers(head + b"\r\n", body_hash)

    def signature_headers(self, head: bytes, body_hash: bytes) -> bytes:
        """The DKIM-Signature header fields (CRLF-terminated) for a message whose header block
        is ``head`` and whose canonical body has the SHA-256 digest ``body_hash``."""
        # For each name in h=, the last instance of that field is the one signed (RFC 6376
        # 5.4.2); every signed name appears once.
        last: dict[bytes, tuple[bytes, bytes]] = {}
        for name, value in header_fields(head):
            last[name.strip(b" \t").lower()] = (name, value)
        signed = [name for name in _SIGNED_NAMES if name in last]
        canonical = b"".join(relaxed_header(*last[name]) for name in signed)
        tags = (
            b" t="
            + str(int(self.now())).encode()
            + b"; h="
            + b":".join(signed)
            + b";\r\n bh="
            + base64.b64encode(body_hash)
            + b";\r\n b="
        )
        out = []
        for key in self._keys:
            unsigned = key.prefix + tags
            # The signature's own field is hashed last, canonical, with b= empty and no CRLF.
            data = canonical + relaxed_header(*unsigned.split(b":", 1))[:-2]
            out.append(unsigned + _b64_folded(key.sign(data)) + b"\r\n")
        return b"".join(out)

"""The SMTP transport: one connection to the relay, its settings and its errors."""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import NewsletterError

_PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[A-Za-z0-9.-]+")


_LEADING_DOT = re.compile(rb"(?m)^\.")
_DOT_AFTER_BREAK = re.compile(rb"(?<=\n)\.")


def dot_stuff(data: bytes, *, at_line_start: bool) -> bytes:
    """Double each "." that starts a line (SMTP transparency)."""
    return (_LEADING_DOT if at_line_start else _DOT_AFTER_BREAK).sub(b"..", data)


class SmtpError(NewsletterError):
    """Base of SMTP failures; ``reply`` is the server's words when it said any."""

    def __init__(self, message: str, code: int | None = None, reply: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply


class SmtpUnavailableError(SmtpError):
    """Could not connect, the connection dropped, timed out, or the server said 421: try later."""


class SmtpOutcomeUnknownError(SmtpUnavailableError):
    """The whole message was handed over but no reply to the final dot came (the connection
    dropped, or the reply was slower than the timeout): the server may have stored it
    (RFC 5321 section 4.1.1.4, RFC 1047), so sending it again may deliver a second copy."""


class SmtpRejectedError(SmtpError):
    """The server refused this message: 4xx (``temporary``) or 5xx (permanent)."""

    @property
    def temporary(self) -> bool:
        return self.code is not None and 400 <= self.code < 500


class SmtpConfigError(SmtpError):
    """Authentication or TLS failed: retrying cannot help until the settings are fixed."""


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to connect."""

    host: str = "localhost"
    port: int = 25
    security: str = "none"  # none, starttls, ssl
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SmtpSettings:
        """Settings from the app's configuration."""
        return cls(
            host=config["SMTP_HOST"],
            port=int(config["SMTP_PORT"]),
            security=config["SMTP_SECURITY"],
            username=config.get("SMTP_USERNAME"),
            password=config.get("SMTP_PASSWORD"),
            timeout=float(config["SMTP_TIMEOUT"]),
        )

    def describe(self) -> str:
        """host:port (security), for messages to the author."""
        return f"{self.host}:{self.port} ({self.security})"

    def open(self) -> smtplib.SMTP:
        """A new connection (for ``ssl`` the TLS handshake done); EHLO, STARTTLS and login
        are the caller's. Raises what ``smtplib`` and the socket raise."""
        if self.security == "ssl":
            return smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout)


class Transport(Protocol):
    """What the senders need: hand one serialised message to the next hop."""

    # Known after connect(): whether the next hop takes 8-bit bodies (RFC 6152).
    supports_8bit: bool

    def connect(self) -> object:
        """Open the connection now if it is not open (raises SmtpError)."""
        ...

    def send(self, sender: str, recipient: str, message: bytes) -> str: ...

    def send_prepared(self, sender: str, recipient: str, data: bytes) -> str:
        """Like ``send``, for a message whose line-leading dots are already doubled."""
        ...

    def close(self) -> None: ...


class SmtpTransport:
    """One reusable SMTP connection, opened on first use and reopened after a drop."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        # Known after connect(): whether the server takes 8-bit bodies (RFC 6152) and
        # several commands in one write (RFC 2920).
        self.supports_8bit = False
        self.pipelining = False

    def __enter__(self) -> SmtpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> smtplib.SMTP:
        """Open, secure and authenticate the connection if it is not open yet."""
        if self._smtp is not None:
            return self._smtp
        s = self.settings
        smtp: smtplib.SMTP | None = None
        try:
            smtp = s.open()
            smtp.ehlo_or_helo_if_needed()
            if s.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise SmtpConfigError(
                        f"SMTP server {s.describe()} does not offer STARTTLS: check "
                        "NEWSLETTER_SMTP_SECURITY and NEWSLETTER_SMTP_PORT"
                    )
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.username:
                if not smtp.has_extn("auth"):
                    raise SmtpConfigError(
                        f"SMTP server {s.describe()} does not offer a login (AUTH): check "
                        "NEWSLETTER_SMTP_USERNAME and NEWSLETTER_SMTP_SECURITY (many servers "
                        "offer AUTH only after STARTTLS)"
                    )
                smtp.login(s.username, s.password or "")
        except SmtpConfigError:
            _close_quietly(smtp)
            raise
        except smtplib.SMTPAuthenticationError as err:
            _close_quietly(smtp)
            raise SmtpConfigError(
                f"SMTP login to {s.describe()} was refused: check NEWSLETTER_SMTP_USERNAME and "
                "NEWSLETTER_SMTP_PASSWORD",
                err.smtp_code,
                _text(err.smtp_error),
            ) from err
        except (ssl.SSLError, ssl.CertificateError, smtplib.SMTPNotSupportedError) as err:
            _close_quietly(smtp)
            raise SmtpConfigError(
                f"TLS with {s.describe()} failed ({err}): check NEWSLETTER_SMTP_SECURITY and "
                "NEWSLETTER_SMTP_PORT"
            ) from err
        except smtplib.SMTPConnectError as err:
            _close_quietly(smtp)
            raise SmtpUnavailableError(
                f"SMTP server {s.describe()} refused the connection: "
                f"{err.smtp_code} {_text(err.smtp_error)}",
                err.smtp_code,
                _text(err.smtp_error),
            ) from err
        except (OSError, smtplib.SMTPException) as err:
            _close_quietly(smtp)
            raise SmtpUnavailableError(f"cannot reach SMTP server {s.describe()}: {err}") from err
        self._smtp = smtp
        self.supports_8bit = smtp.has_extn("8bitmime")
        self.pipelining = smtp.has_extn("pipelining")
        return smtp

    def send(self, sender: str, recipient: str, message: bytes) -> str:
        """Send one message to one recipient; returns the server's reply to the final dot.

        Raises SmtpRejectedError (4xx/5xx for this message), SmtpUnavailableError (connection
        trouble
        or 421; the connection is dropped and the next send reconnects) or SmtpConfigError.
        """
        return self._send(sender, recipient, message, prepared=False)

    def send_prepared(self, sender: str, recipient: str, data: bytes) -> str:
        """Like :meth:`send`, for a message whose line-leading dots are already doubled
        (:meth:`MessageTemplate.personalise_for_smtp`): skips smtplib's pass over it."""
        return self._send(sender, recipient, data, prepared=True)

    def _send(self, sender: str, recipient: str, message: bytes, *, prepared: bool) -> str:
        for address in (sender, recipient):
            if not _PLAIN_ADDRESS.fullmatch(address):
                raise SmtpRejectedError(
                    f"not sent: {address!r} is not a plain address",
                    501,
                    "5.1.3 bad address syntax (refused before sending)",
                )
        smtp = self.connect()
        data = message if prepared else dot_stuff(message, at_line_start=True)
        # Addresses were checked above (and when readers signed up), so the commands are
        # written directly: smtplib's mail()/rcpt() parse every address again, per message.
        mail = f"MAIL FROM:<{sender}>"
        if self.supports_8bit and not message.isascii():
            mail += " BODY=8BITMIME"
        commands = f"{mail}\r\nRCPT TO:<{recipient}>\r\n"
        handed_over = False  # the final dot went out: from here on the outcome may be unknown
        try:
            if self.pipelining:
                # RFC 2920: MAIL, RCPT and DATA in one write, then their three replies, read
                # straight from the socket (smtplib's send/getreply add a debug check and a
                # per-line decode that cost a tenth of a copy's time at full speed).
                _write(smtp, (commands + "DATA\r\n").encode("ascii"))
                replies = [_reply(smtp), _reply(smtp), _reply(smtp)]
            else:
                smtp.send(commands[: commands.index("\r\n") + 2])
                replies = [smtp.getreply()]
                if replies[0][0] == 250:
                    smtp.send(commands[commands.index("\r\n") + 2 :])
                    replies.append(smtp.getreply())
                    if replies[1][0] in (250, 251):
                        replies.append(smtp.docmd("DATA"))
            # The first reply that is not a go-ahead says what went wrong.
            expected = (("sender", (250,)), ("recipient", (250, 251)), ("message", (354,)))
            stage, (code, reply) = next(
                (
                    (name, r)
                    for (name, ok), r in zip(expected, replies, strict=False)
                    if r[0] not in ok
                ),
                ("message", replies[-1]),
            )
            if stage == "message" and code == 354:
                _write(smtp, data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
                handed_over = True
                code, reply = _reply(smtp)
            elif len(replies) == 3 and replies[2][0] == 354:
                # A server that says 354 after refusing the envelope: end the empty message.
                smtp.send(b".\r\n")
                smtp.getreply()
            if code != 250:
                self._refused(smtp, code, reply, stage)
        except (OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException) as err:
            self._drop()
            if handed_over:
                raise SmtpOutcomeUnknownError(
                    f"no reply to the final dot from {self.settings.describe()} ({err}): the "
                    "server may have the message"
                ) from err
            raise SmtpUnavailableError(
                f"connection to {self.settings.describe()} failed: {err}",
                getattr(err, "smtp_code", None),
                _text(getattr(err, "smtp_error", None)),
            ) from err
        return f"{code} {_text(reply)}"

    def _refused(self, smtp: smtplib.SMTP, code: int, reply: bytes | str, stage: str) -> None:
        text = _text(reply)
        if code == 421 or code < 400:
            self._drop()
            raise SmtpUnavailableError(
                f"SMTP server closed the session ({code} {text})", code, text
            )
        try:
            smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()
        raise SmtpRejectedError(f"SMTP server refused the {stage}: {code} {text}", code, text)

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        _close_quietly(smtp)

    def close(self) -> None:
        """Say QUIT politely; a connection that is already gone is simply dropped."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()


_MAXLINE = 8192  # smtplib's limit on a reply line


def _write(smtp: smtplib.SMTP, data: bytes) -> None:
    """``smtp.send`` for bytes, without its debug check."""
    if smtp.sock is None:
        raise smtplib.SMTPServerDisconnected("please run connect() first")
    smtp.sock.sendall(data)


def _reply(smtp: smtplib.SMTP) -> tuple[int, bytes]:
    """One (possibly multi-line) reply, as ``smtp.getreply`` reads it: (code, text lines joined
    by newlines); -1 for a code that is not a number."""
    file = smtp.file
    if file is None:
        if smtp.sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        file = smtp.file = smtp.sock.makefile("rb")
    lines = []
    while True:
        line = file.readline(_MAXLINE + 1)
        if not line:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        if len(line) > _MAXLINE:
            raise smtplib.SMTPResponseException(500, "Line too long.")
        lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            break
    try:
        code = int(line[:3])
    except ValueError:
        code = -1
    return code, b"\n".join(lines)


def _close_quietly(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        with suppress(OSError):
            smtp.close()


def _text(reply: bytes | str | None) -> str:
    if reply is None:
        return ""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply

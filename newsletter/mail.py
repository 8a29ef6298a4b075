"""Building email messages and speaking SMTP. Nothing here knows about readers or the database."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid
from datetime import datetime
from typing import Any, Protocol

from .rendering import RenderedEmail


class SmtpProblem(Exception):
    """Base of SMTP failures; ``reply`` is the server's words when it said any."""

    def __init__(self, message: str, code: int | None = None, reply: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply


class SmtpUnavailable(SmtpProblem):
    """Could not connect, the connection dropped, timed out, or the server said 421: try later."""


class SmtpRejected(SmtpProblem):
    """The server refused this message: 4xx (``temporary``) or 5xx (permanent)."""

    @property
    def temporary(self) -> bool:
        return self.code is not None and 400 <= self.code < 500


class SmtpConfigProblem(SmtpProblem):
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
            host=config["SMTP_HOST"], port=int(config["SMTP_PORT"]),
            security=config["SMTP_SECURITY"], username=config.get("SMTP_USERNAME"),
            password=config.get("SMTP_PASSWORD"), timeout=float(config["SMTP_TIMEOUT"]),
        )

    def describe(self) -> str:
        """host:port (security), for messages to the author."""
        return f"{self.host}:{self.port} ({self.security})"


class Transport(Protocol):
    """What the senders need: hand one serialised message to the next hop."""

    def send(self, sender: str, recipient: str, message: bytes) -> str: ...

    def close(self) -> None: ...


class SmtpTransport:
    """One reusable SMTP connection, opened on first use and reopened after a drop."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self.supports_8bit = False

    def __enter__(self) -> SmtpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> smtplib.SMTP:
        """Open, secure and authenticate the connection if it is not open yet."""
        if self._smtp is not None:
            return self._smtp
        s = self.settings
        try:
            if s.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.host, s.port, timeout=s.timeout, context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            smtp.ehlo_or_helo_if_needed()
            if s.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password or "")
        except smtplib.SMTPAuthenticationError as err:
            raise SmtpConfigProblem(
                f"SMTP login to {s.describe()} was refused: check NEWSLETTER_SMTP_USERNAME and "
                "NEWSLETTER_SMTP_PASSWORD", err.smtp_code, _text(err.smtp_error)) from err
        except (ssl.SSLError, smtplib.SMTPNotSupportedError) as err:
            raise SmtpConfigProblem(
                f"TLS with {s.describe()} failed ({err}): check NEWSLETTER_SMTP_SECURITY and "
                "NEWSLETTER_SMTP_PORT") from err
        except smtplib.SMTPConnectError as err:
            raise SmtpUnavailable(f"SMTP server {s.describe()} refused the connection: "
                                  f"{err.smtp_code} {_text(err.smtp_error)}",
                                  err.smtp_code, _text(err.smtp_error)) from err
        except (OSError, smtplib.SMTPException) as err:
            raise SmtpUnavailable(f"cannot reach SMTP server {s.describe()}: {err}") from err
        self._smtp = smtp
        self.supports_8bit = smtp.has_extn("8bitmime")
        return smtp

    def send(self, sender: str, recipient: str, message: bytes) -> str:
        """Send one message to one recipient; returns the server's reply to the final dot.

        Raises SmtpRejected (4xx/5xx for this message), SmtpUnavailable (connection trouble
        or 421; the connection is dropped and the next send reconnects) or SmtpConfigProblem.
        """
        smtp = self.connect()
        try:
            eight_bit = self.supports_8bit and not message.isascii()
            code, reply = smtp.mail(sender, ["BODY=8BITMIME"] if eight_bit else [])
            if code != 250:
                self._refused(smtp, code, reply, "sender")
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                self._refused(smtp, code, reply, "recipient")
            code, reply = smtp.data(message)
            if code != 250:
                self._refused(smtp, code, reply, "message")
        except smtplib.SMTPDataError as err:
            self._refused(smtp, err.smtp_code, err.smtp_error, "message")
        except (OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException) as err:
            self._drop()
            code = getattr(err, "smtp_code", None)
            raise SmtpUnavailable(f"connection to {self.settings.describe()} failed: {err}",
                                  code, _text(getattr(err, "smtp_error", None))) from err
        return f"{code} {_text(reply)}"

    def _refused(self, smtp: smtplib.SMTP, code: int, reply: bytes | str, stage: str) -> None:
        text = _text(reply)
        if code == 421 or code < 400:
            self._drop()
            raise SmtpUnavailable(f"SMTP server closed the session ({code} {text})", code, text)
        try:
            smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()
        raise SmtpRejected(f"SMTP server refused the {stage}: {code} {text}", code, text)

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass

    def close(self) -> None:
        """Say QUIT politely; a connection that is already gone is simply dropped."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()


def _text(reply: bytes | str | None) -> str:
    if reply is None:
        return ""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def format_address(address: str, name: str | None = None) -> str:
    """A header value for an address with an optional display name, encoded as needed."""
    if not name:
        return address
    local, _, domain = address.rpartition("@")
    return str(Address(display_name=name, username=local, domain=domain))


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
    message["Date"] = format_datetime(date) if date else format_datetime(datetime.now().astimezone())
    message["Message-ID"] = message_id or make_msgid(domain=sender.rpartition("@")[2])
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message


@dataclass(frozen=True)
class ReaderParts:
    """One reader's own values for a campaign message rendered once for everyone."""

    recipient: str
    unsubscribe_url: str
    message_id: str
    greeting: str = "Hello,"


class MessageTemplate:
    """A campaign message built and serialised once, with placeholders for each reader's parts.

    ``personalise`` makes one reader's copy by replacing the placeholders in the bytes, so the
    per-reader cost is a few string replacements, not a MIME build.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def build(cls, rendered: RenderedEmail, *, sender: str, sender_name: str | None,
              headers: Mapping[str, str], date: datetime) -> MessageTemplate:
        """Serialise ``rendered`` with placeholders in To, Message-ID, List-Unsubscribe, bodies."""
        from . import placeholders as ph

        message = build_message(rendered, sender=sender, sender_name=sender_name,
                                recipient=ph.RECIPIENT, message_id=f"<{ph.MESSAGE_ID}>",
                                date=date, headers=headers)
        return cls(message.as_bytes(policy=SMTP_POLICY.clone(max_line_length=998)))

    def personalise(self, reader: ReaderParts) -> bytes:
        """One reader's copy."""
        from html import escape

        from . import placeholders as ph

        data = self.data
        for placeholder, value in (
            (ph.RECIPIENT, reader.recipient),
            (ph.MESSAGE_ID, reader.message_id.strip("<>")),
            (ph.UNSUBSCRIBE_URL, reader.unsubscribe_url),
            (ph.GREETING, escape(reader.greeting)),
        ):
            data = data.replace(placeholder.encode(), value.encode())
        return data

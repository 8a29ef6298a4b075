"""Bounce mailboxes: Maildir, IMAP over TLS (imaps://) or with STARTTLS (imap://), and POP3
over TLS (pop3s://); and ``process_mailbox``, which classifies each message, applies the rules
and moves it to the processed folder (or deletes it).

NEWSLETTER_BOUNCE_MAILBOX is a URL: ``imaps://user:password@host[:port]/FOLDER``,
``imap://...`` (STARTTLS is required), ``pop3s://user:password@host[:port]`` or
``maildir:///path``. Percent-encode special characters in the user and password.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import mailbox as stdlib_mailbox
import poplib
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..addresses import InvalidAddressError, normalise_address
from ..errors import NewsletterError
from ..models import Subscriber
from .classify import AUTO_REPLY, UNRECOGNISED, Classification, classify
from .rules import Outcome, apply_outcome
from .verp import InvalidVerpError, VerpClaim, claim_from_address

SCHEMES = ("imaps", "imap", "pop3s", "maildir")


class MailboxError(NewsletterError):
    """The bounce mailbox cannot be opened or read; the message says what to check."""


class Mailbox(Protocol):
    """Where bounces arrive: new messages in, processed ones moved away or deleted."""

    def messages(self) -> Iterator[tuple[str, bytes]]:
        """(key, raw message) for each message waiting."""

    def done(self, key: str, delete: bool) -> None:
        """Move a processed message to the processed folder, or delete it."""

    def close(self) -> None:
        """Finish (expunge, log out)."""


class MaildirMailbox:
    """A Maildir (Postfix delivering locally): processed mail goes to the ``.FOLDER`` subfolder
    (Maildir++), which mail clients show as a folder."""

    def __init__(self, path: str | Path, processed_folder: str = "Processed") -> None:
        if not Path(path).is_dir():
            raise MailboxError(f"no Maildir at {path}: check NEWSLETTER_BOUNCE_MAILBOX")
        self._box = stdlib_mailbox.Maildir(str(path), factory=None, create=False)
        self._processed_name = processed_folder

    def messages(self) -> Iterator[tuple[str, bytes]]:
        for key in sorted(self._box.keys()):
            yield key, self._box.get_bytes(key)

    def done(self, key: str, delete: bool) -> None:
        if not delete:
            folder = self._box.add_folder(self._processed_name)  # opens it if it exists
            message = self._box.get_message(key)
            message.set_subdir("cur")
            message.add_flag("S")
            folder.add(message)
        self._box.remove(key)

    def close(self) -> None:
        self._box.close()


class ImapMailbox:
    """One IMAP folder; TLS from the start (imaps) or STARTTLS (imap), never plain text."""

    def __init__(
        self,
        host: str,
        port: int | None,
        user: str,
        password: str,
        folder: str,
        *,
        implicit_tls: bool,
        processed_folder: str = "Processed",
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        context = ssl_context or ssl.create_default_context()
        try:
            if implicit_tls:
                self._imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    host, port or 993, ssl_context=context, timeout=timeout
                )
            else:
                self._imap = imaplib.IMAP4(host, port or 143, timeout=timeout)
        except (OSError, imaplib.IMAP4.error) as err:
            raise MailboxError(
                f"IMAP {host}: {err}: check NEWSLETTER_BOUNCE_MAILBOX (host, port)"
            ) from err
        try:
            if not implicit_tls:
                self._imap.starttls(ssl_context=context)
            self._imap.login(user, password)
            status, _ = self._imap.select(_quote(folder))
        except (OSError, imaplib.IMAP4.error) as err:
            self._imap.shutdown()
            raise MailboxError(
                f"IMAP {host}: {err}: check NEWSLETTER_BOUNCE_MAILBOX (host, "
                "port, user, password, folder)"
            ) from err
        if status != "OK":
            raise MailboxError(f"IMAP {host}: no folder {folder!r}")
        self._processed = processed_folder
        self._created = False
        self._expunge = False

    def messages(self) -> Iterator[tuple[str, bytes]]:
        status, data = self._imap.uid("SEARCH", "UNDELETED")
        if status != "OK":
            raise MailboxError(f"IMAP SEARCH failed: {data!r}")
        for uid in (data[0] or b"").split():
            key = uid.decode()
            status, parts = self._imap.uid("FETCH", key, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts if isinstance(p, tuple)), None)
            if status == "OK" and raw is not None:
                yield key, raw

    def done(self, key: str, delete: bool) -> None:
        if not delete:
            if not self._created:
                self._imap.create(_quote(self._processed))  # NO if it exists: fine
                self._created = True
            status, data = self._imap.uid("COPY", key, _quote(self._processed))
            if status != "OK":
                raise MailboxError(f"IMAP: cannot copy to {self._processed!r}: {data!r}")
        self._imap.uid("STORE", key, "+FLAGS.SILENT", r"(\Deleted)")
        self._expunge = True

    def close(self) -> None:
        try:
            if self._expunge:
                self._imap.expunge()
            self._imap.logout()
        except (OSError, imaplib.IMAP4.error):
            pass  # the work is done; a failed goodbye changes nothing


class Pop3Mailbox:
    """POP3 over TLS. POP3 has no folders: a processed message is deleted."""

    def __init__(
        self,
        host: str,
        port: int | None,
        user: str,
        password: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        try:
            self._pop = poplib.POP3_SSL(
                host,
                port or 995,
                timeout=timeout,
                context=ssl_context or ssl.create_default_context(),
            )
        except (OSError, poplib.error_proto) as err:
            raise MailboxError(f"POP3 {host}: {err}: check NEWSLETTER_BOUNCE_MAILBOX") from err
        try:
            self._pop.user(user)
            self._pop.pass_(password)
        except (OSError, poplib.error_proto) as err:
            self._pop.close()
            raise MailboxError(f"POP3 {host}: {err}: check NEWSLETTER_BOUNCE_MAILBOX") from err

    def messages(self) -> Iterator[tuple[str, bytes]]:
        count, _size = self._pop.stat()
        for number in range(1, count + 1):
            _resp, lines, _octets = self._pop.retr(number)
            yield str(number), b"\r\n".join(lines) + b"\r\n"

    def done(self, key: str, delete: bool) -> None:
        self._pop.dele(int(key))

    def close(self) -> None:
        self._pop.quit()  # deletions take effect only at QUIT


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def open_mailbox(
    url: str,
    *,
    processed_folder: str = "Processed",
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> Mailbox:
    """Open the mailbox NEWSLETTER_BOUNCE_MAILBOX names."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise MailboxError(
            f"unknown mailbox scheme {parts.scheme!r}: use imaps://, imap:// "
            "(STARTTLS), pop3s:// or maildir:///path"
        )
    if parts.scheme == "maildir":
        return MaildirMailbox(unquote(parts.netloc + parts.path), processed_folder)
    if not parts.hostname or not parts.username:
        raise MailboxError(f"{parts.scheme}:// needs user:password@host")
    user, password = unquote(parts.username), unquote(parts.password or "")
    if parts.scheme == "pop3s":
        return Pop3Mailbox(
            parts.hostname, parts.port, user, password, ssl_context=ssl_context, timeout=timeout
        )
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    return ImapMailbox(
        parts.hostname,
        parts.port,
        user,
        password,
        folder,
        implicit_tls=parts.scheme == "imaps",
        processed_folder=processed_folder,
        ssl_context=ssl_context,
        timeout=timeout,
    )


@dataclass
class ProcessReport:
    """What a run did: outcomes applied (by what they did), and messages by kind."""

    kinds: dict[str, int] = field(default_factory=dict)
    results: dict[str, int] = field(default_factory=dict)
    unmatched: int = 0  # a bounce about nobody on the list (or a forged token)
    unrecognised: int = 0  # left in the mailbox

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


def match_reader(
    session: Session, config: Mapping[str, Any], found: Classification
) -> tuple[int, int | None] | None:
    """(subscriber id, campaign id) through a VERP token, else through the failed recipient's
    address; None if neither names a reader."""
    claim: VerpClaim | None = None
    for address in found.addresses:
        try:
            claim = claim_from_address(config, address)
        except InvalidVerpError:
            continue  # forged or damaged: do not trust it; the recipient may still match
        if claim is not None:
            break
    if claim is not None and session.get(Subscriber, claim.subscriber_id) is not None:
        return claim.subscriber_id, claim.campaign_id or None
    for recipient in found.recipients:
        try:
            address = normalise_address(recipient)
        except InvalidAddressError:
            continue
        sid = session.scalar(select(Subscriber.id).where(Subscriber.email == address))
        if sid is not None:
            return sid, None
    return None


def process_message(
    session: Session,
    config: Mapping[str, Any],
    clock: Callable[[], datetime],
    raw: bytes,
    source: str,
    report: ProcessReport,
) -> bool:
    """Classify and apply one message; True if it was handled (to be moved away)."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    found = classify(message)
    report.count(report.kinds, found.kind)
    if found.kind == UNRECOGNISED:
        report.unrecognised += 1
        return False
    if found.kind == AUTO_REPLY:
        return True  # not a bounce: nothing to do
    matched = match_reader(session, config, found)
    if matched is None:
        report.unmatched += 1
        return True
    subscriber_id, campaign_id = matched
    result = apply_outcome(
        session,
        config,
        clock,
        Outcome(
            subscriber_id, found.kind, source, campaign_id, found.status_code, found.diagnostic
        ),
    )
    report.count(report.results, result)
    return True


def process_mailbox(
    session: Session,
    config: Mapping[str, Any],
    clock: Callable[[], datetime],
    box: Mailbox,
    *,
    delete: bool = False,
) -> ProcessReport:
    """Read every message waiting in ``box``, apply each, and move the handled ones to the
    processed folder (or delete them); unrecognised ones stay and are counted."""
    report = ProcessReport()
    try:
        for key, raw in box.messages():
            if process_message(session, config, clock, raw, "mailbox", report):
                box.done(key, delete)
    finally:
        box.close()
    return report


def process_configured_mailbox(
    session: Session,
    config: Mapping[str, Any],
    clock: Callable[[], datetime],
    *,
    delete: bool = False,
) -> ProcessReport:
    """One run over NEWSLETTER_BOUNCE_MAILBOX: what ``newsletter process-bounces`` does, and
    what a background worker calls every few minutes when the mailbox is set."""
    if not config.get("BOUNCE_MAILBOX"):
        raise MailboxError(
            "NEWSLETTER_BOUNCE_MAILBOX is not set: set it to imaps://user:password@host/INBOX, "
            "imap://... (STARTTLS), pop3s://... or maildir:///path"
        )
    box = open_mailbox(
        config["BOUNCE_MAILBOX"],
        processed_folder=config["BOUNCE_PROCESSED_FOLDER"],
        timeout=float(config["SMTP_TIMEOUT"]),
    )
    return process_mailbox(session, config, clock, box, delete=delete)

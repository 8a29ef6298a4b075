"""What an incoming message is: a hard or soft bounce, a complaint, an auto-reply, or something
unrecognised; and whom it is about (VERP tokens and failed recipients).

RFC 3464 delivery status notifications are read with the standard library, for their status
codes and Diagnostic-Code; the many non-standard formats real servers send are left to
flufl.bounce (from the Mailman project), which knows them. RFC 5965 feedback reports (ARF) are
complaints. Auto-replies and out-of-office messages are recognised so that they are not bounces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses

HARD = "hard"
SOFT = "soft"
COMPLAINT = "complaint"
AUTO_REPLY = "auto-reply"
UNRECOGNISED = "unrecognised"

_STATUS_CODE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# A full mailbox is temporary whatever class the server gave it (RFC 3463 X.2.2), and so are
# the usual wordings of it.
_MAILBOX_FULL = re.compile(
    r"\b[45]\.2\.2\b|mailbox (is )?full|over ?quota|quota exceeded|"
    r"disk quota|insufficient (system )?storage",
    re.IGNORECASE,
)
_AUTO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|auto(matic)?[ -]?(reply|response)|"
    r"autoreply|auto:|abwesenheit|vacation|away from)",
    re.IGNORECASE,
)
# Headers that carry the address a bounce was sent to, in the order they are trusted.
_RECIPIENT_HEADERS = ("X-Original-To", "Delivered-To", "Envelope-To", "X-Envelope-To", "To")


@dataclass
class Classification:
    """The outcome for one message. ``recipients`` are the failed (or complaining) addresses;
    ``addresses`` every address that may carry a VERP token, most trusted first."""

    kind: str
    recipients: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    status_code: str | None = None
    diagnostic: str | None = None


def _report_type(msg: Message) -> str | None:
    if msg.get_content_type() != "multipart/report":
        return None
    return str(msg.get_param("report-type", "") or "").lower() or None


def _clean_address(value: str) -> str:
    value = value.strip()
    if ";" in value:  # "rfc822; user@example.com"
        value = value.split(";", 1)[1]
    return value.strip().strip("<>").strip()


def _header_addresses(msg: Message, names: Iterable[str]) -> list[str]:
    found: list[str] = []
    for name in names:
        for _display, address in getaddresses([str(v) for v in msg.get_all(name, [])]):
            if address and address not in found:
                found.append(address)
    return found


def _returned_headers(msg: Message) -> list[Message]:
    """The original message's headers, when the report returns them (message/rfc822 or
    text/rfc822-headers): their Return-Path is our VERP address."""
    from email import message_from_string

    found: list[Message] = []
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                found.extend(p for p in payload if isinstance(p, Message))
        elif kind == "text/rfc822-headers":
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                found.append(message_from_string(text.decode("utf-8", "replace")))
    return found


def _candidate_addresses(msg: Message) -> list[str]:
    addresses = _header_addresses(msg, _RECIPIENT_HEADERS)
    for original in _returned_headers(msg):
        for address in _header_addresses(original, ("Return-Path",)):
            if address not in addresses:
                addresses.append(address)
    return addresses


def _status_blocks(msg: Message) -> list[Message]:
    """The per-recipient field groups of a message/delivery-status part."""
    for part in msg.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            payload = part.get_payload()
            if isinstance(payload, list):
                # The first block holds per-message fields; the rest are per recipient.
                blocks = [p for p in payload if isinstance(p, Message)]
                return blocks[1:] if len(blocks) > 1 else blocks
    return []


def _kind_for_status(code: str | None, text: str) -> str:
    if _MAILBOX_FULL.search(text or "") or (code and _MAILBOX_FULL.search(code)):
        return SOFT
    if code and code.startswith("5"):
        return HARD
    return SOFT


def _classify_dsn(msg: Message) -> Classification | None:
    failed: list[tuple[str, str | None, str]] = []
    for block in _status_blocks(msg):
        action = str(block.get("Action", "")).strip().lower()
        if action not in ("failed", "delayed"):
            continue  # delivered, relayed, expanded: good news, not a bounce
        recipient = _clean_address(
            str(block.get("Original-Recipient") or block.get("Final-Recipient") or "")
        )
        status_field = str(block.get("Status", ""))
        status = _STATUS_CODE.search(status_field)
        code = status.group(0) if status else None
        diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
        if diagnostic.lower().startswith("smtp;"):
            diagnostic = diagnostic[5:].strip()
        if action == "delayed":
            # Still being retried: never a reason to stop mailing on its own.
            code = code if code and code.startswith("4") else "4.0.0"
        # Some servers explain the status beside it: "5.0.0 (recipient reached disk quota)".
        failed.append((recipient, code, f"{diagnostic} {status_field}".strip()))
    if not failed:
        return None
    kinds = [_kind_for_status(code, diag) for _r, code, diag in failed]
    # One report about several readers is rare (we send one reader per message); the worst wins.
    index = kinds.index(HARD) if HARD in kinds else 0
    _recipient, code, diagnostic = failed[index]
    diagnostic = diagnostic.removesuffix(str(code or "")).strip() or diagnostic
    return Classification(
        kinds[index],
        [r for r, _c, _d in failed if r],
        _candidate_addresses(msg),
        code,
        diagnostic or None,
    )


def _classify_arf(msg: Message) -> Classification:
    recipients: list[str] = []
    feedback = ""
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            fields = payload[0] if isinstance(payload, list) and payload else part
            if isinstance(fields, Message):
                feedback = str(fields.get("Feedback-Type", "abuse")).strip()
                for value in fields.get_all("Original-Rcpt-To", []):
                    recipients.append(_clean_address(str(value)))
    for original in _returned_headers(msg):
        for address in _header_addresses(original, ("To",)):
            if address not in recipients:
                recipients.append(address)
    return Classification(
        COMPLAINT,
        recipients,
        _candidate_addresses(msg),
        None,
        f"feedback report: {feedback or 'abuse'}",
    )


def _is_auto_reply(msg: Message) -> bool:
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto.startswith("auto-replied"):
        return True
    if any(msg.get(name) for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress")):
        return True
    if str(msg.get("Precedence", "")).strip().lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.search(str(msg.get("Subject", ""))))


def _text_of(msg: Message) -> str:
    chunks: list[str] = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                chunks.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(chunks)


def _diagnostic_line(text: str) -> str | None:
    for line in text.splitlines():
        line = " ".join(line.split())
        if re.search(r"\b[45]\d\d[ -]", line) or _STATUS_CODE.search(line):
            return line[:500]
    return None


def _line_after(text: str, addresses: Iterable[bytes | str]) -> str | None:
    """The explanation most formats put on or just after the line naming the recipient."""
    names = [a.decode("utf-8", "replace") if isinstance(a, bytes) else a for a in addresses]
    lines = [" ".join(line.split()) for line in text.splitlines()]
    for number, line in enumerate(lines):
        if any(name.lower() in line.lower() for name in names):
            rest = [lines[number]] + [x for x in lines[number + 1 : number + 3] if x]
            return " ".join(rest)[:500]
    return None


def _classify_with_flufl(msg: Message) -> Classification | None:
    from flufl.bounce import all_failures

    temporary, permanent = all_failures(msg)
    if not temporary and not permanent:
        return None
    text = _text_of(msg)
    status = _STATUS_CODE.search(text)
    diagnostic = _diagnostic_line(text) or _line_after(text, permanent or temporary)
    kind = HARD if permanent else SOFT
    # flufl.bounce's heuristics only say "failed"; an explicit 4.x.x or a full mailbox in the
    # text says the address itself is fine, so it is only counted.
    if kind == HARD and (_MAILBOX_FULL.search(text) or (status and status.group(1) == "4")):
        kind = SOFT
    addresses = permanent or temporary
    recipients = sorted(
        a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in addresses
    )
    return Classification(
        kind, recipients, _candidate_addresses(msg), status.group(0) if status else None, diagnostic
    )


def classify(msg: Message) -> Classification:
    """Classify one incoming message (see the module's docstring)."""
    report = _report_type(msg)
    if report == "feedback-report":
        return _classify_arf(msg)
    if report == "delivery-status":
        found = _classify_dsn(msg)
        if found is not None:
            return found
        # A report with no failed recipient is a success or relay notice: leave it to flufl,
        # which finds nothing and leaves it unrecognised, or to the auto-reply check.
    found = _classify_with_flufl(msg)
    if found is not None:
        return found
    if _is_auto_reply(msg):
        return Classification(AUTO_REPLY, [], _candidate_addresses(msg))
    return Classification(UNRECOGNISED, [], _candidate_addresses(msg))

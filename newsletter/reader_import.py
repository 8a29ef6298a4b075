"""Importing readers from a CSV file, with the consent rules of the web journey: an import
records where the consent was collected, and never re-activates someone who left or asked to
be erased. (Listing, exporting and one reader by hand are in newsletter.readers.)

Large lists stream: the file is read twice from disk (once to validate, once to merge, in
batches of bulk statements) and no ORM object outlives its batch.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .addresses import InvalidAddressError, address_hash, normalise_address
from .models import (
    BOUNCED,
    CONFIRMED,
    ERASED,
    IMPORTED,
    PENDING,
    UNSUBSCRIBED,
    Subscriber,
    Suppression,
)
from .readers import BATCH_SIZE, EVENTS, SUBSCRIBERS, ReadersError, iso
from .services import Services
from .subscriptions import queue_confirmation

IMPORT_COLUMNS = ("email", "name", "subscribed_at", "source", "status")
#: Problems of one kind kept with their details; past this they are only counted.
MAX_DETAILS = 1000
MAX_NAME = 200
MAX_SOURCE = 2048
MAX_NOTE = 1000
_EXTRA = "\x00extra"  # csv.DictReader's key for fields beyond the header


class ImportFileError(ReadersError):
    """The import file as a whole cannot be read (not CSV, not UTF-8, no ``email`` column)."""


class ImportInterruptedError(ReadersError):
    """The import stopped part way (the batches before were committed); running it again
    finishes it without duplicates."""


@dataclass
class RowProblems:
    """Rows of one kind (invalid, refused, skipped): the first ``MAX_DETAILS`` with reasons."""

    details: list[tuple[int, str]] = field(default_factory=list)
    count: int = 0

    def add(self, line: int, reason: str) -> None:
        """Record one row."""
        self.count += 1
        if len(self.details) < MAX_DETAILS:
            self.details.append((line, reason))


@dataclass
class ImportReport:
    """What an import did, row by row where it matters."""

    file_name: str
    rows: int = 0
    added: int = 0  # new readers
    confirmed_pending: int = 0  # readers who were waiting to confirm, now confirmed by the import
    already_present: int = 0  # merged: already confirmed (or pending, with --require-confirmation)
    names_filled: int = 0
    confirmations_queued: int = 0
    confirmations_held: int = 0  # per-address limits: an email went to them recently
    invalid: RowProblems = field(default_factory=RowProblems)
    duplicates: RowProblems = field(default_factory=RowProblems)
    unsubscribed: RowProblems = field(default_factory=RowProblems)
    erased: RowProblems = field(default_factory=RowProblems)
    skipped: RowProblems = field(default_factory=RowProblems)  # rows whose status says no
    committed: bool = False


@dataclass(frozen=True)
class _Row:
    line: int
    email: str
    name: str | None
    subscribed_at: datetime | None
    source: str | None


def _single_line(value: str, column: str, limit: int) -> str:
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError(f"{column} must be on one line")
    if len(value) > limit:
        raise ValueError(f"{column} is longer than {limit} characters")
    return value


def parse_time(value: str, now: datetime) -> datetime | None:
    """An ISO 8601 date or time (UTC when no offset is given), or None for ''; ValueError else."""
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"subscribed_at {value!r} is not a date like 2024-03-01 or 2024-03-01T09:30:00+00:00"
        ) from None
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if parsed > now + timedelta(days=1):
        raise ValueError(f"subscribed_at {value!r} is in the future")
    return parsed


def _validate(
    path: Path, now: datetime, report: ImportReport, require_confirmation: bool, spool: IO[str]
) -> None:
    """First pass: check every row, write the good ones (normalised) to ``spool``."""
    writer = csv.writer(spool, lineterminator="\n")
    line = 1  # where the record being read starts
    end = 1  # the last line read so far
    try:
        delimiter = _detect_delimiter(path)
        with path.open(newline="", encoding="utf-8-sig") as handle:
            # strict: a quote never closed is an error, not a field that swallows the file.
            reader = csv.DictReader(handle, restkey=_EXTRA, delimiter=delimiter, strict=True)
            if not reader.fieldnames:
                raise ImportFileError(
                    f"{path.name} is empty: expected a header line with an 'email' column"
                )
            reader.fieldnames = [(name or "").strip().lower() for name in reader.fieldnames]
            end = reader.line_num
            if "email" not in reader.fieldnames:
                found = ", ".join(repr(name) for name in reader.fieldnames)
                raise ImportFileError(
                    f"{path.name} has no 'email' column: its first line must name the columns, "
                    f"for example 'email,name,subscribed_at,source' (found {found})"
                )
            while True:
                line = end + 1
                record = next(reader, None)
                if record is None:
                    break
                # Where the record starts: a quoted field may span lines (blank lines between
                # records are skipped by the reader).
                line = max(line, reader.line_num - _line_breaks(record))
                end = reader.line_num
                report.rows += 1
                try:
                    row, wanted = _check_row(record, line, now, require_confirmation)
                except (InvalidAddressError, ValueError) as err:
                    report.invalid.add(line, str(err))
                    continue
                if wanted is not None:
                    report.skipped.add(line, wanted)
                    continue
                writer.writerow(
                    [row.line, row.email, row.name or "", iso(row.subscribed_at), row.source or ""]
                )
    except UnicodeDecodeError as err:
        raise ImportFileError(
            f"{path.name} is not UTF-8 text (after line {end}): save it as "
            "'CSV UTF-8' and try again"
        ) from err
    except csv.Error as err:
        raise ImportFileError(_quote_problem(path, end, reader.line_num, err)) from err


def _detect_delimiter(path: Path) -> str:
    """The header line's separator: a comma, or the semicolon that spreadsheets in much of
    Europe save (where the comma is the decimal mark), or a tab."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = handle.readline()
    unquoted = "".join(header.split('"')[::2])  # separators inside quotes do not count
    counts = {sep: unquoted.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _quote_problem(path: Path, end: int, reached: int, err: csv.Error) -> str:
    """A CSV syntax error as the author can fix it: in practice always a stray quote, in the
    record that starts on the first non-blank line after ``end`` (the last record read)."""
    start = end + 1
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, start=1):
            if number > end and text.strip():
                start = number
                break
    if "unexpected end of data" in str(err):
        return (
            f'{path.name}, line {start}: a quote (") opened on this line is never closed. '
            'Close it, or write a quote that is part of a name as two quotes ("").'
        )
    lines = f"line {start}" if reached <= start else f"lines {start} to {reached}"
    return (
        f'{path.name}, {lines}: not readable as CSV ({err}): a quote (") opened on line '
        f"{start} ends in the middle of a field. Check the quotes there; a quote that is "
        'part of a name is written as two quotes ("").'
    )


def _line_breaks(record: dict[str, Any]) -> int:
    values = [*record.values(), *(record.get(_EXTRA) or [])]
    return sum(value.count("\n") for value in values if isinstance(value, str))


def _check_row(
    record: dict[str, Any], line: int, now: datetime, require_confirmation: bool
) -> tuple[_Row, str | None]:
    """A valid row, and why it is skipped (its status column says so) or None."""
    if record.get(_EXTRA):
        raise ValueError("more fields than the header has columns")
    raw_email = record.get("email")
    if raw_email is None:
        raise ValueError("fewer fields than the header has columns")
    email = normalise_address(raw_email)
    name = _single_line((record.get("name") or "").strip(), "name", MAX_NAME) or None
    source = _single_line((record.get("source") or "").strip(), "source", MAX_SOURCE) or None
    subscribed_at = parse_time(record.get("subscribed_at") or "", now)
    status = (record.get("status") or "").strip().lower()
    row = _Row(line, email, name, subscribed_at, source)
    if status in ("", CONFIRMED):
        return row, None
    if status == PENDING:
        if require_confirmation:
            return row, None
        return row, (
            f"{email} is pending in the file (never confirmed): not imported; "
            "use --require-confirmation to ask them"
        )
    if status in (UNSUBSCRIBED, ERASED, BOUNCED):
        return row, f"{email} is {status} in the file: not imported"
    raise ValueError(f"status {status!r} is not one of confirmed, pending, unsubscribed")


def _spooled(spool: IO[str]) -> Iterator[_Row]:
    spool.seek(0)
    for line, email, name, subscribed_at, source in csv.reader(spool):
        yield _Row(
            int(line),
            email,
            name or None,
            datetime.fromisoformat(subscribed_at) if subscribed_at else None,
            source or None,
        )


@dataclass(frozen=True)
class _ImportContext:
    services: Services
    now: datetime
    note: str
    file_name: str
    require_confirmation: bool
    last_id_before: int


def import_readers(
    session: Session,
    services: Services,
    path: Path,
    *,
    consent_note: str,
    require_confirmation: bool = False,
    skip_invalid: bool = False,
    batch_size: int = BATCH_SIZE,
) -> ImportReport:
    """Import readers from a CSV file (``email``, optional ``name``, ``subscribed_at``, ``source``).

    New readers become confirmed with an ``imported`` consent event carrying ``consent_note`` and
    the file's name, or, with ``require_confirmation``, pending with a double-opt-in email.
    Addresses already present are merged; unsubscribed and erased ones are never re-activated.
    With any invalid row nothing is imported unless ``skip_invalid``. Commits batch by batch,
    so running it again after an interruption finishes the job without duplicates.
    """
    note = " ".join(consent_note.split())
    if not note:
        raise ReadersError(
            "Say where the consent was collected with --consent-note, for "
            "example --consent-note 'sign-up sheet at the spring workshop'."
        )
    if len(note) > MAX_NOTE:
        raise ReadersError(f"The consent note is longer than {MAX_NOTE} characters.")
    now = services.clock()
    report = ImportReport(file_name=path.name)
    with tempfile.TemporaryFile("w+", newline="", encoding="utf-8") as spool:
        _validate(path, now, report, require_confirmation, spool)
        if report.invalid.count and not skip_invalid:
            return report
        last_id = session.scalar(select(func.max(Subscriber.id))) or 0
        session.commit()
        context = _ImportContext(services, now, note, path.name, require_confirmation, last_id)
        batch: list[_Row] = []
        for row in _spooled(spool):
            batch.append(row)
            if len(batch) >= batch_size:
                _merge_safely(session, context, batch, report)
                batch = []
        if batch:
            _merge_safely(session, context, batch, report)
    report.committed = True
    return report


def _merge_safely(
    session: Session, context: _ImportContext, batch: list[_Row], report: ImportReport
) -> None:
    try:
        _merge_batch(session, context, batch, report)
    except IntegrityError as err:
        # Someone signed up with one of these addresses between our look-up and our insert.
        session.rollback()
        raise ImportInterruptedError(
            f"another process added one of the addresses on lines {batch[0].line} to "
            f"{batch[-1].line} while this import ran. The rows before line {batch[0].line} are "
            "imported; run the same command again to finish (nothing is duplicated)."
        ) from err


def _event_row(context: _ImportContext, subscriber_id: int, row: _Row) -> dict[str, Any]:
    when = f"; subscribed {iso(row.subscribed_at)}" if row.subscribed_at else ""
    return {
        "subscriber_id": subscriber_id,
        "kind": IMPORTED,
        "occurred_at": context.now,
        "method": "import",
        "ip": None,
        "user_agent": None,
        "source_url": row.source,
        "consent_text": None,
        "privacy_policy_url": None,
        "note": f"{context.note} (file {context.file_name}, line {row.line}{when})",
    }


def _merge_batch(
    session: Session, context: _ImportContext, batch: list[_Row], report: ImportReport
) -> None:
    """Merge one batch with a handful of bulk statements, then commit it."""
    now = context.now
    unique: dict[str, _Row] = {}
    for row in batch:
        if row.email in unique:
            report.duplicates.add(
                row.line,
                f"{row.email} appears again (first on line {unique[row.email].line}): merged",
            )
        else:
            unique[row.email] = row
    existing = {
        email: (sid, status, name)
        for sid, email, status, name in session.execute(
            select(Subscriber.id, Subscriber.email, Subscriber.status, Subscriber.name).where(
                Subscriber.email.in_(list(unique))
            )
        )
    }
    secret = context.services.config["SECRET_KEY"]
    hashes = {address_hash(secret, email): email for email in unique if email not in existing}
    suppressed = {
        hashes[h]
        for h in session.scalars(
            select(Suppression.address_hash).where(Suppression.address_hash.in_(list(hashes)))
        )
    }

    events: list[dict[str, Any]] = []
    to_confirm: list[int] = []
    to_ask: list[int] = []
    names: list[dict[str, Any]] = []
    new_rows: list[dict[str, Any]] = []
    for email, row in unique.items():
        if email in suppressed:
            report.erased.add(row.line, "erased at the reader's request: not imported")
            continue
        if email not in existing:
            status = PENDING if context.require_confirmation else CONFIRMED
            new_rows.append(
                {
                    "email": email,
                    "name": row.name,
                    "status": status,
                    "token_generation": 1 if status == PENDING else 0,
                    "created_at": row.subscribed_at or now,
                    "updated_at": now,
                    "confirmed_at": (row.subscribed_at or now) if status == CONFIRMED else None,
                    "unsubscribed_at": None,
                }
            )
            continue
        sid, status, name = existing[email]
        if sid > context.last_id_before:
            report.duplicates.add(row.line, f"{email} appears earlier in the file: merged")
            continue
        if status == UNSUBSCRIBED:
            report.unsubscribed.add(row.line, f"{email} unsubscribed: not re-activated")
            continue
        if row.name and not name:
            names.append({"sid": sid, "new_name": row.name})
        if status == PENDING and not context.require_confirmation:
            to_confirm.append(sid)
            events.append(_event_row(context, sid, row))
        elif status == PENDING:
            to_ask.append(sid)
            report.already_present += 1
        else:
            report.already_present += 1

    if new_rows:
        rows_by_email = {row.email: row for row in unique.values()}
        inserted = session.execute(
            insert(SUBSCRIBERS).returning(SUBSCRIBERS.c.id, SUBSCRIBERS.c.email), new_rows
        ).all()
        for sid, email in inserted:
            events.append(_event_row(context, sid, rows_by_email[email]))
            if context.require_confirmation:
                to_ask.append(sid)
        report.added += len(inserted)
    if to_confirm:
        session.execute(
            update(SUBSCRIBERS)
            .where(SUBSCRIBERS.c.id.in_(to_confirm), SUBSCRIBERS.c.status == PENDING)
            .values(status=CONFIRMED, confirmed_at=now, updated_at=now)
        )
        report.confirmed_pending += len(to_confirm)
    if names:
        session.execute(
            update(SUBSCRIBERS)
            .where(SUBSCRIBERS.c.id == bindparam("sid"), SUBSCRIBERS.c.name.is_(None))
            .values(name=bindparam("new_name")),
            names,
        )
        report.names_filled += len(names)
    if events:
        session.execute(insert(EVENTS), events)
    if to_ask:
        _ask_to_confirm(session, context, to_ask, report)
    session.commit()
    session.expunge_all()  # flat memory: nothing from this batch stays in the session


def _ask_to_confirm(
    session: Session, context: _ImportContext, ids: list[int], report: ImportReport
) -> None:
    """Queue the double-opt-in email for pending readers, within the per-address limits."""
    for subscriber in session.scalars(select(Subscriber).where(Subscriber.id.in_(ids))):
        if queue_confirmation(session, context.services, subscriber, context.now):
            report.confirmations_queued += 1
        else:
            report.confirmations_held += 1

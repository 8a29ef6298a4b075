"""The author's reader commands: list, count, import, export, add, unsubscribe, show."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import func, select

from newsletter import create_app
from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.models import Campaign, ConsentEvent, Delivery, OutboxEmail, Subscriber
from newsletter.subscriptions import RequestInfo, subscribe
from tests.conftest import PUBLIC_URL, link_in
from tests.smtp_sink import SmtpSink

NOTE = "Sign-up sheet at the spring breathing workshop, 2026"


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """A CSV file as a spreadsheet would save it."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def readers(app: Flask) -> dict[str, Subscriber]:
    """Every reader with an address, by address (detached copies for assertions)."""
    with app.app_context():
        found = {s.email: s for s in db.session.scalars(select(Subscriber)) if s.email}
        for subscriber in found.values():
            db.session.expunge(subscriber)
        return found


def events_of(app: Flask, email: str) -> list[ConsentEvent]:
    with app.app_context():
        subscriber = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert subscriber is not None
        events = list(subscriber.events)
        for event in events:
            db.session.expunge(event)
        return events


def sign_up(app: Flask, email: str, name: str | None = None) -> None:
    """A reader asks through the form (pending)."""
    with app.app_context():
        subscribe(
            db.session,
            get_services(app),
            email,
            name=name,
            info=RequestInfo("form", "203.0.113.9", "Firefox", "https://blog.example.com/"),
        )


def import_file(runner: FlaskCliRunner, path: Path, *extra: str) -> Any:
    return runner.invoke(args=["subscribers", "import", str(path), "--consent-note", NOTE, *extra])


def test_imported_readers_are_confirmed_with_an_imported_event(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    path = write_csv(
        tmp_path / "workshop.csv",
        ["Email", "Name", "subscribed_at", "source"],
        [
            ["Maya@Example.org", "Maya", "2025-04-12", "https://blog.example.com/workshop"],
            ["theo@example.net", "", "2025-04-12T18:30:00+02:00", ""],
            ["sam@example.com", "Sam", "", ""],
        ],
    )
    result = import_file(runner, path)
    assert result.exit_code == 0, result.output
    assert "3 new readers confirmed" in result.output

    found = readers(app)
    assert set(found) == {"maya@example.org", "theo@example.net", "sam@example.com"}
    assert all(s.status == "confirmed" for s in found.values())
    assert found["maya@example.org"].name == "Maya"
    assert found["maya@example.org"].confirmed_at == datetime(2025, 4, 12, tzinfo=UTC)
    assert found["theo@example.net"].confirmed_at == datetime(2025, 4, 12, 16, 30, tzinfo=UTC)
    assert found["sam@example.com"].confirmed_at == get_services(app).clock()

    (event,) = events_of(app, "maya@example.org")
    assert event.kind == "imported" and event.method == "import"
    assert NOTE in (event.note or "") and "workshop.csv" in (event.note or "")
    assert "line 2" in (event.note or "")
    assert event.source_url == "https://blog.example.com/workshop"
    assert smtp_sink.messages == []  # confirmed readers get no double-opt-in email


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (["not-an-address", "", "", ""], "doesn't look like an email address"),
        (["two@example.com, three@example.com", "", "", ""], "just one email address"),
        (["", "", "", ""], "enter your email address"),
        (["ok1@example.com", "", "12/04/2025", ""], "is not a date"),
        (["ok2@example.com", "", "2031-01-01", ""], "in the future"),
        (["ok3@example.com", "Ann\nBcc: x@example.com", "", ""], "name must be on one line"),
        (["ok4@example.com", "", "", "", "surplus"], "more fields than the header"),
        (["ok5@example.com", "x" * 201, "", ""], "longer than 200"),
    ],
)
def test_an_invalid_row_stops_the_whole_import_and_is_reported_by_line(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path, row: list[str], reason: str
) -> None:
    path = write_csv(
        tmp_path / "list.csv",
        ["email", "name", "subscribed_at", "source"],
        [["good@example.com", "", "", ""], row, ["also.good@example.com", "", "", ""]],
    )
    result = import_file(runner, path)
    assert result.exit_code == 1
    assert "line 3: " in result.output and reason in result.output
    assert "Nothing imported" in result.output
    assert readers(app) == {}


def test_skip_invalid_imports_the_valid_rows(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "list.csv",
        ["email"],
        [["good@example.com"], ["broken@"], ["fine@example.com"], ["@nope"]],
    )
    result = import_file(runner, path, "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert "Invalid rows: 2" in result.output
    assert "line 3:" in result.output and "line 5:" in result.output
    assert set(readers(app)) == {"good@example.com", "fine@example.com"}


def test_existing_readers_are_merged_and_unsubscribed_ones_never_reactivated(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    sign_up(app, "waiting@example.com")
    import_file(
        runner,
        write_csv(
            tmp_path / "first.csv",
            ["email", "name"],
            [["loyal@example.com", ""], ["left@example.com", "Lee"]],
        ),
    )
    assert runner.invoke(args=["subscribers", "unsubscribe", "left@example.com"]).exit_code == 0

    path = write_csv(
        tmp_path / "second.csv",
        ["email", "name"],
        [
            ["LOYAL@example.com", "Lou"],  # confirmed: merged, name filled in
            ["waiting@example.com", ""],  # pending: the import's consent confirms them
            ["left@example.com", "Lee"],  # unsubscribed: refused, reported
            ["new@example.com", "Nia"],
            ["New@Example.com", "Nia again"],  # duplicate within the file
        ],
    )
    result = import_file(runner, path)
    assert result.exit_code == 0, result.output
    assert "line 4: left@example.com unsubscribed: not re-activated" in result.output
    assert "line 6: new@example.com appears again (first on line 5): merged" in result.output

    found = readers(app)
    assert sorted(found) == [
        "left@example.com",
        "loyal@example.com",
        "new@example.com",
        "waiting@example.com",
    ]
    assert found["loyal@example.com"].name == "Lou"
    assert found["waiting@example.com"].status == "confirmed"
    assert found["left@example.com"].status == "unsubscribed"
    assert found["new@example.com"].name == "Nia"
    assert [e.kind for e in events_of(app, "waiting@example.com")] == ["requested", "imported"]
    assert [e.kind for e in events_of(app, "left@example.com")] == ["imported", "withdrawn"]
    assert [e.kind for e in events_of(app, "loyal@example.com")] == ["imported"]


def test_duplicates_across_batches_are_merged(app: Flask, tmp_path: Path) -> None:
    from newsletter.reader_import import import_readers

    rows = [[f"reader{i}@example.com"] for i in range(7)] + [["reader1@example.com"]]
    path = write_csv(tmp_path / "dupes.csv", ["email"], rows)
    with app.app_context():
        report = import_readers(
            db.session, get_services(app), path, consent_note=NOTE, batch_size=3
        )
        count = db.session.scalar(select(func.count()).select_from(Subscriber))
    assert report.added == 7 and count == 7
    assert report.duplicates.details == [
        (9, "reader1@example.com appears earlier in the file: merged")
    ]


def test_require_confirmation_sends_double_opt_in_within_the_limits(
    runner: FlaskCliRunner, app: Flask, client: FlaskClient, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    path = write_csv(
        tmp_path / "old-list.csv",
        ["email", "name"],
        [["ivy@example.com", "Ivy"], ["jon@example.com", ""]],
    )
    result = import_file(runner, path, "--require-confirmation")
    assert result.exit_code == 0, result.output
    assert "2 new readers pending" in result.output and "Sent 2 emails" in result.output
    assert {s.status for s in readers(app).values()} == {"pending"}

    (to_ivy,) = smtp_sink.to("ivy@example.com")
    assert "Ivy" not in to_ivy.data.decode()  # the name is never echoed
    confirm_path = link_in(to_ivy.body("plain"), "confirm")
    assert client.post(confirm_path).status_code == 200
    assert readers(app)["ivy@example.com"].status == "confirmed"

    # The same file again at once: Jon got an email minutes ago, so none goes now.
    again = import_file(runner, path, "--require-confirmation")
    assert again.exit_code == 0, again.output
    assert "1 held back" in again.output
    assert len(smtp_sink.to("jon@example.com")) == 1


def test_status_column_keeps_out_rows_that_never_consented(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "export.csv",
        ["email", "status"],
        [
            ["yes@example.com", "confirmed"],
            ["maybe@example.com", "pending"],
            ["gone@example.com", "unsubscribed"],
        ],
    )
    result = import_file(runner, path)
    assert result.exit_code == 0, result.output
    assert "line 3: maybe@example.com is pending in the file" in result.output
    assert "line 4: gone@example.com is unsubscribed in the file" in result.output
    assert set(readers(app)) == {"yes@example.com"}

    bad = write_csv(tmp_path / "bad.csv", ["email", "status"], [["a@example.com", "vip"]])
    assert "status 'vip' is not one of" in import_file(runner, bad).output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"address,name\nx@example.com,X\n", "no 'email' column"),
        (b"email\nok@example.com\ncaf\xe9@example.com\n", "not UTF-8"),
    ],
)
def test_unreadable_files_are_refused_whole(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(content)
    result = import_file(runner, path)
    assert result.exit_code == 1 and message in result.output
    assert readers(app) == {}


def test_the_consent_note_is_required(runner: FlaskCliRunner, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "list.csv", ["email"], [["a@example.com"]])
    missing = runner.invoke(args=["subscribers", "import", str(path)])
    assert missing.exit_code == 2 and "--consent-note" in missing.output
    blank = runner.invoke(args=["subscribers", "import", str(path), "--consent-note", "  "])
    assert blank.exit_code == 1 and "Say where the consent was collected" in blank.output


def test_a_spreadsheet_bom_and_header_case_are_accepted(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff Email ,Name\r\nzoe@example.com,Zo\xeb\r\n".encode())
    result = import_file(runner, path)
    assert result.exit_code == 0, result.output
    assert readers(app)["zoe@example.com"].name == "Zo\xeb"


@pytest.fixture
def second_app(
    migrated_db: Path, tmp_path: Path, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Flask]:
    """Another installation with an empty database of its own (the import's destination)."""
    database = tmp_path / "second.sqlite"
    shutil.copyfile(migrated_db, database)
    other = create_app({**config, "DATABASE_URL": f"sqlite:///{database}"})
    get_services(other).clock = lambda: datetime(2026, 11, 3, tzinfo=UTC)
    yield other
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def test_export_then_import_round_trip(
    runner: FlaskCliRunner,
    app: Flask,
    client: FlaskClient,
    tmp_path: Path,
    smtp_sink: SmtpSink,
    second_app: Flask,
) -> None:
    import_file(
        runner,
        write_csv(
            tmp_path / "list.csv",
            ["email", "name", "subscribed_at", "source"],
            [
                [
                    "ada@example.com",
                    'Ada, the "calm" one',
                    "2024-01-05T07:00:00+00:00",
                    "https://blog.example.com/a",
                ],
                ["bo@example.com", "", "2024-02-01", ""],
                ["cy@example.com", "Cy", "2024-03-01", ""],
            ],
        ),
    )
    runner.invoke(args=["subscribers", "unsubscribe", "cy@example.com"])
    client.post(
        "/subscribe",
        data={
            "email": "dee@example.com",
            "name": "Dee",
            "source": "https://blog.example.com/breathing",
        },
    )
    confirm_path = link_in(smtp_sink.wait_for(1)[0].body("plain"), "confirm")
    client.post(confirm_path)
    sign_up(app, "eve@example.com")  # pending: never confirmed

    exported = tmp_path / "export.csv"
    result = runner.invoke(args=["subscribers", "export", "--output", str(exported)])
    assert result.exit_code == 0 and "Wrote 5 readers" in result.output
    rows = list(csv.DictReader(io.StringIO(exported.read_text(encoding="utf-8"))))
    by_email = {row["email"]: row for row in rows}
    assert by_email["ada@example.com"]["name"] == 'Ada, the "calm" one'
    assert by_email["ada@example.com"]["subscribed_at"] == "2024-01-05T07:00:00+00:00"
    assert by_email["cy@example.com"]["unsubscribed_at"] == "2026-11-02T09:00:00+00:00"
    assert by_email["dee@example.com"]["source"] == "https://blog.example.com/breathing"
    assert by_email["eve@example.com"]["status"] == "pending"

    other_runner = second_app.test_cli_runner()
    imported = other_runner.invoke(
        args=[
            "subscribers",
            "import",
            str(exported),
            "--consent-note",
            "moved from the old install",
        ]
    )
    assert imported.exit_code == 0, imported.output
    assert "3 new readers confirmed" in imported.output  # not the unsubscribed, not the pending
    again = other_runner.invoke(args=["subscribers", "export", "--status", "confirmed"])
    mine = runner.invoke(args=["subscribers", "export", "--status", "confirmed"])
    assert again.output == mine.output
    assert len(again.output.splitlines()) == 4


def test_list_and_count(runner: FlaskCliRunner, app: Flask, tmp_path: Path) -> None:
    import_file(
        runner,
        write_csv(
            tmp_path / "list.csv",
            ["email", "name"],
            [["ana@example.com", "Ana"], ["ben@example.com", ""]],
        ),
    )
    sign_up(app, "cat@example.com")

    table = runner.invoke(args=["subscribers", "list"])
    assert table.exit_code == 0
    assert "ana@example.com" in table.output and "3 readers." in table.output
    assert runner.invoke(args=["subscribers", "list", "--format", "text"]).output == table.output
    pending = runner.invoke(args=["subscribers", "list", "--status", "pending", "--format", "json"])
    assert [r["email"] for r in json.loads(pending.output)] == ["cat@example.com"]
    as_csv = runner.invoke(args=["subscribers", "list", "--format", "csv"])
    assert [r["email"] for r in csv.DictReader(io.StringIO(as_csv.output))] == [
        "ana@example.com",
        "ben@example.com",
        "cat@example.com",
    ]
    assert (
        json.loads(
            runner.invoke(
                args=["subscribers", "list", "--format", "json", "--status", "erased"]
            ).output
        )
        == []
    )

    counted = runner.invoke(args=["subscribers", "count"])
    lines = dict(line.split() for line in counted.output.splitlines())
    assert lines == {
        "pending": "1",
        "confirmed": "2",
        "unsubscribed": "0",
        "erased": "0",
        "bounced": "0",
        "total": "3",
    }


def test_add_sends_the_double_opt_in_email(
    runner: FlaskCliRunner, app: Flask, client: FlaskClient, smtp_sink: SmtpSink
) -> None:
    result = runner.invoke(args=["subscribers", "add", "Friend@Example.com", "--name", "Fran"])
    assert result.exit_code == 0, result.output
    assert "Asked Friend@Example.com to confirm" in result.output
    (email,) = smtp_sink.wait_for(1)
    assert email.recipients == ["friend@example.com"]
    requested = events_of(app, "friend@example.com")[0]
    assert (requested.kind, requested.method) == ("requested", "cli")
    assert readers(app)["friend@example.com"].status == "pending"
    client.post(link_in(email.body("plain"), "confirm"))
    assert readers(app)["friend@example.com"].status == "confirmed"

    again = runner.invoke(args=["subscribers", "add", "friend@example.com"])
    assert "already a confirmed reader" in again.output
    bad = runner.invoke(args=["subscribers", "add", "friend@"])
    assert bad.exit_code == 2 and "doesn't look like an email address" in bad.output


def test_unsubscribe_from_the_command_line(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    import_file(runner, write_csv(tmp_path / "l.csv", ["email"], [["kim@example.com"]]))
    result = runner.invoke(args=["subscribers", "unsubscribe", "KIM@example.com"])
    assert result.exit_code == 0 and "Unsubscribed kim@example.com." in result.output
    withdrawn = events_of(app, "kim@example.com")[-1]
    assert (withdrawn.kind, withdrawn.method) == ("withdrawn", "cli")
    again = runner.invoke(args=["subscribers", "unsubscribe", "kim@example.com"])
    assert again.exit_code == 0 and "already unsubscribed" in again.output
    missing = runner.invoke(args=["subscribers", "unsubscribe", "nobody@example.com"])
    assert missing.exit_code == 1 and "No reader" in missing.output


def test_a_semicolon_separated_file_is_read_like_a_comma_separated_one(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    # As spreadsheets save "CSV" where the comma is the decimal mark (much of Europe).
    path = tmp_path / "europe.csv"
    path.write_text(
        'E-Mail;Name\nmaya@example.org;Maya\ntheo@example.net;"Theo; Jr."\n'.replace(
            "E-Mail", "email"
        ),
        encoding="utf-8",
    )
    result = import_file(runner, path)
    assert result.exit_code == 0, result.output
    found = readers(app)
    assert found["maya@example.org"].name == "Maya"
    assert found["theo@example.net"].name == "Theo; Jr."


def test_a_tab_separated_file_is_read_too(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    path = tmp_path / "tabs.csv"
    path.write_text("email\tname\nmaya@example.org\tMaya\n", encoding="utf-8")
    assert import_file(runner, path).exit_code == 0
    assert readers(app)["maya@example.org"].name == "Maya"


def test_an_unclosed_quote_is_reported_on_its_own_line(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    path = tmp_path / "quote.csv"
    path.write_text(
        'email,name\nmaya@example.org,Maya\n\ntheo@example.net,"Theo\n'
        "rosa@example.com,Rosa\nlena@example.com,Lena\n",
        encoding="utf-8",
    )
    result = import_file(runner, path)
    assert result.exit_code == 1
    assert "line 4" in result.output and "quote" in result.output
    assert readers(app) == {}


def test_a_quote_closed_lines_later_is_reported_where_it_opened(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    path = tmp_path / "quote.csv"
    path.write_text(
        'email,name\nmaya@example.org,"Maya\nrosa@example.com,"Rosa"\n', encoding="utf-8"
    )
    result = import_file(runner, path)
    assert result.exit_code == 1
    assert "line 2" in result.output and "quote" in result.output
    assert readers(app) == {}


def test_the_summary_counts_every_row_once(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    sign_up(app, "waiting@example.com")
    first = write_csv(tmp_path / "first.csv", ["email"], [["here@example.com"]])
    assert import_file(runner, first).exit_code == 0
    path = write_csv(
        tmp_path / "readers.csv",
        ["email", "name", "status"],
        [
            ["new@example.com", "New", ""],
            ["NEW@example.com", "", ""],
            ["waiting@example.com", "", ""],
            ["here@example.com", "", ""],
            ["never@example.com", "", "pending"],
            ["not an address", "", ""],
            ["multi@example.com", "Two\nlines", ""],
        ],
    )
    result = import_file(runner, path, "--skip-invalid")
    assert result.exit_code == 0, result.output
    summary = next(line for line in result.output.splitlines() if line.startswith("Read "))
    assert summary == (
        "Read 7 rows from readers.csv: 1 new reader confirmed, 1 waiting reader confirmed, "
        "1 already here, 1 repeated in the file (merged), 0 unsubscribed and 0 erased refused, "
        "1 skipped, 2 invalid."
    )


def test_show_lists_events_in_time_order(runner: FlaskCliRunner, app: Flask) -> None:
    sign_up(app, "reader@example.com")
    clock = get_services(app).clock
    with app.app_context():
        subscriber = db.session.scalar(select(Subscriber))
        assert subscriber is not None
        # Recorded after the sign-up (a higher id) for a moment before it.
        db.session.add(
            ConsentEvent(
                subscriber_id=subscriber.id,
                kind="confirmation_sent",
                occurred_at=clock() - timedelta(minutes=5),
                method="form",
            )
        )
        db.session.add(
            ConsentEvent(
                subscriber_id=subscriber.id,
                kind="confirmed",
                occurred_at=clock() + timedelta(minutes=5),
                method="form",
            )
        )
        db.session.commit()
    shown = json.loads(runner.invoke(args=["subscribers", "show", "reader@example.com"]).output)
    times = [event["at"] for event in shown["events"]]
    assert times == sorted(times)
    assert [event["kind"] for event in shown["events"]] == [
        "confirmation_sent",
        "requested",
        "confirmed",
    ]


def test_show_includes_every_delivery_and_email(
    runner: FlaskCliRunner, app: Flask, client: FlaskClient, smtp_sink: SmtpSink
) -> None:
    client.post("/subscribe", data={"email": "reader@example.com"})
    client.post(link_in(smtp_sink.wait_for(1)[0].body("plain"), "confirm"))
    smtp_sink.wait_for(2)
    app.extensions["newsletter.outbox_sender"].stop()  # let it record the 250s, then stop
    clock = get_services(app).clock
    with app.app_context():
        subscriber = db.session.scalar(select(Subscriber))
        assert subscriber is not None
        for number, status in enumerate(("sent", "failed"), start=1):
            campaign = Campaign(
                kind="digest",
                subject=f"Slow mornings, part {number}",
                content_hash=f"h{number}",
                status="sent",
                created_at=clock(),
                html="<p>x</p>",
                text="x",
            )
            db.session.add(campaign)
            db.session.flush()
            db.session.add(
                Delivery(
                    campaign_id=campaign.id, subscriber_id=subscriber.id, status=status, attempts=1
                )
            )
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(OutboxEmail)) == 2

    shown = json.loads(runner.invoke(args=["subscribers", "show", "reader@example.com"]).output)
    assert [(d["subject"], d["kind"], d["status"]) for d in shown["deliveries"]] == [
        ("Slow mornings, part 1", "digest", "sent"),
        ("Slow mornings, part 2", "digest", "failed"),
    ]
    assert all(d["campaign_id"] for d in shown["deliveries"])
    assert [(e["kind"], e["status"]) for e in shown["emails"]] == [
        ("confirmation", "sent"),
        ("welcome", "sent"),
    ]
    assert shown["email"] == "reader@example.com" and PUBLIC_URL not in json.dumps(shown)


def test_an_import_racing_a_sign_up_stops_cleanly_and_resumes(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    from sqlalchemy import event, text

    path = write_csv(
        tmp_path / "list.csv", ["email"], [["first@example.com"], ["racer@example.com"]]
    )
    with app.app_context():
        engine = db.engine
    raced: list[str] = []

    def sign_up_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # A web worker signs "racer" up between the import's look-up and its insert.
        if statement.startswith("INSERT INTO subscribers") and not raced:
            raced.append(statement)
            with engine.begin() as other:
                other.execute(
                    text(
                        "INSERT INTO subscribers (email, status, token_generation, created_at, "
                        "updated_at) VALUES ('racer@example.com', 'pending', 1, :now, :now)"
                    ),
                    {"now": datetime(2026, 11, 2, 9, 0)},
                )

    event.listen(engine, "before_cursor_execute", sign_up_first)
    try:
        stopped = import_file(runner, path)
    finally:
        event.remove(engine, "before_cursor_execute", sign_up_first)
    assert stopped.exit_code == 1, stopped.output
    assert (
        "Import stopped: another process added one of the addresses on lines 2 to 3"
        in stopped.output
    )
    assert set(readers(app)) == {"racer@example.com"}

    resumed = import_file(runner, path)
    assert resumed.exit_code == 0, resumed.output
    assert "1 new reader confirmed, 1 waiting reader confirmed" in resumed.output
    assert {e: s.status for e, s in readers(app).items()} == {
        "first@example.com": "confirmed",
        "racer@example.com": "confirmed",
    }

"""GDPR erasure and the retention purge: nothing personal is left, not even in the file's bytes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import func, select

from newsletter import create_app
from newsletter.addresses import address_hash
from newsletter.appctx import get_services
from newsletter.config import ConfigError
from newsletter.db import db
from newsletter.models import Campaign, ConsentEvent, Delivery, OutboxEmail, Subscriber, Suppression
from newsletter.subscriptions import RequestInfo, describe, subscribe
from tests.conftest import BLOG_ORIGIN, FrozenClock, link_in, wait_for_outbox
from tests.smtp_sink import SmtpSink

ADDRESS = "juniper.woods@example.org"
NAME = "Juniper"
AGENT = "ErasureTestBrowser/7.3"

ON_SQLITE = not os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "").startswith("postgresql")


def database_bytes(app: Flask) -> bytes:
    """The raw bytes of the SQLite database file and its write-ahead log."""
    path = Path(app.config["DATABASE_URL"].removeprefix("sqlite:///"))
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def assert_in_file(app: Flask, items: list[bytes], present: bool) -> None:
    """On SQLite, whether each item is (or is not) anywhere in the database's files.
    (On PostgreSQL old row versions stay until VACUUM FULL: the README says so.)"""
    if not ON_SQLITE:
        return
    raw = database_bytes(app)
    for item in items:
        assert (item in raw) is present, (
            f"{item!r} {'missing from' if present else 'still in'} the database file"
        )


def stop_background_sender(app: Flask) -> None:
    """Let the web process's sender finish marking its emails sent, then stop it."""
    app.extensions["newsletter.outbox_sender"].stop()


def subscribe_and_confirm(client: FlaskClient, smtp_sink: SmtpSink, app: Flask) -> dict[str, str]:
    """The reader's whole journey through the form; returns the links from their emails."""
    response = client.post(
        "/subscribe",
        data={
            "email": ADDRESS.upper(),
            "name": NAME,
            "source": f"{BLOG_ORIGIN}/posts/morning-tea?ref={ADDRESS}",
        },
        headers={"User-Agent": AGENT},
    )
    assert response.status_code == 303
    confirm_path = link_in(smtp_sink.wait_for(1)[0].body("plain"), "confirm")
    wait_for_outbox(app)
    assert client.post(confirm_path, headers={"User-Agent": AGENT}).status_code == 200
    welcome = smtp_sink.wait_for(2)[1]
    stop_background_sender(app)
    return {
        "confirm": confirm_path,
        "unsubscribe": link_in(welcome.message["List-Unsubscribe"], "unsubscribe"),
    }


def add_campaign_delivery(app: Flask, subscriber_id: int, reply: str) -> None:
    clock = get_services(app).clock
    with app.app_context():
        campaign = Campaign(
            kind="digest",
            subject="Five slow breaths before breakfast",
            content_hash="c1",
            status="sent",
            created_at=clock(),
            html="<p>Breathe</p>",
            text="Breathe",
        )
        db.session.add(campaign)
        db.session.flush()
        db.session.add(
            Delivery(
                campaign_id=campaign.id,
                subscriber_id=subscriber_id,
                status="failed",
                attempts=1,
                smtp_reply=reply,
            )
        )
        db.session.commit()


def the_only_reader(app: Flask) -> Subscriber:
    with app.app_context():
        subscriber = db.session.scalar(select(Subscriber))
        assert subscriber is not None
        db.session.expunge(subscriber)
        return subscriber


def test_erasure_leaves_nothing_personal_and_the_reader_can_come_back(
    client: FlaskClient, runner: FlaskCliRunner, app: Flask, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    links = subscribe_and_confirm(client, smtp_sink, app)
    reader_id = the_only_reader(app).id
    add_campaign_delivery(app, reader_id, f"550 5.2.2 <{ADDRESS}>: mailbox full")
    personal = [
        ADDRESS.encode(),
        NAME.encode(),
        AGENT.encode(),
        b"ref=juniper",
        ADDRESS.split("@")[0].encode(),
    ]
    assert_in_file(app, personal, present=True)  # the check below can find them

    result = runner.invoke(args=["subscribers", "erase", ADDRESS, "--yes"])
    assert result.exit_code == 0, result.output
    assert f"Erased reader {reader_id}" in result.output
    assert "1 delivery record." in result.output and "2 emails" in result.output

    assert_in_file(app, personal, present=False)

    shown = runner.invoke(args=["subscribers", "show", ADDRESS])
    assert shown.exit_code == 1 and "it was erased" in shown.output
    with app.app_context():
        subscriber = db.session.get(Subscriber, reader_id)
        assert subscriber is not None
        record = describe(db.session, subscriber)
        emails = db.session.scalars(select(OutboxEmail)).all()
        delivery = db.session.scalar(select(Delivery))
        suppressed = db.session.scalars(select(Suppression.address_hash)).all()
    assert (record["email"], record["name"], record["status"]) == (None, None, "erased")
    assert [e["kind"] for e in record["events"]] == [
        "requested",
        "confirmation_sent",
        "confirmed",
        "erased",
    ]
    assert all(e["ip"] is None and e["user_agent"] is None for e in record["events"])
    assert record["events"][0]["source_url"] == f"{BLOG_ORIGIN}/posts/morning-tea"
    assert record["events"][0]["consent_text"] == app.config["CONSENT_TEXT"]  # proof kept
    assert [(d["subject"], d["status"]) for d in record["deliveries"]] == [
        ("Five slow breaths before breakfast", "failed")
    ]
    assert delivery is not None and delivery.smtp_reply is None
    assert delivery.subscriber_id == reader_id
    assert all(e.recipient is None and e.message is None for e in emails) and len(emails) == 2
    assert suppressed == [address_hash("test-secret", ADDRESS)]

    # Old links: the confirm link is dead; the unsubscribe link in an old email still answers
    # that no more email comes, and records nothing (an event would hold an IP address).
    assert client.post(links["confirm"]).status_code == 400
    assert b"unsubscribed" in client.post(links["unsubscribe"]).data
    assert (
        client.post(links["unsubscribe"], data={"List-Unsubscribe": "One-Click"}).status_code == 200
    )
    with app.app_context():
        kinds = db.session.scalars(
            select(ConsentEvent.kind)
            .where(ConsentEvent.subscriber_id == reader_id)
            .order_by(ConsentEvent.id)
        ).all()
    assert kinds == ["requested", "confirmation_sent", "confirmed", "erased"]

    # Imports and the author's `add` refuse the address ...
    path = tmp_path / "old-list.csv"
    path.write_text(f"email\nother@example.org\n{ADDRESS}\n", encoding="utf-8")
    imported = runner.invoke(args=["subscribers", "import", str(path), "--consent-note", "old"])
    assert imported.exit_code == 0, imported.output
    assert "line 3: erased at the reader's request: not imported" in imported.output
    assert ADDRESS not in imported.output
    added = runner.invoke(args=["subscribers", "add", ADDRESS])
    assert added.exit_code == 1 and "erased at the reader's request" in added.output
    with app.app_context():
        assert (
            db.session.scalar(
                select(func.count()).select_from(Subscriber).where(Subscriber.email == ADDRESS)
            )
            == 0
        )

    # ... but the person may sign up again themselves: a fresh consent, with double opt-in.
    again = client.post("/subscribe", data={"email": ADDRESS}, headers={"User-Agent": AGENT})
    assert again.status_code == 303
    fresh_email = smtp_sink.wait_for(3)[2]
    assert fresh_email.recipients == [ADDRESS]
    shown = runner.invoke(args=["subscribers", "show", ADDRESS])
    fresh = json.loads(shown.output)
    assert fresh["id"] != reader_id and fresh["status"] == "pending"
    # Only the new request (and, once the server said 250, its email): no history carried over.
    assert [e["kind"] for e in fresh["events"]] in (
        ["requested"],
        ["requested", "confirmation_sent"],
    )
    assert fresh["deliveries"] == []
    assert client.post(link_in(fresh_email.body("plain"), "confirm")).status_code == 200


def test_erasure_is_idempotent_and_reported(
    client: FlaskClient, runner: FlaskCliRunner, app: Flask, smtp_sink: SmtpSink
) -> None:
    subscribe_and_confirm(client, smtp_sink, app)
    first = runner.invoke(args=["subscribers", "erase", ADDRESS, "--yes"])
    assert first.exit_code == 0 and "Erased reader" in first.output
    second = runner.invoke(args=["subscribers", "erase", ADDRESS.upper(), "--yes"])
    assert second.exit_code == 0, second.output
    assert "Already erased: nothing personal is held" in second.output
    with app.app_context():
        erased_events = db.session.scalar(
            select(func.count()).select_from(ConsentEvent).where(ConsentEvent.kind == "erased")
        )
        suppressions = db.session.scalar(select(func.count()).select_from(Suppression))
    assert erased_events == 1 and suppressions == 1


def test_erasing_an_unknown_address_still_keeps_imports_from_adding_it(
    runner: FlaskCliRunner, app: Flask, tmp_path: Path
) -> None:
    result = runner.invoke(args=["subscribers", "erase", "stranger@example.com", "--yes"])
    assert result.exit_code == 0 and "No reader had this address" in result.output
    path = tmp_path / "list.csv"
    path.write_text("email\nStranger@Example.com\n", encoding="utf-8")
    imported = runner.invoke(args=["subscribers", "import", str(path), "--consent-note", "x"])
    assert "line 2: erased at the reader's request" in imported.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_erase_asks_before_it_acts(
    client: FlaskClient, runner: FlaskCliRunner, app: Flask, smtp_sink: SmtpSink
) -> None:
    subscribe_and_confirm(client, smtp_sink, app)
    result = runner.invoke(args=["subscribers", "erase", ADDRESS], input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output
    assert the_only_reader(app).email == ADDRESS


# --- purge -----------------------------------------------------------------------------------


def sign_up(app: Flask, email: str) -> None:
    with app.app_context():
        subscribe(
            db.session,
            get_services(app),
            email,
            name="Pat",
            info=RequestInfo("form", "198.51.100.7", AGENT, f"{BLOG_ORIGIN}/"),
        )


def addresses(app: Flask) -> dict[str, str]:
    with app.app_context():
        return {s.email: s.status for s in db.session.scalars(select(Subscriber)) if s.email}


def test_purge_removes_only_stale_never_confirmed_sign_ups(
    runner: FlaskCliRunner, app: Flask, clock: FrozenClock, client: FlaskClient, tmp_path: Path
) -> None:
    stale = "stale.signup@example.net"
    sign_up(app, stale)
    sign_up(app, "asked.again@example.net")
    sign_up(app, "came.and.went@example.net")
    with app.app_context():
        services = get_services(app)
        from newsletter.subscriptions import confirm, unsubscribe

        came = db.session.scalar(
            select(Subscriber).where(Subscriber.email == "came.and.went@example.net")
        )
        assert came is not None
        confirm(
            db.session,
            services,
            services.tokens.confirm_token(came.id, came.token_generation, came.link_key or ""),
            RequestInfo("form"),
        )
        unsubscribe(db.session, services, came.id, RequestInfo("form"))
    clock.advance(days=20)
    sign_up(app, "asked.again@example.net")  # a newer request: the clock starts again
    sign_up(app, "came.and.went@example.net")  # pending again, but once confirmed: kept
    clock.advance(days=11)  # the first sign-ups are now 31 days old
    sign_up(app, "recent@example.net")
    assert_in_file(app, [stale.encode()], present=True)

    dry = runner.invoke(args=["purge", "--dry-run"])
    assert dry.exit_code == 0
    assert "Would remove 1 sign-up not confirmed within 30 days" in dry.output
    assert stale in addresses(app)

    result = runner.invoke(args=["purge"])
    assert result.exit_code == 0, result.output
    assert "Removed 1 sign-up" in result.output
    assert addresses(app) == {
        "asked.again@example.net": "pending",
        "came.and.went@example.net": "pending",
        "recent@example.net": "pending",
    }
    with app.app_context():
        orphans = [
            db.session.scalar(
                select(func.count())
                .select_from(table)
                .where(table.subscriber_id.not_in(select(Subscriber.id)))
            )
            for table in (ConsentEvent, OutboxEmail)
        ]
        suppressions = db.session.scalar(select(func.count()).select_from(Suppression))
    assert orphans == [0, 0] and suppressions == 0  # nothing recorded about them
    assert_in_file(app, [stale.encode()], present=False)
    assert "Removed 0 sign-ups" in runner.invoke(args=["purge"]).output


def test_purge_follows_the_retention_setting(
    config: dict[str, Any], runner: FlaskCliRunner, app: Flask, clock: FrozenClock
) -> None:
    app.config["PENDING_RETENTION_DAYS"] = 3
    sign_up(app, "short.wait@example.net")
    clock.advance(days=3, seconds=1)
    assert "Removed 1 sign-up not confirmed within 3 days" in runner.invoke(args=["purge"]).output
    assert addresses(app) == {}


@pytest.mark.parametrize("value", ["0", "many", "5000"])
def test_a_bad_retention_setting_stops_start_up(config: dict[str, Any], value: str) -> None:
    with pytest.raises(ConfigError, match="NEWSLETTER_PENDING_RETENTION_DAYS"):
        create_app({**config, "PENDING_RETENTION_DAYS": value})


def test_the_export_of_an_erased_reader_is_empty(
    client: FlaskClient, runner: FlaskCliRunner, app: Flask, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    subscribe_and_confirm(client, smtp_sink, app)
    runner.invoke(args=["subscribers", "erase", ADDRESS, "--yes"])
    out = tmp_path / "all.csv"
    runner.invoke(args=["subscribers", "export", "--output", str(out)])
    with out.open(encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == []
    listed = runner.invoke(args=["subscribers", "list", "--status", "erased"])
    assert "(erased)" in listed.output and ADDRESS not in listed.output

"""`newsletter stats` on a known data set built with a fixed clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select

from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.models import Campaign, Delivery, Subscriber
from newsletter.privacy import erase_reader
from newsletter.reader_import import import_readers
from newsletter.stats import list_stats, week_starts
from newsletter.subscriptions import RequestInfo, confirm, subscribe, unsubscribe
from tests.conftest import FrozenClock

FORM = RequestInfo("form", "192.0.2.1", "Browser", "https://blog.example.com/")


def at(clock: FrozenClock, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> None:
    clock.now = datetime(year, month, day, hour, minute, tzinfo=UTC)


class Journeys:
    """Readers' steps through the domain functions, at the clock's time."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.services = get_services(app)

    def _id(self, email: str) -> int:
        found = db.session.scalar(select(Subscriber.id).where(Subscriber.email == email))
        assert found is not None
        return found

    def sign_up(self, email: str) -> None:
        with self.app.app_context():
            subscribe(db.session, self.services, email, name=None, info=FORM)

    def confirm(self, email: str) -> None:
        with self.app.app_context():
            subscriber = db.session.get(Subscriber, self._id(email))
            assert subscriber is not None
            token = self.services.tokens.confirm_token(
                subscriber.id, subscriber.token_generation, subscriber.link_key or ""
            )
            confirm(db.session, self.services, token, FORM)

    def leave(self, email: str) -> None:
        with self.app.app_context():
            unsubscribe(db.session, self.services, self._id(email), FORM)

    def campaign(self, subject: str, when: datetime, statuses: list[str]) -> None:
        with self.app.app_context():
            campaign = Campaign(
                kind="digest",
                subject=subject,
                content_hash=subject,
                status="sent",
                created_at=when,
                html="<p>x</p>",
                text="x",
            )
            db.session.add(campaign)
            db.session.flush()
            readers = db.session.scalars(select(Subscriber.id).order_by(Subscriber.id)).all()
            for reader_id, status in zip(readers, statuses, strict=False):
                db.session.add(
                    Delivery(
                        campaign_id=campaign.id, subscriber_id=reader_id, status=status, attempts=1
                    )
                )
            db.session.commit()


@pytest.fixture
def known_list(app: Flask, clock: FrozenClock, tmp_path: Path) -> Flask:
    """Six sign-ups over four months, two imports, two withdrawals, one erasure, three digests."""
    steps = Journeys(app)
    at(clock, 2026, 7, 1, 12)  # before the 12 weeks shown
    steps.sign_up("fay@example.com")
    steps.confirm("fay@example.com")
    at(clock, 2026, 10, 13, 10)  # week of 12 October
    for name in ("ann", "bob", "cal"):
        steps.sign_up(f"{name}@example.com")
    at(clock, 2026, 10, 14, 8)
    steps.confirm("ann@example.com")
    steps.confirm("bob@example.com")
    at(clock, 2026, 10, 27, 9)  # week of 26 October
    steps.sign_up("dan@example.com")
    steps.sign_up("eve@example.com")
    at(clock, 2026, 10, 27, 21)
    steps.sign_up("eve@example.com")  # asked twice: still one sign-up that week
    at(clock, 2026, 10, 28, 7)
    steps.confirm("dan@example.com")
    at(clock, 2026, 11, 1, 23, 59)  # Sunday night: still the week of 26 October
    steps.leave("ann@example.com")
    at(clock, 2026, 11, 2, 9)  # Monday: this week
    path = tmp_path / "cards.csv"
    path.write_text("email\ngus@example.com\nhal@example.com\n", encoding="utf-8")
    with app.app_context():
        import_readers(db.session, steps.services, path, consent_note="reading-group cards")
        erase_reader(db.session, steps.services, "eve@example.com")
    steps.leave("bob@example.com")
    steps.campaign("September notes", datetime(2026, 9, 7, tzinfo=UTC), ["sent"] * 2)
    steps.campaign(
        "Slow mornings", datetime(2026, 10, 19, tzinfo=UTC), ["sent", "sent", "sent", "failed"]
    )
    steps.campaign(
        "Tea and quiet",
        datetime(2026, 10, 26, tzinfo=UTC),
        ["sent", "sent", "deferred", "skipped", "queued"],
    )
    return app


def test_week_starts_are_mondays_in_utc() -> None:
    starts = week_starts(datetime(2026, 11, 4, 23, 30, tzinfo=UTC), 3)
    assert [s.date().isoformat() for s in starts] == ["2026-10-19", "2026-10-26", "2026-11-02"]
    assert all(s.weekday() == 0 and s.hour == 0 for s in starts)


def test_stats_figures_on_a_known_list(known_list: Flask, clock: FrozenClock) -> None:
    with known_list.app_context():
        stats = list_stats(db.session, clock(), campaigns=2)
    assert stats.readers == {
        "pending": 1,
        "confirmed": 4,
        "unsubscribed": 2,
        "erased": 1,
        "bounced": 0,
    }
    weeks = {
        w.start.date().isoformat(): (w.sign_ups, w.confirmed, w.imported, w.withdrawn)
        for w in stats.weeks
    }
    assert len(weeks) == 12 and min(weeks) == "2026-08-17" and max(weeks) == "2026-11-02"
    assert {week: row for week, row in weeks.items() if any(row)} == {
        "2026-10-12": (3, 2, 0, 0),
        "2026-10-26": (2, 1, 0, 1),
        "2026-11-02": (0, 0, 2, 1),
    }
    # fay, ann, bob, cal, dan, eve signed up; fay, ann, bob, dan confirmed. Imports don't count.
    assert (stats.sign_ups, stats.sign_ups_confirmed) == (6, 4)
    assert stats.confirmation_rate == pytest.approx(4 / 6)
    assert [(c.subject, c.deliveries) for c in stats.campaigns] == [
        ("Tea and quiet", {"sent": 2, "failed": 0, "deferred": 1, "skipped": 1, "queued": 1}),
        ("Slow mornings", {"sent": 3, "failed": 1, "deferred": 0, "skipped": 0, "queued": 0}),
    ]


def test_stats_command_prints_text_and_json(known_list: Flask, runner: FlaskCliRunner) -> None:
    text = runner.invoke(args=["stats"])
    assert text.exit_code == 0, text.output
    assert "Confirmation rate of sign-ups: 67% (4 of 6 confirmed)" in text.output
    lines = text.output.splitlines()
    assert any(line.split() == ["2026-10-12", "3", "2", "0", "0"] for line in lines)
    assert any(
        line.split()[:9] == ["3", "2026-10-26", "digest", "2", "0", "1", "1", "1", "Tea"]
        for line in lines
    )
    assert "No tracking pixels" in text.output

    data = json.loads(runner.invoke(args=["stats", "--format", "json", "--weeks", "2"]).output)
    assert [w["week_of"] for w in data["weeks"]] == ["2026-10-26", "2026-11-02"]
    assert data["readers"]["confirmed"] == 4
    assert [c["subject"] for c in data["campaigns"]] == [
        "Tea and quiet",
        "Slow mornings",
        "September notes",
    ]


def test_stats_on_an_empty_list(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["stats"])
    assert result.exit_code == 0
    assert "no sign-ups yet" in result.output and "none yet" in result.output

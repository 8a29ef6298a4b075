"""The rules: a hard bounce marks the reader bounced; soft bounces are counted (3 over 15 days,
no successful delivery between); a complaint unsubscribes for good; figures and warnings."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.bounces.figures import campaign_bounce_figures
from newsletter.bounces.rules import (
    COUNTED,
    MARKED_BOUNCED,
    MARKED_COMPLAINED,
    Outcome,
    apply_outcome,
)
from newsletter.models import (
    BOUNCED,
    CONFIRMED,
    PENDING,
    UNSUBSCRIBED,
    BounceRecord,
    ConsentEvent,
    Subscriber,
)
from newsletter.reader_import import import_readers
from newsletter.services import Services
from newsletter.subscriptions import RequestInfo, subscribe
from tests.bounce_helpers import add_campaign, add_delivery, add_reader
from tests.conftest import FrozenClock


def _events(session: Session, sid: int) -> list[tuple[str, str | None]]:
    return [
        (e.kind, e.note)
        for e in session.scalars(
            select(ConsentEvent).where(ConsentEvent.subscriber_id == sid).order_by(ConsentEvent.id)
        )
    ]


def test_hard_bounce_marks_the_reader_bounced_with_the_diagnostic(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    sid = add_reader(session, "sam@reader.example", clock())
    campaign = add_campaign(session, clock())
    result = apply_outcome(
        session,
        services.config,
        clock,
        Outcome(sid, "hard", "mailbox", campaign, "5.1.1", "550 5.1.1 User unknown"),
    )
    assert result == MARKED_BOUNCED
    assert session.get(Subscriber, sid).status == BOUNCED
    assert _events(session, sid) == [("bounced", "550 5.1.1 User unknown")]
    record = session.scalars(select(BounceRecord)).one()
    assert (record.campaign_id, record.kind, record.source) == (campaign, "hard", "mailbox")


def test_three_soft_bounces_over_fifteen_days_mark_the_reader_bounced(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    sid = add_reader(session, "sam@reader.example", clock())
    config = services.config
    outcomes = []
    for _ in range(3):
        outcomes.append(
            apply_outcome(
                session, config, clock, Outcome(sid, "soft", "mailbox", None, "4.2.2", "full")
            )
        )
        clock.advance(days=7)
    # Three soft bounces, but the third came only 14 days after the first: counted.
    assert outcomes == [COUNTED, COUNTED, COUNTED]
    assert session.get(Subscriber, sid).status == CONFIRMED
    clock.advance(days=1)  # the fourth comes 22 days after the first
    assert apply_outcome(session, config, clock, Outcome(sid, "soft", "mailbox")) == MARKED_BOUNCED
    assert session.get(Subscriber, sid).status == BOUNCED
    assert _events(session, sid)[-1][1].startswith("3 soft bounces over 15 days")


def test_a_successful_delivery_resets_the_soft_bounce_count(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    sid = add_reader(session, "sam@reader.example", clock())
    config = services.config
    apply_outcome(session, config, clock, Outcome(sid, "soft", "mailbox"))
    clock.advance(days=10)
    # A digest reached the reader (sent, and no bounce for it).
    add_delivery(session, add_campaign(session, clock()), sid, clock())
    clock.advance(days=1)
    apply_outcome(session, config, clock, Outcome(sid, "soft", "mailbox"))
    clock.advance(days=10)
    assert apply_outcome(session, config, clock, Outcome(sid, "soft", "mailbox")) == COUNTED
    assert session.get(Subscriber, sid).status == CONFIRMED


def test_complaint_unsubscribes_and_import_never_resubscribes(
    session: Session, services: Services, clock: FrozenClock, tmp_path: Path
) -> None:
    sid = add_reader(session, "sam@reader.example", clock())
    result = apply_outcome(
        session,
        services.config,
        clock,
        Outcome(sid, "complaint", "mailbox", None, None, "feedback: abuse"),
    )
    assert result == MARKED_COMPLAINED
    assert session.get(Subscriber, sid).status == UNSUBSCRIBED
    assert _events(session, sid) == [("complained", "feedback: abuse")]
    csv = tmp_path / "old.csv"
    csv.write_text("email\nsam@reader.example\n")
    report = import_readers(session, services, csv, consent_note="old list")
    assert report.unsubscribed.count == 1
    session.expire_all()
    assert session.get(Subscriber, sid).status == UNSUBSCRIBED


def test_bounced_reader_who_signs_up_again_goes_through_double_opt_in(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    sid = add_reader(session, "sam@reader.example", clock())
    apply_outcome(session, services.config, clock, Outcome(sid, "hard", "mailbox"))
    outcome = subscribe(
        session, services, "sam@reader.example", name=None, info=RequestInfo("form")
    )
    assert outcome.subscriber_id == sid and outcome.confirmation_queued
    session.expire_all()
    assert session.get(Subscriber, sid).status == PENDING
    assert [kind for kind, _note in _events(session, sid)][-2:] == [
        "requested",
        "confirmation_sent",
    ] or [kind for kind, _note in _events(session, sid)][-1] == "requested"


def test_subscribers_list_shows_bounced_readers(
    session: Session, services: Services, clock: FrozenClock, runner: FlaskCliRunner
) -> None:
    sid = add_reader(session, "gone@reader.example", clock())
    add_reader(session, "here@reader.example", clock())
    apply_outcome(session, services.config, clock, Outcome(sid, "hard", "mailbox"))
    result = runner.invoke(args=["subscribers", "list", "--status", "bounced"])
    assert result.exit_code == 0, result.output
    assert "gone@reader.example" in result.output and "here@reader.example" not in result.output


def test_campaign_figures_and_warnings(
    session: Session, services: Services, clock: FrozenClock, app: Flask
) -> None:
    campaign = add_campaign(session, clock())
    readers = [add_reader(session, f"r{n}@reader.example", clock()) for n in range(40)]
    for sid in readers:
        add_delivery(session, campaign, sid, clock())
    apply_outcome(session, services.config, clock, Outcome(readers[0], "hard", "ses", campaign))
    apply_outcome(session, services.config, clock, Outcome(readers[1], "soft", "ses", campaign))
    apply_outcome(
        session, services.config, clock, Outcome(readers[2], "complaint", "ses", campaign)
    )
    figures = campaign_bounce_figures(session, [campaign], services.config)[campaign]
    assert (figures.sent, figures.hard_bounces, figures.soft_bounces, figures.complaints) == (
        40,
        1,
        1,
        1,
    )
    assert figures.hard_bounce_rate == 0.025 and figures.complaint_rate == 0.025
    assert len(figures.warnings) == 2
    assert "sign-up form" in figures.warnings[0] and "imported segment" in figures.warnings[1]
    quiet = campaign_bounce_figures(
        session,
        [campaign],
        {**services.config, "COMPLAINT_RATE_WARNING": 0.05, "HARD_BOUNCE_RATE_WARNING": 0.05},
    )
    assert quiet[campaign].warnings == []


def test_an_export_with_bounced_readers_imports_without_them(
    session: Session, services: Services, clock: FrozenClock, tmp_path: Path
) -> None:
    csv = tmp_path / "export.csv"
    csv.write_text("email,status\nok@reader.example,confirmed\ngone@reader.example,bounced\n")
    report = import_readers(session, services, csv, consent_note="moved from another install")
    assert report.skipped.count == 1
    emails = set(session.scalars(select(Subscriber.email)))
    assert emails == {"ok@reader.example"}


def test_import_leaves_a_bounced_reader_bounced(
    session: Session, services: Services, clock: FrozenClock, tmp_path: Path
) -> None:
    sid = add_reader(session, "gone@reader.example", clock())
    apply_outcome(session, services.config, clock, Outcome(sid, "hard", "mailbox"))
    csv = tmp_path / "old.csv"
    csv.write_text("email\ngone@reader.example\n")
    import_readers(session, services, csv, consent_note="old list")
    session.expire_all()
    assert session.get(Subscriber, sid).status == BOUNCED


def test_erasure_removes_the_address_from_bounce_diagnostics(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    from newsletter.privacy import erase_reader

    sid = add_reader(session, "sam@reader.example", clock())
    apply_outcome(
        session,
        services.config,
        clock,
        Outcome(
            sid, "hard", "mailbox", None, "5.1.1", "550 5.1.1 <sam@reader.example>: User unknown"
        ),
    )
    erase_reader(session, services, "sam@reader.example")
    session.expire_all()
    notes = [note for _kind, note in _events(session, sid)]
    diagnostics = list(session.scalars(select(BounceRecord.diagnostic)))
    assert not any("sam@reader.example" in (text or "") for text in notes + diagnostics)
    # The facts stay: a bounce happened, of this kind, on this day.
    assert session.scalars(select(BounceRecord.kind)).all() == ["hard"]


def test_purge_removes_a_stale_sign_up_with_its_bounce_records(
    session: Session, services: Services, clock: FrozenClock
) -> None:
    from newsletter.privacy import purge_pending

    sid = add_reader(session, "typo@reader.example", clock(), status=PENDING)
    session.get(Subscriber, sid).confirmed_at = None
    session.commit()
    # The confirmation email's mailbox was full: one soft bounce, the sign-up stays pending.
    apply_outcome(session, services.config, clock, Outcome(sid, "soft", "mailbox"))
    clock.advance(days=services.config["PENDING_RETENTION_DAYS"] + 1)
    assert purge_pending(session, services).removed == 1
    assert session.scalars(select(BounceRecord)).all() == []

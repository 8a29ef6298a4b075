"""`newsletter doctor` reads the last campaign's bounce and complaint rates once bounce
processing is set up: WARN past the warning settings, PROBLEM past 5% bounces or Gmail's 0.3%."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from newsletter.appctx import get_services
from newsletter.bounces.rules import Outcome, apply_outcome
from newsletter.db import db
from newsletter.doctor import DoctorInputs, Status
from newsletter.doctor.service_checks import check_bounces
from tests.bounce_helpers import add_campaign, add_delivery, add_reader
from tests.conftest import FrozenClock


def _check(app: Flask) -> tuple[Status, str, str | None]:
    services = get_services(app)
    check = check_bounces(
        DoctorInputs(app.config, db.session(), services.clock, services.tokens.unsubscribe_token)
    )
    return check.status, check.found, check.to_do


def test_doctor_reads_the_last_campaigns_rates(
    make_app: Callable[..., Flask], clock: FrozenClock
) -> None:
    app = make_app(BOUNCE_MAILBOX="maildir:///var/mail/bounces")
    with app.app_context():
        session = db.session()
        assert _check(app)[0] is Status.OK  # nothing sent yet
        campaign = add_campaign(session, clock())
        readers = [add_reader(session, f"r{n}@reader.example", clock()) for n in range(200)]
        for sid in readers:
            add_delivery(session, campaign, sid, clock())
        status, found, _ = _check(app)
        assert status is Status.OK and "0 hard bounces" in found and "200 sent" in found
        for sid in readers[:5]:  # 2.5%: over the 2% warning, under 5%
            apply_outcome(session, app.config, clock, Outcome(sid, "hard", "mailbox", campaign))
        status, found, to_do = _check(app)
        assert status is Status.WARN and "5 hard bounces (2.5%)" in found
        assert to_do is not None and "imported segment" in to_do
        apply_outcome(
            session, app.config, clock, Outcome(readers[10], "complaint", "mailbox", campaign)
        )
        status, found, to_do = _check(app)  # 1 of 200 = 0.5%: over Gmail's 0.3%
        assert status is Status.PROBLEM and "1 complaint (0.5%)" in found
        assert to_do is not None and "sign-up form" in to_do
        db.session.remove()


def test_doctor_says_when_bounce_processing_is_not_set_up(app: Flask) -> None:
    with app.app_context():
        status, found, _ = _check(app)
        db.session.remove()
    assert status is Status.OK and "not set up" in found

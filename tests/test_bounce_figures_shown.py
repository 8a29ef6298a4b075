"""Where the bounce figures show: `newsletter campaigns show ID` and `newsletter stats` print
each campaign's bounce and complaint counts and rates, and the warnings past the thresholds."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskCliRunner
from sqlalchemy.orm import Session

from newsletter.appctx import get_services
from newsletter.bounces.rules import Outcome, apply_outcome
from newsletter.db import db
from newsletter.services import Services
from tests.bounce_helpers import add_campaign, add_delivery, add_reader
from tests.conftest import FrozenClock


def bounced_campaign(
    session: Session, services: Services, clock: FrozenClock, *, complaints: int = 1
) -> int:
    """A campaign sent to 40 readers: one hard bounce (2.5%), one soft, ``complaints``."""
    campaign = add_campaign(session, clock(), subject="Slow mornings")
    readers = [add_reader(session, f"r{n}@reader.example", clock()) for n in range(40)]
    for sid in readers:
        add_delivery(session, campaign, sid, clock())
    outcomes = [(readers[0], "hard"), (readers[1], "soft")]
    outcomes += [(readers[2 + n], "complaint") for n in range(complaints)]
    for sid, kind in outcomes:
        apply_outcome(session, services.config, clock, Outcome(sid, kind, "ses", campaign))
    return campaign


def test_campaigns_show_prints_the_figures_and_what_to_do(
    session: Session, services: Services, clock: FrozenClock, runner: FlaskCliRunner
) -> None:
    campaign = bounced_campaign(session, services, clock)

    result = runner.invoke(args=["campaigns", "show", str(campaign)])

    assert result.exit_code == 0, result.output
    assert (
        "Bounces and complaints: hard bounces 1 (2.50%), soft bounces 1, complaints 1 (2.50%)."
        in result.output
    )
    assert "Warning: Complaint rate 2.50% is over 0.10%" in result.output
    assert "Warning: Hard-bounce rate 2.50% is over 2.00%" in result.output
    assert "check the sign-up form for abuse" in result.output


def test_campaigns_show_warns_of_nothing_below_the_thresholds(
    session: Session, services: Services, clock: FrozenClock, runner: FlaskCliRunner
) -> None:
    campaign = add_campaign(session, clock())
    for n in range(3):
        add_delivery(session, campaign, add_reader(session, f"r{n}@x.example", clock()), clock())

    result = runner.invoke(args=["campaigns", "show", str(campaign)])

    assert result.exit_code == 0, result.output
    assert "hard bounces 0 (0.00%), soft bounces 0, complaints 0 (0.00%)" in result.output
    assert "Warning" not in result.output


def test_stats_prints_the_figures_per_campaign_and_the_warnings(
    session: Session, services: Services, clock: FrozenClock, runner: FlaskCliRunner
) -> None:
    campaign = bounced_campaign(session, services, clock, complaints=0)

    result = runner.invoke(args=["stats"])

    assert result.exit_code == 0, result.output
    section = result.output.split("Bounces and complaints")[1]
    row = next(line.split() for line in section.splitlines() if line.split()[:1] == [str(campaign)])
    assert row == [str(campaign), "40", "1", "2.50%", "1", "0", "0.00%"]
    assert f"Campaign {campaign}: Hard-bounce rate 2.50% is over 2.00%" in section
    assert "Complaint rate" not in section


def test_stats_json_carries_the_figures(
    session: Session, services: Services, clock: FrozenClock, runner: FlaskCliRunner
) -> None:
    campaign = bounced_campaign(session, services, clock)

    result = runner.invoke(args=["stats", "--format", "json"])

    assert result.exit_code == 0, result.output
    (figures,) = [c for c in json.loads(result.output)["campaigns"] if c["id"] == campaign]
    bounces = figures["bounces"]
    assert (bounces["sent"], bounces["hard_bounces"], bounces["soft_bounces"]) == (40, 1, 1)
    assert bounces["complaints"] == 1 and bounces["complaint_rate"] == 0.025
    assert len(bounces["warnings"]) == 2


def test_thresholds_come_from_the_settings(make_app: Any, clock: FrozenClock) -> None:
    app = make_app(COMPLAINT_RATE_WARNING=0.05, HARD_BOUNCE_RATE_WARNING=0.05)
    with app.app_context():
        bounced_campaign(db.session(), get_services(app), clock)
        db.session.remove()
    result = app.test_cli_runner().invoke(args=["stats"])
    assert result.exit_code == 0, result.output
    assert "Bounces and complaints" in result.output and "Warnings" not in result.output

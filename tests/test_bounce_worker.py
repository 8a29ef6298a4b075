"""The worker reads NEWSLETTER_BOUNCE_MAILBOX every NEWSLETTER_BOUNCE_POLL_MINUTES (a Maildir,
the clock driven by the test), and not at all without a mailbox."""

from __future__ import annotations

import io
import mailbox
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from newsletter.bounces.verp import verp_address
from newsletter.config import ConfigError
from newsletter.db import db
from newsletter.models import BOUNCED, CONFIRMED, Subscriber
from newsletter.worker import Worker
from tests.bounce_helpers import add_campaign, add_reader, sample
from tests.conftest import FrozenClock

BOUNCE_ADDRESS = "bounces@blog.example.com"


def worker_for(app: Flask, clock: FrozenClock) -> Worker:
    return Worker(
        app, out=io.StringIO(), sleep=lambda s: clock.advance(seconds=s), worker_id="test:1:b"
    )


def bounce_for(app: Flask, clock: FrozenClock, name: str) -> tuple[int, bytes]:
    """A reader and the Postfix DSN that says their mailbox is gone."""
    with app.app_context():
        session = db.session()
        campaign = add_campaign(session, clock(), subject=f"About {name}")
        sid = add_reader(session, f"{name}@reader.example", clock())
        verp = verp_address(app.config, campaign, sid)
        db.session.remove()
    return sid, sample("postfix_dsn.eml", verp, f"{name}@reader.example")


def status_of(app: Flask, sid: int) -> str:
    with app.app_context():
        status = db.session.get(Subscriber, sid).status  # type: ignore[union-attr]
        db.session.remove()
    return status


def test_the_worker_reads_the_bounce_mailbox_every_few_minutes(
    make_app: Callable[..., Flask], clock: FrozenClock, tmp_path: Path
) -> None:
    app = make_app(
        BOUNCE_ADDRESS=BOUNCE_ADDRESS,
        BOUNCE_MAILBOX=f"maildir://{tmp_path / 'Maildir'}",
        BOUNCE_POLL_MINUTES=5,
    )
    box = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    first, first_dsn = bounce_for(app, clock, "first")
    second, second_dsn = bounce_for(app, clock, "second")
    box.add(first_dsn)
    worker = worker_for(app, clock)

    worker.run_once()  # the first round reads the mailbox
    assert status_of(app, first) == BOUNCED
    assert "bounces processed handled=1 unrecognised=0 hard=1" in worker.out.getvalue()  # type: ignore[attr-defined]
    assert len(box) == 0 and len(box.get_folder("Processed")) == 1

    box.add(second_dsn)
    clock.advance(minutes=4, seconds=59)
    worker.run_once()  # not yet five minutes
    assert status_of(app, second) == CONFIRMED and len(box) == 1

    clock.advance(seconds=1)
    worker.run_once()
    assert status_of(app, second) == BOUNCED and len(box) == 0


def test_without_a_bounce_mailbox_the_worker_reads_none(
    make_app: Callable[..., Flask], clock: FrozenClock, tmp_path: Path
) -> None:
    app = make_app(BOUNCE_ADDRESS=BOUNCE_ADDRESS)
    worker = worker_for(app, clock)
    assert worker.settings.bounce_poll is None
    worker.run_once()
    assert "bounces" not in worker.out.getvalue()  # type: ignore[attr-defined]


def test_a_mailbox_error_is_kept_for_healthz_and_the_loop_goes_on(
    make_app: Callable[..., Flask], clock: FrozenClock, tmp_path: Path
) -> None:
    app = make_app(BOUNCE_MAILBOX=f"maildir://{tmp_path / 'missing'}")
    worker = worker_for(app, clock)
    worker.run_once()
    assert worker.last_error is not None and worker.last_error.startswith("poll bounces:")
    assert app.test_client().get("/healthz").json["worker"]["running"] is True


@pytest.mark.parametrize("value", ["0", "-1", "often", str(24 * 60 + 1)])
def test_a_bad_poll_interval_stops_start_up_naming_the_variable(
    make_app: Callable[..., Flask], value: str
) -> None:
    with pytest.raises(ConfigError, match="NEWSLETTER_BOUNCE_POLL_MINUTES"):
        make_app(BOUNCE_POLL_MINUTES=value)

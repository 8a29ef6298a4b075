"""VERP in sending: a digest's and a confirmation's envelope sender (Return-Path) names the
campaign and the reader when NEWSLETTER_BOUNCE_ADDRESS is set, and is MAIL_FROM otherwise."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter.bounces.verp import TRANSACTIONAL, VerpClaim, claim_from_address
from newsletter.db import db
from newsletter.models import Campaign, Subscriber
from newsletter.worker import Worker
from tests.conftest import FrozenClock
from tests.smtp_sink import SmtpSink
from tests.test_sending import add_readers, digest_ready

BOUNCES = "bounces@blog.example.com"


@pytest.fixture
def posts_folder(config: dict[str, Any], tmp_path: Path) -> Path:
    """A Markdown posts folder holding one post already published before the first sync."""
    from tests.test_sending import write_post

    folder = tmp_path / "posts"
    folder.mkdir()
    write_post(folder, "older-post", "An Older Post", "2020-01-01")
    config["POSTS_DIR"] = str(folder)
    return folder


def reader_ids(app: Flask) -> dict[str, int]:
    with app.app_context():
        rows = db.session.execute(select(Subscriber.email, Subscriber.id)).all()
        db.session.remove()
    return {email: subscriber_id for email, subscriber_id in rows}


def only_campaign(app: Flask) -> int:
    with app.app_context():
        (campaign_id,) = db.session.scalars(select(Campaign.id)).all()
        db.session.remove()
    return campaign_id


def test_a_digest_carries_each_readers_verp_address(
    make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink, posts_folder: Path
) -> None:
    app = make_app(BOUNCE_ADDRESS=BOUNCES)
    runner = app.test_cli_runner()
    with app.app_context():
        emails = add_readers(db.session(), clock, 3)
        db.session.remove()
    digest_ready(runner, posts_folder)

    result = runner.invoke(args=["send-digest", "--yes"])

    assert result.exit_code == 0, result.output
    campaign_id, ids = only_campaign(app), reader_ids(app)
    messages = smtp_sink.wait_for(len(emails))
    assert sorted(m.recipients[0] for m in messages) == emails
    for message in messages:
        assert message.sender.startswith("bounces+")
        assert message.sender.endswith("@blog.example.com")
        claim = claim_from_address(app.config, message.sender)
        assert claim == VerpClaim(campaign_id, ids[message.recipients[0]])
    assert len({m.sender for m in messages}) == len(emails)


def test_without_a_bounce_address_a_digest_goes_from_mail_from(
    make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink, posts_folder: Path
) -> None:
    app = make_app()
    runner = app.test_cli_runner()
    with app.app_context():
        emails = add_readers(db.session(), clock, 2)
        db.session.remove()
    digest_ready(runner, posts_folder)

    assert runner.invoke(args=["send-digest", "--yes"]).exit_code == 0

    messages = smtp_sink.wait_for(len(emails))
    assert {m.sender for m in messages} == {"hello@blog.example.com"}


@pytest.mark.parametrize("by", ["background sender", "worker", "send-queued"])
def test_a_confirmation_carries_a_transactional_verp_address(
    make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink, by: str
) -> None:
    app = make_app(BOUNCE_ADDRESS=BOUNCES, OUTBOX_SEND_AFTER_REQUEST=by == "background sender")
    response = app.test_client().post("/subscribe", data={"email": "ada@example.com"})
    assert response.status_code in (200, 202, 303)
    if by == "worker":
        Worker(app, out=io.StringIO(), sleep=lambda s: clock.advance(seconds=s)).run_once()
    elif by == "send-queued":
        assert app.test_cli_runner().invoke(args=["send-queued"]).exit_code == 0

    (message,) = smtp_sink.wait_for(1)

    assert message.recipients == ["ada@example.com"]
    claim = claim_from_address(app.config, message.sender)
    assert claim == VerpClaim(TRANSACTIONAL, reader_ids(app)["ada@example.com"])
    assert claim.transactional


def test_without_a_bounce_address_a_confirmation_goes_from_mail_from(
    make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    app = make_app(OUTBOX_SEND_AFTER_REQUEST=False)
    app.test_client().post("/subscribe", data={"email": "ada@example.com"})
    Worker(app, out=io.StringIO(), sleep=lambda s: clock.advance(seconds=s)).run_once()
    (message,) = smtp_sink.wait_for(1)
    assert message.sender == "hello@blog.example.com"

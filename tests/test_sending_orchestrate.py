"""The one send orchestration, called as the dashboard and the worker call it: a composer per
kind, the confirmation and progress as callbacks, one outcome."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.announcements import AlreadySentError, AnnouncementComposer, read_announcement
from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.digest import DigestComposer
from newsletter.mail import mail_domain
from newsletter.models import Campaign
from newsletter.sending import (
    Draft,
    NotComposed,
    SendLock,
    SendOutcome,
    SendReport,
    send_new_campaign,
)
from tests.conftest import FrozenClock, add_readers, copies, digest_ready, state_dir, write_post
from tests.smtp_sink import SmtpSink

QUIET_HOUR = Path(__file__).parent / "fixtures" / "campaigns" / "quiet-hour.md"


@pytest.fixture
def posts_folder(config: dict[str, Any], tmp_path: Path) -> Path:
    """A Markdown posts folder holding one post already published before the first sync."""
    folder = tmp_path / "posts"
    folder.mkdir()
    write_post(folder, "older-post", "An Older Post", "2020-01-01")
    config["POSTS_DIR"] = str(folder)
    return folder


class Recorder:
    """A progress callback that writes down what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def start(self, report: SendReport) -> None:
        self.events.append(("start", report.total))

    def update(self, done: int) -> None:
        self.events.append(("update", done))

    def finish(self, report: SendReport) -> None:
        self.events.append(("finish", report.sent))


def run(app: Flask, composer: Any, **callbacks: Any) -> SendOutcome:
    with app.app_context():
        lock = SendLock(state_dir(app), db.engine)
        with lock:
            return send_new_campaign(
                db.session(), get_services(app), composer, lock=lock, **callbacks
            )


def test_a_digest_is_confirmed_with_its_draft_then_sent_with_progress(
    posts_folder: Path,  # first: the app reads its setting
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
) -> None:
    readers = add_readers(session, clock, 3)
    digest_ready(runner, posts_folder)
    asked: list[tuple[Draft, int]] = []
    progress = Recorder()

    def confirm(draft: Draft, count: int) -> bool:
        asked.append((draft, count))
        return True

    outcome = run(app, DigestComposer(), confirm=confirm, progress=progress)
    assert [(d.subject, list(d.titles), n) for d, n in asked] == [
        ("Rest Is Not a Reward", ["Rest Is Not a Reward"], 3)
    ]
    assert outcome.kind == "digest" and outcome.not_composed is None
    assert outcome.report is not None and outcome.report.sent == 3 and outcome.complete
    assert outcome.notes == ["Rest Is Not a Reward"]  # what the sync found
    assert progress.events[0] == ("start", 3) and progress.events[-1] == ("finish", 3)
    assert copies(smtp_sink) == Counter(readers)


def test_a_declined_confirmation_composes_and_sends_nothing(
    posts_folder: Path,  # first: the app reads its setting
    app: Flask,
    session: Session,
    clock: FrozenClock,
    smtp_sink: SmtpSink,
    runner: FlaskCliRunner,
) -> None:
    add_readers(session, clock, 3)
    digest_ready(runner, posts_folder)
    outcome = run(app, DigestComposer(), confirm=lambda draft, count: False)
    assert outcome.not_composed is NotComposed.DECLINED and outcome.reports == []
    assert session.scalars(select(Campaign.id)).all() == []
    assert not smtp_sink.messages


def test_an_announcement_goes_through_the_same_steps_and_is_refused_the_second_time(
    app: Flask, session: Session, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    readers = add_readers(session, clock, 2)
    announcement = read_announcement(QUIET_HOUR)
    outcome = run(app, AnnouncementComposer(announcement))
    assert outcome.kind == "announcement" and outcome.subject == announcement.subject
    assert outcome.report is not None and outcome.report.sent == 2
    assert copies(smtp_sink) == Counter(readers)
    with pytest.raises(AlreadySentError, match="add --again"):
        run(app, AnnouncementComposer(announcement))
    again = run(app, AnnouncementComposer(announcement, again=True))
    assert again.report is not None and again.report.sent == 2


def test_no_readers_leaves_the_content_for_later(
    app: Flask, session: Session, smtp_sink: SmtpSink
) -> None:
    outcome = run(app, AnnouncementComposer(read_announcement(QUIET_HOUR)))
    assert outcome.not_composed is NotComposed.NO_READERS and outcome.reports == []
    assert session.scalars(select(Campaign.id)).all() == []


@pytest.mark.parametrize(
    ("address", "domain"), [("hello@blog.example.com", "blog.example.com"), ("hello@", "localhost")]
)
def test_the_senders_mail_domain_names_message_ids(address: str, domain: str) -> None:
    assert mail_domain(address) == domain

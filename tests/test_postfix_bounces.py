"""End to end through a real Postfix: two readers are mailed with VERP envelope senders; the
relay (a test SMTP sink) accepts one message and rejects the other after taking it (550 at the
final dot); Postfix itself writes the DSN, sends it to the VERP address and delivers it to a
Maildir; ``newsletter process-bounces`` reads it and marks that reader bounced.

The two messages are a real digest sent by ``newsletter send-digest``: the engine puts each
reader's VERP address in MAIL FROM.

Marked ``mailserver``: it starts a private Postfix (Debian's package, as root); skipped with a
reason on a machine without it, failed in CI (``.ci/run`` installs it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter.db import db
from newsletter.models import BOUNCED, CONFIRMED, BounceRecord, Campaign, ConsentEvent, Subscriber
from tests.bounce_helpers import add_reader
from tests.conftest import FrozenClock
from tests.postfix_server import Postfix, require_postfix
from tests.smtp_sink import SmtpSink
from tests.test_sending import digest_ready, write_post

pytestmark = pytest.mark.mailserver

DOMAIN = "blog.example.com"
GONE, HERE = "gone@reader.example", "here@reader.example"


@pytest.fixture
def postfix(smtp_sink: SmtpSink) -> Iterator[Postfix]:
    require_postfix()
    server = Postfix(smtp_sink.port, DOMAIN, "bounces")
    yield server
    server.stop()


def test_postfix_dsn_to_the_verp_address_marks_the_reader_bounced(
    postfix: Postfix,
    smtp_sink: SmtpSink,
    make_app: Callable[..., Flask],
    clock: FrozenClock,
    tmp_path: Path,
) -> None:
    posts = tmp_path / "posts"
    posts.mkdir()
    write_post(posts, "older-post", "An Older Post", "2020-01-01")
    smtp_sink.script.data_replies[GONE] = (
        "550 5.1.1 <gone@reader.example>: Recipient address rejected: User unknown"
    )
    app = make_app(
        BOUNCE_ADDRESS=f"bounces@{DOMAIN}",
        BOUNCE_MAILBOX=f"maildir://{postfix.maildir}",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=postfix.port,
        POSTS_DIR=str(posts),
    )
    with app.app_context():
        session = db.session()
        readers = {address: add_reader(session, address, clock()) for address in (GONE, HERE)}
        db.session.remove()
    runner = app.test_cli_runner()
    digest_ready(runner, posts)
    sent = runner.invoke(args=["send-digest", "--yes"])
    assert sent.exit_code == 0, sent.output  # Postfix took both; the relay refused one later
    with app.app_context():
        campaign = db.session.scalars(select(Campaign.id)).one()
        db.session.remove()

    # The sink took the good one; Postfix bounced the other to the VERP address.
    smtp_sink.wait_for(1)
    assert [m.recipients for m in smtp_sink.messages] == [[HERE]]
    [dsn] = postfix.wait_for_delivery(1)
    assert b"multipart/report" in dsn.read_bytes()

    result = app.test_cli_runner().invoke(args=["process-bounces"])
    assert result.exit_code == 0, result.output
    assert "Processed 1 message(s); 0 unrecognised" in result.output
    with app.app_context():
        session = db.session()
        assert session.get(Subscriber, readers[GONE]).status == BOUNCED
        assert session.get(Subscriber, readers[HERE]).status == CONFIRMED
        record = session.scalars(select(BounceRecord)).one()
        assert (record.subscriber_id, record.campaign_id, record.kind, record.status_code) == (
            readers[GONE],
            campaign,
            "hard",
            "5.1.1",
        )
        event = session.scalars(
            select(ConsentEvent).where(ConsentEvent.subscriber_id == readers[GONE])
        ).one()
        assert event.kind == "bounced" and "User unknown" in (event.note or "")
        db.session.remove()
    assert not list(Path(postfix.maildir, "new").iterdir())

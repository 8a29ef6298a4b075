"""End to end through a real Postfix: two readers are mailed with VERP envelope senders; the
relay (a test SMTP sink) accepts one message and rejects the other after taking it (550 at the
final dot); Postfix itself writes the DSN, sends it to the VERP address and delivers it to a
Maildir; ``newsletter process-bounces`` reads it and marks that reader bounced.

Until the send engine puts the VERP address in MAIL FROM (the integration step), the messages
go through the project's SMTP transport (mail.py's SmtpTransport) directly, with
``envelope_sender_for`` as the envelope sender, exactly what the engine will pass.

Marked ``mailserver``: it starts a private Postfix (Debian's package, as root); skipped with a
reason on a machine without it, failed in CI (``.ci/run`` installs it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter.bounces.verp import envelope_sender_for
from newsletter.db import db
from newsletter.models import BOUNCED, CONFIRMED, BounceRecord, ConsentEvent, Subscriber
from newsletter.smtp import SmtpSettings, SmtpTransport
from tests.bounce_helpers import add_campaign, add_reader
from tests.conftest import FrozenClock
from tests.postfix_server import Postfix, require_postfix
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.mailserver

DOMAIN = "blog.example.com"
GONE, HERE = "gone@reader.example", "here@reader.example"


@pytest.fixture
def postfix(smtp_sink: SmtpSink) -> Iterator[Postfix]:
    require_postfix()
    server = Postfix(smtp_sink.port, DOMAIN, "bounces")
    yield server
    server.stop()


def _message(recipient: str) -> bytes:
    message = EmailMessage()
    message["From"] = f"Calm Corner <hello@{DOMAIN}>"
    message["To"] = recipient
    message["Subject"] = "New on Calm Corner"
    message.set_content("Five slow breaths before breakfast.\n")
    return bytes(message)


def test_postfix_dsn_to_the_verp_address_marks_the_reader_bounced(
    postfix: Postfix, smtp_sink: SmtpSink, make_app: Callable[..., Flask], clock: FrozenClock
) -> None:
    smtp_sink.script.data_replies[GONE] = (
        "550 5.1.1 <gone@reader.example>: Recipient address rejected: User unknown"
    )
    app = make_app(
        BOUNCE_ADDRESS=f"bounces@{DOMAIN}",
        BOUNCE_MAILBOX=f"maildir://{postfix.maildir}",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=postfix.port,
    )
    with app.app_context():
        session = db.session()
        campaign = add_campaign(session, clock())
        readers = {address: add_reader(session, address, clock()) for address in (GONE, HERE)}
        db.session.remove()
    with SmtpTransport(SmtpSettings.from_config(app.config)) as transport:
        for address, sid in readers.items():
            sender = envelope_sender_for(app.config, campaign, sid)
            assert sender.startswith("bounces+")
            transport.send(sender, address, _message(address))

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

"""``process-bounces``: real bounce formats, a complaint, an auto-reply and junk, through a
Maildir (the command) and through a real Dovecot over IMAPS, IMAP with STARTTLS and POP3S."""

from __future__ import annotations

import imaplib
import mailbox
import poplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter.appctx import get_services
from newsletter.bounces.mailbox import open_mailbox, process_mailbox
from newsletter.bounces.verp import verp_address
from newsletter.db import db
from newsletter.models import BOUNCED, CONFIRMED, UNSUBSCRIBED, BounceRecord, Subscriber
from tests.bounce_helpers import add_campaign, add_reader, sample
from tests.conftest import FrozenClock
from tests.dovecot_server import Dovecot, require_dovecot

BOUNCE_ADDRESS = "bounces@blog.example.com"


class Scenario:
    """Readers, and the messages about them that land in the bounce mailbox."""

    def __init__(self, app: Flask, clock: FrozenClock) -> None:
        self.app = app
        with app.app_context():
            session = db.session()
            now = clock()
            self.campaign = add_campaign(session, now)
            self.ids = {
                name: add_reader(session, f"{name}@reader.example", now)
                for name in ("postfix", "gmail", "outlook", "full", "complainer", "away", "forged")
            }
            # Matched by the failed recipient (no VERP token in these real samples).
            self.ids["exim"] = add_reader(session, "userx@its.example.nl", now)
            self.ids["yahoo"] = add_reader(session, "userx@example.com", now)
            config = app.config
            verp = {
                name: verp_address(config, self.campaign, sid) for name, sid in self.ids.items()
            }
            forged = verp_address(config, self.campaign, self.ids["gmail"])
            # A token changed on the way (campaign and reader swapped in by a forger): the
            # address inside still names "forged", who is matched by it, not by the token.
            forged = forged.replace("+", "+a", 1)
            self.messages = {
                "postfix": sample("postfix_dsn.eml", verp["postfix"], "postfix@reader.example"),
                "gmail": sample("gmail_dsn.eml", verp["gmail"], "gmail@reader.example"),
                "outlook": sample("outlook_ndr.eml", verp["outlook"], "outlook@reader.example"),
                "full": sample("mailbox_full_dsn.eml", verp["full"], "full@reader.example"),
                "complainer": sample(
                    "arf_complaint.eml", verp["complainer"], "complainer@reader.example"
                ),
                "away": sample("out_of_office.eml", verp["away"], "away@reader.example"),
                "forged": sample("postfix_dsn.eml", forged, "forged@reader.example"),
                "exim": sample("flufl_exim_01.eml"),
                "yahoo": sample("flufl_yahoo_03.eml"),
                "junk": sample("junk.eml"),
            }

    def check(self) -> None:
        with self.app.app_context():
            session = db.session()
            status = {name: session.get(Subscriber, sid).status for name, sid in self.ids.items()}
            assert status == {
                "postfix": BOUNCED,
                "gmail": BOUNCED,
                "outlook": BOUNCED,
                "full": CONFIRMED,
                "complainer": UNSUBSCRIBED,
                "away": CONFIRMED,
                "forged": BOUNCED,
                "exim": BOUNCED,
                "yahoo": BOUNCED,
            }
            records = {
                (r.subscriber_id, r.kind, r.campaign_id)
                for r in session.scalars(select(BounceRecord))
            }
            assert (self.ids["postfix"], "hard", self.campaign) in records
            assert (self.ids["full"], "soft", self.campaign) in records
            assert (self.ids["complainer"], "complaint", self.campaign) in records
            # No campaign from a forged token, nor from a bare address.
            assert (self.ids["forged"], "hard", None) in records
            assert (self.ids["exim"], "hard", None) in records
            db.session.remove()


@pytest.fixture
def bounce_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    return make_app(
        BOUNCE_ADDRESS=BOUNCE_ADDRESS, BOUNCE_MAILBOX=f"maildir://{tmp_path / 'Maildir'}"
    )


def test_process_bounces_from_a_maildir(
    bounce_app: Flask, clock: FrozenClock, tmp_path: Path
) -> None:
    scenario = Scenario(bounce_app, clock)
    box = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    for raw in scenario.messages.values():
        box.add(raw)
    result = bounce_app.test_cli_runner().invoke(args=["process-bounces"])
    assert result.exit_code == 0, result.output
    assert "Processed 9 message(s); 1 unrecognised (left in the mailbox)" in result.output
    assert "auto-reply: 1" in result.output and "complaint: 1" in result.output
    assert result.output.splitlines()[1:] == [
        "  auto-reply: 1",
        "  complaint: 1",
        "  hard: 6",
        "  soft: 1",
        "  unrecognised: 1",
        "  readers marked bounced: 6",
        "  readers unsubscribed after a complaint: 1",
        "  soft bounces counted: 1",
    ]
    scenario.check()
    # Only the junk is left; everything handled is in the Processed folder.
    assert [m["Subject"] for m in box] == ["You have won"]
    assert len(box.get_folder("Processed")) == 9
    # Running it again finds only the junk, and changes nothing.
    again = bounce_app.test_cli_runner().invoke(args=["process-bounces"])
    assert "Processed 0 message(s); 1 unrecognised" in again.output


def test_process_bounces_delete(bounce_app: Flask, clock: FrozenClock, tmp_path: Path) -> None:
    scenario = Scenario(bounce_app, clock)
    box = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    box.add(scenario.messages["postfix"])
    result = bounce_app.test_cli_runner().invoke(args=["process-bounces", "--delete"])
    assert result.exit_code == 0, result.output
    assert len(box) == 0 and "Processed" not in box.list_folders()


def test_process_bounces_without_a_mailbox_says_what_to_set(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["process-bounces"])
    assert result.exit_code == 1
    assert "NEWSLETTER_BOUNCE_MAILBOX is not set" in result.output


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    require_dovecot()
    server = Dovecot()
    yield server
    server.stop()


def _imap(server: Dovecot) -> imaplib.IMAP4_SSL:
    from tests.dovecot_server import PASSWORD, USER

    imap = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=server.ssl_context)
    imap.login(USER, PASSWORD)
    return imap


def _empty_mailbox(server: Dovecot) -> None:
    imap = _imap(server)
    for folder in ("INBOX", "Processed"):
        status, count = imap.select(folder)
        if status == "OK" and count[0] != b"0":
            imap.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
            imap.expunge()
    imap.logout()


@pytest.mark.mailserver
@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_process_bounces_over_imap(
    dovecot: Dovecot, bounce_app: Flask, clock: FrozenClock, scheme: str
) -> None:
    _empty_mailbox(dovecot)
    scenario = Scenario(bounce_app, clock)
    imap = _imap(dovecot)
    for raw in scenario.messages.values():
        assert (
            imap.append("INBOX", None, None, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))[0]
            == "OK"
        )
    box = open_mailbox(dovecot.url(scheme), ssl_context=dovecot.ssl_context, timeout=10)
    with bounce_app.app_context():
        report = process_mailbox(
            db.session(), bounce_app.config, get_services(bounce_app).clock, box
        )
        db.session.remove()
    assert report.unrecognised == 1 and report.kinds["auto-reply"] == 1
    scenario.check()
    imap.select("INBOX")
    assert len(imap.search(None, "ALL")[1][0].split()) == 1
    imap.select("Processed")
    assert len(imap.search(None, "ALL")[1][0].split()) == 9
    imap.logout()


@pytest.mark.mailserver
def test_process_bounces_over_pop3s(
    dovecot: Dovecot, bounce_app: Flask, clock: FrozenClock
) -> None:
    from tests.dovecot_server import PASSWORD, USER

    _empty_mailbox(dovecot)
    scenario = Scenario(bounce_app, clock)
    imap = _imap(dovecot)
    for raw in scenario.messages.values():
        imap.append("INBOX", None, None, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    imap.logout()
    box = open_mailbox(dovecot.url("pop3s"), ssl_context=dovecot.ssl_context, timeout=10)
    with bounce_app.app_context():
        report = process_mailbox(
            db.session(), bounce_app.config, get_services(bounce_app).clock, box
        )
        db.session.remove()
    assert report.unrecognised == 1
    scenario.check()
    pop = poplib.POP3_SSL("127.0.0.1", dovecot.pop3s_port, context=dovecot.ssl_context)
    pop.user(USER)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1  # POP3 has no folders: only the junk is left
    pop.quit()


@pytest.mark.mailserver
def test_wrong_imap_password_is_a_clear_error(dovecot: Dovecot) -> None:
    from newsletter.bounces.mailbox import MailboxError

    url = dovecot.url("imaps").replace("s3cret", "wrong")
    with pytest.raises(MailboxError, match="check NEWSLETTER_BOUNCE_MAILBOX"):
        open_mailbox(url, ssl_context=dovecot.ssl_context, timeout=10)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("imaps://reader:pw@127.0.0.1:{port}/INBOX", "check NEWSLETTER_BOUNCE_MAILBOX"),
        ("pop3s://reader:pw@127.0.0.1:{port}", "check NEWSLETTER_BOUNCE_MAILBOX"),
        ("ftp://reader:pw@127.0.0.1/INBOX", "unknown mailbox scheme"),
        ("imaps://127.0.0.1/INBOX", "needs user:password@host"),
        ("maildir:///nonexistent/Maildir", "no Maildir at"),
    ],
)
def test_unreachable_or_wrong_mailbox_is_a_clear_error(url: str, message: str) -> None:
    import socket

    from newsletter.bounces.mailbox import MailboxError

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(MailboxError, match=message):
        open_mailbox(url.format(port=port), timeout=5)

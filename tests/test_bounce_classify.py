"""Classifying what arrives in the bounce mailbox: real bounces of Postfix, Exim, Gmail,
Exchange/Outlook and Yahoo (flufl.bounce's samples and formats written from real ones), an ARF
complaint, an out-of-office reply and junk. tests/data/bounces/README.md says where each is from."""

from __future__ import annotations

import email

import pytest

from newsletter.bounces.classify import AUTO_REPLY, COMPLAINT, HARD, SOFT, UNRECOGNISED, classify
from tests.bounce_helpers import sample

VERP = "bounces+abcdefgh@blog.example.com"
RCPT = "sam@reader.example"


@pytest.mark.parametrize(
    ("name", "kind", "recipient", "code"),
    [
        ("flufl_postfix_01.eml", HARD, "xxxxx@local.ie", "5.1.1"),
        ("flufl_exim_01.eml", HARD, "userx@its.example.nl", "5.1.1"),
        ("flufl_simple_17.eml", HARD, "userx@example.com", None),  # Gmail
        ("flufl_simple_28.eml", SOFT, "userx@example.com", None),  # Gmail, delayed
        ("flufl_microsoft_01.eml", HARD, "userx@example.COM", None),  # Exchange
        ("flufl_yahoo_03.eml", HARD, "userx@example.com", None),  # account disabled
        ("flufl_yahoo_02.eml", SOFT, "userx@example.es", None),  # over quota
        ("flufl_dsn_01.eml", SOFT, "userx@example.com", "5.0.0"),  # 5.0.0 "reached disk quota"
        ("postfix_dsn.eml", HARD, RCPT, "5.1.1"),
        ("gmail_dsn.eml", HARD, RCPT, "5.1.1"),
        ("outlook_ndr.eml", HARD, RCPT, "5.5.0"),
        ("mailbox_full_dsn.eml", SOFT, RCPT, "4.2.2"),
    ],
)
def test_bounces_are_classified(name: str, kind: str, recipient: str, code: str | None) -> None:
    found = classify(email.message_from_bytes(sample(name, VERP, RCPT)))
    assert found.kind == kind
    assert recipient in found.recipients
    assert found.status_code == code


def test_rfc3464_report_gives_the_diagnostic_and_the_verp_address() -> None:
    found = classify(email.message_from_bytes(sample("postfix_dsn.eml", VERP, RCPT)))
    assert found.diagnostic is not None and "User unknown" in found.diagnostic
    assert found.addresses[0] == VERP


def test_feedback_report_is_a_complaint() -> None:
    found = classify(email.message_from_bytes(sample("arf_complaint.eml", VERP, RCPT)))
    assert found.kind == COMPLAINT
    assert RCPT in found.recipients and VERP in found.addresses


def test_out_of_office_reply_is_not_a_bounce() -> None:
    found = classify(email.message_from_bytes(sample("out_of_office.eml", VERP, RCPT)))
    assert found.kind == AUTO_REPLY


def test_junk_is_unrecognised() -> None:
    found = classify(email.message_from_bytes(sample("junk.eml", VERP, RCPT)))
    assert found.kind == UNRECOGNISED

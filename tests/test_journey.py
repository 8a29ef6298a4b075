"""The whole reader journey through real HTTP handling, a real SMTP server and a real database."""

from __future__ import annotations

import json

from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from tests.conftest import BLOG_ORIGIN, link_in, wait_for_outbox
from tests.smtp_sink import SmtpSink


def test_subscribe_confirm_and_one_click_unsubscribe(
    client: FlaskClient, smtp_sink: SmtpSink, runner: FlaskCliRunner, app: Flask
) -> None:
    response = client.post(
        "/subscribe",
        data={
            "email": "Reader@Example.COM",
            "name": "Ada",
            "source": f"{BLOG_ORIGIN}/posts/slow-mornings",
        },
        headers={"User-Agent": "TestBrowser/1.0"},
    )
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/subscribe/thanks")
    assert b"check your inbox" in client.get(response.headers["Location"]).data

    (confirmation,) = smtp_sink.wait_for(1)
    assert confirmation.recipients == ["reader@example.com"]
    assert "Calm Corner" in confirmation.message["Subject"]
    assert "Ada" not in confirmation.data.decode()  # the name is never echoed
    confirm_path = link_in(confirmation.body("plain"), "confirm")
    assert confirm_path == link_in(confirmation.body("html"), "confirm")

    wait_for_outbox(app)
    page = client.get(confirm_path)
    assert page.status_code == 200 and b"Confirm my subscription" in page.data
    confirmed = client.post(confirm_path)
    assert confirmed.status_code == 200 and b"You&#39;re subscribed!" in confirmed.data

    welcome = smtp_sink.wait_for(2)[1]
    assert welcome.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe_header = welcome.message["List-Unsubscribe"]
    unsubscribe_path = link_in(unsubscribe_header, "unsubscribe")
    assert unsubscribe_path == link_in(welcome.body("html"), "unsubscribe")
    assert unsubscribe_path == link_in(welcome.body("plain"), "unsubscribe")

    # RFC 8058: the mail client POSTs the fixed body, without cookies, and expects no redirect.
    one_click = client.post(unsubscribe_path, data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200

    shown = runner.invoke(args=["subscribers", "show", "READER@example.com"])
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.output)
    assert record["email"] == "reader@example.com"
    assert record["status"] == "unsubscribed"
    kinds = [e["kind"] for e in record["events"]]
    assert kinds == ["requested", "confirmation_sent", "confirmed", "withdrawn"]
    requested = record["events"][0]
    assert requested["method"] == "form"
    assert requested["ip"] == "127.0.0.1"
    assert requested["user_agent"] == "TestBrowser/1.0"
    assert requested["source_url"] == f"{BLOG_ORIGIN}/posts/slow-mornings"
    assert requested["consent_text"] == app.config["CONSENT_TEXT"]
    assert requested["privacy_policy_url"] == f"{BLOG_ORIGIN}/privacy"
    assert record["events"][-1]["method"] == "one-click"


def test_a_template_error_names_the_file_and_line(tmp_path: object) -> None:
    from pathlib import Path

    import pytest

    from newsletter.rendering import EmailRenderer, TemplateError

    folder = Path(str(tmp_path)) / "mine"
    folder.mkdir()
    (folder / "welcome.html").write_text(
        '{% extends "layout.html" %}\n{% block content %}\n<p>{{ 1 / 0 }}</p>\n{% endblock %}\n'
    )
    with pytest.raises(TemplateError) as caught:
        EmailRenderer(folder).render(
            "welcome",
            "Hi",
            {
                "site_name": "S",
                "site_url": "https://s.example",
                "privacy_policy_url": None,
                "postal_address": "",
                "public_url": "https://n.example",
                "unsubscribe_url": "u",
            },
        )
    assert caught.value.filename and caught.value.filename.endswith("welcome.html")
    assert caught.value.lineno == 3

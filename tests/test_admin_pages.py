"""The dashboard's pages do the author's day-to-day work through the domain functions."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from newsletter import digest
from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.models import CONFIRMED, ERASED, Campaign, ConsentEvent, Post, Subscriber
from newsletter.posts import sync_posts
from newsletter.worker_models import JOB_DONE, Job
from tests.admin_helpers import AUTHOR, signed_in
from tests.conftest import FrozenClock
from tests.smtp_sink import SmtpSink
from tests.test_sending import add_readers, write_post
from tests.test_worker import worker_for


@pytest.fixture
def posts(config: dict[str, Any], tmp_path: Path) -> Path:
    """An empty Markdown folder as the post source."""
    folder = tmp_path / "posts"
    folder.mkdir()
    config.update(POSTS_DIR=str(folder), SEND_CONNECTIONS=1)
    return folder


def sync(app: Flask) -> None:
    with app.app_context():
        sync_posts(db.session(), get_services(app))
        db.session.remove()


def readers(app: Flask, count: int, **options: Any) -> list[str]:
    with app.app_context():
        emails = add_readers(db.session(), get_services(app).clock, count, **options)
        db.session.remove()
    return emails


def job_of(response: Any) -> int:
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"/admin/jobs/(\d+)", response.headers["Location"])
    assert match, response.headers["Location"]
    return int(match.group(1))


def run_jobs(app: Flask, clock: FrozenClock) -> None:
    worker = worker_for(app, clock)
    worker.run_once()


def job_row(app: Flask, job_id: int) -> dict[str, Any]:
    client_view = {}
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job is not None
        client_view = {
            "status": job.status,
            "done": job.progress_done,
            "total": job.progress_total,
            "result": json.loads(job.result) if job.result else None,
            "error": job.error,
        }
        db.session.remove()
    return client_view


# --- overview ---------------------------------------------------------------------------------


def test_the_overview_shows_readers_a_chart_and_the_worker(app: Flask, clock: FrozenClock) -> None:
    client, _token = signed_in(app)
    readers(app, 3)
    assert "No new confirmed readers and no withdrawals" in client.get("/admin/").text
    with app.app_context():
        for reader_id, kind in ((1, "confirmed"), (2, "confirmed"), (3, "withdrawn")):
            db.session.add(
                ConsentEvent(subscriber_id=reader_id, kind=kind, occurred_at=clock(), method="form")
            )
        db.session.commit()
        db.session.remove()
    page = client.get("/admin/").text
    assert "<svg" in page and 'class="bar-new"' in page
    assert re.search(r'<rect class="bar-new"[^>]*><title>\d\d \w+: 2</title>', page)
    assert re.search(r'<rect class="bar-left"[^>]*><title>\d\d \w+: 1</title>', page)
    assert "confirmation rate" in page
    assert "The worker is not running" in page


# --- readers ----------------------------------------------------------------------------------


def test_readers_are_searched_filtered_and_paged_by_keyset(app: Flask) -> None:
    client, _token = signed_in(app)
    readers(app, 120)
    readers(app, 2, status="unsubscribed", start=200)
    first = client.get("/admin/readers").text
    assert len(re.findall(r'href="/admin/readers/\d+"', first)) == 50
    assert "reader201@example.com" in first
    older = re.search(r'href="(/admin/readers\?[^"]*before=\d+)"', first)
    assert older
    second = client.get(older.group(1).replace("&amp;", "&")).text
    assert "reader201@example.com" not in second and "reader72@example.com" in second
    found = client.get("/admin/readers?q=reader11").text
    assert "reader11@example.com" in found and "reader110@example.com" in found
    assert "reader12@example.com" not in found
    by_name = client.get("/admin/readers?q=Reader+7").text
    assert "reader7@example.com" in by_name
    left = client.get("/admin/readers?status=unsubscribed").text
    assert "reader200@example.com" in left and "reader1@example.com<" not in left


def test_the_reader_page_shows_every_consent_event_and_delivery(app: Flask) -> None:
    client, token = signed_in(app)
    response = client.post(
        "/admin/readers/add", data={"email": "ada@example.com", "name": "Ada", "csrf_token": token}
    )
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).text
    assert "ada@example.com" in page and "requested" in page and "pending" in page
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ConsentEvent)) >= 1
        db.session.remove()


def test_adding_a_reader_sends_the_opt_in_email(app: Flask, smtp_sink: SmtpSink) -> None:
    client, token = signed_in(app)
    client.post("/admin/readers/add", data={"email": "ada@example.com", "csrf_token": token})
    app.extensions["newsletter.outbox_sender"].stop()
    with app.app_context():
        from newsletter.outbox import deliver_queued

        services = get_services(app)
        transport = services.open_transport()
        deliver_queued(
            db.session(),
            transport,
            sender="hello@blog.example.com",
            now=services.clock(),
            max_attempts=3,
        )
        transport.close()
        db.session.remove()
    assert any("ada@example.com" in m.recipients for m in smtp_sink.messages)


def test_a_bad_address_is_refused_with_a_message(app: Flask) -> None:
    client, token = signed_in(app)
    response = client.post(
        "/admin/readers/add",
        data={"email": "not an address", "csrf_token": token},
        follow_redirects=True,
    )
    assert "not an address" in response.text or "address" in response.text.lower()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_unsubscribe_from_the_reader_page(app: Flask) -> None:
    client, token = signed_in(app)
    readers(app, 1)
    response = client.post("/admin/readers/1/unsubscribe", data={"csrf_token": token})
    assert response.status_code == 303
    with app.app_context():
        assert db.session.get(Subscriber, 1).status == "unsubscribed"  # type: ignore[union-attr]


def test_erasure_needs_the_address_typed_and_runs_as_a_job(app: Flask, clock: FrozenClock) -> None:
    client, token = signed_in(app)
    readers(app, 1)
    page = client.get("/admin/readers/1").text
    assert "Erase reader1@example.com" in page
    wrong = client.post(
        "/admin/readers/1/erase",
        data={"csrf_token": token, "confirm_email": "someone@else.com"},
        follow_redirects=True,
    )
    assert "type the address reader1@example.com exactly" in wrong.text
    job_id = job_of(
        client.post(
            "/admin/readers/1/erase",
            data={"csrf_token": token, "confirm_email": "Reader1@example.com "},
        )
    )
    run_jobs(app, clock)
    assert job_row(app, job_id)["status"] == JOB_DONE
    with app.app_context():
        assert db.session.get(Subscriber, 1).status == ERASED  # type: ignore[union-attr]
    progress = client.get(f"/admin/api/jobs/{job_id}").json
    assert progress is not None and progress["status"] == "done"


def test_export_is_the_clis_csv(app: Flask) -> None:
    client, _token = signed_in(app)
    readers(app, 3)
    response = client.get("/admin/readers/export.csv")
    assert response.mimetype == "text/csv"
    lines = response.text.splitlines()
    assert lines[0].startswith("email,") and len(lines) == 4


def test_import_shows_a_dry_run_with_line_numbers_then_runs_as_a_job(
    app: Flask, clock: FrozenClock
) -> None:
    client, token = signed_in(app)
    csv_data = b"email,name\nada@example.com,Ada\nnot-an-address,Bad\nbob@example.com,Bob\n"
    refused = client.post(
        "/admin/readers/import",
        data={"csrf_token": token, "file": (io.BytesIO(csv_data), "list.csv")},
        follow_redirects=True,
    )
    assert "consent note" in refused.text
    dry = client.post(
        "/admin/readers/import",
        data={
            "csrf_token": token,
            "consent_note": "sign-up sheet at the workshop",
            "file": (io.BytesIO(csv_data), "list.csv"),
        },
    )
    assert dry.status_code == 200
    assert "3 rows: 2 valid" in dry.text and "<td>3</td>" in dry.text  # line 3 is invalid
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 0
        db.session.remove()
    upload = re.search(r'name="token" value="([0-9a-f]+)"', dry.text)
    assert upload
    job_id = job_of(
        client.post(
            "/admin/readers/import",
            data={
                "csrf_token": token,
                "token": upload.group(1),
                "consent_note": "sign-up sheet at the workshop",
                "skip_invalid": "1",
            },
        )
    )
    uploads = list((Path(app.instance_path) / "admin-imports").glob("*.csv"))
    assert len(uploads) == 1
    run_jobs(app, clock)
    row = job_row(app, job_id)
    assert row["status"] == JOB_DONE, row
    assert row["result"]["added"] == 2
    assert not uploads[0].exists()  # personal data: the upload is gone once imported
    with app.app_context():
        statuses = set(db.session.scalars(select(Subscriber.status)))
        assert statuses == {CONFIRMED}


# --- the next digest --------------------------------------------------------------------------


def test_a_post_left_out_waits_for_the_next_digest(
    posts: Path, make_app: Any, clock: FrozenClock
) -> None:
    app = make_app()
    sync(app)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    write_post(posts, "snow", "First Snow", "2026-10-31")
    sync(app)
    client, token = signed_in(app)
    page = client.get("/admin/digest").text
    assert "Rain on the Roof" in page and "First Snow" in page
    with app.app_context():
        snow = db.session.scalar(select(Post.id).where(Post.title == "First Snow"))
        db.session.remove()
    client.post(f"/admin/digest/posts/{snow}/hold", data={"csrf_token": token, "held": "1"})
    preview = client.get("/admin/digest/preview").text
    assert "Rain on the Roof" in preview and "First Snow" not in preview
    with app.app_context():
        services = get_services(app)
        chosen = digest.select_digest_posts(db.session(), services)
        assert [p.title for p in chosen] == ["Rain on the Roof"]
        digest.create_digest_campaign(db.session(), services, chosen)
        db.session.commit()
        # Composed: the held post is back for the next digest.
        assert [p.title for p in digest.select_digest_posts(db.session(), services)] == [
            "First Snow"
        ]
        db.session.remove()


def test_send_a_test_of_the_digest_to_the_author(
    posts: Path, make_app: Any, smtp_sink: SmtpSink
) -> None:
    app = make_app()
    sync(app)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    client, token = signed_in(app)
    response = client.post("/admin/digest/test", data={"csrf_token": token}, follow_redirects=True)
    assert f"Test sent to {AUTHOR}" in response.text
    assert [m.recipients for m in smtp_sink.messages] == [[AUTHOR]]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Campaign)) == 0


def test_send_now_asks_with_the_number_of_readers_then_runs_as_a_job(
    posts: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    app = make_app()
    sync(app)
    emails = readers(app, 3)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    client, token = signed_in(app)
    ask = client.post("/admin/digest/send", data={"csrf_token": token})
    assert ask.status_code == 200 and "to 3 readers?" in ask.text
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Job)) == 0
        db.session.remove()
    job_id = job_of(
        client.post("/admin/digest/send", data={"csrf_token": token, "confirm_readers": "3"})
    )
    page = client.get(f"/admin/jobs/{job_id}").text
    assert "queued" in page
    run_jobs(app, clock)
    progress = client.get(f"/admin/api/jobs/{job_id}").json
    assert progress is not None
    assert (progress["status"], progress["done"], progress["total"]) == ("done", 3, 3)
    assert progress["sent"] == 3 and progress["failed"] == 0
    got = sorted(r for m in smtp_sink.messages for r in m.recipients)
    assert got == sorted(emails)


# --- campaigns --------------------------------------------------------------------------------

ANNOUNCEMENT = {
    "subject": "A workshop in spring",
    "preheader": "",
    "body": "Come and **breathe** with us on 4 April.\n",
}


def compose(client: FlaskClient, token: str, url: str, **extra: str) -> Any:
    return client.post(url, data={**ANNOUNCEMENT, "csrf_token": token, **extra})


def test_an_announcement_previews_tests_and_sends_once(
    app: Flask, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    client, token = signed_in(app)
    emails = readers(app, 2)
    preview = compose(client, token, "/admin/campaigns/preview")
    assert "<strong>breathe</strong>" in preview.text
    assert preview.headers["X-Frame-Options"] == "SAMEORIGIN"
    test = compose(client, token, "/admin/campaigns/test")
    assert test.status_code == 200 and f"Test sent to {AUTHOR}" in test.text
    assert [m.recipients for m in smtp_sink.messages] == [[AUTHOR]]
    ask = compose(client, token, "/admin/campaigns/send")
    assert "to 2 readers?" in ask.text
    job_id = job_of(compose(client, token, "/admin/campaigns/send", confirm_readers="2"))
    run_jobs(app, clock)
    row = job_row(app, job_id)
    assert row["status"] == JOB_DONE, row
    got = sorted(r for m in smtp_sink.messages[1:] for r in m.recipients)
    assert got == sorted(emails)
    # The same announcement again: refused, as `send-campaign` refuses it.
    again = compose(client, token, "/admin/campaigns/send", confirm_readers="2")
    assert again.status_code == 409 and "already" in again.text.lower()
    history = client.get("/admin/campaigns").text
    assert "A workshop in spring" in history


def test_the_campaign_page_lists_failures_with_their_smtp_replies(
    app: Flask, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    client, token = signed_in(app)
    readers(app, 2)
    smtp_sink.script.rcpt_replies["reader2@example.com"] = "550 5.1.1 mailbox unknown"
    job_of(compose(client, token, "/admin/campaigns/send", confirm_readers="2"))
    run_jobs(app, clock)
    with app.app_context():
        campaign_id = db.session.scalar(select(Campaign.id))
        db.session.remove()
    page = client.get(f"/admin/campaigns/{campaign_id}").text
    assert "reader2@example.com" in page and "mailbox unknown" in page


# --- settings ---------------------------------------------------------------------------------


def test_settings_are_validated_stored_and_win_over_the_environment(app: Flask) -> None:
    client, token = signed_in(app)
    bad = client.post(
        "/admin/settings", data={"csrf_token": token, "BRAND_COLOR": "blue", "SITE_NAME": "X"}
    )
    assert bad.status_code == 400
    assert "six hexadecimal digits" in bad.text
    assert app.config["SITE_NAME"] == "Calm Corner"  # nothing stored
    good = client.post(
        "/admin/settings",
        data={"csrf_token": token, "BRAND_COLOR": "#AA3300", "SITE_NAME": "Quiet Corner"},
    )
    assert good.status_code == 303
    client.get("/admin/")
    assert app.config["SITE_NAME"] == "Quiet Corner" and app.config["BRAND_COLOR"] == "#aa3300"
    page = client.get("/admin/settings").text
    assert "Environment: Calm Corner" in page
    client.post("/admin/settings", data={"csrf_token": token, "SITE_NAME": ""})
    client.get("/admin/")
    assert app.config["SITE_NAME"] == "Calm Corner"  # the environment's value is back


def test_the_approval_switch_becomes_a_bool_in_the_configuration(app: Flask) -> None:
    client, token = signed_in(app)
    assert app.config["DIGEST_APPROVAL"] is False
    bad = client.post("/admin/settings", data={"csrf_token": token, "DIGEST_APPROVAL": "maybe"})
    assert bad.status_code == 400 and "choose on or off" in bad.text
    client.post("/admin/settings", data={"csrf_token": token, "DIGEST_APPROVAL": "true"})
    client.get("/admin/")
    assert app.config["DIGEST_APPROVAL"] is True
    assert "approval before sending: on" in client.get("/admin/digest").text


def test_the_worker_follows_a_schedule_set_in_the_dashboard(
    posts: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    app = make_app()
    sync(app)
    emails = readers(app, 2)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    client, token = signed_in(app)
    worker = worker_for(app, clock)
    worker.run_once()
    assert not smtp_sink.to(emails[0])  # no schedule in the environment
    client.post("/admin/settings", data={"csrf_token": token, "DIGEST_SCHEDULE": "* * * * *"})
    clock.advance(minutes=1)
    worker.run_once()
    assert len(smtp_sink.to(emails[0])) == 1


def test_secrets_are_never_shown_on_the_settings_page(make_app: Any) -> None:
    app = make_app(SMTP_PASSWORD="hunter2-smtp-secret")
    client, _token = signed_in(app)
    page = client.get("/admin/settings").text
    assert "hunter2-smtp-secret" not in page and "test-secret" not in page


def test_uploads_never_imported_are_deleted_after_a_day(tmp_path: Path) -> None:
    import os
    from datetime import UTC, datetime, timedelta

    from newsletter.web.admin.actions import remove_stale_uploads

    now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    old, fresh = tmp_path / "old.csv", tmp_path / "fresh.csv"
    for path, age in ((old, timedelta(days=1, minutes=1)), (fresh, timedelta(hours=23))):
        path.write_text("email\nada@example.com\n")
        stamp = (now - age).timestamp()
        os.utime(path, (stamp, stamp))
    assert remove_stale_uploads(tmp_path, now) == 1
    assert not old.exists() and fresh.exists()


# --- the personal note of the next digest ---------------------------------------------------


def test_the_note_is_saved_previewed_sent_with_the_digest_then_cleared(
    posts: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    from newsletter.settings import next_digest_note

    app = make_app()
    sync(app)
    readers(app, 2)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    sync(app)
    client, token = signed_in(app)
    saved = client.post(
        "/admin/digest/note",
        data={"csrf_token": token, "note": "Back from the **hills**, with stories."},
        follow_redirects=True,
    )
    assert "Note saved for the next digest" in saved.text
    assert "Back from the **hills**, with stories." in saved.text  # in the textarea again
    assert "goes out with the next digest, scheduled or sent now" in saved.text
    html = client.get("/admin/digest/preview").text
    assert "<strong>hills</strong>" in html
    assert "Back from the hills" in client.get("/admin/digest/preview?part=text").text
    client.post("/admin/digest/test", data={"csrf_token": token})
    assert "hills" in smtp_sink.messages[-1].body("plain")
    job_id = job_of(
        client.post("/admin/digest/send", data={"csrf_token": token, "confirm_readers": "2"})
    )
    run_jobs(app, clock)
    assert job_row(app, job_id)["status"] == JOB_DONE
    with app.app_context():
        campaign = db.session.scalars(select(Campaign)).one()
        assert campaign.note == "Back from the **hills**, with stories."
        assert next_digest_note(db.session()) is None  # composed: cleared
        db.session.remove()
    to_readers = smtp_sink.messages[1:]
    assert len(to_readers) == 2 and all("hills" in m.body("plain") for m in to_readers)
    assert "No note saved." in client.get("/admin/digest").text


def test_a_note_that_cannot_go_out_is_refused_next_to_the_field(posts: Path, make_app: Any) -> None:
    from newsletter.content.voice import NOTE_MAX_CHARS
    from newsletter.settings import next_digest_note

    app = make_app()
    client, token = signed_in(app)
    too_long = "w" * (NOTE_MAX_CHARS + 1)
    page = client.post("/admin/digest/note", data={"csrf_token": token, "note": too_long})
    assert page.status_code == 400
    assert 'id="note-error"' in page.text and "shorten it" in page.text
    unsafe = client.post(
        "/admin/digest/note", data={"csrf_token": token, "note": "<script>x()</script>"}
    )
    assert unsafe.status_code == 400 and "write it in Markdown" in unsafe.text
    assert client.post("/admin/digest/note", data={"note": "hi"}).status_code == 400  # no CSRF
    with app.app_context():
        assert next_digest_note(db.session()) is None
        db.session.remove()


def test_the_scheduled_digest_carries_the_saved_note(
    posts: Path, make_app: Any, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    from newsletter.settings import next_digest_note

    app = make_app()
    sync(app)
    emails = readers(app, 1)
    write_post(posts, "rain", "Rain on the Roof", "2026-11-01")
    client, token = signed_in(app)
    client.post("/admin/digest/note", data={"csrf_token": token, "note": "A quiet week."})
    client.post("/admin/settings", data={"csrf_token": token, "DIGEST_SCHEDULE": "* * * * *"})
    worker = worker_for(app, clock)
    worker.run_once()
    clock.advance(minutes=1)
    worker.run_once()
    [message] = smtp_sink.to(emails[0])
    assert "A quiet week." in message.body("plain")
    with app.app_context():
        assert db.session.scalars(select(Campaign.note)).one() == "A quiet week."
        assert next_digest_note(db.session()) is None
        db.session.remove()


# --- bounce and complaint figures (issue 16) -------------------------------------------------


def test_bounce_and_complaint_rates_show_with_a_warning_past_the_thresholds(
    app: Flask, clock: FrozenClock, smtp_sink: SmtpSink
) -> None:
    from newsletter.bounces.classify import COMPLAINT, HARD
    from newsletter.models import BounceRecord

    client, token = signed_in(app)
    readers(app, 4)
    job_of(compose(client, token, "/admin/campaigns/send", confirm_readers="4"))
    run_jobs(app, clock)
    with app.app_context():
        campaign_id = db.session.scalar(select(Campaign.id))
        assert campaign_id is not None
        page = client.get(f"/admin/campaigns/{campaign_id}").text
        assert "hard bounces</dt><dd>0 (0.00%)" in page and "Warning" not in page
        assert "problems-title" not in client.get("/admin/").text
        ids = db.session.scalars(select(Subscriber.id).order_by(Subscriber.id)).all()
        for subscriber_id, kind in ((ids[0], HARD), (ids[1], COMPLAINT)):
            db.session.add(
                BounceRecord(
                    subscriber_id=subscriber_id,
                    campaign_id=campaign_id,
                    kind=kind,
                    source="mailbox",
                    occurred_at=clock(),
                )
            )
        db.session.commit()
        db.session.remove()
    history = client.get("/admin/campaigns").text
    assert '<th scope="col">Complaints</th>' in history
    assert "<td>1 (25.00%)</td><td>0</td><td>1 (25.00%) <strong" in history
    page = client.get(f"/admin/campaigns/{campaign_id}").text
    assert "hard bounces</dt><dd>1 (25.00%)" in page and "complaints</dt><dd>1 (25.00%)" in page
    assert "Complaint rate 25.00% is over 0.10%" in page
    assert "Hard-bounce rate 25.00% is over 2.00%" in page
    overview = client.get("/admin/").text
    assert "problems-title" in overview and "Complaint rate 25.00% is over 0.10%" in overview

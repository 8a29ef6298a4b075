"""Confirm and unsubscribe links: tokens, pages, expiry and misuse."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.models import ConsentEvent, Subscriber
from tests.conftest import FrozenClock, link_in, wait_for_outbox
from tests.smtp_sink import SmtpSink


def confirmations(sink: SmtpSink, email: str) -> list[str]:
    """Confirm-link paths of the confirmation emails ``email`` got so far, oldest first."""
    return [
        link_in(m.body("plain"), "confirm")
        for m in sink.to(email)
        if m.message["Subject"].startswith("Please confirm")
    ]


def sign_up(client: FlaskClient, sink: SmtpSink, email: str) -> str:
    """Subscribe ``email`` and return the confirm link's path from the email it gets."""
    before = len(confirmations(sink, email))
    assert client.post("/subscribe", json={"email": email}).status_code == 202
    deadline = time.monotonic() + 10
    while len(confirmations(sink, email)) <= before:
        assert time.monotonic() < deadline, f"no new confirmation email for {email}"
        time.sleep(0.01)
    wait_for_outbox(client.application)
    return confirmations(sink, email)[-1]


def status(app: Flask, email: str) -> str:
    with app.app_context():
        row = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert row is not None
        return row.status


def unsubscribe_path(app: Flask, email: str) -> str:
    with app.app_context():
        row = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert row is not None
        return f"/unsubscribe/{get_services(app).tokens.unsubscribe_token(row.id)}"


def test_get_on_a_confirm_link_changes_nothing(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink
) -> None:
    path = sign_up(client, smtp_sink, "scan@example.com")
    for _ in range(3):
        assert client.get(path).status_code == 200
    assert status(app, "scan@example.com") == "pending"


def test_confirming_twice_is_harmless(client: FlaskClient, app: Flask, smtp_sink: SmtpSink) -> None:
    path = sign_up(client, smtp_sink, "twice@example.com")
    assert client.post(path).status_code == 200
    assert client.post(path).status_code == 200
    with app.app_context():
        kinds = db.session.scalars(select(ConsentEvent.kind)).all()
    assert kinds.count("confirmed") == 1


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-3],  # truncated by a mail client
        # tampered signature: not its last character, whose low bits base64 may ignore
        lambda t: t[:-5] + ("A" if t[-5] != "A" else "B") + t[-4:],
        lambda t: "x" + t,  # tampered payload
        lambda t: "not-a-token",
    ],
)
def test_tampered_or_truncated_confirm_links_get_a_friendly_400(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink, mangle: object
) -> None:
    path = sign_up(client, smtp_sink, "t@example.com")
    token = path.rsplit("/", 1)[1]
    bad = f"/confirm/{mangle(token)}"  # type: ignore[operator]
    for response in (client.get(bad), client.post(bad)):
        assert response.status_code == 400
        assert b"Oops! Something went wrong..." in response.data
    assert status(app, "t@example.com") == "pending"


def test_a_token_made_for_unsubscribing_cannot_confirm_and_vice_versa(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink
) -> None:
    confirm_path = sign_up(client, smtp_sink, "purpose@example.com")
    unsub_token = unsubscribe_path(app, "purpose@example.com").rsplit("/", 1)[1]
    assert client.post(f"/confirm/{unsub_token}").status_code == 400
    confirm_token = confirm_path.rsplit("/", 1)[1]
    assert client.post(f"/unsubscribe/{confirm_token}").status_code == 400
    assert (
        client.post(
            f"/unsubscribe/{confirm_token}", data={"List-Unsubscribe": "One-Click"}
        ).status_code
        == 400
    )
    assert status(app, "purpose@example.com") == "pending"


def test_one_readers_token_never_acts_on_another(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink
) -> None:
    first = sign_up(client, smtp_sink, "first@example.com")
    sign_up(client, smtp_sink, "second@example.com")
    client.post(first)
    assert status(app, "first@example.com") == "confirmed"
    assert status(app, "second@example.com") == "pending"
    client.post(unsubscribe_path(app, "first@example.com"))
    assert status(app, "first@example.com") == "unsubscribed"
    assert status(app, "second@example.com") == "pending"


def test_a_token_signed_with_another_secret_is_refused(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink
) -> None:
    from newsletter.tokens import Tokens

    sign_up(client, smtp_sink, "secret@example.com")
    forged = Tokens("another-secret", get_services(app).clock, 3600).confirm_token(1, 1, "0" * 16)
    assert client.post(f"/confirm/{forged}").status_code == 400


def test_confirm_link_expires_after_seven_days_and_offers_a_new_one(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    path = sign_up(client, smtp_sink, "late@example.com")
    clock.advance(days=7, seconds=1)
    page = client.get(path)
    assert page.status_code == 410 and b"Send me a new link" in page.data
    assert client.post(path).status_code == 410
    assert status(app, "late@example.com") == "pending"

    resent = client.post(f"{path}/resend")
    assert resent.status_code == 200
    deadline = time.monotonic() + 10
    while len(confirmations(smtp_sink, "late@example.com")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    new_path = confirmations(smtp_sink, "late@example.com")[-1]
    assert new_path != path
    assert client.post(new_path).status_code == 200
    assert status(app, "late@example.com") == "confirmed"


def test_confirm_link_works_until_its_last_second(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    path = sign_up(client, smtp_sink, "ontime@example.com")
    clock.advance(days=7, seconds=-1)
    assert client.post(path).status_code == 200
    assert status(app, "ontime@example.com") == "confirmed"


def test_expiry_is_configurable(make_app: object, clock: FrozenClock, smtp_sink: SmtpSink) -> None:
    app = make_app(CONFIRM_TOKEN_MAX_AGE=3600)  # type: ignore[operator]
    client = app.test_client()
    path = sign_up(client, smtp_sink, "hour@example.com")
    clock.advance(hours=1, seconds=1)
    assert client.post(path).status_code == 410


def test_every_link_sent_while_pending_keeps_working(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    old = sign_up(client, smtp_sink, "again@example.com")
    clock.advance(minutes=11)
    new = sign_up(client, smtp_sink, "again@example.com")
    assert old != new
    # Either email's button confirms; the other then shows the confirmed page, changing nothing.
    assert client.post(old).status_code == 200
    assert status(app, "again@example.com") == "confirmed"
    second = client.post(new)
    assert second.status_code == 200 and b"subscribed" in second.data
    with app.app_context():
        kinds = db.session.scalars(select(ConsentEvent.kind)).all()
    assert kinds.count("confirmed") == 1


def test_a_second_sign_up_that_sends_no_email_leaves_the_first_link_working(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    path = sign_up(client, smtp_sink, "capped@example.com")
    for _ in range(4):  # within the 10 minutes: held back by the per-address limit
        clock.advance(minutes=2)
        assert client.post("/subscribe", json={"email": "capped@example.com"}).status_code == 202
    wait_for_outbox(app)
    assert len(confirmations(smtp_sink, "capped@example.com")) == 1
    page = client.get(path)
    assert page.status_code == 200 and b"<button" in page.data
    assert client.post(path).status_code == 200
    assert status(app, "capped@example.com") == "confirmed"


def test_twenty_simultaneous_sign_ups_leave_the_one_link_working(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    import threading

    barrier = threading.Barrier(20)
    codes: list[int] = []

    def sign_up_now(n: int) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(
            "/subscribe",
            json={"email": "crowd@example.com"},
            environ_base={"REMOTE_ADDR": f"192.0.2.{n}"},
        )
        codes.append(response.status_code)

    threads = [threading.Thread(target=sign_up_now, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [202] * 20
    smtp_sink.wait_for(1)
    wait_for_outbox(app)
    [path] = confirmations(smtp_sink, "crowd@example.com")
    assert app.test_client().post(path).status_code == 200
    assert status(app, "crowd@example.com") == "confirmed"


def test_a_double_click_at_once_confirms_once(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink
) -> None:
    import threading

    path = sign_up(client, smtp_sink, "double@example.com")
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def click() -> None:
        other = app.test_client()
        barrier.wait()
        codes.append(other.post(path).status_code)

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [200, 200]
    wait_for_outbox(app)
    with app.app_context():
        kinds = db.session.scalars(select(ConsentEvent.kind)).all()
    assert kinds.count("confirmed") == 1
    welcomes = [
        m for m in smtp_sink.to("double@example.com") if m.message["Subject"].startswith("Welcome")
    ]
    assert len(welcomes) <= 1


def test_an_old_link_of_a_purged_sign_up_never_confirms_the_next_holder_of_its_id(
    make_app: object, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    from newsletter.privacy import purge_pending

    # Sign-ups are kept 1 day, links live 7: the link outlives the reader it was made for.
    app = make_app(PENDING_RETENTION_DAYS=1)  # type: ignore[operator]
    client = app.test_client()
    stale = sign_up(client, smtp_sink, "gone.soon@example.com")
    clock.advance(days=2)
    with app.app_context():
        assert purge_pending(db.session, get_services(app)).removed == 1
    assert client.post("/subscribe", json={"email": "next.one@example.com"}).status_code == 202
    with app.app_context():
        newcomer = db.session.scalar(select(Subscriber))
        assert newcomer is not None and newcomer.email == "next.one@example.com"
    for response in (client.get(stale), client.post(stale)):
        assert response.status_code == 400
    assert status(app, "next.one@example.com") == "pending"


def test_a_link_made_before_link_keys_is_bound_to_the_reader_of_its_time(
    make_app: object, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    from itsdangerous import TimestampSigner
    from itsdangerous.url_safe import URLSafeTimedSerializer

    from newsletter.privacy import purge_pending
    from newsletter.tokens import CONFIRM_SALT

    app = make_app(PENDING_RETENTION_DAYS=1)  # type: ignore[operator]
    client = app.test_client()
    sign_up(client, smtp_sink, "early@example.com")
    with app.app_context():
        reader = db.session.scalar(select(Subscriber))
        assert reader is not None
        reader_id, generation = reader.id, reader.token_generation

    class ClockedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock().timestamp())

    def keyless_link() -> str:
        """A link as this service made them before link keys: [id, generation]."""
        serializer = URLSafeTimedSerializer(
            app.config["SECRET_KEY"], salt=CONFIRM_SALT, signer=ClockedSigner
        )
        return f"/confirm/{serializer.dumps([reader_id, generation])}"

    # Made for the reader who holds the id now: it still works...
    assert client.get(keyless_link()).status_code == 200
    clock.advance(days=2)
    with app.app_context():
        purge_pending(db.session, get_services(app))
    old = keyless_link()  # signed "now", for the purged reader's id
    clock.advance(minutes=1)
    assert client.post("/subscribe", json={"email": "later@example.com"}).status_code == 202
    # ... but one made before the id's new holder signed up never confirms them.
    assert client.post(old).status_code == 400
    assert status(app, "later@example.com") == "pending"


def test_unsubscribe_page_shows_a_button_and_get_changes_nothing(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink
) -> None:
    client.post(sign_up(client, smtp_sink, "leave@example.com"))
    path = unsubscribe_path(app, "leave@example.com")
    page = client.get(path)
    assert page.status_code == 200 and b"<button" in page.data
    assert status(app, "leave@example.com") == "confirmed"
    done = client.post(path)
    assert done.status_code == 200 and b"unsubscribed" in done.data
    assert status(app, "leave@example.com") == "unsubscribed"


def test_one_click_unsubscribe_accepts_multipart_and_answers_200_without_redirect(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink
) -> None:
    client.post(sign_up(client, smtp_sink, "mp@example.com"))
    response = client.post(
        unsubscribe_path(app, "mp@example.com"),
        data={"List-Unsubscribe": "One-Click"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    assert "Location" not in response.headers
    assert status(app, "mp@example.com") == "unsubscribed"
    with app.app_context():
        event = db.session.scalar(select(ConsentEvent).where(ConsentEvent.kind == "withdrawn"))
        assert event is not None and event.method == "one-click"


def test_unsubscribe_links_never_expire_and_survive_resubscribing(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    client.post(sign_up(client, smtp_sink, "old@example.com"))
    path = unsubscribe_path(app, "old@example.com")
    clock.advance(days=3 * 365)
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert status(app, "old@example.com") == "unsubscribed"
    # Unsubscribing again is harmless and records nothing new.
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    with app.app_context():
        kinds = db.session.scalars(select(ConsentEvent.kind)).all()
    assert kinds.count("withdrawn") == 1


def test_an_old_confirm_link_cannot_resubscribe_someone_who_left(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink
) -> None:
    path = sign_up(client, smtp_sink, "gone@example.com")
    client.post(path)
    client.post(unsubscribe_path(app, "gone@example.com"))
    assert client.post(path).status_code == 400
    assert status(app, "gone@example.com") == "unsubscribed"


def test_resubscribing_after_unsubscribing_needs_a_fresh_confirmation(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    client.post(sign_up(client, smtp_sink, "back@example.com"))
    client.post(unsubscribe_path(app, "back@example.com"))
    clock.advance(minutes=11)
    path = sign_up(client, smtp_sink, "back@example.com")
    assert status(app, "back@example.com") == "pending"
    client.post(path)
    assert status(app, "back@example.com") == "confirmed"
    with app.app_context():
        kinds = db.session.scalars(select(ConsentEvent.kind).order_by(ConsentEvent.id)).all()
    assert kinds == [
        "requested",
        "confirmation_sent",
        "confirmed",
        "withdrawn",
        "requested",
        "confirmation_sent",
        "confirmed",
    ]


def test_welcome_email_can_be_turned_off(make_app: object, smtp_sink: SmtpSink) -> None:
    app = make_app(WELCOME_EMAIL=False)  # type: ignore[operator]
    client = app.test_client()
    client.post(sign_up(client, smtp_sink, "quiet@example.com"))
    assert status(app, "quiet@example.com") == "confirmed"
    with pytest.raises(AssertionError):
        smtp_sink.wait_for(2, timeout=1)


def test_event_times_are_utc(
    client: FlaskClient, app: Flask, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    sign_up(client, smtp_sink, "utc@example.com")
    with app.app_context():
        event = db.session.scalar(select(ConsentEvent))
        assert event is not None
        assert event.occurred_at == clock.now
        assert event.occurred_at.utcoffset() == timedelta(0)


def test_upgrading_gives_existing_readers_a_key_and_keeps_their_links_working(
    make_app: object, smtp_sink: SmtpSink, clock: FrozenClock, tmp_path: object
) -> None:
    from alembic import command
    from itsdangerous import TimestampSigner
    from itsdangerous.url_safe import URLSafeTimedSerializer
    from sqlalchemy import text

    from newsletter.db import alembic_config
    from newsletter.tokens import CONFIRM_SALT

    app = make_app()  # type: ignore[operator]
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=False)
        with db.engine.begin() as connection:
            # Back to the schema before link keys, with a reader signed up then.
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
            connection.execute(
                text(
                    "INSERT INTO subscribers (email, status, token_generation, created_at, "
                    "updated_at) VALUES ('before@example.com', 'pending', 1, :now, :now)"
                ),
                {"now": clock().replace(tzinfo=None)},
            )
            command.upgrade(config, "head")
        reader = db.session.scalar(select(Subscriber))
        assert reader is not None and reader.link_key and len(reader.link_key) == 16
        reader_id = reader.id
        db.session.rollback()

    class ClockedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock().timestamp())

    clock.advance(seconds=30)
    serializer = URLSafeTimedSerializer(
        app.config["SECRET_KEY"], salt=CONFIRM_SALT, signer=ClockedSigner
    )
    old_link = f"/confirm/{serializer.dumps([reader_id, 1])}"  # as sent before the upgrade
    assert app.test_client().post(old_link).status_code == 200
    assert status(app, "before@example.com") == "confirmed"


def test_an_expired_link_of_a_purged_sign_up_sends_the_next_holder_of_its_id_nothing(
    make_app: object, smtp_sink: SmtpSink, clock: FrozenClock
) -> None:
    from newsletter.privacy import purge_pending

    app = make_app(PENDING_RETENTION_DAYS=1)  # type: ignore[operator]
    client = app.test_client()
    stale = sign_up(client, smtp_sink, "gone.later@example.com")
    clock.advance(days=8)  # the link has expired and its reader is purged
    with app.app_context():
        assert purge_pending(db.session, get_services(app)).removed == 1
    sign_up(client, smtp_sink, "holder@example.com")
    clock.advance(minutes=11)  # past the per-address interval: only the token decides
    resent = client.post(f"{stale}/resend")
    assert resent.status_code == 200 and b"If your subscription" in resent.data
    wait_for_outbox(app)
    assert len(confirmations(smtp_sink, "holder@example.com")) == 1

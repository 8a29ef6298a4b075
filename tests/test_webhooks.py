"""Provider webhooks, each with a correctly signed request, a bad signature, a stale timestamp
and a replay: Amazon SES through SNS (a test CA's key signs the messages; the certificate
fetcher is injected, since tests never reach AWS), Mailgun (HMAC) and Postmark (basic auth)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient

from newsletter.bounces.webhooks import sns_string_to_sign
from newsletter.db import db
from newsletter.models import BOUNCED, CONFIRMED, UNSUBSCRIBED, Subscriber
from newsletter.web.webhooks import FETCHER_KEY
from tests.bounce_helpers import add_reader
from tests.conftest import FrozenClock

TOPIC = "arn:aws:sns:eu-west-1:123456789012:newsletter-bounces"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"
MAILGUN_KEY = "key-0123456789abcdef"


@pytest.fixture(scope="module")
def signing_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


class Fetcher:
    """Stands in for HTTPS to AWS: serves the test certificate and records every URL."""

    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.pem if url.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def sns_message(
    key: rsa.RSAPrivateKey,
    when: datetime,
    notification: dict[str, Any],
    *,
    version: str = "1",
    message_id: str = "msg-1",
    cert_url: str = CERT_URL,
    kind: str = "Notification",
    **extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "Type": kind,
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(notification),
        "Timestamp": _iso(when),
        "SignatureVersion": version,
        "SigningCertURL": cert_url,
        **extra,
    }
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(sns_string_to_sign(message), padding.PKCS1v15(), digest)
    message["Signature"] = base64.b64encode(signature).decode()
    return message


def ses_bounce(address: str, bounce_type: str = "Permanent") -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 no such user",
                }
            ],
        },
        "mail": {"source": "hello@blog.example.com", "destination": [address]},
    }


@pytest.fixture
def hook_app(make_app: Callable[..., Flask], signing_key: tuple[rsa.RSAPrivateKey, bytes]) -> Flask:
    app = make_app(
        SES_TOPIC_ARNS=TOPIC,
        MAILGUN_SIGNING_KEY=MAILGUN_KEY,
        POSTMARK_WEBHOOK_USER="postmark",
        POSTMARK_WEBHOOK_PASSWORD="hook-pass",
        BOUNCE_ADDRESS="bounces@blog.example.com",
    )
    app.extensions[FETCHER_KEY] = Fetcher(signing_key[1])
    return app


@pytest.fixture
def reader(hook_app: Flask, clock: FrozenClock) -> int:
    with hook_app.app_context():
        sid = add_reader(db.session(), "sam@reader.example", clock())
        db.session.remove()
    return sid


def status_of(app: Flask, sid: int) -> str:
    with app.app_context():
        status = db.session.get(Subscriber, sid).status
        db.session.remove()
    return status


# --- Amazon SES through SNS ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_signed_bounce_marks_the_reader_bounced(
    hook_app: Flask,
    reader: int,
    clock: FrozenClock,
    signing_key: tuple[rsa.RSAPrivateKey, bytes],
    version: str,
) -> None:
    client = hook_app.test_client()
    message = sns_message(
        signing_key[0], clock(), ses_bounce("sam@reader.example"), version=version
    )
    response = client.post("/webhooks/ses", data=json.dumps(message))
    assert response.status_code == 200, response.text
    assert status_of(hook_app, reader) == BOUNCED
    # The certificate is fetched once and cached.
    client.post(
        "/webhooks/ses",
        data=json.dumps(
            sns_message(signing_key[0], clock(), ses_bounce("x@reader.example"), message_id="msg-2")
        ),
    )
    assert hook_app.extensions[FETCHER_KEY].urls == [CERT_URL]


def test_ses_complaint_unsubscribes(
    hook_app: Flask, reader: int, clock: FrozenClock, signing_key: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    complaint = {
        "notificationType": "Complaint",
        "mail": {"source": "hello@blog.example.com"},
        "complaint": {
            "complainedRecipients": [{"emailAddress": "sam@reader.example"}],
            "complaintFeedbackType": "abuse",
        },
    }
    response = hook_app.test_client().post(
        "/webhooks/ses", data=json.dumps(sns_message(signing_key[0], clock(), complaint))
    )
    assert response.status_code == 200
    assert status_of(hook_app, reader) == UNSUBSCRIBED


def test_ses_bad_signature_is_refused(
    hook_app: Flask, reader: int, clock: FrozenClock, signing_key: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    message = sns_message(signing_key[0], clock(), ses_bounce("sam@reader.example"))
    message["Message"] = json.dumps(ses_bounce("someone-else@reader.example"))
    response = hook_app.test_client().post("/webhooks/ses", data=json.dumps(message))
    assert response.status_code == 403 and "bad signature" in response.text
    unsigned = dict(message, Signature="")
    assert (
        hook_app.test_client().post("/webhooks/ses", data=json.dumps(unsigned)).status_code == 403
    )
    assert status_of(hook_app, reader) == CONFIRMED


def test_ses_stale_message_is_refused(
    hook_app: Flask, reader: int, clock: FrozenClock, signing_key: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    message = sns_message(
        signing_key[0], clock() - timedelta(minutes=16), ses_bounce("sam@reader.example")
    )
    response = hook_app.test_client().post("/webhooks/ses", data=json.dumps(message))
    assert response.status_code == 403 and "stale" in response.text
    assert status_of(hook_app, reader) == CONFIRMED


def test_ses_replay_is_refused(
    hook_app: Flask, reader: int, clock: FrozenClock, signing_key: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    message = sns_message(signing_key[0], clock(), ses_bounce("sam@reader.example", "Transient"))
    client = hook_app.test_client()
    assert client.post("/webhooks/ses", data=json.dumps(message)).status_code == 200
    replay = client.post("/webhooks/ses", data=json.dumps(message))
    assert replay.status_code == 403 and "replayed" in replay.text


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
        "http://sns.eu-west-1.amazonaws.com/cert.pem",
        "https://evil.example/sns.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com:8443/cert.pem",
    ],
)
def test_ses_certificate_off_amazon_is_refused_without_fetching(
    hook_app: Flask,
    reader: int,
    clock: FrozenClock,
    signing_key: tuple[rsa.RSAPrivateKey, bytes],
    cert_url: str,
) -> None:
    message = sns_message(
        signing_key[0], clock(), ses_bounce("sam@reader.example"), cert_url=cert_url
    )
    response = hook_app.test_client().post("/webhooks/ses", data=json.dumps(message))
    assert response.status_code == 403
    assert hook_app.extensions[FETCHER_KEY].urls == []


def test_ses_other_topic_is_refused(
    hook_app: Flask, reader: int, clock: FrozenClock, signing_key: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    message = sns_message(signing_key[0], clock(), ses_bounce("sam@reader.example"))
    message["TopicArn"] = "arn:aws:sns:eu-west-1:999999999999:someone-elses"
    response = hook_app.test_client().post("/webhooks/ses", data=json.dumps(message))
    assert response.status_code == 403 and "topic" in response.text


def test_ses_subscription_is_confirmed(
    hook_app: Flask, clock: FrozenClock, signing_key: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    subscribe_url = (
        "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
        f"&TopicArn={TOPIC}&Token=abc"
    )
    message = sns_message(
        signing_key[0],
        clock(),
        {},
        kind="SubscriptionConfirmation",
        Token="abc",
        SubscribeURL=subscribe_url,
    )
    message["Message"] = "You have chosen to subscribe to the topic."
    message["Signature"] = base64.b64encode(
        signing_key[0].sign(sns_string_to_sign(message), padding.PKCS1v15(), hashes.SHA1())
    ).decode()
    response = hook_app.test_client().post("/webhooks/ses", data=json.dumps(message))
    assert response.status_code == 200 and "confirmed" in response.text
    assert hook_app.extensions[FETCHER_KEY].urls == [CERT_URL, subscribe_url]


def test_ses_subscribe_url_off_amazon_is_not_fetched(
    hook_app: Flask, clock: FrozenClock, signing_key: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    message = sns_message(
        signing_key[0],
        clock(),
        {},
        kind="SubscriptionConfirmation",
        Token="abc",
        SubscribeURL="https://evil.example/confirm",
    )
    response = hook_app.test_client().post("/webhooks/ses", data=json.dumps(message))
    assert response.status_code == 403
    assert hook_app.extensions[FETCHER_KEY].urls == [CERT_URL]


# --- Mailgun ---------------------------------------------------------------------------------


def mailgun_body(
    when: datetime, event: dict[str, Any], token: str = "tok-1", key: str = MAILGUN_KEY
) -> str:
    timestamp = str(int(when.timestamp()))
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": event,
        }
    )


FAILED = {
    "event": "failed",
    "severity": "permanent",
    "recipient": "sam@reader.example",
    "delivery-status": {"code": 550, "description": "No such mailbox"},
}


def test_mailgun_signed_failure_marks_the_reader_bounced(
    hook_app: Flask, reader: int, clock: FrozenClock
) -> None:
    response = hook_app.test_client().post(
        "/webhooks/mailgun", data=mailgun_body(clock(), FAILED), content_type="application/json"
    )
    assert response.status_code == 200
    assert status_of(hook_app, reader) == BOUNCED


def test_mailgun_complaint_unsubscribes(hook_app: Flask, reader: int, clock: FrozenClock) -> None:
    body = mailgun_body(clock(), {"event": "complained", "recipient": "sam@reader.example"})
    assert hook_app.test_client().post("/webhooks/mailgun", data=body).status_code == 200
    assert status_of(hook_app, reader) == UNSUBSCRIBED


def test_mailgun_bad_signature_stale_and_replay_are_refused(
    hook_app: Flask, reader: int, clock: FrozenClock
) -> None:
    client = hook_app.test_client()
    bad = client.post("/webhooks/mailgun", data=mailgun_body(clock(), FAILED, key="wrong"))
    assert bad.status_code == 403 and "bad signature" in bad.text
    stale = client.post(
        "/webhooks/mailgun", data=mailgun_body(clock() - timedelta(minutes=16), FAILED, token="t2")
    )
    assert stale.status_code == 403 and "stale" in stale.text
    unsigned = client.post("/webhooks/mailgun", data=json.dumps({"event-data": FAILED}))
    assert unsigned.status_code == 403
    assert status_of(hook_app, reader) == CONFIRMED
    soft = dict(FAILED, severity="temporary")
    body = mailgun_body(clock(), soft, token="t3")
    assert client.post("/webhooks/mailgun", data=body).status_code == 200
    replay = client.post("/webhooks/mailgun", data=body)
    assert replay.status_code == 403 and "replayed" in replay.text
    assert status_of(hook_app, reader) == CONFIRMED  # one soft bounce is only counted


# --- Postmark --------------------------------------------------------------------------------


def postmark_bounce(when: datetime, event_id: int = 1, kind: str = "HardBounce") -> str:
    return json.dumps(
        {
            "RecordType": "Bounce",
            "ID": event_id,
            "Type": kind,
            "Email": "sam@reader.example",
            "BouncedAt": _iso(when),
            "Description": "The server was unable to deliver your message",
        }
    )


def _auth(user: str = "postmark", password: str = "hook-pass") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_postmark_authenticated_bounce_marks_the_reader_bounced(
    hook_app: Flask, reader: int, clock: FrozenClock
) -> None:
    response = hook_app.test_client().post(
        "/webhooks/postmark", data=postmark_bounce(clock()), headers=_auth()
    )
    assert response.status_code == 200
    assert status_of(hook_app, reader) == BOUNCED


def test_postmark_spam_complaint_unsubscribes(
    hook_app: Flask, reader: int, clock: FrozenClock
) -> None:
    body = json.dumps(
        {
            "RecordType": "SpamComplaint",
            "ID": 9,
            "Type": "SpamComplaint",
            "Email": "sam@reader.example",
            "BouncedAt": _iso(clock()),
        }
    )
    assert (
        hook_app.test_client().post("/webhooks/postmark", data=body, headers=_auth()).status_code
        == 200
    )
    assert status_of(hook_app, reader) == UNSUBSCRIBED


def test_postmark_bad_credentials_stale_and_replay_are_refused(
    hook_app: Flask, reader: int, clock: FrozenClock
) -> None:
    client = hook_app.test_client()
    assert (
        client.post(
            "/webhooks/postmark", data=postmark_bounce(clock()), headers=_auth(password="wrong")
        ).status_code
        == 403
    )
    assert client.post("/webhooks/postmark", data=postmark_bounce(clock())).status_code == 403
    stale = client.post(
        "/webhooks/postmark",
        data=postmark_bounce(clock() - timedelta(minutes=16), 2),
        headers=_auth(),
    )
    assert stale.status_code == 403 and "stale" in stale.text
    assert status_of(hook_app, reader) == CONFIRMED
    body = postmark_bounce(clock(), 3, kind="SoftBounce")
    assert client.post("/webhooks/postmark", data=body, headers=_auth()).status_code == 200
    replay = client.post("/webhooks/postmark", data=body, headers=_auth())
    assert replay.status_code == 403 and "replayed" in replay.text


# --- off until configured --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/webhooks/ses", "/webhooks/mailgun", "/webhooks/postmark"])
def test_webhooks_are_off_until_their_secret_is_set(client: FlaskClient, path: str) -> None:
    assert client.post(path, data="{}").status_code == 404


def test_ses_certificate_fetch_failure_asks_sns_to_retry(
    hook_app: Flask, reader: int, clock: FrozenClock, signing_key: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    def unreachable(url: str) -> bytes:
        raise OSError("network is unreachable")

    hook_app.extensions[FETCHER_KEY] = unreachable
    message = sns_message(signing_key[0], clock(), ses_bounce("sam@reader.example"))
    response = hook_app.test_client().post("/webhooks/ses", data=json.dumps(message))
    assert response.status_code == 502  # SNS retries 5xx answers
    assert status_of(hook_app, reader) == CONFIRMED

"""Fixtures: a real SQLite file per test (schema migrated once, then copied), a real SMTP
server, a fixed clock, the app, its test client and CLI runner."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from newsletter import create_app, placeholders
from newsletter.appctx import get_services
from newsletter.db import db, upgrade_schema
from newsletter.models import CONFIRMED, Campaign, Delivery, Subscriber
from newsletter.sending import plan_deliveries, sending_state_dir
from newsletter.services import Services
from tests.smtp_sink import SmtpSink

PUBLIC_URL = "http://newsletter.test"
BLOG_ORIGIN = "https://blog.example.com"


class FrozenClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# The suite runs on SQLite; with NEWSLETTER_TEST_DATABASE_URL=postgresql+psycopg://... it runs
# every test on PostgreSQL instead, each in a schema of its own.
POSTGRES_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "")
ON_POSTGRES = POSTGRES_URL.startswith("postgresql")
needs_postgres = pytest.mark.skipif(
    not ON_POSTGRES, reason="needs NEWSLETTER_TEST_DATABASE_URL=postgresql+psycopg://..."
)
needs_sqlite = pytest.mark.skipif(ON_POSTGRES, reason="checks SQLite's own files")


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with the schema at head, made once by running the migrations."""
    path = tmp_path_factory.mktemp("template") / "template.sqlite"
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{path}"})
    upgrade_schema(app)
    with app.app_context():
        db.engine.dispose()
    return path


def _postgres_schema_url(name: str) -> str:
    """A fresh PostgreSQL schema, migrated to head; returns a URL whose search_path is it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    admin.dispose()
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={name}"})
    rendered = url.render_as_string(hide_password=False)
    app = create_app({"TESTING": True, "DATABASE_URL": rendered})
    upgrade_schema(app)
    with app.app_context():
        db.engine.dispose()
    return rendered


def _drop_postgres_schema(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


@pytest.fixture
def database_url(
    tmp_path: Path, migrated_db: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A migrated database of this test's own: a SQLite file, or a PostgreSQL schema.

    The schema's name includes the process id, so two test runs on one server (two checkouts,
    or CI beside a developer) never share a schema.
    """
    if ON_POSTGRES:
        key = f"{os.getpid()}:{request.node.nodeid}"
        name = f"t_{hashlib.sha1(key.encode()).hexdigest()[:16]}"
        yield _postgres_schema_url(name)
        _drop_postgres_schema(name)
        return
    database = tmp_path / "newsletter.sqlite"
    shutil.copyfile(migrated_db, database)
    yield f"sqlite:///{database}"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def config(database_url: str, smtp_sink: SmtpSink) -> dict[str, Any]:
    """Test settings; a test may change them before asking for ``app``."""
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "DATABASE_URL": database_url,
        "PUBLIC_URL": PUBLIC_URL,
        "SITE_NAME": "Calm Corner",
        "SITE_URL": BLOG_ORIGIN,
        "MAIL_FROM": "hello@blog.example.com",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": smtp_sink.port,
        "SMTP_TIMEOUT": 5,
        "ALLOWED_ORIGINS": BLOG_ORIGIN,
        "PRIVACY_POLICY_URL": f"{BLOG_ORIGIN}/privacy",
        "POSTAL_ADDRESS": "12 Willow Lane, Springfield",
        "OUTBOX_RETRY_INTERVAL": 3600,
    }


@pytest.fixture
def make_app(
    config: dict[str, Any], clock: FrozenClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Flask]]:
    """Build apps from ``config`` plus overrides, with the fixed clock; cleaned up after."""
    monkeypatch.setenv("NEWSLETTER_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.chdir(tmp_path)
    made: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app({**config, **overrides})
        get_services(app).clock = clock
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["newsletter.outbox_sender"].stop()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    """The app's database session, inside an app context."""
    with app.app_context():
        yield db.session()


@pytest.fixture
def services(app: Flask) -> Services:
    """The app's services (clock, tokens, renderer, SMTP)."""
    return get_services(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


def link_in(text: str, path: str) -> str:
    """The first link in ``text`` to ``PUBLIC_URL/path...``, as a path for the test client."""
    match = re.search(re.escape(PUBLIC_URL) + r"(/" + re.escape(path) + r"/[A-Za-z0-9_.\-]+)", text)
    assert match, f"no {path} link in:\n{text}"
    return match.group(1)


def wait_for_outbox(app: Flask, timeout: float = 10.0) -> None:
    """Wait until the background sender has recorded every email it handed over.

    The SMTP server has a message a moment before the sender commits it as sent (and its
    `confirmation_sent` event): a test that acts on the email at once would race that commit.
    """
    import time

    from sqlalchemy import func, select

    from newsletter.models import QUEUED, SENDING, OutboxEmail

    deadline = time.monotonic() + timeout
    while True:
        with app.app_context():
            busy = db.session.scalar(
                select(func.count())
                .select_from(OutboxEmail)
                .where(OutboxEmail.status.in_([QUEUED, SENDING]))
            )
            db.session.remove()
        if not busy:
            return
        assert time.monotonic() < deadline, f"{busy} email(s) still unsent"
        time.sleep(0.01)


# --- helpers shared by the sending tests (test_sending*, test_announcements, ...) ---------


def write_post(folder: Path, slug: str, title: str, date: str) -> None:
    (folder / f"{slug}.md").write_text(
        f"---\ntitle: {title}\ndate: {date}\nsummary: A few calm words.\n---\n\n"
        "Breathe in for four, out for six.\n",
        encoding="utf-8",
    )


def add_readers(
    session: Session,
    clock: FrozenClock,
    count: int,
    *,
    status: str = CONFIRMED,
    start: int = 1,
    names: bool = True,
) -> list[str]:
    """Insert readers directly (fast); returns their addresses in id order."""
    emails = [f"reader{n}@example.com" for n in range(start, start + count)]
    session.execute(
        insert(Subscriber),
        [
            {
                "email": email,
                "name": f"Reader {n}" if names else None,
                "status": status,
                "token_generation": 0,
                "created_at": clock(),
                "updated_at": clock(),
            }
            for n, email in enumerate(emails, start)
        ],
    )
    session.commit()
    return emails


def make_campaign(
    session: Session,
    clock: FrozenClock,
    *,
    subject: str = "Slow mornings",
    html: str | None = None,
    text: str | None = None,
) -> int:
    """A campaign rendered with the reader placeholders, planned for every confirmed reader."""
    html = html or (
        f"<html><body><p class=greeting>{placeholders.GREETING}</p>"
        "<p>Breathe in for four.</p>"
        f'<p><a href="{placeholders.UNSUBSCRIBE_URL}">Unsubscribe</a></p>'
        "</body></html>"
    )
    text = text or (
        f"{placeholders.GREETING}\n\nBreathe in for four.\n\n"
        f"Unsubscribe: {placeholders.UNSUBSCRIBE_URL}\n"
    )
    campaign = Campaign(
        kind="digest",
        subject=subject,
        preheader=None,
        status="sending",
        content_hash=hashlib.sha256(subject.encode()).hexdigest(),
        created_at=clock(),
        html=html,
        text=text,
    )
    session.add(campaign)
    session.flush()
    plan_deliveries(session, campaign.id, clock())
    session.commit()
    return campaign.id


def state_dir(app: Flask) -> Path:
    """Where the app's send lock and journals live."""
    return sending_state_dir(app.config["SQLALCHEMY_DATABASE_URI"], app.instance_path)


def statuses(session: Session, campaign_id: int) -> dict[str, str]:
    """Each reader's delivery status, by address."""
    session.commit()
    rows = session.execute(
        select(Subscriber.email, Delivery.status)
        .join(Delivery)
        .where(Delivery.campaign_id == campaign_id)
    )
    return dict(rows.all())


def copies(sink: SmtpSink) -> Counter[str]:
    """How many copies each recipient got."""
    return Counter(r.lower() for m in sink.messages for r in m.recipients)


def newsletter_process(
    config: dict[str, Any], tmp_path: Path, *args: str, **env: str
) -> subprocess.Popen[str]:
    """`newsletter ARGS` in a separate process, on the test's database and SMTP sink."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environment.update(
        {
            "NEWSLETTER_DATABASE_URL": config["DATABASE_URL"],
            "NEWSLETTER_SECRET_KEY": config["SECRET_KEY"],
            "NEWSLETTER_TESTING": "true",  # the suite's short key is accepted only in tests
            "NEWSLETTER_PUBLIC_URL": config["PUBLIC_URL"],
            "NEWSLETTER_SITE_URL": config["SITE_URL"],
            "NEWSLETTER_MAIL_FROM": config["MAIL_FROM"],
            "NEWSLETTER_SMTP_HOST": "127.0.0.1",
            "NEWSLETTER_SMTP_PORT": str(config["SMTP_PORT"]),
            "NEWSLETTER_INSTANCE_PATH": str(tmp_path / "instance"),
            **env,
        }
    )
    if config.get("POSTS_DIR"):
        environment["NEWSLETTER_POSTS_DIR"] = str(config["POSTS_DIR"])
    return subprocess.Popen(
        [sys.executable, "-c", "from newsletter.cli import main; main()", *args],
        cwd=tmp_path,
        env=environment,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def sent_in(output: str, campaign_id: int = 1) -> int:
    """How many a `send-digest` summary says it sent for one campaign."""
    match = re.search(rf'Campaign {campaign_id} ".*": sent ([\d,]+),', output)
    assert match, output
    return int(match.group(1).replace(",", ""))


def digest_ready(runner: FlaskCliRunner, folder: Path, title: str = "Rest Is Not a Reward") -> None:
    """A first sync (which records the older post as already published), then a new post."""
    first = runner.invoke(args=["fetch-posts"])
    assert first.exit_code == 0, first.output
    write_post(folder, title.lower().replace(" ", "-"), title, "2020-06-01")

"""Benchmark of `newsletter send-digest` against Postfix's smtp-sink on 127.0.0.1, with SQLite.

Prints a table of:
1. send-digest to 10,000 readers vs a bare smtplib loop pushing one pre-built message of the
   same size over the same number of reused connections, measured in the same run (target:
   at least 0.9 of its rate);
2. the same vs a naive loop that renders and inlines per reader, opens a connection per
   message and commits per reader, on a sample (target: at least 50 times faster);
3. peak memory (RSS) of the send-digest process at 100,000 and 10,000 readers (target: at most
   150 MB, and at most 1.2 times the 10,000 figure);
4. the cost of the status writes for 100,000 deliveries (target: a few seconds).

With ``--postgres URL`` it also sends the digest through PostgreSQL (in a schema of its own,
dropped afterwards): one sender process, and ``--workers 2``, each 250 recorded at once with an
autocommit UPDATE (``synchronous_commit`` off) instead of the SQLite journal; and the cost of
those marks per 100,000 on one connection.

smtp-sink is a C program from Debian's postfix package that accepts and discards mail:

    apt-get install postfix        # gives /usr/sbin/smtp-sink; the mail server itself is not used

Then, from the project folder:

    .venv/bin/python bench/send_digest.py [--readers 10000] [--big 100000] [--connections 4]
        [--postgres postgresql+psycopg://root@127.0.0.1:5432/test]

Everything runs on 127.0.0.1 in a temporary folder; nothing reaches the internet.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SENDER = "hello@blog.example.com"
POSTS = 5  # posts in the digest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_smtp_sink() -> str:
    for candidate in (
        shutil.which("smtp-sink"),
        "/usr/sbin/smtp-sink",
        "/usr/lib/postfix/sbin/smtp-sink",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("smtp-sink not found: install it with `apt-get install postfix` (Debian/Ubuntu)")


def start_smtp_sink() -> tuple[subprocess.Popen[bytes], int]:
    """Postfix's smtp-sink on 127.0.0.1: accepts every message and throws it away."""
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root without
    process = subprocess.Popen(
        [find_smtp_sink(), *user, f"127.0.0.1:{port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.05)
    process.kill()
    sys.exit("smtp-sink did not start")


def settings(workdir: Path, port: int, database_url: str | None = None) -> dict[str, str]:
    """NEWSLETTER_* variables for one benchmark database (SQLite unless ``database_url``)."""
    return {
        "NEWSLETTER_SECRET_KEY": "benchmark-secret-not-for-production-use",
        "NEWSLETTER_DATABASE_URL": database_url or f"sqlite:///{workdir / 'newsletter.sqlite'}",
        "NEWSLETTER_INSTANCE_PATH": str(workdir / "instance"),
        "NEWSLETTER_PUBLIC_URL": "https://news.example.com",
        "NEWSLETTER_SITE_URL": "https://blog.example.com",
        "NEWSLETTER_SITE_NAME": "Calm Corner",
        "NEWSLETTER_MAIL_FROM": SENDER,
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(port),
        "NEWSLETTER_POSTS_DIR": str(workdir / "posts"),
        "NEWSLETTER_POSTAL_ADDRESS": "12 Willow Lane, Springfield",
        "NEWSLETTER_PRIVACY_POLICY_URL": "https://blog.example.com/privacy",
        "NEWSLETTER_OUTBOX_SEND_AFTER_REQUEST": "false",
    }


def make_app(env: dict[str, str]) -> Any:
    for key in [k for k in os.environ if k.startswith("NEWSLETTER_")]:
        del os.environ[key]
    os.environ.update(env)
    from newsletter import create_app

    return create_app()


PARAGRAPH = (
    "Rest is not a reward for finishing the list; it is part of the work. Today we "
    "look at what happens in the body when rest becomes a daily practice, and at "
    "three small ways to begin: a slower morning, a walk without the phone, and "
    "five breaths at the kitchen table before the evening starts. "
)


def prepare(
    workdir: Path, port: int, readers: int, database_url: str | None = None
) -> dict[str, str]:
    """A database with ``readers`` confirmed readers and five new posts, ready for a digest."""
    from sqlalchemy import insert

    from newsletter.appctx import get_services
    from newsletter.db import db, upgrade_schema
    from newsletter.models import Subscriber
    from newsletter.posts import sync_posts

    workdir.mkdir(parents=True)
    posts = workdir / "posts"
    posts.mkdir()
    for n in range(POSTS):
        (posts / f"post-{n}.md").write_text(
            f"---\ntitle: A calm post number {n + 1}\ndate: 2024-0{n + 1}-01\n"
            f"subtitle: Small steps towards a slower week\n"
            f"image: https://blog.example.com/images/{n}.jpg\n---\n\n"
            + "\n\n".join([PARAGRAPH] * 4)
            + "\n",
            encoding="utf-8",
        )
    env = settings(workdir, port, database_url)
    app = make_app(env)
    upgrade_schema(app)
    with app.app_context():
        now = datetime.now(UTC)
        for start in range(0, readers, 10_000):
            db.session.execute(
                insert(Subscriber),
                [
                    {
                        "email": f"reader{n}@example.com",
                        "name": f"Reader {n}" if n % 3 else None,
                        "status": "confirmed",
                        "token_generation": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for n in range(start, min(readers, start + 10_000))
                ],
            )
        db.session.commit()
        sync_posts(db.session, get_services(app), backfill=POSTS)  # all five are new
        db.session.remove()
        db.engine.dispose()
    return env


@dataclass
class CommandRun:
    sent: int
    send_seconds: float  # the sending phase, as send-digest's summary reports it
    wall_seconds: float  # the whole command: start-up, sync, render, plan, send
    peak_rss_mb: float


def run_send_digest(env: dict[str, str], connections: int, *extra: str) -> CommandRun:
    """`newsletter send-digest --yes` as a child process; its peak RSS from wait4()."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environment.update(env)
    started = time.monotonic()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from newsletter.cli import main; main()",
            "send-digest",
            "--yes",
            "--connections",
            str(connections),
            *extra,
        ],
        env=environment,
        cwd=Path(env["NEWSLETTER_INSTANCE_PATH"]).parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = child.stdout.read() if child.stdout else ""
    err = child.stderr.read() if child.stderr else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if child.returncode != 0:
        sys.exit(f"send-digest failed ({child.returncode}):\n{out}\n{err}")
    match = re.search(r"sent ([\d,]+), .* in ([\d.]+)s", out)
    if not match:
        sys.exit(f"unexpected send-digest output:\n{out}")
    return CommandRun(
        int(match.group(1).replace(",", "")), float(match.group(2)), wall, usage.ru_maxrss / 1024
    )  # kilobytes on Linux


def sample_message(env: dict[str, str]) -> bytes:
    """One reader's copy of the digest just sent, as bytes (for the bare loop)."""
    from sqlalchemy import select

    from newsletter.appctx import get_services
    from newsletter.db import db
    from newsletter.models import Campaign
    from newsletter.rendering import RenderedEmail
    from newsletter.sending import ReaderFactory, campaign_template

    app = make_app(env)
    with app.app_context():
        campaign = db.session.execute(select(Campaign)).scalars().first()
        assert campaign is not None
        services = get_services(app)
        rendered = RenderedEmail(campaign.subject, campaign.html, campaign.text)
        template = campaign_template(services, rendered, campaign.created_at)
        reader = ReaderFactory(services, campaign.id, campaign.content_hash)
        data = template.personalise(reader(1, "reader1@example.com", "Reader 1"))
        db.engine.dispose()
    return data


def bare_smtplib_loop(port: int, message: bytes, count: int, connections: int) -> float:
    """Messages per second of smtplib pushing one pre-built message over reused connections."""

    def push(share: int, offset: int) -> None:
        smtp = smtplib.SMTP("127.0.0.1", port)
        for n in range(share):
            smtp.sendmail(SENDER, [f"reader{offset + n}@example.com"], message)
        smtp.quit()

    share = count // connections
    threads = [threading.Thread(target=push, args=(share, n * share)) for n in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return share * connections / (time.monotonic() - started)


def naive_loop(env: dict[str, str], port: int, count: int) -> float:
    """Messages per second of the obvious way: render and inline the digest for each reader,
    build the message, open a connection for it, and commit each reader's status."""
    from sqlalchemy import select, update

    from newsletter import digest, placeholders
    from newsletter.appctx import get_services
    from newsletter.db import db
    from newsletter.mail import build_message, reader_greeting
    from newsletter.models import Campaign, Delivery, Post, Subscriber
    from newsletter.transactional import list_headers

    app = make_app(env)
    with app.app_context():
        services = get_services(app)
        config = services.config
        campaign_id = db.session.scalar(select(Campaign.id))
        posts = list(db.session.scalars(select(Post).where(Post.campaign_id == campaign_id)))
        rows = db.session.execute(
            select(Delivery.id, Subscriber.id, Subscriber.email, Subscriber.name)
            .join(Subscriber)
            .where(Delivery.campaign_id == campaign_id)
            .order_by(Delivery.id)
            .limit(count)
        ).all()
        started = time.monotonic()
        for delivery_id, subscriber_id, email, name in rows:
            unsubscribe = services.public_url(
                f"unsubscribe/{services.tokens.unsubscribe_token(subscriber_id)}"
            )
            rendered = digest.render_digest(posts, services)  # Jinja2 + premailer, per reader
            html = rendered.html.replace(placeholders.GREETING, reader_greeting(name)).replace(
                placeholders.UNSUBSCRIBE_URL, unsubscribe
            )
            text = rendered.text.replace(placeholders.GREETING, reader_greeting(name)).replace(
                placeholders.UNSUBSCRIBE_URL, unsubscribe
            )
            message = build_message(
                type(rendered)(rendered.subject, html, text),
                sender=SENDER,
                sender_name=config["MAIL_FROM_NAME"],
                recipient=email,
                headers=list_headers(config, unsubscribe),
            )
            smtp = smtplib.SMTP("127.0.0.1", port)
            smtp.sendmail(SENDER, [str(email)], bytes(message))
            smtp.quit()
            db.session.execute(
                update(Delivery).where(Delivery.id == delivery_id).values(status="sent")
            )
            db.session.commit()
        rate = len(rows) / (time.monotonic() - started)
        db.engine.dispose()
    return rate


def status_writes(env: dict[str, str], readers: int) -> tuple[float, float]:
    """Seconds to plan ``readers`` deliveries (one INSERT ... SELECT) and to mark them all
    sent the way the sender does (bulk UPDATE ... WHERE id IN (...) of 500, a commit each)."""
    from sqlalchemy import select

    from newsletter.db import db
    from newsletter.models import Campaign, Delivery
    from newsletter.sending import ID_CHUNK, mark_sent, plan_deliveries

    app = make_app(env)
    with app.app_context():
        now = datetime.now(UTC)
        campaign = Campaign(
            kind="digest",
            subject="status writes",
            preheader=None,
            content_hash="0" * 64,
            status="sending",
            created_at=now,
            html="",
            text="",
        )
        db.session.add(campaign)
        db.session.flush()
        started = time.monotonic()
        planned = plan_deliveries(db.session, campaign.id, now)
        db.session.commit()
        plan_seconds = time.monotonic() - started
        assert planned == readers, planned
        ids = list(
            db.session.scalars(
                select(Delivery.id).where(Delivery.campaign_id == campaign.id).order_by(Delivery.id)
            )
        )
        db.session.commit()
        started = time.monotonic()
        for start in range(0, len(ids), ID_CHUNK):
            mark_sent(db.session, ids[start : start + ID_CHUNK], now)
            db.session.commit()
        write_seconds = time.monotonic() - started
        db.engine.dispose()
    return plan_seconds, write_seconds


def postgres_schema(url: str, name: str, *, drop: bool = False) -> str:
    """A fresh, empty PostgreSQL schema (or drop it); returns a URL whose search_path is it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        if not drop:
            connection.execute(text(f'CREATE SCHEMA "{name}"'))
    admin.dispose()
    return (
        make_url(url)
        .update_query_dict({"options": f"-csearch_path={name}"})
        .render_as_string(hide_password=False)
    )


def postgres_marks(env: dict[str, str], count: int) -> float:
    """Seconds for ``count`` of the PostgreSQL sender's 250 marks, one after the other on one
    connection (an autocommit UPDATE each, synchronous_commit off), as a sending thread
    makes them."""
    from sqlalchemy import select

    from newsletter.db import db
    from newsletter.models import Delivery
    from newsletter.sending import _DatabaseMarks

    app = make_app(env)
    with app.app_context():
        ids = list(db.session.scalars(select(Delivery.id).order_by(Delivery.id).limit(count)))
        db.session.commit()
        marks = _DatabaseMarks(db.engine, lambda: datetime.now(UTC))
        started = time.monotonic()
        for delivery_id in ids:
            marks.record(delivery_id)
        seconds = time.monotonic() - started
        marks.close()
        db.engine.dispose()
    return seconds * count / len(ids)


def postgres_rows(
    url: str, workdir: Path, port: int, readers: int, connections: int
) -> list[tuple[str, str, str, Any]]:
    """send-digest on PostgreSQL: one process, then --workers 2; the 250 marks' cost."""
    rows: list[tuple[str, str, str, Any]] = []
    runs = [("one sender process", ()), ("--workers 2", ("--workers", "2"))]
    try:
        for n, (label, extra) in enumerate(runs):
            env = prepare(
                workdir / f"pg{n}", port, readers, postgres_schema(url, "newsletter_bench")
            )
            run = run_send_digest(env, connections, *extra)
            rows.append(
                (
                    f"PostgreSQL: send-digest, {readers:,} readers, {label}, "
                    f"{connections} connections each (whole command "
                    f"{run.wall_seconds:.1f}s)",
                    f"{run.sent / run.send_seconds:,.0f} msg/s",
                    "",
                    "",
                )
            )
        marks = postgres_marks(env, min(readers, 10_000))
        rows.append(
            (
                "PostgreSQL: 250 marks per 100,000, one autocommit UPDATE each "
                "(synchronous_commit off), one connection",
                f"{marks * 100_000 / min(readers, 10_000):.1f} s",
                "",
                "",
            )
        )
    finally:
        postgres_schema(url, "newsletter_bench", drop=True)
    return rows


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({model}), {memory:.0f} GB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=100_000, help="readers for the memory run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--naive", type=int, default=300, help="readers in the naive sample")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also measure on this PostgreSQL database (in a schema of its own)",
    )
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))

    sink, port = start_smtp_sink()
    workdir = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    try:
        print(f"Machine: {machine()}", flush=True)
        small = prepare(workdir / "small", port, args.readers)
        big = prepare(workdir / "big", port, args.big)
        engine = run_send_digest(small, args.connections)
        message = sample_message(small)
        # Measured before and after the big run; the better figure is the bar to reach.
        bare = bare_smtplib_loop(port, message, args.readers, args.connections)
        engine_big = run_send_digest(big, args.connections)
        bare = max(bare, bare_smtplib_loop(port, message, args.readers, args.connections))
        naive = naive_loop(small, port, args.naive)
        plan_seconds, write_seconds = status_writes(big, args.big)
        postgres = (
            postgres_rows(args.postgres, workdir, port, args.readers, args.connections)
            if args.postgres
            else []
        )
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    rate = engine.sent / engine.send_seconds
    per_100k = 100_000 / args.big
    rows = [
        (
            f"send-digest, {args.readers:,} readers, {args.connections} connections "
            f"(sending phase; whole command {engine.wall_seconds:.1f}s)",
            f"{rate:,.0f} msg/s",
            "",
            "",
        ),
        (
            f"bare smtplib loop, same {len(message) / 1024:.0f} KB message, "
            f"{args.connections} reused connections",
            f"{bare:,.0f} msg/s",
            "",
            "",
        ),
        ("send-digest / bare loop", f"{rate / bare:.2f}", ">= 0.90", rate / bare >= 0.9),
        (
            f"naive loop (render+inline, connection and commit per reader), {args.naive} readers",
            f"{naive:,.1f} msg/s",
            "",
            "",
        ),
        ("send-digest / naive loop", f"{rate / naive:,.0f}x", ">= 50x", rate / naive >= 50),
        (
            f"peak RSS of send-digest, {args.readers:,} readers",
            f"{engine.peak_rss_mb:.0f} MB",
            "",
            "",
        ),
        (
            f"peak RSS of send-digest, {args.big:,} readers "
            f"({engine_big.sent / engine_big.send_seconds:,.0f} msg/s)",
            f"{engine_big.peak_rss_mb:.0f} MB",
            "<= 150 MB",
            engine_big.peak_rss_mb <= 150,
        ),
        (
            f"peak RSS ratio, {args.big:,} / {args.readers:,}",
            f"{engine_big.peak_rss_mb / engine.peak_rss_mb:.2f}",
            "<= 1.20",
            engine_big.peak_rss_mb / engine.peak_rss_mb <= 1.2,
        ),
        (
            "status writes per 100,000 (UPDATE ... WHERE id IN (500 ids), commit each)",
            f"{write_seconds * per_100k:.2f} s",
            "a few s",
            write_seconds * per_100k <= 5,
        ),
        (
            "planning per 100,000 (one INSERT ... SELECT)",
            f"{plan_seconds * per_100k:.2f} s",
            "",
            "",
        ),
        *postgres,
    ]
    print()
    print("| measure | result | target | met |")
    print("| --- | --- | --- | --- |")
    for measure, result, target, met in rows:
        mark = "" if met == "" else ("yes" if met else "**NO**")
        print(f"| {measure} | {result} | {target} | {mark} |")


if __name__ == "__main__":
    main()

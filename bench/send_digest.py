"""Benchmark of `newsletter send-digest` against a fair ceiling, on 127.0.0.1 with SQLite.

In one run, with the same message bytes (the project's own rendered digest with one reader's
parts) and the same number of connections, runs interleaved so the machine's load touches all
alike (``--runs`` of each, median and min-max):

1. the whole `newsletter send-digest --yes` command (a real subprocess: start-up, sync, render,
   plan, send) to ``--big`` readers, timed with ``time.perf_counter`` around the process;
2. a bare loop of smtplib's ``sendmail`` (per copy: its dot-stuffing regex, no pipelining);
3. a bare loop that pipelines as RFC 2920 allows: MAIL, RCPT and DATA in one write, the body
   dot-stuffed once before timing, nothing else in the loop;
4. the ratios of the medians: send-digest / pipelined loop (goal at least 0.5) and
   send-digest / smtplib loop (goal at least 1.0);
5. peak memory of the real command (its own process, from ``/usr/bin/time -v``; else by
   sampling VmHWM in /proc) at ``--big`` and at ``--readers`` readers (goal: the big one at
   most 1.05 times the small one, and at most 100 MB);
6. with ``--dkim``, send-digest to ``--readers`` readers DKIM-signed (rsa-sha256) against
   unsigned (goal at least 0.4);
7. `newsletter --help` and `--version` against `python -c pass` (bench/cli_startup.py; goal
   under 0.25 s).

The SMTP server is Postfix's smtp-sink, a C program that accepts and discards mail:

    apt-get install postfix        # gives /usr/sbin/smtp-sink; the mail server itself is not used

Without it the benchmark warns and falls back to an aiosmtpd sink (Python: much slower, so the
ratios then say little). From the project folder:

    .venv/bin/python bench/send_digest.py [--readers 10000] [--big 100000] [--connections 4]
        [--runs 3] [--dkim] [--postgres postgresql+psycopg://root@127.0.0.1:5432/test]

With ``--postgres URL`` it also sends the digest through PostgreSQL (in a schema of its own,
dropped afterwards): one sender process, and ``--workers 2``. Everything runs on 127.0.0.1 in a
temporary folder; nothing reaches the internet.
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
import statistics
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
sys.path.insert(0, str(HERE))

import cli_startup  # noqa: E402

SENDER = "hello@blog.example.com"
POSTS = 5  # posts in the digest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_smtp_sink() -> str | None:
    for candidate in (
        shutil.which("smtp-sink"),
        "/usr/sbin/smtp-sink",
        "/usr/lib/postfix/sbin/smtp-sink",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def wait_for_port(process: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    process.kill()
    sys.exit(f"{what} did not start")


AIOSMTPD_SINK = """
import sys, time
from aiosmtpd.controller import Controller
class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1])).start()
while True:
    time.sleep(3600)
"""


def start_smtp_sink() -> tuple[subprocess.Popen[bytes], int, str]:
    """Postfix's smtp-sink on 127.0.0.1 and a free port (it accepts every message and throws
    it away); without it, an aiosmtpd sink, with a warning. Returns (process, port, name)."""
    port = free_port()
    found = find_smtp_sink()
    if found is None:
        print(
            "WARNING: Postfix's smtp-sink not found (`apt-get install postfix` gives "
            "/usr/sbin/smtp-sink); falling back to an aiosmtpd sink, which is Python and far "
            "slower: the rates and ratios below are NOT comparable with smtp-sink figures.",
            file=sys.stderr,
            flush=True,
        )
        process = subprocess.Popen([sys.executable, "-c", AIOSMTPD_SINK, str(port)])
        wait_for_port(process, port, "the aiosmtpd sink")
        return process, port, "aiosmtpd sink (fallback)"
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root without
    process = subprocess.Popen(
        [found, *user, f"127.0.0.1:{port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(process, port, "smtp-sink")
    return process, port, f"Postfix smtp-sink ({found})"


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
        sync_posts(db.session(), get_services(app), backfill=POSTS)  # all five are new
        db.session.remove()
        db.engine.dispose()
    return env


def seeded_copy(
    seed: Path, target: Path, port: int, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """A fresh copy of a prepared folder (database and posts), and its settings."""
    shutil.copytree(seed, target)
    return {**settings(target, port), **(extra or {})}


@dataclass
class CommandRun:
    sent: int
    wall_seconds: float  # the whole command, perf_counter around the process
    peak_rss_mb: float  # of the command's own process (and its children), not the benchmark's

    @property
    def rate(self) -> float:
        return self.sent / self.wall_seconds


def newsletter_argv() -> list[str]:
    script = Path(sys.executable).with_name("newsletter")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from newsletter.cli import main; main()"]


TIME_V = Path("/usr/bin/time")


def _tree_hwm_kb(pid: int) -> int:
    """VmHWM (peak resident set) of ``pid`` plus that of its children, in kB; 0 once gone."""
    total = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _tree_hwm_kb(int(child))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return total


def run_send_digest(env: dict[str, str], connections: int, *extra: str) -> CommandRun:
    """`newsletter send-digest --yes` as a real subprocess, timed with perf_counter around it.

    Peak memory comes from ``/usr/bin/time -v`` (the rusage of the command's own process,
    whose parent is the small `time` program); without it, from sampling VmHWM in /proc.
    Never from wait4() in this process: a forked child's figure includes what it inherited
    from the benchmark."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environment.update(env)
    argv = [*newsletter_argv(), "send-digest", "--yes", "--connections", str(connections), *extra]
    use_time = TIME_V.exists()
    if use_time:
        argv = [str(TIME_V), "-v", *argv]
    peak_kb = 0
    started = time.perf_counter()
    child = subprocess.Popen(
        argv,
        env=environment,
        cwd=Path(env["NEWSLETTER_INSTANCE_PATH"]).parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not use_time:
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_kb
            while not done.wait(0.02):
                peak_kb = max(peak_kb, _tree_hwm_kb(child.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    out, err = child.communicate()
    wall = time.perf_counter() - started
    if not use_time:
        done.set()
        sampler.join()
    if child.returncode != 0:
        sys.exit(f"send-digest failed ({child.returncode}):\n{out}\n{err}")
    if use_time:
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
        if not found:
            sys.exit(f"unexpected /usr/bin/time output:\n{err}")
        peak_kb = int(found.group(1))
    match = re.search(r"sent ([\d,]+),", out)
    if not match:
        sys.exit(f"unexpected send-digest output:\n{out}")
    return CommandRun(int(match.group(1).replace(",", "")), wall, peak_kb / 1024)


def sample_message(env: dict[str, str]) -> bytes:
    """One reader's copy of the digest just sent, as bytes (for the bare loops)."""
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


def _threads(connections: int, count: int, push: Any) -> float:
    """Messages per second of ``push(share, offset)`` on ``connections`` threads."""
    share = count // connections
    ready = threading.Barrier(connections + 1)
    threads = [
        threading.Thread(target=push, args=(share, n * share, ready)) for n in range(connections)
    ]
    for thread in threads:
        thread.start()
    ready.wait()  # every connection open: time the messages, not the handshakes
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return share * connections / (time.perf_counter() - started)


def smtplib_loop(port: int, message: bytes, count: int, connections: int) -> float:
    """Messages per second of smtplib's ``sendmail`` pushing one message over reused
    connections (it dot-stuffs each copy with a regex and does not pipeline)."""

    def push(share: int, offset: int, ready: threading.Barrier) -> None:
        smtp = smtplib.SMTP("127.0.0.1", port)
        smtp.ehlo()
        ready.wait()
        for n in range(share):
            smtp.sendmail(SENDER, [f"reader{offset + n}@example.com"], message)
        smtp.quit()

    return _threads(connections, count, push)


def _reply(stream: Any) -> int:
    """Read one (possibly multi-line) SMTP reply; return its code."""
    while True:
        line = stream.readline()
        if not line:
            raise ConnectionError("the sink closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


def pipelined_loop(port: int, message: bytes, count: int, connections: int) -> float:
    """Messages per second of the fair ceiling: MAIL, RCPT and DATA written together (RFC
    2920), the body dot-stuffed once before timing, nothing else in the loop."""
    from newsletter.smtp import dot_stuff

    body = dot_stuff(message, at_line_start=True)
    body += b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"
    mail = b"MAIL FROM:<%s>%s\r\n" % (
        SENDER.encode(),
        b"" if message.isascii() else b" BODY=8BITMIME",
    )

    def push(share: int, offset: int, ready: threading.Barrier) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            stream = sock.makefile("rb")
            _reply(stream)
            sock.sendall(b"EHLO bench.example.com\r\n")
            _reply(stream)
            ready.wait()
            for n in range(offset, offset + share):
                sock.sendall(mail + b"RCPT TO:<reader%d@example.com>\r\nDATA\r\n" % n)
                codes = (_reply(stream), _reply(stream), _reply(stream))
                if codes != (250, 250, 354):
                    raise RuntimeError(f"unexpected replies {codes}")
                sock.sendall(body)
                if _reply(stream) != 250:
                    raise RuntimeError("message refused")
            sock.sendall(b"QUIT\r\n")
            _reply(stream)

    return _threads(connections, count, push)


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
                    f"{run.rate:,.0f} msg/s (whole command)",
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


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def spread(values: list[float], unit: str = "", fmt: str = ",.0f") -> str:
    """median (min–max) of at least one value."""
    med = statistics.median(values)
    return f"{med:{fmt}}{unit} ({min(values):{fmt}}–{max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=10_000, help="readers for the small run")
    parser.add_argument("--big", type=int, default=100_000, help="readers for the goal run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument(
        "--dkim", action="store_true", help="also send DKIM-signed to --readers readers"
    )
    parser.add_argument("--cli-runs", type=int, default=10, help="runs of each start-up timing")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also measure on this PostgreSQL database (in a schema of its own)",
    )
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))

    sink, port, sink_name = start_smtp_sink()
    workdir = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    keys: dict[str, str] = {}
    results: dict[str, list[Any]] = {
        "project": [],
        "small": [],
        "smtplib": [],
        "pipelined": [],
        "signed": [],
    }
    try:
        print(f"Machine: {machine()}", flush=True)
        print(f"SMTP server: {sink_name}; load average at start: {load()}", flush=True)
        small_seed, big_seed = workdir / "seed-small", workdir / "seed-big"
        prepare(small_seed, port, args.readers)
        prepare(big_seed, port, args.big)
        if args.dkim:
            sys.path.insert(0, str(HERE))
            from dkim_sign import make_keys

            keys = make_keys(workdir)
        # A warm-up run (not counted): file cache, and the campaign the sample comes from.
        warm = seeded_copy(small_seed, workdir / "warm-up", port)
        run_send_digest(warm, args.connections)
        message = sample_message(warm)
        count = args.big
        for n in range(args.runs):
            print(f"run {n + 1} of {args.runs} (load {load()})", flush=True)
            results["smtplib"].append(smtplib_loop(port, message, count, args.connections))
            results["pipelined"].append(pipelined_loop(port, message, count, args.connections))
            target = workdir / f"big-{n}"
            results["project"].append(
                run_send_digest(seeded_copy(big_seed, target, port), args.connections)
            )
            shutil.rmtree(target)
            target = workdir / f"small-{n}"
            results["small"].append(
                run_send_digest(seeded_copy(small_seed, target, port), args.connections)
            )
            shutil.rmtree(target)
            if args.dkim:
                target = workdir / f"signed-{n}"
                results["signed"].append(
                    run_send_digest(seeded_copy(small_seed, target, port, keys), args.connections)
                )
                shutil.rmtree(target)
        print(f"load average at the end: {load()}", flush=True)
        startup = cli_startup.measure(args.cli_runs)
        postgres = (
            postgres_rows(args.postgres, workdir, port, args.readers, args.connections)
            if args.postgres
            else []
        )
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    project = [r.rate for r in results["project"]]
    for run in results["project"] + results["small"] + results["signed"]:
        assert run.sent in (args.big, args.readers), run
    smtplib_rates, pipelined = results["smtplib"], results["pipelined"]
    med = statistics.median
    big_peak = [r.peak_rss_mb for r in results["project"]]
    small_peak = [r.peak_rss_mb for r in results["small"]]
    n = args.runs
    c = args.connections
    rows: list[tuple[str, str, str, Any]] = [
        (
            f"`send-digest`, whole command, {args.big:,} readers, {c} connections ({n} runs)",
            spread(project, " msg/s"),
            "",
            "",
        ),
        (
            f"pipelined bare loop, same {len(message) / 1024:.0f} KB message, {c} connections",
            spread(pipelined, " msg/s"),
            "",
            "",
        ),
        (
            f"smtplib `sendmail` bare loop, same message, {c} connections",
            spread(smtplib_rates, " msg/s"),
            "",
            "",
        ),
        (
            "send-digest / pipelined loop (medians)",
            f"{med(project) / med(pipelined):.2f}",
            ">= 0.50",
            med(project) / med(pipelined) >= 0.5,
        ),
        (
            "send-digest / smtplib loop (medians)",
            f"{med(project) / med(smtplib_rates):.2f}",
            ">= 1.00",
            med(project) / med(smtplib_rates) >= 1.0,
        ),
        (
            f"peak RSS of the command, {args.big:,} readers",
            spread(big_peak, " MB", ".1f"),
            "<= 100 MB",
            med(big_peak) <= 100,
        ),
        (
            f"peak RSS of the command, {args.readers:,} readers",
            spread(small_peak, " MB", ".1f"),
            "",
            "",
        ),
        (
            f"peak RSS ratio, {args.big:,} / {args.readers:,} (medians)",
            f"{med(big_peak) / med(small_peak):.3f}",
            "<= 1.05",
            med(big_peak) / med(small_peak) <= 1.05,
        ),
    ]
    small_rates = [r.rate for r in results["small"]]
    if args.dkim:
        signed = [r.rate for r in results["signed"]]
        rows += [
            (
                f"`send-digest`, whole command, {args.readers:,} readers, unsigned",
                spread(small_rates, " msg/s"),
                "",
                "",
            ),
            ("the same, DKIM-signed (rsa-sha256, 2048 bits)", spread(signed, " msg/s"), "", ""),
            (
                "signed / unsigned (medians)",
                f"{med(signed) / med(small_rates):.2f}",
                ">= 0.40",
                med(signed) / med(small_rates) >= 0.4,
            ),
        ]
    rows += cli_startup.rows(startup)
    rows += postgres
    print()
    print("| measure | median (min–max) | target | met |")
    print("| --- | --- | --- | --- |")
    for measure, result, goal, met in rows:
        mark = met if isinstance(met, str) else ("yes" if met else "**NO**")
        print(f"| {measure} | {result} | {goal} | {mark} |")


if __name__ == "__main__":
    main()

"""Load test of POST /subscribe under gunicorn on 127.0.0.1, on SQLite and on PostgreSQL.

Prints requests per second, median and 99th-percentile latency and errors, then checks by
counting rows that every accepted request left exactly one reader, its consent event and its
queued confirmation email. Needs `wrk` (Debian: apt-get install wrk) and gunicorn
(pip install '.[server]'); mail goes to Postfix's smtp-sink when installed (apt-get install
postfix), else to the project's own mail catcher.

    python bench/subscribe_load.py [--duration 20] [--connections 32] [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sqlalchemy import create_engine, text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POSTGRES_URL = os.environ.get(
    "NEWSLETTER_BENCH_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_mail_sink(workdir: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    """Postfix's smtp-sink if present (fast, discards), else our aiosmtpd mail catcher."""
    port = free_port()
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if Path(sink).exists():
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        process = subprocess.Popen(
            [sink, *user, "-8", f"127.0.0.1:{port}", "512"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        kind = "smtp-sink"
    else:
        code = (
            "import sys,time; from pathlib import Path; from newsletter.mailcatcher import "
            "MailCatcher; MailCatcher(Path(sys.argv[1]), port=int(sys.argv[2])).start(); "
            "time.sleep(10**6)"
        )
        process = subprocess.Popen([sys.executable, "-c", code, str(workdir / "mail"), str(port)])
        kind = "aiosmtpd catcher"
    wait_for_port(port)
    return process, port, kind


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.1)


def prepare_database(kind: str, workdir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'load.sqlite'}"
    engine = create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.execute(text('DROP SCHEMA IF EXISTS "bench_load" CASCADE'))
        connection.execute(text('CREATE SCHEMA "bench_load"'))
    engine.dispose()
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3Dbench_load"


def count_rows(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as connection:
        counts = {
            "readers": connection.scalar(text("SELECT count(*) FROM subscribers")),
            "requested events": connection.scalar(
                text("SELECT count(*) FROM consent_events WHERE kind = 'requested'")
            ),
            "confirmation emails": connection.scalar(
                text("SELECT count(*) FROM outbox WHERE kind = 'confirmation'")
            ),
            "readers without exactly one event": connection.scalar(
                text(
                    "SELECT count(*) FROM subscribers s WHERE "
                    "(SELECT count(*) FROM consent_events e"
                    " WHERE e.subscriber_id = s.id AND e.kind = 'requested') <> 1"
                )
            ),
            "readers without exactly one email": connection.scalar(
                text(
                    "SELECT count(*) FROM subscribers s WHERE (SELECT count(*) FROM outbox o"
                    " WHERE o.subscriber_id = s.id AND o.kind = 'confirmation') <> 1"
                )
            ),
        }
    engine.dispose()
    return {k: int(v or 0) for k, v in counts.items()}


def parse_wrk(output: str) -> dict[str, float]:
    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = sum(int(x) for x in socket_errors.groups()) if socket_errors else 0
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50": latency("50"),
        "p99": latency("99"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors,
    }


def run(kind: str, args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix=f"load-{kind}-"))
    sink, sink_port, sink_kind = start_mail_sink(workdir)
    url = prepare_database(kind, workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(
        {
            "NEWSLETTER_SECRET_KEY": "benchmark-secret-not-for-production-use",
            "NEWSLETTER_DATABASE_URL": url,
            "NEWSLETTER_INSTANCE_PATH": str(workdir / "instance"),
            "NEWSLETTER_SMTP_HOST": "127.0.0.1",
            "NEWSLETTER_SMTP_PORT": str(sink_port),
            "NEWSLETTER_PROXY_COUNT": "1",
            "NEWSLETTER_PUBLIC_URL": "http://127.0.0.1",
            "NEWSLETTER_SITE_NAME": "Calm Corner",
            "NEWSLETTER_MAIL_FROM": "hello@example.com",
        }
    )
    env.update(dict(item.split("=", 1) for item in args.env))
    newsletter = [sys.executable, "-c", "from newsletter.cli import main; main()"]
    subprocess.run([*newsletter, "init-db"], env=env, cwd=workdir, check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(args.workers),
            "--worker-class",
            args.worker_class,
            "--threads",
            str(args.threads),
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(ROOT),
            "--log-level",
            "warning",
            "app:app",
        ],
        env=env,
        cwd=workdir,
    )
    try:
        wait_for_port(port)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read()
        result = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "--latency",
                "-s",
                str(HERE / "subscribe.lua"),
                f"http://127.0.0.1:{port}/subscribe",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        sink.terminate()
        sink.wait(timeout=10)
    figures: dict[str, object] = dict(parse_wrk(result.stdout))
    figures["accepted"] = int(figures["requests"]) - int(figures["non_2xx"])  # type: ignore[call-overload]
    figures["rows"] = count_rows(url)
    figures["sink"] = sink_kind
    if args.verbose:
        print(result.stdout)
    shutil.rmtree(workdir, ignore_errors=True)
    return figures


def postgres_reachable() -> bool:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per database")
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn worker processes (one per core here)"
    )
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NEWSLETTER_X=VALUE",
        help="an extra setting for the server (repeatable)",
    )
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    kinds = [args.only] if args.only else ["sqlite", "postgresql"]
    rows = []
    for kind in kinds:
        if kind == "postgresql" and not postgres_reachable():
            print(f"PostgreSQL not reachable at {POSTGRES_URL}; skipped")
            continue
        figures = run(kind, args)
        rows.append((kind, figures))
    print(
        f"\nPOST /subscribe, gunicorn --workers {args.workers}, wrk -t2 -c{args.connections} "
        f"-d{args.duration}s, {os.cpu_count()} cores"
    )
    print(
        "| database | requests/s | median ms | p99 ms | errors | accepted | readers | "
        "events | emails | rows check |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = False
    for kind, f in rows:
        counts = f["rows"]  # type: ignore[index]
        errors = int(f["non_2xx"]) + int(f["socket_errors"])  # type: ignore[call-overload]
        # wrk stops counting at the deadline; requests still in flight then (at most one per
        # connection) are served and stored but not counted as accepted.
        in_flight = counts["readers"] - int(f["accepted"])  # type: ignore[index, call-overload]
        ok = (
            counts["readers"] == counts["requested events"] == counts["confirmation emails"]  # type: ignore[index]
            and 0 <= in_flight <= args.connections
            and counts["readers without exactly one event"] == 0  # type: ignore[index]
            and counts["readers without exactly one email"] == 0
        )  # type: ignore[index]
        failed |= not ok
        print(
            f"| {kind} | {f['rps']:.0f} | {f['p50']:.1f} | {f['p99']:.1f} | {errors} | "
            f"{f['accepted']} | {counts['readers']} | {counts['requested events']} | "  # type: ignore[index]
            f"{counts['confirmation emails']} | {'ok' if ok else 'MISMATCH'} |"
        )  # type: ignore[index]
    print(f"(mail went to {rows[0][1]['sink'] if rows else '-'})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

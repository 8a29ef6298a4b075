"""Benchmark: import a generated CSV of readers into a fresh SQLite database.

    python bench/import_readers.py                # 10,000 and 100,000 rows, one process each
    python bench/import_readers.py --rows 250000  # one size

Prints, per size, the import's wall time and the process's peak resident memory (ru_maxrss),
before and after the import: with streaming and batched bulk statements the peak should not
grow with the file. Each size runs in a child process so each peak is its own.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFAULT_SIZES = (10_000, 100_000)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_csv(path: Path, rows: int) -> None:
    """A realistic list, written row by row: names, dates, sources, a few duplicates and bad
    addresses (one in a thousand each)."""
    start = datetime(2019, 1, 1, tzinfo=UTC)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "subscribed_at", "source"])
        for i in range(rows):
            if i % 1000 == 999:
                email = f"broken-address-{i}"
            elif i % 1000 == 998:
                email = f"Reader.{i - 500}@Example{(i - 500) % 97}.com"  # a duplicate
            else:
                email = f"Reader.{i}@Example{i % 97}.com"
            when = start + timedelta(minutes=(37 * i) % (6 * 365 * 24 * 60))
            writer.writerow(
                [
                    email,
                    f"Reader {i}" if i % 3 else "",
                    when.date().isoformat(),
                    f"https://blog.example.com/posts/{i % 250}",
                ]
            )


def run_one(rows: int) -> None:
    """Import ``rows`` generated rows in this process and print the figures."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        os.environ["NEWSLETTER_INSTANCE_PATH"] = str(work / "instance")
        os.chdir(work)
        csv_path = work / "readers.csv"
        write_csv(csv_path, rows)

        from newsletter import create_app
        from newsletter.appctx import get_services
        from newsletter.db import db, upgrade_schema
        from newsletter.reader_import import import_readers

        app = create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "bench",
                "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite'}",
                "OUTBOX_SEND_AFTER_REQUEST": False,
            }
        )
        upgrade_schema(app)
        with app.app_context():
            before = peak_rss_mib()
            started = time.perf_counter()
            report = import_readers(
                db.session,
                get_services(app),
                csv_path,
                consent_note="benchmark list",
                skip_invalid=True,
            )
            elapsed = time.perf_counter() - started
            after = peak_rss_mib()
            db.session.remove()
            db.engine.dispose()
        size = csv_path.stat().st_size / 2**20
        print(
            f"{rows:>9,} rows ({size:5.1f} MiB CSV): {elapsed:6.2f} s, "
            f"{rows / elapsed:9,.0f} rows/s; peak RSS {before:6.1f} MiB before, "
            f"{after:6.1f} MiB after (+{after - before:.1f}); added {report.added:,}, "
            f"duplicates {report.duplicates.count:,}, invalid {report.invalid.count:,}",
            flush=True,
        )


def main() -> None:
    """Run each size in a child process of its own."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        action="append",
        help="rows to import (repeatable; default 10,000 and 100,000)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.rows[0])
        return
    for rows in args.rows or DEFAULT_SIZES:
        subprocess.run([sys.executable, __file__, "--child", "--rows", str(rows)], check=True)


if __name__ == "__main__":
    main()

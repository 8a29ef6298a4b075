"""Benchmark: the dashboard's pages at 100,000 readers, through the Flask test client.

    python bench/admin_pages.py                 # 100,000 readers, 30 requests per page
    python bench/admin_pages.py --readers 20000 --runs 50

Creates a SQLite file with the readers (each with a consent event), a few campaigns with
one delivery per reader, signs in as the author, then times each page and prints a table of
the median and the 95th percentile in milliseconds. The issue's target: under 200 ms each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select  # noqa: E402

PAGES = [
    "/admin/",
    "/admin/readers",
    "/admin/readers?q=reader4242",
    "/admin/readers?q=Reader+99",
    "/admin/readers?status=unsubscribed",
    "/admin/readers?before=50000",
    "/admin/readers/54321",
    "/admin/digest",
    "/admin/campaigns",
    "/admin/campaigns/1",
    "/admin/settings",
]


def populate(app: object, readers: int) -> None:
    """Readers (9 in 10 confirmed), one consent event each, three campaigns to all."""
    from newsletter.db import db
    from newsletter.models import Campaign, ConsentEvent, Delivery, Subscriber

    start = datetime(2026, 1, 1, tzinfo=UTC)
    with app.app_context():  # type: ignore[attr-defined]
        session = db.session()
        batch = 10_000
        for first in range(1, readers + 1, batch):
            rows = []
            for n in range(first, min(first + batch, readers + 1)):
                when = start + timedelta(minutes=n * 3)
                rows.append(
                    {
                        "email": f"reader{n}@example.com",
                        "name": f"Reader {n}",
                        "status": "unsubscribed" if n % 10 == 0 else "confirmed",
                        "token_generation": 0,
                        "created_at": when,
                        "updated_at": when,
                        "confirmed_at": when,
                    }
                )
            session.execute(insert(Subscriber), rows)
            session.execute(
                insert(ConsentEvent),
                [
                    {
                        "subscriber_id": n,
                        "kind": "confirmed",
                        "occurred_at": start + timedelta(minutes=n * 3),
                        "method": "form",
                    }
                    for n in range(first, min(first + batch, readers + 1))
                ],
            )
        for number in range(1, 4):
            campaign = Campaign(
                kind="announcement",
                subject=f"Announcement {number}",
                content_hash=f"{number:064d}",
                status="sent",
                created_at=start + timedelta(days=number),
                html="<p>hi</p>",
                text="hi",
            )
            session.add(campaign)
            session.flush()
            ids = list(session.scalars(select(Subscriber.id)))
            for first in range(0, len(ids), batch):
                session.execute(
                    insert(Delivery),
                    [
                        {"campaign_id": campaign.id, "subscriber_id": i, "status": "sent"}
                        for i in ids[first : first + batch]
                    ],
                )
        session.commit()
        db.session.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    from newsletter import create_app
    from newsletter.admin_auth import create_user
    from newsletter.appctx import get_services
    from newsletter.db import db, upgrade_schema

    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "bench.sqlite"
        app = create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "bench-secret-key-long-enough-for-production-checks",
                "DATABASE_URL": f"sqlite:///{database}",
                "OUTBOX_SEND_AFTER_REQUEST": False,
            }
        )
        upgrade_schema(app)
        began = time.perf_counter()
        populate(app, args.readers)
        print(f"{args.readers:,} readers created in {time.perf_counter() - began:.1f} s")
        with app.app_context():
            create_user(
                db.session(),
                "author@example.com",
                "a long bench password",
                now=get_services(app).clock(),
            )
            db.session.remove()
        client = app.test_client()
        page = client.get("/admin/login").text
        token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        response = client.post(
            "/admin/login",
            data={
                "email": "author@example.com",
                "password": "a long bench password",
                "csrf_token": token,
            },
        )
        assert response.status_code == 303, response.text
        print(f"{'page':<40} {'median ms':>10} {'p95 ms':>10}")
        for path in PAGES:
            times = []
            for _ in range(args.runs):
                began = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, (path, response.status_code)
            times.sort()
            p95 = times[max(0, int(len(times) * 0.95) - 1)]
            print(f"{path:<40} {statistics.median(times):>10.1f} {p95:>10.1f}")


if __name__ == "__main__":
    main()

"""Benchmark of DKIM signing on the project's own digest message (five posts, about 21 KB).

Prints, for each way of building a reader's copy ready for SMTP, the time per message and
messages per second (median and min-max of ``--runs`` runs):

1. unsigned: ``MessageTemplate.personalise_for_smtp`` (the baseline);
2. dkimpy (the old way): the unsigned copy signed by ``dkim.sign`` (pure-Python RSA, key parsed
   and body canonicalised per message), then dot-stuffed;
3. the new signer without the per-campaign body state: ``DkimSigner.sign`` canonicalises and
   hashes the whole copy, RSA by OpenSSL;
4. the new signer as the sender uses it: the template's precomputed body hash state, only the
   reader's parts canonicalised, then RSA by OpenSSL;
5. the same with the additional Ed25519 signature;

and the ratio of unsigned to signed cost per message (how much of the unsigned building speed
signing keeps). With ``--send`` (needs Postfix's smtp-sink, see bench/send_digest.py) it also
runs `send-digest` to ``--readers`` readers with and without DKIM in the same run and prints
the ratio of the signed to the unsigned sending rate.

    .venv/bin/python bench/dkim_sign.py [--messages 2000] [--runs 5] [--send --readers 10000]

dkimpy (a test dependency) must be installed for line 2: `pip install -e '.[test]'`.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import send_digest as bench  # noqa: E402  (the digest, the database and smtp-sink helpers)


def make_keys(folder: Path) -> dict[str, str]:
    """A 2048-bit RSA key and an Ed25519 key in PEM files; the DKIM settings naming them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    pem = (
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (folder / "dkim.pem").write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(*pem)
    )
    (folder / "dkim-ed25519.pem").write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(*pem)
    )
    return {
        "NEWSLETTER_DKIM_DOMAIN": "blog.example.com",
        "NEWSLETTER_DKIM_SELECTOR": "news2026",
        "NEWSLETTER_DKIM_PRIVATE_KEY": str(folder / "dkim.pem"),
    }


def ed25519_settings(folder: Path) -> dict[str, str]:
    return {
        "NEWSLETTER_DKIM_ED25519_SELECTOR": "ed2026",
        "NEWSLETTER_DKIM_ED25519_PRIVATE_KEY": str(folder / "dkim-ed25519.pem"),
    }


def timed(build: Callable[[int], bytes], count: int) -> float:
    """Seconds per message of ``build(n)`` over ``count`` readers."""
    started = time.perf_counter()
    for n in range(count):
        build(n)
    return (time.perf_counter() - started) / count


def row(name: str, seconds: list[float]) -> str:
    median = statistics.median(seconds)
    return (
        f"| {name} | {median * 1e6:,.0f} µs ({min(seconds) * 1e6:,.0f}–"
        f"{max(seconds) * 1e6:,.0f}) | {1 / median:,.0f} msg/s "
        f"({1 / max(seconds):,.0f}–{1 / min(seconds):,.0f}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="readers per timing")
    parser.add_argument(
        "--dkimpy-messages", type=int, default=200, help="readers per dkimpy timing (it is slow)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--send",
        action="store_true",
        help="also time send-digest with and without DKIM through smtp-sink",
    )
    parser.add_argument("--readers", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()

    import dkim as dkimpy

    from newsletter.appctx import get_services
    from newsletter.db import db
    from newsletter.digest import render_digest, select_digest_posts
    from newsletter.dkim import DKIM_HEADERS
    from newsletter.sending import ReaderFactory, campaign_template
    from newsletter.smtp import dot_stuff

    with tempfile.TemporaryDirectory(prefix="newsletter-dkim-bench-") as tmp:
        workdir = Path(tmp)
        env = bench.prepare(workdir / "db", port=25, readers=1)
        keys = make_keys(workdir)
        app = bench.make_app(env)
        with app.app_context():
            services = get_services(app)
            rendered = render_digest(select_digest_posts(db.session(), services), services)
            now = datetime.now(UTC)
            unsigned = campaign_template(services, rendered, now)
            app.config.update({k.removeprefix("NEWSLETTER_"): v for k, v in keys.items()})
            signed = campaign_template(services, rendered, now)
            app.config.update(
                {k.removeprefix("NEWSLETTER_"): v for k, v in ed25519_settings(workdir).items()}
            )
            doubly = campaign_template(services, rendered, now)
            factory = ReaderFactory(services, 1, "0123456789abcdef")
            readers = [
                factory(n, f"reader{n}@example.com", f"Reader {n}" if n % 3 else None)
                for n in range(args.messages)
            ]
            db.engine.dispose()
        private = Path(keys["NEWSLETTER_DKIM_PRIVATE_KEY"]).read_bytes()
        sample = unsigned.personalise(readers[1])
        names = [h.encode() for h in DKIM_HEADERS]

        def old(n: int) -> bytes:
            data = unsigned.personalise(readers[n])
            return dot_stuff(
                dkimpy.sign(
                    data,
                    b"news2026",
                    b"blog.example.com",
                    private,
                    include_headers=names,
                    canonicalize=(b"relaxed", b"relaxed"),
                )
                + data,
                at_line_start=True,
            )

        # The same template with the per-campaign body state taken away: each copy's whole
        # body is canonicalised and hashed (the path a reader with unsafe joins takes).
        whole_body = copy.copy(signed)
        whole_body._signing = dict.fromkeys(signed._signing)

        def whole(n: int) -> bytes:
            return whole_body.personalise_for_smtp(readers[n])

        ways: list[tuple[str, Callable[[int], bytes], int]] = [
            (
                "unsigned (personalise_for_smtp)",
                lambda n: unsigned.personalise_for_smtp(readers[n]),
                args.messages,
            ),
            ("dkimpy, rsa-sha256 (before)", old, args.dkimpy_messages),
            ("new signer, whole body canonicalised per reader", whole, args.messages),
            (
                "new signer, body state precomputed per campaign",
                lambda n: signed.personalise_for_smtp(readers[n]),
                args.messages,
            ),
            (
                "the same plus the Ed25519 signature",
                lambda n: doubly.personalise_for_smtp(readers[n]),
                args.messages,
            ),
        ]
        results: dict[str, list[float]] = {name: [] for name, _, _ in ways}
        for _ in range(args.runs):
            for name, build, count in ways:
                results[name].append(timed(build, count))

        print(
            f"Python {platform.python_version()}, {os.cpu_count()} cores, "
            f"message {len(sample):,} octets, {args.runs} runs of {args.messages:,} readers "
            f"({args.dkimpy_messages:,} for dkimpy), RSA 2048 bits"
        )
        print(
            "\n| building one reader's copy for SMTP | per message, median (min–max) "
            "| messages/s, median (range) |\n| --- | --- | --- |"
        )
        for name, _, _ in ways:
            print(row(name, results[name]))
        base = statistics.median(results[ways[0][0]])
        print(
            "\n| signed way | unsigned / signed cost per message | speed-up over dkimpy |"
            "\n| --- | --- | --- |"
        )
        old_cost = statistics.median(results[ways[1][0]])
        for name, _, _ in ways[1:]:
            cost = statistics.median(results[name])
            print(f"| {name} | {base / cost:.3f} | {old_cost / cost:.1f}x |")

        if args.send:
            send(workdir, keys, args.readers, args.connections, args.runs)


def send(workdir: Path, keys: dict[str, str], readers: int, connections: int, runs: int) -> None:
    """send-digest to ``readers`` readers through smtp-sink, unsigned and signed in turn."""
    sink, port, _ = bench.start_smtp_sink()
    try:
        rates: dict[str, list[float]] = {
            "unsigned": [],
            "DKIM rsa-sha256": [],
            "DKIM rsa-sha256 + ed25519-sha256": [],
        }
        extra = {
            "unsigned": {},
            "DKIM rsa-sha256": keys,
            "DKIM rsa-sha256 + ed25519-sha256": {**keys, **ed25519_settings(workdir)},
        }
        for run in range(runs):
            for name in rates:
                env = bench.prepare(
                    workdir / f"send-{run}-{len(rates[name])}-{hash(name)}", port, readers
                )
                result = bench.run_send_digest({**env, **extra[name]}, connections)
                rates[name].append(result.rate)
        print(
            f"\nsend-digest to {readers:,} readers, {connections} connections, smtp-sink, "
            f"{runs} runs each, interleaved:\n\n| send-digest | messages/s, median "
            "(min–max) | signed / unsigned |\n| --- | --- | --- |"
        )
        base = statistics.median(rates["unsigned"])
        for name, values in rates.items():
            median = statistics.median(values)
            print(
                f"| {name} | {median:,.0f} ({min(values):,.0f}–{max(values):,.0f}) "
                f"| {median / base:.2f} |"
            )
    finally:
        sink.kill()
        sink.wait()


if __name__ == "__main__":
    main()

"""Render the digest of the site-builder sample feed and screenshot it in headless Chromium.

    python docs/make_screenshots.py            # writes docs/digest-*.png

The digest is the one `newsletter preview-digest --note` writes for
tests/fixtures/feeds/site_builder.xml (a YouTube, a youtu.be, a Vimeo and an unknown embed,
images with and without width, a javascript: link) in full style with a personal note, and
in summary style. Nothing leaves the machine: every image request is answered with a plain
picture made here (the feed's images live on made-up hosts), and Chromium runs with the
network features off. Needs the test extra (Playwright) and Debian's chromium.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FEED = ROOT / "tests" / "fixtures" / "feeds" / "site_builder.xml"
OUT = ROOT / "docs"
CHROMIUM = os.environ.get("NEWSLETTER_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
NOTE = (
    "Dear friends,\n\nThis week brought two practices I return to when the days get short. "
    "Take whichever one you need. **Thank you** for every letter you sent.\n"
)
# (file name, viewport width, colour scheme, digest style)
SHOTS = [
    ("digest-600-light.png", 600, "light", "full"),
    ("digest-600-dark.png", 600, "dark", "full"),
    ("digest-375-light.png", 375, "light", "full"),
    ("digest-375-dark.png", 375, "dark", "full"),
    ("digest-summary-600-light.png", 600, "light", "summary"),
]
# Sizes of the sample pictures (the feed's own width for the 400 px one).
PICTURES = {
    "hqdefault.jpg": (480, 360, (38, 38, 46), (90, 70, 110)),
    "stones.jpg": (400, 260, (196, 186, 170), (120, 112, 100)),
    "window.jpg": (800, 500, (236, 222, 196), (170, 150, 120)),
    "cup.jpg": (800, 450, (214, 190, 160), (140, 100, 80)),
    "shoulders.jpg": (1200, 630, (206, 214, 200), (110, 130, 120)),
}


def png(width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> bytes:
    """A vertical two-colour gradient as PNG bytes (no imaging library needed)."""
    rows = []
    for y in range(height):
        t = y / max(1, height - 1)
        colour = bytes(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        rows.append(b"\x00" + colour * width)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def render_previews(folder: Path) -> dict[str, Path]:
    """The digest in each style, as `preview-digest --note` writes it; {style: html path}."""
    os.environ["NEWSLETTER_INSTANCE_PATH"] = str(folder / "instance")
    sys.path.insert(0, str(ROOT))
    from newsletter import create_app

    note = folder / "note.md"
    note.write_text(NOTE, encoding="utf-8")
    paths = {}
    for style in ("full", "summary"):
        app = create_app(
            {
                "TESTING": True,
                "DATABASE_URL": f"sqlite:///{folder / f'{style}.sqlite'}",
                "SITE_NAME": "Calm Corner",
                "SITE_URL": "https://blog.example.com",
                "PUBLIC_URL": "https://news.blog.example.com",
                "MAIL_FROM": "hello@blog.example.com",
                "PRIVACY_POLICY_URL": "https://blog.example.com/privacy",
                "POSTAL_ADDRESS": "12 Willow Lane, Springfield",
                "FEED_URL": str(FEED),
                "DIGEST_STYLE": style,
                "AUTHOR_NAME": "Mira",
            }
        )
        runner = app.test_cli_runner()
        for args in (
            ["init-db"],
            ["fetch-posts", "--backfill", "2"],
            ["preview-digest", "--output", str(folder / style), "--note", str(note)],
        ):
            result = runner.invoke(args=args)
            if result.exit_code != 0:
                raise SystemExit(f"{' '.join(args)} failed:\n{result.output}")
        paths[style] = folder / style / "digest.html"
    return paths


def main() -> None:
    """Write the screenshots into docs/."""
    from playwright.sync_api import Route, sync_playwright

    def answer(route: Route) -> None:
        name = route.request.url.rsplit("/", 1)[-1]
        if route.request.resource_type == "image" and name in PICTURES:
            route.fulfill(status=200, content_type="image/png", body=png(*PICTURES[name]))
        elif route.request.url.startswith("file:"):
            route.continue_()
        else:
            route.abort()  # nothing from the network

    with tempfile.TemporaryDirectory() as temp:
        previews = render_previews(Path(temp))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=FLAGS, headless=True
            )
            try:
                for name, width, scheme, style in SHOTS:
                    options: dict[str, Any] = {
                        "viewport": {"width": width, "height": 900},
                        "color_scheme": scheme,
                        "device_scale_factor": 1,
                    }
                    page = browser.new_page(**options)
                    page.route("**/*", answer)
                    page.goto(previews[style].as_uri())
                    page.wait_for_load_state("load")
                    page.screenshot(path=str(OUT / name), full_page=True)
                    page.close()
                    print(OUT / name)
            finally:
                browser.close()


if __name__ == "__main__":
    main()

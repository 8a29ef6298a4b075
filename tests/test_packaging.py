"""The package works installed without -e: templates, pages and migrations ship in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_email_templates_pages_and_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("newsletter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_emails = {p.name for p in (ROOT / "emails").iterdir() if p.is_file()}
    assert shipped_emails and all(f"newsletter/emails/{n}" in names for n in shipped_emails)
    for needed in (
        "newsletter/templates/base.html",
        "newsletter/static/style.css",
        "newsletter/migrations/env.py",
        "newsletter/migrations/versions/0001_initial_schema.py",
    ):
        assert needed in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "newsletter = newsletter.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

"""Refresh the README's dashboard pictures (docs/admin-*.png).

    python docs/make_admin_screenshots.py

Runs the dashboard's browser test (tests/test_admin_browser.py: a real headless Chromium, a
real worker, the test's SMTP server) with NEWSLETTER_SCREENSHOT_DIR pointing here, so each
picture shows the page exactly as the test saw it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Run the browser test with screenshots written to docs/."""
    environment = {**os.environ, "NEWSLETTER_SCREENSHOT_DIR": str(HERE)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command.append(str(HERE.parent / "tests" / "test_admin_browser.py"))
    return subprocess.call(command, env=environment, cwd=HERE.parent)


if __name__ == "__main__":
    sys.exit(main())

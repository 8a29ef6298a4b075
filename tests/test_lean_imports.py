"""What a command's process loads: `send-digest` pays only for what sending needs (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy.orm import Session

from newsletter.db import head_revision
from tests.conftest import FrozenClock, add_readers, digest_ready, sent_in, write_post

# Libraries that sending a digest (without DKIM) never needs: Alembic (and Mako behind it) only
# for init-db, cryptography only for DKIM, urllib3 and charset_normalizer (requests' own imports)
# only if premailer fetched a stylesheet (it never does: see rendering.py), dnspython only for
# doctor, flufl only for bounces.
NOT_FOR_SENDING = (
    "alembic",
    "mako",
    "cryptography",
    "urllib3",
    "charset_normalizer",
    "dns",
    "flufl",
)

PROBE = (
    "import sys\n"
    "from newsletter.cli import main\n"
    "sys.argv = ['newsletter', 'send-digest', '--yes', '--connections', '1']\n"
    "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
    f"heavy = {NOT_FOR_SENDING!r}\n"
    "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}),"
    " file=sys.stderr)\n"
)


@pytest.fixture
def posts_folder(config: dict[str, Any], tmp_path: Path) -> Path:
    folder = tmp_path / "posts"
    folder.mkdir()
    write_post(folder, "older-post", "An Older Post", "2020-01-01")
    config["POSTS_DIR"] = str(folder)
    return folder


def test_send_digest_loads_no_library_it_does_not_need(
    config: dict[str, Any],
    tmp_path: Path,
    posts_folder: Path,
    app: Flask,
    session: Session,
    clock: FrozenClock,
    runner: FlaskCliRunner,
) -> None:
    add_readers(session, clock, 3)
    digest_ready(runner, posts_folder)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environment.update(
        {
            "NEWSLETTER_DATABASE_URL": config["DATABASE_URL"],
            "NEWSLETTER_SECRET_KEY": config["SECRET_KEY"],
            "NEWSLETTER_TESTING": "true",
            "NEWSLETTER_PUBLIC_URL": config["PUBLIC_URL"],
            "NEWSLETTER_SITE_URL": config["SITE_URL"],
            "NEWSLETTER_MAIL_FROM": config["MAIL_FROM"],
            "NEWSLETTER_SMTP_HOST": "127.0.0.1",
            "NEWSLETTER_SMTP_PORT": str(config["SMTP_PORT"]),
            "NEWSLETTER_INSTANCE_PATH": str(tmp_path / "instance"),
            "NEWSLETTER_POSTS_DIR": str(posts_folder),
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sent_in(result.stdout) == 3
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_the_head_revision_read_from_the_files_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    from newsletter.db import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert head_revision() == script.get_current_head()

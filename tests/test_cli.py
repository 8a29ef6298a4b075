"""The `newsletter` command as a user runs it: the installed console script in a folder of its
own, with no secret key and no .env, answering help, version and its first commands clearly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import click
import pytest

from newsletter.cli import COMMANDS
from newsletter.mailcatcher import free_port
from tests.conftest import ON_POSTGRES, POSTGRES_URL

GOOD_KEY = "a-long-enough-secret-key-for-these-tests-only"


def newsletter_script() -> str:
    """The installed console script next to this Python, as `pip install` made it."""
    script = Path(sys.executable).parent / "newsletter"
    return str(script) if script.exists() else shutil.which("newsletter") or "newsletter"


def clean_environment(**settings: str) -> dict[str, str]:
    """The environment minus every NEWSLETTER_ setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "FLASK_"))}
    env.update(settings)
    return env


def run(folder: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [newsletter_script(), *args],
        cwd=folder,
        env=clean_environment(**settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def empty_database_url(tmp_path: Path) -> Iterator[str]:
    """An explicitly configured database without tables: a SQLite file not yet made, or an
    empty PostgreSQL schema."""
    if not ON_POSTGRES:
        yield f"sqlite:///{tmp_path / 'data' / 'explicit.sqlite'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"empty_{os.getpid()}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={name}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


def test_help_works_without_a_secret_key_and_lists_every_command(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output and "Error" not in output
    for command in COMMANDS:
        assert f"  {command.name} " in result.stdout, command.name
    assert "--app" not in output and "--debug" not in output
    assert not list(tmp_path.rglob("*.sqlite"))


@pytest.mark.parametrize("args", [["--help"], ["subscribers", "import", "--help"]])
def test_help_loads_neither_the_database_layer_nor_the_email_libraries(
    tmp_path: Path, args: list[str]
) -> None:
    """Help stays fast: the domain, and the heavy libraries behind it, load only when a command
    runs (the CLI modules import them inside each command; see newsletter/cli/base.py)."""
    probe = (
        "import sys\n"
        "from newsletter.cli import main\n"
        f"sys.argv = ['newsletter', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('sqlalchemy', 'premailer', 'feedparser', 'nh3', 'cryptography', 'lxml',"
        " 'email_validator', 'newsletter.models')\n"
        "print(sorted({m.split('.')[0] if m.startswith(heavy[:-1]) else m for m in sys.modules"
        " if m.startswith(heavy)}), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_help_of_a_command_works_without_a_secret_key(tmp_path: Path) -> None:
    result = run(tmp_path, "subscribers", "import", "--help")
    assert result.returncode == 0, result.stderr
    assert "--consent-note" in result.stdout and "Traceback" not in result.stderr


def test_version_prints_the_project_name_and_version(tmp_path: Path) -> None:
    result = run(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"newsletter {version('newsletter')}"


def test_version_answers_without_loading_flask_or_the_commands(tmp_path: Path) -> None:
    # Start-up time: `--version` is answered before Flask and the command modules load.
    probe = (
        "import sys; sys.argv = ['newsletter', '--version']\n"
        "from newsletter.cli import main\n"
        "main()\n"
        "print(sorted(m for m in ('flask', 'sqlalchemy', 'newsletter.cli.sending') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"newsletter {version('newsletter')}", "[]"]


def test_a_command_without_a_secret_key_says_which_setting_is_missing(tmp_path: Path) -> None:
    result = run(tmp_path, "stats")
    assert result.returncode == 1
    assert "NEWSLETTER_SECRET_KEY" in result.stderr and "token_urlsafe" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_command_before_init_db_stops_and_leaves_no_database_file(tmp_path: Path) -> None:
    # The "wrong folder" case: the default database in ./instance does not exist here.
    result = run(tmp_path, "subscribers", "list", NEWSLETTER_SECRET_KEY=GOOD_KEY)
    assert result.returncode == 1
    assert "the database has no tables: run `newsletter init-db`" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(tmp_path.rglob("*.sqlite*"))


def test_an_explicit_database_without_tables_is_not_migrated_by_commands(
    tmp_path: Path, empty_database_url: str
) -> None:
    result = run(
        tmp_path,
        "stats",
        NEWSLETTER_SECRET_KEY=GOOD_KEY,
        NEWSLETTER_DATABASE_URL=empty_database_url,
    )
    assert result.returncode == 1
    assert "the database has no tables: run `newsletter init-db`" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(tmp_path.rglob("*.sqlite*"))
    made = run(
        tmp_path,
        "init-db",
        NEWSLETTER_SECRET_KEY=GOOD_KEY,
        NEWSLETTER_DATABASE_URL=empty_database_url,
    )
    assert made.returncode == 0 and "Created the database schema" in made.stdout
    again = run(
        tmp_path,
        "stats",
        NEWSLETTER_SECRET_KEY=GOOD_KEY,
        NEWSLETTER_DATABASE_URL=empty_database_url,
    )
    assert again.returncode == 0, again.stderr


def test_a_database_that_cannot_be_opened_is_reported_in_one_line(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "stats",
        NEWSLETTER_SECRET_KEY=GOOD_KEY,
        NEWSLETTER_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none",
    )
    assert result.returncode == 1
    assert "cannot use the database" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def serve(folder: Path, port: int, **settings: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [newsletter_script(), "run", "--port", str(port), "--no-reload"],
        cwd=folder,
        env=clean_environment(NEWSLETTER_SMTP_PORT=str(free_port()), **settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def get(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_until_up(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            get(url)
            return
        except OSError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)


def test_run_migrates_the_default_sqlite_database_and_takes_sign_ups(tmp_path: Path) -> None:
    port = free_port()
    process = serve(tmp_path, port, NEWSLETTER_SECRET_KEY=GOOD_KEY)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/healthz", process)
        assert get(f"{base}/healthz")[0] == 200
        status, body = get(
            f"{base}/subscribe",
            json.dumps({"email": "a@example.com"}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 202, body
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()
    assert (tmp_path / "instance" / "newsletter.sqlite").stat().st_size > 0


def test_run_on_an_explicit_database_without_tables_stops_with_the_fix(
    tmp_path: Path, empty_database_url: str
) -> None:
    process = serve(
        tmp_path,
        free_port(),
        NEWSLETTER_SECRET_KEY=GOOD_KEY,
        NEWSLETTER_DATABASE_URL=empty_database_url,
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "the database has no tables: run `newsletter init-db`" in output
    assert "Traceback" not in output
    assert not list(tmp_path.rglob("*.sqlite*"))


def all_commands() -> Iterator[tuple[str, click.Command]]:
    """Every command and subcommand with its full name."""

    def walk(command: click.Command, name: str) -> Iterator[tuple[str, click.Command]]:
        yield name, command
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                yield from walk(sub, f"{name} {sub_name}")

    for command in COMMANDS:
        yield from walk(command, str(command.name))


def test_every_option_of_every_command_has_a_help_text() -> None:
    missing = [
        f"{name} {'/'.join(param.opts)}"
        for name, command in all_commands()
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not param.help
    ]
    assert missing == []


def test_format_options_offer_the_same_choices() -> None:
    formats = {
        name: param.type.choices
        for name, command in all_commands()
        for param in command.params
        if param.name == "fmt" and isinstance(param.type, click.Choice)
    }
    assert set(formats) == {"stats", "subscribers list"}
    assert list(formats["stats"]) == ["text", "json"]
    assert list(formats["subscribers list"]) == ["text", "csv", "json"]


def test_the_help_kept_in_overview_is_what_the_command_group_prints() -> None:
    """`newsletter --help` prints newsletter/cli/overview.py's text; it must stay the real one
    (update it from ``COLUMNS=80 newsletter -e /dev/null --help`` when commands change)."""
    from click.testing import CliRunner

    from newsletter.cli.main import make_group
    from newsletter.cli.overview import HELP, MIN_COLUMNS

    # click wraps help to min(columns, 80) - 2; a terminal of MIN_COLUMNS or more gives this.
    result = CliRunner().invoke(
        make_group(), ["--help"], prog_name="newsletter", terminal_width=MIN_COLUMNS - 2
    )
    assert result.exit_code == 0, result.output
    assert result.output == HELP


def test_help_loads_neither_flask_nor_the_commands(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from newsletter.cli import main\n"
        "sys.argv = ['newsletter', '--help']\n"
        "main()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug',"
        " 'sqlalchemy', 'jinja2') or m.startswith('newsletter.cli.')), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=clean_environment(COLUMNS="100"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "send-digest" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "['newsletter.cli.overview']"


def test_help_in_a_narrow_terminal_is_wrapped_by_the_real_group(tmp_path: Path) -> None:
    result = run(tmp_path, "--help", COLUMNS="60")
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 60
    assert "  send-digest " in result.stdout

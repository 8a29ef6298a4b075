"""What every command module shares: the command list, exit codes, the app's services and
database session.

Command modules import the domain inside each command, not at the top: nearly every domain
module pulls in SQLAlchemy (through the models), and premailer, lxml, cryptography or
email-validator behind it, which `newsletter --help` and a mistyped command must not wait for
(tests/test_cli.py checks). Flask, click and the standard library are imported at the top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..services import Services

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INCOMPLETE = 3  # some deliveries failed or were deferred

COMMANDS: list[click.Command] = []


CommandT = TypeVar("CommandT", bound=click.Command)


def register(command: CommandT) -> CommandT:
    """Add a command (or group) to the ``newsletter`` CLI."""
    COMMANDS.append(command)
    return command


def _services() -> Services:
    """The current app's Services (lazily: appctx imports SQLAlchemy)."""
    from ..appctx import get_services

    return get_services()


def _session() -> Session:
    """The current app's database session (lazily: db imports SQLAlchemy)."""
    from ..db import db

    return db.session()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("newsletter")
    except PackageNotFoundError:
        return "unknown (not installed)"


def print_version() -> None:
    """Print ``newsletter VERSION`` (what ``--version`` answers)."""
    click.echo(f"newsletter {_version()}")


def _one_line(err: Exception) -> str:
    """The first line of a database error's own message, without SQLAlchemy's decoration."""
    cause = getattr(err, "orig", None) or err
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else cause.__class__.__name__


def _display_url(url: str) -> str:
    from sqlalchemy.engine import make_url  # lazily: SQLAlchemy

    return make_url(url).render_as_string(hide_password=True)

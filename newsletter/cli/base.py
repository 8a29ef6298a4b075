"""What every command module shares: the command list, exit codes, the app's services."""

from __future__ import annotations

from typing import Any, TypeVar

import click

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INCOMPLETE = 3  # some deliveries failed or were deferred

COMMANDS: list[click.Command] = []


CommandT = TypeVar("CommandT", bound=click.Command)


def register(command: CommandT) -> CommandT:
    """Add a command (or group) to the ``newsletter`` CLI."""
    COMMANDS.append(command)
    return command


def _services() -> Any:
    from ..services import get_services

    return get_services()


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
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)

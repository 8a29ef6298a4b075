"""The `newsletter` command: thin click commands, one module per family, calling the domain.

Each family module registers its commands with :func:`base.register` when imported;
:func:`_load` gathers them, in the order `newsletter --help` lists them. They are loaded on
first use (``COMMANDS``, ``init_app``, or any command but ``--version`` and ``--help``), so
`newsletter --version` and `newsletter --help` (see :mod:`.overview`) start without Flask.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["COMMANDS", "init_app", "main"]


def _load() -> Any:
    from . import admin, bounces, campaigns, posts, readers, sending, setup, stats, worker  # noqa: F401

    entry = importlib.import_module(f"{__name__}.main")
    # Importing the submodule bound its name in this package; ``main`` stays the entry point.
    globals()["main"] = _main
    return entry


def __getattr__(name: str) -> Any:
    if name == "COMMANDS":
        return _load().COMMANDS
    if name == "init_app":
        return _load().init_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _main() -> None:
    """Entry point of the ``newsletter`` console script."""
    if sys.argv[1:] == ["--version"]:
        from .base import print_version

        print_version()
        return
    if sys.argv[1:] == ["--help"]:
        import shutil

        from .overview import HELP, MIN_COLUMNS

        if shutil.get_terminal_size().columns >= MIN_COLUMNS:
            # The group's help as a text kept in sync by tests/test_cli.py: no Flask to import.
            sys.stdout.write(HELP)
            return
    _load().main()


main = _main

"""The `newsletter` command: thin click commands, one module per family, calling the domain.

Each family module registers its commands with :func:`base.register` when imported; the
imports below gather them, in the order `newsletter --help` lists them.
"""

from __future__ import annotations

from . import admin, bounces, campaigns, posts, readers, sending, setup, stats, worker  # noqa: F401
from .base import COMMANDS as COMMANDS
from .main import init_app as init_app
from .main import main as main

__all__ = ["COMMANDS", "init_app", "main"]

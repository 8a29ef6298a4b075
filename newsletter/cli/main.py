"""The newsletter command: help that always works, and the app built only when a command runs."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup

from .. import create_app
from ..config import ConfigError
from .base import COMMANDS, _display_url, _one_line, print_version


def init_app(app: Flask) -> None:
    """Register the commands on the app, so `flask --app app ...` has them too."""
    for command in COMMANDS:
        app.cli.add_command(command)


# Commands that may start on a database without tables: init-db makes them; the demo and the
# development server and `serve` migrate the embedded SQLite default themselves; shell and
# routes only look.
_NO_SCHEMA_NEEDED = {"init-db", "shell", "routes"}
_MIGRATES_DEFAULT_DATABASE = {"demo", "run", "serve"}


def _create_app() -> Flask:
    """The app for the command being run, with its database ready for it.

    A missing setting or a database without this version's schema ends the command with one
    line saying what to do; the embedded SQLite default is migrated by `run`, `serve` and `demo`.
    """
    # Lazily: SQLAlchemy (see base.py).
    from sqlalchemy.exc import SQLAlchemyError

    from ..db import schema_problem, upgrade_schema

    try:
        app = create_app()
    except ConfigError as err:
        raise click.ClickException(f"{err}") from None
    context = click.get_current_context(silent=True)
    command = context.find_root().invoked_subcommand if context else None
    if command in _NO_SCHEMA_NEEDED:
        return app
    where = _display_url(app.config["SQLALCHEMY_DATABASE_URI"])
    try:
        problem = schema_problem(app)
        if problem and (
            command == "demo"
            or (command in _MIGRATES_DEFAULT_DATABASE and app.config["DATABASE_IS_DEFAULT"])
        ):
            upgrade_schema(app)
            problem = None
    except SQLAlchemyError as err:
        raise click.ClickException(
            f"cannot use the database {where}: {_one_line(err)}. Check "
            "NEWSLETTER_DATABASE_URL and that the database server is running."
        ) from None
    if problem:
        hint = (
            " (this is the default database in ./instance: run `newsletter` in the folder "
            "that holds the service's .env and instance folder, or set "
            "NEWSLETTER_DATABASE_URL)"
            if app.config["DATABASE_IS_DEFAULT"]
            else ""
        )
        raise click.ClickException(f"{problem}. Database: {where}{hint}.")
    return app


class NewsletterGroup(FlaskGroup):
    """Flask's command group, with help that always works: our commands are listed without
    loading the app (so a missing setting cannot hide them), and the app is built only when a
    command needs it. Flask's --app and --debug options do not apply here and are left out."""

    def __init__(self, *, help: str, params: list[click.Parameter]) -> None:
        super().__init__(create_app=_create_app, add_version_option=False, help=help, params=params)
        self.params = [p for p in self.params if p.name not in ("app", "debug")]
        for command in COMMANDS:
            self.add_command(command)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Our commands, Flask's run/shell/routes and plugins; never loads the app."""
        self._load_plugin_commands()
        return click.Group.get_command(self, ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command, without loading the app."""
        self._load_plugin_commands()
        return sorted(click.Group.list_commands(self, ctx))


def make_group() -> NewsletterGroup:
    """The ``newsletter`` command group (its help text is also kept in :mod:`.overview`)."""
    return NewsletterGroup(
        help="A self-hosted newsletter: subscriptions with double opt-in, digests of new posts, "
        "one-click unsubscribe. Settings come from NEWSLETTER_* variables and a .env file.",
        params=[
            click.Option(
                ["--version"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                help="Show the name and version of newsletter and exit.",
                callback=_print_version,
            )
        ],
    )


def main() -> None:
    """Entry point of the ``newsletter`` console script."""
    make_group().main(prog_name="newsletter")


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    print_version()
    ctx.exit()


if __name__ == "__main__":
    main()

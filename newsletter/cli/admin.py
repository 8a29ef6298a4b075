"""The author's dashboard account: admin create, set-password, totp."""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from .base import _services, register


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(
        click.prompt("Password (12 characters or more)", hide_input=True, confirmation_prompt=True)
    )


@register
@click.group("admin")
def admin_group() -> None:
    """The author's account for the dashboard at /admin/."""


@admin_group.command("create")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
def create_command(email: str, password_stdin: bool) -> None:
    """Create the dashboard account for EMAIL (asks for the password twice)."""
    from ..admin_auth import create_user
    from ..db import db
    from ..errors import NewsletterError

    password = _read_password(password_stdin)
    try:
        user = create_user(db.session(), email, password, now=_services().clock())
    except NewsletterError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"Created the dashboard account {user.email}; sign in at /admin/login.")


@admin_group.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
def set_password_command(email: str, password_stdin: bool) -> None:
    """Change EMAIL's password; every browser signed in with it is signed out."""
    from ..admin_auth import set_password
    from ..db import db
    from ..errors import NewsletterError

    password = _read_password(password_stdin)
    try:
        user = set_password(db.session(), email, password, now=_services().clock())
    except NewsletterError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"Changed the password of {user.email}; its sessions are signed out.")


@admin_group.command("totp")
@click.argument("email")
@click.option("--disable", is_flag=True, help="Turn the second factor off.")
@with_appcontext
def totp_command(email: str, disable: bool) -> None:
    """Turn on the authenticator-app code (TOTP) for EMAIL's sign-in, and print its secret."""
    import pyotp

    from ..admin_auth import set_totp_secret
    from ..db import db
    from ..errors import NewsletterError

    secret = None if disable else pyotp.random_base32()
    try:
        user = set_totp_secret(db.session(), email, secret)
    except NewsletterError as err:
        raise click.ClickException(str(err)) from err
    if secret is None:
        click.echo(f"The sign-in code is off for {user.email}.")
        return
    site = str(_services().config.get("SITE_NAME") or "newsletter")
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=site)
    click.echo(f"Add this to your authenticator app (secret {secret}):\n{uri}")

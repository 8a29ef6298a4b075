"""Setting up: init-db, doctor, demo and the embeddable form."""

from __future__ import annotations

import json
import sys
from urllib.parse import urlsplit

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from werkzeug.serving import run_simple

from ..config import DEFAULTS
from ..embed import render_snippet

# The domain is imported inside each command, lazily: it pulls in SQLAlchemy (see base.py).
from .base import _display_url, _one_line, _services, _session, register
from .readers import _count


@register
@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database schema, or upgrade it to this version. Safe to run again."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..db import upgrade_schema

    url = current_app.config["SQLALCHEMY_DATABASE_URI"]
    where = _display_url(url)
    try:
        before, after = upgrade_schema(current_app)
    except (SQLAlchemyError, OSError) as err:
        raise click.ClickException(
            f"cannot create the schema in {where}: {_one_line(err)}. "
            "Check NEWSLETTER_DATABASE_URL and that the database server "
            "is running."
        ) from None
    if before == after:
        click.echo(f"Database {where} is up to date (schema {after}).")
    elif before is None:
        click.echo(f"Created the database schema in {where} (schema {after}).")
    else:
        click.echo(f"Upgraded {where} from schema {before} to {after}.")


@register
@click.command("doctor")
@click.option(
    "--send-test",
    "send_test",
    metavar="ADDRESS",
    help="Also send one test message to ADDRESS (nothing is sent otherwise).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON, for scripts.")
@with_appcontext
def doctor_command(send_test: str | None, as_json: bool) -> None:
    """Check the set-up (settings, SMTP, DNS, the service, the list); exit 1 on a PROBLEM."""
    from ..doctor import DoctorInputs, exit_code, run_doctor, summary

    services = _services()
    checks = run_doctor(
        DoctorInputs(
            current_app.config, _session(), services.clock, services.tokens.unsubscribe_token
        ),
        send_test=send_test,
    )
    if as_json:
        click.echo(
            json.dumps(
                {"checks": [c.as_dict() for c in checks], "summary": summary(checks)}, indent=2
            )
        )
    else:
        width = max(len(c.label) for c in checks)
        for check in checks:
            click.echo(f"{check.status:<8} {check.label:<{width}}  {check.found}")
            if check.to_do:
                click.echo(f"{'':<8} {'':<{width}}  -> {check.to_do}")
        counts = summary(checks)
        click.echo(f"\n{counts['ok']} OK, {counts['warn']} WARN, {counts['problem']} PROBLEM")
    sys.exit(exit_code(checks))


@register
@click.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Web port.")
@click.option(
    "--smtp-port",
    default=0,
    type=int,
    help="Port of the demo's mail catcher (default: any free port).",
)
@with_appcontext
def demo_command(host: str, port: int, smtp_port: int) -> None:
    """Run the service with a local mail catcher and sample posts: nothing to set up."""
    from ..db import upgrade_schema
    from ..demo import DemoWorker, mailbox_dir, prepare_sample_digest, write_sample_posts
    from ..mailcatcher import MailCatcher
    from ..posts import PostSourceError

    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    if not app.config["DEMO"]:
        raise click.UsageError("run the demo as `newsletter demo` (or set NEWSLETTER_DEMO=1)")
    upgrade_schema(app)
    catcher = MailCatcher(mailbox_dir(app), port=smtp_port).start()
    app.config.update(
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=catcher.port,
        SMTP_SECURITY="none",
        SMTP_USERNAME=None,
        SMTP_PASSWORD=None,
    )
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    app.config["PUBLIC_URL"] = base
    # There is no blog and no privacy policy in the demo: its own pages stand in, so every link
    # in its emails answers.
    if app.config["SITE_URL"] == DEFAULTS["SITE_URL"]:
        app.config["SITE_URL"] = f"{base}/demo/blog"
    if not app.config["PRIVACY_POLICY_URL"]:
        app.config["PRIVACY_POLICY_URL"] = f"{base}/demo/privacy"
    posts = write_sample_posts(app)
    try:
        # Only the sample folder's posts are kept unmailed; a feed of the author's own stays as
        # its first sync leaves it.
        waiting = prepare_sample_digest(
            _session(), _services(), keep_unmailed=app.config["POSTS_DIR"] == str(posts)
        )
        digest = (
            f"{base}/demo/digest   (a preview of {_count(waiting, 'sample post')})"
            if waiting
            else "none waiting: add a post to the sample folder"
        )
    except PostSourceError as err:
        _session().rollback()
        digest = f"none: cannot read the posts ({err})"
    click.echo(f"""
  newsletter demo is running.

  Subscribe:      {base}/subscribe
  Caught emails:  {base}/demo/mail   (also as .eml files in {mailbox_dir(app)})
  Next digest:    {digest}
  Sample blog:    {base}/demo/blog
  Mail catcher:   SMTP on 127.0.0.1:{catcher.port}
  Sample posts:   {posts}
  Database:       {_display_url(app.config["SQLALCHEMY_DATABASE_URI"])}

  Press Ctrl+C to stop.
""")
    worker = DemoWorker(app).start()  # sends the emails and polls the posts, as under `serve`
    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        worker.stop()
        catcher.stop()


@register
@click.command("embed-snippet")
@click.option(
    "--page-url",
    help="The blog page the form sits on, where a reader without "
    "JavaScript comes back to (default: NEWSLETTER_SITE_URL).",
)
@click.option("--no-script", is_flag=True, help="Only the plain form, without the script.")
@with_appcontext
def embed_snippet_command(page_url: str | None, no_script: bool) -> None:
    """Print the subscribe form to paste into an embed block on the blog."""
    config = current_app.config
    if page_url:
        parts = urlsplit(page_url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise click.BadParameter(
                "expected the page's full http(s) URL", param_hint="--page-url"
            )
        if origin not in config["ALLOWED_ORIGINS"]:
            click.echo(
                f"Note: {origin} is not in NEWSLETTER_ALLOWED_ORIGINS, so the form's "
                "script will be refused and readers without script will land on this "
                "service's thank-you page. Add it there.",
                err=True,
            )
    elif not config["ALLOWED_ORIGINS"]:
        click.echo(
            "Note: NEWSLETTER_ALLOWED_ORIGINS is empty; set it to the blog's origin "
            "(https://blog.example.com) so the form may post from there.",
            err=True,
        )
    click.echo(render_snippet(config, page_url, with_script=not no_script), nl=False)

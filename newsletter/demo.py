"""``newsletter demo``: the service, a mail catcher on 127.0.0.1 and sample posts, with no set-up.
Also the demo's mailbox pages, which exist only in demo mode."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, render_template
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .mailcatcher import read_mailbox

bp = Blueprint("demo", __name__, url_prefix="/demo")


def mailbox_dir(app: Flask) -> Path:
    """Where the demo's caught emails are filed."""
    return Path(app.instance_path) / "demo-mail"


@bp.get("/mail")
def mailbox() -> str:
    """Every email the demo's catcher received, newest first."""
    return render_template("demo_mailbox.html", mails=read_mailbox(mailbox_dir(current_app)))


def _find(name: str) -> Any:
    for mail in read_mailbox(mailbox_dir(current_app)):
        if mail.name == name:
            return mail
    abort(404)


@bp.get("/mail/<name>.html")
def mail_html(name: str) -> Response:
    """The HTML part as the reader's mail client would show it."""
    response = Response(_find(f"{name}.eml").body("html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_PAGE_POLICY
    return response


@bp.get("/mail/<name>.txt")
def mail_text(name: str) -> Response:
    """The plain-text part."""
    return Response(_find(f"{name}.eml").body("plain"), mimetype="text/plain")


@bp.get("/mail/<name>.eml")
def mail_source(name: str) -> Response:
    """The whole message as received."""
    path = mailbox_dir(current_app) / f"{name}.eml"
    if not path.is_file() or path.parent != mailbox_dir(current_app):
        abort(404)
    return Response(path.read_bytes(), mimetype="text/plain")


# Emails carry inline styles and remote images; let the pages that show one display them.
EMAIL_PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; frame-ancestors 'none'"
)


@bp.get("/digest")
def digest_preview() -> Any:
    """The next digest as a sample reader would get it (what `preview-digest` writes)."""
    from .appctx import get_services
    from .db import db
    from .digest import preview_digest

    preview = preview_digest(db.session(), get_services())
    if preview is None:
        return render_template(
            "message.html",
            title="No digest waiting",
            message="Every post has been mailed. Add a Markdown file to the demo's posts folder "
            "(its path is printed when the demo starts) and reload this page.",
        ), 200
    response = Response(preview.html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_PAGE_POLICY
    return response


def _published_posts() -> list[Any]:
    from .db import db
    from .models import Post

    newest = func.coalesce(Post.published_at, Post.first_seen_at)
    return list(
        db.session.scalars(
            select(Post).where(Post.draft.is_(False)).order_by(newest.desc(), Post.id.desc())
        )
    )


@bp.get("/blog")
def blog() -> str:
    """The demo's stand-in for the author's blog: the sample posts, where emails link to."""
    return render_template("demo_blog.html", posts=_published_posts())


@bp.get("/blog/<path:slug>")
def blog_post(slug: str) -> str:
    """One sample post, where the digest's and the welcome email's links lead."""
    for post in _published_posts():
        if (post.url or "").rstrip("/").endswith(f"/{slug.rstrip('/')}"):
            return render_template("demo_blog.html", post=post, posts=[])
    abort(404)


@bp.get("/privacy")
def privacy() -> str:
    """The demo's privacy policy, linked under the form and in every email."""
    return render_template(
        "message.html",
        title="Privacy policy (demo)",
        message="This demo keeps what a real installation keeps: your address, the name you "
        "typed, and a record of each consent step (time, IP address, browser, the words "
        "you agreed to). It all stays on this computer, in the demo's database; the "
        "emails go to its local mail catcher, never to the internet. A real "
        "installation links its own policy here (NEWSLETTER_PRIVACY_POLICY_URL).",
    )


def prepare_sample_digest(session: Session, services: Any, *, keep_unmailed: bool) -> int:
    """Sync the demo's posts and, with ``keep_unmailed`` (the source is the sample folder),
    keep them unmailed, so a digest is ready to preview and send; returns how many posts the
    next digest carries.

    A first sync records posts already published as sent before (a blog's back catalogue
    must not be mailed); the demo's sample posts are there to be mailed, so none stays so.
    """
    from .digest import select_digest_posts
    from .models import Post
    from .posts import sync_posts

    sync_posts(session, services)
    if keep_unmailed:
        session.execute(
            update(Post)
            .where(Post.campaign_id.is_(None), Post.archived.is_(True))
            .values(archived=False)
        )
    session.commit()
    return len(select_digest_posts(session, services))


# How often the demo's worker wakes unless NEWSLETTER_WORKER_POLL_SECONDS says otherwise: a
# newcomer waiting for the confirmation email should not wait the production default.
DEMO_WORKER_POLL_SECONDS = 1.0


class DemoWorker:
    """The worker ``newsletter serve`` runs, as a thread of the demo's process (it shares the
    demo's in-process settings: the mail catcher's port, the public URL). It sends the outbox,
    so the web process only queues, as under ``serve``."""

    def __init__(self, app: Flask, out: Any = None) -> None:
        from .config import DEFAULTS
        from .worker import Worker

        if app.config["WORKER_POLL_SECONDS"] == DEFAULTS["WORKER_POLL_SECONDS"]:
            app.config["WORKER_POLL_SECONDS"] = DEMO_WORKER_POLL_SECONDS
        # The web process queues and the worker sends (no background sender in the web).
        app.config["OUTBOX_SEND_AFTER_REQUEST"] = False
        sender = app.extensions["newsletter.outbox_sender"]
        hooks = app.before_request_funcs.get(None, [])
        if sender.start in hooks:
            hooks.remove(sender.start)
        self.worker = Worker(app, out=out)
        self.thread = threading.Thread(
            target=self.worker.run,
            kwargs={"install_signals": False},
            name="demo-worker",
            daemon=True,  # the process ends even if a stop takes too long
        )

    def start(self) -> DemoWorker:
        """Start the loop in its thread."""
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop after what it is doing and wait for it (it records its stop)."""
        self.worker.stop()
        self.thread.join(timeout)


def init_app(app: Flask) -> None:
    """Add the mailbox pages in demo mode."""
    if app.config["DEMO"]:
        app.register_blueprint(bp)


SAMPLE_POSTS = {
    "2026-11-02-slow-mornings.md": """---
title: Slow Mornings
subtitle: Ten quiet minutes before the phone
date: 2026-11-02T07:30:00Z
slug: slow-mornings
summary: A small ritual for starting the day from rest instead of rush.
---
Before you reach for the phone, sit on the edge of the bed and take **five slow breaths**.
Notice the weight of your feet on the floor and the temperature of the air.

Nothing needs fixing yet. The day can wait for ten minutes.

## Try this

1. Put a glass of water by the bed the night before.
2. Drink it slowly, one sip at a time.
3. Name one thing you are looking forward to.
""",
    "2026-11-16-walking-without-a-goal.md": """---
title: Walking Without a Goal
subtitle: Why an aimless stroll calms a busy mind
date: 2026-11-16T08:00:00Z
slug: walking-without-a-goal
---
Most of our walks have a destination. This week, try one that doesn't.

Leave the step counter at home. Turn left when you feel like it. Stop to look at a tree
for as long as it holds your interest. *Wandering* gives the mind the same permission.
""",
    "2026-11-23-the-kindest-voice.md": """---
title: The Kindest Voice in the Room
subtitle: Talking to yourself the way you would talk to a friend
date: 2026-11-23T09:00:00Z
slug: the-kindest-voice
---
When something goes wrong, listen to the first sentence you say to yourself.
Would you say it to a friend who had made the same mistake?

> Gentleness is not the opposite of strength; it is strength that feels safe.

This week, catch one harsh sentence a day and rewrite it, out loud, in a friend's words.
""",
}


def write_sample_posts(app: Flask) -> Path:
    """Write the demo's sample Markdown posts (once) and point the post source at them."""
    folder = Path(app.instance_path) / "demo-posts"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in SAMPLE_POSTS.items():
        path = folder / name
        if not path.exists():
            path.write_text(text, encoding="utf-8")
    if not app.config.get("FEED_URL") and not app.config.get("POSTS_DIR"):
        app.config["POSTS_DIR"] = str(folder)
    return folder

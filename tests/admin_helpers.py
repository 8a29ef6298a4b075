"""Helpers for the dashboard tests: the author's account, signing in, the CSRF token."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from newsletter.admin_auth import create_user
from newsletter.appctx import get_services
from newsletter.db import db

AUTHOR = "author@blog.example.com"
PASSWORD = "correct horse battery staple"


def make_author(app: Flask, email: str = AUTHOR, password: str = PASSWORD) -> None:
    """Create the author's dashboard account."""
    with app.app_context():
        create_user(db.session(), email, password, now=get_services(app).clock())
        db.session.remove()


def token_in(page: str) -> str:
    """The CSRF token in a page's form."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no csrf_token field in the page"
    return match.group(1)


def log_in(
    client: FlaskClient,
    email: str = AUTHOR,
    password: str = PASSWORD,
    *,
    code: str = "",
    ip: str = "127.0.0.1",
    next_path: str = "",
) -> TestResponse:
    """Fill in and send the sign-in form as a browser would."""
    page = client.get("/admin/login", environ_base={"REMOTE_ADDR": ip})
    return client.post(
        "/admin/login",
        data={
            "email": email,
            "password": password,
            "code": code,
            "next": next_path,
            "csrf_token": token_in(page.text),
        },
        environ_base={"REMOTE_ADDR": ip},
    )


def signed_in(app: Flask) -> tuple[FlaskClient, str]:
    """A client signed in as the author, and its session's CSRF token."""
    make_author(app)
    client = app.test_client()
    response = log_in(client)
    assert response.status_code == 303, response.text
    return client, token_in(client.get("/admin/").text)

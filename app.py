"""The WSGI app that `flask`, `gunicorn app:app` and the `newsletter` command load."""

from newsletter import create_app

app = create_app()

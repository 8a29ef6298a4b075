"""Alembic environment: runs on the connection handed over by ``db.upgrade_schema``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from newsletter import models, worker_models  # noqa: F401  (registers the tables)
from newsletter.db import db

config = context.config
target_metadata = db.metadata


def run_migrations() -> None:
    """Migrate on the given connection, or on a fresh one to ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as fresh:
        _migrate(fresh)


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()

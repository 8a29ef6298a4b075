"""The database: the SQLAlchemy extension, SQLite tuning and schema migrations (Alembic)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, Table, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    """Declarative base for every table."""

    # Each model maps one Table (SQLAlchemy types it as any FromClause), so the Core statements
    # that take ``Model.__table__`` (bulk inserts and updates) type-check.
    __table__: ClassVar[Table]


db = SQLAlchemy(model_class=Base)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (the same on SQLite and PostgreSQL) and hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


@event.listens_for(Engine, "connect")
def _tune_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    """WAL for concurrent readers, a busy timeout instead of 'database is locked', and FKs on."""
    import sqlite3

    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_sqlite(url: str) -> bool:
    """Whether a database URL names SQLite."""
    return url.startswith("sqlite")


def init_app(app: Flask) -> None:
    """Bind the extension to ``app``; SQLite files go in the instance folder, made on demand."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if is_sqlite(url):
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})
    else:
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})
    db.init_app(app)


def alembic_config(url: str) -> Any:
    """An Alembic configuration for the migrations that ship inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(app: Flask) -> tuple[str | None, str]:
    """Create or upgrade the schema to the newest migration; returns (before, after) revisions."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    path = _sqlite_file(app.config["SQLALCHEMY_DATABASE_URI"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
    with app.app_context():
        engine = db.engine
        config = alembic_config(str(engine.url.render_as_string(hide_password=False)))
        with engine.connect() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        head = ScriptDirectory.from_config(config).get_current_head()
    return before, head or ""


NO_TABLES = "the database has no tables: run `newsletter init-db`"


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration shipped with this version."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() or ""


def _sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (None for an in-memory database or another database)."""
    from sqlalchemy.engine import make_url

    if not is_sqlite(url):
        return None
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def schema_problem(app: Flask) -> str | None:
    """Why the database is not ready for this version (no tables, or an older schema), or None.

    Reads only: a SQLite file that does not exist is reported, not created (connecting would
    leave an empty file behind). A database that cannot be reached raises SQLAlchemyError.
    """
    from alembic.runtime.migration import MigrationContext

    url = app.config["SQLALCHEMY_DATABASE_URI"]
    path = _sqlite_file(url)
    if path is not None and not path.exists():
        return NO_TABLES
    with app.app_context(), db.engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head = head_revision()
    if current is None:
        return NO_TABLES
    if current != head:
        return (
            f"the database schema is at revision {current}, and this version needs {head}: "
            "run `newsletter init-db` to upgrade it"
        )
    return None


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)

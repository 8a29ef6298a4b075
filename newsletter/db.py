"""The database: the SQLAlchemy extension, SQLite tuning and schema migrations (Alembic)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, Table, event, inspect, text
from sqlalchemy.engine import Connection, Engine
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


_REVISION_LINE = re.compile(
    r"""^(down_revision|revision)\s*=\s*(?:"([^"]*)"|'([^']*)'|None)""", re.M
)


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration shipped with this version.

    Read from the migration files' ``revision =`` and ``down_revision =`` lines rather than
    through Alembic, whose import (with Mako and Pygments behind it) every command would pay
    for at start-up; tests/test_db.py checks that this agrees with Alembic's own head.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        for name, double, single in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            value = double or single
            if value:
                (revisions if name == "revision" else parents).add(value)
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads, not one: {sorted(heads)}")
    return heads.pop()


def current_revision(connection: Connection) -> str | None:
    """The revision the database's schema is at (None: no ``alembic_version`` table or row).

    Reads the table Alembic keeps, without importing Alembic.
    """
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return ", ".join(sorted(rows)) or None


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
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    path = _sqlite_file(url)
    if path is not None and not path.exists():
        return NO_TABLES
    with app.app_context(), db.engine.connect() as connection:
        current = current_revision(connection)
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

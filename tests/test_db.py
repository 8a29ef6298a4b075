"""The schema: init-db, migrations that match the models, and the health check."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.testing import FlaskCliRunner

from newsletter.db import db


def test_init_db_creates_then_reports_up_to_date(make_app: object, tmp_path: Path) -> None:
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite'}")  # type: ignore[operator]
    runner = app.test_cli_runner()
    first = runner.invoke(args=["init-db"])
    assert first.exit_code == 0, first.output
    assert "Created the database schema" in first.output
    second = runner.invoke(args=["init-db"])
    assert second.exit_code == 0 and "up to date" in second.output


def test_migrations_match_the_models(app: Flask) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == []


def test_healthz_answers_200_with_a_database(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    assert response.status_code == 200 and response.json["ok"] is True


def test_healthz_answers_503_without_one(make_app: object, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "db.sqlite"
    app = make_app(DATABASE_URL=f"sqlite:///{missing}")  # type: ignore[operator]
    response = app.test_client().get("/healthz")
    assert response.status_code == 503 and response.json["ok"] is False


def test_flask_command_has_the_same_commands(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["--help"])
    for command in ("init-db", "send-queued", "subscribers", "demo"):
        assert command in result.output


def test_healthz_answers_503_saying_why_when_the_database_has_no_tables(
    make_app: object, tmp_path: Path
) -> None:
    path = tmp_path / "not-made-yet.sqlite"
    app = make_app(DATABASE_URL=f"sqlite:///{path}")  # type: ignore[operator]
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["ok"] is False
    assert response.json["message"] == "the database has no tables: run `newsletter init-db`"
    assert not path.exists()  # asking never leaves an empty database file behind


def test_healthz_answers_503_when_the_schema_is_behind(app: Flask) -> None:
    from sqlalchemy import text

    with app.app_context():
        db.session.execute(text("UPDATE alembic_version SET version_num = '0000_older'"))
        db.session.commit()
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert "0000_older" in response.json["message"]
    assert "newsletter init-db" in response.json["message"]


def test_every_table_is_a_subclass_of_the_typed_base() -> None:
    """mypy sees a model's columns only when it subclasses ``Base`` (``db.Model`` is untyped)."""
    import newsletter.models
    import newsletter.worker_models  # noqa: F401
    from newsletter.db import Base

    mapped = [mapper.class_ for mapper in Base.registry.mappers]
    assert len(mapped) >= 15
    assert [cls.__name__ for cls in mapped if not issubclass(cls, Base)] == []
    assert set(db.metadata.tables) == {cls.__tablename__ for cls in mapped}

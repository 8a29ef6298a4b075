"""Configuration: environment variables, .env files and clear errors naming the variable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter import create_app
from newsletter.config import ConfigError

GOOD_KEY = "k" * 40
FILE_KEY = "from-file-" + "f" * 30


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    import os

    for name in list(os.environ):
        if name.startswith("NEWSLETTER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setattr("sys.argv", ["newsletter", "run"])
    yield monkeypatch
    # A .env file is loaded into os.environ, behind monkeypatch's back: take it out again, so
    # no later test runs with this one's settings (an SMTP port, say).
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_"):
            del os.environ[name]


def test_missing_secret_key_stops_start_up_and_names_the_variable(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY"):
        create_app()


def test_demo_and_testing_need_no_secret_key(clean_env: pytest.MonkeyPatch) -> None:
    assert create_app({"TESTING": True}).config["SECRET_KEY"]
    clean_env.setattr("sys.argv", ["newsletter", "demo"])
    assert create_app().config["DEMO"] is True


def test_environment_variables_are_read_and_typed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NEWSLETTER_SECRET_KEY", GOOD_KEY)
    clean_env.setenv("NEWSLETTER_SMTP_PORT", "2525")
    clean_env.setenv("NEWSLETTER_SMTP_SECURITY", "STARTTLS")
    clean_env.setenv("NEWSLETTER_WELCOME_EMAIL", "false")
    clean_env.setenv(
        "NEWSLETTER_ALLOWED_ORIGINS", "https://Blog.Example.com, https://www.blog.example.com/"
    )
    clean_env.setenv("NEWSLETTER_PUBLIC_URL", "https://news.example.com/")
    app = create_app()
    assert app.config["SMTP_PORT"] == 2525
    assert app.config["SMTP_SECURITY"] == "starttls"
    assert app.config["WELCOME_EMAIL"] is False
    assert app.config["ALLOWED_ORIGINS"] == [
        "https://blog.example.com",
        "https://www.blog.example.com",
    ]
    assert app.config["PUBLIC_URL"] == "https://news.example.com"
    assert app.config["SQLALCHEMY_DATABASE_URI"].endswith("instance/newsletter.sqlite")


def test_dot_env_file_is_read_and_real_environment_wins(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        f"NEWSLETTER_SECRET_KEY={FILE_KEY}\nNEWSLETTER_SITE_NAME=Calm Corner\n"
        "NEWSLETTER_SMTP_HOST=file.example\n"
    )
    clean_env.setenv("NEWSLETTER_SMTP_HOST", "env.example")
    app = create_app()
    assert app.config["SECRET_KEY"] == FILE_KEY
    assert app.config["SITE_NAME"] == "Calm Corner"
    assert app.config["SMTP_HOST"] == "env.example"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NEWSLETTER_SMTP_PORT", "70000"),
        ("NEWSLETTER_SMTP_PORT", "smtp"),
        ("NEWSLETTER_SMTP_SECURITY", "tls-please"),
        ("NEWSLETTER_PUBLIC_URL", "newsletter.example.com"),
        ("NEWSLETTER_SITE_URL", "ftp://blog.example.com"),
        ("NEWSLETTER_PRIVACY_POLICY_URL", "privacy"),
        ("NEWSLETTER_MAIL_FROM", "not an address"),
        ("NEWSLETTER_ALLOWED_ORIGINS", "blog.example.com"),
        ("NEWSLETTER_ALLOWED_ORIGINS", "https://blog.example.com/subscribe"),
        ("NEWSLETTER_WELCOME_EMAIL", "maybe"),
        ("NEWSLETTER_SUBSCRIBE_RATE_LIMIT", "0"),
        ("NEWSLETTER_CONSENT_TEXT", '"   "'),
    ],
)
def test_invalid_values_stop_start_up_with_the_variable_named(
    clean_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    clean_env.setenv("NEWSLETTER_SECRET_KEY", GOOD_KEY)
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        create_app()
    assert str(caught.value).startswith(f"{variable}:")


def test_the_command_line_reports_a_config_error_without_a_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SMTP_PORT"] = "seventy"
    env["NEWSLETTER_SECRET_KEY"] = GOOD_KEY
    result = subprocess.run(
        [sys.executable, "-c", "from newsletter.cli import main; main()", "init-db"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "NEWSLETTER_SMTP_PORT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "key",
    [
        "change-me-to-a-long-random-string",  # the placeholder in .env.example
        "x",
        "s" * 31,
    ],
)
def test_weak_secret_keys_are_refused_with_the_command_that_makes_a_good_one(
    clean_env: pytest.MonkeyPatch, key: str
) -> None:
    clean_env.setenv("NEWSLETTER_SECRET_KEY", key)
    with pytest.raises(ConfigError) as caught:
        create_app()
    message = str(caught.value)
    assert message.startswith("NEWSLETTER_SECRET_KEY:")
    assert "import secrets; print(secrets.token_urlsafe(48))" in message


def test_the_example_env_file_placeholder_is_refused(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    example = Path(__file__).resolve().parent.parent / ".env.example"
    (tmp_path / ".env").write_text(example.read_text())
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY: is still the placeholder"):
        create_app()


def test_a_long_random_key_is_accepted(clean_env: pytest.MonkeyPatch) -> None:
    import secrets

    key = secrets.token_urlsafe(48)
    clean_env.setenv("NEWSLETTER_SECRET_KEY", key)
    assert create_app().config["SECRET_KEY"] == key


def test_tests_and_the_demo_may_use_weak_keys(clean_env: pytest.MonkeyPatch) -> None:
    assert create_app({"TESTING": True, "SECRET_KEY": "test-secret"}).config["TESTING"]
    clean_env.setenv("NEWSLETTER_SECRET_KEY", "x")
    clean_env.setenv("NEWSLETTER_DEMO", "1")
    assert create_app().config["DEMO"] is True

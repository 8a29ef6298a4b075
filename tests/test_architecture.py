"""The package layout the README's development section describes, checked on the source: the
domain imports neither Flask nor click, and post sources never reach the mail transport."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "newsletter"

# The modules that hold a Flask app (the factory, its glue, the long-running processes that run
# inside an app context) and the two front ends. Everything else is domain.
GLUE = {"__init__", "appctx", "config", "db", "demo", "outbox", "worker"}
FRONT_ENDS = {"web", "cli", "migrations"}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    """The absolute names a module imports (relative imports resolved against the package)."""
    package = ["newsletter", *path.relative_to(PACKAGE).parent.parts]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


DOMAIN = sorted(
    path
    for path in PACKAGE.rglob("*.py")
    if path.relative_to(PACKAGE).parts[0] not in FRONT_ENDS and _module(path) not in GLUE
)


@pytest.mark.parametrize("path", DOMAIN, ids=_module)
def test_the_domain_imports_neither_flask_nor_click(path: Path) -> None:
    framework = {
        name
        for name in _imports(path)
        if name.split(".")[0] in {"flask", "flask_sqlalchemy", "click"}
    }
    assert framework == set(), f"{_module(path)} imports {sorted(framework)}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "posts").glob("*.py")), ids=_module)
def test_post_sources_do_not_reach_the_mail_transport(path: Path) -> None:
    reached = {
        name
        for name in _imports(path)
        if name.startswith(("newsletter.services", "newsletter.smtp", "newsletter.mail"))
    }
    assert reached == set(), f"{_module(path)} imports {sorted(reached)}"


def test_consent_leaves_email_formatting_to_transactional() -> None:
    """``subscriptions`` decides who gets what; ``transactional`` says how an email looks."""
    formatting = {
        name
        for name in _imports(PACKAGE / "subscriptions.py")
        if name.startswith(("newsletter.mail", "newsletter.placeholders", "email."))
    }
    assert formatting == set()
    import newsletter.subscriptions as subscriptions

    assert not hasattr(subscriptions, "list_headers")
    assert not hasattr(subscriptions, "email_context")


# Everything but the front ends and the app factory that registers them.
BEHIND_THE_FRONT_ENDS = sorted(
    path
    for path in PACKAGE.rglob("*.py")
    if path.relative_to(PACKAGE).parts[0] not in FRONT_ENDS and path != PACKAGE / "__init__.py"
)


@pytest.mark.parametrize("path", BEHIND_THE_FRONT_ENDS, ids=_module)
def test_only_the_app_factory_imports_the_front_ends(path: Path) -> None:
    front = {
        name for name in _imports(path) if name.startswith(("newsletter.web", "newsletter.cli"))
    }
    assert front == set(), f"{_module(path)} imports {sorted(front)}"

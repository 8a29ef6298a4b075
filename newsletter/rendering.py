"""Email templates: Jinja2 over ``emails/`` (or the author's own folder), CSS inlined by premailer.

Rendering and inlining are the expensive steps, so campaigns do them once and fill each
reader's parts in afterwards (see ``mail``); transactional emails are rendered per message.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from . import placeholders
from .errors import NewsletterError

PACKAGE_DIR = Path(__file__).parent


def default_templates_dir() -> Path:
    """``emails/`` inside the installed package, or beside it in a source checkout."""
    for candidate in (PACKAGE_DIR / "emails", PACKAGE_DIR.parent / "emails"):
        if (candidate / "layout.html").is_file():
            return candidate
    raise FileNotFoundError("the email templates (emails/layout.html) are missing from the install")


class TemplateError(NewsletterError):
    """An email template could not be rendered; says which file and line."""

    def __init__(self, message: str, filename: str | None = None, lineno: int | None = None):
        where = (
            f"{filename}, line {lineno}: "
            if filename and lineno
            else (f"{filename}: " if filename else "")
        )
        super().__init__(f"{where}{message}")
        self.filename = filename
        self.lineno = lineno


@dataclass(frozen=True)
class RenderedEmail:
    """An email's subject and both bodies, ready to be put into a MIME message."""

    subject: str
    html: str
    text: str


class EmailRenderer:
    """Renders ``NAME.html`` + ``NAME.txt`` pairs; the author's folder overrides the defaults."""

    def __init__(
        self, override_dir: str | Path | None = None, brand: dict[str, Any] | None = None
    ) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if override_dir:
            loaders.append(jinja2.FileSystemLoader(str(override_dir)))
        loaders.append(jinja2.FileSystemLoader(str(default_templates_dir())))
        common = dict(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.html_env = jinja2.Environment(autoescape=True, **common)  # type: ignore[arg-type]
        self.text_env = jinja2.Environment(autoescape=False, **common)  # type: ignore[arg-type]
        # The author's brand (colour, font, logo) is there for every email, layout and style.css.
        for env in (self.html_env, self.text_env):
            env.globals.update(brand or {})

    def render(self, name: str, subject: str, context: dict[str, Any]) -> RenderedEmail:
        """Render ``name.html`` (inlined) and ``name.txt`` with ``context``."""
        # Content can contain a stand-in's text: see ``placeholders`` for why this is safe.
        context, names = placeholders.protect({"subject": subject, **context})
        html = inline_css(self._render(self.html_env, f"{name}.html", context))
        text = normalise_text(self._render(self.text_env, f"{name}.txt", context))
        return RenderedEmail(
            subject=subject,
            html=placeholders.finish(html, names, html=True),
            text=placeholders.finish(text, names, html=False),
        )

    @staticmethod
    def _render(env: jinja2.Environment, template: str, context: dict[str, Any]) -> str:
        try:
            return env.get_template(template).render(context)
        except jinja2.TemplateSyntaxError as err:
            raise TemplateError(
                err.message or str(err), err.filename or err.name, err.lineno
            ) from err
        except jinja2.TemplateNotFound as err:
            raise TemplateError(f"template {err.name!r} not found") from err
        except Exception as err:  # an author's template can fail in any way while rendering
            filename, lineno = _template_position(err, env)
            message = (
                str(err)
                if isinstance(err, jinja2.TemplateError)
                else (f"{type(err).__name__}: {err}")
            )
            raise TemplateError(message, filename or template, lineno) from err


def _template_position(err: Exception, env: jinja2.Environment) -> tuple[str | None, int | None]:
    """The template file and line a render-time error came from, read off the traceback."""
    tb = err.__traceback__
    found: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        frame = tb.tb_frame
        if "__jinja_exception__" in frame.f_globals:
            # A frame Jinja rewrote to point at the template itself.
            found = (frame.f_code.co_filename, tb.tb_lineno)
        elif "__jinja_template__" in frame.f_globals:
            template = frame.f_globals["__jinja_template__"]
            found = (template.filename, template.get_corresponding_lineno(tb.tb_lineno))
        tb = tb.tb_next
    return found


_premailer_log = logging.getLogger("newsletter.premailer")
_premailer_log.addHandler(logging.NullHandler())
_premailer_log.propagate = False


def _premailer() -> Any:
    """premailer's Premailer class, imported on first use, without importing ``requests``.

    premailer imports requests (and urllib3, charset_normalizer, idna: 6 MB) at the top only to
    fetch external stylesheets, which :func:`inline_css` turns off. While premailer is imported,
    ``requests`` is a stand-in module that imports the real one on first attribute use (never,
    here); it is removed from sys.modules again, so any other ``import requests`` gets the real
    library.
    """
    if "premailer.premailer" not in sys.modules and "requests" not in sys.modules:
        stand_in = types.ModuleType("requests", "imports the real requests on first use")

        def real(name: str) -> Any:
            return getattr(importlib.import_module("requests"), name)

        stand_in.__getattr__ = real  # type: ignore[method-assign]
        sys.modules["requests"] = stand_in
        try:
            import premailer.premailer  # noqa: F401
        finally:
            del sys.modules["requests"]
    from premailer import Premailer

    return Premailer


def inline_css(html: str) -> str:
    """Inline the ``<style>`` rules into ``style`` attributes; media queries stay in a block.

    Network access is off: a template can never make rendering fetch a URL.
    """
    inliner = _premailer()(
        html,
        allow_network=False,
        allow_loading_external_files=False,
        disable_validation=True,
        keep_style_tags=False,
        remove_classes=False,
        strip_important=False,
        cssutils_logging_handler=logging.NullHandler(),
        cssutils_logging_level=logging.CRITICAL,
        # Templates set table widths themselves; copying CSS sizes into attributes would
        # give post images height="auto", which is not valid HTML.
        disable_basic_attributes=["width", "height"],
    )
    return str(inliner.transform())  # premailer is untyped


def normalise_text(text: str) -> str:
    """Tidy a rendered plain-text part: no trailing spaces, at most one blank line in a row."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    tidy: list[str] = []
    for line in lines:
        if not line and tidy and not tidy[-1]:
            continue
        tidy.append(line)
    return "\n".join(tidy) + "\n"


def write_preview(
    folder: str | Path, stem: str, html: str, text: str, message: bytes
) -> list[Path]:
    """Write ``STEM.html``, ``STEM.txt`` and ``STEM.eml`` (the whole message) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.html", folder / f"{stem}.txt", folder / f"{stem}.eml"]
    paths[0].write_text(html, encoding="utf-8")
    paths[1].write_text(text, encoding="utf-8")
    paths[2].write_bytes(message)
    return paths

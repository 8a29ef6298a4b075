"""The --output and --open options of preview-digest and preview-campaign, and writing a
preview's files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def preview_options(stem: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The --output and --open options of preview-digest and preview-campaign."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option(
            "--open", "open_browser", is_flag=True, help=f"Open {stem}.html in a web browser."
        )(command)
        return click.option(
            "--output",
            "output",
            default="preview",
            show_default=True,
            type=click.Path(file_okay=False, writable=True),
            help=f"Folder to write {stem}.html, {stem}.txt and {stem}.eml into.",
        )(command)

    return decorate


def write_preview(preview: Any, output: str, open_browser: bool, heading: str) -> None:
    """Write a preview's files, list them under ``heading`` and open the HTML if asked."""
    import webbrowser

    paths = preview.write(output)
    click.echo(heading)
    for path in paths:
        click.echo(f"  {path}")
    if open_browser:
        webbrowser.open(paths[0].resolve().as_uri())

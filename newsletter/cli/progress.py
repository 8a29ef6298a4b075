"""What a person sees of a send: the progress display, the question before mailing the
readers, the one-paragraph summary of each campaign, and the exit status (send-digest,
send-campaign and the resumption of failed deliveries share them)."""

from __future__ import annotations

import sys
from typing import Any

import click

from .base import EXIT_ERROR, EXIT_INCOMPLETE

PROGRESS_LOG_INTERVAL = 5.0  # seconds between progress lines when output is not a terminal


class SendProgress:
    """A progress bar (count, rate, time left) on a terminal, a plain line every few seconds
    otherwise (cron mail, logs), nothing with --quiet."""

    def __init__(self, quiet: bool, terminal: bool) -> None:
        self.quiet = quiet
        self.terminal = terminal
        self._bar: Any = None
        self._shown = 0
        self._total = 0
        self._started = 0.0
        self._logged = 0.0

    def start(self, report: Any) -> None:
        import time

        self._total, self._shown = report.total, 0
        self._started = self._logged = time.monotonic()
        if self.quiet:
            return
        click.echo(
            f'Sending campaign {report.campaign_id} "{report.subject}": '
            f"{report.total:,} deliver{'y' if report.total == 1 else 'ies'} to make."
        )
        if self.terminal and report.total:
            self._bar = click.progressbar(
                length=report.total,
                label="Sending",
                show_pos=True,
                show_eta=True,
                item_show_func=lambda rate: rate,
            )
            self._bar.__enter__()

    def update(self, done: int) -> None:
        import time

        if self.quiet:
            return
        now = time.monotonic()
        rate = done / (now - self._started) if now > self._started else 0.0
        if self._bar is not None:
            self._bar.update(done - self._shown, f"{rate:,.0f}/s")
        elif now - self._logged >= PROGRESS_LOG_INTERVAL and done < self._total:
            left = (self._total - done) / rate if rate else 0
            click.echo(
                f"  {done:,} of {self._total:,} done, {rate:,.0f} messages/s, "
                f"about {left:,.0f}s left"
            )
            self._logged = now
        self._shown = done

    def finish(self, report: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def summary(report: Any, quiet: bool, resume: str) -> None:
    """One campaign's outcome; problems always go to stderr, even with --quiet. ``resume`` is
    the command that resumes it."""
    if not quiet or not report.complete:
        left = f", still queued {report.left:,}" if report.left else ""
        click.echo(
            f'Campaign {report.campaign_id} "{report.subject}": sent {report.sent:,}, '
            f"failed {report.failed:,}, deferred {report.deferred:,}, "
            f"skipped {report.skipped:,}{left} in {report.elapsed:.1f}s "
            f"({report.rate:,.0f} messages per second)."
        )
    if report.error:
        click.echo(f"Stopped: {report.error}", err=True)
        click.echo(
            f"Run `{resume}` again to resume: it sends what is left and nothing twice.", err=True
        )
    elif report.failed or report.deferred:
        click.echo(
            f"See who and why: newsletter campaigns show {report.campaign_id}"
            + (" (deferred ones are retried by the next run)" if report.deferred else ""),
            err=True,
        )


def confirmation(label: str) -> Any:
    """The question asked at a terminal before mailing the readers (a ``Confirm``)."""

    def ask(draft: Any, readers: int) -> bool:
        if readers <= 1:
            return True
        click.echo(f'{label}: "{draft.subject}"')
        for title in draft.titles:
            click.echo(f"  - {title}")
        return click.confirm(f"Send it to {readers:,} readers now?", default=False)

    return ask


def exit_status(reports: Any, *, error: bool = False) -> None:
    """Exit 1 when an error stopped the run, 3 when some deliveries failed or wait (else
    return: 0)."""
    if error or any(r.error for r in reports):
        sys.exit(EXIT_ERROR)
    if any(not r.complete for r in reports):
        sys.exit(EXIT_INCOMPLETE)

"""``newsletter serve``: the web service under a production WSGI server plus one worker, as one
process tree that stops cleanly on SIGTERM and SIGINT.

gunicorn where the platform can fork (Linux, macOS, the BSDs), waitress elsewhere (Windows).
The parent only starts, watches and stops its children: if one of them dies, it stops the
other and exits non-zero, so a supervisor (systemd, a platform) restarts the whole service.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import NewsletterError

# The app as both servers load it: a factory call, so no app.py is needed.
APP_FACTORY = "newsletter:create_app"
STOP_TIMEOUT = 10.0  # seconds the children get to finish before they are killed


class ServeError(NewsletterError):
    """``serve`` cannot start; the message says what to install or change."""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def web_server_argv(bind: str, workers: int) -> list[str]:
    """The command line of the web server: gunicorn with ``workers`` processes, or waitress
    with as many threads times four where there is no fork."""
    if os.name != "nt" and _installed("gunicorn"):
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(workers),
            "--bind",
            bind,
            # Less than STOP_TIMEOUT, so requests in progress finish before the kill.
            "--graceful-timeout",
            "8",
            "--access-logfile",
            "-",
            f"{APP_FACTORY}()",
        ]
    if _installed("waitress"):
        return [
            sys.executable,
            "-m",
            "waitress",
            "--listen",
            bind,
            "--threads",
            str(max(4, 4 * workers)),
            "--call",
            APP_FACTORY,
        ]
    raise ServeError(
        "no production WSGI server is installed: pip install gunicorn (or "
        "waitress on Windows), then run `newsletter serve` again"
    )


def worker_argv() -> list[str]:
    """The command line of the worker: ``newsletter worker`` with this interpreter."""
    return [sys.executable, "-c", "from newsletter.cli import main; main()", "worker"]


@dataclass
class Child:
    """One process of the tree."""

    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = None


class ProcessTree:
    """Start the children, wait until a signal or a child's death, then stop them all."""

    def __init__(self, children: Sequence[Child]) -> None:
        self.children = list(children)
        self._stop = threading.Event()
        self.signalled = False

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signalled = True
        self._stop.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0 once the children stopped) or until a child ends
        on its own (the others are stopped; exit 1)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for child in self.children:
                child.process = subprocess.Popen(list(child.argv))
            ended = None
            while not self._stop.wait(0.2):
                ended = next(
                    (
                        c
                        for c in self.children
                        if c.process is not None and c.process.poll() is not None
                    ),
                    None,
                )
                if ended is not None:
                    break
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if ended is not None and not self.signalled:
            assert ended.process is not None
            sys.stderr.write(
                f"serve: the {ended.name} stopped (exit status "
                f"{ended.process.returncode}); stopped the rest too\n"
            )
            return 1
        return 0

    def stop(self) -> None:
        """SIGTERM every child still running, wait up to STOP_TIMEOUT, then kill."""
        running = [
            c.process for c in self.children if c.process is not None and c.process.poll() is None
        ]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve(bind: str, workers: int, *, with_worker: bool = True) -> int:
    """Run the web server and (unless told not to) one worker; returns the exit status."""
    children = [Child("web server", web_server_argv(bind, workers))]
    if with_worker:
        children.append(Child("worker", worker_argv()))
    return ProcessTree(children).run()

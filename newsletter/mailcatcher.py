"""The demo's mail catcher: a real SMTP server on 127.0.0.1 that files every message it gets.

The app talks to it with the same SMTP code it uses in production; only the address differs.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _FilingHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8")
        with self._lock:
            number = len(list(self.directory.glob("*.eml"))) + 1
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            path = self.directory / f"{number:05d}-{stamp}.eml"
            path.write_bytes(data)
        return "250 OK: caught"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (aiosmtpd needs a real port number up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class MailCatcher:
    """Start with ``start()``; every message lands as an ``.eml`` file in ``directory``."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self._controller = Controller(
            _FilingHandler(directory), hostname=host, port=self.port, ready_timeout=10
        )

    def start(self) -> MailCatcher:
        """Listen."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._controller.stop()


@dataclass(frozen=True)
class CaughtMail:
    """One caught message, for the demo's mailbox page."""

    name: str
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def recipient(self) -> str:
        return str(self.message.get("To", ""))

    @property
    def date(self) -> str:
        return str(self.message.get("Date", ""))

    def body(self, subtype: str) -> str:
        """The ``text/<subtype>`` part, decoded."""
        part = self.message.get_body(preferencelist=(subtype,))
        return part.get_content() if part is not None else ""


def read_mailbox(directory: Path) -> list[CaughtMail]:
    """Every caught message, newest first."""
    if not directory.is_dir():
        return []
    return [
        CaughtMail(path.name, message_from_bytes(path.read_bytes(), policy=policy.default))
        for path in sorted(directory.glob("*.eml"), reverse=True)
    ]

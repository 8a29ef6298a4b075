"""A real SMTP server for tests (aiosmtpd in a thread) that stores what it receives and can be
told to answer chosen codes per recipient, drop the connection, or be slow."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from newsletter.mailcatcher import free_port


@dataclass
class Received:
    """One message as the sink got it."""

    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]

    def body(self, subtype: str) -> str:
        part = self.message.get_body(preferencelist=(subtype,))
        assert part is not None, f"no text/{subtype} part"
        return part.get_content()  # type: ignore[no-any-return]


@dataclass
class Script:
    """What the sink should do: per-recipient replies to RCPT or to the final dot."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_replies: dict[str, str] = field(default_factory=dict)
    drop_after_data: set[str] = field(default_factory=set)
    data_delay: float = 0.0


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.sink.script.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        script = self.sink.script
        if script.data_delay:
            await asyncio.sleep(script.data_delay)
        recipient = envelope.rcpt_tos[0].lower() if envelope.rcpt_tos else ""
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode()
        if recipient in script.drop_after_data:
            # Take the message, then vanish before answering: its outcome is unknown.
            self.sink._store(Received(envelope.mail_from, list(envelope.rcpt_tos), data))
            server.transport.close()
            return "250 OK"
        reply = script.data_replies.get(recipient)
        if reply:
            return reply
        self.sink._store(Received(envelope.mail_from, list(envelope.rcpt_tos), data))
        return "250 OK: queued"


class SmtpSink:
    """Start with ``start()``; ``messages`` holds what arrived, in order."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.script = Script()
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self.host = host
        self._port = port
        self._controller: Controller | None = None

    def _store(self, received: Received) -> None:
        with self._cond:
            self.messages.append(received)
            self._cond.notify_all()

    def start(self) -> SmtpSink:
        if not self._port:
            self._port = free_port(self.host)
        controller = Controller(_Handler(self), hostname=self.host, port=self._port,
                                ready_timeout=10, decode_data=False)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def port(self) -> int:
        return self._port

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived; returns them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} message(s), got {len(self.messages)}")
                self._cond.wait(left)
            return list(self.messages)

    def to(self, address: str) -> list[Received]:
        """Messages whose envelope names ``address``."""
        return [m for m in self.messages if address.lower() in (r.lower() for r in m.recipients)]

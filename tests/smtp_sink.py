"""A real SMTP server for tests (aiosmtpd in a thread) that stores what it receives and can be
told to answer chosen codes per recipient, refuse a greeting, hang up after some messages or
after the final dot, be slow (for everyone or for one recipient), answer every RCPT or final dot
the same way, hold one recipient until the test releases it, not offer 8BITMIME, or ask for a
login."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

from newsletter.mailcatcher import free_port


@dataclass
class Received:
    """One message as the sink got it."""

    sender: str
    recipients: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]

    def body(self, subtype: str) -> str:
        part = self.message.get_body(preferencelist=(subtype,))
        assert part is not None, f"no text/{subtype} part"
        return part.get_content()  # type: ignore[no-any-return]


# In ``data_sequence``: take the message, then vanish before answering (outcome unknown).
DROP = "drop"


@dataclass
class Hold:
    """A handshake: the sink sets ``reached`` at this recipient's RCPT, then waits (without
    blocking other connections) until the test sets ``release``."""

    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Script:
    """What the sink should do: per-recipient replies to RCPT or to the final dot.

    ``rcpt_replies`` / ``data_replies`` answer every time; ``rcpt_sequence`` /
    ``data_sequence`` answer once per entry, in order, then accept (``DROP`` in a data
    sequence takes the message and closes the connection without a reply).
    ``greeting_replies`` greet successive connections (e.g. ``["421 busy"]`` refuses the
    first one); ``messages_per_session`` answers 421 to the MAIL after that many messages on
    one connection and hangs up; ``data_delay`` is a slow reply to the final dot;
    ``offer_8bitmime`` / ``offer_pipelining`` say whether EHLO announces those extensions.
    ``outage_from`` takes the server down at that recipient's RCPT: it hangs up and refuses
    every later connection with 421 until the test sets ``SmtpSink.down`` back to False.
    ``slow_replies`` stores a recipient's message, then answers its final dot that many
    seconds late (past the client's timeout: the outcome is unknown to it); ``every_rcpt`` /
    ``every_data`` answer every RCPT / final dot with one reply (a broken relay); ``holds``
    pause at a recipient's RCPT until the test releases them.
    """

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_replies: dict[str, str] = field(default_factory=dict)
    drop_after_data: set[str] = field(default_factory=set)
    data_delay: float = 0.0
    rcpt_sequence: dict[str, list[str]] = field(default_factory=dict)
    data_sequence: dict[str, list[str]] = field(default_factory=dict)
    greeting_replies: list[str] = field(default_factory=list)
    messages_per_session: int | None = None
    offer_8bitmime: bool = True
    offer_pipelining: bool = True
    slow_replies: dict[str, float] = field(default_factory=dict)
    every_rcpt: str | None = None
    every_data: str | None = None
    holds: dict[str, Hold] = field(default_factory=dict)
    outage_from: str | None = None


def _next_in(sequence: dict[str, list[str]], address: str) -> str | None:
    replies = sequence.get(address)
    return replies.pop(0) if replies else None


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self.sink.script.offer_8bitmime:
            responses = [r for r in responses if r[4:].upper() != "8BITMIME"]
        if self.sink.script.offer_pipelining:
            # aiosmtpd reads commands line by line, so it handles pipelined ones as well.
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        limit = self.sink.script.messages_per_session
        if limit is not None and getattr(session, "messages", 0) >= limit:
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.7.0 Too many messages in this session, come back later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        script = self.sink.script
        with self.sink._cond:
            reply = _next_in(script.rcpt_sequence, address.lower())
        if script.outage_from == address.lower():
            self.sink.down = True
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.3.2 Shutting down"
        hold = script.holds.get(address.lower())
        if hold is not None:
            hold.reached.set()
            await asyncio.to_thread(hold.release.wait, 30)
        reply = reply or script.rcpt_replies.get(address.lower()) or script.every_rcpt
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
        received = Received(
            envelope.mail_from, list(envelope.rcpt_tos), data, list(envelope.mail_options)
        )
        with self.sink._cond:
            reply = _next_in(script.data_sequence, recipient)
        if recipient in script.drop_after_data or reply == DROP:
            # Take the message, then vanish before answering: its outcome is unknown.
            self.sink._store(received)
            server.transport.close()
            return "250 OK"
        reply = reply or script.data_replies.get(recipient) or script.every_data
        if reply:
            return reply
        if recipient in script.slow_replies:
            # Stored, but the reply comes after the client gave up waiting for it.
            self.sink._store(received)
            await asyncio.sleep(script.slow_replies[recipient])
            return "250 OK: queued (late)"
        session.messages = getattr(session, "messages", 0) + 1
        self.sink._store(received)
        return "250 OK: queued"


class _ScriptedSMTP(SMTP):
    """aiosmtpd's server, with a scripted greeting and a count of connections."""

    def __init__(self, sink: SmtpSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink

    async def _handle_client(self) -> None:
        with self.sink._cond:
            self.sink.connections += 1
            greeting = (
                self.sink.script.greeting_replies.pop(0)
                if self.sink.script.greeting_replies
                else None
            )
            if self.sink.down:
                greeting = "421 4.3.2 Down for maintenance"
        if greeting:
            await self.push(greeting)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()


class _Controller(Controller):
    def __init__(self, sink: SmtpSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink

    def factory(self) -> SMTP:
        return _ScriptedSMTP(self.sink, self.handler, **self.SMTP_kwargs)


class SmtpSink:
    """Start with ``start()``; ``messages`` holds what arrived, in order."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, login: tuple[str, str] | None = None
    ) -> None:
        self.script = Script()
        self.messages: list[Received] = []
        self.connections = 0
        self.down = False  # refusing every connection (see Script.outage_from)
        self._cond = threading.Condition()
        self.host = host
        self._port = port
        self._login = login
        self._controller: Controller | None = None

    def _store(self, received: Received) -> None:
        with self._cond:
            self.messages.append(received)
            self._cond.notify_all()

    def start(self) -> SmtpSink:
        if not self._port:
            self._port = free_port(self.host)
        extra: dict[str, Any] = {}
        if self._login is not None:
            # AUTH offered without TLS: this sink only ever listens on 127.0.0.1.
            extra = {"authenticator": self._authenticate, "auth_require_tls": False}
        controller = _Controller(
            self,
            _Handler(self),
            hostname=self.host,
            port=self._port,
            ready_timeout=10,
            decode_data=False,
            **extra,
        )
        controller.start()
        self._controller = controller
        return self

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        login = getattr(auth_data, "login", b"") or b""
        password = getattr(auth_data, "password", b"") or b""
        expected = self._login or ("", "")
        ok = (login.decode(), password.decode()) == expected
        return AuthResult(success=ok, handled=False)

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
                    raise AssertionError(f"expected {count} message(s), got {len(self.messages)}")
                self._cond.wait(left)
            return list(self.messages)

    def to(self, address: str) -> list[Received]:
        """Messages whose envelope names ``address``."""
        return [m for m in self.messages if address.lower() in (r.lower() for r in m.recipients)]

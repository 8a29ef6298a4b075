"""A real DNS server for tests: UDP on 127.0.0.1, in a thread, answering from a dict of
records with dnspython's message API. Unknown names get NXDOMAIN; known names without the
asked type get an empty answer."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def txt(value: str) -> str:
    """A TXT record's presentation form, split into strings of at most 255 characters."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


class DnsServer:
    """``records[(name, type)] = [rdata text, ...]``; ``address`` is "127.0.0.1:port"."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._sock.getsockname()[1]}"

    def add(self, name: str, kind: str, *values: str) -> None:
        """Serve ``values`` for ``name`` (no trailing dot needed) and ``kind``."""
        self.records.setdefault((name.lower().rstrip("."), kind.upper()), []).extend(values)

    def add_txt(self, name: str, *values: str) -> None:
        """Serve TXT records holding ``values`` (long ones split into 255-character strings)."""
        self.add(name, "TXT", *(txt(v) for v in values))

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        # Wake the blocked recvfrom with an empty datagram, then wait for the thread.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:
            wake.sendto(b"", self._sock.getsockname())
        self._thread.join()
        self._sock.close()

    def _serve(self) -> None:
        while True:
            data, peer = self._sock.recvfrom(65535)
            if self._stopping.is_set():
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            self._sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        kind = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, kind))
        if not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        values = self.records.get((name, kind), [])
        if values:
            rrset = dns.rrset.from_text_list(
                question.name, 300, dns.rdataclass.IN, question.rdtype, values
            )
            response.answer.append(rrset)
        return response

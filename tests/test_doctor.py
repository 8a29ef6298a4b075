"""`newsletter doctor`: each check against real local servers (a DNS server, SMTP with and
without TLS, the service over HTTP(S)), and the command's exit code and JSON."""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from sqlalchemy import func, select, text
from werkzeug.serving import BaseWSGIServer, make_server

from newsletter.appctx import get_services
from newsletter.db import db
from newsletter.doctor import (
    Check,
    DoctorInputs,
    Status,
    dns_checks,
    exit_code,
    run_doctor,
    service_checks,
    settings_checks,
    smtp_checks,
    summary,
)
from newsletter.mailcatcher import free_port
from newsletter.models import (
    CONFIRMED,
    CONFIRMED_EVENT,
    IMPORTED,
    REQUESTED,
    ConsentEvent,
    Subscriber,
)
from newsletter.tokens import PROBE_SUBSCRIBER_ID
from tests.dns_server import DnsServer
from tests.smtp_sink import SmtpSink

DOMAIN = "blog.example.com"
STRONG_SECRET = secrets.token_urlsafe(32)


# --- fixtures: a DNS server, certificates, SMTP over TLS, the service over HTTP(S) ----------


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusted_ca(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """Make the test CA the trust store of this process (what SSL_CERT_FILE does in production
    for a private CA); OpenSSL reads the variable each time a default context is made."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    return ca


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


class _Handler:
    """Accepts everything except senders listed in ``refuse``; keeps what it receives."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.received: list[tuple[str, list[str], bytes]] = []
        self.commands: list[str] = []

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.commands.append(f"MAIL {address}")
        if address in self.refuse:
            return "550 5.7.1 Sender not allowed for this login"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.commands.append("RSET")
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content or envelope.content,
            )
        )
        return "250 OK: queued"


class TlsSmtp:
    """aiosmtpd with STARTTLS or implicit TLS, and a login (only over TLS)."""

    def __init__(self, ca: trustme.CA, *, implicit: bool, login: tuple[str, str]) -> None:
        self.handler = _Handler()
        self.port = free_port()
        self.login = login
        context = server_context(ca)
        # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; on an implicit-TLS port
        # every session is encrypted anyway.
        tls: dict[str, Any] = (
            {"ssl_context": context, "auth_require_tls": False}
            if implicit
            else {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
        )
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            ready_timeout=10,
            decode_data=False,
            **tls,
        )

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        given = (auth_data.login.decode(), auth_data.password.decode())
        return AuthResult(success=given == self.login, handled=False)


@pytest.fixture
def tls_smtp(ca: trustme.CA) -> Iterator[Callable[..., TlsSmtp]]:
    started: list[TlsSmtp] = []

    def start(*, implicit: bool = False) -> TlsSmtp:
        server = TlsSmtp(ca, implicit=implicit, login=("author", "right-password"))
        server.controller.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.controller.stop()


def serve(app: Any, port: int, context: ssl.SSLContext | None = None) -> BaseWSGIServer:
    """A real HTTP(S) server for ``app`` on 127.0.0.1:``port``, in a thread."""
    server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def http_servers() -> Iterator[list[BaseWSGIServer]]:
    servers: list[BaseWSGIServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def dkim_key(tmp_path: Path, name: str = "dkim.pem") -> tuple[Path, str]:
    """A fresh RSA key as a PEM file, and its public half as a DKIM p= value."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / name
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, base64.b64encode(public).decode()


def publish_good_records(dns: DnsServer, p_value: str | None = None) -> None:
    """SPF (two lookups), DKIM (when a key is given), DMARC p=reject and MX for DOMAIN."""
    dns.add_txt(DOMAIN, "v=spf1 mx include:_spf.relay.test ~all", "google-site-verification=x")
    dns.add_txt("_spf.relay.test", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.add(DOMAIN, "MX", "10 mail.example.com.")
    dns.add_txt(f"_dmarc.{DOMAIN}", f"v=DMARC1; p=reject; rua=mailto:dmarc@{DOMAIN}")
    if p_value:
        dns.add_txt(f"news._domainkey.{DOMAIN}", f"v=DKIM1; k=rsa; p={p_value}")


def by_label(checks: list[Check]) -> dict[str, Check]:
    return {c.label: c for c in checks}


# --- settings ---------------------------------------------------------------------------------


@pytest.fixture
def settings(app: Flask) -> dict[str, Any]:
    """The validated test settings, as a dict a test may change."""
    return {**app.config, "SECRET_KEY": STRONG_SECRET}


@pytest.mark.parametrize(
    ("key", "demo", "status", "words"),
    [
        (STRONG_SECRET, False, Status.OK, "43 characters"),
        ("Xk3-q9Zr_T7mWp2aLs8", False, Status.WARN, "at least 32"),
        ("secret", False, Status.PROBLEM, "easy to guess"),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", False, Status.PROBLEM, "1 distinct"),
        ("not-a-secret-demo-and-testing-only", False, Status.PROBLEM, "known to everyone"),
        ("not-a-secret-demo-and-testing-only", True, Status.OK, "demo"),
    ],
)
def test_secret_key_strength(
    settings: dict[str, Any], key: str, demo: bool, status: Status, words: str
) -> None:
    check = settings_checks.check_secret_key({**settings, "SECRET_KEY": key, "DEMO": demo})
    assert check.status is status and words in check.found
    if status is not Status.OK:
        assert "NEWSLETTER_SECRET_KEY" in check.to_do and "token_urlsafe(32)" in check.to_do


@pytest.mark.parametrize(
    ("url", "demo", "status"),
    [
        ("https://news.example.com", False, Status.OK),
        ("http://news.example.com", False, Status.PROBLEM),
        ("http://127.0.0.1:8025", True, Status.OK),
    ],
)
def test_public_url_must_be_https_outside_the_demo(
    settings: dict[str, Any], url: str, demo: bool, status: Status
) -> None:
    check = settings_checks.check_public_url({**settings, "PUBLIC_URL": url, "DEMO": demo})
    assert check.status is status
    if status is Status.PROBLEM:
        assert "NEWSLETTER_PUBLIC_URL=https://news.example.com" in check.to_do


def test_site_origin_not_allowed_is_a_problem_naming_the_setting(settings: dict[str, Any]) -> None:
    checks = settings_checks.check_allowed_origins(
        {**settings, "SITE_URL": "https://myblog.test", "ALLOWED_ORIGINS": ["https://old.test"]}
    )
    assert [c.status for c in checks] == [Status.PROBLEM]
    assert "https://myblog.test" in checks[0].found
    assert checks[0].to_do == "set NEWSLETTER_ALLOWED_ORIGINS=https://old.test,https://myblog.test"


def test_site_answering_on_its_www_twin_too_needs_both_allowed(
    settings: dict[str, Any], dns_server: DnsServer, http_servers: list[BaseWSGIServer]
) -> None:
    port = free_port()

    def blog(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<p>the blog</p>"]

    http_servers.append(serve(blog, port))
    dns_server.add("www.blog.test", "A", "127.0.0.1")
    config = {
        **settings,
        "SITE_URL": f"http://blog.test:{port}",
        "ALLOWED_ORIGINS": [f"http://blog.test:{port}"],
        "DNS_SERVER": dns_server.address,
    }
    checks = by_label(settings_checks.check_allowed_origins(config))
    assert checks["settings.allowed-origins"].status is Status.OK
    twin = checks["settings.allowed-origins-twin"]
    assert twin.status is Status.WARN and "HTTP 200" in twin.found
    assert f"http://blog.test:{port},http://www.blog.test:{port}" in twin.to_do
    assert ("www.blog.test", "A") in dns_server.queries


def test_a_twin_that_redirects_or_does_not_exist_is_fine(
    settings: dict[str, Any], dns_server: DnsServer, http_servers: list[BaseWSGIServer]
) -> None:
    port = free_port()

    def redirect(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("301 Moved", [("Location", f"http://blog.test:{port}/")])
        return [b""]

    http_servers.append(serve(redirect, port))
    dns_server.add("www.blog.test", "A", "127.0.0.1")
    config = {
        **settings,
        "SITE_URL": f"http://blog.test:{port}",
        "ALLOWED_ORIGINS": [f"http://blog.test:{port}"],
        "DNS_SERVER": dns_server.address,
    }
    assert (
        by_label(settings_checks.check_allowed_origins(config))[
            "settings.allowed-origins-twin"
        ].status
        is Status.OK
    )
    absent = {**config, "SITE_URL": "https://nowww.test", "ALLOWED_ORIGINS": ["https://nowww.test"]}
    twin = by_label(settings_checks.check_allowed_origins(absent))["settings.allowed-origins-twin"]
    assert twin.status is Status.OK and "www.nowww.test" in twin.found


@pytest.mark.parametrize(
    ("mail_from", "dkim_domain", "status", "words"),
    [
        (f"hello@{DOMAIN}", DOMAIN, Status.OK, f"DKIM d={DOMAIN}"),
        (f"hello@{DOMAIN}", "example.com", Status.OK, "DKIM d=example.com"),
        (f"hello@{DOMAIN}", "other.test", Status.WARN, "not blog.example.com"),
        (f"hello@{DOMAIN}", None, Status.WARN, "not DKIM-signed"),
        ("newsletter@localhost", None, Status.PROBLEM, "local name"),
    ],
)
def test_from_domain_alignment(
    settings: dict[str, Any], mail_from: str, dkim_domain: str | None, status: Status, words: str
) -> None:
    check = settings_checks.check_alignment(
        {**settings, "MAIL_FROM": mail_from, "DKIM_DOMAIN": dkim_domain}
    )
    assert check.status is status and words in check.found


def test_postal_address_and_privacy_policy(settings: dict[str, Any]) -> None:
    assert settings_checks.check_postal_address(settings).status is Status.OK
    assert settings_checks.check_privacy_policy(settings).status is Status.OK
    missing = {**settings, "POSTAL_ADDRESS": "", "PRIVACY_POLICY_URL": None}
    postal = settings_checks.check_postal_address(missing)
    privacy = settings_checks.check_privacy_policy(missing)
    assert postal.status is Status.WARN and "NEWSLETTER_POSTAL_ADDRESS" in postal.to_do
    assert privacy.status is Status.PROBLEM and "NEWSLETTER_PRIVACY_POLICY_URL" in privacy.to_do


# --- SMTP -------------------------------------------------------------------------------------


def test_smtp_without_tls_on_this_machine_checks_each_stage_and_sends_nothing(
    settings: dict[str, Any], smtp_sink: SmtpSink
) -> None:
    before = smtp_sink.connections  # the sink's own start-up probe counts as one
    checks = smtp_checks.check_smtp(settings)
    assert [(c.label, c.status) for c in checks] == [
        ("smtp.connect", Status.OK),
        ("smtp.tls", Status.OK),
        ("smtp.auth", Status.OK),
        ("smtp.sender", Status.OK),
    ]
    assert smtp_sink.connections == before + 1 and smtp_sink.messages == []


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "ssl"])
def test_smtp_over_tls_with_a_valid_certificate_and_login(
    settings: dict[str, Any],
    tls_smtp: Callable[..., TlsSmtp],
    trusted_ca: trustme.CA,
    implicit: bool,
) -> None:
    server = tls_smtp(implicit=implicit)
    config = {
        **settings,
        "SMTP_PORT": server.port,
        "SMTP_SECURITY": "ssl" if implicit else "starttls",
        "SMTP_USERNAME": "author",
        "SMTP_PASSWORD": "right-password",
    }
    checks = by_label(smtp_checks.check_smtp(config))
    assert all(c.status is Status.OK for c in checks.values()), checks
    assert "certificate valid" in checks["smtp.tls"].found
    assert checks["smtp.auth"].found == "logged in as author"
    # MAIL FROM is tried and taken back: nothing is sent.
    assert server.handler.commands == [f"MAIL {settings['MAIL_FROM']}", "RSET"]
    assert server.handler.received == []


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "ssl"])
def test_an_untrusted_certificate_is_a_problem(
    settings: dict[str, Any],
    tls_smtp: Callable[..., TlsSmtp],
    implicit: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Trust some other CA only: the server's certificate chains to nothing trusted.
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "other.pem"))
    server = tls_smtp(implicit=implicit)
    config = {
        **settings,
        "SMTP_PORT": server.port,
        "SMTP_SECURITY": "ssl" if implicit else "starttls",
        "SMTP_USERNAME": "author",
        "SMTP_PASSWORD": "right-password",
    }
    checks = smtp_checks.check_smtp(config)
    assert checks[-1].label == "smtp.tls" and checks[-1].status is Status.PROBLEM
    assert "certificate" in checks[-1].found and "not valid" in checks[-1].found
    assert "NEWSLETTER_SMTP_HOST" in checks[-1].to_do
    assert exit_code(checks) == 1


def test_a_wrong_password_is_a_problem_naming_the_setting(
    settings: dict[str, Any], tls_smtp: Callable[..., TlsSmtp], trusted_ca: trustme.CA
) -> None:
    server = tls_smtp()
    config = {
        **settings,
        "SMTP_PORT": server.port,
        "SMTP_SECURITY": "starttls",
        "SMTP_USERNAME": "author",
        "SMTP_PASSWORD": "wrong",
    }
    checks = smtp_checks.check_smtp(config)
    assert [c.label for c in checks] == ["smtp.connect", "smtp.tls", "smtp.auth"]
    assert checks[-1].status is Status.PROBLEM and "535" in checks[-1].found
    assert "NEWSLETTER_SMTP_PASSWORD" in checks[-1].to_do


def test_a_login_the_server_offers_only_after_starttls(
    settings: dict[str, Any], tls_smtp: Callable[..., TlsSmtp], trusted_ca: trustme.CA
) -> None:
    server = tls_smtp()
    config = {
        **settings,
        "SMTP_PORT": server.port,
        "SMTP_SECURITY": "none",
        "SMTP_USERNAME": "author",
        "SMTP_PASSWORD": "right-password",
    }
    checks = smtp_checks.check_smtp(config)
    assert checks[-1].label == "smtp.auth" and checks[-1].status is Status.PROBLEM
    assert "NEWSLETTER_SMTP_SECURITY" in checks[-1].to_do


def test_a_closed_port_is_a_problem(settings: dict[str, Any]) -> None:
    port = free_port()
    checks = smtp_checks.check_smtp({**settings, "SMTP_PORT": port})
    assert len(checks) == 1 and checks[0].status is Status.PROBLEM
    assert checks[0].found == f"nothing listens on 127.0.0.1:{port}"
    assert "NEWSLETTER_SMTP_PORT" in checks[0].to_do


def test_a_sender_the_server_refuses_is_a_problem(
    settings: dict[str, Any], tls_smtp: Callable[..., TlsSmtp], trusted_ca: trustme.CA
) -> None:
    server = tls_smtp()
    server.handler.refuse.add(settings["MAIL_FROM"])
    config = {
        **settings,
        "SMTP_PORT": server.port,
        "SMTP_SECURITY": "starttls",
        "SMTP_USERNAME": "author",
        "SMTP_PASSWORD": "right-password",
    }
    check = smtp_checks.check_smtp(config)[-1]
    assert check.label == "smtp.sender" and check.status is Status.PROBLEM
    assert "550 5.7.1" in check.found and "NEWSLETTER_MAIL_FROM" in check.to_do


def test_send_test_sends_one_signed_message(
    settings: dict[str, Any], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    key, _ = dkim_key(tmp_path)
    config = {
        **settings,
        "DKIM_DOMAIN": DOMAIN,
        "DKIM_SELECTOR": "news",
        "DKIM_PRIVATE_KEY": str(key),
    }
    check = smtp_checks.check_smtp(config, send_test="me@example.org")[-1]
    assert check.label == "smtp.send-test" and check.status is Status.OK
    [message] = smtp_sink.wait_for(1)
    assert message.recipients == ["me@example.org"] and message.sender == settings["MAIL_FROM"]
    assert f"d={DOMAIN}" in message.message["DKIM-Signature"]


# --- DNS --------------------------------------------------------------------------------------


@pytest.fixture
def dns_config(settings: dict[str, Any], dns_server: DnsServer) -> dict[str, Any]:
    return {**settings, "DNS_SERVER": dns_server.address}


def run_dns(config: dict[str, Any]) -> dict[str, Check]:
    return by_label(dns_checks.check_dns(config))


def test_good_spf_dmarc_and_mx(dns_config: dict[str, Any], dns_server: DnsServer) -> None:
    publish_good_records(dns_server)
    checks = run_dns(dns_config)
    assert checks["dns.spf"].status is Status.OK and "2 of 10 lookups" in checks["dns.spf"].found
    assert checks["dns.dmarc"].status is Status.OK
    assert checks["dns.mx"].status is Status.OK and "mail.example.com" in checks["dns.mx"].found


def test_missing_records_each_say_what_to_add(
    dns_config: dict[str, Any], dns_server: DnsServer
) -> None:
    dns_server.add(DOMAIN, "A", "192.0.2.1")  # the name exists, with none of the records
    checks = run_dns(dns_config)
    assert checks["dns.spf"].status is Status.PROBLEM and "no SPF record" in checks["dns.spf"].found
    assert f'{DOMAIN} TXT "v=spf1' in checks["dns.spf"].to_do
    assert checks["dns.dmarc"].status is Status.PROBLEM
    assert f'_dmarc.{DOMAIN} TXT "v=DMARC1; p=none' in checks["dns.dmarc"].to_do
    assert checks["dns.mx"].status is Status.PROBLEM and f"{DOMAIN} MX" in checks["dns.mx"].to_do


@pytest.mark.parametrize(
    ("records", "words"),
    [
        (["v=spf1 mx foo:bar ~all"], "not an SPF mechanism"),
        (["v=spf1 mx ~all", "v=spf1 a ~all"], "2 SPF records"),
        (["v=spf1 include:gone.test ~all"], "gone.test has no SPF record"),
        (["v=spf1 include:blog.example.com ~all"], "includes itself"),
    ],
)
def test_broken_spf(
    dns_config: dict[str, Any], dns_server: DnsServer, records: list[str], words: str
) -> None:
    dns_server.add_txt(DOMAIN, *records)
    check = run_dns(dns_config)["dns.spf"]
    assert check.status is Status.PROBLEM and "broken" in check.found and words in check.found


def test_spf_passing_everyone_is_a_problem(
    dns_config: dict[str, Any], dns_server: DnsServer
) -> None:
    dns_server.add_txt(DOMAIN, "v=spf1 mx +all")
    check = run_dns(dns_config)["dns.spf"]
    assert check.status is Status.PROBLEM and "~all or -all" in check.to_do


def test_spf_with_too_many_lookups(dns_config: dict[str, Any], dns_server: DnsServer) -> None:
    # 1 (a) + 3 includes, each costing 1 + its own 3 lookups (a, mx, exists) = 13.
    dns_server.add_txt(DOMAIN, "v=spf1 a include:one.test include:two.test include:three.test -all")
    for name in ("one.test", "two.test", "three.test"):
        dns_server.add_txt(name, "v=spf1 a mx exists:%{i}.x.test ~all")
    check = run_dns(dns_config)["dns.spf"]
    assert check.status is Status.PROBLEM and "13 DNS lookups" in check.found
    assert "ip4:/ip6:" in check.to_do
    dns_server.records[("three.test", "TXT")] = ['"v=spf1 ip4:192.0.2.0/24 ~all"']
    assert run_dns(dns_config)["dns.spf"].status is Status.OK  # 9 lookups


def test_dkim_record_matching_the_key(
    dns_config: dict[str, Any], dns_server: DnsServer, tmp_path: Path
) -> None:
    key, p_value = dkim_key(tmp_path)
    publish_good_records(dns_server, p_value)
    config = {
        **dns_config,
        "DKIM_DOMAIN": DOMAIN,
        "DKIM_SELECTOR": "news",
        "DKIM_PRIVATE_KEY": str(key),
    }
    check = run_dns(config)["dns.dkim"]
    assert check.status is Status.OK, check


def test_missing_dkim_record_gives_the_exact_record(
    dns_config: dict[str, Any], dns_server: DnsServer, tmp_path: Path
) -> None:
    key, p_value = dkim_key(tmp_path)
    publish_good_records(dns_server)
    config = {
        **dns_config,
        "DKIM_DOMAIN": DOMAIN,
        "DKIM_SELECTOR": "news",
        "DKIM_PRIVATE_KEY": str(key),
    }
    check = run_dns(config)["dns.dkim"]
    assert check.status is Status.PROBLEM
    assert check.to_do == f'add news._domainkey.{DOMAIN} TXT "v=DKIM1; k=rsa; p={p_value}"'


def test_dkim_record_for_another_key_is_a_problem(
    dns_config: dict[str, Any], dns_server: DnsServer, tmp_path: Path
) -> None:
    key, p_value = dkim_key(tmp_path)
    _, other = dkim_key(tmp_path, "old.pem")
    publish_good_records(dns_server, other)
    config = {
        **dns_config,
        "DKIM_DOMAIN": DOMAIN,
        "DKIM_SELECTOR": "news",
        "DKIM_PRIVATE_KEY": str(key),
    }
    check = run_dns(config)["dns.dkim"]
    assert check.status is Status.PROBLEM and "does not match" in check.found
    assert f"p={p_value}" in check.to_do


@pytest.mark.parametrize(
    ("record", "status", "words"),
    [
        ("v=DMARC1; p=none; rua=mailto:d@blog.example.com", Status.WARN, "p=quarantine"),
        ("v=DMARC1; p=maybe", Status.PROBLEM, "v=DMARC1"),
        ("v=DMARC1", Status.PROBLEM, "v=DMARC1"),
    ],
)
def test_dmarc_policies(
    dns_config: dict[str, Any], dns_server: DnsServer, record: str, status: Status, words: str
) -> None:
    dns_server.add_txt(f"_dmarc.{DOMAIN}", record)
    check = run_dns(dns_config)["dns.dmarc"]
    assert check.status is status and words in (check.to_do + check.found)


def test_dmarc_of_the_parent_domain_covers_a_subdomain(
    dns_config: dict[str, Any], dns_server: DnsServer
) -> None:
    dns_server.add_txt("_dmarc.example.com", "v=DMARC1; p=quarantine")
    check = run_dns(dns_config)["dns.dmarc"]
    assert check.status is Status.OK and "_dmarc.example.com" in check.found


def test_a_bad_dns_server_setting_is_a_problem(settings: dict[str, Any]) -> None:
    checks = dns_checks.check_dns({**settings, "DNS_SERVER": "127.0.0.1:notaport"})
    assert [(c.label, c.status) for c in checks] == [("dns.server", Status.PROBLEM)]
    assert "NEWSLETTER_DNS_SERVER" in checks[0].found


# --- the service and the list -----------------------------------------------------------------


@pytest.fixture
def served_app(
    make_app: Callable[..., Flask], http_servers: list[BaseWSGIServer]
) -> Callable[..., Flask]:
    """An app whose PUBLIC_URL is a real server on 127.0.0.1 running it."""

    def start(context: ssl.SSLContext | None = None, **overrides: Any) -> Flask:
        port = free_port()
        scheme = "https" if context else "http"
        app = make_app(PUBLIC_URL=f"{scheme}://127.0.0.1:{port}", **overrides)
        http_servers.append(serve(app, port, context))
        return app

    return start


def inputs_for(app: Flask) -> DoctorInputs:
    services = get_services(app)
    return DoctorInputs(app.config, db.session(), services.clock, services.tokens.unsubscribe_token)


def count_rows(app: Flask) -> tuple[int, int]:
    with app.app_context():
        return (
            db.session.scalar(select(func.count()).select_from(Subscriber)) or 0,
            db.session.scalar(select(func.count()).select_from(ConsentEvent)) or 0,
        )


def test_service_answers_healthz_and_the_one_click_probe_changing_nothing(
    served_app: Callable[..., Flask],
) -> None:
    app = served_app()
    before = count_rows(app)
    with app.app_context():
        checks = by_label(service_checks.check_service(inputs_for(app)))
    assert checks["service.healthz"].status is Status.OK
    assert checks["service.one-click-unsubscribe"].status is Status.OK
    assert checks["service.schema"].status is Status.OK
    assert (
        checks["service.worker"].status is Status.OK
        and "no schedule" in checks["service.worker"].found
    )
    assert count_rows(app) == before


def test_the_probe_token_is_answered_without_touching_readers(app: Flask) -> None:
    token = get_services(app).tokens.unsubscribe_token(PROBE_SUBSCRIBER_ID)
    response = app.test_client().post(
        f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
    )
    assert response.status_code == 200 and b"nothing changed" in response.data
    assert count_rows(app) == (0, 0)


def test_a_server_with_another_secret_fails_the_one_click_check(
    served_app: Callable[..., Flask], make_app: Callable[..., Flask]
) -> None:
    served = served_app(SECRET_KEY="the-server-has-another-key")
    doctor = make_app(PUBLIC_URL=served.config["PUBLIC_URL"], SECRET_KEY=STRONG_SECRET)
    with doctor.app_context():
        check = service_checks.check_one_click(
            doctor.config["PUBLIC_URL"],
            get_services(doctor).tokens.unsubscribe_token(PROBE_SUBSCRIBER_ID),
        )
    assert check.status is Status.PROBLEM and "answered 400" in check.found
    assert "NEWSLETTER_SECRET_KEY" in check.to_do


def test_nothing_at_the_public_url_is_a_problem(app: Flask) -> None:
    port = free_port()
    check = service_checks.check_healthz(f"http://127.0.0.1:{port}")
    assert check.status is Status.PROBLEM and "did not answer" in check.found
    assert "NEWSLETTER_PUBLIC_URL" in check.to_do


def test_another_site_at_the_public_url_is_a_problem(http_servers: list[BaseWSGIServer]) -> None:
    port = free_port()

    def other(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/html")])
        return [b"<h1>Not here</h1>"]

    http_servers.append(serve(other, port))
    check = service_checks.check_healthz(f"http://127.0.0.1:{port}")
    assert check.status is Status.PROBLEM and "answered 404" in check.found


def test_an_old_schema_is_a_problem(app: Flask) -> None:
    with app.app_context():
        db.session.execute(text("UPDATE alembic_version SET version_num = 'old0001'"))
        db.session.commit()
        check = service_checks.check_schema(inputs_for(app))
    assert check.status is Status.PROBLEM and "revision old0001" in check.found
    assert "newsletter init-db" in check.to_do


def add_reader(session: Any, email: str, kinds: list[str]) -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    reader = Subscriber(
        email=email,
        status=CONFIRMED,
        token_generation=0,
        created_at=now,
        updated_at=now,
        confirmed_at=now,
    )
    session.add(reader)
    session.flush()
    for kind in kinds:
        session.add(
            ConsentEvent(
                subscriber_id=reader.id,
                kind=kind,
                occurred_at=now,
                method="import" if kind == IMPORTED else "form",
            )
        )
    session.commit()


def test_share_of_readers_imported_without_double_opt_in(app: Flask) -> None:
    with app.app_context():
        assert service_checks.check_imported(inputs_for(app)).found == "no confirmed readers yet"
        add_reader(db.session, "a@example.org", [REQUESTED, CONFIRMED_EVENT])
        add_reader(db.session, "b@example.org", [IMPORTED, CONFIRMED_EVENT])  # re-confirmed
        add_reader(db.session, "c@example.org", [IMPORTED])
        add_reader(db.session, "d@example.org", [REQUESTED, CONFIRMED_EVENT])
        check = service_checks.check_imported(inputs_for(app))
        assert check.status is Status.WARN and check.found.startswith("1 of 4")
        assert "25%" in check.found and "--require-confirmation" in check.to_do
        add_reader(db.session, "e@example.org", [REQUESTED, CONFIRMED_EVENT])
        check = service_checks.check_imported(inputs_for(app))
        assert check.status is Status.OK and check.found.startswith("1 of 5")


def test_bounces_are_not_set_up_yet(app: Flask) -> None:
    with app.app_context():
        check = service_checks.check_bounces(inputs_for(app))
    assert check.status is Status.OK and "not set up" in check.found


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def healthy_app(
    served_app: Callable[..., Flask], trusted_ca: trustme.CA, dns_server: DnsServer, tmp_path: Path
) -> Flask:
    """Everything set up well: https, DKIM published, SPF, DMARC p=reject, MX."""
    key, p_value = dkim_key(tmp_path)
    publish_good_records(dns_server, p_value)
    return served_app(
        server_context(trusted_ca),
        SECRET_KEY=STRONG_SECRET,
        DNS_SERVER=dns_server.address,
        DKIM_DOMAIN=DOMAIN,
        DKIM_SELECTOR="news",
        DKIM_PRIVATE_KEY=str(key),
    )


def test_doctor_exits_0_when_all_is_well_and_prints_aligned_lines(healthy_app: Flask) -> None:
    result = healthy_app.test_cli_runner().invoke(args=["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("OK       settings.secret-key ")
    columns = {
        re.match(r"\S+ +\S+ +", line).end()  # type: ignore[union-attr]
        for line in lines
        if line.startswith("OK ")
    }
    assert len(columns) == 1  # the findings start in one column
    assert "service.one-click-unsubscribe" in result.output
    assert lines[-1].endswith(" 0 WARN, 0 PROBLEM")


def test_doctor_json_lists_checks_and_a_summary_and_exits_1_on_a_problem(
    healthy_app: Flask, dns_server: DnsServer
) -> None:
    dns_server.records.pop((f"_dmarc.{DOMAIN}", "TXT"))
    dns_server.add_txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=none")
    healthy_app.config["POSTAL_ADDRESS"] = ""
    healthy_app.config["PRIVACY_POLICY_URL"] = None
    result = healthy_app.test_cli_runner().invoke(args=["doctor", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert set(report) == {"checks", "summary"}
    assert all(set(c) == {"area", "name", "status", "found", "to_do"} for c in report["checks"])
    statuses = {f"{c['area']}.{c['name']}": c["status"] for c in report["checks"]}
    assert statuses["dns.dmarc"] == "WARN" and statuses["settings.privacy-policy"] == "PROBLEM"
    assert report["summary"] == {
        "ok": list(statuses.values()).count("OK"),
        "warn": 2,
        "problem": 1,
        "exit_code": 1,
    }


def test_warnings_alone_exit_0(healthy_app: Flask, dns_server: DnsServer) -> None:
    dns_server.records[(f"_dmarc.{DOMAIN}", "TXT")] = ['"v=DMARC1; p=none"']
    result = healthy_app.test_cli_runner().invoke(args=["doctor"])
    assert result.exit_code == 0, result.output
    assert "WARN     dns.dmarc" in result.output and "-> read the aggregate" in result.output


def test_run_doctor_skips_the_list_when_the_schema_is_missing(
    make_app: Callable[..., Flask], tmp_path: Path, dns_server: DnsServer
) -> None:
    app = make_app(
        DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite'}", DNS_SERVER=dns_server.address
    )
    with app.app_context():
        checks = run_doctor(inputs_for(app))
    labels = by_label(checks)
    assert labels["service.schema"].found == "no schema"
    assert labels["list.readers"].status is Status.PROBLEM
    assert summary(checks)["exit_code"] == 1


@pytest.mark.slow  # the resolver keeps retrying for its whole lifetime (5 s) before giving up
def test_a_dns_server_that_does_not_answer_is_one_problem(settings: dict[str, Any]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    checks = dns_checks.check_dns({**settings, "DNS_SERVER": closed})
    assert [(c.label, c.status) for c in checks] == [("dns.spf", Status.PROBLEM)]
    assert "DNS did not answer" in checks[0].found and closed in checks[0].to_do


def test_an_https_twin_serving_the_site_is_found(
    settings: dict[str, Any],
    dns_server: DnsServer,
    http_servers: list[BaseWSGIServer],
    trusted_ca: trustme.CA,
) -> None:
    port = free_port()

    def blog(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert environ["HTTP_HOST"] == f"www.blog.test:{port}"  # asked by name, not address
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<p>the blog</p>"]

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trusted_ca.issue_cert("www.blog.test").configure_cert(context)
    http_servers.append(serve(blog, port, context))
    dns_server.add("www.blog.test", "A", "127.0.0.1")
    config = {
        **settings,
        "SITE_URL": f"https://blog.test:{port}",
        "ALLOWED_ORIGINS": [f"https://blog.test:{port}"],
        "DNS_SERVER": dns_server.address,
    }
    twin = by_label(settings_checks.check_allowed_origins(config))["settings.allowed-origins-twin"]
    assert twin.status is Status.WARN and "HTTP 200" in twin.found


# --- the worker and the bounce domain ---------------------------------------------------------


def test_worker_check_with_a_schedule_wants_a_running_worker(
    make_app: Callable[..., Flask], clock: Any
) -> None:
    import io

    from newsletter.worker import Worker

    app = make_app(DIGEST_SCHEDULE="0 8 * * fri", TIMEZONE="Europe/Berlin")
    with app.app_context():
        check = service_checks.check_worker(inputs_for(app))
    assert check.status is Status.PROBLEM and "never seen" in check.found
    assert "2026-11-06 08:00 Europe/Berlin" in check.found
    assert "newsletter worker" in check.to_do

    Worker(app, out=io.StringIO(), sleep=lambda s: None, worker_id="doctor:1:a").run_once()
    with app.app_context():
        check = service_checks.check_worker(inputs_for(app))
    assert check.status is Status.OK, check
    assert check.found == "1 running; next tick 2026-11-06 08:00 Europe/Berlin ('0 8 * * fri')"

    clock.advance(minutes=5)  # no heartbeat for five minutes: it has stopped
    with app.app_context():
        check = service_checks.check_worker(inputs_for(app))
    assert check.status is Status.PROBLEM and "last seen 2026-11-02T09:00:00Z" in check.found


def test_worker_check_without_a_schedule_is_ok(app: Flask) -> None:
    with app.app_context():
        check = service_checks.check_worker(inputs_for(app))
    assert check.status is Status.OK and "no schedule set" in check.found


def test_the_bounce_address_is_the_envelope_domain_for_spf_and_mx(
    dns_config: dict[str, Any], dns_server: DnsServer
) -> None:
    publish_good_records(dns_server)  # SPF and MX for the From domain only
    config = {**dns_config, "BOUNCE_ADDRESS": "bounces@bounce.example.net"}
    assert settings_checks.envelope_domain(config) == "bounce.example.net"
    assert settings_checks.envelope_domain(dns_config) == DOMAIN
    checks = run_dns(config)
    assert checks["dns.spf"].status is Status.PROBLEM
    assert "bounce.example.net" in checks["dns.spf"].found
    assert checks["dns.mx"].status is Status.PROBLEM
    assert "bounce.example.net MX" in checks["dns.mx"].to_do

    dns_server.add_txt("bounce.example.net", "v=spf1 ip4:192.0.2.0/24 -all")
    dns_server.add("bounce.example.net", "MX", "10 mail.example.com.")
    checks = run_dns(config)
    assert checks["dns.spf"].status is Status.OK and checks["dns.mx"].status is Status.OK
    assert "bounce.example.net receives mail" in checks["dns.mx"].found


@pytest.mark.parametrize(
    ("bounce_address", "dkim_domain", "status", "words"),
    [
        (f"bounces@{DOMAIN}", None, Status.WARN, f"only through SPF ({DOMAIN})"),
        (f"bounces@mail.{DOMAIN}", None, Status.WARN, f"only through SPF (mail.{DOMAIN})"),
        ("bounces@bounce.example.net", DOMAIN, Status.OK, f"DKIM d={DOMAIN}"),
        ("bounces@bounce.example.net", None, Status.PROBLEM, "envelope domain (bounce.example"),
    ],
)
def test_alignment_follows_the_bounce_domain(
    settings: dict[str, Any],
    bounce_address: str,
    dkim_domain: str | None,
    status: Status,
    words: str,
) -> None:
    check = settings_checks.check_alignment(
        {**settings, "BOUNCE_ADDRESS": bounce_address, "DKIM_DOMAIN": dkim_domain}
    )
    assert check.status is status and words in check.found
    if status is Status.PROBLEM:
        assert f"NEWSLETTER_BOUNCE_ADDRESS to an address on {DOMAIN}" in check.to_do

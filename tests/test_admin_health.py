"""The dashboard's Health page (issue 17): `newsletter doctor`'s checks, run when asked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.admin_helpers import signed_in
from tests.dns_server import DnsServer
from tests.smtp_sink import SmtpSink


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer().start()
    yield server
    server.stop()


def test_the_health_page_needs_a_signed_in_author(make_app: Any) -> None:
    client = make_app().test_client()
    assert client.get("/admin/health").status_code == 303
    assert client.post("/admin/health").status_code == 303  # to the sign-in page


def test_running_the_checks_needs_the_csrf_token(make_app: Any) -> None:
    client, _ = signed_in(make_app())
    assert client.post("/admin/health").status_code == 400
    assert "The checks have not run yet." in client.get("/admin/health").text


def test_the_checks_run_when_asked_and_the_overview_flags_problems(
    make_app: Any, smtp_sink: SmtpSink, dns_server: DnsServer
) -> None:
    # No records are published on the local DNS server: SPF, DKIM and DMARC are PROBLEMs.
    app = make_app(DNS_SERVER=dns_server.address)
    client, token = signed_in(app)
    assert "problems need you" not in client.get("/admin/").text
    page = client.post("/admin/health", data={"csrf_token": token}, follow_redirects=True).text
    assert dns_server.queries  # the checks asked the DNS server
    assert re.search(r"Last run: \d{4}-\d\d-\d\d \d\d:\d\d UTC", page)
    smtp = re.search(
        r'<section class="card" aria-labelledby="area-smtp">(.*?)</section>', page, re.S
    )
    assert smtp and 'class="check ok"' in smtp.group(1) and ">OK<" in smtp.group(1)
    dns = re.search(r'<section class="card" aria-labelledby="area-dns">(.*?)</section>', page, re.S)
    assert dns and 'class="check problem"' in dns.group(1) and ">PROBLEM<" in dns.group(1)
    assert "What to do:" in dns.group(1)
    assert "problem(s); what to do is under each" in page
    # Shown again from the stored run, without running the checks on a page load.
    queries = len(dns_server.queries)
    assert 'aria-labelledby="area-dns"' in client.get("/admin/health").text
    assert len(dns_server.queries) == queries
    overview = client.get("/admin/").text
    assert "problems need you" in overview

"""Settings checks: the secret key, https links, allowed origins, DMARC alignment, and the
postal address and privacy policy the footer and the consent text need."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from . import Check, ok, problem, warn

AREA = "settings"
DEMO_SECRET = "not-a-secret-demo-and-testing-only"
NEW_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
# 32 random URL-safe characters carry about 190 bits; anything much shorter or repetitive is
# guessable offline from one signed link, and then every reader's links can be forged.
STRONG_SECRET_LENGTH = 32
MIN_SECRET_LENGTH = 16
MIN_DISTINCT_CHARACTERS = 10


def check_settings(config: Mapping[str, Any]) -> list[Check]:
    """Every settings check, in the order the README lists them."""
    return [
        check_secret_key(config),
        check_public_url(config),
        *check_allowed_origins(config),
        check_alignment(config),
        check_postal_address(config),
        check_privacy_policy(config),
    ]


def check_secret_key(config: Mapping[str, Any]) -> Check:
    """The key that signs confirm and unsubscribe links must not be guessable."""
    key = str(config.get("SECRET_KEY") or "")
    change = (
        f"set NEWSLETTER_SECRET_KEY to the output of {NEW_SECRET} (links in emails "
        "already sent stop working when the key changes, so do it before the first send)"
    )
    if config.get("DEMO") and key == DEMO_SECRET:
        return ok(AREA, "secret-key", "the demo's built-in key (fine for the demo only)")
    if key == DEMO_SECRET:
        return problem(AREA, "secret-key", "the demo's built-in key, known to everyone", change)
    if len(key) < MIN_SECRET_LENGTH or len(set(key)) < MIN_DISTINCT_CHARACTERS:
        return problem(
            AREA,
            "secret-key",
            f"{len(key)} characters, {len(set(key))} distinct: easy to guess",
            change,
        )
    if len(key) < STRONG_SECRET_LENGTH:
        return warn(
            AREA,
            "secret-key",
            f"{len(key)} characters (at least {STRONG_SECRET_LENGTH} recommended)",
            change,
        )
    return ok(AREA, "secret-key", f"{len(key)} characters")


def check_public_url(config: Mapping[str, Any]) -> Check:
    """Links in emails over https: http links look phishy and one-click unsubscribe fails."""
    url = str(config["PUBLIC_URL"])
    if urlsplit(url).scheme == "https":
        return ok(AREA, "public-url", f"{url} uses https")
    if config.get("DEMO"):
        return ok(AREA, "public-url", f"{url} (http is fine for the demo)")
    return problem(
        AREA,
        "public-url",
        f"{url} is not https: unsubscribe links look phishy and "
        "mail clients' one-click unsubscribe is refused",
        "serve the service over https (a reverse proxy with a certificate, e.g. "
        "Caddy or nginx with Let's Encrypt) and set NEWSLETTER_PUBLIC_URL="
        f"https://{urlsplit(url).netloc}",
    )


def origin_of(url: str) -> str:
    """scheme://host[:port], lower case."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _allowed(config: Mapping[str, Any]) -> set[str]:
    # The service's own origin is always allowed (web.py), the others must be listed.
    return {*config["ALLOWED_ORIGINS"], origin_of(str(config["PUBLIC_URL"]))}


def _other_variant(origin: str) -> str | None:
    """The www./bare twin of an origin (https://www.a.com <-> https://a.com), if it has one."""
    parts = urlsplit(origin)
    host = parts.hostname or ""
    if not host or host.replace(".", "").isdigit() or host == "localhost" or ":" in host:
        return None
    twin = host[4:] if host.startswith("www.") else f"www.{host}"
    if "." not in twin:
        return None
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{twin}{port}"


def check_allowed_origins(config: Mapping[str, Any]) -> list[Check]:
    """The blog's sign-up form posts from SITE_URL's origin (and its www./bare twin, when the
    site answers there too): each must be allowed, or sign-ups fail silently."""
    origin = origin_of(str(config["SITE_URL"]))
    allowed = _allowed(config)
    setting = "NEWSLETTER_ALLOWED_ORIGINS"
    if origin not in allowed:
        listed = ",".join([*config["ALLOWED_ORIGINS"], origin])
        return [
            problem(
                AREA,
                "allowed-origins",
                f"the blog's origin {origin} (NEWSLETTER_SITE_URL) is not allowed: "
                "sign-up forms on the blog are refused",
                f"set {setting}={listed}",
            )
        ]
    checks = [ok(AREA, "allowed-origins", f"{origin} may post sign-ups")]
    twin = _other_variant(origin)
    if twin and twin not in allowed:
        answer = _answers_itself(twin, config)
        if answer:
            listed = ",".join([*config["ALLOWED_ORIGINS"], twin])
            checks.append(
                warn(
                    AREA,
                    "allowed-origins-twin",
                    f"the site also answers on {twin} ({answer}), which is not "
                    "allowed: a form on that address is refused",
                    f"set {setting}={listed}, or redirect {twin} to {origin}",
                )
            )
        else:
            checks.append(
                ok(
                    AREA,
                    "allowed-origins-twin",
                    f"{twin} does not serve the site itself (no address, no answer or a redirect)",
                )
            )
    return checks


def _answers_itself(origin: str, config: Mapping[str, Any]) -> str | None:
    """``HTTP <status>`` when ``origin`` serves pages itself (not a redirect), else None.

    The name is looked up through the doctor's DNS server (NEWSLETTER_DNS_SERVER) like every
    other name it checks, so split DNS and the tests see the same answers."""
    from .dns_checks import DnsUnavailableError, addresses_of

    parts = urlsplit(origin)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    try:
        addresses = addresses_of(host, config)
    except DnsUnavailableError:
        return None
    for address in addresses:
        try:
            sock = socket.create_connection((address, port), timeout=5)
        except OSError:
            continue
        connection: http.client.HTTPConnection
        try:
            if https:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
                connection = http.client.HTTPSConnection(host, port, timeout=5)
            else:
                connection = http.client.HTTPConnection(host, port, timeout=5)
            connection.sock = sock  # already connected (to the address our DNS gave)
            connection.request("GET", "/", headers={"Host": parts.netloc})
            status = connection.getresponse().status
        except (OSError, http.client.HTTPException):
            sock.close()
            continue
        connection.close()
        return None if 300 <= status < 400 else f"HTTP {status}"
    return None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def envelope_domain(config: Mapping[str, Any]) -> str:
    """The domain of the envelope sender (Return-Path), where bounces go and SPF is checked:
    NEWSLETTER_BOUNCE_ADDRESS's domain when it is set (every message then goes out from
    bounces+TOKEN@ there), else MAIL_FROM's. The SPF, MX and alignment checks follow it."""
    return _domain(str(config.get("BOUNCE_ADDRESS") or config["MAIL_FROM"]))


def aligned(domain: str, other: str) -> bool:
    """DMARC's relaxed alignment, approximated without the public suffix list: the same
    domain, or one a subdomain of the other."""
    return domain == other or domain.endswith(f".{other}") or other.endswith(f".{domain}")


def check_alignment(config: Mapping[str, Any]) -> Check:
    """DMARC passes only when the From domain aligns with the DKIM domain or with the
    envelope (bounce) domain that SPF checks."""
    from_domain = _domain(str(config["MAIL_FROM"]))
    if "." not in from_domain:
        if config.get("DEMO"):
            return ok(AREA, "from-domain", f"{from_domain} (a local name is fine for the demo)")
        return problem(
            AREA,
            "from-domain",
            f"NEWSLETTER_MAIL_FROM={config['MAIL_FROM']} is on a local name",
            "set NEWSLETTER_MAIL_FROM to an address on your own domain, e.g. news@yourblog.com",
        )
    dkim_domain = str(config.get("DKIM_DOMAIN") or "").lower()
    bounce = envelope_domain(config)
    found = []
    if dkim_domain and aligned(from_domain, dkim_domain):
        found.append(f"DKIM d={dkim_domain}")
    if aligned(from_domain, bounce):
        found.append(f"envelope {bounce} (SPF)")
    if not found:
        return problem(
            AREA,
            "from-domain",
            f"From domain {from_domain} aligns with neither the DKIM domain "
            f"({dkim_domain or 'none'}) nor the envelope domain ({bounce}): DMARC "
            "fails",
            f"set NEWSLETTER_DKIM_DOMAIN={from_domain} (with its selector and key)"
            + (
                f", or NEWSLETTER_BOUNCE_ADDRESS to an address on {from_domain}"
                if config.get("BOUNCE_ADDRESS")
                else ""
            ),
        )
    if not dkim_domain:
        return warn(
            AREA,
            "from-domain",
            f"From domain {from_domain} aligns only through SPF ({bounce}); mail is not "
            "DKIM-signed here",
            "set NEWSLETTER_DKIM_DOMAIN, NEWSLETTER_DKIM_SELECTOR and "
            "NEWSLETTER_DKIM_PRIVATE_KEY (Gmail and Yahoo want DKIM for bulk mail), "
            "unless your relay signs for this domain",
        )
    if dkim_domain and not aligned(from_domain, dkim_domain):
        return warn(
            AREA,
            "from-domain",
            f"DKIM signs for {dkim_domain}, not {from_domain}; DMARC aligns through "
            "SPF only, which forwarding breaks",
            f"set NEWSLETTER_DKIM_DOMAIN={from_domain} and publish its key",
        )
    return ok(AREA, "from-domain", f"From domain {from_domain} aligns with {' and '.join(found)}")


def check_postal_address(config: Mapping[str, Any]) -> Check:
    """CAN-SPAM wants a postal address in every bulk message's footer."""
    address = str(config.get("POSTAL_ADDRESS") or "").strip()
    if address:
        return ok(AREA, "postal-address", "set (shown in every footer)")
    if config.get("DEMO"):
        return ok(AREA, "postal-address", "not set (fine for the demo)")
    return warn(
        AREA,
        "postal-address",
        "not set: footers carry no postal address (CAN-SPAM)",
        "set NEWSLETTER_POSTAL_ADDRESS to a postal address or PO box",
    )


def check_privacy_policy(config: Mapping[str, Any]) -> Check:
    """The consent text refers readers to a privacy policy (GDPR): it must exist."""
    url = config.get("PRIVACY_POLICY_URL")
    if url:
        return ok(AREA, "privacy-policy", f"{url}")
    if config.get("DEMO"):
        return ok(AREA, "privacy-policy", "not set (fine for the demo)")
    return problem(
        AREA,
        "privacy-policy",
        "not set: the consent text points readers to a privacy policy they cannot find (GDPR)",
        "publish a privacy policy and set NEWSLETTER_PRIVACY_POLICY_URL to it",
    )

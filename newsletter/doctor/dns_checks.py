"""DNS checks for the sending domain (dnspython): SPF, DKIM, DMARC and MX.

Lookups go to NEWSLETTER_DNS_SERVER (host:port) when set, for split DNS and for tests, and to
the system's resolvers otherwise."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dns.exception
import dns.rdatatype
import dns.resolver
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from ..errors import NewsletterError
from . import Check, ok, problem, warn
from .settings_checks import envelope_domain

AREA = "dns"
SPF_LOOKUP_LIMIT = 10  # RFC 7208 4.6.4
_LOOKUP_MECHANISMS = {"include", "a", "mx", "ptr", "exists"}
_SPF_MECHANISMS = _LOOKUP_MECHANISMS | {"all", "ip4", "ip6"}
_QUALIFIERS = "+-~?"


class DnsUnavailableError(NewsletterError):
    """The DNS server did not answer (as opposed to answering "no such record")."""


def dns_server(config: Mapping[str, Any]) -> tuple[str, int] | None:
    """NEWSLETTER_DNS_SERVER as (host, port), or None for the system's resolvers."""
    value = str(config.get("DNS_SERVER") or "").strip()
    if not value:
        return None
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "53")
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(
            f"NEWSLETTER_DNS_SERVER: expected host:port such as 127.0.0.1:53, got {value!r}"
        )
    return host, int(port)


def make_resolver(config: Mapping[str, Any]) -> dns.resolver.Resolver:
    """A resolver for the configured server (or the system's), with a short patience."""
    server = dns_server(config)
    if server is None:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.lifetime = 5.0
    return resolver


def _lookup(resolver: dns.resolver.Resolver, name: str, kind: str) -> list[Any]:
    """The records of ``kind`` at ``name``; [] when there are none; DnsUnavailableError when the
    server does not answer."""
    try:
        return list(resolver.resolve(name, kind, search=False))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as err:
        raise DnsUnavailableError(
            f"no answer to {name} {kind} within {resolver.lifetime:g} s"
            if isinstance(err, dns.exception.Timeout)
            else f"no usable answer to {name} {kind}"
        ) from err


def txt_records(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """TXT records at ``name``, each with its strings joined (RFC 7208 3.3)."""
    return [b"".join(r.strings).decode("utf-8", "replace") for r in _lookup(resolver, name, "TXT")]


def addresses_of(host: str, config: Mapping[str, Any]) -> list[str]:
    """IPv4 and IPv6 addresses of ``host`` through the doctor's DNS server."""
    resolver = make_resolver(config)
    return [r.address for kind in ("A", "AAAA") for r in _lookup(resolver, host, kind)]


def check_dns(config: Mapping[str, Any]) -> list[Check]:
    """SPF, DKIM, DMARC and MX for the From and envelope domains."""
    from_domain = str(config["MAIL_FROM"]).rpartition("@")[2].lower()
    if "." not in from_domain:
        return [
            ok(AREA, "records", f"{from_domain} is a local name: no DNS to check")
            if config.get("DEMO")
            else problem(
                AREA,
                "records",
                f"{from_domain} is a local name: receivers cannot check SPF, DKIM or DMARC for it",
                "set NEWSLETTER_MAIL_FROM to an address on your own domain",
            )
        ]
    try:
        resolver = make_resolver(config)
    except ValueError as err:
        return [problem(AREA, "server", str(err), "fix NEWSLETTER_DNS_SERVER or unset it")]
    bounce = envelope_domain(config)
    checks: list[Check] = []
    lookups: list[tuple[str, Callable[[], Check]]] = [
        ("spf", lambda: check_spf(resolver, bounce)),
        ("dkim", lambda: check_dkim(resolver, config)),
        ("dmarc", lambda: check_dmarc(resolver, from_domain)),
        ("mx", lambda: check_mx(resolver, bounce)),
    ]
    for name, check in lookups:
        try:
            checks.append(check())
        except DnsUnavailableError as err:
            # One silent server makes every later lookup wait as long: say it once and stop.
            where = config.get("DNS_SERVER") or "the system's DNS resolvers"
            checks.append(
                problem(
                    AREA,
                    name,
                    f"DNS did not answer: {err}",
                    f"check the network and {where} (NEWSLETTER_DNS_SERVER sets "
                    "the server the doctor asks)",
                )
            )
            break
    return checks


# --- SPF -------------------------------------------------------------------------------------


class SpfError(NewsletterError):
    """The SPF record cannot be evaluated (a permerror)."""


def _spf_record(resolver: dns.resolver.Resolver, domain: str) -> str | None:
    records = [
        t
        for t in txt_records(resolver, domain)
        if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")
    ]
    if len(records) > 1:
        raise SpfError(
            f"{domain} has {len(records)} SPF records; receivers treat that as an "
            "error (RFC 7208 3.2)"
        )
    return records[0] if records else None


def count_spf_lookups(
    resolver: dns.resolver.Resolver, domain: str, seen: frozenset[str] = frozenset()
) -> int:
    """DNS lookups an SPF check of ``domain`` costs: include, a, mx, ptr, exists and redirect,
    followed through includes and redirects (RFC 7208 4.6.4). Raises SpfError."""
    if domain in seen:
        raise SpfError(f"the SPF record of {domain} includes itself (a loop)")
    record = _spf_record(resolver, domain)
    if record is None:
        raise SpfError(f"{domain} has no SPF record")
    total = 0
    for term in record.split()[1:]:
        name, value = _spf_term(term, domain)
        if name in _LOOKUP_MECHANISMS or name == "redirect":
            total += 1
        if name in ("include", "redirect"):
            if not value:
                raise SpfError(f"{term!r} in the SPF record of {domain} names no domain")
            if "%" in value:
                continue  # a macro: its target depends on the sender; counted, not followed
            try:
                total += count_spf_lookups(resolver, value.lower(), seen | {domain})
            except SpfError as err:
                raise SpfError(f"{term} in the SPF record of {domain}: {err}") from err
    return total


def _spf_term(term: str, domain: str) -> tuple[str, str]:
    """(mechanism or modifier name, its value), or SpfError for something not SPF."""
    if "=" in term and not term.startswith(tuple(_QUALIFIERS)) and ":" not in term.split("=")[0]:
        name, _, value = term.partition("=")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
            raise SpfError(f"{term!r} in the SPF record of {domain} is not a valid modifier")
        return name.lower(), value
    bare = term[1:] if term[:1] in _QUALIFIERS else term
    name, _, value = _split_mechanism(bare)
    if name.lower() not in _SPF_MECHANISMS:
        raise SpfError(f"{term!r} in the SPF record of {domain} is not an SPF mechanism")
    return name.lower(), value


def _split_mechanism(bare: str) -> tuple[str, str, str]:
    for i, char in enumerate(bare):
        if char in ":/":
            return bare[:i], char, bare[i + 1 :] if char == ":" else ""
    return bare, "", ""


def check_spf(resolver: dns.resolver.Resolver, domain: str) -> Check:
    """An SPF record that exists, parses, does not pass everyone and stays within 10 lookups."""
    example = f'{domain} TXT "v=spf1 mx include:<your relay\'s SPF domain> ~all"'
    try:
        record = _spf_record(resolver, domain)
        if record is None:
            return problem(
                AREA,
                "spf",
                f"{domain} has no SPF record: receivers cannot tell your server from a forger",
                f"add {example} (your mail provider names its include)",
            )
        lookups = count_spf_lookups(resolver, domain)
    except SpfError as err:
        return problem(
            AREA, "spf", f"the SPF record is broken: {err}", f"fix it so it reads like {example}"
        )
    if re.search(r"(^|\s)\+?all(\s|$)", record):
        return problem(
            AREA,
            "spf",
            f'"{record}" lets every server on the internet send as {domain}',
            "end the record with ~all or -all, not +all",
        )
    if lookups > SPF_LOOKUP_LIMIT:
        return problem(
            AREA,
            "spf",
            f'"{record}" needs {lookups} DNS lookups (the limit is '
            f"{SPF_LOOKUP_LIMIT}), so receivers treat it as an error",
            "remove includes you no longer send through, or replace some with their "
            "ip4:/ip6: ranges, until at most 10 lookups remain",
        )
    return ok(AREA, "spf", f'"{record}" ({lookups} of {SPF_LOOKUP_LIMIT} lookups)')


# --- DKIM ------------------------------------------------------------------------------------


def dkim_public_key(private_pem: bytes) -> tuple[str, bytes]:
    """The base64 p= value (SubjectPublicKeyInfo, DER) of a PEM RSA private key, and its DER."""
    from ..dkim import load_rsa_key

    public = load_rsa_key(private_pem, "NEWSLETTER_DKIM_PRIVATE_KEY").public_key()
    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii"), der


def _published_key(p_value: str) -> bytes:
    """The DER SubjectPublicKeyInfo of a published p= value; ValueError when it is no key."""
    key = load_der_public_key(base64.b64decode(p_value, validate=True))
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = re.sub(r"\s+", "", value)
    return tags


def check_dkim(resolver: dns.resolver.Resolver, config: Mapping[str, Any]) -> Check:
    """The selector's TXT record exists and holds the public half of the configured key."""
    from ..dkim import DkimError

    domain, selector = config.get("DKIM_DOMAIN"), config.get("DKIM_SELECTOR")
    if not domain or not selector:
        return ok(
            AREA,
            "dkim",
            "not signing here (NEWSLETTER_DKIM_* unset; see "
            "settings.from-domain): nothing to look up",
        )
    name = f"{selector}._domainkey.{domain}"
    try:
        p_value, public = dkim_public_key(Path(str(config["DKIM_PRIVATE_KEY"])).read_bytes())
    except (OSError, DkimError) as err:
        return problem(
            AREA,
            "dkim",
            f"cannot read the key in NEWSLETTER_DKIM_PRIVATE_KEY: {err}",
            "point NEWSLETTER_DKIM_PRIVATE_KEY at a PEM file holding an RSA private key",
        )
    wanted = f'{name} TXT "v=DKIM1; k=rsa; p={p_value}"'
    records = [t for t in txt_records(resolver, name) if "p=" in t]
    if not records:
        return problem(
            AREA,
            "dkim",
            f"no DKIM key at {name}: receivers cannot verify the signature",
            f"add {wanted}",
        )
    tags = _tags(records[0])
    try:
        published = _published_key(tags.get("p", ""))
    except (ValueError, TypeError):
        return problem(AREA, "dkim", f"the key at {name} does not parse", f"replace it: {wanted}")
    if published != public:
        return problem(
            AREA,
            "dkim",
            f"the key at {name} does not match NEWSLETTER_DKIM_PRIVATE_KEY: every signature fails",
            f"replace the record with {wanted} (or point the setting at the key "
            "that record belongs to)",
        )
    if "y" in tags.get("t", "").split(":"):
        return warn(
            AREA,
            "dkim",
            f"{name} matches the key but is in test mode (t=y)",
            "remove t=y from the record once signed mail verifies",
        )
    return ok(AREA, "dkim", f"{name} holds the public half of the configured key")


# --- DMARC and MX ----------------------------------------------------------------------------


def check_dmarc(resolver: dns.resolver.Resolver, domain: str) -> Check:
    """A DMARC record at the From domain (or its parent) that parses; p=none is a start."""
    example = f'_dmarc.{domain} TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"'
    labels = domain.split(".")
    # The organisational domain's policy covers subdomains; without the public suffix list
    # the parents down to two labels stand in for it.
    for start in range(len(labels) - 1):
        name = "_dmarc." + ".".join(labels[start:])
        records = [t for t in txt_records(resolver, name) if t.lower().startswith("v=dmarc1")]
        if records:
            break
    else:
        return problem(
            AREA,
            "dmarc",
            f"no DMARC record for {domain}: Gmail and Yahoo reject "
            "or spam-folder bulk mail without one",
            f"add {example}",
        )
    if len(records) > 1:
        return problem(
            AREA,
            "dmarc",
            f"{name} has {len(records)} DMARC records (receivers ignore them all)",
            "keep exactly one",
        )
    tags = _tags(records[0])
    policy = tags.get("p", "").lower()
    if not re.fullmatch(
        r"v=dmarc1\s*(;|$)", records[0].split(";")[0].strip().lower() + ";"
    ) or policy not in ("none", "quarantine", "reject"):
        return problem(
            AREA,
            "dmarc",
            f'"{records[0]}" at {name} does not parse (it needs '
            "v=DMARC1 first and p=none, quarantine or reject)",
            f"replace it with {example}",
        )
    if policy == "none":
        return warn(
            AREA,
            "dmarc",
            f'"{records[0]}" at {name}: p=none only monitors',
            "read the aggregate reports (rua=); once they show your mail passing, move "
            "to p=quarantine, then p=reject",
        )
    return ok(AREA, "dmarc", f'"{records[0]}" at {name}')


def check_mx(resolver: dns.resolver.Resolver, domain: str) -> Check:
    """The envelope (bounce) domain receives mail: bounces and replies need somewhere to go."""
    records = _lookup(resolver, domain, "MX")
    hosts = sorted((r.preference, str(r.exchange).rstrip(".")) for r in records)
    if not hosts or hosts == [(0, "")]:
        return problem(
            AREA,
            "mx",
            f"{domain} has no MX record: bounces have nowhere to go, "
            "and some receivers refuse senders that cannot receive",
            f"add {domain} MX 10 <your mail server's hostname> (your mail provider gives it)",
        )
    return ok(AREA, "mx", f"{domain} receives mail at " + ", ".join(h for _, h in hosts))

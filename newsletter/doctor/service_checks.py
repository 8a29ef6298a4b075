"""Checks of the running service (healthz and one-click unsubscribe answered at PUBLIC_URL,
the schema, the worker) and of the reader list (imports without double opt-in, bounces)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from sqlalchemy import exists, func, select
from sqlalchemy.exc import SQLAlchemyError

from ..models import CONFIRMED, CONFIRMED_EVENT, IMPORTED, ConsentEvent, Subscriber
from ..tokens import PROBE_SUBSCRIBER_ID
from . import Check, DoctorInputs, ok, problem, warn

AREA = "service"
LIST_AREA = "list"
HTTP_TIMEOUT = 10.0
# Readers imported without confirming are the ones who mark mail as spam: past this share of
# the list, receivers' complaint thresholds (Gmail: 0.3%) come within reach.
IMPORTED_SHARE_WARN = 0.25


def check_service(inputs: DoctorInputs) -> list[Check]:
    """healthz, one-click unsubscribe, the schema, and the worker."""
    public_url = str(inputs.config["PUBLIC_URL"])
    return [
        check_healthz(public_url),
        check_one_click(public_url, inputs.unsubscribe_token(PROBE_SUBSCRIBER_ID)),
        check_schema(inputs),
        check_worker(inputs),
    ]


def _request(url: str, data: bytes | None = None) -> tuple[int | None, bytes, str]:
    """(status, body, error): a status for any HTTP answer, an error when there was none."""
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if data:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
            return response.status, response.read(), ""
    except urllib.error.HTTPError as err:
        return err.code, err.read(), ""
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return None, b"", str(reason)


def check_healthz(public_url: str) -> Check:
    """PUBLIC_URL/healthz answers from this machine: readers' links reach the service."""
    url = f"{public_url}/healthz"
    status, body, error = _request(url)
    start = (
        "start the web server (e.g. gunicorn app:app) behind NEWSLETTER_PUBLIC_URL, or fix "
        "NEWSLETTER_PUBLIC_URL to where it runs"
    )
    if status is None:
        return problem(AREA, "healthz", f"{url} did not answer: {error}", start)
    try:
        healthy = status == 200 and json.loads(body).get("ok") is True
    except (ValueError, AttributeError):
        healthy = False
    if not healthy:
        return problem(
            AREA,
            "healthz",
            f"{url} answered {status}, not the service's health "
            f"report: {body[:120].decode('utf-8', 'replace')!r}",
            f"{start}; a 503 means the service cannot reach its database",
        )
    return ok(AREA, "healthz", f"{url} answers 200")


def check_one_click(public_url: str, token: str) -> Check:
    """An RFC 8058 one-click POST on the probe token (no reader has its id) answers 200."""
    url = f"{public_url}/unsubscribe/{token}"
    status, body, error = _request(url, b"List-Unsubscribe=One-Click")
    if status == 200:
        return ok(AREA, "one-click-unsubscribe", "a one-click POST on a test link answers 200")
    found = (
        f"did not answer: {error}"
        if status is None
        else f"answered {status}: {body[:120].decode('utf-8', 'replace')!r}"
    )
    to_do = (
        "check that the server at NEWSLETTER_PUBLIC_URL runs this version with the same "
        "NEWSLETTER_SECRET_KEY, and that the proxy passes POST to /unsubscribe/"
    )
    return problem(
        AREA,
        "one-click-unsubscribe",
        f"a one-click POST to {public_url}/unsubscribe/... {found}",
        to_do,
    )


def check_schema(inputs: DoctorInputs) -> Check:
    """The database's schema is at this version's newest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from ..db import alembic_config

    try:
        connection = inputs.session.connection()
        current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as err:
        inputs.session.rollback()
        return problem(
            AREA,
            "schema",
            f"cannot read the database: {err.__class__.__name__}: {str(err).splitlines()[0]}",
            "check NEWSLETTER_DATABASE_URL and that the database server runs",
        )
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if current == head:
        return ok(AREA, "schema", f"current (revision {head})")
    found = "no schema" if current is None else f"revision {current}, this version needs {head}"
    return problem(AREA, "schema", found, "run `newsletter init-db` (it upgrades in place)")


def check_worker(inputs: DoctorInputs) -> Check:
    """With NEWSLETTER_DIGEST_SCHEDULE set, a worker must be running to send at the ticks:
    PROBLEM when no worker's heartbeat is newer than a few poll intervals, else OK with the
    next tick."""
    from ..schedule import next_tick, parse_schedule, zone_named
    from ..worker import worker_status

    config = inputs.config
    text = str(config.get("DIGEST_SCHEDULE") or "").strip()
    if not text:
        return ok(AREA, "worker", "no schedule set: nothing runs on its own, so nothing to check")
    now = inputs.clock()
    try:
        status = worker_status(inputs.session, now, float(config.get("WORKER_POLL_SECONDS") or 5))
    except SQLAlchemyError as err:
        inputs.session.rollback()
        return problem(
            AREA,
            "worker",
            f"cannot read the workers' heartbeats: {str(err).splitlines()[0]}",
            "run `newsletter init-db` to bring the schema up to date",
        )
    zone = zone_named(str(config.get("TIMEZONE") or "UTC"))
    upcoming = next_tick(parse_schedule(text), zone, now)
    when = f"{upcoming.astimezone(zone):%Y-%m-%d %H:%M} {zone.key}"
    if not status["running"]:
        seen = f"last seen {status['last_seen']}" if status.get("last_seen") else "never seen"
        return problem(
            AREA,
            "worker",
            f"NEWSLETTER_DIGEST_SCHEDULE={text!r} is set but no worker is running ({seen}): "
            f"the digest due {when} will not go out",
            "start `newsletter worker` (or `newsletter serve`, which runs one) under a "
            "supervisor such as systemd, and check its log",
        )
    return ok(AREA, "worker", f"{status['status']}; next tick {when} ({text!r})")


def check_list(inputs: DoctorInputs) -> list[Check]:
    """The reader list: imports without double opt-in, and bounces and complaints."""
    return [check_imported(inputs), check_bounces(inputs)]


def check_imported(inputs: DoctorInputs) -> Check:
    """The share of confirmed readers who came in by import and never confirmed themselves."""
    session = inputs.session
    event = ConsentEvent
    imported = exists().where(event.subscriber_id == Subscriber.id, event.kind == IMPORTED)
    confirmed_themselves = exists().where(
        event.subscriber_id == Subscriber.id, event.kind == CONFIRMED_EVENT
    )
    confirmed = select(func.count()).select_from(Subscriber).where(Subscriber.status == CONFIRMED)
    total = session.scalar(confirmed) or 0
    unconfirmed = session.scalar(confirmed.where(imported, ~confirmed_themselves)) or 0
    if not total:
        return ok(LIST_AREA, "imported", "no confirmed readers yet")
    share = unconfirmed / total
    found = (
        f"{unconfirmed} of {total} confirmed readers ({share:.0%}) were imported without "
        "double opt-in"
    )
    if share >= IMPORTED_SHARE_WARN:
        return warn(
            LIST_AREA,
            "imported",
            found,
            "send them a re-permission message first, or import with "
            "--require-confirmation; readers who never asked complain most",
        )
    return ok(LIST_AREA, "imported", found)


def check_bounces(inputs: DoctorInputs) -> Check:
    """The last campaign's bounce and complaint rates, when bounce processing is set up:
    WARN past NEWSLETTER_HARD_BOUNCE_RATE_WARNING or NEWSLETTER_COMPLAINT_RATE_WARNING,
    PROBLEM past 5% bounces or 0.3% complaints (Gmail's limit)."""
    from ..bounces import figures as bounce_figures

    if not bounce_figures.bounce_processing_enabled(inputs.config):
        return ok(LIST_AREA, "bounces", "bounce processing is not set up: no rates to check")
    last = bounce_figures.last_campaign_figures(inputs.session, inputs.config)
    if last is None:
        return ok(LIST_AREA, "bounces", "no campaign sent yet")
    complaints = "complaint" if last.complaints == 1 else "complaints"
    found = (
        f"campaign {last.campaign_id}: {last.hard_bounces} hard bounces "
        f"({last.hard_bounce_rate:.1%}), {last.complaints} {complaints} "
        f"({last.complaint_rate:.1%}) of {last.sent} sent"
    )
    if not last.warnings:
        return ok(LIST_AREA, "bounces", found)
    to_do = " ".join(last.warnings)
    if (
        last.complaint_rate > bounce_figures.COMPLAINT_RATE_PROBLEM
        or last.hard_bounce_rate > bounce_figures.HARD_BOUNCE_RATE_PROBLEM
    ):
        return problem(LIST_AREA, "bounces", found, to_do)
    return warn(LIST_AREA, "bounces", found, to_do)

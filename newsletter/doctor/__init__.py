"""`newsletter doctor`: is this set up to reach inboxes?

Each check looks at one thing (a setting, the SMTP server, a DNS record, the running service,
the reader list) and returns a :class:`Check`: OK, WARN or PROBLEM, what it found, and what to
do. :func:`run_doctor` runs them all; the CLI prints them and the dashboard may show them. No
check changes a reader or sends mail unless asked to (``send_test``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session


class Status(StrEnum):
    """How a check came out; only PROBLEM makes the doctor exit 1."""

    OK = "OK"
    WARN = "WARN"
    PROBLEM = "PROBLEM"


@dataclass(frozen=True)
class Check:
    """One finding: ``area`` (settings, smtp, dns, service, list), a short ``name``, the
    ``status``, what was ``found`` and, unless all is well, what ``to_do``."""

    area: str
    name: str
    status: Status
    found: str
    to_do: str = ""

    @property
    def label(self) -> str:
        """``area.name``, as printed."""
        return f"{self.area}.{self.name}"

    def as_dict(self) -> dict[str, str]:
        """A JSON-ready form."""
        data = asdict(self)
        data["status"] = str(self.status)
        return data


def ok(area: str, name: str, found: str) -> Check:
    """An OK line."""
    return Check(area, name, Status.OK, found)


def warn(area: str, name: str, found: str, to_do: str) -> Check:
    """A WARN line: works, but worth fixing."""
    return Check(area, name, Status.WARN, found, to_do)


def problem(area: str, name: str, found: str, to_do: str) -> Check:
    """A PROBLEM line: mail will not arrive, or not as it should."""
    return Check(area, name, Status.PROBLEM, found, to_do)


@dataclass(frozen=True)
class DoctorInputs:
    """What the checks look at: the settings, the database, the clock and a token maker."""

    config: Mapping[str, Any]
    session: Session
    clock: Callable[[], datetime]
    unsubscribe_token: Callable[[int], str]


def run_doctor(inputs: DoctorInputs, *, send_test: str | None = None) -> list[Check]:
    """Run every check in order (settings, smtp, dns, service, list) and return the findings."""
    from .dns_checks import check_dns
    from .service_checks import check_list, check_service
    from .settings_checks import check_settings
    from .smtp_checks import check_smtp

    checks: list[Check] = []
    checks += check_settings(inputs.config)
    checks += check_smtp(inputs.config, send_test=send_test)
    checks += check_dns(inputs.config)
    service = check_service(inputs)
    checks += service
    schema = next(c for c in service if c.name == "schema")
    if schema.status is Status.OK:
        checks += check_list(inputs)
    else:
        checks.append(
            problem(
                "list", "readers", "not checked: the database schema is not current", schema.to_do
            )
        )
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing is a PROBLEM (WARNs allowed), 1 otherwise."""
    return 1 if any(c.status is Status.PROBLEM for c in checks) else 0


def summary(checks: list[Check]) -> dict[str, int]:
    """How many checks came out each way, and the exit code."""
    counts = {str(s).lower(): sum(c.status is s for c in checks) for s in Status}
    return {**counts, "exit_code": exit_code(checks)}

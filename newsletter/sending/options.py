"""Send options, the report of a run, progress callbacks and the send errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import timedelta
from typing import Any, Protocol

from ..errors import NewsletterError
from ..models import Campaign, Delivery, Subscriber

log = logging.getLogger(__name__)

_deliveries = Delivery.__table__
_subscribers = Subscriber.__table__
_campaigns = Campaign.__table__

DIGEST = "digest"
# Bulk statements name at most this many ids (SQLite allows 32766 parameters; keep it modest).
ID_CHUNK = 500
# In one run a deferred delivery is retried after retry_delay, 2x and 4x that; later tries
# wait for the next run.
IN_RUN_RETRIES = 3
MAX_BACKOFF = timedelta(hours=6)
JOURNAL_GLOB = "journal-*.log"
# The brake: this many identical refusals in a row, at this many mail domains or more, mean
# the server (or the account on it) is broken, not the readers.
BRAKE_RUN = 20
BRAKE_DOMAINS = 3
# What a refusal says with the reader's own address taken out, so the same fault compares equal.
_ADDRESS_IN_REPLY = re.compile(r"<?[^\s<>@]+@[^\s<>@]+>?")
# How long a second process waits for another to finish composing a campaign (PostgreSQL).
COMPOSE_WAIT = 300.0


class SendError(NewsletterError):
    """A send could not start or had to stop; the message says what to do next."""


class SendInProgressError(SendError):
    """Another run holds the send lock for this database (SQLite), or is still composing a
    campaign after a long wait (PostgreSQL)."""


class CampaignNotFoundError(SendError):
    """No campaign has that id."""


@dataclass(frozen=True)
class SendOptions:
    """How to send: parallel connections, rate cap and retry timing."""

    connections: int = 4
    rate: float | None = None  # messages per second over all connections; None: no cap
    batch_size: int = 500  # rows claimed and status writes folded per batch
    retry_delay: float = 60.0  # first in-run retry of a 4xx, in seconds; doubles each time
    give_up_after: timedelta = timedelta(hours=72)  # a 4xx after this long deferred fails it
    reconnect_delay: float = 1.0  # first wait after a dropped connection; doubles
    max_connection_failures: int = 5  # in a row on one connection, then the run stops
    # How long a claimed batch stays ours without renewal. A live sender renews it every
    # sixth of that and sends nothing more once half of it has passed without a renewal, so a
    # claim runs out only for a sender that is dead (or frozen longer than that).
    lease: timedelta = timedelta(minutes=2)
    flush_interval: float = 0.5  # seconds between status writes while sending
    # A reader's status is read again at most this many seconds before their message is
    # handed to SMTP (one indexed query for every message waiting), so one who unsubscribes
    # after their batch was claimed is skipped. 0: read it after the sender is ready for it.
    status_check_age: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> SendOptions:
        """Options from ``NEWSLETTER_SEND_*`` / ``DEFER_*`` settings; ``None`` overrides ignored."""
        options = cls(
            connections=int(config.get("SEND_CONNECTIONS") or 4),
            rate=float(config["SEND_RATE"]) if config.get("SEND_RATE") else None,
            retry_delay=float(config.get("DEFER_RETRY_SECONDS") or 60.0),
            give_up_after=timedelta(hours=float(config.get("DEFER_GIVE_UP_HOURS") or 72.0)),
            lease=timedelta(seconds=float(config.get("SEND_LEASE_SECONDS") or 120.0)),
        )
        return replace(options, **{k: v for k, v in overrides.items() if v is not None})

    def claim_size(self) -> int:
        """Rows per claim: smaller under a low rate, so a claim is worked off in seconds and a
        reader who unsubscribes meanwhile is noticed soon."""
        if self.rate is None:
            return self.batch_size
        return max(self.connections * 2, min(self.batch_size, int(self.rate * 10)))


@dataclass
class SendReport:
    """What one run did for one campaign."""

    campaign_id: int
    subject: str
    total: int = 0  # deliveries this run set out to send
    sent: int = 0
    failed: int = 0
    deferred: int = 0  # still deferred when the run ended (waiting for a later run)
    skipped: int = 0
    left: int = 0  # still queued when the run ended (it stopped early)
    elapsed: float = 0.0
    error: str | None = None
    finished: bool = False  # the campaign has nothing left to try

    @property
    def rate(self) -> float:
        """Messages per second sent in this run."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Every delivery was sent or skipped (the command's exit status 0)."""
        return self.error is None and not (self.failed or self.deferred or self.left)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for a worker process to hand its report to the parent as JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SendReport:
        """The report :meth:`as_dict` gave (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


class Progress(Protocol):
    """Told how a run goes; called from the thread that called :func:`send_campaign`."""

    def start(self, report: SendReport) -> None: ...

    def update(self, done: int) -> None: ...

    def finish(self, report: SendReport) -> None: ...


class _NoProgress:
    def start(self, report: SendReport) -> None:
        pass

    def update(self, done: int) -> None:
        pass

    def finish(self, report: SendReport) -> None:
        pass

"""The engine: drains a campaign's deliveries over reused SMTP connections.

One class on purpose, at about 800 lines: ``CampaignSender`` is one run's state (the lease,
the queue to the sender threads, the outcomes waiting to be flushed, the counts the brake reads)
and its methods are the steps of that run sharing it. The pieces with a life of their own are
already apart: the ledger's SQL (ledger), the lock and journals (lock), pacing (pace), the
marks (marks), options and reports (options). The brake (``_brake``) keeps a streak of its
own, but what it decides reaches into the run: it takes back counts (``_uncount``), requeues
outcomes the flush writes and stops the run (``_halt``); moving it out would only pass that
state back and forth.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Any

from sqlalchemy import bindparam, func, literal_column, or_, select, update
from sqlalchemy.orm import Session

from ..bounces.verp import envelope_senders
from ..models import CONFIRMED, DEFERRED, FAILED, QUEUED, SENT, SKIPPED
from ..rendering import RenderedEmail
from ..services import Services
from ..smtp import (
    SmtpConfigError,
    SmtpOutcomeUnknownError,
    SmtpRejectedError,
    SmtpUnavailableError,
    Transport,
)
from .ledger import _chunks, _Outcome, _Work, backoff, mark_sent, settle_campaign
from .lock import Journal, SendLock, fold_journals
from .marks import _DatabaseMarks
from .messages import ReaderFactory, campaign_template, connect_transport
from .options import (
    _ADDRESS_IN_REPLY,
    BRAKE_DOMAINS,
    BRAKE_RUN,
    IN_RUN_RETRIES,
    Progress,
    SendError,
    SendOptions,
    SendReport,
    _deliveries,
    _subscribers,
    log,
)
from .pace import SendPace


class CampaignSender:
    """One run of one campaign: a feeding thread (the caller's, the only one touching the
    database except for the 250 marks on PostgreSQL) and ``connections`` sender threads, each
    with its own SMTP connection. Leases, the rate and the age of status checks are timed by
    ``monotonic`` (injected, so tests drive time instead of sleeping); ``pace`` is shared by its
    connections (by default one at ``options.rate``)."""

    def __init__(
        self,
        session: Session,
        services: Services,
        campaign: Any,
        lock: SendLock,
        options: SendOptions,
        progress: Progress,
        monotonic: Callable[[], float] = time.monotonic,
        pace: SendPace | None = None,
    ) -> None:
        self.session = session
        self.monotonic = monotonic
        self.services = services
        self.clock = services.clock
        self.campaign_id: int = campaign.id
        self.options = options
        self.progress = progress
        self.lock = lock
        self.shared = lock.shared  # other senders may be working on this campaign too
        # The envelope sender per reader: VERP when NEWSLETTER_BOUNCE_ADDRESS is set.
        self.envelope_sender = envelope_senders(services.config, campaign.id)
        rendered = RenderedEmail(subject=campaign.subject, html=campaign.html, text=campaign.text)
        self.template = campaign_template(services, rendered, campaign.created_at)
        self.reader = ReaderFactory(services, campaign.id, campaign.content_hash)
        self.report = SendReport(campaign_id=campaign.id, subject=campaign.subject)
        self.limiter = pace or SendPace(options.rate, monotonic)
        self.stop = threading.Event()
        self.work: queue.Queue[_Work | None] = queue.Queue(maxsize=8 * options.connections)
        self.outcomes: deque[_Outcome] = deque()  # appended by senders, drained by the feeder
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._retry_due: dict[int, float] = {}  # deferred this run: id -> monotonic due time
        self._retries: dict[int, int] = {}  # in-run retries so far per id
        self._deferred: set[int] = set()
        self._done = 0
        self._last_flush = self.monotonic()
        self._thread_error: BaseException | None = None
        self.journal: Journal | None = None
        self.sender_id = ""
        self.marks: _DatabaseMarks | None = None
        self._lease_seconds = options.lease.total_seconds()
        # Monotonic times: no message is started after the fence (our lease may be running
        # out), and the next lease renewal. Never, with the exclusive lock.
        self._fence = math.inf
        self._next_renewal = math.inf
        # Messages handed out and not yet done, by delivery id, whose readers' status the
        # feeder reads again; the senders wait on ``_checked`` for a fresh enough check.
        self._pending: dict[int, _Work] = {}
        self._checked = threading.Condition()
        self._check_wanted = threading.Event()
        self._last_check = -math.inf
        self._claimed_at = -math.inf  # when the last claim (which reads the status) began
        # The brake: the current run of identical refusals, and the one that stopped the run.
        self._streak: list[_Outcome] = []
        self._streak_key: str | None = None
        self._streak_domains: set[str] = set()
        self._braked: str | None = None

    # the feeding side (the caller's thread)

    def execute(self) -> SendReport:
        started = self.monotonic()
        report = self.report
        report.total = self._count_due()
        self.progress.start(report)
        self.journal = Journal(self.lock.directory)
        self.sender_id = self.journal.sender_id
        if self.shared:
            assert self.lock.engine is not None
            self.marks = _DatabaseMarks(self.lock.engine, self.clock)
            self._lease_renewed(self.monotonic())  # every claim from now on ends later
        threads = [
            threading.Thread(target=self._sender, name=f"smtp-{n + 1}", daemon=True)
            for n in range(self.options.connections)
        ]
        committed = False
        try:
            for thread in threads:
                thread.start()
            self._feed()
        except BaseException:
            # Ctrl-C or a database error: each sender finishes the message in its hands
            # (journal and all), then the outcomes so far are written below.
            self.stop.set()
            self.session.rollback()
            raise
        finally:
            self._shut_down(threads)
            try:
                self._flush()
                self._finish()
                committed = True
            finally:
                if self.marks is not None:
                    self.marks.close()
                # Remove the journal only once everything in it is committed; otherwise the
                # next run folds it in (and releases this sender's claims).
                self.journal.close(remove=committed)
                report.elapsed = self.monotonic() - started
                self.progress.finish(report)
        if self._thread_error is not None:
            raise SendError(
                f"a sender thread failed: {self._thread_error!r}"
            ) from self._thread_error
        return report

    def _feed(self) -> None:
        """Pass over the queued rows (and deferred ones now due) in id order, retry this run's
        4xx deliveries after their backoff, then (with other senders) take over what a dead
        sender left until nothing is held elsewhere."""
        for status in (QUEUED, DEFERRED):
            self._pass(status)
        self._drain()
        while not self.stop.is_set():
            self._retry_deferred()
            if not (self.shared and self._take_over()):
                return

    def _pass(self, status: str) -> int:
        """Claim and hand out every row of ``status`` nobody holds, in id order; returns how
        many."""
        after = taken = 0
        while not self.stop.is_set():
            rows = self._claim(status=status, after=after)
            if not rows:
                break
            after = rows[-1].id
            taken += len(rows)
            self._dispatch(rows)
        return taken

    def _retry_deferred(self) -> None:
        """Retry this run's 4xx deliveries once their backoff has passed."""
        while self._retry_due and not self.stop.is_set():
            due = min(self._retry_due.values())
            while not self.stop.is_set() and self.monotonic() < due:
                self.stop.wait(min(due - self.monotonic(), self.options.flush_interval))
                self._flush()
                self._renew_if_due()
            now = self.monotonic()
            ids = sorted(i for i, when in self._retry_due.items() if when <= now)
            for delivery_id in ids:
                del self._retry_due[delivery_id]
            for chunk in _chunks(ids, self.options.claim_size()):
                if self.stop.is_set():
                    break
                self._dispatch(self._claim(ids=chunk))
            self._drain()

    def _take_over(self) -> bool:
        """Wait while other senders hold queued rows of this campaign, taking any whose sender
        died (its lease ran out, or its journal on this machine is unlocked). True once some
        were taken and sent (they may need retries), False when none is held elsewhere."""
        poll = min(1.0, self._lease_seconds / 4)
        seen, since = -1, self.monotonic()
        while not self.stop.is_set():
            fold_journals(self.session, self.lock.directory, self.clock())
            if self._pass(QUEUED):
                self._drain()
                return True
            held = self._held_elsewhere()
            if not held:
                return False
            now = self.monotonic()
            if held != seen:
                seen, since = held, now
            elif now - since > 2 * self._lease_seconds:
                # Renewed all along but not moving: leave them to their sender or a later run.
                log.warning(
                    "%d deliveries held by another sender have not moved for %.0fs; "
                    "leaving them to it",
                    held,
                    now - since,
                )
                return False
            deadline = now + poll
            while not self.stop.is_set() and self.monotonic() < deadline:
                self.stop.wait(min(self.options.flush_interval, deadline - self.monotonic()))
                self._tick()
        return False

    def _held_elsewhere(self) -> int:
        d = _deliveries
        now, _ = self._lease_clock()
        held = (
            self.session.scalar(
                select(func.count())
                .select_from(d)
                .where(
                    d.c.campaign_id == self.campaign_id,
                    d.c.status == QUEUED,
                    d.c.claimed_until >= now,
                    or_(d.c.claimed_by.is_(None), d.c.claimed_by != self.sender_id),
                )
            )
            or 0
        )
        self.session.commit()
        return held

    def _lease_clock(self) -> tuple[Any, Any]:
        """(now, the end of a lease taken now) in the one clock all senders compare: the
        database server's on PostgreSQL (machines' clocks may differ), ours on SQLite."""
        if self.shared:
            now = "(statement_timestamp() AT TIME ZONE 'UTC')"
            return (
                literal_column(now),
                literal_column(f"{now} + interval '{self._lease_seconds:.3f} seconds'"),
            )
        current = self.clock()
        return current, current + self.options.lease

    def _claim(
        self, *, status: str = QUEUED, after: int = 0, ids: Sequence[int] | None = None
    ) -> Sequence[Any]:
        """Claim the next batch: rows nobody holds, locked against other senders, with the
        reader's current status (a reader who left since planning is skipped)."""
        d, s = _deliveries, _subscribers
        now, until = self._lease_clock()
        self.session.commit()  # read the readers' status afresh, not from an older snapshot
        self._claimed_at = self.monotonic()
        query = (
            select(
                d.c.id,
                d.c.subscriber_id,
                d.c.attempts,
                d.c.deferred_since,
                s.c.email,
                s.c.name,
                s.c.status.label("reader_status"),
            )
            .join_from(d, s, d.c.subscriber_id == s.c.id)
            .where(
                d.c.campaign_id == self.campaign_id,
                or_(d.c.claimed_until.is_(None), d.c.claimed_until < now),
            )
        )
        if ids is not None:
            query = query.where(d.c.id.in_(ids), d.c.status == DEFERRED)
        else:
            query = query.where(d.c.status == status, d.c.id > after)
            if status == DEFERRED:
                query = query.where(d.c.next_attempt_at <= self.clock())
        query = (
            query.order_by(d.c.id)
            .limit(self.options.claim_size())
            .with_for_update(skip_locked=True, of=d)
        )
        rows = self.session.execute(query).all()
        if rows:
            self.session.execute(
                update(d)
                .where(d.c.id.in_([r.id for r in rows]))
                .values(claimed_until=until, claimed_by=self.sender_id)
            )
        self.session.commit()
        return rows

    def _renew_if_due(self) -> None:
        """Extend the lease on every row this sender still holds (PostgreSQL)."""
        if self.monotonic() < self._next_renewal:
            return
        started = self.monotonic()
        _, until = self._lease_clock()
        d = _deliveries
        self.session.execute(
            update(d)
            .where(
                d.c.campaign_id == self.campaign_id,
                d.c.status.in_((QUEUED, DEFERRED)),
                d.c.claimed_by == self.sender_id,
            )
            .values(claimed_until=until)
        )
        self.session.commit()
        self._lease_renewed(started)

    def _lease_renewed(self, at: float) -> None:
        # The database set the lease no earlier than ``at``: it holds until at + lease. Stop
        # starting messages at half of that, so one in progress ends long before.
        self._fence = at + self._lease_seconds / 2
        self._next_renewal = at + self._lease_seconds / 6

    def _dispatch(self, rows: Iterable[Any]) -> None:
        for row in rows:
            if row.reader_status != CONFIRMED or not row.email:
                self.outcomes.append(_Outcome(SKIPPED, row.id))
                continue
            self._put(
                _Work(
                    row.id,
                    row.subscriber_id,
                    row.email,
                    row.name,
                    row.attempts,
                    row.deferred_since,
                    checked_at=self._claimed_at,
                )
            )
        self._tick()

    def _put(self, item: _Work) -> None:
        with self._in_flight_lock:
            self._in_flight += 1
        with self._checked:
            self._pending[item.delivery_id] = item
        while not self.stop.is_set():
            try:
                self.work.put(item, timeout=0.1)
                return
            except queue.Full:
                self._tick()
        with self._in_flight_lock:
            self._in_flight -= 1
        with self._checked:
            self._pending.pop(item.delivery_id, None)

    def _drain(self) -> None:
        """Wait until the senders have finished every item handed out, writing as we go."""
        while self._in_flight and not self.stop.is_set():
            time.sleep(0.01)
            self._tick()
        self._flush()

    def _tick(self) -> None:
        """What the feeder does while it waits: write outcomes, renew the lease when due, read
        again the status of the readers whose messages wait."""
        self._flush_if_due()
        self._renew_if_due()
        self._check_readers_if_due()

    def _check_readers_if_due(self) -> None:
        """One indexed query for every waiting message's reader: those who left since their
        row was claimed are marked withdrawn, and the sender skips them."""
        started = self.monotonic()
        if not (
            self._check_wanted.is_set()
            or started - self._last_check >= self.options.status_check_age / 2
        ):
            return
        self._check_wanted.clear()
        self._last_check = started
        with self._checked:
            items = list(self._pending.values())
        if not items:
            return
        s = _subscribers
        self.session.commit()  # a fresh snapshot: see withdrawals committed until now
        gone: set[int] = set()
        for chunk in _chunks(sorted({item.subscriber_id for item in items})):
            gone.update(
                self.session.scalars(
                    select(s.c.id).where(
                        s.c.id.in_(chunk), or_(s.c.status != CONFIRMED, s.c.email.is_(None))
                    )
                )
            )
        self.session.commit()
        with self._checked:
            for item in items:
                item.withdrawn = item.withdrawn or item.subscriber_id in gone
                item.checked_at = max(item.checked_at, started)
            self._checked.notify_all()

    def _flush_if_due(self) -> None:
        if (
            len(self.outcomes) >= self.options.batch_size
            or self.monotonic() - self._last_flush >= self.options.flush_interval
        ):
            self._flush()

    def _flush(self) -> None:
        """Write the outcomes gathered so far: one bulk UPDATE per status, one commit."""
        self._last_flush = self.monotonic()
        if not self.outcomes:
            return
        batch: list[_Outcome] = []
        while self.outcomes:
            batch.append(self.outcomes.popleft())
        now = self.clock()
        sent = [o.delivery_id for o in batch if o.status == SENT and not o.in_db]
        skipped = [o.delivery_id for o in batch if o.status == SKIPPED]
        requeue = self._brake(batch)
        replies = [o for o in batch if o.status in (FAILED, DEFERRED) and not o.requeue]
        d = _deliveries
        mark_sent(self.session, sent, now)
        for chunk in _chunks(skipped):
            self.session.execute(
                update(d)
                .where(d.c.id.in_(chunk))
                .values(
                    status=SKIPPED,
                    updated_at=now,
                    claimed_until=None,
                    claimed_by=None,
                    next_attempt_at=None,
                )
            )
        if replies:
            self.session.execute(
                update(d)
                .where(d.c.id == bindparam("b_id"))
                .values(
                    status=bindparam("b_status"),
                    attempts=d.c.attempts + 1,
                    smtp_reply=bindparam("b_reply"),
                    deferred_since=bindparam("b_since"),
                    next_attempt_at=bindparam("b_next"),
                    updated_at=now,
                    claimed_until=None,
                    claimed_by=None,
                ),
                [
                    {
                        "b_id": o.delivery_id,
                        "b_status": o.status,
                        "b_reply": o.reply,
                        "b_since": o.deferred_since,
                        "b_next": (
                            now + backoff(o.attempts + 1, self.options.retry_delay)
                            if o.status == DEFERRED
                            else None
                        ),
                    }
                    for o in replies
                ],
            )
        if requeue:
            # Back in the queue, as if never tried: the server was at fault, not the reader.
            self.session.execute(
                update(d)
                .where(d.c.id == bindparam("b_id"))
                .values(
                    status=QUEUED,
                    smtp_reply=bindparam("b_reply"),
                    next_attempt_at=None,
                    updated_at=now,
                    claimed_until=None,
                    claimed_by=None,
                ),
                [{"b_id": o.delivery_id, "b_reply": o.reply} for o in requeue],
            )
        self.session.commit()
        self._count(batch)

    def _brake(self, batch: Sequence[_Outcome]) -> list[_Outcome]:
        """Watch for a broken server: BRAKE_RUN identical refusals in a row at BRAKE_DOMAINS
        mail domains or more stop the run. Returns the outcomes to put back in the queue
        (the whole run of them, some written and counted by earlier batches)."""
        requeue: list[_Outcome] = []
        for outcome in batch:
            if outcome.status not in (FAILED, DEFERRED):
                if self._braked is None:
                    self._streak, self._streak_key, self._streak_domains = [], None, set()
                continue
            if outcome.unknown:
                continue  # no reply at all: says nothing about what the server answers
            key = _ADDRESS_IN_REPLY.sub("<address>", outcome.reply or "").strip().lower()
            if self._braked is not None:
                if key == self._braked:  # messages that were in flight when it stopped
                    outcome.requeue = True
                    requeue.append(outcome)
                continue
            if key != self._streak_key:
                self._streak, self._streak_key, self._streak_domains = [], key, set()
            self._streak.append(outcome)
            self._streak_domains.add(outcome.domain)
            if len(self._streak) >= BRAKE_RUN and len(self._streak_domains) >= BRAKE_DOMAINS:
                self._braked = key
                in_batch = {id(o) for o in batch}
                for earlier in self._streak:
                    if id(earlier) not in in_batch:
                        self._uncount(earlier)
                    earlier.requeue = True
                requeue.extend(self._streak)
                self._halt(
                    f"the SMTP server answered '{outcome.reply}' to {len(self._streak)} "
                    f"readers in a row at {len(self._streak_domains)} domains, so the fault is "
                    "the server's (a full disk, a suspended account, a quota), not theirs; "
                    "nothing was marked failed: those deliveries and the rest stay queued. Fix "
                    "the cause with the server or its operator, then send again"
                )
        return requeue

    def _uncount(self, outcome: _Outcome) -> None:
        """Take back an outcome counted by an earlier batch (the brake requeued it)."""
        if outcome.status == FAILED:
            self.report.failed -= 1
        else:
            self._deferred.discard(outcome.delivery_id)
            self._retry_due.pop(outcome.delivery_id, None)
        self._done -= 1

    def _count(self, batch: Sequence[_Outcome]) -> None:
        report = self.report
        for outcome in batch:
            if outcome.requeue:
                continue
            delivery_id = outcome.delivery_id
            retry = delivery_id in self._deferred
            self._deferred.discard(delivery_id)
            if outcome.status == SENT:
                report.sent += 1
            elif outcome.status == SKIPPED:
                report.skipped += 1
            elif outcome.status == FAILED:
                report.failed += 1
            else:
                self._deferred.add(delivery_id)
                tries = self._retries.get(delivery_id, 0)
                if tries < IN_RUN_RETRIES and not outcome.unknown:
                    self._retries[delivery_id] = tries + 1
                    self._retry_due[delivery_id] = (
                        self.monotonic() + self.options.retry_delay * 2**tries
                    )
            if not retry:
                self._done += 1
        report.deferred = len(self._deferred)
        self.progress.update(min(self._done, report.total))

    def _count_due(self) -> int:
        d = _deliveries
        now = self.clock()
        return (
            self.session.scalar(
                select(func.count())
                .select_from(d)
                .where(
                    d.c.campaign_id == self.campaign_id,
                    or_(
                        d.c.status == QUEUED,
                        (d.c.status == DEFERRED) & (d.c.next_attempt_at <= now),
                    ),
                )
            )
            or 0
        )

    def _shut_down(self, threads: Sequence[threading.Thread]) -> None:
        """Let every sender finish the message in its hands, then stop it."""
        if self.stop.is_set():
            # Items still waiting in the queue are not sent; their claims are released below.
            with suppress(queue.Empty):
                while True:
                    self.work.get_nowait()
        for _ in threads:
            self.work.put(None)
        for thread in threads:
            thread.join()

    def _finish(self) -> None:
        """Release this sender's unworked claims; the campaign is sent when no row is left."""
        d = _deliveries
        self.session.execute(
            update(d)
            .where(d.c.campaign_id == self.campaign_id, d.c.claimed_by == self.sender_id)
            .values(claimed_until=None, claimed_by=None)
        )
        settle_campaign(self.session, self.report, self.clock())

    # the sending side (one thread per connection)

    def _sender(self) -> None:
        transport = self.services.open_transport()
        try:
            while True:
                item = _take(self.work)
                if item is None:
                    return
                try:
                    self._deliver(item, transport)
                finally:
                    with self._checked:
                        self._pending.pop(item.delivery_id, None)
                    with self._in_flight_lock:
                        self._in_flight -= 1
        except BaseException as err:  # a bug: stop the run and let the caller raise it
            self._thread_error = err
            self.stop.set()
            log.exception("sender thread failed")
        finally:
            transport.close()

    def _deliver(self, item: _Work, transport: Transport) -> None:
        """Send one message, reconnecting after drops, until it has an outcome or the run
        stops (it then stays queued). A message whose outcome became unknown, or whose
        exchange failed on two connections in a row (a 421 or a hang-up before the final dot),
        is deferred instead: one reader never holds up the list."""
        failures = 0
        refused = 0  # exchanges of this message that failed after connecting
        delay = self.options.reconnect_delay
        while not self.stop.is_set():
            connected = False
            try:
                eight_bit = connect_transport(transport)
                connected = True
                reader = self.reader(item.subscriber_id, item.email, item.name)
                data = self.template.personalise_for_smtp(reader, eight_bit=eight_bit)
                self._wait_for_lease()
                self.limiter.wait(self.stop)
                if not self._status_checked(item):
                    return
                if item.withdrawn:
                    self.outcomes.append(_Outcome(SKIPPED, item.delivery_id))
                    return
                transport.send_prepared(self.envelope_sender(item.subscriber_id), item.email, data)
            except SmtpOutcomeUnknownError as err:
                # The server may have it (RFC 5321 4.1.1.4): sending it again at once could
                # mail a copy per try. Deferred: the next run tries once more, after backoff.
                self.outcomes.append(
                    self._deferral(item, f"{err}; tried again by a later run", unknown=True)
                )
                return
            except SmtpRejectedError as err:
                self.outcomes.append(self._rejected(item, err))
                return
            except SmtpConfigError as err:
                self._halt(str(err))
                return
            except SmtpUnavailableError as err:
                # Not taken (the final dot never went out): it stays ours and goes again, once
                # more on a fresh connection; failing there too, it may be about this reader.
                if connected:
                    refused += 1
                    if refused >= 2:
                        self.outcomes.append(
                            self._deferral(
                                item,
                                f"{err.code} {err.reply or ''}".strip() if err.code else str(err),
                            )
                        )
                        return
                failures += 1
                if failures >= self.options.max_connection_failures:
                    self._halt(
                        f"stopped after {failures} failed attempts in a row to reach "
                        f"the SMTP server ({err}); the rest stay queued"
                    )
                    return
                log.warning("SMTP connection problem (%s); reconnecting in %.2fs", err, delay)
                self.stop.wait(delay)
                delay *= 2
                continue
            self._record_sent(item.delivery_id)
            return

    def _status_checked(self, item: _Work) -> bool:
        """Wait until the reader's status was read at most ``status_check_age`` seconds ago
        (the feeder does it); False if the run stops meanwhile."""
        ready = self.monotonic()
        with self._checked:
            while item.checked_at < ready - self.options.status_check_age:
                if self.stop.is_set():
                    return False
                self._check_wanted.set()
                self._checked.wait(0.05)
        return not self.stop.is_set()

    def _wait_for_lease(self) -> None:
        """Start no message while this sender's lease may be running out (its renewals have
        stopped): another sender could take the row over and send it too."""
        while self.monotonic() > self._fence and not self.stop.is_set():
            self.stop.wait(0.05)

    def _record_sent(self, delivery_id: int) -> None:
        """Write a 250 down before anything else: a kill from here on loses nothing."""
        if self.marks is None:
            assert self.journal is not None
            self.journal.record(delivery_id)
            self.outcomes.append(_Outcome(SENT, delivery_id))
            return
        try:
            self.marks.record(delivery_id)
        except self.marks.errors as err:
            # The feeder writes it with the batch if it still can; else it is this
            # connection's one message in flight, sent again later.
            self._halt(
                f"cannot record deliveries in the database ({err.__class__.__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); the rest stay queued"
            )
            self.outcomes.append(_Outcome(SENT, delivery_id))
            return
        self.outcomes.append(_Outcome(SENT, delivery_id, in_db=True))

    def _rejected(self, item: _Work, err: SmtpRejectedError) -> _Outcome:
        reply = f"{err.code} {err.reply or ''}".strip()
        if not err.temporary:
            return _Outcome(
                FAILED, item.delivery_id, reply, item.attempts, domain=_domain(item.email)
            )
        return self._deferral(item, reply)

    def _deferral(self, item: _Work, reply: str, *, unknown: bool = False) -> _Outcome:
        """Deferred with ``reply``, or failed once the give-up age has passed."""
        now = self.clock()
        since = item.deferred_since or now
        if now - since >= self.options.give_up_after:
            hours = self.options.give_up_after.total_seconds() / 3600
            return _Outcome(
                FAILED,
                item.delivery_id,
                f"gave up after {hours:g} hours of temporary failures: {reply}",
                item.attempts,
                since,
                domain=_domain(item.email),
            )
        return _Outcome(
            DEFERRED,
            item.delivery_id,
            reply,
            item.attempts,
            since,
            unknown=unknown,
            domain=_domain(item.email),
        )

    def _halt(self, reason: str) -> None:
        if self.report.error is None:
            self.report.error = reason
        self.stop.set()


def _take(work: queue.Queue[_Work | None]) -> _Work | None:
    """``work.get()``, but waking the feeder (waiting on a full queue) only once half of the
    queue is free, not at every message: one thread hand-off per many messages."""
    with work.not_empty:
        while not work._qsize():
            work.not_empty.wait()
        item: _Work | None = work._get()
        if work._qsize() <= work.maxsize // 2:
            work.not_full.notify()
        return item


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()

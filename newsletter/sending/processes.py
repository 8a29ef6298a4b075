"""Several sender processes on one machine (send-digest --workers N)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy.orm import Session

from ..services import Services
from .ledger import settle_campaign
from .options import Progress, SendError, SendReport, log


class WorkerProgress:
    """A worker process's progress as JSON lines on ``stream`` (its stdout, read by the
    parent's :class:`SenderProcesses`)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream: IO[str] | None = stream

    def _emit(self, event: str, **values: Any) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(json.dumps({"event": event, **values}) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            # The parent is gone (killed, or its terminal closed): keep sending what this
            # worker holds, with nobody left to tell.
            self._stream = None

    def start(self, report: SendReport) -> None:
        self._emit("start", report=report.as_dict())

    def update(self, done: int) -> None:
        self._emit("update", done=done)

    def finish(self, report: SendReport) -> None:
        self._emit("finish", report=report.as_dict())


@dataclass
class _Merged:
    """One campaign as several workers report it."""

    report: SendReport
    done: dict[int, int] = field(default_factory=dict)  # worker -> messages done
    started: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)


class SenderProcesses:
    """``count`` sender processes on this machine, each running ``argv``: a ``send-digest``
    worker that sends every unfinished digest (as :func:`send_unfinished`) and reports through
    :class:`WorkerProgress`. Their progress is added up and their reports merged."""

    def __init__(self, argv: Sequence[str], count: int) -> None:
        self.argv = list(argv)
        self.count = count

    def run(self, session: Session, services: Services, progress: Progress) -> list[SendReport]:
        """Start the workers, relay their progress, wait for them all; one report per campaign
        (sent, failed and skipped added up; what is left counted afresh). Raises SendError if
        every worker failed before reporting anything."""
        processes = [
            subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
            for _ in range(self.count)
        ]
        events: queue.Queue[tuple[int, str | None]] = queue.Queue()
        readers = [
            threading.Thread(target=_relay_lines, args=(n, p.stdout, events), daemon=True)
            for n, p in enumerate(processes)
        ]
        for reader in readers:
            reader.start()
        merged: dict[int, _Merged] = {}
        current: dict[int, int] = {}  # worker -> campaign it is on
        try:
            self._follow(events, merged, current, progress)
        except KeyboardInterrupt:
            # At a terminal the workers got the Ctrl-C too; elsewhere pass it on. Each then
            # finishes the messages in hand and writes everything down.
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            for process in processes:
                process.wait()
            raise
        for process in processes:
            process.wait()
        problems = [
            (n, _ended(process)) for n, process in enumerate(processes) if process.returncode != 0
        ]
        if not merged:
            if problems:
                raise SendError("; ".join(problem for _, problem in problems))
            return []
        last = max(merged)
        for n, problem in problems:
            entry = merged[current.get(n, last)]
            if entry.report.error is None:
                entry.report.error = problem
        reports = [merged[campaign_id].report for campaign_id in sorted(merged)]
        for report in reports:
            settle_campaign(session, report, services.clock())
        return reports

    def _follow(
        self,
        events: queue.Queue[tuple[int, str | None]],
        merged: dict[int, _Merged],
        current: dict[int, int],
        progress: Progress,
    ) -> None:
        """Add up what the workers say until every one has closed its output."""
        open_outputs = self.count
        active: _Merged | None = None  # the campaign the progress display shows
        while open_outputs:
            worker, line = events.get()
            if line is None:
                open_outputs -= 1
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                log.warning("sender %d: %s", worker + 1, line.rstrip())
                continue
            if event["event"] == "start":
                started = SendReport.from_dict(event["report"])
                entry = merged.setdefault(
                    started.campaign_id,
                    _Merged(SendReport(campaign_id=started.campaign_id, subject=started.subject)),
                )
                entry.report.total = max(entry.report.total, started.total)
                entry.started.add(worker)
                current[worker] = started.campaign_id
                if active is not entry:
                    if active is not None:
                        progress.finish(active.report)
                    active = entry
                    progress.start(entry.report)
            elif event["event"] == "update":
                entry = merged[current[worker]]
                entry.done[worker] = int(event["done"])
                if entry is active:
                    progress.update(min(sum(entry.done.values()), entry.report.total))
            elif event["event"] == "finish":
                finished = SendReport.from_dict(event["report"])
                entry = merged[finished.campaign_id]
                total = entry.report
                total.sent += finished.sent
                total.failed += finished.failed
                total.skipped += finished.skipped
                total.elapsed = max(total.elapsed, finished.elapsed)
                total.error = total.error or finished.error
                entry.finished.add(worker)
                if entry is active and entry.finished >= entry.started:
                    progress.finish(total)
                    active = None
        if active is not None:
            progress.finish(active.report)


def _relay_lines(
    worker: int, output: IO[str] | None, events: queue.Queue[tuple[int, str | None]]
) -> None:
    """Pass a worker's output lines on, then None when it closes."""
    if output is not None:
        with output:
            for line in output:
                events.put((worker, line))
    events.put((worker, None))


def _ended(process: subprocess.Popen[str]) -> str:
    code = process.returncode
    how = f"was killed by signal {-code}" if code < 0 else f"stopped with exit status {code}"
    return (
        f"a sender process (pid {process.pid}) {how} (what it sent is not counted above); "
        "what it held went to the other senders, and anything left goes with the next run"
    )

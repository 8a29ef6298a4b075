"""The send pace: the rate cap shared by a run's connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class SendPace:
    """At most ``rate`` messages per second over all threads (slots spaced 1/rate apart),
    timed by ``monotonic`` (injected, so tests drive time instead of sleeping)."""

    def __init__(self, rate: float | None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._monotonic = monotonic
        self._next = 0.0
        self._lock = threading.Lock()

    @property
    def next_slot(self) -> float:
        """When (on the pace's clock) the next caller's slot begins, at the earliest."""
        with self._lock:
            return self._next

    def wait(self, stop: threading.Event) -> float:
        """Block until this caller's slot (returns early when ``stop`` is set); returns how
        long the slot was ahead."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self._monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            stop.wait(slot - now)
        return slot - now

"""The send rate shared by a run's connections."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """At most ``rate`` messages per second over all threads (slots spaced 1/rate apart)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        """Block until this caller's slot (returns early when ``stop`` is set)."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            stop.wait(slot - now)

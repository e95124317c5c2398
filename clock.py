"""One clock for the whole bot, chosen at start and handed to whoever needs time.

A clock is a callable returning seconds since the epoch. The live bot uses the wall clock,
the simulated exchange its sped-up market clock (`SimMarket.now`), tests a `ManualClock`
they move by hand, so nothing has to sleep to make time pass.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

Clock = Callable[[], float]


def wall_clock() -> float:
    return time.time()


class ManualClock:
    """A clock that moves only when told to (thread-safe)."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

"""Operation timings, percentiles, process memory and slow-operation alerts.

Per operation the monitor keeps exact running calls/total/min/max and a fixed-size ring
buffer of the most recent `window` durations for p50/p95/p99, so its memory stays bounded
whatever the run length. A disabled monitor costs one attribute check per timed call.

Usage::

    monitor = get_monitor()

    @monitor.time_function                   # recorded as the function's __qualname__
    def scan_all_pairs(): ...

    @monitor.time_function(name="run_cycle")
    def cycle(): ...

    with monitor.timing(f"execute_trade[{symbol}]"):
        ...

    with TimingContext("update_positions", logger) as t:
        ...
    t.elapsed                                # seconds, measured even when disabled

    monitor.add_section("ML prediction cache", lambda: model.cache.report())
    if should_report(cycle, config.performance_report_interval):
        monitor.log_report(logger)
"""
from __future__ import annotations

import contextlib
import functools
import logging
import resource
import sys
import threading
from array import array
from collections.abc import Callable
from contextlib import AbstractContextManager
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar, overload

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
STAT_KEYS = ("calls", "total", "avg", "min", "max", "p50", "p95", "p99")
_NULL_CONTEXT = contextlib.nullcontext()


class _Operation:
    """Running totals plus a ring buffer of the most recent durations."""

    __slots__ = ("calls", "total", "min", "max", "samples", "next")

    def __init__(self) -> None:
        self.calls = 0
        self.total = 0.0
        self.min = float("inf")
        self.max = 0.0
        self.samples = array("d")  # grows to `window`, then is overwritten in place
        self.next = 0

    def add(self, seconds: float, window: int) -> None:
        self.calls += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds
        if len(self.samples) < window:
            self.samples.append(seconds)
        else:
            self.samples[self.next] = seconds
            self.next = (self.next + 1) % window


class _Timer:
    """Context manager that records its block's duration into a monitor."""

    __slots__ = ("monitor", "name", "start")

    def __init__(self, monitor: PerformanceMonitor, name: str) -> None:
        self.monitor = monitor
        self.name = name

    def __enter__(self) -> _Timer:
        self.start = perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.monitor.record(self.name, perf_counter() - self.start)


class PerformanceMonitor:
    """Thread-safe timing collector; `enabled` and `slow_threshold` may be changed live."""

    def __init__(self, enabled: bool = True, slow_threshold: float = 5.0,
                 window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.enabled = enabled
        self.slow_threshold = slow_threshold
        self.window = window
        self._ops: dict[str, _Operation] = {}
        self._sections: dict[str, Callable[[], str]] = {}
        self._lock = threading.Lock()

    @overload
    def time_function(self, fn: F) -> F: ...
    @overload
    def time_function(self, fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...

    def time_function(self, fn: F | None = None, *, name: str | None = None) -> Any:
        """Decorator timing every call; bare (`@m.time_function`) or `@m.time_function(name=...)`."""
        if fn is None:
            return lambda f: self.time_function(f, name=name)
        label = name or fn.__qualname__

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return fn(*args, **kwargs)
            start = perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.record(label, perf_counter() - start)

        return wrapper

    def timing(self, name: str) -> AbstractContextManager[Any]:
        """Context manager timing its block (a shared no-op when disabled)."""
        return _Timer(self, name) if self.enabled else _NULL_CONTEXT

    def record(self, name: str, seconds: float) -> None:
        """Add one duration; logs a WARNING when it exceeds `slow_threshold`."""
        if not self.enabled:
            return
        with self._lock:
            op = self._ops.get(name)
            if op is None:
                op = self._ops[name] = _Operation()
            op.add(seconds, self.window)
        if seconds > self.slow_threshold:
            logger.warning("Slow operation %s: %.2fs (threshold %.2fs)",
                           name, seconds, self.slow_threshold)

    def operations(self) -> list[str]:
        """Names of every recorded operation."""
        with self._lock:
            return list(self._ops)

    def stats(self, name: str) -> dict[str, float]:
        """calls, total, avg, min, max and p50/p95/p99 (over the last `window` calls), seconds.

        An operation never recorded gives calls 0 and every other figure 0.0.
        """
        with self._lock:
            op = self._ops.get(name)
            if op is None:
                return dict.fromkeys(STAT_KEYS, 0.0) | {"calls": 0}
            calls, total, lo, hi = op.calls, op.total, op.min, op.max
            samples = sorted(op.samples)
        p50, p95, p99 = (percentile(samples, q) for q in (50, 95, 99))
        return {"calls": calls, "total": total, "avg": total / calls, "min": lo, "max": hi,
                "p50": p50, "p95": p95, "p99": p99}

    def reset(self) -> None:
        """Forget every recorded operation (registered sections stay)."""
        with self._lock:
            self._ops.clear()

    def add_section(self, title: str, fn: Callable[[], str]) -> None:
        """Append `fn()`'s text to every report under `title` (same title replaces)."""
        with self._lock:
            self._sections[title] = fn

    def report(self) -> str:
        """Text report: operations by total time (largest first), memory, extra sections."""
        stats = {name: self.stats(name) for name in self.operations()}
        lines = ["PERFORMANCE REPORT"]
        if stats:
            lines += _operation_table(stats)
        else:
            lines.append("no operations recorded" if self.enabled
                         else "monitoring disabled (ENABLE_PERFORMANCE_MONITORING=false)")
        lines.append(memory_line())
        with self._lock:
            sections = list(self._sections.items())
        for title, fn in sections:
            try:
                text = fn()
            except Exception as exc:  # a broken section must not break the report
                text = f"unavailable: {type(exc).__name__}: {exc}"
            lines += [f"-- {title} --", text]
        return "\n".join(lines)

    def log_report(self, log: logging.Logger | None = None) -> None:
        """Log `report()` at INFO on `log` (default: this module's logger)."""
        (log or logger).info("%s", self.report())


def percentile(ordered: list[float], q: float) -> float:
    """q-th percentile of sorted, non-empty data, linear interpolation (numpy's default)."""
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _operation_table(stats: dict[str, dict[str, float]]) -> list[str]:
    """One row per operation, sorted by total time descending; durations in ms."""
    width = max(9, *(len(name) for name in stats))
    cols = ("total s", "avg ms", "min ms", "p50 ms", "p95 ms", "p99 ms", "max ms")
    rows = [f"{'operation':<{width}} {'calls':>8} " + " ".join(f"{c:>10}" for c in cols)]
    for name, s in sorted(stats.items(), key=lambda kv: (-kv[1]["total"], kv[0])):
        ms = [s[k] * 1e3 for k in ("avg", "min", "p50", "p95", "p99", "max")]
        rows.append(f"{name:<{width}} {s['calls']:>8d} {s['total']:>10.3f} "
                    + " ".join(f"{v:>10.3f}" for v in ms))
    return rows


def memory_usage() -> tuple[float | None, float]:
    """(current RSS, peak RSS) of this process in MiB; current is None without /proc.

    Linux's VmHWM is this process's own peak; ru_maxrss (the fallback elsewhere) can
    include the memory of the process that started it.
    """
    status = {}
    with contextlib.suppress(OSError):
        with open("/proc/self/status", encoding="ascii") as f:
            status = {k: int(v.split()[0]) / 1024 for k, _, v in (line.partition(":") for line in f)
                      if k in ("VmRSS", "VmHWM")}  # kB -> MiB
    if "VmHWM" in status:
        return status.get("VmRSS"), status["VmHWM"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs kB
    return status.get("VmRSS"), peak_mib


def memory_line() -> str:
    """'memory: rss 123.4 MiB, peak 150.2 MiB'."""
    current, peak = memory_usage()
    rss = "n/a" if current is None else f"{current:.1f} MiB"
    return f"memory: rss {rss}, peak {peak:.1f} MiB"


def should_report(cycle: int, interval: int) -> bool:
    """True on every `interval`-th cycle (cycles counted from 1)."""
    return interval > 0 and cycle > 0 and cycle % interval == 0


class TimingContext:
    """`with TimingContext(name, logger):` records into `monitor` (default `get_monitor()`).

    `elapsed` (seconds) is measured even when the monitor is disabled; with a logger the
    duration is also logged at DEBUG.
    """

    __slots__ = ("name", "logger", "monitor", "start", "elapsed")

    def __init__(self, name: str, logger: logging.Logger | None = None,
                 monitor: PerformanceMonitor | None = None) -> None:
        self.name = name
        self.logger = logger
        self.monitor = monitor if monitor is not None else _default_monitor
        self.elapsed = 0.0

    def __enter__(self) -> TimingContext:
        self.start = perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.elapsed = perf_counter() - self.start
        self.monitor.record(self.name, self.elapsed)
        if self.logger is not None:
            self.logger.debug("%s took %.3fs", self.name, self.elapsed)


_default_monitor = PerformanceMonitor()


def get_monitor() -> PerformanceMonitor:
    """The process-wide monitor; the bot sets `enabled`/`slow_threshold` from its config."""
    return _default_monitor

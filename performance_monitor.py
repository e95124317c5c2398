"""Operation timings, percentiles, alerts, trends, cache hit rates and process memory.

Per operation the monitor keeps exact running calls/total/min/max and a fixed-size ring
buffer of the last `window` durations (p50/p95/p99 and the trend), so its memory stays
bounded whatever the run length; disabled, it costs one attribute check per timed call.
`configure()` sets up the process-wide monitor (`get_monitor()`, the default of
`TimingContext`), so every module's timings land in the bot's one report, which shows:

- Alerts: a call slower than its warning threshold (`slow_threshold`) or its critical one
  (`critical_factor` x that), both overridable per operation or per family (the name before
  ':' or '[', e.g. execute_trade for execute_trade:BTC/USDT), is counted and logged at
  WARNING or ERROR at most once per operation and level per report interval; the logged
  ones are kept as `Alert`s (the last MAX_ALERTS: `alerts()`, `take_alerts()`).
- Trends: the median of an operation's last `trend_recent` calls against the median of the
  up to `trend_baseline` calls before them; `degradation_factor` x slower (and at least
  `trend_min_seconds`) raises one warning alert when the degradation starts.
- Caches registered with `add_cache`: hit rate, and a hint when it stays low.
- Memory: RSS and peak; with `trace_memory` (tracemalloc, which slows every allocation, so
  off by default) the allocation sites that grew most since the previous report.

A report closes an interval: its alert counts and memory growth are since the previous one.

Usage::

    monitor = configure(enabled=True, slow_threshold=5.0, thresholds="train_model=120")

    @get_monitor().time_function             # recorded as the function's __qualname__
    def scan_all_pairs(): ...

    with monitor.timing(f"execute_trade:{symbol}"):
        ...
    with TimingContext("update_positions", logger) as t:   # into the configured monitor
        ...
    t.elapsed                                # seconds, measured even when disabled

    monitor.add_cache("scan", scanner.cache)
    monitor.add_section("streams", streaming.report)
    if should_report(cycle, config.performance_report_interval):
        monitor.log_report(logger)
    for alert in monitor.take_alerts():
        notify(alert.level, alert.reason)
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import resource
import statistics
import sys
import sysconfig
import threading
import tracemalloc
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from time import perf_counter
from types import TracebackType
from typing import Any, NamedTuple, TypeVar, overload

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
STAT_KEYS = ("calls", "total", "avg", "min", "max", "p50", "p95", "p99")
WARNING, CRITICAL = "warning", "critical"
CRITICAL_FACTOR = 3.0        # default critical threshold: 3 x the warning threshold
DEGRADATION_FACTOR = 2.0     # recent median over this many times the baseline: degraded
MAX_ALERTS = 100             # alerts kept for alerts() / take_alerts()
TOP_ALLOCATIONS = 10         # allocation sites listed with trace_memory
_RANK = {WARNING: 1, CRITICAL: 2}
_NULL_CONTEXT = contextlib.nullcontext()
_STDLIB = sysconfig.get_paths()["stdlib"]
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_THRESHOLD = re.compile(rf"({_NUMBER})(?::({_NUMBER}))?", re.ASCII)


class Alert(NamedTuple):
    """A slow call or a degraded operation: level 'warning' or 'critical', the operation,
    its duration (for a trend: the recent median), the threshold crossed, one-line reason."""

    level: str
    operation: str
    seconds: float
    threshold: float
    reason: str


class _Operation:
    """Running totals, a ring buffer of the most recent durations, this interval's alerts."""

    __slots__ = ("calls", "total", "min", "max", "samples", "next", "trend",
                 "warnings", "criticals", "worst", "logged")

    def __init__(self) -> None:
        self.calls = 0
        self.total = 0.0
        self.min = float("inf")
        self.max = 0.0
        self.samples = array("d")  # grows to `window`, then is overwritten in place
        self.next = 0
        self.trend: tuple[float, float] | None = None  # (recent, baseline) p50 while degraded
        self.new_interval()

    def new_interval(self) -> None:
        self.warnings = self.criticals = self.logged = 0  # logged: rank of the level said
        self.worst = 0.0

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

    def tail(self, k: int) -> list[float]:
        """The last k buffered durations (fewer if fewer are buffered), oldest first."""
        s = self.samples
        k, end = min(k, len(s)), self.next or len(s)  # end: one past the newest
        return (s[end - k:end] if end >= k else s[len(s) - (k - end):] + s[:end]).tolist()


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
    """Thread-safe timing collector; `enabled`, `slow_threshold`, `critical_factor`, the
    trend settings and `trace_memory` may be changed live."""

    def __init__(self, enabled: bool = True, slow_threshold: float = 5.0,
                 window: int = 1000, *, critical_factor: float = CRITICAL_FACTOR,
                 thresholds: Mapping[str, Any] | str | None = None,
                 degradation_factor: float = DEGRADATION_FACTOR, trend_recent: int = 20,
                 trend_baseline: int = 200, trend_min_seconds: float = 0.001,
                 trace_memory: bool = False) -> None:
        if window < 1 or trend_recent < 1 or trend_baseline < 1:
            raise ValueError(f"window, trend_recent and trend_baseline must be >= 1, got "
                             f"{window}, {trend_recent}, {trend_baseline}")
        _check_factors(critical_factor, degradation_factor)
        self.enabled, self.slow_threshold, self.window = enabled, slow_threshold, window
        self.critical_factor, self.degradation_factor = critical_factor, degradation_factor
        self.trend_recent, self.trend_baseline = trend_recent, trend_baseline
        self.trend_min_seconds = trend_min_seconds
        self._lock = threading.Lock()
        self._ops: dict[str, _Operation] = {}
        self._sections: dict[str, Callable[[], str]] = {}
        self._caches: dict[str, tuple[Any, str, int, float]] = {}
        self._listeners: list[Callable[[str, float], None]] = []
        self._limits: dict[str, tuple[float, float | None]] = {}
        self._alerts: deque[Alert] = deque(maxlen=MAX_ALERTS)
        self._trace = self._started_tracing = False
        self._sites: dict[tuple[str, int], int] = {}
        self.reset()
        self.set_thresholds(thresholds or {})
        self.trace_memory = trace_memory

    # -- timing ---------------------------------------------------------------------
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
        """Add one duration; alerts when it exceeds the operation's thresholds."""
        if not self.enabled:
            return
        with self._lock:
            op = self._ops.get(name)
            if op is None:
                op = self._ops[name] = _Operation()
            op.add(seconds, self.window)
            listeners = self._listeners
        for listener in listeners:        # e.g. the metrics' histograms
            listener(name, seconds)
        if seconds > self.slow_threshold or seconds > self._lowest_override:
            self._check_slow(name, seconds)

    def add_listener(self, listener: Callable[[str, float], None]) -> None:
        """Call listener(name, seconds) with every duration recorded from now on."""
        with self._lock:
            self._listeners = self._listeners + [listener]

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
        """Forget every recorded operation and alert (sections, caches, thresholds stay)."""
        with self._lock:
            self._ops.clear()
            self._alerts.clear()
            self._raised = self._taken = 0
            self._counts = {WARNING: 0, CRITICAL: 0}    # since start (or reset)
            self._interval = {WARNING: 0, CRITICAL: 0}  # since the last report

    # -- alerts ---------------------------------------------------------------------
    def set_threshold(self, name: str, warning: float, critical: float | None = None) -> None:
        """Alert thresholds (seconds) of an operation or a family (name before ':' or '[');
        critical defaults to `critical_factor` x warning."""
        if not 0 < warning < float("inf") or (critical is not None and not critical >= warning):
            raise ValueError(f"{name}: need 0 < warning <= critical, got {warning}, {critical}")
        with self._lock:
            self._limits[name] = (float(warning), None if critical is None else float(critical))
            self._lowest_override = min(w for w, _ in self._limits.values())

    def set_thresholds(self, thresholds: Mapping[str, Any] | str) -> None:
        """Replace every override: {name: warning or (warning, critical)} or the text
        'name=warning[:critical],...' (see `parse_thresholds`)."""
        if isinstance(thresholds, str):
            thresholds = parse_thresholds(thresholds)
        with self._lock:
            self._limits, self._lowest_override = {}, float("inf")
        for name, value in thresholds.items():
            self.set_threshold(name, *(value if isinstance(value, tuple) else (value,)))

    def limits(self, name: str) -> tuple[float, float]:
        """(warning, critical) seconds for `name`: its own, else its family's, else defaults."""
        own = (self._limits.get(name) or self._limits.get(family(name))) if self._limits else None
        warning = self.slow_threshold if own is None else own[0]
        return warning, own[1] if own and own[1] is not None else warning * self.critical_factor

    def alerts(self) -> list[Alert]:
        """The most recent alerts (at most MAX_ALERTS), oldest first."""
        with self._lock:
            return list(self._alerts)

    def take_alerts(self) -> list[Alert]:
        """Alerts raised since the previous call (of those still kept), oldest first."""
        with self._lock:
            new = min(self._raised - self._taken, len(self._alerts))
            self._taken = self._raised
            return list(self._alerts)[len(self._alerts) - new:]

    def alert_counts(self) -> dict[str, int]:
        """Slow calls and degradations per level since start, logged or not."""
        with self._lock:
            return dict(self._counts)

    def _check_slow(self, name: str, seconds: float) -> None:
        warning, critical = self.limits(name)
        if seconds <= warning:
            return
        level = CRITICAL if seconds > critical else WARNING
        with self._lock:
            op = self._ops.get(name)
            if op is None:      # reset meanwhile
                return
            op.criticals += level == CRITICAL
            op.warnings += level == WARNING
            op.worst = max(op.worst, seconds)
            self._counts[level] += 1
            self._interval[level] += 1
            if _RANK[level] <= op.logged:
                return          # already said this interval
            op.logged = _RANK[level]
        reason = f"Slow operation {name}: {seconds:.2f}s (threshold {warning:.2f}s)"
        if level == CRITICAL:
            reason += f", critical over {critical:.2f}s"
        self._raise(Alert(level, name, seconds, critical if level == CRITICAL else warning,
                          reason), counted=True)

    def _raise(self, alert: Alert, counted: bool = False) -> None:
        with self._lock:
            self._alerts.append(alert)
            self._raised += 1
            if not counted:
                self._counts[alert.level] += 1
                self._interval[alert.level] += 1
        logger.log(logging.ERROR if alert.level == CRITICAL else logging.WARNING,
                   "%s", alert.reason)

    # -- trends ---------------------------------------------------------------------
    def check_trends(self) -> list[Alert]:
        """Compare every operation's recent median with its baseline (`report` runs it);
        returns the alerts of the operations that became degraded."""
        n, factor = self.trend_recent, self.degradation_factor
        with self._lock:
            series = {name: op.tail(n + self.trend_baseline)
                      for name, op in self._ops.items() if len(op.samples) >= 2 * n}
        new = []
        for name, seq in series.items():
            recent, base = statistics.median(seq[-n:]), statistics.median(seq[:-n])
            slow = recent >= self.trend_min_seconds and recent > factor * base
            with self._lock:
                op = self._ops.get(name)
                if op is None:
                    continue
                was, op.trend = op.trend is not None, (recent, base) if slow else None
            if slow and not was:
                alert = Alert(WARNING, name, recent, factor * base,
                              f"{name} degraded: p50 {_duration(recent)} vs "
                              f"{_duration(base)} baseline (last {n} calls vs the "
                              f"{len(seq) - n} before)")
                self._raise(alert)
                new.append(alert)
            elif was and not slow:
                logger.info("%s back to normal: p50 %s vs %s baseline", name,
                            _duration(recent), _duration(base))
        return new

    # -- caches and memory ------------------------------------------------------------
    def add_cache(self, name: str, cache: Any, *, hint: str = "", min_lookups: int = 20,
                  low_rate: float = 0.3) -> None:
        """Show a cache's hit rate in every report (same name replaces). `cache` has
        stats() -> {'hits', 'misses', ...} or hits/misses attributes, or is a function
        returning such a mapping; below `low_rate` after `min_lookups` lookups the line
        adds `hint`, or a generic one from its expired/evictions counts and TTL."""
        with self._lock:
            self._caches[name] = (cache, hint, min_lookups, low_rate)

    def caches(self) -> dict[str, Any]:
        """Every registered cache by name."""
        with self._lock:
            return {name: entry[0] for name, entry in self._caches.items()}

    def _cache_lines(self) -> list[str]:
        with self._lock:
            caches = list(self._caches.items())
        lines = []
        for name, (cache, hint, min_lookups, low_rate) in caches:
            try:
                s = cache_stats(cache)
            except Exception as exc:  # a broken cache must not break the report
                lines.append(f"cache {name}: unavailable: {type(exc).__name__}: {exc}")
                continue
            line = (f"cache {name}: hit rate {s['hit_rate']:.0%} ({s['hits']} hits / "
                    f"{s['lookups']} lookups)" if s["lookups"] else f"cache {name}: no lookups")
            if s["lookups"] >= min_lookups and s["hit_rate"] < low_rate:
                line += f" - hint: {hint or _cache_hint(s)}"
            lines.append(line)
        return lines

    @property
    def trace_memory(self) -> bool:
        """Whether reports list tracemalloc's growing allocation sites (costs speed)."""
        return self._trace

    @trace_memory.setter
    def trace_memory(self, on: bool) -> None:
        if on and not tracemalloc.is_tracing():
            tracemalloc.start()
            self._started_tracing = True
        elif not on and self._started_tracing:
            tracemalloc.stop()   # only when this monitor started it
            self._started_tracing = False
        self._trace = bool(on)
        self._sites = _allocation_sites() if on else {}

    def _memory_growth(self) -> list[str]:
        if not self._trace or not tracemalloc.is_tracing():
            return []
        sites = _allocation_sites()
        with self._lock:
            previous, self._sites = self._sites, sites
        grown = sorted(((size - previous.get(site, 0), site) for site, size in sites.items()),
                       reverse=True)[:TOP_ALLOCATIONS]
        current, peak = tracemalloc.get_traced_memory()
        sites_grown = [f"  {_short_path(file)}:{line}: +{diff / 1024:.1f} KiB"
                       for diff, (file, line) in grown if diff >= 1024]
        return [f"tracemalloc: traced {current / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB);"
                " grown most since the last report:"] + (
                    sites_grown or ["  no site grew by 1 KiB or more"])

    # -- report ---------------------------------------------------------------------
    def add_section(self, title: str, fn: Callable[[], str]) -> None:
        """Append `fn()`'s text to every report under `title` (same title replaces)."""
        with self._lock:
            self._sections[title] = fn

    def report(self) -> str:
        """Text report: operations by total time (largest first), alerts and trends since
        the previous report, caches, memory, extra sections; starts a new interval."""
        self.check_trends()
        stats = {name: self.stats(name) for name in self.operations()}
        lines = ["PERFORMANCE REPORT"]
        if stats:
            lines += _operation_table(stats)
        else:
            lines.append("no operations recorded" if self.enabled
                         else "monitoring disabled (ENABLE_PERFORMANCE_MONITORING=false)")
        lines += self._alert_lines() + self._cache_lines()
        lines.append(memory_line())
        lines += self._memory_growth()
        with self._lock:
            sections = list(self._sections.items())
        for title, fn in sections:
            try:
                text = fn()
            except Exception as exc:  # a broken section must not break the report
                text = f"unavailable: {type(exc).__name__}: {exc}"
            lines += [f"-- {title} --", text]
        return "\n".join(lines)

    def _alert_lines(self) -> list[str]:
        """This interval's alerts per operation and the degraded operations; then a new
        interval begins."""
        with self._lock:
            interval, self._interval = self._interval, {WARNING: 0, CRITICAL: 0}
            total = dict(self._counts)
            slow = [(name, op.criticals, op.warnings, op.worst) for name, op in self._ops.items()
                    if op.worst]
            degraded = sorted((name, op.trend) for name, op in self._ops.items() if op.trend)
            for op in self._ops.values():
                op.new_interval()
        if not any(total.values()):
            return ["alerts: none"]
        lines = [f"alerts since the last report: {interval[WARNING]} warning, "
                 f"{interval[CRITICAL]} critical (since start: {total[WARNING]} warning, "
                 f"{total[CRITICAL]} critical)"]
        for name, criticals, warnings, worst in sorted(slow, key=lambda r: (-r[1], -r[3])):
            warning, critical = self.limits(name)
            lines.append(f"  {'CRITICAL' if criticals else 'WARNING'} {name}: {criticals} over "
                         f"{critical:.2f}s, {warnings} over {warning:.2f}s, worst {worst:.2f}s")
        return lines + [f"  DEGRADED {name}: p50 {_duration(recent)} vs {_duration(base)} "
                        "baseline" for name, (recent, base) in degraded]

    def log_report(self, log: logging.Logger | None = None) -> None:
        """Log `report()` at INFO on `log` (default: this module's logger)."""
        (log or logger).info("%s", self.report())


def cache_stats(cache: Any) -> dict[str, Any]:
    """A cache's hits, misses, lookups, hit_rate and what else it reports (see add_cache)."""
    if callable(getattr(cache, "stats", None)):
        s = dict(cache.stats())
    elif callable(cache):
        s = dict(cache())
    else:
        s = {k: getattr(cache, k) for k in ("hits", "misses", "expired", "evictions")
             if hasattr(cache, k)}
    for key in ("ttl", "max_size"):
        if key not in s and isinstance(getattr(cache, key, None), (int, float)):
            s[key] = getattr(cache, key)
    hits, misses = int(s["hits"]), int(s["misses"])
    return s | {"hits": hits, "misses": misses, "lookups": hits + misses,
                "hit_rate": hits / (hits + misses) if hits + misses else 0.0}


def _cache_hint(s: Mapping[str, Any]) -> str:
    """What to change in a cache with a low hit rate, from what its statistics show."""
    ttl = f" ({s['ttl']:g} s)" if "ttl" in s else ""
    if s.get("expired", 0) > s["misses"] / 2:
        return (f"most misses are expired entries: its TTL{ttl} is shorter than the "
                "interval between lookups of a key; raise it")
    if s.get("evictions", 0) > s["misses"] / 2:
        bound = f" ({s['max_size']})" if "max_size" in s else ""
        return (f"most misses follow evictions: its size bound{bound} is smaller than the "
                "set of keys in use; raise it")
    return (f"few lookups find a live entry: its TTL{ttl} may be shorter than the interval "
            "between lookups, or its keys too fine-grained to repeat")


def family(name: str) -> str:
    """An operation's family: 'execute_trade' for 'execute_trade:BTC/USDT' or '...[BTC/USDT]'."""
    return name.partition(":")[0].partition("[")[0]


def parse_thresholds(text: str) -> dict[str, tuple[float, float | None]]:
    """'train_model=120:600, execute_trade=10' -> {name: (warning, critical or None)}
    seconds; ValueError naming the bad item."""
    out: dict[str, tuple[float, float | None]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = (s.strip() for s in part.rpartition("="))
        m = _THRESHOLD.fullmatch(value)
        if not sep or not name or any(c.isspace() or not c.isprintable() for c in name) or not m:
            raise ValueError(f"has {part[:60]!r}, not operation=seconds[:critical seconds]")
        warning, critical = float(m[1]), None if m[2] is None else float(m[2])
        if not warning > 0 or (critical is not None and critical < warning):
            raise ValueError(f"has {part[:60]!r}: need 0 < seconds <= critical seconds")
        if name in out:
            raise ValueError(f"names {name!r} twice")
        out[name] = (warning, critical)
    return out


def _check_factors(critical_factor: float, degradation_factor: float) -> None:
    if not critical_factor >= 1 or not degradation_factor > 1:
        raise ValueError(f"need critical_factor >= 1 and degradation_factor > 1, got "
                         f"{critical_factor}, {degradation_factor}")


def percentile(ordered: list[float], q: float) -> float:
    """q-th percentile of sorted, non-empty data, linear interpolation (numpy's default)."""
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _duration(seconds: float) -> str:
    """'12 ms', '0.35 ms', '2.5 s'."""
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


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


_TRACE_FILTERS = (tracemalloc.Filter(False, tracemalloc.__file__),
                  tracemalloc.Filter(False, __file__),   # the monitor's own bookkeeping
                  tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
                  tracemalloc.Filter(False, "<unknown>"))


def _allocation_sites() -> dict[tuple[str, int], int]:
    """Traced bytes per (file, line) now: far smaller to keep than a snapshot."""
    snapshot = tracemalloc.take_snapshot().filter_traces(_TRACE_FILTERS)
    return {(s.traceback[0].filename, s.traceback[0].lineno): s.size
            for s in snapshot.statistics("lineno")}


def _short_path(filename: str) -> str:
    """The path after site-packages/, the standard library or the working directory."""
    _, sep, tail = filename.rpartition("site-packages" + os.sep)
    if sep:
        return tail
    for root in (os.getcwd(), _STDLIB):
        if filename.startswith(root + os.sep):
            return filename[len(root) + 1:]
    return filename


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
    """The process-wide monitor, as `configure()` last set it up."""
    return _default_monitor


def configure(enabled: bool = True, slow_threshold: float = 5.0, *,
              critical_factor: float = CRITICAL_FACTOR,
              thresholds: Mapping[str, Any] | str | None = None,
              degradation_factor: float = DEGRADATION_FACTOR,
              trace_memory: bool = False) -> PerformanceMonitor:
    """Set up the process-wide monitor for a new run and return it: the same object as
    before (decorators and handles taken earlier stay valid), with everything of an earlier
    run forgotten (operations, alerts, sections, caches, threshold overrides). Disabled,
    recording is a no-op; TimingContext still measures `elapsed`."""
    if not 0 < slow_threshold < float("inf"):
        raise ValueError(f"slow_threshold must be > 0 seconds, got {slow_threshold}")
    _check_factors(critical_factor, degradation_factor)
    m = _default_monitor
    m.reset()
    with m._lock:
        m._sections.clear()
        m._caches.clear()
        m._listeners = []
    m.enabled, m.slow_threshold = enabled, slow_threshold
    m.critical_factor, m.degradation_factor = critical_factor, degradation_factor
    m.set_thresholds(thresholds or {})
    m.trace_memory = trace_memory
    return m

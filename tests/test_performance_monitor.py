"""performance_monitor.py: statistics, bounded memory, alerts, trends, caches, tracemalloc,
the process-wide monitor, disabled mode, threads, report, and model training timed into it."""
from __future__ import annotations

import logging
import re
import sys
import threading
import time
import tracemalloc
import unittest

import numpy as np

from performance_monitor import (CRITICAL, MAX_ALERTS, WARNING, Alert, PerformanceMonitor,
                                 TimingContext, cache_stats, configure, get_monitor,
                                 memory_usage, parse_thresholds, percentile, should_report)

LOGGER = "performance_monitor"


class StatsTest(unittest.TestCase):
    def test_stats_match_numpy(self) -> None:
        samples = np.random.default_rng(7).lognormal(-3, 1, 537)
        monitor = PerformanceMonitor(slow_threshold=1e9)
        for s in samples:
            monitor.record("op", float(s))
        stats = monitor.stats("op")
        self.assertEqual(stats["calls"], 537)
        self.assertAlmostEqual(stats["total"], samples.sum(), places=12)
        self.assertAlmostEqual(stats["avg"], samples.mean(), places=12)
        self.assertEqual((stats["min"], stats["max"]), (samples.min(), samples.max()))
        for q in (50, 95, 99):
            self.assertAlmostEqual(stats[f"p{q}"], np.percentile(samples, q), places=12)

    def test_percentile_edge_cases(self) -> None:
        for data in ([3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 4.0]):
            ordered = sorted(data)
            for q in (0, 50, 95, 99, 100):
                self.assertAlmostEqual(percentile(ordered, q), np.percentile(data, q))

    def test_percentiles_cover_the_last_window_totals_cover_all(self) -> None:
        monitor = PerformanceMonitor(window=100, slow_threshold=1e9)
        values = np.arange(250, dtype=float)
        for v in values:
            monitor.record("op", float(v))
        stats = monitor.stats("op")
        self.assertEqual((stats["calls"], stats["total"], stats["min"], stats["max"]),
                         (250, values.sum(), 0.0, 249.0))
        for q in (50, 95, 99):
            self.assertAlmostEqual(stats[f"p{q}"], np.percentile(values[-100:], q))

    def test_memory_is_bounded(self) -> None:
        monitor = PerformanceMonitor(window=1000, slow_threshold=1e9)
        for i in range(1000):
            monitor.record("op", i * 1e-6)
        buffer = monitor._ops["op"].samples
        size = buffer.buffer_info()
        for i in range(99_000):
            monitor.record("op", i * 1e-6)
        self.assertEqual(monitor.stats("op")["calls"], 100_000)
        self.assertIs(monitor._ops["op"].samples, buffer)
        self.assertEqual(buffer.buffer_info(), size)  # same allocation, no growth
        self.assertEqual(len(buffer), 1000)

    def test_unknown_operation(self) -> None:
        stats = PerformanceMonitor().stats("never")
        self.assertEqual(stats["calls"], 0)
        self.assertEqual(stats["p99"], 0.0)

    def test_bad_window(self) -> None:
        with self.assertRaises(ValueError):
            PerformanceMonitor(window=0)


class TimingTest(unittest.TestCase):
    def test_decorator_bare_and_named(self) -> None:
        monitor = PerformanceMonitor()

        @monitor.time_function
        def add(a: int, b: int = 1) -> int:
            """Adds."""
            return a + b

        @monitor.time_function(name="custom")
        def fail() -> None:
            raise KeyError("x")

        self.assertEqual(add(2, b=3), 5)
        self.assertEqual((add.__name__, add.__doc__), ("add", "Adds."))
        with self.assertRaises(KeyError):
            fail()
        qualname = "TimingTest.test_decorator_bare_and_named.<locals>.add"
        self.assertEqual(sorted(monitor.operations()), sorted([qualname, "custom"]))
        self.assertEqual(monitor.stats("custom")["calls"], 1)  # timed even when it raises

    def test_context_manager_and_timing_context(self) -> None:
        monitor = PerformanceMonitor()
        with monitor.timing("block"):
            time.sleep(0.002)
        with self.assertRaises(ValueError), monitor.timing("block"):
            raise ValueError
        self.assertEqual(monitor.stats("block")["calls"], 2)
        self.assertGreaterEqual(monitor.stats("block")["max"], 0.002)

        log = logging.getLogger("test.timing")
        with self.assertLogs(log, logging.DEBUG) as logs:
            with TimingContext("ctx", log, monitor) as t:
                time.sleep(0.002)
        self.assertGreaterEqual(t.elapsed, 0.002)
        self.assertEqual(monitor.stats("ctx")["max"], t.elapsed)
        self.assertIn("ctx took", logs.output[0])

    def test_default_monitor(self) -> None:
        monitor = configure()   # as a fresh process has it, whatever ran before
        self.assertIs(monitor, get_monitor())
        name = f"default-{id(self)}"
        with TimingContext(name):
            pass
        self.assertEqual(monitor.stats(name)["calls"], 1)

    def test_slow_operation_warning(self) -> None:
        monitor = PerformanceMonitor(slow_threshold=0.01)

        @monitor.time_function(name="slow_op")
        def slow() -> None:
            time.sleep(0.03)

        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            slow()
            monitor.record("recorded", 7.25)
        self.assertEqual(len(logs.records), 2)
        self.assertRegex(logs.output[0], r"Slow operation slow_op: \d+\.\d\ds")
        self.assertIn("Slow operation recorded: 7.25s (threshold 0.01s)", logs.output[1])
        with self.assertNoLogs(LOGGER, logging.WARNING):
            monitor.record("fast", 0.009)

    def test_disabled_records_nothing(self) -> None:
        monitor = PerformanceMonitor(enabled=False, slow_threshold=0.0)

        @monitor.time_function
        def work(x: int) -> int:
            return x * 2

        with self.assertNoLogs(LOGGER, logging.WARNING):
            self.assertEqual(work(21), 42)
            with monitor.timing("block"):
                pass
            monitor.record("op", 99.0)
            with TimingContext("ctx", monitor=monitor) as t:
                pass
        self.assertIs(monitor.timing("a"), monitor.timing("b"))  # one shared no-op
        self.assertEqual(monitor.operations(), [])
        self.assertGreater(t.elapsed, 0.0)  # the caller still gets its duration
        self.assertIn("monitoring disabled", monitor.report())

        monitor.slow_threshold = 1e9
        monitor.enabled = True  # switched on later: already-decorated functions record
        work(1)
        self.assertEqual(monitor.stats(work.__qualname__)["calls"], 1)

    def test_threads_add_up(self) -> None:
        monitor = PerformanceMonitor(window=64, slow_threshold=1e9)
        start = threading.Barrier(8)

        @monitor.time_function(name="decorated")
        def noop() -> None:
            pass

        def worker(k: int) -> None:
            start.wait()
            for i in range(3000):
                monitor.record(f"op{i}", 1.0)  # new operations created by every thread at once
                monitor.record("shared", float(k))
                noop()
                with monitor.timing("ctx"):
                    pass

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads often, so races would show
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(interval)
        shared = monitor.stats("shared")
        self.assertEqual(shared["calls"], 24_000)
        self.assertEqual(shared["total"], 3000 * sum(range(8)))
        self.assertEqual((shared["min"], shared["max"]), (0.0, 7.0))
        self.assertEqual({monitor.stats(f"op{i}")["calls"] for i in range(3000)}, {8})
        self.assertEqual(monitor.stats("decorated")["calls"], 24_000)
        self.assertEqual(monitor.stats("ctx")["calls"], 24_000)
        self.assertEqual(len(monitor._ops["shared"].samples), 64)


class ReportTest(unittest.TestCase):
    def test_report_contents(self) -> None:
        monitor = PerformanceMonitor(slow_threshold=1e9)
        monitor.record("scan_all_pairs", 2.0)
        monitor.record("run_cycle", 3.0)
        monitor.record("run_cycle", 4.0)
        monitor.record("execute_trade[BTC/USDT]", 0.25)
        monitor.add_section("ML prediction cache", lambda: "hits 90 misses 10")
        monitor.add_section("broken", lambda: 1 / 0)
        report = monitor.report()
        lines = report.splitlines()
        self.assertEqual(lines[0], "PERFORMANCE REPORT")
        names = [line.split()[0] for line in lines[2:5]]
        self.assertEqual(names, ["run_cycle", "scan_all_pairs", "execute_trade[BTC/USDT]"])
        self.assertRegex(lines[2], r"^run_cycle\s+2\s+7\.000\s+3500\.000\s+3000\.000")
        self.assertRegex(report, r"memory: rss \d+\.\d MiB, peak \d+\.\d MiB")
        self.assertIn("-- ML prediction cache --\nhits 90 misses 10", report)
        self.assertIn("-- broken --\nunavailable: ZeroDivisionError", report)

        log = logging.getLogger("test.report")
        with self.assertLogs(log, logging.INFO) as logs:
            monitor.log_report(log)
        message = logs.records[0].getMessage()
        self.assertTrue(message.startswith("PERFORMANCE REPORT\n"))
        self.assertIn("scan_all_pairs", message)

    def test_empty_report_and_reset(self) -> None:
        monitor = PerformanceMonitor()
        monitor.record("x", 0.1)
        monitor.reset()
        self.assertEqual(monitor.operations(), [])
        self.assertIn("no operations recorded", monitor.report())

    def test_memory_usage(self) -> None:
        current, peak = memory_usage()
        self.assertGreater(current, 1.0)  # MiB; /proc exists on the Linux test machines
        self.assertGreater(peak, 1.0)

    def test_should_report(self) -> None:
        self.assertEqual([c for c in range(0, 31) if should_report(c, 10)], [10, 20, 30])
        self.assertTrue(should_report(7, 1))


class AlertTest(unittest.TestCase):
    def test_warning_and_critical_levels(self) -> None:
        monitor = PerformanceMonitor(slow_threshold=1.0)      # critical: 3 x 1.0
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            monitor.record("warned", 1.5)
            monitor.record("critical", 3.5)
        self.assertEqual([r.levelno for r in logs.records], [logging.WARNING, logging.ERROR])
        self.assertIn("Slow operation critical: 3.50s (threshold 1.00s), critical over 3.00s",
                      logs.output[1])
        self.assertEqual(monitor.alerts(), [
            Alert(WARNING, "warned", 1.5, 1.0,
                  "Slow operation warned: 1.50s (threshold 1.00s)"),
            Alert(CRITICAL, "critical", 3.5, 3.0,
                  "Slow operation critical: 3.50s (threshold 1.00s), critical over 3.00s")])
        self.assertEqual(monitor.alert_counts(), {WARNING: 1, CRITICAL: 1})

    def test_logged_once_per_operation_and_level_per_report_interval(self) -> None:
        monitor = PerformanceMonitor(slow_threshold=1.0)
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            for _ in range(10):
                monitor.record("op", 1.5)
            for _ in range(5):
                monitor.record("op", 4.0)      # escalation to critical: said once more
            monitor.record("other", 1.5)       # another operation has its own allowance
        self.assertEqual([(r.levelno, r.getMessage().split(":")[0]) for r in logs.records],
                         [(logging.WARNING, "Slow operation op"),
                          (logging.ERROR, "Slow operation op"),
                          (logging.WARNING, "Slow operation other")])
        self.assertEqual(monitor.alert_counts(), {WARNING: 11, CRITICAL: 5})  # all counted
        self.assertEqual(len(monitor.alerts()), 3)
        report = monitor.report()
        self.assertIn("alerts since the last report: 11 warning, 5 critical "
                      "(since start: 11 warning, 5 critical)", report)
        self.assertIn("  CRITICAL op: 5 over 3.00s, 10 over 1.00s, worst 4.00s", report)
        self.assertIn("  WARNING other: 0 over 3.00s, 1 over 1.00s, worst 1.50s", report)
        with self.assertLogs(LOGGER, logging.WARNING) as logs:   # a new interval
            monitor.record("op", 1.5)
        self.assertEqual(len(logs.records), 1)
        report = monitor.report()
        self.assertIn("alerts since the last report: 1 warning, 0 critical "
                      "(since start: 12 warning, 5 critical)", report)
        self.assertNotIn("WARNING other", report)

    def test_thresholds_per_operation_and_family(self) -> None:
        monitor = PerformanceMonitor(slow_threshold=1.0,
                                     thresholds="train_model=120, execute_trade=0.5:0.8")
        monitor.set_threshold("execute_trade:ETH/USDT", 2.0)
        self.assertEqual(monitor.limits("train_model"), (120.0, 360.0))
        self.assertEqual(monitor.limits("execute_trade:BTC/USDT"), (0.5, 0.8))
        self.assertEqual(monitor.limits("execute_trade[BTC/USDT]"), (0.5, 0.8))
        self.assertEqual(monitor.limits("execute_trade:ETH/USDT"), (2.0, 6.0))
        self.assertEqual(monitor.limits("scan_all_pairs"), (1.0, 3.0))
        with self.assertNoLogs(LOGGER, logging.WARNING):
            monitor.record("train_model", 60.0)
            monitor.record("execute_trade:ETH/USDT", 1.5)
            monitor.record("run_cycle", 0.9)
        with self.assertLogs(LOGGER, logging.ERROR):
            monitor.record("execute_trade:BTC/USDT", 0.9)
        monitor.set_thresholds({"run_cycle": (0.1, 0.2)})   # replaces every override
        self.assertEqual(monitor.limits("train_model"), (1.0, 3.0))
        with self.assertLogs(LOGGER, logging.WARNING):
            monitor.record("run_cycle", 0.15)
        with self.assertRaises(ValueError):
            monitor.set_threshold("x", 2.0, 1.0)

    def test_parse_thresholds(self) -> None:
        self.assertEqual(parse_thresholds(""), {})
        self.assertEqual(parse_thresholds(" train_model=120:600 , execute_trade:BTC/USDT=.5"),
                         {"train_model": (120.0, 600.0), "execute_trade:BTC/USDT": (0.5, None)})
        for bad in ("train_model", "=5", "a=0", "a=5:1", "a=1e3", "a=nan", "a=-1", "a b=1",
                    "a=1,a=2", "a=1:2:3"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                parse_thresholds(bad)

    def test_alerts_are_bounded_and_taken_once(self) -> None:
        monitor = PerformanceMonitor(slow_threshold=1.0)
        logging.getLogger(LOGGER).disabled = True
        try:
            for i in range(MAX_ALERTS + 50):
                monitor.record(f"op{i}", 2.0)
                if i == 9:
                    first = monitor.take_alerts()
        finally:
            logging.getLogger(LOGGER).disabled = False
        self.assertEqual([a.operation for a in first], [f"op{i}" for i in range(10)])
        kept = monitor.alerts()
        self.assertEqual(len(kept), MAX_ALERTS)
        self.assertEqual(kept[-1].operation, f"op{MAX_ALERTS + 49}")
        self.assertEqual(monitor.take_alerts(), kept)      # 140 new, the last 100 kept
        self.assertEqual(monitor.take_alerts(), [])
        monitor.reset()
        self.assertEqual((monitor.alerts(), monitor.alert_counts()),
                         ([], {WARNING: 0, CRITICAL: 0}))


class TrendTest(unittest.TestCase):
    def test_degradation_against_the_operations_own_baseline(self) -> None:
        monitor = PerformanceMonitor(slow_threshold=1e9)
        for _ in range(200):
            monitor.record("scan", 0.005)
            monitor.record("steady", 0.005)
        for _ in range(20):
            monitor.record("scan", 0.012)
            monitor.record("steady", 0.009)                # 1.8x: not degraded
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            report = monitor.report()
        self.assertEqual(len(logs.records), 1)
        reason = "scan degraded: p50 12 ms vs 5 ms baseline (last 20 calls vs the 200 before)"
        self.assertEqual(logs.records[0].getMessage(), reason)
        self.assertEqual(monitor.take_alerts(), [Alert(WARNING, "scan", 0.012, 0.01, reason)])
        self.assertIn("  DEGRADED scan: p50 12 ms vs 5 ms baseline", report)
        self.assertNotIn("steady", report.split("alerts since")[1])
        with self.assertNoLogs(LOGGER, logging.WARNING):   # still degraded: no new alert
            self.assertIn("DEGRADED scan", monitor.report())
        for _ in range(20):
            monitor.record("scan", 0.005)
        with self.assertLogs(LOGGER, logging.INFO) as logs:
            report = monitor.report()
        self.assertIn("scan back to normal", logs.output[0])
        self.assertNotIn("DEGRADED", report)
        self.assertEqual(monitor.take_alerts(), [])

    def test_no_trend_on_noise_or_too_few_calls(self) -> None:
        monitor = PerformanceMonitor(slow_threshold=1e9)
        for _ in range(200):
            monitor.record("micro", 5e-6)
        for _ in range(20):
            monitor.record("micro", 50e-6)             # 10x, but 50 us: below 1 ms
        for _ in range(19):
            monitor.record("young", 0.005)
        for _ in range(20):
            monitor.record("young", 0.05)              # baseline of 19 < 20 calls
        with self.assertNoLogs(LOGGER, logging.WARNING):
            self.assertEqual(monitor.check_trends(), [])
        self.assertIn("alerts: none", monitor.report())

    def test_baseline_follows_the_ring_buffer_when_it_wraps(self) -> None:
        monitor = PerformanceMonitor(slow_threshold=1e9, window=64, trend_recent=8,
                                     trend_baseline=32)
        for _ in range(100):
            monitor.record("op", 0.010)
        for _ in range(8):
            monitor.record("op", 0.030)     # written at ring positions 44..51
        with self.assertLogs(LOGGER, logging.WARNING):
            alerts = monitor.check_trends()
        self.assertEqual([(a.seconds, a.threshold) for a in alerts], [(0.030, 0.020)])
        self.assertIn("last 8 calls vs the 32 before", alerts[0].reason)


class TTLCacheStub:
    """The counters market_scanner.TTLCache exposes (hits, misses, ttl), without a clock."""

    def __init__(self, hits: int, misses: int, ttl: float) -> None:
        self.hits, self.misses, self.ttl = hits, misses, ttl


class CacheTest(unittest.TestCase):
    def test_real_caches_with_hints(self) -> None:
        from llm_cache import LLMCache
        from market_scanner import TTLCache
        from ml_model import PredictionCache

        now = [0.0]
        scan = TTLCache(100.0, lambda: now[0])
        scan.put("view")
        for _ in range(25):
            now[0] += 120.0                  # the cycle is longer than the TTL: always stale
            if scan.get() is None:
                scan.put("view")
        model = PredictionCache(ttl=10.0, clock=lambda: now[0])
        keys = [(1.0, 2.0, 3.0, 4.0)]
        for _ in range(30):
            now[0] += 20.0
            if np.isnan(model.get_many(keys, 0)[0]):
                model.put_many(keys, [0.5], 0)
        llm = LLMCache()
        monitor = PerformanceMonitor()
        monitor.add_cache("scan", scan)
        monitor.add_cache("model", model)
        monitor.add_cache("LLM", llm)
        monitor.add_cache("fine", TTLCache(300.0, time.time))
        monitor.add_cache("busy", lambda: {"hits": 90, "misses": 10})
        monitor.add_cache("scan-hinted", TTLCacheStub(34, 216, 60.0),
                          hint="MARKET_SCAN_CACHE_DURATION may be shorter than CHECK_INTERVAL")
        monitor.add_cache("evicting", lambda: {"hits": 5, "misses": 95, "evictions": 80,
                                               "max_size": 10})
        monitor.add_cache("few", TTLCacheStub(0, 19, 60.0))
        monitor.add_cache("broken", lambda: {"hits": 1})
        lines = {line.split(":")[0]: line for line in monitor.report().splitlines()
                 if line.startswith("cache ")}
        self.assertEqual(lines["cache scan"],
                         "cache scan: hit rate 0% (0 hits / 25 lookups) - hint: few lookups "
                         "find a live entry: its TTL (100 s) may be shorter than the interval "
                         "between lookups, or its keys too fine-grained to repeat")
        self.assertIn("cache model: hit rate 0% (0 hits / 30 lookups) - hint: most misses are "
                      "expired entries: its TTL (10 s)", lines["cache model"])
        self.assertEqual(lines["cache LLM"], "cache LLM: no lookups")
        self.assertEqual(lines["cache fine"], "cache fine: no lookups")
        self.assertEqual(lines["cache busy"], "cache busy: hit rate 90% (90 hits / 100 lookups)")
        self.assertEqual(lines["cache scan-hinted"],
                         "cache scan-hinted: hit rate 14% (34 hits / 250 lookups) - hint: "
                         "MARKET_SCAN_CACHE_DURATION may be shorter than CHECK_INTERVAL")
        self.assertIn("most misses follow evictions: its size bound (10)", lines["cache evicting"])
        self.assertEqual(lines["cache few"], "cache few: hit rate 0% (0 hits / 19 lookups)")
        self.assertEqual(lines["cache broken"], "cache broken: unavailable: KeyError: 'misses'")
        self.assertEqual(cache_stats(model)["ttl"], 10.0)
        self.assertEqual(cache_stats(model)["lookups"], 30)


class TraceMemoryTest(unittest.TestCase):
    def test_off_by_default(self) -> None:
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc started outside the test")
        monitor = PerformanceMonitor()
        self.assertFalse(monitor.trace_memory)
        self.assertNotIn("tracemalloc", monitor.report())
        self.assertFalse(tracemalloc.is_tracing())

    def test_growing_list_is_reported_at_its_line(self) -> None:
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc started outside the test")
        monitor = PerformanceMonitor(trace_memory=True)
        hoard: list[bytearray] = []
        try:
            self.assertTrue(tracemalloc.is_tracing())
            monitor.report()
            for _ in range(3000):
                hoard.append(bytearray(1024))   # GROWS: ~3 MiB from this line
            report = monitor.report()
        finally:
            monitor.trace_memory = False
        self.assertFalse(tracemalloc.is_tracing())      # stopped: this monitor started it
        with open(__file__, encoding="utf-8") as f:
            line = next(i for i, text in enumerate(f, 1) if "# GROWS" in text)
        growth = re.search(rf"test_performance_monitor\.py:{line}: \+(\d+\.\d) KiB", report)
        self.assertIsNotNone(growth, report)
        self.assertGreater(float(growth[1]), 3000)
        self.assertIn("grown most since the last report:", report)
        self.assertNotIn("tracemalloc", monitor.report())
        self.assertEqual(len(hoard), 3000)


class ConfigureTest(unittest.TestCase):
    def tearDown(self) -> None:
        configure()

    def test_configure_sets_up_the_one_process_wide_monitor(self) -> None:
        before = get_monitor()
        before.add_section("stale", lambda: "from an earlier run")
        before.add_cache("stale", lambda: {"hits": 1, "misses": 1})
        before.record("old", 0.1)
        monitor = configure(enabled=True, slow_threshold=0.5, thresholds="train_model=60")
        self.assertIs(monitor, before)
        self.assertIs(get_monitor(), monitor)
        self.assertEqual(monitor.operations(), [])
        self.assertNotIn("stale", monitor.report())
        self.assertEqual(monitor.limits("train_model"), (60.0, 180.0))
        self.assertEqual(monitor.limits("run_cycle"), (0.5, 1.5))
        with TimingContext("anywhere"):
            pass
        with get_monitor().timing("elsewhere"):
            pass
        self.assertEqual(sorted(monitor.operations()), ["anywhere", "elsewhere"])

    def test_disabled_is_a_no_op(self) -> None:
        monitor = configure(enabled=False, slow_threshold=0.001)
        with self.assertNoLogs(LOGGER, logging.WARNING):
            with TimingContext("anywhere") as t:
                time.sleep(0.002)
            monitor.record("slow", 99.0)
        self.assertGreater(t.elapsed, 0.001)
        self.assertEqual((monitor.operations(), monitor.alerts()), ([], []))

    def test_bad_settings(self) -> None:
        for kwargs in ({"slow_threshold": 0}, {"critical_factor": 0.5},
                       {"degradation_factor": 1.0}, {"thresholds": "x=oops"}):
            with self.subTest(**kwargs), self.assertRaises(ValueError):
                configure(**kwargs)


class TrainingIsTimedTest(unittest.TestCase):
    def test_retrainer_times_train_model(self) -> None:
        from sklearn.dummy import DummyClassifier

        from features import FEATURE_NAMES
        from ml_model import MLModel
        from model_training import Retrainer, TrainingData

        rng = np.random.default_rng(3)
        n, t = 400, 1_700_000_000_000 + 300_000 * np.arange(400, dtype=np.int64)
        data = TrainingData()
        data.add(rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32),
                 (rng.random(n) < 0.4).astype(np.int8),
                 rng.normal(0, 0.01, n).astype(np.float32), t, t + 1_200_000)
        monitor = PerformanceMonitor(slow_threshold=1e9)
        retrainer = Retrainer(MLModel(), data, "unused", factory=DummyClassifier,
                              persist=False, monitor=monitor).start(load=False)
        try:
            self.assertTrue(retrainer.wait_idle(30))
        finally:
            retrainer.stop()
        self.assertEqual(monitor.stats("train_model")["calls"], 1)
        self.assertIn("train_model", monitor.report())


if __name__ == "__main__":
    unittest.main()

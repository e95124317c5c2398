"""performance_monitor.py: statistics, bounded memory, alerts, disabled mode, threads, report."""
from __future__ import annotations

import logging
import sys
import threading
import time
import unittest

import numpy as np

from performance_monitor import (PerformanceMonitor, TimingContext, get_monitor, memory_usage,
                                 percentile, should_report)

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
        monitor = get_monitor()
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


if __name__ == "__main__":
    unittest.main()

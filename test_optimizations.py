"""The optimisations the seed reports describe, each shown to work (behaviour, not timings).

Run with `python -m unittest test_optimizations -v`. Covered: vectorised ML features,
prediction caching and its size limit, training-data memory management, the symbol-group
cache, parallel scanning with per-future error handling and timeouts, the scan cache,
the performance monitor, and the LLM cache (key generation, hit rate, TTL cleanup, size).
"""
import logging
import tempfile
import threading
import time
import unittest

import numpy as np

from indicators import compute_all
from llm_cache import LLMCache, LLMDecision
from market_scanner import MarketScanner, run_parallel
from features import HISTORY_NEEDED, close_windows, prepare_features
from labels import sample_key
from ml_model import MLModel, PredictionCache
from model_training import TrainingData
from performance_monitor import PerformanceMonitor, TimingContext
from risk_manager import RiskManager


def random_candles(pairs: int, candles: int, seed: int = 0) -> np.ndarray:
    """(pairs, candles, 5) open/high/low/close/volume from a random walk."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (pairs, candles)), axis=1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    spread = np.abs(rng.normal(0, 0.004, (pairs, candles))) * close
    high = np.maximum(open_, close) + spread
    low = np.minimum(open_, close) - spread
    volume = rng.lognormal(3, 0.5, (pairs, candles))
    return np.stack([open_, high, low, close, volume], axis=-1)


class TestVectorisedFeatures(unittest.TestCase):
    def test_one_batched_matrix_equals_per_pair_rows(self):
        c = random_candles(8, 300)
        ind = compute_all(*(c[..., k] for k in range(5)))
        latest = {k: v[:, -1] for k, v in ind.items()}
        recent = c[:, -HISTORY_NEEDED - 1:, 3]
        batched = prepare_features(latest, recent)
        self.assertEqual(batched.dtype, np.float32)
        for i in range(8):
            row = prepare_features({k: v[i:i + 1] for k, v in latest.items()}, recent[i:i + 1])
            np.testing.assert_array_equal(batched[i], row[0])

    def test_history_features_match_the_latest_features(self):
        c = random_candles(3, 200, seed=1)
        ind = compute_all(*(c[..., k] for k in range(5)))
        history = prepare_features(ind, close_windows(c[..., 3]))
        latest = prepare_features({k: v[:, -1] for k, v in ind.items()}, c[:, -HISTORY_NEEDED - 1:, 3])
        np.testing.assert_allclose(history[:, -1], latest, rtol=1e-6)


class FixedEstimator:
    """A fitted-model stand-in that counts the rows it is asked about."""

    classes_ = np.array([0, 1])

    def __init__(self):
        self.rows = 0

    def predict_proba(self, X):
        self.rows += len(X)
        p = 1 / (1 + np.exp(-X[:, 0]))
        return np.stack([1 - p, p], axis=1)


class TestPredictionCache(unittest.TestCase):
    def setUp(self):
        self.now = [0.0]
        self.cache = PredictionCache(ttl=300, max_size=1000, decimals=1, clock=lambda: self.now[0])
        self.model = MLModel(self.cache)
        self.estimator = FixedEstimator()
        self.model.swap(self.estimator, {"kind": "test"})

    def keys(self, n, offset=0.0):
        return [(50.0 + offset + i, 0.01, 0.5, 1.2) for i in range(n)]

    def test_repeated_states_are_served_from_the_cache(self):
        X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
        first = self.model.predict_proba(X, self.keys(20))
        self.assertEqual(self.estimator.rows, 20)
        second = self.model.predict_proba(X, self.keys(20))
        self.assertEqual(self.estimator.rows, 20, "no model call for cached states")
        np.testing.assert_array_equal(first, second)
        self.assertEqual((self.cache.hits, self.cache.misses), (20, 20))

    def test_entries_expire_and_a_new_model_clears_the_cache(self):
        X = np.ones((1, 4), dtype=np.float32)
        self.model.predict_proba(X, self.keys(1))
        self.now[0] = 301
        self.model.predict_proba(X, self.keys(1))
        self.assertEqual(self.estimator.rows, 2, "expired after the TTL")
        self.model.swap(FixedEstimator(), {"kind": "retrained"})
        self.assertEqual(len(self.cache), 0)

    def test_size_is_bounded_with_least_recently_used_eviction(self):
        X = np.zeros((1500, 4), dtype=np.float32)
        self.model.predict_proba(X, self.keys(1500))
        self.assertEqual(len(self.cache), 1000)
        self.estimator.rows = 0
        self.model.predict_proba(X[:1], self.keys(1, offset=1499))  # the newest stays
        self.assertEqual(self.estimator.rows, 0)
        self.model.predict_proba(X[:1], self.keys(1))                # the oldest went
        self.assertEqual(self.estimator.rows, 1)


class TestTrainingDataMemory(unittest.TestCase):
    def add(self, data, n, start):
        rng = np.random.default_rng(start)
        t = np.arange(start, start + n, dtype=np.int64) * 300_000
        data.add(rng.normal(size=(n, 14)).astype(np.float32), (rng.random(n) > 0.5).astype(np.float32),
                 rng.normal(0, 0.01, n), t, t + 300_000, "history", sample_key("X/USDT", t))

    def test_trimmed_to_15000_past_20000_and_5000_most_important_saved(self):
        data = TrainingData()
        self.add(data, 20_000, 0)
        self.assertEqual(len(data), 20_000)
        self.add(data, 1, 20_000)
        self.assertEqual(len(data), 15_000)
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/training.npz"
            self.assertEqual(data.save(path), 5_000)
            loaded = TrainingData()
            self.assertEqual(loaded.load(path), 5_000)
            snap, full = loaded.snapshot(), data.snapshot()
            biggest = np.sort(np.abs(full.ret))[-100:]
            self.assertTrue(np.isin(biggest, np.abs(snap.ret)).all(), "extreme outcomes kept")
            self.assertIn(full.time_ms.max(), snap.time_ms, "the most recent data kept")


class TestSymbolGroupCache(unittest.TestCase):
    def test_lookups_are_computed_once_then_served_from_a_dict(self):
        calls = []

        class CountingRisk(RiskManager):
            def compute_group(self, symbol: str) -> str:
                calls.append(symbol)
                return super().compute_group(symbol)

        risk = CountingRisk(0.01, 5, 0.2, 2)
        for _ in range(3):
            self.assertEqual(risk.group_of("ETH/USDT"), "majors")
            self.assertEqual(risk.group_of("DOGE/USDT"), "memes")
            self.assertEqual(risk.group_of("NEWCOIN/USDT"), "other")
        self.assertEqual(calls, ["ETH/USDT", "DOGE/USDT", "NEWCOIN/USDT"])


class TestParallelScan(unittest.TestCase):
    def test_pairs_run_concurrently_with_errors_and_timeouts_isolated(self):
        running, peak = [0], [0]
        lock = threading.Lock()
        release = threading.Event()

        def fetch(symbol):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            try:
                if symbol == "HANG":
                    release.wait(10)
                time.sleep(0.05)
                if symbol == "FAIL":
                    raise ConnectionError("exchange said no")
                return symbol
            finally:
                with lock:
                    running[0] -= 1

        symbols = ["HANG", "FAIL"] + [f"P{i}" for i in range(8)]
        out = run_parallel(fetch, symbols, workers=5, timeout=1.0)
        release.set()
        self.assertEqual(sorted(out.results), sorted(f"P{i}" for i in range(8)))
        self.assertIn("exchange said no", out.failed["FAIL"])
        self.assertEqual(out.timed_out, ["HANG"])
        self.assertEqual(peak[0], 5, "workers = min(MAX_PARALLEL_WORKERS, pairs)")

    def test_a_scan_inside_the_cache_duration_makes_no_request(self):
        from config import load_config
        from exchange import sim_client
        from sim_exchange import SimExchangeServer
        from sim_market import SimMarket

        market = SimMarket(pairs=6, seed=2, speed=60)
        with SimExchangeServer(market) as server:
            client = sim_client(server, market, "sim-key", "sim-secret")
            config = load_config(None, {"SIM_PAIRS": "6", "CANDLE_HISTORY": "120",
                                        "DATA_DIR": tempfile.gettempdir()})
            scanner = MarketScanner(client, config)
            scanner.scan()
            server.reset_counters()
            result = scanner.scan()
            self.assertTrue(result.from_cache)
            self.assertEqual(server.request_count(), 0)


class TestPerformanceMonitor(unittest.TestCase):
    def test_timings_percentiles_alerts_and_report(self):
        monitor = PerformanceMonitor(slow_threshold=0.05)

        @monitor.time_function(name="scan_all_pairs")
        def scan():
            return 42

        for _ in range(5):
            self.assertEqual(scan(), 42)
        with self.assertLogs("performance_monitor", logging.WARNING):
            monitor.record("run_cycle", 0.2)
        stats = monitor.stats("scan_all_pairs")
        self.assertEqual(stats["calls"], 5)
        self.assertLessEqual(stats["min"], stats["p50"])
        self.assertLessEqual(stats["p50"], stats["p99"])
        self.assertLessEqual(stats["p99"], stats["max"])
        report = monitor.report()
        self.assertIn("scan_all_pairs", report)
        self.assertIn("memory", report)

    def test_timing_context_and_disabled_monitor(self):
        monitor = PerformanceMonitor(enabled=False)
        with monitor.timing("execute_trade:BTC/USDT"):
            pass
        self.assertEqual(monitor.operations(), [])
        recording = PerformanceMonitor()
        with self.assertLogs("timing", logging.DEBUG) as logs:
            with TimingContext("update_positions", logging.getLogger("timing"), recording) as timer:
                sum(range(10_000))
        self.assertGreater(timer.elapsed, 0.0)
        self.assertEqual(recording.stats("update_positions")["calls"], 1)
        self.assertEqual(recording.stats("update_positions")["total"], timer.elapsed)
        self.assertIn("update_positions took", logs.output[0])


def llm_state(**changes):
    state = {"symbol": "ETH/USDT", "candle_ts": 1_700_000_000_000, "price": 3000.0,
             "change_1": 0.1, "change_6": 0.4, "change_24": 1.0, "rsi": 55.0, "macd_hist": 1.5,
             "bb_position": 0.6, "atr_pct": 0.5, "momentum_pct": 0.8, "volume_ratio": 1.3,
             "model_probability": 0.6, "open_positions": 1, "max_positions": 5}
    state.update(changes)
    return state


class TestLLMCache(unittest.TestCase):
    def setUp(self):
        self.now = [0.0]
        self.cache = LLMCache(ttl=90, max_size=1000, clock=lambda: self.now[0])
        self.yes = LLMDecision(True, 0.5, "trend and volume agree", "llm")

    def test_similar_states_share_a_key_and_different_ones_do_not(self):
        base = self.cache.key(llm_state())
        self.assertEqual(self.cache.key(llm_state(rsi=56.0, price=3000.5)), base)
        self.assertNotEqual(self.cache.key(llm_state(rsi=75.0)), base)
        self.assertNotEqual(self.cache.key(llm_state(symbol="BTC/USDT")), base)

    def test_hit_rate_is_tracked(self):
        self.assertIsNone(self.cache.get(llm_state()))
        self.cache.put(llm_state(), self.yes)
        for _ in range(3):
            self.assertTrue(self.cache.get(llm_state(rsi=55.5)).take)
        stats = self.cache.stats()
        self.assertEqual(stats["misses"], 1)
        self.assertAlmostEqual(stats["hit_rate"], 0.75)

    def test_expired_entries_are_cleaned_up(self):
        self.cache.put(llm_state(), self.yes)
        newer = llm_state(candle_ts=llm_state()["candle_ts"] + 300_000)
        self.assertIsNotNone(self.cache.get(newer), "a similar state of the next candle reuses it")
        self.now[0] = 1000  # past the TTL, and its candle is superseded
        self.assertEqual(self.cache.purge_expired(), 1)
        self.assertEqual(len(self.cache), 0)

    def test_size_is_bounded(self):
        cache = LLMCache(ttl=90, max_size=10, clock=lambda: 0.0)
        for i in range(25):
            cache.put(llm_state(symbol=f"C{i}/USDT"), self.yes)
        self.assertEqual(len(cache), 10)
        self.assertEqual(cache.stats()["evictions"], 15)


if __name__ == "__main__":
    unittest.main()

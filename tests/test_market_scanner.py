"""The scanner against real ccxt and the simulated exchange on 127.0.0.1."""
import tempfile
import threading
import time
import unittest

import numpy as np

from config import load_config
from clock import ManualClock
from exchange import sim_client
from market_scanner import (MIN_CANDLES, UNIVERSE_REFRESH, CandleStore, MarketScanner, TTLCache,
                            run_parallel)
from sim_exchange import SimExchangeServer
from sim_market import SimMarket

TF_MS = 300_000


def scanner_config(**overrides):
    env = {"SIM_PAIRS": "12", "MAX_PAIRS": "12", "CANDLE_HISTORY": "150", "SCAN_TIMEOUT": "10",
           "MARKET_SCAN_CACHE_DURATION": "300", "MAX_PARALLEL_WORKERS": "6",
           "DATA_DIR": tempfile.gettempdir()}
    env.update({k: str(v) for k, v in overrides.items()})
    return load_config(None, environ=env)


class ScannerCase(unittest.TestCase):
    """The market clock stands still (speed 0) and moves only by `self.market.advance`, so the
    scan cache's TTL and the candles' closing times are under the test's control."""
    speed = 0.0

    def setUp(self):
        self.market = SimMarket(pairs=12, seed=3, speed=self.speed)
        self.server = SimExchangeServer(self.market).start()
        self.addCleanup(self.server.stop)
        self.client = sim_client(self.server, self.market, "sim-key", "sim-secret",
                                 timeout_ms=4000, attempts=2, base_delay=0.01, max_delay=0.05)
        self.client.load_markets()

    def scanner(self, **overrides) -> MarketScanner:
        return MarketScanner(self.client, scanner_config(**overrides))


class TestScan(ScannerCase):
    def test_scan_builds_a_view_of_closed_candles_for_the_universe(self):
        result = self.scanner().scan()
        self.assertFalse(result.from_cache)
        self.assertEqual(len(result.universe), 12)
        view = result.view
        self.assertEqual(set(view.symbols), set(result.universe))
        now_ms = self.market.now_ms()
        self.assertLessEqual(view.now_ms, now_ms, "the view's newest candle must be closed")
        self.assertEqual(view.now_ms, now_ms // TF_MS * TF_MS, "... and the newest one closed")
        self.assertTrue(np.isfinite(view.latest["rsi"]).all())
        self.assertEqual(view.recent_close.shape[0], 12)

    def test_universe_is_ranked_by_quote_volume_with_allow_and_deny_lists(self):
        scanner = self.scanner(MAX_PAIRS=3)
        tickers = self.client.fetch_tickers()
        top = scanner.select_universe(tickers)
        volumes = [tickers[s]["quoteVolume"] for s in top]
        self.assertEqual(volumes, sorted(volumes, reverse=True))
        others = [s for s in tickers if s not in top]
        self.assertTrue(all(tickers[s]["quoteVolume"] <= volumes[-1] for s in others))
        denied = self.scanner(MAX_PAIRS=3, PAIR_DENYLIST=top[0]).select_universe(tickers)
        self.assertNotIn(top[0], denied)
        allowed = self.scanner(PAIR_ALLOWLIST=",".join(others[:2])).select_universe(tickers)
        self.assertEqual(set(allowed), set(others[:2]))

    def test_second_scan_inside_the_ttl_makes_no_request(self):
        scanner = self.scanner()
        first = scanner.scan()
        self.server.reset_counters()
        second = scanner.scan()
        self.assertTrue(second.from_cache)
        self.assertEqual(self.server.request_count(), 0)
        self.assertIs(second.view, first.view)
        self.assertEqual((scanner.cache.hits, scanner.cache.misses), (1, 1))

    def test_the_scan_cache_expires_after_its_ttl_of_market_time(self):
        scanner = self.scanner(MARKET_SCAN_CACHE_DURATION=300)
        first = scanner.scan()
        self.market.advance(299.0)
        self.server.reset_counters()
        self.assertTrue(scanner.scan().from_cache)
        self.assertEqual(self.server.request_count(), 0)
        self.market.advance(1.0)
        third = scanner.scan()
        self.assertFalse(third.from_cache)
        self.assertGreater(self.server.request_count("/api/v3/klines"), 0)
        self.assertGreaterEqual(third.view.now_ms, first.view.now_ms)
        self.assertEqual((scanner.cache.hits, scanner.cache.misses), (1, 2))

    def test_the_universe_is_ranked_again_hourly_not_every_scan(self):
        scanner = self.scanner(MARKET_SCAN_CACHE_DURATION=0)
        scanner.scan()
        self.server.reset_counters()
        scanner.scan()
        self.assertEqual(self.server.request_count("/api/v3/ticker/24hr"), 0)
        self.assertEqual(self.server.request_count("/api/v3/klines"), 0,
                         "no newer candle can have closed, so none is asked for")
        self.market.advance(UNIVERSE_REFRESH - 1)
        scanner.scan()
        self.assertEqual(self.server.request_count("/api/v3/ticker/24hr"), 0)
        self.market.advance(1)
        scanner.scan()
        self.assertEqual(self.server.request_count("/api/v3/ticker/24hr"), 1)

    def test_a_failing_pair_is_isolated_and_counted_once_per_cycle(self):
        bad = self.market.ids[0]
        bad_symbol = self.market.symbols[0]
        self.server.set_faults(error_rate=1.0, symbols={bad})
        scanner = self.scanner(MARKET_SCAN_CACHE_DURATION=0)
        with self.assertLogs("market_scanner", "WARNING") as logs:
            result = scanner.scan()
            scanner.scan()
        self.assertIn(bad_symbol, result.failed)
        self.assertNotIn(bad_symbol, result.view.symbols)
        self.assertEqual(len(result.view.symbols), 11)
        self.assertEqual(scanner.failure_counts[bad_symbol], 2)
        self.assertEqual(sum(bad_symbol in line for line in logs.output), 1, "logged once, not per cycle")


class TestFreshPrices(ScannerCase):
    def test_exit_prices_are_fresh_bids_in_one_request(self):
        scanner = self.scanner()
        symbols = self.market.symbols[:4]
        self.server.reset_counters()
        prices = scanner.fresh_prices(symbols)
        self.assertEqual(self.server.request_count(), 1)
        book = self.client.call("fetch_order_book", symbols[0], 5)
        self.assertEqual(set(prices), set(symbols))
        self.assertAlmostEqual(prices[symbols[0]], book["bids"][0][0], delta=book["bids"][0][0] * 0.01)
        self.server.reset_counters()
        scanner.fresh_prices(symbols)
        self.assertEqual(self.server.request_count(), 1, "never served from a cache")


class TestHangingPair(ScannerCase):
    def test_a_hanging_pair_is_cut_off_at_its_own_timeout(self):
        bad = self.market.ids[1]
        bad_symbol = self.market.symbols[1]
        self.server.set_faults(hang_rate=1.0, hang_seconds=60.0, symbols={bad})
        scanner = self.scanner(SCAN_TIMEOUT=3)
        started = time.monotonic()
        result = scanner.scan()
        # Returned long before the hung request could have been answered (60 s).
        self.assertLess(time.monotonic() - started, 30.0)
        self.assertIn(bad_symbol, result.timed_out)
        self.assertEqual(len(result.view.symbols), 11)
        self.server.set_faults()


class TestIncremental(ScannerCase):
    def test_after_the_first_fetch_only_newer_candles_are_requested(self):
        scanner = self.scanner(MARKET_SCAN_CACHE_DURATION=0)
        calls = []
        real = self.client.fetch_ohlcv

        def recording(symbol, timeframe, since=None, limit=None):
            calls.append((symbol, since, limit))
            return real(symbol, timeframe, since=since, limit=limit)

        self.client.fetch_ohlcv = recording
        scanner.scan()
        first = {s: scanner.store.get(s).copy() for s in scanner.store.symbols()}
        last = {s: scanner.store.last_ts(s) for s in scanner.store.symbols()}
        self.assertTrue(all(limit == 151 for _, _, limit in calls), "first fetch: the whole history")
        self.market.advance(1050.0)   # 3.5 candles of market time
        calls.clear()
        result = scanner.scan()
        tf = TF_MS
        newest = self.market.now_ms() // tf * tf - tf   # the open time of the last closed candle
        for symbol, since, limit in calls:
            self.assertEqual(since, last[symbol] + tf)
            self.assertLess(limit, 151)
        grown = {scanner.store.last_ts(s) - last[s] for s in last}
        self.assertIn(grown, ({3 * tf}, {4 * tf}))
        self.assertEqual({scanner.store.last_ts(s) for s in last}, {newest})
        for symbol in result.view.symbols:
            candles = scanner.store.get(symbol)
            self.assertTrue((np.diff(candles[:, 0]) == tf).all(), "no gaps, no duplicates")
            self.assertEqual(len(candles), 150, "bounded by CANDLE_HISTORY")
        # The streaming indicators match a whole-array recompute over everything seen.
        from indicators import compute_all
        i = result.view.symbols.index(symbol)
        seen = np.concatenate([first[symbol], candles[candles[:, 0] > last[symbol]]])
        full = compute_all(*(seen[None, :, k] for k in range(1, 6)))
        for name, values in full.items():
            self.assertAlmostEqual(float(values[0, -1]), float(result.view.latest[name][i]), places=6)


class TestIndicatorView(ScannerCase):
    """sync_indicators and build_view on candles put into the store by hand."""

    def closed_candles(self, symbol: str, limit: int = 150) -> np.ndarray:
        rows = np.asarray(self.client.fetch_ohlcv(symbol, "5m", limit=limit), dtype=np.float64)
        return rows[rows[:, 0] + TF_MS <= self.market.now_ms()]

    def test_the_view_holds_the_pairs_up_to_date_with_the_newest_closed_candle(self):
        from indicators import compute_all

        scanner = self.scanner()
        self.assertIsNone(scanner.build_view())
        a, b, short, late = self.market.symbols[:4]
        for symbol in (a, b):
            scanner.store.merge(symbol, self.closed_candles(symbol))
        scanner.store.merge(short, self.closed_candles(short)[-(MIN_CANDLES - 1):])
        scanner.store.merge(late, self.closed_candles(late)[:-1])     # one candle behind
        scanner.sync_indicators([a, b, short, late])
        view = scanner.build_view()
        self.assertEqual(view.symbols, (a, b))
        candles = scanner.store.get(a)
        self.assertEqual(view.now_ms, int(candles[-1, 0]) + TF_MS)
        self.assertEqual(view.recent_close.shape, (2, scanner.history_needed + 1))
        self.assertEqual(view.recent_close[0].tolist(), candles[-scanner.history_needed - 1:, 4].tolist())
        full = compute_all(*(candles[None, :, k] for k in range(1, 6)))
        for name, values in full.items():
            self.assertAlmostEqual(float(values[0, -1]), float(view.latest[name][0]), places=6,
                                   msg=name)

    def test_new_candles_stream_in_and_pairs_leave_with_the_universe(self):
        scanner = self.scanner()
        a, b = self.market.symbols[:2]
        for symbol in (a, b):
            scanner.store.merge(symbol, self.closed_candles(symbol))
        scanner.sync_indicators([a, b])
        before = scanner.build_view()
        self.market.advance(2 * TF_MS / 1000)
        for symbol in (a, b):
            scanner.store.merge(symbol, self.closed_candles(symbol, limit=5))
        scanner.sync_indicators([a])
        view = scanner.build_view()
        self.assertEqual(view.symbols, (a,))
        self.assertEqual(view.now_ms, before.now_ms + 2 * TF_MS)
        self.assertNotEqual(float(view.latest["rsi"][0]), float(before.latest["rsi"][0]))


class TestNoRateLimitHits(ScannerCase):
    def test_parallel_scan_stays_within_the_exchange_budget(self):
        scanner = self.scanner(MAX_PARALLEL_WORKERS=12)
        scanner.scan()
        self.assertEqual(self.server.response_count(429), 0)


class TestHelpers(unittest.TestCase):
    def test_run_parallel_isolates_errors_and_timeouts(self):
        release = threading.Event()

        def work(symbol):
            if symbol == "slow":
                release.wait(5)
            if symbol == "bad":
                raise ValueError("boom")
            return symbol.upper()

        out = run_parallel(work, ["a", "bad", "slow", "b"], workers=4, timeout=0.3)
        release.set()
        self.assertEqual(out.results, {"a": "A", "b": "B"})
        self.assertIn("boom", out.failed["bad"])
        self.assertEqual(out.timed_out, ["slow"])

    def test_run_parallel_cancel_abandons_pending_work(self):
        cancel = threading.Event()
        cancel.set()
        out = run_parallel(lambda s: time.sleep(2), ["x"], workers=1, timeout=10, cancel=cancel)
        self.assertEqual(out.timed_out, ["x"])

    def test_ttl_cache(self):
        clock = ManualClock(0.0)
        cache = TTLCache(10, clock)
        self.assertIsNone(cache.get())
        cache.put("v")
        clock.advance(9.9)
        self.assertEqual(cache.get(), "v")
        clock.advance(0.1)
        self.assertIsNone(cache.get())
        self.assertEqual((cache.hits, cache.misses), (1, 2))
        cache.put("w")
        cache.clear()
        self.assertIsNone(cache.get())

    def test_candle_store_merges_only_newer_rows_and_is_bounded(self):
        store = CandleStore(max_candles=5)
        rows = np.array([[t, 1, 1, 1, 1, 1] for t in range(0, 4)], dtype=float)
        self.assertEqual(store.merge("X", rows), 4)
        self.assertEqual(store.merge("X", rows[2:]), 0)
        more = np.array([[t, 1, 1, 1, 1, 1] for t in range(3, 8)], dtype=float)
        self.assertEqual(store.merge("X", more), 4)
        self.assertEqual(store.get("X")[:, 0].tolist(), [3, 4, 5, 6, 7])


if __name__ == "__main__":
    unittest.main()

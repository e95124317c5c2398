"""lookahead.check: causal strategies pass, strategies that peek at later candles are flagged."""
from __future__ import annotations

import tempfile
import textwrap
import time
import unittest
from pathlib import Path

import numpy as np

import lookahead
import strategies
from strategies import Strategy

START_MS = 1609459200000     # 2021-01-01 00:00 UTC
HOUR_MS = 3_600_000


def walk(seed: int, n: int = 1500) -> np.ndarray:
    """(n, 6) hourly random-walk candles [ts, o, h, l, c, v]."""
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    o = np.r_[c[0], c[:-1]]
    h = np.maximum(o, c) * (1.0 + rng.uniform(0.0, 0.005, n))
    l = np.minimum(o, c) * (1.0 - rng.uniform(0.0, 0.005, n))
    v = rng.lognormal(0.0, 0.5, n)
    return np.column_stack([START_MS + np.arange(n) * HOUR_MS, o, h, l, c, v])


def market(pairs: int = 3, n: int = 1500) -> dict[str, np.ndarray]:
    return {f"P{i}/USDT": walk(i, n) for i in range(pairs)}


class NextClose(Strategy):
    """Peeks one candle ahead through an indicator column."""
    name = "next_close"

    def indicators(self, o, h, l, c, v):
        return {"next_close": np.roll(c, -1), "ema_ok": strategies.ema(c, 10)}

    def entry_score(self, x):
        return np.where(x["next_close"] > x["close"], x["next_close"] / x["close"], np.nan)


class CentredScore(Strategy):
    """Peeks inside entry_score: a centred 5-candle mean of the close."""
    name = "centred_score"

    def entry_score(self, x):
        c = np.asarray(x["close"], dtype=float)
        mean = np.full(c.shape, np.nan)
        if len(c) >= 5:
            mean[2:-2] = np.convolve(c, np.ones(5) / 5, mode="valid")
        return np.where(c > 0, c - np.nan_to_num(mean, nan=0.0), np.nan)


class ShiftedExit(Strategy):
    """Causal entries, but the exit looks 3 candles ahead (a shift(-3))."""
    name = "shifted_exit"

    def entry_score(self, x):
        return np.where(x["rsi"] < 30, 30 - x["rsi"], np.nan)

    def exit_signal(self, x):
        c = np.asarray(x["close"], dtype=float)
        future = np.r_[c[3:], np.full(min(3, len(c)), np.nan)]
        return future > c


PEEKER_FILE = '''
import numpy as np
from strategies import Strategy


class Peeker(Strategy):
    name = "peeker"
    warmup = 60

    def indicators(self, o, h, l, c, v):
        future = np.full(c.shape, np.nan)
        future[:-2] = c[2:]
        return {"future_high": future}

    def entry_score(self, x):
        with np.errstate(invalid="ignore"):
            return np.where(x["future_high"] > x["close"], 1.0, np.nan)
'''


class BuiltinsTest(unittest.TestCase):
    def test_every_builtin_is_clean(self) -> None:
        candles = market()
        for name in strategies.BUILTINS:
            with self.subTest(strategy=name):
                report = lookahead.check(strategies.load_strategy(name), candles)
                self.assertFalse(report.flagged, report.format())
                self.assertEqual(report.differences, {})
                self.assertEqual((report.pairs, report.cuts), (3, 60))
                self.assertGreater(report.rows_compared, 0)
                self.assertTrue(report.format().startswith(f"no look-ahead found in {name}: "))
                self.assertIn("over 3 pairs and 60 cuts compared", report.format())

    def test_builtins_with_other_params_are_clean(self) -> None:
        s = strategies.load_strategy("breakout", "channel=20,min_volume_ratio=0.5")
        self.assertFalse(lookahead.check(s, market(2), cuts=10, seed=3).flagged)
        s = strategies.load_strategy("mean_reversion", {"rsi_oversold": 45, "trend_period": 30})
        self.assertFalse(lookahead.check(s, market(2), cuts=10, seed=4).flagged)

    def test_twelve_pairs_of_5000_candles_is_fast(self) -> None:
        candles = market(12, 5000)
        started = time.perf_counter()
        for name in strategies.BUILTINS:
            self.assertFalse(lookahead.check(strategies.load_strategy(name), candles).flagged)
        self.assertLess(time.perf_counter() - started, 20.0)


class PeekingTest(unittest.TestCase):
    def test_indicator_column_peeking_is_flagged_and_named(self) -> None:
        report = lookahead.check(NextClose(), market())
        self.assertTrue(report.flagged)
        self.assertIn("next_close", report.differences)
        self.assertNotIn("ema_ok", report.differences)       # the causal column is not blamed
        for name in ("rsi", "close", "exit_signal"):
            self.assertNotIn(name, report.differences)
        self.assertIn("entry_score", report.differences)     # downstream of next_close
        diff = report.differences["next_close"]
        self.assertEqual(diff.kind, "strategy indicator")
        self.assertEqual(diff.row, diff.cut)                 # only the cut candle changes
        self.assertEqual(diff.depth, 1)
        self.assertEqual(diff.cuts_hit, 60)
        text = report.format()
        self.assertTrue(text.startswith("LOOK-AHEAD in next_close: column next_close"), text)
        self.assertIn("when later candles are removed", text)
        self.assertIn("UTC, pair P", text)
        self.assertIn("to blame: next_close", text)

    def test_first_timestamp_is_the_earliest_row_over_pairs_and_cuts(self) -> None:
        candles = market()
        report = lookahead.check(NextClose(), candles)
        diff = report.differences["next_close"]
        self.assertEqual(diff.timestamp, candles[diff.pair][diff.row, 0])
        rng = np.random.default_rng(0)     # check() draws every pair's cuts from one rng
        earliest = min(int(lookahead.cut_rows(len(a), NextClose.warmup, 20, rng).min())
                       for a in candles.values())
        self.assertEqual(diff.row, earliest)
        self.assertIn(lookahead._utc(diff.timestamp), report.format())

    def test_centred_rolling_mean_in_entry_score_is_flagged(self) -> None:
        report = lookahead.check(CentredScore(), market())
        self.assertTrue(report.flagged)
        self.assertEqual(set(report.differences), {"entry_score"})
        self.assertEqual(report.differences["entry_score"].depth, 2)
        text = report.format()
        self.assertIn("column entry_score", text)
        self.assertIn("entry_score itself", text)

    def test_peeking_exit_signal_is_flagged(self) -> None:
        report = lookahead.check(ShiftedExit(), market())
        self.assertEqual(set(report.differences), {"exit_signal"})
        self.assertLessEqual(report.differences["exit_signal"].depth, 3)

    def test_strategy_file_loaded_by_path_is_flagged(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "peeker_strategy.py"
            path.write_text(textwrap.dedent(PEEKER_FILE))
            strategy = strategies.load_strategy(f"{path}:Peeker")
        report = lookahead.check(strategy, market(2), cuts=8, seed=1)
        self.assertTrue(report.flagged)
        self.assertIn("future_high", report.differences)
        self.assertEqual(report.differences["future_high"].depth, 2)
        self.assertTrue(report.format().startswith("LOOK-AHEAD in peeker: column future_high"))


class CutsTest(unittest.TestCase):
    def test_cuts_are_deterministic_distinct_and_after_warmup(self) -> None:
        a = lookahead.cut_rows(1000, 200, 20, np.random.default_rng(7))
        b = lookahead.cut_rows(1000, 200, 20, np.random.default_rng(7))
        np.testing.assert_array_equal(a, b)
        self.assertEqual(len(set(a.tolist())), 20)
        self.assertTrue(((a >= 200) & (a <= 998)).all())
        self.assertTrue((np.diff(a) > 0).all())

    def test_seed_changes_the_cuts_but_not_the_verdict(self) -> None:
        s = strategies.load_strategy("trend_momentum")
        r0 = lookahead.check(s, market(1), seed=0)
        r1 = lookahead.check(s, market(1), seed=1)
        self.assertNotEqual(r0.rows_compared, r1.rows_compared)
        self.assertFalse(r0.flagged or r1.flagged)

    def test_short_history_is_skipped_not_flagged(self) -> None:
        candles = {"SHORT/USDT": walk(0, 40), "LONG/USDT": walk(1, 400)}
        report = lookahead.check(strategies.load_strategy("trend_momentum"), candles, cuts=5)
        self.assertEqual(report.skipped, ["SHORT/USDT"])
        self.assertEqual((report.pairs, report.cuts), (1, 5))
        self.assertIn("skipped 1 pair(s)", report.format())
        empty = lookahead.check(strategies.load_strategy("trend_momentum"), {"S": walk(0, 40)})
        self.assertFalse(empty.flagged)
        self.assertTrue(empty.format().startswith("nothing checked for trend_momentum"))

    def test_fewer_candidate_rows_than_cuts(self) -> None:
        rows = lookahead.cut_rows(60, 50, 20, np.random.default_rng(0))
        self.assertEqual(rows.tolist(), list(range(50, 59)))


if __name__ == "__main__":
    unittest.main()

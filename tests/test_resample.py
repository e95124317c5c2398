"""candle_files.resample / timeframe_multiple: aggregation, completeness, no look-ahead."""
import time
import unittest
from pathlib import Path

import numpy as np

import candle_files as cf

M5 = 300_000
H1 = 3_600_000
D1 = 86_400_000
W1 = 7 * D1
T0 = 1_704_067_200_000          # 2024-01-01 00:00 UTC, a Monday

OHLCV = Path(__file__).resolve().parents[2] / "shared" / "ohlcv"
REAL_5M = OHLCV / "binance-5m-2020-2021" / "BTC_USDT-5m.csv"
REAL_1H = OHLCV / "binance-1h-2017-2022" / "BTC_USDT-1h.csv"


def series(ts, seed: int = 0) -> np.ndarray:
    """Candles at the given open times with distinct, valid values."""
    rng = np.random.default_rng(seed)
    ts = np.asarray(ts, dtype=np.float64)
    n = len(ts)
    o = 100 + rng.normal(0, 1, n).cumsum()
    c = o + rng.normal(0, 0.5, n)
    h = np.maximum(o, c) + rng.uniform(0, 1, n)
    lo = np.minimum(o, c) - rng.uniform(0, 1, n)
    v = rng.integers(1, 1000, n).astype(np.float64)   # whole numbers: sums are exact
    return np.column_stack([ts, o, h, lo, c, v])


def row(ts, o, h, lo, c, v):
    return [float(ts), o, h, lo, c, v]


class TimeframeMultiple(unittest.TestCase):
    def test_values(self):
        self.assertEqual(cf.timeframe_multiple("5m", "1h"), 12)
        self.assertEqual(cf.timeframe_multiple("1m", "1d"), 1440)
        self.assertEqual(cf.timeframe_multiple("1h", "1w"), 168)
        self.assertEqual(cf.timeframe_multiple("15m", "15m"), 1)

    def test_bad(self):
        for a, b in [("5m", "7m"), ("1h", "5m"), ("7m", "1h"), ("1d", "1M"), ("1M", "2M")]:
            with self.assertRaises(ValueError) as e:
                cf.timeframe_multiple(a, b)
            msg = str(e.exception)
            self.assertNotIn("\n", msg)
            self.assertIn(a, msg)
            self.assertIn(b, msg)
        with self.assertRaises(ValueError):
            cf.timeframe_multiple("5x", "1h")


class Resample(unittest.TestCase):
    def test_5m_to_1h_values(self):
        # two full hours of known candles, then one candle of the third hour (unfinished)
        rows = []
        for i in range(24):
            rows.append(row(T0 + i * M5, 10 + i, 20 + i, 5 + i, 11 + i, 1 + i))
        rows.append(row(T0 + 24 * M5, 99, 99, 99, 99, 99))
        rows[3][2] = 500.0          # the high of hour 0
        rows[15][3] = -7.0          # the low of hour 1
        out = cf.resample(np.array(rows), M5, H1)
        want = np.array([
            row(T0, 10, 500, 5, 22, sum(range(1, 13))),
            row(T0 + H1, 22, 43, -7, 34, sum(range(13, 25))),
        ])
        self.assertEqual(out.dtype, np.float64)
        np.testing.assert_array_equal(out, want)

    def test_incomplete_last_bucket_dropped(self):
        c = series(T0 + np.arange(12 + 11) * M5)   # hour 1 lacks its last 5m candle
        out = cf.resample(c, M5, H1)
        np.testing.assert_array_equal(out[:, 0], [T0])
        # now_ms before the hour ends: still dropped; at its end: emitted
        self.assertEqual(len(cf.resample(c, M5, H1, now_ms=T0 + 2 * H1 - 1)), 1)
        out = cf.resample(c, M5, H1, now_ms=T0 + 2 * H1)
        np.testing.assert_array_equal(out[:, 0], [T0, T0 + H1])
        self.assertEqual(out[1, 4], c[-1, 4])
        # the last slot present: the hour is complete without now_ms
        c = series(T0 + np.arange(24) * M5)
        np.testing.assert_array_equal(cf.resample(c, M5, H1)[:, 0], [T0, T0 + H1])

    def test_missing_sub_candle(self):
        # hour 0 lacks its 05:00 and 55:00 candles (no trades); first/last present ones count
        idx = [i for i in range(12) if i not in (1, 11)]
        c = series(T0 + np.array(idx) * M5, seed=3)
        want = [T0, c[0, 1], c[:, 2].max(), c[:, 3].min(), c[-1, 4], c[:, 5].sum()]
        self.assertEqual(len(cf.resample(c, M5, H1)), 0)         # its time may not be over
        self.assertEqual(len(cf.resample(c, M5, H1, now_ms=T0 + H1 - 1)), 0)
        np.testing.assert_array_equal(cf.resample(c, M5, H1, now_ms=T0 + H1), [want])
        later = np.vstack([c, series([T0 + H1 + 2 * M5], seed=4)])   # a candle of hour 1
        np.testing.assert_array_equal(cf.resample(later, M5, H1), [want])

    def test_gap_of_whole_buckets(self):
        ts = np.r_[T0 + np.arange(12) * M5, T0 + 5 * H1 + np.arange(12) * M5]
        c = series(ts, seed=5)
        out = cf.resample(c, M5, H1)
        np.testing.assert_array_equal(out[:, 0], [T0, T0 + 5 * H1])
        np.testing.assert_array_equal(out[1, 1:], [c[12, 1], c[12:, 2].max(), c[12:, 3].min(),
                                                   c[-1, 4], c[12:, 5].sum()])

    def test_no_look_ahead(self):
        rng = np.random.default_rng(11)
        slots = np.arange(12 * 30)
        keep = np.sort(rng.choice(slots, size=300, replace=False))   # random gaps
        c = series(T0 + 7 * M5 + keep * M5, seed=12)                 # starts mid-hour
        full = cf.resample(c, M5, H1)
        for n in range(1, len(c) + 1):
            close_time = c[n - 1, 0] + M5
            want = full[full[:, 0] + H1 <= close_time]
            np.testing.assert_array_equal(cf.resample(c[:n], M5, H1), want, err_msg=f"n={n}")

    def test_weekly_aligned_to_monday(self):
        start = T0 - 3 * D1               # Friday 2023-12-29
        c = series(start + np.arange(3 + 7 + 7 + 2) * D1, seed=7)
        out = cf.resample(c, D1, W1)
        np.testing.assert_array_equal(out[:, 0], [T0 - W1, T0, T0 + W1])
        # the first (partial) week: Fri..Sun of the week starting Monday 2023-12-25
        np.testing.assert_array_equal(out[0, 1:], [c[0, 1], c[:3, 2].max(), c[:3, 3].min(),
                                                   c[2, 4], c[:3, 5].sum()])
        np.testing.assert_array_equal(out[1, 1:], [c[3, 1], c[3:10, 2].max(),
                                                   c[3:10, 3].min(), c[9, 4], c[3:10, 5].sum()])
        for ts in out[:, 0]:
            self.assertEqual(time.gmtime(ts / 1000).tm_wday, 0)
        # 1h -> 1w and weekly input (Monday open times) to 2 weeks work too
        h = series(T0 + np.arange(168) * H1)
        np.testing.assert_array_equal(cf.resample(h, H1, W1)[:, 0], [T0])
        w = series(T0 + np.arange(4) * W1)
        self.assertEqual(len(cf.resample(w, W1, 2 * W1)), 2)

    def test_bad_multiples(self):
        c = series(T0 + np.arange(24) * M5)
        for f, t in [(M5, 7 * 60_000), (H1, M5), (M5, 0), (0, H1), (M5, 30 * D1),
                     (3 * D1, 3 * W1)]:
            with self.assertRaises(ValueError) as e:
                cf.resample(c, f, t)
            self.assertNotIn("\n", str(e.exception))
        with self.assertRaises(ValueError):
            cf.resample(c[::-1], M5, H1)                       # not sorted
        with self.assertRaises(ValueError):
            cf.resample(c + [[1, 0, 0, 0, 0, 0]], M5, H1)      # off the 5m grid

    def test_edge_shapes(self):
        self.assertEqual(cf.resample(np.empty((0, 6)), M5, H1).shape, (0, 6))
        c = series(T0 + np.arange(24) * M5)
        np.testing.assert_array_equal(cf.resample(c, M5, M5), c)

    def test_500k_rows_fast(self):
        n = 500_000
        c = series(T0 + np.arange(n) * M5)
        t = time.perf_counter()
        out = cf.resample(c, M5, H1)
        self.assertLess(time.perf_counter() - t, 2.0)
        self.assertEqual(len(out), n // 12)
        np.testing.assert_allclose(out[:, 5].sum(), c[: n // 12 * 12, 5].sum(), rtol=1e-9)


@unittest.skipUnless(REAL_5M.is_file() and REAL_1H.is_file(), "real Binance BTC/USDT files absent")
class RealData(unittest.TestCase):
    def test_5m_to_1h_matches_binance_1h(self):
        m5 = cf.read_candles(REAL_5M, "5m")
        h1 = cf.read_candles(REAL_1H, "1h")
        out = cf.resample(m5, M5, H1)
        _, ia, ib = np.intersect1d(out[:, 0], h1[:, 0], return_indices=True)
        x, y = out[ia], h1[ib]
        ok = ((x[:, 1] == y[:, 1]) & (x[:, 2] == y[:, 2]) & (x[:, 3] == y[:, 3])
              & (x[:, 4] == y[:, 4])
              & (np.abs(x[:, 5] - y[:, 5]) <= 1e-6 * np.abs(y[:, 5])))
        hours, counts = np.unique(m5[:, 0] - m5[:, 0] % H1, return_counts=True)
        full = np.isin(x[:, 0], hours[counts == 12])      # hours with no missing 5m candle
        print(f"\n  real 5m->1h BTC/USDT: {int(ok.sum())}/{len(ok)} common hours match "
              f"({ok.mean():.2%}); hours with all 12 5m candles: "
              f"{int(ok[full].sum())}/{int(full.sum())}")
        self.assertGreater(len(ok), 1000)
        self.assertGreaterEqual(ok.mean(), 0.95)


if __name__ == "__main__":
    unittest.main()

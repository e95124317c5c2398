"""indicators.py: whole-array and streaming indicators against TA-Lib and a loop reference."""
from __future__ import annotations

import math
import unittest
from pathlib import Path

import numpy as np

import indicators as ind

try:
    import talib
except ImportError:  # test-only dependency (requirements-test.txt)
    talib = None

NEEDS_TALIB = unittest.skipIf(
    talib is None, "TA-Lib not installed: pip install -r requirements-test.txt to compare against it")
REAL_FILE = Path(__file__).resolve().parents[2] / "shared" / "ohlcv" / "ETH_BTC-5m.csv"
RTOL = 1e-8
# Leading NaNs of each compute_all indicator (TA-Lib's lookback with default settings).
LOOKBACK = {"rsi": 14, "ema_fast": 11, "ema_slow": 25, "ema_trend": 49, "macd": 33,
            "macd_signal": 33, "macd_hist": 33, "bb_upper": 19, "bb_middle": 19, "bb_lower": 19,
            "atr": 14, "momentum": 10, "volume_ratio": 19}


def candles(pairs: int, n: int, seed: int = 0, price: float = 100.0, vol: float = 0.01):
    """Random-walk (open, high, low, close, volume), each (pairs, n), with high >= low and
    gaps between a close and the next open (so the true range sometimes spans the gap)."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0.0, vol, (pairs, n)), axis=1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], axis=1) * np.exp(rng.normal(0, vol, (pairs, n)))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, vol, (pairs, n)))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, vol, (pairs, n)))
    volume = rng.lognormal(5.0, 1.0, (pairs, n)) * (rng.random((pairs, n)) > 0.05)
    return open_, high, low, close, volume


def scale_of(name: str, close: np.ndarray) -> float:
    """Magnitude an indicator's errors are measured against (MACD and momentum cross zero)."""
    return {"rsi": 100.0, "volume_ratio": 1.0}.get(name, float(np.nanmax(np.abs(close))))


def assert_matches(test: unittest.TestCase, ours, ref, scale: float, what: str = "") -> None:
    ours, ref = np.asarray(ours), np.asarray(ref)
    test.assertEqual(ours.shape, ref.shape, what)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{what}: NaN positions")
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=RTOL * 1e-2 * scale, equal_nan=True,
                               err_msg=what)


def assert_same_indicators(test: unittest.TestCase, ours: dict, ref: dict, close, what: str = "") -> None:
    """Every indicator, and the Bollinger band width on its own scale, to 1e-8."""
    for name in ind.INDICATOR_NAMES:
        assert_matches(test, ours[name], ref[name], scale_of(name, close), f"{what} {name}")
    width, ref_width = (np.asarray(d["bb_upper"]) - np.asarray(d["bb_lower"]) for d in (ours, ref))
    assert_matches(test, width, ref_width, float(np.nanmax(ref_width, initial=0.0)), f"{what} band width")


# -- a plain-loop reference that follows TA-Lib's C code, for machines without TA-Lib ---------
def ref_ema(x, n, start=0):
    out = [math.nan] * len(x)
    if start + n <= len(x):
        prev = sum(x[start:start + n]) / n
        out[start + n - 1] = prev
        for t in range(start + n, len(x)):
            prev = (x[t] - prev) * (2.0 / (n + 1)) + prev
            out[t] = prev
    return out


def ref_wilder(values, n):
    """Wilder average of values[1:], first output at index n (values[0] is unused)."""
    out = [math.nan] * len(values)
    if len(values) > n:
        prev = sum(values[1:n + 1]) / n
        out[n] = prev
        for t in range(n + 1, len(values)):
            prev = (prev * (n - 1) + values[t]) / n
            out[t] = prev
    return out


def ref_rsi(x, n):
    d = [0.0] + [b - a for a, b in zip(x, x[1:])]
    g, lo = ref_wilder([max(v, 0.0) for v in d], n), ref_wilder([max(-v, 0.0) for v in d], n)
    return [a if math.isnan(a) else (100 * a / (a + b) if a + b else 0.0) for a, b in zip(g, lo)]


def ref_atr(h, l, c, n):
    tr = [0.0] + [max(h[t] - l[t], abs(h[t] - c[t - 1]), abs(l[t] - c[t - 1])) for t in range(1, len(c))]
    return ref_wilder(tr, n)


def ref_macd(x, fast, slow, signal):
    f, s = ref_ema(x, fast, start=slow - fast), ref_ema(x, slow)
    line = [a - b for a, b in zip(f, s)]
    sig = ref_ema(line, signal, start=slow - 1)
    first = slow + signal - 2
    line = [math.nan if t < first else v for t, v in enumerate(line)]
    return line, sig, [a - b for a, b in zip(line, sig)]


def ref_bbands(x, n, k):
    up, mid, lo = ([math.nan] * len(x) for _ in range(3))
    for t in range(n - 1, len(x)):
        w = x[t - n + 1:t + 1]
        m = math.fsum(w) / n
        sd = math.sqrt(math.fsum((v - m) ** 2 for v in w) / n)
        up[t], mid[t], lo[t] = m + k * sd, m, m - k * sd
    return up, mid, lo


def reference_all(o, h, l, c, v) -> dict[str, list]:
    """compute_all for one pair, by the loop reference."""
    c, h, l, v = (list(map(float, a)) for a in (c, h, l, v))
    m, s, hi = ref_macd(c, 12, 26, 9)
    up, mid, lo = ref_bbands(c, 20, 2.0)
    vmean = ref_bbands(v, 20, 0.0)[1]
    return {"rsi": ref_rsi(c, 14), "ema_fast": ref_ema(c, 12), "ema_slow": ref_ema(c, 26),
            "ema_trend": ref_ema(c, 50), "macd": m, "macd_signal": s, "macd_hist": hi,
            "bb_upper": up, "bb_middle": mid, "bb_lower": lo, "atr": ref_atr(h, l, c, 14),
            "momentum": [math.nan] * 10 + [b - a for a, b in zip(c, c[10:])],
            "volume_ratio": [mm if math.isnan(mm) else (x / mm if mm else 0.0) for x, mm in zip(v, vmean)]}


def talib_all(o, h, l, c, v) -> dict[str, np.ndarray]:
    """compute_all for one pair, by TA-Lib."""
    m, s, hi = talib.MACD(c, 12, 26, 9)
    up, mid, lo = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    vmean = talib.SMA(v, 20)
    return {"rsi": talib.RSI(c, 14), "ema_fast": talib.EMA(c, 12), "ema_slow": talib.EMA(c, 26),
            "ema_trend": talib.EMA(c, 50), "macd": m, "macd_signal": s, "macd_hist": hi,
            "bb_upper": up, "bb_middle": mid, "bb_lower": lo, "atr": talib.ATR(h, l, c, 14),
            "momentum": talib.MOM(c, 10),
            "volume_ratio": np.where(vmean == 0, 0.0, v / np.where(vmean == 0, 1.0, vmean))}


class AgainstTALibTest(unittest.TestCase):
    """Every indicator equals TA-Lib (default settings) to 1e-8."""

    def check_functions(self, o, h, l, c, v) -> None:
        ours = {
            "RSI 14": (ind.rsi(c), [talib.RSI(x, 14) for x in c]),
            "RSI 5": (ind.rsi(c, 5), [talib.RSI(x, 5) for x in c]),
            "EMA 12": (ind.ema(c, 12), [talib.EMA(x, 12) for x in c]),
            "EMA 50": (ind.ema(c, 50), [talib.EMA(x, 50) for x in c]),
            "SMA 20": (ind.sma(c, 20), [talib.SMA(x, 20) for x in c]),
            "SMA 7": (ind.sma(c, 7), [talib.SMA(x, 7) for x in c]),
            "ATR 14": (ind.atr(h, l, c), [talib.ATR(a, b, x, 14) for a, b, x in zip(h, l, c)]),
            "ATR 5": (ind.atr(h, l, c, 5), [talib.ATR(a, b, x, 5) for a, b, x in zip(h, l, c)]),
            "MOM 10": (ind.momentum(c), [talib.MOM(x, 10) for x in c]),
            "MOM 3": (ind.momentum(c, 3), [talib.MOM(x, 3) for x in c]),
        }
        for args in ((12, 26, 9), (5, 35, 5), (3, 10, 16)):
            for k, (a, b) in enumerate(zip(ind.macd(c, *args), zip(*[talib.MACD(x, *args) for x in c]))):
                ours[f"MACD{args}[{k}]"] = (a, b)
        for args in ((20, 2.0), (10, 1.5)):
            for k, (a, b) in enumerate(zip(ind.bollinger(c, *args),
                                           zip(*[talib.BBANDS(x, args[0], args[1], args[1], 0) for x in c]))):
                ours[f"BBANDS{args}[{k}]"] = (a, b)
        scale = float(np.abs(c).max())
        for name, (a, b) in ours.items():
            assert_matches(self, a, np.array(b), 100.0 if name.startswith("RSI") else scale, name)

    def check_all(self, o, h, l, c, v) -> None:
        res = ind.compute_all(o, h, l, c, v)
        self.assertEqual(tuple(res), ind.INDICATOR_NAMES)
        for p in range(c.shape[0]):
            ours = {name: a[p] for name, a in res.items()}
            assert_same_indicators(self, ours, talib_all(o[p], h[p], l[p], c[p], v[p]), c[p], f"pair {p}")

    @NEEDS_TALIB
    def test_random_walks(self):
        for price in (100.0, 50_000.0, 2e-6):     # a major, BTC-like and a micro-priced coin
            with self.subTest(price=price):
                data = candles(3, 700, seed=1, price=price)   # 700 > one window-sum block
                self.check_functions(*data)
                self.check_all(*data)

    @NEEDS_TALIB
    def test_flat_and_trending_stretches(self):
        o, h, l, c, v = candles(2, 300, seed=2)
        c[0, 50:120] = c[0, 50]                   # flat: no gain, no loss, zero width
        c[1, 100:200] = np.linspace(c[1, 100], 3 * c[1, 100], 100)   # only gains
        h, l = np.maximum(h, c), np.minimum(l, c)
        v[:, 150:200] = 0.0
        self.check_functions(o, h, l, c, v)
        self.check_all(o, h, l, c, v)

    @NEEDS_TALIB
    @unittest.skipUnless(REAL_FILE.exists(), f"{REAL_FILE} not present (only in the team's workspace)")
    def test_real_candles(self):
        data = np.loadtxt(REAL_FILE, delimiter=",", skiprows=1)
        cols = [np.ascontiguousarray(data[None, :, k]) for k in range(1, 6)]
        self.check_functions(*cols)
        self.check_all(*cols)

    @NEEDS_TALIB
    def test_loop_reference_is_talib(self):
        """The loop reference used when TA-Lib is absent follows TA-Lib exactly."""
        o, h, l, c, v = (a[0] for a in candles(1, 150, seed=3))
        ref, tl = reference_all(o, h, l, c, v), talib_all(o, h, l, c, v)
        for name in ind.INDICATOR_NAMES:
            assert_matches(self, ref[name], tl[name], scale_of(name, c), name)


class AgainstReferenceTest(unittest.TestCase):
    """The same conventions checked without TA-Lib, against a plain-loop port of its C code."""

    def test_compute_all(self):
        o, h, l, c, v = candles(2, 160, seed=4)
        v[1, 60:90] = 0.0
        res = ind.compute_all(o, h, l, c, v)
        for p in range(2):
            ours = {name: a[p] for name, a in res.items()}
            assert_same_indicators(self, ours, reference_all(o[p], h[p], l[p], c[p], v[p]), c[p], f"pair {p}")

    def test_hand_computed_values(self):
        x = np.arange(1.0, 11.0)
        # EMA(3) seeded with mean(1, 2, 3) = 2 at index 2, then k = 0.5: 3, 4, ... (x - 1).
        np.testing.assert_allclose(ind.ema(x, 3)[2:], x[2:] - 1)
        self.assertTrue(np.isnan(ind.ema(x, 3)[:2]).all())
        # Alternating +1/-1: Wilder(2) seeds gain = loss = 0.5 (RSI 50), then +1 -> 0.75/0.25.
        zigzag = np.array([1.0, 2.0, 1.0, 2.0])
        np.testing.assert_allclose(ind.rsi(zigzag, 2)[2:], [50.0, 75.0])
        # True range 2 every candle -> ATR 2; momentum of a line is its slope times the period.
        self.assertAlmostEqual(ind.atr(x + 1, x - 1, x, 3)[-1], 2.0, places=12)
        np.testing.assert_allclose(ind.momentum(x, 4)[4:], 4.0)
        up, mid, lo = ind.bollinger(np.array([1.0, 3.0]), 2, 2.0)      # std 1 around mean 2
        np.testing.assert_allclose([up[1], mid[1], lo[1]], [4.0, 2.0, 0.0], atol=1e-12)


class ShapesTest(unittest.TestCase):
    def test_rows_equal_single_pair_calls(self):
        o, h, l, c, v = candles(4, 200, seed=5)
        whole = ind.compute_all(o, h, l, c, v)
        for p in range(4):
            one = ind.compute_all(o[p], h[p], l[p], c[p], v[p])
            for name in ind.INDICATOR_NAMES:
                self.assertEqual(one[name].shape, (200,))
                assert_matches(self, whole[name][p], one[name], scale_of(name, c[p]), name)
        for fn, args in ((ind.rsi, ()), (ind.ema, (9,)), (ind.sma, (9,)), (ind.momentum, ()),
                         (ind.volume_ratio, ())):
            np.testing.assert_allclose(fn(c, *args)[2], fn(c[2], *args), rtol=1e-12)
        np.testing.assert_allclose(ind.atr(h, l, c)[1], ind.atr(h[1], l[1], c[1]), rtol=1e-12)
        for a, b in zip(ind.macd(c), ind.macd(c[3])):
            np.testing.assert_allclose(a[3], b, rtol=1e-12)
        for a, b in zip(ind.bollinger(c), ind.bollinger(c[0])):
            np.testing.assert_allclose(a[0], b, rtol=1e-12)

    def test_no_look_ahead(self):
        """A value at t is bit-for-bit the same whatever comes after t (the backtester relies on it)."""
        data = candles(2, 1200, seed=15)
        full = ind.compute_all(*data)
        for cut in (1, 40, 530, 531, 600, 1043, 1044, 1199):     # 531 and 1043: window-sum blocks
            part = ind.compute_all(*(a[:, :cut] for a in data))
            for name in ind.INDICATOR_NAMES:
                np.testing.assert_array_equal(part[name], full[name][:, :cut], err_msg=f"{cut} {name}")

    def test_bad_arguments(self):
        x = np.ones(30)
        with self.assertRaises(ValueError):
            ind.ema(np.ones((2, 2, 30)), 5)
        for bad in (0, -3, 2.5):
            with self.assertRaises(ValueError):
                ind.sma(x, bad)
        with self.assertRaises(ValueError):
            ind.macd(x, fast=26, slow=12)


class WarmupAndEdgeCasesTest(unittest.TestCase):
    def test_nan_exactly_during_warmup(self):
        res = ind.compute_all(*candles(3, 120, seed=6))
        for name, lookback in LOOKBACK.items():
            self.assertTrue(np.isnan(res[name][:, :lookback]).all(), name)
            self.assertFalse(np.isnan(res[name][:, lookback:]).any(), name)

    def test_history_shorter_than_period(self):
        for t in (0, 1, 10, 33):
            res = ind.compute_all(*candles(2, t, seed=7))
            for name, lookback in LOOKBACK.items():
                self.assertEqual(res[name].shape, (2, t))
                self.assertEqual(int(np.isfinite(res[name]).sum()), 2 * max(0, t - lookback), (t, name))
        self.assertTrue(np.isnan(ind.ema(np.ones(5), 10)).all())

    def test_constant_prices(self):
        x = np.full((2, 80), 7.5)
        res = ind.compute_all(x, x, x, x, np.full((2, 80), 3.0))
        last = {k: a[:, -1] for k, a in res.items()}
        np.testing.assert_array_equal(last["rsi"], 0.0)      # TA-Lib: no gain and no loss -> 0
        for k in ("ema_fast", "ema_slow", "ema_trend", "bb_upper", "bb_middle", "bb_lower"):
            np.testing.assert_allclose(last[k], 7.5, rtol=1e-15)
        for k in ("macd", "macd_signal", "macd_hist", "atr", "momentum"):
            np.testing.assert_allclose(last[k], 0.0, atol=1e-14)
        np.testing.assert_allclose(last["volume_ratio"], 1.0)
        rising = np.arange(1.0, 40.0)
        np.testing.assert_array_equal(ind.rsi(rising)[14:], 100.0)

    def test_zero_volume(self):
        v = np.zeros(60)
        v[45] = 5.0
        r = ind.volume_ratio(v)
        self.assertTrue(np.isnan(r[:19]).all())
        np.testing.assert_array_equal(r[19:45], 0.0)         # a window of no volume: 0, not NaN
        self.assertAlmostEqual(r[45], 20.0)
        self.assertTrue(np.isfinite(r[19:]).all())


class StreamingTest(unittest.TestCase):
    def assert_latest(self, stream, histories, what=""):
        """stream.latest() equals compute_all over each pair's whole history (list of 5-tuples)."""
        latest = stream.latest()
        self.assertEqual(tuple(latest), ind.INDICATOR_NAMES)
        self.assertEqual(len(stream), len(histories))
        for name in ind.INDICATOR_NAMES:
            self.assertEqual(latest[name].shape, (len(histories),))
        for p, cols in enumerate(histories):
            full = {name: a[-1:] for name, a in ind.compute_all(*cols).items()}
            assert_same_indicators(self, {name: a[p:p + 1] for name, a in latest.items()}, full, cols[3],
                                   f"{what} pair {p}")

    def test_many_updates_equal_whole_array(self):
        data = candles(5, 2300, seed=8, price=30_000.0, vol=0.002)
        data[4][2, 1000:1100] = 0.0                                  # a stretch without volume
        stream = ind.StreamingIndicators.from_history(*(a[:, :300] for a in data))
        for t in range(300, 2300):
            stream.update(*(a[:, t] for a in data))
            if t % 500 == 0 or t in (1050, 2299):                   # 1050: zero-volume window
                self.assert_latest(stream, [tuple(a[p, :t + 1] for a in data) for p in range(5)], f"t={t}")

    def test_rows_falling_behind_and_catching_up(self):
        data = candles(6, 400, seed=9)
        n = np.full(6, 120)
        stream = ind.StreamingIndicators.from_history(*(a[:, :120] for a in data))
        rng = np.random.default_rng(0)
        for _ in range(250):
            rows = np.flatnonzero(rng.random(6) < 0.5)
            rng.shuffle(rows)
            stream.update(*(a[rows, n[rows]] for a in data), rows=rows)
            n[rows] += 1
        self.assertGreater(n.max() - n.min(), 10)
        self.assert_latest(stream, [tuple(a[p, :n[p]] for a in data) for p in range(6)])

    def test_warmup_rows_match_candle_by_candle(self):
        data = candles(3, 90, seed=10)
        stream = ind.StreamingIndicators.from_history(*(a[:, :3] for a in data))
        for t in range(3, 90):
            stream.update(*(a[:, t] for a in data))
            self.assert_latest(stream, [tuple(a[p, :t + 1] for a in data) for p in range(3)], f"t={t}")

    def test_empty_history_and_one_pair(self):
        o, h, l, c, v = candles(1, 70, seed=11)
        stream = ind.StreamingIndicators.from_history(o[:, :0], h[:, :0], l[:, :0], c[:, :0], v[:, :0])
        self.assertTrue(all(np.isnan(x).all() for x in stream.latest().values()))
        for t in range(70):
            stream.update(o[:, t], h[:, t], l[:, t], c[:, t], v[:, t])
        self.assert_latest(stream, [(o[0], h[0], l[0], c[0], v[0])])
        single = ind.StreamingIndicators.from_history(o[0], h[0], l[0], c[0], v[0])   # (T,) arrays
        self.assertEqual(len(single), 1)

    def test_changing_universe(self):
        data = candles(8, 500, seed=12)
        hist = {p: 200 for p in range(4)}        # pair id -> candles consumed
        rows = [0, 1, 2, 3]                      # row -> pair id
        stream = ind.StreamingIndicators.from_history(*(a[:4, :200] for a in data))

        def step(k: int) -> None:
            for i in range(k):
                if i % 3:                                     # every pair gets its next candle
                    ids, sub = np.array(rows), None
                else:                                         # only every other row does
                    sub = np.arange(0, len(rows), 2)
                    ids = np.array(rows)[sub]
                stream.update(*(a[ids, [hist[p] for p in ids]] for a in data), rows=sub)
                for p in ids:
                    hist[p] += 1

        step(20)
        stream.add_pairs(*(a[4:6, :150] for a in data))      # warmed-up newcomers
        rows += [4, 5]
        hist.update({4: 150, 5: 150})
        stream.add_pairs(*(a[6, :10] for a in data))         # a young listing, still warming up
        rows.append(6)
        hist[6] = 10
        step(30)
        stream.remove_rows(np.array([1, 3]))
        rows = [p for i, p in enumerate(rows) if i not in (1, 3)]
        step(60)                                              # pair 6 crosses WARMUP here
        self.assertGreater(hist[6], ind.WARMUP)
        self.assert_latest(stream, [tuple(a[p, :hist[p]] for a in data) for p in rows])

    def test_update_shape_mismatch(self):
        data = candles(3, 60, seed=14)
        stream = ind.StreamingIndicators.from_history(*data)
        with self.assertRaises(ValueError):
            stream.update(*(a[:2, -1] for a in data))
        with self.assertRaises(ValueError):
            stream.update(*(a[:, -1] for a in data), rows=np.array([0, 2]))

    def test_latest_returns_fresh_arrays(self):
        data = candles(2, 100, seed=13)
        stream = ind.StreamingIndicators.from_history(*data)
        first = stream.latest()
        first["rsi"][:] = -1.0
        self.assertTrue((stream.latest()["rsi"] >= 0).all())
        stream.update(*(a[:, -1] * 1.01 for a in data))
        self.assertTrue((first["rsi"] == -1.0).all())


if __name__ == "__main__":
    unittest.main()

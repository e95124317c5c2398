"""features, labels, ml_model and model_training: no look-ahead, labels, prediction cache,
bounded training data, persistence and background retraining while prediction cycles run.
Synthetic random-walk candles only."""
from __future__ import annotations

import tempfile
import threading
import time
import unittest
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.dummy import DummyClassifier

from domain import StrategyParams
from features import (FEATURE_NAMES, HISTORY_NEEDED, close_windows, history_features,
                      prepare_features)
from labels import pair_samples, sample_key, samples_from_candles
from ml_model import (MIN_TRAIN_SAMPLES, MODEL_FILE, TRAINING_FILE, MLModel, PredictionCache,
                      load_model, payoff, positive_proba, save_model, saved_model_status,
                      train_model)
from model_training import Retrainer, TrainingData
from strategies import Strategy, TrendMomentum, frame, load_strategy, signals

F = len(FEATURE_NAMES)
TF = 300_000
FEE = 0.001   # per side; the expected returns below are computed for it
MARK = 777.0  # the volume that marks a hand-placed signal
EXIT_MARK = 555.0   # ... and a hand-placed exit signal
PARAMS = StrategyParams(timeframe_ms=TF)
# many signals on a random walk (the default volume filter keeps too few to train on)
PERMISSIVE = load_strategy("trend_momentum", "min_volume_ratio=0,rsi_overbought=90")


def random_walk(pairs: int, candles: int, seed: int = 0):
    """(ts, open, high, low, close, volume), each (pairs, candles) except ts (candles,)."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.004, (pairs, candles)), axis=1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.002, close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.002, close.shape)))
    volume = rng.lognormal(5, 0.5, close.shape)
    ts = 1_700_000_000_000 + TF * np.arange(candles)
    return ts, open_, high, low, close, volume


def candle_dict(pairs: int, candles: int, seed: int = 0) -> dict[str, np.ndarray]:
    ts, o, h, l, c, v = random_walk(pairs, candles, seed)
    return {f"C{i}/USDT": np.stack([ts, o[i], h[i], l[i], c[i], v[i]], axis=1)
            for i in range(pairs)}


def records(n: int, rate: float, start_ms: int, seed: int):
    """Random training records with positive rate ~`rate`, 5 minutes apart."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F)).astype(np.float32)
    y = (rng.random(n) < rate).astype(np.int8)
    t = start_ms + TF * np.arange(n, dtype=np.int64)
    return X, y, rng.normal(0, 0.01, n).astype(np.float32), t, t + 4 * TF


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FeatureTests(unittest.TestCase):
    def test_history_and_latest_agree_float32_and_warmup_is_nan(self):
        ts, o, h, l, c, v = random_walk(5, 200)
        X, ind = history_features(o, h, l, c, v)
        self.assertEqual(X.shape, (5, 200, F))
        self.assertEqual(X.dtype, np.float32)
        latest = prepare_features({k: a[:, -1] for k, a in ind.items()},
                                    c[:, -(HISTORY_NEEDED + 1):])
        np.testing.assert_array_equal(latest, X[:, -1])
        finite = np.isfinite(X).all(axis=-1)
        self.assertFalse(finite[:, :40].any())        # EMA50 and friends still warming up
        self.assertTrue(finite[:, 60:].all())
        self.assertTrue(np.isnan(X[~finite]).all())   # incomplete rows are wholly NaN

    def test_features_at_t_ignore_every_later_candle(self):
        ts, o, h, l, c, v = random_walk(3, 260, seed=1)
        base, _ = history_features(o, h, l, c, v)
        rng = np.random.default_rng(2)
        for change in (70, 150, 259):
            for suffix in (False, True):
                cols = slice(change, None) if suffix else slice(change, change + 1)
                o2, h2, l2, c2, v2 = (a.copy() for a in (o, h, l, c, v))
                factor = rng.uniform(0.8, 1.2, c2[:, cols].shape)
                for a in (o2, h2, l2, c2, v2):
                    a[:, cols] *= factor
                X2, _ = history_features(o2, h2, l2, c2, v2)
                np.testing.assert_array_equal(X2[:, :change], base[:, :change])
                self.assertFalse(np.array_equal(X2[:, change], base[:, change]))


class MarkedEntries(Strategy):
    """Buys exactly where a candle's volume is MARK: the signals a test places by hand."""
    name = "marked"

    def entry_score(self, x):
        return np.where(x["volume"] == MARK, 1.0, np.nan)

    def exit_signal(self, x):
        return x["volume"] == EXIT_MARK


def hand_built(marks, T: int = 130):
    """(T, 6) candles: a small zig-zag warm-up, then a flat market at 100 (high 100.2, low
    99.8) from candle 90, volume 100 except MARK at the signal rows `marks`."""
    ts = 1_700_000_000_000 + TF * np.arange(T)
    c = np.where(np.arange(T) % 2 == 0, 100.05, 99.95)
    c[90:] = 100.0
    o = np.concatenate([[100.0], c[:-1]])
    o[90:] = 100.0
    h, l = np.maximum(o, c) + 0.2, np.minimum(o, c) - 0.2
    v = np.full(T, 100.0)
    v[list(marks)] = MARK
    return np.stack([ts, o, h, l, c, v], axis=1)


class LabelTests(unittest.TestCase):
    def test_samples_ignore_candles_after_their_label_end(self):
        a = candle_dict(1, 400, seed=3)["C0/USDT"]
        base = pair_samples("C0/USDT", a, PERMISSIVE, PARAMS)
        self.assertGreater(len(base.y), 50)
        rng, reached = np.random.default_rng(4), 0
        for change in (150, 250, 399):
            b = a.copy()
            b[change:, 1:] *= rng.uniform(0.9, 1.1, (400 - change, 1))
            new = pair_samples("C0/USDT", b, PERMISSIVE, PARAMS)
            new_at = {k: i for i, k in enumerate(new.key.tolist())}
            known = np.flatnonzero(base.label_end_ms <= a[change, 0])   # decided before it
            self.assertGreater(len(known), 5)
            for i in known:
                j = new_at[int(base.key[i])]
                for old, now in zip(base, new):
                    np.testing.assert_array_equal(now[j], old[i])
            later = [i for i in range(len(base.y)) if base.label_end_ms[i] > a[change, 0]
                     and base.time_ms[i] <= a[change, 0] and int(base.key[i]) in new_at]
            if later:   # the changed candles do matter to labels that reach them
                reached += 1
                self.assertFalse(all(base.ret[i] == new.ret[new_at[int(base.key[i])]]
                                     for i in later))
        self.assertGreater(reached, 0)
        for i in range(0, len(base.y), 7):    # cut right after the candle that decided it
            end = int((base.label_end_ms[i] - TF - a[0, 0]) // TF)
            cut = pair_samples("C0/USDT", a[:end + 1], PERMISSIVE, PARAMS)
            j = {k: n for n, k in enumerate(cut.key.tolist())}[int(base.key[i])]
            for old, now in zip(base, cut):
                np.testing.assert_array_equal(now[j], old[i])

    def test_appending_candles_leaves_finished_labels_alone(self):
        a = candle_dict(1, 400, seed=5)["C0/USDT"]
        full = pair_samples("C0/USDT", a, PERMISSIVE, PARAMS)
        at = {k: i for i, k in enumerate(full.key.tolist())}
        for n in (200, 300, 350):
            part = pair_samples("C0/USDT", a[:n], PERMISSIVE, PARAMS)
            self.assertGreater(len(part.y), 5)
            self.assertTrue((part.label_end_ms <= a[n - 1, 0] + TF).all())   # finished only
            for i in range(len(part.y)):
                j = at[int(part.key[i])]
                for old, now in zip(part, full):
                    np.testing.assert_array_equal(now[j], old[i])

    def test_samples_only_at_the_strategys_signal_rows(self):
        a = candle_dict(1, 500, seed=8)["C0/USDT"]
        for strategy in (TrendMomentum(), PERMISSIVE):
            s = pair_samples("C0/USDT", a, strategy, PARAMS)
            x = frame(a, strategy)
            score, _ = signals(strategy, x)
            X = prepare_features(x, close_windows(a[:, 4]))
            rows = np.flatnonzero(np.isfinite(score) & np.isfinite(X).all(axis=1))
            t = ((s.time_ms - TF - int(a[0, 0])) // TF).astype(int)
            self.assertGreater(len(t), 10)
            self.assertTrue(set(t.tolist()) <= set(rows.tolist()))
            # the signals left out are those whose trade had not finished by the last candle
            left_out = sorted(set(rows.tolist()) - set(t.tolist()))
            self.assertTrue(all(r >= len(a) - 1 - PARAMS.max_hold_candles for r in left_out))
            np.testing.assert_array_equal(s.X, X[t])
            np.testing.assert_array_equal(s.key, sample_key("C0/USDT", a[t, 0]))
        self.assertEqual(len(pair_samples("C0/USDT", a[:1], PERMISSIVE, PARAMS).y), 0)

    def test_net_return_fees_slippage_gaps_and_end_of_data(self):
        # signals at 95, 105 and 112, entry at the next open 100 (times 1 + slippage):
        # percent levels from the signal's close 100: stop 98, take-profit 103, shifted by
        # the slippage. 100: the high jumps through the take-profit; 108: opens at 106 above
        # it; 115: the low falls through the stop; 125: never finished.
        a = hand_built([95, 105, 112, 125])
        a[100, 2] = 105.0
        a[108, 1:5] = 106.0, 106.5, 105.5, 106.0
        a[115, 3] = 97.0
        rules = StrategyParams(timeframe_ms=TF, stop_loss_pct=0.02, take_profit_pct=0.03,
                               max_hold_candles=48)
        for fee, slip in ((0.0, 0.0), (FEE, 0.0), (FEE, 0.0005)):
            s = samples_from_candles({"X/USDT": a}, MarkedEntries(), rules, fee, slip)
            entry = 100.0 * (1 + slip)
            take, stop = 103.0 + 100.0 * slip, 98.0 + 100.0 * slip
            exit_price = np.array([take, 106.0, stop])
            expected = exit_price * (1 - slip) / entry - 1 - 2 * fee
            np.testing.assert_allclose(s.ret, expected, rtol=0, atol=1e-7)
            np.testing.assert_array_equal(s.y, [1, 1, 0])
            np.testing.assert_array_equal(s.y, (s.ret > 0).astype(np.int8))
            np.testing.assert_array_equal(s.time_ms, a[[95, 105, 112], 0] + TF)
            np.testing.assert_array_equal(s.label_end_ms, a[[100, 108, 115], 0] + TF)
        np.testing.assert_allclose(s.ret[0], 1.0305 * 0.9995 / 1.0005 - 1.002, atol=1e-7)
        # a take-profit that nets < 0 once both fees and slippage are paid
        a = hand_built([95])
        rules = StrategyParams(timeframe_ms=TF, stop_loss_pct=0.02, take_profit_pct=0.001)
        s = samples_from_candles({"X/USDT": a}, MarkedEntries(), rules, FEE, 0.0005)
        self.assertEqual(s.y.tolist(), [0])
        np.testing.assert_allclose(s.ret, [(100.1 + 0.05) * 0.9995 / 100.05 - 1.002], atol=1e-7)

    def test_the_strategys_exit_signal_closes_the_labelled_trade_at_the_close(self):
        a = hand_built([95])
        a[98, 4:6] = 100.5, EXIT_MARK
        a[110, 3] = 97.0                                  # the stop, were the signal off
        rules = StrategyParams(timeframe_ms=TF, stop_loss_pct=0.02, take_profit_pct=0.03)
        s = samples_from_candles({"X/USDT": a}, MarkedEntries(), rules, FEE, 0.0005)
        np.testing.assert_array_equal(s.label_end_ms, [a[98, 0] + TF])
        np.testing.assert_allclose(s.ret, [100.5 * 0.9995 / 100.05 - 1.002], atol=1e-7)
        self.assertEqual(s.y.tolist(), [1])
        off = replace(rules, use_exit_signal=False)
        s = samples_from_candles({"X/USDT": a}, MarkedEntries(), off, FEE, 0.0005)
        np.testing.assert_array_equal(s.label_end_ms, [a[110, 0] + TF])
        np.testing.assert_allclose(s.ret, [98.05 * 0.9995 / 100.05 - 1.002], atol=1e-7)

    def test_samples_are_sorted_labelled_after_their_time_and_unique(self):
        params = StrategyParams(timeframe_ms=TF, max_hold_candles=24)
        s = samples_from_candles(candle_dict(4, 400), PERMISSIVE, params)
        self.assertGreater(len(s.y), 200)
        self.assertTrue(np.isfinite(s.X).all())
        self.assertTrue(np.isfinite(s.ret).all())
        self.assertTrue(set(np.unique(s.y)) <= {0, 1})
        self.assertTrue(0 < s.y.sum() < len(s.y))
        np.testing.assert_array_equal(s.y, (s.ret > 0).astype(np.int8))
        self.assertTrue((np.diff(s.time_ms) >= 0).all())
        self.assertTrue((s.label_end_ms > s.time_ms).all())
        self.assertTrue((s.label_end_ms >= s.time_ms + TF).all())
        self.assertTrue((s.label_end_ms <= s.time_ms + 24 * TF).all())
        self.assertEqual(len(np.unique(s.key)), len(s.key))
        empty = samples_from_candles({}, PERMISSIVE, params)
        self.assertEqual((len(empty.y), empty.X.shape[1]), (0, F))


class PredictionCacheTests(unittest.TestCase):
    def test_ttl_expiry_on_the_injected_clock(self):
        clock = FakeClock(0.0)
        cache = PredictionCache(ttl=300, clock=clock)
        key = cache.round_keys([(50.0, 0.01, 0.5, 1.0)])
        cache.put_many(key, [0.7], generation=0)
        clock.now = 300.0
        self.assertEqual(cache.get_many(key, 0)[0], 0.7)
        clock.now = 300.5
        self.assertTrue(np.isnan(cache.get_many(key, 0)[0]))
        s = cache.stats()
        self.assertEqual((s["hits"], s["misses"], s["expired"], s["size"]), (1, 1, 1, 0))

    def test_rounding_groups_close_states(self):
        cache = PredictionCache(decimals=1)
        a, b, c = cache.round_keys([(50.04, 0.0101, 0.501, 1.004), (50.01, 0.0104, 0.504, 1.001),
                                    (50.04, 0.0120, 0.501, 1.004)])
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)   # 1.2 bp of MACD is another state
        rng = np.random.default_rng(16)     # the few-keys and many-keys paths agree
        raw = [tuple(x) for x in np.round(rng.normal(0, 50, (400, 4)), 2).tolist()]
        many = cache.round_keys(raw)
        self.assertEqual([cache.round_keys([k])[0] for k in raw], many)
        self.assertEqual(len(set(many)), 400)

    def test_size_bound_and_lru_order(self):
        cache = PredictionCache(max_size=1000)
        keys = [(float(i), 0.0, 0.0, 0.0) for i in range(1001)]
        cache.put_many(keys[:1000], np.linspace(0, 1, 1000), 0)
        self.assertEqual(len(cache), 1000)
        cache.get_many([keys[0]], 0)           # key 0 becomes the most recently used
        cache.put_many([keys[1000]], [0.5], 0)
        self.assertEqual(len(cache), 1000)
        self.assertEqual(cache.stats()["evictions"], 1)
        got = cache.get_many([keys[0], keys[1], keys[1000]], 0)
        self.assertFalse(np.isnan(got[0]))
        self.assertTrue(np.isnan(got[1]))      # the least recently used went first
        self.assertEqual(got[2], 0.5)

    def test_swap_clears_and_old_generation_is_never_served(self):
        model = MLModel(PredictionCache())
        X, y, ret, t, end = records(400, 0.4, 0, seed=5)
        est, meta = train_model(X, y, t, end, ret)
        model.swap(est, meta)
        keys = [(float(i), 0.0, 0.0, 1.0) for i in range(10)]
        model.predict_proba(X[:10], keys)
        self.assertEqual(len(model.cache), 10)
        old_version = model.bundle.version
        model.swap(est, meta)
        self.assertEqual(len(model.cache), 0)
        model.cache.put_many(model.cache.round_keys(keys), np.zeros(10), old_version)
        self.assertEqual(len(model.cache), 0)  # a late write of the old model is dropped


class ModelTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        s = samples_from_candles(candle_dict(4, 500, seed=6), PERMISSIVE, PARAMS)
        assert len(s.y) >= MIN_TRAIN_SAMPLES, len(s.y)
        cls.samples = s
        cls.trained = train_model(s.X, s.y, s.time_ms, s.label_end_ms, s.ret)

    def test_training_reports_out_of_sample_quality_and_versions(self):
        est, meta = self.trained
        self.assertEqual(tuple(meta["feature_names"]), FEATURE_NAMES)
        self.assertEqual(meta["samples"], len(self.samples.y))
        self.assertTrue(0 < meta["validation_samples"] < meta["samples"])
        for k in ("auc", "base_rate", "precision_at_threshold", "sklearn", "numpy"):
            self.assertIn(k, meta)
        self.assertTrue(0.0 <= meta["auc"] <= 1.0)

    def test_meta_carries_the_payoff_of_winners_and_losers(self):
        _, meta = self.trained
        avg_win, avg_loss = payoff(self.samples.y, self.samples.ret)
        self.assertGreater(meta["avg_win"], 0.0)
        self.assertGreater(meta["avg_loss"], 0.0)
        self.assertAlmostEqual(meta["avg_win"], avg_win, places=12)
        self.assertAlmostEqual(meta["avg_loss"], avg_loss, places=12)
        ret = self.samples.ret.astype(np.float64)
        self.assertAlmostEqual(avg_win, ret[ret > 0].mean(), places=9)
        self.assertAlmostEqual(avg_loss, -ret[ret <= 0].mean(), places=9)
        self.assertEqual(payoff(self.samples.y, None), (0.0, 0.0))

    def test_batched_prediction_equals_single_predictions(self):
        model = MLModel()
        model.swap(*self.trained)
        X = self.samples.X[:50]
        keys = [tuple(r) for r in X[:, [0, 1, 2, 3]].astype(float)]
        batched = model.predict_proba(X)
        singles = np.array([model.predict_proba(X[i:i + 1])[0] for i in range(50)])
        np.testing.assert_allclose(batched, singles, rtol=1e-9)
        first = model.predict_proba(X, keys)     # all misses, one batched call
        again = model.predict_proba(X, keys)     # all hits
        np.testing.assert_allclose(first, batched, rtol=1e-9)
        np.testing.assert_array_equal(again, first)
        self.assertEqual(model.cache.stats()["hits"], 50)

    def test_save_load_round_trip_and_json_status(self):
        with tempfile.TemporaryDirectory() as d:
            save_model(d, *self.trained)
            est, meta = load_model(d)
            X = self.samples.X[:20]
            np.testing.assert_array_equal(positive_proba(est, X),
                                          positive_proba(self.trained[0], X))
            self.assertEqual(saved_model_status(d)["samples"], meta["samples"])

    def test_corrupt_or_incompatible_model_file_warns_and_returns_none(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertIsNone(load_model(d))                  # missing: quietly None
            Path(d, MODEL_FILE).write_bytes(b"\x80\x04 definitely not a pickle")
            with self.assertLogs("ml_model", "WARNING") as logs:
                self.assertIsNone(load_model(d))
            self.assertIn("retrained", logs.output[0])
            est, meta = self.trained
            save_model(d, est, {**meta, "feature_names": ["rsi", "something_else"]})
            with self.assertLogs("ml_model", "WARNING"):
                self.assertIsNone(load_model(d))

    def test_corrupt_model_file_then_retrainer_trains_and_saves_a_good_one(self):
        with tempfile.TemporaryDirectory() as d:
            Path(d, MODEL_FILE).write_bytes(b"garbage")
            Path(d, TRAINING_FILE).write_bytes(b"garbage too")
            model = MLModel()
            ohlcv = candle_dict(3, 500, seed=7)
            retrainer = Retrainer(model, TrainingData(), d,
                                  lambda: samples_from_candles(ohlcv, PERMISSIVE, PARAMS))
            with (self.assertLogs("ml_model", "WARNING") as model_logs,
                  self.assertLogs("model_training", "WARNING") as data_logs):
                retrainer.start()
                self.assertTrue(retrainer.wait_idle(30))
            retrainer.stop()
            self.assertEqual(len(model_logs.output), 1)   # the model file
            self.assertEqual(len(data_logs.output), 1)    # the training file
            self.assertTrue(model.is_ready())
            self.assertEqual(model.status()["version"], 1)
            self.assertIsNotNone(load_model(d))
            reloaded = TrainingData()
            self.assertGreater(reloaded.load(Path(d, TRAINING_FILE)), 0)


class TrainingDataTests(unittest.TestCase):
    def test_trim_past_20000_to_15000_keeps_extremes_drops_oldest(self):
        td = TrainingData()
        nbytes = td.nbytes
        rng = np.random.default_rng(8)
        for i in range(4):
            X, y, _, t, end = records(5000, 0.4, i * 5000 * TF, seed=i)
            td.add(X, y, rng.normal(0, 0.01, 5000), t, end)
        self.assertEqual(len(td), 20_000)          # at the limit, not past it
        snap = td.snapshot()
        extremes = set(snap.time_ms[np.argsort(-np.abs(snap.ret))[:3750]].tolist())
        td.add(*records(1, 0.4, 20_000 * TF, seed=9)[:2], [0.0], [20_000 * TF], [0])
        self.assertEqual(len(td), 15_000)
        self.assertEqual(td.nbytes, nbytes)       # preallocated, never grows
        self.assertEqual(td.added_total, 20_001)
        kept = td.snapshot()
        kept_t = set(kept.time_ms.tolist())
        self.assertTrue(extremes <= kept_t)
        dropped = set(range(0, 20_001 * TF, TF)) - kept_t
        self.assertEqual(len(dropped), 5001)
        self.assertLess(max(dropped), min(kept_t - extremes))   # the rest: oldest went first
        self.assertTrue((np.diff(kept.time_ms) > 0).all())

    def test_save_keeps_5000_most_important_and_reloads(self):
        td = TrainingData()
        X, y, ret, t, end = records(12_000, 0.4, 0, seed=10)
        td.add(X, y, ret, t, end, keys=np.arange(12_000, dtype=np.uint64))
        td.add_trade("ETH/USDT", X[0], 0.0, int(t[0]), int(end[0]))   # old, not extreme
        td.add_trade("BTC/USDT", X[1], 0.5, int(t[1]), int(end[1]))   # old but extreme
        with tempfile.TemporaryDirectory() as d:
            path = Path(d, "training.npz")
            self.assertEqual(td.save(path), 5000)
            back = TrainingData()
            self.assertEqual(back.load(path), 5000)
        snap, saved = td.snapshot(), back.snapshot()
        order = np.argsort(-np.abs(snap.ret))
        top = snap.time_ms[order[:2500]]
        saved_pairs = set(zip(saved.time_ms.tolist(), saved.ret.tolist()))
        self.assertEqual(len(saved_pairs), 5000)                       # no duplicates
        self.assertTrue(set(zip(top.tolist(), snap.ret[order[:2500]].tolist())) <= saved_pairs)
        rest = np.ones(len(snap.ret), bool)
        rest[order[:2500]] = False
        recent = np.sort(snap.time_ms[rest])[-2500:]
        self.assertTrue(set(recent.tolist()) <= set(saved.time_ms.tolist()))
        self.assertEqual(saved.source.tolist().count(1), 1)             # the extreme trade
        self.assertIn(0.5, saved.ret.tolist())
        i = int(np.flatnonzero(saved.ret == 0.5)[0])
        np.testing.assert_array_equal(saved.X[i], X[1])

    def test_duplicate_samples_are_not_added_twice(self):
        s = samples_from_candles(candle_dict(2, 300, seed=11), TrendMomentum(), PARAMS)
        self.assertGreater(len(s.y), 10)
        td = TrainingData()
        self.assertEqual(td.add_samples(s), len(s.y))
        self.assertEqual(td.add_samples(s), 0)
        self.assertEqual(len(td), len(s.y))


class RetrainerTests(unittest.TestCase):
    def test_cycles_never_wait_for_training_nor_see_a_half_swapped_model(self):
        entered, gate = threading.Event(), threading.Event()

        class GatedDummy(DummyClassifier):
            """Predicts its training data's positive rate; fit blocks until the gate opens."""

            def fit(self, X, y, sample_weight=None):
                entered.set()
                if not gate.wait(30):
                    raise TimeoutError("gate never opened")
                return super().fit(X, y, sample_weight)

        data = TrainingData()
        data.add(*records(1000, 0.3, 0, seed=12))
        model = MLModel()
        gate.set()
        snap = data.snapshot()
        model.swap(*train_model(snap.X, snap.y, snap.time_ms, snap.end_ms,
                                  factory=lambda: GatedDummy()))
        gate.clear()
        entered.clear()
        retrainer = Retrainer(model, data, "unused", factory=lambda: GatedDummy(),
                                persist=False).start(load=False)
        self.assertTrue(retrainer.wait_idle(10))

        seen, errors, stop = [], [], threading.Event()
        X = np.zeros((8, F), np.float32)
        keys = [(float(i % 4), 0.0, 0.0, 1.0) for i in range(8)]   # repeats: cache hits

        def cycles():
            try:
                while not stop.is_set():
                    p, bundle = model.predict_detailed(X, keys)
                    status = model.status()
                    seen.append((bundle.version, bool(np.all(p == bundle.meta["positive_rate"])),
                                 status["version"], status["samples"]))
            except Exception as exc:   # surfaced by the assertions below
                errors.append(exc)

        worker = threading.Thread(target=cycles)
        worker.start()
        try:
            data.add(*records(1000, 0.8, 1000 * TF, seed=13))
            retrainer.request_training()
            self.assertTrue(entered.wait(10))
            before = len(seen)
            deadline = time.monotonic() + 10
            while len(seen) < before + 200 and time.monotonic() < deadline:
                time.sleep(0.005)
            self.assertGreaterEqual(len(seen) - before, 200)   # cycles ran while fit blocked
            self.assertTrue(retrainer.training)
            self.assertEqual(model.bundle.version, 1)
            gate.set()
            self.assertTrue(retrainer.wait_idle(10))
            after = len(seen)
            while len(seen) < after + 200 and time.monotonic() < deadline + 10:
                time.sleep(0.005)
        finally:
            stop.set()
            gate.set()
            worker.join(10)
            retrainer.stop()
        self.assertEqual(errors, [])
        versions = [v for v, _, _, _ in seen]
        self.assertEqual(sorted(set(versions)), [1, 2])
        self.assertEqual(versions, sorted(versions))             # never back to the old model
        self.assertTrue(all(ok for _, ok, _, _ in seen))        # p always from its own bundle
        self.assertTrue(all({1: 1000, 2: 2000}[v] == n for _, _, v, n in seen))
        self.assertEqual(model.status()["samples"], 2000)

    def test_maybe_retrain_on_interval_or_new_samples(self):
        clock = FakeClock(0.0)
        data = TrainingData()
        data.add(*records(400, 0.4, 0, seed=14))
        model = MLModel()
        retrainer = Retrainer(model, data, "unused", retrain_interval=3600,
                                min_new_samples=100, clock=clock, persist=False)
        retrainer.start(load=False)            # no model: trains at once
        try:
            self.assertTrue(retrainer.wait_idle(30))
            self.assertEqual(model.status()["version"], 1)
            clock.now = 600.0
            self.assertFalse(retrainer.maybe_retrain())
            data.add(*records(100, 0.4, 400 * TF, seed=15))
            self.assertTrue(retrainer.maybe_retrain())
            self.assertTrue(retrainer.wait_idle(30))
            self.assertEqual(model.status()["version"], 2)
            clock.now = 600.0 + 3599
            self.assertFalse(retrainer.maybe_retrain())
            clock.now = 600.0 + 3600
            self.assertTrue(retrainer.maybe_retrain())
            self.assertTrue(retrainer.wait_idle(30))
            self.assertEqual(model.status()["version"], 3)
            self.assertEqual(model.status()["trained_at"], 4200.0)
        finally:
            retrainer.stop()


if __name__ == "__main__":
    unittest.main()

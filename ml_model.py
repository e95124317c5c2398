"""Features, labels, the scikit-learn entry model, its prediction cache, bounded training
data and background retraining.

Importing this module costs numpy only: scikit-learn and joblib are imported inside the
functions that train, load or save a model (sklearn.ensemble alone costs ~1.3 s, 170 MiB).

No look-ahead: features at candle t use candles up to t; the label at t uses candles
t+1..t+horizon only (triple barrier: the risk manager's stop, take-profit and time limit,
round-trip fees included) and carries the time its outcome became known (`label_end_ms`),
so walk-forward training keeps only labels with label_end_ms <= now.

A model file is a pickle, i.e. code: it is only ever loaded from the bot's own data
directory (`DATA_DIR/model.joblib`), never from a user-supplied path.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

log = logging.getLogger(__name__)

FEATURE_NAMES: tuple[str, ...] = (
    "rsi",                  # Wilder RSI(14), 0..100
    "macd_hist_pct",        # MACD histogram / close, %
    "momentum_pct",         # 10-candle momentum / close, %
    "log_volume_ratio",     # ln(volume / SMA20(volume))
    "bb_position",          # (close - lower) / (upper - lower); 0.5 when the band is flat
    "atr_pct",              # ATR(14) / close, %
    "ema_fast_dist_pct",    # close / EMA12 - 1, %
    "ema_slow_dist_pct",    # close / EMA26 - 1, %
    "ema_trend_dist_pct",   # close / EMA50 - 1, %
    "ret_1_pct",            # close / close[t-h] - 1, %
    "ret_3_pct",
    "ret_6_pct",
    "ret_24_pct",
    "volatility_24_pct",    # std of the last 24 one-candle log returns, %
)
RETURN_HORIZONS: tuple[int, ...] = (1, 3, 6, 24)
VOLATILITY_WINDOW = 24
HISTORY_NEEDED = max(max(RETURN_HORIZONS), VOLATILITY_WINDOW)   # K: closes needed before t
REQUIRED_INDICATORS = ("rsi", "macd_hist", "momentum", "volume_ratio", "bb_upper",
                       "bb_lower", "atr", "ema_fast", "ema_slow", "ema_trend")

# Cache keys are (rsi, macd_hist %, momentum %, volume_ratio) as strategy.model_keys makes
# them; each is multiplied by its scale before rounding to ML_CACHE_ROUNDING decimals, so
# with 1 decimal the grid is 0.1 RSI point, 0.1 bp of MACD, 0.01 % momentum, 0.01 volume ratio.
CACHE_KEY_SCALES: tuple[float, ...] = (1.0, 100.0, 10.0, 10.0)

MODEL_KINDS = ("logistic", "hgb", "forest")
DEFAULT_MODEL_KIND = "logistic"   # see README: best out-of-sample AUC/Brier, cheapest
MODEL_FILE = "model.joblib"
MODEL_META_FILE = "model.json"
TRAINING_FILE = "training_data.npz"
DEFAULT_FEE_RATE = 0.001
MIN_TRAIN_SAMPLES = 200
NOT_READY_RETRY = 300.0         # market seconds between attempts while no model is ready
SAVE_EXTREME_FRACTION = 0.5     # of the 5,000 saved: half most extreme |return|, half most recent
TRIM_EXTREME_FRACTION = 0.25    # of the 15,000 kept on trim: a quarter extreme, the rest recent
SOURCES = ("history", "trade")


# --------------------------------------------------------------------------- features

def close_windows(close: np.ndarray, k: int = HISTORY_NEEDED) -> np.ndarray:
    """(..., T) closes -> read-only view (..., T, k+1) of the k+1 closes ending at each t
    (NaN-padded before the first candle), the `recent_close` prepare_features takes."""
    close = np.asarray(close, dtype=np.float64)
    pad = np.full(close.shape[:-1] + (k,), np.nan)
    return np.lib.stride_tricks.sliding_window_view(
        np.concatenate([pad, close], axis=-1), k + 1, axis=-1)


def prepare_features(ind: Mapping[str, np.ndarray], recent_close: np.ndarray) -> np.ndarray:
    """Indicators at t (shape S) and closes t-K..t (S + (K+1,)) -> float32 (S + (F,)).

    S is (P,) for the latest candle of P pairs or (P, T) for a whole history (with
    `close_windows`); extra leading closes are ignored. Rows whose warm-up is incomplete
    are all NaN; callers drop them.
    """
    closes = np.asarray(recent_close, dtype=np.float64)
    if closes.shape[-1] < HISTORY_NEEDED + 1:
        raise ValueError(f"recent_close needs {HISTORY_NEEDED + 1} closes, got {closes.shape[-1]}")
    closes = closes[..., -(HISTORY_NEEDED + 1):]
    c = closes[..., -1]
    g = {name: np.asarray(ind[name], dtype=np.float64) for name in REQUIRED_INDICATORS}
    out = np.empty(c.shape + (len(FEATURE_NAMES),), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = g["bb_upper"] - g["bb_lower"]
        log_returns = np.diff(np.log(closes[..., -(VOLATILITY_WINDOW + 1):]), axis=-1)
        columns = [
            g["rsi"],
            g["macd_hist"] / c * 100.0,
            g["momentum"] / c * 100.0,
            np.log(np.maximum(g["volume_ratio"], 1e-3)),
            np.where(width > 0, (c - g["bb_lower"]) / width, 0.5),
            g["atr"] / c * 100.0,
            (c / g["ema_fast"] - 1.0) * 100.0,
            (c / g["ema_slow"] - 1.0) * 100.0,
            (c / g["ema_trend"] - 1.0) * 100.0,
            *[(c / closes[..., -1 - h] - 1.0) * 100.0 for h in RETURN_HORIZONS],
            log_returns.std(axis=-1) * 100.0,
        ]
        for j, column in enumerate(columns):
            out[..., j] = column
        valid = np.isfinite(out).all(axis=-1) & (c > 0)
        for name in REQUIRED_INDICATORS:      # e.g. a NaN band must not read as position 0.5
            valid &= np.isfinite(g[name])
    out[~valid] = np.nan
    return out


def history_features(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                     volume: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(P, T) candles -> features (P, T, F) at every candle, and the indicators."""
    from indicators import compute_all

    ind = compute_all(open_, high, low, close, volume)
    return prepare_features(ind, close_windows(close)), ind


# --------------------------------------------------------------------------- labels

class BarrierLabels(NamedTuple):
    label: np.ndarray    # float32 {1, 0, nan}: 1 when the trade nets > 0 after fees
    end: np.ndarray      # int64 index of the candle that decided the label; -1 where nan
    ret: np.ndarray      # float32 net return of the trade (fees included); nan where nan


def triple_barrier_labels(high: np.ndarray, low: np.ndarray, close: np.ndarray,
                          atr: np.ndarray, tp_atr: float, sl_atr: float, horizon: int,
                          fee_rate: float, open_: np.ndarray | None = None) -> BarrierLabels:
    """Label the long entry at close[t] from candles t+1..t+horizon only.

    Stop close-sl_atr*atr and take-profit close+tp_atr*atr; when one candle touches both the
    stop is assumed first. With `open_`, a gap through a barrier fills at the open (as
    strategy.check_exit does). Unresolved at the horizon: exit at close[t+horizon]. The label
    is 1 iff the net return after 2 x fee_rate is positive; nan where the window runs past the
    data or atr is unknown. Vectorised over (P, T); loops over the horizon offsets only.
    """
    high, low, close, atr = (np.asarray(a, dtype=np.float64) for a in (high, low, close, atr))
    opens = None if open_ is None else np.asarray(open_, dtype=np.float64)
    n = close.shape[-1]
    stop = close - sl_atr * atr
    take = close + tp_atr * atr
    exit_price = np.full(close.shape, np.nan)
    end = np.full(close.shape, -1, dtype=np.int64)
    index = np.arange(n)
    for k in range(1, horizon + 1):
        if k >= n:
            break
        lead = (slice(None),) * (close.ndim - 1)
        now, later = lead + (slice(0, n - k),), lead + (slice(k, n),)
        pending = np.isnan(exit_price[now]) & np.isfinite(atr[now])
        hit_stop = pending & (low[later] <= stop[now])
        hit_take = pending & ~hit_stop & (high[later] >= take[now])
        stop_fill, take_fill = stop[now], take[now]
        if opens is not None:
            stop_fill = np.minimum(stop_fill, opens[later])
            take_fill = np.maximum(take_fill, opens[later])
        fill = np.where(hit_stop, stop_fill, np.where(hit_take, take_fill, np.nan))
        if k == horizon:
            fill = np.where(pending & ~hit_stop & ~hit_take, close[later], fill)
        decided = np.isfinite(fill)
        exit_price[now] = np.where(decided, fill, exit_price[now])
        end[now] = np.where(decided, index[k:], end[now])
    complete = np.zeros(close.shape, dtype=bool)
    complete[..., : max(n - horizon, 0)] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        ret = exit_price / close - 1.0 - 2.0 * fee_rate
    ok = complete & np.isfinite(ret)
    label = np.where(ok, (ret > 0).astype(np.float32), np.nan).astype(np.float32)
    return BarrierLabels(label, np.where(ok, end, -1), np.where(ok, ret, np.nan).astype(np.float32))


# --------------------------------------------------------------------------- samples

@dataclass(frozen=True)
class LabelParams:
    """What labels need; strategy.StrategyParams has the same attribute names."""
    stop_loss_atr: float = 2.0
    take_profit_atr: float = 3.0
    max_hold_candles: int = 48
    timeframe_ms: int | None = None     # None: inferred from the timestamps
    fee_rate: float = DEFAULT_FEE_RATE  # per side; add slippage here if it should count


class Samples(NamedTuple):
    X: np.ndarray              # float32 (N, F)
    y: np.ndarray              # int8 (N,) {0, 1}
    label_end_ms: np.ndarray   # int64: close time of the candle that decided the label
    time_ms: np.ndarray        # int64: close time of candle t (when the features were known)
    ret: np.ndarray            # float32 net return of the labelled trade
    key: np.ndarray            # uint64 (symbol, candle) identity, for de-duplication


def sample_key(symbol: str, open_ms: np.ndarray) -> np.ndarray:
    """uint64 identity of (symbol, candle open minute)."""
    crc = np.uint64(zlib.crc32(symbol.encode()))
    minutes = (np.asarray(open_ms, dtype=np.int64) // 60_000).astype(np.uint64) & np.uint64(0x7FFFFFFF)
    return (crc << np.uint64(32)) | minutes


def samples_from_candles(ohlcv: Mapping[str, np.ndarray], params: Any = LabelParams()) -> Samples:
    """Symbol -> (T, 6) [ts_ms, o, h, l, c, v] candles -> labelled samples sorted by time.

    `params` needs stop_loss_atr, take_profit_atr, max_hold_candles and may have
    timeframe_ms and fee_rate (StrategyParams or LabelParams). Pairs of equal length are
    computed together as one (P, T) block.
    """
    groups: dict[int, list[str]] = {}
    for symbol, arr in ohlcv.items():
        if len(arr) > HISTORY_NEEDED + 1:
            groups.setdefault(len(arr), []).append(symbol)
    parts = [_block_samples(symbols, np.stack([np.asarray(ohlcv[s], dtype=np.float64)
                                               for s in symbols]), params)
             for symbols in groups.values()]
    if not parts:
        return _empty_samples()
    merged = Samples(*(np.concatenate(cols) for cols in zip(*parts)))
    order = np.argsort(merged.time_ms, kind="stable")
    return Samples(*(col[order] for col in merged))


def _block_samples(symbols: Sequence[str], arr: np.ndarray, params: Any) -> Samples:
    ts, o, h, l, c, v = (arr[..., i] for i in range(6))
    X, ind = history_features(o, h, l, c, v)
    fee = getattr(params, "fee_rate", DEFAULT_FEE_RATE)
    labels = triple_barrier_labels(h, l, c, ind["atr"], params.take_profit_atr,
                                   params.stop_loss_atr, params.max_hold_candles, fee, open_=o)
    tf = getattr(params, "timeframe_ms", None) or int(np.median(np.diff(ts[0])))
    keep = np.isfinite(X).all(axis=-1) & np.isfinite(labels.label)
    ts_i = ts.astype(np.int64)
    end_ms = np.take_along_axis(ts_i, np.maximum(labels.end, 0), axis=-1) + tf
    keys = np.stack([sample_key(s, ts_i[i]) for i, s in enumerate(symbols)])
    return Samples(X[keep], labels.label[keep].astype(np.int8), end_ms[keep], ts_i[keep] + tf,
                   labels.ret[keep], keys[keep])


def _empty_samples() -> Samples:
    return Samples(np.empty((0, len(FEATURE_NAMES)), np.float32), np.empty(0, np.int8),
                   np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32),
                   np.empty(0, np.uint64))


# --------------------------------------------------------------------------- prediction cache

class PredictionCache:
    """Probability per rounded market state: TTL in market seconds, LRU bound, thread-safe.

    Entries belong to a model generation: `clear(generation)` empties the cache when a
    model is swapped in, and reads or writes for another generation are misses / ignored,
    so a prediction of the old model can never be served for the new one.
    """

    def __init__(self, ttl: float = 300.0, max_size: int = 1000, decimals: int = 1,
                 scales: Sequence[float] = CACHE_KEY_SCALES,
                 clock: Callable[[], float] = time.time):
        self.ttl, self.max_size, self.decimals = float(ttl), int(max_size), int(decimals)
        self._scales = np.asarray(scales, dtype=np.float64)
        self._scale_list = [float(x) for x in scales]
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple[float, float]] = OrderedDict()
        self._generation = 0
        self.hits = self.misses = self.evictions = self.expired = 0

    @classmethod
    def from_config(cls, config: Any, clock: Callable[[], float] = time.time) -> "PredictionCache":
        return cls(ttl=config.ml_prediction_cache_duration, decimals=config.ml_cache_rounding,
                   clock=clock)

    def round_keys(self, keys: Sequence[Sequence[float]]) -> list[tuple]:
        """Raw critical-indicator tuples -> hashable rounded tuples.

        Python rounding for a few keys (cheaper than a numpy round trip), numpy for many;
        both compute rint(value * scale * 10**decimals) / 10**decimals, so keys agree.
        """
        if len(keys) <= 8:
            p = 10.0 ** self.decimals
            try:
                return [tuple(round(v * s * p) / p for v, s in zip(key, self._scale_list,
                                                                   strict=True))
                        for key in keys]
            except (ValueError, OverflowError):   # NaN, inf or a bad width: numpy handles it
                pass
        raw = np.asarray(keys, dtype=np.float64).reshape(len(keys), -1)
        if raw.shape[1] != self._scales.size:
            raise ValueError(f"cache keys need {self._scales.size} values, got {raw.shape[1]}")
        return list(map(tuple, np.round(raw * self._scales, self.decimals).tolist()))

    def get_many(self, keys: Sequence[tuple], generation: int) -> np.ndarray:
        """Cached probabilities for rounded keys; NaN where missing, expired or stale."""
        out = np.full(len(keys), np.nan)
        now = self._clock()
        with self._lock:
            if generation != self._generation:
                self.misses += len(keys)
                return out
            for i, key in enumerate(keys):
                entry = self._entries.get(key)
                if entry is not None and now - entry[1] > self.ttl:
                    del self._entries[key]
                    self.expired += 1
                    entry = None
                if entry is None:
                    self.misses += 1
                else:
                    self._entries.move_to_end(key)
                    out[i] = entry[0]
                    self.hits += 1
        return out

    def put_many(self, keys: Sequence[tuple], values: Iterable[float], generation: int) -> None:
        if self.ttl <= 0 or self.max_size <= 0:
            return
        now = self._clock()
        with self._lock:
            if generation != self._generation:
                return
            for key, value in zip(keys, values):
                self._entries[key] = (float(value), now)
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
                self.evictions += 1

    def clear(self, generation: int | None = None) -> None:
        """Drop every entry; with `generation`, only that model's predictions are accepted."""
        with self._lock:
            self._entries.clear()
            if generation is not None:
                self._generation = generation

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, float]:
        with self._lock:
            lookups = self.hits + self.misses
            return {"size": len(self._entries), "max_size": self.max_size, "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions, "expired": self.expired,
                    "hit_rate": self.hits / lookups if lookups else 0.0}

    def report(self) -> str:
        s = self.stats()
        return (f"size {s['size']}/{s['max_size']}, hits {s['hits']}, misses {s['misses']} "
                f"(hit rate {s['hit_rate']:.0%}), evictions {s['evictions']}, "
                f"expired {s['expired']}")


# --------------------------------------------------------------------------- training data

def important_indices(ret: np.ndarray, time_ms: np.ndarray, n: int,
                      extreme_fraction: float) -> np.ndarray:
    """Indices of the n records to keep: the most extreme |ret| first, the rest the most
    recent of the others (no duplicates); sorted by position."""
    total = len(ret)
    if total <= n:
        return np.arange(total)
    n_extreme = int(round(n * extreme_fraction))
    chosen = np.zeros(total, dtype=bool)
    chosen[np.argsort(-np.abs(np.nan_to_num(ret)), kind="stable")[:n_extreme]] = True
    rest = np.flatnonzero(~chosen)
    chosen[rest[np.argsort(time_ms[rest], kind="stable")[rest.size - (n - n_extreme):]]] = True
    return np.flatnonzero(chosen)


class TrainingSnapshot(NamedTuple):
    X: np.ndarray
    y: np.ndarray
    ret: np.ndarray
    time_ms: np.ndarray
    end_ms: np.ndarray
    source: np.ndarray


class TrainingData:
    """Bounded, preallocated training records (features, label, return, time, source).

    At most `trim_at` (20,000) records are ever held; passing it trims to `keep` (15,000):
    the oldest go first, except the most extreme outcomes (a quarter of what is kept).
    `save` writes the `save_count` (5,000) most important: half the most extreme |return|,
    half the most recent. Thread-safe.
    """

    _FIELDS = ("X", "y", "ret", "time_ms", "end_ms", "source", "key")

    def __init__(self, keep: int = 15_000, trim_at: int = 20_000, save_count: int = 5_000):
        self.keep, self.trim_at, self.save_count = keep, trim_at, save_count
        n_features = len(FEATURE_NAMES)
        self._lock = threading.Lock()
        self._X = np.empty((trim_at, n_features), dtype=np.float32)
        self._y = np.empty(trim_at, dtype=np.int8)
        self._ret = np.empty(trim_at, dtype=np.float32)
        self._time_ms = np.empty(trim_at, dtype=np.int64)
        self._end_ms = np.empty(trim_at, dtype=np.int64)
        self._source = np.empty(trim_at, dtype=np.uint8)
        self._key = np.empty(trim_at, dtype=np.uint64)
        self._n = 0
        self.added_total = 0     # records ever accepted (drives RETRAIN_MIN_NEW_SAMPLES)

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated storage (fixed, whatever the fill level)."""
        return sum(getattr(self, "_" + f).nbytes for f in self._FIELDS)

    def add(self, X: np.ndarray, y: np.ndarray, ret: np.ndarray, time_ms: np.ndarray,
            end_ms: np.ndarray, source: str = "history",
            keys: np.ndarray | None = None) -> int:
        """Append records; with `keys`, records already held (same key and source) are
        skipped. Returns how many were accepted."""
        X = np.asarray(X, dtype=np.float32).reshape(-1, len(FEATURE_NAMES))
        m = len(X)
        src = SOURCES.index(source)
        new = {"X": X, "y": np.asarray(y, np.int8).reshape(m),
               "ret": np.asarray(ret, np.float32).reshape(m),
               "time_ms": np.asarray(time_ms, np.int64).reshape(m),
               "end_ms": np.asarray(end_ms, np.int64).reshape(m),
               "source": np.full(m, src, np.uint8)}
        k = (np.zeros(m, np.uint64) if keys is None else np.asarray(keys, np.uint64).reshape(m))
        new["key"] = k | np.uint64(src << 31)
        with self._lock:
            if keys is not None:
                _, first = np.unique(new["key"], return_index=True)
                fresh = np.zeros(m, dtype=bool)
                fresh[first] = True
                fresh &= ~np.isin(new["key"], self._key[: self._n])
                new = {f: a[fresh] for f, a in new.items()}
            count = len(new["y"])
            if self._n + count > self.trim_at:
                self._trim_with(new)
            else:
                for f, a in new.items():
                    getattr(self, "_" + f)[self._n: self._n + count] = a
                self._n += count
            self.added_total += count
        return count

    def add_samples(self, samples: Samples, source: str = "history") -> int:
        return self.add(samples.X, samples.y, samples.ret, samples.time_ms,
                        samples.label_end_ms, source, keys=samples.key)

    def add_trade(self, symbol: str, features: Sequence[float], net_return: float,
                  entry_ms: int, exit_ms: int) -> int:
        """A closed trade of the bot: its entry features and its net outcome (fees included)."""
        return self.add(np.asarray(features, np.float32), [int(net_return > 0)], [net_return],
                        [entry_ms], [exit_ms], "trade", keys=sample_key(symbol, [entry_ms]))

    def _trim_with(self, new: Mapping[str, np.ndarray]) -> None:
        merged = {f: np.concatenate([getattr(self, "_" + f)[: self._n], new[f]])
                  for f in self._FIELDS}
        idx = important_indices(merged["ret"], merged["time_ms"], self.keep, TRIM_EXTREME_FRACTION)
        idx = idx[np.argsort(merged["time_ms"][idx], kind="stable")]
        for f in self._FIELDS:
            getattr(self, "_" + f)[: idx.size] = merged[f][idx]
        self._n = idx.size
        log.info("training data trimmed to %d records (limit %d)", self._n, self.trim_at)

    def snapshot(self) -> TrainingSnapshot:
        """A copy of the records, safe to train on while the bot keeps adding."""
        with self._lock:
            return TrainingSnapshot(*(getattr(self, "_" + f)[: self._n].copy()
                                      for f in TrainingSnapshot._fields))

    def save(self, path: str | os.PathLike) -> int:
        """Write the `save_count` most important records to an .npz (atomic); returns count."""
        with self._lock:
            idx = important_indices(self._ret[: self._n], self._time_ms[: self._n],
                                    self.save_count, SAVE_EXTREME_FRACTION)
            arrays = {f: getattr(self, "_" + f)[idx] for f in self._FIELDS}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, feature_names=np.array(FEATURE_NAMES), **arrays)
        os.replace(tmp, path)
        return idx.size

    def load(self, path: str | os.PathLike) -> int:
        """Add the records of a file written by `save`; a missing, corrupt or incompatible
        file is logged and ignored. Returns how many were loaded."""
        path = Path(path)
        if not path.is_file():
            return 0
        try:
            with np.load(path, allow_pickle=False) as f:
                names = tuple(str(n) for n in f["feature_names"])
                if names != FEATURE_NAMES:
                    log.warning("%s: saved features %s differ from %s; ignoring it",
                                path, names, FEATURE_NAMES)
                    return 0
                a = {fld: f[fld] for fld in self._FIELDS}
            by_source = [(s, a["source"] == i) for i, s in enumerate(SOURCES)]
            keys = a["key"] & ~np.uint64(1 << 31)
            return sum(self.add(a["X"][m], a["y"][m], a["ret"][m], a["time_ms"][m],
                                a["end_ms"][m], s, keys=keys[m]) for s, m in by_source if m.any())
        except Exception as exc:   # a damaged file must never stop the bot
            log.warning("%s: unreadable training data (%s); starting without it", path, exc)
            return 0


# --------------------------------------------------------------------------- model

def make_estimator(kind: str = DEFAULT_MODEL_KIND) -> Any:
    """A fresh, unfitted classifier of a supported kind (imports scikit-learn lazily)."""
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier
        return HistGradientBoostingClassifier(
            learning_rate=0.05, max_iter=200, max_leaf_nodes=15, min_samples_leaf=50,
            l2_regularization=1.0, early_stopping=True, validation_fraction=0.15,
            n_iter_no_change=15, random_state=0)
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    if kind == "forest":
        from sklearn.ensemble import RandomForestClassifier
        return RandomForestClassifier(n_estimators=100, min_samples_leaf=20, n_jobs=1,
                                      random_state=0)
    raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(MODEL_KINDS)}")


def positive_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    """P(label = 1) for each row of X."""
    column = int(np.flatnonzero(np.asarray(estimator.classes_) == 1)[0])
    return estimator.predict_proba(np.asarray(X, dtype=np.float64))[:, column]


def quality(y: np.ndarray, p: np.ndarray, ret: np.ndarray | None,
            threshold: float) -> dict[str, float]:
    """Out-of-sample quality: AUC, base rate, precision and share at the entry threshold."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    y = np.asarray(y)
    picked = p >= threshold
    both = 0 < y.sum() < y.size
    out = {"n": int(y.size), "auc": float(roc_auc_score(y, p)) if both else float("nan"),
           "base_rate": float(y.mean()) if y.size else float("nan"),
           "precision_at_threshold": float(y[picked].mean()) if picked.any() else float("nan"),
           "selected_share": float(picked.mean()) if y.size else float("nan"),
           "selected": int(picked.sum()),
           "brier": float(brier_score_loss(y, p)) if y.size else float("nan")}
    top = p >= np.quantile(p, 0.9) if y.size else picked
    out["top_decile_rate"] = float(y[top].mean()) if top.any() else float("nan")
    if ret is not None:
        out["mean_return_all"] = float(np.mean(ret)) if y.size else float("nan")
        out["mean_return_selected"] = float(np.mean(ret[picked])) if picked.any() else float("nan")
        out["mean_return_top_decile"] = float(np.mean(ret[top])) if top.any() else float("nan")
    return out


def library_versions() -> dict[str, str]:
    import joblib
    import sklearn

    return {"sklearn": sklearn.__version__, "numpy": np.__version__,
            "joblib": joblib.__version__, "python": sys.version.split()[0]}


def train_model(X: np.ndarray, y: np.ndarray, time_ms: np.ndarray, end_ms: np.ndarray,
                ret: np.ndarray | None = None, *, kind: str = DEFAULT_MODEL_KIND,
                min_confidence: float = 0.55, holdout: float = 0.2, trained_at: float | None = None,
                factory: Callable[[], Any] | None = None) -> tuple[Any, dict] | None:
    """Fit a model; quality is measured on the latest `holdout` share (time-ordered, with
    training labels that end after the split purged), then the model is refit on all rows.
    Returns (estimator, metadata), or None when the data cannot train a model."""
    X = np.asarray(X, np.float64)   # float32 storage, float64 arithmetic
    y = np.asarray(y).astype(np.int8)
    time_ms, end_ms = np.asarray(time_ms, np.int64), np.asarray(end_ms, np.int64)
    if len(y) < MIN_TRAIN_SAMPLES or not 0 < y.sum() < len(y):
        log.warning("not enough training data: %d samples, %d positive", len(y), int(y.sum()))
        return None
    factory = factory or (lambda: make_estimator(kind))
    split = np.quantile(time_ms, 1.0 - holdout)
    fit_rows, val_rows = (time_ms < split) & (end_ms <= split), time_ms >= split
    started = time.perf_counter()
    metrics = {"auc": float("nan"), "precision_at_threshold": float("nan"),
               "base_rate": float(y[val_rows].mean()) if val_rows.any() else float("nan")}
    y_fit = y[fit_rows]
    if y_fit.size >= MIN_TRAIN_SAMPLES // 2 and 0 < y_fit.sum() < y_fit.size and val_rows.any():
        check = factory().fit(X[fit_rows], y_fit)
        metrics = quality(y[val_rows], positive_proba(check, X[val_rows]),
                          None if ret is None else np.asarray(ret)[val_rows], min_confidence)
    estimator = factory().fit(X, y)
    meta = {"feature_names": list(FEATURE_NAMES), "kind": kind,
            "trained_at": time.time() if trained_at is None else float(trained_at),
            "samples": int(len(y)), "positive_rate": float(y.mean()),
            "validation_samples": int(val_rows.sum()), "threshold": float(min_confidence),
            "fit_seconds": time.perf_counter() - started, **metrics, **library_versions()}
    return estimator, meta


@dataclass(frozen=True)
class ModelBundle:
    """An immutable (estimator, metadata, version): swapped in with one assignment."""
    estimator: Any
    meta: Mapping[str, Any]
    version: int


class MLModel:
    """The current model and its prediction cache; predictions never wait for training."""

    def __init__(self, cache: PredictionCache | None = None):
        self.cache = cache if cache is not None else PredictionCache()
        self._bundle: ModelBundle | None = None
        self._swap_lock = threading.Lock()   # serialises writers only; readers take no lock

    @property
    def bundle(self) -> ModelBundle | None:
        return self._bundle

    def is_ready(self) -> bool:
        return self._bundle is not None

    def swap(self, estimator: Any, meta: Mapping[str, Any]) -> int:
        """Install a fitted estimator atomically and clear the cache; returns its version."""
        with self._swap_lock:
            version = (self._bundle.version if self._bundle else 0) + 1
            self._bundle = ModelBundle(estimator, MappingProxyType(dict(meta)), version)
            self.cache.clear(version)
        return version

    def predict_detailed(self, X: np.ndarray, keys: Sequence[Sequence[float]] | None = None
                         ) -> tuple[np.ndarray, ModelBundle]:
        """Probabilities and the one bundle that produced all of them (cache included)."""
        bundle = self._bundle
        if bundle is None:
            raise RuntimeError("no model is ready")
        X = np.atleast_2d(np.asarray(X, dtype=np.float32))
        if keys is None:
            return positive_proba(bundle.estimator, X), bundle
        rounded = self.cache.round_keys(keys)
        out = self.cache.get_many(rounded, bundle.version)
        miss = np.flatnonzero(np.isnan(out))
        if miss.size:
            fresh = positive_proba(bundle.estimator, X[miss])
            out[miss] = fresh
            self.cache.put_many([rounded[i] for i in miss], fresh, bundle.version)
        return out, bundle

    def predict_proba(self, X: np.ndarray, keys: Sequence[Sequence[float]] | None = None
                      ) -> np.ndarray:
        """P(entry pays) for each row: cache hits, plus one batched call for the misses."""
        return self.predict_detailed(X, keys)[0]

    def status(self) -> dict[str, Any]:
        bundle = self._bundle
        out: dict[str, Any] = {"ready": bundle is not None, "cache": self.cache.stats()}
        if bundle is not None:
            out.update({k: bundle.meta.get(k) for k in (
                "kind", "trained_at", "samples", "auc", "precision_at_threshold", "base_rate",
                "selected_share", "threshold", "sklearn")})
            out["version"] = bundle.version
        return out


def save_model(data_dir: str | os.PathLike, estimator: Any, meta: Mapping[str, Any]) -> Path:
    """joblib-dump {estimator, meta} to DATA_DIR/model.joblib (+ model.json), atomically."""
    import joblib

    data_dir = Path(data_dir)
    path = data_dir / MODEL_FILE
    tmp = path.with_name(path.name + ".tmp")
    joblib.dump({"estimator": estimator, "meta": dict(meta)}, tmp)
    os.replace(tmp, path)
    meta_tmp = data_dir / (MODEL_META_FILE + ".tmp")
    meta_tmp.write_text(json.dumps(dict(meta), indent=1, default=str))
    os.replace(meta_tmp, data_dir / MODEL_META_FILE)
    return path


def load_model(data_dir: str | os.PathLike) -> tuple[Any, dict] | None:
    """(estimator, meta) from DATA_DIR/model.joblib; None, with a warning, when it is missing,
    outside DATA_DIR, corrupt, or made for other features or another scikit-learn."""
    data_dir = Path(data_dir).resolve()
    path = data_dir / MODEL_FILE
    if not path.is_file():
        return None
    if path.resolve().parent != data_dir:
        log.warning("%s points outside %s; not loading it (a model file is code)", path, data_dir)
        return None
    try:
        import joblib
        import sklearn
        from sklearn.exceptions import InconsistentVersionWarning

        with warnings.catch_warnings():
            warnings.simplefilter("error", InconsistentVersionWarning)
            blob = joblib.load(path)
        estimator, meta = blob["estimator"], dict(blob["meta"])
    except Exception as exc:   # corrupt, truncated, or pickled by another library version
        log.warning("model file %s is unusable (%s: %s); the model will be retrained",
                    path, type(exc).__name__, exc)
        return None
    if tuple(meta.get("feature_names", ())) != FEATURE_NAMES:
        log.warning("model file %s was trained on other features; the model will be retrained",
                    path)
        return None
    if meta.get("sklearn") != sklearn.__version__ or not hasattr(estimator, "predict_proba"):
        log.warning("model file %s was made by scikit-learn %s (running %s); retraining",
                    path, meta.get("sklearn"), sklearn.__version__)
        return None
    return estimator, meta


def saved_model_status(data_dir: str | os.PathLike) -> dict | None:
    """The metadata of the saved model (model.json) without loading the model itself."""
    try:
        return json.loads((Path(data_dir) / MODEL_META_FILE).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- retraining

SamplesProvider = Callable[[], Samples | None]


class Retrainer:
    """Trains in a daemon thread on a snapshot of the training data and swaps the new model
    in atomically; the caller's cycle only ever calls the cheap `maybe_retrain`.

    On start it loads DATA_DIR/model.joblib and the saved training data; with no usable
    model file it trains at once (the bot uses its fallback rule meanwhile). A
    `samples_provider` runs in the training thread, so it must build its samples from a
    copy of the candles (e.g. samples_from_candles on the scanner's snapshot).
    """

    def __init__(self, model: MLModel, data: TrainingData, data_dir: str | os.PathLike,
                 samples_provider: SamplesProvider | None = None, *,
                 retrain_interval: float = 21600.0, min_new_samples: int = 500,
                 min_confidence: float = 0.55, kind: str = DEFAULT_MODEL_KIND,
                 factory: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time, persist: bool = True):
        self.model, self.data, self.data_dir = model, data, Path(data_dir)
        self.samples_provider = samples_provider
        self.retrain_interval, self.min_new_samples = retrain_interval, min_new_samples
        self.min_confidence, self.kind, self.factory = min_confidence, kind, factory
        self.clock, self.persist = clock, persist
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending_provider: SamplesProvider | None = None
        self._last_attempt: float | None = None
        self._seen_total = 0
        self.trainings = 0
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, config: Any, model: MLModel, data: TrainingData,
                    samples_provider: SamplesProvider | None = None,
                    clock: Callable[[], float] = time.time) -> "Retrainer":
        return cls(model, data, config.data_dir, samples_provider,
                   retrain_interval=config.retrain_interval,
                   min_new_samples=config.retrain_min_new_samples,
                   min_confidence=config.ml_min_confidence, clock=clock)

    def start(self, load: bool = True) -> "Retrainer":
        """Start the thread (before any other call); it first loads what DATA_DIR holds and
        trains at once when no usable model was there."""
        if self.persist:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self._idle.clear()
        self._thread = threading.Thread(target=self._run, args=(load,), name="ml-retrainer",
                                        daemon=True)
        self._thread.start()
        return self

    def request_training(self, samples_provider: SamplesProvider | None = None) -> None:
        """Ask for a training as soon as the thread is free; returns at once."""
        with self._lock:
            self._pending_provider = samples_provider or self.samples_provider
            self._idle.clear()
            self._wake.set()

    def maybe_retrain(self, now: float | None = None) -> bool:
        """Cheap per-cycle check: request a training when RETRAIN_INTERVAL (market seconds)
        has passed since the last attempt or RETRAIN_MIN_NEW_SAMPLES records came in."""
        now = self.clock() if now is None else now
        if not self._idle.is_set():
            return False
        interval = (self.retrain_interval if self.model.is_ready()
                    else min(self.retrain_interval, NOT_READY_RETRY))
        due = (self._last_attempt is None
               or now - self._last_attempt >= interval
               or self.data.added_total - self._seen_total >= self.min_new_samples)
        if due:
            self.request_training()
        return due

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no training is pending or running (for tests and `bot.py train`)."""
        return self._idle.wait(timeout)

    @property
    def training(self) -> bool:
        return not self._idle.is_set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the thread (a running fit finishes first) and save the training data."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.persist and len(self.data):
            self.data.save(self.data_dir / TRAINING_FILE)

    def status(self) -> dict[str, Any]:
        return {"training": self.training, "trainings": self.trainings,
                "last_error": self.last_error, "last_attempt": self._last_attempt,
                "new_samples": self.data.added_total - self._seen_total,
                "records": len(self.data)}

    def _run(self, load: bool) -> None:
        if load and self.persist:
            self._load_saved()
        if not self.model.is_ready():
            self.request_training()
        self._set_idle_unless_requested()
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                break
            with self._lock:
                provider, self._pending_provider = self._pending_provider, None
                self._wake.clear()
            try:
                self._train_once(provider)
            except Exception as exc:   # keep the thread (and the bot) alive
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("model training failed")
            self._set_idle_unless_requested()
        self._idle.set()

    def _set_idle_unless_requested(self) -> None:
        with self._lock:
            if not self._wake.is_set():
                self._idle.set()

    def _load_saved(self) -> None:
        loaded = self.data.load(self.data_dir / TRAINING_FILE)
        if loaded:
            log.info("loaded %d training records from %s", loaded, self.data_dir / TRAINING_FILE)
        saved = load_model(self.data_dir)
        if saved is not None:
            version = self.model.swap(*saved)
            self._last_attempt = float(saved[1].get("trained_at", self.clock()))
            self._seen_total = self.data.added_total
            log.info("model v%d loaded from %s (%s, %s samples, AUC %.3f)", version,
                     self.data_dir / MODEL_FILE, saved[1].get("kind"), saved[1].get("samples"),
                     saved[1].get("auc", float("nan")))

    def _train_once(self, provider: SamplesProvider | None) -> None:
        self._last_attempt = self.clock()
        if provider is not None:
            samples = provider()
            if samples is not None:
                self.data.add_samples(samples)
        self._seen_total = self.data.added_total
        snap = self.data.snapshot()
        result = train_model(snap.X, snap.y, snap.time_ms, snap.end_ms, snap.ret, kind=self.kind,
                             min_confidence=self.min_confidence, trained_at=self._last_attempt,
                             factory=self.factory)
        if result is None:
            self.last_error = "not enough training data"
            return
        version = self.model.swap(*result)
        self.trainings += 1
        self.last_error = None
        meta = result[1]
        log.info("model v%d trained (%s) on %d samples in %.2f s; out-of-sample: AUC %.3f, "
                 "precision@%.2f %.3f on %.1f%% of entries, base rate %.3f", version,
                 meta["kind"], meta["samples"], meta["fit_seconds"], meta["auc"],
                 meta["threshold"], meta["precision_at_threshold"],
                 100 * meta.get("selected_share", float("nan")), meta["base_rate"])
        if self.persist:
            save_model(self.data_dir, *result)
            self.data.save(self.data_dir / TRAINING_FILE)


# --------------------------------------------------------------------------- evaluation

def walk_forward(samples_by_pair: Mapping[str, Samples], kinds: Sequence[str], folds: int = 3,
                 first_test: float = 0.4, threshold: float = 0.55) -> dict[str, Any]:
    """Expanding-window evaluation: the last (1 - first_test) of each pair's time is cut into
    `folds` test blocks; each is predicted by models fitted on everything before it (all
    pairs, labels ending before the block purged). Returns pooled metrics per kind."""
    per_pair = []
    for symbol, s in samples_by_pair.items():
        t0, t1 = s.time_ms[0], s.time_ms[-1]
        frac = (s.time_ms - t0) / max(t1 - t0, 1)
        per_pair.append((symbol, s, frac, t0, t1))
    edges = np.linspace(first_test, 1.0, folds + 1)
    preds: dict[str, list] = {k: [] for k in (*kinds, "base_rate")}
    truth, rets, pairs = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        fit_x, fit_y, test = [], [], []
        for symbol, s, frac, t0, t1 in per_pair:
            start_ms = t0 + lo * (t1 - t0)
            fit = s.label_end_ms <= start_ms
            fit_x.append(s.X[fit])
            fit_y.append(s.y[fit])
            rows = (frac >= lo) & ((frac < hi) | (hi == 1.0))
            test.append((symbol, s, rows))
        X_fit, y_fit = np.concatenate(fit_x), np.concatenate(fit_y)
        X_test = np.concatenate([s.X[r] for _, s, r in test])
        truth.append(np.concatenate([s.y[r] for _, s, r in test]))
        rets.append(np.concatenate([s.ret[r] for _, s, r in test]))
        pairs += [sym for sym, s, r in test for _ in range(int(r.sum()))]
        for kind in kinds:
            preds[kind].append(positive_proba(make_estimator(kind).fit(X_fit, y_fit), X_test))
        preds["base_rate"].append(np.full(len(X_test), y_fit.mean()))
    y, ret = np.concatenate(truth), np.concatenate(rets)
    pairs_arr = np.array(pairs)
    result: dict[str, Any] = {"n_test": int(y.size)}
    for kind, chunks in preds.items():
        p = np.concatenate(chunks)
        result[kind] = quality(y, p, ret, threshold)
        result[kind]["per_pair_auc"] = {
            sym: quality(y[pairs_arr == sym], p[pairs_arr == sym], None, threshold)["auc"]
            for sym in samples_by_pair}
        result[kind]["reliability"] = reliability_table(y, p)
    return result


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int = 5) -> list[tuple]:
    """(bin low, bin high, count, mean predicted, observed rate) over quantile bins of p."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    return [(float(edges[b]), float(edges[b + 1]), int((which == b).sum()),
             float(p[which == b].mean()), float(y[which == b].mean()))
            for b in range(len(edges) - 1) if (which == b).any()]


def evaluate_files(paths: Sequence[str | os.PathLike], params: Any = LabelParams(),
                   kinds: Sequence[str] = ("logistic", "hgb"), folds: int = 3,
                   threshold: float = 0.55) -> str:
    """Time-ordered (walk-forward) evaluation of the model on candle CSV files -> report."""
    from candle_files import parse_file_name, read_candles

    by_pair = {}
    for path in map(Path, paths):
        symbol = (parse_file_name(path.name) or (path.stem,))[0]
        by_pair[symbol] = samples_from_candles({symbol: read_candles(path)}, params)
    result = walk_forward(by_pair, kinds, folds=folds, threshold=threshold)
    lines = [f"walk-forward, {folds} expanding folds over the last 60% of each file; "
             f"{result['n_test']} test samples; labels: TP {params.take_profit_atr} ATR, "
             f"SL {params.stop_loss_atr} ATR, {params.max_hold_candles} candles, "
             f"fee {params.fee_rate:.2%}/side",
             f"{'model':10} {'AUC':>6} {'base':>6} {'prec@' + format(threshold, '.2f'):>10} "
             f"{'picked':>7} {'ret_all%':>9} {'ret_pick%':>9} {'top10%':>7} {'ret_top%':>9} "
             f"{'brier':>7}   AUC per pair"]
    for kind in (*kinds, "base_rate"):
        q = result[kind]
        per_pair = ", ".join(f"{s} {a:.3f}" for s, a in q["per_pair_auc"].items())
        lines.append(f"{kind:10} {q['auc']:6.3f} {q['base_rate']:6.3f} "
                     f"{q['precision_at_threshold']:10.3f} {q['selected']:7d} "
                     f"{100 * q['mean_return_all']:9.3f} {100 * q['mean_return_selected']:9.3f} "
                     f"{q['top_decile_rate']:7.3f} {100 * q['mean_return_top_decile']:9.3f} "
                     f"{q['brier']:7.4f}   {per_pair}")
    lines.append(f"reliability of {kinds[0]} (predicted -> observed, by quantile bin):")
    lines += [f"  [{lo:.3f}, {hi:.3f}] n={n:5d}  mean p {mp:.3f}  observed {obs:.3f}"
              for lo, hi, n, mp, obs in result[kinds[0]]["reliability"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ml_model.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="time-ordered evaluation on candle CSV files")
    ev.add_argument("files", nargs="+")
    ev.add_argument("--threshold", type=float, default=0.55)
    ev.add_argument("--folds", type=int, default=3)
    ev.add_argument("--kinds", default="logistic,hgb",
                    help="comma-separated model kinds: " + ", ".join(MODEL_KINDS))
    args = parser.parse_args(argv)
    for f in args.files:
        if not Path(f).is_file():
            parser.exit(2, f"ml_model.py: error: {f} is not a file\n")
    sys.stdout.write(evaluate_files(args.files, kinds=tuple(args.kinds.split(",")),
                                    folds=args.folds, threshold=args.threshold) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Triple-barrier labels and the labelled training samples built from candles.

No look-ahead: the label at candle t uses candles t+1..t+horizon only (the risk manager's
stop, take-profit and time limit, round-trip fees included) and carries the time its
outcome became known (`label_end_ms`), so walk-forward training keeps only labels with
label_end_ms <= now.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from features import FEATURE_NAMES, HISTORY_NEEDED, history_features
from market_rules import TAKER_FEE


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
    exit_price, end = _barrier_exits(high, low, close, atr, close - sl_atr * atr,
                                     close + tp_atr * atr, horizon, opens)
    complete = np.zeros(close.shape, dtype=bool)
    complete[..., : max(close.shape[-1] - horizon, 0)] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        ret = exit_price / close - 1.0 - 2.0 * fee_rate
    ok = complete & np.isfinite(ret)
    label = np.where(ok, (ret > 0).astype(np.float32), np.nan).astype(np.float32)
    return BarrierLabels(label, np.where(ok, end, -1), np.where(ok, ret, np.nan).astype(np.float32))


def _barrier_exits(high: np.ndarray, low: np.ndarray, close: np.ndarray, atr: np.ndarray,
                   stop: np.ndarray, take: np.ndarray, horizon: int,
                   opens: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Exit price of the entry at each t (NaN while undecided) and the index of the candle
    that decided it (-1 while undecided), walking the offsets 1..horizon."""
    n = close.shape[-1]
    exit_price = np.full(close.shape, np.nan)
    end = np.full(close.shape, -1, dtype=np.int64)
    lead = (slice(None),) * (close.ndim - 1)
    for k in range(1, min(horizon, n - 1) + 1):
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
        end[now] = np.where(decided, k + np.arange(n - k), end[now])
    return exit_price, end


@dataclass(frozen=True)
class LabelParams:
    """What labels need; strategy.StrategyParams has the same attribute names."""
    stop_loss_atr: float = 2.0
    take_profit_atr: float = 3.0
    max_hold_candles: int = 48
    timeframe_ms: int | None = None     # None: inferred from the timestamps
    fee_rate: float = TAKER_FEE         # per side; add slippage here if it should count


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
    """The samples of pairs of equal length, candles `arr` (P, T, 6)."""
    ts, o, h, l, c, v = (arr[..., i] for i in range(6))
    X, ind = history_features(o, h, l, c, v)
    fee = getattr(params, "fee_rate", TAKER_FEE)
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

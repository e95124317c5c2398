"""Meta-labels: did the strategy's trade, with its exits, pay after costs?

Every entry signal of the strategy becomes a sample: its features at the signal candle,
and the outcome of the trade taken at the next candle's open and closed by the exit engine
(`exits.signal_outcomes`: the same stops, targets, ROI table, trailing stop and exit
signal as live), net of both fees and an estimate of the slippage. No look-ahead: the
label uses candles after the signal only and carries the time its outcome became known
(`label_end_ms`), so walk-forward training keeps only labels with label_end_ms <= now.
"""
from __future__ import annotations

import zlib
from typing import Mapping, NamedTuple

import numpy as np

from domain import StrategyParams
from exits import outcome_rows, signal_outcomes
from features import FEATURE_NAMES, close_windows, prepare_features
from market_rules import TAKER_FEE
from strategies import Strategy, frame, market_index, signals

SLIPPAGE_ESTIMATE = 0.0005    # per side, the order-book model's typical cost on liquid pairs


class Samples(NamedTuple):
    X: np.ndarray              # float32 (N, F)
    y: np.ndarray              # int8 (N,) {0, 1}: the trade netted > 0
    label_end_ms: np.ndarray   # int64: close time of the candle that decided the label
    time_ms: np.ndarray        # int64: close time of candle t (when the features were known)
    ret: np.ndarray            # float32 net return of the labelled trade
    key: np.ndarray            # uint64 (symbol, candle) identity, for de-duplication


def sample_key(symbol: str, open_ms: np.ndarray) -> np.ndarray:
    """uint64 identity of (symbol, candle open minute)."""
    crc = np.uint64(zlib.crc32(symbol.encode()))
    minutes = (np.asarray(open_ms, dtype=np.int64) // 60_000).astype(np.uint64) & np.uint64(0x7FFFFFFF)
    return (crc << np.uint64(32)) | minutes


def pair_samples(symbol: str, candles: np.ndarray, strategy: Strategy, params: StrategyParams,
                 fee_rate: float = TAKER_FEE, slippage: float = SLIPPAGE_ESTIMATE,
                 columns: Mapping[str, np.ndarray] | None = None, market=None) -> Samples:
    """The labelled signals of one pair's (T, 6) candles, in time order (finished ones only).
    `columns` is `strategies.frame(candles, strategy, market)` when the caller has it
    already; `market` is the `strategies.market_index` of every pair traded."""
    a = np.asarray(candles, dtype=np.float64).reshape(-1, 6)
    if len(a) < 2:
        return empty_samples()
    x = frame(a, strategy, market) if columns is None else columns
    score, exit_signal = signals(strategy, x)
    X = prepare_features(x, close_windows(a[:, 4]))
    signal = np.isfinite(score) & np.isfinite(X).all(axis=1)
    return labelled_signals(symbol, a, signal, exit_signal, X, x["atr"], params, fee_rate,
                            slippage)


def labelled_signals(symbol: str, candles: np.ndarray, signal: np.ndarray,
                     exit_signal: np.ndarray, X: np.ndarray, atr: np.ndarray,
                     params: StrategyParams, fee_rate: float = TAKER_FEE,
                     slippage: float = SLIPPAGE_ESTIMATE) -> Samples:
    """`pair_samples` from what the caller computed already: where the strategy signals
    (with usable features), its exit signal, the feature rows and the ATR of one pair."""
    a = candles
    out = signal_outcomes(params, a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 0].astype(np.int64),
                          atr, signal, 2.0 * fee_rate, exit_signal, slippage)
    rows = outcome_rows(signal, atr)
    done = out.end >= 0
    rows, end, ret = rows[done], out.end[done], out.net_return[done]
    ts = a[:, 0].astype(np.int64)
    tf = params.timeframe_ms
    return Samples(X[rows], (ret > 0).astype(np.int8), ts[end] + tf, ts[rows] + tf,
                   ret.astype(np.float32), sample_key(symbol, ts[rows]))


def samples_from_candles(ohlcv: Mapping[str, np.ndarray], strategy: Strategy,
                         params: StrategyParams, fee_rate: float = TAKER_FEE,
                         slippage: float = SLIPPAGE_ESTIMATE) -> Samples:
    """Symbol -> (T, 6) candles -> every pair's labelled signals, sorted by signal time."""
    market = market_index(ohlcv) if strategy.market_period > 0 else None
    parts = [pair_samples(s, a, strategy, params, fee_rate, slippage, market=market)
             for s, a in ohlcv.items()]
    parts = [p for p in parts if len(p.y)]
    if not parts:
        return empty_samples()
    merged = Samples(*(np.concatenate(cols) for cols in zip(*parts)))
    order = np.argsort(merged.time_ms, kind="stable")
    return Samples(*(col[order] for col in merged))


def empty_samples() -> Samples:
    return Samples(np.empty((0, len(FEATURE_NAMES)), np.float32), np.empty(0, np.int8),
                   np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32),
                   np.empty(0, np.uint64))

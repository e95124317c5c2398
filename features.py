"""The model's feature matrix: indicators and recent closes -> FEATURE_NAMES columns.

No look-ahead: the features at candle t use candles up to t only. Rows whose warm-up is
incomplete are all NaN, and callers drop them.
"""
from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np

from indicators import compute_all

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
    g = {name: np.asarray(ind[name], dtype=np.float64) for name in REQUIRED_INDICATORS}
    out = np.empty(closes.shape[:-1] + (len(FEATURE_NAMES),), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, column in enumerate(_feature_columns(g, closes)):
            out[..., j] = column
        valid = np.isfinite(out).all(axis=-1) & (closes[..., -1] > 0)
    for name in REQUIRED_INDICATORS:      # e.g. a NaN band must not read as position 0.5
        valid &= np.isfinite(g[name])
    out[~valid] = np.nan
    return out


def _feature_columns(g: Mapping[str, np.ndarray], closes: np.ndarray) -> list[np.ndarray]:
    """The FEATURE_NAMES columns, in order, from indicators `g` and closes t-K..t."""
    c = closes[..., -1]
    width = g["bb_upper"] - g["bb_lower"]
    log_returns = np.diff(np.log(closes[..., -(VOLATILITY_WINDOW + 1):]), axis=-1)
    return [
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


def history_features(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                     volume: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(P, T) candles -> features (P, T, F) at every candle, and the indicators."""
    ind = compute_all(open_, high, low, close, volume)
    return prepare_features(ind, close_windows(close)), ind


def feature_key(row: np.ndarray) -> str:
    """A short stable name for one feature row (rounded, so that the streaming and the batch
    indicators give the same name): the decision record keys the model's answers by it."""
    values = np.round(np.asarray(row, dtype=np.float64), 4).astype(np.float32)
    return hashlib.blake2b(values.tobytes(), digest_size=8).hexdigest()

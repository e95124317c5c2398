"""The edge gate: trade a strategy only while its recent out-of-sample expectancy after
costs is positive with confidence.

The evidence is the strategy's own signal trades over the recent candles (the live candle
store's window; the same trailing window in the backtest): every entry signal traded alone
through the exit engine, net of both fees and the slippage estimate (`labels`), counted
only once its outcome was known at the decision time. None of it was fitted to those
candles, so it is out-of-sample for the strategy's fixed parameters. The gate opens when
the one-sided lower confidence bound of the mean net return is above zero:

    mean - z(confidence) * std / sqrt(n) > 0,   with n >= EDGE_MIN_TRADES.

A bot that knows it has no edge sits out; the status line and `status` say why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class EdgeSettings:
    enabled: bool = True
    min_trades: int = 30
    confidence: float = 0.9
    lookback_candles: int = 500     # the window of recent candles the evidence comes from

    @classmethod
    def from_config(cls, config) -> "EdgeSettings":
        return cls(config.edge_gate, config.edge_min_trades, config.edge_confidence,
                   config.candle_history)


@dataclass(frozen=True)
class EdgeVerdict:
    open: bool
    trades: int
    mean: float          # mean net return per signal trade
    lower: float         # its lower confidence bound
    reason: str          # one line for the status line and the skip reasons


def judge(net_returns: np.ndarray, settings: EdgeSettings) -> EdgeVerdict:
    """The gate's verdict on the completed signal trades' net returns."""
    r = np.asarray(net_returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    n = len(r)
    if not settings.enabled:
        return EdgeVerdict(True, n, math.nan, math.nan, "edge gate: off (EDGE_GATE=false)")
    if n < settings.min_trades:
        return EdgeVerdict(False, n, math.nan, math.nan,
                           f"edge gate: {n} of {settings.min_trades} signal trades needed to "
                           "judge the strategy's edge")
    mean = float(r.mean())
    z = NormalDist().inv_cdf(settings.confidence)
    lower = mean - z * float(r.std(ddof=1)) / math.sqrt(n)
    if lower > 0:
        return EdgeVerdict(True, n, mean, lower,
                           f"edge gate: open, {mean:+.3%} per trade after costs over {n} recent "
                           f"signal trades "
                           f"(lower bound {lower:+.3%})")
    return EdgeVerdict(False, n, mean, lower,
                       f"edge gate: sitting out, {mean:+.3%} per trade after costs over {n} "
                       f"recent signal trades is not above zero with {settings.confidence:.0%} "
                       f"confidence (lower bound {lower:+.3%})")


def recent_returns(end_ms: np.ndarray, time_ms: np.ndarray, net_return: np.ndarray,
                   now_ms: int, window_ms: int) -> np.ndarray:
    """The net returns of the signal trades known by `now_ms` (ended at or before it) whose
    signal came within the last `window_ms`."""
    known = (end_ms <= now_ms) & (time_ms > now_ms - window_ms)
    return net_return[known]

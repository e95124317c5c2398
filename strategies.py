"""Strategies: entry signals and scores, optional exit signals, declared parameters.

A strategy is elementwise over a mapping of columns: the standard indicators
(`indicators.INDICATOR_NAMES`), the candle's `open`, `high`, `low`, `close`, `volume`, and
the extra columns its own `indicators` method computes from one pair's candles. The live
bot hands it one value per pair (the latest closed candle of every pair at once); the
backtester hands it every candle of every pair at once. So one object, with no state, runs
live, in the backtest and in optimisation, and what it says at candle t depends on candles
up to t only as long as its `indicators` are causal (`python bot.py lookahead-check NAME`
checks that).

`STRATEGY=name` picks a built-in; `STRATEGY=path/to/file.py:ClassName` loads a user's own
class (a subclass of `Strategy`). Loading a file runs its code, so the bot only ever loads
the file named explicitly in STRATEGY. `STRATEGY_PARAMS` sets parameters:
`name=value,name=value`, or the path of a JSON object file.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from candle_files import timeframe_multiple
from config import ConfigError
from indicators import WARMUP, compute_all, ema

Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Param:
    """A tunable parameter: its default and the range an optimiser may search."""
    name: str
    default: float
    low: float
    high: float
    help: str = ""

    @property
    def integer(self) -> bool:
        return isinstance(self.default, int)

    def check(self, value: float) -> float:
        if self.integer and not float(value).is_integer():
            raise ConfigError(f"STRATEGY_PARAMS: {self.name}={value:g} is not a whole number; "
                              f"give an integer in [{self.low:g}, {self.high:g}]")
        if not (self.low <= value <= self.high):
            raise ConfigError(f"STRATEGY_PARAMS: {self.name}={value:g} is outside "
                              f"[{self.low:g}, {self.high:g}]; pick a value in that range")
        return int(value) if self.integer else float(value)


class Strategy:
    """The interface. Subclasses set the class attributes and override `entry_score`."""
    name = "base"
    family = ""
    description = ""
    timeframe: str | None = None   # the candles it decides on; None: the bot's TIMEFRAME
    warmup = WARMUP                # candles before its first signal can be trusted
    params: tuple[Param, ...] = ()
    market_period = 0              # > 0: it reads `market` and its EMA of this period

    def __init__(self, **values: float) -> None:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"STRATEGY_PARAMS: {self.name} has no parameter "
                              f"{', '.join(unknown)}; it has {', '.join(known) or 'none'}")
        self.values = {n: p.check(values[n]) if n in values else p.default for n, p in known.items()}

    def __getattr__(self, name: str):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def indicators(self, o: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray,
                   v: np.ndarray) -> dict[str, np.ndarray]:
        """Extra columns over one pair's candles (T,), causal: value t from candles <= t."""
        return {}

    def entry_score(self, x: Columns) -> np.ndarray:
        """Per row: a finite score (higher is better) where the strategy would buy, else NaN."""
        raise NotImplementedError

    def exit_signal(self, x: Columns) -> np.ndarray | None:
        """Per row: True where it would sell a held position at the close; None: never."""
        return None

    def describe(self) -> str:
        lines = [f"{self.name} ({self.family}, timeframe {self.timeframe or 'TIMEFRAME'}, "
                 f"warm-up {self.warmup} candles): {self.description}"]
        lines += [f"    {p.name} = {self.values[p.name]:g}  [{p.low:g} .. {p.high:g}]  {p.help}"
                  for p in self.params]
        return "\n".join(lines)


def _where(ok: np.ndarray, score: np.ndarray) -> np.ndarray:
    return np.where(ok & np.isfinite(score), score, np.nan)


class TrendMomentum(Strategy):
    name = "trend_momentum"
    family = "trend-following"
    description = ("buys an uptrend (EMA12 > EMA26, close above EMA50, MACD histogram > 0) "
                   "that is not overbought and trades at least average volume; ranks by "
                   "10-candle momentum in ATRs")
    params = (Param("rsi_overbought", 70.0, 50.0, 90.0, "no entry at or above this RSI"),
              Param("min_volume_ratio", 1.0, 0.0, 5.0, "volume / its 20-candle average"))

    def entry_score(self, x: Columns) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = ((x["ema_fast"] > x["ema_slow"]) & (x["close"] > x["ema_trend"])
                  & (x["macd_hist"] > 0) & (x["rsi"] < self.rsi_overbought)
                  & (x["volume_ratio"] >= self.min_volume_ratio) & (x["atr"] > 0))
            return _where(ok, x["momentum"] / x["atr"])


class MeanReversion(Strategy):
    name = "mean_reversion"
    family = "mean-reversion"
    description = ("buys a close below the lower Bollinger band with RSI oversold while the "
                   "long trend (EMA200) is up; sells back at the middle band")
    warmup = 200
    params = (Param("rsi_oversold", 30.0, 5.0, 50.0, "buy below this RSI(14)"),
              Param("trend_period", 200, 20, 400, "EMA period of the trend filter"))

    def indicators(self, o, h, l, c, v):
        return {"ema_long": ema(c, int(self.trend_period))}

    def entry_score(self, x: Columns) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = ((x["close"] < x["bb_lower"]) & (x["rsi"] < self.rsi_oversold)
                  & (x["close"] > x["ema_long"]) & (x["atr"] > 0))
            return _where(ok, (x["bb_middle"] - x["close"]) / x["atr"])

    def exit_signal(self, x: Columns) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return x["close"] >= x["bb_middle"]


def rolling_max(a: np.ndarray, n: int) -> np.ndarray:
    """Max of the n values before each t (t excluded), NaN while fewer exist."""
    out = np.full(a.shape, np.nan)
    if len(a) > n:
        out[n:] = sliding_window_view(a[:-1], n).max(axis=-1)
    return out


def rolling_min(a: np.ndarray, n: int) -> np.ndarray:
    return -rolling_max(-a, n)


class Breakout(Strategy):
    name = "breakout"
    family = "breakout"
    description = ("buys a close above the highest high of the last N candles on above-"
                   "average volume, in an uptrend (close above EMA50); sells on a close below "
                   "the lowest low of the last N/2")
    params = (Param("channel", 48, 10, 200, "candles of the breakout channel"),
              Param("min_volume_ratio", 1.5, 0.0, 5.0, "volume / its 20-candle average"))

    def indicators(self, o, h, l, c, v):
        n = int(self.channel)
        return {"channel_high": rolling_max(h, n), "channel_low": rolling_min(l, max(2, n // 2))}

    def entry_score(self, x: Columns) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = ((x["close"] > x["channel_high"]) & (x["close"] > x["ema_trend"])
                  & (x["volume_ratio"] >= self.min_volume_ratio) & (x["atr"] > 0))
            return _where(ok, (x["close"] - x["channel_high"]) / x["atr"] + x["volume_ratio"])

    def exit_signal(self, x: Columns) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return x["close"] < x["channel_low"]


class EmaCross(Strategy):
    name = "ema_cross"
    family = "trend-following"
    description = ("on 4h candles: buys when EMA20 crosses above EMA50 while the close is above "
                   "EMA200 and the market (the equal-weight index of the pairs traded) is above "
                   "its own EMA200; sells when EMA20 falls below EMA50. Meant for wide exits: a "
                   "4-ATR stop, no take-profit, the exit signal, up to 240 candles")
    timeframe = "4h"
    warmup = 200
    market_period = 200
    params = (Param("fast", 20, 5, 100, "EMA period that crosses"),
              Param("slow", 50, 10, 300, "EMA period it crosses"),
              Param("trend", 200, 50, 400, "EMA period the close must be above (the trend)"))

    def indicators(self, o, h, l, c, v):
        fast, slow = ema(c, int(self.fast)), ema(c, int(self.slow))
        above = fast > slow
        crossed = above & ~np.concatenate([[True], above[:-1]])   # below or equal the candle before
        return {"ema_cross_fast": fast, "ema_cross_slow": slow,
                "ema_cross_up": crossed.astype(np.float64), "ema_long": ema(c, int(self.trend))}

    def entry_score(self, x: Columns) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = ((x["ema_cross_up"] > 0) & (x["close"] > x["ema_long"])
                  & (x["market"] > x["market_ema"]) & (x["atr"] > 0))
            return _where(ok, (x["ema_cross_fast"] - x["ema_cross_slow"]) / x["atr"])

    def exit_signal(self, x: Columns) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return x["ema_cross_fast"] < x["ema_cross_slow"]


BUILTINS: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (EmaCross, TrendMomentum, MeanReversion, Breakout)}
DEFAULT_STRATEGY = "ema_cross"


def market_index(candles: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The equal-weight market index of these pairs: (open times, cumulative mean over the
    pairs trading at each time of their one-candle log returns, each clipped to +-0.5).
    Causal: its value at t uses candles up to t only."""
    parts = []
    for a in candles.values():
        a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
        if len(a) > 1:
            parts.append((a[1:, 0], np.clip(np.diff(np.log(a[:, 4])), -0.5, 0.5)))
    if not parts:
        return np.empty(0, np.int64), np.empty(0)
    ts = np.concatenate([p[0] for p in parts])
    ret = np.concatenate([p[1] for p in parts])
    grid, where = np.unique(ts.astype(np.int64), return_inverse=True)
    sums = np.bincount(where, weights=ret, minlength=len(grid))
    counts = np.bincount(where, minlength=len(grid))
    return grid, np.cumsum(sums / counts)


def market_at(ts: np.ndarray, market: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The index at each of a pair's candle open times (the last value at or before it)."""
    grid, index = market
    i = np.searchsorted(grid, np.asarray(ts, dtype=np.int64), side="right") - 1
    return np.where(i >= 0, index[np.maximum(i, 0)] if len(index) else np.nan, 0.0)


def parse_params(text: str) -> dict[str, float]:
    """STRATEGY_PARAMS: 'a=1,b=2.5', or a path to a JSON object of numbers."""
    text = text.strip()
    if not text:
        return {}
    if "=" not in text:
        path = Path(text).expanduser()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"STRATEGY_PARAMS: cannot read {path} as JSON ({exc}); give "
                              "name=value pairs or a JSON file of them") from None
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            data = data["params"]        # a hyperopt result file
        if not isinstance(data, dict):
            raise ConfigError(f"STRATEGY_PARAMS: {path} is not a JSON object of name: value")
        items = data.items()
    else:
        items = [part.split("=", 1) for part in text.split(",") if part.strip()]
        bad = [p[0].strip() for p in items if len(p) != 2]
        if bad:
            raise ConfigError(f"STRATEGY_PARAMS: {bad[0]!r} is not name=value; write e.g. "
                              "rsi_oversold=25,trend_period=150")
    out = {}
    for name, value in items:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"STRATEGY_PARAMS: {str(name).strip()}={value!r} is not a finite "
                              "number; write name=value, e.g. rsi_oversold=25")
        out[str(name).strip()] = number
    return out


def strategy_class(spec: str) -> type[Strategy]:
    """A built-in by name, or `path/to/file.py:ClassName` (runs that file's code)."""
    spec = spec.strip()
    if spec in BUILTINS:
        return BUILTINS[spec]
    path, sep, class_name = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise ConfigError(f"STRATEGY={spec!r} is neither a built-in ({', '.join(BUILTINS)}) nor "
                          "path/to/file.py:ClassName")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"STRATEGY: no file {file}; give the path of your strategy file")
    module_name = f"user_strategy_{file.stem}_{zlib.crc32(str(file.resolve()).encode()):08x}"
    loader = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module
    try:
        loader.loader.exec_module(module)
    except (Exception, SystemExit) as exc:   # noqa: BLE001 - a user's file can raise anything
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(f"STRATEGY: {file} failed to load: {why}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"STRATEGY: {file} has no Strategy subclass named {class_name}")
    return cls


def load_strategy(spec: str = DEFAULT_STRATEGY, params: str | Mapping[str, float] = "") -> Strategy:
    values = parse_params(params) if isinstance(params, str) else dict(params)
    return strategy_class(spec)(**values)


def from_config(config) -> Strategy:
    return load_strategy(config.strategy, config.strategy_params)


def decision_timeframe(strategy: Strategy, candles_timeframe: str) -> str:
    """The timeframe decisions are made on: the strategy's own when it declares one longer
    than the candles at hand (they are then built from the shorter ones), else the candles'."""
    if strategy.timeframe is None or strategy.timeframe == candles_timeframe:
        return candles_timeframe
    try:
        timeframe_multiple(candles_timeframe, strategy.timeframe)
    except ValueError:
        raise ConfigError(f"STRATEGY {strategy.name} decides on {strategy.timeframe} candles, "
                          f"which cannot be built from {candles_timeframe} ones; set TIMEFRAME "
                          f"(or --timeframe) to {strategy.timeframe} or a shorter timeframe "
                          "that divides it") from None
    return strategy.timeframe


def frame(candles: np.ndarray, strategy: Strategy,
          market: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Everything a strategy reads about one pair's (T, 6) candles [ts, o, h, l, c, v], per
    candle: the standard indicators, the candle itself, the strategy's own columns and, for
    a strategy with a `market_period`, the market index (`market_index` of every pair
    traded; without one, the pair's own) and its EMA."""
    a = np.asarray(candles, dtype=np.float64).reshape(-1, 6)
    o, h, l, c, v = (a[:, k] for k in range(1, 6))
    out = compute_all(o, h, l, c, v)
    out.update(open=o, high=h, low=l, close=c, volume=v)
    out.update(own_columns(a, strategy, market))
    return out


def own_columns(candles: np.ndarray, strategy: Strategy,
                market: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The columns a strategy adds to the standard ones over one pair's (T, 6) candles: its
    `indicators` and, with a `market_period`, `market` and `market_ema`."""
    a = candles
    out = strategy.indicators(*(a[:, k] for k in range(1, 6)))
    if strategy.market_period > 0:
        index = market_at(a[:, 0], market if market is not None else market_index({"": a}))
        out.update(market=index, market_ema=ema(index, strategy.market_period))
    return out


def signals(strategy: Strategy, x: Columns) -> tuple[np.ndarray, np.ndarray]:
    """(entry score with NaN for no, exit signal as bool) over the rows of `x`."""
    score = np.asarray(strategy.entry_score(x), dtype=np.float64)
    exit_ = strategy.exit_signal(x)
    exit_ = np.zeros(score.shape, dtype=bool) if exit_ is None else np.asarray(exit_, dtype=bool)
    return score, exit_


def listing(active: Strategy | None = None) -> str:
    """`python bot.py strategies`: every built-in with its parameters."""
    blocks = []
    for name, cls in BUILTINS.items():
        s = active if active is not None and active.name == name else cls()
        blocks.append(s.describe())
    return "\n\n".join(blocks)

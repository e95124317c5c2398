"""The simulated crypto market: its price model, its clock and its market data.

N pairs quoted in USDT on a 1-minute base grid, generated lazily one UTC day at a time
(vectorised across pairs). Log returns are a mix of a common market factor, a group factor
(majors, layer1, defi, memes, ai/gaming) and an idiosyncratic part; each component has
GARCH(1,1) variance with Student-t shocks and rare jumps. Volume rises with volatility.
Every Binance interval from 1m to 1d is aggregated from the 1m grid, so the intervals agree
with one another. Deterministic for a (seed, start_ms).

`SimMarket` answers in Binance's formats (klines rows, 24h tickers, exchangeInfo entries,
`BinanceError` codes) on the market clock, ``speed`` times the wall clock; `sim_exchange`
serves it over HTTP. `simulated_ohlcv` gives the same candles without a clock or a server.
"""
from __future__ import annotations

import functools
import json
import math
import random
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable

import numpy as np

from market_rules import step_size, tick_size

MINUTE_MS = 60_000
DAY_MINUTES = 1440
INTERVAL_MINUTES: dict[str, int] = {
    "1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
    "6h": 360, "8h": 480, "12h": 720, "1d": 1440,
}
MAX_HISTORY_MINUTES = 30 * DAY_MINUTES  # 1m history kept behind the clock (~30 days)
# The bot's own simulator starts with 29 days of history, so a 4h strategy (the default)
# has 174 candles to start from.
BOT_HISTORY_MINUTES = 29 * DAY_MINUTES
_SIM_EPOCH_MS = 1_704_067_200_000       # 2024-01-01T00:00Z: origin of simulated_ohlcv

# (base, price level, group, annualised volatility, 24h quote volume in millions)
_CATALOG: tuple[tuple[str, float, str, float, float], ...] = (
    ("BTC", 60000.0, "majors", 0.50, 1500), ("ETH", 3000.0, "majors", 0.65, 800),
    ("SOL", 150.0, "majors", 0.85, 400), ("BNB", 550.0, "majors", 0.55, 120),
    ("XRP", 0.55, "majors", 0.75, 200), ("DOGE", 0.15, "memes", 1.20, 450),
    ("ADA", 0.45, "layer1", 0.85, 60), ("AVAX", 30.0, "layer1", 0.95, 55),
    ("LINK", 15.0, "defi", 0.90, 45), ("DOT", 6.5, "layer1", 0.85, 30),
    ("PEPE", 0.000012, "memes", 1.50, 300), ("SHIB", 0.000024, "memes", 1.30, 120),
    ("TRX", 0.12, "layer1", 0.50, 25), ("LTC", 80.0, "layer1", 0.70, 30),
    ("BCH", 400.0, "layer1", 0.75, 25), ("NEAR", 5.0, "layer1", 1.00, 40),
    ("UNI", 8.0, "defi", 0.95, 25), ("AAVE", 100.0, "defi", 1.00, 30),
    ("WIF", 2.5, "memes", 1.60, 150), ("FET", 1.5, "ai", 1.10, 60),
    ("ARB", 0.9, "layer1", 1.00, 35), ("OP", 2.0, "layer1", 1.00, 30),
    ("APT", 9.0, "layer1", 1.00, 25), ("SUI", 1.5, "layer1", 1.10, 50),
    ("INJ", 25.0, "defi", 1.10, 25), ("ATOM", 8.0, "layer1", 0.85, 20),
    ("FIL", 5.0, "layer1", 0.95, 20), ("ETC", 25.0, "layer1", 0.80, 20),
    ("RENDER", 7.0, "ai", 1.10, 30), ("FLOKI", 0.00015, "memes", 1.40, 40),
    ("BONK", 0.000025, "memes", 1.50, 50), ("MKR", 2500.0, "defi", 0.95, 10),
    ("LDO", 2.0, "defi", 1.05, 15), ("CRV", 0.4, "defi", 1.10, 15),
    ("GRT", 0.2, "ai", 1.00, 12), ("SAND", 0.4, "ai", 1.00, 12),
    ("MANA", 0.4, "ai", 1.00, 10), ("AXS", 6.0, "ai", 1.00, 10),
    ("GALA", 0.03, "ai", 1.10, 15), ("IMX", 1.6, "ai", 1.05, 10),
    ("APE", 1.2, "memes", 1.20, 15), ("PENDLE", 4.0, "defi", 1.20, 20),
    ("DYDX", 1.8, "defi", 1.10, 12), ("SNX", 2.5, "defi", 1.05, 8),
    ("COMP", 55.0, "defi", 0.95, 8), ("RUNE", 5.0, "defi", 1.15, 20),
    ("XLM", 0.1, "layer1", 0.70, 10), ("HBAR", 0.08, "layer1", 0.85, 12),
    ("ALGO", 0.15, "layer1", 0.85, 8), ("ICP", 10.0, "layer1", 1.00, 15),
    ("CAKE", 2.5, "defi", 0.95, 8), ("JUP", 0.9, "defi", 1.15, 15),
    ("SUSHI", 1.0, "defi", 1.10, 6), ("1INCH", 0.35, "defi", 1.00, 5),
    ("CHZ", 0.08, "ai", 0.95, 8), ("EGLD", 35.0, "layer1", 0.90, 5),
    ("VET", 0.03, "layer1", 0.85, 8), ("SEI", 0.4, "layer1", 1.15, 15),
    ("TIA", 7.0, "layer1", 1.20, 20), ("STRK", 0.6, "layer1", 1.15, 10),
    ("GMX", 30.0, "defi", 1.00, 4), ("ORDI", 35.0, "memes", 1.40, 25),
    ("MEME", 0.015, "memes", 1.40, 8), ("TON", 6.0, "layer1", 0.80, 20),
)
# (loading on the market factor, loading on the group factor); the rest is idiosyncratic
_GROUP_LOADINGS = {"majors": (0.80, 0.35), "layer1": (0.68, 0.45), "defi": (0.62, 0.50),
                   "memes": (0.50, 0.60), "ai": (0.60, 0.50), "alts": (0.58, 0.40)}
_T_DF = 4.0                          # Student-t degrees of freedom of the shocks
_GARCH_ALPHA, _GARCH_BETA = 0.05, 0.945
_H_MAX = 25.0                        # cap on a component's variance (long-run mean 1)
_JUMP_RATE = {"market": 1 / (3 * DAY_MINUTES), "group": 1 / (4 * DAY_MINUTES),
              "idio": 1 / (2 * DAY_MINUTES)}      # jumps per minute
_JUMP_SD = {"market": 8.0, "group": 8.0, "idio": 10.0}  # in units of the shock's sd
_MEAN_REVERSION = math.log(2) / (60 * DAY_MINUTES)    # weak pull of log price to its level
_MAX_TICKS = 2_000_000_000                            # prices are stored as int32 tick counts
_KLINE_JSON_ROW = '[%d,"%.8f","%.8f","%.8f","%.8f","%.8f",%d,"%.8f",%d,"%.8f","%.8f","0"]'


class BinanceError(Exception):
    """An error answered in Binance's format: {"code": code, "msg": msg}."""

    def __init__(self, code: int, msg: str, status: int = 400):
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.status = code, msg, status


def f8(x: float | Decimal) -> str:
    """A decimal as Binance writes it: a string with 8 places."""
    return f"{x:.8f}"


# ----------------------------------------------------------------------------- pairs

@dataclass(frozen=True)
class PairSpec:
    """Static description of one simulated market."""
    base: str
    quote: str
    price: float            # price level at the start of generation
    group: str
    ann_vol: float
    daily_quote_volume: float
    tick: float
    step: float
    max_qty: float
    max_price: float
    min_notional: float = 5.0

    @property
    def id(self) -> str:
        return self.base + self.quote

    @property
    def symbol(self) -> str:
        return f"{self.base}/{self.quote}"


def _synthetic_names(count: int, taken: set[str]) -> list[str]:
    """`count` invented coin names not in `taken` (which gains them)."""
    rng = random.Random(12345)   # seed-independent: the same pair count gives the same names
    cons, vows = "BCDFGKLMNPRSTVXZ", "AEIOU"
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(2))[: rng.choice((3, 4))]
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def build_pairs(pairs: int, quote: str = "USDT") -> list[PairSpec]:
    """The first `pairs` markets: the catalog of well-known coins, then invented ones."""
    rows = list(_CATALOG[:pairs])
    if pairs > len(rows):
        rng = random.Random(54321)
        for name in _synthetic_names(pairs - len(rows), {r[0] for r in _CATALOG}):
            price = float(f"{10 ** rng.uniform(-3, 2):.3g}")
            rows.append((name, price, "alts", rng.uniform(0.9, 1.5), rng.uniform(1, 10)))
    return [PairSpec(base=base, quote=quote, price=price, group=group, ann_vol=vol,
                     daily_quote_volume=qv * 1e6, tick=tick_size(price), step=step_size(price),
                     max_qty=10.0 ** math.ceil(math.log10(1e8 / price)),
                     max_price=10.0 ** math.ceil(math.log10(price * 1000)))
            for base, price, group, vol, qv in rows]


# ----------------------------------------------------------------------------- model

@dataclass
class _Block:
    """One UTC day of 1m rows for all pairs: prices in ticks (int64), volume in base units."""
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


def _loadings(specs: list[PairSpec], groups: list[str], rng: np.random.Generator) -> np.ndarray:
    """(components, pairs) loadings: market factor, one factor per group, one per pair."""
    G, P = len(groups), len(specs)
    W = np.zeros((1 + G + P, P))
    for i, s in enumerate(specs):
        a, b = _GROUP_LOADINGS[s.group]
        a = a + rng.uniform(-0.05, 0.05)
        W[0, i], W[1 + groups.index(s.group), i] = a, b
        W[1 + G + i, i] = math.sqrt(max(0.05, 1 - a * a - b * b))
    return W


class _PriceModel:
    """Generates consecutive one-day blocks; block b depends only on (seed, b) and the state."""

    def __init__(self, specs: list[PairSpec], seed: int):
        self.seed = seed
        groups = sorted({s.group for s in specs})
        rng = np.random.default_rng([seed, 1_000_000_007])
        self.W = _loadings(specs, groups, rng)
        self.W2 = self.W * self.W
        self.K = len(self.W)
        kinds = ["market"] + ["group"] * len(groups) + ["idio"] * len(specs)
        self.jump_rate = np.array([_JUMP_RATE[k] for k in kinds])
        self.jump_sd = np.array([_JUMP_SD[k] for k in kinds])
        self.sigma = np.array([s.ann_vol for s in specs]) / math.sqrt(365 * DAY_MINUTES)
        self.tick = np.array([s.tick for s in specs])
        self.step = np.array([s.step for s in specs])
        self.qv_minute = np.array([s.daily_quote_volume for s in specs]) / DAY_MINUTES
        levels = np.array([s.price for s in specs]) * np.exp(rng.normal(0, 0.05, len(specs)))
        self.anchor = np.log(levels)
        self.lp = self.anchor.copy()
        self.h = np.exp(rng.normal(0, 0.3, self.K))
        self.last_close = np.maximum(1, np.rint(levels / self.tick)).astype(np.int64)
        self.block = 0
        mod = np.arange(DAY_MINUTES)
        self.season = 1 + 0.25 * np.cos(2 * np.pi * (mod - 15 * 60) / DAY_MINUTES)

    def next_block(self) -> _Block:
        rng = np.random.default_rng([self.seed, self.block])
        z = self._shocks(rng)
        hs = self._variances(z)
        unit = (np.sqrt(hs) * z) @ self.W            # (B, P) unit-variance mixed shocks
        inst = np.sqrt(hs @ self.W2)                 # instantaneous sd of those shocks
        sig = self.sigma * self.season[:, None]
        open_, close = self._opens_closes(unit * sig)
        high, low = _wicks(rng, open_, close, 0.5 * sig * inst)
        volume = self._volume(rng, unit, inst, close)
        self.block += 1
        return _Block(open_.T.astype(np.int64), high.T.astype(np.int64), low.T.astype(np.int64),
                      close.T.copy(), volume.T.copy())

    def _shocks(self, rng: np.random.Generator) -> np.ndarray:
        """(minutes, components) Student-t shocks of unit variance, with rare jumps."""
        shape = (DAY_MINUTES, self.K)
        z = rng.standard_t(_T_DF, size=shape) / math.sqrt(_T_DF / (_T_DF - 2))
        jumps = rng.random(shape) < self.jump_rate
        z += jumps * rng.normal(0.0, 1.0, shape) * self.jump_sd
        return z

    def _variances(self, z: np.ndarray) -> np.ndarray:
        """GARCH(1,1) variance of every component at every minute; carries the state over."""
        # h' = omega + alpha e^2 + beta h with e = sqrt(h) z, i.e. h' = omega + A h
        A = _GARCH_ALPHA * z * z + _GARCH_BETA
        omega = 1.0 - _GARCH_ALPHA - _GARCH_BETA
        hs = np.empty((len(z) + 1, self.K))
        hs[0] = self.h
        for t in range(len(z)):                      # loop over time, vectorised over components
            np.minimum(omega + A[t] * hs[t], _H_MAX, out=hs[t + 1])
        self.h = hs[-1].copy()
        return hs[:-1]

    def _opens_closes(self, moves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(opens, closes) in ticks of the minutes whose log-price moves are `moves`."""
        drift = -_MEAN_REVERSION * (self.lp - self.anchor)
        lp = self.lp + np.cumsum(moves + drift, axis=0)
        self.lp = lp[-1]
        close = np.clip(np.rint(np.exp(lp) / self.tick), 1, _MAX_TICKS).astype(np.int64)
        open_ = np.vstack([self.last_close[None, :], close[:-1]])
        self.last_close = close[-1]
        return open_, close

    def _volume(self, rng: np.random.Generator, unit: np.ndarray, inst: np.ndarray,
                close: np.ndarray) -> np.ndarray:
        """Base volume per minute on the step grid, rising with volatility and the season."""
        activity = inst ** 1.5 * (0.55 + 0.45 * np.abs(unit)) / 0.87
        noise = np.exp(rng.normal(-0.06, 0.35, close.shape))
        quote_vol = self.qv_minute * self.season[:, None] * activity * noise
        return np.rint(quote_vol / (close * self.tick) / self.step) * self.step


def _wicks(rng: np.random.Generator, open_: np.ndarray, close: np.ndarray,
           wick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(highs, lows) in ticks: random wicks of scale `wick` beyond the candle bodies."""
    top, bottom = np.maximum(open_, close), np.minimum(open_, close)
    high = np.maximum(top, np.minimum(_MAX_TICKS, np.rint(
        top * np.exp(np.abs(rng.standard_normal(close.shape)) * wick))))
    low = np.minimum(bottom, np.rint(bottom * np.exp(-np.abs(rng.standard_normal(close.shape)) * wick)))
    return high, np.maximum(low, 1)


def _aggregate(o, h, l, c, v, k: int):
    """Aggregate rows (last axis) into groups of k: first open, max, min, last close, sum."""
    n = o.shape[-1]
    starts = np.arange(0, n, k)
    ends = np.minimum(starts + k, n) - 1
    return (o[..., starts], np.maximum.reduceat(h, starts, axis=-1),
            np.minimum.reduceat(l, starts, axis=-1), c[..., ends],
            np.add.reduceat(v, starts, axis=-1))


def simulated_ohlcv(pairs: int, seed: int, timeframe: str, candles: int,
                    quote: str = "USDT") -> dict[str, np.ndarray]:
    """Closed candles of the simulated market, generated without a server.

    Returns symbol -> (candles, 6) float64 array of ts_ms, open, high, low, close, volume,
    the last candle closing at a fixed origin; identical for identical arguments.
    """
    if timeframe not in INTERVAL_MINUTES:
        raise ValueError(f"timeframe {timeframe!r} not one of {', '.join(INTERVAL_MINUTES)}")
    if candles < 1:
        raise ValueError("candles must be >= 1")
    k = INTERVAL_MINUTES[timeframe]
    specs = build_pairs(pairs, quote)
    model = _PriceModel(specs, seed)
    blocks = math.ceil(candles * k / DAY_MINUTES)
    parts = []
    for _ in range(blocks):
        b = model.next_block()
        parts.append(np.stack(_aggregate(b.open, b.high, b.low, b.close, b.volume, k), axis=-1))
    agg = np.concatenate(parts, axis=1)[:, -candles:].astype(np.float64)   # (P, T, 5)
    agg[..., :4] *= model.tick[:, None, None]
    t0 = _SIM_EPOCH_MS - blocks * DAY_MINUTES * MINUTE_MS
    ts = t0 + (np.arange(agg.shape[1]) + (blocks * DAY_MINUTES // k - agg.shape[1])) * k * MINUTE_MS
    out = {}
    for i, s in enumerate(specs):
        arr = np.empty((agg.shape[1], 6))
        arr[:, 0] = ts
        arr[:, 1:] = agg[i]
        out[s.symbol] = arr
    return out


# ----------------------------------------------------------------------------- book

def synthetic_order_book(mid: float, volatility: float, quote_volume: float, tick: float,
                         step: float, levels: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """The simulated book around `mid`: (bids, asks), each (n, 2) of [price, qty].

    volatility: standard deviation of 1-minute log returns; quote_volume: 24h volume in the
    quote currency. Spread and level spacing grow with volatility, depth with volume.
    Prices are on the tick grid, quantities on the step grid; bids stop above zero.
    """
    vol = max(float(volatility), 1e-6)
    mid_t = mid / tick
    half = max(0.5, mid_t * 0.05 * vol)
    best_bid = math.floor(mid_t - half + 1e-9)
    best_ask = max(math.ceil(mid_t + half - 1e-9), best_bid + 1)
    gap = max(1, round(mid_t * 0.2 * vol))
    k, shape = _book_shape(levels)
    level_quote = max(quote_volume, 1.0) / DAY_MINUTES * 0.08 * shape
    sides = []
    for ticks in (best_bid - k * gap, best_ask + k * gap):
        ticks = ticks[ticks >= 1]
        price = ticks * tick
        qty = np.maximum(1, np.floor(level_quote[: len(ticks)] / price / step)) * step
        sides.append(np.column_stack([price, qty]))
    return sides[0], sides[1]


@functools.lru_cache(maxsize=8)
def _book_shape(levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The level indices and how depth grows along them (the same for every book)."""
    k = np.arange(levels)
    k.flags.writeable = False
    shape = (1 + 0.15 * k) * (1 + 0.5 * np.sin(2.3 * k + 1.0) ** 2)
    shape.flags.writeable = False
    return k, shape


def _thin(side: np.ndarray, depth: float, step: float) -> np.ndarray:
    """Book levels [price, qty] with quantities scaled by `depth`, down to the step grid
    (never below one step); the levels themselves when depth is 1."""
    if depth == 1.0:
        return side
    out = side.copy()
    out[:, 1] = np.maximum(1, np.floor(side[:, 1] * depth / step + 1e-9)) * step
    return out


# ----------------------------------------------------------------------------- market

def _check_kline_args(interval: str, start_ms: int | None, end_ms: int | None,
                      limit: int) -> None:
    if interval not in INTERVAL_MINUTES:
        raise BinanceError(-1120, "Invalid interval.")
    if not 1 <= limit <= 1000:
        raise BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise BinanceError(-1023, "Start time is greater than end time.")


class SimMarket:
    """The simulated market: lazily generated 1m grid, its clock, candles, tickers, books."""

    def __init__(self, pairs: int = 50, seed: int = 1, speed: float = 60.0,
                 quote: str = "USDT", history_minutes: int = 7 * DAY_MINUTES,
                 start_ms: int | None = None):
        if pairs < 1:
            raise ValueError("pairs must be >= 1")
        if speed < 0:
            raise ValueError("speed must be >= 0")
        if history_minutes < 1000 * 5 + 5:
            raise ValueError("history_minutes must give at least 1000 closed 5m candles (>= 5005)")
        self.speed = float(speed)
        self.specs = build_pairs(pairs, quote)
        self.symbols = [s.symbol for s in self.specs]
        self.ids = [s.id for s in self.specs]
        self._index = {s.id: i for i, s in enumerate(self.specs)}
        if start_ms is None:
            start_ms = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
        self._start_ms = int(start_ms)
        self._mono0 = time.monotonic()
        self._offset_ms = 0.0
        first = self._start_ms - history_minutes * MINUTE_MS
        self.t0 = first - first % (DAY_MINUTES * MINUTE_MS)     # grid origin: a UTC midnight
        self._model = _PriceModel(self.specs, seed)
        self._tick, self._step, self._sigma = self._model.tick, self._model.step, self._model.sigma
        self._allocate(max(MAX_HISTORY_MINUTES, (self._start_ms - self.t0) // MINUTE_MS))
        self._lock = threading.RLock()
        with self._lock:
            self._ensure(self._minute(self.now_ms()))

    # -- clock
    def now_ms(self) -> int:
        """Market clock in ms since the epoch (speed times the wall clock since creation)."""
        elapsed = (time.monotonic() - self._mono0) * 1000.0 * self.speed
        return int(self._start_ms + elapsed + self._offset_ms)

    def now(self) -> float:
        """Market clock in seconds (usable as a `clock`)."""
        return self.now_ms() / 1000.0

    def advance(self, seconds: float) -> None:
        """Move the market clock forward by `seconds` of market time (tests, demos)."""
        if seconds < 0:
            raise ValueError("the market clock only moves forward")
        with self._lock:
            self._offset_ms += seconds * 1000.0

    # -- storage
    def _allocate(self, keep: int) -> None:
        """Empty 1m arrays with room for `keep` minutes of history and three days ahead."""
        self._cap = keep + 3 * DAY_MINUTES
        P = len(self.specs)
        self._o, self._h, self._l, self._c = (np.zeros((P, self._cap), np.int32) for _ in range(4))
        self._v = np.zeros((P, self._cap))
        self._first = 0     # grid minute of row 0
        self._n = 0         # rows filled

    def _minute(self, ms: int) -> int:
        return (ms - self.t0) // MINUTE_MS

    def _ensure(self, minute: int) -> None:
        """Generate days until grid `minute` exists, dropping the oldest days to stay bounded."""
        while self._first + self._n <= minute:
            block = self._model.next_block()
            B = block.open.shape[1]
            if self._n + B > self._cap:
                drop = math.ceil((self._n + B - self._cap) / B) * B
                for arr in (self._o, self._h, self._l, self._c, self._v):
                    arr[:, : self._n - drop] = arr[:, drop: self._n]
                self._first += drop
                self._n -= drop
            sl = slice(self._n, self._n + B)
            self._o[:, sl], self._h[:, sl], self._l[:, sl] = block.open, block.high, block.low
            self._c[:, sl], self._v[:, sl] = block.close, block.volume
            self._n += B

    def _rows(self, rows, m0: int, m1: int, now_ms: int):
        """Copies of o, h, l, c (prices) and v for grid minutes [m0, m1) of `rows` (a pair
        index or slice); the current minute is the still-open partial one, later ones absent."""
        cur = self._minute(now_ms)
        m1 = min(m1, cur + 1)
        m0 = max(m0, self._first)
        if m1 <= m0:
            empty = np.empty(self._o[rows, :0].shape)
            return empty, empty, empty, empty, empty
        sl = slice(m0 - self._first, m1 - self._first)
        o, h, l, c = (a[rows, sl].astype(np.float64) for a in (self._o, self._h, self._l, self._c))
        v = self._v[rows, sl].copy()
        if m1 == cur + 1:    # the still-open minute: linear path from open to its close so far
            frac = ((now_ms - self.t0) % MINUTE_MS) / MINUTE_MS
            po, pc = o[..., -1], c[..., -1]
            price = np.rint(po + (pc - po) * frac)
            c[..., -1] = price
            h[..., -1] = np.maximum(po, price)
            l[..., -1] = np.minimum(po, price)
            step = self._step[rows]
            v[..., -1] = np.floor(v[..., -1] * frac / step) * step
        tick = self._tick[rows]
        tick = tick[:, None] if np.ndim(tick) else tick
        return o * tick, h * tick, l * tick, c * tick, v

    def index(self, market_id: str) -> int:
        """Row of a Binance id; BinanceError -1121 when unknown."""
        try:
            return self._index[market_id]
        except KeyError:
            raise BinanceError(-1121, "Invalid symbol.") from None

    def _pair_rows(self, market_ids: Iterable[str] | None) -> list[int]:
        """Rows of these Binance ids, or of every pair when None."""
        if market_ids is None:
            return list(range(len(self.specs)))
        return [self.index(m) for m in market_ids]

    # -- candles
    def klines(self, market_id: str, interval: str, start_ms: int | None = None,
               end_ms: int | None = None, limit: int = 500) -> list[list]:
        """Candles as Binance answers /api/v3/klines (12 fields, decimals as strings).

        Same rules as Binance: open times >= start_ms and <= end_ms; with a start the first
        `limit` candles, otherwise the last `limit` ones; the newest is the still-open one.
        """
        return json.loads(self.klines_json(market_id, interval, start_ms, end_ms, limit))

    def klines_json(self, market_id: str, interval: str, start_ms: int | None = None,
                    end_ms: int | None = None, limit: int = 500) -> bytes:
        """The same candles, serialised as the JSON body of /api/v3/klines."""
        cols = self._kline_columns(market_id, interval, start_ms, end_ms, limit)
        cols[8] = cols[8].astype(np.int64)
        rows = zip(*(c.tolist() for c in cols))
        return ("[" + ",".join(_KLINE_JSON_ROW % r for r in rows) + "]").encode()

    def _kline_columns(self, market_id, interval, start_ms, end_ms, limit) -> list[np.ndarray]:
        """The 11 numeric columns of the klines rows (the 12th is always "0")."""
        p = self.index(market_id)
        _check_kline_args(interval, start_ms, end_ms, limit)
        k = INTERVAL_MINUTES[interval]
        iv = k * MINUTE_MS
        with self._lock:
            now = self.now_ms()
            self._ensure(self._minute(now))
            window = self._kline_window(iv, start_ms, end_ms, limit, now)
            if window is None:
                return [np.empty(0)] * 11
            lo, hi = window
            o, h, l, c, v = self._rows(p, self._minute(lo), self._minute(hi + iv), now)
        extra = self._kline_extras(p, k, o, h, l, c, v)
        o, h, l, c, v = _aggregate(o, h, l, c, v, k)
        opens = lo + np.arange(len(o)) * iv
        return [opens, o, h, l, c, v, opens + iv - 1, *extra]

    def _kline_window(self, iv: int, start_ms: int | None, end_ms: int | None, limit: int,
                      now: int) -> tuple[int, int] | None:
        """(first, last) open time of the candles answered, None when there are none."""
        data_start = self.t0 + self._first * MINUTE_MS
        lo, hi = -(-data_start // iv) * iv, now // iv * iv
        if start_ms is not None:
            lo = max(lo, -(-start_ms // iv) * iv)
        if end_ms is not None:
            hi = min(hi, end_ms // iv * iv)
        if lo > hi:
            return None
        if start_ms is None:
            lo = max(lo, hi - (limit - 1) * iv)
        else:
            hi = min(hi, lo + (limit - 1) * iv)
        return lo, hi

    def _kline_extras(self, p: int, k: int, o, h, l, c, v) -> list[np.ndarray]:
        """Quote volume, trade count, taker base and taker quote volume of k-minute candles."""
        typical = (o + h + l + c) / 4.0
        qv = v * typical
        trades = np.where(v > 0, np.maximum(1, np.rint(qv / self._trade_size(p))), 0)
        taker_share = 0.5 + 0.3 * np.tanh((c - o) / (o * self._sigma[p] * 3))
        taker_v = np.rint(v * taker_share / self._step[p]) * self._step[p]
        starts = np.arange(0, len(qv), k)
        return [np.add.reduceat(x, starts) for x in (qv, trades, taker_v, taker_v * typical)]

    def _trade_size(self, p) -> float | np.ndarray:
        """Average trade size in quote currency."""
        return np.clip(self._model.qv_minute[p] * DAY_MINUTES / 2e6, 20.0, 2000.0)

    # -- prices, tickers, books
    def last_price(self, market_id: str) -> float:
        """Current (market clock) price."""
        p = self.index(market_id)
        with self._lock:
            now = self.now_ms()
            self._ensure(self._minute(now))
            m = self._minute(now)
            return float(self._rows(p, m, m + 1, now)[3][-1])

    def _book_inputs(self, p: int, now: int) -> tuple[float, float, float]:
        """(mid, 1m volatility over the last hour, 24h quote volume) of pair p."""
        m = self._minute(now)
        o, h, l, c, v = self._rows(p, m - DAY_MINUTES + 1, m + 1, now)
        qv = float(np.sum(v * (o + h + l + c) / 4.0))
        closes = c[-61:]
        vol = float(np.std(np.diff(np.log(closes)))) if len(closes) > 2 else float(self._sigma[p])
        return float(c[-1]), max(vol, 1e-5), qv

    def order_book(self, market_id: str, limit: int = 100, depth: float = 1.0,
                   at_ms: int | None = None, mid: float | None = None) -> dict:
        """dict(bids=[[price, qty], ...], asks=[...]) around the current price.

        depth scales every level's quantity (a thin book below 1); at_ms gives the book as it
        was at that market time, mid centres it on another price (where a stop triggered).
        """
        p = self.index(market_id)
        with self._lock:
            now = self.now_ms() if at_ms is None else at_ms
            self._ensure(self._minute(now))
            book_mid, vol, qv = self._book_inputs(p, now)
        step = float(self._step[p])
        bids, asks = synthetic_order_book(book_mid if mid is None else mid, vol, qv,
                                          float(self._tick[p]), step, limit)
        return {"bids": _thin(bids, depth, step).tolist(), "asks": _thin(asks, depth, step).tolist()}

    def ticker_24h(self, market_ids: Iterable[str] | None = None,
                   depth: float = 1.0) -> list[dict]:
        """Rolling 24h statistics in the format of /api/v3/ticker/24hr (depth: see order_book)."""
        rows = self._pair_rows(market_ids)
        with self._lock:
            now = self.now_ms()
            m = self._minute(now)
            self._ensure(m)
            o, h, l, c, v = self._rows(slice(None), m - DAY_MINUTES, m + 1, now)
            books = [self._book_inputs(p, now) for p in rows]
        qv = v * (o + h + l + c) / 4.0
        trades = np.where(v > 0, np.maximum(1, np.rint(qv / self._trade_size(slice(None))[:, None])), 0)
        return [_ticker_entry(self.specs[p], now, book, o[p], h[p], l[p], c[p], v[p], qv[p],
                              int(trades[p].sum()), depth)
                for p, book in zip(rows, books)]

    def book_ticker(self, market_ids: Iterable[str] | None = None,
                    depth: float = 1.0) -> list[dict]:
        """Best bid/ask in the format of /api/v3/ticker/bookTicker (depth: see order_book)."""
        out = []
        for p in self._pair_rows(market_ids):
            book = self.order_book(self.specs[p].id, 1, depth)
            (bp, bq), (ap, aq) = book["bids"][0], book["asks"][0]
            out.append({"symbol": self.specs[p].id, "bidPrice": f8(bp), "bidQty": f8(bq),
                        "askPrice": f8(ap), "askQty": f8(aq)})
        return out

    def minute_bars(self, market_id: str, start_ms: int) -> list[np.ndarray]:
        """[open times, opens, highs, lows, closes, volumes] of the 1m candles from the one
        holding start_ms to the still open current one (so far), prices in ticks: what the
        exchange matches stops and resting orders against. Empty when start_ms is ahead."""
        p = self.index(market_id)
        with self._lock:
            now = self.now_ms()
            self._ensure(self._minute(now))
            first = max(self._minute(start_ms), self._first)
            o, h, l, c, v = self._rows(p, first, self._minute(now) + 1, now)
        times = self.t0 + (first + np.arange(len(o))) * MINUTE_MS
        return [times, *(np.rint(x / self._tick[p]).astype(np.int64) for x in (o, h, l, c)), v]

    def symbol_info(self, spec: PairSpec) -> dict:
        """The exchangeInfo entry of one market."""
        return {
            "symbol": spec.id, "status": "TRADING", "baseAsset": spec.base,
            "baseAssetPrecision": 8, "quoteAsset": spec.quote, "quotePrecision": 8,
            "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT"],
            "icebergAllowed": False, "ocoAllowed": True, "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": False,
            "cancelReplaceAllowed": False, "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": f8(spec.tick),
                 "maxPrice": f8(spec.max_price), "tickSize": f8(spec.tick)},
                {"filterType": "LOT_SIZE", "minQty": f8(spec.step),
                 "maxQty": f8(spec.max_qty), "stepSize": f8(spec.step)},
                {"filterType": "NOTIONAL", "minNotional": f8(spec.min_notional),
                 "applyMinToMarket": True, "maxNotional": "9000000.00000000",
                 "applyMaxToMarket": False, "avgPriceMins": 5},
            ],
            "permissions": [], "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }


def _ticker_entry(s: PairSpec, now: int, book: tuple[float, float, float], o, h, l, c, v, qv,
                  count: int, depth: float) -> dict:
    """One /api/v3/ticker/24hr entry from a pair's last 24h of 1m rows and its book inputs."""
    mid, vol, qv24 = book
    bids, asks = (_thin(side, depth, s.step)
                  for side in synthetic_order_book(mid, vol, qv24, s.tick, s.step, 1))
    last, open_ = c[-1], o[0]
    volume, quote_volume = v.sum(), qv.sum()
    counter_base = (now // MINUTE_MS) * 1000
    return {
        "symbol": s.id, "priceChange": f8(last - open_),
        "priceChangePercent": f"{(last / open_ - 1) * 100:.3f}",
        "weightedAvgPrice": f8(quote_volume / volume if volume else last),
        "prevClosePrice": f8(open_), "lastPrice": f8(last),
        "lastQty": f8(s.step), "bidPrice": f8(bids[0, 0]), "bidQty": f8(bids[0, 1]),
        "askPrice": f8(asks[0, 0]), "askQty": f8(asks[0, 1]), "openPrice": f8(open_),
        "highPrice": f8(h.max()), "lowPrice": f8(l.min()),
        "volume": f8(volume), "quoteVolume": f8(quote_volume),
        "openTime": now - DAY_MINUTES * MINUTE_MS, "closeTime": now,
        "firstId": counter_base - count, "lastId": counter_base - 1, "count": count,
    }

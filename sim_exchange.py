"""Simulated crypto market served in Binance's spot REST dialect on 127.0.0.1.

An unmodified ``ccxt.binance`` client (configured with :func:`ccxt_overrides`) can load
markets, page through candles, read tickers and order books, and trade on it with signed
requests, so every code path of the bot can run offline.

The market: N pairs quoted in USDT on a 1-minute base grid, generated lazily one UTC day
at a time (vectorised across pairs). Log returns are a mix of a common market factor, a
group factor (majors, layer1, defi, memes, ai/gaming) and an idiosyncratic part; each
component has GARCH(1,1) variance with Student-t shocks and rare jumps. Volume rises with
volatility. Every Binance interval from 1m to 1d is aggregated from the 1m grid, so the
intervals agree with one another. Deterministic for a (seed, start_ms).

Two clocks (see the team contract): market data, orders and trades use the market clock
(``speed`` times wall-clock); ``/api/v3/time``, signatures' timestamp/recvWindow checks and
rate-limit windows use the wall clock.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import math
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable
from urllib.parse import parse_qsl, urlsplit

import numpy as np

logger = logging.getLogger(__name__)

MINUTE_MS = 60_000
DAY_MINUTES = 1440
INTERVAL_MINUTES: dict[str, int] = {
    "1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
    "6h": 360, "8h": 480, "12h": 720, "1d": 1440,
}
FEE_RATE = Decimal("0.001")            # taker and maker, charged in the asset received
MAX_HISTORY_MINUTES = 30 * DAY_MINUTES  # 1m history kept behind the clock (~30 days)
_SIM_EPOCH_MS = 1_704_067_200_000       # 2024-01-01T00:00Z: origin of simulated_ohlcv
_Q8 = Decimal("0.00000001")

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


class BinanceError(Exception):
    """An error answered in Binance's format: {"code": code, "msg": msg}."""

    def __init__(self, code: int, msg: str, status: int = 400):
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.status = code, msg, status


def _mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                               "or malformed.")


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


def tick_size(price: float) -> float:
    """The price tick of a market at this price level: 5 significant digits."""
    return max(1e-8, 10.0 ** (math.floor(math.log10(price)) - 5))


def step_size(price: float) -> float:
    """The amount step of a market at this (USDT) price level: steps worth 0.1-1 USDT."""
    return min(1.0, 10.0 ** (-math.floor(math.log10(price)) - 1))


def _synthetic_names(count: int, taken: set[str]) -> list[str]:
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
    specs = []
    for base, price, group, vol, qv in rows:
        tick = tick_size(price)
        specs.append(PairSpec(
            base=base, quote=quote, price=price, group=group, ann_vol=vol,
            daily_quote_volume=qv * 1e6, tick=tick, step=step_size(price),
            max_qty=10.0 ** math.ceil(math.log10(1e8 / price)),
            max_price=10.0 ** math.ceil(math.log10(price * 1000))))
    return specs


# ----------------------------------------------------------------------------- model

@dataclass
class _Block:
    """One UTC day of 1m rows for all pairs: prices in ticks (int64), volume in base units."""
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


class _PriceModel:
    """Generates consecutive one-day blocks; block b depends only on (seed, b) and the state."""

    def __init__(self, specs: list[PairSpec], seed: int):
        self.seed = seed
        P = len(specs)
        groups = sorted({s.group for s in specs})
        G = len(groups)
        self.K = 1 + G + P
        rng = np.random.default_rng([seed, 1_000_000_007])
        W = np.zeros((self.K, P))
        for i, s in enumerate(specs):
            a, b = _GROUP_LOADINGS[s.group]
            a = a + rng.uniform(-0.05, 0.05)
            W[0, i], W[1 + groups.index(s.group), i] = a, b
            W[1 + G + i, i] = math.sqrt(max(0.05, 1 - a * a - b * b))
        self.W, self.W2 = W, W * W
        kinds = ["market"] + ["group"] * G + ["idio"] * P
        self.jump_rate = np.array([_JUMP_RATE[k] for k in kinds])
        self.jump_sd = np.array([_JUMP_SD[k] for k in kinds])
        self.sigma = np.array([s.ann_vol for s in specs]) / math.sqrt(365 * DAY_MINUTES)
        self.tick = np.array([s.tick for s in specs])
        self.step = np.array([s.step for s in specs])
        self.qv_minute = np.array([s.daily_quote_volume for s in specs]) / DAY_MINUTES
        levels = np.array([s.price for s in specs]) * np.exp(rng.normal(0, 0.05, P))
        self.anchor = np.log(levels)
        self.lp = self.anchor.copy()
        self.h = np.exp(rng.normal(0, 0.3, self.K))
        self.last_close = np.maximum(1, np.rint(levels / self.tick)).astype(np.int64)
        self.block = 0
        mod = np.arange(DAY_MINUTES)
        self.season = 1 + 0.25 * np.cos(2 * np.pi * (mod - 15 * 60) / DAY_MINUTES)

    def next_block(self) -> _Block:
        rng = np.random.default_rng([self.seed, self.block])
        B, K, P = DAY_MINUTES, self.K, len(self.sigma)
        z = rng.standard_t(_T_DF, size=(B, K)) / math.sqrt(_T_DF / (_T_DF - 2))
        jumps = rng.random((B, K)) < self.jump_rate
        z += jumps * rng.normal(0.0, 1.0, (B, K)) * self.jump_sd
        # GARCH(1,1): h' = omega + alpha e^2 + beta h with e = sqrt(h) z, i.e. h' = omega + A h
        A = _GARCH_ALPHA * z * z + _GARCH_BETA
        omega = 1.0 - _GARCH_ALPHA - _GARCH_BETA
        hs = np.empty((B + 1, K))
        hs[0] = self.h
        for t in range(B):                           # loop over time, vectorised over components
            np.minimum(omega + A[t] * hs[t], _H_MAX, out=hs[t + 1])
        self.h = hs[B].copy()
        hs = hs[:B]
        e = np.sqrt(hs) * z
        unit = e @ self.W                            # (B, P) unit-variance mixed shocks
        inst = np.sqrt(hs @ self.W2)                 # instantaneous sd of those shocks
        sig = self.sigma * self.season[:, None]
        drift = -_MEAN_REVERSION * (self.lp - self.anchor)
        lp = self.lp + np.cumsum(unit * sig + drift, axis=0)
        self.lp = lp[-1]
        close = np.clip(np.rint(np.exp(lp) / self.tick), 1, _MAX_TICKS).astype(np.int64)
        open_ = np.vstack([self.last_close[None, :], close[:-1]])
        self.last_close = close[-1]
        top, bottom = np.maximum(open_, close), np.minimum(open_, close)
        wick = 0.5 * sig * inst
        high = np.maximum(top, np.minimum(_MAX_TICKS, np.rint(
            top * np.exp(np.abs(rng.standard_normal((B, P))) * wick))))
        low = np.minimum(bottom, np.rint(bottom * np.exp(-np.abs(rng.standard_normal((B, P))) * wick)))
        low = np.maximum(low, 1)
        activity = inst ** 1.5 * (0.55 + 0.45 * np.abs(unit)) / 0.87
        noise = np.exp(rng.normal(-0.06, 0.35, (B, P)))
        quote_vol = self.qv_minute * self.season[:, None] * activity * noise
        volume = np.rint(quote_vol / (close * self.tick) / self.step) * self.step
        self.block += 1
        return _Block(open_.T.astype(np.int64), high.T.astype(np.int64), low.T.astype(np.int64),
                      close.T.copy(), volume.T.copy())


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
    t0 = _SIM_EPOCH_MS - blocks * DAY_MINUTES * MINUTE_MS
    parts = []
    for _ in range(blocks):
        b = model.next_block()
        parts.append(np.stack(_aggregate(b.open, b.high, b.low, b.close, b.volume, k), axis=-1))
    agg = np.concatenate(parts, axis=1)[:, -candles:].astype(np.float64)   # (P, T, 5)
    agg[..., :4] *= model.tick[:, None, None]
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
    k = np.arange(levels)
    shape = (1 + 0.15 * k) * (1 + 0.5 * np.sin(2.3 * k + 1.0) ** 2)
    level_quote = max(quote_volume, 1.0) / DAY_MINUTES * 0.08 * shape
    sides = []
    for ticks in (best_bid - k * gap, best_ask + k * gap):
        ticks = ticks[ticks >= 1]
        price = ticks * tick
        qty = np.maximum(1, np.floor(level_quote[: len(ticks)] / price / step)) * step
        sides.append(np.column_stack([price, qty]))
    return sides[0], sides[1]


# ----------------------------------------------------------------------------- market

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
        self._tick = self._model.tick
        self._step = self._model.step
        self._sigma = self._model.sigma
        keep = max(MAX_HISTORY_MINUTES, (self._start_ms - self.t0) // MINUTE_MS)
        self._cap = keep + 3 * DAY_MINUTES
        P = len(self.specs)
        self._o, self._h, self._l, self._c = (np.zeros((P, self._cap), np.int32) for _ in range(4))
        self._v = np.zeros((P, self._cap))
        self._first = 0     # grid minute of row 0
        self._n = 0         # rows filled
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
    def _minute(self, ms: int) -> int:
        return (ms - self.t0) // MINUTE_MS

    def _ensure(self, minute: int) -> None:
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

    def _kline_columns(self, market_id, interval, start_ms, end_ms, limit):
        p = self.index(market_id)
        if interval not in INTERVAL_MINUTES:
            raise BinanceError(-1120, "Invalid interval.")
        if not 1 <= limit <= 1000:
            raise BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")
        if start_ms is not None and end_ms is not None and start_ms > end_ms:
            raise BinanceError(-1023, "Start time is greater than end time.")
        k = INTERVAL_MINUTES[interval]
        iv = k * MINUTE_MS
        with self._lock:
            now = self.now_ms()
            self._ensure(self._minute(now))
            data_start = self.t0 + self._first * MINUTE_MS
            lo, hi = -(-data_start // iv) * iv, now // iv * iv
            if start_ms is not None:
                lo = max(lo, -(-start_ms // iv) * iv)
            if end_ms is not None:
                hi = min(hi, end_ms // iv * iv)
            if lo > hi:
                return [np.empty(0)] * 11
            if start_ms is None:
                lo = max(lo, hi - (limit - 1) * iv)
            else:
                hi = min(hi, lo + (limit - 1) * iv)
            o, h, l, c, v = self._rows(p, self._minute(lo), self._minute(hi + iv), now)
        typical = (o + h + l + c) / 4.0
        qv = v * typical
        trades = np.where(v > 0, np.maximum(1, np.rint(qv / self._trade_size(p))), 0)
        taker_share = 0.5 + 0.3 * np.tanh((c - o) / (o * self._sigma[p] * 3))
        taker_v = np.rint(v * taker_share / self._step[p]) * self._step[p]
        starts = np.arange(0, len(qv), k)
        extra = [np.add.reduceat(x, starts) for x in (qv, trades, taker_v, taker_v * typical)]
        o, h, l, c, v = _aggregate(o, h, l, c, v, k)
        opens = lo + np.arange(len(o)) * iv
        return [opens, o, h, l, c, v, opens + iv - 1, *extra]

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

    def order_book(self, market_id: str, limit: int = 100) -> dict:
        """dict(bids=[[price, qty], ...], asks=[...]) around the current price."""
        p = self.index(market_id)
        with self._lock:
            now = self.now_ms()
            self._ensure(self._minute(now))
            mid, vol, qv = self._book_inputs(p, now)
        bids, asks = synthetic_order_book(mid, vol, qv, float(self._tick[p]),
                                          float(self._step[p]), limit)
        return {"bids": bids.tolist(), "asks": asks.tolist()}

    def ticker_24h(self, market_ids: Iterable[str] | None = None) -> list[dict]:
        """Rolling 24h statistics in the format of /api/v3/ticker/24hr."""
        rows = [self.index(m) for m in market_ids] if market_ids is not None \
            else list(range(len(self.specs)))
        with self._lock:
            now = self.now_ms()
            m = self._minute(now)
            self._ensure(m)
            o, h, l, c, v = self._rows(slice(None), m - DAY_MINUTES, m + 1, now)
            books = [self._book_inputs(p, now) for p in rows]
        qv = v * (o + h + l + c) / 4.0
        trades = np.where(v > 0, np.maximum(1, np.rint(qv / self._trade_size(slice(None))[:, None])), 0)
        out = []
        counter_base = (now // MINUTE_MS) * 1000
        for p, (mid, vol, qv24) in zip(rows, books):
            s = self.specs[p]
            bids, asks = synthetic_order_book(mid, vol, qv24, s.tick, s.step, 1)
            last, open_ = c[p, -1], o[p, 0]
            volume, quote_volume = v[p].sum(), qv[p].sum()
            count = int(trades[p].sum())
            out.append({
                "symbol": s.id, "priceChange": _f8(last - open_),
                "priceChangePercent": f"{(last / open_ - 1) * 100:.3f}",
                "weightedAvgPrice": _f8(quote_volume / volume if volume else last),
                "prevClosePrice": _f8(open_), "lastPrice": _f8(last),
                "lastQty": _f8(s.step), "bidPrice": _f8(bids[0, 0]), "bidQty": _f8(bids[0, 1]),
                "askPrice": _f8(asks[0, 0]), "askQty": _f8(asks[0, 1]), "openPrice": _f8(open_),
                "highPrice": _f8(h[p].max()), "lowPrice": _f8(l[p].min()),
                "volume": _f8(volume), "quoteVolume": _f8(quote_volume),
                "openTime": now - DAY_MINUTES * MINUTE_MS, "closeTime": now,
                "firstId": counter_base - count, "lastId": counter_base - 1, "count": count,
            })
        return out

    def book_ticker(self, market_ids: Iterable[str] | None = None) -> list[dict]:
        """Best bid/ask in the format of /api/v3/ticker/bookTicker."""
        rows = [self.index(m) for m in market_ids] if market_ids is not None \
            else list(range(len(self.specs)))
        out = []
        for p in rows:
            book = self.order_book(self.specs[p].id, 1)
            (bp, bq), (ap, aq) = book["bids"][0], book["asks"][0]
            out.append({"symbol": self.specs[p].id, "bidPrice": _f8(bp), "bidQty": _f8(bq),
                        "askPrice": _f8(ap), "askQty": _f8(aq)})
        return out

    def ranges_since(self, market_id: str, since_ms: int) -> tuple[float, float, float]:
        """(lowest, highest, current) price traded after `since_ms` up to now (for crossing)."""
        p = self.index(market_id)
        with self._lock:
            now = self.now_ms()
            self._ensure(self._minute(now))
            o, h, l, c, v = self._rows(p, self._minute(since_ms) + 1, self._minute(now) + 1, now)
            price = float(self._rows(p, self._minute(now), self._minute(now) + 1, now)[3][-1])
        low = min(float(l.min()) if len(l) else price, price)
        high = max(float(h.max()) if len(h) else price, price)
        return low, high, price

    def symbol_info(self, spec: PairSpec) -> dict:
        """The exchangeInfo entry of one market."""
        return {
            "symbol": spec.id, "status": "TRADING", "baseAsset": spec.base,
            "baseAssetPrecision": 8, "quoteAsset": spec.quote, "quotePrecision": 8,
            "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8, "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "icebergAllowed": False, "ocoAllowed": False, "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": False,
            "cancelReplaceAllowed": False, "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": _f8(spec.tick),
                 "maxPrice": _f8(spec.max_price), "tickSize": _f8(spec.tick)},
                {"filterType": "LOT_SIZE", "minQty": _f8(spec.step),
                 "maxQty": _f8(spec.max_qty), "stepSize": _f8(spec.step)},
                {"filterType": "NOTIONAL", "minNotional": _f8(spec.min_notional),
                 "applyMinToMarket": True, "maxNotional": "9000000.00000000",
                 "applyMaxToMarket": False, "avgPriceMins": 5},
            ],
            "permissions": [], "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }


_KLINE_JSON_ROW = '[%d,"%.8f","%.8f","%.8f","%.8f","%.8f",%d,"%.8f",%d,"%.8f","%.8f","0"]'


def _f8(x: float | Decimal) -> str:
    return f"{x:.8f}"


# ----------------------------------------------------------------------------- ccxt

def ccxt_overrides(base_url: str) -> dict:
    """Constructor config that points an unmodified ccxt.binance at a SimExchangeServer."""
    import ccxt   # heavy: only when needed

    base = base_url.rstrip("/")
    api = {name: re.sub(r"^https?://[^/]+", base, url)
           for name, url in ccxt.binance().describe()["urls"]["api"].items()}
    return {
        "urls": {"api": api},
        "options": {
            "defaultType": "spot",
            "fetchMarkets": {"types": ["spot"]},   # only /api/v3/exchangeInfo
            "fetchMargins": False,                 # no sapi margin-pair lists
            "fetchCurrencies": False,              # no sapi capital/config/getall
            "adjustForTimeDifference": True,       # /api/v3/time on load_markets
        },
    }


# ----------------------------------------------------------------------------- account

@dataclass
class _Order:
    symbol: str
    order_id: int
    client_id: str
    side: str
    type: str
    tif: str
    price: Decimal
    orig_qty: Decimal
    orig_quote: Decimal
    time: int
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    cum_quote: Decimal = Decimal(0)
    update_time: int = 0
    checked_ms: int = 0

    def as_dict(self) -> dict:
        return {
            "symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
            "clientOrderId": self.client_id, "price": _f8(self.price),
            "origQty": _f8(self.orig_qty), "executedQty": _f8(self.executed),
            "cummulativeQuoteQty": _f8(self.cum_quote), "status": self.status,
            "timeInForce": self.tif, "type": self.type, "side": self.side,
            "stopPrice": "0.00000000", "icebergQty": "0.00000000", "time": self.time,
            "updateTime": self.update_time, "isWorking": self.type != "MARKET",
            "workingTime": self.time, "origQuoteOrderQty": _f8(self.orig_quote),
            "selfTradePreventionMode": "NONE",
        }


_DECIMAL_RE = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")


def _decimal(params: dict, name: str, required: bool = True) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise _mandatory(name)
        return None
    if not _DECIMAL_RE.match(raw):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal "
                                  "range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")
    return Decimal(raw)


def _integer(params: dict, name: str, required: bool = False) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise _mandatory(name)
        return None
    if not re.fullmatch(r"-?[0-9]{1,20}", raw):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal "
                                  "range is '^[0-9]{1,20}$'.")
    return int(raw)


class _Account:
    """Balances, orders and trades of the single simulated account (Decimal arithmetic)."""

    def __init__(self, market: SimMarket, balances: dict[str, float]):
        self.market = market
        self.free: dict[str, Decimal] = {}
        for spec in market.specs:
            self.free.setdefault(spec.base, Decimal(0))
            self.free.setdefault(spec.quote, Decimal(0))
        for asset, amount in balances.items():
            self.free[asset] = Decimal(str(amount)).quantize(_Q8)
        self.locked: dict[str, Decimal] = {a: Decimal(0) for a in self.free}
        self.orders: dict[int, _Order] = {}
        self.open_ids: set[int] = set()
        self.trades: list[dict] = []
        self._next_order = 1
        self._next_trade = 1
        self._lock = threading.RLock()

    # -- helpers
    def spec(self, market_id: str) -> PairSpec:
        return self.market.specs[self.market.index(market_id)]

    def _book(self, spec: PairSpec, side: str) -> Iterable[tuple[Decimal, Decimal]]:
        book = self.market.order_book(spec.id, 1000)
        levels = book["asks"] if side == "BUY" else book["bids"]
        return ((Decimal(_f8(p)), Decimal(_f8(q))) for p, q in levels)

    def _check_filters(self, spec: PairSpec, qty: Decimal | None, price: Decimal | None,
                       notional: Decimal) -> None:
        tick, step = Decimal(_f8(spec.tick)), Decimal(_f8(spec.step))
        if price is not None and (price < tick or price > Decimal(_f8(spec.max_price))
                                  or (price - tick) % tick != 0):
            raise BinanceError(-1013, "Filter failure: PRICE_FILTER")
        if qty is not None and (qty < step or qty > Decimal(_f8(spec.max_qty))
                                or (qty - step) % step != 0):
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        if notional < Decimal(_f8(spec.min_notional)):
            raise BinanceError(-1013, "Filter failure: NOTIONAL")

    @staticmethod
    def _walk(levels, side: str, qty: Decimal | None, quote: Decimal | None, step: Decimal,
              limit: Decimal | None = None) -> list[tuple[Decimal, Decimal]]:
        """Fills (price, qty) taking levels for a base `qty` or a `quote` amount."""
        fills = []
        for price, avail in levels:
            if limit is not None and (price > limit if side == "BUY" else price < limit):
                break
            if qty is not None:
                take = min(qty, avail)
                qty -= take
            else:
                take = min(avail, (quote / price / step).to_integral_value(ROUND_DOWN) * step)
                quote -= take * price
            if take > 0:
                fills.append((price, take))
            if (qty is not None and qty <= 0) or (quote is not None and take < avail):
                break
        return fills

    def _settle(self, order: _Order, fills, maker: bool, now: int) -> list[dict]:
        """Apply fills to balances and the order; returns Binance 'fills' entries."""
        spec = self.spec(order.symbol)
        out = []
        for price, qty in fills:
            quote_amt = price * qty
            if order.side == "BUY":
                fee = (qty * FEE_RATE).quantize(_Q8, ROUND_HALF_UP)
                fee_asset = spec.base
                self.free[spec.base] += qty - fee
                if maker:
                    self.locked[spec.quote] -= quote_amt
                else:
                    self.free[spec.quote] -= quote_amt
            else:
                fee = (quote_amt * FEE_RATE).quantize(_Q8, ROUND_HALF_UP)
                fee_asset = spec.quote
                self.free[spec.quote] += quote_amt - fee
                if maker:
                    self.locked[spec.base] -= qty
                else:
                    self.free[spec.base] -= qty
            order.executed += qty
            order.cum_quote += quote_amt
            trade_id = self._next_trade
            self._next_trade += 1
            self.trades.append({
                "symbol": order.symbol, "id": trade_id, "orderId": order.order_id,
                "orderListId": -1, "price": _f8(price), "qty": _f8(qty),
                "quoteQty": _f8(quote_amt), "commission": _f8(fee), "commissionAsset": fee_asset,
                "time": now, "isBuyer": order.side == "BUY", "isMaker": maker,
                "isBestMatch": True})
            out.append({"price": _f8(price), "qty": _f8(qty), "commission": _f8(fee),
                        "commissionAsset": fee_asset, "tradeId": trade_id})
        order.update_time = now
        return out

    # -- orders
    def new_order(self, params: dict) -> dict:
        symbol = params.get("symbol") or ""
        if not symbol:
            raise _mandatory("symbol")
        spec = self.spec(symbol)
        side, otype = params.get("side"), params.get("type")
        if not side:
            raise _mandatory("side")
        if side not in ("BUY", "SELL"):
            raise BinanceError(-1117, "Invalid side.")
        if not otype:
            raise _mandatory("type")
        if otype not in ("MARKET", "LIMIT", "LIMIT_MAKER"):
            raise BinanceError(-1116, "Invalid orderType.")
        client_id = params.get("newClientOrderId") or f"sim{random.getrandbits(64):016x}"
        if not re.fullmatch(r"[.A-Za-z0-9_-]{1,36}", client_id):
            raise BinanceError(-1100, "Illegal characters found in parameter "
                                      "'newClientOrderId'; legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        with self._lock:
            if any(self.orders[i].client_id == client_id and self.orders[i].symbol == symbol
                   for i in self.open_ids):
                raise BinanceError(-2010, "Duplicate order sent.")
            now = self.market.now_ms()
            if otype == "MARKET":
                order, fills = self._market_order(spec, side, params, client_id, now)
            else:
                order, fills = self._limit_order(spec, side, otype, params, client_id, now)
            resp = {k: v for k, v in order.as_dict().items()
                    if k not in ("time", "updateTime", "isWorking", "stopPrice", "icebergQty")}
            return resp | {"transactTime": now, "fills": fills}

    def _new(self, spec, side, otype, tif, price, qty, quote, client_id, now) -> _Order:
        order = _Order(spec.id, self._next_order, client_id, side, otype, tif, price, qty,
                       quote, now, update_time=now, checked_ms=now)
        self._next_order += 1
        self.orders[order.order_id] = order
        return order

    def _market_order(self, spec, side, params, client_id, now):
        qty = _decimal(params, "quantity", required=False)
        quote = _decimal(params, "quoteOrderQty", required=False)
        if qty is None and quote is None:
            raise BinanceError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but "
                                      "both were empty/null!")
        if qty is not None and quote is not None:
            raise BinanceError(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        last = Decimal(_f8(self.market.last_price(spec.id)))
        if qty is not None:
            self._check_filters(spec, qty, None, qty * last)
        else:
            self._check_filters(spec, None, None, quote)
        step = Decimal(_f8(spec.step))
        fills = self._walk(self._book(spec, side), side, qty, quote, step)
        got = sum((q for _, q in fills), Decimal(0))
        if qty is None and got < step:
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        cost = sum((p * q for p, q in fills), Decimal(0))
        if side == "BUY" and cost > self.free[spec.quote] or \
                side == "SELL" and got > self.free[spec.base]:
            raise BinanceError(-2010, "Account has insufficient balance for requested action.")
        order = self._new(spec, side, "MARKET", "GTC", Decimal(0), qty if qty is not None else got,
                          quote or Decimal(0), client_id, now)
        out = self._settle(order, fills, maker=False, now=now)
        order.status = "FILLED" if qty is None or order.executed == qty else "EXPIRED"
        return order, out

    def _limit_order(self, spec, side, otype, params, client_id, now):
        tif = params.get("timeInForce") or ("GTC" if otype == "LIMIT_MAKER" else None)
        if tif is None:
            raise _mandatory("timeInForce")
        if tif not in ("GTC", "IOC", "FOK"):
            raise BinanceError(-1115, "Invalid timeInForce.")
        qty, price = _decimal(params, "quantity"), _decimal(params, "price")
        self._check_filters(spec, qty, price, qty * price)
        if side == "BUY" and qty * price > self.free[spec.quote] or \
                side == "SELL" and qty > self.free[spec.base]:
            raise BinanceError(-2010, "Account has insufficient balance for requested action.")
        step = Decimal(_f8(spec.step))
        fills = self._walk(self._book(spec, side), side, qty, None, step, limit=price)
        if otype == "LIMIT_MAKER" and fills:
            raise BinanceError(-2010, "Order would immediately match and take.")
        got = sum((q for _, q in fills), Decimal(0))
        if tif == "FOK" and got < qty:
            fills = []
        order = self._new(spec, side, otype, tif, price, qty, Decimal(0), client_id, now)
        out = self._settle(order, fills, maker=False, now=now)
        rest = qty - order.executed
        if rest == 0:
            order.status = "FILLED"
        elif tif in ("IOC", "FOK"):
            order.status = "EXPIRED"
        else:
            order.status = "PARTIALLY_FILLED" if order.executed else "NEW"
            self._lock_funds(spec, order, rest)
            self.open_ids.add(order.order_id)
        return order, out

    def _lock_funds(self, spec: PairSpec, order: _Order, rest: Decimal, sign: int = 1) -> None:
        asset, amount = (spec.quote, rest * order.price) if order.side == "BUY" else (spec.base, rest)
        self.free[asset] -= sign * amount
        self.locked[asset] += sign * amount

    def match_open_orders(self) -> None:
        """Fill resting limit orders whose price the market crossed since the last check."""
        if not self.open_ids:       # cheap unlocked peek; the set is re-read under the lock
            return
        with self._lock:
            now = self.market.now_ms()
            for oid in sorted(self.open_ids):
                order = self.orders[oid]
                low, high, _ = self.market.ranges_since(order.symbol, order.checked_ms)
                order.checked_ms = now
                crossed = low < order.price if order.side == "BUY" else high > order.price
                if crossed:
                    self._settle(order, [(order.price, order.orig_qty - order.executed)],
                                 maker=True, now=now)
                    order.status = "FILLED"
                    self.open_ids.discard(oid)

    def find(self, params: dict, unknown: tuple[int, str]) -> _Order:
        symbol = params.get("symbol") or ""
        if not symbol:
            raise _mandatory("symbol")
        self.spec(symbol)
        oid = _integer(params, "orderId")
        cid = params.get("origClientOrderId")
        if oid is None and not cid:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, "
                                      "but both were empty/null!")
        with self._lock:
            if oid is not None:
                order = self.orders.get(oid)
                if order and order.symbol == symbol and (not cid or cid == order.client_id):
                    return order
            else:
                match = [o for o in self.orders.values()
                         if o.client_id == cid and o.symbol == symbol]
                if match:
                    return match[-1]
        raise BinanceError(*unknown)

    def cancel(self, params: dict) -> dict:
        with self._lock:
            order = self.find(params, (-2011, "Unknown order sent."))
            if order.order_id not in self.open_ids:
                raise BinanceError(-2011, "Unknown order sent.")
            self.open_ids.discard(order.order_id)
            self._lock_funds(self.spec(order.symbol), order, order.orig_qty - order.executed, -1)
            order.status = "CANCELED"
            order.update_time = self.market.now_ms()
            resp = order.as_dict()
            resp["origClientOrderId"] = order.client_id
            resp["clientOrderId"] = params.get("newClientOrderId") or f"cancel{order.order_id}"
            resp["transactTime"] = order.update_time
            return resp

    def open_orders(self, symbol: str | None) -> list[dict]:
        if symbol:
            self.spec(symbol)
        with self._lock:
            return [self.orders[i].as_dict() for i in sorted(self.open_ids)
                    if not symbol or self.orders[i].symbol == symbol]

    def all_orders(self, params: dict) -> list[dict]:
        symbol = params.get("symbol") or ""
        if not symbol:
            raise _mandatory("symbol")
        self.spec(symbol)
        limit = min(_integer(params, "limit") or 500, 1000)
        start, end = _integer(params, "startTime"), _integer(params, "endTime")
        from_id = _integer(params, "orderId")
        with self._lock:
            rows = [o.as_dict() for o in self.orders.values() if o.symbol == symbol
                    and (from_id is None or o.order_id >= from_id)
                    and (start is None or o.time >= start) and (end is None or o.time <= end)]
        return rows[:limit] if from_id is not None or start is not None else rows[-limit:]

    def my_trades(self, params: dict) -> list[dict]:
        symbol = params.get("symbol") or ""
        if not symbol:
            raise _mandatory("symbol")
        self.spec(symbol)
        limit = min(_integer(params, "limit") or 500, 1000)
        start, end = _integer(params, "startTime"), _integer(params, "endTime")
        from_id, oid = _integer(params, "fromId"), _integer(params, "orderId")
        with self._lock:
            rows = [t for t in self.trades if t["symbol"] == symbol
                    and (oid is None or t["orderId"] == oid)
                    and (from_id is None or t["id"] >= from_id)
                    and (start is None or t["time"] >= start) and (end is None or t["time"] <= end)]
        return rows[:limit] if from_id is not None or start is not None else rows[-limit:]

    def account(self, omit_zero: bool) -> dict:
        with self._lock:
            balances = [{"asset": a, "free": _f8(self.free[a]), "locked": _f8(self.locked[a])}
                        for a in sorted(self.free)
                        if not omit_zero or self.free[a] or self.locked[a]]
        return {
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {"maker": _f8(FEE_RATE), "taker": _f8(FEE_RATE),
                                "buyer": "0.00000000", "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": self.market.now_ms(), "accountType": "SPOT", "balances": balances,
            "permissions": ["SPOT"], "uid": 1,
        }


# ----------------------------------------------------------------------------- limits/faults

class _WeightLimiter:
    """Binance-style fixed-window request-weight budget (wall clock), with 418 bans."""

    def __init__(self, limit: int, window_s: float = 60.0, ban_after: int | None = 50,
                 ban_seconds: float = 120.0):
        self.limit, self.window_s = limit, window_s
        self.ban_after, self.ban_seconds = ban_after, ban_seconds
        self.used, self.rejected, self.window = 0, 0, -1
        self.banned_until = 0.0
        self._lock = threading.Lock()

    def charge(self, weight: int) -> tuple[int, int, int]:
        """(status 200/429/418, used weight in this window, Retry-After seconds)."""
        now = time.time()
        with self._lock:
            window = int(now // self.window_s)
            if window != self.window:
                self.window, self.used, self.rejected = window, 0, 0
            if now < self.banned_until:
                return 418, self.used, math.ceil(self.banned_until - now)
            if self.used + weight > self.limit:
                self.rejected += 1
                if self.ban_after is not None and self.rejected > self.ban_after:
                    self.banned_until = now + self.ban_seconds
                    return 418, self.used, math.ceil(self.ban_seconds)
                return 429, self.used, max(1, math.ceil((window + 1) * self.window_s - now))
            self.used += weight
            return 200, self.used, 0


@dataclass(frozen=True)
class _Faults:
    latency: float = 0.0
    error_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    drop_rate: float = 0.0
    symbols: frozenset[str] | None = None
    after_processing: bool = False


def _depth_weight(params: dict) -> int:
    raw = params.get("limit") or "100"
    limit = int(raw) if raw.isdigit() else 100
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def _symbols_weight(params: dict, one: int, few: int, many: int, all_: int) -> int:
    if params.get("symbol"):
        return one
    if params.get("symbols"):
        n = params["symbols"].count(",") + 1
        return few if n <= 20 else many if n <= 100 else all_
    return all_


# (method, path) -> (weight function, signed)
_ROUTES: dict[tuple[str, str], tuple[Callable[[dict], int], bool]] = {
    ("GET", "/api/v3/ping"): (lambda p: 1, False),
    ("GET", "/api/v3/time"): (lambda p: 1, False),
    ("GET", "/api/v3/exchangeInfo"): (lambda p: 20, False),
    ("GET", "/api/v3/klines"): (lambda p: 2, False),
    ("GET", "/api/v3/depth"): (_depth_weight, False),
    ("GET", "/api/v3/ticker/24hr"): (lambda p: _symbols_weight(p, 2, 2, 40, 80), False),
    ("GET", "/api/v3/ticker/bookTicker"): (lambda p: _symbols_weight(p, 2, 4, 4, 4), False),
    ("GET", "/api/v3/ticker/price"): (lambda p: _symbols_weight(p, 2, 4, 4, 4), False),
    ("GET", "/api/v3/account"): (lambda p: 20, True),
    ("POST", "/api/v3/order"): (lambda p: 1, True),
    ("GET", "/api/v3/order"): (lambda p: 4, True),
    ("DELETE", "/api/v3/order"): (lambda p: 1, True),
    ("GET", "/api/v3/openOrders"): (lambda p: 6 if p.get("symbol") else 80, True),
    ("GET", "/api/v3/allOrders"): (lambda p: 20, True),
    ("GET", "/api/v3/myTrades"): (lambda p: 20, True),
}


# ----------------------------------------------------------------------------- server

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120
    server_version = "SimBinance/1.0"
    sim: "SimExchangeServer"

    def setup(self) -> None:
        super().setup()
        self.sim._connections.add(self.connection)

    def finish(self) -> None:
        self.sim._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:   # noqa: A002 (stdlib signature)
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self.sim._handle(self, "GET")

    def do_POST(self) -> None:
        self.sim._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.sim._handle(self, "DELETE")

    def do_PUT(self) -> None:
        self.sim._handle(self, "PUT")


class SimExchangeServer:
    """Binance spot REST dialect over a SimMarket, on a ThreadingHTTPServer."""

    def __init__(self, market: SimMarket, host: str = "127.0.0.1", port: int = 0,
                 api_key: str = "sim-key", api_secret: str = "sim-secret",
                 balances: dict[str, float] | None = None,
                 weight_limit_per_minute: int = 6000):
        self.market = market
        self.host, self._port = host, port
        self.api_key, self._secret = api_key, api_secret.encode()
        self._account = _Account(market, balances if balances is not None else {"USDT": 10000.0})
        self._limiter = _WeightLimiter(weight_limit_per_minute)
        self._faults = _Faults()
        self._fault_rng = random.Random(0)
        self._counts: Counter[str] = Counter()
        self._statuses: Counter[int] = Counter()
        self._count_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._exchange_info: bytes | None = None

    # -- lifecycle
    def start(self) -> "SimExchangeServer":
        handler = type("SimHandler", (_Handler,), {"sim": self})
        self._httpd = ThreadingHTTPServer((self.host, self._port), handler)
        self._httpd.daemon_threads = True
        self._stopping.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sim-exchange",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        logger.info("simulated exchange listening on %s (%d pairs, speed %gx)", self.url,
                    len(self.market.specs), self.market.speed)
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._httpd = None
        logger.info("simulated exchange stopped")

    def __enter__(self) -> "SimExchangeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- test/bench knobs
    def set_faults(self, latency: float = 0.0, error_rate: float = 0.0, hang_rate: float = 0.0,
                   hang_seconds: float = 30.0, drop_rate: float = 0.0,
                   symbols: set[str] | None = None, after_processing: bool = False) -> None:
        """Inject faults from now on (all zero = none).

        latency: seconds added to every request; error_rate: share answered with a 5xx;
        hang_rate: share held for hang_seconds then closed unanswered; drop_rate: share whose
        connection is closed without an answer; symbols: only requests naming these Binance
        ids; after_processing: 5xx/hang/drop happen after the request took effect (an order
        is placed but its answer is lost), as Binance warns can happen.
        """
        self._faults = _Faults(latency, error_rate, hang_rate, hang_seconds, drop_rate,
                               frozenset(symbols) if symbols is not None else None,
                               after_processing)

    def set_rate_limit(self, weight_limit_per_minute: int, window_s: float = 60.0,
                       ban_after: int | None = 50, ban_seconds: float = 120.0) -> None:
        """Replace the weight budget; window_s shortens the window for tests. After more than
        ban_after refused requests in one window the client is banned (418) for ban_seconds."""
        self._limiter = _WeightLimiter(weight_limit_per_minute, window_s, ban_after, ban_seconds)

    def request_count(self, path: str | None = None) -> int:
        """Requests received (answered, refused or faulted), for one path or all."""
        with self._count_lock:
            return self._counts[path] if path else sum(self._counts.values())

    def response_count(self, status: int) -> int:
        """Answers sent with this HTTP status (e.g. 429), since the last reset."""
        with self._count_lock:
            return self._statuses[status]

    def reset_counters(self) -> None:
        with self._count_lock:
            self._counts.clear()
            self._statuses.clear()

    @property
    def balances(self) -> dict[str, float]:
        """Free balances of the simulated account (a copy)."""
        with self._account._lock:
            return {a: float(v) for a, v in self._account.free.items()}

    @property
    def locked(self) -> dict[str, float]:
        """Balances locked in open orders (a copy)."""
        with self._account._lock:
            return {a: float(v) for a, v in self._account.locked.items()}

    # -- request handling
    def _handle(self, req: _Handler, method: str) -> None:
        parts = urlsplit(req.path)
        path = parts.path
        with self._count_lock:
            self._counts[path] += 1
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length).decode() if length else ""
        faults = self._faults
        if faults.latency > 0 and self._stopping.wait(faults.latency):
            return
        route = _ROUTES.get((method, path))
        if route is None:
            self._send(req, 404, b"Not Found", 0, content_type="text/plain")
            return
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        weight_fn, signed = route
        status, used, retry = self._limiter.charge(weight_fn(params))
        if status != 200:
            self._refuse(req, status, used, retry)
            return
        fault = self._draw_fault(faults, params)
        if fault and not faults.after_processing:
            self._fault(req, fault, faults, used)
            return
        try:
            if signed:
                self._authenticate(req, parts.query, body, params)
            self._account.match_open_orders()
            code, payload = 200, self._dispatch(method, path, params)
        except BinanceError as err:
            code = err.status
            payload = json.dumps({"code": err.code, "msg": err.msg}).encode()
        except Exception:   # an answer, never a dead connection, on a bug
            logger.exception("simulated exchange failed on %s %s", method, req.path)
            code, payload = 500, b'{"code":-1000,"msg":"An unknown error occurred."}'
        if fault:
            self._fault(req, fault, faults, used)
            return
        self._send(req, code, payload, used)

    def _draw_fault(self, faults: _Faults, params: dict) -> str | None:
        if not (faults.error_rate or faults.hang_rate or faults.drop_rate):
            return None
        if faults.symbols is not None:
            named = {params.get("symbol")} | set(re.findall(r"[A-Z0-9]+", params.get("symbols", "")))
            if not named & faults.symbols:
                return None
        x = self._fault_rng.random()
        for name, rate in (("error", faults.error_rate), ("hang", faults.hang_rate),
                           ("drop", faults.drop_rate)):
            if x < rate:
                return name
            x -= rate
        return None

    def _fault(self, req: _Handler, fault: str, faults: _Faults, used: int) -> None:
        if fault == "error":
            status = self._fault_rng.choice((500, 502, 503))
            body = {500: b"Internal Server Error", 502: b"<html><body>502 Bad Gateway</body></html>",
                    503: b"Service Unavailable"}[status]
            self._send(req, status, body, used, content_type="text/html")
            return
        if fault == "hang":
            self._stopping.wait(faults.hang_seconds)
        req.close_connection = True
        try:
            req.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _refuse(self, req: _Handler, status: int, used: int, retry: int) -> None:
        if status == 429:
            msg = (f"Too many requests; current limit of IP(127.0.0.1) request weight is "
                   f"{self._limiter.limit} per 1 MINUTE. Please use WebSocket Streams for live "
                   "updates to avoid bans.")
        else:
            until = int(self._limiter.banned_until * 1000)
            msg = (f"Way too many requests; IP(127.0.0.1) banned until {until}. Please use "
                   "WebSocket Streams for live updates to avoid bans.")
        body = json.dumps({"code": -1003, "msg": msg}).encode()
        self._send(req, status, body, used, extra={"Retry-After": str(retry)})

    def _send(self, req: _Handler, status: int, body: bytes, used: int,
              content_type: str = "application/json;charset=UTF-8",
              extra: dict[str, str] | None = None) -> None:
        with self._count_lock:
            self._statuses[status] += 1
        try:
            req.send_response(status)
            req.send_header("Content-Type", content_type)
            req.send_header("Content-Length", str(len(body)))
            req.send_header("X-MBX-USED-WEIGHT-1M", str(used))
            for key, value in (extra or {}).items():
                req.send_header(key, value)
            req.end_headers()
            req.wfile.write(body)
        except OSError:           # the client went away
            req.close_connection = True

    def _authenticate(self, req: _Handler, query: str, body: str, params: dict) -> None:
        key = req.headers.get("X-MBX-APIKEY")
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", 401)
        if not hmac.compare_digest(key, self.api_key):
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        timestamp = _integer(params, "timestamp", required=True)
        signature = params.get("signature")
        if not signature:
            raise _mandatory("signature")
        recv_window = _integer(params, "recvWindow") or 5000
        if recv_window > 60000:
            raise BinanceError(-1131, "recvWindow must be less than 60000")
        server_ms = int(time.time() * 1000)
        if timestamp >= server_ms + 1000:
            raise BinanceError(-1021, "Timestamp for this request was 1000ms ahead of the "
                                      "server's time.")
        if server_ms - timestamp > recv_window:
            raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")

        def unsigned(raw: str) -> str:
            return "&".join(p for p in raw.split("&") if p and not p.startswith("signature="))

        payload = (unsigned(query) + unsigned(body)).encode()
        expected = hmac.new(self._secret, payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise BinanceError(-1022, "Signature for this request is not valid.")

    def _dispatch(self, method: str, path: str, params: dict) -> bytes:
        m, acct = self.market, self._account
        name = path[len("/api/v3/"):]
        if name == "ping":
            return b"{}"
        if name == "time":
            return json.dumps({"serverTime": int(time.time() * 1000)}).encode()
        if name == "exchangeInfo":
            return self._exchange_info_body(params)
        if name == "klines":
            symbol = params.get("symbol") or ""
            if not symbol:
                raise _mandatory("symbol")
            if not params.get("interval"):
                raise _mandatory("interval")
            limit = _integer(params, "limit")
            return m.klines_json(symbol, params["interval"], _integer(params, "startTime"),
                                 _integer(params, "endTime"), 500 if limit is None else limit)
        if name == "depth":
            return self._depth(params)
        if name in ("ticker/24hr", "ticker/bookTicker", "ticker/price"):
            return self._ticker(name, params)
        if name == "account":
            return _json(acct.account(params.get("omitZeroBalances") == "true"))
        if name == "order":
            if method == "POST":
                return _json(acct.new_order(params))
            if method == "DELETE":
                return _json(acct.cancel(params))
            return _json(acct.find(params, (-2013, "Order does not exist.")).as_dict())
        if name == "openOrders":
            return _json(acct.open_orders(params.get("symbol")))
        if name == "allOrders":
            return _json(acct.all_orders(params))
        return _json(acct.my_trades(params))    # myTrades: the only route left

    def _exchange_info_body(self, params: dict) -> bytes:
        wanted = self._symbol_list(params)
        specs = [self.market.specs[self.market.index(s)] for s in wanted] if wanted \
            else self.market.specs
        return _json({
            "timezone": "UTC", "serverTime": int(time.time() * 1000),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": self._limiter.limit},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000}],
            "exchangeFilters": [],
            "symbols": [self.market.symbol_info(s) for s in specs],
        })

    @staticmethod
    def _symbol_list(params: dict) -> list[str] | None:
        if params.get("symbol"):
            return [params["symbol"]]
        if params.get("symbols"):
            try:
                value = json.loads(params["symbols"])
            except ValueError:
                value = None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'; "
                                          "legal range is '^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]"
                                          "{1,20}\"){0,}){0,1}\\]$'.")
            return value
        return None

    def _depth(self, params: dict) -> bytes:
        symbol = params.get("symbol") or ""
        if not symbol:
            raise _mandatory("symbol")
        limit = _integer(params, "limit")
        limit = 100 if limit is None else limit
        if limit < 1:
            raise BinanceError(-1100, "Illegal characters found in parameter 'limit'; legal "
                                      "range is '^[0-9]{1,20}$'.")
        book = self.market.order_book(symbol, min(limit, 5000))
        return _json({"lastUpdateId": self.market.now_ms(),
                      "bids": [[_f8(p), _f8(q)] for p, q in book["bids"]],
                      "asks": [[_f8(p), _f8(q)] for p, q in book["asks"]]})

    def _ticker(self, name: str, params: dict) -> bytes:
        wanted = self._symbol_list(params)
        if name == "ticker/24hr":
            rows = self.market.ticker_24h(wanted)
        elif name == "ticker/bookTicker":
            rows = self.market.book_ticker(wanted)
        else:
            ids = wanted or self.market.ids
            rows = [{"symbol": s, "price": _f8(self.market.last_price(s))} for s in ids]
        return _json(rows[0] if params.get("symbol") else rows)


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    """Run the simulated exchange alone until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Simulated Binance-dialect exchange on 127.0.0.1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--speed", type=float, default=60.0, help="market seconds per wall second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--balance", type=float, default=10000.0, help="USDT balance of the account")
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--api-secret", default="sim-secret")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    market = SimMarket(pairs=args.pairs, seed=args.seed, speed=args.speed)
    server = SimExchangeServer(market, args.host, args.port, args.api_key, args.api_secret,
                               {"USDT": args.balance})
    try:
        server.start()
        logger.info("ccxt: ccxt.binance(ccxt_overrides(%r) | {'apiKey': %r, 'secret': ...})",
                    server.url, args.api_key)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

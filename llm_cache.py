"""Cache of LLM trade confirmations keyed on the market *state*, not on exact numbers.

Key: the symbol plus bucketed state values. Price moves are measured in units of the
pair's own volatility (the price changes over 1, 6 and 24 candles and the 10-candle
momentum divided by ATR% x sqrt(candles)), the price's place in its recent range is the
Bollinger position, the volatility regime is log2(ATR%), and each indicator has a
tolerance (:class:`CacheTolerances`). Two nearly identical states share an answer; a move
across a bucket edge does not.

Validity (states are built from closed candles, so they change only when a candle closes):
- an entry answers a state with the same ``candle_ts`` whatever the clock says: it is the
  very state the answer was given for;
- a state of a newer candle with the same key reuses the entry while its age (market
  seconds since the answer) is within the entry's TTL, ``ttl * (0.5 + confidence)``:
  half the TTL for a 0-confidence answer, 1.5x for a certain one, the TTL itself at 0.5.
  ``ttl = 0`` keeps only same-candle reuse. The default, 600 s, lets an answer outlive its
  5m candle by one or two candles; 90 s (shorter than a 5m candle) would allow no reuse
  across candles at all.
At most ``max_size`` entries, least recently used evicted first (expired entries go first).
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

DEFAULT_TTL = 600.0   # market seconds; two 5m candles (replay-tuned, README)
DEFAULT_MAX_SIZE = 1000
_SQRT = {k: math.sqrt(k) for k in (6, 10, 24)}


@dataclass(frozen=True)
class LLMDecision:
    """An answer to "take this entry?"; source is "llm", "cache" or "fallback".

    Truthy exactly when take is True, so a {symbol: LLMDecision} mapping reads safely where
    {symbol: bool} is expected (strategy.Confirm): a refusal or failure is never "yes".
    """
    take: bool
    confidence: float
    reason: str
    source: str

    def __bool__(self) -> bool:
        return self.take


@dataclass(frozen=True)
class CacheTolerances:
    """Bucket widths of the cache key (wider = more hits, coarser reuse).

    Buckets are centred on 0 (see _bucket). The defaults come from the replay in
    tests/chat_server.py (README): 1.25x these widths cut the agreement of similar-state
    hits from 92% to 79%, 0.75x reuse less without agreeing more. The edges fall on RSI
    30/50/70, Bollinger position 0.25/0.75 and model probability 0.55/0.65/0.75.
    """
    change_atr: float = 2.0     # price change over k candles / (ATR% * sqrt(k))
    momentum_atr: float = 2.0   # 10-candle momentum / (ATR% * sqrt(10))
    rsi: float = 20.0           # RSI points
    macd_atr: float = 1.0       # MACD histogram / ATR (both in price units)
    bb_position: float = 0.5    # place between the Bollinger bands (0 lower, 1 upper)
    volume_log2: float = 2.0    # log2(volume ratio)
    atr_log2: float = 2.0       # log2(ATR%): the volatility regime
    probability: float = 0.1    # model probability

    def scaled(self, factor: float) -> "CacheTolerances":
        """All widths multiplied by factor (for tuning)."""
        return CacheTolerances(**{k: v * factor for k, v in self.__dict__.items()})


def _bucket(value: Any, width: float) -> int | None:
    """round(value / width): buckets centred on 0, so the usual small values of a signed
    quantity share one bucket instead of straddling an edge; None if missing / non-finite."""
    if value is None:
        return None
    x = float(value) / width + 0.5
    return math.floor(x) if math.isfinite(x) else None


def state_key(state: Mapping[str, Any], tol: CacheTolerances = CacheTolerances()) -> tuple:
    """The cache key of a state dict (symbol + buckets); see the module docstring."""
    atr_pct = state["atr_pct"]
    unit = atr_pct if atr_pct is not None and atr_pct > 0 else math.nan
    price = state["price"]
    vol = state["volume_ratio"]
    prob = state.get("model_probability")
    free_slots = max(0, min(int(state["max_positions"]) - int(state["open_positions"]), 2))
    return (
        state["symbol"],
        _bucket(state["change_1"] / unit, tol.change_atr),
        _bucket(state["change_6"] / (unit * _SQRT[6]), tol.change_atr),
        _bucket(state["change_24"] / (unit * _SQRT[24]), tol.change_atr),
        _bucket(state["momentum_pct"] / (unit * _SQRT[10]), tol.momentum_atr),
        _bucket(state["rsi"], tol.rsi),
        _bucket(state["macd_hist"] / (unit * price / 100.0), tol.macd_atr),
        _bucket(state["bb_position"], tol.bb_position),
        _bucket(math.log2(vol) if vol and vol > 0 else None, tol.volume_log2),
        _bucket(math.log2(unit) if unit > 0 else None, tol.atr_log2),
        _bucket(prob, tol.probability),
        free_slots,
    )


@dataclass
class _Entry:
    decision: LLMDecision       # with source "cache"
    candle_ts: int | None
    expires_at: float
    tokens: int
    latency: float


class LLMCache:
    """Thread-safe LRU cache of LLM decisions by market state (see module docstring)."""

    def __init__(self, ttl: float = DEFAULT_TTL, max_size: int = DEFAULT_MAX_SIZE,
                 clock: Callable[[], float] = time.time,
                 tolerances: CacheTolerances = CacheTolerances()) -> None:
        if max_size < 1 or ttl < 0:
            raise ValueError("LLMCache needs max_size >= 1 and ttl >= 0")
        self.ttl, self.max_size, self.clock, self.tolerances = ttl, max_size, clock, tolerances
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._latest_ts: dict[str, int] = {}
        self._counts = dict(exact_hits=0, similar_hits=0, misses=0, evictions=0, expired=0)
        self._time_saved = 0.0
        self._tokens_saved = 0

    @classmethod
    def from_config(cls, config: Any, clock: Callable[[], float] = time.time) -> "LLMCache":
        return cls(ttl=float(getattr(config, "llm_cache_ttl", DEFAULT_TTL)),
                   max_size=int(getattr(config, "llm_cache_max_size", DEFAULT_MAX_SIZE)),
                   clock=clock)

    def key(self, state: Mapping[str, Any]) -> tuple:
        return state_key(state, self.tolerances)

    def ttl_for(self, confidence: float) -> float:
        """Effective TTL of an answer: ttl * (0.5 + confidence)."""
        return self.ttl * (0.5 + min(max(confidence, 0.0), 1.0))

    def get(self, state: Mapping[str, Any]) -> LLMDecision | None:
        """The cached decision for this state (source "cache"), or None."""
        key = self.key(state)
        candle_ts = state.get("candle_ts")
        now = self.clock()
        with self._lock:
            self._note_candle(key[0], candle_ts)
            entry = self._entries.get(key)
            if entry is None:
                self._counts["misses"] += 1
                return None
            if candle_ts is not None and entry.candle_ts == candle_ts:
                self._counts["exact_hits"] += 1
            elif now <= entry.expires_at:
                self._counts["similar_hits"] += 1
            else:
                del self._entries[key]
                self._counts["expired"] += 1
                self._counts["misses"] += 1
                return None
            self._entries.move_to_end(key)
            self._time_saved += entry.latency
            self._tokens_saved += entry.tokens
            return entry.decision

    def put(self, state: Mapping[str, Any], decision: LLMDecision, tokens: int = 0,
            latency: float = 0.0) -> None:
        """Store an LLM answer for this state; tokens/latency are what a hit will save."""
        key = self.key(state)
        now = self.clock()
        entry = _Entry(replace(decision, source="cache"), state.get("candle_ts"),
                       now + self.ttl_for(decision.confidence), int(tokens), float(latency))
        with self._lock:
            if key not in self._entries and len(self._entries) >= self.max_size:
                if not self._purge_locked(now):
                    self._entries.popitem(last=False)
                    self._counts["evictions"] += 1
            self._note_candle(key[0], entry.candle_ts)
            self._entries[key] = entry
            self._entries.move_to_end(key)

    def purge_expired(self) -> int:
        """Drop entries whose candle is superseded and whose TTL has passed; returns count."""
        with self._lock:
            return self._purge_locked(self.clock())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._latest_ts.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[tuple]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def stats(self) -> dict[str, float]:
        with self._lock:
            c = dict(self._counts)
            size, time_saved, tokens_saved = len(self._entries), self._time_saved, self._tokens_saved
        hits = c["exact_hits"] + c["similar_hits"]
        lookups = hits + c["misses"]
        return dict(hits=hits, exact_hits=c["exact_hits"], similar_hits=c["similar_hits"],
                    misses=c["misses"], hit_rate=hits / lookups if lookups else 0.0,
                    evictions=c["evictions"], expired=c["expired"], size=size,
                    max_size=self.max_size, time_saved=time_saved, tokens_saved=tokens_saved)

    def report(self) -> str:
        """One paragraph of cache statistics, with a hint when the hit rate is poor."""
        s = self.stats()
        lookups = s["hits"] + s["misses"]
        text = (f"LLM cache: {s['hits']} hits / {lookups} lookups ({s['hit_rate']:.1%}; "
                f"same candle {s['exact_hits']}, similar state {s['similar_hits']}), "
                f"{s['misses']} misses, {s['expired']} expired, {s['evictions']} evicted, "
                f"size {s['size']}/{s['max_size']}; saved {s['time_saved']:.1f} s of LLM "
                f"time and {s['tokens_saved']} tokens")
        if lookups >= 20 and s["hit_rate"] < 0.5:
            if s["expired"] > s["misses"] / 2:
                text += (f"\n  hint: hit rate below 50% and most misses are expired entries;"
                         f" raise LLM_CACHE_TTL (now {self.ttl:g} s)")
            else:
                text += ("\n  hint: hit rate below 50%; widen the bucket tolerances "
                         "(llm_cache.CacheTolerances) or raise LLM_CACHE_TTL "
                         f"(now {self.ttl:g} s)")
        return text

    def _note_candle(self, symbol: str, candle_ts: int | None) -> None:
        if candle_ts is not None and candle_ts > self._latest_ts.get(symbol, -1):
            self._latest_ts[symbol] = candle_ts

    def _purge_locked(self, now: float) -> int:
        stale = [k for k, e in self._entries.items()
                 if now > e.expires_at and e.candle_ts != self._latest_ts.get(k[0])]
        for k in stale:
            del self._entries[k]
        self._counts["expired"] += len(stale)
        live = {k[0] for k in self._entries}
        for symbol in [s for s in self._latest_ts if s not in live]:
            del self._latest_ts[symbol]
        return len(stale)

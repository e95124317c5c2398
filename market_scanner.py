"""Pair universe, parallel incremental OHLCV fetch, candle store and the scan cache."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, TypeVar

import numpy as np

from candle_files import resample, timeframe_to_ms
from domain import MarketView
from strategies import Strategy, market_index, own_columns
from features import HISTORY_NEEDED
from indicators import StreamingIndicators

log = logging.getLogger(__name__)

T = TypeVar("T")
MIN_CANDLES = 100  # a pair needs this much closed history before it is scored
# The universe ranks pairs by 24h volume, which moves slowly, and its all-pairs ticker call
# is the heaviest request of a scan (weight 80, 0.8 s of Binance's budget): refresh it hourly.
UNIVERSE_REFRESH = 3600.0  # market seconds


@dataclass
class ParallelResult:
    results: dict[str, object]
    failed: dict[str, str]       # symbol -> error line
    timed_out: list[str]


def run_parallel(fn: Callable[[str], T], symbols: Iterable[str], workers: int,
                 timeout: float, cancel: threading.Event | None = None) -> ParallelResult:
    """Run fn(symbol) on a thread pool; each future gets `timeout` seconds from its own start.

    A future past its deadline is abandoned (its thread finishes on its own, bounded by the
    HTTP timeout) so one slow pair never delays the rest beyond its own timeout. Setting
    `cancel` abandons whatever is still pending within a fraction of a second.
    """
    symbols = list(symbols)
    out = ParallelResult({}, {}, [])
    if not symbols:
        return out
    started: dict[str, float] = {}

    def task(symbol: str):
        started[symbol] = time.monotonic()
        return fn(symbol)

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(symbols))),
                              thread_name_prefix="scan")
    pending: dict[Future, str] = {pool.submit(task, s): s for s in symbols}
    try:
        while pending:
            now = time.monotonic()
            deadlines = [started[s] + timeout for s in pending.values() if s in started]
            wait_for = max(0.0, min(deadlines) - now) if deadlines else timeout
            done, _ = wait(pending, timeout=min(wait_for, timeout, 0.2) + 0.001,
                           return_when=FIRST_COMPLETED)
            for future in done:
                symbol = pending.pop(future)
                try:
                    out.results[symbol] = future.result()
                except Exception as exc:  # one pair's failure is that pair's problem only
                    out.failed[symbol] = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            cancelled = cancel is not None and cancel.is_set()
            for future, symbol in list(pending.items()):
                if cancelled or (symbol in started and now - started[symbol] >= timeout):
                    future.cancel()
                    out.timed_out.append(symbol)
                    del pending[future]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return out


class TTLCache:
    """One value with a time-to-live in market seconds, with hit and miss counters."""

    def __init__(self, ttl: float, clock: Callable[[], float]):
        self.ttl = ttl
        self.clock = clock
        self.hits = self.misses = 0
        self._value = None
        self._stored_at = -float("inf")

    def get(self):
        if self._value is not None and self.clock() - self._stored_at < self.ttl:
            self.hits += 1
            return self._value
        self.misses += 1
        return None

    def put(self, value) -> None:
        self._value, self._stored_at = value, self.clock()

    def clear(self) -> None:
        self._value = None


class CandleStore:
    """Closed candles per pair as (T, 6) float64 arrays [ts_ms, o, h, l, c, v], bounded."""

    def __init__(self, max_candles: int):
        self.max_candles = max_candles
        self._candles: dict[str, np.ndarray] = {}

    def get(self, symbol: str) -> np.ndarray | None:
        return self._candles.get(symbol)

    def last_ts(self, symbol: str) -> int | None:
        arr = self._candles.get(symbol)
        return int(arr[-1, 0]) if arr is not None and len(arr) else None

    def merge(self, symbol: str, rows: np.ndarray) -> int:
        """Append rows newer than the last stored candle; returns how many were new."""
        last = self.last_ts(symbol)
        if last is not None:
            rows = rows[rows[:, 0] > last]
        if not len(rows):
            return 0
        old = self._candles.get(symbol)
        merged = rows if old is None else np.concatenate([old, rows])
        self._candles[symbol] = merged[-self.max_candles:]
        return len(rows)

    def drop(self, symbol: str) -> None:
        self._candles.pop(symbol, None)

    def symbols(self) -> list[str]:
        return list(self._candles)

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(self._candles)


@dataclass(frozen=True)
class ScanResult:
    view: MarketView | None
    universe: tuple[str, ...]
    failed: Mapping[str, str]
    timed_out: tuple[str, ...]
    from_cache: bool


class MarketScanner:
    def __init__(self, client, config, cancel: threading.Event | None = None,
                 strategy: Strategy | None = None, timeframe: str | None = None):
        self.client = client
        self.strategy = strategy
        self.config = config
        self.cancel = cancel
        # The strategy's decision timeframe; fetched as such where the exchange serves it,
        # else built from TIMEFRAME candles (complete buckets only).
        self.timeframe = timeframe or config.timeframe
        self.tf_ms = timeframe_to_ms(self.timeframe)
        served = getattr(client.ccxt, "timeframes", None) or {}
        self.fetch_timeframe = self.timeframe if self.timeframe in served else config.timeframe
        self.history_needed = HISTORY_NEEDED
        # While a stream feeds the store, a candle that closed this recently (market ms) is
        # awaited from it rather than asked for over REST.
        self.stream_grace_ms = 0
        self.store = CandleStore(config.candle_history)
        self.cache = TTLCache(config.market_scan_cache_duration, client.clock)
        self.universe_cache = TTLCache(UNIVERSE_REFRESH, client.clock)
        self.failure_counts: dict[str, int] = {}
        self._indicators: StreamingIndicators | None = None
        self._rows: list[str] = []          # symbol of each StreamingIndicators row
        self._row_ts: dict[str, int] = {}   # last candle each row has consumed

    # -- universe -----------------------------------------------------------------------
    def select_universe(self, tickers: Mapping[str, dict]) -> list[str]:
        """Active spot pairs in QUOTE_CURRENCY by 24h quote volume, top MAX_PAIRS."""
        c = self.config
        markets = self.client.load_markets()
        allowed = set(c.pair_allowlist)
        denied = set(c.pair_denylist)
        ranked = []
        for symbol, m in markets.items():
            if not (m.get("spot") and m.get("active", True) and m.get("quote") == c.quote_currency):
                continue
            if (allowed and symbol not in allowed) or symbol in denied:
                continue
            ticker = tickers.get(symbol) or {}
            ranked.append((float(ticker.get("quoteVolume") or 0.0), symbol))
        ranked.sort(reverse=True)
        return [s for _, s in ranked[: c.max_pairs]]

    # -- candles ------------------------------------------------------------------------
    def _fetch_candles(self, symbol: str, now_ms: int) -> np.ndarray:
        """Candles closed by now_ms and newer than the stored ones (CANDLE_HISTORY at first).

        One now_ms serves the whole scan, so a scan that straddles a candle's close still
        gives every pair the same newest candle.
        """
        last = self.store.last_ts(symbol)
        fetch_ms = timeframe_to_ms(self.fetch_timeframe)
        if last is not None and last + 2 * self.tf_ms > now_ms:
            return np.empty((0, 6))     # no newer candle can have closed: nothing to ask
        if last is None:
            since = now_ms - (self.config.candle_history + 1) * self.tf_ms
            limit = min(1000, (self.config.candle_history + 1) * self.tf_ms // fetch_ms)
        else:
            since = last + self.tf_ms
            limit = max(1, min(1000, (now_ms - since) // fetch_ms + 1))
        rows = self.client.fetch_ohlcv(symbol, self.fetch_timeframe, since=since, limit=int(limit))
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        arr = arr[arr[:, 0] + fetch_ms <= now_ms]   # Binance's newest candle is still open
        if fetch_ms != self.tf_ms:
            arr = resample(arr, fetch_ms, self.tf_ms, now_ms)
        return arr

    @property
    def stream_timeframe(self) -> str | None:
        """The candles a stream can feed the store with: the decision timeframe, if the
        exchange serves it (else the candles are built from REST ones)."""
        return self.timeframe if self.fetch_timeframe == self.timeframe else None

    def add_streamed(self, candles: Iterable[tuple[str, list]]) -> list[str]:
        """Closed candles from the stream, each stored only if it is the next one. A pair
        whose streamed candle comes after a gap catches up over REST up to that candle
        first, so the store has no hole and no duplicate. Returns the pairs that failed to
        catch up (the next scan tries again)."""
        gaps: dict[str, int] = {}
        for symbol, row in candles:
            last, ts = self.store.last_ts(symbol), int(row[0])
            if last is None or ts <= last:
                continue
            self.cache.clear()      # the view is behind: the next scan rebuilds it
            if symbol in gaps or ts != last + self.tf_ms:
                gaps[symbol] = max(ts, gaps.get(symbol, ts))
            else:
                self.store.merge(symbol, np.asarray([row], dtype=np.float64))
        if not gaps:
            return []
        fetched = run_parallel(lambda s: self._fetch_candles(s, gaps[s] + self.tf_ms), gaps,
                               self.config.max_parallel_workers, self.config.scan_timeout, self.cancel)
        for symbol, rows in fetched.results.items():
            self.store.merge(symbol, rows)
        self._note_failures(list(gaps), fetched.failed, fetched.timed_out)
        return sorted(set(fetched.failed) | set(fetched.timed_out))

    def _note_failures(self, universe: list[str], failed: Mapping[str, str], timed_out: list[str]) -> None:
        """Count failures per pair; log a pair's first failure and its recovery, not every cycle."""
        bad = dict(failed) | {s: f"no answer within SCAN_TIMEOUT={self.config.scan_timeout:g}s" for s in timed_out}
        for symbol in universe:
            if symbol in bad:
                if self.failure_counts.get(symbol, 0) == 0:
                    log.warning("fetching %s failed: %s (logged once until it recovers)", symbol, bad[symbol])
                self.failure_counts[symbol] = self.failure_counts.get(symbol, 0) + 1
            elif self.failure_counts.get(symbol):
                log.info("%s recovered after %d failed fetches", symbol, self.failure_counts[symbol])
                self.failure_counts[symbol] = 0

    # -- indicators ---------------------------------------------------------------------
    def sync_indicators(self, universe: list[str]) -> None:
        """Bring the streaming indicators up to date: O(1) per new candle per pair."""
        keep = set(universe)
        gone = [i for i, s in enumerate(self._rows) if s not in keep or self._needs_rebuild(s)]
        if gone and self._indicators is not None:
            self._indicators.remove_rows(np.array(gone))
            for i in reversed(gone):
                self._row_ts.pop(self._rows.pop(i))
        for symbol in universe:
            if symbol not in self._row_ts:
                self._add_row(symbol)
        self._stream_new_candles()

    def _needs_rebuild(self, symbol: str) -> bool:
        candles = self.store.get(symbol)
        last = self._row_ts.get(symbol)
        # The row fell out of the stored window (a long outage): rebuild it from history.
        return candles is None or last is None or last < candles[0, 0]

    def _add_row(self, symbol: str) -> None:
        candles = self.store.get(symbol)
        if candles is None or len(candles) < MIN_CANDLES:
            return
        cols = [candles[None, :, k] for k in range(1, 6)]
        if self._indicators is None:
            self._indicators = StreamingIndicators.from_history(*cols)
        else:
            self._indicators.add_pairs(*cols)
        self._rows.append(symbol)
        self._row_ts[symbol] = int(candles[-1, 0])

    def _stream_new_candles(self) -> None:
        while True:
            rows, bars = [], []
            for i, symbol in enumerate(self._rows):
                candles = self.store.get(symbol)
                newer = np.flatnonzero(candles[:, 0] > self._row_ts[symbol])
                if len(newer):
                    rows.append(i)
                    bars.append(candles[newer[0]])
                    self._row_ts[symbol] = int(candles[newer[0], 0])
            if not rows:
                return
            b = np.array(bars)
            self._indicators.update(b[:, 1], b[:, 2], b[:, 3], b[:, 4], b[:, 5], rows=np.array(rows))

    def build_view(self) -> MarketView | None:
        """A view of the pairs that are up to date with the newest closed candle."""
        if not self._rows:
            return None
        newest = max(self._row_ts.values())
        fresh = [i for i, s in enumerate(self._rows) if self._row_ts[s] == newest]
        k = self.history_needed + 1
        latest = {name: values[fresh] for name, values in self._indicators.latest().items()}
        candles = [self.store.get(self._rows[i]) for i in fresh]
        recent = np.stack([a[-k:, 4] for a in candles])
        last = np.stack([a[-1] for a in candles])
        latest.update(zip(("open", "high", "low", "close", "volume"), last[:, 1:].T))
        if self.strategy is not None:
            latest.update(self._strategy_columns(candles))
        return MarketView(tuple(self._rows[i] for i in fresh), latest, recent, newest + self.tf_ms)

    def _strategy_columns(self, candles: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The strategy's own columns (and the market index, if it reads it) at each pair's
        latest candle, computed over the stored window; the market is every stored pair."""
        s = self.strategy
        market = market_index(self.store.as_dict()) if s.market_period > 0 else None
        rows = [{k: v[-1] for k, v in own_columns(a, s, market).items()} for a in candles]
        return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]} if rows else {}

    # -- the scan -----------------------------------------------------------------------
    def scan(self) -> ScanResult:
        """Universe, candles and indicators; served from the cache within its TTL."""
        cached = self.cache.get()
        if cached is not None:
            return ScanResult(cached.view, cached.universe, {}, (), True)
        universe = self.universe_cache.get()
        if universe is None:
            universe = self.select_universe(self.client.fetch_tickers())
            self.universe_cache.put(universe)
        for symbol in set(self.store.symbols()) - set(universe):
            self.store.drop(symbol)
        # the candles that closed within the grace come from the stream (if it is up)
        now_ms = int(self.client.clock() * 1000) - self.stream_grace_ms
        fetched = run_parallel(lambda symbol: self._fetch_candles(symbol, now_ms), universe,
                               self.config.max_parallel_workers, self.config.scan_timeout, self.cancel)
        for symbol, rows in fetched.results.items():
            self.store.merge(symbol, rows)
        self._note_failures(universe, fetched.failed, fetched.timed_out)
        self.sync_indicators(universe)
        result = ScanResult(self.build_view(), tuple(universe), fetched.failed,
                            tuple(fetched.timed_out), False)
        self.cache.put(result)
        return result

    def fresh_prices(self, symbols: Iterable[str]) -> dict[str, float]:
        """Current sell-side prices (bid, else last) for exits: never cached.

        One bookTicker request for all symbols where the exchange has it (Binance does),
        else one ticker per symbol in parallel.
        """
        symbols = list(symbols)
        if not symbols:
            return {}
        if self.client.ccxt.has.get("fetchBidsAsks"):
            quotes = self.client.call("fetch_bids_asks", symbols)
            failed: dict[str, str] = {}
        else:
            done = run_parallel(lambda s: self.client.call("fetch_ticker", s), symbols,
                                self.config.max_parallel_workers, self.config.scan_timeout, self.cancel)
            quotes, failed = done.results, dict(done.failed) | dict.fromkeys(done.timed_out, "timed out")
        prices = {}
        for symbol in symbols:
            quote = quotes.get(symbol) or {}
            price = quote.get("bid") or quote.get("last")
            if price:
                prices[symbol] = float(price)
            else:
                failed.setdefault(symbol, "no price in the answer")
        self._note_failures(symbols, failed, [])
        return prices

    def history(self) -> dict[str, np.ndarray]:
        """The closed candles held per pair (the ML model bootstraps from these)."""
        return self.store.as_dict()

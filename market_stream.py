"""Market data and account events over WebSocket (ccxt.pro), published into a Feed.

One background thread runs one asyncio loop; the rest of the bot stays synchronous. The
loop runs *sessions*: a fresh ``ccxt.pro`` exchange watching, for the wanted pairs,

- ``candle`` (critical): each candle of the decision timeframe once it has closed, as
  ``(symbol, [ts, o, h, l, c, v])``. ccxt's unified candles carry no "closed" flag; but every
  kline message carries the candle's whole state, and within one connection the exchange
  sends a candle's final state before the next candle's first, so a candle is published
  once a newer one is in the session's cache. Each session starts with an empty cache, so
  nothing seen on a broken connection is trusted: REST fills the gap;
- ``price``: ``{symbol: (bid, ask)}`` from the best bid/ask stream;
- ``order`` and ``balance`` (critical, only with keys): the account's order updates and
  balances, from the user-data stream.

Every session fault (a closed connection, an error, a market stream silent for longer than
``stale_after`` seconds: a stalled stream, or the exchange's 24-hour disconnect) ends the
session. ``status`` messages (critical) say when streams go down and come back; the loop
reconnects after an exponential backoff with full jitter. The stream never writes anything
but the feed: the trading loop decides what to do with what arrives (and catches up over
REST after a gap).
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from exchange import full_jitter
from feed import Feed

log = logging.getLogger(__name__)

TOPICS = ("candle", "price", "order", "balance", "status")
BACKOFF_BASE = 0.5        # seconds before the first reconnect (then doubled, with jitter)
BACKOFF_CAP = 60.0


class StreamStalled(Exception):
    """A market stream sent nothing for longer than allowed."""


@dataclass
class StreamState:
    """What the monitor and the status line know of one stream."""

    messages: int = 0
    last_wall: float | None = None      # monotonic time of the last message
    connected: bool = False

    def staleness(self) -> float | None:
        return None if self.last_wall is None else time.monotonic() - self.last_wall


@dataclass
class _Session:
    """One connection: its exchange, pairs, and what it published of each pair."""

    exchange: Any
    symbols: tuple[str, ...]
    published: dict[str, float] = field(default_factory=dict)    # newest closed candle
    quotes: dict[str, tuple] = field(default_factory=dict)       # newest (bid, ask)


class MarketStream:
    """Streams for the wanted pairs on a background asyncio loop (see the module doc).

    make_exchange: builds a fresh ccxt.pro exchange (markets set, no request needed);
    private: also watch orders and balances (live trading).
    """

    def __init__(self, make_exchange: Callable[[], Any], feed: Feed, timeframe: str | None,
                 stale_after: float, private: bool = False, seed: int | None = None):
        self.make_exchange, self.feed, self.timeframe = make_exchange, feed, timeframe
        self.stale_after, self.private = stale_after, private
        self.streams = {name: StreamState() for name in self._stream_names()}
        self.reconnects = 0
        self.up = False
        self.last_error: str | None = None
        self._rng = random.Random(seed)
        self._symbols: tuple[str, ...] = ()
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()

    def _stream_names(self) -> tuple[str, ...]:
        return self._market_streams() + (("orders", "balance") if self.private else ())

    def _market_streams(self) -> tuple[str, ...]:
        """The streams that must never fall silent (the account's may, when nothing trades)."""
        return ("candles", "prices") if self.timeframe else ("prices",)

    # -- the synchronous side ------------------------------------------------------------
    def start(self) -> "MarketStream":
        self._thread = threading.Thread(target=self._run_loop, name="market-stream", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)
        return self

    def watch(self, symbols) -> None:
        """Stream these pairs from now on (a new session starts if they changed)."""
        symbols = tuple(sorted(symbols))
        if symbols != self._symbols and self._loop is not None:
            self._loop.call_soon_threadsafe(self._set_symbols, symbols)

    def stop(self) -> None:
        self._stopping.set()
        if self._loop is not None and self._changed is not None:
            self._loop.call_soon_threadsafe(self._changed.set)
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def stats(self) -> dict:
        return {"up": self.up, "reconnects": self.reconnects, "last_error": self.last_error,
                "streams": {name: {"messages": s.messages, "connected": s.connected,
                                   "staleness_s": s.staleness()}
                            for name, s in self.streams.items()}}

    # -- the loop ------------------------------------------------------------------------
    def _run_loop(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    def _set_symbols(self, symbols: tuple[str, ...]) -> None:
        self._symbols = symbols
        self._changed.set()

    async def _main(self) -> None:
        self._changed = asyncio.Event()
        self._ready.set()
        attempt = 0
        while not self._stopping.is_set():
            if not self._symbols:
                await self._changed.wait()
                self._changed.clear()
                continue
            healthy = await self._session()
            if self._stopping.is_set():
                break
            if healthy:
                attempt = 0
                continue
            self.reconnects += 1
            delay = full_jitter(attempt, BACKOFF_BASE, BACKOFF_CAP, self._rng)
            attempt += 1
            try:
                await asyncio.wait_for(self._changed.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _session(self) -> bool:
        """Run one session until the pairs change (True) or a fault ends it (False)."""
        self._changed.clear()
        try:
            session = _Session(self.make_exchange(), self._symbols)
        except Exception as exc:    # e.g. the markets could not be loaded over REST
            self._down(exc)
            return False
        started = time.monotonic()
        tasks = [asyncio.ensure_future(self._watch_prices(session))]
        if self.timeframe:
            tasks.append(asyncio.ensure_future(self._watch_candles(session)))
        if self.private:
            tasks += [asyncio.ensure_future(self._watch_orders(session)),
                      asyncio.ensure_future(self._watch_balance(session))]
        changed = asyncio.ensure_future(self._changed.wait())
        watchdog = asyncio.ensure_future(self._watchdog(started))
        try:
            done, _ = await asyncio.wait(tasks + [changed, watchdog],
                                         return_when=asyncio.FIRST_COMPLETED)
            fault = next((t.exception() for t in done if t is not changed and not t.cancelled()
                          and t.exception() is not None), None)
        finally:
            for t in tasks + [changed, watchdog]:
                t.cancel()
            await asyncio.gather(*tasks, changed, watchdog, return_exceptions=True)
            await self._close(session.exchange)
            for s in self.streams.values():
                s.connected = False
        if fault is None or self._stopping.is_set():
            return True
        self._down(fault)
        return False

    @staticmethod
    async def _close(exchange) -> None:
        try:
            await exchange.close()
        except Exception as exc:   # closing a broken connection may fail too; nothing to do
            log.debug("closing the stream exchange: %s", exc)

    async def _watchdog(self, started: float) -> None:
        """Raise StreamStalled when a market stream is silent for longer than stale_after."""
        while True:
            await asyncio.sleep(min(1.0, self.stale_after / 4))
            now = time.monotonic()
            for name in self._market_streams():
                last = self.streams[name].last_wall
                if now - max(started, last if last is not None else started) > self.stale_after:
                    raise StreamStalled(f"{name} stream silent for more than "
                                        f"{self.stale_after:g}s")

    def _note(self, name: str) -> None:
        state = self.streams[name]
        state.messages += 1
        state.last_wall = time.monotonic()
        if not state.connected:
            state.connected = True
            if not self.up and all(self.streams[n].connected for n in self._market_streams()):
                self.up = True
                self.feed.publish("status", {"up": True, "error": None}, critical=True)

    def _down(self, fault: BaseException) -> None:
        self.last_error = f"{type(fault).__name__}: {fault}"[:300]
        if self.up:
            self.up = False
            self.feed.publish("status", {"up": False, "error": self.last_error}, critical=True)

    # -- the watchers --------------------------------------------------------------------
    async def _watch_candles(self, session: _Session) -> None:
        pairs = [[s, self.timeframe] for s in session.symbols]
        ex = session.exchange
        while True:
            await ex.watch_ohlcv_for_symbols(pairs)
            self._note("candles")
            # ccxt resolves one waiting call per message: updates of other pairs that came
            # meanwhile are only in its cache, so read every pair's cache
            for symbol in session.symbols:
                rows = ex.ohlcvs.get(symbol, {}).get(self.timeframe)
                if rows:
                    self._closed_candles(session, symbol, rows)

    def _closed_candles(self, session: _Session, symbol: str, rows) -> None:
        """Publish the cached candles older than the newest (closed: see the module doc) that
        were not published yet in this session."""
        last = session.published.get(symbol, -1)
        if len(rows) < 2 or rows[-2][0] <= last:
            return
        first = len(rows) - 2
        while first > 0 and rows[first - 1][0] > last:
            first -= 1
        for i in range(first, len(rows) - 1):
            self.feed.publish("candle", (symbol, [float(x) for x in rows[i]]), critical=True)
        session.published[symbol] = rows[-2][0]

    async def _watch_prices(self, session: _Session) -> None:
        ex = session.exchange
        while True:
            await ex.watch_bids_asks(list(session.symbols))
            self._note("prices")
            quotes = {}
            for symbol in session.symbols:      # the cache, as for candles
                t = ex.bidsasks.get(symbol) or {}
                quote = (t.get("bid"), t.get("ask"))
                if quote[0] and session.quotes.get(symbol) != quote:
                    quotes[symbol] = session.quotes[symbol] = quote
            if quotes:
                self.feed.publish("price", quotes)

    async def _watch_orders(self, session: _Session) -> None:
        while True:
            for order in await session.exchange.watch_orders():
                self._note("orders")
                self.feed.publish("order", order, critical=True)

    async def _watch_balance(self, session: _Session) -> None:
        while True:
            balance = await session.exchange.watch_balance()
            self._note("balance")
            self.feed.publish("balance", {"free": dict(balance.get("free") or {}),
                                          "total": dict(balance.get("total") or {})},
                              critical=True)

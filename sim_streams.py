"""The simulated market streamed in Binance's spot WebSocket dialect (aiohttp server).

`sim_exchange.SimExchangeServer` starts a `StreamServer` beside its REST server, so an
unmodified ``ccxt.pro.binance`` (configured with ``sim_exchange.ccxt_overrides(url,
stream_url)``) streams from the same `SimMarket` and the same account.

Market streams (https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams):
raw ``/ws/<stream>`` sends payloads bare, combined ``/stream?streams=a/b`` wraps them as
``{"stream": name, "data": payload}``; ``/ws/<anything else>`` (ccxt opens ``/ws/0``) waits
for subscriptions. Live requests: ``SUBSCRIBE``/``UNSUBSCRIBE`` (answer ``{"result": null,
"id": N}``), ``LIST_SUBSCRIPTIONS``; a bad request answers ``{"error": {"code": 2|3, "msg"},
"id": N}``. Stream names are lower-case ids, and an unknown name is refused (Binance would
accept it and stay silent). The server pings every 20 s (aiohttp's heartbeat, which drops a
client that has not answered within 10 s; Binance waits a minute) and answers pings.

- ``<s>@kline_<1m..1d>``: the open candle whenever it changed (every tick, faster than
  Binance's 2 s), then each candle that closed since, in order, once, with ``"x": true`` and
  exactly the values ``/api/v3/klines`` answers for it. ``f``/``L`` (trade ids) are synthetic:
  the candle's open time and open time + n - 1.
- ``<s>@bookTicker``: ``{"u","s","b","B","a","A"}`` when the best levels changed.
- ``<s>@trade``: the sim has no tape, so a tick whose last price moved makes ONE synthetic
  trade at the new price for the volume traded since the last one (at least one lot); ``m``
  (buyer is maker) when the price fell; the id is the market-clock ms.
- ``<s>@depth5|10|20[@100ms]``: partial book ``{"lastUpdateId","bids","asks"}``.
- ``<s>@depth[@100ms]``: diff depth ``depthUpdate`` events (U, u, b, a) over the top
  `DIFF_LEVELS` levels, every tick whatever the suffix. While one streams, ``/api/v3/depth``
  answers the book last published (``lastUpdateId`` = its ``u``), so a REST snapshot plus
  the events rebuild the book exactly, as Binance's recipe (and ccxt's ``watch_order_book``)
  expects.
- ``<s>@ticker`` / ``<s>@miniTicker``: the 24h ticker, once a second.
Updates go out every `tick_seconds` (default 0.1 s wall; the market clock runs ``speed``
times faster), once a second for the partial books without ``@100ms`` and the tickers.

User data (one account; times on the market clock): the deprecated listenKey stream,
``/ws/<listenKey>`` after ``POST /api/v3/userDataStream`` (closed with a
``listenKeyExpired`` event when the key expires or is deleted), and the WebSocket API that
ccxt 4.5 uses for spot: ``/ws-api/v3`` with ``userDataStream.subscribe.signature`` (apiKey,
timestamp, HMAC-SHA256 signature of the sorted params) answering ``{"id", "status": 200,
"result": {"subscriptionId": N}}``, then events wrapped ``{"subscriptionId": N, "event":
{...}}``. Events: ``executionReport`` (NEW on placing, TRADE per fill, CANCELED, EXPIRED; a
stop that triggers sends NEW again with its working time, then its fills) and
``outboundAccountPosition`` with the assets of the orders just reported. Stops and resting
orders are matched each tick while a user-data subscriber exists, so a triggered stop is
reported within about a tick without any REST request.

Fault knobs (`StreamFaults`, changed through the SimExchangeServer's ``configure``):
``stream_latency`` seconds before each message; ``stream_stall`` keeps connections open
(pings and pongs go on) but sends nothing; ``stream_max_age`` closes a connection that old
(Binance: 24 h); `StreamServer.drop_all` cuts every connection now. A client that does not
read fast enough is dropped once `MAX_PENDING` messages wait for it, as Binance does.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from aiohttp import WSMsgType, web

from sim_market import INTERVAL_MINUTES, MINUTE_MS, BinanceError, SimMarket, f8

logger = logging.getLogger(__name__)

MAX_PENDING = 5000          # messages queued for one connection before it is dropped
DIFF_LEVELS = 1000          # levels per side tracked by the diff-depth streams
SLOW_PERIOD_S = 1.0         # update period of the 1000 ms partial books and the tickers
LISTEN_KEY_TTL_S = 3600.0   # a listenKey lives 60 minutes after its creation or keep-alive
_ZERO = "0.00000000"


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass
class StreamFaults:
    """The stream fault knobs (all off by default; max_age as Binance's 24 hours)."""
    latency: float = 0.0
    stall: bool = False
    max_age: float = 86400.0


# ----------------------------------------------------------------------------- auth

class ListenKeys:
    """The account's listenKeys (``/api/v3/userDataStream``), expiring on the wall clock."""

    def __init__(self, ttl_s: float = LISTEN_KEY_TTL_S):
        self.ttl_s = ttl_s
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def alive(self, key: str) -> bool:
        with self._lock:
            return self._expiry.get(key, 0.0) > time.monotonic()

    def answer(self, method: str, params: dict) -> dict:
        """POST: the active key (extended) or a new one; PUT: keep-alive; DELETE: close."""
        with self._lock:
            now = time.monotonic()
            self._expiry = {k: t for k, t in self._expiry.items() if t > now}
            if method == "POST":
                key = next(iter(self._expiry), None) or "".join(
                    secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
                    for _ in range(60))
                self._expiry[key] = now + self.ttl_s
                return {"listenKey": key}
            key = params.get("listenKey")
            if not key:
                raise BinanceError(-1102, "Mandatory parameter 'listenKey' was not sent, was "
                                          "empty/null, or malformed.")
            if key not in self._expiry:
                raise BinanceError(-1125, "This listenKey does not exist.")
            if method == "PUT":
                self._expiry[key] = now + self.ttl_s
            else:
                del self._expiry[key]
            return {}


def check_signature(params: dict, api_key: str, secret: bytes) -> None:
    """BinanceError unless a WebSocket API request carries the API key, a fresh timestamp
    (wall clock) and the HMAC-SHA256 signature of its other params sorted by name."""
    if not hmac.compare_digest(str(params.get("apiKey", "")), api_key):
        raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
    for name in ("timestamp", "signature"):
        if not params.get(name):
            raise BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was "
                                      "empty/null, or malformed.")
    now, stamp = time.time() * 1000, int(params["timestamp"])
    if stamp >= now + 1000 or now - stamp > int(params.get("recvWindow", 5000)):
        raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")
    payload = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "signature")
    expected = hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(params["signature"]).lower()):
        raise BinanceError(-1022, "Signature for this request is not valid.")


# ----------------------------------------------------------------------------- payloads

def execution_report(order, exec_type: str, now: int, event_ms: int, fill: tuple | None = None,
                     cancel_id: str = "", exec_id: int = 0) -> dict:
    """Binance's ``executionReport`` for a sim order (a ``sim_account._Order``) at market
    time `now`; fill: (price, qty, fee, fee asset, trade id, maker) of a TRADE."""
    price, qty, fee, fee_asset, trade_id, maker = fill or (0, 0, 0, None, -1, False)
    status = (("FILLED" if order.rest == 0 else "PARTIALLY_FILLED") if exec_type == "TRADE"
              else order.status)
    report = {
        "e": "executionReport", "E": event_ms, "s": order.symbol,
        "c": cancel_id or order.client_id, "S": order.side, "o": order.type, "f": order.tif,
        "q": f8(order.orig_qty), "p": f8(order.price), "P": f8(order.stop_price), "F": _ZERO,
        "g": order.list_id, "C": order.client_id if cancel_id else "", "x": exec_type,
        "X": status, "r": "NONE", "i": order.order_id, "l": f8(qty), "z": f8(order.executed),
        "L": f8(price), "n": f8(fee) if fill else "0", "N": fee_asset, "T": now, "t": trade_id,
        "I": exec_id, "w": order.type != "MARKET" and not order.dormant
        and status in ("NEW", "PARTIALLY_FILLED"), "m": maker, "M": False, "O": order.time,
        "Z": f8(order.cum_quote), "Y": f8(price * qty), "Q": f8(order.orig_quote), "V": "NONE"}
    if not order.dormant:
        report["W"] = order.working_time
    return report


def _kline_event(row: list, interval: str, closed: bool, now: int, symbol: str) -> dict:
    """A ``kline`` event from a REST klines row (the same strings)."""
    t, o, h, l, c, v, close_time, q, n, taker_v, taker_q, ignore = row
    return {"e": "kline", "E": now, "s": symbol, "k": {
        "t": t, "T": close_time, "s": symbol, "i": interval, "f": t if n else -1,
        "L": t + n - 1 if n else -1, "o": o, "c": c, "h": h, "l": l, "v": v, "n": n,
        "x": closed, "q": q, "V": taker_v, "Q": taker_q, "B": ignore}}


def _ticker_event(t: dict, now: int, mini: bool) -> dict:
    """A ``24hrTicker`` (or ``24hrMiniTicker``) event from a REST 24h ticker entry."""
    out = {"e": "24hrMiniTicker" if mini else "24hrTicker", "E": now, "s": t["symbol"]}
    keys = ("c lastPrice o openPrice h highPrice l lowPrice v volume q quoteVolume" if mini else
            "p priceChange P priceChangePercent w weightedAvgPrice x prevClosePrice c lastPrice "
            "Q lastQty b bidPrice B bidQty a askPrice A askQty o openPrice h highPrice "
            "l lowPrice v volume q quoteVolume O openTime C closeTime F firstId L lastId n count")
    pairs = keys.split()
    return out | {pairs[i]: t[pairs[i + 1]] for i in range(0, len(pairs), 2)}


class _Spec(NamedTuple):
    """A market stream: Binance symbol, kind, argument (interval, levels), 1000 ms speed."""
    symbol: str
    kind: str
    arg: str = ""
    slow: bool = False


_STREAM_RE = re.compile(r"([a-z0-9]+)@(?:kline_(\w+)|(bookTicker|trade|ticker|miniTicker)"
                        r"|depth(5|10|20)?(@100ms|@1000ms)?)")


def parse_stream(name: str, symbols: set[str]) -> _Spec | None:
    """The market stream a name denotes, None when it denotes none."""
    m = _STREAM_RE.fullmatch(name)
    if not m or m.group(1).upper() not in symbols:
        return None
    symbol, interval, plain, levels, speed = m.groups()
    symbol = symbol.upper()
    if interval is not None:
        return _Spec(symbol, "kline", interval) if interval in INTERVAL_MINUTES else None
    if plain:
        return _Spec(symbol, plain, slow=plain in ("ticker", "miniTicker"))
    if not levels:
        return _Spec(symbol, "diff")
    return _Spec(symbol, "depth", levels, speed != "@100ms")


# ----------------------------------------------------------------------------- feeds

@dataclass
class _Book:
    """Diff-depth state of one symbol: the published (u, bids, asks), which REST depth
    answers, and this tick's event."""
    state: tuple[int, dict, dict]
    event: dict | None = None


def _changes(old: dict, new: dict) -> dict:
    """Levels (price -> qty) that differ from `old` to `new`; vanished ones at qty 0."""
    out = {p: q for p, q in new.items() if old.get(p) != q}
    out.update((p, _ZERO) for p in old if p not in new)
    return out


class _Feeds:
    """Per-stream state and each tick's payloads (run off the event loop, under `lock`)."""

    def __init__(self, market: SimMarket, account):
        self.market, self.account = market, account
        self.lock = threading.Lock()
        self.specs: dict[str, _Spec] = {}
        self.state: dict[str, object] = {}
        self.books: dict[str, _Book] = {}

    def add(self, name: str, spec: _Spec) -> None:
        with self.lock:
            self.specs[name] = spec
            if spec.kind == "diff" and spec.symbol not in self.books:
                now = self.market.now_ms()
                self.books[spec.symbol] = _Book((now, *self._levels(spec.symbol, DIFF_LEVELS)))

    def remove(self, name: str) -> None:
        with self.lock:
            spec = self.specs.pop(name)
            self.state.pop(name, None)
            if spec.kind == "diff" and not any(s.kind == "diff" and s.symbol == spec.symbol
                                               for s in self.specs.values()):
                del self.books[spec.symbol]

    def depth_snapshot(self, symbol: str, limit: int) -> dict | None:
        """The diff-depth book last published for `symbol` (None when none streams)."""
        book = self.books.get(symbol)
        if book is None:
            return None
        u, bids, asks = book.state
        return {"lastUpdateId": u, "bids": [list(x) for x in itertools.islice(bids.items(), limit)],
                "asks": [list(x) for x in itertools.islice(asks.items(), limit)]}

    def tick(self, slow: bool) -> list[tuple[str, list[str]]]:
        """(stream name, JSON payloads in order) of everything that changed since last tick."""
        with self.lock:
            now = self.market.now_ms()
            for symbol, book in self.books.items():
                self._advance(symbol, book, now)
            wanted = [s.symbol for s in self.specs.values() if s.kind in ("ticker", "miniTicker")]
            tickers = ({t["symbol"]: t for t in self.market.ticker_24h(sorted(set(wanted)),
                                                                      self.account.depth)}
                       if slow and wanted else {})
            out = []
            for name, spec in self.specs.items():
                if slow or not spec.slow:
                    payloads = self._payloads(name, spec, now, tickers)
                    if payloads:
                        out.append((name, [_dumps(p) for p in payloads]))
            return out

    def _payloads(self, name: str, spec: _Spec, now: int, tickers: dict) -> list:
        if spec.kind == "kline":
            return self._klines(name, spec, now)
        if spec.kind == "diff":
            event = self.books[spec.symbol].event
            return [event] if event else []
        if spec.kind in ("ticker", "miniTicker"):
            return [_ticker_event(tickers[spec.symbol], now, spec.kind == "miniTicker")]
        if spec.kind == "trade":
            return self._trade(name, spec, now)
        if spec.kind == "bookTicker":
            row = self.market.book_ticker([spec.symbol], self.account.depth)[0]
            payload = {"s": spec.symbol, "b": row["bidPrice"], "B": row["bidQty"],
                       "a": row["askPrice"], "A": row["askQty"]}
        else:
            bids, asks = self._levels(spec.symbol, int(spec.arg))
            payload = {"bids": [list(x) for x in bids.items()], "asks": [list(x) for x in asks.items()]}
        last_id, last = self.state.get(name, (0, None))
        if payload == last:
            return []
        update_id = max(now, last_id + 1)
        self.state[name] = (update_id, payload)
        return [({"u": update_id} | payload) if spec.kind == "bookTicker"
                else {"lastUpdateId": update_id} | payload]

    def _levels(self, symbol: str, levels: int) -> tuple[dict, dict]:
        book = self.market.order_book(symbol, levels, self.account.depth)
        return ({f8(p): f8(q) for p, q in book["bids"]}, {f8(p): f8(q) for p, q in book["asks"]})

    def _advance(self, symbol: str, book: _Book, now: int) -> None:
        """Publish the symbol's book as it is now, and the event that leads there."""
        u, old_bids, old_asks = book.state
        bids, asks = self._levels(symbol, DIFF_LEVELS)
        db, da = _changes(old_bids, bids), _changes(old_asks, asks)
        book.event = None
        if db or da:
            book.state = (max(now, u + 1), bids, asks)
            book.event = {"e": "depthUpdate", "E": now, "s": symbol, "U": u + 1,
                          "u": book.state[0], "b": list(db.items()), "a": list(da.items())}

    def _klines(self, name: str, spec: _Spec, now: int) -> list:
        """The candles closed since the last tick (final, x true), then the open one if it
        changed; the same rows as REST /api/v3/klines."""
        iv = INTERVAL_MINUTES[spec.arg] * MINUTE_MS
        current = now // iv * iv
        start, last = self.state.get(name, (current, None))
        events = []
        while start <= current:
            rows = self.market.klines(spec.symbol, spec.arg, start, current, 1000)
            if not rows:
                break
            for row in rows:
                if row[0] < current:
                    events.append(_kline_event(row, spec.arg, True, now, spec.symbol))
                elif row != last:
                    events.append(_kline_event(row, spec.arg, False, now, spec.symbol))
                    last = row
            start = rows[-1][0] + iv
        self.state[name] = (current, last)
        return events

    def _trade(self, name: str, spec: _Spec, now: int) -> list:
        """One synthetic trade when the last price moved: the volume since the last one."""
        minute = now // MINUTE_MS * MINUTE_MS
        since, seen, price, last_id = self.state.get(name, (minute, 0.0, None, 0))
        rows = self.market.klines(spec.symbol, "1m", since, None, 1000)
        if not rows or rows[-1][4] == price:    # no new price: the volume keeps counting
            return []
        close, trade_id = rows[-1][4], max(now, last_id + 1)
        self.state[name] = (rows[-1][0], float(rows[-1][5]), close, trade_id)
        if price is None:
            return []
        step = self.market.specs[self.market.index(spec.symbol)].step
        volume = sum(float(r[5]) for r in rows) - seen
        return [{"e": "trade", "E": now, "s": spec.symbol, "t": trade_id, "p": close,
                 "q": f8(max(step, volume // step * step)), "T": now,
                 "m": float(close) < float(price), "M": True}]


# ----------------------------------------------------------------------------- server

class _Conn:
    """One WebSocket connection: what it subscribed to and its bounded outgoing queue."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, combined: bool):
        self.ws, self.request, self.combined = ws, request, combined
        self.names: dict[str, None] = {}           # subscribed streams, in order
        self.api_subs: list[int] = []              # WebSocket API user-data subscriptions
        self.opened = time.monotonic()
        self.pending: deque[tuple[float, str]] = deque()
        self.wake = asyncio.Event()
        self.closing = False                       # send what is queued, then close
        self.gone = False
        self.pump: asyncio.Task | None = None


class StreamServer:
    """Binance spot WebSocket streams over a SimMarket and the sim's account, on an asyncio
    loop of its own thread. `account` is the sim_account account: its ``depth``,
    ``match_open_orders()``, ``free``/``locked`` balances, ``_lock`` and ``listeners``."""

    def __init__(self, market: SimMarket, account, api_key: str, api_secret: bytes,
                 listen_keys: ListenKeys, faults: StreamFaults | None = None,
                 host: str = "127.0.0.1", port: int = 0, tick_seconds: float = 0.1,
                 heartbeat: float = 20.0):
        self.market, self.account = market, account
        self.api_key, self._secret = api_key, api_secret
        self.listen_keys, self.faults = listen_keys, faults or StreamFaults()
        self.host, self.port = host, port
        self.tick_seconds, self.heartbeat = tick_seconds, heartbeat
        self._feeds = _Feeds(market, account)
        self._symbols = set(market.ids)
        self._conns: set[_Conn] = set()
        self._by_name: dict[str, set[_Conn]] = {}
        self._user_count = 0                # listenKey streams + WebSocket API subscriptions
        self._user_events: deque[dict] = deque()
        self._flush_due = False
        self._exec_ids, self._sub_ids = itertools.count(1), itertools.count(0)
        self._stats = dict.fromkeys(("connections", "messages", "withheld", "dropped",
                                     "too_slow", "max_age"), 0)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle
    def start(self) -> "StreamServer":
        ready, failure = threading.Event(), []
        self._thread = threading.Thread(target=self._run, args=(ready, failure),
                                        name="sim-streams", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        self.account.listeners.append(self._on_order)
        logger.info("simulated streams listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._on_order in self.account.listeners:
            self.account.listeners.remove(self._on_order)
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._thread.join(5)
        self._loop = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _run(self, ready: threading.Event, failure: list) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except Exception as exc:    # an unusable host or port: start() raises it
            failure.append(exc)
        ready.set()
        if not failure:
            loop.run_forever()
        loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        for path in ("/ws", "/ws/{name}", "/stream", "/ws-api/v3"):
            app.router.add_get(path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        self._loop = asyncio.get_running_loop()
        self._ticker = asyncio.create_task(self._tick_loop())

    async def _shutdown(self) -> None:
        self._ticker.cancel()
        for conn in list(self._conns):
            self._abort(conn)
        await self._runner.cleanup()
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.stop)       # after this coroutine's result reaches stop()

    # -- knobs and counters (callable from any thread)
    def drop_all(self) -> None:
        """Cut every stream connection now (no close frame), as a network failure would."""
        def drop() -> None:
            for conn in list(self._conns):
                self._stats["dropped"] += 1
                self._abort(conn)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(drop)

    def stats(self) -> dict:
        """Counters: connections opened, open now, messages sent, withheld by a stall, and
        connections dropped (fault), too slow, closed at max age."""
        return dict(self._stats, open=len(self._conns))

    def depth_snapshot(self, symbol: str, limit: int) -> dict | None:
        """The book a diff-depth stream of `symbol` last published (what REST depth answers
        while one streams), None when none does."""
        return self._feeds.depth_snapshot(symbol, limit)

    # -- connections
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        api, combined = request.path == "/ws-api/v3", request.path == "/stream"
        names = (request.query.get("streams", "").split("/") if combined
                 else [request.match_info.get("name", "")])
        names = [n for n in names if n and not api]
        if (combined and not names) or any(("@" in n or combined) and not self._known(n)
                                           for n in names):
            return web.Response(status=400, text="Invalid request: unknown stream name")
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, compress=False)   # as Binance
        await ws.prepare(request)
        conn = _Conn(ws, request, combined)
        self._conns.add(conn)
        self._stats["connections"] += 1
        conn.pump = asyncio.create_task(self._pump(conn))
        for name in filter(self._known, names):     # /ws/0 waits for a SUBSCRIBE
            self._subscribe(conn, name)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._push(conn, _dumps(self._on_api(conn, msg.data) if api
                                            else self._on_request(conn, msg.data)))
        finally:
            self._forget(conn)
        return ws

    def _known(self, name: str) -> bool:
        """A market stream, or a live listenKey."""
        return parse_stream(name, self._symbols) is not None or (
            "@" not in name and self.listen_keys.alive(name))

    def _subscribe(self, conn: _Conn, name: str) -> None:
        if name in conn.names:
            return
        conn.names[name] = None
        subscribers = self._by_name.setdefault(name, set())
        if "@" not in name:
            self._user_count += 1
        elif not subscribers:
            self._feeds.add(name, parse_stream(name, self._symbols))
        subscribers.add(conn)

    def _unsubscribe(self, conn: _Conn, name: str) -> None:
        if name not in conn.names:
            return
        del conn.names[name]
        subscribers = self._by_name[name]
        subscribers.discard(conn)
        if "@" not in name:
            self._user_count -= 1
        elif not subscribers:
            self._feeds.remove(name)
        if not subscribers:
            del self._by_name[name]

    def _forget(self, conn: _Conn) -> None:
        if conn.gone:
            return
        conn.gone = True
        self._conns.discard(conn)
        for name in list(conn.names):
            self._unsubscribe(conn, name)
        self._user_count -= len(conn.api_subs)
        conn.pump.cancel()

    def _abort(self, conn: _Conn) -> None:
        """Close the connection at once, without a close frame."""
        if conn.request.transport is not None:
            conn.request.transport.abort()
        self._forget(conn)

    def _push(self, conn: _Conn, text: str, stream: str | None = None) -> None:
        """Queue one message, wrapped on a combined stream (withheld while stalled; a full
        queue drops the connection)."""
        if conn.gone or conn.closing:
            return
        if stream is not None and conn.combined:
            text = f'{{"stream":"{stream}","data":{text}}}'
        if self.faults.stall:
            self._stats["withheld"] += 1
        elif len(conn.pending) >= MAX_PENDING:
            self._stats["too_slow"] += 1
            logger.info("stream client too slow, dropping it")
            self._abort(conn)
        else:
            conn.pending.append((time.monotonic() + self.faults.latency, text))
            conn.wake.set()

    def _close(self, conn: _Conn) -> None:
        """Close the connection with a close frame once its queue is sent."""
        conn.closing = True
        conn.wake.set()

    async def _pump(self, conn: _Conn) -> None:
        """Send the queued messages in order, each once its latency has passed."""
        try:
            while True:
                await conn.wake.wait()
                conn.wake.clear()
                while conn.pending:
                    delay = conn.pending[0][0] - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await conn.ws.send_str(conn.pending.popleft()[1])
                    self._stats["messages"] += 1
                if conn.closing:
                    await conn.ws.close()
                    return
        except (ConnectionError, RuntimeError) as exc:   # the client went away
            logger.debug("stream send failed: %r", exc)

    # -- requests
    def _on_request(self, conn: _Conn, text: str) -> dict:
        """The answer to a SUBSCRIBE, UNSUBSCRIBE or LIST_SUBSCRIPTIONS request."""
        try:
            msg = json.loads(text)
        except ValueError as err:
            return {"error": {"code": 3, "msg": f"Invalid JSON: {err}"}, "id": None}
        msg = msg if isinstance(msg, dict) else {}
        method, params, error, result = msg.get("method"), msg.get("params") or [], None, None
        if method == "LIST_SUBSCRIPTIONS":
            result = list(conn.names)
        elif method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            error = f"Invalid request: unknown method {method!r}"
        elif not (isinstance(params, list) and all(isinstance(p, str) for p in params)):
            error = "Invalid request: params must be a list of stream names"
        elif bad := [p for p in params if not (self._known(p) or p in conn.names)]:
            error = f"Invalid request: unknown stream name {bad[0]!r}"
        else:
            for name in params:
                (self._subscribe if method == "SUBSCRIBE" else self._unsubscribe)(conn, name)
        return ({"error": {"code": 2, "msg": error}} if error else {"result": result}) | {
            "id": msg.get("id")}

    def _on_api(self, conn: _Conn, text: str) -> dict:
        """The answer to a WebSocket API request: user-data subscription, ping, time."""
        mid = None
        try:
            msg = json.loads(text)
            mid, method, params = msg.get("id"), msg.get("method"), msg.get("params") or {}
            if method == "userDataStream.subscribe.signature":
                check_signature(params, self.api_key, self._secret)
                conn.api_subs.append(next(self._sub_ids))
                self._user_count += 1
                result = {"subscriptionId": conn.api_subs[-1]}
            elif method == "userDataStream.unsubscribe":
                gone = [s for s in conn.api_subs if params.get("subscriptionId") in (None, s)]
                conn.api_subs = [s for s in conn.api_subs if s not in gone]
                self._user_count -= len(gone)
                result = {}
            elif method in ("ping", "time"):
                result = {"serverTime": int(time.time() * 1000)} if method == "time" else {}
            else:
                raise BinanceError(-1020, f"Unsupported method {method!r}.")
            return {"id": mid, "status": 200, "result": result}
        except (ValueError, AttributeError) as err:
            return {"id": mid, "status": 400, "error": {"code": -1000, "msg": str(err)}}
        except BinanceError as err:
            return {"id": mid, "status": err.status, "error": {"code": err.code, "msg": err.msg}}

    # -- publishing
    async def _tick_loop(self) -> None:
        """Each tick: match orders (while user data streams), send what changed, close what
        must close."""
        next_slow = 0.0
        while True:
            started = time.monotonic()
            slow = started >= next_slow
            next_slow = started + SLOW_PERIOD_S if slow else next_slow
            out = []
            if self._by_name or self._user_count:
                try:
                    out = await asyncio.to_thread(self._work, slow, self._user_count > 0)
                except Exception:   # keep streaming; the bug shows in the log
                    logger.exception("stream tick failed")
            for name, texts in out:
                for conn in list(self._by_name.get(name, ())):
                    for text in texts:
                        self._push(conn, text, name)
            self._police()
            await asyncio.sleep(max(0.0, self.tick_seconds - (time.monotonic() - started)))

    def _work(self, slow: bool, users: bool) -> list[tuple[str, list[str]]]:
        if users:
            self.account.match_open_orders()
        return self._feeds.tick(slow)

    def _police(self) -> None:
        """Close connections past the max age, and listenKey streams whose key died."""
        now = time.monotonic()
        for conn in [c for c in self._conns if not c.closing]:
            dead = [n for n in conn.names if "@" not in n and not self.listen_keys.alive(n)]
            if now - conn.opened > self.faults.max_age:
                self._stats["max_age"] += 1
                conn.pending.clear()
                self._close(conn)
            elif dead:
                for name in dead:
                    self._push(conn, _dumps({"e": "listenKeyExpired", "E": self.market.now_ms(),
                                             "listenKey": name}), name)
                self._close(conn)

    def _on_order(self, order, exec_type: str, now: int, fill: tuple | None = None,
                  cancel_id: str = "") -> None:
        """Account listener (any thread, under the account lock): queue the report."""
        if not self._user_count or self._loop is None:
            return
        self._user_events.append(execution_report(order, exec_type, now, self.market.now_ms(),
                                                  fill, cancel_id, next(self._exec_ids)))
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon_threadsafe(self._flush_user)

    def _flush_user(self) -> None:
        """Send the queued reports, then the balances of their assets (read once the account
        operation that made them is over: it holds the lock)."""
        self._flush_due = False
        with self.account._lock:
            events = [self._user_events.popleft() for _ in range(len(self._user_events))]
            assets = sorted({a for ev in events for a in self._assets(ev["s"])})
            balances = [{"a": a, "f": f8(self.account.free[a]), "l": f8(self.account.locked[a])}
                        for a in assets]
        now = self.market.now_ms()
        if balances:
            events.append({"e": "outboundAccountPosition", "E": now, "u": now, "B": balances})
        for event in map(_dumps, events):
            for conn in list(self._conns):
                for name in conn.names:
                    if "@" not in name and self.listen_keys.alive(name):
                        self._push(conn, event, name)
                for sub in conn.api_subs:
                    self._push(conn, f'{{"subscriptionId":{sub},"event":{event}}}')

    def _assets(self, symbol: str) -> tuple[str, str]:
        spec = self.market.specs[self.market.index(symbol)]
        return spec.base, spec.quote

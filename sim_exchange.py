"""The simulated market of `sim_market` served in Binance's spot REST dialect on 127.0.0.1.

An unmodified ``ccxt.binance`` client (configured with :func:`ccxt_overrides`) can load
markets, page through candles, read tickers and order books, and trade on it with signed
requests, so every code path of the bot can run offline. One account trades against the
synthetic book; request weights, 429/418 answers and injected faults behave like Binance's.

Two clocks (see the team contract): market data, orders and trades use the market clock
(``speed`` times wall-clock); ``/api/v3/time``, signatures' timestamp/recvWindow checks and
rate-limit windows use the wall clock.

Orders: MARKET, LIMIT and LIMIT_MAKER, stops and OCO lists, held and matched on the
market's 1m candles by `sim_account`'s account (see its docstring).

WebSocket streams (market streams, the user-data stream and the WebSocket API's user-data
subscription) are served beside the REST server by `sim_streams` (see its docstring;
``stream_url``, ``ccxt_overrides(url, stream_url)`` for ccxt.pro). ``POST/PUT/DELETE
/api/v3/userDataStream`` manage its listenKey (API key only, weight 2).

Fault knobs (``set_faults``, ``set_rate_limit``, ``set_book_depth``, or all at once with
``configure``; the stream knobs stream_latency, stream_stall, stream_max_age and the action
drop_streams) are also options of ``python sim_exchange.py`` (see ``--help``), and change at
run time through ``POST /sim/admin/faults`` (not Binance): from 127.0.0.1 only, with the
server's API key in ``X-MBX-APIKEY``, a JSON object of the knobs to change (latency,
error_rate, hang_rate, hang_seconds, drop_rate, lost_answers, symbols, rate_limit,
book_depth); it answers every knob now in force (``GET`` answers them unchanged).
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import SplitResult, parse_qsl, urlsplit

import ccxt

from sim_account import Account, integer_param, mandatory, symbol_param
from sim_market import BinanceError, SimMarket, f8
from sim_streams import ListenKeys, StreamFaults, StreamServer

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- ccxt

def ccxt_overrides(base_url: str, stream_url: str | None = None) -> dict:
    """Constructor config that points an unmodified ccxt.binance at a SimExchangeServer (and
    ccxt.pro.binance's streams at its stream_url, when given)."""
    base = base_url.rstrip("/")
    api: dict = {name: re.sub(r"^https?://[^/]+", base, url)
                 for name, url in ccxt.binance().describe()["urls"]["api"].items()}
    if stream_url:
        ws = stream_url.rstrip("/")
        api["ws"] = {"spot": ws + "/ws", "margin": ws + "/ws", "ws-api": {"spot": ws + "/ws-api/v3"}}
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
    after_processing: float = 0.0     # share of the faults that strike after processing


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


# (method, path) -> (weight function, signed: True, False or "key" for the API key alone)
_ROUTES: dict[tuple[str, str], tuple[Callable[[dict], int], bool | str]] = {
    ("GET", "/api/v3/ping"): (lambda p: 1, False),
    ("GET", "/api/v3/time"): (lambda p: 1, False),
    ("GET", "/api/v3/sim/clock"): (lambda p: 1, False),   # not Binance: the market clock
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
    ("POST", "/api/v3/orderList/oco"): (lambda p: 1, True),
    ("POST", "/api/v3/order/oco"): (lambda p: 1, True),
    ("GET", "/api/v3/orderList"): (lambda p: 4, True),
    ("DELETE", "/api/v3/orderList"): (lambda p: 1, True),
    ("GET", "/api/v3/openOrderList"): (lambda p: 6, True),
    ("GET", "/api/v3/allOrderList"): (lambda p: 20, True),
    **{(m, "/api/v3/userDataStream"): (lambda p: 2, "key") for m in ("POST", "PUT", "DELETE")},
}
ADMIN_PATH = "/sim/admin/faults"    # not Binance: the knobs at run time (see the module doc)
_LOOPBACK = ("127.0.0.1", "::1")


def _check_knobs(knobs: dict) -> None:
    """ValueError naming the first knob out of range."""
    for name in ("error_rate", "hang_rate", "drop_rate", "lost_answers"):
        if not (isinstance(knobs[name], (int, float)) and 0 <= knobs[name] <= 1):
            raise ValueError(f"{name} must be a share between 0 and 1, not {knobs[name]!r}")
    if knobs["error_rate"] + knobs["hang_rate"] + knobs["drop_rate"] > 1:
        raise ValueError("error_rate + hang_rate + drop_rate must not exceed 1")
    for name in ("latency", "hang_seconds", "stream_latency"):
        if not (isinstance(knobs[name], (int, float)) and 0 <= knobs[name] <= 3600):
            raise ValueError(f"{name} must be between 0 and 3600 seconds, not {knobs[name]!r}")
    if not (type(knobs["rate_limit"]) is int and knobs["rate_limit"] >= 1):
        raise ValueError(f"rate_limit must be a whole weight >= 1, not {knobs['rate_limit']!r}")
    if not (isinstance(knobs["book_depth"], (int, float)) and 0 < knobs["book_depth"] <= 1000):
        raise ValueError(f"book_depth must be > 0 and <= 1000, not {knobs['book_depth']!r}")
    if not (isinstance(knobs["stream_max_age"], (int, float)) and 0 < knobs["stream_max_age"]):
        raise ValueError(f"stream_max_age must be > 0 seconds, not {knobs['stream_max_age']!r}")
    for name in ("stream_stall", "drop_streams"):
        if not isinstance(knobs[name], bool):
            raise ValueError(f"{name} must be true or false, not {knobs[name]!r}")
    symbols = knobs["symbols"]
    if symbols is not None and not (isinstance(symbols, list)
                                    and all(isinstance(s, str) for s in symbols)):
        raise ValueError("symbols must be null or a list of Binance ids such as \"BTCUSDT\"")


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
    """Binance spot REST dialect over a SimMarket, on a ThreadingHTTPServer; with streams, its
    WebSocket streams beside it (`sim_streams`, on stream_port, 0 = any free port)."""

    def __init__(self, market: SimMarket, host: str = "127.0.0.1", port: int = 0,
                 api_key: str = "sim-key", api_secret: str = "sim-secret",
                 balances: dict[str, float] | None = None,
                 weight_limit_per_minute: int = 6000, streams: bool = True,
                 stream_port: int = 0, tick_seconds: float = 0.1):
        self.market = market
        self.host, self._port = host, port
        self.api_key, self._secret = api_key, api_secret.encode()
        self._account = Account(market, balances if balances is not None else {"USDT": 10000.0})
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
        self._listen_keys = ListenKeys()
        self._stream_faults = StreamFaults()
        self.streams = StreamServer(market, self._account, api_key, self._secret,
                                    self._listen_keys, self._stream_faults, host, stream_port,
                                    tick_seconds) if streams else None

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
        if self.streams:
            try:
                self.streams.start()
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        if self.streams:
            self.streams.stop()
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

    @property
    def stream_url(self) -> str:
        """The WebSocket base URL, e.g. ws://127.0.0.1:PORT (see ccxt_overrides)."""
        if self.streams is None or self._httpd is None:
            raise RuntimeError("streams not started")
        return self.streams.url

    def drop_streams(self) -> None:
        """Cut every stream connection now, as a network failure would."""
        if self.streams:
            self.streams.drop_all()

    def stream_stats(self) -> dict:
        """Stream counters (connections, messages sent, ...; see StreamServer.stats)."""
        return self.streams.stats() if self.streams else {}

    # -- test/bench knobs
    def set_faults(self, latency: float = 0.0, error_rate: float = 0.0, hang_rate: float = 0.0,
                   hang_seconds: float = 30.0, drop_rate: float = 0.0,
                   symbols: set[str] | None = None, after_processing: bool | float = False) -> None:
        """Inject faults from now on (all zero = none).

        latency: seconds added to every request; error_rate: share answered with a 5xx;
        hang_rate: share held for hang_seconds then closed unanswered; drop_rate: share whose
        connection is closed without an answer; symbols: only requests naming these Binance
        ids; after_processing: the share (True = all) of those 5xx/hangs/drops that happen
        after the request took effect (an order is placed but its answer is lost), as Binance
        warns can happen.
        """
        self._faults = _Faults(latency, error_rate, hang_rate, hang_seconds, drop_rate,
                               frozenset(symbols) if symbols is not None else None,
                               float(after_processing))

    def set_book_depth(self, factor: float) -> None:
        """Scale every quantity of the order book served and matched (1.0 = normal, 0.01 =
        a book a hundred times thinner; resting orders fill that much slower too)."""
        if not factor > 0:
            raise ValueError(f"book depth must be > 0, not {factor!r}")
        with self._account._lock:
            self._account.depth = float(factor)

    def knobs(self) -> dict:
        """The fault knobs now in force, by the names `configure` and the admin endpoint take."""
        f = self._faults
        return {"latency": f.latency, "error_rate": f.error_rate, "hang_rate": f.hang_rate,
                "hang_seconds": f.hang_seconds, "drop_rate": f.drop_rate,
                "lost_answers": f.after_processing,
                "symbols": sorted(f.symbols) if f.symbols is not None else None,
                "rate_limit": self._limiter.limit, "book_depth": self._account.depth,
                "stream_latency": self._stream_faults.latency,
                "stream_stall": self._stream_faults.stall,
                "stream_max_age": self._stream_faults.max_age,
                "drop_streams": False}   # an action: true drops every stream connection now

    def configure(self, changes: dict) -> dict:
        """Change some knobs (names as in `knobs`), keep the others; the knobs now in force.
        ValueError, and nothing changed, on an unknown name or a value out of range."""
        knobs = self.knobs()
        unknown = set(changes) - set(knobs)
        if unknown:
            raise ValueError(f"unknown knob(s) {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(knobs)}")
        knobs |= changes
        _check_knobs(knobs)
        self.set_faults(knobs["latency"], knobs["error_rate"], knobs["hang_rate"],
                        knobs["hang_seconds"], knobs["drop_rate"], knobs["symbols"],
                        knobs["lost_answers"])
        if knobs["rate_limit"] != self._limiter.limit:
            self.set_rate_limit(knobs["rate_limit"])
        self.set_book_depth(knobs["book_depth"])
        faults = self._stream_faults
        faults.latency, faults.stall = knobs["stream_latency"], knobs["stream_stall"]
        faults.max_age = knobs["stream_max_age"]
        if knobs["drop_streams"]:
            self.drop_streams()
        return self.knobs()

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
        """Free balances of the simulated account (a copy), open orders matched up to now."""
        with self._account._lock:
            self._account.match_open_orders()
            return {a: float(v) for a, v in self._account.free.items()}

    @property
    def locked(self) -> dict[str, float]:
        """Balances locked in open orders (a copy), open orders matched up to now."""
        with self._account._lock:
            self._account.match_open_orders()
            return {a: float(v) for a, v in self._account.locked.items()}

    # -- request handling
    def _handle(self, req: _Handler, method: str) -> None:
        """Answer one request: delay, route, charge its weight, inject a fault, serve it."""
        if urlsplit(req.path).path == ADMIN_PATH:
            self._admin(req, method)
            return
        parts, body = self._read(req)
        faults = self._faults
        if faults.latency > 0 and self._stopping.wait(faults.latency):
            return
        route = _ROUTES.get((method, parts.path))
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
        if fault and not self._after_processing(faults):
            self._fault(req, fault, faults, used)
            return
        code, payload = self._answer(req, method, parts, body, params, signed)
        if fault:       # processed, but the answer is lost
            self._fault(req, fault, faults, used)
        else:
            self._send(req, code, payload, used)

    def _admin(self, req: _Handler, method: str) -> None:
        """GET or POST /sim/admin/faults from 127.0.0.1 with the API key: the knobs (after
        applying a POSTed JSON object of changes); no latency, weight or fault applies."""
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        key = req.headers.get("X-MBX-APIKEY") or ""
        if req.client_address[0] not in _LOOPBACK:
            status, answer = 403, {"error": "the admin endpoint answers on 127.0.0.1 only"}
        elif not hmac.compare_digest(key, self.api_key):
            status, answer = 401, {"error": "send the server's API key in X-MBX-APIKEY"}
        elif method not in ("GET", "POST"):
            status, answer = 405, {"error": "use GET or POST"}
        else:
            status, answer = self._admin_answer(method, body)
        self._send(req, status, _json(answer), 0)

    def _admin_answer(self, method: str, body: bytes) -> tuple[int, dict]:
        if method == "GET":
            return 200, self.knobs()
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of knob: value")
            return 200, self.configure(changes)
        except ValueError as err:        # json.JSONDecodeError is a ValueError
            return 400, {"error": str(err)}

    def _read(self, req: _Handler) -> tuple[SplitResult, str]:
        """Count the request; its split URL and its body."""
        parts = urlsplit(req.path)
        with self._count_lock:
            self._counts[parts.path] += 1
        length = int(req.headers.get("Content-Length") or 0)
        return parts, req.rfile.read(length).decode() if length else ""

    def _answer(self, req: _Handler, method: str, parts: SplitResult, body: str, params: dict,
                signed: bool | str) -> tuple[int, bytes]:
        """(HTTP status, JSON body) of a routed request; Binance's error format on errors."""
        try:
            if signed == "key":
                self._check_api_key(req)
            elif signed:
                self._authenticate(req, parts.query, body, params)
            self._account.match_open_orders()
            return 200, self._dispatch(method, parts.path, params)
        except BinanceError as err:
            return err.status, json.dumps({"code": err.code, "msg": err.msg}).encode()
        except Exception:   # an answer, never a dead connection, on a bug
            logger.exception("simulated exchange failed on %s %s", method, req.path)
            return 500, b'{"code":-1000,"msg":"An unknown error occurred."}'

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

    def _after_processing(self, faults: _Faults) -> bool:
        """Whether a drawn fault strikes after the request took effect."""
        share = faults.after_processing
        return share >= 1 or (share > 0 and self._fault_rng.random() < share)

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

    def _check_api_key(self, req: _Handler) -> None:
        key = req.headers.get("X-MBX-APIKEY")
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", 401)
        if not hmac.compare_digest(key, self.api_key):
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)

    def _authenticate(self, req: _Handler, query: str, body: str, params: dict) -> None:
        """Check the API key, the timestamp (wall clock) and the HMAC-SHA256 signature."""
        self._check_api_key(req)
        timestamp = integer_param(params, "timestamp", required=True)
        signature = params.get("signature")
        if not signature:
            raise mandatory("signature")
        _check_timestamp(timestamp, integer_param(params, "recvWindow") or 5000)
        payload = (_unsigned(query) + _unsigned(body)).encode()
        expected = hmac.new(self._secret, payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise BinanceError(-1022, "Signature for this request is not valid.")

    def _dispatch(self, method: str, path: str, params: dict) -> bytes:
        """The JSON body answering a request on one of the _ROUTES."""
        name = path[len("/api/v3/"):]
        if name == "ping":
            return b"{}"
        if name == "time":
            return json.dumps({"serverTime": int(time.time() * 1000)}).encode()
        if name == "sim/clock":   # the simulator's own: a remote bot follows the market clock
            stream_url = self.streams.url if self.streams is not None else None
            return json.dumps({"marketTime": self.market.now_ms(), "speed": self.market.speed,
                               "streamUrl": stream_url}).encode()
        if name == "exchangeInfo":
            return self._exchange_info_body(params)
        if name == "klines":
            return self._klines(params)
        if name == "depth":
            return self._depth(params)
        if name in ("ticker/24hr", "ticker/bookTicker", "ticker/price"):
            return self._ticker(name, params)
        if name == "userDataStream":
            return _json(self._listen_keys.answer(method, params))
        return _json(self._account_answer(method, name, params))

    def _account_answer(self, method: str, name: str, params: dict) -> dict | list:
        """The answer of a signed (account) route."""
        acct = self._account
        answers: dict[tuple[str, str], Callable[[], dict | list]] = {
            ("GET", "account"): lambda: acct.account(params.get("omitZeroBalances") == "true"),
            ("POST", "order"): lambda: acct.new_order(params),
            ("DELETE", "order"): lambda: acct.cancel(params),
            ("GET", "order"): lambda: acct.find(params, (-2013, "Order does not exist.")).as_dict(),
            ("GET", "openOrders"): lambda: acct.open_orders(params.get("symbol")),
            ("GET", "allOrders"): lambda: acct.all_orders(params),
            ("GET", "myTrades"): lambda: acct.my_trades(params),
            ("POST", "orderList/oco"): lambda: acct.new_oco(params),
            ("POST", "order/oco"): lambda: acct.new_oco(params, legacy=True),
            ("GET", "orderList"): lambda: acct.order_list(params),
            ("DELETE", "orderList"): lambda: acct.cancel_list(params),
            ("GET", "openOrderList"): acct.open_lists,
            ("GET", "allOrderList"): lambda: acct.all_lists(params),
        }
        return answers[(method, name)]()

    def _klines(self, params: dict) -> bytes:
        symbol = symbol_param(params)
        if not params.get("interval"):
            raise mandatory("interval")
        limit = integer_param(params, "limit")
        return self.market.klines_json(symbol, params["interval"], integer_param(params, "startTime"),
                                       integer_param(params, "endTime"), 500 if limit is None else limit)

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
        symbol = symbol_param(params)
        limit = integer_param(params, "limit")
        limit = 100 if limit is None else limit
        if limit < 1:
            raise BinanceError(-1100, "Illegal characters found in parameter 'limit'; legal "
                                      "range is '^[0-9]{1,20}$'.")
        streamed = self.streams and self.streams.depth_snapshot(symbol, min(limit, 5000))
        if streamed:      # a diff-depth stream publishes this book: answer the same one
            return _json(streamed)
        book = self.market.order_book(symbol, min(limit, 5000), self._account.depth)
        return _json({"lastUpdateId": self.market.now_ms(),
                      "bids": [[f8(p), f8(q)] for p, q in book["bids"]],
                      "asks": [[f8(p), f8(q)] for p, q in book["asks"]]})

    def _ticker(self, name: str, params: dict) -> bytes:
        wanted = self._symbol_list(params)
        if name == "ticker/24hr":
            rows = self.market.ticker_24h(wanted, self._account.depth)
        elif name == "ticker/bookTicker":
            rows = self.market.book_ticker(wanted, self._account.depth)
        else:
            ids = wanted or self.market.ids
            rows = [{"symbol": s, "price": f8(self.market.last_price(s))} for s in ids]
        return _json(rows[0] if params.get("symbol") else rows)


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _unsigned(raw: str) -> str:
    """A query string or body without its signature parameter (what was signed)."""
    return "&".join(p for p in raw.split("&") if p and not p.startswith("signature="))


def _check_timestamp(timestamp: int, recv_window: int) -> None:
    """BinanceError -1021 unless the request was signed within recv_window ms (wall clock)."""
    if recv_window > 60000:
        raise BinanceError(-1131, "recvWindow must be less than 60000")
    server_ms = int(time.time() * 1000)
    if timestamp >= server_ms + 1000:
        raise BinanceError(-1021, "Timestamp for this request was 1000ms ahead of the "
                                  "server's time.")
    if server_ms - timestamp > recv_window:
        raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")


# ----------------------------------------------------------------------------- CLI

_ADMIN_EPILOG = f"""\
Change the fault knobs while it runs (127.0.0.1 only; the API key authenticates):
  curl -s -X POST http://127.0.0.1:8765{ADMIN_PATH} -H 'X-MBX-APIKEY: sim-key' \\
       -d '{{"error_rate": 0.1, "hang_rate": 0.05, "lost_answers": 0.5}}'
The body names any of: latency, error_rate, hang_rate, hang_seconds, drop_rate,
lost_answers, symbols (a list of Binance ids, or null for all), rate_limit, book_depth,
stream_latency, stream_stall, stream_max_age, drop_streams (true: cut every stream
connection now); the others keep their values. The answer (as for GET) is every knob now
in force."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Simulated Binance-dialect exchange on 127.0.0.1",
                                     epilog=_ADMIN_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--speed", type=float, default=60.0, help="market seconds per wall second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--balance", type=float, default=10000.0, help="USDT balance of the account")
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--api-secret", default="sim-secret")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--stream-port", type=int, default=None,
                        help="port of the WebSocket streams (default: --port + 1, or any free "
                             "port with --port 0)")
    parser.add_argument("--no-streams", action="store_true", help="serve REST only")
    faults = parser.add_argument_group("fault knobs (a bad day; all off by default)")
    faults.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="delay added to every request")
    faults.add_argument("--error-rate", type=float, default=0.0, metavar="SHARE",
                        help="share of requests answered with a 500/502/503")
    faults.add_argument("--hang-rate", type=float, default=0.0, metavar="SHARE",
                        help="share of requests held for --hang-seconds, then closed unanswered")
    faults.add_argument("--hang-seconds", type=float, default=30.0, metavar="SECONDS",
                        help="how long a hang lasts (default 30)")
    faults.add_argument("--drop-rate", type=float, default=0.0, metavar="SHARE",
                        help="share of requests whose connection is closed without an answer")
    faults.add_argument("--lost-answers", type=float, default=0.0, metavar="SHARE",
                        help="share of those 5xx/hangs/drops that strike after the request took "
                             "effect: the order is placed, its answer lost")
    faults.add_argument("--rate-limit", type=int, default=6000, metavar="WEIGHT",
                        help="request weight per minute before 429s (and 418 bans); default 6000")
    faults.add_argument("--book-depth", type=float, default=1.0, metavar="FACTOR",
                        help="scales every order-book quantity (0.01: a thin book, market "
                             "orders fill partly); default 1")
    faults.add_argument("--stream-latency", type=float, default=0.0, metavar="SECONDS",
                        help="delay added to every stream message")
    faults.add_argument("--stream-stall", action="store_true",
                        help="streams stay open (pings answered) but send nothing")
    faults.add_argument("--stream-max-age", type=float, default=86400.0, metavar="SECONDS",
                        help="stream connections are closed at this age (default 86400, "
                             "Binance's 24 hours)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the simulated exchange alone until Ctrl-C."""
    parser = _parser()
    args = parser.parse_args(argv)
    knobs = {"latency": args.latency, "error_rate": args.error_rate, "hang_rate": args.hang_rate,
             "hang_seconds": args.hang_seconds, "drop_rate": args.drop_rate,
             "lost_answers": args.lost_answers, "symbols": None, "rate_limit": args.rate_limit,
             "book_depth": args.book_depth, "stream_latency": args.stream_latency,
             "stream_stall": args.stream_stall, "stream_max_age": args.stream_max_age,
             "drop_streams": False}
    try:
        _check_knobs(knobs)
    except ValueError as err:
        parser.error(str(err).replace("_", "-"))      # exit code 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    market = SimMarket(pairs=args.pairs, seed=args.seed, speed=args.speed)
    server = SimExchangeServer(market, args.host, args.port, args.api_key, args.api_secret,
                               {"USDT": args.balance}, streams=not args.no_streams,
                               stream_port=args.stream_port if args.stream_port is not None
                               else args.port and args.port + 1)
    server.configure(knobs)
    try:
        server.start()
        logger.info("fault knobs (change them with POST %s): %s", ADMIN_PATH, server.knobs())
        logger.info("ccxt: ccxt.binance(ccxt_overrides(%r) | {'apiKey': %r, 'secret': ...})",
                    server.url, args.api_key)
        if server.streams:
            logger.info("ccxt.pro: ccxt.pro.binance(ccxt_overrides(%r, %r) | {...})",
                        server.url, server.stream_url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

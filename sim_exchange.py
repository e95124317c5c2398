"""The simulated market of `sim_market` served in Binance's spot REST dialect on 127.0.0.1.

An unmodified ``ccxt.binance`` client (configured with :func:`ccxt_overrides`) can load
markets, page through candles, read tickers and order books, and trade on it with signed
requests, so every code path of the bot can run offline. One account trades against the
synthetic book; request weights, 429/418 answers and injected faults behave like Binance's.

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
from urllib.parse import SplitResult, parse_qsl, urlsplit

import ccxt

from market_rules import TAKER_FEE
from sim_market import BinanceError, PairSpec, SimMarket, f8

logger = logging.getLogger(__name__)

FEE_RATE = Decimal(repr(TAKER_FEE))    # taker and maker, charged in the asset received
_Q8 = Decimal("0.00000001")


def _mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                               "or malformed.")


# ----------------------------------------------------------------------------- ccxt

def ccxt_overrides(base_url: str) -> dict:
    """Constructor config that points an unmodified ccxt.binance at a SimExchangeServer."""
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
            "clientOrderId": self.client_id, "price": f8(self.price),
            "origQty": f8(self.orig_qty), "executedQty": f8(self.executed),
            "cummulativeQuoteQty": f8(self.cum_quote), "status": self.status,
            "timeInForce": self.tif, "type": self.type, "side": self.side,
            "stopPrice": "0.00000000", "icebergQty": "0.00000000", "time": self.time,
            "updateTime": self.update_time, "isWorking": self.type != "MARKET",
            "workingTime": self.time, "origQuoteOrderQty": f8(self.orig_quote),
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


def _symbol(params: dict) -> str:
    """The mandatory `symbol` parameter."""
    symbol = params.get("symbol") or ""
    if not symbol:
        raise _mandatory("symbol")
    return symbol


def _side_and_type(params: dict) -> tuple[str, str]:
    side, otype = params.get("side"), params.get("type")
    if not side:
        raise _mandatory("side")
    if side not in ("BUY", "SELL"):
        raise BinanceError(-1117, "Invalid side.")
    if not otype:
        raise _mandatory("type")
    if otype not in ("MARKET", "LIMIT", "LIMIT_MAKER"):
        raise BinanceError(-1116, "Invalid orderType.")
    return side, otype


def _client_order_id(params: dict) -> str:
    """`newClientOrderId`, or a random one as Binance generates when it is absent."""
    client_id = params.get("newClientOrderId") or f"sim{random.getrandbits(64):016x}"
    if not re.fullmatch(r"[.A-Za-z0-9_-]{1,36}", client_id):
        raise BinanceError(-1100, "Illegal characters found in parameter "
                                  "'newClientOrderId'; legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
    return client_id


def _market_amount(params: dict) -> tuple[Decimal | None, Decimal | None]:
    """(quantity, quoteOrderQty) of a market order: exactly one of them is sent."""
    qty = _decimal(params, "quantity", required=False)
    quote = _decimal(params, "quoteOrderQty", required=False)
    if qty is None and quote is None:
        raise BinanceError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but "
                                  "both were empty/null!")
    if qty is not None and quote is not None:
        raise BinanceError(-1106, "Parameter 'quoteOrderQty' sent when not required.")
    return qty, quote


def _time_in_force(params: dict, otype: str) -> str:
    """A limit order's timeInForce (LIMIT_MAKER orders are GTC)."""
    tif = params.get("timeInForce") or ("GTC" if otype == "LIMIT_MAKER" else None)
    if tif is None:
        raise _mandatory("timeInForce")
    if tif not in ("GTC", "IOC", "FOK"):
        raise BinanceError(-1115, "Invalid timeInForce.")
    return tif


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
        return ((Decimal(f8(p)), Decimal(f8(q))) for p, q in levels)

    def _check_filters(self, spec: PairSpec, qty: Decimal | None, price: Decimal | None,
                       notional: Decimal) -> None:
        tick, step = Decimal(f8(spec.tick)), Decimal(f8(spec.step))
        if price is not None and (price < tick or price > Decimal(f8(spec.max_price))
                                  or (price - tick) % tick != 0):
            raise BinanceError(-1013, "Filter failure: PRICE_FILTER")
        if qty is not None and (qty < step or qty > Decimal(f8(spec.max_qty))
                                or (qty - step) % step != 0):
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        if notional < Decimal(f8(spec.min_notional)):
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
            fee, fee_asset = self._transfer(spec, order.side, price, qty, maker)
            order.executed += qty
            order.cum_quote += price * qty
            trade_id = self._record_trade(order, price, qty, fee, fee_asset, maker, now)
            out.append({"price": f8(price), "qty": f8(qty), "commission": f8(fee),
                        "commissionAsset": fee_asset, "tradeId": trade_id})
        order.update_time = now
        return out

    def _transfer(self, spec: PairSpec, side: str, price: Decimal, qty: Decimal,
                  maker: bool) -> tuple[Decimal, str]:
        """Move one fill's funds, paid from locked ones when a resting order fills; the fee is
        taken from the asset received. Returns (fee, fee asset)."""
        quote_amt = price * qty
        paid, paid_amt, got, got_amt = ((spec.quote, quote_amt, spec.base, qty) if side == "BUY"
                                        else (spec.base, qty, spec.quote, quote_amt))
        fee = (got_amt * FEE_RATE).quantize(_Q8, ROUND_HALF_UP)
        self.free[got] += got_amt - fee
        (self.locked if maker else self.free)[paid] -= paid_amt
        return fee, got

    def _record_trade(self, order: _Order, price: Decimal, qty: Decimal, fee: Decimal,
                      fee_asset: str, maker: bool, now: int) -> int:
        """Append one fill to the account's trades (as /api/v3/myTrades shows it); its id."""
        trade_id = self._next_trade
        self._next_trade += 1
        self.trades.append({
            "symbol": order.symbol, "id": trade_id, "orderId": order.order_id,
            "orderListId": -1, "price": f8(price), "qty": f8(qty),
            "quoteQty": f8(price * qty), "commission": f8(fee), "commissionAsset": fee_asset,
            "time": now, "isBuyer": order.side == "BUY", "isMaker": maker,
            "isBestMatch": True})
        return trade_id

    def _check_funds(self, spec: PairSpec, side: str, quote_amount: Decimal,
                     base_amount: Decimal) -> None:
        """BinanceError -2010 unless the free balance pays for the order."""
        if side == "BUY" and quote_amount > self.free[spec.quote] or \
                side == "SELL" and base_amount > self.free[spec.base]:
            raise BinanceError(-2010, "Account has insufficient balance for requested action.")

    # -- orders
    def new_order(self, params: dict) -> dict:
        """POST /api/v3/order: place a MARKET, LIMIT or LIMIT_MAKER order; the FULL answer."""
        spec = self.spec(_symbol(params))
        side, otype = _side_and_type(params)
        client_id = _client_order_id(params)
        with self._lock:
            if any(self.orders[i].client_id == client_id and self.orders[i].symbol == spec.id
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
        """Take the book for a base `quantity` or a `quoteOrderQty`; FILLED or EXPIRED."""
        qty, quote = _market_amount(params)
        last = Decimal(f8(self.market.last_price(spec.id)))
        self._check_filters(spec, qty, None, quote if qty is None else qty * last)
        step = Decimal(f8(spec.step))
        fills = self._walk(self._book(spec, side), side, qty, quote, step)
        got = sum((q for _, q in fills), Decimal(0))
        if qty is None and got < step:
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        self._check_funds(spec, side, sum((p * q for p, q in fills), Decimal(0)), got)
        order = self._new(spec, side, "MARKET", "GTC", Decimal(0), qty if qty is not None else got,
                          quote or Decimal(0), client_id, now)
        out = self._settle(order, fills, maker=False, now=now)
        order.status = "FILLED" if qty is None or order.executed == qty else "EXPIRED"
        return order, out

    def _limit_order(self, spec, side, otype, params, client_id, now):
        """Take the book up to the limit price, then rest (GTC) or expire (IOC, FOK)."""
        tif = _time_in_force(params, otype)
        qty, price = _decimal(params, "quantity"), _decimal(params, "price")
        self._check_filters(spec, qty, price, qty * price)
        self._check_funds(spec, side, qty * price, qty)
        step = Decimal(f8(spec.step))
        fills = self._walk(self._book(spec, side), side, qty, None, step, limit=price)
        if otype == "LIMIT_MAKER" and fills:
            raise BinanceError(-2010, "Order would immediately match and take.")
        got = sum((q for _, q in fills), Decimal(0))
        if tif == "FOK" and got < qty:
            fills = []
        order = self._new(spec, side, otype, tif, price, qty, Decimal(0), client_id, now)
        out = self._settle(order, fills, maker=False, now=now)
        self._rest(spec, order)
        return order, out

    def _rest(self, spec: PairSpec, order: _Order) -> None:
        """Set a new limit order's status; a GTC order's unfilled rest waits on the book."""
        rest = order.orig_qty - order.executed
        if rest == 0:
            order.status = "FILLED"
        elif order.tif in ("IOC", "FOK"):
            order.status = "EXPIRED"
        else:
            order.status = "PARTIALLY_FILLED" if order.executed else "NEW"
            self._lock_funds(spec, order, rest)
            self.open_ids.add(order.order_id)

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
        symbol = _symbol(params)
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
        symbol = _symbol(params)
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
        symbol = _symbol(params)
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
            balances = [{"asset": a, "free": f8(self.free[a]), "locked": f8(self.locked[a])}
                        for a in sorted(self.free)
                        if not omit_zero or self.free[a] or self.locked[a]]
        return {
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {"maker": f8(FEE_RATE), "taker": f8(FEE_RATE),
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
        """Answer one request: delay, route, charge its weight, inject a fault, serve it."""
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
        if fault and not faults.after_processing:
            self._fault(req, fault, faults, used)
            return
        code, payload = self._answer(req, method, parts, body, params, signed)
        if fault:       # processed, but the answer is lost
            self._fault(req, fault, faults, used)
        else:
            self._send(req, code, payload, used)

    def _read(self, req: _Handler) -> tuple[SplitResult, str]:
        """Count the request; its split URL and its body."""
        parts = urlsplit(req.path)
        with self._count_lock:
            self._counts[parts.path] += 1
        length = int(req.headers.get("Content-Length") or 0)
        return parts, req.rfile.read(length).decode() if length else ""

    def _answer(self, req: _Handler, method: str, parts: SplitResult, body: str, params: dict,
                signed: bool) -> tuple[int, bytes]:
        """(HTTP status, JSON body) of a routed request; Binance's error format on errors."""
        try:
            if signed:
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
        """Check the API key, the timestamp (wall clock) and the HMAC-SHA256 signature."""
        key = req.headers.get("X-MBX-APIKEY")
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", 401)
        if not hmac.compare_digest(key, self.api_key):
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        timestamp = _integer(params, "timestamp", required=True)
        signature = params.get("signature")
        if not signature:
            raise _mandatory("signature")
        _check_timestamp(timestamp, _integer(params, "recvWindow") or 5000)
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
            return json.dumps({"marketTime": self.market.now_ms(), "speed": self.market.speed}).encode()
        if name == "exchangeInfo":
            return self._exchange_info_body(params)
        if name == "klines":
            return self._klines(params)
        if name == "depth":
            return self._depth(params)
        if name in ("ticker/24hr", "ticker/bookTicker", "ticker/price"):
            return self._ticker(name, params)
        return _json(self._account_answer(method, name, params))

    def _account_answer(self, method: str, name: str, params: dict) -> dict | list:
        """The answer of a signed (account) route."""
        acct = self._account
        if name == "account":
            return acct.account(params.get("omitZeroBalances") == "true")
        if name == "order":
            if method == "POST":
                return acct.new_order(params)
            if method == "DELETE":
                return acct.cancel(params)
            return acct.find(params, (-2013, "Order does not exist.")).as_dict()
        if name == "openOrders":
            return acct.open_orders(params.get("symbol"))
        if name == "allOrders":
            return acct.all_orders(params)
        return acct.my_trades(params)    # myTrades: the only route left

    def _klines(self, params: dict) -> bytes:
        symbol = _symbol(params)
        if not params.get("interval"):
            raise _mandatory("interval")
        limit = _integer(params, "limit")
        return self.market.klines_json(symbol, params["interval"], _integer(params, "startTime"),
                                       _integer(params, "endTime"), 500 if limit is None else limit)

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
        symbol = _symbol(params)
        limit = _integer(params, "limit")
        limit = 100 if limit is None else limit
        if limit < 1:
            raise BinanceError(-1100, "Illegal characters found in parameter 'limit'; legal "
                                      "range is '^[0-9]{1,20}$'.")
        book = self.market.order_book(symbol, min(limit, 5000))
        return _json({"lastUpdateId": self.market.now_ms(),
                      "bids": [[f8(p), f8(q)] for p, q in book["bids"]],
                      "asks": [[f8(p), f8(q)] for p, q in book["asks"]]})

    def _ticker(self, name: str, params: dict) -> bytes:
        wanted = self._symbol_list(params)
        if name == "ticker/24hr":
            rows = self.market.ticker_24h(wanted)
        elif name == "ticker/bookTicker":
            rows = self.market.book_ticker(wanted)
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

def _parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the simulated exchange alone until Ctrl-C."""
    args = _parser().parse_args(argv)
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

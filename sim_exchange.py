"""The simulated market of `sim_market` served in Binance's spot REST dialect on 127.0.0.1.

An unmodified ``ccxt.binance`` client (configured with :func:`ccxt_overrides`) can load
markets, page through candles, read tickers and order books, and trade on it with signed
requests, so every code path of the bot can run offline. One account trades against the
synthetic book; request weights, 429/418 answers and injected faults behave like Binance's.

Two clocks (see the team contract): market data, orders and trades use the market clock
(``speed`` times wall-clock); ``/api/v3/time``, signatures' timestamp/recvWindow checks and
rate-limit windows use the wall clock.

Orders: MARKET, LIMIT and LIMIT_MAKER (GTC, IOC, FOK), STOP_LOSS and STOP_LOSS_LIMIT
(``POST /api/v3/order``), and OCO lists (``POST /api/v3/orderList/oco``, the deprecated
``POST /api/v3/order/oco``; ``GET``/``DELETE /api/v3/orderList``, ``/api/v3/openOrderList``,
``/api/v3/allOrderList``), with Binance's rules and error codes. Stops and resting orders
are matched lazily, before every request is answered, on the market's 1m candles since the
last match, minute by minute (so the outcome does not depend on when requests come):

- a sell stop triggers in the first minute whose low reaches its stopPrice (a buy stop: the
  high), then takes the book as it was then, centred on the stop price (a STOP_LOSS like a
  market order, a STOP_LOSS_LIMIT up to its limit price, as its timeInForce says); the rest
  rests on the book from the next minute;
- a resting order fills at its price, as maker, in each minute whose range went through
  that price, at most ``RESTING_FILL_SHARE`` x book depth x that minute's volume: a large
  order stays PARTIALLY_FILLED over several minutes. The minute an order was placed (or
  triggered) in is not matched; within a minute the path is open-low-high-close when it
  rose, open-high-low-close otherwise;
- an OCO leg that triggers or trades, even partly, expires the other one; cancelling either
  leg cancels the list. Funds stay locked while an order rests or waits (once per OCO).

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
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, NamedTuple
from urllib.parse import SplitResult, parse_qsl, urlsplit

import ccxt

from market_rules import TAKER_FEE
from sim_market import MINUTE_MS, BinanceError, PairSpec, SimMarket, f8
from sim_streams import ListenKeys, StreamFaults, StreamServer

logger = logging.getLogger(__name__)

FEE_RATE = Decimal(repr(TAKER_FEE))    # taker and maker, charged in the asset received
_Q8 = Decimal("0.00000001")


def _mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                               "or malformed.")


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


# ----------------------------------------------------------------------------- account

_STOP_TYPES = ("STOP_LOSS", "STOP_LOSS_LIMIT")
_OCO_TYPES = ("STOP_LOSS_LIMIT", "STOP_LOSS", "LIMIT_MAKER", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
RESTING_FILL_SHARE = 0.1   # of a crossing minute's volume that can fill one resting order


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
    stop_price: Decimal = Decimal(0)
    list_id: int = -1
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    cum_quote: Decimal = Decimal(0)
    update_time: int = 0
    working_time: int = 0             # -1 while a stop waits for its trigger
    lock: Decimal = Decimal(0)        # funds locked for this order
    cursor_ms: int = 0                # open time of the first minute not fully matched yet
    credit: Decimal = Decimal(0)      # fill capacity already counted from that minute
    allowance: Decimal = Decimal(0)   # fill capacity counted but not used yet

    @property
    def rest(self) -> Decimal:
        return self.orig_qty - self.executed

    @property
    def dormant(self) -> bool:
        """A stop order still waiting for its trigger."""
        return self.working_time < 0

    def as_dict(self) -> dict:
        return {
            "symbol": self.symbol, "orderId": self.order_id, "orderListId": self.list_id,
            "clientOrderId": self.client_id, "price": f8(self.price),
            "origQty": f8(self.orig_qty), "executedQty": f8(self.executed),
            "cummulativeQuoteQty": f8(self.cum_quote), "status": self.status,
            "timeInForce": self.tif, "type": self.type, "side": self.side,
            "stopPrice": f8(self.stop_price), "icebergQty": "0.00000000", "time": self.time,
            "updateTime": self.update_time,
            "isWorking": self.type != "MARKET" and not self.dormant,
            "workingTime": self.working_time, "origQuoteOrderQty": f8(self.orig_quote),
            "selfTradePreventionMode": "NONE",
        }

    def report(self, now: int) -> dict:
        """The order as an answer to placing it (stopPrice shown for stop orders only)."""
        hidden = ("time", "updateTime", "isWorking", "icebergQty") + \
            (() if self.type in _STOP_TYPES else ("stopPrice",))
        return {k: v for k, v in self.as_dict().items() if k not in hidden} | {"transactTime": now}


@dataclass
class _OrderList:
    """An OCO: its stop leg and its limit-maker leg, in that order (as Binance numbers them)."""
    list_id: int
    symbol: str
    client_id: str
    order_ids: tuple[int, ...]
    time: int


class _Leg(NamedTuple):
    """One order of a request: a stop order, or an OCO leg."""
    type: str
    price: Decimal | None     # the limit price; None for STOP_LOSS
    stop: Decimal | None      # the stop price; None for LIMIT_MAKER
    tif: str
    client_id: str


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


def _side(params: dict) -> str:
    side = params.get("side")
    if not side:
        raise _mandatory("side")
    if side not in ("BUY", "SELL"):
        raise BinanceError(-1117, "Invalid side.")
    return side


def _side_and_type(params: dict) -> tuple[str, str]:
    side, otype = _side(params), params.get("type")
    if not otype:
        raise _mandatory("type")
    if otype not in ("MARKET", "LIMIT", "LIMIT_MAKER") + _STOP_TYPES:
        raise BinanceError(-1116, "Invalid orderType.")
    return side, otype


def _client_order_id(params: dict, name: str = "newClientOrderId") -> str:
    """The client id in `name`, or a random one as Binance generates when it is absent."""
    client_id = params.get(name) or f"sim{random.getrandbits(64):016x}"
    if not re.fullmatch(r"[.A-Za-z0-9_-]{1,36}", client_id):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal "
                                  "range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
    return client_id


def _not_required(params: dict, *names: str) -> None:
    """BinanceError -1106 for the first of `names` that was sent."""
    for name in names:
        if params.get(name) not in (None, ""):
            raise BinanceError(-1106, f"Parameter '{name}' sent when not required.")


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


def _time_in_force(params: dict, otype: str, name: str = "timeInForce") -> str:
    """A limit order's timeInForce (LIMIT_MAKER orders are GTC)."""
    tif = params.get(name) or ("GTC" if otype == "LIMIT_MAKER" else None)
    if tif is None:
        raise _mandatory(name)
    if tif not in ("GTC", "IOC", "FOK"):
        raise BinanceError(-1115, "Invalid timeInForce.")
    return tif


def _stop_leg(params: dict, otype: str, price: str, stop: str, tif: str, client_id: str) -> _Leg:
    """A STOP_LOSS or STOP_LOSS_LIMIT order from the parameters with these names."""
    if otype == "STOP_LOSS":
        _not_required(params, price, tif)
        return _Leg(otype, None, _decimal(params, stop), "GTC", _client_order_id(params, client_id))
    return _Leg(otype, _decimal(params, price), _decimal(params, stop),
                _time_in_force(params, otype, tif), _client_order_id(params, client_id))


def _oco_legs(params: dict, side: str) -> tuple[_Leg, _Leg]:
    """(stop leg, limit-maker leg) of POST /api/v3/orderList/oco from its above and below
    legs: a sell's limit maker is above, a buy's below."""
    for name in ("aboveType", "belowType"):
        if not params.get(name):
            raise _mandatory(name)
        if params[name] not in _OCO_TYPES:
            raise BinanceError(-1116, "Invalid orderType.")
    stop, maker = ("below", "above") if side == "SELL" else ("above", "below")
    if params[maker + "Type"] != "LIMIT_MAKER" or params[stop + "Type"] not in _STOP_TYPES:
        raise BinanceError(-1014, "Unsupported order combination.")
    return (_stop_leg(params, params[stop + "Type"], stop + "Price", stop + "StopPrice",
                      stop + "TimeInForce", stop + "ClientOrderId"),
            _Leg("LIMIT_MAKER", _decimal(params, maker + "Price"), None, "GTC",
                 _client_order_id(params, maker + "ClientOrderId")))


def _legacy_oco_legs(params: dict, side: str) -> tuple[_Leg, _Leg]:
    """(stop leg, limit-maker leg) of the deprecated POST /api/v3/order/oco."""
    otype = "STOP_LOSS_LIMIT" if params.get("stopLimitPrice") else "STOP_LOSS"
    return (_stop_leg(params, otype, "stopLimitPrice", "stopPrice", "stopLimitTimeInForce",
                      "stopClientOrderId"),
            _Leg("LIMIT_MAKER", _decimal(params, "price"), None, "GTC",
                 _client_order_id(params, "limitClientOrderId")))


def _acts_on_high(order: _Order) -> bool:
    """Whether a minute's high (else its low) moves the order: a resting sell or a buy stop."""
    return (order.side == "SELL") != order.dormant


def _page(rows: list, limit: int, from_start: bool) -> list:
    """The first `limit` rows when a start was given, else the last `limit` ones."""
    return rows[:limit] if from_start else rows[-limit:]


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
        self.lists: dict[int, _OrderList] = {}
        self.trades: list[dict] = []
        self.depth = 1.0            # thin-book factor: scales every quantity of the book
        self._next_order = 1
        self._next_list = 1
        self._next_trade = 1
        self._lock = threading.RLock()
        # called under the lock on every order event: (order, execution type, market ms,
        # fill=(price, qty, fee, fee asset, trade id, maker) | None, cancel_id="")
        self.listeners: list[Callable[..., None]] = []

    def _notify(self, order: _Order, exec_type: str, now: int, fill: tuple | None = None,
                cancel_id: str = "") -> None:
        for listener in self.listeners:
            listener(order, exec_type, now, fill, cancel_id)

    # -- helpers
    def spec(self, market_id: str) -> PairSpec:
        return self.market.specs[self.market.index(market_id)]

    def _book(self, spec: PairSpec, side: str, at_ms: int | None = None,
              mid: float | None = None) -> Iterable[tuple[Decimal, Decimal]]:
        book = self.market.order_book(spec.id, 1000, self.depth, at_ms, mid)
        levels = book["asks"] if side == "BUY" else book["bids"]
        return ((Decimal(f8(p)), Decimal(f8(q))) for p, q in levels)

    def _check_filters(self, spec: PairSpec, qty: Decimal | None, price: Decimal | None,
                       notional: Decimal, stop: Decimal | None = None) -> None:
        tick, step = Decimal(f8(spec.tick)), Decimal(f8(spec.step))
        for p in (price, stop):
            if p is not None and (p < tick or p > Decimal(f8(spec.max_price))
                                  or (p - tick) % tick != 0):
                raise BinanceError(-1013, "Filter failure: PRICE_FILTER")
        if qty is not None and (qty < step or qty > Decimal(f8(spec.max_qty))
                                or (qty - step) % step != 0):
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        if notional < Decimal(f8(spec.min_notional)):
            raise BinanceError(-1013, "Filter failure: NOTIONAL")

    def _check_leg(self, spec: PairSpec, qty: Decimal, leg: _Leg) -> None:
        self._check_filters(spec, qty, leg.price, qty * (leg.price or leg.stop), leg.stop)

    def _last(self, spec: PairSpec) -> Decimal:
        return Decimal(f8(self.market.last_price(spec.id)))

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

    def _settle(self, order: _Order, fills, maker: bool, now: int,
                from_locked: bool = False) -> list[dict]:
        """Apply fills to balances and the order, paid from its locked funds when from_locked;
        returns Binance 'fills' entries."""
        spec = self.spec(order.symbol)
        out = []
        for price, qty in fills:
            if from_locked:
                self._hold(order, min(order.lock, self._lock_need(order, qty)), -1)
            fee, fee_asset = self._transfer(spec, order.side, price, qty)
            order.executed += qty
            order.cum_quote += price * qty
            trade_id = self._record_trade(order, price, qty, fee, fee_asset, maker, now)
            self._notify(order, "TRADE", now, (price, qty, fee, fee_asset, trade_id, maker))
            out.append({"price": f8(price), "qty": f8(qty), "commission": f8(fee),
                        "commissionAsset": fee_asset, "tradeId": trade_id})
        order.update_time = now
        return out

    def _transfer(self, spec: PairSpec, side: str, price: Decimal,
                  qty: Decimal) -> tuple[Decimal, str]:
        """Move one fill's funds; the fee is taken from the asset received. Returns (fee, fee
        asset)."""
        quote_amt = price * qty
        paid, paid_amt, got, got_amt = ((spec.quote, quote_amt, spec.base, qty) if side == "BUY"
                                        else (spec.base, qty, spec.quote, quote_amt))
        fee = (got_amt * FEE_RATE).quantize(_Q8, ROUND_HALF_UP)
        self.free[got] += got_amt - fee
        self.free[paid] -= paid_amt
        return fee, got

    def _record_trade(self, order: _Order, price: Decimal, qty: Decimal, fee: Decimal,
                      fee_asset: str, maker: bool, now: int) -> int:
        """Append one fill to the account's trades (as /api/v3/myTrades shows it); its id."""
        trade_id = self._next_trade
        self._next_trade += 1
        self.trades.append({
            "symbol": order.symbol, "id": trade_id, "orderId": order.order_id,
            "orderListId": order.list_id, "price": f8(price), "qty": f8(qty),
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

    def _check_unique(self, spec: PairSpec, *client_ids: str) -> None:
        """BinanceError -2010 when an open order of the symbol has one of these client ids."""
        if any(self.orders[i].client_id in client_ids and self.orders[i].symbol == spec.id
               for i in self.open_ids):
            raise BinanceError(-2010, "Duplicate order sent.")

    # -- locks
    @staticmethod
    def _lock_need(order: _Order, qty: Decimal) -> Decimal:
        """What `qty` of the order locks: base for a sell, quote at its price (a market stop:
        at its stop price) for a buy."""
        return qty if order.side == "SELL" else qty * (order.price or order.stop_price)

    def _hold(self, order: _Order, amount: Decimal, sign: int = 1) -> None:
        """Lock (sign 1) or release (-1) `amount` of the asset the order pays with."""
        spec = self.spec(order.symbol)
        asset = spec.quote if order.side == "BUY" else spec.base
        self.free[asset] -= sign * amount
        self.locked[asset] += sign * amount
        order.lock += sign * amount

    def _open(self, order: _Order, lock: Decimal, now: int) -> None:
        """Put an order on the book (a stop on the watch list) with `lock` of its funds
        locked; matching starts with the next market minute."""
        self._hold(order, lock)
        self.open_ids.add(order.order_id)
        order.cursor_ms = (now // MINUTE_MS + 1) * MINUTE_MS

    def _finish(self, order: _Order, status: str, now: int, cancel_id: str = "") -> None:
        """Take an order off the book in a final status, releasing what it still locks."""
        order.status, order.update_time = status, now
        self.open_ids.discard(order.order_id)
        self._hold(order, order.lock, -1)
        if status != "FILLED":          # a fill was reported as its TRADE
            self._notify(order, status, now, cancel_id=cancel_id)

    # -- orders
    def new_order(self, params: dict) -> dict:
        """POST /api/v3/order: place a MARKET, LIMIT, LIMIT_MAKER, STOP_LOSS or
        STOP_LOSS_LIMIT order; the FULL answer."""
        spec = self.spec(_symbol(params))
        side, otype = _side_and_type(params)
        if otype in _STOP_TYPES:
            leg = _stop_leg(params, otype, "price", "stopPrice", "timeInForce", "newClientOrderId")
            client_id = leg.client_id
        else:
            _not_required(params, "stopPrice")
            client_id = _client_order_id(params)
        with self._lock:
            self._check_unique(spec, client_id)
            now = self.market.now_ms()
            if otype == "MARKET":
                order, fills = self._market_order(spec, side, params, client_id, now)
            elif otype in _STOP_TYPES:
                order, fills = self._stop_order(spec, side, leg, params, now), []
            else:
                order, fills = self._limit_order(spec, side, otype, params, client_id, now)
            return order.report(now) | {"fills": fills}

    def _new(self, spec, side, otype, tif, price, qty, quote, client_id, now,
             stop: Decimal = Decimal(0), list_id: int = -1) -> _Order:
        order = _Order(spec.id, self._next_order, client_id, side, otype, tif, price, qty,
                       quote, now, stop, list_id, update_time=now,
                       working_time=-1 if otype in _STOP_TYPES else now)
        self._next_order += 1
        self.orders[order.order_id] = order
        self._notify(order, "NEW", now)
        return order

    def _leg_order(self, spec: PairSpec, side: str, qty: Decimal, leg: _Leg, now: int,
                   list_id: int = -1) -> _Order:
        return self._new(spec, side, leg.type, leg.tif, leg.price or Decimal(0), qty,
                         Decimal(0), leg.client_id, now, leg.stop or Decimal(0), list_id)

    def _market_order(self, spec, side, params, client_id, now):
        """Take the book for a base `quantity` or a `quoteOrderQty`; FILLED or EXPIRED."""
        qty, quote = _market_amount(params)
        last = self._last(spec)
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
        if order.status == "EXPIRED":
            self._notify(order, "EXPIRED", now)
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
        self._open(order, self._lock_need(order, qty), now)
        out = self._settle(order, fills, maker=False, now=now, from_locked=True)
        self._after_taking(order, now)
        return order, out

    def _after_taking(self, order: _Order, now: int) -> None:
        """The status of an order that took what the book offered: FILLED, EXPIRED (IOC, FOK,
        a triggered STOP_LOSS) or resting."""
        if order.rest == 0:
            self._finish(order, "FILLED", now)
        elif order.tif in ("IOC", "FOK") or order.type == "STOP_LOSS":
            self._finish(order, "EXPIRED", now)
        elif order.executed:
            order.status = "PARTIALLY_FILLED"

    def _stop_order(self, spec: PairSpec, side: str, leg: _Leg, params: dict,
                    now: int) -> _Order:
        """A STOP_LOSS(_LIMIT) order: checked, its funds locked, waiting for its trigger (a
        sell's stop below the last price, a buy's above)."""
        qty = _decimal(params, "quantity")
        self._check_leg(spec, qty, leg)
        last = self._last(spec)
        if leg.stop >= last if side == "SELL" else leg.stop <= last:
            raise BinanceError(-2010, "Order would trigger immediately.")
        self._check_funds(spec, side, qty * (leg.price or leg.stop), qty)
        order = self._leg_order(spec, side, qty, leg, now)
        self._open(order, self._lock_need(order, qty), now)
        return order

    def new_oco(self, params: dict, legacy: bool = False) -> dict:
        """POST /api/v3/orderList/oco (legacy: the deprecated POST /api/v3/order/oco): a stop
        leg and a limit-maker leg sharing one quantity and one lock; the list and its orders."""
        spec = self.spec(_symbol(params))
        side = _side(params)
        qty = _decimal(params, "quantity")
        stop, maker = (_legacy_oco_legs if legacy else _oco_legs)(params, side)
        list_cid = _client_order_id(params, "listClientOrderId")
        with self._lock:
            self._check_unique(spec, stop.client_id, maker.client_id)
            if any(lst.client_id == list_cid and self._list_open(lst) for lst in self.lists.values()):
                raise BinanceError(-2010, "Duplicate order sent.")
            for leg in (stop, maker):
                self._check_leg(spec, qty, leg)
            last = self._last(spec)
            if not (maker.price > last > stop.stop if side == "SELL" else maker.price < last < stop.stop):
                raise BinanceError(-2010, "The relationship of the prices for the orders is not "
                                          "correct.")
            top = max(maker.price, stop.price or stop.stop)
            self._check_funds(spec, side, qty * top, qty)
            now = self.market.now_ms()
            lst = _OrderList(self._next_list, spec.id, list_cid, (), now)
            self._next_list += 1
            orders = [self._leg_order(spec, side, qty, leg, now, lst.list_id) for leg in (stop, maker)]
            lst.order_ids = tuple(o.order_id for o in orders)
            self.lists[lst.list_id] = lst
            self._open(orders[0], Decimal(0), now)      # the maker leg holds the list's lock
            self._open(orders[1], qty if side == "SELL" else qty * top, now)
            return self._list_dict(lst) | {"orderReports": [o.report(now) for o in orders]}

    def _activate(self, order: _Order, now: int) -> None:
        """An OCO leg triggered or traded: the other leg expires and hands over its lock."""
        if order.list_id < 0:
            return
        for oid in self.lists[order.list_id].order_ids:
            other = self.orders[oid]
            if other is not order and oid in self.open_ids:
                order.lock, other.lock = order.lock + other.lock, Decimal(0)
                self._finish(other, "EXPIRED", now)

    # -- matching
    def match_open_orders(self) -> None:
        """Trigger stops and fill resting orders on the market minutes since the last check."""
        if not self.open_ids:       # cheap unlocked peek; the set is re-read under the lock
            return
        with self._lock:
            for symbol in sorted({self.orders[i].symbol for i in self.open_ids}):
                self._match_symbol(self.spec(symbol))

    def _match_symbol(self, spec: PairSpec) -> None:
        """Walk the symbol's open orders through its minutes in time order; a minute's path is
        open, low, high, close when it rose, else open, high, low, close."""
        orders = [self.orders[i] for i in sorted(self.open_ids) if self.orders[i].symbol == spec.id]
        bars = self.market.minute_bars(spec.id, min(o.cursor_ms for o in orders))
        for bar in zip(*(column.tolist() for column in bars)):
            t, open_, close = bar[0], bar[1], bar[4]
            for order in sorted(orders, key=lambda o: (_acts_on_high(o) == (close >= open_),
                                                       o.order_id)):
                if order.order_id in self.open_ids and order.cursor_ms <= t:
                    self._on_minute(spec, order, bar)

    def _on_minute(self, spec: PairSpec, order: _Order, bar: tuple) -> None:
        """Match one order on one minute (open time, o, h, l, c in ticks, volume so far)."""
        t, open_, high, low, _, volume = bar
        tick = Decimal(f8(spec.tick))
        if order.dormant:
            stop = int(order.stop_price / tick)
            if low <= stop if order.side == "SELL" else high >= stop:
                at = min(stop, open_) if order.side == "SELL" else max(stop, open_)
                self._trigger(spec, order, t, at * tick)
            else:
                order.cursor_ms = t
            return
        price = int(order.price / tick)
        crossed = low < price if order.side == "BUY" else high > price
        self._rest_fill(spec, order, t, RESTING_FILL_SHARE * self.depth * volume if crossed else 0.0)

    def _trigger(self, spec: PairSpec, order: _Order, t: int, at: Decimal) -> None:
        """A stop triggered in minute t at price `at`: it takes the book as it was then (a
        STOP_LOSS as a market order, a STOP_LOSS_LIMIT up to its price); its rest rests from
        the next minute."""
        order.working_time = t
        self._activate(order, t)
        self._notify(order, "NEW", t)       # triggered: on the book from now
        step = Decimal(f8(spec.step))
        limit = order.price if order.type == "STOP_LOSS_LIMIT" else None
        fills = self._walk(self._book(spec, order.side, t, float(at)), order.side, order.rest,
                           None, step, limit)
        if order.tif == "FOK" and sum(q for _, q in fills) < order.rest:
            fills = []
        if order.type == "STOP_LOSS" and order.side == "BUY":
            fills = self._affordable(fills, order.lock + self.free[spec.quote], step)
        self._settle(order, fills, maker=False, now=t, from_locked=True)
        order.cursor_ms, order.credit = t + MINUTE_MS, Decimal(0)
        self._after_taking(order, t)

    @staticmethod
    def _affordable(fills, budget: Decimal, step: Decimal) -> list[tuple[Decimal, Decimal]]:
        """The first fills (price, qty) of a buy that `budget` pays for."""
        out = []
        for price, qty in fills:
            take = min(qty, (budget / price / step).to_integral_value(ROUND_DOWN) * step)
            if take > 0:
                out.append((price, take))
                budget -= price * take
            if take < qty:
                break
        return out

    def _rest_fill(self, spec: PairSpec, order: _Order, t: int, capacity: float) -> None:
        """Count minute t's fill capacity for a resting order (a minute still open counts
        again as it grows) and fill what the capacity allows, at the order's price."""
        cap = Decimal(f8(capacity))
        prior = order.credit if t == order.cursor_ms else Decimal(0)
        order.allowance += max(cap - prior, Decimal(0))
        order.cursor_ms, order.credit = t, max(cap, prior)
        step = Decimal(f8(spec.step))
        qty = min(order.rest, (order.allowance / step).to_integral_value(ROUND_DOWN) * step)
        if qty <= 0:
            return
        when = max(t, order.update_time)
        order.allowance -= qty
        self._settle(order, [(order.price, qty)], maker=True, now=when, from_locked=True)
        self._activate(order, when)
        if order.rest == 0:
            self._finish(order, "FILLED", when)
        else:
            order.status = "PARTIALLY_FILLED"

    # -- lookups and cancels
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
        """DELETE /api/v3/order; cancelling an OCO leg cancels its whole list, as on Binance."""
        with self._lock:
            order = self.find(params, (-2011, "Unknown order sent."))
            if order.order_id not in self.open_ids:
                raise BinanceError(-2011, "Unknown order sent.")
            now = self.market.now_ms()
            cid = params.get("newClientOrderId") or f"cancel{order.order_id}"
            legs = self.lists[order.list_id].order_ids if order.list_id >= 0 else ()
            for oid in legs:
                if oid != order.order_id:
                    self._cancel_one(self.orders[oid], cid, now)
            return self._cancel_one(order, cid, now)

    def _cancel_one(self, order: _Order, cancel_id: str, now: int) -> dict:
        """Cancel the order if it is open; its cancel report."""
        if order.order_id in self.open_ids:
            self._finish(order, "CANCELED", now, cancel_id)
        return order.as_dict() | {"origClientOrderId": order.client_id,
                                  "clientOrderId": cancel_id, "transactTime": now}

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
        return _page(rows, limit, from_id is not None or start is not None)

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
        return _page(rows, limit, from_id is not None or start is not None)

    # -- order lists
    def _list_open(self, lst: _OrderList) -> bool:
        return any(i in self.open_ids for i in lst.order_ids)

    def _list_dict(self, lst: _OrderList) -> dict:
        running = self._list_open(lst)
        return {"orderListId": lst.list_id, "contingencyType": "OCO",
                "listStatusType": "EXEC_STARTED" if running else "ALL_DONE",
                "listOrderStatus": "EXECUTING" if running else "ALL_DONE",
                "listClientOrderId": lst.client_id,
                "transactionTime": lst.time, "symbol": lst.symbol,
                "orders": [{"symbol": lst.symbol, "orderId": i,
                            "clientOrderId": self.orders[i].client_id} for i in lst.order_ids]}

    def _find_list(self, params: dict, client_name: str) -> _OrderList | None:
        """The list named by `orderListId` or by its client id in `client_name`."""
        lid = _integer(params, "orderListId")
        cid = params.get(client_name)
        if lid is None and not cid:
            raise BinanceError(-1102, f"Param '{client_name}' or 'orderListId' must be sent, "
                                      "but both were empty/null!")
        if lid is not None:
            lst = self.lists.get(lid)
            return lst if lst and (not cid or cid == lst.client_id) else None
        return next((s for s in reversed(self.lists.values()) if s.client_id == cid), None)

    def order_list(self, params: dict) -> dict:
        """GET /api/v3/orderList."""
        with self._lock:
            lst = self._find_list(params, "origClientOrderId")
            if lst is None:
                raise BinanceError(-2013, "Order list does not exist.")
            return self._list_dict(lst)

    def cancel_list(self, params: dict) -> dict:
        """DELETE /api/v3/orderList: cancel the open legs of an OCO; the list and its orders."""
        symbol = _symbol(params)
        self.spec(symbol)
        with self._lock:
            lst = self._find_list(params, "listClientOrderId")
            if lst is None or lst.symbol != symbol or not self._list_open(lst):
                raise BinanceError(-2011, "Unknown order list sent.")
            now = self.market.now_ms()
            cid = params.get("newClientOrderId") or f"cancel{lst.list_id}"
            reports = [self._cancel_one(self.orders[i], cid, now) for i in lst.order_ids]
            return self._list_dict(lst) | {"orderReports": reports}

    def open_lists(self) -> list[dict]:
        """GET /api/v3/openOrderList."""
        with self._lock:
            return [self._list_dict(s) for s in self.lists.values() if self._list_open(s)]

    def all_lists(self, params: dict) -> list[dict]:
        """GET /api/v3/allOrderList."""
        limit = min(_integer(params, "limit") or 500, 1000)
        start, end = _integer(params, "startTime"), _integer(params, "endTime")
        from_id = _integer(params, "fromId")
        with self._lock:
            rows = [self._list_dict(s) for s in self.lists.values()
                    if (from_id is None or s.list_id >= from_id)
                    and (start is None or s.time >= start) and (end is None or s.time <= end)]
        return _page(rows, limit, from_id is not None or start is not None)

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

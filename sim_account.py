"""The simulated exchange's account: balances, orders, stops, OCO lists and their matching on
the market's minute bars, in Binance's rules and error codes.

`sim_exchange` serves it over HTTP (and parses requests with the parameter helpers here);
`sim_streams` reports its orders and balances on the user-data stream.

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
"""
from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Callable, Iterable, NamedTuple

from market_rules import TAKER_FEE
from sim_market import MINUTE_MS, BinanceError, PairSpec, SimMarket, f8

FEE_RATE = Decimal(repr(TAKER_FEE))    # taker and maker, charged in the asset received
_Q8 = Decimal("0.00000001")


def mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                               "or malformed.")


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
            raise mandatory(name)
        return None
    if not _DECIMAL_RE.match(raw):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal "
                                  "range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")
    return Decimal(raw)


def integer_param(params: dict, name: str, required: bool = False) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise mandatory(name)
        return None
    if not re.fullmatch(r"-?[0-9]{1,20}", raw):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal "
                                  "range is '^[0-9]{1,20}$'.")
    return int(raw)


def symbol_param(params: dict) -> str:
    """The mandatory `symbol` parameter."""
    symbol = params.get("symbol") or ""
    if not symbol:
        raise mandatory("symbol")
    return symbol


def _side(params: dict) -> str:
    side = params.get("side")
    if not side:
        raise mandatory("side")
    if side not in ("BUY", "SELL"):
        raise BinanceError(-1117, "Invalid side.")
    return side


def _side_and_type(params: dict) -> tuple[str, str]:
    side, otype = _side(params), params.get("type")
    if not otype:
        raise mandatory("type")
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
        raise mandatory(name)
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
            raise mandatory(name)
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


class Account:
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
        spec = self.spec(symbol_param(params))
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
        spec = self.spec(symbol_param(params))
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
        symbol = symbol_param(params)
        self.spec(symbol)
        oid = integer_param(params, "orderId")
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
        symbol = symbol_param(params)
        self.spec(symbol)
        limit = min(integer_param(params, "limit") or 500, 1000)
        start, end = integer_param(params, "startTime"), integer_param(params, "endTime")
        from_id = integer_param(params, "orderId")
        with self._lock:
            rows = [o.as_dict() for o in self.orders.values() if o.symbol == symbol
                    and (from_id is None or o.order_id >= from_id)
                    and (start is None or o.time >= start) and (end is None or o.time <= end)]
        return _page(rows, limit, from_id is not None or start is not None)

    def my_trades(self, params: dict) -> list[dict]:
        symbol = symbol_param(params)
        self.spec(symbol)
        limit = min(integer_param(params, "limit") or 500, 1000)
        start, end = integer_param(params, "startTime"), integer_param(params, "endTime")
        from_id, oid = integer_param(params, "fromId"), integer_param(params, "orderId")
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
        lid = integer_param(params, "orderListId")
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
        symbol = symbol_param(params)
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
        limit = min(integer_param(params, "limit") or 500, 1000)
        start, end = integer_param(params, "startTime"), integer_param(params, "endTime")
        from_id = integer_param(params, "fromId")
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

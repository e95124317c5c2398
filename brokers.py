"""Brokers: where an order becomes a fill. One interface, three venues.

- `PaperBroker` (DRY_RUN): walks the exchange's live order book, pays the market's taker fee.
- `LiveBroker`: real orders through ccxt, each with a client order id so that a retried
  order is never placed twice, and an order whose answer was lost can be looked up.
- `BacktestBroker`: walks the simulated exchange's book model at the replayed price.

Every broker rounds and checks an order with the market's `MarketRules` before it fills,
and returns a `domain.Fill`: a buy spends `cost + fee` quote and adds `amount` base; a sell
removes `amount` base and adds `cost - fee` quote; `fee` is always in quote. Brokers move
no money: the ledger does, from the fill.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from domain import ExchangeError, Fill, OrderNotFound, OrderRejected, OrderStatus
import order_ids
from ledger import Ledger
from market_rules import MarketRules

if TYPE_CHECKING:    # the backtest's broker needs no exchange stack (ccxt, aiohttp)
    from exchange import ExchangeClient

log = logging.getLogger(__name__)

PAPER_BOOK_DEPTH = 100   # levels the paper and backtest brokers walk


class Broker(Protocol):
    def rules(self, symbol: str) -> MarketRules: ...

    def round_order(self, symbol: str, side: str, amount: float,
                    price: float) -> tuple[float, float]: ...

    def market_order(self, symbol: str, side: str, amount: float, client_order_id: str) -> Fill: ...

    def lookup(self, symbol: str, client_order_id: str) -> OrderStatus:
        """What the venue knows of an order; raises ExchangeError when it cannot be asked."""



def walk_book(levels: Any, amount: float) -> tuple[float, float]:
    """(average price, filled amount) taking `amount` from [price, qty] levels, best first.

    filled < amount means the book is too thin; the average is NaN when nothing fills.
    """
    book = np.asarray(levels, dtype=np.float64).reshape(-1, 2)
    if amount <= 0 or book.shape[0] == 0:
        return math.nan, 0.0
    qty = np.maximum(book[:, 1], 0.0)
    before = np.concatenate([[0.0], np.cumsum(qty)[:-1]])   # inf-safe (a no-slippage level)
    take = np.clip(amount - before, 0.0, qty)
    taken = float(take.sum())
    if taken <= 0:
        return math.nan, 0.0
    filled = float(amount) if float(qty.sum()) >= amount else taken  # no float dust short
    return float(take @ book[:, 0]) / taken, filled


def guard_price(side: str, best: float, max_slippage: float | None) -> float:
    """The worst price a market order may fill at: MAX_SLIPPAGE beyond the best level."""
    if max_slippage is None:
        return math.inf if side == "buy" else 0.0
    return best * (1.0 + max_slippage) if side == "buy" else best * (1.0 - max_slippage)


def within_guard(levels: Any, side: str, max_slippage: float | None) -> Any:
    """The levels a guarded market order may take (all of them without a guard)."""
    if max_slippage is None or not len(levels):
        return levels
    limit = guard_price(side, float(levels[0][0]), max_slippage)
    return [lv for lv in levels if (float(lv[0]) <= limit if side == "buy" else float(lv[0]) >= limit)]


def book_fill(rules: MarketRules, side: str, amount: float, levels: Any, timestamp_ms: int,
              order_id: str, client_order_id: str, max_slippage: float | None = None) -> Fill:
    """A market order of a rounded `amount` filled against `levels`, with the taker fee.

    Only levels within MAX_SLIPPAGE of the best price are taken; when they hold less than
    `amount`, what they hold fills (rounded down to the step) and the rest is not executed,
    as an exchange's immediate-or-cancel order at the guard price would do."""
    usable = within_guard(levels, side, max_slippage)
    price, filled = walk_book(usable, amount)
    if filled < amount:
        filled = rules.round_amount(filled) if filled > 0 else 0.0
        if filled <= 0 or (rules.min_amount is not None and filled < rules.min_amount) or (
                rules.min_notional is not None and filled * price < rules.min_notional):
            raise OrderRejected(f"{rules.symbol}: order book too thin: {filled:.10g} of "
                                f"{amount:.10g} within {len(usable)} levels"
                                + (f" inside the {max_slippage:.2%} slippage guard"
                                   if max_slippage is not None else ""))
        price, _ = walk_book(usable, filled)
    cost = filled * price
    return Fill(rules.symbol, side, filled, price, cost, cost * rules.taker, timestamp_ms,
                order_id, client_order_id)


def check_funds(ledger: Ledger, fill: Fill) -> None:
    """A simulated account cannot spend more than its cash nor sell more than it holds."""
    if fill.side == "buy" and ledger.cash < fill.cost + fill.fee:
        raise OrderRejected(f"{fill.symbol}: insufficient cash: need {fill.cost + fill.fee:.2f}, "
                            f"have {ledger.cash:.2f}")
    held = ledger.positions.get(fill.symbol)
    if fill.side == "sell" and (held is None or fill.amount > held.amount * (1 + 1e-9)):
        raise OrderRejected(f"{fill.symbol}: cannot sell {fill.amount:.10g}, holding "
                            f"{held.amount if held else 0:.10g}")


class PaperBroker:
    """DRY_RUN: fills against the exchange's live order book; the account is the ledger."""

    def __init__(self, client: ExchangeClient, ledger: Ledger, book_depth: int = PAPER_BOOK_DEPTH,
                 max_slippage: float | None = None):
        self.client, self.ledger, self.book_depth = client, ledger, book_depth
        self.max_slippage = max_slippage
        self._ids = itertools.count(1)
        self._resting: dict[str, tuple[str, float, float]] = {}   # cid -> (symbol, amount, price)
        self._done: dict[str, OrderStatus] = {}

    def rules(self, symbol: str) -> MarketRules:
        return self.client.rules(symbol)

    def round_order(self, symbol: str, side: str, amount: float, price: float) -> tuple[float, float]:
        return self.rules(symbol).round_order(side, amount, price)

    def market_order(self, symbol: str, side: str, amount: float, client_order_id: str) -> Fill:
        book = self.client.fetch_order_book(symbol, self.book_depth)
        levels = book["asks"] if side == "buy" else book["bids"]
        if not levels:
            raise OrderRejected(f"{symbol}: the order book has no {side} side to fill against")
        rules = self.rules(symbol)
        amount, _ = rules.round_order(side, amount, float(levels[0][0]))
        fill = book_fill(rules, side, amount, levels, int(self.client.clock() * 1000),
                         f"paper-{next(self._ids)}", client_order_id, self.max_slippage)
        check_funds(self.ledger, fill)
        return fill

    def place_limit(self, symbol: str, amount: float, price: float, client_order_id: str) -> dict:
        """A post-only limit buy, resting in memory until the market's best ask falls to it."""
        amount, price = self.round_order(symbol, "buy", amount, price)
        book = self.client.fetch_order_book(symbol, 1)
        if book["asks"] and float(book["asks"][0][0]) <= price:
            raise OrderRejected(f"{symbol}: a post-only buy at {price:.10g} would take liquidity")
        self._resting[client_order_id] = (symbol, amount, price)
        return {"id": f"paper-{next(self._ids)}"}

    def cancel(self, symbol: str, client_order_id: str) -> None:
        if self._resting.pop(client_order_id, None) is not None:
            self._done[client_order_id] = OrderStatus("done")

    def lookup(self, symbol: str, client_order_id: str) -> OrderStatus:
        """A resting paper order fills whole, at its price with the maker fee, once the best
        ask reaches it. A paper order exists only in memory: after a restart it is missing
        (and one whose fill was not recorded never filled)."""
        if client_order_id in self._done:
            return self._done[client_order_id]
        if client_order_id not in self._resting:
            return OrderStatus("missing")
        symbol, amount, price = self._resting[client_order_id]
        book = self.client.fetch_order_book(symbol, 1)
        if not book["asks"] or float(book["asks"][0][0]) > price:
            return OrderStatus("open")
        rules = self.rules(symbol)
        fill = Fill(symbol, "buy", amount, price, amount * price, amount * price * rules.maker,
                    int(self.client.clock() * 1000), f"paper-{next(self._ids)}", client_order_id)
        check_funds(self.ledger, fill)
        del self._resting[client_order_id]
        self._done[client_order_id] = OrderStatus("done", fill)
        return self._done[client_order_id]


@dataclass(frozen=True)
class Quote:
    """The backtest's market at one step: the price an order meets, and the book model."""
    price: float
    timestamp_ms: int
    levels: Callable[[str], Sequence] | None = None   # side -> [price, qty] levels; None: no slippage


class BacktestBroker:
    """Fills at the replayed price on the simulated exchange's book model; the replay sets
    `quotes` for the step before it sends orders."""

    def __init__(self, rules_by_symbol: Mapping[str, MarketRules], ledger: Ledger,
                 max_slippage: float | None = None):
        self._rules = dict(rules_by_symbol)
        self.ledger = ledger
        self.max_slippage = max_slippage
        self.quotes: dict[str, Quote] = {}
        self._ids = itertools.count(1)

    def rules(self, symbol: str) -> MarketRules:
        return self._rules[symbol]

    def round_order(self, symbol: str, side: str, amount: float, price: float) -> tuple[float, float]:
        return self._rules[symbol].round_order(side, amount, price)

    def market_order(self, symbol: str, side: str, amount: float, client_order_id: str) -> Fill:
        quote = self.quotes[symbol]
        rules = self._rules[symbol]
        amount, _ = rules.round_order(side, amount, quote.price)
        fill = book_fill(rules, side, amount, self._levels(quote, side), quote.timestamp_ms,
                         f"bt-{next(self._ids)}", client_order_id, self.max_slippage)
        check_funds(self.ledger, fill)
        return fill

    def liquidate(self, symbol: str, amount: float, client_order_id: str) -> Fill:
        """Sell all of `amount` at the end of the data, whatever the limits and the depth
        (at the average of what the book holds)."""
        quote, rules = self.quotes[symbol], self._rules[symbol]
        price, filled = walk_book(self._levels(quote, "sell"), amount)
        price = price if filled > 0 and math.isfinite(price) else quote.price
        cost = amount * price
        return Fill(symbol, "sell", amount, price, cost, cost * rules.taker, quote.timestamp_ms,
                    f"bt-{next(self._ids)}", client_order_id)

    @staticmethod
    def _levels(quote: Quote, side: str) -> Sequence:
        return quote.levels(side) if quote.levels is not None else [[quote.price, math.inf]]

    def lookup(self, symbol: str, client_order_id: str) -> OrderStatus:
        return OrderStatus("missing")


class LiveBroker:
    """Real orders through ccxt, each with a client order id so a retry never doubles it."""

    def __init__(self, client: ExchangeClient, quote: str | None = None,
                 max_slippage: float | None = None):
        self.client = client
        self.quote = quote or client.quote
        self.max_slippage = max_slippage

    def rules(self, symbol: str) -> MarketRules:
        return self.client.rules(symbol)

    def round_order(self, symbol: str, side: str, amount: float, price: float) -> tuple[float, float]:
        return self.rules(symbol).round_order(side, amount, price)

    def balances(self) -> dict:
        """The exchange account's balances (ccxt's structure: free, used, total)."""
        return self.client.call("fetch_balance")

    def market_order(self, symbol: str, side: str, amount: float, client_order_id: str) -> Fill:
        """A market order; with MAX_SLIPPAGE, an immediate-or-cancel limit order at the guard
        price, so the exchange itself never fills it worse (what does not fill is cancelled)."""
        book = self.client.fetch_order_book(symbol, 5)
        levels = book["asks"] if side == "buy" else book["bids"]
        if not levels:
            raise OrderRejected(f"{symbol}: the order book has no {side} side")
        best = float(levels[0][0])
        limit = None if self.max_slippage is None else guard_price(side, best, self.max_slippage)
        amount, price = self.round_order(symbol, side, amount, limit or best)
        order = self._place(symbol, side, amount, client_order_id, price if limit else None)
        if order.get("status") not in ("closed", "canceled", "expired") or order.get("filled") is None:
            order = self.client.call("fetch_order", order["id"], symbol)
        if not order.get("filled"):
            raise OrderRejected(f"{symbol}: order {client_order_id} filled nothing (status "
                                f"{order.get('status')}"
                                + (f", slippage guard {limit:.10g})" if limit else ")"))
        return self._fill(order, symbol, side, client_order_id)

    @property
    def supports_stops(self) -> bool:
        """Whether the exchange takes stop-loss orders through ccxt's unified parameters."""
        return bool(self.client.ccxt.has.get("createStopLossOrder"))

    def place_limit(self, symbol: str, amount: float, price: float, client_order_id: str) -> dict:
        """A post-only limit buy resting on the exchange (maker fee, or refused if it would
        take liquidity)."""
        amount, price = self.round_order(symbol, "buy", amount, price)
        params = order_ids.create_params(self.client.ccxt, client_order_id) | {"postOnly": True}
        return self.client.call("create_order", symbol, "limit", "buy", amount, price, params)

    def place_stop(self, symbol: str, amount: float, stop: float, limit: float,
                   client_order_id: str) -> dict:
        """A stop-loss limit sell resting on the exchange (ccxt's unified stopLossPrice)."""
        params = order_ids.create_params(self.client.ccxt, client_order_id) | {"stopLossPrice": stop}
        return self.client.call("create_order", symbol, "limit", "sell", amount, limit, params)

    def cancel(self, symbol: str, client_order_id: str) -> None:
        """Cancel an order known by its client order id; one the exchange no longer has (or
        never had) is fine."""
        order = self._find(symbol, client_order_id)
        if order is None or order.get("status") != "open":
            return
        try:
            self.client.call("cancel_order", order["id"], symbol)
        except OrderNotFound:
            pass

    def _find(self, symbol: str, client_order_id: str) -> dict | None:
        """The ccxt order with this client order id, or None when the exchange has none."""
        return self.client.with_retries(
            "fetch_order", lambda attempt: order_ids.find_by_client_id(
                self.client.ccxt, symbol, client_order_id), idempotent=True)

    def lookup(self, symbol: str, client_order_id: str) -> OrderStatus:
        """What the exchange knows of the order with this client order id."""
        order = self._find(symbol, client_order_id)
        if order is None:
            return OrderStatus("missing")
        state = "open" if order.get("status") == "open" else "done"
        fill = self._fill(order, symbol, order["side"], client_order_id) if order.get("filled") else None
        return OrderStatus(state, fill)

    def _place(self, symbol: str, side: str, amount: float, client_order_id: str,
               ioc_price: float | None = None) -> dict:
        """create_order (market, or limit IOC at `ioc_price`) with the client order id under
        the exchange's own parameter. Retried only where the id makes that safe, and then
        only after a lookup by the id says the order is not there."""
        ex = self.client.ccxt
        params = order_ids.create_params(ex, client_order_id)   # OrderRejected if not valid

        def attempt(i: int) -> dict:
            if i > 0:
                found = order_ids.find_by_client_id(ex, symbol, client_order_id)
                if found is not None:
                    log.info("%s: order %s had reached the exchange; not placing it again",
                             symbol, client_order_id)
                    return found
            if ioc_price is None:
                return ex.create_order(symbol, "market", side, amount, None, dict(params))
            return ex.create_order(symbol, "limit", side, amount, ioc_price,
                                   params | {"timeInForce": "IOC"})

        return self.client.with_retries("create_order", attempt,
                                        idempotent=order_ids.may_retry_create(ex))

    def _fill(self, order: dict, symbol: str, side: str, client_order_id: str) -> Fill:
        market = self.client.market(symbol)
        filled = float(order.get("filled") or 0.0)
        cost = float(order.get("cost") or 0.0)
        price = float(order.get("average") or (cost / filled if filled else order.get("price") or 0))
        cost = cost or filled * price
        fee_quote, fee_base = self._fees(order, symbol, market, price)
        if side == "buy" and fee_base:  # the fee came out of the bought coin
            filled -= fee_base
            cost = filled * price
        return Fill(symbol, side, filled, price, cost, fee_quote,
                    int(order.get("lastTradeTimestamp") or order.get("timestamp") or
                        self.client.clock() * 1000), str(order["id"]), client_order_id)

    def _fees(self, order: dict, symbol: str, market: Mapping, price: float) -> tuple[float, float]:
        """(all fees in quote, the part paid in the base coin) of an order."""
        fees = [f for f in (order.get("fees") or [order.get("fee")]) if f and f.get("cost") is not None]
        if not fees:
            fees = [t["fee"] for t in self._trades_of(order, symbol)
                    if t.get("fee") and t["fee"].get("cost") is not None]
        fee_quote, fee_base = 0.0, 0.0
        for f in fees:
            amount = float(f["cost"])
            if f.get("currency") == market["base"]:
                fee_base += amount
                fee_quote += amount * price
            else:
                fee_quote += self._to_quote(amount, f.get("currency"), market)
        return fee_quote, fee_base

    def _trades_of(self, order: dict, symbol: str) -> list[dict]:
        """The trades that filled an order (ccxt's fetchOrderTrades where the exchange has it)."""
        if self.client.ccxt.has.get("fetchOrderTrades"):
            return self.client.call("fetch_order_trades", order["id"], symbol)
        trades = self.client.call("fetch_my_trades", symbol, order.get("timestamp"))
        return [t for t in trades if str(t.get("order")) == str(order["id"])]

    def _to_quote(self, amount: float, currency: str | None, market: Mapping) -> float:
        """A fee in quote (as is), or converted at the fee currency's last price (e.g. BNB)."""
        if not amount or currency in (None, market["quote"]):
            return amount
        try:
            return amount * float(self.client.fetch_ticker(f"{currency}/{market['quote']}")["last"])
        except (ExchangeError, TypeError, ValueError) as exc:
            log.warning("fee of %g %s not converted to %s (%s); counted as 0", amount, currency,
                        market["quote"], exc)
            return 0.0

"""Order execution: pending -> sent -> booked, and reconciliation after a crash.

Every order is committed to the store as pending before it is sent, with a client order
id the exchange keeps; its fill is booked in the ledger and committed (order filled,
position, trade, paper cash) in one transaction before the bot moves on. An order whose
outcome a crash left unrecorded is looked up by its client order id at the next start.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable

from brokers import Broker
from domain import EntryIntent, ExchangeError, Fill, OrderRejected, OrderStatus, Position, Trade
from order_ids import client_order_id
from ledger import Ledger
from store import OrderRow, Store

log = logging.getLogger(__name__)


LIMIT_FILL = "limit_fill"  # the decision record's name for a limit entry's (part) fill
ABANDON_AFTER_S = 120.0   # market seconds: an order the venue does not know by then never reached it
MAX_BACKOFF_CYCLES = 4    # an unresolved order is looked up at least every 4 cycles


class OrderExecutor:
    """Sends orders through a broker and books their fills in the ledger and the store.

    An order whose answer was lost stays `unknown` in the store; its pair takes no new
    order (`busy`) and `resolve` asks the venue about it every cycle (backing off while the
    lookups fail) until the venue says what happened, then books exactly that."""

    def __init__(self, store: Store, broker: Broker, ledger: Ledger, group_of: Callable[[str], str],
                 persist_cash: bool, clock: Callable[[], float] = time.time, venue: Any = None):
        self.store, self.broker, self.ledger = store, broker, ledger
        self.group_of = group_of
        self.persist_cash = persist_cash     # paper: the ledger's cash is the account's
        self.clock = clock
        self.venue = venue        # the ccxt exchange whose client-id rules apply (None: paper)
        self._instance = self._instance_id()
        self._cycle = 0
        self._retry: dict[str, tuple[int, int]] = {}   # client id -> (failed lookups, next cycle)

    def _instance_id(self) -> str:
        instance = self.store.get_meta("instance")
        if instance is None:   # a name for this database's orders, not a time
            instance = format(int(time.time() * 1000) % 36 ** 6, "x")
            self.store.set_meta("instance", instance)
        return instance

    def next_client_order_id(self, symbol: str) -> str:
        """A new client order id, never handed out twice (the sequence is committed first)."""
        return client_order_id(self.venue, f"tb{self._instance}", symbol,
                               self.store.next_sequence("order"))

    def _cash(self) -> float | None:
        return self.ledger.cash if self.persist_cash else None

    # -- sending
    def _send(self, symbol: str, side: str, amount: float, price: float, reason: str,
              stop_loss: float | None = None, take_profit: float | None = None) -> Fill | None:
        """Record the order as pending, then send it. A refused order is marked rejected;
        one whose answer was lost is marked unknown and resolved later."""
        client_id = self.next_client_order_id(symbol)
        self.store.add_pending_order(client_id, symbol, side, amount, price, reason, stop_loss,
                                     take_profit)
        try:
            return self.broker.market_order(symbol, side, amount, client_id)
        except OrderRejected as exc:
            self.store.mark_order(client_id, "rejected", str(exc))
            log.warning("%s %s refused: %s", side, symbol, exc)
        except ExchangeError as exc:
            self.store.mark_order(client_id, "unknown", None)
            log.warning("%s %s: outcome unknown (%s); the pair takes no new order until the "
                        "exchange says what happened", side, symbol, exc)
        return None

    def buy(self, intent: EntryIntent) -> Position | None:
        fill = self._send(intent.symbol, "buy", intent.amount, intent.price, intent.reason,
                          intent.stop_loss, intent.take_profit)
        return None if fill is None else self.book_entry(fill, intent)

    def sell(self, position: Position, price: float, reason: str) -> tuple[Fill, Trade, Position | None] | None:
        """A refused exit leaves the position open (the trader tries again next cycle); a
        partly filled one leaves the rest open."""
        fill = self._send(position.symbol, "sell", position.amount, price, reason)
        if fill is None:
            return None
        trade, left = self.book_exit(fill, reason)
        return fill, trade, left

    # -- booking
    def book_entry(self, fill: Fill, intent: EntryIntent, order_done: bool = True) -> Position:
        position = self.ledger.open(fill, intent, self.group_of(fill.symbol))
        self.store.record_entry(fill, position, self._cash(), order_done)
        return position

    def book_exit(self, fill: Fill, reason: str, order_done: bool = True) -> tuple[Trade, Position | None]:
        """Book a sell; a remainder the market will not buy is written off as dust."""
        rules = self.broker.rules(fill.symbol)
        trade, left = self.ledger.close(fill, reason, lambda amount: rules.sellable(amount, fill.price))
        self.store.record_exit(fill, trade, left, self._cash(), self.ledger.dust, order_done)
        if trade.dust:
            log.warning("%s: %.10g left after the sale is below the market's minimum: kept as "
                        "dust, its cost charged to the trade", fill.symbol, trade.dust)
        return trade, left

    # -- resolving
    def busy(self) -> set[str]:
        """Pairs with an order whose outcome is not known yet, or a resting limit entry: they
        take no new order."""
        return {o.symbol for o in self.store.pending_orders() + self.store.live_limits()}

    def unresolved(self) -> list[OrderRow]:
        return self.store.pending_orders()

    def resolve(self, restart: bool = False) -> list[Fill]:
        """Ask the venue about every unresolved order that is due; book what it says.
        Returns the fills booked."""
        self._cycle += 1
        self._found: list[Fill] = []
        for order in self.store.pending_orders():
            attempts, due = self._retry.get(order.client_order_id, (0, 0))
            if not restart and self._cycle < due:
                continue
            try:
                status = self.broker.lookup(order.symbol, order.client_order_id)
            except ExchangeError as exc:
                self._back_off(order, attempts, f"lookup failed: {exc}")
                continue
            if not self._settle(order, status, restart):
                self._back_off(order, attempts, f"the exchange says {status.state}")
        return self._found

    def _back_off(self, order: OrderRow, attempts: int, why: str) -> None:
        wait = min(MAX_BACKOFF_CYCLES, 2 ** attempts)
        self._retry[order.client_order_id] = (attempts + 1, self._cycle + wait)
        level = logging.WARNING if attempts == 0 else logging.DEBUG
        log.log(level, "%s %s %s still unresolved (%s); asking again in %d cycle(s)",
                order.side, order.symbol, order.client_order_id, why, wait)

    def _settle(self, order: OrderRow, status: OrderStatus, restart: bool) -> bool:
        """Book or close one order from what the venue says; False when it cannot yet."""
        cid = order.client_order_id
        if status.state == "open":
            return False            # still executing: ask again
        if status.fill is not None:
            self._retry.pop(cid, None)
            self._book_found(order, status.fill)
            return True
        if status.state == "done":
            self.store.mark_order(cid, "canceled", "the exchange filled none of it")
        elif restart or self.clock() * 1000 - order.created_ms >= ABANDON_AFTER_S * 1000:
            self.store.mark_order(cid, "abandoned", "the exchange does not know it: never placed")
        else:
            return False
        self._retry.pop(cid, None)
        return True

    def _book_found(self, order: OrderRow, fill: Fill) -> None:
        self._found.append(fill)
        if order.side == "buy":
            self.book_entry(fill, intent_of(order))
            log.info("%s: entry %s found filled on the exchange; position booked", order.symbol,
                     order.client_order_id)
        elif order.symbol in self.ledger.positions:
            self.book_exit(fill, order.reason or "reconciled")
            log.info("%s: exit %s found filled on the exchange; trade booked", order.symbol,
                     order.client_order_id)
        else:
            self._found.pop()
            self.store.mark_order(order.client_order_id, "abandoned",
                                  "filled on the exchange after the position was closed")
            log.error("%s: sell %s filled on the exchange but the bot holds no position: check "
                      "the account", order.symbol, order.client_order_id)

    def reconcile(self) -> None:
        """At start-up: settle every order a crash left unresolved."""
        self.resolve(restart=True)

    # -- limit entries
    def buy_limit(self, intent: EntryIntent, price: float, attempt: int = 0,
                  amount: float | None = None) -> str:
        """Rest a post-only limit buy at `price` (recorded as pending before it is sent);
        returns its client order id."""
        amount = intent.amount if amount is None else amount
        cid = self.next_client_order_id(intent.symbol)
        self.store.add_pending_order(cid, intent.symbol, "buy", amount, price, intent.reason,
                                     intent.stop_loss, intent.take_profit, kind="limit",
                                     attempt=attempt)
        try:
            order = self.broker.place_limit(intent.symbol, amount, price, cid)
        except OrderRejected as exc:
            self.store.mark_order(cid, "rejected", str(exc))
            log.info("limit buy %s refused: %s", intent.symbol, exc)
            return cid
        except ExchangeError as exc:
            self.store.mark_order(cid, "unknown", None)
            log.warning("limit buy %s: answer lost (%s); looked up next cycle", intent.symbol, exc)
            return cid
        self.store.mark_order(cid, "open", None, exchange_order_id=str(order.get("id")))
        return cid

    def resolve_limits(self, timeout_s: float, reprices: int,
                       best_bid: Callable[[str], float]) -> list[tuple[Fill, Position]]:
        """Book what the resting limit entries filled; cancel the ones past their timeout and
        reprice them at the best bid (at most `reprices` times). Returns the fills booked."""
        booked = []
        for row in self.store.live_limits():
            try:
                status = self.broker.lookup(row.symbol, row.client_order_id)
                expired = (status.state == "open"
                           and self.clock() * 1000 - row.created_ms >= timeout_s * 1000)
                if expired:
                    self.broker.cancel(row.symbol, row.client_order_id)
                    status = self.broker.lookup(row.symbol, row.client_order_id)
            except (ExchangeError, OrderRejected) as exc:
                log.warning("%s: limit entry %s not checked (%s)", row.symbol,
                            row.client_order_id, exc)
                continue
            booked += self._book_limit(row, status)
            if expired and status.state != "open":
                self._reprice(row, status, reprices, best_bid)
        return booked

    def _book_limit(self, row: OrderRow, status: OrderStatus) -> list[tuple[Fill, Position]]:
        done = status.state != "open"
        part = unbooked_part(row, status.fill)
        if part is not None:
            position = self.book_entry(part, intent_of(row), order_done=done)
            return [(part, position)]
        if done:
            self.store.mark_order(row.client_order_id, "filled" if status.fill else
                                  ("abandoned" if status.state == "missing" else "canceled"), None)
        elif row.status != "open":
            self.store.mark_order(row.client_order_id, "open", None)
        return []

    def _reprice(self, row: OrderRow, status: OrderStatus, reprices: int,
                 best_bid: Callable[[str], float]) -> None:
        left = row.amount - (status.fill.amount if status.fill else 0.0)
        if row.attempt >= reprices or not self.broker.rules(row.symbol).sellable(left, row.price):
            log.info("%s: limit entry %s expired after %d reprice(s)", row.symbol,
                     row.client_order_id, row.attempt)
            return
        price = best_bid(row.symbol)
        moved = price - row.price       # the stops keep their distance from the entry
        intent = replace(intent_of(row), price=price, stop_loss=row.stop_loss + moved,
                         take_profit=row.take_profit + moved)
        self.buy_limit(intent, price, row.attempt + 1, amount=left)
def unbooked_part(row: OrderRow, fill: Fill | None) -> Fill | None:
    """What of a resting order's fill (so far) has not been booked yet, as a fill of its own."""
    if fill is None or fill.amount <= row.filled * (1 + 1e-12):
        return None
    amount = fill.amount - row.filled
    return Fill(fill.symbol, fill.side, amount, fill.price, amount * fill.price,
                max(0.0, fill.fee - row.fee), fill.timestamp_ms, fill.order_id,
                fill.client_order_id)


def intent_of(order: OrderRow) -> EntryIntent:
    """The entry an order row was sent for: its stops travel with it in the store."""
    return EntryIntent(order.symbol, order.price, order.amount, order.stop_loss, order.take_profit,
                       score=0.0, probability=None, features=None, reason=order.reason or "rule")

"""Order execution: pending -> sent -> booked, and reconciliation after a crash.

Every order is committed to the store as pending before it is sent, with a client order
id the exchange keeps; its fill is booked in the ledger and committed (order filled,
position, trade, paper cash) in one transaction before the bot moves on. An order whose
outcome a crash left unrecorded is looked up by its client order id at the next start.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from brokers import Broker
from domain import EntryIntent, Fill, OrderRejected, Position, Trade
from exchange import make_client_order_id
from ledger import Ledger
from store import OrderRow, Store

log = logging.getLogger(__name__)


class OrderExecutor:
    """Sends orders through a broker and books their fills in the ledger and the store."""

    def __init__(self, store: Store, broker: Broker, ledger: Ledger, group_of: Callable[[str], str],
                 persist_cash: bool):
        self.store, self.broker, self.ledger = store, broker, ledger
        self.group_of = group_of
        self.persist_cash = persist_cash     # paper: the ledger's cash is the account's
        self._instance = self._instance_id()

    def _instance_id(self) -> str:
        instance = self.store.get_meta("instance")
        if instance is None:   # a name for this database's orders, not a time
            instance = format(int(time.time() * 1000) % 36 ** 6, "x")
            self.store.set_meta("instance", instance)
        return instance

    def _cash(self) -> float | None:
        return self.ledger.cash if self.persist_cash else None

    def _send(self, symbol: str, side: str, amount: float, price: float, reason: str,
              stop_loss: float | None = None, take_profit: float | None = None) -> Fill | None:
        """Record the order as pending, then send it; a refused order is marked with why."""
        client_id = make_client_order_id(f"tb{self._instance}", symbol,
                                         self.store.next_sequence("order"))
        self.store.add_pending_order(client_id, symbol, side, amount, price, reason, stop_loss,
                                     take_profit)
        try:
            return self.broker.market_order(symbol, side, amount, client_id)
        except OrderRejected as exc:
            self.store.mark_order(client_id, "rejected", str(exc))
            log.warning("%s %s refused: %s", side, symbol, exc)
            return None

    def buy(self, intent: EntryIntent) -> Position | None:
        fill = self._send(intent.symbol, "buy", intent.amount, intent.price, intent.reason,
                          intent.stop_loss, intent.take_profit)
        return None if fill is None else self.book_entry(fill, intent)

    def sell(self, position: Position, price: float, reason: str) -> tuple[Fill, Trade, Position | None] | None:
        """A refused exit leaves the position open (the trader tries again next cycle)."""
        fill = self._send(position.symbol, "sell", position.amount, price, reason)
        if fill is None:
            return None
        trade, left = self.book_exit(fill, reason)
        return fill, trade, left

    def book_entry(self, fill: Fill, intent: EntryIntent) -> Position:
        position = self.ledger.open(fill, intent, self.group_of(fill.symbol))
        self.store.record_entry(fill, position, self._cash())
        return position

    def book_exit(self, fill: Fill, reason: str) -> tuple[Trade, Position | None]:
        trade, left = self.ledger.close(fill, reason)
        self.store.record_exit(fill, trade, left, self._cash())
        return trade, left

    def reconcile(self) -> None:
        """Settle every order a crash left pending: book its fill if the broker has one."""
        for order in self.store.pending_orders():
            self._settle(order)

    def _settle(self, order: OrderRow) -> None:
        fill = self.broker.find_order(order.symbol, order.client_order_id)
        held = order.symbol in self.ledger.positions
        if fill is None:
            self.store.mark_order(order.client_order_id, "abandoned", "no fill found on the venue")
        elif order.side == "buy" and not held:
            self.book_entry(fill, intent_of(order))
            log.info("%s: entry %s found filled after a restart; position booked", order.symbol,
                     order.client_order_id)
        elif order.side == "sell" and held:
            self.book_exit(fill, order.reason or "reconciled")
            log.info("%s: exit %s found filled after a restart; trade booked", order.symbol,
                     order.client_order_id)
        else:
            self.store.mark_order(order.client_order_id, "abandoned", "already reflected")


def intent_of(order: OrderRow) -> EntryIntent:
    """The entry an order row was sent for: its stops travel with it in the store."""
    return EntryIntent(order.symbol, order.price, order.amount, order.stop_loss, order.take_profit,
                       score=0.0, probability=None, features=None, reason=order.reason or "rule")

"""Stops on the exchange: a position is protected while the bot is down or stuck.

Live, on an exchange with stop-loss orders (ccxt's `has['createStopLossOrder']`), every
position gets a stop-loss limit sell resting on the exchange right after its entry fills:
triggered at the position's stop, limited MAX_SLIPPAGE below it. Each cycle (and at
start-up) `reconcile` asks the exchange about every stop: a stop that filled, even in part
and even while the bot was away, is booked as an exit with the exchange's price and fee; a
stop that is gone while its position is still open is placed again. Before the bot exits a
position itself it cancels the stop and makes sure it is cancelled (`release`), booking
whatever filled in the meantime, so the coins are never sold twice.

Elsewhere (paper trading, exchanges without stop orders) the bot's own stop is in force.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from domain import ExchangeError, Fill, OrderRejected, OrderStatus, Position, Trade
from orders import OrderExecutor, unbooked_part
from store import OrderRow, Store

log = logging.getLogger(__name__)

EXCHANGE_STOP = "exchange_stop"   # the exit reason of a fill of a stop resting on the exchange


@dataclass(frozen=True)
class StopFill:
    """A part of a position the exchange's stop sold, as booked."""
    fill: Fill
    trade: Trade
    left: Position | None


def left_to_exchange(reason: str, price: float, position: Position, limit_below: float) -> bool:
    """Whether a bot-side stop-loss exit waits for the exchange's stop instead: it does
    unless the price is through the stop's limit (where the resting order cannot fill)."""
    return (reason in ("stop_loss", "trailing_stop")
            and price > position.stop_loss * (1.0 - limit_below))


class ExchangeStops:
    """Keeps one stop-loss order on the exchange for each open position."""

    def __init__(self, store: Store, broker, orders: OrderExecutor, limit_below: float):
        self.store, self.broker, self.orders = store, broker, orders
        self.limit_below = limit_below   # the stop's limit price: this share below its trigger

    # -- placing
    def protect(self, position: Position) -> None:
        """Place the position's stop on the exchange (recorded as pending before it is sent)."""
        stop = position.stop_loss
        limit = stop * (1.0 - self.limit_below)
        try:
            amount, limit = self.broker.round_order(position.symbol, "sell", position.amount, limit)
        except OrderRejected as exc:
            log.warning("%s: no stop on the exchange (%s); the bot's own stop is in force",
                        position.symbol, exc)
            return
        cid = self.orders.next_client_order_id(position.symbol)
        self.store.add_pending_order(cid, position.symbol, "sell", amount, limit, "stop_loss",
                                     stop_loss=stop, kind="stop")
        try:
            order = self.broker.place_stop(position.symbol, amount, stop, limit, cid)
        except OrderRejected as exc:
            self.store.mark_order(cid, "rejected", str(exc))
            log.warning("%s: the exchange refused the stop (%s); the bot's own stop is in force",
                        position.symbol, exc)
            return
        except ExchangeError as exc:
            self.store.mark_order(cid, "unknown", None)
            log.warning("%s: stop order sent, answer lost (%s); it is looked up next cycle",
                        position.symbol, exc)
            return
        self.store.mark_order(cid, "open", None, exchange_order_id=str(order.get("id")))

    # -- each cycle
    def reconcile(self, positions: dict[str, Position], busy: set[str]) -> list[StopFill]:
        """Book every stop fill; place the stops that are missing, except on pairs with an
        order whose outcome is unknown (their coins may be sold). Returns what was booked."""
        booked: list[StopFill] = []
        protected = set()
        for row in self.store.live_stops():
            try:
                status = self.broker.lookup(row.symbol, row.client_order_id)
            except ExchangeError as exc:
                log.warning("%s: stop %s not checked (%s)", row.symbol, row.client_order_id, exc)
                protected.add(row.symbol)      # it may well be there: do not place another
                continue
            booked += self._apply(row, status)
            if status.state == "open" and row.symbol in positions:
                protected.add(row.symbol)
        for symbol, position in list(positions.items()):
            if symbol not in protected and symbol not in busy:
                self.protect(position)
        return booked

    def _apply(self, row: OrderRow, status: OrderStatus) -> list[StopFill]:
        """Book the part of the stop filled since the last look; close the row when done."""
        done = status.state != "open"
        out = []
        new = unbooked_part(row, status.fill)
        if new is not None and row.symbol in self.orders.ledger.positions:
            trade, left = self.orders.book_exit(new, EXCHANGE_STOP, order_done=done)
            out.append(StopFill(new, trade, left))
            log.info("%s: the exchange's stop sold %.10g at %.10g", row.symbol, new.amount, new.price)
        elif done:
            final = "filled" if status.fill is not None else (
                "abandoned" if status.state == "missing" else "canceled")
            self.store.mark_order(row.client_order_id, final, None)
        elif row.status != "open":
            self.store.mark_order(row.client_order_id, "open", None)
        return out

    def refresh(self, position: Position, booked: list[StopFill] | None = None) -> None:
        """After the position grew (a limit entry filled more): one stop for all of it."""
        if self.release(position.symbol, booked) and position.symbol in self.orders.ledger.positions:
            self.protect(self.orders.ledger.positions[position.symbol])

    # -- before the bot sells
    def release(self, symbol: str, booked: list[StopFill] | None = None) -> bool:
        """Cancel the symbol's stops and confirm they are gone, booking what they filled
        meanwhile (added to `booked`). False when that cannot be confirmed now (the bot must
        not sell yet)."""
        for row in self.store.live_stops():
            if row.symbol != symbol:
                continue
            try:
                self.broker.cancel(symbol, row.client_order_id)
                status = self.broker.lookup(symbol, row.client_order_id)
            except ExchangeError as exc:
                log.warning("%s: stop %s not cancelled yet (%s); the exit waits",
                            symbol, row.client_order_id, exc)
                return False
            if status.state == "open":
                return False
            parts = self._apply(row, status)
            if booked is not None:
                booked += parts
        return True

"""The one accountant: fills open and close positions, closing makes a Trade, cash moves.

The live trader and the backtester both keep their books here, so a position's stops, a
trade's profit and the cash after a fill are computed in one place. The ledger does no
I/O: the order executor persists what it returns.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Mapping

from domain import EntryIntent, Fill, Position, Trade

DUST = 1e-9   # a remainder this small (relative to the position) counts as sold out


class Ledger:
    """Cash in the quote currency, the open positions by symbol, and when each pair was last
    sold (the strategy's cooldown reads it)."""

    def __init__(self, cash: float, positions: Iterable[Position] = (),
                 last_exits: Mapping[str, int] | None = None):
        self.cash = float(cash)
        self.positions: dict[str, Position] = {p.symbol: p for p in positions}
        self.last_exits: dict[str, int] = dict(last_exits or {})
        self.dust: dict[str, float] = {}   # coins held that the market will not buy

    def open(self, fill: Fill, intent: EntryIntent, group: str) -> Position:
        """A buy fill opens a position (what filled, if only part did); its stops keep the
        intent's distances from the actual fill price. A second buy of a held pair (two
        orders whose outcomes were settled late) adds to the position."""
        self.cash -= fill.cost + fill.fee
        held = self.positions.get(fill.symbol)
        if held is not None:
            self.positions[fill.symbol] = held.grown(fill)
            return self.positions[fill.symbol]
        position = Position(
            fill.symbol, fill.amount, fill.price, fill.timestamp_ms,
            stop_loss=fill.price - (intent.price - intent.stop_loss),
            take_profit=fill.price + (intent.take_profit - intent.price),
            entry_fee=fill.fee, group=group, features=intent.features,
            entry_client_order_id=fill.client_order_id, entry_reason=intent.reason,
            probability=intent.probability)
        self.positions[fill.symbol] = position
        return position

    def close(self, fill: Fill, reason: str,
              sellable: Callable[[float], bool] | None = None) -> tuple[Trade, Position | None]:
        """A sell fill closes the position, or the part of it that was sold: returns the trade
        and what is left open (None when nothing is). A remainder that `sellable` says the
        market will not take is dust: the position closes, and the trade pays for it."""
        position = self.positions[fill.symbol]
        left = position.amount - fill.amount
        self.cash += fill.cost - fill.fee
        self.last_exits[fill.symbol] = fill.timestamp_ms
        if left <= position.amount * DUST or (sellable is not None and not sellable(left)):
            dust = max(0.0, left)
            if dust > position.amount * DUST:
                self.dust[fill.symbol] = self.dust.get(fill.symbol, 0.0) + dust
            else:
                dust = 0.0
            del self.positions[fill.symbol]
            return Trade.closing(position, fill, reason, dust), None
        trade = Trade.closing(position, fill, reason)
        self.positions[fill.symbol] = position.reduced(fill.amount)
        return trade, self.positions[fill.symbol]

    def move_stop(self, symbol: str, stop_loss: float, high_water: float) -> Position:
        """A raised stop (trailing, break-even) and the high-water mark it follows."""
        position = replace(self.positions[symbol], stop_loss=stop_loss, high_water=high_water)
        self.positions[symbol] = position
        return position

    def equity(self, prices: Mapping[str, float]) -> float:
        """Cash plus the open positions at these prices (entry price where none is known)."""
        return (self.cash + sum(p.amount * prices.get(s, p.entry_price)
                                for s, p in self.positions.items())
                + sum(amount * prices.get(s, 0.0) for s, amount in self.dust.items()))

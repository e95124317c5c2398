"""Value types shared by every layer: bars, the market view, intents, fills, positions,
trades, and the errors an order can meet. Imports nothing of the project and no numpy
at run time, so the store, the reporter and the API can use them cheaply.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import numpy as np


class ExchangeError(Exception):
    """The exchange failed or is unreachable; the message says what and where."""


class OrderRejected(ExchangeError):
    """The order was refused (limits, funds, precision, a thin book): it did not execute."""


class OrderNotFound(ExchangeError):
    """The exchange does not know this order."""


@dataclass(frozen=True)
class StrategyParams:
    """What the decisions around a strategy are parameterised by: the timeframe, the exits
    (see `exits`), the model's floor and the cooldown. A percent setting > 0 replaces its
    ATR twin; 0 turns the take-profit, the trailing stop and the break-even move off."""
    timeframe_ms: int
    stop_loss_atr: float = 2.0
    take_profit_atr: float = 3.0
    max_hold_candles: int = 48
    min_confidence: float = 0.55
    cooldown_candles: int = 1
    min_expected_return: float = 0.0             # the model's expected net return must exceed it
    stop_loss_pct: float = 0.0
    take_profit_pct: float = 0.0
    roi: tuple[tuple[int, float], ...] = ()      # (minutes held, minimum return), sorted
    trailing_stop: float = 0.0                   # distance below the high-water mark
    trailing_offset: float = 0.0                 # ... once the high is this far above entry
    breakeven_trigger: float = 0.0
    breakeven_offset: float = 0.002              # the stop's place above entry: the fees
    use_exit_signal: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "roi", tuple(sorted((int(m), float(r)) for m, r in self.roi)))

    @classmethod
    def from_config(cls, config, timeframe_ms: int | None = None) -> "StrategyParams":
        """The config's settings; `timeframe_ms` (the strategy's decision timeframe)
        defaults to TIMEFRAME."""
        return cls(timeframe_ms=timeframe_ms or int(config.timeframe_seconds * 1000),
                   stop_loss_atr=config.stop_loss_atr, take_profit_atr=config.take_profit_atr,
                   max_hold_candles=config.max_hold_candles,
                   min_confidence=config.ml_min_confidence,
                   min_expected_return=config.ml_min_expected_return,
                   cooldown_candles=config.cooldown_candles,
                   stop_loss_pct=config.stop_loss_pct, take_profit_pct=config.take_profit_pct,
                   roi=parse_roi(config.minimal_roi), trailing_stop=config.trailing_stop,
                   trailing_offset=config.trailing_offset,
                   breakeven_trigger=config.breakeven_trigger,
                   use_exit_signal=config.use_exit_signal)

    def levels(self, price, atr):
        """(stop, take-profit) for an entry at `price` with `atr` (numbers or arrays)."""
        stop = (price * (1.0 - self.stop_loss_pct) if self.stop_loss_pct > 0
                else price - self.stop_loss_atr * atr)
        if self.take_profit_pct > 0:
            take = price * (1.0 + self.take_profit_pct)
        elif self.take_profit_atr > 0:
            take = price + self.take_profit_atr * atr
        else:
            take = price + math.inf
        return stop, take


def parse_roi(text: str) -> tuple[tuple[int, float], ...]:
    """MINIMAL_ROI '0:0.04,30:0.02,60:0.01' (minutes held: minimum return) -> sorted pairs."""
    table = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        minutes, _, ret = part.partition(":")
        table.append((int(minutes), float(ret)))
    return tuple(sorted(table))


@dataclass(frozen=True)
class Bar:
    """Prices seen since the last check: a closed candle, or a fresh price (all four equal)."""
    open: float
    high: float
    low: float
    close: float

    @classmethod
    def at(cls, price: float) -> "Bar":
        return cls(price, price, price, price)


@dataclass(frozen=True)
class MarketView:
    """What the strategy sees at one decision point, for P pairs.

    `latest` maps indicator names to (P,) values at the latest closed candle; `recent_close`
    holds the last K+1 closes (P, K+1), the last column being the latest close; `now_ms` is
    the close time of the latest closed candle (data time, not a clock).
    """
    symbols: tuple[str, ...]
    latest: Mapping[str, "np.ndarray"]
    recent_close: "np.ndarray"
    now_ms: int
    features: "np.ndarray | None" = None   # the model's feature rows, when already computed
    scores: "np.ndarray | None" = None     # the strategy's entry scores, when already computed

    @property
    def close(self) -> "np.ndarray":
        return self.recent_close[:, -1]


@dataclass(frozen=True)
class Candidate:
    symbol: str
    price: float
    atr: float
    score: float
    probability: float | None
    features: tuple[float, ...] | None


@dataclass(frozen=True)
class EntryIntent:
    symbol: str
    price: float
    amount: float
    stop_loss: float
    take_profit: float
    score: float
    probability: float | None
    features: tuple[float, ...] | None
    reason: str  # "rule" | "model"


@dataclass(frozen=True)
class ExitIntent:
    symbol: str
    price: float
    reason: str  # "stop_loss" | "take_profit" | "time_limit" | ...


@dataclass(frozen=True)
class Decisions:
    candidates: tuple[Candidate, ...]
    entries: tuple[EntryIntent, ...]
    skipped: tuple[tuple[str, str], ...]  # (symbol, reason)
    used_model: bool


@dataclass(frozen=True)
class Fill:
    """An executed order. Buy: spent cost + fee quote, got amount base. Sell: the reverse."""
    symbol: str
    side: str
    amount: float
    price: float          # average fill price
    cost: float           # amount * price, in quote, fee excluded
    fee: float            # in quote
    timestamp_ms: int
    order_id: str
    client_order_id: str


@dataclass(frozen=True)
class OrderStatus:
    """What the venue says of an order looked up by its client order id.

    state: "open" (resting or still executing), "done" (filled, canceled or expired: no
    more will fill), or "missing" (the venue does not know it); `fill` is what has filled
    so far, if anything."""
    state: str
    fill: Fill | None = None


@dataclass(frozen=True)
class Position:
    symbol: str
    amount: float
    entry_price: float
    entry_time_ms: int
    stop_loss: float
    take_profit: float
    entry_fee: float = 0.0
    group: str = "other"
    features: tuple[float, ...] | None = None
    entry_client_order_id: str = ""
    entry_reason: str = "rule"
    probability: float | None = None
    high_water: float = 0.0     # the highest price since entry (0: not seen beyond the entry)

    def reduced(self, amount_sold: float) -> "Position":
        """What is left after selling `amount_sold`; the entry fee shrinks in proportion."""
        left = self.amount - amount_sold
        return replace(self, amount=left, entry_fee=self.entry_fee * left / self.amount)

    def grown(self, fill: Fill) -> "Position":
        """The position after another buy fill: average entry price, both fees; the stops
        and the entry time stay those of the first entry."""
        amount = self.amount + fill.amount
        price = (self.amount * self.entry_price + fill.cost) / amount
        return replace(self, amount=amount, entry_price=price, entry_fee=self.entry_fee + fill.fee)


@dataclass(frozen=True)
class Trade:
    """A closed round trip (or the closed part of one); profit is net of both fees and
    return_pct is on cost plus entry fee."""
    symbol: str
    amount: float
    entry_price: float
    exit_price: float
    entry_time_ms: int
    exit_time_ms: int
    entry_fee: float
    exit_fee: float
    profit: float
    return_pct: float
    exit_reason: str
    entry_reason: str = "rule"
    probability: float | None = None
    features: tuple[float, ...] | None = None
    entry_client_order_id: str = ""
    exit_client_order_id: str = ""
    dust: float = 0.0    # coins left that the market will not buy: their cost is in `profit`

    @classmethod
    def closing(cls, position: Position, fill: Fill, reason: str, dust: float = 0.0) -> "Trade":
        """The trade a sell `fill` makes of `position`: profit on the amount sold, with the
        matching share of the entry fee, less what the unsellable `dust` cost."""
        held = fill.amount + dust
        entry_fee = position.entry_fee * min(1.0, held / position.amount)
        cost = held * position.entry_price
        profit = fill.amount * fill.price - cost - entry_fee - fill.fee
        return cls(position.symbol, fill.amount, position.entry_price, fill.price,
                   position.entry_time_ms, fill.timestamp_ms, entry_fee, fill.fee, profit,
                   100.0 * profit / (cost + entry_fee), reason, position.entry_reason,
                   position.probability, position.features, position.entry_client_order_id,
                   fill.client_order_id, dust)

"""A market's fees, precision and limits, and the one rounding every broker uses.

Live and paper orders take their rules from ccxt's market description (`from_ccxt`); the
backtester derives them from a price level the way the simulated exchange derives its
markets (`for_price`). Either way `round_order` truncates the amount to the step, rounds
the price to the nearest tick and checks the exchange's limits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any, Mapping

from domain import OrderRejected

TAKER_FEE = 0.001   # Binance spot's base taker (and maker) fee; the simulated exchange charges it
# Minimum order value by quote currency (the simulated exchange's 5 USDT; Binance's BTC/ETH/BNB).
MIN_NOTIONAL = {"BTC": 0.0001, "ETH": 0.001, "BNB": 0.01}
DEFAULT_MIN_NOTIONAL = 5.0

# ccxt's precision modes (ccxt.base.decimal_to_precision), spelled out to keep ccxt out.
DECIMAL_PLACES, SIGNIFICANT_DIGITS, TICK_SIZE = 2, 3, 4


def tick_size(price: float) -> float:
    """The price tick of a simulated market at this price level: 5 significant digits."""
    return max(1e-8, 10.0 ** (math.floor(math.log10(price)) - 5))


def step_size(price: float) -> float:
    """The amount step of a simulated market at this (USDT) price level: steps worth 0.1-1 USDT."""
    return min(1.0, 10.0 ** (-math.floor(math.log10(price)) - 1))


def quote_of(symbol: str) -> str:
    return symbol.split("/")[1].split(":")[0] if "/" in symbol else ""


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.10g}"


def _to_grid(x: float, unit: float, down: bool) -> float:
    """x rounded to a multiple of unit, without float dust: truncated when down (a value a
    hair below a step, float noise, counts as the step), else to the nearest with halves up
    (as ccxt rounds)."""
    units = Decimal(repr(x)) / Decimal(repr(unit))
    n = (units + Decimal("1e-9")).to_integral_value(ROUND_FLOOR) if down \
        else units.to_integral_value(ROUND_HALF_UP)
    return float(n * Decimal(repr(unit)))


def _significant(x: float, digits: int, down: bool) -> float:
    if x <= 0:
        return 0.0
    unit = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return _to_grid(x, unit, down)


def _bound(limits: Mapping, key: str) -> tuple[float | None, float | None]:
    entry = limits.get(key) or {}
    lo, hi = entry.get("min"), entry.get("max")
    return (float(lo) if lo else None), (float(hi) if hi else None)


@dataclass(frozen=True)
class MarketRules:
    """Precision and limits of one market (what exchangeInfo's filters say) and its fees.

    `amount_precision` and `price_precision` are a step/tick in TICK_SIZE mode, a number of
    decimals in DECIMAL_PLACES mode and of significant digits in SIGNIFICANT_DIGITS mode.
    """
    symbol: str
    amount_precision: float | None
    price_precision: float | None
    precision_mode: int = TICK_SIZE
    min_amount: float | None = None
    max_amount: float | None = None
    min_price: float | None = None
    max_price: float | None = None
    min_notional: float | None = None
    max_notional: float | None = None
    taker: float = TAKER_FEE
    maker: float = TAKER_FEE

    @classmethod
    def from_ccxt(cls, market: Mapping[str, Any], precision_mode: int = TICK_SIZE) -> "MarketRules":
        precision = market.get("precision") or {}
        limits = market.get("limits") or {}
        amount, price, cost = _bound(limits, "amount"), _bound(limits, "price"), _bound(limits, "cost")
        fee = lambda k: float(market[k]) if market.get(k) is not None else TAKER_FEE  # noqa: E731
        return cls(market["symbol"], precision.get("amount"), precision.get("price"),
                   precision_mode, *amount, *price, *cost, taker=fee("taker"), maker=fee("maker"))

    @classmethod
    def for_price(cls, symbol: str, price: float, fee: float = TAKER_FEE) -> "MarketRules":
        """Derived from a price level as the simulated exchange derives its markets. For quotes
        other than USD-like ones the step is scaled by the quote's minimum notional (ETH/BTC
        gets 0.0001 ETH, as on Binance)."""
        min_notional = MIN_NOTIONAL.get(quote_of(symbol), DEFAULT_MIN_NOTIONAL)
        usd_like = price * DEFAULT_MIN_NOTIONAL / min_notional
        step = step_size(usd_like)
        return cls(symbol, step, tick_size(price), TICK_SIZE, min_amount=step,
                   max_amount=10.0 ** math.ceil(math.log10(1e8 / usd_like)),
                   min_notional=min_notional, taker=fee, maker=fee)

    @property
    def step(self) -> float | None:
        """The amount step in quote-independent units (TICK_SIZE and DECIMAL_PLACES modes)."""
        return self._unit(self.amount_precision)

    @property
    def tick(self) -> float | None:
        return self._unit(self.price_precision)

    def _unit(self, precision: float | None) -> float | None:
        if precision is None or self.precision_mode == SIGNIFICANT_DIGITS:
            return None
        return float(precision) if self.precision_mode == TICK_SIZE else 10.0 ** -int(precision)

    def round_amount(self, amount: float) -> float:
        """Truncated to the market's amount precision (never more than asked, but for float
        noise a billionth of a step below a step)."""
        if self.amount_precision is None:
            return amount
        if self.precision_mode == SIGNIFICANT_DIGITS:
            return _significant(amount, int(self.amount_precision), down=True)
        return _to_grid(amount, self.step, down=True)

    def round_price(self, price: float) -> float:
        """To the nearest tick (at least one tick)."""
        if self.price_precision is None:
            return price
        if self.precision_mode == SIGNIFICANT_DIGITS:
            return _significant(price, int(self.price_precision), down=False)
        return max(self.tick, _to_grid(price, self.tick, down=False))

    def sellable(self, amount: float, price: float) -> bool:
        """Whether the market would take a sell of `amount` at `price` (else it is dust)."""
        try:
            self.round_order("sell", amount, price)
        except OrderRejected:
            return False
        return True

    def round_order(self, side: str, amount: float, price: float) -> tuple[float, float]:
        """(amount, price) rounded to the market's step and tick; OrderRejected if off-limits."""
        s = self.symbol
        if side not in ("buy", "sell"):
            raise OrderRejected(f"{s}: side {side!r} is neither buy nor sell")
        if not (amount is not None and amount > 0 and math.isfinite(amount)):
            raise OrderRejected(f"{s}: amount {_fmt(amount)} is not a positive number")
        if not (price is not None and price > 0 and math.isfinite(price)):
            raise OrderRejected(f"{s}: price {_fmt(price)} is not a positive number")
        rounded, rprice = self.round_amount(amount), self.round_price(price)
        shown = _fmt(amount) if rounded == amount else f"{_fmt(amount)} (rounded {_fmt(rounded)})"
        if rounded <= 0 or (self.min_amount is not None and rounded < self.min_amount):
            minimum = self.min_amount if self.min_amount is not None else self.step
            raise OrderRejected(f"{s}: amount {shown} below minimum {_fmt(minimum)}")
        if self.max_amount is not None and rounded > self.max_amount:
            raise OrderRejected(f"{s}: amount {shown} above maximum {_fmt(self.max_amount)}")
        if ((self.min_price is not None and rprice < self.min_price)
                or (self.max_price is not None and rprice > self.max_price)):
            raise OrderRejected(f"{s}: price {_fmt(rprice)} outside "
                                f"[{_fmt(self.min_price)}, {_fmt(self.max_price)}]")
        notional = rounded * rprice
        if self.min_notional is not None and notional < self.min_notional:
            raise OrderRejected(f"{s}: notional {_fmt(notional)} below minimum {_fmt(self.min_notional)}")
        if self.max_notional is not None and notional > self.max_notional:
            raise OrderRejected(f"{s}: notional {_fmt(notional)} above maximum {_fmt(self.max_notional)}")
        return rounded, rprice

"""Position sizing, stops, exposure limits, correlation groups and the drawdown kill switch."""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Mapping, Sequence

from config import parse_correlation_groups
from domain import Candidate, EntryIntent, OrderRejected, Position, StrategyParams
from market_rules import TAKER_FEE

log = logging.getLogger(__name__)

# (symbol, side, amount, price) -> (amount, price) rounded to the market's precision;
# raises domain.OrderRejected when the order cannot meet the market's limits.
RoundOrder = Callable[[str, str, float, float], tuple[float, float]]

SLIPPAGE_ALLOWANCE = 0.03  # share of cash kept back for fees, spread, slippage and drift

DEFAULT_GROUPS: dict[str, frozenset[str]] = {
    "majors": frozenset({"BTC", "ETH"}),
    "large_caps": frozenset({"BNB", "SOL", "XRP", "ADA", "AVAX", "DOT", "TRX", "TON", "LINK"}),
    "payments": frozenset({"LTC", "BCH", "XLM", "XMR", "DASH", "ZEC"}),
    "defi": frozenset({"UNI", "AAVE", "MKR", "COMP", "CRV", "SNX", "SUSHI", "LDO", "1INCH"}),
    "layer2": frozenset({"MATIC", "POL", "ARB", "OP", "IMX", "STRK", "MANTA"}),
    "memes": frozenset({"DOGE", "SHIB", "PEPE", "FLOKI", "BONK", "WIF"}),
}


def parse_groups(spec: str) -> dict[str, frozenset[str]]:
    """CORRELATION_GROUPS ('majors:BTC,ETH;memes:DOGE') -> groups; empty gives DEFAULT_GROUPS."""
    if not spec.strip():
        return dict(DEFAULT_GROUPS)
    return {name: frozenset(bases) for name, bases in parse_correlation_groups(spec).items()}


class RiskManager:
    def __init__(self, risk_per_trade: float, max_open_positions: int, max_position_size: float,
                 max_positions_per_group: int, groups: Mapping[str, frozenset[str]] | None = None,
                 max_drawdown: float = 1.0, fee_rate: float = TAKER_FEE):
        self.risk_per_trade = risk_per_trade
        self.max_open_positions = max_open_positions
        self.max_position_size = max_position_size
        self.max_positions_per_group = max_positions_per_group
        self.groups = dict(DEFAULT_GROUPS if groups is None else groups)
        self.max_drawdown = max_drawdown
        self.fee_rate = fee_rate
        self.peak_equity = 0.0
        self._group_cache: dict[str, str] = {}

    @classmethod
    def from_config(cls, config, fee_rate: float = TAKER_FEE) -> "RiskManager":
        return cls(config.risk_per_trade, config.max_open_positions, config.max_position_size,
                   config.max_positions_per_group, parse_groups(config.correlation_groups),
                   max_drawdown=config.max_drawdown, fee_rate=fee_rate)

    def settings(self) -> dict:
        """What the constructor was given, as plain data (the decision record keeps it)."""
        return {"risk_per_trade": self.risk_per_trade, "max_open_positions": self.max_open_positions,
                "max_position_size": self.max_position_size,
                "max_positions_per_group": self.max_positions_per_group,
                "groups": {k: sorted(v) for k, v in self.groups.items()},
                "max_drawdown": self.max_drawdown, "fee_rate": self.fee_rate}

    @classmethod
    def from_settings(cls, settings: Mapping) -> "RiskManager":
        s = dict(settings)
        s["groups"] = {k: frozenset(v) for k, v in s["groups"].items()}
        return cls(**s)

    def group_of(self, symbol: str) -> str:
        """The symbol's correlation group, from a dict cache (groups never change at run time)."""
        cached = self._group_cache.get(symbol)
        if cached is None:
            cached = self.compute_group(symbol)
            self._group_cache[symbol] = cached
        return cached

    def compute_group(self, symbol: str) -> str:
        """The symbol's correlation group, looked up without the cache."""
        base = symbol.split("/")[0].upper()
        for name, members in self.groups.items():
            if base in members:
                return name
        return "other"

    def observe_equity(self, equity: float) -> None:
        self.peak_equity = max(self.peak_equity, equity)

    def halt_reason(self, equity: float) -> str | None:
        """Kill switch: no new entries once equity is MAX_DRAWDOWN below its peak."""
        if self.peak_equity > 0 and equity < self.peak_equity * (1.0 - self.max_drawdown):
            return (f"kill switch: equity {equity:.2f} is more than {self.max_drawdown:.0%} "
                    f"below its peak {self.peak_equity:.2f}")
        return None

    def size(self, price: float, stop: float, cash: float, equity: float) -> float:
        """Amount risking RISK_PER_TRADE of equity at the stop, capped by size and cash."""
        risk_amount = equity * self.risk_per_trade
        amount = risk_amount / (price - stop)
        # Keep room in cash for the fee and for the spread and slippage of a market order.
        max_notional = min(equity * self.max_position_size,
                           cash * (1.0 - SLIPPAGE_ALLOWANCE) / (1.0 + self.fee_rate))
        return min(amount, max_notional / price)

    def plan_entries(self, candidates: Sequence[Candidate], positions: Mapping[str, Position],
                     cash: float, equity: float, params: StrategyParams,
                     round_order: RoundOrder, pending: Iterable[str] = (),
                     halted: str | None = None
                     ) -> tuple[list[EntryIntent], list[tuple[str, str]]]:
        """Size the best candidates within every limit; each skip comes with its reason.

        `pending` pairs (a buy in doubt, a resting limit entry) take a position slot and count
        in their group as if they were held. `halted` (a protection's lock of every pair, the
        edge gate) refuses every entry with that reason, as the kill switch does."""
        entries: list[EntryIntent] = []
        skipped: list[tuple[str, str]] = []
        self.observe_equity(equity)
        halted = self.halt_reason(equity) or halted
        group_counts: dict[str, int] = {}
        taken = set(positions) | set(pending)
        for symbol in taken:
            group_counts[self.group_of(symbol)] = group_counts.get(self.group_of(symbol), 0) + 1
        open_count = len(taken)
        for c in candidates:
            reason = halted
            if reason is None and open_count >= self.max_open_positions:
                reason = f"max open positions ({self.max_open_positions}) reached"
            group = self.group_of(c.symbol)
            if reason is None and group_counts.get(group, 0) >= self.max_positions_per_group:
                reason = f"group '{group}' already holds {self.max_positions_per_group} positions"
            if reason is None:
                stop, take = params.levels(c.price, c.atr)
                if stop <= 0:
                    reason = f"stop {stop:.8g} would be at or below zero"
            if reason is None:
                try:
                    amount, price = round_order(c.symbol, "buy", self.size(c.price, stop, cash, equity), c.price)
                except OrderRejected as exc:
                    reason = str(exc)
            if reason is not None:
                skipped.append((c.symbol, reason))
                continue
            entries.append(EntryIntent(c.symbol, price, amount, stop, take, c.score, c.probability,
                                       c.features, "model" if c.probability is not None else "rule"))
            cash -= amount * price * (1.0 + self.fee_rate)
            open_count += 1
            group_counts[group] = group_counts.get(group, 0) + 1
        for symbol, reason in skipped:
            log.debug("skip %s: %s", symbol, reason)
        return entries, skipped

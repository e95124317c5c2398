"""What the terminal shows: the banner, fills, the status line, reports.

The trader hands every event to a `Reporter`; `bot.py` writes the lines with click, tests
collect them in a list (so a test run prints no trades). With a `notifier` (notifier.py),
entries and exits also go out as notifications.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

from domain import Fill, Position, Trade

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, echo: Callable[[str], None], notifier=None):
        self.echo = echo
        self.notifier = notifier

    def banner(self, mode: str, venue: str, preset: str, timeframe: str, interval: float,
               database: str, stops: str = "in the bot", market_data: str = "REST polling"
               ) -> None:
        self.echo(f"{mode} trading on {venue} | preset {preset} | {timeframe} | "
                  f"every {interval:g}s of market time | market data {market_data} | "
                  f"stops {stops} | database {database}")

    def opened(self, position: Position) -> None:
        target = (f"target {position.take_profit:.8g}" if math.isfinite(position.take_profit)
                  else "no target")
        self.echo(f"OPEN  {position.symbol:<12} {position.amount:.8g} @ {position.entry_price:.8g} "
                  f"(fee {position.entry_fee:.4f}) stop {position.stop_loss:.8g} {target}")
        if self.notifier is not None:
            self.notifier.entry(position)

    def closed(self, fill: Fill, trade: Trade, left: Position | None) -> None:
        rest = f" ({left.amount:.8g} left open)" if left is not None else ""
        self.echo(f"CLOSE {fill.symbol:<12} {fill.amount:.8g} @ {fill.price:.8g} "
                  f"{trade.exit_reason:<11} PnL {trade.profit:+.2f} ({trade.return_pct:+.2f}%){rest}")
        if self.notifier is not None:
            self.notifier.exit(fill, trade, left)

    def status(self, cycle: int, seconds: float, pairs: int, cached: bool, candidates: int,
               positions: int, max_positions: int, equity: float, quote: str, start_equity: float,
               model_state: str, unresolved: int = 0, gate: str = "") -> None:
        pnl = equity - start_equity
        share = pnl / start_equity if start_equity else 0.0
        orders = f" | {unresolved} order(s) unresolved, their pairs paused" if unresolved else ""
        orders += f" | {gate}" if gate else ""
        self.echo(
            f"cycle {cycle:>4} | {seconds:5.2f}s | pairs {pairs}{' cached' if cached else ''} | "
            f"candidates {candidates} | positions {positions}/{max_positions} | equity "
            f"{equity:,.2f} {quote} | PnL {pnl:+,.2f} ({share:+.2%}) | {model_state}{orders}")

    def text(self, text: str) -> None:
        self.echo(text)


class SkipLog:
    """Each skipped entry is logged with its reason, once until the reason changes; a
    reason that stops every entry (a lock of all pairs, the edge gate) is logged once."""

    def __init__(self) -> None:
        self._skips: dict[str, str] = {}
        self._halt: str | None = None

    def note(self, skipped, halted: str | None = None) -> None:
        current = dict(skipped)
        if halted is not None:
            if self._halt != halted:
                log.info("no entries: %s", halted)
            current = {s: r for s, r in current.items() if r != halted}
        self._halt = halted
        for symbol, reason in current.items():
            if self._skips.get(symbol) != reason:
                log.info("skip %s: %s", symbol, reason)
        self._skips = current

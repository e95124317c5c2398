"""The parity check: replay a paper or live run's decision record through the backtester's
decision path and list every difference.

Each cycle the trader records what it decided from (the closed candles, the prices it
checked exits against, its cash, positions and risk state, the model's answers and the
LLM's verdicts, the markets' rules) and what it decided. The replay rebuilds every cycle's
market view from the recorded candles with the backtester's batch indicators, runs the same
strategy, exit engine and `decide_entries` on the same ledger (the locks and the edge
gate's verdict as recorded), books the recorded fills, and
reports:

- decision differences: an entry or exit one side took and the other did not, a different
  exit reason, amount or order price;
- book differences: the replayed ledger disagrees with the recorded one at a cycle start
  (positions, amounts, stops, cash);
- fill-model differences: the backtester's fill model (the simulated exchange's book
  model, the taker fee) against the actual fill of each order. These are expected: they
  measure how optimistic or pessimistic a backtest's fills are, and are listed as such.

The replay decides at the bot's own cycle points on the prices it saw, so a difference is
a difference in the code path, not in the cadence of the checks.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

import numpy as np

from replay import book_inputs, book_quote
from brokers import BacktestBroker, book_fill
from domain import Bar, Fill, MarketView, Position, StrategyParams
from features import HISTORY_NEEDED, close_windows, feature_key, prepare_features
from ledger import Ledger
from market_rules import MarketRules
from orders import intent_of
from risk_manager import RiskManager
from store import OrderRow, Store
from stops import left_to_exchange
from exits import check_positions
from strategies import Strategy, frame, load_strategy, market_index
from strategy import ModelFilter, decide_entries

PRICE_TOLERANCE = 1e-9    # relative; recorded floats round-trip exactly, indicators nearly


@dataclass(frozen=True)
class Difference:
    cycle: int
    kind: str      # "decision" | "books" | "fill model"
    symbol: str
    text: str

    def __str__(self) -> str:
        return f"cycle {self.cycle:>5}  {self.kind:<10}  {self.symbol:<12}  {self.text}"


@dataclass
class ParityReport:
    cycles: int
    entries: int
    exits: int
    differences: list[Difference]

    def of_kind(self, kind: str) -> list[Difference]:
        return [d for d in self.differences if d.kind == kind]

    def format(self) -> str:
        decisions, books = self.of_kind("decision"), self.of_kind("books")
        fills = self.of_kind("fill model")
        lines = [f"replayed {self.cycles} cycle(s): {self.entries} entries, {self.exits} exits "
                 f"recorded",
                 f"decision differences: {len(decisions)}", f"book differences: {len(books)}",
                 f"fill-model differences: {len(fills)} (the backtester's fills against the "
                 f"actual ones; expected, not errors)"]
        if fills:
            bps = [float(d.text.rsplit("(", 1)[1].split()[0]) for d in fills]
            lines.append(f"  fill model vs actual: median {np.median(bps):+.1f} bps, worst "
                         f"{max(bps, key=abs):+.1f} bps (positive: the backtest fills better)")
        lines += [str(d) for d in decisions + books + fills]
        return "\n".join(lines)


def _close(a: float, b: float, tol: float = PRICE_TOLERANCE) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=1e-12)


class _Candles:
    """The recorded candles of each pair with the backtester's indicators and features."""

    def __init__(self, recorded: Mapping[str, list[tuple]], tf_ms: int, strategy: Strategy):
        self.tf_ms = tf_ms
        self.arrays = {s: np.asarray(rows, dtype=np.float64).reshape(-1, 6)
                       for s, rows in recorded.items()}
        self.ind, self.feat, self.book = {}, {}, {}
        market = market_index(self.arrays)
        for s, a in self.arrays.items():
            self.ind[s] = frame(a, strategy, market)
            self.feat[s] = prepare_features(self.ind[s], close_windows(a[:, 4]))
            self.book[s] = book_inputs(a, tf_ms)

    def row(self, symbol: str, close_ms: int) -> int | None:
        """The row of the candle closing at close_ms."""
        a = self.arrays.get(symbol)
        if a is None:
            return None
        i = int(np.searchsorted(a[:, 0], close_ms - self.tf_ms))
        return i if i < len(a) and int(a[i, 0]) == close_ms - self.tf_ms else None

    def latest_row(self, symbol: str, before_ms: int) -> int:
        """The last candle closed by before_ms (for the book model's inputs)."""
        a = self.arrays[symbol]
        return max(0, int(np.searchsorted(a[:, 0] + self.tf_ms, before_ms, side="right")) - 1)

    def view(self, symbols: Iterable[str], close_ms: int) -> MarketView | None:
        rows = [(s, self.row(s, close_ms)) for s in symbols]
        rows = [(s, r) for s, r in rows if r is not None and r >= HISTORY_NEEDED]
        if not rows:
            return None
        latest = {k: np.array([self.ind[s][k][r] for s, r in rows]) for k in self.ind[rows[0][0]]}
        recent = np.stack([self.arrays[s][r - HISTORY_NEEDED:r + 1, 4] for s, r in rows])
        return MarketView(tuple(s for s, _ in rows), latest, recent, close_ms)


class _Replay:
    def __init__(self, store: Store, params: StrategyParams | None, risk: RiskManager | None):
        self.store = store
        self.params, self.risk = params, risk
        self.strategy: Strategy | None = None
        self.rules: dict[str, MarketRules] = {}
        self.ledger = Ledger(0.0)
        self.broker = BacktestBroker(self.rules, self.ledger)
        self.differences: list[Difference] = []
        self.entries = self.exits = 0
        self.candles: _Candles | None = None
        self.recorded_candles = store.recorded_candles()

    def note(self, cycle: int, kind: str, symbol: str, text: str) -> None:
        self.differences.append(Difference(cycle, kind, symbol, text))

    def run(self) -> ParityReport:
        decisions: dict[int, list[tuple]] = {}
        for d in self.store.recorded_decisions():
            decisions.setdefault(d[0], []).append(d[1:])
        cycles = self.store.recorded_cycles()
        for cycle, _ts, view_ms, inputs in cycles:
            self.cycle(cycle, view_ms, json.loads(inputs), decisions.get(cycle, []))
        return ParityReport(len(cycles), self.entries, self.exits, self.differences)

    # -- one cycle
    def cycle(self, cycle: int, view_ms: int | None, rec: dict, decided: list[tuple]) -> None:
        self._setup(rec)
        self._check_books(cycle, rec)
        for _kind, symbol, price, amount, reason, cid in [d for d in decided if d[0] == "fill"]:
            self._book_fill(symbol, price, amount, reason, cid)
        exits = [d for d in decided if d[0] == "exit"]
        entries = [d for d in decided if d[0] == "entry"]
        self.exits += len(exits)
        self.entries += len(entries)
        if "exit_prices" in rec:
            self._exits(cycle, rec, exits)
        if "symbols" in rec and view_ms is not None:
            self._entries(cycle, view_ms, rec, entries, exits)

    def _setup(self, rec: dict) -> None:
        setup = rec.get("setup")
        if setup is not None:
            self.params = self.params or StrategyParams(**setup["params"])
            self.risk = self.risk or RiskManager.from_settings(setup["risk"])
            self.strategy = self.strategy or load_strategy(*setup["strategy"])
            if self.candles is None:
                self.candles = _Candles(self.recorded_candles, self.params.timeframe_ms,
                                        self.strategy)
        known = {f.name for f in fields(MarketRules)}
        for symbol, r in (rec.get("rules") or {}).items():
            self.rules[symbol] = MarketRules(**{k: v for k, v in r.items() if k in known})
            self.broker._rules[symbol] = self.rules[symbol]
        if self.params is None:
            raise ValueError("the record does not start with a run's settings (was it made by "
                             "an older version of the bot?)")

    def _check_books(self, cycle: int, rec: dict) -> None:
        """Compare the replayed books with the recorded ones, then continue from the recorded
        ones (so one difference is reported once, not in every later cycle)."""
        recorded = {p["symbol"]: Position(**{**p, "features": None}) for p in rec["positions"]}
        mine = self.ledger.positions
        if cycle > self._first_cycle():
            for s in sorted(set(recorded) | set(mine)):
                a, b = mine.get(s), recorded.get(s)
                if a is None or b is None:
                    self.note(cycle, "books", s, f"position {'missing' if a is None else 'extra'} "
                                                 "in the replay")
                elif not (_close(a.amount, b.amount) and _close(a.stop_loss, b.stop_loss)
                          and _close(a.take_profit, b.take_profit)):
                    self.note(cycle, "books", s, f"replay holds {a.amount:.10g} stop "
                                                 f"{a.stop_loss:.10g}, the bot {b.amount:.10g} stop "
                                                 f"{b.stop_loss:.10g}")
        self.ledger.positions = {s: p for s, p in recorded.items()}
        self.ledger.cash = float(rec["cash"])
        self.ledger.last_exits = {s: int(t) for s, t in rec.get("last_exits", {}).items()}
        self.risk.peak_equity = float(rec["peak_equity"])

    def _first_cycle(self) -> int:
        if not hasattr(self, "_first"):
            cycles = self.store.recorded_cycles()
            self._first = cycles[0][0] if cycles else 0
        return self._first

    # -- exits
    def _exits(self, cycle: int, rec: dict, recorded: list[tuple]) -> None:
        busy = set(rec.get("busy", ()))
        bars = {s: Bar.at(float(p)) for s, p in rec["exit_prices"].items() if s not in busy}
        update = check_positions(self.ledger.positions, bars, int(rec["exit_ms"]), self.params)
        for symbol, (stop, high) in update.moved.items():
            self.ledger.move_stop(symbol, stop, high)
        replayed = {e.symbol: e for e in update.exits
                    if rec.get("exchange_stops") is None or not left_to_exchange(
                        e.reason, e.price, self.ledger.positions[e.symbol], rec["exchange_stops"])}
        seen = set()
        for _kind, symbol, price, amount, reason, cid in recorded:
            if reason == "exit_signal":
                continue                     # decided on the view: see _signal_exits
            seen.add(symbol)
            mine = replayed.get(symbol)
            if mine is None:
                self.note(cycle, "decision", symbol, f"the bot exited ({reason}); the replay "
                                                     "would not")
            elif mine.reason != reason or not _close(mine.price, price):
                self.note(cycle, "decision", symbol, f"exit {reason} at {price:.10g}; replay "
                                                     f"{mine.reason} at {mine.price:.10g}")
            self._book(cycle, symbol, "sell", cid, int(rec["exit_ms"]), reason=reason)
        for symbol in sorted(set(replayed) - seen):
            self.note(cycle, "decision", symbol, f"the replay would exit ({replayed[symbol].reason}); "
                                                 "the bot did not")

    # -- entries
    def _signal_exits(self, cycle: int, view: MarketView, rec: dict, recorded: list[tuple]) -> None:
        """The strategy's exit signals on the view against the bot's `exit_signal` exits."""
        flags = self.strategy.exit_signal(view.latest) if self.params.use_exit_signal else None
        busy = set(rec.get("busy", ()))
        replayed = set() if flags is None else {
            s for s, f in zip(view.symbols, np.asarray(flags, dtype=bool).tolist())
            if f and s in self.ledger.positions and s not in busy
            and self.ledger.positions[s].entry_time_ms < view.now_ms}
        bot = {d[1] for d in recorded}
        for symbol in sorted(replayed ^ bot):
            side = "the replay" if symbol in replayed else "the bot"
            self.note(cycle, "decision", symbol, f"only {side} exits on the strategy's signal")
        for _kind, symbol, price, amount, reason, cid in recorded:
            self._book(cycle, symbol, "sell", cid, view.now_ms, reason=reason)

    def _entries(self, cycle: int, view_ms: int, rec: dict, recorded: list[tuple],
                 exits: list[tuple] = ()) -> None:
        view = self.candles.view(rec["symbols"], view_ms)
        if view is None or view.symbols != tuple(rec["symbols"]):
            got = view.symbols if view is not None else ()
            self.note(cycle, "decision", "-", f"the recorded candles give a view of {len(got)} "
                                              f"pairs, the bot saw {len(rec['symbols'])}")
            if view is None:
                return
        self._signal_exits(cycle, view, rec, [d for d in exits if d[4] == "exit_signal"])
        predictions = rec.get("predictions") or {}
        model = ModelFilter(
            lambda X, keys: np.array([predictions.get(feature_key(x), np.nan) for x in X]),
            *rec["payoff"]) if rec.get("used_model") else None
        verdicts = rec.get("verdicts") or {}
        confirm = (lambda states: {s["symbol"]: verdicts.get(s["symbol"], False)
                                   for s in states}) if "verdicts" in rec and verdicts else None
        decisions = decide_entries(view, self.ledger.positions, float(rec["cash"]),
                                   float(rec["equity"]), self.strategy, self.params, self.risk,
                                   self.broker.round_order, model, confirm,
                                   set(rec.get("busy", ())), set(rec.get("locked", ())),
                                   rec.get("halted"))
        replayed = {e.symbol: e for e in decisions.entries}
        seen = set()
        for _kind, symbol, price, amount, reason, cid in recorded:
            seen.add(symbol)
            mine = replayed.get(symbol)
            if mine is None:
                self.note(cycle, "decision", symbol, f"the bot entered ({reason}); the replay "
                                                     "would not")
            elif not (_close(mine.amount, amount) and _close(mine.price, price)):
                self.note(cycle, "decision", symbol, f"entry {amount:.10g} @ {price:.10g}; replay "
                                                     f"{mine.amount:.10g} @ {mine.price:.10g}")
            self._book(cycle, symbol, "buy", cid, view_ms)
        for symbol in sorted(set(replayed) - seen):
            e = replayed[symbol]
            self.note(cycle, "decision", symbol, f"the replay would enter {e.amount:.10g} @ "
                                                 f"{e.price:.10g} ({e.reason}); the bot did not")

    # -- fills
    def _book_fill(self, symbol: str, price: float, amount: float, reason: str, cid: str) -> None:
        """A fill no decision of the cycle made (a resolved order, a resting limit entry's
        part, a stop on the exchange): booked as the bot booked it."""
        order = self.store.order(cid)
        if order is None:
            return
        fee = order.fee * amount / order.filled if order.filled else order.fee
        fill = Fill(symbol, order.side, amount, price, amount * price, fee, order.updated_ms,
                    order.exchange_order_id or "", cid)
        if order.side == "buy":
            self.ledger.open(fill, intent_of(order), self.risk.group_of(symbol))
        elif symbol in self.ledger.positions:
            self.ledger.close(fill, reason, lambda left: self.rules[symbol].sellable(left, price))

    def _book(self, cycle: int, symbol: str, side: str, cid: str | None, at_ms: int,
              reason: str = "") -> None:
        """Book the recorded fill in the replay's ledger; compare the fill model with it."""
        order = self.store.order(cid) if cid else None
        if order is None or order.status != "filled" or order.kind != "market":
            return          # a resting order's fills come as the "fill" records of later cycles
        fill = Fill(symbol, side, order.amount, order.fill_price, order.amount * order.fill_price,
                    order.fee, order.updated_ms, order.exchange_order_id or "", cid)
        self._compare_fill(cycle, order, fill, at_ms)
        if side == "buy":   # the stops travel with the order
            self.ledger.open(fill, intent_of(order), self.risk.group_of(symbol))
        elif symbol in self.ledger.positions:
            self.ledger.close(fill, reason, lambda amount: self.rules[symbol].sellable(amount, fill.price))

    def _compare_fill(self, cycle: int, order: OrderRow, fill: Fill, at_ms: int) -> None:
        if order.symbol not in self.rules or self.candles is None:
            return
        row = self.candles.latest_row(order.symbol, at_ms)
        vol, qv = self.candles.book[order.symbol]
        self.broker.quotes[order.symbol] = book_quote(order.price, at_ms, float(vol[row]),
                                                      float(qv[row]), self.rules[order.symbol],
                                                      slippage=True)
        try:
            model = self.broker.liquidate(order.symbol, fill.amount, "parity") if order.side == "sell" \
                else self._model_buy(order.symbol, fill.amount)
        except Exception:   # the model refuses what the venue filled: say so
            self.note(cycle, "fill model", order.symbol, f"{order.side} filled at {fill.price:.10g}; "
                                                         "the fill model refuses it (0.0 bps)")
            return
        sign = 1.0 if order.side == "sell" else -1.0
        bps = sign * (model.price - fill.price) / fill.price * 1e4
        if abs(bps) >= 0.05 or not _close(model.fee, fill.fee, 1e-6):
            self.note(cycle, "fill model", order.symbol,
                      f"{order.side} filled at {fill.price:.10g} fee {fill.fee:.6g}; the model "
                      f"fills at {model.price:.10g} fee {model.fee:.6g} ({bps:+.1f} bps)")

    def _model_buy(self, symbol: str, amount: float) -> Fill:
        quote = self.broker.quotes[symbol]
        levels = quote.levels("buy") if quote.levels is not None else [[quote.price, math.inf]]
        return book_fill(self.rules[symbol], "buy", amount, levels, quote.timestamp_ms, "parity",
                         "parity")


def check_parity(store: Store, params: StrategyParams | None = None,
                 risk: RiskManager | None = None) -> ParityReport:
    """Replay the store's decision record; `params`/`risk` override the recorded settings."""
    return _Replay(store, params, risk).run()


def summary(report: ParityReport) -> dict[str, Any]:
    return {"cycles": report.cycles, "entries": report.entries, "exits": report.exits,
            "differences": {k: len(report.of_kind(k)) for k in ("decision", "books", "fill model")}}

"""The backtest's replay loop (see `backtest`'s docstring): fills through the broker on the
synthetic book, books kept by the ledger, limit entries, and the fast-forward over the steps
where nothing can happen.

`data` is the replay's prepared arrays (`backtest._Data`), `settings` its
`backtest.BacktestSettings`; both are read only.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from brokers import PAPER_BOOK_DEPTH, BacktestBroker, Quote, check_funds
from domain import Bar, EntryIntent, Fill, MarketView, OrderRejected, StrategyParams, Trade
from edge import EdgeSettings, EdgeVerdict, judge, recent_returns
from exits import Path, check_positions
from exits import path as exits_path
from features import HISTORY_NEEDED
from ledger import Ledger
from market_rules import MarketRules
from market_scanner import MIN_CANDLES
from order_ids import client_order_id
from protections import ProtectionSettings, Protections, split
from risk_manager import RiskManager
from sim_market import synthetic_order_book
from strategies import Strategy
from strategy import decide_entries
from walk_forward import WalkForward, signal_samples

log = logging.getLogger("backtest")

PROGRESS_EVERY = 64                     # steps between progress callbacks
DAY_MS = 86_400_000                     # one day in ms


# --------------------------------------------------------------------------- the order book

def book_inputs(candles: np.ndarray, tf_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """What the synthetic order book is built from, per candle of one pair's (T, 6) array:
    the std of 1-minute log returns over the last hour (at least 12 candles), and the 24 h
    quote volume (volume x typical price), each from the candles up to and including this
    one. A fill in candle t uses the values of candle t - 1 (what was known before it)."""
    a = candles
    n = len(a)
    minutes = max(tf_ms / 60_000.0, 1.0)
    window = max(12, int(round(60 / minutes)))
    r = np.diff(np.log(a[:, 4]), prepend=np.log(a[0, 4]))
    c1, c2 = np.cumsum(r), np.cumsum(r * r)
    k = np.minimum(np.arange(1, n + 1), window)
    s1 = c1 - np.concatenate([np.zeros(window), c1[:-window]])[:n]
    s2 = c2 - np.concatenate([np.zeros(window), c2[:-window]])[:n]
    var = np.maximum(s2 / k - (s1 / k) ** 2, 0.0)
    vol = np.maximum(np.sqrt(var / minutes), 1e-5)
    quote = a[:, 5] * a[:, 1:5].mean(axis=1)
    day = max(1, int(round(DAY_MS / tf_ms)))
    cq = np.cumsum(quote)
    sq = cq - np.concatenate([np.zeros(day), cq[:-day]])[:n]
    qv = sq / np.minimum(np.arange(1, n + 1), day) * (DAY_MS / tf_ms)
    return vol, qv


def book_quote(price: float, timestamp_ms: int, vol: float, quote_volume: float,
               rules: MarketRules, slippage: bool = True) -> Quote:
    """The broker's quote for an order at `price`: the simulated exchange's synthetic book
    around it (from `book_inputs`' volatility and quote volume, on the market's tick and
    step grid, PAPER_BOOK_DEPTH levels a side), built when an order walks it. Without
    slippage, no book: the broker fills any amount at `price`."""
    if not slippage:
        return Quote(price, timestamp_ms)

    def levels(side: str) -> np.ndarray:
        bids, asks = synthetic_order_book(price, vol, quote_volume, rules.tick, rules.step,
                                          PAPER_BOOK_DEPTH)
        return asks if side == "buy" else bids

    return Quote(price, timestamp_ms, levels)


# --------------------------------------------------------------------------- limit entries

def timeout_candles(timeout_ms: int, tf_ms: int) -> int:
    """How many candles a limit entry rests before it is repriced: the timeout rounded up to
    whole candles (the replay sees prices once a candle)."""
    return max(1, -(-int(timeout_ms) // int(tf_ms)))


def limit_buy_fills(limit: float, low: float) -> bool:
    """Whether a resting limit buy at `limit` fills in a candle reaching down to `low`: only
    when the market trades strictly below it. A touch does not fill: the order joined the
    queue at that price last and the candle need not have reached it."""
    return low < limit


def limit_fill(rules: MarketRules, amount: float, price: float, timestamp_ms: int,
               order_id: str, client_order_id: str) -> Fill:
    """A resting limit buy filled in full at its limit price, paying the maker fee."""
    cost = amount * price
    return Fill(rules.symbol, "buy", amount, price, cost, cost * rules.maker, timestamp_ms,
                order_id, client_order_id)


def after_limit_fill(price: float, bar: Bar) -> Bar:
    """What a candle showed after a limit buy at `price` filled in it: the fill came when
    the price first fell below the limit, so the low and the close came at or after it; of
    the high only max(price, close) surely did. Exits on the fill candle are checked on this
    bar (a stop the low went through is hit; a high that may have come first is not used)."""
    return Bar(price, max(price, bar.close), bar.low, bar.close)


@dataclass
class _RestingEntry:
    """A post-only limit buy resting on the book (entry_order='limit')."""
    intent: EntryIntent           # what the strategy decided (its stop distances travel on)
    p: int                        # the pair
    price: float                  # limit price, on the tick
    amount: float                 # on the step
    maker: float                  # the market's maker fee
    deadline_ms: int              # repriced (or given up) at the first close at/after this
    reprices: int                 # reprices so far
    client_order_id: str

    @property
    def reserved(self) -> float:
        """The cash the order holds: what its fill will cost with the fee."""
        return self.amount * self.price * (1.0 + self.maker)


# --------------------------------------------------------------------------- the replay

class Replay:
    """The replay loop: fills through the broker, books kept by the ledger."""

    def __init__(self, data: Any, strategy: Strategy, params: StrategyParams, risk: RiskManager,
                 settings: Any, model: WalkForward | None,
                 protections: ProtectionSettings, edge: EdgeSettings):
        self.d, self.params, self.risk, self.settings, self.model = data, params, risk, settings, model
        self.strategy = strategy
        self.protections = Protections(protections)
        self.edge = edge
        self.edge_evidence = None          # (end_ms, time_ms, net_return) of every signal trade
        if edge.enabled:
            smp = model.samples if model is not None else signal_samples(data, params, settings)[0]
            if smp is not None:
                self.edge_evidence = (smp.label_end_ms, smp.time_ms, smp.ret.astype(np.float64))
        self.gated_steps = 0               # decision points the edge gate sat out
        self.slippage = 0.0                # quote lost to the spread and the book's depth
        self.index = {s: p for p, s in enumerate(data.symbols)}
        self.ledger = Ledger(settings.starting_balance)
        self.broker = BacktestBroker(dict(zip(data.symbols, data.rules)), self.ledger,
                                     max_slippage=settings.max_slippage)
        self.min_local = MIN_CANDLES - 1
        self.k_off = np.arange(-HISTORY_NEEDED, 1)
        self.pending: list[tuple[EntryIntent, int]] = []          # market entries to fill
        self.limit = settings.entry_order == "limit"
        self.rest_ms = timeout_candles(settings.limit_timeout_ms, data.tf_ms) * data.tf_ms
        self.resting: dict[str, _RestingEntry] = {}               # limit entries on the book
        self.fill_bars: dict[str, Bar] = {}   # this step's bars after a limit fill, for exits
        self.last_step = np.searchsorted(data.grid, data.ts[data.last])   # (P,) a pair's last step
        self.row_step = np.searchsorted(data.grid, data.ts)               # (N,) each row's step
        self.follows_high = params.trailing_stop > 0 or params.breakeven_trigger > 0
        self.courses: dict[str, Course] = {}     # held positions' paths (fast-forward)
        self.refits_seen = 0
        self.followed: set[str] = set()           # positions moved along their path this step
        self.candidates = self._rule_candidates()  # (P, G) a pair may be entered at a step
        self.trades: list[Trade] = []
        self.events: list[tuple] = []
        self.last_close = np.full(len(data.symbols), np.nan)
        self._orders = itertools.count(1)
        self.g = 0
        self.g0 = 0                       # the first step replayed (run)
        self.recorded = 0                 # steps recorded so far; per step:
        self._curve = np.empty(0)         # the equity at its close,
        self._exposed = np.empty(0, bool)  # whether a position was held during it

    @property
    def times(self) -> np.ndarray:
        """The open time of each recorded step."""
        return self.d.grid[self.g0:self.g0 + self.recorded]

    @property
    def curve(self) -> np.ndarray:
        return self._curve[:self.recorded]

    @property
    def exposed(self) -> np.ndarray:
        return self._exposed[:self.recorded]

    # -- orders
    def _prepare_order(self, p: int, book_row: int, price: float, timestamp_ms: int) -> str:
        """Quote pair p at `price` on the book of `book_row`'s inputs; a new client order id."""
        d = self.d
        symbol = d.symbols[p]
        self.broker.quotes[symbol] = book_quote(price, timestamp_ms, float(d.book_vol[book_row]),
                                                float(d.book_qv[book_row]), d.rules[p],
                                                self.settings.slippage)
        return client_order_id(None, "bt", symbol, next(self._orders))

    def _slipped(self, fill: Fill, reference: float) -> Fill:
        """Count what the fill lost against the price it was quoted at (spread and depth)."""
        sign = 1.0 if fill.side == "buy" else -1.0
        self.slippage += sign * (fill.price - reference) * fill.amount
        return fill

    def _sold(self, fill: Fill, reason: str) -> None:
        trade, _ = self.ledger.close(fill, reason, lambda amount: self._sellable(fill, amount))
        self.trades.append(trade)
        self.protections.add(trade)
        self.events.append(("fill_sell", fill.timestamp_ms, fill.symbol, fill.amount, fill.price,
                            fill.fee, reason))

    def _sellable(self, fill: Fill, amount: float) -> bool:
        """Whether the market takes a sell of what a partly filled exit left (else it is
        dust, as the live order executor books it)."""
        try:
            self.broker.round_order(fill.symbol, "sell", amount, fill.price)
        except OrderRejected:
            return False
        return True

    def fill_entries(self, col: np.ndarray, t: int) -> None:
        """Fill the market entries decided at the previous close at this candle's open."""
        pending, self.pending = self.pending, []
        for intent, decided_ms in pending:
            p = self.index[intent.symbol]
            r = int(col[p])
            if r < 0 or decided_ms != t:
                self.events.append(("entry_dropped", t, intent.symbol, "no candle after the decision"))
                continue
            cid = self._prepare_order(p, r - 1, float(self.d.o[r]), t)
            try:
                fill = self._slipped(self.broker.market_order(intent.symbol, "buy", intent.amount,
                                                              cid), float(self.d.o[r]))
            except OrderRejected as exc:
                self.events.append(("entry_rejected", t, intent.symbol, str(exc)))
                continue
            position = self.ledger.open(fill, intent, self.risk.group_of(intent.symbol))
            self.events.append(("fill_buy", t, intent.symbol, fill.amount, fill.price, fill.fee))
            if self.settings.skip_idle_steps:     # its path from the fill candle on
                self.courses[intent.symbol] = self._course(p, position, r)

    # -- limit entries (entry_order='limit')
    def reserved(self) -> float:
        """Cash held by the resting limit entries."""
        return math.fsum(o.reserved for o in self.resting.values())

    def place_limit(self, intent: EntryIntent, price: float, amount: float, now_ms: int,
                    reprices: int = 0) -> None:
        """Rest a post-only limit buy of `amount` at `price` (the best bid: a close) from the
        close `now_ms`, on the market's step and tick, with the cash it needs set aside."""
        p = self.index[intent.symbol]
        rules = self.d.rules[p]
        try:
            amount, price = rules.round_order("buy", amount, price)
        except OrderRejected as exc:
            self.events.append(("entry_rejected", now_ms, intent.symbol, str(exc)))
            return
        cid = client_order_id(None, "bt", intent.symbol, next(self._orders))
        order = _RestingEntry(intent, p, price, amount, rules.maker, now_ms + self.rest_ms, reprices,
                              cid)
        free = self.ledger.cash - self.reserved()
        if order.reserved > free:
            self.events.append(("entry_rejected", now_ms, intent.symbol,
                                f"{intent.symbol}: insufficient cash: need {order.reserved:.2f}, "
                                f"have {free:.2f}"))
            return
        self.resting[intent.symbol] = order
        self.events.append(("limit_placed", now_ms, intent.symbol, price, amount, reprices))

    def fill_limits(self, col: np.ndarray, t: int) -> None:
        """Fill every resting limit entry this candle trades below, at its limit price with
        the maker fee; the fill is timed at the candle's open (as a market entry's)."""
        d = self.d
        for symbol, order in list(self.resting.items()):
            r = int(col[order.p])
            if r < 0 or not limit_buy_fills(order.price, float(d.l[r])):
                continue
            del self.resting[symbol]
            fill = limit_fill(d.rules[order.p], order.amount, order.price, t,
                              f"bt-limit-{order.client_order_id}", order.client_order_id)
            try:
                check_funds(self.ledger, fill)
            except OrderRejected as exc:      # not expected: the cash was set aside
                self.events.append(("entry_rejected", t, symbol, str(exc)))
                continue
            self.ledger.open(fill, order.intent, self.risk.group_of(symbol))
            self.events.append(("fill_buy", t, symbol, fill.amount, fill.price, fill.fee))
            self.fill_bars[symbol] = after_limit_fill(
                order.price, Bar(float(d.o[r]), float(d.h[r]), float(d.l[r]), float(d.c[r])))

    def expire_limits(self, col: np.ndarray, g: int, close_ms: int) -> None:
        """At this close, cancel every resting limit entry whose time is up: reprice it at
        the pair's close (the new best bid) with the amount unfilled, or give it up after
        `limit_reprices` reprices ('entry_expired'); also give up those whose pair has no
        later candle."""
        d = self.d
        for symbol, order in list(self.resting.items()):
            p = order.p
            r = int(col[p])
            if (r >= 0 and r == d.last[p]) or (r < 0 and g > self.last_step[p]):
                del self.resting[symbol]
                self.events.append(("entry_expired", close_ms, symbol, "no later candle"))
                continue
            if close_ms < order.deadline_ms:
                continue
            del self.resting[symbol]
            if order.reprices >= self.settings.limit_reprices:
                self.events.append(("entry_expired", close_ms, symbol,
                                    f"not filled after {order.reprices} reprice(s)"))
                continue
            self.place_limit(order.intent, float(self.last_close[p]), order.amount, close_ms,
                             order.reprices + 1)

    def check_exits(self, col: np.ndarray, close_ms: int) -> None:
        d = self.d
        positions = self.ledger.positions
        bars = {}
        signals = {}
        for s in [s for s in positions if not self._follow_course(s, col)]:
            r = int(col[self.index[s]])
            if r >= 0:
                bars[s] = self.fill_bars.get(s) or Bar(float(d.o[r]), float(d.h[r]),
                                                       float(d.l[r]), float(d.c[r]))
                signals[s] = bool(d.exit_signal[r])
        update = check_positions(positions, bars, close_ms, self.params, signals,
                                 bar_open_ms=close_ms - d.tf_ms)
        for symbol, (stop, high) in update.moved.items():
            self.ledger.move_stop(symbol, stop, high)
        for intent in update.exits:
            self.events.append(("exit", close_ms, intent.symbol, intent.price, intent.reason))
            p = self.index[intent.symbol]
            cid = self._prepare_order(p, max(int(col[p]) - 1, int(d.first[p])), intent.price, close_ms)
            try:
                fill = self._slipped(self.broker.market_order(
                    intent.symbol, "sell", positions[intent.symbol].amount, cid), intent.price)
            except OrderRejected as exc:   # as live: retried on the next candle
                self.events.append(("exit_rejected", close_ms, intent.symbol, str(exc)))
                continue
            self._sold(fill, intent.reason)

    def _follow_course(self, symbol: str, col: np.ndarray) -> bool:
        """Fast-forward: move a held position along its known path when this step's bar is
        not its exit bar (what `check_positions` would do); False when it must be judged."""
        course = self.courses.get(symbol)
        if course is None or symbol in self.fill_bars:
            return False
        r = int(col[self.index[symbol]])
        k = r - course.start
        if r < 0 or not 0 <= k < course.path.exit:
            return r < 0
        self.followed.add(symbol)
        if self.follows_high:
            stop, high = float(course.path.stop[k + 1]), float(course.path.high[k + 1])
            position = self.ledger.positions[symbol]
            if (stop, high) != (position.stop_loss, position.high_water):
                self.ledger.move_stop(symbol, stop, high)
        return True

    def close_all(self, reason: str, close_ms: int, only: Sequence[str] | None = None) -> None:
        """Close positions at the last known close (end of data / of the backtest), whatever
        the market's limits and the book's depth."""
        for s in list(only if only is not None else self.ledger.positions):
            p = self.index[s]
            price = float(self.last_close[p])
            self.events.append(("exit", close_ms, s, price, reason))
            cid = self._prepare_order(p, max(self._last_row(p) - 1, int(self.d.first[p])), price, close_ms)
            self._sold(self.broker.liquidate(s, self.ledger.positions[s].amount, cid), reason)

    def _last_row(self, p: int) -> int:
        """The pair's latest row seen so far (its close is last_close[p])."""
        rows = self.d.at[p, : self.g + 1]
        return int(rows[np.flatnonzero(rows >= 0)[-1]])

    def equity(self) -> float:
        return self.ledger.equity({s: float(self.last_close[self.index[s]])
                                   for s in self.ledger.positions})

    # -- decisions
    def decide(self, col: np.ndarray, here: np.ndarray, close_ms: int, equity: float) -> None:
        d = self.d
        rows_here = col[here]
        ok = d.local[rows_here] >= self.min_local
        pairs, rows = here[ok], rows_here[ok]
        model = self.model if self.model is not None and self.model.estimator is not None else None
        halted, locked = split(self.protections.locks(close_ms, equity))
        if not rows.size or (self.settings.skip_idle_steps
                             and not self._may_have_candidate(pairs, rows, model, locked)):
            self.risk.observe_equity(equity)   # all that decide_entries would have done
            return
        view = MarketView(tuple(d.symbols[p] for p in pairs.tolist()),
                          {k: v[rows] for k, v in d.ind.items()},
                          d.c[rows[:, None] + self.k_off], close_ms, d.feat[rows],
                          d.score[rows])
        if halted is None:
            verdict = self.edge_verdict(close_ms)
            if not verdict.open:
                halted = verdict.reason
                self.gated_steps += 1
        model_filter = model.predictor(rows) if model is not None else None
        # A resting limit entry's pair is busy: no new entry, it takes a position slot (as
        # live) and its cash is held (live: not in the free balance).
        cash = self.ledger.cash - self.reserved() if self.resting else self.ledger.cash
        decisions = decide_entries(view, self.ledger.positions, cash, equity, self.strategy,
                                   self.params, self.risk, self.broker.round_order, model_filter,
                                   busy=set(self.resting) if self.resting else frozenset(),
                                   locked=locked, halted=halted)
        for e in decisions.entries:
            self.events.append(("entry", close_ms, e.symbol, e.price, e.amount, e.stop_loss,
                                e.take_profit, e.reason))
            if self.limit:
                self.place_limit(e, e.price, e.amount, close_ms)
            else:
                self.pending.append((e, close_ms))

    def _may_have_candidate(self, pairs: np.ndarray, rows: np.ndarray,
                            model: WalkForward | None, locked: set[str]) -> bool:
        """False only when decide_entries would return no entry: every position slot is
        taken, or no pair that is neither held nor locked passes the strategy
        (elementwise, so scored for all rows at once) or the model's threshold (the batched
        predictions of the same feature rows; the skip-equivalence test checks both
        against the unskipped pipeline)."""
        if len(set(self.ledger.positions) | set(self.resting)) >= self.risk.max_open_positions:
            return False
        ok = self.d.signal_ok[rows]
        if model is not None:
            prob = model.prob[rows]
            unknown = np.isnan(prob)       # not expected; then ask the model
            with np.errstate(invalid="ignore"):
                ok &= (((prob >= self.params.min_confidence)
                        & (model.expected_return(prob) > self.params.min_expected_return))
                       | unknown)
        excluded = set(self.ledger.positions) | set(self.resting) | locked
        if excluded:
            ok = ok & np.array([self.d.symbols[p] not in excluded for p in pairs.tolist()])
        return bool(ok.any())

    def edge_verdict(self, now_ms: int) -> EdgeVerdict:
        """The edge gate at this close, from the signal trades known by then."""
        if self.edge_evidence is None:
            return judge(np.empty(0), self.edge)
        window = self.edge.lookback_candles * self.d.tf_ms
        return judge(recent_returns(*self.edge_evidence, now_ms, window), self.edge)

    # -- the loop
    def step(self, g: int) -> None:
        """Replay step g: fills, exits, pairs that end, the model's refit, the equity at the
        close (appended to the curve), then the entries decided at that close."""
        d = self.d
        self.g = g
        t = int(d.grid[g])
        close_ms = t + d.tf_ms
        col = d.at[:, g]
        here = np.flatnonzero(col >= 0)
        if self.pending:
            self.fill_entries(col, t)
        if self.fill_bars:
            self.fill_bars = {}
        if self.resting:
            self.fill_limits(col, t)
        held = bool(self.ledger.positions)
        if held:
            self.check_exits(col, close_ms)
        self.last_close[here] = d.c[col[here]]
        final = g == len(d.grid) - 1
        ending = [d.symbols[p] for p in here.tolist()
                  if col[p] == d.last[p] and d.symbols[p] in self.ledger.positions]
        if ending and not final:
            self.close_all("end_of_data", close_ms, ending)
        if self.resting:
            self.expire_limits(col, g, close_ms)
        if self.model is not None and self.model.due(g):
            self.model.update(g)
        eq = self.equity()
        self._curve[self.recorded] = eq
        self._exposed[self.recorded] = held
        self.recorded += 1
        if not final:
            self.decide(col, here, close_ms, eq)

    def run(self, g0: int, progress: Callable[[int], None] | None) -> bool:
        """Every step from g0 (fills `times`, `curve`, `exposed`); True if interrupted. Open
        positions are closed at the end (`end_of_backtest`), also after Ctrl-C.

        With `skip_idle_steps` the steps where provably nothing happens are fast-forwarded
        (`_skip_to`); the others run `step` as the per-step reference does."""
        steps = len(self.d.grid)
        self.g0, self.recorded = g0, 0
        self._curve, self._exposed = np.empty(steps - g0), np.zeros(steps - g0, dtype=bool)
        fast = self.settings.skip_idle_steps
        reported = g = g0
        try:
            while g < steps:
                event = self._next_event(g) if fast else g
                if progress is not None:   # report (and hear Ctrl-C) as often as step by step
                    event = min(event, max(g, reported + PROGRESS_EVERY - 1))
                if event > g:
                    self._skip_to(g, event)
                self.step(event)
                if fast:
                    self._after_step(event)
                g = event + 1
                if progress is not None and g - reported >= PROGRESS_EVERY:
                    progress(g - reported)
                    reported = g
            if progress is not None and reported < steps:
                progress(steps - reported)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: reporting the replay up to here")
        if self.recorded:
            self.close_all("end_of_backtest", int(self.times[-1]) + self.d.tf_ms)
            self._curve[self.recorded - 1] = self.ledger.cash
        self.pending = []
        self.resting = {}
        return interrupted

    # -- fast-forward: what `step` would do at the steps where nothing happens
    #
    # Between events the books stand still: no order is pending or resting, no held
    # position exits (its path is known: `exits.path`), no held pair ends, no model is
    # due and no pair that could be entered has a candidate. Such a step only moves the
    # held positions' stops along their paths, the last closes and the equity curve, and
    # observes the equity peak (all that `decide` does at a step without a candidate).

    def _rule_candidates(self, g: int = 0, end: int | None = None) -> np.ndarray:
        """(P, end - g): pair p passes the strategy at step g (the model not asked)."""
        d = self.d
        at = d.at[:, g:end]
        out = np.zeros(at.shape, dtype=bool)
        rows = at >= 0
        out[rows] = d.signal_ok[at[rows]] & (d.local[at[rows]] >= self.min_local)
        return out

    def _model_candidates(self, g: int) -> None:
        """After the model refit at step g: until the next refit, a pair is a candidate only
        where the model's batched prediction passes (or is missing: then it is asked)."""
        model, d = self.model, self.d
        end = model._queue[0][0] if model._queue else len(d.grid)
        window = self._rule_candidates(g, end)
        if model.estimator is not None:
            rows = d.at[:, g:end][window]
            prob = model.prob[rows]
            with np.errstate(invalid="ignore"):
                ok = (((prob >= self.params.min_confidence)
                       & (model.expected_return(prob) > self.params.min_expected_return))
                      | np.isnan(prob))
            window[window] = ok
        self.candidates[:, g:end] = window

    def _next_event(self, g: int) -> int:
        """The first step from g at which something may happen."""
        if self.pending or self.resting or self.fill_bars:
            return g
        d = self.d
        event = len(d.grid) - 1
        if self.model is not None and self.model._queue:
            event = min(event, self.model._queue[0][0])
        for s, course in self.courses.items():
            p = self.index[s]
            event = min(event, int(self.last_step[p]))
            if course.path.exit < len(course.path.stop) - 1:
                event = min(event, int(self.row_step[course.start + course.path.exit]))
        if len(self.ledger.positions) < self.risk.max_open_positions:
            event = self._next_candidate(g, event)
        return max(event, g)

    def _next_candidate(self, g: int, limit: int) -> int:
        """The first step in [g, limit) where a pair not held is a candidate, else limit."""
        held = self.ledger.positions
        free = [p for p, s in enumerate(self.d.symbols) if s not in held]
        span = 256
        while g < limit:
            end = min(limit, g + span)
            hit = np.flatnonzero(self.candidates[free, g:end].any(axis=0))
            if hit.size:
                return g + int(hit[0])
            g, span = end, span * 4
        return limit

    def _next_row(self, p: int, g: int) -> int:
        """Pair p's first row at step g or later (one past its last row if none)."""
        first, last = int(self.d.first[p]), int(self.d.last[p])
        return first + int(np.searchsorted(self.row_step[first:last + 1], g, side="left"))

    def _skip_to(self, g: int, event: int) -> None:
        """Steps g .. event - 1, where nothing happens (see above)."""
        d = self.d
        steps = np.arange(g, event)
        held = self.ledger.positions
        equity = np.full(len(steps), self.ledger.cash)
        if held:
            value = np.zeros(len(steps))
            for s, position in held.items():
                value = value + position.amount * self._closes(self.index[s], steps)
            dust = np.zeros(len(steps))
            for s, amount in self.ledger.dust.items():
                dust = dust + amount * (self._closes(self.index[s], steps) if s in held else 0.0)
            equity = equity + value + dust
        done = self.recorded
        self._curve[done:done + len(steps)] = equity
        self._exposed[done:done + len(steps)] = bool(held)
        self.recorded += len(steps)
        self.risk.observe_equity(float(equity.max()))
        for p in range(len(d.symbols)):
            r = self._next_row(p, event) - 1
            if r >= d.first[p]:
                self.last_close[p] = d.c[r]
        self.g = event - 1
        if self.follows_high:
            for s, course in self.courses.items():
                k = self._next_row(self.index[s], event) - course.start
                stop, high = float(course.path.stop[k]), float(course.path.high[k])
                position = held[s]
                if (stop, high) != (position.stop_loss, position.high_water):
                    self.ledger.move_stop(s, stop, high)

    def _closes(self, p: int, steps: np.ndarray) -> np.ndarray:
        """Pair p's last close at each step (it has had a candle before them)."""
        first, last = int(self.d.first[p]), int(self.d.last[p])
        rows = first + np.searchsorted(self.row_step[first:last + 1], steps, side="right") - 1
        return self.d.c[rows]

    def _after_step(self, g: int) -> None:
        """Keep a path for every held position (recomputed when the books left it: a new
        position, a refused or partial exit) and the model's candidates after a refit."""
        if self.model is not None and self.model.trainings > self.refits_seen:
            self.refits_seen = self.model.trainings
            self._model_candidates(g)
        held = self.ledger.positions
        for s in [s for s in self.courses if s not in held]:
            del self.courses[s]
        for s, position in held.items():
            if s in self.followed:        # moved along its path at this step: still on it
                continue
            p = self.index[s]
            start = self._next_row(p, g + 1)
            course = self.courses.get(s)
            if course is None or not self._on_course(course, position, start):
                self.courses[s] = self._course(p, position, start)
        self.followed.clear()

    def _on_course(self, course: "Course", position, start: int) -> bool:
        k = start - course.start
        if course.entry_ms != position.entry_time_ms or not 0 <= k <= course.path.exit:
            return False
        if course.path.stop[k] != position.stop_loss:
            return False
        return not self.follows_high or course.path.high[k] == max(position.high_water,
                                                                   position.entry_price)

    def _course(self, p: int, position, start: int) -> "Course":
        """The position's path from row `start` until it exits or its pair ends."""
        d = self.d
        end_of_pair = int(d.last[p]) + 1
        span = 256
        while True:
            end = min(start + span, end_of_pair)
            rows = slice(start, end)
            path = exits_path(self.params, position.entry_price, position.entry_time_ms,
                              position.stop_loss, position.take_profit,
                              max(position.high_water, position.entry_price),
                              d.o[rows], d.h[rows], d.l[rows], d.c[rows], d.ts[rows],
                              d.exit_signal[rows])
            if path.exit < end - start or end == end_of_pair:
                return Course(start, position.entry_time_ms, path)
            span *= 4


class Course(NamedTuple):
    """A held position's path (`exits.path`) over its pair's rows from `start` on."""
    start: int
    entry_ms: int
    path: Path

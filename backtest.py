"""Replay closed candles through the live decision pipeline, the ledger and a broker.

`run_backtest` walks the candles of all pairs at once in time order, one closed candle at a
time, through the same strategy object, `exits.check_positions`, `strategy.decide_entries`,
protections, edge gate, `RiskManager`, `ledger.Ledger` and (for fills)
`brokers.BacktestBroker` as the live bot uses:

- Alignment. The replay steps over the union of every pair's candle timestamps. A pair
  joins the universe at its first candle and leaves after its last (an open position is
  then closed at its last close, reason `end_of_data`). A missing candle inside a pair is
  not forward-filled: at that step the pair has no bar, so it is neither scored nor
  checked for exits, and its indicators run over its own candle sequence (as the live
  candle store holds it). Like the live scanner, a pair is scored only once it has
  `market_scanner.MIN_CANDLES` candles.
- No look-ahead. Indicators and features are computed once over the full arrays; both are
  causal, so their value at candle t depends on candles <= t only. The decision at the
  close of candle t sees a MarketView of the pairs that have a candle at t.
- Fills. An entry decided at the close of candle t fills at the open of the pair's next
  candle, which must be the one right after t (else the entry is dropped: the pair had no
  trading); exits are checked on every candle's (open, high, low, close) bar from the fill
  candle on with the exit engine (`exits`: stop first when a candle touches several
  levels; a gap through a level fills at the open; the exit signal at the close). Before each order the replay sets the broker's quote (`book_quote`): the
  price, on the simulated exchange's book model fed with the pair's 1-minute volatility
  and 24 h quote volume estimated from the candles before the fill candle (`book_inputs`).
  The broker rounds and checks the order with the pair's `MarketRules` (derived from its
  price level, as the simulated exchange does), walks the book and charges the taker fee;
  the ledger books the fill. A pair is not re-entered on the close of the candle it was
  sold in (the strategy's cooldown, `StrategyParams.cooldown_candles`). With a slippage
  guard (`max_slippage`, the live MAX_SLIPPAGE) a market order takes only the book levels
  within it of the best price: a thin book fills partly (an entry opens what filled, an
  exit leaves the rest open, or as dust when the market would not take it).
- Limit entries (`entry_order='limit'`, the live ENTRY_ORDER=limit). An entry decided at
  the close of candle t rests as a post-only limit buy at the decision's price (the close,
  the best bid) on the tick, holding amount x price x (1 + maker fee) of the cash (live:
  not in the exchange's free balance); its pair takes no new entry meanwhile and it counts
  against MAX_OPEN_POSITIONS and its group's limit (busy, as in the live bot). It fills in full, at its limit price with the maker fee, on a later
  candle of the pair whose low is strictly below the limit (a touch does not fill: the
  order is behind the queue); the fill is timed at that candle's open, as a market
  entry's, and that candle's exits are checked on what it showed after the fill
  (`after_limit_fill`). At the first close `limit_timeout_ms` (rounded up to whole
  candles) after it was placed it is cancelled and repriced at that close with the same
  amount, up to `limit_reprices` times, then given up (`entry_expired`), as it is when its
  pair's candles end.
- Model (use_model). Walk-forward: every `retrain_interval_ms` of market time (RETRAIN_INTERVAL)
  once `retrain_min_new_samples` (RETRAIN_MIN_NEW_SAMPLES) new labelled samples have become
  known since the last fit, the model is refit on the samples whose labels were known then (the label window's last candle
  closed at or before now, as the live bot's candle history would have them); before the
  first model can be trained (or while the latest is not trusted: ML_MIN_AUC) the
  strategy decides alone. Probabilities for the coming
  period are predicted in one batched call; the pipeline's `predict` looks them up by the
  exact feature row (falling back to the model on a miss), so it receives exactly what
  the model says. The live bot's rounded-key prediction cache is not used.

- Speed. Everything that does not depend on the books is computed once over the whole
  arrays (indicators, features, signals, labels, the refit schedule; fits run ahead on a
  thread pool). The loop then fast-forwards over the steps where provably nothing happens
  (`_Replay._skip_to`): no order pending or resting, no held position exiting (each one's
  path of stops and its exit bar come from `exits.path`, all bars at once), no held pair
  ending, no refit due and no pair that could be entered with a signal (or a model
  prediction) passing. It runs `step`, as the per-step reference (`skip_idle_steps=False`)
  does at every step, only at the others; the results are identical (tests compare them).

Ctrl-C (KeyboardInterrupt) stops the replay and returns the partial result. The report
(metrics, terminal text, report.json, the chart) is `backtest_report`.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from brokers import PAPER_BOOK_DEPTH, BacktestBroker, Quote, check_funds
from candle_files import gaps, timeframe_to_ms
from domain import Bar, EntryIntent, Fill, MarketView, OrderRejected, StrategyParams, Trade
from order_ids import client_order_id
from features import HISTORY_NEEDED, close_windows, prepare_features
from labels import Samples, pair_samples
from ledger import Ledger
from market_rules import TAKER_FEE, MarketRules, quote_of
from market_scanner import MIN_CANDLES
from ml_model import (DEFAULT_MODEL_KIND, MIN_TRAIN_SAMPLES, expected_return, positive_proba,
                      train_model)
from model_training import NOT_READY_RETRY, TrainingData
from risk_manager import RiskManager
from sim_market import synthetic_order_book
from exits import Path, check_positions
from exits import path as exits_path
import strategies
from strategies import Strategy, TrendMomentum, frame, signals
from edge import EdgeSettings, EdgeVerdict, judge, recent_returns
from protections import ProtectionSettings, Protections, split
from strategy import ModelFilter, decide_entries

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
PROGRESS_EVERY = 64                     # steps between progress callbacks
ENTRY_ORDERS = ("market", "limit")
DEFAULT_LIMIT_TIMEOUT_S = 300           # when the config has no LIMIT_ENTRY_TIMEOUT (seconds)
DEFAULT_LIMIT_REPRICES = 2              # when the config has no LIMIT_ENTRY_REPRICES


# --------------------------------------------------------------------------- settings, results

@dataclass(frozen=True)
class BacktestSettings:
    """Replay settings that are not strategy or risk parameters."""
    starting_balance: float = 10_000.0
    fee_rate: float = TAKER_FEE
    slippage: bool = True                 # walk the synthetic book; False: fill at the price
    retrain_interval_ms: int = DAY_MS     # walk-forward refits at most this often (market time)
    retrain_min_new_samples: int = 500    # ... and only once this many new samples are known
    model_kind: str | None = None         # None: ml_model.DEFAULT_MODEL_KIND, as live
    start_ms: int | None = None           # trade candles opening at/after this (earlier: warm-up)
    end_ms: int | None = None             # ignore candles opening at/after this
    skip_idle_steps: bool = True          # fast-forward over steps where nothing can happen
                                          # (False: the per-step reference replay)
    fit_workers: int = 0                  # threads fitting models ahead (0: min(4, CPUs))
    entry_order: str = "market"           # "market" or "limit" (post-only at the best bid)
    limit_timeout_ms: int = DEFAULT_LIMIT_TIMEOUT_S * 1000   # a limit entry rests this long
    limit_reprices: int = DEFAULT_LIMIT_REPRICES              # then is repriced this often
    max_slippage: float | None = None     # market orders take book levels within this of the best
    min_auc: float = 0.55                 # the model filters only with this holdout AUC (ML_MIN_AUC)

    def __post_init__(self) -> None:
        if self.entry_order not in ENTRY_ORDERS:
            raise ValueError(f"entry_order {self.entry_order!r} is not one of "
                             f"{', '.join(ENTRY_ORDERS)}")
        if not self.limit_timeout_ms > 0:
            raise ValueError(f"limit_timeout_ms {self.limit_timeout_ms!r} is not positive")
        if not self.limit_reprices >= 0:
            raise ValueError(f"limit_reprices {self.limit_reprices!r} is negative")
        if self.max_slippage is not None and not self.max_slippage >= 0:
            raise ValueError(f"max_slippage {self.max_slippage!r} is negative")

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "BacktestSettings":
        """The starting balance and the order settings of a config.Config. The order
        settings are read with getattr defaults, so a config without them (older, or a
        test's stand-in) replays market entries without a slippage guard."""
        slippage = getattr(config, "max_slippage", None)
        base = dict(
            starting_balance=float(config.starting_balance),
            entry_order=str(getattr(config, "entry_order", "market")).lower(),
            limit_timeout_ms=int(round(float(getattr(config, "limit_entry_timeout",
                                                     DEFAULT_LIMIT_TIMEOUT_S)) * 1000)),
            limit_reprices=int(getattr(config, "limit_entry_reprices", DEFAULT_LIMIT_REPRICES)),
            min_auc=float(getattr(config, "ml_min_auc", 0.55)),
            retrain_interval_ms=int(float(getattr(config, "retrain_interval", DAY_MS / 1000)) * 1000),
            retrain_min_new_samples=int(getattr(config, "retrain_min_new_samples", 500)),
            max_slippage=None if slippage is None else float(slippage))
        return cls(**(base | overrides))


@dataclass
class BacktestResult:
    symbols: tuple[str, ...]
    quote: str
    timeframe_ms: int
    starting_balance: float
    times_ms: np.ndarray              # open time of each replayed candle step
    equity: np.ndarray                # equity at the close of each step
    buy_hold: np.ndarray              # equal-weight buy-and-hold of the same pairs
    exposed: np.ndarray               # bool: a position was held during the step
    trades: list[Trade]               # entry time: open of the fill candle; exit: close of its candle
    # events: ("entry", close, symbol, price, amount, stop, take, reason), ("fill_buy", t,
    # symbol, amount, price, fee), ("limit_placed", close, symbol, price, amount, reprices),
    # ("entry_expired" | "entry_dropped" | "entry_rejected" | "exit_rejected", t, symbol, why),
    # ("exit", close, symbol, price, reason), ("fill_sell", t, symbol, amount, price, fee, reason)
    events: list[tuple]               # every decision and fill, in order (for audits/tests)
    pair_info: dict[str, dict]
    used_model: bool
    trainings: int = 0
    model_misses: int = 0             # predict calls not served by the batched predictions
    interrupted: bool = False
    gated_steps: int = 0              # decision points the edge gate sat out
    slippage: float = 0.0             # quote lost to spread and depth against the quoted prices
    strategy: str = ""
    trusted_fits: int = 0             # model refits good enough (ML_MIN_AUC) to filter

    @property
    def final_equity(self) -> float:
        return float(self.equity[-1]) if len(self.equity) else self.starting_balance

    @property
    def fees(self) -> float:
        """Fees of every fill (every position is closed by the end of the replay)."""
        return sum(t.entry_fee + t.exit_fee for t in self.trades)


# --------------------------------------------------------------------------- the data

@dataclass
class _Data:
    """All pairs' candles concatenated (N rows), with the step grid and per-row derivations."""
    symbols: tuple[str, ...]
    tf_ms: int
    grid: np.ndarray                 # (G,) candle open times, union over pairs
    at: np.ndarray                   # (P, G) row of pair p's candle at step g, or -1
    first: np.ndarray                # (P,) first and last row of each pair
    last: np.ndarray
    local: np.ndarray                # (N,) index of the row within its pair
    ts: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray
    c: np.ndarray
    v: np.ndarray
    ind: dict                         # column name -> (N,): what the strategy reads
    feat: np.ndarray                 # (N, F) float32 model features
    usable: np.ndarray               # (N,) the pipeline could score this row
    signal_ok: np.ndarray            # (N,) usable, and the strategy would enter here
    exit_signal: np.ndarray          # (N,) the strategy would sell a position here
    book_vol: np.ndarray             # (N,) 1-minute volatility through this candle
    book_qv: np.ndarray              # (N,) 24 h quote volume through this candle
    rules: list[MarketRules]         # (P,) each pair's market


def _prepare(candles: Mapping[str, np.ndarray], strategy: Strategy, params: StrategyParams,
             settings: BacktestSettings, rules: Mapping[str, MarketRules] | None = None) -> _Data:
    tf = int(params.timeframe_ms)
    symbols = tuple(sorted(candles))
    arrays = [np.asarray(candles[s], dtype=np.float64).reshape(-1, 6) for s in symbols]
    lengths = np.array([len(a) for a in arrays])
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    last = first + lengths - 1
    allc = np.concatenate(arrays)
    grid = np.unique(allc[:, 0]).astype(np.int64)
    at = np.full((len(symbols), len(grid)), -1, dtype=np.int64)
    for p, a in enumerate(arrays):
        at[p, np.searchsorted(grid, a[:, 0].astype(np.int64))] = first[p] + np.arange(len(a))
    n = int(lengths.sum())
    ind: dict[str, np.ndarray] = {}       # filled pair by pair: no per-pair copies held
    feat = vol = qv = None
    markets = []
    market = strategies.market_index(dict(zip(symbols, arrays))) if strategy.market_period else None
    for p, (s, a) in enumerate(zip(symbols, arrays)):
        rows = slice(int(first[p]), int(last[p]) + 1)
        pi = frame(a, strategy, market)
        for k, v in pi.items():
            if k not in ind:
                ind[k] = np.empty(n, dtype=np.asarray(v).dtype)
            ind[k][rows] = v
        f = prepare_features(pi, close_windows(a[:, 4]))
        if feat is None:
            feat, vol, qv = np.empty((n, f.shape[1]), f.dtype), np.empty(n), np.empty(n)
        feat[rows] = f
        vol[rows], qv[rows] = book_inputs(a, tf)
        del pi, f
        markets.append((rules or {}).get(s) or
                       MarketRules.for_price(s, float(a[0, 4]), fee=settings.fee_rate))
    usable = np.isfinite(feat).all(axis=1) & np.isfinite(ind["atr"])
    # A strategy is elementwise, so it scores every row at once (used to skip steps).
    score, exit_signal = signals(strategy, ind)
    local = np.concatenate([np.arange(length) for length in lengths])
    return _Data(symbols, tf, grid, at, first, last, local, allc[:, 0].astype(np.int64),
                 allc[:, 1], allc[:, 2], allc[:, 3], allc[:, 4], allc[:, 5], ind, feat, usable,
                 usable & np.isfinite(score), exit_signal, vol, qv, markets)


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


# --------------------------------------------------------------------------- walk-forward model

def _one_thread():
    """Run scikit-learn's OpenMP code on one thread: with other work on the machine its
    spinning worker threads make a fit 10x slower, and on an idle 2-core machine one thread
    is as fast for these sample counts."""
    return threadpool_limits(1, user_api="openmp")


class _FitJob(NamedTuple):
    g: int                  # the step at whose close the model is refit
    g_end: int              # the step at which the next refit replaces it
    X: np.ndarray
    y: np.ndarray
    ret: np.ndarray
    time_ms: np.ndarray
    end_ms: np.ndarray


class _WalkForward:
    """Walk-forward refits: training samples in the order they became known, fits and the
    batched predictions of each fit's period.

    The refit schedule and every training set depend on the candles only (not on the
    trades), so they are worked out ahead and fitted on a thread pool while the replay
    runs; the replay takes each model at its step. Results do not depend on the workers.
    """

    def __init__(self, data: _Data, strategy: Strategy, params: StrategyParams,
                 settings: BacktestSettings, g0: int):
        self.data, self.params, self.settings = data, params, settings
        self.samples, self.known_ms = self._samples(data, strategy, params, settings)
        self.estimator = None
        self.payoff = (0.0, 0.0)
        self.trusted_fits = 0   # refits whose holdout AUC let them filter
        self.trainings = 0
        self.misses = 0         # predict calls not fully served by the batched predictions
        self.prob = np.full(len(data.ts), np.nan)
        workers = settings.fit_workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backtest-fit")
        self._ahead = workers + 1
        self._jobs = self._schedule(g0)
        self._queue: deque = deque()
        self._submit()

    @staticmethod
    def _samples(data: _Data, strategy: Strategy, params: StrategyParams,
                 settings: BacktestSettings):
        """Every pair's meta-labelled signals, sorted by the time their outcome became known
        (the close of the candle the trade ended in: the live bot's history holds it then)."""
        parts = []
        for p, s in enumerate(data.symbols):
            rows = slice(data.first[p], data.last[p] + 1)
            a = np.column_stack([data.ts[rows], data.o[rows], data.h[rows], data.l[rows],
                                 data.c[rows], data.v[rows]])
            smp = pair_samples(s, a, strategy, params, settings.fee_rate,
                               columns={k: v[rows] for k, v in data.ind.items()})
            if len(smp.y):
                parts.append(smp)
        if not parts:
            return None, np.empty(0, np.int64)
        merged = Samples(*(np.concatenate(cols) for cols in zip(*parts)))
        order = np.argsort(merged.label_end_ms, kind="stable")
        return Samples(*(col[order] for col in merged)), merged.label_end_ms[order]

    def _schedule(self, g0: int) -> Iterator[_FitJob]:
        """The refits: at the first step with enough data (tried every NOT_READY_RETRY until
        then), then every retrain interval once `retrain_min_new_samples` new samples have
        become known since the last fit, on the bounded TrainingData holding every sample
        known by then. Counting samples keeps the number of fits proportional to what
        there is to learn, not to the days replayed (a refit on nearly the same samples
        gives nearly the same model)."""
        d, settings = self.data, self.settings
        closes = d.grid + d.tf_ms
        training, cursor, job, fitted_at = TrainingData(), 0, None, 0
        g = g0
        while g < len(closes):
            now = int(closes[g])
            end = int(np.searchsorted(self.known_ms, now, side="right"))
            if end > cursor:   # one sample per signal and pair: no key to deduplicate
                smp = self.samples
                training.add(*(a[cursor:end] for a in (smp.X, smp.y, smp.ret, smp.time_ms,
                                                        smp.label_end_ms)))
                cursor = end
            fresh = training.added_total - fitted_at
            snap = (training.snapshot() if len(training) >= MIN_TRAIN_SAMPLES and (
                job is None or fresh >= settings.retrain_min_new_samples) else None)
            if snap is not None and 0 < snap.y.sum() < len(snap.y):
                if job is not None:
                    yield job._replace(g_end=g)
                job = _FitJob(g, len(closes), snap.X, snap.y, snap.ret, snap.time_ms,
                              snap.end_ms)
                fitted_at = training.added_total
            wait = settings.retrain_interval_ms if job is not None else max(
                int(NOT_READY_RETRY * 1000), d.tf_ms)
            g = int(np.searchsorted(closes, now + wait, side="left"))
        if job is not None:
            yield job

    def _submit(self) -> None:
        while len(self._queue) < self._ahead:
            job = next(self._jobs, None)
            if job is None:
                return
            self._queue.append((job.g, self._pool.submit(self._fit, job)))

    def _fit(self, job: _FitJob) -> tuple[Any, np.ndarray, np.ndarray, tuple[float, float]]:
        """Train as the live bot does (`train_model`: holdout quality, then a fit on all);
        predict every signal row of the job's period when the model is trusted (its holdout
        AUC reaches `min_auc`), else none (the strategy decides alone)."""
        d = self.data
        rows = d.at[:, job.g:job.g_end].ravel()
        rows = rows[rows >= 0]
        rows = rows[d.signal_ok[rows]]
        with _one_thread():
            kind = self.settings.model_kind or DEFAULT_MODEL_KIND
            trained = train_model(job.X, job.y, job.time_ms, job.end_ms, job.ret, kind=kind,
                                  min_confidence=self.params.min_confidence,
                                  min_auc=self.settings.min_auc)
            if trained is None or trained[0] is None:
                return None, rows[:0], rows[:0] * 0.0, (0.0, 0.0)
            estimator, meta = trained
            probs = positive_proba(estimator, d.feat[rows]) if rows.size else rows * 0.0
        return estimator, rows, probs, (meta["avg_win"], meta["avg_loss"])

    def due(self, g: int) -> bool:
        return bool(self._queue) and self._queue[0][0] == g

    def update(self, g: int) -> None:
        """Swap in the model refit at this step (waiting for its fit if needed)."""
        _, future = self._queue.popleft()
        self.estimator, rows, probs, self.payoff = future.result()
        self.prob[rows] = probs
        self.trusted_fits += self.estimator is not None
        self.trainings += 1
        self._submit()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def expected_return(self, p: np.ndarray) -> np.ndarray:
        return expected_return(p, *self.payoff)

    def predictor(self, rows: np.ndarray) -> ModelFilter:
        """The pipeline's model: the batched probability of each exact feature row."""
        memo = {self.data.feat[r].tobytes(): float(self.prob[r]) for r in rows.tolist()
                if np.isfinite(self.prob[r])}

        def predict(X: np.ndarray, keys: Sequence[tuple]) -> np.ndarray:
            X = np.asarray(X, dtype=np.float32)
            out = np.array([memo.get(x.tobytes(), np.nan) for x in X])
            miss = np.flatnonzero(np.isnan(out))
            if miss.size:
                self.misses += 1
                with _one_thread():
                    out[miss] = positive_proba(self.estimator, X[miss])
            return out

        return ModelFilter(predict, *self.payoff)


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

class _Replay:
    """The replay loop: fills through the broker, books kept by the ledger."""

    def __init__(self, data: _Data, strategy: Strategy, params: StrategyParams, risk: RiskManager,
                 settings: BacktestSettings, model: _WalkForward | None,
                 protections: ProtectionSettings, edge: EdgeSettings):
        self.d, self.params, self.risk, self.settings, self.model = data, params, risk, settings, model
        self.strategy = strategy
        self.protections = Protections(protections)
        self.edge = edge
        self.edge_evidence = None          # (end_ms, time_ms, net_return) of every signal trade
        if edge.enabled:
            smp = model.samples if model is not None else _WalkForward._samples(
                data, strategy, params, settings)[0]
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
        self.courses: dict[str, _Course] = {}     # held positions' paths (fast-forward)
        self.refits_seen = 0
        self.candidates = self._rule_candidates()  # (P, G) a pair may be entered at a step
        self.trades: list[Trade] = []
        self.events: list[tuple] = []
        self.last_close = np.full(len(data.symbols), np.nan)
        self._orders = itertools.count(1)
        self.g = 0
        self.times: list[int] = []        # per step: candle open time,
        self.curve: list[float] = []      # equity at its close,
        self.exposed: list[bool] = []     # a position was held during it

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
            self.ledger.open(fill, intent, self.risk.group_of(intent.symbol))
            self.events.append(("fill_buy", t, intent.symbol, fill.amount, fill.price, fill.fee))

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
                          d.c[rows[:, None] + self.k_off], close_ms, d.feat[rows])
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
                            model: _WalkForward | None, locked: set[str]) -> bool:
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
        self.times.append(t)
        self.curve.append(eq)
        self.exposed.append(held)
        if not final:
            self.decide(col, here, close_ms, eq)

    def run(self, g0: int, progress: Callable[[int], None] | None) -> bool:
        """Every step from g0 (fills `times`, `curve`, `exposed`); True if interrupted. Open
        positions are closed at the end (`end_of_backtest`), also after Ctrl-C.

        With `skip_idle_steps` the steps where provably nothing happens are fast-forwarded
        (`_skip_to`); the others run `step` as the per-step reference does."""
        steps = len(self.d.grid)
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
        if self.times:
            self.close_all("end_of_backtest", self.times[-1] + self.d.tf_ms)
            self.curve[-1] = self.ledger.cash
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
        self.times.extend(d.grid[g:event].tolist())
        self.curve.extend(equity.tolist())
        self.exposed.extend([bool(held)] * len(steps))
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
            p = self.index[s]
            start = self._next_row(p, g + 1)
            course = self.courses.get(s)
            if course is None or not self._on_course(course, position, start):
                self.courses[s] = self._course(p, position, start)

    def _on_course(self, course: "_Course", position, start: int) -> bool:
        k = start - course.start
        if course.entry_ms != position.entry_time_ms or not 0 <= k <= course.path.exit:
            return False
        if course.path.stop[k] != position.stop_loss:
            return False
        return not self.follows_high or course.path.high[k] == max(position.high_water,
                                                                   position.entry_price)

    def _course(self, p: int, position, start: int) -> "_Course":
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
                return _Course(start, position.entry_time_ms, path)
            span *= 4


class _Course(NamedTuple):
    """A held position's path (`exits.path`) over its pair's rows from `start` on."""
    start: int
    entry_ms: int
    path: Path


# --------------------------------------------------------------------------- entry point

def run_backtest(candles: Mapping[str, np.ndarray], config: Any = None, use_model: bool = True,
                 *, strategy: Strategy | None = None,
                 params: StrategyParams | None = None, risk: RiskManager | None = None,
                 settings: BacktestSettings | None = None,
                 rules: Mapping[str, MarketRules] | None = None,
                 protections: ProtectionSettings | None = None, edge: EdgeSettings | None = None,
                 progress: Callable[[int], None] | None = None) -> BacktestResult:
    """Replay `candles` (symbol -> (T, 6) [ts_ms, o, h, l, c, v], closed, validated) and
    return the trades, equity curve and buy-and-hold benchmark.

    `config` (a config.Config) supplies StrategyParams, the RiskManager and the starting
    balance; `params`, `risk` and `settings` override it (tests pass them without config).
    `rules` replaces the MarketRules derived from a pair's price level (the broker charges
    their taker fee). `progress(n)` gets the number of steps done since its last call.
    """
    if strategy is None:
        strategy = strategies.from_config(config) if config is not None else TrendMomentum()
    if params is None:   # the candles must be at the strategy's timeframe (backtest_job's)
        decide_on = strategies.decision_timeframe(strategy, config.timeframe)
        params = StrategyParams.from_config(config, timeframe_to_ms(decide_on))
    if settings is None:
        settings = BacktestSettings.from_config(config) if config is not None else BacktestSettings()
    if risk is None:
        risk = RiskManager.from_config(config, fee_rate=settings.fee_rate)
    if protections is None:
        protections = (ProtectionSettings.from_config(config, params.timeframe_ms)
                       if config is not None else
                       ProtectionSettings(params.timeframe_ms, params.cooldown_candles))
    if edge is None:
        edge = EdgeSettings.from_config(config) if config is not None else EdgeSettings(False)
    candles = {s: _until(a, settings.end_ms) for s, a in candles.items()}
    candles = {s: a for s, a in candles.items() if len(a)}
    if not candles:
        raise ValueError("no candles to replay (before the end date)")
    data = _prepare(candles, strategy, params, settings, rules)
    g0 = 0 if settings.start_ms is None else int(np.searchsorted(data.grid, settings.start_ms))
    if g0 >= len(data.grid):
        raise ValueError("no candles at or after the start date")
    model = _WalkForward(data, strategy, params, settings, g0) if use_model else None
    replay = _Replay(data, strategy, params, risk, settings, model, protections, edge)
    try:
        interrupted = replay.run(g0, progress)
    finally:
        if model is not None:
            model.close()
    steps = len(replay.times)
    return BacktestResult(
        symbols=data.symbols, quote=quote_of(data.symbols[0]), timeframe_ms=data.tf_ms,
        starting_balance=settings.starting_balance,
        times_ms=np.asarray(replay.times, dtype=np.int64),
        equity=np.asarray(replay.curve, dtype=np.float64),
        buy_hold=_buy_and_hold(data, g0, steps, settings),
        exposed=np.asarray(replay.exposed, dtype=bool), trades=replay.trades,
        events=replay.events, pair_info=_pair_info(data, g0, steps, settings), used_model=use_model,
        trainings=model.trainings if model else 0, model_misses=model.misses if model else 0,
        interrupted=interrupted, gated_steps=replay.gated_steps, slippage=replay.slippage,
        strategy=strategy.name, trusted_fits=model.trusted_fits if model else 0)


def step_count(candles: Mapping[str, np.ndarray]) -> int:
    """How many steps a replay of these candles has (the length of a progress bar)."""
    return len(np.unique(np.concatenate([np.asarray(a)[:, 0] for a in candles.values()])))


def _until(a: np.ndarray, end_ms: int | None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
    return a if end_ms is None else a[a[:, 0] < end_ms]


def _pair_window(data: _Data, p: int, g0: int, steps: int) -> tuple[int, int] | None:
    """First and last row of pair p inside the replayed steps."""
    rows = data.at[p, g0:g0 + steps]
    rows = rows[rows >= 0]
    return (int(rows[0]), int(rows[-1])) if rows.size else None


def _buy_and_hold(data: _Data, g0: int, steps: int, settings: BacktestSettings) -> np.ndarray:
    """Equity of an equal split of the balance over the pairs, each share bought at the pair's
    first open in the window and sold at its last close (one taker fee each way)."""
    fee = settings.fee_rate
    share = settings.starting_balance / len(data.symbols)
    total = np.zeros(steps)
    for p in range(len(data.symbols)):
        window = _pair_window(data, p, g0, steps)
        if window is None:
            total += share
            continue
        r0, r1 = window
        units = share * (1 - fee) / data.o[r0]
        rows = data.at[p, g0:g0 + steps]
        filled = np.maximum.accumulate(np.where(rows >= 0, rows, -1))
        value = np.where(filled >= 0, units * data.c[np.maximum(filled, 0)], share)
        value[filled == r1] = units * data.c[r1] * (1 - fee) if steps else 0
        total += value
    return total


def _pair_info(data: _Data, g0: int, steps: int, settings: BacktestSettings) -> dict[str, dict]:
    out = {}
    for p, s in enumerate(data.symbols):
        window = _pair_window(data, p, g0, steps)
        if window is None:
            out[s] = {"candles": 0}
            continue
        r0, r1 = window
        holes = gaps(data.ts[r0:r1 + 1, None], data.tf_ms)
        fee = settings.fee_rate
        out[s] = {"candles": r1 - r0 + 1, "first_ms": int(data.ts[r0]),
                  "last_ms": int(data.ts[r1]) + data.tf_ms,
                  "missing_candles": int(sum(n for _, n in holes)), "gaps": len(holes),
                  "buy_hold_pct": 100.0 * (data.c[r1] / data.o[r0] * (1 - fee) ** 2 - 1)}
    return out


__all__ = ["BacktestResult", "BacktestSettings", "book_inputs", "book_quote", "run_backtest",
           "step_count"]

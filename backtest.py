"""Replay closed candles through the live decision pipeline with paper fills, and report.

`run_backtest` walks the candles of all pairs at once in time order, one closed candle at a
time, through the same `strategy.check_exits` / `strategy.decide_entries` and `RiskManager`
as the live bot:

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
  trading); exits are checked on every later candle's (open, high, low, close) bar with
  `check_exit` (stop first when a candle touches both; a gap through a barrier fills at
  the open). Every fill walks `sim_exchange.synthetic_order_book` (the simulated
  exchange's book model, fed with the pair's 1-minute volatility and 24 h quote volume
  estimated from the candles before the fill candle) and pays the taker fee. Amounts and
  prices are rounded to a per-pair precision and checked against minimum amount and
  notional, as the exchange layer does.
- Model (use_model). Walk-forward: every `retrain_interval_ms` of market time the model is
  refit on the samples whose labels were known then (the label window's last candle
  closed at or before now, as the live bot's candle history would have them); before the
  first model can be trained the fallback rule decides. Probabilities for the coming
  period are predicted in one batched call; the pipeline's `predict` looks them up by the
  exact feature row (falling back to the model on a miss), so it receives exactly what
  the model says. The live bot's rounded-key prediction cache is not used.

Ctrl-C (KeyboardInterrupt) stops the replay and returns the partial result.
Importing this module costs the standard library and click; numpy and the rest load on use.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import click

if TYPE_CHECKING:
    import numpy as np

    from risk_manager import RiskManager
    from strategy import EntryIntent, Position, StrategyParams

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS                  # crypto trades every day: annualise over 365 days
FEE_RATE = 0.001                        # taker fee per side (Binance spot, the simulated exchange)
BOOK_LEVELS = 100                       # depth the paper broker reads
PROGRESS_EVERY = 64                     # steps between progress callbacks
# Minimum order value by quote currency (the simulated exchange's 5 USDT; Binance's BTC/ETH/BNB).
MIN_NOTIONAL = {"BTC": 0.0001, "ETH": 0.001, "BNB": 0.01}
DEFAULT_MIN_NOTIONAL = 5.0


# --------------------------------------------------------------------------- markets

def _to_grid(x: float, unit: float, down: bool) -> float:
    """x rounded to a multiple of unit (truncated when down, else nearest), without float dust."""
    n = math.floor(x / unit + 1e-9) if down else round(x / unit)
    return float(Decimal(n) * Decimal(repr(unit)))


@dataclass(frozen=True)
class MarketSpec:
    """Precision and limits of one market (what exchangeInfo's filters say)."""
    tick: float
    step: float
    min_notional: float
    min_amount: float = 0.0
    max_amount: float = math.inf

    @classmethod
    def for_price(cls, price: float, quote: str = "USDT") -> "MarketSpec":
        """Derived from a price level the way the simulated exchange derives its markets
        (sim_exchange's tick and step rules): 5 significant digits of price; amount steps
        worth 0.1-1 USDT. For other quotes the step is scaled by the quote's minimum notional
        (ETH/BTC gets 0.0001 ETH, as on Binance)."""
        from sim_exchange import step_size, tick_size

        min_notional = MIN_NOTIONAL.get(quote, DEFAULT_MIN_NOTIONAL)
        usd_like = price * DEFAULT_MIN_NOTIONAL / min_notional
        step = step_size(usd_like)
        return cls(tick=tick_size(price), step=step,
                   min_notional=min_notional, min_amount=step,
                   max_amount=10.0 ** math.ceil(math.log10(1e8 / usd_like)))

    def round_order(self, symbol: str, side: str, amount: float,
                    price: float) -> tuple[float, float]:
        """(amount truncated to the step, price to the nearest tick); OrderRejected if off-limits."""
        from exchange import OrderRejected

        if not (amount > 0 and math.isfinite(amount)):
            raise OrderRejected(f"{symbol}: amount {amount:.10g} is not a positive number")
        if not (price > 0 and math.isfinite(price)):
            raise OrderRejected(f"{symbol}: price {price:.10g} is not a positive number")
        rounded = _to_grid(amount, self.step, down=True)
        rprice = max(self.tick, _to_grid(price, self.tick, down=False))
        if rounded <= 0 or rounded < self.min_amount:
            raise OrderRejected(f"{symbol}: amount {amount:.10g} (rounded {rounded:.10g}) below "
                                f"minimum {max(self.min_amount, self.step):.10g}")
        if rounded > self.max_amount:
            raise OrderRejected(f"{symbol}: amount {rounded:.10g} above maximum "
                                f"{self.max_amount:.10g}")
        if rounded * rprice < self.min_notional:
            raise OrderRejected(f"{symbol}: notional {rounded * rprice:.10g} below minimum "
                                f"{self.min_notional:.10g}")
        return rounded, rprice


def quote_of(symbol: str) -> str:
    return symbol.split("/")[1].split(":")[0] if "/" in symbol else ""


# --------------------------------------------------------------------------- settings, results

@dataclass(frozen=True)
class BacktestSettings:
    """Replay settings that are not strategy or risk parameters."""
    starting_balance: float = 10_000.0
    fee_rate: float = FEE_RATE
    slippage: bool = True                 # walk the synthetic book; False: fill at the price
    retrain_interval_ms: int = DAY_MS     # walk-forward refit period (market time)
    model_kind: str | None = None         # None: ml_model.DEFAULT_MODEL_KIND, as live
    start_ms: int | None = None           # trade candles opening at/after this (earlier: warm-up)
    end_ms: int | None = None             # ignore candles opening at/after this
    skip_idle_steps: bool = True          # skip decide_entries where it provably has no candidate
    fit_workers: int = 0                  # threads fitting models ahead (0: min(4, CPUs))

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "BacktestSettings":
        return cls(starting_balance=float(config.starting_balance), **overrides)


@dataclass(frozen=True)
class Trade:
    symbol: str
    amount: float
    entry_price: float
    exit_price: float
    entry_time_ms: int        # open of the candle the entry filled at
    exit_time_ms: int         # close of the candle in which the exit happened
    entry_fee: float
    exit_fee: float
    profit: float             # net of both fees, in quote
    return_pct: float         # profit / (entry cost + entry fee), %
    exit_reason: str          # stop_loss | take_profit | time_limit | end_of_data | end_of_backtest
    entry_reason: str         # rule | model
    probability: float | None


@dataclass
class BacktestResult:
    symbols: tuple[str, ...]
    quote: str
    timeframe_ms: int
    starting_balance: float
    times_ms: "np.ndarray"            # open time of each replayed candle step
    equity: "np.ndarray"              # equity at the close of each step
    buy_hold: "np.ndarray"            # equal-weight buy-and-hold of the same pairs
    exposed: "np.ndarray"             # bool: a position was held during the step
    trades: list[Trade]
    events: list[tuple]               # every decision and fill, in order (for audits/tests)
    pair_info: dict[str, dict]
    used_model: bool
    trainings: int = 0
    model_misses: int = 0             # predict calls not served by the batched predictions
    interrupted: bool = False
    fees: float = 0.0

    @property
    def final_equity(self) -> float:
        return float(self.equity[-1]) if len(self.equity) else self.starting_balance


# --------------------------------------------------------------------------- the data

@dataclass
class _Data:
    """All pairs' candles concatenated (N rows), with the step grid and per-row derivations."""
    symbols: tuple[str, ...]
    tf_ms: int
    grid: "np.ndarray"               # (G,) candle open times, union over pairs
    at: "np.ndarray"                 # (P, G) row of pair p's candle at step g, or -1
    first: "np.ndarray"              # (P,) first and last row of each pair
    last: "np.ndarray"
    local: "np.ndarray"              # (N,) index of the row within its pair
    ts: "np.ndarray"
    o: "np.ndarray"
    h: "np.ndarray"
    l: "np.ndarray"
    c: "np.ndarray"
    v: "np.ndarray"
    ind: dict                         # indicator name -> (N,)
    feat: "np.ndarray"               # (N, F) float32 model features
    usable: "np.ndarray"             # (N,) the pipeline could score this row
    rule_ok: "np.ndarray"            # (N,) the fallback rule picks this row
    book_vol: "np.ndarray"           # (N,) 1-minute volatility through this candle
    book_qv: "np.ndarray"            # (N,) 24 h quote volume through this candle
    specs: list[MarketSpec]


def _prepare(candles: Mapping[str, "np.ndarray"], params: "StrategyParams",
             settings: BacktestSettings) -> _Data:
    import numpy as np

    from indicators import compute_all
    from ml_model import close_windows, prepare_features
    from strategy import MarketView, rule_scores

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
    ind: dict[str, list] = {}
    feats, vols, qvs, specs = [], [], [], []
    for s, a in zip(symbols, arrays):
        pi = compute_all(a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5])
        for k, v in pi.items():
            ind.setdefault(k, []).append(v)
        feats.append(prepare_features(pi, close_windows(a[:, 4])))
        vol, qv = _book_inputs(a, tf)
        vols.append(vol)
        qvs.append(qv)
        specs.append(MarketSpec.for_price(float(a[0, 4]), quote_of(s)))
    ind_all = {k: np.concatenate(v) for k, v in ind.items()}
    feat = np.concatenate(feats)
    usable = np.isfinite(feat).all(axis=1) & np.isfinite(ind_all["atr"])
    # The fallback rule is elementwise, so it scores every row at once (used to skip steps).
    rule = rule_scores(MarketView((), ind_all, allc[:, 4:5], 0), params)
    local = np.concatenate([np.arange(n) for n in lengths])
    return _Data(symbols, tf, grid, at, first, last, local, allc[:, 0].astype(np.int64),
                 allc[:, 1], allc[:, 2], allc[:, 3], allc[:, 4], allc[:, 5], ind_all, feat, usable,
                 usable & np.isfinite(rule), np.concatenate(vols), np.concatenate(qvs), specs)


def _book_inputs(a: "np.ndarray", tf_ms: int) -> tuple["np.ndarray", "np.ndarray"]:
    """Per candle: the std of 1-minute log returns over the last hour (at least 12 candles),
    and the 24 h quote volume (volume x typical price), from candles up to this one."""
    import numpy as np

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


# --------------------------------------------------------------------------- walk-forward model

def _one_thread():
    """Run scikit-learn's OpenMP code on one thread: with other work on the machine its
    spinning worker threads make a fit 10x slower, and on an idle 2-core machine one thread
    is as fast for these sample counts."""
    try:
        from threadpoolctl import threadpool_limits   # installed with scikit-learn
    except ImportError:   # pragma: no cover
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="openmp")


class _FitJob(NamedTuple):
    g: int                  # the step at whose close the model is refit
    g_end: int              # the step at which the next refit replaces it
    X: "np.ndarray"
    y: "np.ndarray"


class _WalkForward:
    """Walk-forward refits: training samples in the order they became known, fits and the
    batched predictions of each fit's period.

    The refit schedule and every training set depend on the candles only (not on the
    trades), so they are worked out ahead and fitted on a thread pool while the replay
    runs; the replay takes each model at its step. Results do not depend on the workers.
    """

    def __init__(self, data: _Data, params: "StrategyParams", settings: BacktestSettings,
                 g0: int):
        import numpy as np
        from concurrent.futures import ThreadPoolExecutor

        self.data, self.params, self.settings = data, params, settings
        self.samples, self.known_ms = self._samples(data, params, settings)
        self.estimator = None
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
    def _samples(data: _Data, params: "StrategyParams", settings: BacktestSettings):
        """Every pair's labelled samples, sorted by the time their label became known: when
        the label window's last candle closed (the live bot's history would hold it then)."""
        import numpy as np

        from ml_model import LabelParams, Samples, samples_from_candles

        label = LabelParams(params.stop_loss_atr, params.take_profit_atr, params.max_hold_candles,
                            data.tf_ms, settings.fee_rate)
        parts, known = [], []
        for p, s in enumerate(data.symbols):
            rows = slice(data.first[p], data.last[p] + 1)
            a = np.column_stack([data.ts[rows], data.o[rows], data.h[rows], data.l[rows],
                                 data.c[rows], data.v[rows]])
            smp = samples_from_candles({s: a}, label)
            if len(smp.y):
                i = np.searchsorted(a[:, 0], smp.time_ms - data.tf_ms)
                parts.append(smp)
                known.append(a[i + params.max_hold_candles, 0].astype(np.int64) + data.tf_ms)
        if not parts:
            return None, np.empty(0, np.int64)
        merged = Samples(*(np.concatenate(cols) for cols in zip(*parts)))
        k = np.concatenate(known)
        order = np.argsort(k, kind="stable")
        return Samples(*(col[order] for col in merged)), k[order]

    def _schedule(self, g0: int) -> Iterator[_FitJob]:
        """The refits the live bot would make: at the first step, then every retrain interval
        (every NOT_READY_RETRY while there is not enough data), on the bounded TrainingData
        holding every sample known by then."""
        import numpy as np

        from ml_model import MIN_TRAIN_SAMPLES, NOT_READY_RETRY, Samples, TrainingData

        d = self.data
        closes = d.grid + d.tf_ms
        training, cursor, ready, job = TrainingData(), 0, False, None
        g = g0
        while g < len(closes):
            now = int(closes[g])
            end = int(np.searchsorted(self.known_ms, now, side="right"))
            if end > cursor:
                training.add_samples(Samples(*(c[cursor:end] for c in self.samples)))
                cursor = end
            snap = training.snapshot() if len(training) >= MIN_TRAIN_SAMPLES else None
            if snap is not None and 0 < snap.y.sum() < len(snap.y):
                if job is not None:
                    yield job._replace(g_end=g)
                job, ready = _FitJob(g, len(closes), snap.X, snap.y), True
            wait = self.settings.retrain_interval_ms if ready else max(
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

    def _fit(self, job: _FitJob) -> tuple[Any, "np.ndarray", "np.ndarray"]:
        """Fit on the job's samples; predict every scorable row of the job's period."""
        from ml_model import DEFAULT_MODEL_KIND, make_estimator, positive_proba

        d = self.data
        rows = d.at[:, job.g:job.g_end].ravel()
        rows = rows[rows >= 0]
        rows = rows[d.usable[rows]]
        with _one_thread():
            kind = self.settings.model_kind or DEFAULT_MODEL_KIND
            estimator = make_estimator(kind).fit(job.X, job.y)
            probs = positive_proba(estimator, d.feat[rows]) if rows.size else rows * 0.0
        return estimator, rows, probs

    def due(self, g: int) -> bool:
        return bool(self._queue) and self._queue[0][0] == g

    def update(self, g: int) -> None:
        """Swap in the model refit at this step (waiting for its fit if needed)."""
        _, future = self._queue.popleft()
        self.estimator, rows, probs = future.result()
        self.prob[rows] = probs
        self.trainings += 1
        self._submit()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def predictor(self, rows: "np.ndarray") -> Callable:
        """The pipeline's predict(X, keys): the batched probability of each exact feature row."""
        import numpy as np

        from ml_model import positive_proba

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

        return predict


# --------------------------------------------------------------------------- the replay

class _Replay:
    def __init__(self, data: _Data, params: "StrategyParams", risk: "RiskManager",
                 settings: BacktestSettings, model: _WalkForward | None,
                 round_order: Callable | None):
        import numpy as np

        from market_scanner import MIN_CANDLES
        from ml_model import HISTORY_NEEDED

        self.d, self.params, self.risk, self.settings, self.model = data, params, risk, settings, model
        self.index = {s: p for p, s in enumerate(data.symbols)}
        self.round_order = round_order or self._round_order
        self.min_local = MIN_CANDLES - 1
        self.k_off = np.arange(-HISTORY_NEEDED, 1)
        self.cash = float(settings.starting_balance)
        self.positions: dict[str, Position] = {}
        self.pending: list[tuple[EntryIntent, int]] = []
        self.trades: list[Trade] = []
        self.events: list[tuple] = []
        self.fees = 0.0
        self.last_close = np.full(len(data.symbols), np.nan)
        self.extra: dict[str, tuple[str, float | None]] = {}   # symbol -> (entry reason, prob)

    def _round_order(self, symbol: str, side: str, amount: float, price: float):
        return self.d.specs[self.index[symbol]].round_order(symbol, side, amount, price)

    # -- fills
    def _fill(self, p: int, prev_row: int, side: str, amount: float, price: float,
              check: bool = True) -> tuple[float, float, float]:
        """(amount, average price, fee) of a market order at `price` on pair p's book."""
        from exchange import OrderRejected, walk_book

        symbol, spec = self.d.symbols[p], self.d.specs[p]
        if check:
            amount, _ = self.round_order(symbol, side, amount, price)
        avg = price
        if self.settings.slippage:
            from sim_exchange import synthetic_order_book

            bids, asks = synthetic_order_book(price, float(self.d.book_vol[prev_row]),
                                              float(self.d.book_qv[prev_row]), spec.tick,
                                              spec.step, BOOK_LEVELS)
            avg, filled = walk_book(asks if side == "buy" else bids, amount)
            if filled < amount:
                if check:
                    raise OrderRejected(f"{symbol}: order book too thin: {filled:.10g} of "
                                        f"{amount:.10g} within {BOOK_LEVELS} levels")
                avg = avg if math.isfinite(avg) else price
        return amount, avg, amount * avg * self.settings.fee_rate

    def fill_entries(self, col: "np.ndarray", t: int) -> None:
        from exchange import OrderRejected
        from strategy import Position

        pending, self.pending = self.pending, []
        for intent, decided_ms in pending:
            p = self.index[intent.symbol]
            r = int(col[p])
            if r < 0 or decided_ms != t:
                self.events.append(("entry_dropped", t, intent.symbol, "no candle after the decision"))
                continue
            try:
                amount, price, fee = self._fill(p, r - 1, "buy", intent.amount, float(self.d.o[r]))
                if self.cash < amount * price + fee:
                    raise OrderRejected(f"{intent.symbol}: insufficient cash: need "
                                        f"{amount * price + fee:.2f}, have {self.cash:.2f}")
            except OrderRejected as exc:
                self.events.append(("entry_rejected", t, intent.symbol, str(exc)))
                continue
            self.cash -= amount * price + fee
            self.fees += fee
            # As live: the stops keep the intent's distances from the actual fill price.
            self.positions[intent.symbol] = Position(
                intent.symbol, amount, price, t, price - (intent.price - intent.stop_loss),
                price + (intent.take_profit - intent.price), fee, self.risk.group_of(intent.symbol),
                intent.features)
            self.extra[intent.symbol] = (intent.reason, intent.probability)
            self.events.append(("fill_buy", t, intent.symbol, amount, price, fee))

    def check_exits(self, col: "np.ndarray", close_ms: int) -> None:
        from exchange import OrderRejected
        from strategy import Bar, check_exits

        d = self.d
        bars = {}
        for s in self.positions:
            r = int(col[self.index[s]])
            if r >= 0:
                bars[s] = Bar(float(d.o[r]), float(d.h[r]), float(d.l[r]), float(d.c[r]))
        for intent in check_exits(self.positions, bars, close_ms, self.params):
            self.events.append(("exit", close_ms, intent.symbol, intent.price, intent.reason))
            try:
                self.close(intent.symbol, int(col[self.index[intent.symbol]]), intent.price,
                           intent.reason, close_ms)
            except OrderRejected as exc:   # as live: retried on the next candle
                self.events.append(("exit_rejected", close_ms, intent.symbol, str(exc)))

    def close(self, symbol: str, row: int, price: float, reason: str, close_ms: int,
              check: bool = True) -> None:
        pos = self.positions[symbol]
        p = self.index[symbol]
        amount, avg, fee = self._fill(p, max(row - 1, int(self.d.first[p])), "sell", pos.amount,
                                      price, check)
        del self.positions[symbol]
        self.cash += amount * avg - fee
        self.fees += fee
        cost = amount * pos.entry_price
        profit = amount * avg - cost - pos.entry_fee - fee
        entry_reason, prob = self.extra.pop(symbol, ("rule", None))
        self.trades.append(Trade(symbol, amount, pos.entry_price, avg, pos.entry_time_ms,
                                 close_ms, pos.entry_fee, fee, profit,
                                 100.0 * profit / (cost + pos.entry_fee), reason, entry_reason,
                                 prob))
        self.events.append(("fill_sell", close_ms, symbol, amount, avg, fee, reason))

    def close_all(self, reason: str, close_ms: int, only: Sequence[str] | None = None) -> None:
        """Close positions at the last known close (end of data / of the backtest)."""
        for s in list(only if only is not None else self.positions):
            p = self.index[s]
            row = self._last_row(p)
            self.events.append(("exit", close_ms, s, float(self.last_close[p]), reason))
            self.close(s, row, float(self.last_close[p]), reason, close_ms, check=False)

    def _last_row(self, p: int) -> int:
        """The pair's latest row seen so far (its close is last_close[p])."""
        import numpy as np

        rows = self.d.at[p, : self.g + 1]
        return int(rows[np.flatnonzero(rows >= 0)[-1]])

    def equity(self) -> float:
        return self.cash + sum(pos.amount * float(self.last_close[self.index[s]])
                               for s, pos in self.positions.items())

    # -- decisions
    def decide(self, col: "np.ndarray", here: "np.ndarray", close_ms: int, equity: float) -> None:
        from strategy import MarketView, decide_entries

        d = self.d
        rows_here = col[here]
        ok = d.local[rows_here] >= self.min_local
        pairs, rows = here[ok], rows_here[ok]
        model = self.model if self.model is not None and self.model.estimator is not None else None
        if self.settings.skip_idle_steps and not self._may_have_candidate(pairs, rows, model):
            self.risk.observe_equity(equity)   # all that decide_entries would have done
            return
        if not rows.size:
            self.risk.observe_equity(equity)
            return
        view = MarketView(tuple(d.symbols[p] for p in pairs.tolist()),
                          {k: v[rows] for k, v in d.ind.items()},
                          d.c[rows[:, None] + self.k_off], close_ms)
        predict = model.predictor(rows) if model is not None else None
        decisions = decide_entries(view, self.positions, self.cash, equity, self.params,
                                   self.risk, self.round_order, predict)
        for e in decisions.entries:
            self.pending.append((e, close_ms))
            self.events.append(("entry", close_ms, e.symbol, e.price, e.amount, e.stop_loss,
                                e.take_profit, e.reason))

    def _may_have_candidate(self, pairs: "np.ndarray", rows: "np.ndarray",
                            model: _WalkForward | None) -> bool:
        """False only when decide_entries would return no entry: every position slot is
        taken, or no pair that is not held passes the rule (elementwise, so scored for all
        rows at once) or the model's threshold (the batched predictions of the same feature
        rows; the skip-equivalence test checks both against the unskipped pipeline)."""
        import numpy as np

        if not rows.size or len(self.positions) >= self.risk.max_open_positions:
            return False
        if model is None:
            ok = self.d.rule_ok[rows]
        else:
            prob = model.prob[rows]
            unknown = np.isnan(prob) & self.d.usable[rows]   # not expected; then ask the model
            ok = (prob >= self.params.min_confidence) | unknown
        if self.positions:
            ok = ok & np.array([self.d.symbols[p] not in self.positions for p in pairs.tolist()])
        return bool(ok.any())

    # -- the loop
    def run(self, g0: int, progress: Callable[[int], None] | None) -> tuple[list, list, list, bool]:
        import numpy as np

        d = self.d
        tf = d.tf_ms
        equity, exposed, times = [], [], []
        interrupted = False
        reported = g0
        self.g = g0
        try:
            for g in range(g0, len(d.grid)):
                self.g = g
                t = int(d.grid[g])
                close_ms = t + tf
                col = d.at[:, g]
                here = np.flatnonzero(col >= 0)
                if self.pending:
                    self.fill_entries(col, t)
                held = bool(self.positions)
                if self.positions:
                    self.check_exits(col, close_ms)
                self.last_close[here] = d.c[col[here]]
                ending = [d.symbols[p] for p in here.tolist()
                          if col[p] == d.last[p] and d.symbols[p] in self.positions]
                if ending and g < len(d.grid) - 1:
                    self.close_all("end_of_data", close_ms, ending)
                if self.model is not None and self.model.due(g):
                    self.model.update(g)
                eq = self.equity()
                times.append(t)
                equity.append(eq)
                exposed.append(held)
                if g < len(d.grid) - 1:
                    self.decide(col, here, close_ms, eq)
                if progress is not None and g + 1 - reported >= PROGRESS_EVERY:
                    progress(g + 1 - reported)
                    reported = g + 1
            if progress is not None and reported < len(d.grid):
                progress(len(d.grid) - reported)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: reporting the replay up to here")
        if times:
            self.close_all("end_of_backtest", times[-1] + tf)
            equity[-1] = self.cash
        self.pending = []
        return times, equity, exposed, interrupted


# --------------------------------------------------------------------------- entry point

def run_backtest(candles: Mapping[str, "np.ndarray"], config: Any = None, use_model: bool = True,
                 *, params: "StrategyParams | None" = None, risk: "RiskManager | None" = None,
                 settings: BacktestSettings | None = None, round_order: Callable | None = None,
                 progress: Callable[[int], None] | None = None) -> BacktestResult:
    """Replay `candles` (symbol -> (T, 6) [ts_ms, o, h, l, c, v], closed, validated) and
    return the trades, equity curve and buy-and-hold benchmark.

    `config` (a config.Config) supplies StrategyParams, the RiskManager and the starting
    balance; `params`, `risk` and `settings` override it (tests pass them without config).
    `round_order` replaces the per-pair MarketSpec rounding. `progress(n)` gets steps done.
    """
    import numpy as np

    from risk_manager import RiskManager
    from strategy import StrategyParams

    if params is None:
        params = StrategyParams.from_config(config)
    if settings is None:
        settings = BacktestSettings.from_config(config) if config is not None else BacktestSettings()
    if risk is None:
        risk = RiskManager.from_config(config, fee_rate=settings.fee_rate)
    candles = {s: _until(a, settings.end_ms) for s, a in candles.items()}
    candles = {s: a for s, a in candles.items() if len(a)}
    if not candles:
        raise ValueError("no candles to replay (before the end date)")
    data = _prepare(candles, params, settings)
    g0 = 0 if settings.start_ms is None else int(np.searchsorted(data.grid, settings.start_ms))
    if g0 >= len(data.grid):
        raise ValueError("no candles at or after the start date")
    model = _WalkForward(data, params, settings, g0) if use_model else None
    replay = _Replay(data, params, risk, settings, model, round_order)
    try:
        times, equity, exposed, interrupted = replay.run(g0, progress)
    finally:
        if model is not None:
            model.close()
    times_a = np.asarray(times, dtype=np.int64)
    return BacktestResult(
        symbols=data.symbols, quote=quote_of(data.symbols[0]), timeframe_ms=data.tf_ms,
        starting_balance=settings.starting_balance, times_ms=times_a,
        equity=np.asarray(equity, dtype=np.float64),
        buy_hold=_buy_and_hold(data, g0, len(times), settings),
        exposed=np.asarray(exposed, dtype=bool), trades=replay.trades, events=replay.events,
        pair_info=_pair_info(data, g0, len(times), settings), used_model=use_model,
        trainings=model.trainings if model else 0, model_misses=model.misses if model else 0,
        interrupted=interrupted, fees=replay.fees)


def _until(a: "np.ndarray", end_ms: int | None) -> "np.ndarray":
    import numpy as np

    a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
    return a if end_ms is None else a[a[:, 0] < end_ms]


def _pair_window(data: _Data, p: int, g0: int, steps: int) -> tuple[int, int] | None:
    """First and last row of pair p inside the replayed steps."""
    rows = data.at[p, g0:g0 + steps]
    rows = rows[rows >= 0]
    return (int(rows[0]), int(rows[-1])) if rows.size else None


def _buy_and_hold(data: _Data, g0: int, steps: int, settings: BacktestSettings) -> "np.ndarray":
    """Equity of an equal split of the balance over the pairs, each share bought at the pair's
    first open in the window and sold at its last close (one taker fee each way)."""
    import numpy as np

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
    from candle_files import gaps

    out = {}
    for p, s in enumerate(data.symbols):
        window = _pair_window(data, p, g0, steps)
        if window is None:
            out[s] = {"candles": 0}
            continue
        r0, r1 = window
        arr = data.ts[r0:r1 + 1, None]
        holes = gaps(arr, data.tf_ms)
        fee = settings.fee_rate
        out[s] = {"candles": r1 - r0 + 1, "first_ms": int(data.ts[r0]),
                  "last_ms": int(data.ts[r1]) + data.tf_ms,
                  "missing_candles": int(sum(n for _, n in holes)), "gaps": len(holes),
                  "buy_hold_pct": 100.0 * (data.c[r1] / data.o[r0] * (1 - fee) ** 2 - 1)}
    return out


# --------------------------------------------------------------------------- metrics and report

def compute_metrics(result: BacktestResult) -> dict[str, Any]:
    """Summary figures; Sharpe/Sortino from per-candle equity returns (risk-free 0),
    annualised by sqrt(candles per 365-day year); Sortino's downside deviation is the root
    mean square of the negative returns over all candles."""
    import numpy as np

    eq = result.equity
    start = result.starting_balance
    trades = result.trades
    profits = np.array([t.profit for t in trades])
    returns = np.diff(np.concatenate([[start], eq])) / np.concatenate([[start], eq[:-1]]) \
        if len(eq) else np.empty(0)
    per_year = YEAR_MS / result.timeframe_ms
    sd = returns.std(ddof=1) if returns.size > 1 else 0.0
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2))) if returns.size else 0.0
    peak = np.maximum.accumulate(np.concatenate([[start], eq]))
    drawdown = 1.0 - np.concatenate([[start], eq]) / peak
    gross_win = float(profits[profits > 0].sum()) if trades else 0.0
    gross_loss = float(-profits[profits < 0].sum()) if trades else 0.0
    first = int(result.times_ms[0]) if len(result.times_ms) else None
    last = int(result.times_ms[-1]) + result.timeframe_ms if len(result.times_ms) else None
    return {
        "start_ms": first, "end_ms": last,
        "days": (last - first) / DAY_MS if first is not None else 0.0,
        "steps": int(len(eq)), "pairs": len(result.symbols), "quote": result.quote,
        "starting_balance": start, "final_equity": result.final_equity,
        "trades": len(trades),
        "win_rate_pct": 100.0 * float((profits > 0).mean()) if trades else None,
        "total_return_pct": 100.0 * (result.final_equity / start - 1.0),
        "buy_hold_return_pct": 100.0 * (float(result.buy_hold[-1]) / start - 1.0)
        if len(result.buy_hold) else 0.0,
        "max_drawdown_pct": 100.0 * float(drawdown.max()),
        "sharpe": float(returns.mean() / sd * math.sqrt(per_year)) if sd > 0 else None,
        "sortino": float(returns.mean() / downside * math.sqrt(per_year)) if downside > 0 else None,
        "profit_factor": (gross_win / gross_loss if gross_loss > 0 else
                          (math.inf if gross_win > 0 else None)),
        "avg_trade_profit": float(profits.mean()) if trades else None,
        "avg_trade_return_pct": float(np.mean([t.return_pct for t in trades])) if trades else None,
        "exposure_pct": 100.0 * float(result.exposed.mean()) if len(result.exposed) else 0.0,
        "fees_paid": result.fees,
        "model": ("walk-forward" if result.used_model else "rule only"),
        "model_trainings": result.trainings, "interrupted": result.interrupted,
        "exit_reasons": {r: sum(t.exit_reason == r for t in trades)
                         for r in sorted({t.exit_reason for t in trades})},
        **_refusals(result.events),
    }


def _refusals(events: list[tuple]) -> dict[str, Any]:
    """How many entries were decided, refused at the fill, dropped, and the usual reason."""
    from collections import Counter

    kinds = Counter(e[0] for e in events)
    reasons = Counter(_reason_kind(e[3]) for e in events
                      if e[0] in ("entry_rejected", "exit_rejected"))
    return {"entries_decided": kinds["entry"], "entries_rejected": kinds["entry_rejected"],
            "entries_dropped": kinds["entry_dropped"], "exits_rejected": kinds["exit_rejected"],
            "main_rejection": reasons.most_common(1)[0][0] if reasons else None}


def _reason_kind(message: str) -> str:
    """'ETH/BTC: order book too thin: 7865 of 116863 ...' -> 'order book too thin'."""
    return message.split(": ", 2)[1] if message.count(": ") >= 1 else message


def pair_table(result: BacktestResult) -> list[dict[str, Any]]:
    rows = []
    for s in result.symbols:
        ts = [t for t in result.trades if t.symbol == s]
        info = result.pair_info.get(s, {})
        rows.append({"pair": s, "candles": info.get("candles", 0),
                     "missing_candles": info.get("missing_candles", 0), "trades": len(ts),
                     "win_rate_pct": 100.0 * sum(t.profit > 0 for t in ts) / len(ts) if ts else None,
                     "profit": sum(t.profit for t in ts),
                     "avg_return_pct": sum(t.return_pct for t in ts) / len(ts) if ts else None,
                     "fees": sum(t.entry_fee + t.exit_fee for t in ts),
                     "buy_hold_pct": info.get("buy_hold_pct")})
    return rows


def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return fmt.format(x)


def format_report(result: BacktestResult, metrics: dict[str, Any] | None = None) -> str:
    """The terminal report: summary, then the per-pair table."""
    m = metrics or compute_metrics(result)
    q = m["quote"]
    tf_min = result.timeframe_ms // 60_000
    model = (f"walk-forward model ({m['model_trainings']} fits)" if result.used_model
             else "fallback rule only (--no-model)")
    lines = [
        f"Backtest {_utc(m['start_ms'])} .. {_utc(m['end_ms'])} UTC ({m['days']:.1f} days, "
        f"{m['steps']:,} steps of {tf_min}m, {m['pairs']} pairs), {model}"
        + ("  [INTERRUPTED: partial]" if m["interrupted"] else ""),
        f"  balance          {m['starting_balance']:,.2f} -> {m['final_equity']:,.2f} {q}",
        f"  trades           {m['trades']} (win rate {_num(m['win_rate_pct'], '{:.1f}%')}"
        + "".join(f"{'; ' if i == 0 else ', '}{k} {v}"
                  for i, (k, v) in enumerate(m["exit_reasons"].items())) + ")",
        f"  total return     {m['total_return_pct']:+.2f}%   buy & hold (equal weight, same "
        f"pairs and period) {m['buy_hold_return_pct']:+.2f}%",
        f"  max drawdown     {m['max_drawdown_pct']:.2f}%",
        f"  Sharpe / Sortino {_num(m['sharpe'])} / {_num(m['sortino'])}  (per-candle returns, "
        f"annualised x sqrt({YEAR_MS // result.timeframe_ms:,} candles/yr), risk-free 0)",
        f"  profit factor    {_num(m['profit_factor'])}",
        f"  average trade    {_num(m['avg_trade_profit'], '{:+.4f}')} {q} "
        f"({_num(m['avg_trade_return_pct'], '{:+.3f}%')})",
        f"  exposure         {m['exposure_pct']:.1f}% of steps with a position open",
        f"  fees paid        {m['fees_paid']:,.4f} {q}",
        f"  entries          {m['entries_decided']} decided, {m['entries_rejected']} refused at "
        f"the fill" + (f" (mostly: {m['main_rejection']})" if m["main_rejection"] else "")
        + f", {m['entries_dropped']} dropped (no next candle)",
        "",
        f"  {'pair':<12} {'candles':>7} {'missing':>7} {'trades':>6} {'win%':>6} "
        f"{'profit':>12} {'avg%':>7} {'fees':>10} {'B&H%':>8}",
    ]
    for r in pair_table(result):
        lines.append(f"  {r['pair']:<12} {r['candles']:>7} {r['missing_candles']:>7} "
                     f"{r['trades']:>6} {_num(r['win_rate_pct'], '{:.1f}'):>6} "
                     f"{r['profit']:>+12.4f} {_num(r['avg_return_pct'], '{:+.3f}'):>7} "
                     f"{r['fees']:>10.4f} {_num(r['buy_hold_pct'], '{:+.2f}'):>8}")
    return "\n".join(lines)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def report_dict(result: BacktestResult, max_points: int = 2000) -> dict[str, Any]:
    """report.json: summary, per-pair table, every trade, the (thinned) equity curve."""
    import numpy as np

    stride = max(1, math.ceil(len(result.equity) / max_points))
    keep = np.unique(np.append(np.arange(0, len(result.equity), stride), len(result.equity) - 1)) \
        if len(result.equity) else np.empty(0, int)
    return _json_safe({
        "summary": compute_metrics(result),
        "conventions": {
            "sharpe_sortino": "mean per-candle equity return / std (Sortino: root mean square "
                              "of negative returns), times sqrt(candles per 365-day year); "
                              "risk-free rate 0",
            "buy_hold": "equal split of the starting balance over the pairs, each bought at "
                        "its first open in the period and sold at its last close, taker fee "
                        "both ways",
            "times": "ms since the epoch, UTC; entry = open of the fill candle, exit = close "
                     "of the candle in which the exit happened",
        },
        "pairs": pair_table(result),
        "trades": [asdict(t) for t in result.trades],
        "equity_curve": {"time_ms": (result.times_ms[keep] + result.timeframe_ms).tolist(),
                         "equity": result.equity[keep].tolist(),
                         "buy_hold": result.buy_hold[keep].tolist()},
    })


def plot_equity(result: BacktestResult, path: str | Path) -> Path:
    """PNG of the equity curve against buy-and-hold, drawdown from the peak shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    times = [datetime.fromtimestamp((t + result.timeframe_ms) / 1000, tz=timezone.utc)
             for t in result.times_ms.tolist()]
    eq, bh = result.equity, result.buy_hold
    peak = np.maximum.accumulate(np.maximum(eq, result.starting_balance))
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=100)
    try:
        ax.plot(times, bh, color="#999999", lw=1.2, label="buy & hold (equal weight)")
        ax.plot(times, eq, color="#1f5fa8", lw=1.4, label="strategy equity")
        ax.fill_between(times, eq, peak, where=eq < peak, color="#d62728", alpha=0.25,
                        lw=0, label="drawdown")
        ax.set_ylabel(f"equity ({result.quote})")
        ax.set_title(f"Backtest {', '.join(result.symbols)}"
                     + (" (interrupted)" if result.interrupted else ""))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)


def write_report(result: BacktestResult, report_dir: str | Path) -> tuple[Path, Path]:
    """report.json and equity.png in report_dir (created); returns their paths."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report_dict(result), indent=1))
    tmp.replace(path)
    return path, plot_equity(result, report_dir / "equity.png")


# --------------------------------------------------------------------------- CLI

def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _date_ms(text: str | None, option: str) -> int | None:
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        _fail(f"{option} {text!r} is not a date like 2024-01-31 (YYYY-MM-DD, UTC)")
    return int(day.timestamp() * 1000)


def _load(config: Any, data_dir: Path, timeframe: str, pairs: list[str], simulated: bool,
          sim_pairs: int, sim_days: float) -> dict:
    from candle_files import CandleFileError, load_candles, timeframe_to_ms

    if simulated:
        from sim_exchange import simulated_ohlcv

        candles = int(sim_days * DAY_MS // timeframe_to_ms(timeframe))
        try:
            out = simulated_ohlcv(sim_pairs, config.sim_seed, timeframe, candles,
                                  quote=config.quote_currency)
        except ValueError as exc:
            _fail(f"--simulated: {exc}")
        if pairs:
            unknown = [p for p in pairs if p not in out]
            if unknown:
                _fail(f"--pairs: {', '.join(unknown)} not among the simulated pairs "
                      f"({', '.join(out)})")
            out = {p: out[p] for p in pairs}
        return out
    try:
        return load_candles(data_dir, timeframe, pairs or None)
    except CandleFileError as exc:
        _fail(str(exc))


@click.command("backtest")
@click.option("--data-dir", default="user_data/data", show_default=True,
              type=click.Path(path_type=Path), help="Folder with the candle files.")
@click.option("--timeframe", default="5m", show_default=True)
@click.option("--pairs", help="Comma-separated pairs (default: every file of the timeframe).")
@click.option("--start", help="First day to trade, YYYY-MM-DD UTC (earlier candles warm up).")
@click.option("--end", help="Stop before this day, YYYY-MM-DD UTC (exclusive).")
@click.option("--report-dir", default="user_data/backtest", show_default=True,
              type=click.Path(path_type=Path, file_okay=False))
@click.option("--simulated", is_flag=True, help="Use the simulated market's candles instead.")
@click.option("--sim-pairs", default=10, show_default=True, type=click.IntRange(1, 200),
              help="With --simulated: how many pairs.")
@click.option("--sim-days", default=14.0, show_default=True,
              type=click.FloatRange(min=1), help="With --simulated: how many days.")
@click.option("--no-model", is_flag=True, help="Fallback rule only: no walk-forward model.")
@click.option("--starting-balance", type=click.FloatRange(min=0, min_open=True),
              help="Quote balance to start with (default: STARTING_BALANCE).")
@click.pass_context
def backtest_command(ctx: click.Context, data_dir: Path, timeframe: str, pairs: str | None,
                     start: str | None, end: str | None, report_dir: Path, simulated: bool,
                     sim_pairs: int, sim_days: float, no_model: bool,
                     starting_balance: float | None) -> None:
    """Replay candle files through the live strategy, risk rules and model; write a report."""
    from dataclasses import replace

    from candle_files import setup_cli_logging, timeframe_to_ms
    from config import ConfigError, load_config

    try:
        config = load_config((ctx.obj or {}).get("env_file", ".env"))
    except ConfigError as exc:
        _fail(str(exc))
    setup_cli_logging(config.log_level)
    try:
        tf_ms = timeframe_to_ms(timeframe)
    except ValueError as exc:
        _fail(f"--timeframe: {exc}")
    start_ms, end_ms = _date_ms(start, "--start"), _date_ms(end, "--end")
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        _fail(f"--start {start} is not before --end {end}")
    if report_dir.exists() and not report_dir.is_dir():
        _fail(f"--report-dir {report_dir} is a file; pass a directory")
    symbols = [p.strip().upper() for p in (pairs or "").split(",") if p.strip()]
    candles = _load(config, data_dir, timeframe, symbols, simulated, sim_pairs, sim_days)
    quotes = {quote_of(s) for s in candles}
    if len(quotes) > 1:
        _fail(f"the pairs are quoted in different currencies ({', '.join(sorted(quotes))}); "
              f"one backtest holds one cash balance: pick pairs of one quote with --pairs")
    from strategy import StrategyParams

    params = replace(StrategyParams.from_config(config), timeframe_ms=tf_ms)
    settings = BacktestSettings.from_config(config, start_ms=start_ms, end_ms=end_ms)
    if starting_balance is not None:
        settings = replace(settings, starting_balance=starting_balance)
    use_model = not no_model and config.ml_enabled
    try:
        result = _run_with_bar(candles, config, use_model, params, settings)
    except ValueError as exc:
        _fail(str(exc))
    click.echo(format_report(result))
    try:
        json_path, png_path = write_report(result, report_dir)
    except OSError as exc:
        _fail(f"--report-dir {report_dir}: cannot write the report ({exc.strerror or exc})")
    click.echo(f"\nreport: {json_path}\nchart:  {png_path}")


def _run_with_bar(candles: dict, config: Any, use_model: bool, params: "StrategyParams",
                  settings: BacktestSettings) -> BacktestResult:
    import numpy as np

    steps = len(np.unique(np.concatenate([a[:, 0] for a in candles.values()])))
    with click.progressbar(length=steps, label="replaying", file=sys.stderr) as bar:
        return run_backtest(candles, config, use_model, params=params, settings=settings,
                            progress=bar.update)


__all__ = ["BacktestResult", "BacktestSettings", "MarketSpec", "Trade", "backtest_command",
           "compute_metrics", "format_report", "pair_table", "plot_equity", "report_dict",
           "run_backtest", "write_report"]

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
  arrays (indicators, features, signals, labels, the refit schedule). The loop then fast-forwards over the steps where provably nothing happens
  (`replay.Replay._skip_to`): no order pending or resting, no held position exiting (each one's
  path of stops and its exit bar come from `exits.path`, all bars at once), no held pair
  ending, no refit due and no pair that could be entered with a signal (or a model
  prediction) passing. It runs `step`, as the per-step reference (`skip_idle_steps=False`)
  does at every step, only at the others; the results are identical (tests compare them).

Ctrl-C (KeyboardInterrupt) stops the replay and returns the partial result. The report
(metrics, terminal text, report.json, the chart) is `backtest_report`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

import strategies
from candle_files import gaps, timeframe_to_ms
from domain import StrategyParams, Trade
from edge import EdgeSettings
from features import close_windows, prepare_features
from market_rules import TAKER_FEE, MarketRules, quote_of
from protections import ProtectionSettings
from replay import DAY_MS, Replay, book_inputs
from risk_manager import RiskManager
from strategies import Strategy, TrendMomentum, frame, signals
from walk_forward import WalkForward

log = logging.getLogger(__name__)

# The indicator columns the replay's decision step reads: the ATR (stops) and the model's
# prediction-cache keys (strategy.model_keys). The strategy's score and exit signal are
# computed once over all candles, so its own columns are not kept.
KEPT_COLUMNS = ("atr", "rsi", "macd_hist", "momentum", "volume_ratio")

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
    fit_workers: int = 0                  # threads fitting models ahead (0: in the replay's)
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
    ind: dict                         # KEPT_COLUMNS name -> (N,)
    feat: np.ndarray                 # (N, F) float32 model features
    usable: np.ndarray               # (N,) the pipeline could score this row
    signal_ok: np.ndarray            # (N,) usable, and the strategy would enter here
    exit_signal: np.ndarray          # (N,) the strategy would sell a position here
    book_vol: np.ndarray             # (N,) 1-minute volatility through this candle
    book_qv: np.ndarray              # (N,) 24 h quote volume through this candle
    rules: list[MarketRules]         # (P,) each pair's market
    score: np.ndarray                # (N,) the strategy's entry score (NaN: no entry)


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
    # Filled pair by pair, and of the strategy's columns only what the decision step reads
    # again (the ATR and the prediction cache's keys): scores and signals are computed here.
    ind = {k: np.empty(n) for k in KEPT_COLUMNS}
    score, exit_signal = np.empty(n), np.empty(n, dtype=bool)
    feat = vol = qv = None
    markets = []
    market = strategies.market_index(dict(zip(symbols, arrays))) if strategy.market_period else None
    for p, (s, a) in enumerate(zip(symbols, arrays)):
        rows = slice(int(first[p]), int(last[p]) + 1)
        pi = frame(a, strategy, market)
        for k in KEPT_COLUMNS:
            ind[k][rows] = pi[k]
        # a strategy is elementwise: scored over every candle at once (used to skip steps)
        score[rows], exit_signal[rows] = signals(strategy, pi)
        f = prepare_features(pi, close_windows(a[:, 4]))
        if feat is None:
            feat = np.empty((n, f.shape[1]), f.dtype)
            vol, qv = np.empty(n), np.empty(n)
        feat[rows] = f
        vol[rows], qv[rows] = book_inputs(a, tf)
        del pi, f
        markets.append((rules or {}).get(s) or
                       MarketRules.for_price(s, float(a[0, 4]), fee=settings.fee_rate))
    usable = np.isfinite(feat).all(axis=1) & np.isfinite(ind["atr"])
    local = np.concatenate([np.arange(length) for length in lengths])
    return _Data(symbols, tf, grid, at, first, last, local, allc[:, 0].astype(np.int64),
                 allc[:, 1], allc[:, 2], allc[:, 3], allc[:, 4], allc[:, 5], ind, feat, usable,
                 usable & np.isfinite(score), exit_signal, vol, qv, markets, score)


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
    model = WalkForward(data, params, settings, g0) if use_model else None
    replay = Replay(data, strategy, params, risk, settings, model, protections, edge)
    try:
        interrupted = replay.run(g0, progress)
    finally:
        if model is not None:
            model.close()
    steps = len(replay.times)
    return BacktestResult(
        symbols=data.symbols, quote=quote_of(data.symbols[0]), timeframe_ms=data.tf_ms,
        starting_balance=settings.starting_balance,
        times_ms=replay.times.astype(np.int64),
        equity=replay.curve.copy(),
        buy_hold=_buy_and_hold(data, g0, steps, settings),
        exposed=replay.exposed.copy(), trades=replay.trades,
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


__all__ = ["BacktestResult", "BacktestSettings", "run_backtest", "step_count"]

"""`python bot.py hyperopt`: parameter optimisation that reports out-of-sample figures only.

Search space. The strategy's declared `Param`s (an int default: whole numbers, a float one:
numbers on a lattice of about a hundredth of its range) and the groups `--spaces` adds from
`SETTINGS`, the one table of optimisable settings, each naming the .env variable it maps to:
`exits` (stop, target, time limit, trailing stop), `model` (the model's probability floor),
`protections` (cooldown, stop-loss guard).

Folds, purge and embargo. The period (`--start`..`--end`; without `--start`, from the first
candle plus the strategy's warm-up) is cut into K (`--folds`) consecutive folds of equal
time, their boundaries on the candle grid. Every trial backtests each fold k separately with
`backtest.run_backtest`: all candles before the fold's start are its warm-up (indicators, the
walk-forward model's history); it trades only in [start_k + embargo, end_k), through
BacktestSettings(start_ms, end_ms), on a fresh account. Candles at or after end_k are not
even handed to the replay and every position still open is closed at the last close before
end_k (the purge): no trade of fold k has an outcome that uses a candle of fold k+1. The
embargo (`--embargo` candles; by default the label horizon MAX_HOLD_CANDLES, at most a tenth
of a fold) is skipped after each boundary, so a fold's first trades do not ride the move
that ended the fold before it.

Objective. Per fold a score (`--objective`): the per-period Sharpe ratio of the fold's daily
equity returns (`sharpe`, 0 without a trade), its return in % (`return`), or its return over
its maximum drawdown, the drawdown floored at 1 % (`calmar`). Optuna sees only the mean score
over the selection folds 0..K-2; fold K-1 is a holdout the sampler never sees. Each trial
keeps its per-fold figures and daily returns as user attributes, so the report
(`hyperopt_report`) is rebuilt from the SQLite file alone: walk-forward selection (for each
fold k >= 1, the trial best on the folds before k, scored on fold k), the chosen trial (best
on the selection folds) on the holdout, the deflated Sharpe ratio and the probability of
backtest overfitting.

Execution. Ask-and-tell, pipelined: up to `--jobs` trials are in flight, each split into
tasks of folds (locally one task per fold; on a cluster two per trial, a task costing its
scheduler a few ms); a trial is told the moment its folds are in and the next is asked and
submitted at once, so the workers never wait for the main process to tell, write SQLite and
ask. jobs=1 evaluates in-process, one trial at a time (asked, evaluated, told); more run on
local processes (loky's reusable executor, the candles pickled once to a file each worker
loads once); `--scheduler tcp://HOST:8786` (or DASK_SCHEDULER_ADDRESS) runs them on a Dask
cluster, the candles scattered to every worker once. The same function evaluates a fold
everywhere. jobs=1 gives one study per seed; with more, TPE's draws depend on which trials
finished first (a random sampler's and the grid's do not: they follow the order of the asks,
so the grid runs in full, in the same order, on every executor, and has the same best
trial). The progress label is computed from the completed trials kept in memory. `sweep`
runs any function over items the same way.

Study. Optuna's RDB storage in an SQLite file; the study name defaults to one derived from
everything that decides a trial's figures (strategy, candles, period, folds, embargo,
objective, space, settings), and a study made with another setup is refused. A study left by
a killed run is resumed: its finished trials stay, trials it left running are marked failed
and their parameters asked again first. The file is in WAL mode with synchronous=NORMAL: a
commit is not an fsync, a killed process loses nothing it committed, a power cut at most the
last commits.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import pickle
import sqlite3
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

import strategies
from backtest import DAY_MS, BacktestResult, BacktestSettings, run_backtest
from backtest_job import BacktestJob
from domain import StrategyParams
from edge import EdgeSettings
from market_scanner import MIN_CANDLES
from overfitting import sharpe_ratio
from protections import ProtectionSettings
from risk_manager import RiskManager

SPACES = ("strategy", "exits", "model", "protections")
DEFAULT_SPACES = ("strategy", "exits")
OBJECTIVES = ("sharpe", "return", "calmar")
SAMPLERS = ("tpe", "random", "grid")
CALMAR_FLOOR_PCT = 1.0          # calmar: drawdowns below 1 % count as 1 %
MIN_FOLD_DAYS = 2               # a fold trades at least this long (two daily returns)
SCHEDULER_TIMEOUT_S = 10
IDLE_WORKER_TIMEOUT_S = 300    # local worker processes stay up this long between uses (joblib's)


# --------------------------------------------------------------------------- the search space

@dataclass(frozen=True)
class Dimension:
    """One optimised setting: its range and where its value goes. `target`: "strategy" (a
    declared parameter, in STRATEGY_PARAMS), "params" (StrategyParams), "protections"
    (ProtectionSettings) or "both" (the cooldown lives in both); `env`: its .env variable."""
    name: str
    space: str
    low: float
    high: float
    step: float | None            # None: whole numbers
    target: str
    env: str | None = None
    help: str = ""

    @property
    def integer(self) -> bool:
        return self.step is None

    def value(self, raw: float) -> float:
        """A sampled number as the setting takes it: an int, or a float on the step's digits."""
        if self.integer:
            return int(round(raw))
        return round(float(raw), max(0, -math.floor(math.log10(self.step))))

    def suggest(self, trial: optuna.Trial) -> float:
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return self.value(trial.suggest_float(self.name, self.low, self.high, step=self.step))

    def grid(self, points: int) -> list[float]:
        """`points` evenly spaced values from low to high (fewer for a narrow int range)."""
        values = [self.value(self.low + (self.high - self.low) * i / (points - 1))
                  for i in range(points)]
        return sorted(set(values))


SETTINGS: tuple[Dimension, ...] = (
    Dimension("stop_loss_atr", "exits", 1.0, 8.0, 0.1, "params", "STOP_LOSS_ATR",
              "stop this many ATRs below the entry"),
    Dimension("take_profit_atr", "exits", 0.0, 12.0, 0.1, "params", "TAKE_PROFIT_ATR",
              "target this many ATRs above the entry (0: none)"),
    Dimension("max_hold_candles", "exits", 6, 480, None, "params", "MAX_HOLD_CANDLES",
              "sell after this many candles"),
    Dimension("trailing_stop", "exits", 0.0, 0.2, 0.005, "params", "TRAILING_STOP",
              "trail the stop this far below the high (0: off)"),
    Dimension("min_confidence", "model", 0.5, 0.8, 0.01, "params", "ML_MIN_CONFIDENCE",
              "the model's probability floor for an entry"),
    Dimension("cooldown_candles", "protections", 0, 24, None, "both", "COOLDOWN_CANDLES",
              "candles a sold pair waits before a new entry"),
    Dimension("stoploss_guard_trades", "protections", 0, 5, None, "protections",
              "STOPLOSS_GUARD_TRADES", "stop exits in the lookback that lock entries (0: off)"),
)


def parameter_step(low: float, high: float) -> float | None:
    """A lattice for a float parameter: the power of ten nearest a hundredth of its range,
    when it divides the range (else None: continuous)."""
    if high <= low:
        return None
    step = 10.0 ** math.floor(math.log10((high - low) / 100))
    ratio = (high - low) / step
    return step if abs(ratio - round(ratio)) < 1e-9 else None


def search_space(strategy: strategies.Strategy, spaces: Sequence[str]) -> tuple[Dimension, ...]:
    """The dimensions of `spaces` for this strategy; ValueError naming --spaces on a clash
    or an empty space."""
    dims = []
    if "strategy" in spaces:
        for p in strategy.params:
            step = None if p.integer else parameter_step(p.low, p.high) or (p.high - p.low) / 100
            dims.append(Dimension(p.name, "strategy", p.low, p.high, step, "strategy", None, p.help))
    dims += [d for d in SETTINGS if d.space in spaces]
    names = [d.name for d in dims]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"--spaces: {strategy.name}'s parameter {clash[0]} has the name of a "
                         f"setting; leave out the space that holds it")
    if not dims:
        raise ValueError(f"--spaces {','.join(spaces)}: nothing to optimise ({strategy.name} "
                         f"declares no parameters); add exits or protections")
    return tuple(dims)


# --------------------------------------------------------------------------- folds

@dataclass(frozen=True)
class Fold:
    """A fold: candles before `start_ms` warm it up, it trades in [trade_ms, end_ms)."""
    index: int
    start_ms: int
    trade_ms: int
    end_ms: int


def period(candles: Mapping[str, np.ndarray], tf_ms: int, warmup: int,
           start_ms: int | None, end_ms: int | None) -> tuple[int, int]:
    """The optimised period: from --start (or the first candle plus `warmup` candles) to
    --end (or the close of the last candle)."""
    first = min(int(a[0, 0]) for a in candles.values())
    last = max(int(a[-1, 0]) for a in candles.values()) + tf_ms
    start = first + warmup * tf_ms if start_ms is None else max(start_ms, first)
    return start, last if end_ms is None else min(end_ms, last)


def make_folds(start_ms: int, end_ms: int, tf_ms: int, n_folds: int,
               embargo: int) -> tuple[Fold, ...]:
    """K consecutive folds of equal time on the candle grid, each trading after `embargo`
    candles. ValueError naming the option when a fold is too short."""
    span = (end_ms - start_ms) // tf_ms
    bounds = [start_ms + (span * k // n_folds) * tf_ms for k in range(n_folds + 1)]
    fold_candles = span // n_folds
    trading_days = (fold_candles - embargo) * tf_ms / DAY_MS
    if trading_days < MIN_FOLD_DAYS:
        raise ValueError(
            f"--folds {n_folds}: each fold has {fold_candles} candles ({fold_candles * tf_ms / DAY_MS:.1f} "
            f"days), {embargo} of them embargoed, leaving under {MIN_FOLD_DAYS} days to trade; "
            f"use fewer --folds, a shorter --embargo or a longer period")
    return tuple(Fold(k, bounds[k], bounds[k] + embargo * tf_ms, bounds[k + 1])
                 for k in range(n_folds))


# --------------------------------------------------------------------------- the setup

@dataclass(frozen=True)
class Setup:
    """Everything a trial's evaluation needs besides the candles (picklable, for workers)."""
    strategy_spec: str
    strategy_values: Mapping[str, float]
    timeframe: str
    params: StrategyParams
    protections: ProtectionSettings
    edge: EdgeSettings
    risk: Mapping[str, Any]             # RiskManager.settings()
    settings: BacktestSettings
    use_model: bool
    objective: str
    spaces: tuple[str, ...]
    dimensions: tuple[Dimension, ...]
    folds: tuple[Fold, ...]
    embargo: int
    symbols: tuple[str, ...]
    data_digest: str
    strategy_name: str = field(default="")

    def apply(self, values: Mapping[str, float]) -> tuple[strategies.Strategy, StrategyParams,
                                                           ProtectionSettings]:
        """The strategy, StrategyParams and ProtectionSettings of one trial's values."""
        by_target: dict[str, dict[str, float]] = {"strategy": {}, "params": {}, "protections": {}}
        for d in self.dimensions:
            targets = ("params", "protections") if d.target == "both" else (d.target,)
            for target in targets:
                by_target[target][d.name] = values[d.name]
        strategy = strategies.load_strategy(self.strategy_spec,
                                            {**self.strategy_values, **by_target["strategy"]})
        return (strategy, replace(self.params, **by_target["params"]),
                replace(self.protections, **by_target["protections"]))

    def fingerprint(self) -> dict[str, Any]:
        """What decides a trial's figures, as JSON data: a study keeps it and refuses another."""
        settings = asdict(self.settings)
        settings.pop("fit_workers")      # threads only: the results do not depend on them
        data = {"strategy": self.strategy_spec, "strategy_values": dict(self.strategy_values),
                "timeframe": self.timeframe, "params": asdict(self.params),
                "protections": asdict(self.protections), "edge": asdict(self.edge),
                "risk": dict(self.risk), "settings": settings, "use_model": self.use_model,
                "objective": self.objective, "spaces": list(self.spaces),
                "dimensions": [asdict(d) for d in self.dimensions],
                "folds": [asdict(f) for f in self.folds], "embargo": self.embargo,
                "symbols": list(self.symbols), "data": self.data_digest}
        return json.loads(json.dumps(data))

    def study_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode())
        return f"{self.strategy_name}-{self.timeframe}-{digest.hexdigest()[:12]}"


def data_digest(candles: Mapping[str, np.ndarray]) -> str:
    """A hash of the candles (symbols and every value), so a changed file is another setup."""
    h = hashlib.sha256()
    for s in sorted(candles):
        h.update(s.encode())
        h.update(np.ascontiguousarray(candles[s], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def make_setup(job: BacktestJob, config: Any, *, strategy_spec: str, timeframe: str,
               n_folds: int, embargo: int | None, spaces: Sequence[str],
               objective: str) -> Setup:
    """The setup of a hyperopt run from the backtest job its data options describe.
    ValueError naming the option for a period too short or a space that cannot apply."""
    if "model" in spaces and not job.use_model:
        raise ValueError("--spaces model: the model's floor only matters with the model; leave "
                         "out --no-model (with ML_ENABLED=true) or drop model from --spaces")
    strategy = job.strategy
    dims = search_space(strategy, spaces)
    tf = int(job.params.timeframe_ms)
    warmup = max(strategy.warmup, strategy.market_period, MIN_CANDLES)
    start, end = period(job.candles, tf, warmup, job.settings.start_ms, job.settings.end_ms)
    if end <= start:
        raise ValueError(f"no candles to optimise on after the {warmup}-candle warm-up; give "
                         f"an earlier --start or more candles")
    if embargo is None:
        span = (end - start) // tf // n_folds
        embargo = min(job.params.max_hold_candles, span // 10)
    folds = make_folds(start, end, tf, n_folds, embargo)
    return Setup(strategy_spec, dict(strategy.values), timeframe, job.params,
                 ProtectionSettings.from_config(config, tf), EdgeSettings.from_config(config),
                 RiskManager.from_config(config, fee_rate=job.settings.fee_rate).settings(),
                 job.settings, job.use_model, objective, tuple(spaces), dims, folds, embargo,
                 tuple(sorted(job.candles)), data_digest(job.candles), strategy.name)


# --------------------------------------------------------------------------- the objective

def daily_returns(result: BacktestResult) -> np.ndarray:
    """The equity's return over each UTC day the replay covers (the day a candle closes
    in), the first day from the starting balance."""
    if not len(result.equity):
        return np.empty(0)
    day = (result.times_ms + result.timeframe_ms - 1) // DAY_MS
    last = np.flatnonzero(np.diff(day, append=day[-1] + 1))
    equity = np.concatenate([[result.starting_balance], result.equity[last]])
    return equity[1:] / equity[:-1] - 1.0


def fold_figures(result: BacktestResult, objective: str) -> tuple[dict[str, Any], list[float]]:
    """A fold's figures (score first) and its daily returns, JSON-safe."""
    daily = daily_returns(result)
    curve = np.concatenate([[result.starting_balance], result.equity])
    drawdown = 100.0 * float((1.0 - curve / np.maximum.accumulate(curve)).max())
    ret = 100.0 * (result.final_equity / result.starting_balance - 1.0)
    trades = len(result.trades)
    sharpe = sharpe_ratio(daily) if trades and len(daily) > 1 else 0.0
    score = {"sharpe": sharpe, "return": ret,
             "calmar": ret / max(drawdown, CALMAR_FLOOR_PCT)}[objective]
    wins = sum(t.profit > 0 for t in result.trades)
    figures = {"score": float(score), "sharpe": float(sharpe), "return_pct": float(ret),
               "max_drawdown_pct": drawdown, "trades": trades,
               "win_rate_pct": 100.0 * wins / trades if trades else None,
               "days": int(len(daily))}
    return figures, [float(r) for r in daily]


def run_fold(candles: Mapping[str, np.ndarray], setup: Setup, fold: Fold,
             strategy: strategies.Strategy, params: StrategyParams,
             protections: ProtectionSettings) -> BacktestResult:
    """One fold's walk-forward backtest: warm-up before it, trading inside, closed at its end."""
    settings = replace(setup.settings, start_ms=fold.trade_ms, end_ms=fold.end_ms)
    result = run_backtest(candles, None, setup.use_model, strategy=strategy, params=params,
                          risk=RiskManager.from_settings(setup.risk), settings=settings,
                          protections=protections, edge=setup.edge)
    if result.interrupted:           # run_backtest turns Ctrl-C into a partial result
        raise KeyboardInterrupt
    return result


@dataclass(frozen=True)
class Outcome:
    """A trial's evaluation: its objective (mean score on the selection folds), per-fold
    figures and daily returns."""
    value: float
    folds: list[dict[str, Any]]
    daily: list[list[float]]


def evaluate_fold(candles: Mapping[str, np.ndarray], setup: Setup, values: Mapping[str, float],
                  k: int) -> tuple[dict[str, Any], list[float]]:
    """Fold k of one trial: its figures and daily returns (a unit of work on its own)."""
    strategy, params, protections = setup.apply(values)
    return fold_figures(run_fold(candles, setup, setup.folds[k], strategy, params, protections),
                        setup.objective)


def outcome(folds: Sequence[tuple[dict[str, Any], list[float]]]) -> Outcome:
    """A trial's outcome from its folds' results; the value leaves the holdout (the last) out."""
    figures = [f for f, _ in folds]
    return Outcome(float(np.mean([f["score"] for f in figures[:-1]])), figures,
                   [d for _, d in folds])


def evaluate(candles: Mapping[str, np.ndarray], setup: Setup, values: Mapping[str, float]) -> Outcome:
    """Every fold of one trial; the value Optuna sees leaves the holdout (the last fold) out."""
    return outcome([evaluate_fold(candles, setup, values, k) for k in range(len(setup.folds))])


def _folds_task(shared: tuple[Mapping[str, np.ndarray], Setup],
                item: tuple[Mapping[str, float], Sequence[int]]
                ) -> list[tuple[dict[str, Any], list[float]]]:
    candles, setup = shared
    values, ks = item
    return [evaluate_fold(candles, setup, values, k) for k in ks]


# --------------------------------------------------------------------------- completed trials

@dataclass(frozen=True)
class TrialRecord:
    number: int
    params: dict[str, float]
    value: float
    folds: list[dict[str, Any]]
    daily: list[list[float]]

    def mean_score(self, folds: Iterable[int]) -> float:
        return float(np.mean([self.folds[k]["score"] for k in folds]))


@dataclass(frozen=True)
class Selection:
    """Walk-forward selection at fold k: the trial best on the folds before k, scored on k."""
    fold: int
    trial: int
    in_sample: float
    figures: dict[str, Any]


def records(study: optuna.Study) -> list[TrialRecord]:
    """The completed trials with their figures, in trial order."""
    return [TrialRecord(t.number, dict(t.params), float(t.value), t.user_attrs["folds"],
                        t.user_attrs["daily"])
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "folds" in t.user_attrs]


def best_on(trials: Sequence[TrialRecord], folds: Sequence[int]) -> TrialRecord:
    """The trial with the best mean score over `folds` (the earliest one on a tie)."""
    return max(trials, key=lambda t: (t.mean_score(folds), -t.number))


def chosen(trials: Sequence[TrialRecord]) -> TrialRecord:
    """The trial best on the selection folds (all but the holdout): the optimiser's pick."""
    return best_on(trials, range(len(trials[0].folds) - 1))


def walk_forward(trials: Sequence[TrialRecord]) -> list[Selection]:
    """For each fold k >= 1, the trial best on folds 0..k-1 with its figures on fold k."""
    out = []
    for k in range(1, len(trials[0].folds)):
        best = best_on(trials, range(k))
        out.append(Selection(k, best.number, best.mean_score(range(k)), best.folds[k]))
    return out


def walk_forward_score(trials: Sequence[TrialRecord]) -> float | None:
    """The mean out-of-sample score of walk-forward selection (None before any trial)."""
    if not trials:
        return None
    return float(np.mean([s.figures["score"] for s in walk_forward(trials)]))


# --------------------------------------------------------------------------- execution

@dataclass(frozen=True)
class _Shared:
    """A local pool's handle of a shared object: pickled once to `path`, loaded once per
    worker process (cached under its digest), so tasks carry the handle, not the object."""
    path: str
    digest: str


_WORKER_CACHE: dict[str, Any] = {}


def _resolve(shared: Any) -> Any:
    if not isinstance(shared, _Shared):
        return shared
    if shared.digest not in _WORKER_CACHE:
        _WORKER_CACHE.clear()                 # one shared object at a time per worker
        with open(shared.path, "rb") as f:
            _WORKER_CACHE[shared.digest] = pickle.load(f)
    return _WORKER_CACHE[shared.digest]


def _call(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    return fn(_resolve(shared), item)


class Pool:
    """Runs fn(shared, item) for items: in-process (jobs=1), on local processes (loky's
    reusable executor, joblib's), or on the Dask cluster at `scheduler`. `share` ships the
    shared object to the workers once (a cluster: scattered to every worker; local: pickled
    to a file each worker loads once). `submit` gives a future, `wait` the finished ones,
    `map` results in item order."""

    def __init__(self, jobs: int | None = None, scheduler: str | None = None,
                 source: str = "--scheduler") -> None:
        self.jobs, self.scheduler, self.source = jobs, scheduler, source   # source: for errors
        self.client = self.executor = None
        self._files: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "Pool":
        if self.scheduler:
            import distributed

            try:
                self.client = distributed.Client(self.scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise ValueError(f"{self.source} {self.scheduler}: cannot connect "
                                 f"({' '.join(str(exc).split())[:120]}); start a scheduler "
                                 f"there or leave {self.source} out for local processes") from None
            self.jobs = self.jobs or sum(self.client.nthreads().values()) or 1
        else:
            self.jobs = self.jobs or os.cpu_count() or 1
            if self.jobs > 1:
                from joblib.externals.loky import get_reusable_executor

                self.executor = get_reusable_executor(max_workers=self.jobs,
                                                      timeout=IDLE_WORKER_TIMEOUT_S)
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self._files is not None:
            self._files.cleanup()

    def share(self, obj: Any) -> Any:
        """A handle of `obj` for `submit` and `map`."""
        if self.client is not None:
            return self.client.scatter([obj], broadcast=True, hash=False)[0]
        if self.executor is None:
            return obj
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if self._files is None:
            self._files = tempfile.TemporaryDirectory(prefix="hyperopt-")
        digest = hashlib.sha256(data).hexdigest()
        path = Path(self._files.name) / f"{digest[:16]}.pickle"
        path.write_bytes(data)
        return _Shared(str(path), digest)

    def submit(self, fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
        """fn(shared, item) as a future (in-process: run now; a KeyboardInterrupt raises)."""
        if self.client is not None:
            return self.client.submit(fn, shared, item, pure=False)
        if self.executor is not None:
            return self.executor.submit(_call, fn, shared, item)
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(shared, item))
        except Exception as exc:       # noqa: BLE001 - the future carries it, as a worker's would
            future.set_exception(exc)
        return future

    def wait(self, futures: Iterable[Any]) -> set:
        """The finished futures among `futures` (at least one: blocks until one finishes)."""
        if self.client is not None:
            import distributed

            return set(distributed.wait(list(futures), return_when="FIRST_COMPLETED").done)
        return concurrent.futures.wait(list(futures),
                                       return_when=concurrent.futures.FIRST_COMPLETED).done

    def cancel(self, futures: Iterable[Any], *, interrupted: bool = False) -> None:
        """Drop `futures`; on Ctrl-C, local workers still running one are killed."""
        futures = list(futures)
        if self.client is not None:
            self.client.cancel(futures)
            return
        for f in futures:
            f.cancel()
        if interrupted and self.executor is not None and not all(f.done() for f in futures):
            self.executor.shutdown(wait=False, kill_workers=True)
            self.executor = None

    def chunks(self, n_folds: int) -> list[tuple[int, ...]]:
        """A trial's folds grouped into tasks: one fold a task locally (a task costs little
        there); on a cluster, whose scheduler spends a few ms on each task, two tasks a
        trial (the first half of the folds, the rest), which with `jobs` trials in flight
        still leaves a task queued for every worker when a trial finishes."""
        per_task = -(-n_folds // 2) if self.client is not None else 1
        return [tuple(range(i, min(i + per_task, n_folds))) for i in range(0, n_folds, per_task)]

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list:
        if self.client is None and self.executor is None:
            return [fn(shared, item) for item in items]
        futures = [self.submit(fn, shared, item) for item in items]
        try:
            if self.client is not None:
                return self.client.gather(futures)
            return [f.result() for f in futures]
        except BaseException as exc:
            self.cancel(futures, interrupted=isinstance(exc, KeyboardInterrupt))
            raise


def sweep(fn: Callable[[Any, Any], Any], items: Sequence[Any], *, shared: Any = None,
          jobs: int | None = None, scheduler: str | None = None) -> list:
    """fn(shared, item) for every item, in parallel as hyperopt's trials run (local processes
    by default, a Dask cluster with `scheduler`); e.g. backtests over pairs or a grid.
    `fn` must be importable by the workers (a module-level function)."""
    with Pool(jobs, scheduler) as pool:
        return pool.map(fn, pool.share(shared), list(items))


# --------------------------------------------------------------------------- the study

class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell: it must not stop the study itself (its
    `after_trial` calls Study.stop, which only works inside Study.optimize); `run` stops
    when the grid is covered."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def make_sampler(kind: str, seed: int, dimensions: Sequence[Dimension],
                 grid_points: int) -> optuna.samplers.BaseSampler:
    if kind == "grid":
        return _Grid({d.name: d.grid(grid_points) for d in dimensions}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def grid_size(dimensions: Sequence[Dimension], grid_points: int) -> int:
    return math.prod(len(d.grid(grid_points)) for d in dimensions)


class _StudyFile(sqlite3.Connection):
    """The study file's connections: WAL journal, synchronous=NORMAL. A commit is a write to
    the log, not an fsync (a trial makes about 15 commits; with fsyncs, ~7 ms each on the
    development machine, they cost half as much as its backtests): a killed process loses
    nothing it committed, a power cut at most the last commits, and the file stays
    consistent either way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode = WAL")
        self.execute("PRAGMA synchronous = NORMAL")


def open_study(setup: Setup, path: Path, name: str | None, sampler: str, seed: int,
               grid_points: int) -> optuna.Study:
    """The study `name` (default: the setup's) in the SQLite file at `path`, created or
    loaded, with its sampler; ValueError naming --study-name when it holds another setup.

    A resumed study's TPE or random sampler is seeded with (seed, trials so far): the seed
    alone would draw the first trials' parameters again. The grid keeps its seed (its
    order), and covers the points not yet finished."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}",
                                         engine_kwargs={"connect_args": {"factory": _StudyFile}})
    name = name or setup.study_name()
    exists = name in optuna.get_all_study_names(storage)
    so_far = len(storage.get_all_trials(storage.get_study_id_from_name(name))) if exists else 0
    if so_far and sampler != "grid":
        seed = int.from_bytes(hashlib.sha256(f"{seed}:{so_far}".encode()).digest()[:4], "big")
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                sampler=make_sampler(sampler, seed, setup.dimensions, grid_points),
                                load_if_exists=True)
    fingerprint = setup.fingerprint()
    if not exists:
        study.set_user_attr("setup", fingerprint)
        return study
    old = study.user_attrs.get("setup") or {}
    differ = sorted(k for k in fingerprint if old.get(k) != fingerprint[k])
    if differ:
        raise ValueError(f"--study-name {name}: that study in {path} was run with another "
                         f"setup ({', '.join(differ)} differ); give a new --study-name or "
                         f"the options it was made with")
    return study


def resume(study: optuna.Study, names: Sequence[str]) -> list[int]:
    """Mark trials a killed run left RUNNING as failed and ask their parameters again
    (enqueued, so they come first) when it had drawn all of `names`; returns their numbers."""
    left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in left:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if set(t.params) == set(names):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return [t.number for t in left]


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


@dataclass
class RunResult:
    study: optuna.Study
    target: int
    requeued: list[int]
    interrupted: bool = False


@dataclass
class _Running:
    """A trial in flight: its values and the results of the folds that are in."""
    trial: optuna.Trial
    values: dict[str, float] | None = None
    folds: dict[int, tuple[dict[str, Any], list[float]]] = field(default_factory=dict)


def run(candles: Mapping[str, np.ndarray], setup: Setup, study: optuna.Study, pool: Pool, *,
        trials: int, progress: Callable[[int, float | None], None] | None = None) -> RunResult:
    """Evaluate trials on the entered `pool` until `trials` are complete in the study (a
    grid: at most its size). Up to `pool.jobs` trials are in flight, each as tasks of its
    folds (`Pool.chunks`); a trial is told as soon as its folds are in and the next is asked
    and submitted at once, so the workers do not wait for the study. jobs=1 runs one trial at a time in-process (asked,
    evaluated, told: the study depends on the seed alone). Ctrl-C stops asking, marks the
    trials in flight failed and enqueues their parameters for the next run."""
    names = [d.name for d in setup.dimensions]
    requeued = resume(study, names)
    target = trials
    if isinstance(study.sampler, optuna.samplers.GridSampler):
        target = min(trials, len(study.sampler._all_grids))
    out = RunResult(study, target, requeued)
    done_records = records(study)          # kept in memory: the study is not read again
    done = completed(study)
    if progress:
        progress(done, walk_forward_score(done_records))
    if done >= target:
        return out
    shared = pool.share((candles, setup))
    running: dict[int, _Running] = {}
    tasks: dict[Any, tuple[int, tuple[int, ...]]] = {}     # future -> (trial number, folds)
    n_folds = len(setup.folds)
    chunks = pool.chunks(n_folds)
    try:
        while True:
            while len(running) < pool.jobs and done + len(running) < target:
                trial = study.ask()
                entry = running[trial.number] = _Running(trial)
                entry.values = {d.name: d.suggest(trial) for d in setup.dimensions}
                for ks in chunks:
                    tasks[pool.submit(_folds_task, shared, (entry.values, ks))] = (trial.number, ks)
            if not running:
                break
            for future in pool.wait(list(tasks)):
                number, ks = tasks.pop(future)
                entry = running[number]
                entry.folds.update(zip(ks, future.result()))      # a task's error raises here
                if len(entry.folds) < n_folds:
                    continue
                o = outcome([entry.folds[i] for i in range(n_folds)])
                trial = entry.trial
                trial.set_user_attr("folds", o.folds)
                trial.set_user_attr("daily", o.daily)
                state = study.tell(trial, o.value).state
                del running[number]
                if state == TrialState.COMPLETE:
                    done += 1
                    done_records.append(TrialRecord(trial.number, dict(trial.params), o.value,
                                                    o.folds, o.daily))
                    if progress:
                        progress(done, walk_forward_score(done_records))
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        pool.cancel(list(tasks), interrupted=interrupted)
        for entry in running.values():
            if study._storage.get_trial(entry.trial._trial_id).state != TrialState.RUNNING:
                continue                              # told just before the interrupt
            study.tell(entry.trial, state=TrialState.FAIL)
            if set(entry.trial.params) == set(names):
                study.enqueue_trial(entry.trial.params, user_attrs={"retry_of": entry.trial.number})
        if not interrupted:
            raise
        out.interrupted = True
    return out


__all__ = ["DEFAULT_SPACES", "OBJECTIVES", "SAMPLERS", "SETTINGS", "SPACES", "Dimension", "Fold",
           "Outcome", "Pool", "RunResult", "Selection", "Setup", "TrialRecord", "chosen", "completed",
           "evaluate", "evaluate_fold", "grid_size", "make_sampler", "make_setup", "open_study",
           "outcome", "records", "run", "sweep", "walk_forward", "walk_forward_score"]

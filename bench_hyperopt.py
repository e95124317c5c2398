"""Benchmarks of hyperopt: trials per minute on 1 and 2 local processes and on a two-worker
Dask LocalCluster on 127.0.0.1 (`python bench.py --only hyperopt`).

One fixed study, the same on every executor: trend_momentum without the model, its two
parameters and the exits, 5 folds, a seeded random sampler (so every executor evaluates the
same trials: a random sampler's draws depend on the order of the asks only), 40 trials, on
the last 3,000 1h candles of the 12 pairs in ../shared/ohlcv/binance-1h-2017-2022 (the
simulated market's when the files are absent). The three executors are started and warmed
up (their workers import the project and load the candles) before any timed study, then
take turns, a fresh study each, three rounds; each figure is the median of its rounds. The
start-ups are not timed.
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import bench_kit
from bench_kit import Row

SHARED = bench_kit.ROOT.parent / "shared" / "ohlcv" / "binance-1h-2017-2022"
PAIRS = 12
CANDLES = 3000
TRIALS = 40
ROUNDS = 3


def bench_hyperopt() -> list[Row]:
    """Trials per minute on 2 local processes and on the LocalCluster, against 1 process."""
    from distributed import LocalCluster

    import hyperopt

    candles, source = _candles()
    setup = _setup(candles)
    trials = TRIALS // 2 if bench_kit.QUICK else TRIALS
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        cluster = stack.enter_context(LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None))
        pools = {name: stack.enter_context(hyperopt.Pool(jobs, scheduler)) for name, jobs, scheduler
                 in (("alone", 1, None), ("local", 2, None),
                     ("dask", None, cluster.scheduler_address))}
        for name, pool in pools.items():               # workers up, the project imported
            warm = hyperopt.open_study(setup, tmp / f"warm-{name}.sqlite", None, "random", 1, 3)
            hyperopt.run(candles, setup, warm, pool, trials=2 * pool.jobs)
        rates: dict[str, list[float]] = {name: [] for name in pools}
        for r in range(bench_kit.repeats(ROUNDS)):
            for name, pool in pools.items():
                study = hyperopt.open_study(setup, tmp / f"{name}-{r}.sqlite", None, "random", 0, 3)
                start = time.perf_counter()
                hyperopt.run(candles, setup, study, pool, trials=trials)
                rates[name].append(trials / (time.perf_counter() - start) * 60.0)
    alone, local, dask = (statistics.median(rates[n]) for n in ("alone", "local", "dask"))
    baseline = (f"1 process, in-process trials (same run; {source}; {trials} trials, "
                f"median of {len(rates['alone'])})")
    return [Row("hyperopt: trials per minute, 2 local processes (loky)", local,
                "trials/min", baseline, alone, higher_is_better=True),
            Row("hyperopt: trials per minute, 2-worker Dask LocalCluster on 127.0.0.1", dask,
                "trials/min", baseline, alone, higher_is_better=True)]


def _candles() -> tuple[dict, str]:
    """The study's candles and where they come from."""
    from candle_files import load_candles
    from sim_market import simulated_ohlcv

    if SHARED.is_dir():
        try:
            files = load_candles(SHARED, "1h")
            return {s: a[-CANDLES:] for s, a in files.items()}, f"Binance 1h, {len(files)} pairs"
        except Exception:   # noqa: BLE001 - any problem with the files: the simulated market
            pass
    return simulated_ohlcv(PAIRS, 1, "1h", CANDLES), f"simulated 1h, {PAIRS} pairs"


def _setup(candles: dict):
    import hyperopt
    from backtest import BacktestSettings
    from backtest_job import BacktestJob
    from config import load_config
    from domain import StrategyParams
    from strategies import TrendMomentum

    tf = 3_600_000
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, environ={"DATA_DIR": tmp, "ML_ENABLED": "false"})
    job = BacktestJob(candles, StrategyParams.from_config(config, tf),
                      BacktestSettings.from_config(config), False, TrendMomentum())
    return hyperopt.make_setup(job, config, strategy_spec="trend_momentum", timeframe="1h",
                               n_folds=5, embargo=None, spaces=("strategy", "exits"),
                               objective="sharpe")


if __name__ == "__main__":
    bench_kit.print_table([("hyperopt", bench_hyperopt())])

"""The backtest section of bench.py: long replays, fast-forward against the per-step reference.

Two data sets, as issue 13 names them: 4 pairs x one year of 5-minute candles and 10 pairs x
17 months of 1-hour candles, from ../shared/ohlcv (a 5m file shorter than a year is
continued by a copy of itself, time-shifted and scaled to start at its last close) or from
the simulated market when the files are absent. Strategy trend_momentum (it decides on the
candles given, so every candle is a replay step), the default risk and exit settings, with
and without the walk-forward model; and the shipped default strategy (ema_cross, deciding
on 4h candles built from the files) with the model. Each replay runs in a fresh interpreter that loads the
candle files and replays them; the time is from the first file read to the result (what a
user waits for, less Python's start-up), the memory the process's peak RSS. The baseline
of each figure is the per-step reference replay (`skip_idle_steps=False`) measured in the
same run; freqtrade's figures are QUOTED from issue 13, not measured here.
"""
from __future__ import annotations

import json
import sys
from typing import NamedTuple

from bench_kit import NOTES, ROOT, Row, repeats, run_child
from strategies import DEFAULT_STRATEGY

TIMED_STRATEGY = "trend_momentum"   # decides on the candles given: every candle is a step

SHARED_OHLCV = ROOT.parent / "shared" / "ohlcv"   # the repository and shared/ side by side
YEAR_5M = 105_120                                 # 5m candles in 365 days
MONTHS_17_1H = 12_410                             # 1h candles in 17 months


class Case(NamedTuple):
    name: str
    folder: str
    timeframe: str
    pairs: int
    candles: int
    freqtrade: str          # QUOTED from issue 13 (freqtrade 2026.9 on the same candles)
    freqtrade_seconds: float
    freqtrade_mib: float | None


CASES = (
    Case("4 pairs x 1 year 5m", "binance-5m-2020-2021", "5m", 4, YEAR_5M,
         "freqtrade 2026.9 SampleStrategy: 63-71 s, 908 MiB (QUOTED, issue 13)", 63.0, 908.0),
    Case("10 pairs x 17 months 1h", "binance-1h-2017-2022", "1h", 10, MONTHS_17_1H,
         "freqtrade 2026.9: 16-21 s (QUOTED, issue 13)", 16.0, None),
)

# Runs in a fresh interpreter: argv = folder, timeframe, pairs, candles, use_model (0/1),
# fast (0/1), repeats, shared dir, strategy name. Prints one JSON line; the peak memory is
# the process's after its first replay.
_CHILD = r"""
import json, re, statistics, sys, time
from bot import limit_malloc_arenas
limit_malloc_arenas()                   # as bot.py backtest does
from pathlib import Path
import numpy as np
import backtest as bt
from candle_files import find_candle_files, load_candles
import strategies
from candle_files import resample, timeframe_to_ms
from domain import StrategyParams
from risk_manager import RiskManager
from sim_market import simulated_ohlcv

folder, tf, pairs, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
use_model, fast, reps, shared = sys.argv[5] == "1", sys.argv[6] == "1", int(sys.argv[7]), Path(sys.argv[8])
strategy = strategies.load_strategy(sys.argv[9])
tf_ms = timeframe_to_ms(tf)
decide_ms = timeframe_to_ms(strategies.decision_timeframe(strategy, tf))

def continued(a, n):
    # a file shorter than n candles, continued by copies of itself (time-shifted, scaled)
    parts, end = [a], a
    while sum(len(p) for p in parts) < n:
        nxt = a.copy()
        nxt[:, 0] += end[-1, 0] + tf_ms - a[0, 0]
        nxt[:, 1:5] *= end[-1, 4] / a[0, 1]
        parts.append(nxt)
        end = nxt
    return np.concatenate(parts)[:n]

def data():
    if (shared / folder).is_dir():
        chosen = sorted(find_candle_files(shared / folder, tf))[:pairs]
        if len(chosen) == pairs:
            files = load_candles(shared / folder, tf, chosen)
            return {s: continued(files.pop(s)[-n:], n) for s in chosen}, "shared/ohlcv/" + folder
    return simulated_ohlcv(pairs, 1, tf, n), "simulated_ohlcv"

times, r, peak = [], None, None
for _ in range(reps):
    r = candles = None                  # one data set alive at a time
    t = time.perf_counter()
    candles, source = data()
    n_candles = int(sum(len(a) for a in candles.values()))
    if decide_ms != tf_ms:              # the strategy decides on longer candles, built here
        candles = {s: resample(a, tf_ms, decide_ms) for s, a in candles.items()}
    r = bt.run_backtest(candles, use_model=use_model, strategy=strategy,
                        params=StrategyParams(timeframe_ms=decide_ms), risk=RiskManager(0.01, 5, 0.2, 2),
                        settings=bt.BacktestSettings(skip_idle_steps=fast, retrain_interval_ms=21_600_000))
    times.append(time.perf_counter() - t)
    peak = peak or int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps({"seconds": statistics.median(times), "candles": n_candles,
                  "trades": len(r.trades), "trainings": r.trainings, "final": r.final_equity,
                  "source": source, "peak_mib": peak}))
"""


def _replay(case: Case, use_model: bool, fast: bool, reps: int, strategy: str) -> dict:
    out, _, _ = run_child([sys.executable, "-c", _CHILD, case.folder, case.timeframe,
                           str(case.pairs), str(case.candles), str(int(use_model)),
                           str(int(fast)), str(reps), str(SHARED_OHLCV), strategy], timeout=1800)
    return json.loads(out.strip().splitlines()[-1])


def _case_rows(case: Case, use_model: bool, strategy: str = TIMED_STRATEGY) -> list[Row]:
    fast = _replay(case, use_model, True, repeats(3), strategy)
    slow = _replay(case, use_model, False, 1, strategy)
    if (fast["trades"], fast["final"]) != (slow["trades"], slow["final"]):
        raise RuntimeError(f"{case.name}: the fast replay and the per-step reference disagree "
                           f"({fast['trades']} vs {slow['trades']} trades)")
    label = (f"backtest {case.name}, {strategy}, "
             f"{'walk-forward model' if use_model else 'no model'}")
    NOTES.append(f"{label}: {fast['source']}, {fast['candles']:,} candles, "
                 f"{fast['trades']} trades, {fast['trainings']} model fits; the same trades "
                 f"and final equity as the per-step reference")
    rate = fast["candles"] / fast["seconds"]
    rows = [
        Row(f"{label}: seconds (load + replay)", fast["seconds"], "s",
            "per-step reference replay, same run", slow["seconds"]),
        Row(f"{label}: candles/s", rate, "candles/s", "per-step reference replay, same run",
            slow["candles"] / slow["seconds"], higher_is_better=True),
        Row(f"{label}: peak RSS", fast["peak_mib"], "MiB", "per-step reference replay, same run",
            slow["peak_mib"]),
    ]
    if use_model:
        rows.append(Row(f"{label}: seconds (load + replay)", fast["seconds"], "s",
                        case.freqtrade, case.freqtrade_seconds))
        if case.freqtrade_mib is not None:
            rows.append(Row(f"{label}: peak RSS", fast["peak_mib"], "MiB", case.freqtrade,
                            case.freqtrade_mib))
    return rows


def bench_backtest() -> list[Row]:
    """Both data sets with trend_momentum, without and with the model; and the shipped
    default strategy (it decides on 4h candles built from the files) with the model."""
    if not SHARED_OHLCV.is_dir():
        NOTES.append(f"backtest: {SHARED_OHLCV} is absent: the simulated market's candles were "
                     "replayed, so the figures are not comparable with freqtrade's on real ones")
    return ([row for case in CASES for use_model in (False, True)
             for row in _case_rows(case, use_model)]
            + [row for case in CASES for row in _case_rows(case, True, DEFAULT_STRATEGY)])

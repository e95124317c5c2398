"""What `bot.py backtest` replays: the candles (files or the simulated market), the strategy
and its decision timeframe, the parameters and the replay settings, from the command line's
options. Problems a user can fix are ValueError (or candle_files.CandleFileError) with one
line naming the option.
"""
from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

import strategies
from backtest import DAY_MS, BacktestSettings
from candle_files import load_candles, resample, timeframe_to_ms
from domain import StrategyParams
from market_rules import quote_of
from sim_market import simulated_ohlcv
from strategies import Strategy


class BacktestJob(NamedTuple):
    """A replay as the command line describes it: `run_backtest(job.candles, config,
    job.use_model, strategy=job.strategy, params=job.params, settings=job.settings)`."""
    candles: dict[str, np.ndarray]
    params: StrategyParams
    settings: BacktestSettings
    use_model: bool
    strategy: Strategy


def backtest_job(config: Any, *, data_dir: str | os.PathLike, timeframe: str,
                 pairs: Sequence[str] = (), start: str | None = None, end: str | None = None,
                 simulated: bool = False, sim_pairs: int = 10, sim_days: float = 14.0,
                 use_model: bool = True, starting_balance: float | None = None,
                 strategy: Strategy | None = None) -> BacktestJob:
    """The candles, parameters and settings of `bot.py backtest` with these options. A
    strategy that decides on a longer timeframe than `timeframe` gets its candles built
    from the shorter ones (complete buckets only).

    Problems a user can fix raise ValueError or candle_files.CandleFileError with one line
    naming the option."""
    try:
        timeframe_to_ms(timeframe)
    except ValueError as exc:
        raise ValueError(f"--timeframe: {exc}") from None
    strategy = strategy or strategies.from_config(config)
    decide_on = strategies.decision_timeframe(strategy, timeframe)
    tf_ms = timeframe_to_ms(decide_on)
    start_ms, end_ms = parse_day(start, "--start"), parse_day(end, "--end")
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        raise ValueError(f"--start {start} is not before --end {end}")
    pairs = list(pairs)
    candles = (simulated_candles(config, timeframe, pairs, sim_pairs, sim_days) if simulated
               else load_candles(data_dir, timeframe, pairs or None))
    check_one_quote(candles)
    if decide_on != timeframe:
        candles = {s: resample(a, timeframe_to_ms(timeframe), tf_ms) for s, a in candles.items()}
        candles = {s: a for s, a in candles.items() if len(a)}
    params = StrategyParams.from_config(config, tf_ms)
    settings = BacktestSettings.from_config(config, start_ms=start_ms, end_ms=end_ms)
    if starting_balance is not None:
        settings = replace(settings, starting_balance=starting_balance)
    return BacktestJob(candles, params, settings, use_model and config.ml_enabled, strategy)


def parse_day(text: str | None, option: str) -> int | None:
    """'2024-01-31' -> that day's 00:00 UTC in ms; None for no date."""
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a date like 2024-01-31 (YYYY-MM-DD, UTC)") from None
    return int(day.timestamp() * 1000)


def simulated_candles(config: Any, timeframe: str, pairs: Sequence[str], sim_pairs: int,
                      sim_days: float) -> dict[str, np.ndarray]:
    """`sim_days` of the simulated market's candles (seed SIM_SEED), all its pairs or `pairs`."""
    candles = int(sim_days * DAY_MS // timeframe_to_ms(timeframe))
    try:
        out = simulated_ohlcv(sim_pairs, config.sim_seed, timeframe, candles,
                              quote=config.quote_currency)
    except ValueError as exc:
        raise ValueError(f"--simulated: {exc}") from None
    if not pairs:
        return out
    unknown = [p for p in pairs if p not in out]
    if unknown:
        raise ValueError(f"--pairs: {', '.join(unknown)} not among the simulated pairs "
                         f"({', '.join(out)})")
    return {p: out[p] for p in pairs}


def check_one_quote(candles: Mapping[str, Any]) -> None:
    """One backtest holds one cash balance: ValueError if the pairs' quotes differ."""
    quotes = {quote_of(s) for s in candles}
    if len(quotes) > 1:
        raise ValueError(f"the pairs are quoted in different currencies "
                         f"({', '.join(sorted(quotes))}); one backtest holds one cash balance: "
                         f"pick pairs of one quote with --pairs")

"""The exit rules and the one engine that applies them, vectorised over positions.

The live trader (its held positions against fresh prices), the backtester (its held
positions against each candle) and the meta-labeller (every signal of a strategy against the
candles that followed it) all run `step`, so a stop, a target or a trailing stop means the
same everywhere.

One bar (open, high, low, close) is judged in this order, with the levels as they stood
before the bar (nothing inside a bar is assumed beyond what its four prices prove):

1. the stop: low <= stop exits at min(stop, open) (a gap through it fills at the open);
   the reason is `trailing_stop` once the stop has been raised above the entry price
   (trailing or break-even), else `stop_loss`;
2. the target: the lower of the take-profit level and the minimal-ROI level for the time
   held at the bar's open; high >= it exits at max(level, open) (`take_profit` or `roi`);
3. the strategy's exit signal at the bar's close exits at the close (`exit_signal`);
4. the time limit: held max_hold_candles or more at the close exits there (`time_limit`).

Otherwise the bar raises the high-water mark, and with it the stop for the next bar: the
trailing stop (once the high is `trailing_offset` above the entry, the stop follows
`trailing_stop` below the high) and the break-even move (once the high is
`breakeven_trigger` above the entry, the stop goes to the entry plus `breakeven_offset`,
the round trip's fees). Stops only ever rise.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from domain import Bar, ExitIntent, Position, StrategyParams

REASONS = ("", "stop_loss", "trailing_stop", "take_profit", "roi", "exit_signal", "time_limit")
NONE, STOP, TRAILING, TAKE, ROI, SIGNAL, TIME = range(len(REASONS))


def roi_level(params: StrategyParams, held_ms: np.ndarray) -> np.ndarray:
    """The minimum return the ROI table asks after `held_ms` (inf with no table or before
    its first row)."""
    out = np.full(np.shape(held_ms), np.inf)
    for minutes, ret in params.roi:
        out = np.where(held_ms >= minutes * 60_000, ret, out)
    return out


class Held(NamedTuple):
    """What the engine needs of N positions (arrays of shape (N,))."""
    entry_price: np.ndarray
    entry_ms: np.ndarray
    stop: np.ndarray
    take: np.ndarray
    high: np.ndarray


class Step(NamedTuple):
    reason: np.ndarray       # (N,) index into REASONS, NONE where the position stays open
    price: np.ndarray        # (N,) exit price where it exits
    stop: np.ndarray         # (N,) the stop for the next bar (unchanged where it exits)
    high: np.ndarray         # (N,) the high-water mark after this bar


def step(rules: StrategyParams, held: Held, o, h, l, c, bar_open_ms, close_ms,
         exit_signal=None) -> Step:
    """Judge one bar for every position at once (see the module docstring)."""
    o, h, l, c = (np.asarray(x, dtype=np.float64) for x in (o, h, l, c))
    entry, stop, high = held.entry_price, held.stop, held.high
    reason = np.zeros(entry.shape, dtype=np.int8)
    price = np.full(entry.shape, np.nan)

    hit = l <= stop
    reason[hit] = np.where(stop[hit] > entry[hit], TRAILING, STOP)
    price[hit] = np.minimum(stop, o)[hit]

    roi = entry * (1.0 + roi_level(rules, np.asarray(bar_open_ms) - held.entry_ms))
    level = np.minimum(held.take, roi)
    hit = (reason == NONE) & (h >= level)
    reason[hit] = np.where(roi[hit] < held.take[hit], ROI, TAKE)
    price[hit] = np.maximum(level, o)[hit]

    if exit_signal is not None and rules.use_exit_signal:
        hit = (reason == NONE) & np.asarray(exit_signal, dtype=bool)
        reason[hit] = SIGNAL
        price[hit] = c[hit]
    hit = (reason == NONE) & (np.asarray(close_ms) - held.entry_ms
                              >= rules.max_hold_candles * rules.timeframe_ms)
    reason[hit] = TIME
    price[hit] = c[hit]

    high = np.maximum(high, h)
    new_stop = stop.copy()
    if rules.trailing_stop > 0:
        on = high >= entry * (1.0 + rules.trailing_offset)
        new_stop = np.where(on, np.maximum(new_stop, high * (1.0 - rules.trailing_stop)), new_stop)
    if rules.breakeven_trigger > 0:
        on = high >= entry * (1.0 + rules.breakeven_trigger)
        new_stop = np.where(on, np.maximum(new_stop, entry * (1.0 + rules.breakeven_offset)), new_stop)
    open_ = reason == NONE
    return Step(reason, price, np.where(open_, new_stop, stop), high)


class Path(NamedTuple):
    """One position judged bar after bar by `step` over a run of its pair's candles."""
    exit: int                # index of the first bar it exits in (len(bars) if none)
    stop: np.ndarray         # (len + 1,) the stop before each bar (and after the last)
    high: np.ndarray         # (len + 1,) the high-water mark before each bar (and after)


def path(rules: StrategyParams, entry_price: float, entry_ms: int, stop: float, take: float,
         high: float, o: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray,
         bar_open_ms: np.ndarray, exit_signal: np.ndarray | None = None) -> Path:
    """What `step` would say of one position over consecutive bars, computed for all bars at
    once: the high-water mark is a running maximum and the stop a running maximum of the
    trailing and break-even levels, so every bar's levels are known without a loop. The
    values are the very floats `step` computes (the backtest's fast-forward relies on it;
    a test compares the two). `high` is the mark before the first bar (at least the entry)."""
    tf = rules.timeframe_ms
    after = np.maximum.accumulate(np.concatenate([[high], np.asarray(h, dtype=np.float64)]))
    raised = np.full(len(h), -np.inf)
    if rules.trailing_stop > 0:
        on = after[1:] >= entry_price * (1.0 + rules.trailing_offset)
        raised = np.where(on, np.maximum(raised, after[1:] * (1.0 - rules.trailing_stop)), raised)
    if rules.breakeven_trigger > 0:
        on = after[1:] >= entry_price * (1.0 + rules.breakeven_trigger)
        raised = np.where(on, np.maximum(raised, entry_price * (1.0 + rules.breakeven_offset)),
                          raised)
    stops = np.maximum.accumulate(np.concatenate([[stop], raised]))
    bar_open_ms = np.asarray(bar_open_ms, dtype=np.int64)
    roi = entry_price * (1.0 + roi_level(rules, bar_open_ms - entry_ms))
    exits = (np.asarray(l) <= stops[:-1]) | (np.asarray(h) >= np.minimum(take, roi))
    if exit_signal is not None and rules.use_exit_signal:
        exits |= np.asarray(exit_signal, dtype=bool)
    exits |= bar_open_ms + tf - entry_ms >= rules.max_hold_candles * tf
    hit = np.flatnonzero(exits)
    return Path(int(hit[0]) if hit.size else len(h), stops, after)


class PositionUpdate(NamedTuple):
    exits: list[ExitIntent]
    moved: dict[str, tuple[float, float]]   # symbol -> (new stop, new high-water mark)


def check_positions(positions: Mapping[str, Position], bars: Mapping[str, Bar], close_ms: int,
                    rules: StrategyParams,
                    exit_signals: Mapping[str, bool] | None = None,
                    bar_open_ms: int | None = None) -> PositionUpdate:
    """The engine over held positions: the exits to make, and the stops that moved (the
    caller persists those before it moves on). `bar_open_ms` defaults to `close_ms` (a
    fresh price is a bar that opens and closes now)."""
    symbols = [s for s in positions if s in bars]
    if not symbols:
        return PositionUpdate([], {})
    ps = [positions[s] for s in symbols]
    bs = [bars[s] for s in symbols]
    held = Held(np.array([p.entry_price for p in ps]), np.array([p.entry_time_ms for p in ps]),
                np.array([p.stop_loss for p in ps]), np.array([p.take_profit for p in ps]),
                np.array([max(p.high_water, p.entry_price) for p in ps]))
    signal = None
    if exit_signals is not None:
        signal = np.array([bool(exit_signals.get(s, False)) for s in symbols])
    out = step(rules, held, [b.open for b in bs], [b.high for b in bs], [b.low for b in bs],
               [b.close for b in bs], close_ms if bar_open_ms is None else bar_open_ms,
               close_ms, signal)
    follows_high = rules.trailing_stop > 0 or rules.breakeven_trigger > 0
    exits, moved = [], {}
    for i, s in enumerate(symbols):
        if out.reason[i] != NONE:
            exits.append(ExitIntent(s, float(out.price[i]), REASONS[out.reason[i]]))
        elif out.stop[i] != held.stop[i] or (follows_high and out.high[i] != held.high[i]):
            moved[s] = (float(out.stop[i]), float(out.high[i]))
    return PositionUpdate(exits, moved)


class Outcomes(NamedTuple):
    """Every signal's trade, had it been taken alone: net return after costs, the index of
    the candle it ended in (-1 while unfinished) and why."""
    net_return: np.ndarray
    end: np.ndarray
    reason: np.ndarray


def signal_outcomes(rules: StrategyParams, o: np.ndarray, h: np.ndarray, l: np.ndarray,
                    c: np.ndarray, ts: np.ndarray, atr: np.ndarray, signals: np.ndarray,
                    cost: float, exit_signal: np.ndarray | None = None,
                    slippage: float = 0.0) -> Outcomes:
    """Trade each signal of one pair's candles through the exit engine: enter at the next
    candle's open (times 1 + slippage), exit by `step` on the candles after, sell at the exit
    price times 1 - slippage, less `cost` (the round trip's fees). Uses candles after the
    signal only; `end` says when the outcome became known (no look-ahead for whoever reads
    it at a later time)."""
    n = len(c)
    idx = outcome_rows(signals, atr)
    ret = np.full(len(idx), np.nan)
    end = np.full(len(idx), -1, dtype=np.int64)
    why = np.zeros(len(idx), dtype=np.int8)
    if not len(idx):
        return Outcomes(ret, end, why)
    entry = o[idx + 1] * (1.0 + slippage)
    # The levels keep their distances from the decision's close, as the ledger does.
    stop, take = rules.levels(c[idx], atr[idx])
    stop, take = stop + (entry - c[idx]), np.asarray(take) + (entry - c[idx])
    entry_ms = ts[idx + 1]
    held = Held(entry, entry_ms, stop, take.astype(float), entry.copy())
    live = np.arange(len(idx))
    for k in range(1, rules.max_hold_candles + 2):
        rows = idx[live] + k
        inside = rows < n
        live, rows = live[inside], rows[inside]
        if not len(live):
            break
        sig = exit_signal[rows] if exit_signal is not None else None
        held_now = Held(*(a[live] for a in held))
        out = step(rules, held_now, o[rows], h[rows], l[rows], c[rows], ts[rows],
                   ts[rows] + rules.timeframe_ms, sig)
        done = out.reason != NONE
        d = live[done]
        ret[d] = out.price[done] * (1.0 - slippage) / entry[d] - 1.0 - cost
        end[d] = rows[done]
        why[d] = out.reason[done]
        held.stop[live] = out.stop
        held.high[live] = out.high
        live = live[~done]
    return Outcomes(ret, end, why)


def outcome_rows(signals: Sequence[bool] | np.ndarray, atr: np.ndarray) -> np.ndarray:
    """The candle indices `signal_outcomes` reports on, in its order."""
    n = len(atr)
    return np.flatnonzero(np.asarray(signals, dtype=bool)[: n - 1] & np.isfinite(atr[: n - 1]))

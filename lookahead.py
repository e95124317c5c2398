"""Look-ahead check: does a strategy's signal at candle t depend on candles after t?

Method. For every pair the strategy's frame (`strategies.frame`: the standard indicators, the
candle itself and the strategy's own `indicators` columns) and its signals (`strategies.signals`:
entry score and exit signal) are computed once on the full history. Then, at `cuts` truncation
rows k spread over the history after the strategy's warm-up (one random row in each of `cuts`
equal strata, deterministic given `seed`), everything is recomputed from `candles[:k+1]` only,
exactly what the live bot would have had at the close of candle k, and compared with the full
computation on EVERY row 0..k (the strongest test: a value at any row <= k that changes when
only later candles are removed is look-ahead). A causal strategy reports zero differences:
EMA-like indicators seeded from the first candle do not change when later candles go.

Compared per row: the entry score (NaN equals NaN; finite values equal within 1e-9 relative,
plus 1e-12 of the column's largest magnitude so that values crossing zero are not flagged
for rounding), the exit signal (exactly), and every column of the frame, the strategy's own
ones and the standard ones. Each column that differs is named with the first row and
timestamp (earliest over all pairs and cuts) where it differs, the number of cuts at which it
differs and how many candles before the cut the differences reach (about how far it peeks).
If only the entry score or exit signal differs while none of its input columns does, the
look-ahead is inside `entry_score` / `exit_signal` themselves.

`check(strategy, candles)` returns a `LookaheadReport`; `.flagged` says whether anything
differs and `.format()` gives a short human report. 12 pairs x 5000 candles x 20 cuts take a
few seconds with the built-in strategies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping

import numpy as np

from indicators import INDICATOR_NAMES
from strategies import Strategy, frame, signals

RTOL = 1e-9          # relative tolerance of finite float values
SCALE_TOL = 1e-12    # absolute tolerance, as a fraction of the column's largest |value|
CANDLE_COLUMNS = ("open", "high", "low", "close", "volume")
ENTRY, EXIT = "entry_score", "exit_signal"


@dataclass
class ColumnDifference:
    """Where one column changes when later candles are removed (its earliest occurrence)."""
    column: str
    kind: str            # "strategy indicator", "standard indicator", "candle" or "signal"
    pair: str
    cut: int             # the truncation row k (candles[:k+1] were kept)
    row: int             # first row <= k whose value differs
    timestamp: float     # that row's timestamp (ms)
    full: float          # value from the full history
    truncated: float     # value from candles[:k+1]
    cuts_hit: int = 1    # (pair, cut) checks at which the column differed
    depth: int = 1       # differences reach this many candles back from the cut (k - row + 1)

    def describe(self, cuts: int = 0) -> str:
        of = f" of {cuts}" if cuts else ""
        return (f"column {self.column} ({self.kind}) changes at {self.cuts_hit}{of} cuts, up to "
                f"{self.depth} candle(s) before the cut, when later candles are removed (first at "
                f"{_utc(self.timestamp)}, pair {self.pair}, row {self.row} with the history cut "
                f"after row {self.cut}: {_num(self.full)} with the full history, "
                f"{_num(self.truncated)} without)")


@dataclass
class LookaheadReport:
    strategy: str
    pairs: int = 0                 # pairs checked
    cuts: int = 0                  # truncation points checked, over all pairs
    rows_compared: int = 0         # (row, cut) signal pairs compared: entry score and exit
    entries_compared: int = 0      # of those, rows with an entry in the full history
    exits_compared: int = 0        # of those, rows with an exit in the full history
    columns_compared: int = 0      # distinct frame columns compared
    skipped: list[str] = field(default_factory=list)     # pairs too short to cut
    differences: dict[str, ColumnDifference] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        return bool(self.differences)

    def ordered(self) -> list[ColumnDifference]:
        """Differences, the likely culprits first: strategy columns, standard, candle, signals."""
        rank = {"strategy indicator": 0, "standard indicator": 1, "candle": 2, "signal": 3}
        return sorted(self.differences.values(), key=lambda d: (rank.get(d.kind, 4), d.timestamp))

    def format(self) -> str:
        compared = (f"{self.rows_compared} signals ({self.entries_compared} entries, "
                    f"{self.exits_compared} exits) over {self.pairs} pairs and {self.cuts} cuts "
                    "compared")
        skipped = (f"; skipped {len(self.skipped)} pair(s) too short for the warm-up: "
                   f"{', '.join(self.skipped)}" if self.skipped else "")
        if not self.flagged:
            if not self.cuts:
                return f"nothing checked for {self.strategy}: no pair has candles after the warm-up{skipped}"
            return f"no look-ahead found in {self.strategy}: {compared}{skipped}"
        diffs = self.ordered()
        lines = [f"LOOK-AHEAD in {self.strategy}: {diffs[0].describe(self.cuts)}"]
        lines += [f"  also {d.describe(self.cuts)}" for d in diffs[1:]]
        lines.append(f"  {self._blame(diffs)}")
        lines.append(f"  ({compared}{skipped})")
        return "\n".join(lines)

    def _blame(self, diffs: list[ColumnDifference]) -> str:
        inputs = [d.column for d in diffs if d.kind != "signal"]
        if inputs:
            return f"to blame: {', '.join(inputs)} (uses candles after the row it is computed for)"
        signals_ = " and ".join(d.column for d in diffs)
        return (f"to blame: {signals_} itself (none of its input columns changes, so its own "
                "computation looks at later rows, e.g. a centred window or a negative shift)")


def check(strategy: Strategy, candles: Mapping[str, np.ndarray], cuts: int = 20,
          seed: int = 0) -> LookaheadReport:
    """Recompute `strategy` on truncated histories of each pair; report what changes."""
    report = LookaheadReport(strategy=getattr(strategy, "name", type(strategy).__name__))
    rng = np.random.default_rng(seed)
    columns: set[str] = set()
    for pair, raw in candles.items():
        a = np.asarray(raw, dtype=np.float64)
        rows = cut_rows(len(a), _warmup(strategy), cuts, rng)
        if not len(rows):
            report.skipped.append(pair)
            continue
        columns |= _check_pair(strategy, pair, a, rows, report)
    report.columns_compared = len(columns)
    return report


def cut_rows(n: int, warmup: int, cuts: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `cuts` distinct rows k in [warmup, n-2], one random row per equal stratum."""
    lo, hi = max(int(warmup), 1), n - 1          # k = n-1 would keep everything
    m = min(max(int(cuts), 0), hi - lo)
    if m <= 0:
        return np.empty(0, dtype=int)
    bounds = np.floor(np.linspace(lo, hi, m + 1)).astype(int)
    return np.array([rng.integers(bounds[i], bounds[i + 1]) for i in range(m)], dtype=int)


def _warmup(strategy: Strategy) -> int:
    try:
        return max(int(getattr(strategy, "warmup", 0) or 0), 0)
    except (TypeError, ValueError):
        return 0


def _evaluate(strategy: Strategy, a: np.ndarray) -> dict[str, np.ndarray]:
    """The frame of candles `a` plus the entry score and exit signal as two more columns."""
    x = frame(a, strategy)
    score, exit_ = signals(strategy, x)
    return {**x, ENTRY: score, EXIT: exit_}


def _kinds(strategy: Strategy, a: np.ndarray, columns: Mapping[str, np.ndarray]) -> dict[str, str]:
    own = set(strategy.indicators(*(a[:, k] for k in range(1, 6))))
    out = {}
    for name in columns:
        if name in own:
            out[name] = "strategy indicator"
        elif name in (ENTRY, EXIT):
            out[name] = "signal"
        elif name in CANDLE_COLUMNS:
            out[name] = "candle"
        else:
            out[name] = "standard indicator" if name in INDICATOR_NAMES else "strategy indicator"
    return out


def _check_pair(strategy: Strategy, pair: str, a: np.ndarray, rows: np.ndarray,
                report: LookaheadReport) -> set[str]:
    full = _evaluate(strategy, a.copy())
    kinds = _kinds(strategy, a.copy(), full)
    scales = {name: _scale(col) for name, col in full.items()}
    entries = np.isfinite(full[ENTRY])
    exits = full[EXIT].astype(bool)
    for k in rows:
        cut = _evaluate(strategy, a[:k + 1].copy())
        for name in full.keys() | cut.keys():
            first = _first_difference(full.get(name), cut.get(name), k + 1, scales.get(name, 0.0))
            if first is not None:
                _record(report, name, kinds.get(name, "strategy indicator"), pair, int(k),
                        first, a, full.get(name), cut.get(name))
        report.rows_compared += k + 1
        report.entries_compared += int(np.count_nonzero(entries[:k + 1]))
        report.exits_compared += int(np.count_nonzero(exits[:k + 1]))
    report.pairs += 1
    report.cuts += len(rows)
    return set(full)


def _scale(col) -> float:
    try:
        v = np.abs(np.asarray(col, dtype=np.float64))
    except (TypeError, ValueError):
        return 0.0
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else 0.0


def _rows(col, n: int) -> np.ndarray | None:
    """The first n rows of a column (a scalar broadcasts), or None if it has fewer."""
    if col is None:
        return None
    a = np.asarray(col)
    if a.ndim == 0:
        return np.broadcast_to(a, (n,))
    return a[:n] if len(a) >= n else None


def _first_difference(full, cut, n: int, scale: float) -> int | None:
    """First row < n where the two columns differ, None if they agree on all n rows."""
    a, b = _rows(full, n), _rows(cut, n)
    if a is None or b is None or a.shape != b.shape:
        return None if a is None and b is None else n - 1
    bad = _differs(a, b, scale)
    if bad.ndim > 1:
        bad = bad.reshape(n, -1).any(axis=1)
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else None


def _differs(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """Elementwise: NaN equals NaN, finite floats equal within RTOL (+ SCALE_TOL * scale)."""
    try:
        x, y = a.astype(np.float64), b.astype(np.float64)
    except (TypeError, ValueError):
        return np.asarray(a != b, dtype=bool)
    with np.errstate(invalid="ignore", over="ignore"):
        close = np.abs(x - y) <= RTOL * np.maximum(np.abs(x), np.abs(y)) + SCALE_TOL * scale
        same = (x == y) | (np.isnan(x) & np.isnan(y)) | close
    return ~same


def _record(report: LookaheadReport, name: str, kind: str, pair: str, k: int, row: int,
            a: np.ndarray, full, cut) -> None:
    new = ColumnDifference(column=name, kind=kind, pair=pair, cut=k, row=row,
                           timestamp=float(a[row, 0]), full=_value(full, row),
                           truncated=_value(cut, row), depth=k - row + 1)
    old = report.differences.get(name)
    if old is None:
        report.differences[name] = new
        return
    new.cuts_hit, new.depth = old.cuts_hit + 1, max(old.depth, new.depth)
    if new.timestamp < old.timestamp:
        report.differences[name] = new
    else:
        old.cuts_hit, old.depth = new.cuts_hit, new.depth


def _value(col, row: int) -> float:
    a = _rows(col, row + 1)
    if a is None:
        return math.nan
    try:
        return float(np.asarray(a[row], dtype=np.float64).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return math.nan


def _num(x: float) -> str:
    return "missing/NaN" if math.isnan(x) else f"{x:.10g}"


def _utc(ts_ms: float) -> str:
    try:
        return datetime.fromtimestamp(ts_ms / 1000.0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return f"timestamp {ts_ms:g}"

"""Candle files: read and validate them, append to them durably, and download them.

Format written: CSV with the header `timestamp,open,high,low,close,volume` (timestamp = the
candle's open time in ms since the epoch, UTC), one file per pair and timeframe, named like
`ETH_USDT-5m.csv`. Reading also accepts freqtrade's JSON candle files (`[[ts, o, h, l, c, v],
...]`, named like `ETH_USDT-5m.json`, optionally `.json.gz`) and gzipped CSV.

Every file is validated on reading. What cannot be trusted is an error naming the file and
line (`CandleFileError("path:line: what is wrong; how to fix")`); two things are repaired with
a warning because the repair cannot change any candle's values:
- an exact duplicate row (same timestamp, same six values as the row before it) is dropped;
- a last line that is cut short and does not parse (an interrupted write) is ignored.
Gaps (missing candles) are not errors: exchanges skip candles with no trades and have outages.

`bot.py download-data` is the command line over `download`.
"""
from __future__ import annotations

import difflib
import gzip
import json
import logging
import os
import re
import sys
import tempfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

CSV_HEADER = "timestamp,open,high,low,close,volume"
COLUMNS = tuple(CSV_HEADER.split(","))
PAGE_LIMIT = 1000
SUFFIXES = (".csv", ".csv.gz", ".json", ".json.gz")   # in order of preference for one pair
_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
             "M": 2_592_000_000}
_MAX_TIMEFRAME_MS = 366 * 86_400_000
MAX_PRICE = 1e15        # far above any listed market's price, in any quote currency
MAX_VOLUME = 1e18       # far above any candle's volume; beyond it price x volume overflows
# A field of a CSV row: a plain ASCII decimal (nan and inf pass here so that the finite check
# can name them); float() alone would also take "1_000", "٣" or "１０".
_CSV_NUMBER = re.compile(r"[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
                         r"|nan|inf|infinity)", re.ASCII | re.IGNORECASE)
_NOT_PLAIN = re.compile(r"[^0-9eE.,+\-\r \t]")    # beyond digits, signs, exponents
_FILE_NAME = re.compile(r"^(?P<base>[A-Za-z0-9]+)_(?P<quote>[A-Za-z0-9]+)-(?P<tf>\d+[smhdwM])"
                        r"(?P<ext>\.csv|\.csv\.gz|\.json|\.json\.gz)$")
Progress = Callable[[int, int], None]   # (candle slots just covered, total slots of the job)


class CandleFileError(Exception):
    """A candle file (or downloaded page) that cannot be used; the message is one line:
    `where: what is wrong; how to fix`."""


# --------------------------------------------------------------------------- names

def timeframe_to_ms(timeframe: str) -> int:
    """'5m' -> 300000. Units s, m, h, d, w and M (30 days, as ccxt counts it)."""
    m = re.fullmatch(r"([0-9]{1,6})([smhdwM])", timeframe.strip(), re.ASCII)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"timeframe {timeframe!r} is not like 1m, 5m, 1h or 1d")
    ms = int(m.group(1)) * _UNITS_MS[m.group(2)]
    if ms > _MAX_TIMEFRAME_MS:
        raise ValueError(f"timeframe {timeframe!r} is longer than a year")
    return ms


def file_stem(symbol: str, timeframe: str) -> str:
    """'ETH/USDT', '5m' -> 'ETH_USDT-5m'."""
    return f"{symbol.replace('/', '_')}-{timeframe}"


def candle_path(data_dir: str | os.PathLike, symbol: str, timeframe: str) -> Path:
    """Where download-data keeps a pair's candles: DATA_DIR/ETH_USDT-5m.csv."""
    return Path(data_dir) / f"{file_stem(symbol, timeframe)}.csv"


def parse_file_name(name: str) -> tuple[str, str] | None:
    """'ETH_USDT-5m.json.gz' -> ('ETH/USDT', '5m'); None for names of other files."""
    m = _FILE_NAME.match(name)
    if m is None:
        return None
    return f"{m['base'].upper()}/{m['quote'].upper()}", m["tf"]


def find_candle_files(data_dir: str | os.PathLike, timeframe: str) -> dict[str, Path]:
    """Symbol -> file for every candle file of this timeframe in data_dir (CSV preferred)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(data_dir).iterdir()):
        parsed = parse_file_name(path.name)
        if parsed is None or parsed[1] != timeframe:
            continue
        if not path.is_file():
            raise CandleFileError(f"{path}: is a {'directory' if path.is_dir() else 'special file'}"
                                  f", not a candle file; move it out of {Path(data_dir)}")
        symbol = parsed[0]
        if symbol in found:
            keep = min(found[symbol], path, key=lambda p: SUFFIXES.index(_suffix(p)))
            log.warning("%s: both %s and %s exist; using %s", symbol, found[symbol].name,
                        path.name, keep.name)
            path = keep
        found[symbol] = path
    return found


def _suffix(path: Path) -> str:
    return next(s for s in SUFFIXES if path.name.endswith(s))


# --------------------------------------------------------------------------- reading

def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CandleFileError(f"{path}: cannot be read ({exc.strerror or exc}); check the file "
                              f"and its permissions, or download it again") from None
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise CandleFileError(f"{path}: not a readable gzip file ({exc}); download it "
                                  f"again, or drop the .gz from the name if it is not "
                                  f"compressed") from None
    if not raw.strip():
        raise CandleFileError(f"{path}: the file is empty; delete it or download it again")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CandleFileError(f"{path}:{line}: not UTF-8 text; is this a candle file? "
                              f"Download it again") from None


def read_candles(path: str | os.PathLike, timeframe: str | None = None) -> np.ndarray:
    """A candle file (CSV or freqtrade JSON, optionally gzipped) -> validated (T, 6) float64
    [ts_ms, open, high, low, close, volume], strictly increasing timestamps.

    With `timeframe`, timestamps must also lie on its grid (multiples of its length).
    """
    path = Path(path)
    text = _read_text(path)
    if ".json" in path.name:
        arr, lines = _parse_json(path, text)
    else:
        arr, lines = _parse_csv(path, text)
    tf_ms = timeframe_to_ms(timeframe) if timeframe else None
    return validate_candles(arr, lambda i: f"{path}:{lines[i]}", tf_ms, str(path))


def _parse_csv(path: Path, text: str) -> tuple[np.ndarray, list[int]]:
    lines = text.split("\n")
    header = lines[0].strip().replace(" ", "").lower() if lines else ""
    if header != CSV_HEADER:
        if _looks_numeric(header):
            raise CandleFileError(f"{path}:1: the header line is missing; add "
                                  f"'{CSV_HEADER}' as the first line")
        raise CandleFileError(f"{path}:1: header is {lines[0].strip()[:60]!r}, expected "
                              f"'{CSV_HEADER}'; fix the first line (columns in this order)")
    fast = _parse_csv_rows(lines[1:])
    if fast is not None:
        return fast, list(range(2, len(fast) + 2))
    rows, numbers = [], []
    last = len(lines) - 1
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 6 or not all(_is_number(f) for f in fields):
            if n - 1 == last and not text.endswith("\n"):
                log.warning("%s:%d: last line %r is cut short (an interrupted write); ignoring "
                            "it, which is safe: a partial row holds no complete candle; "
                            "download-data fetches it again", path, n, line[:40])
                continue
            what = (f"{len(fields)} fields, expected 6 ({CSV_HEADER})" if len(fields) != 6
                    else f"not a number: {next(f for f in fields if not _is_number(f))[:30]!r}")
            raise CandleFileError(f"{path}:{n}: {what}; fix or delete this row")
        rows.append(fields)
        numbers.append(n)
    arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return arr, numbers


def _parse_csv_rows(rows: list[str]) -> np.ndarray | None:
    """The common case at C speed: every row six plain numbers, no blank line inside and
    none but a final newline. None when anything else is there: the line-by-line parser
    then names the first bad row."""
    if rows and not rows[-1]:
        rows = rows[:-1]
    if not rows or not all(r.count(",") == 5 for r in rows):
        return None
    if _NOT_PLAIN.search("".join(rows)):
        return None
    try:
        return np.loadtxt(rows, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        return None


def _is_number(text: str) -> bool:
    return _CSV_NUMBER.fullmatch(text.strip()) is not None


def _looks_numeric(line: str) -> bool:
    parts = line.split(",")
    return len(parts) >= 2 and all(_is_number(p) for p in parts)


def _parse_json(path: Path, text: str) -> tuple[np.ndarray, list[int]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CandleFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); freqtrade "
                              f"candle files are [[timestamp, open, high, low, close, volume], "
                              f"...]") from None
    if not isinstance(data, list):
        raise CandleFileError(f"{path}:1: top level is a JSON {type(data).__name__}, expected "
                              f"a list of [timestamp, open, high, low, close, volume] rows")
    for i, row in enumerate(data):
        if (not isinstance(row, list) or len(row) != 6
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row)):
            raise CandleFileError(f"{path}:{_json_row_line(text, i)}: row {i + 1} is "
                                  f"{json.dumps(row)[:60]}, expected [timestamp, open, high, "
                                  f"low, close, volume] numbers; fix or delete this row")
    try:
        arr = np.array(data, dtype=np.float64).reshape(-1, 6)
    except OverflowError:   # an integer beyond float64
        i = next(i for i, row in enumerate(data) if not all(_fits_float(x) for x in row))
        raise CandleFileError(f"{path}:{_json_row_line(text, i)}: row {i + 1} has a number "
                              f"too large for a candle; fix or delete this row") from None
    return arr, _LazyJsonLines(text)


def _fits_float(x: int | float) -> bool:
    try:
        float(x)
    except OverflowError:
        return False
    return True


class _LazyJsonLines:
    """Row index -> line number in a JSON text, computed only when an error is reported."""

    def __init__(self, text: str):
        self.text = text

    def __getitem__(self, i: int) -> int:
        return _json_row_line(self.text, int(i))


def _json_row_line(text: str, index: int) -> int:
    """Line of the `index`-th row (an '[' at depth 2) in a JSON list of lists."""
    depth, row, line = 0, -1, 1
    for ch in text:
        if ch == "\n":
            line += 1
        elif ch == "[":
            depth += 1
            if depth == 2:
                row += 1
                if row == index:
                    return line
        elif ch == "]":
            depth -= 1
    return line


# --------------------------------------------------------------------------- validation

def validate_candles(arr: np.ndarray, where: Callable[[int], str], tf_ms: int | None = None,
                     name: str = "candles") -> np.ndarray:
    """Check (T, 6) candles; raise CandleFileError at the first bad row (`where(i)` names it:
    'path:line'), drop exact duplicate rows with a warning. Returns the checked array."""
    arr = np.asarray(arr, dtype=np.float64).reshape(-1, 6)
    if not len(arr):
        return arr
    ts, o, h, l, c, v = arr.T
    checks = [
        (~np.isfinite(arr).all(axis=1), lambda i: f"{_first_bad(arr[i])} is not a finite number",
         "fix or delete this row"),
        (ts != np.floor(ts), lambda i: f"timestamp {float(ts[i])!r} is not a whole number of ms",
         "timestamps are integers (ms since the epoch, UTC)"),
        (ts < 1e11, lambda i: f"timestamp {ts[i]:.0f} looks like seconds, not milliseconds",
         "multiply the timestamps by 1000"),
        (ts > 1e14, lambda i: f"timestamp {ts[i]:.0f} looks like microseconds or nanoseconds",
         "timestamps must be milliseconds since the epoch"),
        ((o <= 0) | (h <= 0) | (l <= 0) | (c <= 0),
         lambda i: f"non-positive price (open {o[i]:g}, high {h[i]:g}, low {l[i]:g}, "
                   f"close {c[i]:g})", "fix or delete this row"),
        (v < 0, lambda i: f"negative volume {v[i]:g}", "fix or delete this row"),
        ((o > MAX_PRICE) | (h > MAX_PRICE) | (l > MAX_PRICE) | (c > MAX_PRICE),
         lambda i: f"price above {MAX_PRICE:g} (open {o[i]:g}, high {h[i]:g}, low {l[i]:g}, "
                   f"close {c[i]:g})", "no market trades there: are the columns right?"),
        (v > MAX_VOLUME, lambda i: f"volume {v[i]:g} is above {MAX_VOLUME:g}",
         "no candle trades that much: are the columns right?"),
        (h < l, lambda i: f"high {h[i]:g} is below low {l[i]:g}",
         "fix the row (are the columns in the order timestamp,open,high,low,close,volume?)"),
        ((h < np.maximum(o, c)) | (l > np.minimum(o, c)),
         lambda i: f"open {o[i]:g} / close {c[i]:g} lie outside low {l[i]:g} .. high {h[i]:g}",
         "fix or delete this row"),
    ]
    if tf_ms:
        checks.append((ts % tf_ms != 0,
                       lambda i: f"timestamp {ts[i]:.0f} ({_utc(ts[i])}) is not on the "
                                 f"{_tf_name(tf_ms)} grid",
                       "is this file for another timeframe? (name it PAIR-<timeframe>.csv)"))
    for bad, what, fix in checks:
        if bad.any():
            _raise_at(bad, where, what, fix)
    return _check_order(arr, where, name)


def _check_order(arr: np.ndarray, where: Callable[[int], str], name: str) -> np.ndarray:
    ts = arr[:, 0]
    step = np.diff(ts)
    back = np.flatnonzero(step < 0)
    if back.size:
        i = int(back[0]) + 1
        raise CandleFileError(f"{where(i)}: timestamp {ts[i]:.0f} ({_utc(ts[i])}) is earlier "
                              f"than {ts[i - 1]:.0f} ({_utc(ts[i - 1])}) on the line before; "
                              f"sort the rows by timestamp ({len(back)} such row(s))")
    same = np.flatnonzero(step == 0) + 1
    if not same.size:
        return arr
    differ = same[(arr[same] != arr[same - 1]).any(axis=1)]
    if differ.size:
        i = int(differ[0])
        raise CandleFileError(f"{where(i)}: timestamp {ts[i]:.0f} ({_utc(ts[i])}) repeats the "
                              f"line before with different values; keep the right row and "
                              f"delete the other")
    log.warning("%s: dropped %d exact duplicate row(s) (first at %s); safe: each repeats the "
                "row before it value for value", name, same.size, where(int(same[0])))
    return np.delete(arr, same, axis=0)


def _raise_at(bad: np.ndarray, where: Callable[[int], str], what: Callable[[int], str],
              fix: str) -> None:
    rows = np.flatnonzero(bad)
    i = int(rows[0])
    more = f" ({rows.size - 1} more row(s) like it)" if rows.size > 1 else ""
    raise CandleFileError(f"{where(i)}: {what(i)}{more}; {fix}")


def _first_bad(row: np.ndarray) -> str:
    j = int(np.flatnonzero(~np.isfinite(row))[0])
    return f"{COLUMNS[j]} {float(row[j])!r}"


def _utc(ts_ms: float) -> str:
    try:
        return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _tf_name(tf_ms: int) -> str:
    for unit in ("M", "w", "d", "h", "m", "s"):
        if tf_ms % _UNITS_MS[unit] == 0:
            return f"{tf_ms // _UNITS_MS[unit]}{unit}"
    return f"{tf_ms}ms"


def gaps(arr: np.ndarray, tf_ms: int) -> list[tuple[int, int]]:
    """(first missing ts, missing count) for every hole in a pair's candle sequence."""
    ts = arr[:, 0].astype(np.int64)
    step = np.diff(ts)
    at = np.flatnonzero(step > tf_ms)
    return [(int(ts[i] + tf_ms), int(step[i] // tf_ms - 1)) for i in at]


# --------------------------------------------------------------------------- resampling
_WEEK_MS = _UNITS_MS["w"]
_WEEK_OFFSET_MS = 4 * _UNITS_MS["d"]    # the epoch is a Thursday; Binance weeks start Monday


def timeframe_multiple(from_tf: str, to_tf: str) -> int:
    """How many from_tf candles make one to_tf candle: ('5m', '1h') -> 12.

    ValueError (one line, naming both) when to_tf is shorter than from_tf, not a whole multiple
    of it, or either is in months (calendar months have no fixed length)."""
    if from_tf.strip().endswith("M") or to_tf.strip().endswith("M"):
        raise ValueError(f"cannot resample {from_tf!r} to {to_tf!r}: months are not supported")
    from_ms, to_ms = timeframe_to_ms(from_tf), timeframe_to_ms(to_tf)
    if to_ms < from_ms or to_ms % from_ms:
        raise ValueError(f"cannot resample {from_tf!r} to {to_tf!r}: {to_tf} is not a whole "
                         f"multiple of {from_tf}")
    return to_ms // from_ms


def _bucket_offsets(from_ms: int, to_ms: int) -> tuple[int, int]:
    """Where from_ms candles and to_ms buckets start relative to the epoch (ms), checked."""
    if from_ms <= 0 or to_ms <= 0 or to_ms < from_ms or to_ms % from_ms:
        raise ValueError(f"cannot resample {_tf_name(from_ms)} to {_tf_name(to_ms)}: "
                         f"{_tf_name(to_ms)} is not a whole multiple of {_tf_name(from_ms)}")
    if to_ms % _UNITS_MS["M"] == 0:
        raise ValueError(f"cannot resample to {_tf_name(to_ms)}: months are not supported")
    from_off, to_off = (0 if tf % _WEEK_MS else _WEEK_OFFSET_MS for tf in (from_ms, to_ms))
    if (to_off - from_off) % from_ms:
        raise ValueError(f"cannot resample {_tf_name(from_ms)} to {_tf_name(to_ms)}: "
                         f"{_tf_name(from_ms)} candles do not tile Monday-aligned weeks")
    return from_off, to_off


def resample(candles: np.ndarray, from_ms: int, to_ms: int,
             now_ms: int | None = None) -> np.ndarray:
    """Candles at timeframe from_ms -> candles at the longer timeframe to_ms, no look-ahead.

    candles: (T, 6) rows [open_time_ms, open, high, low, close, volume], open times sorted,
    unique and on the from_ms grid (ts % from_ms == 0; Mondays for weekly candles); gaps are
    allowed. Returns an (N, 6) float64 array of the same layout, one row per emitted bucket,
    in time order.

    Rules:
    - to_ms must be a whole multiple of from_ms (equal is allowed: a copy); months are not
      supported; otherwise ValueError with a one-line message.
    - Buckets are aligned to the epoch as exchanges do: start = ts - ts % to_ms. Weekly
      buckets (to_ms a multiple of one week) start Monday 00:00 UTC, as on Binance (4 days
      after the epoch's Thursday).
    - A bucket: open of its first sub-candle, max of highs, min of lows, close of its last
      sub-candle, sum of volumes; its timestamp is the bucket start.
    - A bucket is emitted only when it is complete in time: its last sub-candle slot
      (start + to_ms - from_ms) is <= the last input candle's open time, or, when now_ms is
      given, start + to_ms <= now_ms. A bucket missing sub-candles (no trades on the exchange)
      is therefore still emitted once a later candle exists or its time has ended; the
      current, unfinished bucket is dropped. Buckets with no sub-candle produce no row.
    """
    from_ms, to_ms = int(from_ms), int(to_ms)
    from_off, offset = _bucket_offsets(from_ms, to_ms)
    arr = np.asarray(candles, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise ValueError(f"resample wants (T, 6) candles, got shape {arr.shape}")
    if not len(arr):
        return np.empty((0, 6), dtype=np.float64)
    ts = arr[:, 0].astype(np.int64)
    if len(ts) > 1 and not np.all(np.diff(ts) > 0):
        raise ValueError("resample wants candles with sorted, unique open times")
    if np.any((ts - from_off) % from_ms):
        raise ValueError(f"resample: open times are not on the {_tf_name(from_ms)} grid")
    start = ts - (ts - offset) % to_ms
    complete = start + (to_ms - from_ms) <= ts[-1]
    if now_ms is not None:
        complete |= start + to_ms <= int(now_ms)
    n = int(np.count_nonzero(complete))     # start is non-decreasing: complete is a prefix
    if n == 0:
        return np.empty((0, 6), dtype=np.float64)
    start, arr = start[:n], arr[:n]
    first = np.flatnonzero(np.r_[True, start[1:] != start[:-1]])
    last = np.r_[first[1:] - 1, n - 1]
    out = np.empty((len(first), 6), dtype=np.float64)
    out[:, 0] = start[first]
    out[:, 1] = arr[first, 1]
    out[:, 2] = np.maximum.reduceat(arr[:, 2], first)
    out[:, 3] = np.minimum.reduceat(arr[:, 3], first)
    out[:, 4] = arr[last, 4]
    out[:, 5] = np.add.reduceat(arr[:, 5], first)
    return out


def load_candles(data_dir: str | os.PathLike, timeframe: str,
                 pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Symbol -> validated candles for the pairs (all files of the timeframe when None).

    CandleFileError when the directory has no such files, a requested pair has none, or a
    file is bad or holds no candles.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CandleFileError(f"{data_dir}: not a directory; pass --data-dir with the folder "
                              f"that holds the candle files (see download-data)")
    files = find_candle_files(data_dir, timeframe)
    if pairs:
        missing = [p for p in pairs if p not in files]
        if missing:
            raise CandleFileError(f"{data_dir}: no {timeframe} candle file for "
                                  f"{', '.join(missing)} (expected e.g. "
                                  f"{candle_path(data_dir, missing[0], timeframe).name}); "
                                  f"run download-data or fix --pairs")
        files = {p: files[p] for p in pairs}
    if not files:
        raise CandleFileError(f"{data_dir}: no {timeframe} candle files (named like "
                              f"ETH_USDT-{timeframe}.csv or .json); run download-data or "
                              f"pass another --data-dir / --timeframe")
    out = {}
    for symbol, path in files.items():
        out[symbol] = read_candles(path, timeframe)
        if not len(out[symbol]):
            raise CandleFileError(f"{path}: no candles, only the header; delete the file or "
                                  f"download it again")
    return out


# --------------------------------------------------------------------------- writing

def format_rows(arr: np.ndarray) -> str:
    """CSV lines (each ending in a newline) with round-trip exact numbers."""
    return "".join(f"{int(r[0])},{r[1]!r},{r[2]!r},{r[3]!r},{r[4]!r},{r[5]!r}\n"
                   for r in arr.tolist())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:   # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_candles(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write a whole CSV file atomically (temp file, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(CSV_HEADER + "\n" + format_rows(arr))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def append_candles(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Append rows to a CSV file (created atomically with its header if missing) and fsync,
    so an interruption loses at most the rows being written (see repair_tail)."""
    path = Path(path)
    if not path.exists():
        write_candles(path, arr)
        return
    with open(path, "a", encoding="utf-8", newline="\n") as fh:
        fh.write(format_rows(arr))
        fh.flush()
        os.fsync(fh.fileno())


def repair_tail(path: Path) -> int:
    """Cut an incomplete last line (no newline: a write the interruption tore) off a CSV this
    module writes; returns the bytes removed. Safe: every complete row ends with a newline."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(max(0, size - 65536))
        tail = fh.read()
        if tail.endswith(b"\n"):
            return 0
        cut = tail.rfind(b"\n")
        keep = size - len(tail) + cut + 1 if cut >= 0 else 0
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("%s: removed an incomplete last line (%d bytes) left by an interrupted "
                "write; it is downloaded again", path, size - keep)
    return size - keep


# --------------------------------------------------------------------------- download

@dataclass(frozen=True)
class DownloadResult:
    symbol: str
    path: Path
    written: int            # rows appended or prepended in this run
    first_ms: int | None    # the file's first and last candle after the run
    last_ms: int | None
    pages: int


@dataclass(frozen=True)
class _Plan:
    symbol: str
    path: Path
    first_ms: int | None    # the stored file's first and last candle (None: no file yet)
    last_ms: int | None
    start_ms: int           # first candle wanted
    until_ms: int           # candles with ts < until_ms have closed
    tf_ms: int

    @property
    def prepend_until(self) -> int | None:
        """The first stored candle when the file starts after start_ms (history missing)."""
        if self.first_ms is not None and self.first_ms > self.start_ms:
            return self.first_ms
        return None

    @property
    def append_since(self) -> int:
        """Resume point: the candle after the last stored one (or start_ms if later)."""
        if self.last_ms is not None:
            return max(self.last_ms + self.tf_ms, self.start_ms)
        return self.start_ms

    def slots(self) -> int:
        """Candle slots this plan covers (the progress bar's share)."""
        before = (self.prepend_until - self.start_ms) // self.tf_ms if self.prepend_until else 0
        return before + max(0, (self.until_ms - self.append_since) // self.tf_ms)


def download(client, symbols: Sequence[str], timeframe: str, days: float,
             data_dir: str | os.PathLike, progress: Progress | None = None, *,
             now_ms: int | None = None, limit: int = PAGE_LIMIT) -> list[DownloadResult]:
    """Fetch the last `days` of closed candles per symbol into DATA_DIR/PAIR-TF.csv.

    Extends existing files: appends after the last stored candle (resume) and, when the file
    starts later than asked, fetches the missing history and rewrites the file atomically.
    Each page is validated, then written with fsync, so an interruption loses at most the
    page in flight and a re-run resumes. Rows are never duplicated or out of order.
    `client` is an exchange.ExchangeClient; `progress(slots, total)` is called per page.
    """
    tf = timeframe_to_ms(timeframe)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    now = int(client.clock() * 1000) if now_ms is None else int(now_ms)
    until = now // tf * tf
    start = (now - int(days * 86_400_000)) // tf * tf
    plans = [_plan(data_dir, s, timeframe, tf, start, until) for s in symbols]
    total = sum(p.slots() for p in plans)
    report = progress or (lambda slots, total_: None)
    return [_download_one(client, p, timeframe, limit, lambda n: report(n, total))
            for p in plans]


def _plan(data_dir: Path, symbol: str, timeframe: str, tf: int, start: int,
          until: int) -> _Plan:
    """What to fetch for one pair; an existing file is repaired if torn, then validated."""
    path = candle_path(data_dir, symbol, timeframe)
    first = last = None
    if path.exists():
        repair_tail(path)
        stored = read_candles(path, timeframe)
        if len(stored):
            first, last = int(stored[0, 0]), int(stored[-1, 0])
    return _Plan(symbol, path, first, last, start, until, tf)


def _download_one(client, plan: _Plan, timeframe: str, limit: int,
                  report: Callable[[int], None]) -> DownloadResult:
    pages = written = 0
    exchange = getattr(client, "id", "exchange")
    first, last = plan.first_ms, plan.last_ms
    if plan.prepend_until is not None:       # history before the file: all or nothing
        got = []
        for page, covered in _pages(client, plan.symbol, timeframe, plan.tf_ms, plan.start_ms,
                                    plan.prepend_until, limit, exchange):
            got.append(page)
            pages += 1
            report(covered)
        new = np.concatenate(got) if got else np.empty((0, 6))
        if len(new):
            write_candles(plan.path, np.concatenate([new, read_candles(plan.path, timeframe)]))
            written += len(new)
            first = int(new[0, 0])
            log.info("%s: added %d earlier candles before %s", plan.symbol, len(new),
                     _utc(plan.prepend_until))
    elif last is not None and plan.append_since > last + plan.tf_ms:
        log.warning("%s: the file ends at %s, before the %s asked for; the file will have a "
                    "gap there", plan.symbol, _utc(last), _utc(plan.start_ms))
    for page, covered in _pages(client, plan.symbol, timeframe, plan.tf_ms, plan.append_since,
                                plan.until_ms, limit, exchange):
        if last is not None:                 # never rewrite what is stored
            page = page[page[:, 0] > last]
        if len(page):
            append_candles(plan.path, page)
            written += len(page)
            first = int(page[0, 0]) if first is None else first
            last = int(page[-1, 0])
        pages += 1
        report(covered)
    return DownloadResult(plan.symbol, plan.path, written, first, last, pages)


def _pages(client, symbol: str, timeframe: str, tf: int, since: int, until: int, limit: int,
           exchange: str) -> Iterator[tuple[np.ndarray, int]]:
    """(validated page of closed candles with since <= ts < until, slots covered) per request."""
    while since < until:
        rows = client.fetch_ohlcv(symbol, timeframe, since=since, limit=limit)
        page = np.asarray(rows or [], dtype=np.float64).reshape(-1, 6)
        page = page[(page[:, 0] >= since) & (page[:, 0] < until)]
        if not len(page):
            yield page, (until - since) // tf           # nothing more: the rest is covered
            return
        page = page[np.argsort(page[:, 0], kind="stable")]
        keep_last = np.append(np.diff(page[:, 0]) != 0, True)   # a repeated candle: newest wins
        page = page[keep_last]
        page = validate_candles(page, lambda i, p=page: f"{exchange} {symbol} candle "
                                f"{_utc(p[i, 0])} UTC", tf, f"{exchange} {symbol}")
        nxt = int(page[-1, 0]) + tf
        yield page, (min(nxt, until) - since) // tf
        since = nxt


# --------------------------------------------------------------------------- for the command line

class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (a CLI test runner swaps it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_cli_logging(level: str = "INFO") -> None:
    """Log warnings (e.g. about repaired files) to stderr unless logging is already set up;
    INFO chatter stays off a command's output unless LOG_LEVEL=DEBUG."""
    if not logging.getLogger().handlers:
        level = "DEBUG" if level == "DEBUG" else "WARNING"
        logging.basicConfig(level=getattr(logging, level), stream=_CurrentStderr(),
                            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")


def split_pairs(text: str | None) -> list[str]:
    """'eth/usdt, BTC/USDT' -> ['ETH/USDT', 'BTC/USDT']."""
    return [p.strip().upper() for p in (text or "").split(",") if p.strip()]


def download_problem(client: Any, symbols: Sequence[str], timeframe: str,
                     exchange: str) -> str | None:
    """Why download-data cannot fetch these pairs at this timeframe from the client's
    exchange (one line naming the option), or None. Loads the exchange's markets."""
    markets = client.load_markets()
    for pair in symbols:
        if pair not in markets:
            return f"--pairs: {_not_a_market(pair, markets, exchange)}"
    offered = getattr(client.ccxt, "timeframes", None) or {}
    if offered and timeframe not in offered:
        return (f"--timeframe {timeframe} is not offered by {exchange} (offered: "
                f"{', '.join(offered)})")
    return None


def _not_a_market(pair: str, markets: Mapping[str, Any], exchange: str) -> str:
    close = difflib.get_close_matches(pair, list(markets), n=1)
    hint = f"did you mean {close[0]}?" if close else "pairs look like ETH/USDT"
    return f"{pair} is not a market on {exchange} ({hint})"


def describe_download(result: DownloadResult) -> str:
    """One line per pair for the end of download-data."""
    span = (f"{_utc(result.first_ms)} .. {_utc(result.last_ms)} UTC"
            if result.first_ms is not None and result.last_ms is not None else "no candles")
    return (f"{result.symbol:<14} +{result.written:>6} candles in {result.pages:>3} page(s)  "
            f"{result.path}  ({span})")


__all__ = ["CandleFileError", "CSV_HEADER", "DownloadResult", "append_candles", "candle_path",
           "describe_download", "download", "download_problem", "file_stem", "find_candle_files",
           "gaps", "load_candles", "parse_file_name", "read_candles", "repair_tail",
           "setup_cli_logging", "split_pairs", "timeframe_to_ms", "validate_candles",
           "write_candles"]

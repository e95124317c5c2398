"""Training the entry model: bounded training data, retraining, walk-forward evaluation.

TrainingData holds the labelled records (bounded, preallocated, saved to DATA_DIR);
Retrainer fits on a snapshot of them in a daemon thread and swaps the new model in while
prediction cycles run; `python model_training.py evaluate FILES...` reports a walk-forward
evaluation on candle CSV files.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from candle_files import parse_file_name, read_candles, timeframe_to_ms
from features import FEATURE_NAMES
from labels import Samples, sample_key, samples_from_candles
from ml_model import (DEFAULT_MODEL_KIND, MODEL_KINDS, MLModel, data_file, load_model,
                      make_estimator, owner_only, positive_proba, quality,
                      save_model, train_model, training_file, write_private)
from performance_monitor import PerformanceMonitor, get_monitor

log = logging.getLogger(__name__)

NOT_READY_RETRY = 300.0         # market seconds between attempts while no model is ready
SAVE_EXTREME_FRACTION = 0.5     # of the 5,000 saved: half most extreme |return|, half most recent
TRIM_EXTREME_FRACTION = 0.25    # of the 15,000 kept on trim: a quarter extreme, the rest recent
SOURCES = ("history", "trade")


# --------------------------------------------------------------------------- training data

def important_indices(ret: np.ndarray, time_ms: np.ndarray, n: int,
                      extreme_fraction: float) -> np.ndarray:
    """Indices of the n records to keep: the most extreme |ret| first, the rest the most
    recent of the others (no duplicates); sorted by position."""
    total = len(ret)
    if total <= n:
        return np.arange(total)
    n_extreme = int(round(n * extreme_fraction))
    chosen = np.zeros(total, dtype=bool)
    chosen[np.argsort(-np.abs(np.nan_to_num(ret)), kind="stable")[:n_extreme]] = True
    rest = np.flatnonzero(~chosen)
    chosen[rest[np.argsort(time_ms[rest], kind="stable")[rest.size - (n - n_extreme):]]] = True
    return np.flatnonzero(chosen)


def _records(X: np.ndarray, y: np.ndarray, ret: np.ndarray, time_ms: np.ndarray,
             end_ms: np.ndarray, source: str, keys: np.ndarray | None) -> dict[str, np.ndarray]:
    """TrainingData's fields for new records, in their storage dtypes; the source is
    folded into bit 31 of the key (sample_key leaves it free)."""
    X = np.asarray(X, dtype=np.float32).reshape(-1, len(FEATURE_NAMES))
    m = len(X)
    src = SOURCES.index(source)
    k = np.zeros(m, np.uint64) if keys is None else np.asarray(keys, np.uint64).reshape(m)
    return {"X": X, "y": np.asarray(y, np.int8).reshape(m),
            "ret": np.asarray(ret, np.float32).reshape(m),
            "time_ms": np.asarray(time_ms, np.int64).reshape(m),
            "end_ms": np.asarray(end_ms, np.int64).reshape(m),
            "source": np.full(m, src, np.uint8), "key": k | np.uint64(src << 31)}


class TrainingSnapshot(NamedTuple):
    """A copy of TrainingData's records (source: an index into SOURCES)."""
    X: np.ndarray
    y: np.ndarray
    ret: np.ndarray
    time_ms: np.ndarray
    end_ms: np.ndarray
    source: np.ndarray


class TrainingData:
    """Bounded, preallocated training records (features, label, return, time, source).

    At most `trim_at` (20,000) records are ever held; passing it trims to `keep` (15,000):
    the oldest go first, except the most extreme outcomes (a quarter of what is kept).
    `save` writes the `save_count` (5,000) most important: half the most extreme |return|,
    half the most recent. Thread-safe.
    """

    _FIELDS = ("X", "y", "ret", "time_ms", "end_ms", "source", "key")

    def __init__(self, keep: int = 15_000, trim_at: int = 20_000, save_count: int = 5_000):
        self.keep, self.trim_at, self.save_count = keep, trim_at, save_count
        n_features = len(FEATURE_NAMES)
        self._lock = threading.Lock()
        self._X = np.empty((trim_at, n_features), dtype=np.float32)
        self._y = np.empty(trim_at, dtype=np.int8)
        self._ret = np.empty(trim_at, dtype=np.float32)
        self._time_ms = np.empty(trim_at, dtype=np.int64)
        self._end_ms = np.empty(trim_at, dtype=np.int64)
        self._source = np.empty(trim_at, dtype=np.uint8)
        self._key = np.empty(trim_at, dtype=np.uint64)
        self._n = 0
        self.added_total = 0     # records ever accepted (drives RETRAIN_MIN_NEW_SAMPLES)

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated storage (fixed, whatever the fill level)."""
        return sum(getattr(self, "_" + f).nbytes for f in self._FIELDS)

    def add(self, X: np.ndarray, y: np.ndarray, ret: np.ndarray, time_ms: np.ndarray,
            end_ms: np.ndarray, source: str = "history",
            keys: np.ndarray | None = None) -> int:
        """Append records; with `keys`, records already held (same key and source) are
        skipped. Returns how many were accepted."""
        new = _records(X, y, ret, time_ms, end_ms, source, keys)
        with self._lock:
            if keys is not None:
                new = self._unseen(new)
            count = len(new["y"])
            if self._n + count > self.trim_at:
                self._trim_with(new)
            else:
                for f, a in new.items():
                    getattr(self, "_" + f)[self._n: self._n + count] = a
                self._n += count
            self.added_total += count
        return count

    def _unseen(self, new: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The records of `new` whose key is neither held nor repeated earlier in `new`."""
        _, first = np.unique(new["key"], return_index=True)
        fresh = np.zeros(len(new["key"]), dtype=bool)
        fresh[first] = True
        fresh &= ~np.isin(new["key"], self._key[: self._n])
        return {f: a[fresh] for f, a in new.items()}

    def add_samples(self, samples: Samples, source: str = "history") -> int:
        """Add labelled samples, skipping those already held; returns how many were new."""
        return self.add(samples.X, samples.y, samples.ret, samples.time_ms,
                        samples.label_end_ms, source, keys=samples.key)

    def add_trade(self, symbol: str, features: Sequence[float], net_return: float,
                  entry_ms: int, exit_ms: int) -> int:
        """A closed trade of the bot: its entry features and its net outcome (fees included)."""
        return self.add(np.asarray(features, np.float32), [int(net_return > 0)], [net_return],
                        [entry_ms], [exit_ms], "trade", keys=sample_key(symbol, [entry_ms]))

    def _trim_with(self, new: Mapping[str, np.ndarray]) -> None:
        """Hold the `keep` most important of the held and new records, in time order."""
        merged = {f: np.concatenate([getattr(self, "_" + f)[: self._n], new[f]])
                  for f in self._FIELDS}
        idx = important_indices(merged["ret"], merged["time_ms"], self.keep, TRIM_EXTREME_FRACTION)
        idx = idx[np.argsort(merged["time_ms"][idx], kind="stable")]
        for f in self._FIELDS:
            getattr(self, "_" + f)[: idx.size] = merged[f][idx]
        self._n = idx.size
        log.info("training data trimmed to %d records (limit %d)", self._n, self.trim_at)

    def snapshot(self) -> TrainingSnapshot:
        """A copy of the records, safe to train on while the bot keeps adding."""
        with self._lock:
            return TrainingSnapshot(*(getattr(self, "_" + f)[: self._n].copy()
                                      for f in TrainingSnapshot._fields))

    def save(self, path: str | os.PathLike) -> int:
        """Write the `save_count` most important records to an .npz (atomic, through a
        temporary name unique to the process, readable by the owner only); returns count."""
        with self._lock:
            idx = important_indices(self._ret[: self._n], self._time_ms[: self._n],
                                    self.save_count, SAVE_EXTREME_FRACTION)
            arrays = {f: getattr(self, "_" + f)[idx] for f in self._FIELDS}
        write_private(path, lambda fh: np.savez_compressed(
            fh, feature_names=np.array(FEATURE_NAMES), **arrays))
        return idx.size

    def load(self, path: str | os.PathLike) -> int:
        """Add the records of a file written by `save`; a missing, corrupt or incompatible
        file is logged and ignored. Returns how many were loaded."""
        path = Path(path)
        if not path.is_file():
            return 0
        owner_only(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                names = tuple(str(n) for n in f["feature_names"])
                if names != FEATURE_NAMES:
                    log.warning("%s: saved features %s differ from %s; ignoring it",
                                path, names, FEATURE_NAMES)
                    return 0
                a = {fld: f[fld] for fld in self._FIELDS}
            by_source = [(s, a["source"] == i) for i, s in enumerate(SOURCES)]
            keys = a["key"] & ~np.uint64(1 << 31)
            return sum(self.add(a["X"][m], a["y"][m], a["ret"][m], a["time_ms"][m],
                                a["end_ms"][m], s, keys=keys[m]) for s, m in by_source if m.any())
        except Exception as exc:   # a damaged file must never stop the bot
            log.warning("%s: unreadable training data (%s); starting without it", path, exc)
            return 0


# --------------------------------------------------------------------------- retraining

SamplesProvider = Callable[[], Samples | None]


class Retrainer:
    """Trains in a daemon thread on a snapshot of the training data and swaps the new model
    in atomically; the caller's cycle only ever calls the cheap `maybe_retrain`.

    On start it loads its mode's model file (DATA_DIR/model-paper.joblib or
    model-live.joblib) and saved training data; with no usable model file it trains at once
    (the strategy decides alone meanwhile). Paper and live never share files. A
    `samples_provider` runs in the training thread, so it must build its samples from a
    copy of the candles (e.g. samples_from_candles on the scanner's snapshot). Each fit is
    timed as `train_model` into `monitor` (default: the process-wide get_monitor()).
    """

    def __init__(self, model: MLModel, data: TrainingData, data_dir: str | os.PathLike,
                 samples_provider: SamplesProvider | None = None, *,
                 retrain_interval: float = 21600.0, min_new_samples: int = 500,
                 min_confidence: float = 0.55, kind: str = DEFAULT_MODEL_KIND,
                 factory: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time, persist: bool = True,
                 mode: str = "paper", monitor: PerformanceMonitor | None = None):
        self.model, self.data, self.data_dir = model, data, Path(data_dir)
        self.monitor = monitor
        self.mode = mode
        self.training_path = self.data_dir / training_file(mode)   # checks the mode
        self.samples_provider = samples_provider
        self.retrain_interval, self.min_new_samples = retrain_interval, min_new_samples
        self.min_confidence, self.kind, self.factory = min_confidence, kind, factory
        self.clock, self.persist = clock, persist
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending_provider: SamplesProvider | None = None
        self._last_attempt: float | None = None
        self._seen_total = 0

    @classmethod
    def from_config(cls, config: Any, model: MLModel, data: TrainingData,
                    samples_provider: SamplesProvider | None = None,
                    clock: Callable[[], float] = time.time,
                    monitor: PerformanceMonitor | None = None) -> "Retrainer":
        """RETRAIN_INTERVAL, RETRAIN_MIN_NEW_SAMPLES and ML_MIN_CONFIDENCE from the config,
        persisting to its DATA_DIR, in the files of its mode (paper or live)."""
        return cls(model, data, config.data_dir, samples_provider,
                   retrain_interval=config.retrain_interval,
                   min_new_samples=config.retrain_min_new_samples,
                   min_confidence=config.ml_min_confidence, clock=clock, mode=config.mode,
                   monitor=monitor)

    def start(self, load: bool = True) -> "Retrainer":
        """Start the thread (before any other call); it first loads what DATA_DIR holds and
        trains at once when no usable model was there."""
        if self.persist:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self._idle.clear()
        self._thread = threading.Thread(target=self._run, args=(load,), name="ml-retrainer",
                                        daemon=True)
        self._thread.start()
        return self

    def request_training(self, samples_provider: SamplesProvider | None = None) -> None:
        """Ask for a training as soon as the thread is free; returns at once."""
        with self._lock:
            self._pending_provider = samples_provider or self.samples_provider
            self._idle.clear()
            self._wake.set()

    def maybe_retrain(self, now: float | None = None) -> bool:
        """Cheap per-cycle check: request a training when RETRAIN_INTERVAL (market seconds)
        has passed since the last attempt or RETRAIN_MIN_NEW_SAMPLES records came in."""
        now = self.clock() if now is None else now
        if not self._idle.is_set():
            return False
        interval = (self.retrain_interval if self.model.is_ready()
                    else min(self.retrain_interval, NOT_READY_RETRY))
        due = (self._last_attempt is None
               or now - self._last_attempt >= interval
               or self.data.added_total - self._seen_total >= self.min_new_samples)
        if due:
            self.request_training()
        return due

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no training is pending or running (for tests)."""
        return self._idle.wait(timeout)

    @property
    def training(self) -> bool:
        """Whether a training is pending or running."""
        return not self._idle.is_set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the thread (a running fit finishes first) and save the training data."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.persist and len(self.data):
            self.data.save(self.training_path)

    def _run(self, load: bool) -> None:
        """The thread: load what DATA_DIR holds, then train whenever woken until stopped."""
        if load and self.persist:
            self._load_saved()
        if not self.model.is_ready():
            self.request_training()
        self._set_idle_unless_requested()
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                break
            with self._lock:
                provider, self._pending_provider = self._pending_provider, None
                self._wake.clear()
            try:
                self._train_once(provider)
            except Exception:   # keep the thread (and the bot) alive
                log.exception("model training failed")
            self._set_idle_unless_requested()
        self._idle.set()

    def _set_idle_unless_requested(self) -> None:
        with self._lock:
            if not self._wake.is_set():
                self._idle.set()

    def _load_saved(self) -> None:
        """Load the saved training data and model file (a usable model is swapped in)."""
        training = (data_file(self.data_dir, self.training_path.name) if self.mode == "paper"
                    else self.training_path)
        loaded = self.data.load(training)
        if loaded:
            log.info("loaded %d training records from %s", loaded, training)
        saved = load_model(self.data_dir, self.mode)
        if saved is not None:
            version = self.model.swap(*saved)
            self._last_attempt = float(saved[1].get("trained_at", self.clock()))
            self._seen_total = self.data.added_total
            log.info("model v%d loaded from %s (%s, %s samples, AUC %.3f)", version,
                     self.data_dir, saved[1].get("kind"), saved[1].get("samples"),
                     saved[1].get("auc", float("nan")))

    def _train_once(self, provider: SamplesProvider | None) -> None:
        """Add the provider's samples, fit on a snapshot, swap the model in and save it."""
        self._last_attempt = self.clock()
        if provider is not None:
            samples = provider()
            if samples is not None:
                self.data.add_samples(samples)
        self._seen_total = self.data.added_total
        snap = self.data.snapshot()
        with (self.monitor or get_monitor()).timing("train_model"):
            result = train_model(snap.X, snap.y, snap.time_ms, snap.end_ms, snap.ret,
                                 kind=self.kind, min_confidence=self.min_confidence,
                                 trained_at=self._last_attempt, factory=self.factory)
        if result is None:   # train_model logged why
            return
        _log_trained(self.model.swap(*result), result[1])
        if self.persist:
            save_model(self.data_dir, *result, mode=self.mode)
            self.data.save(self.training_path)


def _log_trained(version: int, meta: Mapping[str, Any]) -> None:
    log.info("model v%d trained (%s) on %d samples in %.2f s; out-of-sample: AUC %.3f, "
             "precision@%.2f %.3f on %.1f%% of entries, base rate %.3f", version,
             meta["kind"], meta["samples"], meta["fit_seconds"], meta["auc"],
             meta["threshold"], meta["precision_at_threshold"],
             100 * meta.get("selected_share", float("nan")), meta["base_rate"])


# --------------------------------------------------------------------------- evaluation

_TestRows = list[tuple[str, Samples, np.ndarray]]   # (symbol, its samples, rows under test)


def walk_forward(samples_by_pair: Mapping[str, Samples], kinds: Sequence[str], folds: int = 3,
                 first_test: float = 0.4, threshold: float = 0.55) -> dict[str, Any]:
    """Expanding-window evaluation: the last (1 - first_test) of each pair's time is cut into
    `folds` test blocks; each is predicted by models fitted on everything before it (all
    pairs, labels ending before the block purged). Returns pooled metrics per kind."""
    per_pair = [_time_span(symbol, s) for symbol, s in samples_by_pair.items()]
    edges = np.linspace(first_test, 1.0, folds + 1)
    preds: dict[str, list] = {k: [] for k in (*kinds, "base_rate")}
    truth, rets, pairs = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        X_fit, y_fit, test = _fold(per_pair, lo, hi)
        X_test = np.concatenate([s.X[r] for _, s, r in test])
        truth.append(np.concatenate([s.y[r] for _, s, r in test]))
        rets.append(np.concatenate([s.ret[r] for _, s, r in test]))
        pairs += [sym for sym, _, r in test for _ in range(int(r.sum()))]
        for kind in kinds:
            preds[kind].append(positive_proba(make_estimator(kind).fit(X_fit, y_fit), X_test))
        preds["base_rate"].append(np.full(len(X_test), y_fit.mean()))
    y, ret, pairs_arr = np.concatenate(truth), np.concatenate(rets), np.array(pairs)
    result: dict[str, Any] = {"n_test": int(y.size)}
    for kind, chunks in preds.items():
        result[kind] = _pooled_quality(y, np.concatenate(chunks), ret, pairs_arr,
                                       samples_by_pair, threshold)
    return result


def _time_span(symbol: str, s: Samples) -> tuple[str, Samples, np.ndarray, Any, Any]:
    """(symbol, samples, each sample's fraction of the pair's time span, first, last time)."""
    t0, t1 = s.time_ms[0], s.time_ms[-1]
    return symbol, s, (s.time_ms - t0) / max(t1 - t0, 1), t0, t1


def _fold(per_pair: Sequence[tuple], lo: float, hi: float
          ) -> tuple[np.ndarray, np.ndarray, _TestRows]:
    """One fold: the training X and y (every pair's labels that ended before its test block)
    and the test rows (the [lo, hi) share of each pair's time; the last block keeps its end)."""
    fit_x, fit_y, test = [], [], []
    for symbol, s, frac, t0, t1 in per_pair:
        fit = s.label_end_ms <= t0 + lo * (t1 - t0)
        fit_x.append(s.X[fit])
        fit_y.append(s.y[fit])
        test.append((symbol, s, (frac >= lo) & ((frac < hi) | (hi == 1.0))))
    return np.concatenate(fit_x), np.concatenate(fit_y), test


def _pooled_quality(y: np.ndarray, p: np.ndarray, ret: np.ndarray, pairs: np.ndarray,
                    symbols: Iterable[str], threshold: float) -> dict[str, Any]:
    """`quality` over all test rows, plus the AUC per pair and the reliability table."""
    q: dict[str, Any] = quality(y, p, ret, threshold)
    q["per_pair_auc"] = {sym: quality(y[pairs == sym], p[pairs == sym], None, threshold)["auc"]
                         for sym in symbols}
    q["reliability"] = reliability_table(y, p)
    return q


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int = 5) -> list[tuple]:
    """(bin low, bin high, count, mean predicted, observed rate) over quantile bins of p."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    return [(float(edges[b]), float(edges[b + 1]), int((which == b).sum()),
             float(p[which == b].mean()), float(y[which == b].mean()))
            for b in range(len(edges) - 1) if (which == b).any()]


def evaluate_files(paths: Sequence[str | os.PathLike], strategy: Any = None,
                   params: Any = None, kinds: Sequence[str] = ("logistic", "hgb"),
                   folds: int = 3, threshold: float = 0.55) -> str:
    """Time-ordered (walk-forward) evaluation of the meta-labelling model on candle files:
    the strategy's signals (default: the built-in default strategy with its default exits),
    labelled by whether its trade paid after costs -> report."""
    from candle_files import resample
    from domain import StrategyParams
    from strategies import decision_timeframe, load_strategy

    strategy = strategy or load_strategy()
    by_pair = {}
    for path in map(Path, paths):
        symbol, timeframe = parse_file_name(path.name) or (path.stem, "5m")
        decide_on = decision_timeframe(strategy, timeframe)
        candles = read_candles(path)
        if decide_on != timeframe:
            candles = resample(candles, timeframe_to_ms(timeframe), timeframe_to_ms(decide_on))
        step = params or StrategyParams(timeframe_ms=timeframe_to_ms(decide_on))
        by_pair[symbol] = samples_from_candles({symbol: candles}, strategy, step)
    result = walk_forward(by_pair, kinds, folds=folds, threshold=threshold)
    lines = [f"walk-forward, {folds} expanding folds over the last 60% of each file; "
             f"{result['n_test']} test samples: the signals of {strategy.name}, labelled by "
             f"their trades' net return after fees and slippage",
             f"{'model':10} {'AUC':>6} {'base':>6} {'prec@' + format(threshold, '.2f'):>10} "
             f"{'picked':>7} {'ret_all%':>9} {'ret_pick%':>9} {'top10%':>7} {'ret_top%':>9} "
             f"{'brier':>7}   AUC per pair"]
    lines += [_quality_line(kind, result[kind]) for kind in (*kinds, "base_rate")]
    lines.append(f"reliability of {kinds[0]} (predicted -> observed, by quantile bin):")
    lines += [f"  [{lo:.3f}, {hi:.3f}] n={n:5d}  mean p {mp:.3f}  observed {obs:.3f}"
              for lo, hi, n, mp, obs in result[kinds[0]]["reliability"]]
    return "\n".join(lines)


def _quality_line(kind: str, q: Mapping[str, Any]) -> str:
    """One row of the evaluation table: a model kind's pooled quality and AUC per pair."""
    per_pair = ", ".join(f"{s} {a:.3f}" for s, a in q["per_pair_auc"].items())
    return (f"{kind:10} {q['auc']:6.3f} {q['base_rate']:6.3f} "
            f"{q['precision_at_threshold']:10.3f} {q['selected']:7d} "
            f"{100 * q['mean_return_all']:9.3f} {100 * q['mean_return_selected']:9.3f} "
            f"{q['top_decile_rate']:7.3f} {100 * q['mean_return_top_decile']:9.3f} "
            f"{q['brier']:7.4f}   {per_pair}")


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`error: ...`, exit 2), without the usage."""

    def error(self, message: str):
        self.exit(2, f"error: {' '.join(message.split())}\n")


def _option(parse: Callable[[str], Any], allowed: str) -> Callable[[str], Any]:
    """An argparse type from one of config's strict parsers."""
    def convert(text: str) -> Any:
        try:
            return parse(text.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} {exc} (allowed: {allowed})") from None
    return convert


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(","))
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown or len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of distinct model kinds (allowed: {', '.join(MODEL_KINDS)})")
    return kinds


def main(argv: Sequence[str] | None = None) -> int:
    """`python model_training.py evaluate FILES...`: the walk-forward report on stdout.
    A bad option or file ends in one line, `error: ...`, and exit code 2."""
    from candle_files import CandleFileError
    from config import parse_real, parse_whole

    parser = _OneLineParser(prog="model_training.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    ev = sub.add_parser("evaluate", help="time-ordered evaluation on candle CSV files")
    ev.add_argument("files", nargs="+")
    ev.add_argument("--threshold", default=0.55,
                    type=_option(lambda t: parse_real(t, 0, 1), "0..1"))
    ev.add_argument("--folds", default=3, type=_option(lambda t: parse_whole(t, 1, 20), "1..20"))
    ev.add_argument("--kinds", default=("logistic", "hgb"), type=_kinds,
                    help="comma-separated model kinds: " + ", ".join(MODEL_KINDS))
    args = parser.parse_args(argv)
    for f in args.files:
        if not Path(f).is_file():
            parser.error(f"{f} is not a file")
    try:
        report = evaluate_files(args.files, kinds=args.kinds, folds=args.folds,
                                threshold=args.threshold)
    except (CandleFileError, ValueError) as exc:
        parser.error(str(exc))
    sys.stdout.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

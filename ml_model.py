"""The scikit-learn entry model: estimators, out-of-sample quality, training, the model
swapped in atomically, its prediction cache and its file in DATA_DIR.

Importing this module costs numpy only (features and indicators need nothing else):
scikit-learn and joblib are imported inside the functions that train, load or save a model
(sklearn.ensemble alone costs ~1.3 s, 170 MiB), so the bot starts, and its strategy
trades, without paying for them.

A model file is a pickle, i.e. code: it is only ever loaded from the bot's own data
directory, never from a user-supplied path. Paper and live keep their files apart
(`DATA_DIR/model-paper.joblib` + `model-paper.json`, `model-live.joblib` + `model-live.json`;
the training data in `training-paper.npz` / `training-live.npz`). Every file is written
readable by the owner only (0o600) through a temporary name unique to the process, then
renamed into place. Files of older versions (`model.joblib`, `model.json`,
`training_data.npz`, shared by both modes) are still read in paper mode while the new
paper files do not exist yet; live mode ignores them and trains its own model.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from features import FEATURE_NAMES

log = logging.getLogger(__name__)

# Cache keys are (rsi, macd_hist %, momentum %, volume_ratio) as strategy.model_keys makes
# them; each is multiplied by its scale before rounding to ML_CACHE_ROUNDING decimals, so
# with 1 decimal the grid is 0.1 RSI point, 0.1 bp of MACD, 0.01 % momentum, 0.01 volume ratio.
CACHE_KEY_SCALES: tuple[float, ...] = (1.0, 100.0, 10.0, 10.0)

MODEL_KINDS = ("logistic", "hgb", "forest")
DEFAULT_MODEL_KIND = "logistic"   # see README: best out-of-sample AUC/Brier, cheapest
MODES = ("paper", "live")
MIN_TRAIN_SAMPLES = 200
MIN_FILTERED = 10        # holdout signals the filter must keep for its gain to count


def _checked_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def model_file(mode: str = "paper") -> str:
    """'model-paper.joblib' or 'model-live.joblib': the model of one trading mode."""
    return f"model-{_checked_mode(mode)}.joblib"


def model_meta_file(mode: str = "paper") -> str:
    """'model-paper.json' or 'model-live.json': the metadata beside the model."""
    return f"model-{_checked_mode(mode)}.json"


def training_file(mode: str = "paper") -> str:
    """'training-paper.npz' or 'training-live.npz': the saved training data of one mode."""
    return f"training-{_checked_mode(mode)}.npz"


MODEL_FILE, MODEL_META_FILE, TRAINING_FILE = model_file(), model_meta_file(), training_file()
# Names before paper and live were kept apart; read (paper mode only) until replaced.
LEGACY_FILES = {MODEL_FILE: "model.joblib", MODEL_META_FILE: "model.json",
                TRAINING_FILE: "training_data.npz"}


def data_file(data_dir: str | os.PathLike, name: str) -> Path:
    """DATA_DIR/name, or the older shared file it replaces while only that one exists."""
    path = Path(data_dir) / name
    legacy = LEGACY_FILES.get(name)
    if legacy and not path.exists() and (Path(data_dir) / legacy).exists():
        return Path(data_dir) / legacy
    return path


def write_private(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file readable by the owner only (0o600), atomically: `write(fh)` fills a
    temporary file with a name unique to this process in the same directory (mkstemp creates
    it 0o600), which is fsynced and renamed over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def owner_only(path: str | os.PathLike) -> None:
    """Take group and other permissions off a file the bot reads (one an older version
    wrote world-readable); best effort."""
    try:
        mode = os.stat(path).st_mode
        if mode & 0o077:
            os.chmod(path, stat.S_IMODE(mode) & 0o700)
    except OSError:
        pass


# --------------------------------------------------------------------------- prediction cache

class PredictionCache:
    """Probability per rounded market state: TTL in market seconds, LRU bound, thread-safe.

    Entries belong to a model generation: `clear(generation)` empties the cache when a
    model is swapped in, and reads or writes for another generation are misses / ignored,
    so a prediction of the old model can never be served for the new one.
    """

    def __init__(self, ttl: float = 300.0, max_size: int = 1000, decimals: int = 1,
                 scales: Sequence[float] = CACHE_KEY_SCALES,
                 clock: Callable[[], float] = time.time):
        self.ttl, self.max_size, self.decimals = float(ttl), int(max_size), int(decimals)
        self._scales = np.asarray(scales, dtype=np.float64)
        self._scale_list = [float(x) for x in scales]
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple[float, float]] = OrderedDict()
        self._generation = 0
        self.hits = self.misses = self.evictions = self.expired = 0

    @classmethod
    def from_config(cls, config: Any, clock: Callable[[], float] = time.time) -> "PredictionCache":
        """TTL ML_PREDICTION_CACHE_DURATION and ML_CACHE_ROUNDING decimals from the config."""
        return cls(ttl=config.ml_prediction_cache_duration, decimals=config.ml_cache_rounding,
                   clock=clock)

    def round_keys(self, keys: Sequence[Sequence[float]]) -> list[tuple]:
        """Raw critical-indicator tuples -> hashable rounded tuples.

        Python rounding for a few keys (cheaper than a numpy round trip), numpy for many;
        both compute rint(value * scale * 10**decimals) / 10**decimals, so keys agree.
        """
        if len(keys) <= 8:
            p = 10.0 ** self.decimals
            try:
                return [tuple(round(v * s * p) / p for v, s in zip(key, self._scale_list,
                                                                   strict=True))
                        for key in keys]
            except (ValueError, OverflowError):   # NaN, inf or a bad width: numpy handles it
                pass
        raw = np.asarray(keys, dtype=np.float64).reshape(len(keys), -1)
        if raw.shape[1] != self._scales.size:
            raise ValueError(f"cache keys need {self._scales.size} values, got {raw.shape[1]}")
        return list(map(tuple, np.round(raw * self._scales, self.decimals).tolist()))

    def get_many(self, keys: Sequence[tuple], generation: int) -> np.ndarray:
        """Cached probabilities for rounded keys; NaN where missing, expired or stale."""
        out = np.full(len(keys), np.nan)
        now = self._clock()
        with self._lock:
            if generation != self._generation:
                self.misses += len(keys)
                return out
            for i, key in enumerate(keys):
                entry = self._entries.get(key)
                if entry is not None and now - entry[1] > self.ttl:
                    del self._entries[key]
                    self.expired += 1
                    entry = None
                if entry is None:
                    self.misses += 1
                else:
                    self._entries.move_to_end(key)
                    out[i] = entry[0]
                    self.hits += 1
        return out

    def put_many(self, keys: Sequence[tuple], values: Iterable[float], generation: int) -> None:
        """Store probabilities of model `generation` (ignored for another one), evicting the
        least recently used past max_size."""
        if self.ttl <= 0 or self.max_size <= 0:
            return
        now = self._clock()
        with self._lock:
            if generation != self._generation:
                return
            for key, value in zip(keys, values):
                self._entries[key] = (float(value), now)
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
                self.evictions += 1

    def clear(self, generation: int | None = None) -> None:
        """Drop every entry; with `generation`, only that model's predictions are accepted."""
        with self._lock:
            self._entries.clear()
            if generation is not None:
                self._generation = generation

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, float]:
        with self._lock:
            lookups = self.hits + self.misses
            return {"size": len(self._entries), "max_size": self.max_size, "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions, "expired": self.expired,
                    "hit_rate": self.hits / lookups if lookups else 0.0}

    def report(self) -> str:
        """One line of `stats` for the performance report."""
        s = self.stats()
        return (f"size {s['size']}/{s['max_size']}, hits {s['hits']}, misses {s['misses']} "
                f"(hit rate {s['hit_rate']:.0%}), evictions {s['evictions']}, "
                f"expired {s['expired']}")


# --------------------------------------------------------------------------- model

def make_estimator(kind: str = DEFAULT_MODEL_KIND) -> Any:
    """A fresh, unfitted classifier of a supported kind."""
    # scikit-learn is imported here, not at the top: see the module docstring.
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier
        return HistGradientBoostingClassifier(
            learning_rate=0.05, max_iter=200, max_leaf_nodes=15, min_samples_leaf=50,
            l2_regularization=1.0, early_stopping=True, validation_fraction=0.15,
            n_iter_no_change=15, random_state=0)
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        # Newton-Cholesky: exact Newton steps, a few 14 x 14 solves; 3x faster than lbfgs
        # here and closer to the optimum (lbfgs stops at its tolerance)
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000,
                                                                  solver="newton-cholesky"))
    if kind == "forest":
        from sklearn.ensemble import RandomForestClassifier
        return RandomForestClassifier(n_estimators=100, min_samples_leaf=20, n_jobs=1,
                                      random_state=0)
    raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(MODEL_KINDS)}")


def positive_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    """P(label = 1) for each row of X."""
    column = int(np.flatnonzero(np.asarray(estimator.classes_) == 1)[0])
    return estimator.predict_proba(np.asarray(X, dtype=np.float64))[:, column]


def _mean(values: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Mean of values[rows] (of all values without rows); NaN when nothing is selected."""
    chosen = np.asarray(values if rows is None else values[rows])
    return float(np.mean(chosen)) if chosen.size else float("nan")


def quality(y: np.ndarray, p: np.ndarray, ret: np.ndarray | None,
            threshold: float) -> dict[str, float]:
    """Out-of-sample quality: AUC, base rate, precision and share at the entry threshold,
    Brier score, win rate of the top decile by p and, with `ret`, mean net returns."""
    from sklearn.metrics import brier_score_loss, roc_auc_score   # lazy: see module docstring

    y = np.asarray(y)
    picked = p >= threshold
    both = 0 < y.sum() < y.size
    top = p >= np.quantile(p, 0.9) if y.size else picked
    out = {"n": int(y.size), "auc": float(roc_auc_score(y, p)) if both else float("nan"),
           "base_rate": _mean(y), "precision_at_threshold": _mean(y, picked),
           "selected_share": _mean(picked), "selected": int(picked.sum()),
           "brier": float(brier_score_loss(y, p)) if y.size else float("nan"),
           "top_decile_rate": _mean(y, top)}
    if ret is not None:
        out.update(mean_return_all=_mean(ret), mean_return_selected=_mean(ret, picked),
                   mean_return_top_decile=_mean(ret, top))
    return out


def trusted(meta: Mapping[str, Any], min_auc: float) -> bool:
    """Whether the model earned the right to filter the strategy's signals on its holdout:
    an AUC of at least `min_auc`, and filtering as the bot would raised the mean net return
    per trade. A model no better than chance, or one whose vetoes cost money, must not veto.
    `min_auc` <= 0 turns the check off (every trained model filters)."""
    if min_auc <= 0:
        return True
    auc, gain = meta.get("auc"), meta.get("filter_gain")
    return (auc is not None and np.isfinite(auc) and float(auc) >= min_auc
            and gain is not None and np.isfinite(gain) and float(gain) > 0)


def expected_return(p: np.ndarray, avg_win: float, avg_loss: float) -> np.ndarray:
    """A probability that a trade pays -> its expected net return, from the payoff."""
    return p * avg_win - (1.0 - p) * avg_loss


def payoff(y: np.ndarray, ret: np.ndarray | None) -> tuple[float, float]:
    """(mean net return of the winners, mean net loss of the losers, as a positive number):
    what turns a probability into an expected net return. (0, 0) without returns."""
    if ret is None:
        return 0.0, 0.0
    ret = np.asarray(ret, dtype=np.float64)
    wins, losses = ret[np.asarray(y) == 1], ret[np.asarray(y) == 0]
    return (float(wins.mean()) if wins.size else 0.0,
            float(-losses.mean()) if losses.size else 0.0)


def library_versions() -> dict[str, str]:
    """The versions a saved model depends on (a pickle loads only into the same ones)."""
    import joblib   # lazy: see module docstring
    import sklearn

    return {"sklearn": sklearn.__version__, "numpy": np.__version__,
            "joblib": joblib.__version__, "python": sys.version.split()[0]}


def train_model(X: np.ndarray, y: np.ndarray, time_ms: np.ndarray, end_ms: np.ndarray,
                ret: np.ndarray | None = None, *, kind: str = DEFAULT_MODEL_KIND,
                min_confidence: float = 0.55, holdout: float = 0.2, trained_at: float | None = None,
                factory: Callable[[], Any] | None = None,
                min_auc: float | None = None) -> tuple[Any, dict] | None:
    """Fit a model; quality is measured on the latest `holdout` share (time-ordered, with
    training labels that end after the split purged), then the model is refit on all rows.
    Returns (estimator, metadata), or None when the data cannot train a model. With
    `min_auc`, a model the holdout does not trust is not refit: (None, metadata)."""
    X = np.asarray(X, np.float64)   # float32 storage, float64 arithmetic
    y = np.asarray(y).astype(np.int8)
    time_ms, end_ms = np.asarray(time_ms, np.int64), np.asarray(end_ms, np.int64)
    if len(y) < MIN_TRAIN_SAMPLES or not 0 < y.sum() < len(y):
        log.info("not enough training data yet: %d of the %d samples needed, %d positive",
                 len(y), MIN_TRAIN_SAMPLES, int(y.sum()))
        return None
    factory = factory or (lambda: make_estimator(kind))
    split = np.quantile(time_ms, 1.0 - holdout)
    fit_rows, val_rows = (time_ms < split) & (end_ms <= split), time_ms >= split
    started = time.perf_counter()
    metrics = _holdout_quality(factory, X, y, ret, fit_rows, val_rows, min_confidence)
    skip = min_auc is not None and not trusted(metrics, min_auc)
    estimator = None if skip else factory().fit(X, y)
    meta = {"feature_names": list(FEATURE_NAMES), "kind": kind,
            "trained_at": time.time() if trained_at is None else float(trained_at),
            "samples": int(len(y)), "positive_rate": float(y.mean()),
            "validation_samples": int(val_rows.sum()), "threshold": float(min_confidence),
            "avg_win": payoff(y, ret)[0], "avg_loss": payoff(y, ret)[1],
            "fit_seconds": time.perf_counter() - started, **metrics, **library_versions()}
    return estimator, meta


def _holdout_quality(factory: Callable[[], Any], X: np.ndarray, y: np.ndarray,
                     ret: np.ndarray | None, fit_rows: np.ndarray, val_rows: np.ndarray,
                     threshold: float) -> dict[str, float]:
    """`quality` of a model fitted on fit_rows and predicting val_rows; only the base rate
    when fit_rows are too few or of one class, or there is nothing to validate on."""
    y_fit = y[fit_rows]
    if y_fit.size >= MIN_TRAIN_SAMPLES // 2 and 0 < y_fit.sum() < y_fit.size and val_rows.any():
        check = factory().fit(X[fit_rows], y_fit)
        p = positive_proba(check, X[val_rows])
        out = quality(y[val_rows], p, None if ret is None else np.asarray(ret)[val_rows],
                      threshold)
        if ret is not None:
            out.update(_filter_gain(p, y_fit, np.asarray(ret), fit_rows, val_rows, threshold))
        return out
    return {"auc": float("nan"), "precision_at_threshold": float("nan"),
            "base_rate": float(y[val_rows].mean()) if val_rows.any() else float("nan")}


def _filter_gain(p: np.ndarray, y_fit: np.ndarray, ret: np.ndarray, fit_rows: np.ndarray,
                 val_rows: np.ndarray, threshold: float) -> dict[str, float]:
    """What filtering the holdout's signals as the bot would (expected net return > 0 and
    p >= threshold, with the fit rows' payoff) gains in mean net return per trade over
    taking them all; NaN with fewer than MIN_FILTERED kept."""
    win, loss = payoff(y_fit, ret[fit_rows])
    held = ret[val_rows]
    kept = (expected_return(p, win, loss) > 0) & (p >= threshold)
    gain = float(held[kept].mean() - held.mean()) if kept.sum() >= MIN_FILTERED else float("nan")
    return {"filter_gain": gain, "filter_kept_share": float(kept.mean())}


@dataclass(frozen=True)
class ModelBundle:
    """An immutable (estimator, metadata, version): swapped in with one assignment."""
    estimator: Any
    meta: Mapping[str, Any]
    version: int


class MLModel:
    """The current model and its prediction cache; predictions never wait for training."""

    def __init__(self, cache: PredictionCache | None = None):
        self.cache = cache if cache is not None else PredictionCache()
        self._bundle: ModelBundle | None = None
        self._swap_lock = threading.Lock()   # serialises writers only; readers take no lock

    @property
    def bundle(self) -> ModelBundle | None:
        return self._bundle

    def is_ready(self) -> bool:
        return self._bundle is not None

    def swap(self, estimator: Any, meta: Mapping[str, Any]) -> int:
        """Install a fitted estimator atomically and clear the cache; returns its version."""
        with self._swap_lock:
            version = (self._bundle.version if self._bundle else 0) + 1
            self._bundle = ModelBundle(estimator, MappingProxyType(dict(meta)), version)
            self.cache.clear(version)
        return version

    def predict_detailed(self, X: np.ndarray, keys: Sequence[Sequence[float]] | None = None
                         ) -> tuple[np.ndarray, ModelBundle]:
        """Probabilities and the one bundle that produced all of them (cache included)."""
        bundle = self._bundle
        if bundle is None:
            raise RuntimeError("no model is ready")
        X = np.atleast_2d(np.asarray(X, dtype=np.float32))
        if keys is None:
            return positive_proba(bundle.estimator, X), bundle
        rounded = self.cache.round_keys(keys)
        out = self.cache.get_many(rounded, bundle.version)
        miss = np.flatnonzero(np.isnan(out))
        if miss.size:
            fresh = positive_proba(bundle.estimator, X[miss])
            out[miss] = fresh
            self.cache.put_many([rounded[i] for i in miss], fresh, bundle.version)
        return out, bundle

    def predict_proba(self, X: np.ndarray, keys: Sequence[Sequence[float]] | None = None
                      ) -> np.ndarray:
        """P(entry pays) for each row: cache hits, plus one batched call for the misses."""
        return self.predict_detailed(X, keys)[0]

    def status(self) -> dict[str, Any]:
        """Readiness, cache statistics and, once trained, the model's version and quality."""
        bundle = self._bundle
        out: dict[str, Any] = {"ready": bundle is not None, "cache": self.cache.stats()}
        if bundle is not None:
            out.update({k: bundle.meta.get(k) for k in (
                "kind", "trained_at", "samples", "auc", "precision_at_threshold", "base_rate",
                "selected_share", "threshold", "sklearn")})
            out["version"] = bundle.version
        return out


def save_model(data_dir: str | os.PathLike, estimator: Any, meta: Mapping[str, Any],
               mode: str = "paper") -> Path:
    """joblib-dump {estimator, meta} to DATA_DIR/model-<mode>.joblib (+ model-<mode>.json),
    each atomically and readable by the owner only."""
    import joblib   # lazy: see module docstring

    data_dir = Path(data_dir)
    path = data_dir / model_file(mode)
    write_private(path, lambda fh: joblib.dump({"estimator": estimator, "meta": dict(meta)}, fh))
    text = json.dumps(dict(meta), indent=1, default=str).encode()
    write_private(data_dir / model_meta_file(mode), lambda fh: fh.write(text))
    return path


def load_model(data_dir: str | os.PathLike, mode: str = "paper") -> tuple[Any, dict] | None:
    """(estimator, meta) from DATA_DIR/model-<mode>.joblib (paper: or the older shared
    model.joblib); None, with a warning, when it is missing, outside DATA_DIR, corrupt, or
    made for other features or another scikit-learn."""
    data_dir = Path(data_dir).resolve()
    path = data_file(data_dir, model_file(mode)) if mode == "paper" else data_dir / model_file(mode)
    if not path.is_file():
        return None
    if path.resolve().parent != data_dir:
        log.warning("%s points outside %s; not loading it (a model file is code)", path, data_dir)
        return None
    owner_only(path)
    try:
        import joblib   # lazy: see module docstring
        import sklearn
        from sklearn.exceptions import InconsistentVersionWarning

        with warnings.catch_warnings():
            warnings.simplefilter("error", InconsistentVersionWarning)
            blob = joblib.load(path)
        estimator, meta = blob["estimator"], dict(blob["meta"])
    except Exception as exc:   # corrupt, truncated, or pickled by another library version
        log.warning("model file %s is unusable (%s: %s); the model will be retrained",
                    path, type(exc).__name__, exc)
        return None
    return (estimator, meta) if _compatible(path, estimator, meta, sklearn.__version__) else None


def _compatible(path: Path, estimator: Any, meta: Mapping[str, Any], sklearn_version: str) -> bool:
    """Whether a loaded model was trained on FEATURE_NAMES by this scikit-learn (else warns)."""
    if tuple(meta.get("feature_names", ())) != FEATURE_NAMES:
        log.warning("model file %s was trained on other features; the model will be retrained",
                    path)
        return False
    if meta.get("sklearn") != sklearn_version or not hasattr(estimator, "predict_proba"):
        log.warning("model file %s was made by scikit-learn %s (running %s); retraining",
                    path, meta.get("sklearn"), sklearn_version)
        return False
    return True


def saved_model_status(data_dir: str | os.PathLike, mode: str = "paper") -> dict | None:
    """The metadata of the saved model (model-<mode>.json) without loading the model itself."""
    name = model_meta_file(mode)
    path = data_file(data_dir, name) if mode == "paper" else Path(data_dir) / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None



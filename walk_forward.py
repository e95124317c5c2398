"""The backtest's walk-forward model: training samples in the order they became known, the
refit schedule, the fits (in the replay's thread, or ahead on a thread pool), and the
batched predictions of each fit's period (see `backtest`'s docstring, "Model").

`data` is the replay's prepared arrays (`backtest._Data`) and `settings` its
`backtest.BacktestSettings`; both are read only.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from labels import Samples, labelled_signals
from ml_model import (DEFAULT_MODEL_KIND, MIN_TRAIN_SAMPLES, expected_return, positive_proba,
                      train_model)
from model_training import NOT_READY_RETRY, TrainingData
from domain import StrategyParams
from strategy import ModelFilter


def _one_thread():
    """Run scikit-learn's OpenMP code on one thread: with other work on the machine its
    spinning worker threads make a fit 10x slower, and on an idle 2-core machine one thread
    is as fast for these sample counts."""
    return threadpool_limits(1, user_api="openmp")


class FitJob(NamedTuple):
    g: int                  # the step at whose close the model is refit
    g_end: int              # the step at which the next refit replaces it
    X: np.ndarray
    y: np.ndarray
    ret: np.ndarray
    time_ms: np.ndarray
    end_ms: np.ndarray


def signal_samples(data: Any, params: StrategyParams,
                   settings: Any) -> tuple[Samples | None, np.ndarray]:
    """Every pair's meta-labelled signals, sorted by the time their outcome became known
    (the close of the candle the trade ended in: the live bot's history holds it then),
    from the signals, exit signals and features the replay computed."""
    parts = []
    for p, s in enumerate(data.symbols):
        rows = slice(data.first[p], data.last[p] + 1)
        a = np.column_stack([data.ts[rows], data.o[rows], data.h[rows], data.l[rows],
                             data.c[rows], data.v[rows]])
        smp = labelled_signals(s, a, data.signal_ok[rows], data.exit_signal[rows],
                               data.feat[rows], data.ind["atr"][rows], params, settings.fee_rate)
        if len(smp.y):
            parts.append(smp)
    if not parts:
        return None, np.empty(0, np.int64)
    merged = Samples(*(np.concatenate(cols) for cols in zip(*parts)))
    order = np.argsort(merged.label_end_ms, kind="stable")
    return Samples(*(col[order] for col in merged)), merged.label_end_ms[order]


class WalkForward:
    """Walk-forward refits: training samples in the order they became known, fits and the
    batched predictions of each fit's period.

    The refit schedule and every training set depend on the candles only (not on the
    trades), so they are worked out ahead. By default each is fitted in the replay's thread
    when due: the logistic model's fit is mostly Python (validation, bookkeeping), so fit
    threads only contend with the replay for the GIL (measured on 2 cores, 4 pairs x a
    year of 5m candles: one thread ~1 s slower, two ~2 s). `fit_workers` > 0 fits that many
    ahead on a thread pool instead (for heavier model kinds). Results do not depend on it.
    """

    def __init__(self, data: Any, params: StrategyParams, settings: Any, g0: int):
        self.data, self.params, self.settings = data, params, settings
        self.samples, self.known_ms = signal_samples(data, params, settings)
        self.estimator = None
        self.payoff = (0.0, 0.0)
        self.trusted_fits = 0   # refits whose holdout AUC let them filter
        self.trainings = 0
        self.misses = 0         # predict calls not fully served by the batched predictions
        self.prob = np.full(len(data.ts), np.nan)
        workers = settings.fit_workers
        self._pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backtest-fit")
                      if workers > 0 else None)
        self._ahead = workers + 1
        self._jobs = self._schedule(g0)
        self._queue: deque = deque()
        self._submit()

    def _schedule(self, g0: int) -> Iterator[FitJob]:
        """The refits: at the first step with enough data (tried every NOT_READY_RETRY until
        then), then every retrain interval once `retrain_min_new_samples` new samples have
        become known since the last fit, on the bounded TrainingData holding every sample
        known by then. Counting samples keeps the number of fits proportional to what
        there is to learn, not to the days replayed (a refit on nearly the same samples
        gives nearly the same model)."""
        d, settings = self.data, self.settings
        closes = d.grid + d.tf_ms
        training, cursor, job, fitted_at = TrainingData(), 0, None, 0
        g = g0
        while g < len(closes):
            now = int(closes[g])
            end = int(np.searchsorted(self.known_ms, now, side="right"))
            if end > cursor:   # one sample per signal and pair: no key to deduplicate
                smp = self.samples
                training.add(*(a[cursor:end] for a in (smp.X, smp.y, smp.ret, smp.time_ms,
                                                        smp.label_end_ms)))
                cursor = end
            fresh = training.added_total - fitted_at
            snap = (training.snapshot() if len(training) >= MIN_TRAIN_SAMPLES and (
                job is None or fresh >= settings.retrain_min_new_samples) else None)
            if snap is not None and 0 < snap.y.sum() < len(snap.y):
                if job is not None:
                    yield job._replace(g_end=g)
                job = FitJob(g, len(closes), snap.X, snap.y, snap.ret, snap.time_ms,
                              snap.end_ms)
                fitted_at = training.added_total
            wait = settings.retrain_interval_ms if job is not None else max(
                int(NOT_READY_RETRY * 1000), d.tf_ms)
            g = int(np.searchsorted(closes, now + wait, side="left"))
        if job is not None:
            yield job

    def _submit(self) -> None:
        while len(self._queue) < self._ahead:
            job = next(self._jobs, None)
            if job is None:
                return
            self._queue.append((job.g, self._pool.submit(self._fit, job) if self._pool else job))

    def _fit(self, job: FitJob) -> tuple[Any, np.ndarray, np.ndarray, tuple[float, float]]:
        """Train as the live bot does (`train_model`: holdout quality, then a fit on all);
        predict every signal row of the job's period when the model is trusted (its holdout
        AUC reaches `min_auc`), else none (the strategy decides alone)."""
        d = self.data
        rows = d.at[:, job.g:job.g_end].ravel()
        rows = rows[rows >= 0]
        rows = rows[d.signal_ok[rows]]
        with _one_thread():
            kind = self.settings.model_kind or DEFAULT_MODEL_KIND
            trained = train_model(job.X, job.y, job.time_ms, job.end_ms, job.ret, kind=kind,
                                  min_confidence=self.params.min_confidence,
                                  min_auc=self.settings.min_auc)
            if trained is None or trained[0] is None:
                return None, rows[:0], rows[:0] * 0.0, (0.0, 0.0)
            estimator, meta = trained
            probs = positive_proba(estimator, d.feat[rows]) if rows.size else rows * 0.0
        return estimator, rows, probs, (meta["avg_win"], meta["avg_loss"])

    def due(self, g: int) -> bool:
        return bool(self._queue) and self._queue[0][0] == g

    def update(self, g: int) -> None:
        """Swap in the model refit at this step (waiting for its fit if needed)."""
        _, work = self._queue.popleft()
        self.estimator, rows, probs, self.payoff = (work.result() if self._pool
                                                    else self._fit(work))
        self.prob[rows] = probs
        self.trusted_fits += self.estimator is not None
        self.trainings += 1
        self._submit()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def expected_return(self, p: np.ndarray) -> np.ndarray:
        return expected_return(p, *self.payoff)

    def predictor(self, rows: np.ndarray) -> ModelFilter:
        """The pipeline's model: the batched probability of each exact feature row."""
        memo = {self.data.feat[r].tobytes(): float(self.prob[r]) for r in rows.tolist()
                if np.isfinite(self.prob[r])}

        def predict(X: np.ndarray, keys: Sequence[tuple]) -> np.ndarray:
            X = np.asarray(X, dtype=np.float32)
            out = np.array([memo.get(x.tobytes(), np.nan) for x in X])
            miss = np.flatnonzero(np.isnan(out))
            if miss.size:
                self.misses += 1
                with _one_thread():
                    out[miss] = positive_proba(self.estimator, X[miss])
            return out

        return ModelFilter(predict, *self.payoff)

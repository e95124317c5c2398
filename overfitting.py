"""Is an optimiser's best result real? Two statistics that discount the search itself.

Trying many parameter sets and keeping the best one guarantees a good-looking backtest even
when no variant has any skill: the maximum of many noisy Sharpe ratios is large by luck.

Deflated Sharpe ratio (DSR), `deflated_sharpe` - Bailey & Lopez de Prado (2014), "The
Deflated Sharpe Ratio: Correcting for Selection Bias, Backtest Overfitting and
Non-Normality". The probability that the selected trial's true Sharpe beats SR0, the Sharpe
the best of N skill-less trials would reach by luck:

    SR0 = sqrt(V[SR_n]) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e)))     (expected maximum
                                                                          of N normals)
    DSR = Phi((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR^2))

with V[SR_n] the variance of the per-period Sharpe ratios of all N trials, g the
Euler-Mascheroni constant, Z the standard normal quantile, Phi its CDF, T the number of
period returns, skew and kurt (non-excess: 3 for a normal) the sample moments of the
selected trial's returns. For a trader: DSR below 0.95 means the best trial's Sharpe is
what trying N skill-less variants would produce by luck; negative skew and fat tails (a
strategy that earns small and loses big) make a Sharpe less trustworthy and lower the DSR.

Probability of backtest overfitting (PBO), `probability_of_overfitting` - Bailey, Borwein,
Lopez de Prado & Zhu (2015), "The Probability of Backtest Overfitting" (combinatorially
symmetric cross-validation, CSCV). The history is cut into S blocks; for every way of
choosing S/2 blocks as in-sample (the rest out-of-sample) the in-sample winner's rank
among all trials out-of-sample gives omega = rank / (N + 1) and the logit
lambda = ln(omega / (1 - omega)); PBO is the share of lambda <= 0, i.e. of splits where
the in-sample winner did no better than the median trial out of sample. For a trader: PBO
near 0.5 or above means the in-sample winner is no better than a coin out of sample (the
optimiser is picking noise); near 0 means the winner keeps winning on unseen data. The
degradation slope (out-of-sample vs in-sample performance of the winner) below 0 says a
better in-sample score predicts a worse future; loss_probability is the share of splits
where the winner loses money (metric < 0) out of sample.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

EULER_GAMMA = 0.5772156649015329
_FLAT = 1e-10          # a std this small relative to |mean| is rounding: the series is flat


def sharpe_ratio(returns):
    """Per-period Sharpe ratio (mean / std, ddof=1) of period returns, not annualised.

    A 1-D array gives a float; a 2-D (periods x trials) array gives one Sharpe per column
    (the form `probability_of_overfitting` calls a metric with). 0.0 when the std is 0 or
    there are fewer than 2 values.
    """
    values = np.asarray(returns, dtype=float)
    ratios = _column_sharpe(values[:, None] if values.ndim == 1 else values)
    return float(ratios[0]) if values.ndim == 1 else ratios


def _column_sharpe(matrix: np.ndarray) -> np.ndarray:
    if len(matrix) < 2:
        return np.zeros(matrix.shape[1])
    return _ratio(matrix.mean(axis=0), matrix.std(axis=0, ddof=1))


def _ratio(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    flat = std <= _FLAT * np.abs(mean)
    return np.divide(mean, std, out=np.zeros_like(mean), where=~flat)


# -- deflated Sharpe ratio ------------------------------------------------------------------

@dataclass(frozen=True)
class DeflatedSharpe:
    sharpe: float            # the observed per-period Sharpe of the selected trial
    expected_max: float      # SR0: the Sharpe the best of n_trials skill-less trials would reach
    probability: float       # DSR: P(true Sharpe > SR0) given skew, kurtosis and length (0..1)
    n_trials: int
    observations: int
    significant: bool        # probability >= the confidence asked (default 0.95)


def expected_max_sharpe(trial_sharpes) -> float:
    """SR0: the expected maximum of N skill-less trials' Sharpe ratios, sqrt(V[SR_n]) times
    the Euler-Mascheroni approximation of the expected maximum of N standard normals
    (variance with ddof=1). 0.0 for a single trial."""
    sharpes = _finite_1d(trial_sharpes, "trial_sharpes", 1, "the Sharpe ratio of every trial")
    n = len(sharpes)
    if n == 1:
        return 0.0
    z = (1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / n) + EULER_GAMMA * stats.norm.ppf(1 - 1 / (n * math.e))
    return float(np.std(sharpes, ddof=1) * z)


def probabilistic_sharpe_ratio(sharpe: float, benchmark: float, observations: int,
                               skewness: float = 0.0, kurtosis: float = 3.0) -> float:
    """PSR: P(true Sharpe > benchmark) for a per-period Sharpe measured over `observations`
    returns with the given skewness and (non-excess) kurtosis (Bailey & Lopez de Prado)."""
    variance = 1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe ** 2
    return float(stats.norm.cdf((sharpe - benchmark) * math.sqrt(observations - 1) / math.sqrt(variance)))


def deflated_sharpe(returns, trial_sharpes, confidence: float = 0.95) -> DeflatedSharpe:
    """The deflated Sharpe ratio of the selected trial (module docstring).

    `returns`: the selected trial's period returns (1-D, at least 2); `trial_sharpes`: the
    per-period Sharpe of every trial tried, the selected one included. Skewness and kurtosis
    are the (biased) sample moments of `returns`, normal ones (0, 3) for a flat series.
    """
    values = _finite_1d(returns, "returns", 2, "the selected trial's period returns")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}; pass e.g. 0.95")
    sharpe = sharpe_ratio(values)
    flat = np.ptp(values) == 0
    skewness = 0.0 if flat else float(stats.skew(values))
    kurtosis = 3.0 if flat else float(stats.kurtosis(values, fisher=False))
    benchmark = expected_max_sharpe(trial_sharpes)
    probability = probabilistic_sharpe_ratio(sharpe, benchmark, len(values), skewness, kurtosis)
    return DeflatedSharpe(sharpe=sharpe, expected_max=benchmark, probability=probability,
                          n_trials=len(np.ravel(trial_sharpes)), observations=len(values),
                          significant=probability >= confidence)


def _finite_1d(values, name: str, minimum: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or len(array) < minimum or not np.isfinite(array).all():
        raise ValueError(f"{name} must be a 1-D array of at least {minimum} finite values, "
                         f"got shape {array.shape}; pass {what}")
    return array


# -- probability of backtest overfitting -----------------------------------------------------

@dataclass(frozen=True)
class Overfitting:
    pbo: float               # probability of backtest overfitting (share of logits <= 0)
    logits: np.ndarray       # one per combination
    combinations: int
    splits: int
    degradation: float       # slope of OOS vs IS performance of the selected trial (least squares), may be nan
    loss_probability: float  # share of combinations where the IS-best trial's OOS performance is < 0


def probability_of_overfitting(performance, splits: int = 16, metric=sharpe_ratio,
                               max_combinations: int = 5000, seed: int = 0) -> Overfitting:
    """PBO by combinatorially symmetric cross-validation (module docstring).

    `performance`: (T, N) period returns, T periods in time order x N trials. The rows are
    cut into `splits` (even) contiguous blocks of equal size, dropping the T % splits oldest
    rows. Every choice of splits/2 blocks is an in-sample half, its complement the
    out-of-sample half; when there are more than `max_combinations` such choices, a random
    subset of `max_combinations` of them (drawn with `seed`, so repeatable) is used instead.
    `metric(returns_2d)` scores every column of a (periods x N) array at once and returns N
    values (higher is better); the default, `sharpe_ratio`, is computed from per-block
    moments without re-reading the rows, any other metric is called twice per combination.
    Ties in the out-of-sample ranking get average ranks.
    """
    blocks = _blocks(performance, splits)
    masks = _combination_masks(splits, max_combinations, seed)
    if metric is sharpe_ratio:
        in_sample, out_sample = _block_sharpe(blocks, masks), _block_sharpe(blocks, ~masks)
    else:
        in_sample, out_sample = _scores(blocks, masks, metric), _scores(blocks, ~masks, metric)
    rows = np.arange(len(masks))
    best = np.argmax(in_sample, axis=1)
    omega = stats.rankdata(out_sample, axis=1)[rows, best] / (blocks.shape[2] + 1)
    winner_in, winner_out = in_sample[rows, best], out_sample[rows, best]
    logits = np.log(omega / (1 - omega))
    return Overfitting(pbo=float(np.mean(logits <= 0)), logits=logits, combinations=len(masks),
                       splits=splits, degradation=_slope(winner_in, winner_out),
                       loss_probability=float(np.mean(winner_out < 0)))


def _blocks(performance, splits: int) -> np.ndarray:
    """The (splits, block length, N) blocks of the newest T - T % splits rows."""
    matrix = np.asarray(performance, dtype=float)
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 2 or splits % 2:
        raise ValueError(f"splits must be an even integer >= 2, got {splits!r}; pass e.g. 8 or 16")
    if matrix.ndim != 2:
        raise ValueError(f"performance must be a 2-D (periods x trials) array, got shape {matrix.shape}; "
                         "pass one column of period returns per trial")
    if matrix.shape[1] < 2:
        raise ValueError(f"performance has {matrix.shape[1]} trial(s); PBO needs at least 2 columns, one per trial")
    if matrix.shape[0] < splits:
        raise ValueError(f"performance has {matrix.shape[0]} periods, fewer than splits={splits}; "
                         "pass more rows or fewer splits")
    if not np.isfinite(matrix).all():
        bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        raise ValueError(f"performance has non-finite values in {len(bad)} row(s) (first: {bad[0]}); "
                         "pass 0.0 for periods without a return")
    used = matrix[len(matrix) % splits:]
    return used.reshape(splits, -1, matrix.shape[1])


def _combination_masks(splits: int, max_combinations: int, seed: int) -> np.ndarray:
    """(C, splits) booleans, True for the in-sample blocks of each combination, in
    lexicographic order; a seeded uniform subset of them when there are too many."""
    if max_combinations < 1:
        raise ValueError(f"max_combinations must be >= 1, got {max_combinations!r}; pass e.g. 5000")
    half, total = splits // 2, math.comb(splits, splits // 2)
    if total <= max_combinations:
        chosen = itertools.combinations(range(splits), half)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(total, size=max_combinations, replace=False))
        chosen = (_unrank(int(i), splits, half) for i in indices)
    masks = np.zeros((min(total, max_combinations), splits), dtype=bool)
    for row, combination in enumerate(chosen):
        masks[row, list(combination)] = True
    return masks


def _unrank(index: int, n: int, k: int) -> list[int]:
    """The `index`-th (0-based, lexicographic) k-subset of range(n)."""
    combination, item = [], 0
    for remaining in range(k, 0, -1):
        while index >= (count := math.comb(n - item - 1, remaining - 1)):
            index -= count
            item += 1
        combination.append(item)
        item += 1
    return combination


def _block_sharpe(blocks: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The Sharpe of every column over each combination's blocks, (C, N), from per-block
    means and squared deviations. The half's squared deviations are the blocks' own plus the
    spread of their means, written with pairwise differences (no cancellation: a flat half
    stays exactly flat)."""
    n_blocks, length, n_trials = blocks.shape
    means = blocks.mean(axis=1)
    deviations = ((blocks - means[:, None, :]) ** 2).sum(axis=1)
    spread = ((means[:, None, :] - means[None, :, :]) ** 2).reshape(n_blocks ** 2, n_trials)
    pairs = (masks[:, :, None] & masks[:, None, :]).reshape(len(masks), -1)
    chosen = masks.sum(axis=1)[:, None]
    half_mean = masks @ means / chosen
    squares = masks @ deviations + length / (2 * chosen) * (pairs @ spread)
    return _ratio(half_mean, np.sqrt(squares / (chosen * length - 1)))


def _scores(blocks: np.ndarray, masks: np.ndarray, metric) -> np.ndarray:
    """`metric` of every column over each combination's blocks, (C, N)."""
    n_trials = blocks.shape[2]
    scores = np.array([np.asarray(metric(blocks[mask].reshape(-1, n_trials)), dtype=float) for mask in masks])
    if scores.shape != (len(masks), n_trials) or not np.isfinite(scores).all():
        raise ValueError(f"metric must return {n_trials} finite values (one per column of a periods x trials "
                         f"array), got shape {scores.shape[1:]}; pass a column-wise metric like sharpe_ratio")
    return scores


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x; nan when x does not vary."""
    dx = x - x.mean()
    denominator = float(dx @ dx)
    return float(dx @ (y - y.mean()) / denominator) if denominator > 0 else float("nan")

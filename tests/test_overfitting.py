"""Overfitting statistics: the Sharpe ratio, the deflated Sharpe ratio (against the paper's
worked example and a Monte Carlo of the best of N) and the probability of backtest
overfitting on noise, on a real edge and on a set built to overfit."""
import itertools
import math
import unittest

import numpy as np
from scipy import stats

import overfitting as of


def scaled(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    """`values` shifted and scaled to exactly this sample mean and std (ddof=1)."""
    return (values - values.mean()) / values.std(ddof=1) * std + mean


def noise(seed: int, periods: int, trials: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((periods, trials))


class SharpeRatio(unittest.TestCase):
    def test_known_series(self) -> None:
        # mean 2.5, std (ddof=1) sqrt(5/3)
        self.assertAlmostEqual(of.sharpe_ratio([1, 2, 3, 4]), 2.5 / math.sqrt(5 / 3), places=12)
        self.assertAlmostEqual(of.sharpe_ratio([-1.0, 0.0, -2.0]), -1.0, places=12)

    def test_flat_or_too_short_is_zero(self) -> None:
        for returns in ([0.0] * 10, [0.1] * 1000, [0.3], []):
            self.assertEqual(of.sharpe_ratio(returns), 0.0, returns)

    def test_columns(self) -> None:
        matrix = np.column_stack([[1, 2, 3, 4], [0.1] * 4, [-1.0, 0.0, -2.0, -1.0]])
        expected = [of.sharpe_ratio(column) for column in matrix.T]
        np.testing.assert_allclose(of.sharpe_ratio(matrix), expected, rtol=1e-12)


class DeflatedSharpe(unittest.TestCase):
    def test_paper_worked_example(self) -> None:
        # Bailey & Lopez de Prado (2014): N=100 trials, annualised V[SR]=1/2, best annualised
        # SR 2.5, 1250 daily returns with skew -3 and kurtosis 10 -> SR0 0.1132, DSR 0.9004.
        trials = scaled(np.random.default_rng(1).standard_normal(100), 0.0, math.sqrt(0.5 / 250))
        sr0 = of.expected_max_sharpe(trials)
        self.assertAlmostEqual(sr0, 0.1132, places=4)
        self.assertAlmostEqual(of.probabilistic_sharpe_ratio(2.5 / math.sqrt(250), sr0, 1250, -3, 10),
                               0.9004, places=4)

    def test_expected_max_against_monte_carlo(self) -> None:
        std = 0.03
        trials = scaled(np.random.default_rng(2).standard_normal(100), 0.01, std)
        simulated = std * np.random.default_rng(3).standard_normal((20_000, 100)).max(axis=1).mean()
        self.assertAlmostEqual(of.expected_max_sharpe(trials) / simulated, 1.0, delta=0.02)
        self.assertEqual(of.expected_max_sharpe([0.2]), 0.0)

    def test_best_of_pure_noise_is_not_significant(self) -> None:
        returns = noise(4, 1000, 200)
        sharpes = of.sharpe_ratio(returns)
        best = returns[:, np.argmax(sharpes)]
        result = of.deflated_sharpe(best, sharpes)
        self.assertGreater(result.sharpe, 0.06)              # looks good on its own ...
        self.assertGreater(of.deflated_sharpe(best, sharpes[:1]).probability, 0.95)
        self.assertFalse(result.significant)                 # ... but not after 200 tries
        self.assertLess(result.probability, 0.95)
        self.assertEqual((result.n_trials, result.observations), (200, 1000))

    def test_real_drift_survives_200_trials(self) -> None:
        sharpes = of.sharpe_ratio(noise(5, 1000, 200))       # a dispersion typical of noise
        drift = 0.2 + np.random.default_rng(6).standard_normal(1000)
        sharpes[0] = of.sharpe_ratio(drift)
        result = of.deflated_sharpe(drift, sharpes)
        self.assertTrue(result.significant, result)
        self.assertGreater(result.expected_max, 0.07)        # best of 200 noise trials ~ 2.7 / sqrt(T)

    def test_a_drift_of_a_tenth_std_is_within_the_luck_of_200_trials(self) -> None:
        # SR0 of 200 trials at T=1000 is ~0.088 per period: a true 0.1 is barely above it.
        sr0 = of.expected_max_sharpe(scaled(np.arange(200.0), 0.0, 1 / math.sqrt(1000)))
        self.assertAlmostEqual(sr0, 0.088, delta=0.002)
        self.assertLess(of.probabilistic_sharpe_ratio(0.1, sr0, 1000), 0.95)

    def test_more_trials_lower_the_dsr(self) -> None:
        returns = scaled(np.random.default_rng(7).standard_normal(500), 0.12, 1.0)
        probabilities = [of.deflated_sharpe(returns, scaled(np.linspace(-1, 1, n), 0.0, 0.03)).probability
                         for n in (2, 5, 10, 50, 200, 1000)]
        probabilities.insert(0, of.deflated_sharpe(returns, [0.12]).probability)
        self.assertTrue(all(a > b for a, b in itertools.pairwise(probabilities)), probabilities)

    def test_negative_skew_and_fat_tails_lower_the_dsr(self) -> None:
        # Evenly spaced quantiles of each distribution, all rescaled to the same Sharpe 0.4.
        quantiles = (np.arange(200) + 0.5) / 200
        shapes = {"normal": stats.norm.ppf(quantiles), "fat tails": stats.laplace.ppf(quantiles),
                  "negative skew": -stats.expon.ppf(quantiles)}
        trials = scaled(np.linspace(-1, 1, 20), 0.0, 0.18)
        results = {name: of.deflated_sharpe(scaled(values, 0.4, 1.0), trials) for name, values in shapes.items()}
        for name in ("fat tails", "negative skew"):
            self.assertAlmostEqual(results[name].sharpe, results["normal"].sharpe, places=12)
            self.assertLess(results[name].probability, results["normal"].probability - 0.005, name)
        for name, values in shapes.items():                  # the paper's formula, written out
            returns, sr0 = scaled(values, 0.4, 1.0), results[name].expected_max
            denominator = 1 - stats.skew(returns) * 0.4 + (stats.kurtosis(returns, fisher=False) - 1) / 4 * 0.16
            self.assertAlmostEqual(results[name].probability,
                                   stats.norm.cdf((0.4 - sr0) * math.sqrt(199) / math.sqrt(denominator)), places=12)

    def test_flat_returns_use_normal_moments(self) -> None:
        result = of.deflated_sharpe(np.zeros(100), [0.0])
        self.assertEqual((result.sharpe, result.probability), (0.0, 0.5))

    def test_bad_input(self) -> None:
        cases = {"returns": ([0.1], [0.1]), "returns ": ([0.1, np.nan, 0.2], [0.1]),
                 "returns  ": (np.zeros((5, 2)), [0.1]), "trial_sharpes": ([0.1, 0.2], []),
                 "trial_sharpes ": ([0.1, 0.2], [0.1, np.inf])}
        for name, (returns, trials) in cases.items():
            with self.subTest(name), self.assertRaisesRegex(ValueError, f"^{name.strip()} must be"):
                of.deflated_sharpe(returns, trials)
        with self.assertRaisesRegex(ValueError, "^confidence must be"):
            of.deflated_sharpe([0.1, 0.2], [0.1], confidence=95)


class ProbabilityOfOverfitting(unittest.TestCase):
    def test_pure_noise_is_a_coin(self) -> None:
        # One noise study's PBO is itself noisy (0.1..0.8): average a few seeded studies.
        results = [of.probability_of_overfitting(noise(seed, 1000, 50), splits=8) for seed in range(8)]
        self.assertTrue(0.3 < np.mean([r.pbo for r in results]) < 0.7, [r.pbo for r in results])
        self.assertTrue(0.3 < np.mean([r.loss_probability for r in results]) < 0.7)

    def test_a_real_edge_is_not_overfit(self) -> None:
        returns = noise(9, 1000, 50)
        returns[:, 17] += 0.2
        result = of.probability_of_overfitting(returns, splits=16, max_combinations=500)
        self.assertLess(result.pbo, 0.1)
        self.assertLess(result.loss_probability, 0.05)
        self.assertTrue((result.logits > 0).mean() > 0.9)

    def test_a_set_built_to_overfit(self) -> None:
        # Each trial's block means sum to zero: what it earns in-sample it gives back out of
        # sample, so the in-sample winner is the out-of-sample loser (mean reversion).
        splits, length, trials = 8, 100, 20
        rng = np.random.default_rng(10)
        offsets = rng.normal(0, 0.3, (splits, trials))
        offsets -= offsets.mean(axis=0)
        returns = np.repeat(offsets, length, axis=0) + rng.standard_normal((splits * length, trials))
        result = of.probability_of_overfitting(returns, splits=splits)
        self.assertGreater(result.pbo, 0.5)
        self.assertGreater(result.loss_probability, 0.5)
        self.assertLess(result.degradation, 0)

    def test_combination_count_and_cap(self) -> None:
        returns = noise(11, 480, 10)
        full = of.probability_of_overfitting(returns, splits=8)
        self.assertEqual((full.combinations, len(full.logits), full.splits), (math.comb(8, 4), 70, 8))
        capped = of.probability_of_overfitting(returns, splits=16, max_combinations=100, seed=3)
        again = of.probability_of_overfitting(returns, splits=16, max_combinations=100, seed=3)
        other = of.probability_of_overfitting(returns, splits=16, max_combinations=100, seed=4)
        self.assertEqual(capped.combinations, 100)
        np.testing.assert_array_equal(capped.logits, again.logits)
        self.assertFalse(np.array_equal(capped.logits, other.logits))

    def test_sampled_combinations_are_distinct_halves(self) -> None:
        masks = of._combination_masks(16, 300, seed=0)
        self.assertEqual(masks.shape, (300, 16))
        self.assertTrue((masks.sum(axis=1) == 8).all())
        self.assertEqual(len({row.tobytes() for row in masks}), 300)

    def test_unrank_is_lexicographic(self) -> None:
        for n, k in ((8, 4), (10, 3)):
            expected = [list(c) for c in itertools.combinations(range(n), k)]
            self.assertEqual([of._unrank(i, n, k) for i in range(len(expected))], expected)

    def test_oldest_rows_are_dropped(self) -> None:
        returns = noise(12, 203, 6)
        garbage = returns.copy()
        garbage[:3] = 1e6                                    # 203 % 8 = 3 rows are not used
        np.testing.assert_array_equal(of.probability_of_overfitting(returns, splits=8).logits,
                                      of.probability_of_overfitting(garbage, splits=8).logits)

    def test_block_moments_match_the_generic_metric(self) -> None:
        returns = noise(13, 403, 7)
        returns[:150, 2] = 0.0                               # no trades for a while
        returns[:, 3] = 0.001                                # flat
        returns[200:260, 4] = 0.0
        fast = of.probability_of_overfitting(returns, splits=8)
        slow = of.probability_of_overfitting(returns, splits=8, metric=lambda r: of.sharpe_ratio(r))
        np.testing.assert_array_equal(fast.logits, slow.logits)
        self.assertAlmostEqual(fast.degradation, slow.degradation, places=9)
        blocks, masks = of._blocks(returns, 8), of._combination_masks(8, 5000, 0)
        np.testing.assert_allclose(of._block_sharpe(blocks, masks), of._scores(blocks, masks, of.sharpe_ratio),
                                   rtol=0, atol=1e-12)

    def test_ties_get_average_ranks(self) -> None:
        # Two identical winning trials and a flat one: the winner ranks 2.5 of 3 out of sample.
        base = 1 + 0.1 * noise(14, 160, 1)[:, 0]
        result = of.probability_of_overfitting(np.column_stack([base, base, np.zeros(160)]), splits=4)
        np.testing.assert_allclose(result.logits, np.full(6, math.log(0.625 / 0.375)), rtol=1e-12)
        twins = of.probability_of_overfitting(np.column_stack([base, base]), splits=4)
        self.assertEqual((twins.pbo, float(np.abs(twins.logits).max())), (1.0, 0.0))   # rank 1.5 of 2: a median
        idle = of.probability_of_overfitting(np.column_stack([np.zeros(160), -base]), splits=4)
        self.assertEqual((idle.pbo, idle.loss_probability), (0.0, 0.0))   # a flat winner breaks even: no loss

    def test_custom_metric_must_be_column_wise(self) -> None:
        with self.assertRaisesRegex(ValueError, "^metric must return 5 finite values"):
            of.probability_of_overfitting(noise(15, 80, 5), splits=4, metric=lambda r: float(r.mean()))

    def test_bad_input(self) -> None:
        good = noise(16, 80, 5)
        nan_row = good.copy()
        nan_row[7, 2] = np.nan
        cases = [("splits must be an even", good, {"splits": 7}),
                 ("splits must be an even", good, {"splits": 0}),
                 ("performance must be a 2-D", good[:, 0], {}),
                 ("performance must be a 2-D", good[None], {}),
                 ("performance has 1 trial", good[:, :1], {}),
                 ("performance has 6 periods, fewer than splits=8", good[:6], {"splits": 8}),
                 ("performance has non-finite values in 1 row\\(s\\) \\(first: 7\\)", nan_row, {"splits": 8}),
                 ("max_combinations must be", good, {"splits": 8, "max_combinations": 0})]
        for message, performance, kwargs in cases:
            with self.subTest(message, **kwargs), self.assertRaisesRegex(ValueError, "^" + message):
                of.probability_of_overfitting(performance, **kwargs)


if __name__ == "__main__":
    unittest.main()

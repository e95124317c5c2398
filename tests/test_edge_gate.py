"""The edge gate: the verdict's statistics, the evidence window, the backtest sitting out
a market without an edge and trading one with a planted edge, and the paper trader
sitting out the (random-walk) simulated market and saying why."""
import math
import tempfile
import unittest
from statistics import NormalDist

import numpy as np

import backtest as bt
from domain import StrategyParams
from edge import EdgeSettings, judge, recent_returns
from labels import samples_from_candles
from reporter import Reporter
from risk_manager import RiskManager
from sim_market import simulated_ohlcv
from strategies import TrendMomentum
from tests.test_trader import trader_config
from status_report import status_report
from trader import Trader

TF = 300_000                          # 5m
T0 = 1_704_067_200_000                # 2024-01-01 00:00 UTC
START = 10_000.0
GATE = EdgeSettings(True, 30, 0.9, 500)
NO_GATE = EdgeSettings(False, 30, 0.9, 500)


def strategy() -> TrendMomentum:
    """The default strategy, signalling on most up-moves."""
    return TrendMomentum(min_volume_ratio=0)


def params() -> StrategyParams:
    return StrategyParams(timeframe_ms=TF)


def candles_from_returns(rng: np.random.Generator, log_returns: np.ndarray,
                         wick: float) -> np.ndarray:
    """(T, 6) candles whose closes follow `log_returns`, each opening at the last close,
    with random wicks of about `wick` and lognormal volume."""
    n = len(log_returns)
    c = 100.0 * np.exp(np.cumsum(log_returns))
    o = np.concatenate([[100.0], c[:-1]])
    w = np.abs(rng.normal(0.0, wick, (2, n)))
    h = np.maximum(o, c) * np.exp(w[0])
    l = np.minimum(o, c) * np.exp(-w[1])
    v = rng.lognormal(8.0, 0.3, n)
    return np.column_stack([T0 + np.arange(n) * TF, o, h, l, c, v])


def random_walk(seed: int, pairs: int = 4, n: int = 5000, vol: float = 0.004) -> dict:
    """Driftless random-walk pairs: no strategy has an edge there, after costs a loss."""
    rng = np.random.default_rng(seed)
    return {f"RW{p}/USDT": candles_from_returns(rng, rng.normal(0.0, vol, n), vol / 2)
            for p in range(pairs)}


def trending(seed: int, pairs: int = 4, n: int = 5000, vol: float = 0.003,
             drift: float = 0.0008, regime: int = 300) -> dict:
    """A planted edge: momentum persists. Each pair alternates between up- and down-trend
    regimes of 150..450 candles with a drift of +-0.08 % per candle (0.3 % volatility).
    Inside an up regime the trend-momentum conditions hold and the drift goes on: over the
    ~12 candles a 3-ATR take-profit needs, about +1 %, well above the ~0.3 % round trip."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in range(pairs):
        mu = np.empty(n)
        i = 0
        while i < n:
            length = int(rng.integers(regime // 2, regime * 3 // 2))
            mu[i:i + length] = drift * rng.choice([1.0, -1.0])
            i += length
        out[f"TR{p}/USDT"] = candles_from_returns(rng, mu + rng.normal(0.0, vol, n), vol / 2)
    return out


def replay(candles: dict, edge: EdgeSettings) -> bt.BacktestResult:
    return bt.run_backtest(candles, use_model=False, strategy=strategy(), params=params(),
                           risk=RiskManager(0.01, 3, 0.3, 3),
                           settings=bt.BacktestSettings(starting_balance=START), edge=edge)


def entry_closes(result: bt.BacktestResult) -> list[int]:
    return [e[1] for e in result.events if e[0] == "entry"]


# --------------------------------------------------------------------------- judge

class TestJudge(unittest.TestCase):
    def test_too_few_trades_keep_the_gate_closed_and_the_reason_names_the_count(self):
        verdict = judge(np.full(12, 0.05), EdgeSettings(True, 30, 0.9, 500))
        self.assertFalse(verdict.open, "12 winners are not enough evidence for 30 needed")
        self.assertEqual(verdict.trades, 12)
        self.assertIn("12", verdict.reason)
        self.assertIn("30", verdict.reason)
        self.assertTrue(math.isnan(verdict.mean) and math.isnan(verdict.lower))
        empty = judge(np.empty(0), GATE)
        self.assertFalse(empty.open)
        self.assertEqual(empty.trades, 0)
        self.assertIn("0 of 30", empty.reason)

    def test_non_finite_returns_are_not_counted(self):
        r = np.concatenate([np.full(29, 0.01), [np.nan, np.inf, -np.inf]])
        verdict = judge(r, GATE)
        self.assertEqual(verdict.trades, 29)
        self.assertFalse(verdict.open, "29 finite returns: one short of 30")

    def test_clearly_positive_returns_open_the_gate(self):
        r = np.random.default_rng(5).normal(0.005, 0.01, 200)
        verdict = judge(r, GATE)
        self.assertTrue(verdict.open, verdict.reason)
        self.assertEqual(verdict.trades, 200)
        self.assertGreater(verdict.lower, 0)
        self.assertLess(verdict.lower, verdict.mean)
        self.assertIn("200", verdict.reason)

    def test_zero_mean_noise_keeps_the_gate_closed(self):
        for seed in range(10):
            r = np.random.default_rng(seed).normal(0.0, 0.01, 500)
            r = r - r.mean()                        # exactly no edge
            verdict = judge(r, GATE)
            self.assertFalse(verdict.open, f"seed {seed}: {verdict.reason}")
            self.assertLess(verdict.lower, 0)
            self.assertIn("sitting out", verdict.reason)
        # the random walk after costs: a small negative mean
        r = np.random.default_rng(11).normal(-0.003, 0.01, 5000)
        self.assertFalse(judge(r, GATE).open)

    def test_a_positive_mean_without_confidence_keeps_the_gate_closed(self):
        r = np.array([0.05, -0.04] * 20 + [0.01])   # mean > 0, lower bound < 0
        verdict = judge(r, GATE)
        self.assertGreater(verdict.mean, 0)
        self.assertLess(verdict.lower, 0)
        self.assertFalse(verdict.open)

    def test_the_lower_bound_is_mean_minus_z_std_over_root_n_on_a_hand_example(self):
        r = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
        # mean 0.03; sample std sqrt((4+1+0+1+4)e-4 / 4) = sqrt(2.5e-4) = 0.0158114;
        # z(0.9) = 1.2815516; lower = 0.03 - 1.2815516 * 0.0158114 / sqrt(5) = 0.0209381
        verdict = judge(r, EdgeSettings(True, 5, 0.9, 500))
        self.assertAlmostEqual(verdict.mean, 0.03, places=12)
        self.assertAlmostEqual(verdict.lower, 0.0209381, places=6)
        self.assertTrue(verdict.open)
        self.assertEqual(verdict.trades, 5)
        # the same with another confidence, from the formula
        z = NormalDist().inv_cdf(0.99)
        self.assertAlmostEqual(z, 2.3263479, places=6)
        strict = judge(r, EdgeSettings(True, 5, 0.99, 500))
        self.assertAlmostEqual(strict.lower, 0.03 - z * math.sqrt(2.5e-4) / math.sqrt(5),
                               places=12)
        # a bound that lands below zero: [0.01, -0.005, 0.002], mean 0.0023333,
        # std 0.0075056, lower = 0.0023333 - 1.2815516 * 0.0075056 / sqrt(3) = -0.0032201
        weak = judge(np.array([0.01, -0.005, 0.002]), EdgeSettings(True, 3, 0.9, 500))
        self.assertAlmostEqual(weak.lower, -0.0032201, places=6)
        self.assertFalse(weak.open)

    def test_disabled_is_always_open(self):
        off = EdgeSettings(False, 30, 0.9, 500)
        for r in (np.empty(0), np.full(3, -0.05), np.full(100, -0.01)):
            verdict = judge(r, off)
            self.assertTrue(verdict.open)
            self.assertEqual(verdict.trades, len(r))


# --------------------------------------------------------------------------- the evidence

class TestRecentReturns(unittest.TestCase):
    def test_only_outcomes_known_by_now_and_signalled_within_the_window(self):
        now, window = 10_000, 1_000
        # (signal time, end time, return)
        rows = [(9_500, 9_900, 0.1),      # inside, known: kept
                (9_500, 10_000, 0.2),     # ended exactly now: known, kept
                (9_500, 10_001, 0.3),     # ends after now: not known yet
                (9_000, 9_500, 0.4),      # signalled exactly a window ago: outside
                (9_001, 9_500, 0.5),      # just inside the window: kept
                (8_000, 9_900, 0.6),      # signalled long before: outside
                (10_000, 12_000, 0.7)]    # signalled now, outcome in the future
        time_ms = np.array([r[0] for r in rows], dtype=np.int64)
        end_ms = np.array([r[1] for r in rows], dtype=np.int64)
        ret = np.array([r[2] for r in rows])
        got = recent_returns(end_ms, time_ms, ret, now, window)
        np.testing.assert_array_equal(got, [0.1, 0.2, 0.5])
        self.assertEqual(len(recent_returns(end_ms, time_ms, ret, 9_000, window)), 0)
        np.testing.assert_array_equal(recent_returns(end_ms, time_ms, ret, 20_000, 100_000),
                                      ret)

    def test_labels_carry_times_that_never_look_ahead(self):
        s = samples_from_candles(random_walk(3, pairs=2, n=1500), strategy(), params())
        self.assertGreater(len(s.ret), 30)
        self.assertTrue((s.label_end_ms > s.time_ms).all(), "an outcome is known after its signal")
        now = int(s.time_ms[len(s.time_ms) // 2])
        got = recent_returns(s.label_end_ms, s.time_ms, s.ret, now, 500 * TF)
        known = (s.label_end_ms <= now) & (s.time_ms > now - 500 * TF)
        self.assertEqual(len(got), int(known.sum()))
        self.assertLess(len(got), int((s.time_ms <= now).sum()) + 1)


# --------------------------------------------------------------------------- the backtest

class TestBacktestWithoutEdge(unittest.TestCase):
    """A random walk: the strategy loses its costs on every trade on average; gated, the
    bot (nearly) never trades."""

    markets = {"numpy random walk": lambda: random_walk(1),
               "sim_market.simulated_ohlcv": lambda: simulated_ohlcv(5, 1, "5m", 5000)}

    @classmethod
    def setUpClass(cls):
        cls.runs = {}
        for name, make in cls.markets.items():
            candles = make()
            cls.runs[name] = (candles, replay(candles, NO_GATE), replay(candles, GATE))

    def test_the_gated_bot_stays_nearly_flat(self):
        for name, (_, free, gated) in self.runs.items():
            with self.subTest(market=name):
                self.assertGreater(len(free.trades), 100, "ungated, the strategy trades a lot")
                self.assertLess(free.final_equity, START, "and loses its costs")
                self.assertEqual(free.gated_steps, 0)
                self.assertGreater(gated.gated_steps, 0)
                self.assertLessEqual(len(gated.trades), 0.1 * len(free.trades),
                                     f"{len(gated.trades)} gated vs {len(free.trades)} trades")
                free_loss = START - free.final_equity
                gated_loss = START - gated.final_equity
                self.assertLessEqual(gated_loss, 0.2 * free_loss,
                                     f"gated loss {gated_loss:.2f} vs ungated {free_loss:.2f}")

    def test_every_gated_entry_was_decided_while_the_judge_was_open(self):
        for name, (candles, _, gated) in self.runs.items():
            with self.subTest(market=name):
                s = samples_from_candles(candles, strategy(), params())
                for close_ms in entry_closes(gated):
                    verdict = judge(recent_returns(s.label_end_ms, s.time_ms,
                                                   s.ret.astype(float), close_ms, 500 * TF), GATE)
                    self.assertTrue(verdict.open, f"entry at {close_ms}: {verdict.reason}")


class TestBacktestWithPlantedEdge(unittest.TestCase):
    """Persistent momentum: the strategy's signal trades pay after costs, and the gate lets
    the bot trade them."""

    @classmethod
    def setUpClass(cls):
        cls.candles = trending(0)
        cls.free = replay(cls.candles, NO_GATE)
        cls.gated = replay(cls.candles, GATE)

    def test_the_planted_edge_is_there_after_costs(self):
        s = samples_from_candles(self.candles, strategy(), params())
        verdict = judge(s.ret, GATE)
        self.assertTrue(verdict.open, verdict.reason)
        self.assertGreater(verdict.mean, 0.003, "more than another round trip's costs")

    def test_the_gated_bot_trades_and_ends_with_a_profit(self):
        free, gated = self.free, self.gated
        self.assertGreater(len(gated.trades), 0)
        self.assertGreaterEqual(len(gated.trades), 0.5 * len(free.trades),
                                f"{len(gated.trades)} gated vs {len(free.trades)} trades")
        self.assertGreater(gated.final_equity, START * 1.05,
                           f"gated final equity {gated.final_equity:.2f}")
        self.assertGreater(free.final_equity, START)
        net = sum(t.profit for t in gated.trades)
        self.assertGreater(net, 0)
        self.assertAlmostEqual(gated.final_equity, START + net, delta=1e-6 * START)
        # the gate only waits while the evidence builds up (and in a losing stretch)
        self.assertLess(gated.gated_steps, 0.2 * len(gated.times_ms))

    def test_every_gated_entry_was_decided_while_the_judge_was_open(self):
        s = samples_from_candles(self.candles, strategy(), params())
        closes = entry_closes(self.gated)
        self.assertGreater(len(closes), 30)
        first = None
        for close_ms in closes:
            verdict = judge(recent_returns(s.label_end_ms, s.time_ms, s.ret.astype(float),
                                           close_ms, 500 * TF), GATE)
            self.assertTrue(verdict.open, f"entry at {close_ms}: {verdict.reason}")
            first = close_ms if first is None else first
        # before 30 signal trades had finished, nothing was entered
        known = int((s.label_end_ms <= first).sum())
        self.assertGreaterEqual(known, 30)
        self.assertLess(min(entry_closes(self.free)), first, "ungated, it entered earlier")


# --------------------------------------------------------------------------- the trader

class TestTraderGate(unittest.TestCase):
    def start(self, **overrides) -> tuple[Trader, list[str]]:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        lines: list[str] = []
        # the trend-momentum strategy (trader_config's STRATEGY_PARAMS are its parameters)
        config = trader_config(tmp.name, **({"STRATEGY": "trend_momentum"} | overrides))
        trader = Trader(config, reporter=Reporter(lines.append))
        self.addCleanup(trader.close)
        return trader, lines

    def test_the_gated_paper_trader_sits_out_the_random_walk_and_says_why(self):
        trader, lines = self.start(EDGE_GATE="true")
        for cycle in range(15):
            trader.run_cycle()
            self.assertEqual(trader.positions, {}, f"cycle {cycle}: no position opened")
            self.assertIsNotNone(trader.edge, "the gate was judged")
            self.assertFalse(trader.edge.open, trader.edge.reason)
            self.assertEqual(len(trader.decisions.entries), 0, f"cycle {cycle}: no entry decided")
            self.assertIn("sitting out", trader._gate_state())
            trader.client.sim.advance(300)
        self.assertEqual(trader.store.totals().trades, 0)
        self.assertEqual(trader.orders.unresolved(), [])
        self.assertAlmostEqual(trader.ledger.cash, trader.config.starting_balance, places=6)
        status = [line for line in lines if line.startswith("cycle")]
        self.assertTrue(status, "status lines were reported")
        self.assertIn("sitting out", status[-1])
        self.assertIn("positions 0/", status[-1])

        report = status_report(trader.config)
        gate = [line for line in report.splitlines() if line.startswith("edge gate: ")]
        self.assertEqual(len(gate), 1, report)
        self.assertIn("sitting out", gate[0])
        self.assertIn(trader.edge.reason, gate[0], "the reason of the last verdict")
        self.assertNotIn("edge gate: edge gate", report)
        self.assertIn(str(trader.edge.trades), gate[0], "it names the evidence")

    def test_ungated_the_same_market_opens_positions(self):
        trader, lines = self.start(EDGE_GATE="false")
        for _ in range(20):
            trader.run_cycle()
            self.assertTrue(trader.edge is None or trader.edge.open)
            if trader.positions:
                break
            trader.client.sim.advance(300)
        self.assertTrue(trader.positions, "no position opened in 20 cycles with the gate off")
        self.assertNotIn("sitting out", trader._gate_state())
        report = status_report(trader.config)
        self.assertNotIn("sitting out", report)


if __name__ == "__main__":
    unittest.main()

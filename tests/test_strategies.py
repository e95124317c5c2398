"""Strategies as a user meets them: a strategy file of their own that trades in the backtest
and in the paper Trader, one-line errors for bad STRATEGY / STRATEGY_PARAMS, `bot.py
strategies` and `lookahead-check`, strategies on longer timeframes, and parse_params."""
from __future__ import annotations

import collections
import json
import tempfile
import textwrap
import unittest
from pathlib import Path

import numpy as np

import backtest
import backtest_job
import strategies
from candle_files import candle_path, resample, write_candles
from config import ConfigError, load_config
from domain import StrategyParams
from reporter import Reporter
from sim_market import simulated_ohlcv
from strategies import Param, Strategy, TrendMomentum
from tests.test_bot import bot_env, run_bot
from tests.test_trader import trader_config
from trader import StartupError, Trader

FIVE_MIN_MS = 300_000
HOUR_MS = 3_600_000

# A user's strategy: a declared integer and float parameter, an extra indicator column and
# an exit signal. Entries on a close above a fast EMA while RSI is not hot; sells when it is.
MY_STRATEGY = '''
import numpy as np
from indicators import ema
from strategies import Param, Strategy


class MyStrategy(Strategy):
    name = "my_strategy"
    family = "test"
    description = "buys a close above a fast EMA; sells when RSI gets hot"
    params = (Param("fast_period", 8, 2, 50, "EMA period of the entry filter"),
              Param("exit_rsi", 55.0, 40.0, 90.0, "sell at or above this RSI"))

    def indicators(self, o, h, l, c, v):
        return {"my_fast": ema(c, int(self.fast_period))}

    def entry_score(self, x):
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (x["close"] > x["my_fast"]) & (x["rsi"] < 50)
            return np.where(ok, x["close"] / x["my_fast"], np.nan)

    def exit_signal(self, x):
        with np.errstate(invalid="ignore"):
            return x["rsi"] >= self.exit_rsi
'''

# Uses the next candle's close: look-ahead.
PEEKER = '''
import numpy as np
from strategies import Strategy


class Peeker(Strategy):
    name = "peeker"

    def indicators(self, o, h, l, c, v):
        nxt = np.full(c.shape, np.nan)
        nxt[:-1] = c[1:]
        return {"next_close": nxt}

    def entry_score(self, x):
        with np.errstate(invalid="ignore"):
            return np.where(x["next_close"] > x["close"], 1.0, np.nan)
'''

# Decides on 1h candles, whatever TIMEFRAME is.
HOURLY = '''
from strategies import TrendMomentum


class Hourly(TrendMomentum):
    name = "hourly_file"
    timeframe = "1h"
'''

RAISES = 'raise RuntimeError("boom at import")\n'
NOT_A_STRATEGY = 'class NotOne:\n    def entry_score(self, x):\n        return x["close"]\n'


class Hourly(TrendMomentum):
    name = "hourly"
    timeframe = "1h"


class Workspace:
    """A temp dir with the strategy files above (stems unique to this module: a user file is
    imported as user_strategy_<stem>)."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self._tmp.name)
        files = {"ts_my_strategy.py": MY_STRATEGY, "ts_peeker.py": PEEKER,
                 "ts_hourly.py": HOURLY, "ts_raises.py": RAISES, "ts_not_one.py": NOT_A_STRATEGY}
        for name, text in files.items():
            (self.dir / name).write_text(textwrap.dedent(text))
        self.my = f"{self.dir / 'ts_my_strategy.py'}:MyStrategy"
        self.peeker = f"{self.dir / 'ts_peeker.py'}:Peeker"
        self.hourly = f"{self.dir / 'ts_hourly.py'}:Hourly"
        self.raises = f"{self.dir / 'ts_raises.py'}:Anything"
        self.not_one = f"{self.dir / 'ts_not_one.py'}:NotOne"
        self.missing = f"{self.dir / 'ts_missing.py'}:MyStrategy"
        self.data = self.dir / "data"
        self.data.mkdir()

    def cleanup(self) -> None:
        self._tmp.cleanup()


def setUpModule() -> None:
    global WS
    WS = Workspace()


def tearDownModule() -> None:
    WS.cleanup()


def config_for(data_dir, **env):
    base = {"DATA_DIR": str(data_dir), "EDGE_GATE": "false", "ML_ENABLED": "false"}
    base.update({k: str(v) for k, v in env.items()})
    return load_config(None, base)


def cli(args, **env):
    """`python bot.py --env-file /dev/null ARGS` in a clean environment (the default
    strategy unless STRATEGY is given)."""
    env.setdefault("STRATEGY_PARAMS", "")
    env.setdefault("STRATEGY", strategies.DEFAULT_STRATEGY)
    return run_bot(args, bot_env(str(WS.data), **env), timeout=60)


# --------------------------------------------------------------------------- 1. a user file

class UserStrategyTest(unittest.TestCase):
    def test_loads_from_config_with_its_params(self) -> None:
        config = config_for(WS.data, STRATEGY=WS.my, STRATEGY_PARAMS="fast_period=10,exit_rsi=60")
        s = strategies.from_config(config)
        self.assertIsInstance(s, Strategy)
        self.assertEqual(s.name, "my_strategy")
        self.assertEqual(s.values, {"fast_period": 10, "exit_rsi": 60.0})
        self.assertIsInstance(s.fast_period, int)
        self.assertIsInstance(s.exit_rsi, float)
        # defaults for what STRATEGY_PARAMS leaves out
        self.assertEqual(strategies.load_strategy(WS.my, "exit_rsi=70").values,
                         {"fast_period": 8, "exit_rsi": 70.0})
        # its own column is part of the frame the strategy reads
        candles = simulated_ohlcv(1, 3, "5m", 300)
        x = strategies.frame(next(iter(candles.values())), s)
        self.assertIn("my_fast", x)
        score, exit_ = strategies.signals(s, x)
        self.assertEqual(score.shape, exit_.shape)
        self.assertEqual(exit_.dtype, bool)
        self.assertTrue(np.isfinite(score).any())
        self.assertTrue(exit_.any())

    def test_backtest_opens_trades_and_its_exit_signal_closes_some(self) -> None:
        config = config_for(WS.data, STRATEGY=WS.my, STRATEGY_PARAMS="fast_period=10,exit_rsi=60")
        candles = simulated_ohlcv(4, 7, "5m", 2000)
        result = backtest.run_backtest(candles, config, use_model=False)
        self.assertEqual(result.strategy, "my_strategy")
        self.assertGreater(len(result.trades), 10)
        reasons = collections.Counter(t.exit_reason for t in result.trades)
        self.assertGreater(reasons["exit_signal"], 0, reasons)
        entries = [e for e in result.events if e[0] == "entry"]
        self.assertGreaterEqual(len(entries), len(result.trades) - reasons["end_of_backtest"])

        # the same run with exit signals turned off never exits on one
        off = backtest.run_backtest(candles, config, use_model=False,
                                    params=StrategyParams(FIVE_MIN_MS, use_exit_signal=False))
        self.assertEqual([t for t in off.trades if t.exit_reason == "exit_signal"], [])

    def test_paper_trader_opens_a_position(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            lines: list[str] = []
            trader = Trader(trader_config(tmp, STRATEGY=WS.my,
                                          STRATEGY_PARAMS="fast_period=5,exit_rsi=80"),
                            reporter=Reporter(lines.append))
            try:
                self.assertEqual(trader.strategy.name, "my_strategy")
                self.assertEqual(trader.strategy.values, {"fast_period": 5, "exit_rsi": 80.0})
                for _ in range(20):
                    trader.run_cycle()
                    if trader.positions:
                        break
                    trader.client.sim.advance(300)
                self.assertTrue(trader.positions, "no position opened in 20 cycles")
            finally:
                trader.close()


# --------------------------------------------------------------------------- 2. bad input

class BadStrategyInputTest(unittest.TestCase):
    def cases(self):
        return {
            "unknown built-in": ({"STRATEGY": "no_such_strategy"}, "STRATEGY"),
            "missing file": ({"STRATEGY": WS.missing}, "STRATEGY"),
            "raises on import": ({"STRATEGY": WS.raises}, "STRATEGY"),
            "not a Strategy subclass": ({"STRATEGY": WS.not_one}, "STRATEGY"),
            "no such class": ({"STRATEGY": WS.my.replace(":MyStrategy", ":Nope")}, "STRATEGY"),
            "not a name or path": ({"STRATEGY": "Not A Name"}, "STRATEGY"),
            "unknown parameter": ({"STRATEGY": WS.my, "STRATEGY_PARAMS": "bogus=1"},
                                  "STRATEGY_PARAMS"),
            "unknown built-in parameter": ({"STRATEGY": "breakout",
                                            "STRATEGY_PARAMS": "rsi_oversold=20"},
                                           "STRATEGY_PARAMS"),
            "above the range": ({"STRATEGY": WS.my, "STRATEGY_PARAMS": "exit_rsi=99"},
                                "STRATEGY_PARAMS"),
            "below the range": ({"STRATEGY": WS.my, "STRATEGY_PARAMS": "fast_period=1"},
                                "STRATEGY_PARAMS"),
            "not name=value": ({"STRATEGY": WS.my, "STRATEGY_PARAMS": "exit_rsi"},
                               "STRATEGY_PARAMS"),
            "not a number": ({"STRATEGY": WS.my, "STRATEGY_PARAMS": "exit_rsi=abc"},
                             "STRATEGY_PARAMS"),
            "not finite": ({"STRATEGY": WS.my, "STRATEGY_PARAMS": "exit_rsi=nan"},
                           "STRATEGY_PARAMS"),
        }

    def assert_one_line_error(self, proc, names: str) -> str:
        self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("error:"), proc.stderr)
        self.assertIn(names, lines[0])
        return lines[0]

    def test_strategies_command(self) -> None:
        for case, (env, names) in self.cases().items():
            with self.subTest(case=case):
                proc = cli(["strategies"], **env)
                line = self.assert_one_line_error(proc, names)
                self.assertEqual(proc.stdout, "")
                if case == "unknown built-in":
                    for name in strategies.BUILTINS:   # the message lists what there is
                        self.assertIn(name, line)
                if case == "raises on import":
                    self.assertIn("boom at import", line)
                if case == "above the range":
                    self.assertIn("[40, 90]", line)

    def test_backtest_simulated(self) -> None:
        picked = ("unknown built-in", "missing file", "raises on import",
                  "not a Strategy subclass", "unknown parameter", "above the range",
                  "not name=value")
        cases = self.cases()
        with tempfile.TemporaryDirectory() as reports:
            for case in picked:
                env, names = cases[case]
                with self.subTest(case=case):
                    proc = cli(["backtest", "--simulated", "--report-dir", reports], **env)
                    self.assert_one_line_error(proc, names)
            # the same problems through --strategy / --strategy-params
            for args, names in ((["--strategy", WS.not_one], "STRATEGY"),
                                (["--strategy", WS.my, "--strategy-params", "exit_rsi=10"],
                                 "STRATEGY_PARAMS")):
                with self.subTest(args=args):
                    proc = cli(["backtest", "--simulated", "--report-dir", reports] + args)
                    self.assert_one_line_error(proc, names)
            self.assertEqual(list(Path(reports).iterdir()), [])   # nothing written


# --------------------------------------------------------------------------- 3. listing

class ListingTest(unittest.TestCase):
    def test_lists_every_builtin_with_params_and_the_active_one(self) -> None:
        proc = cli(["strategies"])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = proc.stdout
        for name, cls in strategies.BUILTINS.items():
            with self.subTest(strategy=name):
                self.assertRegex(out, rf"(?m)^{name} \({cls.family}, ")
                for p in cls.params:
                    self.assertRegex(out, rf"(?m)^    {p.name} = {p.default:g}  "
                                          rf"\[{p.low:g} \.\. {p.high:g}\]")
        self.assertIn(f"STRATEGY={strategies.DEFAULT_STRATEGY} is active", out)

    def test_active_builtin_shows_its_params(self) -> None:
        proc = cli(["strategies"], STRATEGY="breakout", STRATEGY_PARAMS="channel=20")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("STRATEGY=breakout is active", proc.stdout)
        self.assertRegex(proc.stdout, r"(?m)^    channel = 20  \[10 \.\. 200\]")
        self.assertNotIn("trend_momentum is active", proc.stdout)
        for name in strategies.BUILTINS:
            self.assertRegex(proc.stdout, rf"(?m)^{name} \(")

    def test_active_user_strategy_is_described(self) -> None:
        proc = cli(["strategies"], STRATEGY=WS.my, STRATEGY_PARAMS="exit_rsi=65")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(f"STRATEGY={WS.my} is active", proc.stdout)
        self.assertRegex(proc.stdout, r"(?m)^my_strategy \(test, timeframe TIMEFRAME, ")
        self.assertRegex(proc.stdout, r"(?m)^    exit_rsi = 65  \[40 \.\. 90\]")
        self.assertRegex(proc.stdout, r"(?m)^    fast_period = 8  \[2 \.\. 50\]")
        for name in strategies.BUILTINS:
            self.assertRegex(proc.stdout, rf"(?m)^{name} \(")


# --------------------------------------------------------------------------- 4. lookahead-check

class LookaheadCommandTest(unittest.TestCase):
    def test_peeking_file_exits_1_and_names_the_column(self) -> None:
        proc = cli(["lookahead-check", WS.peeker])
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertTrue(proc.stdout.startswith("LOOK-AHEAD in peeker: column next_close"),
                        proc.stdout)
        self.assertIn("to blame: next_close", proc.stdout)

    def test_builtin_and_causal_user_file_exit_0(self) -> None:
        for spec, name in (("mean_reversion", "mean_reversion"), (WS.my, "my_strategy")):
            with self.subTest(strategy=spec):
                proc = cli(["lookahead-check", spec])
                self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
                self.assertTrue(proc.stdout.startswith(f"no look-ahead found in {name}: "),
                                proc.stdout)

    def test_bad_spec_is_a_one_line_error(self) -> None:
        proc = cli(["lookahead-check", WS.missing])
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertTrue(proc.stderr.startswith("error: STRATEGY"), proc.stderr)


# --------------------------------------------------------------------------- 5. timeframes

class TimeframeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls._tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls._tmp.name)
        cls.candles = simulated_ohlcv(3, 11, "5m", 12 * 24 * 20)    # 20 days of 5m
        for symbol, a in cls.candles.items():
            write_candles(candle_path(cls.dir, symbol, "5m"), a)
        cls.config = config_for(cls.dir, STRATEGY_PARAMS="min_volume_ratio=0")
        cls.hourly = {s: resample(a, FIVE_MIN_MS, HOUR_MS) for s, a in cls.candles.items()}

    @classmethod
    def tearDownClass(cls) -> None:
        cls._tmp.cleanup()

    def test_decision_timeframe(self) -> None:
        self.assertEqual(strategies.decision_timeframe(Hourly(), "5m"), "1h")
        self.assertEqual(strategies.decision_timeframe(Hourly(), "1h"), "1h")
        self.assertEqual(strategies.decision_timeframe(Hourly(), "15m"), "1h")
        self.assertEqual(strategies.decision_timeframe(TrendMomentum(), "5m"), "5m")

    def test_job_resamples_to_the_strategy_timeframe(self) -> None:
        self.assertEqual(self.config.timeframe, "5m")
        strategy = Hourly(min_volume_ratio=0)
        job = backtest_job.backtest_job(self.config, data_dir=self.dir, timeframe="5m",
                                    strategy=strategy, use_model=False)
        self.assertIs(job.strategy, strategy)
        self.assertEqual(job.params.timeframe_ms, HOUR_MS)
        self.assertEqual(sorted(job.candles), sorted(self.candles))
        for symbol, a in self.hourly.items():
            with self.subTest(pair=symbol):
                self.assertEqual(len(a), 20 * 24)
                np.testing.assert_array_equal(job.candles[symbol], a)
                self.assertTrue((np.diff(job.candles[symbol][:, 0]) == HOUR_MS).all())

        via_job = backtest.run_backtest(job.candles, self.config, job.use_model,
                                        strategy=job.strategy, params=job.params,
                                        settings=job.settings)
        direct = backtest.run_backtest(self.hourly, self.config, False, strategy=strategy,
                                       params=StrategyParams.from_config(self.config, HOUR_MS))
        self.assertEqual(via_job.timeframe_ms, HOUR_MS)
        self.assertGreater(len(via_job.trades), 0)
        self.assertEqual(via_job.trades, direct.trades)
        np.testing.assert_array_equal(via_job.equity, direct.equity)

    def test_strategy_file_with_a_timeframe_through_the_config(self) -> None:
        config = config_for(self.dir, STRATEGY=WS.hourly, STRATEGY_PARAMS="min_volume_ratio=0")
        job = backtest_job.backtest_job(config, data_dir=self.dir, timeframe="5m", use_model=False)
        self.assertEqual(job.strategy.name, "hourly_file")
        self.assertEqual(job.params.timeframe_ms, HOUR_MS)
        for symbol, a in self.hourly.items():
            np.testing.assert_array_equal(job.candles[symbol], a)

    def test_impossible_timeframes_raise_one_line_config_errors(self) -> None:
        # 1h cannot be built from 45m (not a multiple) nor from 2h (longer)
        for candles_tf in ("45m", "2h", "7m"):
            with self.subTest(candles=candles_tf):
                with self.assertRaises(ConfigError) as caught:
                    strategies.decision_timeframe(Hourly(), candles_tf)
                message = str(caught.exception)
                self.assertEqual(len(message.splitlines()), 1, message)
                self.assertIn("STRATEGY hourly", message)
                self.assertIn(candles_tf, message)
                self.assertIn("1h", message)
        with self.assertRaises(ConfigError) as caught:
            backtest_job.backtest_job(self.config, data_dir=self.dir, timeframe="45m",
                                  strategy=Hourly())
        self.assertEqual(len(str(caught.exception).splitlines()), 1)

    def test_impossible_timeframe_through_the_command_line(self) -> None:
        with tempfile.TemporaryDirectory() as reports:
            proc = cli(["backtest", "--data-dir", str(self.dir), "--timeframe", "45m",
                        "--report-dir", reports, "--no-model"],
                       STRATEGY=WS.hourly, STRATEGY_PARAMS="")
        self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("error: STRATEGY hourly_file decides on 1h"), lines)

    def test_trader_refuses_an_impossible_timeframe(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaises(StartupError) as caught:
                Trader(trader_config(tmp, STRATEGY=WS.hourly, TIMEFRAME="2h"))
        self.assertIn("STRATEGY hourly_file", str(caught.exception))


# --------------------------------------------------------------------------- 6. parse_params

class ParseParamsTest(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)

    def write(self, name: str, data) -> str:
        path = self.dir / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return str(path)

    def test_pairs(self) -> None:
        self.assertEqual(strategies.parse_params(""), {})
        self.assertEqual(strategies.parse_params("  "), {})
        self.assertEqual(strategies.parse_params("a=1, b = 2.5 ,"), {"a": 1.0, "b": 2.5})

    def test_json_file(self) -> None:
        path = self.write("params.json", {"channel": 30, "min_volume_ratio": 0.5})
        self.assertEqual(strategies.parse_params(path), {"channel": 30.0, "min_volume_ratio": 0.5})
        s = strategies.load_strategy("breakout", path)
        self.assertEqual(s.values, {"channel": 30, "min_volume_ratio": 0.5})

    def test_hyperopt_result_file(self) -> None:
        path = self.write("hyperopt.json", {"strategy": "mean_reversion", "loss": -1.5,
                                            "params": {"rsi_oversold": 25, "trend_period": 100.0}})
        self.assertEqual(strategies.parse_params(path), {"rsi_oversold": 25.0, "trend_period": 100.0})
        config = config_for(self.dir, STRATEGY="mean_reversion", STRATEGY_PARAMS=path)
        s = strategies.from_config(config)
        self.assertEqual(s.values, {"rsi_oversold": 25.0, "trend_period": 100})
        self.assertIsInstance(s.trend_period, int)
        self.assertIsInstance(s.rsi_oversold, float)

    def test_integer_params_are_ints(self) -> None:
        for params in ("channel=30", {"channel": 30.0}, self.write("c.json", {"channel": 30.0})):
            with self.subTest(params=params):
                s = strategies.load_strategy("breakout", params)
                self.assertEqual(s.channel, 30)
                self.assertIs(type(s.channel), int)
                self.assertIs(type(s.min_volume_ratio), float)
        self.assertIs(type(strategies.load_strategy("breakout").channel), int)
        s = strategies.load_strategy(WS.my, "fast_period=12")
        self.assertIs(type(s.fast_period), int)
        self.assertIs(type(s.exit_rsi), float)
        self.assertTrue(Param("n", 5, 1, 9).integer)
        self.assertFalse(Param("x", 5.0, 1, 9).integer)

    def test_bad_files_are_config_errors(self) -> None:
        cases = {
            "missing": str(self.dir / "nope.json"),
            "not json": self.write("bad.json", "{not json"),
            "a list": self.write("list.json", [1, 2]),
            "a string value": self.write("str.json", {"channel": "thirty"}),
            "NaN": self.write("nan.json", '{"channel": NaN}'),
            "null": self.write("null.json", {"channel": None}),
        }
        for case, path in cases.items():
            with self.subTest(case=case):
                with self.assertRaises(ConfigError) as caught:
                    strategies.parse_params(path)
                message = str(caught.exception)
                self.assertTrue(message.startswith("STRATEGY_PARAMS:"), message)
                self.assertEqual(len(message.splitlines()), 1, message)

    def test_hyperopt_file_values_still_checked(self) -> None:
        path = self.write("h.json", {"params": {"channel": 5}})
        with self.assertRaises(ConfigError) as caught:
            strategies.load_strategy("breakout", path)
        self.assertIn("channel=5 is outside [10, 200]", str(caught.exception))


if __name__ == "__main__":
    unittest.main()

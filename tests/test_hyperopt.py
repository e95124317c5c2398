"""hyperopt: the honest protocol (a random walk shows no significant edge, a planted edge is
found in its parameter region), a SIGKILLed run resumes without repeating finished trials,
one seed gives one study, a two-worker Dask LocalCluster on 127.0.0.1 gives the study local
processes give, the chosen parameters load back into the bot, bad inputs end in one line.

Real Optuna studies in real SQLite files, real loky processes, a real Dask cluster on
loopback, real `python bot.py hyperopt` subprocesses; nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import optuna
from click.testing import CliRunner

import bot
import hyperopt
import hyperopt_report
import strategies
from backtest import BacktestSettings, run_backtest
from backtest_job import BacktestJob
from candle_files import candle_path, write_candles
from config import load_config
from domain import StrategyParams
from risk_manager import RiskManager
from tests.test_bad_input import clean_env

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_704_067_200_000                # 2024-01-01 00:00 UTC
TF = 3_600_000                        # 1h
STRATEGY = "trend_momentum"
ENV = {"ML_ENABLED": "false", "STOP_LOSS_ATR": "4", "TAKE_PROFIT_ATR": "0",
       "MAX_HOLD_CANDLES": "12"}


def market(seed: int, planted: bool, pairs: int = 2, n: int = 6000, vol: float = 0.006,
           every: int = 40, spike: float = 8.0, drift: float = 0.002, length: int = 10) -> dict:
    """1h candles of geometric random walks (0.6 % a candle) with a volume spike (8x)
    about every 50 candles. With `planted`, each spike is followed by a drift of +0.2 % a
    candle for 10 candles (+2 %, against a ~0.3 % round trip); without, the spikes carry no
    information and the prices are a pure random walk. trend_momentum exploits the edge
    only with `min_volume_ratio` above the ordinary volume (>= ~2: spikes only); below it
    most of its entries are noise that pays the costs."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in range(pairs):
        r = rng.normal(0.0, vol, n)
        vm = np.ones(n)
        for s in range(100, n - length, every):
            s += int(rng.integers(0, every // 2))
            vm[s] = spike
            if planted:
                r[s + 1:s + 1 + length] += drift
        c = 100.0 * np.exp(np.cumsum(r))
        o = np.concatenate([[100.0], c[:-1]])
        w = np.abs(rng.normal(0.0, vol / 2, (2, n)))
        h, l = np.maximum(o, c) * np.exp(w[0]), np.minimum(o, c) * np.exp(-w[1])
        v = rng.lognormal(8.0, 0.3, n) * vm
        out[f"P{p}/USDT"] = np.column_stack([T0 + np.arange(n) * TF, o, h, l, c, v])
    return out


def config(tmp: Path):
    return load_config(None, environ={"DATA_DIR": str(tmp / "ud"), **ENV})


def make_setup(candles: dict, tmp: Path, spaces=("strategy",)) -> hyperopt.Setup:
    cfg = config(tmp)
    job = BacktestJob(candles, StrategyParams.from_config(cfg, TF), BacktestSettings.from_config(cfg),
                      False, strategies.load_strategy(STRATEGY))
    return hyperopt.make_setup(job, cfg, strategy_spec=STRATEGY, timeframe="1h", n_folds=5,
                               embargo=None, spaces=spaces, objective="sharpe")


def optimise(candles: dict, tmp: Path, *, sampler: str = "tpe", seed: int = 0, trials: int = 20,
             jobs: int = 1, scheduler: str | None = None, spaces=("strategy",),
             name: str = "study") -> optuna.Study:
    """A whole in-process hyperopt run; the study in tmp/name.sqlite."""
    setup = make_setup(candles, tmp, spaces)
    with hyperopt.Pool(jobs, scheduler) as pool:
        study = hyperopt.open_study(setup, tmp / f"{name}.sqlite", None, sampler, seed, 3)
        hyperopt.run(candles, setup, study, pool, trials=trials)
    return study


def trial_table(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.params, t.value) for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE]


def pair_return(candles: dict, symbol: str) -> float:
    """A plain backtest of one pair (what `sweep` runs over pairs in its test)."""
    result = run_backtest({symbol: candles[symbol]}, None, False,
                          strategy=strategies.load_strategy(STRATEGY),
                          params=StrategyParams(TF, max_hold_candles=12),
                          risk=RiskManager(0.005, 5, 0.1, 2),
                          settings=BacktestSettings(start_ms=T0 + 200 * TF))
    return result.final_equity


class TempDir(unittest.TestCase):
    def setUp(self) -> None:
        holder = tempfile.TemporaryDirectory()
        self.addCleanup(holder.cleanup)
        self.tmp = Path(holder.name)


class ProtocolTest(unittest.TestCase):
    """Seeded TPE, 20 trials, 5 folds, no model, on 2 pairs x 250 days."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.holder = tempfile.TemporaryDirectory()
        tmp = Path(cls.holder.name)
        cls.random = hyperopt_report.analyse(optimise(market(1, planted=False), tmp, name="rw"))
        cls.planted = hyperopt_report.analyse(optimise(market(1, planted=True), tmp, name="pl"))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.holder.cleanup()

    def test_a_random_walk_shows_no_significant_edge(self) -> None:
        a = self.random
        self.assertEqual(len(a.trials), 20)
        self.assertFalse(a.deflated.significant, a.deflated)
        self.assertLess(a.deflated.probability, 0.9)
        self.assertEqual(a.deflated.n_trials, 20)
        self.assertTrue(hyperopt_report.verdict(a).startswith("no significant edge"))
        self.assertIn("no significant edge: the best of 20 trials is what luck gives",
                      hyperopt_report.format_report(a))

    def test_the_planted_edge_is_found_in_its_region(self) -> None:
        a = self.planted
        self.assertTrue(a.deflated.significant, a.deflated)
        self.assertGreaterEqual(a.values(a.chosen)["min_volume_ratio"], 1.8)
        self.assertGreater(a.holdout["score"], 0)
        self.assertGreater(a.wf_score, 0)
        self.assertTrue(hyperopt_report.verdict(a).startswith("edge survives deflation"))

    def test_the_report_is_out_of_sample_per_fold(self) -> None:
        a = self.planted
        self.assertEqual([s.fold for s in a.selections], [1, 2, 3, 4])
        self.assertEqual(a.selections[-1].trial, a.chosen.number)   # the pick, on the holdout
        for s in a.selections:    # each pick is the best on the folds before it
            best = max(t.mean_score(range(s.fold)) for t in a.trials)
            self.assertEqual(s.in_sample, best)
        self.assertIsNotNone(a.overfitting)
        self.assertEqual(a.overfitting.splits, 16)
        self.assertEqual(set(a.importance), {"rsi_overbought", "min_volume_ratio"})
        self.assertEqual(len(a.history), 20)


class ReproducibleTest(TempDir):
    def test_one_seed_one_worker_gives_the_same_study_and_the_files_load(self) -> None:
        candles = market(2, planted=True, n=2500)
        spaces = ("strategy", "exits", "protections")
        first = optimise(candles, self.tmp / "a", trials=12, spaces=spaces)
        second = optimise(candles, self.tmp / "b", trials=12, spaces=spaces)
        self.assertEqual(trial_table(first), trial_table(second))
        self.assertEqual(len(trial_table(first)), 12)
        a = hyperopt_report.analyse(first)
        paths = hyperopt_report.write_report(a, self.tmp / "report")
        for name in ("report.json", "history.png", "best_params.json", "best.env"):
            self.assertGreater(paths[name].stat().st_size, 0, name)
        loaded = strategies.load_strategy(STRATEGY, str(paths["best_params.json"]))
        chosen = a.values(a.chosen)
        self.assertEqual(loaded.values, {k: chosen[k] for k in loaded.values})
        cfg = load_config(paths["best.env"], environ={"DATA_DIR": str(self.tmp / "ud")})
        self.assertEqual(cfg.strategy, STRATEGY)
        self.assertEqual(strategies.from_config(cfg).values, loaded.values)
        self.assertEqual((cfg.stop_loss_atr, cfg.max_hold_candles, cfg.cooldown_candles),
                         (chosen["stop_loss_atr"], chosen["max_hold_candles"],
                          chosen["cooldown_candles"]))

    def test_pipelined_local_processes_run_the_in_process_random_study(self) -> None:
        candles = market(2, planted=True, n=2500)       # random: the draws follow the asks
        alone = optimise(candles, self.tmp / "a", sampler="random", trials=12)
        study = optimise(candles, self.tmp / "b", sampler="random", trials=12, jobs=2)
        table = trial_table(study)
        self.assertEqual(table, trial_table(alone))
        self.assertEqual([n for n, _, _ in table], list(range(12)))   # each number once
        self.assertEqual(len(study.get_trials(deepcopy=False)), 12)  # none failed or extra

    def test_ctrl_c_fails_the_trial_in_flight_and_the_next_run_asks_it_again(self) -> None:
        candles = market(3, planted=False, n=1500)
        real, calls = hyperopt.evaluate_fold, []

        def interrupted_in_trial_3(*args):
            calls.append(args[3])
            if len(calls) == 3 * 5 + 2:                 # trial 3, fold 2
                raise KeyboardInterrupt
            return real(*args)

        setup = make_setup(candles, self.tmp)
        with hyperopt.Pool(1) as pool, mock.patch("hyperopt.evaluate_fold", interrupted_in_trial_3):
            study = hyperopt.open_study(setup, self.tmp / "s.sqlite", None, "random", 0, 3)
            out = hyperopt.run(candles, setup, study, pool, trials=6)
        self.assertTrue(out.interrupted)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        self.assertEqual(states, [optuna.trial.TrialState.COMPLETE] * 3
                         + [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING])
        with hyperopt.Pool(1) as pool:
            study = hyperopt.open_study(setup, self.tmp / "s.sqlite", None, "random", 0, 3)
            hyperopt.run(candles, setup, study, pool, trials=6)
        trials = study.get_trials(deepcopy=False)
        self.assertEqual(len(trial_table(study)), 6)
        self.assertEqual((trials[4].user_attrs["retry_of"], trials[4].params), (3, trials[3].params))

    def test_another_setup_under_the_same_name_is_refused(self) -> None:
        candles = market(3, planted=False, n=1500)
        setup = make_setup(candles, self.tmp)
        hyperopt.open_study(setup, self.tmp / "s.sqlite", "mine", "random", 0, 3)
        other = make_setup(candles, self.tmp, spaces=("strategy", "exits"))
        with self.assertRaisesRegex(ValueError, "--study-name mine: .*another setup"):
            hyperopt.open_study(other, self.tmp / "s.sqlite", "mine", "random", 0, 3)
        self.assertNotEqual(setup.study_name(), other.study_name())


class ClusterTest(TempDir):
    """A Dask LocalCluster of two worker processes on 127.0.0.1 against local processes."""

    @classmethod
    def setUpClass(cls) -> None:
        from distributed import LocalCluster

        cls.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.close()

    def test_a_grid_study_on_the_cluster_equals_local_processes(self) -> None:
        candles = market(4, planted=True, n=2500)
        address = self.cluster.scheduler_address
        self.assertTrue(address.startswith("tcp://127.0.0.1:"), address)
        local = optimise(candles, self.tmp / "local", sampler="grid", trials=100, jobs=2)
        dask = optimise(candles, self.tmp / "dask", sampler="grid", trials=100, scheduler=address)
        self.assertEqual(len(trial_table(local)), 9)          # the 3 x 3 grid, then stop
        self.assertEqual(len({tuple(sorted(p.items())) for _, p, _ in trial_table(local)}), 9)
        self.assertEqual(trial_table(dask), trial_table(local))
        self.assertEqual((dask.best_trial.params, dask.best_value),
                         (local.best_trial.params, local.best_value))

    def test_sweep_runs_plain_backtests_everywhere_alike(self) -> None:
        candles = market(5, planted=False, pairs=3, n=1500)
        pairs = sorted(candles)
        alone = hyperopt.sweep(pair_return, pairs, shared=candles, jobs=1)
        self.assertEqual(hyperopt.sweep(pair_return, pairs, shared=candles, jobs=2), alone)
        self.assertEqual(hyperopt.sweep(pair_return, pairs, shared=candles,
                                        scheduler=self.cluster.scheduler_address), alone)


class ResumeTest(TempDir):
    def test_a_killed_run_resumes_without_repeating_finished_trials(self) -> None:
        data = self.tmp / "data"
        data.mkdir()
        for symbol, a in market(6, planted=True, n=3000).items():
            write_candles(candle_path(data, symbol, "1h"), a)
        study_file = self.tmp / "study.sqlite"
        argv = [sys.executable, str(ROOT / "bot.py"), "--env-file", os.devnull, "hyperopt",
                "--data-dir", str(data), "--timeframe", "1h", "--strategy", STRATEGY,
                "--no-model", "--spaces", "strategy", "--sampler", "random", "--trials", "14",
                "--jobs", "1", "--study-file", str(study_file), "--study-name", "resume",
                "--report-dir", str(self.tmp / "report")]
        env = clean_env(DATA_DIR=str(self.tmp / "ud"), **ENV)
        proc = subprocess.Popen(argv, env=env, cwd=self.tmp, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while _complete(study_file) < 3:
                self.assertIsNone(proc.poll(), "the run ended before it could be killed")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
            proc.stderr.close()
        storage = f"sqlite:///{study_file}"
        killed = optuna.load_study(study_name="resume", storage=storage).get_trials()
        before = {t.number: (t.params, t.values, t.datetime_complete) for t in killed
                  if t.state == optuna.trial.TrialState.COMPLETE}
        running = {t.number: t.params for t in killed if t.state == optuna.trial.TrialState.RUNNING}
        self.assertLess(len(before), 14)
        rerun = subprocess.run(argv, env=env, cwd=self.tmp, capture_output=True, text=True,
                               timeout=120)
        self.assertEqual(rerun.returncode, 0, rerun.stderr[-2000:])
        self.assertIn(f"{len(before)} trial(s) done", rerun.stderr)
        after = optuna.load_study(study_name="resume", storage=storage).get_trials()
        done = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
        self.assertEqual(len(done), 14)
        self.assertEqual({t.number: (t.params, t.values, t.datetime_complete) for t in done
                          if t.number in before}, before)
        new = [t for t in done if t.number not in before]
        self.assertEqual(len(new), 14 - len(before))
        self.assertFalse([t.number for t in new if t.params in [p for p, _, _ in before.values()]])
        for number, params in running.items():      # unfinished: failed, then asked again
            self.assertEqual(after[number].state, optuna.trial.TrialState.FAIL)
            retry = [t for t in new if t.user_attrs.get("retry_of") == number]
            whole = set(params) == {"rsi_overbought", "min_volume_ratio"}   # killed before
            self.assertEqual([t.params for t in retry], [params] if whole else [])  # all drawn?


def _complete(path: Path) -> int:
    """COMPLETE trials in the study file, read as a second process would."""
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:         # the tables are not there yet
        return 0


class BadInputTest(TempDir):
    def setUp(self) -> None:
        super().setUp()
        self.data = self.tmp / "data"
        self.data.mkdir()
        for symbol, a in market(7, planted=False, n=1500).items():
            write_candles(candle_path(self.data, symbol, "1h"), a)
        root = logging.getLogger()                 # the command configures logging
        saved = (root.handlers[:], root.level)
        self.addCleanup(lambda: (setattr(root, "handlers", saved[0]), root.setLevel(saved[1])))

    def invoke(self, *args: str):
        with mock.patch.dict(os.environ, clean_env(DATA_DIR=str(self.tmp / "ud"), **ENV), clear=True), \
                mock.patch("hyperopt.SCHEDULER_TIMEOUT_S", 1):
            return CliRunner().invoke(bot.cli, ["--env-file", os.devnull, "hyperopt", "--data-dir",
                                                str(self.data), "--timeframe", "1h", "--no-model",
                                                "--strategy", STRATEGY, "--study-file",
                                                str(self.tmp / "s.sqlite"), "--report-dir",
                                                str(self.tmp / "report"), *args], obj={})

    def assert_one_line(self, result, needle: str) -> None:
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        self.assertEqual(result.exit_code, 2, result.output)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("error: "), lines[0])
        self.assertIn(needle, lines[0])

    def test_bad_options_end_in_one_line_and_exit_2(self) -> None:
        a_file = self.tmp / "a-file"
        a_file.write_text("x")
        cases = [
            (["--trials", "0"], "--trials"), (["--trials", "1_0"], "--trials"),
            (["--folds", "1"], "--folds"), (["--folds", "40"], "--folds 40"),
            (["--embargo", "-1"], "--embargo"), (["--embargo", "5000"], "--embargo"),
            (["--spaces", "strategy,nope"], "--spaces"), (["--spaces", "exits,exits"], "--spaces"),
            (["--spaces", "model"], "--spaces model"), (["--sampler", "cmaes"], "--sampler"),
            (["--objective", "sortino"], "--objective"), (["--grid-points", "1"], "--grid-points"),
            (["--seed", "-1"], "--seed"), (["--jobs", "0"], "--jobs"),
            (["--scheduler", "http://127.0.0.1:8786"], "--scheduler"),
            (["--scheduler", "tcp://127.0.0.1:1"], "cannot connect"),
            (["--study-file", str(self.tmp)], "--study-file"),
            (["--study-file", str(a_file / "s.sqlite")], "--study-file"),
            (["--study-name", "a b"], "--study-name"),
            (["--report-dir", str(a_file)], "--report-dir"),
            (["--strategy-params", "nope=1"], "STRATEGY_PARAMS"),
            (["--pairs", "XRP/USDT"], "XRP/USDT"),
            (["--start", "2030-01-01"], "no candles"),
        ]
        for args, needle in cases:
            with self.subTest(args=args):
                self.assert_one_line(self.invoke(*args), needle)

    def test_a_name_reused_for_another_setup_is_refused(self) -> None:
        ok = self.invoke("--trials", "1", "--jobs", "1", "--study-name", "mine", "--folds", "3")
        self.assertEqual(ok.exit_code, 0, ok.output)
        self.assertTrue((self.tmp / "report" / "mine" / "best_params.json").exists())
        self.assert_one_line(self.invoke("--trials", "2", "--study-name", "mine", "--folds", "4"),
                             "--study-name mine")


if __name__ == "__main__":
    unittest.main()

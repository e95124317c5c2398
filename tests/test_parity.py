"""The parity check: a paper run's decision record replays with no decision differences,
and a changed candle in the record shows up as one."""
import os
import sqlite3
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from parity import check_parity
from reporter import Reporter
from tests.test_trader import trader_config
from trader import Trader

ROOT = Path(__file__).resolve().parent.parent


class PaperRun(unittest.TestCase):
    """One short paper run on the simulated exchange, shared by the tests below."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        config = trader_config(cls.tmp.name, MAX_HOLD_CANDLES="2", SIM_SEED="5",
                               MAX_OPEN_POSITIONS="3")
        trader = Trader(config, reporter=Reporter(lambda line: None))
        try:
            for _ in range(60):
                trader.run_cycle()
                trades = trader.store.totals().trades
                if trades >= 6 and trader.positions:
                    break
                trader.client.sim.advance(120)   # several cycles per 5m candle, as live
        finally:
            trader.close()
        cls.trades = trades

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def store(self):
        from store import Store
        store = Store.open(self.tmp.name, "paper")
        self.addCleanup(store.close)
        return store


class TestParity(PaperRun):
    def test_a_paper_run_replays_without_decision_differences(self):
        self.assertGreaterEqual(self.trades, 6, "the run traded")
        report = check_parity(self.store())
        self.assertGreater(report.entries, 3)
        self.assertGreaterEqual(report.exits, 3)
        self.assertEqual(report.of_kind("decision"), [], report.format())
        self.assertEqual(report.of_kind("books"), [], report.format())

    def test_a_changed_candle_in_the_record_is_found(self):
        from store import Store
        with tempfile.TemporaryDirectory() as copy_dir:   # tamper with a copy of the record
            source = sqlite3.connect(self.store().path)
            target = sqlite3.connect(Path(copy_dir) / "trades-paper.sqlite")
            source.backup(target)
            source.close()
            target.close()
            with Store.open(copy_dir, "paper") as store:
                cycle, symbol = next((c, s) for c, kind, s, *_ in store.recorded_decisions()
                                     if kind == "entry")
                view_ms = next(v for c, _, v, _ in store.recorded_cycles() if c == cycle)
                with store._transaction("test: tamper") as conn:  # what a corrupted record holds
                    changed = conn.execute(
                        "UPDATE candles SET close = close * 0.9, low = MIN(low, close * 0.9)"
                        " WHERE symbol = ? AND ts_ms = ?", (symbol, view_ms - 300_000)).rowcount
                self.assertEqual(changed, 1)
                report = check_parity(store)
        found = [d for d in report.of_kind("decision") if d.cycle == cycle and d.symbol == symbol]
        self.assertTrue(found, report.format())

    def test_the_command_prints_the_report(self):
        env = {**os.environ, "DATA_DIR": self.tmp.name}
        out = subprocess.run([sys.executable, "bot.py", "--env-file", os.devnull, "parity"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("decision differences: ", out.stdout)
        self.assertIn("fill-model differences", out.stdout)


class TestParityWithTheModel(unittest.TestCase):
    def test_a_run_deciding_with_the_model_replays_without_differences(self):
        with tempfile.TemporaryDirectory() as tmp:
            config = trader_config(tmp, ML_ENABLED="true", CANDLE_HISTORY="400",
                                   ML_MIN_CONFIDENCE="0.05", MAX_HOLD_CANDLES="3", ML_MIN_AUC="0",
                                   ML_MIN_EXPECTED_RETURN="-0.05")
            trader = Trader(config, reporter=Reporter(lambda line: None))
            try:
                trader.run_cycle()
                self.assertTrue(trader.retrainer.wait_idle(timeout=120))
                for _ in range(12):
                    trader.client.sim.advance(150)
                    trader.run_cycle()
                self.assertTrue(trader.decisions.used_model)
            finally:
                trader.close()
            from store import Store
            with Store.open(tmp, "paper") as store:
                self.assertTrue(any(p.entry_reason == "model" for p in store.open_positions())
                                or any(t.entry_reason == "model" for t in store.all_trades()))
                report = check_parity(store)
        self.assertGreater(report.entries, 0)
        self.assertEqual(report.of_kind("decision") + report.of_kind("books"), [], report.format())


if __name__ == "__main__":
    unittest.main()

"""The bot as a user runs it: a real process, the simulated exchange, a real SQLite file."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOT = [sys.executable, str(ROOT / "bot.py")]


def bot_env(data_dir: str, **overrides) -> dict:
    """A clean environment: nothing from the developer's shell or .env leaks in."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    env.update({"DATA_DIR": data_dir, "SIM_PAIRS": "20", "MAX_PAIRS": "20", "SIM_SPEED": "600",
                "CHECK_INTERVAL": "60", "CANDLE_HISTORY": "200", "ML_ENABLED": "false",
                "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
                # the simulated market is a random walk: the edge gate would (rightly) sit out
                "EDGE_GATE": "false", "STRATEGY": "trend_momentum", "STRATEGY_PARAMS": "min_volume_ratio=0",
                "SIM_START": "2026-06-01"})   # the same simulated market every run
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run_bot(args, env, timeout=120):
    return subprocess.run(BOT + ["--env-file", os.devnull] + args, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def open_positions(data_dir: str) -> list[tuple]:
    with sqlite3.connect(Path(data_dir) / "trades-paper.sqlite") as db:
        return db.execute("SELECT symbol, amount, entry_price, stop_loss FROM positions ORDER BY symbol").fetchall()


class TestBadConfig(unittest.TestCase):
    CASES = {
        "MAX_PARALLEL_WORKERS": "abc",
        "CHECK_INTERVAL": "-5",
        "TIMEFRAME": "7m",
        "ACCOUNT_SIZE": "huge",
        "DRY_RUN": "maybe",
        "RISK_PER_TRADE": "0.5",
        "LLM_PROVIDER": "skynet",
    }

    def test_every_bad_value_exits_2_with_one_line_naming_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name, value in self.CASES.items():
                with self.subTest(name=name):
                    proc = run_bot(["--cycles", "1"], bot_env(tmp, **{name: value}), timeout=60)
                    self.assertEqual(proc.returncode, 2, proc.stderr)
                    lines = proc.stderr.strip().splitlines()
                    self.assertEqual(len(lines), 1, proc.stderr)
                    self.assertIn(name, lines[0])
                    self.assertNotIn("Traceback", proc.stderr)

    def test_live_on_a_real_exchange_without_keys_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            proc = run_bot(["--cycles", "1"], bot_env(tmp, EXCHANGE="binance", DRY_RUN="false"))
            self.assertEqual(proc.returncode, 2)
            self.assertIn("API_KEY", proc.stderr)

    def test_config_command_masks_secrets(self):
        with tempfile.TemporaryDirectory() as tmp:
            secret = "s3cr3t-value-that-must-not-show"
            proc = run_bot(["config"], bot_env(tmp, API_SECRET=secret, ACCOUNT_SIZE="small"))
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertNotIn(secret, proc.stdout + proc.stderr)
            self.assertRegex(proc.stdout, r"MAX_PARALLEL_WORKERS\s+5\s+\(preset:small\)")
            self.assertRegex(proc.stdout, r"SIM_SPEED\s+600\s+\(environment\)")


class TestCommandLine(unittest.TestCase):
    def test_help_stays_light(self):
        code = ("import sys, bot\n"
                "for args in (['--help'], ['backtest', '--help'], ['download-data', '--help']):\n"
                "    try:\n"
                "        bot.cli(args, obj={})\n"
                "    except SystemExit as exc:\n"
                "        assert exc.code == 0, exc.code\n"
                "print([m for m in ('numpy', 'ccxt', 'sklearn', 'candle_files') if m in sys.modules])")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout.strip().splitlines()[-1], "[]")

    def test_usage_errors_are_one_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            for args in (["--cycles", "0"], ["nope"], ["run", "--bogus"], ["status", "--trades", "x"]):
                with self.subTest(args=args):
                    proc = run_bot(args, bot_env(tmp), timeout=60)
                    self.assertEqual(proc.returncode, 2, proc.stderr)
                    lines = proc.stderr.strip().splitlines()
                    self.assertEqual(len(lines), 1, proc.stderr)
                    self.assertTrue(lines[0].startswith("error: "), proc.stderr)


class TestTrading(unittest.TestCase):
    def test_paper_run_opens_and_closes_positions_and_reports(self):
        with tempfile.TemporaryDirectory() as tmp:
            # 6 cycles 15 market minutes apart over 10 pairs of the same simulated market
            # every run (SIM_START): each cycle's scan is paced by the client's rate limit
            env = bot_env(tmp, PERFORMANCE_REPORT_INTERVAL="5", MAX_HOLD_CANDLES="1",
                          CHECK_INTERVAL="900", SIM_SPEED="9000", MARKET_SCAN_CACHE_DURATION="0",
                          SIM_PAIRS="10", MAX_PAIRS="10")
            proc = run_bot(["--cycles", "6"], env, timeout=180)
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            out = proc.stdout
            self.assertIn("PAPER trading on simulated exchange", out)
            self.assertEqual(len(re.findall(r"^cycle +\d+ \|", out, re.M)), 6)
            self.assertRegex(out, r"(?m)^OPEN ")
            self.assertRegex(out, r"(?m)^CLOSE ")
            self.assertIn("run_cycle", out)  # the performance report
            status = run_bot(["status"], env)
            self.assertEqual(status.returncode, 0, status.stderr)
            self.assertRegex(status.stdout, r"totals: [1-9]\d* trades")

    def test_sigkill_and_restart_resumes_exactly_the_open_positions(self):
        with tempfile.TemporaryDirectory() as tmp:
            env = bot_env(tmp, MAX_HOLD_CANDLES="500", STOP_LOSS_ATR="50", TAKE_PROFIT_ATR="50")
            proc = subprocess.Popen(BOT + ["--env-file", os.devnull], env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                deadline = time.monotonic() + 120
                for line in proc.stdout:
                    if line.startswith("OPEN ") or time.monotonic() > deadline:
                        break
                time.sleep(0.5)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                proc.stdout.close()
            before = open_positions(tmp)
            self.assertTrue(before, "the bot opened positions before it was killed")
            restarted = run_bot(["--cycles", "1"], env)
            self.assertEqual(restarted.returncode, 0, restarted.stderr[-3000:])
            resumed = re.search(r"resumed (\d+) open position\(s\): (.*)", restarted.stderr)
            self.assertIsNotNone(resumed, restarted.stderr[-3000:])
            self.assertEqual(int(resumed.group(1)), len(before))
            self.assertEqual(sorted(resumed.group(2).split(", ")), [p[0] for p in before])
            after = open_positions(tmp)
            kept = [p for p in after if p[0] in {b[0] for b in before}]
            self.assertEqual(kept, before, "none lost, none changed")
            self.assertEqual(len({p[0] for p in after}), len(after), "none duplicated")
            with sqlite3.connect(Path(tmp) / "trades-paper.sqlite") as db:
                pending = db.execute("SELECT COUNT(*) FROM orders WHERE status='pending'").fetchone()[0]
            self.assertEqual(pending, 0)

    def test_sigint_stops_after_the_current_step_with_state_saved(self):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.Popen(BOT + ["--env-file", os.devnull], env=bot_env(tmp), cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for line in proc.stdout:
                if line.startswith("cycle "):
                    break
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            self.assertEqual(proc.returncode, 0, err[-3000:])
            self.assertIn("stopped after", out)
            with sqlite3.connect(Path(tmp) / "trades-paper.sqlite") as db:
                cycles = db.execute("SELECT value FROM meta WHERE key='cycle'").fetchone()
            self.assertGreaterEqual(int(cycles[0]), 1)


if __name__ == "__main__":
    unittest.main()

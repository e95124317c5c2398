"""Every bad input ends in one line and exit code 2, with nothing written.

Three tables: bad configuration values (through load_config in-process, a handful end to end
through `python bot.py` in a clean environment), bad candle files and bad command-line
arguments (through the click commands in-process, in a clean environment), and the data
files the bot writes (readable by the owner only, paper and live apart).
"""
from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
from click.testing import CliRunner

import bot
import candle_files as cf
import ml_model
import model_training
from config import SECRETS, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-VALUE-xyz"

# (variable, bad value): each must be refused with one line naming the variable.
BAD_CONFIG = [
    # numbers: underscores, signs, hex, unicode digits, exponents, nan/inf, huge, empty
    ("MAX_PAIRS", "1_0"), ("MAX_PAIRS", "+5"), ("MAX_PAIRS", "\u0665"), ("MAX_PAIRS", "\uff11\uff10"),
    ("MAX_PAIRS", "0x10"), ("MAX_PAIRS", "1e1"), ("MAX_PAIRS", "10.0"), ("MAX_PAIRS", ""),
    ("MAX_PAIRS", "   "), ("MAX_PAIRS", "1 0"), ("MAX_PAIRS", "-0x1"),
    ("CHECK_INTERVAL", "1e300"), ("CHECK_INTERVAL", "86401"), ("CHECK_INTERVAL", "nan"),
    ("CHECK_INTERVAL", "-inf"), ("CHECK_INTERVAL", "1_20"), ("CHECK_INTERVAL", "\u0663\u0660\u0660"),
    ("CHECK_INTERVAL", "+60"), ("CHECK_INTERVAL", "Infinity"), ("CHECK_INTERVAL", "0x3c"),
    ("STARTING_BALANCE", "1e309"), ("STARTING_BALANCE", "1e300"), ("STARTING_BALANCE", "1_000"),
    ("STARTING_BALANCE", "-0"), ("STARTING_BALANCE", "1,000"), ("STARTING_BALANCE", "$1000"),
    ("MARKET_SCAN_CACHE_DURATION", "1e300"), ("MARKET_SCAN_CACHE_DURATION", "-1"),
    ("SCAN_TIMEOUT", "1e-320"), ("SCAN_TIMEOUT", "1e300"), ("SCAN_TIMEOUT", "601"),
    ("STOP_LOSS_ATR", "1e300"), ("STOP_LOSS_ATR", "nan"), ("TAKE_PROFIT_ATR", "101"),
    ("MAX_HOLD_CANDLES", "10000000000000000000000"), ("MAX_HOLD_CANDLES", "1_000"),
    ("MAX_POSITIONS_PER_GROUP", "99999999999999999999"), ("SIM_SEED", "4294967296"),
    ("SIM_SEED", "99999999999999999999999999"), ("PERFORMANCE_REPORT_INTERVAL", "1e22"),
    ("PERFORMANCE_REPORT_INTERVAL", "100001"), ("RETRAIN_INTERVAL", "1e300"),
    ("RETRAIN_MIN_NEW_SAMPLES", "99999999999999999999999"), ("LLM_TIMEOUT", "1e300"),
    ("LLM_CYCLE_BUDGET", "inf"), ("LLM_CACHE_TTL", "1e300"), ("LLM_CACHE_MAX_SIZE", "1e20"),
    ("LLM_CACHE_MAX_SIZE", "100000000000000000000"), ("ML_PREDICTION_CACHE_DURATION", "1e300"),
    ("SLOW_OPERATION_THRESHOLD", "1e300"), ("ML_MIN_CONFIDENCE", "nan"),
    ("RISK_PER_TRADE", "1%"), ("MAX_POSITION_SIZE", "inf"), ("MAX_DRAWDOWN", "-0.1"),
    ("SIM_SPEED", "1e309"), ("CANDLE_HISTORY", "5e2"), ("COOLDOWN_CANDLES", "\u0661"),
    ("ML_CACHE_ROUNDING", "+1"), ("LLM_MAX_CALLS_PER_CYCLE", "3.0"), ("SIM_PAIRS", "0b11"),
    ("MAX_PARALLEL_WORKERS", "1e1"), ("MAX_OPEN_POSITIONS", "5_0"),
    # booleans: only true or false
    ("DRY_RUN", "yes"), ("DRY_RUN", "no"), ("DRY_RUN", "2"), ("DRY_RUN", "1"), ("DRY_RUN", "0"),
    ("DRY_RUN", ""), ("DRY_RUN", "on"), ("DRY_RUN", "t"), ("ML_ENABLED", "YES"),
    ("ENABLE_PERFORMANCE_MONITORING", "off"),
    # choices and codes
    ("ACCOUNT_SIZE", ""), ("ACCOUNT_SIZE", "medium-ish"), ("TIMEFRAME", "5M"), ("TIMEFRAME", ""),
    ("TIMEFRAME", "\u0665m"), ("LOG_LEVEL", "verbose"), ("LLM_PROVIDER", ""),
    ("QUOTE_CURRENCY", "u\u017fdt"), ("QUOTE_CURRENCY", "U"), ("QUOTE_CURRENCY", "USDTUSDTUSDT"),
    ("EXCHANGE", ""), ("EXCHANGE", "bin\u0430nce"), ("EXCHANGE", "x" * 51),
    # symbol lists: empty items, repeats, malformed
    ("PAIR_ALLOWLIST", "BTC/USDT,,ETH/USDT"), ("PAIR_ALLOWLIST", "BTC/USDT,"),
    ("PAIR_ALLOWLIST", ",BTC/USDT"), ("PAIR_ALLOWLIST", "BTC/USDT,btc/usdt"),
    ("PAIR_ALLOWLIST", "BTC/USDT ETH/USDT"), ("PAIR_ALLOWLIST", "\uff22TC/USDT"),
    ("PAIR_ALLOWLIST", "ETH/BTC"), ("PAIR_DENYLIST", "BTC/USDT,BTC/USDT"), ("PAIR_DENYLIST", ","),
    ("PAIR_DENYLIST", "BTC_USDT"),
    ("CORRELATION_GROUPS", "a:BTC,,ETH"), ("CORRELATION_GROUPS", "a:BTC;;b:ETH"),
    ("CORRELATION_GROUPS", "a:BTC,BTC"), ("CORRELATION_GROUPS", ";"),
    # URLs: credentials, spaces, control characters, bad ports, queries
    ("LLM_BASE_URL", f"http://user:{SECRET}@127.0.0.1:11434/v1"),
    ("SIM_URL", f"http://sim-key:{SECRET}@127.0.0.1:8765"), ("LLM_BASE_URL", "http://host name/v1"),
    ("LLM_BASE_URL", "http://host/v\t1"), ("LLM_BASE_URL", "http://host:0/v1"),
    ("LLM_BASE_URL", "http://host:65536/v1"), ("LLM_BASE_URL", "http://host/v1?key=x"),
    ("LLM_BASE_URL", "http://h\u00f6st/v1"), ("SIM_URL", "127.0.0.1:8765"), ("SIM_URL", "http://"),
    # free text, paths and secrets
    ("LLM_MODEL", "llama\x00"), ("LLM_MODEL", "a\nb"), ("LLM_MODEL", "m" * 201),
    ("DATA_DIR", ""), ("DATA_DIR", "data\x00dir"), ("DATA_DIR", "\x1b[31m"),
    ("API_KEY", f"{SECRET} x"), ("API_SECRET", f"{SECRET}\u00e9"), ("LLM_API_KEY", f"Bearer {SECRET}"),
]


def clean_env(**overrides: str) -> dict[str, str]:
    """An environment with nothing from the developer's shell or .env."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    env.update(PYTHONUNBUFFERED="1", **overrides)
    return env


class TmpCase(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)

    def assert_one_error_line(self, stderr: str, *needles: str) -> str:
        lines = stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("error: "), stderr)
        self.assertNotIn("Traceback", stderr)
        for needle in needles:
            self.assertIn(needle, lines[0])
        return lines[0]


class BadConfigValuesTest(TmpCase):
    def test_the_table_is_big_enough(self) -> None:
        self.assertGreaterEqual(len(BAD_CONFIG), 80)
        self.assertEqual(len(set(BAD_CONFIG)), len(BAD_CONFIG))

    def test_every_bad_value_is_one_line_naming_it_and_writes_nothing(self) -> None:
        for i, (name, value) in enumerate(BAD_CONFIG):
            data_dir = self.tmp / f"data{i}"
            with self.subTest(name=name, value=value):
                environ = {"DATA_DIR": str(data_dir), name: value}
                with self.assertRaises(ConfigError) as cm:
                    load_config(None, environ)
                message = str(cm.exception)
                self.assertNotIn("\n", message)
                self.assertTrue(message.startswith(name), message)
                self.assertEqual(cm.exception.variable, name)
                self.assertIn("allowed", message)
                self.assertNotIn(SECRET, message)
                if name not in SECRETS and SECRET not in value:
                    self.assertIn(repr(value)[:40].rstrip("'"), message)
                self.assertFalse(data_dir.exists(), "nothing is written")

    def test_bad_env_file_contents(self) -> None:
        cases = {"MAX_PAIRS=5\nMAX_PAIRS=6\n": "MAX_PAIRS",          # which one wins?
                 "DRY_RUN=yes\n": "DRY_RUN",
                 "PAIR_ALLOWLIST=BTC/USDT,,ETH/USDT\n": "PAIR_ALLOWLIST",
                 "CHECK_INTERVAL=1_20\n": "CHECK_INTERVAL",
                 "MAX_PARALEL_WORKERS=3\n": "MAX_PARALEL_WORKERS"}     # misspelt
        for i, (text, name) in enumerate(cases.items()):
            with self.subTest(text=text):
                env_file = self.tmp / ".env"
                env_file.write_text(text)
                with self.assertRaises(ConfigError) as cm:
                    load_config(env_file, {"DATA_DIR": str(self.tmp / f"data{i}")})
                self.assertNotIn("\n", str(cm.exception))
                self.assertIn(name, str(cm.exception))
                self.assertFalse((self.tmp / f"data{i}").exists())


class BadConfigEndToEndTest(TmpCase):
    """A few of the table through the real program: one line on stderr, exit 2, no files."""

    def run_bot(self, args: list[str], **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "bot.py"), "--env-file", os.devnull, *args],
                              env=clean_env(**env), cwd=self.tmp, capture_output=True, text=True,
                              timeout=120)

    def test_config_and_run_refuse_bad_values(self) -> None:
        data_dir = self.tmp / "data"
        a_file = self.tmp / "file"
        a_file.write_text("x")
        cases = [(["config"], "MAX_PAIRS", "1_0"),
                 (["config"], "CHECK_INTERVAL", "1e300"),
                 (["run", "--cycles", "1"], "DRY_RUN", "yes"),
                 (["run", "--cycles", "1"], "STARTING_BALANCE", "1e309"),
                 (["run", "--cycles", "1"], "DATA_DIR", str(a_file / "data"))]
        for args, name, value in cases:
            with self.subTest(name=name, value=value):
                env = {"DATA_DIR": str(data_dir), name: value}
                proc = self.run_bot(args, **env)
                self.assertEqual(proc.returncode, 2, proc.stderr)
                self.assert_one_error_line(proc.stderr, name)
                self.assertEqual(proc.stdout, "")
                self.assertFalse(data_dir.exists())
        self.assertEqual(sorted(p.name for p in self.tmp.iterdir()), ["file"])

    def test_an_allowlist_of_pairs_the_exchange_does_not_list_is_refused(self) -> None:
        proc = self.run_bot(["run", "--cycles", "1"], DATA_DIR=str(self.tmp / "data"),
                            PAIR_ALLOWLIST="NOPE/USDT", SIM_PAIRS="20", LOG_LEVEL="WARNING",
                            ML_ENABLED="false")
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assert_one_error_line(proc.stderr, "PAIR_ALLOWLIST", "NOPE/USDT", "did you mean")


class BadExchangeTest(TmpCase):
    """Live start-up against a simulated exchange in this process (SIM_URL)."""

    def run_live(self, server, **env: str) -> subprocess.CompletedProcess:
        base = {"EXCHANGE": "simulated", "SIM_URL": server.url, "DRY_RUN": "false",
                "DATA_DIR": str(self.tmp / "data"), "ML_ENABLED": "false", "LOG_LEVEL": "ERROR",
                "API_KEY": "k" * 16, "API_SECRET": "s" * 32}
        return subprocess.run([sys.executable, str(ROOT / "bot.py"), "--env-file", os.devnull,
                               "--cycles", "1"], env=clean_env(**(base | env)), cwd=self.tmp,
                              capture_output=True, text=True, timeout=120)

    def server(self):
        from sim_exchange import SimExchangeServer
        from sim_market import SimMarket
        server = SimExchangeServer(SimMarket(pairs=5, seed=1, speed=60), api_key="k" * 16,
                                   api_secret="s" * 32).start()
        self.addCleanup(server.stop)
        return server

    def test_a_wrong_api_key_in_live_mode_is_one_line(self) -> None:
        proc = self.run_live(self.server(), API_KEY="w" * 16)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        line = self.assert_one_error_line(proc.stderr, "authentication failed", "API_KEY")
        self.assertNotIn("w" * 16, line)

    def test_a_wrong_api_secret_in_live_mode_is_one_line(self) -> None:
        proc = self.run_live(self.server(), API_SECRET="x" * 32)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assert_one_error_line(proc.stderr, "API_SECRET")

    def test_an_exchange_that_is_down_at_start_up_is_one_line(self) -> None:
        server = self.server()
        server.set_faults(error_rate=1.0)
        proc = self.run_live(server)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assert_one_error_line(proc.stderr, "simulated")


# --------------------------------------------------------------------------- candle files

T0 = 1_704_067_200_000
TF = 300_000
HEADER = "timestamp,open,high,low,close,volume"


def rows(n: int = 300) -> np.ndarray:
    ts = T0 + np.arange(n) * TF
    close = 100 + np.sin(np.arange(n) / 7)
    return np.column_stack([ts, close - 0.25, close + 1.0, close - 1.0, close, 10.0 + np.arange(n)])


def csv(arr: np.ndarray | None = None) -> str:
    return HEADER + "\n" + cf.format_rows(rows() if arr is None else arr)


def with_row(line: int, text: str) -> str:
    """The good CSV with line `line` (1 = the header) replaced by `text`."""
    lines = csv().splitlines()
    lines[line - 1] = text
    return "\n".join(lines) + "\n"


def changed(column: int, value: float, row: int = 3) -> str:
    arr = rows()
    arr[row, column] = value
    return csv(arr)


def good_json() -> list:
    return [[int(r[0]), *r[1:]] for r in rows().tolist()]


def gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def corrupt_gzip() -> bytes:
    data = bytearray(gz(csv()))
    data[40:60] = b"x" * 20
    return bytes(data)


FIRST = rows()[0]
# (name, file name, content: str, bytes or None for a directory, a fragment of the error)
BAD_FILES = [
    ("empty file", "ETH_USDT-5m.csv", "", "empty"),
    ("only blanks", "ETH_USDT-5m.csv", "\n\n  \n", "empty"),
    ("header only", "ETH_USDT-5m.csv", HEADER + "\n", "no candles"),
    ("no header", "ETH_USDT-5m.csv", cf.format_rows(rows()), "header line is missing"),
    ("columns in another order", "ETH_USDT-5m.csv",
     csv().replace(HEADER, "timestamp,high,low,open,close,volume"), "expected 'timestamp,open"),
    ("seven columns", "ETH_USDT-5m.csv", with_row(4, "1704067800000,1,2,0.5,1.5,10,7"), "7 fields"),
    ("five columns", "ETH_USDT-5m.csv", with_row(4, "1704067800000,1,2,0.5,1.5"), "5 fields"),
    ("a word", "ETH_USDT-5m.csv", with_row(4, "1704067800000,abc,2,0.5,1.5,10"), "not a number"),
    ("underscore in a number", "ETH_USDT-5m.csv",
     with_row(4, "1704067800000,1_00.5,101,99,100,10"), "not a number"),
    ("unicode digits", "ETH_USDT-5m.csv",
     with_row(4, "1704067800000,\u0661\u0660\u0660,101,99,100,10"), "not a number"),
    ("hex number", "ETH_USDT-5m.csv", with_row(4, "1704067800000,0x64,101,99,100,10"), "not a number"),
    ("NaN close", "ETH_USDT-5m.csv", changed(4, float("nan")), "close nan is not a finite"),
    ("infinite volume", "ETH_USDT-5m.csv", changed(5, float("inf")), "not a finite number"),
    ("negative price", "ETH_USDT-5m.csv", changed(1, -5.0), "non-positive price"),
    ("zero price", "ETH_USDT-5m.csv", changed(3, 0.0), "non-positive price"),
    ("negative volume", "ETH_USDT-5m.csv", changed(5, -1.0), "negative volume"),
    ("absurd price", "ETH_USDT-5m.csv", csv(rows() * [1, 1e300, 1e300, 1e300, 1e300, 1]),
     "price above"),
    ("absurd volume", "ETH_USDT-5m.csv", changed(5, 1e300), "volume"),
    ("high below low", "ETH_USDT-5m.csv", changed(2, 50.0), "below low"),
    ("close above high", "ETH_USDT-5m.csv", changed(4, 1000.0), "outside low"),
    ("unsorted", "ETH_USDT-5m.csv", changed(0, T0 + 10 * TF), "sort the rows"),
    ("duplicate timestamp, other values", "ETH_USDT-5m.csv", changed(0, T0 + 2 * TF), "repeats"),
    ("seconds", "ETH_USDT-5m.csv", csv(rows() * [1e-3, 1, 1, 1, 1, 1]), "looks like seconds"),
    ("microseconds", "ETH_USDT-5m.csv", csv(rows() * [1e3, 1, 1, 1, 1, 1]), "microseconds"),
    ("off the grid", "ETH_USDT-5m.csv", csv(rows() + [60_000, 0, 0, 0, 0, 0]), "not on the 5m grid"),
    ("fractional timestamp", "ETH_USDT-5m.csv",
     with_row(5, csv().splitlines()[4].replace(str(T0 + 3 * TF), f"{T0 + 3 * TF}.5")),
     "not a whole number of ms"),
    ("torn line inside", "ETH_USDT-5m.csv", with_row(5, "1704068400000,100.5,1"), "3 fields"),
    ("binary garbage", "ETH_USDT-5m.csv", bytes(range(256)) * 4, "not UTF-8"),
    ("gz that is not gzip", "ETH_USDT-5m.csv.gz", csv().encode(), "not a readable gzip"),
    ("truncated gz", "ETH_USDT-5m.csv.gz", gz(csv())[:-30], "not a readable gzip"),
    ("corrupt gz", "ETH_USDT-5m.csv.gz", corrupt_gzip(), "not a readable gzip"),
    ("gz of garbage", "ETH_USDT-5m.json.gz", gzip.compress(bytes(range(256))), "not UTF-8"),
    ("invalid JSON", "ETH_USDT-5m.json", json.dumps(good_json())[:-5], "not valid JSON"),
    ("JSON object", "ETH_USDT-5m.json", json.dumps({"candles": good_json()}), "JSON dict"),
    ("JSON row too short", "ETH_USDT-5m.json", json.dumps(good_json()[:3] + [[T0, 1, 2]]),
     "row 4"),
    ("JSON strings", "ETH_USDT-5m.json", json.dumps([[str(x) for x in r] for r in good_json()]),
     "row 1"),
    ("JSON booleans", "ETH_USDT-5m.json", json.dumps([[T0, True, 2, 0.5, 1.5, 10]]), "row 1"),
    ("JSON huge integer", "ETH_USDT-5m.json", "[[" + "9" * 400 + ", 1, 2, 0.5, 1.5, 10]]",
     "too large"),
    ("JSON 1e400", "ETH_USDT-5m.json", f"[[{T0}, 1e400, 2, 0.5, 1.5, 10]]", "not a finite"),
    ("JSON NaN", "ETH_USDT-5m.json", f"[[{T0}, NaN, 2, 0.5, 1.5, 10]]", "not a finite"),
    ("JSON empty list", "ETH_USDT-5m.json", "[]", "no candles"),
    ("JSON nested deeper", "ETH_USDT-5m.json", json.dumps([good_json()]), "row 1"),
    ("a directory", "ETH_USDT-5m.csv", None, "is a directory"),
]


class CliCase(TmpCase):
    """Runs bot.py's commands in-process in a clean environment; checks nothing is written."""

    def setUp(self) -> None:
        super().setUp()
        self.data = self.tmp / "candles"
        self.data.mkdir()
        self.report = self.tmp / "report"
        self.env = {"DATA_DIR": str(self.tmp / "user_data"), "ML_ENABLED": "false",
                    "SIM_PAIRS": "3"}
        root = __import__("logging").getLogger()   # the commands configure logging
        saved = (root.handlers[:], root.level)
        self.addCleanup(lambda: (setattr(root, "handlers", saved[0]), root.setLevel(saved[1])))

    def invoke(self, *args: str):
        refuse_to_trade = mock.Mock(side_effect=AssertionError("accepted: the bot would trade"))
        with mock.patch.dict(os.environ, clean_env(**self.env), clear=True), \
                mock.patch("trader.Trader", refuse_to_trade), \
                mock.patch("bot.exit_without_stray_requests"):
            return CliRunner().invoke(bot.cli, ["--env-file", os.devnull, *args], obj={})

    def snapshot(self) -> dict:
        return {str(p.relative_to(self.tmp)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in self.tmp.rglob("*")}

    def assert_refused(self, args: list[str], *needles: str) -> str:
        before = self.snapshot()
        result = self.invoke(*args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        self.assertEqual(result.exit_code, 2, result.output)
        line = self.assert_one_error_line(result.stderr, *needles)
        self.assertEqual(self.snapshot(), before, "nothing is written")
        return line

    def backtest(self, *args: str) -> list[str]:
        return ["backtest", "--data-dir", str(self.data), "--report-dir", str(self.report),
                "--no-model", *args]


class BadCandleFilesTest(CliCase):
    def test_the_table_is_big_enough(self) -> None:
        self.assertGreaterEqual(len(BAD_FILES), 30)

    def test_every_bad_file_is_one_line_exit_2(self) -> None:
        for label, name, content, fragment in BAD_FILES:
            with self.subTest(label):
                path = self.data / name
                if content is None:
                    path.mkdir()
                else:
                    path.write_bytes(content if isinstance(content, bytes) else content.encode())
                try:
                    line = self.assert_refused(self.backtest(), fragment)
                    self.assertIn(str(path), line)
                finally:
                    path.rmdir() if content is None else path.unlink()

    def test_a_good_file_works_so_the_table_tests_the_files(self) -> None:
        (self.data / "ETH_USDT-5m.csv").write_text(csv())
        result = self.invoke(*self.backtest())
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertTrue((self.report / "report.json").exists())

    def test_model_training_evaluate_refuses_bad_files_in_one_line(self) -> None:
        good = self.data / "ETH_USDT-5m.csv"
        good.write_text(csv())
        bad = self.data / "BTC_USDT-5m.csv"
        bad.write_text(changed(4, float("nan")))
        for argv, needle in (([str(bad)], "not a finite"), ([str(self.data)], "is not a file"),
                             (["--folds", "0", str(good)], "--folds"),
                             (["--threshold", "nan", str(good)], "--threshold"),
                             (["--kinds", "svm", str(good)], "--kinds")):
            with self.subTest(argv=argv), mock.patch("sys.stderr") as err:
                with self.assertRaises(SystemExit) as cm:
                    model_training.main(["evaluate", *argv])
                self.assertEqual(cm.exception.code, 2)
                written = "".join(c.args[0] for c in err.write.call_args_list)
                self.assert_one_error_line(written, needle)


class BadArgumentsTest(CliCase):
    def setUp(self) -> None:
        super().setUp()
        (self.data / "ETH_USDT-5m.csv").write_text(csv())

    def test_backtest_options(self) -> None:
        a_file = self.tmp / "a-file"
        a_file.write_text("x")
        cases = [
            (["--data-dir", str(self.tmp / "missing")], "not a directory"),
            (["--data-dir", str(a_file)], "not a directory"),
            (["--timeframe", "7x"], "--timeframe"),
            (["--timeframe", "\u0665m"], "--timeframe"),
            (["--timeframe", "0m"], "--timeframe"),
            (["--timeframe", "999d"], "longer than a year"),
            (["--timeframe", "1h"], "no 1h candle files"),
            (["--pairs", ","], "--pairs"),
            (["--pairs", ""], "--pairs"),
            (["--pairs", "ETH/USDT,eth/usdt"], "twice"),
            (["--pairs", "ETHUSDT"], "not a BASE/QUOTE symbol"),
            (["--pairs", "XRP/USDT"], "no 5m candle file for XRP/USDT"),
            (["--start", "2024-13-01"], "--start"),
            (["--start", "2024-1-5"], "--start"),
            (["--start", "\u0662\u0660\u0662\u0664-01-01"], "--start"),
            (["--end", "yesterday"], "--end"),
            (["--start", "2024-01-02", "--end", "2024-01-01"], "is not before"),
            (["--start", "2030-01-01"], "no candles"),
            (["--end", "2000-01-01"], "no candles"),
            (["--starting-balance", "1e309"], "not a finite number"),
            (["--starting-balance", "nan"], "not a finite number"),
            (["--starting-balance", "0"], "out of range"),
            (["--starting-balance", "1e13"], "out of range"),
            (["--starting-balance", "1_000"], "underscores"),
            (["--simulated", "--sim-days", "0.5"], "--sim-days"),
            (["--simulated", "--sim-days", "inf"], "--sim-days"),
            (["--simulated", "--sim-pairs", "0"], "--sim-pairs"),
            (["--simulated", "--sim-pairs", "1_0"], "--sim-pairs"),
            (["--simulated", "--sim-days", "3650", "--sim-pairs", "200", "--timeframe", "1m"],
             "candles"),
            (["--report-dir", str(a_file)], "--report-dir"),
            (["--report-dir", str(a_file / "sub")], "--report-dir"),
            (["--cycles", "3"], "No such option"),
            (["extra-argument"], "unexpected extra argument"),
        ]
        for args, needle in cases:
            with self.subTest(args=args):
                options = self.backtest(*args)
                if "--report-dir" in args:      # the later --report-dir wins in click
                    options = [o for o in options if o != str(self.report)]
                    options.remove("--report-dir")
                self.assert_refused(options, needle)

    def test_other_commands_and_global_options(self) -> None:
        a_file = self.tmp / "a-file"
        a_file.write_text("x")
        cases = [
            (["no-such-command"], "No such command"),
            (["--cycles", "0"], "--cycles"),
            (["--cycles", "abc"], "--cycles"),
            (["--cycles", "1_0"], "--cycles"),
            (["run", "--cycles", "-1"], "--cycles"),
            (["run", "--bogus"], "No such option"),
            (["status", "--trades", "-1"], "--trades"),
            (["status"], "no paper database"),
            (["config", "extra"], "unexpected extra argument"),
            (["download-data", "--days", "0"], "--days"),
            (["download-data", "--days", "inf"], "--days"),
            (["download-data", "--days", "1e309"], "--days"),
            (["download-data", "--days", "3651"], "--days"),
            (["download-data", "--pairs", ",,"], "empty item"),
            (["download-data", "--pairs", "BTC/USDT,BTC/USDT"], "twice"),
            (["download-data", "--pairs", "BTC/USDT", "--exchange", "Bin Ance"], "--exchange"),
            (["download-data", "--pairs", "BTC/USDT", "--timeframe", "\u0661h"], "--timeframe"),
            (["download-data", "--pairs", "BTC/USDT", "--data-dir", str(a_file)], "--data-dir"),
            (["download-data", "--pairs", "BTC/USDT", "--data-dir", str(a_file / "d")],
             "--data-dir"),
        ]
        for args, needle in cases:
            with self.subTest(args=args):
                if args[0] == "download-data" and "--exchange" not in args:
                    args = [*args, "--exchange", "simulated"]    # never the network
                self.assert_refused(args, needle)
        with mock.patch.dict(os.environ, clean_env(**self.env), clear=True):
            result = CliRunner().invoke(bot.cli, ["--env-file", str(self.tmp), "config"], obj={})
        self.assertEqual(result.exit_code, 2)
        self.assert_one_error_line(result.stderr, "cannot be read")

    def test_download_data_refuses_a_bad_file_already_there(self) -> None:
        out = self.tmp / "dl"
        out.mkdir()
        (out / "BTC_USDT-5m.csv").write_text(changed(4, float("nan")))
        self.assert_refused(["download-data", "--exchange", "simulated", "--pairs", "BTC/USDT",
                             "--days", "0.5", "--data-dir", str(out)], "BTC_USDT-5m.csv")

    def test_usage_errors_end_to_end_are_one_line(self) -> None:
        proc = subprocess.run([sys.executable, str(ROOT / "bot.py"), "--env-file", os.devnull,
                               "backtest", "--starting-balance", "1e309"],
                              env=clean_env(DATA_DIR=str(self.tmp / "ud")), cwd=self.tmp,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assert_one_error_line(proc.stderr, "--starting-balance", "not a finite number")
        self.assertFalse((self.tmp / "ud").exists())


# --------------------------------------------------------------------------- data files

class FakeConfig:
    """What Retrainer.from_config reads."""

    def __init__(self, data_dir: Path, mode: str):
        self.data_dir, self.mode = data_dir, mode
        self.retrain_interval, self.retrain_min_new_samples, self.ml_min_confidence = 3600, 10, 0.5


class DataFilesTest(TmpCase):
    def estimator(self):
        from sklearn.dummy import DummyClassifier
        X = np.zeros((4, len(ml_model.FEATURE_NAMES)))
        return DummyClassifier(strategy="prior").fit(X, [0, 1, 0, 1])

    def meta(self, **extra):
        return {"feature_names": list(ml_model.FEATURE_NAMES), "samples": 4,
                **ml_model.library_versions(), **extra}

    def assert_owner_only(self, path: Path) -> None:
        self.assertEqual(stat.S_IMODE(path.stat().st_mode) & 0o077, 0, f"{path} is private")

    def test_model_and_training_files_are_owner_only_even_with_a_lax_umask(self) -> None:
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        path = ml_model.save_model(self.tmp, self.estimator(), self.meta())
        data = model_training.TrainingData()
        data.add(np.zeros((3, len(ml_model.FEATURE_NAMES))), [0, 1, 0], [0.0, 0.1, -0.1],
                 [1, 2, 3], [4, 5, 6])
        data.save(self.tmp / ml_model.training_file("live"))
        for name in ("model-paper.joblib", "model-paper.json", "training-live.npz"):
            self.assert_owner_only(self.tmp / name)
        self.assertEqual(path, self.tmp / "model-paper.joblib")
        self.assertEqual([p.name for p in self.tmp.iterdir() if p.name.endswith(".tmp")], [])

    def test_temporary_names_are_unique_per_process_and_mode(self) -> None:
        sources = []
        real_replace = os.replace

        def spy(src, dst):
            sources.append(Path(src).name)
            return real_replace(src, dst)

        with mock.patch("ml_model.os.replace", spy):
            for mode in ("paper", "live", "paper"):
                ml_model.save_model(self.tmp, self.estimator(), self.meta(), mode=mode)
        self.assertEqual(len(set(sources)), len(sources))
        for name in sources:
            self.assertIn(f".{os.getpid()}.", name)
        self.assertTrue(any("model-live" in n for n in sources))

    def test_paper_and_live_keep_their_models_apart(self) -> None:
        ml_model.save_model(self.tmp, self.estimator(), self.meta(samples=1), mode="paper")
        self.assertIsNone(ml_model.load_model(self.tmp, "live"))
        self.assertIsNone(ml_model.saved_model_status(self.tmp, "live"))
        ml_model.save_model(self.tmp, self.estimator(), self.meta(samples=2), mode="live")
        self.assertEqual(ml_model.load_model(self.tmp, "paper")[1]["samples"], 1)
        self.assertEqual(ml_model.load_model(self.tmp, "live")[1]["samples"], 2)
        self.assertEqual(ml_model.saved_model_status(self.tmp, "live")["samples"], 2)
        with self.assertRaises(ValueError):
            ml_model.load_model(self.tmp, "Live")

    def test_an_older_shared_model_file_is_read_by_paper_only_and_made_private(self) -> None:
        import joblib
        legacy = self.tmp / "model.joblib"
        joblib.dump({"estimator": self.estimator(), "meta": self.meta(samples=7)}, legacy)
        (self.tmp / "model.json").write_text(json.dumps(self.meta(samples=7)))
        legacy.chmod(0o644)
        self.assertEqual(ml_model.load_model(self.tmp, "paper")[1]["samples"], 7)
        self.assertEqual(ml_model.saved_model_status(self.tmp)["samples"], 7)
        self.assert_owner_only(legacy)
        self.assertIsNone(ml_model.load_model(self.tmp, "live"))
        ml_model.save_model(self.tmp, self.estimator(), self.meta(samples=8))   # the new file wins
        self.assertEqual(ml_model.load_model(self.tmp, "paper")[1]["samples"], 8)

    def test_the_retrainer_of_each_mode_writes_its_own_private_files(self) -> None:
        rng = np.random.default_rng(0)
        n = 300
        for mode in ("live", "paper"):
            data = model_training.TrainingData()
            data.add(rng.normal(size=(n, len(ml_model.FEATURE_NAMES))), np.arange(n) % 2,
                     rng.normal(0, 0.01, n), np.arange(n) * TF, np.arange(n) * TF + TF)
            retrainer = model_training.Retrainer.from_config(
                FakeConfig(self.tmp, mode), ml_model.MLModel(), data)
            retrainer.kind = "logistic"
            retrainer._train_once(None)
            written = sorted(p.name for p in self.tmp.iterdir())
            self.assertIn(f"model-{mode}.joblib", written)
            self.assertIn(f"training-{mode}.npz", written)
            for name in written:
                self.assert_owner_only(self.tmp / name)
        self.assertEqual(sorted(p.name for p in self.tmp.iterdir()),
                         ["model-live.joblib", "model-live.json", "model-paper.joblib",
                          "model-paper.json", "training-live.npz", "training-paper.npz"])


if __name__ == "__main__":
    unittest.main()

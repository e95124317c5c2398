"""Tests of config.py: precedence, presets, validation, masking, .env.example, misspellings."""
import dataclasses
import os
import re
import stat
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from dotenv import dotenv_values

import config
from config import (PRESETS, Config, ConfigError, check_exchange_id, check_pairs, load_config,
                    parse_real, parse_whole)

ROOT = Path(__file__).resolve().parent.parent
FIELDS = [f.name for f in dataclasses.fields(Config) if f.name != "sources"]
NAMES = [name.upper() for name in FIELDS]

# One bad value per variable that can be wrong on its own (secrets and LLM_MODEL are free
# text, checked by the cross-field rules below).
BAD_VALUES = {
    "ACCOUNT_SIZE": ["huge"],
    "EXCHANGE": ["bin ance", "9x"],
    "DRY_RUN": ["maybe", "", "yes", "no", "1", "2"],
    "STARTING_BALANCE": ["0", "-5", "nan", "lots", "1e309", "1e13", "1_000"],
    "QUOTE_CURRENCY": ["US-D", ""],
    "MAX_PAIRS": ["0", "501", "5.5", "1_0", "+5", "\u0665", "0x10", ""],
    "PAIR_ALLOWLIST": ["BTCUSDT", "BTC/USDT,ETH-USDT", "BTC/USDT,,ETH/USDT", "BTC/USDT,btc/usdt"],
    "PAIR_DENYLIST": ["BTC/USDT/X", "BTC/USDT,"],
    "TIMEFRAME": ["7m", "1H"],
    "CANDLE_HISTORY": ["99", "1001"],
    "CHECK_INTERVAL": ["0.5", "inf", "1e300", "86401"],
    "MARKET_SCAN_CACHE_DURATION": ["-1"],
    "MAX_PARALLEL_WORKERS": ["abc", "0", "65"],
    "SCAN_TIMEOUT": ["0"],
    "RISK_PER_TRADE": ["0", "0.2"],
    "MAX_OPEN_POSITIONS": ["0", "101"],
    "MAX_POSITION_SIZE": ["0", "1.5"],
    "MAX_POSITIONS_PER_GROUP": ["0"],
    "MAX_DRAWDOWN": ["0", "1.5", "x"],
    "CORRELATION_GROUPS": ["majors BTC", "a:BTC;b:ETH,BTC", "a:BTC;a:ETH", "a:"],
    "STOP_LOSS_ATR": ["0"],
    "TAKE_PROFIT_ATR": ["-1"],
    "MAX_HOLD_CANDLES": ["0", "10001"],
    "COOLDOWN_CANDLES": ["-1", "1001", "1.5"],
    "STOP_LOSS_PCT": ["-0.1", "0.6"],
    "TAKE_PROFIT_PCT": ["-1", "11"],
    "MINIMAL_ROI": ["0.04", "x:0.1", "10:abc", "-5:0.1"],
    "TRAILING_STOP": ["-0.01", "0.9"],
    "TRAILING_OFFSET": ["-1"],
    "BREAKEVEN_TRIGGER": ["-1"],
    "USE_EXIT_SIGNAL": ["maybe"],
    "STRATEGY": ["Trend Momentum", "file.txt:X", "strategy.py:"],
    "STOPLOSS_GUARD_TRADES": ["-1", "101"],
    "STOPLOSS_GUARD_LOOKBACK": ["0"],
    "STOPLOSS_GUARD_LOCK": ["0"],
    "STOPLOSS_GUARD_PER_PAIR": ["perhaps"],
    "DAILY_LOSS_LIMIT": ["-0.1", "2"],
    "LOW_PROFIT_LOOKBACK": ["-1"],
    "LOW_PROFIT_MIN_TRADES": ["0"],
    "LOW_PROFIT_MIN_RETURN": ["-2"],
    "LOW_PROFIT_LOCK": ["0"],
    "EDGE_GATE": ["sometimes"],
    "ML_MIN_EXPECTED_RETURN": ["-2", "1.5"],
    "ML_MIN_AUC": ["-0.1", "2"],
    "EDGE_MIN_TRADES": ["1"],
    "EDGE_CONFIDENCE": ["0.4", "1"],
    "MAX_SLIPPAGE": ["0", "0.5", "-0.01", "nan"],
    "ENTRY_ORDER": ["stop", "Market order"],
    "MARKET_DATA": ["ws", "polling"],
    "STREAM_TIMEOUT": ["0", "601", "soon"],
    "TELEGRAM_CHAT_ID": ["12ab", "@no", "1 2"],
    "TELEGRAM_API_URL": ["api.telegram.org", "https://h/?x=1"],
    "NOTIFY_EVENTS": ["", "entry,entry", "trades"],
    "CRITICAL_OPERATION_FACTOR": ["0.5", "101", "x"],
    "PERFORMANCE_THRESHOLDS": ["train_model", "train_model=-1", "a=1:0.5"],
    "DEGRADATION_FACTOR": ["1", "101", "twice"],
    "TRACE_MEMORY": ["maybe"],
    "API_ENABLED": ["on please"],
    "API_HOST": ["http://0.0.0.0", "host name", ""],
    "API_PORT": ["0", "65536", "http"],
    "LIMIT_ENTRY_TIMEOUT": ["0", "1e9", "inf"],
    "LIMIT_ENTRY_REPRICES": ["-1", "21", "two"],
    "LOG_CCXT_DEBUG": ["maybe", "2"],
    "DASK_SCHEDULER_ADDRESS": ["http://127.0.0.1:8786", "tcp://host", "tcp://h:0", "tcp://h:99999",
                               "tcp://h 1:8786"],
    "SIM_URL": ["ftp://x", "localhost:8765", "http://127.0.0.1:0", "http://127.0.0.1:8765/?x=1"],
    "DATA_DIR": ["", "a\x00b"],
    "LOG_LEVEL": ["TRACE"],
    "SIM_SPEED": ["0.5", "20000"],
    "SIM_SEED": ["-1", "4294967296"],
    "SIM_START": ["2024-13-01", "yesterday", "1999-12-31", "2024-01-01T00:00"],
    "SIM_PAIRS": ["201"],
    "ENABLE_PERFORMANCE_MONITORING": ["on"],
    "SLOW_OPERATION_THRESHOLD": ["0"],
    "PERFORMANCE_REPORT_INTERVAL": ["0"],
    "ML_ENABLED": ["si"],
    "ML_MIN_CONFIDENCE": ["1.5", "-0.1"],
    "ML_PREDICTION_CACHE_DURATION": ["-1"],
    "ML_CACHE_ROUNDING": ["7"],
    "RETRAIN_INTERVAL": ["59"],
    "RETRAIN_MIN_NEW_SAMPLES": ["0"],
    "LLM_PROVIDER": ["anthropic"],
    "LLM_BASE_URL": ["ftp://host/v1", "localhost:11434", "http://host:99999/"],
    "LLM_TIMEOUT": ["0"],
    "LLM_CYCLE_BUDGET": ["0"],
    "LLM_MAX_CALLS_PER_CYCLE": ["51"],
    "LLM_CACHE_TTL": ["-1"],
    "LLM_CACHE_MAX_SIZE": ["0"],
    "LLM_ON_FAILURE": ["accept"],
}
SECRET_VALUE = "s3cr3t-VALUE-xyz"
BAD_SECRETS = {"API_KEY": [f"{SECRET_VALUE} x"], "API_SECRET": [f"{SECRET_VALUE}\x00"],
               "LLM_API_KEY": [f"Bearer {SECRET_VALUE}"],
               "TELEGRAM_TOKEN": [f"{SECRET_VALUE} x"],
               "API_TOKEN": ["short-token", f"{SECRET_VALUE} x"],
               "NOTIFY_WEBHOOK_URL": ["discord.com/api/webhooks/1/x", "https://h/x#frag"]}
FREE_TEXT = {"LLM_MODEL", "STRATEGY_PARAMS"}   # only control characters and length: see test_bad_input


class ConfigTestCase(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        self.data_dir = str(self.tmp / "data")

    def env_file(self, text: str, name: str = ".env") -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    def load(self, env_text: str | None = None, **environ: str) -> Config:
        environ.setdefault("DATA_DIR", self.data_dir)
        env_file = self.env_file(env_text) if env_text is not None else None
        return load_config(env_file, environ)

    def assert_one_line_error(self, cm, variable: str, *absent: str) -> str:
        """The error's message, checked: one line, names the variable, lacks `absent`."""
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertIn(variable, message)
        self.assertEqual(cm.exception.variable, variable)
        for text in absent:
            self.assertNotIn(text, message)
        return message


class PrecedenceTest(ConfigTestCase):
    def test_environment_beats_env_file_beats_preset_beats_default(self) -> None:
        cfg = self.load("MAX_PARALLEL_WORKERS=7\nCHECK_INTERVAL=90\nMAX_PAIRS=20\n",
                        MAX_PARALLEL_WORKERS="3")
        self.assertEqual((cfg.max_parallel_workers, cfg.sources["MAX_PARALLEL_WORKERS"]),
                         (3, "environment"))
        self.assertEqual((cfg.check_interval, cfg.sources["CHECK_INTERVAL"]), (90.0, ".env"))
        self.assertEqual((cfg.max_pairs, cfg.sources["MAX_PAIRS"]), (20, ".env"))
        self.assertEqual((cfg.risk_per_trade, cfg.sources["RISK_PER_TRADE"]),
                         (0.005, "preset:medium"))
        self.assertEqual((cfg.scan_timeout, cfg.sources["SCAN_TIMEOUT"]), (30.0, "default"))
        self.assertEqual(cfg.sources["DATA_DIR"], "environment")
        self.assertEqual(set(cfg.sources), set(NAMES))

    def test_account_size_from_env_file_or_environment(self) -> None:
        cfg = self.load("ACCOUNT_SIZE=large\n")
        self.assertEqual((cfg.account_size, cfg.sources["ACCOUNT_SIZE"]), ("large", ".env"))
        self.assertEqual(cfg.sources["CHECK_INTERVAL"], "preset:large")
        cfg = self.load("ACCOUNT_SIZE=large\n", ACCOUNT_SIZE="small")
        self.assertEqual(cfg.account_size, "small")
        self.assertEqual((cfg.check_interval, cfg.sources["CHECK_INTERVAL"]),
                         (300.0, "preset:small"))

    def test_env_file_value_overrides_the_preset_it_belongs_to(self) -> None:
        cfg = self.load("ACCOUNT_SIZE=small\nRISK_PER_TRADE=0.05\n")
        self.assertEqual((cfg.risk_per_trade, cfg.sources["RISK_PER_TRADE"]), (0.05, ".env"))
        self.assertEqual(cfg.max_open_positions, 3)

    def test_os_environ_is_read_but_never_modified(self) -> None:
        env_file = self.env_file(f"MAX_PAIRS=7\nSIM_SEED=9\nDATA_DIR={self.data_dir}\n")
        with mock.patch.dict(os.environ, {"MAX_PAIRS": "11"}, clear=True):
            cfg = load_config(env_file)
            self.assertEqual(dict(os.environ), {"MAX_PAIRS": "11"})
        self.assertEqual((cfg.max_pairs, cfg.sim_seed), (11, 9))

    def test_missing_env_file_and_no_env_file_give_defaults(self) -> None:
        missing = load_config(self.tmp / "absent.env", {"DATA_DIR": self.data_dir})
        none = load_config(None, {"DATA_DIR": self.data_dir})
        self.assertEqual(missing, none)
        self.assertEqual(none.sources["MAX_PAIRS"], "default")

    def test_unreadable_env_file_is_an_error(self) -> None:
        cases = {"directory": self.tmp, "not utf-8": self.tmp / "bin.env"}
        cases["not utf-8"].write_bytes(b"MAX_PAIRS=\xff\xfe\n")
        for label, path in cases.items():
            with self.subTest(label), self.assertRaises(ConfigError) as cm:
                load_config(path, {"DATA_DIR": self.data_dir})
            self.assertIn("cannot be read", str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))

    def test_unparsable_env_line_is_an_error_without_echoing_it(self) -> None:
        path = self.env_file(f"MAX_PAIRS=5\nAPI_SECRET='{SECRET_VALUE}\n")
        with self.assertRaises(ConfigError) as cm:
            load_config(path, {"DATA_DIR": self.data_dir})
        self.assertIn("line 2", str(cm.exception))
        self.assertNotIn(SECRET_VALUE, str(cm.exception))

    def test_env_file_values_are_literal(self) -> None:
        with mock.patch.dict(os.environ, {"MODEL_NAME": "expanded"}):
            cfg = self.load("LLM_MODEL=${MODEL_NAME}\n")
        self.assertEqual(cfg.llm_model, "${MODEL_NAME}")

    def test_env_file_quirks(self) -> None:
        cfg = self.load("export MAX_PAIRS=12\nSIM_SEED\nQUOTE_CURRENCY = 'busd'  # c\n"
                        "PAIR_ALLOWLIST= btc/busd, ETH/BUSD \nLOG_LEVEL=debug\n")
        self.assertEqual(cfg.max_pairs, 12)
        self.assertEqual(cfg.sources["SIM_SEED"], "default")  # a name without a value
        self.assertEqual(cfg.quote_currency, "BUSD")
        self.assertEqual(cfg.pair_allowlist, ("BTC/BUSD", "ETH/BUSD"))
        self.assertEqual(cfg.log_level, "DEBUG")


class PresetTest(ConfigTestCase):
    def test_presets_hold_exactly_the_agreed_values(self) -> None:
        expected = {
            "MAX_PARALLEL_WORKERS": (5, 10, 15),
            "MARKET_SCAN_CACHE_DURATION": (600, 300, 180),
            "CHECK_INTERVAL": (300, 120, 60),
            "RISK_PER_TRADE": (0.005, 0.005, 0.004),
            "MAX_OPEN_POSITIONS": (3, 5, 10),
            "MAX_POSITION_SIZE": (0.10, 0.10, 0.08),
            "STARTING_BALANCE": (1000, 10000, 100000),
        }
        self.assertEqual(list(PRESETS), ["small", "medium", "large"])
        for index, size in enumerate(PRESETS):
            self.assertEqual(dict(PRESETS[size]),
                             {name: values[index] for name, values in expected.items()})

    def test_each_preset_reaches_the_config(self) -> None:
        for size, values in PRESETS.items():
            with self.subTest(size):
                cfg = self.load(ACCOUNT_SIZE=size.upper())
                self.assertEqual(cfg.account_size, size)
                for name, value in values.items():
                    self.assertEqual(getattr(cfg, name.lower()), value)
                    self.assertIs(type(getattr(cfg, name.lower())), type(value))
                    self.assertEqual(cfg.sources[name], f"preset:{size}")

    def test_default_account_size_is_medium(self) -> None:
        cfg = self.load()
        self.assertEqual((cfg.account_size, cfg.sources["ACCOUNT_SIZE"]), ("medium", "default"))
        self.assertEqual(cfg.max_parallel_workers, 10)


class ValidationTest(ConfigTestCase):
    def test_every_variable_has_bad_value_cases(self) -> None:
        self.assertEqual(set(BAD_VALUES) | set(BAD_SECRETS) | FREE_TEXT, set(NAMES))

    def test_every_bad_value_is_a_one_line_error(self) -> None:
        for name, values in BAD_VALUES.items():
            for value in values:
                with self.subTest(name=name, value=value), \
                        self.assertRaises(ConfigError) as cm:
                    self.load(**{name: value, "API_SECRET": SECRET_VALUE})
                message = self.assert_one_line_error(cm, name, SECRET_VALUE)
                self.assertIn(f"{name}={value!r}", message)
                self.assertIn("(allowed: ", message)

    def test_bad_secret_is_a_one_line_error_that_hides_it(self) -> None:
        for name, values in BAD_SECRETS.items():
            for value in values:
                with self.subTest(name=name), self.assertRaises(ConfigError) as cm:
                    self.load(**{name: value})
                message = self.assert_one_line_error(cm, name, SECRET_VALUE, "s3cr3t")
                self.assertIn(f"{name}=<hidden> ", message)

    def test_bad_value_in_env_file_is_reported_the_same_way(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            self.load("MAX_PARALLEL_WORKERS=abc\n")
        self.assertEqual(str(cm.exception),
                         "MAX_PARALLEL_WORKERS='abc' is not a whole number (allowed: 1..64)")
        with self.assertRaises(ConfigError) as cm:
            self.load(TIMEFRAME="7m")
        self.assertEqual(str(cm.exception), "TIMEFRAME='7m' is not supported (allowed: 1m, "
                         "3m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h, 1d)")

    def test_good_values_are_parsed_and_normalised(self) -> None:
        cfg = self.load(DRY_RUN="False", ML_ENABLED=" true ", ENABLE_PERFORMANCE_MONITORING="TRUE",
                        EXCHANGE="Simulated", LLM_PROVIDER="OpenAI", LLM_ON_FAILURE="Model",
                        RISK_PER_TRADE="0.1", ML_MIN_CONFIDENCE="0", SIM_SPEED="1e4",
                        CORRELATION_GROUPS="majors:btc,ETH; memes:DOGE",
                        LLM_BASE_URL="https://api.example.com/v1", TIMEFRAME="1h",
                        MARKET_SCAN_CACHE_DURATION="-0", CHECK_INTERVAL="86400",
                        MAX_PAIRS="007", STARTING_BALANCE="1e12", SCAN_TIMEOUT=".5")
        self.assertEqual((cfg.dry_run, cfg.ml_enabled, cfg.enable_performance_monitoring),
                         (False, True, True))
        self.assertEqual((cfg.exchange, cfg.llm_provider, cfg.llm_on_failure),
                         ("simulated", "openai", "model"))
        self.assertEqual((cfg.risk_per_trade, cfg.ml_min_confidence, cfg.sim_speed),
                         (0.1, 0.0, 10000.0))
        self.assertEqual(config.parse_correlation_groups(cfg.correlation_groups),
                         {"majors": ("BTC", "ETH"), "memes": ("DOGE",)})
        self.assertEqual(cfg.timeframe_seconds, 3600)
        self.assertEqual((cfg.check_interval, cfg.max_pairs, cfg.starting_balance,
                          cfg.scan_timeout), (86400.0, 7, 1e12, 0.5))
        self.assertEqual(str(cfg.market_scan_cache_duration), "0.0")   # not -0.0

    def test_data_dir_is_created_and_must_not_be_a_file(self) -> None:
        nested = self.tmp / "a" / "b"
        cfg = self.load(DATA_DIR=str(nested))
        self.assertTrue(nested.is_dir())
        self.assertEqual(cfg.data_dir, nested)
        a_file = self.tmp / "file"
        a_file.write_text("x")
        for path, problem in ((a_file, "is a file"), (a_file / "sub", "cannot be created")):
            with self.subTest(path=path), self.assertRaises(ConfigError) as cm:
                self.load(DATA_DIR=str(path))
            self.assertIn(problem, self.assert_one_line_error(cm, "DATA_DIR"))

    def test_live_trading_on_a_real_exchange_needs_both_keys(self) -> None:
        live = {"DRY_RUN": "false", "EXCHANGE": "binance"}
        for missing, present in (("API_KEY", "API_SECRET"), ("API_SECRET", "API_KEY")):
            with self.subTest(missing=missing), self.assertRaises(ConfigError) as cm:
                self.load(**live, **{present: SECRET_VALUE})
            self.assertIn("DRY_RUN", self.assert_one_line_error(cm, missing, SECRET_VALUE))
        cfg = self.load(**live, API_KEY=SECRET_VALUE, API_SECRET=SECRET_VALUE)
        self.assertEqual((cfg.mode, cfg.is_simulated), ("live", False))

    def test_keys_are_not_needed_on_paper_or_on_the_simulated_exchange(self) -> None:
        self.assertEqual(self.load(EXCHANGE="binance").mode, "paper")
        cfg = self.load(DRY_RUN="false")
        self.assertEqual((cfg.mode, cfg.is_simulated), ("live", True))

    def test_openai_provider_needs_model_and_url(self) -> None:
        for name in ("LLM_MODEL", "LLM_BASE_URL"):
            with self.subTest(name), self.assertRaises(ConfigError) as cm:
                self.load(LLM_PROVIDER="openai", **{name: ""})
            self.assert_one_line_error(cm, name)
        self.assertEqual(self.load(LLM_PROVIDER="none", LLM_MODEL="").llm_model, "")

    def test_urls_with_credentials_are_refused_without_echoing_them(self) -> None:
        for name in ("LLM_BASE_URL", "SIM_URL"):
            for url in (f"ftp://user:{SECRET_VALUE}@host/v1", f"https://user:{SECRET_VALUE}@host/v1",
                        f"http://{SECRET_VALUE}@127.0.0.1:8765"):
                with self.subTest(name=name, url=url), self.assertRaises(ConfigError) as cm:
                    self.load(**{name: url})
                message = self.assert_one_line_error(cm, name, SECRET_VALUE)
                self.assertIn("****@", message)

    def test_warnings_are_logged_not_raised(self) -> None:
        with self.assertLogs("config", "WARNING") as logs:
            cfg = self.load(PAIR_ALLOWLIST="BTC/USDT,ETH/BTC,SOL/USDT", PAIR_DENYLIST="BTC/USDT",
                            LLM_PROVIDER="openai", LLM_CYCLE_BUDGET="5")
        text = "\n".join(logs.output)
        for fragment in ("ETH/BTC", "BTC/USDT is in both", "LLM_CYCLE_BUDGET=5"):
            self.assertIn(fragment, text)
        self.assertEqual(config.config_warnings(cfg), [r.split(":", 2)[2] for r in logs.output])


class NumberParsingTest(unittest.TestCase):
    def test_whole_numbers_are_plain_ascii_decimals(self) -> None:
        self.assertEqual([parse_whole(t, -5, 10) for t in ("0", "10", "-5", "007")], [0, 10, -5, 7])
        for text in ("1_0", "+5", "\u0665", "\uff11", "0x1", "1e1", "5.0", "", " 5", "nan"):
            with self.subTest(text=text), self.assertRaises(ValueError):
                parse_whole(text, 0, 10)
        with self.assertRaisesRegex(ValueError, "out of range"):
            parse_whole("11", 0, 10)

    def test_real_numbers_are_finite_plain_ascii_decimals(self) -> None:
        self.assertEqual([parse_real(t, 0, 10) for t in ("1", "1.", ".5", "1e1", "-0")],
                         [1.0, 1.0, 0.5, 10.0, 0.0])
        for text in ("1_0", "+5", "\u0665", "0x1", "nan", "inf", "-inf", "1e309", "1e99999",
                     "", "1e", ".", "1.2.3"):
            with self.subTest(text=text), self.assertRaises(ValueError):
                parse_real(text, 0, 10)
        with self.assertRaisesRegex(ValueError, "out of range"):
            parse_real("0", 0, 10, open_lo=True)


class DataDirTest(ConfigTestCase):
    def test_a_new_data_dir_is_readable_by_the_owner_only(self) -> None:
        cfg = self.load(DATA_DIR=str(self.tmp / "new"))
        self.assertEqual(stat.S_IMODE(cfg.data_dir.stat().st_mode) & 0o077, 0)

    def test_a_path_under_a_regular_file_is_refused_even_for_root(self) -> None:
        a_file = self.tmp / "file"
        a_file.write_text("x")
        for create in (True, False):
            with self.subTest(create=create), self.assertRaises(ConfigError) as cm:
                load_config(None, {"DATA_DIR": str(a_file / "sub" / "data")},
                            create_data_dir=create)
            self.assertIn("is a file", self.assert_one_line_error(cm, "DATA_DIR"))

    @unittest.skipIf(hasattr(os, "geteuid") and os.geteuid() == 0,
                     "root ignores directory permissions")
    def test_a_read_only_data_dir_is_refused(self) -> None:
        read_only = self.tmp / "ro"
        read_only.mkdir()
        read_only.chmod(0o500)
        self.addCleanup(read_only.chmod, 0o700)
        for path in (read_only, read_only / "sub"):
            with self.subTest(path=path), self.assertRaises(ConfigError) as cm:
                self.load(DATA_DIR=str(path))
            self.assertRegex(self.assert_one_line_error(cm, "DATA_DIR"),
                             "not writable|cannot be created")
            self.assertEqual(list(read_only.iterdir()), [])

    def test_without_create_nothing_is_written(self) -> None:
        path = self.tmp / "later" / "data"
        cfg = load_config(None, {"DATA_DIR": str(path)}, create_data_dir=False)
        self.assertFalse((self.tmp / "later").exists())
        config.prepare_data_dir(cfg)
        self.assertTrue(path.is_dir())

    def test_a_bad_value_creates_no_data_dir(self) -> None:
        path = self.tmp / "never"
        with self.assertRaises(ConfigError):
            load_config(None, {"DATA_DIR": str(path), "MAX_PAIRS": "1_0"})
        self.assertFalse(path.exists())


class CrossFieldTest(ConfigTestCase):
    def test_an_allowlist_that_leaves_nothing_to_trade_is_refused(self) -> None:
        for env in ({"PAIR_ALLOWLIST": "ETH/BTC"},
                    {"PAIR_ALLOWLIST": "BTC/USDT", "PAIR_DENYLIST": "BTC/USDT"},
                    {"PAIR_ALLOWLIST": "BTC/USDT,ETH/BTC", "PAIR_DENYLIST": "BTC/USDT"}):
            with self.subTest(env=env), self.assertRaises(ConfigError) as cm:
                self.load(**env)
            self.assertIn("leaves no pair to trade", self.assert_one_line_error(cm, "PAIR_ALLOWLIST"))

    def test_a_variable_set_twice_in_the_env_file_is_refused(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            self.load(f"MAX_PAIRS=5\nAPI_KEY={SECRET_VALUE}\n# x\nMAX_PAIRS=10\n")
        message = self.assert_one_line_error(cm, "MAX_PAIRS", SECRET_VALUE)
        self.assertIn("lines 1 and 4", message)
        self.assertEqual(self.load("OTHER_TOOL=1\nOTHER_TOOL=2\n").max_pairs, 50)  # not ours


MARKETS = {"BTC/USDT": {"spot": True, "active": True, "quote": "USDT"},
           "ETH/USDT": {"spot": True, "active": True, "quote": "USDT"},
           "NEO/USDT": {"spot": True, "active": True, "quote": "USDT"},
           "OLD/USDT": {"spot": True, "active": False, "quote": "USDT"},
           "BTC-PERP": {"spot": False, "active": True, "quote": "USDT"}}


class CheckPairsTest(ConfigTestCase):
    def test_listed_pairs_pass(self) -> None:
        check_pairs(self.load(PAIR_ALLOWLIST="BTC/USDT,ETH/USDT"), MARKETS)
        check_pairs(self.load(), MARKETS)                 # no allowlist: nothing to check

    def test_unknown_pairs_are_named_with_close_matches(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            check_pairs(self.load(PAIR_ALLOWLIST="BTC/USDT,NOPE/USDT,ETH/USTD,ZZZZZZ/USDT"),
                        MARKETS)
        message = self.assert_one_line_error(cm, "PAIR_ALLOWLIST")
        self.assertNotIn("BTC/USDT,", message.split("(allowed")[0])
        for fragment in ("NOPE/USDT (did you mean NEO/USDT?)", "ETH/USTD (did you mean ETH/USDT?)",
                         "ZZZZZZ/USDT", "simulated does not list"):
            self.assertIn(fragment, message)

    def test_listed_but_untradable_pairs_are_named(self) -> None:
        markets = MARKETS | {"SOL/USDT": {"spot": False, "active": True, "quote": "USDT"}}
        with self.assertRaises(ConfigError) as cm:
            check_pairs(self.load(PAIR_ALLOWLIST="OLD/USDT,SOL/USDT,BTC/USDT"), markets)
        message = self.assert_one_line_error(cm, "PAIR_ALLOWLIST")
        for symbol in ("OLD/USDT", "SOL/USDT"):
            self.assertIn(f"{symbol} (listed but not an active spot market in USDT)", message)

    def test_unknown_denylist_pairs_only_warn(self) -> None:
        with self.assertLogs("config", "WARNING") as logs:
            check_pairs(self.load(PAIR_DENYLIST="LUNA/USDT"), MARKETS, exchange="binance")
        self.assertIn("LUNA/USDT, which binance does not list", logs.output[0])


class MisspellingTest(ConfigTestCase):
    def test_close_names_in_env_file_suggest_the_right_one(self) -> None:
        cases = {"MAX_PARALEL_WORKERS": "MAX_PARALLEL_WORKERS", "dry_run": "DRY_RUN",
                 "API_SECRT": "API_SECRET", "STOPLOSS_ATR": "STOP_LOSS_ATR"}
        for wrong, right in cases.items():
            with self.subTest(wrong), self.assertRaises(ConfigError) as cm:
                self.load(f"{wrong}={SECRET_VALUE}\n")
            message = self.assert_one_line_error(cm, wrong, SECRET_VALUE)
            self.assertIn(f"did you mean {right}?", message)

    def test_unrelated_names_are_ignored(self) -> None:
        text = "".join(f"{name}=x\n" for name in (
            "OPENAI_API_KEY", "BINANCE_API_KEY", "DATABASE_URL", "HTTP_PROXY", "EXCHANGE_ID"))
        self.assertEqual(self.load(text), self.load())

    def test_environment_is_not_checked_for_misspellings(self) -> None:
        self.assertEqual(self.load(MAX_PARALEL_WORKERS="5").max_parallel_workers, 10)


class ConfigObjectTest(ConfigTestCase):
    def test_fields_match_the_variables(self) -> None:
        self.assertEqual(NAMES, [var.name for var in config.VARIABLES])

    def test_frozen(self) -> None:
        cfg = self.load()
        with self.assertRaises(dataclasses.FrozenInstanceError):
            cfg.max_pairs = 3  # type: ignore[misc]
        with self.assertRaises(TypeError):
            cfg.sources["MAX_PAIRS"] = "environment"  # type: ignore[index]
        with self.assertRaises(TypeError):
            PRESETS["small"]["CHECK_INTERVAL"] = 1  # type: ignore[index]
        self.assertEqual(hash(cfg), hash(self.load()))

    def test_derived_helpers(self) -> None:
        expected = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600,
                    "2h": 7200, "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200,
                    "1d": 86400}
        for timeframe, seconds in expected.items():
            self.assertEqual(self.load(TIMEFRAME=timeframe).timeframe_seconds, seconds)
        cfg = self.load()
        self.assertEqual((cfg.mode, cfg.is_simulated), ("paper", True))

    def test_describe_masks_secrets(self) -> None:
        cfg = self.load(API_KEY="abcdefgh12", API_SECRET="short", EXCHANGE="kraken")
        rows = cfg.describe()
        self.assertEqual([row[0] for row in rows], NAMES)
        shown = {name: (value, source) for name, value, source in rows}
        self.assertEqual(shown["API_KEY"], ("****12", "environment"))
        self.assertEqual(shown["API_SECRET"], ("****", "environment"))
        self.assertEqual(shown["LLM_API_KEY"], ("(not set)", "default"))
        self.assertEqual(shown["CHECK_INTERVAL"], ("120", "preset:medium"))
        self.assertEqual(shown["DRY_RUN"], ("true", "default"))
        self.assertEqual(shown["MAX_POSITION_SIZE"], ("0.1", "preset:medium"))
        self.assertEqual(shown["PAIR_ALLOWLIST"], ("(not set)", "default"))
        self.assertEqual(config.mask_secret("12345678"), "****78")
        self.assertEqual(config.mask_secret("1234567"), "****")

    def test_secrets_never_appear_in_repr_or_describe(self) -> None:
        with self.assertLogs("config", "WARNING") as logs:  # LLM_API_KEY unused
            cfg = self.load(API_KEY=SECRET_VALUE, API_SECRET=SECRET_VALUE,
                            LLM_API_KEY=SECRET_VALUE)
        self.assertNotIn(SECRET_VALUE, str(logs.output))
        self.assertNotIn(SECRET_VALUE, repr(cfg))
        self.assertNotIn(SECRET_VALUE, str(cfg.describe()))
        self.assertNotIn(SECRET_VALUE[:-2], str(cfg.describe()))

    def test_check_exchange_id(self) -> None:
        check_exchange_id(self.load(EXCHANGE="binance"))
        with self.assertRaises(ConfigError) as cm:
            check_exchange_id(self.load(EXCHANGE="binanse"))
        self.assertIn("did you mean binance", self.assert_one_line_error(cm, "EXCHANGE"))

    def test_import_and_simulated_check_stay_light(self) -> None:
        code = ("import sys, config; "
                "check_exchange_id = config.check_exchange_id; "
                f"check_exchange_id(config.load_config(None, {{'DATA_DIR': {self.data_dir!r}}})); "
                "heavy = [m for m in ('ccxt', 'numpy', 'sklearn', 'scipy') if m in sys.modules]; "
                "print(heavy)")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[]")


class EnvExampleTest(ConfigTestCase):
    path = ROOT / ".env.example"

    def test_env_example_gives_the_default_paper_setup(self) -> None:
        cfg = load_config(self.path, {"DATA_DIR": self.data_dir})
        self.assertEqual(cfg, load_config(None, {"DATA_DIR": self.data_dir}))
        self.assertEqual((cfg.mode, cfg.is_simulated, cfg.account_size),
                         ("paper", True, "medium"))
        self.assertEqual(cfg.sources["ACCOUNT_SIZE"], ".env")
        self.assertEqual(cfg.sources["CHECK_INTERVAL"], "preset:medium")

    def test_env_example_documents_every_field(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        for name in NAMES:
            with self.subTest(name):
                line = re.search(rf"^(?:# )?{name}=(.*)$", text, re.MULTILINE)
                self.assertIsNotNone(line, f"{name} is not in .env.example")
                index = text.index(line.group(0))
                comment = text[:index].rstrip("\n").rsplit("\n", 1)[-1]
                self.assertTrue(comment.startswith("# ") and not re.match(r"# [A-Z_]+=", comment),
                                f"{name} has no one-line comment above it")
        for preset in PRESETS:
            self.assertIn(preset, text)
        self.assertIn("SIM_SPEED times faster", text)

    def test_documented_defaults_are_the_real_defaults(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        uncommented = re.sub(r"^# ([A-Z_]+=)", r"\1", text, flags=re.MULTILINE)
        env_file = self.env_file(uncommented)
        cfg = load_config(env_file, {"DATA_DIR": self.data_dir})
        self.assertEqual(cfg, load_config(None, {"DATA_DIR": self.data_dir}))
        # every variable is now set by the file, so every shown default was checked
        self.assertEqual({s for n, s in cfg.sources.items() if n != "DATA_DIR"}, {".env"})

    def test_secrets_are_empty_in_env_example(self) -> None:
        values = dotenv_values(self.path)
        for name in config.SECRETS:
            self.assertEqual(values.get(name, ""), "", name)


if __name__ == "__main__":
    unittest.main()


class ApiSafetyTest(unittest.TestCase):
    def test_the_api_beyond_loopback_needs_a_token(self) -> None:
        base = {"API_ENABLED": "true", "API_HOST": "0.0.0.0"}
        with self.assertRaises(ConfigError) as caught:
            load_config(None, base)
        self.assertEqual(caught.exception.variable, "API_TOKEN")
        self.assertEqual(load_config(None, base | {"API_TOKEN": "x" * 20}).api_host, "0.0.0.0")
        self.assertFalse(load_config(None, {"API_ENABLED": "true"}).api_token)  # loopback

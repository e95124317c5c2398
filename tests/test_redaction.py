"""Secrets stay secret at every log level (redaction.py; issue 11, point 3).

Unit tests of ``mask`` and of the logging filter; a real ccxt.binance signing requests to
the simulated exchange with its request log on at DEBUG (the filter must mask the key and
the secret, and without it the key must show, so the test can fail); and the bot itself,
``python bot.py --cycles 1`` with LOG_LEVEL=DEBUG in live mode against a simulator with
distinctive keys, whose output must hold no piece of them.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import random
import string
import subprocess
import sys
import tempfile
import time
import types
import unittest
from pathlib import Path
from unittest import mock
from urllib.parse import quote, quote_plus

import ccxt

import config
import redaction
from redaction import MASK, MIN_PIECE, mask
from sim_exchange import SimExchangeServer, ccxt_overrides
from sim_market import SimMarket

ROOT = Path(__file__).resolve().parent.parent

_rng = random.Random(20240611)
_ALNUM = string.ascii_letters + string.digits
# Distinctive keys: a fixed marker (so a leak is easy to spot by eye) + random base62.
KEY = "K3yK3yK3y" + "".join(_rng.choice(_ALNUM) for _ in range(55))
SECRET = "S3cr3tS3cr3t" + "".join(_rng.choice(_ALNUM) for _ in range(52))


def pieces(secret: str, n: int = MIN_PIECE) -> list[str]:
    return [secret[i:i + n] for i in range(len(secret) - n + 1)]


def leaked(text: str, *secrets: str) -> list[str]:
    """Every 8-character piece of a secret found in `text` (empty: nothing leaked)."""
    return [p for s in secrets for p in pieces(s) if p in text]


class LoggingState(unittest.TestCase):
    """Saves and restores the root logger, the noisy loggers and the redaction filter."""

    def setUp(self) -> None:
        root = logging.getLogger()
        self._root_level, self._root_handlers = root.level, list(root.handlers)
        self._levels = {n: logging.getLogger(n).level for n in redaction.NOISY_LOGGERS}
        redaction.uninstall()
        self.addCleanup(self._restore)

    def _restore(self) -> None:
        redaction.uninstall()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if handler not in self._root_handlers:
                root.removeHandler(handler)
        root.setLevel(self._root_level)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)

    def capture(self, level: int = logging.DEBUG) -> io.StringIO:
        """A StringIO handler on the root logger, root at `level`."""
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(level)
        return stream


# -- mask ------------------------------------------------------------------------------------

class MaskTest(unittest.TestCase):
    def test_whole_secret_every_occurrence(self) -> None:
        text = f"key={KEY}&again={KEY} secret {SECRET}."
        self.assertEqual(mask(text, [KEY, SECRET]), "key=***&again=*** secret ***.")

    def test_every_piece_of_min_length_is_masked_and_shorter_ones_are_not(self) -> None:
        for i in range(len(KEY) - MIN_PIECE + 1):
            piece = KEY[i:i + MIN_PIECE]
            self.assertEqual(mask(f"[{piece}]", [KEY]), "[***]", piece)
        for i in range(0, len(KEY) - MIN_PIECE + 2, 5):
            short = KEY[i:i + MIN_PIECE - 1]
            self.assertEqual(mask(f"[{short}]", [KEY]), f"[{short}]", short)

    def test_truncated_and_spliced_values(self) -> None:
        self.assertEqual(mask(f"apiKey {KEY[:20]}... len 64", [KEY]), "apiKey ***... len 64")
        self.assertEqual(mask(f"x{KEY[10:30]}{SECRET[3:40]}y", [KEY, SECRET]), "x***y")
        self.assertEqual(mask(f"{KEY[5:13]} {KEY[40:50]}", [KEY]), "*** ***")

    def test_encoded_forms(self) -> None:
        weird = "p@ss/w0rd+with spaces&=%tail"   # a human secret with URL-special characters
        basic = base64.b64encode(f"user:{weird}".encode()).decode()
        cases = {
            "quote": quote(weird, safe=""), "quote_plus": quote_plus(weird),
            "quote lower-case": quote(weird, safe="").lower(),
            "hex": weird.encode().hex(), "HEX": weird.encode().hex().upper(),
            "base64": base64.b64encode(weird.encode()).decode(),
            "urlsafe base64": base64.urlsafe_b64encode(b"??" + weird.encode()).decode(),
            "basic auth": f"Authorization: Basic {basic}",
            "json": '{"k": "a\\"b\\\\c' + "d" * 10 + '"}',
        }
        secrets = [weird, 'a"b\\c' + "d" * 10]
        for name, text in cases.items():
            with self.subTest(form=name):
                out = mask(text, secrets)
                self.assertIn(MASK, out)
                if name in ("quote", "quote_plus", "hex", "HEX", "base64"):
                    self.assertEqual(out, MASK)
        for shift in range(3):               # the secret at each base64 alignment
            with self.subTest(shift=shift):
                text = base64.b64encode(b"x" * shift + KEY.encode() + b"!").decode()
                out = mask(text, [KEY])
                self.assertLessEqual(len(out.replace(MASK, "")), 8, out)  # edge characters

    def test_ordinary_text_is_left_alone(self) -> None:
        lines = ["cycle    1 |  3.75s | pairs 50 | candidates 9 | positions 5/5",
                 "GET https://api.binance.com/api/v3/account?timestamp=1718000000000&signature="
                 + "ab12" * 16, "Traceback (most recent call last): ValueError: nope",
                 "0123456789abcdef" * 8, "S3cr3t K3y", ""]
        for line in lines:
            self.assertEqual(mask(line, [KEY, SECRET]), line)

    def test_short_secrets(self) -> None:
        self.assertEqual(mask("a sim-key here, sim-keys", ["sim-key"]), "a *** here, ***s")
        self.assertEqual(mask("abc abc", ["abc"]), "abc abc")     # < MIN_SECRET: ignored
        self.assertEqual(mask("text", ["", None]), "text")
        self.assertEqual(mask("", [KEY]), "")

    def test_masking_is_idempotent_and_leaves_no_piece(self) -> None:
        text = f"{KEY}{SECRET} and {SECRET[::-1]}"
        once = mask(text, [KEY, SECRET])
        self.assertEqual(mask(once, [KEY, SECRET]), once)
        self.assertEqual(leaked(once, KEY, SECRET), [])

    def test_long_lines_are_fast(self) -> None:
        rng = random.Random(3)
        text = "".join(rng.choice(string.printable) for _ in range(1_000_000))
        plain = text
        text = plain[:500_000] + KEY + plain[500_000:]
        secrets = [KEY, SECRET, "sk-" + "x1y2z3" * 8]
        mask("warm up the compiled pattern", secrets)
        started = time.perf_counter()
        out = mask(text, secrets)
        elapsed = time.perf_counter() - started
        self.assertEqual(out, plain[:500_000] + MASK + plain[500_000:])
        self.assertLess(elapsed, 2.0, f"1 MB masked in {elapsed:.2f} s")
        line = f"DEBUG ccxt.base.exchange: GET http://127.0.0.1/api/v3/account, Request: " \
               f"{{'X-MBX-APIKEY': '{KEY}', 'Accept-Encoding': 'gzip'}} None"
        started = time.perf_counter()
        for _ in range(2000):
            mask(line, secrets)
        per_line = (time.perf_counter() - started) / 2000
        self.assertLess(per_line, 1e-3, f"{per_line * 1e6:.0f} us per log line")


# -- the logging filter ----------------------------------------------------------------------

class FilterTest(LoggingState):
    def test_message_arguments_exception_and_stack_at_every_level(self) -> None:
        stream = self.capture()
        redaction.install([KEY, SECRET])
        log = logging.getLogger("some.module")
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                      logging.CRITICAL):
            log.log(level, "plain %s / dict %r / %d", KEY, {"secret": SECRET}, 7)
        log.debug(f"f-string {KEY[3:30]}")
        try:
            raise ValueError(f"bad key {KEY}", SECRET)
        except ValueError:
            log.exception("failed with %s", quote(SECRET))
        log.info("stack", stack_info=True, extra={})
        log.warning("bad %d format", KEY)          # format error: still one masked line
        logging.getLogger("ccxt.base.exchange").warning("headers %s", {"X-MBX-APIKEY": KEY})
        output = stream.getvalue()
        self.assertEqual(leaked(output, KEY, SECRET), [], output)
        self.assertEqual(output.count("plain *** / dict {'secret': '***'} / 7"), 5)
        self.assertIn("ValueError: ('bad key ***', '***')", output)
        self.assertIn("failed with ***", output)
        self.assertIn("f-string ***", output)
        self.assertIn("headers {'X-MBX-APIKEY': '***'}", output)

    def test_without_the_filter_the_same_lines_leak(self) -> None:
        stream = self.capture()
        logging.getLogger("some.module").debug("plain %s", KEY)
        self.assertIn(KEY, stream.getvalue())

    def test_install_is_idempotent_adds_secrets_and_covers_new_handlers(self) -> None:
        stream = self.capture()
        handler = logging.getLogger().handlers[-1]
        first = redaction.install([KEY])
        self.assertIs(redaction.install([KEY]), first)
        self.assertEqual(handler.filters.count(first), 1)
        self.assertIn(first, logging.lastResort.filters)
        redaction.install([SECRET])                  # a later call adds, never forgets
        self.assertEqual(first.secrets, {KEY, SECRET})
        second = self.capture()
        redaction.install([])                        # covers the handler added since
        logging.getLogger("x").info("%s %s", KEY, SECRET)
        for s in (stream, second):
            self.assertIn("INFO x: *** ***", s.getvalue())
        self.assertEqual(handler.filters.count(first), 1)

    def test_uninstall_removes_everything(self) -> None:
        stream = self.capture()
        redaction.install([KEY])
        redaction.uninstall()
        logging.getLogger("x").info("%s", KEY)
        self.assertIn(KEY, stream.getvalue())
        self.assertNotIn(redaction.FILTER, logging.lastResort.filters)

    def test_noisy_loggers_stay_at_info_unless_asked(self) -> None:
        self.capture()
        with mock.patch.dict(os.environ, {"LOG_CCXT_DEBUG": ""}):
            redaction.install([KEY])
        for name in redaction.NOISY_LOGGERS:
            self.assertFalse(logging.getLogger(name).isEnabledFor(logging.DEBUG), name)
            self.assertTrue(logging.getLogger(name).isEnabledFor(logging.INFO), name)
        self.assertTrue(logging.getLogger("exchange").isEnabledFor(logging.DEBUG))
        with mock.patch.dict(os.environ, {"LOG_CCXT_DEBUG": "1"}):
            redaction.install([KEY])
        for name in redaction.NOISY_LOGGERS:
            self.assertTrue(logging.getLogger(name).isEnabledFor(logging.DEBUG), name)
        logging.getLogger("urllib3").setLevel(logging.WARNING)   # a user's own choice stays
        with mock.patch.dict(os.environ, {"LOG_CCXT_DEBUG": "no"}):
            redaction.install([KEY])
        self.assertEqual(logging.getLogger("urllib3").level, logging.WARNING)

    def test_secrets_of_reads_config_secrets_generically(self) -> None:
        cfg = config.load_config(None, {"API_KEY": KEY, "API_SECRET": SECRET,
                                        "LLM_API_KEY": "sk-llm-0123456789",
                                        "LLM_PROVIDER": "openai"})
        self.assertEqual(sorted(redaction.secrets_of(cfg)),
                         sorted([KEY, SECRET, "sk-llm-0123456789"]))
        self.assertEqual(redaction.secrets_of(config.load_config(None, {})), [])
        self.assertLessEqual({"API_KEY", "API_SECRET", "LLM_API_KEY"}, config.SECRETS)
        values = {name: f"{name.lower()}-0123456789" for name in config.SECRETS}
        self.assertEqual(sorted(redaction.secrets_of(values)), sorted(values.values()))
        with mock.patch.object(config, "SECRETS", config.SECRETS | {"TELEGRAM_TOKEN"}):
            later = types.SimpleNamespace(api_key=KEY, api_secret="", llm_api_key="",
                                          telegram_token="123456:AAbbCCddEEffGG")
            self.assertEqual(sorted(redaction.secrets_of(later)),
                             sorted([KEY, "123456:AAbbCCddEEffGG"]))
            self.assertEqual(redaction.secrets_of({"TELEGRAM_TOKEN": "t0k3n-t0k3n"}),
                             ["t0k3n-t0k3n"])


# -- a real ccxt client signing requests -----------------------------------------------------

class CcxtDebugLogTest(LoggingState):
    """ccxt.binance with its request log at DEBUG, against the simulated exchange."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = SimExchangeServer(SimMarket(pairs=3, seed=5, speed=600), api_key=KEY,
                                       api_secret=SECRET).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def trade(self) -> None:
        """Signed calls with ccxt's own logging, plus the slips a developer might make."""
        exchange = ccxt.binance(ccxt_overrides(self.server.url)
                                | {"apiKey": KEY, "secret": SECRET})
        try:
            exchange.load_markets()
            balance = exchange.fetch_balance()
            self.assertGreater(balance["total"]["USDT"], 0)
            price = exchange.fetch_ticker("BTC/USDT")["last"]
            amount = float(exchange.amount_to_precision("BTC/USDT", 20 / price))
            order = exchange.create_order("BTC/USDT", "market", "buy", amount)
            self.assertEqual(order["status"], "closed")
            exchange.fetch_balance()
        finally:
            exchange.session.close()
        log = logging.getLogger("exchange")
        log.debug("client %s", {"apiKey": exchange.apiKey, "secret": exchange.secret})
        log.debug("signed with %s…", SECRET[:24])
        try:
            ccxt.binance(ccxt_overrides(self.server.url)
                         | {"apiKey": KEY[::-1], "secret": SECRET}).fetch_balance()
        except ccxt.BaseError as exc:
            log.debug("with a wrong key %s: %s", KEY[::-1], exc)
        try:
            raise ccxt.AuthenticationError(f"binance {{'apiKey': '{KEY}', 'secret': '{SECRET}'}}")
        except ccxt.AuthenticationError:
            log.exception("credentials refused")

    def test_the_test_can_fail_without_the_filter(self) -> None:
        stream = self.capture()
        with mock.patch.dict(os.environ, {"LOG_CCXT_DEBUG": "1"}):
            self.trade()
        output = stream.getvalue()
        self.assertIn(KEY, output)
        self.assertIn(SECRET, output)
        self.assertIn("X-MBX-APIKEY", output)

    def test_ccxt_debug_let_through_is_masked(self) -> None:
        stream = self.capture()
        with mock.patch.dict(os.environ, {"LOG_CCXT_DEBUG": "1"}):
            redaction.install([KEY, SECRET])
        self.trade()
        output = stream.getvalue()
        self.assertIn("DEBUG ccxt.base.exchange: POST", output)      # the orders' requests
        self.assertIn("'X-MBX-APIKEY': '***'", output)
        self.assertIn("DEBUG urllib3.connectionpool", output)
        self.assertIn("credentials refused", output)
        self.assertEqual(leaked(output, KEY, SECRET), [])
        self.assertNotEqual(leaked(output, KEY[::-1]), [])     # not a secret: not masked
        self.assertNotIn(quote(KEY), output)

    def test_by_default_ccxt_debug_is_kept_out_and_the_rest_is_masked(self) -> None:
        stream = self.capture()
        with mock.patch.dict(os.environ, {"LOG_CCXT_DEBUG": ""}):
            redaction.install([KEY, SECRET])
        self.trade()
        output = stream.getvalue()
        self.assertNotIn("ccxt.base.exchange", output)
        self.assertNotIn("urllib3", output)
        self.assertIn("DEBUG exchange: client {'apiKey': '***', 'secret': '***'}", output)
        self.assertEqual(leaked(output, KEY, SECRET), [])


# -- the bot, end to end ---------------------------------------------------------------------

def bot_calls_redaction() -> bool:
    return "redaction" in (ROOT / "bot.py").read_text(encoding="utf-8")


@unittest.skipUnless(bot_calls_redaction(),
                     "bot.py does not call redaction yet: setup_logging must call "
                     "redaction.install(redaction.secrets_of(config)) after basicConfig")
class BotDebugLogTest(unittest.TestCase):
    """`python bot.py --cycles 1` at LOG_LEVEL=DEBUG, live on a simulator with our keys."""

    def run_bot(self, **extra: str) -> subprocess.CompletedProcess:
        market = SimMarket(pairs=8, seed=7, speed=600)
        with SimExchangeServer(market, api_key=KEY, api_secret=SECRET,
                               balances={"USDT": 10_000.0}) as server, \
                tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items()
                   if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
            env.update({"EXCHANGE": "simulated", "DRY_RUN": "false", "SIM_URL": server.url,
                        "API_KEY": KEY, "API_SECRET": SECRET, "LOG_LEVEL": "DEBUG",
                        "DATA_DIR": tmp, "ML_ENABLED": "false", "SIM_PAIRS": "8",
                        "MAX_PAIRS": "8", "CANDLE_HISTORY": "150", "CHECK_INTERVAL": "60",
                        "PYTHONUNBUFFERED": "1", "STRATEGY": "trend_momentum",
                        "STRATEGY_PARAMS": "min_volume_ratio=0", "EDGE_GATE": "false", **extra})
            proc = subprocess.run([sys.executable, str(ROOT / "bot.py"), "--env-file",
                                   os.devnull, "--cycles", "1"], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=240)
            self.assertGreater(server.request_count("/api/v3/account"), 0,
                               "the bot made no signed call: the test proves nothing")
        return proc

    def check(self, proc: subprocess.CompletedProcess) -> str:
        output = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 0, output[-3000:])
        self.assertIn("DEBUG", proc.stderr, "the bot did not log at DEBUG")
        self.assertIn("cycle    1", output)
        self.assertEqual(leaked(output, KEY, SECRET), [], "a piece of a key leaked")
        return output

    def test_debug_output_holds_no_piece_of_the_keys(self) -> None:
        output = self.check(self.run_bot())
        self.assertNotIn("ccxt.base.exchange", output)

    def test_even_with_ccxt_debug_asked_for(self) -> None:
        output = self.check(self.run_bot(LOG_CCXT_DEBUG="true"))
        self.assertIn("ccxt.base.exchange", output)
        self.assertIn("'X-MBX-APIKEY': '***'", output)


if __name__ == "__main__":
    unittest.main()

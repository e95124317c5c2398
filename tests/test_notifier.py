"""Notifications (notifier.py; issue 14): real HTTP to receivers on 127.0.0.1.

The receivers answer from a script: 200 (recording the JSON), a status with a body and
headers, "hang" (never answer until the test ends) or "close" (drop the connection without
an answer). Checked: the Discord/Slack and Telegram payloads; notify() returning at once
against a hanging receiver; retries with backoff on 5xx, 429 (waiting what was asked) and a
dropped connection; no retry of a 400; the overflow count of a full queue; close() within
its timeout; one hanging destination not delaying the other; no token in any log line
(at DEBUG), exception text, repr or stats; the event texts; from_config.
"""
from __future__ import annotations

import json
import logging
import random
import socket
import string
import threading
import time
import types
import unittest
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from domain import Fill, Position, Trade
from notifier import (KINDS, Notifier, TelegramDestination, WebhookDestination, daily_summary_text,
                      entry_text, error_text, exit_text, from_config, kill_switch_text, lock_text)
from redaction import url_secrets
from tests.test_trader import TraderCase
from protections import ALL_PAIRS, Lock

_rng = random.Random(20240614)
_ALNUM = string.ascii_letters + string.digits
TOKEN = "7654321098:AAH" + "".join(_rng.choice(_ALNUM) for _ in range(32))
HOOK_SECRET = "Wh00kS3cr3t" + "".join(_rng.choice(_ALNUM) for _ in range(40))
HOOK_PATH = f"/api/webhooks/112233445566778899/{HOOK_SECRET}"
FAST = dict(base_delay=0.01, max_delay=0.05, timeout=2.0, rng=random.Random(1))


class Receiver:
    """An HTTP server on 127.0.0.1 answering each POST with the next step of its script
    (then `default`): a status, (status, body, headers), "hang" or "close"."""

    def __init__(self, script: tuple = (), default: Any = 200) -> None:
        self.script = deque(script)
        self.default = default
        self.requests: list[dict] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                              "json": json.loads(body or b"null"),
                                              "at": time.monotonic()})
                    step = receiver.script.popleft() if receiver.script else receiver.default
                if step == "hang":
                    receiver.release.wait(30)
                    self.close_connection = True
                    return
                if step == "close":
                    self.close_connection = True
                    return
                status, answer, headers = (step, {"ok": True}, {}) if isinstance(step, int) \
                    else (tuple(step) + ({},))[:3]
                if callable(answer):
                    answer = answer(self.path)
                data = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


class CapturedLogs(logging.Handler):
    """Every record of every logger at DEBUG, formatted with its exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    def __enter__(self) -> "CapturedLogs":
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)

    def text(self) -> str:
        return "\n".join(self.lines)


class NotifierCase(unittest.TestCase):
    def setUp(self) -> None:
        quiet = logging.NullHandler()         # keeps the expected warnings off stderr
        logging.getLogger("notifier").addHandler(quiet)
        self.addCleanup(logging.getLogger("notifier").removeHandler, quiet)

    def receiver(self, *script: Any, default: Any = 200) -> Receiver:
        r = Receiver(script, default)
        self.addCleanup(r.close)
        return r

    def notifier(self, *destinations, **options) -> Notifier:
        n = Notifier(list(destinations), **{**FAST, **options})
        self.addCleanup(n.close, 0.5)
        return n

    def webhook(self, receiver: Receiver, path: str = "/hook") -> WebhookDestination:
        return WebhookDestination(receiver.url + path)

    def telegram(self, receiver: Receiver | None, token: str = TOKEN) -> TelegramDestination:
        url = receiver.url if receiver else f"http://127.0.0.1:{free_port()}"
        return TelegramDestination(token, "-1001234567890", api_url=url)

    def stats(self, n: Notifier, kind: str) -> dict:
        return next(s for name, s in n.stats().items() if name.startswith(kind))


class DeliveryTest(NotifierCase):
    def test_webhook_payload_suits_discord_slack_and_generic_receivers(self) -> None:
        r = self.receiver((204, {}))
        n = self.notifier(self.webhook(r, "/api/webhooks/1/abc?wait=true"), label="PAPER")
        self.assertTrue(n.notify("entry", "OPEN BTC/USDT @everyone", symbol="BTC/USDT",
                                 target=float("inf"), price=65000.5))
        self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["sent"] == 1))
        request = r.requests[0]
        self.assertEqual(request["path"], "/api/webhooks/1/abc?wait=true")
        self.assertEqual(request["headers"]["Content-Type"], "application/json")
        body = request["json"]
        self.assertEqual(body["content"], "[PAPER] OPEN BTC/USDT @everyone")     # Discord
        self.assertEqual(body["text"], body["content"])                          # Slack
        self.assertEqual(body["kind"], "entry")
        self.assertEqual(body["fields"], {"symbol": "BTC/USDT", "target": None, "price": 65000.5})
        self.assertEqual(body["allowed_mentions"], {"parse": []})                # no pings

    def test_telegram_send_message(self) -> None:
        r = self.receiver()
        n = self.notifier(self.telegram(r))
        n.notify("exit", "CLOSE ETH/USDT *bold_not* [link](x)")
        self.assertTrue(wait_for(lambda: self.stats(n, "telegram")["sent"] == 1))
        request = r.requests[0]
        self.assertEqual(request["path"], f"/bot{TOKEN}/sendMessage")
        self.assertEqual(request["json"], {"chat_id": "-1001234567890",
                                           "text": "CLOSE ETH/USDT *bold_not* [link](x)",
                                           "disable_web_page_preview": True})

    def test_long_texts_fit_each_destination(self) -> None:
        r = self.receiver()
        n = self.notifier(self.webhook(r), self.telegram(r))
        n.notify("error", "x" * 5000)
        self.assertTrue(wait_for(lambda: r.count() == 2))
        bodies = {("chat_id" in q["json"]): q["json"] for q in r.requests}
        self.assertEqual(len(bodies[False]["content"]), 2000)
        self.assertLessEqual(len(bodies[True]["text"]), 4096)

    def test_500_is_retried_until_it_succeeds(self) -> None:
        r = self.receiver(500, 503, 200)
        n = self.notifier(self.webhook(r))
        n.notify("error", "boom")
        self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["sent"] == 1))
        s = self.stats(n, "webhook")
        self.assertEqual((s["sent"], s["failed"], s["retried"]), (1, 0, 2))
        self.assertEqual(r.count(), 3)

    def test_retries_are_bounded(self) -> None:
        r = self.receiver(default=500)
        n = self.notifier(self.webhook(r), attempts=3)
        n.notify("error", "boom")
        self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["failed"] == 1))
        self.assertEqual(self.stats(n, "webhook")["retried"], 2)
        self.assertEqual(r.count(), 3)

    def test_dropped_connection_is_retried(self) -> None:
        r = self.receiver("close", 200)
        n = self.notifier(self.webhook(r))
        n.notify("entry", "hello")
        self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["sent"] == 1))
        self.assertEqual(self.stats(n, "webhook")["retried"], 1)

    def test_400_is_not_retried_and_logged_once(self) -> None:
        refusal = (400, {"message": "Cannot send an empty message", "code": 50006})
        r = self.receiver(refusal, refusal)
        n = self.notifier(self.webhook(r))
        with CapturedLogs() as logs:
            n.notify("entry", "one")
            n.notify("entry", "two")
            self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["failed"] == 2))
        s = self.stats(n, "webhook")
        self.assertEqual((s["sent"], s["retried"], r.count()), (0, 0, 2))
        self.assertIn("HTTP 400: Cannot send an empty message", s["last_error"])
        warnings = [x for x in logs.records
                    if x.levelno >= logging.WARNING and x.name == "notifier"]
        self.assertEqual(len(warnings), 1, logs.text())

    def test_telegram_429_waits_for_retry_after(self) -> None:
        limited = (429, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                         "parameters": {"retry_after": 0.4}})
        r = self.receiver(limited, 200)
        n = self.notifier(self.telegram(r))
        n.notify("exit", "sold")
        self.assertTrue(wait_for(lambda: self.stats(n, "telegram")["sent"] == 1))
        gap = r.requests[1]["at"] - r.requests[0]["at"]
        self.assertGreaterEqual(gap, 0.4)

    def test_http_retry_after_header_is_respected(self) -> None:
        r = self.receiver((503, {}, {"Retry-After": "0.4"}), 200)
        n = self.notifier(self.webhook(r))
        n.notify("exit", "sold")
        self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["sent"] == 1))
        self.assertGreaterEqual(r.requests[1]["at"] - r.requests[0]["at"], 0.4)

    def test_refused_connection_fails_then_later_messages_get_one_attempt(self) -> None:
        n = self.notifier(WebhookDestination(f"http://127.0.0.1:{free_port()}/hook"),
                          attempts=3)
        n.notify("entry", "one")
        self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["failed"] == 1))
        n.notify("entry", "two")
        self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["failed"] == 2))
        s = self.stats(n, "webhook")
        self.assertEqual(s["retried"], 2)          # the second message was tried once
        self.assertTrue(s["down"])
        self.assertEqual(s["last_error"], "connection refused")

    def test_close_flushes_what_is_queued(self) -> None:
        r = self.receiver()
        n = Notifier([self.webhook(r)], **FAST)
        for i in range(20):
            n.notify("entry", f"message {i}")
        n.close(5.0)
        self.assertEqual([q["json"]["text"] for q in r.requests],
                         [f"message {i}" for i in range(20)])
        self.assertFalse(n.notify("entry", "after close"))


class HangingReceiverTest(NotifierCase):
    def test_notify_returns_at_once_while_the_receiver_hangs(self) -> None:
        r = self.receiver(default="hang")
        n = self.notifier(self.webhook(r), timeout=5.0)
        n.notify("entry", "first")
        self.assertTrue(wait_for(lambda: r.count() == 1))      # the thread is stuck on it
        started = time.perf_counter()
        for i in range(100):
            n.notify("entry", f"message {i}")
        self.assertLess(time.perf_counter() - started, 0.05)
        self.assertEqual(self.stats(n, "webhook")["queued"], 100)

    def test_overflow_drops_the_oldest_and_counts_them(self) -> None:
        r = self.receiver(default="hang")
        n = self.notifier(self.webhook(r), timeout=5.0)
        n.notify("entry", "first")
        self.assertTrue(wait_for(lambda: r.count() == 1))
        for i in range(1099):
            n.notify("entry", f"message {i}")
        s = self.stats(n, "webhook")
        self.assertEqual((s["queued"], s["in_flight"], s["dropped"]), (1000, 1, 99))

    def test_overflow_keeps_the_newest(self) -> None:
        r = self.receiver("hang")
        n = self.notifier(self.webhook(r), queue_size=5, timeout=5.0)
        n.notify("entry", "first")
        self.assertTrue(wait_for(lambda: r.count() == 1))
        for i in range(8):
            n.notify("entry", f"message {i}")
        r.release.set()                      # the hung answer ends: retried, then the rest
        self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["sent"] == 6))
        self.assertEqual([q["json"]["text"] for q in r.requests],
                         ["first", "first"] + [f"message {i}" for i in range(3, 8)])
        self.assertEqual(self.stats(n, "webhook")["dropped"], 3)

    def test_close_returns_within_its_timeout(self) -> None:
        r = self.receiver(default="hang")
        n = Notifier([self.webhook(r)], **{**FAST, "timeout": 5.0})
        for i in range(5):
            n.notify("entry", f"message {i}")
        self.assertTrue(wait_for(lambda: r.count() == 1))
        started = time.monotonic()
        with CapturedLogs() as logs:
            n.close(0.3)
            n.close(0.3)                      # again: nothing more to do or to log
        self.assertLess(time.monotonic() - started, 0.6)
        self.assertEqual(logs.text().count("not delivered before shutdown"), 1)
        self.assertIn("5 message(s) not delivered before shutdown", logs.text())

    def test_a_hanging_destination_does_not_delay_the_other(self) -> None:
        hanging, healthy = self.receiver(default="hang"), self.receiver()
        n = self.notifier(self.webhook(hanging), self.telegram(healthy), timeout=5.0)
        for i in range(3):
            n.notify("kill_switch", f"stop {i}")
        self.assertTrue(wait_for(lambda: self.stats(n, "telegram")["sent"] == 3, timeout=1.0))
        self.assertEqual(self.stats(n, "webhook")["sent"], 0)

    def test_a_hanging_receiver_times_out_and_is_retried(self) -> None:
        r = self.receiver("hang", 200)
        n = self.notifier(self.webhook(r), timeout=0.2)
        n.notify("entry", "slow")
        self.assertTrue(wait_for(lambda: self.stats(n, "webhook")["sent"] == 1))
        self.assertEqual(self.stats(n, "webhook")["retried"], 1)


class SecretsTest(NotifierCase):
    def test_tokens_never_in_logs_stats_or_reprs(self) -> None:
        echo = lambda path: {"ok": False, "description": f"no route {path}"}  # noqa: E731
        r = self.receiver((401, {"ok": False, "error_code": 401, "description": "Unauthorized"}),
                          500, "close", (400, echo), "hang", default=(404, echo))
        hook = self.receiver(500, "close", (400, echo), (403, echo), default=(500, echo))
        n = self.notifier(self.telegram(r), self.telegram(None),
                          WebhookDestination(hook.url + HOOK_PATH + f"?token={HOOK_SECRET}"),
                          timeout=0.3, attempts=2)
        with CapturedLogs() as logs:
            for i in range(6):
                n.notify("entry", f"message {i}")
            self.assertTrue(wait_for(
                lambda: sum(s["failed"] + s["sent"] for s in n.stats().values()) >= 18, 8.0))
            n.close(0.5)
        seen = "\n".join([logs.text(), repr(n.stats()), repr(n), n.report(),
                          *map(repr, n._outboxes), *(repr(b.destination) for b in n._outboxes)])
        self.assertIn("telegram http://127.0.0.1", seen)
        self.assertIn("check TELEGRAM_TOKEN", seen)
        self.assertGreater(len(logs.lines), 5)
        for secret in (TOKEN, TOKEN.split(":")[1], HOOK_SECRET, "112233445566778899"):
            self.assertNotIn(secret, seen)
            for i in range(len(secret) - 7):           # nor any 8 characters of it
                self.assertNotIn(secret[i:i + 8], seen)

    def test_bad_destinations_name_no_secret(self) -> None:
        for make in (lambda: TelegramDestination(TOKEN, "not a chat"),
                     lambda: TelegramDestination(TOKEN + " x", "1"),
                     lambda: WebhookDestination(f"ftp://example.com{HOOK_PATH}"),
                     lambda: WebhookDestination(f"http://user:{HOOK_SECRET}@example.com/x")):
            with self.assertRaises(ValueError) as caught:
                make()
            self.assertNotIn(HOOK_SECRET[:8], str(caught.exception))
            self.assertNotIn(TOKEN[-8:], str(caught.exception))

    def test_url_secrets_are_the_credential_parts(self) -> None:
        self.assertEqual(url_secrets(f"https://discord.com{HOOK_PATH}?wait=true"),
                         ["112233445566778899", HOOK_SECRET])
        self.assertEqual(url_secrets("https://hooks.slack.com/services/T0123ABCD/B0123ABCD/"
                                     "abcdefghijklmnopqrstuvwx"),
                         ["T0123ABCD", "B0123ABCD", "abcdefghijklmnopqrstuvwx"])
        self.assertEqual(url_secrets("https://example.com/hook?token=s3cr3tv4lue"),
                         ["s3cr3tv4lue"])


class NotifyTest(NotifierCase):
    def test_kinds_are_checked_and_filtered(self) -> None:
        r = self.receiver()
        n = self.notifier(self.webhook(r), events=("exit", "error"))
        with self.assertRaises(ValueError):
            n.notify("trade", "what kind?")
        self.assertFalse(n.notify("entry", "not wanted"))
        self.assertTrue(n.notify("exit", "wanted"))
        self.assertTrue(wait_for(lambda: r.count() == 1))
        with self.assertRaises(ValueError):
            Notifier([self.webhook(r)], events=("entries",))

    def test_repeated_errors_are_sent_once_per_window(self) -> None:
        r = self.receiver()
        n = self.notifier(self.webhook(r), repeat_window=60.0)
        self.assertTrue(n.error("exchange unavailable"))
        self.assertFalse(n.error("exchange unavailable"))
        self.assertTrue(n.error("something else"))
        self.assertTrue(n.notify("entry", "same"))
        self.assertTrue(n.notify("entry", "same"))       # entries are never suppressed
        self.assertTrue(wait_for(lambda: r.count() == 4))
        self.assertEqual(n.suppressed, 1)
        self.assertIn("1 repeated message(s) not sent again", n.report())

    def test_secrets_are_masked_in_what_is_sent(self) -> None:
        api_key = "ApiK3y" + "".join(_rng.choice(_ALNUM) for _ in range(40))
        r = self.receiver()
        n = self.notifier(self.webhook(r), secrets=[api_key])
        n.error(f"exchange unavailable: GET /api/v3/account?apiKey={api_key}")
        self.assertTrue(wait_for(lambda: r.count() == 1))
        sent = json.dumps(r.requests[0]["json"])
        self.assertNotIn(api_key[:8], sent)
        self.assertIn("apiKey=***", sent)

    def test_from_config_masks_the_configs_secrets(self) -> None:
        r = self.receiver()
        api_key = "ApiK3y" + "".join(_rng.choice(_ALNUM) for _ in range(40))
        n = from_config(types.SimpleNamespace(
            notify_webhook_url=r.url + HOOK_PATH, telegram_token="", telegram_chat_id="",
            api_key=api_key, mode="live"), **FAST)
        self.addCleanup(n.close, 0.5)
        n.error(f"refused {api_key} at https://example.com{HOOK_PATH}")
        self.assertTrue(wait_for(lambda: r.count() == 1))
        self.assertEqual(r.requests[0]["json"]["text"],
                         "[LIVE] ERROR: refused *** at https://example.com/api/webhooks/***/***")

    def test_event_methods_send_the_texts_and_fields(self) -> None:
        r = self.receiver()
        n = self.notifier(self.webhook(r))
        n.entry(POSITION)
        n.exit(SELL, TRADE)
        n.protection(LOCK)
        n.kill_switch("kill switch: equity 7000.00 is more than 25% below its peak 10000.00")
        self.assertTrue(wait_for(lambda: r.count() == 4))
        by_kind = {q["json"]["kind"]: q["json"] for q in r.requests}
        self.assertEqual(by_kind["entry"]["text"], entry_text(POSITION))
        self.assertEqual(by_kind["entry"]["fields"]["target"], 68000.0)
        self.assertEqual(by_kind["exit"]["fields"]["profit"], TRADE.profit)
        self.assertEqual(by_kind["protection"]["fields"]["lock"], "stoploss_guard")
        self.assertIn("KILL SWITCH", by_kind["kill_switch"]["text"])


class FromConfigTest(unittest.TestCase):
    def config(self, **values: Any) -> types.SimpleNamespace:
        base = dict(notify_webhook_url="", telegram_token="", telegram_chat_id="",
                    telegram_api_url="https://api.telegram.org", notify_events=KINDS,
                    mode="paper")
        return types.SimpleNamespace(**{**base, **values})

    def test_nothing_configured_is_none(self) -> None:
        self.assertIsNone(from_config(self.config()))

    def test_destinations_events_and_label(self) -> None:
        n = from_config(self.config(notify_webhook_url="https://discord.com" + HOOK_PATH,
                                    telegram_token=TOKEN, telegram_chat_id="12345",
                                    notify_events=("exit", "kill_switch")))
        self.addCleanup(n.close, 0.1)
        self.assertEqual(n.destinations, ["webhook https://discord.com",
                                          "telegram https://api.telegram.org"])
        self.assertEqual(n.events, {"exit", "kill_switch"})
        self.assertEqual(n.label, "PAPER")

    def test_half_a_telegram_setting_is_an_error(self) -> None:
        with self.assertRaises(ValueError):
            from_config(self.config(telegram_token=TOKEN))
        with self.assertRaises(ValueError):
            from_config(self.config(telegram_chat_id="12345"))

    def test_telegram_api_url_with_a_path(self) -> None:
        d = TelegramDestination(TOKEN, "@my_channel", "https://proxy.example:8443/tg/")
        self.assertEqual(d._path, f"/tg/bot{TOKEN}/sendMessage")
        self.assertEqual(d.name, "telegram https://proxy.example:8443")


# -- the texts ---------------------------------------------------------------------------

T0 = 1_714_560_000_000            # 2024-05-01 10:40 UTC
POSITION = Position("BTC/USDT", 0.0153, 65000.5, T0, 63000.0, 68000.0, entry_fee=0.99,
                    probability=0.62)
SELL = Fill("BTC/USDT", "sell", 0.0153, 64000.0, 979.2, 0.98, T0 + 11_100_000, "o1", "c1")
TRADE = Trade.closing(POSITION, SELL, "stop_loss")
LOCK = Lock(ALL_PAIRS, T0 + 3_600_000, "stoploss guard: 3 stops in 24 candles", "stoploss_guard")


class TextTest(unittest.TestCase):
    def test_entry(self) -> None:
        self.assertEqual(entry_text(POSITION),
                         "OPEN BTC/USDT 0.0153 @ 65000.5\n"
                         "stop 63000 | target 68000 | fee 0.99 USDT | model p 0.62")
        no_target = Position("ETH/USDT", 1.0, 2000.0, T0, 1900.0, float("inf"))
        self.assertEqual(entry_text(no_target),
                         "OPEN ETH/USDT 1 @ 2000\nstop 1900 | no target | fee 0 USDT")

    def test_exit(self) -> None:
        text = exit_text(SELL, TRADE)
        self.assertEqual(text, f"CLOSE BTC/USDT 0.0153 @ 64000 stop_loss\n"
                               f"PnL {TRADE.profit:+.2f} USDT ({TRADE.return_pct:+.2f}%) | "
                               f"held 3h 05m")
        left = POSITION.reduced(0.005)
        self.assertTrue(exit_text(SELL, TRADE, left).endswith(f"\n{left.amount:.8g} left open"))

    def test_lock(self) -> None:
        self.assertEqual(lock_text(LOCK), "LOCK all pairs until 2024-05-01 11:40 UTC\n"
                                          "stoploss guard: 3 stops in 24 candles")
        pair = Lock("ETH/USDT", T0 + 600_000, "cooldown: ...", "cooldown")
        self.assertEqual(lock_text(pair, T0).splitlines()[0],
                         "LOCK ETH/USDT until 2024-05-01 10:50 UTC (10 min left)")

    def test_kill_switch_and_error(self) -> None:
        self.assertEqual(kill_switch_text("kill switch: equity 7000.00 is more than 25% below "
                                          "its peak 10000.00"),
                         "KILL SWITCH: no new entries; open positions are still managed\n"
                         "equity 7000.00 is more than 25% below its peak 10000.00")
        self.assertEqual(error_text("cycle skipped:\n  exchange   unavailable"),
                         "ERROR: cycle skipped: exchange unavailable")
        self.assertEqual(len(error_text("x" * 1000)), len("ERROR: ") + 300)

    def test_daily_summary(self) -> None:
        win = TRADE.__class__(**{**TRADE.__dict__, "symbol": "ETH/USDT", "profit": 8.0})
        text = daily_summary_text(T0 - T0 % 86_400_000, [TRADE, win], 10_012.34, "USDT",
                                  start_equity=10_000.0, open_positions=2)
        self.assertEqual(text.splitlines(), [
            "DAY 2024-05-01 UTC",
            f"2 trades, 1 won (50%) | PnL {TRADE.profit + 8:+,.2f} USDT | fees "
            f"{2 * (TRADE.entry_fee + TRADE.exit_fee):,.2f}",
            f"best +8.00 ETH/USDT | worst {TRADE.profit:+,.2f} BTC/USDT",
            "equity 10,012.34 USDT (+0.12% today) | 2 open"])
        self.assertEqual(daily_summary_text(T0, [], 100.0, "USDT").splitlines()[1:],
                         ["no closed trades", "equity 100.00 USDT | 0 open"])


if __name__ == "__main__":
    unittest.main()


class TraderNotificationsTest(TraderCase):
    """The trading loop's events reach a webhook; a hanging one delays no cycle."""

    def test_entries_and_exits_are_sent_and_a_hanging_receiver_delays_no_cycle(self) -> None:
        receiver = Receiver(script=("hang",))   # the first message hangs; the rest answer
        self.addCleanup(receiver.close)
        trader = self.start(NOTIFY_WEBHOOK_URL=receiver.url + "/hook", MAX_HOLD_CANDLES="1")
        self.assertIsNotNone(trader.notifier)
        self.run_until_positions(trader)
        self.assertTrue(wait_for(lambda: receiver.count() >= 1))
        for _ in range(3):                       # cycles run while the first POST hangs
            trader.client.sim.advance(600)
            trader.run_cycle()
        self.assertFalse(receiver.release.is_set())
        self.assertEqual(receiver.count(), 1, "one message in flight, the rest queued")
        receiver.release.set()
        self.assertTrue(wait_for(lambda: any(r["json"]["kind"] == "exit" for r in receiver.requests),
                                 timeout=10))
        kinds = [r["json"]["kind"] for r in receiver.requests]
        self.assertEqual(kinds[0], "entry")
        self.assertIn("OPEN", receiver.requests[0]["json"]["content"])
        self.assertIn("[PAPER]", receiver.requests[0]["json"]["content"])


class DailySummaryTest(NotifierCase):
    def test_one_summary_per_utc_day_remembered_across_restarts(self) -> None:
        import tempfile

        from protections import DAY_MS
        from store import Store

        receiver = self.receiver()
        n = self.notifier(self.webhook(receiver))
        with tempfile.TemporaryDirectory() as tmp:
            day = 20_000 * DAY_MS
            with Store.open(tmp, "paper") as store:
                n.daily_summary_once(store, day + 5, 10_000.0, "USDT", 0)      # first day: none
                n.daily_summary_once(store, day + 9, 10_000.0, "USDT", 0)
            with Store.open(tmp, "paper") as store:                            # a restart
                n.daily_summary_once(store, day + DAY_MS + 1, 10_100.0, "USDT", 2)
                n.daily_summary_once(store, day + DAY_MS + 2, 10_100.0, "USDT", 2)
        self.assertTrue(wait_for(lambda: receiver.count() == 1))
        time.sleep(0.1)
        self.assertEqual(receiver.count(), 1)
        sent = receiver.requests[0]["json"]
        self.assertEqual(sent["kind"], "daily_summary")
        self.assertIn("10,100", sent["content"].replace(" ", ""))

"""The REST API, /metrics and the dashboard's auth: real HTTP on 127.0.0.1 against a Trader
on the simulated exchange, its loop in a thread (the loop carries the commands out)."""
import json
import logging
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from api_server import ApiServer
from reporter import Reporter
from tests.test_trader import trader_config
from trader import PAUSED, Trader

TOKEN = "s3cret-Token-for-the-API-0123456789"


def open_trader(case, positions: bool = True, **overrides) -> Trader:
    tmp = tempfile.TemporaryDirectory()
    case.addClassCleanup(tmp.cleanup)
    env = {"MARKET_DATA": "rest", "CHECK_INTERVAL": "60", "ENABLE_PERFORMANCE_MONITORING": "true"}
    trader = Trader(trader_config(tmp.name, **(env | overrides)), reporter=Reporter(lambda _: None))
    case.addClassCleanup(trader.close)
    trader.client.ccxt.rateLimit = 5
    if positions:     # before the loop thread starts: the loop is the single writer
        for _ in range(20):
            trader.run_cycle()
            if len(trader.positions) >= 2:
                break
            trader.client.sim.advance(300)
        assert trader.positions, "the simulated market opened no position"
    trader.publish_facts()
    return trader


def run_loop(case, trader: Trader) -> threading.Thread:
    thread = threading.Thread(target=trader.run, daemon=True, name="test-loop")
    thread.start()

    def stop():
        trader.stop.set()
        thread.join(timeout=20)
    case.addClassCleanup(stop)
    return thread


def serve(case, trader: Trader, token: str = TOKEN, **kw) -> ApiServer:
    server = ApiServer(trader, "127.0.0.1", 0, token, **kw).start()
    case.addClassCleanup(server.stop)
    return server


class Client:
    def __init__(self, server: ApiServer, token: str | None = TOKEN):
        self.server, self.token = server, token

    def call(self, method: str, path: str, body=None, headers=None, token=...):
        token = self.token if token is ... else token
        data = None if body is None else (body if isinstance(body, bytes) else
                                           json.dumps(body).encode())
        request = urllib.request.Request(self.server.url + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, body=None, **kw):
        status, headers, raw = self.call(method, path, body, **kw)
        return status, json.loads(raw)

    def get(self, path: str, **kw):
        status, answer = self.json("GET", path, **kw)
        assert status == 200, (path, status, answer)
        return answer


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class CapturedLogs(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


class ApiCase(unittest.TestCase):
    @classmethod
    def capture_logs(cls):
        cls.logs = CapturedLogs()
        root = logging.getLogger()
        root.addHandler(cls.logs)
        level = root.level
        root.setLevel(logging.DEBUG)
        logging.getLogger("api_server").setLevel(logging.DEBUG)

        def restore():
            root.removeHandler(cls.logs)
            root.setLevel(level)
        cls.addClassCleanup(restore)

    def wait_for(self, condition, timeout=15.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        self.fail(f"{what} not met within {timeout}s")


class TestReadsAndAuth(ApiCase):
    """One trader with positions, its loop running, the server with a token."""

    @classmethod
    def setUpClass(cls):
        cls.capture_logs()
        cls.trader = open_trader(cls)
        cls.thread = run_loop(cls, cls.trader)
        cls.server = serve(cls, cls.trader)
        cls.api = Client(cls.server)
        cls.answers: list[bytes] = []

    def get(self, path):
        status, headers, raw = self.api.call("GET", path)
        self.answers.append(raw + json.dumps(headers).encode())
        self.assertEqual(status, 200, (path, raw[:300]))
        return json.loads(raw) if headers["Content-Type"] == "application/json" else raw

    def test_status_has_the_facts_and_totals(self):
        s = self.get("/api/v1/status")
        for key in ("cycle", "mode", "paused", "equity", "start_equity", "cash", "positions",
                    "model", "gate", "locks", "market_data", "strategy", "updated_ms"):
            self.assertIn(key, s)
        self.assertEqual(s["mode"], "paper")
        self.assertEqual(s["market_data"], "rest")
        self.assertGreaterEqual(s["open_positions"], 1)
        self.assertEqual(set(s["totals"]), {"trades", "wins", "losses", "win_rate",
                                            "total_profit", "fees", "best", "worst"})
        self.assertAlmostEqual(s["pnl"], s["equity"] - s["start_equity"])

    def test_positions_carry_stops_and_unrealized_profit(self):
        p = self.get("/api/v1/positions")
        self.assertEqual(p["count"], len(p["positions"]))
        held = {pos["symbol"]: pos for pos in p["positions"]}
        self.assertEqual(set(held), {pos["symbol"] for pos in self.trader.facts["positions"]})
        for pos in held.values():
            self.assertGreater(pos["stop_loss"], 0)
            self.assertLess(pos["stop_loss"], pos["entry_price"])
            self.assertIn("unrealized", pos)
            self.assertIn("price", pos)
            self.assertNotIn("features", pos)

    def test_trades_are_paged_newest_first(self):
        total = self.trader.store.totals().trades
        t = self.get("/api/v1/trades?page=1&per_page=2")
        self.assertEqual((t["total"], t["page"], t["per_page"]), (total, 1, 2))
        self.assertLessEqual(len(t["trades"]), 2)
        everything = self.get("/api/v1/trades?per_page=500")["trades"]
        self.assertEqual(len(everything), min(total, 500))
        exits = [tr["exit_time_ms"] for tr in everything]
        self.assertEqual(exits, sorted(exits, reverse=True))
        beyond = self.get("/api/v1/trades?page=99999&per_page=10")
        self.assertEqual(beyond["trades"], [])
        for bad in ("page=0", "per_page=0", "per_page=501", "page=x"):
            status, answer = self.api.json("GET", f"/api/v1/trades?{bad}")
            self.assertEqual(status, 400, bad)
            self.assertIn("error", answer)

    def test_equity_curve_json_and_png(self):
        e = self.get("/api/v1/equity?limit=3")
        self.assertGreaterEqual(e["count"], 1)
        self.assertLessEqual(e["count"], 3)
        self.assertEqual(set(e["points"][0]), {"ts_ms", "equity", "cash", "open_positions"})
        png = self.get("/api/v1/equity.png?width=400&height=200")
        self.assertTrue(png.startswith(b"\x89PNG"), png[:8])

    def test_performance_caches_model_protections(self):
        perf = self.get("/api/v1/performance")
        self.assertIn("run_cycle", perf["operations"])
        self.assertGreater(perf["operations"]["run_cycle"]["calls"], 0)
        self.assertIn("run_cycle", perf["report"])
        caches = self.get("/api/v1/caches")["caches"]
        self.assertIn("scan", caches)
        self.assertEqual(set(caches["scan"]) >= {"hits", "misses", "lookups", "hit_rate"}, True)
        model = self.get("/api/v1/model")
        self.assertEqual((model["enabled"], model["trusted"], model["version"]),
                         (False, False, None))
        self.assertIn("ML off", model["state"])
        prot = self.get("/api/v1/protections")
        self.assertIsInstance(prot["locks"], list)
        self.assertIn("gate", prot)

    def test_pause_refuses_entries_and_resume_allows_them(self):
        status, answer = self.api.json("POST", "/api/v1/pause")
        self.assertEqual((status, answer["paused"]), (200, True), answer)
        self.assertTrue(self.trader.facts["paused"])
        self.assertTrue(self.get("/api/v1/status")["paused"])
        cycle = self.trader.facts["cycle"]
        self.wait_for(lambda: self.trader.facts["cycle"] > cycle + 1, 20, "two more cycles")
        cycles = self.trader.store.recorded_cycles()
        halted = [json.loads(c[3]).get("halted") for c in cycles if c[0] > cycle + 1]
        self.assertTrue(halted)
        self.assertEqual(set(halted), {PAUSED}, "a paused loop refuses every entry")
        self.assertEqual(self.trader.decisions.entries, ())
        status, answer = self.api.json("POST", "/api/v1/resume")
        self.assertEqual((status, answer["paused"]), (200, False), answer)
        self.assertFalse(self.get("/api/v1/status")["paused"])

    def test_metrics_parse_as_prometheus_text(self):
        status, headers, raw = self.api.call("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain"))
        families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
        for name in ("bot_equity", "bot_cash", "bot_open_positions", "bot_trades",
                     "bot_operation_duration_seconds", "bot_cache_hits", "bot_cache_misses",
                     "bot_exchange_requests", "bot_rate_limit_wait_seconds", "bot_paused"):
            self.assertIn(name, families)
        value = lambda n: families[n].samples[0].value  # noqa: E731
        self.assertGreaterEqual(value("bot_open_positions"), 1)
        self.assertGreater(value("bot_equity"), 0)
        self.assertEqual(families["bot_trades"].type, "counter")
        cycle = [s for s in families["bot_operation_duration_seconds"].samples
                 if s.labels.get("operation") == "run_cycle"]
        self.assertEqual({s.labels.get("quantile") for s in cycle if "quantile" in s.labels},
                         {"0.5", "0.95", "0.99"})
        self.assertTrue(any(s.name.endswith("_count") and s.value > 0 for s in cycle))
        caches = {s.labels["cache"] for s in families["bot_cache_hits"].samples}
        self.assertIn("scan", caches)
        self.trader.monitor.record("run_cycle", 0.3)      # a cycle timed after the start
        families = {f.name: f for f in text_string_to_metric_families(
            self.api.call("GET", "/metrics")[2].decode())}
        self.assertEqual(families["bot_cycle_seconds"].type, "histogram")
        samples = families["bot_cycle_seconds"].samples
        buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
        self.assertGreaterEqual(buckets["0.5"] - buckets["0.25"], 1)
        self.assertEqual(buckets["+Inf"], next(s.value for s in samples if s.name.endswith("_count")))

    def test_every_auth_failure_is_a_json_401(self):
        for path in ("/api/v1/status", "/metrics", "/api/v1/equity.png"):
            cases = {"no token": dict(token=None),
                     "wrong token": dict(token="nope"),
                     "token in another header": dict(token=None, headers={"X-Token": TOKEN}),
                     "another scheme": dict(token=None,
                                            headers={"Authorization": f"Token {TOKEN}"}),
                     "wrong cookie": dict(token=None, headers={"Cookie": "bot_token=nope"})}
            for what, kw in cases.items():
                status, headers, raw = self.api.call("GET", path, **kw)
                self.assertEqual(status, 401, (path, what))
                self.assertIn("error", json.loads(raw), what)
                self.answers.append(raw + json.dumps(headers).encode())
        # the right token in the query string of an API call: refused, even with it right
        for kw in (dict(token=None), dict()):
            status, _, raw = self.api.call("GET", f"/api/v1/status?token={TOKEN}", **kw)
            self.assertEqual(status, 401)
            self.assertIn("never in the URL", json.loads(raw)["error"])
        status, answer = self.api.json("POST", "/api/v1/pause", token=None)
        self.assertEqual(status, 401)
        self.assertFalse(self.trader.facts["paused"], "an unauthorized command does nothing")

    def test_the_dashboard_token_becomes_an_httponly_cookie(self):
        status, headers, raw = self.api.call("GET", "/", token=None)
        self.assertEqual(status, 200)
        self.assertIn(b'id="equity"', raw)
        self.assertNotIn(TOKEN.encode(), raw)
        status, headers, _ = self.api.call("GET", f"/?token={TOKEN}", token=None)
        self.assertEqual(status, 303)
        self.assertEqual(headers["Location"], "/")
        cookie = headers["Set-Cookie"]
        for part in ("HttpOnly", "SameSite=Strict", "Path=/"):
            self.assertIn(part, cookie)
        jar = {"Cookie": cookie.split(";")[0]}
        status, answer = self.api.json("GET", "/api/v1/status", token=None, headers=jar)
        self.assertEqual(status, 200)
        # a command by cookie from another site's page is refused
        status, answer = self.api.json("POST", "/api/v1/resume", token=None,
                                       headers=jar | {"Origin": "http://evil.example"})
        self.assertEqual(status, 403, answer)
        status, _, _ = self.api.call("GET", "/?token=wrong", token=None)
        self.assertEqual(status, 401)
        # the login form: JSON and form-encoded
        status, headers, raw = self.api.call("POST", "/login", {"token": TOKEN}, token=None)
        self.assertEqual(status, 200)
        self.assertIn("HttpOnly", headers["Set-Cookie"])
        self.assertNotIn(TOKEN.encode(), raw)
        status, headers, _ = self.api.call(
            "POST", "/login", f"token={TOKEN}".encode(), token=None,
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((status, headers["Location"]), (303, "/"))
        status, answer = self.api.json("POST", "/login", {"token": "nope"}, token=None)
        self.assertEqual(status, 401)
        status, _, js = self.api.call("GET", "/dashboard.js", token=None)
        self.assertEqual(status, 200)
        self.assertIn(b"force-exit", js)

    def test_errors_are_json_with_the_right_status(self):
        cases = [("GET", "/api/v1/nothing", None, 404), ("GET", "/nowhere", None, 404),
                 ("POST", "/api/v1/status", None, 405), ("GET", "/api/v1/pause", None, 405),
                 ("DELETE", "/api/v1/positions", None, 405), ("GET", "/metrics/x", None, 404),
                 ("POST", "/api/v1/forceexit", {}, 400),
                 ("POST", "/api/v1/forceexit", {"symbol": 3}, 400),
                 ("POST", "/api/v1/forceexit", b"not json", 400),
                 ("POST", "/api/v1/forceexit", [1], 400),
                 ("POST", "/api/v1/forceexit", {"symbol": "NOPE/USDT"}, 404),
                 ("GET", "/api/v1/equity?limit=-1", None, 400)]
        for method, path, body, expected in cases:
            status, headers, raw = self.api.call(method, path, body)
            self.assertEqual(status, expected, (method, path, body, raw[:200]))
            self.assertEqual(headers["Content-Type"], "application/json")
            self.assertIsInstance(json.loads(raw)["error"], str)
        status, headers, _ = self.api.call("POST", "/api/v1/status")
        self.assertEqual(headers["Allow"], "GET, HEAD")

    def test_an_unexpected_error_is_a_500_without_a_traceback(self):
        original = self.server.read

        def broken(name, query):
            raise RuntimeError("boom in /tmp/secret/path")
        self.server.read = broken
        try:
            with self.assertLogs("api_server", "ERROR") as logs:
                status, headers, raw = self.api.call("GET", "/api/v1/status")
        finally:
            self.server.read = original
        self.assertEqual(status, 500)
        self.assertNotIn(b"boom", raw)
        self.assertNotIn(b"Traceback", raw)
        self.assertIn("error", json.loads(raw))
        self.assertIn("Traceback", "\n".join(logs.output), "the log has it")

    @classmethod
    def tearDownClass(cls):
        # No token in any answer (headers included) nor in any log line.
        leaked = [a[:200] for a in cls.answers if TOKEN.encode() in a]
        assert not leaked, f"the token is in an answer: {leaked}"
        logged = [line for line in cls.logs.lines if TOKEN in line]
        assert not logged, f"the token is in the log: {logged}"
        assert any("GET /api/v1/status 200" in line for line in cls.logs.lines), \
            "the request log shows the paths"
        super().tearDownClass()


class TestForceExit(ApiCase):
    @classmethod
    def setUpClass(cls):
        cls.trader = open_trader(cls)
        cls.thread = run_loop(cls, cls.trader)
        cls.api = Client(serve(cls, cls.trader))

    def test_force_exit_one_then_all(self):
        held = [p["symbol"] for p in self.api.get("/api/v1/positions")["positions"]]
        self.assertTrue(held)
        first = held[0]
        status, answer = self.api.json("POST", "/api/v1/forceexit", {"symbol": first})
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer["closed"], [first])
        symbols = {p["symbol"] for p in self.api.get("/api/v1/positions")["positions"]}
        self.assertNotIn(first, symbols)
        trades = self.api.get("/api/v1/trades?per_page=5")["trades"]
        self.assertEqual((trades[0]["symbol"], trades[0]["exit_reason"]), (first, "force_exit"))
        status, answer = self.api.json("POST", "/api/v1/forceexit", {"symbol": first})
        self.assertEqual(status, 404, answer)

        status, answer = self.api.json("POST", "/api/v1/forceexit", {"symbol": "all"})
        self.assertEqual(status, 200, answer)
        self.assertEqual(sorted(answer["closed"]), sorted(symbols))
        self.assertEqual(self.api.get("/api/v1/positions")["positions"], [])
        reasons = {t["symbol"]: t["exit_reason"]
                   for t in self.api.get("/api/v1/trades?per_page=50")["trades"]
                   if t["exit_reason"] == "force_exit"}
        self.assertEqual(set(reasons), set(held))


class TestStopAndTimeouts(ApiCase):
    @classmethod
    def setUpClass(cls):
        cls.trader = open_trader(cls, positions=False)
        cls.api = Client(serve(cls, cls.trader, command_timeout=0.5))

    def test_a_loop_that_does_not_answer_is_a_504_and_stop_ends_the_loop(self):
        status, answer = self.api.json("POST", "/api/v1/pause")   # no loop running yet
        self.assertEqual(status, 504, answer)
        self.assertIn("did not answer", answer["error"])
        self.trader.commands.take()                              # forget that one
        thread = run_loop(self, self.trader)
        self.server_timeout_is(15)
        status, answer = self.api.json("POST", "/api/v1/stop")
        self.assertEqual((status, answer["stopping"]), (200, True), answer)
        thread.join(timeout=20)
        self.assertFalse(thread.is_alive(), "stop ends the loop")
        status, answer = self.api.json("POST", "/api/v1/resume")
        self.assertEqual(status, 503, answer)
        self.assertEqual(self.api.get("/api/v1/status")["mode"], "paper", "reads go on")

    def server_timeout_is(self, seconds):
        self.api.server.command_timeout = seconds


class TestListening(unittest.TestCase):
    def test_no_token_listens_on_loopback_only(self):
        trader = type("T", (), {"monitor": None})()
        for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
            with self.assertRaises(ValueError) as raised:
                ApiServer(trader, host, 0, "")
            message = str(raised.exception)
            self.assertNotIn("\n", message)
            self.assertIn("refuses to listen on anything but loopback without a token", message)

    def test_loopback_without_a_token_is_open_and_with_one_needs_it(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        trader = Trader(trader_config(tmp.name, MARKET_DATA="rest"),
                        reporter=Reporter(lambda _: None))
        self.addCleanup(trader.close)
        trader.publish_facts()
        with ApiServer(trader, "127.0.0.1", 0, "") as server:
            self.assertEqual(Client(server, None).get("/api/v1/status")["cycle"], 0)
        with ApiServer(trader, "localhost", 0, TOKEN) as server:
            status, _ = Client(server, None).json("GET", "/api/v1/status")
            self.assertEqual(status, 401)


if __name__ == "__main__":
    unittest.main()

"""exchange.py against the simulated exchange: real ccxt over 127.0.0.1, real threads."""
from __future__ import annotations

import email.utils
import logging
import threading
import time
import types
import unittest

import ccxt
import numpy as np

import exchange
from brokers import LiveBroker
from clock import ManualClock
from domain import ExchangeError, OrderNotFound, OrderRejected
from exchange import ExchangeClient, RateLimiter, create_client, sim_client
from market_rules import TICK_SIZE, MarketRules
from sim_exchange import SimExchangeServer
from sim_market import SimMarket

PAIRS = 4
FAST = dict(attempts=5, base_delay=0.01, max_delay=0.05)


def sim_config(**overrides) -> types.SimpleNamespace:
    values = dict(exchange="simulated", api_key="", api_secret="", dry_run=True,
                  starting_balance=10_000.0, sim_speed=1.0, sim_seed=3, sim_pairs=PAIRS, sim_start="",
                  quote_currency="USDT", timeframe="5m", sim_url="")
    values.update(overrides)
    return types.SimpleNamespace(**values)


class SendTimes:
    """Records when each HTTP request actually leaves the client (after the throttle)."""

    def __init__(self, exchange):
        self.times: list[float] = []
        self._lock = threading.Lock()
        original = exchange.fetch

        def fetch(*args, **kwargs):
            with self._lock:
                self.times.append(time.monotonic())
            return original(*args, **kwargs)

        exchange.fetch = fetch


class StopFaultsOnRetry(logging.Handler):
    """Turns the server's faults off when the client logs that it is retrying."""

    def __init__(self, server):
        super().__init__(logging.WARNING)
        self.server = server
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())
        self.server.set_faults()


def shared_client() -> ExchangeClient:
    return create_client(sim_config(), timeout_ms=5000, **FAST)


class PureHelpersTest(unittest.TestCase):
    def test_domain_errors_are_the_ones_exchange_raises(self):
        self.assertIs(exchange.ExchangeError, ExchangeError)
        self.assertTrue(issubclass(OrderRejected, ExchangeError))
        self.assertTrue(issubclass(OrderNotFound, ExchangeError))

    def test_retry_after_in_seconds_or_as_an_http_date(self):
        parse = exchange._retry_after_seconds
        self.assertIsNone(parse(None))
        self.assertIsNone(parse({}))
        self.assertEqual(parse({"Retry-After": "7"}), 7.0)
        self.assertEqual(parse({"retry-after": "1.5"}), 1.5)
        self.assertEqual(parse({"Retry-After": "-3"}), 0.0)
        later = email.utils.formatdate(time.time() + 30, usegmt=True)
        self.assertAlmostEqual(parse({"Retry-After": later}), 30.0, delta=2.0)
        self.assertIsNone(parse({"Retry-After": "soon"}))

    def test_rate_limiter_reserves_consecutive_slots_and_holds_off(self):
        limiter = RateLimiter(lambda: 20.0)   # 20 ms per unit of cost
        start = time.monotonic()
        for cost in (1, 1, 2, 1):
            limiter.throttle(cost)
        # four requests took slots at 0, 20, 40 (cost 2) and 80 ms
        self.assertGreaterEqual(time.monotonic() - start, 0.080 - 1e-3)
        limiter.hold_off(0.1)
        before = time.monotonic()
        limiter.throttle()
        self.assertGreaterEqual(time.monotonic() - before, 0.1 - 1e-3)


class CreateClientTest(unittest.TestCase):
    def test_an_exchange_id_builds_a_configured_ccxt_client_without_touching_the_network(self):
        client = create_client(sim_config(exchange="kraken", api_key="k" * 8, api_secret="s" * 8),
                               timeout_ms=7000)
        ex = client.ccxt
        self.assertIsInstance(ex, ccxt.kraken)
        self.assertTrue(ex.enableRateLimit)
        self.assertEqual(ex.throttle, client.limiter.throttle)
        self.assertEqual(ex.timeout, 7000)
        self.assertTrue(ex.options["adjustForTimeDifference"])
        self.assertEqual((ex.apiKey, ex.secret), ("k" * 8, "s" * 8))
        self.assertIsNone(client.sim)
        self.assertLess(abs(client.clock() - time.time()), 60)
        client.close()

    def test_a_client_can_be_given_its_clock(self):
        clock = ManualClock(1_000.0)
        client = ExchangeClient(ccxt.kraken(), clock=clock)
        self.assertEqual(client.clock(), 1_000.0)
        clock.advance(5)
        self.assertEqual(client.clock(), 1_005.0)

    def test_simulated_runs_an_in_process_sim_with_session_keys_and_its_clock(self):
        with create_client(sim_config(sim_speed=600.0)) as client:
            server = client.sim_server
            self.assertTrue(server.url.startswith("http://127.0.0.1:"))
            self.assertEqual(client.ccxt.apiKey, server.api_key)
            self.assertNotEqual(client.ccxt.apiKey, "sim-key")
            self.assertEqual(client.quote, "USDT")
            self.assertAlmostEqual(client.clock(), client.sim.now(), delta=600.0)
            self.assertAlmostEqual(LiveBroker(client).balances()['free']['USDT'], 10_000.0)
        self.assertRaises(ccxt.NetworkError, client.ccxt.fetch_time)  # stopped with the client


class MarketDataTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = shared_client()
        cls.markets = cls.client.load_markets()
        cls.symbol = cls.client.sim.symbols[0]

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def test_markets_have_precision_limits_and_fees(self):
        self.assertEqual(sorted(self.client.sim.symbols), sorted(self.markets))
        for symbol, m in self.markets.items():
            self.assertEqual(m["quote"], "USDT")
            self.assertTrue(m["spot"])
            self.assertGreater(m["precision"]["amount"], 0)
            self.assertGreater(m["precision"]["price"], 0)
            self.assertGreater(m["limits"]["amount"]["min"], 0)
            self.assertGreater(m["limits"]["cost"]["min"], 0)
            self.assertGreater(m["taker"], 0)
            self.assertGreater(m["maker"], 0)

    def test_fetch_ohlcv_honours_since_and_limit(self):
        tf_ms = 5 * 60_000
        now_ms = int(self.client.clock() * 1000)
        since = (now_ms // tf_ms - 40) * tf_ms
        first = self.client.fetch_ohlcv(self.symbol, "5m", since=since, limit=10)
        self.assertEqual(len(first), 10)
        self.assertEqual(first[0][0], since)
        self.assertEqual({b[0] - a[0] for a, b in zip(first, first[1:])}, {tf_ms})
        second = self.client.fetch_ohlcv(self.symbol, "5m", since=first[-1][0] + tf_ms, limit=10)
        self.assertEqual(second[0][0], first[-1][0] + tf_ms)
        for ts, o, h, l, c, v in first + second:
            self.assertLessEqual(l, min(o, c))
            self.assertGreaterEqual(h, max(o, c))
            self.assertGreaterEqual(v, 0)
        latest = self.client.fetch_ohlcv(self.symbol, "5m", limit=3)
        self.assertEqual(len(latest), 3)
        self.assertLessEqual(latest[-1][0], now_ms + 1000)

    def test_tickers_and_order_book(self):
        tickers = self.client.fetch_tickers()
        self.assertEqual(set(self.markets), set(tickers))
        book = self.client.fetch_order_book(self.symbol, 100)
        bids, asks = np.array(book["bids"]), np.array(book["asks"])
        self.assertGreater(len(bids), 10)
        self.assertLess(bids[0, 0], asks[0, 0])
        self.assertTrue(np.all(np.diff(bids[:, 0]) < 0) and np.all(np.diff(asks[:, 0]) > 0))

    def test_rules_are_the_markets_precision_limits_and_fees(self):
        for spec in self.client.sim.specs:
            rules = self.client.rules(spec.symbol)
            self.assertEqual(rules, MarketRules.from_ccxt(self.markets[spec.symbol], TICK_SIZE))
            # what the simulated exchange's exchangeInfo filters say, through ccxt's parser
            self.assertEqual((rules.step, rules.tick), (spec.step, spec.tick))
            self.assertEqual((rules.min_amount, rules.max_amount), (spec.step, spec.max_qty))
            self.assertEqual((rules.min_price, rules.max_price), (spec.tick, spec.max_price))
            self.assertEqual((rules.min_notional, rules.max_notional), (spec.min_notional, 9e6))
            self.assertEqual((rules.taker, rules.maker), (0.001, 0.001))

    def test_rules_are_cached_and_cost_no_request(self):
        self.client.rules(self.symbol)
        self.client.sim_server.reset_counters()
        self.assertIs(self.client.rules(self.symbol), self.client.rules(self.symbol))
        self.client.rules(self.client.sim.symbols[1])
        self.assertEqual(self.client.sim_server.request_count(), 0)

    def test_rules_load_the_markets_on_first_use(self):
        with shared_client() as client:
            client.sim_server.reset_counters()
            rules = client.rules(client.sim.symbols[2])
            self.assertEqual(rules.symbol, client.sim.symbols[2])
            self.assertEqual(client.sim_server.request_count("/api/v3/exchangeInfo"), 1)

    def test_rules_of_an_unknown_symbol(self):
        with self.assertRaisesRegex(ExchangeError, "unknown symbol NOPE/USDT"):
            self.client.rules("NOPE/USDT")


class FailureModesTest(unittest.TestCase):
    def setUp(self):
        self.client = create_client(sim_config(dry_run=False), timeout_ms=5000, **FAST)
        self.addCleanup(self.client.close)
        self.server = self.client.sim_server
        self.client.load_markets()
        self.symbol = self.client.sim.symbols[0]

    def test_wrong_secret_fails_once_with_a_clear_authentication_error(self):
        real_secret = self.client.ccxt.secret
        self.client.ccxt.secret = "not-the-secret"
        self.server.reset_counters()
        with self.assertRaises(ExchangeError) as cm:
            self.client.call("fetch_balance")
        message = str(cm.exception)
        self.assertNotIsInstance(cm.exception, OrderRejected)
        self.assertIn("authentication", message)
        self.assertNotIn("\n", message)
        self.assertNotIn(real_secret, message)
        self.assertNotIn("signature=", message)
        self.assertEqual(self.server.request_count(), 1)

    def test_an_injected_hang_is_cut_off_by_the_timeout_and_retried(self):
        self.client.ccxt.timeout = 300
        handler = StopFaultsOnRetry(self.server)
        logger = logging.getLogger("exchange")
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        self.server.set_faults(hang_rate=1.0, hang_seconds=3.0)
        self.server.reset_counters()
        book = self.client.fetch_order_book(self.symbol, 5)
        self.assertTrue(book["bids"] and book["asks"])
        self.assertEqual(len(handler.messages), 1)
        self.assertIn("RequestTimeout", handler.messages[0])
        self.assertEqual(self.server.request_count("/api/v3/depth"), 2)

    def test_plain_create_order_is_not_retried_when_its_fate_is_unknown(self):
        self.server.set_faults(error_rate=1.0, after_processing=True)
        self.server.reset_counters()
        with self.assertRaisesRegex(ExchangeError, "may or may not have been placed"):
            self.client.call("create_order", self.symbol, "market", "buy", self.amount())
        self.assertEqual(self.server.request_count("/api/v3/order"), 1)

    def amount(self) -> float:
        market = self.client.market(self.symbol)
        price = self.client.sim.last_price(market["id"])
        return float(self.client.ccxt.amount_to_precision(
            self.symbol, max(market["limits"]["amount"]["min"],
                             3 * market["limits"]["cost"]["min"] / price)))

    def test_refusals_are_translated_to_order_rejected_in_one_line(self):
        price = self.client.sim.last_price(self.client.market(self.symbol)["id"])
        cases = [
            ((self.symbol, "market", "buy", 2 * 10_000.0 / price), "insufficient funds"),
            ((self.symbol, "market", "buy", self.amount() / 10), "order refused"),  # NOTIONAL
        ]
        for args, fragment in cases:
            self.server.reset_counters()
            with self.assertRaises(OrderRejected) as cm:
                self.client.call("create_order", *args)
            self.assertIn(f"binance create_order: {fragment}", str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))
            self.assertEqual(self.server.request_count("/api/v3/order"), 1, "not retried")

    def test_an_unknown_order_is_order_not_found(self):
        with self.assertRaises(OrderNotFound) as cm:
            self.client.call("fetch_order", "999999", self.symbol)
        self.assertNotIsInstance(cm.exception, OrderRejected)
        with self.assertRaises(OrderNotFound):
            self.client.call("fetch_order", None, self.symbol, {"origClientOrderId": "never-sent"})

    def test_an_unknown_symbol_is_named(self):
        with self.assertRaisesRegex(ExchangeError, "unknown symbol"):
            self.client.fetch_ticker("NOPE/USDT")
        with self.assertRaisesRegex(ExchangeError, "unknown symbol NOPE/USDT"):
            self.client.market("NOPE/USDT")

    def test_server_errors_are_retried_then_given_up_with_one_line(self):
        self.server.set_faults(error_rate=1.0)
        self.server.reset_counters()
        with self.assertRaises(ExchangeError) as cm, self.assertLogs("exchange", logging.WARNING) as logs:
            self.client.fetch_ticker(self.symbol)
        self.assertEqual(len([m for m in logs.output if "retrying" in m]), 1)  # one per burst
        self.assertIn("gave up after 5 attempts", str(cm.exception))
        self.assertNotIn("\n", str(cm.exception))
        self.assertEqual(self.server.request_count(), 5)
        self.server.set_faults()
        self.assertGreater(self.client.fetch_ticker(self.symbol)["last"], 0)


class RateLimitTest(unittest.TestCase):
    def test_threads_share_the_rate_budget(self):
        with shared_client() as client:
            client.load_markets()
            symbols = client.sim.symbols
            spacing = client.ccxt.rateLimit * client.ccxt.api["public"]["get"]["ticker/24hr"]["cost"] / 1000
            self.assertGreater(spacing, 0.005)
            sent = SendTimes(client.ccxt)
            client.sim_server.reset_counters()
            per_thread = 5

            def work(i: int) -> None:
                for _ in range(per_thread):
                    client.fetch_ticker(symbols[i % len(symbols)])

            threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            n = 8 * per_thread
            self.assertEqual(len(sent.times), n)
            self.assertEqual(client.sim_server.request_count(), n)
            # each request reserved its own slot (rateLimit * cost), so the k-th one to leave
            # left at least k slots after the start, however the threads were scheduled
            for k, t in enumerate(sorted(sent.times)):
                self.assertGreaterEqual(t - start, k * spacing - 1e-4, f"request {k} left too early")

    def test_a_429_storm_is_ridden_out_without_a_ban(self):
        market = SimMarket(pairs=2, seed=5, speed=1.0)
        with SimExchangeServer(market) as server:
            client = sim_client(server, market, "sim-key", "sim-secret", timeout_ms=5000,
                                attempts=6, base_delay=0.01, max_delay=0.05, max_retry_after=10)
            client.load_markets()
            client.ccxt.rateLimit = 1  # let the client outrun the server's budget
            # 10 weight per 1 s window (a ticker weighs 2); more than 3 refusals in a window
            # would get the client banned (418) for a minute
            server.set_rate_limit(10, window_s=1.0, ban_after=3, ban_seconds=60)
            server.reset_counters()
            symbol = market.symbols[0]
            calls = 12
            with self.assertLogs("exchange", logging.WARNING) as logs:
                for _ in range(calls):
                    self.assertGreater(client.fetch_ticker(symbol)["last"], 0)
            refused = server.request_count() - calls
            self.assertGreaterEqual(refused, 1)
            self.assertLessEqual(refused, 4)
            self.assertTrue(any("DDoSProtection" in m or "RateLimitExceeded" in m for m in logs.output))


if __name__ == "__main__":
    unittest.main()

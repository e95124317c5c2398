"""exchange.py against the simulated exchange: real ccxt over 127.0.0.1, real threads."""
from __future__ import annotations

import logging
import math
import threading
import time
import types
import unittest

import ccxt
import numpy as np

from exchange import (CLIENT_ORDER_ID_RE, ExchangeClient, ExchangeError, LiveBroker,
                      OrderRejected, PaperBroker, create_client, make_client_order_id,
                      sim_client, walk_book)
from sim_exchange import SimExchangeServer, SimMarket

PAIRS = 4
FAST = dict(attempts=5, base_delay=0.01, max_delay=0.05)


def sim_config(**overrides) -> types.SimpleNamespace:
    values = dict(exchange="simulated", api_key="", api_secret="", dry_run=True,
                  starting_balance=10_000.0, sim_speed=1.0, sim_seed=3, sim_pairs=PAIRS,
                  quote_currency="USDT", timeframe="5m")
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
    def test_walk_book_averages_levels_in_order(self):
        asks = np.array([[100.0, 1.0], [101.0, 2.0], [103.0, 5.0]])
        self.assertEqual(walk_book(asks, 0.5), (100.0, 0.5))
        price, filled = walk_book(asks, 2.0)
        self.assertAlmostEqual(price, (100.0 + 101.0) / 2)
        self.assertEqual(filled, 2.0)
        price, filled = walk_book(asks.tolist(), 4.0)
        self.assertAlmostEqual(price, (100 + 2 * 101 + 103) / 4)

    def test_walk_book_flags_a_thin_book(self):
        price, filled = walk_book([[100.0, 1.0], [101.0, 1.0]], 5.0)
        self.assertEqual(filled, 2.0)
        self.assertAlmostEqual(price, 100.5)
        price, filled = walk_book(np.empty((0, 2)), 1.0)
        self.assertEqual(filled, 0.0)
        self.assertTrue(math.isnan(price))

    def test_client_order_ids_are_deterministic_and_valid(self):
        a = make_client_order_id("tb", "BTC/USDT", 17)
        self.assertEqual(a, make_client_order_id("tb", "BTC/USDT", 17))
        self.assertNotEqual(a, make_client_order_id("tb", "BTC/USDT", 18))
        self.assertNotEqual(a, make_client_order_id("tb", "ETH/USDT", 17))
        self.assertRegex(a, CLIENT_ORDER_ID_RE)
        long_id = make_client_order_id("bot instance #1!", "VERYLONGTOKENNAME123/USDT", 10 ** 9)
        self.assertRegex(long_id, CLIENT_ORDER_ID_RE)
        self.assertLessEqual(len(long_id), 36)
        self.assertTrue(long_id.endswith(str(10 ** 9)))


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

    def test_simulated_runs_an_in_process_sim_with_session_keys_and_its_clock(self):
        with create_client(sim_config(sim_speed=600.0)) as client:
            server = client.sim_server
            self.assertTrue(server.url.startswith("http://127.0.0.1:"))
            self.assertEqual(client.ccxt.apiKey, server.api_key)
            self.assertNotEqual(client.ccxt.apiKey, "sim-key")
            self.assertEqual(client.quote, "USDT")
            self.assertAlmostEqual(client.clock(), client.sim.now(), delta=600.0)
            self.assertAlmostEqual(LiveBroker(client).cash, 10_000.0)
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

    def test_prepare_order_rounds_to_step_and_tick(self):
        m = self.markets[self.symbol]
        step, tick = m["precision"]["amount"], m["precision"]["price"]
        price = self.client.sim.last_price(m["id"])
        amount = max(m["limits"]["amount"]["min"], 2 * m["limits"]["cost"]["min"] / price)
        raw_amount = (math.floor(amount / step) + 3.7) * step
        got_amount, got_price = self.client.prepare_order(self.symbol, "buy", raw_amount,
                                                          price + 0.4 * tick)
        self.assertAlmostEqual(got_amount, (math.floor(amount / step) + 3) * step, delta=step * 1e-6)
        self.assertLessEqual(got_amount, raw_amount)
        self.assertAlmostEqual(got_price / tick, round(got_price / tick), places=6)
        self.assertAlmostEqual(got_price, price + 0.4 * tick, delta=tick * 0.5 + 1e-12)

    def test_prepare_order_rejects_below_minimum_amount_and_notional(self):
        m = self.markets[self.symbol]
        price = self.client.sim.last_price(m["id"])
        tiny = m["limits"]["amount"]["min"] / 10
        with self.assertRaises(OrderRejected) as cm:
            self.client.prepare_order(self.symbol, "buy", tiny, price)
        self.assertIn(self.symbol, str(cm.exception))
        self.assertIn("below minimum", str(cm.exception))
        min_cost = m["limits"]["cost"]["min"]
        # enough coins for the lot size, too little value for the NOTIONAL filter
        amount = max(m["limits"]["amount"]["min"], m["precision"]["amount"])
        cheap = min_cost / amount / 2
        with self.assertRaises(OrderRejected) as cm:
            self.client.prepare_order(self.symbol, "buy", amount, cheap)
        self.assertIn("notional", str(cm.exception))
        self.assertIn(f"{min_cost:.10g}", str(cm.exception))
        with self.assertRaises(OrderRejected):
            self.client.prepare_order(self.symbol, "hold", amount, price)


class PaperBrokerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = shared_client()
        cls.client.load_markets()
        cls.symbol = cls.client.sim.symbols[0]
        cls.market = cls.client.market(cls.symbol)
        cls.price = cls.client.sim.last_price(cls.market["id"])

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def min_amount(self) -> float:
        lim = self.market["limits"]
        return max(lim["amount"]["min"], 1.5 * lim["cost"]["min"] / self.price)

    def largest_amount(self) -> float:
        """The largest order the market's limits allow (amount and notional)."""
        lim = self.market["limits"]
        return 0.9 * min(lim["amount"]["max"], lim["cost"]["max"] / (self.price * 1.05))

    def test_size_costs_slippage_and_every_fill_pays_the_taker_fee(self):
        broker = PaperBroker(self.client, cash=1e12)
        small = broker.market_order(self.symbol, "buy", self.min_amount(), "t-small")
        large = broker.market_order(self.symbol, "buy", self.largest_amount(), "t-large")
        self.assertGreater(large.price, small.price)
        sold = broker.market_order(self.symbol, "sell", self.largest_amount(), "t-sell")
        self.assertLess(sold.price, small.price)
        for fill in (small, large, sold):
            self.assertAlmostEqual(fill.cost, fill.amount * fill.price, delta=fill.cost * 1e-9)
            self.assertAlmostEqual(fill.fee, fill.cost * self.market["taker"], delta=fill.fee * 1e-9)
            self.assertGreater(fill.fee, 0)
        spent = small.cost + small.fee + large.cost + large.fee - (sold.cost - sold.fee)
        self.assertAlmostEqual(broker.cash, 1e12 - spent, delta=1e-3)
        self.assertEqual(small.client_order_id, "t-small")

    def test_order_larger_than_the_book_is_refused(self):
        broker = PaperBroker(self.client, cash=1e15, book_depth=5)
        book = self.client.fetch_order_book(self.symbol, 5)
        depth = sum(q for _, q in book["asks"])
        self.assertLess(2 * depth, self.largest_amount())
        with self.assertRaisesRegex(OrderRejected, "too thin"):
            broker.market_order(self.symbol, "buy", 2 * depth, "t-thin")
        self.assertEqual(broker.cash, 1e15)

    def test_orders_beyond_the_market_limits_are_refused(self):
        with self.assertRaisesRegex(OrderRejected, "above maximum"):
            self.client.prepare_order(self.symbol, "buy", self.largest_amount() * 3, self.price)

    def test_insufficient_paper_cash_is_rejected(self):
        amount = self.min_amount()
        broker = PaperBroker(self.client, cash=amount * self.price * 0.5)
        before = broker.cash
        with self.assertRaisesRegex(OrderRejected, "insufficient paper cash"):
            broker.market_order(self.symbol, "buy", amount, "t-poor")
        self.assertEqual(broker.cash, before)
        with self.assertRaisesRegex(OrderRejected, "insufficient paper cash"):
            broker.limit_order(self.symbol, "buy", amount, self.price, "t-poor-limit")
        self.assertEqual(broker.cash, before)

    def test_limit_orders_fill_when_crossed_at_the_limit_with_maker_fee(self):
        broker = PaperBroker(self.client, cash=10_000.0)
        amount = self.min_amount()
        buy = broker.limit_order(self.symbol, "buy", amount, self.price * 0.98, "t-lb")
        sell = broker.limit_order(self.symbol, "sell", amount, self.price * 1.02, "t-ls")
        reserved = 10_000.0 - broker.cash
        self.assertAlmostEqual(reserved, buy.amount * buy.price * (1 + self.market["maker"]))
        self.assertEqual(broker.poll_limit_orders({self.symbol: self.price}), [])
        self.assertEqual(broker.poll_limit_orders({self.symbol: buy.price}), [])  # touch, no cross
        fills = broker.poll_limit_orders({self.symbol: buy.price * 0.999})
        self.assertEqual([f.client_order_id for f in fills], ["t-lb"])
        fill = fills[0]
        self.assertEqual(fill.price, buy.price)
        self.assertAlmostEqual(fill.fee, fill.cost * self.market["maker"])
        self.assertAlmostEqual(broker.cash, 10_000.0 - fill.cost - fill.fee)
        fills = broker.poll_limit_orders({self.symbol: sell.price * 1.001})
        self.assertEqual([f.side for f in fills], ["sell"])
        self.assertEqual(broker.open_orders, [])
        self.assertAlmostEqual(broker.cash, 10_000.0 - fill.cost - fill.fee + fills[0].cost - fills[0].fee)

    def test_cancel_returns_reserved_cash(self):
        broker = PaperBroker(self.client, cash=10_000.0)
        order = broker.limit_order(self.symbol, "buy", self.min_amount(), self.price * 0.9, "t-c")
        self.assertLess(broker.cash, 10_000.0)
        self.assertTrue(broker.cancel_order(order.order_id))
        self.assertFalse(broker.cancel_order(order.order_id))
        self.assertAlmostEqual(broker.cash, 10_000.0)
        self.assertEqual(broker.poll_limit_orders({self.symbol: 0.0001}), [])


class LiveBrokerTest(unittest.TestCase):
    def setUp(self):
        self.client = create_client(sim_config(dry_run=False), timeout_ms=5000, **FAST)
        self.addCleanup(self.client.close)
        self.server = self.client.sim_server
        self.symbol = self.client.sim.symbols[1]
        self.market = self.client.market(self.symbol)
        self.broker = LiveBroker(self.client, quote="USDT")

    def amount(self) -> float:
        lim = self.market["limits"]
        price = self.client.sim.last_price(self.market["id"])
        return max(lim["amount"]["min"], 3 * lim["cost"]["min"] / price)

    def stop_faults_on_retry(self) -> StopFaultsOnRetry:
        handler = StopFaultsOnRetry(self.server)
        logger = logging.getLogger("exchange")
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        return handler

    def test_signed_buy_and_sell_move_the_sim_balances_by_cost_and_fee(self):
        base, quote = self.market["base"], self.market["quote"]
        start_quote = self.server.balances[quote]
        self.assertAlmostEqual(self.broker.cash, start_quote)
        buy = self.broker.market_order(self.symbol, "buy", self.amount(), "t-buy-1")
        self.assertEqual(buy.client_order_id, "t-buy-1")
        # Binance takes a buy's fee in the coin bought: amount is what the account holds
        self.assertAlmostEqual(buy.fee, (buy.cost + buy.fee) * self.market["taker"], delta=1e-6)
        self.assertAlmostEqual(self.server.balances[quote], start_quote - buy.cost - buy.fee, delta=1e-6)
        self.assertAlmostEqual(self.server.balances[base], buy.amount, delta=1e-8)
        sell = self.broker.market_order(self.symbol, "sell", buy.amount, "t-sell-1")
        self.assertAlmostEqual(sell.fee, sell.cost * self.market["taker"], delta=1e-6)
        self.assertLessEqual(sell.amount, buy.amount)  # truncated to the lot size
        self.assertAlmostEqual(self.server.balances[quote],
                               start_quote - buy.cost - buy.fee + sell.cost - sell.fee, delta=1e-6)
        self.assertAlmostEqual(self.server.balances[base], buy.amount - sell.amount, delta=1e-8)
        self.assertAlmostEqual(self.broker.cash, self.server.balances[quote])

    def test_a_lost_answer_after_the_order_reached_the_sim_does_not_place_it_twice(self):
        self.client.ccxt.timeout = 400
        real_create = self.client.ccxt.create_order
        posts = []

        def create_and_lose_the_answer(*args, **kwargs):
            posts.append(args)  # the sim places the order, then hangs up without answering
            self.server.set_faults(hang_rate=1.0, hang_seconds=2.0, after_processing=True)
            return real_create(*args, **kwargs)

        self.client.ccxt.create_order = create_and_lose_the_answer
        handler = self.stop_faults_on_retry()
        before = self.server.balances[self.market["quote"]]
        self.server.reset_counters()
        fill = self.broker.market_order(self.symbol, "buy", self.amount(), "t-dup-1")
        self.assertEqual(len(posts), 1)
        self.assertEqual(len(handler.messages), 1)
        self.assertIn("RequestTimeout", handler.messages[0])
        self.assertEqual(self.server.request_count("/api/v3/order"), 2)  # one POST, one lookup
        trades = self.client.call("fetch_my_trades", self.symbol)
        self.assertEqual({t["order"] for t in trades}, {fill.order_id})
        self.assertAlmostEqual(self.server.balances[self.market["quote"]],
                               before - fill.cost - fill.fee, delta=1e-6)
        self.assertEqual(self.broker.find_order(self.symbol, "t-dup-1"), fill)
        self.assertIsNone(self.broker.find_order(self.symbol, "t-never-sent"))

    def test_insufficient_balance_is_refused_at_once(self):
        price = self.client.sim.last_price(self.market["id"])
        amount = 1.5 * self.server.balances["USDT"] / price
        self.server.reset_counters()
        with self.assertRaisesRegex(OrderRejected, "insufficient funds"):
            self.broker.market_order(self.symbol, "buy", amount, "t-poor-1")
        self.assertEqual(self.server.request_count("/api/v3/order"), 1)

    def test_plain_create_order_is_not_retried_when_its_fate_is_unknown(self):
        self.server.set_faults(error_rate=1.0, after_processing=True)
        self.server.reset_counters()
        with self.assertRaisesRegex(ExchangeError, "may or may not have been placed"):
            self.client.call("create_order", self.symbol, "market", "buy", self.amount())
        self.assertEqual(self.server.request_count("/api/v3/order"), 1)

    def test_resting_limit_order_fills_when_the_market_crosses_it(self):
        price = self.client.sim.last_price(self.market["id"])
        order = self.broker.limit_order(self.symbol, "buy", self.amount(), price * 0.999, "t-lim-1")
        self.assertEqual(self.broker.poll_limit_orders(), [])
        self.assertGreater(self.server.locked[self.market["quote"]], 0)
        self.client.sim.advance(6 * 3600)  # six hours of market: the price dips below the limit
        fills = self.broker.poll_limit_orders()
        self.assertEqual([f.client_order_id for f in fills], ["t-lim-1"])
        self.assertEqual(fills[0].price, order.price)
        self.assertAlmostEqual(fills[0].fee, order.amount * order.price * self.market["maker"],
                               delta=1e-6)
        self.assertEqual(self.broker.open_orders, [])
        self.assertAlmostEqual(self.server.balances[self.market["base"]], fills[0].amount, delta=1e-8)


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

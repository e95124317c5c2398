"""brokers.py: the paper and live brokers on the simulated exchange through real ccxt over
127.0.0.1, and the backtest broker on the simulated exchange's book model."""
from __future__ import annotations

import logging
import math
import types
import unittest

import numpy as np

from brokers import (BacktestBroker, LiveBroker, PaperBroker, Quote, book_fill, check_funds,
                     walk_book)
from domain import EntryIntent, Fill, OrderRejected, Position
from exchange import create_client
from ledger import Ledger
from market_rules import MarketRules
from sim_market import synthetic_order_book

PAIRS = 4
FAST = dict(attempts=5, base_delay=0.01, max_delay=0.05)


def sim_config(**overrides) -> types.SimpleNamespace:
    values = dict(exchange="simulated", api_key="", api_secret="", dry_run=True,
                  starting_balance=10_000.0, sim_speed=0.0, sim_seed=3, sim_pairs=PAIRS, sim_start="",
                  quote_currency="USDT", timeframe="5m", sim_url="")
    values.update(overrides)
    return types.SimpleNamespace(**values)


def position(symbol: str, amount: float, price: float = 100.0) -> Position:
    return Position(symbol, amount, price, 0, price * 0.9, price * 1.1, entry_fee=0.0)


def entry(symbol: str, price: float) -> EntryIntent:
    return EntryIntent(symbol, price, 0.0, price * 0.95, price * 1.1, 1.0, None, None, "rule")


class StopFaultsOnRetry(logging.Handler):
    """Turns the server's faults off when the client logs that it is retrying."""

    def __init__(self, server):
        super().__init__(logging.WARNING)
        self.server = server
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())
        self.server.set_faults()


# --------------------------------------------------------------------------------------
# the pure parts
# --------------------------------------------------------------------------------------
class WalkBookTest(unittest.TestCase):
    def test_averages_levels_in_order(self):
        asks = np.array([[100.0, 1.0], [101.0, 2.0], [103.0, 5.0]])
        self.assertEqual(walk_book(asks, 0.5), (100.0, 0.5))
        price, filled = walk_book(asks, 2.0)
        self.assertAlmostEqual(price, (100.0 + 101.0) / 2)
        self.assertEqual(filled, 2.0)
        price, filled = walk_book(asks.tolist(), 4.0)
        self.assertAlmostEqual(price, (100 + 2 * 101 + 103) / 4)
        self.assertEqual(filled, 4.0)

    def test_flags_a_thin_book(self):
        price, filled = walk_book([[100.0, 1.0], [101.0, 1.0]], 5.0)
        self.assertEqual(filled, 2.0)
        self.assertAlmostEqual(price, 100.5)
        price, filled = walk_book(np.empty((0, 2)), 1.0)
        self.assertEqual(filled, 0.0)
        self.assertTrue(math.isnan(price))
        self.assertTrue(math.isnan(walk_book([[100.0, 1.0]], 0.0)[0]))
        self.assertEqual(walk_book([[100.0, 0.0], [101.0, -1.0]], 1.0)[1], 0.0)

    def test_an_exactly_full_book_fills_without_float_dust(self):
        levels = [[1.0, 0.1]] * 3
        self.assertEqual(walk_book(levels, 0.3)[1], 0.3)   # 0.1 + 0.1 + 0.1 != 0.3


class BookFillAndFundsTest(unittest.TestCase):
    rules = MarketRules("X/USDT", 0.01, 0.01, taker=0.002)

    def test_book_fill_pays_the_markets_taker_fee(self):
        fill = book_fill(self.rules, "buy", 3.0, [[10.0, 1.0], [11.0, 5.0]], 77, "o-1", "c-1")
        self.assertEqual(fill, Fill("X/USDT", "buy", 3.0, 32.0 / 3, 32.0, 32.0 * 0.002, 77,
                                    "o-1", "c-1"))

    def test_book_fill_fills_what_a_thin_book_holds_and_refuses_less_than_the_minimum(self):
        fill = book_fill(self.rules, "sell", 3.0, [[10.0, 1.0]], 0, "o", "c")
        self.assertEqual((fill.amount, fill.price), (1.0, 10.0), "the part the book holds fills")
        self.assertAlmostEqual(fill.fee, 10.0 * self.rules.taker)
        with self.assertRaisesRegex(OrderRejected, r"X/USDT: order book too thin"):
            book_fill(self.rules, "sell", 3.0, [[10.0, 1e-9]], 0, "o", "c")

    def test_the_slippage_guard_takes_only_levels_near_the_best_price(self):
        levels = [[100.0, 1.0], [100.5, 1.0], [103.0, 10.0]]
        fill = book_fill(self.rules, "buy", 5.0, levels, 0, "o", "c", max_slippage=0.01)
        self.assertEqual(fill.amount, 2.0, "levels beyond 1 % of the best ask are not taken")
        self.assertAlmostEqual(fill.price, 100.25)
        unguarded = book_fill(self.rules, "buy", 5.0, levels, 0, "o", "c")
        self.assertEqual(unguarded.amount, 5.0)

    def test_check_funds(self):
        ledger = Ledger(100.0, [position("X/USDT", 2.0)])
        check_funds(ledger, Fill("X/USDT", "buy", 1.0, 99.0, 99.0, 1.0, 0, "o", "c"))  # exactly
        with self.assertRaisesRegex(OrderRejected, "insufficient cash: need 100.01, have 100.00"):
            check_funds(ledger, Fill("X/USDT", "buy", 1.0, 99.0, 99.0, 1.01, 0, "o", "c"))
        check_funds(ledger, Fill("X/USDT", "sell", 2.0, 1.0, 2.0, 0.0, 0, "o", "c"))
        check_funds(ledger, Fill("X/USDT", "sell", 2.0 * (1 + 1e-12), 1.0, 2.0, 0.0, 0, "o", "c"))
        with self.assertRaisesRegex(OrderRejected, "cannot sell 2.001, holding 2"):
            check_funds(ledger, Fill("X/USDT", "sell", 2.001, 1.0, 2.0, 0.0, 0, "o", "c"))
        with self.assertRaisesRegex(OrderRejected, "cannot sell 1, holding 0"):
            check_funds(ledger, Fill("Y/USDT", "sell", 1.0, 1.0, 1.0, 0.0, 0, "o", "c"))


# --------------------------------------------------------------------------------------
# paper: the live book of the simulated exchange, the ledger's money
# --------------------------------------------------------------------------------------
class PaperBrokerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = create_client(sim_config(), timeout_ms=5000, **FAST)  # market clock stopped
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

    def test_fills_walk_the_live_book_and_pay_the_markets_taker_fee(self):
        ledger = Ledger(1e12, [position(self.symbol, 1e9)])
        broker = PaperBroker(self.client, ledger)
        book = self.client.fetch_order_book(self.symbol, 100)
        small = broker.market_order(self.symbol, "buy", self.min_amount(), "t-small")
        large = broker.market_order(self.symbol, "buy", self.largest_amount(), "t-large")
        sold = broker.market_order(self.symbol, "sell", self.largest_amount(), "t-sell")
        self.assertGreater(large.price, small.price)           # size costs slippage
        self.assertLess(sold.price, small.price)
        for fill, levels in ((small, book["asks"]), (large, book["asks"]), (sold, book["bids"])):
            self.assertEqual(fill.price, walk_book(levels, fill.amount)[0])
            self.assertAlmostEqual(fill.cost, fill.amount * fill.price, delta=fill.cost * 1e-12)
            self.assertAlmostEqual(fill.fee, fill.cost * self.market["taker"], delta=fill.fee * 1e-12)
            self.assertGreater(fill.fee, 0)
            self.assertEqual(fill.timestamp_ms, self.client.sim.now_ms())
        self.assertEqual((small.symbol, small.side, small.client_order_id),
                         (self.symbol, "buy", "t-small"))
        self.assertEqual(len({small.order_id, large.order_id, sold.order_id}), 3)

    def test_the_fee_is_the_markets_own(self):
        client = create_client(sim_config(), timeout_ms=5000, **FAST)
        self.addCleanup(client.close)
        client.load_markets()
        client.ccxt.markets[self.symbol]["taker"] = 0.0025   # e.g. another fee tier
        fill = PaperBroker(client, Ledger(1e9)).market_order(self.symbol, "buy", self.min_amount(), "t")
        self.assertAlmostEqual(fill.fee, fill.cost * 0.0025, delta=fill.fee * 1e-12)

    def test_amounts_are_rounded_down_to_the_step(self):
        step = self.market["precision"]["amount"]
        n = math.floor(self.min_amount() / step) + 3
        fill = PaperBroker(self.client, Ledger(1e9)).market_order(
            self.symbol, "buy", (n + 0.7) * step, "t-round")
        self.assertAlmostEqual(fill.amount, n * step, delta=step * 1e-9)
        self.assertEqual(PaperBroker(self.client, Ledger(0)).round_order(
            self.symbol, "buy", (n + 0.7) * step, self.price)[0], fill.amount)

    def test_the_broker_moves_no_money(self):
        ledger = Ledger(10_000.0, [position(self.symbol, 1.0)])
        before = (ledger.cash, dict(ledger.positions))
        broker = PaperBroker(self.client, ledger)
        broker.market_order(self.symbol, "buy", self.min_amount(), "t-1")
        broker.market_order(self.symbol, "sell", 0.5, "t-2")
        self.assertEqual((ledger.cash, ledger.positions), before)
        self.assertIsNone(broker.lookup(self.symbol, "t-1").fill)

    def test_with_the_ledger_cash_ends_at_start_plus_the_trades_profit(self):
        ledger = Ledger(10_000.0)
        broker = PaperBroker(self.client, ledger)
        bought = broker.market_order(self.symbol, "buy", 3 * self.min_amount(), "t-in")
        ledger.open(bought, entry(self.symbol, self.price), "majors")
        self.assertAlmostEqual(ledger.cash, 10_000.0 - bought.cost - bought.fee)
        sold = broker.market_order(self.symbol, "sell", ledger.positions[self.symbol].amount, "t-out")
        trade, left = ledger.close(sold, "signal")
        self.assertIsNone(left)
        self.assertLess(trade.profit, 0)            # the spread and two fees, at one instant
        self.assertAlmostEqual(ledger.cash, 10_000.0 + trade.profit, delta=1e-9)

    def test_insufficient_ledger_cash_is_rejected(self):
        amount = self.min_amount()
        ledger = Ledger(amount * self.price * 0.5)
        with self.assertRaisesRegex(OrderRejected, "insufficient cash"):
            PaperBroker(self.client, ledger).market_order(self.symbol, "buy", amount, "t-poor")
        just_enough = PaperBroker(self.client, Ledger(1e9)).market_order(self.symbol, "buy", amount, "t")
        ledger = Ledger(just_enough.cost + just_enough.fee)
        self.assertEqual(PaperBroker(self.client, ledger).market_order(
            self.symbol, "buy", amount, "t").cost, just_enough.cost)
        ledger.cash -= 1e-6
        with self.assertRaisesRegex(OrderRejected, "insufficient cash"):
            PaperBroker(self.client, ledger).market_order(self.symbol, "buy", amount, "t")

    def test_selling_more_than_is_held_is_rejected(self):
        step = self.market["precision"]["amount"]
        held = math.ceil(self.min_amount() / step) * step
        broker = PaperBroker(self.client, Ledger(0.0, [position(self.symbol, held)]))
        self.assertAlmostEqual(broker.market_order(self.symbol, "sell", held, "t-all").amount, held)
        with self.assertRaisesRegex(OrderRejected, "cannot sell"):
            broker.market_order(self.symbol, "sell", held + 5 * step, "t-more")
        with self.assertRaisesRegex(OrderRejected, "cannot sell .*holding 0"):
            PaperBroker(self.client, Ledger(1e9)).market_order(self.symbol, "sell", held, "t-none")

    def test_order_larger_than_the_book_fills_what_the_book_holds(self):
        broker = PaperBroker(self.client, Ledger(1e15), book_depth=5)
        book = self.client.fetch_order_book(self.symbol, 5)
        depth = sum(q for _, q in book["asks"])
        self.assertLess(2 * depth, self.largest_amount())
        fill = broker.market_order(self.symbol, "buy", 2 * depth, "t-thin")
        self.assertAlmostEqual(fill.amount, self.client.rules(self.symbol).round_amount(depth))

    def test_orders_beyond_the_market_limits_are_refused(self):
        broker = PaperBroker(self.client, Ledger(1e15))
        with self.assertRaisesRegex(OrderRejected, "above maximum"):
            broker.market_order(self.symbol, "buy", self.largest_amount() * 3, "t-huge")
        with self.assertRaisesRegex(OrderRejected, "below minimum"):
            broker.market_order(self.symbol, "buy", self.market["limits"]["amount"]["min"] / 10,
                                "t-tiny")


# --------------------------------------------------------------------------------------
# live: signed orders on the simulated exchange
# --------------------------------------------------------------------------------------
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
        self.assertAlmostEqual(self.broker.balances()['free']['USDT'], start_quote)
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
        self.assertAlmostEqual(self.broker.balances()['free']['USDT'], self.server.balances[quote])

    def test_find_order_by_client_order_id_after_a_restart(self):
        fill = self.broker.market_order(self.symbol, "buy", self.amount(), "t-find-1")
        restarted = LiveBroker(self.client)       # a new broker knows only the id
        found = restarted.lookup(self.symbol, "t-find-1").fill
        self.assertEqual((found.order_id, found.side, found.client_order_id),
                         (fill.order_id, "buy", "t-find-1"))
        for field in ("amount", "price", "cost", "fee"):
            self.assertAlmostEqual(getattr(found, field), getattr(fill, field), delta=1e-9,
                                   msg=field)
        self.assertIsNone(restarted.lookup(self.symbol, "t-never-sent").fill)
        self.assertIsNone(restarted.lookup(self.client.sim.symbols[0], "t-find-1").fill)

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
        self.assertEqual(self.broker.lookup(self.symbol, "t-dup-1").fill, fill)
        self.assertIsNone(self.broker.lookup(self.symbol, "t-never-sent").fill)

    def test_insufficient_balance_is_refused_at_once(self):
        price = self.client.sim.last_price(self.market["id"])
        amount = 1.5 * self.server.balances["USDT"] / price
        self.server.reset_counters()
        with self.assertRaisesRegex(OrderRejected, "insufficient funds"):
            self.broker.market_order(self.symbol, "buy", amount, "t-poor-1")
        self.assertEqual(self.server.request_count("/api/v3/order"), 1)
        with self.assertRaisesRegex(OrderRejected, "insufficient funds"):
            self.broker.market_order(self.symbol, "sell", self.amount(), "t-unheld-1")

    def test_an_invalid_client_order_id_is_refused_before_anything_is_sent(self):
        self.server.reset_counters()
        with self.assertRaisesRegex(OrderRejected, "client order id 'not valid!' is not valid"):
            self.broker.market_order(self.symbol, "buy", self.amount(), "not valid!")
        self.assertEqual(self.server.request_count("/api/v3/order"), 0)

    def test_orders_are_rounded_and_checked_before_they_are_sent(self):
        self.server.reset_counters()
        with self.assertRaisesRegex(OrderRejected, "below minimum"):
            self.broker.market_order(self.symbol, "buy", self.market["limits"]["amount"]["min"] / 10,
                                     "t-tiny-1")
        self.assertEqual(self.server.request_count("/api/v3/order"), 0)
        step = self.market["precision"]["amount"]
        n = math.floor(self.amount() / step) + 2
        fill = self.broker.market_order(self.symbol, "buy", (n + 0.6) * step, "t-round-1")
        self.assertAlmostEqual(fill.amount + fill.fee / fill.price, n * step, delta=step * 1e-6)


# --------------------------------------------------------------------------------------
# backtest: the simulated exchange's book model at the replayed price
# --------------------------------------------------------------------------------------
class BacktestBrokerTest(unittest.TestCase):
    symbol = "SOL/USDT"

    def setUp(self):
        self.rules = MarketRules.for_price(self.symbol, 150.0)   # step 0.001, tick 0.001
        self.ledger = Ledger(100_000.0, [position(self.symbol, 10.0, 150.0)])
        self.broker = BacktestBroker({self.symbol: self.rules}, self.ledger)

    def book(self, price: float = 150.0):
        bids, asks = synthetic_order_book(price, 0.002, 5e7, self.rules.tick, self.rules.step, 100)
        return lambda side: asks if side == "buy" else bids

    def test_without_a_book_model_orders_fill_at_the_price_rounded_to_the_step(self):
        self.broker.quotes[self.symbol] = Quote(150.0, 42_000)
        fill = self.broker.market_order(self.symbol, "buy", 1.23456, "bt-c-1")
        self.assertEqual(fill, Fill(self.symbol, "buy", 1.234, 150.0, 1.234 * 150.0,
                                    1.234 * 150.0 * self.rules.taker, 42_000, fill.order_id, "bt-c-1"))
        self.assertNotEqual(self.broker.market_order(self.symbol, "sell", 1.0, "c").order_id,
                            fill.order_id)
        self.assertEqual(self.ledger.cash, 100_000.0)   # the broker moves no money
        self.assertEqual(self.broker.round_order(self.symbol, "buy", 1.23456, 150.0004),
                         (1.234, 150.0))
        self.assertIs(self.broker.rules(self.symbol), self.rules)
        self.assertIsNone(self.broker.lookup(self.symbol, "bt-c-1").fill)

    def test_the_book_model_makes_size_cost_slippage(self):
        levels = self.book()
        self.broker.quotes[self.symbol] = Quote(150.0, 0, levels)
        small = self.broker.market_order(self.symbol, "buy", 0.1, "c-1")
        large = self.broker.market_order(self.symbol, "buy", 500.0, "c-2")
        sold = self.broker.market_order(self.symbol, "sell", 10.0, "c-3")
        self.assertGreater(small.price, 150.0)
        self.assertGreater(large.price, small.price)
        self.assertLess(sold.price, 150.0)
        self.assertEqual(large.price, walk_book(levels("buy"), 500.0)[0])
        self.assertEqual(sold.price, walk_book(levels("sell"), 10.0)[0])

    def test_a_thin_book_fills_partly(self):
        self.broker.quotes[self.symbol] = Quote(150.0, 0, lambda side: [[150.0, 0.5]])
        self.assertEqual(self.broker.market_order(self.symbol, "buy", 1.0, "c-thin").amount, 0.5)
        self.broker.quotes[self.symbol] = Quote(150.0, 0, lambda side: [[150.0, 0.001]])
        with self.assertRaisesRegex(OrderRejected, "too thin"):
            self.broker.market_order(self.symbol, "buy", 1.0, "c-too-thin")

    def test_limits_and_funds_are_checked(self):
        self.broker.quotes[self.symbol] = Quote(150.0, 0, lambda side: [[150.0, 1e9]])
        with self.assertRaisesRegex(OrderRejected, "notional .* below minimum 5"):
            self.broker.market_order(self.symbol, "buy", 0.03, "c-small")
        with self.assertRaisesRegex(OrderRejected, "insufficient cash"):
            self.broker.market_order(self.symbol, "buy", 700.0, "c-poor")
        with self.assertRaisesRegex(OrderRejected, "cannot sell 11, holding 10"):
            self.broker.market_order(self.symbol, "sell", 11.0, "c-more")

    def test_liquidate_sells_everything_whatever_the_limits_and_the_depth(self):
        self.broker.quotes[self.symbol] = Quote(150.0, 7, lambda side: [[149.0, 1.0], [148.0, 1.0]])
        fill = self.broker.liquidate(self.symbol, 5.0, "c-end")
        self.assertEqual((fill.side, fill.amount, fill.timestamp_ms), ("sell", 5.0, 7))
        self.assertAlmostEqual(fill.price, 148.5)         # the average of what the book holds
        self.assertAlmostEqual(fill.cost, 5.0 * 148.5)
        self.assertAlmostEqual(fill.fee, fill.cost * self.rules.taker)
        dust = self.broker.liquidate(self.symbol, 0.0001, "c-dust")   # below the minimums
        self.assertEqual((dust.amount, dust.price), (0.0001, 149.0))
        self.broker.quotes[self.symbol] = Quote(150.0, 8, lambda side: [])
        self.assertEqual(self.broker.liquidate(self.symbol, 2.0, "c-none").price, 150.0)
        self.broker.quotes[self.symbol] = Quote(151.0, 9)
        self.assertEqual(self.broker.liquidate(self.symbol, 2.0, "c-flat").price, 151.0)


if __name__ == "__main__":
    unittest.main()

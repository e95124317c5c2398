"""Orders whose answer is lost, in live mode against the simulated exchange through real ccxt:
nothing bought twice, nothing untracked, all resolved once the exchange heals, no restart."""
import tempfile
import unittest

from reporter import Reporter
from tests.test_trader import held_on, trader_config
from trader import Trader



class LostAnswers(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.trader = Trader(trader_config(tmp.name, DRY_RUN="false", MAX_HOLD_CANDLES="500",
                                           STOP_LOSS_ATR="20", TAKE_PROFIT_ATR="20"),
                             reporter=Reporter(lambda line: None))
        self.addCleanup(self.trader.close)
        self.trader.client.attempts = 2          # fewer retries inside one call: a quick test
        self.trader.client.base_delay = 0.02     # and shorter waits between them
        self.trader.client.ccxt.rateLimit = 5    # loopback: Binance's pacing only slows it
        self.server = self.trader.client.sim_server

    def lose_the_next_answers(self):
        """From the next order on, every request naming its pair is executed and its answer
        lost (a 5xx after processing), and lookups of it fail, until `heal`."""
        ex = self.trader.client.ccxt
        real = ex.create_order

        def create_order(symbol, *args, **kwargs):
            self.server.set_faults(error_rate=1.0, after_processing=True,
                                   symbols={symbol.replace("/", "")})
            ex.create_order = real
            return real(symbol, *args, **kwargs)

        ex.create_order = create_order

    def heal(self):
        self.server.set_faults()

    def cycles(self, n: int):
        for _ in range(n):
            self.trader.client.sim.advance(60)
            self.trader.run_cycle()

    def orders_of(self, symbol: str, side: str):
        return [o for o in self.trader.store.all_orders(symbol) if o.side == side and o.kind == "market"]

    def first_entry(self):
        self.lose_the_next_answers()
        for _ in range(30):
            self.cycles(1)
            unresolved = self.trader.orders.unresolved()
            if unresolved:
                return unresolved[0]
        self.fail("the strategy bought nothing in 30 cycles")

    def test_a_buy_whose_answer_is_lost_is_booked_once_after_the_exchange_heals(self):
        order = self.first_entry()
        symbol, base = order.symbol, order.symbol.split("/")[0]
        self.assertEqual(order.status, "unknown")
        held = held_on(self.server, base)
        self.assertGreater(held, 0, "the exchange executed the buy")
        self.assertNotIn(symbol, self.trader.positions)
        self.cycles(3)                           # still failing: nothing more is bought
        price = order.price
        self.assertAlmostEqual(self.trader._account[base], held)
        counted = self.trader._account["USDT"] + held * price
        self.assertGreaterEqual(self.trader.equity(), counted * 0.99,
                                "the coins of the unknown buy are not forgotten in equity")
        self.assertEqual(len(self.orders_of(symbol, "buy")), 1, "no second buy of the pair")
        self.assertEqual(held_on(self.server, base), held)
        self.assertIn(symbol, self.trader.orders.busy())
        self.heal()
        self.cycles(6)                           # the longest backoff is 4 cycles
        self.assertEqual(self.trader.orders.unresolved(), [], "resolved without a restart")
        self.assertAlmostEqual(self.trader.positions[symbol].amount, held_on(self.server, base),
                               places=9)
        self.assertEqual(self.trader.store.order(order.client_order_id).status, "filled")
        stored = {p.symbol: p for p in self.trader.store.open_positions()}
        self.assertAlmostEqual(stored[symbol].amount, held, places=9)

    def test_a_sell_whose_answer_is_lost_is_not_sent_again(self):
        for _ in range(30):
            self.cycles(1)
            if self.trader.positions:
                break
        self.assertTrue(self.trader.positions, "the strategy bought something")
        symbol, position = next(iter(self.trader.positions.items()))
        base = symbol.split("/")[0]
        if self.trader.stops is not None:        # as the trader does before it sells
            self.assertTrue(self.trader.stops.release(symbol))
        self.lose_the_next_answers()
        self.assertIsNone(self.trader.orders.sell(position, position.entry_price, "test_exit"))
        step = self.trader.client.rules(symbol).step
        left = held_on(self.server, base)
        self.assertLess(left, step, "the exchange executed the sell (up to the lot step)")
        self.assertIn(symbol, self.trader.positions, "not booked: its outcome is unknown")
        self.cycles(3)
        self.assertEqual(len(self.orders_of(symbol, "sell")), 1, "the sell was not sent again")
        self.heal()
        self.cycles(6)                           # the longest backoff is 4 cycles
        now = self.trader.positions.get(symbol)  # the pair may have been bought again since
        self.assertTrue(now is None or now.entry_client_order_id != position.entry_client_order_id,
                        "the position the lost sell sold is closed")
        self.assertEqual(self.trader.orders.unresolved(), [])
        trades = [t for t in self.trader.store.all_trades() if t.symbol == symbol]
        self.assertEqual([t.exit_reason for t in trades], ["test_exit"], "booked once")
        trade = trades[0]
        self.assertAlmostEqual(trade.amount + trade.dust, position.amount, places=6)
        if left > 0:   # what the market will not buy is dust, tracked and paid for
            self.assertAlmostEqual(self.trader.store.dust()[symbol], left, places=6)


class PartialFills(unittest.TestCase):
    def test_a_partly_filled_exit_keeps_the_rest_under_management(self):
        with tempfile.TemporaryDirectory() as tmp:
            trader = Trader(trader_config(tmp, DRY_RUN="false", MAX_HOLD_CANDLES="1",
                                          MAX_SLIPPAGE="0.01"),
                            reporter=Reporter(lambda line: None))
            self.addCleanup(trader.close)
            server = trader.client.sim_server
            for _ in range(30):
                trader.run_cycle()
                if trader.positions:
                    break
                trader.client.sim.advance(300)
            symbol, position = next(iter(trader.positions.items()))
            base = symbol.split("/")[0]
            server.set_book_depth(0.00003)      # a thin book: the guard lets only part fill
            trader.client.sim.advance(600)
            trader.run_cycle()                  # the time limit: the bot sells what it can
            left = trader.positions.get(symbol)
            self.assertIsNotNone(left, "the unfilled rest is still a position")
            self.assertLess(left.amount, position.amount)
            self.assertAlmostEqual(left.amount, held_on(server, base), places=6,
                                   msg="the position is what the account still holds")
            sold = [t for t in trader.store.all_trades() if t.symbol == symbol]
            self.assertTrue(sold, "the part sold is a trade")   # (the exchange's stop may
            self.assertAlmostEqual(sum(t.amount for t in sold) + left.amount,  # sell parts too)
                                   position.amount, places=6)
            stored = {p.symbol: p for p in trader.store.open_positions()}
            self.assertAlmostEqual(stored[symbol].amount, left.amount, places=9)
            server.set_book_depth(1.0)
            for _ in range(3):                  # the rest goes once the book is back (a pair
                trader.client.sim.advance(60)   # with a huge amount may take two sells)
                trader.run_cycle()
                if symbol not in trader.positions:
                    break
            self.assertNotIn(symbol, trader.positions)
            sold = [t for t in trader.store.all_trades() if t.symbol == symbol]
            self.assertAlmostEqual(sum(t.amount + t.dust for t in sold), position.amount,
                                   delta=trader.client.rules(symbol).step)   # to the amount step


class LimitEntries(unittest.TestCase):
    def test_limit_entries_rest_fill_at_their_price_with_the_maker_fee_and_are_repriced(self):
        from parity import check_parity
        with tempfile.TemporaryDirectory() as tmp:
            trader = Trader(trader_config(tmp, ENTRY_ORDER="limit", LIMIT_ENTRY_TIMEOUT="120",
                                          LIMIT_ENTRY_REPRICES="1", MAX_HOLD_CANDLES="2"),
                            reporter=Reporter(lambda line: None))
            try:
                for _ in range(40):
                    trader.client.sim.advance(60)
                    trader.run_cycle()
                    rows = [o for o in trader.store.all_orders() if o.kind == "limit"]
                    if any(o.status == "filled" for o in rows) and any(o.attempt for o in rows):
                        break
                rows = [o for o in trader.store.all_orders() if o.kind == "limit"]
                market_buys = [o for o in trader.store.all_orders()
                               if o.kind == "market" and o.side == "buy"]
                maker = trader.client.rules(rows[0].symbol).maker if rows else 0.0
            finally:
                trader.close()
            filled = [o for o in rows if o.status == "filled"]
            self.assertTrue(filled, "a limit entry filled")
            self.assertTrue(any(o.attempt == 1 for o in rows), "a stale limit entry was repriced")
            self.assertTrue(all(o.attempt <= 1 for o in rows), "never more than LIMIT_ENTRY_REPRICES")
            for o in filled:
                self.assertAlmostEqual(o.fill_price, o.price, msg="a limit fills at its price")
                self.assertAlmostEqual(o.fee, o.filled * o.price * maker, places=9)
            self.assertEqual(market_buys, [], "no market entries")
            from store import Store
            with Store.open(tmp, "paper") as store:
                report = check_parity(store)
            self.assertEqual(report.of_kind("decision") + report.of_kind("books"), [],
                             report.format())


if __name__ == "__main__":
    unittest.main()

"""Stops on the exchange, live on the simulated exchange through real ccxt: placed after the
entry, filled while the bot is stopped and booked at the restart, cancelled before the
bot's own exit so nothing is sold twice."""
import tempfile
import unittest

from reporter import Reporter
from sim_exchange import SimExchangeServer
from sim_market import SimMarket
from stops import EXCHANGE_STOP
from tests.test_trader import held_on, trader_config
from trader import Trader


class StopsCase(unittest.TestCase):
    def start(self, tmp: str, **overrides) -> Trader:
        config = trader_config(tmp, DRY_RUN="false", **overrides)
        trader = Trader(config, reporter=Reporter(lambda line: None))
        self.addCleanup(trader.close)
        return trader

    def until_position(self, trader: Trader) -> str:
        for _ in range(30):
            trader.run_cycle()
            if trader.positions:
                return next(iter(trader.positions))
            trader.client.sim.advance(300)
        self.fail("the strategy bought nothing in 30 cycles")

    def open_stops(self, trader: Trader, symbol: str) -> list[dict]:
        return [o for o in trader.client.ccxt.fetch_open_orders(symbol)
                if o.get("stopPrice") or o.get("triggerPrice")]


class TestStopsOnTheExchange(StopsCase):
    def test_each_entry_gets_a_stop_on_the_exchange_at_its_stop_price(self):
        with tempfile.TemporaryDirectory() as tmp:
            trader = self.start(tmp, MAX_HOLD_CANDLES="500")
            symbol = self.until_position(trader)
            self.assertIsNotNone(trader.stops, "the simulated exchange takes stop orders")
            stops = self.open_stops(trader, symbol)
            self.assertEqual(len(stops), 1)
            position = trader.positions[symbol]
            trigger = float(stops[0].get("triggerPrice") or stops[0]["stopPrice"])
            self.assertAlmostEqual(trigger, position.stop_loss,
                                   delta=trader.client.rules(symbol).tick * 1.0001)
            self.assertAlmostEqual(stops[0]["amount"], position.amount, delta=trader.client.rules(symbol).step)

    def test_a_stop_that_fills_while_the_bot_is_down_is_booked_at_the_restart(self):
        market = SimMarket(pairs=15, seed=4, speed=0)      # its clock moves when told to
        with SimExchangeServer(market, api_key="k", api_secret="s",
                               balances={"USDT": 10_000.0}) as server, \
                tempfile.TemporaryDirectory() as tmp:
            remote = dict(SIM_URL=server.url, API_KEY="k", API_SECRET="s",
                          MAX_HOLD_CANDLES="500", STOP_LOSS_ATR="0.05")
            trader = Trader(trader_config(tmp, DRY_RUN="false", **remote),
                            reporter=Reporter(lambda line: None))
            try:
                for _ in range(30):
                    trader.run_cycle()
                    if trader.positions and trader.store.live_stops():
                        break
                    market.advance(300)
                symbol = trader.store.live_stops()[0].symbol
                step = trader.client.rules(symbol).step
            finally:
                trader.close()                  # the bot is down ...
            base = symbol.split("/")[0]
            for _ in range(300):                # ... while the market falls through the stop
                market.advance(60)
                server.balances                 # noqa: B018 - the sim settles triggers lazily
                if held_on(server, base) < step:
                    break
            else:
                self.skipTest("the market never reached the stop in 300 minutes")
            restarted = self.start(tmp, **remote)
            restarted.run_cycle()
            self.assertNotIn(symbol, restarted.positions)
            trades = [t for t in restarted.store.all_trades() if t.symbol == symbol]
            self.assertEqual([t.exit_reason for t in trades], [EXCHANGE_STOP])
            mine = [o for o in restarted.client.ccxt.fetch_closed_orders(symbol)
                    if o["clientOrderId"] == trades[0].exit_client_order_id]
            self.assertEqual(len(mine), 1)
            self.assertAlmostEqual(trades[0].exit_price, mine[0]["average"], places=6)
            self.assertAlmostEqual(trades[0].amount, mine[0]["filled"], places=9)
            self.assertGreater(trades[0].exit_fee, 0)

    def test_the_stop_is_cancelled_before_the_bot_exits_by_itself(self):
        with tempfile.TemporaryDirectory() as tmp:
            trader = self.start(tmp, MAX_HOLD_CANDLES="1")
            symbol = self.until_position(trader)
            self.assertEqual(len(self.open_stops(trader, symbol)), 1)
            for _ in range(3):                  # the time limit: the bot sells by itself (a
                trader.client.sim.advance(600)  # tiny-tick pair's big amount may take two
                trader.run_cycle()              # sells within the slippage guard)
                if symbol not in trader.positions:
                    break
            self.assertNotIn(symbol, trader.positions)
            self.assertEqual(self.open_stops(trader, symbol), [], "no stop left behind")
            base = symbol.split("/")[0]
            self.assertLess(held_on(trader.client.sim_server, base), trader.client.rules(symbol).step,
                            "sold once: nothing locked, nothing sold twice")
            rows = [o for o in trader.store.all_orders(symbol) if o.kind == "stop"]
            self.assertTrue(rows)
            self.assertEqual({o.status for o in rows}, {"canceled"})


if __name__ == "__main__":
    unittest.main()

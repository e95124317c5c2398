"""The trading loop in-process: LLM gating, exchange outages, the live path on the sim."""
import tempfile
import unittest

from config import load_config
from tests.chat_server import ChatServer
from trader import Trader


def trader_config(data_dir: str, **overrides):
    env = {"DATA_DIR": data_dir, "SIM_PAIRS": "15", "MAX_PAIRS": "15", "SIM_SPEED": "600",
           "CHECK_INTERVAL": "60", "CANDLE_HISTORY": "150", "ML_ENABLED": "false",
           "MARKET_SCAN_CACHE_DURATION": "0", "ENABLE_PERFORMANCE_MONITORING": "false"}
    env.update({k: str(v) for k, v in overrides.items()})
    return load_config(None, env)


class TraderCase(unittest.TestCase):
    def run_until_positions(self, trader: Trader, max_cycles: int = 20) -> None:
        """Cycle until the strategy has opened something (the market decides when)."""
        for _ in range(max_cycles):
            trader.run_cycle()
            if trader.positions:
                return
            trader.client.sim.advance(300)
        self.fail(f"no position opened in {max_cycles} cycles")

    def start(self, **overrides) -> Trader:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        trader = Trader(trader_config(tmp.name, **overrides))
        self.addCleanup(trader.close)
        return trader


class TestLLMGate(TraderCase):
    def cycle_until(self, trader: Trader, condition, max_cycles: int = 20) -> None:
        for _ in range(max_cycles):
            trader.run_cycle()
            if condition():
                return
            trader.client.sim.advance(300)
        self.fail(f"condition not met in {max_cycles} cycles")

    def test_entries_need_the_llms_confirmation(self):
        with ChatServer(mode="http_500") as chat:
            trader = self.start(LLM_PROVIDER="openai", LLM_BASE_URL=chat.url, LLM_MODEL="test",
                                LLM_TIMEOUT="2", LLM_CYCLE_BUDGET="4", LLM_ON_FAILURE="reject",
                                LLM_MAX_CALLS_PER_CYCLE="10")
            unconfirmed = lambda: {s for s, r in trader.decisions.skipped  # noqa: E731
                                   if r == "not confirmed by the LLM"}
            self.cycle_until(trader, lambda: trader.decisions and unconfirmed())
            self.assertEqual(trader.positions, {}, "a failing LLM confirms nothing")

            chat.set_mode("ok")
            before = chat.request_count
            self.cycle_until(trader, lambda: chat.request_count > before)
            self.assertFalse(unconfirmed() & set(trader.positions), "no refused symbol was bought")
            answered = trader.advisor.report()
            self.assertIn("http_error", answered)


class TestOutage(TraderCase):
    def test_an_exchange_outage_skips_cycles_and_positions_are_managed_after(self):
        trader = self.start(MAX_HOLD_CANDLES="1")
        self.run_until_positions(trader)
        held = set(trader.positions)
        server = trader.client.sim_server
        server.set_faults(error_rate=1.0)
        with self.assertLogs("trader", "WARNING") as logs:
            trader.run_cycle()
        self.assertTrue(any("exchange unavailable" in line for line in logs.output))
        self.assertEqual(set(trader.positions), held, "nothing changed while the exchange was down")
        server.set_faults()
        trader.run_cycle()  # the 1-candle time limit has passed: every old position exits
        self.assertFalse(held & set(trader.positions))
        self.assertGreaterEqual(trader.store.totals().trades, len(held))


class TestLiveOnTheSim(TraderCase):
    def test_live_orders_are_signed_orders_on_the_simulated_exchange(self):
        trader = self.start(DRY_RUN="false")
        server = trader.client.sim_server
        start_cash = server.balances["USDT"]
        self.run_until_positions(trader)
        for symbol, position in trader.positions.items():
            base = symbol.split("/")[0]
            self.assertAlmostEqual(server.balances[base], position.amount, places=6,
                                   msg="the position is what the account holds after fees")
        spent = start_cash - server.balances["USDT"]
        cost = sum(p.amount * p.entry_price + p.entry_fee for p in trader.positions.values())
        self.assertAlmostEqual(spent, cost, delta=cost * 1e-6)
        self.assertEqual(trader.store.path.name, "trades-live.sqlite")


if __name__ == "__main__":
    unittest.main()

"""The trading loop: LLM gating, the model, outages, the live path and a SIGKILL restart."""
import os
import signal
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from config import load_config
from reporter import Reporter
from sim_exchange import SimExchangeServer
from sim_market import SimMarket
from store import Store
from tests.chat_server import ChatServer
from trader import Trader

ROOT = Path(__file__).resolve().parent.parent


def held_on(server, asset: str) -> float:
    """What the simulated account holds of an asset: free, and locked in open orders (stops)."""
    return server.balances.get(asset, 0.0) + server.locked.get(asset, 0.0)


def trader_config(data_dir: str, **overrides):
    env = {"DATA_DIR": data_dir, "SIM_PAIRS": "15", "MAX_PAIRS": "15", "SIM_SPEED": "600",
           "CHECK_INTERVAL": "60", "CANDLE_HISTORY": "150", "ML_ENABLED": "false",
           "MARKET_SCAN_CACHE_DURATION": "0", "ENABLE_PERFORMANCE_MONITORING": "false",
           # entries on most up-moves, so that the simulated market of any day trades
           "STRATEGY": "trend_momentum", "STRATEGY_PARAMS": "min_volume_ratio=0",
           # the simulated market is a random walk: the edge gate would (rightly) sit out
           "EDGE_GATE": "false",
           # a tiny-tick pair's book (PEPE at 1e-5) is thin within 1 %: let market orders
           # fill whole unless a test is about the guard
           "MAX_SLIPPAGE": "0.05",
           # the same simulated market every run, whatever the day (SIM_SEED is 1)
           "SIM_START": "2026-06-01"}
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
        self.lines: list[str] = []
        trader = Trader(trader_config(tmp.name, **overrides), reporter=Reporter(self.lines.append))
        self.addCleanup(trader.close)
        trader.client.ccxt.rateLimit = 5     # loopback: Binance's pacing would only slow tests
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

            self.assertIn("http_error", trader.advisor.report())
            # a healthy LLM's confirmations and refusals: tests.test_llm.TradingLoopGateTest


class TestModelOn(TraderCase):
    def test_the_trader_trains_its_model_and_trades_on_it(self):
        # The simulated market has no edge, and the model says so: let it trade anyway.
        trader = self.start(ML_ENABLED="true", CANDLE_HISTORY="400", ML_MIN_CONFIDENCE="0.05",
                            ML_MIN_EXPECTED_RETURN="-0.05", MAX_HOLD_CANDLES="12",
                            ML_MIN_AUC="0")
        trader.run_cycle()
        self.assertIsNotNone(trader.retrainer, "the default (ML on) starts the retrainer")
        self.assertTrue(trader.retrainer.wait_idle(timeout=120), "the first training ended")
        self.assertTrue(trader.model.is_ready(), "a model was trained from the scanner's candles")
        self.assertIn("model v1", trader._model_state())
        for _ in range(40):
            trader.client.sim.advance(300)
            trader.run_cycle()
            if any(p.entry_reason == "model" for p in trader.positions.values()):
                break
        self.assertTrue(trader.decisions.used_model, "decisions come from the model")
        held = [p for p in trader.positions.values() if p.entry_reason == "model"]
        self.assertTrue(held, "the model opened a position")
        self.assertIsNotNone(held[0].probability)
        self.assertGreaterEqual(held[0].probability, 0.05)
        stored = {p.symbol: p for p in trader.store.open_positions()}
        self.assertEqual(stored[held[0].symbol].entry_reason, "model")


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
        self.assertFalse(held & set(trader.positions), "nothing exited is bought again at once")
        self.assertGreaterEqual(trader.store.totals().trades, len(held))


class TestCooldown(TraderCase):
    def test_a_pair_just_sold_is_not_bought_on_the_same_candle(self):
        trader = self.start(MAX_HOLD_CANDLES="1", COOLDOWN_CANDLES="1")
        self.run_until_positions(trader)
        held = set(trader.positions)
        trader.client.sim.advance(300)
        trader.run_cycle()     # every position hits its 1-candle time limit and exits
        self.assertFalse(held & set(trader.positions))
        skipped = {s for s, _ in trader.decisions.skipped}
        candidates = {c.symbol for c in trader.decisions.candidates}
        self.assertFalse(held & candidates, "sold pairs are no candidates on that candle")
        self.assertFalse(held & skipped)


class TestLiveOnTheSim(TraderCase):
    def test_live_orders_are_signed_orders_on_the_simulated_exchange(self):
        trader = self.start(DRY_RUN="false")
        server = trader.client.sim_server
        start_cash = server.balances["USDT"]
        self.run_until_positions(trader)
        for symbol, position in trader.positions.items():
            base = symbol.split("/")[0]
            self.assertAlmostEqual(held_on(server, base), position.amount, places=6,
                                   msg="the position is what the account holds after fees")
        spent = start_cash - server.balances["USDT"]
        cost = sum(p.amount * p.entry_price + p.entry_fee for p in trader.positions.values())
        self.assertAlmostEqual(spent, cost, delta=cost * 1e-6)
        self.assertEqual(trader.store.path.name, "trades-live.sqlite")


CRASH_CHILD = """
import os, signal, sys
import brokers
from config import load_config
from trader import Trader

real = brokers.LiveBroker.market_order

def market_order_then_die(self, *args, **kwargs):
    real(self, *args, **kwargs)          # the order executed on the exchange ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the bot dies before booking its fill

brokers.LiveBroker.market_order = market_order_then_die
Trader(load_config(None)).run(cycles=int(sys.argv[1]))
"""


class TestLiveCrashRestart(unittest.TestCase):
    """A live bot SIGKILLed between committing a pending order and committing its fill."""

    def test_the_restarted_bot_books_the_fill_once_from_the_exchange(self):
        market = SimMarket(pairs=15, seed=3, speed=600)
        with SimExchangeServer(market, api_key="k", api_secret="s",
                               balances={"USDT": 10_000.0}) as server, \
                tempfile.TemporaryDirectory() as tmp:
            env = {"EXCHANGE": "simulated", "SIM_URL": server.url, "API_KEY": "k",
                   "API_SECRET": "s", "DRY_RUN": "false", "DATA_DIR": tmp, "MAX_PAIRS": "15",
                   "CHECK_INTERVAL": "300", "CANDLE_HISTORY": "150", "ML_ENABLED": "false",
                   "MARKET_SCAN_CACHE_DURATION": "0", "ENABLE_PERFORMANCE_MONITORING": "false",
                   "LOG_LEVEL": "WARNING", "EDGE_GATE": "false",
                   "STRATEGY": "trend_momentum", "STRATEGY_PARAMS": "min_volume_ratio=0"}
            child = subprocess.run([sys.executable, "-c", CRASH_CHILD, "60"], cwd=ROOT,
                                   env={**os.environ, **env}, capture_output=True, timeout=240)
            self.assertEqual(child.returncode, -signal.SIGKILL, child.stderr.decode()[-2000:])
            with Store.open(tmp, "live") as store:
                pending = store.pending_orders()
                self.assertEqual([o.side for o in pending], ["buy"])
                self.assertEqual(store.open_positions(), [])
            symbol = pending[0].symbol
            base = symbol.split("/")[0]
            self.assertGreater(held_on(server, base), 0, "the exchange filled the buy")

            trader = Trader(load_config(None, env), reporter=Reporter(lambda line: None))
            try:
                self.assertEqual(list(trader.positions), [symbol], "exactly one position")
                self.assertAlmostEqual(trader.positions[symbol].amount, held_on(server, base),
                                       places=9, msg="the position is what the exchange holds")
                self.assertEqual(trader.store.pending_orders(), [])
                self.assertEqual(trader.store.order(pending[0].client_order_id).status, "filled")
                self.assertAlmostEqual(trader.ledger.cash, server.balances["USDT"], places=6)
            finally:
                trader.close()
            with Store.open(tmp, "live") as store:   # a second restart changes nothing
                self.assertEqual([p.symbol for p in store.open_positions()], [symbol])


if __name__ == "__main__":
    unittest.main()

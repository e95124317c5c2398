"""Risk limits: orders whose outcome is pending take their slot and count in their group."""
import unittest

from domain import Candidate, Position, StrategyParams
from risk_manager import RiskManager

PARAMS = StrategyParams(timeframe_ms=300_000)


def candidate(symbol: str) -> Candidate:
    return Candidate(symbol, 100.0, 1.0, 1.0, None, None)


def round_order(symbol, side, amount, price):
    return round(amount, 6), price


class PendingSlotsTest(unittest.TestCase):
    def plan(self, positions=(), pending=(), max_open=2, per_group=1):
        risk = RiskManager(0.01, max_open, 0.2, per_group)
        held = {s: Position(s, 1.0, 100.0, 0, 90.0, 110.0) for s in positions}
        return risk.plan_entries([candidate("SOL/USDT"), candidate("ETH/USDT")], held,
                                 10_000.0, 10_000.0, PARAMS, round_order, pending)

    def test_a_pending_buy_takes_a_position_slot(self):
        entries, _ = self.plan(positions=["DOGE/USDT"])
        self.assertEqual([e.symbol for e in entries], ["SOL/USDT"])
        entries, skipped = self.plan(positions=["DOGE/USDT"], pending=["LINK/USDT"])
        self.assertEqual(entries, [])
        self.assertIn("max open positions (2) reached", dict(skipped)["SOL/USDT"])

    def test_a_pending_buy_counts_in_its_group(self):
        entries, skipped = self.plan(pending=["BTC/USDT"], max_open=5)
        self.assertEqual([e.symbol for e in entries], ["SOL/USDT"])
        self.assertIn("group 'majors'", dict(skipped)["ETH/USDT"])


if __name__ == "__main__":
    unittest.main()

"""ledger.py and domain.Trade.closing: fills to positions to trades to cash."""
from __future__ import annotations

import random
import unittest
from dataclasses import replace

from domain import EntryIntent, Fill, Position, Trade
from ledger import Ledger


def buy(symbol: str = "BTC/USDT", amount: float = 2.0, price: float = 101.0, fee: float = 0.202,
        ts: int = 1_000, coid: str = "in-1") -> Fill:
    return Fill(symbol, "buy", amount, price, amount * price, fee, ts, f"x-{coid}", coid)


def sell(symbol: str = "BTC/USDT", amount: float = 2.0, price: float = 110.0, fee: float = 0.22,
         ts: int = 9_000, coid: str = "out-1") -> Fill:
    return Fill(symbol, "sell", amount, price, amount * price, fee, ts, f"x-{coid}", coid)


def intent(symbol: str = "BTC/USDT", price: float = 100.0, stop_loss: float = 95.0,
           take_profit: float = 112.0, reason: str = "model", probability: float | None = 0.71,
           features: tuple[float, ...] | None = (0.5, -1.0)) -> EntryIntent:
    return EntryIntent(symbol, price, 2.0, stop_loss, take_profit, score=1.5,
                       probability=probability, features=features, reason=reason)


class OpenTest(unittest.TestCase):
    def test_a_buy_opens_a_position_and_pays_cost_plus_fee(self) -> None:
        ledger = Ledger(1_000.0)
        position = ledger.open(buy(), intent(), group="majors")
        self.assertEqual(ledger.positions, {"BTC/USDT": position})
        self.assertAlmostEqual(ledger.cash, 1_000.0 - 202.0 - 0.202)
        self.assertEqual((position.amount, position.entry_price, position.entry_time_ms,
                          position.entry_fee), (2.0, 101.0, 1_000, 0.202))
        self.assertEqual((position.group, position.features, position.entry_client_order_id,
                          position.entry_reason, position.probability),
                         ("majors", (0.5, -1.0), "in-1", "model", 0.71))

    def test_stops_keep_the_intents_distances_from_the_actual_fill_price(self) -> None:
        ledger = Ledger(1_000.0)
        # the intent was priced at 100 (stop 5 below, target 12 above); it filled at 101
        position = ledger.open(buy(price=101.0), intent(), group="majors")
        self.assertAlmostEqual(position.stop_loss, 96.0)
        self.assertAlmostEqual(position.take_profit, 113.0)
        lower = Ledger(1_000.0).open(buy(price=99.5), intent(), group="majors")
        self.assertAlmostEqual(lower.stop_loss, 94.5)
        self.assertAlmostEqual(lower.take_profit, 111.5)

    def test_a_rule_entry_without_a_model(self) -> None:
        position = Ledger(500.0).open(buy(), intent(reason="rule", probability=None, features=None),
                                      group="other")
        self.assertEqual((position.entry_reason, position.probability, position.features),
                         ("rule", None, None))


class CloseTest(unittest.TestCase):
    def setUp(self) -> None:
        self.ledger = Ledger(1_000.0, last_exits={"ETH/USDT": 500})
        self.position = self.ledger.open(buy(), intent(), group="majors")
        self.cash_after_buy = self.ledger.cash

    def test_a_full_sell_closes_the_position_into_a_trade(self) -> None:
        fill = sell()
        trade, left = self.ledger.close(fill, "take_profit")
        self.assertIsNone(left)
        self.assertEqual(self.ledger.positions, {})
        self.assertAlmostEqual(self.ledger.cash, self.cash_after_buy + 220.0 - 0.22)
        self.assertEqual(self.ledger.last_exits, {"ETH/USDT": 500, "BTC/USDT": 9_000})
        self.assertEqual(trade, Trade.closing(self.position, fill, "take_profit"))
        self.assertAlmostEqual(trade.profit, 220.0 - 202.0 - 0.202 - 0.22)
        self.assertEqual((trade.entry_reason, trade.probability, trade.features),
                         ("model", 0.71, (0.5, -1.0)))
        self.assertEqual((trade.entry_client_order_id, trade.exit_client_order_id),
                         ("in-1", "out-1"))
        self.assertAlmostEqual(self.ledger.cash, 1_000.0 + trade.profit)

    def test_a_partial_sell_leaves_the_rest_open_with_its_share_of_the_entry_fee(self) -> None:
        trade, left = self.ledger.close(sell(amount=0.5, fee=0.055), "take_profit")
        self.assertEqual(self.ledger.positions, {"BTC/USDT": left})
        self.assertAlmostEqual(left.amount, 1.5)
        self.assertAlmostEqual(left.entry_fee, 0.202 * 0.75)
        self.assertEqual((left.entry_price, left.stop_loss, left.take_profit, left.entry_time_ms),
                         (self.position.entry_price, self.position.stop_loss,
                          self.position.take_profit, self.position.entry_time_ms))
        self.assertAlmostEqual(trade.amount, 0.5)
        self.assertAlmostEqual(trade.entry_fee, 0.202 * 0.25)
        self.assertAlmostEqual(self.ledger.cash, self.cash_after_buy + 55.0 - 0.055)
        self.assertEqual(self.ledger.last_exits["BTC/USDT"], 9_000)
        # the rest, later: the two trades' entry fees add up to the position's
        second, none = self.ledger.close(sell(amount=1.5, fee=0.165, ts=12_000, coid="out-2"),
                                         "time_limit")
        self.assertIsNone(none)
        self.assertEqual(self.ledger.positions, {})
        self.assertAlmostEqual(trade.entry_fee + second.entry_fee, 0.202)
        self.assertEqual(self.ledger.last_exits["BTC/USDT"], 12_000)
        self.assertAlmostEqual(self.ledger.cash, 1_000.0 + trade.profit + second.profit)

    def test_a_remainder_of_float_dust_counts_as_sold_out(self) -> None:
        trade, left = self.ledger.close(sell(amount=2.0 * (1 - 1e-12)), "stop_loss")
        self.assertIsNone(left)
        self.assertNotIn("BTC/USDT", self.ledger.positions)
        _, left = Ledger(0.0, [self.position]).close(sell(amount=2.0 * (1 - 1e-6)), "stop_loss")
        self.assertIsNotNone(left)   # a real remainder stays open

    def test_equity_values_positions_at_the_given_prices_or_their_entry(self) -> None:
        self.ledger.open(buy("ETH/USDT", amount=1.0, price=50.0, fee=0.05, coid="in-2"),
                         intent("ETH/USDT", price=50.0, stop_loss=45.0, take_profit=60.0), "majors")
        cash = self.ledger.cash
        self.assertAlmostEqual(self.ledger.equity({"BTC/USDT": 120.0, "ETH/USDT": 40.0}),
                               cash + 2.0 * 120.0 + 40.0)
        self.assertAlmostEqual(self.ledger.equity({"BTC/USDT": 120.0}), cash + 240.0 + 50.0)
        self.assertAlmostEqual(self.ledger.equity({}), cash + 2.0 * 101.0 + 50.0)
        self.assertAlmostEqual(Ledger(7.0).equity({"BTC/USDT": 1.0}), 7.0)

    def test_a_ledger_restored_from_the_store_starts_from_what_it_is_given(self) -> None:
        restored = Ledger(123.0, [self.position], {"BTC/USDT": 42})
        self.assertEqual(restored.positions, {"BTC/USDT": self.position})
        self.assertEqual(restored.last_exits, {"BTC/USDT": 42})
        given = {"X/USDT": 1}
        ledger = Ledger(1.0, last_exits=given)
        ledger.open(buy("X/USDT"), intent("X/USDT"), "other")
        ledger.close(sell("X/USDT"), "stop_loss")
        self.assertEqual(given, {"X/USDT": 1}, "the caller's mapping is copied, not changed")


class CashInvariantTest(unittest.TestCase):
    def test_cash_is_start_plus_trade_profits_minus_what_is_still_open(self) -> None:
        rng = random.Random(4)
        start = 100_000.0
        ledger = Ledger(start)
        trades: list[Trade] = []
        symbols = [f"P{i}/USDT" for i in range(6)]
        seq = partial = 0
        for _ in range(400):
            symbol = rng.choice(symbols)
            seq += 1
            held = ledger.positions.get(symbol)
            price = rng.uniform(1.0, 200.0)
            if held is None:
                amount = rng.uniform(0.1, 20.0)
                fee = amount * price * rng.choice((0.001, 0.00075, 0.0))
                ledger.open(Fill(symbol, "buy", amount, price, amount * price, fee, seq, "x",
                                 f"b{seq}"),
                            intent(symbol, price=price, stop_loss=price * 0.9,
                                   take_profit=price * 1.2), "other")
            else:
                amount = held.amount * rng.choice((1.0, 1.0, 0.5, 0.25, rng.uniform(0.01, 0.99)))
                fee = amount * price * 0.001
                trade, left = ledger.close(Fill(symbol, "sell", amount, price, amount * price,
                                                fee, seq, "x", f"s{seq}"), "signal")
                trades.append(trade)
                partial += left is not None
        self.assertGreater(len(trades), 100)
        self.assertGreater(len(ledger.positions), 0)
        self.assertGreater(partial, 50)
        open_cost = sum(p.amount * p.entry_price + p.entry_fee for p in ledger.positions.values())
        self.assertAlmostEqual(ledger.cash, start + sum(t.profit for t in trades) - open_cost,
                               delta=1e-6)


class TradeClosingTest(unittest.TestCase):
    position = Position("BTC/USDT", 2.0, 100.0, 1_000, 95.0, 110.0, entry_fee=0.2,
                        group="majors", features=(1.0,), entry_client_order_id="in-1",
                        entry_reason="model", probability=0.6)

    def test_a_full_close(self) -> None:
        trade = Trade.closing(self.position, sell(amount=2.0, price=110.0, fee=0.22), "take_profit")
        self.assertAlmostEqual(trade.profit, 220.0 - 200.0 - 0.2 - 0.22)
        self.assertAlmostEqual(trade.return_pct, 100 * trade.profit / 200.2)
        self.assertEqual((trade.symbol, trade.amount, trade.entry_price, trade.exit_price,
                          trade.entry_time_ms, trade.exit_time_ms, trade.entry_fee, trade.exit_fee,
                          trade.exit_reason), ("BTC/USDT", 2.0, 100.0, 110.0, 1_000, 9_000, 0.2,
                                               0.22, "take_profit"))
        self.assertEqual((trade.entry_reason, trade.probability, trade.features,
                          trade.entry_client_order_id, trade.exit_client_order_id),
                         ("model", 0.6, (1.0,), "in-1", "out-1"))

    def test_a_partial_fill_gets_the_matching_share_of_the_entry_fee(self) -> None:
        trade = Trade.closing(self.position, sell(amount=0.5, price=110.0, fee=0.055), "partial")
        self.assertAlmostEqual(trade.entry_fee, 0.05)
        self.assertAlmostEqual(trade.profit, 55.0 - 50.0 - 0.05 - 0.055)
        self.assertAlmostEqual(trade.return_pct, 100 * (55.0 - 50.0 - 0.05 - 0.055) / 50.05)

    def test_a_losing_trade(self) -> None:
        trade = Trade.closing(self.position, sell(amount=2.0, price=95.0, fee=0.19), "stop_loss")
        self.assertAlmostEqual(trade.profit, 190.0 - 200.0 - 0.2 - 0.19)
        self.assertLess(trade.return_pct, 0)

    def test_selling_more_than_the_position_never_charges_more_than_its_entry_fee(self) -> None:
        trade = Trade.closing(self.position, sell(amount=2.000001, price=110.0, fee=0.22), "x")
        self.assertEqual(trade.entry_fee, 0.2)

    def test_reduced_shrinks_the_entry_fee_in_proportion(self) -> None:
        left = self.position.reduced(0.5)
        self.assertEqual(left, replace(self.position, amount=1.5, entry_fee=0.2 * 1.5 / 2.0))


if __name__ == "__main__":
    unittest.main()

"""market_rules.py: rounding, every limit, the three precision modes, and agreement with
ccxt's own amount_to_precision / price_to_precision on the simulated exchange's markets."""
from __future__ import annotations

import math
import random
import unittest
from decimal import Decimal

from ccxt.base.decimal_to_precision import (DECIMAL_PLACES as CCXT_DECIMAL_PLACES, NO_PADDING,
                                            ROUND, SIGNIFICANT_DIGITS as CCXT_SIGNIFICANT_DIGITS,
                                            TICK_SIZE as CCXT_TICK_SIZE, TRUNCATE,
                                            decimal_to_precision)

from domain import OrderRejected
from exchange import sim_client
from market_rules import (DECIMAL_PLACES, SIGNIFICANT_DIGITS, TAKER_FEE, TICK_SIZE, MarketRules,
                          step_size, tick_size)
from sim_exchange import SimExchangeServer
from sim_market import SimMarket

SAMPLES = 300


def tick_rules(**kw) -> MarketRules:
    """A BTC/USDT-like market: step 0.00001, tick 0.01, min 5 USDT."""
    base = dict(symbol="BTC/USDT", amount_precision=1e-5, price_precision=0.01,
                precision_mode=TICK_SIZE, min_amount=1e-5, max_amount=9000.0, min_price=0.01,
                max_price=1_000_000.0, min_notional=5.0, max_notional=9_000_000.0)
    return MarketRules(**(base | kw))


class PrecisionModesTest(unittest.TestCase):
    def test_our_constants_are_ccxts(self) -> None:
        self.assertEqual((DECIMAL_PLACES, SIGNIFICANT_DIGITS, TICK_SIZE),
                         (CCXT_DECIMAL_PLACES, CCXT_SIGNIFICANT_DIGITS, CCXT_TICK_SIZE))

    def test_tick_size_mode_truncates_amounts_and_rounds_prices_to_the_nearest_tick(self) -> None:
        r = tick_rules()
        self.assertEqual((r.step, r.tick), (1e-5, 0.01))
        self.assertEqual(r.round_amount(0.123459), 0.12345)           # truncated, never up
        self.assertEqual(r.round_amount(0.12345), 0.12345)
        self.assertEqual(r.round_price(100.004), 100.0)
        self.assertEqual(r.round_price(100.006), 100.01)
        self.assertEqual(r.round_price(0.001), 0.01)                  # at least one tick
        coarse = tick_rules(amount_precision=0.5, price_precision=2.5)
        self.assertEqual(coarse.round_amount(1.99), 1.5)
        self.assertEqual(coarse.round_price(11.0), 10.0)
        self.assertEqual(coarse.round_price(11.5), 12.5)

    def test_decimal_places_mode(self) -> None:
        r = tick_rules(amount_precision=3, price_precision=2, precision_mode=DECIMAL_PLACES)
        self.assertEqual((r.step, r.tick), (0.001, 0.01))
        self.assertEqual(r.round_amount(1.23456), 1.234)
        self.assertEqual(r.round_price(1.23456), 1.23)
        self.assertEqual(r.round_price(1.236), 1.24)
        whole = tick_rules(amount_precision=0, price_precision=0, precision_mode=DECIMAL_PLACES)
        self.assertEqual((whole.round_amount(7.9), whole.round_price(7.6)), (7.0, 8.0))

    def test_significant_digits_mode(self) -> None:
        r = tick_rules(amount_precision=3, price_precision=4, precision_mode=SIGNIFICANT_DIGITS)
        self.assertIsNone(r.step)
        self.assertIsNone(r.tick)
        self.assertEqual(r.round_amount(123456.0), 123000.0)
        self.assertEqual(r.round_amount(0.000123987), 0.000123)
        self.assertEqual(r.round_price(98766.0), 98770.0)
        self.assertEqual(r.round_price(0.0123449), 0.01234)
        self.assertEqual(r.round_price(9.99971), 10.0)               # carries to a new digit
        self.assertEqual(r.round_amount(0.0), 0.0)

    def test_no_precision_leaves_values_alone(self) -> None:
        r = tick_rules(amount_precision=None, price_precision=None)
        self.assertIsNone(r.step)
        self.assertIsNone(r.tick)
        self.assertEqual((r.round_amount(0.1234567891), r.round_price(1.23456789)),
                         (0.1234567891, 1.23456789))

    def test_results_carry_no_float_dust(self) -> None:
        r = tick_rules(amount_precision=0.1, price_precision=0.1)
        self.assertEqual(r.round_amount(0.3), 0.3)                    # not 0.30000000000000004
        self.assertEqual(repr(r.round_price(0.7)), "0.7")
        self.assertEqual(repr(tick_rules(amount_precision=0.001).round_amount(1.0069)), "1.006")

    def test_an_amount_of_exactly_n_steps_is_not_truncated_to_n_minus_one(self) -> None:
        # 0.57 / 0.01 == 56.99999999999999 in binary floating point
        r = tick_rules(amount_precision=0.01)
        for text in ("0.57", "0.29", "4.35", "1.15", "8.2"):
            self.assertEqual(r.round_amount(float(text)), float(text), text)


class RoundOrderTest(unittest.TestCase):
    def test_returns_the_rounded_amount_and_price(self) -> None:
        amount, price = tick_rules().round_order("buy", 0.0123456, 60000.004)
        self.assertEqual((amount, price), (0.01234, 60000.0))
        self.assertEqual(tick_rules().round_order("sell", 1.0, 100.0), (1.0, 100.0))

    def assert_rejected(self, rules: MarketRules, side, amount, price, *fragments: str) -> None:
        with self.assertRaises(OrderRejected) as cm:
            rules.round_order(side, amount, price)
        message = str(cm.exception)
        self.assertTrue(message.startswith(rules.symbol + ": "), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_side_must_be_buy_or_sell(self) -> None:
        self.assert_rejected(tick_rules(), "hold", 1.0, 100.0, "side 'hold'")

    def test_amount_and_price_must_be_positive_finite_numbers(self) -> None:
        r = tick_rules()
        for bad in (0.0, -1.0, math.nan, math.inf, None):
            self.assert_rejected(r, "buy", bad, 100.0, "amount", "not a positive number")
            self.assert_rejected(r, "buy", 1.0, bad, "price", "not a positive number")

    def test_amount_below_the_minimum_after_rounding(self) -> None:
        r = tick_rules(min_amount=0.001)
        self.assert_rejected(r, "buy", 0.0009, 60000.0, "amount 0.0009", "below minimum 0.001")
        # 0.00099999 is not below the step but rounds down below the minimum
        self.assert_rejected(r, "buy", 0.000999999, 60000.0, "(rounded 0.00099)",
                             "below minimum 0.001")
        self.assertEqual(r.round_order("buy", 0.00100009, 60000.0)[0], 0.001)

    def test_amount_that_rounds_to_nothing_without_a_minimum_names_the_step(self) -> None:
        r = tick_rules(min_amount=None, min_notional=None)
        self.assert_rejected(r, "sell", 0.000004, 100.0, "(rounded 0)", "below minimum 1e-05")

    def test_amount_above_the_maximum(self) -> None:
        r = tick_rules(max_amount=100.0, max_notional=None)
        self.assertEqual(r.round_order("buy", 100.0, 10.0)[0], 100.0)
        self.assert_rejected(r, "buy", 100.00001, 10.0, "above maximum 100")

    def test_price_outside_the_price_filter(self) -> None:
        r = tick_rules(min_price=1.0, max_price=1000.0, min_notional=None, max_notional=None)
        self.assertEqual(r.round_order("buy", 1.0, 1000.0)[1], 1000.0)
        self.assert_rejected(r, "buy", 1.0, 0.99, "price 0.99 outside [1, 1000]")
        self.assert_rejected(r, "buy", 1.0, 1000.01, "price 1000.01 outside [1, 1000]")

    def test_notional_is_checked_on_the_rounded_values(self) -> None:
        r = tick_rules(min_notional=5.0, max_notional=1000.0)
        self.assertEqual(r.round_order("buy", 0.05, 100.0), (0.05, 100.0))        # 5.0 exactly
        # 0.0500099 * 100 = 5.00099 but the rounded 0.05 * 99.99 is below 5
        self.assert_rejected(r, "buy", 0.0500099, 99.994, "notional 4.9995 below minimum 5")
        self.assert_rejected(r, "sell", 10.1, 100.0, "notional 1010 above maximum 1000")

    def test_unset_limits_are_not_checked(self) -> None:
        r = MarketRules("X/USDT", 0.01, 0.01)
        self.assertEqual(r.round_order("buy", 1e9, 1e9), (1e9, 1e9))
        self.assertEqual(r.round_order("buy", 0.01, 0.01), (0.01, 0.01))


class FromCcxtTest(unittest.TestCase):
    def test_a_hand_written_market(self) -> None:
        market = {"symbol": "ETH/BTC", "taker": 0.00075, "maker": 0.0005,
                  "precision": {"amount": 0.0001, "price": 1e-6},
                  "limits": {"amount": {"min": 0.0001, "max": 9000.0},
                             "price": {"min": 1e-6, "max": 1000.0},
                             "cost": {"min": 0.0001, "max": None}, "leverage": {}}}
        r = MarketRules.from_ccxt(market)
        self.assertEqual(r, MarketRules("ETH/BTC", 0.0001, 1e-6, TICK_SIZE, 0.0001, 9000.0, 1e-6,
                                        1000.0, 0.0001, None, taker=0.00075, maker=0.0005))
        self.assertEqual(MarketRules.from_ccxt(market, DECIMAL_PLACES).precision_mode,
                         DECIMAL_PLACES)

    def test_missing_fees_precision_and_limits(self) -> None:
        r = MarketRules.from_ccxt({"symbol": "X/USDT", "taker": None,
                                   "limits": {"amount": {"min": 0, "max": None}}})
        self.assertEqual((r.taker, r.maker), (TAKER_FEE, TAKER_FEE))
        self.assertIsNone(r.amount_precision)
        self.assertIsNone(r.min_amount)  # a minimum of 0 is no minimum
        self.assertEqual(r.round_order("buy", 0.123456789, 1.0), (0.123456789, 1.0))


class AgreesWithCcxtTest(unittest.TestCase):
    """Our one rounding against ccxt's on the markets ccxt parsed from the simulated exchange."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.market = SimMarket(pairs=30, seed=7, speed=0.0)
        cls.server = SimExchangeServer(cls.market).start()
        cls.client = sim_client(cls.server, cls.market, "sim-key", "sim-secret", timeout_ms=5000)
        cls.markets = cls.client.load_markets()
        cls.ccxt = cls.client.ccxt

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def samples(self, symbol: str, seed: int) -> tuple[list[float], list[float]]:
        """Random amounts (from one step to the maximum) and prices around the market's."""
        rng = random.Random(f"{symbol}-{seed}")
        rules = self.client.rules(symbol)
        price = self.market.last_price(self.markets[symbol]["id"])
        lo, hi = math.log10(rules.step), math.log10(rules.max_amount)
        amounts = [10 ** rng.uniform(lo, hi) for _ in range(SAMPLES)]
        prices = [price * 10 ** rng.uniform(-1, 1) for _ in range(SAMPLES)]
        # decimals as an exchange writes balances and as a user types them, e.g. 0.57
        amounts += [float(f"{a:.8f}") for a in amounts[:50] if a >= 1e-8]
        amounts += [float(Decimal(rng.randint(1, 10_000)) * Decimal(repr(rules.step)))
                    for _ in range(50)]
        return amounts, prices

    def test_ccxt_uses_tick_size_mode_for_binance(self) -> None:
        self.assertEqual(self.ccxt.precisionMode, TICK_SIZE)
        self.assertEqual(self.client.rules(self.market.symbols[0]).precision_mode, TICK_SIZE)

    def test_amounts_and_prices_round_as_ccxt_rounds_them(self) -> None:
        checked = 0
        for symbol in self.market.symbols:
            rules = MarketRules.from_ccxt(self.markets[symbol], self.ccxt.precisionMode)
            amounts, prices = self.samples(symbol, 1)
            for amount in amounts:
                expected = float(self.ccxt.amount_to_precision(symbol, amount))
                self.assertEqual(rules.round_amount(amount), expected,
                                 f"{symbol} amount {amount!r}")
            for price in prices:
                expected = float(self.ccxt.price_to_precision(symbol, price))
                self.assertEqual(rules.round_price(price), expected, f"{symbol} price {price!r}")
            checked += len(amounts) + len(prices)
        self.assertGreater(checked, 30 * 2 * SAMPLES)

    def test_the_other_precision_modes_round_as_ccxt_rounds_them(self) -> None:
        rng = random.Random(11)
        for mode in (DECIMAL_PLACES, SIGNIFICANT_DIGITS):
            for _ in range(SAMPLES):
                amount_digits, price_digits = rng.randint(1 if mode == SIGNIFICANT_DIGITS else 0, 8), \
                    rng.randint(1, 8)
                rules = MarketRules("X/USDT", amount_digits, price_digits, mode)
                amount, price = 10 ** rng.uniform(-2, 6), 10 ** rng.uniform(-4, 5)
                want_amount = float(decimal_to_precision(amount, TRUNCATE, amount_digits, mode,
                                                         NO_PADDING))
                want_price = float(decimal_to_precision(price, ROUND, price_digits, mode,
                                                        NO_PADDING))
                if want_amount > 0:   # ccxt returns 0 where an order would be refused
                    self.assertEqual(rules.round_amount(amount), want_amount,
                                     f"mode {mode} amount {amount!r} to {amount_digits}")
                if want_price > 0:
                    self.assertEqual(rules.round_price(price), want_price,
                                     f"mode {mode} price {price!r} to {price_digits}")

    def test_a_price_half_way_between_two_ticks_rounds_as_ccxt_does(self) -> None:
        # The mid of a one-tick spread lies exactly half a tick off the grid. ccxt rounds such
        # a tie up in TICK_SIZE and DECIMAL_PLACES modes, and so do we. (In SIGNIFICANT_DIGITS
        # mode ccxt rounds 98765 and 98775 both down; we round halves up there too and do not
        # copy that: the mode is rare and a tie costs at most one digit of the last place.)
        symbol = "BTC/USDT"   # tick 0.1
        rules = self.client.rules(symbol)
        mismatches = []
        for price in (60000.05, 60000.15, 60000.25, 59999.95):
            want = float(self.ccxt.price_to_precision(symbol, price))
            if rules.round_price(price) != want:
                mismatches.append(f"TICK_SIZE 0.1: {price!r} -> {rules.round_price(price)!r}, "
                                  f"ccxt {want!r}")
        for mode, digits, price in ((DECIMAL_PLACES, 0, 2.5), (DECIMAL_PLACES, 2, 1.125)):
            want = float(decimal_to_precision(price, ROUND, digits, mode, NO_PADDING))
            got = MarketRules("X/USDT", None, digits, mode).round_price(price)
            if got != want:
                mismatches.append(f"mode {mode} ({digits}): {price!r} -> {got!r}, ccxt {want!r}")
        self.assertEqual(mismatches, [])

    def test_round_order_limits_are_the_sim_exchanges_filters(self) -> None:
        for symbol in self.market.symbols[:5]:
            m, rules = self.markets[symbol], self.client.rules(symbol)
            price = self.market.last_price(m["id"])
            self.assertEqual(rules.min_amount, m["limits"]["amount"]["min"])
            self.assertEqual(rules.max_amount, m["limits"]["amount"]["max"])
            self.assertEqual(rules.min_notional, m["limits"]["cost"]["min"])
            self.assertEqual((rules.taker, rules.maker), (m["taker"], m["maker"]))
            amount = 2 * rules.min_notional / price
            got, _ = rules.round_order("buy", amount, price)
            self.assertEqual(got, float(self.ccxt.amount_to_precision(symbol, amount)))
            with self.assertRaisesRegex(OrderRejected, "notional"):
                rules.round_order("buy", 0.5 * rules.min_notional / price, price)


class ForPriceTest(unittest.TestCase):
    def test_usdt_markets(self) -> None:
        r = MarketRules.for_price("BTC/USDT", 60_000.0)
        self.assertEqual((r.step, r.tick, r.min_amount, r.max_amount, r.min_notional),
                         (1e-5, 0.1, 1e-5, 10_000.0, 5.0))
        self.assertEqual((r.taker, r.maker, r.precision_mode), (TAKER_FEE, TAKER_FEE, TICK_SIZE))
        cheap = MarketRules.for_price("PEPE/USDT", 1.2e-5, fee=0.002)
        self.assertEqual((cheap.step, cheap.tick, cheap.taker, cheap.maker), (1.0, 1e-8, 0.002, 0.002))

    def test_other_quotes_scale_the_step_by_their_minimum_notional(self) -> None:
        r = MarketRules.for_price("ETH/BTC", 0.05)
        self.assertEqual((r.step, r.min_amount, r.min_notional), (0.0001, 0.0001, 0.0001))
        self.assertEqual(r.tick, tick_size(0.05))
        self.assertEqual(r.max_amount, 100_000.0)
        self.assertEqual(MarketRules.for_price("SOL/ETH", 0.05).min_notional, 0.001)

    def test_step_and_tick_helpers(self) -> None:
        self.assertEqual([step_size(p) for p in (60_000, 3_000, 150, 30, 6.5, 0.55)],
                         [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
        self.assertEqual([tick_size(p) for p in (60_000, 150, 0.55, 1e-9)],
                         [0.1, 1e-3, 1e-6, 1e-8])
        for price in (60_000, 3_000, 150, 30, 6.5, 1.0):
            self.assertGreaterEqual(step_size(price) * price, 0.1 - 1e-12)  # a step is worth
            self.assertLessEqual(step_size(price) * price, 1.0 + 1e-12)     # 0.1-1 USDT ...
        self.assertEqual([step_size(p) for p in (0.5, 0.01, 1e-6)], [1.0, 1.0, 1.0])  # or a coin

    def test_matches_the_simulated_exchanges_markets_at_their_price_level(self) -> None:
        market = SimMarket(pairs=40, seed=2, speed=0.0)
        with SimExchangeServer(market) as server:
            client = sim_client(server, market, "sim-key", "sim-secret", timeout_ms=5000)
            for spec in market.specs:
                live = client.rules(spec.symbol)
                derived = MarketRules.for_price(spec.symbol, spec.price)
                fields = ("step", "tick", "min_amount", "max_amount", "min_notional", "taker",
                          "maker")
                self.assertEqual({f: getattr(derived, f) for f in fields},
                                 {f: getattr(live, f) for f in fields}, spec.symbol)


if __name__ == "__main__":
    unittest.main()

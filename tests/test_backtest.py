"""The backtester: exact accounting on a hand-built market, no look-ahead, gaps, the
cooldown, the ledger's books, the report and the command."""
import json
import math
import tempfile
import unittest
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import backtest as bt
import replay
from strategies import TrendMomentum
import backtest_report as report
import bot
from brokers import BacktestBroker
from domain import StrategyParams
from ledger import Ledger
from market_rules import MarketRules
from risk_manager import RiskManager
from tests.test_candle_files import RootLogging

TF = 300_000                          # 5m
T0 = 1_704_067_200_000                # 2024-01-01 00:00 UTC
N = 400
FEE = 0.001
RISK = 0.005
START = 10_001.7


def build(base: float, spike: int | None, special: dict | None = None, n: int = N,
          t0: int = T0) -> np.ndarray:
    """A hand-made pair: a zigzag uptrend (+2, -1) where every candle spans exactly 2 (so ATR
    is exactly 2), volume falling 0.5% per candle (volume ratio < 1: the rule never fires)
    except a 10x volume spike at `spike` (the rule fires there: uptrend, RSI ~68, MACD
    histogram > 0 after an up candle). `special[i](prev_close) -> (o, h, l, c)` overrides."""
    special = special or {}
    rows, prev = [], float(base)
    for i in range(n):
        if i in special:
            o, h, l, c = special[i](prev)
        elif i % 2 == 0:
            o, c = prev, prev + 2
            h, l = c, o
        else:
            o, c = prev, prev - 1
            h, l = o + 1, c
        v = 10_000.0 if i == spike else 1000.0 * 0.995 ** i
        rows.append((t0 + i * TF, o, h, l, c, v))
        prev = c
    return np.array(rows)


def flat(i: int):
    """Candle i of a sideways stretch: +1 / -1 alternating, range 2 (ATR stays 2)."""
    if i % 2:
        return lambda p: (p, p + 1.5, p - 0.5, p + 1)
    return lambda p: (p, p + 0.5, p - 1.5, p - 1)


def scenario() -> dict[str, np.ndarray]:
    """Four pairs, one trade each, never overlapping:
    AAA: entry at the open of 151, take-profit touched by candle 155;
    BBB: entry at 201, candle 203 gaps below the stop (fills at that open);
    CCC: entry at 251, candle 253 touches stop and take-profit (the stop wins);
    DDD: entry at 301, goes sideways, time limit (48 candles) at the close of 348."""
    return {
        "AAA/USDT": build(100, 150, {155: lambda p: (p, p + 10, p - 0.5, p + 1)}),
        "BBB/USDT": build(150, 200, {203: lambda p: (p - 6, p - 5.5, p - 6.5, p - 6)}),
        "CCC/USDT": build(200, 250, {253: lambda p: (p, p + 20, p - 20, p)}),
        "DDD/USDT": build(250, 300, {i: flat(i) for i in range(301, 360)}),
    }


def params(**kw) -> StrategyParams:
    base = dict(timeframe_ms=TF, stop_loss_atr=1.25, take_profit_atr=2.75, max_hold_candles=48)
    return StrategyParams(**(base | kw))


def risk() -> RiskManager:
    return RiskManager(risk_per_trade=RISK, max_open_positions=3, max_position_size=1.0,
                       max_positions_per_group=2, fee_rate=FEE)


def cents(candles) -> dict[str, MarketRules]:
    """Deterministic markets: amounts truncated to 0.01 (the minimum), prices to 0.01 (the
    hand-built prices are on that grid)."""
    return {s: MarketRules(s, amount_precision=0.01, price_precision=0.01, min_amount=0.01,
                           taker=FEE, maker=FEE) for s in candles}


def run(candles, use_model=False, strategy=None, rules=None, manager=None, **settings):
    s = dict(starting_balance=START, slippage=False, fee_rate=FEE) | settings
    return bt.run_backtest(candles, use_model=use_model, params=strategy or params(),
                           risk=manager or risk(), settings=bt.BacktestSettings(**s),
                           rules=rules or cents(candles))


class TestHandBuiltMarket(unittest.TestCase):
    def test_trades_fees_and_final_cash_are_exactly_the_hand_computed_ones(self):
        candles = scenario()
        result = run(candles)
        close = {s: a[:, 4] for s, a in candles.items()}
        cash = START
        expected = []
        # (pair, decision candle, exit candle, exit price from the price path, reason)
        plan = [("AAA/USDT", 150, 155, lambda f: f + 5.5, "take_profit"),    # take = fill + 2.75 ATR
                ("BBB/USDT", 200, 203, lambda f: f - 5.0, "stop_loss"),      # gap: the open
                ("CCC/USDT", 250, 253, lambda f: f - 2.5, "stop_loss"),      # stop = fill - 1.25 ATR
                ("DDD/USDT", 300, 348, lambda f: f, "time_limit")]           # sideways: close = fill
        for symbol, s, x, exit_price, reason in plan:
            p = close[symbol][s]                     # decided at the close of s, ATR = 2
            stop = p - 1.25 * 2.0
            size = min(cash * RISK / (p - stop), min(cash * 1.0, cash / (1 + 2 * FEE)) / p)
            amount = math.floor(size * 100) / 100
            fill = candles[symbol][s + 1, 1]         # the open of the next candle
            self.assertEqual(fill, p)
            fee_in = amount * fill * FEE
            cash -= amount * fill + fee_in
            out = exit_price(fill)
            fee_out = amount * out * FEE
            cash += amount * out - fee_out
            expected.append((symbol, amount, fill, out, T0 + (s + 1) * TF, T0 + (x + 1) * TF,
                             fee_in, fee_out, amount * out - amount * fill - fee_in - fee_out,
                             reason))
        self.assertEqual(len(result.trades), 4)
        for t, e in zip(result.trades, expected):
            got = (t.symbol, t.amount, t.entry_price, t.exit_price, t.entry_time_ms,
                   t.exit_time_ms, t.entry_fee, t.exit_fee, t.profit, t.exit_reason)
            self.assertEqual(got[:2] + got[4:6] + got[9:], e[:2] + e[4:6] + e[9:])
            for g, w in zip(got[2:4] + got[6:9], e[2:4] + e[6:9]):
                self.assertAlmostEqual(g, w, places=9)
        self.assertAlmostEqual(result.final_equity, cash, places=8)
        self.assertAlmostEqual(result.fees, sum(e[6] + e[7] for e in expected), places=9)
        self.assertEqual(result.trades[0].amount, 20.0)   # 10001.7 * 0.005 / 2.5, truncated

    def test_entries_fill_at_the_next_open_and_exits_are_checked_on_that_candle_onwards(self):
        result = run(scenario())
        entry = next(e for e in result.events if e[0] == "entry")
        fill = next(e for e in result.events if e[0] == "fill_buy")
        self.assertEqual(entry[1], T0 + 151 * TF)      # decided at the close of candle 150
        self.assertEqual(fill[1], T0 + 151 * TF)       # filled at the open of candle 151

    def test_slippage_walks_the_synthetic_book_and_costs_money(self):
        candles = scenario()
        exact = run(candles)
        slipped = run(candles, slippage=True)
        self.assertEqual(len(slipped.trades), 4)
        for t in slipped.trades:
            opened = candles[t.symbol][candles[t.symbol][:, 0] == t.entry_time_ms][0, 1]
            self.assertGreater(t.entry_price, opened)             # buys pay above the open
            self.assertLess(t.entry_price, opened * 1.01)
            self.assertAlmostEqual(t.entry_fee, t.amount * t.entry_price * FEE)
        intents = [e[3] for e in slipped.events if e[0] == "exit"]
        fills = [e[4] for e in slipped.events if e[0] == "fill_sell"]
        for intended, got in zip(intents, fills):
            self.assertLess(got, intended)                        # sells get less
        self.assertLess(slipped.final_equity, exact.final_equity)

    def test_metrics_and_report(self):
        result = run(scenario())
        m = report.compute_metrics(result)
        self.assertEqual(m["trades"], 4)
        self.assertEqual(m["win_rate_pct"], 25.0)
        self.assertEqual(m["exit_reasons"], {"stop_loss": 2, "take_profit": 1, "time_limit": 1})
        wins = result.trades[0].profit
        losses = -sum(t.profit for t in result.trades[1:])
        self.assertAlmostEqual(m["profit_factor"], wins / losses)
        self.assertAlmostEqual(m["total_return_pct"], 100 * (result.final_equity / START - 1))
        held = sum((x - s) for s, x in ((151, 156), (201, 204), (251, 254), (301, 349)))
        self.assertAlmostEqual(m["exposure_pct"], 100 * held / N)
        # buy and hold: a quarter of the balance in each pair, first open to last close
        bh = sum(START / 4 * (1 - FEE) / a[0, 1] * a[-1, 4] * (1 - FEE)
                 for a in scenario().values())
        self.assertAlmostEqual(m["buy_hold_return_pct"], 100 * (bh / START - 1))
        self.assertGreater(m["max_drawdown_pct"], 0)
        text = report.format_report(result)
        for needle in ("win rate 25.0%", "AAA/USDT", "buy & hold", "Sharpe", "Sortino",
                       "profit factor", "exposure", "fees paid"):
            self.assertIn(needle, text)
        with tempfile.TemporaryDirectory() as tmp:
            json_path, png_path = report.write_report(result, Path(tmp) / "rep")
            written = json.loads(json_path.read_text())
            self.assertEqual(png_path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(len(written["trades"]), 4)
        self.assertEqual(set(written["trades"][0]), {
            "symbol", "entry_time_ms", "exit_time_ms", "entry_price", "exit_price", "amount",
            "entry_fee", "exit_fee", "profit", "return_pct", "exit_reason", "entry_reason",
            "probability"})
        self.assertEqual([r["pair"] for r in written["pairs"]], sorted(scenario()))
        self.assertEqual(set(written), {"summary", "conventions", "pairs", "trades",
                                        "equity_curve"})


MAKER = 0.0002


def maker_rules(candles) -> dict[str, MarketRules]:
    """The cent markets of `cents`, with a maker fee (0.02 %) other than the taker fee."""
    return {s: MarketRules(s, amount_precision=0.01, price_precision=0.01, min_amount=0.01,
                           taker=FEE, maker=MAKER) for s in candles}


def limit(**kw) -> dict:
    """Settings of a limit-entry replay: rests one candle, no reprice unless told."""
    return {"entry_order": "limit", "limit_timeout_ms": TF, "limit_reprices": 0} | kw


def at(i: int) -> int:
    """The open time of candle i (= the close of candle i - 1)."""
    return T0 + i * TF


def rising(p):
    """An up candle with no lower wick: it opens at the previous close and never trades
    below it, so a limit buy at that close is touched, not filled."""
    return (p, p + 1, p, p + 1)


class TestLimitEntries(unittest.TestCase):
    """ENTRY_ORDER=limit: a post-only buy at the decision's close, filled at its price with
    the maker fee when a later candle trades below it; repriced after the timeout, then
    given up. AAA's rule fires at the close of candle 150 (close 177, ATR 2: stop 174.5,
    take-profit 182.5, 20 units as in the hand-computed test above)."""

    def limit_run(self, special, **kw):
        candles = {"AAA/USDT": build(100, 150, special)}
        return candles, run(candles, rules=maker_rules(candles), **limit(**kw))

    def test_fills_at_its_price_with_the_maker_fee_when_the_low_goes_below(self):
        # candle 151 opens at 177.5 (a market buy pays that), trades down to 176.5
        special = {151: lambda p: (p + 0.5, p + 1, p - 0.5, p)}
        candles, result = self.limit_run(special)
        self.assertEqual([e for e in result.events if e[0] == "limit_placed"],
                         [("limit_placed", at(151), "AAA/USDT", 177.0, 20.0, 0)])
        self.assertEqual(len(result.trades), 1)
        t = result.trades[0]
        self.assertEqual((t.amount, t.entry_price, t.entry_time_ms), (20.0, 177.0, at(151)))
        self.assertEqual(t.entry_fee, 20.0 * 177.0 * MAKER)
        # its stops keep the intent's distances: take-profit 182.5, first reached by 159's
        # high (it opens at 182 and reaches 183)
        self.assertEqual((t.exit_price, t.exit_time_ms, t.exit_reason),
                         (182.5, at(160), "take_profit"))
        cash = START - (20.0 * 177.0 + 20.0 * 177.0 * MAKER) + 20.0 * 182.5 * (1 - FEE)
        self.assertAlmostEqual(result.final_equity, cash, places=9)
        # the same decision as a market order: at the open, with the taker fee
        market = run(candles, rules=maker_rules(candles))
        m = market.trades[0]
        self.assertEqual((m.entry_price, m.entry_time_ms), (177.5, at(151)))
        self.assertAlmostEqual(m.entry_fee, 20.0 * 177.5 * FEE, places=12)

    def test_a_touch_does_not_fill(self):
        # candle 151 trades down to exactly 177 then rises; no later candle goes lower
        _, touched = self.limit_run({151: lambda p: (p, p + 2, p, p + 2)})
        self.assertEqual([e[0] for e in touched.events], ["entry", "limit_placed", "entry_expired"])
        self.assertEqual(touched.events[-1],
                         ("entry_expired", at(152), "AAA/USDT", "not filled after 0 reprice(s)"))
        self.assertEqual((touched.trades, touched.final_equity), ([], START))
        # one cent below the limit fills it
        _, below = self.limit_run({151: lambda p: (p, p + 2, p - 0.01, p + 2)})
        self.assertIn(("fill_buy", at(151), "AAA/USDT", 20.0, 177.0, 20.0 * 177.0 * MAKER),
                      below.events)

    def test_times_out_is_repriced_at_the_new_close_then_expires(self):
        special = {i: rising for i in range(151, 170)}      # closes 178, 179, 180, ...
        # a timeout of one candle and a millisecond rests two candles
        _, result = self.limit_run(special, limit_timeout_ms=TF + 1, limit_reprices=1)
        self.assertEqual(result.events[1:], [
            ("limit_placed", at(151), "AAA/USDT", 177.0, 20.0, 0),
            ("limit_placed", at(153), "AAA/USDT", 179.0, 20.0, 1),     # at 152's close
            ("entry_expired", at(155), "AAA/USDT", "not filled after 1 reprice(s)")])
        self.assertEqual(result.trades, [])
        # 153 dips a cent below the new limit (the first, 177, it never reaches): fills at 179
        special[153] = lambda p: (p, p + 1, p - 0.01, p + 1)
        _, filled = self.limit_run(special, limit_timeout_ms=TF + 1, limit_reprices=1)
        self.assertIn(("fill_buy", at(153), "AAA/USDT", 20.0, 179.0, 20.0 * 179.0 * MAKER),
                      filled.events)
        t = filled.trades[0]
        self.assertEqual((t.entry_price, t.entry_time_ms), (179.0, at(153)))
        self.assertNotIn("entry_expired", [e[0] for e in filled.events])
        # without a reprice it expires at the first timeout
        _, once = self.limit_run(special, limit_timeout_ms=TF + 1)
        self.assertEqual(once.events[-1],
                         ("entry_expired", at(153), "AAA/USDT", "not filled after 0 reprice(s)"))

    def test_exits_on_the_fill_candle_see_only_what_came_after_the_fill(self):
        # 151 opens at 177.1 and reaches 183 (above the take-profit) before it falls to
        # 176.5: the limit buy filled on the way down, so that high is not its take-profit
        _, high_first = self.limit_run({151: lambda p: (p + 0.1, p + 6, p - 0.5, p - 0.2)})
        self.assertNotIn(("exit", at(152), "AAA/USDT", 182.5, "take_profit"), high_first.events)
        self.assertEqual(high_first.trades[0].exit_time_ms, at(160))    # 159's high, as above
        # 151 falls through the stop (174.5) after the fill: stopped out at its close
        _, stopped = self.limit_run({151: lambda p: (p + 0.1, p + 0.5, p - 3, p - 2.8)})
        t = stopped.trades[0]
        self.assertEqual((t.entry_price, t.exit_price, t.exit_time_ms, t.exit_reason),
                         (177.0, 174.5, at(152), "stop_loss"))

    def test_a_resting_entry_holds_its_cash_and_its_pair(self):
        """AAA (rule at 150 and at 153) and BBB (rule at 153) rest without filling; sizing
        is bound by cash, so BBB gets only what AAA's order leaves."""
        def pair(base, spikes):
            a = build(base, None, {151: lambda p: (p, p + 1, p, p)})   # lows stay >= 177
            a[list(spikes), 5] = 10_000.0
            return a

        manager = lambda: RiskManager(risk_per_trade=1.0, max_open_positions=3,  # noqa: E731
                                      max_position_size=1.0, max_positions_per_group=2,
                                      fee_rate=FEE)
        candles = {"AAA/USDT": pair(100, (150, 153)), "BBB/USDT": pair(150, (153,))}
        result = run(candles, rules=maker_rules(candles), manager=manager(),
                     **limit(limit_timeout_ms=10 * TF))
        entries = [e for e in result.events if e[0] == "entry"]
        self.assertEqual([(e[1], e[2]) for e in entries],
                         [(at(151), "AAA/USDT"), (at(154), "BBB/USDT")])   # AAA not again
        # ... though AAA's rule does pick it at 153 when nothing rests
        alone = {"AAA/USDT": pair(100, (153,))}
        self.assertEqual([(e[1], e[2]) for e in run(alone, rules=maker_rules(alone),
                                                    manager=manager(), **limit()).events
                          if e[0] == "entry"], [(at(154), "AAA/USDT")])
        a_amount = entries[0][4]
        reserved = a_amount * 177.0 * (1 + MAKER)
        b_price, b_stop, b_amount = entries[1][3], entries[1][5], entries[1][4]
        rules = maker_rules(candles)["BBB/USDT"]
        expected = rules.round_amount(manager().size(b_price, b_stop, START - reserved, START))
        self.assertEqual(b_amount, expected)
        self.assertLess(b_amount, rules.round_amount(manager().size(b_price, b_stop, START, START)))
        self.assertEqual(result.trades, [])
        self.assertEqual(result.final_equity, START)         # expired: nothing spent

    def test_an_order_whose_pair_ends_is_given_up(self):
        candles = {"AAA/USDT": build(100, 150, {i: rising for i in range(151, 156)}, n=156)}
        result = run(candles, rules=maker_rules(candles), **limit(limit_timeout_ms=20 * TF))
        self.assertEqual(result.events[-1], ("entry_expired", at(156), "AAA/USDT",
                                             "no later candle"))

    def test_settings_from_a_config_with_or_without_the_order_settings(self):
        from types import SimpleNamespace

        old = bt.BacktestSettings.from_config(SimpleNamespace(starting_balance=500))
        self.assertEqual((old.entry_order, old.max_slippage, old.limit_timeout_ms,
                          old.limit_reprices, old.starting_balance),
                         ("market", None, bt.DEFAULT_LIMIT_TIMEOUT_S * 1000,
                          bt.DEFAULT_LIMIT_REPRICES, 500.0))
        new = bt.BacktestSettings.from_config(SimpleNamespace(
            starting_balance=500, entry_order="limit", limit_entry_timeout=90.5,
            limit_entry_reprices=4, max_slippage=0.02), start_ms=7, limit_reprices=1)
        self.assertEqual((new.entry_order, new.max_slippage, new.limit_timeout_ms,
                          new.limit_reprices, new.start_ms), ("limit", 0.02, 90_500, 1, 7))
        self.assertEqual(replay.timeout_candles(90_500, TF), 1)
        self.assertEqual(replay.timeout_candles(TF, TF), 1)
        self.assertEqual(replay.timeout_candles(TF + 1, TF), 2)
        with self.assertRaises(ValueError):
            bt.BacktestSettings(entry_order="stop")


class TestSlippageGuard(unittest.TestCase):
    def test_a_large_market_buy_fills_only_within_the_guard(self):
        """AAA's 20-unit buy at 151's open (177) on the synthetic book: its best ask holds
        12.88 at 177.04 and the next level, 177.18, is 0.08 % above it; a 0.05 % guard
        takes the first level only."""
        candles = {"AAA/USDT": scenario()["AAA/USDT"]}
        unguarded = run(candles, slippage=True)
        self.assertEqual(unguarded.trades[0].amount, 20.0)
        guarded = run(candles, slippage=True, max_slippage=0.0005)
        data = bt._prepare(candles, TrendMomentum(), params(), bt.BacktestSettings(), cents(candles))
        asks = replay.book_quote(177.0, at(151), float(data.book_vol[150]), float(data.book_qv[150]),
                             data.rules[0]).levels("buy")
        (best, qty), (second, _) = asks[0], asks[1]
        self.assertEqual((best, qty), (177.04, 12.88))          # the book this test is about
        self.assertGreater(second, best * 1.0005)
        buy = next(e for e in guarded.events if e[0] == "fill_buy")
        self.assertEqual(buy, ("fill_buy", at(151), "AAA/USDT", 12.88, 177.04,
                               12.88 * 177.04 * FEE))
        trades = guarded.trades
        self.assertEqual(trades[0].entry_price, 177.04)
        self.assertAlmostEqual(sum(t.amount for t in trades), 12.88, places=12)  # all sold
        self.assertAlmostEqual(guarded.final_equity, START + math.fsum(t.profit for t in trades),
                               places=9)


class TestGapsAndMisalignedPairs(unittest.TestCase):
    def test_no_candle_after_the_decision_drops_the_entry(self):
        candles = scenario()
        candles["AAA/USDT"] = np.delete(candles["AAA/USDT"], 151, axis=0)
        result = run(candles)
        dropped = [e for e in result.events if e[0] == "entry_dropped"]
        self.assertEqual([(e[1], e[2]) for e in dropped], [(T0 + 151 * TF, "AAA/USDT")])
        self.assertNotIn("AAA/USDT", {t.symbol for t in result.trades})

    def test_a_missing_candle_is_not_invented(self):
        candles = scenario()
        candles["AAA/USDT"] = np.delete(candles["AAA/USDT"], 155, axis=0)   # the take-profit bar
        result = run(candles)
        trade = next(t for t in result.trades if t.symbol == "AAA/USDT")
        self.assertNotEqual(trade.exit_time_ms, T0 + 156 * TF)   # nothing happened at the hole
        self.assertGreater(trade.exit_time_ms, T0 + 156 * TF)
        # indicators run over the pair's own candles, not over a filled-in grid
        data = bt._prepare(candles, TrendMomentum(), params(), bt.BacktestSettings())
        from indicators import compute_all
        a = candles["AAA/USDT"]
        own = compute_all(a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5])
        p = data.symbols.index("AAA/USDT")
        rows = slice(data.first[p], data.last[p] + 1)
        np.testing.assert_array_equal(data.ind["atr"][rows], own["atr"])
        self.assertEqual((data.at[p] >= 0).sum(), N - 1)

    def test_pairs_join_after_enough_history_and_leave_at_their_last_candle(self):
        late = build(300, 200, t0=T0 + 100 * TF, n=206)    # global candles 100..305
        late[50, 5] = 50_000.0          # a spike at global 150, with only 51 candles of history
        candles = {"AAA/USDT": build(100, None), "EEE/USDT": late}
        result = run(candles)
        entries = [e for e in result.events if e[0] == "entry"]
        self.assertEqual([(e[1], e[2]) for e in entries], [(T0 + 301 * TF, "EEE/USDT")])
        trade = result.trades[0]
        self.assertEqual((trade.symbol, trade.exit_reason), ("EEE/USDT", "end_of_data"))
        self.assertEqual(trade.exit_time_ms, T0 + 306 * TF)
        self.assertAlmostEqual(trade.exit_price, late[-1, 4], places=9)
        # its buy-and-hold share waits in cash until the pair starts
        self.assertAlmostEqual(result.buy_hold[0], START / 2 + START / 2 * (1 - FEE)
                               * candles["AAA/USDT"][0, 4] / candles["AAA/USDT"][0, 1])

    def test_start_and_end_dates_warm_up_before_and_cut_after(self):
        result = run(scenario(), start_ms=T0 + 200 * TF, end_ms=T0 + 300 * TF)
        self.assertEqual(result.times_ms[0], T0 + 200 * TF)
        self.assertEqual(result.times_ms[-1], T0 + 299 * TF)
        self.assertEqual([t.symbol for t in result.trades], ["BBB/USDT", "CCC/USDT"])


LIMIT = {"entry_order": "limit", "limit_timeout_ms": TF, "limit_reprices": 1}


def touching(candles: dict, share: float = 0.6, seed: int = 3) -> dict:
    """The candles with no lower wick on `share` of them (low = min(open, close)): a limit
    buy at the previous close is then only touched by an up candle (the simulated market's
    lows are otherwise nearly always below the previous close, so every limit buy fills on
    the next candle)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s, a in candles.items():
        b = a.copy()
        m = rng.random(len(b)) < share
        b[m, 3] = np.minimum(b[m, 1], b[m, 4])
        out[s] = b
    return out


def perturbed(candles: dict, cut: int, seed: int = 7) -> dict:
    """Every candle from `cut` on scaled by a random walk and given another volume."""
    rng = np.random.default_rng(seed)
    out = {}
    for s, a in candles.items():
        b = a.copy()
        k = np.exp(np.cumsum(rng.normal(0, 0.01, len(a) - cut)))
        b[cut:, 1:5] *= k[:, None]
        b[cut:, 5] *= rng.uniform(0.2, 5.0, len(a) - cut)
        out[s] = b
    return out


class TestNoLookAhead(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from sim_market import simulated_ohlcv

        cls.candles = simulated_ohlcv(4, 11, "5m", 1400)
        cls.cut = 1000
        cls.cut_ms = int(next(iter(cls.candles.values()))[cls.cut, 0])

    def replay(self, candles, use_model, cooldown=1, skip=True, **settings):
        s = bt.BacktestSettings(starting_balance=10_000.0, retrain_interval_ms=12 * 3_600_000,
                                retrain_min_new_samples=1, skip_idle_steps=skip, min_auc=0.0,
                                **settings)
        r = RiskManager(0.01, 3, 0.3, 2, fee_rate=FEE)
        return bt.run_backtest(candles, use_model=use_model,
                               params=StrategyParams(timeframe_ms=TF, min_confidence=0.45,
                                                     cooldown_candles=cooldown),
                               risk=r, settings=s)

    def before_cut(self, result):
        return [e for e in result.events if e[1] < self.cut_ms]

    def check(self, use_model, candles=None, **settings):
        candles = self.candles if candles is None else candles
        full = self.replay(candles, use_model, **settings)
        early = self.before_cut(full)
        self.assertGreater(sum(e[0] == "entry" for e in early), 3)     # decisions to compare
        changed = self.replay(perturbed(candles, self.cut), use_model, **settings)
        self.assertEqual(self.before_cut(changed), early)
        self.assertNotEqual(changed.events, full.events)                # the future did change
        cut = self.replay({s: a[: self.cut] for s, a in candles.items()}, use_model, **settings)
        self.assertEqual(self.before_cut(cut), early)
        return full

    def test_decisions_ignore_every_later_candle_without_the_model(self):
        self.check(use_model=False)

    def test_decisions_ignore_every_later_candle_with_the_walk_forward_model(self):
        full = self.check(use_model=True)
        self.assertGreater(full.trainings, 2)
        self.assertTrue(any(e[0] == "entry" and e[7] == "model" and e[1] < self.cut_ms
                            for e in full.events))

    def test_decisions_ignore_every_later_candle_with_limit_entries(self):
        for use_model in (False, True):
            with self.subTest(use_model=use_model):
                full = self.check(use_model, touching(self.candles), **LIMIT)
                kinds = {e[0] for e in self.before_cut(full)}
                self.assertLessEqual({"limit_placed", "fill_buy", "entry_expired"}, kinds)

    def test_skipping_idle_steps_changes_nothing(self):
        for use_model, cooldown, mode in ((False, 0, {}), (False, 1, {}), (True, 1, {}),
                                          (True, 3, {}), (False, 0, LIMIT), (False, 1, LIMIT),
                                          (True, 1, LIMIT), (True, 3, LIMIT)):
            with self.subTest(use_model=use_model, cooldown=cooldown, mode=mode):
                candles = touching(self.candles) if mode else self.candles
                slow = self.replay(candles, use_model, cooldown, skip=False, **mode)
                fast = self.replay(candles, use_model, cooldown, **mode)
                self.assertEqual(fast.trades, slow.trades)
                self.assertEqual(fast.events, slow.events)
                self.assertEqual(fast.final_equity, slow.final_equity)
                if mode:       # the limit path ran: reprices, expiries, a busy pair skipped
                    kinds = {e[0] for e in fast.events}
                    self.assertLessEqual({"limit_placed", "fill_buy", "entry_expired"}, kinds)
                    self.assertTrue(any(e[0] == "limit_placed" and e[5] == 1 for e in fast.events))

    def test_a_pair_with_a_resting_limit_entry_is_not_entered_again(self):
        result = self.replay(touching(self.candles), False, 0, skip=False,
                             **(LIMIT | {"limit_timeout_ms": 6 * TF}))
        resting: set[str] = set()
        reprices = 0
        for e in result.events:
            if e[0] == "entry":
                self.assertNotIn(e[2], resting)
            elif e[0] == "limit_placed":
                reprices += e[2] in resting
                resting.add(e[2])
            elif e[0] in ("fill_buy", "entry_expired", "entry_rejected"):
                resting.discard(e[2])
        self.assertGreater(reprices, 3)        # orders rested for a while


class TestInterrupt(unittest.TestCase):
    def test_ctrl_c_returns_the_partial_result_with_positions_closed(self):
        calls = []

        def progress(n):
            calls.append(n)
            if sum(calls) >= 320:            # DDD's position is open (301..348)
                raise KeyboardInterrupt

        s = bt.BacktestSettings(starting_balance=START, slippage=False)
        with self.assertLogs("backtest", "WARNING"):
            result = bt.run_backtest(scenario(), use_model=False, params=params(), risk=risk(),
                                     settings=s, rules=cents(scenario()), progress=progress)
        self.assertTrue(result.interrupted)
        self.assertLess(len(result.times_ms), N)
        self.assertEqual(result.trades[-1].exit_reason, "end_of_backtest")
        self.assertAlmostEqual(result.final_equity, result.equity[-1])
        self.assertIn("INTERRUPTED", report.format_report(result))


def cooldown_market() -> dict[str, np.ndarray]:
    """One pair whose rule fires at the closes of 150, 154 and 155 (volume spikes after up
    candles; 155 is made an up candle). With a 4-candle time limit the entry filled at 151
    is sold at the close of 154, right when the rule fires again."""
    a = build(100, 150, {155: lambda p: (p, p + 1, p, p + 1)})
    a[[154, 155], 5] = 10_000.0
    return {"AAA/USDT": a}


class TestCooldown(unittest.TestCase):
    def entries(self, cooldown: int) -> list[tuple[int, int]]:
        """(decision close, fill open) of every entry, in candle indices."""
        result = run(cooldown_market(), strategy=params(max_hold_candles=4,
                                                        cooldown_candles=cooldown))
        first = result.trades[0]
        self.assertEqual((first.entry_time_ms, first.exit_time_ms, first.exit_reason),
                         (T0 + 151 * TF, T0 + 155 * TF, "time_limit"))
        return [((e[1] - T0) // TF - 1, (f[1] - T0) // TF)
                for e, f in zip([e for e in result.events if e[0] == "entry"],
                                [e for e in result.events if e[0] == "fill_buy"])]

    def test_a_pair_is_not_re_entered_on_the_close_it_was_sold_at(self):
        self.assertEqual(self.entries(1)[:2], [(150, 151), (155, 156)])   # the next close may

    def test_without_the_cooldown_it_is_bought_back_at_once(self):
        self.assertEqual(self.entries(0)[:2], [(150, 151), (154, 155)])

    def test_a_longer_cooldown_waits_longer(self):
        self.assertNotIn(155, [d for d, _ in self.entries(2)])

    def test_skipping_idle_steps_respects_the_cooldown(self):
        for cooldown in (0, 1, 2):
            strategy = params(max_hold_candles=4, cooldown_candles=cooldown)
            fast = run(cooldown_market(), strategy=strategy)
            slow = run(cooldown_market(), strategy=strategy, skip_idle_steps=False)
            self.assertEqual(fast.events, slow.events)


class TestBooks(unittest.TestCase):
    """Fills come from the broker, books from the ledger: cash is the balance plus the
    trades' profits, and every fill event is one side of a trade."""

    @classmethod
    def setUpClass(cls):
        from sim_market import simulated_ohlcv

        cls.candles = simulated_ohlcv(4, 5, "5m", 1500)
        s = bt.BacktestSettings(starting_balance=10_000.0, retrain_interval_ms=12 * 3_600_000,
                                retrain_min_new_samples=1,   # refit every 12 h, as it did
                                min_auc=0.0)   # every fit filters, trusted or not
        cls.results = [bt.run_backtest(cls.candles, use_model=m, settings=s,
                                       params=StrategyParams(timeframe_ms=TF, min_confidence=0.45),
                                       risk=RiskManager(0.01, 3, 0.3, 2, fee_rate=FEE))
                       for m in (False, True)]

    def test_cash_is_the_starting_balance_plus_the_profits(self):
        for result in self.results:
            self.assertGreater(len(result.trades), 10)
            profits = math.fsum(t.profit for t in result.trades)
            self.assertAlmostEqual(result.final_equity, 10_000.0 + profits, places=6)

    def test_every_fill_is_a_side_of_a_trade(self):
        for result in self.results:
            buys = [e for e in result.events if e[0] == "fill_buy"]
            sells = [e for e in result.events if e[0] == "fill_sell"]
            self.assertEqual(len(buys), len(result.trades))
            self.assertEqual(sorted((e[2], e[1], e[3], e[4], e[5]) for e in buys),
                             sorted((t.symbol, t.entry_time_ms, t.amount, t.entry_price,
                                     t.entry_fee) for t in result.trades))
            self.assertEqual([(e[2], e[1], e[4], e[5], e[6]) for e in sells],
                             [(t.symbol, t.exit_time_ms, t.exit_price, t.exit_fee, t.exit_reason)
                              for t in result.trades])
            self.assertAlmostEqual(result.fees, sum(e[5] for e in buys + sells), places=9)
            for t in result.trades:
                self.assertAlmostEqual(t.entry_fee, t.amount * t.entry_price * FEE, places=9)

    # sha256 of (events, trades, equity curve, exposure) of the two replays above (no model,
    # model) as the backtester computed them before limit entries and the slippage guard
    # (commit ae59499): market entries without a guard must stay bit-identical. A deliberate
    # change of the market fill model (or of the simulated candles) changes them: recompute
    # with `digest` and say why in the commit. The model's digest changed once since, on
    # purpose: the model became a meta-labelling filter of the strategy's signals (the
    # no-model digest, through the new strategy and exit engine, did not change); and again
    # when the backtest began to train through ml_model.train_model as the live bot does
    # (same trades and equity; the probabilities' last bits moved); and again when the
    # logistic model's solver became Newton-Cholesky (same trades and equity). Both changed
    # when the indicators' exponential smoothing moved from scipy's lfilter to numpy
    # (indicators._smooth, within 1e-14 of it: the same trades and final equity; the ATR
    # stops' last bits moved).
    MARKET_DIGESTS = ("d6857dd42674ac1ff3610a4eaa82f36c1b3794b081ed7e62ffd9713eefa160f5",
                      "22dfa5e39a63f0af905f9a5cc06ce8682101c55afe88b42c7af4f9c016514101")

    @staticmethod
    def digest(result) -> str:
        import hashlib

        h = hashlib.sha256()
        h.update(repr(result.events).encode())
        h.update(repr(result.trades).encode())
        h.update(result.equity.tobytes())
        h.update(result.exposed.tobytes())
        return h.hexdigest()

    def test_market_entries_are_bit_identical_to_the_replay_before_limit_entries(self):
        self.assertEqual(bt.BacktestSettings().entry_order, "market")
        self.assertIsNone(bt.BacktestSettings().max_slippage)
        self.assertEqual(tuple(self.digest(r) for r in self.results), self.MARKET_DIGESTS)
        self.assertEqual([len(r.trades) for r in self.results], [138, 76])
        self.assertEqual([r.final_equity for r in self.results],
                         [9412.066445785, 9650.095375357001])

    def test_each_pair_trades_on_the_simulated_exchange_rules_of_its_price(self):
        data = bt._prepare(self.candles, TrendMomentum(), StrategyParams(timeframe_ms=TF), bt.BacktestSettings())
        for symbol, rules in zip(data.symbols, data.rules):
            self.assertEqual(rules, MarketRules.for_price(symbol, self.candles[symbol][0, 4]))
        for t in self.results[0].trades:
            rules = data.rules[data.symbols.index(t.symbol)]
            self.assertEqual(rules.round_amount(t.amount), t.amount)   # on the amount step


class TestBookQuote(unittest.TestCase):
    def test_orders_walk_the_synthetic_book_around_the_price(self):
        a = build(100, None)
        vol, qv = replay.book_inputs(a, TF)
        self.assertEqual((vol.shape, qv.shape), ((N,), (N,)))
        self.assertTrue((vol > 0).all() and (qv > 0).all())
        rules = MarketRules.for_price("AAA/USDT", 250.0, fee=FEE)
        quote = replay.book_quote(250.0, T0, float(vol[-1]), float(qv[-1]), rules)
        self.assertEqual((quote.price, quote.timestamp_ms), (250.0, T0))
        self.assertGreater(quote.levels("buy")[0][0], 250.0)
        self.assertLess(quote.levels("sell")[0][0], 250.0)
        broker = BacktestBroker({"AAA/USDT": rules}, Ledger(1e7))
        broker.quotes["AAA/USDT"] = quote
        buy = broker.market_order("AAA/USDT", "buy", 10.0, "t-1")
        self.assertGreater(buy.price, 250.0)
        self.assertAlmostEqual(buy.fee, buy.cost * FEE)
        broker.quotes["AAA/USDT"] = replay.book_quote(250.0, T0, 1.0, 1.0, rules, slippage=False)
        flat = broker.market_order("AAA/USDT", "buy", 1e4, "t-2")
        self.assertAlmostEqual(flat.price, 250.0, places=9)     # no slippage, whatever the size


class TestCommand(RootLogging, unittest.TestCase):
    def test_bad_data_dir_or_no_files_is_one_line_and_exit_2(self):
        with tempfile.TemporaryDirectory() as tmp:
            runner = CliRunner()
            for data_dir in (str(Path(tmp) / "missing"), tmp):
                res = runner.invoke(bot.backtest_command, ["--data-dir", data_dir],
                                    env={"DATA_DIR": tmp}, obj={"env_file": None})
                self.assertEqual(res.exit_code, 2, res.output)
                self.assertEqual(len(res.output.strip().splitlines()), 1, res.output)
                self.assertIn("error:", res.output)
            res = runner.invoke(bot.backtest_command, ["--data-dir", tmp, "--start", "2024-13-01"],
                                env={"DATA_DIR": tmp}, obj={"env_file": None})
            self.assertEqual(res.exit_code, 2)

    def test_files_in_a_directory_give_the_report(self):
        from candle_files import write_candles

        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            data.mkdir()
            for s, a in scenario().items():
                write_candles(data / f"{s.replace('/', '_')}-5m.csv", a)
            res = CliRunner().invoke(
                bot.backtest_command, ["--data-dir", str(data), "--no-model", "--report-dir",
                                      str(Path(tmp) / "rep"), "--pairs", "AAA/USDT,BBB/USDT"],
                env={"DATA_DIR": tmp}, obj={"env_file": None})
            self.assertEqual(res.exit_code, 0, res.output)
            self.assertIn("AAA/USDT", res.output)
            report = json.loads((Path(tmp) / "rep" / "report.json").read_text())
            self.assertEqual(report["summary"]["pairs"], 2)
            self.assertTrue((Path(tmp) / "rep" / "equity.png").is_file())

    def test_simulated(self):
        with tempfile.TemporaryDirectory() as tmp:
            res = CliRunner().invoke(
                bot.backtest_command, ["--simulated", "--sim-pairs", "2", "--sim-days", "2",
                                      "--no-model", "--report-dir", tmp],
                env={"DATA_DIR": tmp}, obj={"env_file": None})
            self.assertEqual(res.exit_code, 0, res.output)
            self.assertIn("BTC/USDT", res.output)


if __name__ == "__main__":
    unittest.main()


class TestFastForward(unittest.TestCase):
    """The fast-forward replay (the default) against the per-step reference
    (skip_idle_steps=False) on a few thousand candles: every event, trade, equity point and
    exposure flag identical, with and without the model, through trailing and break-even
    stops, the ROI table, limit entries and the slippage guard."""

    CASES = [
        (True, {}, {}),
        (False, dict(trailing_stop=0.01, trailing_offset=0.005, roi=((0, 0.03), (30, 0.01))), {}),
        (True, dict(breakeven_trigger=0.01), dict(entry_order="limit")),
        (True, dict(trailing_stop=0.02), dict(max_slippage=0.0005)),
    ]

    @classmethod
    def setUpClass(cls):
        from sim_market import simulated_ohlcv

        cls.candles = simulated_ohlcv(3, 11, "5m", 2500)

    def replay(self, use_model, params, settings, skip):
        s = bt.BacktestSettings(starting_balance=10_000.0, retrain_interval_ms=12 * 3_600_000,
                                retrain_min_new_samples=100, skip_idle_steps=skip, min_auc=0.0,
                                **settings)
        return bt.run_backtest(self.candles, use_model=use_model, settings=s,
                               params=StrategyParams(timeframe_ms=TF, min_confidence=0.45, **params),
                               risk=RiskManager(0.01, 3, 0.3, 2, fee_rate=FEE))

    def test_fast_forward_equals_the_per_step_replay(self):
        for use_model, params, settings in self.CASES:
            with self.subTest(model=use_model, **params, **settings):
                fast, reference = (self.replay(use_model, params, settings, skip)
                                   for skip in (True, False))
                self.assertGreater(len(reference.trades), 10)
                self.assertEqual(fast.events, reference.events)
                self.assertEqual(fast.trades, reference.trades)
                np.testing.assert_array_equal(fast.times_ms, reference.times_ms)
                np.testing.assert_array_equal(fast.equity, reference.equity)
                np.testing.assert_array_equal(fast.exposed, reference.exposed)
                self.assertEqual(fast.trainings, reference.trainings)

    def test_fits_ahead_on_threads_change_nothing(self):
        use_model, params, settings = self.CASES[0]
        inline = self.replay(use_model, params, settings, True)
        threads = self.replay(use_model, params, dict(settings, fit_workers=2), True)
        self.assertGreater(inline.trainings, 1)
        self.assertEqual(threads.events, inline.events)
        np.testing.assert_array_equal(threads.equity, inline.equity)

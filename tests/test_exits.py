"""exits: every exit rule on hand-built bars with exactly known outcomes, their precedence,
check_positions' reports, and signal_outcomes (the meta-labeller) agreeing with the live
engine stepped bar by bar."""
from __future__ import annotations

import unittest
from dataclasses import replace

import numpy as np

from domain import Bar, ExitIntent, Position, StrategyParams, parse_roi
import exits
from exits import (NONE, REASONS, Held, check_positions, outcome_rows, roi_level,
                   signal_outcomes, step)

TF = 300_000
MIN = 60_000
RULES = StrategyParams(timeframe_ms=TF, max_hold_candles=100)


def held(entry=100.0, stop=98.0, take=103.0, high=None, entry_ms=0) -> Held:
    """One position (arrays of shape (1,))."""
    return Held(np.array([entry]), np.array([entry_ms], dtype=np.int64), np.array([stop]),
                np.array([take]), np.array([entry if high is None else high]))


def judge(rules, h, bar, bar_open_ms=0, close_ms=TF, signal=None):
    """(reason, price, next stop, high-water) of one position over one bar (o, h, l, c)."""
    o, hi, lo, c = ([x] for x in bar)
    out = step(rules, h, o, hi, lo, c, bar_open_ms, close_ms,
               None if signal is None else [signal])
    return REASONS[out.reason[0]], float(out.price[0]), float(out.stop[0]), float(out.high[0])


def position(symbol="A/USDT", entry=100.0, stop=98.0, take=103.0, high_water=0.0,
             entry_ms=0) -> Position:
    return Position(symbol, 1.0, entry, entry_ms, stop, take, high_water=high_water)


class StopLossTests(unittest.TestCase):
    def test_stop_touched_exits_at_the_stop(self):
        self.assertEqual(judge(RULES, held(), (100.0, 100.5, 98.0, 99.0))[:2], ("stop_loss", 98.0))
        self.assertEqual(judge(RULES, held(), (100.0, 100.5, 97.5, 99.0))[:2], ("stop_loss", 98.0))
        self.assertEqual(judge(RULES, held(), (100.0, 100.5, 98.01, 99.0))[0], "")

    def test_gap_through_the_stop_fills_at_the_open(self):
        self.assertEqual(judge(RULES, held(), (96.0, 97.0, 95.0, 96.5))[:2], ("stop_loss", 96.0))


class TargetTests(unittest.TestCase):
    def test_atr_take_profit(self):
        stop, take = RULES.levels(100.0, 1.0)           # 2 ATR below, 3 ATR above
        self.assertEqual((stop, take), (98.0, 103.0))
        h = held(stop=stop, take=take)
        self.assertEqual(judge(RULES, h, (100.0, 103.5, 99.5, 103.0))[:2], ("take_profit", 103.0))
        self.assertEqual(judge(RULES, h, (100.0, 103.0, 99.5, 101.0))[:2], ("take_profit", 103.0))
        self.assertEqual(judge(RULES, h, (100.0, 102.99, 99.5, 101.0))[0], "")
        # a gap above the target fills at the open
        self.assertEqual(judge(RULES, h, (104.0, 105.0, 103.5, 104.5))[:2], ("take_profit", 104.0))

    def test_percent_take_profit_and_stop_replace_their_atr_twins(self):
        rules = replace(RULES, stop_loss_pct=0.01, take_profit_pct=0.05)
        stop, take = rules.levels(100.0, 1.0)
        self.assertAlmostEqual(stop, 99.0)
        self.assertAlmostEqual(take, 105.0)
        h = held(stop=stop, take=take)
        self.assertEqual(judge(rules, h, (100.0, 104.9, 99.5, 104.0))[0], "")
        reason, price, _, _ = judge(rules, h, (100.0, 105.5, 99.5, 105.0))
        self.assertEqual(reason, "take_profit")
        self.assertAlmostEqual(price, 105.0)
        self.assertEqual(judge(rules, h, (100.0, 101.0, 98.9, 100.0))[0], "stop_loss")

    def test_no_take_profit_when_both_settings_are_zero(self):
        rules = replace(RULES, take_profit_atr=0.0)
        _, take = rules.levels(100.0, 1.0)
        self.assertEqual(take, np.inf)
        h = held(take=take)
        self.assertEqual(judge(rules, h, (100.0, 1e9, 99.0, 100.0))[0], "")


class RoiTests(unittest.TestCase):
    ROI = replace(RULES, roi=parse_roi("60:0.01,0:0.05,30:0.02"))

    def test_roi_level_by_minutes_held(self):
        self.assertEqual(self.ROI.roi, ((0, 0.05), (30, 0.02), (60, 0.01)))
        got = roi_level(self.ROI, np.array([0, 29 * MIN, 30 * MIN - 1, 30 * MIN, 59 * MIN,
                                            60 * MIN, 10_000 * MIN]))
        np.testing.assert_array_equal(got, [0.05, 0.05, 0.05, 0.02, 0.02, 0.01, 0.01])
        self.assertTrue(np.isinf(roi_level(RULES, np.array([0, 10 ** 9]))).all())
        later = replace(RULES, roi=((10, 0.03),))
        np.testing.assert_array_equal(roi_level(later, np.array([9 * MIN, 10 * MIN])),
                                      [np.inf, 0.03])

    def test_level_is_that_of_the_time_held_at_the_bars_open(self):
        h = held(take=110.0)
        bar = (100.0, 102.5, 99.5, 101.0)
        # the bar opens 25 minutes in and closes 30 minutes in: still the 5 % level
        self.assertEqual(judge(self.ROI, h, bar, 25 * MIN, 30 * MIN)[0], "")
        reason, price, _, _ = judge(self.ROI, h, bar, 30 * MIN, 35 * MIN)
        self.assertEqual(reason, "roi")
        self.assertAlmostEqual(price, 102.0)
        reason, price, _, _ = judge(self.ROI, h, (100.0, 101.2, 99.5, 101.0), 60 * MIN, 65 * MIN)
        self.assertEqual(reason, "roi")
        self.assertAlmostEqual(price, 101.0)
        # a gap above the level fills at the open
        self.assertEqual(judge(self.ROI, h, (103.0, 103.5, 102.5, 103.0), 30 * MIN, 35 * MIN)[:2],
                         ("roi", 103.0))
        # at once: 5 % at minute 0
        self.assertEqual(judge(self.ROI, h, (100.0, 105.0, 99.5, 104.0), 0, 5 * MIN)[:2],
                         ("roi", 105.0))

    def test_the_lower_of_take_profit_and_roi_decides(self):
        h = held(take=101.5)
        self.assertEqual(judge(self.ROI, h, (100.0, 102.5, 99.5, 101.0), 30 * MIN, 35 * MIN)[:2],
                         ("take_profit", 101.5))
        h = held(take=102.5)
        reason, price, _, _ = judge(self.ROI, h, (100.0, 103.0, 99.5, 101.0), 30 * MIN, 35 * MIN)
        self.assertEqual(reason, "roi")
        self.assertAlmostEqual(price, 102.0)


class TrailingStopTests(unittest.TestCase):
    TRAIL = replace(RULES, trailing_stop=0.02, trailing_offset=0.03)

    def test_activation_distance_and_exit(self):
        h = held(take=np.inf)
        # the high stays short of the 3 % offset: the stop stays
        reason, _, stop, high = judge(self.TRAIL, h, (100.0, 102.9, 99.5, 102.0))
        self.assertEqual((reason, stop, high), ("", 98.0, 102.9))
        # the high reaches it: the stop follows 2 % below the high, from the next bar on
        h = held(take=np.inf, high=102.9)
        reason, _, stop, high = judge(self.TRAIL, h, (102.0, 103.0, 99.0, 101.0))
        self.assertEqual(reason, "")                     # 99 < 100.94, but the stop was 98
        self.assertAlmostEqual(stop, 103.0 * 0.98)
        self.assertEqual(high, 103.0)
        h = held(stop=stop, take=np.inf, high=high)
        reason, price, _, _ = judge(self.TRAIL, h, (101.5, 101.8, 100.5, 101.0))
        self.assertEqual(reason, "trailing_stop")        # the stop is above the entry
        self.assertAlmostEqual(price, 103.0 * 0.98)
        reason, price, _, _ = judge(self.TRAIL, h, (100.0, 100.2, 99.0, 99.5))
        self.assertEqual((reason, price), ("trailing_stop", 100.0))   # gap: at the open

    def test_stops_never_fall(self):
        h = held(take=np.inf)
        stops = []
        for bar in [(100.0, 105.0, 99.5, 104.0), (104.0, 104.5, 103.5, 104.0),
                    (104.0, 106.0, 103.5, 105.0), (105.0, 105.5, 104.0, 104.5)]:
            reason, _, stop, high = judge(self.TRAIL, h, bar)
            self.assertEqual(reason, "")
            stops.append(stop)
            h = Held(h.entry_price, h.entry_ms, np.array([stop]), h.take, np.array([high]))
        np.testing.assert_allclose(stops, [102.9, 102.9, 103.88, 103.88])
        # a higher stop (e.g. set by hand) is never lowered by the trail
        h = held(stop=104.0, take=np.inf, high=100.0)
        self.assertEqual(judge(self.TRAIL, h, (104.5, 105.0, 104.2, 104.5))[2], 104.0)

    def test_a_trail_still_below_the_entry_is_a_stop_loss(self):
        rules = replace(RULES, trailing_stop=0.02, trailing_offset=0.0)
        reason, _, stop, _ = judge(rules, held(take=np.inf), (100.0, 101.0, 99.5, 100.5))
        self.assertEqual(reason, "")
        self.assertAlmostEqual(stop, 98.98)                # moved, but still below 100
        h = held(stop=stop, take=np.inf, high=101.0)
        reason, price, _, _ = judge(rules, h, (99.5, 99.6, 98.5, 99.0))
        self.assertEqual(reason, "stop_loss")
        self.assertAlmostEqual(price, 98.98)


class BreakEvenTests(unittest.TestCase):
    BE = replace(RULES, breakeven_trigger=0.01, breakeven_offset=0.002)

    def test_stop_moves_to_entry_plus_offset_from_the_next_bar(self):
        h = held(take=np.inf)
        reason, _, stop, high = judge(self.BE, h, (100.0, 100.9, 99.5, 100.5))
        self.assertEqual((reason, stop), ("", 98.0))       # trigger 101 not reached
        # reached: the same bar's low (99) is below the new stop but the old one held
        reason, _, stop, high = judge(self.BE, h, (100.0, 101.5, 99.0, 101.0))
        self.assertEqual(reason, "")
        self.assertAlmostEqual(stop, 100.2)
        h = held(stop=stop, take=np.inf, high=high)
        reason, price, _, _ = judge(self.BE, h, (100.8, 101.0, 100.1, 100.5))
        self.assertEqual(reason, "trailing_stop")
        self.assertAlmostEqual(price, 100.2)
        self.assertEqual(judge(self.BE, h, (100.8, 101.0, 100.3, 100.5))[0], "")

    def test_break_even_never_lowers_a_higher_stop(self):
        h = held(stop=100.5, take=np.inf, high=101.5)
        self.assertEqual(judge(self.BE, h, (101.0, 102.0, 100.8, 101.0))[2], 100.5)


class TimeAndSignalTests(unittest.TestCase):
    def test_time_limit_at_the_close(self):
        rules = replace(RULES, max_hold_candles=3)
        bar = (100.0, 100.5, 99.5, 100.3)
        self.assertEqual(judge(rules, held(), bar, 2 * TF, 3 * TF)[:2], ("time_limit", 100.3))
        self.assertEqual(judge(rules, held(), bar, 2 * TF, 3 * TF - 1)[0], "")
        self.assertEqual(judge(rules, held(entry_ms=TF), bar, 3 * TF, 4 * TF)[0], "time_limit")

    def test_exit_signal_at_the_close(self):
        bar = (100.0, 100.5, 99.5, 100.3)
        self.assertEqual(judge(RULES, held(), bar, signal=True)[:2], ("exit_signal", 100.3))
        self.assertEqual(judge(RULES, held(), bar, signal=False)[0], "")
        self.assertEqual(judge(RULES, held(), bar)[0], "")
        off = replace(RULES, use_exit_signal=False)
        self.assertEqual(judge(off, held(), bar, signal=True)[0], "")


class PrecedenceTests(unittest.TestCase):
    def test_stop_first_then_target_then_signal_then_time(self):
        rules = replace(RULES, max_hold_candles=1, roi=((0, 0.02),))
        everything = (100.0, 104.0, 97.0, 101.0)         # stop, take, ROI, signal and time
        self.assertEqual(judge(rules, held(), everything, 0, TF, True)[:2], ("stop_loss", 98.0))
        reason, price, _, _ = judge(rules, held(), (100.0, 104.0, 99.0, 101.0), 0, TF, True)
        self.assertEqual(reason, "roi")                  # 102 < take-profit 103
        self.assertAlmostEqual(price, 102.0)
        self.assertEqual(judge(RULES, held(), (100.0, 104.0, 99.0, 101.0), 0, TF, True)[:2],
                         ("take_profit", 103.0))
        quick = replace(RULES, max_hold_candles=1)
        self.assertEqual(judge(quick, held(), (100.0, 101.0, 99.0, 100.5), 0, TF, True)[:2],
                         ("exit_signal", 100.5))
        self.assertEqual(judge(quick, held(), (100.0, 101.0, 99.0, 100.5), 0, TF, False)[:2],
                         ("time_limit", 100.5))

    def test_an_exiting_position_keeps_its_stop(self):
        rules = replace(RULES, trailing_stop=0.01)
        _, _, stop, _ = judge(rules, held(), (100.0, 104.0, 97.0, 101.0))
        self.assertEqual(stop, 98.0)

    def test_many_positions_at_once(self):
        n = 4
        h = Held(np.full(n, 100.0), np.zeros(n, np.int64), np.full(n, 98.0), np.full(n, 103.0),
                 np.full(n, 100.0))
        out = step(RULES, h, [100.0, 100.0, 100.0, 100.0], [100.5, 103.5, 100.5, 100.5],
                   [97.0, 99.0, 99.0, 99.0], [99.0, 103.0, 100.2, 100.1], 0, TF,
                   [False, False, True, False])
        self.assertEqual([REASONS[r] for r in out.reason],
                         ["stop_loss", "take_profit", "exit_signal", ""])
        np.testing.assert_array_equal(out.price[:3], [98.0, 103.0, 100.2])
        self.assertTrue(np.isnan(out.price[3]))
        self.assertEqual(out.reason[3], NONE)


class CheckPositionsTests(unittest.TestCase):
    def test_exits_and_bars_of_other_symbols(self):
        positions = {"A/USDT": position("A/USDT"), "B/USDT": position("B/USDT"),
                     "C/USDT": position("C/USDT")}
        bars = {"A/USDT": Bar(100.0, 100.5, 97.0, 99.0), "B/USDT": Bar.at(104.0),
                "D/USDT": Bar.at(1.0)}
        up = check_positions(positions, bars, TF, RULES)
        self.assertEqual(up.exits, [ExitIntent("A/USDT", 98.0, "stop_loss"),
                                    ExitIntent("B/USDT", 104.0, "take_profit")])
        self.assertEqual(up.moved, {})
        self.assertEqual(check_positions(positions, {}, TF, RULES), ([], {}))
        up = check_positions(positions, {"C/USDT": Bar.at(100.0)}, TF, RULES,
                             exit_signals={"C/USDT": True})
        self.assertEqual(up.exits, [ExitIntent("C/USDT", 100.0, "exit_signal")])
        up = check_positions(positions, {"C/USDT": Bar.at(100.0)}, TF, RULES,
                             exit_signals={"A/USDT": True})
        self.assertEqual(up.exits, [])

    def test_bar_open_defaults_to_the_close_time(self):
        rules = replace(RULES, roi=((30, 0.01),))
        positions = {"A/USDT": position(take=110.0)}
        bar = {"A/USDT": Bar(101.0, 101.5, 100.8, 101.2)}
        self.assertEqual(check_positions(positions, bar, 30 * MIN, rules).exits,
                         [ExitIntent("A/USDT", 101.0, "roi")])
        self.assertEqual(check_positions(positions, bar, 30 * MIN, rules,
                                         bar_open_ms=25 * MIN).exits, [])

    def test_moved_reports_only_stop_changes_without_trailing(self):
        positions = {"A/USDT": position()}
        up = check_positions(positions, {"A/USDT": Bar(100.0, 102.5, 99.5, 102.0)}, TF, RULES)
        self.assertEqual((up.exits, up.moved), ([], {}))   # a new high alone is no news

    def test_moved_reports_high_water_changes_with_trailing_or_break_even(self):
        trail = replace(RULES, trailing_stop=0.02, trailing_offset=0.03)
        positions = {"A/USDT": position(take=np.inf)}
        up = check_positions(positions, {"A/USDT": Bar(100.0, 102.0, 99.5, 101.0)}, TF, trail)
        self.assertEqual(up.moved, {"A/USDT": (98.0, 102.0)})      # not active yet
        up = check_positions(positions, {"A/USDT": Bar(100.0, 105.0, 99.5, 104.0)}, TF, trail)
        self.assertEqual(list(up.moved), ["A/USDT"])
        stop, high = up.moved["A/USDT"]
        self.assertAlmostEqual(stop, 102.9)
        self.assertEqual(high, 105.0)
        # no new high and no new stop: nothing to persist
        positions = {"A/USDT": position(stop=102.9, take=np.inf, high_water=105.0)}
        up = check_positions(positions, {"A/USDT": Bar(104.0, 104.5, 103.5, 104.0)}, TF, trail)
        self.assertEqual((up.exits, up.moved), ([], {}))
        # below the entry with no high seen yet: the high-water mark stays the entry
        positions = {"A/USDT": position(take=np.inf)}
        up = check_positions(positions, {"A/USDT": Bar(99.5, 99.9, 99.0, 99.5)}, TF, trail)
        self.assertEqual(up.moved, {})
        be = replace(RULES, breakeven_trigger=0.01)
        up = check_positions(positions, {"A/USDT": Bar(100.0, 101.5, 99.5, 101.0)}, TF, be)
        self.assertEqual(list(up.moved), ["A/USDT"])
        self.assertAlmostEqual(up.moved["A/USDT"][0], 100.2)
        self.assertEqual(up.moved["A/USDT"][1], 101.5)
        up = check_positions(positions, {"A/USDT": Bar(100.0, 100.5, 99.5, 100.2)}, TF, be)
        self.assertEqual(up.moved, {"A/USDT": (98.0, 100.5)})


def random_walk(n: int, seed: int):
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.006, n)))
    o = np.concatenate([[100.0], c[:-1]]) * np.exp(rng.normal(0, 0.002, n))   # small gaps
    h = np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.003, n)))
    l = np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.003, n)))
    ts = 1_700_000_000_000 + TF * np.arange(n, dtype=np.int64)
    atr = np.abs(rng.normal(0.8, 0.2, n))
    atr[:5] = np.nan                                        # warm-up: no outcome there
    return o, h, l, c, ts, atr, rng


class SignalOutcomesAgreeWithTheLiveEngine(unittest.TestCase):
    RULE_SETS = (
        StrategyParams(timeframe_ms=TF, max_hold_candles=24),
        StrategyParams(timeframe_ms=TF, max_hold_candles=30, stop_loss_pct=0.015,
                       take_profit_pct=0.03, roi=((0, 0.04), (20, 0.015), (60, 0.005)),
                       trailing_stop=0.01, trailing_offset=0.008),
        StrategyParams(timeframe_ms=TF, max_hold_candles=12, take_profit_atr=0.0,
                       breakeven_trigger=0.006, breakeven_offset=0.002),
        StrategyParams(timeframe_ms=TF, max_hold_candles=40, stop_loss_atr=4.0,
                       take_profit_atr=6.0, trailing_stop=0.015),
        StrategyParams(timeframe_ms=TF, max_hold_candles=20, use_exit_signal=False),
    )

    def live(self, rules, o, h, l, c, ts, atr, exit_signal, t, slippage):
        """Trade signal t as the live bot does: check_positions bar by bar from t + 1."""
        entry = o[t + 1] * (1.0 + slippage)
        stop, take = rules.levels(c[t], atr[t])
        pos = position("X/USDT", entry, stop + (entry - c[t]), take + (entry - c[t]),
                       entry, int(ts[t + 1]))
        for k in range(t + 1, len(c)):
            up = check_positions({"X/USDT": pos}, {"X/USDT": Bar(o[k], h[k], l[k], c[k])},
                                 int(ts[k]) + TF, rules, {"X/USDT": bool(exit_signal[k])},
                                 bar_open_ms=int(ts[k]))
            if up.exits:
                (intent,) = up.exits
                return intent.price, intent.reason, k
            if "X/USDT" in up.moved:
                stop, high = up.moved["X/USDT"]
                pos = replace(pos, stop_loss=stop, high_water=high)
        return None, "", -1

    def test_same_exit_price_reason_and_end(self):
        seen = set()
        for seed, rules in enumerate(self.RULE_SETS * 2):
            o, h, l, c, ts, atr, rng = random_walk(300, seed)
            exit_signal = rng.random(300) < 0.04
            signals = np.zeros(300, bool)
            signals[rng.choice(np.arange(1, 300), 25, replace=False)] = True
            signals[[298, 299]] = True                       # no next candle / one only
            cost, slippage = 0.002, 0.0005 * (seed % 2)
            out = signal_outcomes(rules, o, h, l, c, ts, atr, signals, cost, exit_signal,
                                  slippage)
            rows = outcome_rows(signals, atr)
            self.assertNotIn(299, rows.tolist())
            self.assertEqual(len(out.end), len(rows))
            for i, t in enumerate(rows):
                price, reason, end = self.live(rules, o, h, l, c, ts, atr, exit_signal, t,
                                               slippage)
                with self.subTest(seed=seed, t=int(t)):
                    self.assertEqual(int(out.end[i]), end)
                    self.assertEqual(REASONS[out.reason[i]], reason)
                    if end < 0:
                        self.assertTrue(np.isnan(out.net_return[i]))
                        continue
                    self.assertGreater(end, t)
                    if rules.max_hold_candles:
                        self.assertLessEqual(end, t + rules.max_hold_candles)
                    entry = o[t + 1] * (1.0 + slippage)
                    self.assertAlmostEqual(
                        out.net_return[i], price * (1.0 - slippage) / entry - 1.0 - cost,
                        places=12)
                    seen.add(reason)
        # the series and rules reach every kind of exit
        self.assertEqual(seen, set(REASONS) - {""})

    def test_no_signals_and_warm_up(self):
        o, h, l, c, ts, atr, _ = random_walk(50, 0)
        out = signal_outcomes(RULES, o, h, l, c, ts, atr, np.zeros(50, bool), 0.002)
        self.assertEqual(len(out.end), 0)
        signals = np.zeros(50, bool)
        signals[[2, 10]] = True                                # 2 is in the ATR warm-up
        out = signal_outcomes(RULES, o, h, l, c, ts, atr, signals, 0.002)
        self.assertEqual(outcome_rows(signals, atr).tolist(), [10])
        self.assertEqual(len(out.end), 1)


if __name__ == "__main__":
    unittest.main()


class TestPath(unittest.TestCase):
    """`exits.path` (all bars at once) says what `exits.step` says bar after bar."""

    def test_path_equals_step_by_step(self):
        rng = np.random.default_rng(3)
        rules_list = [StrategyParams(timeframe_ms=300_000, max_hold_candles=400),
                      StrategyParams(timeframe_ms=300_000, trailing_stop=0.01, trailing_offset=0.004,
                                     max_hold_candles=400),
                      StrategyParams(timeframe_ms=300_000, breakeven_trigger=0.006,
                                     roi=((0, 0.05), (60, 0.01)), max_hold_candles=30)]
        for rules in rules_list:
            for trial in range(40):
                n = 120
                c = 100 * np.exp(np.cumsum(rng.normal(0, 0.003, n)))
                o = np.concatenate([[100.0], c[:-1]])
                h = np.maximum(o, c) * (1 + rng.uniform(0, 0.003, n))
                l = np.minimum(o, c) * (1 - rng.uniform(0, 0.003, n))
                ts = 1_000_000 + 300_000 * np.arange(n)
                signal = rng.random(n) < 0.01
                entry, stop, take = 100.0, 100.0 * (1 - rng.uniform(0.005, 0.03)), 100.0 * 1.04
                p = exits.path(rules, entry, int(ts[0]), stop, take, entry, o, h, l, c, ts, signal)
                held = exits.Held(*(np.array([x]) for x in (entry, ts[0], stop, take, entry)))
                for k in range(n):
                    self.assertEqual(held.stop[0], p.stop[k])
                    self.assertEqual(held.high[0], p.high[k])
                    out = exits.step(rules, held, [o[k]], [h[k]], [l[k]], [c[k]], ts[k],
                                     ts[k] + 300_000, signal[k:k + 1])
                    if out.reason[0] != exits.NONE:
                        self.assertEqual(p.exit, k)
                        break
                    held = held._replace(stop=out.stop, high=out.high)
                else:
                    self.assertEqual(p.exit, n)

"""Every exit and every protection, exactly, on hand-built candles in the backtester; the same
exits in paper runs on the simulated exchange agree with the backtester's decision path
(the parity check); the locks survive a restart."""
import math
import tempfile
import unittest
from dataclasses import replace
from typing import Mapping
from unittest import mock

import numpy as np

import backtest as bt
from domain import StrategyParams
from ledger import Ledger
from protections import ProtectionSettings
from risk_manager import RiskManager
from strategies import Strategy, frame

TF = 300_000                          # 5m
T0 = 1_704_067_200_000                # 2024-01-01 00:00 UTC
DAY = 86_400_000
N = 320
FLAT = (0.0, 0.5, -0.5, 0.0)          # a flat candle around the base: range 1, so ATR is 1


# --------------------------------------------------------------------------- hand-built market

def market(base: float = 100.0, special: Mapping[int, tuple] | None = None,
           n: int = N) -> np.ndarray:
    """A flat pair: every candle opens and closes at `base`, high base + 0.5, low base - 0.5
    (ATR exactly 1), constant volume; `special[i]` = (open, high, low, close) as offsets from
    the base overrides candle i."""
    special = special or {}
    rows = []
    for i in range(n):
        o, h, l, c = (base + d for d in special.get(i, FLAT))
        rows.append((T0 + i * TF, o, h, l, c, 1000.0))
    return np.array(rows)


class Marked(Strategy):
    """Enters exactly at the chosen candle indices of each pair (told apart by their first
    open) and signals an exit exactly at others: the marks are columns of its own."""
    name = "marked"

    def __init__(self, entries: Mapping[float, tuple[int, ...]],
                 exits: Mapping[float, tuple[int, ...]] | None = None) -> None:
        super().__init__()
        self.entries, self.exits = dict(entries), dict(exits or {})

    def indicators(self, o, h, l, c, v):
        idx = np.arange(len(c))
        base = float(o[0])
        return {"enter_mark": np.isin(idx, self.entries.get(base, ())).astype(float),
                "exit_mark": np.isin(idx, self.exits.get(base, ())).astype(float)}

    def entry_score(self, x):
        return np.where(x["enter_mark"] > 0, 1.0, np.nan)

    def exit_signal(self, x):
        return x["exit_mark"] > 0


def rules(**kw) -> StrategyParams:
    """Exits far away (stop 2 ATR, target 3 ATR, 48 candles) unless a test says otherwise."""
    return StrategyParams(**({"timeframe_ms": TF} | kw))


def risk() -> RiskManager:
    return RiskManager(risk_per_trade=0.01, max_open_positions=3, max_position_size=0.3,
                       max_positions_per_group=3)


def close_of(i: int) -> int:
    return T0 + (i + 1) * TF


def open_of(i: int) -> int:
    return T0 + i * TF


class BacktestCase(unittest.TestCase):
    def replay(self, candles, entries, exits=None, protections=None, **params):
        p = rules(**params)
        if protections is not None:
            protections = ProtectionSettings(TF, **protections)
        return bt.run_backtest(candles, use_model=False, strategy=Marked(entries, exits),
                               params=p, risk=risk(), protections=protections)

    def entry_decisions(self, result, symbol=None):
        """The candle indices at whose close an entry was decided."""
        return [(e[1] - T0) // TF - 1 for e in result.events
                if e[0] == "entry" and (symbol is None or e[2] == symbol)]

    def only_trade(self, result, symbol="AAA/USDT"):
        trades = [t for t in result.trades if t.symbol == symbol]
        self.assertEqual(len(trades), 1, result.trades)
        return trades[0]

    def assert_exit(self, result, trade, reason: str, price: float, candle: int):
        """The trade's exit: its reason, when (the close of `candle`), the price the engine
        exited at (the exit event) and what the sell filled at (the book: a little lower)."""
        self.assertEqual(trade.exit_reason, reason)
        self.assertEqual(trade.exit_time_ms, close_of(candle))
        event = [e for e in result.events if e[0] == "exit" and e[2] == trade.symbol
                 and e[1] == trade.exit_time_ms]
        self.assertEqual(len(event), 1, result.events)
        self.assertEqual(event[0][4], reason)
        self.assertTrue(math.isclose(event[0][3], price, rel_tol=1e-12),
                        f"exit at {event[0][3]!r}, expected {price!r}")
        self.assertLessEqual(trade.exit_price, price)
        self.assertGreater(trade.exit_price, price * 0.995)

    def assert_entry(self, trade, decided: int, base: float = 100.0):
        """Decided at the close of `decided`, filled at the next open (a little above it)."""
        self.assertEqual(trade.entry_time_ms, open_of(decided + 1))
        self.assertGreaterEqual(trade.entry_price, base)
        self.assertLess(trade.entry_price, base * 1.005)
        self.assertGreater(trade.amount, 0)


S = 150      # the decision candle of most tests


class TestExitsExactly(BacktestCase):
    """One trade each: entry decided at the close of candle S (ATR 1, close 100), filled at
    the open of S + 1; the levels keep their distances from the decision's close."""

    def test_the_marked_market_is_as_built(self):
        a = market()
        x = frame(a, Marked({100.0: (S,)}))
        self.assertEqual(x["atr"][S], 1.0)
        self.assertEqual(x["close"][S], 100.0)

    def test_stop_loss_atr(self):
        # stop = entry - 1.5 ATR; candle S+3 reaches it (opening above it)
        a = market(special={S + 3: (0, 0.2, -3, -1)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, stop_loss_atr=1.5)
        t = self.only_trade(r)
        self.assert_entry(t, S)
        self.assert_exit(r, t, "stop_loss", t.entry_price - 1.5, S + 3)

    def test_stop_loss_atr_gap_fills_at_the_open(self):
        a = market(special={S + 3: (-4, -3.5, -4.5, -4)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, stop_loss_atr=1.5)
        t = self.only_trade(r)
        self.assert_exit(r, t, "stop_loss", 96.0, S + 3)

    def test_stop_loss_pct_replaces_the_atr_stop(self):
        # 2 % of the decision's close (100) below the entry: 2.0, not 1.5 ATR
        a = market(special={S + 2: (0, 0.2, -1.6, 0), S + 4: (0, 0.2, -2.5, -1)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, stop_loss_atr=1.5, stop_loss_pct=0.02)
        t = self.only_trade(r)
        self.assert_exit(r, t, "stop_loss", t.entry_price - (100.0 - 100.0 * (1 - 0.02)), S + 4)

    def test_take_profit_atr(self):
        a = market(special={S + 2: (0, 2.5, -0.5, 0), S + 4: (0, 3.5, -0.5, 1)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, take_profit_atr=3.0)
        t = self.only_trade(r)
        self.assert_exit(r, t, "take_profit", t.entry_price + 3.0, S + 4)

    def test_take_profit_pct_replaces_the_atr_target(self):
        a = market(special={S + 2: (0, 3.5, -0.5, 0), S + 5: (0, 4.5, -0.5, 1)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, take_profit_atr=3.0,
                        take_profit_pct=0.04)
        t = self.only_trade(r)
        self.assert_exit(r, t, "take_profit",
                         t.entry_price + (100.0 * (1 + 0.04) - 100.0), S + 5)

    def test_take_profit_gap_fills_at_the_open(self):
        a = market(special={S + 3: (5, 5.5, 4.5, 5)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, take_profit_atr=3.0)
        t = self.only_trade(r)
        self.assert_exit(r, t, "take_profit", 105.0, S + 3)

    def test_roi_by_the_minutes_held_at_the_bars_open(self):
        # 10 % at once, 1 % after 20 minutes; the entry is at the open of S+1, so candle
        # S+5 opens 20 minutes later: S+3 and S+4 (10, 15 minutes) reach 1.5 % and stay.
        up = (0, 1.5, -0.5, 0)
        a = market(special={S + 3: up, S + 4: up, S + 5: up})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, take_profit_atr=0.0,
                        roi=((0, 0.10), (20, 0.01)))
        t = self.only_trade(r)
        self.assert_exit(r, t, "roi", t.entry_price * 1.01, S + 5)

    def test_roi_below_the_target_wins_and_the_target_below_roi_is_take_profit(self):
        up = (0, 2.5, -0.5, 0)
        a = market(special={S + 2: up})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, take_profit_atr=2.0,
                        roi=((0, 0.015),))
        t = self.only_trade(r)
        self.assert_exit(r, t, "roi", t.entry_price * 1.015, S + 2)
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, take_profit_atr=1.2,
                        roi=((0, 0.015),))
        t = self.only_trade(r)
        self.assert_exit(r, t, "take_profit", t.entry_price + 1.2, S + 2)

    def test_trailing_stop_follows_the_high_and_exits_below_it(self):
        # 1 % below the high once the high is 0.8 % above the entry; stops only rise
        a = market(special={S + 2: (0, 0.3, -0.5, 0),        # not yet 0.8 % above the entry
                            S + 3: (0, 2.0, -0.5, 1.5),      # high 102: stop 100.98
                            S + 4: (1.5, 4.0, 1.5, 3.5),     # low above it; high 104: 102.96
                            S + 5: (3.5, 3.8, 3.0, 3.2),     # a lower high: nothing moves
                            S + 6: (3.2, 3.4, 2.0, 2.5)})    # 102 <= 102.96: out at the stop
        moved = []

        class Recording(Ledger):
            def move_stop(self, symbol, stop_loss, high_water):
                moved.append((symbol, stop_loss, high_water))
                return super().move_stop(symbol, stop_loss, high_water)

        with mock.patch.object(bt, "Ledger", Recording):
            r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, trailing_stop=0.01,
                            trailing_offset=0.008, take_profit_atr=0.0)
        t = self.only_trade(r)
        self.assert_exit(r, t, "trailing_stop", 104.0 * (1 - 0.01), S + 6)
        # the ledger is told each time the high rises (S+1's 100.5 moves only the high
        # mark) and the stop it lifts (S+3, S+4), and only then
        self.assertEqual([(s, h) for s, h in ((m[1], m[2]) for m in moved)][1:],
                         [(102.0 * 0.99, 102.0), (104.0 * 0.99, 104.0)])
        self.assertEqual(moved[0][2], 100.5)
        self.assertAlmostEqual(moved[0][1], t.entry_price - 2.0, places=9)
        self.assertEqual(len(moved), 3)

    def test_trailing_stop_below_the_entry_is_still_a_stop_loss(self):
        # 3 % below the high from the start: the raised stop stays below the entry
        a = market(special={S + 2: (0, 1.0, -0.5, 0.5), S + 3: (0.5, 0.6, -2.5, -2)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, trailing_stop=0.03, stop_loss_atr=4.0)
        t = self.only_trade(r)
        self.assert_exit(r, t, "stop_loss", 101.0 * 0.97, S + 3)

    def test_break_even_moves_the_stop_to_the_entry_plus_the_fees(self):
        a = market(special={S + 2: (0, 0.8, -0.5, 0.5),      # + 0.8 %: below the trigger
                            S + 3: (0.5, 1.5, 0, 1),         # + 1.5 %: the stop goes to +0.2 %
                            S + 4: (1, 1.2, -0.5, 0)})       # back through it: out there
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, breakeven_trigger=0.01)
        t = self.only_trade(r)
        self.assert_exit(r, t, "trailing_stop", t.entry_price * (1 + 0.002), S + 4)

    def test_time_limit_at_the_close(self):
        a = market(special={S + 5: (0, 0.5, -0.5, 0.25)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, max_hold_candles=5)
        t = self.only_trade(r)
        self.assert_exit(r, t, "time_limit", 100.25, S + 5)

    def test_exit_signal_at_the_close(self):
        a = market(special={S + 3: (0, 0.5, -0.5, 0.3)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, {100.0: (S + 3,)})
        t = self.only_trade(r)
        self.assert_exit(r, t, "exit_signal", 100.3, S + 3)
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, {100.0: (S + 3,)},
                        use_exit_signal=False, max_hold_candles=6)
        self.assertEqual(self.only_trade(r).exit_reason, "time_limit")

    def test_stop_first_when_a_candle_touches_stop_and_target(self):
        a = market(special={S + 3: (0, 4, -3, 0)})
        r = self.replay({"AAA/USDT": a}, {100.0: (S,)}, stop_loss_atr=2.0, take_profit_atr=3.0)
        t = self.only_trade(r)
        self.assert_exit(r, t, "stop_loss", t.entry_price - 2.0, S + 3)


class TestProtectionsExactly(BacktestCase):
    def test_cooldown_no_reentry_on_the_close_of_the_exit_candle(self):
        a = market()
        # time limit 3: in at S+1's open, out at the close of S+3; signals at S+3 and S+4
        r = self.replay({"AAA/USDT": a}, {100.0: (S, S + 3, S + 4)}, max_hold_candles=3,
                        protections=dict(cooldown_candles=1))
        self.assertEqual(r.trades[0].exit_time_ms, close_of(S + 3))
        self.assertEqual(self.entry_decisions(r), [S, S + 4])
        r = self.replay({"AAA/USDT": a}, {100.0: (S, S + 3, S + 4)}, max_hold_candles=3,
                        protections=dict(cooldown_candles=0))
        self.assertEqual(self.entry_decisions(r)[:2], [S, S + 3])
        r = self.replay({"AAA/USDT": a}, {100.0: (S, S + 3, S + 4, S + 5)}, max_hold_candles=3,
                        protections=dict(cooldown_candles=2))
        self.assertEqual(self.entry_decisions(r), [S, S + 5])

    def guard_market(self):
        """AAA stops out at the close of S+3; BBB (flat at 200) and AAA signal later."""
        return {"AAA/USDT": market(special={S + 3: (0, 0.2, -3, -1)}),
                "BBB/USDT": market(200.0)}

    def test_stoploss_guard_locks_every_pair_for_its_length(self):
        guard = dict(cooldown_candles=0, stoploss_guard_trades=1,
                     stoploss_guard_lookback_candles=10, stoploss_guard_lock_candles=6)
        # the lock runs from the exit (close of S+3) to 6 candles later (close of S+9):
        # decisions at the closes of S+3 .. S+8 are locked, S+9 is not
        r = self.replay(self.guard_market(), {100.0: (S,), 200.0: (S + 3, S + 8, S + 9)},
                        stop_loss_atr=1.5, protections=guard)
        self.assertEqual(self.only_trade(r).exit_reason, "stop_loss")
        self.assertEqual(self.entry_decisions(r, "BBB/USDT"), [S + 9])
        r = self.replay(self.guard_market(), {100.0: (S, S + 5, S + 9)}, stop_loss_atr=1.5,
                        protections=guard)
        self.assertEqual(self.entry_decisions(r, "AAA/USDT"), [S, S + 9])
        # two stops needed: one is not enough
        r = self.replay(self.guard_market(), {100.0: (S,), 200.0: (S + 4,)}, stop_loss_atr=1.5,
                        protections=guard | dict(stoploss_guard_trades=2))
        self.assertEqual(self.entry_decisions(r, "BBB/USDT"), [S + 4])

    def test_stoploss_guard_per_pair_locks_only_that_pair(self):
        guard = dict(cooldown_candles=0, stoploss_guard_trades=1,
                     stoploss_guard_lookback_candles=10, stoploss_guard_lock_candles=6,
                     stoploss_guard_per_pair=True)
        r = self.replay(self.guard_market(), {100.0: (S, S + 8, S + 9), 200.0: (S + 4,)},
                        stop_loss_atr=1.5, protections=guard)
        self.assertEqual(self.entry_decisions(r, "BBB/USDT"), [S + 4])
        self.assertEqual(self.entry_decisions(r, "AAA/USDT"), [S, S + 9])

    def test_a_time_limit_loss_is_no_stop_for_the_guard(self):
        guard = dict(cooldown_candles=0, stoploss_guard_trades=1,
                     stoploss_guard_lookback_candles=10, stoploss_guard_lock_candles=6)
        a = market(special={S + 3: (0, 0.2, -0.9, -0.8)})
        r = self.replay({"AAA/USDT": a, "BBB/USDT": market(200.0)},
                        {100.0: (S,), 200.0: (S + 4,)}, max_hold_candles=3, protections=guard)
        self.assertEqual(r.trades[0].exit_reason, "time_limit")
        self.assertLess(r.trades[0].profit, 0)
        self.assertEqual(self.entry_decisions(r, "BBB/USDT"), [S + 4])

    def test_daily_loss_limit_locks_until_the_next_utc_midnight(self):
        # candle 287 closes at 2024-01-02 00:00 UTC. AAA gaps 4 % below its stop at S+3
        # (a loss of about 1.3 % of equity); BBB signals later that day (locked), at the
        # close right before midnight (locked) and at midnight (open again).
        midnight = 287
        self.assertEqual(close_of(midnight), T0 + DAY)
        a = market(special={S + 3: (-5, -4.5, -5.5, -5)})
        candles = {"AAA/USDT": a, "BBB/USDT": market(200.0)}
        limit = dict(cooldown_candles=0, daily_loss_limit=0.01)
        r = self.replay(candles, {100.0: (S,), 200.0: (S + 4, midnight - 1, midnight)},
                        stop_loss_atr=1.0, protections=limit)
        loss = -r.trades[0].profit
        self.assertGreater(loss, 0.01 * 10_000)
        self.assertEqual(self.entry_decisions(r, "BBB/USDT"), [midnight])
        # a smaller loss than the limit locks nothing
        r = self.replay(candles, {100.0: (S,), 200.0: (S + 4,)}, stop_loss_atr=1.0,
                        protections=dict(limit, daily_loss_limit=0.05))
        self.assertEqual(self.entry_decisions(r, "BBB/USDT"), [S + 4])

    def test_low_profit_lock_after_losing_trades_on_a_pair(self):
        # time-limit trades of 2 candles lose the fees: two of them in 20 candles lock AAA
        # for 10 candles from the second exit (close of S+6), BBB not
        lowp = dict(cooldown_candles=0, low_profit_lookback_candles=20, low_profit_min_trades=2,
                    low_profit_min_return=0.0, low_profit_lock_candles=10)
        r = self.replay({"AAA/USDT": market(), "BBB/USDT": market(200.0)},
                        {100.0: (S, S + 4, S + 10, S + 15, S + 16), 200.0: (S + 8,)},
                        max_hold_candles=2, protections=lowp)
        aaa = [t for t in r.trades if t.symbol == "AAA/USDT"]
        self.assertEqual([t.exit_time_ms for t in aaa[:2]], [close_of(S + 2), close_of(S + 6)])
        self.assertTrue(all(t.return_pct < 0 for t in aaa))
        self.assertEqual(self.entry_decisions(r, "AAA/USDT")[:3], [S, S + 4, S + 16])
        self.assertEqual(self.entry_decisions(r, "BBB/USDT"), [S + 8])
        # with one trade needed more, the second loss is not enough
        r = self.replay({"AAA/USDT": market()}, {100.0: (S, S + 4, S + 10)}, max_hold_candles=2,
                        protections=dict(lowp, low_profit_min_trades=3))
        self.assertEqual(self.entry_decisions(r), [S, S + 4, S + 10])


if __name__ == "__main__":
    unittest.main()

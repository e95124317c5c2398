"""Entry locks: each protection on and off, its boundary times, restart and boundedness."""
from __future__ import annotations

import unittest
from types import SimpleNamespace

from domain import MarketView, StrategyParams, Trade
from protections import (DAY_MS, RETAIN_SLACK_MS, STOP_REASONS, Lock, ProtectionSettings,
                         Protections, cooldown_until, describe)

TF = 300_000                       # 5-minute candles
T0 = 1_700_006_400_000             # 2023-11-15 00:00 UTC: a midnight and a candle boundary
EQUITY = 10_000.0


def trade(symbol: str = "BTC/USDT", exit_ms: int = T0, profit: float = 0.0,
          return_pct: float = 0.0, reason: str = "take_profit") -> Trade:
    return Trade(symbol, 1.0, 100.0, 100.0 + profit, exit_ms - 10 * TF, exit_ms, 0.0, 0.0,
                 profit, return_pct, reason)


def stop(symbol: str = "BTC/USDT", exit_ms: int = T0, return_pct: float = -1.0) -> Trade:
    return trade(symbol, exit_ms, -1.0, return_pct, "stop_loss")


def settings(**kw) -> ProtectionSettings:
    kw.setdefault("cooldown_candles", 0)
    return ProtectionSettings(timeframe_ms=TF, **kw)


def kinds(p: Protections, now_ms: int, equity: float = EQUITY) -> set[tuple[str, str]]:
    return {(k.kind, k.scope) for k in p.locks(now_ms, equity)}


class CooldownTest(unittest.TestCase):
    def test_locked_until_the_cooldown_ends_then_free(self):
        p = Protections(ProtectionSettings(timeframe_ms=TF, cooldown_candles=2))
        p.add(trade(exit_ms=T0 + 60_000))            # inside the candle closing at T0 + TF
        until = T0 + TF + 2 * TF
        [lock] = p.locks(T0 + 60_000, EQUITY)
        self.assertEqual(lock, Lock("BTC/USDT", until, lock.reason, "cooldown"))
        self.assertTrue(p.locked(until - 1, EQUITY)[1])
        self.assertEqual(p.locked(until, EQUITY), (False, set()))

    def test_an_exit_on_a_candle_boundary(self):
        p = Protections(ProtectionSettings(timeframe_ms=TF, cooldown_candles=1))
        p.note_exit("ETH/USDT", T0)
        self.assertEqual(p.locked(T0 + TF - 1, EQUITY), (False, {"ETH/USDT"}))
        self.assertEqual(p.locked(T0 + TF, EQUITY), (False, set()))

    def test_off(self):
        p = Protections(settings(cooldown_candles=0), [trade()])
        self.assertEqual(p.locks(T0, EQUITY), [])

    def test_partial_sell_and_latest_exit_wins(self):
        p = Protections(ProtectionSettings(timeframe_ms=TF), last_exits={"SOL/USDT": T0})
        p.note_exit("SOL/USDT", T0 + 5 * TF)
        p.note_exit("SOL/USDT", T0 + TF)              # older: ignored
        self.assertEqual(p.last_exits, {"SOL/USDT": T0 + 5 * TF})
        self.assertTrue(p.locked(T0 + 6 * TF - 1, EQUITY)[1])

    def test_the_cooldown_is_the_former_strategy_rule(self):
        def cooling_down(view, params, last):   # strategy.cooling_down, which this replaced
            if params.cooldown_candles <= 0:
                return set()
            tf = params.timeframe_ms
            return {s for s, exit_ms in last.items()
                    if view.now_ms < -(-exit_ms // tf) * tf + params.cooldown_candles * tf}

        for n in (0, 1, 3):
            for exit_ms in (T0, T0 + 1, T0 + TF - 1, T0 + 7 * TF + 12_345):
                last = {"BTC/USDT": exit_ms, "ETH/USDT": T0 - 2 * TF}
                p = Protections(ProtectionSettings(timeframe_ms=TF, cooldown_candles=n),
                                last_exits=last)
                params = StrategyParams(timeframe_ms=TF, cooldown_candles=n)
                for now in range(T0 - 3 * TF, T0 + 12 * TF, TF // 3):
                    view = MarketView((), {}, None, now)
                    with self.subTest(n=n, exit_ms=exit_ms, now=now):
                        self.assertEqual(p.locked(now, EQUITY)[1],
                                         cooling_down(view, params, last))
                        if n > 0:
                            self.assertEqual(cooldown_until(exit_ms, p.settings) > now,
                                             "BTC/USDT" in cooling_down(view, params, last))


class StoplossGuardTest(unittest.TestCase):
    def guard(self, per_pair=False, **kw):
        return settings(stoploss_guard_trades=3, stoploss_guard_lookback_candles=10,
                        stoploss_guard_lock_candles=5, stoploss_guard_per_pair=per_pair, **kw)

    def test_global_guard_locks_every_pair_from_the_last_stop(self):
        p = Protections(self.guard(), [stop("A", T0), stop("B", T0 + TF),
                                       trade("C", T0 + 2 * TF)])
        self.assertEqual(p.locks(T0 + 3 * TF, EQUITY), [])
        p.add(stop("C", T0 + 4 * TF))
        [lock] = p.locks(T0 + 4 * TF, EQUITY)
        self.assertEqual((lock.scope, lock.until_ms, lock.kind),
                         ("*", T0 + 9 * TF, "stoploss_guard"))
        self.assertEqual(lock.reason, "stoploss guard: 3 stops in 10 candles")
        self.assertEqual(p.locked(T0 + 9 * TF - 1, EQUITY), (True, set()))
        self.assertEqual(p.locked(T0 + 9 * TF, EQUITY), (False, set()))

    def test_lookback_is_open_at_its_old_end(self):
        # The first stop is exactly 10 candles before the third: out of its lookback.
        p = Protections(self.guard(), [stop("A", T0), stop("B", T0 + 5 * TF),
                                       stop("C", T0 + 10 * TF)])
        self.assertEqual(p.locks(T0 + 10 * TF, EQUITY), [])
        p = Protections(self.guard(), [stop("A", T0 + 1), stop("B", T0 + 5 * TF),
                                       stop("C", T0 + 10 * TF)])
        self.assertEqual(kinds(p, T0 + 10 * TF), {("stoploss_guard", "*")})

    def test_every_stop_reason_counts_and_others_do_not(self):
        reasons = sorted(STOP_REASONS)
        p = Protections(self.guard(), [trade("A", T0 + i, reason=r) for i, r in enumerate(reasons)])
        self.assertEqual(kinds(p, T0 + TF), {("stoploss_guard", "*")})
        p = Protections(self.guard(), [trade("A", T0 + i, profit=-1.0, reason="time_limit")
                                       for i in range(5)])
        self.assertEqual(p.locks(T0 + TF, EQUITY), [])

    def test_lock_outlasts_the_lookback(self):
        s = settings(stoploss_guard_trades=2, stoploss_guard_lookback_candles=2,
                     stoploss_guard_lock_candles=20)
        p = Protections(s, [stop("A", T0), stop("B", T0 + TF)])
        self.assertEqual(p.locked(T0 + 21 * TF - 1, EQUITY), (True, set()))
        self.assertEqual(p.locked(T0 + 21 * TF, EQUITY), (False, set()))

    def test_not_active_before_the_triggering_exit(self):
        p = Protections(self.guard(), [stop("A", T0), stop("B", T0 + TF), stop("C", T0 + 2 * TF)])
        self.assertEqual(p.locks(T0 + 2 * TF - 1, EQUITY), [])
        self.assertEqual(kinds(p, T0 + 2 * TF), {("stoploss_guard", "*")})

    def test_per_pair_counts_and_locks_only_that_pair(self):
        mixed = [stop("A", T0), stop("B", T0 + TF), stop("A", T0 + 2 * TF)]
        p = Protections(self.guard(per_pair=True), mixed)
        self.assertEqual(p.locks(T0 + 2 * TF, EQUITY), [])
        p.add(stop("A", T0 + 3 * TF))
        self.assertEqual(p.locked(T0 + 3 * TF, EQUITY), (False, {"A"}))
        [lock] = p.locks(T0 + 3 * TF, EQUITY)
        self.assertEqual((lock.until_ms, lock.reason),
                         (T0 + 8 * TF, "stoploss guard: 3 stops on A in 10 candles"))
        self.assertEqual(p.locked(T0 + 8 * TF, EQUITY), (False, set()))

    def test_off(self):
        p = Protections(settings(), [stop("A", T0 + i) for i in range(10)])
        self.assertEqual(p.locks(T0 + TF, EQUITY), [])


class DailyLossTest(unittest.TestCase):
    S = settings(daily_loss_limit=0.05)

    def test_locks_all_entries_until_the_next_utc_midnight(self):
        # 50 lost today at equity 950: the day started at 1000, 5% of it.
        p = Protections(self.S, [trade("A", T0 + TF, profit=-30.0),
                                 trade("B", T0 + 2 * TF, profit=-20.0)])
        [lock] = p.locks(T0 + 3 * TF, 950.0)
        self.assertEqual((lock.scope, lock.until_ms, lock.kind), ("*", T0 + DAY_MS, "daily_loss"))
        self.assertIn("lost 50.00 today", lock.reason)
        self.assertEqual(p.locked(T0 + DAY_MS - 1, 950.0), (True, set()))
        self.assertEqual(p.locked(T0 + DAY_MS, 950.0), (False, set()))

    def test_below_the_limit_or_a_net_gain_does_not_lock(self):
        p = Protections(self.S, [trade("A", T0 + TF, profit=-49.0)])
        self.assertEqual(p.locks(T0 + 2 * TF, 951.0), [])
        p.add(trade("B", T0 + 2 * TF, profit=60.0))
        p.add(trade("C", T0 + 3 * TF, profit=-60.0))
        self.assertEqual(p.locks(T0 + 4 * TF, 951.0), [])

    def test_yesterdays_losses_do_not_count(self):
        p = Protections(self.S, [trade("A", T0 - 1, profit=-100.0),
                                 trade("B", T0, profit=-10.0)])
        self.assertEqual(kinds(p, T0 - 1, 900.0), {("daily_loss", "*")})
        self.assertEqual(p.locks(T0, 890.0), [])     # only today's 10: 1.1%

    def test_a_loss_just_before_midnight_unlocks_at_midnight(self):
        p = Protections(self.S, [trade("A", T0 + DAY_MS - TF, profit=-100.0)])
        self.assertEqual(p.locked(T0 + DAY_MS - 1, 900.0), (True, set()))
        self.assertEqual(p.locked(T0 + DAY_MS, 900.0), (False, set()))

    def test_off(self):
        p = Protections(settings(), [trade("A", T0, profit=-900.0)])
        self.assertEqual(p.locks(T0, 100.0), [])


class LowProfitTest(unittest.TestCase):
    S = settings(low_profit_lookback_candles=10, low_profit_min_trades=2,
                 low_profit_min_return=0.0, low_profit_lock_candles=6)

    def test_locks_the_pair_from_its_last_exit(self):
        p = Protections(self.S, [trade("A", T0, return_pct=1.0),
                                 trade("A", T0 + 2 * TF, return_pct=-1.5),
                                 trade("B", T0 + 3 * TF, return_pct=-9.0)])
        [lock] = p.locks(T0 + 3 * TF, EQUITY)
        self.assertEqual((lock.scope, lock.until_ms, lock.kind),
                         ("A", T0 + 8 * TF, "low_profit"))
        self.assertIn("2 trades in 10 candles returned -0.50%", lock.reason)
        self.assertEqual(p.locked(T0 + 8 * TF - 1, EQUITY), (False, {"A"}))
        self.assertEqual(p.locked(T0 + 8 * TF, EQUITY), (False, set()))

    def test_too_few_trades_or_enough_return_does_not_lock(self):
        p = Protections(self.S, [trade("A", T0, return_pct=-5.0)])
        self.assertEqual(p.locks(T0, EQUITY), [])
        p = Protections(self.S, [trade("A", T0, return_pct=-1.0),
                                 trade("A", T0 + TF, return_pct=1.0)])   # sums to 0: not below
        self.assertEqual(p.locks(T0 + TF, EQUITY), [])

    def test_a_later_good_trade_does_not_undo_an_earlier_lock(self):
        p = Protections(self.S, [trade("A", T0, return_pct=-1.0),
                                 trade("A", T0 + TF, return_pct=-1.0),
                                 trade("A", T0 + 2 * TF, return_pct=5.0)])
        [lock] = p.locks(T0 + 2 * TF, EQUITY)
        self.assertEqual(lock.until_ms, T0 + 7 * TF)

    def test_trades_outside_the_lookback_do_not_count(self):
        p = Protections(self.S, [trade("A", T0, return_pct=-1.0),
                                 trade("A", T0 + 10 * TF, return_pct=-1.0)])
        self.assertEqual(p.locks(T0 + 10 * TF, EQUITY), [])

    def test_off(self):
        p = Protections(settings(), [trade("A", T0 + i, return_pct=-5.0) for i in range(5)])
        self.assertEqual(p.locks(T0 + TF, EQUITY), [])


def history(n: int) -> list[Trade]:
    """A deterministic mix of pairs, reasons and outcomes, one exit every 7 minutes."""
    out = []
    for i in range(n):
        symbol = ("A", "B", "C")[i % 3]
        if i % 4 == 0:
            out.append(stop(symbol, T0 + i * 420_000, return_pct=-1.0))
        else:
            r = (-0.8, 0.3, -0.2)[i % 3]
            out.append(trade(symbol, T0 + i * 420_000, profit=r * 10, return_pct=r))
    return out


ALL_ON = ProtectionSettings(timeframe_ms=TF, cooldown_candles=2, stoploss_guard_trades=2,
                            stoploss_guard_lookback_candles=6, stoploss_guard_lock_candles=4,
                            daily_loss_limit=0.002, low_profit_lookback_candles=12,
                            low_profit_min_trades=2, low_profit_lock_candles=8)


class RestartAndOrderTest(unittest.TestCase):
    def test_rebuilding_from_the_same_trades_gives_the_same_locks(self):
        for per_pair in (False, True):
            s = ProtectionSettings(**{**ALL_ON.__dict__, "stoploss_guard_per_pair": per_pair,
                                      "stoploss_guard_lookback_candles": 20 if per_pair else 6})
            trades = history(300)
            live = Protections(s)
            seen = []
            for i, t in enumerate(trades):
                live.add(t)
                seen.append(live.locks(t.exit_time_ms + 60_000, EQUITY))
                if i % 37 == 0:
                    restarted = Protections(s, trades[:i + 1], live.last_exits)
                    self.assertEqual(restarted.locks(t.exit_time_ms + 60_000, EQUITY), seen[-1])
            self.assertTrue(any(seen), "the history should trigger some locks")
            self.assertEqual({k.kind for ks in seen for k in ks},
                             {"cooldown", "stoploss_guard", "daily_loss", "low_profit"})

    def test_shuffled_adds_match_in_order_adds(self):
        trades = history(60)
        ordered = Protections(ALL_ON, trades)
        shuffled = Protections(ALL_ON)
        for block in range(0, 60, 6):                  # each block of 6 added newest first
            for t in reversed(trades[block:block + 6]):
                shuffled.add(t)
        for now in range(T0, trades[-1].exit_time_ms + 20 * TF, TF // 2):
            self.assertEqual(shuffled.locks(now, EQUITY), ordered.locks(now, EQUITY))

    def test_too_late_adds_and_queries_raise(self):
        p = Protections(ALL_ON, [trade("A", T0 + 2 * DAY_MS)])
        with self.assertRaises(ValueError):
            p.add(trade("B", T0 + 2 * DAY_MS - RETAIN_SLACK_MS - 1))
        with self.assertRaises(ValueError):
            p.locks(T0 + 2 * DAY_MS - RETAIN_SLACK_MS - 1, EQUITY)
        p.add(trade("B", T0 + 2 * DAY_MS - RETAIN_SLACK_MS))     # at the limit: fine
        p.locks(T0 + 2 * DAY_MS - RETAIN_SLACK_MS, EQUITY)


class BoundedTest(unittest.TestCase):
    def test_buffers_stay_bounded_over_ten_thousand_trades(self):
        p = Protections(ALL_ON)
        longest = 0
        for t in history(10_000):
            p.add(t)
            p.locks(t.exit_time_ms, EQUITY)
            longest = max(longest, len(p._recent), len(p._triggers))
        # One exit every 7 minutes, kept for two days at most: ~412 trades.
        self.assertLessEqual(longest, (2 * DAY_MS) // 420_000 + 2)
        self.assertEqual(len(p.last_exits), 3)


class SettingsAndDescribeTest(unittest.TestCase):
    def test_from_config_reads_protection_names(self):
        config = SimpleNamespace(timeframe_seconds=300.0, cooldown_candles=3,
                                 stoploss_guard_trades=4, stoploss_guard_lookback=30,
                                 stoploss_guard_lock=6, stoploss_guard_per_pair=True,
                                 daily_loss_limit=0.03, low_profit_lookback=20,
                                 low_profit_min_trades=3, low_profit_min_return=0.01,
                                 low_profit_lock=10)
        self.assertEqual(ProtectionSettings.from_config(config), ProtectionSettings(
            TF, 3, 4, 30, 6, True, 0.03, 20, 3, 0.01, 10))

    def test_bad_settings_are_refused(self):
        for bad in ({"timeframe_ms": 0}, {"cooldown_candles": -1}, {"daily_loss_limit": 1.0},
                    {"low_profit_min_trades": 0},
                    {"stoploss_guard_trades": 2, "stoploss_guard_lookback_candles": 0}):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                ProtectionSettings(**{"timeframe_ms": TF, **bad})

    def test_describe(self):
        locks = [Lock("*", T0 + 3_600_000, "daily loss limit: lost 5.00 today", "daily_loss"),
                 Lock("BTC/USDT", T0 + 90_000, "cooldown", "cooldown")]
        self.assertEqual(describe(locks, T0), [
            "all pairs locked until 2023-11-15 01:00 UTC (60 min left): "
            "daily loss limit: lost 5.00 today",
            "BTC/USDT locked until 2023-11-15 00:01 UTC (2 min left): cooldown"])


if __name__ == "__main__":
    unittest.main()

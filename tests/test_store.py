"""store.py against real SQLite files in temp dirs, including a SIGKILLed writer process."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path

from clock import ManualClock
from domain import Fill, Position, Trade
from store import (SCHEMA_VERSION, Store, StoreError, blob_to_features, features_to_blob,
                   store_path)

REPO = Path(__file__).resolve().parent.parent


def fill(client_order_id: str, symbol: str = "BTC/USDT", side: str = "buy",
         amount: float = 0.5, price: float = 100.0, fee: float = 0.05,
         ts: int = 1_000) -> Fill:
    return Fill(symbol, side, amount, price, amount * price, fee, ts, f"x-{client_order_id}",
                client_order_id)


def position(symbol: str = "BTC/USDT", features: tuple[float, ...] | None = (1.5, -2.25),
             **kw: object) -> Position:
    base = dict(symbol=symbol, amount=0.5, entry_price=100.0, entry_time_ms=1_000,
                stop_loss=95.0, take_profit=110.0, entry_fee=0.05, group="majors",
                features=features)
    return Position(**(base | kw))


class StoreTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.clock = ManualClock(1_700_000_000.0)
        self.store = self.open()

    def tearDown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    def open(self, mode: str = "paper") -> Store:
        return Store.open(self.dir, mode, clock=self.clock)

    def reopen(self) -> Store:
        self.store.close()
        self.store = self.open()
        return self.store

    def enter(self, store: Store, coid: str, symbol: str = "BTC/USDT",
              cash: float | None = 950.0) -> tuple[Fill, Position]:
        store.add_pending_order(coid, symbol, "buy", 0.5, 100.0, reason="entry")
        f, p = fill(coid, symbol), position(symbol)
        store.record_entry(f, p, cash=cash)
        return f, p


class RoundTripTest(StoreTestCase):
    def test_file_per_mode_and_pragmas(self) -> None:
        self.assertEqual(self.store.path, self.dir / "trades-paper.sqlite")
        self.assertEqual(store_path(self.dir, "live"), self.dir / "trades-live.sqlite")
        with self.assertRaises(ValueError):
            store_path(self.dir, "dry")
        conn = self.store._conn
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(conn.execute("PRAGMA synchronous").fetchone()[0], 2)  # FULL
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)

    def test_paper_and_live_never_mix(self) -> None:
        self.enter(self.store, "p-1")
        with self.open("live") as live:
            self.assertEqual(live.open_positions(), [])
            self.assertIsNone(live.get_meta("paper_cash"))
            self.assertEqual(live.next_sequence("order"), 1)
            live.add_pending_order("l-1", "ETH/USDT", "buy", 1.0, 10.0)
        self.assertEqual(len(self.store.open_positions()), 1)
        self.assertEqual(self.store.pending_orders(), [])
        self.assertEqual(self.store.next_sequence("order"), 1)
        self.assertTrue((self.dir / "trades-live.sqlite").exists())

    def test_pending_order_and_mark(self) -> None:
        self.store.add_pending_order("c-1", "ETH/USDT", "buy", 2.0, 10.0, reason="rsi")
        self.store.add_pending_order("c-2", "SOL/USDT", "sell", 3.0, 20.0)
        pending = self.reopen().pending_orders()
        self.assertEqual([o.client_order_id for o in pending], ["c-1", "c-2"])
        first = pending[0]
        self.assertEqual((first.symbol, first.side, first.amount, first.price, first.status,
                          first.reason, first.created_ms), ("ETH/USDT", "buy", 2.0, 10.0,
                                                            "pending", "rsi", 1_700_000_000_000))
        self.clock.advance(5)
        self.store.mark_order("c-1", "rejected", "min notional", exchange_order_id="E1")
        self.store.mark_order("c-2", "abandoned", "timeout")
        self.assertEqual(self.reopen().pending_orders(), [])
        rejected = self.store.order("c-1")
        self.assertEqual((rejected.status, rejected.reason, rejected.exchange_order_id,
                          rejected.updated_ms), ("rejected", "min notional", "E1",
                                                 1_700_000_005_000))
        with self.assertRaises(ValueError):
            self.store.mark_order("c-1", "lost")
        with self.assertRaisesRegex(StoreError, "unknown order"):
            self.store.mark_order("nope", "abandoned")
        with self.assertRaisesRegex(StoreError, "UNIQUE"):
            self.store.add_pending_order("c-1", "ETH/USDT", "buy", 2.0, 10.0)

    def test_entry_then_exit_round_trip(self) -> None:
        f, p = self.enter(self.store, "c-1")
        store = self.reopen()
        (row,) = store.open_positions()
        self.assertEqual(row, dataclasses.replace(p, entry_client_order_id="c-1"))
        self.assertEqual(store.paper_cash(default=1000.0), 950.0)
        order = store.order("c-1")
        self.assertEqual((order.status, order.exchange_order_id, order.fee, order.updated_ms),
                         ("filled", "x-c-1", 0.05, 1_000))

        store.add_pending_order("c-2", "BTC/USDT", "sell", 0.5, 120.0, reason="take_profit")
        exit_fill = fill("c-2", side="sell", price=120.0, fee=0.06, ts=9_000)
        trade = Trade.closing(row, exit_fill, "take_profit")
        self.assertAlmostEqual(trade.profit, 0.5 * 120 - 0.5 * 100 - 0.05 - 0.06)
        self.assertAlmostEqual(trade.return_pct, 100 * trade.profit / (50 + 0.05))
        store.record_exit(exit_fill, trade, cash=1009.94)

        store = self.reopen()
        self.assertEqual(store.open_positions(), [])
        self.assertEqual(store.recent_trades(5), [trade])
        self.assertEqual(store.all_trades(), [trade])
        self.assertEqual(store.last_exits(), {"BTC/USDT": 9_000})
        self.assertEqual(store.paper_cash(default=0.0), 1009.94)
        self.assertEqual(store.order("c-2").status, "filled")
        self.assertEqual(store.order("c-2").reason, "take_profit")

    def test_recent_trades_totals_and_features(self) -> None:
        profits = [5.0, -2.0, 7.5, -1.0]
        for i, profit in enumerate(profits):
            symbol = f"S{i}/USDT"
            self.enter(self.store, f"in-{i}", symbol, cash=None)
            self.store.add_pending_order(f"out-{i}", symbol, "sell", 0.5, 100.0)
            trade = Trade(symbol, 0.5, 100.0, 110.0, 1_000, 2_000 + i, 0.05, 0.06, profit,
                          profit / 50 * 100, "time_limit", features=None if i else (0.1, 0.2),
                          entry_client_order_id=f"in-{i}",
                          exit_client_order_id="ignored: taken from the fill")
            self.store.record_exit(fill(f"out-{i}", symbol, "sell"), trade)
        recent = self.reopen().recent_trades(3)
        self.assertEqual([t.symbol for t in recent], ["S3/USDT", "S2/USDT", "S1/USDT"])
        self.assertEqual(recent[0].exit_client_order_id, "out-3")
        oldest = self.store.recent_trades(10)[-1]
        self.assertEqual(oldest.features, blob_to_features(features_to_blob((0.1, 0.2))))
        self.assertAlmostEqual(oldest.features[0], 0.1, places=6)
        totals = self.store.totals()
        self.assertEqual((totals.trades, totals.wins, totals.losses), (4, 2, 2))
        self.assertEqual(totals.win_rate, 0.5)
        self.assertAlmostEqual(totals.total_profit, sum(profits))
        self.assertAlmostEqual(totals.fees, 4 * 0.11)
        self.assertEqual((totals.best, totals.worst), (7.5, -2.0))
        self.assertIsNone(self.store.get_meta("paper_cash"))  # cash=None leaves it alone

    def test_empty_totals(self) -> None:
        totals = self.store.totals()
        self.assertEqual((totals.trades, totals.win_rate, totals.total_profit), (0, 0.0, 0.0))

    def test_features_blob_is_float32(self) -> None:
        blob = features_to_blob([1.0, 0.5, -3.0])
        self.assertEqual(len(blob), 12)
        self.assertEqual(blob_to_features(blob), (1.0, 0.5, -3.0))
        self.assertIsNone(features_to_blob(None))
        self.enter(self.store, "c-1")
        self.store.add_pending_order("c-2", "ETH/USDT", "buy", 0.5, 100.0)
        self.store.record_entry(fill("c-2", "ETH/USDT"), position("ETH/USDT", features=None))
        features = {p.symbol: p.features for p in self.reopen().open_positions()}
        self.assertEqual(features, {"BTC/USDT": (1.5, -2.25), "ETH/USDT": None})

    def test_equity_curve(self) -> None:
        for i in range(5):
            self.store.record_equity(1_000 * i, 1000.0 + i, 900.0 - i, i % 3)
        curve = self.reopen().equity_curve(limit=3)
        self.assertEqual([(e.ts_ms, e.equity, e.cash, e.open_positions) for e in curve],
                         [(2000, 1002.0, 898.0, 2), (3000, 1003.0, 897.0, 0),
                          (4000, 1004.0, 896.0, 1)])
        self.assertEqual(len(self.store.equity_curve()), 5)

    def test_meta(self) -> None:
        self.assertIsNone(self.store.get_meta("cycle"))
        self.assertEqual(self.store.get_meta("cycle", "0"), "0")
        self.store.set_meta("cycle", "41")
        self.store.set_meta("cycle", "42")
        self.assertEqual(self.reopen().get_meta("cycle"), "42")
        self.assertEqual(self.store.paper_cash(default=1000.0), 1000.0)

    def test_next_sequence_never_repeats_across_reopen(self) -> None:
        seen = [self.store.next_sequence("order") for _ in range(3)]
        seen += [self.reopen().next_sequence("order") for _ in range(2)]
        self.assertEqual(seen, [1, 2, 3, 4, 5])
        self.assertEqual(self.store.next_sequence("other"), 1)

    def test_threads_share_one_store(self) -> None:
        results: list[int] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            for i in range(25):
                value = self.store.next_sequence("order")
                self.store.record_equity(value, float(k), float(i), k)
                with lock:
                    results.append(value)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(results), list(range(1, 201)))
        self.assertEqual(len(self.store.equity_curve()), 200)


class TradesTest(StoreTestCase):
    def test_entry_reason_and_probability_travel_from_position_to_trade(self) -> None:
        self.store.add_pending_order("c-1", "ETH/USDT", "buy", 0.5, 100.0)
        p = position("ETH/USDT", entry_reason="model", probability=0.73,
                     entry_client_order_id="c-1")
        self.store.record_entry(fill("c-1", "ETH/USDT"), p)
        (row,) = self.reopen().open_positions()
        self.assertEqual(row, p)
        self.assertEqual((row.entry_reason, row.probability), ("model", 0.73))
        self.store.add_pending_order("c-2", "ETH/USDT", "sell", 0.5, 90.0)
        exit_fill = fill("c-2", "ETH/USDT", "sell", price=90.0, fee=0.045, ts=4_000)
        trade = Trade.closing(row, exit_fill, "stop_loss")
        self.store.record_exit(exit_fill, trade)
        (saved,) = self.reopen().all_trades()
        self.assertEqual(saved, trade)
        self.assertEqual((saved.entry_reason, saved.probability, saved.exit_reason),
                         ("model", 0.73, "stop_loss"))
        self.assertLess(saved.profit, 0)

    def test_a_partial_exit_reduces_the_position_and_records_its_trade(self) -> None:
        _, p = self.enter(self.store, "c-1", cash=950.0)
        (p,) = self.store.open_positions()
        self.store.add_pending_order("c-2", "BTC/USDT", "sell", 0.2, 120.0, reason="scale_out")
        part = fill("c-2", side="sell", amount=0.2, price=120.0, fee=0.024, ts=5_000)
        first = Trade.closing(p, part, "scale_out")
        left = p.reduced(0.2)
        self.store.record_exit(part, first, remaining=left, cash=950.0 + 24.0 - 0.024)

        store = self.reopen()
        (row,) = store.open_positions()
        self.assertAlmostEqual(row.amount, 0.3)
        self.assertAlmostEqual(row.entry_fee, 0.05 * 0.3 / 0.5)
        self.assertEqual(row, left)   # stops, entry, group and features unchanged
        self.assertEqual(store.all_trades(), [first])
        self.assertAlmostEqual(first.entry_fee, 0.02)
        self.assertAlmostEqual(store.paper_cash(default=0.0), 973.976)
        self.assertEqual(store.order("c-2").status, "filled")

        store.add_pending_order("c-3", "BTC/USDT", "sell", 0.3, 90.0, reason="stop_loss")
        rest = fill("c-3", side="sell", amount=0.3, price=90.0, fee=0.027, ts=8_000)
        second = Trade.closing(row, rest, "stop_loss")
        store.record_exit(rest, second, cash=973.976 + 27.0 - 0.027)
        store = self.reopen()
        self.assertEqual(store.open_positions(), [])
        self.assertEqual(store.all_trades(), [first, second])
        self.assertEqual(store.recent_trades(1), [second])
        self.assertAlmostEqual(sum(t.entry_fee for t in store.all_trades()), 0.05)
        self.assertAlmostEqual(store.totals().total_profit, first.profit + second.profit)
        self.assertEqual(store.last_exits(), {"BTC/USDT": 8_000})

    def test_a_partial_exit_without_a_position_writes_nothing(self) -> None:
        self.store.add_pending_order("c-1", "ETH/USDT", "sell", 0.2, 10.0)
        p = position("ETH/USDT")
        trade = Trade.closing(p, fill("c-1", "ETH/USDT", "sell", amount=0.2), "scale_out")
        with self.assertRaisesRegex(StoreError, "no open position in ETH/USDT"):
            self.store.record_exit(fill("c-1", "ETH/USDT", "sell", amount=0.2), trade,
                                   remaining=p.reduced(0.2), cash=5.0)
        self.assertEqual(self.store.order("c-1").status, "pending")
        self.assertEqual(self.store.all_trades(), [])
        self.assertIsNone(self.store.get_meta("paper_cash"))

    def test_last_exits_is_the_latest_sale_of_each_pair(self) -> None:
        self.assertEqual(self.store.last_exits(), {})
        for i, (symbol, ts) in enumerate([("A/USDT", 5_000), ("B/USDT", 3_000), ("A/USDT", 9_000),
                                          ("A/USDT", 7_000)]):
            self.enter(self.store, f"in-{i}", symbol, cash=None)
            self.store.add_pending_order(f"out-{i}", symbol, "sell", 0.5, 100.0)
            exit_fill = fill(f"out-{i}", symbol, "sell", ts=ts)
            self.store.record_exit(exit_fill, Trade.closing(position(symbol), exit_fill, "x"))
        self.assertEqual(self.reopen().last_exits(), {"A/USDT": 9_000, "B/USDT": 3_000})
        self.assertEqual([t.exit_time_ms for t in self.store.all_trades()],
                         [5_000, 3_000, 9_000, 7_000])  # in the order they were recorded


class DecisionRecordTest(StoreTestCase):
    def test_candles_are_kept_once_and_read_back_in_time_order(self) -> None:
        rows = [[1_000 * k, 10.0 + k, 11.0 + k, 9.0 + k, 10.5 + k, 100.0 * k] for k in range(5)]
        self.store.record_candles("B/USDT", rows[2:])
        self.store.record_candles("B/USDT", rows[:3])          # 2000 again: kept once
        self.store.record_candles("A/USDT", [[7_000, 1, 2, 0.5, 1.5, 3]])
        self.store.record_candles("A/USDT", [])
        candles = self.reopen().recorded_candles()
        self.assertEqual(list(candles), ["A/USDT", "B/USDT"])
        self.assertEqual(candles["A/USDT"], [(7_000, 1.0, 2.0, 0.5, 1.5, 3.0)])
        self.assertEqual(candles["B/USDT"], [tuple(r) for r in rows])
        self.assertIsInstance(candles["B/USDT"][0][0], int)

    def test_cycles_and_decisions_round_trip(self) -> None:
        inputs = json.dumps({"cash": 1000.0, "positions": []})
        self.store.record_cycle(1, 300_000, inputs, [
            ("entry", "A/USDT", 10.0, 2.0, "model", "tb-A-1"),
            ("exit", "B/USDT", 5.0, 1.0, "stop_loss", None)])
        self.clock.advance(60)
        self.store.record_cycle(2, None, "{}", [])
        store = self.reopen()
        self.assertEqual(store.recorded_cycles(),
                         [(1, 1_700_000_000_000, 300_000, inputs), (2, 1_700_000_060_000, None, "{}")])
        self.assertEqual(json.loads(store.recorded_cycles()[0][3]), {"cash": 1000.0, "positions": []})
        self.assertEqual(store.recorded_decisions(), [
            (1, "entry", "A/USDT", 10.0, 2.0, "model", "tb-A-1"),
            (1, "exit", "B/USDT", 5.0, 1.0, "stop_loss", None)])

    def test_a_decision_of_an_unknown_kind_writes_nothing_of_its_cycle(self) -> None:
        with self.assertRaisesRegex(StoreError, "record_cycle failed.*CHECK"):
            self.store.record_cycle(3, 1, "{}", [("entry", "A/USDT", 1.0, 1.0, "r", "c"),
                                                 ("hold", "A/USDT", 1.0, 1.0, "r", None)])
        self.assertEqual(self.store.recorded_cycles(), [])
        self.assertEqual(self.store.recorded_decisions(), [])

    def test_recording_a_cycle_number_again_never_mixes_two_runs(self) -> None:
        # A crash after record_cycle(n) but before the trader saves its cycle counter runs a
        # cycle numbered n again after the restart. Whether the store refuses the second
        # record or replaces the first, the cycle's inputs and decisions must stay together.
        first = ('{"run": 1}', [("entry", "A/USDT", 1.0, 1.0, "rule", "c-1")])
        second = ('{"run": 2}', [("entry", "B/USDT", 2.0, 1.0, "rule", "c-2")])
        self.store.record_cycle(5, 1, *first)
        try:
            self.store.record_cycle(5, 2, *second)
        except StoreError:
            kept = first
        else:
            kept = second
        self.assertEqual([c[3] for c in self.store.recorded_cycles()], [kept[0]])
        self.assertEqual(self.store.recorded_decisions(), [(5, *d) for d in kept[1]])


# The statements of schema version 1 as released (store.py before the decision record).
V1_STATEMENTS = (
    """CREATE TABLE orders (
        id INTEGER PRIMARY KEY,
        client_order_id TEXT NOT NULL UNIQUE,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
        amount REAL NOT NULL,
        price REAL NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'filled', 'rejected', 'abandoned')),
        exchange_order_id TEXT,
        fee REAL NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        stop_loss REAL,
        take_profit REAL)""",
    "CREATE INDEX orders_pending ON orders (created_ms) WHERE status = 'pending'",
    """CREATE TABLE positions (
        symbol TEXT PRIMARY KEY,
        amount REAL NOT NULL CHECK (amount > 0),
        entry_price REAL NOT NULL,
        entry_time_ms INTEGER NOT NULL,
        stop_loss REAL NOT NULL,
        take_profit REAL NOT NULL,
        entry_fee REAL NOT NULL,
        group_name TEXT NOT NULL,
        entry_client_order_id TEXT NOT NULL,
        features BLOB)""",
    """CREATE TABLE trades (
        id INTEGER PRIMARY KEY,
        symbol TEXT NOT NULL,
        amount REAL NOT NULL,
        entry_price REAL NOT NULL,
        exit_price REAL NOT NULL,
        entry_time_ms INTEGER NOT NULL,
        exit_time_ms INTEGER NOT NULL,
        entry_fee REAL NOT NULL,
        exit_fee REAL NOT NULL,
        profit REAL NOT NULL,
        return_pct REAL NOT NULL,
        exit_reason TEXT NOT NULL,
        features BLOB,
        entry_client_order_id TEXT NOT NULL,
        exit_client_order_id TEXT NOT NULL UNIQUE)""",
    "CREATE INDEX trades_exit_time ON trades (exit_time_ms)",
    """CREATE TABLE equity (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        equity REAL NOT NULL,
        cash REAL NOT NULL,
        open_positions INTEGER NOT NULL)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class MigrationTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.path = store_path(self.tmp.name, "paper")

    def build_v1(self, *extra: str) -> None:
        """A version-1 database as the previous release left it, with some history."""
        conn = sqlite3.connect(self.path)
        for sql in V1_STATEMENTS + extra:
            conn.execute(sql)
        conn.execute("INSERT INTO orders (client_order_id, symbol, side, amount, price, status,"
                     " exchange_order_id, fee, created_ms, updated_ms, reason, stop_loss,"
                     " take_profit) VALUES ('o1', 'BTC/USDT', 'buy', 0.5, 100, 'filled', 'x1',"
                     " 0.05, 1000, 1000, 'entry', 95, 110),"
                     " ('o2', 'ETH/USDT', 'buy', 1, 10, 'pending', NULL, 0, 2000, 2000, '', 9, 12)")
        conn.execute("INSERT INTO positions VALUES ('BTC/USDT', 0.5, 100, 1000, 95, 110, 0.05,"
                     " 'majors', 'o1', ?)", (features_to_blob((1.5, -2.25)),))
        conn.execute("INSERT INTO trades (symbol, amount, entry_price, exit_price, entry_time_ms,"
                     " exit_time_ms, entry_fee, exit_fee, profit, return_pct, exit_reason,"
                     " features, entry_client_order_id, exit_client_order_id) VALUES"
                     " ('SOL/USDT', 2, 20, 22, 100, 900, 0.04, 0.044, 3.916, 9.78, 'take_profit',"
                     " NULL, 'o0', 'o0-out')")
        conn.execute("INSERT INTO equity (ts_ms, equity, cash, open_positions)"
                     " VALUES (900, 1003.9, 953.9, 1)")
        conn.execute("INSERT INTO meta VALUES ('paper_cash', '953.9'), ('seq:order', '2'),"
                     " ('cycle', '17')")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
        conn.close()

    def test_a_version_1_database_is_upgraded_with_its_data(self) -> None:
        self.build_v1()
        with Store.open(self.tmp.name, "paper", clock=ManualClock(50.0)) as store:
            version = store._conn.execute("PRAGMA user_version").fetchone()[0]
            self.assertEqual(version, SCHEMA_VERSION)
            self.assertEqual(store.open_positions(), [
                Position("BTC/USDT", 0.5, 100.0, 1000, 95.0, 110.0, 0.05, "majors", (1.5, -2.25),
                         "o1", entry_reason="rule", probability=None)])
            self.assertEqual(store.all_trades(), [
                Trade("SOL/USDT", 2.0, 20.0, 22.0, 100, 900, 0.04, 0.044, 3.916, 9.78,
                      "take_profit", "rule", None, None, "o0", "o0-out")])
            self.assertEqual(store.last_exits(), {"SOL/USDT": 900})
            self.assertEqual([o.client_order_id for o in store.pending_orders()], ["o2"])
            self.assertEqual(store.order("o1").stop_loss, 95.0)
            self.assertEqual(store.paper_cash(default=0.0), 953.9)
            self.assertEqual(store.get_meta("cycle"), "17")
            self.assertEqual(store.next_sequence("order"), 3)
            self.assertEqual([e.equity for e in store.equity_curve()], [1003.9])
            # the new columns and tables are in use at once
            store.add_pending_order("o3", "ETH/USDT", "buy", 1.0, 10.0)
            store.record_entry(fill("o3", "ETH/USDT"), position(
                "ETH/USDT", entry_reason="model", probability=0.8, entry_client_order_id="o3"))
            self.assertEqual({p.symbol: (p.entry_reason, p.probability)
                              for p in store.open_positions()},
                             {"BTC/USDT": ("rule", None), "ETH/USDT": ("model", 0.8)})
            store.record_candles("BTC/USDT", [[0, 1, 1, 1, 1, 1]])
            store.record_cycle(18, 0, "{}", [("entry", "ETH/USDT", 10.0, 1.0, "model", "o3")])
            self.assertEqual(store.recorded_cycles(), [(18, 50_000, 0, "{}")])
            self.assertEqual(len(store.recorded_decisions()), 1)
        with Store.open(self.tmp.name, "paper") as again:   # opening it again changes nothing
            self.assertEqual(len(again.open_positions()), 2)
            self.assertEqual(len(again.recorded_candles()["BTC/USDT"]), 1)

    def test_a_failed_migration_leaves_the_version_1_database_as_it_was(self) -> None:
        # a stray table in the way of the migration's CREATE TABLE candles
        self.build_v1("CREATE TABLE candles (x INTEGER)")
        with self.assertRaises(StoreError) as cm:
            Store.open(self.tmp.name, "paper")
        self.assertIn(str(self.path), str(cm.exception))
        self.assertIn("candles", str(cm.exception))
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], 1)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(positions)")}
        self.assertNotIn("entry_reason", columns)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM positions").fetchone()[0], 1)


class AtomicityTest(StoreTestCase):
    def test_failed_entry_writes_nothing(self) -> None:
        self.enter(self.store, "c-1", cash=950.0)
        self.store.add_pending_order("c-2", "BTC/USDT", "buy", 0.5, 100.0)
        # The order update succeeds, then the position insert violates CHECK (amount > 0).
        with self.assertRaisesRegex(StoreError, "record_entry failed.*CHECK"):
            self.store.record_entry(fill("c-2"), position("ETH/USDT", amount=0.0), cash=900.0)
        store = self.reopen()
        self.assertEqual(store.order("c-2").status, "pending")
        self.assertEqual(len(store.open_positions()), 1)
        self.assertEqual(store.paper_cash(default=0.0), 950.0)

    def test_exception_mid_transaction_rolls_back(self) -> None:
        self.store.add_pending_order("c-1", "BTC/USDT", "buy", 0.5, 100.0)

        class Broken:
            symbol, amount, entry_price, entry_time_ms = "BTC/USDT", 0.5, 100.0, 1
            stop_loss, take_profit, entry_fee, group = 95.0, 110.0, 0.05, "majors"

            @property
            def features(self) -> None:
                raise RuntimeError("boom")

        with self.assertRaisesRegex(RuntimeError, "boom"):
            self.store.record_entry(fill("c-1"), Broken(), cash=1.0)
        self.assertEqual(self.store.order("c-1").status, "pending")
        self.assertEqual(self.store.open_positions(), [])
        self.assertIsNone(self.store.get_meta("paper_cash"))
        self.enter(self.store, "c-2")  # the connection is usable afterwards
        self.assertEqual(len(self.store.open_positions()), 1)

    def test_exit_without_position_writes_nothing(self) -> None:
        self.store.add_pending_order("c-1", "ETH/USDT", "sell", 1.0, 10.0)
        trade = Trade("ETH/USDT", 1.0, 9.0, 10.0, 0, 1, 0.01, 0.01, 0.98, 10.0, "stop_loss")
        with self.assertRaisesRegex(StoreError, "no open position in ETH/USDT"):
            self.store.record_exit(fill("c-1", "ETH/USDT", "sell"), trade, cash=5.0)
        self.assertEqual(self.store.order("c-1").status, "pending")
        self.assertEqual(self.store.recent_trades(), [])
        self.assertIsNone(self.store.get_meta("paper_cash"))

    def test_fill_of_unknown_or_filled_order_rejected(self) -> None:
        with self.assertRaisesRegex(StoreError, "unknown or already filled"):
            self.store.record_entry(fill("never-sent"), position())
        f, p = self.enter(self.store, "c-1")
        self.store.add_pending_order("c-2", "BTC/USDT", "sell", 0.5, 100.0)
        trade = Trade.closing(p, f, "stop_loss")
        with self.assertRaisesRegex(StoreError, "already filled"):
            self.store.record_exit(f, trade)  # the entry's fill again
        self.assertEqual(len(self.store.open_positions()), 1)


class BadFileTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.path = Path(self.tmp.name) / "trades-paper.sqlite"

    def assert_one_line_error(self, pattern: str) -> None:
        with self.assertRaises(StoreError) as ctx:
            Store.open(self.tmp.name, "paper")
        message = str(ctx.exception)
        self.assertIn(str(self.path), message)
        self.assertRegex(message, pattern)
        self.assertNotIn("\n", message)

    def test_not_a_database(self) -> None:
        self.path.write_bytes(b"this is not sqlite " * 500)
        self.assert_one_line_error("not a usable trades database.*move it aside or delete it")

    def test_damaged_page(self) -> None:
        with Store.open(self.tmp.name, "paper") as store:
            for i in range(200):
                store.set_meta(f"key{i}", "x" * 200)
        data = bytearray(self.path.read_bytes())
        self.assertGreater(len(data), 4 * 4096)
        data[3 * 4096:4 * 4096] = b"\xab" * 4096  # page 4: a b-tree page
        self.path.write_bytes(bytes(data))
        self.assert_one_line_error("integrity check failed|malformed")

    def test_newer_schema(self) -> None:
        conn = sqlite3.connect(self.path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        self.assert_one_line_error("newer than this program's")


CHILD = r"""
import sys, time
from domain import Fill as DomainFill, Position
from store import Store

def Fill(coid, symbol):
    return DomainFill(symbol, "buy", 1.0, 10.0, 10.0, 0.01, 5, "x-" + coid, coid)

store = Store.open(sys.argv[1], "paper")
scenario = sys.argv[2]
if scenario == "hang-mid-transaction":
    for name in ("A", "B"):
        coid = "o%d" % store.next_sequence("order")
        store.add_pending_order(coid, name + "/USDT", "buy", 1.0, 10.0)
        store.record_entry(Fill(coid, name + "/USDT"),
                           Position(name + "/USDT", 1.0, 10.0, 5, 9.0, 12.0, 0.01),
                           cash=990.0 if name == "A" else 980.0)
    store.add_pending_order("o3", "C/USDT", "buy", 1.0, 10.0)   # sent, fill never recorded
    store.next_sequence("order")                                 # o3's number

    class Hanging:   # a position whose features are read inside record_entry's transaction
        symbol, amount, entry_price, entry_time_ms = "D/USDT", 1.0, 10.0, 5
        stop_loss, take_profit, entry_fee, group = 9.0, 12.0, 0.01, "other"

        @property
        def features(self):
            print("ready", flush=True)   # the order is already updated, not committed
            time.sleep(60)

    store.add_pending_order("o4", "D/USDT", "buy", 1.0, 10.0)
    store.record_entry(Fill("o4", "D/USDT"), Hanging(), cash=970.0)
else:  # write entries as fast as possible, announcing each one committed
    for i in range(100000):
        coid = "o%d" % store.next_sequence("order")
        store.add_pending_order(coid, "S%d/USDT" % i, "buy", 1.0, 10.0)
        store.record_entry(Fill(coid, "S%d/USDT" % i),
                           Position("S%d/USDT" % i, 1.0, 10.0, 5, 9.0, 12.0, 0.01),
                           cash=1000.0 - (i + 1))
        print(coid, flush=True)
"""


class CrashTest(unittest.TestCase):
    """A real writer process killed with SIGKILL; reopening shows exactly what was committed."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def start_child(self, scenario: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, self.tmp.name, scenario],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.addCleanup(proc.stdout.close)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        self.assertEqual(proc.wait(timeout=10), -signal.SIGKILL)

    def test_kill_inside_a_transaction(self) -> None:
        proc = self.start_child("hang-mid-transaction")
        self.assertEqual(proc.stdout.readline().strip(), "ready")
        self.kill(proc)
        with Store.open(self.tmp.name, "paper") as store:
            self.assertEqual([p.symbol for p in store.open_positions()],
                             ["A/USDT", "B/USDT"])
            self.assertEqual([o.client_order_id for o in store.pending_orders()],
                             ["o3", "o4"])  # o4's fill was never committed
            self.assertEqual(store.paper_cash(default=0.0), 980.0)
            self.assertEqual(store.next_sequence("order"), 4)

    def test_kill_during_a_write_burst(self) -> None:
        proc = self.start_child("burst")
        announced = [proc.stdout.readline().strip() for _ in range(30)]
        self.kill(proc)
        announced += [line.strip() for line in proc.stdout]  # printed before the kill
        with Store.open(self.tmp.name, "paper") as store:
            positions = store.open_positions()
            coids = {p.entry_client_order_id for p in positions}
            self.assertLessEqual(set(announced), coids)  # every announced entry survived
            self.assertLessEqual(len(coids) - len(announced), 1)  # at most one unannounced
            # Each entry is whole: position, filled order and cash all agree.
            self.assertEqual(store.paper_cash(default=1000.0), 1000.0 - len(positions))
            filled = store._query("SELECT COUNT(*) FROM orders WHERE status = 'filled'")[0][0]
            self.assertEqual(filled, len(positions))
            self.assertLessEqual(len(store.pending_orders()), 1)
            used = max(int(c[1:]) for c in coids | {o.client_order_id
                                                    for o in store.pending_orders()})
            self.assertGreater(store.next_sequence("order"), used)



class PermissionTest(unittest.TestCase):
    def test_the_database_and_its_journal_are_readable_by_the_owner_only(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            with Store.open(tmp, "live") as store:
                store.set_meta("k", "v")
                files = [p for p in Path(tmp).iterdir() if p.name.startswith("trades-live")]
                self.assertIn("trades-live.sqlite-wal", {p.name for p in files})
                for p in files:
                    self.assertEqual(p.stat().st_mode & 0o777, 0o600, p.name)

if __name__ == "__main__":
    unittest.main()

"""Streaming market data end to end: the trader on the simulated exchange's WebSocket streams
through real ccxt.pro. Candles from the stream equal REST's; a stop is acted on within a
second of the price crossing it; dropped, stalled and 24-hour-closed connections are each
recovered with no missing and no duplicate candle; live fills arrive as events."""
import dataclasses
import threading
import time
import unittest

import numpy as np

from exchange import create_client, stream_factory
from parity import check_parity
from streaming import open_streams
from tests.test_trader import TraderCase

MINUTE_MS = 60_000
# 1m candles at SIM_SPEED 600: a candle closes every 0.1 s of wall time; a cycle every 1 s.
FAST = {"MARKET_DATA": "websocket", "TIMEFRAME": "1m", "SIM_PAIRS": "4", "MAX_PAIRS": "4",
        "CHECK_INTERVAL": "600", "STREAM_TIMEOUT": "1"}


def wait_for(condition, timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


class StreamingCase(TraderCase):
    def start_streaming(self, **overrides):
        trader = self.start(**(FAST | overrides))
        trader._start_streams()
        self.assertIsNotNone(trader.streaming, "the simulator streams")
        trader.run_cycle()                      # REST fills the store, then the streams start
        self.assertTrue(wait_for(lambda: trader.streaming.up), "streams came up")
        return trader

    def loop_for(self, trader, seconds: float) -> None:
        """Run the trading loop's wait between cycles (what `run` does) for a while."""
        trader._wait_until(time.monotonic() + seconds)

    def assert_store_matches_rest(self, trader) -> None:
        """Every pair's stored candles: one per minute, none twice, none missing, each equal
        to what REST answers for it."""
        for symbol in trader.scanner.store.symbols():
            stored = trader.scanner.store.get(symbol)
            self.assertTrue(np.all(np.diff(stored[:, 0]) == MINUTE_MS), f"{symbol}: hole or duplicate")
            recent = stored[-40:]
            rest = np.asarray(trader.client.fetch_ohlcv(symbol, "1m", since=int(recent[0, 0]),
                                                        limit=len(recent)), dtype=float)
            np.testing.assert_array_equal(recent, rest[:len(recent)], err_msg=symbol)


class TestStreamedCandles(StreamingCase):
    def test_streamed_candles_equal_rest_and_a_steady_scan_asks_for_none(self):
        trader = self.start_streaming()
        server = trader.client.sim_server
        self.loop_for(trader, 1.0)
        server.reset_counters()
        for _ in range(3):
            self.loop_for(trader, 0.5)
            trader.run_cycle()
        self.assertEqual(server.request_count("/api/v3/klines"), 0,
                         "the stream kept the candle store current")
        self.assertGreater(trader.streaming.stream.streams["candles"].messages, 10)
        self.assert_store_matches_rest(trader)
        trader._banner()
        self.assertIn(f"market data websocket ({server.stream_url})", self.lines[-1])

    def recover_from(self, trader, fault, undo=None) -> None:
        """Break the streams one way; they come back and the store has no hole."""
        before = trader.streaming.stream.reconnects
        server = trader.client.sim_server
        with self.assertLogs("streaming", "WARNING") as logs:
            fault(server)
            self.assertTrue(wait_for(lambda: trader.streaming.stream.reconnects > before, 5))
            self.loop_for(trader, 1.2)
        if undo is not None:
            undo(server)
        self.assertTrue(wait_for(lambda: trader.streaming.up, timeout=10))
        self.assertTrue(any("streams down" in line for line in logs.output))
        self.loop_for(trader, 0.5)
        trader.run_cycle()                       # REST catches up over anything left
        self.loop_for(trader, 0.3)
        self.assert_store_matches_rest(trader)

    def test_dropped_stalled_and_24_hour_closed_streams_are_each_recovered_without_a_hole(self):
        trader = self.start_streaming()
        self.loop_for(trader, 0.5)
        with self.subTest("a dropped connection"):
            self.recover_from(trader, lambda server: server.drop_streams())
        with self.subTest("a stalled stream, treated as dead"):
            self.recover_from(trader, lambda server: server.configure({"stream_stall": True}),
                              lambda server: server.configure({"stream_stall": False}))
        with self.subTest("Binance's 24-hour disconnect"):
            self.recover_from(trader, lambda server: server.configure({"stream_max_age": 0.5}),
                              lambda server: server.configure({"stream_max_age": 86400}))


class TestStreamedExits(StreamingCase):
    def test_a_price_crossing_the_stop_is_acted_on_within_a_second(self):
        trader = self.start_streaming(STOP_LOSS_PCT="0.0005")
        for _ in range(5):
            self.run_until_positions(trader)
            trader._on_arrivals(trader.streaming.take(0))   # what came during the cycles
            if trader.positions:
                break
        position = next(iter(trader.positions.values()))
        crossed: list[float] = []

        def watch_prices(message):
            bid = message.payload.get(position.symbol, (None,))[0]
            if bid is not None and bid <= position.stop_loss and not crossed:
                crossed.append(time.monotonic())

        trader.streaming.feed.subscribe("test", ["price"], handler=watch_prices)
        closed: list[float] = []
        original = trader.reporter.closed
        trader.reporter.closed = lambda *a: (closed.append(time.monotonic()), original(*a))
        deadline = time.monotonic() + 30
        while position.symbol in trader.positions and time.monotonic() < deadline:
            self.loop_for(trader, 0.2)
        self.assertNotIn(position.symbol, trader.positions, "the stop was never crossed")
        self.assertTrue(crossed)
        self.assertLess(closed[0] - crossed[0], 1.0, "exit more than a second after the cross")
        trade = next(t for t in trader.store.recent_trades(10) if t.symbol == position.symbol)
        self.assertEqual(trade.exit_reason, "stop_loss")
        report = check_parity(trader.store)          # the exit check replays like a cycle
        self.assertEqual(report.of_kind("decision") + report.of_kind("books"), [], report.format())

    def test_a_slow_subscriber_does_not_delay_the_trading_loop(self):
        trader = self.start_streaming()
        release = threading.Event()
        self.addCleanup(release.set)
        slow = trader.streaming.feed.subscribe("slow", ["price", "candle"],
                                               handler=lambda m: release.wait(30))
        symbol = trader.scanner.store.symbols()[0]
        before = trader.scanner.store.last_ts(symbol)
        self.loop_for(trader, 1.5)
        after = trader.scanner.store.last_ts(symbol)
        self.assertGreater(after, before, "the loop kept taking candles")
        mailbox = trader.streaming.mailbox
        self.assertEqual(mailbox.overflow, 0)
        self.assertGreater(slow.depth, 0, "the slow one is behind, alone")
        self.assertLess(np.percentile(list(mailbox.latencies), 99), 0.5)


class TestLiveEvents(StreamingCase):
    def test_a_stop_fill_on_the_exchange_arrives_as_an_event_and_is_recorded(self):
        trader = self.start_streaming(DRY_RUN="false", STOP_LOSS_PCT="0.0005",
                                      CHECK_INTERVAL="60000")
        self.assertIsNotNone(trader.stops, "live on the simulator: stops on the exchange")
        self.run_until_positions(trader)
        symbol = next(iter(trader.positions))
        deadline = time.monotonic() + 30
        cycle = trader.cycle
        while symbol in trader.positions and time.monotonic() < deadline:
            self.loop_for(trader, 0.2)
        self.assertNotIn(symbol, trader.positions, "the exchange's stop never filled")
        trade = trader.store.recent_trades(1)[0]
        self.assertEqual(trade.symbol, symbol)
        self.assertGreater(trader.cycle, cycle, "booked by an exit check between cycles")
        self.assertGreater(trader.streaming.stream.streams["orders"].messages, 0)
        report = check_parity(trader.store)
        self.assertEqual(report.of_kind("decision") + report.of_kind("books"), [], report.format())


class TestStreamSettings(StreamingCase):
    def test_rest_mode_starts_no_stream(self):
        trader = self.start(MARKET_DATA="rest")
        trader._start_streams()
        self.assertIsNone(trader.streaming)
        trader._banner()
        self.assertIn("market data REST polling", self.lines[-1])

    def test_a_simulator_in_another_process_announces_its_streams(self):
        trader = self.start(**FAST)
        server = trader.client.sim_server
        remote = dataclasses.replace(trader.config, sim_url=server.url)
        client = create_client(remote)
        self.addCleanup(client.close)
        self.assertEqual(stream_factory(client, remote)[1], server.stream_url)

    def test_the_report_counts_overflow(self):
        trader = self.start(**FAST)
        streaming = open_streams(trader.client, trader.config, "1m")
        self.addCleanup(streaming.close)
        for i in range(1001):
            streaming.feed.publish("candle", ("X/USDT", [i, 1, 1, 1, 1, 1]), critical=True)
        got = streaming.take(0)
        self.assertEqual(got.lost, frozenset({"candle"}))
        self.assertIn("overflow 1 (critical 1)", streaming.report())


if __name__ == "__main__":
    unittest.main()

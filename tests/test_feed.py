"""The message feed: bounded buffers, drop-oldest overflow, critical losses reported, slow
subscribers isolated from the producer and from each other."""
import threading
import time
import unittest

from feed import CAPACITY, Feed, percentiles


class FeedTest(unittest.TestCase):
    def setUp(self):
        self.feed = Feed()
        self.addCleanup(self.feed.close)

    def test_a_mailbox_takes_what_was_published_in_order(self):
        box = self.feed.subscribe("loop", ["price", "candle"])
        other = self.feed.subscribe("other", ["order"])
        for i in range(5):
            self.feed.publish("price", i)
        self.feed.publish("candle", "c", critical=True)
        self.feed.publish("ignored", "x")
        batch = box.take(timeout=1)
        self.assertEqual([m.payload for m in batch.messages], [0, 1, 2, 3, 4, "c"])
        self.assertEqual(batch.lost, frozenset())
        self.assertEqual(other.take(timeout=0).messages, [])
        self.assertEqual(box.take(timeout=0).messages, [])
        self.assertEqual(self.feed.published, 7)
        self.assertEqual(len(box.latencies), 6)

    def test_overflow_drops_the_oldest_counts_it_and_reports_lost_critical_topics(self):
        box = self.feed.subscribe("loop", ["price", "candle"])
        self.feed.publish("candle", "first", critical=True)
        for i in range(CAPACITY):
            self.feed.publish("price", i)
        batch = box.take(timeout=1)
        self.assertEqual(len(batch.messages), CAPACITY)
        self.assertEqual(batch.messages[0].payload, 0)      # the candle made room
        self.assertEqual(batch.lost, frozenset({"candle"}))
        self.assertEqual((box.overflow, box.critical_lost), (1, 1))
        stats = self.feed.stats()["subscribers"]["loop"]
        self.assertEqual((stats["overflow"], stats["critical_lost"], stats["depth"]), (1, 1, 0))
        self.feed.publish("price", "next")
        self.assertEqual(box.take(timeout=1).lost, frozenset())   # reported once

    def test_a_slow_subscriber_delays_neither_the_producer_nor_the_others(self):
        release = threading.Event()
        fast_got: list = []
        fast_done = threading.Event()

        def slow(message):
            release.wait(10)

        def fast(message):
            fast_got.append(message.payload)
            if len(fast_got) == 50:
                fast_done.set()

        self.feed.subscribe("slow", ["price"], handler=slow)
        self.feed.subscribe("fast", ["price"], handler=fast)
        published = threading.Event()

        def produce():
            for i in range(50):
                self.feed.publish("price", i)
            published.set()

        threading.Thread(target=produce, daemon=True).start()
        self.assertTrue(published.wait(5), "the producer waited for the slow subscriber")
        self.assertTrue(fast_done.wait(5), "the fast subscriber waited for the slow one")
        self.assertEqual(fast_got, list(range(50)))
        release.set()

    def test_a_handler_that_raises_does_not_stop_its_subscriber(self):
        got, done = [], threading.Event()

        def handler(message):
            if message.payload == 0:
                raise ValueError("bad message")
            got.append(message.payload)
            done.set()

        self.feed.subscribe("h", ["t"], handler=handler)
        with self.assertLogs("feed", "ERROR"):
            self.feed.publish("t", 0)
            self.feed.publish("t", 1)
            self.assertTrue(done.wait(5))
        self.assertEqual(got, [1])

    def test_a_handler_subscriber_is_told_of_critical_losses(self):
        box_lost, gate = [], threading.Event()
        first = threading.Event()

        def handler(message):
            first.set()
            gate.wait(5)

        self.feed.subscribe("h", ["candle"], handler=handler, on_loss=box_lost.append)
        self.feed.publish("candle", -1, critical=True)
        self.assertTrue(first.wait(5))            # the handler is busy with the first one
        for i in range(CAPACITY + 3):
            self.feed.publish("candle", i, critical=True)
        gate.set()
        deadline = time.monotonic() + 5
        while not box_lost and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(box_lost, [frozenset({"candle"})])

    def test_take_times_out_empty(self):
        box = self.feed.subscribe("loop", ["price"])
        batch = box.take(timeout=0.01)
        self.assertEqual((batch.messages, batch.lost), ([], frozenset()))

    def test_percentiles(self):
        self.assertEqual(percentiles([]), {})
        p = percentiles(range(1, 101))
        self.assertAlmostEqual(p[50], 50.5)
        self.assertAlmostEqual(p[99], 99.01)


if __name__ == "__main__":
    unittest.main()

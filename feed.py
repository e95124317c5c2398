"""A bounded, thread-safe message feed: a producer publishes by topic, subscribers take.

Each subscriber has its own buffer of ``CAPACITY`` (1000) messages, so a slow subscriber
fills only its own buffer: it delays neither the producer nor the other subscribers.
Publishing is an append under a lock and, when the buffer was empty, one wake-up; it never
waits for a subscriber.

Overflow policy: **drop the oldest**. Market data is superseded by what follows it (a newer
price makes an older one worthless), so when a buffer is full the oldest message makes room
for the newest. A message published as ``critical`` (a closed candle, an order update, a
balance) is never dropped silently: it is counted apart and its topic is handed to the
subscriber with the next batch (``Batch.lost``), so the subscriber catches up from the
source (REST) instead of trusting a hole.

Two kinds of subscriber:

- a **mailbox** (no handler): its owner takes batches on its own thread, so the owner stays
  the single writer of whatever it manages (the trading loop takes prices, candles and
  fills this way);
- a **handler** subscriber: a thread of its own calls ``handler(message)`` for each message
  and ``on_loss(topics)`` after critical losses.

The feed counts what it published; each subscriber counts what it took, what
overflowed, and the latency from publish to take (a ring of the last 1000, for percentiles).
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from typing import Callable, Iterable

from performance_monitor import percentile

log = logging.getLogger(__name__)

CAPACITY = 1000


@dataclass(slots=True)
class Message:
    topic: str
    payload: object
    critical: bool
    published: float        # perf_counter() when published


@dataclass(frozen=True)
class Batch:
    messages: list[Message]
    lost: frozenset[str]    # topics of critical messages dropped since the last batch


def percentiles(values: Iterable[float], qs=(50, 95, 99)) -> dict[int, float]:
    """The qs-th percentiles of the values (empty dict when there are none)."""
    ordered = sorted(values)
    return {q: percentile(ordered, q) for q in qs} if ordered else {}


class Subscriber:
    """One subscriber's bounded buffer: `offer` (producer side) and `take` (consumer side)."""

    def __init__(self, name: str, topics: Iterable[str], capacity: int = CAPACITY):
        self.name, self.topics, self.capacity = name, frozenset(topics), capacity
        self._buffer: deque[Message] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._lost: set[str] = set()
        self.overflow = 0           # messages dropped to make room
        self.critical_lost = 0      # of which critical
        self.taken = 0
        self.latencies: deque[float] = deque(maxlen=CAPACITY)   # seconds, publish -> take

    def offer(self, message: Message) -> None:
        """Buffer one message; when full, the oldest makes room (counted, see the module)."""
        with self._lock:
            was_empty = not self._buffer
            if len(self._buffer) >= self.capacity:
                dropped = self._buffer.popleft()
                self.overflow += 1
                if dropped.critical:
                    self.critical_lost += 1
                    self._lost.add(dropped.topic)
            self._buffer.append(message)
        if was_empty:
            self._ready.set()

    def take(self, timeout: float | None = None) -> Batch:
        """Everything buffered, waiting up to timeout for the first message."""
        if not self._ready.wait(timeout):
            return Batch([], frozenset())
        with self._lock:
            messages = list(self._buffer)
            self._buffer.clear()
            self._ready.clear()
            lost, self._lost = frozenset(self._lost), set()
        now = perf_counter()
        self.latencies.extend(now - m.published for m in messages)
        self.taken += len(messages)
        return Batch(messages, lost)

    @property
    def depth(self) -> int:
        return len(self._buffer)

    def stats(self) -> dict:
        ms = {f"p{q}_ms": v * 1000 for q, v in percentiles(self.latencies).items()}
        return {"depth": self.depth, "taken": self.taken, "overflow": self.overflow,
                "critical_lost": self.critical_lost, **ms}


class _HandlerThread:
    """Runs a handler subscriber: takes batches and calls the handler for each message."""

    def __init__(self, sub: Subscriber, handler: Callable[[Message], None],
                 on_loss: Callable[[frozenset[str]], None] | None):
        self.sub, self.handler, self.on_loss = sub, handler, on_loss
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"feed-{sub.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            batch = self.sub.take(timeout=0.2)
            if batch.lost and self.on_loss is not None:
                self._call(self.on_loss, batch.lost)
            for message in batch.messages:
                self._call(self.handler, message)

    def _call(self, fn, arg) -> None:
        try:
            fn(arg)
        except Exception:   # one bad message must not kill the subscriber
            log.exception("feed subscriber %s failed on a message", self.sub.name)


@dataclass
class Feed:
    """Topic -> subscribers; publish from one producer thread, take from any other."""

    capacity: int = CAPACITY
    published: int = 0
    _by_topic: dict[str, tuple[Subscriber, ...]] = field(default_factory=dict)
    _subscribers: list[Subscriber] = field(default_factory=list)
    _threads: list[_HandlerThread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _started: float = field(default_factory=monotonic)

    def subscribe(self, name: str, topics: Iterable[str],
                  handler: Callable[[Message], None] | None = None,
                  on_loss: Callable[[frozenset[str]], None] | None = None) -> Subscriber:
        """A mailbox (no handler) or a handler subscriber with its own thread."""
        sub = Subscriber(name, topics, self.capacity)
        with self._lock:     # copy on write: publish reads the tuples without a lock
            self._subscribers.append(sub)
            for topic in sub.topics:
                self._by_topic[topic] = self._by_topic.get(topic, ()) + (sub,)
            if handler is not None:
                self._threads.append(_HandlerThread(sub, handler, on_loss))
        return sub

    def publish(self, topic: str, payload: object, critical: bool = False) -> None:
        message = Message(topic, payload, critical, perf_counter())
        for sub in self._by_topic.get(topic, ()):
            sub.offer(message)
        self.published += 1

    def close(self) -> None:
        for t in self._threads:
            t.stopping.set()
        for t in self._threads:
            t.thread.join(timeout=2.0)

    def stats(self) -> dict:
        """Messages published (and per second since the feed started) and each subscriber's
        depth, overflow and latency percentiles."""
        seconds = max(monotonic() - self._started, 1e-9)
        return {"published": self.published, "per_second": self.published / seconds,
                "subscribers": {s.name: s.stats() for s in self._subscribers}}

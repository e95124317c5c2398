"""The trading loop's side of the streams: the feed, the stream thread and the loop's mailbox.

`Streaming.take(timeout)` hands the trading loop what arrived since it last looked, already
sorted into what the loop acts on (`Arrivals`): every bid update in order (so a dip that
recovered before the loop looked is still checked against the stops), the closed candles
in order, order and balance updates, critical topics lost to overflow, and whether the
streams went down or came back. The loop stays the only writer of positions and money.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from exchange import stream_factory
from feed import Feed
from market_stream import TOPICS, MarketStream

log = logging.getLogger(__name__)

PRICE_MAX_AGE = 5.0   # wall seconds: an older streamed price is not used for exits


@dataclass
class Arrivals:
    prices: list[dict[str, float]] = field(default_factory=list)  # bid updates, in order
    candles: list[tuple[str, list]] = field(default_factory=list)
    orders: list[dict] = field(default_factory=list)
    balance: dict[str, float] | None = None                     # newest totals
    lost: frozenset[str] = frozenset()
    status: dict | None = None                                  # newest up/down change


def open_streams(client, config, timeframe: str | None) -> "Streaming | None":
    """Streams for the trader (not started): candles of `timeframe` (None: prices only, the
    candles come from REST), best bids, and with keys in live mode the account's orders and
    balances. None when ccxt.pro cannot stream this exchange."""
    built = stream_factory(client, config)
    if built is None:
        return None
    make, url = built
    return Streaming(make, timeframe, config.stream_timeout, private=not config.dry_run, url=url)


class Streaming:
    """Owns the Feed and the MarketStream; the trading loop takes `Arrivals` from it."""

    def __init__(self, make_exchange, timeframe: str | None, stale_after: float, private: bool,
                 url: str = ""):
        self.url = url
        self.feed = Feed()
        self.mailbox = self.feed.subscribe("trading loop", TOPICS)
        self.stream = MarketStream(make_exchange, self.feed, timeframe, stale_after, private)
        self._bids: dict[str, tuple[float, float]] = {}     # symbol -> (bid, monotonic)

    def start(self) -> "Streaming":
        self.stream.start()
        return self

    def close(self) -> None:
        self.stream.stop()
        self.feed.close()

    def watch(self, symbols) -> None:
        self.stream.watch(symbols)

    @property
    def up(self) -> bool:
        return self.stream.up

    def take(self, timeout: float) -> Arrivals:
        batch = self.mailbox.take(timeout)
        out = Arrivals(lost=batch.lost)
        now = time.monotonic()
        for m in batch.messages:
            if m.topic == "price":
                bids = {symbol: float(bid) for symbol, (bid, _ask) in m.payload.items()}
                out.prices.append(bids)
                self._bids.update((symbol, (bid, now)) for symbol, bid in bids.items())
            elif m.topic == "candle":
                out.candles.append(m.payload)
            elif m.topic == "order":
                out.orders.append(m.payload)
            elif m.topic == "balance":
                out.balance = m.payload
            elif m.topic == "status":
                out.status = m.payload
                self._log_status(m.payload)
        return out

    @staticmethod
    def _log_status(status: dict) -> None:
        """Said once per change: the streams publish a status only when they go down or up."""
        if status["up"]:
            log.info("streams up: exits are checked on every price update, candles come from "
                     "the stream")
        else:
            log.warning("streams down (%s): polling REST every CHECK_INTERVAL until they "
                        "recover", status["error"])

    def fresh_prices(self, symbols) -> dict[str, float] | None:
        """The streamed bids of all these pairs if each is recent and the streams are up,
        else None (the caller asks REST)."""
        if not self.up:
            return None
        now, out = time.monotonic(), {}
        for symbol in symbols:
            bid, seen = self._bids.get(symbol, (None, 0.0))
            if bid is None or now - seen > PRICE_MAX_AGE:
                return None
            out[symbol] = bid
        return out

    def report(self) -> str:
        """The performance report's section: queue, rates, overflow, reconnects, staleness
        and the subscriber's latency percentiles."""
        feed, stream = self.feed.stats(), self.stream.stats()
        sub = feed["subscribers"]["trading loop"]
        lines = [f"streams {'up' if stream['up'] else 'DOWN'} at {self.url or 'the exchange'}; "
                 f"reconnects {stream['reconnects']}"
                 + (f"; last error: {stream['last_error']}" if stream["last_error"] else ""),
                 f"feed: {feed['published']} messages ({feed['per_second']:.1f}/s), queue depth "
                 f"{sub['depth']}, overflow {sub['overflow']} (critical {sub['critical_lost']})"]
        if "p50_ms" in sub:
            lines.append(f"latency publish->loop: p50 {sub['p50_ms']:.2f} ms, p95 "
                         f"{sub['p95_ms']:.2f} ms, p99 {sub['p99_ms']:.2f} ms")
        for name, s in stream["streams"].items():
            age = "never" if s["staleness_s"] is None else f"{s['staleness_s']:.1f}s ago"
            lines.append(f"  {name:<8} {s['messages']:>8} messages, last {age}")
        return "\n".join(lines)

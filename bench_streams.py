"""Benchmarks of the streaming market data: `python bench.py --only streams`.

Five figures, each beside a baseline measured in the same run:

1. queueing 1000 messages into the Feed (1 and 3 mailboxes) vs queue.Queue.put_nowait;
2. taking a batch and handing each message on (the Feed, and the trader's Streaming.take)
   vs queue.Queue.get_nowait + a call per message;
3. a stop touched -> the exit booked: a streaming trader (wall seconds from the first bid
   under the stop reaching the bot) vs a trader polling REST every CHECK_INTERVAL (from the
   touch on the simulator's bid path, in market seconds: live seconds);
4. REST request weight per market hour of a 50-pair bot, streaming vs polling;
5. CPU seconds per wall second of the bot's side of 50 pairs' streams (the simulator runs
   in another process) vs polling the same bids and candles over REST.

The helpers every section shares (Row, time_row, repeats, QUICK, NOTES, bot_config) come
from bench_kit
(tests/test_architecture.py counts imports inside functions too).
"""
from __future__ import annotations

import contextlib
import math
import queue
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import bench_kit
from bench_kit import NOTES, Row, bot_config, repeats, time_row

ROOT = Path(__file__).resolve().parent
MESSAGES = 1000                       # the Feed's buffer: one full mailbox
QUOTED = "QUOTED from the seed report, not measured here"


def bench_streams() -> list[Row]:
    """Every streaming figure."""
    return (_queue_rows() + _dispatch_rows() + _cpu_rows()
            + _exit_latency_rows() + _weight_rows())


# ------------------------------------------------------------------------------ 1. queueing

def _rounds(*cases: tuple[Callable[[], object], Callable[[], object]],
            repeat: int = 15) -> list[float]:
    """Median seconds of each case's run(), its reset() untimed after each; interleaved."""
    samples: list[list[float]] = [[] for _ in cases]
    for run, reset in cases:                # warm-up
        run()
        reset()
    for _ in range(repeats(repeat)):
        for (run, reset), out in zip(cases, samples):
            start = time.perf_counter()
            run()
            out.append(time.perf_counter() - start)
            reset()
    return [statistics.median(s) for s in samples]


def _quote() -> dict[str, tuple[float, float]]:
    """One streamed price message's payload: {symbol: (bid, ask)}."""
    return {"C0/USDT": (100.0, 100.01)}


def _feed_with(mailboxes: int):
    from feed import Feed

    feed = Feed()
    subs = [feed.subscribe(f"mailbox {i}", ["price"]) for i in range(mailboxes)]
    return feed, subs


def _publisher(feed, subs) -> tuple[Callable[[], None], Callable[[], None]]:
    payload = _quote()

    def run() -> None:
        for _ in range(MESSAGES):
            feed.publish("price", payload)

    return run, lambda: [s.take(0) for s in subs]


def _queue_putter() -> tuple[Callable[[], None], Callable[[], None]]:
    q: queue.Queue = queue.Queue(maxsize=MESSAGES)
    payload = _quote()

    def run() -> None:
        for _ in range(MESSAGES):
            q.put_nowait(("price", payload))

    def reset() -> None:
        with q.mutex:
            q.queue.clear()

    return run, reset


def _queue_rows() -> list[Row]:
    one, three, base = _rounds(_publisher(*_feed_with(1)), _publisher(*_feed_with(3)),
                               _queue_putter())
    name = f"feed: publish {MESSAGES} messages"
    return [time_row(f"{name}, 1 mailbox", one, f"queue.Queue.put_nowait x{MESSAGES}", base),
            time_row(f"{name}, 3 mailboxes", three, f"queue.Queue.put_nowait x{MESSAGES}",
                         base),
            time_row(f"{name}, 1 mailbox", one, f"{MESSAGES} messages in 0.3-0.5 ms ({QUOTED}; "
                         "midpoint)", 0.4e-3)]


# ------------------------------------------------------------------------------ 2. dispatch

def _feed_taker(handle) -> tuple[Callable[[], None], Callable[[], None]]:
    feed, (sub,) = _feed_with(1)
    fill, _ = _publisher(feed, [sub])

    def run() -> None:
        for m in sub.take(0).messages:
            handle(m.topic, m.payload)

    return run, fill


def _streaming_taker() -> tuple[Callable[[], None], Callable[[], None]]:
    """The trader's own take: Streaming.take sorts a batch into Arrivals (newest bid per pair)."""
    from streaming import Streaming

    streaming = Streaming(lambda: None, "5m", 30.0, private=False)   # never started
    payload = {f"C{i}/USDT": (100.0 + i, 100.01 + i) for i in range(5)}   # 5 pairs' bids

    def fill() -> None:
        for _ in range(MESSAGES):
            streaming.feed.publish("price", payload)

    return lambda: streaming.take(0), fill


def _queue_getter(handle) -> tuple[Callable[[], None], Callable[[], None]]:
    q: queue.Queue = queue.Queue(maxsize=MESSAGES)
    payload = _quote()

    def run() -> None:
        for _ in range(MESSAGES):
            handle(*q.get_nowait())

    def refill() -> None:
        for _ in range(MESSAGES):
            q.put_nowait(("price", payload))

    return run, refill


def _dispatch_rows() -> list[Row]:
    latest: dict = {}
    handle = latest.__setitem__                 # the handler: keep the newest per topic
    cases = [_feed_taker(handle), _streaming_taker(), _queue_getter(handle)]
    for _, fill in cases:
        fill()
    feed, streaming, base = (t / MESSAGES for t in _rounds(*cases))
    base_name = "queue.Queue.get_nowait + a call, per message"
    return [time_row("feed: take a batch of 1000 + a handler call, per message", feed,
                         base_name, base, "us"),
            time_row("Streaming.take (batch of 1000 price messages -> Arrivals), per message",
                         streaming, base_name, base, "us"),
            time_row("feed: take a batch of 1000 + a handler call, per message", feed,
                         f"0.001-0.002 ms per message ({QUOTED}; midpoint)", 1.5e-6, "us")]


# ------------------------------------------------------------------------------ a trader to drive

@contextlib.contextmanager
def _trader(**env: object) -> Iterator:
    """A Trader on its own in-process simulator (bot_config: 50 pairs unless overridden)."""
    from reporter import Reporter
    from trader import Trader

    with tempfile.TemporaryDirectory() as tmp:
        trader = Trader(bot_config(tmp, **env), reporter=Reporter(lambda line: None))
        try:
            yield trader
        finally:
            trader.close()


def _interval(trader) -> float:
    """Wall seconds between cycles: CHECK_INTERVAL market seconds on the sped-up clock."""
    return trader.config.check_interval / trader.time_scale


def _turn(trader, opening: Callable[[], object] | None = None,
          rng: random.Random | None = None) -> None:
    """One turn of Trader.run: a cycle, then the wait, acting on the streams meanwhile;
    `opening` runs at a random moment of the wait (so crossings fall at random phases)."""
    started = time.monotonic()
    trader.run_cycle()
    if opening is not None:
        trader._wait_until(started + rng.uniform(0.0, _interval(trader)))
        opening()
    trader._wait_until(started + _interval(trader))


def _start(trader, timeout: float = 20.0) -> None:
    """The first cycle (REST fills the candle store); with MARKET_DATA=websocket, the streams."""
    trader._start_streams()
    _turn(trader)
    deadline = time.monotonic() + timeout
    while trader.streaming is not None and not trader.streaming.up:
        if time.monotonic() > deadline:
            raise RuntimeError("streams: the simulator's streams did not come up")
        _turn(trader)


def _keep_rate_limits_in_market_time(trader) -> None:
    """The client's throttle and the simulator's weight budget are wall-clock rates: scale
    them by SIM_SPEED so that they bind as they would live (the requests stay the same)."""
    speed, server = trader.time_scale, trader.client.sim_server
    trader.client.ccxt.rateLimit = trader.client.ccxt.rateLimit / speed
    server.set_rate_limit(int(server.knobs()["rate_limit"] * speed))


def _buy(trader, symbol: str, stop_below: float):
    """Open a position as the trader would (paper fill, booked), stop `stop_below` under
    the bid."""
    from domain import EntryIntent

    price = trader._fresh_prices([symbol])[symbol]
    amount, _ = trader.broker.rules(symbol).round_order("buy", 200.0 / price, price)
    position = trader.orders.buy(EntryIntent(symbol, price, amount, price * (1 - stop_below),
                                             math.inf, 0.0, None, None, "rule"))
    if position is None:
        raise RuntimeError(f"streams: the paper buy of {symbol} failed")
    return position


class _Exit(NamedTuple):
    position: object        # the position as opened
    since: float            # perf_counter() just before its buy
    booked: float           # perf_counter() when its exit was booked


def _exit_clock(trader) -> dict[str, tuple[float, str]]:
    """symbol -> (perf_counter(), exit reason) of its latest exit booked (the reporter's
    `closed` event), from now on."""
    booked: dict[str, tuple[float, str]] = {}
    closed = trader.reporter.closed

    def stamped(fill, trade, left) -> None:
        booked[trade.symbol] = (time.perf_counter(), trade.exit_reason)
        closed(fill, trade, left)

    trader.reporter.closed = stamped
    return booked


# ------------------------------------------------------------------------------ 3. stop -> exit

# Three pairs, all held, each with a stop STOP_BELOW under its bid (crossed within a few
# market minutes) and bought again once sold, one buy per cycle at most. CHECK_INTERVAL is
# the medium preset's (the default ACCOUNT_SIZE); no exit signal: every exit is a stop's.
LATENCY_ENV = {"SIM_PAIRS": 3, "MAX_PAIRS": 3, "SIM_SPEED": 600, "ML_ENABLED": "false",
               "USE_EXIT_SIGNAL": "false", "ENABLE_PERFORMANCE_MONITORING": "false"}
STOP_BELOW = 0.0002
CROSSINGS_TIMEOUT = 60.0              # wall seconds for all the crossings of one mode


def _stop_exits(trader, n: int, rng: random.Random) -> list[_Exit]:
    """Hold every pair with a stop just under its bid, bought at a random moment of a cycle
    (so that crossings fall at random phases of the polls) and again once sold; the first
    n exits by a stop (fewer if CROSSINGS_TIMEOUT passes)."""
    symbols = trader.scanner.store.symbols()
    booked = _exit_clock(trader)
    held: dict[str, tuple[object, float]] = {}
    exits: list[_Exit] = []

    def collect() -> None:
        for symbol in [s for s in held if s not in trader.positions]:
            position, since = held.pop(symbol)
            at, reason = booked[symbol]
            if reason == "stop_loss":
                exits.append(_Exit(position, since, at))

    def buy_one() -> None:
        collect()
        free = [s for s in symbols if s not in trader.positions]
        if free:
            since = time.perf_counter()
            held[free[0]] = (_buy(trader, free[0], STOP_BELOW), since)

    deadline = time.monotonic() + CROSSINGS_TIMEOUT
    while len(exits) < n and time.monotonic() < deadline:
        _turn(trader, buy_one, rng)
        collect()
    return exits[:n]


class _Latency(NamedTuple):
    seconds: float          # from the stop's first touch since the buy to the exit booked
    next_look: float        # from the touch to the bot's next look at the price (a poll)
    missed_dip: bool        # the touch was over before the bot acted: it sold at a later one


def _crossing(path: Iterable[tuple[float, float]], stop: float) -> tuple[float, float] | None:
    """(first touch, start of the last stretch at or below the stop) over a (time, bid)
    path: a poll sees the price when it looks, so a dip that is over by then is missed,
    and the exit acts on the stretch it saw."""
    first = start = None
    below = False
    for t, bid in path:
        if bid <= stop and not below:
            start = t
            first = t if first is None else first
        below = bid <= stop
    return None if first is None else (first, start)


class _PriceTape:
    """A side subscriber of the trader's feed: every streamed bid, stamped with the moment
    the stream published it into the feed (the bid's arrival at the bot)."""

    def __init__(self, feed):
        self.bids: dict[str, list[tuple[float, float]]] = {}      # symbol -> (time, bid)
        feed.subscribe("bench tape", ["price"], handler=self._on_price)

    def _on_price(self, message) -> None:
        for symbol, (bid, _ask) in message.payload.items():
            self.bids.setdefault(symbol, []).append((message.published, float(bid)))

    def between(self, symbol: str, start: float, end: float) -> list[tuple[float, float]]:
        return [(t, bid) for t, bid in self.bids.get(symbol, ()) if start <= t <= end]


def _streamed_latencies(n: int, rng: random.Random) -> list[_Latency]:
    """Wall seconds from the crossing bid's arrival (its publish into the feed) to the exit
    booked, n crossings."""
    with _trader(**LATENCY_ENV, MARKET_DATA="websocket") as trader:
        _start(trader)
        tape = _PriceTape(trader.streaming.feed)
        exits = _stop_exits(trader, n, rng)
        time.sleep(0.05)                        # the tape's thread is a message behind at most
    out = []
    for e in exits:
        crossed = _crossing(tape.between(e.position.symbol, e.since, e.booked),
                            e.position.stop_loss)
        if crossed is not None:
            first, acted = crossed
            out.append(_Latency(e.booked - first, 0.0, first < acted))
    return out


def _bid_path(market, market_id: str, start_ms: int, end_ms: int
              ) -> Iterator[tuple[float, float]]:
    """(market s, best bid) each market second: what bookTicker would have answered."""
    for t in range(start_ms, end_ms + 1, 1000):
        yield t / 1000, float(market.order_book(market_id, 1, at_ms=t)["bids"][0][0])


class _Poll(NamedTuple):
    start_s: float          # market seconds when the request was sent
    end_s: float            # market seconds when its answer was back
    wall: float             # perf_counter() when it was sent
    symbols: frozenset[str]


def _poll_log(trader) -> list[_Poll]:
    """Every REST price poll from now on."""
    polls: list[_Poll] = []
    fetch = trader.scanner.fresh_prices

    def logged(symbols):
        start, wall, symbols = trader.clock(), time.perf_counter(), list(symbols)
        try:
            return fetch(symbols)
        finally:
            polls.append(_Poll(start, trader.clock(), wall, frozenset(symbols)))

    trader.scanner.fresh_prices = logged
    return polls


def _polled_sample(trader, e: _Exit, polls: list[_Poll]) -> _Latency | None:
    """The first touch placed on the simulator's bid path (to the market second): the wait
    from it to the poll that saw the price under the stop in market seconds, then the poll
    and the sale in wall seconds. None when the path has none (the sample is dropped)."""
    polls = [p for p in polls if e.position.symbol in p.symbols]
    poll = [p for p in polls if p.wall < e.booked][-1]
    market_id = trader.client.ccxt.market(e.position.symbol)["id"]
    crossed = _crossing(_bid_path(trader.client.sim, market_id, e.position.entry_time_ms,
                                  int(poll.end_s * 1000)), e.position.stop_loss)
    if crossed is None:
        return None
    first, acted = crossed
    next_look = min(p.start_s for p in polls if p.start_s >= first) - first
    return _Latency(max(0.0, poll.start_s - first) + e.booked - poll.wall, next_look,
                    first < acted)


def _polled_latencies(n: int, rng: random.Random) -> list[_Latency]:
    """A REST-polling trader, n crossings (see _polled_sample)."""
    with _trader(**LATENCY_ENV, MARKET_DATA="rest") as trader:
        # live, a poll waits for its rate-limit slot (up to 0.8 s after the hourly all-pairs
        # ticker) a few hundredths of a cycle; on the sped-up clock, a large share of one
        _keep_rate_limits_in_market_time(trader)
        _start(trader)
        polls = _poll_log(trader)
        samples = [_polled_sample(trader, e, polls) for e in _stop_exits(trader, n, rng)]
    return [s for s in samples if s is not None]


def _latency_note(streamed: list[_Latency], polled: list[_Latency], interval: float) -> str:
    look = statistics.mean(p.next_look for p in polled)
    dips = [p.seconds for p in polled if p.missed_dip]
    return (f"streams, stop -> exit: {len(streamed)} streamed and {len(polled)} polled crossings "
            f"({LATENCY_ENV['SIM_PAIRS']} pairs held at once, SIM_SPEED "
            f"{LATENCY_ENV['SIM_SPEED']}, stops {STOP_BELOW:.2%} under the bid, each bought at a "
            "random moment of a cycle), timed from the stop's first touch. Polled: the next poll "
            f"came {look:.1f} s after the touch on average (half of CHECK_INTERVAL: "
            f"{interval / 2:g} s); {len(dips)} touch(es) were over by then, the price back above "
            "the stop, and sold at a later crossing"
            + (f" ({', '.join(f'{d:.0f}' for d in sorted(dips))} s)" if dips else "")
            + f". Streamed: {sum(p.missed_dip for p in streamed)} such dip(s); pairs crossing "
            "together are sold one after the other, each sale waiting for the client's "
            "rate-limit slot")


def _exit_latency_rows() -> list[Row]:
    rng = random.Random(7)
    streamed = _streamed_latencies(repeats(10), rng)
    polled = _polled_latencies(repeats(20), rng)
    if not streamed or not polled:
        raise RuntimeError(f"streams: too few stop crossings ({len(streamed)} streamed, "
                           f"{len(polled)} polled) within {CROSSINGS_TIMEOUT:g} s")
    from config import load_config

    interval = load_config(None, environ={}).check_interval
    NOTES.append(_latency_note(streamed, polled, interval))
    name = "stop touched -> exit booked, streaming (wall s from the first bid under it)"
    base = (f"REST polling every CHECK_INTERVAL {interval:g} s (the default; from the touch on "
            "the bid path, live-equivalent s)")
    s, p = [x.seconds for x in streamed], [x.seconds for x in polled]
    return [time_row(f"{name}: median", statistics.median(s), f"{base}: median",
                         statistics.median(p), "ms"),
            time_row(f"{name}: max", max(s), f"{base}: max", max(p), "ms")]


# ------------------------------------------------------------------------------ 4. REST weight

POSITIONS = 5                          # the medium preset's MAX_OPEN_POSITIONS, all held
WEIGHT_ENV = {"ML_ENABLED": "false", "USE_EXIT_SIGNAL": "false",
              "ENABLE_PERFORMANCE_MONITORING": "false"}


@contextlib.contextmanager
def _charged_weights() -> Iterator[Counter]:
    """path -> the weight the simulator charged for its requests (its own `_ROUTES` weight
    functions, wrapped for the duration)."""
    import sim_exchange

    charged: Counter = Counter()
    routes = dict(sim_exchange._ROUTES)

    def counting(path: str, weight_fn):
        def weight(params: dict) -> int:
            w = weight_fn(params)
            charged[path] += w
            return w
        return weight

    for (method, path), (weight_fn, signed) in routes.items():
        sim_exchange._ROUTES[(method, path)] = (counting(path, weight_fn), signed)
    try:
        yield charged
    finally:
        sim_exchange._ROUTES.update(routes)


def _past_next_close(trader) -> None:
    """Turn until a decision candle has closed and a few cycles have passed: start-up ends
    there. (Streams that came up mid-candle publish their first closed candle then, and the
    trader catches up over REST on the candles that closed while they connected.)"""
    tf = trader.scanner.tf_ms / 1000
    target = (trader.clock() // tf + 1) * tf + 3 * trader.config.check_interval
    while trader.clock() < target:
        _turn(trader)


def _weight_run(mode: str, hours: float, **env: object) -> dict:
    """Weight and requests per market hour of a bot holding POSITIONS positions (stops far
    away), over `hours` market hours after the start-up (its first scan, the streams, the
    first candle close since)."""
    with _trader(**WEIGHT_ENV, **env, MARKET_DATA=mode) as trader:
        _keep_rate_limits_in_market_time(trader)
        _start(trader)
        for symbol in trader.scan.universe[:POSITIONS]:
            _buy(trader, symbol, 0.5)
        _past_next_close(trader)
        server = trader.client.sim_server
        with _charged_weights() as charged:
            server.reset_counters()
            start, turns = trader.clock(), 0
            while trader.clock() - start < hours * 3600:
                _turn(trader)
                turns += 1
            elapsed_h = (trader.clock() - start) / 3600
            counts = {p: server.request_count(p) for p in charged}
        return {"weight": sum(charged.values()) / elapsed_h,
                "requests": server.request_count() / elapsed_h,
                "by_path": {p.rsplit("/", 1)[-1]: (counts[p] / elapsed_h, w / elapsed_h)
                            for p, w in charged.items() if w},
                "cycles": turns / elapsed_h, "expected": 3600 / trader.config.check_interval,
                "strategy": f"{trader.strategy.name} on {trader.timeframe} candles"}


def _weight_note(label: str, stream: dict, poll: dict) -> str:
    def parts(run: dict) -> str:
        return ", ".join(f"{p} {n:.0f} req/{w:.0f} wt"
                         for p, (n, w) in sorted(run["by_path"].items())) or "none"

    return (f"streams, REST weight ({label}): per market hour, streaming {parts(stream)}; "
            f"polling {parts(poll)}; cycles per market hour {stream['cycles']:.1f} "
            f"streaming, {poll['cycles']:.1f} polling (live: {poll['expected']:g})")


# (what it shows, market hours (--quick: half), Trader settings). The default strategy decides on
# 4h candles: whole 4h candles, so that their closes average out. A strategy on TIMEFRAME's
# 5m candles shows what the candles cost when they come every 5 minutes. The speeds are the
# highest at which the polling bot still keeps its 30 cycles per market hour here.
WEIGHT_RUNS = (("default", 8, {"SIM_SPEED": 2400}),
               ("TIMEFRAME", 2, {"SIM_SPEED": 600, "STRATEGY": "trend_momentum"}))


def _weight_rows() -> list[Row]:
    base = "same bot, MARKET_DATA=rest (polls every CHECK_INTERVAL 120 s)"
    name = f"REST per market hour, 50 pairs, {POSITIONS} positions held, streaming"
    rows, runs = [], []
    for kind, hours, env in WEIGHT_RUNS:
        hours = hours / 2 if bench_kit.QUICK else hours
        stream, poll = (_weight_run(mode, hours, **env) for mode in ("websocket", "rest"))
        label = f"{kind}: {poll['strategy']}"
        NOTES.append(_weight_note(label, stream, poll))
        runs.append(f"{hours:g} market hours at SIM_SPEED {env['SIM_SPEED']} ({label})")
        rows += [Row(f"{name}: weight ({label})", stream["weight"], "weight/h", base,
                         poll["weight"]),
                 Row(f"{name}: requests ({label})", stream["requests"], "req/h", base,
                         poll["requests"])]
    NOTES.append(
        f"streams, REST weight: the same Trader config both ways, {POSITIONS} positions held "
        "(stops far away) so that the polling bot asks for their bids every cycle, as it must to "
        f"guard them; {'; '.join(runs)}; the client's throttle and the simulator's weight budget "
        "scaled by SIM_SPEED. WebSocket subscriptions carry no REST weight (Binance limits them "
        "apart: connections, messages per second)")
    return rows


# ------------------------------------------------------------------------------ 5. CPU

CPU_TIMEFRAME = "5m"                    # TIMEFRAME's default: candles streamed as the bot would


@contextlib.contextmanager
def _sim_process(pairs: int = 50, speed: float = 1.0) -> Iterator[tuple[str, str]]:
    """`python sim_exchange.py --port 0` in a child process (its CPU is not ours); its REST
    and stream URLs, read from its log."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "sim_exchange.py", "--port", "0", "--pairs",
                                 str(pairs), "--speed", str(speed), "--log-level", "INFO"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            yield _announced_urls(proc, err)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _announced_urls(proc: subprocess.Popen, err, timeout: float = 30.0) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        err.seek(0)
        log = err.read()
        rest = re.search(r"exchange listening on (http://\S+)", log)
        ws = re.search(r"streams listening on (ws://\S+)", log)
        if rest and ws:
            return rest.group(1), ws.group(1)
        time.sleep(0.1)
    err.seek(0)
    raise RuntimeError(f"streams: sim_exchange.py did not start: {err.read()[-500:]}")


def _cpu_per_second(loop: Callable[[float], None], seconds: float) -> float:
    """CPU seconds of this whole process per wall second while loop(deadline) runs."""
    cpu, wall = time.process_time(), time.perf_counter()
    loop(wall + seconds)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def _stream_cpu(client, config, symbols: list[str], seconds: float) -> tuple[float, dict]:
    """CPU s per wall s of MarketStream + Feed + a loop taking the mailbox, once the streams
    are up; and the messages per second: the feed's, and the watchers' (ccxt.pro wake-ups)."""
    from streaming import open_streams

    streaming = open_streams(client, config, CPU_TIMEFRAME).start()
    stream = streaming.stream

    def take_until(deadline: float) -> None:
        while time.perf_counter() < deadline:
            streaming.take(0.25)

    def counts() -> dict[str, int]:
        return {"feed": streaming.feed.published} | {n: s.messages
                                                      for n, s in stream.streams.items()}

    try:
        streaming.watch(symbols)
        deadline = time.monotonic() + 20
        while not streaming.up and time.monotonic() < deadline:
            streaming.take(0.25)
        if not streaming.up:
            raise RuntimeError("streams: the separate simulator's streams did not come up")
        take_until(time.perf_counter() + 1.0)                   # settle
        before = counts()
        cpu = _cpu_per_second(take_until, seconds)
        return cpu, {k: (v - before[k]) / seconds for k, v in counts().items()}
    finally:
        streaming.close()


def _poll_cpu(client, symbols: list[str], seconds: float) -> float:
    """CPU s per wall s of one fetch_bids_asks for all the pairs every wall second."""
    def poll_until(deadline: float) -> None:
        due = time.perf_counter()
        while due < deadline:
            client.call("fetch_bids_asks", symbols)
            due += 1.0
            time.sleep(max(0.0, min(due, deadline) - time.perf_counter()))

    return _cpu_per_second(poll_until, seconds)


def _candle_round_cpu(client, symbols: list[str]) -> float:
    """CPU seconds of fetching every pair's newest candles once (a scan after a close)."""
    cpu = time.process_time()
    for symbol in symbols:
        client.fetch_ohlcv(symbol, CPU_TIMEFRAME, limit=2)
    return time.process_time() - cpu


def _idle_cpu(seconds: float = 1.0) -> float:
    return _cpu_per_second(lambda deadline: time.sleep(max(0.0, deadline - time.perf_counter())),
                           seconds)


def _cpu_rows() -> list[Row]:
    from exchange import create_client

    seconds = 5.0 if not bench_kit.QUICK else 4.0
    with _sim_process() as (url, _stream_url), tempfile.TemporaryDirectory() as tmp:
        config = bot_config(tmp, SIM_URL=url, TIMEFRAME=CPU_TIMEFRAME)
        client = create_client(config)    # the simulator announces stream_url itself
        try:
            symbols = sorted(client.load_markets())[:50]
            idle = _idle_cpu()
            streamed, polled, rates = [], [], []
            for _ in range(repeats(2)):
                cpu, rate = _stream_cpu(client, config, symbols, seconds)
                streamed.append(cpu)
                rates.append(rate)
                polled.append(_poll_cpu(client, symbols, seconds))
            candles = statistics.median(_candle_round_cpu(client, symbols) for _ in range(3))
        finally:
            client.close()
    tf_s = config.timeframe_seconds
    bids = statistics.median(polled)
    base = bids + candles / tf_s
    rate = {k: statistics.median(r[k] for r in rates) for k in rates[0]}
    NOTES.append(
        f"streams, CPU: the simulator in its own process at speed 1 pushes every 0.1 s (Binance's "
        f"klines: every 2 s); ccxt.pro woke the watchers {rate['candles']:.0f} (candles) and "
        f"{rate['prices']:.0f} (bids) times/s, the feed carried {rate['feed']:.0f} messages/s "
        f"(closed candles, changed bids); the REST baseline is {bids * 1e3:.2f} ms/s of bid polls"
        f" plus a {candles * 1e3:.0f} ms round of 50 klines requests every "
        f"{tf_s} s; this process idle: {idle * 1e3:.2f} ms/s")
    name = (f"CPU per wall second, 50 pairs streamed ({CPU_TIMEFRAME} candles + best bids): "
            "MarketStream + Feed + the mailbox loop")
    return [Row(name, statistics.median(streamed) * 1e3, "ms/s",
                    f"REST: fetch_bids_asks (50 pairs) each second + 50 klines per "
                    f"{CPU_TIMEFRAME} close", base * 1e3)]

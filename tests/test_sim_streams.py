"""Tests of sim_streams: an unmodified ccxt.pro.binance and a raw aiohttp client against the
simulated exchange's WebSocket streams on 127.0.0.1 (fast market clocks, a few seconds each)."""
import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import time
import unittest
from urllib.parse import urlencode, urlsplit

import aiohttp
import ccxt
import ccxt.pro

import sim_streams
from sim_exchange import SimExchangeServer, ccxt_overrides
from sim_market import SimMarket

KEY, SECRET = "stream-key", "stream-secret"


def run(coro, timeout: float = 20.0):
    """Run a coroutine on a fresh event loop, failing after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def start_server(speed: float = 600.0, **kwargs) -> SimExchangeServer:
    market = SimMarket(pairs=5, seed=3, speed=speed)
    return SimExchangeServer(market, api_key=KEY, api_secret=SECRET, **kwargs).start()


def pro(server: SimExchangeServer) -> ccxt.pro.binance:
    return ccxt.pro.binance(ccxt_overrides(server.url, server.stream_url)
                            | {"apiKey": KEY, "secret": SECRET})


def rest(server: SimExchangeServer) -> ccxt.binance:
    return ccxt.binance(ccxt_overrides(server.url) | {"apiKey": KEY, "secret": SECRET})


def http_json(server: SimExchangeServer, method: str, path: str, params: dict | None = None,
              key: str | None = KEY) -> tuple[int, object]:
    conn = http.client.HTTPConnection(urlsplit(server.url).hostname, urlsplit(server.url).port,
                                      timeout=10)
    try:
        conn.request(method, path + ("?" + urlencode(params) if params else ""),
                     headers={"X-MBX-APIKEY": key} if key else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def receive_json(ws, timeout: float = 5.0):
    msg = await ws.receive(timeout=timeout)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise AssertionError(f"expected a text message, got {msg.type!r}")
    return json.loads(msg.data)


async def request(ws, method: str, params=None, mid=1):
    """Send a live request; its answer (stream payloads before it are skipped)."""
    await ws.send_str(json.dumps({"method": method, "params": params, "id": mid}))
    while True:
        msg = await receive_json(ws)
        if msg.get("id") == mid:
            return msg


class MarketStreamsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = start_server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_watch_ohlcv_for_symbols_closed_candles_equal_rest(self):
        symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]

        async def collect():
            ex = pro(self.server)
            try:
                while min(len(ex.ohlcvs.get(s, {}).get("1m", [])) for s in symbols) < 4:
                    got = await ex.watch_ohlcv_for_symbols([[s, "1m"] for s in symbols])
                    (symbol, by_tf), = got.items()       # one symbol per resolution
                    self.assertIn(symbol, symbols)
                    self.assertEqual(list(by_tf), ["1m"])
                # the cache rows are updated in place; all but the newest have closed
                return {s: [list(c) for c in ex.ohlcvs[s]["1m"]][:-1] for s in symbols}
            finally:
                await ex.close()

        closed = run(collect())
        client = rest(self.server)
        for symbol, candles in closed.items():
            self.assertGreaterEqual(len(candles), 3)
            self.assertEqual(client.fetch_ohlcv(symbol, "1m", since=candles[0][0],
                                                limit=len(candles)), candles, symbol)

    def test_raw_kline_stream_sends_every_closed_candle_as_rest_answers_it(self):
        async def collect():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.server.stream_url + "/ws/ethusdt@kline_1m") as ws:
                    closed = []
                    while len(closed) < 4:
                        event = await receive_json(ws)
                        self.assertEqual((event["e"], event["s"], event["k"]["i"]),
                                         ("kline", "ETHUSDT", "1m"))
                        if event["k"]["x"]:
                            closed.append(event["k"])
                    return closed

        closed = run(collect())
        opens = [k["t"] for k in closed]
        self.assertEqual(opens, list(range(opens[0], opens[0] + 4 * 60_000, 60_000)))  # none skipped
        status, rows = http_json(self.server, "GET", "/api/v3/klines",
                                 {"symbol": "ETHUSDT", "interval": "1m", "startTime": opens[0],
                                  "limit": 4})
        self.assertEqual(status, 200)
        fields = "t o h l c v T q n V Q B".split()
        self.assertEqual([[k[f] for f in fields] for k in closed], rows)

    def test_combined_stream_and_live_requests(self):
        async def talk():
            url = self.server.stream_url + "/stream?streams=btcusdt@bookTicker/ethusdt@kline_5m"
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url) as ws:
                    first = await receive_json(ws)
                    self.assertIn(first["stream"], ("btcusdt@bookTicker", "ethusdt@kline_5m"))
                    self.assertIn("data", first)
                    answers = [await request(ws, "SUBSCRIBE", ["solusdt@depth5@100ms"], 1),
                               await request(ws, "LIST_SUBSCRIPTIONS", None, 2)]
                    while (msg := await receive_json(ws))["stream"] != "solusdt@depth5@100ms":
                        pass
                    self.assertEqual((len(msg["data"]["bids"]), len(msg["data"]["asks"])), (5, 5))
                    answers += [await request(ws, "UNSUBSCRIBE", ["btcusdt@bookTicker"], 3),
                                await request(ws, "LIST_SUBSCRIPTIONS", None, 4),
                                await request(ws, "SUBSCRIBE", ["btcusdt@nonsense"], 5),
                                await request(ws, "FLY", [], 6)]
                    await ws.send_str("{not json")
                    while "error" not in (msg := await receive_json(ws)):
                        pass
                    return answers, msg

        answers, bad_json = run(talk())
        self.assertEqual(answers[0], {"result": None, "id": 1})
        self.assertEqual(answers[1]["result"], ["btcusdt@bookTicker", "ethusdt@kline_5m",
                                                "solusdt@depth5@100ms"])
        self.assertEqual(answers[2], {"result": None, "id": 3})
        self.assertEqual(answers[3]["result"], ["ethusdt@kline_5m", "solusdt@depth5@100ms"])
        self.assertEqual([a["error"]["code"] for a in answers[4:]], [2, 2])
        self.assertEqual((bad_json["error"]["code"], bad_json["id"]), (3, None))

    def test_unknown_raw_name_waits_for_subscriptions_and_pings_are_answered(self):
        async def talk():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.server.stream_url + "/ws/0",
                                              autoping=False) as ws:
                    await ws.ping(b"hi")
                    pong = await ws.receive(timeout=5)
                    answer = await request(ws, "SUBSCRIBE", ["xrpusdt@depth10@100ms"], 7)
                    book = await receive_json(ws)
                    return pong, answer, book

        pong, answer, book = run(talk())

        async def refused(path):
            async with aiohttp.ClientSession() as session:
                with self.assertRaises(aiohttp.WSServerHandshakeError) as caught:
                    await session.ws_connect(self.server.stream_url + path)
                return caught.exception.status

        self.assertEqual(run(refused("/ws/btcusdt@klines_9m")), 400)
        self.assertEqual(run(refused("/stream?streams=btcusdt@trade/nope@trade")), 400)
        self.assertEqual((pong.type, pong.data), (aiohttp.WSMsgType.PONG, b"hi"))
        self.assertEqual(answer, {"result": None, "id": 7})
        self.assertEqual(set(book), {"lastUpdateId", "bids", "asks"})
        self.assertEqual(len(book["bids"]), 10)

    def test_server_pings(self):
        self.server.streams.heartbeat = 0.2
        try:
            async def wait_ping():
                async with aiohttp.ClientSession() as session:
                    async with session.ws_connect(self.server.stream_url + "/ws/0",
                                                  autoping=False) as ws:
                        return await ws.receive(timeout=5)
            self.assertEqual(run(wait_ping()).type, aiohttp.WSMsgType.PING)
        finally:
            self.server.streams.heartbeat = 20.0

    def test_bids_asks_trades_tickers_and_order_book_through_ccxt_pro(self):
        async def watch():
            ex = pro(self.server)
            try:
                bids_asks = await ex.watch_bids_asks(["BTC/USDT"])
                trades = await ex.watch_trades("ETH/USDT")
                tickers = await ex.watch_tickers(["SOL/USDT"])
                book = await ex.watch_order_book("BNB/USDT")
                nonce = book["nonce"]
                while (book := await ex.watch_order_book("BNB/USDT"))["nonce"] == nonce:
                    pass
                return bids_asks, trades, tickers, book
            finally:
                await ex.close()

        bids_asks, trades, tickers, book = run(watch())
        quote = bids_asks["BTC/USDT"]
        self.assertLess(quote["bid"], quote["ask"])
        self.assertGreater(quote["bidVolume"], 0)
        self.assertTrue(trades and trades[-1]["symbol"] == "ETH/USDT" and trades[-1]["amount"] > 0)
        self.assertGreater(tickers["SOL/USDT"]["last"], 0)
        self.assertEqual(book["symbol"], "BNB/USDT")
        self.assertLess(book["bids"][0][0], book["asks"][0][0])
        self.assertEqual(len(book["bids"]), sim_streams.DIFF_LEVELS)

    def test_diff_depth_events_rebuild_the_rest_snapshot_exactly(self):
        def snapshot():
            status, body = http_json(self.server, "GET", "/api/v3/depth",
                                     {"symbol": "SOLUSDT", "limit": 1000})
            return body

        def apply(book, event):
            for side, key in (("bids", "b"), ("asks", "a")):
                for price, qty in event[key]:
                    book[side][price] = qty
                book[side] = {p: q for p, q in book[side].items() if float(q) > 0}

        async def replay():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.server.stream_url
                                              + "/ws/solusdt@depth@100ms") as ws:
                    events = [await receive_json(ws)]
                    start = await asyncio.to_thread(snapshot)
                    events += [await receive_json(ws) for _ in range(3)]
                    end = await asyncio.to_thread(snapshot)
                    while events[-1]["u"] < end["lastUpdateId"]:
                        events.append(await receive_json(ws))
                    return start, events, end

        start, events, end = run(replay())
        book = {side: dict(start[side]) for side in ("bids", "asks")}
        last = start["lastUpdateId"]
        for event in events:
            if event["u"] <= last:
                continue
            self.assertEqual(event["U"], last + 1)      # no gap in the update ids
            apply(book, event)
            last = event["u"]
            if last == end["lastUpdateId"]:
                break
        self.assertEqual(last, end["lastUpdateId"])
        for side in ("bids", "asks"):
            self.assertEqual(sorted(book[side].items(), key=lambda x: float(x[0])),
                             sorted(map(tuple, end[side]), key=lambda x: float(x[0])))


class UserDataTest(unittest.TestCase):
    def setUp(self):
        self.server = start_server(balances={"USDT": 10_000.0})
        self.client = rest(self.server)

    def tearDown(self):
        self.server.stop()

    def test_watch_orders_sees_a_rest_market_order_and_watch_balance_the_change(self):
        async def watch():
            ex = pro(self.server)
            try:
                await ex.load_markets()
                await ex.authenticate({"type": "spot"})  # the ws-api subscription is confirmed
                orders = asyncio.ensure_future(ex.watch_orders("BTC/USDT"))
                balance = asyncio.ensure_future(ex.watch_balance())
                await asyncio.sleep(0.1)                 # both are waiting
                placed = await asyncio.to_thread(self.client.create_order, "BTC/USDT", "market",
                                                 "buy", 0.001)
                seen = await orders
                while seen[-1]["status"] != "closed":
                    seen = await ex.watch_orders("BTC/USDT")
                return placed, seen[-1], await balance
            finally:
                await ex.close()

        placed, order, balance = run(watch())
        self.assertEqual((order["id"], order["status"], order["filled"], order["side"]),
                         (placed["id"], "closed", 0.001, "buy"))
        self.assertEqual(order["info"]["e"], "executionReport")
        self.assertAlmostEqual(balance["BTC"]["free"], 0.001 * 0.999, places=8)
        self.assertAlmostEqual(balance["USDT"]["free"], self.server.balances["USDT"], places=6)

    def place_stop(self, amount: float) -> dict:
        """A sell STOP_LOSS half a basis point under the moving price (a random walk crosses
        it within a few ticks)."""
        while True:
            stop = round(self.server.market.last_price("BTCUSDT") * 0.99995, 1)
            try:
                return self.client.create_order("BTC/USDT", "STOP_LOSS", "sell", amount, None,
                                                {"stopPrice": stop})
            except ccxt.OrderImmediatelyFillable:     # the price fell under it meanwhile
                continue

    def test_triggered_stop_arrives_without_a_rest_request(self):
        self.client.create_order("BTC/USDT", "market", "buy", 0.002)

        async def watch():
            ex = pro(self.server)
            try:
                await ex.load_markets()
                await ex.authenticate({"type": "spot"})
                first = asyncio.ensure_future(ex.watch_orders("BTC/USDT"))
                await asyncio.sleep(0.1)
                stop = await asyncio.to_thread(self.place_stop, 0.0015)
                requests = self.server.request_count()
                seen = await first
                while not any(o["id"] == stop["id"] and o["status"] == "closed" for o in seen):
                    seen = await ex.watch_orders("BTC/USDT")
                return stop, requests, [o for o in seen if o["id"] == stop["id"]][-1]
            finally:
                await ex.close()

        stop, requests, done = run(watch())
        self.assertEqual(self.server.request_count(), requests)    # no REST request since
        self.assertEqual((done["status"], done["filled"], done["info"]["o"], done["info"]["x"]),
                         ("closed", 0.0015, "STOP_LOSS", "TRADE"))

    def test_listen_key_routes_and_raw_user_stream(self):
        self.assertEqual(http_json(self.server, "POST", "/api/v3/userDataStream", key=None)[0], 401)
        status, body = http_json(self.server, "POST", "/api/v3/userDataStream")
        key = body["listenKey"]
        self.assertEqual((status, len(key)), (200, 60))
        self.assertEqual(http_json(self.server, "POST", "/api/v3/userDataStream")[1]["listenKey"], key)
        self.assertEqual(http_json(self.server, "PUT", "/api/v3/userDataStream",
                                   {"listenKey": key}), (200, {}))
        self.assertEqual(http_json(self.server, "PUT", "/api/v3/userDataStream",
                                   {"listenKey": "x" * 60})[1]["code"], -1125)

        async def listen():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.server.stream_url}/ws/{key}") as ws:
                    await asyncio.sleep(0.2)
                    await asyncio.to_thread(self.client.create_order, "ETH/USDT", "market",
                                            "buy", 0.01)
                    events = [await receive_json(ws) for _ in range(3)]
                    low = round(self.server.market.last_price("ETHUSDT") * 0.5, 2)
                    placed = await asyncio.to_thread(self.client.create_order, "ETH/USDT",
                                                     "limit", "buy", 0.01, low)
                    await asyncio.to_thread(self.client.cancel_order, placed["id"], "ETH/USDT")
                    events += [await receive_json(ws) for _ in range(4)]
                    await asyncio.to_thread(http_json, self.server, "DELETE",
                                            "/api/v3/userDataStream", {"listenKey": key})
                    expired = await receive_json(ws)
                    closed = await ws.receive(timeout=5)
                    return events, expired, closed

        events, expired, closed = run(listen())
        self.assertEqual([(e["e"], e.get("x")) for e in events],
                         [("executionReport", "NEW"), ("executionReport", "TRADE"),
                          ("outboundAccountPosition", None)] +
                         [("executionReport", "NEW"), ("outboundAccountPosition", None),
                          ("executionReport", "CANCELED"), ("outboundAccountPosition", None)])
        self.assertEqual(events[1]["X"], "FILLED")
        self.assertEqual(set(events[1]), set("e E s c S o f q p P F g C x X r i l z L n N T t I "
                                             "w m M O Z Y Q W V".split()))
        self.assertEqual({b["a"] for b in events[2]["B"]}, {"ETH", "USDT"})
        locked = {b["a"]: float(b["l"]) for b in events[4]["B"]}
        self.assertGreater(locked["USDT"], 0)                   # the resting buy locks funds
        self.assertTrue(events[3]["w"])
        self.assertEqual((events[5]["X"], events[5]["C"]), ("CANCELED", events[3]["c"]))
        self.assertEqual(float(events[6]["B"][1]["l"]), 0)      # USDT released
        self.assertEqual((expired["e"], expired["listenKey"]), ("listenKeyExpired", key))
        self.assertEqual(closed.type, aiohttp.WSMsgType.CLOSE)

    def test_ws_api_refuses_a_bad_signature(self):
        async def subscribe(secret: str):
            params = {"apiKey": KEY, "timestamp": int(time.time() * 1000)}
            query = "&".join(f"{k}={params[k]}" for k in sorted(params))
            params["signature"] = hmac.new(secret.encode(), query.encode(),
                                           hashlib.sha256).hexdigest()
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.server.stream_url + "/ws-api/v3") as ws:
                    await ws.send_str(json.dumps({"id": "a", "params": params,
                                                  "method": "userDataStream.subscribe.signature"}))
                    return await receive_json(ws)

        self.assertEqual(run(subscribe(SECRET)), {"id": "a", "status": 200,
                                                  "result": {"subscriptionId": 0}})
        bad = run(subscribe("wrong"))
        self.assertEqual((bad["status"], bad["error"]["code"]), (400, -1022))


class StreamFaultsTest(unittest.TestCase):
    def setUp(self):
        self.server = start_server(speed=60.0)

    def tearDown(self):
        self.server.stop()

    @contextlib.asynccontextmanager
    async def sockets(self, *paths: str):
        """WebSocket connections to these paths (no automatic pongs), closed afterwards."""
        async with aiohttp.ClientSession() as session:
            opened = [await session.ws_connect(self.server.stream_url + p, autoping=False)
                      for p in paths]
            try:
                yield opened
            finally:
                for ws in opened:
                    await ws.close()

    def test_drop_cuts_every_connection(self):
        async def drop():
            async with self.sockets(*["/ws/btcusdt@bookTicker"] * 3) as opened:
                await receive_json(opened[0])
                self.server.configure({"drop_streams": True})
                kinds = []
                for ws in opened:
                    while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                        pass
                    kinds.append(msg.type)
                return kinds

        self.assertTrue(all(k in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR,
                                  aiohttp.WSMsgType.CLOSE) for k in run(drop())))
        self.assertEqual(self.server.stream_stats()["dropped"], 3)

    def test_stall_sends_nothing_but_answers_pings(self):
        async def stalled():
            async with self.sockets("/ws/btcusdt@kline_1m") as (ws,):
                await receive_json(ws)
                self.server.configure({"stream_stall": True})
                try:                                    # what was queued before drains
                    while True:
                        await ws.receive(timeout=0.3)
                except asyncio.TimeoutError:
                    pass
                await ws.ping(b"still there?")
                pong = await ws.receive(timeout=5)
                withheld = self.server.stream_stats()["withheld"]
                try:
                    quiet = await ws.receive(timeout=1.0)   # ten ticks
                except asyncio.TimeoutError:
                    quiet = None
                self.server.configure({"stream_stall": False})
                resumed = await receive_json(ws)
                return pong, quiet, withheld, resumed, ws.closed

        pong, quiet, withheld, resumed, closed = run(stalled())
        self.assertEqual((pong.type, pong.data), (aiohttp.WSMsgType.PONG, b"still there?"))
        self.assertIsNone(quiet)
        self.assertGreater(self.server.stream_stats()["withheld"], withheld)
        self.assertEqual(resumed["e"], "kline")
        self.assertFalse(closed)

    def test_max_age_closes_the_connection(self):
        self.server.configure({"stream_max_age": 0.5})

        async def age():
            async with self.sockets("/ws/btcusdt@bookTicker") as (ws,):
                opened = time.monotonic()
                while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                    pass
                return msg.type, time.monotonic() - opened

        kind, lived = run(age())
        self.assertEqual(kind, aiohttp.WSMsgType.CLOSE)
        self.assertGreaterEqual(lived, 0.45)
        self.assertEqual(self.server.stream_stats()["max_age"], 1)

    def test_latency_delays_each_message(self):
        self.server.configure({"stream_latency": 0.5})

        async def delayed():
            async with self.sockets("/ws/0") as (ws,):
                sent = time.monotonic()
                await request(ws, "LIST_SUBSCRIPTIONS", None, 9)
                return time.monotonic() - sent

        self.assertGreaterEqual(run(delayed()), 0.5)

    def test_a_client_that_does_not_read_is_dropped(self):
        streams = "/".join(f"{s}@depth@100ms" for s in
                           ("btcusdt", "ethusdt", "solusdt", "bnbusdt", "xrpusdt"))

        async def lazy():
            async with self.sockets(f"/stream?streams={streams}"):
                while not self.server.stream_stats()["too_slow"]:      # never read
                    await asyncio.sleep(0.1)

        limit, sim_streams.MAX_PENDING = sim_streams.MAX_PENDING, 5
        try:
            run(lazy())
        finally:
            sim_streams.MAX_PENDING = limit
        self.assertEqual(self.server.stream_stats()["open"], 0)

    def test_knobs_join_configure(self):
        knobs = self.server.configure({"stream_latency": 0.25, "stream_stall": True})
        self.assertEqual((knobs["stream_latency"], knobs["stream_stall"], knobs["stream_max_age"],
                          knobs["drop_streams"]), (0.25, True, 86400.0, False))
        with self.assertRaises(ValueError):
            self.server.configure({"stream_stall": "yes"})
        with self.assertRaises(ValueError):
            self.server.configure({"stream_max_age": 0})


if __name__ == "__main__":
    unittest.main()

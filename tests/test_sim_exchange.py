"""Tests of sim_market (the market model) and sim_exchange (an unmodified ccxt.binance
over 127.0.0.1)."""
import hashlib
import hmac
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unittest
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import ccxt
import numpy as np

from sim_account import RESTING_FILL_SHARE
from sim_exchange import ADMIN_PATH, SimExchangeServer, ccxt_overrides
from sim_market import SimMarket, simulated_ohlcv, synthetic_order_book

START_MS = 1_717_200_000_000 + 150_000     # 2024-06-01 00:02:30 UTC, inside a 5m candle
KEY, SECRET = "test-key", "test-secret"
ROOT = Path(__file__).resolve().parents[1]


def make_client(server: SimExchangeServer, secret: str = SECRET, key: str = KEY, **extra):
    return ccxt.binance(ccxt_overrides(server.url) | {"apiKey": key, "secret": secret} | extra)


def raw_get(server: SimExchangeServer, path: str, params: dict | None = None,
            headers: dict | None = None):
    """(status, headers, decoded JSON body) of a bare GET."""
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path + ("?" + urlencode(params) if params else ""),
                     headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(body) if body else None
    finally:
        conn.close()


def signed_get(server, path, params, secret=SECRET, timestamp=None):
    query = urlencode(params | {"timestamp": timestamp or int(time.time() * 1000)})
    sig = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    qs = dict(item.split("=", 1) for item in query.split("&"))
    return raw_get(server, path, qs | {"signature": sig}, {"X-MBX-APIKEY": KEY})


def log_returns(market: SimMarket, ids, interval="5m", limit=1000) -> np.ndarray:
    closes = np.array([[float(k[4]) for k in market.klines(i, interval, limit=limit)]
                       for i in ids])
    return np.diff(np.log(closes), axis=1)


class MarketModelTest(unittest.TestCase):
    """The price model, without a server."""

    @classmethod
    def setUpClass(cls):
        cls.market = SimMarket(pairs=50, seed=1, speed=0, start_ms=START_MS)

    def test_pairs_are_plausible(self):
        m = self.market
        self.assertEqual(len(m.symbols), 50)
        self.assertEqual(len(set(m.ids)), 50)
        self.assertIn("BTC/USDT", m.symbols)
        self.assertIn("BTCUSDT", m.ids)
        btc, shib = m.last_price("BTCUSDT"), m.last_price("SHIBUSDT")
        self.assertTrue(30_000 < btc < 120_000, btc)
        self.assertLess(shib, 0.01)
        self.assertEqual(len(SimMarket(pairs=120, seed=1, speed=0, start_ms=START_MS).ids), 120)

    def test_fat_tails_clustering_and_correlation(self):
        m = self.market
        r = log_returns(m, m.ids)
        centred = r - r.mean(axis=1, keepdims=True)
        kurt = (centred ** 4).mean(axis=1) / (centred ** 2).mean(axis=1) ** 2 - 3
        self.assertGreater(np.median(kurt), 1.0)
        a = np.abs(r) - np.abs(r).mean(axis=1, keepdims=True)
        acf = [np.median((a[:, :-lag] * a[:, lag:]).mean(axis=1) / a.var(axis=1))
               for lag in (1, 2, 3)]
        self.assertGreater(min(acf), 0.05, acf)
        corr = np.corrcoef(r)
        iu = np.triu_indices(len(r), 1)
        self.assertGreater(corr[iu].mean(), 0.15)
        groups = np.array([s.group for s in m.specs])
        same = (groups[:, None] == groups[None, :])[iu]
        self.assertGreater(corr[iu][same].mean(), corr[iu][~same].mean() + 0.05)

    def test_same_seed_same_candles_other_seed_different(self):
        a = SimMarket(pairs=5, seed=7, speed=0, start_ms=START_MS)
        b = SimMarket(pairs=5, seed=7, speed=0, start_ms=START_MS)
        c = SimMarket(pairs=5, seed=8, speed=0, start_ms=START_MS)
        for market_id in a.ids:
            self.assertEqual(a.klines(market_id, "1m", limit=1000),
                             b.klines(market_id, "1m", limit=1000))
        self.assertNotEqual(a.klines("BTCUSDT", "5m"), c.klines("BTCUSDT", "5m"))
        x, y = simulated_ohlcv(3, 7, "1h", 100), simulated_ohlcv(3, 7, "1h", 100)
        self.assertTrue(all(np.array_equal(x[s], y[s]) for s in x))
        z = simulated_ohlcv(3, 8, "1h", 100)
        self.assertFalse(np.array_equal(x["BTC/USDT"][:, 4], z["BTC/USDT"][:, 4]))

    def test_history_at_start_and_lazy_future(self):
        m = SimMarket(pairs=3, seed=1, speed=0, start_ms=START_MS)
        closed = m.klines("ETHUSDT", "5m", end_ms=START_MS - 300_000, limit=1000)
        self.assertEqual(len(closed), 1000)
        first_open = m.klines("ETHUSDT", "1m", start_ms=0, limit=1)[0][0]
        self.assertLessEqual(first_open, START_MS - 7 * 86_400_000)
        m.advance(3 * 86_400)                 # three days later, generated on demand
        newest = m.klines("ETHUSDT", "1m", limit=1)[0][0]
        self.assertEqual(newest, (START_MS + 3 * 86_400_000) // 60_000 * 60_000)

    def test_memory_stays_bounded(self):
        m = SimMarket(pairs=2, seed=1, speed=0, start_ms=START_MS)
        m.advance(40 * 86_400)
        now = m.now_ms()
        first_open = m.klines("BTCUSDT", "1m", start_ms=0, limit=1)[0][0]
        self.assertGreaterEqual(first_open, now - 34 * 86_400_000)
        self.assertLessEqual(first_open, now - 29 * 86_400_000)

    def test_clock_speed_and_advance(self):
        m = SimMarket(pairs=1, seed=1, speed=0, start_ms=START_MS)
        self.assertEqual(m.now_ms(), START_MS)
        m.advance(90)
        self.assertEqual(m.now(), (START_MS + 90_000) / 1000)
        fast = SimMarket(pairs=1, seed=1, speed=1000)
        t0 = fast.now_ms()
        time.sleep(0.05)
        self.assertGreater(fast.now_ms(), t0)

    def test_simulated_ohlcv_shape_and_consistency(self):
        data = simulated_ohlcv(4, 3, "15m", 300)
        self.assertEqual(len(data), 4)
        arr = data["ETH/USDT"]
        self.assertEqual(arr.shape, (300, 6))
        self.assertTrue(np.all(np.diff(arr[:, 0]) == 900_000))
        self.assertTrue(np.all(arr[:, 2] >= np.maximum(arr[:, 1], arr[:, 4])))
        self.assertTrue(np.all(arr[:, 3] <= np.minimum(arr[:, 1], arr[:, 4])))
        self.assertTrue(np.all(arr[:, 5] >= 0))
        np.testing.assert_allclose(arr[1:, 1], arr[:-1, 4])    # open = previous close

    def test_synthetic_order_book(self):
        tick, step = 0.01, 0.0001
        bids, asks = synthetic_order_book(3000.0, 0.001, 5e8, tick, step, levels=50)
        self.assertEqual(bids.shape, (50, 2))
        self.assertTrue(np.all(np.diff(bids[:, 0]) < 0) and np.all(np.diff(asks[:, 0]) > 0))
        self.assertLess(bids[0, 0], 3000.0)
        self.assertGreater(asks[0, 0], 3000.0)
        for side in (bids, asks):
            np.testing.assert_allclose(side[:, 0] / tick, np.rint(side[:, 0] / tick), atol=1e-6)
            np.testing.assert_allclose(side[:, 1] / step, np.rint(side[:, 1] / step), atol=1e-6)
        calm_b, calm_a = synthetic_order_book(3000.0, 0.0005, 5e8, tick, step)
        wild_b, wild_a = synthetic_order_book(3000.0, 0.005, 5e8, tick, step)
        self.assertGreater(wild_a[0, 0] - wild_b[0, 0], calm_a[0, 0] - calm_b[0, 0])
        self.assertGreater(wild_a[10, 0], calm_a[10, 0])          # thinner per price range
        thin_b, _ = synthetic_order_book(3000.0, 0.001, 5e6, tick, step)
        self.assertLess(thin_b[:, 1].sum(), bids[:, 1].sum())
        # a $100k order on the thin book walks several levels
        _, thin_a = synthetic_order_book(3000.0, 0.001, 5e6, tick, step)
        self.assertGreater(np.searchsorted(np.cumsum(thin_a[:, 0] * thin_a[:, 1]), 100_000), 3)
        # sub-cent prices: bids stay positive
        low_b, _ = synthetic_order_book(2e-5, 0.003, 1e7, 1e-8, 1.0, levels=500)
        self.assertTrue(np.all(low_b[:, 0] > 0))


class CcxtPublicTest(unittest.TestCase):
    """Public endpoints through an unmodified ccxt.binance."""

    @classmethod
    def setUpClass(cls):
        cls.market = SimMarket(pairs=20, seed=1, speed=0, start_ms=START_MS)
        cls.server = SimExchangeServer(cls.market, api_key=KEY, api_secret=SECRET).start()
        cls.ex = make_client(cls.server)
        cls.ex.load_markets()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_markets_precision_and_limits(self):
        self.assertEqual(set(self.ex.symbols), set(self.market.symbols))
        for spec in self.market.specs:
            m = self.ex.market(spec.symbol)
            self.assertEqual(m["id"], spec.id)
            self.assertTrue(m["spot"] and m["active"])
            self.assertEqual(m["precision"]["price"], spec.tick)
            self.assertEqual(m["precision"]["amount"], spec.step)
            self.assertEqual(m["limits"]["amount"]["min"], spec.step)
            self.assertEqual(m["limits"]["amount"]["max"], spec.max_qty)
            self.assertEqual(m["limits"]["cost"]["min"], 5.0)
        self.assertEqual(self.ex.market("BTC/USDT")["precision"]["price"], 0.1)
        self.assertEqual(self.ex.market("PEPE/USDT")["precision"]["price"], 1e-8)

    def test_no_sapi_and_time_difference_loaded(self):
        self.assertEqual(self.server.request_count("/api/v3/time") >= 1, True)
        for url in self.ex.urls["api"].values():
            self.assertTrue(url.startswith(self.server.url), url)

    def test_time_is_wall_clock_while_candles_use_market_clock(self):
        server_time = self.ex.fetch_time()
        self.assertLess(abs(server_time - time.time() * 1000), 60_000)
        newest = self.ex.fetch_ohlcv("BTC/USDT", "1m", limit=1)[-1][0]
        self.assertEqual(newest, START_MS // 60_000 * 60_000)

    def test_fetch_ohlcv_paging(self):
        tf = 300_000
        since = START_MS // tf * tf - 1200 * tf
        candles, cursor = [], since
        while True:
            page = self.ex.fetch_ohlcv("ETH/USDT", "5m", since=cursor, limit=500)
            if not page:
                break
            candles += page
            cursor = page[-1][0] + tf
            if len(page) < 500:
                break
        ts = [c[0] for c in candles]
        self.assertEqual(ts[0], since)
        self.assertEqual(len(ts), 1201)
        self.assertTrue(all(b - a == tf for a, b in zip(ts, ts[1:])))   # no gaps or dupes
        self.assertGreater(ts[-1] + tf, self.market.now_ms())           # newest still open
        self.assertLessEqual(ts[-1], self.market.now_ms())
        default = self.ex.fetch_ohlcv("ETH/USDT", "5m")
        self.assertEqual(len(default), 500)
        self.assertEqual(default[-1][0], ts[-1])

    def test_klines_parameters_as_binance(self):
        iv = 900_000
        status, headers, rows = raw_get(self.server, "/api/v3/klines",
                                        {"symbol": "BTCUSDT", "interval": "15m"})
        self.assertEqual((status, len(rows)), (200, 500))             # default limit
        self.assertIn("X-MBX-USED-WEIGHT-1M", headers)
        self.assertEqual(len(rows[0]), 12)
        self.assertEqual(rows[0][6], rows[0][0] + iv - 1)
        start = rows[10][0] + 1                                         # unaligned startTime
        _, _, page = raw_get(self.server, "/api/v3/klines", {
            "symbol": "BTCUSDT", "interval": "15m", "startTime": start, "limit": 3})
        self.assertEqual([r[0] for r in page], [rows[11][0], rows[12][0], rows[13][0]])
        _, _, page = raw_get(self.server, "/api/v3/klines", {
            "symbol": "BTCUSDT", "interval": "15m", "endTime": rows[20][0] + 5, "limit": 4})
        self.assertEqual([r[0] for r in page], [r[0] for r in rows[17:21]])
        _, _, page = raw_get(self.server, "/api/v3/klines", {
            "symbol": "BTCUSDT", "interval": "15m", "startTime": rows[5][0],
            "endTime": rows[8][0], "limit": 1000})
        self.assertEqual(len(page), 4)
        _, _, big = raw_get(self.server, "/api/v3/klines", {
            "symbol": "BTCUSDT", "interval": "1m", "limit": 1000})
        self.assertEqual(len(big), 1000)
        for params, code in (({"limit": 1001}, -1130), ({"interval": "7m"}, -1120),
                             ({"symbol": "NOPEUSDT"}, -1121), ({"symbol": ""}, -1102),
                             ({"startTime": "abc"}, -1100),
                             ({"startTime": rows[9][0], "endTime": rows[2][0]}, -1023)):
            status, _, body = raw_get(self.server, "/api/v3/klines",
                                      {"symbol": "BTCUSDT", "interval": "15m"} | params)
            self.assertEqual((status, body["code"]), (400, code), params)
        with self.assertRaises(ccxt.BadSymbol):
            self.ex.publicGetKlines({"symbol": "NOPEUSDT", "interval": "1m"})

    def test_intervals_are_consistent(self):
        since = START_MS // 3_600_000 * 3_600_000 - 6 * 3_600_000
        m1 = self.ex.fetch_ohlcv("SOL/USDT", "1m", since=since, limit=1000)[:360]
        m5 = self.ex.fetch_ohlcv("SOL/USDT", "5m", since=since, limit=72)
        h1 = self.ex.fetch_ohlcv("SOL/USDT", "1h", since=since, limit=6)
        for coarse, k in ((m5, 5), (h1, 60)):
            for i, c in enumerate(coarse):
                part = m1[i * k:(i + 1) * k]
                self.assertEqual(c[0], part[0][0])
                self.assertEqual(c[1], part[0][1])
                self.assertEqual(c[2], max(p[2] for p in part))
                self.assertEqual(c[3], min(p[3] for p in part))
                self.assertEqual(c[4], part[-1][4])
                self.assertAlmostEqual(c[5], sum(p[5] for p in part), places=6)
        self.assertEqual(h1[0][0] % 3_600_000, 0)
        d1 = self.ex.fetch_ohlcv("SOL/USDT", "1d", limit=3)
        self.assertTrue(all(c[0] % 86_400_000 == 0 for c in d1))        # UTC midnight

    def test_tickers_and_order_book(self):
        tickers = self.ex.fetch_tickers()
        self.assertEqual(set(tickers), set(self.market.symbols))
        t = self.ex.fetch_ticker("BTC/USDT")
        self.assertEqual(t["last"], self.ex.fetch_ohlcv("BTC/USDT", "1m", limit=1)[-1][4])
        self.assertLess(t["bid"], t["ask"])
        self.assertTrue(t["low"] <= t["last"] <= t["high"])
        self.assertGreater(t["quoteVolume"], 1e8)
        self.assertEqual(tickers["BTC/USDT"]["last"], t["last"])
        two = self.ex.fetch_tickers(["BTC/USDT", "ETH/USDT"])
        self.assertEqual(set(two), {"BTC/USDT", "ETH/USDT"})
        book = self.ex.fetch_order_book("ETH/USDT", limit=20)
        self.assertEqual((len(book["bids"]), len(book["asks"])), (20, 20))
        self.assertLess(book["bids"][0][0], book["asks"][0][0])
        self.assertTrue(all(a[0] > b[0] for a, b in zip(book["bids"], book["bids"][1:])))
        self.assertTrue(all(a[0] < b[0] for a, b in zip(book["asks"], book["asks"][1:])))
        bt = self.ex.fetch_bids_asks(["ETH/USDT"])["ETH/USDT"]
        self.assertEqual((bt["bid"], bt["ask"]), (book["bids"][0][0], book["asks"][0][0]))


class CcxtPrivateTest(unittest.TestCase):
    """Signed endpoints: orders, balances, fees and Binance's error codes."""

    def setUp(self):
        self.market = SimMarket(pairs=5, seed=2, speed=0, start_ms=START_MS)   # clock: per test
        self.server = SimExchangeServer(self.market, api_key=KEY, api_secret=SECRET,
                                        balances={"USDT": 10000.0, "ETH": 1.0}).start()
        self.ex = make_client(self.server)
        self.ex.load_markets()

    def tearDown(self):
        self.server.stop()

    def assert_balance(self, asset, expected: Decimal):
        self.assertAlmostEqual(self.server.balances[asset], float(expected), places=8)
        self.assertAlmostEqual(self.ex.fetch_balance()[asset]["free"], float(expected), places=8)

    def test_market_buy_then_sell_changes_balances_by_exact_amounts(self):
        buy = self.ex.create_order("ETH/USDT", "market", "buy", 0.5)
        info = buy["info"]
        self.assertEqual(buy["status"], "closed")
        self.assertEqual(buy["filled"], 0.5)
        cost = sum(Decimal(f["price"]) * Decimal(f["qty"]) for f in info["fills"])
        fee = sum(Decimal(f["commission"]) for f in info["fills"])
        self.assertEqual(cost, Decimal(info["cummulativeQuoteQty"]))
        self.assertEqual(fee, Decimal("0.0005"))                  # 0.1% of 0.5 ETH, in ETH
        self.assertEqual(buy["fee"], {"currency": "ETH", "cost": 0.0005})
        self.assert_balance("USDT", Decimal("10000") - cost)
        self.assert_balance("ETH", Decimal("1.5") - fee)
        sell = self.ex.create_order("ETH/USDT", "market", "sell", 1.2)
        proceeds = Decimal(sell["info"]["cummulativeQuoteQty"])
        sell_fee = sum(Decimal(f["commission"]) for f in sell["info"]["fills"])
        self.assertEqual(sell_fee, (proceeds * Decimal("0.001")).quantize(Decimal("1e-8")))
        self.assertEqual(sell["fee"]["currency"], "USDT")
        self.assert_balance("USDT", Decimal("10000") - cost + proceeds - sell_fee)
        self.assert_balance("ETH", Decimal("1.5") - fee - Decimal("1.2"))
        trades = self.ex.fetch_my_trades("ETH/USDT")
        self.assertEqual(len(trades), len(info["fills"]) + len(sell["info"]["fills"]))
        self.assertEqual(trades[-1]["side"], "sell")
        self.assertEqual(trades[-1]["takerOrMaker"], "taker")

    def test_large_market_order_walks_the_book(self):
        book = self.ex.fetch_order_book("ETH/USDT", limit=5)
        small = self.ex.create_order("ETH/USDT", "market", "buy", 0.01)
        self.assertEqual(small["average"], book["asks"][0][0])
        self.server.stop()
        self.server = SimExchangeServer(self.market, api_key=KEY, api_secret=SECRET,
                                        balances={"USDT": 5_000_000.0}).start()
        self.ex = make_client(self.server)
        big = self.ex.create_order("ETH/USDT", "market", "buy", 400)
        self.assertGreater(len(big["info"]["fills"]), 3)
        self.assertGreater(big["average"], small["average"])
        by_quote = self.ex.create_order("ETH/USDT", "market", "buy", None,
                                        params={"quoteOrderQty": 1000})
        self.assertLessEqual(by_quote["cost"], 1000)
        self.assertGreater(by_quote["cost"], 990)

    def test_wrong_secret_or_key_is_an_authentication_error_without_retries(self):
        self.server.reset_counters()
        with self.assertRaises(ccxt.AuthenticationError) as ctx:
            make_client(self.server, secret="wrong").fetch_balance()
        self.assertIn("-1022", str(ctx.exception))
        self.assertEqual(self.server.request_count("/api/v3/account"), 1)
        with self.assertRaises(ccxt.AuthenticationError) as ctx:
            make_client(self.server, key="nobody").fetch_balance()
        self.assertIn("-2015", str(ctx.exception))
        status, _, body = raw_get(self.server, "/api/v3/account", {"timestamp": 1})
        self.assertEqual((status, body["code"]), (401, -2014))

    def test_stale_timestamp(self):
        status, _, body = signed_get(self.server, "/api/v3/account", {"recvWindow": 5000},
                                     timestamp=int(time.time() * 1000) - 20_000)
        self.assertEqual((status, body["code"]), (400, -1021))
        status, _, body = signed_get(self.server, "/api/v3/account", {},
                                     timestamp=int(time.time() * 1000) + 5_000)
        self.assertEqual((status, body["code"]), (400, -1021))
        status, _, body = signed_get(self.server, "/api/v3/account", {})
        self.assertEqual(status, 200)
        self.ex.options["timeDifference"] = 30_000          # client clock 30 s behind
        with self.assertRaises(ccxt.InvalidNonce) as ctx:
            self.ex.fetch_balance()
        self.assertIn("-1021", str(ctx.exception))

    def test_insufficient_balance(self):
        with self.assertRaises(ccxt.InsufficientFunds):
            self.ex.create_order("BTC/USDT", "market", "buy", 1)
        with self.assertRaises(ccxt.InsufficientFunds):
            self.ex.create_order("ETH/USDT", "market", "sell", 2)
        with self.assertRaises(ccxt.InsufficientFunds):
            self.ex.create_order("ETH/USDT", "limit", "buy", 10, 2000)
        self.assertEqual(self.server.balances["USDT"], 10000.0)

    def test_filter_failures(self):
        with self.assertRaises(ccxt.InvalidOrder) as ctx:          # above maxQty
            self.ex.create_order("BTC/USDT", "market", "buy", 200_000)
        self.assertIn("LOT_SIZE", str(ctx.exception))
        base = {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
        with self.assertRaises(ccxt.InvalidOrder) as ctx:          # not a multiple of step
            self.ex.privatePostOrder(base | {"quantity": "0.00015", "price": "2000"})
        self.assertIn("LOT_SIZE", str(ctx.exception))
        with self.assertRaises(ccxt.InvalidOrder) as ctx:          # not on the tick grid
            self.ex.privatePostOrder(base | {"quantity": "0.01", "price": "2000.001"})
        self.assertIn("PRICE_FILTER", str(ctx.exception))
        # Binance answers -1013 "Filter failure: NOTIONAL"; ccxt 4.5.90 maps that to BadRequest
        with self.assertRaises(ccxt.BadRequest) as ctx:
            self.ex.create_order("BTC/USDT", "market", "buy", 0.00002)
        self.assertIn("-1013", str(ctx.exception))
        self.assertIn("NOTIONAL", str(ctx.exception))
        with self.assertRaises(ccxt.BadRequest) as ctx:
            self.ex.privatePostOrder({"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT",
                                      "quantity": "0.01", "price": "2000"})
        self.assertIn("-1102", str(ctx.exception))
        self.assertEqual(self.server.balances["USDT"], 10000.0)

    def test_limit_orders_rest_lock_funds_and_fill_when_crossed(self):
        price = self.ex.fetch_ticker("ETH/USDT")["last"]
        limit = float(self.ex.price_to_precision("ETH/USDT", price * 0.995))
        order = self.ex.create_order("ETH/USDT", "limit", "buy", 0.2, limit,
                                     params={"clientOrderId": "my-buy-1"})
        self.assertEqual(order["status"], "open")
        locked = Decimal(str(limit)) * Decimal("0.2")
        self.assertAlmostEqual(self.server.locked["USDT"], float(locked), places=8)
        self.assertEqual([o["id"] for o in self.ex.fetch_open_orders("ETH/USDT")], [order["id"]])
        crossed = False
        for _ in range(2000):                 # up to ~2 weeks of market time, 10 min a step
            self.market.advance(600)
            lows = [k[3] for k in self.market.klines("ETHUSDT", "1m", start_ms=order["timestamp"]
                                                     + 60_000, limit=1000)]
            if lows and min(float(x) for x in lows) < limit:
                crossed = True
                break
        self.assertTrue(crossed, "the market never traded below the limit")
        filled = self.ex.fetch_order(None, "ETH/USDT", params={"origClientOrderId": "my-buy-1"})
        self.assertEqual(filled["status"], "closed")
        self.assertEqual(filled["average"], limit)
        self.assertEqual(self.server.locked["USDT"], 0.0)
        self.assert_balance("USDT", Decimal("10000") - locked)
        self.assert_balance("ETH", Decimal("1.2") - Decimal("0.0002"))
        self.assertEqual(self.ex.fetch_my_trades("ETH/USDT")[-1]["takerOrMaker"], "maker")
        self.assertEqual(self.ex.fetch_open_orders("ETH/USDT"), [])

    def test_marketable_limit_fills_at_once_and_cancel_releases_funds(self):
        book = self.ex.fetch_order_book("ETH/USDT", limit=5)
        taker = self.ex.create_order("ETH/USDT", "limit", "buy", 0.1, book["asks"][2][0])
        self.assertEqual(taker["status"], "closed")
        self.assertLessEqual(taker["average"], book["asks"][2][0])
        with self.assertRaises(ccxt.OrderImmediatelyFillable):
            self.ex.create_order("ETH/USDT", "limit", "sell", 0.1, book["bids"][0][0],
                                 params={"postOnly": True})
        rest = self.ex.create_order("ETH/USDT", "limit", "sell", 0.5, book["asks"][0][0] * 1.05)
        self.assertAlmostEqual(self.server.locked["ETH"], 0.5)
        canceled = self.ex.cancel_order(rest["id"], "ETH/USDT")
        self.assertEqual(canceled["status"], "canceled")
        self.assertEqual(self.server.locked["ETH"], 0.0)
        with self.assertRaises(ccxt.OrderNotFound):
            self.ex.cancel_order(rest["id"], "ETH/USDT")
        with self.assertRaises(ccxt.OrderNotFound):
            self.ex.fetch_order("999999", "ETH/USDT")

    def test_duplicate_client_order_id_rejected_while_open(self):
        price = float(self.ex.price_to_precision(
            "ETH/USDT", self.ex.fetch_ticker("ETH/USDT")["last"] * 0.9))
        params = {"clientOrderId": "dup-1"}
        first = self.ex.create_order("ETH/USDT", "limit", "buy", 0.1, price, params=params)
        with self.assertRaises(ccxt.InvalidOrder) as ctx:
            self.ex.create_order("ETH/USDT", "limit", "buy", 0.1, price, params=params)
        self.assertIn("Duplicate order sent.", str(ctx.exception))
        self.assertEqual(len(self.ex.fetch_open_orders("ETH/USDT")), 1)
        self.assertEqual(first["clientOrderId"], "dup-1")
        self.ex.cancel_order(first["id"], "ETH/USDT")
        again = self.ex.create_order("ETH/USDT", "limit", "buy", 0.1, price, params=params)
        self.assertNotEqual(again["id"], first["id"])


class RateLimitTest(unittest.TestCase):
    def setUp(self):
        self.server = SimExchangeServer(SimMarket(pairs=2, seed=1, speed=0, start_ms=START_MS),
                                        api_key=KEY, api_secret=SECRET).start()

    def tearDown(self):
        self.server.stop()

    WINDOW = 1e9    # one fixed window for the whole test: no boundary can split it

    def test_over_budget_answers_429_with_retry_after(self):
        self.server.set_rate_limit(30, window_s=self.WINDOW)
        self.assertEqual(raw_get(self.server, "/api/v3/exchangeInfo")[0], 200)   # weight 20
        status, headers, body = raw_get(self.server, "/api/v3/exchangeInfo")
        self.assertEqual(status, 429)
        self.assertEqual(self.server.response_count(429), 1)
        self.assertEqual(body["code"], -1003)
        self.assertGreaterEqual(int(headers["Retry-After"]), 1)
        self.assertEqual(headers["X-MBX-USED-WEIGHT-1M"], "20")
        ex = make_client(self.server)
        with self.assertRaises(ccxt.DDoSProtection):
            ex.load_markets()

    def test_weight_header_counts_binance_weights(self):
        self.server.set_rate_limit(6000, window_s=self.WINDOW)
        _, h1, _ = raw_get(self.server, "/api/v3/ping")
        _, h2, _ = raw_get(self.server, "/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m"})
        _, h3, _ = raw_get(self.server, "/api/v3/depth", {"symbol": "BTCUSDT", "limit": 500})
        _, h4, _ = raw_get(self.server, "/api/v3/ticker/24hr")
        used = [int(h["X-MBX-USED-WEIGHT-1M"]) for h in (h1, h2, h3, h4)]
        self.assertEqual(used, [1, 3, 28, 108])

    def test_ignoring_429_gets_banned(self):
        self.server.set_rate_limit(1, window_s=self.WINDOW, ban_after=3, ban_seconds=600)
        statuses = [raw_get(self.server, "/api/v3/ping")[0] for _ in range(6)]
        self.assertEqual(statuses, [200, 429, 429, 429, 418, 418])


class FaultInjectionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.market = SimMarket(pairs=3, seed=1, speed=0, start_ms=START_MS)

    def setUp(self):
        self.server = SimExchangeServer(self.market, api_key=KEY, api_secret=SECRET).start()
        self.ex = make_client(self.server, timeout=400, enableRateLimit=False)
        self.ex.load_markets()

    def tearDown(self):
        self.server.stop()

    def test_latency_past_the_client_timeout(self):
        self.server.set_faults(latency=1.5)
        with self.assertRaises(ccxt.RequestTimeout):
            self.ex.fetch_ticker("BTC/USDT")
        self.server.set_faults()
        self.assertGreater(self.ex.fetch_ticker("BTC/USDT")["last"], 0)

    def test_server_errors(self):
        self.server.set_faults(error_rate=1.0)
        for _ in range(3):
            with self.assertRaises(ccxt.ExchangeNotAvailable):
                self.ex.fetch_ohlcv("BTC/USDT", "1m", limit=5)

    def test_faults_restricted_to_symbols(self):
        self.server.set_faults(error_rate=1.0, symbols={"ETHUSDT"})
        self.assertEqual(len(self.ex.fetch_ohlcv("BTC/USDT", "1m", limit=5)), 5)
        with self.assertRaises(ccxt.ExchangeNotAvailable):
            self.ex.fetch_ohlcv("ETH/USDT", "1m", limit=5)
        self.ex.fetch_time()                       # names no symbol: unaffected

    def test_hang_past_client_timeout(self):
        self.server.set_faults(hang_rate=1.0, hang_seconds=5)
        with self.assertRaises(ccxt.RequestTimeout):
            self.ex.fetch_order_book("BTC/USDT")

    def test_dropped_connection(self):
        self.server.set_faults(drop_rate=1.0)
        with self.assertRaises(ccxt.NetworkError) as ctx:
            self.ex.fetch_ticker("BTC/USDT")
        self.assertNotIsInstance(ctx.exception, ccxt.RequestTimeout)
        self.server.set_faults()
        self.assertGreater(self.ex.fetch_ticker("BTC/USDT")["last"], 0)

    def test_fault_after_processing_places_the_order(self):
        self.server.set_faults(error_rate=1.0, after_processing=True)
        with self.assertRaises(ccxt.ExchangeNotAvailable):
            self.ex.create_order("BTC/USDT", "market", "buy", 0.001,
                                 params={"clientOrderId": "lost-answer"})
        self.server.set_faults()
        order = self.ex.fetch_order(None, "BTC/USDT", params={"origClientOrderId": "lost-answer"})
        self.assertEqual(order["status"], "closed")
        self.assertAlmostEqual(self.server.balances["BTC"], 0.000999)

    def test_request_counters(self):
        self.server.reset_counters()
        self.ex.fetch_ohlcv("BTC/USDT", "1m", limit=2)
        self.ex.fetch_ohlcv("BTC/USDT", "1m", limit=2)
        self.ex.fetch_time()
        self.assertEqual(self.server.request_count("/api/v3/klines"), 2)
        self.assertEqual(self.server.request_count(), 3)
        self.server.reset_counters()
        self.assertEqual(self.server.request_count(), 0)


STEP = Decimal("0.0001")        # ETH/USDT's lot step on the simulated market


def d(x) -> Decimal:
    """A ccxt number as the exact decimal Binance wrote."""
    return Decimal(str(x))


class SimOrderTest(unittest.TestCase):
    """A speed-0 market (the clock moves only by advance) and an account trading ETH/USDT
    through an unmodified ccxt.binance."""

    def setUp(self):
        self.market = SimMarket(pairs=5, seed=2, speed=0, start_ms=START_MS)
        self.server = SimExchangeServer(self.market, api_key=KEY, api_secret=SECRET,
                                        balances={"USDT": 10000.0, "ETH": 1.0}).start()
        self.ex = make_client(self.server)
        self.ex.load_markets()

    def tearDown(self):
        self.server.stop()

    def price(self, factor: float) -> str:
        """The last price times factor, on the tick grid."""
        return self.ex.price_to_precision("ETH/USDT", self.ex.fetch_ticker("ETH/USDT")["last"] * factor)

    def minutes_after(self, placed_ms: int) -> list[list]:
        """1m klines after the minute an order was placed in, up to the current one."""
        return self.market.klines("ETHUSDT", "1m", start_ms=placed_ms // 60_000 * 60_000 + 60_000,
                                  limit=1000)

    def advance_until(self, placed_ms: int, hit, step_s: int = 600, waiting=None) -> list:
        """Advance the market until a minute after placed_ms satisfies hit(kline); that kline.
        waiting() runs after each step that found none."""
        for _ in range(150):
            self.market.advance(step_s)
            found = [k for k in self.minutes_after(placed_ms) if hit(k)]
            if found:
                return found[0]
            if waiting:
                waiting()
        self.fail("the market never got there")

    def oco(self, qty: str, above: str, stop: str, limit: str, **extra) -> dict:
        """A sell OCO through ccxt's implicit API: limit maker above, stop-loss-limit below."""
        return self.ex.private_post_orderlist_oco({
            "symbol": "ETHUSDT", "side": "SELL", "quantity": qty, "aboveType": "LIMIT_MAKER",
            "abovePrice": above, "belowType": "STOP_LOSS_LIMIT", "belowStopPrice": stop,
            "belowPrice": limit, "belowTimeInForce": "GTC"} | extra)

    def assert_trades_settle(self, order_ids, usdt0: Decimal, eth0: Decimal, maker: bool):
        """The account's trades of these orders carry Binance's fee and move the balances by
        exactly their amounts (sells of ETH for USDT)."""
        trades = [t for t in self.ex.fetch_my_trades("ETH/USDT") if t["order"] in order_ids]
        self.assertTrue(trades)
        for t in trades:
            self.assertEqual(t["fee"]["currency"], "USDT")
            self.assertEqual(d(t["fee"]["cost"]),
                             (d(t["cost"]) * Decimal("0.001")).quantize(Decimal("1e-8")))
            self.assertEqual(t["takerOrMaker"], "maker" if maker else "taker")
        sold = sum(d(t["amount"]) for t in trades)
        proceeds = sum(d(t["cost"]) - d(t["fee"]["cost"]) for t in trades)
        self.assertAlmostEqual(self.server.balances["USDT"], float(usdt0 + proceeds), places=8)
        self.assertAlmostEqual(self.server.balances["ETH"] + self.server.locked["ETH"],
                               float(eth0 - sold), places=8)
        return trades


class StopLossTest(SimOrderTest):
    def test_unified_stop_loss_price_places_a_stop_loss_limit_that_fills_when_hit(self):
        stop, limit = self.price(0.997), self.price(0.994)
        order = self.ex.create_order("ETH/USDT", "limit", "sell", 0.5, float(limit),
                                     {"stopLossPrice": float(stop)})
        info = order["info"]
        self.assertEqual((info["type"], info["stopPrice"], info["price"], info["timeInForce"],
                          info["status"], info["workingTime"]),
                         ("STOP_LOSS_LIMIT", f"{float(stop):.8f}", f"{float(limit):.8f}", "GTC",
                          "NEW", -1))
        self.assertEqual((order["status"], order["triggerPrice"]), ("open", float(stop)))
        self.assertAlmostEqual(self.server.locked["ETH"], 0.5)
        self.assertEqual([o["id"] for o in self.ex.fetch_open_orders("ETH/USDT")], [order["id"]])

        def still_waiting():
            waiting = self.ex.fetch_order(order["id"], "ETH/USDT")["info"]
            self.assertEqual((waiting["status"], waiting["isWorking"]), ("NEW", False))

        hit = self.advance_until(order["info"]["transactTime"], lambda k: float(k[3]) <= float(stop),
                                 waiting=still_waiting)
        got = self.ex.fetch_order(order["id"], "ETH/USDT")
        self.assertEqual((got["info"]["workingTime"], got["info"]["isWorking"]), (hit[0], True))
        self.assertEqual(got["status"], "closed")
        trades = self.assert_trades_settle({order["id"]}, Decimal(10000), Decimal(1), maker=False)
        self.assertTrue(all(float(limit) <= t["price"] <= float(stop) for t in trades))
        self.assertEqual(sum(d(t["amount"]) for t in trades), Decimal("0.5"))
        self.assertEqual({t["timestamp"] for t in trades}, {hit[0]})
        self.assertEqual(self.server.locked["ETH"], 0.0)
        self.assertEqual(self.ex.fetch_open_orders("ETH/USDT"), [])
        listed = {o["id"]: o["status"] for o in self.ex.fetch_orders("ETH/USDT")}
        self.assertEqual(listed[order["id"]], "closed")

    def test_stop_price_param_and_explicit_type_send_the_same_order(self):
        stop, limit = self.price(0.99), self.price(0.98)
        via_stop_price = self.ex.create_order("ETH/USDT", "limit", "sell", 0.1, float(limit),
                                              {"stopPrice": float(stop)})
        explicit = self.ex.create_order("ETH/USDT", "STOP_LOSS_LIMIT", "sell", 0.1, float(limit),
                                        {"stopPrice": float(stop), "timeInForce": "GTC"})
        market_stop = self.ex.create_order("ETH/USDT", "market", "sell", 0.1, None,
                                           {"stopLossPrice": float(stop)})
        for order in (via_stop_price, explicit):
            self.assertEqual((order["info"]["type"], order["info"]["stopPrice"]),
                             ("STOP_LOSS_LIMIT", f"{float(stop):.8f}"))
        self.assertEqual((market_stop["info"]["type"], market_stop["info"]["price"]),
                         ("STOP_LOSS", "0.00000000"))
        self.assertAlmostEqual(self.server.locked["ETH"], 0.3)
        self.ex.cancel_order(explicit["id"], "ETH/USDT")
        self.assertAlmostEqual(self.server.locked["ETH"], 0.2)

    def test_stop_loss_market_order_sells_into_the_book_when_triggered(self):
        stop = self.price(0.997)
        order = self.ex.create_order("ETH/USDT", "market", "sell", 0.4, None,
                                     {"stopLossPrice": float(stop)})
        hit = self.advance_until(order["info"]["transactTime"], lambda k: float(k[3]) <= float(stop))
        got = self.ex.fetch_order(order["id"], "ETH/USDT")
        self.assertEqual((got["status"], got["filled"], got["info"]["workingTime"]),
                         ("closed", 0.4, hit[0]))
        trades = self.assert_trades_settle({order["id"]}, Decimal(10000), Decimal(1), maker=False)
        self.assertTrue(all(t["price"] < float(stop) for t in trades))

    def test_buy_stop_limit_triggers_on_the_way_up_with_quote_locked(self):
        stop, limit = self.price(1.003), self.price(1.006)
        order = self.ex.create_order("ETH/USDT", "limit", "buy", 0.5, float(limit),
                                     {"stopLossPrice": float(stop)})
        self.assertAlmostEqual(self.server.locked["USDT"], float(d(limit) * Decimal("0.5")), places=8)
        hit = self.advance_until(order["info"]["transactTime"], lambda k: float(k[2]) >= float(stop))
        got = self.ex.fetch_order(order["id"], "ETH/USDT")
        self.assertEqual((got["status"], got["info"]["workingTime"]), ("closed", hit[0]))
        self.assertTrue(float(stop) <= got["average"] <= float(limit))
        self.assertEqual(self.server.locked["USDT"], 0.0)
        self.assertAlmostEqual(self.server.balances["USDT"],
                               float(Decimal(10000) - d(got["info"]["cummulativeQuoteQty"])), places=8)
        self.assertAlmostEqual(self.server.balances["ETH"], 1.0 + 0.5 - 0.0005, places=8)

    def test_stop_rules_and_error_codes(self):
        with self.assertRaises(ccxt.OrderImmediatelyFillable) as ctx:     # sell stop above last
            self.ex.create_order("ETH/USDT", "limit", "sell", 0.1, float(self.price(1.0)),
                                 {"stopLossPrice": float(self.price(1.002))})
        self.assertIn("Order would trigger immediately.", str(ctx.exception))
        with self.assertRaises(ccxt.OrderImmediatelyFillable):              # buy stop below last
            self.ex.create_order("ETH/USDT", "limit", "buy", 0.1, float(self.price(1.0)),
                                 {"stopLossPrice": float(self.price(0.998))})
        base = {"symbol": "ETHUSDT", "side": "SELL", "quantity": "0.1"}
        stop = self.price(0.99)
        for params, code in (
                ({"type": "STOP_LOSS_LIMIT", "price": stop, "stopPrice": stop}, "-1102"),
                ({"type": "STOP_LOSS_LIMIT", "price": stop, "timeInForce": "GTC"}, "-1102"),
                ({"type": "STOP_LOSS", "stopPrice": stop, "price": stop}, "-1106"),
                ({"type": "STOP_LOSS", "stopPrice": stop, "timeInForce": "GTC"}, "-1106"),
                ({"type": "LIMIT", "price": stop, "timeInForce": "GTC", "stopPrice": stop}, "-1106"),
                ({"type": "STOP_LOSS", "stopPrice": stop + "001"}, "PRICE_FILTER"),
                ({"type": "STOP_LOSS", "stopPrice": stop, "quantity": "2"}, "insufficient")):
            with self.assertRaises(ccxt.ExchangeError) as ctx:
                self.ex.privatePostOrder(base | params)
            self.assertIn(code, str(ctx.exception), params)
        self.assertEqual((self.server.locked["ETH"], self.server.balances["ETH"]), (0.0, 1.0))
        self.assertEqual(self.ex.fetch_orders("ETH/USDT"), [])

    def test_cancelled_stop_releases_its_funds_and_never_triggers(self):
        stop = self.price(0.997)
        order = self.ex.create_order("ETH/USDT", "limit", "sell", 0.5, float(stop),
                                     {"stopLossPrice": float(stop)})
        canceled = self.ex.cancel_order(order["id"], "ETH/USDT")
        self.assertEqual((canceled["status"], canceled["info"]["stopPrice"]),
                         ("canceled", f"{float(stop):.8f}"))
        self.assertEqual((self.server.locked["ETH"], self.server.balances["ETH"]), (0.0, 1.0))
        self.advance_until(order["info"]["transactTime"], lambda k: float(k[3]) < float(stop))
        self.assertEqual(self.ex.fetch_order(order["id"], "ETH/USDT")["status"], "canceled")
        self.assertEqual(self.ex.fetch_my_trades("ETH/USDT"), [])
        with self.assertRaises(ccxt.OrderNotFound):
            self.ex.cancel_order(order["id"], "ETH/USDT")


class OcoTest(SimOrderTest):
    def test_oco_locks_once_is_listed_and_cancels_as_a_list(self):
        placed = self.oco("0.4", self.price(1.01), self.price(0.99), self.price(0.985),
                          listClientOrderId="exit-1")
        self.assertEqual((placed["contingencyType"], placed["listOrderStatus"],
                          placed["listClientOrderId"]), ("OCO", "EXECUTING", "exit-1"))
        self.assertEqual([(r["type"], r["status"], r["orderListId"]) for r in placed["orderReports"]],
                         [("STOP_LOSS_LIMIT", "NEW", placed["orderListId"]),
                          ("LIMIT_MAKER", "NEW", placed["orderListId"])])
        self.assertAlmostEqual(self.server.locked["ETH"], 0.4)         # once, not per leg
        legs = [str(o["orderId"]) for o in placed["orders"]]
        self.assertEqual(sorted(o["id"] for o in self.ex.fetch_open_orders("ETH/USDT")), sorted(legs))
        fetched = self.ex.private_get_orderlist({"origClientOrderId": "exit-1"})
        self.assertEqual((fetched["orderListId"], fetched["listStatusType"]),
                         (placed["orderListId"], "EXEC_STARTED"))
        self.assertEqual([x["orderListId"] for x in self.ex.private_get_openorderlist()],
                         [placed["orderListId"]])
        canceled = self.ex.private_delete_orderlist({"symbol": "ETHUSDT",
                                                     "orderListId": placed["orderListId"]})
        self.assertEqual(canceled["listOrderStatus"], "ALL_DONE")
        self.assertEqual([r["status"] for r in canceled["orderReports"]], ["CANCELED", "CANCELED"])
        self.assertEqual((self.server.locked["ETH"], self.server.balances["ETH"]), (0.0, 1.0))
        self.assertEqual(self.ex.private_get_openorderlist(), [])
        self.assertEqual(self.ex.private_get_allorderlist()[0]["listOrderStatus"], "ALL_DONE")
        with self.assertRaises(ccxt.OrderNotFound) as ctx:
            self.ex.private_delete_orderlist({"symbol": "ETHUSDT", "orderListId": placed["orderListId"]})
        self.assertIn("Unknown order list sent.", str(ctx.exception))
        with self.assertRaises(ccxt.OrderNotFound) as ctx:
            self.ex.private_get_orderlist({"orderListId": 999})
        self.assertIn("-2013", str(ctx.exception))

    def test_legacy_endpoint_and_cancelling_one_leg_cancels_the_other(self):
        placed = self.ex.private_post_order_oco({
            "symbol": "ETHUSDT", "side": "SELL", "quantity": "0.3", "price": self.price(1.01),
            "stopPrice": self.price(0.99), "stopLimitPrice": self.price(0.985),
            "stopLimitTimeInForce": "GTC"})
        stop_id, maker_id = (str(o["orderId"]) for o in placed["orders"])
        self.assertEqual(self.ex.fetch_order(maker_id, "ETH/USDT")["info"]["type"], "LIMIT_MAKER")
        self.ex.cancel_order(maker_id, "ETH/USDT")
        self.assertEqual(self.ex.fetch_order(stop_id, "ETH/USDT")["status"], "canceled")
        self.assertEqual(self.server.locked["ETH"], 0.0)
        self.assertEqual(self.ex.private_get_orderlist({"orderListId": placed["orderListId"]})
                         ["listOrderStatus"], "ALL_DONE")

    def test_oco_price_rules_and_error_codes(self):
        above, below = self.price(1.01), self.price(0.99)
        for params, code in (
                ({"abovePrice": self.price(0.995)}, "relationship of the prices"),   # under last
                ({"belowStopPrice": self.price(1.005)}, "relationship of the prices"),
                ({"aboveType": "STOP_LOSS", "aboveStopPrice": above}, "-1014"),
                ({"belowType": "STOP_LOSS"}, "-1106"),                               # belowPrice sent
                ({"belowTimeInForce": ""}, "-1102"),
                ({"quantity": "5"}, "insufficient balance")):
            with self.assertRaises(ccxt.ExchangeError) as ctx:
                self.oco("0.4", above, below, below, **params)
            self.assertIn(code, str(ctx.exception), params)
        self.assertEqual(self.server.locked["ETH"], 0.0)
        self.assertEqual(self.ex.private_get_allorderlist(), [])

    def test_stop_leg_triggering_expires_the_limit_maker(self):
        stop = self.price(0.997)
        placed = self.oco("0.5", self.price(1.05), stop, self.price(0.994))
        stop_id, maker_id = (str(o["orderId"]) for o in placed["orders"])
        hit = self.advance_until(placed["transactionTime"], lambda k: float(k[3]) <= float(stop))
        stop_leg, maker = (self.ex.fetch_order(i, "ETH/USDT") for i in (stop_id, maker_id))
        self.assertEqual((stop_leg["status"], stop_leg["info"]["workingTime"]), ("closed", hit[0]))
        self.assertEqual((maker["status"], maker["filled"]), ("expired", 0.0))
        self.assert_trades_settle({stop_id}, Decimal(10000), Decimal(1), maker=False)
        self.assertEqual(self.server.locked["ETH"], 0.0)
        self.assertEqual(self.ex.private_get_orderlist({"orderListId": placed["orderListId"]})
                         ["listOrderStatus"], "ALL_DONE")

    def test_partly_filled_limit_maker_expires_the_stop_and_keeps_resting(self):
        self.server.set_book_depth(0.001)          # a thin market: the maker leg fills slowly
        above = self.price(1.002)
        placed = self.oco("0.5", above, self.price(0.95), self.price(0.94))
        stop_id, maker_id = (str(o["orderId"]) for o in placed["orders"])
        self.advance_until(placed["transactionTime"], lambda k: float(k[2]) > float(above), step_s=60)
        maker, stop_leg = (self.ex.fetch_order(i, "ETH/USDT") for i in (maker_id, stop_id))
        self.assertEqual((maker["status"], maker["info"]["status"]), ("open", "PARTIALLY_FILLED"))
        self.assertTrue(0 < maker["filled"] < 0.5, maker["filled"])
        self.assertEqual(stop_leg["status"], "expired")
        self.assertAlmostEqual(self.server.locked["ETH"], 0.5 - maker["filled"], places=8)
        self.assert_trades_settle({maker_id}, Decimal(10000), Decimal(1), maker=True)
        self.assertEqual(self.ex.private_get_orderlist({"orderListId": placed["orderListId"]})
                         ["listOrderStatus"], "EXECUTING")
        self.ex.private_delete_orderlist({"symbol": "ETHUSDT", "orderListId": placed["orderListId"]})
        self.assertEqual(self.ex.fetch_order(maker_id, "ETH/USDT")["status"], "canceled")
        self.assertEqual(self.server.locked["ETH"], 0.0)


class PartialFillTest(SimOrderTest):
    DEPTH = 0.01

    def expected_fill(self, placed_ms: int, price: float, qty: Decimal) -> Decimal:
        """What the fill model allows a resting buy: a share of the volume of every minute
        after the placement minute whose low went under its price."""
        capacity = sum(Decimal(f"{RESTING_FILL_SHARE * self.DEPTH * float(k[5]):.8f}")
                       for k in self.minutes_after(placed_ms) if float(k[3]) < price)
        return min(qty, (capacity / STEP).to_integral_value(ROUND_DOWN) * STEP)

    def test_resting_order_fills_a_share_of_each_crossing_minute(self):
        self.server.set_book_depth(self.DEPTH)
        price = self.price(0.999)
        order = self.ex.create_order("ETH/USDT", "limit", "buy", 2, float(price))
        seen_partial = False
        for _ in range(240):
            self.market.advance(60)
            got = self.ex.fetch_order(order["id"], "ETH/USDT")
            expected = self.expected_fill(order["timestamp"], float(price), Decimal(2))
            self.assertAlmostEqual(got["filled"], float(expected), delta=0.0003)
            if 0 < got["filled"] < 2:
                seen_partial = True
                self.assertEqual((got["status"], got["info"]["status"]), ("open", "PARTIALLY_FILLED"))
                self.assertAlmostEqual(self.server.locked["USDT"],
                                       float(d(price) * (2 - d(got["filled"]))), places=6)
            if got["status"] == "closed":
                break
        self.assertTrue(seen_partial, "never partly filled")
        trades = self.ex.fetch_my_trades("ETH/USDT")
        self.assertGreater(len(trades), 2)
        self.assertTrue(all(t["price"] == float(price) and t["takerOrMaker"] == "maker"
                            for t in trades))
        self.assertEqual(sum(d(t["amount"]) for t in trades), d(got["filled"]))

    def test_fills_do_not_depend_on_when_requests_come(self):
        twin = SimExchangeServer(SimMarket(pairs=5, seed=2, speed=0, start_ms=START_MS),
                                 api_key=KEY, api_secret=SECRET,
                                 balances={"USDT": 10000.0, "ETH": 1.0}).start()
        try:
            clients = [(self.server, self.ex), (twin, make_client(twin))]
            price = float(self.price(0.999))
            ids = []
            for server, ex in clients:
                server.set_book_depth(self.DEPTH / 5)
                ids.append(ex.create_order("ETH/USDT", "limit", "buy", 2, price)["id"])
            for _ in range(90):                    # one checks every minute...
                self.market.advance(60)
                self.ex.fetch_order(ids[0], "ETH/USDT")
            twin.market.advance(90 * 60)           # ...the other once, at the end
            filled = [ex.fetch_order(i, "ETH/USDT")["filled"] for (_, ex), i in zip(clients, ids)]
            self.assertEqual(filled[0], filled[1])
            self.assertTrue(0 < filled[0] < 2, filled)
            self.assertEqual(self.server.balances, twin.balances)
            self.assertEqual(self.server.locked, twin.locked)
        finally:
            twin.stop()

    def test_thin_book_scales_quantities_and_market_orders_fill_partly(self):
        normal = self.ex.fetch_order_book("ETH/USDT", limit=20)
        self.server.set_book_depth(0.01)
        thin = self.ex.fetch_order_book("ETH/USDT", limit=20)
        for a, b in zip(normal["bids"] + normal["asks"], thin["bids"] + thin["asks"]):
            self.assertEqual(a[0], b[0])
            self.assertEqual(d(b[1]), max(STEP, (d(a[1]) * Decimal("0.01") / STEP)
                                          .to_integral_value(ROUND_DOWN) * STEP))
        self.assertEqual(self.ex.fetch_ticker("ETH/USDT")["bidVolume"], thin["bids"][0][1])
        self.server.set_book_depth(1e-7)          # one lot step a level, about
        bids = self.ex.fetch_order_book("ETH/USDT", limit=1000)["bids"]
        available = sum(d(q) for _, q in bids)
        self.assertLess(available, Decimal("0.8"))
        sell = self.ex.create_order("ETH/USDT", "market", "sell", 0.8)
        self.assertEqual((sell["status"], sell["info"]["status"]), ("expired", "EXPIRED"))
        self.assertEqual(d(sell["filled"]), available)
        self.assertAlmostEqual(self.server.balances["ETH"], float(1 - available), places=8)
        with self.assertRaises(ValueError):
            self.server.set_book_depth(0)


class KnobsTest(unittest.TestCase):
    """The admin endpoint and configure: the fault knobs at run time."""

    def setUp(self):
        self.server = SimExchangeServer(SimMarket(pairs=3, seed=1, speed=0, start_ms=START_MS),
                                        api_key=KEY, api_secret=SECRET).start()
        self.ex = make_client(self.server, timeout=2000, enableRateLimit=False)
        self.ex.load_markets()

    def tearDown(self):
        self.server.stop()

    def admin(self, method="POST", body=None, key=KEY):
        """(status, decoded JSON) of a request to the admin endpoint."""
        return admin_request(self.server.url, method, body, key)

    def test_admin_endpoint_changes_faults_at_run_time(self):
        status, knobs = self.admin("GET")
        self.assertEqual((status, knobs["error_rate"], knobs["rate_limit"], knobs["book_depth"]),
                         (200, 0.0, 6000, 1.0))
        status, knobs = self.admin(body={"error_rate": 1.0, "symbols": ["BTCUSDT"]})
        self.assertEqual((status, knobs["error_rate"], knobs["symbols"], knobs["latency"]),
                         (200, 1.0, ["BTCUSDT"], 0.0))
        with self.assertRaises(ccxt.ExchangeNotAvailable):
            self.ex.fetch_ticker("BTC/USDT")
        self.assertGreater(self.ex.fetch_ticker("ETH/USDT")["last"], 0)
        self.assertEqual(self.admin("GET")[0], 200)          # the admin is never faulted
        self.assertEqual(self.admin(body={"symbols": None, "error_rate": 0})[1]["error_rate"], 0)
        self.assertGreater(self.ex.fetch_ticker("BTC/USDT")["last"], 0)

    def test_admin_endpoint_sets_rate_limit_and_book_depth(self):
        before = self.ex.fetch_order_book("ETH/USDT", limit=5)["asks"][0][1]
        self.assertEqual(self.admin(body={"book_depth": 0.1, "rate_limit": 40})[0], 200)
        self.assertLess(self.ex.fetch_order_book("ETH/USDT", limit=5)["asks"][0][1], before)
        with self.assertRaises(ccxt.DDoSProtection):
            for _ in range(10):
                self.ex.fetch_order_book("ETH/USDT", limit=5)      # weight 5 each
        self.assertEqual(self.admin("GET")[1]["rate_limit"], 40)

    def test_admin_endpoint_refuses_bad_keys_and_values(self):
        self.assertEqual(self.admin("GET", key="wrong")[0], 401)
        self.assertEqual(self.admin(body={"error_rate": 1.0}, key=None)[0], 401)
        for body in ({"error_rate": 2}, {"error_rate": 0.6, "hang_rate": 0.6}, {"latency": -1},
                     {"book_depth": 0}, {"rate_limit": 0.5}, {"symbols": "BTCUSDT"},
                     {"nope": 1}, [1, 2], "not json"):
            status, answer = self.admin(body=body)
            self.assertEqual(status, 400, body)
            self.assertTrue(answer["error"], body)
        self.assertEqual(self.admin("GET")[1], self.server.knobs())
        self.assertEqual(self.server.knobs()["error_rate"], 0.0)      # nothing was changed
        self.assertEqual(self.admin("DELETE")[0], 405)

    def test_lost_answers_share_places_some_orders_whose_answers_were_lost(self):
        self.server.configure({"error_rate": 1.0, "lost_answers": 0.5})
        for i in range(20):
            with self.assertRaises(ccxt.ExchangeNotAvailable):
                self.ex.create_order("BTC/USDT", "market", "buy", 0.001,
                                     params={"clientOrderId": f"lost-{i}"})
        self.server.configure({"error_rate": 0.0})
        placed = self.ex.fetch_orders("BTC/USDT")
        self.assertTrue(5 <= len(placed) <= 15, len(placed))
        self.assertTrue(all(o["clientOrderId"].startswith("lost-") for o in placed))


def admin_request(url: str, method: str = "POST", body=None, key: str | None = KEY):
    """(status, decoded JSON) of a request to a simulator's admin endpoint."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        data = body if isinstance(body, str) else json.dumps(body) if body is not None else None
        conn.request(method, ADMIN_PATH, body=data, headers={"X-MBX-APIKEY": key} if key else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def ping_status(url: str) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", "/api/v3/ping")
        return conn.getresponse().status
    finally:
        conn.close()


class StandaloneTest(unittest.TestCase):
    COMMAND = [sys.executable, str(ROOT / "sim_exchange.py")]
    ENV = os.environ | {"PYTHONPATH": str(ROOT)}

    def run_alone(self, *options: str, check) -> None:
        """Start `python sim_exchange.py` with options, run check(url), then Ctrl-C it."""
        proc = subprocess.Popen(
            self.COMMAND + ["--port", "0", "--pairs", "3", "--speed", "60", "--seed", "1", *options],
            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=self.ENV)
        killer = threading.Timer(30, proc.kill)
        killer.start()
        try:
            url = None
            for line in proc.stderr:
                if "listening on" in line:
                    url = line.split("listening on ")[1].split()[0]
                    break
            self.assertIsNotNone(url)
            check(url)
            proc.send_signal(signal.SIGINT)
            self.assertEqual(proc.wait(timeout=20), 0)
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()

    def test_runs_alone_and_stops_on_ctrl_c(self):
        self.run_alone(check=lambda url: self.assertEqual(ping_status(url), 200))

    def test_fault_knobs_as_options_and_changed_at_run_time(self):
        def check(url):
            status, knobs = admin_request(url, "GET", key="sim-key")
            self.assertEqual(status, 200)
            self.assertEqual(knobs, {"latency": 0.01, "error_rate": 1.0, "hang_rate": 0.0,
                                     "hang_seconds": 5.0, "drop_rate": 0.0, "lost_answers": 0.25,
                                     "symbols": None, "rate_limit": 5000, "book_depth": 0.5,
                                     "stream_latency": 0.0, "stream_stall": False,
                                     "stream_max_age": 86400.0, "drop_streams": False})
            self.assertIn(ping_status(url), (500, 502, 503))
            self.assertEqual(admin_request(url, body={"error_rate": 0}, key="sim-key")[0], 200)
            self.assertEqual(ping_status(url), 200)
            self.assertEqual(admin_request(url, body={"error_rate": 1}, key="sim-secret")[0], 401)

        self.run_alone("--latency", "0.01", "--error-rate", "1", "--hang-seconds", "5",
                       "--lost-answers", "0.25", "--rate-limit", "5000", "--book-depth", "0.5",
                       check=check)

    def test_help_and_a_bad_knob(self):
        shown = subprocess.run(self.COMMAND + ["--help"], capture_output=True, text=True,
                               cwd=ROOT, env=self.ENV, timeout=60)
        for option in ("--latency", "--error-rate", "--hang-rate", "--hang-seconds", "--drop-rate",
                       "--lost-answers", "--rate-limit", "--book-depth", ADMIN_PATH):
            self.assertIn(option, shown.stdout)
        bad = subprocess.run(self.COMMAND + ["--port", "0", "--error-rate", "1.5"],
                             capture_output=True, text=True, cwd=ROOT, env=self.ENV, timeout=60)
        self.assertEqual(bad.returncode, 2)
        self.assertIn("error-rate must be a share between 0 and 1", bad.stderr)


if __name__ == "__main__":
    unittest.main()

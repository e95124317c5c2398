"""Tests of order_ids: client order ids on any ccxt exchange.

- The table: every cited line of the installed ccxt still says what the table claims;
  which ccxt classes it covers; ids valid for each exchange's rules.
- The wire, without a network: what each ccxt class actually puts in the create and
  lookup requests (ccxt's HTTP call is replaced by a recorder).
- Binance, against the in-repo simulated exchange (sim_exchange).
- OKX, a second ccxt class, against tests/stub_exchange.OkxStub: the id goes out as
  clOrdId, the order is found by it, a duplicate is refused, a lost answer is not doubled.
- No support: bitFlyer (ccxt's create_order ignores clientOrderId) and an okx subclass that
  drops the id: no id is sent, no lookup is claimed, no retry is allowed.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import unittest
from urllib.parse import parse_qsl, urlsplit

import ccxt
import ccxt.async_support

import order_ids
from domain import OrderRejected
from order_ids import (ClientIdLookupUnsupported, DuplicateClientOrderId, client_order_id,
                       create_params, find_by_client_id, id_support, may_retry_create)
from sim_exchange import SimExchangeServer, ccxt_overrides
from sim_market import SimMarket
from tests.stub_exchange import OkxStub, okx_client

START_MS = 1_717_200_000_000 + 150_000
CCXT_DIR = os.path.dirname(ccxt.__file__)


class UnknownOutcome(Exception):
    """The order may or may not have executed, and the exchange cannot tell us."""


def place(ex, symbol: str, side: str, amount: float, cid: str, attempts: int = 3,
          resumed: bool = False) -> dict:
    """A market order placed the way LiveBroker._place should: the id through create_params;
    after a failure, no retry unless may_retry_create, and a lookup before every retry.
    resumed: an earlier attempt (outside) already failed, so begin with the lookup."""
    params = create_params(ex, cid)
    for attempt in range(int(resumed), attempts):
        if attempt > 0:
            if not may_retry_create(ex):
                raise UnknownOutcome(f"{ex.id}: {cid} may have executed; not sent again")
            found = find_by_client_id(ex, symbol, cid)
            if found is not None:
                return found
        try:
            return ex.create_order(symbol, "market", side, amount, None, dict(params))
        except ccxt.NetworkError:
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------ the table

class TableTest(unittest.TestCase):
    def test_every_cited_ccxt_line_still_says_so(self):
        self.assertEqual(ccxt.__version__, "4.5.90", "the table was verified on ccxt 4.5.90: "
                         "re-read the cited lines before moving the pin")
        cited = 0
        for support in order_ids.TABLE.values():
            self.assertTrue(support.evidence, support.name)
            for ev in support.evidence:
                with open(os.path.join(CCXT_DIR, ev.file), encoding="utf-8") as fh:
                    lines = fh.read().split("\n")
                self.assertIn(ev.needle, lines[ev.line - 1], f"{support.name}: {ev}")
                cited += 1
        self.assertGreaterEqual(cited, 40)

    def test_wire_names_and_lookups(self):
        expected = {   # name: (param for create_order, name on the wire, lookup ways)
            "binance": ("clientOrderId", "newClientOrderId", ("fetch_order",)),
            "okx": ("clientOrderId", "clOrdId", ("fetch_order",)),
            "bybit": ("clientOrderId", "orderLinkId", ("list",)),
            "kraken": ("clientOrderId", "cl_ord_id", ("list",)),
            "kucoin": ("clientOrderId", "clientOid", ("fetch_order",)),
            "coinbase": ("client_order_id", "client_order_id", ("list",)),
            "gate": ("clientOrderId", "text", ("fetch_order", "list")),
            "bitget": ("clientOrderId", "clientOid", ("fetch_order",)),
            "mexc": ("clientOrderId", "newClientOrderId", ("fetch_order",)),
            "htx": ("clientOrderId", "client-order-id", ("fetch_order",)),
            "bitfinex": ("clientOrderId", "cid", ("list",)),
            "bitflyer": (None, None, ()),
        }
        got = {name: (s.param, s.wire, s.lookup) for name, s in order_ids.TABLE.items()}
        self.assertEqual(got, expected)
        for name in expected:
            support = id_support(getattr(ccxt, name)())
            self.assertEqual(support.name, name)
            self.assertEqual(may_retry_create(getattr(ccxt, name)()), name != "bitflyer", name)

    def test_subclasses_that_inherit_the_verified_code_are_covered(self):
        self.assertEqual(id_support(ccxt.binanceus()).name, "binance")
        self.assertEqual(id_support(ccxt.myokx()).name, "okx")
        self.assertEqual(id_support(ccxt.bybiteu).name, "bybit")       # a class works too
        for other in (ccxt.zaif(), ccxt.coincheck(), ccxt.async_support.okx()):
            support = id_support(other)
            self.assertFalse(support.can_send, type(other))
            self.assertFalse(support.verified)
            self.assertFalse(may_retry_create(other))
            self.assertEqual(create_params(other, "tb-BTCUSDT-1"), {})

    def test_a_subclass_that_changes_a_relied_on_method_is_not_trusted(self):
        class PatchedKraken(ccxt.kraken):
            def fetch_open_orders(self, symbol=None, since=None, limit=None, params={}):
                return []
        support = id_support(PatchedKraken())
        self.assertFalse(support.can_send)
        self.assertIn("fetch_open_orders", support.name)
        self.assertFalse(may_retry_create(PatchedKraken()))

        class Recording(ccxt.kraken):          # overriding fetch (HTTP) changes nothing
            def fetch(self, *a, **k):
                raise AssertionError("no network here")
        self.assertEqual(id_support(Recording()).name, "kraken")

    def test_binance_ids_are_prefix_pair_and_sequence(self):
        ex = ccxt.binance()
        self.assertEqual(client_order_id(ex, "tb", "BTC/USDT", 17), "tb-BTCUSDT-17")
        long_id = client_order_id(ex, "bot instance #1!", "VERYLONGTOKENNAME123/USDT", 10 ** 9)
        self.assertRegex(long_id, r"^[.A-Z:/a-z0-9_-]{1,36}$")
        self.assertTrue(long_id.endswith(str(10 ** 9)))
        self.assertEqual(client_order_id(None, "tb", "BTC/USDT", 17), "tb-BTCUSDT-17",
                         "paper and backtest ids have the same form")

    def test_ids_are_valid_deterministic_and_distinct_everywhere(self):
        cases = [("tb", s, n) for s in ("BTC/USDT", "ETH/USDT", "VERYLONGTOKENNAME123/USDT",
                                         "1000SHIB/USDT") for n in (0, 1, 17, 99_999, 10 ** 7)]
        cases += [("bot instance #1!", "BTC/USDT", 5), ("live", "BTC/USDT", 5)]
        for name in list(order_ids.TABLE) + ["zaif"]:
            ex = getattr(ccxt, name)()
            support = id_support(ex)
            ids = [client_order_id(ex, *c) for c in cases]
            self.assertEqual(ids, [client_order_id(ex, *c) for c in cases], name)
            self.assertEqual(len(set(ids)), len(ids), f"{name}: {ids}")
            for cid in ids:
                if support.can_send:
                    self.assertTrue(support.valid(cid), f"{name}: {cid!r}")
                    self.assertEqual(len(create_params(ex, cid)), 1)
                else:
                    self.assertRegex(cid, r"^[.A-Za-z0-9_-]{1,36}$")
        self.assertRegex(client_order_id(ccxt.okx(), "tb", "BTC/USDT", 3),
                         r"^tb[0-9a-f]{8}3$")            # prefix, hash of the symbol, sequence
        self.assertTrue(client_order_id(ccxt.gate(), "tb", "BTC/USDT", 3).startswith("t-"))
        self.assertLessEqual(len(client_order_id(ccxt.kraken(), "tb", "VERYLONGTOKENNAME123/USDT",
                                                 123)), 18)
        self.assertEqual(create_params(ccxt.bitfinex(), client_order_id(ccxt.bitfinex(), "tb",
                                                                        "BTC/USDT", 3)),
                         {"clientOrderId": int(client_order_id(ccxt.bitfinex(), "tb", "BTC/USDT", 3))})
        with self.assertRaises(ValueError):
            client_order_id(ccxt.bitfinex(), "tb", "BTC/USDT", 10 ** 12)
        with self.assertRaises(ValueError):
            client_order_id(ccxt.okx(), "tb", "BTC/USDT", -1)

    def test_an_id_the_exchange_would_refuse_is_refused_before_sending(self):
        for name, bad in [("okx", "tb-BTCUSDT-1"), ("okx", "x" * 33), ("binance", "a b"),
                          ("kraken", "x" * 19), ("gate", "tb-BTCUSDT-1"), ("bitfinex", "12a")]:
            with self.assertRaises(OrderRejected, msg=f"{name} {bad}"):
                create_params(getattr(ccxt, name)(), bad)
        self.assertEqual(create_params(ccxt.coinbase(), "tb-BTCUSDT-1"),
                         {"client_order_id": "tb-BTCUSDT-1"})
        self.assertEqual(create_params(ccxt.okx(), "tbBTC1"), {"clientOrderId": "tbBTC1"})


# ------------------------------------------------------------------------------ the wire

class _Sent(Exception):
    pass


def recorder(cls):
    """`cls` whose HTTP call records (method, url, body) and raises _Sent."""
    class Recorder(cls):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.sent: list[tuple[str, str, str]] = []

        def fetch(self, url, method="GET", headers=None, body=None):
            self.sent.append((method, url, body or ""))
            raise _Sent(url)
    Recorder.__name__ = cls.__name__
    return Recorder


def fields(url: str, body: str) -> dict:
    """Every parameter of one request: its query string and its body (JSON or form)."""
    out = dict(parse_qsl(urlsplit(url).query))
    if body.startswith("{"):
        out |= json.loads(body)
    elif body.startswith("["):
        out |= json.loads(body)[0]
    elif body:
        out |= dict(parse_qsl(body))
    return out


MARKET_IDS = {"kraken": "XBTUSDT", "kucoin": "BTC-USDT", "gate": "BTC_USDT", "bybit": "BTCUSDT",
              "mexc": "BTCUSDT", "bitget": "BTCUSDT", "coinbase": "BTC-USDT", "bitflyer": "BTC_USDT"}
OPTIONS = {"kucoin": {"uta": False},                       # no account-mode call first
           "bybit": {"enableUnifiedAccount": True, "enableUnifiedMargin": False}}


def wire_client(name: str):
    """A recording ccxt `name` with fake keys and one BTC/USDT spot market: no network."""
    ex = recorder(getattr(ccxt, name))({
        "apiKey": "k", "secret": base64.b64encode(b"s" * 32).decode(), "password": "p",
        "enableRateLimit": False, "options": OPTIONS.get(name, {})})
    market_id = MARKET_IDS[name]
    ex.set_markets([{
        "id": market_id, "symbol": "BTC/USDT", "base": "BTC", "quote": "USDT",
        "baseId": "BTC", "quoteId": "USDT", "type": "spot", "spot": True, "margin": False,
        "swap": False, "future": False, "option": False, "contract": False,
        "linear": None, "inverse": None, "active": True, "settle": None, "settleId": None,
        "contractSize": None, "altname": market_id, "wsname": "BTC/USDT",
        "precision": {"amount": 1e-8, "price": 0.01}, "info": {},
        "limits": {"amount": {"min": None, "max": None}, "price": {"min": None, "max": None},
                   "cost": {"min": None, "max": None}}}])
    return ex


class WireTest(unittest.TestCase):
    """What each ccxt class sends, with ccxt's HTTP call replaced: no network."""

    def client(self, name):
        return wire_client(name)

    def sent_by(self, ex, call) -> list[dict]:
        ex.sent.clear()
        with self.assertRaises(_Sent):
            call()
        return [fields(url, body) for _, url, body in ex.sent]

    def test_create_sends_the_id_under_the_exchanges_own_name(self):
        for name in ("kraken", "kucoin", "gate", "bybit", "mexc", "bitget", "coinbase"):
            with self.subTest(name):
                ex = self.client(name)
                support = id_support(ex)
                cid = client_order_id(ex, "tb", "BTC/USDT", 7)
                sent = self.sent_by(ex, lambda: ex.create_order(
                    "BTC/USDT", "limit", "buy", 0.01, 50000, create_params(ex, cid)))
                order = [f for f in sent if support.wire in f]
                self.assertEqual(len(order), 1, sent)
                self.assertEqual(order[0][support.wire], cid)
                self.assertNotIn("clientOrderId", order[0])

    def test_lookups_ask_by_the_id(self):
        expectations = {   # name: (field that must carry the id in the lookup request)
            "kucoin": None, "gate": None, "mexc": "origClientOrderId", "bitget": "clientOid",
            "bybit": "orderLinkId", "kraken": "cl_ord_id"}
        for name, field in expectations.items():
            with self.subTest(name):
                ex = self.client(name)
                support = id_support(ex)
                cid_here = client_order_id(ex, "tb", "BTC/USDT", 7)
                if support.lookup[0] == "fetch_order":
                    call = lambda: ex.fetch_order(None, "BTC/USDT",  # noqa: E731
                                                  {support.fetch_param: cid_here})
                else:
                    call = lambda: getattr(ex, support.list_methods[0])(  # noqa: E731
                        "BTC/USDT", None, None, {support.list_param: cid_here})
                ex.sent.clear()
                with self.assertRaises(_Sent):
                    call()
                method, url, body = ex.sent[-1]
                if field is None:                       # kucoin and gate: the id is in the path
                    self.assertIn(cid_here, urlsplit(url).path)
                else:
                    self.assertEqual(fields(url, body).get(field), cid_here)

    def test_kraken_fetch_order_cannot_find_a_cl_ord_id(self):
        """Why kraken's lookup is a listing: fetch_order sends the id as userref."""
        ex = self.client("kraken")
        sent = self.sent_by(ex, lambda: ex.fetch_order(None, "BTC/USDT", {"clientOrderId": "tb-1"}))
        self.assertEqual(sent[-1].get("userref"), "tb-1")
        self.assertNotIn("cl_ord_id", sent[-1])

    def test_coinbase_ignores_the_unified_param(self):
        """Why coinbase's create param is the raw client_order_id."""
        ex = self.client("coinbase")
        sent = self.sent_by(ex, lambda: ex.create_order("BTC/USDT", "limit", "buy", 0.01, 50000,
                                                        {"clientOrderId": "tb-1"}))
        self.assertNotEqual(sent[-1]["client_order_id"], "tb-1")
        self.assertTrue(sent[-1]["client_order_id"].startswith("ccxt-"))


# ------------------------------------------------------------------------------ binance (sim)

class BinanceSimTest(unittest.TestCase):
    KEY, SECRET = "oid-key", "oid-secret"

    @classmethod
    def setUpClass(cls):
        cls.market = SimMarket(pairs=3, seed=1, speed=0, start_ms=START_MS)
        cls.server = SimExchangeServer(cls.market, api_key=cls.KEY, api_secret=cls.SECRET).start()
        cls.addClassCleanup(cls.server.stop)

    def setUp(self):
        self.server.set_faults()
        self.ex = ccxt.binance(ccxt_overrides(self.server.url)
                               | {"apiKey": self.KEY, "secret": self.SECRET})
        self.ex.load_markets()

    def server_ids(self, symbol_id: str) -> list[str]:
        """The client ids the simulated exchange stored (it reads only newClientOrderId)."""
        return [o["clientOrderId"] for o in self.ex.privateGetAllOrders({"symbol": symbol_id})]

    def test_the_id_goes_out_as_newClientOrderId_and_finds_the_order(self):
        support = id_support(self.ex)
        self.assertEqual((support.wire, support.lookup), ("newClientOrderId", ("fetch_order",)))
        cid = client_order_id(self.ex, "oid", "ETH/USDT", 1)
        order = self.ex.create_order("ETH/USDT", "market", "buy", 0.05, None,
                                     create_params(self.ex, cid))
        self.assertEqual(order["clientOrderId"], cid)
        self.assertIn(cid, self.server_ids("ETHUSDT"))
        found = find_by_client_id(self.ex, "ETH/USDT", cid)
        self.assertEqual((found["id"], found["status"], found["filled"]),
                         (order["id"], "closed", order["filled"]))
        self.assertIsNone(find_by_client_id(self.ex, "ETH/USDT", "oid-ETHUSDT-999"))

    def test_duplicates_are_refused_only_while_the_first_rests(self):
        self.assertEqual(id_support(self.ex).duplicates, "rejected-while-open")
        price = float(self.ex.price_to_precision(
            "ETH/USDT", self.ex.fetch_ticker("ETH/USDT")["last"] * 0.8))
        cid = client_order_id(self.ex, "oid", "ETH/USDT", 2)
        first = self.ex.create_order("ETH/USDT", "limit", "buy", 0.05, price,
                                     create_params(self.ex, cid))
        with self.assertRaises(ccxt.InvalidOrder):
            self.ex.create_order("ETH/USDT", "limit", "buy", 0.05, price,
                                 create_params(self.ex, cid))
        self.ex.cancel_order(first["id"], "ETH/USDT")
        cid = client_order_id(self.ex, "oid", "ETH/USDT", 3)       # a filled market order...
        self.ex.create_order("ETH/USDT", "market", "buy", 0.05, None, create_params(self.ex, cid))
        self.ex.create_order("ETH/USDT", "market", "buy", 0.05, None, create_params(self.ex, cid))
        self.assertEqual(self.server_ids("ETHUSDT").count(cid), 2)  # ...does not block a second

    def test_a_lost_answer_is_looked_up_not_doubled(self):
        self.assertTrue(may_retry_create(self.ex))
        cid = client_order_id(self.ex, "oid", "BTC/USDT", 4)
        self.server.set_faults(drop_rate=1.0, symbols={"BTCUSDT"}, after_processing=True)
        with self.assertRaises(ccxt.NetworkError):
            self.ex.create_order("BTC/USDT", "market", "buy", 0.002, None,
                                 create_params(self.ex, cid))
        self.server.set_faults()
        order = place(self.ex, "BTC/USDT", "buy", 0.002, cid, resumed=True)
        self.assertEqual((order["clientOrderId"], order["status"]), (cid, "closed"))
        self.assertEqual(self.server_ids("BTCUSDT").count(cid), 1)


# ------------------------------------------------------------------------------ okx (stub)

class OkxStubTest(unittest.TestCase):
    def setUp(self):
        self.stub = OkxStub().start()
        self.addCleanup(self.stub.stop)
        self.ex = okx_client(self.stub)
        self.ex.load_markets()

    def posts(self) -> list:
        return self.stub.requests_to("POST", "/api/v5/trade/batch-orders")

    def test_markets_load_from_one_public_call(self):
        self.assertEqual(sorted(self.ex.markets), ["BTC/USDT", "ETH/USDT"])
        self.assertEqual([(r.method, r.path, r.query) for r in self.stub.requests],
                         [("GET", "/api/v5/public/instruments", {"instType": "SPOT"})])

    def test_the_id_goes_out_as_clOrdId_and_finds_the_order(self):
        support = id_support(self.ex)
        self.assertEqual((support.name, support.wire, support.unified), ("okx", "clOrdId", True))
        cid = client_order_id(self.ex, "tb", "BTC/USDT", 1)
        order = self.ex.create_order("BTC/USDT", "market", "buy", 0.01, None,
                                     create_params(self.ex, cid))
        (post,) = self.posts()
        self.assertEqual(post.body[0]["clOrdId"], cid)
        self.assertNotIn("clientOrderId", post.body[0])
        found = find_by_client_id(self.ex, "BTC/USDT", cid)
        lookup = self.stub.requests_to("GET", "/api/v5/trade/order")[-1]
        self.assertEqual(lookup.query, {"instId": "BTC-USDT", "clOrdId": cid})
        self.assertEqual((found["id"], found["clientOrderId"], found["status"], found["filled"],
                          found["average"]), (order["id"], cid, "closed", 0.01, 60000.0))
        self.assertEqual(found["fee"]["currency"], "BTC")
        self.assertIsNone(find_by_client_id(self.ex, "BTC/USDT", "tbnothere1"))

    def test_a_duplicate_id_is_refused_as_okx_does(self):
        cid = client_order_id(self.ex, "tb", "ETH/USDT", 2)
        self.ex.create_order("ETH/USDT", "market", "sell", 0.1, None, create_params(self.ex, cid))
        with self.assertRaises(ccxt.InvalidOrder) as ctx:            # 51016, ccxt okx.py:835
            self.ex.create_order("ETH/USDT", "market", "sell", 0.1, None,
                                 create_params(self.ex, cid))
        self.assertIn("51016", str(ctx.exception))
        self.assertEqual(len(self.stub.orders_with(cid)), 1)

    def test_a_binance_style_id_is_caught_before_okx_refuses_it(self):
        binance_style = client_order_id(ccxt.binance(), "tb", "BTC/USDT", 3)     # has hyphens
        with self.assertRaises(OrderRejected):
            create_params(self.ex, binance_style)
        self.assertEqual(self.posts(), [])
        with self.assertRaises(ccxt.BadRequest):                      # what OKX would answer
            self.ex.create_order("BTC/USDT", "market", "buy", 0.01, None,
                                 {"clientOrderId": binance_style})

    def test_a_lost_answer_is_looked_up_not_doubled(self):
        self.assertTrue(may_retry_create(self.ex))
        cid = client_order_id(self.ex, "tb", "BTC/USDT", 4)
        self.stub.lose_answers = 1
        order = place(self.ex, "BTC/USDT", "buy", 0.01, cid)
        self.assertEqual((order["clientOrderId"], order["status"]), (cid, "closed"))
        self.assertEqual(len(self.posts()), 1)
        self.assertEqual(len(self.stub.orders_with(cid)), 1)

    def test_a_refused_order_is_sent_again_after_the_lookup_says_none(self):
        cid = client_order_id(self.ex, "tb", "BTC/USDT", 5)
        self.stub.unavailable = 1                       # the create is refused, not executed
        order = place(self.ex, "BTC/USDT", "buy", 0.01, cid)
        self.assertEqual(order["clientOrderId"], cid)
        self.assertEqual(len(self.posts()), 2)          # the refused one and the retry
        self.assertEqual(len(self.stub.orders_with(cid)), 1)
        self.assertEqual(len(self.stub.requests_to("GET", "/api/v5/trade/order")), 1)

    def test_a_failed_lookup_raises_instead_of_saying_none(self):
        cid = client_order_id(self.ex, "tb", "BTC/USDT", 6)
        self.ex.create_order("BTC/USDT", "market", "buy", 0.01, None, create_params(self.ex, cid))
        self.stub.unavailable = 1
        with self.assertRaises(ccxt.ExchangeNotAvailable):
            find_by_client_id(self.ex, "BTC/USDT", cid)
        self.assertIsNotNone(find_by_client_id(self.ex, "BTC/USDT", cid))

    def test_the_listing_lookup(self):
        """The "list" way (kraken's, bybit's, coinbase's), exercised on the stub."""
        listing = dataclasses.replace(id_support(self.ex), lookup=("list",), list_param=None,
                                      list_methods=("fetch_open_orders", "fetch_closed_orders"))
        filled = client_order_id(self.ex, "tb", "BTC/USDT", 7)
        resting = client_order_id(self.ex, "tb", "BTC/USDT", 8)
        self.ex.create_order("BTC/USDT", "market", "buy", 0.01, None, create_params(self.ex, filled))
        self.ex.create_order("BTC/USDT", "limit", "buy", 0.01, 50000, create_params(self.ex, resting))
        self.assertEqual(find_by_client_id(self.ex, "BTC/USDT", filled, support=listing)["status"],
                         "closed")
        self.assertEqual(find_by_client_id(self.ex, "BTC/USDT", resting, support=listing)["status"],
                         "open")
        self.assertIsNone(find_by_client_id(self.ex, "BTC/USDT", "tbnothere2", support=listing))
        self.assertEqual(self.stub.requests_to("GET", "/api/v5/trade/order"), [])
        self.stub.allow_duplicate_ids = True            # an exchange that does not check
        self.ex.create_order("BTC/USDT", "market", "buy", 0.01, None, create_params(self.ex, filled))
        with self.assertRaises(DuplicateClientOrderId):
            find_by_client_id(self.ex, "BTC/USDT", filled, support=listing)


# ------------------------------------------------------------------------------ no support

class OkxIgnoringIds(ccxt.okx):
    """An exchange class whose create_order ignores clientOrderId (ccxt then makes up its
    own clOrdId for every order, okx.py:6505-6508)."""

    def create_order_request(self, symbol, type, side, amount, price=None, params={}):
        return super().create_order_request(symbol, type, side, amount, price,
                                            self.omit(params, ["clientOrderId", "clOrdId"]))


class NoSupportTest(unittest.TestCase):
    def test_bitflyer_takes_no_id(self):
        ex = wire_client("bitflyer")
        support = id_support(ex)
        self.assertEqual((support.name, support.can_send, support.can_look_up),
                         ("bitflyer", False, False))
        self.assertFalse(may_retry_create(ex))
        cid = client_order_id(ex, "tb", "BTC/USDT", 1)
        self.assertEqual(create_params(ex, cid), {})
        ex.sent.clear()
        with self.assertRaises(_Sent):
            ex.create_order("BTC/USDT", "limit", "buy", 0.01, 50000, create_params(ex, cid))
        self.assertNotIn(cid, ex.sent[-1][2])
        ex.sent.clear()
        with self.assertRaises(_Sent):             # ccxt would pass the unified name through raw
            ex.create_order("BTC/USDT", "limit", "buy", 0.01, 50000, {"clientOrderId": cid})
        self.assertEqual(json.loads(ex.sent[-1][2]).get("clientOrderId"), cid)
        ex.sent.clear()
        with self.assertRaises(ClientIdLookupUnsupported):
            find_by_client_id(ex, "BTC/USDT", cid)
        self.assertEqual(ex.sent, [])                          # the lookup sent nothing

    def test_an_exchange_that_ignores_the_id_gets_no_blind_retry(self):
        with OkxStub() as stub:
            ex = okx_client(stub, OkxIgnoringIds)
            ex.load_markets()
            support = id_support(ex)
            self.assertFalse(support.can_send)
            self.assertIn("create_order_request", support.name)
            self.assertFalse(may_retry_create(ex))
            cid = client_order_id(ex, "tb", "BTC/USDT", 1)
            self.assertEqual(create_params(ex, cid), {})
            stub.lose_answers = 1
            with self.assertRaises(UnknownOutcome):
                place(ex, "BTC/USDT", "buy", 0.01, cid)
            self.assertEqual(len(stub.orders), 1)              # executed once, not again
            with self.assertRaises(ClientIdLookupUnsupported):
                find_by_client_id(ex, "BTC/USDT", cid)
            stub.lose_answers = 1                              # what a blind retry does:
            with self.assertRaises(ccxt.NetworkError):
                ex.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": cid})
            ex.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": cid})
            self.assertEqual(len(stub.orders), 3)              # the same order twice more
            self.assertTrue(all(o["clOrdId"] != cid for o in stub.orders))


if __name__ == "__main__":
    unittest.main()

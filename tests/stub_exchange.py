"""A small OKX (API v5) stub on 127.0.0.1 for an unmodified ``ccxt.okx``.

Just enough of OKX's REST API for ccxt to load spot markets, place orders and find them
again, by order id or by client order id (``clOrdId``):

    GET  /api/v5/public/instruments?instType=SPOT           markets
    POST /api/v5/trade/batch-orders   (ccxt's default)      place orders
    POST /api/v5/trade/order                                place one order
    GET  /api/v5/trade/order?instId=&ordId=|clOrdId=        one order
    GET  /api/v5/trade/orders-pending?instId=               open orders
    GET  /api/v5/trade/orders-history?instType=&instId=&state=&begin=   finished orders

OKX was chosen because ccxt's class needs the fewest endpoints: load_markets is one public
call once `okx_overrides` limits the market types to spot and turns fetchCurrencies off
(bybit would also ask the account mode before every order; kraken's fetch_order cannot use
cl_ord_id at all).

What it models, as OKX does (https://www.okx.com/docs-v5/en/): signed private requests
(OK-ACCESS-KEY / -PASSPHRASE / -TIMESTAMP / -SIGN = base64 HMAC-SHA256 of timestamp + method +
path?query + body); ``clOrdId`` of 1-32 alphanumerics (else sCode 51000 "Parameter clOrdId
error"); a second order with a clOrdId the account already used is refused with sCode 51016
"Duplicated clOrdId" (the batch answers code "1", HTTP 200); an unknown order is code 51603
"Order does not exist". Market orders fill at once at the instrument's price, the fee taken
in the currency received (negative, as OKX reports it); limit orders that do not cross rest
as "live".

Knobs for tests: ``lose_answers`` (execute the next N orders, then drop the connection
without an answer), ``unavailable`` (answer the next N private requests 503 "System is
busy" (code 50013) without doing anything), ``allow_duplicate_ids`` (skip the 51016
check: an exchange that does not check). Every request is recorded in ``requests``
(method, path, query, parsed body, headers) so a test can see exactly what ccxt sent.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from market_rules import TAKER_FEE

KEY, SECRET, PASSPHRASE = "stub-key", "stub-secret", "stub-pass"
CLORDID_RE = re.compile(r"^[A-Za-z0-9]{1,32}$")
FEE_RATE = Decimal(repr(TAKER_FEE))


def okx_overrides(base_url: str) -> dict:
    """Constructor config that points an unmodified ccxt.okx at an OkxStub."""
    return {
        "urls": {"api": {"rest": base_url.rstrip("/")}},
        "has": {"fetchCurrencies": False},          # no private /asset/currencies on load
        "options": {"fetchMarkets": {"types": ["spot"]}},  # one public/instruments call
    }


def okx_client(stub: "OkxStub", cls: type | None = None, **extra) -> Any:
    """A ccxt.okx (or subclass `cls`) with the stub's keys, pointed at the stub."""
    import ccxt
    cls = cls or ccxt.okx
    return cls(okx_overrides(stub.url) | {"apiKey": KEY, "secret": SECRET,
                                          "password": PASSPHRASE} | extra)


@dataclass(frozen=True)
class Instrument:
    inst_id: str
    price: Decimal
    lot: Decimal = Decimal("0.00000001")
    min_size: Decimal = Decimal("0.00001")
    tick: Decimal = Decimal("0.1")

    @property
    def base(self) -> str:
        return self.inst_id.split("-")[0]

    @property
    def quote(self) -> str:
        return self.inst_id.split("-")[1]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str] = field(repr=False)


class _Reply(Exception):
    """Answer the request with this JSON body and HTTP status."""

    def __init__(self, body: dict, status: int = 200):
        super().__init__(body.get("msg"))
        self.body, self.status = body, status


def _error(code: str, msg: str, status: int = 200) -> _Reply:
    return _Reply({"code": code, "msg": msg, "data": []}, status)


class OkxStub:
    """OKX's spot REST API, in memory, on a ThreadingHTTPServer in a daemon thread."""

    def __init__(self, instruments: list[Instrument] | None = None, host: str = "127.0.0.1"):
        self.instruments = {i.inst_id: i for i in (instruments or [
            Instrument("BTC-USDT", Decimal("60000.0")),
            Instrument("ETH-USDT", Decimal("3000.0"), tick=Decimal("0.01")),
        ])}
        self.host = host
        self.requests: list[Request] = []
        self.orders: list[dict] = []          # OKX order records, oldest first
        self.lose_answers = 0
        self.unavailable = 0
        self.allow_duplicate_ids = False
        self._ids = itertools.count(700_000_000_001)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> "OkxStub":
        handler = type("OkxStubHandler", (_Handler,), {"stub": self})
        self._httpd = ThreadingHTTPServer((self.host, 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="okx-stub",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "OkxStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- what tests look at
    def requests_to(self, method: str, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def orders_with(self, cl_ord_id: str) -> list[dict]:
        with self._lock:
            return [dict(o) for o in self.orders if o["clOrdId"] == cl_ord_id]

    # -- the API
    def handle(self, method: str, path: str, query_string: str, raw: bytes,
               headers: dict[str, str]) -> tuple[int, dict, bool]:
        """(HTTP status, JSON body, drop the connection instead of answering)."""
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 400, {"code": "50002", "msg": "JSON syntax error", "data": []}, False
        with self._lock:
            self.requests.append(Request(method, path, dict(query), body, dict(headers)))
        try:
            if path == "/api/v5/public/instruments" and method == "GET":
                return 200, self._instruments(query), False
            if not path.startswith("/api/v5/trade/"):
                raise _error("50000", f"Not found: {method} {path}", 404)
            with self._lock:
                busy = self.unavailable > 0
                self.unavailable -= busy
            if busy:                                # refused before it took any effect
                raise _error("50013", "System is busy, please try again later", 503)
            self._authenticate(method, path, query_string, raw, headers)
            if method == "POST" and path in ("/api/v5/trade/batch-orders", "/api/v5/trade/order"):
                return self._place(body if isinstance(body, list) else [body])
            if method == "GET" and path == "/api/v5/trade/order":
                return 200, self._order(query), False
            if method == "GET" and path == "/api/v5/trade/orders-pending":
                return 200, self._list(query, lambda o: o["state"] in ("live", "partially_filled")), False
            if method == "GET" and path == "/api/v5/trade/orders-history":
                state = query.get("state")
                return 200, self._list(query, lambda o: o["state"] in ("filled", "canceled")
                                       and (state is None or o["state"] == state)), False
            raise _error("50000", f"Not found: {method} {path}", 404)
        except _Reply as reply:
            return reply.status, reply.body, False

    def _authenticate(self, method, path, query_string, raw, headers) -> None:
        h = {k.lower(): v for k, v in headers.items()}
        if h.get("ok-access-key") != KEY:
            raise _error("50111", "Invalid OK-ACCESS-KEY.", 401)
        if h.get("ok-access-passphrase") != PASSPHRASE:
            raise _error("50105", "Invalid OK-ACCESS-PASSPHRASE.", 401)
        target = path + ("?" + query_string if query_string else "")
        payload = h.get("ok-access-timestamp", "") + method + target + raw.decode()
        expected = base64.b64encode(hmac.new(SECRET.encode(), payload.encode(),
                                             hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, h.get("ok-access-sign", "")):
            raise _error("50113", "Invalid Sign", 401)

    def _instruments(self, query) -> dict:
        if query.get("instType") != "SPOT":
            return {"code": "0", "msg": "", "data": []}
        data = [{
            "alias": "", "baseCcy": i.base, "category": "1", "ctMult": "", "ctType": "",
            "ctVal": "", "ctValCcy": "", "expTime": "", "instFamily": "", "instId": i.inst_id,
            "instType": "SPOT", "lever": "", "listTime": "1548133413000", "lotSz": str(i.lot),
            "maxIcebergSz": "9999999999", "maxLmtAmt": "20000000", "maxLmtSz": "9999999999",
            "maxMktAmt": "1000000", "maxMktSz": "1000000", "maxStopSz": "1000000",
            "maxTriggerSz": "9999999999", "maxTwapSz": "9999999999", "minSz": str(i.min_size),
            "optType": "", "quoteCcy": i.quote, "settleCcy": "", "state": "live", "stk": "",
            "tickSz": str(i.tick), "uly": "",
        } for i in self.instruments.values()]
        return {"code": "0", "msg": "", "data": data}

    def _place(self, entries: list[dict]) -> tuple[int, dict, bool]:
        now = str(int(time.time() * 1000))
        results, placed = [], 0
        with self._lock:
            for entry in entries:
                cl = str(entry.get("clOrdId") or "")
                try:
                    order = self._new_order(entry, cl, now)
                except _Reply as reply:
                    results.append({"clOrdId": cl, "ordId": "", "tag": entry.get("tag", ""),
                                    "ts": now, "sCode": reply.body["code"],
                                    "sMsg": reply.body["msg"]})
                    continue
                self.orders.append(order)
                placed += 1
                results.append({"clOrdId": cl, "ordId": order["ordId"], "tag": order["tag"],
                                "ts": now, "sCode": "0", "sMsg": "Order placed"})
            lose = placed > 0 and self.lose_answers > 0
            if lose:
                self.lose_answers -= 1
        code = "0" if placed == len(entries) else ("2" if placed else "1")
        msg = {"0": "", "1": "All operations failed", "2": "Bulk operation partially succeeded"}[code]
        return 200, {"code": code, "msg": msg, "data": results, "inTime": now, "outTime": now}, lose

    def _new_order(self, entry: dict, cl: str, now: str) -> dict:
        inst = self.instruments.get(entry.get("instId", ""))
        if inst is None:
            raise _error("51001", "Instrument ID does not exist.")
        if cl and not CLORDID_RE.match(cl):
            raise _error("51000", "Parameter clOrdId error")
        if cl and not self.allow_duplicate_ids and any(o["clOrdId"] == cl for o in self.orders):
            raise _error("51016", "Duplicated clOrdId")
        side, ord_type = entry.get("side"), entry.get("ordType")
        if side not in ("buy", "sell") or ord_type not in ("market", "limit"):
            raise _error("51000", "Parameter side or ordType error")
        try:
            size = Decimal(str(entry["sz"]))
            px = Decimal(str(entry["px"])) if ord_type == "limit" else None
        except (KeyError, ArithmeticError):
            raise _error("51000", "Parameter sz or px error") from None
        if size < inst.min_size:
            raise _error("51020", "Your order should meet or exceed the minimum order amount.")
        crosses = ord_type == "market" or (px >= inst.price if side == "buy" else px <= inst.price)
        order = {
            "accFillSz": "0", "avgPx": "", "cTime": now, "category": "normal", "ccy": "",
            "clOrdId": cl, "fee": "0", "feeCcy": inst.base if side == "buy" else inst.quote,
            "fillPx": "", "fillSz": "0", "fillTime": "", "instId": inst.inst_id,
            "instType": "SPOT", "lever": "", "ordId": str(next(self._ids)), "ordType": ord_type,
            "pnl": "0", "posSide": "net", "px": "" if px is None else str(px), "rebate": "0",
            "rebateCcy": inst.quote, "side": side, "state": "live", "sz": str(size),
            "tag": entry.get("tag", ""), "tdMode": entry.get("tdMode", "cash"),
            "tgtCcy": entry.get("tgtCcy", "base_ccy"), "tradeId": "", "uTime": now,
        }
        if crosses:
            fee = (size if side == "buy" else size * inst.price) * FEE_RATE
            order.update(accFillSz=str(size), avgPx=str(inst.price), fillPx=str(inst.price),
                         fillSz=str(size), fillTime=now, state="filled", fee=str(-fee),
                         tradeId=str(next(self._ids)))
        return order

    def _order(self, query) -> dict:
        inst_id = query.get("instId")
        if inst_id not in self.instruments:
            raise _error("51001", "Instrument ID does not exist.")
        ord_id, cl = query.get("ordId"), query.get("clOrdId")
        if not ord_id and not cl:
            raise _error("51000", "Parameter ordId or clOrdId error")
        with self._lock:
            match = [o for o in self.orders if o["instId"] == inst_id
                     and (not ord_id or o["ordId"] == ord_id) and (not cl or o["clOrdId"] == cl)]
        if not match:
            raise _error("51603", "Order does not exist")
        return {"code": "0", "msg": "", "data": [dict(match[-1])]}

    def _list(self, query, keep) -> dict:
        inst_id = query.get("instId")
        begin = int(query["begin"]) if query.get("begin") else None
        limit = min(int(query.get("limit") or 100), 100)
        with self._lock:
            rows = [dict(o) for o in self.orders if keep(o)
                    and (inst_id is None or o["instId"] == inst_id)
                    and (begin is None or int(o["cTime"]) >= begin)]
        return {"code": "0", "msg": "", "data": list(reversed(rows))[:limit]}   # newest first


class _Handler(BaseHTTPRequestHandler):
    stub: OkxStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:     # quiet
        pass

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, body, drop = self.stub.handle(method, parts.path, parts.query, raw,
                                              dict(self.headers.items()))
        if drop:                                    # executed, but the answer is lost
            self.close_connection = True
            return
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

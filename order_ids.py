"""Client order ids on any ccxt exchange: how to send one, how to find the order by it,
and whether that makes a retried order safe.

Why: a market order whose answer is lost may or may not have executed. Retrying it blindly
can buy twice. A client order id makes the retry safe only where the exchange takes the id
AND either refuses a second order with it or lets us look the first one up by it before
retrying. Each exchange spells the id differently (Binance ``newClientOrderId``, OKX
``clOrdId``, Bybit ``orderLinkId``, Kraken ``cl_ord_id``, ...); ccxt maps its unified
``clientOrderId`` param onto those names in most exchange classes, but not in all, and not
always in the lookup calls. So the table below says, per ccxt class, what the installed
ccxt (4.5.90, pinned in requirements.txt) actually does, with the file and line that shows
it (tests/test_order_ids.py checks every cited line still says so). Spot markets only.

    support = id_support(exchange)                  # what the exchange can do with an id
    cid = client_order_id(exchange, "tb", symbol, n)  # a valid, deterministic id
    exchange.create_order(symbol, "market", side, amount, None, create_params(exchange, cid))
    order = find_by_client_id(exchange, symbol, cid)   # ccxt order | None; raises if unsure
    may_retry_create(exchange)                       # False: never re-send after a lost answer

An exchange class that is not in the table, or a subclass that overrides any method the
table relies on, gets `UNSUPPORTED`: no id is sent (an unknown param may be rejected, or
ignored and then trusted), no lookup is claimed, and no retry is allowed.

Imports ccxt and domain only.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any


from domain import ExchangeError, OrderRejected

__all__ = [
    "Evidence", "Support", "UNSUPPORTED", "TABLE", "ClientIdLookupUnsupported",
    "DuplicateClientOrderId", "ClientIdMismatch", "id_support", "create_params",
    "find_by_client_id", "may_retry_create", "client_order_id",
]


# -------------------------------------------------------------------------------- errors

class ClientIdLookupUnsupported(ExchangeError):
    """This exchange cannot find an order by its client order id: its outcome stays unknown
    until a person (or a balance reconciliation) settles it."""


class DuplicateClientOrderId(ExchangeError):
    """More than one order on the exchange carries this client order id."""


class ClientIdMismatch(ExchangeError):
    """The exchange answered a lookup by client order id with an order of another id."""


# -------------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Evidence:
    """A line of the installed ccxt that shows a claim: ``ccxt/<file>:<line>`` contains
    ``needle``."""
    file: str
    line: int
    needle: str
    claim: str

    def __str__(self) -> str:
        return f"ccxt/{self.file}:{self.line} ({self.claim})"


@dataclass(frozen=True)
class Support:
    """What one exchange can do with a client order id (spot).

    Sending: `param` is the key to put in create_order's params (None: no id can be sent);
    `unified` tells whether that is ccxt's unified ``clientOrderId`` (ccxt renames it to
    `wire`) or the exchange's own name passed through raw because ccxt does not map it.
    An id must match `pattern`: `prefix` + 1..`max_length - len(prefix)` characters of
    `charset` (a regex character-class body), or, when `numeric`, a positive integer of at
    most `max_length` digits.

    Finding it again: `lookup` lists the ways, tried in order: "fetch_order" is
    ``fetch_order(None, symbol, {fetch_param: id})``; "list" calls each of `list_methods`
    ``(symbol, since, None, {list_param: id} or {})`` and keeps the orders whose unified
    ``clientOrderId`` equals the id (`list_param` narrows the query on the exchange; None
    means the filter is ours alone, so only the orders those calls return are searched).

    `duplicates`: what the exchange does with a second order of the same id: "rejected"
    (always), "rejected-while-open" (only while the first one rests on the book, which a
    market order never does), "not-checked", or "unknown".
    """
    name: str
    param: str | None = None
    wire: str | None = None
    unified: bool = False
    max_length: int = 36
    charset: str = "A-Za-z0-9_-"
    numeric: bool = False
    prefix: str = ""
    lookup: tuple[str, ...] = ()
    fetch_param: str | None = None
    list_methods: tuple[str, ...] = ()
    list_param: str | None = None
    duplicates: str = "unknown"
    constraints_from: str = ""
    notes: str = ""
    evidence: tuple[Evidence, ...] = ()
    relies_on: tuple[str, ...] = field(default=(), repr=False)
    verified: bool = True

    @property
    def can_send(self) -> bool:
        return self.param is not None

    @property
    def can_look_up(self) -> bool:
        return self.can_send and bool(self.lookup)

    @property
    def pattern(self) -> re.Pattern[str]:
        if self.numeric:
            return re.compile(rf"^[1-9][0-9]{{0,{self.max_length - 1}}}$")
        body = self.max_length - len(self.prefix)
        return re.compile(rf"^{re.escape(self.prefix)}[{self.charset}]{{1,{body}}}$")

    def valid(self, client_order_id: str) -> bool:
        return isinstance(client_order_id, str) and bool(self.pattern.match(client_order_id))


# Methods of a ccxt class whose code the table entry describes. A subclass that overrides
# any of them is not the verified code any more.
_RELIES_ON = ("create_order", "create_order_request", "create_spot_order",
              "create_spot_order_request", "create_uta_order", "create_uta_order_request",
              "order_request", "fetch_order", "fetch_spot_order", "fetch_uta_order",
              "fetch_open_orders", "fetch_closed_orders", "fetch_canceled_and_closed_orders",
              "fetch_orders", "fetch_orders_by_status", "sign", "handle_errors", "parse_order")

E = Evidence

TABLE: dict[str, Support] = {s.name: s for s in (
    Support(
        "binance", param="clientOrderId", wire="newClientOrderId", unified=True,
        max_length=36, charset=r".A-Z:/a-z0-9_-",
        lookup=("fetch_order",), fetch_param="clientOrderId",
        duplicates="rejected-while-open",
        constraints_from="Binance's -1100 message '^[\\.A-Z\\:/a-z0-9_-]{1,36}$' (mirrored by "
                         "sim_exchange._client_order_id)",
        notes="fetch_order by origClientOrderId; Binance stops finding CANCELED/EXPIRED "
              "orders without fills after a few days.",
        evidence=(
            E("binance.py", 7076, "clientOrderIdRequest = 'newClientOrderId'",
              "create_order_request: spot id goes out as newClientOrderId"),
            E("binance.py", 7089, "request[clientOrderIdRequest] = clientOrderId",
              "create_order_request: the unified clientOrderId is sent"),
            E("binance.py", 7392, "['origClientOrderId', 'clientOrderId', 'clientAlgoId']",
              "fetch_order reads the unified clientOrderId"),
            E("binance.py", 7399, "request['origClientOrderId'] = clientOrderId",
              "fetch_order: looked up as origClientOrderId"),
            E("binance.py", 2722, "'-2013': OrderNotFound",
              "'Order does not exist' -> OrderNotFound"),
        )),
    Support(
        "okx", param="clientOrderId", wire="clOrdId", unified=True,
        max_length=32, charset="A-Za-z0-9",
        lookup=("fetch_order",), fetch_param="clientOrderId",
        duplicates="unknown",
        constraints_from="OKX: 1-32 case-sensitive alphanumerics (ccxt okx.py:3113 'up to 32 "
                         "characters'); hyphens are refused ('Parameter clOrdId error')",
        notes="51016 'Duplicated clOrdId' is mapped to InvalidOrder; how long OKX remembers "
              "a finished order's clOrdId is not established here, so safety rests on the "
              "lookup, not on the rejection.",
        evidence=(
            E("okx.py", 3151, "clientOrderId = self.safe_string_2(params, 'clOrdId', 'clientOrderId')",
              "create_order_request reads the unified clientOrderId"),
            E("okx.py", 3385, "request['clOrdId'] = clientOrderId",
              "create_order_request: sent as clOrdId"),
            E("okx.py", 4299, "clientOrderId = self.safe_string_2(params, 'clOrdId', 'clientOrderId')",
              "fetch_order reads the unified clientOrderId"),
            E("okx.py", 4313, "request['clOrdId'] = clientOrderId",
              "fetch_order: looked up as clOrdId"),
            E("okx.py", 835, "'51016': InvalidOrder", "duplicate clOrdId -> InvalidOrder"),
            E("okx.py", 979, "'51603': OrderNotFound", "'Order does not exist' -> OrderNotFound"),
        )),
    Support(
        "bybit", param="clientOrderId", wire="orderLinkId", unified=True,
        max_length=36, charset="A-Za-z0-9_-",
        lookup=("list",), list_methods=("fetch_open_orders", "fetch_canceled_and_closed_orders"),
        list_param="orderLinkId", duplicates="unknown",
        constraints_from="ccxt bybit.py:4125 'unique client order id, max 36 characters'",
        notes="110072/170141 'duplicate' errors are mapped to InvalidOrder (scope not "
              "established here). fetch_order does not map clientOrderId (it sends orderId=id and needs "
              "params['acknowledged']), so the order is found in /v5/order/realtime and "
              "/v5/order/history, which take orderLinkId (ccxt passes it through).",
        evidence=(
            E("bybit.py", 4238, "clientOrderId = self.safe_string(query, 'clientOrderId')",
              "create_order_request reads the unified clientOrderId"),
            E("bybit.py", 4240, "request['orderLinkId'] = clientOrderId",
              "create_order_request: sent as orderLinkId"),
            E("bybit.py", 5039, "'orderId': id,", "fetch_order sends only orderId"),
            E("bybit.py", 5482, "self.privateGetV5OrderRealtime(self.extend(request, paramsOmitted))",
              "fetch_open_orders passes orderLinkId through"),
            E("bybit.py", 5318, "self.privateGetV5OrderHistory(self.extend(request, paramsOmitted2))",
              "fetch_canceled_and_closed_orders passes orderLinkId through"),
            E("bybit.py", 3930, "clientOrderId = self.safe_string(order, 'orderLinkId')",
              "parse_order: clientOrderId from orderLinkId"),
            E("bybit.py", 983, "'170141': InvalidOrder", "duplicate clientOrderId -> InvalidOrder"),
        )),
    Support(
        "kraken", param="clientOrderId", wire="cl_ord_id", unified=True,
        max_length=18, charset="A-Za-z0-9_-",
        lookup=("list",), list_methods=("fetch_open_orders", "fetch_closed_orders"),
        list_param="clientOrderId", duplicates="rejected-while-open",
        constraints_from="Kraken cl_ord_id: a UUID or free ASCII text of at most 18 "
                         "characters; unique among open orders only",
        notes="fetch_order maps clientOrderId to userref (an integer tag), not cl_ord_id, so "
              "it cannot find a cl_ord_id; fetch_open_orders / fetch_closed_orders map it to "
              "cl_ord_id. userref (int32) is the older, non-unique alternative, not used.",
        evidence=(
            E("kraken.py", 2075, "clientOrderId = self.safe_string(params, 'clientOrderId')",
              "order_request reads the unified clientOrderId"),
            E("kraken.py", 2078, "request['cl_ord_id'] = clientOrderId",
              "order_request: sent as cl_ord_id"),
            E("kraken.py", 2265, "request['userref'] = clientOrderId",
              "fetch_order: clientOrderId goes out as userref"),
            E("kraken.py", 2642, "request['cl_ord_id'] = clientOrderId",
              "fetch_open_orders: filtered by cl_ord_id"),
            E("kraken.py", 2721, "request['cl_ord_id'] = clientOrderId",
              "fetch_closed_orders: filtered by cl_ord_id"),
            E("kraken.py", 2011, "clientOrderId = self.safe_string(orderOmitted, 'cl_ord_id', userref)",
              "parse_order: clientOrderId from cl_ord_id"),
        )),
    Support(
        "kucoin", param="clientOrderId", wire="clientOid", unified=True,
        max_length=40, charset="A-Za-z0-9_-",
        lookup=("fetch_order",), fetch_param="clientOrderId", duplicates="unknown",
        constraints_from="KuCoin clientOid: at most 40 characters (letters, digits, _ and -)",
        notes="126044 'clientOid duplicate' is mapped to InvalidOrder (scope not established "
              "here). Classic and unified (UTA) accounts both map it; ccxt asks the account mode "
              "once (uta/v1/account/mode) unless options['uta'] is set.",
        evidence=(
            E("kucoin.py", 3998, "'clientOid': clientOrderId,",
              "create_spot_order_request: sent as clientOid"),
            E("kucoin.py", 4308, "'clientOid': clientOrderId,",
              "create_uta_order_request: sent as clientOid"),
            E("kucoin.py", 5640, "clientOrderId = self.safe_string_2(params, 'clientOrderId', 'clientOid')",
              "fetch_order accepts a clientOrderId without an id"),
            E("kucoin.py", 5703, "request['clientOid'] = clientOrderId",
              "fetch_spot_order: looked up by clientOid"),
            E("kucoin.py", 5832, "request['clientOid'] = clientOrderId",
              "fetch_uta_order: looked up by clientOid"),
            E("kucoin.py", 736, "'126044': InvalidOrder", "clientOid duplicate -> InvalidOrder"),
        )),
    Support(
        "coinbase", param="client_order_id", wire="client_order_id", unified=False,
        max_length=36, charset="A-Za-z0-9_-",
        lookup=("list",), list_methods=("fetch_orders",), list_param=None,
        duplicates="unknown",
        constraints_from="not documented here; kept to 36 of [A-Za-z0-9_-] (a UUID's size)",
        notes="ccxt drops the unified clientOrderId and sends its own 'ccxt-<uuid>'; the raw "
              "client_order_id param overrides it. fetch_order takes only the order id, so "
              "the order is found by listing (filtered by us: pass since_ms).",
        evidence=(
            E("coinbase.py", 2988, "'client_order_id': id + '-' + self.uuid(),",
              "create_order generates its own client_order_id"),
            E("coinbase.py", 3127, "'stop_direction', 'clientOrderId', 'postOnly'",
              "create_order omits the unified clientOrderId"),
            E("coinbase.py", 3134, "self.v3PrivatePostBrokerageOrders(self.extend(request, paramsOmitted))",
              "a raw client_order_id param overrides ccxt's"),
            E("coinbase.py", 3461, "'order_id': id,", "fetch_order takes only the order id"),
            E("coinbase.py", 3290, "'clientOrderId': self.safe_string(order, 'client_order_id'),",
              "parse_order: clientOrderId from client_order_id"),
        )),
    Support(
        "gate", param="clientOrderId", wire="text", unified=True,
        max_length=28, charset="A-Za-z0-9_.-", prefix="t-",
        lookup=("fetch_order", "list"), fetch_param="clientOrderId",
        list_methods=("fetch_open_orders", "fetch_closed_orders"), list_param=None,
        duplicates="unknown",
        constraints_from="ccxt gate.py:4546-4551: 't-' prefix, at most 28 characters, "
                         "0-9 A-Z a-z _ - .",
        notes="ccxt adds 't-' only when the id does not start with 't', so ids here always "
              "carry it. Gate finds an order by its text only for a while after it finished; "
              "the closed-orders listing is the fallback.",
        evidence=(
            E("gate.py", 4550, "if len(clientOrderId) > 28:", "create: at most 28 characters"),
            E("gate.py", 4554, "clientOrderId = 't-' + clientOrderId", "create: 't-' prefix"),
            E("gate.py", 4555, "request['text'] = clientOrderId", "create: sent as text"),
            E("gate.py", 5126, "orderId = clientOrderId", "fetch_order: looked up by text"),
            E("gate.py", 5085, "clientOrderId = self.safe_string(order, 'text')",
              "parse_order: clientOrderId from text"),
        )),
    Support(
        "bitget", param="clientOrderId", wire="clientOid", unified=True,
        max_length=32, charset="A-Za-z0-9_-",
        lookup=("fetch_order",), fetch_param="clientOrderId", duplicates="unknown",
        constraints_from="not documented here; kept to 32 of [A-Za-z0-9_-]",
        evidence=(
            E("bitget.py", 5788, "request['clientOid'] = clientOrderId",
              "create_order_request: sent as clientOid"),
            E("bitget.py", 6692, "clientOrderId = self.safe_string_2(params, 'clientOrderId', 'clientOid')",
              "fetch_order reads the unified clientOrderId"),
            E("bitget.py", 6694, "request['clientOid'] = clientOrderId",
              "fetch_order: looked up by clientOid"),
            E("bitget.py", 5439, "'clientOrderId': self.safe_string_2(order, 'clientOrderId', 'clientOid'),",
              "parse_order: clientOrderId from clientOid"),
        )),
    Support(
        "mexc", param="clientOrderId", wire="newClientOrderId", unified=True,
        max_length=32, charset="A-Za-z0-9_-",
        lookup=("fetch_order",), fetch_param="clientOrderId", duplicates="unknown",
        constraints_from="not documented here; kept to 32 of [A-Za-z0-9_-]",
        evidence=(
            E("mexc.py", 2371, "request['newClientOrderId'] = clientOrderId",
              "create_order (spot): sent as newClientOrderId"),
            E("mexc.py", 2659, "request['origClientOrderId'] = clientOrderId",
              "fetch_order (spot): looked up as origClientOrderId"),
            E("mexc.py", 3556, "'clientOrderId': self.safe_string(order, 'clientOrderId'),",
              "parse_order: clientOrderId"),
        )),
    Support(
        "htx", param="clientOrderId", wire="client-order-id", unified=True,
        max_length=64, charset="A-Za-z0-9_-",
        lookup=("fetch_order",), fetch_param="clientOrderId", duplicates="not-checked",
        constraints_from="ccxt htx.py:4859 'must be 64 chars max and unique within 24 hours'",
        notes="HTX stopped checking uniqueness in 2021 and finds a finished order by its "
              "client id for 2 hours only: look up soon after the lost answer.",
        evidence=(
            E("htx.py", 4865, "request['client-order-id'] = clientOrderId",
              "create (spot): sent as client-order-id"),
            E("htx.py", 3549, "self.spotPrivateGetV1OrderOrdersGetClientOrder(",
              "fetch_order (spot): GET /v1/order/orders/getClientOrder"),
            E("htx.py", 4695, "clientOrderId = self.safe_string_n(order, ['client_order_id'",
              "parse_order: clientOrderId"),
        )),
    Support(
        "bitfinex", param="clientOrderId", wire="cid", unified=True,
        max_length=13, numeric=True,
        lookup=("list",), list_methods=("fetch_open_orders", "fetch_closed_orders"),
        list_param=None, duplicates="not-checked",
        constraints_from="Bitfinex cid is an integer (int45): at most 13 digits here",
        notes="Numeric ids only: create_params sends an int. Found by listing (filtered by "
              "us: pass since_ms).",
        evidence=(
            E("bitfinex.py", 1728, "clientOrderId = self.safe_value_2(params, 'cid', 'clientOrderId')",
              "create_order_request reads the unified clientOrderId"),
            E("bitfinex.py", 1770, "request['cid'] = clientOrderId",
              "create_order_request: sent as cid"),
            E("bitfinex.py", 1666, "clientOrderId = self.safe_string(orderList, 2)",
              "parse_order: clientOrderId from the cid field"),
        )),
    Support(
        "bitflyer", param=None, lookup=(), duplicates="unknown",
        notes="create_order sends its own fields and passes params through unmapped: no "
              "client order id; fetch_order needs the exchange's id.",
        evidence=(
            E("bitflyer.py", 676, "result = self.privatePostSendchildorder(self.extend(request, params))",
              "create_order: params passed through, clientOrderId not mapped"),
        )),
)}

UNSUPPORTED = Support("unverified", param=None, verified=False,
                      notes="not in order_ids.TABLE (or a subclass that changes the verified "
                            "methods): no client order id is sent and no lookup is claimed")

# Client ids the bot still needs for its own records where the exchange takes none.
_DEFAULT_IDS = Support("default", param=None, max_length=36, charset="A-Za-z0-9._-")


def _table_class(cls: type) -> tuple[type, Support] | None:
    """(verified ccxt class, its entry) for `cls` or the nearest base class in the table."""
    import ccxt     # here: building ids for the backtest needs no exchange library

    for base in cls.__mro__:
        name = base.__name__
        if name in TABLE and base.__module__ == f"ccxt.{name}" and getattr(ccxt, name, None) is base:
            return base, TABLE[name]
    return None


def id_support(exchange: Any) -> Support:
    """What `exchange` (a ccxt instance or class) can do with a client order id.

    An entry of TABLE applies to its own ccxt class and to subclasses (binanceus, myokx, ...)
    that inherit every method the entry relies on unchanged; anything else is UNSUPPORTED.
    """
    if exchange is None:          # no exchange (the backtest): nothing to look up, no ccxt
        return UNSUPPORTED
    return _class_support(exchange if isinstance(exchange, type) else type(exchange))


@functools.lru_cache(maxsize=None)
def _class_support(cls: type) -> Support:
    found = _table_class(cls)
    if found is None:
        return UNSUPPORTED
    base, support = found
    changed = [m for m in _RELIES_ON if hasattr(base, m) and getattr(cls, m) is not getattr(base, m)]
    if changed:
        return replace(UNSUPPORTED, name=f"{support.name} (changed: {', '.join(changed)})")
    return replace(support, relies_on=tuple(m for m in _RELIES_ON if hasattr(base, m)))


# -------------------------------------------------------------------------------- use

def create_params(exchange: Any, client_order_id: str) -> dict:
    """create_order params that carry `client_order_id` to `exchange`: {} where it cannot.

    Raises domain.OrderRejected for an id the exchange would refuse (or mangle), before
    anything is sent.
    """
    support = id_support(exchange)
    if not support.can_send:
        return {}
    if not support.valid(client_order_id):
        raise OrderRejected(f"{getattr(exchange, 'id', support.name)}: client order id "
                            f"{client_order_id!r} is not valid there ({support.pattern.pattern})")
    return {support.param: int(client_order_id) if support.numeric else client_order_id}


def may_retry_create(exchange: Any) -> bool:
    """True only where the client order id makes re-sending an order safe: the id goes out,
    and the exchange either always refuses a second order with it or lets us look the first
    one up (find_by_client_id) before each retry. Otherwise an order whose answer was lost
    must not be sent again: its outcome stays unknown until the exchange shows it."""
    support = id_support(exchange)
    return support.can_send and (support.can_look_up or support.duplicates == "rejected")


def find_by_client_id(exchange: Any, symbol: str, client_order_id: str,
                      since_ms: int | None = None, *, support: Support | None = None) -> dict | None:
    """The ccxt order `client_order_id` named on `exchange`, or None when the exchange says
    there is none.

    Any failure to look (network, rate limit, authentication, a ccxt error) propagates as
    ccxt raised it, so a caller can run this inside ExchangeClient.with_retries and keep the
    order unresolved when it gives up. Raises ClientIdLookupUnsupported where no lookup
    exists, DuplicateClientOrderId when several orders carry the id, and ClientIdMismatch
    when the exchange answers with an order of another id. `since_ms` (when the order was
    sent, minus a margin) narrows listings; `support` overrides id_support (tests).
    """
    support = support or id_support(exchange)
    name = getattr(exchange, "id", support.name)
    if not support.can_look_up:
        raise ClientIdLookupUnsupported(
            f"{name}: cannot look an order up by its client order id ({support.notes or support.name}); "
            f"the outcome of order {client_order_id} on {symbol} is unknown")
    import ccxt

    wanted = str(client_order_id)
    for way in support.lookup:
        if way == "fetch_order":
            try:
                order = exchange.fetch_order(None, symbol, {support.fetch_param: client_order_id})
            except ccxt.OrderNotFound:
                continue
            if not order or order.get("id") is None:
                continue
            got = order.get("clientOrderId")
            if got is not None and str(got) != wanted:
                raise ClientIdMismatch(f"{name}: asked for client order id {wanted} on {symbol}, "
                                       f"got order {order.get('id')} with {got!r}")
            return order
        if way == "list":
            params = {support.list_param: client_order_id} if support.list_param else {}
            matches: dict[str, dict] = {}
            for method in support.list_methods:
                for order in getattr(exchange, method)(symbol, since_ms, None, dict(params)):
                    if str(order.get("clientOrderId")) == wanted:
                        matches.setdefault(str(order.get("id")), order)
            if len(matches) > 1:
                raise DuplicateClientOrderId(f"{name}: {len(matches)} orders on {symbol} carry "
                                             f"client order id {wanted}: {sorted(matches)}")
            if matches:
                return next(iter(matches.values()))
            continue
        raise ValueError(f"unknown lookup {way!r} for {support.name}")
    return None


# -------------------------------------------------------------------------------- ids

def _digest(text: str, size: int = 4) -> str:
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


@functools.lru_cache(maxsize=1024)
def _id_parts(charset: str, prefix: str, symbol: str) -> tuple[str, str, str]:
    """(prefix, symbol, separator) of an id, in the characters `charset` allows."""
    keep = _kept_chars(charset)
    clean = lambda s: "".join(c for c in s if c in keep)  # noqa: E731
    sep = "-" if "-" in keep else ("_" if "_" in keep else "")
    return clean(prefix)[:12], clean(symbol.replace("/", "")), sep


@functools.lru_cache(maxsize=64)
def _kept_chars(charset: str) -> str:
    """The characters of an id the bot builds that the exchange's charset allows."""
    allowed = re.compile(rf"[{charset}]")
    return "".join(c for c in ".ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
                   if allowed.match(c))


def client_order_id(exchange: Any, prefix: str, symbol: str, sequence: int) -> str:
    """A deterministic client order id valid on `exchange`.

    ``<prefix>-<BASEQUOTE>-<sequence>`` where it fits (the form the bot has always used
    on Binance), else ``<prefix>-<hash of symbol>-<seq>``,
    else ``<hash of prefix and symbol><seq>``; without separators where the exchange allows
    only alphanumerics (OKX), with the exchange's required prefix (Gate's "t-"), or as
    digits where it takes integers (Bitfinex). Exchanges that take no id still get one of
    the default form, for the bot's own records. ValueError when nothing fits.
    """
    sequence = int(sequence)
    if sequence < 0:
        raise ValueError(f"sequence must be >= 0, not {sequence}")
    support = id_support(exchange)
    if not support.can_send:
        support = _DEFAULT_IDS
    seq = str(sequence)
    if support.numeric:
        cid = "1" + f"{int(_digest(prefix + chr(0) + symbol, 3), 16) % 10_000:04d}" + seq
        if not support.valid(cid):
            raise ValueError(f"{support.name}: sequence {sequence} does not fit a "
                             f"{support.max_length}-digit client order id")
        return cid
    head, sym, sep = _id_parts(support.charset, prefix, symbol)
    candidates = []
    if sep:                       # without a separator prefix|symbol|sequence is ambiguous
        candidates.append((head, sym, seq))
    candidates.append((head, _digest(symbol), seq))
    for parts in candidates:
        cid = support.prefix + sep.join(p for p in parts if p)
        if support.valid(cid):
            return cid
    cid = support.prefix + _digest(prefix + chr(0) + symbol) + seq   # fixed-width hash: unambiguous
    if support.valid(cid):
        return cid
    raise ValueError(f"cannot build a {support.name} client order id from {prefix!r}, "
                     f"{symbol!r}, {sequence}")

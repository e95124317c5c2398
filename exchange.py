"""The exchange layer: building the ccxt client, retries, precision and limits, brokers.

`create_client(config)` gives an `ExchangeClient` for any ccxt exchange id; "simulated"
starts sim_exchange in-process on a free port and points an unmodified `ccxt.binance` at
it. Every ccxt call goes through `ExchangeClient.call`, which retries only errors a retry
can help with. `PaperBroker` (DRY_RUN) fills against the live order book with the
market's fees; `LiveBroker` sends real orders with client order ids so a retried order is
never placed twice.

Fill convention (both brokers): a buy spends `cost + fee` quote and adds `amount` base; a
sell removes `amount` base and adds `cost - fee` quote. `fee` is always in quote.
"""
from __future__ import annotations

import email.utils
import hashlib
import itertools
import logging
import math
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

import numpy as np

if TYPE_CHECKING:
    from sim_exchange import SimExchangeServer, SimMarket

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT_MS = 10_000
CLIENT_ORDER_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")


class ExchangeError(Exception):
    """An exchange failure a retry cannot fix (or retries ran out); the message is one line."""


class OrderRejected(ExchangeError):
    """An order refused locally (precision, limits, cash) or by the exchange."""


class OrderNotFound(ExchangeError):
    """The exchange does not know the order asked for."""


def _ccxt():
    import ccxt  # heavy: imported only when an exchange is actually used

    return ccxt


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.10g}"


# --------------------------------------------------------------------------------------
# rate limiting
# --------------------------------------------------------------------------------------
class RateLimiter:
    """Thread-safe stand-in for ccxt's sync throttle: each request reserves the next slot.

    ccxt's own sync `throttle` compares against one shared "last request" timestamp, so
    threads sharing an instance all pass at once. Here a request of cost c takes the next
    free slot under a lock and moves it on by rateLimit * c ms, so the budget holds across
    threads. `hold_off` pushes the next slot back (a 429's Retry-After pauses every thread).
    """

    def __init__(self, interval_ms: Callable[[], float]):
        self._interval_ms = interval_ms
        self._lock = threading.Lock()
        self._next = 0.0

    def throttle(self, cost: float | None = None) -> None:
        cost = 1.0 if cost is None else float(cost)
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval_ms() * cost / 1000.0
        if start > now:
            time.sleep(start - now)

    def hold_off(self, seconds: float) -> None:
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


# --------------------------------------------------------------------------------------
# error handling
# --------------------------------------------------------------------------------------
_BINANCE_MSG = re.compile(r'"code"\s*:\s*(-?\d+)\s*,\s*"msg"\s*:\s*"([^"]*)"')
_URL_QUERY = re.compile(r"(https?://[^\s?]+)\?\S*")
_HTML_TAG = re.compile(r"<[^>]*>")


def _retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if there is one."""
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class ExchangeClient:
    """One ccxt instance shared by all threads, with the retry policy and market helpers."""

    def __init__(self, exchange: Any, *, sim: "SimMarket | None" = None,
                 sim_server: "SimExchangeServer | None" = None, owns_server: bool = False,
                 quote: str = "USDT", attempts: int = 5, base_delay: float = 0.5,
                 max_delay: float = 30.0, max_retry_after: float = 120.0):
        self.ccxt = exchange
        self.quote = quote
        self.sim = sim
        self.sim_server = sim_server
        self.attempts = max(1, int(attempts))
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retry_after = max_retry_after
        self.limiter = RateLimiter(lambda: float(self.ccxt.rateLimit))
        self._owns_server = owns_server
        self._local = threading.local()
        self._markets_lock = threading.Lock()
        self._bursts: dict[tuple[str, str], int] = {}
        self._bursts_lock = threading.Lock()
        self._install_hooks()

    @property
    def id(self) -> str:
        return str(self.ccxt.id)

    def _install_hooks(self) -> None:
        """Thread-safe throttle, a connection pool for many threads, per-thread headers."""
        from requests.adapters import HTTPAdapter

        ex = self.ccxt
        ex.enableRateLimit = True
        ex.throttle = self.limiter.throttle
        for prefix in ("http://", "https://"):
            ex.session.mount(prefix, HTTPAdapter(pool_connections=4, pool_maxsize=64))
        original = ex.on_rest_response

        def on_rest_response(code, reason, url, method, headers, body, *rest):
            self._local.headers = headers  # last_response_headers is shared by all threads
            return original(code, reason, url, method, headers, body, *rest)

        ex.on_rest_response = on_rest_response

    # -- clock ------------------------------------------------------------------------
    def clock(self) -> float:
        """Market time in seconds: the simulated market's clock, else the wall clock."""
        return self.sim.now() if self.sim is not None else time.time()

    # -- the retry policy -------------------------------------------------------------
    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """ccxt `method(*args, **kwargs)` with the retry policy.

        create_* calls are retried only after errors that prove the request was refused
        (rate limits, stale timestamp): after a timeout the order may exist, so only a
        caller holding a client order id may retry (LiveBroker does).
        """
        fn = getattr(self.ccxt, method)
        return self.with_retries(method, lambda attempt: fn(*args, **kwargs),
                                 idempotent=not method.startswith("create_"))

    def with_retries(self, name: str, attempt: Callable[[int], T], *, idempotent: bool = True) -> T:
        """Run attempt(0), attempt(1), ... until one succeeds or an error is not retryable."""
        ccxt = _ccxt()
        i = 0
        while True:
            self._local.headers = None
            try:
                result = attempt(i)
            except ccxt.BaseError as exc:
                delay = self._after_failure(name, exc, i, idempotent)
                time.sleep(delay)
                i += 1
            else:
                self._end_burst(name, ok=True)
                return result

    def _after_failure(self, name: str, exc: Exception, attempt: int, idempotent: bool) -> float:
        """The delay before the next attempt, or raise the error translated to one line."""
        if not self._retryable(exc, idempotent):
            self._end_burst(name, ok=False)
            raise self._translate(name, exc) from exc
        if attempt + 1 >= self.attempts:
            self._end_burst(name, ok=False)
            raise ExchangeError(f"{self.id} {name}: gave up after {self.attempts} attempts: "
                                f"{self._describe(exc)}") from exc
        try:
            delay = self._backoff(name, exc, attempt)
        except ExchangeError:
            self._end_burst(name, ok=False)
            raise
        self._note_retry(name, exc, attempt, delay)
        return delay

    @staticmethod
    def _retryable(exc: Exception, idempotent: bool) -> bool:
        ccxt = _ccxt()
        refused = (ccxt.DDoSProtection, ccxt.RateLimitExceeded, ccxt.InvalidNonce)
        if isinstance(exc, refused):
            return True
        return idempotent and isinstance(exc, (ccxt.NetworkError, ccxt.BadResponse))

    def _backoff(self, name: str, exc: Exception, attempt: int) -> float:
        """Full-jitter capped exponential delay; at least Retry-After when the answer had one."""
        ccxt = _ccxt()
        delay = random.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** attempt))
        retry_after = _retry_after_seconds(getattr(self._local, "headers", None))
        if retry_after is not None:
            delay = max(delay, retry_after)
        if isinstance(exc, (ccxt.DDoSProtection, ccxt.RateLimitExceeded)):
            self.limiter.hold_off(delay)  # every thread sharing this client waits too
        if retry_after is not None and retry_after > self.max_retry_after:
            raise ExchangeError(f"{self.id} {name}: the exchange asks to wait {retry_after:.0f}s "
                                f"(Retry-After), more than the {self.max_retry_after:.0f}s allowed")
        if isinstance(exc, ccxt.InvalidNonce):
            try:
                self.ccxt.load_time_difference()
            except ccxt.BaseError as err:
                log.debug("reloading the time difference failed: %s", self._describe(err))
        return delay

    def _note_retry(self, name: str, exc: Exception, attempt: int, delay: float) -> None:
        """One WARNING per (method, error kind) burst; the rest of the burst at DEBUG."""
        key = (name, type(exc).__name__)
        with self._bursts_lock:
            first = self._bursts.get(key, 0) == 0
            self._bursts[key] = self._bursts.get(key, 0) + 1
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, "%s %s: %s; retrying in %.2fs (attempt %d of %d; further retries of this "
                "kind are logged at DEBUG)", self.id, name, self._describe(exc), delay, attempt + 2,
                self.attempts)

    def _end_burst(self, name: str, ok: bool) -> None:
        with self._bursts_lock:
            ended = {k: n for k, n in self._bursts.items() if k[0] == name}
            for k in ended:
                del self._bursts[k]
        if ended and ok:
            kinds = ", ".join(f"{n} x {k[1]}" for k, n in ended.items())
            log.info("%s %s recovered after retries (%s)", self.id, name, kinds)

    def _describe(self, exc: Exception) -> str:
        """One line naming the error kind and the exchange's reason; no URLs' queries, no keys."""
        text = str(exc)
        m = _BINANCE_MSG.search(text)
        detail = f"{m.group(2)} (code {m.group(1)})" if m else _HTML_TAG.sub(" ", _URL_QUERY.sub(r"\1", text))
        for secret in (getattr(self.ccxt, "apiKey", ""), getattr(self.ccxt, "secret", "")):
            if secret and len(secret) >= 4:
                detail = detail.replace(secret, "***")
        detail = " ".join(detail.split())
        if len(detail) > 240:
            detail = detail[:237] + "..."
        return f"{type(exc).__name__}: {detail}"

    def _translate(self, name: str, exc: Exception) -> ExchangeError:
        """The ccxt error as ExchangeError / OrderRejected / OrderNotFound with one clear line."""
        ccxt = _ccxt()
        what = f"{self.id} {name}"
        desc = self._describe(exc)
        if isinstance(exc, ccxt.AuthenticationError):
            return ExchangeError(f"{what}: authentication failed ({desc}); check API_KEY and "
                                 f"API_SECRET and the key's permissions")
        if isinstance(exc, ccxt.OrderNotFound):
            return OrderNotFound(f"{what}: {desc}")
        if isinstance(exc, ccxt.InsufficientFunds):
            return OrderRejected(f"{what}: insufficient funds ({desc})")
        if isinstance(exc, ccxt.InvalidOrder) or (name.startswith("create_") and isinstance(
                exc, (ccxt.BadRequest, ccxt.OperationRejected))):
            return OrderRejected(f"{what}: order refused ({desc})")
        if isinstance(exc, ccxt.BadSymbol):
            return ExchangeError(f"{what}: unknown symbol ({desc})")
        if isinstance(exc, (ccxt.NetworkError, ccxt.BadResponse)):  # not retried: create_*
            return ExchangeError(f"{what}: {desc}; the order may or may not have been placed")
        return ExchangeError(f"{what}: {desc}")

    # -- market data ------------------------------------------------------------------
    def load_markets(self, reload: bool = False) -> dict:
        """Markets by symbol, loaded once (thread-safe)."""
        with self._markets_lock:
            if reload or not self.ccxt.markets:
                self.call("load_markets", reload)
            return self.ccxt.markets

    def market(self, symbol: str) -> dict:
        markets = self.load_markets()
        if symbol not in markets:
            raise ExchangeError(f"{self.id}: unknown symbol {symbol}")
        return markets[symbol]

    def fetch_tickers(self, symbols: list[str] | None = None) -> dict:
        self.load_markets()
        return self.call("fetch_tickers", symbols)

    def fetch_ticker(self, symbol: str) -> dict:
        self.load_markets()
        return self.call("fetch_ticker", symbol)

    def fetch_ohlcv(self, symbol: str, timeframe: str = "1m", since: int | None = None,
                    limit: int | None = None) -> list[list]:
        self.load_markets()
        return self.call("fetch_ohlcv", symbol, timeframe, since, limit)

    def fetch_order_book(self, symbol: str, limit: int = 100) -> dict:
        self.load_markets()
        return self.call("fetch_order_book", symbol, limit)

    # -- precision and limits ---------------------------------------------------------
    def prepare_order(self, symbol: str, side: str, amount: float,
                      price: float) -> tuple[float, float]:
        """(amount, price) rounded to the market's step and tick; OrderRejected if off-limits."""
        market = self.market(symbol)
        if side not in ("buy", "sell"):
            raise OrderRejected(f"{symbol}: side {side!r} is neither buy nor sell")
        if not (amount > 0 and math.isfinite(amount)):
            raise OrderRejected(f"{symbol}: amount {_fmt(amount)} is not a positive number")
        if not (price is not None and price > 0 and math.isfinite(price)):
            raise OrderRejected(f"{symbol}: price {_fmt(price)} is not a positive number")
        limits = market.get("limits") or {}
        rounded = self._round_amount(symbol, amount)
        rprice = self._round_price(symbol, price)
        shown = _fmt(amount) if rounded == amount else f"{_fmt(amount)} (rounded {_fmt(rounded)})"
        lo, hi = _limit(limits, "amount")
        if rounded <= 0 or (lo is not None and rounded < lo):
            minimum = lo if lo is not None else (market.get("precision") or {}).get("amount")
            raise OrderRejected(f"{symbol}: amount {shown} below minimum {_fmt(minimum)}")
        if hi is not None and rounded > hi:
            raise OrderRejected(f"{symbol}: amount {shown} above maximum {_fmt(hi)}")
        lo, hi = _limit(limits, "price")
        if (lo is not None and rprice < lo) or (hi is not None and rprice > hi):
            raise OrderRejected(f"{symbol}: price {_fmt(rprice)} outside [{_fmt(lo)}, {_fmt(hi)}]")
        notional = rounded * rprice
        lo, hi = _limit(limits, "cost")
        if lo is not None and notional < lo:
            raise OrderRejected(f"{symbol}: notional {_fmt(notional)} below minimum {_fmt(lo)}")
        if hi is not None and notional > hi:
            raise OrderRejected(f"{symbol}: notional {_fmt(notional)} above maximum {_fmt(hi)}")
        return rounded, rprice

    def _round_amount(self, symbol: str, amount: float) -> float:
        ccxt = _ccxt()
        try:
            return float(self.ccxt.amount_to_precision(symbol, amount))  # TRUNCATE to the step
        except ccxt.InvalidOrder:  # rounds to zero
            return 0.0

    def _round_price(self, symbol: str, price: float) -> float:
        ccxt = _ccxt()
        try:
            return float(self.ccxt.price_to_precision(symbol, price))  # nearest tick
        except ccxt.InvalidOrder as exc:
            raise OrderRejected(f"{symbol}: price {_fmt(price)} below one tick") from exc

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Stop the in-process simulated exchange, if this client started it."""
        if self._owns_server and self.sim_server is not None:
            self.sim_server.stop()
            self._owns_server = False

    def __enter__(self) -> "ExchangeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _limit(limits: Mapping, key: str) -> tuple[float | None, float | None]:
    entry = limits.get(key) or {}
    lo, hi = entry.get("min"), entry.get("max")
    return (float(lo) if lo else None), (float(hi) if hi else None)


# --------------------------------------------------------------------------------------
# building clients
# --------------------------------------------------------------------------------------
def _ccxt_config(api_key: str, secret: str, timeout_ms: int) -> dict:
    config: dict[str, Any] = {"enableRateLimit": True, "timeout": int(timeout_ms),
                              "options": {"adjustForTimeDifference": True}}
    if api_key:
        config["apiKey"] = api_key
    if secret:
        config["secret"] = secret
    return config


def sim_client(server: "SimExchangeServer", market: "SimMarket", api_key: str, api_secret: str,
               *, owns_server: bool = False, timeout_ms: int = DEFAULT_TIMEOUT_MS,
               **retry: Any) -> ExchangeClient:
    """An ExchangeClient on an unmodified ccxt.binance pointed at a running SimExchangeServer."""
    from sim_exchange import ccxt_overrides

    overrides = ccxt_overrides(server.url)
    config = _ccxt_config(api_key, api_secret, timeout_ms)
    config["options"] = {**overrides.get("options", {}), **config["options"]}
    exchange = _ccxt().binance({**overrides, **config})
    return ExchangeClient(exchange, sim=market, sim_server=server, owns_server=owns_server,
                          quote=market.symbols[0].split("/")[1], **retry)


def create_client(config: Any, *, timeout_ms: int = DEFAULT_TIMEOUT_MS, **retry: Any) -> ExchangeClient:
    """The client for config.exchange; "simulated" starts an in-process sim on a free port.

    retry: attempts, base_delay, max_delay, max_retry_after (see ExchangeClient).
    """
    exchange_id = str(config.exchange).strip().lower()
    if exchange_id == "simulated":
        from sim_exchange import SimExchangeServer, SimMarket

        quote = config.quote_currency
        market = SimMarket(pairs=config.sim_pairs, seed=config.sim_seed, speed=config.sim_speed,
                           quote=quote)
        key, secret = secrets.token_hex(16), secrets.token_hex(32)  # per session, never shown
        server = SimExchangeServer(market, port=0, api_key=key, api_secret=secret,
                                   balances={quote: float(config.starting_balance)}).start()
        log.info("simulated exchange (%d pairs, seed %d, speed %gx) on %s", config.sim_pairs,
                 config.sim_seed, config.sim_speed, server.url)
        return sim_client(server, market, key, secret, owns_server=True, timeout_ms=timeout_ms,
                          **retry)
    cls = getattr(_ccxt(), exchange_id)  # config.check_exchange_id vetted the id
    exchange = cls(_ccxt_config(config.api_key, config.api_secret, timeout_ms))
    return ExchangeClient(exchange, quote=config.quote_currency, **retry)


def make_client_order_id(prefix: str, symbol: str, sequence: int) -> str:
    """Deterministic client order id valid on Binance ([.A-Z:/a-z0-9_-]{1,36})."""
    clean = lambda s: re.sub(r"[^.A-Za-z0-9_-]", "", s)  # noqa: E731
    head, sym, seq = clean(prefix)[:12], clean(symbol.replace("/", "")), str(int(sequence))
    cid = "-".join(p for p in (head, sym, seq) if p)
    if len(cid) > 36:
        digest = hashlib.blake2b(symbol.encode(), digest_size=4).hexdigest()
        cid = "-".join(p for p in (head, digest, seq) if p)
    if not CLIENT_ORDER_ID_RE.match(cid):
        raise ValueError(f"cannot build a client order id from {prefix!r}, {symbol!r}, {sequence}")
    return cid


# --------------------------------------------------------------------------------------
# fills and brokers
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fill:
    """An executed order. Buy: spent cost + fee quote, got amount base. Sell: the reverse."""
    symbol: str
    side: str
    amount: float
    price: float          # average fill price
    cost: float           # amount * price, in quote, fee excluded
    fee: float            # in quote
    timestamp_ms: int
    order_id: str
    client_order_id: str


@dataclass(frozen=True)
class LimitOrder:
    """A resting limit order placed through a broker."""
    symbol: str
    side: str
    amount: float
    price: float
    order_id: str
    client_order_id: str
    created_ms: int


def walk_book(levels: Any, amount: float) -> tuple[float, float]:
    """(average price, filled amount) taking `amount` from [price, qty] levels, best first.

    filled < amount means the book is too thin; the average is NaN when nothing fills.
    """
    book = np.asarray(levels, dtype=np.float64).reshape(-1, 2)
    if amount <= 0 or book.shape[0] == 0:
        return math.nan, 0.0
    qty = np.maximum(book[:, 1], 0.0)
    before = np.cumsum(qty) - qty
    take = np.clip(amount - before, 0.0, qty)
    taken = float(take.sum())
    if taken <= 0:
        return math.nan, 0.0
    filled = float(amount) if float(qty.sum()) >= amount else taken  # no float dust short
    return float(take @ book[:, 0]) / taken, filled


def _side_levels(book: Mapping, side: str) -> list:
    return book["asks"] if side == "buy" else book["bids"]


class PaperBroker:
    """DRY_RUN broker: fills against the live order book, charges the market's fees."""

    def __init__(self, client: ExchangeClient, cash: float, book_depth: int = 100):
        self.client = client
        self.cash = float(cash)
        self.book_depth = book_depth
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._open: dict[str, LimitOrder] = {}
        self._reserved: dict[str, float] = {}  # quote held back for open buy orders

    def _next_id(self) -> str:
        return f"paper-{next(self._ids)}"

    def market_order(self, symbol: str, side: str, amount: float, client_order_id: str) -> Fill:
        """Walk the book (so size costs slippage), charge the taker fee, move cash."""
        book = self.client.fetch_order_book(symbol, self.book_depth)
        levels = _side_levels(book, side) if side in ("buy", "sell") else []
        reference = float(levels[0][0]) if levels else math.nan
        if not levels:
            raise OrderRejected(f"{symbol}: the order book has no {side} side to fill against")
        amount, _ = self.client.prepare_order(symbol, side, amount, reference)
        price, filled = walk_book(levels, amount)
        if filled < amount:
            raise OrderRejected(f"{symbol}: order book too thin: {_fmt(filled)} of {_fmt(amount)} "
                                f"within {len(levels)} levels")
        cost = amount * price
        fee = cost * float(self.client.market(symbol).get("taker") or 0.0)
        self._settle(symbol, side, cost, fee)
        return Fill(symbol, side, amount, price, cost, fee, int(self.client.clock() * 1000),
                    self._next_id(), client_order_id)

    def _settle(self, symbol: str, side: str, cost: float, fee: float) -> None:
        with self._lock:
            if side == "buy":
                if self.cash < cost + fee:
                    raise OrderRejected(f"{symbol}: insufficient paper cash: need "
                                        f"{cost + fee:.2f}, have {self.cash:.2f}")
                self.cash -= cost + fee
            else:
                self.cash += cost - fee

    def limit_order(self, symbol: str, side: str, amount: float, price: float,
                    client_order_id: str) -> LimitOrder:
        """Rest a limit order; a buy reserves its cost plus the maker fee until filled."""
        amount, price = self.client.prepare_order(symbol, side, amount, price)
        maker = float(self.client.market(symbol).get("maker") or 0.0)
        order = LimitOrder(symbol, side, amount, price, self._next_id(), client_order_id,
                           int(self.client.clock() * 1000))
        with self._lock:
            if side == "buy":
                need = amount * price * (1.0 + maker)
                if self.cash < need:
                    raise OrderRejected(f"{symbol}: insufficient paper cash: need {need:.2f}, "
                                        f"have {self.cash:.2f}")
                self.cash -= need
                self._reserved[order.order_id] = need
            self._open[order.order_id] = order
        return order

    @property
    def open_orders(self) -> list[LimitOrder]:
        with self._lock:
            return list(self._open.values())

    def cancel_order(self, order_id: str) -> bool:
        """Cancel an open paper order (returns its reserved cash); False if it is not open."""
        with self._lock:
            if self._open.pop(order_id, None) is None:
                return False
            self.cash += self._reserved.pop(order_id, 0.0)
            return True

    def poll_limit_orders(self, prices: Mapping[str, float]) -> list[Fill]:
        """Fill the open orders the prices have crossed, at their limit price with the maker fee."""
        fills = []
        now_ms = int(self.client.clock() * 1000)
        with self._lock:
            for oid, o in list(self._open.items()):
                p = prices.get(o.symbol)
                if p is None or not (p < o.price if o.side == "buy" else p > o.price):
                    continue
                cost = o.amount * o.price
                fee = cost * float(self.client.market(o.symbol).get("maker") or 0.0)
                del self._open[oid]
                if o.side == "buy":
                    self.cash += self._reserved.pop(oid) - (cost + fee)
                else:
                    self.cash += cost - fee
                fills.append(Fill(o.symbol, o.side, o.amount, o.price, cost, fee, now_ms, oid,
                                  o.client_order_id))
        return fills


class LiveBroker:
    """Real orders through ccxt, each with a client order id so a retry never doubles it."""

    def __init__(self, client: ExchangeClient, quote: str | None = None):
        self.client = client
        self.quote = quote or client.quote
        self._lock = threading.Lock()
        self._open: dict[str, LimitOrder] = {}

    @property
    def cash(self) -> float:
        """Free quote balance on the exchange."""
        balance = self.client.call("fetch_balance")
        return float((balance.get("free") or {}).get(self.quote) or 0.0)

    def market_order(self, symbol: str, side: str, amount: float, client_order_id: str) -> Fill:
        book = self.client.fetch_order_book(symbol, 5)
        levels = _side_levels(book, side) if side in ("buy", "sell") else []
        reference = float(levels[0][0]) if levels else math.nan
        amount, _ = self.client.prepare_order(symbol, side, amount, reference)
        order = self._place(symbol, "market", side, amount, None, client_order_id)
        if order.get("status") != "closed" or not order.get("filled"):
            order = self.client.call("fetch_order", order["id"], symbol)
        if not order.get("filled"):
            raise OrderRejected(f"{symbol}: market order {client_order_id} filled nothing "
                                f"(status {order.get('status')})")
        return self._fill(order, symbol, side, client_order_id)

    def find_order(self, symbol: str, client_order_id: str) -> Fill | None:
        """The fill of an earlier order with this client order id; None if nothing filled."""
        try:
            order = self.client.call("fetch_order", None, symbol,
                                     {"origClientOrderId": client_order_id})
        except OrderNotFound:
            return None
        if not order.get("filled"):
            return None
        return self._fill(order, symbol, order["side"], client_order_id)

    def limit_order(self, symbol: str, side: str, amount: float, price: float,
                    client_order_id: str) -> LimitOrder:
        amount, price = self.client.prepare_order(symbol, side, amount, price)
        order = self._place(symbol, "limit", side, amount, price, client_order_id)
        placed = LimitOrder(symbol, side, amount, price, str(order["id"]), client_order_id,
                            int(order.get("timestamp") or self.client.clock() * 1000))
        with self._lock:
            self._open[placed.order_id] = placed
        return placed

    @property
    def open_orders(self) -> list[LimitOrder]:
        with self._lock:
            return list(self._open.values())

    def cancel_order(self, order_id: str) -> bool:
        with self._lock:
            order = self._open.get(order_id)
        if order is None:
            return False
        try:
            self.client.call("cancel_order", order_id, order.symbol)
        except OrderNotFound:
            return False
        with self._lock:
            self._open.pop(order_id, None)
        return True

    def poll_limit_orders(self, prices: Mapping[str, float] | None = None) -> list[Fill]:
        """Fills of open limit orders the exchange has closed (prices unused: it knows)."""
        fills = []
        for o in self.open_orders:
            order = self.client.call("fetch_order", o.order_id, o.symbol)
            if order.get("status") in ("closed", "canceled", "expired", "rejected"):
                with self._lock:
                    self._open.pop(o.order_id, None)
                if order.get("filled"):
                    fills.append(self._fill(order, o.symbol, o.side, o.client_order_id))
        return fills

    def _place(self, symbol: str, kind: str, side: str, amount: float, price: float | None,
               client_order_id: str) -> dict:
        """create_order, retried safely: before each retry, look the order up by its id."""
        if not CLIENT_ORDER_ID_RE.match(client_order_id):
            raise OrderRejected(f"{symbol}: client order id {client_order_id!r} is not valid")
        ex = self.client.ccxt
        ccxt = _ccxt()

        def attempt(i: int) -> dict:
            if i > 0:
                try:
                    found = ex.fetch_order(None, symbol, {"origClientOrderId": client_order_id})
                    log.info("%s: order %s had reached the exchange; not placing it again",
                             symbol, client_order_id)
                    return found
                except ccxt.OrderNotFound:
                    pass
            return ex.create_order(symbol, kind, side, amount, price,
                                   {"newClientOrderId": client_order_id})

        return self.client.with_retries("create_order", attempt, idempotent=True)

    def _fill(self, order: dict, symbol: str, side: str, client_order_id: str) -> Fill:
        market = self.client.market(symbol)
        filled = float(order.get("filled") or 0.0)
        cost = float(order.get("cost") or 0.0)
        price = float(order.get("average") or (cost / filled if filled else order.get("price") or 0))
        cost = cost or filled * price
        fees = [f for f in (order.get("fees") or [order.get("fee")]) if f and f.get("cost") is not None]
        if not fees:
            trades = self.client.call("fetch_my_trades", symbol, None, None,
                                      {"orderId": order["id"]})
            fees = [t["fee"] for t in trades if t.get("fee") and t["fee"].get("cost") is not None]
        fee_quote, fee_base = 0.0, 0.0
        for f in fees:
            amount = float(f["cost"])
            if f.get("currency") == market["base"]:
                fee_base += amount
                fee_quote += amount * price
            else:
                fee_quote += self._to_quote(amount, f.get("currency"), market)
        if side == "buy" and fee_base:  # the fee came out of the bought coin
            filled -= fee_base
            cost = filled * price
        return Fill(symbol, side, filled, price, cost, fee_quote,
                    int(order.get("lastTradeTimestamp") or order.get("timestamp") or
                        self.client.clock() * 1000), str(order["id"]), client_order_id)

    def _to_quote(self, amount: float, currency: str | None, market: Mapping) -> float:
        """A fee in quote (as is), or converted at the fee currency's last price (e.g. BNB)."""
        if not amount or currency in (None, market["quote"]):
            return amount
        try:
            return amount * float(self.client.fetch_ticker(f"{currency}/{market['quote']}")["last"])
        except (ExchangeError, TypeError, ValueError) as exc:
            log.warning("fee of %g %s not converted to %s (%s); counted as 0", amount, currency,
                        market["quote"], exc)
            return 0.0

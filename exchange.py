"""The exchange layer: the ccxt client with retries, the shared rate limit and market rules.

`create_client(config)` gives an `ExchangeClient` for any ccxt exchange id; "simulated"
starts sim_exchange in-process on a free port and points an unmodified `ccxt.binance` at
it. Every ccxt call goes through `ExchangeClient.call`, which retries only errors a retry
can help with. Orders are the brokers' job (brokers.py).
"""
from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import secrets
import threading
import time
import urllib.request
from collections import Counter
from typing import Any, Callable, Mapping, TypeVar

import ccxt
from requests.adapters import HTTPAdapter

from config import day_ms
from domain import ExchangeError, OrderNotFound, OrderRejected
import redaction
from market_rules import MarketRules
from sim_exchange import SimExchangeServer, ccxt_overrides
from sim_market import BOT_HISTORY_MINUTES, SimMarket

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT_MS = 10_000


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
        self.waited = 0.0      # seconds spent waiting for the rate limit, all threads

    def throttle(self, cost: float | None = None) -> None:
        cost = 1.0 if cost is None else float(cost)
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval_ms() * cost / 1000.0
            self.waited += max(0.0, start - now)
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


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter (AWS's recipe): uniform in [0, min(cap, base*2^n)]."""
    return (rng or random).uniform(0.0, min(cap, base * 2 ** attempt))


class ExchangeClient:
    """One ccxt instance shared by all threads, with the retry policy and market helpers."""

    def __init__(self, exchange: Any, *, sim: SimMarket | None = None,
                 sim_server: SimExchangeServer | None = None, owns_server: bool = False,
                 clock: Callable[[], float] | None = None,
                 quote: str = "USDT", attempts: int = 5, base_delay: float = 0.5,
                 max_delay: float = 30.0, max_retry_after: float = 120.0):
        self.ccxt = exchange
        # Market time in seconds: the simulated market's clock, else the wall clock.
        self.clock: Callable[[], float] = clock or (sim.now if sim is not None else time.time)
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
        # (method, "ok" | "error") -> calls answered so, for the metrics
        self.request_counts: Counter[tuple[str, str]] = Counter()
        self._rules: dict[str, MarketRules] = {}
        self._install_hooks()

    @property
    def id(self) -> str:
        return str(self.ccxt.id)

    def _install_hooks(self) -> None:
        """Thread-safe throttle, a connection pool for many threads, per-thread headers."""
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
        i = 0
        while True:
            self._local.headers = None
            try:
                result = attempt(i)
            except ccxt.BaseError as exc:
                self._count(name, "error")
                delay = self._after_failure(name, exc, i, idempotent)
                time.sleep(delay)
                i += 1
            else:
                self._count(name, "ok")
                self._end_burst(name, ok=True)
                return result

    def _count(self, name: str, outcome: str) -> None:
        with self._bursts_lock:
            self.request_counts[(name, outcome)] += 1

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
        refused = (ccxt.DDoSProtection, ccxt.RateLimitExceeded, ccxt.InvalidNonce)
        if isinstance(exc, refused):
            return True
        return idempotent and isinstance(exc, (ccxt.NetworkError, ccxt.BadResponse))

    def _backoff(self, name: str, exc: Exception, attempt: int) -> float:
        """Full-jitter capped exponential delay; at least Retry-After when the answer had one."""
        delay = full_jitter(attempt, self.base_delay, self.max_delay)
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
        detail = redaction.mask(detail, (getattr(self.ccxt, "apiKey", "") or "",
                                         getattr(self.ccxt, "secret", "") or ""))
        detail = " ".join(detail.split())
        if len(detail) > 240:
            detail = detail[:237] + "..."
        return f"{type(exc).__name__}: {detail}"

    def _translate(self, name: str, exc: Exception) -> ExchangeError:
        """The ccxt error as ExchangeError / OrderRejected / OrderNotFound with one clear line."""
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
    def rules(self, symbol: str) -> MarketRules:
        """The market's fees, precision and limits (markets never change while the bot runs)."""
        rules = self._rules.get(symbol)
        if rules is None:
            rules = MarketRules.from_ccxt(self.market(symbol), self.ccxt.precisionMode)
            self._rules[symbol] = rules
        return rules

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


def sim_client(server: SimExchangeServer, market: SimMarket, api_key: str, api_secret: str,
               *, owns_server: bool = False, timeout_ms: int = DEFAULT_TIMEOUT_MS,
               **retry: Any) -> ExchangeClient:
    """An ExchangeClient on an unmodified ccxt.binance pointed at a running SimExchangeServer."""
    overrides = ccxt_overrides(server.url)
    config = _ccxt_config(api_key, api_secret, timeout_ms)
    config["options"] = {**overrides.get("options", {}), **config["options"]}
    exchange = ccxt.binance({**overrides, **config})
    return ExchangeClient(exchange, sim=market, sim_server=server, owns_server=owns_server,
                          quote=market.symbols[0].split("/")[1], **retry)


def create_client(config: Any, *, timeout_ms: int = DEFAULT_TIMEOUT_MS, **retry: Any) -> ExchangeClient:
    """The client for config.exchange; "simulated" starts an in-process sim on a free port.

    retry: attempts, base_delay, max_delay, max_retry_after (see ExchangeClient).
    """
    exchange_id = str(config.exchange).strip().lower()
    if exchange_id == "simulated" and config.sim_url:
        overrides = ccxt_overrides(config.sim_url)
        settings = _ccxt_config(config.api_key or "sim-key", config.api_secret or "sim-secret",
                                timeout_ms)
        settings["options"] = {**overrides["options"], **settings["options"]}
        return ExchangeClient(ccxt.binance({**overrides, **settings}), quote=config.quote_currency,
                              clock=RemoteSimClock(config.sim_url, timeout_ms / 1000), **retry)
    if exchange_id == "simulated":
        quote = config.quote_currency
        market = SimMarket(pairs=config.sim_pairs, seed=config.sim_seed, speed=config.sim_speed,
                           quote=quote, history_minutes=BOT_HISTORY_MINUTES,
                           start_ms=day_ms(config.sim_start))
        key, secret = secrets.token_hex(16), secrets.token_hex(32)  # per session, never shown
        server = SimExchangeServer(market, port=0, api_key=key, api_secret=secret,
                                   balances={quote: float(config.starting_balance)}).start()
        log.info("simulated exchange (%d pairs, seed %d, speed %gx) on %s", config.sim_pairs,
                 config.sim_seed, config.sim_speed, server.url)
        return sim_client(server, market, key, secret, owns_server=True, timeout_ms=timeout_ms,
                          **retry)
    cls = getattr(ccxt, exchange_id)  # config.check_exchange_id vetted the id
    exchange = cls(_ccxt_config(config.api_key, config.api_secret, timeout_ms))
    return ExchangeClient(exchange, quote=config.quote_currency, **retry)


def stream_factory(client: ExchangeClient, config: Any) -> tuple[Callable[[], Any], str] | None:
    """A builder of ccxt.pro exchanges set up like the client's REST one (same keys, the
    loaded markets, the clock offset; on the simulator its stream URL), and that URL; None
    when ccxt.pro has no candle and best bid/ask streams for the exchange."""
    import ccxt.pro   # only when streaming

    cls = getattr(ccxt.pro, client.id, None)
    has = cls().has if cls is not None else {}
    if not (has.get("watchOHLCVForSymbols") and has.get("watchBidsAsks")):
        return None
    rest = client.ccxt
    settings: dict[str, Any] = {"enableRateLimit": True, "options": {"defaultType": "spot"}}
    url = ""
    if config.is_simulated:
        server = client.sim_server
        base = server.url if server is not None else config.sim_url
        url = server.stream_url if server is not None else sim_stream_url(config.sim_url)
        if not url:
            return None
        overrides = ccxt_overrides(base, url)
        settings = {**overrides, **settings, "options": {**overrides["options"], "defaultType": "spot"}}
    for name in ("apiKey", "secret"):
        if getattr(rest, name, None):
            settings[name] = getattr(rest, name)

    def make() -> Any:
        exchange = cls(settings)
        exchange.set_markets(client.load_markets(), rest.currencies)
        exchange.options["timeDifference"] = rest.options.get("timeDifference", 0)
        return exchange

    return make, url or f"{client.id}'s streams"


def sim_stream_url(sim_url: str, timeout: float = 10.0) -> str:
    """The stream URL a simulated exchange in another process announces ("" if none)."""
    try:
        with urllib.request.urlopen(sim_url.rstrip("/") + "/api/v3/sim/clock", timeout=timeout) as r:
            return str(json.loads(r.read()).get("streamUrl") or "")
    except (OSError, ValueError):
        return ""


class RemoteSimClock:
    """The market clock of a simulated exchange in another process: read from its
    /api/v3/sim/clock, then run on at the market's speed (a market whose clock stands
    still, speed 0, moves only when told to: then every reading asks it)."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout = url.rstrip("/") + "/api/v3/sim/clock", timeout
        self._sync()

    def _sync(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as r:
                answer = json.loads(r.read())
        except (OSError, ValueError) as exc:
            raise ExchangeError(f"no simulated exchange answers at SIM_URL={self.url[:-17]} "
                                f"({exc}); start one with `python sim_exchange.py` or fix "
                                "SIM_URL") from exc
        self.speed = float(answer["speed"])
        self._market0, self._wall0 = answer["marketTime"] / 1000.0, time.monotonic()

    def __call__(self) -> float:
        if self.speed == 0:
            self._sync()
        return self._market0 + (time.monotonic() - self._wall0) * self.speed

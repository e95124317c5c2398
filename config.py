"""One frozen Config read from the environment and .env, with account-size presets.

Precedence, highest first: explicit environment variables, the .env file (read with
python-dotenv's dotenv_values; os.environ is never modified), the ACCOUNT_SIZE preset,
the built-in default. Every value is validated; a bad one raises ConfigError whose
message is one line naming the variable, the value (secrets hidden) and what is allowed.

Durations marked "market" are in market seconds: on a real exchange that is the wall
clock, on the simulated exchange a clock running SIM_SPEED times faster.

Values are strict: numbers are plain ASCII decimals (no underscores, hex, unicode digits,
leading "+", nan or inf) within finite bounds, booleans are true or false, lists have no
empty or repeated items, URLs carry no credentials. Leading and trailing whitespace is
ignored, as in .env files. DATA_DIR must be a directory the bot can create and write to.
`check_pairs` checks PAIR_ALLOWLIST against the exchange's markets once they are loaded.

Imports only the standard library and python-dotenv, so the CLI starts fast.
"""
from __future__ import annotations

import difflib
import io
import logging
import math
import os
import re
import tempfile
from datetime import datetime, timezone
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from performance_monitor import parse_thresholds

logger = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting the user must fix; str() is one line naming the variable and what is allowed."""

    def __init__(self, message: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class _Invalid(ValueError):
    """Raised by a parser with what is wrong; the loader adds name, value and allowed."""


class Var(NamedTuple):
    """One configuration variable: env name, default, parser of the raw text, allowed values."""

    name: str
    default: Any
    parse: Callable[[str], Any]
    allowed: str
    secret: bool = False


# --- parsers: each factory returns (parse, allowed) ----------------------------------

def _num(x: float) -> str:
    """A number as a user would write it: 300 rather than 300.0, 0.00000001 rather than 1e-08."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    if 1e-9 <= abs(x) < 1e15:
        return format(Decimal(repr(x)), "f")
    return repr(x)


# Plain ASCII decimals only: Python's int() and float() also take "1_0", "+5", "٥", "１０",
# " 5", "nan" and "inf", none of which a setting should be.
_WHOLE_TEXT = re.compile(r"-?[0-9]+", re.ASCII)
_REAL_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,4})?", re.ASCII)
_NOT_FINITE = re.compile(r"[-+]?(?:nan|inf|infinity)", re.IGNORECASE)


def _number_problem(raw: str, whole: bool) -> str:
    """Why `raw` is not a plain decimal number (whole or real), for the error message."""
    what = "a whole number" if whole else "a number"
    if not raw:
        return "is empty"
    if _NOT_FINITE.fullmatch(raw):
        return "is not a finite number"
    if "_" in raw:
        return f"is not {what}: no underscores"
    if raw.startswith("+"):
        return f"is not {what}: no '+' sign"
    if not raw.isascii():
        return f"is not {what}: ASCII digits 0-9 only"
    if whole and _REAL_TEXT.fullmatch(raw):
        return "is not a whole number"
    return f"is not {what}"


def parse_whole(raw: str, lo: int, hi: int) -> int:
    """Strict whole number in lo..hi; ValueError saying what is wrong ("is out of range")."""
    if not _WHOLE_TEXT.fullmatch(raw):
        raise _Invalid(_number_problem(raw, whole=True))
    value = int(raw)
    if not lo <= value <= hi:
        raise _Invalid("is out of range")
    return value


def parse_real(raw: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
    """Strict finite decimal in lo..hi (lo excluded with open_lo); ValueError saying why not."""
    if not _REAL_TEXT.fullmatch(raw):
        raise _Invalid(_number_problem(raw, whole=False))
    value = float(raw) + 0.0          # + 0.0 turns -0.0 into 0.0
    if not math.isfinite(value):
        raise _Invalid("is not a finite number")
    if value < lo or (open_lo and value <= lo) or value > hi:
        raise _Invalid("is out of range")
    return value


def whole_range(lo: int, hi: int) -> str:
    return f"{lo}..{hi}"


def real_range(lo: float, hi: float, open_lo: bool = False) -> str:
    return f"{_num(lo)} < x <= {_num(hi)}" if open_lo else f"{_num(lo)}..{_num(hi)}"


def _explained(bounds: str, unit: str, why: str) -> str:
    return bounds + (f" {unit}" if unit else "") + (f": {why}" if why else "")


def _whole(lo: int, hi: int, unit: str = "", why: str = "") -> tuple[Callable[[str], int], str]:
    return (lambda raw: parse_whole(raw, lo, hi)), _explained(whole_range(lo, hi), unit, why)


def _real(lo: float, hi: float, *, open_lo: bool = False, unit: str = "", why: str = ""
          ) -> tuple[Callable[[str], float], str]:
    return ((lambda raw: parse_real(raw, lo, hi, open_lo=open_lo)),
            _explained(real_range(lo, hi, open_lo), unit, why))


_TRUE, _FALSE = "true", "false"


def _boolean() -> tuple[Callable[[str], bool], str]:
    def parse(raw: str) -> bool:
        if raw.lower() == _TRUE:
            return True
        if raw.lower() == _FALSE:
            return False
        raise _Invalid("is empty" if not raw else "is not a boolean")
    return parse, "true or false"


def _choice(options: tuple[str, ...], normalize: Callable[[str], str] = str.lower
            ) -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if not raw:
            raise _Invalid("is empty")
        if not raw.isascii() or normalize(raw) not in options:
            raise _Invalid("is not supported")
        return normalize(raw)
    return parse, ", ".join(options)


def _pattern(regex: str, problem: str, allowed: str,
             normalize: Callable[[str], str] = str.upper) -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if not raw:
            raise _Invalid("is empty")
        if not raw.isascii() or not re.fullmatch(regex, normalize(raw)):
            raise _Invalid(problem)
        return normalize(raw)
    return parse, allowed


def _has_control(raw: str) -> bool:
    return any(not c.isprintable() for c in raw)


def _text(allowed: str, max_length: int = 200) -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if _has_control(raw):
            raise _Invalid("contains a control character")
        if len(raw) > max_length:
            raise _Invalid(f"is longer than {max_length} characters")
        return raw
    return parse, allowed


def _secret(what: str) -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in raw):
            raise _Invalid("contains spaces or control characters")
        if not raw.isascii():
            raise _Invalid("contains characters that are not ASCII")
        if len(raw) > 4096:
            raise _Invalid("is longer than 4096 characters")
        return raw
    return parse, f"{what}, exactly as issued (printable ASCII, no spaces)"


def _token() -> tuple[Callable[[str], str], str]:
    check, _ = _secret("")

    def parse(raw: str) -> str:
        check(raw)
        if raw and len(raw) < 16:
            raise _Invalid("is shorter than 16 characters: anyone could guess it")
        return raw
    return parse, ("16 or more printable ASCII characters without spaces, e.g. from "
                   "python -c 'import secrets; print(secrets.token_urlsafe(32))'; empty: none")


def _host() -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.\-]{1,253}|[0-9A-Fa-f:]{2,39}", raw, re.ASCII):
            raise _Invalid("is not a host name or IP address")
        return raw
    return parse, "a host name or IP address to listen on, e.g. 127.0.0.1 (this machine only)"


LOOPBACK = ("127.0.0.1", "::1", "localhost")


_SYMBOL = re.compile(r"[A-Z0-9]{1,20}/[A-Z0-9]{1,20}", re.ASCII)
MAX_LIST_ITEMS = 1000


def split_list(raw: str, separator: str = ",") -> list[str]:
    """Items of a separated list, stripped; ValueError on an empty item (a stray separator)."""
    if not raw.strip():
        return []
    items = [item.strip() for item in raw.split(separator)]
    if "" in items:
        raise _Invalid(f"has an empty item: a {separator!r} with nothing before or after it")
    return items


def parse_symbols(raw: str) -> tuple[str, ...]:
    """'btc/usdt, ETH/USDT' -> ('BTC/USDT', 'ETH/USDT'); ValueError on an empty, malformed
    or repeated symbol."""
    symbols = split_list(raw)
    if len(symbols) > MAX_LIST_ITEMS:
        raise _Invalid(f"has {len(symbols)} symbols, more than {MAX_LIST_ITEMS}")
    seen: set[str] = set()
    for text in symbols:
        symbol = text.upper() if text.isascii() else text
        if not _SYMBOL.fullmatch(symbol):
            raise _Invalid(f"has {text[:40]!r}, which is not a BASE/QUOTE symbol")
        if symbol in seen:
            raise _Invalid(f"lists {symbol} twice")
        seen.add(symbol)
    return tuple(s.upper() for s in symbols)


def _roi() -> tuple[Callable[[str], str], str]:
    """MINIMAL_ROI: 'minutes:return' pairs, e.g. 0:0.04,30:0.02,60:0.01 (empty: none)."""
    def parse(raw: str) -> str:
        for part in filter(None, (p.strip() for p in raw.split(","))):
            minutes, sep, ret = part.partition(":")
            try:
                ok = sep and int(minutes) >= 0 and -1 < float(ret) < 100
            except ValueError:
                ok = False
            if not ok:
                raise _Invalid(f"has {part!r}, not minutes:return")
        return raw.replace(" ", "")
    return parse, "minutes:return pairs, e.g. 0:0.04,30:0.02,60:0.01 (empty: no table)"


def _strategy() -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        raw = raw.strip()
        if re.fullmatch(r"[a-z][a-z0-9_]*", raw) or re.fullmatch(r".+\.py:[A-Za-z_]\w*", raw):
            return raw
        raise _Invalid("is neither a strategy name nor path/to/file.py:ClassName")
    return parse, ("a built-in name (python bot.py strategies lists them) or "
                   "path/to/file.py:ClassName")


def _symbols() -> tuple[Callable[[str], tuple[str, ...]], str]:
    return parse_symbols, ("comma-separated BASE/QUOTE symbols, each once, e.g. "
                           "BTC/USDT,ETH/USDT; empty for none")


def parse_correlation_groups(text: str) -> dict[str, tuple[str, ...]]:
    """Parse "group:BASE,BASE;group2:BASE" into {group: (BASE, ...)}; raises ValueError."""
    groups: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for part in split_list(text, ";"):
        name, sep, members = (s.strip() for s in part.partition(":"))
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name, re.ASCII) or not members:
            raise ValueError(f"has {part[:40]!r}, which is not group:BASE,BASE")
        bases = tuple(b.upper() for b in split_list(members))
        if name in groups:
            raise ValueError(f"names group {name!r} twice")
        for base in bases:
            if not re.fullmatch(r"[A-Z0-9]{1,20}", base, re.ASCII):
                raise ValueError(f"has {base[:40]!r}, which is not a base currency")
            if base in owner and owner[base] == name:
                raise ValueError(f"lists {base} twice in {name!r}")
            if base in owner:
                raise ValueError(f"puts {base} in both {owner[base]!r} and {name!r}")
            owner[base] = name
        groups[name] = bases
    return groups


def _thresholds() -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        try:
            parse_thresholds(raw)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        return raw.replace(" ", "")
    return parse, ("operation=seconds[:critical seconds] pairs, e.g. train_model=120,"
                   "execute_trade=10:30 (a name before ':' or '[' covers its family); "
                   "empty: SLOW_OPERATION_THRESHOLD for all")


def _groups() -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        try:
            parse_correlation_groups(raw)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        return raw
    return parse, ('"group:BASE,BASE;group2:BASE", each base in one group once, e.g. '
                   'majors:BTC,ETH;memes:DOGE,SHIB; empty for the built-in groups')


def _redact_url(url: str) -> str:
    """The URL with any user:password@ part replaced by ****@."""
    scheme, at, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if at and "@" in netloc:
        return f"{scheme}://****@{netloc.rsplit('@', 1)[1]}{slash}{path}"
    return url


SCHEDULER_ADDRESS = re.compile(r"(tcp|tls)://[A-Za-z0-9.\-\[\]:]+:([0-9]{1,5})", re.ASCII)


def is_scheduler_address(raw: str) -> bool:
    """A Dask scheduler address: tcp://HOST:PORT or tls://HOST:PORT, the port 1..65535."""
    m = SCHEDULER_ADDRESS.fullmatch(raw)
    return m is not None and 0 < int(m.group(2)) < 65536


def _scheduler() -> tuple[Callable[[str], str], str]:
    """DASK_SCHEDULER_ADDRESS: a scheduler address, or empty for none."""
    def parse(raw: str) -> str:
        if raw and not is_scheduler_address(raw):
            raise _Invalid("is not a scheduler address")
        return raw
    return parse, "tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786), or empty for local processes"


def _url(example: str, credentials_hint: str, query: bool = False
         ) -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if not raw:
            return raw
        if any(c.isspace() or not c.isprintable() for c in raw):
            raise _Invalid("contains spaces or control characters")
        if not raw.isascii():
            raise _Invalid("is not ASCII: write an international host name in punycode")
        if len(raw) > 2000:
            raise _Invalid("is longer than 2000 characters")
        try:
            parts = urlsplit(raw)
            port = parts.port      # raises ValueError on a bad port
        except ValueError:
            raise _Invalid("is not an http(s) URL: bad host or port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Invalid("is not an http(s) URL")
        if "@" in parts.netloc:
            raise _Invalid(f"has a user name or password in it: {credentials_hint}")
        if port == 0:
            raise _Invalid("has port 0")
        if parts.fragment or raw.endswith("#"):
            raise _Invalid("has a #fragment")
        if not query and (parts.query or raw.endswith("?")):
            raise _Invalid("has a ?query")
        return raw
    kept_out = "credentials or fragment" if query else "credentials, query or fragment"
    return parse, f"an http(s) URL without {kept_out}, e.g. {example}"


NOTIFY_KINDS = ("entry", "exit", "protection", "kill_switch", "error", "daily_summary")


def _kinds(options: tuple[str, ...]) -> tuple[Callable[[str], tuple[str, ...]], str]:
    def parse(raw: str) -> tuple[str, ...]:
        items = [i.lower() for i in split_list(raw)]
        if not items:
            raise _Invalid("is empty (list at least one kind; to send nothing, leave "
                           "NOTIFY_WEBHOOK_URL and TELEGRAM_TOKEN unset)")
        for item in items:
            if item not in options:
                raise _Invalid(f"has {item[:40]!r}, which is not a notification kind")
        if len(set(items)) != len(items):
            raise _Invalid("lists a kind twice")
        return tuple(items)
    return parse, "comma-separated kinds, each once, from " + ", ".join(options)


def _chat_id() -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if raw and not re.fullmatch(r"-?[0-9]{1,20}|@[A-Za-z0-9_]{5,32}", raw, re.ASCII):
            raise _Invalid("is not a chat id")
        return raw
    return parse, ("a numeric chat id (e.g. 123456789, or -100... for a group) or "
                   "@channelname; empty for none")


def day_ms(text: str) -> int | None:
    """A UTC day YYYY-MM-DD -> its 00:00 in ms since the epoch; empty: None."""
    if not text:
        return None
    return int(datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)


def _day() -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        try:
            ms = day_ms(raw)
        except ValueError:
            raise _Invalid("is not a day YYYY-MM-DD") from None
        if ms is not None and not 2000 <= datetime.fromtimestamp(ms / 1000, timezone.utc).year <= 2100:
            raise _Invalid("is not between 2000 and 2100")
        return raw
    return parse, "a UTC day YYYY-MM-DD (empty: now)"


def _directory() -> tuple[Callable[[str], Path], str]:
    def parse(raw: str) -> Path:
        if not raw:
            raise _Invalid("is empty")
        if _has_control(raw):
            raise _Invalid("contains a control character")
        return Path(raw).expanduser()
    return parse, DATA_DIR_ALLOWED


DATA_DIR_ALLOWED = "a directory the bot can create and write to"
DAY = 86_400


TIMEFRAMES: Mapping[str, int] = MappingProxyType({
    "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200,
    "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400})

_SECRET = True
_PRESET = None  # default of a preset variable: always comes from PRESETS

VARIABLES: tuple[Var, ...] = (
    Var("ACCOUNT_SIZE", "medium", *_choice(("small", "medium", "large"))),
    Var("EXCHANGE", "simulated", *_pattern(
        r"[a-z][a-z0-9_]{0,49}", "is not an exchange id",
        "simulated or a ccxt exchange id such as binance, kraken, okx", str.lower)),
    Var("API_KEY", "", *_secret("your exchange API key"), _SECRET),
    Var("API_SECRET", "", *_secret("your exchange API secret"), _SECRET),
    Var("DRY_RUN", True, *_boolean()),
    Var("STARTING_BALANCE", _PRESET, *_real(
        0, 1e12, open_lo=True, why="above 10^12, float64 no longer keeps cents exact")),
    Var("QUOTE_CURRENCY", "USDT", *_pattern(
        r"[A-Z]{2,10}", "is not a currency code", "2 to 10 letters, e.g. USDT")),
    Var("MAX_PAIRS", 50, *_whole(1, 500)),
    Var("PAIR_ALLOWLIST", (), *_symbols()),
    Var("PAIR_DENYLIST", (), *_symbols()),
    Var("TIMEFRAME", "5m", *_choice(tuple(TIMEFRAMES), normalize=str)),
    Var("CANDLE_HISTORY", 1000, *_whole(100, 1000)),
    Var("CHECK_INTERVAL", _PRESET, *_real(
        1, DAY, unit="market seconds", why="at most a day, the longest timeframe")),
    Var("MARKET_SCAN_CACHE_DURATION", _PRESET, *_real(
        0, DAY, unit="market seconds (0: no cache)", why="at most a day, the longest timeframe")),
    Var("MAX_PARALLEL_WORKERS", _PRESET, *_whole(1, 64)),
    Var("SCAN_TIMEOUT", 30.0, *_real(
        0.1, 600, unit="wall seconds", why="a longer wait would stall a cycle for over ten minutes")),
    Var("RISK_PER_TRADE", _PRESET, *_real(0, 0.1, open_lo=True)),
    Var("MAX_OPEN_POSITIONS", _PRESET, *_whole(1, 100)),
    Var("MAX_POSITION_SIZE", _PRESET, *_real(0, 1, open_lo=True)),
    Var("MAX_POSITIONS_PER_GROUP", 2, *_whole(
        1, 100, why="MAX_OPEN_POSITIONS is at most 100")),
    Var("CORRELATION_GROUPS", "", *_groups()),
    Var("MAX_DRAWDOWN", 0.25, *_real(0, 1, open_lo=True)),
    Var("STOP_LOSS_ATR", 4.0, *_real(
        0, 100, open_lo=True, why="a stop further than 100 ATRs away never triggers")),
    Var("STOP_LOSS_PCT", 0.0, *_real(0, 0.5, why="a stop more than 50 % away is no stop")),
    Var("TAKE_PROFIT_ATR", 0.0, *_real(
        0, 100, why="a target further than 100 ATRs away is never reached")),
    Var("TAKE_PROFIT_PCT", 0.0, *_real(0, 10)),
    Var("MINIMAL_ROI", "", *_roi()),
    Var("TRAILING_STOP", 0.0, *_real(0, 0.5, why="a stop trailing more than 50 % is no stop")),
    Var("TRAILING_OFFSET", 0.0, *_real(0, 10)),
    Var("BREAKEVEN_TRIGGER", 0.0, *_real(0, 10)),
    Var("USE_EXIT_SIGNAL", True, *_boolean()),
    Var("MAX_HOLD_CANDLES", 240, *_whole(
        1, 10_000, unit="candles", why="35 days of 5m candles, 27 years of 1d candles")),
    Var("STRATEGY", "ema_cross", *_strategy()),
    Var("STRATEGY_PARAMS", "", *_text("name=value pairs separated by commas, or a JSON file",
                                      max_length=1000)),
    Var("COOLDOWN_CANDLES", 1, *_whole(0, 1000)),
    Var("STOPLOSS_GUARD_TRADES", 0, *_whole(0, 100)),
    Var("STOPLOSS_GUARD_LOOKBACK", 24, *_whole(1, 10_000, unit="candles")),
    Var("STOPLOSS_GUARD_LOCK", 12, *_whole(1, 10_000, unit="candles")),
    Var("STOPLOSS_GUARD_PER_PAIR", False, *_boolean()),
    Var("DAILY_LOSS_LIMIT", 0.0, *_real(0, 1)),
    Var("LOW_PROFIT_LOOKBACK", 0, *_whole(0, 10_000, unit="candles")),
    Var("LOW_PROFIT_MIN_TRADES", 2, *_whole(1, 1000)),
    Var("LOW_PROFIT_MIN_RETURN", 0.0, *_real(-1, 1)),
    Var("LOW_PROFIT_LOCK", 48, *_whole(1, 10_000, unit="candles")),
    Var("EDGE_GATE", False, *_boolean()),
    Var("EDGE_MIN_TRADES", 30, *_whole(5, 100_000)),
    Var("EDGE_CONFIDENCE", 0.9, *_real(0.5, 0.999)),
    Var("MAX_SLIPPAGE", 0.01, *_real(
        0, 0.2, open_lo=True, why="a market order more than 20 % from the best price is no guard")),
    Var("ENTRY_ORDER", "market", *_choice(("market", "limit"))),
    Var("LIMIT_ENTRY_TIMEOUT", 300.0, *_real(
        1, 86_400, unit="market seconds", why="a day; a limit entry older than that is stale")),
    Var("LIMIT_ENTRY_REPRICES", 2, *_whole(0, 20)),
    Var("MARKET_DATA", "websocket", *_choice(("websocket", "rest"))),
    Var("API_ENABLED", False, *_boolean()),
    Var("API_HOST", "127.0.0.1", *_host()),
    Var("API_PORT", 8080, *_whole(1, 65535, why="a TCP port")),
    Var("API_TOKEN", "", *_token(), _SECRET),
    Var("NOTIFY_WEBHOOK_URL", "", *_url("https://discord.com/api/webhooks/ID/TOKEN",
        "a webhook needs none: its URL is the credential", query=True), _SECRET),
    Var("TELEGRAM_TOKEN", "", *_secret("the bot token from @BotFather"), _SECRET),
    Var("TELEGRAM_CHAT_ID", "", *_chat_id()),
    Var("TELEGRAM_API_URL", "https://api.telegram.org", *_url(
        "https://api.telegram.org", "the token goes in TELEGRAM_TOKEN")),
    Var("NOTIFY_EVENTS", NOTIFY_KINDS, *_kinds(NOTIFY_KINDS)),
    Var("STREAM_TIMEOUT", 30.0, *_real(
        1, 600, unit="seconds", why="a stream silent for 10 minutes is long dead")),
    Var("DATA_DIR", Path("user_data"), *_directory()),
    Var("LOG_LEVEL", "INFO", *_choice(("DEBUG", "INFO", "WARNING", "ERROR"), str.upper)),
    Var("LOG_CCXT_DEBUG", False, *_boolean()),
    Var("SIM_SPEED", 60.0, *_real(1, 10000)),
    Var("SIM_SEED", 1, *_whole(0, 2**32 - 1, why="a 32-bit seed")),
    Var("SIM_PAIRS", 50, *_whole(1, 200)),
    Var("SIM_START", "", *_day()),
    Var("SIM_URL", "", *_url("http://127.0.0.1:8765",
                             "the simulator's keys go in API_KEY and API_SECRET")),
    Var("ENABLE_PERFORMANCE_MONITORING", True, *_boolean()),
    Var("SLOW_OPERATION_THRESHOLD", 5.0, *_real(
        0, 3600, open_lo=True, unit="wall seconds", why="a slower operation is a hang, not a slow one")),
    Var("PERFORMANCE_REPORT_INTERVAL", 10, *_whole(
        1, 100_000, unit="cycles", why="a rarer report would never be seen")),
    Var("CRITICAL_OPERATION_FACTOR", 3.0, *_real(
        1, 100, unit="x SLOW_OPERATION_THRESHOLD", why="an operation 100x over its threshold is a hang")),
    Var("PERFORMANCE_THRESHOLDS", "train_model=120", *_thresholds()),
    Var("DEGRADATION_FACTOR", 2.0, *_real(
        1, 100, open_lo=True, unit="x the operation's own baseline median")),
    Var("TRACE_MEMORY", False, *_boolean()),
    Var("ML_ENABLED", True, *_boolean()),
    Var("ML_MIN_CONFIDENCE", 0.55, *_real(0, 1)),
    Var("ML_MIN_EXPECTED_RETURN", 0.0, *_real(-1, 1)),
    Var("ML_MIN_AUC", 0.55, *_real(0, 1)),
    Var("ML_PREDICTION_CACHE_DURATION", 300.0, *_real(
        0, DAY, unit="market seconds (0: no cache)", why="at most a day, the longest timeframe")),
    Var("ML_CACHE_ROUNDING", 1, *_whole(0, 6)),
    Var("RETRAIN_INTERVAL", 21600.0, *_real(
        60, 30 * DAY, unit="market seconds", why="at least once in 30 days, or the model goes stale")),
    Var("RETRAIN_MIN_NEW_SAMPLES", 500, *_whole(
        1, 1_000_000, why="the training data holds at most 20,000 records")),
    Var("DASK_SCHEDULER_ADDRESS", "", *_scheduler()),
    Var("LLM_PROVIDER", "none", *_choice(("none", "openai"))),
    Var("LLM_BASE_URL", "http://127.0.0.1:11434/v1", *_url(
        "http://127.0.0.1:11434/v1", "put the key in LLM_API_KEY")),
    Var("LLM_MODEL", "llama3.1:8b", *_text("a model name of at most 200 printable characters, "
                                           "e.g. llama3.1:8b")),
    Var("LLM_API_KEY", "", *_secret("the LLM server's API key (optional)"), _SECRET),
    Var("LLM_TIMEOUT", 10.0, *_real(
        0, 300, open_lo=True, unit="wall seconds", why="a slower answer is a hung server")),
    Var("LLM_CYCLE_BUDGET", 20.0, *_real(
        0, 3600, open_lo=True, unit="wall seconds", why="at most an hour of LLM calls per cycle")),
    Var("LLM_MAX_CALLS_PER_CYCLE", 3, *_whole(1, 50)),
    Var("LLM_CACHE_TTL", 600.0, *_real(
        0, 7 * DAY, unit="market seconds (0: no cache)", why="an answer older than a week is stale")),
    Var("LLM_CACHE_MAX_SIZE", 1000, *_whole(
        1, 1_000_000, why="every answer is kept in memory")),
    Var("LLM_ON_FAILURE", "reject", *_choice(("reject", "model"))),
)
_BY_NAME: Mapping[str, Var] = {v.name: v for v in VARIABLES}
SECRETS: frozenset[str] = frozenset(v.name for v in VARIABLES if v.secret)
_URLS = frozenset({"SIM_URL", "LLM_BASE_URL", "TELEGRAM_API_URL"})

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "small": MappingProxyType({
        "MAX_PARALLEL_WORKERS": 5, "MARKET_SCAN_CACHE_DURATION": 600.0,
        "CHECK_INTERVAL": 300.0, "RISK_PER_TRADE": 0.005, "MAX_OPEN_POSITIONS": 3,
        "MAX_POSITION_SIZE": 0.10, "STARTING_BALANCE": 1000.0}),
    "medium": MappingProxyType({
        "MAX_PARALLEL_WORKERS": 10, "MARKET_SCAN_CACHE_DURATION": 300.0,
        "CHECK_INTERVAL": 120.0, "RISK_PER_TRADE": 0.005, "MAX_OPEN_POSITIONS": 5,
        "MAX_POSITION_SIZE": 0.10, "STARTING_BALANCE": 10000.0}),
    "large": MappingProxyType({
        "MAX_PARALLEL_WORKERS": 15, "MARKET_SCAN_CACHE_DURATION": 180.0,
        "CHECK_INTERVAL": 60.0, "RISK_PER_TRADE": 0.004, "MAX_OPEN_POSITIONS": 10,
        "MAX_POSITION_SIZE": 0.08, "STARTING_BALANCE": 100000.0}),
})


@dataclass(frozen=True)
class Config:
    """The effective configuration; attribute = env variable name lower-cased."""

    account_size: str
    exchange: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)
    dry_run: bool
    starting_balance: float
    quote_currency: str
    max_pairs: int
    pair_allowlist: tuple[str, ...]
    pair_denylist: tuple[str, ...]
    timeframe: str
    candle_history: int
    check_interval: float
    market_scan_cache_duration: float
    max_parallel_workers: int
    scan_timeout: float
    risk_per_trade: float
    max_open_positions: int
    max_position_size: float
    max_positions_per_group: int
    correlation_groups: str
    max_drawdown: float
    stop_loss_atr: float
    stop_loss_pct: float
    take_profit_atr: float
    take_profit_pct: float
    minimal_roi: str
    trailing_stop: float
    trailing_offset: float
    breakeven_trigger: float
    use_exit_signal: bool
    max_hold_candles: int
    strategy: str
    strategy_params: str
    cooldown_candles: int
    stoploss_guard_trades: int
    stoploss_guard_lookback: int
    stoploss_guard_lock: int
    stoploss_guard_per_pair: bool
    daily_loss_limit: float
    low_profit_lookback: int
    low_profit_min_trades: int
    low_profit_min_return: float
    low_profit_lock: int
    edge_gate: bool
    edge_min_trades: int
    edge_confidence: float
    max_slippage: float
    entry_order: str
    limit_entry_timeout: float
    limit_entry_reprices: int
    market_data: str
    api_enabled: bool
    api_host: str
    api_port: int
    api_token: str = field(repr=False)
    notify_webhook_url: str = field(repr=False)
    telegram_token: str = field(repr=False)
    telegram_chat_id: str
    telegram_api_url: str
    notify_events: tuple[str, ...]
    stream_timeout: float
    data_dir: Path
    log_level: str
    log_ccxt_debug: bool
    sim_speed: float
    sim_seed: int
    sim_pairs: int
    sim_start: str
    sim_url: str
    enable_performance_monitoring: bool
    slow_operation_threshold: float
    performance_report_interval: int
    critical_operation_factor: float
    performance_thresholds: str
    degradation_factor: float
    trace_memory: bool
    ml_enabled: bool
    ml_min_confidence: float
    ml_min_expected_return: float
    ml_min_auc: float
    ml_prediction_cache_duration: float
    ml_cache_rounding: int
    retrain_interval: float
    retrain_min_new_samples: int
    dask_scheduler_address: str
    llm_provider: str
    llm_base_url: str
    llm_model: str
    llm_api_key: str = field(repr=False)
    llm_timeout: float
    llm_cycle_budget: float
    llm_max_calls_per_cycle: int
    llm_cache_ttl: float
    llm_cache_max_size: int
    llm_on_failure: str
    sources: Mapping[str, str] = field(compare=False)

    @property
    def timeframe_seconds(self) -> int:
        """Length of one candle in (market) seconds."""
        return TIMEFRAMES[self.timeframe]

    @property
    def is_simulated(self) -> bool:
        """True when trading against the built-in simulated exchange."""
        return self.exchange == "simulated"

    @property
    def mode(self) -> str:
        """'paper' for DRY_RUN, else 'live'."""
        return "paper" if self.dry_run else "live"

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, value as shown, source) for every variable, secrets masked."""
        return [(v.name, _show(v, getattr(self, v.name.lower())), self.sources[v.name])
                for v in VARIABLES]


def mask_secret(value: str) -> str:
    """'****' plus the last 2 characters when at least 8 long; '(not set)' when empty."""
    if not value:
        return "(not set)"
    return "****" + value[-2:] if len(value) >= 8 else "****"


def _show(var: Var, value: Any) -> str:
    """A value as the user would write it in .env."""
    if var.secret:
        return mask_secret(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, tuple):
        value = ",".join(value)
    if var.name in _URLS:
        value = _redact_url(value)
    return str(value) or "(not set)"


def _quoted(var: Var, raw: str) -> str:
    """The offending raw value for an error message: quoted, shortened, secrets hidden."""
    if var.secret:
        return "<hidden>"
    if var.name in _URLS:
        raw = _redact_url(raw)
    return repr(raw if len(raw) <= 60 else raw[:57] + "...")


def _parse(var: Var, raw: str) -> Any:
    try:
        return var.parse(raw.strip())
    except _Invalid as exc:
        raise ConfigError(f"{var.name}={_quoted(var, raw)} {exc} (allowed: {var.allowed})",
                          var.name) from None


def _read_env_file(path: Path) -> dict[str, str | None]:
    """NAME -> value from a .env file ({} when missing); ConfigError when unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise ConfigError(f"env file '{path}' cannot be read: it is not UTF-8 text "
                          f"(allowed: a UTF-8 file of NAME=value lines)") from None
    except OSError as exc:
        raise ConfigError(f"env file '{path}' cannot be read: {exc.strerror or exc} "
                          f"(allowed: a readable file of NAME=value lines)") from None
    first_line: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:  # the line is not echoed: it may hold a secret
            raise ConfigError(f"env file '{path}' line {binding.original.line} cannot be "
                              f"parsed (allowed: NAME=value lines, # comments, blank lines)")
        name = binding.key
        if name is None or binding.value is None:
            continue
        if name in first_line and name in _BY_NAME:   # which one wins is easy to get wrong
            raise ConfigError(f"{name} is set twice in env file '{path}' (lines "
                              f"{first_line[name]} and {binding.original.line}; allowed: "
                              f"each variable once)", name)
        first_line.setdefault(name, binding.original.line)
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    for name in values:
        _check_known(name, path)
    return dict(values)


def _check_known(name: str, path: Path) -> None:
    """Reject a .env name that looks like a misspelling of one of ours; ignore the rest."""
    if name in _BY_NAME:
        return
    close = difflib.get_close_matches(name.upper(), list(_BY_NAME), n=1, cutoff=0.85)
    if close:
        raise ConfigError(f"{name} in env file '{path}' is not a known variable "
                          f"(did you mean {close[0]}?)", name)


def _resolve(var: Var, layers: tuple[tuple[str, Mapping[str, str | None]], ...],
             size: str) -> tuple[Any, str]:
    """(value, source) of one variable from the first layer that sets it."""
    for source, layer in layers:
        raw = layer.get(var.name)
        if raw is not None:
            return _parse(var, raw), source
    if var.name in PRESETS[size]:
        return PRESETS[size][var.name], f"preset:{size}"
    return var.default, "default"


def load_config(env_file: str | Path | None = ".env",
                environ: Mapping[str, str] | None = None, *,
                create_data_dir: bool = True) -> Config:
    """Read, validate and return the configuration; raises ConfigError on a bad value.

    DATA_DIR is created unless `create_data_dir` is false (it is still checked: call
    prepare_data_dir before writing to it)."""
    environ = os.environ if environ is None else environ
    file_values = _read_env_file(Path(env_file)) if env_file is not None else {}
    layers = (("environment", environ), (".env", file_values))
    size = _resolve(_BY_NAME["ACCOUNT_SIZE"], layers, "medium")[0]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for var in VARIABLES:
        values[var.name.lower()], sources[var.name] = _resolve(var, layers, size)
    config = Config(**values, sources=MappingProxyType(sources))
    _check_combinations(config)
    _ensure_data_dir(config.data_dir, create_data_dir)
    for warning in config_warnings(config):
        logger.warning(warning)
    return config


def _check_combinations(config: Config) -> None:
    """Cross-field rules that make a configuration unusable."""
    if config.pair_allowlist:
        usable = [s for s in config.pair_allowlist
                  if s.split("/")[1] == config.quote_currency and s not in config.pair_denylist]
        if not usable:
            raise ConfigError(
                f"PAIR_ALLOWLIST={','.join(config.pair_allowlist)!r} leaves no pair to trade: "
                f"each is in PAIR_DENYLIST or not quoted in QUOTE_CURRENCY="
                f"{config.quote_currency} (allowed: at least one {config.quote_currency} pair "
                f"not in PAIR_DENYLIST, or empty for all pairs)", "PAIR_ALLOWLIST")
    if config.api_enabled and config.api_host not in LOOPBACK and not config.api_token:
        raise ConfigError(f"API_HOST={config.api_host!r} opens the API beyond this machine but "
                          "API_TOKEN is empty (allowed: a token of 16+ characters, or API_HOST="
                          "127.0.0.1 and reach it through an SSH tunnel)", "API_TOKEN")
    if bool(config.telegram_token) != bool(config.telegram_chat_id):
        given, missing = (("TELEGRAM_TOKEN", "TELEGRAM_CHAT_ID") if config.telegram_token
                          else ("TELEGRAM_CHAT_ID", "TELEGRAM_TOKEN"))
        raise ConfigError(f"{missing} is empty but {given} is set (allowed: both, to send "
                          "Telegram notifications, or neither)", missing)
    if not config.dry_run and not config.is_simulated:
        for name in ("API_KEY", "API_SECRET"):
            if not getattr(config, name.lower()):
                raise ConfigError(
                    f"{name} is not set (required when DRY_RUN=false on EXCHANGE="
                    f"{config.exchange}: set {name}, or set DRY_RUN=true)", name)
    if config.sim_url and not config.is_simulated:
        raise ConfigError(f"SIM_URL is set but EXCHANGE={config.exchange}: SIM_URL points the bot "
                          "at a running simulated exchange, so set EXCHANGE=simulated or unset "
                          "SIM_URL", "SIM_URL")
    if config.llm_provider != "none":
        for name in ("LLM_MODEL", "LLM_BASE_URL"):
            if not getattr(config, name.lower()):
                raise ConfigError(
                    f"{name} is not set (required when LLM_PROVIDER={config.llm_provider};"
                    f" allowed: {_BY_NAME[name].allowed})", name)


def directory_problem(path: Path, create: bool = False) -> str | None:
    """Why `path` cannot serve as a directory to write into, or None. With `create` it is
    made (owner-only, 0o700) if missing; without, nothing is written: the nearest existing
    directory that would hold it must then be writable."""
    if _has_control(str(path)):
        return "contains a control character"
    try:
        existing = next(p for p in (path, *path.absolute().parents) if p.exists())
        if not existing.is_dir():
            return ("is a file, not a directory" if existing == path
                    else f"cannot be created: '{existing}' is a file")
        if create:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            existing = path
    except (OSError, ValueError) as exc:
        return f"cannot be created: {getattr(exc, 'strerror', None) or exc}"
    try:   # a real write, not os.access, which ignores read-only mounts and lies to root
        with tempfile.TemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as exc:
        return f"{'is not writable' if existing == path else 'cannot be created'}: " \
               f"{exc.strerror or exc}"
    return None


def _ensure_data_dir(path: Path, create: bool = True) -> None:
    """ConfigError unless DATA_DIR can be created and written (created when `create`)."""
    problem = directory_problem(path, create)
    if problem:
        raise ConfigError(f"DATA_DIR='{path}' {problem} (allowed: {DATA_DIR_ALLOWED})",
                          "DATA_DIR")


def prepare_data_dir(config: Config) -> None:
    """Create DATA_DIR (owner-only) for a config loaded with create_data_dir=False."""
    _ensure_data_dir(config.data_dir, create=True)


def config_warnings(config: Config) -> list[str]:
    """Settings that work but are probably not what the user meant (logged by load_config)."""
    warnings = [f"PAIR_ALLOWLIST has {s}, whose quote is not QUOTE_CURRENCY="
                f"{config.quote_currency}; it will not be traded"
                for s in config.pair_allowlist
                if s.split("/")[1] != config.quote_currency]
    warnings += [f"{s} is in both PAIR_ALLOWLIST and PAIR_DENYLIST"
                 for s in config.pair_allowlist if s in config.pair_denylist]
    if config.llm_provider != "none" and config.llm_cycle_budget < config.llm_timeout:
        warnings.append(f"LLM_CYCLE_BUDGET={_num(config.llm_cycle_budget)} is below "
                        f"LLM_TIMEOUT={_num(config.llm_timeout)}: one slow call can use "
                        f"the whole budget")
    if config.llm_provider == "none" and config.llm_api_key:
        warnings.append("LLM_API_KEY is set but LLM_PROVIDER=none, so it is not used")
    return warnings


def check_exchange_id(config: Config) -> None:
    """Raise ConfigError unless EXCHANGE is a ccxt id (imports ccxt; no-op when simulated)."""
    if config.is_simulated:
        return
    import ccxt  # heavy: only when a real exchange is configured

    if config.exchange in ccxt.exchanges:
        return
    close = difflib.get_close_matches(config.exchange, ccxt.exchanges, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see ccxt.exchanges"
    raise ConfigError(f"EXCHANGE={config.exchange!r} is not a ccxt exchange id "
                      f"(allowed: simulated or one of {len(ccxt.exchanges)} ccxt ids; {hint})",
                      "EXCHANGE")


def check_pairs(config: Config, markets: Mapping[str, Mapping[str, Any]],
                exchange: str | None = None) -> None:
    """Raise ConfigError unless every PAIR_ALLOWLIST pair is a market the scanner can trade
    (listed, active, spot, quoted in QUOTE_CURRENCY); the one-line message names the pairs
    and suggests close matches. Unknown PAIR_DENYLIST pairs are only logged.

    Call once the exchange's markets are loaded (ccxt's `load_markets()` result)."""
    where = exchange or config.exchange
    problems: list[str] = []
    for symbol in config.pair_allowlist:
        market = markets.get(symbol)
        if market is None:
            problems.append(symbol + _suggestion(symbol, markets, config.quote_currency))
        elif not _tradable(market, config.quote_currency):
            problems.append(f"{symbol} (listed but not an active spot market in "
                            f"{config.quote_currency})")
    if problems:
        raise ConfigError(f"PAIR_ALLOWLIST has {', '.join(problems)}, which {where} does not "
                          f"list for trading (allowed: active spot pairs of {where} in "
                          f"{config.quote_currency}, e.g. BTC/{config.quote_currency})",
                          "PAIR_ALLOWLIST")
    unknown = [s for s in config.pair_denylist if s not in markets]
    if unknown:
        logger.warning("PAIR_DENYLIST has %s, which %s does not list; nothing to exclude",
                       ", ".join(unknown), where)


def _tradable(market: Mapping[str, Any], quote: str) -> bool:
    """What the scanner trades: an active spot market in QUOTE_CURRENCY."""
    return (bool(market.get("spot", True)) and market.get("active", True) is not False
            and market.get("quote", quote) == quote)


def _suggestion(symbol: str, markets: Mapping[str, Any], quote: str) -> str:
    """' (did you mean X/Q?)' with the closest tradable pair, or ''."""
    names = [name for name, market in markets.items() if _tradable(market, quote)]
    close = difflib.get_close_matches(symbol, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


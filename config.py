"""One frozen Config read from the environment and .env, with account-size presets.

Precedence, highest first: explicit environment variables, the .env file (read with
python-dotenv's dotenv_values; os.environ is never modified), the ACCOUNT_SIZE preset,
the built-in default. Every value is validated; a bad one raises ConfigError whose
message is one line naming the variable, the value (secrets hidden) and what is allowed.

Durations marked "market" are in market seconds: on a real exchange that is the wall
clock, on the simulated exchange a clock running SIM_SPEED times faster.

Imports only the standard library and python-dotenv, so the CLI starts fast.
"""
from __future__ import annotations

import difflib
import io
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

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
    """A number as a user would write it: 300 rather than 300.0."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _whole(lo: int, hi: int | None = None) -> tuple[Callable[[str], int], str]:
    allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise _Invalid("is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            raise _Invalid("is out of range")
        return value
    return parse, allowed


def _real(lo: float, hi: float | None = None, *, open_lo: bool = False
          ) -> tuple[Callable[[str], float], str]:
    if hi is None:
        allowed = f"{'>' if open_lo else '>='} {_num(lo)}"
    elif open_lo:
        allowed = f"{_num(lo)} < x <= {_num(hi)}"
    else:
        allowed = f"{_num(lo)}..{_num(hi)}"

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise _Invalid("is not a number") from None
        if not math.isfinite(value):
            raise _Invalid("is not a finite number")
        if value < lo or (open_lo and value == lo) or (hi is not None and value > hi):
            raise _Invalid("is out of range")
        return value
    return parse, allowed


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _boolean() -> tuple[Callable[[str], bool], str]:
    def parse(raw: str) -> bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise _Invalid("is not a boolean")
    return parse, "true, false, 1, 0, yes, no"


def _choice(options: tuple[str, ...], normalize: Callable[[str], str] = str.lower
            ) -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if normalize(raw) not in options:
            raise _Invalid("is not supported")
        return normalize(raw)
    return parse, ", ".join(options)


def _pattern(regex: str, problem: str, allowed: str,
             normalize: Callable[[str], str] = str.upper) -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if not re.fullmatch(regex, normalize(raw)):
            raise _Invalid(problem)
        return normalize(raw)
    return parse, allowed


def _text(allowed: str) -> tuple[Callable[[str], str], str]:
    return (lambda raw: raw), allowed


def _secret(what: str) -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in raw):
            raise _Invalid("contains spaces or control characters")
        return raw
    return parse, f"{what}, exactly as issued (no spaces)"


_SYMBOL = re.compile(r"[A-Z0-9]+/[A-Z0-9]+")


def _symbols() -> tuple[Callable[[str], tuple[str, ...]], str]:
    def parse(raw: str) -> tuple[str, ...]:
        symbols = [s.strip().upper() for s in raw.split(",") if s.strip()]
        for symbol in symbols:
            if not _SYMBOL.fullmatch(symbol):
                raise _Invalid(f"has {symbol!r}, which is not a BASE/QUOTE symbol")
        return tuple(dict.fromkeys(symbols))
    return parse, "comma-separated BASE/QUOTE symbols, e.g. BTC/USDT,ETH/USDT"


def parse_correlation_groups(text: str) -> dict[str, tuple[str, ...]]:
    """Parse "group:BASE,BASE;group2:BASE" into {group: (BASE, ...)}; raises ValueError."""
    groups: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, members = (s.strip() for s in part.partition(":"))
        bases = tuple(b.strip().upper() for b in members.split(",") if b.strip())
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not bases:
            raise ValueError(f"has {part!r}, which is not group:BASE,BASE")
        if name in groups:
            raise ValueError(f"names group {name!r} twice")
        for base in bases:
            if not re.fullmatch(r"[A-Z0-9]+", base):
                raise ValueError(f"has {base!r}, which is not a base currency")
            if base in owner:
                raise ValueError(f"puts {base} in both {owner[base]!r} and {name!r}")
            owner[base] = name
        groups[name] = bases
    return groups


def _groups() -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        try:
            parse_correlation_groups(raw)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        return raw
    return parse, '"group:BASE,BASE;group2:BASE", e.g. majors:BTC,ETH;memes:DOGE,SHIB'


def _redact_url(url: str) -> str:
    """The URL with any user:password@ part replaced by ****@."""
    scheme, at, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if at and "@" in netloc:
        return f"{scheme}://****@{netloc.rsplit('@', 1)[1]}{slash}{path}"
    return url


def _url() -> tuple[Callable[[str], str], str]:
    def parse(raw: str) -> str:
        if not raw:
            return raw
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise _Invalid("is not an http(s) URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in raw:
            raise _Invalid("is not an http(s) URL")
        return raw
    return parse, "an http(s) URL, e.g. http://127.0.0.1:11434/v1"


def _directory() -> tuple[Callable[[str], Path], str]:
    def parse(raw: str) -> Path:
        if not raw:
            raise _Invalid("is empty")
        return Path(raw).expanduser()
    return parse, "a directory (created if missing)"


TIMEFRAMES: Mapping[str, int] = MappingProxyType({
    "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200,
    "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400})

_SECRET = True
_PRESET = None  # default of a preset variable: always comes from PRESETS

VARIABLES: tuple[Var, ...] = (
    Var("ACCOUNT_SIZE", "medium", *_choice(("small", "medium", "large"))),
    Var("EXCHANGE", "simulated", *_pattern(
        r"[a-z][a-z0-9_]*", "is not an exchange id",
        "simulated or a ccxt exchange id such as binance, kraken, okx", str.lower)),
    Var("API_KEY", "", *_secret("your exchange API key"), _SECRET),
    Var("API_SECRET", "", *_secret("your exchange API secret"), _SECRET),
    Var("DRY_RUN", True, *_boolean()),
    Var("STARTING_BALANCE", _PRESET, *_real(0, open_lo=True)),
    Var("QUOTE_CURRENCY", "USDT", *_pattern(
        r"[A-Z]+", "is not a currency code", "letters only, e.g. USDT")),
    Var("MAX_PAIRS", 50, *_whole(1, 500)),
    Var("PAIR_ALLOWLIST", (), *_symbols()),
    Var("PAIR_DENYLIST", (), *_symbols()),
    Var("TIMEFRAME", "5m", *_choice(tuple(TIMEFRAMES), normalize=str)),
    Var("CANDLE_HISTORY", 500, *_whole(100, 1000)),
    Var("CHECK_INTERVAL", _PRESET, *_real(1)),
    Var("MARKET_SCAN_CACHE_DURATION", _PRESET, *_real(0)),
    Var("MAX_PARALLEL_WORKERS", _PRESET, *_whole(1, 64)),
    Var("SCAN_TIMEOUT", 30.0, *_real(0, open_lo=True)),
    Var("RISK_PER_TRADE", _PRESET, *_real(0, 0.1, open_lo=True)),
    Var("MAX_OPEN_POSITIONS", _PRESET, *_whole(1, 100)),
    Var("MAX_POSITION_SIZE", _PRESET, *_real(0, 1, open_lo=True)),
    Var("MAX_POSITIONS_PER_GROUP", 2, *_whole(1)),
    Var("CORRELATION_GROUPS", "", *_groups()),
    Var("MAX_DRAWDOWN", 0.25, *_real(0, 1, open_lo=True)),
    Var("STOP_LOSS_ATR", 2.0, *_real(0, open_lo=True)),
    Var("TAKE_PROFIT_ATR", 3.0, *_real(0, open_lo=True)),
    Var("MAX_HOLD_CANDLES", 48, *_whole(1)),
    Var("COOLDOWN_CANDLES", 1, *_whole(0, 1000)),
    Var("DATA_DIR", Path("user_data"), *_directory()),
    Var("LOG_LEVEL", "INFO", *_choice(("DEBUG", "INFO", "WARNING", "ERROR"), str.upper)),
    Var("SIM_SPEED", 60.0, *_real(1, 10000)),
    Var("SIM_SEED", 1, *_whole(0)),
    Var("SIM_PAIRS", 50, *_whole(1, 200)),
    Var("SIM_URL", "", *_url()),
    Var("ENABLE_PERFORMANCE_MONITORING", True, *_boolean()),
    Var("SLOW_OPERATION_THRESHOLD", 5.0, *_real(0, open_lo=True)),
    Var("PERFORMANCE_REPORT_INTERVAL", 10, *_whole(1)),
    Var("ML_ENABLED", True, *_boolean()),
    Var("ML_MIN_CONFIDENCE", 0.55, *_real(0, 1)),
    Var("ML_PREDICTION_CACHE_DURATION", 300.0, *_real(0)),
    Var("ML_CACHE_ROUNDING", 1, *_whole(0, 6)),
    Var("RETRAIN_INTERVAL", 21600.0, *_real(60)),
    Var("RETRAIN_MIN_NEW_SAMPLES", 500, *_whole(1)),
    Var("LLM_PROVIDER", "none", *_choice(("none", "openai"))),
    Var("LLM_BASE_URL", "http://127.0.0.1:11434/v1", *_url()),
    Var("LLM_MODEL", "llama3.1:8b", *_text("a model name, e.g. llama3.1:8b")),
    Var("LLM_API_KEY", "", *_secret("the LLM server's API key (optional)"), _SECRET),
    Var("LLM_TIMEOUT", 10.0, *_real(0, open_lo=True)),
    Var("LLM_CYCLE_BUDGET", 20.0, *_real(0, open_lo=True)),
    Var("LLM_MAX_CALLS_PER_CYCLE", 3, *_whole(1, 50)),
    Var("LLM_CACHE_TTL", 600.0, *_real(0)),
    Var("LLM_CACHE_MAX_SIZE", 1000, *_whole(1)),
    Var("LLM_ON_FAILURE", "reject", *_choice(("reject", "model"))),
)
_BY_NAME: Mapping[str, Var] = {v.name: v for v in VARIABLES}
SECRETS: frozenset[str] = frozenset(v.name for v in VARIABLES if v.secret)

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "small": MappingProxyType({
        "MAX_PARALLEL_WORKERS": 5, "MARKET_SCAN_CACHE_DURATION": 600.0,
        "CHECK_INTERVAL": 300.0, "RISK_PER_TRADE": 0.02, "MAX_OPEN_POSITIONS": 3,
        "MAX_POSITION_SIZE": 0.30, "STARTING_BALANCE": 1000.0}),
    "medium": MappingProxyType({
        "MAX_PARALLEL_WORKERS": 10, "MARKET_SCAN_CACHE_DURATION": 300.0,
        "CHECK_INTERVAL": 120.0, "RISK_PER_TRADE": 0.01, "MAX_OPEN_POSITIONS": 5,
        "MAX_POSITION_SIZE": 0.20, "STARTING_BALANCE": 10000.0}),
    "large": MappingProxyType({
        "MAX_PARALLEL_WORKERS": 15, "MARKET_SCAN_CACHE_DURATION": 180.0,
        "CHECK_INTERVAL": 60.0, "RISK_PER_TRADE": 0.005, "MAX_OPEN_POSITIONS": 10,
        "MAX_POSITION_SIZE": 0.10, "STARTING_BALANCE": 100000.0}),
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
    take_profit_atr: float
    max_hold_candles: int
    cooldown_candles: int
    data_dir: Path
    log_level: str
    sim_speed: float
    sim_seed: int
    sim_pairs: int
    sim_url: str
    enable_performance_monitoring: bool
    slow_operation_threshold: float
    performance_report_interval: int
    ml_enabled: bool
    ml_min_confidence: float
    ml_prediction_cache_duration: float
    ml_cache_rounding: int
    retrain_interval: float
    retrain_min_new_samples: int
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
    if var.name == "LLM_BASE_URL":
        value = _redact_url(value)
    return str(value) or "(not set)"


def _quoted(var: Var, raw: str) -> str:
    """The offending raw value for an error message: quoted, shortened, secrets hidden."""
    if var.secret:
        return "<hidden>"
    if var.name == "LLM_BASE_URL":
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
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:  # the line is not echoed: it may hold a secret
            raise ConfigError(f"env file '{path}' line {binding.original.line} cannot be "
                              f"parsed (allowed: NAME=value lines, # comments, blank lines)")
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
                environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the configuration; raises ConfigError on a bad value."""
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
    _ensure_data_dir(config.data_dir)
    for warning in config_warnings(config):
        logger.warning(warning)
    return config


def _check_combinations(config: Config) -> None:
    """Cross-field rules that make a configuration unusable."""
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


def _ensure_data_dir(path: Path) -> None:
    """Create DATA_DIR if missing; ConfigError if it is a file or cannot be created."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"DATA_DIR='{path}' is a file, not a directory "
                          f"(allowed: a directory, created if missing)", "DATA_DIR")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"DATA_DIR='{path}' cannot be created: {exc.strerror or exc} "
                          f"(allowed: a directory, created if missing)", "DATA_DIR") from None


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

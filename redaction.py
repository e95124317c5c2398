"""Secrets never reach a log line: masking of secret values and of long pieces of them.

``mask(text, secrets)`` replaces with ``***`` every occurrence in ``text`` of each secret and
of any piece of a secret at least ``MIN_PIECE`` (8) characters long, in the secret's plain
form and in the forms a secret takes on its way into a log line: URL-encoded (``quote``,
``quote_plus``, either case of the ``%XX`` digits), JSON / ``repr`` escaped, hex (either
case) and base64 (standard and URL-safe, at each of the three byte alignments, so the
secret is found inside a longer base64 value such as a Basic ``user:password`` header).
Pieces that touch or overlap are masked as one ``***``.

Why 8: an API key or secret is a long random string (Binance: 64 characters of base62), so
a piece of 8 of its characters occurs in ordinary text by chance with odds of about 62^-8
(1 in 2e14) per position; shorter pieces start to collide with the hex of order ids and
request signatures (the encoded forms use a 16-letter alphabet: 16^6 is only 1.7e7) and,
for the few human-chosen secrets, with ordinary words. What may still leak is a piece of
at most 7 characters, which tells nothing useful about a 64-character key. A secret
shorter than 8 characters is masked whole (plain and quoted forms only); one shorter than
``MIN_SECRET`` (4) characters is not masked at all: it would mask ordinary letters of every
line and cannot be a real credential.

Every form of every secret is cut into its 8-character windows (shorter plain forms are
kept whole) and the set is compiled once per secret set into a single trie-shaped regular
expression inside a lookahead, so one C-level pass over a line finds every window at every
position (overlapping ones too); the windows are merged into runs and each run becomes
``***``. Compiled maskers are cached per secret set.

Logging: ``install(secrets)`` puts one ``RedactingFilter`` on every handler of the root
logger (and on ``logging.lastResort``), idempotently; calling it again adds the new secrets
and covers handlers added since. The filter masks each record's final message (its
arguments are merged into it first, then dropped), its exception text and stack text, for
every logger and at every level, and never drops a record. ``secrets_of(config)`` returns
the values of the variables ``config.SECRETS`` names (API_KEY, API_SECRET, LLM_API_KEY and
any secret variable added later), from a Config or from a mapping of variable names.

ccxt logs every request with its headers (``X-MBX-APIKEY``) at DEBUG on the logger
``ccxt.base.exchange``, and urllib3 logs every request line on ``urllib3.connectionpool``.
``install`` keeps those loggers (``NOISY_LOGGERS``) at INFO or above unless the
configuration's LOG_CCXT_DEBUG is true (`install(..., ccxt_debug=config.log_ccxt_debug)`;
without it, the environment variable is read); when let through they are masked like every
other record. ccxt's ``verbose`` mode prints to stdout with ``print`` and bypasses logging
altogether: nothing in the bot sets it, and nothing here can mask it.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import re
import threading
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

__all__ = ["MIN_PIECE", "MIN_SECRET", "MASK", "NOISY_LOGGERS", "Redactor", "RedactingFilter",
           "mask", "install", "uninstall", "secrets_of", "ccxt_debug_requested"]

MIN_PIECE = 8            # pieces of a secret this long or longer are masked
MIN_SECRET = 4           # shorter "secrets" are not masked at all
MASK = "***"
NOISY_LOGGERS = ("ccxt", "ccxt.base.exchange", "urllib3", "urllib3.connectionpool", "requests")
_TRUE = {"1", "true", "yes", "on"}


# -- the forms a secret takes ------------------------------------------------------------

def _textual_forms(secret: str) -> set[str]:
    """The secret as it may be written as text: plain, URL-quoted, JSON- or repr-escaped."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
             repr(secret)[1:-1]}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}
    return forms


def _base64_cores(data: bytes) -> set[str]:
    """The base64 characters that depend on ``data`` alone, at each of the 3 alignments.

    Inside a longer base64 value the secret's bytes start at offset 0, 1 or 2 of a 3-byte
    group; the characters covering only the secret's bits are the same whatever surrounds
    it, so those cores are found in any base64 text that carries the secret.
    """
    cores = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode().rstrip("=")
        first = -(-8 * shift // 6)               # first character made of secret bits only
        last = 8 * (shift + len(data)) // 6      # one past the last such character
        core = encoded[first:last]
        cores |= {core, core.translate(str.maketrans("+/", "-_"))}
    return cores


def _encoded_forms(secret: str) -> set[str]:
    data = secret.encode("utf-8")
    hexed = binascii.hexlify(data).decode()
    whole = {base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()}
    return {hexed, hexed.upper()} | whole | _base64_cores(data)


def _literals(secrets: Iterable[str], piece: int) -> set[str]:
    """Every string to mask: windows of `piece` characters, or short plain forms whole."""
    out: set[str] = set()
    for secret in secrets:
        for form in _textual_forms(secret):
            if len(form) < piece:
                out.add(form)
            else:
                out.update(form[i:i + piece] for i in range(len(form) - piece + 1))
        for form in _encoded_forms(secret):
            if len(form) >= piece:       # shorter encoded forms would mask ordinary hex/base64
                out.update(form[i:i + piece] for i in range(len(form) - piece + 1))
    return out


def _trie_regex(words: Iterable[str]) -> str:
    """One regular expression matching any of `words`, longest first, shaped as a trie."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(c) + emit(child) for c, child in sorted(node.items()) if c]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body   # a shorter word ends here: longer first

    return emit(trie)


# -- masking -----------------------------------------------------------------------------

def _usable(secrets: Iterable[Any]) -> frozenset[str]:
    return frozenset(s for s in (str(x).strip() for x in secrets if x is not None)
                     if len(s) >= MIN_SECRET)


class Redactor:
    """A compiled masker for one set of secrets; ``mask(text)`` is safe from any thread."""

    def __init__(self, secrets: Iterable[Any], piece: int = MIN_PIECE) -> None:
        self.secrets = _usable(secrets)
        self.piece = piece
        literals = _literals(self.secrets, piece)
        self._regex = re.compile(f"(?=({_trie_regex(literals)}))") if literals else None

    def __bool__(self) -> bool:
        return self._regex is not None

    def mask(self, text: str) -> str:
        if self._regex is None or not text:
            return text
        runs: list[list[int]] = []
        for m in self._regex.finditer(text):
            start, end = m.start(), m.end(1)
            if runs and start <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], end)
            else:
                runs.append([start, end])
        if not runs:
            return text
        parts, at = [], 0
        for start, end in runs:
            parts.append(text[at:start])
            parts.append(MASK)
            at = end
        parts.append(text[at:])
        return "".join(parts)


@functools.lru_cache(maxsize=64)
def _redactor(secrets: frozenset[str], piece: int) -> Redactor:
    return Redactor(secrets, piece)


def mask(text: str, secrets: Iterable[Any], piece: int = MIN_PIECE) -> str:
    """`text` with every secret, and every piece of one >= `piece` characters, as ***."""
    if not text:
        return text
    usable = _usable(secrets)
    if not usable:
        return text
    return _redactor(usable, piece).mask(text)


# -- logging -----------------------------------------------------------------------------

class RedactingFilter(logging.Filter):
    """Masks each record's message, arguments, exception and stack text; drops nothing."""

    def __init__(self, secrets: Iterable[Any] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.redactor = _redactor(_usable(secrets), MIN_PIECE)

    @property
    def secrets(self) -> frozenset[str]:
        return self.redactor.secrets

    def add_secrets(self, secrets: Iterable[Any]) -> None:
        with self._lock:
            merged = self.redactor.secrets | _usable(secrets)
            if merged != self.redactor.secrets:
                self.redactor = _redactor(merged, MIN_PIECE)

    def clear(self) -> None:
        with self._lock:
            self.redactor = _redactor(frozenset(), MIN_PIECE)

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self.redactor
        if not redactor:
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad format arguments: keep everything, masked, in one line
            message = f"{record.msg!s} (arguments: {record.args!r})"
        record.msg, record.args = redactor.mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.mask(record.exc_text)
            record.exc_info = None   # no formatter may render the unmasked traceback again
        if record.stack_info:
            record.stack_info = redactor.mask(record.stack_info)
        return True


FILTER = RedactingFilter()
_state_lock = threading.Lock()
_filtered_handlers: list[logging.Handler] = []
_quieted: dict[str, int] = {}     # logger name -> level it had before install raised it


def ccxt_debug_requested(environ: Mapping[str, str] | None = None) -> bool:
    """True when LOG_CCXT_DEBUG asks for ccxt's and urllib3's own DEBUG output."""
    env = os.environ if environ is None else environ
    return str(env.get("LOG_CCXT_DEBUG", "")).strip().lower() in _TRUE


def install(secrets: Iterable[Any], ccxt_debug: bool | None = None) -> RedactingFilter:
    """Mask `secrets` in every record the root logger's handlers write; idempotent.

    Adds the secrets to the one filter (a secret once known stays masked), puts the filter
    on every root handler that lacks it and on ``logging.lastResort``, and keeps
    ``NOISY_LOGGERS`` at INFO or above unless `ccxt_debug` (default: LOG_CCXT_DEBUG in the
    environment). Call it after the handlers exist (right after ``logging.basicConfig``).
    """
    FILTER.add_secrets(secrets)
    if ccxt_debug is None:
        ccxt_debug = ccxt_debug_requested()
    with _state_lock:
        handlers = list(logging.getLogger().handlers)
        if logging.lastResort is not None:
            handlers.append(logging.lastResort)
        for handler in handlers:
            if FILTER not in handler.filters:
                handler.addFilter(FILTER)
                _filtered_handlers.append(handler)
        if ccxt_debug:
            _restore_levels()
        else:
            for name in NOISY_LOGGERS:
                logger = logging.getLogger(name)
                if logger.level < logging.INFO and name not in _quieted:
                    _quieted[name] = logger.level
                    logger.setLevel(logging.INFO)
    return FILTER


def _restore_levels() -> None:
    for name, level in _quieted.items():
        logging.getLogger(name).setLevel(level)
    _quieted.clear()


def uninstall() -> None:
    """Undo install(): remove the filter, forget the secrets, restore the loggers' levels."""
    with _state_lock:
        for handler in _filtered_handlers:
            handler.removeFilter(FILTER)
        _filtered_handlers.clear()
        _restore_levels()
    FILTER.clear()


def secrets_of(config: Any, names: Iterable[str] | None = None) -> list[str]:
    """The non-empty values of the secret variables (config.SECRETS unless `names`).

    `config` is a Config (attribute = variable name lower-cased) or a mapping of variable
    names to values (os.environ, a parsed .env).
    """
    if names is None:
        import config as config_module   # late: config must stay importable without this
        names = config_module.SECRETS
    values = []
    for name in sorted(names):
        if isinstance(config, Mapping):
            value = config.get(name)
        else:
            value = getattr(config, name.lower(), None)
        if value and "://" in str(value):
            values += url_secrets(str(value))    # a webhook URL: only its credential parts
        elif value:
            values.append(str(value))
    return values


def url_secrets(url: str) -> list[str]:
    """The parts of a webhook URL that may be credentials: each path segment and query value
    of 8+ characters that holds a digit or is 16+ long (Discord's id and token, Slack's
    T.../B.../secret, a ?token=...). Masking the whole URL would also mask "https://" and
    "webhooks" in every other log line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url] if url else []
    pieces = [p for p in parts.path.split("/") if p]
    pieces += [v for _, v in parse_qsl(parts.query, keep_blank_values=True)]
    return [p for p in pieces
            if len(p) >= 8 and (len(p) >= 16 or any(c.isdigit() for c in p))]

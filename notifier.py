"""Notifications of the bot's events to a webhook (Discord, Slack, generic JSON) and Telegram.

``Notifier.notify(kind, text, **fields)`` never blocks the trading loop: it puts the message
into one bounded queue per destination (``QUEUE_SIZE``, 1000 messages) and returns. Each
destination has its own delivery thread, so a receiver that hangs delays only its own
messages, never the loop and never the other destination. A full queue drops its *oldest*
message and counts it (``dropped``): a receiver that has been away long enough to fill a
queue of 1000 comes back to the latest news (the open positions, the kill switch, the last
errors), which is what a trader needs; the oldest notices are the ones events have since
overtaken, and blocking the loop or refusing new messages would be worse.

Delivery: one JSON POST per message over ``http.client`` (no redirects followed, no proxy,
nothing logged; requests would hand the URL, token included, to urllib3's DEBUG request
log), ``timeout`` (5 s) for the connection and for each read.
Connection errors, timeouts, 408, 429 and 5xx are retried up to ``attempts`` (4) in all
with full-jitter backoff (``exchange.full_jitter``), waiting at least what the receiver
asked (HTTP ``Retry-After``, Telegram's ``parameters.retry_after``, Discord's
``retry_after``; at most ``max_retry_after``). Other answers (3xx, 4xx) are not retried:
each status is logged once per destination and the message counts as ``failed``. Once a
message has used all its attempts the destination is "down": each later message gets one
attempt until one goes through, so a dead receiver costs one timeout per message and a
backlog drains instead of piling up retries (logged once when it goes down, once when it is
back). ``close(timeout)`` delivers what it can until the deadline and returns by it.

Secrets: the Telegram token is in the request path and a Discord or Slack webhook's path
(or a generic one's query) is a credential too. Destinations are named by scheme and host
only (``telegram https://api.telegram.org``) in every log line, stats key and repr; errors
are described by their kind ("timed out", "HTTP 500: ...") and any receiver-supplied or
exception text is passed through ``redaction.mask`` with the destination's secrets before
it is logged or kept, so no log line, exception text or stats value holds the token or the
webhook's secret parts (``redaction.url_secrets(url)`` names those parts). What is
sent is masked too: ``Notifier(secrets=...)`` (``from_config``: every secret of the
configuration) replaces them in each text and field before it is queued, so an error
message that quotes a request cannot carry an API key out of the bot.

Events (``KINDS``): entry, exit, protection, kill_switch, error, daily_summary; the
``*_text`` functions format them like the terminal does (reporter.py), shorter and on a few
lines for a phone. Repeats of the same protection, kill-switch or error text within
``repeat_window`` seconds are not sent again (counted as ``suppressed``): an outage that
fails every cycle sends one message per window, not one per cycle.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import random
import re
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple, Sequence
from urllib.parse import quote, urlsplit

import redaction
from config import NOTIFY_KINDS
from domain import Fill, Position, Trade
from exchange import full_jitter
from redaction import url_secrets
from protections import ALL_PAIRS, DAY_MS, Lock, utc_text

log = logging.getLogger(__name__)

__all__ = ["KINDS", "QUEUE_SIZE", "TELEGRAM_API_URL", "Message", "Outcome", "WebhookDestination",
           "TelegramDestination", "Notifier", "from_config", "entry_text",
           "exit_text", "lock_text", "kill_switch_text", "error_text", "daily_summary_text"]

KINDS = NOTIFY_KINDS     # entry, exit, protection, kill_switch, error, daily_summary
REPEATING = frozenset({"protection", "kill_switch", "error"})   # suppressed when repeated
QUEUE_SIZE = 1000
TELEGRAM_API_URL = "https://api.telegram.org"
USER_AGENT = "crypto-trading-bot-notifier/1.0"
DISCORD_LIMIT = 2000       # characters of a Discord message's content
TELEGRAM_LIMIT = 4000      # Telegram allows 4096 UTF-16 units; room for the prefix
MAX_ANSWER = 65_536        # bytes of a receiver's answer read
MAX_DETAIL = 200           # characters of a receiver's error text kept


# -- messages and outcomes ---------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    kind: str
    text: str
    fields: Mapping[str, Any]
    time_s: float           # wall time of notify()


class Outcome(NamedTuple):
    """What one delivery attempt came to; `why` is safe to log (no secret in it)."""
    sent: bool
    retry: bool
    why: str
    retry_after: float | None = None
    status: int | None = None      # the HTTP status, None when nothing was answered


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _json_safe(value: Any) -> Any:
    """`value` as plain JSON: non-finite floats become None, unknown objects their str()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    return str(value)


def _answer_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _retry_after_header(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


# -- destinations ------------------------------------------------------------------------

class _HttpDestination:
    """One receiver reached by a JSON POST; subclasses say what to send and how to read
    a refusal. `name` (scheme and host) is the only way it shows up anywhere."""

    kind = "http"

    def __init__(self, url: str, path: str, secrets: Iterable[str]) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(f"{self.kind} URL is not an http(s) URL: bad host or port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{self.kind} URL is not an http(s) URL")
        if "@" in parts.netloc:
            raise ValueError(f"{self.kind} URL has a user name or password in it; not supported")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = port or (443 if parts.scheme == "https" else 80)
        self._path = path
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.name = f"{self.kind} {parts.scheme}://{host}" + (f":{port}" if port else "")
        self.secrets = tuple(s for s in secrets if s)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def payload(self, message: Message) -> dict:
        raise NotImplementedError

    def mask(self, text: str) -> str:
        return redaction.mask(text, self.secrets)

    def deliver(self, message: Message, timeout: float) -> Outcome:
        """One attempt: POST the message, judge the answer; never raises for the network."""
        body = json.dumps(self.payload(message), ensure_ascii=False, allow_nan=False).encode()
        try:
            status, headers, data = self._post(body, timeout)
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(False, True, self._describe(exc))
        return self._judge(status, headers, data)

    def _post(self, body: bytes, timeout: float) -> tuple[int, Any, bytes]:
        cls = (http.client.HTTPSConnection if self._scheme == "https"
               else http.client.HTTPConnection)
        conn = cls(self._host, self._port, timeout=timeout)
        try:
            conn.request("POST", self._path, body, {"Content-Type": "application/json",
                                                    "Accept": "application/json",
                                                    "User-Agent": USER_AGENT})
            response = conn.getresponse()
            return response.status, response.headers, response.read(MAX_ANSWER)
        finally:
            conn.close()

    def _describe(self, exc: BaseException) -> str:
        """A failure without an answer, in words that hold no secret."""
        if isinstance(exc, TimeoutError):
            return "timed out"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, http.client.RemoteDisconnected):
            return "connection closed without an answer"
        if isinstance(exc, ConnectionError):
            return "connection reset"
        return _clip(self.mask(f"{type(exc).__name__}: {exc}"), MAX_DETAIL)

    def _judge(self, status: int, headers: Any, data: bytes) -> Outcome:
        if 200 <= status < 300:
            return Outcome(True, False, f"HTTP {status}", status=status)
        answer = _answer_json(data)
        detail = self._detail(answer, data)
        why = f"HTTP {status}" + (f": {detail}" if detail else "")
        if status in (408, 429) or status >= 500:
            return Outcome(False, True, why, self._retry_after(headers, answer), status)
        return Outcome(False, False, why + self._hint(status, answer), status=status)

    def _detail(self, answer: Any, data: bytes) -> str:
        """The receiver's own words about a refusal, short, on one line, masked."""
        text = ""
        if isinstance(answer, dict):
            text = str(answer.get("description") or answer.get("message")
                       or answer.get("error") or "")
        elif answer is None and data:
            text = data.decode("utf-8", "replace")
        return _clip(self.mask(" ".join(text.split())), MAX_DETAIL)

    @staticmethod
    def _retry_after(headers: Any, answer: Any) -> float | None:
        waits = [_retry_after_header(headers)]
        if isinstance(answer, dict):
            params = answer.get("parameters")
            for value in (answer.get("retry_after"),
                          params.get("retry_after") if isinstance(params, dict) else None):
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                    waits.append(float(value))
        waits = [w for w in waits if w is not None and math.isfinite(w)]
        return max(waits) if waits else None

    def _hint(self, status: int, answer: Any) -> str:
        return ""


class WebhookDestination(_HttpDestination):
    """A JSON POST that Discord (``content``), Slack (``text``) and generic receivers
    (``kind``, ``fields``) all accept; ``allowed_mentions`` keeps Discord from pinging."""

    kind = "webhook"

    def __init__(self, url: str) -> None:
        if not url:
            raise ValueError("webhook URL is empty")
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ValueError("webhook URL is not an http(s) URL: bad host or port") from None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c.isspace() or not c.isprintable() for c in path):
            raise ValueError("webhook URL contains spaces or control characters")
        super().__init__(url, path, [*url_secrets(url), parts.query, parts.path.strip("/")])

    def payload(self, message: Message) -> dict:
        return {"content": _clip(message.text, DISCORD_LIMIT), "text": message.text,
                "kind": message.kind, "fields": dict(message.fields),
                "allowed_mentions": {"parse": []}}

    def _hint(self, status: int, answer: Any) -> str:
        if status in (401, 403, 404, 410):
            return " (check NOTIFY_WEBHOOK_URL: was the webhook deleted?)"
        if 300 <= status < 400:
            return " (the webhook redirects; set NOTIFY_WEBHOOK_URL to where it points)"
        return ""


_CHAT_ID = re.compile(r"-?[0-9]{1,20}|@[A-Za-z0-9_]{5,32}", re.ASCII)


class TelegramDestination(_HttpDestination):
    """Telegram Bot API ``sendMessage`` at ``{api_url}/bot{token}/sendMessage``, plain text
    (no parse_mode, so nothing needs escaping), without link previews."""

    kind = "telegram"

    def __init__(self, token: str, chat_id: str | int, api_url: str = TELEGRAM_API_URL) -> None:
        if not token or any(c.isspace() or not c.isprintable() for c in token):
            raise ValueError("Telegram token is empty or has spaces or control characters")
        chat = str(chat_id).strip()
        if not _CHAT_ID.fullmatch(chat):
            raise ValueError("Telegram chat id is not a number or an @channel name")
        base = urlsplit(api_url or TELEGRAM_API_URL).path.rstrip("/")
        quoted = quote(token, safe=":")
        super().__init__(api_url or TELEGRAM_API_URL, f"{base}/bot{quoted}/sendMessage",
                         (token, quoted))
        self.chat_id = chat

    def payload(self, message: Message) -> dict:
        return {"chat_id": self.chat_id, "text": _clip(message.text, TELEGRAM_LIMIT),
                "disable_web_page_preview": True}

    def _hint(self, status: int, answer: Any) -> str:
        params = answer.get("parameters") if isinstance(answer, dict) else None
        moved = params.get("migrate_to_chat_id") if isinstance(params, dict) else None
        if moved is not None:
            return f" (the group is now a supergroup: set TELEGRAM_CHAT_ID={moved})"
        if status in (401, 404):
            return " (check TELEGRAM_TOKEN and TELEGRAM_API_URL)"
        if status in (400, 403):
            return (" (check TELEGRAM_CHAT_ID; the bot must be in the chat, or the user must "
                    "have sent it /start)")
        return ""


# -- one queue and one thread per destination --------------------------------------------

class _Outbox:
    """A destination's bounded queue, its delivery thread and its counters."""

    def __init__(self, destination: _HttpDestination, *, size: int, attempts: int,
                 base_delay: float, max_delay: float, max_retry_after: float, timeout: float,
                 rng: random.Random | None) -> None:
        self.destination = destination
        self.name = destination.name
        self.size = size
        self.attempts = max(1, int(attempts))
        self.base_delay, self.max_delay = base_delay, max_delay
        self.max_retry_after, self.timeout = max_retry_after, timeout
        self.rng = rng
        self._queue: deque[Message] = deque()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._deadline: float | None = None
        self.sent = self.failed = self.retried = self.dropped = 0
        self.last_error = ""
        self._in_flight = False
        self._down = False
        self._overflowing = False
        self._refusals_logged: set[int | None] = set()
        self._thread = threading.Thread(target=self._run, name=f"notify-{destination.kind}",
                                        daemon=True)
        self._thread.start()

    # the loop's side: never waits for the network
    def put(self, message: Message) -> bool:
        with self._cond:
            if self._closing.is_set():
                return False
            first_drop = False
            if len(self._queue) >= self.size:
                self._queue.popleft()
                self.dropped += 1
                first_drop, self._overflowing = not self._overflowing, True
            self._queue.append(message)
            self._cond.notify()
        if first_drop:
            log.warning("notifications to %s: queue full (%d), dropping the oldest until one "
                        "gets through (counted in the stats)", self.name, self.size)
        return True

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"sent": self.sent, "failed": self.failed, "retried": self.retried,
                    "dropped": self.dropped, "queued": len(self._queue),
                    "in_flight": int(self._in_flight), "down": self._down,
                    "last_error": self.last_error}

    def begin_close(self, deadline: float) -> None:
        with self._cond:
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
            self._closing.set()
            self._cond.notify_all()

    def join(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def unsent(self) -> int:
        with self._cond:
            return len(self._queue) + int(self._in_flight)

    # the delivery thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing.is_set():
                    self._cond.wait()
                if not self._queue or self._time_left() is None:
                    return
                message = self._queue.popleft()
                self._in_flight = True
            try:
                self._deliver(message)
            except Exception as exc:     # a bug here must not end the deliveries
                with self._cond:
                    self.failed += 1
                log.error("notifications to %s: unexpected error, message lost: %s", self.name,
                          self.destination.mask("".join(traceback.format_exception(exc))))
            finally:
                with self._cond:
                    self._in_flight = False

    def _time_left(self) -> float | None:
        """Seconds an attempt may take: `timeout`, less once closing (None: none left)."""
        if self._deadline is None:
            return self.timeout
        left = self._deadline - time.monotonic()
        return min(self.timeout, left) if left > 0.01 else None

    def _requeue(self, message: Message) -> None:
        with self._cond:
            self._queue.appendleft(message)

    def _deliver(self, message: Message) -> None:
        attempt = 0
        while True:
            timeout = self._time_left()
            if timeout is None:
                self._requeue(message)          # shutting down: counted as unsent
                return
            outcome = self.destination.deliver(message, timeout)
            if outcome.sent:
                with self._cond:
                    self.sent += 1
                    recovered, self._down, self._overflowing = self._down, False, False
                if recovered:
                    log.info("notifications to %s get through again", self.name)
                return
            with self._cond:
                self.last_error = outcome.why
                if outcome.status is not None and outcome.status < 500:
                    self._down = False          # it answers: not down, whatever it said
            if not outcome.retry:
                self._refused(message, outcome)
                return
            attempt += 1
            if attempt >= self.attempts or self._down:
                self._gave_up(message, outcome, attempt)
                return
            delay = full_jitter(attempt - 1, self.base_delay, self.max_delay, self.rng)
            if outcome.retry_after is not None:
                delay = max(delay, min(outcome.retry_after, self.max_retry_after))
            log.debug("notifications to %s: %s; retry %d of %d in %.2f s", self.name,
                      outcome.why, attempt, self.attempts - 1, delay)
            if not self._pause(delay):
                self._requeue(message)
                return
            with self._cond:
                self.retried += 1

    def _refused(self, message: Message, outcome: Outcome) -> None:
        with self._cond:
            self.failed += 1
            first = outcome.status not in self._refusals_logged
            self._refusals_logged.add(outcome.status)
        (log.warning if first else log.debug)(
            "notifications to %s: %s notification refused, %s; not retried (each status is "
            "logged once, failures count in the stats)", self.name, message.kind, outcome.why)

    def _gave_up(self, message: Message, outcome: Outcome, attempts: int) -> None:
        with self._cond:
            self.failed += 1
            was_down, self._down = self._down, True
        (log.debug if was_down else log.warning)(
            "notifications to %s failing (%s): %s notification lost after %d attempt(s); "
            "later ones are tried once each until one gets through", self.name, outcome.why,
            message.kind, attempts)

    def _pause(self, delay: float) -> bool:
        """Wait `delay` seconds before a retry; False when closing leaves no time for it."""
        end = time.monotonic() + delay
        if self._closing.wait(delay):
            deadline = self._deadline
            if deadline is None or end > deadline:
                return False
            time.sleep(max(0.0, end - time.monotonic()))
        return True


# -- the notifier ------------------------------------------------------------------------

class Notifier:
    """Sends the bot's events to its destinations from background threads; see the module
    docstring. `events` are the kinds sent (others are ignored); `label` (e.g. PAPER)
    prefixes every text."""

    def __init__(self, destinations: Sequence[_HttpDestination], *,
                 events: Iterable[str] = KINDS, label: str = "", queue_size: int = QUEUE_SIZE,
                 attempts: int = 4, base_delay: float = 1.0, max_delay: float = 30.0,
                 max_retry_after: float = 60.0, timeout: float = 5.0,
                 repeat_window: float = 300.0, secrets: Iterable[str] = (),
                 rng: random.Random | None = None) -> None:
        if not destinations:
            raise ValueError("a Notifier needs at least one destination")
        self.events = frozenset(events)
        unknown = self.events - set(KINDS)
        if unknown:
            raise ValueError(f"unknown notification kinds {sorted(unknown)} (known: "
                             f"{', '.join(KINDS)})")
        self.label = label
        self.repeat_window = repeat_window
        self._redactor = redaction.Redactor(secrets)   # compiled once: cheap per message
        self.suppressed = 0
        self._recent: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._outboxes: list[_Outbox] = []
        names: set[str] = set()
        for destination in destinations:
            box = _Outbox(destination, size=queue_size, attempts=attempts,
                          base_delay=base_delay, max_delay=max_delay,
                          max_retry_after=max_retry_after, timeout=timeout, rng=rng)
            while box.name in names:
                box.name += "+"
            names.add(box.name)
            self._outboxes.append(box)

    def __repr__(self) -> str:
        return f"<Notifier to {', '.join(b.name for b in self._outboxes)}>"

    @property
    def destinations(self) -> list[str]:
        return [b.name for b in self._outboxes]

    def notify(self, kind: str, text: str, **fields: Any) -> bool:
        """Queue `text` for every destination and return at once; False when the kind is
        not sent (NOTIFY_EVENTS), the text repeats within `repeat_window`, or after close."""
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r} (known: {', '.join(KINDS)})")
        if kind not in self.events or self._closed:
            return False
        if self._redactor:
            text, fields = self._redactor.mask(text), self._masked(fields)
        if kind in REPEATING and self.repeat_window > 0 and self._repeated(kind, text):
            return False
        text = f"[{self.label}] {text}" if self.label else text
        message = Message(kind, text, _json_safe(fields), time.time())
        queued = [box.put(message) for box in self._outboxes]
        return any(queued)

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redactor.mask(value)
        if isinstance(value, Mapping):
            return {k: self._masked(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._masked(v) for v in value]
        return value

    def _repeated(self, kind: str, text: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._recent.get((kind, text))
            if last is not None and now - last < self.repeat_window:
                self.suppressed += 1
                return True
            self._recent[(kind, text)] = now
            if len(self._recent) > 1000:
                self._recent = {k: t for k, t in self._recent.items()
                                if now - t < self.repeat_window}
            return False

    # one call per event, formatted as the terminal shows it
    def entry(self, position: Position) -> bool:
        return self.notify("entry", entry_text(position), symbol=position.symbol,
                           amount=position.amount, price=position.entry_price,
                           stop=position.stop_loss, target=position.take_profit,
                           fee=position.entry_fee, reason=position.entry_reason,
                           probability=position.probability)

    def exit(self, fill: Fill, trade: Trade, left: Position | None = None) -> bool:
        return self.notify("exit", exit_text(fill, trade, left), symbol=fill.symbol,
                           amount=fill.amount, price=fill.price, reason=trade.exit_reason,
                           profit=trade.profit, return_pct=trade.return_pct,
                           left=left.amount if left is not None else 0.0)

    def protection(self, lock: Lock, now_ms: int | None = None) -> bool:
        return self.notify("protection", lock_text(lock, now_ms), scope=lock.scope,
                           lock=lock.kind, until_ms=lock.until_ms, reason=lock.reason)

    def kill_switch(self, reason: str) -> bool:
        return self.notify("kill_switch", kill_switch_text(reason), reason=reason)

    def error(self, message: str) -> bool:
        return self.notify("error", error_text(message), message=message)

    def daily_summary(self, day_ms: int, trades: Sequence[Trade], equity: float, quote: str,
                      start_equity: float | None = None, open_positions: int = 0) -> bool:
        wins = sum(1 for t in trades if t.profit > 0)
        return self.notify("daily_summary", daily_summary_text(
            day_ms, trades, equity, quote, start_equity, open_positions),
            day=utc_text(day_ms)[:10], trades=len(trades), wins=wins,
            profit=sum(t.profit for t in trades), equity=equity,
            open_positions=open_positions)

    def daily_summary_once(self, store: Any, now_ms: int, equity: float, quote: str,
                           open_positions: int) -> None:
        """Once per UTC day (remembered in the store's meta, so a restart sends no second
        one): the day before's closed trades and equity."""
        today = now_ms // DAY_MS
        last = store.get_meta("summary_day")
        if last is not None and int(last) < today:
            start_ms = (today - 1) * DAY_MS
            trades = [t for t in store.trades_since(start_ms) if t.exit_time_ms < today * DAY_MS]
            start = store.get_meta("day_start_equity") if int(last) == today - 1 else None
            self.daily_summary(start_ms, trades, equity, quote,
                               float(start) if start is not None else None, open_positions)
        if last is None or int(last) < today:
            store.set_meta("summary_day", str(today))
            store.set_meta("day_start_equity", repr(equity))

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per destination (by scheme and host): sent, failed, retried, dropped (queue
        overflow), queued, in_flight, down, last_error."""
        return {box.name: box.stats() for box in self._outboxes}

    def report(self) -> str:
        """One line per destination, for the performance report."""
        lines = []
        for name, s in self.stats().items():
            lines.append(f"{name}: {s['sent']} sent, {s['failed']} failed, {s['retried']} "
                         f"retried, {s['dropped']} dropped, {s['queued']} queued"
                         + (f" (failing: {s['last_error']})" if s["down"] else ""))
        if self.suppressed:
            lines.append(f"{self.suppressed} repeated message(s) not sent again")
        return "\n".join(lines)

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking messages, deliver what the queues hold until `timeout` seconds from
        now, and return by then (a thread still waiting on a receiver is left to end).
        Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + max(0.0, timeout)
        for box in self._outboxes:
            box.begin_close(deadline)
        for box in self._outboxes:
            box.join(deadline)
        for box in self._outboxes:
            left = box.unsent()
            if left:
                log.warning("notifications to %s: %d message(s) not delivered before shutdown",
                            box.name, left)


def from_config(config: Any, **options: Any) -> Notifier | None:
    """The Notifier that NOTIFY_WEBHOOK_URL and TELEGRAM_TOKEN + TELEGRAM_CHAT_ID ask for,
    sending the NOTIFY_EVENTS kinds, labelled with the mode; None when neither is set.

    The configuration's secrets (``redaction.secrets_of``: API keys, the LLM key, the
    token; the webhook URL by its credential parts only) are masked in every text sent, so
    an error message quoting a request cannot carry a key out of the bot."""
    destinations: list[_HttpDestination] = []
    url = getattr(config, "notify_webhook_url", "") or ""
    token = getattr(config, "telegram_token", "") or ""
    chat_id = str(getattr(config, "telegram_chat_id", "") or "")
    if url:
        destinations.append(WebhookDestination(url))
    if token or chat_id:
        if not (token and chat_id):
            raise ValueError("TELEGRAM_TOKEN and TELEGRAM_CHAT_ID must be set together")
        destinations.append(TelegramDestination(
            token, chat_id, getattr(config, "telegram_api_url", "") or TELEGRAM_API_URL))
    if not destinations:
        return None
    events = getattr(config, "notify_events", KINDS)
    if isinstance(events, str):
        events = [e.strip().lower() for e in events.split(",") if e.strip()]
    mode = getattr(config, "mode", "")
    options.setdefault("label", mode.upper() if isinstance(mode, str) else "")
    if "secrets" not in options:
        known = [v for v in redaction.secrets_of(config) if v != url]
        options["secrets"] = [*known, token, *url_secrets(url)]
    return Notifier(destinations, events=events, **options)


# -- the texts ---------------------------------------------------------------------------

def _quote_of(symbol: str) -> str:
    return symbol.split("/")[1] if "/" in symbol else ""


def _held(ms: int) -> str:
    """A duration as 45s, 12m, 3h 05m or 2d 4h."""
    s = max(0, int(ms // 1000))
    if s < 60:
        return f"{s}s"
    m = s // 60
    if m < 60:
        return f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def entry_text(position: Position) -> str:
    """OPEN BTC/USDT 0.0153 @ 65000.5 / stop 63000 | target 68000 | fee 0.99 USDT."""
    target = (f"target {position.take_profit:.8g}" if math.isfinite(position.take_profit)
              else "no target")
    model = (f" | model p {position.probability:.2f}" if position.probability is not None
             else "")
    return (f"OPEN {position.symbol} {position.amount:.8g} @ {position.entry_price:.8g}\n"
            f"stop {position.stop_loss:.8g} | {target} | fee {position.entry_fee:.4g} "
            f"{_quote_of(position.symbol)}{model}".rstrip())


def exit_text(fill: Fill, trade: Trade, left: Position | None = None) -> str:
    """CLOSE BTC/USDT 0.0153 @ 64000 stop_loss / PnL -12.34 USDT (-1.54%) | held 3h 05m."""
    rest = f"\n{left.amount:.8g} left open" if left is not None else ""
    return (f"CLOSE {fill.symbol} {fill.amount:.8g} @ {fill.price:.8g} {trade.exit_reason}\n"
            f"PnL {trade.profit:+.2f} {_quote_of(fill.symbol)} ({trade.return_pct:+.2f}%) | "
            f"held {_held(trade.exit_time_ms - trade.entry_time_ms)}{rest}")


def lock_text(lock: Lock, now_ms: int | None = None) -> str:
    """LOCK all pairs until 2024-05-01 12:00 UTC (45 min left) / stoploss guard: ..."""
    what = "all pairs" if lock.scope == ALL_PAIRS else lock.scope
    left = (f" ({max(0, -(-(lock.until_ms - now_ms) // 60_000))} min left)"
            if now_ms is not None else "")
    return f"LOCK {what} until {utc_text(lock.until_ms)}{left}\n{lock.reason}"


def kill_switch_text(reason: str) -> str:
    """KILL SWITCH: no new entries; open positions are still managed / the reason."""
    why = re.sub(r"^kill switch:\s*", "", reason.strip(), flags=re.IGNORECASE)
    return f"KILL SWITCH: no new entries; open positions are still managed\n{why}"


def error_text(message: str) -> str:
    """ERROR: the message on one line, at most 300 characters."""
    return "ERROR: " + _clip(" ".join(str(message).split()), 300)


def daily_summary_text(day_ms: int, trades: Sequence[Trade], equity: float, quote: str,
                       start_equity: float | None = None, open_positions: int = 0) -> str:
    """The UTC day's closed trades, win rate, PnL and fees, the best and worst trade, and
    equity (with its change over the day when `start_equity` is known)."""
    lines = [f"DAY {utc_text(day_ms)[:10]} UTC"]
    if trades:
        wins = sum(1 for t in trades if t.profit > 0)
        profit = sum(t.profit for t in trades)
        fees = sum(t.entry_fee + t.exit_fee for t in trades)
        best = max(trades, key=lambda t: t.profit)
        worst = min(trades, key=lambda t: t.profit)
        lines.append(f"{len(trades)} trade{'s' if len(trades) != 1 else ''}, {wins} won "
                     f"({wins / len(trades):.0%}) | PnL {profit:+,.2f} {quote} | fees "
                     f"{fees:,.2f}")
        lines.append(f"best {best.profit:+,.2f} {best.symbol} | worst {worst.profit:+,.2f} "
                     f"{worst.symbol}")
    else:
        lines.append("no closed trades")
    change = (f" ({equity / start_equity - 1:+.2%} today)"
              if start_equity and start_equity > 0 else "")
    lines.append(f"equity {equity:,.2f} {quote}{change} | {open_positions} open")
    return "\n".join(lines)

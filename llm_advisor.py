"""Optional LLM confirmation of entries through any OpenAI-compatible chat-completions server.

``LLMAdvisor.confirm(states)`` asks about the first LLM_MAX_CALLS_PER_CYCLE states (ranked
by the caller), cache first (llm_cache.py), the misses in parallel on a bounded thread
pool, each call within LLM_TIMEOUT (wall clock), the whole cycle within LLM_CYCLE_BUDGET.
The answer must be the JSON object {"take": bool, "confidence": 0..1, "reason": "..."}.
A timeout, HTTP or connection error, invalid JSON, wrong fields or out-of-range values is a
failure: counted, logged once per kind, and decided by LLM_ON_FAILURE: "reject" (the
default: an entry the user asked to have confirmed is never made without a confirmation)
or "model" (the model decides alone). confirm() never raises and never waits longer than
the budget; a call still running then finishes in the background and fills the cache.
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import re
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import redaction
from llm_cache import LLMCache, LLMDecision

__all__ = ["LLMAdvisor", "LLMDecision", "prompt_payload", "build_messages",
           "parse_answer", "AnswerError"]

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You confirm or refuse long entries for a crypto trading bot. The user sends one market "
    "state as JSON: pair, last closed price, price changes over 1/6/24 candles in %, RSI(14), "
    "MACD histogram in ATR units, Bollinger position (0 lower band, 1 upper), ATR in % of "
    "price, 10-candle momentum in %, volume / 20-candle average, the bot's model probability "
    "of a profitable trade, open/max positions. Reply with exactly one JSON object and "
    'nothing else: {"take": true or false, "confidence": number from 0 to 1, '
    '"reason": "one short line"}.')
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.DOTALL)
_LATENCY_WINDOW = 1000


class AnswerError(Exception):
    """A failed LLM call; kind is the failure kind counted in the report."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


def _sig(x: Any, digits: int = 3) -> float | None:
    """x rounded to `digits` significant digits (None for missing / non-finite)."""
    if x is None or not math.isfinite(float(x)):
        return None
    return float(f"{float(x):.{digits}g}")


def prompt_payload(state: Mapping[str, Any]) -> dict[str, Any]:
    """The compact numeric market state the LLM sees (and the test server decides on)."""
    atr_price = state["atr_pct"] * state["price"] / 100.0
    macd_atr = state["macd_hist"] / atr_price if atr_price else math.nan
    return {
        "pair": state["symbol"], "price": _sig(state["price"], 6),
        "chg_1c_pct": _sig(state["change_1"]), "chg_6c_pct": _sig(state["change_6"]),
        "chg_24c_pct": _sig(state["change_24"]), "rsi": _sig(state["rsi"]),
        "macd_hist_atr": _sig(macd_atr), "bb_pos": _sig(state["bb_position"]),
        "atr_pct": _sig(state["atr_pct"]), "mom10_pct": _sig(state["momentum_pct"]),
        "vol_ratio": _sig(state["volume_ratio"]),
        "model_p": _sig(state.get("model_probability")),
        "positions": f"{int(state['open_positions'])}/{int(state['max_positions'])}",
    }


def build_messages(state: Mapping[str, Any]) -> list[dict[str, str]]:
    payload = json.dumps(prompt_payload(state), separators=(",", ":"))
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Take this long entry? {payload}"}]


def parse_answer(content: str) -> LLMDecision:
    """Validate the assistant's text (code fences tolerated); raises AnswerError."""
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        answer = json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        try:
            answer = json.loads(text[start:end + 1]) if 0 <= start < end else None
        except ValueError:
            answer = None
        if answer is None:
            raise AnswerError("invalid_json", f"answer is not JSON: {text[:80]!r}") from None
    if not isinstance(answer, dict):
        raise AnswerError("wrong_fields", f"answer is not an object: {text[:80]!r}")
    take, confidence, reason = (answer.get(k) for k in ("take", "confidence", "reason"))
    if (not isinstance(take, bool) or isinstance(confidence, bool)
            or not isinstance(confidence, (int, float)) or not isinstance(reason, str)):
        raise AnswerError("wrong_fields", f"need take: bool, confidence: number, reason: "
                                          f"string; got {text[:120]!r}")
    if not 0.0 <= confidence <= 1.0:
        raise AnswerError("out_of_range", f"confidence {confidence} outside 0..1")
    return LLMDecision(take, float(confidence), " ".join(reason.split())[:200] or "-", "llm")


def _completion_content(raw: bytes) -> tuple[str, int]:
    """(assistant text, usage.total_tokens) of a chat-completions response body."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise AnswerError("invalid_json", f"response body is not JSON: {raw[:80]!r}") from None
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise AnswerError("wrong_fields", f"no choices[0].message.content in {raw[:120]!r}") from None
    if not isinstance(content, str):
        raise AnswerError("wrong_fields", "message content is not a string")
    usage = body.get("usage") if isinstance(body, dict) else None
    tokens = usage.get("total_tokens", 0) if isinstance(usage, dict) else 0
    return content, int(tokens) if isinstance(tokens, (int, float)) else 0


def _model_decides(state: Mapping[str, Any], reason: str) -> LLMDecision:
    """Take the entry the model chose, with the model's probability as confidence."""
    return LLMDecision(True, float(state.get("model_probability") or 0.5), reason, "fallback")


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1)]


class LLMAdvisor:
    """Confirms trade candidates with an OpenAI-compatible LLM, cached by market state."""

    def __init__(self, config: Any, monitor: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.provider = str(getattr(config, "llm_provider", "none"))
        self.base_url = str(getattr(config, "llm_base_url", "http://127.0.0.1:11434/v1"))
        self.model = str(getattr(config, "llm_model", "llama3.1:8b"))
        self._api_key = str(getattr(config, "llm_api_key", "") or "")
        self.timeout = float(getattr(config, "llm_timeout", 10.0))
        self.cycle_budget = float(getattr(config, "llm_cycle_budget", 20.0))
        self.max_calls = int(getattr(config, "llm_max_calls_per_cycle", 3))
        self.on_failure = str(getattr(config, "llm_on_failure", "reject"))
        if self.on_failure not in ("reject", "model"):
            raise ValueError(f"llm_on_failure={self.on_failure!r}: allowed reject, model")
        self.cache = LLMCache.from_config(config, clock)
        self.monitor = monitor
        self._pool = ThreadPoolExecutor(max_workers=min(2 * self.max_calls, 32),
                                        thread_name_prefix="llm")
        self._json_mode = True
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._errors: Counter[str] = Counter()
        self._decisions: Counter[str] = Counter()
        self._logged_kinds: set[str] = set()
        self._calls = self._ok = self._tokens = self._cycles = 0
        if monitor is not None and hasattr(monitor, "add_section"):
            monitor.add_section("LLM advisor", self.report)

    def __repr__(self) -> str:
        return f"LLMAdvisor(provider={self.provider!r}, model={self.model!r})"

    @property
    def enabled(self) -> bool:
        return self.provider != "none"

    def confirm(self, states: Sequence[Mapping[str, Any]]) -> dict[str, LLMDecision]:
        """Decision per symbol for every state given; never raises, waits <= the budget.

        States past LLM_MAX_CALLS_PER_CYCLE are refused ("not consulted"); with the LLM
        disabled every state is taken (the model decides alone).
        """
        try:
            return self._confirm(list(states))
        except Exception as exc:  # noqa: BLE001 - the trading loop must go on
            self._failure("internal", repr(exc))
            try:
                return {s["symbol"]: self._fallback("internal", s) for s in states}
            except Exception:  # noqa: BLE001
                return {}

    def report(self) -> str:
        """Calls, latency percentiles, errors by kind, tokens and the cache statistics."""
        with self._lock:
            lat = sorted(self._latencies)
            calls, ok, tokens, cycles = self._calls, self._ok, self._tokens, self._cycles
            errors, decisions = dict(self._errors), dict(self._decisions)
        lines = [f"LLM advisor ({self.provider}, {self.model}): {cycles} cycles, {calls} calls "
                 f"({ok} ok, {calls - ok} failed)",
                 f"  latency p50 {_percentile(lat, 50):.3f} s, p95 {_percentile(lat, 95):.3f} s,"
                 f" p99 {_percentile(lat, 99):.3f} s (last {len(lat)} calls)",
                 "  errors: " + (", ".join(f"{k} {v}" for k, v in sorted(errors.items()))
                                 or "none") + f" (on failure: {self.on_failure})",
                 f"  tokens used {tokens} ({tokens / ok if ok else 0:.0f} per answer)",
                 "  decisions: " + ", ".join(f"{k} {decisions.get(k, 0)}"
                                             for k in ("take", "refuse", "fallback")),
                 "  " + self.cache.report().replace("\n", "\n  ")]
        return "\n".join(lines)

    def close(self, wait: bool = False) -> None:
        """Stop accepting calls; running calls end within their timeout (waited for if wait)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # -- internals ---------------------------------------------------------------------

    def _confirm(self, states: list[Mapping[str, Any]]) -> dict[str, LLMDecision]:
        if not self.enabled:
            return {s["symbol"]: _model_decides(s, "LLM disabled") for s in states}
        started = time.monotonic()
        consulted, skipped = states[:self.max_calls], states[self.max_calls:]
        results: dict[str, LLMDecision] = {}
        pending: dict[str, tuple[Mapping[str, Any], Future]] = {}
        for state in consulted:
            hit = self.cache.get(state)
            if hit is not None:
                results[state["symbol"]] = hit
            else:
                pending[state["symbol"]] = (state, self._pool.submit(self._ask, state))
        if pending:
            wait([f for _, f in pending.values()],
                 timeout=max(0.0, started + self.cycle_budget - time.monotonic()))
        for symbol, (state, future) in pending.items():
            if future.done():
                outcome = future.result()
            else:
                future.cancel()  # a queued call is dropped; a running one fills the cache
                self._failure("cycle_budget",
                              f"no answer within LLM_CYCLE_BUDGET {self.cycle_budget:g} s")
                outcome = "cycle_budget"
            results[symbol] = (outcome if isinstance(outcome, LLMDecision)
                               else self._fallback(outcome, state))
        for state in skipped:
            results[state["symbol"]] = LLMDecision(
                False, 0.0, "not consulted: beyond LLM_MAX_CALLS_PER_CYCLE", "fallback")
        self._tally(results.values(), time.monotonic() - started)
        return results

    def _ask(self, state: Mapping[str, Any]) -> LLMDecision | str:
        """One chat-completions call; the answer is cached. On failure: its kind (counted)."""
        started = time.monotonic()
        try:
            status, raw = self._post(self._request_body(state))
            if status == 400 and self._json_mode and b"response_format" in raw:
                self._json_mode = False
                logger.info("LLM server refuses response_format; asking without it")
                status, raw = self._post(self._request_body(state))
            latency = time.monotonic() - started
            if latency > self.timeout:
                raise AnswerError("timeout", f"answer after {latency:.1f} s > LLM_TIMEOUT")
            if status != 200:
                raise AnswerError("http_error", f"HTTP {status}: {raw[:160]!r}")
            content, tokens = _completion_content(raw)
            decision = parse_answer(content)
        except AnswerError as exc:
            return self._call_failed(exc.kind, exc.detail, started)
        except TimeoutError:
            return self._call_failed("timeout", f"no answer within LLM_TIMEOUT {self.timeout:g} s",
                                     started)
        except (OSError, http.client.HTTPException) as exc:
            return self._call_failed("connection", f"{type(exc).__name__}: {exc}", started)
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed state; never kill the pool
            return self._call_failed("internal", repr(exc), started)
        self.cache.put(state, decision, tokens, latency)
        with self._lock:
            self._calls += 1
            self._ok += 1
            self._tokens += tokens
            self._latencies.append(latency)
        self._record_timing("llm_call", latency)
        return decision

    def _request_body(self, state: Mapping[str, Any]) -> bytes:
        body: dict[str, Any] = {"model": self.model, "messages": build_messages(state),
                                "temperature": 0, "max_tokens": 120}
        if self._json_mode:
            body["response_format"] = {"type": "json_object"}
        return json.dumps(body).encode()

    def _post(self, body: bytes) -> tuple[int, bytes]:
        url = urlsplit(self.base_url.rstrip("/") + "/chat/completions")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise AnswerError("connection", "LLM_BASE_URL must be an http(s) URL")
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = cls(url.hostname, url.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            conn.request("POST", url.path + (f"?{url.query}" if url.query else ""), body, headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _call_failed(self, kind: str, detail: str, started: float) -> str:
        with self._lock:
            self._calls += 1
            self._latencies.append(time.monotonic() - started)
        self._failure(kind, detail)
        return kind

    def _failure(self, kind: str, detail: str) -> None:
        """Count a failure; the first of each kind is logged as a warning (key redacted).

        redaction.mask hides the key in any form (URL-, JSON-, hex-, base64-encoded) and
        any piece of it of redaction.MIN_PIECE characters or more, not only the exact key.
        """
        detail = redaction.mask(detail, (self._api_key,))
        with self._lock:
            self._errors[kind] += 1
            first = kind not in self._logged_kinds
            self._logged_kinds.add(kind)
        action = ("the model decides alone" if self.on_failure == "model"
                  else "no confirmation, no entry")
        (logger.warning if first else logger.debug)(
            "LLM %s: %s (%s; each kind is logged once, counts in the performance report)",
            kind, detail, action)

    def _fallback(self, kind: str, state: Mapping[str, Any]) -> LLMDecision:
        if self.on_failure == "model":
            return _model_decides(state, f"LLM {kind}: the model decides alone")
        return LLMDecision(False, 0.0, f"LLM {kind}: no confirmation", "fallback")

    def _tally(self, decisions: Any, seconds: float) -> None:
        with self._lock:
            self._cycles += 1
            for d in decisions:
                self._decisions["fallback" if d.source == "fallback"
                                else "take" if d.take else "refuse"] += 1
        self._record_timing("llm_cycle", seconds)

    def _record_timing(self, name: str, seconds: float) -> None:
        if self.monitor is not None and hasattr(self.monitor, "record"):
            self.monitor.record(name, seconds)

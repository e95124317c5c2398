"""A small OpenAI-compatible chat-completions server for tests, the bench and the replay.

It speaks ``POST /v1/chat/completions`` on 127.0.0.1 and answers as a deterministic
function of the market state it parses from the prompt (:func:`decide`), so a replay can
compare a cached answer with what the server would answer now. Latency and failure modes
are configurable at any time with :meth:`ChatServer.set_mode`. :func:`replay` runs the
simulated market through the bot's candidate path, a real LLMAdvisor and this server, and
measures the cache's hit rate and agreement (README).
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from strategies import Strategy

MODES = ("ok", "http_500", "invalid_json", "wrong_fields", "out_of_range", "hang", "slow",
         "fenced", "no_json_mode")

# decide(): a linear "trader" score over the prompt's numbers, compared with a threshold.
# The weights and the threshold are deliberately not aligned with any cache bucket edge.
TAKE_THRESHOLD = 0.35


def decide(payload: dict[str, Any]) -> dict[str, Any]:
    """The answer a consistent LLM would give for one prompt payload (see llm_advisor)."""
    open_pos, max_pos = (int(x) for x in str(payload.get("positions", "0/1")).split("/"))
    if open_pos >= max_pos:
        return {"take": False, "confidence": 0.9, "reason": "no free position slot"}
    atr_pct = max(float(payload["atr_pct"]), 1e-9)
    p = payload.get("model_p")
    score = (4.0 * ((0.5 if p is None else float(p)) - 0.5)
             + (50.0 - float(payload["rsi"])) / 20.0
             + 0.5 * float(payload["macd_hist_atr"])
             - 0.8 * (float(payload["bb_pos"]) - 0.5)
             - 0.3 * float(payload["chg_1c_pct"]) / atr_pct
             + 0.2 * min(float(payload["vol_ratio"]), 3.0))
    margin = score - TAKE_THRESHOLD
    take = margin > 0
    confidence = round(0.5 + 0.45 * math.tanh(abs(margin)), 2)
    reason = f"score {score:.2f} {'above' if take else 'below'} {TAKE_THRESHOLD}"
    return {"take": take, "confidence": confidence, "reason": reason}


def payload_from_messages(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON object in the last user message (raises ValueError when there is none)."""
    text = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the user message")
    return json.loads(text[start:end + 1])


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            request = json.loads(raw)
        except ValueError:
            self._send(400, {"error": {"message": "request body is not JSON"}})
            return
        owner._record(self.path, dict(self.headers.items()), request)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"unknown path {self.path}"}})
            return
        with owner._lock:
            owner._in_flight += 1
            owner.max_concurrent = max(owner.max_concurrent, owner._in_flight)
        try:
            self._answer(owner, request)
        finally:
            with owner._lock:
                owner._in_flight -= 1

    def _answer(self, owner: "ChatServer", request: dict[str, Any]) -> None:
        mode, latency = owner.mode, owner.latency
        if mode == "hang":
            owner._stopping.wait()
            return
        if owner._stopping.wait(owner.slow_seconds if mode == "slow" else latency):
            return
        if mode == "http_500":
            self._send(500, {"error": {"message": "internal error (test mode)"}})
            return
        if mode == "no_json_mode" and "response_format" in request:
            self._send(400, {"error": {"message": "response_format is not supported"}})
            return
        try:
            payload = payload_from_messages(request["messages"])
            answer = owner.decide(payload)
        except (KeyError, ValueError, TypeError, StopIteration) as exc:
            self._send(400, {"error": {"message": f"cannot read the prompt: {exc}"}})
            return
        self._send(200, owner._completion(request, _content(mode, answer)))

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _content(mode: str, answer: dict[str, Any]) -> str:
    """The assistant message text for a failure mode (or the plain answer)."""
    if mode == "invalid_json":
        return "Sure! I would take this trade, confidence high."
    if mode == "wrong_fields":
        return json.dumps({"decision": "yes", "confidence": "high"})
    if mode == "out_of_range":
        return json.dumps({**answer, "confidence": 1.7})
    if mode == "fenced":
        return "```json\n" + json.dumps(answer) + "\n```"
    return json.dumps(answer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "ChatServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet when a client gave up (timeout) before the answer; loud otherwise."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ChatServer:
    """Chat-completions test server on 127.0.0.1 (port 0 = any free port).

    mode: one of MODES. latency: seconds before every answer. slow_seconds: the delay of
    mode "slow" (meant to exceed the client's timeout). "hang" never answers until stop().
    """

    def __init__(self, mode: str = "ok", latency: float = 0.0, slow_seconds: float = 2.0,
                 decide_fn: Callable[[dict[str, Any]], dict[str, Any]] = decide,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.decide = decide_fn
        self.set_mode(mode, latency, slow_seconds)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self._count = 0
        self._in_flight = 0
        self.max_concurrent = 0     # most requests being answered at the same time
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL for LLM_BASE_URL, e.g. "http://127.0.0.1:PORT/v1"."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def set_mode(self, mode: str, latency: float | None = None,
                 slow_seconds: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        self.mode = mode
        if latency is not None:
            self.latency = latency
        if slow_seconds is not None:
            self.slow_seconds = slow_seconds

    def start(self) -> "ChatServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="chat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release hanging or sleeping handlers."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._count

    def last_request(self) -> tuple[str, dict[str, str], dict[str, Any]]:
        """(path, headers, JSON body) of the latest request."""
        with self._lock:
            return self._requests[-1]

    def _record(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        with self._lock:
            self._count += 1
            self._requests.append((path, headers, body))
            del self._requests[:-100]

    def _completion(self, request: dict[str, Any], content: str) -> dict[str, Any]:
        prompt_tokens = sum(_tokens(str(m.get("content", ""))) for m in request["messages"])
        completion_tokens = _tokens(content)
        return {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
            "model": request.get("model", "test"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


# -- Replay: the simulated market through the bot's candidate path, the advisor and this server


@dataclass(frozen=True)
class ReplayResult:
    """Counts of one replay; every consult is one candidate state at one check."""
    seed: int
    steps: int
    consults: int
    llm_calls: int
    exact_hits: int          # same closed candle as the cached answer
    similar_hits: int        # a newer candle in the same buckets, within the TTL
    exact_agree: int
    similar_agree: int
    takes: int               # fresh answers that said take
    symbol_only_pairs: int   # baseline: reuse a pair's last answer once a new candle closed
    symbol_only_agree: int
    wall_seconds: float

    @property
    def hits(self) -> int:
        return self.exact_hits + self.similar_hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.consults if self.consults else 0.0

    @property
    def agreement(self) -> float:
        """Share of cache hits whose answer equals what the server would answer now."""
        return (self.exact_agree + self.similar_agree) / self.hits if self.hits else 1.0

    @property
    def similar_agreement(self) -> float:
        return self.similar_agree / self.similar_hits if self.similar_hits else 1.0

    @property
    def symbol_only_agreement(self) -> float:
        return self.symbol_only_agree / self.symbol_only_pairs if self.symbol_only_pairs else 1.0

    @property
    def take_rate(self) -> float:
        return self.takes / self.consults if self.consults else 0.0

    def line(self) -> str:
        return (f"seed {self.seed}: {self.consults} consults, hit rate {self.hit_rate:.1%} "
                f"(same candle {self.exact_hits}, similar state {self.similar_hits}), "
                f"agreement {self.agreement:.1%} (similar-state hits {self.similar_agreement:.1%};"
                f" reuse by pair only {self.symbol_only_agreement:.1%}), "
                f"{self.llm_calls} LLM calls, take rate {self.take_rate:.0%}")


class EveryPair(Strategy):
    """Every pair is a signal: the stand-in model alone picks (p > 0.5 and >= 0.55)."""
    name = "every_pair"

    def entry_score(self, x):
        return np.zeros(np.shape(x["close"]))


def stand_in_model(features: np.ndarray, keys: Sequence[tuple]) -> np.ndarray:
    """A fixed stand-in for the trained model's probability (the replay needs no training)."""
    from features import FEATURE_NAMES

    f = {name: features[:, i].astype(np.float64) for i, name in enumerate(FEATURE_NAMES)}
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (f["momentum_pct"] / (f["atr_pct"] * math.sqrt(10.0))
             - (f["rsi"] - 50.0) / 25.0 + 0.5 * f["log_volume_ratio"])
    return 0.5 + 0.2 * np.tanh(np.nan_to_num(z))


def replay(seed: int = 1, pairs: int = 20, candles: int = 288, *, ttl: float | None = None,
           tolerances: Any = None, top_n: int = 3, check_interval: float = 60.0,
           timeframe: str = "5m", warmup: int = 120, window: int = 300,
           open_positions: int = 1, max_positions: int = 5,
           data: dict[str, np.ndarray] | None = None) -> ReplayResult:
    """Replay `candles` simulated candles, checking every `check_interval` market seconds.

    Each check builds the states of the top candidates from closed candles only (the bot's
    own path: indicators.compute_all -> strategy.find_candidates with a stand-in model ->
    strategy.llm_state) and asks a real LLMAdvisor (cache, shipped defaults unless ttl /
    tolerances are given) backed by this server; each answer is compared with what the
    server would answer for the state now (decide()). data: candles to use instead of
    sim_market.simulated_ohlcv (symbol -> (T, 6), same timestamps for every pair).
    """
    from indicators import compute_all
    from llm_advisor import LLMAdvisor, build_messages
    from llm_cache import DEFAULT_TTL
    from domain import StrategyParams

    started = time.perf_counter()
    if data is None:
        from sim_market import simulated_ohlcv

        data = simulated_ohlcv(pairs, seed, timeframe, warmup + candles)
    symbols = tuple(sorted(data))
    arr = np.stack([np.asarray(data[s], dtype=np.float64) for s in symbols])  # (P, T, 6)
    ts = arr[0, :, 0].astype(np.int64)
    tf_ms = int(np.median(np.diff(ts)))
    params = StrategyParams(timeframe_ms=tf_ms)
    now = [ts[warmup] / 1000.0]
    counts = dict(consults=0, exact_hits=0, similar_hits=0, exact_agree=0, similar_agree=0,
                  takes=0, symbol_only_pairs=0, symbol_only_agree=0)
    answered: set[tuple[str, int]] = set()
    last_fresh: dict[str, tuple[int, bool]] = {}
    with ChatServer() as server:
        advisor = LLMAdvisor(SimpleNamespace(
            llm_provider="openai", llm_base_url=server.url, llm_model="replay", llm_api_key="",
            llm_timeout=10.0, llm_cycle_budget=20.0, llm_max_calls_per_cycle=top_n,
            llm_cache_ttl=DEFAULT_TTL if ttl is None else ttl, llm_cache_max_size=1000,
            llm_on_failure="reject"), clock=lambda: now[0])
        if tolerances is not None:
            advisor.cache.tolerances = tolerances
        steps = int(candles * tf_ms / 1000 / check_interval)
        closed_before, states = -1, []
        for step in range(steps):
            now_ms = int(ts[warmup]) + 1000 + int(step * check_interval * 1000)
            now[0] = now_ms / 1000.0
            closed = int(np.searchsorted(ts + tf_ms, now_ms, side="right"))
            if closed != closed_before:
                block = arr[:, max(0, closed - window):closed]
                states = _candidate_states(block, symbols, params, top_n, open_positions,
                                           max_positions, compute_all)
                closed_before = closed
            decisions = advisor.confirm(states)
            for s in states:
                fresh = bool(decide(payload_from_messages(build_messages(s)))["take"])
                _score(counts, answered, last_fresh, s, decisions[s["symbol"]], fresh)
        llm_calls = server.request_count
        advisor.close()
    return ReplayResult(seed=seed, steps=steps, llm_calls=llm_calls,
                        wall_seconds=time.perf_counter() - started, **counts)


def _candidate_states(block: np.ndarray, symbols: tuple[str, ...], params: Any, top_n: int,
                      open_positions: int, max_positions: int,
                      compute_all: Callable) -> list[dict[str, Any]]:
    """States of the top candidates from a (P, T, 6) block of closed candles."""
    from features import HISTORY_NEEDED
    from strategy import MarketView, ModelFilter, find_candidates, llm_state

    ind = compute_all(*(block[:, :, k] for k in range(1, 6)))
    tf_ms = params.timeframe_ms
    view = MarketView(symbols=symbols, latest={k: v[:, -1] for k, v in ind.items()},
                      recent_close=block[:, -(HISTORY_NEEDED + 1):, 4],
                      now_ms=int(block[0, -1, 0]) + tf_ms)
    view.latest.update(zip(("open", "high", "low", "close", "volume"),
                           (block[:, -1, k] for k in range(1, 6))))
    candidates, _ = find_candidates(view, EveryPair(), params, set(),
                                    ModelFilter(stand_in_model, 1.0, 1.0))
    index = {s: i for i, s in enumerate(symbols)}
    return [llm_state(view, index[c.symbol], c.probability, open_positions, max_positions)
            for c in candidates[:top_n]]


def _score(counts: dict[str, int], answered: set[tuple[str, int]],
           last_fresh: dict[str, tuple[int, bool]], state: dict[str, Any], decision: Any,
           fresh: bool) -> None:
    symbol, candle_ts = state["symbol"], state["candle_ts"]
    counts["consults"] += 1
    counts["takes"] += fresh
    if decision.source == "llm":
        if decision.take != fresh:
            raise AssertionError(f"server answered {decision} for {symbol}, decide() {fresh}")
        answered.add((symbol, candle_ts))
    elif decision.source == "cache":
        kind = "exact" if (symbol, candle_ts) in answered else "similar"
        counts[f"{kind}_hits"] += 1
        counts[f"{kind}_agree"] += decision.take == fresh
    else:
        raise AssertionError(f"replay call failed: {decision}")
    previous = last_fresh.get(symbol)
    if previous is not None and previous[0] != candle_ts:
        counts["symbol_only_pairs"] += 1
        counts["symbol_only_agree"] += previous[1] == fresh
    last_fresh[symbol] = (candle_ts, fresh)

"""LLM confirmation and its market-state cache, against the real chat server on 127.0.0.1."""
from __future__ import annotations

import logging
import random
import tempfile
import threading
import time
import types
import unittest
import zlib

from llm_advisor import AnswerError, LLMAdvisor, build_messages, parse_answer, prompt_payload
from llm_cache import CacheTolerances, LLMCache, LLMDecision
from tests.chat_server import ChatServer, decide, payload_from_messages

BASE_STATE = dict(symbol="ETH/USDT", candle_ts=1_700_000_000_000, price=2000.0, change_1=0.05,
                  change_6=0.2, change_24=-0.4, rsi=44.0, macd_hist=0.4, bb_position=0.4,
                  atr_pct=0.3, momentum_pct=0.1, volume_ratio=1.2, model_probability=0.62,
                  open_positions=1, max_positions=5)
TAKE_STATE = BASE_STATE                                       # decide() -> take
REFUSE_STATE = dict(BASE_STATE, symbol="XRP/USDT", rsi=78.0, bb_position=0.97,
                    model_probability=0.5)                    # decide() -> refuse
CANDLE_MS = 300_000


def state(**changes: object) -> dict:
    return dict(BASE_STATE, **changes)


def next_candle(s: dict, n: int = 1, **changes: object) -> dict:
    return dict(s, candle_ts=s["candle_ts"] + n * CANDLE_MS, **changes)


def answer(take: bool = True, confidence: float = 0.5) -> LLMDecision:
    return LLMDecision(take, confidence, "test", "llm")


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(url: str = "http://127.0.0.1:9/v1", **changes: object) -> types.SimpleNamespace:
    values = dict(llm_provider="openai", llm_base_url=url, llm_model="test-model",
                  llm_api_key="", llm_timeout=2.0, llm_cycle_budget=5.0,
                  llm_max_calls_per_cycle=3, llm_cache_ttl=90.0, llm_cache_max_size=1000,
                  llm_on_failure="reject")
    values.update(changes)
    return types.SimpleNamespace(**values)


class DecisionFunctionTest(unittest.TestCase):
    def test_reference_states(self) -> None:
        self.assertTrue(decide(prompt_payload(TAKE_STATE))["take"])
        self.assertFalse(decide(prompt_payload(REFUSE_STATE))["take"])
        self.assertFalse(decide(prompt_payload(state(open_positions=5)))["take"])

    def test_prompt_round_trip(self) -> None:
        payload = payload_from_messages(build_messages(TAKE_STATE))
        self.assertEqual(payload["pair"], "ETH/USDT")
        self.assertEqual(payload["positions"], "1/5")
        self.assertAlmostEqual(payload["macd_hist_atr"], 0.4 / (0.3 * 2000 / 100), places=3)


class ParseAnswerTest(unittest.TestCase):
    def test_valid_plain_and_fenced(self) -> None:
        for text in ('{"take": true, "confidence": 0.8, "reason": "trend"}',
                     '```json\n{"take": true, "confidence": 0.8, "reason": "trend"}\n```',
                     'Answer: {"take": true, "confidence": 0.8, "reason": "trend"}'):
            self.assertEqual(parse_answer(text), LLMDecision(True, 0.8, "trend", "llm"))

    def test_failures_by_kind(self) -> None:
        cases = {"no json here": "invalid_json", "[1, 2]": "wrong_fields",
                 '{"take": "yes", "confidence": 0.5, "reason": "x"}': "wrong_fields",
                 '{"take": true, "confidence": true, "reason": "x"}': "wrong_fields",
                 '{"take": true, "reason": "x"}': "wrong_fields",
                 '{"take": true, "confidence": -0.1, "reason": "x"}': "out_of_range",
                 '{"take": true, "confidence": NaN, "reason": "x"}': "out_of_range"}
        for text, kind in cases.items():
            with self.subTest(text=text), self.assertRaises(AnswerError) as caught:
                parse_answer(text)
            self.assertEqual(caught.exception.kind, kind)

    def test_decision_truthiness_is_take(self) -> None:
        self.assertTrue(answer(True))
        self.assertFalse(answer(False))
        self.assertFalse({"A": answer(False)}.get("A", False))


class CacheBucketTest(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.cache = LLMCache(ttl=600, clock=self.clock)
        self.cache.put(BASE_STATE, answer(), tokens=100, latency=0.5)
        self.clock.t += CANDLE_MS / 1000  # one candle later

    def test_small_move_is_a_hit(self) -> None:
        moved = next_candle(BASE_STATE, rsi=45.5, price=2000.5, change_1=0.1, bb_position=0.45,
                            model_probability=0.64, volume_ratio=1.4)
        self.assertEqual(self.cache.key(moved), self.cache.key(BASE_STATE))
        hit = self.cache.get(moved)
        self.assertEqual(hit, LLMDecision(True, 0.5, "test", "cache"))
        self.assertEqual(self.cache.stats()["similar_hits"], 1)

    def test_move_across_a_bucket_edge_misses(self) -> None:
        atr = BASE_STATE["atr_pct"]
        for change in (dict(rsi=51.0), dict(change_1=0.05 + 1.1 * atr),
                       dict(bb_position=0.8), dict(model_probability=0.66),
                       dict(atr_pct=0.7), dict(volume_ratio=2.5), dict(open_positions=4),
                       dict(symbol="BTC/USDT")):
            with self.subTest(change=change):
                self.assertIsNone(self.cache.get(next_candle(BASE_STATE, **change)))

    def test_price_moves_are_measured_in_volatility(self) -> None:
        quiet, wild = state(atr_pct=0.1, change_1=0.25), state(atr_pct=1.0, change_1=0.25)
        calm = state(atr_pct=1.0, change_1=0.0)
        self.assertNotEqual(self.cache.key(quiet)[1], self.cache.key(calm)[1])
        self.assertEqual(self.cache.key(wild)[1], self.cache.key(calm)[1])

    def test_missing_values_do_not_break_the_key(self) -> None:
        key = self.cache.key(state(rsi=float("nan"), model_probability=None, volume_ratio=0.0))
        self.assertIsNone(key[5])
        self.assertIsNone(key[10])

    def test_tolerances_are_configurable(self) -> None:
        self.assertNotEqual(self.cache.key(state(rsi=44.0)), self.cache.key(state(rsi=51.0)))
        wide = LLMCache(tolerances=CacheTolerances(rsi=40.0))
        self.assertEqual(wide.key(state(rsi=44.0)), wide.key(state(rsi=51.0)))
        self.assertEqual(CacheTolerances().scaled(2.0).rsi, 40.0)


class CacheTTLTest(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.cache = LLMCache(ttl=100, clock=self.clock)

    def test_same_candle_stays_valid_regardless_of_clock(self) -> None:
        self.cache.put(BASE_STATE, answer())
        self.clock.t += 10_000
        self.assertIsNotNone(self.cache.get(BASE_STATE))
        self.assertEqual(self.cache.stats()["exact_hits"], 1)
        self.assertIsNone(self.cache.get(next_candle(BASE_STATE)))
        self.assertEqual(self.cache.stats()["expired"], 1)
        self.assertEqual(len(self.cache), 0)

    def test_confidence_scales_the_ttl(self) -> None:
        self.assertEqual(self.cache.ttl_for(0.5), 100)
        self.assertEqual(self.cache.ttl_for(1.0), 150)
        self.assertEqual(self.cache.ttl_for(0.0), 50)
        sure, unsure = state(symbol="A/USDT"), state(symbol="B/USDT")
        self.cache.put(sure, answer(confidence=1.0))
        self.cache.put(unsure, answer(confidence=0.1))
        self.clock.t += 80  # within 1.5 x 100, past 0.6 x 100
        self.assertIsNotNone(self.cache.get(next_candle(sure)))
        self.assertIsNone(self.cache.get(next_candle(unsure)))
        self.clock.t += 80  # 160 s: past 150
        self.assertIsNone(self.cache.get(next_candle(sure, 2)))
        self.assertEqual(self.cache.stats()["expired"], 2)

    def test_zero_ttl_keeps_only_same_candle_reuse(self) -> None:
        cache = LLMCache(ttl=0, clock=self.clock)
        cache.put(BASE_STATE, answer(confidence=1.0))
        self.clock.t += 1
        self.assertIsNotNone(cache.get(BASE_STATE))
        self.assertIsNone(cache.get(next_candle(BASE_STATE)))

    def test_purge_drops_only_superseded_expired_entries(self) -> None:
        old, current = state(symbol="A/USDT"), state(symbol="B/USDT")
        self.cache.put(old, answer())
        self.cache.put(current, answer())
        self.cache.get(next_candle(old, rsi=80.0))  # a newer candle of A was seen (a miss)
        self.clock.t += 1000
        self.assertEqual(self.cache.purge_expired(), 1)
        self.assertEqual([k[0] for k in self.cache.keys()], ["B/USDT"])


class CacheSizeTest(unittest.TestCase):
    def test_lru_order_and_bound(self) -> None:
        cache = LLMCache(ttl=90, max_size=3, clock=FakeClock())
        a, b, c, d = (state(symbol=s) for s in ("A/USDT", "B/USDT", "C/USDT", "D/USDT"))
        for s in (a, b, c):
            cache.put(s, answer())
        self.assertIsNotNone(cache.get(a))          # A becomes most recently used
        cache.put(d, answer())                      # evicts B, the least recently used
        self.assertEqual([k[0] for k in cache.keys()], ["C/USDT", "A/USDT", "D/USDT"])
        self.assertIsNone(cache.get(b))
        self.assertEqual(cache.stats()["evictions"], 1)
        self.assertEqual(len(cache), 3)

    def test_expired_entries_go_before_live_ones(self) -> None:
        clock = FakeClock()
        cache = LLMCache(ttl=10, max_size=2, clock=clock)
        a, b, c = (state(symbol=s) for s in ("A/USDT", "B/USDT", "C/USDT"))
        cache.put(a, answer())
        cache.put(b, answer())
        cache.get(next_candle(a, rsi=90.0))         # A's candle is superseded
        clock.t += 100
        cache.put(c, answer())
        self.assertEqual([k[0] for k in cache.keys()], ["B/USDT", "C/USDT"])
        self.assertEqual((cache.stats()["evictions"], cache.stats()["expired"]), (0, 1))

    def test_stats_and_report(self) -> None:
        cache = LLMCache(ttl=90, clock=FakeClock())
        cache.put(BASE_STATE, answer(), tokens=120, latency=0.5)
        for _ in range(2):
            cache.get(BASE_STATE)
        s = cache.stats()
        self.assertEqual((s["hits"], s["misses"], s["tokens_saved"]), (2, 0, 240))
        self.assertAlmostEqual(s["time_saved"], 1.0)
        self.assertNotIn("hint", cache.report())
        for i in range(30):
            cache.get(state(symbol=f"X{i}/USDT"))
        self.assertIn("hint", cache.report())
        self.assertIn("hit rate below 50%", cache.report())


class CacheThreadSafetyTest(unittest.TestCase):
    def test_parallel_get_put(self) -> None:
        cache = LLMCache(ttl=30, max_size=40, clock=time.time)
        states = [next_candle(state(symbol=f"P{i % 60}/USDT", rsi=10.0 * (i % 7)), i % 3)
                  for i in range(300)]
        gets = [0] * 16
        errors: list[BaseException] = []
        start = threading.Barrier(16)

        def worker(n: int) -> None:
            rng = random.Random(n)
            try:
                start.wait()
                for _ in range(400):
                    s = rng.choice(states)
                    if rng.random() < 0.5:
                        cache.put(s, answer(confidence=rng.random()), tokens=10, latency=0.01)
                    else:
                        cache.get(s)
                        gets[n] += 1
                    if rng.random() < 0.01:
                        cache.purge_expired()
                        cache.report()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        s = cache.stats()
        self.assertEqual(s["hits"] + s["misses"], sum(gets))
        self.assertEqual(s["exact_hits"] + s["similar_hits"], s["hits"])
        self.assertLessEqual(s["size"], 40)
        self.assertGreater(s["evictions"], 0)
        self.assertEqual(s["tokens_saved"], 10 * s["hits"])


class AdvisorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ChatServer().start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def setUp(self) -> None:
        self.server.set_mode("ok", latency=0.0, slow_seconds=2.0)
        self.advisors: list[LLMAdvisor] = []

    def tearDown(self) -> None:
        for advisor in self.advisors:
            advisor.close()

    def advisor(self, **changes: object) -> LLMAdvisor:
        clock = changes.pop("clock", time.time)
        advisor = LLMAdvisor(config(self.server.url, **changes), clock=clock)
        self.advisors.append(advisor)
        return advisor

    def test_confirmed_and_refused_entries(self) -> None:
        advisor = self.advisor()
        before = self.server.request_count
        result = advisor.confirm([TAKE_STATE, REFUSE_STATE])
        self.assertEqual(result["ETH/USDT"].source, "llm")
        self.assertTrue(result["ETH/USDT"].take)
        self.assertEqual(result["XRP/USDT"].source, "llm")
        self.assertFalse(result["XRP/USDT"].take)
        self.assertEqual(self.server.request_count - before, 2)
        again = advisor.confirm([TAKE_STATE, REFUSE_STATE])
        self.assertEqual({d.source for d in again.values()}, {"cache"})
        self.assertEqual([d.take for d in again.values()], [True, False])
        self.assertEqual(self.server.request_count - before, 2)
        report = advisor.report()
        self.assertIn("2 calls (2 ok, 0 failed)", report)
        self.assertIn("p95", report)
        self.assertIn("LLM cache: 2 hits / 4 lookups", report)

    def test_request_shape_and_key(self) -> None:
        self.advisor().confirm([TAKE_STATE])
        _, headers, body = self.server.last_request()
        self.assertNotIn("Authorization", headers)
        self.assertEqual(body["response_format"], {"type": "json_object"})
        self.assertEqual(body["model"], "test-model")
        self.advisor(llm_api_key="sk-test-123").confirm([REFUSE_STATE])
        self.assertEqual(self.server.last_request()[1]["Authorization"], "Bearer sk-test-123")

    def test_each_failure_mode_with_both_policies(self) -> None:
        kinds = {"http_500": "http_error", "invalid_json": "invalid_json",
                 "wrong_fields": "wrong_fields", "out_of_range": "out_of_range",
                 "slow": "timeout"}
        for policy in ("reject", "model"):
            for mode, kind in kinds.items():
                with self.subTest(policy=policy, mode=mode):
                    self.server.set_mode(mode, slow_seconds=1.0)
                    advisor = self.advisor(llm_on_failure=policy, llm_timeout=0.2,
                                           llm_api_key="sk-secret-key")
                    with self.assertLogs("llm_advisor", level="DEBUG") as logs:
                        first = advisor.confirm([TAKE_STATE])["ETH/USDT"]
                        second = advisor.confirm([TAKE_STATE])["ETH/USDT"]  # not cached
                    for decision in (first, second):
                        self.assertEqual(decision.source, "fallback")
                        self.assertEqual(decision.take, policy == "model")
                        self.assertIn(kind, decision.reason)
                    warnings = [r for r in logs.records if r.levelno >= logging.WARNING]
                    self.assertEqual(len(warnings), 1)       # logged once per kind
                    self.assertNotIn("sk-secret-key", "\n".join(logs.output))
                    self.assertIn(f"{kind} 2", advisor.report())

    def test_slow_server_is_cut_off_and_the_cycle_goes_on(self) -> None:
        advisor = self.advisor(llm_timeout=0.2, llm_cycle_budget=10.0)
        advisor.confirm([REFUSE_STATE])                             # cached while fast
        self.server.set_mode("slow", slow_seconds=3.0)
        with self.assertLogs("llm_advisor", level="WARNING"):
            result = advisor.confirm([TAKE_STATE, REFUSE_STATE])
        self.assertEqual(result["ETH/USDT"].source, "fallback")
        self.assertIn("timeout", result["ETH/USDT"].reason)
        self.assertEqual(result["XRP/USDT"].source, "cache")
        self.assertIn("timeout 1", advisor.report())

    def test_cycle_budget_returns_and_late_answers_fill_the_cache(self) -> None:
        advisor = self.advisor(llm_timeout=5.0, llm_cycle_budget=0.1)
        self.server.set_mode("slow", slow_seconds=0.6)
        with self.assertLogs("llm_advisor", level="WARNING"):
            result = advisor.confirm([TAKE_STATE])["ETH/USDT"]
        self.assertEqual((result.source, result.take), ("fallback", False))
        self.assertIn("cycle_budget", result.reason)
        deadline = time.monotonic() + 10
        while len(advisor.cache) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(advisor.confirm([TAKE_STATE])["ETH/USDT"].source, "cache")

    def test_hanging_server_does_not_stall_the_cycle(self) -> None:
        with self.assertLogs("llm_advisor", level="WARNING") as logs:
            with ChatServer(mode="hang") as hanging:
                advisor = LLMAdvisor(config(hanging.url, llm_timeout=5.0, llm_cycle_budget=0.2))
                result = advisor.confirm([TAKE_STATE, REFUSE_STATE])
                self.assertEqual({d.source for d in result.values()}, {"fallback"})
                self.assertIn("cycle_budget 2", advisor.report())
            advisor.close(wait=True)  # stopping the server releases the hung calls
        self.assertIn("cycle_budget", logs.output[0])

    def test_calls_run_in_parallel(self) -> None:
        self.server.set_mode("ok", latency=0.4)
        self.server.max_concurrent = 0
        states = [state(symbol=f"{c}/USDT") for c in "ABC"]
        result = self.advisor(llm_cycle_budget=1.0).confirm(states)  # serial would be 1.2 s
        self.assertEqual({d.source for d in result.values()}, {"llm"})
        self.assertEqual(self.server.max_concurrent, 3)

    def test_at_most_max_calls_per_cycle(self) -> None:
        before = self.server.request_count
        states = [state(symbol=f"{c}/USDT") for c in "ABCDE"]
        result = self.advisor(llm_max_calls_per_cycle=2).confirm(states)
        self.assertEqual(self.server.request_count - before, 2)
        self.assertEqual([d.source for d in result.values()],
                         ["llm", "llm", "fallback", "fallback", "fallback"])
        self.assertFalse(any(result[s].take for s in ("C/USDT", "D/USDT", "E/USDT")))

    def test_fenced_answers_and_servers_without_json_mode(self) -> None:
        self.server.set_mode("fenced")
        self.assertEqual(self.advisor().confirm([TAKE_STATE])["ETH/USDT"].source, "llm")
        self.server.set_mode("no_json_mode")
        advisor = self.advisor()
        self.assertEqual(advisor.confirm([TAKE_STATE])["ETH/USDT"].source, "llm")
        self.assertNotIn("response_format", self.server.last_request()[2])
        self.assertTrue(advisor.confirm([REFUSE_STATE])["XRP/USDT"].source == "llm")

    def test_unreachable_server_and_bad_states_never_raise(self) -> None:
        with ChatServer() as gone:
            url = gone.url
        advisor = LLMAdvisor(config(url))
        self.advisors.append(advisor)
        with self.assertLogs("llm_advisor", level="WARNING"):
            result = advisor.confirm([TAKE_STATE])
        self.assertEqual(result["ETH/USDT"].source, "fallback")
        self.assertIn("connection", advisor.report())
        with self.assertLogs("llm_advisor", level="WARNING"):
            broken = self.advisor().confirm([{"symbol": "BAD/USDT"}])
        self.assertFalse(broken["BAD/USDT"].take)

    def test_disabled_lets_the_model_decide(self) -> None:
        before = self.server.request_count
        result = self.advisor(llm_provider="none").confirm([REFUSE_STATE])
        self.assertTrue(result["XRP/USDT"].take)
        self.assertEqual(self.server.request_count, before)

    def test_monitor_gets_a_section_and_timings(self) -> None:
        from performance_monitor import PerformanceMonitor

        monitor = PerformanceMonitor()
        advisor = LLMAdvisor(config(self.server.url), monitor=monitor)
        self.advisors.append(advisor)
        advisor.confirm([TAKE_STATE])
        self.assertEqual(monitor.stats("llm_call")["calls"], 1)
        self.assertIn("LLM cache:", monitor.report())


def gate_verdict(pair: str) -> bool:
    """The LLM of TradingLoopGateTest: a fixed take/refuse per pair (about half of each)."""
    return zlib.crc32(pair.encode()) % 2 == 0


class TradingLoopGateTest(unittest.TestCase):
    """The trading loop's LLM gate against a healthy server: every planned entry is asked
    about, the confirmed ones are bought and the refused ones are dropped (and counted)."""

    def test_confirmations_enter_and_refusals_are_dropped(self) -> None:
        from config import load_config
        from trader import Trader

        def verdict(payload: dict) -> dict:
            take = gate_verdict(payload["pair"])
            return {"take": take, "confidence": 0.8, "reason": "test gate"}

        chat = ChatServer(decide_fn=verdict).start()
        self.addCleanup(chat.stop)
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        env = {"DATA_DIR": tmp.name, "SIM_PAIRS": "15", "MAX_PAIRS": "15", "SIM_SPEED": "600",
               "SIM_SEED": "1", "CHECK_INTERVAL": "60", "CANDLE_HISTORY": "150",
               "ML_ENABLED": "false", "MARKET_SCAN_CACHE_DURATION": "0", "EDGE_GATE": "false",
               "STRATEGY": "trend_momentum", "STRATEGY_PARAMS": "min_volume_ratio=0",
               "ENABLE_PERFORMANCE_MONITORING": "false", "LLM_PROVIDER": "openai",
               "LLM_BASE_URL": chat.url, "LLM_MODEL": "test", "LLM_TIMEOUT": "5",
               "LLM_CYCLE_BUDGET": "10", "LLM_MAX_CALLS_PER_CYCLE": "10",
               "LLM_ON_FAILURE": "reject"}
        trader = Trader(load_config(None, env))
        self.addCleanup(trader.close)

        asked: list[tuple[list[dict], dict[str, LLMDecision]]] = []   # this cycle's consultations
        consult = trader.advisor.confirm

        def recording_confirm(states: list[dict]) -> dict[str, LLMDecision]:
            answers = consult(states)
            asked.append((list(states), dict(answers)))
            return answers

        trader.advisor.confirm = recording_confirm
        bought: set[str] = set()
        dropped: set[str] = set()
        gated_cycles = 0
        for _ in range(40):
            asked.clear()
            requests_before, held_before = chat.request_count, set(trader.positions)
            trader.run_cycle()
            if asked:
                gated_cycles += 1
                with self.subTest(cycle=trader.cycle):
                    self.check_gated_cycle(trader, asked, chat.request_count - requests_before,
                                           held_before)
                answers = {s: d for _, result in asked for s, d in result.items()}
                bought |= {s for s, d in answers.items() if d.take}
                dropped |= {s for s, d in answers.items() if not d.take}
            if bought and dropped:
                break
            trader.client.sim.advance(300)
        self.assertTrue(bought, f"a healthy LLM confirmed no entry in {gated_cycles} gated cycle(s)")
        self.assertTrue(dropped, f"the LLM refused no entry in {gated_cycles} gated cycle(s), so "
                        "the refusal path was not exercised")

    def check_gated_cycle(self, trader, asked, requests: int, held_before: set[str]) -> None:
        self.assertEqual(len(asked), 1, "the advisor is consulted once per cycle")
        [(states, answers)] = asked
        asked_symbols = [s["symbol"] for s in states]
        self.assertEqual(sorted(answers), sorted(asked_symbols), "one answer per state asked")
        self.assertEqual({d.source for d in answers.values()} - {"llm", "cache"}, set(),
                         f"a healthy LLM needed a fallback: {answers}")
        self.assertEqual(requests, sum(d.source == "llm" for d in answers.values()),
                         "one request per answer not taken from the cache")
        for symbol, decision in answers.items():
            self.assertEqual(decision.take, gate_verdict(symbol), f"{symbol}: {decision}")
        confirmed = {s for s, d in answers.items() if d.take}
        refused = {s for s, d in answers.items() if not d.take}
        entries = [e.symbol for e in trader.decisions.entries]
        unconfirmed = [s for s, r in trader.decisions.skipped if r == "not confirmed by the LLM"]
        self.assertEqual(sorted(entries), sorted(confirmed), "every confirmed entry goes ahead")
        self.assertEqual(sorted(unconfirmed), sorted(refused), "every refused entry is dropped")
        self.assertEqual(len(entries) + len(unconfirmed), len(states))
        opened = set(trader.positions) - held_before
        self.assertEqual(opened, confirmed, "exactly the confirmed entries were bought")


class ReplayTest(unittest.TestCase):
    def test_replay_meets_the_targets_with_shipped_defaults(self) -> None:
        from tests.chat_server import replay

        result = replay(seed=2, pairs=20, candles=144)   # 12 h of 5m candles, 720 checks
        self.assertGreaterEqual(result.hit_rate, 0.80, result.line())
        self.assertGreaterEqual(result.agreement, 0.95, result.line())
        self.assertGreater(result.similar_hits, 0, result.line())      # reuse across candles
        self.assertGreater(result.similar_agreement, result.symbol_only_agreement, result.line())
        self.assertTrue(0.2 < result.take_rate < 0.8, result.line())   # answers are mixed
        self.assertEqual(result.llm_calls, result.consults - result.hits)

    def test_config_default_ttl_is_the_replay_tuned_one(self) -> None:
        from config import load_config
        from llm_cache import DEFAULT_TTL

        self.assertEqual(load_config(env_file=None, environ={}).llm_cache_ttl, DEFAULT_TTL,
                         "config.py's LLM_CACHE_TTL default must match llm_cache.DEFAULT_TTL")


class KeyRedactionTest(unittest.TestCase):
    """The LLM key is masked in failure logs whole, in pieces and encoded, not only exact."""

    KEY = "sk-Zq7LmW2xR9tVbN4cYh8JpK3dF6gS1aE5"

    def _server(self, body: bytes):  # -> http.server.ThreadingHTTPServer
        import http.server

        class Refuse(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self.addCleanup(httpd.server_close)
        self.addCleanup(httpd.shutdown)
        return httpd

    def test_a_server_echoing_pieces_of_the_key_does_not_leak_them(self) -> None:
        import base64
        import urllib.parse
        key = self.KEY
        echoes = {"piece": key[5:19], "url-encoded": urllib.parse.quote(key + "/", safe=""),
                  "hex": key.encode().hex()[:40],
                  "base64": base64.b64encode(f"user:{key}".encode()).decode()}
        for form, echoed in echoes.items():
            with self.subTest(form=form):
                httpd = self._server(f'{{"error": "invalid key {echoed}"}}'.encode())
                url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
                advisor = LLMAdvisor(config(url, llm_api_key=key))
                self.addCleanup(advisor.close)
                with self.assertLogs("llm_advisor", level="DEBUG") as logs:
                    decision = advisor.confirm([TAKE_STATE])["ETH/USDT"]
                self.assertEqual(decision.source, "fallback")
                output = "\n".join(logs.output)
                self.assertIn("HTTP 401", output)
                self.assertIn("***", output)
                self.assertNotIn(echoed, output)
                for i in range(len(key) - 7):
                    self.assertNotIn(key[i:i + 8], output)

    def test_ordinary_details_are_left_alone(self) -> None:
        advisor = LLMAdvisor(config(llm_api_key=self.KEY))
        self.addCleanup(advisor.close)
        with self.assertLogs("llm_advisor", level="WARNING") as logs:
            advisor._failure("http_error", "HTTP 503: b'service unavailable, sk-Zq7L'")
        self.assertIn("HTTP 503: b'service unavailable, sk-Zq7L'", logs.output[0])


if __name__ == "__main__":
    unittest.main()

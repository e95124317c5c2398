"""Benchmarks: every performance figure beside its baseline, both measured in the same run.

    python bench.py                      # everything (the 500-cycle memory run dominates)
    python bench.py --only scan,cycle    # some sections (names: see --help)
    python bench.py --quick --json rows.json

Figures are medians of repeats; where two things are compared they take turns inside each
repeat, so the machine's noise hits both alike. Read the ratios, not the absolute values.
Not part of the test suite. The live path's fault soak and reconciliation is soak.py.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

import bench_kit
from bench_kit import (NOTES, PRINT_PEAK, ROOT, Row, bot_config, median_time, median_times,
                       print_table, repeats, run_child, simulated_exchange, time_row)

def random_candles(pairs: int, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random-walk (open, high, low, close, volume), each (pairs, n)."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (pairs, n)), axis=1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.005, (pairs, n)))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.005, (pairs, n)))
    return open_, high, low, close, rng.lognormal(5.0, 1.0, (pairs, n))


# ------------------------------------------------------------------------------ start-up

def bench_startup() -> list[Row]:
    """`python bot.py --help` against a bare interpreter start."""
    def run(*args: str) -> None:
        subprocess.run([sys.executable, *args], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    bot, bare = median_times(lambda: run("bot.py", "--help"), lambda: run("-c", "pass"))
    return [time_row("python bot.py --help, wall time", bot, "python -c pass", bare)]


# ------------------------------------------------------------------------------ simulated exchange

KLINES_PATH = "/api/v3/klines?symbol=ETHUSDT&interval=5m&limit=500"


def _hammer(url: str, path: str, threads: int = 4, seconds: float = 0.7) -> float:
    """Requests per second served to `threads` keep-alive http.client connections."""
    parts = urlsplit(url)
    counts = [0] * threads
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            while time.perf_counter() < deadline and not errors:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(f"{path}: HTTP {resp.status}")
                counts[i] += 1
        finally:
            conn.close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(errors[0])
    return sum(counts) / (time.perf_counter() - start)


def _round_trip_rows(url: str) -> list[Row]:
    import ccxt
    from sim_exchange import ccxt_overrides

    ex = ccxt.binance(ccxt_overrides(url) | {"enableRateLimit": False})
    ex.load_markets()
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    def bare() -> None:
        conn.request("GET", KLINES_PATH)
        conn.getresponse().read()

    try:
        t_ccxt, t_bare = median_times(lambda: ex.fetch_ohlcv("ETH/USDT", "5m", limit=500), bare,
                                      repeat=40)
    finally:
        conn.close()
        ex.session.close()
    return [time_row("ccxt fetch_ohlcv round-trip, 500 x 5m", t_ccxt,
                     "bare http.client GET, same URL", t_bare)]


def bench_sim() -> list[Row]:
    """Klines served per second (vs ping), ccxt round-trip (vs a bare HTTP GET)."""
    from sim_exchange import SimExchangeServer
    from sim_market import SimMarket

    with SimExchangeServer(SimMarket(pairs=50, seed=1, speed=60),
                           weight_limit_per_minute=10 ** 9) as server:
        _hammer(server.url, KLINES_PATH, seconds=0.2)          # warm-up
        klines, ping = [], []
        for _ in range(repeats(3)):
            klines.append(_hammer(server.url, KLINES_PATH))
            ping.append(_hammer(server.url, "/api/v3/ping"))
        rows = [Row("sim klines served (500 x 5m), 4 keep-alive clients",
                    statistics.median(klines), "req/s", "/api/v3/ping served, same clients",
                    statistics.median(ping), higher_is_better=True)]
        return rows + _round_trip_rows(server.url)


# ------------------------------------------------------------------------------ indicators

IND_PAIRS, IND_CANDLES = 50, 1000


def _talib_all(talib, o, h, l, c, v) -> None:
    """Every indicator of compute_all for one pair with TA-Lib (volume ratio from its SMA)."""
    talib.RSI(c, 14)
    for n in (12, 26, 50):
        talib.EMA(c, n)
    talib.MACD(c, 12, 26, 9)
    talib.BBANDS(c, 20, 2.0, 2.0, 0)
    talib.ATR(h, l, c, 14)
    talib.MOM(c, 10)
    np.divide(v, talib.SMA(v, 20))


def _whole_array_rows(talib) -> list[Row]:
    import indicators

    data = random_candles(IND_PAIRS, IND_CANDLES)
    per_pair = [tuple(np.ascontiguousarray(a[p]) for a in data) for p in range(IND_PAIRS)]
    fns = [lambda: indicators.compute_all(*data),
           lambda: [indicators.compute_all(*r) for r in per_pair]]
    if talib is not None:
        fns.append(lambda: [_talib_all(talib, *r) for r in per_pair])
    t = median_times(*fns, number=3)
    name = f"indicators {IND_PAIRS} pairs x {IND_CANDLES} candles, compute_all"
    rows = [time_row(name, t[0], "per-pair Python loop of compute_all", t[1])]
    if talib is not None:
        rows.append(time_row(name, t[0], "TA-Lib, per pair (C)", t[2]))
    return rows


def _streaming_rows(talib) -> list[Row]:
    import indicators

    number = 300
    extra = number * (7 + 1) + 1                 # enough new candles for every call
    data = random_candles(IND_PAIRS, IND_CANDLES + extra, seed=1)
    stream = indicators.StreamingIndicators.from_history(*(a[:, :IND_CANDLES] for a in data))
    t = iter(range(IND_CANDLES, IND_CANDLES + extra))

    def streaming() -> None:
        i = next(t)
        stream.update(*(a[:, i] for a in data))
        stream.latest()

    window = [a[:, extra - IND_CANDLES:extra] for a in data]
    fns = [streaming, lambda: indicators.compute_all(*window)]
    if talib is not None:
        fns.append(lambda: [_talib_all(talib, *(a[p] for a in window)) for p in range(IND_PAIRS)])
    times = median_times(*fns, number=[number] + [5] * (len(fns) - 1))
    name = f"one new candle, {IND_PAIRS} pairs: StreamingIndicators.update + latest"
    rows = [time_row(name, times[0], f"compute_all over {IND_CANDLES} candles", times[1], "us")]
    if talib is not None:
        rows.append(time_row(name, times[0], f"TA-Lib over {IND_CANDLES} candles per pair",
                             times[2], "us"))
    return rows


def bench_indicators() -> list[Row]:
    """Whole-array indicators vs per-pair loops and TA-Lib; one streaming candle vs recompute."""
    try:
        import talib
    except ImportError:
        talib = None
        NOTES.append("TA-Lib not installed: the TA-Lib baselines were left out "
                     "(pip install -r requirements-test.txt).")
    return _whole_array_rows(talib) + _streaming_rows(talib)


# ------------------------------------------------------------------------------ risk: groups

def bench_groups() -> list[Row]:
    """RiskManager.group_of (dict cache) vs compute_group, over 1,000 symbols."""
    from risk_manager import DEFAULT_GROUPS, RiskManager

    risk = RiskManager(0.01, 5, 0.2, 2)
    bases = sorted(set().union(*DEFAULT_GROUPS.values()))
    bases += [f"ALT{i}" for i in range(1000 - len(bases))]
    symbols = [f"{b}/USDT" for b in bases]
    for s in symbols:
        risk.group_of(s)                          # warm the cache

    def cached() -> None:
        for s in symbols:
            risk.group_of(s)

    def computed() -> None:
        for s in symbols:
            risk.compute_group(s)

    t_cached, t_computed = (t / len(symbols) for t in median_times(cached, computed, number=20))
    return [time_row(f"symbol-group lookup, group_of (cached), {len(symbols)} symbols",
                     t_cached, "compute_group (uncached)", t_computed, "ns")]


# ------------------------------------------------------------------------------ scan

def _rate_limit_floor(server, client) -> tuple[float, str]:
    """Seconds the exchange's rate limit alone needs for the requests one scan made."""
    api = client.ccxt.describe()["api"]["public"]["get"]
    kline_cost = api["klines"]["cost"]
    tickers_cost = api["ticker/24hr"]["noSymbol"]
    klines = server.request_count("/api/v3/klines")
    tickers = server.request_count("/api/v3/ticker/24hr")
    spacing = client.ccxt.rateLimit / 1000.0
    floor = (klines * kline_cost + tickers * tickers_cost) * spacing
    return floor, (f"rate-limit floor (computed: {tickers} ticker/24hr x {tickers_cost:g} + "
                   f"{klines} klines x {kline_cost:g}, x {client.ccxt.rateLimit} ms)")


def _cold_scan(client, config) -> float:
    """Seconds of one scan by a fresh MarketScanner (empty candle store)."""
    from market_scanner import MarketScanner

    scanner = MarketScanner(client, config)
    start = time.perf_counter()
    result = scanner.scan()
    elapsed = time.perf_counter() - start
    if len(result.view.symbols) != 50 or result.failed or result.timed_out:
        raise RuntimeError(f"incomplete scan: {len(result.view.symbols)} pairs, "
                           f"failed {dict(result.failed)}, timed out {result.timed_out}")
    return elapsed


def _cached_scan_row(client, data_dir: str, cold: float) -> Row:
    from market_scanner import MarketScanner

    scanner = MarketScanner(client, bot_config(data_dir, MARKET_SCAN_CACHE_DURATION=300))
    scanner.scan()
    hit = median_time(scanner.scan, number=1000)
    if scanner.cache.hits < 1000:
        raise RuntimeError(f"the scan cache did not serve the timed scans ({scanner.cache.hits} hits)")
    return time_row("scan within MARKET_SCAN_CACHE_DURATION (cached)", hit,
                    "cold parallel scan (above)", cold, "us")


def _steady_scan_row(market, client, config, cold: float) -> Row:
    """A scan once the universe and candles are held: one new candle per pair to fetch."""
    from market_scanner import MarketScanner

    scanner = MarketScanner(client, config)
    scanner.scan()

    def next_candle_scan() -> None:
        market.advance(config.timeframe_seconds)
        scanner.scan()

    steady = median_time(next_candle_scan, repeat=3)
    return time_row("scan 50 pairs, 100 ms latency: steady state (universe known, 1 new candle)",
                    steady, "cold parallel scan (above)", cold, "s")


def bench_scan() -> list[Row]:
    """Full scan of 50 pairs with 100 ms injected latency: parallel vs serial vs rate limit."""
    with simulated_exchange() as (market, server, client), tempfile.TemporaryDirectory() as tmp:
        parallel = bot_config(tmp, MARKET_SCAN_CACHE_DURATION=0, MAX_PARALLEL_WORKERS=10)
        serial = bot_config(tmp, MARKET_SCAN_CACHE_DURATION=0, MAX_PARALLEL_WORKERS=1)
        _cold_scan(client, parallel)                          # warm connections
        server.set_faults(latency=0.1)
        server.reset_counters()
        _cold_scan(client, parallel)
        floor, floor_name = _rate_limit_floor(server, client)
        t_par, t_ser = median_times(lambda: _cold_scan(client, parallel),
                                    lambda: _cold_scan(client, serial), repeat=3, warmup=False)
        if server.response_count(429):
            NOTES.append(f"scan: the sim answered {server.response_count(429)} requests with 429")
        name = "scan 50 pairs, 100 ms latency, 10 workers (cold store)"
        return [time_row(name, t_par, "same scan, 1 worker (serial)", t_ser, "s"),
                time_row(name, t_par, floor_name, floor, "s"),
                _steady_scan_row(market, client, parallel, t_par),
                _cached_scan_row(client, tmp, t_par)]


# ------------------------------------------------------------------------------ one cycle's work

CYCLE_STREAMED = 200   # candles per pair streamed in after the CANDLE_HISTORY held at the start
# The meta-labelled strategy of the cycle and ML benches: trend_momentum loosened so that a
# random walk gives it many signals (samples to train on, candidates for the model to filter).
BENCH_STRATEGY = ("trend_momentum", "min_volume_ratio=0,rsi_overbought=90")


def bench_strategy():
    from strategies import load_strategy

    return load_strategy(*BENCH_STRATEGY)


class _CycleBench:
    """The in-process work of one cycle once candles are in memory, two ways.

    streaming: merge one new candle per pair into the candle store, the scanner's O(1)
    indicator update, its MarketView, strategy.decide_entries (MarketScanner's own code).
    recompute: the same merge, indicators.compute_all over the stored window, the same view
    (candle columns and the strategy's own columns included) and decision.
    """

    def __init__(self, client, config, candles: dict[str, np.ndarray], strategy):
        from market_scanner import MarketScanner
        from domain import StrategyParams
        from risk_manager import RiskManager

        self.client, self.candles, self.strategy = client, candles, strategy
        self.symbols = list(candles)
        self.params = StrategyParams.from_config(config)      # TIMEFRAME 5m, the candles'
        self.risk = RiskManager.from_config(config)
        self.scanners = {way: MarketScanner(client, config, strategy=strategy)
                         for way in ("streaming", "recompute")}
        self.cursor = {way: config.candle_history for way in self.scanners}
        for scanner in self.scanners.values():
            for s in self.symbols:
                scanner.store.merge(s, candles[s][:config.candle_history])
        self.scanners["streaming"].sync_indicators(self.symbols)

    def _merge_next(self, way: str) -> None:
        t = self.cursor[way]
        self.cursor[way] += 1
        for s in self.symbols:
            self.scanners[way].store.merge(s, self.candles[s][t:t + 1])

    def view(self, way: str):
        self._merge_next(way)
        scanner = self.scanners[way]
        if way == "streaming":
            scanner.sync_indicators(self.symbols)
            return scanner.build_view()
        from domain import MarketView
        from indicators import compute_all

        candles = [scanner.store.get(s) for s in self.symbols]
        arr = np.stack(candles)                                            # (P, T, 6)
        ind = compute_all(*(arr[..., k] for k in range(1, 6)))
        latest = {n: v[:, -1] for n, v in ind.items()}
        latest.update(zip(("open", "high", "low", "close", "volume"), arr[:, -1, 1:].T))
        latest.update(scanner._strategy_columns(candles))   # as build_view: none for trend_momentum
        k = scanner.history_needed + 1
        return MarketView(tuple(self.symbols), latest, arr[:, -k:, 4],
                          int(arr[0, -1, 0]) + scanner.tf_ms)

    def round_order(self, symbol: str, side: str, amount: float, price: float
                    ) -> tuple[float, float]:
        """The exchange's rounding, as the brokers do it: the market's MarketRules."""
        return self.client.rules(symbol).round_order(side, amount, price)

    def cycle(self, way: str, model) -> None:
        from strategy import decide_entries

        decide_entries(self.view(way), {}, 10_000.0, 10_000.0, self.strategy, self.params,
                       self.risk, self.round_order, model)

    def check_agreement(self) -> None:
        """Both ways must see the same indicators, or the comparison means nothing."""
        a, b = self.view("streaming"), self.view("recompute")
        if set(a.latest) != set(b.latest):
            raise RuntimeError(f"streaming and recomputed views differ in columns: "
                               f"{sorted(set(a.latest) ^ set(b.latest))}")
        for name in a.latest:
            if a.symbols != b.symbols or not np.allclose(a.latest[name], b.latest[name], rtol=1e-6):
                raise RuntimeError(f"streaming and recomputed {name} disagree")


def _trained_model_pair(candles: dict[str, np.ndarray], strategy, params, risk, min_auc: float):
    """Two ModelFilters (separate MLModels, so separate prediction caches) sharing one
    estimator trained on the meta-labels of `strategy`'s signals in `candles`."""
    from labels import samples_from_candles
    from ml_model import MLModel, train_model, trusted
    from strategy import ModelFilter

    s = samples_from_candles(candles, strategy, params, fee_rate=risk.fee_rate)
    trained = train_model(s.X, s.y, s.time_ms, s.label_end_ms, s.ret)
    if trained is None:
        raise RuntimeError(f"cycle: {len(s.y)} meta-labels could not train a model")
    estimator, meta = trained
    if not trusted(meta, min_auc):
        auc, gain = meta.get("auc"), meta.get("filter_gain")
        NOTES.append(f"cycle: the model ({len(s.y):,} meta-labels, holdout AUC "
                     f"{'n/a' if auc is None else f'{auc:.3f}'}, filter gain "
                     f"{'n/a' if gain is None else f'{gain:+.4f}'}) is not trusted at ML_MIN_AUC "
                     f"{min_auc:g} on the random walk, so the bot would not filter with it; the "
                     "(model) row times the filter anyway")
    filters = []
    for _ in range(2):
        m = MLModel()
        m.swap(estimator, meta)
        filters.append(ModelFilter(m.predict_proba, float(meta["avg_win"]), float(meta["avg_loss"])))
    return filters


def bench_cycle() -> list[Row]:
    """One cycle's in-process work for 50 pairs: streaming update vs whole-history recompute."""
    from sim_market import simulated_ohlcv

    with simulated_exchange() as (_, _, client), tempfile.TemporaryDirectory() as tmp:
        config = bot_config(tmp)
        candles = simulated_ohlcv(50, 1, "5m", config.candle_history + CYCLE_STREAMED)
        strategy = bench_strategy()
        bench = _CycleBench(client, config, candles, strategy)
        bench.check_agreement()
        ours_model, base_model = _trained_model_pair(candles, strategy, bench.params, bench.risk,
                                                     config.ml_min_auc)
        name = (f"one cycle, 50 pairs, {config.candle_history} candles held: streaming + decide"
                f" ({strategy.name})")
        base = f"compute_all over {config.candle_history} candles + decide"
        rule = median_times(lambda: bench.cycle("streaming", None),
                            lambda: bench.cycle("recompute", None), number=5)
        model = median_times(lambda: bench.cycle("streaming", ours_model),
                             lambda: bench.cycle("recompute", base_model), number=5)
    return [time_row(f"{name} (rule)", rule[0], base, rule[1]),
            time_row(f"{name} (model)", model[0], base, model[1])]


# ------------------------------------------------------------------------------ monitor

def bench_monitor() -> list[Row]:
    """@time_function and timing() overhead, enabled and disabled, against bare code."""
    from performance_monitor import PerformanceMonitor

    on = PerformanceMonitor(enabled=True, slow_threshold=float("inf"))
    off = PerformanceMonitor(enabled=False)
    null = contextlib.nullcontext()

    def noop() -> None:
        pass

    def block(ctx: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            with ctx():
                pass
        return run

    n = 100_000
    bare, t_on, t_off = median_times(noop, on.time_function(noop), off.time_function(noop),
                                     number=n)
    bare_b, b_on, b_off = median_times(block(lambda: null), block(lambda: on.timing("b")),
                                       block(lambda: off.timing("b")), number=n)
    return [time_row("monitor @time_function no-op, enabled", t_on, "bare no-op call", bare, "ns"),
            time_row("monitor @time_function no-op, disabled", t_off, "bare no-op call", bare, "ns"),
            time_row("monitor timing() empty block, enabled", b_on, "with nullcontext()", bare_b, "ns"),
            time_row("monitor timing() empty block, disabled", b_off, "with nullcontext()", bare_b, "ns")]


# ------------------------------------------------------------------------------ ML

def _synthetic_ohlcv(pairs: int, candles: int, seed: int = 0) -> dict[str, np.ndarray]:
    o, h, l, c, v = random_candles(pairs, candles, seed)
    ts = 1_700_000_000_000 + 300_000 * np.arange(candles)
    return {f"C{i}/USDT": np.stack([ts, o[i], h[i], l[i], c[i], v[i]], axis=1) for i in range(pairs)}


def _ml_feature_rows(latest: dict, recent: np.ndarray) -> list[Row]:
    from features import prepare_features

    def per_pair() -> None:
        for i in range(len(recent)):
            prepare_features({k: v[i:i + 1] for k, v in latest.items()}, recent[i:i + 1])

    batched, looped = median_times(lambda: prepare_features(latest, recent), per_pair,
                                   number=(200, 10))
    return [time_row("ml features, 50 pairs, one batched call", batched, "per-pair loop", looped)]


def _ml_predict_rows(model, X50: np.ndarray, kind: str) -> list[Row]:
    batched, single = median_times(
        lambda: model.predict_proba(X50),
        lambda: [model.predict_proba(X50[i:i + 1]) for i in range(len(X50))], number=(50, 2))
    one, key = X50[:1], [(50.0, 0.01, 0.2, 1.1)]
    model.predict_proba(one, key)                                   # fill the cache
    hit, miss = median_times(lambda: model.predict_proba(one, key),
                             lambda: model.predict_proba(one), number=(2000, 200))
    return [time_row(f"ml predict, 50 pairs ({kind}), one batched call", batched,
                     "50 single calls", single),
            time_row("ml prediction, cache hit", hit, "uncached single prediction", miss, "us")]


def _ml_fit_rows(X: np.ndarray, y: np.ndarray, t, end, ret) -> list[Row]:
    from ml_model import DEFAULT_MODEL_KIND, make_estimator, train_model

    X64 = X.astype(np.float64)     # train_model fits on float64, as here
    fit, train, forest = median_times(
        lambda: make_estimator().fit(X64, y), lambda: train_model(X, y, t, end, ret),
        lambda: make_estimator("forest").fit(X64, y), repeat=3, warmup=False)
    base = "RandomForest(100 trees) fit"
    return [time_row(f"ml fit, {len(y):,} records ({DEFAULT_MODEL_KIND})", fit, base, forest, "s"),
            time_row(f"ml train_model, {len(y):,} records (holdout fit + refit)", train, base,
                     forest, "s")]


def _traced_mib(build: Callable[[], object]) -> float:
    """MiB still allocated (tracemalloc: Python objects and numpy buffers) by build()."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del kept
    return used / 2 ** 20


def _ml_memory_rows(samples, n: int) -> list[Row]:
    from features import FEATURE_NAMES
    from model_training import TrainingData

    X, y, ret, t = samples.X[-n:], samples.y[-n:], samples.ret[-n:], samples.time_ms[-n:]

    def training_data():
        data = TrainingData()
        data.add(X, y, ret, t, samples.label_end_ms[-n:], keys=samples.key[-n:])
        return data

    def dicts():
        return [{**dict(zip(FEATURE_NAMES, X[i].tolist())), "label": int(y[i]),
                 "return": float(ret[i]), "time": int(t[i]), "source": "history"} for i in range(n)]

    return [Row(f"ml training data, {n:,} records (TrainingData, 20,000 preallocated)",
                _traced_mib(training_data), "MiB", "list of dicts of Python floats",
                _traced_mib(dicts))]


def bench_ml() -> list[Row]:
    """Features, batched prediction, prediction cache, training time and training memory."""
    from features import HISTORY_NEEDED, prepare_features
    from indicators import compute_all
    from domain import StrategyParams
    from labels import samples_from_candles
    from ml_model import DEFAULT_MODEL_KIND, MLModel, train_model

    n = 15_000
    candles = _synthetic_ohlcv(50, 1200)     # ~16,000 meta-labels of BENCH_STRATEGY's signals
    arr = np.stack(list(candles.values()))
    ind = compute_all(*(arr[..., i] for i in range(1, 6)))
    latest = {k: v[:, -1] for k, v in ind.items()}
    recent = arr[:, -(HISTORY_NEEDED + 1):, 4]
    samples = samples_from_candles(candles, bench_strategy(), StrategyParams(timeframe_ms=300_000))
    if len(samples.y) < n:
        raise RuntimeError(f"ml: only {len(samples.y):,} meta-labels, {n:,} needed")
    X, y = samples.X[-n:], samples.y[-n:]
    t, end, ret = samples.time_ms[-n:], samples.label_end_ms[-n:], samples.ret[-n:]
    model = MLModel()
    model.swap(*train_model(X, y, t, end, ret))
    X50 = prepare_features(latest, recent)
    return (_ml_feature_rows(latest, recent)
            + _ml_predict_rows(model, X50, DEFAULT_MODEL_KIND)
            + _ml_fit_rows(X, y, t, end, ret)
            + _ml_memory_rows(samples, n))


# ------------------------------------------------------------------------------ LLM

_LLM_STATE = dict(symbol="ETH/USDT", candle_ts=1_700_000_000_000, price=2000.0, change_1=0.05,
                  change_6=0.2, change_24=-0.4, rsi=44.0, macd_hist=0.4, bb_position=0.4,
                  atr_pct=0.3, momentum_pct=0.1, volume_ratio=1.2, model_probability=0.62,
                  open_positions=1, max_positions=5)


def _llm_states(n: int, offset: int = 0) -> list[dict]:
    return [dict(_LLM_STATE, symbol=f"P{i}/USDT", rsi=30.0 + i % 40, price=100.0 + i)
            for i in range(offset, offset + n)]


def _llm_config(url: str):
    from types import SimpleNamespace

    return SimpleNamespace(llm_provider="openai", llm_base_url=url, llm_model="bench",
                           llm_api_key="", llm_timeout=5.0, llm_cycle_budget=20.0,
                           llm_max_calls_per_cycle=10, llm_cache_ttl=90.0,
                           llm_cache_max_size=1000, llm_on_failure="reject")


def _llm_key_rows() -> list[Row]:
    import hashlib

    from llm_cache import LLMCache

    cache, states = LLMCache(), _llm_states(200)

    def exact() -> None:
        for s in states:
            hashlib.md5(json.dumps(s, sort_keys=True).encode()).hexdigest()

    ours, base = median_times(lambda: [cache.key(s) for s in states], exact, number=10)
    return [time_row("llm cache key generation, per state", ours / len(states),
                     "md5(json.dumps(state)) exact key", base / len(states), "us")]


def _llm_hit_rows(url: str) -> list[Row]:
    from llm_advisor import LLMAdvisor

    advisor = LLMAdvisor(_llm_config(url))
    try:
        advisor.confirm([_LLM_STATE])                               # fill the cache
        fresh = iter(_llm_states(20, offset=100))
        hit, call = median_times(lambda: advisor.cache.get(_LLM_STATE),
                                 lambda: advisor.confirm([next(fresh)]),
                                 number=(1000, 1), repeat=3)
    finally:
        advisor.close()
    return [time_row("llm answer from the cache", hit, "chat-completions call, 500 ms server",
                     call)]


def _llm_cycle_rows(url: str) -> list[Row]:
    from llm_advisor import LLMAdvisor

    warm, cold = [], []
    for r in range(repeats(3)):
        advisor = LLMAdvisor(_llm_config(url))
        states = _llm_states(10, offset=200 + 10 * r)
        try:
            for times, source in ((cold, "llm"), (warm, "cache")):
                start = time.perf_counter()
                answers = advisor.confirm(states)
                times.append(time.perf_counter() - start)
                if {d.source for d in answers.values()} != {source}:
                    raise RuntimeError(f"expected every answer from the {source}: {answers}")
        finally:
            advisor.close()
    return [time_row("llm cycle, 10 candidates, cache warm", statistics.median(warm),
                     "same, cache cold (10 parallel calls)", statistics.median(cold))]


def _llm_replay_rows() -> list[Row]:
    from tests.chat_server import replay

    shipped = replay(seed=1, candles=288)
    exact_only = replay(seed=1, candles=288, ttl=0.0)
    return [Row("llm replay hit rate (1 day of 5m candles, checks every 60 s)",
                shipped.hit_rate * 100, "%", "same-candle reuse only (LLM_CACHE_TTL=0)",
                exact_only.hit_rate * 100, higher_is_better=True),
            Row("llm replay agreement of similar-state hits", shipped.similar_agreement * 100,
                "%", "reusing a pair's last answer by symbol",
                shipped.symbol_only_agreement * 100, higher_is_better=True)]


def bench_llm() -> list[Row]:
    """Cache key, cache hit vs LLM call, 10-candidate cycle warm vs cold, replay figures."""
    from tests.chat_server import ChatServer

    rows = _llm_key_rows()
    with ChatServer(latency=0.5) as server:
        rows += _llm_hit_rows(server.url) + _llm_cycle_rows(server.url)
    return rows + _llm_replay_rows()


# ------------------------------------------------------------------------------ backtest

def bench_backtest() -> list[Row]:
    """The backtester (bench_backtest.py): candles/s and peak memory, fast vs per-step."""
    import bench_backtest as backtests

    return backtests.bench_backtest()


# ------------------------------------------------------------------------------ memory of a long run

MEMORY_CYCLES = 500
MEMORY_REPORT_EVERY = 50


def _bot_env(data_dir: str, report_every: int) -> dict[str, str]:
    """The memory run's environment. STRATEGY trend_momentum (5m, the README's figures were
    measured on it): the default ema_cross decides on 4h candles, which 1,000 5m candles of
    the simulator cannot warm up, so it would never signal nor train. ML_MIN_AUC 0: on the
    random walk no model reaches the AUC floor, and "ML on" means the model filters."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return keep | {"DATA_DIR": data_dir, "SIM_SPEED": "10000", "CHECK_INTERVAL": "60",
                   "SIM_PAIRS": "50", "PERFORMANCE_REPORT_INTERVAL": str(report_every),
                   "ML_ENABLED": "true", "LOG_LEVEL": "WARNING", "EDGE_GATE": "false",
                   "STRATEGY": "trend_momentum", "ML_MIN_AUC": "0"}


def _rss_by_cycle(stdout: str) -> dict[int, float]:
    """Cycle -> RSS (MiB) from the performance reports' `memory: rss X MiB` lines."""
    out, cycle = {}, 0
    for line in stdout.splitlines():
        if m := re.match(r"cycle\s+(\d+) \|", line):
            cycle = int(m.group(1))
        elif m := re.match(r"memory: rss ([\d.]+) MiB", line):
            out[cycle] = float(m.group(1))
    return out


def _run_summary(stdout: str, cycles: int, wall: float) -> str:
    """How long the run took and where the time went, from the bot's status lines."""
    status = re.findall(r"^cycle\s+\d+ \|\s*([\d.]+)s \| pairs \d+( cached)? \|", stdout, re.M)
    if not status:
        return (f"memory: the {cycles}-cycle bot run took {wall:.0f} s wall but printed no "
                "`cycle N | ...` status lines on stdout, so its cycles and scan times could not "
                "be read.")
    scans = [float(sec) for sec, cached in status if not cached]
    scan_s = f"{statistics.median(scans):.2f} s" if scans else "n/a"
    return (f"memory: the {cycles}-cycle bot run (SIM_SPEED 10000, CHECK_INTERVAL 60, 50 pairs, "
            f"STRATEGY trend_momentum, ML on with ML_MIN_AUC 0, PERFORMANCE_REPORT_INTERVAL {MEMORY_REPORT_EVERY}, LOG_LEVEL WARNING) took "
            f"{wall:.0f} s wall for {len(status)} cycles: {len(status) - len(scans)} served by the "
            f"scan cache, {len(scans)} scanning (median {scan_s} each, mostly the rate limit's "
            "spacing; see the scan section).")


def bench_memory(cycles: int = MEMORY_CYCLES) -> list[Row]:
    """Peak RSS of a long bot run (ML on) vs the libraries alone; RSS growth over the run."""
    libs = "import ccxt, numpy, sklearn.linear_model"
    libs_peak = float(run_child([sys.executable, "-c", libs + PRINT_PEAK])[0].split()[-1])
    with tempfile.TemporaryDirectory() as tmp:
        stdout, peak, wall = run_child(
            [sys.executable, "bot.py", "--env-file", os.devnull, "--cycles", str(cycles)],
            env=_bot_env(tmp, MEMORY_REPORT_EVERY))
    NOTES.append(_run_summary(stdout, cycles, wall))
    name = f"bot run, {cycles} cycles, 50 pairs, ML on"
    rows = [Row(f"{name}: peak RSS", peak, "MiB", f"python -c '{libs}' peak RSS", libs_peak)]
    rss = _rss_by_cycle(stdout)
    if len(rss) < 2:
        NOTES.append("memory: fewer than two performance reports, RSS growth not measured.")
        return rows
    first, last = min(rss), max(rss)
    NOTES.append("memory: RSS (MiB) by cycle " + ", ".join(f"{c}: {v:.0f}" for c, v in sorted(rss.items())))
    return rows + [Row(f"{name}: RSS after cycle {last} (leak check)", rss[last], "MiB",
                       f"RSS after cycle {first}", rss[first])]


# ------------------------------------------------------------------------------ streams

def bench_streams() -> list[Row]:
    """Streaming market data (bench_streams.py): feed queueing and dispatch, stop -> exit
    streaming vs polling, REST weight per hour, CPU per second."""
    import bench_streams as streams

    return streams.bench_streams()


# ------------------------------------------------------------------------------ main

def bench_hyperopt() -> list[Row]:
    """Hyperopt trials per minute (bench_hyperopt.py): 1 and 2 local workers, a LocalCluster."""
    import bench_hyperopt as hyperopt

    return hyperopt.bench_hyperopt()


SECTIONS: dict[str, Callable[[], list[Row]]] = {
    "startup": bench_startup, "sim": bench_sim, "indicators": bench_indicators,
    "groups": bench_groups, "cycle": bench_cycle, "scan": bench_scan, "monitor": bench_monitor,
    "ml": bench_ml, "llm": bench_llm, "backtest": bench_backtest, "streams": bench_streams,
    "hyperopt": bench_hyperopt,
    "memory": bench_memory,
}


def machine() -> dict[str, str]:
    import ccxt
    import sklearn

    return {"cores": f"{os.cpu_count()} (usable {len(os.sched_getaffinity(0))})",
            "python": platform.python_version(), "numpy": np.__version__,
            "ccxt": ccxt.__version__, "sklearn": sklearn.__version__,
            "platform": platform.platform()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   default=list(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    p.add_argument("--quick", action="store_true",
                   help=f"about half the repeats, and a 100-cycle memory run (not {MEMORY_CYCLES})")
    p.add_argument("--memory-cycles", type=int, default=None,
                   help=f"cycles of the memory run (default {MEMORY_CYCLES}; 100 with --quick)")
    p.add_argument("--json", type=Path, help="also write the rows (and notes) here as JSON")
    args = p.parse_args(argv)
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}")
    return args


def run_sections(names: Sequence[str], memory_cycles: int) -> tuple[list, list[str]]:
    done, failed = [], []
    for name in names:
        start = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows = bench_memory(memory_cycles) if name == "memory" else SECTIONS[name]()
        except Exception as exc:  # one broken section must not lose the others' figures
            import traceback
            traceback.print_exc()
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        done.append((name, rows))
        print(f"  {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return done, failed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bench_kit.QUICK = args.quick
    memory_cycles = args.memory_cycles or (100 if bench_kit.QUICK else MEMORY_CYCLES)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    started = time.perf_counter()
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print("Figures are medians of repeats from this one run" + (" (--quick)" if bench_kit.QUICK else "")
          + "; each baseline was measured in the same run unless labelled QUOTED or computed. "
          "ratio = how many times better than the baseline: baseline/value for times and "
          "memory, value/baseline for rates and percentages.\n")
    done, failed = run_sections(args.only, memory_cycles)
    print_table(done)
    total = time.perf_counter() - started
    for line in NOTES + [f"FAILED {f}" for f in failed] + [f"total runtime {total:.0f} s"]:
        print(f"note: {line}")
    if args.json:
        rows = [asdict(r) | {"section": s, "ratio": r.ratio} for s, rs in done for r in rs]
        args.json.write_text(json.dumps({"machine": info, "quick": bench_kit.QUICK, "rows": rows,
                                         "notes": NOTES, "failed": failed,
                                         "seconds": total}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

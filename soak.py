"""A bad day on the exchange, then a reconciliation: the live path's fault soak.

    python soak.py                        # 2,000 faulty cycles, then 50 SIGKILLs (about 20 min)
    python soak.py --cycles 200 --kills 5 # a short rehearsal

Phase 1 runs a live bot (DRY_RUN=false) in this process against the simulated exchange
(market clock x300) with 10 % 5xx answers, 5 % hangs, 2 % dropped connections, every fault striking after the
request took effect (so orders execute and their answers are lost), and a 429 storm every
100 cycles. Phase 2 runs the bot as a child process against the same exchange (SIM_URL)
and SIGKILLs it at random moments, 50 times. After each phase the exchange heals, the bot
settles, and its database is reconciled with the exchange's account through ccxt:

- every order in a final state, each client order id on the exchange at most once and
  known to the database;
- each coin the exchange holds equals the bot's position plus its dust, to the market's
  amount step; no position the exchange does not hold;
- crashes (an exception out of a cycle) and bans (HTTP 418) counted: both must be zero.

Not part of the test suite (it takes minutes); bench.py names it. Exit code 1 on any
discrepancy.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ccxt

from config import load_config
from reporter import Reporter
from sim_exchange import SimExchangeServer, ccxt_overrides
from sim_market import SimMarket
from store import Store
from trader import Trader

ROOT = Path(__file__).resolve().parent
KEY, SECRET = "soak-key", "soak-secret"


def bot_env(data_dir: str, url: str, pairs: int) -> dict[str, str]:
    return {"EXCHANGE": "simulated", "SIM_URL": url, "API_KEY": KEY, "API_SECRET": SECRET,
            "DRY_RUN": "false", "DATA_DIR": data_dir, "MAX_PAIRS": str(pairs),
            "CHECK_INTERVAL": "60", "CANDLE_HISTORY": "150", "ML_ENABLED": "false",
            "MARKET_SCAN_CACHE_DURATION": "0", "ENABLE_PERFORMANCE_MONITORING": "false",
            "MAX_HOLD_CANDLES": "2", "SCAN_TIMEOUT": "5", "LOG_LEVEL": "ERROR",
            # the soak exercises orders: trade the random walk although it has no edge
            "EDGE_GATE": "false", "STRATEGY": "trend_momentum", "STRATEGY_PARAMS": "min_volume_ratio=0"}


def faulty(server: SimExchangeServer) -> None:
    server.set_faults(error_rate=0.10, hang_rate=0.05, hang_seconds=0.3, drop_rate=0.02,
                      after_processing=True)


def soak(server: SimExchangeServer, data_dir: str, cycles: int, pairs: int) -> dict:
    """Phase 1: the bot in this process, cycle after cycle, the market running 300x."""
    config = load_config(None, bot_env(data_dir, server.url, pairs))
    trader = Trader(config, reporter=Reporter(lambda line: None))
    trader.client.attempts, trader.client.base_delay, trader.client.max_delay = 3, 0.05, 0.5
    crashes, storms = 0, 0
    faulty(server)
    try:
        for i in range(cycles):
            if i % 100 == 50:              # a 429 storm: a tiny budget for a short window
                server.set_rate_limit(30, window_s=2.0, ban_after=None)
                storms += 1
            elif i % 100 == 60:
                server.set_rate_limit(6000)
            try:
                trader.run_cycle()
            except Exception as exc:       # noqa: BLE001 - a soak counts what escapes a cycle
                crashes += 1
                print(f"cycle {i}: {type(exc).__name__}: {exc}", file=sys.stderr)
            if i % 200 == 199:
                print(f"  {i + 1} cycles, {len(trader.positions)} open, "
                      f"{len(trader.orders.unresolved())} unresolved", flush=True)
        server.set_faults()
        server.set_rate_limit(6000)
        for _ in range(10):                # settle: every order resolved once it answers
            trader.run_cycle()
            if not trader.orders.unresolved():
                break
    finally:
        trader.close()
    return {"cycles": cycles, "crashes": crashes, "429 storms": storms}


def kills(server: SimExchangeServer, data_dir: str, n: int, pairs: int, seed: int) -> dict:
    """Phase 2: the bot as a child process, SIGKILLed at random moments."""
    rng = random.Random(seed)
    env = {**os.environ, **bot_env(data_dir, server.url, pairs)}
    faulty(server)
    killed = 0
    for _ in range(n):
        child = subprocess.Popen([sys.executable, "bot.py", "--env-file", os.devnull], cwd=ROOT,
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 4.0))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            killed += 1
        child.wait(30)
    server.set_faults()
    settle = subprocess.run([sys.executable, "bot.py", "--env-file", os.devnull, "--cycles", "6"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return {"SIGKILLs": killed, "final run exit code": settle.returncode}


def reconcile(server: SimExchangeServer, data_dir: str) -> list[str]:
    """Every way the database and the exchange's account disagree, as lines."""
    ex = ccxt.binance(ccxt_overrides(server.url) | {"apiKey": KEY, "secret": SECRET})
    ex.load_markets()
    problems = []
    with Store.open(data_dir, "live") as store:
        orders = store.all_orders()
        problems += [f"order {o.client_order_id} still {o.status}" for o in orders
                     if o.status in ("pending", "unknown")]
        positions = {p.symbol: p.amount for p in store.open_positions()}
        dust = store.dust()
        known = {o.client_order_id for o in orders}
        symbols = {o.symbol for o in orders}
    totals = ex.fetch_balance()["total"]
    for symbol in sorted(symbols | set(positions)):
        base = symbol.split("/")[0]
        step = float(ex.market(symbol)["precision"]["amount"])
        held = float(totals.get(base) or 0.0)
        booked = positions.get(symbol, 0.0) + dust.get(symbol, 0.0)
        if abs(held - booked) > step * 1.0001:
            problems.append(f"{symbol}: the exchange holds {held:.10g}, the bot {booked:.10g}")
        ids = [o.get("clientOrderId") for o in ex.fetch_orders(symbol, limit=1000)]
        problems += [f"{symbol}: client order id {c} placed {ids.count(c)} times"
                     for c in sorted(set(ids)) if ids.count(c) > 1]
        problems += [f"{symbol}: exchange order {c} unknown to the bot" for c in set(ids) - known]
    if server.response_count(418):
        problems.append(f"{server.response_count(418)} ban(s) (HTTP 418)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        market = SimMarket(pairs=args.pairs, seed=args.seed, speed=300.0)
        with SimExchangeServer(market, api_key=KEY, api_secret=SECRET,
                               balances={"USDT": 10_000.0}) as server:
            started = time.monotonic()
            figures = soak(server, tmp, args.cycles, args.pairs)
            problems = reconcile(server, tmp)
            print(f"fault soak: {figures}, {time.monotonic() - started:.0f} s, "
                  f"{len(problems)} discrepancies")
            failed |= bool(problems) or figures["crashes"] > 0
            for line in problems:
                print("  " + line)
        if args.kills:
            market = SimMarket(pairs=args.pairs, seed=args.seed, speed=60.0)
            with SimExchangeServer(market, api_key=KEY, api_secret=SECRET,
                                   balances={"USDT": 10_000.0}) as server, \
                    tempfile.TemporaryDirectory() as tmp2:
                started = time.monotonic()
                figures = kills(server, tmp2, args.kills, args.pairs, args.seed)
                problems = reconcile(server, tmp2)
                print(f"SIGKILL soak: {figures}, {time.monotonic() - started:.0f} s, "
                      f"{len(problems)} discrepancies")
                failed |= bool(problems) or figures["final run exit code"] != 0
                for line in problems:
                    print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The trading loop: every CHECK_INTERVAL, exits -> scan -> decide -> execute -> record.

The trader wires the parts together and runs cycles; the ledger keeps the books, the
order executor sends and books orders, the reporter shows what happened, and the store
keeps every change and the decision record (what each cycle decided from, for parity).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from brokers import LiveBroker, PaperBroker
from candle_files import timeframe_to_ms
from domain import Bar, Decisions, ExchangeError, ExitIntent, Position, StrategyParams
from config import ConfigError, check_pairs
from exchange import create_client
from features import feature_key
from ledger import Ledger
from llm_advisor import LLMAdvisor
from market_rules import TAKER_FEE
from market_scanner import MarketScanner, ScanResult
from labels import samples_from_candles
from ml_model import MLModel, PredictionCache, trusted
from model_training import Retrainer, TrainingData
from orders import LIMIT_FILL, OrderExecutor
import performance_monitor
from reporter import Reporter, SkipLog
from risk_manager import RiskManager
from stops import EXCHANGE_STOP, ExchangeStops, left_to_exchange
from store import Store, StoreError
import strategies
from edge import EdgeSettings, EdgeVerdict, judge, recent_returns
from exits import check_positions
from protections import DAY_MS, ProtectionSettings, Protections, describe, split
from strategy import ModelFilter, decide_entries
from streaming import Arrivals, Streaming, open_streams
from control import CommandError, Commands
from notifier import Notifier, from_config as notifications_from_config

log = logging.getLogger(__name__)
STREAM_GRACE = 1.0     # wall seconds (see _stream_grace_ms)
FORCE_EXIT = "force_exit"   # the exit reason of a sale the API asked for
PAUSED = "entries paused from the API"


class StartupError(Exception):
    """The bot cannot start; the message is one line naming the cause and the fix."""


class Trader:
    def __init__(self, config, stop: threading.Event | None = None,
                 reporter: Reporter | None = None):
        self.config = config
        self.stop = stop or threading.Event()
        self.reporter = reporter or Reporter(log.info)
        self.client = self.model = self.training_data = self.retrainer = self.advisor = None
        self.streaming: Streaming | None = None
        self.notifier: Notifier | None = None
        self.commands = Commands()
        self.paused = False
        self.facts: dict = {}
        self.monitor = performance_monitor.configure(   # the process-wide monitor: get_monitor()
            enabled=config.enable_performance_monitoring,
            slow_threshold=config.slow_operation_threshold,
            critical_factor=config.critical_operation_factor,
            thresholds=config.performance_thresholds,
            degradation_factor=config.degradation_factor,
            trace_memory=config.trace_memory)
        self._lock_file = self._claim_data_dir(config)
        self.store: Store | None = None
        try:
            self.client = create_client(config)
            check_pairs(config, self.client.load_markets())
            self.clock = self.client.clock   # the one clock: market time on the simulator
            self.store = Store.open(config.data_dir, config.mode, clock=self.clock)
            self.strategy = strategies.from_config(config)
            self.timeframe = strategies.decision_timeframe(self.strategy, config.timeframe)
        except (ExchangeError, StoreError, ConfigError) as exc:
            self.close()
            prefix = f"{config.exchange}: " if isinstance(exc, ExchangeError) else ""
            raise StartupError(f"{prefix}{exc}") from exc
        self.time_scale = getattr(self.clock, "speed", None) or (
            config.sim_speed if config.is_simulated else 1.0)
        tf_ms = timeframe_to_ms(self.timeframe)
        self.params = StrategyParams.from_config(config, tf_ms)
        self.protection_settings = ProtectionSettings.from_config(config, tf_ms)
        self.edge_settings = EdgeSettings.from_config(config)
        self.edge: EdgeVerdict | None = None
        self._edge_ms: int | None = None      # the candle close the edge was judged at
        self.locks: list = []
        self.scanner = MarketScanner(self.client, config, cancel=self.stop, strategy=self.strategy,
                                     timeframe=self.timeframe)
        self.monitor.add_cache("scan", self.scanner.cache,
                               hint="MARKET_SCAN_CACHE_DURATION may be shorter than CHECK_INTERVAL")
        self.risk = RiskManager.from_config(config, fee_rate=self._fee_rate())
        self.ledger = Ledger(self.store.paper_cash(config.starting_balance),
                             self.store.open_positions(), self.store.last_exits())
        self.broker = (PaperBroker(self.client, self.ledger, max_slippage=config.max_slippage)
                       if config.dry_run else
                       LiveBroker(self.client, config.quote_currency, config.max_slippage))
        self.orders = OrderExecutor(self.store, self.broker, self.ledger, self.risk.group_of,
                                    persist_cash=config.dry_run, clock=self.clock,
                                    venue=None if config.dry_run else self.client.ccxt)
        self.ledger.dust = self.store.dust()
        self.stops = (ExchangeStops(self.store, self.broker, self.orders, config.max_slippage)
                      if not config.dry_run and self.broker.supports_stops else None)
        self._account: dict[str, float] | None = None   # live: the exchange's total balances
        self.cycle = 0
        self.start_equity = config.starting_balance
        self.last_prices: dict[str, float] = {}
        self.skip_log = SkipLog()
        self._recorded_ts: dict[str, int] = {}
        self.scan: ScanResult | None = None
        self.decisions: Decisions | None = None
        if config.llm_provider != "none":
            self.advisor = LLMAdvisor(config, self.monitor, self.clock)
            self.monitor.add_cache("LLM", self.advisor.cache)
        try:
            self._resume()
        except ExchangeError as exc:
            self.close()
            raise StartupError(f"{config.exchange}: {exc}") from exc
        self._start_notifications()

    def _start_notifications(self) -> None:
        """NOTIFY_WEBHOOK_URL / TELEGRAM_*: entries and exits (through the reporter), new
        locks, the kill switch, errors and the daily summary go out from their own threads."""
        self.notifier = notifications_from_config(self.config)
        self._notified_locks: set[tuple] = set()
        self._kill_notified = False
        if self.notifier is not None:
            self.reporter.notifier = self.notifier
            self.monitor.add_section("notifications", self.notifier.report)

    @property
    def positions(self) -> dict[str, Position]:
        return self.ledger.positions

    # -- start-up -----------------------------------------------------------------------
    @staticmethod
    def _claim_data_dir(config):
        """One bot per database: a second one would trade the same positions twice."""
        path = Path(config.data_dir) / f".bot-{config.mode}.lock"
        handle = os.fdopen(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600), "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StartupError(f"another bot is already trading {config.mode} from {config.data_dir}; "
                               "stop it first or set a different DATA_DIR") from None
        return handle

    def _fee_rate(self) -> float:
        """The highest taker fee of the exchange's markets (sizing keeps room for it)."""
        return max((self.client.rules(s).taker for s in self.client.load_markets()),
                   default=TAKER_FEE)

    def _resume(self) -> None:
        """Reload open positions; settle orders whose outcome a crash left unrecorded."""
        self.orders.reconcile()
        self._sync_cash()
        start = self.store.get_meta("start_equity")
        if start is None:   # the account's real value (live: what the exchange holds)
            self.start_equity = self.equity()
            self.store.set_meta("start_equity", repr(self.start_equity))
        else:
            self.start_equity = float(start)
        self.cycle = int(self.store.get_meta("cycle", "0"))
        self.risk.observe_equity(self.store.peak_equity())
        if self.positions:
            log.info("resumed %d open position(s): %s", len(self.positions), ", ".join(self.positions))
            if not self.config.dry_run:
                self._check_live_balances()

    def _check_live_balances(self) -> None:
        """Warn when the account holds less than a position the bot resumed (sold elsewhere?)."""
        totals = self.client.call("fetch_balance").get("total") or {}
        for symbol, position in self.positions.items():
            held = float(totals.get(symbol.split("/")[0]) or 0.0)
            if held < position.amount * (1 - 1e-9):
                log.warning("%s: the exchange account holds %.8g but the bot's position is %.8g; "
                            "check the account (was it sold outside the bot?)", symbol, held,
                            position.amount)

    def _sync_cash(self) -> None:
        """Live: the exchange's balances, asked once per cycle: the free quote is the cash
        to size with, the totals are what equity counts."""
        if self.config.dry_run:
            return
        self._apply_balances(self.broker.balances())

    def _apply_balances(self, balances: dict, changed_only: bool = False) -> None:
        """The free quote is the cash to size with, the totals are what equity counts;
        `changed_only`: the balances name only the assets that changed (the account stream)."""
        totals = {k: float(v or 0.0) for k, v in (balances.get("total") or {}).items()}
        free = (balances.get("free") or {}).get(self.config.quote_currency)
        if changed_only:
            self._account.update(totals)
            if free is None:
                return
        else:
            self._account = totals
        self.ledger.cash = float(free or 0.0)

    def _start_model(self) -> None:
        """The model trains in the background from the scanner's candles; until it is ready
        the strategy decides alone."""
        self.model = MLModel(PredictionCache.from_config(self.config, self.clock))
        self.training_data = TrainingData()
        self.retrainer = Retrainer.from_config(
            self.config, self.model, self.training_data,
            samples_provider=lambda: samples_from_candles(
                self.scanner.history(), self.strategy, self.params, self.risk.fee_rate),
            clock=self.clock, monitor=self.monitor).start()
        self.monitor.add_section("ML prediction cache", self.model.cache.report)
        self.monitor.add_cache("model predictions", self.model.cache)

    def _predictor(self):
        if self.model is None and self.config.ml_enabled:
            self._start_model()
        if self.model is None:
            return None
        self.retrainer.maybe_retrain()
        bundle = self.model.bundle
        if bundle is None or not trusted(bundle.meta, self.config.ml_min_auc):
            return None
        return ModelFilter(self.model.predict_proba, float(bundle.meta.get("avg_win", 0.0)),
                           float(bundle.meta.get("avg_loss", 0.0)))

    def _confirmer(self, verdicts: dict[str, bool]):
        """The LLM's confirmation; every verdict is kept in `verdicts` for the record."""
        if self.advisor is None:
            return None

        def confirm(states):
            answers = {s: d.take for s, d in self.advisor.confirm(states).items()}
            verdicts.update(answers)
            return answers

        return confirm

    # -- the loop -----------------------------------------------------------------------
    def run(self, cycles: int | None = None) -> None:
        self._start_streams()
        self._banner()
        self.publish_facts()
        interval = self.config.check_interval / self.time_scale
        done = 0
        while not self.stop.is_set():
            started = time.monotonic()
            self.run_cycle()
            done += 1
            if cycles is not None and done >= cycles:
                break
            self._wait_until(started + interval)
        self.reporter.text(f"stopped after {done} cycle(s); state saved in {self.store.path}")

    def _start_streams(self) -> None:
        """MARKET_DATA=websocket: start the streams where ccxt.pro has them for the exchange."""
        if self.config.market_data != "websocket" or self.streaming is not None:
            return
        streaming = open_streams(self.client, self.config, self.scanner.stream_timeframe)
        if streaming is None:
            log.info("MARKET_DATA=websocket: ccxt.pro has no candle and bid/ask streams for %s;"
                     " polling REST every CHECK_INTERVAL", self.client.id)
            return
        self.streaming = streaming.start()
        self.monitor.add_section("streams", streaming.report)

    def _wait_until(self, deadline: float) -> None:
        """Wait for the next cycle; act on what the streams bring and on commands meanwhile."""
        while not self.stop.is_set():
            self._run_commands()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.streaming is None:
                self.stop.wait(min(left, 0.25))
            else:
                self._on_arrivals(self.streaming.take(min(left, 0.25)))

    # -- commands (the API) ---------------------------------------------------------------
    def _run_commands(self) -> None:
        commands = self.commands.take()
        for command in commands:
            try:
                command.answer.set_result(self._carry_out(command.kind, command.symbol))
            except Exception as exc:       # the caller gets it; the loop goes on
                command.answer.set_exception(exc)
        if commands:
            self.publish_facts()

    def _carry_out(self, kind: str, symbol: str | None) -> dict:
        if kind == "pause":
            self.paused = True
            return {"paused": True, "text": "entries paused; exits go on"}
        if kind == "resume":
            self.paused = False
            return {"paused": False, "text": "entries resumed"}
        if kind == "stop":
            self.stop.set()
            return {"stopping": True, "text": "stopping after the current step"}
        return self._force_exit(symbol)

    def _force_exit(self, symbol: str | None) -> dict:
        """Sell one held pair (or all): booked as fills no decision made, in a cycle record
        of their own, so the parity check books them too."""
        symbols = list(self.positions) if symbol in (None, "", "all") else [symbol]
        if symbol not in (None, "", "all") and symbol not in self.positions:
            raise CommandError(404, f"no open position in {symbol}")
        busy = self.orders.busy()
        self.cycle += 1
        record, decided = self._record_state(), []
        record["busy"] = sorted(busy)
        closed, refused = [], {}
        try:
            for s in symbols:
                if s in busy:
                    refused[s] = "an order of this pair is in doubt; try again after it resolves"
                    continue
                price = self._fresh_prices([s]).get(s)
                if price is None:
                    refused[s] = "the exchange gave no price for it; try again"
                    continue
                self._exit(ExitIntent(s, price, FORCE_EXIT), decided)
                if s in self.positions:
                    refused[s] = "not sold (or only partly): see the log"
                else:
                    closed.append(s)
        finally:
            decided = [("fill",) + d[1:] if d[0] == "exit" else d for d in decided]
            self.store.record_cycle(self.cycle, None, json.dumps(record), decided)
            self.store.set_meta("cycle", str(self.cycle))
        return {"closed": closed, "refused": refused,
                "text": f"closed {len(closed)} position(s)" + (f", {len(refused)} refused"
                                                                if refused else "")}

    def publish_facts(self) -> None:
        """What the API and the dashboard show, as the loop sees it now (one dict, replaced
        whole, so readers on other threads never see half of it)."""
        prices = dict(self.last_prices)
        positions = []
        for p in self.positions.values():
            price = prices.get(p.symbol, p.entry_price)
            positions.append(asdict(p) | {"features": None, "price": price,
                                          "unrealized": (price - p.entry_price) * p.amount})
        self.facts = {
            "cycle": self.cycle, "mode": self.config.mode, "paused": self.paused,
            "equity": self.equity(), "start_equity": self.start_equity,
            "cash": self.ledger.cash, "quote": self.config.quote_currency,
            "positions": positions, "max_positions": self.config.max_open_positions,
            "pairs": len(self.scan.universe) if self.scan else 0,
            "model": self._model_state(), "gate": self._gate_state(),
            "locks": describe(self.locks, int(self.clock() * 1000)),
            "unresolved_orders": len(self.orders.unresolved()),
            "market_data": ("websocket" if self.streaming is not None else "rest"),
            "streams_up": bool(self.streaming is not None and self.streaming.up),
            "strategy": self.strategy.name, "timeframe": self.timeframe,
            "updated_ms": int(self.clock() * 1000)}

    def _banner(self) -> None:
        c = self.config
        server = self.client.sim_server
        venue = (f"simulated exchange at {server.url if server else c.sim_url} (market clock "
                 f"x{self.time_scale:g})" if c.is_simulated else c.exchange)
        timeframe = (f"strategy {self.strategy.name} on {self.timeframe} candles"
                     + (f" (built from {self.scanner.fetch_timeframe})"
                        if self.scanner.fetch_timeframe != self.timeframe else ""))
        data = "REST polling"
        if self.streaming is not None:
            data = f"websocket ({self.streaming.url}" + (
                ", candles from REST)" if self.scanner.stream_timeframe is None else ")")
        self.reporter.banner("PAPER" if c.dry_run else "LIVE", venue, c.account_size, timeframe,
                             c.check_interval, str(self.store.path),
                             "on the exchange" if self.stops else "in the bot", data)

    def run_cycle(self) -> None:
        self.cycle += 1
        started = time.perf_counter()
        try:
            with self.monitor.timing("run_cycle"):
                self._cycle_steps()
        except ExchangeError as exc:
            log.warning("cycle %d skipped: exchange unavailable (%s); positions are managed "
                        "again as soon as it answers", self.cycle, exc)
            if self.notifier is not None:
                self.notifier.error(f"exchange unavailable ({exc}); positions are managed "
                                    "again as soon as it answers")
            return
        self.store.set_meta("cycle", str(self.cycle))
        if self.notifier is not None:
            self.notifier.daily_summary_once(self.store, int(self.clock() * 1000), self.equity(),
                                             self.config.quote_currency, len(self.positions))
        self._status_line(time.perf_counter() - started)
        if self.config.enable_performance_monitoring and self.cycle % self.config.performance_report_interval == 0:
            self.reporter.text(self.monitor.report())
        for alert in self.monitor.take_alerts():        # already logged by the monitor
            if self.notifier is not None and alert.level == "critical":
                self.notifier.error(alert.reason)

    def _cycle_steps(self) -> None:
        self._sync_cash()
        record = self._record_state()          # the books as the cycle found them
        decided: list[tuple] = [("fill", f.symbol, f.price, f.amount, "resolved",
                                 f.client_order_id) for f in self.orders.resolve()]
        if self.config.entry_order == "limit":
            self._resolve_limits(decided)
        if self.stops is not None:
            self._reconcile_stops(decided)
        if decided:
            self._sync_cash()
        record["busy"] = sorted(self.orders.busy())   # what the decisions below see
        with self.monitor.timing("update_positions"):
            self.update_positions(record, decided)
        if not self.stop.is_set():
            self.scanner.stream_grace_ms = self._stream_grace_ms()
            with self.monitor.timing("scan_all_pairs"):
                self.scan = self.scanner.scan()
            if self.streaming is not None:
                self.streaming.watch(set(self.scan.universe) | set(self.positions))
            if not self.stop.is_set() and self.scan.view is not None:
                self._signal_exits(decided)
                self._enter(record, decided)
        view_ms = self.scan.view.now_ms if self.scan and self.scan.view is not None else None
        self.store.record_cycle(self.cycle, view_ms, json.dumps(record), decided)
        self.publish_facts()
        self.store.record_equity(int(self.clock() * 1000), self.equity(), self.ledger.cash,
                                 len(self.positions))

    def _resolve_limits(self, decided: list[tuple]) -> None:
        """Book what the resting limit entries filled; reprice the stale ones."""
        c = self.config
        best_bid = lambda symbol: self.scanner.fresh_prices([symbol])[symbol]  # noqa: E731
        for fill, position in self.orders.resolve_limits(c.limit_entry_timeout,
                                                         c.limit_entry_reprices, best_bid):
            decided.append(("fill", fill.symbol, fill.price, fill.amount, LIMIT_FILL,
                            fill.client_order_id))
            self.last_prices[fill.symbol] = fill.price
            self.reporter.opened(position)
            if self.stops is not None:
                parts: list = []
                self.stops.refresh(position, parts)
                self._record_stop_fills(parts, decided)

    def _reconcile_stops(self, decided: list[tuple]) -> None:
        """Book what the exchange's stops sold; put back the stops that are missing."""
        self._record_stop_fills(self.stops.reconcile(self.positions, self.orders.busy()), decided)

    def _record_stop_fills(self, parts, decided: list | None) -> None:
        for part in parts:
            if decided is not None:
                decided.append(("fill", part.fill.symbol, part.fill.price, part.fill.amount,
                                EXCHANGE_STOP, part.fill.client_order_id))
            self._learn(part.trade)
            self.reporter.closed(part.fill, part.trade, part.left)

    def _record_state(self) -> dict:
        """The decision record's start of a cycle: the books, the risk state and, on the first
        cycle of a run, the settings the decisions depend on."""
        state = {"cash": self.ledger.cash, "peak_equity": self.risk.peak_equity,
                 "positions": [asdict(p) | {"features": None} for p in self.positions.values()],
                 "last_exits": self.ledger.last_exits, "busy": sorted(self.orders.busy()),
                 "exchange_stops": self.stops.limit_below if self.stops else None}
        if not self._recorded_ts:
            state["setup"] = {"params": asdict(self.params), "risk": self.risk.settings(),
                              "strategy": [self.config.strategy, self.strategy.values]}
        return state

    def _enter(self, record: dict, decided: list[tuple]) -> None:
        """Decide entries on the scan's view and execute them; record what was decided from."""
        view = self.scan.view
        record["rules"] = self._record_candles(view.symbols)
        predictions: dict[str, float] = {}
        verdicts: dict[str, bool] = {}
        model = self._recording(self._predictor(), predictions)
        cash, equity = self.ledger.cash, self.equity()
        # Locks at the decision's own time, so a stop filled since the candle closed counts
        # now; but within the candle after the view's close (a cycle slower than a candle,
        # on a fast simulator, must not outlast a cooldown counted in candles).
        decided_at = min(int(self.clock() * 1000), view.now_ms + self.params.timeframe_ms - 1)
        halted, locked = self._protections(decided_at, equity)
        if self.edge_settings.enabled and not self._judge_edge(view.now_ms).open:
            halted = halted or self.edge.reason
        if self.paused:
            halted = halted or PAUSED
        with self.monitor.timing("decide"):
            decisions = decide_entries(view, self.positions, cash, equity, self.strategy,
                                       self.params, self.risk, self.broker.round_order, model,
                                       self._confirmer(verdicts), set(record["busy"]),
                                       locked, halted)
        self.decisions = decisions
        record.update(locked=sorted(locked), halted=halted)
        self._notify_kill_switch(equity)
        record.update(symbols=list(view.symbols), cash=cash, equity=equity,
                      used_model=decisions.used_model, predictions=predictions, verdicts=verdicts,
                      payoff=[model.avg_win, model.avg_loss] if model is not None else None)
        self.skip_log.note(decisions.skipped, halted)
        for intent in decisions.entries:
            if self.stop.is_set():
                break
            if self.config.entry_order == "limit":
                cid = self.orders.buy_limit(intent, intent.price)
                decided.append(("entry", intent.symbol, intent.price, intent.amount,
                                intent.reason, cid))
                continue
            with self.monitor.timing(f"execute_trade:{intent.symbol}"):
                position = self.orders.buy(intent)
            decided.append(("entry", intent.symbol, intent.price, intent.amount, intent.reason,
                            position.entry_client_order_id if position else None))
            if position is not None:
                self.last_prices[position.symbol] = position.entry_price
                if self.stops is not None:
                    self.stops.protect(position)
                self.reporter.opened(position)

    def _notify_kill_switch(self, equity: float) -> None:
        kill = self.risk.halt_reason(equity)
        if kill is not None and not self._kill_notified and self.notifier is not None:
            self.notifier.kill_switch(kill)
        self._kill_notified = kill is not None

    def _protections(self, now_ms: int, equity: float) -> tuple[str | None, set[str]]:
        """Every protection's locks at this decision time, rebuilt from the stored trades
        (so a restart changes nothing): (why every entry is locked or None, locked pairs)."""
        s = self.protection_settings
        longest = max(s.stoploss_guard_lookback_candles + s.stoploss_guard_lock_candles,
                      s.low_profit_lookback_candles + s.low_profit_lock_candles)
        since = now_ms - 2 * DAY_MS - longest * s.timeframe_ms
        protections = Protections(s, self.store.trades_since(since), self.ledger.last_exits)
        self.locks = protections.locks(now_ms, equity)
        if self.notifier is not None:
            keys = {(lock.kind, lock.scope, lock.until_ms) for lock in self.locks}
            for lock in self.locks:     # the cooldown follows every exit: not news
                key = (lock.kind, lock.scope, lock.until_ms)
                if lock.kind != "cooldown" and key not in self._notified_locks:
                    self.notifier.protection(lock, now_ms)
            self._notified_locks = keys
        self.store.set_meta("locks", json.dumps(describe(self.locks, now_ms)))
        return split(self.locks)

    def _judge_edge(self, now_ms: int) -> EdgeVerdict:
        """The edge gate on the strategy's signal trades over the candle store, judged once
        per closed candle."""
        if self.edge is None or self._edge_ms != now_ms:
            evidence = samples_from_candles(self.scanner.history(), self.strategy, self.params,
                                            self.risk.fee_rate)
            window = self.edge_settings.lookback_candles * self.params.timeframe_ms
            self.edge = judge(recent_returns(evidence.label_end_ms, evidence.time_ms,
                                             evidence.ret.astype(float), now_ms, window),
                              self.edge_settings)
            self._edge_ms = now_ms
            self.store.set_meta("edge", self.edge.reason)
        return self.edge

    @staticmethod
    def _recording(model: ModelFilter | None, predictions: dict[str, float]) -> ModelFilter | None:
        """The model, keeping each answer by its feature row for the record."""
        if model is None:
            return None

        def recorded(X, keys):
            p = model.predict(X, keys)
            predictions.update(zip((feature_key(row) for row in X), p.tolist()))
            return p

        return model._replace(predict=recorded)

    def _record_candles(self, symbols) -> dict[str, dict]:
        """Every closed candle a decision used, once: the whole history at first, then the new.
        Returns the market rules of the pairs seen for the first time."""
        rules = {}
        for symbol in symbols:
            candles = self.scanner.store.get(symbol)
            last = self._recorded_ts.get(symbol)
            if last is None:
                rules[symbol] = asdict(self.broker.rules(symbol))
            new = candles if last is None else candles[candles[:, 0] > last]
            if len(new):
                self.store.record_candles(symbol, new.tolist())
                self._recorded_ts[symbol] = int(new[-1, 0])
        return rules

    # -- positions ----------------------------------------------------------------------
    def update_positions(self, record: dict | None = None, decided: list | None = None,
                         prices: dict[str, float] | None = None) -> None:
        """Exits first, every cycle, against fresh prices (never the scan cache: the streamed
        bids while the streams are up, else REST); a stop the price raised (trailing,
        break-even) is persisted before the bot moves on."""
        if not self.positions:
            return
        if prices is None:
            prices = self._fresh_prices(self.positions)
        self.last_prices.update(prices)
        now_ms = int(self.clock() * 1000)
        if record is not None:
            record.update(exit_prices=prices, exit_ms=now_ms)
        busy = set(record["busy"]) if record is not None else self.orders.busy()
        bars = {s: Bar.at(p) for s, p in prices.items() if s not in busy}
        update = check_positions(self.positions, bars, now_ms, self.params)
        for symbol, (stop, high) in update.moved.items():
            self._move_stop(symbol, stop, high)
        for intent in update.exits:
            if self.stop.is_set():
                break
            self._exit(intent, decided)

    def _stream_grace_ms(self) -> int:
        """While candles stream, the newest one is awaited from the stream for STREAM_GRACE
        wall seconds after its close before REST is asked for it."""
        if self.streaming is None or not self.streaming.up or self.scanner.stream_timeframe is None:
            return 0
        return int(STREAM_GRACE * self.time_scale * 1000)

    def _fresh_prices(self, symbols) -> dict[str, float]:
        streamed = self.streaming.fresh_prices(symbols) if self.streaming is not None else None
        return streamed if streamed is not None else self.scanner.fresh_prices(symbols)

    def _move_stop(self, symbol: str, stop: float, high: float) -> None:
        old = self.positions[symbol].stop_loss
        self.store.move_stop(symbol, stop, high)
        position = self.ledger.move_stop(symbol, stop, high)
        if stop != old:
            log.info("%s: stop raised %.8g -> %.8g (high %.8g)", symbol, old, stop, high)
            if self.stops is not None:
                self.stops.refresh(position)

    def _signal_exits(self, decided: list | None) -> None:
        """Sell the held pairs the strategy's exit signal names on the newest closed candle."""
        view = self.scan.view if self.scan is not None else None
        if view is None or not self.params.use_exit_signal or not self.positions:
            return
        flags = self.strategy.exit_signal(view.latest)
        if flags is None:
            return
        busy = self.orders.busy()
        for symbol, flag in zip(view.symbols, np.asarray(flags, dtype=bool).tolist()):
            position = self.positions.get(symbol)
            if flag and position is not None and symbol not in busy and not self.stop.is_set():
                price = self._fresh_prices([symbol]).get(symbol)
                if price is not None and position.entry_time_ms < view.now_ms:
                    self._exit(ExitIntent(symbol, price, "exit_signal"), decided)

    def _exit(self, intent: ExitIntent, decided: list | None) -> None:
        """Sell one position (after the exchange's stop is confirmed gone); book and report."""
        position = self.positions[intent.symbol]
        if self.stops is not None:
            if left_to_exchange(intent.reason, intent.price, position, self.stops.limit_below):
                return
            parts: list = []
            released = self.stops.release(intent.symbol, parts)
            self._record_stop_fills(parts, decided)
            if not released:
                return                     # not sure the stop is gone: do not sell twice
            position = self.positions.get(intent.symbol)
            if position is None:           # the stop sold it all meanwhile
                return
        with self.monitor.timing(f"execute_trade:{intent.symbol}"):
            done = self.orders.sell(position, intent.price, intent.reason)
        if decided is not None:
            decided.append(("exit", intent.symbol, intent.price,
                            done[0].amount if done else 0.0, intent.reason,
                            done[0].client_order_id if done else None))
        if done is not None:
            fill, trade, left = done
            self._learn(trade)
            self.reporter.closed(fill, trade, left)

    # -- between cycles: what the streams bring -------------------------------------------
    def _on_arrivals(self, got: Arrivals) -> None:
        """Closed candles into the store, exits on every price update, fills and balances
        from the account stream; the loop stays the only writer of positions and money."""
        if got.candles:
            self.scanner.add_streamed(got.candles)
        if got.balance is not None and self._account is not None:
            self._apply_balances(got.balance, changed_only=True)
        if self.stops is not None and ("order" in got.lost or any(
                o.get("symbol") in self.positions and (o.get("filled") or o.get("status") != "open")
                for o in got.orders)):    # a held pair's order traded or ended: a stop sold?
            self._exit_check({}, reconcile=True)
        for bids in got.prices:           # every update, in order
            held = {s: p for s, p in bids.items() if s in self.positions}
            if held and not self.stop.is_set():
                self._exit_check(held, reconcile=False)

    def _exit_check(self, prices: dict[str, float], reconcile: bool) -> None:
        """An exit check between cycles, made when a price moves a stop or crosses an exit,
        or the account stream reports an order; recorded as a cycle of its own (the parity
        check replays it like any other)."""
        if not reconcile and not self._would_act(prices):
            return
        self.cycle += 1
        record, decided = self._record_state(), []
        try:
            if reconcile:
                self._reconcile_stops(decided)
            record["busy"] = sorted(self.orders.busy())
            self.update_positions(record, decided, prices)
        except ExchangeError as exc:
            log.warning("exit check skipped: exchange unavailable (%s); the next cycle retries",
                        exc)
        finally:
            self.store.record_cycle(self.cycle, None, json.dumps(record), decided)
            self.store.set_meta("cycle", str(self.cycle))
            self.publish_facts()

    def _would_act(self, prices: dict[str, float]) -> bool:
        """Whether these prices exit or move a stop of a pair with no order in doubt. Most
        price updates do neither, so the store is asked for the busy pairs only when the
        prices alone would act."""
        now_ms = int(self.clock() * 1000)
        update = check_positions(self.positions, {s: Bar.at(p) for s, p in prices.items()},
                                 now_ms, self.params)
        acting = {i.symbol for i in update.exits} | set(update.moved)
        if not acting:
            return False
        busy = self.orders.busy()
        return bool(acting - busy)

    def _learn(self, trade) -> None:
        if self.training_data is not None and trade.features is not None:
            self.training_data.add_trade(trade.symbol, trade.features, trade.return_pct / 100.0,
                                         trade.entry_time_ms, trade.exit_time_ms)

    # -- accounting ---------------------------------------------------------------------
    def equity(self) -> float:
        """Paper: the ledger's cash and positions. Live: what the exchange holds of the quote
        and of every coin the bot holds, is buying or selling, or keeps as dust, so an order
        whose outcome is unknown is counted once, whatever it did."""
        prices = dict(self.last_prices)
        if self.scan is not None and self.scan.view is not None:
            for s, p in zip(self.scan.view.symbols, self.scan.view.close.tolist()):
                prices.setdefault(s, p)
        if self._account is None:
            return self.ledger.equity(prices)
        known = {o.symbol: o.price for o in self.orders.unresolved()}    # the order's price,
        known |= {s: p.entry_price for s, p in self.positions.items()}   # else the entry's
        symbols = set(known) | set(self.ledger.dust)
        return self._account.get(self.config.quote_currency, 0.0) + sum(
            self._account.get(s.split("/")[0], 0.0) * prices.get(s, known.get(s, 0.0))
            for s in symbols)

    def _status_line(self, seconds: float) -> None:
        scan, decisions = self.scan, self.decisions
        self.reporter.status(
            self.cycle, seconds, len(scan.universe) if scan else 0, bool(scan and scan.from_cache),
            len(decisions.candidates) if decisions else 0, len(self.positions),
            self.config.max_open_positions, self.equity(), self.config.quote_currency,
            self.start_equity, self._model_state(), len(self.orders.unresolved()),
            self._gate_state())

    def _gate_state(self) -> str:
        """The status line's word on locks and the edge gate."""
        parts = []
        if self.locks:
            parts.append(f"{len(self.locks)} lock(s)")
        if self.edge is not None and self.edge_settings.enabled:
            parts.append("edge ok" if self.edge.open else "sitting out: no edge")
        return " | ".join(parts)

    def _model_state(self) -> str:
        if self.model is None:
            return "strategy alone (ML off)"
        bundle = self.model.bundle
        if bundle is None:
            return "strategy alone while the model trains"
        auc = bundle.meta.get("auc", float("nan"))
        if not trusted(bundle.meta, self.config.ml_min_auc):
            return (f"strategy alone: model v{bundle.version} not trusted (AUC {auc:.2f} < "
                    f"ML_MIN_AUC {self.config.ml_min_auc:g})")
        return f"model v{bundle.version} (AUC {auc:.2f})"

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close(timeout=3.0)
        if self.streaming is not None:
            self.streaming.close()
        if self.retrainer is not None:
            self.retrainer.stop(timeout=2.0)
        if self.advisor is not None:
            self.advisor.close()
        if self.client is not None:
            self.client.close()
        if self.store is not None:
            self.store.close()
        self._lock_file.close()

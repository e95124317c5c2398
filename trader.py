"""One trading cycle and the loop around it: exits -> scan -> decide -> execute -> persist."""
from __future__ import annotations

import fcntl
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import click

from exchange import ExchangeError, OrderRejected, PaperBroker, LiveBroker, create_client
from market_scanner import MarketScanner
from performance_monitor import PerformanceMonitor
from risk_manager import RiskManager
from store import Store, StoreError, TradeRow
from strategy import Bar, Position, StrategyParams, check_exits, decide_entries, mark_to_market

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The bot cannot start; the message is one line naming the cause and the fix."""


class Trader:
    def __init__(self, config, stop: threading.Event | None = None):
        self.config = config
        self.stop = stop or threading.Event()
        self.client = self.model = self.training_data = self.retrainer = self.advisor = None
        self.monitor = PerformanceMonitor(enabled=config.enable_performance_monitoring,
                                          slow_threshold=config.slow_operation_threshold)
        self._lock_file = self._claim_data_dir(config)
        try:
            self.store = Store.open(config.data_dir, config.mode)
        except StoreError as exc:
            raise StartupError(str(exc)) from exc
        try:
            self.client = create_client(config)
            self.client.load_markets()
        except ExchangeError as exc:
            self.close()
            raise StartupError(f"{config.exchange}: {exc}") from exc
        self.clock = self.client.clock
        self.time_scale = config.sim_speed if config.is_simulated else 1.0
        self.params = StrategyParams.from_config(config)
        self.scanner = MarketScanner(self.client, config, cancel=self.stop)
        self.risk = RiskManager.from_config(config, fee_rate=self._fee_rate())
        self.positions: dict[str, Position] = {}
        self.broker = self._make_broker()
        self.cycle = 0
        self.start_equity = config.starting_balance
        self.last_prices: dict[str, float] = {}
        self._last_skips: dict[str, str] = {}
        self.scan = self.decisions = None
        self._live_cash: float | None = None
        if config.llm_provider != "none":
            from llm_advisor import LLMAdvisor
            self.advisor = LLMAdvisor(config, self.monitor, self.clock)
        self._resume()

    # -- start-up -----------------------------------------------------------------------
    @staticmethod
    def _claim_data_dir(config):
        """One bot per database: a second one would trade the same positions twice."""
        path = Path(config.data_dir) / f".bot-{config.mode}.lock"
        handle = open(path, "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StartupError(f"another bot is already trading {config.mode} from {config.data_dir}; "
                               "stop it first or set a different DATA_DIR") from None
        return handle

    def _fee_rate(self) -> float:
        markets = self.client.load_markets()
        return max((m.get("taker") or 0.0) for m in markets.values()) if markets else 0.001

    def _make_broker(self):
        if self.config.dry_run:
            return PaperBroker(self.client, self.store.paper_cash(self.config.starting_balance))
        return LiveBroker(self.client, self.config.quote_currency)

    def _resume(self) -> None:
        """Reload open positions; settle orders whose outcome a crash left unrecorded."""
        for row in self.store.open_positions():
            self.positions[row.symbol] = row
        for order in self.store.pending_orders():
            self._settle_pending(order)
        start = self.store.get_meta("start_equity")
        if start is None:
            self.store.set_meta("start_equity", repr(self._cash()))
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

    def _settle_pending(self, order) -> None:
        """A paper order never filled if its fill was not committed; a live one is looked up."""
        if self.config.dry_run:
            self.store.mark_order(order.client_order_id, "abandoned",
                                  "the bot stopped before the paper fill was recorded")
            return
        fill = self.broker.find_order(order.symbol, order.client_order_id)
        if fill is None:
            self.store.mark_order(order.client_order_id, "abandoned", "not found on the exchange")
        elif order.side == "buy" and order.symbol not in self.positions:
            self._record_entry_fill(fill, SimpleNamespace(
                price=order.price, stop_loss=order.stop_loss, take_profit=order.take_profit, features=None))
        elif order.side == "sell" and order.symbol in self.positions:
            self._record_exit_fill(self.positions[order.symbol], fill, "reconciled")
        else:
            self.store.mark_order(order.client_order_id, "abandoned", "already reflected")

    def _start_model(self) -> None:
        """The model trains in the background from the scanner's candles; until it is ready
        the fallback rule trades."""
        from ml_model import (LabelParams, MLModel, PredictionCache, Retrainer, TrainingData,
                              samples_from_candles)

        self.model = MLModel(PredictionCache.from_config(self.config, self.clock))
        self.training_data = TrainingData()
        labels = LabelParams(self.params.stop_loss_atr, self.params.take_profit_atr,
                             self.params.max_hold_candles, self.params.timeframe_ms,
                             self.risk.fee_rate)
        self.retrainer = Retrainer.from_config(
            self.config, self.model, self.training_data,
            samples_provider=lambda: samples_from_candles(self.scanner.history(), labels),
            clock=self.clock).start()
        self.monitor.add_section("ML prediction cache", self.model.cache.report)

    def _predictor(self):
        if self.model is None and self.config.ml_enabled:
            self._start_model()
        if self.model is None:
            return None
        self.retrainer.maybe_retrain()
        return self.model.predict_proba if self.model.is_ready() else None

    def _confirmer(self):
        if self.advisor is None:
            return None
        return lambda states: {s: d.take for s, d in self.advisor.confirm(states).items()}

    # -- the loop -----------------------------------------------------------------------
    def run(self, cycles: int | None = None) -> None:
        self._banner()
        interval = self.config.check_interval / self.time_scale
        done = 0
        while not self.stop.is_set():
            started = time.monotonic()
            self.run_cycle()
            done += 1
            if cycles is not None and done >= cycles:
                break
            self.stop.wait(max(0.0, interval - (time.monotonic() - started)))
        click.echo(f"stopped after {done} cycle(s); state saved in {self.store.path}")

    def _banner(self) -> None:
        c = self.config
        mode = "PAPER" if c.dry_run else "LIVE"
        venue = (f"simulated exchange at {self.client.sim_server.url} ({c.sim_pairs} pairs, "
                 f"market clock x{c.sim_speed:g})" if c.is_simulated else c.exchange)
        click.echo(f"{mode} trading on {venue} | preset {c.account_size} | timeframe "
                   f"{c.timeframe} | every {c.check_interval:g}s of market time | "
                   f"database {self.store.path}")

    def run_cycle(self) -> None:
        self.cycle += 1
        started = time.perf_counter()
        try:
            with self.monitor.timing("run_cycle"):
                self._cycle_steps()
        except ExchangeError as exc:
            log.warning("cycle %d skipped: exchange unavailable (%s); positions are managed "
                        "again as soon as it answers", self.cycle, exc)
            return
        self.store.set_meta("cycle", str(self.cycle))
        self._status_line(time.perf_counter() - started)
        if self.config.enable_performance_monitoring and self.cycle % self.config.performance_report_interval == 0:
            click.echo(self.monitor.report())

    def _cycle_steps(self) -> None:
        self._live_cash = None
        with self.monitor.timing("update_positions"):
            self.update_positions()
        if self.stop.is_set():
            return
        with self.monitor.timing("scan_all_pairs"):
            self.scan = self.scanner.scan()
        if self.stop.is_set() or self.scan.view is None:
            return
        predict = self._predictor()
        with self.monitor.timing("decide"):
            decisions = decide_entries(self.scan.view, self.positions, self._cash(), self.equity(),
                                       self.params, self.risk, self.client.prepare_order,
                                       predict, self._confirmer())
        self.decisions = decisions
        self._log_skips(decisions.skipped)
        for intent in decisions.entries:
            if self.stop.is_set():
                break
            with self.monitor.timing(f"execute_trade:{intent.symbol}"):
                self.execute_entry(intent)
        self.store.record_equity(int(self.clock() * 1000), self.equity(), self._cash(), len(self.positions))

    # -- positions ----------------------------------------------------------------------
    def update_positions(self) -> None:
        """Exits first, every cycle, against fresh prices (never the scan cache)."""
        if not self.positions:
            return
        prices = self.scanner.fresh_prices(self.positions)
        self.last_prices.update(prices)
        now_ms = int(self.clock() * 1000)
        bars = {s: Bar.at(p) for s, p in prices.items()}
        for intent in check_exits(self.positions, bars, now_ms, self.params):
            if self.stop.is_set():
                break
            with self.monitor.timing(f"execute_trade:{intent.symbol}"):
                self.execute_exit(self.positions[intent.symbol], intent.reason)

    def _next_client_order_id(self) -> str:
        instance = self.store.get_meta("instance")
        if instance is None:
            instance = format(int(time.time() * 1000) % 36 ** 6, "x")
            self.store.set_meta("instance", instance)
        return f"tb{instance}-{self.store.next_sequence('order')}"

    def _send(self, symbol: str, side: str, amount: float, price: float, reason: str,
              stop_loss: float | None = None, take_profit: float | None = None):
        """Record the order as pending, then send it; a refused order is marked with why."""
        client_id = self._next_client_order_id()
        self.store.add_pending_order(client_id, symbol, side, amount, price, reason, stop_loss, take_profit)
        try:
            return self.broker.market_order(symbol, side, amount, client_id)
        except OrderRejected as exc:
            self.store.mark_order(client_id, "rejected", str(exc))
            log.warning("%s %s refused: %s", side, symbol, exc)
            return None

    def execute_entry(self, intent) -> None:
        fill = self._send(intent.symbol, "buy", intent.amount, intent.price, intent.reason,
                          intent.stop_loss, intent.take_profit)
        if fill is not None:
            self._record_entry_fill(fill, intent)

    def _record_entry_fill(self, fill, intent) -> None:
        """Stops keep the intent's distances from the actual fill price."""
        stop = fill.price - (intent.price - intent.stop_loss)
        take = fill.price + (intent.take_profit - intent.price)
        features = intent.features
        position = Position(fill.symbol, fill.amount, fill.price, fill.timestamp_ms, stop, take,
                            fill.fee, self.risk.group_of(fill.symbol), features, fill.client_order_id)
        self.store.record_entry(fill, position, self._paper_cash())
        self._live_cash = None
        self.positions[fill.symbol] = position
        self.last_prices[fill.symbol] = fill.price
        click.echo(f"OPEN  {fill.symbol:<12} {fill.amount:.8g} @ {fill.price:.8g} "
                   f"(fee {fill.fee:.4f}) stop {stop:.8g} target {take:.8g}")

    def execute_exit(self, position: Position, reason: str) -> None:
        """A refused exit stays open and is tried again next cycle."""
        price = self.last_prices.get(position.symbol, position.entry_price)
        fill = self._send(position.symbol, "sell", position.amount, price, reason)
        if fill is not None:
            self._record_exit_fill(position, fill, reason)

    def _record_exit_fill(self, position: Position, fill, reason: str) -> None:
        trade = TradeRow.from_exit(position, fill, reason)
        self.store.record_exit(fill, trade, self._paper_cash())
        self._live_cash = None
        del self.positions[position.symbol]
        if self.training_data is not None and position.features is not None:
            self.training_data.add_trade(position.symbol, position.features, trade.return_pct / 100.0,
                                         position.entry_time_ms, fill.timestamp_ms)
        click.echo(f"CLOSE {position.symbol:<12} {fill.amount:.8g} @ {fill.price:.8g} "
                   f"{reason:<11} PnL {trade.profit:+.2f} ({trade.return_pct:+.2f}%)")

    # -- accounting ---------------------------------------------------------------------
    def _paper_cash(self) -> float | None:
        return self.broker.cash if self.config.dry_run else None

    def _cash(self) -> float:
        """Paper cash, or the live free balance (asked once per cycle and after each fill)."""
        if self.config.dry_run:
            return self.broker.cash
        if self._live_cash is None:
            self._live_cash = self.broker.cash
        return self._live_cash

    def equity(self) -> float:
        prices = dict(self.last_prices)
        if self.scan is not None and self.scan.view is not None:
            for s, p in zip(self.scan.view.symbols, self.scan.view.close.tolist()):
                prices.setdefault(s, p)
        return self._cash() + mark_to_market(self.positions, prices)

    def _log_skips(self, skipped) -> None:
        """Each skipped entry is logged with its reason, once until the reason changes."""
        current = dict(skipped)
        for symbol, reason in current.items():
            if self._last_skips.get(symbol) != reason:
                log.info("skip %s: %s", symbol, reason)
        self._last_skips = current

    def _status_line(self, seconds: float) -> None:
        scan, decisions = self.scan, self.decisions
        equity = self.equity()
        pnl = equity - self.start_equity
        pairs = len(scan.universe) if scan else 0
        cached = " cached" if scan and scan.from_cache else ""
        click.echo(
            f"cycle {self.cycle:>4} | {seconds:5.2f}s | pairs {pairs}{cached} | candidates "
            f"{len(decisions.candidates) if decisions else 0} | positions {len(self.positions)}/"
            f"{self.config.max_open_positions} | equity {equity:,.2f} {self.config.quote_currency} "
            f"| PnL {pnl:+,.2f} ({pnl / self.start_equity:+.2%}) | {self._model_state()}")

    def _model_state(self) -> str:
        if self.model is None:
            return "rule (ML off)"
        bundle = self.model.bundle
        if bundle is None:
            return "rule while the model trains"
        return f"model v{bundle.version} (AUC {bundle.meta.get('auc', float('nan')):.2f})"

    def close(self) -> None:
        if self.retrainer is not None:
            self.retrainer.stop(timeout=2.0)
        if self.advisor is not None:
            self.advisor.close()
        if self.client is not None:
            self.client.close()
        self.store.close()
        self._lock_file.close()


def status_report(config, n_trades: int = 10) -> str:
    """Open positions, recent closed trades and totals from the store, as text."""
    store = Store.open(config.data_dir, config.mode)
    try:
        lines = [f"{config.mode} account, database {store.path}"]
        positions = store.open_positions()
        lines.append(f"open positions: {len(positions)}")
        for p in positions:
            lines.append(f"  {p.symbol:<12} {p.amount:.8g} @ {p.entry_price:.8g} stop "
                         f"{p.stop_loss:.8g} target {p.take_profit:.8g}")
        trades = store.recent_trades(n_trades)
        lines.append(f"recent closed trades: {len(trades)}")
        for t in trades:
            lines.append(f"  {t.symbol:<12} {t.entry_price:.8g} -> {t.exit_price:.8g} "
                         f"{t.exit_reason:<11} PnL {t.profit:+.2f} ({t.return_pct:+.2f}%)")
        tot = store.totals()
        lines.append(f"totals: {tot.trades} trades, win rate {tot.win_rate:.0%}, profit "
                     f"{tot.total_profit:+.2f}, fees {tot.fees:.2f}, best {tot.best:+.2f}, "
                     f"worst {tot.worst:+.2f}")
        lines.append(model_summary(config.data_dir))
        return "\n".join(lines)
    finally:
        store.close()


def model_summary(data_dir) -> str:
    """The saved model's out-of-sample quality, read from its metadata (nothing unpickled)."""
    from ml_model import saved_model_status

    meta = saved_model_status(data_dir)
    if not meta:
        return "model: none trained yet (the bot trades on its fallback rule)"
    return (f"model: {meta.get('kind')} trained on {meta.get('samples')} samples; out-of-sample "
            f"AUC {meta.get('auc', float('nan')):.3f}, precision at {meta.get('threshold')} "
            f"{meta.get('precision_at_threshold', float('nan')):.3f}, base rate "
            f"{meta.get('base_rate', float('nan')):.3f}")

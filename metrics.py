"""Prometheus metrics of a running Trader, read at scrape time (served at /metrics by the API).

A custom collector on a private registry reads what the trader already keeps: the loop's
facts (equity, cash, positions), the store's totals, the performance monitor's timings
(as summaries: count, sum and the p50/p95/p99 of its window), the exchange client's
request counts and rate-limit waits, the registered caches' hits and misses, and the queue
depths of the stream feed and the notifier. Nothing here writes to the trader, and a part
that fails to read is skipped (logged once per scrape at debug), never the whole scrape.

The monitor lets a listener see each duration (`monitor.add_listener(fn)`): the cycle and
scan durations also feed real cumulative Histograms (`bot_cycle_seconds`,
`bot_scan_seconds`), which Prometheus can aggregate over time and across bots.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from performance_monitor import cache_stats, family

log = logging.getLogger(__name__)

PREFIX = "bot"
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
# the operations whose every duration goes into a real Histogram (when the monitor can tell)
HISTOGRAMS = {"run_cycle": "cycle", "scan_all_pairs": "scan"}
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, float("inf"))

__all__ = ["TraderCollector", "Metrics", "CONTENT_TYPE_LATEST"]


def _num(value: Any) -> float:
    """A float for Prometheus (None and non-numbers: NaN)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class TraderCollector(Collector):
    """Reads the trader at every scrape; see the module docstring for what it exposes."""

    def __init__(self, trader: Any) -> None:
        self.trader = trader

    def collect(self) -> Iterable[Metric]:
        for part in (self._facts, self._trades, self._timings, self._exchange, self._caches,
                     self._queues):
            try:
                yield from part()
            except Exception as exc:  # one unreadable part must not empty the scrape
                log.debug("metrics: %s skipped: %s: %s", part.__name__, type(exc).__name__, exc)

    # -- the loop's facts --------------------------------------------------------------
    def _facts(self) -> Iterable[Metric]:
        facts = dict(self.trader.facts or {})
        gauges = (("equity", "equity", "Equity now: cash plus open positions at the last price"
                   " (quote currency)"),
                  ("start_equity", "start_equity", "Equity at start (quote currency)"),
                  ("cash", "cash", "Cash (quote currency)"),
                  ("cycle", "cycle", "The trading loop's cycle number"),
                  ("max_positions", "max_positions", "MAX_OPEN_POSITIONS"),
                  ("unresolved_orders", "unresolved_orders", "Orders whose outcome is in doubt"),
                  ("pairs", "pairs", "Pairs in the scanned universe"))
        for key, name, doc in gauges:
            if key in facts:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=_num(facts[key]))
        positions = facts.get("positions") or []
        yield GaugeMetricFamily(f"{PREFIX}_open_positions", "Open positions",
                                value=len(positions))
        unrealized = GaugeMetricFamily(f"{PREFIX}_unrealized_profit",
                                       "Unrealised profit of an open position (quote currency)",
                                       labels=["symbol"])
        for p in positions:
            unrealized.add_metric([str(p.get("symbol"))], _num(p.get("unrealized")))
        yield unrealized
        yield GaugeMetricFamily(f"{PREFIX}_paused", "1 while entries are paused (the API)",
                                value=1.0 if facts.get("paused") else 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_locks", "Protections (pair or global locks) active",
                                value=len(facts.get("locks") or []))
        if "streams_up" in facts:
            yield GaugeMetricFamily(f"{PREFIX}_streams_up", "1 while the market streams are up",
                                    value=1.0 if facts.get("streams_up") else 0.0)
        if "updated_ms" in facts:
            yield GaugeMetricFamily(f"{PREFIX}_facts_updated_seconds",
                                    "When the loop last published its state (market clock,"
                                    " Unix seconds)", value=_num(facts["updated_ms"]) / 1000)

    def _trades(self) -> Iterable[Metric]:
        totals = self.trader.store.totals()
        yield CounterMetricFamily(f"{PREFIX}_trades", "Closed trades", value=totals.trades)
        yield CounterMetricFamily(f"{PREFIX}_winning_trades", "Closed trades with a profit",
                                  value=totals.wins)
        yield CounterMetricFamily(f"{PREFIX}_fees", "Fees paid on closed trades (quote)",
                                  value=totals.fees)
        yield GaugeMetricFamily(f"{PREFIX}_realized_profit",
                                "Net profit of all closed trades (quote currency)",
                                value=totals.total_profit)

    # -- timings -----------------------------------------------------------------------
    def _timings(self) -> Iterable[Metric]:
        monitor = self.trader.monitor
        summary = Metric(f"{PREFIX}_operation_duration_seconds",
                         "Durations the performance monitor timed; quantiles over its last "
                         "window of calls", "summary")
        families: dict[str, list[float]] = {}   # execute_trade:BTC/USDT -> execute_trade
        for name in sorted(monitor.operations()):
            s = monitor.stats(name)
            fam = family(name)
            if fam != name:
                agg = families.setdefault(fam, [0.0, 0.0])
                agg[0] += s["calls"]
                agg[1] += s["total"]
                continue
            labels = {"operation": name}
            for q, key in QUANTILES:
                summary.add_sample(summary.name, labels | {"quantile": q}, s[key])
            summary.add_sample(f"{summary.name}_count", labels, s["calls"])
            summary.add_sample(f"{summary.name}_sum", labels, s["total"])
        for fam, (calls, total) in sorted(families.items()):  # per pair: no quantiles
            summary.add_sample(f"{summary.name}_count", {"operation": fam}, calls)
            summary.add_sample(f"{summary.name}_sum", {"operation": fam}, total)
        yield summary

    # -- the exchange --------------------------------------------------------------------
    def _exchange(self) -> Iterable[Metric]:
        client = self.trader.client
        requests = CounterMetricFamily(f"{PREFIX}_exchange_requests",
                                       "Exchange requests by ccxt method and outcome (ok, error)",
                                       labels=["method", "outcome"])
        for key, n in sorted(dict(getattr(client, "request_counts", None) or {}).items()):
            method, outcome = key if isinstance(key, tuple) else (str(key), "ok")
            requests.add_metric([str(method), str(outcome)], _num(n))
        yield requests
        waited = getattr(client, "rate_limit_waits", None)
        if waited is None:
            waited = getattr(getattr(client, "limiter", None), "waited", None)
        if waited is not None:
            yield CounterMetricFamily(f"{PREFIX}_rate_limit_wait_seconds",
                                      "Seconds spent waiting for the exchange's rate limit,"
                                      " all threads", value=_num(waited))

    # -- caches ---------------------------------------------------------------------------
    def _caches(self) -> Iterable[Metric]:
        hits = CounterMetricFamily(f"{PREFIX}_cache_hits", "Cache hits", labels=["cache"])
        misses = CounterMetricFamily(f"{PREFIX}_cache_misses", "Cache misses", labels=["cache"])
        rate = GaugeMetricFamily(f"{PREFIX}_cache_hit_ratio", "Cache hits / lookups",
                                 labels=["cache"])
        for name, s in cache_table(self.trader.monitor).items():
            if "error" in s:
                continue
            hits.add_metric([name], s["hits"])
            misses.add_metric([name], s["misses"])
            rate.add_metric([name], s["hit_rate"])
        yield from (hits, misses, rate)

    # -- queues -------------------------------------------------------------------------
    def _queues(self) -> Iterable[Metric]:
        streaming = getattr(self.trader, "streaming", None)
        if streaming is not None:
            feed = streaming.feed.stats()
            yield CounterMetricFamily(f"{PREFIX}_feed_published", "Stream messages published",
                                      value=feed["published"])
            depth = GaugeMetricFamily(f"{PREFIX}_feed_depth",
                                      "Messages waiting in a feed subscriber's mailbox",
                                      labels=["subscriber"])
            overflow = CounterMetricFamily(f"{PREFIX}_feed_overflow",
                                           "Messages a full mailbox dropped",
                                           labels=["subscriber"])
            for name, s in feed["subscribers"].items():
                depth.add_metric([name], s["depth"])
                overflow.add_metric([name], s["overflow"])
            yield from (depth, overflow)
            stream = streaming.stream.stats()
            yield CounterMetricFamily(f"{PREFIX}_stream_reconnects",
                                      "Market stream reconnects", value=stream["reconnects"])
        notifier = getattr(self.trader, "notifier", None)
        if notifier is not None:
            families = {key: (CounterMetricFamily if key != "queued" else GaugeMetricFamily)(
                f"{PREFIX}_notifications_{key}", doc, labels=["destination"])
                for key, doc in (("queued", "Notifications waiting to be sent"),
                                 ("sent", "Notifications sent"),
                                 ("failed", "Notifications that failed for good"),
                                 ("dropped", "Notifications a full queue dropped"))}
            for destination, s in notifier.stats().items():
                for key, metric in families.items():
                    metric.add_metric([destination], _num(s.get(key)))
            yield from families.values()


def cache_table(monitor: Any) -> dict[str, dict[str, Any]]:
    """Every cache registered with the monitor: its stats (see performance_monitor.cache_stats),
    or {"error": ...} for one that cannot say."""
    table = {}
    for name, cache in monitor.caches().items():
        try:
            s = cache_stats(cache)
        except Exception as exc:
            table[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        table[name] = {k: v for k, v in s.items() if isinstance(v, (int, float, str, bool))}
    return table


class Metrics:
    """The private registry of one trader: `render()` gives the text exposition format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, trader: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TraderCollector(trader))
        self.histograms: dict[str, Histogram] = {}
        for op, short in HISTOGRAMS.items():
            self.histograms[op] = Histogram(
                f"{PREFIX}_{short}_seconds", f"Duration of each {op} (seconds)",
                buckets=BUCKETS, registry=self.registry)
        trader.monitor.add_listener(self._observe)

    def _observe(self, name: str, seconds: float) -> None:
        histogram = self.histograms.get(name)
        if histogram is not None:
            histogram.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

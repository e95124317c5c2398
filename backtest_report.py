"""What a backtest reports: the summary metrics, the per-pair table, the terminal text,
report.json and the equity chart (equity.png), from a `backtest.BacktestResult`.

Conventions: returns are per replayed candle, from the equity at each candle's close;
Sharpe and Sortino are annualised over 365-day years (crypto trades every day) with a
risk-free rate of 0.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure

from backtest import DAY_MS, BacktestResult
from domain import Trade

YEAR_MS = 365 * DAY_MS
# The fields of a trade in report.json (the Trade's order ids and features stay out).
TRADE_FIELDS = ("symbol", "amount", "entry_price", "exit_price", "entry_time_ms", "exit_time_ms",
                "entry_fee", "exit_fee", "profit", "return_pct", "exit_reason", "entry_reason",
                "probability")
CONVENTIONS = {
    "sharpe_sortino": "mean per-candle equity return / std (Sortino: root mean square "
                      "of negative returns), times sqrt(candles per 365-day year); "
                      "risk-free rate 0",
    "buy_hold": "equal split of the starting balance over the pairs, each bought at "
                "its first open in the period and sold at its last close, taker fee "
                "both ways",
    "times": "ms since the epoch, UTC; entry = open of the fill candle, exit = close "
             "of the candle in which the exit happened",
}


# --------------------------------------------------------------------------- metrics

def compute_metrics(result: BacktestResult) -> dict[str, Any]:
    """Summary figures; Sharpe/Sortino from per-candle equity returns (risk-free 0),
    annualised by sqrt(candles per 365-day year); Sortino's downside deviation is the root
    mean square of the negative returns over all candles."""
    start = result.starting_balance
    trades = result.trades
    profits = np.array([t.profit for t in trades])
    first = int(result.times_ms[0]) if len(result.times_ms) else None
    last = int(result.times_ms[-1]) + result.timeframe_ms if len(result.times_ms) else None
    return {
        "start_ms": first, "end_ms": last,
        "days": (last - first) / DAY_MS if first is not None else 0.0,
        "steps": int(len(result.equity)), "pairs": len(result.symbols), "quote": result.quote,
        "starting_balance": start, "final_equity": result.final_equity,
        "trades": len(trades),
        "win_rate_pct": 100.0 * float((profits > 0).mean()) if trades else None,
        "total_return_pct": 100.0 * (result.final_equity / start - 1.0),
        "buy_hold_return_pct": 100.0 * (float(result.buy_hold[-1]) / start - 1.0)
        if len(result.buy_hold) else 0.0,
        **_risk_metrics(result),
        "profit_factor": _profit_factor(profits),
        "avg_trade_profit": float(profits.mean()) if trades else None,
        "avg_trade_return_pct": float(np.mean([t.return_pct for t in trades])) if trades else None,
        "exposure_pct": 100.0 * float(result.exposed.mean()) if len(result.exposed) else 0.0,
        "fees_paid": result.fees,
        **_costs(result, profits, last - first if first is not None else 0),
        "strategy": result.strategy,
        "model": ("walk-forward" if result.used_model else "strategy only"),
        "model_trainings": result.trainings, "interrupted": result.interrupted,
        "exit_reasons": {r: sum(t.exit_reason == r for t in trades)
                         for r in sorted({t.exit_reason for t in trades})},
        **_refusals(result.events),
    }


def _costs(result: BacktestResult, profits: np.ndarray, span_ms: int) -> dict[str, Any]:
    """Gross profit (before fees and slippage), net profit, and what the costs took."""
    net = float(profits.sum()) if profits.size else 0.0
    gross = net + result.fees + result.slippage
    share = (lambda x: 100.0 * x / gross) if gross > 0 else (lambda x: None)
    return {"gross_profit": gross, "net_profit": net, "slippage_paid": result.slippage,
            "fees_pct_of_gross": share(result.fees), "slippage_pct_of_gross": share(result.slippage),
            "trades_per_day": len(profits) / (span_ms / DAY_MS) if span_ms > 0 else 0.0,
            "edge_gate_closed_steps": result.gated_steps}


def _risk_metrics(result: BacktestResult) -> dict[str, float | None]:
    """Max drawdown, Sharpe and Sortino of the equity curve."""
    start, eq = result.starting_balance, result.equity
    curve = np.concatenate([[start], eq])
    returns = np.diff(curve) / curve[:-1] if len(eq) else np.empty(0)
    per_year = YEAR_MS / result.timeframe_ms
    sd = returns.std(ddof=1) if returns.size > 1 else 0.0
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2))) if returns.size else 0.0
    drawdown = 1.0 - curve / np.maximum.accumulate(curve)
    return {
        "max_drawdown_pct": 100.0 * float(drawdown.max()),
        "sharpe": float(returns.mean() / sd * math.sqrt(per_year)) if sd > 0 else None,
        "sortino": float(returns.mean() / downside * math.sqrt(per_year)) if downside > 0 else None,
    }


def _profit_factor(profits: np.ndarray) -> float | None:
    """Gross profit / gross loss (inf without a loss, None without trades that moved)."""
    gross_win = float(profits[profits > 0].sum())
    gross_loss = float(-profits[profits < 0].sum())
    if gross_loss > 0:
        return gross_win / gross_loss
    return math.inf if gross_win > 0 else None


def _refusals(events: list[tuple]) -> dict[str, Any]:
    """How many entries were decided, refused at the fill, dropped, and the usual reason."""
    kinds = Counter(e[0] for e in events)
    reasons = Counter(_reason_kind(e[3]) for e in events
                      if e[0] in ("entry_rejected", "exit_rejected"))
    return {"entries_decided": kinds["entry"], "entries_rejected": kinds["entry_rejected"],
            "entries_dropped": kinds["entry_dropped"], "exits_rejected": kinds["exit_rejected"],
            "main_rejection": reasons.most_common(1)[0][0] if reasons else None}


def _reason_kind(message: str) -> str:
    """'ETH/BTC: order book too thin: 7865 of 116863 ...' -> 'order book too thin'."""
    return message.split(": ", 2)[1] if message.count(": ") >= 1 else message


def pair_table(result: BacktestResult) -> list[dict[str, Any]]:
    """Per pair: candles, missing candles, trades, win rate, profit, fees, buy and hold."""
    rows = []
    for s in result.symbols:
        ts = [t for t in result.trades if t.symbol == s]
        info = result.pair_info.get(s, {})
        rows.append({"pair": s, "candles": info.get("candles", 0),
                     "missing_candles": info.get("missing_candles", 0), "trades": len(ts),
                     "win_rate_pct": 100.0 * sum(t.profit > 0 for t in ts) / len(ts) if ts else None,
                     "profit": sum(t.profit for t in ts),
                     "avg_return_pct": sum(t.return_pct for t in ts) / len(ts) if ts else None,
                     "fees": sum(t.entry_fee + t.exit_fee for t in ts),
                     "buy_hold_pct": info.get("buy_hold_pct")})
    return rows


# --------------------------------------------------------------------------- the terminal

def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return fmt.format(x)


def format_report(result: BacktestResult, metrics: dict[str, Any] | None = None) -> str:
    """The terminal report: summary, then the per-pair table."""
    m = metrics or compute_metrics(result)
    return "\n".join(_summary_lines(result, m) + [""] + _pair_lines(result))


def _summary_lines(result: BacktestResult, m: dict[str, Any]) -> list[str]:
    q = m["quote"]
    tf_min = result.timeframe_ms // 60_000
    model = (f"strategy {result.strategy}"
             + (f" filtered by the walk-forward model ({m['model_trainings']} fits, "
                f"{result.trusted_fits} trusted)"
                if result.used_model else " alone (--no-model)"))
    return [
        f"Backtest {_utc(m['start_ms'])} .. {_utc(m['end_ms'])} UTC ({m['days']:.1f} days, "
        f"{m['steps']:,} steps of {tf_min}m, {m['pairs']} pairs), {model}"
        + ("  [INTERRUPTED: partial]" if m["interrupted"] else ""),
        f"  balance          {m['starting_balance']:,.2f} -> {m['final_equity']:,.2f} {q}",
        f"  trades           {m['trades']} (win rate {_num(m['win_rate_pct'], '{:.1f}%')}"
        + "".join(f"{'; ' if i == 0 else ', '}{k} {v}"
                  for i, (k, v) in enumerate(m["exit_reasons"].items())) + ")",
        f"  total return     {m['total_return_pct']:+.2f}%   buy & hold (equal weight, same "
        f"pairs and period) {m['buy_hold_return_pct']:+.2f}%",
        f"  max drawdown     {m['max_drawdown_pct']:.2f}%",
        f"  Sharpe / Sortino {_num(m['sharpe'])} / {_num(m['sortino'])}  (per-candle returns, "
        f"annualised x sqrt({YEAR_MS // result.timeframe_ms:,} candles/yr), risk-free 0)",
        f"  profit factor    {_num(m['profit_factor'])}",
        f"  average trade    {_num(m['avg_trade_profit'], '{:+.4f}')} {q} "
        f"({_num(m['avg_trade_return_pct'], '{:+.3f}%')})",
        f"  exposure         {m['exposure_pct']:.1f}% of steps with a position open",
        f"  fees paid        {m['fees_paid']:,.4f} {q}",
        f"  costs            gross {m['gross_profit']:+,.2f} -> net {m['net_profit']:+,.2f} {q}: "
        f"fees {_num(m['fees_pct_of_gross'], '{:.0f}%')} and slippage "
        f"{_num(m['slippage_pct_of_gross'], '{:.0f}%')} of gross "
        f"({m['slippage_paid']:,.2f} {q}); {m['trades_per_day']:.2f} trades/day",
        f"  edge gate        closed at {m['edge_gate_closed_steps']:,} decision points",
        f"  entries          {m['entries_decided']} decided, {m['entries_rejected']} refused at "
        f"the fill" + (f" (mostly: {m['main_rejection']})" if m["main_rejection"] else "")
        + f", {m['entries_dropped']} dropped (no next candle)",
    ]


def _pair_lines(result: BacktestResult) -> list[str]:
    lines = [f"  {'pair':<12} {'candles':>7} {'missing':>7} {'trades':>6} {'win%':>6} "
             f"{'profit':>12} {'avg%':>7} {'fees':>10} {'B&H%':>8}"]
    for r in pair_table(result):
        lines.append(f"  {r['pair']:<12} {r['candles']:>7} {r['missing_candles']:>7} "
                     f"{r['trades']:>6} {_num(r['win_rate_pct'], '{:.1f}'):>6} "
                     f"{r['profit']:>+12.4f} {_num(r['avg_return_pct'], '{:+.3f}'):>7} "
                     f"{r['fees']:>10.4f} {_num(r['buy_hold_pct'], '{:+.2f}'):>8}")
    return lines


# --------------------------------------------------------------------------- files

def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def trade_record(trade: Trade) -> dict[str, Any]:
    """A trade as report.json lists it (TRADE_FIELDS)."""
    return {name: getattr(trade, name) for name in TRADE_FIELDS}


def report_dict(result: BacktestResult, max_points: int = 2000) -> dict[str, Any]:
    """report.json: summary, per-pair table, every trade, the (thinned) equity curve."""
    n = len(result.equity)
    stride = max(1, math.ceil(n / max_points))
    keep = np.unique(np.append(np.arange(0, n, stride), n - 1)) if n else np.empty(0, int)
    return _json_safe({
        "summary": compute_metrics(result),
        "conventions": CONVENTIONS,
        "pairs": pair_table(result),
        "trades": [trade_record(t) for t in result.trades],
        "equity_curve": {"time_ms": (result.times_ms[keep] + result.timeframe_ms).tolist(),
                         "equity": result.equity[keep].tolist(),
                         "buy_hold": result.buy_hold[keep].tolist()},
    })


def plot_equity(result: BacktestResult, path: str | Path) -> Path:
    """PNG of the equity curve against buy-and-hold, drawdown from the peak shaded."""
    times = [datetime.fromtimestamp((t + result.timeframe_ms) / 1000, tz=timezone.utc)
             for t in result.times_ms.tolist()]
    eq, bh = result.equity, result.buy_hold
    peak = np.maximum.accumulate(np.maximum(eq, result.starting_balance))
    fig = Figure(figsize=(11, 5.5), dpi=100)      # no pyplot: no global figure state
    ax = fig.subplots()
    ax.plot(times, bh, color="#999999", lw=1.2, label="buy & hold (equal weight)")
    ax.plot(times, eq, color="#1f5fa8", lw=1.4, label="strategy equity")
    ax.fill_between(times, eq, peak, where=eq < peak, color="#d62728", alpha=0.25,
                    lw=0, label="drawdown")
    ax.set_ylabel(f"equity ({result.quote})")
    ax.set_title(f"Backtest {', '.join(result.symbols)}"
                 + (" (interrupted)" if result.interrupted else ""))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    fig.autofmt_xdate()
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def write_report(result: BacktestResult, report_dir: str | Path) -> tuple[Path, Path]:
    """report.json and equity.png in report_dir (created); returns their paths."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report_dict(result), indent=1))
    tmp.replace(path)
    return path, plot_equity(result, report_dir / "equity.png")


__all__ = ["TRADE_FIELDS", "compute_metrics", "format_report", "pair_table", "plot_equity",
           "report_dict", "trade_record", "write_report"]

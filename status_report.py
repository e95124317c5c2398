"""`python bot.py status`: the account as the database has it, without starting the bot:
open positions, recent trades, orders in doubt, dust, totals, the saved model's quality,
the edge gate's verdict and the locks at the last cycle."""
from __future__ import annotations

import json

from ml_model import saved_model_status
from store import Store


def status_report(config, n_trades: int = 10) -> str:
    """Open positions, recent closed trades and totals from the store, as text."""
    store = Store.open(config.data_dir, config.mode)
    try:
        lines = [f"{config.mode} account, database {store.path}"]
        positions = store.open_positions()
        lines.append(f"open positions: {len(positions)}")
        for p in positions:
            target = f"target {p.take_profit:.8g}" if p.take_profit < float("inf") else "no target"
            lines.append(f"  {p.symbol:<12} {p.amount:.8g} @ {p.entry_price:.8g} stop "
                         f"{p.stop_loss:.8g} {target}")
        trades = store.recent_trades(n_trades)
        lines.append(f"recent closed trades: {len(trades)}")
        for t in trades:
            lines.append(f"  {t.symbol:<12} {t.entry_price:.8g} -> {t.exit_price:.8g} "
                         f"{t.exit_reason:<11} PnL {t.profit:+.2f} ({t.return_pct:+.2f}%)")
        unresolved = store.pending_orders()
        if unresolved:
            lines.append(f"orders whose outcome is not known yet: {len(unresolved)} ("
                         + ", ".join(f"{o.side} {o.symbol}" for o in unresolved) + ")")
        dust = store.dust()
        if dust:
            lines.append("dust (below the market's minimum, not sellable): "
                         + ", ".join(f"{a:.8g} {s.split('/')[0]}" for s, a in sorted(dust.items())))
        tot = store.totals()
        lines.append(f"totals: {tot.trades} trades, win rate {tot.win_rate:.0%}, profit "
                     f"{tot.total_profit:+.2f}, fees {tot.fees:.2f}, best {tot.best:+.2f}, "
                     f"worst {tot.worst:+.2f}")
        lines.append(model_summary(config.data_dir, config.mode))
        lines.append((store.get_meta("edge") or "edge gate: not judged yet") if config.edge_gate
                     else "edge gate: off (EDGE_GATE=false)")
        locks = json.loads(store.get_meta("locks") or "[]")
        lines.append(f"active locks at the last cycle: {len(locks)}")
        lines += [f"  {line}" for line in locks]
        return "\n".join(lines)
    finally:
        store.close()


def model_summary(data_dir, mode: str = "paper") -> str:
    """The saved model's out-of-sample quality, read from its metadata (nothing unpickled)."""
    meta = saved_model_status(data_dir, mode)
    if not meta:
        return "model: none trained yet (the strategy decides alone)"
    return (f"model: {meta.get('kind')} trained on {meta.get('samples')} samples; out-of-sample "
            f"AUC {meta.get('auc', float('nan')):.3f}, precision at {meta.get('threshold')} "
            f"{meta.get('precision_at_threshold', float('nan')):.3f}, base rate "
            f"{meta.get('base_rate', float('nan')):.3f}")

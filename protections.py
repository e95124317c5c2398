"""Entry locks ("protections"): cooldown, stoploss guard, daily loss limit, low-profit pairs.

Every lock is a pure function of the closed trades, the last exit time of each pair and the
decision time (plus current equity for the daily loss limit), so the live bot and the
backtester get identical locks, and a restart rebuilds them from what the store keeps.

Conventions used throughout (all times are epoch milliseconds, UTC):

* A trade counts at its ``exit_time_ms``; its entry time plays no part.
* A lookback of L candles at time t is the half-open window ``(t - L*tf, t]``: a trade
  exactly L candles old is out, one at t is in, and one after t is not seen yet.
* A lock is active at decision time ``now_ms`` while ``now_ms < until_ms``: it still blocks
  at ``until_ms - 1`` and entries are allowed again at ``until_ms`` exactly.
* The stoploss guard and the low-profit lock are evaluated as of each exit: an exit at t
  that, counting every trade in the lookback ending at t, meets the condition creates a lock
  from t until ``t + lock_candles*tf``. Once created it lasts its full length even after the
  trades leave the lookback, and it is active only at decision times ``>= t``. A trade
  merely leaving the lookback never creates a lock.
* Trades may be added in any order as long as none is more than ``RETAIN_SLACK_MS`` (one
  day) older than the newest exit already added, and ``locks`` may be asked about any time
  no more than that before the newest exit; both raise ``ValueError`` otherwise (rebuild
  from the full trade list instead: the constructor sorts what it is given).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Mapping

from domain import Trade

STOP_REASONS = frozenset({"stop_loss", "trailing_stop", "exchange_stop"})
ALL_PAIRS = "*"
DAY_MS = 86_400_000
RETAIN_SLACK_MS = DAY_MS    # how far out of order trades and decision times may come
KIND_ORDER = ("daily_loss", "stoploss_guard", "low_profit", "cooldown")


@dataclass(frozen=True)
class ProtectionSettings:
    """What the protections are parameterised by; lengths are in candles of `timeframe_ms`.

    cooldown_candles: a pair is locked after any exit (a partial sell too) on the close of
        the candle the exit happened in and the next ``cooldown_candles - 1`` closes, i.e.
        while ``now < ceil(exit/tf)*tf + cooldown_candles*tf`` (the former strategy.cooling_down's
        rule). 0 turns it off.
    stoploss_guard_trades: N > 0 turns the guard on: an exit whose reason is in
        STOP_REASONS that makes N or more stop exits in the lookback ending at it locks
        entries for ``stoploss_guard_lock_candles`` from it; per pair (only that pair's
        stops count, only that pair is locked) or, by default, globally (every stop counts,
        every pair is locked: scope "*").
    daily_loss_limit: a fraction of equity > 0 turns it on: when the realised loss of the
        current UTC day reaches it, every entry is locked until the next UTC midnight.
    low_profit_lookback_candles: L > 0 turns it on: an exit after which the pair's trades in
        the lookback ending at it number at least ``low_profit_min_trades`` and their
        returns (sum of return_pct/100) sum below ``low_profit_min_return`` locks the pair
        for ``low_profit_lock_candles`` from that exit.
    """
    timeframe_ms: int
    cooldown_candles: int = 1
    stoploss_guard_trades: int = 0
    stoploss_guard_lookback_candles: int = 24
    stoploss_guard_lock_candles: int = 12
    stoploss_guard_per_pair: bool = False
    daily_loss_limit: float = 0.0
    low_profit_lookback_candles: int = 0
    low_profit_min_trades: int = 2
    low_profit_min_return: float = 0.0
    low_profit_lock_candles: int = 48

    def __post_init__(self) -> None:
        if self.timeframe_ms <= 0:
            raise ValueError(f"timeframe_ms must be positive, got {self.timeframe_ms}")
        for name in ("cooldown_candles", "stoploss_guard_trades",
                     "stoploss_guard_lookback_candles", "stoploss_guard_lock_candles",
                     "low_profit_lookback_candles", "low_profit_lock_candles"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.stoploss_guard_trades > 0 and self.stoploss_guard_lookback_candles < 1:
            raise ValueError("stoploss_guard_lookback_candles must be >= 1 when the guard is on")
        if self.low_profit_min_trades < 1:
            raise ValueError(f"low_profit_min_trades must be >= 1, got {self.low_profit_min_trades}")
        if not 0.0 <= self.daily_loss_limit < 1.0:
            raise ValueError(f"daily_loss_limit must be in [0, 1), got {self.daily_loss_limit}")

    @classmethod
    def from_config(cls, config, timeframe_ms: int | None = None) -> "ProtectionSettings":
        """The config's protection settings; `timeframe_ms` (the strategy's decision
        timeframe) defaults to TIMEFRAME."""
        c = config
        return cls(
            timeframe_ms=timeframe_ms or int(c.timeframe_seconds * 1000),
            cooldown_candles=c.cooldown_candles,
            stoploss_guard_trades=c.stoploss_guard_trades,
            stoploss_guard_lookback_candles=c.stoploss_guard_lookback,
            stoploss_guard_lock_candles=c.stoploss_guard_lock,
            stoploss_guard_per_pair=c.stoploss_guard_per_pair,
            daily_loss_limit=c.daily_loss_limit,
            low_profit_lookback_candles=c.low_profit_lookback,
            low_profit_min_trades=c.low_profit_min_trades,
            low_profit_min_return=c.low_profit_min_return,
            low_profit_lock_candles=c.low_profit_lock,
        )

    @property
    def guard_on(self) -> bool:
        return self.stoploss_guard_trades > 0

    @property
    def low_profit_on(self) -> bool:
        return self.low_profit_lookback_candles > 0


@dataclass(frozen=True)
class Lock:
    """An active entry lock: no entries in `scope` (a symbol, or "*" for every pair) at a
    decision time before `until_ms`; `reason` is one line for a trader."""
    scope: str
    until_ms: int
    reason: str
    kind: str           # "cooldown" | "stoploss_guard" | "daily_loss" | "low_profit"


def cooldown_until(exit_ms: int, settings: ProtectionSettings) -> int:
    """When the cooldown after an exit at `exit_ms` ends (== exit_ms if it is off)."""
    tf = settings.timeframe_ms
    if settings.cooldown_candles <= 0:
        return exit_ms
    return -(-exit_ms // tf) * tf + settings.cooldown_candles * tf


def utc_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class Protections:
    """Incremental: add closed trades as they happen; `locks` is then cheap at every candle.

    Only trades within the longest lookback (plus one day, and at least one UTC day) of the
    newest exit are kept, and the stoploss guard and low-profit locks are worked out once
    when a trade is added, so neither memory nor the cost of a call grows with the history.
    """

    def __init__(self, settings: ProtectionSettings, trades: Iterable[Trade] = (),
                 last_exits: Mapping[str, int] | None = None) -> None:
        self.settings = settings
        tf = settings.timeframe_ms
        self._guard_ms = settings.stoploss_guard_lookback_candles * tf if settings.guard_on else 0
        self._low_ms = settings.low_profit_lookback_candles * tf if settings.low_profit_on else 0
        self._keep_ms = RETAIN_SLACK_MS + max(DAY_MS, self._guard_ms, self._low_ms)
        self._recent: deque[Trade] = deque()        # by exit_time_ms, oldest first
        self._triggers: dict[tuple[str, str, int], Lock] = {}   # (kind, scope, exit time)
        self._last_exits: dict[str, int] = {}
        self._newest: int | None = None
        for symbol, exit_ms in (last_exits or {}).items():
            self.note_exit(symbol, exit_ms)
        for trade in sorted(trades, key=lambda t: t.exit_time_ms):
            self.add(trade)

    @property
    def last_exits(self) -> dict[str, int]:
        """The last exit time of each pair (a copy)."""
        return dict(self._last_exits)

    def note_exit(self, symbol: str, exit_ms: int) -> None:
        """Record an exit for the cooldown only (a partial sell counts too); the latest wins."""
        if exit_ms > self._last_exits.get(symbol, exit_ms - 1):
            self._last_exits[symbol] = exit_ms

    def add(self, trade: Trade) -> None:
        """Record a closed trade (and its exit for the cooldown)."""
        exit_ms = trade.exit_time_ms
        if self._newest is not None and exit_ms < self._newest - RETAIN_SLACK_MS:
            raise ValueError(f"trade {trade.symbol} exited at {exit_ms}, more than a day before "
                             f"the newest exit added ({self._newest}): rebuild Protections "
                             "from the full trade list instead")
        self.note_exit(trade.symbol, exit_ms)
        self._insert(trade)
        if self._newest is None or exit_ms > self._newest:
            self._newest = exit_ms
            self._prune()
        self._reevaluate(trade)

    def locks(self, now_ms: int, equity: float) -> list[Lock]:
        """The locks active at decision time `now_ms`, at most one per kind and scope (the
        longest), ordered: all-pairs locks first, then by pair and kind.

        `equity` is the current equity, used by the daily loss limit only: today's loss is
        ``-sum(profit)`` of the trades with exit_time_ms in ``[UTC midnight, now_ms]``; it
        locks when positive and ``>= daily_loss_limit * (equity + loss)``, the equity the day
        would have had without it."""
        if self._newest is not None and now_ms < self._newest - RETAIN_SLACK_MS:
            raise ValueError(f"locks asked at {now_ms}, more than a day before the newest exit "
                             f"added ({self._newest})")
        found = self._cooldowns(now_ms) + self._triggered(now_ms)
        daily = self._daily_loss(now_ms, equity)
        if daily is not None:
            found.append(daily)
        return sorted(found, key=lambda k: (k.scope != ALL_PAIRS, k.scope,
                                            KIND_ORDER.index(k.kind)))

    def locked(self, now_ms: int, equity: float) -> tuple[bool, set[str]]:
        """(every entry locked?, the pairs locked one by one) at decision time `now_ms`."""
        halted, pairs = split(self.locks(now_ms, equity))
        return halted is not None, pairs

    # -- bookkeeping -------------------------------------------------------------------------

    def _insert(self, trade: Trade) -> None:
        """Insert keeping exit order; a tie goes after the trades already there."""
        recent = self._recent
        if not recent or recent[-1].exit_time_ms <= trade.exit_time_ms:
            recent.append(trade)
            return
        i = len(recent)
        while i > 0 and recent[i - 1].exit_time_ms > trade.exit_time_ms:
            i -= 1
        recent.insert(i, trade)

    def _prune(self) -> None:
        """Drop what no allowed add or query can need any more."""
        assert self._newest is not None
        horizon = self._newest - self._keep_ms
        while self._recent and self._recent[0].exit_time_ms <= horizon:
            self._recent.popleft()
        ended = self._newest - RETAIN_SLACK_MS
        for key in [k for k, lock in self._triggers.items() if lock.until_ms <= ended]:
            del self._triggers[key]

    def _window(self, t: int, span_ms: int) -> list[Trade]:
        """Trades with exit_time_ms in (t - span_ms, t], newest first."""
        out = []
        for trade in reversed(self._recent):
            if trade.exit_time_ms <= t - span_ms:
                break
            if trade.exit_time_ms <= t:
                out.append(trade)
        return out

    def _reevaluate(self, added: Trade) -> None:
        """Re-work the locks created at the exits whose lookback the new trade falls in:
        the exits at or after it, within the longer lookback (for an in-order add: its own)."""
        e = added.exit_time_ms
        span = max(self._guard_ms, self._low_ms)
        if span == 0:
            return
        later = []
        for trade in reversed(self._recent):
            if trade.exit_time_ms < e:
                break
            if trade.exit_time_ms < e + span:
                later.append(trade)
        is_stop = added.exit_reason in STOP_REASONS
        for trade in later:
            t = trade.exit_time_ms
            if is_stop and trade.exit_reason in STOP_REASONS and t < e + self._guard_ms:
                if self.settings.stoploss_guard_per_pair:
                    if trade.symbol == added.symbol:
                        self._evaluate_guard(trade.symbol, t)
                else:
                    self._evaluate_guard(ALL_PAIRS, t)
            if trade.symbol == added.symbol and t < e + self._low_ms:
                self._evaluate_low_profit(trade.symbol, t)

    def _evaluate_guard(self, scope: str, t: int) -> None:
        s = self.settings
        stops = [x for x in self._window(t, self._guard_ms) if x.exit_reason in STOP_REASONS
                 and (scope == ALL_PAIRS or x.symbol == scope)]
        key = ("stoploss_guard", scope, t)
        if len(stops) >= s.stoploss_guard_trades:
            where = "" if scope == ALL_PAIRS else f" on {scope}"
            self._triggers[key] = Lock(
                scope, t + s.stoploss_guard_lock_candles * s.timeframe_ms,
                f"stoploss guard: {len(stops)} stops{where} in "
                f"{s.stoploss_guard_lookback_candles} candles", "stoploss_guard")
        else:
            self._triggers.pop(key, None)

    def _evaluate_low_profit(self, symbol: str, t: int) -> None:
        s = self.settings
        mine = [x for x in self._window(t, self._low_ms) if x.symbol == symbol]
        total = sum(x.return_pct for x in mine) / 100.0
        key = ("low_profit", symbol, t)
        if len(mine) >= s.low_profit_min_trades and total < s.low_profit_min_return:
            self._triggers[key] = Lock(
                symbol, t + s.low_profit_lock_candles * s.timeframe_ms,
                f"low profit: {len(mine)} trades in {s.low_profit_lookback_candles} candles "
                f"returned {total:+.2%} (minimum {s.low_profit_min_return:+.2%})", "low_profit")
        else:
            self._triggers.pop(key, None)

    # -- the locks ---------------------------------------------------------------------------

    def _cooldowns(self, now_ms: int) -> list[Lock]:
        s = self.settings
        if s.cooldown_candles <= 0:
            return []
        out = []
        for symbol, exit_ms in self._last_exits.items():
            until = cooldown_until(exit_ms, s)
            if now_ms < until:
                plural = "" if s.cooldown_candles == 1 else "s"
                out.append(Lock(symbol, until, f"cooldown: exited at {utc_text(exit_ms)}, "
                                f"{s.cooldown_candles} candle{plural}", "cooldown"))
        return out

    def _triggered(self, now_ms: int) -> list[Lock]:
        """The longest active stoploss-guard / low-profit lock of each scope."""
        best: dict[tuple[str, str], Lock] = {}
        for (kind, scope, t), lock in self._triggers.items():
            if t <= now_ms < lock.until_ms:
                held = best.get((kind, scope))
                if held is None or lock.until_ms > held.until_ms:
                    best[(kind, scope)] = lock
        return list(best.values())

    def _daily_loss(self, now_ms: int, equity: float) -> Lock | None:
        limit = self.settings.daily_loss_limit
        if limit <= 0:
            return None
        midnight = now_ms - now_ms % DAY_MS
        loss = -sum(x.profit for x in self._window(now_ms, now_ms - midnight + 1))
        base = equity + loss
        if loss <= 0 or loss < limit * base:
            return None
        share = f"{loss / base:.2%} of {base:.2f}" if base > 0 else f"all of {base:.2f}"
        return Lock(ALL_PAIRS, midnight + DAY_MS,
                    f"daily loss limit: lost {loss:.2f} today, {share} (limit {limit:.2%})",
                    "daily_loss")


def split(locks: Iterable[Lock]) -> tuple[str | None, set[str]]:
    """(why every entry is locked, or None; the pairs locked one by one)."""
    locks = list(locks)
    everything = [k.reason for k in locks if k.scope == ALL_PAIRS]
    return (everything[0] if everything else None,
            {k.scope for k in locks if k.scope != ALL_PAIRS})


def describe(locks: Iterable[Lock], now_ms: int) -> list[str]:
    """One line per lock, for a status display: what is locked, until when (UTC), how many
    minutes are left (rounded up), and why."""
    lines = []
    for lock in locks:
        what = "all pairs" if lock.scope == ALL_PAIRS else lock.scope
        left = max(0, -(-(lock.until_ms - now_ms) // 60_000))
        lines.append(f"{what} locked until {utc_text(lock.until_ms)} ({left} min left): "
                     f"{lock.reason}")
    return lines

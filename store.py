"""SQLite persistence of orders, open positions, closed trades, equity and counters.

One file per mode in DATA_DIR (trades-paper.sqlite, trades-live.sqlite) so dry runs and
live trading never mix. WAL journal with synchronous=FULL: every write method commits
(and fsyncs) before it returns, and a change that spans tables is one transaction, so a
crash leaves either all of it or none of it.

Order lifecycle: `add_pending_order` is committed before the order is sent; the fill is
then recorded with `record_entry` / `record_exit` (order -> filled plus the position,
trade and paper cash changes), or the order is closed with `mark_order` (rejected,
abandoned). `pending_orders()` lists what a crash left undecided, for reconciliation.

The decision record (`record_cycle`, `record_candles`) keeps what each cycle decided from
and what it decided, so `bot.py parity` can replay a run through the backtester.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain import Fill, Position, Trade

MODES = ("paper", "live")
# pending: committed, about to be sent (or a crash came first); unknown: sent, its answer lost;
# open: resting on the exchange (stops); the rest are final.
ORDER_STATUSES = ("pending", "unknown", "open", "filled", "canceled", "rejected", "abandoned")
UNRESOLVED = ("pending", "unknown")
DUST_KEY = "dust"
PAPER_CASH_KEY = "paper_cash"

_SCHEMA_V1 = (
    """CREATE TABLE orders (
        id INTEGER PRIMARY KEY,
        client_order_id TEXT NOT NULL UNIQUE,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
        amount REAL NOT NULL,
        price REAL NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'filled', 'rejected', 'abandoned')),
        exchange_order_id TEXT,
        fee REAL NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        stop_loss REAL,
        take_profit REAL)""",
    "CREATE INDEX orders_pending ON orders (created_ms) WHERE status = 'pending'",
    """CREATE TABLE positions (
        symbol TEXT PRIMARY KEY,
        amount REAL NOT NULL CHECK (amount > 0),
        entry_price REAL NOT NULL,
        entry_time_ms INTEGER NOT NULL,
        stop_loss REAL NOT NULL,
        take_profit REAL NOT NULL,
        entry_fee REAL NOT NULL,
        group_name TEXT NOT NULL,
        entry_client_order_id TEXT NOT NULL,
        features BLOB)""",
    """CREATE TABLE trades (
        id INTEGER PRIMARY KEY,
        symbol TEXT NOT NULL,
        amount REAL NOT NULL,
        entry_price REAL NOT NULL,
        exit_price REAL NOT NULL,
        entry_time_ms INTEGER NOT NULL,
        exit_time_ms INTEGER NOT NULL,
        entry_fee REAL NOT NULL,
        exit_fee REAL NOT NULL,
        profit REAL NOT NULL,
        return_pct REAL NOT NULL,
        exit_reason TEXT NOT NULL,
        features BLOB,
        entry_client_order_id TEXT NOT NULL,
        exit_client_order_id TEXT NOT NULL UNIQUE)""",
    "CREATE INDEX trades_exit_time ON trades (exit_time_ms)",
    """CREATE TABLE equity (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        equity REAL NOT NULL,
        cash REAL NOT NULL,
        open_positions INTEGER NOT NULL)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_SCHEMA_V2 = (
    "ALTER TABLE positions ADD COLUMN entry_reason TEXT NOT NULL DEFAULT 'rule'",
    "ALTER TABLE positions ADD COLUMN probability REAL",
    "ALTER TABLE trades ADD COLUMN entry_reason TEXT NOT NULL DEFAULT 'rule'",
    "ALTER TABLE trades ADD COLUMN probability REAL",
    # The decision record: every closed candle a cycle decided from, once ...
    """CREATE TABLE candles (
        symbol TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL,
        volume REAL NOT NULL,
        PRIMARY KEY (symbol, ts_ms)) WITHOUT ROWID""",
    # ... each cycle's inputs beyond the candles (JSON) ...
    """CREATE TABLE cycles (
        cycle INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        view_ms INTEGER,
        inputs TEXT NOT NULL)""",
    # ... and what it decided.
    """CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        cycle INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('entry', 'exit', 'fill')),
        symbol TEXT NOT NULL,
        price REAL NOT NULL,
        amount REAL NOT NULL,
        reason TEXT NOT NULL,
        client_order_id TEXT)""",
    "CREATE INDEX decisions_cycle ON decisions (cycle)",
)
_SCHEMA_V3 = (
    # Trades gain the dust they left, and one order may now close several (its partial
    # fills, e.g. a stop's): the exit order's id is no longer unique.
    """CREATE TABLE trades_v3 (
        id INTEGER PRIMARY KEY,
        symbol TEXT NOT NULL,
        amount REAL NOT NULL,
        entry_price REAL NOT NULL,
        exit_price REAL NOT NULL,
        entry_time_ms INTEGER NOT NULL,
        exit_time_ms INTEGER NOT NULL,
        entry_fee REAL NOT NULL,
        exit_fee REAL NOT NULL,
        profit REAL NOT NULL,
        return_pct REAL NOT NULL,
        exit_reason TEXT NOT NULL,
        features BLOB,
        entry_client_order_id TEXT NOT NULL,
        exit_client_order_id TEXT NOT NULL,
        entry_reason TEXT NOT NULL DEFAULT 'rule',
        probability REAL,
        dust REAL NOT NULL DEFAULT 0)""",
    "INSERT INTO trades_v3 SELECT *, 0 FROM trades",
    "DROP TABLE trades",
    "ALTER TABLE trades_v3 RENAME TO trades",
    "CREATE INDEX trades_exit_time ON trades (exit_time_ms)",
    "CREATE INDEX trades_exit_order ON trades (exit_client_order_id)",
    # Orders gain the unknown / open / canceled states, a kind (stops rest on the exchange)
    # and what of them has been booked: SQLite changes a CHECK only by rebuilding the table.
    """CREATE TABLE orders_v3 (
        id INTEGER PRIMARY KEY,
        client_order_id TEXT NOT NULL UNIQUE,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
        amount REAL NOT NULL,
        price REAL NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'unknown', 'open', 'filled',
                                               'canceled', 'rejected', 'abandoned')),
        exchange_order_id TEXT,
        fee REAL NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        stop_loss REAL,
        take_profit REAL,
        kind TEXT NOT NULL DEFAULT 'market' CHECK (kind IN ('market', 'stop', 'limit')),
        filled REAL NOT NULL DEFAULT 0,
        attempt INTEGER NOT NULL DEFAULT 0,
        fill_price REAL)""",
    """INSERT INTO orders_v3 (id, client_order_id, symbol, side, amount, price, status,
        exchange_order_id, fee, created_ms, updated_ms, reason, stop_loss, take_profit)
        SELECT id, client_order_id, symbol, side, amount, price, status, exchange_order_id,
        fee, created_ms, updated_ms, reason, stop_loss, take_profit FROM orders""",
    "DROP TABLE orders",
    "ALTER TABLE orders_v3 RENAME TO orders",
    "CREATE INDEX orders_unresolved ON orders (created_ms)"
    " WHERE status IN ('pending', 'unknown', 'open')",
)
# MIGRATIONS[i] takes a database from user_version i to i + 1.
# v4: a position's high-water mark, which trailing and break-even stops follow.
_SCHEMA_V4 = ("ALTER TABLE positions ADD COLUMN high_water REAL NOT NULL DEFAULT 0",)
MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """A database that cannot be opened or written; the message is one line with the path."""


@dataclass(frozen=True)
class OrderRow:
    client_order_id: str
    symbol: str
    side: str
    amount: float
    price: float
    status: str
    exchange_order_id: str | None
    fee: float
    created_ms: int
    updated_ms: int
    reason: str
    stop_loss: float | None = None     # an entry's protective levels travel with its order,
    take_profit: float | None = None   # so a fill found after a crash gets the same ones
    kind: str = "market"               # "stop": a stop-loss resting on the exchange;
                                       # "limit": a limit entry resting there
    filled: float = 0.0                # of a resting order: how much of it is booked so far
    attempt: int = 0                   # of a limit entry: how many times it was repriced
    fill_price: float | None = None    # the average fill price (`price` is the order's own)


@dataclass(frozen=True)
class EquityRow:
    ts_ms: int
    equity: float
    cash: float
    open_positions: int


@dataclass(frozen=True)
class Totals:
    """Aggregates over all closed trades; win_rate is a fraction (0..1)."""

    trades: int
    wins: int
    losses: int
    win_rate: float
    total_profit: float
    fees: float
    best: float
    worst: float


def features_to_blob(features: Sequence[float] | None) -> bytes | None:
    """Little-endian float32 bytes (None stays None)."""
    if features is None:
        return None
    values = array("f", features)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def blob_to_features(blob: bytes | None) -> tuple[float, ...] | None:
    """Inverse of `features_to_blob`."""
    if blob is None:
        return None
    values = array("f")
    values.frombytes(blob)
    if sys.byteorder == "big":
        values.byteswap()
    return tuple(values)


def store_path(data_dir: str | Path, mode: str) -> Path:
    """DATA_DIR/trades-<mode>.sqlite for mode 'paper' or 'live'."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return Path(data_dir) / f"trades-{mode}.sqlite"


class Store:
    """The bot's database. Thread-safe: one connection, used under a lock."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._conn = self._connect()

    @classmethod
    def open(cls, data_dir: str | Path, mode: str,
             clock: Callable[[], float] = time.time) -> Store:
        """Open (creating if needed) DATA_DIR/trades-<mode>.sqlite."""
        path = store_path(data_dir, mode)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(path, clock)

    def _connect(self) -> sqlite3.Connection:
        try:
            # Owner-only from the start; SQLite gives the -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                if path.exists():      # an older database may have been readable by all
                    os.chmod(path, 0o600)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}; check the path "
                             "and its permissions") from exc
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise sqlite3.DatabaseError("cannot switch to WAL journal mode")
            conn.execute("PRAGMA synchronous = FULL")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {' '.join(check.split())}")
            self._migrate(conn)
        except (sqlite3.Error, StoreError) as exc:
            conn.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(
                f"{self.path} is not a usable trades database ({exc}); move it aside or "
                "delete it to start a fresh one (its positions and history will be "
                "forgotten)") from exc
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, newer than this "
                             f"program's {SCHEMA_VERSION}; upgrade the bot or use another "
                             "DATA_DIR")
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statements in MIGRATIONS[version:]:
                for sql in statements:
                    conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; any error rolls back and raises StoreError."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLite may already have rolled back
                        conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, StoreError) as exc:
                raise StoreError(f"{self.path}: {what} failed: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: query failed: {exc}") from exc

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- orders ---------------------------------------------------------------------------

    def add_pending_order(self, client_order_id: str, symbol: str, side: str, amount: float,
                          price: float, reason: str = "", stop_loss: float | None = None,
                          take_profit: float | None = None, kind: str = "market",
                          attempt: int = 0) -> None:
        """Record an order about to be sent (committed before returning, so before sending)."""
        now = self._now_ms()
        with self._transaction("add_pending_order") as conn:
            conn.execute(
                "INSERT INTO orders (client_order_id, symbol, side, amount, price, status,"
                " created_ms, updated_ms, reason, stop_loss, take_profit, kind, attempt)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
                (client_order_id, symbol, side, amount, price, now, now, reason, stop_loss,
                 take_profit, kind, attempt))

    def mark_order(self, client_order_id: str, status: str, reason: str | None = "",
                   exchange_order_id: str | None = None) -> None:
        """Set an order's status (e.g. rejected, abandoned) with the reason (None keeps the
        reason it was sent for)."""
        if status not in ORDER_STATUSES:
            raise ValueError(f"status must be one of {ORDER_STATUSES}, got {status!r}")
        with self._transaction("mark_order") as conn:
            cur = conn.execute(
                "UPDATE orders SET status = ?, reason = COALESCE(?, reason), updated_ms = ?,"
                " exchange_order_id = COALESCE(?, exchange_order_id)"
                " WHERE client_order_id = ?",
                (status, reason, self._now_ms(), exchange_order_id, client_order_id))
            if cur.rowcount != 1:
                raise StoreError(f"unknown order {client_order_id!r}")

    def pending_orders(self) -> list[OrderRow]:
        """Market orders sent (or about to be) whose outcome is not known yet, oldest first."""
        return self._orders("WHERE status IN ('pending', 'unknown') AND kind = 'market'"
                            " ORDER BY created_ms, id")

    def live_stops(self) -> list[OrderRow]:
        """Stop orders that rest (or may rest) on the exchange, oldest first."""
        return self._resting("stop")

    def live_limits(self) -> list[OrderRow]:
        """Limit entries that rest (or may rest) on the exchange, oldest first."""
        return self._resting("limit")

    def _resting(self, kind: str) -> list[OrderRow]:
        return self._orders("WHERE status IN ('pending', 'unknown', 'open') AND kind = ?"
                            " ORDER BY created_ms, id", (kind,))

    def all_orders(self, symbol: str | None = None) -> list[OrderRow]:
        """Every order (of one pair), oldest first."""
        if symbol is None:
            return self._orders("ORDER BY created_ms, id")
        return self._orders("WHERE symbol = ? ORDER BY created_ms, id", (symbol,))

    def order(self, client_order_id: str) -> OrderRow | None:
        rows = self._orders("WHERE client_order_id = ?", (client_order_id,))
        return rows[0] if rows else None

    def _orders(self, where: str, params: Sequence[Any] = ()) -> list[OrderRow]:
        rows = self._query(
            "SELECT client_order_id, symbol, side, amount, price, status, exchange_order_id,"
            " fee, created_ms, updated_ms, reason, stop_loss, take_profit, kind, filled, attempt,"
            f" fill_price FROM orders {where}",
            params)
        return [OrderRow(*row) for row in rows]

    @staticmethod
    def _fill_order(conn: sqlite3.Connection, fill: Fill, done: bool = True) -> None:
        """A market order's fill (final: the order is filled), or the next part of a resting
        order's (`done` False: it may fill more; amount and fee accumulate in `filled` and
        `fee`)."""
        if done:
            cur = conn.execute(
                "UPDATE orders SET status = 'filled', amount = filled + ?, fill_price = ?,"
                " fee = fee + ?, filled = filled + ?, exchange_order_id = ?, updated_ms = ?"
                " WHERE client_order_id = ? AND status != 'filled'",
                (fill.amount, fill.price, fill.fee, fill.amount, fill.order_id,
                 fill.timestamp_ms, fill.client_order_id))
        else:
            cur = conn.execute(
                "UPDATE orders SET status = 'open', fee = fee + ?, filled = filled + ?,"
                " fill_price = ?, exchange_order_id = ?, updated_ms = ? WHERE client_order_id = ?"
                " AND status != 'filled'",
                (fill.fee, fill.amount, fill.price, fill.order_id, fill.timestamp_ms,
                 fill.client_order_id))
        if cur.rowcount != 1:
            raise StoreError(f"order {fill.client_order_id!r} is unknown or already filled")

    def _set_cash(self, conn: sqlite3.Connection, cash: float | None) -> None:
        if cash is not None:
            self._upsert_meta(conn, PAPER_CASH_KEY, repr(float(cash)))

    # -- positions and trades -------------------------------------------------------------

    def record_entry(self, fill: Fill, position: Position, cash: float | None = None,
                     order_done: bool = True) -> None:
        """One transaction: order -> filled (or a resting order's part booked), the position
        inserted (or, after another buy of a held pair, updated), paper cash set (if given)."""
        with self._transaction("record_entry") as conn:
            self._fill_order(conn, fill, order_done)
            conn.execute(
                "INSERT INTO positions (symbol, amount, entry_price, entry_time_ms, stop_loss,"
                " take_profit, entry_fee, group_name, entry_client_order_id, features,"
                " entry_reason, probability, high_water)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (symbol) DO UPDATE SET amount = excluded.amount,"
                " entry_price = excluded.entry_price, entry_fee = excluded.entry_fee",
                (position.symbol, position.amount, position.entry_price,
                 position.entry_time_ms, position.stop_loss, position.take_profit,
                 position.entry_fee, position.group, fill.client_order_id,
                 features_to_blob(position.features), position.entry_reason,
                 position.probability, position.high_water))
            self._set_cash(conn, cash)

    def move_stop(self, symbol: str, stop_loss: float, high_water: float) -> None:
        """Persist a position's raised stop and high-water mark (trailing, break-even)."""
        with self._transaction("move_stop") as conn:
            cur = conn.execute("UPDATE positions SET stop_loss = ?, high_water = ? WHERE symbol = ?",
                               (stop_loss, high_water, symbol))
            if cur.rowcount != 1:
                raise StoreError(f"no open position in {symbol}")

    def record_exit(self, fill: Fill, trade: Trade, remaining: Position | None = None,
                    cash: float | None = None, dust: Mapping[str, float] | None = None,
                    order_done: bool = True) -> None:
        """One transaction: order -> filled (or a stop's part booked), trade inserted, the
        position deleted (or reduced to `remaining` after a partial sell), cash and the
        dust held set (if given)."""
        with self._transaction("record_exit") as conn:
            self._fill_order(conn, fill, order_done)
            if dust is not None:
                self._upsert_meta(conn, DUST_KEY, json.dumps(dict(dust)))
            if remaining is None:
                cur = conn.execute("DELETE FROM positions WHERE symbol = ?", (trade.symbol,))
            else:
                cur = conn.execute("UPDATE positions SET amount = ?, entry_fee = ? WHERE symbol = ?",
                                   (remaining.amount, remaining.entry_fee, trade.symbol))
            if cur.rowcount != 1:
                raise StoreError(f"no open position in {trade.symbol}")
            conn.execute(
                "INSERT INTO trades (symbol, amount, entry_price, exit_price, entry_time_ms,"
                " exit_time_ms, entry_fee, exit_fee, profit, return_pct, exit_reason,"
                " features, entry_client_order_id, exit_client_order_id, entry_reason,"
                " probability, dust) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (trade.symbol, trade.amount, trade.entry_price, trade.exit_price,
                 trade.entry_time_ms, trade.exit_time_ms, trade.entry_fee, trade.exit_fee,
                 trade.profit, trade.return_pct, trade.exit_reason,
                 features_to_blob(trade.features), trade.entry_client_order_id,
                 fill.client_order_id, trade.entry_reason, trade.probability, trade.dust))
            self._set_cash(conn, cash)

    def open_positions(self) -> list[Position]:
        """Open positions, oldest entry first."""
        rows = self._query(
            "SELECT symbol, amount, entry_price, entry_time_ms, stop_loss, take_profit,"
            " entry_fee, group_name, features, entry_client_order_id, entry_reason, probability,"
            " high_water FROM positions ORDER BY entry_time_ms, symbol")
        return [Position(*row[:8], blob_to_features(row[8]), *row[9:]) for row in rows]

    def recent_trades(self, n: int = 10) -> list[Trade]:
        """The last `n` closed trades, most recent first."""
        return self._trades("ORDER BY exit_time_ms DESC, id DESC LIMIT ?", (n,))

    def all_trades(self) -> list[Trade]:
        """Every closed trade, in the order they closed."""
        return self._trades("ORDER BY id")

    def trades_since(self, exit_ms: int) -> list[Trade]:
        """The trades closed at or after `exit_ms`, in the order they closed."""
        return self._trades("WHERE exit_time_ms >= ? ORDER BY id", (int(exit_ms),))

    def _trades(self, tail: str, params: Sequence[Any] = ()) -> list[Trade]:
        rows = self._query(
            "SELECT symbol, amount, entry_price, exit_price, entry_time_ms, exit_time_ms,"
            " entry_fee, exit_fee, profit, return_pct, exit_reason, entry_reason, probability,"
            " features, entry_client_order_id, exit_client_order_id, dust"
            f" FROM trades {tail}", params)
        return [Trade(*row[:13], blob_to_features(row[13]), *row[14:]) for row in rows]

    def dust(self) -> dict[str, float]:
        """Coins held that the market would not buy (below its minimum amount or value)."""
        return json.loads(self.get_meta(DUST_KEY, "{}"))

    def last_exits(self) -> dict[str, int]:
        """When each pair was last sold (the strategy's cooldown needs it after a restart)."""
        return dict(self._query("SELECT symbol, MAX(exit_time_ms) FROM trades GROUP BY symbol"))

    def totals(self) -> Totals:
        (trades, wins, profit, fees, best, worst), = self._query(
            "SELECT COUNT(*), COALESCE(SUM(profit > 0), 0), COALESCE(SUM(profit), 0.0),"
            " COALESCE(SUM(entry_fee + exit_fee), 0.0), COALESCE(MAX(profit), 0.0),"
            " COALESCE(MIN(profit), 0.0) FROM trades")
        return Totals(trades, wins, trades - wins, wins / trades if trades else 0.0,
                      profit, fees, best, worst)

    # -- equity ---------------------------------------------------------------------------

    def record_equity(self, ts_ms: int, equity: float, cash: float,
                      open_positions: int) -> None:
        with self._transaction("record_equity") as conn:
            conn.execute("INSERT INTO equity (ts_ms, equity, cash, open_positions)"
                         " VALUES (?, ?, ?, ?)", (ts_ms, equity, cash, open_positions))

    def peak_equity(self) -> float:
        """The highest equity ever recorded (0 on a fresh database)."""
        (peak,), = self._query("SELECT COALESCE(MAX(equity), 0.0) FROM equity")
        return peak

    def equity_curve(self, limit: int | None = None) -> list[EquityRow]:
        """The last `limit` snapshots (all when None), oldest first."""
        rows = self._query(
            "SELECT ts_ms, equity, cash, open_positions FROM (SELECT * FROM equity"
            " ORDER BY id DESC LIMIT ?) ORDER BY id", (-1 if limit is None else limit,))
        return [EquityRow(*row) for row in rows]

    # -- the decision record --------------------------------------------------------------

    def record_candles(self, symbol: str, rows: Sequence[Sequence[float]]) -> None:
        """Closed candles [ts_ms, o, h, l, c, v] a cycle decided from (each kept once)."""
        with self._transaction("record_candles") as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO candles (symbol, ts_ms, open, high, low, close, volume)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(symbol, int(r[0]), *map(float, r[1:6])) for r in rows])

    def record_cycle(self, cycle: int, view_ms: int | None, inputs: str,
                     decisions: Sequence[tuple]) -> None:
        """One cycle's inputs (JSON text) and decisions: (kind, symbol, price, amount, reason,
        client_order_id); kind "fill" is a fill booked that no decision of this cycle made
        (a resolved order, a resting limit entry, a stop on the exchange)."""
        with self._transaction("record_cycle") as conn:   # a cycle number reused after a
            conn.execute("DELETE FROM decisions WHERE cycle = ?", (cycle,))   # crash replaces it
            conn.execute("INSERT OR REPLACE INTO cycles (cycle, ts_ms, view_ms, inputs)"
                         " VALUES (?, ?, ?, ?)", (cycle, self._now_ms(), view_ms, inputs))
            conn.executemany(
                "INSERT INTO decisions (cycle, kind, symbol, price, amount, reason,"
                " client_order_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(cycle, *d) for d in decisions])

    def recorded_candles(self) -> dict[str, list[tuple]]:
        """symbol -> [(ts_ms, o, h, l, c, v), ...] in time order."""
        out: dict[str, list[tuple]] = {}
        for row in self._query("SELECT symbol, ts_ms, open, high, low, close, volume FROM candles"
                               " ORDER BY symbol, ts_ms"):
            out.setdefault(row[0], []).append(row[1:])
        return out

    def recorded_cycles(self) -> list[tuple[int, int, int | None, str]]:
        """(cycle, ts_ms, view_ms, inputs JSON) in cycle order."""
        return [tuple(r) for r in self._query(
            "SELECT cycle, ts_ms, view_ms, inputs FROM cycles ORDER BY cycle")]

    def recorded_decisions(self) -> list[tuple]:
        """(cycle, kind, symbol, price, amount, reason, client_order_id) in order."""
        return [tuple(r) for r in self._query(
            "SELECT cycle, kind, symbol, price, amount, reason, client_order_id FROM decisions"
            " ORDER BY id")]

    # -- meta and counters ----------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction("set_meta") as conn:
            self._upsert_meta(conn, key, value)

    def paper_cash(self, default: float) -> float:
        """The paper account's cash as last committed (`default` on a fresh database)."""
        value = self.get_meta(PAPER_CASH_KEY)
        return default if value is None else float(value)

    @staticmethod
    def _upsert_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def next_sequence(self, name: str) -> int:
        """1, 2, 3, ... per name; each value is committed before it is returned, so a value
        is never handed out twice, even across a crash."""
        with self._transaction("next_sequence") as conn:
            (value,), = conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE"
                " SET value = CAST(value AS INTEGER) + 1 RETURNING value",
                (f"seq:{name}",)).fetchall()
        return int(value)

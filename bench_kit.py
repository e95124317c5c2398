"""What every bench section shares: the row type and table, interleaved median timing,
the --quick switch, the notes printed under the table, and the simulator set-ups.

bench.py and its section modules (bench_streams.py) import this; it imports neither.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
QUICK = False                  # --quick: about half the repeats
# printed under the table (what could not be measured, and why)
NOTES: list[str] = ["the live path's fault soak (2,000 faulty cycles, 50 SIGKILLs, then a "
                    "reconciliation with the exchange) is `python soak.py`: about 45 minutes, "
                    "so not run here"]
SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


# ------------------------------------------------------------------------------ rows, timing

@dataclass(frozen=True)
class Row:
    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    higher_is_better: bool = False   # rates, hit rates; times and memory: lower is better

    @property
    def ratio(self) -> float:
        """How many times better than the baseline (> 1: faster, leaner or higher)."""
        num, den = ((self.value, self.baseline_value) if self.higher_is_better
                    else (self.baseline_value, self.value))
        return num / den if den else float("nan")


def time_row(figure: str, seconds: float, baseline: str, baseline_seconds: float,
             unit: str = "ms") -> Row:
    return Row(figure, seconds * SCALE[unit], unit, baseline, baseline_seconds * SCALE[unit])


def repeats(n: int) -> int:
    return max(1, (n + 1) // 2) if QUICK else n


def median_times(*fns: Callable[[], object], number: int | Sequence[int] = 1, repeat: int = 7,
                 warmup: bool = True) -> list[float]:
    """Median seconds per call of each fn over `repeat` rounds of `number` calls.

    The fns take turns within each round (interleaved), so noise hits them alike.
    """
    numbers = [number] * len(fns) if isinstance(number, int) else list(number)
    if warmup:
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats(repeat)):
        for fn, n, out in zip(fns, numbers, samples):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            out.append((time.perf_counter() - start) / n)
    return [statistics.median(s) for s in samples]


def median_time(fn: Callable[[], object], **kwargs) -> float:
    return median_times(fn, **kwargs)[0]


def _num(x: float) -> str:
    if x != x:
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 10_000 else f"{x:.4g}"


def _cells(r: Row) -> tuple[str, ...]:
    return (r.figure, f"{_num(r.value)} {r.unit}", r.baseline,
            f"{_num(r.baseline_value)} {r.unit}", f"x{_num(r.ratio)}")


def print_table(sections: list[tuple[str, list[Row]]]) -> None:
    head = ("figure", "value", "baseline", "baseline value", "ratio")
    cells = [_cells(r) for _, rows in sections for r in rows]
    w = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
    fmt = f"{{:<{w[0]}}} | {{:>{w[1]}}} | {{:<{w[2]}}} | {{:>{w[3]}}} | {{:>{w[4]}}}"
    print(fmt.format(*head))
    for name, rows in sections:
        print(f"-- {name} ".ljust(sum(w) + 12, "-"))
        for r in rows:
            print(fmt.format(*_cells(r)))


# ------------------------------------------------------------------------------ shared set-ups

@contextlib.contextmanager
def simulated_exchange(pairs: int = 50, seed: int = 1, speed: float = 60.0) -> Iterator[tuple]:
    """(market, server, client): an ExchangeClient on ccxt.binance against an in-process sim."""
    from exchange import sim_client
    from sim_exchange import SimExchangeServer
    from sim_market import SimMarket

    market = SimMarket(pairs=pairs, seed=seed, speed=speed)
    with SimExchangeServer(market) as server:
        client = sim_client(server, market, "sim-key", "sim-secret")
        try:
            client.load_markets()
            yield market, server, client
        finally:
            client.close()


def bot_config(data_dir: str, **env: object):
    """A Config for 50 simulated pairs, read from `env` only (no .env, no os.environ)."""
    from config import load_config

    base = {"SIM_PAIRS": "50", "MAX_PAIRS": "50", "SCAN_TIMEOUT": "30", "DATA_DIR": data_dir}
    return load_config(None, environ=base | {k: str(v) for k, v in env.items()})


def vm_hwm_mib(pid: int | str = "self") -> float | None:
    """Peak RSS (VmHWM) of a live process, in MiB.

    Not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's RSS at exec time,
    so a child of this (large) process would report at least our own size.
    """
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if m := re.search(r"^VmHWM:\s+(\d+) kB", status, re.M):
            return int(m.group(1)) / 1024
    return None


# Appended to `python -c` code so the child reports its own peak as its last stdout line.
PRINT_PEAK = ("\nimport re as _re\nprint(int(_re.search(r'VmHWM:\\s+(\\d+)', "
              "open('/proc/self/status').read()).group(1)) / 1024)")


def run_child(cmd: Sequence[str], env: dict | None = None, timeout: float = 1800.0
              ) -> tuple[str, float | None, float]:
    """Run a command in ROOT; (stdout, peak RSS MiB polled from /proc every 0.1 s, wall s)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        peak = None
        while proc.poll() is None:
            peak = vm_hwm_mib(proc.pid) or peak      # VmHWM only grows: the last read is the peak
            if time.perf_counter() - start > timeout:
                proc.kill()
            time.sleep(0.1)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.read()[-2000:]}")
        return out.read(), peak, wall

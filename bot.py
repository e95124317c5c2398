"""The command line and the trading loop. `python bot.py` runs the bot (the `run` command).

Heavy libraries (ccxt, numpy, scikit-learn) are imported inside the commands that need
them, so `python bot.py --help` and `python bot.py config` start fast.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click

from config import ConfigError, check_exchange_id, load_config

log = logging.getLogger("bot")


def fail(message: str) -> None:
    """A user-caused error: one line on stderr, exit code 2, no traceback."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def load_or_fail(env_file: str | None):
    try:
        return load_config(env_file)
    except ConfigError as exc:
        fail(str(exc))


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before any thread starts.

    glibc gives threads their own arenas, which keep freed memory: measured over 250 cycles,
    the scanner's and model's threads left RSS at 348 MiB against 311 MiB with two arenas.
    The bot's threads mostly wait on the network, so two arenas cost no speed.
    """
    M_ARENA_MAX = -8
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def exit_without_stray_requests() -> None:
    """Exit now if abandoned requests are still in flight (all state is saved by now).

    A scan abandons a hung request after SCAN_TIMEOUT, but its pool thread lives on until
    the HTTP timeout and retries end, and Python waits for such threads at exit.
    """
    stray = [t for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if stray:
        log.info("not waiting for %d abandoned request(s) still in flight", len(stray))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class StopSignals:
    """First SIGINT/SIGTERM: stop after the current step. A second Ctrl-C: exit at once."""

    def __init__(self):
        self.event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            click.echo("\nstopping now", err=True)
            os._exit(130)  # every state change is already committed
        self.event.set()
        click.echo("\nstopping after the current step (Ctrl-C again to exit at once)", err=True)


CYCLES = click.option("--cycles", type=click.IntRange(min=1), default=None,
                      help="Stop after this many cycles (default: run until stopped).")
ASSUME_YES = click.option("--yes", "assume_yes", is_flag=True,
                          help="Confirm live trading on a real exchange without a prompt.")


@click.group(invoke_without_command=True)
@click.option("--env-file", default=".env", show_default=True,
              help="Settings file read before the environment (the environment wins).")
@CYCLES
@ASSUME_YES
@click.pass_context
def cli(ctx: click.Context, env_file: str, cycles: int | None, assume_yes: bool) -> None:
    """A crypto trading bot: paper trading on a built-in simulated exchange by default.

    Without a command it runs the trading loop (`run`).
    """
    ctx.ensure_object(dict)
    ctx.obj["env_file"] = env_file
    if ctx.invoked_subcommand is None:
        ctx.invoke(run, cycles=cycles, assume_yes=assume_yes)


@cli.command()
@CYCLES
@ASSUME_YES
@click.pass_context
def run(ctx: click.Context, cycles: int | None, assume_yes: bool) -> None:
    """Run the trading loop (the default command)."""
    config = load_or_fail(ctx.obj["env_file"])
    setup_logging(config.log_level)
    try:
        check_exchange_id(config)
    except ConfigError as exc:
        fail(str(exc))
    if config.mode == "live" and not config.is_simulated and not assume_yes:
        if not sys.stdin.isatty():
            fail("live trading on a real exchange needs confirmation: run in a terminal "
                 "or pass --yes")
        click.confirm(f"Trade with REAL money on {config.exchange}?", abort=True)
    from reporter import Reporter
    from trader import StartupError, Trader

    limit_malloc_arenas()
    stop = StopSignals()
    stop.install()
    try:
        trader = Trader(config, stop.event, Reporter(click.echo))
    except StartupError as exc:
        fail(str(exc))
    from store import StoreError

    try:
        trader.run(cycles)
    except StoreError as exc:  # nothing may trade on without its state being saved
        fail(f"{exc}; the bot stopped without trading further")
    finally:
        trader.close()
    exit_without_stray_requests()


@cli.command()
@click.pass_context
def parity(ctx: click.Context) -> None:
    """Replay this account's decision record through the backtester; list every difference.

    Exit code 1 when a decision or the books differ, 0 when only fills do (or nothing).
    """
    config = load_or_fail(ctx.obj["env_file"])
    from parity import check_parity
    from store import Store, StoreError, store_path

    if not store_path(config.data_dir, config.mode).exists():
        fail(f"no {config.mode} database in {config.data_dir}: run the bot first (or set "
             "DATA_DIR / DRY_RUN to the run to check)")
    try:
        with Store.open(config.data_dir, config.mode) as store:
            report = check_parity(store)
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    click.echo(report.format())
    if report.of_kind("decision") or report.of_kind("books"):
        sys.exit(1)


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective configuration and where each value came from (secrets masked)."""
    config = load_or_fail(ctx.obj["env_file"])
    rows = config.describe()
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        click.echo(f"{name:<{width}}  {value:<28} ({source})")


@cli.command()
@click.option("--trades", "n_trades", default=10, show_default=True,
              help="How many recent closed trades to show.")
@click.pass_context
def status(ctx: click.Context, n_trades: int) -> None:
    """Print open positions, recent closed trades, totals and the model's quality."""
    config = load_or_fail(ctx.obj["env_file"])
    from store import StoreError
    from trader import status_report

    try:
        click.echo(status_report(config, n_trades))
    except StoreError as exc:
        fail(str(exc))


@cli.command("backtest")
@click.option("--data-dir", default="user_data/data", show_default=True,
              type=click.Path(path_type=Path), help="Folder with the candle files.")
@click.option("--timeframe", default="5m", show_default=True)
@click.option("--pairs", help="Comma-separated pairs (default: every file of the timeframe).")
@click.option("--start", help="First day to trade, YYYY-MM-DD UTC (earlier candles warm up).")
@click.option("--end", help="Stop before this day, YYYY-MM-DD UTC (exclusive).")
@click.option("--report-dir", default="user_data/backtest", show_default=True,
              type=click.Path(path_type=Path, file_okay=False))
@click.option("--simulated", is_flag=True, help="Use the simulated market's candles instead.")
@click.option("--sim-pairs", default=10, show_default=True, type=click.IntRange(1, 200),
              help="With --simulated: how many pairs.")
@click.option("--sim-days", default=14.0, show_default=True,
              type=click.FloatRange(min=1), help="With --simulated: how many days.")
@click.option("--no-model", is_flag=True, help="Fallback rule only: no walk-forward model.")
@click.option("--starting-balance", type=click.FloatRange(min=0, min_open=True),
              help="Quote balance to start with (default: STARTING_BALANCE).")
@click.pass_context
def backtest_command(ctx: click.Context, data_dir: Path, timeframe: str, pairs: str | None,
                     start: str | None, end: str | None, report_dir: Path, simulated: bool,
                     sim_pairs: int, sim_days: float, no_model: bool,
                     starting_balance: float | None) -> None:
    """Replay candle files through the live strategy, risk rules and model; write a report."""
    import backtest
    from backtest_report import format_report, write_report
    from candle_files import CandleFileError, setup_cli_logging, split_pairs

    config = load_or_fail(ctx.obj["env_file"])
    setup_cli_logging(config.log_level)
    if report_dir.exists() and not report_dir.is_dir():
        fail(f"--report-dir {report_dir} is a file; pass a directory")
    try:
        job = backtest.backtest_job(
            config, data_dir=data_dir, timeframe=timeframe, pairs=split_pairs(pairs),
            start=start, end=end, simulated=simulated, sim_pairs=sim_pairs, sim_days=sim_days,
            use_model=not no_model, starting_balance=starting_balance)
        with click.progressbar(length=backtest.step_count(job.candles), label="replaying",
                               file=sys.stderr) as bar:
            result = backtest.run_backtest(job.candles, config, job.use_model, params=job.params,
                                           settings=job.settings, progress=bar.update)
    except (ValueError, CandleFileError) as exc:
        fail(str(exc))
    click.echo(format_report(result))
    try:
        json_path, png_path = write_report(result, report_dir)
    except OSError as exc:
        fail(f"--report-dir {report_dir}: cannot write the report ({exc.strerror or exc})")
    click.echo(f"\nreport: {json_path}\nchart:  {png_path}")


@cli.command("download-data")
@click.option("--exchange", default="binance", show_default=True,
              help="A ccxt exchange id, or 'simulated' for the built-in simulated market.")
@click.option("--pairs", help="Comma-separated pairs, e.g. ETH/USDT,BTC/USDT "
                              "(default: PAIR_ALLOWLIST).")
@click.option("--timeframe", default="5m", show_default=True)
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="How much history to have in each file.")
@click.option("--data-dir", default="user_data/data", show_default=True,
              type=click.Path(path_type=Path), help="Where the candle files are kept.")
@click.pass_context
def download_data_command(ctx: click.Context, exchange: str, pairs: str | None, timeframe: str,
                          days: float, data_dir: Path) -> None:
    """Download candles into CSV files; re-running extends them (and resumes after Ctrl-C)."""
    from dataclasses import replace

    import candle_files as cf
    from exchange import ExchangeError, create_client

    config = load_or_fail(ctx.obj["env_file"])
    cf.setup_cli_logging(config.log_level)
    try:
        cf.timeframe_to_ms(timeframe)
    except ValueError as exc:
        fail(f"--timeframe: {exc}")
    if data_dir.exists() and not data_dir.is_dir():
        fail(f"--data-dir {data_dir} is a file; pass a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--data-dir {data_dir} cannot be created ({exc.strerror or exc})")
    symbols = cf.split_pairs(pairs) or list(config.pair_allowlist)
    if not symbols:
        fail("no pairs: pass --pairs ETH/USDT,BTC/USDT (or set PAIR_ALLOWLIST)")
    config = replace(config, exchange=exchange.strip().lower(), api_key="", api_secret="",
                     dry_run=True)      # public candles only: no keys are sent
    try:
        check_exchange_id(config)
        client = create_client(config)
    except ConfigError as exc:
        fail(str(exc).replace("EXCHANGE=", "--exchange "))
    except ExchangeError as exc:
        fail(f"--exchange {exchange}: {exc}")
    try:
        problem = cf.download_problem(client, symbols, timeframe, exchange)
        if problem:
            fail(problem)
        with click.progressbar(length=1, label=f"{exchange} {timeframe}", file=sys.stderr,
                               show_pos=True) as bar:
            def progress(slots: int, total: int) -> None:
                bar.length = max(total, 1)
                bar.update(slots)

            results = cf.download(client, symbols, timeframe, days, data_dir, progress)
    except ExchangeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except cf.CandleFileError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: every page written so far is kept; run the same command "
                   "again to resume", err=True)
        sys.exit(130)
    finally:
        client.close()
    for r in results:
        click.echo(cf.describe_download(r))


if __name__ == "__main__":
    cli(obj={})

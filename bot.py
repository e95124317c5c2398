"""The command line and the trading loop. `python bot.py` runs the bot (the `run` command).

Heavy libraries (ccxt, numpy, scikit-learn) are imported inside the commands that need
them, so `python bot.py --help` and `python bot.py config` start fast.

Every error a user can cause (a setting, an option, a file) ends in one line on stderr,
`error: ...`, and exit code 2, with nothing written: click's own usage errors included.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

import click

from config import (ConfigError, check_exchange_id, directory_problem, load_config,
                    parse_real, parse_symbols, parse_whole, prepare_data_dir, real_range,
                    whole_range)

log = logging.getLogger("bot")

SIM_MAX_DAYS = 3650            # --sim-days: ten years
SIM_MAX_CANDLES = 20_000_000   # --simulated: pairs x candles (about 1 GiB of float64 candles)
DOWNLOAD_MAX_DAYS = 3650       # --days of download-data: ten years


def fail(message: str) -> None:
    """A user-caused error: one line on stderr, exit code 2, no traceback."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def load_or_fail(env_file: str | None, create_data_dir: bool = True):
    """The configuration, or `fail` with its one-line error. Without `create_data_dir`,
    DATA_DIR is checked but not created (for commands that write nothing there)."""
    try:
        return load_config(env_file, create_data_dir=create_data_dir)
    except ConfigError as exc:
        fail(str(exc))


def _strategy_or_fail(config, spec: str | None = None, params: str | None = None):
    """The strategy STRATEGY (or `spec`) names, with its parameters, or `fail`."""
    import strategies

    try:
        return strategies.load_strategy(spec or config.strategy,
                                        config.strategy_params if params is None else params)
    except ConfigError as exc:
        fail(str(exc))


def _one_line(text: str) -> str:
    return " ".join(text.split())


class OneLineErrors:
    """click's usage errors as one `error: ...` line (exit 2) instead of usage + hint + error;
    a declined or interrupted prompt as one line, `aborted` (exit 1, as click does)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"error: {_one_line(exc.format_message())}", err=True)
            sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)   # --help and friends return their code


class Command(OneLineErrors, click.Command):
    pass


class Group(OneLineErrors, click.Group):
    command_class = Command


class Number(click.ParamType):
    """A strict number option: plain ASCII decimal, finite, within bounds (config's rules)."""

    def __init__(self, lo: float, hi: float, *, whole: bool = False, open_lo: bool = False):
        self.lo, self.hi, self.whole, self.open_lo = lo, hi, whole, open_lo
        self.name = "integer" if whole else "number"
        self.allowed = whole_range(lo, hi) if whole else real_range(lo, hi, open_lo)

    def convert(self, value, param, ctx):
        text = value.strip() if isinstance(value, str) else str(value)
        try:
            if self.whole:
                return parse_whole(text, self.lo, self.hi)
            return parse_real(text, self.lo, self.hi, open_lo=self.open_lo)
        except ValueError as exc:
            self.fail(f"{value!r} {exc} (allowed: {self.allowed})", param, ctx)


def _pairs_option(ctx, param, value: str | None) -> list[str]:
    """--pairs: comma-separated BASE/QUOTE symbols, each once (config's PAIR_ALLOWLIST rules)."""
    if value is None:
        return []
    try:
        pairs = list(parse_symbols(value))
    except ValueError as exc:
        raise click.BadParameter(f"{value[:60]!r} {exc} (allowed: comma-separated BASE/QUOTE "
                                 f"pairs, each once, e.g. ETH/USDT,BTC/USDT)") from None
    if not pairs:
        raise click.BadParameter("is empty (allowed: comma-separated BASE/QUOTE pairs, e.g. "
                                 "ETH/USDT,BTC/USDT; leave the option out for the default)")
    return pairs


def _day_option(ctx, param, value: str | None) -> str | None:
    """--start / --end: a real day written YYYY-MM-DD in ASCII digits."""
    if value is None:
        return None
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value, re.ASCII):
        try:
            if datetime.strptime(value, "%Y-%m-%d").year >= 1970:
                return value
        except ValueError:
            pass
    raise click.BadParameter(f"{value[:40]!r} is not a day like 2024-01-31 (allowed: "
                             f"YYYY-MM-DD, UTC, 1970 or later)")


def _timeframe_option(ctx, param, value: str) -> str:
    from candle_files import timeframe_to_ms   # numpy: only when the command runs

    try:
        timeframe_to_ms(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (allowed: a number and a unit s, m, h, d, w or M, "
                                 f"e.g. 5m or 1h)") from None
    return value.strip()


def _directory_or_fail(path: Path, option: str, create: bool) -> None:
    """`fail` unless `path` can be written into (created when `create`; else nothing is)."""
    problem = directory_problem(path, create)
    if problem:
        fail(f"{option} '{path}' {problem} (allowed: a directory that can be created and "
             f"written to)")


def setup_logging(config) -> None:
    """Log lines on stderr, with every secret of the configuration masked in all of them."""
    import redaction

    logging.basicConfig(level=getattr(logging, config.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    redaction.install(redaction.secrets_of(config), ccxt_debug=config.log_ccxt_debug)


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


CYCLES = click.option("--cycles", type=Number(1, 1_000_000_000, whole=True), default=None,
                      help="Stop after this many cycles (default: run until stopped).")
ASSUME_YES = click.option("--yes", "assume_yes", is_flag=True,
                          help="Confirm live trading on a real exchange without a prompt.")


@click.group(cls=Group, invoke_without_command=True)
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
    config = load_or_fail(ctx.obj["env_file"], create_data_dir=False)
    setup_logging(config)
    try:
        check_exchange_id(config)
    except ConfigError as exc:
        fail(str(exc))
    if config.mode == "live" and not config.is_simulated and not assume_yes:
        if not sys.stdin.isatty():
            fail("live trading on a real exchange needs confirmation: run in a terminal "
                 "or pass --yes")
        click.confirm(f"Trade with REAL money on {config.exchange}?", abort=True)
    try:
        prepare_data_dir(config)
    except ConfigError as exc:
        fail(str(exc))
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

    api = None
    if config.api_enabled:
        from api_server import ApiServer

        try:
            api = ApiServer(trader, config.api_host, config.api_port, config.api_token).start()
        except ValueError as exc:
            trader.close()
            fail(str(exc))
        click.echo(f"dashboard and API on http://{config.api_host}:{api.port}/ "
                   "(Authorization: Bearer $API_TOKEN)" if config.api_token else
                   f"dashboard and API on http://{config.api_host}:{api.port}/")
    try:
        trader.run(cycles)
    except StoreError as exc:  # nothing may trade on without its state being saved
        fail(f"{exc}; the bot stopped without trading further")
    finally:
        if api is not None:    # it reads the store: stop it first
            api.stop()
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


@cli.command("strategies")
@click.pass_context
def list_strategies(ctx: click.Context) -> None:
    """List the built-in strategies with their parameters (and the one STRATEGY picks)."""
    import strategies

    config = load_or_fail(ctx.obj["env_file"], create_data_dir=False)
    active = _strategy_or_fail(config)
    click.echo(strategies.listing(active))
    if active.name not in strategies.BUILTINS:
        click.echo("\n" + active.describe())
    click.echo(f"\nSTRATEGY={config.strategy} is active; set parameters with STRATEGY_PARAMS "
               "(name=value,...)")


@cli.command("lookahead-check")
@click.argument("strategy_spec", required=False)
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="Folder with candle files (default: simulated candles).")
@click.option("--timeframe", default="5m", show_default=True, callback=_timeframe_option)
@click.option("--pairs", callback=_pairs_option, help="Comma-separated pairs.")
@click.pass_context
def lookahead_command(ctx: click.Context, strategy_spec: str | None, data_dir: Path | None,
                      timeframe: str, pairs: list[str]) -> None:
    """Flag a strategy whose signals change when only later candles are removed (exit 1)."""
    config = load_or_fail(ctx.obj["env_file"], create_data_dir=False)
    strategy = _strategy_or_fail(config, strategy_spec)
    import lookahead
    from candle_files import CandleFileError, load_candles, resample, timeframe_to_ms
    from sim_market import simulated_ohlcv
    from strategies import decision_timeframe

    try:
        decide_on = decision_timeframe(strategy, timeframe)
        candles = (load_candles(data_dir, timeframe, pairs or None) if data_dir is not None
                   else simulated_ohlcv(6, config.sim_seed, timeframe, 3000))
        if decide_on != timeframe:   # the candles the strategy decides on, built as it gets them
            candles = {s: resample(a, timeframe_to_ms(timeframe), timeframe_to_ms(decide_on))
                       for s, a in candles.items()}
        report = lookahead.check(strategy, candles)
    except (ValueError, CandleFileError, ConfigError) as exc:
        fail(str(exc))
    click.echo(report.format())
    sys.exit(1 if report.flagged else 0)


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective configuration and where each value came from (secrets masked)."""
    config = load_or_fail(ctx.obj["env_file"], create_data_dir=False)
    rows = config.describe()
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        click.echo(f"{name:<{width}}  {value:<28} ({source})")


@cli.command()
@click.option("--trades", "n_trades", default=10, show_default=True,
              type=Number(0, 1000, whole=True), help="How many recent closed trades to show.")
@click.pass_context
def status(ctx: click.Context, n_trades: int) -> None:
    """Print open positions, recent closed trades, totals and the model's quality."""
    config = load_or_fail(ctx.obj["env_file"], create_data_dir=False)
    from store import StoreError, store_path
    from status_report import status_report

    if not store_path(config.data_dir, config.mode).exists():
        fail(f"no {config.mode} database in {config.data_dir}: run the bot first (or set "
             "DATA_DIR / DRY_RUN to the run to show)")

    try:
        click.echo(status_report(config, n_trades))
    except StoreError as exc:
        fail(str(exc))


def _replay_options(sim_days: float):
    """The options `backtest` and `hyperopt` share: the candles (files or the simulated
    market's), the period, the model, the balance and the strategy."""
    options = [
        click.option("--data-dir", default="user_data/data", show_default=True,
                     type=click.Path(path_type=Path), help="Folder with the candle files."),
        click.option("--timeframe", default="5m", show_default=True, callback=_timeframe_option),
        click.option("--pairs", callback=_pairs_option,
                     help="Comma-separated pairs (default: every file of the timeframe)."),
        click.option("--start", callback=_day_option,
                     help="First day, YYYY-MM-DD UTC (earlier candles warm up)."),
        click.option("--end", callback=_day_option,
                     help="Stop before this day, YYYY-MM-DD UTC (exclusive)."),
        click.option("--simulated", is_flag=True,
                     help="Use the simulated market's candles instead."),
        click.option("--sim-pairs", default=10, show_default=True,
                     type=Number(1, 200, whole=True), help="With --simulated: how many pairs."),
        click.option("--sim-days", default=sim_days, show_default=True,
                     type=Number(1, SIM_MAX_DAYS), help="With --simulated: how many days."),
        click.option("--no-model", is_flag=True,
                     help="The strategy alone: no walk-forward model."),
        click.option("--starting-balance", type=Number(0, 1e12, open_lo=True),
                     help="Quote balance to start with (default: STARTING_BALANCE)."),
        click.option("--strategy", "strategy_spec", help="A strategy instead of STRATEGY (a "
                     "built-in name or path/to/file.py:ClassName)."),
        click.option("--strategy-params", help="Parameters instead of STRATEGY_PARAMS."),
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


@cli.command("backtest")
@_replay_options(sim_days=14.0)
@click.option("--report-dir", default="user_data/backtest", show_default=True,
              type=click.Path(path_type=Path))
@click.pass_context
def backtest_command(ctx: click.Context, data_dir: Path, timeframe: str, pairs: list[str],
                     start: str | None, end: str | None, report_dir: Path, simulated: bool,
                     sim_pairs: int, sim_days: float, no_model: bool,
                     starting_balance: float | None, strategy_spec: str | None,
                     strategy_params: str | None) -> None:
    """Replay candle files through the live strategy, risk rules and model; write a report."""
    config = load_or_fail(ctx.obj["env_file"], create_data_dir=False)
    strategy = _strategy_or_fail(config, strategy_spec, strategy_params)
    _directory_or_fail(report_dir, "--report-dir", create=False)
    if simulated:
        _check_sim_size(timeframe, sim_pairs, sim_days)
    import backtest
    import backtest_job
    from backtest_report import format_report, write_report
    from candle_files import CandleFileError, setup_cli_logging

    setup_cli_logging(config.log_level)
    limit_malloc_arenas()                      # before the model's fit threads start
    try:
        job = backtest_job.backtest_job(
            config, data_dir=data_dir, timeframe=timeframe, pairs=pairs,
            start=start, end=end, simulated=simulated, sim_pairs=sim_pairs, sim_days=sim_days,
            use_model=not no_model, starting_balance=starting_balance, strategy=strategy)
        with _progress(backtest.step_count(job.candles), "replaying") as bar:
            result = backtest.run_backtest(job.candles, config, job.use_model,
                                           strategy=job.strategy, params=job.params,
                                           settings=job.settings, progress=bar.update)
    except (ValueError, CandleFileError, ConfigError) as exc:
        fail(str(exc))
    click.echo(format_report(result))
    try:
        json_path, png_path = write_report(result, report_dir)
    except OSError as exc:
        fail(f"--report-dir {report_dir}: cannot write the report ({exc.strerror or exc})")
    click.echo(f"\nreport: {json_path}\nchart:  {png_path}")


def _spaces_option(ctx, param, value: str) -> tuple[str, ...]:
    """--spaces: comma-separated groups of settings to optimise, each once."""
    from hyperopt import SPACES

    spaces = [s.strip() for s in value.split(",")]
    bad = [s for s in spaces if s not in SPACES]
    if bad or len(set(spaces)) != len(spaces):
        raise click.BadParameter(f"{value[:60]!r} (allowed: comma-separated, each once, from "
                                 f"{', '.join(SPACES)})")
    return tuple(spaces)


def _scheduler_option(ctx, param, value: str | None) -> str | None:
    """--scheduler: a Dask scheduler address such as tcp://HOST:8786."""
    from config import is_scheduler_address

    if value is None or not value.strip():
        return None
    if not is_scheduler_address(value.strip()):
        raise click.BadParameter(f"{value[:60]!r} is not a scheduler address (allowed: "
                                 f"tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786)")
    return value.strip()


@cli.command("hyperopt")
@_replay_options(sim_days=60.0)
@click.option("--trials", default=100, show_default=True, type=Number(1, 100_000, whole=True),
              help="Completed trials the study should hold (a resumed study counts its own).")
@click.option("--folds", "n_folds", default=5, show_default=True, type=Number(2, 50, whole=True),
              help="Consecutive walk-forward folds; the last is the holdout.")
@click.option("--embargo", type=Number(0, 100_000, whole=True),
              help="Candles skipped after each fold boundary (default: MAX_HOLD_CANDLES, at "
                   "most a tenth of a fold).")
@click.option("--spaces", default="strategy,exits", show_default=True, callback=_spaces_option,
              help="What to optimise: strategy, exits, model, protections.")
@click.option("--objective", default="sharpe", show_default=True,
              type=click.Choice(["sharpe", "return", "calmar"]), help="The score of a fold.")
@click.option("--sampler", default="tpe", show_default=True,
              type=click.Choice(["tpe", "random", "grid"]))
@click.option("--grid-points", default=3, show_default=True, type=Number(2, 20, whole=True),
              help="With --sampler grid: values per parameter.")
@click.option("--seed", default=0, show_default=True, type=Number(0, 2**32 - 1, whole=True))
@click.option("--jobs", type=Number(1, 4096, whole=True),
              help="Trials evaluated at once (default: the CPUs, or the cluster's threads).")
@click.option("--scheduler", callback=_scheduler_option,
              help="A Dask scheduler, e.g. tcp://HOST:8786 (default: DASK_SCHEDULER_ADDRESS; "
                   "empty: local processes).")
@click.option("--study-file", type=click.Path(path_type=Path),
              help="The SQLite study file (default: user_data/hyperopt/STRATEGY.sqlite).")
@click.option("--study-name", help="The study's name (default: derived from the setup).")
@click.option("--report-dir", default="user_data/hyperopt", show_default=True,
              type=click.Path(path_type=Path), help="The report goes in REPORT_DIR/STUDY_NAME/.")
@click.pass_context
def hyperopt_command(ctx: click.Context, data_dir: Path, timeframe: str, pairs: list[str],
                     start: str | None, end: str | None, simulated: bool, sim_pairs: int,
                     sim_days: float, no_model: bool, starting_balance: float | None,
                     strategy_spec: str | None, strategy_params: str | None, trials: int,
                     n_folds: int, embargo: int | None, spaces: tuple[str, ...], objective: str,
                     sampler: str, grid_points: int, seed: int, jobs: int | None,
                     scheduler: str | None, study_file: Path | None, study_name: str | None,
                     report_dir: Path) -> None:
    """Optimise a strategy's parameters walk-forward; report out-of-sample figures only."""
    config = load_or_fail(ctx.obj["env_file"], create_data_dir=False)
    strategy = _strategy_or_fail(config, strategy_spec, strategy_params)
    source = "--scheduler" if scheduler else "DASK_SCHEDULER_ADDRESS"
    scheduler = scheduler or config.dask_scheduler_address or None
    study_file = study_file or Path("user_data/hyperopt") / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', strategy.name)}.sqlite"
    if study_file.is_dir():
        fail(f"--study-file '{study_file}' is a directory (allowed: an SQLite file to create or resume)")
    _directory_or_fail(study_file.parent, "--study-file", create=False)
    _directory_or_fail(report_dir, "--report-dir", create=False)
    if study_name is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", study_name, re.ASCII):
        fail(f"--study-name {study_name[:40]!r} (allowed: 1-100 letters, digits, _ . : -)")
    if simulated:
        _check_sim_size(timeframe, sim_pairs, sim_days)
    import backtest_job
    import hyperopt
    import hyperopt_report
    from candle_files import CandleFileError, setup_cli_logging

    setup_cli_logging(config.log_level)
    try:
        job = backtest_job.backtest_job(
            config, data_dir=data_dir, timeframe=timeframe, pairs=pairs, start=start, end=end,
            simulated=simulated, sim_pairs=sim_pairs, sim_days=sim_days, use_model=not no_model,
            starting_balance=starting_balance, strategy=strategy)
        setup = hyperopt.make_setup(job, config, strategy_spec=strategy_spec or config.strategy,
                                    timeframe=timeframe, n_folds=n_folds, embargo=embargo,
                                    spaces=spaces, objective=objective)
        with hyperopt.Pool(jobs, scheduler, source) as pool:
            study = hyperopt.open_study(setup, study_file, study_name, sampler, seed, grid_points)
            click.echo(f"study {study.study_name} in {study_file}: {hyperopt.completed(study)} "
                       f"trial(s) done; {len(setup.folds)} folds, embargo {setup.embargo} "
                       f"candles, {pool.jobs} at a time; optimising "
                       f"{', '.join(d.name for d in setup.dimensions)}", err=True)
            with _progress(trials, "trials") as bar:
                def progress(n: int, best: float | None) -> None:
                    bar.update(max(0, n - getattr(bar, "pos", n)))
                    if best is not None:
                        bar.label = f"trials (walk-forward OOS {objective} {best:+.3f})"

                outcome = hyperopt.run(job.candles, setup, study, pool, trials=trials,
                                       progress=progress)
        analysis = hyperopt_report.analyse(study)
    except (ValueError, CandleFileError, ConfigError) as exc:
        fail(str(exc))
    if outcome.target < trials:
        click.echo(f"the grid has {outcome.target} points: stopped there", err=True)
    if outcome.interrupted:
        click.echo("interrupted: the running trials are marked failed and will be asked again; "
                   "run the same command to resume", err=True)
    click.echo(hyperopt_report.format_report(analysis))
    out_dir = report_dir / study.study_name
    try:
        paths = hyperopt_report.write_report(analysis, out_dir)
    except OSError as exc:
        fail(f"--report-dir {report_dir}: cannot write the report ({exc.strerror or exc})")
    click.echo(f"\nreport: {paths['report.json']}\nchart:  {paths['history.png']}\n"
               f"chosen parameters: {paths['best_params.json']} (STRATEGY_PARAMS={paths['best_params.json']}); "
               f".env lines: {paths['best.env']}")


@cli.command("download-data")
@click.option("--exchange", default="binance", show_default=True,
              help="A ccxt exchange id, or 'simulated' for the built-in simulated market.")
@click.option("--pairs", callback=_pairs_option,
              help="Comma-separated pairs, e.g. ETH/USDT,BTC/USDT (default: PAIR_ALLOWLIST).")
@click.option("--timeframe", default="5m", show_default=True, callback=_timeframe_option)
@click.option("--days", type=Number(0, DOWNLOAD_MAX_DAYS, open_lo=True), default=30.0,
              show_default=True, help="How much history to have in each file.")
@click.option("--data-dir", default="user_data/data", show_default=True,
              type=click.Path(path_type=Path), help="Where the candle files are kept.")
@click.pass_context
def download_data_command(ctx: click.Context, exchange: str, pairs: list[str], timeframe: str,
                          days: float, data_dir: Path) -> None:
    """Download candles into CSV files; re-running extends them (and resumes after Ctrl-C)."""
    from dataclasses import replace

    import candle_files as cf
    from exchange import ExchangeError, create_client

    config = load_or_fail(ctx.obj["env_file"], create_data_dir=False)
    cf.setup_cli_logging(config.log_level)
    _directory_or_fail(data_dir, "--data-dir", create=False)
    symbols = pairs or list(config.pair_allowlist)
    if not symbols:
        fail("no pairs: pass --pairs ETH/USDT,BTC/USDT (or set PAIR_ALLOWLIST)")
    exchange = exchange.strip().lower()
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,49}", exchange, re.ASCII):
        fail(f"--exchange {exchange[:40]!r} is not an exchange id (allowed: simulated or a "
             f"ccxt exchange id such as binance, kraken, okx)")
    config = replace(config, exchange=exchange, api_key="", api_secret="",
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
        _directory_or_fail(data_dir, "--data-dir", create=True)
        with _progress(1, f"{exchange} {timeframe}", show_pos=True) as bar:
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


def _progress(length: int, label: str, **options):
    """A progress bar on stderr when it is a terminal; a silent stand-in otherwise (so that
    an error after it is still the only line a script sees)."""
    if sys.stderr.isatty():
        return click.progressbar(length=length, label=label, file=sys.stderr, **options)
    return _NoProgress(length)


class _NoProgress:
    def __init__(self, length: int):
        self.length = length

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n_steps: int, current_item=None) -> None:
        pass


def _check_sim_size(timeframe: str, sim_pairs: int, sim_days: float) -> None:
    """`fail` when --simulated would generate more candles than fit comfortably in memory."""
    from candle_files import timeframe_to_ms

    per_pair = int(sim_days * 86_400_000 // timeframe_to_ms(timeframe))
    if per_pair * sim_pairs > SIM_MAX_CANDLES:
        fail(f"--sim-days {sim_days:g} x --sim-pairs {sim_pairs} at --timeframe {timeframe} is "
             f"{per_pair * sim_pairs:,} candles (allowed: at most {SIM_MAX_CANDLES:,}; fewer "
             f"days or pairs, or a longer timeframe)")


if __name__ == "__main__":
    cli(obj={})

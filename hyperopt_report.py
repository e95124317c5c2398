"""What a hyperopt study reports, rebuilt from the study alone (its SQLite file): the terminal
text, report.json, history.png, best_params.json (loadable as STRATEGY_PARAMS) and best.env.

Every figure is out of sample or discounted for the search:

- walk-forward selection: for each fold k >= 1, the trial best on folds 0..k-1, its figures
  on fold k; their mean is the honest estimate of what optimising gives;
- the chosen trial (best on the selection folds, the value Optuna maximised) on the holdout
  fold, which the sampler never saw;
- the best trials' figures fold by fold (each fold its own walk-forward backtest);
- the deflated Sharpe ratio of the chosen trial's daily returns over all folds, for the
  number of completed trials and the spread of their Sharpe ratios over the same days;
- the probability of backtest overfitting by CSCV over the (days x trials) matrix of daily
  returns, in the largest even number of blocks (at most 16) of at least
  `MIN_BLOCK_DAYS` days each.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna
from matplotlib.figure import Figure

from hyperopt import Dimension, Selection, TrialRecord, chosen, records, walk_forward
from overfitting import (DeflatedSharpe, Overfitting, deflated_sharpe, probability_of_overfitting,
                         sharpe_ratio)

CONFIDENCE = 0.95
MAX_SPLITS = 16
MIN_BLOCK_DAYS = 5
TOP = 10                        # rows of the best-trials table


@dataclass
class Analysis:
    """Everything the report shows, computed from a study."""
    study: str
    setup: dict[str, Any]
    trials: list[TrialRecord]
    failed: int
    chosen: TrialRecord
    selections: list[Selection]
    history: list[float | None]     # walk-forward OOS score after each completed trial
    deflated: DeflatedSharpe | None
    overfitting: Overfitting | None
    overfitting_note: str
    importance: dict[str, float] | None

    @property
    def dimensions(self) -> list[Dimension]:
        return [Dimension(**d) for d in self.setup["dimensions"]]

    @property
    def n_folds(self) -> int:
        return len(self.setup["folds"])

    @property
    def wf_score(self) -> float:
        return float(np.mean([s.figures["score"] for s in self.selections]))

    @property
    def holdout(self) -> dict[str, Any]:
        return self.chosen.folds[-1]

    def values(self, trial: TrialRecord) -> dict[str, float]:
        """A trial's parameters as the settings take them (whole numbers, rounded floats)."""
        return {d.name: d.value(trial.params[d.name]) for d in self.dimensions}


def analyse(study: optuna.Study) -> Analysis:
    """The report's figures; ValueError when the study has no completed trial yet."""
    trials = records(study)
    if not trials:
        raise ValueError(f"study {study.study_name} has no completed trial yet: run more --trials")
    days = np.array([np.concatenate(t.daily) for t in trials]).T      # (days, trials)
    best = chosen(trials)
    deflated = None
    if len(days) >= 2:
        sharpes = [sharpe_ratio(days[:, i]) for i in range(len(trials))]
        deflated = deflated_sharpe(days[:, trials.index(best)], sharpes, CONFIDENCE)
    overfit, note = _overfitting(days)
    return Analysis(study.study_name, study.user_attrs["setup"], trials,
                    len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))),
                    best, walk_forward(trials), walk_forward_history(trials), deflated, overfit,
                    note, _importance(study))


def walk_forward_history(trials: Sequence[TrialRecord]) -> list[float | None]:
    """The walk-forward OOS score with the first n trials, for n = 1..N (incremental: for each
    fold k the best trial on folds before k so far, the earliest on a tie)."""
    n_folds = len(trials[0].folds)
    best: list[TrialRecord | None] = [None] * n_folds
    out = []
    for t in trials:
        for k in range(1, n_folds):
            if best[k] is None or t.mean_score(range(k)) > best[k].mean_score(range(k)):
                best[k] = t
        out.append(float(np.mean([best[k].folds[k]["score"] for k in range(1, n_folds)])))
    return out


def _overfitting(days: np.ndarray) -> tuple[Overfitting | None, str]:
    """PBO over the (days x trials) matrix, in as many blocks as the days allow."""
    n_days, n_trials = days.shape
    splits = min(MAX_SPLITS, n_days // MIN_BLOCK_DAYS // 2 * 2)
    if n_trials < 2:
        return None, "needs at least 2 completed trials"
    if splits < 2:
        return None, f"needs at least {2 * MIN_BLOCK_DAYS} days of returns, got {n_days}"
    result = probability_of_overfitting(days, splits=splits)
    return result, (f"CSCV over {n_days} days x {n_trials} trials, {splits} blocks of "
                    f"{n_days // splits} days, {result.combinations} combinations")


def _importance(study: optuna.Study) -> dict[str, float] | None:
    """fANOVA importance of each parameter for the objective (seeded), None when the trials
    do not allow it (too few, or no parameter varied)."""
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return {k: float(v) for k, v in
                optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (ValueError, RuntimeError):
        return None


# --------------------------------------------------------------------------- the text

def verdict(a: Analysis) -> str:
    """One plain-language line: is there an edge after discounting the search?"""
    d = a.deflated
    if d is None:
        return "no verdict: fewer than 2 days of returns"
    n = len(a.trials)
    if not d.significant:
        return (f"no significant edge: the best of {n} trials is what luck gives (deflated "
                f"Sharpe probability {d.probability:.2f} < {CONFIDENCE:.2f})")
    line = (f"edge survives deflation: probability {d.probability:.2f} that the chosen trial's "
            f"Sharpe beats what the best of {n} skill-less trials would show")
    if a.holdout["score"] <= 0 or a.wf_score <= 0:
        line += "; but it did not pay out of sample (holdout or walk-forward score <= 0): distrust it"
    elif a.overfitting is not None and a.overfitting.pbo >= 0.5:
        line += f"; but PBO {a.overfitting.pbo:.2f}: the in-sample winner is often no better than the median"
    return line


def _fold_cell(f: dict[str, Any]) -> str:
    return f"{f['score']:+.3f} {f['return_pct']:+.1f}% {f['trades']}t"


def _figures(f: dict[str, Any], objective: str) -> str:
    return (f"{objective} {f['score']:+.3f}, return {f['return_pct']:+.2f}%, max drawdown "
            f"{f['max_drawdown_pct']:.2f}%, {_count(f['trades'], 'trade')} over {f['days']} days")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _params_text(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in values.items())


def format_report(a: Analysis, top: int = TOP) -> str:
    """The terminal report."""
    s, k = a.setup, a.n_folds
    objective = s["objective"]
    lines = [f"study {a.study}: {len(a.trials)} completed trials ({a.failed} failed or "
             f"interrupted), strategy {s['strategy']}, {len(s['symbols'])} pairs, {k} folds, "
             f"embargo {s['embargo']} candles, objective {objective}", ""]
    lines.append(f"best trials by the objective (mean {objective} of folds 0-{k - 2}; fold "
                 f"{k - 1} is the holdout; each fold its own walk-forward backtest):")
    head = ["trial", "objective"] + [f"fold {i}" + (" (holdout)" if i == k - 1 else "")
                                     for i in range(k)]
    rows = [[str(t.number), f"{t.value:+.3f}"] + [_fold_cell(f) for f in t.folds]
            for t in sorted(a.trials, key=lambda t: (-t.value, t.number))[:top]]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines.append(fmt.format(*head))
    for row, t in zip(rows, sorted(a.trials, key=lambda t: (-t.value, t.number))):
        lines += [fmt.format(*row), "      " + _params_text(a.values(t))]
    lines += ["", "walk-forward selection (chosen on the folds before, scored on the next):"]
    lines += [f"  fold {sel.fold}: trial {sel.trial} (in-sample {sel.in_sample:+.3f}) -> "
              f"{_figures(sel.figures, objective)}" for sel in a.selections]
    lines.append(f"  mean out-of-sample {objective}: {a.wf_score:+.3f}")
    lines += ["", f"chosen: trial {a.chosen.number} (best on folds 0-{k - 2}): "
                  f"{_params_text(a.values(a.chosen))}",
              f"  holdout fold {k - 1}: {_figures(a.holdout, objective)}"]
    if a.deflated is not None:
        d = a.deflated
        lines.append(f"deflated Sharpe: the chosen trial's daily Sharpe {d.sharpe:+.3f} over "
                     f"{d.observations} days (all folds) against {d.expected_max:.3f}, the best of "
                     f"{d.n_trials} skill-less trials by luck: probability {d.probability:.2f}"
                     f" ({'significant' if d.significant else 'not significant'} at {CONFIDENCE:.2f})")
    if a.overfitting is not None:
        o = a.overfitting
        lines.append(f"probability of backtest overfitting: {o.pbo:.2f} ({a.overfitting_note}); "
                     f"the in-sample winner lost out of sample in {100 * o.loss_probability:.0f}% "
                     f"of the splits")
    else:
        lines.append(f"probability of backtest overfitting: not computed ({a.overfitting_note})")
    if a.importance:
        lines.append("parameter importance (fANOVA): " +
                     ", ".join(f"{n} {v:.2f}" for n, v in a.importance.items()))
    lines += ["", f"verdict: {verdict(a)}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the files

def best_params(a: Analysis) -> dict[str, Any]:
    """best_params.json: the chosen trial's strategy parameters (what STRATEGY_PARAMS reads),
    its settings by .env variable, and its out-of-sample figures."""
    values = a.values(a.chosen)
    dims = a.dimensions
    params = dict(a.setup["strategy_values"])
    params.update({d.name: values[d.name] for d in dims if d.target == "strategy"})
    return {"strategy": a.setup["strategy"], "params": params,
            "settings": {d.env: values[d.name] for d in dims if d.env},
            "study": a.study, "trial": a.chosen.number, "oos": _oos(a)}


def _oos(a: Analysis) -> dict[str, Any]:
    d, o = a.deflated, a.overfitting
    return {"walk_forward_score": a.wf_score, "holdout": a.holdout,
            "deflated_sharpe": None if d is None else asdict(d),
            "pbo": None if o is None else {"pbo": o.pbo, "combinations": o.combinations,
                                           "splits": o.splits, "loss_probability": o.loss_probability,
                                           "degradation": None if math.isnan(o.degradation)
                                           else o.degradation},
            "verdict": verdict(a)}


def env_lines(a: Analysis, params_path: Path) -> str:
    """best.env: the lines to put in .env to trade the chosen trial."""
    best = best_params(a)
    path = str(params_path.resolve())
    if any(c.isspace() or c in "'\"#" for c in path):
        path = json.dumps(path)
    lines = [f"# hyperopt study {a.study}, trial {a.chosen.number}: {verdict(a)}",
             f"STRATEGY={a.setup['strategy']}", f"STRATEGY_PARAMS={path}"]
    lines += [f"{name}={value}" for name, value in best["settings"].items()]
    return "\n".join(lines) + "\n"


def history_chart(a: Analysis, path: Path) -> None:
    """history.png: each trial's objective, the best so far, and the walk-forward OOS score."""
    fig = Figure(figsize=(9, 4.5), dpi=100)
    ax = fig.add_subplot()
    numbers = [t.number for t in a.trials]
    values = [t.value for t in a.trials]
    ax.scatter(numbers, values, s=12, color="0.6", label="objective (selection folds)")
    ax.plot(numbers, np.maximum.accumulate(values), color="tab:blue", label="best objective so far")
    ax.plot(numbers, a.history, color="tab:red", label="walk-forward out-of-sample score")
    ax.axhline(0.0, color="0.3", linewidth=0.6)
    ax.set_xlabel("trial")
    ax.set_ylabel(a.setup["objective"])
    ax.set_title(f"hyperopt {a.study}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def write_report(a: Analysis, report_dir: Path) -> dict[str, Path]:
    """report.json, history.png, best_params.json and best.env in `report_dir`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: report_dir / name for name in
             ("report.json", "history.png", "best_params.json", "best.env")}
    best = sorted(a.trials, key=lambda t: (-t.value, t.number))[:TOP]
    report = {"study": a.study, "setup": a.setup, "completed_trials": len(a.trials),
              "failed_trials": a.failed, "chosen_trial": a.chosen.number,
              "chosen_values": a.values(a.chosen), "oos": _oos(a),
              "walk_forward": [asdict(s) for s in a.selections],
              "overfitting_note": a.overfitting_note, "importance": a.importance,
              "best_trials": [{"trial": t.number, "objective": t.value, "values": a.values(t),
                               "folds": t.folds} for t in best]}
    paths["report.json"].write_text(json.dumps(report, indent=1))
    history_chart(a, paths["history.png"])
    paths["best_params.json"].write_text(json.dumps(best_params(a), indent=1))
    paths["best.env"].write_text(env_lines(a, paths["best_params.json"]))
    return paths

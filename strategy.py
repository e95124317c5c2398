"""The decision pipeline: closed candles and portfolio state in, order intents out.

Pure: nothing here reads the clock, the network or global state, so the live bot and the
backtester run exactly the same decisions. Impure helpers (the model, the LLM) come in as
callables.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from domain import Candidate, Decisions, MarketView, Position, StrategyParams
from features import prepare_features
from ml_model import expected_return
from risk_manager import RiskManager, RoundOrder
from strategies import Strategy

Predict = Callable[[np.ndarray, Sequence[tuple]], np.ndarray]
Confirm = Callable[[list[dict]], Mapping[str, bool]]


class ModelFilter(NamedTuple):
    """A trained meta-labelling model: `predict` gives the probability that the strategy's
    trade pays after costs; `avg_win` and `avg_loss` (both > 0, net returns of its training
    trades) turn it into an expected net return, which must be positive."""
    predict: Predict
    avg_win: float
    avg_loss: float

    def expected_return(self, p: np.ndarray) -> np.ndarray:
        return expected_return(p, self.avg_win, self.avg_loss)


def model_keys(view: MarketView) -> list[tuple]:
    """Per-pair keys for the prediction cache: the critical indicators, unrounded."""
    ind = view.latest
    close = view.close
    with np.errstate(invalid="ignore", divide="ignore"):
        macd_pct = ind["macd_hist"] / close * 100.0
        mom_pct = ind["momentum"] / close * 100.0
    return list(zip(ind["rsi"].tolist(), macd_pct.tolist(), mom_pct.tolist(),
                    ind["volume_ratio"].tolist()))


def llm_state(view: MarketView, i: int, probability: float | None,
              open_positions: int, max_positions: int) -> dict:
    """The compact numeric market state the LLM confirmation (and its cache) sees."""
    ind = view.latest
    closes = view.recent_close[i]
    price = float(closes[-1])

    def change(n: int) -> float:
        return float((price / closes[-1 - n] - 1.0) * 100.0) if closes.shape[0] > n else 0.0

    width = float(ind["bb_upper"][i] - ind["bb_lower"][i])
    return {
        "symbol": view.symbols[i], "candle_ts": int(view.now_ms), "price": price,
        "change_1": change(1), "change_6": change(6), "change_24": change(24),
        "rsi": float(ind["rsi"][i]), "macd_hist": float(ind["macd_hist"][i]),
        "bb_position": float((price - ind["bb_lower"][i]) / width) if width > 0 else 0.5,
        "atr_pct": float(ind["atr"][i] / price * 100.0),
        "momentum_pct": float(ind["momentum"][i] / price * 100.0),
        "volume_ratio": float(ind["volume_ratio"][i]),
        "model_probability": probability, "open_positions": open_positions,
        "max_positions": max_positions,
    }


def find_candidates(view: MarketView, strategy: Strategy, params: StrategyParams,
                    excluded: set[str], model: ModelFilter | None = None
                    ) -> tuple[list[Candidate], bool]:
    """The strategy's entry signals, best first; with a model, only those whose expected net
    return exceeds `min_expected_return` (0: it must pay after costs) and whose probability
    reaches `min_confidence`, ranked by expected net return."""
    score = (view.scores if view.scores is not None
             else np.asarray(strategy.entry_score(view.latest), dtype=np.float64))
    features = (view.features if view.features is not None
                else prepare_features(view.latest, view.recent_close))
    usable = np.isfinite(score) & np.isfinite(features).all(axis=1) & np.isfinite(view.latest["atr"])
    usable &= np.array([s not in excluded for s in view.symbols], dtype=bool)
    probability = np.full(len(view.symbols), np.nan)
    if model is not None and usable.any():
        rows = np.flatnonzero(usable)
        keys = model_keys(view)
        probability[rows] = model.predict(features[rows], [keys[i] for i in rows])
        expected = model.expected_return(probability)
        with np.errstate(invalid="ignore"):
            score = np.where((expected > params.min_expected_return)
                             & (probability >= params.min_confidence), expected, np.nan)
    score = np.where(usable, score, np.nan)
    order = [i for i in np.argsort(-np.nan_to_num(score, nan=-np.inf)) if np.isfinite(score[i])]
    candidates = [
        Candidate(symbol=view.symbols[i], price=float(view.close[i]),
                  atr=float(view.latest["atr"][i]), score=float(score[i]),
                  probability=None if np.isnan(probability[i]) else float(probability[i]),
                  features=tuple(float(x) for x in features[i]))
        for i in order
    ]
    return candidates, model is not None


def decide_entries(view: MarketView, positions: Mapping[str, Position], cash: float,
                   equity: float, strategy: Strategy, params: StrategyParams, risk: RiskManager,
                   round_order: RoundOrder, model: ModelFilter | None = None,
                   confirm: Confirm | None = None,
                   busy: frozenset[str] | set[str] = frozenset(),
                   locked: frozenset[str] | set[str] = frozenset(),
                   halted: str | None = None) -> Decisions:
    """Candidates -> risk sizing -> optional confirmation of what risk would take -> intents.

    Held pairs, pairs with an order whose outcome is not known yet (`busy`) and pairs a
    protection locks (`locked`: the cooldown after an exit, the stop-loss guard, ...) are
    not candidates; `halted` (a lock of every pair, the edge gate) refuses every entry with
    its reason. Confirmation comes after sizing so that no LLM call is spent on an entry the
    risk manager would refuse anyway; an unconfirmed entry is dropped, never replaced.
    """
    excluded = set(positions) | set(busy) | set(locked)
    candidates, used_model = find_candidates(view, strategy, params, excluded, model)
    entries, skipped = risk.plan_entries(candidates, positions, cash, equity, params, round_order,
                                         busy, halted)
    if confirm is not None and entries:
        index = {s: i for i, s in enumerate(view.symbols)}
        states = [llm_state(view, index[e.symbol], e.probability, len(positions),
                            risk.max_open_positions) for e in entries]
        verdicts = confirm(states)
        skipped += [(e.symbol, "not confirmed by the LLM") for e in entries
                    if not verdicts.get(e.symbol, False)]
        entries = [e for e in entries if verdicts.get(e.symbol, False)]
    return Decisions(tuple(candidates), tuple(entries), tuple(skipped), used_model)

"""The decision pipeline: closed candles and portfolio state in, order intents out.

Pure: nothing here reads the clock, the network or global state, so the live bot and the
backtester run exactly the same decisions. Impure helpers (the model, the LLM) come in as
callables.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from domain import Bar, Candidate, Decisions, ExitIntent, MarketView, Position, StrategyParams
from features import prepare_features
from risk_manager import RiskManager, RoundOrder

Predict = Callable[[np.ndarray, Sequence[tuple]], np.ndarray]
Confirm = Callable[[list[dict]], Mapping[str, bool]]


def check_exit(position: Position, bar: Bar, now_ms: int, params: StrategyParams) -> ExitIntent | None:
    """Stop-loss, take-profit or time limit; when a bar touches both barriers the stop wins."""
    if bar.low <= position.stop_loss:
        # A gap through the stop fills at the open, not at the stop.
        return ExitIntent(position.symbol, min(position.stop_loss, bar.open), "stop_loss")
    if bar.high >= position.take_profit:
        return ExitIntent(position.symbol, max(position.take_profit, bar.open), "take_profit")
    if now_ms - position.entry_time_ms >= params.max_hold_candles * params.timeframe_ms:
        return ExitIntent(position.symbol, bar.close, "time_limit")
    return None


def check_exits(positions: Mapping[str, Position], bars: Mapping[str, Bar], now_ms: int,
                params: StrategyParams) -> list[ExitIntent]:
    exits = []
    for symbol, position in positions.items():
        bar = bars.get(symbol)
        if bar is not None:
            intent = check_exit(position, bar, now_ms, params)
            if intent is not None:
                exits.append(intent)
    return exits


def rule_scores(view: MarketView, params: StrategyParams) -> np.ndarray:
    """The fallback entry rule: trend-following with momentum, NaN where it says no.

    A pair qualifies when it is in an uptrend (EMA12 > EMA26 and close above EMA50), MACD's
    histogram is positive, RSI is below overbought and volume is at least average; qualifying
    pairs rank by 10-candle momentum measured in ATRs.
    """
    ind = view.latest
    close = view.close
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = ((ind["ema_fast"] > ind["ema_slow"]) & (close > ind["ema_trend"])
              & (ind["macd_hist"] > 0) & (ind["rsi"] < params.rsi_overbought)
              & (ind["volume_ratio"] >= params.min_volume_ratio) & (ind["atr"] > 0))
        score = ind["momentum"] / ind["atr"]
    return np.where(ok & np.isfinite(score), score, np.nan)


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


def cooling_down(view: MarketView, params: StrategyParams, last_exits: Mapping[str, int]) -> set[str]:
    """Pairs exited too recently to enter: not on the close of the candle the exit happened
    in, nor on the next `cooldown_candles - 1` closes (0 turns the cooldown off)."""
    if params.cooldown_candles <= 0:
        return set()
    tf = params.timeframe_ms
    return {s for s, exit_ms in last_exits.items()
            if view.now_ms < -(-exit_ms // tf) * tf + params.cooldown_candles * tf}


def find_candidates(view: MarketView, params: StrategyParams, excluded: set[str],
                    predict: Predict | None = None) -> tuple[list[Candidate], bool]:
    """Rank pairs worth entering: by model probability when a model is ready, else by rule."""
    features = prepare_features(view.latest, view.recent_close)
    usable = np.isfinite(features).all(axis=1) & np.isfinite(view.latest["atr"])
    usable &= np.array([s not in excluded for s in view.symbols], dtype=bool)
    probability = np.full(len(view.symbols), np.nan)
    if predict is not None and usable.any():
        rows = np.flatnonzero(usable)
        keys = model_keys(view)
        probability[rows] = predict(features[rows], [keys[i] for i in rows])
        score = np.where(probability >= params.min_confidence, probability, np.nan)
    else:
        score = rule_scores(view, params)
    score = np.where(usable, score, np.nan)
    order = [i for i in np.argsort(-np.nan_to_num(score, nan=-np.inf)) if np.isfinite(score[i])]
    candidates = [
        Candidate(symbol=view.symbols[i], price=float(view.close[i]),
                  atr=float(view.latest["atr"][i]), score=float(score[i]),
                  probability=None if np.isnan(probability[i]) else float(probability[i]),
                  features=tuple(float(x) for x in features[i]))
        for i in order
    ]
    return candidates, predict is not None


def decide_entries(view: MarketView, positions: Mapping[str, Position], cash: float,
                   equity: float, params: StrategyParams, risk: RiskManager,
                   round_order: RoundOrder, predict: Predict | None = None,
                   confirm: Confirm | None = None,
                   last_exits: Mapping[str, int] | None = None,
                   busy: frozenset[str] | set[str] = frozenset()) -> Decisions:
    """Candidates -> risk sizing -> optional confirmation of what risk would take -> intents.

    Held pairs, pairs with an order whose outcome is not known yet (`busy`) and pairs in
    their cooldown after an exit (`last_exits`: symbol -> exit time) are not candidates. Confirmation comes after sizing so that no LLM call is spent
    on an entry the risk manager would refuse anyway; an unconfirmed entry is dropped,
    never replaced.
    """
    excluded = set(positions) | set(busy) | cooling_down(view, params, last_exits or {})
    candidates, used_model = find_candidates(view, params, excluded, predict)
    entries, skipped = risk.plan_entries(candidates, positions, cash, equity, params, round_order,
                                         busy)
    if confirm is not None and entries:
        index = {s: i for i, s in enumerate(view.symbols)}
        states = [llm_state(view, index[e.symbol], e.probability, len(positions),
                            risk.max_open_positions) for e in entries]
        verdicts = confirm(states)
        skipped += [(e.symbol, "not confirmed by the LLM") for e in entries
                    if not verdicts.get(e.symbol, False)]
        entries = [e for e in entries if verdicts.get(e.symbol, False)]
    return Decisions(tuple(candidates), tuple(entries), tuple(skipped), used_model)

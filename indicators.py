"""Technical indicators over (pairs x candles) float64 arrays, matching TA-Lib to 1e-8.

Two ways that agree with each other: whole-array functions (warm-up, backtests) that work on
(P, T) or (T,) arrays along the last axis, and `StreamingIndicators`, which consumes one closed
candle per pair in O(1) for all pairs at once. Values are NaN during warm-up exactly where
TA-Lib (default settings) outputs NaN.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

logger = logging.getLogger(__name__)

INDICATOR_NAMES: tuple[str, ...] = (
    "rsi", "ema_fast", "ema_slow", "ema_trend", "macd", "macd_signal", "macd_hist",
    "bb_upper", "bb_middle", "bb_lower", "atr", "momentum", "volume_ratio",
)
RSI_PERIOD = 14
EMA_FAST, EMA_SLOW, EMA_TREND, MACD_SIGNAL = 12, 26, 50, 9
BB_PERIOD, BB_NBDEV = 20, 2.0
ATR_PERIOD = 14
MOM_PERIOD = 10
VOLUME_PERIOD = 20
# Candles after which every indicator in compute_all is defined (EMA 50 is the last to seed).
WARMUP = max(EMA_TREND, EMA_SLOW + MACD_SIGNAL - 1, RSI_PERIOD + 1, ATR_PERIOD + 1,
             BB_PERIOD, VOLUME_PERIOD, MOM_PERIOD + 1)

_BLOCK = 512          # window sums restart from a new reference every _BLOCK candles
_TINY = np.finfo(np.float64).tiny   # x / max(s, _TINY) is 0 where x == s == 0
_SMOOTH_BLOCK = 4096                 # _smooth: candles per closed-form block at most,
_SMOOTH_RANGE = 100 * math.log(10)   # ... and d^-k below 1e100 inside one


def _as2d(x) -> tuple[np.ndarray, bool]:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        return a[None, :], True
    if a.ndim != 2:
        raise ValueError(f"expected a (T,) or (P, T) array, got shape {a.shape}")
    return a, False


def _back(a: np.ndarray, one_d: bool) -> np.ndarray:
    return a[0] if one_d else a


def _period(value: int, name: str = "period") -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _smooth(x: np.ndarray, alpha: float, seed: np.ndarray) -> np.ndarray:
    """y[t] = y[t-1] + alpha * (x[t] - y[t-1]) along the last axis, starting from y[-1] = seed.

    In blocks, each in closed form: y[t] = c + alpha * d^t * cumsum((x[k] - c) * d^-k) with
    c = y[-1] and d = 1 - alpha, a block short enough that d^-k stays far from overflow. Plain numpy: the
    C filter scipy.signal offers costs ~80 MiB and ~0.9 s to import."""
    d = 1.0 - alpha
    if d <= 0.0:                          # alpha 1: no memory
        return np.array(x, dtype=np.float64)
    block = int(min(_SMOOTH_BLOCK, max(1.0, _SMOOTH_RANGE / -math.log(d)))) if d < 1.0 else _SMOOTH_BLOCK
    k = np.arange(block)
    grow, shrink = d ** -k, d ** k
    out = np.empty(x.shape)
    y = np.asarray(seed, dtype=np.float64)
    for start in range(0, x.shape[-1], block):
        n = min(block, x.shape[-1] - start)
        c = y[..., None]                  # the smoothing of x - c: a flat x stays exactly flat
        part = c + shrink[:n] * alpha * np.cumsum((x[..., start:start + n] - c) * grow[:n], axis=-1)
        out[..., start:start + n] = part
        y = part[..., -1]
    return out


def _seeded_smooth(x: np.ndarray, n: int, alpha: float, start: int = 0,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Exponential smoothing seeded (TA-Lib style) with the mean of x[start:start+n].

    The seed sits at index start+n-1; earlier values are NaN.
    """
    out = np.empty(x.shape) if out is None else out
    first = start + n - 1
    out[..., :first] = np.nan
    if first < x.shape[-1]:
        seed = x[..., start:first + 1].mean(axis=-1)
        out[..., first] = seed
        if first + 1 < x.shape[-1]:
            out[..., first + 1:] = _smooth(x[..., first + 1:], alpha, seed)
    return out


def _window_sum(y: np.ndarray, n: int) -> np.ndarray:
    """Sums of every n-window along the last axis, shape (..., T-n+1), in O(log n) vector adds."""
    m = y.shape[-1] - n + 1
    total, offset, width, sums = None, 0, 1, y      # sums[j] = y[j] + ... + y[j+width-1]
    while True:
        if n & width:
            part = sums[..., offset:offset + m]
            total = part if total is None else total + part
            offset += width
        if 2 * width > n:
            return total
        sums = sums[..., :-width] + sums[..., width:]
        width *= 2


def _window_stats(x: np.ndarray, n: int, with_var: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (and population variance) of every full n-window of x (P, T): shapes (P, T-n+1).

    Sums are taken relative to a reference value that changes every _BLOCK candles, so the
    rounding error stays bounded however long and however trending the history is.
    """
    p, t = x.shape
    m = t - n + 1
    if m <= 0:
        return np.empty((p, 0)), np.empty((p, 0))
    block = min(m, _BLOCK)
    nb = -(-m // block)
    need = nb * block + n - 1
    if need > t:
        xp = np.empty((p, need))
        xp[:, :t] = x
        xp[:, t:] = x[:, -1:]
    else:
        xp = x
    seg = sliding_window_view(xp, block + n - 1, axis=-1)[:, ::block]     # (P, nb, block+n-1)
    ref = seg[:, :, :1]
    y = seg - ref
    m1 = _window_sum(y, n) / n
    mean = (m1 + ref).reshape(p, nb * block)[:, :m]
    if not with_var:
        return mean, None
    y *= y
    var = _window_sum(y, n) / n - m1 * m1
    return mean, var.reshape(p, nb * block)[:, :m]


def ema(x, period: int) -> np.ndarray:
    """EMA with k = 2/(period+1), seeded with the SMA of the first `period` values (TA-Lib EMA)."""
    n = _period(period)
    a, one_d = _as2d(x)
    return _back(_seeded_smooth(a, n, 2.0 / (n + 1)), one_d)


def sma(x, period: int) -> np.ndarray:
    """Simple moving average (TA-Lib SMA)."""
    n = _period(period)
    a, one_d = _as2d(x)
    out = np.full(a.shape, np.nan)
    out[:, n - 1:] = _window_stats(a, n, False)[0]
    return _back(out, one_d)


def _gain_loss(close: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """Wilder-smoothed average gain and loss, shape (2, P, T); NaN before index n."""
    d = np.diff(close, axis=-1)
    gl = np.empty((2,) + d.shape)
    np.maximum(d, 0.0, out=gl[0])
    np.subtract(gl[0], d, out=gl[1])           # max(-d, 0), exactly
    out = np.empty((2,) + close.shape) if out is None else out
    out[..., :1] = np.nan
    _seeded_smooth(gl, n, 1.0 / n, out=out[..., 1:])
    return out


def _rsi_from(avg_gain: np.ndarray, avg_loss: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """100 * gain / (gain + loss), and 0 when both are 0 (as TA-Lib)."""
    out = np.add(avg_gain, avg_loss, out=out)
    np.maximum(out, _TINY, out=out)
    np.divide(avg_gain, out, out=out)
    out *= 100.0
    return out


def rsi(close, period: int = RSI_PERIOD) -> np.ndarray:
    """Wilder's RSI (TA-Lib RSI: first value at index `period`)."""
    n = _period(period)
    c, one_d = _as2d(close)
    avg = _gain_loss(c, n)
    return _back(_rsi_from(avg[0], avg[1]), one_d)


def _macd_into(c: np.ndarray, fast: int, slow: int, signal: int, fast_ema: np.ndarray,
               slow_ema: np.ndarray, out: np.ndarray) -> None:
    """MACD's own fast EMA, macd, signal and hist into out[0:4], from the plain EMAs.

    TA-Lib seeds MACD's fast EMA with the mean of the `fast` closes that end where the slow
    EMA's seed window ends (index slow-1). Both follow the same linear recursion from there,
    so it equals the plain fast EMA plus the seed difference decaying by (1 - k) per candle.
    """
    mfast, line, sig, hist = out
    t = c.shape[-1]
    mfast[:, :slow - 1] = np.nan
    if t >= slow:
        delta = c[:, slow - fast:slow].mean(axis=-1) - fast_ema[:, slow - 1]
        decay = (1.0 - 2.0 / (fast + 1)) ** np.arange(t - slow + 1)
        np.add(fast_ema[:, slow - 1:], delta[:, None] * decay, out=mfast[:, slow - 1:])
    np.subtract(mfast, slow_ema, out=line)
    _seeded_smooth(line, signal, 2.0 / (signal + 1), start=slow - 1, out=sig)
    line[:, :slow + signal - 2] = np.nan
    np.subtract(line, sig, out=hist)


def macd(close, fast: int = EMA_FAST, slow: int = EMA_SLOW,
         signal: int = MACD_SIGNAL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(macd, signal, hist) as TA-Lib MACD: all three start at index slow-1 + signal-1."""
    fast, slow, signal = _period(fast, "fast"), _period(slow, "slow"), _period(signal, "signal")
    if fast > slow:
        raise ValueError(f"MACD fast period {fast} must not exceed slow period {slow}")
    c, one_d = _as2d(close)
    out = np.empty((4,) + c.shape)
    _macd_into(c, fast, slow, signal, _seeded_smooth(c, fast, 2.0 / (fast + 1)),
               _seeded_smooth(c, slow, 2.0 / (slow + 1)), out)
    return _back(out[1], one_d), _back(out[2], one_d), _back(out[3], one_d)


def _bands_into(c: np.ndarray, n: int, nbdev: float, upper: np.ndarray, middle: np.ndarray,
                lower: np.ndarray) -> None:
    mean, var = _window_stats(c, n, True)
    for a in (upper, middle, lower):
        a[:, :n - 1] = np.nan
    np.maximum(var, 0.0, out=var)
    width = np.sqrt(var, out=var)
    width *= nbdev
    middle[:, n - 1:] = mean
    np.add(mean, width, out=upper[:, n - 1:])
    np.subtract(mean, width, out=lower[:, n - 1:])


def bollinger(close, period: int = BB_PERIOD,
              nbdev: float = BB_NBDEV) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upper, middle, lower): SMA +- nbdev population standard deviations (TA-Lib BBANDS)."""
    n = _period(period)
    c, one_d = _as2d(close)
    out = np.empty((3,) + c.shape)
    _bands_into(c, n, nbdev, *out)
    return _back(out[0], one_d), _back(out[1], one_d), _back(out[2], one_d)


def _true_range(h: np.ndarray, l: np.ndarray, c: np.ndarray) -> np.ndarray:
    """TA-Lib TRANGE from index 1, shape (P, T-1): max(high, prev close) - min(low, prev close).

    This equals TA-Lib's max(h - l, |h - prev|, |l - prev|) whenever high >= low.
    """
    prev = c[:, :-1]
    tr = np.maximum(h[:, 1:], prev)
    tr -= np.minimum(l[:, 1:], prev)
    return tr


def _atr_into(h: np.ndarray, l: np.ndarray, c: np.ndarray, n: int, out: np.ndarray) -> None:
    out[:, :1] = np.nan
    _seeded_smooth(_true_range(h, l, c), n, 1.0 / n, out=out[:, 1:])


def atr(high, low, close, period: int = ATR_PERIOD) -> np.ndarray:
    """Wilder's ATR as TA-Lib: seeded with the mean true range of candles 1..period."""
    n = _period(period)
    (h, one_d), (l, _), (c, _) = _as2d(high), _as2d(low), _as2d(close)
    out = np.empty(c.shape)
    _atr_into(h, l, c, n, out)
    return _back(out, one_d)


def _momentum_into(c: np.ndarray, n: int, out: np.ndarray) -> None:
    out[:, :n] = np.nan
    np.subtract(c[:, n:], c[:, :-n], out=out[:, n:])


def momentum(close, period: int = MOM_PERIOD) -> np.ndarray:
    """close - close[t-period] (TA-Lib MOM)."""
    n = _period(period)
    c, one_d = _as2d(close)
    out = np.empty(c.shape)
    _momentum_into(c, n, out)
    return _back(out, one_d)


def _volume_ratio_into(v: np.ndarray, n: int, out: np.ndarray) -> None:
    out[:, :n - 1] = np.nan
    mean = _window_stats(v, n, False)[0]
    np.divide(v[:, n - 1:], np.maximum(mean, _TINY, out=mean), out=out[:, n - 1:])


def volume_ratio(volume, period: int = VOLUME_PERIOD) -> np.ndarray:
    """volume / SMA(volume, period); 0 where the whole window has zero volume."""
    n = _period(period)
    v, one_d = _as2d(volume)
    out = np.empty(v.shape)
    _volume_ratio_into(v, n, out)
    return _back(out, one_d)


# The block _compute fills: every indicator plus the internal series streaming starts from,
# ordered so that the parts computed together are adjacent rows.
_SERIES = ("ema_fast", "ema_slow", "ema_trend", "macd_fast", "macd", "macd_signal", "macd_hist",
           "avg_gain", "avg_loss", "rsi", "atr", "bb_upper", "bb_middle", "bb_lower", "momentum",
           "volume_ratio")
_K = {name: i for i, name in enumerate(_SERIES)}


def _compute(h: np.ndarray, l: np.ndarray, c: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Every series of _SERIES for (P, T) candles, as one (len(_SERIES), P, T) block."""
    k = _K
    blk = np.empty((len(_SERIES),) + c.shape)
    for i, n in enumerate((EMA_FAST, EMA_SLOW, EMA_TREND)):
        _seeded_smooth(c, n, 2.0 / (n + 1), out=blk[i])
    _macd_into(c, EMA_FAST, EMA_SLOW, MACD_SIGNAL, blk[0], blk[1], blk[k["macd_fast"]:k["macd_hist"] + 1])
    _gain_loss(c, RSI_PERIOD, out=blk[k["avg_gain"]:k["avg_loss"] + 1])
    _rsi_from(blk[k["avg_gain"]], blk[k["avg_loss"]], out=blk[k["rsi"]])
    _atr_into(h, l, c, ATR_PERIOD, blk[k["atr"]])
    _bands_into(c, BB_PERIOD, BB_NBDEV, *blk[k["bb_upper"]:k["bb_lower"] + 1])
    _momentum_into(c, MOM_PERIOD, blk[k["momentum"]])
    _volume_ratio_into(v, VOLUME_PERIOD, blk[k["volume_ratio"]])
    return blk


def compute_all(open, high, low, close, volume) -> dict[str, np.ndarray]:  # noqa: A002
    """Every indicator (INDICATOR_NAMES) for (P, T) or (T,) candles; `open` is not used."""
    (h, one_d), (l, _), (c, _), (v, _) = (_as2d(a) for a in (high, low, close, volume))
    blk = _compute(h, l, c, v)
    return {name: _back(blk[_K[name]], one_d) for name in INDICATOR_NAMES}


# -- streaming ---------------------------------------------------------------------------------
# State block, rows x pairs (columns). Rows 0-6 are smoothed by one fused step (inputs: close x4,
# true range, gain, loss); the indicator rows double as state; then the last BB_PERIOD closes
# and the last VOLUME_PERIOD volumes, oldest first (the newest close is the previous close).
_ROWS = ("ema_fast", "ema_slow", "ema_trend", "macd_fast", "atr", "avg_gain", "avg_loss",
         "macd", "macd_signal", "macd_hist", "rsi", "bb_middle", "volume_mean", "bb_upper",
         "bb_lower", "momentum", "volume_ratio")
_R = {name: i for i, name in enumerate(_ROWS)}
_ALPHA = np.array([2.0 / (EMA_FAST + 1), 2.0 / (EMA_SLOW + 1), 2.0 / (EMA_TREND + 1),
                   2.0 / (EMA_FAST + 1), 1.0 / ATR_PERIOD, 1.0 / RSI_PERIOD, 1.0 / RSI_PERIOD])[:, None]
_NE = len(_ALPHA)
_CW = len(_ROWS)                 # first row of the close window
_VW = _CW + BB_PERIOD            # first row of the volume window
_NS = _VW + VOLUME_PERIOD
_OUT_ROWS = np.array([_R[name] for name in INDICATOR_NAMES])
_MEAN = np.full(BB_PERIOD, 1.0 / BB_PERIOD)                         # window rows -> mean
_WIDTH2 = np.full(BB_PERIOD, BB_NBDEV * BB_NBDEV / BB_PERIOD)      # squared deviations -> width**2
_SIG_KEEP = 1.0 - 2.0 / (MACD_SIGNAL + 1)
(_MACD_FAST, _EMA_SLOW, _GAIN, _LOSS, _MACD, _SIG, _HIST, _RSI, _MID, _VMEAN, _UP, _LOW, _MOM,
 _VR) = (_R[k] for k in ("macd_fast", "ema_slow", "avg_gain", "avg_loss", "macd", "macd_signal",
                         "macd_hist", "rsi", "bb_middle", "volume_mean", "bb_upper", "bb_lower",
                         "momentum", "volume_ratio"))
assert BB_PERIOD == VOLUME_PERIOD and MOM_PERIOD < BB_PERIOD    # the windows share one shift


def _state_from_history(h: np.ndarray, l: np.ndarray, c: np.ndarray, v: np.ndarray) -> np.ndarray:
    """State block (_NS, P) after the candles (P, T) of each pair."""
    p, t = c.shape
    st = np.full((_NS, p), np.nan)
    if t == 0:
        return st
    blk = _compute(h, l, c, v)
    for name in _ROWS:
        if name != "volume_mean":
            st[_R[name]] = blk[_K[name], :, -1]
    k = min(t, BB_PERIOD)
    st[_VW - k:_VW] = c[:, -k:].T
    st[_NS - k:_NS] = v[:, -k:].T
    return st


class _Scratch:
    """Work arrays and full-size constants for one step over p pairs (ufuncs are faster
    with same-shape arrays than with broadcast scalars)."""

    def __init__(self, p: int):
        self.x = np.empty((_NE, p))
        self.dev = np.empty((BB_PERIOD, p))
        self.d = np.empty(p)
        self.tmp = np.empty(p)
        self.alpha = np.repeat(_ALPHA, p, axis=1)
        self.zero = np.zeros(p)
        self.tiny = np.full(p, _TINY)
        self.hundred = np.full(p, 100.0)
        self.sig_keep = np.full(p, _SIG_KEEP)


def _step(st: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray, v: np.ndarray,
          w: _Scratch) -> None:
    """Advance the warmed-up state columns st (_NS, P) by one candle, in place."""
    e, x, d, tmp = st[:_NE], w.x, w.d, w.tmp
    prev = st[_VW - 1]
    x[:4] = c
    np.subtract(c, prev, out=d)
    np.maximum(d, w.zero, out=x[5])                 # gain
    np.subtract(x[5], d, out=x[6])                  # loss = max(-d, 0)
    np.maximum(h, prev, out=x[4])                   # true range
    x[4] -= np.minimum(l, prev, out=tmp)
    x -= e
    x *= w.alpha
    e += x
    line = np.subtract(e[_MACD_FAST], e[_EMA_SLOW], out=st[_MACD])
    np.subtract(line, st[_SIG], out=tmp)            # signal += k * (line - signal), so
    np.multiply(tmp, w.sig_keep, out=st[_HIST])     # hist = line - signal = (1 - k) * (line - signal)
    np.subtract(line, st[_HIST], out=st[_SIG])
    rsi = np.add(e[_GAIN], e[_LOSS], out=st[_RSI])
    np.divide(e[_GAIN], np.maximum(rsi, w.tiny, out=rsi), out=rsi)
    rsi *= w.hundred
    # Shift both windows up by one row; the last row of each then takes the new candle.
    st[_CW:_NS - 1] = st[_CW + 1:]
    st[_VW - 1] = c
    st[_NS - 1] = v
    mid = np.dot(_MEAN, st[_CW:_VW], out=st[_MID])
    np.dot(_MEAN, st[_VW:], out=st[_VMEAN])
    dev = np.subtract(st[_CW:_VW], mid, out=w.dev)
    dev *= dev
    width = np.sqrt(np.dot(_WIDTH2, dev, out=tmp), out=tmp)
    np.add(mid, width, out=st[_UP])
    np.subtract(mid, width, out=st[_LOW])
    np.subtract(c, st[_VW - 1 - MOM_PERIOD], out=st[_MOM])
    np.divide(v, np.maximum(st[_VMEAN], w.tiny, out=tmp), out=st[_VR])


class StreamingIndicators:
    """compute_all(...)[:, -1] kept up to date in O(1) per closed candle, for all pairs at once.

    Rows are pairs. A row with fewer than WARMUP candles keeps them (at most WARMUP) and is
    recomputed from them on each candle; warmed-up rows advance by fixed-size recursions and
    windows, never touching their history.
    """

    def __init__(self, state: np.ndarray, count: np.ndarray, hist: np.ndarray):
        self._st, self._count, self._hist = state, count, hist
        self._scratch: dict[int, _Scratch] = {}
        self._n_warm = int(np.count_nonzero(count < WARMUP))

    @classmethod
    def from_history(cls, open, high, low, close, volume) -> "StreamingIndicators":  # noqa: A002
        """State after the candles (P, T) or (T,) of each pair (`open` is not used)."""
        (h, _), (l, _), (c, _), (v, _) = (_as2d(a) for a in (high, low, close, volume))
        p, t = c.shape
        hist = np.full((p, WARMUP, 4), np.nan)
        if t < WARMUP:
            hist[:, :t] = np.stack((h, l, c, v), axis=-1)
        return cls(_state_from_history(h, l, c, v), np.full(p, min(t, WARMUP), dtype=np.intp), hist)

    def __len__(self) -> int:
        return len(self._count)

    def update(self, open, high, low, close, volume, rows=None) -> None:  # noqa: A002
        """One new closed candle for every pair, or only for the distinct row indices `rows`
        (pairs may fall behind and catch up later, one candle per call).

        Arrays are (P,), or (len(rows),) in the order of `rows`; `open` is not used.
        """
        h, l, c, v = (np.asarray(a, dtype=np.float64) for a in (high, low, close, volume))
        idx = None if rows is None else np.asarray(rows, dtype=np.intp)
        n = len(self._count) if idx is None else len(idx)
        if not h.shape == l.shape == c.shape == v.shape == (n,):
            raise ValueError(f"update needs one value per updated pair, shape ({n},); "
                             f"got {h.shape}, {l.shape}, {c.shape}, {v.shape}")
        if idx is None and self._n_warm == 0:
            _step(self._st, h, l, c, v, self._scratch_for(n))
            return
        if idx is None:
            idx = np.arange(n)
        if self._n_warm == 0:
            self._step_rows(idx, h, l, c, v)
            return
        warm = self._count[idx] < WARMUP
        ready = ~warm
        self._step_rows(idx[ready], h[ready], l[ready], c[ready], v[ready])
        self._warm_rows(idx[warm], h[warm], l[warm], c[warm], v[warm])

    def _step_rows(self, rows: np.ndarray, h, l, c, v) -> None:
        if len(rows):
            st = self._st.take(rows, axis=1)
            _step(st, h, l, c, v, self._scratch_for(len(rows)))
            self._st[:, rows] = st

    def _scratch_for(self, p: int) -> _Scratch:
        """Work arrays for p pairs, kept for the few most recent sizes."""
        w = self._scratch.pop(p, None) or _Scratch(p)
        self._scratch[p] = w
        if len(self._scratch) > 4:
            del self._scratch[next(iter(self._scratch))]
        return w

    def _warm_rows(self, rows: np.ndarray, h, l, c, v) -> None:
        """Append the candle to each warming row's history and recompute the row from it."""
        self._hist[rows, self._count[rows]] = np.stack((h, l, c, v), axis=-1)
        self._count[rows] += 1
        counts = self._count[rows]
        for t in np.unique(counts):
            group = rows[counts == t]
            self._st[:, group] = _state_from_history(*np.moveaxis(self._hist[group, :t], -1, 0))
        self._n_warm = int(np.count_nonzero(self._count < WARMUP))

    def latest(self) -> dict[str, np.ndarray]:
        """name -> (P,) values after the last candle (fresh arrays, safe to keep)."""
        return dict(zip(INDICATOR_NAMES, self._st[_OUT_ROWS]))

    def add_pairs(self, open, high, low, close, volume) -> None:  # noqa: A002
        """Append rows built from the candles (K, T) or (T,) of new pairs."""
        new = StreamingIndicators.from_history(open, high, low, close, volume)
        self._st = np.ascontiguousarray(np.concatenate((self._st, new._st), axis=1))
        self._count = np.concatenate((self._count, new._count))
        self._hist = np.concatenate((self._hist, new._hist))
        self._n_warm += new._n_warm
        logger.debug("added %d pairs: %d rows, %d still warming up", len(new), len(self), self._n_warm)

    def remove_rows(self, rows) -> None:
        """Drop the given row indices; later rows move up, keeping their order."""
        rows = np.asarray(rows, dtype=np.intp)
        self._st = np.ascontiguousarray(np.delete(self._st, rows, axis=1))
        self._count = np.delete(self._count, rows)
        self._hist = np.delete(self._hist, rows, axis=0)
        self._n_warm = int(np.count_nonzero(self._count < WARMUP))
        logger.debug("removed %d rows: %d left", len(rows), len(self))

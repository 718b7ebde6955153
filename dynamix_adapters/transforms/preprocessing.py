"""Scaling and embeddings between data space and the model's N-dim input space, for many series at once.

Everything here works on R rows of equal length, shaped (R, T, d) or (R, T), in float64:
the batch encoding (``encoding.py``) groups series by length and calls these once per
group. Each row's result is what it would be alone: no statistic mixes rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.fft import next_fast_len

from ..rollout.noise import encoding_integers

EMBEDDINGS = ("pos_embedding", "delay_embedding", "delay_embedding_random", "zero_embedding")
RANDOM_LAG_RANGE = (3, 10)
STD_FLOOR = 1e-12


def check_preprocessing(name) -> str:
    if name not in EMBEDDINGS:
        raise ValueError(f"Unknown preprocessing {name!r}; choose one of {', '.join(EMBEDDINGS)}.")
    return name


def min_context_length(preprocessing: str, n_dims: int = 1, model_dims: int = 3) -> int:
    """Shortest context (time steps) that ``forecast`` accepts for this embedding.

    Attention needs at least one key frame besides the last one, so an embedded
    context keeps at least two frames. Delay embeddings lose frames to their lags.
    """
    check_preprocessing(preprocessing)
    needed = model_dims - min(n_dims, model_dims) if n_dims <= model_dims else model_dims - 1
    if needed == 0 or preprocessing in ("pos_embedding", "zero_embedding"):
        return 2
    if preprocessing == "delay_embedding":
        return needed + 2
    return RANDOM_LAG_RANGE[1] + 2


@dataclass(frozen=True)
class Scaler:
    """Per-row, per-dim affine map to zero mean and unit variance; constant dims keep scale 1."""

    mean: np.ndarray  # (R, d)
    std: np.ndarray  # (R, d)
    constant: np.ndarray  # (R, d) bool

    @classmethod
    def fit(cls, x: np.ndarray, enabled: bool = True) -> Scaler:
        """Statistics of x (R, T, d) over time."""
        magnitude = np.abs(x).max(axis=1)
        unit = np.where(magnitude > 0, magnitude, 1.0)
        std = (x / unit[:, None]).std(axis=1) * unit  # squaring values beyond 1e154 directly would overflow
        # Relative to the dim's magnitude only: a series at 1e-12 scale still varies.
        constant = std <= STD_FLOOR * magnitude
        if not enabled:
            return cls(np.zeros_like(std), np.ones_like(std), constant)
        return cls(x.mean(axis=1), np.where(constant, 1.0, std), constant)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """x (R, T, d) -> standardized."""
        return (x - self.mean[:, None]) / self.std[:, None]


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Biased sample autocorrelation of each row of x (R, T) at lags 0..max_lag (FFT based): (R, max_lag + 1)."""
    x = x - x.mean(axis=-1, keepdims=True)
    n = x.shape[-1]
    # Zero-padded to at least 2n - 1 (no wrap-around), at a length with small prime factors only:
    # 2n itself can hold a large prime (992 = 32 x 31) and cost a third more.
    padded = next_fast_len(2 * n - 1, real=True)
    spectrum = np.fft.rfft(x, n=padded, axis=-1)
    power = np.square(spectrum.real) + np.square(spectrum.imag)
    acov = np.fft.irfft(power, n=padded, axis=-1)[..., : max_lag + 1]
    zero = acov[..., :1] <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(zero, 0.0, acov / np.where(zero, 1.0, acov[..., :1]))


def dominant_period(x: np.ndarray, acf: np.ndarray | None = None) -> np.ndarray:
    """Lag of the highest autocorrelation peak beyond T/10 of each row of x (..., T); T where there is none.

    ``acf`` (R, T) is the rows' ``autocorrelation`` at every lag, when already computed.
    """
    n = x.shape[-1]
    rows = np.reshape(x, (-1, n))
    if n < 4:
        return np.full(rows.shape[:1], n).reshape(x.shape[:-1])
    start = max(1, n // 10)
    acf = (autocorrelation(rows, n - 1) if acf is None else acf)[:, start:]
    peaks = _peak_midpoints(acf)
    best = np.argmax(np.where(peaks, acf, -np.inf), axis=1)
    return np.where(peaks.any(axis=1), start + best, n).reshape(x.shape[:-1])


def _peak_midpoints(a: np.ndarray) -> np.ndarray:
    """(R, M) bool: the local maxima of each row, as ``scipy.signal.find_peaks`` finds them.

    A peak is a run of equal values with a smaller value on each side, neither end at the
    row's border; a run longer than one is marked at its middle (rounded down).
    """
    rows, m = a.shape
    peaks = np.zeros((rows, m), dtype=bool)
    if m < 3:
        return peaks
    peaks[:, 1:-1] = (a[:, :-2] < a[:, 1:-1]) & (a[:, 1:-1] > a[:, 2:])
    ties = (a[:, 1:] == a[:, :-1]).any(axis=1)
    if ties.any():  # rare in an autocorrelation: only rows with equal neighbours need the run bookkeeping
        peaks[ties] = _plateau_peaks(a[ties])
    return peaks


def _plateau_peaks(a: np.ndarray) -> np.ndarray:
    """``_peak_midpoints`` for rows that may hold runs of equal values."""
    rows, m = a.shape
    peaks = np.zeros((rows, m), dtype=bool)
    position = np.arange(m)
    starts = np.ones((rows, m), dtype=bool)
    starts[:, 1:] = a[:, 1:] != a[:, :-1]
    ends = np.ones((rows, m), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    run_start = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    run_end = np.minimum.accumulate(np.where(ends, position, m - 1)[:, ::-1], axis=1)[:, ::-1]
    before = np.take_along_axis(a, np.maximum(run_start - 1, 0), axis=1)
    after = np.take_along_axis(a, np.minimum(run_end + 1, m - 1), axis=1)
    peak_run = starts & (run_start >= 1) & (run_end <= m - 2) & (before < a) & (after < a)
    r, left = np.nonzero(peak_run)
    peaks[r, (left + run_end[r, left]) // 2] = True
    return peaks


def decorrelation_lag(x: np.ndarray, acf: np.ndarray | None = None) -> np.ndarray:
    """First lag where the autocorrelation of each row of x (R, T) drops below 1/e; -1 where it never does."""
    below = (autocorrelation(x, x.shape[-1] - 1) if acf is None else acf) < np.exp(-1.0)
    return np.where(below.any(axis=1), np.argmax(below, axis=1), -1)


def random_lags(entropy: int, keys, count: int) -> np.ndarray:
    """(U, count) lags in RANDOM_LAG_RANGE for units with content ``keys`` (U,): a function of seed and key only."""
    return encoding_integers(entropy, np.asarray(keys, dtype=np.uint64), count, *RANDOM_LAG_RANGE)


def embedding_columns(
    x: np.ndarray, method: str, dims: int, lags: np.ndarray | None = None, acf: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The columns that embed standardized rows x (R, T, d) into ``dims`` model dims.

    Returns columns (R, T, dims - d), so that a row's embedded context is
    ``concatenate([x, columns], axis=2)[r, first[r]:]``, aligned to the end of x, and the
    first valid frame of each row (R,): a delay embedding loses its largest lag at the
    start; frames before it are undefined. ``lags`` (R, dims - d) are the delays of
    "delay_embedding_random" (``random_lags``); ``acf`` (R, T) the autocorrelation of each
    row's last dim, when already computed.
    """
    rows, t, d = x.shape
    needed = max(dims - d, 0)
    first = np.zeros(rows, dtype=np.int64)
    if needed == 0 or method == "zero_embedding":
        return np.zeros((rows, t, needed)), first
    if method == "pos_embedding":
        period = dominant_period(x[:, :, -1], acf)
        # One set of waves per distinct period: many rows share a period, and sin is costly.
        periods, which = np.unique(period, return_inverse=True)
        phases = np.linspace(0.0, np.pi / 2, needed) if needed > 1 else np.zeros(1)
        steps = np.arange(t)[None, :, None]
        waves = np.sin(2 * np.pi * steps / periods[:, None, None] + phases[None, None, :])
        return waves[which.reshape(-1)], first
    if method == "delay_embedding":
        lag = decorrelation_lag(x[:, :, -1], acf)
        shortest = t // (needed + 1)
        # Keep two frames at least (attention needs a key frame besides the last one), and a real delay.
        fallback = (lag < 1) | (t - needed * lag < max(shortest, 2))
        lag = np.where(fallback, max(1, shortest), lag)
        lags = lag[:, None] * np.arange(1, needed + 1)[None, :]
        source = x[:, :, -1]
    else:
        source = x[:, :, 0]
    index = np.maximum(np.arange(t)[None, :, None] - lags[:, None, :], 0)  # (R, T, needed)
    delayed = np.take_along_axis(source, index.reshape(rows, -1), axis=1).reshape(rows, t, needed)
    return delayed, lags.max(axis=1)

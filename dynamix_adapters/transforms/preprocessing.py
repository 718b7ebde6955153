"""Per-series transforms between data space and the model's N-dim input space.

Everything here works on one series at a time, shaped (T, d), in float64. The
forecast pipeline applies these per series and stacks the results for the batched
rollout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import optimize, signal, special, stats

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
    """Per-dim affine map to zero mean and unit variance; constant dims keep scale 1."""

    mean: np.ndarray  # (d,)
    std: np.ndarray  # (d,)
    constant: np.ndarray  # (d,) bool

    @classmethod
    def fit(cls, x: np.ndarray, enabled: bool = True) -> Scaler:
        d = x.shape[1]
        magnitude = np.abs(x).max(axis=0)
        unit = np.where(magnitude > 0, magnitude, 1.0)
        std = (x / unit).std(axis=0) * unit  # squaring values beyond 1e154 directly would overflow
        # Relative to the dim's magnitude only: a series at 1e-12 scale still varies.
        constant = std <= STD_FLOOR * magnitude
        if not enabled:
            return cls(np.zeros(d), np.ones(d), constant)
        return cls(x.mean(axis=0), np.where(constant, 1.0, std), constant)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return x * self.std + self.mean


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Biased sample autocorrelation of a 1-D series at lags 0..max_lag (FFT based)."""
    x = x - x.mean()
    n = len(x)
    spectrum = np.fft.rfft(x, n=2 * n)
    acov = np.fft.irfft(spectrum * np.conj(spectrum))[: max_lag + 1]
    if acov[0] <= 0:
        return np.zeros(max_lag + 1)
    return acov / acov[0]


def dominant_period(x: np.ndarray) -> int:
    """Lag of the highest autocorrelation peak beyond T/10 (falls back to T if none)."""
    n = len(x)
    if n < 4:
        return n
    acf = autocorrelation(x, n - 1)
    start = max(1, n // 10)
    peaks, _ = signal.find_peaks(acf[start:])
    if len(peaks) == 0:
        return n
    return int(start + peaks[np.argmax(acf[start:][peaks])])


def decorrelation_lag(x: np.ndarray) -> int | None:
    """First lag where the autocorrelation drops below 1/e, or None."""
    acf = autocorrelation(x, len(x) - 1)
    below = np.nonzero(acf < np.exp(-1.0))[0]
    return int(below[0]) if len(below) else None


def embed(x: np.ndarray, method: str, dims: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Embed a standardized series x (T, d) into ``dims`` model dims.

    Returns the embedded context (T', dims), with T' <= T aligned to the end of x,
    and a dict describing what was done (for ``get_fitted_params`` and logs).
    """
    t, d = x.shape
    needed = dims - d
    if needed <= 0:
        return x, {"embedding": "none"}
    if method == "zero_embedding":
        return np.concatenate([x, np.zeros((t, needed))], axis=1), {"embedding": method}
    if method == "pos_embedding":
        period = dominant_period(x[:, -1])
        phases = np.linspace(0.0, np.pi / 2, needed) if needed > 1 else np.zeros(1)
        steps = np.arange(t)[:, None]
        waves = np.sin(2 * np.pi * steps / period + phases[None, :])
        return np.concatenate([x, waves], axis=1), {"embedding": method, "period": period}
    if method == "delay_embedding":
        lag = decorrelation_lag(x[:, -1])
        shortest = t // (needed + 1)
        # Keep two frames at least (attention needs a key frame besides the last one), and a real delay.
        if lag is None or lag < 1 or t - needed * lag < max(shortest, 2):
            lag = max(1, shortest)
        lags = [lag * (i + 1) for i in range(needed)]
        source = x[:, -1]
    else:
        low, high = RANDOM_LAG_RANGE
        lags = [int(v) for v in rng.integers(low, high + 1, size=needed)]
        source = x[:, 0]
    start = max(lags)
    delayed = [source[start - lag : t - lag] for lag in lags]
    embedded = np.column_stack([x[start:], *delayed])
    return embedded, {"embedding": method, "lags": lags}


@dataclass(frozen=True)
class TrendTransform:
    """Box-Cox (after a shift to positive values) and a power-law trend, for one 1-D series.

    Forward: y = boxcox(x - shift, lam) - trend(t), with trend(t) = a + b * t**c over
    t = 1..T. Inverse extrapolates the trend to t = T+1..T+H.
    """

    shift: float
    lam: float
    coef: tuple[float, float, float]
    length: int

    @classmethod
    def fit(cls, x: np.ndarray) -> TrendTransform:
        """Fit to a 1-D series; the same values always give the same transform (cached)."""
        # Auto validation (selection.py) fits each window once per embedding: a cache makes that one fit.
        return _cached_trend(np.ascontiguousarray(x, dtype=np.float64).tobytes())

    @classmethod
    def _fit(cls, x: np.ndarray) -> TrendTransform:
        # At least a billionth of the magnitude: below that, "shift below the minimum" can round to the minimum
        # itself (a column near -1e6 varying by 1e-10), and Box-Cox then meets a zero.
        spread = max(float(np.ptp(x)), 1e-12, 1e-9 * float(np.abs(x).max()))
        shift = float(x.min()) - 0.1 * spread
        positive = x - shift
        if np.ptp(positive) <= 1e-12 * spread:
            lam = 1.0
            transformed = positive - 1.0
        else:
            transformed, lam = stats.boxcox(positive)
        t = np.arange(1, len(x) + 1, dtype=float)
        coef = _fit_power_trend(t, transformed)
        return cls(shift, float(lam), coef, len(x))

    def trend(self, t: np.ndarray) -> np.ndarray:
        a, b, c = self.coef
        return a + b * t**c

    def transform(self, x: np.ndarray) -> np.ndarray:
        t = np.arange(1, len(x) + 1, dtype=float)
        return special.boxcox(x - self.shift, self.lam) - self.trend(t)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """y (H, ...) continues the transformed series after its last point."""
        t = np.arange(self.length + 1, self.length + 1 + len(y), dtype=float)
        level = y + self.trend(t).reshape((-1,) + (1,) * (y.ndim - 1))
        if self.lam != 0:
            # inv_boxcox needs lam * level + 1 > 0; stay just inside that bound.
            limit = -(1.0 - 1e-9) / self.lam
            level = np.maximum(level, limit) if self.lam > 0 else np.minimum(level, limit)
        return special.inv_boxcox(level, self.lam) + self.shift


@functools.lru_cache(maxsize=256)
def _cached_trend(values: bytes) -> TrendTransform:
    return TrendTransform._fit(np.frombuffer(values))


def _fit_power_trend(t: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    slope, intercept = np.polyfit(t, y, 1)
    try:
        with np.errstate(all="ignore"):
            coef, _ = optimize.curve_fit(
                lambda tt, a, b, c: a + b * tt**c,
                t,
                y,
                p0=(intercept, slope, 1.0),
                bounds=([-np.inf, -np.inf, 0.05], [np.inf, np.inf, 3.0]),
                maxfev=2000,
            )
        if np.all(np.isfinite(coef)):
            return float(coef[0]), float(coef[1]), float(coef[2])
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        pass
    return float(intercept), float(slope), 1.0

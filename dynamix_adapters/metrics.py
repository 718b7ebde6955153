"""The DynaMix paper's metrics: state-space divergence, power-spectrum distance, MASE.

All take numpy arrays shaped (T, N) (1-D arrays are treated as (T, 1)) and return floats.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(1000, 2))
>>> state_space_divergence(x, x)
0.0
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d


def _as_2d(x, name: str) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty (T, N) array, got shape {array.shape}.")
    return array


def _check_pair(true, generated) -> tuple[np.ndarray, np.ndarray]:
    x_true, x_gen = _as_2d(true, "true"), _as_2d(generated, "generated")
    if x_true.shape[1] != x_gen.shape[1]:
        raise ValueError(f"true has {x_true.shape[1]} dims but generated has {x_gen.shape[1]}.")
    return x_true, x_gen


def state_space_divergence(true, generated, bins: int = 30, alpha: float = 1e-5) -> float:
    """D_stsp: KL(p_true || p_gen) between N-dim histograms over the true trajectory's range.

    The range per dim is [min - 0.1 std, max + 0.1 std] of ``true``, with ``bins``
    bins per dim; both histograms get Laplace smoothing ``alpha`` added to every bin
    count before normalizing (points outside the range are not counted). Returns NaN when
    no generated point falls inside the range (or it holds non-finite values).
    """
    x_true, x_gen = _check_pair(true, generated)
    if not np.all(np.isfinite(x_gen)):
        return float("nan")
    spread = 0.1 * x_true.std(axis=0)
    edges = [
        np.linspace(lo, hi, bins + 1) for lo, hi in zip(x_true.min(0) - spread, x_true.max(0) + spread, strict=True)
    ]
    p_true = _smoothed_histogram(x_true, edges, alpha)
    p_gen = _smoothed_histogram(x_gen, edges, alpha)
    if p_gen is None:
        return float("nan")
    return float(np.sum(p_true * np.log(p_true / p_gen)))


def _smoothed_histogram(x: np.ndarray, edges: list[np.ndarray], alpha: float) -> np.ndarray | None:
    counts, _ = np.histogramdd(x, bins=edges)
    total = counts.sum()
    if total == 0:
        return None
    return (counts + alpha) / (total + alpha * counts.size)


def power_spectrum_distance(true, generated, smoothing: float = 20.0) -> float:
    """D_H: mean over dims of the Hellinger distance between smoothed, normalized power spectra.

    Each dim is z-scored, its power spectrum |rfft|^2 smoothed with a Gaussian of
    ``smoothing`` bins, and normalized to sum 1. Both series are cut to the shorter length.
    """
    x_true, x_gen = _check_pair(true, generated)
    if not np.all(np.isfinite(x_gen)):
        return float("nan")
    length = min(len(x_true), len(x_gen))
    distances = [
        _hellinger(
            normalized_power_spectrum(x_true[:length, d], smoothing),
            normalized_power_spectrum(x_gen[:length, d], smoothing),
        )
        for d in range(x_true.shape[1])
    ]
    return float(np.mean(distances))


def normalized_power_spectrum(x: np.ndarray, smoothing: float = 20.0) -> np.ndarray:
    """A 1-D series' z-scored power spectrum, Gaussian-smoothed and normalized to sum 1."""
    std = x.std()
    z = (x - x.mean()) / (std if std > 0 else 1.0)
    power = gaussian_filter1d(np.abs(np.fft.rfft(z)) ** 2, smoothing)
    total = power.sum()
    return power / total if total > 0 else np.full_like(power, 1.0 / len(power))


def _hellinger(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(p * q)))))


def mase(true, forecast, steps: int = 10) -> float:
    """Mean absolute error over the first ``steps`` steps, scaled by the true window's mean |lag-1 change|.

    The scale is computed per dim over the whole ``true`` window; the result is the mean over dims.
    """
    x_true, x_pred = _check_pair(true, forecast)
    steps = min(steps, len(x_true), len(x_pred))
    error = np.abs(x_pred[:steps] - x_true[:steps]).mean(axis=0)
    scale = np.abs(np.diff(x_true, axis=0)).mean(axis=0) if len(x_true) > 1 else np.zeros(x_true.shape[1])
    scale = np.where(scale > 0, scale, 1.0)
    return float(np.mean(error / scale))

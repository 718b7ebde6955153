"""Calibrated sample paths: widen (or narrow) DynaMix's paths to its own validation error.

The model's sample paths carry only the gating noise, so their spread says little about
how far the forecast will be off. ``Spread`` learns that from the in-context validation
windows of :mod:`.selection`: per dim, the root-mean-square error of the median forecast
at each validation step, in units of the context's standard deviation, smoothed by a
power law ``sigma(h) = a * h**b`` (``0 <= b <= 1``) fitted over all windows and steps at
once, which lets a few windows speak for every step and extrapolate past the validation
horizon. A stationary series' error cannot grow past ``SATURATION`` (sqrt 2) context
standard deviations, the error of a forecast independent of the truth.

``apply`` keeps each path's median and sets the spread around it to ``sigma(h)``: it
shrinks the paths' own deviations when they are wider, and otherwise adds a Gaussian
random walk (scaled to unit variance at each step, so paths stay continuous) for the
missing variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SATURATION = np.sqrt(2.0)
SPREAD_FLOOR = 1e-9


@dataclass(frozen=True)
class Spread:
    """Forecast error scale sigma(h) = a * h**b per dim, in context standard deviations."""

    a: np.ndarray  # (D,)
    b: np.ndarray  # (D,)
    stationary: bool

    @classmethod
    def fit(cls, errors: np.ndarray, stationary: bool) -> Spread | None:
        """errors (K, step, D) standardized validation errors (NaN: missing); None if none are finite."""
        if not np.isfinite(errors).any():
            return None
        steps = np.arange(1, errors.shape[1] + 1, dtype=float)
        a, b = [], []
        for d in range(errors.shape[2]):
            rms = np.sqrt(np.nanmean(errors[:, :, d] ** 2, axis=0))  # (step,)
            ok = np.isfinite(rms) & (rms > SPREAD_FLOOR)
            if ok.sum() >= 2:
                slope = float(np.clip(np.polyfit(np.log(steps[ok]), np.log(rms[ok]), 1)[0], 0.0, 1.0))
            else:
                slope = 0.0
            # Level for the clipped slope from the mean squared error (a log-space mean would be a
            # geometric mean, biased low).
            level = np.sqrt(np.mean(rms[ok] ** 2 / steps[ok] ** (2 * slope))) if ok.any() else SPREAD_FLOOR
            a.append(level)
            b.append(slope)
        return cls(np.array(a), np.array(b), stationary)

    def sigma(self, horizon: int) -> np.ndarray:
        """(H, D) error scale in context standard deviations."""
        steps = np.arange(1, horizon + 1, dtype=float)[:, None]
        sigma = self.a * steps**self.b
        return np.minimum(sigma, SATURATION) if self.stationary else sigma

    def apply(self, paths: np.ndarray, context_std: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """paths (P, H, D) in data scale -> the same median, spread sigma(h) * context_std."""
        target = self.sigma(paths.shape[1]) * np.where(context_std > 0, context_std, 0.0)  # (H, D)
        center = np.median(paths, axis=0)
        deviation = paths - center
        own = deviation.std(axis=0)  # (H, D)
        shrink = np.where(own > target, target / np.maximum(own, SPREAD_FLOOR), 1.0)
        missing = np.sqrt(np.maximum(target**2 - own**2, 0.0))
        steps = np.arange(1, paths.shape[1] + 1)[None, :, None]
        # Drawn step-major, so the first h steps get the same draws whatever the horizon.
        draws = rng.standard_normal((paths.shape[1], paths.shape[0], paths.shape[2])).transpose(1, 0, 2)
        walk = np.cumsum(draws, axis=1) / np.sqrt(steps)
        return center + deviation * shrink + walk * missing

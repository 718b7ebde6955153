"""Box-Cox and a power-law trend, fitted to many equal-length 1-D series at once.

Forward, per row: y = boxcox(x - shift, lam) - (a + b * t**c) over t = 1..T; the inverse
extrapolates the trend to t = T+1..T+H and undoes Box-Cox. Both fits cost a few array
passes per row, with no optimizer:

- ``lam`` maximizes the Box-Cox profile log-likelihood, as ``scipy.stats.boxcox`` does, on a
  grid of ``LAMBDA_STEP`` over ``LAMBDA_RANGE``, refined by a parabola through the best grid
  point and its neighbours. The grid's powers come from one power of each row by repeated
  multiplication, so a grid point costs a multiply and two sums, not an ``exp``.
- ``c`` minimizes the squared error over a log-spaced grid of ``TREND_POWERS`` powers in
  ``POWER_RANGE`` (the bounds the earlier ``curve_fit`` had); at each power (a, b) is
  ordinary least squares in closed form, so the whole grid is one matrix product with
  basis functions shared by every row of the same length. A parabola through the best
  grid point refines c, kept only when it fits better.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# scipy's Box-Cox MLE is unbounded; on these shifted series (values spanning a factor of 11)
# the optimum lies well inside this range, and a bound keeps the inverse representable.
LAMBDA_RANGE = (-4.0, 6.0)
LAMBDA_STEP = 0.25
POWER_RANGE = (0.05, 3.0)
TREND_POWERS = 48


@dataclass(frozen=True)
class TrendFit:
    """Box-Cox and power-law trend parameters of R rows, each an array of shape (R,)."""

    shift: np.ndarray
    lam: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    length: np.ndarray  # the row's length T: its forecast continues at t = T + 1

    @classmethod
    def fit(cls, x: np.ndarray) -> tuple[TrendFit, np.ndarray]:
        """x (R, T) -> the fit and the detrended rows y (R, T)."""
        rows, length = x.shape
        magnitude = np.abs(x).max(axis=1)
        # At least a billionth of the magnitude: below that, "shift below the minimum" can round to the
        # minimum itself (a column near -1e6 varying by 1e-10), and Box-Cox then meets a zero.
        spread = np.maximum.reduce([np.ptp(x, axis=1), np.full(rows, 1e-12), 1e-9 * magnitude])
        shift = x.min(axis=1) - 0.1 * spread
        positive = x - shift[:, None]
        flat = np.ptp(positive, axis=1) <= 1e-12 * spread
        lam = np.where(flat, 1.0, _boxcox_lambda(positive))
        transformed = boxcox(positive, lam[:, None])
        a, b, c = _power_trend(transformed)
        fit = cls(shift, lam, a, b, c, np.full(rows, length))
        return fit, transformed - fit.trend(np.arange(1, length + 1, dtype=float)[None, :])

    @classmethod
    def concatenate(cls, fits: list[TrendFit]) -> TrendFit:
        return cls(*(np.concatenate([getattr(f, name) for f in fits]) for name in cls.__dataclass_fields__))

    def take(self, rows: np.ndarray) -> TrendFit:
        return type(self)(*(getattr(self, name)[rows] for name in self.__dataclass_fields__))

    def trend(self, t: np.ndarray) -> np.ndarray:
        """The trend of every row at times t (R, n) or (1, n): (R, n)."""
        return self.a[:, None] + self.b[:, None] * np.exp(self.c[:, None] * np.log(t))

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """y (R, H, ...) continues each detrended row after its last point -> data scale."""
        steps = y.shape[1]
        t = (self.length[:, None] + np.arange(1, steps + 1)).astype(float)
        extra = (1,) * (y.ndim - 2)
        level = y + self.trend(t).reshape((*self.a.shape, steps, *extra))
        lam = self.lam.reshape((-1, 1, *extra))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # inv_boxcox needs lam * level + 1 > 0; stay just inside that bound.
            limit = -(1.0 - 1e-9) / lam
            level = np.where(lam > 0, np.maximum(level, limit), np.where(lam < 0, np.minimum(level, limit), level))
            values = np.where(lam == 0, np.exp(level), np.exp(np.log1p(lam * level) / np.where(lam == 0, 1.0, lam)))
        return values + self.shift.reshape((-1, 1, *extra))


def boxcox(x: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """(x**lam - 1) / lam, and log(x) where lam == 0; lam broadcasts against x."""
    logs = np.log(x)
    safe = np.where(lam == 0, 1.0, lam)
    return np.where(lam == 0, logs, np.expm1(safe * logs) / safe)


def _boxcox_lambda(positive: np.ndarray) -> np.ndarray:
    """(R,) maximizers of the Box-Cox profile log-likelihood of each row of positive (R, T)."""
    logs = np.log(positive)
    centered = logs - logs.mean(axis=1, keepdims=True)  # scaling x leaves the maximizer unchanged
    grid = np.arange(LAMBDA_RANGE[0], LAMBDA_RANGE[1] + LAMBDA_STEP / 2, LAMBDA_STEP)
    # float32 is ample to locate the maximum, and halves the cost of every grid point.
    base = np.exp(LAMBDA_STEP * centered).astype(np.float32)
    power = np.exp(grid[0] * centered).astype(np.float32)
    squared = np.empty_like(power)
    ones = np.ones(positive.shape[1], dtype=np.float32) / positive.shape[1]
    # -T/2 log var(boxcox(x, lam)) + (lam - 1) sum(log x); the second term drops out after centering.
    loglik = np.empty((len(grid), len(positive)))
    for g, lam in enumerate(grid):  # a few dozen grid points, each a multiply and two sums over every row
        if abs(lam) < LAMBDA_STEP / 2:
            variance = centered.var(axis=1)
        else:
            mean = power @ ones
            variance = (np.multiply(power, power, out=squared) @ ones - mean.astype(np.float64) ** 2) / lam**2
        with np.errstate(divide="ignore", invalid="ignore"):
            loglik[g] = -np.log(variance)
        power *= base
    return _refine(grid, np.where(np.isnan(loglik), -np.inf, loglik))


def _power_trend(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, c) per row of y (R, T): least squares a + b * t**c, c in POWER_RANGE."""
    length = y.shape[1]
    powers, basis, basis_mean, basis_var = _power_basis(length)
    mean = y.mean(axis=1)
    centered = y - mean[:, None]
    covariance = centered @ basis / length  # (R, G): the whole grid in one product
    explained = covariance**2 / basis_var  # residual variance = var(y) - explained
    best = np.argmax(explained, axis=1)
    rows = np.arange(len(y))
    c = np.exp(_refine(np.log(powers), explained.T))
    t = np.log(np.arange(1, length + 1, dtype=float))
    refined = np.exp(c[:, None] * t[None, :])
    refined_mean = refined.mean(axis=1)
    refined_centered = refined - refined_mean[:, None]
    refined_var = (refined_centered**2).mean(axis=1)
    refined_cov = (centered * refined_centered).mean(axis=1)
    better = refined_cov**2 / refined_var >= explained[rows, best]
    c = np.where(better, c, powers[best])
    slope = np.where(better, refined_cov / refined_var, covariance[rows, best] / basis_var[best])
    intercept = mean - slope * np.where(better, refined_mean, basis_mean[best])
    return intercept, slope, c


@functools.lru_cache(maxsize=64)
def _power_basis(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The grid of powers, and t**c over t = 1..length for each, centered: (T, G), with means and variances."""
    powers = np.geomspace(*POWER_RANGE, TREND_POWERS)
    raw = np.arange(1, length + 1, dtype=float)[:, None] ** powers[None, :]
    mean = raw.mean(axis=0)
    centered = raw - mean
    return powers, centered, mean, (centered**2).mean(axis=0)


def _refine(grid: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(R,) maximizers of score (G, R) over a uniform grid, refined by a parabola through the best three points."""
    best = np.argmax(score, axis=0)
    middle = np.clip(best, 1, len(grid) - 2)
    rows = np.arange(score.shape[1])
    left, centre, right = score[middle - 1, rows], score[middle, rows], score[middle + 1, rows]
    curvature = left - 2 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.clip(0.5 * (left - right) / curvature, -1.0, 1.0)
    interior = (best == middle) & (curvature < 0) & np.isfinite(offset)
    step = grid[1] - grid[0]
    return np.where(interior, grid[middle] + np.where(interior, offset, 0.0) * step, grid[best])

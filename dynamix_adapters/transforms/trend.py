"""Box-Cox and a power-law trend, fitted to many equal-length 1-D series at once.

Forward, per row: y = boxcox(x - shift, lam) - (a + b * t**c) over t = 1..T; the inverse
extrapolates the trend to t = T+1..T+H and undoes Box-Cox. Both fits cost a few array
passes per row, with no optimizer:

- ``lam`` maximizes the Box-Cox profile log-likelihood, as ``scipy.stats.boxcox`` does, on a
  grid of ``LAMBDA_STEP`` over ``LAMBDA_RANGE``, refined by a parabola through the best grid
  point and its neighbours. The grid's powers come from one power of each row by repeated
  multiplication, so a grid point costs a multiply and two sums, not an ``exp``.
- ``c`` minimizes the squared error, locally from c = 1 as the earlier ``curve_fit`` did,
  over a log-spaced grid of ``TREND_POWERS`` powers in ``POWER_RANGE`` (its bounds); at each power (a, b) is
  ordinary least squares in closed form, so the whole grid is one matrix product with
  basis functions shared by every row of the same length. Parabolas refine c as they do
  lam; the best grid point stays when the refinement fits worse.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# scipy's Box-Cox MLE is unbounded; on these shifted series (values spanning a factor of 11)
# the optimum lies well inside this range, and a bound keeps the inverse representable.
LAMBDA_RANGE = (-4.0, 6.0)
LAMBDA_STEP = 0.5
LAMBDA_FINE = 0.05
POWER_RANGE = (0.05, 3.0)
TREND_POWERS = 48
POWER_FINE = 0.005


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
        # Rows that overflow (values near 1e300) yield non-finite fits: the caller checks the result's range.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            lam = np.where(flat, 1.0, _boxcox_lambda(positive))
            transformed = boxcox(positive, lam[:, None])
            a, b, c, detrended = _power_trend(transformed)
        return cls(shift, lam, a, b, c, np.full(rows, length)), detrended

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
    log_variance = np.log(np.square(centered).mean(axis=1))  # the limit at lam = 0
    grid = np.arange(LAMBDA_RANGE[0], LAMBDA_RANGE[1] + LAMBDA_STEP / 2, LAMBDA_STEP)
    base = np.exp(LAMBDA_STEP * centered)
    power = np.exp(grid[0] * centered)
    squares = np.empty_like(power)
    loglik = np.empty((len(grid), len(positive)))
    for g, lam in enumerate(grid):  # a couple dozen grid points, each a multiply and two sums over every row
        loglik[g] = _profile_loglik(power, np.full(len(positive), lam), log_variance, squares)
        power *= base
    coarse = _refine(grid, loglik)
    # A parabola over the coarse grid is off by up to ~0.01; one more through exact values LAMBDA_FINE apart is not.
    power = np.exp(coarse[:, None] * centered)
    step = np.exp(LAMBDA_FINE * centered)
    near = [
        _profile_loglik(power / step, coarse - LAMBDA_FINE, log_variance, squares),
        _profile_loglik(power, coarse, log_variance, squares),
        _profile_loglik(power * step, coarse + LAMBDA_FINE, log_variance, squares),
    ]
    return _refine_around(coarse, LAMBDA_FINE, np.stack(near))


def _profile_loglik(power: np.ndarray, lam: np.ndarray, log_variance: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """-log var(boxcox(x, lam)) per row from power = exp(lam * centered log x): the Box-Cox profile
    log-likelihood over T/2, less terms that do not depend on lam once log x is centered."""
    length = power.shape[1]
    # Row sums along the contiguous axis: each row's value never depends on the other rows.
    mean = power.sum(axis=1) / length
    variance = np.multiply(power, power, out=squares).sum(axis=1) / length - mean**2
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = np.where(np.abs(lam) < 1e-6, -log_variance, 2 * np.log(np.abs(lam)) - np.log(variance))
    return np.nan_to_num(loglik, nan=-np.inf)


def _power_trend(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, c) per row of y (R, T), least squares a + b * t**c with c in POWER_RANGE, and the residuals (R, T)."""
    length = y.shape[1]
    powers, basis, _, basis_var = _power_basis(length)
    centered = y - y.mean(axis=1, keepdims=True)
    explained = (centered @ basis / length) ** 2 / basis_var  # (R, G): var(y) less the residual variance
    log_t = np.log(np.arange(1, length + 1, dtype=float))
    # The matrix product may round differently in the last bit at another batch size: rounding the
    # coarse estimate keeps that from reaching the result, so a row's fit never depends on its batch.
    best = _uphill_peak(explained, int(np.argmin(np.abs(np.log(powers)))))
    coarse = np.exp(np.round(_refine(np.log(powers), explained.T, best), 9))
    # As for lam: a parabola over the coarse grid, then one through exact values POWER_FINE apart
    # (t**(c +- step) = t**c * t**(+-step), so those cost a multiply by a vector every row shares).
    power = np.exp(coarse[:, None] * log_t)
    step = np.exp(POWER_FINE * log_t)
    near = [_least_squares(centered, p)[0] for p in (power / step, power, power * step)]
    c = np.clip(_refine_around(coarse, POWER_FINE, np.stack(near)), *POWER_RANGE)
    # A refinement that fits worse than the best grid point keeps that point (a flat or boundary optimum).
    power = np.exp(c[:, None] * log_t)
    fit, slope, basis_mean = _least_squares(centered, power)
    worse = fit < explained[np.arange(len(y)), best]
    c[worse] = powers[best[worse]]
    power[worse] = np.exp(c[worse, None] * log_t)
    fit, slope, basis_mean = _least_squares(centered, power)
    intercept = y.mean(axis=1) - slope * basis_mean
    return intercept, slope, c, y - intercept[:, None] - slope[:, None] * power


def _least_squares(centered: np.ndarray, power: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Explained variance and slope of centered (R, T) regressed on power (R, T) with an intercept, and power's mean."""
    mean = power.mean(axis=1)
    basis = power - mean[:, None]
    variance = np.square(basis).mean(axis=1)
    slope = (centered * basis).mean(axis=1) / variance
    return slope**2 * variance, slope, mean


@functools.lru_cache(maxsize=64)
def _power_basis(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The grid of powers, and t**c over t = 1..length for each, centered: (T, G), with means and variances."""
    powers = np.geomspace(*POWER_RANGE, TREND_POWERS)
    raw = np.arange(1, length + 1, dtype=float)[:, None] ** powers[None, :]
    mean = raw.mean(axis=0)
    centered = raw - mean
    return powers, centered, mean, (centered**2).mean(axis=0)


def _uphill_peak(score: np.ndarray, start: int) -> np.ndarray:
    """(R,) index of the local maximum of score (R, G) that climbing from grid point ``start`` reaches.

    The trend's power is the optimum nearest a straight line (c = 1), as a local fit started
    there finds it: a far better-fitting power at the grid's edge extrapolates a short
    context's curvature, and on Track B it cost auto more than it gained.
    """
    size = score.shape[1]
    left, right = np.full_like(score, -np.inf), np.full_like(score, -np.inf)
    left[:, 1:], right[:, :-1] = score[:, :-1], score[:, 1:]
    peak = (score >= left) & (score >= right)  # (R, G); the grid's ends count
    index = np.arange(size)
    first_right = np.argmax(peak & (index >= start), axis=1)
    last_left = size - 1 - np.argmax((peak & (index <= start))[:, ::-1], axis=1)
    rising = score[:, min(start + 1, size - 1)] > score[:, start]
    return np.where(peak[:, start], start, np.where(rising, first_right, last_left))


def _refine(grid: np.ndarray, score: np.ndarray, best: np.ndarray | None = None) -> np.ndarray:
    """(R,) maximizers of score (G, R) over a uniform grid, refined by a parabola through the best three points.

    ``best`` (R,) picks the grid point to refine around (default: the highest).
    """
    best = np.argmax(score, axis=0) if best is None else best
    middle = np.clip(best, 1, len(grid) - 2)
    rows = np.arange(score.shape[1])
    around = np.stack([score[middle - 1, rows], score[middle, rows], score[middle + 1, rows]])
    refined = _refine_around(grid[middle], grid[1] - grid[0], around)
    return np.where(best == middle, refined, grid[best])


def _refine_around(centre: np.ndarray, step: float, score: np.ndarray) -> np.ndarray:
    """The vertex of the parabola through score (3, R) at centre - step, centre, centre + step, within that span."""
    left, middle, right = score
    with np.errstate(all="ignore"):  # -inf scores (a flat row) leave the centre as it is
        curvature = left - 2 * middle + right
        offset = np.clip(0.5 * (left - right) / curvature, -1.0, 1.0)
    usable = (curvature < 0) & np.isfinite(offset)
    return centre + np.where(usable, offset, 0.0) * step

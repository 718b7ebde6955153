"""Calibrated sample paths that stay trajectories of the model.

The model's sample paths carry only its gating noise, so their spread says little about
how far a forecast will be off. ``Spreads`` learns that from the in-context validation
windows of :mod:`.selection`: per dim, the root-mean-square error of the validation path
at each validation step, in units of the context's standard deviation, smoothed by a
power law ``sigma(h) = a * h**b`` (``0 <= b <= 1``) fitted over all windows and steps at
once, which lets a few windows speak for every step. A stationary series' error cannot
grow past ``SATURATION`` (sqrt 2) context standard deviations, the error of a forecast
independent of the truth.

The spread then comes from the model's own dynamics, as in an ensemble weather forecast:

1. **Perturbed initial states** (``perturbed_starts``). Each sample path starts from
   the last observation plus Gaussian noise of the one-step validation error ``sigma(1)``,
   mapped into the model's space, drawn from the counter-based streams of
   :mod:`..rollout.noise` (no generator object per series). Every path is then an unaltered trajectory of the model:
   on a chaotic system the perturbations grow as the system's own divergence makes them
   grow and saturate at the attractor's width; on a contracting one they die out.
2. **Spread matched on the validated horizon** (``match_spreads``, all units at once). Where the ensemble's
   spread around its median differs from ``sigma(h)``, each path's deviation from the
   median is scaled by ``sigma(h) / spread(h)`` for the first ``MATCHED_SPANS``
   validation horizons (the spread measured robustly, ``robust_spread``); over the next
   ``FADE_SPANS`` the factor returns linearly to 1.
   This is not noise: a path keeps its shape (the factor is smooth in h), and after
   ``(MATCHED_SPANS + FADE_SPANS)`` validation horizons (at most 64 steps) every path is
   exactly the model's trajectory from its perturbed start, so the paths' long-term
   statistics (invariant measure, power spectrum) are the model's own.

Past the matched horizon the spread is the model's: the divergence of its trajectories,
not a forecast-error model. The validation windows (at most 16 steps) say nothing about
the error there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..rollout.noise import standard_normals, stream_keys
from .encoding import BatchEncoding

SATURATION = np.sqrt(2.0)
SPREAD_FLOOR = 1e-9
MAD_TO_STD = 1.4826  # a Gaussian's standard deviation over its median absolute deviation
# The spread is matched to sigma(h) up to this many validation horizons (the power law
# extrapolates the validated steps that far; Track B's longest horizon, 18, lies inside it)...
MATCHED_SPANS = 2
# ...and hands over to the model's own spread, linearly, over this many more.
FADE_SPANS = 2
# Model-space step for the finite-difference sensitivity of the decoded forecast to the start.
SENSITIVITY_STEP = 1e-3
# The start perturbations' streams: path p of a unit draws from stream START_STREAMS + p, far from the rollout's
# paths (1, 2, ...) and the encoding's (0).
START_STREAMS = 2**40


@dataclass(frozen=True)
class Spreads:
    """Forecast error scales sigma(h) = a * h**b of U units, per dim, in context standard deviations."""

    a: np.ndarray  # (U, D)
    b: np.ndarray  # (U, D)
    stationary: np.ndarray  # (U,) bool
    horizon: np.ndarray  # (U,) validation steps each fit saw
    fitted: np.ndarray  # (U,) bool; False: no finite validation error, the unit's paths stay as the model draws them

    @classmethod
    def fit(cls, errors: list, stationary) -> Spreads:
        """One fit per unit, as arrays over all units: ``errors`` (U,) of (K, step, D) arrays (NaN: missing) or None.

        Units with equally shaped errors are stacked (a handful of shapes), then padded to the
        longest; every sum runs over windows or steps in order, one array operation per
        window or step over all units, so a unit's fit is the same alone and among others.
        The slope is the least-squares line through log(rms) against log(step), in closed form.
        """
        present = [u for u, e in enumerate(errors) if e is not None]
        shapes = [errors[u].shape for u in present]
        windows, longest, dims = (max((shape[axis] for shape in shapes), default=1) for axis in range(3))
        fits = cls(
            a=np.full((len(errors), dims), SPREAD_FLOOR),
            b=np.zeros((len(errors), dims)),
            stationary=np.asarray(stationary, dtype=bool).reshape(len(errors)),
            horizon=np.ones(len(errors), dtype=np.int64),
            fitted=np.zeros(len(errors), dtype=bool),
        )
        if not present:
            return fits
        stacked = np.full((len(present), windows, longest, dims), np.nan)  # (U', K, S, D)
        for shape in set(shapes):  # a few distinct (windows, steps) shapes
            rows = [i for i, other in enumerate(shapes) if other == shape]
            stacked[rows, : shape[0], : shape[1], : shape[2]] = np.stack([errors[present[i]] for i in rows])
        # rms over windows (np.nanmean's order: the finite squares added window by window)
        finite = np.isfinite(stacked)
        with np.errstate(invalid="ignore", divide="ignore"):
            rms = np.sqrt(_masked_sum(finite, stacked**2) / finite.sum(axis=1))  # (U', S, D); NaN: no window
        ok = np.isfinite(rms) & (rms > SPREAD_FLOOR)
        log_step = np.log(np.arange(1, longest + 1, dtype=float))[None, :, None]  # (1, S, 1)
        log_rms = np.log(np.where(ok, rms, 1.0))
        n = ok.sum(axis=1)  # (U', D)
        x_mean, y_mean = _masked_sum(ok, log_step) / np.maximum(n, 1), _masked_sum(ok, log_rms) / np.maximum(n, 1)
        dx, dy = log_step - x_mean[:, None], log_rms - y_mean[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = _masked_sum(ok, dx * dy) / _masked_sum(ok, dx * dx)
        slope = np.where(n >= 2, np.clip(slope, 0.0, 1.0), 0.0)
        # Level for the clipped slope from the mean squared error (a log-space mean would be a
        # geometric mean, biased low).
        steps = np.exp(log_step)
        with np.errstate(invalid="ignore", divide="ignore"):
            level = np.sqrt(_masked_sum(ok, np.where(ok, rms, 0.0) ** 2 / steps ** (2 * slope[:, None])) / n)
        fits.a[present] = np.where(n > 0, level, SPREAD_FLOOR)
        fits.b[present] = slope
        fits.horizon[present] = [shape[1] for shape in shapes]
        fits.fitted[present] = finite.any(axis=(1, 2, 3))
        return fits

    def sigma(self, horizon: int) -> np.ndarray:
        """(H, U, D) error scale in context standard deviations."""
        steps = np.arange(1, horizon + 1, dtype=float)[:, None, None]
        sigma = self.a * steps**self.b
        return np.where(self.stationary[:, None], np.minimum(sigma, SATURATION), sigma)

    def weight(self, horizon: int) -> np.ndarray:
        """(H, U, 1) how much of the matched spread step h gets: 1, then linearly down to 0 (the model's own)."""
        steps = np.arange(1, horizon + 1, dtype=float)[:, None, None]
        matched, fade = MATCHED_SPANS * self.horizon[:, None], FADE_SPANS * self.horizon[:, None]
        return np.clip((matched + fade - steps) / fade, 0.0, 1.0)


def _masked_sum(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sums over axis 1 of ``values`` where ``mask`` (U, K, ...) holds, slice by slice in order: (U, ...).

    The order is fixed, so a unit's sum is the same alone and beside any others.
    """
    values = np.broadcast_to(values, mask.shape)
    total = np.zeros(mask.shape[:1] + mask.shape[2:])
    for step in range(mask.shape[1]):
        total = total + np.where(mask[:, step], values[:, step], 0.0)
    return total


def match_spreads(paths: np.ndarray, spreads: Spreads, context_std: np.ndarray) -> np.ndarray:
    """paths (P, H, U, D) in data scale -> the same paths, each unit's spread sigma(h) * context_std around the median.

    ``spreads`` fits the U units (those not ``fitted`` keep their paths as they are);
    ``context_std`` (U, D). Only on each unit's matched horizon (``Spreads.weight``); past it
    the paths are left bit for bit. Every operation is elementwise or a median over the
    paths, so a unit's result does not depend on the other units. Writes into ``paths``.
    """
    calibrated = np.nonzero(spreads.fitted)[0]
    if not len(calibrated):
        return paths
    horizon, dims = paths.shape[1], paths.shape[3]
    sigma = spreads.sigma(horizon)[:, calibrated, :dims]  # (H, C, D)
    weight = spreads.weight(horizon)[:, calibrated]  # (H, C, 1)
    std = context_std[calibrated]
    target = sigma * np.where(std > 0, std, 0.0)  # (H, C, D)
    chosen = paths[:, :, calibrated]  # (P, H, C, D)
    center = np.median(chosen, axis=0)
    deviation = chosen - center
    own = robust_spread(deviation)
    # Paths that all coincide (a constant dim) have no shape to scale: left as they are.
    factor = np.where(own > SPREAD_FLOOR * np.maximum(target, 1.0), target / np.maximum(own, SPREAD_FLOOR), 1.0)
    paths[:, :, calibrated] = np.where(weight > 0, center + deviation * (1.0 + weight * (factor - 1.0)), chosen)
    return paths


def robust_spread(deviation: np.ndarray) -> np.ndarray:
    """(H, ...) spread of deviations (P, H, ...) as a Gaussian's standard deviation with the same median |deviation|.

    The ensemble's tails are heavier than a Gaussian's: matching its standard deviation to
    sigma(h) left the central intervals too narrow (Track B, bundled weights: 80% coverage
    0.805 and median wQL 0.110, against 0.834 and 0.109 matched this way).
    """
    return MAD_TO_STD * np.median(np.abs(deviation), axis=0)


def start_sensitivity(encoding: BatchEncoding) -> np.ndarray:
    """(U, D) data-scale change of each unit's first forecast step per unit change of its start in model space.

    Finite differences through the encoding's own ``decode``, so scaling, Box-Cox and trend all count;
    one decode for every unit.
    """
    dims = encoding.mean.shape[1]
    starts = np.repeat(encoding.starts[None], dims + 1, axis=0)  # (dims + 1, U, N); row 1 + d: dim d moved
    starts[1:, :, :dims] += SENSITIVITY_STEP * np.eye(dims)[:, None, :]
    with np.errstate(all="ignore"):
        decoded = encoding.decode(starts[None])[:, 0]  # (dims + 1, U, D)
        return (np.diagonal(decoded[1:], axis1=0, axis2=2) - decoded[0]) / SENSITIVITY_STEP


def start_offsets(data_scale: np.ndarray, sensitivity: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(P, U, D) model-space offsets of the starts: ``normals`` (P, U, D) times the one-step error in model space.

    ``data_scale`` (U, D) is the one-step validation error sigma(1) times the context's standard
    deviation; ``sensitivity`` (U, D) the data-scale change of the first forecast step per unit
    change of the start in model space. Dims that do not move (constant) get no offset.
    """
    ok = np.isfinite(sensitivity) & (np.abs(sensitivity) > SPREAD_FLOOR)
    model_scale = np.where(ok, data_scale / np.where(ok, np.abs(sensitivity), 1.0), 0.0)
    return normals * model_scale


def perturbed_starts(
    x0: np.ndarray, encoding: BatchEncoding, spreads: Spreads, context_std: np.ndarray, entropy: int
) -> np.ndarray:
    """x0 (P*U, N) path-major starts of the encoding's U units -> each calibrated unit's paths perturbed.

    ``spreads`` fits the U units (those not ``fitted`` keep their paths at the observed start);
    ``context_std`` (U, D). The normals come from the counter-based streams of paths
    ``START_STREAMS + p`` of each unit (keyed by the seed and the unit's values, like its
    gating noise, but never one of its rollout paths' streams), so batching never changes
    them and path p gets the same offset whatever the number of paths.
    """
    if not spreads.fitted.any():
        return x0
    n_units, dims = len(encoding.keys), context_std.shape[1]
    n_paths = len(x0) // n_units
    one_step = np.where(spreads.fitted[:, None], spreads.sigma(1)[0, :, :dims], 0.0)  # (U, D)
    keys = stream_keys(entropy, list(encoding.keys), n_paths, first_path=START_STREAMS)
    normals = standard_normals(keys, 0, 1, dims).reshape(n_paths, n_units, dims)
    offsets = start_offsets(one_step * context_std, start_sensitivity(encoding), normals)  # (P, U, D)
    by_path = x0.reshape(n_paths, n_units, -1).copy()
    by_path[:, :, :dims] += offsets.astype(by_path.dtype)
    return by_path.reshape(x0.shape)

"""SeriesEncoding: one series on its way into the model's space and back.

Encode, per (T, D) series in data space: optional Box-Cox and power-law trend removal
per dim, per-dim standardization, then an embedding to the model's N dims, or, when
D > N, a split into D univariate units that are each embedded. The encoding keeps
every transform it applied, so ``decode`` inverts exactly those, in reverse order:
there is nothing to branch on later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..noise import content_key
from ..options import ForecastOptions
from .preprocessing import Scaler, TrendTransform, embed


@dataclass(frozen=True)
class Unit:
    """What one rollout unit forecasts: an embedded context (T', N) in model space."""

    frames: np.ndarray  # (T', N) float64, aligned to the end of the series
    start: np.ndarray  # (N,) the rollout's first observation
    key: int  # content key of the raw values this unit forecasts: seeds its random streams


@dataclass(frozen=True)
class SeriesEncoding:
    """The transforms of one series, and the rollout units they produced."""

    trends: tuple[TrendTransform, ...] | None  # per dim, when nonstationary
    scaler: Scaler
    constant: np.ndarray  # (D,) dims constant in data space: forecast as their last value
    last: np.ndarray  # (D,) last observation in data space
    units: tuple[Unit, ...]  # one, or D when the series is split into univariate units

    @classmethod
    def fit(
        cls, x: np.ndarray, options: ForecastOptions, model_dims: int, entropy: int, start: np.ndarray | None = None
    ) -> SeriesEncoding:
        """Encode x (T, D); ``start`` (k,) in data scale replaces the last frame as the rollout's first state."""
        dims = x.shape[1]
        trends = tuple(TrendTransform.fit(x[:, d]) for d in range(dims)) if options.nonstationary else None
        level = np.column_stack([t.transform(x[:, d]) for d, t in enumerate(trends)]) if trends else x
        scaler = Scaler.fit(level, options.standardize)
        scaled = scaler.transform(level)
        given = None if start is None else (start - scaler.mean[: len(start)]) / scaler.std[: len(start)]
        if dims > model_dims:
            pieces = [(scaled[:, [d]], x[:, [d]], None if given is None else given[[d]]) for d in range(dims)]
        else:
            pieces = [(scaled, x, given)]
        units = []
        for piece, raw, piece_start in pieces:
            # Keyed by the raw values the unit forecasts: a series (or a split-off dim) gets the
            # same draws alone, in any batch, at any position, in any process.
            key = content_key(raw)
            frames, _ = embed(piece, options.preprocessing, model_dims, np.random.default_rng([entropy, key, 0]))
            units.append(Unit(frames, _complete_start(frames, piece_start), key))
        return cls(trends, scaler, Scaler.fit(x).constant, x[-1], tuple(units))

    def decode(self, observed: np.ndarray) -> np.ndarray:
        """observed (H, P, units, N) in model space -> (P, H, D) in data space."""
        dims = len(self.scaler.mean)
        scaled = observed[..., 0] if len(self.units) > 1 else observed[:, :, 0, :dims]  # (H, P, D)
        values = self.scaler.inverse(scaled.astype(np.float64))
        if self.trends:
            values = np.stack([t.inverse(values[..., d]) for d, t in enumerate(self.trends)], axis=-1)
        values[..., self.constant] = self.last[self.constant]
        return values.transpose(1, 0, 2)


def _complete_start(frames: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    """The rollout's first observation: the last frame, or ``start`` completed from the nearest frame."""
    if start is None:
        return frames[-1]
    k = len(start)
    nearest = frames[np.argmin(((frames[:, :k] - start) ** 2).sum(axis=1))]
    return np.concatenate([start, nearest[k:]])

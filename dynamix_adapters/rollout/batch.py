"""RolloutBatch: the inputs of one rollout, in the model's space (no kernel imports here).

A ``RolloutBatch`` holds preprocessed contexts (U, T, N) for U units (series after
embedding), left-padded to a common T, the first valid frame of each, and B
trajectories, each tied to a unit, started from an observation x0 and driven by its
own noise stream: a 64-bit key of the counter-based generator in ``noise``.
Trajectories beyond U are extra Monte-Carlo sample paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RolloutBatch:
    """The inputs of one batched rollout, in the model's space."""

    context: np.ndarray  # (U, T, N) float32, left-padded
    valid_from: np.ndarray  # (U,) index of each unit's first real frame
    x0: np.ndarray  # (B, N) float32 initial observations
    unit: np.ndarray  # (B,) unit of each trajectory
    streams: np.ndarray  # (B,) uint64 noise stream key of each trajectory (noise.stream_keys)
    labels: tuple[str, ...]  # (U,) how errors name each unit

    def check(self, model_dims: int) -> None:
        """Raise a ValueError naming the first inconsistent input."""
        n = model_dims
        if np.ndim(self.context) != 3 or self.context.shape[2] != n or self.context.shape[1] < 2:
            raise ValueError(f"context must be (U, T >= 2, {n}), got shape {np.shape(self.context)}.")
        n_units, length = self.context.shape[:2]
        starts = np.asarray(self.valid_from)
        if starts.shape != (n_units,) or np.any(starts < 0) or np.any(starts > length - 2):
            raise ValueError(f"valid_from must hold {n_units} indices in [0, {length - 2}] (one key frame at least).")
        streams = np.asarray(self.streams)
        if np.shape(self.x0) != (len(self.unit), n) or streams.shape != (len(self.unit),):
            raise ValueError(f"x0 must be (B, {n}) and streams (B,) for B = {len(self.unit)} trajectories.")
        if streams.dtype != np.uint64:
            raise ValueError(f"streams must be uint64 keys (noise.stream_keys), got dtype {streams.dtype}.")
        if len(self.unit) and (np.min(self.unit) < 0 or np.max(self.unit) >= n_units):
            raise ValueError(f"unit indices must lie in [0, {n_units - 1}].")
        if len(self.labels) != n_units:
            raise ValueError(f"labels must name each of the {n_units} units.")

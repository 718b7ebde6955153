"""The rollout: roll many latent trajectories H steps through one DynaMix model.

- ``batch``: ``RolloutBatch``, the inputs in the model's space (imports no kernel);
- ``noise``: the counter-based gating noise every backend computes identically;
- ``dispatch``: ``rollout()`` (backend choice) and the divergence checks;
- one module per kernel: ``per_series`` (numba, one trajectory at a time), ``batched``
  (numba, 64 trajectories side by side), ``torch_rollout`` (torch on the CPU or a GPU).
"""

from .batch import RolloutBatch
from .dispatch import (
    BACKENDS,
    DivergenceError,
    DivergenceWarning,
    check_backend,
    check_divergence,
    diverged_steps,
    rollout,
    select_backend,
)
from .noise import content_key, seed_entropy, stream_keys

__all__ = [
    "BACKENDS",
    "DivergenceError",
    "DivergenceWarning",
    "RolloutBatch",
    "check_backend",
    "check_divergence",
    "content_key",
    "diverged_steps",
    "rollout",
    "seed_entropy",
    "select_backend",
    "stream_keys",
]

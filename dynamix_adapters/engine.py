"""The rollout: roll many latent trajectories H steps through one DynaMix model.

A ``RolloutBatch`` holds everything in the model's space: preprocessed contexts
(U, T, N) for U units (series after embedding), left-padded to a common T, the
first valid frame of each, and B trajectories, each tied to a unit, started from an
observation x0 and driven by its own noise stream. Trajectories beyond U are extra
Monte-Carlo sample paths.

Two backends compute the same recurrence: "numba" (``fast_rollout``, compiled, the
default on CPU; it splits trajectories over ``torch.get_num_threads()`` threads) and
"torch" (``DynaMix.step`` once per step: the reference, and the choice for models on
a GPU or where numba does not import).

Gating noise comes from one numpy Generator per trajectory (``noise``), so every
backend sees identical noise for the same seeds.

>>> import numpy as np
>>> from dynamix_adapters.model import Architecture, DynaMix
>>> net = DynaMix(Architecture(M=8, N=3, J=2, P=1))
>>> select_backend("auto", net)
'numba'
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .model import DynaMix
from .noise import noise_chunks

BACKENDS = ("numba", "batched", "torch")
# From this many trajectories on, the batched kernel beats the per-series one (bench_inference.py, one thread,
# H 1,000: at context 512 batched takes 0.90x numba's time for 20 trajectories and 0.75x for 24, 1.10x for 16;
# at context 2,000, 1.06x for 24 and 0.77x for 32). "auto" compares it with the sample paths per series, not
# with the batch size: the choice then never depends on the other series in a call, so a series' forecast stays
# bit-identical alone, in any batch, partition or worker (the backends agree only to float32 rounding).
BATCHED_MIN_PATHS = 24
# A rollout whose state leaves this many times its context's largest magnitude (in the
# model's standardized space) has diverged. With the official weights, forecasts of the
# published series stay within 1.1 times it, and 271 of 272 non-diverging random series
# within 4.7 times; a diverging state grows exponentially, so it crosses the bound within a
# few dozen steps of leaving the attractor, long before float32 overflows (docs/reliability.md).
EXPLOSION_FACTOR = 10.0
SCAN_STEPS = 4096

logger = logging.getLogger(__name__)


class DivergenceError(ValueError):
    """A rollout left the finite range; ``labels`` name the diverged series (or units)."""

    def __init__(self, message: str, labels: tuple[str, ...] = ()):
        super().__init__(message)
        self.labels = labels


class DivergenceWarning(UserWarning):
    """Some forecasts diverged and were returned as NaN (``on_divergence="nan"``)."""


def check_backend(backend: str) -> str:
    """Validate a backend name ("auto" or one of ``BACKENDS``) and return it."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose 'auto' or one of {', '.join(BACKENDS)}.")
    return backend


def select_backend(backend: str, model: DynaMix, paths_per_series: int = 1) -> str:
    """The backend a rollout uses.

    "auto" means torch for a model on a GPU or where numba does not import; on a CPU,
    "batched" for at least ``BATCHED_MIN_PATHS`` sample paths per series, else "numba".
    """
    if check_backend(backend) != "auto":
        return backend
    if model.device.type != "cpu":
        return "torch"
    problem = numba_import_error()
    if problem is None:
        return "batched" if paths_per_series >= BATCHED_MIN_PATHS else "numba"
    warnings.warn(f"numba does not import ({problem}); using the much slower torch rollout.", stacklevel=3)
    return "torch"


@functools.cache
def numba_import_error() -> str | None:
    """Why numba cannot be imported (e.g. a numpy it does not support yet), or None if it can."""
    try:
        import numba  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


@dataclass(frozen=True)
class RolloutBatch:
    """The inputs of one batched rollout, in the model's space."""

    context: np.ndarray  # (U, T, N) float32, left-padded
    valid_from: np.ndarray  # (U,) index of each unit's first real frame
    x0: np.ndarray  # (B, N) float32 initial observations
    unit: np.ndarray  # (B,) unit of each trajectory
    streams: list[np.random.Generator]  # (B,) noise stream of each trajectory
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
        if np.shape(self.x0) != (len(self.unit), n) or len(self.streams) != len(self.unit):
            raise ValueError(f"x0 must be (B, {n}) and streams of length B for B = {len(self.unit)} trajectories.")
        if len(self.unit) and (np.min(self.unit) < 0 or np.max(self.unit) >= n_units):
            raise ValueError(f"unit indices must lie in [0, {n_units - 1}].")
        if len(self.labels) != n_units:
            raise ValueError(f"labels must name each of the {n_units} units.")


def rollout(model: DynaMix, batch: RolloutBatch, horizon: int, backend: str = "auto") -> np.ndarray:
    """Return the observed dims of every trajectory for steps 1..H, shaped (H, B, N)."""
    batch.check(model.arch.N)
    chosen = select_backend(backend, model, len(batch.unit) // len(batch.context))
    if chosen == "numba":
        from .fast_rollout import rollout_compiled  # numba loads only when first used

        return rollout_compiled(model, batch, horizon)
    if chosen == "batched":
        from .batched_rollout import rollout_batched

        return rollout_batched(model, batch, horizon)
    return _rollout_torch(model, batch, horizon)


@torch.no_grad()
def _rollout_torch(model: DynaMix, batch: RolloutBatch, horizon: int) -> np.ndarray:
    n = model.arch.N
    device = model.device
    frames = torch.as_tensor(batch.context, dtype=torch.float32, device=device)  # (U, T, N)
    encodings = model.gating_network.encode(frames)  # (U, T-1, N), once per forecast
    positions = torch.arange(frames.shape[1] - 1, device=device)
    padding = positions[None, :] < torch.as_tensor(batch.valid_from, device=device)[:, None]  # (U, T-1)
    index = torch.as_tensor(batch.unit, dtype=torch.long, device=device)
    keys, encodings, padding = frames[index, :-1], encodings[index], padding[index]  # (B, T-1, ...)
    z = model.initial_state(torch.as_tensor(batch.x0, dtype=torch.float32, device=device))  # (B, M)
    experts = model.expert_stack()  # once per forecast, like the encodings
    out = np.empty((horizon, len(batch.unit), n), dtype=np.float32)
    step = 0
    for noise in noise_chunks(batch.streams, horizon, n):
        for eps in torch.from_numpy(noise).to(device):
            z = model.step(z, keys, encodings, eps, padding, experts=experts)
            out[step] = z[:, :n].cpu().numpy()
            step += 1
    return out


def diverged_steps(observed: np.ndarray, batch: RolloutBatch) -> np.ndarray:
    """(B,) first diverged step of each trajectory of observed (H, B, N), -1 where it never diverges."""
    limit = _divergence_limit(batch)
    first_bad = np.full(len(batch.unit), -1)
    for start in range(0, len(observed), SCAN_STEPS):  # in chunks: no (H, B, N) temporary
        peak = np.abs(observed[start : start + SCAN_STEPS]).max(axis=2)  # (k, B); NaN stays NaN
        bad = ~(peak <= limit)
        new = (first_bad < 0) & bad.any(axis=0)
        first_bad[new] = start + bad[:, new].argmax(axis=0)
    return first_bad


def _divergence_limit(batch: RolloutBatch) -> np.ndarray:
    """(B,) the bound a trajectory's state must stay within, in the model's standardized space."""
    radius = np.array(
        [np.abs(frames[start:]).max() for frames, start in zip(batch.context, batch.valid_from, strict=True)]
    )
    return EXPLOSION_FACTOR * np.maximum(np.maximum(radius[batch.unit], np.abs(batch.x0).max(axis=1)), 1.0)


def check_divergence(observed: np.ndarray, batch: RolloutBatch) -> None:
    """Raise a DivergenceError at the first non-finite or exploding step of any trajectory, naming its unit.

    observed (H, B, N) in model space. A trajectory has diverged when its state turns
    non-finite or exceeds ``EXPLOSION_FACTOR`` times the largest magnitude of its context
    or start (at least 1); from there DynaMix does not return to the attractor.
    """
    first_bad = diverged_steps(observed, batch)
    if np.all(first_bad < 0):
        return
    limit = _divergence_limit(batch)
    problems = {}
    for b in np.argsort(np.where(first_bad < 0, len(observed), first_bad), kind="stable"):
        step, label = first_bad[b], batch.labels[batch.unit[b]]
        if step < 0 or label in problems:
            continue
        values = observed[step, b]
        size = "non-finite" if not np.isfinite(values).all() else f"{np.abs(values).max():.3g} > bound {limit[b]:.3g}"
        problems[label] = f"{label} at step {step + 1} ({size})"
    message = (
        f"The forecast diverged: {'; '.join(problems.values())}. Its standardized state passed "
        f"{EXPLOSION_FACTOR:g} times its context's largest value and does not come back, so no forecast is returned. "
        "Usual causes: an outlier at the end of the context, a very short or untypical context, or "
        "standardize=False; remove the outlier, pass a longer context, or keep standardize=True."
    )
    # Logged as well: a backtest that catches the error (e.g. sktime's error_score=nan) keeps the trace.
    logger.warning(message)
    raise DivergenceError(message, labels=tuple(problems))

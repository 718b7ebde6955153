"""Dispatch: which kernel rolls a ``RolloutBatch`` out, and whether its trajectories diverged.

Three backends compute the same recurrence: "numba" (``per_series``, one trajectory
at a time, compiled), "batched" (``batched``, 64 trajectories side by side, compiled;
the faster one from ``BATCHED_MIN_TRAJECTORIES`` trajectories on) and "torch"
(``torch_rollout``: ``DynaMix.step`` once per step, the reference on a CPU; on a GPU
the whole rollout stays on the device, replayed as one CUDA graph). All draw their
gating noise from the same counter-based generator (``noise``).

The two compiled kernels compute every step with the same operations in the same
order (``arithmetic``), so a trajectory comes out bit for bit the same on either.
"auto" therefore picks, for a model on the CPU, "batched" for any call of at least
``BATCHED_MIN_TRAJECTORIES`` trajectories (the point forecasts of a panel as much as
sample paths), else "numba", and a series' forecast is still the same alone, in any
batch, partition or worker. Where this machine's BLAS sums the batched kernel's
products in another order (``batched.matches_per_series``, checked once), the kernels
agree only to float32 rounding, and "auto" compares the threshold with the trajectories
per series instead, which never depend on the batch. For a model on a GPU, "torch" once
the rollout holds at least ``GPU_MIN_WORK`` trajectory-frames, else the CPU kernels (a
small rollout runs faster on one CPU core than the GPU launches a step takes): there the
batch decides, and a series agrees alone and in a large batch to float32 rounding. Torch
where numba does not import.

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

import numpy as np

from ..model import DynaMix
from .batch import RolloutBatch

BACKENDS = ("numba", "batched", "torch")
# From this many trajectories on, "auto" takes the batched kernel: the crossover of bench_inference.py (one
# thread, H 1,000, after the kernels' shared arithmetic): at context 512 batched takes 1.64x the per-series
# kernel's time for 16 trajectories, 1.20x for 24, 0.87x for 32 and 0.56x for 48; at context 2,000, 1.08x for
# 32 and 0.69x for 48. The kernels agree bit for bit, so the threshold only decides speed.
BATCHED_MIN_TRAJECTORIES = 32
# A model on a GPU rolls out on the device from this many trajectories x context frames on; below, one CPU core
# is faster than the ~10 kernel launches a step takes there (issue 21, on an H200: a single series at context
# 2,000 ran 0.09 s on the numba kernel and 4.5 s step by step on the GPU; 256 series at context 512 ran 0.58 s
# there, about twice the batched kernel's time on one core). An estimate until benchmarks/bench_gpu.py's
# crossover scan has run on a GPU.
GPU_MIN_WORK = 256 * 512
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


def select_backend(backend: str, model: DynaMix, paths_per_unit: int = 1, work: int = 0, trajectories: int = 0) -> str:
    """The backend a rollout of ``trajectories`` uses; ``work`` is trajectories times context frames (for a GPU)."""
    if check_backend(backend) != "auto":
        return backend
    problem = numba_import_error()
    if problem is not None:
        warnings.warn(f"numba does not import ({problem}); using the much slower torch rollout.", stacklevel=3)
        return "torch"
    if model.device.type != "cpu" and work >= GPU_MIN_WORK:
        return "torch"
    if paths_per_unit >= BATCHED_MIN_TRAJECTORIES:
        return "batched"
    if trajectories >= BATCHED_MIN_TRAJECTORIES and compiled_kernels_match(model):
        return "batched"
    return "numba"


def compiled_kernels_match(model: DynaMix) -> bool:
    """Whether "numba" and "batched" give bit-identical rollouts of this model on this machine."""
    from .batched import matches_per_series  # imports numba: only where a compiled kernel is about to run

    return matches_per_series(model.arch.N, model.arch.J, model.arch.M)


@functools.cache
def numba_import_error() -> str | None:
    """Why numba cannot be imported (e.g. a numpy it does not support yet), or None if it can."""
    try:
        import numba  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


def rollout(
    model: DynaMix, batch: RolloutBatch, horizon: int, backend: str = "auto", paths_per_series: int | None = None
) -> np.ndarray:
    """Return the observed dims of every trajectory for steps 1..H, shaped (H, B, N).

    ``paths_per_series``: the trajectories this rollout carries for each of the caller's
    series (default: per unit), e.g. every candidate and window of in-context validation;
    "auto" compares it with ``BATCHED_MIN_TRAJECTORIES`` where the compiled kernels do not
    match bit for bit (``select_backend``). It must not depend on the batch.
    """
    batch.check(model.arch.N)
    work = len(batch.unit) * batch.context.shape[1]
    per_series = len(batch.unit) // len(batch.context) if paths_per_series is None else paths_per_series
    chosen = select_backend(backend, model, per_series, work, len(batch.unit))
    # The kernels import on first use: numba loads only when a compiled kernel runs.
    if chosen == "numba":
        from .per_series import rollout_per_series

        return rollout_per_series(model, batch, horizon)
    if chosen == "batched":
        from .batched import rollout_batched

        return rollout_batched(model, batch, horizon)
    from .torch_rollout import rollout_torch

    return rollout_torch(model, batch, horizon)


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
    context, valid_from = np.asarray(batch.context), np.asarray(batch.valid_from)
    radius = np.empty(len(context), dtype=context.dtype)  # (U,) over each unit's own frames
    for first in np.unique(valid_from).tolist():  # a handful of distinct first frames; no (U, T, N) temporary
        rows = np.nonzero(valid_from == first)[0]
        frames = context[:, first:] if len(rows) == len(context) else context[rows, first:]
        radius[rows] = np.maximum(frames.max(axis=(1, 2)), -frames.min(axis=(1, 2)))
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

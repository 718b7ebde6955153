"""The rollout: roll many latent trajectories H steps through one DynaMix model.

Inputs live in the model's space: preprocessed contexts (U, T, N) for U units
(series after embedding), the first valid frame of each (contexts are left-padded
to a common T), and B trajectories, each tied to a unit and started from an
observation x0. Trajectories beyond U are extra Monte-Carlo sample paths.

Two backends compute the same recurrence: "numba" (``fast_rollout``, compiled, the
default on CPU; it splits trajectories over ``torch.get_num_threads()`` threads) and
"torch" (``DynaMix.step`` once per step: the reference, and the choice for models on
a GPU or where numba does not import).

Gating noise comes from one numpy Generator per trajectory, drawn in chunks of
steps. A trajectory's noise depends only on its own stream, never on the batch it
runs in, and drawing k then l steps yields the same numbers as one k + l draw, so
every backend sees identical noise for the same seeds.

>>> import numpy as np
>>> from dynamix_adapters.model import Architecture, DynaMix
>>> net = DynaMix(Architecture(M=8, N=3, J=2, P=1))
>>> select_backend("auto", net)
'numba'
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from .model import DynaMix

NOISE_CHUNK_STEPS = 1024
BACKENDS = ("numba", "torch")


class DivergenceError(ValueError):
    """A rollout left the finite range."""


def noise_blocks(streams: list[np.random.Generator], horizon: int, dims: int):
    """Yield standard normal noise blocks (B, k, N) covering ``horizon`` steps; stream b fills row b in place."""
    for start in range(0, horizon, NOISE_CHUNK_STEPS):
        block = np.empty((len(streams), min(NOISE_CHUNK_STEPS, horizon - start), dims), dtype=np.float32)
        for stream, rows in zip(streams, block, strict=True):
            stream.standard_normal(dtype=np.float32, out=rows)
        yield block


def noise_chunks(streams: list[np.random.Generator], horizon: int, dims: int):
    """The same noise as ``noise_blocks``, step-major: blocks (k, B, N)."""
    for block in noise_blocks(streams, horizon, dims):
        yield block.transpose(1, 0, 2)


def check_backend(backend: str) -> str:
    """Validate a backend name ("auto" or one of ``BACKENDS``) and return it."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose 'auto' or one of {', '.join(BACKENDS)}.")
    return backend


def select_backend(backend: str, model: DynaMix) -> str:
    """The backend a rollout uses: "auto" means numba for a CPU model (if numba imports), else torch."""
    if check_backend(backend) != "auto":
        return backend
    if model.B.device.type != "cpu":
        return "torch"
    problem = numba_import_error()
    if problem is None:
        return "numba"
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


def rollout(
    model: DynaMix,
    context: np.ndarray,  # (U, T, N) float32, left-padded
    valid_from: np.ndarray,  # (U,) index of each unit's first real frame
    x0: np.ndarray,  # (B, N) initial observations
    unit: np.ndarray,  # (B,) unit of each trajectory
    horizon: int,
    streams: list[np.random.Generator],  # (B,) noise stream of each trajectory
    backend: str = "auto",
) -> np.ndarray:
    """Return the observed dims of every trajectory for steps 1..H, shaped (H, B, N)."""
    _check_rollout_inputs(model, context, valid_from, x0, unit, streams)
    if select_backend(backend, model) == "numba":
        from .fast_rollout import rollout_compiled  # numba loads only when first used

        return rollout_compiled(model, context, valid_from, x0, unit, horizon, streams)
    return _rollout_torch(model, context, valid_from, x0, unit, horizon, streams)


def _check_rollout_inputs(model, context, valid_from, x0, unit, streams) -> None:
    n = model.arch.N
    if np.ndim(context) != 3 or context.shape[2] != n or context.shape[1] < 2:
        raise ValueError(f"context must be (U, T >= 2, {n}), got shape {np.shape(context)}.")
    n_units, length = context.shape[:2]
    starts = np.asarray(valid_from)
    if starts.shape != (n_units,) or np.any(starts < 0) or np.any(starts > length - 2):
        raise ValueError(f"valid_from must hold {n_units} indices in [0, {length - 2}] (one key frame at least).")
    if np.shape(x0) != (len(unit), n) or len(streams) != len(unit):
        raise ValueError(f"x0 must be (B, {n}) and streams of length B for B = {len(unit)} trajectories.")
    if len(unit) and (np.min(unit) < 0 or np.max(unit) >= n_units):
        raise ValueError(f"unit indices must lie in [0, {n_units - 1}].")


@torch.no_grad()
def _rollout_torch(model, context, valid_from, x0, unit, horizon, streams) -> np.ndarray:
    n = model.arch.N
    device = model.B.device
    frames = torch.as_tensor(context, dtype=torch.float32, device=device)  # (U, T, N)
    encodings = model.gating_network.encode(frames)  # (U, T-1, N), once per forecast
    positions = torch.arange(frames.shape[1] - 1, device=device)
    padding = positions[None, :] < torch.as_tensor(valid_from, device=device)[:, None]  # (U, T-1)
    index = torch.as_tensor(unit, dtype=torch.long, device=device)
    keys, encodings, padding = frames[index, :-1], encodings[index], padding[index]  # (B, T-1, ...)
    z = model.initial_state(torch.as_tensor(x0, dtype=torch.float32, device=device))  # (B, M)
    experts = model.expert_stack()  # once per forecast, like the encodings
    out = np.empty((horizon, len(unit), n), dtype=np.float32)
    step = 0
    for noise in noise_chunks(streams, horizon, n):
        for eps in torch.from_numpy(noise).to(device):
            z = model.step(z, keys, encodings, eps, padding, experts=experts)
            out[step] = z[:, :n].cpu().numpy()
            step += 1
    return out

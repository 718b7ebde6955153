"""The rollout: roll many latent trajectories H steps through one DynaMix model.

Inputs live in the model's space: preprocessed contexts (U, T, N) for U units
(series after embedding), the first valid frame of each (contexts are left-padded
to a common T), and B trajectories, each tied to a unit and started from an
observation x0. Trajectories beyond U are extra Monte-Carlo sample paths.

Gating noise comes from one numpy Generator per trajectory, drawn in chunks of
steps. A trajectory's noise depends only on its own stream, never on the batch it
runs in, and drawing k then l steps yields the same numbers as one k + l draw, so
every backend sees identical noise for the same seeds.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import DynaMix

NOISE_CHUNK_STEPS = 1024
BACKENDS = ("torch",)


class DivergenceError(ValueError):
    """A rollout left the finite range."""


def noise_chunks(streams: list[np.random.Generator], horizon: int, dims: int):
    """Yield standard normal noise blocks (k, B, N) covering ``horizon`` steps, one stream per trajectory."""
    for start in range(0, horizon, NOISE_CHUNK_STEPS):
        steps = min(NOISE_CHUNK_STEPS, horizon - start)
        block = np.empty((steps, len(streams), dims), dtype=np.float32)
        for b, stream in enumerate(streams):
            block[:, b, :] = stream.standard_normal((steps, dims), dtype=np.float32)
        yield block


def check_backend(backend: str) -> str:
    if backend == "auto":
        return BACKENDS[-1]
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose 'auto' or one of {', '.join(BACKENDS)}.")
    return backend


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
    check_backend(backend)
    return _rollout_torch(model, context, valid_from, x0, unit, horizon, streams)


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
    out = np.empty((horizon, len(unit), n), dtype=np.float32)
    step = 0
    for noise in noise_chunks(streams, horizon, n):
        for eps in torch.from_numpy(noise).to(device):
            z = model.step(z, keys, encodings, eps, padding)
            out[step] = z[:, :n].cpu().numpy()
            step += 1
    return out

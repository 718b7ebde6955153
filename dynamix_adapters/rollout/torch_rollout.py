"""The torch rollout: ``DynaMix.step`` once per step, on the model's device (CPU or GPU).

On the CPU it is the reference the compiled kernels are tested against. On a GPU the
whole rollout stays on the device: the contexts, their encodings and the states go
there once, the noise is drawn there (``noise.standard_normals_torch``, the numbers
every backend draws), every step writes into one (H, B, N) device tensor, and only
the finished forecast comes back. The steps are captured as one CUDA graph of
``GRAPH_STEPS`` steps and replayed: a step's dozen small kernels then cost no launch
latency from Python, which otherwise dominates at any batch size a GPU is used for.

>>> import numpy as np
>>> from dynamix_adapters.model import Architecture, DynaMix
>>> from dynamix_adapters.rollout import RolloutBatch, stream_keys
>>> net = DynaMix(Architecture(M=8, N=3, J=2, P=1))
>>> context = np.random.default_rng(0).standard_normal((1, 50, 3)).astype(np.float32)
>>> batch = RolloutBatch(context, np.array([0]), context[:, -1], np.array([0]), stream_keys(1, [7], 1), ("x",))
>>> rollout_torch(net, batch, 20).shape
(20, 1, 3)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model import DynaMix
from .batch import RolloutBatch
from .noise import NOISE_CHUNK_STEPS, key_words, standard_normals_torch

# Steps per captured CUDA graph: long enough that replay overhead vanishes, short enough to capture quickly.
GRAPH_STEPS = 64


@dataclass
class _DeviceRollout:
    """Everything one rollout needs on the model's device; ``z`` (B, M) advances in place."""

    model: DynaMix
    keys: torch.Tensor  # (B, T-1, N) context frames each trajectory attends to
    encodings: torch.Tensor  # (B, T-1, N)
    padding: torch.Tensor  # (B, T-1) True where a frame is left padding
    experts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # A (J, M), W (J, M, M), h (J, M)
    words: torch.Tensor  # (B, 2) int64 noise key words
    z: torch.Tensor  # (B, M)
    out: torch.Tensor  # (H, B, N)

    @classmethod
    def of(cls, model: DynaMix, batch: RolloutBatch, horizon: int) -> _DeviceRollout:
        device = model.device
        frames = torch.as_tensor(batch.context, dtype=torch.float32, device=device)  # (U, T, N)
        encodings = model.gating_network.encode(frames)  # (U, T-1, N), once per forecast
        positions = torch.arange(frames.shape[1] - 1, device=device)
        padding = positions[None, :] < torch.as_tensor(batch.valid_from, device=device)[:, None]  # (U, T-1)
        index = torch.as_tensor(batch.unit, dtype=torch.long, device=device)
        z = model.initial_state(torch.as_tensor(batch.x0, dtype=torch.float32, device=device))  # (B, M)
        return cls(
            model=model,
            keys=frames[index, :-1],
            encodings=encodings[index],
            padding=padding[index],
            experts=model.expert_stack(),
            words=torch.as_tensor(key_words(batch.streams), device=device),
            z=z,
            out=torch.empty((horizon, len(batch.unit), model.arch.N), dtype=torch.float32, device=device),
        )

    def advance(self, noise: torch.Tensor) -> torch.Tensor:
        """One step driven by noise (B, N); returns the new observed dims (B, N), a view of ``z``."""
        self.z.copy_(self.model.step(self.z, self.keys, self.encodings, noise, self.padding, experts=self.experts))
        return self.z[:, : self.model.arch.N]


@torch.no_grad()
def rollout_torch(model: DynaMix, batch: RolloutBatch, horizon: int, cuda_graph: bool = True) -> np.ndarray:
    """Observed dims (H, B, N) float32; call it through ``dispatch.rollout(..., backend="torch")``.

    ``cuda_graph=False`` runs every step eagerly on a GPU too (``benchmarks/bench_gpu.py`` times both).
    """
    state = _DeviceRollout.of(model, batch, horizon)
    n = model.arch.N
    done = 0
    if cuda_graph and model.device.type == "cuda" and horizon >= GRAPH_STEPS:
        done = _replay_graph(state, horizon)
    for start in range(done, horizon, NOISE_CHUNK_STEPS):
        steps = min(NOISE_CHUNK_STEPS, horizon - start)
        noise = standard_normals_torch(state.words, start, steps, n)  # (k, B, N)
        for t in range(steps):
            state.out[start + t] = state.advance(noise[t])  # a device-to-device copy: no host value per step
    return state.out.cpu().numpy()


def _replay_graph(state: _DeviceRollout, horizon: int) -> int:
    """Run the first whole multiples of ``GRAPH_STEPS`` steps as replays of one captured graph; return the steps done.

    The graph reads the step from a device counter, so every replay draws its own noise
    and writes its own rows of ``out``; it computes exactly what the eager steps compute.
    """
    n = state.model.arch.N
    step = torch.zeros((), dtype=torch.int64, device=state.z.device)

    def steps() -> None:
        for _ in range(GRAPH_STEPS):
            observed = state.advance(standard_normals_torch(state.words, step, 1, n)[0])
            state.out.index_copy_(0, step.view(1), observed[None])
            step.add_(1)

    start = state.z.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
        steps()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        steps()
    state.z.copy_(start)
    step.zero_()
    replays = horizon // GRAPH_STEPS
    for _ in range(replays):
        graph.replay()
    return replays * GRAPH_STEPS

"""Compiled CPU rollout: the recurrence of ``DynaMix.step`` in numba, with no Python per step.

Everything that depends only on a unit's context is prepared once: its valid key
frames and their conv encodings, packed back to back for all units (padding is
dropped, not masked), dims first so that the distance scan runs over contiguous
memory. Trajectories index their unit's frames; nothing is copied per trajectory.

The kernel advances one trajectory at a time through a block of noise, keeping its
state and its unit's frames in cache. Arithmetic is float32 as in the torch model,
except the attention sums, which accumulate in float64. The attention exponentials
use a branch-free exp (range reduction plus a polynomial accurate to float32
resolution) so that the scan over the context vectorizes; weights below exp(-87)
count as zero, which provably changes the attention by less than float32
resolution. Non-finite states propagate as NaN/inf, as in the torch path.

Compiled code is cached on disk (in ``__pycache__`` next to this module, or in
numba's user cache directory when the package is read-only); with no writable
location it is compiled once per process.

>>> import numpy as np
>>> from dynamix_adapters.model import Architecture, DynaMix
>>> from dynamix_adapters.rollout import RolloutBatch, rollout, stream_keys
>>> net = DynaMix(Architecture(M=8, N=3, J=2, P=1))
>>> context = np.random.default_rng(0).standard_normal((1, 50, 3)).astype(np.float32)
>>> batch = RolloutBatch(context, np.array([0]), context[:, -1], np.array([0]), stream_keys(1, [7], 1), ("x",))
>>> rollout(net, batch, 20, backend="numba").shape
(20, 1, 3)
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, fields
from functools import partial

import numba
import numpy as np
import torch

from ..model import DynaMix
from .batch import RolloutBatch
from .noise import NOISE_CHUNK_STEPS, standard_normals

# Attention weights exp(x) with x < -87 (below 2**-125) are set to zero. The largest weight is 1,
# so even T such weights sum to less than T * 2**-125, far below float32 resolution of the sum.
NEGLIGIBLE_EXPONENT = np.float32(-87.0)
LOG2_E = np.float32(1 / math.log(2))
LN2 = np.float32(math.log(2))
# nnan/ninf are left out on purpose: diverging trajectories must stay NaN/inf, as in torch.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


def _compile(func, fastmath=FASTMATH):
    options = {"nogil": True, "fastmath": fastmath, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:  # numba found no writable cache directory
        return numba.njit(**options)(func)


@dataclass(frozen=True)
class Weights:
    """The model's parameters as contiguous float32 arrays, laid out for the kernel."""

    D: np.ndarray  # (N, M)
    sigma: np.ndarray  # (N,)
    tau1: np.float32
    W1: np.ndarray  # (J, N + M)
    b1: np.ndarray  # (J,)
    W2: np.ndarray  # (J, J)
    b2: np.ndarray  # (J,)
    tau2: np.float32
    A: np.ndarray  # (J, M)
    W_columns: np.ndarray  # (M, J*M): column k of every expert's W, so W phi is a row sweep
    h: np.ndarray  # (J, M)
    relu_from: int  # first latent index that goes through the ReLU (M - P)

    @classmethod
    def of(cls, model: DynaMix) -> Weights:
        gating = model.gating_network

        def array(tensor: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)

        a, w, h = model.expert_stack()
        j, m = w.shape[0], w.shape[1]
        return cls(
            D=array(gating.D),
            sigma=array(gating.sigma),
            tau1=np.float32(gating.softmax_temp1.detach().abs().item()),
            W1=array(gating.mlp_layer1.weight),
            b1=array(gating.mlp_layer1.bias),
            W2=array(gating.mlp_layer2.weight),
            b2=array(gating.mlp_layer2.bias),
            tau2=np.float32(gating.softmax_temp2.detach().abs().item()),
            A=array(a),
            W_columns=array(w.permute(2, 0, 1).reshape(m, j * m)),
            h=array(h),
            relu_from=model.arch.M - model.arch.P,
        )

    def arrays(self) -> tuple:
        """The fields in declaration order, which is the order ``_advance`` takes them in."""
        return tuple(getattr(self, field.name) for field in fields(self))


@dataclass(frozen=True)
class PackedContext:
    """The valid key frames and encodings of all units, back to back, dims first."""

    keys: np.ndarray  # (N, F) frames c_1..c_{T-1} of each unit, padding dropped
    encodings: np.ndarray  # (N, F) conv encodings of the same frames
    offsets: np.ndarray  # (U + 1,) unit u owns columns offsets[u]:offsets[u + 1]

    @classmethod
    def of(cls, model: DynaMix, context: np.ndarray, valid_from: np.ndarray) -> PackedContext:
        conv = model.gating_network.conv
        kernel = conv.weight.detach().cpu().numpy().astype(np.float32)  # (out, in, 2)
        bias = conv.bias.detach().cpu().numpy().astype(np.float32)
        frames = np.ascontiguousarray(context, dtype=np.float32)
        starts = np.asarray(valid_from, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(frames.shape[1] - 1 - starts)]).astype(np.int64)
        keys = np.empty((frames.shape[2], offsets[-1]), dtype=np.float32)
        encodings = np.empty_like(keys)
        _pack(frames, starts, offsets, kernel, bias, keys, encodings)
        return cls(keys=keys, encodings=encodings, offsets=offsets)

    def arrays(self) -> tuple:
        return self.keys, self.encodings, self.offsets


def _pack(frames, starts, offsets, kernel, bias, keys, encodings):
    """Each unit's valid frames c_1..c_{T-1} into keys (N, F), and e_k = b + sum_i K_0 c_k + K_1 c_{k+1}.

    Frame by frame in a fixed order, so a frame's encoding never depends on the other
    units (a batched torch conv may round differently for different batch shapes).
    """
    dims, last_key = frames.shape[2], frames.shape[1] - 1
    for u in range(len(starts)):
        column = offsets[u]
        for t in range(starts[u], last_key):
            for i in range(dims):
                keys[i, column] = frames[u, t, i]
            for o in range(dims):
                acc = bias[o]
                for i in range(dims):
                    acc += kernel[o, i, 0] * frames[u, t, i] + kernel[o, i, 1] * frames[u, t + 1, i]
                encodings[o, column] = acc
            column += 1


_pack = _compile(_pack, fastmath=False)  # every frame's encoding is the same IEEE sum, in the same order


def rollout_per_series(model: DynaMix, batch: RolloutBatch, horizon: int, threads: int | None = None) -> np.ndarray:
    """The compiled counterpart of ``torch_rollout.rollout_torch``: observed dims (H, B, N), float32.

    Call it through ``dispatch.rollout(model, batch, horizon, backend="numba")``, which validates the batch.

    Trajectories are independent, so ``threads`` (default ``torch.get_num_threads()``)
    split them into contiguous groups; results do not depend on the split.
    """
    weights = Weights.of(model)
    packed = PackedContext.of(model, batch.context, batch.valid_from)
    state = _initial_states(np.asarray(batch.x0, dtype=np.float32), model.B.detach().cpu().numpy().astype(np.float32))
    unit = np.ascontiguousarray(batch.unit, dtype=np.int64)
    out = np.empty((horizon, len(unit), model.arch.N), dtype=np.float32)

    def advance(noise, start, first, stop):
        _advance(state, noise, out, start, first, stop, unit, *packed.arrays(), *weights.arrays())

    advance_in_groups(batch.streams, horizon, model.arch.N, len(unit), threads, advance)
    return out


def advance_in_groups(streams: np.ndarray, horizon: int, dims: int, items: int, threads: int | None, advance) -> None:
    """Call ``advance(noise, out_start, first, stop)`` for every noise block (B, k, N) and group of items.

    The noise of trajectory b comes from its stream key ``streams[b]`` (``noise.standard_normals``).

    The ``items`` (trajectories, or tiles of them) are independent, so they split into
    contiguous groups over ``threads`` threads (default ``torch.get_num_threads()``); the
    compiled kernels release the GIL, and no result depends on the split.
    """
    groups = max(1, min(threads or torch.get_num_threads(), items))
    bounds = np.linspace(0, items, groups + 1).astype(np.int64)
    # One group runs on the calling thread: starting a pool's thread costs more than a short rollout.
    with ThreadPoolExecutor(groups) if groups > 1 else nullcontext() as pool:
        for start in range(0, horizon, NOISE_CHUNK_STEPS):
            noise = standard_normals(streams, start, min(NOISE_CHUNK_STEPS, horizon - start), dims)  # (B, k, N)
            run = partial(_advance_group, advance, noise, start, bounds)
            if pool is None:
                run(0)
            else:
                list(pool.map(run, range(groups)))


def _advance_group(advance, noise, start, bounds, group) -> None:
    advance(noise, start, bounds[group], bounds[group + 1])


def _initial_states(x0: np.ndarray, read_in: np.ndarray) -> np.ndarray:
    """z0 = x0 B, then z0[:, :N] = x0 (as ``DynaMix.initial_state``), each row summed in a fixed order."""
    state = np.zeros((len(x0), read_in.shape[1]), dtype=np.float32)
    for i in range(x0.shape[1]):
        state += x0[:, i : i + 1] * read_in[i]
    state[:, : x0.shape[1]] = x0
    return state


@_compile
def _advance(
    state, noise, out, out_start, b_start, b_stop, unit, keys, encodings, offsets,
    D, sigma, tau1, W1, b1, W2, b2, tau2, A, W_columns, h, relu_from,
):  # fmt: skip
    """Advance trajectories b_start..b_stop-1 through one noise block (B, k, N), writing out[out_start:]."""
    n_obs, m = D.shape
    j_count = A.shape[0]
    longest = 0
    for u in range(len(offsets) - 1):
        longest = max(longest, offsets[u + 1] - offsets[u])
    scores = np.empty(longest, dtype=np.float32)
    scale_bits = np.empty(longest, dtype=np.int32)
    query = np.empty(n_obs, dtype=np.float32)
    embedding = np.empty(n_obs, dtype=np.float32)
    hidden = np.empty(j_count, dtype=np.float32)
    gate = np.empty(j_count, dtype=np.float32)
    phi = np.empty(m, dtype=np.float32)
    mixed = np.empty(j_count * m, dtype=np.float32)
    for b in range(b_start, b_stop):
        lo, hi = offsets[unit[b]], offsets[unit[b] + 1]
        z = state[b]
        for t in range(noise.shape[1]):
            finite = True
            for i in range(n_obs):
                acc = np.float32(0.0)
                for k in range(m):
                    acc += D[i, k] * z[k]
                query[i] = acc + sigma[i] * noise[b, t, i]
                finite = finite and math.isfinite(query[i])
            if finite:
                _attend(query, keys, encodings, lo, hi, tau1, scores, scale_bits, embedding)
            else:
                for i in range(n_obs):
                    embedding[i] = np.nan
            _expert_weights(embedding, z, W1, b1, W2, b2, tau2, hidden, gate)
            _mix_experts(z, gate, A, W_columns, h, relu_from, phi, mixed)
            for i in range(n_obs):
                out[out_start + t, b, i] = z[i]


@_compile
def _attend(query, keys, encodings, lo, hi, tau1, score_buffer, bits_buffer, embedding):
    """embedding = sum_k a_k e_k with a = softmax_k(-|c_k - query|_1 / tau1) over the frames lo..hi-1."""
    # Zero-based views: indexing with lo + k would make numba check for negative indices and not vectorize.
    frames = hi - lo
    scores, bits = score_buffer[:frames], bits_buffer[:frames]
    for k in range(frames):
        scores[k] = 0.0
    for i in range(keys.shape[0]):
        qi, row = query[i], keys[i, lo:hi]
        for k in range(frames):
            scores[k] += abs(row[k] - qi)
    best = np.float32(-np.inf)
    for k in range(frames):
        scores[k] = -scores[k] / tau1
        best = max(best, scores[k])
    # exp(x) = 2**m * exp(r) with x = m ln 2 + r, |r| <= ln(2) / 2: branch-free, so the loop vectorizes.
    # The degree-7 Taylor polynomial of exp(r) is exact to 6e-9 relative there; with float32 rounding the
    # result is within 3e-7 relative of exp(x) on [-87, 0] (numpy's float32 exp: 2e-7).
    for k in range(frames):
        x = scores[k] - best
        kept = x >= NEGLIGIBLE_EXPONENT
        x = max(x, NEGLIGIBLE_EXPONENT)
        octaves = np.floor(x * LOG2_E + np.float32(0.5))
        r = x - octaves * LN2
        p = np.float32(1.0 / 5040.0)
        p = p * r + np.float32(1.0 / 720.0)
        p = p * r + np.float32(1.0 / 120.0)
        p = p * r + np.float32(1.0 / 24.0)
        p = p * r + np.float32(1.0 / 6.0)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        p = p * r + np.float32(1.0)
        bits[k] = (np.int32(octaves) + np.int32(127)) << np.int32(23)  # float32 bit pattern of 2**octaves
        scores[k] = p if kept else np.float32(0.0)
    scales = bits.view(np.float32)
    total = 0.0
    for k in range(frames):
        scores[k] *= scales[k]
        total += scores[k]
    for i in range(keys.shape[0]):
        row, weighted = encodings[i, lo:hi], 0.0
        for k in range(frames):
            weighted += scores[k] * row[k]
        embedding[i] = weighted / total


@_compile
def _expert_weights(embedding, z, W1, b1, W2, b2, tau2, hidden, gate):
    """gate = softmax(-(W2 relu(W1 [embedding; z] + b1) + b2) / tau2)."""
    n_obs = embedding.shape[0]
    for j in range(hidden.shape[0]):
        acc = b1[j]
        for i in range(n_obs):
            acc += W1[j, i] * embedding[i]
        for k in range(z.shape[0]):
            acc += W1[j, n_obs + k] * z[k]
        hidden[j] = np.float32(0.0) if acc < 0 else acc  # NaN passes through, as in torch.relu
    top = np.float32(-np.inf)
    for j in range(gate.shape[0]):
        acc = b2[j]
        for i in range(hidden.shape[0]):
            acc += W2[j, i] * hidden[i]
        gate[j] = -acc / tau2
        top = max(top, gate[j])
    norm = np.float32(0.0)
    for j in range(gate.shape[0]):
        gate[j] = math.exp(gate[j] - top)
        norm += gate[j]
    for j in range(gate.shape[0]):
        gate[j] /= norm


@_compile
def _mix_experts(z, gate, A, W_columns, h, relu_from, phi, mixed):
    """z <- sum_j gate_j (A_j * z + W_j phi(z) + h_j), all W_j phi(z) in one sweep over W's columns."""
    m = z.shape[0]
    for k in range(m):
        phi[k] = np.float32(0.0) if k >= relu_from and z[k] < 0 else z[k]
    for r in range(mixed.shape[0]):
        mixed[r] = 0.0
    for k in range(m):
        pk = phi[k]
        for r in range(mixed.shape[0]):
            mixed[r] += W_columns[k, r] * pk
    for j in range(gate.shape[0]):
        g = gate[j]
        for k in range(m):
            mixed[j * m + k] = g * (A[j, k] * z[k] + mixed[j * m + k] + h[j, k])
    for k in range(m):
        acc = np.float32(0.0)
        for j in range(gate.shape[0]):
            acc += mixed[j * m + k]
        z[k] = acc

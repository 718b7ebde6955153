"""Compiled CPU rollout: the recurrence of ``DynaMix.step`` in numba, one trajectory at a time.

Everything that depends only on a unit's context is prepared once: its valid key
frames and their conv encodings, dims first, each unit padded to whole blocks of
``SUM_BLOCK`` frames (``PackedContext`` with ``block``), so that the attention's
partial sums run as the vector axis. Trajectories index their unit's frames; nothing is
copied per trajectory.

Each step is the batched kernel's step for one lane, operation for operation
(``arithmetic``): a trajectory's forecast is bit for bit the same on this kernel and on
``batched``, so "auto" may take whichever is faster for a call. The products with the
weights sweep the inner index in ascending order with the outputs as the vector axis,
the attention's scores, maximum and weights are elementwise over frames, and its sums
are float32 block sums over consecutive frames, added in float64. Non-finite states
propagate as NaN, as in torch.

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

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import torch

from ..model import DynaMix
from .arithmetic import SUM_BLOCK, compile_kernel, exp_below_zero
from .batch import RolloutBatch
from .noise import NOISE_CHUNK_STEPS, standard_normals


@dataclass(frozen=True)
class Weights:
    """The model's parameters as contiguous float32 arrays, laid out for the kernels."""

    D: np.ndarray  # (N, M)
    sigma: np.ndarray  # (N,)
    neg_inv_tau1: np.float32  # -1 / |tau1|: the attention scores are distances times it
    W1: np.ndarray  # (J, N + M)
    b1: np.ndarray  # (J,)
    W2: np.ndarray  # (J, J)
    b2: np.ndarray  # (J,)
    neg_inv_tau2: np.float32  # -1 / |tau2|
    A: np.ndarray  # (J, M)
    W_columns: np.ndarray  # (M, J*M): column k of every expert's W, so W phi is a sweep over k
    h: np.ndarray  # (J, M)
    relu_from: int  # first latent index that goes through the ReLU (M - P)

    @classmethod
    def of(cls, model: DynaMix) -> Weights:
        gating = model.gating_network

        def array(tensor: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)

        def negative_reciprocal(temperature: torch.Tensor) -> np.float32:
            return np.float32(-1.0) / np.float32(temperature.detach().abs().item())

        a, w, h = model.expert_stack()
        j, m = w.shape[0], w.shape[1]
        return cls(
            D=array(gating.D),
            sigma=array(gating.sigma),
            neg_inv_tau1=negative_reciprocal(gating.softmax_temp1),
            W1=array(gating.mlp_layer1.weight),
            b1=array(gating.mlp_layer1.bias),
            W2=array(gating.mlp_layer2.weight),
            b2=array(gating.mlp_layer2.bias),
            neg_inv_tau2=negative_reciprocal(gating.softmax_temp2),
            A=array(a),
            W_columns=array(w.permute(2, 0, 1).reshape(m, j * m)),
            h=array(h),
            relu_from=model.arch.M - model.arch.P,
        )

    def arrays(self) -> tuple:
        """The fields in declaration order, which is the order the kernels take them in."""
        return tuple(getattr(self, field.name) for field in fields(self))

    def read_z(self) -> np.ndarray:
        """(N + J, M): the rows of D, then of W1's latent part: the query and W1_z z are one product."""
        return np.ascontiguousarray(np.concatenate((self.D, self.W1[:, self.D.shape[0] :])))

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """``read_z`` (M, N + J) and W2 (J, J) by columns, as ``_advance`` sweeps them."""
        return np.ascontiguousarray(self.read_z().T), np.ascontiguousarray(self.W2.T)


@dataclass(frozen=True)
class PackedContext:
    """The valid key frames and encodings of all units, back to back, dims first.

    With ``block`` > 1 (the per-series kernel's layout, ``SUM_BLOCK``), each unit's frames
    are padded to a multiple of ``block`` and the dims to a multiple of 3, as in the batched
    kernel's tiles: a padding frame has key +inf and encoding 0, so it gets weight exactly 0
    and adds exactly 0 to every sum, and padding dims are 0.
    """

    keys: np.ndarray  # (N, F) frames c_1..c_{T-1} of each unit (N', F' with block > 1)
    encodings: np.ndarray  # (N, F) conv encodings of the same frames
    offsets: np.ndarray  # (U + 1,) unit u owns columns offsets[u]:offsets[u + 1]

    @classmethod
    def of(cls, model: DynaMix, context: np.ndarray, valid_from: np.ndarray, block: int = 1) -> PackedContext:
        conv = model.gating_network.conv
        kernel = conv.weight.detach().cpu().numpy().astype(np.float32)  # (out, in, 2)
        bias = conv.bias.detach().cpu().numpy().astype(np.float32)
        frames = np.ascontiguousarray(context, dtype=np.float32)
        starts = np.asarray(valid_from, dtype=np.int64)
        counts = frames.shape[1] - 1 - starts
        offsets = np.concatenate([[0], np.cumsum(-(-counts // block) * block)]).astype(np.int64)
        dims = frames.shape[2]
        keys = np.full((dims if block == 1 else -(-dims // 3) * 3, offsets[-1]), np.inf, dtype=np.float32)
        keys[dims:] = 0.0
        encodings = np.zeros_like(keys)
        _pack(frames, starts, offsets, kernel, bias, keys, encodings)
        return cls(keys=keys, encodings=encodings, offsets=offsets)

    def arrays(self) -> tuple:
        return self.keys, self.encodings, self.offsets


def _pack(frames, starts, offsets, kernel, bias, keys, encodings):
    """Each unit's valid frames c_1..c_{T-1} into keys (N, F) from its offset; e_k = b + sum_i K_0 c_k + K_1 c_{k+1}.

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


_pack = compile_kernel(_pack, fastmath=False)  # every frame's encoding is the same IEEE sum, in the same order


def rollout_per_series(model: DynaMix, batch: RolloutBatch, horizon: int, threads: int | None = None) -> np.ndarray:
    """The compiled counterpart of ``torch_rollout.rollout_torch``: observed dims (H, B, N), float32.

    Call it through ``dispatch.rollout(model, batch, horizon, backend="numba")``, which validates the batch.

    Trajectories are independent, so ``threads`` (default ``torch.get_num_threads()``)
    split them into contiguous groups; results do not depend on the split.
    """
    weights = Weights.of(model)
    packed = PackedContext.of(model, batch.context, batch.valid_from, block=SUM_BLOCK)
    state = _initial_states(np.asarray(batch.x0, dtype=np.float32), model.B.detach().cpu().numpy().astype(np.float32))
    unit = np.ascontiguousarray(batch.unit, dtype=np.int64)
    out = np.empty((horizon, len(unit), model.arch.N), dtype=np.float32)
    columns = weights.columns()

    def advance(noise, start, first, stop):
        _advance(state, noise, out, start, first, stop, unit, *packed.arrays(), *columns, *weights.arrays())

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


@compile_kernel
def _advance(
    state, noise, out, out_start, b_start, b_stop, unit, keys, encodings, offsets, read_z_columns, w2_columns,
    D, sigma, neg_inv_tau1, W1, b1, W2, b2, neg_inv_tau2, A, W_columns, h, relu_from,
):  # fmt: skip
    """Advance trajectories b_start..b_stop-1 through one noise block (B, k, N), writing out[out_start:]."""
    n_obs, m = D.shape
    j_count = A.shape[0]
    longest = 0
    for u in range(len(offsets) - 1):
        longest = max(longest, offsets[u + 1] - offsets[u])
    scores = np.empty(longest, dtype=np.float32)
    partial = np.empty((keys.shape[0] + 1, SUM_BLOCK), dtype=np.float32)  # (N' + 1, SUM_BLOCK)
    best = np.empty(SUM_BLOCK, dtype=np.float32)
    products = np.empty(n_obs + j_count, dtype=np.float32)
    query = np.zeros(keys.shape[0], dtype=np.float32)  # (N',), the dims past N stay 0
    embedding = np.empty(n_obs, dtype=np.float32)
    logits = np.empty(j_count, dtype=np.float32)
    phi = np.empty(m, dtype=np.float32)
    experts = np.empty(j_count * m, dtype=np.float32)
    mixed = np.empty(m, dtype=np.float32)
    for b in range(b_start, b_stop):
        lo, hi = offsets[unit[b]], offsets[unit[b] + 1]
        z = state[b]
        for t in range(noise.shape[1]):
            _sweep(read_z_columns, z, products)  # the query's D z, then W1_z z
            finite = True
            for i in range(n_obs):
                query[i] = products[i] + sigma[i] * noise[b, t, i]
                finite = finite and abs(query[i]) < np.inf
            if finite:
                _attend(query, keys, encodings, lo, hi, neg_inv_tau1, scores, partial, best)
                for i in range(n_obs):
                    embedding[i] = partial[i, 0]
                hidden = products[n_obs:]
                for j in range(j_count):
                    hidden[j] += b1[j]
                    for i in range(n_obs):
                        hidden[j] += W1[j, i] * embedding[i]
                    hidden[j] = np.float32(0.0) if hidden[j] < 0 else hidden[j]  # NaN passes, as torch.relu
                _sweep(w2_columns, hidden, logits)
                finite = _softmax_gate(logits, b2, neg_inv_tau2)
            if finite:
                for k in range(m):
                    phi[k] = np.float32(0.0) if k >= relu_from and z[k] < 0 else z[k]
                _sweep(W_columns, phi, experts)
                for k in range(m):
                    mixed[k] = np.float32(0.0)
                for j in range(j_count):
                    g = logits[j]
                    for k in range(m):
                        mixed[k] += g * (A[j, k] * z[k] + experts[j * m + k] + h[j, k])
                for k in range(m):
                    z[k] = mixed[k]
            else:
                for k in range(m):
                    z[k] = np.nan
            for i in range(n_obs):
                out[out_start + t, b, i] = z[i]


@compile_kernel
def _sweep(columns, x, out):
    """out = M x with M given by its columns (K, R): each out[r] a fused multiply-add chain over k from 0."""
    for r in range(out.shape[0]):
        out[r] = np.float32(0.0)
    inner, k = columns.shape[0], 0
    while k + 3 <= inner:  # three terms per pass over out: a third of the loads and stores, the same chain
        x0, x1, x2 = x[k], x[k + 1], x[k + 2]
        column0, column1, column2 = columns[k], columns[k + 1], columns[k + 2]
        for r in range(out.shape[0]):
            out[r] = ((out[r] + column0[r] * x0) + column1[r] * x1) + column2[r] * x2
        k += 3
    while k < inner:
        xk, column = x[k], columns[k]
        for r in range(out.shape[0]):
            out[r] += column[r] * xk
        k += 1


@compile_kernel
def _attend(query, keys, encodings, lo, hi, neg_inv_tau1, scores, partial, best):
    """partial[:N', 0] = the attention's embedding sum_k a_k e_k, a = softmax_k(-|c_k - query|_1 / tau1).

    Over the frames lo..hi-1 of keys/encodings (N', F), hi - lo a multiple of ``SUM_BLOCK``;
    scores, partial and best are buffers. Frame k goes to float32 partial sum k mod
    ``SUM_BLOCK``, and the partial sums are added in float64 in order: ``batched._attend``
    for one lane, here with the partial sums as the vector axis.
    """
    frames, last = hi - lo, keys.shape[0] - 3
    scores = scores[:frames]
    for g in range(0, last + 3, 3):
        row0, row1, row2 = keys[g, lo:hi], keys[g + 1, lo:hi], keys[g + 2, lo:hi]
        q0, q1, q2 = query[g], query[g + 1], query[g + 2]
        if g == 0 and last == 0:
            for k in range(frames):
                scores[k] = ((abs(row0[k] - q0) + abs(row1[k] - q1)) + abs(row2[k] - q2)) * neg_inv_tau1
        elif g == 0:
            for k in range(frames):
                scores[k] = (abs(row0[k] - q0) + abs(row1[k] - q1)) + abs(row2[k] - q2)
        elif g < last:
            for k in range(frames):
                scores[k] = ((abs(row0[k] - q0) + abs(row1[k] - q1)) + abs(row2[k] - q2)) + scores[k]
        else:
            for k in range(frames):
                scores[k] = (((abs(row0[k] - q0) + abs(row1[k] - q1)) + abs(row2[k] - q2)) + scores[k]) * neg_inv_tau1
    # Zero-based views per block: indexing with block + slot would make numba check for negative indices, and
    # the loops would not vectorize.
    for slot in range(SUM_BLOCK):
        best[slot] = -np.inf
    for block in range(frames // SUM_BLOCK):
        block_scores = scores[block * SUM_BLOCK : (block + 1) * SUM_BLOCK]
        for slot in range(SUM_BLOCK):
            score = block_scores[slot]
            best[slot] = score if score > best[slot] else best[slot]
    top = np.float32(-np.inf)
    for slot in range(SUM_BLOCK):
        top = best[slot] if best[slot] > top else top
    for k in range(frames):
        scores[k] = exp_below_zero(scores[k] - top)
    for i in range(last + 4):
        for slot in range(SUM_BLOCK):
            partial[i, slot] = np.float32(0.0)
    total = partial[last + 3]
    for block in range(frames // SUM_BLOCK):
        first, stop = block * SUM_BLOCK, (block + 1) * SUM_BLOCK
        weights = scores[first:stop]
        for g in range(0, last + 3, 3):
            sum0, sum1, sum2 = partial[g], partial[g + 1], partial[g + 2]
            e0 = encodings[g, lo + first : lo + stop]
            e1 = encodings[g + 1, lo + first : lo + stop]
            e2 = encodings[g + 2, lo + first : lo + stop]
            if g == 0:
                for slot in range(SUM_BLOCK):
                    weight = weights[slot]
                    total[slot] += weight
                    sum0[slot] += weight * e0[slot]
                    sum1[slot] += weight * e1[slot]
                    sum2[slot] += weight * e2[slot]
            else:
                for slot in range(SUM_BLOCK):
                    weight = weights[slot]
                    sum0[slot] += weight * e0[slot]
                    sum1[slot] += weight * e1[slot]
                    sum2[slot] += weight * e2[slot]
    weight_sum = 0.0
    sums = np.zeros(last + 3, dtype=np.float64)
    for slot in range(SUM_BLOCK):
        weight_sum += partial[last + 3, slot]
        for i in range(last + 3):
            sums[i] += partial[i, slot]
    for i in range(last + 3):
        partial[i, 0] = sums[i] / weight_sum


@compile_kernel
def _softmax_gate(logits, b2, neg_inv_tau2) -> bool:
    """logits (J,) <- softmax_j((logits + b2) * -1/tau2); False where a logit is NaN (or inf - inf), as torch."""
    top = np.float32(-np.inf)
    for j in range(logits.shape[0]):
        logits[j] = (logits[j] + b2[j]) * neg_inv_tau2
        top = logits[j] if logits[j] > top else top
    finite = True
    for j in range(logits.shape[0]):
        logits[j] -= top
        finite = finite and logits[j] == logits[j]
    norm = np.float32(0.0)
    for j in range(logits.shape[0]):
        logits[j] = exp_below_zero(logits[j])
        norm += logits[j]
    for j in range(logits.shape[0]):
        logits[j] /= norm
    return finite

"""Batched CPU rollout: trajectories advance side by side, the trajectory axis is the SIMD axis.

Trajectories go in tiles of ``LANES`` (64); inside a tile every quantity of a step is a
row of 64 numbers, one per trajectory (lane), and the loops run along that row:

- expert step: W_j phi(z) for all j is one BLAS product, W_rows (J*M, M) x phi (M, L);
  so are D z and the gating MLP's W1 z (one (N + J, M) x (M, L) product) and W2 h;
- attention: the tile's context frames interleaved as (N', T, L), so the L1 distances,
  the exponentials and the weighted sums are elementwise over a row of lanes; each loop
  body handles three dims of a frame for all lanes (N' = N rounded up to a multiple of 3,
  extra dims 0), because entering one short loop per dim costs more than its arithmetic;
- gating softmax and mixing: elementwise over the lanes as well.

A tile runs through a whole noise block (up to 1,024 steps) before the next tile
starts, so its frames stay in cache: at context 512 its keys, encodings and scores take
0.9 MB. Advancing all B trajectories one step at a time instead, with one (B, M) x
(M, J*M) product per step, would stream every context from memory at every step (49 MB
per step for 1,024 series at context 2,000).

A tile costs the same whatever number of its lanes are real, so few trajectories run
faster one by one in ``per_series`` (``dispatch.BATCHED_MIN_TRAJECTORIES``).

Within this backend a trajectory's forecast is bit for bit the same alone or in any
batch, at any lane, with any tile partners and any thread split: every operation is
elementwise over the lanes or a BLAS product whose columns are the lanes (each column
of a product is the same K-ordered sum whatever the other columns are; the tests check
positions and batch sizes); a partial tile is filled with copies of its first
trajectory, so every tile runs the same code; each lane's frames are left-aligned and
the frames past its own context are padding with key +inf, which gives them weight
exactly 0 (adding 0 to a sum leaves it unchanged); and the compiler may only contract
multiply-adds (``arithmetic.FASTMATH``), so no summation order depends on a trip count.
It is also bit for bit the per-series kernel's forecast (``arithmetic``; checked for
this machine's BLAS by ``matches_per_series``). Noise comes from each trajectory's own
stream key (``noise.standard_normals``), as in every backend.

Against "torch" the same noise drives the same recurrence, agreeing to float32 rounding
per step (tested: one step from identical states lands within 2e-6 of the state's
magnitude), not bit for bit: summation orders differ, the attention sums run in float32
partial sums added in float64 (torch: float32), and weights below exp(-60) count as zero
(torch: none). Chaotic systems amplify those roundings, so long rollouts of the two part
as any two float32 computations do. Non-finite states propagate as NaN/inf, as in torch,
where divergence detection relies on it.

>>> import numpy as np
>>> from dynamix_adapters.model import Architecture, DynaMix
>>> net = DynaMix(Architecture(M=8, N=3, J=2, P=1))
>>> context = np.random.default_rng(0).standard_normal((1, 50, 3)).astype(np.float32)
>>> from dynamix_adapters.rollout import RolloutBatch, stream_keys
>>> batch = RolloutBatch(context, np.array([0]), context[:, -1], np.array([0]), stream_keys(1, [7], 1), ("x",))
>>> rollout_batched(net, batch, 20).shape
(20, 1, 3)
"""

from __future__ import annotations

import functools

import numpy as np

from ..model import DynaMix
from .arithmetic import SUM_BLOCK, compile_kernel, exp_below_zero
from .batch import RolloutBatch
from .per_series import PackedContext, Weights, _initial_states, _sweep, advance_in_groups

# Trajectories per tile: rows long enough to amortize entering each lane loop (32 lanes measured 1.1-1.2x slower
# per trajectory at context 512 and 2,000; 128 no faster at 512), a tile's frames at context 512 within L2.
LANES = 64


def rollout_batched(model: DynaMix, batch: RolloutBatch, horizon: int, threads: int | None = None) -> np.ndarray:
    """The batched counterpart of ``per_series.rollout_per_series``: observed dims (H, B, N), float32.

    Call it through ``dispatch.rollout(model, batch, horizon, backend="batched")``, which validates the batch.
    ``threads`` (default ``torch.get_num_threads()``) split the tiles; results do not depend on it.
    """
    weights = Weights.of(model)
    packed = PackedContext.of(model, batch.context, batch.valid_from)
    state = _initial_states(np.asarray(batch.x0, dtype=np.float32), model.B.detach().cpu().numpy().astype(np.float32))
    unit = np.ascontiguousarray(batch.unit, dtype=np.int64)
    trajectories, n, m = len(unit), model.arch.N, model.arch.M
    # Rows of every expert's W back to back, so that W_j phi for all j is one (J*M, M) x (M, L) product.
    w_rows = np.ascontiguousarray(weights.W_columns.T)  # (J*M, M)
    # The query and the gating MLP's z part are one product: [D; W1_z] (N + J, M) x z (M, L).
    read_z = weights.read_z()
    out = np.empty((horizon, trajectories, n), dtype=np.float32)
    tiles = -(-trajectories // LANES)
    lane_state = np.empty((tiles, m, LANES), dtype=np.float32)  # (tiles, M, L): latent state, lanes last
    _gather_states(state, lane_state)

    def advance(noise, start, first, stop):
        _advance_tiles(
            lane_state, noise, out, start, first, stop, unit, *packed.arrays(),
            read_z, weights.sigma, weights.neg_inv_tau1, weights.W1, weights.b1, weights.W2, weights.b2,
            weights.neg_inv_tau2, weights.A, w_rows, weights.h, weights.relu_from,
        )  # fmt: skip

    advance_in_groups(batch.streams, horizon, n, tiles, threads, advance)
    return out


def _gather_states(state: np.ndarray, lane_state: np.ndarray) -> None:
    """(B, M) states -> (tiles, M, L); the lanes past B repeat their tile's first trajectory."""
    batch = len(state)
    for tile in range(len(lane_state)):
        rows = np.arange(tile * LANES, (tile + 1) * LANES)
        lane_state[tile] = state[np.where(rows < batch, rows, tile * LANES)].T


@compile_kernel
def _advance_tiles(
    lane_state, noise, out, out_start, tile_start, tile_stop, unit, keys, encodings, offsets,
    read_z, sigma, neg_inv_tau1, W1, b1, W2, b2, neg_inv_tau2, A, W_rows, h, relu_from,
):  # fmt: skip
    """Advance tiles tile_start..tile_stop-1 through one noise block (B, k, N), writing out[out_start:]."""
    n_obs = sigma.shape[0]
    lanes = lane_state.shape[2]
    batch, steps = noise.shape[0], noise.shape[1]
    longest = 0
    for u in range(len(offsets) - 1):
        longest = max(longest, offsets[u + 1] - offsets[u])
    padded = -(-longest // SUM_BLOCK) * SUM_BLOCK
    dims = -(-n_obs // 3) * 3  # the attention reads dims in threes; extra dims are 0 in keys, query and encodings
    tile_keys = np.zeros((dims, padded, lanes), dtype=np.float32)  # (N', T, L)
    tile_encodings = np.zeros((dims, padded, lanes), dtype=np.float32)
    scores = np.empty((padded, lanes), dtype=np.float32)  # (T, L)
    tile_noise = np.empty((steps, n_obs, lanes), dtype=np.float32)  # (k, N, L)
    for tile in range(tile_start, tile_stop):
        first = tile * LANES
        frames = 0
        for lane in range(lanes):
            b = first + lane if first + lane < batch else first
            u = unit[b]
            frames = max(frames, offsets[u + 1] - offsets[u])
        frames = -(-frames // SUM_BLOCK) * SUM_BLOCK  # whole blocks of frames
        # Left-align each lane's frames; the rest is padding: key +inf (score -inf, weight 0) and encoding 0.
        for lane in range(lanes):
            b = first + lane if first + lane < batch else first
            lo, count = offsets[unit[b]], offsets[unit[b] + 1] - offsets[unit[b]]
            for k in range(frames):
                for i in range(n_obs):
                    tile_keys[i, k, lane] = keys[i, lo + k] if k < count else np.inf
                    tile_encodings[i, k, lane] = encodings[i, lo + k] if k < count else 0.0
            for t in range(steps):
                for i in range(n_obs):
                    tile_noise[t, i, lane] = noise[b, t, i]
        z = lane_state[tile]  # (M, L), updated in place
        for t in range(steps):
            _step(
                z, tile_noise[t], tile_keys, tile_encodings, scores, frames,
                read_z, sigma, neg_inv_tau1, W1, b1, W2, b2, neg_inv_tau2, A, W_rows, h, relu_from,
            )  # fmt: skip
            for lane in range(min(lanes, batch - first)):
                for i in range(n_obs):
                    out[out_start + t, first + lane, i] = z[i, lane]


@compile_kernel
def _step(
    z, eps, keys, encodings, scores, frames, read_z, sigma, neg_inv_tau1, W1, b1, W2, b2, neg_inv_tau2, A, W_rows, h,
    relu_from,
):  # fmt: skip
    """One step of the tile: z (M, L) <- DynaMix.step(z), with eps (N, L), keys/encodings (N', T, L), scores (T, L).

    Lane loops read their trip count from the arrays: a constant count gets unrolled to scalar code.
    """
    n_obs, (m, lanes) = eps.shape[0], z.shape
    j_count = A.shape[0]
    products = np.dot(read_z, z)  # (N + J, M) x (M, L): the query's D z, then W1_z z
    query = np.zeros((keys.shape[0], lanes), dtype=np.float32)  # (N', L), the dims past N stay 0
    finite = np.ones(lanes, dtype=np.bool_)
    for i in range(n_obs):
        s = sigma[i]
        for lane in range(lanes):
            query[i, lane] = products[i, lane] + s * eps[i, lane]
            finite[lane] = finite[lane] and abs(query[i, lane]) < np.inf
    # A non-finite query makes the step NaN (as in torch); attend with a finite stand-in to keep the lanes in step.
    for i in range(n_obs):
        for lane in range(lanes):
            query[i, lane] = query[i, lane] if finite[lane] else np.float32(0.0)
    embedding = _attend(query, keys, encodings, scores, frames, neg_inv_tau1)  # (N', L)
    hidden = products[n_obs:]  # (J, L): W1_z z, then + b1 + W1_g g
    for j in range(j_count):
        c = b1[j]
        for lane in range(lanes):
            hidden[j, lane] += c
        for i in range(n_obs):
            w = W1[j, i]
            for lane in range(lanes):
                hidden[j, lane] += w * embedding[i, lane]
        for lane in range(lanes):
            hidden[j, lane] = np.float32(0.0) if hidden[j, lane] < 0 else hidden[j, lane]  # NaN passes, as torch
    gate = _softmax_gate(np.dot(W2, hidden), b2, neg_inv_tau2, finite)  # (J, L)
    phi = z.copy()
    for k in range(relu_from, m):
        for lane in range(lanes):
            phi[k, lane] = np.float32(0.0) if z[k, lane] < 0 else z[k, lane]
    experts = np.dot(W_rows, phi)  # (J*M, M) x (M, L): W_j phi(z) for every j
    mixed = np.zeros((m, lanes), dtype=np.float32)
    for j in range(j_count):
        for r in range(m):
            a, c, row = A[j, r], h[j, r], experts[j * m + r]
            for lane in range(lanes):
                mixed[r, lane] += gate[j, lane] * (a * z[r, lane] + row[lane] + c)
    for k in range(m):
        for lane in range(lanes):
            z[k, lane] = mixed[k, lane] if finite[lane] else np.float32(np.nan)


@compile_kernel
def _attend(query, keys, encodings, scores, frames, neg_inv_tau1):
    """embedding (N', L) = sum_k a_k e_k, a = softmax_k(-|c_k - query|_1 / tau1), over frames of keys (N', T, L).

    Every loop body handles three dims of a frame for all L lanes at once: with one short loop per dim,
    entering the loops would cost more than the arithmetic in them. Two passes, as in ``per_series``: scores
    (T, L) and each lane's maximum, then the weights (written over the scores) and the sums: frame k into
    float32 partial sum k mod ``SUM_BLOCK``, the partial sums added in float64 in order (float32
    throughput, and the error of a T/32-term float32 sum rather than of a T-term one).
    """
    lanes = query.shape[1]
    last = keys.shape[0] - 3
    best = np.full(lanes, -np.inf, dtype=np.float32)
    for g in range(0, last + 3, 3):
        for k in range(frames):
            for lane in range(lanes):
                distance = (
                    abs(keys[g, k, lane] - query[g, lane])
                    + abs(keys[g + 1, k, lane] - query[g + 1, lane])
                    + abs(keys[g + 2, k, lane] - query[g + 2, lane])
                )
                if g > 0:
                    distance += scores[k, lane]
                if g == last:
                    distance = distance * neg_inv_tau1
                    best[lane] = distance if distance > best[lane] else best[lane]
                scores[k, lane] = distance
    # Frame k goes to float32 partial sum k mod SUM_BLOCK; the partial sums are added in float64 in order.
    partial = np.zeros((last + 4, SUM_BLOCK, lanes), dtype=np.float32)  # weighted encodings (N'), total weight
    for block in range(0, frames, SUM_BLOCK):
        for slot in range(SUM_BLOCK):
            k = block + slot
            # Row views: the lane loops index from 0, so numba adds no negative-index checks and they vectorize.
            frame_scores, total = scores[k], partial[last + 3, slot]
            sum0, sum1, sum2 = partial[0, slot], partial[1, slot], partial[2, slot]
            e0, e1, e2 = encodings[0, k], encodings[1, k], encodings[2, k]
            for lane in range(lanes):
                weight = exp_below_zero(frame_scores[lane] - best[lane])
                if last > 0:  # dims past the first three read the weights back
                    frame_scores[lane] = weight
                sum0[lane] += weight * e0[lane]
                sum1[lane] += weight * e1[lane]
                sum2[lane] += weight * e2[lane]
                total[lane] += weight
            for g in range(3, last + 3, 3):
                sum0, sum1, sum2 = partial[g, slot], partial[g + 1, slot], partial[g + 2, slot]
                e0, e1, e2 = encodings[g, k], encodings[g + 1, k], encodings[g + 2, k]
                for lane in range(lanes):
                    weight = frame_scores[lane]
                    sum0[lane] += weight * e0[lane]
                    sum1[lane] += weight * e1[lane]
                    sum2[lane] += weight * e2[lane]
    sums = np.zeros((last + 4, lanes), dtype=np.float64)
    for slot in range(SUM_BLOCK):
        for i in range(last + 4):
            for lane in range(lanes):
                sums[i, lane] += partial[i, slot, lane]
    embedding = np.empty((last + 3, lanes), dtype=np.float32)
    for i in range(last + 3):
        for lane in range(lanes):
            embedding[i, lane] = sums[i, lane] / sums[last + 3, lane]
    return embedding


@compile_kernel
def _softmax_gate(logits, b2, neg_inv_tau2, finite):
    """gate (J, L) = softmax_j((logits + b2) * -1/tau2); a NaN logit (or inf - inf) clears ``finite``, as torch."""
    j_count, lanes = logits.shape
    top = np.full(lanes, -np.inf, dtype=np.float32)
    for j in range(j_count):
        c = b2[j]
        for lane in range(lanes):
            logits[j, lane] = (logits[j, lane] + c) * neg_inv_tau2
            top[lane] = logits[j, lane] if logits[j, lane] > top[lane] else top[lane]
    norm = np.zeros(lanes, dtype=np.float32)
    for j in range(j_count):
        for lane in range(lanes):
            logits[j, lane] -= top[lane]
            finite[lane] = finite[lane] and logits[j, lane] == logits[j, lane]
    gate = logits
    for j in range(j_count):
        for lane in range(lanes):
            gate[j, lane] = exp_below_zero(gate[j, lane])
            norm[lane] += gate[j, lane]
    for j in range(j_count):
        for lane in range(lanes):
            gate[j, lane] /= norm[lane]
    return gate


@functools.cache
def matches_per_series(n_obs: int, j_count: int, m: int) -> bool:
    """Whether this machine's BLAS computes the tile's products as ``per_series`` does, for a model of these sizes.

    The batched step's products ([D; W1_z] z, W2 h, W_j phi) go through BLAS; the
    per-series kernel computes each output as a fused multiply-add chain in ascending
    order (``per_series._sweep``), which is what common BLAS kernels do for each column
    of a product. Checked once per process and size on random inputs: where it fails,
    the kernels agree only to float32 rounding, and "auto" keeps few-path forecasts on the
    per-series kernel whatever the batch (``dispatch.select_backend``).
    """
    rng = np.random.default_rng(0)
    for rows, inner in ((n_obs + j_count, m), (j_count, j_count), (j_count * m, m)):
        matrix = rng.standard_normal((rows, inner)).astype(np.float32)
        tile = rng.standard_normal((inner, LANES)).astype(np.float32)
        product = _tile_product(matrix, tile)
        columns, swept = np.ascontiguousarray(matrix.T), np.empty(rows, dtype=np.float32)
        for lane in range(LANES):
            _sweep(columns, np.ascontiguousarray(tile[:, lane]), swept)
            if not np.array_equal(swept, product[:, lane]):
                return False
    return True


@compile_kernel
def _tile_product(matrix, tile):
    """The product as ``_step`` computes it (numba's BLAS binding)."""
    return np.dot(matrix, tile)

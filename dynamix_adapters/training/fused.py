"""The training loss and its gradient in one compiled pass: forward and backpropagation through time, fused.

This computes exactly what ``reference.rollout_loss`` computes with torch autograd
(and ``tests/test_training_fused.py`` checks the gradients against it), but with
no per-operation overhead: for this ~10k-parameter model, autograd spends most of
its time dispatching small kernels, not computing.

One sequence at a time (so the result does not depend on how a batch is split):

1. Its context's key frames and conv encodings are laid out dims first, once.
2. Forward: L - 1 steps, storing what the backward pass needs per step (the
   state entering the step, attention weights and L1 distances, embedding, MLP
   pre-activations and outputs, expert weights, every expert's output).
3. Backward: from the last step to the first, the gradient of the MSE flows into
   the state; forced observed dims stop it. Parameter gradients accumulate over
   steps; the gradient on the encodings accumulates per frame and reaches the conv
   weights once at the end.

The gating query uses a detached z when ``detach_query`` is set (the authors'
recipe): then the attention gradient reaches only D and sigma, never z.

The MLP biases are taken to be zero (the recipe keeps them at zero, untrained), so
they are neither read nor differentiated.

Arithmetic follows the dtype of the inputs: float32 in training, float64 in the
gradient test. The compiled style is that of ``dynamix_adapters.rollout.per_series``:
explicit loops over contiguous memory, which LLVM vectorizes.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from ..model import DynaMix

# exp(x) for x < -87 (below 2**-125) is set to zero: the largest attention weight is exp(0) = 1, so even
# T_C such weights change the normalizer by far less than float32 resolution.
NEGLIGIBLE_EXPONENT = -87.0
LOG2_E = 1 / math.log(2)
LN2 = math.log(2)
# nnan/ninf are left out on purpose: a diverging rollout must show up as a non-finite loss.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


def _compile(func):
    options = {"nogil": True, "fastmath": FASTMATH, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:  # numba found no writable cache directory
        return numba.njit(**options)(func)


def loss_and_gradients(
    model: DynaMix,
    context: np.ndarray,  # (B, T_C, N) clean
    sequence: np.ndarray,  # (B, L, N) noisy: initial state, forcing signal and target
    noise: np.ndarray,  # (B, L - 1, N) standard normal gating noise
    interval: int,
    detach_query: bool = True,
) -> tuple[float, float, dict[str, np.ndarray]]:
    """The batch MSE, the largest |z| reached and the MSE's gradient for every parameter of ``model``.

    Parameters
    ----------
    model : DynaMix
        The network; its MLP biases must be zero.
    context, sequence, noise : np.ndarray
        One batch, shapes as annotated, all of one float dtype (the arithmetic's).
    interval : int
        Force the observed dims every ``interval`` steps.
    detach_query : bool
        Compute the gating query from a detached z.

    Returns
    -------
    mse : float
        Mean over batch, steps and observed dims, as ``reference.rollout_loss``.
    largest : float
        The largest absolute latent entry of any step (NaN if the rollout diverged).
    gradients : dict
        Parameter name (as in ``model.named_parameters()``) -> gradient, in the
        parameter's shape; the MLP biases get zeros.
    """
    dtype = context.dtype
    gating = model.gating_network
    if gating.mlp_layer1.bias.detach().abs().max() > 0 or gating.mlp_layer2.bias.detach().abs().max() > 0:
        raise ValueError("the fused kernel assumes zero MLP biases")
    arch = model.arch
    j_count, m, n = arch.J, arch.M, arch.N

    def array(tensor: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)

    a, w, h = (array(t) for t in model.expert_stack())
    w_columns = np.ascontiguousarray(w.transpose(2, 0, 1).reshape(m, j_count * m))  # (M, J*M): column k of every W_j
    params = (
        array(gating.D),
        array(gating.sigma),
        dtype.type(gating.softmax_temp1.item()),
        array(gating.conv.weight),
        array(gating.conv.bias),
        array(gating.mlp_layer1.weight),
        array(gating.mlp_layer2.weight),
        dtype.type(gating.softmax_temp2.item()),
        a,
        w_columns,
        h,
        array(model.B),
        m - arch.P,
    )
    grads = {
        "D": np.zeros((n, m), dtype),
        "sigma": np.zeros(n, dtype),
        "tau": np.zeros(2, np.float64),
        "conv_w": np.zeros((n, n, 2), dtype),
        "conv_b": np.zeros(n, dtype),
        "W1": np.zeros((j_count, n + m), dtype),
        "W2": np.zeros((j_count, j_count), dtype),
        "A": np.zeros((j_count, m), dtype),
        "W_columns": np.zeros((m, j_count * m), dtype),
        "h": np.zeros((j_count, m), dtype),
        "B": np.zeros((n, m), dtype),
    }
    batch, length = sequence.shape[:2]
    scale = 1.0 / (batch * (length - 1) * n)
    sse, largest = _batch(
        np.ascontiguousarray(context, dtype),
        np.ascontiguousarray(sequence, dtype),
        np.ascontiguousarray(noise, dtype),
        interval,
        detach_query,
        scale,
        *params,
        *grads.values(),
        dtype.type(0.0),  # the zero of the arithmetic's dtype, which sets the accumulators' type
    )
    w_grad = grads["W_columns"].reshape(m, j_count, m).transpose(1, 2, 0)  # (J, M, M)
    out = {
        "gating_network.D": grads["D"],
        "gating_network.sigma": grads["sigma"],
        "gating_network.softmax_temp1": grads["tau"][:1].astype(dtype),
        "gating_network.softmax_temp2": grads["tau"][1:].astype(dtype),
        "gating_network.conv.weight": grads["conv_w"],
        "gating_network.conv.bias": grads["conv_b"],
        "gating_network.mlp_layer1.weight": grads["W1"],
        "gating_network.mlp_layer1.bias": np.zeros(j_count, dtype),
        "gating_network.mlp_layer2.weight": grads["W2"],
        "gating_network.mlp_layer2.bias": np.zeros(j_count, dtype),
        "B": grads["B"],
    }
    for j in range(j_count):
        out[f"experts.{j}.A"] = grads["A"][j]
        out[f"experts.{j}.W"] = np.ascontiguousarray(w_grad[j])
        out[f"experts.{j}.h"] = grads["h"][j]
    return sse * scale, largest, out


@_compile
def _batch(
    context, sequence, noise, interval, detach_query, scale,
    D, sigma, tau1, conv_w, conv_b, W1, W2, tau2, A, W_columns, h, B, relu_from,
    gD, gsigma, gtau, gconv_w, gconv_b, gW1, gW2, gA, gW_columns, gh, gB, zero,
):  # fmt: skip
    """Accumulate the gradients of ``scale * sum of squared errors`` over the batch; returns (SSE, largest |z|)."""
    batch, t_c, n_obs = context.shape
    steps = sequence.shape[1] - 1
    frames = t_c - 1
    m = D.shape[1]
    j_count = A.shape[0]
    jm = j_count * m
    dtype = context.dtype
    t1, t2 = abs(tau1), abs(tau2)
    # Per sequence: its context dims first, and the gradient on its encodings (N, T_C - 1).
    keys = np.empty((n_obs, frames), dtype)
    following = np.empty((n_obs, frames), dtype)
    enc = np.empty((n_obs, frames), dtype)
    genc = np.empty((n_obs, frames), dtype)
    # Per step, what the backward pass reads.
    zin = np.empty((steps + 1, m), dtype)  # state entering each step (after forcing)
    pred = np.empty((steps, n_obs), dtype)  # pre-forcing observed dims
    attn = np.empty((steps, frames), dtype)
    dist = np.empty((steps, frames), dtype)
    query = np.empty((steps, n_obs), dtype)
    emb = np.empty((steps, n_obs), dtype)
    pre = np.empty((steps, j_count), dtype)  # MLP layer-1 pre-activations
    hid = np.empty((steps, j_count), dtype)
    out2 = np.empty((steps, j_count), dtype)  # MLP layer-2 outputs
    gate = np.empty((steps, j_count), dtype)
    mixed = np.empty((steps, jm), dtype)  # every expert's output f_j(z), expert-major
    phi = np.empty(m, dtype)
    dz = np.empty(m, dtype)
    dzp = np.empty(m, dtype)
    dmix = np.empty(jm, dtype)
    dq = np.empty(n_obs, dtype)
    dg = np.empty(n_obs, dtype)
    dw = np.empty(j_count, dtype)
    work = np.empty(frames, dtype)
    bits = np.empty(frames, np.int32)
    du = np.empty(j_count, dtype)
    sse = 0.0
    largest = 0.0
    d_t1 = 0.0
    d_t2 = 0.0
    for b in range(batch):
        for k in range(frames):
            for i in range(n_obs):
                keys[i, k] = context[b, k, i]
                following[i, k] = context[b, k + 1, i]
        for o in range(n_obs):
            for k in range(frames):
                acc = conv_b[o]
                for c in range(n_obs):
                    acc += conv_w[o, c, 0] * keys[c, k] + conv_w[o, c, 1] * following[c, k]
                enc[o, k] = acc
                genc[o, k] = 0.0
        # z0 = x B with z0[:N] = x exactly.
        for k in range(m):
            acc = zero
            for i in range(n_obs):
                acc += sequence[b, 0, i] * B[i, k]
            zin[0, k] = acc
        for i in range(n_obs):
            zin[0, i] = sequence[b, 0, i]

        # ---- forward ----
        for s in range(steps):
            z = zin[s]
            for i in range(n_obs):
                acc = zero
                for k in range(m):
                    acc += D[i, k] * z[k]
                query[s, i] = acc + sigma[i] * noise[b, s, i]
            dist_s, attn_s = dist[s], attn[s]
            for k in range(frames):
                dist_s[k] = 0.0
            for i in range(n_obs):
                qi = query[s, i]
                row = keys[i]
                for k in range(frames):
                    dist_s[k] += abs(row[k] - qi)
            nearest = dist_s[0]
            for k in range(1, frames):
                nearest = min(nearest, dist_s[k])
            for k in range(frames):
                attn_s[k] = (nearest - dist_s[k]) / t1  # the score minus its maximum, <= 0
            _exp_nonpositive(attn_s, bits)
            total = zero
            for k in range(frames):
                total += attn_s[k]
            for k in range(frames):
                attn_s[k] /= total
            for i in range(n_obs):
                acc = zero
                row = enc[i]
                for k in range(frames):
                    acc += attn_s[k] * row[k]
                emb[s, i] = acc
            for j in range(j_count):
                acc = zero
                for i in range(n_obs):
                    acc += W1[j, i] * emb[s, i]
                for k in range(m):
                    acc += W1[j, n_obs + k] * z[k]
                pre[s, j] = acc
                hid[s, j] = acc if acc > 0 else zero
            top = zero - np.inf
            for j in range(j_count):
                acc = zero
                for i in range(j_count):
                    acc += W2[j, i] * hid[s, i]
                out2[s, j] = acc
                top = max(top, -acc / t2)
            norm = 0.0
            for j in range(j_count):
                gate[s, j] = math.exp(-out2[s, j] / t2 - top)
                norm += gate[s, j]
            for j in range(j_count):
                gate[s, j] /= norm
            for k in range(m):
                phi[k] = z[k] if k < relu_from or z[k] > 0 else zero
            mix = mixed[s]
            for r in range(jm):
                mix[r] = 0.0
            for k in range(m):
                pk = phi[k]
                col = W_columns[k]
                for r in range(jm):
                    mix[r] += col[r] * pk
            for j in range(j_count):
                for k in range(m):
                    mix[j * m + k] += A[j, k] * z[k] + h[j, k]
            znext = zin[s + 1]
            for k in range(m):
                acc = zero
                for j in range(j_count):
                    acc += gate[s, j] * mix[j * m + k]
                znext[k] = acc
                if not abs(acc) <= largest:  # also catches NaN, which then sticks
                    largest = abs(acc)
            for i in range(n_obs):
                pred[s, i] = znext[i]
                diff = znext[i] - sequence[b, s + 1, i]
                sse += diff * diff
            if (s + 1) % interval == 0:
                for i in range(n_obs):
                    znext[i] = sequence[b, s + 1, i]

        # ---- backward ----
        for k in range(m):
            dz[k] = 0.0
        for s in range(steps - 1, -1, -1):
            if (s + 1) % interval == 0:
                for i in range(n_obs):
                    dz[i] = 0.0  # replaced by data: nothing flows back through these dims
            for i in range(n_obs):
                dz[i] += 2.0 * scale * (pred[s, i] - sequence[b, s + 1, i])
            z = zin[s]
            mix = mixed[s]
            # z' = sum_j gate_j f_j
            weighted = 0.0
            for j in range(j_count):
                acc = zero
                for k in range(m):
                    acc += dz[k] * mix[j * m + k]
                dw[j] = acc
                weighted += gate[s, j] * acc
            # gate = softmax(y), y = -out2 / |tau2|
            for j in range(j_count):
                dy = gate[s, j] * (dw[j] - weighted)
                d_t2 += dy * out2[s, j] / (t2 * t2)
                dw[j] = -dy / t2  # now the gradient on out2
            for i in range(j_count):
                acc = zero
                for j in range(j_count):
                    gW2[j, i] += dw[j] * hid[s, i]
                    acc += W2[j, i] * dw[j]
                du[i] = acc if pre[s, i] > 0 else zero
            for i in range(n_obs):
                dg[i] = 0.0
            for k in range(m):
                dzp[k] = 0.0
            for j in range(j_count):
                dj = du[j]
                for i in range(n_obs):
                    gW1[j, i] += dj * emb[s, i]
                    dg[i] += dj * W1[j, i]
                for k in range(m):
                    gW1[j, n_obs + k] += dj * z[k]
                    dzp[k] += dj * W1[j, n_obs + k]
            # experts: f_j = A_j * z + W_j phi(z) + h_j
            for j in range(j_count):
                g = gate[s, j]
                for k in range(m):
                    d = g * dz[k]
                    dmix[j * m + k] = d
                    gA[j, k] += d * z[k]
                    gh[j, k] += d
                    dzp[k] += d * A[j, k]
            for k in range(m):
                phi[k] = z[k] if k < relu_from or z[k] > 0 else zero
            for k in range(m):
                pk = phi[k]
                col, gcol = W_columns[k], gW_columns[k]
                acc = zero
                for r in range(jm):
                    gcol[r] += pk * dmix[r]
                    acc += col[r] * dmix[r]
                if k < relu_from or z[k] > 0:
                    dzp[k] += acc
            # attention: emb = sum_k a_k e_k, a = softmax(-dist / |tau1|), dist_k = |c_k - q|_1
            gbar = zero
            for i in range(n_obs):
                gbar += dg[i] * emb[s, i]
            dist_s, attn_s = dist[s], attn[s]
            for k in range(frames):
                work[k] = 0.0
            for i in range(n_obs):
                dgi, row = dg[i], enc[i]
                for k in range(frames):
                    work[k] += dgi * row[k]  # d emb / d a_k
            acc_t1 = zero
            for k in range(frames):
                ds = attn_s[k] * (work[k] - gbar)  # through the softmax
                acc_t1 += ds * dist_s[k]
                work[k] = -ds / t1  # now the gradient on dist_k
            d_t1 += acc_t1 / (t1 * t1)
            for i in range(n_obs):
                qi, dgi, row, grow = query[s, i], dg[i], keys[i], genc[i]
                acc = zero
                for k in range(frames):
                    delta = qi - row[k]
                    acc += work[k] if delta > 0 else (-work[k] if delta < 0 else zero)
                    grow[k] += attn_s[k] * dgi
                dq[i] = acc
            for i in range(n_obs):
                gsigma[i] += dq[i] * noise[b, s, i]
                for k in range(m):
                    gD[i, k] += dq[i] * z[k]
                    if not detach_query:
                        dzp[k] += dq[i] * D[i, k]
            for k in range(m):
                dz[k] = dzp[k]
        # z0[N:] = x B[:, N:]
        for i in range(n_obs):
            for k in range(n_obs, m):
                gB[i, k] += sequence[b, 0, i] * dz[k]
        # e_k = b + K_0 c_k + K_1 c_{k+1}
        for o in range(n_obs):
            acc_b = zero
            for k in range(frames):
                acc_b += genc[o, k]
            gconv_b[o] += acc_b
            for c in range(n_obs):
                acc0 = zero
                acc1 = zero
                for k in range(frames):
                    acc0 += genc[o, k] * keys[c, k]
                    acc1 += genc[o, k] * following[c, k]
                gconv_w[o, c, 0] += acc0
                gconv_w[o, c, 1] += acc1
    gtau[0] += d_t1 * (1.0 if tau1 >= 0 else -1.0)
    gtau[1] += d_t2 * (1.0 if tau2 >= 0 else -1.0)
    return sse, largest


@_compile
def _exp_nonpositive(x, bits):
    """x <- exp(x) in place for x <= 0, branch-free so that the loop vectorizes (numba has no vector exp here).

    exp(x) = 2**m exp(r) with x = m ln 2 + r, |r| <= ln(2) / 2; the degree-7 Taylor
    polynomial of exp(r) is exact to 6e-9 relative there, below float32 resolution.
    ``bits`` (int32, same length) is scratch space for the float32 bit patterns of 2**m.
    """
    # float32 constants: in float32 the loop stays in float32 (twice the vector width of float64).
    low = np.float32(NEGLIGIBLE_EXPONENT)
    for k in range(x.shape[0]):
        v = x[k]
        kept = v >= low
        v = max(v, low)
        octaves = np.floor(v * np.float32(LOG2_E) + np.float32(0.5))
        r = v - octaves * np.float32(LN2)
        p = np.float32(1.0 / 5040.0)
        p = p * r + np.float32(1.0 / 720.0)
        p = p * r + np.float32(1.0 / 120.0)
        p = p * r + np.float32(1.0 / 24.0)
        p = p * r + np.float32(1.0 / 6.0)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        p = p * r + np.float32(1.0)
        bits[k] = (np.int32(octaves) + np.int32(127)) << np.int32(23)  # float32 bit pattern of 2**octaves
        x[k] = p if kept else np.float32(0.0)
    scales = bits.view(np.float32)
    for k in range(x.shape[0]):
        x[k] *= scales[k]

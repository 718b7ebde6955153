"""The arithmetic of one DynaMix step that both compiled kernels share, operation for operation.

``per_series`` (one trajectory at a time) and ``batched`` (64 side by side) compute
every quantity of a step with the same IEEE operations in the same order, so a
trajectory's forecast is bit for bit the same on either kernel; "auto" may then pick the
faster kernel for the size of a call without a forecast depending on its neighbours.
What both follow:

- products with the weights (the query D z, W1 z, W2 h, W_j phi(z)) are fused
  multiply-add chains over the inner index in ascending order, starting from 0: what a
  BLAS product computes for each column of the batched kernel's tile.
  ``batched.matches_per_series`` checks this on the running machine, and "auto" falls
  back to the per-series kernel for small-path forecasts where it does not hold;
- the attention: L1 distances summed over dims in order, scaled by ``-1/tau1``, its
  maximum, the weights ``exp_below_zero(score - max)``, and weighted sums in float32
  over blocks of ``SUM_BLOCK`` consecutive frames (frames in order within a block),
  added block by block in float64; frames past a context's own length are padding
  that adds exactly 0;
- ``FASTMATH`` allows contraction into fused multiply-adds only: no reassociation, no
  reciprocal approximations, so no operation's rounding depends on how a loop was
  vectorized or on its trip count.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

# Frames per float32 partial sum of the attention, before it is added in float64: float32 throughput, and the
# error of a 32-term float32 sum rather than of a 2,000-term one.
SUM_BLOCK = 32
# Attention weights exp(x) with x < -60 count as zero. T of them change the attention by less than T * 1e-26
# relative, far below float32 resolution; and weights times encodings stay clear of float32 subnormals, whose
# arithmetic is two orders of magnitude slower.
NEGLIGIBLE_EXPONENT = np.float32(-60.0)
LOG2_E = np.float32(1 / math.log(2))
# ln 2 in two parts (Cody-Waite): o * LN2_HIGH is exact for integers |o| < 2**15, so x - o ln 2 keeps float32
# accuracy at any x, with or without fused multiply-adds.
LN2_HIGH = np.float32(0.693359375)
LN2_LOW = np.float32(math.log(2) - 0.693359375)
# 1.5 * 2**23: (x + ROUNDER) - ROUNDER rounds float32 x to the nearest integer.
ROUNDER = np.float32(12582912.0)
# Contraction only (see the module docstring). Non-finite states must stay NaN/inf, as in torch.
FASTMATH = {"contract"}


def compile_kernel(func, **extra):
    """numba.njit with the shared arithmetic flags, cached on disk where a cache directory is writable."""
    options = {"nogil": True, "fastmath": FASTMATH, "error_model": "numpy", **extra}
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:  # numba found no writable cache directory
        return numba.njit(**options)(func)


def compile_inline(func):
    """Inlined into its callers by numba itself, so that the loops calling it vectorize."""
    return compile_kernel(func, inline="always")


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits`` (a register move; a view through memory stops SIMD)."""
    signature = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return signature, codegen


@compile_inline
def exp_below_zero(x):
    """exp(x) for x <= 0 (NaN counts as far below), branch-free so that loops calling it vectorize.

    exp(x) = 2**o * exp(r) with x = o ln 2 + r, |r| <= ln(2) / 2 (o by the round-to-nearest float trick,
    which vectorizes where floor does not), exp(r) by a degree-5 polynomial: within 3e-7 relative of exp(x)
    on [-60, 0] with float32 rounding (tested); exp(x) = 0 below ``NEGLIGIBLE_EXPONENT``.
    """
    kept = x >= NEGLIGIBLE_EXPONENT
    v = x if kept else NEGLIGIBLE_EXPONENT
    octaves = (v * LOG2_E + ROUNDER) - ROUNDER  # no "reassoc": the rounding is not folded away
    r = (v - octaves * LN2_HIGH) - octaves * LN2_LOW
    p = np.float32(0.008298712782561779)  # a degree-5 polynomial fitted to minimize the largest relative error
    p = p * r + np.float32(0.041915446519851685)
    p = p * r + np.float32(0.1666755974292755)
    p = p * r + np.float32(0.49998894333839417)
    p = p * r + np.float32(0.9999997019767761)
    p = p * r + np.float32(1.0000001192092896)
    # 2**octaves from its float32 bit pattern (octaves + 127) * 2**23, exact in float32 for octaves in [-126, 0]
    scale = _float32_from_bits(np.int32((octaves + np.float32(127.0)) * np.float32(8388608.0)))
    return (p if kept else np.float32(0.0)) * scale

"""Gating noise: a counter-based generator, keyed by (seed, series content, path), indexed by (step, dim).

A trajectory's noise is a pure function of its 64-bit stream key and the (step, dim)
it is drawn for: no generator object, no state, nothing that depends on the batch,
the order of draws or how a horizon is split into blocks. Every backend computes the
same function (numpy here for the compiled CPU kernels, torch on the CPU or a GPU),
so a series gets the same noise alone, in any batch, partition, worker or process,
and on every backend.

The construction:

- stream key (64 bits) = mix64(mix64(mix64(seed) ^ unit key) + path), where mix64 is
  the splitmix64 finalizer, the seed is ``seed_entropy(random_state)`` folded to 64
  bits and the unit key is ``content_key`` of the raw values a unit forecasts;
- 32 random bits for counter c = 2 (step N + dim) + j, j in {0, 1}:
  fmix32(fmix32(c * 0x9E3779B9 + key_low) ^ key_high), with fmix32 the murmur3
  finalizer, all arithmetic modulo 2**32;
- a standard normal by Box-Muller from the two words u_j = (bits_j + 0.5) / 2**32:
  sqrt(-2 ln u_0) cos(2 pi u_1), computed in float64 and rounded to float32 (so
  libraries whose float64 log and cos differ in the last bit still agree in float32,
  but for the rare value on a rounding boundary).

The counter holds 32 bits, so a rollout covers at most ``MAX_STEPS`` steps of N dims.
"""

from __future__ import annotations

import hashlib
from numbers import Integral

import numpy as np

NOISE_CHUNK_STEPS = 1024  # steps per noise block the compiled kernels draw at a time
MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
GOLDEN32 = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive counters over the word
FMIX_1, FMIX_2 = 0x85EBCA6B, 0xC2B2AE35  # murmur3's finalizer constants
MIX64_1, MIX64_2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's
TWO_PI = 2 * np.pi


def max_steps(dims: int) -> int:
    """The longest horizon whose counters 2 (step N + dim) + j fit in 32 bits."""
    return 2**31 // dims


def seed_entropy(random_state) -> int:
    """A non-negative integer seed from an int, a numpy Generator, or None (fresh entropy)."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if isinstance(random_state, bool) or not isinstance(random_state, Integral) or random_state < 0:
        raise ValueError(f"random_state must be None, a non-negative int or a numpy Generator, got {random_state!r}.")
    return int(random_state)


def content_key(x: np.ndarray) -> int:
    """A stable 64-bit key of an array's shape and values, the same in every process."""
    digest = hashlib.blake2b(repr(x.shape).encode(), digest_size=8)
    digest.update(np.ascontiguousarray(x).data)  # the same bytes as tobytes(), without copying them
    return int.from_bytes(digest.digest(), "little")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(MIX64_1)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(MIX64_2)
    return x ^ (x >> np.uint64(31))


def stream_keys(entropy: int, unit_keys, n_paths: int, first_path: int = 1) -> np.ndarray:
    """(P*U,) uint64 stream keys of ``n_paths`` paths of every unit, path-major: path p of unit u at p*U + u.

    Rollout paths count from 1; path 0 is the stream of draws made while encoding a unit
    (``encoding_integers``).
    """
    seed = np.zeros(1, dtype=np.uint64)
    remaining = int(entropy)
    while True:  # fold an entropy of any size (SeedSequence gives 128 bits) into 64
        seed = _mix64(seed ^ np.uint64(remaining & MASK64))
        remaining >>= 64
        if not remaining:
            break
    units = _mix64(seed ^ np.asarray(unit_keys, dtype=np.uint64))  # (U,)
    paths = np.arange(first_path, first_path + n_paths, dtype=np.uint64)[:, None]  # (P, 1)
    return _mix64(units[None, :] + paths).reshape(-1)


def encoding_integers(entropy: int, unit_keys, count: int, low: int, high: int) -> np.ndarray:
    """(U, count) integers in [low, high] from each unit's path-0 stream: a function of seed and key only.

    Word c of a stream is the noise's word for counter c (``standard_normals`` draws on
    other streams), mapped to the range by a multiply and a shift.
    """
    keys = stream_keys(entropy, unit_keys, 1, first_path=0)
    low_word = (keys & np.uint64(MASK32)).astype(np.uint32)[:, None]
    high_word = (keys >> np.uint64(32)).astype(np.uint32)[:, None]
    counter = np.arange(count, dtype=np.uint32)[None, :]
    bits = _fmix32(_fmix32(counter * np.uint32(GOLDEN32) + low_word) ^ high_word).astype(np.uint64)
    return low + ((bits * np.uint64(high - low + 1)) >> np.uint64(32)).astype(np.int64)


def _fmix32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(FMIX_1)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(FMIX_2)
    return x ^ (x >> np.uint32(16))


def standard_normals(keys: np.ndarray, first_step: int, steps: int, dims: int) -> np.ndarray:
    """(B, steps, dims) float32 standard normals of streams ``keys`` (B,) uint64 for steps first_step...

    Row b, step t, dim i is the same number whatever the other keys and however the
    steps are split into calls.
    """
    if first_step + steps > max_steps(dims):
        raise ValueError(f"A rollout of {dims} dims covers at most {max_steps(dims)} steps.")
    keys = np.asarray(keys, dtype=np.uint64)
    low = (keys & np.uint64(MASK32)).astype(np.uint32)[:, None, None]  # (B, 1, 1)
    high = (keys >> np.uint64(32)).astype(np.uint32)[:, None, None]
    step = np.arange(first_step, first_step + steps, dtype=np.uint32)[:, None]
    counter = (step * np.uint32(dims) + np.arange(dims, dtype=np.uint32)) * np.uint32(2)  # (steps, dims)
    words = []
    for j in (0, 1):
        mixed = (counter + np.uint32(j)) * np.uint32(GOLDEN32) + low  # (B, steps, dims)
        words.append((_fmix32(_fmix32(mixed) ^ high).astype(np.float64) + 0.5) * 2.0**-32)
    return (np.sqrt(-2.0 * np.log(words[0])) * np.cos(TWO_PI * words[1])).astype(np.float32)


def standard_normals_torch(keys, first_step, steps: int, dims: int):
    """The numbers of ``standard_normals``, step-major (steps, B, dims) float32, computed by torch on keys' device.

    ``keys`` is a (B, 2) int64 tensor of the stream keys' low and high 32-bit words
    (``key_words``); ``first_step`` an int or a 0-dim int64 tensor on the same device (a
    tensor keeps the computation free of host values, so a CUDA graph can replay it).
    Torch has no wrapping uint32 product on every device, so words live in int64 and
    each product by a 32-bit constant is formed from 16-bit halves: nothing exceeds 2**49.
    """
    import torch

    device = keys.device
    step = torch.arange(steps, device=device, dtype=torch.int64) + first_step  # (steps,)
    counter = (step[:, None] * dims + torch.arange(dims, device=device)) * 2  # (steps, dims)
    low, high = keys[:, 0].view(1, -1, 1), keys[:, 1].view(1, -1, 1)  # (1, B, 1)
    words = []
    for j in (0, 1):
        mixed = (_mul32_torch(counter + j, GOLDEN32)[:, None, :] + low) & MASK32  # (steps, B, dims)
        bits = _fmix32_torch(_fmix32_torch(mixed) ^ high)
        words.append((bits.to(torch.float64) + 0.5) * 2.0**-32)
    return (torch.sqrt(-2.0 * torch.log(words[0])) * torch.cos(TWO_PI * words[1])).to(torch.float32)


def key_words(keys: np.ndarray) -> np.ndarray:
    """(B,) uint64 stream keys -> (B, 2) int64 low and high 32-bit words, for ``standard_normals_torch``."""
    keys = np.asarray(keys, dtype=np.uint64)
    return np.stack([keys & np.uint64(MASK32), keys >> np.uint64(32)], axis=1).astype(np.int64)


def _mul32_torch(x, constant: int):
    """(x * constant) mod 2**32 for int64 x in [0, 2**32), without overflowing int64."""
    low_half, high_half = constant & 0xFFFF, constant >> 16
    return (x * low_half + (((x * high_half) & 0xFFFF) << 16)) & MASK32


def _fmix32_torch(x):
    x = x ^ (x >> 16)
    x = _mul32_torch(x, FMIX_1)
    x = x ^ (x >> 13)
    x = _mul32_torch(x, FMIX_2)
    return x ^ (x >> 16)

"""Random streams: one numpy Generator per trajectory, keyed by seed, series content and path.

A trajectory's gating noise depends only on its own stream, never on the batch it
runs in, and drawing k then l steps yields the same numbers as one k + l draw, so
every rollout backend sees identical noise for the same seeds, and a series gets the
same forecast alone, in any batch, partition or worker.
"""

from __future__ import annotations

import hashlib
from numbers import Integral

import numpy as np

NOISE_CHUNK_STEPS = 1024


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
    digest = hashlib.blake2b(repr(x.shape).encode() + np.ascontiguousarray(x).tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


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

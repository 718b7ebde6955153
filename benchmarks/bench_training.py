"""Training speed: the fused compiled update against the torch autograd update of the v0.2 trainer, side by side.

Both trainers run full updates (batch sampling, loss and gradient, per-array
clipping, RAdam) of the shipped architecture on the same batches, on one thread,
at the same batch size. The torch side is the v0.2 trainer's update path: autograd
through ``sequence_length - 1`` steps with the gating query not detached (v0.2 also
capped per-sequence losses and clipped the global gradient norm instead of each
array's; both are a handful of small tensor operations per update). Rounds
alternate between the two, so that load from other work on the machine hits both
alike; the script prints the median time per sequence of each and their ratio
against the 4x bar.

    python benchmarks/bench_training.py [--batch-size 16] [--updates 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np
import torch

from dynamix_adapters.training.trainer import Trainer, TrainingConfig, sample_batch

BAR = 4.0


def synthetic_trajectories(count: int, length: int, seed: int) -> np.ndarray:
    """Standardized smooth oscillations (count, length, 3) at 50 points per period: the corpus' shape and density."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :, None] * (2 * np.pi / 50)
    frequencies = rng.uniform(0.5, 2.0, (count, 1, 3))
    phases = rng.uniform(0, 2 * np.pi, (count, 1, 3))
    x = np.sin(frequencies * t + phases) + 0.3 * np.sin(3.1 * frequencies * t)
    return ((x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)).astype(np.float32)


def time_updates(trainer: Trainer, batches: list) -> float:
    """Seconds per sequence over ``batches`` (each a full update)."""
    start = time.perf_counter()
    for batch in batches:
        trainer.step(batch)
    return (time.perf_counter() - start) / (len(batches) * trainer.config.batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--updates", type=int, default=20, help="updates per trainer per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default="outputs/bench_training", help="scratch folder for the trainers")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    base = TrainingConfig(name="bench", batch_size=args.batch_size, threads=1)
    configs = {
        "v0.2 (torch autograd)": replace(base, backend="torch", detach_query=False),
        "v0.3 (fused kernel)": replace(base, backend="fused"),
    }
    trajectories = synthetic_trajectories(34, 20_000, seed=0)
    rng = np.random.default_rng(1)
    batches = [sample_batch(trajectories, base, rng) for _ in range(args.updates)]
    trainers = {label: Trainer(config, args.output) for label, config in configs.items()}
    for label, trainer in trainers.items():
        start = time.perf_counter()
        trainer.step(batches[0])  # compiles the fused kernel (or loads it from numba's cache)
        print(f"{label}: first update {time.perf_counter() - start:.2f} s")
    seconds = {label: [] for label in trainers}
    for _ in range(args.rounds):
        for label, trainer in trainers.items():
            seconds[label].append(time_updates(trainer, batches))
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    print(f"\nbatch {args.batch_size}, {args.rounds} rounds x {args.updates} updates each, one thread")
    for label, value in medians.items():
        spread = f"{min(seconds[label]) * 1e3:.2f}-{max(seconds[label]) * 1e3:.2f}"
        print(f"{label:<24} {value * 1e3:7.2f} ms per sequence (rounds {spread})  {1 / value:7.1f} sequences/s")
    slow, fast = medians.values()
    ratio = slow / fast
    print(f"speed-up per sequence: {ratio:.1f}x  ({'pass' if ratio >= BAR else 'FAIL'}, bar {BAR:.0f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How D_stsp and D_H depend on the gating noise: a weight set with its sigma scaled by each factor.

Validation systems only, never the benchmark's: the distinct dysts systems of the training
corpus (``training_systems()``), each from a new perturbed start (data seed 7), 100 points
per period, context 1,000, horizon 10,000, forecast seeds 0-2; per system the median over
seeds, then the median over systems (the protocol of ``benchmarks/bench_weights.py``'s
held-out group). Trajectories are cached in ``--cache``.

    DYNAMIX_MODEL_DIR=../shared/models python scripts/gating_noise_scan.py  # the bundled default
    DYNAMIX_MODEL_DIR=../shared/models python scripts/gating_noise_scan.py --weights dynamix-3d-alrnn-v1.0
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_weights import score

from dynamix_adapters import load_model
from dynamix_adapters.training.corpus import CorpusConfig, generate_trajectory, training_systems
from dynamix_adapters.weights import BUNDLED_MODEL

CONTEXT, HORIZON, DATA_SEED, SEEDS = 1000, 10_000, 7, (0, 1, 2)


def validation_cases(cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if cache.exists():
        data = np.load(cache)
        return {name: (data[name][:CONTEXT], data[name][CONTEXT:]) for name in data.files}
    config = CorpusConfig(seed=DATA_SEED, points_per_period=(100, 100), workers=1)
    cases = {}
    for name in training_systems():
        trajectory = generate_trajectory(name, 0, CONTEXT + HORIZON, config)
        if trajectory is None:
            logging.warning("skipping %s: no bounded trajectory", name)
            continue
        cases[name] = (trajectory[:CONTEXT], trajectory[CONTEXT:])
    np.savez(cache, **{name: np.concatenate(pair) for name, pair in cases.items()})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=BUNDLED_MODEL)
    parser.add_argument("--factors", type=float, nargs="+", default=[0.8, 1.0, 1.25, 1.5, 2.0, 3.0])
    parser.add_argument("--cache", type=Path, default=Path("outputs/gating-noise-cases.npz"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    cases = validation_cases(args.cache)
    print(f"{len(cases)} systems: {', '.join(cases)}")
    base = load_model(args.weights)
    for factor in args.factors:
        model = copy.deepcopy(base)  # the cached model stays as loaded
        with torch.no_grad():
            model.gating_network.sigma.mul_(factor)
        runs = [score(model, cases, seed) for seed in SEEDS]
        medians = {
            metric: np.median([np.median([run[name][metric] for run in runs]) for name in cases])
            for metric in ("D_stsp", "D_H")
        }
        print(f"sigma x {factor:g}: median D_stsp {medians['D_stsp']:.3f}, median D_H {medians['D_H']:.4f}", flush=True)


if __name__ == "__main__":
    main()

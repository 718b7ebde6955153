"""Calibrated sample paths: do they stay on the attractor, and do their intervals cover?

Two parts, one thread:

- ``attractor``: lorenz63, chua and sprottM with their published contexts (the first 2,000,
  1,028 and 512 points of ../shared/data), 10,000 steps, 3 sample paths
  (``predict_samples`` with ``n_samples=3``), seeds 0-2. Median over paths and seeds of
  D_stsp and D_H against the next 10,000 points, for the default options and for the same
  weights' fixed settings (pos_embedding, stationary: uncalibrated), and their ratio.
- ``track-b``: Track B's "DynaMix auto" rows (``real_world.evaluate_model``: 9 datasets, 5
  expanding windows, 100 paths, median point forecast), per weight set and forecast seed
  (``--seeds``): coverage of the 80% and 95% intervals pooled over windows (the mean of the
  per-window coverages), and the median wQL and MASE over windows; then the median of each
  over the seeds, with the range of MASE.
- ``cost``: seconds of a default ``predict_quantiles`` (100 paths, horizon 18) on trending
  seasonal series, and of the same forecast from the chosen settings with and without the
  calibration (the chosen ``Selection`` with ``validation_errors=None``), both after the trend fits are
  cached: the calibration's share of a default forecast.

    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_calibration.py attractor
    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_calibration.py track-b --weights dynamix-3d-alrnn-v1.0
    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_calibration.py cost
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

FIXED = {"preprocessing": "pos_embedding", "nonstationary": False}
PUBLISHED_CONTEXTS = {"lorenz63": 2000, "chua": 1028, "sprottM": 512}
WEIGHTS = ["dynamix-3d-alrnn-v1.0", "dynamix-3d-adapters-v0.3"]
DATA = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared")) / "data"


def attractor(weight_sets: list[str], horizon: int, paths: int, seeds: list[int]) -> pd.DataFrame:
    """One row per weights, system, setting, seed and path: D_stsp and D_H of the path."""
    from dynamix_adapters.metrics import power_spectrum_distance, state_space_divergence
    from dynamix_adapters.pipeline import DynaMixPipeline

    rows = []
    for weights in weight_sets:
        for seed in seeds:
            default = DynaMixPipeline.from_pretrained(weights, random_state=seed, n_samples=paths)
            for setting, pipeline in (("default", default), ("fixed", default.with_options(**FIXED))):
                for system, length in PUBLISHED_CONTEXTS.items():
                    data = np.load(DATA / f"{system}.npy")
                    context, truth = data[:length], data[length : length + horizon]
                    samples = pipeline.predict_samples(context, horizon)  # (P, H, 3)
                    for p, path in enumerate(samples):
                        rows.append(
                            {
                                "weights": weights,
                                "system": system,
                                "setting": setting,
                                "seed": seed,
                                "path": p,
                                "D_stsp": state_space_divergence(truth, path),
                                "D_H": power_spectrum_distance(truth, path),
                            }
                        )
    return pd.DataFrame(rows)


def attractor_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Median over seeds and paths, default next to fixed, with the ratio default / fixed."""
    median = frame.groupby(["weights", "system", "setting"])[["D_stsp", "D_H"]].median().unstack("setting")
    for metric in ("D_stsp", "D_H"):
        median[(metric, "ratio")] = median[(metric, "default")] / median[(metric, "fixed")]
    return median.sort_index(axis=1)


def track_b(
    weight_sets: list[str], windows: int, n_samples: int, datasets: list[str] | None, seeds: list[int]
) -> pd.DataFrame:
    from dynamix_adapters.benchmark import real_world

    variants = {
        name: params
        for name, params in real_world.dynamix_variants(weight_sets, n_samples).items()
        if name.startswith("DynaMix auto")
    }
    rows = []
    for name in datasets or list(real_world.DATASETS):
        dataset = real_world.DATASETS[name]
        y = dataset.load()
        for model, params in variants.items():
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows.extend(real_world.evaluate_over_seeds(model, params, dataset, y, windows, seeds))
            print(f"{model} on {name}, {len(seeds)} seeds: {time.perf_counter() - started:.1f} s", flush=True)
    return pd.DataFrame(rows)


def track_b_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per weight set: each metric's median over forecast seeds of its per-seed value, and MASE's range.

    Per seed: coverage pooled over windows (the mean of the per-window coverages), median wQL and
    MASE over windows (``real_world.median_over_seeds``).
    """
    from dynamix_adapters.benchmark import real_world

    by_seed = frame.groupby(["model", "seed"]).agg(
        coverage_80=("coverage_80", "mean"),
        coverage_95=("coverage_95", "mean"),
        wQL=("wQL", "median"),
        MASE=("MASE", "median"),
        windows=("MASE", "count"),
    )
    summary = real_world.median_over_seeds(by_seed)
    return summary.rename(columns={"coverage_80": "coverage_80 (pooled)", "coverage_95": "coverage_95 (pooled)"})


def cost(weights: str, lengths: list[int], horizon: int, repeats: int) -> pd.DataFrame:
    from dataclasses import replace

    from dynamix_adapters.pipeline import DynaMixPipeline

    pipeline = DynaMixPipeline.from_pretrained(weights, random_state=0, n_samples=100)
    rng = np.random.default_rng(0)
    rows = []
    for length in lengths:
        t = np.arange(length)
        timings = {"default forecast": [], "forecast, calibrated": [], "forecast, uncalibrated": []}
        for repeat in range(repeats + 1):  # the first is a warm-up: compilation is not charged
            x = (100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + 2 * rng.standard_normal(length))[:, None]
            started = time.perf_counter()
            pipeline.predict_quantiles(x, horizon)  # everything: validation, trend fits, rollout, calibration
            default = time.perf_counter()
            # The same forecast with and without calibration, both after the (cached) trend fits.
            settings = pipeline.choose_settings(x)
            before = time.perf_counter()
            pipeline.predict_quantiles(x, horizon, settings=settings)
            calibrated = time.perf_counter()
            pipeline.predict_quantiles(x, horizon, settings=[replace(s, validation_errors=None) for s in settings])
            uncalibrated = time.perf_counter()
            if repeat:
                timings["default forecast"].append(default - started)
                timings["forecast, calibrated"].append(calibrated - before)
                timings["forecast, uncalibrated"].append(uncalibrated - calibrated)
        median = {name: float(np.median(seconds)) for name, seconds in timings.items()}
        added = median["forecast, calibrated"] - median["forecast, uncalibrated"]
        rows.append({"context": length, **median, "calibration / default forecast": added / median["default forecast"]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("attractor", "track-b", "cost"))
    parser.add_argument("--weights", nargs="+", default=WEIGHTS)
    parser.add_argument("--horizon", type=int, default=10_000)
    parser.add_argument("--paths", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="forecast seeds (attractor, track-b)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--datasets", nargs="+", default=None, help="Track B datasets (default: all)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[144, 512], help="cost: context lengths")
    parser.add_argument("--repeats", type=int, default=5, help="cost: timed calls per length")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as CSV here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    pd.set_option("display.width", 200)
    with threadpool_limits(1):
        if args.part == "attractor":
            frame = attractor(args.weights, args.horizon, args.paths, args.seeds)
            print(attractor_summary(frame).round(3).to_string())
        elif args.part == "track-b":
            frame = track_b(args.weights, args.windows, args.n_samples, args.datasets, args.seeds)
            print(track_b_summary(frame).round(4).to_string())
        else:
            frame = cost(args.weights[0], args.lengths, 18, args.repeats)
            print(frame.round(4).to_string(index=False))
    if args.output:
        frame.to_csv(args.output, index=False)


if __name__ == "__main__":
    main()

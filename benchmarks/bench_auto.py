"""What the default settings (auto preprocessing + calibrated paths) cost and change.

Two parts, one thread, official weights by default:

- ``cost``: seconds per forecast of one univariate series with the defaults against the
  same forecast with fixed settings (pos_embedding, stationary), for a point forecast
  ("path", one trajectory) and for quantiles over 100 calibrated paths (what an interval
  costs), next to statsforecast AutoARIMA and AutoETS on the same series. Every call gets a
  fresh series (new noise), so no cache helps. Median of ``--repeats`` after a warm-up.
- ``track-a``: Track A's protocol (dynamical.py: context 2,000, horizon 10,000, D_stsp,
  D_H, 10-step MASE) for DynaMix with the defaults against the fixed stationary setting,
  per weight set; prints the medians and what auto chose.

    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_auto.py cost
    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_auto.py track-a --max-systems 22
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

FIXED = {"preprocessing": "pos_embedding", "nonstationary": False}


def _series(length: int, rng: np.random.Generator) -> np.ndarray:
    """A trending monthly-seasonal series with noise, like the airline data."""
    t = np.arange(length)
    return 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + 2 * rng.standard_normal(length)


def cost(weights: str, lengths: list[int], horizon: int, repeats: int) -> pd.DataFrame:
    from statsforecast.models import AutoARIMA, AutoETS

    from dynamix_adapters.pipeline import DynaMixPipeline

    base = DynaMixPipeline.from_pretrained(weights, random_state=0, n_samples=100)
    cases = {
        "DynaMix auto, point (path)": lambda x: base.predict(x[:, None], horizon),
        "DynaMix fixed, point (path)": lambda x: base.with_options(**FIXED).predict(x[:, None], horizon),
        "DynaMix auto, quantiles (100 calibrated paths)": lambda x: base.predict_quantiles(x[:, None], horizon),
        "DynaMix fixed, quantiles (100 paths)": lambda x: base.with_options(**FIXED).predict_quantiles(
            x[:, None], horizon
        ),
        "AutoARIMA (season 12)": lambda x: AutoARIMA(season_length=12).forecast(y=x, h=horizon, level=[80]),
        "AutoETS (season 12)": lambda x: AutoETS(season_length=12).forecast(y=x, h=horizon, level=[80]),
    }
    rng = np.random.default_rng(0)
    rows = []
    for length in lengths:
        for name, run in cases.items():
            run(_series(length, rng))  # warm-up: compilation is not charged
            seconds = []
            for _ in range(repeats):
                x = _series(length, rng)
                start = time.perf_counter()
                run(x)
                seconds.append(time.perf_counter() - start)
            rows.append({"context": length, "horizon": horizon, "model": name, "seconds": float(np.median(seconds))})
    return pd.DataFrame(rows)


def track_a(weight_sets: list[str], max_systems: int | None, initial_conditions: int, cache: Path) -> pd.DataFrame:
    from dynamix_adapters.benchmark import dynamical
    from dynamix_adapters.pipeline import DynaMixPipeline

    systems = dynamical.benchmark_systems()[:max_systems]
    cases, _ = dynamical.build_cases(systems, initial_conditions, 2000, 10_000, 100, cache)
    table, chosen = {}, {}
    for weights in weight_sets:
        pipeline = DynaMixPipeline.from_pretrained(weights, random_state=dynamical.FORECAST_SEED)

        def auto(context, horizon, pipeline=pipeline, weights=weights):
            settings = pipeline.choose_settings(context)
            chosen.setdefault(weights, []).append(settings[0].nonstationary)
            return pipeline.sample_paths(context, horizon, 1, settings=settings)[0]

        table[f"DynaMix auto ({weights})"] = auto
        fixed = pipeline.with_options(**FIXED)
        table[f"DynaMix fixed ({weights})"] = lambda c, h, p=fixed: p.sample_paths(c, h, 1)[0]
    rows, _ = dynamical.run_track(cases, table, set())
    for weights, flags in chosen.items():
        print(f"{weights}: auto chose nonstationary in {sum(flags)} of {len(flags)} forecasts (incl. warm-up)")
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("cost", "track-a"))
    parser.add_argument("--weights", nargs="+", default=["dynamix-3d-alrnn-v1.0"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[144, 512])
    parser.add_argument("--horizon", type=int, default=18)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-systems", type=int, default=None)
    parser.add_argument("--initial-conditions", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("outputs/benchmark/cache"))
    parser.add_argument("--output", type=Path, default=None, help="write the rows as CSV here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with threadpool_limits(1):
        if args.part == "cost":
            frame = cost(args.weights[0], args.lengths, args.horizon, args.repeats)
            print(frame.to_string(index=False))
        else:
            frame = track_a(args.weights, args.max_systems, args.initial_conditions, args.cache)
            summary = frame.groupby("model", sort=False)[["D_stsp", "D_H", "MASE", "seconds"]].median()
            print(summary.to_string())
    if args.output:
        frame.to_csv(args.output, index=False)


if __name__ == "__main__":
    main()

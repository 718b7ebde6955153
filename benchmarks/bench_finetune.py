"""Fine-tuning: time on eight real series, scaling to 1,000 series, and Track B accuracy before and after.

Timing (``--part timing``): fine-tuning with the default ``FinetuneConfig`` on eight real
series of a few hundred points each (quarterly macro data, beer production, electricity
demand, a heart rate, a stock price), on one thread, against the 3-minute bar; then on
panels of 8, 125 and 1,000 series cut from them, printing seconds per series side by
side (linear scaling keeps that constant; fewer seconds per series is better than
linear). All runs use the same epochs (``patience`` set to ``epochs`` so early stopping
cannot make a panel look cheap), so the panels differ only in their number of series.

Accuracy (``--part accuracy``): Track B's datasets and windows (benchmark/real_world.py)
for DynaMix's defaults zero-shot, the same defaults fine-tuned on each dataset's
history before its first test window, and AutoETS: median MASE over all windows, the
ratio fine-tuned / zero-shot, mean 80% coverage, and a per-dataset table.

Development set (``--part dev``): the same comparison on the eight series above, which
Track B does not use, each cut into Track B's expanding windows (quarterly series:
horizon 8, season 4; the others horizon 6, no season). Fine-tuning settings can be
compared here (``--set``) without looking at Track B's test windows.

    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_finetune.py [--part timing accuracy]
    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_finetune.py --part accuracy --seeds 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import torch

from dynamix_adapters import DynaMixPipeline
from dynamix_adapters.benchmark import real_world
from dynamix_adapters.benchmark.report import markdown_table
from dynamix_adapters.training.finetune import FinetuneConfig, finetune
from dynamix_adapters.weights import DEFAULT_MODEL, OFFICIAL_MODEL, describe_models

BAR_SECONDS = 180
PANEL_SIZES = (8, 125, 1000)
SCALING_EPOCHS = 10


def eight_real_series() -> dict[str, np.ndarray]:
    """Eight real series of 150-500 points that Track B does not use (offline statsmodels and pmdarima data)."""
    import statsmodels.api as sm
    from pmdarima import datasets

    macro = sm.datasets.macrodata.load_pandas().data
    return {
        "realgdp (quarterly)": macro["realgdp"].to_numpy(float),
        "unemp (quarterly)": macro["unemp"].to_numpy(float),
        "infl (quarterly)": macro["infl"].to_numpy(float),
        "ausbeer (quarterly beer)": datasets.load_ausbeer(as_series=True).dropna().to_numpy(float),
        "taylor (half-hourly electricity)": datasets.load_taylor(as_series=True).to_numpy(float)[-480:],
        "heartrate": datasets.load_heartrate(as_series=True).to_numpy(float),
        "msft (daily close)": datasets.load_msft()["Close"].to_numpy(float)[-400:],
        "austres (quarterly residents)": datasets.load_austres(as_series=True).to_numpy(float),
    }


def panel(series: list[np.ndarray], size: int, seed: int = 0) -> list[np.ndarray]:
    """``size`` series cut from ``series``: random stretches of 80-100% of one, with a little noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(size):
        x = series[i % len(series)]
        length = int(len(x) * rng.uniform(0.8, 1.0))
        start = rng.integers(len(x) - length + 1)
        piece = x[start : start + length]
        out.append(piece + 0.01 * piece.std() * rng.standard_normal(length))
    return out


def timing(weights: str) -> None:
    torch.set_num_threads(1)
    real = eight_real_series()
    start = DynaMixPipeline.from_pretrained(weights, random_state=0)
    print(f"Fine-tuning {weights} with the default FinetuneConfig, one thread")
    for name, x in real.items():
        print(f"  {name:34s} {len(x):4d} points")
    t = time.perf_counter()
    result = finetune(start, list(real.values()), progress=False)
    seconds = time.perf_counter() - t
    print(
        f"8 real series: {seconds:.1f} s ({result.epochs_run} epochs, best {result.best_epoch}; held-out MSE "
        f"{result.start_score:.4f} -> {result.best_score:.4f}); bar {BAR_SECONDS} s: ratio {seconds / BAR_SECONDS:.2f}"
    )
    config = FinetuneConfig(epochs=SCALING_EPOCHS, patience=SCALING_EPOCHS)
    print(f"\nScaling, {SCALING_EPOCHS} epochs each (no early stop):")
    print("  series  seconds  s/series  vs 8 series (1.00 = linear, < 1 better)")
    base = None
    for size in PANEL_SIZES:
        t = time.perf_counter()
        finetune(start, panel(list(real.values()), size), config, progress=False)
        seconds = time.perf_counter() - t
        per_series = seconds / size
        base = base or per_series
        print(f"  {size:6d}  {seconds:7.1f}  {per_series:8.3f}  {per_series / base:.3f}")


def development_datasets() -> list[real_world.Dataset]:
    """The eight series as Track B datasets (frequency classes set horizon and season)."""
    real = eight_real_series()
    frequencies = {"quarterly": "quarterly", "half-hourly": "yearly", "daily": "yearly"}
    datasets = []
    for name, values in real.items():
        label = name.split(" (")[0]
        frequency = next((f for key, f in frequencies.items() if key in name), "yearly")
        series = pd.Series(values)
        datasets.append(real_world.Dataset(label, frequency, "bench_finetune.eight_real_series", lambda s=series: s))
    return datasets


def accuracy(
    weights: str, windows: int, config: FinetuneConfig, datasets: list[real_world.Dataset], seeds: list[int]
) -> None:
    """Zero-shot, fine-tuned (once per dataset) and AutoETS on every window, forecast with each of ``seeds``.

    One forecast seed's median MASE moves by up to 10% with the seed alone, so the summary
    is per seed, then the median over seeds; the per-window ratio fine-tuned / zero-shot
    pairs the two on the same window and seed.
    """
    rows, tuning = [], []
    folder = Path(tempfile.mkdtemp(prefix="dynamix-finetune-"))
    zero_name, tuned_name = f"DynaMix auto ({weights})", f"DynaMix fine-tuned ({weights})"
    parameters = real_world.dynamix_variants([weights], 100)[zero_name]
    for dataset in datasets:
        y = dataset.load()
        path = folder / f"{dataset.name}.safetensors"
        tuned, summary = real_world.finetune_on_history(parameters, dataset, y, windows, path, config)
        tuning.append(summary)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            autoets = real_world.evaluate_model(
                "AutoETS", real_world.baselines(dataset.season)["AutoETS"], dataset, y, windows
            )
            rows.extend({**row, "seed": seed} for seed in seeds for row in autoets)  # deterministic: one run
            for name, params in ((zero_name, parameters), (tuned_name, tuned)):
                rows.extend(real_world.evaluate_over_seeds(name, params, dataset, y, windows, seeds))
    frame = pd.DataFrame(rows)
    per_seed = frame.groupby(["model", "seed"], sort=False).agg(
        MASE=("MASE", "median"), coverage_80=("coverage_80", "mean"), coverage_95=("coverage_95", "mean")
    )
    summary = real_world.median_over_seeds(per_seed)
    print(f"medians over {len(seeds)} forecast seeds of each seed's median MASE and mean coverage:")
    print(summary.round(3).to_string())
    ratio = summary.loc[tuned_name, "MASE"] / summary.loc[zero_name, "MASE"]
    print(f"fine-tuned / zero-shot median MASE: {ratio:.3f} (bar <= 0.85)")
    print(f"fine-tuned / AutoETS median MASE: {summary.loc[tuned_name, 'MASE'] / summary.loc['AutoETS', 'MASE']:.3f}")
    paired = frame.pivot_table(index=["seed", "dataset", "window"], columns="model", values="MASE")
    ratios = np.log(paired[tuned_name] / paired[zero_name])
    by_seed = np.exp(ratios.groupby(level="seed").mean())
    print(
        f"per window and seed, fine-tuned / zero-shot MASE: geometric mean {np.exp(ratios.mean()):.3f} "
        f"(per seed {by_seed.min():.3f}-{by_seed.max():.3f}), better in {(ratios < 0).sum()} of {len(ratios)}, "
        f"worse in {(ratios > 0).sum()}"
    )
    by_dataset = frame.pivot_table(index="dataset", columns="model", values="MASE", aggfunc="median", sort=False)
    frame.to_csv(folder / "windows.csv", index=False)
    print(f"\nMedian MASE per dataset over windows and seeds (per-window rows in {folder / 'windows.csv'}):")
    print(markdown_table(by_dataset.round(3).reset_index()))
    print("\nFine-tuning runs:\n" + markdown_table(pd.DataFrame(tuning)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", choices=("timing", "accuracy", "dev"), default=["timing", "accuracy"])
    parser.add_argument("--windows", type=int, default=5, help="Track B forecast origins per dataset (default 5)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="FinetuneConfig overrides")
    parser.add_argument("--model", default=None, help="weights to start from (default: official where present)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="forecast seeds (accuracy, dev)")
    args = parser.parse_args()
    available = {row["name"] for row in describe_models() if row["available"]}
    weights = args.model or (OFFICIAL_MODEL if OFFICIAL_MODEL in available else DEFAULT_MODEL)
    defaults = FinetuneConfig()
    config = replace(defaults, **{k: type(getattr(defaults, k))(v) for k, v in (item.split("=") for item in args.set)})
    if "timing" in args.part:
        timing(weights)
    if "accuracy" in args.part:
        accuracy(weights, args.windows, config, list(real_world.DATASETS.values()), args.seeds)
    if "dev" in args.part:
        accuracy(weights, args.windows, config, development_datasets(), args.seeds)


if __name__ == "__main__":
    main()

"""The main job: a zero-shot DynaMix forecast of the Lorenz-63 attractor.

Run ``python -m dynamix_adapters.demo [--output DIR]``. It integrates Lorenz-63,
forecasts 10,000 steps from a 2,000-step context, prints the paper's metrics and
writes a plot of the forecast and the attractor.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from .forecast import forecast
from .metrics import mase, power_spectrum_distance, state_space_divergence
from .systems import lorenz63_trajectory
from .weights import DEFAULT_MODEL, describe_models, load_model

CONTEXT, HORIZON = 2000, 10_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("outputs"), help="folder for the plot")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="weight set name or path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    trajectory = lorenz63_trajectory(CONTEXT + HORIZON)
    trajectory = (trajectory - trajectory[:CONTEXT].mean(0)) / trajectory[:CONTEXT].std(0)
    context, truth = trajectory[:CONTEXT], trajectory[CONTEXT:]
    model = load_model(args.model)
    start = time.perf_counter()
    prediction = forecast(model, context, HORIZON, random_state=args.seed)
    elapsed = time.perf_counter() - start

    print(f"DynaMix ({args.model}) zero-shot forecast of Lorenz-63: context {CONTEXT}, horizon {HORIZON}")
    print(f"  forecast time       {elapsed:.2f} s")
    _print_scores(truth, prediction)
    print("  first 5 forecast steps (x, y, z):")
    for row in prediction[:5]:
        print("   ", np.array2string(row, precision=3))
    path = _plot(context, truth, prediction, args.output)
    print(f"  plots written to {path} and {path.with_name('lorenz63_attractor.png')}")
    others = [row["name"] for row in describe_models() if row["available"] and row["name"] != args.model]
    for name in others:
        print(f"For comparison, {name} on the same context and seed:")
        _print_scores(truth, forecast(name, context, HORIZON, random_state=args.seed))
    return 0


def _print_scores(truth: np.ndarray, prediction: np.ndarray) -> None:
    print(f"  D_stsp (geometry)   {state_space_divergence(truth, prediction):.3f}")
    print(f"  D_H (power spectra) {power_spectrum_distance(truth, prediction):.3f}")
    print(f"  MASE (10 steps)     {mase(truth, prediction):.3f}")


def _plot(context: np.ndarray, truth: np.ndarray, prediction: np.ndarray, folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from .plotting import plot_attractor, plot_forecast

    folder.mkdir(parents=True, exist_ok=True)
    shown = 600
    series = plot_forecast(
        context[-300:, 0], prediction[:shown, 0], truth=truth[:shown, 0], title="Lorenz-63 x: first 600 forecast steps"
    )
    attractor = plot_attractor(truth, prediction, title=f"Lorenz-63 attractor over {HORIZON:,} steps")
    path = folder / "lorenz63_forecast.png"
    series.savefig(path, dpi=110)
    attractor.savefig(folder / "lorenz63_attractor.png", dpi=110)
    return path


if __name__ == "__main__":
    raise SystemExit(main())

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
from .weights import DEFAULT_MODEL, load_model

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
    print(f"  D_stsp (geometry)   {state_space_divergence(truth, prediction):.3f}")
    print(f"  D_H (power spectra) {power_spectrum_distance(truth, prediction):.3f}")
    print(f"  MASE (10 steps)     {mase(truth, prediction):.3f}")
    print("  first 5 forecast steps (x, y, z):")
    for row in prediction[:5]:
        print("   ", np.array2string(row, precision=3))
    path = _plot(context, truth, prediction, args.output)
    print(f"  plot written to {path}")
    return 0


def _plot(context: np.ndarray, truth: np.ndarray, prediction: np.ndarray, folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(12, 4.5))
    series = fig.add_subplot(1, 2, 1)
    steps = 600
    series.plot(np.arange(-300, 0), context[-300:, 0], color="black", label="context")
    series.plot(np.arange(steps), truth[:steps, 0], color="gray", label="truth")
    series.plot(np.arange(steps), prediction[:steps, 0], color="tab:red", label="DynaMix")
    series.set(xlabel="step", ylabel="x (standardized)", title="Lorenz-63: first 600 forecast steps")
    series.legend()
    attractor = fig.add_subplot(1, 2, 2, projection="3d")
    attractor.plot(*truth.T, color="gray", lw=0.3, label="truth")
    attractor.plot(*prediction.T, color="tab:red", lw=0.3, alpha=0.8, label="DynaMix")
    attractor.set_title("attractor over 10,000 steps")
    attractor.legend()
    fig.tight_layout()
    path = folder / "lorenz63_forecast.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())

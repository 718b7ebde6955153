"""Fan plots of the default (calibrated) sample paths for docs/auto-and-calibration.md.

Two series, default options, 100 paths, seed 0, the bundled weights unless --weights says
otherwise: lorenz63 (../shared/data, the published 2,000-step context, 300 steps ahead, dim
x) and the airline passengers (sktime, the last 60 months held out). Each figure shows the
50/80/95% bands of the paths, three of the paths themselves, the truth, and where the
spread stops being matched to the validation error and becomes the model's own.

    DYNAMIX_MODEL_DIR=../shared/models python scripts/plot_calibration_fans.py --output docs/img/calibration
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib
import numpy as np

from dynamix_adapters.pipeline import DynaMixPipeline
from dynamix_adapters.plotting import plot_forecast
from dynamix_adapters.transforms.calibration import FADE_SPANS, MATCHED_SPANS

DATA = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared")) / "data"
SHOWN_CONTEXT = 200
SHOWN_PATHS = 3


def fan(pipeline: DynaMixPipeline, context: np.ndarray, truth: np.ndarray, dim: int, title: str, path: Path) -> Path:
    """Bands of the default paths of ``context`` (T, D), dim ``dim``, with three of the paths drawn."""
    horizon = len(truth)
    (choice,) = pipeline.choose_settings(context)
    samples = pipeline.predict_samples(context, horizon, settings=[choice])[:, :, dim]  # (P, H)
    point = np.median(samples, axis=0)
    fig = plot_forecast(
        context[-SHOWN_CONTEXT:, dim],
        point,
        truth=truth[:, dim],
        samples=samples,
        title=title,
    )
    ax = fig.axes[0]
    for p in range(SHOWN_PATHS):
        ax.plot(np.arange(horizon), samples[p], color="tab:blue", lw=0.6, alpha=0.8, label="paths" if p == 0 else None)
    spread = choice.dims[dim].spread if choice.dims else choice.spread
    if spread is not None:
        top = ax.get_ylim()[1]
        for steps, label in ((MATCHED_SPANS, "matched until here"), (MATCHED_SPANS + FADE_SPANS, "own from here")):
            ax.axvline(steps * int(spread.horizon[0]) - 1, color="gray", ls=":", lw=1)
            ax.text(steps * int(spread.horizon[0]) - 1, top, label, fontsize="small", va="top", ha="right", rotation=90)
    ax.legend(loc="lower left", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="weights name or path (default: the bundled weights)")
    parser.add_argument("--output", type=Path, default=Path("docs/img/calibration"))
    args = parser.parse_args()
    matplotlib.use("Agg")
    pipeline = DynaMixPipeline.from_pretrained(args.weights, random_state=0, n_samples=100)
    lorenz = np.load(DATA / "lorenz63.npy")
    print(fan(pipeline, lorenz[:2000], lorenz[2000:2300], 0, "lorenz63 (x)", args.output / "fan-lorenz63.png"))
    from sktime.datasets import load_airline

    airline = load_airline().to_numpy(float)[:, None]
    print(fan(pipeline, airline[:-60], airline[-60:], 0, "airline passengers", args.output / "fan-airline.png"))


if __name__ == "__main__":
    main()

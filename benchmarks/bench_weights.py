"""Bundled vs official weights, side by side, on the published protocol and the held-out dysts systems.

Both weight sets forecast the same contexts with the same seeds. Published protocol:
lorenz63 (context 2000), chua (1028) and sprottM (512) from ../shared/data, horizon
10,000. Held-out: every system in ``HELD_OUT_SYSTEMS`` (never seen in our training),
integrated from a benchmark seed that differs from the corpus seed; and the 14 of
them that the authors' corpus does not contain either, where both weight sets are
truly zero-shot. Each case is forecast with every seed in ``--seeds``; a case's score
is its median over seeds. Per group, the script prints the median over cases with
the interquartile range across cases, the ratio bundled / official against the 1.3x
acceptance bar, the amplitude ratio (forecast std / data std) on the published
series, and the fingerprint of both weight sets. A diverged forecast counts as +inf.

    python benchmarks/bench_weights.py [--bundled NAME_OR_PATH] [--official NAME_OR_PATH] [--seeds 0 1 2] [--markdown]
        [--plot attractors.png]

``--plot`` draws truth, official and bundled forecasts (first seed, whole horizon) of
the published series and Halvorsen as x-z projections, to see attractor against limit cycle.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from dynamix_adapters import forecast, load_model
from dynamix_adapters.metrics import power_spectrum_distance, state_space_divergence
from dynamix_adapters.rollout import DivergenceError
from dynamix_adapters.training.corpus import HELD_OUT_SYSTEMS, CorpusConfig, generate_trajectory
from dynamix_adapters.weights import BUNDLED_MODEL, OFFICIAL_MODEL

SHARED = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
PUBLISHED = {"lorenz63": 2000, "chua": 1028, "sprottM": 512}
OFFICIAL_FILE = SHARED / "models" / f"{OFFICIAL_MODEL}.safetensors"
# Held-out systems that the authors' training corpus contains (see the training recipe notes).
IN_AUTHORS_CORPUS = ("Aizawa", "Arneodo", "Rossler", "NewtonLiepnik", "Rucklidge", "ShimizuMorioka", "SprottK", "Chen")
BAR = 1.3
METRICS = ("D_stsp", "D_H")


def published_cases(horizon: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cases = {}
    for name, context_length in PUBLISHED.items():
        series = np.load(SHARED / "data" / f"{name}.npy")
        cases[name] = (series[:context_length], series[context_length : context_length + horizon])
    return cases


def held_out_cases(
    horizon: int, context_length: int, points_per_period: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    config = CorpusConfig(seed=seed, points_per_period=(points_per_period, points_per_period), workers=1)
    cases = {}
    for name in HELD_OUT_SYSTEMS:
        trajectory = generate_trajectory(name, 0, context_length + horizon, config)
        if trajectory is None:
            logging.warning("skipping %s: no bounded trajectory", name)
            continue
        cases[name] = (trajectory[:context_length], trajectory[context_length:])
    return cases


def score(model, cases: dict[str, tuple[np.ndarray, np.ndarray]], seed: int) -> dict[str, dict[str, float]]:
    """Per case: D_stsp, D_H and amplitude ratio of one forecast; all cases in one batched rollout if none diverges."""
    names = list(cases)
    contexts = [cases[name][0] for name in names]
    horizon = len(next(iter(cases.values()))[1])
    try:
        predictions = list(np.moveaxis(forecast(model, contexts, horizon, random_state=seed), 1, 0))
    except DivergenceError:
        # Streams are keyed by series content, so one-by-one forecasts equal the batched ones.
        predictions = []
        for context in contexts:
            try:
                predictions.append(forecast(model, context, horizon, random_state=seed))
            except DivergenceError:
                predictions.append(None)
    results = {}
    for name, predicted in zip(names, predictions, strict=True):
        truth = cases[name][1]
        if predicted is None:
            results[name] = {"D_stsp": np.inf, "D_H": np.inf, "amplitude": np.inf}
            continue
        d_stsp = state_space_divergence(truth, predicted)
        results[name] = {
            "D_stsp": np.inf if np.isnan(d_stsp) else d_stsp,
            "D_H": power_spectrum_distance(truth, predicted),
            "amplitude": float(np.mean(predicted.std(axis=0) / truth.std(axis=0))),
        }
    return results


def over_seeds(model, cases, seeds: list[int]) -> dict[str, dict[str, float]]:
    """Per case, the median of each score over the forecast seeds."""
    runs = [score(model, cases, seed) for seed in seeds]
    return {name: {key: float(np.median([run[name][key] for run in runs])) for key in runs[0][name]} for name in cases}


def fingerprint(model) -> dict[str, str]:
    """Summary numbers of a weight set: ranges over the experts, and the gating temperatures and noise."""
    a, w, h = (t.detach().double().numpy() for t in model.expert_stack())
    radius = [np.abs(np.linalg.eigvals(np.diag(a_j) + w_j)).max() for a_j, w_j in zip(a, w, strict=True)]
    gating = model.gating_network
    biases = max(layer.bias.abs().max().item() for layer in (gating.mlp_layer1, gating.mlp_layer2))

    def span(values) -> str:
        return f"{min(values):.2f} to {max(values):.2f}"

    return {
        "expert A means": span(a.mean(axis=1)),
        "expert A range": span([a.min(), a.max()]),
        "Frobenius norm of W": span(np.linalg.norm(w, axis=(1, 2))),
        "norm of h": span(np.linalg.norm(h, axis=1)),
        "spectral radius of diag(A)+W": span(radius),
        "tau1, tau2": f"{abs(gating.softmax_temp1.item()):.3f}, {abs(gating.softmax_temp2.item()):.3f}",
        "sigma": ", ".join(f"{abs(s):.3f}" for s in gating.sigma.detach().numpy()),
        "largest MLP bias": f"{biases:.2g}",
    }


def plot_attractors(models: dict, cases: dict[str, tuple[np.ndarray, np.ndarray]], seed: int, path: Path) -> Path:
    """One row per case, one column each for the truth and every model's forecast; x-z projections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = {"truth": None, **models}
    figure, axes = plt.subplots(len(cases), len(columns), figsize=(3 * len(columns), 3 * len(cases)), squeeze=False)
    for row, (name, (context, truth)) in enumerate(cases.items()):
        for column, (label, model) in enumerate(columns.items()):
            try:
                series = truth if model is None else forecast(model, context, len(truth), random_state=seed)
            except DivergenceError:
                series = np.full_like(truth, np.nan)
            axis = axes[row, column]
            axis.plot(series[:, 0], series[:, 2], linewidth=0.3)
            axis.set_xlim(*_padded(truth[:, 0]))
            axis.set_ylim(*_padded(truth[:, 2]))
            axis.set_title(f"{name}: {label}", fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _padded(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    margin = 0.15 * (high - low)
    return low - margin, high + margin


def summary(values: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range (25th, 75th percentile) over cases; diverged cases count as +inf.

    The quartiles take the nearest case rather than interpolating, which would turn inf - inf into NaN.
    """
    low, high = np.percentile(values, [25, 75], method="nearest")
    return float(np.median(values)), float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundled", default=BUNDLED_MODEL, help="bundled weight set name or path")
    parser.add_argument(
        "--official",
        default=str(OFFICIAL_FILE) if OFFICIAL_FILE.is_file() else OFFICIAL_MODEL,
        help="official weight set name or path (default: the copy in ../shared/models if present)",
    )
    parser.add_argument("--horizon", type=int, default=10_000)
    parser.add_argument("--held-out-context", type=int, default=1000)
    parser.add_argument("--points-per-period", type=int, default=100, help="sampling density of the held-out series")
    parser.add_argument("--data-seed", type=int, default=2024, help="seed of the held-out trajectories")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="forecast seeds, the same for both")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    parser.add_argument("--plot", type=Path, help="save attractor plots of the published series and Halvorsen here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    held_out = held_out_cases(args.horizon, args.held_out_context, args.points_per_period, args.data_seed)
    groups = {
        "published": published_cases(args.horizon),
        "held-out dysts": held_out,
        "held-out, in neither corpus": {k: v for k, v in held_out.items() if k not in IN_AUTHORS_CORPUS},
    }
    models = {"official": load_model(args.official), "bundled": load_model(args.bundled)}
    results = {}
    for label, model in models.items():
        start = time.perf_counter()
        per_case = over_seeds(model, {**groups["published"], **held_out}, args.seeds)
        results[label] = per_case
        logging.info(
            "%s: %d cases x %d seeds in %.1f s", label, len(per_case), len(args.seeds), time.perf_counter() - start
        )

    rows = []
    print(f"\n{'group':<28} {'metric':<7} {'official median [IQR]':>26} {'bundled median [IQR]':>26} {'ratio':>6}")
    for group, cases in groups.items():
        for metric in METRICS:
            official = summary([results["official"][name][metric] for name in cases])
            bundled = summary([results["bundled"][name][metric] for name in cases])
            ratio = bundled[0] / official[0]
            rows.append((group, len(cases), metric, official, bundled, ratio))
            print(
                f"{group:<28} {metric:<7} {official[0]:>8.3f} [{official[1]:.3f}, {official[2]:.3f}]"
                f" {bundled[0]:>8.3f} [{bundled[1]:.3f}, {bundled[2]:.3f}] {ratio:>6.2f}"
            )
    bar_groups = ("published", "held-out dysts")
    passed = all(ratio <= BAR for group, _, _, _, _, ratio in rows if group in bar_groups)
    print(f"\nacceptance (published and held-out ratios <= {BAR}): {'PASS' if passed else 'FAIL'}")
    print("\namplitude (forecast std / data std, median over seeds):")
    for name in PUBLISHED:
        official, bundled = results["official"][name]["amplitude"], results["bundled"][name]["amplitude"]
        print(f"  {name:<10} official {official:.2f}  bundled {bundled:.2f}")
    prints = {label: fingerprint(model) for label, model in models.items()}
    print("\nfingerprint:")
    for key in prints["official"]:
        print(f"  {key:<30} official {prints['official'][key]:<24} bundled {prints['bundled'][key]}")
    if args.plot is not None:
        plotted = {**groups["published"], **{k: v for k, v in held_out.items() if k == "Halvorsen"}}
        logging.info("attractor plots: %s", plot_attractors(models, plotted, args.seeds[0], args.plot))
    if args.markdown:
        print(
            f"\nForecast seeds {args.seeds}; per case the median over seeds; per group the median over cases [IQR].\n"
        )
        print("| group | cases | metric | official median [IQR] | bundled median [IQR] | ratio | <= 1.3x |")
        print("|---|---|---|---|---|---|---|")
        for group, count, metric, official, bundled, ratio in rows:
            print(
                f"| {group} | {count} | {metric} | {official[0]:.3f} [{official[1]:.3f}, {official[2]:.3f}] | "
                f"{bundled[0]:.3f} [{bundled[1]:.3f}, {bundled[2]:.3f}] | {ratio:.2f} | "
                f"{'yes' if ratio <= BAR else 'no'} |"
            )
        print("\n| series | official amplitude | bundled amplitude |\n|---|---|---|")
        for name in PUBLISHED:
            official, bundled = results["official"][name]["amplitude"], results["bundled"][name]["amplitude"]
            print(f"| {name} | {official:.2f} | {bundled:.2f} |")
        print("\n| quantity | official | bundled |\n|---|---|---|")
        for key in prints["official"]:
            print(f"| {key} | {prints['official'][key]} | {prints['bundled'][key]} |")
        print("\n| case | official D_stsp | bundled D_stsp | official D_H | bundled D_H | in authors' corpus |")
        print("|---|---|---|---|---|---|")
        for name in results["official"]:
            official, bundled = results["official"][name], results["bundled"][name]
            print(
                f"| {name} | {official['D_stsp']:.3f} | {bundled['D_stsp']:.3f} | "
                f"{official['D_H']:.3f} | {bundled['D_H']:.3f} | {'yes' if name in IN_AUTHORS_CORPUS else ''} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

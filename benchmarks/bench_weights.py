"""Bundled vs official weights, side by side, on the published protocol and the held-out dysts systems.

Both weight sets forecast the same contexts with the same seeds. Published protocol:
lorenz63 (context 2000), chua (1028) and sprottM (512) from ../shared/data, horizon
10,000. Held-out: every system in ``HELD_OUT_SYSTEMS`` (never seen in our training),
integrated from a benchmark seed that differs from the corpus seed; and the 14 of
them that the authors' corpus does not contain either, where both weight sets are
truly zero-shot. Each case is forecast with every seed in ``--seeds``; a case's score
is its median over seeds. Per group, the script prints the median over cases with
the interquartile range across cases, the ratio of each weight set to the official
ones, the amplitude ratio (forecast std / data std) on the published series, and the
fingerprint of every weight set. A diverged forecast counts as +inf. The published
series are also scored through ``DynaMixForecaster`` with its default settings, the
path a user takes.

    python benchmarks/bench_weights.py [--weights [LABEL=]NAME_OR_PATH ...] [--official NAME_OR_PATH]
        [--seeds 0 1 2] [--markdown] [--plot attractors.png]

``--track-b`` adds Track B's real series (sktime ``evaluate``, 9 datasets x 5 rolling
origins, ``DynaMixForecaster`` with default settings, 100 paths, median point forecast),
per weight set: median MASE, 80%/95% interval coverage and wQL.

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
METRICS = ("D_stsp", "D_H")
TRACK_B_METRICS = ("MASE", "coverage_80", "coverage_95", "wQL")


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


def sktime_default_cases(model_ref, cases: dict[str, tuple[np.ndarray, np.ndarray]], seeds: list[int]):
    """Per published case, the median over seeds of D_stsp and D_H of ``DynaMixForecaster`` with default settings.

    This is the path a user takes: a pandas frame into sktime, default options ("auto" selection and
    calibration), the point forecast out.
    """
    import pandas as pd

    from dynamix_adapters import DynaMixForecaster

    results = {}
    for name, (context, truth) in cases.items():
        runs = []
        for seed in seeds:
            forecaster = DynaMixForecaster(model=model_ref, random_state=seed).fit(pd.DataFrame(context))
            predicted = forecaster.predict(fh=np.arange(1, len(truth) + 1)).to_numpy()
            d_stsp = state_space_divergence(truth, predicted)
            runs.append(
                {"D_stsp": np.inf if np.isnan(d_stsp) else d_stsp, "D_H": power_spectrum_distance(truth, predicted)}
            )
        results[name] = {key: float(np.median([run[key] for run in runs])) for key in METRICS}
    return results


def track_b_defaults(model_ref) -> dict[str, tuple[float, float, float]]:
    """Track B with ``DynaMixForecaster``'s defaults: {metric: (median, 25th, 75th percentile)} over all windows."""
    import pandas as pd

    from dynamix_adapters import DynaMixForecaster
    from dynamix_adapters.benchmark import real_world

    # The suite's own "DynaMix auto" variant: the defaults, 100 paths, median point forecast.
    name, params = next(
        (name, params)
        for name, params in real_world.dynamix_variants([model_ref], n_samples=100).items()
        if name.startswith("DynaMix auto")
    )
    rows = []
    for dataset in real_world.DATASETS.values():
        forecaster = DynaMixForecaster(**params)
        rows += real_world.evaluate_model(name, forecaster, dataset, dataset.load(), windows=5)
    frame = pd.DataFrame(rows)
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        raise RuntimeError(f"Track B failed for {model_ref}: {failed['status'].tolist()}")
    # wQL is NaN on all-zero windows (PBS), which have no scale.
    return {metric: summary(frame[metric].dropna().tolist()) for metric in TRACK_B_METRICS}


def parse_weight_sets(values: list[str]) -> dict[str, str]:
    """``LABEL=NAME_OR_PATH`` items -> {label: reference}; a bare name is its own label."""
    weight_sets = {}
    for value in values:
        label, _, reference = value.rpartition("=")
        weight_sets[label or Path(reference).stem] = reference
    return weight_sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        nargs="+",
        default=[BUNDLED_MODEL],
        metavar="LABEL=NAME_OR_PATH",
        help="weight sets to compare with the official ones (names or .safetensors paths)",
    )
    parser.add_argument(
        "--official",
        default=str(OFFICIAL_FILE) if OFFICIAL_FILE.is_file() else OFFICIAL_MODEL,
        help="official weight set name or path (default: the copy in ../shared/models if present)",
    )
    parser.add_argument("--horizon", type=int, default=10_000)
    parser.add_argument("--held-out-context", type=int, default=1000)
    parser.add_argument("--points-per-period", type=int, default=100, help="sampling density of the held-out series")
    parser.add_argument("--data-seed", type=int, default=2024, help="seed of the held-out trajectories")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="forecast seeds, the same for all")
    parser.add_argument("--no-sktime", action="store_true", help="skip the published series through sktime's adapter")
    parser.add_argument("--track-b", action="store_true", help="also run Track B's real series with default settings")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    parser.add_argument("--plot", type=Path, help="save attractor plots of the published series and Halvorsen here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    held_out = held_out_cases(args.horizon, args.held_out_context, args.points_per_period, args.data_seed)
    published = published_cases(args.horizon)
    groups = {
        "published": published,
        "held-out dysts": held_out,
        "held-out, in neither corpus": {k: v for k, v in held_out.items() if k not in IN_AUTHORS_CORPUS},
    }
    references = {"official": args.official, **parse_weight_sets(args.weights)}
    models = {label: load_model(reference) for label, reference in references.items()}
    results, sktime_results = {}, {}
    for label, model in models.items():
        start = time.perf_counter()
        results[label] = over_seeds(model, {**published, **held_out}, args.seeds)
        if not args.no_sktime:
            sktime_results[label] = sktime_default_cases(references[label], published, args.seeds)
        logging.info("%s: scored in %.1f s", label, time.perf_counter() - start)
    if sktime_results:
        groups["published, sktime defaults"] = published
    candidates = [label for label in models if label != "official"]

    def scores(label: str, group: str, metric: str) -> list[float]:
        source = sktime_results if group == "published, sktime defaults" else results
        return [source[label][name][metric] for name in groups[group]]

    rows = []
    header = " ".join(f"{label + ' median [IQR]':>30} {'ratio':>6}" for label in candidates)
    print(f"\n{'group':<28} {'metric':<7} {'official median [IQR]':>26} {header}")
    for group in groups:
        for metric in METRICS:
            official = summary(scores("official", group, metric))
            others = [summary(scores(label, group, metric)) for label in candidates]
            ratios = [other[0] / official[0] for other in others]
            rows.append((group, len(groups[group]), metric, official, others, ratios))
            cells = " ".join(
                f"{o[0]:>12.3f} [{o[1]:.3f}, {o[2]:.3f}] {r:>6.2f}" for o, r in zip(others, ratios, strict=True)
            )
            print(f"{group:<28} {metric:<7} {official[0]:>8.3f} [{official[1]:.3f}, {official[2]:.3f}] {cells}")
    track_b = {label: track_b_defaults(references[label]) for label in models} if args.track_b else {}
    if track_b:
        print("\nTrack B, default settings (45 windows; median [IQR]; ratio = weight set / official):")
        for metric in TRACK_B_METRICS:
            official = track_b["official"][metric]
            print(
                f"  {metric:<12} "
                + "  ".join(
                    f"{label} {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] ({v[0] / official[0]:.2f})"
                    for label, v in ((label, track_b[label][metric]) for label in models)
                )
            )
    print("\namplitude (forecast std / data std, median over seeds):")
    for name in PUBLISHED:
        print(f"  {name:<10} " + "  ".join(f"{label} {results[label][name]['amplitude']:.2f}" for label in models))
    prints = {label: fingerprint(model) for label, model in models.items()}
    print("\nfingerprint:")
    for key in prints["official"]:
        print(f"  {key:<30} " + "  ".join(f"{label} {prints[label][key]:<22}" for label in models))
    if args.plot is not None:
        plotted = {**published, **{k: v for k, v in held_out.items() if k == "Halvorsen"}}
        logging.info("attractor plots: %s", plot_attractors(models, plotted, args.seeds[0], args.plot))
    if args.markdown:
        print(
            f"\nForecast seeds {args.seeds}; per case the median over seeds; per group the median over cases [IQR]; "
            "ratio = weight set / official.\n"
        )
        print("| group | cases | metric | official | " + " | ".join(f"{c} | ratio" for c in candidates) + " |")
        print("|---|---|---|---|" + "---|---|" * len(candidates))
        for group, count, metric, official, others, ratios in rows:
            cells = " | ".join(
                f"{o[0]:.3f} [{o[1]:.3f}, {o[2]:.3f}] | {r:.2f}" for o, r in zip(others, ratios, strict=True)
            )
            print(
                f"| {group} | {count} | {metric} | {official[0]:.3f} [{official[1]:.3f}, {official[2]:.3f}] | {cells} |"
            )
        if track_b:
            print("\n| Track B, defaults | " + " | ".join(models) + " |")
            print("|---|" + "---|" * len(models))
            for metric in TRACK_B_METRICS:
                print(
                    f"| {metric} | "
                    + " | ".join(f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for v in (track_b[m][metric] for m in models))
                    + " |"
                )
        print("\n| series | " + " | ".join(f"{label} amplitude" for label in models) + " |")
        print("|---|" + "---|" * len(models))
        for name in PUBLISHED:
            print(f"| {name} | " + " | ".join(f"{results[label][name]['amplitude']:.2f}" for label in models) + " |")
        print("\n| quantity | " + " | ".join(models) + " |")
        print("|---|" + "---|" * len(models))
        for key in prints["official"]:
            print(f"| {key} | " + " | ".join(prints[label][key] for label in models) + " |")
        d_stsp_columns = " | ".join(f"{label} D_stsp" for label in models)
        d_h_columns = " | ".join(f"{label} D_H" for label in models)
        print(f"\n| case | {d_stsp_columns} | {d_h_columns} | in authors' corpus |")
        print("|---|" + "---|" * (2 * len(models) + 1))
        for name in results["official"]:
            d_stsp = " | ".join(f"{results[label][name]['D_stsp']:.3f}" for label in models)
            d_h = " | ".join(f"{results[label][name]['D_H']:.3f}" for label in models)
            print(f"| {name} | {d_stsp} | {d_h} | {'yes' if name in IN_AUTHORS_CORPUS else ''} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bundled vs official weights, side by side, on the published protocol and the held-out dysts systems.

Both weight sets forecast the same contexts with the same seeds. Published protocol:
lorenz63 (context 2000), chua (1028) and sprottM (512) from ../shared/data, horizon
10,000. Held-out: every system in ``HELD_OUT_SYSTEMS`` (never seen in training),
integrated from a benchmark seed that differs from the corpus seed. Per group, the
script prints the median D_stsp and D_H of each weight set and the ratio bundled /
official against the 1.3x acceptance bar. A diverged forecast counts as +inf.

    python benchmarks/bench_weights.py [--bundled NAME_OR_PATH] [--official NAME_OR_PATH] [--markdown]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from dynamix_adapters.engine import DivergenceError
from dynamix_adapters.forecast import forecast
from dynamix_adapters.metrics import power_spectrum_distance, state_space_divergence
from dynamix_adapters.training.corpus import HELD_OUT_SYSTEMS, CorpusConfig, generate_trajectory
from dynamix_adapters.weights import BUNDLED_MODEL, OFFICIAL_MODEL, load_model

SHARED = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
PUBLISHED = {"lorenz63": 2000, "chua": 1028, "sprottM": 512}
OFFICIAL_FILE = SHARED / "models" / f"{OFFICIAL_MODEL}.safetensors"
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
    """Per case: D_stsp and D_H of one forecast; all cases in one batched rollout when none diverges."""
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
            results[name] = dict.fromkeys(METRICS, np.inf)
            continue
        d_stsp = state_space_divergence(truth, predicted)
        results[name] = {
            "D_stsp": np.inf if np.isnan(d_stsp) else d_stsp,
            "D_H": power_spectrum_distance(truth, predicted),
        }
    return results


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
    parser.add_argument("--seed", type=int, default=0, help="forecast seed, the same for both weight sets")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    groups = {
        "published": published_cases(args.horizon),
        "held-out dysts": held_out_cases(args.horizon, args.held_out_context, args.points_per_period, args.data_seed),
    }
    models = {"official": load_model(args.official), "bundled": load_model(args.bundled)}
    results = {}
    for label, model in models.items():
        for group, cases in groups.items():
            start = time.perf_counter()
            results[label, group] = score(model, cases, args.seed)
            logging.info("%s on %s: %d forecasts in %.1f s", label, group, len(cases), time.perf_counter() - start)

    rows = []
    print(f"\n{'case':<16} {'official D_stsp':>15} {'bundled D_stsp':>15} {'official D_H':>13} {'bundled D_H':>12}")
    for group, cases in groups.items():
        for name in cases:
            official, bundled = results["official", group][name], results["bundled", group][name]
            print(
                f"{name:<16} {official['D_stsp']:>15.3f} {bundled['D_stsp']:>15.3f} "
                f"{official['D_H']:>13.3f} {bundled['D_H']:>12.3f}"
            )
    print(f"\n{'group':<16} {'metric':<7} {'official median':>15} {'bundled median':>15} {'ratio':>7}  bar {BAR}x")
    passed = True
    for group in groups:
        for metric in METRICS:
            official = float(np.median([r[metric] for r in results["official", group].values()]))
            bundled = float(np.median([r[metric] for r in results["bundled", group].values()]))
            ratio = bundled / official
            passed &= ratio <= BAR
            rows.append((group, metric, official, bundled, ratio))
            verdict = "pass" if ratio <= BAR else "FAIL"
            print(f"{group:<16} {metric:<7} {official:>15.3f} {bundled:>15.3f} {ratio:>7.2f}  {verdict}")
    print(f"\nacceptance (every ratio <= {BAR}): {'PASS' if passed else 'FAIL'}")
    if args.markdown:
        print("\n| group | metric | official median | bundled median | ratio | <= 1.3x |\n|---|---|---|---|---|---|")
        for group, metric, official, bundled, ratio in rows:
            print(
                f"| {group} | {metric} | {official:.3f} | {bundled:.3f} | {ratio:.2f} | "
                f"{'yes' if ratio <= BAR else 'no'} |"
            )
        print("\n| case | official D_stsp | bundled D_stsp | official D_H | bundled D_H |\n|---|---|---|---|---|")
        for group, cases in groups.items():
            for name in cases:
                official, bundled = results["official", group][name], results["bundled", group][name]
                print(
                    f"| {name} | {official['D_stsp']:.3f} | {bundled['D_stsp']:.3f} | "
                    f"{official['D_H']:.3f} | {bundled['D_H']:.3f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

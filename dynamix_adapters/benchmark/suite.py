"""The benchmark suite's orchestration: settings, tracks, report; see the package docstring.

>>> QUICK.max_systems, FULL.horizon
(2, 10000)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..weights import BUNDLED_MODEL, OFFICIAL_MODEL, PREVIOUS_BUNDLED_MODELS, describe_models
from . import chronos_timing, dynamical, real_world, report

__all__ = ["FULL", "QUICK", "Settings", "build_parser", "main", "run"]

logger = logging.getLogger(__name__)

TRACKS = ("a", "b", "timing")
MIN_SYSTEMS = 20
PLOT_SYSTEMS = 3
FAN_DATASETS = ("airline", "lynx")
DARTS_DATASET = "airline"


@dataclass(frozen=True)
class Settings:
    """How much one run covers."""

    max_systems: int | None  # None: every eligible system
    initial_conditions: int
    context_length: int
    horizon: int
    points_per_period: int
    datasets: tuple[str, ...]
    windows: int
    n_samples: int
    chronos_models: tuple[str, ...]
    timing_context: int
    timing_horizon: int
    timing_repeats: int


FULL = Settings(
    max_systems=None,
    initial_conditions=3,
    context_length=2000,
    horizon=10_000,
    points_per_period=100,
    datasets=tuple(real_world.DATASETS),
    windows=5,
    n_samples=100,
    chronos_models=tuple(chronos_timing.CHRONOS_MODELS),
    timing_context=512,
    timing_horizon=64,
    timing_repeats=3,
)
QUICK = Settings(
    max_systems=2,
    initial_conditions=1,
    context_length=1000,
    horizon=1000,
    points_per_period=100,
    datasets=FAN_DATASETS,
    windows=2,
    n_samples=50,
    chronos_models=("chronos-t5-tiny", "chronos-bolt-tiny"),
    timing_context=512,
    timing_horizon=16,
    timing_repeats=1,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamix-adapters benchmark",
        description="Benchmark DynaMix against ARIMA, ETS, Theta, naive forecasters and Chronos.",
    )
    parser.add_argument("--quick", action="store_true", help="a small run for CI (about 2 minutes)")
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmark"), help="results folder")
    parser.add_argument("--tracks", nargs="+", choices=TRACKS, default=list(TRACKS), help="parts to run (default: all)")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes that integrate the Track A trajectories (default 1)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.workers < 1:
        print(f"dynamix-adapters benchmark: error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    command = "python -m dynamix_adapters.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv)
    settings = QUICK if args.quick else FULL
    try:
        path = run(settings, args.output, args.tracks, not args.no_progress, command.strip(), args.workers)
    except (FileNotFoundError, ImportError) as err:
        print(f"dynamix-adapters benchmark: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def run(
    settings: Settings, output: Path, tracks=TRACKS, progress: bool = True, command: str = "", workers: int = 1
) -> Path:
    """Run the chosen tracks, write CSVs, plots and ``report.md`` into ``output``; return the report's path."""
    # The official weights, the default and the previous default: older bundled sets stay loadable, not benchmarked.
    compared = (OFFICIAL_MODEL, BUNDLED_MODEL, *PREVIOUS_BUNDLED_MODELS[:1])
    weight_sets = [row["name"] for row in describe_models() if row["available"] and row["name"] in compared]
    if not weight_sets:
        raise FileNotFoundError(
            "No DynaMix weights are available offline. Set DYNAMIX_MODEL_DIR to a folder holding "
            "dynamix-3d-alrnn-v1.0.safetensors, or install a build that ships the bundled weights."
        )
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sections = [_header(settings, weight_sets, report.provenance(command))]
    with _single_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # statsforecast's ARIMA reports every optimizer hiccup; the scores already show the outcome.
        warnings.filterwarnings("ignore", category=UserWarning, module="statsforecast")
        if "a" in tracks:
            sections.append(_track_a(settings, weight_sets, output, progress, workers))
        if "b" in tracks:
            sections.append(_track_b(settings, weight_sets, output, progress))
        if "timing" in tracks:
            sections.append(_timing(settings, weight_sets[0], output, progress))
    minutes = (time.perf_counter() - started) / 60
    sections.insert(1, f"Total wall time: {minutes:.1f} min.\n")
    path = output / "report.md"
    path.write_text("\n".join(sections))
    return path


class _single_thread:
    """One thread for torch, the compiled rollout and BLAS, so that every model is timed alike."""

    def __enter__(self):
        import torch
        from threadpoolctl import threadpool_limits

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self._limits = threadpool_limits(1)
        return self

    def __exit__(self, *exc):
        import torch

        self._limits.restore_original_limits()
        torch.set_num_threads(self._threads)


def _bar(progress: bool, total: int, desc: str):
    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


def _header(settings: Settings, weight_sets: list[str], origin: dict[str, str]) -> str:
    missing = [row["name"] for row in describe_models() if not row["available"]]
    lines = [
        "# DynaMix benchmark",
        "",
        f"- Command: `{origin['command']}`",
        f"- Commit: `{origin['commit']}`",
        f"- Versions: {origin['versions']}",
        f"- Machine: {origin['machine']}",
        f"- DynaMix weight sets: {', '.join(weight_sets)}"
        + (f" (not available offline, not run: {', '.join(missing)})" if missing else ""),
        f"- Settings: {', '.join(f'{k}={v}' for k, v in asdict(settings).items() if k != 'datasets')}",
        "",
    ]
    return "\n".join(lines)


def _track_a(settings: Settings, weight_sets: list[str], output: Path, progress: bool, workers: int) -> str:
    eligible = dynamical.benchmark_systems()
    systems = eligible[: settings.max_systems]
    bar = _bar(progress, len(systems) * settings.initial_conditions, "Track A: integrating")
    cases, skipped = dynamical.build_cases(
        systems,
        settings.initial_conditions,
        settings.context_length,
        settings.horizon,
        settings.points_per_period,
        output / "cache",
        workers,
        bar.update,
    )
    bar.close()
    table = dynamical.models(weight_sets)
    bar = _bar(progress, len(cases) * len(table), "Track A: forecasting")
    rows, kept = dynamical.run_track(cases, table, set(systems[:PLOT_SYSTEMS]), bar.update)
    bar.close()
    frame = pd.DataFrame(rows)
    frame.to_csv(output / "track_a_cases.csv", index=False)
    summary = report.summarize(frame, "model", list(dynamical.METRICS))
    summary.to_csv(output / "track_a_summary.csv", index=False)
    seconds = frame.groupby("model", sort=False)["seconds"].median().rename("s per forecast").reset_index()
    plots = _track_a_plots(frame, cases, kept, systems[:PLOT_SYSTEMS], weight_sets, output / "plots")
    shortfall = (
        f" Only {len(eligible)} systems are eligible (fewer than {MIN_SYSTEMS}): the held-out list is too short."
        if len(eligible) < MIN_SYSTEMS and settings.max_systems is None
        else ""
    )
    return "\n".join(
        [
            "## Track A: long-term statistics on chaotic systems",
            "",
            f"{len(systems)} systems x {settings.initial_conditions} initial conditions ({len(cases)} cases"
            + (f"; skipped, no bounded trajectory: {', '.join(skipped)}" if skipped else "")
            + f"), context {settings.context_length}, horizon {settings.horizon}, "
            f"{settings.points_per_period} points per period, standardized.{shortfall}",
            "",
            f"Systems: {', '.join(systems)}.",
            "",
            "Median [25th, 75th percentile] over cases; lower is better. A failed forecast scores inf.",
            "",
            report.markdown_table(report.wide_summary(summary, "model", seconds)),
            "",
            *[f"![{p.stem}](plots/{p.name})" for p in plots],
            "",
        ]
    )


def _track_a_plots(frame, cases, kept, systems, weight_sets, folder: Path) -> list[Path]:
    truths = {c.system: c.truth for c in cases if c.initial_condition == 0}
    plots = [
        report.box_plots(
            frame, list(dynamical.METRICS), "Track A", folder / "track_a_boxplots.png", log_metrics=("MASE",)
        )
    ]
    for system in systems:
        if system not in truths:
            continue
        for model in [*(f"DynaMix ({w})" for w in weight_sets), "AutoARIMA (per dim)"]:
            if (system, model) in kept:
                slug = _slug(f"{system}-{model}")
                plots.append(
                    report.attractor_plot(truths[system], kept[(system, model)], system, model, folder / f"{slug}.png")
                )
        model = f"DynaMix ({weight_sets[0]})"
        if (system, model) in kept:
            path = folder / f"{_slug(system)}-spectra.png"
            plots.append(report.spectra_plot(truths[system], kept[(system, model)], system, model, path))
    return plots


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def _track_b(settings: Settings, weight_sets: list[str], output: Path, progress: bool) -> str:
    from ..sktime_forecaster import DynaMixForecaster

    variants = real_world.dynamix_variants(weight_sets, settings.n_samples)
    tuned_variants = real_world.finetuned_variants(weight_sets, settings.n_samples)
    chronos = real_world.local_chronos_models()
    datasets = [real_world.DATASETS[name] for name in settings.datasets]
    n_models = len(variants) + len(tuned_variants) + len(real_world.baselines(1)) + len(chronos)
    bar = _bar(progress, len(datasets) * n_models + 1, "Track B: evaluating")
    rows, descriptions, series, tuning = [], [], {}, []
    (output / "finetuned").mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        y = dataset.load()
        series[dataset.name] = y
        descriptions.append(
            {
                "dataset": dataset.name,
                "source": dataset.source,
                "frequency": dataset.frequency,
                "observations": len(y),
                "horizon": dataset.horizon,
                "season": dataset.season,
                "windows": settings.windows,
            }
        )
        forecasters = {name: DynaMixForecaster(**params) for name, params in variants.items()}
        for name, params in tuned_variants.items():
            path = output / "finetuned" / f"{dataset.name}-{_slug(params['model'])}.safetensors"
            tuned, summary = real_world.finetune_on_history(params, dataset, y, settings.windows, path)
            forecasters[name] = DynaMixForecaster(**tuned)
            tuning.append({"model": name, **summary})
        forecasters.update(real_world.baselines(dataset.season))
        forecasters.update(_chronos_forecasters(chronos))
        for name, forecaster in forecasters.items():
            rows.extend(real_world.evaluate_model(name, forecaster, dataset, y, settings.windows))
            bar.update()
    frame = pd.DataFrame(rows)
    frame.to_csv(output / "track_b_windows.csv", index=False)
    metrics = ["MASE", "sMAPE", "coverage_80", "coverage_95", "wQL"]
    summary = report.summarize(frame, "model", metrics)
    summary.to_csv(output / "track_b_summary.csv", index=False)
    seconds = (
        frame.groupby("model", sort=False)[["seconds_point", "seconds_with_intervals"]]
        .median()
        .rename(columns={"seconds_point": "s per point forecast", "seconds_with_intervals": "s with intervals"})
        .reset_index()
    )
    wide = report.wide_summary(summary, "model", seconds)
    if not chronos:
        not_run = {"model": "Chronos (sktime ChronosForecaster)", "MASE": real_world.CHRONOS_NOT_RUN}
        wide = pd.concat([wide.astype(object), pd.DataFrame([not_run])]).fillna("")
    by_dataset = frame.pivot_table(index="model", columns="dataset", values="MASE", aggfunc="median", sort=False)
    by_dataset = by_dataset[[d.name for d in datasets if d.name in by_dataset.columns]].reset_index()
    by_dataset.to_csv(output / "track_b_mase_by_dataset.csv", index=False)
    tuning_frame = pd.DataFrame(tuning)
    tuning_frame.to_csv(output / "track_b_finetuning.csv", index=False)

    darts_section = ""
    if DARTS_DATASET in series:
        darts_section = _darts(settings, variants, frame, series[DARTS_DATASET], output)
    bar.update()
    bar.close()
    plots = [
        report.box_plots(frame, ["MASE", "sMAPE"], "Track B", output / "plots" / "track_b_boxplots.png", ("MASE",))
    ]
    plots += _fans(settings, weight_sets[0], series, output / "plots")
    return "\n".join(
        [
            "## Track B: short-term accuracy on real series (sktime evaluate)",
            "",
            report.markdown_table(pd.DataFrame(descriptions)),
            "",
            "Expanding windows; median [25th, 75th percentile] over all windows of all datasets. "
            "MASE is scaled by the in-sample seasonal naive error; sMAPE in percent; coverage is the "
            "share of test points inside the 80% / 95% interval (ideal: 0.8 / 0.95); wQL is the weighted "
            "quantile loss over the 10%..90% quantiles (2 x mean pinball loss / mean |y|; lower is better). "
            "DynaMix point forecasts are the median of its sample paths; DynaMix auto is the default settings "
            "(preprocessing and nonstationary chosen per window by in-context validation, calibrated paths).",
            "",
            report.markdown_table(wide),
            "",
            "Median MASE per dataset:",
            "",
            report.markdown_table(by_dataset),
            "",
            "DynaMix fine-tuned: the auto defaults with weights fine-tuned (training/finetune.py, default "
            "settings) on each dataset's history before its first test window, then forecasting every window. "
            "The fine-tuning runs (held-out MSE of the starting and of the chosen weights, seconds):",
            "",
            report.markdown_table(tuning_frame),
            "",
            darts_section,
            *[f"![{p.stem}](plots/{p.name})" for p in plots],
            "",
        ]
    )


def _chronos_forecasters(chronos: dict[str, Path]) -> dict[str, object]:
    from sktime.forecasting.chronos import ChronosForecaster

    return {f"Chronos ({repo.split('/')[-1]})": ChronosForecaster(str(path), seed=0) for repo, path in chronos.items()}


def _darts(settings: Settings, variants: dict[str, dict], frame: pd.DataFrame, y: pd.Series, output: Path) -> str:
    name = next(iter(variants))
    dataset = real_world.DATASETS[DARTS_DATASET]
    rows = real_world.darts_backtest(dataset, y, settings.windows, variants[name])
    darts_frame = pd.DataFrame(rows)
    sktime_rows = frame[(frame["dataset"] == dataset.name) & (frame["model"] == name)].reset_index(drop=True)
    darts_frame["MASE (sktime evaluate)"] = sktime_rows["MASE"]
    darts_frame["sMAPE (sktime evaluate)"] = sktime_rows["sMAPE"]
    darts_frame.to_csv(output / "darts_backtest.csv", index=False)
    difference = np.nanmax(np.abs(darts_frame["MASE"] - darts_frame["MASE (sktime evaluate)"]))
    return "\n".join(
        [
            f"### darts backtest ({dataset.name}, {name})",
            "",
            "`DynaMixModel.backtest(retrain=False)` over the same windows, next to the sktime numbers "
            f"(largest MASE difference: {report.format_number(float(difference))}).",
            "",
            report.markdown_table(darts_frame),
            "",
        ]
    )


def _fans(settings: Settings, weights: str, series: dict[str, pd.Series], folder: Path) -> list[Path]:
    """Interval fans of the last window of two series: DynaMix default settings, and with the non-stationary option."""
    from ..pipeline import DynaMixPipeline

    plots = []
    for name in FAN_DATASETS:
        if name not in series:
            continue
        y, horizon = series[name], real_world.DATASETS[name].horizon
        context, truth = y.iloc[:-horizon], y.iloc[-horizon:]
        for nonstationary in (False, True):
            pipeline = DynaMixPipeline.from_pretrained(
                weights,
                n_samples=settings.n_samples,
                point_forecast="median",
                preprocessing="pos_embedding",
                nonstationary=nonstationary,
                random_state=real_world.FORECAST_SEED,
            )
            values = context.to_numpy()[:, None]
            point, samples = pipeline.predict(values, horizon), pipeline.predict_samples(values, horizon)
            label = "pos_embedding" + (" + nonstationary" if nonstationary else "")
            plots.append(
                report.fan_plot(
                    context,
                    truth,
                    point[:, 0],
                    samples[:, :, 0],
                    f"{name}: DynaMix {label} ({weights})",
                    folder / f"fan-{name}{'-nonstationary' if nonstationary else ''}.png",
                )
            )
    return plots


def _timing(settings: Settings, weights: str, output: Path, progress: bool) -> str:
    title = "## Inference time: DynaMix next to Chronos (timing only)"
    reason = chronos_timing.chronos_available()
    if reason:
        return f"{title}\n\n{reason}\n"
    from ..systems import lorenz63_trajectory

    context = lorenz63_trajectory(settings.timing_context)[:, 0]
    bar = _bar(progress, 2 + len(settings.chronos_models), "Timing")
    rows = chronos_timing.timing_rows(
        weights,
        list(settings.chronos_models),
        context,
        settings.timing_horizon,
        settings.timing_repeats,
        bar.update,
    )
    bar.close()
    frame = pd.DataFrame(rows)
    frame.to_csv(output / "timing.csv", index=False)
    shown = frame.drop(columns=["context_length", "horizon"])
    return "\n".join(
        [
            title,
            "",
            f"One univariate series (Lorenz-63 x), context {settings.timing_context}, horizon "
            f"{settings.timing_horizon}, one thread, median of {settings.timing_repeats} runs after a warm-up. "
            "The Chronos models are built from their published architecture configs with random weights: "
            "their times are real, they produce no forecasts here, and no accuracy number comes from them.",
            "",
            report.markdown_table(shown),
            "",
        ]
    )

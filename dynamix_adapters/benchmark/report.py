"""Summaries (median and interquartile range), markdown tables, plots and the run's provenance.

>>> frame = pd.DataFrame({"model": ["a", "a", "a"], "x": [1.0, 2.0, np.inf]})
>>> summarize(frame, "model", ["x"]).loc[0, ["median", "q25", "q75"]].to_numpy(float).tolist()
[2.0, 1.5, inf]
>>> print(markdown_table(pd.DataFrame({"name": ["a"], "value": [0.12345]})))
| name | value |
|---|---|
| a | 0.123 |
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

PACKAGES = ("dynamix-adapters", "torch", "numpy", "sktime", "darts", "statsforecast", "dysts", "chronos-forecasting")


def quartiles(values) -> tuple[float, float, float]:
    """25th, 50th and 75th percentile (linear interpolation); NaN is ignored, inf is ranked last.

    numpy's interpolation turns a zero weight on an infinite neighbour into NaN, so it is done here.
    """
    ordered = np.sort(np.asarray(values, dtype=float))
    ordered = ordered[~np.isnan(ordered)]
    if not len(ordered):
        return (np.nan, np.nan, np.nan)
    result = []
    for q in (0.25, 0.5, 0.75):
        position = (len(ordered) - 1) * q
        low, high = ordered[int(np.floor(position))], ordered[int(np.ceil(position))]
        fraction = position - np.floor(position)
        result.append(float(low if fraction == 0 or low == high else low + fraction * (high - low)))
    return tuple(result)


def summarize(frame: pd.DataFrame, by: str, metrics: list[str]) -> pd.DataFrame:
    """Median and IQR of each metric per group, in the frame's group order, with counts and failures."""
    rows = []
    for group, part in frame.groupby(by, sort=False):
        failures = int((part["status"] != "ok").sum()) if "status" in part else 0
        for metric in metrics:
            q25, median, q75 = quartiles(part[metric]) if metric in part else (np.nan,) * 3
            rows.append(
                {
                    by: group,
                    "metric": metric,
                    "median": median,
                    "q25": q25,
                    "q75": q75,
                    "n": len(part),
                    "failures": failures,
                }
            )
    return pd.DataFrame(rows)


def format_number(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(value)
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    magnitude = abs(value)
    if magnitude and (magnitude < 1e-3 or magnitude >= 1e5):
        return f"{value:.2e}"
    return f"{value:.3g}" if magnitude < 1 else f"{value:.3f}" if magnitude < 10 else f"{value:.1f}"


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(format_number(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def wide_summary(summary: pd.DataFrame, by: str, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per group: "median [q25, q75]" per metric, then any extra columns (joined on ``by``)."""
    cells = summary.assign(
        cell=[
            f"{format_number(m)} [{format_number(a)}, {format_number(b)}]"
            for m, a, b in zip(summary["median"], summary["q25"], summary["q75"], strict=True)
        ]
    )
    wide = cells.pivot(index=by, columns="metric", values="cell")
    order = list(dict.fromkeys(summary[by]))
    wide = wide.loc[order, list(dict.fromkeys(summary["metric"]))].reset_index()
    counts = summary.drop_duplicates(by)[[by, "n", "failures"]]
    wide = wide.merge(counts, on=by)
    return wide if extra is None else wide.merge(extra, on=by, how="left")


def provenance(command: str) -> dict[str, str]:
    """Commit (and whether the tree had uncommitted changes), versions and machine of this run."""
    root = Path(__file__).resolve().parents[2]
    commit, dirty = "unknown (not a git checkout)", ""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        dirty = f" plus uncommitted changes in {len(status)} tracked files" if status else ""
    except (OSError, subprocess.CalledProcessError):
        pass
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return {
        "command": command,
        "commit": commit + dirty,
        "versions": ", ".join([f"Python {platform.python_version()}", *versions]),
        "machine": f"{platform.machine()}, {_cpu_count()} CPUs, one thread per model",
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def box_plots(frame: pd.DataFrame, metrics: list[str], title: str, path: Path, log_metrics=()) -> Path:
    """One panel per metric: the distribution over cases of each model (infinite values left out, counted)."""
    from matplotlib.ticker import NullFormatter

    plt = _pyplot()
    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.45 * len(models) + 1.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = [frame.loc[frame["model"] == m, metric].to_numpy(float) for m in models]
        ax.boxplot([d[np.isfinite(d)] for d in data], vert=False, showfliers=True, flierprops={"markersize": 2})
        ax.set_yticks(range(1, len(models) + 1), [_short(m) for m in models] if ax is axes[0][0] else [])
        dropped = sum(int((~np.isfinite(d)).sum()) for d in data)
        ax.set_title(metric + (f" ({dropped} inf/failed not shown)" if dropped else ""), fontsize=9)
        if metric in log_metrics:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _short(model: str) -> str:
    return model.replace("dynamix-3d-", "").replace("_embedding", "").replace(" + nonstationary", " +ns")


def attractor_plot(truth: np.ndarray, predicted: np.ndarray, system: str, model: str, path: Path) -> Path:
    from ..plotting import plot_attractor

    fig = plot_attractor(truth, predicted, labels=("truth", _short(model)), title=f"{system}: {_short(model)}")
    return _save(fig, path)


def spectra_plot(truth: np.ndarray, predicted: np.ndarray, system: str, model: str, path: Path) -> Path:
    from ..plotting import plot_power_spectra

    fig = plot_power_spectra(truth, predicted, labels=("truth", _short(model)), title=f"{system}: {_short(model)}")
    return _save(fig, path)


def fan_plot(context: pd.Series, truth: pd.Series, point: np.ndarray, samples: np.ndarray, title: str, path: Path):
    from ..plotting import plot_forecast

    shown = context.iloc[-min(len(context), 8 * len(truth)) :]
    fig = plot_forecast(
        shown.to_numpy(),
        point,
        truth=truth.to_numpy(),
        samples=samples,
        coverages=(0.8, 0.95),
        context_index=shown.index.to_timestamp() if isinstance(shown.index, pd.PeriodIndex) else shown.index,
        forecast_index=truth.index.to_timestamp() if isinstance(truth.index, pd.PeriodIndex) else truth.index,
        title=title,
    )
    fig.set_size_inches(8, 3.2)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path

"""The ``dynamix-adapters`` command: forecast CSV/Parquet files, list weight sets, train, benchmark.

Every failure the user can fix ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module
from pathlib import Path

import numpy as np
import pandas as pd

from .pipeline import DynaMixPipeline
from .preprocessing import EMBEDDINGS
from .weights import DEFAULT_MODEL, describe_models

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


class UsageError(Exception):
    """A problem with the command's input, reported as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamix-adapters",
        description="Zero-shot forecasting of dynamical systems and time series with DynaMix.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "forecast",
        help="forecast the columns of a CSV or Parquet file",
        description="Forecast every chosen numeric column of INPUT jointly (one multivariate series).",
    )
    run.add_argument("input", type=Path, help="CSV or Parquet file, one row per time step")
    run.add_argument("--horizon", type=int, required=True, help="steps to forecast (>= 1)")
    run.add_argument("--time-col", help="time column (default: detected: a datetime-like first column)")
    run.add_argument("--columns", help="comma-separated columns to forecast (default: all numeric ones)")
    run.add_argument("--model", default=None, help=f"weight set name or weights path (default: {DEFAULT_MODEL})")
    run.add_argument("--preprocessing", default="pos_embedding", choices=EMBEDDINGS, help="embedding for few dims")
    run.add_argument("--nonstationary", action="store_true", help="remove Box-Cox + power-law trend first")
    run.add_argument("--context-length", type=int, default=None, help="use only the last N rows as context")
    run.add_argument("--samples", type=int, default=0, help="sample paths; adds quantile columns (e.g. x_q0.05)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--output", type=Path, help="write the forecast as CSV here (default: print it)")
    run.add_argument("--plot", type=Path, help="write a PNG of context and forecast here")
    run.set_defaults(handler=_forecast_command)

    models = commands.add_parser("models", help="list the known weight sets and where each resolves from")
    models.set_defaults(handler=_models_command)

    for name, (_, text) in DELEGATED.items():
        commands.add_parser(name, help=f"{text} (see '{name} --help')", add_help=False)
    return parser


# Commands with parsers of their own: everything after the command name goes to them untouched.
DELEGATED = {
    "train": (".training", "train DynaMix from scratch: train --config FILE [--resume]"),
    "benchmark": (".benchmark", "run the benchmark suite: benchmark [--quick] [--output DIR]"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return import_module(DELEGATED[argv[0]][0], __package__).main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.handler(args) or 0
    except (UsageError, ValueError, TypeError, FileNotFoundError, ImportError, OSError) as err:
        print(f"dynamix-adapters {args.command}: error: {err}", file=sys.stderr)
        return 2


def _models_command(args) -> int:
    rows = describe_models()
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        status = "available offline" if row["available"] else "not available offline"
        print(f"{row['name']:<{width}}  {status:<22}  {row['location']}")
        print(f"{'':<{width}}  {row['description']}")
    return 0


def read_table(path: Path, time_col: str | None, columns: str | None) -> tuple[pd.DataFrame, pd.Index]:
    """Load INPUT, pick the time index and the numeric columns to forecast."""
    if not path.is_file():
        raise UsageError(f"input file {path} does not exist")
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UsageError(f"input file {path} is empty") from None
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    if frame.empty:
        raise UsageError(f"input file {path} has no rows")
    if time_col is None:
        time_col = _detect_time_column(frame)
    elif time_col not in frame.columns:
        raise UsageError(f"--time-col {time_col!r} is not a column of {path} (columns: {list(frame.columns)})")
    index = pd.RangeIndex(len(frame))
    if time_col is not None:
        try:
            index = pd.DatetimeIndex(pd.to_datetime(frame.pop(time_col), format="mixed"))
        except (ValueError, TypeError) as err:
            raise UsageError(f"cannot parse time column {time_col!r} as dates: {err}") from None
    if columns:
        chosen = [c.strip() for c in columns.split(",")]
    else:
        chosen = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    missing = [c for c in chosen if c not in frame.columns]
    if missing:
        raise UsageError(f"--columns names unknown columns {missing} (columns: {list(frame.columns)})")
    data = frame[chosen]
    non_numeric = [c for c in chosen if not pd.api.types.is_numeric_dtype(data[c])]
    if non_numeric:
        raise UsageError(f"columns {non_numeric} are not numeric; pick numeric columns with --columns")
    if not chosen:
        raise UsageError(f"{path} has no columns to forecast")
    return data.astype(float), index


def _detect_time_column(frame: pd.DataFrame) -> str | None:
    first = frame.columns[0]
    if pd.api.types.is_datetime64_any_dtype(frame[first]):
        return first
    if frame[first].dtype == object or str(first).lower() in ("time", "date", "datetime", "timestamp", "ds"):
        return first
    return None


def future_index(index: pd.Index, horizon: int) -> pd.Index:
    """The H time stamps after ``index``: its inferred frequency, else the last step, else integers."""
    if isinstance(index, pd.DatetimeIndex) and len(index) >= 3:
        freq = pd.infer_freq(index)
        if freq is not None:
            return pd.date_range(index[-1], periods=horizon + 1, freq=freq)[1:]
        step = index[-1] - index[-2]
        return pd.DatetimeIndex([index[-1] + step * (i + 1) for i in range(horizon)])
    return pd.RangeIndex(len(index), len(index) + horizon)


def _forecast_command(args) -> int:
    if args.horizon < 1:
        raise UsageError(f"--horizon must be >= 1, got {args.horizon}")
    if args.samples < 0:
        raise UsageError(f"--samples must be >= 0, got {args.samples}")
    data, index = read_table(args.input, args.time_col, args.columns)
    pipeline = DynaMixPipeline.from_pretrained(
        args.model,
        context_length=args.context_length,
        preprocessing=args.preprocessing,
        nonstationary=args.nonstationary,
        n_samples=max(args.samples, 1),
        random_state=args.seed,
    )
    context = data.to_numpy()
    point = pipeline.predict(context, args.horizon)  # (H, D)
    samples = pipeline.predict_samples(context, args.horizon) if args.samples > 0 else None  # (P, H, D)
    result = pd.DataFrame(point, columns=data.columns, index=future_index(index, args.horizon))
    result.index.name = "time"
    if samples is not None:
        levels = np.quantile(samples, QUANTILES, axis=0)  # (Q, H, D)
        for q, level in zip(QUANTILES, levels, strict=True):
            for d, column in enumerate(data.columns):
                result[f"{column}_q{q:g}"] = level[:, d]
    if args.output:
        result.to_csv(args.output)
        print(f"wrote {args.horizon} forecast rows for {len(data.columns)} columns to {args.output}")
    else:
        print(result.to_csv(), end="")
    if args.plot:
        _plot_forecast(data, index, result, samples, args.plot)
    return 0


def _plot_forecast(data: pd.DataFrame, index: pd.Index, result: pd.DataFrame, samples, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import plot_forecast

    columns = list(data.columns)
    fig, axes = plt.subplots(len(columns), 1, figsize=(10, 3 * len(columns)), squeeze=False)
    shown = min(len(data), max(3 * len(result), 100))
    for d, (column, ax) in enumerate(zip(columns, axes[:, 0], strict=True)):
        plot_forecast(
            data[column].to_numpy()[-shown:],
            result[column].to_numpy(),
            samples=None if samples is None else samples[:, :, d],
            context_index=index[-shown:],
            forecast_index=result.index,
            title=str(column),
            ax=ax,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote plot to {path}")


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``dynamix-adapters`` command: forecast CSV/Parquet files, fine-tune, list weight sets, train, benchmark.

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
from tqdm import tqdm

from .options import ForecastOptions
from .panel import DEFAULT_BATCH_SIZE, LongFormat, ModelSpec, forecast_long_batches, forecast_schema, long_series
from .pipeline import DynaMixPipeline
from .training.finetune import FinetuneConfig, finetune
from .transforms.preprocessing import EMBEDDINGS
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
    run.add_argument(
        "input", help="CSV or Parquet file, one row per time step; with --id-col also a Parquet dataset or a URL"
    )
    run.add_argument("--horizon", type=int, required=True, help="steps to forecast (>= 1)")
    run.add_argument("--time-col", help="time column (default: detected: a datetime-like first column)")
    run.add_argument("--columns", help="comma-separated columns to forecast (default: all numeric ones)")
    run.add_argument("--model", default=None, help=f"weight set name or weights path (default: {DEFAULT_MODEL})")
    _add_setting_arguments(run)
    run.add_argument("--context-length", type=int, default=None, help="use only the last N rows as context")
    run.add_argument("--samples", type=int, default=0, help="sample paths; adds quantile columns (e.g. x_q0.05)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--output", help="write the forecast as CSV here (default: print it); see --id-col")
    run.add_argument("--plot", type=Path, help="write a PNG of context and forecast here")
    _add_long_format_arguments(run)
    run.set_defaults(handler=_forecast_command)

    tune = commands.add_parser(
        "finetune",
        help="fine-tune the weights on the series of a long-format file",
        description="Fine-tune DynaMix on every id of INPUT (one row per id and time) and write the weights; "
        "forecast with them through --model OUTPUT. The end of every series is held out for early stopping, so "
        "the result never forecasts it worse than the starting weights.",
    )
    tune.add_argument("input", help="long-format CSV or Parquet file (or Parquet dataset directory)")
    tune.add_argument("--id-col", required=True, help="id column: one series per distinct value")
    tune.add_argument("--time-col", required=True, help="time column (datetimes or integers)")
    tune.add_argument("--columns", help="comma-separated value columns (default: all numeric ones)")
    tune.add_argument("--output", required=True, type=Path, help="where to write the weights (.safetensors)")
    tune.add_argument("--model", default=None, help=f"starting weights: name or path (default: {DEFAULT_MODEL})")
    _add_setting_arguments(tune)
    defaults = FinetuneConfig()
    tune.add_argument("--epochs", type=int, default=defaults.epochs, help=f"most epochs (default {defaults.epochs})")
    tune.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate, help=f"default {defaults.learning_rate}"
    )
    tune.add_argument(
        "--patience",
        type=int,
        default=defaults.patience,
        help=f"epochs without improvement (default {defaults.patience})",
    )
    tune.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tune.set_defaults(handler=_finetune_command)

    models = commands.add_parser("models", help="list the known weight sets and where each resolves from")
    models.set_defaults(handler=_models_command)

    for name, (_, text) in DELEGATED.items():
        commands.add_parser(name, help=f"{text} (see '{name} --help')", add_help=False)
    return parser


# Commands with parsers of their own: everything after the command name goes to them untouched.
DELEGATED = {
    "train": (".training", "train DynaMix from scratch: train --config FILE [--resume]"),
    "benchmark": (".benchmark.suite", "run the benchmark suite: benchmark [--quick] [--output DIR]"),
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


def _finetune_command(args) -> int:
    if not str(args.output).endswith(".safetensors"):
        raise UsageError(f"--output must end in .safetensors, got {args.output}")
    value_cols = tuple(c.strip() for c in args.columns.split(",")) if args.columns else None
    columns = LongFormat(args.id_col, args.time_col, value_cols)
    ids, series = long_series(_read_long(args.input, columns), columns)
    pipeline = DynaMixPipeline.from_pretrained(
        args.model,
        preprocessing=args.preprocessing,
        nonstationary={"true": True, "false": False}.get(args.nonstationary, "auto"),
        random_state=args.seed,
    )
    defaults = FinetuneConfig()
    decay = defaults.final_learning_rate / defaults.learning_rate  # the default schedule's shape at any rate
    config = FinetuneConfig(
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        final_learning_rate=args.learning_rate * decay,
        patience=args.patience,
        seed=args.seed,
    )
    result = finetune(pipeline, series, config, progress=None if sys.stderr.isatty() else False)
    result.save(args.output)
    print(
        f"fine-tuned on {len(ids)} ids in {result.seconds:.1f} s: held-out MSE {result.start_score:.4g} -> "
        f"{result.best_score:.4g} (best epoch {result.best_epoch} of {result.epochs_run}); wrote {args.output}",
        file=sys.stderr,
    )
    return 0


def read_table(path: Path, time_col: str | None, columns: str | None) -> tuple[pd.DataFrame, pd.Index]:
    """Load INPUT, pick the time index and the numeric columns to forecast."""
    if not path.is_file():
        raise UsageError(f"input file {path} does not exist")
    frame = _read_frame(str(path), parquet=path.suffix.lower() in (".parquet", ".pq"))
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


def _read_frame(source: str, parquet: bool) -> pd.DataFrame:
    """A Parquet file or dataset, or a CSV, as a frame with rows; a UsageError says what is wrong."""
    try:
        frame = pd.read_parquet(source) if parquet else pd.read_csv(source)
    except pd.errors.EmptyDataError:
        raise UsageError(f"input {source} is empty") from None
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise UsageError(f"cannot read {source}: {err}") from None
    if frame.empty:
        raise UsageError(f"input {source} has no rows")
    return frame


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
    if args.id_col is not None:
        return _forecast_long_command(args)
    data, index = read_table(Path(args.input), args.time_col, args.columns)
    pipeline = DynaMixPipeline.from_pretrained(
        args.model,
        context_length=args.context_length,
        preprocessing=args.preprocessing,
        nonstationary={"true": True, "false": False}.get(args.nonstationary, "auto"),
        n_samples=max(args.samples, 1),
        random_state=args.seed,
    )
    context = data.to_numpy()
    chosen = pipeline.choose_settings(context)
    point = pipeline.predict(context, args.horizon, settings=chosen)  # (H, D)
    if "auto" in (args.preprocessing, args.nonstationary):
        record = chosen[0].record()
        print(
            f"auto chose preprocessing={record['preprocessing']}, nonstationary={record['nonstationary']}",
            file=sys.stderr,
        )
    samples = pipeline.predict_samples(context, args.horizon, settings=chosen) if args.samples > 0 else None
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


def _add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """--preprocessing and --nonstationary: the settings a forecast (and so a fine-tuning run) may use."""
    parser.add_argument(
        "--preprocessing", default="auto", choices=("auto", *EMBEDDINGS), help="embedding for few dims (default: auto)"
    )
    parser.add_argument(
        "--nonstationary",
        nargs="?",
        const="true",
        default="auto",
        choices=("auto", "true", "false"),
        help="remove Box-Cox + power-law trend first (bare flag: true; default: auto)",
    )


def _add_long_format_arguments(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group(
        "long format",
        "With --id-col, INPUT holds many series, one row per (id, time): a CSV, a Parquet file or a Parquet "
        "dataset directory (a URL such as s3://bucket/data with --scheduler). --time-col names the time "
        "column and --columns the value columns. --output ending in .csv writes CSV, anything else Parquet "
        "(a dataset directory with --scheduler). An id that cannot be forecast gets one row with its reason "
        "in the 'error' column.",
    )
    group.add_argument("--id-col", help="id column: forecast every id of a long-format INPUT")
    group.add_argument(
        "--scheduler",
        help="forecast on the Dask cluster at this scheduler address (e.g. tcp://host:8786) instead of locally; "
        "needs dynamix-adapters[distributed]",
    )
    group.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"ids per model call (default {DEFAULT_BATCH_SIZE})"
    )


def _forecast_long_command(args) -> int:
    """Forecast every id of a long-format INPUT, in this process (tqdm progress) or on a Dask cluster."""
    if args.time_col is None:
        raise UsageError("--id-col needs --time-col: the column with each row's time stamp")
    if args.plot:
        raise UsageError("--plot draws one series; it does not combine with --id-col")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    value_cols = tuple(c.strip() for c in args.columns.split(",")) if args.columns else None
    columns = LongFormat(args.id_col, args.time_col, value_cols)
    nonstationary = {"true": True, "false": False}.get(args.nonstationary, "auto")
    options = ForecastOptions(
        context_length=args.context_length,
        preprocessing=args.preprocessing,
        nonstationary=nonstationary,
        n_samples=max(args.samples, 1),
        random_state=args.seed,
    )
    levels = QUANTILES if args.samples > 0 else ()
    spec = ModelSpec(args.model, options)
    if args.scheduler:
        return _forecast_on_cluster(args, spec, columns, levels)
    frame = _read_long(args.input, columns)
    parts = [forecast_schema(frame, columns, levels)]  # checks the columns before anything else
    pipeline = spec.pipeline()
    total = frame[columns.id_col].nunique()
    batches = forecast_long_batches(pipeline, frame, args.horizon, columns, levels, args.batch_size)
    with tqdm(total=total, unit="series", desc="forecast", disable=None) as progress:
        for batch in batches:
            parts.append(batch)
            progress.update(batch[columns.id_col].nunique())
    result = pd.concat(parts, ignore_index=True)
    if args.output is None:
        print(result.to_csv(index=False), end="")
        return 0
    if str(args.output).lower().endswith(".csv"):
        result.to_csv(args.output, index=False)
    else:
        result.to_parquet(args.output, index=False)
    print(f"wrote forecasts of {total} ids, {args.horizon} steps each, to {args.output}", file=sys.stderr)
    return 0


def _read_long(source: str, columns: LongFormat) -> pd.DataFrame:
    """A long-format CSV, Parquet file or Parquet dataset directory, with date strings in the time column parsed."""
    if "://" not in source and not Path(source).exists():
        raise UsageError(f"input {source} does not exist")
    frame = _read_frame(source, parquet=not source.lower().endswith(".csv"))
    time = frame.get(columns.time_col)
    if time is not None and not (pd.api.types.is_datetime64_any_dtype(time) or pd.api.types.is_integer_dtype(time)):
        try:
            frame[columns.time_col] = pd.to_datetime(time, format="mixed")
        except (ValueError, TypeError) as err:
            raise UsageError(f"cannot parse time column {columns.time_col!r} as dates: {err}") from None
    return frame


def _forecast_on_cluster(args, spec: ModelSpec, columns: LongFormat, levels: tuple[float, ...]) -> int:
    """Read, forecast and write on the Dask cluster at --scheduler; the workers read INPUT and write --output."""
    if args.output is None:
        raise UsageError("--scheduler needs --output: the workers write the forecasts there")
    try:
        from distributed import Client

        from .distributed import forecast_dask, read_long, write_forecast
    except ModuleNotFoundError as err:
        raise UsageError(f"--scheduler needs {err.name}: pip install 'dynamix-adapters[distributed]'") from None
    with Client(args.scheduler) as client:
        forecasts = forecast_dask(spec, read_long(args.input, columns), args.horizon, columns, levels, args.batch_size)
        write_forecast(forecasts, args.output, client, progress=True)
    print(f"wrote forecasts to {args.output} on {args.scheduler}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

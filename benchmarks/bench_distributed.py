"""Throughput of long-format forecasting on a Dask LocalCluster, Parquet to Parquet, for 1 and 2 workers.

Generates a synthetic long-format Parquet dataset (``--series`` ids of ``--context`` hourly
steps: a third sines, a third noisy damped oscillators, a third random walks), sorted by id in
files of ``--series-per-file`` ids, then for each worker count starts a fresh LocalCluster (one
thread per worker process), warms every worker up (weights loaded, compiled kernels read), and
times ``read_parquet -> forecast_dask -> write_forecast`` end to end. Reports series per second,
the scaling efficiency (series/s with w workers over w times series/s with one), and the peak
resident memory of each worker process (its whole life: Python, torch and numba included), and
the workers' CPU time per 1,000 series, which tells lost scaling on shared cores from lost work.

Where the time goes: Dask's task stream gives each task's compute seconds, grouped by the
task's name into reading (``read_parquet``), shuffling (``shuffle``/``p2p``; none when the ids
come sorted with known divisions, as here), forecasting and writing (``to_parquet``). The
forecast options are the defaults (``"auto"`` preprocessing and non-stationarity) unless
``--preprocessing``/``--nonstationary`` say otherwise.

    python benchmarks/bench_distributed.py --series 20000 --workers 2   # minutes on 2 cores
    python benchmarks/bench_distributed.py --workers 2                  # issue 21: 1,000,000 series, defaults
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, LocalCluster, get_task_stream

from dynamix_adapters.distributed import forecast_dask, write_forecast
from dynamix_adapters.options import ForecastOptions
from dynamix_adapters.panel import ERROR_COLUMN, LongFormat, ModelSpec

COLUMNS = LongFormat("series", "time", ("value",))
START = np.datetime64("2024-01-01T00:00", "ns")
HOUR = np.timedelta64(1, "h").astype("m8[ns]")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1_000_000, help="ids in the dataset (default 1,000,000)")
    parser.add_argument("--context", type=int, default=128, help="observations per id")
    parser.add_argument("--horizon", type=int, default=24, help="steps forecast per id")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    parser.add_argument("--series-per-file", type=int, default=5_000, help="ids per Parquet file (= partition)")
    parser.add_argument("--batch-size", type=int, default=512, help="ids per model call")
    parser.add_argument("--quantiles", default="", help="comma-separated quantile levels (default: point only)")
    parser.add_argument("--samples", type=int, default=20, help="sample paths behind --quantiles")
    parser.add_argument("--preprocessing", default="auto", help="default 'auto' (validates candidates per id)")
    parser.add_argument("--nonstationary", default="auto", help="'auto' (default), 'true' or 'false'")
    parser.add_argument("--model", default=None, help="weights name or path (default: the bundled weights)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the datasets go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def synthetic_block(first: int, count: int, context: int, rng: np.random.Generator) -> pa.Table:
    """``count`` series ids first.. (``context`` rows each), sorted by id and time: a third of each kind."""
    t = np.arange(context)
    kinds = np.arange(first, first + count) % 3
    values = np.empty((count, context))
    sines = kinds == 0
    period = rng.uniform(8, 64, sines.sum())[:, None]
    values[sines] = rng.uniform(0.5, 5, (sines.sum(), 1)) * np.sin(
        2 * np.pi * t / period + rng.uniform(0, 6, (sines.sum(), 1))
    )
    # Noisy damped oscillators: AR(2) with complex roots r * exp(+-i w), driven by white noise.
    oscillators = kinds == 1
    n_osc = oscillators.sum()
    r, w = rng.uniform(0.9, 0.99, n_osc), rng.uniform(0.1, 1.0, n_osc)
    noise = rng.standard_normal((n_osc, context))
    x = np.zeros((n_osc, context))
    x[:, 0], x[:, 1] = noise[:, 0], noise[:, 1]
    for step in range(2, context):
        x[:, step] = 2 * r * np.cos(w) * x[:, step - 1] - r**2 * x[:, step - 2] + noise[:, step]
    values[oscillators] = x
    walks = kinds == 2
    values[walks] = np.cumsum(rng.standard_normal((walks.sum(), context)), axis=1)
    return pa.table(
        {
            "series": np.repeat(np.arange(first, first + count, dtype=np.int64), context),
            "time": np.tile(START + HOUR * t, count),
            "value": values.ravel(),
        }
    )


def write_dataset(folder: Path, n_series: int, context: int, per_file: int) -> float:
    """The synthetic dataset as Parquet files of ``per_file`` ids each; returns seconds taken."""
    started = time.perf_counter()
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part, first in enumerate(range(0, n_series, per_file)):
        block = synthetic_block(first, min(per_file, n_series - first), context, rng)
        pq.write_table(block, folder / f"part.{part:05d}.parquet")
    return time.perf_counter() - started


def warm_up(spec: ModelSpec) -> int:
    """On a worker: load the weights and run the kernels once; returns the resident memory after it (bytes)."""
    import psutil

    t = np.arange(64)
    frame = pd.DataFrame({"series": 0, "time": START + HOUR * t, "value": np.sin(t / 5.0)})
    from dynamix_adapters.panel import forecast_long

    forecast_long(spec.pipeline(), frame, 4, COLUMNS)
    return psutil.Process().memory_info().rss


def cpu_seconds() -> float:
    """On a worker: the CPU time (user + system) its process has used so far."""
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def peak_memory() -> int:
    """On a worker: the peak resident memory of its process so far (bytes; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def task_seconds(stream: list[dict]) -> dict[str, float]:
    """Compute seconds of the tasks in a Dask task stream, by what they do (from their keys' names)."""
    totals = {"read": 0.0, "shuffle": 0.0, "forecast": 0.0, "write": 0.0}
    for task in stream:
        key = task["key"][0] if isinstance(task["key"], tuple) else task["key"]
        name = str(key).lower().rsplit("-", 1)[0]  # "read_parquet-<token>" -> "read_parquet"
        if name.startswith(("read_parquet", "readparquet")):
            kind = "read"
        elif name.startswith(("toparquet", "to_parquet", "to-parquet")):
            kind = "write"
        elif "shuffle" in name or "p2p" in name or name.startswith(("rearrange", "set_index", "sort_values")):
            kind = "shuffle"
        else:  # _forecast_partition and the index handling around it (reset_index)
            kind = "forecast"
        totals[kind] += sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
    return totals


def time_workers(n_workers: int, source: Path, target: Path, spec: ModelSpec, args, levels) -> dict:
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit=None
        ) as cluster,
        Client(cluster) as client,
    ):
        baseline = client.run(warm_up, spec)
        cpu_before = client.run(cpu_seconds)
        started = time.perf_counter()
        with get_task_stream(client) as stream:
            # The files hold disjoint, sorted id ranges, so the id index with known divisions skips the shuffle.
            data = dd.read_parquet(source, index=COLUMNS.id_col, calculate_divisions=True)
            forecasts = forecast_dask(spec, data, args.horizon, COLUMNS, levels, args.batch_size)
            write_forecast(forecasts, str(target), client)
        elapsed = time.perf_counter() - started
        cpu_used = sum(client.run(cpu_seconds).values()) - sum(cpu_before.values())
        peaks = client.run(peak_memory)
    split = task_seconds(stream.data)
    total = sum(split.values()) or 1.0
    # H rows per forecast id and one error row per id that failed (a diverged forecast, on_divergence="nan"):
    # every id accounted for, none dropped.
    written = pq.ParquetDataset(target).read(columns=["series", ERROR_COLUMN])
    failed = written[ERROR_COLUMN].drop_null().to_pylist()
    rows, forecast_ids = written.num_rows, args.series - len(failed)
    if rows != forecast_ids * args.horizon + len(failed):
        raise RuntimeError(f"expected {forecast_ids * args.horizon + len(failed)} rows, found {rows}")
    if failed:
        print(f"{len(failed)} of {args.series:,} ids failed and got an error row, e.g. {failed[0]}")
    return {
        "workers": n_workers,
        "seconds": elapsed,
        "series_per_second": args.series / elapsed,
        # Worker CPU time per 1,000 series: flat across worker counts when the work scales and only the cores
        # (shared with other jobs) run out.
        "worker_cpu_seconds_per_1000_series": 1000 * cpu_used / args.series,
        "worker_rss_after_warm_up_mb": sorted(v / 2**20 for v in baseline.values()),
        "worker_peak_rss_mb": sorted(v / 2**20 for v in peaks.values()),
        "task_seconds": split,
        "time_share": {kind: seconds / total for kind, seconds in split.items()},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    levels = tuple(float(q) for q in args.quantiles.split(",")) if args.quantiles else ()
    nonstationary = {"true": True, "false": False}.get(args.nonstationary.lower(), args.nonstationary)
    options = ForecastOptions(
        preprocessing=args.preprocessing,
        nonstationary=nonstationary,
        n_samples=args.samples,
        random_state=0,
    )
    spec = ModelSpec(args.model, options)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    source = workdir / "panel"
    try:
        generated = write_dataset(source, args.series, args.context, args.series_per_file)
        size = sum(f.stat().st_size for f in source.iterdir()) / 2**20
        print(
            f"dataset: {args.series:,} series x {args.context} steps, {args.series * args.context:,} rows, "
            f"{size:.0f} MB in {len(list(source.iterdir()))} files, written in {generated:.1f} s"
        )
        results = []
        for n_workers in (int(w) for w in args.workers.split(",")):
            result = time_workers(n_workers, source, workdir / f"forecast-{n_workers}", spec, args, levels)
            results.append(result)
            print(
                f"{n_workers} worker(s): {result['seconds']:.1f} s, {result['series_per_second']:,.0f} series/s, "
                f"{result['worker_cpu_seconds_per_1000_series']:.2f} worker CPU s per 1,000 series, "
                f"peak RSS per worker {', '.join(f'{m:.0f}' for m in result['worker_peak_rss_mb'])} MB "
                f"(after warm-up {', '.join(f'{m:.0f}' for m in result['worker_rss_after_warm_up_mb'])} MB)"
            )
            shares = ", ".join(
                f"{kind} {share:.0%} ({result['task_seconds'][kind]:.1f} task-s)"
                for kind, share in result["time_share"].items()
            )
            print(f"  time in tasks: {shares}")
        one = next((r for r in results if r["workers"] == 1), None)
        for result in results:
            if one is not None and result["workers"] > 1:
                result["scaling_efficiency"] = result["series_per_second"] / (
                    result["workers"] * one["series_per_second"]
                )
                print(f"scaling efficiency at {result['workers']} workers: {result['scaling_efficiency']:.2f}")
        if args.json:
            summary = {"series": args.series, "context": args.context, "horizon": args.horizon, "results": results}
            args.json.write_text(json.dumps(summary | {"quantiles": list(levels)}, indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The user's path end to end: per-series cost of forecasting a panel, defaults against explicit settings.

A panel of univariate Lorenz-63 windows (the x coordinate of ``lorenz63.npy``, windows of
``--context`` steps at evenly spread starts), forecast ``--horizon`` steps, one thread
everywhere (numba, torch, BLAS), official weights. Rows, per series, in CPU microseconds:

- reference: the same forecasts through the torch backend (``DynaMix.step`` once per step,
  as the published implementation rolls out), explicit settings. The published
  implementation (DynaMix-python, GPL-3.0) is not a dependency; pass ``--reference-module``
  to time it instead where it is installed (it must offer ``forecast(context, horizon)``
  taking (T, S, 1) float32 contexts);
- explicit settings (``preprocessing="pos_embedding"``, ``nonstationary=False``), backend
  "auto" (the batched kernel for a panel of 16 series or more: the compiled kernels agree bit
  for bit), and the same with ``backend="numba"`` (the per-series kernel);
- the batched kernel alone on the standardized windows: the floor everything else adds to;
- defaults (``forecast()`` with nothing set: "auto" preprocessing and non-stationarity,
  selected per series by in-context validation);
- the reference, explicit settings and defaults again with ``--paths`` sample paths a series
  (100: what ``predict_interval`` and ``predict_quantiles`` draw), where the defaults'
  paths are calibrated: validation is paid once a series, whatever the number of paths;
- the same two settings through sktime, as a user writes them (``DynaMixForecaster(...).fit(y)
  .predict(fh)`` on a pd-multiindex panel: sktime's input checks, the adapter, the pipeline),
  where sktime is installed;
- statsforecast AutoETS and AutoARIMA on the same series, where statsforecast is installed.

Slow rows (defaults, statsforecast) run on the first ``--slow-series``
series only: their per-series cost is flat in the panel size, and the full panel would
take many minutes. Every row prints its series count. Ratios are against the reference,
and the last lines check issue 21's targets.

    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_pipeline.py          # 4,096 series, ~20 min (AutoARIMA)
    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_pipeline.py --quick  # 64 series, ~1 min
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_name] = "1"  # one thread everywhere, set before numpy, torch and numba load

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from dynamix_adapters import forecast, load_model  # noqa: E402
from dynamix_adapters.rollout import RolloutBatch, rollout, stream_keys  # noqa: E402

SHARED = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
EXPLICIT = {"preprocessing": "pos_embedding", "nonstationary": False}
SEED = 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=4096, help="windows in the panel (default 4,096)")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--slow-series", type=int, default=256, help="series the slow rows run on (default 256)")
    parser.add_argument("--model", default=None, help="weights name or path (default: the official weights)")
    parser.add_argument("--reference-module", default=None, help="module of the published implementation")
    parser.add_argument("--paths", type=int, default=100, help="sample paths a series in the sampling rows")
    parser.add_argument("--quick", action="store_true", help="64 series, context 256, slow rows on 16")
    args = parser.parse_args(argv)
    if args.quick:
        args.series, args.context, args.slow_series = 64, 256, 16
    args.slow_series = min(args.slow_series, args.series)
    return args


def lorenz_panel(series: int, length: int) -> np.ndarray:
    """(length, series, 1) float64: x-coordinate windows of Lorenz-63 at evenly spread starts."""
    path = SHARED / "data" / "lorenz63.npy"
    if not path.exists():
        raise SystemExit(f"{path} is missing: set DYNAMIX_SHARED_DIR to the folder holding data/lorenz63.npy.")
    x = np.load(path)[:, 0]
    if len(x) < length + series:
        raise SystemExit(f"lorenz63.npy has {len(x)} steps, too few for {series} distinct windows of {length}.")
    starts = np.linspace(0, len(x) - length, series).astype(int)
    return np.stack([x[s : s + length] for s in starts], axis=1)[:, :, None]


@dataclass
class Row:
    name: str
    series: int
    cpu_s: float
    wall_s: float
    note: str = ""

    @property
    def per_series_us(self) -> float:
        return 1e6 * self.cpu_s / self.series


def timed(name: str, series: int, run: Callable[[], object], note: str = "") -> Row:
    run_start, cpu_start = time.perf_counter(), time.process_time()
    run()
    return Row(name, series, time.process_time() - cpu_start, time.perf_counter() - run_start, note)


def kernel_alone(model, panel: np.ndarray, horizon: int) -> Callable[[], object]:
    """The batched kernel on the standardized windows, as the pipeline hands them over for pos_embedding."""
    standardized = (panel - panel.mean(axis=0)) / panel.std(axis=0)  # (T, S, 1)
    n = model.arch.N
    context = np.zeros((panel.shape[1], panel.shape[0], n), dtype=np.float32)
    context[:, :, 0] = standardized[:, :, 0].T  # the embedding's other dims cost the kernel the same
    series = len(context)
    batch = RolloutBatch(
        context=context,
        valid_from=np.zeros(series, dtype=np.int64),
        x0=context[:, -1],
        unit=np.arange(series),
        streams=stream_keys(SEED, np.arange(series, dtype=np.uint64), 1),
        labels=tuple(str(s) for s in range(series)),
    )
    return lambda: rollout(model, batch, horizon, "batched")


def statsforecast_rows(panel: np.ndarray, horizon: int) -> list[Row]:
    if importlib.util.find_spec("statsforecast") is None:
        print("statsforecast is not installed: its rows are left out (pip install statsforecast to add them).")
        return []
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS

    length, series = panel.shape[:2]
    frame = pd.DataFrame(
        {"unique_id": np.repeat(np.arange(series), length), "ds": np.tile(np.arange(length), series)}
        | {"y": panel[:, :, 0].T.ravel()}
    )
    rows = []
    for model in (AutoETS(), AutoARIMA()):
        engine = StatsForecast(models=[model], freq=1, n_jobs=1)
        engine.forecast(df=frame.iloc[: 2 * length], h=horizon)  # warm-up: numba compilation is not charged
        rows.append(timed(f"statsforecast {model}", series, lambda e=engine: e.forecast(df=frame, h=horizon)))
    return rows


def sktime_rows(weights: str, panel: np.ndarray, slow: np.ndarray, horizon: int) -> list[Row]:
    """The forecasts as a user writes them: ``DynaMixForecaster(...).fit(y).predict(fh)`` on a pd-multiindex panel."""
    if importlib.util.find_spec("sktime") is None:
        print("sktime is not installed: its rows are left out (pip install 'dynamix-adapters[sktime]').")
        return []
    import pandas as pd

    from dynamix_adapters import DynaMixForecaster

    def frame(values: np.ndarray):
        length, series = values.shape[:2]
        index = pd.MultiIndex.from_product([range(series), pd.RangeIndex(length)], names=["id", "t"])
        return pd.DataFrame({"x": values[:, :, 0].T.ravel()}, index=index)

    fh = list(range(1, horizon + 1))
    everything, first = frame(panel), frame(slow)
    DynaMixForecaster(model=weights, random_state=SEED).fit(frame(panel[:, :2])).predict(fh=fh)  # warm-up
    explicit = DynaMixForecaster(model=weights, random_state=SEED, **EXPLICIT)
    defaults = DynaMixForecaster(model=weights, random_state=SEED)
    return [
        timed("sktime explicit: fit + predict", panel.shape[1], lambda: explicit.fit(everything).predict(fh=fh)),
        timed("sktime defaults: fit + predict", slow.shape[1], lambda: defaults.fit(first).predict(fh=fh)),
    ]


def reference_row(args, model, panel: np.ndarray, paths: int | None = None) -> Row:
    """The reference's point forecast, or ``paths`` sample paths a series (the published code: one call per path)."""
    suffix = "" if paths is None else f", {paths} paths"
    if args.reference_module is None:
        run = lambda: forecast(  # noqa: E731
            model, panel, args.horizon, n_samples=paths, random_state=SEED, backend="torch", **EXPLICIT
        )
        return timed(f"reference: torch backend, explicit{suffix}", panel.shape[1], run, "DynaMix.step per step")
    module = importlib.import_module(args.reference_module)
    context = np.tile(panel.astype(np.float32), (1, paths or 1, 1))  # a path is a copy of its series' context
    name = f"reference: published implementation{suffix}"
    return timed(name, panel.shape[1], lambda: module.forecast(context, args.horizon))


def sampling_rows(args, model, slow: np.ndarray) -> list[Row]:
    """Reference, explicit settings and defaults, each drawing ``args.paths`` sample paths a series."""
    paths = args.paths
    return [
        reference_row(args, model, slow, paths),
        timed(
            f"explicit settings, {paths} paths",
            slow.shape[1],
            lambda: forecast(model, slow, args.horizon, n_samples=paths, random_state=SEED, **EXPLICIT),
        ),
        timed(
            f"defaults, {paths} paths",
            slow.shape[1],
            lambda: forecast(model, slow, args.horizon, n_samples=paths, random_state=SEED),
            "calibrated paths",
        ),
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.model or "dynamix-3d-alrnn-v1.0")
    panel = lorenz_panel(args.series, args.context)
    slow = panel[:, : args.slow_series]
    print(
        f"panel: {args.series} univariate Lorenz-63 windows, context {args.context}, horizon {args.horizon}, "
        f"one thread; slow rows on {args.slow_series} series; CPU microseconds per series"
    )
    with threadpool_limits(1):
        # Warm-up on a few series: compilation and the weights' first load are not charged.
        for backend in ("numba", "batched", "torch"):
            forecast(model, panel[:, :2], args.horizon, random_state=SEED, backend=backend, **EXPLICIT)
        forecast(model, panel[:, :2], args.horizon, random_state=SEED)
        reference = reference_row(args, model, panel)
        rows = [
            reference,
            timed(
                "explicit settings, backend auto",
                args.series,
                lambda: forecast(model, panel, args.horizon, random_state=SEED, **EXPLICIT),
                "batched from 32 trajectories (bit-identical kernels)",
            ),
            timed(
                "explicit settings, backend numba",
                args.series,
                lambda: forecast(model, panel, args.horizon, random_state=SEED, backend="numba", **EXPLICIT),
                "the per-series kernel",
            ),
            timed("batched kernel alone", args.series, kernel_alone(model, panel, args.horizon), "no pipeline"),
            timed("defaults", args.slow_series, lambda: forecast(model, slow, args.horizon, random_state=SEED)),
            *sktime_rows(args.model or "dynamix-3d-alrnn-v1.0", panel, slow, args.horizon),
            *statsforecast_rows(slow, args.horizon),
        ]
        sampling = sampling_rows(args, model, slow)
    print(f"\n{'':48}{'series':>8}{'us/series':>12}{'wall s':>9}{'vs reference':>14}  note")
    for row in rows:
        ratio = reference.per_series_us / row.per_series_us
        print(f"{row.name:48}{row.series:>8}{row.per_series_us:>12,.0f}{row.wall_s:>9.2f}{ratio:>13.1f}x  {row.note}")
    print(f"\nsample paths ({args.paths} a series), against the reference drawing as many:")
    for row in sampling:
        ratio = sampling[0].per_series_us / row.per_series_us
        print(f"{row.name:48}{row.series:>8}{row.per_series_us:>12,.0f}{row.wall_s:>9.2f}{ratio:>13.1f}x  {row.note}")
    explicit, defaults = rows[1], rows[4]  # reference, auto, numba, kernel alone, defaults
    sampled_reference, sampled_explicit, sampled_defaults = (row.per_series_us for row in sampling)
    print("\nissue 21 targets (per series):")
    checks = [
        ("explicit >= 15x the reference", reference.per_series_us / explicit.per_series_us, 15, True),
        ("defaults >= 5x the reference", reference.per_series_us / defaults.per_series_us, 5, True),
        ("defaults <= 3x the explicit cost", defaults.per_series_us / explicit.per_series_us, 3, False),
        (f"... with {args.paths} paths: defaults >= 5x", sampled_reference / sampled_defaults, 5, True),
        (f"... with {args.paths} paths: defaults <= 3x explicit", sampled_defaults / sampled_explicit, 3, False),
    ]
    for name, value, bound, above in checks:
        met = value >= bound if above else value <= bound
        print(f"  {name:46} {value:8.2f}x  {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()

"""Zero-shot inference speed: the compiled rollout ("numba") against the plain torch path, one thread.

    python benchmarks/bench_inference.py [--output outputs] [--repeats 3] [--model NAME_OR_PATH]

Every case goes through ``forecast()`` on Lorenz-63 windows (../shared/data/lorenz63.npy,
or an integrated trajectory when that is absent) with the official weights, torch and
the compiled kernel on one thread. It prints:

- the target cases (single series, context 2000, horizon 10,000; 256 series, context 512,
  horizon 1,000; 1,024 series, context 2,000, horizon 10,000) with both backends side by
  side, best of ``--repeats`` for the fast path (wall and CPU seconds), and the agreement of
  the first 100 steps. The torch path runs once; for the 1,024-series case it runs a short
  horizon and is extrapolated linearly, which the table says;
- the peak resident memory of the 1,024-series forecast, run once in a fresh process;
- the cold first call in a fresh process: with an empty compilation cache, and again
  with the cache the first run left on disk;
- time against horizon, context length and batch size, with a straight-line fit per
  parameter (R^2) as the linearity check, and a plot ``speed_scaling.png`` in ``--output``.

The machine may be shared: CPU seconds are less sensitive to other load than wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
AGREEMENT_STEPS = 100
TORCH_SHORT_HORIZON = 50
SCALING = {
    "horizon": {"values": [2000, 4000, 8000, 16000, 32000], "fixed": {"context": 512, "batch": 1}},
    "context": {"values": [250, 500, 1000, 2000, 4000], "fixed": {"horizon": 10000, "batch": 1}},
    "batch": {"values": [1, 4, 16, 64, 256], "fixed": {"context": 512, "horizon": 1000}},
}


def single_thread() -> None:
    """One torch thread; the compiled rollout splits work over ``torch.get_num_threads()`` threads, so one too."""
    import torch

    torch.set_num_threads(1)


def lorenz_series() -> np.ndarray:
    path = SHARED / "data" / "lorenz63.npy"
    if path.exists():
        return np.load(path)
    from dynamix_adapters.systems import lorenz63_trajectory

    return lorenz63_trajectory(12_000)


def contexts(series: np.ndarray, length: int, batch: int) -> np.ndarray:
    """(length, 3) for one series, else (length, batch, 3) windows at evenly spaced offsets."""
    if batch == 1:
        return series[:length]
    offsets = np.linspace(0, len(series) - length, batch).astype(int)
    return np.stack([series[o : o + length] for o in offsets], axis=1)


def timed(func, repeats: int) -> tuple[float, float, object]:
    """Best wall and best CPU seconds over ``repeats`` calls, and the last result."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = func()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def agreement(fast: np.ndarray, reference: np.ndarray) -> str:
    """Largest and median deviation over the first steps, relative to each trajectory's magnitude (as in tests)."""
    steps = min(AGREEMENT_STEPS, len(reference))
    a, b = fast[:steps].reshape(steps, -1), reference[:steps].reshape(steps, -1)
    deviation = np.abs(a - b).max(axis=0) / np.abs(b).max(axis=0)
    return f"{deviation.max():.1e} / {np.median(deviation):.1e}"


def run_child(mode: str, model_name: str) -> None:
    """Runs in a fresh process and prints one JSON line."""
    single_thread()
    from dynamix_adapters import forecast, load_model

    model = load_model(model_name)
    series = lorenz_series()
    if mode == "cold":
        context = contexts(series, 2000, 1)
        first, _, _ = timed(lambda: forecast(model, context, 10_000, random_state=0), 1)
        warm, _, _ = timed(lambda: forecast(model, context, 10_000, random_state=0), 1)
        print(json.dumps({"first_s": first, "warm_s": warm}))
        return
    context = contexts(series, 2000, 1024)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu, paths = timed(lambda: forecast(model, context, 10_000, random_state=0), 1)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finite = bool(np.isfinite(paths).all())
    memory = {"baseline_mib": baseline_kib / 1024, "peak_mib": peak_kib / 1024, "output_mib": paths.nbytes / 2**20}
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "finite": finite, **memory}))


def child(mode: str, model_name: str, env: dict | None = None) -> dict:
    """Run ``run_child(mode)`` in a fresh interpreter; its JSON result plus the process's wall seconds."""
    command = [sys.executable, __file__, "--child", mode, "--model", model_name]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {mode!r} failed:\n{done.stderr}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - start}


def target_cases(model, model_name: str, series: np.ndarray, repeats: int) -> None:
    from dynamix_adapters import forecast

    print(f"\nTarget cases (forecast(), one thread; fast = best of {repeats}, torch = one run)")
    header = (
        f"{'case':<32}{'fast wall s':>12}{'fast cpu s':>12}{'torch wall s':>14}{'speed-up':>10}  agreement max / median"
    )
    print(header)
    print("-" * len(header))
    for name, length, batch, horizon in (
        ("single: ctx 2000, H 10,000", 2000, 1, 10_000),
        ("batch 256: ctx 512, H 1,000", 512, 256, 1_000),
        ("batch 1024: ctx 2000, H 10,000", 2000, 1024, 10_000),
    ):
        context = contexts(series, length, batch)
        if batch == 1024:  # one run, in a fresh process that also measures its peak memory
            big = child("big", model_name)
            wall, cpu = big["wall_s"], big["cpu_s"]
            horizon_run = TORCH_SHORT_HORIZON
            fast = forecast(model, context, horizon_run, random_state=0)
        else:
            horizon_run = horizon
            wall, cpu, fast = timed(lambda c=context, h=horizon: forecast(model, c, h, random_state=0), repeats)
        torch_wall, _, reference = timed(
            lambda c=context, h=horizon_run: forecast(model, c, h, random_state=0, backend="torch"), 1
        )
        torch_wall *= horizon / horizon_run
        print(
            f"{name:<32}{wall:>12.3f}{cpu:>12.3f}{torch_wall:>14.2f}{torch_wall / wall:>9.0f}x"
            f"  {agreement(fast, reference)}"
        )
    print(
        f"torch for batch 1024: {TORCH_SHORT_HORIZON} steps, extrapolated linearly to 10,000.\n"
        f"agreement: |fast - torch| over the first {AGREEMENT_STEPS} steps (batch 1024: {TORCH_SHORT_HORIZON}) "
        "relative to the trajectory's magnitude, as in tests/test_engine.py; over the trajectories and dims, the\n"
        "largest and the median. Chaotic trajectories amplify float32 rounding, so a few part early.\n"
        f"batch 1024, fresh process: peak RSS {big['peak_mib']:.0f} MiB (after imports and weights "
        f"{big['baseline_mib']:.0f} MiB; the float64 forecast itself {big['output_mib']:.0f} MiB); "
        f"all finite: {big['finite']}"
    )


def cold_start(model_name: str) -> None:
    with tempfile.TemporaryDirectory() as cache:
        compiled = child("cold", model_name, {"NUMBA_CACHE_DIR": cache})
        cached = child("cold", model_name, {"NUMBA_CACHE_DIR": cache})
    print("\nCold first call in a fresh process (single series, ctx 2000, H 10,000; numba import included)")
    for label, run in (("empty compilation cache", compiled), ("compiled code cached on disk", cached)):
        print(
            f"  {label:<30} first forecast {run['first_s']:.2f} s, second {run['warm_s']:.3f} s; "
            f"whole process (python, torch, weights, both forecasts) {run['process_s']:.1f} s"
        )


def scaling(model, series: np.ndarray, repeats: int, output: Path) -> None:
    from dynamix_adapters import forecast

    print(f"\nScaling (fast path, best of {repeats}; straight-line fit t = a + b x per parameter)")
    print(f"{'parameter':<10}{'value':>8}{'wall s':>10}{'cpu s':>10}   fixed")
    results = {}
    for parameter, plan in SCALING.items():
        rows = []
        for value in plan["values"]:
            setting = {**plan["fixed"], parameter: value}
            context = contexts(series, setting["context"], setting["batch"])
            wall, cpu, _ = timed(lambda c=context, h=setting["horizon"]: forecast(model, c, h, random_state=0), repeats)
            rows.append((value, wall, cpu))
            fixed = ", ".join(f"{k} {v}" for k, v in plan["fixed"].items())
            print(f"{parameter:<10}{value:>8}{wall:>10.3f}{cpu:>10.3f}   {fixed}")
        results[parameter] = np.array(rows)
    print("\nLinearity (CPU seconds)")
    fits = {}
    for parameter, rows in results.items():
        x, seconds = rows[:, 0], rows[:, 2]
        slope, intercept = np.polyfit(x, seconds, 1)
        r_squared = 1 - np.sum((seconds - (intercept + slope * x)) ** 2) / np.sum((seconds - seconds.mean()) ** 2)
        fits[parameter] = (slope, intercept)
        verdict = "linear" if r_squared > 0.98 else "NOT linear"
        print(
            f"  {parameter:<8} R^2 = {r_squared:.4f} ({verdict}): t = {intercept * 1e3:.1f} ms + "
            f"{slope * 1e6:.2f} us x {parameter}"
        )
    plot(results, fits, output)


def plot(results: dict, fits: dict, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6))
    for axis, (parameter, rows) in zip(axes, results.items(), strict=True):
        slope, intercept = fits[parameter]
        x = rows[:, 0]
        axis.plot(x, rows[:, 2], "o", label="CPU s")
        axis.plot(x, rows[:, 1], "x", label="wall s")
        axis.plot(x, intercept + slope * x, "-", color="grey", label="linear fit (CPU)")
        fixed = ", ".join(f"{k} {v}" for k, v in SCALING[parameter]["fixed"].items())
        axis.set(xlabel=parameter, ylabel="seconds", title=f"{parameter} ({fixed})")
        axis.legend(fontsize=8)
    figure.suptitle("DynaMix compiled rollout, one thread")
    figure.tight_layout()
    path = output / "speed_scaling.png"
    figure.savefig(path, dpi=120)
    print(f"\nplot: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("outputs"), help="folder for the scaling plot")
    parser.add_argument("--repeats", type=int, default=3, help="runs per fast-path measurement (best is kept)")
    parser.add_argument("--model", default=None, help="weight set name or path (default: the official weights)")
    parser.add_argument("--child", choices=("big", "cold"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = SHARED / "models"
    if "DYNAMIX_MODEL_DIR" not in os.environ and models.exists():
        os.environ["DYNAMIX_MODEL_DIR"] = str(models)
    from dynamix_adapters.weights import OFFICIAL_MODEL

    model_name = args.model or OFFICIAL_MODEL
    if args.child:
        run_child(args.child, model_name)
        return 0

    single_thread()
    from dynamix_adapters import forecast, load_model

    model = load_model(model_name)
    series = lorenz_series()
    forecast(model, series[:100], 10, random_state=0)  # compile (or load the cached kernel) before timing
    target_cases(model, model_name, series, args.repeats)
    cold_start(model_name)
    scaling(model, series, args.repeats, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

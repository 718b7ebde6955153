"""Zero-shot inference speed on one thread: the batched rollout, the per-series kernel and torch, side by side.

    python benchmarks/bench_inference.py [--output outputs] [--repeats 3] [--model NAME_OR_PATH]

Everything runs on ONE thread (numba, torch, BLAS), with the official weights, on
Lorenz-63 windows (../shared/data/lorenz63.npy, or an integrated trajectory when that is
absent), standardized per window as ``forecast()`` does. It prints:

- the machine's single-thread float32 matmul peak (numpy, 1024 x 1024 x 1024), the yardstick
  for the achieved GFLOP/s, counted by ``step_flops`` (a FLOP model of one step);
- the rollout backends side by side, called directly on the same model-space inputs: "batched"
  (``rollout.batched.rollout_batched``), "numba" (the per-series kernel) and "torch" (the
  reference path; its ratio to each backend is the speed-up), for S = 1, 16, 256, 4096
  series at context 512 and horizon 1,000, and for one series at context 2,000 and horizon
  10,000: best of ``--repeats`` (wall and CPU seconds), series-steps per second and GFLOP/s.
  Torch runs the whole horizon up to 256 series, else 50 steps, extrapolated linearly;
- 1,024 series at context 2,000 and horizon 10,000: the batched rollout whole, once, in a
  fresh process that also measures its peak resident memory; numba from 1,000 steps and
  torch from 50, extrapolated linearly;
- the crossover: the smallest batch at which the batched rollout beats the per-series kernel;
- the cold first ``forecast()`` in a fresh process, with an empty compilation cache and with
  the cache the first run left on disk;
- ``forecast()`` time against horizon, context length and batch size, with a straight-line
  fit per parameter (R^2) as the linearity check, and a plot ``speed_scaling.png`` in ``--output``.

The machine may be shared: CPU seconds are less sensitive to other load than wall seconds,
so rates and GFLOP/s use CPU seconds, the matmul peak included.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy, numba and torch load their thread pools.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from dynamix_adapters import rollout  # noqa: E402
from dynamix_adapters.rollout.dispatch import BATCHED_MIN_TRAJECTORIES  # noqa: E402

SHARED = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
AGREEMENT_STEPS = 100
TORCH_SHORT_HORIZON = 50
NUMBA_SHORT_HORIZON = 1_000
TIME_BUDGET_S = 30.0  # a case stops repeating once its runs took this long
BACKEND_BATCHES = (1, 16, 256, 4096)
CROSSOVER_BATCHES = (4, 8, 12, 16, 20, 24, 32, 48, 64)
SCALING = {
    "horizon": {"values": [2000, 4000, 8000, 16000, 32000], "fixed": {"context": 512, "batch": 1}},
    "context": {"values": [250, 500, 1000, 2000, 4000], "fixed": {"horizon": 10000, "batch": 1}},
    "batch": {"values": [1, 4, 16, 64, 256], "fixed": {"context": 512, "horizon": 1000}},
}


def single_thread() -> None:
    """One torch thread; the compiled rollouts split work over ``torch.get_num_threads()`` threads, so one too."""
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


@dataclass(frozen=True)
class Inputs:
    """One rollout's inputs in the model's space: one unit per series, started from its last frame."""

    context: np.ndarray  # (S, T, N) float32, each window standardized per dim
    seed: int = 0

    @classmethod
    def of(cls, series: np.ndarray, length: int, batch: int) -> Inputs:
        windows = contexts(series, length, batch).reshape(length, batch, -1).transpose(1, 0, 2)
        standardized = (windows - windows.mean(axis=1, keepdims=True)) / windows.std(axis=1, keepdims=True)
        return cls(np.ascontiguousarray(standardized, dtype=np.float32))

    def arguments(self) -> tuple:
        """(context, valid_from, x0, unit, streams): one noise stream key per series."""
        batch = len(self.context)
        streams = rollout.stream_keys(self.seed, np.arange(batch, dtype=np.uint64), 1)
        return self.context, np.zeros(batch, dtype=np.int64), self.context[:, -1], np.arange(batch), streams


def run_backend(model, inputs: Inputs, horizon: int, backend: str) -> np.ndarray:
    """(H, S, N) observed dims from one backend, on one thread."""
    context, valid_from, x0, unit, streams = inputs.arguments()
    labels = tuple(str(u) for u in range(len(context)))
    batch = rollout.RolloutBatch(context, valid_from, x0, unit, streams, labels)
    return rollout.rollout(model, batch, horizon, backend)


def timed(func, repeats: int) -> tuple[float, float, object]:
    """Best wall and best CPU seconds over up to ``repeats`` calls (fewer past ``TIME_BUDGET_S``), and the result."""
    walls, cpus, spent = [], [], 0.0
    while len(walls) < repeats and (not walls or spent < TIME_BUDGET_S):
        wall, cpu = time.perf_counter(), time.process_time()
        result = func()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        spent += walls[-1]
    return min(walls), min(cpus), result


def agreement(fast: np.ndarray, reference: np.ndarray) -> str:
    """Largest and median deviation over the first steps, relative to each trajectory's magnitude (as in tests)."""
    steps = min(AGREEMENT_STEPS, len(reference))
    a, b = fast[:steps].reshape(steps, -1), reference[:steps].reshape(steps, -1)
    deviation = np.abs(a - b).max(axis=0) / np.abs(b).max(axis=0)
    return f"{deviation.max():.1e} / {np.median(deviation):.1e}"


def step_flops(arch, frames: int) -> int:
    """Floating-point operations of one step of one trajectory, counted from ``DynaMix.step``.

    A multiply-add counts 2, an exp, abs, max or division 1. Per attention frame: N subtractions, N abs
    and N additions (the L1 distance), the scale, the max, the shift, the exp, the weight's sum and
    N multiply-adds (the weighted encodings): 5N + 5.
    """
    n, m, j, p = arch.N, arch.M, arch.J, arch.P
    query = 2 * n * m + 2 * n
    attention = frames * (5 * n + 5) + n
    gating = 2 * j * (n + m) + 2 * j + 2 * j * j + j + 5 * j
    experts = p + 2 * j * m * m + 5 * j * m
    return query + attention + gating + experts


def matmul_peak(size: int = 1024, repeats: int = 5) -> float:
    """Single-thread float32 GFLOP/s of numpy's matmul (CPU seconds, best of ``repeats``)."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = a.copy()
    a @ b
    _, cpu, _ = timed(lambda: a @ b, repeats)
    return 2 * size**3 / cpu / 1e9


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
    inputs = Inputs.of(series, 2000, 1024)
    run_backend(model, Inputs.of(series, 100, 1), 10, "batched")  # compile (or load the cached kernel) first
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu, paths = timed(lambda: run_backend(model, inputs, 10_000, "batched"), 1)
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


def backend_row(name, backend, wall, cpu, series_steps, flops_per_step, torch_cpu, peak, note="") -> str:
    rate = series_steps / cpu
    gflops = rate * flops_per_step / 1e9
    ratio = f"{torch_cpu / cpu:>8.1f}x" if torch_cpu else f"{'':>9}"
    return (
        f"{name:<30}{backend:<9}{wall:>10.3f}{cpu:>10.3f}{rate:>16.3g}{gflops:>9.2f}{100 * gflops / peak:>7.0f}%"
        f"{ratio}  {note}"
    )


def compare_backends(model, model_name: str, series: np.ndarray, repeats: int, peak: float) -> None:
    print(
        f"\nBackends side by side (one thread; best of {repeats}, fewer past {TIME_BUDGET_S:.0f} s; rates from CPU s;"
        " speed-up = torch CPU s / CPU s)"
    )
    header = (
        f"{'case':<30}{'backend':<9}{'wall s':>10}{'cpu s':>10}{'series-steps/s':>16}{'GFLOP/s':>9}"
        f"{'% peak':>8}{'speed-up':>9}  note"
    )
    print(header)
    print("-" * len(header))
    cases = [(f"S={s}: ctx 512, H 1,000", 512, s, 1_000) for s in BACKEND_BATCHES]
    cases.append(("single: ctx 2000, H 10,000", 2000, 1, 10_000))
    for name, length, batch, horizon in cases:
        inputs = Inputs.of(series, length, batch)
        flops = step_flops(model.arch, length - 1)
        short = horizon if batch <= 256 else TORCH_SHORT_HORIZON
        torch_wall, torch_cpu, reference = timed(lambda i=inputs, h=short: run_backend(model, i, h, "torch"), 1)
        scale = horizon / short
        results = {}
        for backend in ("batched", "numba"):
            run = lambda i=inputs, h=horizon, b=backend: run_backend(model, i, h, b)  # noqa: E731
            wall, cpu, results[backend] = timed(run, repeats)
            note = f"agreement with torch {agreement(results[backend], reference)}"
            print(backend_row(name, backend, wall, cpu, batch * horizon, flops, torch_cpu * scale, peak, note))
        note = f"{short} steps, extrapolated" if scale > 1 else ""
        print(backend_row(name, "torch", torch_wall * scale, torch_cpu * scale, batch * horizon, flops, 0, peak, note))
        same = np.array_equal(results["batched"], results["numba"])
        print(f"{'':<30}batched and numba bit-identical: {same} (across backends only float32 agreement holds)")
    big_case(model, model_name, series, peak)


def big_case(model, model_name: str, series: np.ndarray, peak: float) -> None:
    name, batch, horizon = "S=1024: ctx 2000, H 10,000", 1024, 10_000
    flops, inputs = step_flops(model.arch, 1999), Inputs.of(series, 2000, batch)
    big = child("big", model_name)
    seconds = {}
    for backend, short in (("numba", NUMBA_SHORT_HORIZON), ("torch", TORCH_SHORT_HORIZON)):
        wall, cpu, _ = timed(lambda b=backend, h=short: run_backend(model, inputs, h, b), 1)
        seconds[backend] = (wall * horizon / short, cpu * horizon / short, f"{short} steps, extrapolated")
    torch_cpu = seconds["torch"][1]
    note = f"fresh process, all finite: {big['finite']}"
    print(backend_row(name, "batched", big["wall_s"], big["cpu_s"], batch * horizon, flops, torch_cpu, peak, note))
    for backend, (wall, cpu, note) in seconds.items():
        reference = 0 if backend == "torch" else torch_cpu
        print(backend_row(name, backend, wall, cpu, batch * horizon, flops, reference, peak, note))
    print(
        f"S=1024, batched, fresh process: peak RSS {big['peak_mib']:.0f} MiB (after imports, weights and inputs "
        f"{big['baseline_mib']:.0f} MiB; the float32 forecast itself {big['output_mib']:.0f} MiB)"
    )
    print(
        f"FLOP model (step_flops): {step_flops(model.arch, 511):,} per series-step at context 512, "
        f"{flops:,} at context 2000; % peak = GFLOP/s / the matmul peak"
    )


def crossover(model, series: np.ndarray, repeats: int) -> None:
    print("\nCrossover (H 1,000, CPU seconds, best of repeats): the batched rollout against the per-series kernel")
    print(f"{'context':>8}{'series':>8}{'numba s':>10}{'batched s':>11}{'batched / numba':>17}")
    for length in (512, 2000):
        first = None
        for batch in CROSSOVER_BATCHES:
            inputs = Inputs.of(series, length, batch)
            _, numba_cpu, _ = timed(lambda i=inputs: run_backend(model, i, 1_000, "numba"), repeats)
            _, batched_cpu, _ = timed(lambda i=inputs: run_backend(model, i, 1_000, "batched"), repeats)
            if first is None and batched_cpu < numba_cpu:
                first = batch
            print(f"{length:>8}{batch:>8}{numba_cpu:>10.3f}{batched_cpu:>11.3f}{batched_cpu / numba_cpu:>17.2f}")
        print(f"context {length}: batched is faster from {first} series on")
    print(f"dispatch.BATCHED_MIN_TRAJECTORIES = {BATCHED_MIN_TRAJECTORIES} (compared with the trajectories of a call)")


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
    from dynamix_adapters import load_model

    model = load_model(model_name)
    series = lorenz_series()
    for backend in ("batched", "numba"):  # compile (or load the cached kernels) before timing
        run_backend(model, Inputs.of(series, 100, 2), 10, backend)
    peak = matmul_peak()
    print(f"Single-thread float32 matmul peak (numpy, 1024^3, CPU seconds): {peak:.1f} GFLOP/s")
    compare_backends(model, model_name, series, args.repeats, peak)
    crossover(model, series, args.repeats)
    cold_start(model_name)
    scaling(model, series, args.repeats, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The torch rollout on a GPU against the CPU kernels: issue 21's GPU sizes, in one prepared run.

For each case (series x context x horizon, Lorenz-63 windows standardized per window, the
official weights, the same counter-based noise everywhere) it times, in wall seconds:

- "cpu kernel": the fastest CPU kernel for the case, one thread: the per-series kernel for
  fewer than ``BATCHED_MIN_TRAJECTORIES`` trajectories, else the batched one;
- "eager": the torch rollout on the device with every step launched from Python
  (``cuda_graph=False``): ``DynaMix.step`` once per step, as the published implementation
  rolls out; it stands in for that implementation on the same GPU, which is not a dependency;
- "graph": the torch rollout on the device as shipped (steps replayed as one CUDA graph,
  noise drawn on the device, nothing copied to the host before the end);
- "auto": ``rollout(..., "auto")`` with the model on the device: what a user who loads the
  model on cuda gets (small work goes to the CPU kernels, ``dispatch.GPU_MIN_WORK``);

and prints the ratios side by side, the agreement of the device forecast with the CPU
kernel over the first 50 steps, the peak device memory, and a crossover scan (series at
context 512, horizon 1,000) that tells where the device starts to win, next to
``GPU_MIN_WORK``. The last lines check issue 21's targets (the "eager" row standing in for
the reference).

    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_gpu.py            # on a GPU, ~3 min
    DYNAMIX_MODEL_DIR=../shared/models python benchmarks/bench_gpu.py --quick    # small sizes; runs on a CPU too

Without a GPU it runs the torch path on the CPU (the timings then say nothing about a GPU;
``--quick`` is what the test suite's smoke run uses).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_name] = "1"  # the CPU kernels on one thread, set before numpy, torch and numba load

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dynamix_adapters import load_model  # noqa: E402
from dynamix_adapters.rollout import RolloutBatch, rollout, select_backend, stream_keys  # noqa: E402
from dynamix_adapters.rollout.dispatch import BATCHED_MIN_TRAJECTORIES, GPU_MIN_WORK  # noqa: E402
from dynamix_adapters.rollout.torch_rollout import rollout_torch  # noqa: E402

SHARED = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
# (series, context, horizon): issue 21's sizes, and small ones that run in seconds on a CPU.
CASES = [(1, 2000, 10_000), (256, 512, 1000), (1024, 2000, 10_000), (16_384, 512, 1000)]
QUICK_CASES = [(1, 200, 300), (32, 128, 200), (128, 128, 200)]
CROSSOVER = ((1, 4, 16, 64, 256, 1024, 4096), 512, 1000)
QUICK_CROSSOVER = ((1, 8, 32), 128, 100)
AGREEMENT_STEPS = 50
# issue 21's GPU targets: (case, the least speed-up of the device over the reference stand-in) ...
SPEEDUP_TARGETS = {(16_384, 512, 1000): 20.0, (1024, 2000, 10_000): 10.0}
# ... and a single series on a cuda-loaded model no slower than this times the CPU kernel.
SINGLE_SERIES_BOUND = 1.2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="weights name or path (default: the official weights)")
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds on a CPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def lorenz_batch(series: int, context: int) -> RolloutBatch:
    """``series`` Lorenz-63 windows at evenly spread starts, standardized per window, one trajectory each."""
    path = SHARED / "data" / "lorenz63.npy"
    if not path.exists():
        raise SystemExit(f"{path} is missing: set DYNAMIX_SHARED_DIR to the folder holding data/lorenz63.npy.")
    x = np.load(path)
    starts = np.linspace(0, len(x) - context, series).astype(int)
    windows = np.stack([x[s : s + context] for s in starts])  # (S, T, 3)
    windows = (windows - windows.mean(axis=1, keepdims=True)) / windows.std(axis=1, keepdims=True)
    windows = np.ascontiguousarray(windows, dtype=np.float32)
    return RolloutBatch(
        context=windows,
        valid_from=np.zeros(series, dtype=np.int64),
        x0=windows[:, -1],
        unit=np.arange(series),
        streams=stream_keys(0, np.arange(series, dtype=np.uint64), 1),
        labels=tuple(str(s) for s in range(series)),
    )


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(run, device: str) -> tuple[float, np.ndarray]:
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - start, result


def agreement(device_forecast: np.ndarray, cpu_forecast: np.ndarray) -> float:
    """Largest deviation over the first steps, relative to each trajectory's magnitude."""
    steps = min(AGREEMENT_STEPS, len(cpu_forecast))
    a, b = device_forecast[:steps], cpu_forecast[:steps]
    scale = np.maximum(np.abs(b).max(axis=(0, 2)), 1e-12)
    return float((np.abs(a - b).max(axis=(0, 2)) / scale).max())


def measure_case(cpu_model, device_model, device: str, series: int, context: int, horizon: int) -> dict:
    batch = lorenz_batch(series, context)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cpu_backend = "batched" if series >= BATCHED_MIN_TRAJECTORIES else "numba"
    cpu_s, cpu_forecast = timed(lambda: rollout(cpu_model, batch, horizon, cpu_backend), "cpu")
    eager_s, _ = timed(lambda: rollout_torch(device_model, batch, horizon, cuda_graph=False), device)
    graph_s, device_forecast = timed(lambda: rollout_torch(device_model, batch, horizon), device)
    auto_s, _ = timed(lambda: rollout(device_model, batch, horizon), device)
    work = series * context
    return {
        "series": series,
        "context": context,
        "horizon": horizon,
        "cpu_kernel_s": cpu_s,
        "cpu_backend": cpu_backend,
        "eager_s": eager_s,
        "graph_s": graph_s,
        "auto_s": auto_s,
        "auto_backend": select_backend("auto", device_model, 1, work),
        "agreement": agreement(device_forecast, cpu_forecast),
        "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan"),
    }


def crossover(cpu_model, device_model, device: str, sizes: tuple) -> list[dict]:
    counts, context, horizon = sizes
    rows = []
    for series in counts:
        batch = lorenz_batch(series, context)
        cpu_backend = "batched" if series >= BATCHED_MIN_TRAJECTORIES else "numba"
        cpu_s, _ = timed(lambda b=batch, k=cpu_backend: rollout(cpu_model, b, horizon, k), "cpu")
        graph_s, _ = timed(lambda b=batch: rollout_torch(device_model, b, horizon), device)
        rows.append({"series": series, "work": series * context, "cpu_kernel_s": cpu_s, "graph_s": graph_s})
    return rows


def report(device_name: str, cases: list[dict], scan: list[dict], quick: bool) -> None:
    print(f"\ndevice: {device_name}; CPU kernels on one thread; wall seconds")
    header = (
        f"{'series':>7}{'ctx':>6}{'H':>7} | {'cpu kernel':>11}{'eager':>9}{'graph':>9}{'auto':>9} | "
        f"{'graph vs eager':>15}{'graph vs cpu':>13}{'auto / cpu':>11} | {'agreement':>10}{'peak MiB':>10}  auto ran"
    )
    print(header)
    for r in cases:
        print(
            f"{r['series']:>7}{r['context']:>6}{r['horizon']:>7} | {r['cpu_kernel_s']:>11.3f}{r['eager_s']:>9.3f}"
            f"{r['graph_s']:>9.3f}{r['auto_s']:>9.3f} | {r['eager_s'] / r['graph_s']:>14.1f}x"
            f"{r['cpu_kernel_s'] / r['graph_s']:>12.1f}x{r['auto_s'] / r['cpu_kernel_s']:>10.2f}x | "
            f"{r['agreement']:>10.1e}{r['peak_device_mib']:>10.0f}  {r['auto_backend']}"
        )
    print(f"\ncrossover (context {scan[0]['work'] // scan[0]['series']}): device graph vs CPU kernel")
    print(f"{'series':>7}{'work':>10}{'cpu kernel s':>14}{'graph s':>10}{'cpu / graph':>13}")
    for r in scan:
        ratio = r["cpu_kernel_s"] / r["graph_s"]
        print(f"{r['series']:>7}{r['work']:>10}{r['cpu_kernel_s']:>14.3f}{r['graph_s']:>10.3f}{ratio:>12.2f}x")
    wins = [r["work"] for r in scan if r["graph_s"] < r["cpu_kernel_s"]]
    print(f"the device wins from work {min(wins) if wins else 'never'} on; dispatch.GPU_MIN_WORK = {GPU_MIN_WORK}")
    if quick:
        return
    print("\nissue 21 targets (eager stands in for the reference on the same GPU):")
    for r in cases:
        key = (r["series"], r["context"], r["horizon"])
        if key in SPEEDUP_TARGETS:
            value, bound = r["eager_s"] / r["graph_s"], SPEEDUP_TARGETS[key]
            print(f"  {key}: graph {value:.1f}x eager (target >= {bound:g}x): {'met' if value >= bound else 'NOT met'}")
        if r["series"] == 1:
            value = r["auto_s"] / r["cpu_kernel_s"]
            verdict = "met" if value <= SINGLE_SERIES_BOUND else "NOT met"
            bound = f"<= {SINGLE_SERIES_BOUND}"
            print(f"  single series, cuda-loaded model: {value:.2f}x the CPU kernel ({bound}): {verdict}")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    cpu_model = load_model(args.model or "dynamix-3d-alrnn-v1.0")
    device_model = load_model(args.model or "dynamix-3d-alrnn-v1.0", args.device)
    if not args.device.startswith("cuda"):
        print(f"device {args.device}: no GPU, so this times the torch path on the CPU (a smoke run, not a GPU figure)")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.device} (torch)"
    warm = lorenz_batch(2, 64)  # compilation, the CUDA context and cuBLAS handles are not charged
    for model in (cpu_model, device_model):
        for backend in ("numba", "batched", "torch"):
            rollout(model, warm, 80, backend)
    cases = [
        measure_case(cpu_model, device_model, args.device, *case) for case in (QUICK_CASES if args.quick else CASES)
    ]
    scan = crossover(cpu_model, device_model, args.device, QUICK_CROSSOVER if args.quick else CROSSOVER)
    report(device_name, cases, scan, args.quick)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "cases": cases, "crossover": scan}, indent=1))


if __name__ == "__main__":
    main()

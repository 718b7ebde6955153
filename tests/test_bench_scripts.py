"""The benchmark scripts run end to end at their --quick sizes (the GPU one on the CPU torch path here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import OFFICIAL_SAFETENSORS, SHARED, require_shared

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_quick(script: str) -> str:
    require_shared(OFFICIAL_SAFETENSORS)
    require_shared(SHARED / "data" / "lorenz63.npy")
    root = str(BENCHMARKS.parent)
    env = os.environ | {
        "DYNAMIX_MODEL_DIR": str(OFFICIAL_SAFETENSORS.parent),
        "DYNAMIX_SHARED_DIR": str(SHARED),
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_bench_gpu_quick_prints_every_case_and_the_crossover():
    out = run_quick("bench_gpu.py")
    assert out.count(" | ") >= 2 * 3 + 2  # three cases, two separators each, and the header
    assert "the device wins from work" in out and "GPU_MIN_WORK" in out


@pytest.mark.slow
def test_bench_pipeline_quick_prints_the_rows_side_by_side_and_the_targets():
    out = run_quick("bench_pipeline.py")
    rows = ("reference: torch backend", "explicit settings, backend auto", "batched kernel alone", "defaults")
    for row in (*rows, "sktime explicit: fit + predict", "sktime defaults: fit + predict"):
        assert row in out
    assert "defaults <= 3x the explicit cost" in out
    for row in ("reference: torch backend, explicit, 100 paths", "explicit settings, 100 paths", "defaults, 100 paths"):
        assert row in out
    assert "with 100 paths: defaults <= 3x explicit" in out

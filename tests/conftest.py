"""Shared fixtures: the read-only ../shared material and tiny random models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from dynamix_adapters.model import Architecture, DynaMix

# Property tests: a fixed example sequence under CI=true, so CI cannot go red without a change;
# randomized locally; `make hunt` searches long for new cases (DYNAMIX_PROPERTY_EXAMPLES, profile "hunt").
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.register_profile("hunt", print_blob=True, report_multiple_bugs=True)
settings.load_profile(
    os.environ.get("DYNAMIX_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI", "").lower() == "true" else "dev")
)

# Hugging Face is unreachable here; fail fast instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
OFFICIAL_SAFETENSORS = SHARED / "models" / "dynamix-3d-alrnn-v1.0.safetensors"
OFFICIAL_BSON = SHARED / "models" / "dynamix-3d-alrnn-v1.0.bson"


def require_shared(path: Path = SHARED) -> Path:
    """Skip (or, under CI=true, fail) when the read-only shared material is absent."""
    if not path.exists():
        reason = f"{path} is not available: the official weights and published series live in ../shared"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def official_path() -> Path:
    return require_shared(OFFICIAL_SAFETENSORS)


@pytest.fixture(scope="session")
def official_model(official_path):
    from dynamix_adapters import load_model

    return load_model(official_path)


@pytest.fixture(scope="session")
def shared_series():
    require_shared(SHARED / "data")

    def load(name: str) -> np.ndarray:
        return np.load(SHARED / "data" / f"{name}.npy")

    return load


@pytest.fixture
def interleaved_threads():
    """Switch threads every microsecond instead of every 5 ms, for the duration of a test.

    Threads then interleave at almost every bytecode: a race that a normal run hits once in
    thousands of calls shows up within a few rounds.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def make_tiny_model(seed: int = 0, **sizes) -> DynaMix:
    arch = Architecture(**{"M": 8, "N": 3, "J": 2, "P": 1, **sizes})
    model = DynaMix(arch)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval().requires_grad_(False)


@pytest.fixture
def tiny_model() -> DynaMix:
    return make_tiny_model()

"""The compiled rollout against the torch reference: same noise, same forecasts."""

import importlib.util
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from dynamix_adapters import forecast
from dynamix_adapters.rollout import DivergenceError, RolloutBatch, rollout, select_backend, stream_keys
from dynamix_adapters.rollout.arithmetic import SUM_BLOCK, compile_kernel
from dynamix_adapters.rollout.dispatch import BATCHED_MIN_TRAJECTORIES, GPU_MIN_WORK, numba_import_error
from dynamix_adapters.rollout.noise import NOISE_CHUNK_STEPS, standard_normals
from dynamix_adapters.rollout.per_series import PackedContext, Weights, _advance, rollout_per_series
from dynamix_adapters.rollout.torch_rollout import GRAPH_STEPS

from .conftest import make_tiny_model

STEPS = 100


def streams(*seeds):
    """One noise stream key per seed (seeds stand in for the units' content keys)."""
    return stream_keys(11, np.array(seeds, dtype=np.uint64), 1)


def left_padded(series: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Standardize each (T_s, N) series and left-pad them to one (U, T, N) float32 context."""
    length = max(len(s) for s in series)
    context = np.zeros((len(series), length, series[0].shape[1]), dtype=np.float32)
    for u, s in enumerate(series):
        context[u, length - len(s) :] = (s - s.mean(axis=0)) / s.std(axis=0)
    return context, np.array([length - len(s) for s in series])


def make_batch(context, valid_from, unit, seeds, x0=None) -> RolloutBatch:
    """Trajectories of ``unit`` started from their units' last frames (or x0), one stream per seed."""
    x0 = context[unit, -1] if x0 is None else x0
    labels = tuple(f"unit {u}" for u in range(len(context)))
    return RolloutBatch(context, np.asarray(valid_from), x0, np.asarray(unit), streams(*seeds), labels)


def both_backends(model, context, valid_from, unit, seeds, horizon=STEPS):
    fast = rollout(model, make_batch(context, valid_from, unit, seeds), horizon, backend="numba")
    reference = rollout(model, make_batch(context, valid_from, unit, seeds), horizon, backend="torch")
    return fast, reference


def assert_matches_reference(fast, reference, rtol=1e-4):
    """Within rtol of each trajectory's and dim's magnitude: single values cross zero, so pointwise rtol is moot."""
    assert fast.shape == reference.shape
    scale = np.abs(reference).max(axis=0)
    error = np.abs(fast - reference).max(axis=0)
    assert np.all(error <= rtol * scale), f"largest relative error {np.max(error / scale):.2e}"


def published_contexts(shared_series) -> tuple[np.ndarray, np.ndarray]:
    lengths = {"lorenz63": 2000, "chua": 1028, "sprottM": 512}
    return left_padded([shared_series(name)[:length] for name, length in lengths.items()])


def test_one_step_matches_torch_from_the_same_states(official_model, shared_series):
    """The kernel's arithmetic, free of chaos: from each torch state, one step lands within float32 rounding."""
    context, valid_from = published_contexts(shared_series)
    unit, steps = np.array([0, 1, 2, 0]), 200
    noise = standard_normals(streams(*range(len(unit))), 0, steps, 3)  # (B, steps, N)
    with torch.no_grad():
        frames = torch.from_numpy(context)
        padding = torch.arange(context.shape[1] - 1)[None, :] < torch.from_numpy(valid_from)[:, None]
        keys, encodings = frames[unit, :-1], official_model.gating_network.encode(frames)[unit]
        z = official_model.initial_state(torch.from_numpy(context[unit, -1]))
        states = [z]
        for t in range(steps):
            states.append(
                official_model.step(states[-1], keys, encodings, torch.from_numpy(noise[:, t]), padding[unit])
            )
    states = torch.stack(states).numpy()  # (steps + 1, B, M)
    padded = PackedContext.of(official_model, context, valid_from, block=SUM_BLOCK)
    weights = Weights.of(official_model)
    arrays = (*padded.arrays(), *weights.columns(), *weights.arrays())
    for t in range(steps):
        state, out = states[t].copy(), np.empty((1, len(unit), 3), dtype=np.float32)
        _advance(state, noise[:, t : t + 1].copy(), out, 0, 0, len(unit), unit, *arrays)
        np.testing.assert_allclose(state, states[t + 1], rtol=0, atol=2e-6 * np.abs(states[t + 1]).max())
        np.testing.assert_array_equal(out[0], state[:, :3])


def test_fast_matches_torch_on_official_weights(official_model, shared_series):
    """Free-running, 100 steps, on chua and sprottM (padded, with extra sample paths).

    Lorenz-63 is left to the one-step test: it amplifies float32 rounding so much that for about 1 noise
    draw in 10 the backends part by more than 1e-4 within 100 steps. So does torch in float32 against
    float64; torch even moves by 7e-5 on its own when its batched conv sees other series.
    """
    context, valid_from = published_contexts(shared_series)
    assert valid_from.tolist() == [0, 972, 1488]
    fast, reference = both_backends(official_model, context, valid_from, np.array([1, 2, 1, 2, 1, 2]), range(6))
    assert_matches_reference(fast, reference)


@pytest.mark.parametrize("sizes", [{}, {"M": 12, "N": 2, "J": 3, "P": 2}])
def test_fast_matches_torch_with_padding_and_samples(sizes):
    model = make_tiny_model(seed=5, **sizes)
    rng = np.random.default_rng(0)
    n = model.arch.N
    context, valid_from = left_padded([rng.normal(size=(length, n)).cumsum(0) for length in (120, 3, 60)])
    unit = np.array([0, 1, 2, 2, 0, 1, 2])
    fast, reference = both_backends(model, context, valid_from, unit, seeds=range(7))
    assert_matches_reference(fast, reference)


def test_a_trajectory_does_not_depend_on_batch_or_threads(official_model, shared_series):
    context, valid_from = left_padded([shared_series("sprottM")[:512], shared_series("chua")[:300]])
    unit = np.array([1, 0, 1, 0, 1])
    batched = [
        rollout_per_series(official_model, make_batch(context, valid_from, unit, range(5)), 300, threads=threads)
        for threads in (1, 2, 3)
    ]
    alone_batch = make_batch(context[1:], valid_from[1:], np.array([0]), [2], x0=context[[1], -1])
    alone = rollout_per_series(official_model, alone_batch, 300)
    for other in batched[1:]:
        np.testing.assert_array_equal(other, batched[0])
    np.testing.assert_array_equal(alone[:, 0], batched[0][:, 2])


def test_auto_picks_the_compiled_backend_on_cpu_and_torch_elsewhere(tiny_model, official_model, shared_series):
    assert numba_import_error() is None
    assert select_backend("auto", tiny_model) == "numba"
    assert select_backend("torch", tiny_model) == "torch"
    elsewhere = make_tiny_model().to("meta")  # stands in for a GPU: only the device type matters here
    assert select_backend("auto", elsewhere, work=GPU_MIN_WORK) == "torch"
    assert select_backend("auto", elsewhere, work=GPU_MIN_WORK - 1) == "numba"  # small work: the CPU kernel
    assert select_backend("auto", elsewhere, BATCHED_MIN_TRAJECTORIES, GPU_MIN_WORK - 1) == "batched"
    assert select_backend("auto", tiny_model, BATCHED_MIN_TRAJECTORIES - 1) == "numba"
    # The compiled kernels agree bit for bit on this machine, so a call's size may pick the kernel.
    assert select_backend("auto", tiny_model, trajectories=BATCHED_MIN_TRAJECTORIES - 1) == "numba"
    assert select_backend("auto", tiny_model, trajectories=BATCHED_MIN_TRAJECTORIES) == "batched"
    x = shared_series("lorenz63")[:1000]
    default = forecast(official_model, x, STEPS, random_state=3)
    np.testing.assert_array_equal(default, forecast(official_model, x, STEPS, random_state=3, backend="numba"))
    reference = forecast(official_model, x, STEPS, random_state=3, backend="torch")
    assert_matches_reference(default, reference)


def test_auto_falls_back_to_torch_with_a_warning_when_numba_does_not_import(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # what an installed but incompatible numba looks like
    numba_import_error.cache_clear()
    try:
        with pytest.warns(UserWarning, match="numba does not import"):
            assert select_backend("auto", tiny_model) == "torch"
    finally:
        numba_import_error.cache_clear()


def test_unknown_backend_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="Unknown backend 'cuda'; choose 'auto' or one of numba, batched, torch"):
        forecast(tiny_model, np.ones((50, 3)).cumsum(0), 5, backend="cuda")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unit": np.array([0, 2])}, "unit indices must lie in"),
        ({"valid_from": np.array([0, 19])}, "valid_from must hold 2 indices"),
        ({"x0": np.zeros((2, 2))}, "x0 must be"),
    ],
)
def test_rollout_rejects_inconsistent_inputs(tiny_model, change, message):
    inputs = {"valid_from": np.array([0, 5]), "x0": np.zeros((2, 3)), "unit": np.array([0, 1])}
    inputs.update(change)
    context = np.zeros((2, 20, 3), dtype=np.float32)
    batch = make_batch(context, inputs["valid_from"], inputs["unit"], [0, 1], x0=inputs["x0"])
    with pytest.raises(ValueError, match=message):
        rollout(tiny_model, batch, 5)


def test_diverging_rollout_turns_non_finite_like_torch_and_forecast_raises():
    model = make_tiny_model(seed=2)
    with torch.no_grad():
        for expert in model.experts:
            expert.A.fill_(3.0)
    context, valid_from = left_padded([np.random.default_rng(1).normal(size=(80, 3))])
    fast, reference = both_backends(model, context, valid_from, np.array([0, 0]), seeds=(0, 1), horizon=150)
    first_bad = [np.argmin(np.isfinite(run).all(axis=2), axis=0) for run in (fast, reference)]
    assert np.all(first_bad[0] > 0)
    np.testing.assert_array_equal(first_bad[0], first_bad[1])
    assert not np.isfinite(fast[-1]).any()
    with pytest.raises(DivergenceError, match="diverged"):
        forecast(model, context[0], 150, random_state=0)


def test_memory_stays_linear_in_horizon_and_context(official_model, shared_series):
    """No (H, T) or (B, T) buffer per step: the peak stays near the (H, B, N) result itself."""
    batch, length, horizon = 64, 500, 2000
    lorenz = shared_series("lorenz63")
    context, _ = left_padded([lorenz[start : start + length] for start in range(0, 100 * batch, 100)])
    unit = np.arange(batch)
    tracemalloc.start()
    out = rollout(official_model, make_batch(context, np.zeros(batch, int), unit, unit), horizon)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.isfinite(out).all()
    assert peak < 4 * out.nbytes + 4 * context.nbytes + 8 * 2**20


def test_compiles_without_a_writable_cache(tmp_path, monkeypatch):
    """A read-only install with no writable cache directory falls back to compiling in memory."""
    import numba

    package = tmp_path / "installed"
    package.mkdir()
    (package / "__pycache__").write_text("a file where numba would put its cache directory")
    (package / "kernel.py").write_text("def add_one(x):\n    return x + 1\n")
    (tmp_path / "no-home").write_text("not a directory either")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-home" / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "no-home"))
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    spec = importlib.util.spec_from_file_location("read_only_kernel", package / "kernel.py")
    kernel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel)
    with pytest.raises(RuntimeError, match="cannot cache"):
        numba.njit(cache=True)(kernel.add_one)
    assert compile_kernel(kernel.add_one)(41) == 42


def test_torch_rollout_split_into_noise_blocks_matches_the_compiled_kernels():
    """A horizon past one noise block: the torch rollout draws block 2 as the kernels do (counters, not state)."""
    model = make_tiny_model(seed=2)
    rng = np.random.default_rng(1)
    context, valid_from = left_padded([rng.normal(size=(length, 3)).cumsum(0) for length in (80, 40)])
    horizon = NOISE_CHUNK_STEPS + 30
    fast, reference = both_backends(model, context, valid_from, np.array([0, 1, 0]), range(3), horizon)
    assert_matches_reference(fast[-50:], reference[-50:])  # the tiny model contracts: no chaos amplifies rounding
    batched = rollout(model, make_batch(context, valid_from, np.array([0, 1, 0]), range(3)), horizon, "batched")
    assert_matches_reference(batched[-50:], reference[-50:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the torch path is tested on the CPU above")
def test_on_cuda_the_rollout_stays_on_the_device_and_matches_the_cpu_kernel(official_path, shared_series):
    from dynamix_adapters import load_model

    model = load_model(official_path, "cuda")
    context, valid_from = published_contexts(shared_series)
    unit = np.array([1, 2, 1, 2])
    horizon = 3 * GRAPH_STEPS + 5  # graph replays, then eager steps
    on_device = rollout(model, make_batch(context, valid_from, unit, range(4)), horizon, backend="torch")
    fast = rollout(model, make_batch(context, valid_from, unit, range(4)), horizon, backend="numba")
    assert_matches_reference(fast[:50], on_device[:50])
    # "auto" sends a small rollout of a cuda model to the CPU kernel, bit for bit
    small = rollout(model, make_batch(context, valid_from, unit, range(4)), horizon)
    np.testing.assert_array_equal(small, fast)

"""The batched rollout against torch: the same recurrence to float32 rounding, bit-identical in any batch."""

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamix_adapters.rollout import RolloutBatch, stream_keys
from dynamix_adapters.rollout.arithmetic import exp_below_zero
from dynamix_adapters.rollout.batched import (
    LANES,
    _advance_tiles,
    _gather_states,
    matches_per_series,
    rollout_batched,
)
from dynamix_adapters.rollout.noise import standard_normals
from dynamix_adapters.rollout.per_series import PackedContext, Weights, rollout_per_series

from .conftest import make_tiny_model

STEPS = 100


def run_batched(model, context, valid_from, x0, unit, horizon, streams, threads=None):
    labels = tuple(f"unit {u}" for u in range(len(context)))
    batch = RolloutBatch(context, np.asarray(valid_from), x0, np.asarray(unit), streams, labels)
    return rollout_batched(model, batch, horizon, threads)


def run_per_series(model, context, valid_from, x0, unit, horizon, streams):
    labels = tuple(f"unit {u}" for u in range(len(context)))
    batch = RolloutBatch(context, np.asarray(valid_from), x0, np.asarray(unit), streams, labels)
    return rollout_per_series(model, batch, horizon)


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


@torch.no_grad()
def torch_states(model, context, valid_from, x0, unit, noise) -> np.ndarray:
    """Latent states (steps + 1, B, M) of ``DynaMix.step`` driven by noise (B, steps, N): the reference."""
    frames = torch.from_numpy(context)
    padding = torch.arange(context.shape[1] - 1)[None, :] < torch.from_numpy(valid_from)[:, None]
    keys, encodings = frames[unit, :-1], model.gating_network.encode(frames)[unit]
    states = [model.initial_state(torch.from_numpy(np.asarray(x0, dtype=np.float32)))]
    experts = model.expert_stack()
    for t in range(noise.shape[1]):
        eps = torch.from_numpy(noise[:, t])
        states.append(model.step(states[-1], keys, encodings, eps, padding[unit], experts=experts))
    return torch.stack(states).numpy()


def torch_rollout(model, context, valid_from, x0, unit, horizon, seeds) -> np.ndarray:
    noise = standard_normals(streams(*seeds), 0, horizon, model.arch.N)
    return torch_states(model, context, valid_from, x0, unit, noise)[1:, :, : model.arch.N]


def batched_step(model, context, valid_from, unit, states, noise) -> np.ndarray:
    """One batched step from latent states (B, M) with noise (B, N): the kernel's arithmetic alone."""
    batch, n = len(unit), model.arch.N
    weights, packed = Weights.of(model), PackedContext.of(model, context, valid_from)
    lane_state = np.empty((-(-batch // LANES), model.arch.M, LANES), dtype=np.float32)
    _gather_states(np.ascontiguousarray(states, dtype=np.float32), lane_state)
    out = np.empty((1, batch, n), dtype=np.float32)
    _advance_tiles(
        lane_state, noise[:, None, :].copy(), out, 0, 0, len(lane_state), unit.astype(np.int64), *packed.arrays(),
        weights.read_z(), weights.sigma, weights.neg_inv_tau1, weights.W1, weights.b1, weights.W2, weights.b2,
        weights.neg_inv_tau2, weights.A, np.ascontiguousarray(weights.W_columns.T), weights.h, weights.relu_from,
    )  # fmt: skip
    return lane_state.transpose(0, 2, 1).reshape(-1, model.arch.M)[:batch]


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
    unit, steps = np.array([0, 1, 2, 0, 2]), 200
    noise = standard_normals(streams(*range(len(unit))), 0, steps, 3)  # (B, steps, N)
    states = torch_states(official_model, context, valid_from, context[unit, -1], unit, noise)
    for t in range(steps):
        step = batched_step(official_model, context, valid_from, unit, states[t], noise[:, t])
        np.testing.assert_allclose(step, states[t + 1], rtol=0, atol=2e-6 * np.abs(states[t + 1]).max())


def test_matches_torch_on_official_weights(official_model, shared_series):
    """Free-running, 100 steps, on chua and sprottM (padded, with extra sample paths), as the numba backend."""
    context, valid_from = published_contexts(shared_series)
    unit = np.array([1, 2, 1, 2, 1, 2])
    x0 = context[unit, -1]
    fast = run_batched(official_model, context, valid_from, x0, unit, STEPS, streams(*range(6)))
    assert_matches_reference(fast, torch_rollout(official_model, context, valid_from, x0, unit, STEPS, range(6)))


@pytest.mark.parametrize("sizes", [{}, {"M": 12, "N": 2, "J": 3, "P": 2}, {"M": 12, "N": 4, "J": 3, "P": 2}])
def test_matches_torch_with_padding_and_samples(sizes):
    model = make_tiny_model(seed=5, **sizes)
    rng = np.random.default_rng(0)
    n = model.arch.N
    context, valid_from = left_padded([rng.normal(size=(length, n)).cumsum(0) for length in (120, 3, 60)])
    unit = np.array([0, 1, 2, 2, 0, 1, 2])
    x0 = context[unit, -1]
    fast = run_batched(model, context, valid_from, x0, unit, STEPS, streams(*range(7)))
    assert_matches_reference(fast, torch_rollout(model, context, valid_from, x0, unit, STEPS, range(7)))


@pytest.mark.parametrize("sizes", [{"N": 3, "J": 10, "M": 30}, {"N": 3, "J": 2, "M": 8}, {"N": 5, "J": 4, "M": 16}])
def test_this_machines_blas_sums_the_tile_products_as_the_per_series_kernel(sizes):
    assert matches_per_series(sizes["N"], sizes["J"], sizes["M"])


def test_bit_identical_to_the_per_series_kernel_on_official_weights(official_model, shared_series):
    """Contexts of 2,000, 1,028 and 512 frames, left-padded in one batch; several paths per series; 300 steps."""
    context, valid_from = published_contexts(shared_series)
    unit = np.array([0, 1, 2, 0, 1, 2, 2, 1])
    x0, keys = context[unit, -1], streams(*range(len(unit)))
    batched = run_batched(official_model, context, valid_from, x0, unit, 300, keys)
    np.testing.assert_array_equal(batched, run_per_series(official_model, context, valid_from, x0, unit, 300, keys))


TINY_SIZES = [
    {},
    {"M": 12, "N": 2, "J": 3, "P": 2},
    {"M": 12, "N": 4, "J": 3, "P": 2},
    {"M": 16, "N": 7, "J": 4, "P": 3},
]


@pytest.mark.parametrize("sizes", TINY_SIZES)
def test_bit_identical_to_the_per_series_kernel_with_padding_samples_and_divergence(sizes):
    model = make_tiny_model(seed=5, **sizes)
    rng = np.random.default_rng(0)
    n = model.arch.N
    context, valid_from = left_padded([rng.normal(size=(length, n)).cumsum(0) for length in (120, 3, 60, 33, 64)])
    unit = np.array([0, 1, 2, 2, 0, 1, 2, 3, 4, 4])
    x0 = context[unit, -1] * rng.uniform(0.5, 30, size=(len(unit), 1)).astype(np.float32)  # some diverge
    keys = streams(*range(len(unit)))
    batched = run_batched(model, context, valid_from, x0, unit, STEPS, keys)
    np.testing.assert_array_equal(batched, run_per_series(model, context, valid_from, x0, unit, STEPS, keys))


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    lengths=st.lists(st.integers(2, 150), min_size=1, max_size=4),
    batch=st.integers(1, 80),
    start_from_context=st.booleans(),
)
def test_property_one_step_and_short_rollout_match_torch(seed, lengths, batch, start_from_context):
    """Random tiny models, unequal context lengths (padding), any batch size, initial states on or off the context."""
    rng = np.random.default_rng(seed)
    model = make_tiny_model(seed=seed % 7)
    context, valid_from = left_padded([rng.normal(size=(length, 3)).cumsum(0) for length in lengths])
    unit = rng.integers(0, len(lengths), batch)
    x0 = context[unit, -1] if start_from_context else rng.normal(size=(batch, 3)).astype(np.float32)
    seeds = range(batch)
    noise = standard_normals(streams(*seeds), 0, 20, 3)
    states = torch_states(model, context, valid_from, x0, unit, noise)
    for t in (0, 10, 19):
        step = batched_step(model, context, valid_from, unit, states[t], noise[:, t])
        np.testing.assert_allclose(step, states[t + 1], rtol=0, atol=2e-6 * np.abs(states[t + 1]).max())
    fast = run_batched(model, context, valid_from, x0, unit, 20, streams(*seeds))
    assert_matches_reference(fast, states[1:, :, :3])
    np.testing.assert_array_equal(fast, run_per_series(model, context, valid_from, x0, unit, 20, streams(*seeds)))


def test_a_trajectory_is_bit_identical_alone_and_in_any_batch(official_model, shared_series):
    """Any lane, tile, batch size, thread split, and tile partners with longer or shorter contexts."""
    names = ("sprottM", "chua", "lorenz63")
    context, valid_from = left_padded([shared_series(name)[: 300 + 400 * i] for i, name in enumerate(names)])
    horizon, target = 150, 1  # chua, context 700, padded in a batch whose longest context is 1,100
    alone = run_batched(
        official_model, context[[target]], valid_from[[target]], context[[target], -1], np.array([0]), horizon,
        streams(7),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for batch, position, threads in ((2, 1, 1), (LANES, LANES - 1, 1), (LANES + 5, LANES + 3, 2), (150, 77, 3)):
        unit = rng.integers(0, len(names), batch)
        unit[position] = target
        seeds = rng.integers(0, 1000, batch)
        seeds[position] = 7
        out = run_batched(
            official_model, context, valid_from, context[unit, -1], unit, horizon, streams(*seeds), threads=threads
        )
        np.testing.assert_array_equal(out[:, position], alone[:, 0], err_msg=f"batch {batch}, position {position}")


def test_diverging_rollout_turns_non_finite_like_torch():
    """Divergence detection downstream relies on non-finite states: the first non-finite step matches torch."""
    model = make_tiny_model(seed=2)
    with torch.no_grad():
        for expert in model.experts:
            expert.A.fill_(3.0)
    context, valid_from = left_padded([np.random.default_rng(1).normal(size=(80, 3))])
    unit, x0 = np.array([0, 0, 0]), context[[0, 0, 0], -1] * np.array([[1.0], [0.5], [2.0]], dtype=np.float32)
    fast = run_batched(model, context, valid_from, x0, unit, 150, streams(0, 1, 2))
    reference = torch_rollout(model, context, valid_from, x0, unit, 150, (0, 1, 2))
    first_bad = [np.argmin(np.isfinite(run).all(axis=2), axis=0) for run in (fast, reference)]
    assert np.all(first_bad[0] > 0)
    np.testing.assert_array_equal(first_bad[0], first_bad[1])
    assert not np.isfinite(fast[-1]).any()


def test_a_non_finite_state_turns_nan_in_its_own_lane_only_as_in_torch(official_model, shared_series):
    context, valid_from = left_padded([shared_series("chua")[:300]])
    unit = np.zeros(3, dtype=np.int64)
    states = np.tile(official_model.initial_state(torch.from_numpy(context[:1, -1])).numpy(), (3, 1))
    states[1, 4] = np.inf
    noise = standard_normals(streams(0, 1, 2), 0, 1, 3)[:, 0]
    step = batched_step(official_model, context, valid_from, unit, states, noise)
    with torch.no_grad():
        frames = torch.from_numpy(context)
        encodings = official_model.gating_network.encode(frames)
        reference = official_model.step(
            torch.from_numpy(states), frames[unit, :-1], encodings[unit], torch.from_numpy(noise)
        ).numpy()
    np.testing.assert_array_equal(np.isnan(step), np.isnan(reference))
    assert np.isnan(step[1]).all()
    np.testing.assert_allclose(step[[0, 2]], reference[[0, 2]], rtol=0, atol=2e-6 * np.abs(reference[0]).max())


@numba.njit
def exp_of_each(x):
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = exp_below_zero(x[i])
    return out


def test_branch_free_exp_is_within_float32_rounding_and_zero_below_the_cutoff():
    x = np.linspace(-60, 0, 600_001, dtype=np.float32)
    relative = exp_of_each(x).astype(np.float64) / np.exp(x.astype(np.float64)) - 1
    assert np.abs(relative).max() < 3e-7
    np.testing.assert_array_equal(exp_of_each(np.array([-60.5, -1e30, -np.inf, np.nan], dtype=np.float32)), 0)

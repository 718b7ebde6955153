"""The counter-based gating noise: one function of (stream key, step, dim), the same on every backend."""

import numpy as np
import pytest
import torch
from scipy import stats

from dynamix_adapters.rollout import stream_keys
from dynamix_adapters.rollout.noise import key_words, max_steps, standard_normals, standard_normals_torch


def keys(count: int, seed: int = 5, paths: int = 1) -> np.ndarray:
    return stream_keys(seed, np.arange(count, dtype=np.uint64) * 7919, paths)


def test_a_streams_draws_do_not_depend_on_other_streams_or_on_how_steps_are_split():
    all_keys = keys(9)
    whole = standard_normals(all_keys, 0, 300, 3)  # (B, steps, N)
    split = np.concatenate([standard_normals(all_keys, start, 100, 3) for start in (0, 100, 200)], axis=1)
    np.testing.assert_array_equal(whole, split)
    np.testing.assert_array_equal(whole[[4]], standard_normals(all_keys[[4]], 0, 300, 3))
    np.testing.assert_array_equal(whole[::-1], standard_normals(all_keys[::-1], 0, 300, 3))


def test_torch_draws_the_same_numbers_as_numpy():
    all_keys = keys(40, paths=3)
    expected = standard_normals(all_keys, 17, 250, 3)
    drawn = standard_normals_torch(torch.as_tensor(key_words(all_keys)), 17, 250, 3).numpy().transpose(1, 0, 2)
    np.testing.assert_array_equal(drawn, expected)
    as_tensor = standard_normals_torch(torch.as_tensor(key_words(all_keys)), torch.tensor(17), 250, 3)
    np.testing.assert_array_equal(as_tensor.numpy().transpose(1, 0, 2), expected)


def test_keys_differ_by_seed_unit_and_path_and_are_path_major():
    one = stream_keys(1, np.array([10, 20], dtype=np.uint64), 3)
    assert one.dtype == np.uint64 and one.shape == (6,) and len(set(one.tolist())) == 6
    np.testing.assert_array_equal(one[[0, 2, 4]], stream_keys(1, np.array([10], dtype=np.uint64), 3))
    assert not set(one.tolist()) & set(stream_keys(2, np.array([10, 20], dtype=np.uint64), 3).tolist())
    huge = 2**127 + 3  # SeedSequence entropy has 128 bits; every bit counts
    assert stream_keys(huge, [10], 1)[0] != stream_keys(3, [10], 1)[0]


def test_draws_are_standard_normal_and_uncorrelated_across_steps_dims_and_streams():
    noise = standard_normals(keys(2000), 0, 200, 3).astype(np.float64)  # 1.2 M numbers
    flat = noise.ravel()
    assert abs(flat.mean()) < 0.005 and abs(flat.std() - 1) < 0.005
    assert stats.kstest(flat[:200_000], "norm").pvalue > 1e-3
    assert abs(stats.kurtosis(flat)) < 0.02
    for a, b in [
        (noise[:, :-1], noise[:, 1:]),  # consecutive steps
        (noise[..., 0], noise[..., 1]),  # dims of one step
        (noise[:-1], noise[1:]),  # neighbouring streams
    ]:
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.005


def test_a_horizon_past_the_counter_range_is_a_clear_error():
    with pytest.raises(ValueError, match="at most"):
        standard_normals(keys(1), max_steps(3) - 1, 2, 3)

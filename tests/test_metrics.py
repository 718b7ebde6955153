import numpy as np
import pytest

from dynamix_adapters.metrics import mase, power_spectrum_distance, state_space_divergence


@pytest.fixture
def cloud():
    return np.random.default_rng(0).normal(size=(5000, 3))


def test_identical_trajectories_score_zero(cloud):
    assert state_space_divergence(cloud, cloud) == pytest.approx(0.0, abs=1e-12)
    assert power_spectrum_distance(cloud, cloud) == pytest.approx(0.0, abs=1e-6)
    assert mase(cloud, cloud) == 0.0


def test_disjoint_supports_give_large_divergence(cloud):
    far = cloud + 100.0
    assert state_space_divergence(cloud, far) != state_space_divergence(cloud, far)  # NaN: nothing in range
    one_sided = cloud.copy()
    one_sided[:, 0] = np.abs(one_sided[:, 0])
    other_draw = np.random.default_rng(1).normal(size=cloud.shape)
    assert state_space_divergence(cloud, one_sided, bins=10) > 5.0, "half the true mass has no generated points"
    assert state_space_divergence(cloud, other_draw, bins=10) < 0.5, "a second draw of the same law is close"


def test_spectra_of_different_frequencies_are_far_apart():
    t = np.arange(4096)
    slow, fast = np.sin(2 * np.pi * t / 200)[:, None], np.sin(2 * np.pi * t / 7)[:, None]
    assert power_spectrum_distance(slow, fast) > 0.9
    assert power_spectrum_distance(slow, 3 * slow + 1) == pytest.approx(0.0, abs=1e-6)


def test_mase_known_value():
    true = np.arange(20, dtype=float)[:, None]  # mean |lag-1 change| = 1
    pred = true + 2.0
    assert mase(true, pred) == pytest.approx(2.0)
    assert mase(true, pred, steps=5) == pytest.approx(2.0)


def test_shape_mismatch_is_rejected(cloud):
    with pytest.raises(ValueError, match="dims"):
        state_space_divergence(cloud, cloud[:, :2])

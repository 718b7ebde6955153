import matplotlib
import numpy as np
import pytest

from dynamix_adapters.plotting import plot_attractor, plot_forecast, plot_power_spectra
from dynamix_adapters.systems import lorenz63_trajectory

matplotlib.use("Agg")


def test_forecast_fan_draws_one_band_per_coverage():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(50, 20)).cumsum(axis=1)
    fig = plot_forecast(np.zeros(30), samples.mean(0), samples=samples, truth=np.ones(20), coverages=(0.8, 0.95))
    ax = fig.axes[0]
    assert len(ax.collections) == 2
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["context", "truth", "forecast"]


def test_attractor_and_spectra_figures(tmp_path):
    x = lorenz63_trajectory(1500)
    fig = plot_attractor(x[:1000], x[500:])
    fig.savefig(tmp_path / "attractor.png")
    spectra = plot_power_spectra(x[:1000], x[500:])
    assert len(spectra.axes) == 3
    assert (tmp_path / "attractor.png").stat().st_size > 1000


def test_attractor_needs_three_dims():
    with pytest.raises(ValueError, match=r"\(T, 3\)"):
        plot_attractor(np.zeros((10, 2)), np.zeros((10, 2)))

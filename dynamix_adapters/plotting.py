"""Matplotlib figures for forecasts and dynamical systems; every function returns a Figure.

>>> import numpy as np
>>> fig = plot_forecast(np.sin(np.arange(100) / 5), np.sin(np.arange(100, 130) / 5))
>>> len(fig.axes)
1
"""

from __future__ import annotations

import numpy as np

from .metrics import normalized_power_spectrum


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("Plotting needs matplotlib: pip install 'dynamix-adapters[plot]'") from err
    return plt


def plot_forecast(
    context,
    forecast,
    *,
    truth=None,
    samples=None,
    coverages=(0.5, 0.8, 0.95),
    context_index=None,
    forecast_index=None,
    title: str | None = None,
    ax=None,
):
    """One series: its context, the point forecast, and an interval fan from sample paths.

    ``samples`` is (n_samples, H) sample paths; each coverage becomes a shaded band of
    empirical quantiles. ``truth`` (H,) is drawn for comparison when given.
    """
    plt = _pyplot()
    context, forecast = np.asarray(context, float).ravel(), np.asarray(forecast, float).ravel()
    past = np.arange(-len(context), 0) if context_index is None else context_index
    future = np.arange(len(forecast)) if forecast_index is None else forecast_index
    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 4))
    else:
        fig = ax.figure
    ax.plot(past, context, color="black", lw=1, label="context")
    if samples is not None:
        paths = np.asarray(samples, float).reshape(len(samples), -1)
        for coverage in sorted(coverages, reverse=True):
            lower, upper = np.quantile(paths, [(1 - coverage) / 2, (1 + coverage) / 2], axis=0)
            ax.fill_between(future, lower, upper, color="tab:red", alpha=0.15, lw=0, label=f"{coverage:.0%} interval")
    if truth is not None:
        ax.plot(future, np.asarray(truth, float).ravel(), color="gray", lw=1, label="truth")
    ax.plot(future, forecast, color="tab:red", lw=1.5, label="forecast")
    ax.set(title=title or "DynaMix forecast", xlabel="time")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_attractor(truth, generated, *, labels=("truth", "DynaMix"), title: str | None = None):
    """Two 3-D trajectories (T, 3) side by side in one 3-D axis."""
    plt = _pyplot()
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    for data, color, label in ((truth, "gray", labels[0]), (generated, "tab:red", labels[1])):
        points = np.asarray(data, float)
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"plot_attractor needs (T, 3) trajectories, got shape {points.shape}.")
        ax.plot(*points[:, :3].T, color=color, lw=0.3, alpha=0.8, label=label)
    ax.set_title(title or "attractor")
    ax.legend(loc="upper left")
    return fig


def plot_power_spectra(truth, generated, *, smoothing: float = 20.0, labels=("truth", "DynaMix"), title=None):
    """Smoothed, normalized power spectra per dim (as in the D_H metric), true vs generated."""
    plt = _pyplot()
    truth, generated = np.atleast_2d(np.asarray(truth, float).T).T, np.atleast_2d(np.asarray(generated, float).T).T
    length = min(len(truth), len(generated))
    dims = truth.shape[1]
    fig, axes = plt.subplots(1, dims, figsize=(4 * dims, 3.2), squeeze=False)
    for d, ax in enumerate(axes[0]):
        for data, color, label in ((truth, "gray", labels[0]), (generated, "tab:red", labels[1])):
            spectrum = normalized_power_spectrum(data[:length, d], smoothing)
            ax.semilogy(np.arange(len(spectrum)) / length, spectrum, color=color, label=label)
        ax.set(xlabel="frequency (1/step)", title=f"dim {d}")
    axes[0][0].set_ylabel("normalized power")
    axes[0][0].legend()
    fig.suptitle(title or "power spectra")
    fig.tight_layout()
    return fig

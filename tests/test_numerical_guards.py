"""Numerical guards: long horizons stay bounded, divergence stops with the series and step named, never inf.

Policy (see ``forecast`` and docs/reliability.md): a trajectory has diverged when its
state turns non-finite or exceeds EXPLOSION_FACTOR times its context's largest
standardized value; the call then raises DivergenceError (a ValueError) naming every
diverged series and its first bad step, after logging the same message as a warning.
"""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from dynamix_adapters import forecast
from dynamix_adapters.rollout import DivergenceError
from dynamix_adapters.rollout.dispatch import EXPLOSION_FACTOR
from dynamix_adapters.weights import tiny_test_checkpoint

from .conftest import make_tiny_model

PUBLISHED_CONTEXTS = {"lorenz63": 2000, "chua": 1028, "sprottM": 512}
# Over 100,000 steps the official forecasts leave the context's range by at most 8 % of its span
# (lorenz63; chua and sprottM 2 %); a quarter of the span on either side is the bound.
RANGE_MARGIN = 0.25


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED_CONTEXTS))
def test_hundred_thousand_steps_on_published_series_stay_finite_and_bounded(official_model, shared_series, name):
    context = shared_series(name)[: PUBLISHED_CONTEXTS[name]]
    predicted = forecast(official_model, context, 100_000, random_state=0)
    assert predicted.shape == (100_000, 3)
    assert np.isfinite(predicted).all()
    low, high = context.min(axis=0), context.max(axis=0)
    margin = RANGE_MARGIN * (high - low)
    assert np.all(predicted.min(axis=0) >= low - margin) and np.all(predicted.max(axis=0) <= high + margin)
    # Still the attractor, not a fixed point: the last 10,000 steps keep most of the context's spread.
    assert np.all(predicted[-10_000:].std(axis=0) > 0.5 * context.std(axis=0))


def spiked(lorenz: np.ndarray) -> np.ndarray:
    """Lorenz-63 ending in a single 10-sigma outlier: the official model never recovers from it."""
    context = lorenz[:1000].copy()
    context[-1] = 30.0
    return context


def test_outlier_at_the_end_raises_naming_the_series_and_step_and_logs_it(official_model, shared_series, caplog):
    lorenz = shared_series("lorenz63")
    with (
        caplog.at_level(logging.WARNING, logger="dynamix_adapters.forecast"),
        pytest.raises(DivergenceError, match=r"series 1 at step \d+ ") as caught,
    ):
        forecast(official_model, [lorenz[:1000], spiked(lorenz)], 500, random_state=1, n_samples=3)
    assert "series 0" not in str(caught.value)
    assert [record.getMessage() for record in caplog.records] == [str(caught.value)]


def test_a_batch_names_exactly_the_series_that_diverge_alone(official_model, shared_series):
    lorenz = shared_series("lorenz63")
    shocked = np.r_[lorenz[3000:3500], [[-25.0, 40.0, 30.0]]]
    series = [lorenz[:800], spiked(lorenz), lorenz[2000:2900], shocked]
    with pytest.raises(DivergenceError) as batched:
        forecast(official_model, series, 300, random_state=3, n_samples=2)
    alone = {}
    for s, context in enumerate(series):
        try:
            forecast(official_model, context, 300, random_state=3, n_samples=2)
        except DivergenceError as error:
            alone |= {f"series {s}": step for _, step in re.findall(r"(series 0) at step (\d+)", str(error))}
    assert dict(re.findall(r"(series \d+) at step (\d+)", str(batched.value))) == alone
    assert sorted(alone) == ["series 1", "series 3"]


def test_a_finite_but_exploding_state_is_caught_long_before_overflow(official_model, shared_series):
    """Before the guard, horizon 100 returned values near 1e8 times the data's scale, all finite."""
    with pytest.raises(DivergenceError, match="bound") as caught:
        forecast(official_model, spiked(shared_series("lorenz63")), 100, random_state=1)
    step = int(str(caught.value).split(" at step ")[1].split()[0])
    assert step < 60
    shorter = forecast(official_model, spiked(shared_series("lorenz63")), step - 1, random_state=1)
    context = spiked(shared_series("lorenz63"))
    standardized = (shorter - context.mean(axis=0)) / context.std(axis=0)
    bound = EXPLOSION_FACTOR * np.abs((context - context.mean(axis=0)) / context.std(axis=0)).max()
    assert np.abs(standardized).max() <= bound


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_an_unstable_model_never_returns_inf(backend):
    model = make_tiny_model(seed=2)
    with torch.no_grad():
        for expert in model.experts:
            expert.A.fill_(3.0)
    context = np.random.default_rng(1).normal(size=(80, 3))
    with pytest.raises(DivergenceError, match=r"series 0 at step (\d|1\d) \("):
        forecast(model, context, 1000, random_state=0, backend=backend)


def test_adapters_name_the_diverged_series_their_own_way(official_path, shared_series):
    pytest.importorskip("sktime")
    pytest.importorskip("darts")
    from darts import TimeSeries

    from dynamix_adapters import DynaMixForecaster, DynaMixModel

    lorenz = shared_series("lorenz63")
    frames = {"calm": lorenz[:1000], "shock": spiked(lorenz)}
    y = pd.concat(
        {key: pd.DataFrame(values, columns=list("xyz")) for key, values in frames.items()}, names=["unit", "t"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        forecaster = DynaMixForecaster(model=str(official_path), random_state=1, on_divergence="raise").fit(y)
        with pytest.raises(DivergenceError, match=r"series 'shock' at step"):
            forecaster.predict(fh=list(range(1, 201)))
    model = DynaMixModel(model=str(official_path), random_state=1, on_divergence="raise")
    series = [TimeSeries.from_values(values) for values in frames.values()]
    with pytest.raises(DivergenceError, match=r"series\[1\] at step"):
        model.fit(series[0]).predict(200, series=series)


def test_trend_extrapolation_that_overflows_is_named():
    """Box-Cox with a negative lambda has a pole; a power-law trend reaches it after about 24,000 steps."""
    t = np.arange(200)
    context = (1 + t**2.2 + np.random.default_rng(0).normal(size=200))[:, None]
    model = str(tiny_test_checkpoint())
    assert np.isfinite(forecast(model, context, 2000, nonstationary=True, random_state=0)).all()
    with pytest.raises(DivergenceError, match=r"series 0 overflowed at step \d+ while extrapolating the nonstat"):
        forecast(model, context, 30_000, nonstationary=True, random_state=0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(standardize=False), "need standardize=True"),
        (dict(initial_x=[1e300]), r"rescale the data \(or initial_x\)"),
    ],
)
def test_values_beyond_float32_after_preprocessing_are_a_clear_error(options, match):
    context = np.full((50, 1), 1e300) if "standardize" in options else np.sin(np.arange(50.0))[:, None]
    context = context + np.arange(50)[:, None] * context[0] * 1e-3
    with pytest.raises(ValueError, match=f"float32 range the model computes in: .*{match}"):
        forecast(
            str(tiny_test_checkpoint()),
            context,
            5,
            random_state=0,
            preprocessing="pos_embedding",
            nonstationary=False,
            **options,
        )


@pytest.mark.parametrize("scale", [1e-300, 1e-12, 1e12, 1e300])
def test_extreme_scales_forecast_like_unit_scale(official_model, shared_series, scale):
    """Standardization makes the scale irrelevant; a 1e-12 series was once taken for a constant one."""
    context = shared_series("lorenz63")[:1000]
    unit = forecast(official_model, context, 2000, random_state=0)
    scaled = forecast(official_model, context * scale, 2000, random_state=0) / scale
    assert np.isfinite(scaled).all()
    np.testing.assert_allclose(scaled.std(axis=0), unit.std(axis=0), rtol=0.3)
    np.testing.assert_allclose(scaled.mean(axis=0), unit.mean(axis=0), atol=0.3 * context.std(axis=0).max())

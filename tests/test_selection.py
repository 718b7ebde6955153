"""Auto preprocessing by in-context validation, and calibrated sample paths (issue 15)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from dynamix_adapters.options import ForecastOptions
from dynamix_adapters.pipeline import DynaMixPipeline
from dynamix_adapters.rollout import rollout, seed_entropy
from dynamix_adapters.systems import lorenz63_trajectory
from dynamix_adapters.transforms import selection
from dynamix_adapters.transforms.calibration import Spreads, match_spreads, robust_spread
from dynamix_adapters.transforms.encoding import BatchEncoding

FIXED = {"preprocessing": "pos_embedding", "nonstationary": False}


def test_adapter_and_cli_defaults_are_the_options_defaults():
    from dynamix_adapters.cli import build_parser
    from dynamix_adapters.darts_model import DynaMixModel
    from dynamix_adapters.sktime_forecaster import DynaMixForecaster

    # on_divergence differs on purpose: the adapters return NaN where the core raises.
    defaults = {name: getattr(ForecastOptions(), name) for name in ForecastOptions.names() if name != "on_divergence"}
    assert defaults["preprocessing"] == defaults["nonstationary"] == "auto"
    for adapter in (DynaMixForecaster, DynaMixModel):
        signature = inspect.signature(adapter.__init__).parameters
        assert {name: signature[name].default for name in defaults} == defaults, adapter.__name__
    run = build_parser().parse_args(["forecast", "x.csv", "--horizon", "3"])
    assert (run.preprocessing, run.nonstationary) == ("auto", "auto")


def _pre_auto_forecast(model, options: ForecastOptions, x: np.ndarray, horizon: int, n_paths: int) -> np.ndarray:
    """The forecast recipe before auto existed: encode with the options, one rollout, decode."""
    pipeline = DynaMixPipeline(model, options)
    entropy = seed_entropy(options.random_state)
    encoding = BatchEncoding.fit(
        [x],
        [options.preprocessing],
        [options.nonstationary],
        standardize=options.standardize,
        model_dims=model.arch.N,
        entropy=entropy,
    )
    batch = pipeline._batch(encoding, ["series 0"], n_paths, entropy)
    observed = rollout(model, batch, horizon).reshape(horizon, n_paths, -1, model.arch.N)
    return encoding.decode(observed)[:, :, 0]


@pytest.mark.parametrize("settings", [FIXED, {"preprocessing": "delay_embedding", "nonstationary": True}])
def test_explicit_settings_forecast_bit_for_bit_as_before(tiny_model, monkeypatch, settings):
    monkeypatch.setattr(selection, "_validate", lambda *a: pytest.fail("explicit settings must not validate"))
    options = ForecastOptions(random_state=3, n_samples=5, **settings)
    x = np.sin(np.linspace(0, 30, 150))[:, None] + np.linspace(1, 2, 150)[:, None]
    pipeline = DynaMixPipeline(tiny_model, options)
    np.testing.assert_array_equal(pipeline.sample_paths(x, 7), _pre_auto_forecast(tiny_model, options, x, 7, 5))
    np.testing.assert_array_equal(pipeline.predict_samples(x, 7), _pre_auto_forecast(tiny_model, options, x, 7, 6)[1:])
    assert pipeline.choose_settings(x)[0].spread is None


def test_sine_gets_a_stationary_embedding_that_unfolds_the_cycle(official_model):
    x = np.sin(2 * np.pi * np.arange(300) / 25)[:, None]
    pipeline = DynaMixPipeline(official_model, ForecastOptions(random_state=0))
    chosen = pipeline.choose_settings(x)[0].record()
    # Zero padding leaves a 1-D state, which cannot oscillate: every real embedding beats it.
    assert chosen["preprocessing"] in ("pos_embedding", "delay_embedding", "delay_embedding_random")
    assert chosen["nonstationary"] is False
    assert chosen["validation_windows"] == 3 and chosen["validation_mase"] < 0.5


def test_trending_seasonal_series_gets_the_nonstationary_transform(official_model):
    t = np.arange(300.0)
    x = (10 + 0.05 * t + np.sin(2 * np.pi * t / 12))[:, None]
    pipeline = DynaMixPipeline(official_model, ForecastOptions(random_state=0))
    (choice,) = pipeline.choose_settings(x)
    chosen = choice.record()
    assert chosen["nonstationary"] is True
    assert chosen["preprocessing"] != "zero_embedding"
    errors = choice.errors
    assert chosen["validation_mase"] < 0.5 * errors["delay_embedding"]  # the stationary reference misses the trend


def test_chaotic_3d_series_needs_no_embedding_and_stays_stationary(official_model):
    pipeline = DynaMixPipeline(official_model, ForecastOptions(random_state=0))
    (choice,) = pipeline.choose_settings(lorenz63_trajectory(1000))
    chosen = choice.record()
    assert chosen["preprocessing"] == "none" and chosen["nonstationary"] is False
    assert set(choice.errors) == {"delay_embedding", "delay_embedding + nonstationary"}


def test_calibrated_intervals_reach_nominal_coverage_on_known_noise(official_model):
    rng = np.random.default_rng(0)
    t = np.arange(260)
    series = [np.sin(2 * np.pi * t / 20 + phase) + 0.3 * rng.standard_normal(len(t)) for phase in np.linspace(0, 3, 12)]
    context, truth = np.stack([s[:-20] for s in series], axis=1)[:, :, None], np.stack([s[-20:] for s in series], 1)
    pipeline = DynaMixPipeline(official_model, ForecastOptions(random_state=0, n_samples=100))
    quantiles, _ = pipeline.predict_quantiles(context, 20, quantile_levels=(0.025, 0.1, 0.9, 0.975))
    q = quantiles[..., 0]  # (4, H, S)
    coverage_80 = ((truth >= q[1]) & (truth <= q[2])).mean()
    coverage_95 = ((truth >= q[0]) & (truth <= q[3])).mean()
    assert 0.7 <= coverage_80 <= 0.92, coverage_80
    assert 0.88 <= coverage_95 <= 0.99, coverage_95
    # Uncalibrated, the gating noise alone covers far less.
    raw, _ = pipeline.with_options(**FIXED).predict_quantiles(context, 20, quantile_levels=(0.1, 0.9))
    assert ((truth >= raw[0, ..., 0]) & (truth <= raw[1, ..., 0])).mean() < coverage_80


def test_short_context_falls_back_to_defaults_uncalibrated(tiny_model):
    pipeline = DynaMixPipeline(tiny_model, ForecastOptions(random_state=0, n_samples=4))
    x = np.sin(np.arange(12.0))[:, None]
    paths = pipeline.sample_paths(x, 5)
    (choice,) = pipeline.choose_settings(x)
    assert (choice.preprocessing, choice.nonstationary, choice.windows, choice.spread) == (
        "pos_embedding",
        False,
        0,
        None,
    )
    np.testing.assert_array_equal(paths, pipeline.with_options(**FIXED).sample_paths(x, 5))


def test_a_diverging_candidate_is_disqualified(tiny_model, monkeypatch):
    real = selection.diverged_steps

    def first_candidate_diverges(observed, batch):
        steps = real(observed, batch)
        first = np.array(["(0, 0," in label for label in batch.labels])[batch.unit]
        return np.where(first, 0, steps)

    monkeypatch.setattr(selection, "diverged_steps", first_candidate_diverges)
    pipeline = DynaMixPipeline(tiny_model, ForecastOptions(random_state=0))
    (chosen,) = pipeline.choose_settings(np.sin(np.arange(100.0) / 3)[:, None])
    errors = chosen.errors
    assert errors["delay_embedding"] == np.inf and np.isfinite(errors["pos_embedding"])
    assert (chosen.preprocessing, chosen.nonstationary) != ("delay_embedding", False)


def test_all_candidates_and_windows_are_one_rollout(tiny_model, monkeypatch):
    calls = []
    real = selection.rollout
    monkeypatch.setattr(selection, "rollout", lambda *a, **k: calls.append(a[1].context.shape[0]) or real(*a, **k))
    pipeline = DynaMixPipeline(tiny_model, ForecastOptions(random_state=0))
    pipeline.choose_settings([np.sin(np.arange(100.0) / 3)[:, None], np.cos(np.arange(80.0) / 2)[:, None]])
    assert calls == [2 * 6 * 3]  # series x candidates x windows, one call


def test_validation_in_chunks_chooses_as_in_one(tiny_model, monkeypatch):
    """A panel validated in chunks of a few jobs gets the same choices and errors as in one rollout."""
    panel = [np.sin(np.arange(60.0 + 7 * s) / (2 + s)) [:, None] + 0.05 * s * np.arange(60.0 + 7 * s)[:, None]
             for s in range(7)]  # fmt: skip
    pipeline = DynaMixPipeline(tiny_model, ForecastOptions(random_state=3))
    whole = pipeline.choose_settings(panel)
    calls = []
    real = selection.rollout
    monkeypatch.setattr(selection, "rollout", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(selection, "VALIDATION_CHUNK_JOBS", 40)  # two series (36 jobs) per chunk
    chunked = pipeline.choose_settings(panel)
    assert len(calls) == 4
    assert [c.record() for c in chunked] == [c.record() for c in whole]
    assert [c.errors for c in chunked] == [c.errors for c in whole]
    # Alone, a series validates on a shorter horizon than the panel pads it to: still the same numbers.
    assert pipeline.choose_settings(panel[:1])[0].errors == whole[0].errors


def test_spread_grows_with_the_error_and_saturates_when_stationary():
    steps = np.arange(1, 11)
    errors = np.stack([0.1 * np.sqrt(steps) * sign for sign in (1, -1, 1)])[:, :, None]
    spread = Spreads.fit([errors], [True])
    np.testing.assert_allclose(spread.b, [[0.5]], atol=1e-9)
    np.testing.assert_allclose(spread.sigma(10)[:, 0, 0], 0.1 * np.sqrt(steps), rtol=1e-9)
    assert spread.sigma(100_000)[-1, 0, 0] == pytest.approx(np.sqrt(2))
    # Paths with a spread of their own get exactly sigma(h) context standard deviations around their median.
    paths = np.random.default_rng(0).standard_normal((2000, 10, 1)).cumsum(axis=1)
    matched = match_spreads(paths[:, :, None].copy(), spread, np.array([[2.0]]))[:, :, 0]
    np.testing.assert_allclose(np.median(matched, axis=0), np.median(paths, axis=0))
    np.testing.assert_allclose(robust_spread(matched - np.median(matched, axis=0))[:, 0], 0.2 * np.sqrt(steps))


def _wide_frame(columns: int = 20) -> np.ndarray:
    """(150, columns): trending, seasonal and noisy columns, so auto chooses differently per column."""
    rng = np.random.default_rng(5)
    t = np.arange(150.0)[:, None]
    period = 6 + np.arange(columns)
    trend = 0.05 * (np.arange(columns) % 3) * t
    return 10 + trend + np.sin(2 * np.pi * t / period) + 0.2 * rng.standard_normal((150, columns))


def test_each_column_of_a_wide_frame_gets_its_own_choice_and_its_forecast_alone():
    """Nothing couples the dims of a series wider than the model: a column's forecast is the same alone."""
    pipeline = DynaMixPipeline.from_pretrained(random_state=0, n_samples=30)
    wide = _wide_frame()
    (frame_choice,) = pipeline.choose_settings(wide)
    records = frame_choice.record()["dims"]
    assert len(records) == 20 and len({(r["preprocessing"], r["nonstationary"]) for r in records}) > 1
    quantiles, _ = pipeline.predict_quantiles(wide, 12)  # (Q, H, 20)
    for column in (0, 7, 19):
        alone = wide[:, [column]]
        assert pipeline.choose_settings(alone)[0].record() == records[column]
        np.testing.assert_array_equal(pipeline.predict_quantiles(alone, 12)[0][..., 0], quantiles[..., column])
        np.testing.assert_array_equal(pipeline.predict(alone, 12)[:, 0], pipeline.predict(wide, 12)[:, column])


def test_a_column_alone_equals_the_same_column_in_a_wide_frame_in_sktime_and_darts():
    import pandas as pd
    from darts import TimeSeries

    from dynamix_adapters.darts_model import DynaMixModel
    from dynamix_adapters.sktime_forecaster import DynaMixForecaster

    frame = pd.DataFrame(_wide_frame(), columns=[f"c{k}" for k in range(20)])
    fh = list(range(1, 10))
    wide = DynaMixForecaster(random_state=0, n_samples=30).fit(frame)
    wide_interval, wide_point = wide.predict_interval(fh=fh, coverage=0.8), wide.predict(fh=fh)
    model = DynaMixModel(random_state=0).fit(TimeSeries.from_dataframe(frame))
    wide_samples = model.predict(9, num_samples=30, random_state=0).all_values()  # (H, 20, samples)
    for column in ("c3", "c16"):
        alone = DynaMixForecaster(random_state=0, n_samples=30).fit(frame[[column]])
        pd.testing.assert_frame_equal(alone.predict(fh=fh), wide_point[[column]])
        np.testing.assert_array_equal(
            alone.predict_interval(fh=fh, coverage=0.8).to_numpy(), wide_interval[column].to_numpy()
        )
        single = DynaMixModel(random_state=0).fit(TimeSeries.from_dataframe(frame[[column]]))
        samples = single.predict(9, num_samples=30, random_state=0).all_values()[:, 0]
        np.testing.assert_array_equal(samples, wide_samples[:, int(column[1:])])


def test_adapters_report_the_choice(official_path):
    import pandas as pd

    from dynamix_adapters.sktime_forecaster import DynaMixForecaster

    t = np.arange(200.0)
    y = pd.Series(10 + 0.05 * t + np.sin(2 * np.pi * t / 12))
    forecaster = DynaMixForecaster(model=str(official_path), random_state=0).fit(y, fh=range(1, 13))
    params = forecaster.get_fitted_params()
    assert params["nonstationary"] is True and params["preprocessing"] in selection.EMBEDDINGS
    assert params["selection"][0]["validation_windows"] == 3


def test_first_steps_do_not_depend_on_the_horizon(tiny_model):
    pipeline = DynaMixPipeline(tiny_model, ForecastOptions(random_state=0, n_samples=6))
    x = np.sin(np.arange(120.0) / 4)[:, None] + np.linspace(0, 1, 120)[:, None]
    np.testing.assert_array_equal(pipeline.predict_samples(x, 12)[:, :5], pipeline.predict_samples(x, 5))
    np.testing.assert_array_equal(pipeline.predict(x, 12)[:5], pipeline.predict(x, 5))


def test_darts_and_cli_report_the_choice(official_path, tmp_path, capsys):
    import pandas as pd
    from darts import TimeSeries

    from dynamix_adapters.cli import main
    from dynamix_adapters.darts_model import DynaMixModel

    t = np.arange(200.0)
    values = 10 + 0.05 * t + np.sin(2 * np.pi * t / 12)
    model = DynaMixModel(model=str(official_path), random_state=0).fit(TimeSeries.from_values(values))
    model.predict(6)
    assert model.selections_[0]["nonstationary"] is True
    pd.DataFrame({"y": values}).to_csv(tmp_path / "y.csv", index=False)
    assert main(["forecast", str(tmp_path / "y.csv"), "--horizon", "3", "--model", str(official_path)]) == 0
    assert "auto chose preprocessing=" in capsys.readouterr().err

"""Fine-tuning (training/finetune.py): the early-stopping guarantee, window geometry, save and load everywhere."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from dynamix_adapters import DynaMixPipeline, ForecastOptions, load_model
from dynamix_adapters.training.finetune import (
    FinetuneConfig,
    Frames,
    Geometry,
    encode_units,
    finetune,
    validation_batch,
    validation_mse,
)

from .conftest import make_tiny_model

QUICK = FinetuneConfig(epochs=3, batches_per_epoch=3, batch_size=8)


def waves(count: int = 3, length: int = 160, dims: int = 1, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(length)[:, None]
    return [np.sin(t / (4 + s) + np.arange(dims)) + 0.1 * rng.standard_normal((length, dims)) + s for s in range(count)]


def tiny_pipeline(seed: int = 0, **options) -> DynaMixPipeline:
    return DynaMixPipeline(make_tiny_model(seed), ForecastOptions(**{"random_state": 0, **options}))


def held_out_score(pipeline: DynaMixPipeline, series, result) -> float:
    """The held-out MSE of ``pipeline``'s model, recomputed from scratch on the run's windows."""
    frames = Frames.of(encode_units(pipeline, series))
    return validation_mse(pipeline.model, validation_batch(frames, result.geometry, QUICK.seed))


def test_never_worse_than_the_start_on_held_out_windows():
    start = tiny_pipeline(preprocessing="pos_embedding", nonstationary=False)
    series = waves()
    result = finetune(start, series, QUICK, progress=False)
    assert held_out_score(result.pipeline, series, result) <= held_out_score(start, series, result)
    assert result.best_score <= result.start_score
    assert len(result.history) == result.epochs_run


def test_a_run_that_only_hurts_returns_the_starting_weights():
    """At a learning rate that wrecks every update, early stopping keeps the start, exactly."""
    start = tiny_pipeline(preprocessing="pos_embedding", nonstationary=False)
    wrecking = FinetuneConfig(epochs=3, batches_per_epoch=2, batch_size=4, learning_rate=50.0, patience=2)
    result = finetune(start, waves(), wrecking, progress=False)
    assert result.best_epoch == 0
    assert result.best_score == result.start_score
    for name, value in start.model.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[name], value, rtol=0, atol=0)


def test_the_starting_model_is_left_untouched():
    start = tiny_pipeline(preprocessing="pos_embedding", nonstationary=False)
    before = {k: v.clone() for k, v in start.model.state_dict().items()}
    result = finetune(start, waves(), QUICK, progress=False)
    assert result.best_epoch > 0, "the run should have improved on the start"
    for name, value in start.model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert not any(p.requires_grad for p in result.model.parameters())


def test_any_number_of_dims_and_lengths():
    """1, 3 and 5 dims (embedded, as is, split into units), series of different lengths, seeded."""
    for dims, units in ((1, 3), (3, 3), (5, 15)):
        series = [x[: 120 + 20 * i] for i, x in enumerate(waves(dims=dims))]
        fixed = tiny_pipeline(preprocessing="pos_embedding", nonstationary=False)
        first = finetune(fixed, series, QUICK, progress=False)
        again = finetune(fixed, series, QUICK, progress=False)
        assert first.n_units == units
        assert first.history == again.history


def test_auto_options_train_every_setting_a_forecast_may_choose():
    """With "auto", a forecast may pick any candidate: every series is encoded with each of them."""
    from dynamix_adapters.transforms.selection import candidates

    pipeline = tiny_pipeline()
    pairs = candidates(pipeline.options, 1, 3, stationary_only=False)
    assert len(pairs) > 1
    result = finetune(pipeline, waves(), QUICK, progress=False)
    assert result.n_units == 3 * len(pairs)


def test_geometry_follows_the_shortest_series():
    config = FinetuneConfig(validation_fraction=0.2)
    geometry = Geometry.of([100, 1000], config)
    assert geometry.ahead == 80 // 6
    assert geometry.context == (80 - 13) * 2 // 3
    assert geometry.held_out == (20, 200)
    long = Geometry.of([5000], config)
    assert (long.context, long.ahead) == (500, 50)
    # The shortest units keep 8 frames for training whatever the held-out share.
    assert Geometry.of([10], FinetuneConfig(validation_fraction=0.9)).held_out == (2,)


def test_too_short_series_name_the_fix():
    with pytest.raises(ValueError, match="shorter than the 10 points fine-tuning needs"):
        finetune(tiny_pipeline(), [np.arange(6.0)], QUICK, progress=False)
    # Ten points are enough; the delay embeddings, which lose points, are left out with a warning.
    with pytest.warns(UserWarning, match="fine-tuning leaves them out"):
        result = finetune(tiny_pipeline(), [np.sin(np.arange(10.0)), np.cos(np.arange(12.0))], QUICK, progress=False)
    assert result.geometry.context >= 2 * result.geometry.ahead


def test_save_and_load_back_in_the_official_layout(tmp_path):
    result = finetune(tiny_pipeline(preprocessing="pos_embedding", nonstationary=False), waves(), QUICK, progress=False)
    path = result.save(tmp_path / "tuned.safetensors")
    loaded = load_model(path)
    assert set(loaded.state_dict()) == set(result.model.state_dict())
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    context = waves(1)[0]
    reloaded = DynaMixPipeline.from_pretrained(path, preprocessing="pos_embedding", nonstationary=False, random_state=0)
    np.testing.assert_array_equal(reloaded.predict(context, 12), result.pipeline.predict(context, 12))


# ---- the adapters and the CLI load the tuned weights with model=path ----


@pytest.fixture(scope="module")
def tuned_path(tmp_path_factory):
    """Tiny-checkpoint weights fine-tuned on three series, saved as safetensors."""
    from dynamix_adapters.weights import tiny_test_checkpoint

    start = DynaMixPipeline.from_pretrained(tiny_test_checkpoint(), random_state=0)
    result = finetune(start, waves(), QUICK, progress=False)
    assert result.best_epoch > 0
    return result.save(tmp_path_factory.mktemp("tuned") / "tuned.safetensors")


def panel_frame(count: int = 3, length: int = 120) -> pd.DataFrame:
    frames = [
        pd.DataFrame({"y": x[:, 0]}, index=pd.MultiIndex.from_product([[f"s{i}"], range(length)]))
        for i, x in enumerate(waves(count, length))
    ]
    return pd.concat(frames).rename_axis(["id", "time"])


def test_sktime_pretrain_then_fit_predict_uses_the_tuned_weights():
    pytest.importorskip("sktime")
    from dynamix_adapters import DynaMixForecaster
    from dynamix_adapters.weights import tiny_test_checkpoint

    y = panel_frame().loc["s0"]
    params = {"model": str(tiny_test_checkpoint()), "n_samples": 10, "random_state": 0}
    forecaster = DynaMixForecaster(**params).pretrain(panel_frame())
    assert forecaster.state == "pretrained"
    pretrained = forecaster.get_pretrained_params()
    assert {"pretrained_model_", "pretrain_summary_"} <= pretrained.keys()
    assert (
        pretrained["pretrain_summary_"]["best_validation_mse"]
        <= pretrained["pretrain_summary_"]["start_validation_mse"]
    )

    tuned = forecaster.fit(y).predict(fh=[1, 2, 3])
    zero_shot = DynaMixForecaster(**params).fit(y).predict(fh=[1, 2, 3])
    assert not np.allclose(tuned, zero_shot)
    # The same weights saved and loaded by path give the same forecast.
    from dynamix_adapters.weights import save_model

    path = save_model(pretrained["pretrained_model_"], tiny_test_checkpoint().parent / "pretrain-test.safetensors")
    by_path = DynaMixForecaster(**{**params, "model": str(path)}).fit(y).predict(fh=[1, 2, 3])
    np.testing.assert_array_equal(tuned, by_path)

    # sktime's contract: a refit and a clone keep the pretrained weights, reset() drops them.
    np.testing.assert_array_equal(forecaster.fit(y).predict(fh=[1, 2, 3]), tuned)
    # The forecaster's one cached pipeline wraps the tuned weights; a pickle leaves it out
    # and the unpickled forecaster rebuilds it around the pickled weights.
    assert forecaster._pipeline.model is pretrained["pretrained_model_"]
    restored = pickle.loads(pickle.dumps(forecaster))
    assert restored.__dict__["_loaded_pipeline"] is None
    np.testing.assert_array_equal(restored.predict(fh=[1, 2, 3]), tuned)
    twin = forecaster.clone()
    assert twin.state == "pretrained"
    np.testing.assert_array_equal(twin.fit(y).predict(fh=[1, 2, 3]), tuned)
    forecaster.reset()
    assert forecaster.state == "new" and not hasattr(forecaster, "pretrained_model_")
    np.testing.assert_array_equal(forecaster.fit(y).predict(fh=[1, 2, 3]), zero_shot)


def test_sktime_pretrain_after_fit_replaces_the_cached_pipeline():
    pytest.importorskip("sktime")
    from dynamix_adapters import DynaMixForecaster
    from dynamix_adapters.weights import tiny_test_checkpoint

    y = panel_frame().loc["s0"]
    forecaster = DynaMixForecaster(model=str(tiny_test_checkpoint()), n_samples=10, random_state=0).fit(y)
    zero_shot = forecaster.predict(fh=[1, 2, 3])
    forecaster.pretrain(panel_frame())
    assert forecaster._pipeline.model is forecaster.pretrained_model_
    assert not np.allclose(forecaster.fit(y).predict(fh=[1, 2, 3]), zero_shot)


def test_sktime_pretrain_rejects_a_single_series():
    pytest.importorskip("sktime")
    from dynamix_adapters import DynaMixForecaster
    from dynamix_adapters.weights import tiny_test_checkpoint

    with pytest.raises(TypeError, match="requires Panel or Hierarchical data"):
        DynaMixForecaster(model=str(tiny_test_checkpoint())).pretrain(panel_frame().loc["s0"])


def test_darts_model_historical_forecasts_and_ensemble_with_tuned_weights(tuned_path):
    pytest.importorskip("darts")
    from darts import TimeSeries
    from darts.models import NaiveEnsembleModel, NaiveSeasonal

    from dynamix_adapters import DynaMixModel

    series = TimeSeries.from_values(waves(1)[0])
    model = DynaMixModel(model=str(tuned_path), random_state=0)
    backtest = model.fit(series[:100]).historical_forecasts(series, start=100, forecast_horizon=4, retrain=False)
    assert len(backtest) == len(series) - 100 - 4 + 1
    ensemble = NaiveEnsembleModel([DynaMixModel(model=str(tuned_path), random_state=0), NaiveSeasonal(K=12)])
    assert len(ensemble.fit(series[:100]).predict(6)) == 6
    np.testing.assert_array_equal(
        DynaMixModel(model=str(tuned_path), random_state=0).fit(series).predict(5).values(),
        model.fit(series).predict(5).values(),
    )


def test_cli_finetune_then_forecast_with_the_weights(tmp_path, capsys):
    from dynamix_adapters.cli import main
    from dynamix_adapters.weights import tiny_test_checkpoint

    panel = panel_frame().reset_index()
    panel.to_parquet(tmp_path / "panel.parquet")
    weights = tmp_path / "tuned.safetensors"
    args = ["finetune", tmp_path / "panel.parquet", "--id-col", "id", "--time-col", "time", "--output", weights]
    code = main(
        [str(a) for a in [*args, "--model", tiny_test_checkpoint(), "--epochs", 3, "--preprocessing", "pos_embedding"]]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "fine-tuned on 3 ids" in err
    assert load_model(weights).arch == load_model(tiny_test_checkpoint()).arch
    panel[panel["id"] == "s0"][["time", "y"]].to_csv(tmp_path / "s0.csv", index=False)
    forecast_args = ["forecast", tmp_path / "s0.csv", "--horizon", 3, "--columns", "y", "--time-col", "time"]
    assert main([str(a) for a in [*forecast_args, "--model", weights]]) == 0
    tuned = capsys.readouterr().out
    assert main([str(a) for a in [*forecast_args, "--model", tiny_test_checkpoint()]]) == 0
    assert tuned != capsys.readouterr().out


def test_cli_finetune_names_a_wrong_output_suffix(tmp_path, capsys):
    from dynamix_adapters.cli import main

    panel_frame().reset_index().to_parquet(tmp_path / "panel.parquet")
    args = ["finetune", tmp_path / "panel.parquet", "--id-col", "id", "--time-col", "time", "--output", "w.pt"]
    assert main([str(a) for a in args]) == 2
    assert "--output must end in .safetensors" in capsys.readouterr().err


def test_finetuning_on_a_chaotic_trajectory_keeps_its_attractor(official_model, shared_series):
    """Fine-tuned on Lorenz-63, the official weights' long-run D_stsp on the trajectory's continuation is no worse."""
    from dynamix_adapters.metrics import state_space_divergence

    lorenz = shared_series("lorenz63")
    train, context, truth = lorenz[:2000], lorenz[2000:3000], lorenz[3000:5000]
    start = DynaMixPipeline(official_model, ForecastOptions(random_state=0))
    result = finetune(start, [train], FinetuneConfig(epochs=4, batches_per_epoch=5), progress=False)

    def divergence(pipeline: DynaMixPipeline) -> float:
        runs = [pipeline.with_options(random_state=seed).predict(context, len(truth)) for seed in range(3)]
        return float(np.median([state_space_divergence(truth, run) for run in runs]))

    assert divergence(result.pipeline) <= divergence(start)

"""The benchmark suite: its --quick run end to end (as CI runs it), and the pieces it is built from."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("statsforecast")
pytest.importorskip("dysts")

from dynamix_adapters.benchmark import chronos_timing, dynamical, real_world, suite
from dynamix_adapters.weights import MODEL_DIR_ENV, OFFICIAL_MODEL

from .conftest import OFFICIAL_SAFETENSORS, require_shared


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--quick`` run with the official weights; its output folder."""
    require_shared(OFFICIAL_SAFETENSORS)
    output = tmp_path_factory.mktemp("benchmark")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MODEL_DIR_ENV, str(OFFICIAL_SAFETENSORS.parent))
        code = suite.main(["--quick", "--output", str(output), "--no-progress"])
    assert code == 0
    return output


@pytest.mark.slow
def test_quick_track_a_every_model_finite(quick_run):
    cases = pd.read_csv(quick_run / "track_a_cases.csv")
    expected = {f"DynaMix ({OFFICIAL_MODEL})", "AutoARIMA (per dim)", "AutoETS (per dim)"}
    expected |= {"Naive (last value)", "Seasonal naive (dominant period)"}
    assert expected <= set(cases["model"])
    assert (cases["status"] == "ok").all(), cases[cases["status"] != "ok"]
    assert np.isfinite(cases[["D_stsp", "D_H", "MASE", "seconds"]].to_numpy()).all()
    assert cases.groupby("model").size().min() == suite.QUICK.max_systems


@pytest.mark.slow
def test_quick_track_b_every_model_finite(quick_run):
    windows = pd.read_csv(quick_run / "track_b_windows.csv")
    assert (windows["status"] == "ok").all(), windows[windows["status"] != "ok"]
    assert set(windows["dataset"]) == set(suite.QUICK.datasets)
    models = set(windows["model"])
    assert {"AutoARIMA", "AutoETS", "AutoTheta", "Seasonal naive"} <= models
    per_weight_set = pd.Series([m.split("(")[-1] for m in models if m.startswith("DynaMix")]).value_counts()
    # auto, four embeddings, the non-stationary option and the fine-tuned defaults
    assert per_weight_set[f"{OFFICIAL_MODEL})"] == 7
    assert (per_weight_set == 7).all()
    assert np.isfinite(windows[["MASE", "sMAPE", "seconds_point", "seconds_with_intervals"]].to_numpy()).all()
    coverage = windows[["coverage_80", "coverage_95"]].to_numpy()
    assert ((coverage >= 0) & (coverage <= 1)).all()
    with_intervals = windows[windows["model"] != "Seasonal naive"]
    assert (with_intervals["wQL"].dropna() >= 0).all() and with_intervals["wQL"].notna().any()
    assert (windows.groupby(["model", "dataset"]).size() == suite.QUICK.windows).all()


@pytest.mark.slow
def test_quick_darts_backtest_matches_sktime_evaluate(quick_run):
    # Same windows, same seed, same contexts: the two integrations must give the same forecasts.
    backtest = pd.read_csv(quick_run / "darts_backtest.csv")
    assert len(backtest) == suite.QUICK.windows
    np.testing.assert_allclose(backtest["MASE"], backtest["MASE (sktime evaluate)"], rtol=1e-9)
    np.testing.assert_allclose(backtest["sMAPE"], backtest["sMAPE (sktime evaluate)"], rtol=1e-9)


@pytest.mark.slow
def test_quick_report_tables_and_plots(quick_run):
    text = (quick_run / "report.md").read_text()
    for heading in ("## Track A", "## Track B", "### darts backtest", "## Inference time"):
        assert heading in text
    if not real_world.local_chronos_models():
        assert real_world.CHRONOS_NOT_RUN in text
    for name in ("track_a_summary.csv", "track_b_summary.csv", "track_b_mase_by_dataset.csv"):
        summary = pd.read_csv(quick_run / name)
        assert len(summary)
    plots = sorted(p.name for p in (quick_run / "plots").glob("*.png"))
    assert {"track_a_boxplots.png", "track_b_boxplots.png", "fan-airline.png", "fan-lynx.png"} <= set(plots)
    assert any(p.endswith("-spectra.png") for p in plots)
    for link in [line for line in text.splitlines() if line.startswith("![")]:
        assert (quick_run / link[link.index("(") + 1 : -1]).is_file(), link


@pytest.mark.slow
def test_quick_timing_side_by_side(quick_run):
    if chronos_timing.chronos_available():
        pytest.skip(chronos_timing.chronos_available())
    timing = pd.read_csv(quick_run / "timing.csv")
    assert set(suite.QUICK.chronos_models) <= set(timing["model"])
    assert (timing["seconds"] > 0).all()
    assert (timing["horizon"] == suite.QUICK.timing_horizon).all()


def test_systems_exclude_training_and_reproduction_systems():
    from dynamix_adapters.training import HELD_OUT_SYSTEMS, training_systems

    systems = dynamical.benchmark_systems()
    assert not set(systems) & set(training_systems())
    assert not [s for s in systems if any(f in s.lower() for f in ("lorenz", "chua", "sprottm"))]
    assert systems[: len(HELD_OUT_SYSTEMS)] == [s for s in HELD_OUT_SYSTEMS if s in systems]
    assert len(systems) >= suite.MIN_SYSTEMS, f"only {len(systems)} eligible systems: {systems}"


def test_trajectory_cache_returns_the_integrated_trajectory(tmp_path):
    args = (["Rossler"], 1, 200, 100, 100)
    fresh, _ = dynamical.build_cases(*args, cache_dir=tmp_path)
    cached, _ = dynamical.build_cases(*args, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    np.testing.assert_array_equal(fresh[0].context, cached[0].context)
    assert fresh[0].context.shape == (200, 3) and fresh[0].truth.shape == (100, 3)
    assert abs(np.concatenate([fresh[0].context, fresh[0].truth]).std(axis=0) - 1).max() < 1e-9


def test_seasonal_naive_uses_the_dominant_period():
    t = np.arange(1000)
    context = np.column_stack([np.sin(2 * np.pi * t / 40), np.cos(2 * np.pi * t / 40), 0.1 * np.sin(t / 3)])
    assert dynamical.dominant_period(context) == 40
    forecast = dynamical.seasonal_naive(context, 100, 40)
    np.testing.assert_allclose(forecast[:, :2], context[-40:, :2][np.arange(100) % 40])


@pytest.mark.parametrize("name", list(real_world.DATASETS))
def test_datasets_load_offline(name):
    dataset = real_world.DATASETS[name]
    if name in ("wineind", "woolyrnq"):
        pytest.importorskip("pmdarima")
    y = dataset.load()
    assert isinstance(y.index, pd.PeriodIndex) and y.index.is_monotonic_increasing
    assert y.index.freqstr[0] == {"yearly": "Y", "quarterly": "Q", "monthly": "M"}[dataset.frequency]
    assert y.notna().all() and len(y) >= 90
    real_world.splitter(len(y), dataset.horizon, suite.FULL.windows)  # enough history for every window


def test_splitter_ends_at_the_series_end():
    cv = real_world.splitter(144, 18, 5)
    splits = list(cv.split(pd.Series(np.arange(144.0))))
    assert len(splits) == 5
    assert splits[-1][1][-1] == 143 and len(splits[-1][1]) == 18
    assert [len(train) for train, _ in splits] == [90, 99, 108, 117, 126]
    with pytest.raises(ValueError, match="too few"):
        real_world.splitter(40, 18, 5)


def test_chronos_architectures_match_the_published_parameter_counts():
    if chronos_timing.chronos_available():
        pytest.skip(chronos_timing.chronos_available())
    for name, (_, _, published) in chronos_timing.CHRONOS_MODELS.items():
        _, network = chronos_timing.build_chronos(name)
        parameters = sum(p.numel() for p in network.parameters())
        assert abs(parameters / published - 1) < 0.1, (name, parameters)


def test_chronos_runs_through_sktime_when_a_checkpoint_is_local(tmp_path):
    # A random-weight checkpoint stands in for downloaded weights only to exercise the route;
    # the benchmark itself runs Chronos from the Hugging Face cache and never from random weights.
    if chronos_timing.chronos_available():
        pytest.skip(chronos_timing.chronos_available())
    from sktime.forecasting.chronos import ChronosForecaster

    _, network = chronos_timing.build_chronos("chronos-bolt-tiny")
    network.save_pretrained(tmp_path / "bolt")
    dataset = real_world.DATASETS["lynx"]
    forecaster = ChronosForecaster(str(tmp_path / "bolt"), seed=0)
    rows = real_world.evaluate_model("Chronos", forecaster, dataset, dataset.load(), 1)
    assert rows[0]["status"] == "ok" and np.isfinite(rows[0]["MASE"]) and np.isnan(rows[0]["coverage_80"])


def test_without_weights_the_command_explains(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(suite, "describe_models", lambda: [{"name": OFFICIAL_MODEL, "available": False}])
    assert suite.main(["--quick", "--output", str(tmp_path), "--no-progress"]) == 2
    assert MODEL_DIR_ENV in capsys.readouterr().err


def test_cli_delegates_to_the_benchmark(capsys):
    from dynamix_adapters.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_bundled_weights_count_as_available_once_shipped(monkeypatch, tmp_path):
    # The suite runs every weight set describe_models() reports; a shipped file must be reported.
    from dynamix_adapters import weights

    monkeypatch.setattr(weights, "PACKAGE_WEIGHTS_DIR", tmp_path)
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)

    def bundled_row():
        return next(row for row in weights.describe_models() if row["name"] == weights.BUNDLED_MODEL)

    assert not bundled_row()["available"]
    shutil.copy(weights.tiny_test_checkpoint(), tmp_path / f"{weights.BUNDLED_MODEL}.safetensors")
    assert bundled_row()["available"]
    assert bundled_row()["location"] == str(tmp_path / f"{weights.BUNDLED_MODEL}.safetensors")


@pytest.mark.slow
def test_quick_track_b_finetunes_on_history_only(quick_run):
    tuning = pd.read_csv(quick_run / "track_b_finetuning.csv")
    assert set(tuning["dataset"]) == set(suite.QUICK.datasets)
    for row in tuning.itertuples():
        dataset = real_world.DATASETS[row.dataset]
        cv = real_world.splitter(len(dataset.load()), dataset.horizon, suite.QUICK.windows)
        assert row.history == cv.initial_window  # the first test window starts right after it
    assert (tuning["best_validation_mse"] <= tuning["start_validation_mse"]).all()
    assert (quick_run / "finetuned").is_dir()

"""DynaMixForecaster in sktime: indexes, panels, intervals, updates, determinism, errors, and sktime's tools."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sktime")

from sktime.base import load as sktime_load
from sktime.datasets import load_airline
from sktime.forecasting.base import ForecastingHorizon
from sktime.forecasting.compose import TransformedTargetForecaster
from sktime.forecasting.model_evaluation import evaluate
from sktime.forecasting.model_selection import ForecastingGridSearchCV
from sktime.split import ExpandingWindowSplitter
from sktime.transformations.series.boxcox import LogTransformer
from sktime.transformations.series.detrend import Detrender

import dynamix_adapters.pipeline
from dynamix_adapters import DivergenceError, DivergenceWarning, DynaMixForecaster, sktime_forecaster
from dynamix_adapters.weights import tiny_test_checkpoint


@pytest.fixture(scope="module")
def tiny():
    path = str(tiny_test_checkpoint())

    def build(**params) -> DynaMixForecaster:
        return DynaMixForecaster(model=path, **{"n_samples": 20, "random_state": 0, **params})

    return build


@pytest.fixture(scope="module")
def official(official_path):
    def build(**params) -> DynaMixForecaster:
        return DynaMixForecaster(model=str(official_path), **{"n_samples": 30, "random_state": 0, **params})

    return build


@pytest.fixture(scope="module")
def lorenz(shared_series) -> pd.DataFrame:
    return pd.DataFrame(shared_series("lorenz63")[:400], columns=["x", "y", "z"])


def sine(length: int = 60, index=None, name="signal") -> pd.Series:
    t = np.arange(length)
    return pd.Series(np.sin(0.3 * t) + 0.1 * np.sin(1.7 * t), index=index, name=name)


def panel(lengths=(50, 64, 57), hierarchical=False) -> pd.DataFrame:
    """Series of unequal lengths that all end on the same day, as a pd-multiindex or pd_multiindex_hier frame."""
    frames = []
    for i, length in enumerate(lengths):
        times = pd.date_range(end="2021-06-30", periods=length, freq="D")
        keys = ("north" if i % 2 else "south", f"store{i}") if hierarchical else (f"store{i}",)
        values = np.sin(0.2 * (i + 1) * np.arange(length)) + i
        index = pd.MultiIndex.from_tuples([(*keys, t) for t in times])
        frames.append(pd.DataFrame({"sales": values}, index=index))
    y = pd.concat(frames)
    y.index.names = ["region", "store", "date"] if hierarchical else ["store", "date"]
    return y


# --- index types, fh forms, names ------------------------------------------------------------------------------------

INDEXES = {
    "datetime": pd.date_range("2020-01-01", periods=60, freq="D"),
    "period": pd.period_range("2000-01", periods=60, freq="M"),
    "range": pd.RangeIndex(10, 70),
    "integer": pd.Index(np.arange(100, 160), dtype="int64"),
}


@pytest.mark.parametrize("kind", INDEXES)
def test_index_types_and_fh_forms(tiny, kind):
    index = INDEXES[kind]
    y = sine(index=index)
    forecaster = tiny().fit(y)
    contiguous = forecaster.predict(fh=[1, 2, 3, 4, 5])
    # The index continues y's index, built here without sktime's helpers.
    if kind == "datetime":
        expected = pd.date_range(index[-1], periods=6, freq="D")[1:]
    elif kind == "period":
        expected = pd.period_range(index[-1], periods=6, freq="M")[1:]
    else:
        expected = pd.Index(np.arange(index[-1] + 1, index[-1] + 6))
    np.testing.assert_array_equal(contiguous.index, expected)
    assert contiguous.name == "signal"

    # A non-contiguous fh picks rows of the same rollout; an absolute fh lands on the same rows.
    gappy = forecaster.predict(fh=[2, 5])
    pd.testing.assert_series_equal(gappy, contiguous.iloc[[1, 4]], check_freq=False)
    absolute = forecaster.predict(fh=ForecastingHorizon(expected[[0, 3]], is_relative=False))
    np.testing.assert_array_equal(absolute.to_numpy(), contiguous.iloc[[0, 3]].to_numpy())


def test_multivariate_columns_preserved(tiny):
    y = pd.DataFrame({"x": sine(), "velocity": sine().diff().fillna(0.0), "z": np.cos(np.arange(60) * 0.3)})
    forecaster = tiny().fit(y)
    prediction = forecaster.predict(fh=[1, 2])
    assert list(prediction.columns) == ["x", "velocity", "z"]
    quantiles = forecaster.predict_quantiles(fh=[1, 2], alpha=[0.1, 0.9])
    assert list(quantiles.columns) == [(c, a) for c in ("x", "velocity", "z") for a in (0.1, 0.9)]


# --- panels ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hierarchical", [False, True])
@pytest.mark.filterwarnings("ignore:indexing past lexsort depth")  # panel() keeps its instances unsorted on purpose
def test_panel_is_one_batched_call_and_matches_single_series(tiny, monkeypatch, hierarchical):
    y = panel(hierarchical=hierarchical)
    batches = []
    rollout = dynamix_adapters.pipeline.rollout

    def recording(model, batch, horizon, backend):
        batches.append([int(batch.context.shape[1] - start) for start in batch.valid_from])
        return rollout(model, batch, horizon, backend)

    monkeypatch.setattr(dynamix_adapters.pipeline, "rollout", recording)
    forecaster = tiny(preprocessing="pos_embedding", nonstationary=False).fit(y)
    batches.clear()  # fit validates "auto" choices; the forecast itself is one call
    prediction = forecaster.predict(fh=[1, 3])
    assert batches[-1] == [50, 64, 57], "all series of a panel go through the model in one call"

    assert prediction.index.names == y.index.names
    instances = list(y.index.droplevel(-1).unique())
    assert list(prediction.index.droplevel(-1).unique()) == instances
    for instance in instances:
        alone = (
            tiny(preprocessing="pos_embedding", nonstationary=False).fit(y.loc[instance]["sales"]).predict(fh=[1, 3])
        )
        np.testing.assert_array_equal(prediction.loc[instance]["sales"].to_numpy(), alone.to_numpy())
        np.testing.assert_array_equal(prediction.loc[instance].index, pd.DatetimeIndex(["2021-07-01", "2021-07-03"]))


def test_panel_series_with_different_ends_forecast_from_their_own(tiny):
    y = panel()
    y = y.drop(index=[("store1", t) for t in y.loc["store1"].index[-4:]])  # store1 ends four days early
    forecaster = tiny().fit(y)
    relative = forecaster.predict(fh=[1])
    assert relative.loc["store1"].index[0] == pd.Timestamp("2021-06-27")
    assert relative.loc["store0"].index[0] == pd.Timestamp("2021-07-01")
    absolute = forecaster.predict(fh=pd.DatetimeIndex(["2021-07-01"], freq="D"))
    # store1 is five steps away from 2021-07-01, the others one step.
    five_steps = tiny().fit(y.loc["store1"]["sales"]).predict(fh=[5])
    np.testing.assert_array_equal(absolute.loc["store1"].to_numpy().ravel(), five_steps.to_numpy())
    intervals = forecaster.predict_interval(fh=[1, 2], coverage=0.8)
    assert intervals.index.equals(forecaster.predict(fh=[1, 2]).index)


# --- probabilistic forecasts (official weights: a random tiny model barely reacts to its noise) ----------------------


def test_intervals_widen_with_the_horizon_on_a_chaotic_series(official, lorenz):
    forecaster = official().fit(lorenz)
    intervals = forecaster.predict_interval(fh=range(1, 101), coverage=0.9)
    width = intervals.xs("upper", axis=1, level=2) - intervals.xs("lower", axis=1, level=2)
    assert (width.to_numpy() >= 0).all()
    first, late = width.iloc[0], width.iloc[-10:].mean()
    # Calibrated (the default): the first step's width is the measured one-step error, not ~0.
    assert (late > 1.5 * first).all(), (first, late)
    # On the validated horizon (16 steps here, matched for 32) the width follows the growing validation
    # error; past it, the ensemble's own spread, which breathes with the flow (transforms/calibration.py).
    matched = width.iloc[:32]
    trend = [np.corrcoef(np.arange(len(matched)), matched[column])[0, 1] for column in width.columns]
    assert min(trend) > 0.5, trend


def test_quantiles_variance_and_median_come_from_the_same_sample_paths(official, lorenz):
    forecaster = official(point_forecast="median").fit(lorenz)
    fh = [1, 5, 20]
    quantiles = forecaster.predict_quantiles(fh=fh, alpha=[0.05, 0.25, 0.5, 0.75, 0.95])
    for column in lorenz.columns:
        levels = quantiles[column].to_numpy()
        assert (np.diff(levels, axis=1) >= 0).all(), "quantiles must not cross"
    median = quantiles.xs(0.5, axis=1, level=1)
    np.testing.assert_allclose(forecaster.predict(fh=fh).to_numpy(), median.to_numpy())
    variance = forecaster.predict_var(fh=fh)
    assert list(variance.columns) == list(lorenz.columns)
    assert (variance.to_numpy() > 0).all()
    # Interquartile range and variance describe one distribution: for these unimodal
    # short-horizon spreads, the IQR lies within a few standard deviations.
    iqr = (quantiles.xs(0.75, axis=1, level=1) - quantiles.xs(0.25, axis=1, level=1)).to_numpy()
    assert (iqr <= 4 * np.sqrt(variance.to_numpy())).all()


def test_point_forecast_path_keeps_the_spread_that_the_mean_loses(official, lorenz):
    fh = range(1, 1001)
    path = official().fit(lorenz).predict(fh=fh)
    mean = official(point_forecast="mean").fit(lorenz).predict(fh=fh)
    # Once the sample paths decorrelate, their mean shrinks towards the attractor's centre;
    # a single trajectory keeps oscillating with the attractor's amplitude.
    assert path.iloc[-500:].std().mean() > 1.3 * mean.iloc[-500:].std().mean()


# --- determinism -----------------------------------------------------------------------------------------------------


def test_same_seed_same_forecasts_also_after_pickle_and_clone(official, lorenz):
    forecaster = official().fit(lorenz)
    fh = [1, 10, 30]
    point, intervals = forecaster.predict(fh=fh), forecaster.predict_interval(fh=fh)
    pd.testing.assert_frame_equal(forecaster.predict(fh=fh), point)
    pd.testing.assert_frame_equal(forecaster.predict_interval(fh=fh), intervals)

    restored = pickle.loads(pickle.dumps(forecaster))
    pd.testing.assert_frame_equal(restored.predict(fh=fh), point)
    pd.testing.assert_frame_equal(restored.predict_interval(fh=fh), intervals)

    refitted = forecaster.clone().fit(lorenz)
    pd.testing.assert_frame_equal(refitted.predict(fh=fh), point)
    pd.testing.assert_frame_equal(refitted.predict_interval(fh=fh), intervals)

    other = official(random_state=1).fit(lorenz)
    assert not np.allclose(other.predict(fh=fh).to_numpy(), point.to_numpy())
    assert not np.allclose(other.predict_interval(fh=fh).to_numpy(), intervals.to_numpy())


def test_one_pipeline_per_fit_dropped_on_pickling(tiny):
    forecaster = tiny().fit(sine())
    pipeline = forecaster._pipeline
    point = forecaster.predict(fh=[1, 2, 3])
    forecaster.predict_interval(fh=[1, 2, 3])
    assert forecaster._pipeline is pipeline, "the weights are resolved once per fit, not on every access"
    restored = pickle.loads(pickle.dumps(forecaster))
    assert restored._loaded_pipeline is None
    pd.testing.assert_series_equal(restored.predict(fh=[1, 2, 3]), point)
    assert restored._pipeline.model is pipeline.model, "rebuilt from this process' cache"
    # A refit may come with other options: set_params and fit drop the old pipeline.
    forecaster.set_params(context_length=40)
    assert forecaster.fit(sine())._pipeline.options.context_length == 40


@pytest.mark.filterwarnings("error")
def test_readme_quickstart_emits_no_warning():
    """sktime 1.2 warns about remember_data unless a forecaster settles it; this one does (it keeps its own context)."""
    y = load_airline()
    forecaster = DynaMixForecaster(nonstationary=True, random_state=0).fit(y)
    forecaster.predict(fh=range(1, 13))
    forecaster.predict_interval(fh=range(1, 13), coverage=[0.8, 0.95])
    assert forecaster.get_config()["remember_data"] is False


def test_pickle_holds_no_torch_module(tiny):
    forecaster = tiny().fit(sine())
    assert b"torch" not in pickle.dumps(forecaster)


def test_same_forecast_in_a_fresh_process_without_darts(tiny, tmp_path):
    forecaster = tiny(n_samples=5).fit(sine(index=INDEXES["period"]))
    forecaster.save(tmp_path / "forecaster")
    script = (
        "import json, sys\n"
        "sys.modules['darts'] = None\n"  # as if darts were not installed
        "from sktime.base import load\n"
        f"forecaster = load({str(tmp_path / 'forecaster')!r})\n"
        "print(json.dumps(forecaster.predict_quantiles(fh=[1, 4], alpha=[0.2, 0.8]).to_numpy().tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    expected = forecaster.predict_quantiles(fh=[1, 4], alpha=[0.2, 0.8]).to_numpy()
    np.testing.assert_array_equal(np.array(json.loads(result.stdout)), expected)
    loaded = sktime_load(tmp_path / "forecaster.zip")
    pd.testing.assert_series_equal(loaded.predict(fh=[1, 4]), forecaster.predict(fh=[1, 4]))


class HideSktime:
    """An import finder that reports sktime as not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "sktime":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_without_sktime_the_package_imports_and_the_class_explains(monkeypatch):
    import dynamix_adapters

    # monkeypatch puts the loaded modules and the finders back afterwards.
    for name in [name for name in sys.modules if name.split(".")[0] == "sktime"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [HideSktime(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "dynamix_adapters.sktime_forecaster")
    with pytest.raises(ImportError, match=r"pip install 'dynamix-adapters\[sktime\]'"):
        dynamix_adapters.DynaMixForecaster  # noqa: B018


# --- update ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update_params", [True, False])
def test_update_moves_the_context_forward(tiny, update_params):
    y = sine(90, index=pd.date_range("2020-01-01", periods=90, freq="D"))
    forecaster = tiny(context_length=40).fit(y.iloc[:60])
    forecaster.update(y.iloc[60:], update_params=update_params)
    assert forecaster.cutoff[0] == y.index[-1]
    expected = tiny(context_length=40).fit(y).predict(fh=[1, 2, 3])
    pd.testing.assert_series_equal(forecaster.predict(fh=[1, 2, 3]), expected)


def test_update_adds_panel_series_and_extends_known_ones(tiny):
    y = panel()
    early = y[y.index.get_level_values("date") <= "2021-06-20"]
    late = y[y.index.get_level_values("date") > "2021-06-20"]
    forecaster = tiny().fit(early.drop("store2"))
    forecaster.update(late)
    expected = tiny().fit(pd.concat([early.drop("store2"), late])).predict(fh=[1, 2])
    pd.testing.assert_frame_equal(forecaster.predict(fh=[1, 2]).sort_index(), expected.sort_index())


def test_update_predict_matches_refitting(tiny):
    y = sine(80, index=pd.RangeIndex(10, 90))
    forecaster = tiny().fit(y.iloc[:50])
    moving = forecaster.update_predict(y.iloc[50:], cv=ExpandingWindowSplitter(fh=[1, 2], initial_window=10))
    assert len(moving.columns) > 1
    # Zero-shot: a forecast after updates is the forecast of a fresh fit on the same history.
    for cutoff in moving.columns:
        expected = tiny().fit(y.loc[:cutoff]).predict(fh=[1, 2])
        np.testing.assert_array_equal(moving[cutoff].dropna().to_numpy(), expected.to_numpy())

    cv = ExpandingWindowSplitter(fh=[1, 2], initial_window=50, step_length=10)
    updated = evaluate(tiny(), cv, y, strategy="update", return_data=True)
    refitted = evaluate(tiny(), cv, y, strategy="refit", return_data=True)
    for a, b in zip(updated["y_pred"], refitted["y_pred"], strict=True):
        pd.testing.assert_series_equal(a, b)


def test_fit_validates_once_for_every_forecast_and_update_chooses_again(tiny, monkeypatch):
    """The default path: fit chooses the "auto" settings, predict and intervals reuse them; an update re-chooses."""
    from dynamix_adapters.transforms import selection

    calls = []
    real = selection._validate
    monkeypatch.setattr(selection, "_validate", lambda *a: calls.append(1) or real(*a))
    y = sine(120, index=pd.date_range("2020-01-01", periods=120, freq="D"))
    forecaster = tiny().fit(y.iloc[:100])
    assert len(calls) == 1
    point = forecaster.predict(fh=[1, 2, 3])
    forecaster.predict_interval(fh=[1, 2, 3])
    forecaster.predict_quantiles(fh=[1, 2, 3], alpha=[0.1, 0.9])
    forecaster.predict_var(fh=[1, 2, 3])
    assert len(calls) == 1
    # The same forecast as a pipeline that validates on its own, with the same seed.
    own = forecaster._pipeline.predict(forecaster._contexts(), 3)
    np.testing.assert_array_equal(point.to_numpy(), own[:, 0, 0])
    assert len(calls) == 2
    forecaster.update(y.iloc[100:])
    assert len(calls) == 3
    pd.testing.assert_series_equal(forecaster.predict(fh=[1, 2]), tiny().fit(y).predict(fh=[1, 2]))
    assert len(calls) == 4  # the fresh fit above, and nothing for either predict


def _panels_of_every_layout() -> list[pd.DataFrame]:
    rng = np.random.default_rng(0)
    dates = pd.date_range("2020", periods=5, freq="D")
    hierarchy = pd.MultiIndex.from_product([[1, 2], ["u", "v"], pd.RangeIndex(4)], names=["h", "id", "t"])
    interleaved = pd.MultiIndex.from_tuples([(0, 1), (1, 1), (0, 2), (1, 2)], names=["id", "t"])
    months = pd.MultiIndex.from_product([[0, 1], pd.period_range("2000", periods=3, freq="M")], names=["id", "t"])
    uneven = pd.MultiIndex.from_tuples(
        [("a", pd.Timestamp("2020-01-01")), ("a", pd.Timestamp("2020-01-02")), ("b", pd.Timestamp("2020-01-05"))],
        names=["id", "t"],
    )
    return [
        pd.DataFrame(
            rng.standard_normal((15, 2)),
            index=pd.MultiIndex.from_product([["b", "a", "c"], dates], names=["id", "t"]),
            columns=["x", "y"],
        ),
        pd.DataFrame({"x": rng.standard_normal(16)}, index=hierarchy),
        pd.DataFrame({"x": [1.0, 2, 3, 4]}, index=interleaved),  # an instance's rows not contiguous
        pd.DataFrame({"x": [1, 2, 3, 4, 5, 6], "z": [1.0] * 6}, index=months),  # columns of two dtypes
        pd.DataFrame({"x": np.arange(6.0)}, index=months),
        pd.DataFrame({"x": np.arange(3.0)}, index=uneven),
    ]


@pytest.mark.parametrize("y", _panels_of_every_layout())
def test_panel_split_and_forecast_index_match_pandas_groupby(y):
    """The fast split equals groupby + droplevel (frequency included); the index builder equals one tuple per row."""
    levels = list(range(y.index.nlevels - 1))
    expected = [
        (key if isinstance(key, tuple) else (key,), frame.droplevel(levels))
        for key, frame in y.groupby(level=levels if len(levels) > 1 else 0, sort=False)
    ]
    keys, frames = sktime_forecaster._split_instances(y)
    assert keys == [key for key, _ in expected]
    for frame, (_, wanted) in zip(frames, expected, strict=True):
        pd.testing.assert_frame_equal(frame, wanted)
        assert getattr(frame.index, "freq", None) == getattr(wanted.index, "freq", None)
    times = [frame.index[-2:] for frame in frames]
    rows = [(*key, time) for key, series_times in zip(keys, times, strict=True) for time in series_times]
    built = sktime_forecaster._panel_index(keys, times, list(y.index.names))
    pd.testing.assert_index_equal(built, pd.MultiIndex.from_tuples(rows, names=list(y.index.names)), exact=True)


def test_editing_y_after_fit_changes_no_forecast(tiny):
    y = panel()
    forecaster = tiny().fit(y)
    before = forecaster.predict(fh=[1, 2])
    y.iloc[:, 0] = 1e6  # in place, on the frame the forecaster was fitted on
    pd.testing.assert_frame_equal(forecaster.predict(fh=[1, 2]), before)


# --- fitted params ---------------------------------------------------------------------------------------------------


def test_fitted_params_show_model_size_and_embedding(official, official_path, lorenz):
    params = official().fit(lorenz["x"]).get_fitted_params()
    assert params["model_name"] == str(official_path)
    assert params["n_parameters"] == 10256
    assert params["embedding"] == params["preprocessing"], "auto's choice is the embedding used"
    assert official(preprocessing="zero_embedding").fit(lorenz["x"]).embedding_ == "zero_embedding"
    assert official().fit(lorenz).get_fitted_params()["embedding"] == "none"
    four_dims = lorenz.assign(w=lorenz["x"] * lorenz["y"])
    assert "each of the 4 dims" in official(preprocessing="delay_embedding").fit(four_dims).embedding_


def test_construction_stores_parameters_untouched_and_loads_nothing():
    forecaster = DynaMixForecaster(model="not-a-model", context_length=5, n_samples=7)
    assert forecaster.get_params()["model"] == "not-a-model"
    with pytest.raises(ValueError, match="Unknown model 'not-a-model'"):
        forecaster.fit(sine())


# --- errors ----------------------------------------------------------------------------------------------------------


def test_missing_values_are_rejected(tiny):
    y = sine()
    y.iloc[7] = np.nan
    with pytest.raises(ValueError, match="missing data"):
        tiny().fit(y)


@pytest.mark.parametrize(
    ("params", "length", "match"),
    [
        ({}, 1, "needs at least 2 observations per series"),
        ({"preprocessing": "delay_embedding"}, 3, "needs at least 4 observations .* has 3"),
        ({"preprocessing": "delay_embedding", "context_length": 3}, 60, "raise context_length to at least 4"),
    ],
)
def test_too_short_history_names_the_needed_length(tiny, params, length, match):
    with pytest.raises(ValueError, match=match):
        tiny(**params).fit(sine(length))


def test_too_short_panel_series_is_named(tiny):
    y = panel(lengths=(30, 3))
    with pytest.raises(ValueError, match=r"series \('store1',\) of y has 3"):
        tiny(preprocessing="delay_embedding").fit(y)

    forecaster = tiny(preprocessing="delay_embedding").fit(y.drop("store1"))
    before = forecaster.predict(fh=[1])
    newcomer = y.loc[["store1"]].rename(index={"store1": "store9"}, level=0)
    with pytest.raises(ValueError, match=r"series \('store9',\) of y has 3"):
        forecaster.update(newcomer)
    pd.testing.assert_frame_equal(forecaster.predict(fh=[1]), before)


def test_non_numeric_columns_are_rejected(tiny):
    y = pd.DataFrame({"value": sine(), "label": ["a"] * 60})
    with pytest.raises(TypeError, match="categorical"):
        tiny().fit(y)


@pytest.mark.parametrize("fh", [[0], [-2, 1], "last_two_observed"])
def test_fh_into_the_past_is_rejected(tiny, fh):
    y = sine(index=INDEXES["period"])
    forecaster = tiny().fit(y)
    if fh == "last_two_observed":
        fh = ForecastingHorizon(y.index[-2:], is_relative=False)
    with pytest.raises(NotImplementedError, match="in-sample"):
        forecaster.predict(fh=fh)


def test_bad_parameters_fail_at_fit_with_the_fix(tiny):
    with pytest.raises(ValueError, match="point_forecast"):
        tiny(point_forecast="mode").fit(sine())
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1"):
        tiny(n_samples=0).fit(sine())


# --- sktime's tools --------------------------------------------------------------------------------------------------


def test_evaluate_with_expanding_window(tiny):
    y = load_airline()
    cv = ExpandingWindowSplitter(fh=[1, 2, 3], initial_window=120, step_length=6)
    results = evaluate(tiny(nonstationary=True), cv, y)
    assert len(results) == cv.get_n_splits(y)
    assert np.isfinite(results["test_MeanAbsolutePercentageError"]).all()


# sktime's own composite (not the DynaMix forecaster inside it) announces that its remember_data default flips in 1.3.
@pytest.mark.filterwarnings("ignore:The default of config ``remember_data``:FutureWarning")
def test_transformed_target_forecaster(tiny):
    y = load_airline()
    pipeline = TransformedTargetForecaster([("log", LogTransformer()), ("detrend", Detrender()), ("dynamix", tiny())])
    prediction = pipeline.fit(y).predict(fh=[1, 2, 3])
    assert prediction.index.equals(pd.period_range("1961-01", periods=3, freq="M"))
    assert prediction.name == y.name
    assert ((prediction > 0) & np.isfinite(prediction)).all()
    assert pipeline.predict_interval(fh=[1, 2], coverage=0.8).shape == (2, 2)


# sktime's own composite (not the DynaMix forecaster inside it) announces that its remember_data default flips in 1.3.
@pytest.mark.filterwarnings("ignore:The default of config ``remember_data``:FutureWarning")
def test_grid_search_over_context_length_and_preprocessing(tiny):
    y = load_airline()
    grid = {"context_length": [None, 48], "preprocessing": ["pos_embedding", "zero_embedding"]}
    cv = ExpandingWindowSplitter(fh=[1, 2], initial_window=120, step_length=12)
    # backend=None: in-process; loky's fresh workers would spend ~20 s importing torch and sktime.
    search = ForecastingGridSearchCV(tiny(), cv, grid, backend=None)
    search.fit(y)
    assert len(search.cv_results_) == 4
    assert search.best_params_["context_length"] in (None, 48)
    assert search.best_forecaster_.get_params()["preprocessing"] == search.best_params_["preprocessing"]
    assert len(search.predict(fh=[1, 2])) == 2


def test_panel_evaluate(tiny):
    y = panel(lengths=(60, 60, 60))
    cv = ExpandingWindowSplitter(fh=[1, 2], initial_window=45, step_length=5)
    results = evaluate(tiny(), cv, y, return_data=True)
    assert len(results) == cv.get_n_splits(y)
    first = results["y_pred"].iloc[0]
    assert first.index.names == y.index.names
    assert len(first) == 3 * 2


# --- the libraries' own contracts (issue 17) --------------------------------------------------------------------------


def test_predict_proba_is_the_empirical_distribution_of_the_quantiles_sample_paths(official):
    """skpro's Empirical over the same paths: each quantile within one order statistic of predict_quantiles."""
    y = load_airline()
    forecaster = official(n_samples=200).fit(y)
    alpha = [0.05, 0.5, 0.95]
    quantiles = forecaster.predict_quantiles(fh=[1, 2, 3], alpha=alpha).to_numpy()  # (3, A)
    proba = forecaster.predict_proba(fh=[1, 2, 3])
    assert type(proba).__name__ == "Empirical"
    from_proba = proba.quantile(alpha).to_numpy()
    samples = np.sort(proba.spl.to_numpy().reshape(200, 3), axis=0)  # (paths, steps)
    gap = np.diff(samples, axis=0).max(axis=0)[:, None]  # (steps, 1): the widest spacing of the paths
    assert np.all(np.abs(from_proba - quantiles) <= gap)
    np.testing.assert_allclose(proba.mean().to_numpy()[:, 0], samples.mean(axis=0))


def test_update_predict_single_keeps_the_series_type(tiny):
    y = sine(80)
    forecaster = tiny().fit(y.iloc[:60])
    updated = forecaster.update_predict_single(y.iloc[60:], fh=[1, 2])
    assert isinstance(updated, pd.Series)
    assert isinstance(forecaster.predict(fh=[1]), pd.Series)
    np.testing.assert_array_equal(updated.to_numpy(), tiny().fit(y).predict(fh=[1, 2]).to_numpy())


def test_a_diverging_panel_series_is_nan_with_a_warning_naming_it(official):
    values = 1000 + 10 * np.sin(0.3 * np.arange(100))
    values[-1] = 5000  # an outlier at the end: unstandardized, the official weights diverge by step 14
    calm = np.sin(0.3 * np.arange(100))
    index = pd.MultiIndex.from_product([["calm", "spiky"], pd.RangeIndex(100)])
    y = pd.DataFrame({"v": np.concatenate([calm, values])}, index=index)
    forecaster = official(standardize=False, preprocessing="pos_embedding", nonstationary=False)
    with pytest.warns(DivergenceWarning, match="series 'spiky' at step 14"):
        prediction = forecaster.fit(y).predict(fh=range(1, 21))
    assert prediction.loc["spiky"]["v"].isna().all()
    assert np.isfinite(prediction.loc["calm"]["v"].to_numpy()).all()
    alone = official(standardize=False, preprocessing="pos_embedding", nonstationary=False).fit(pd.Series(calm))
    np.testing.assert_array_equal(prediction.loc["calm"]["v"].to_numpy(), alone.predict(fh=range(1, 21)).to_numpy())
    with pytest.raises(DivergenceError, match="series 'spiky' at step 14"):
        official(standardize=False, preprocessing="pos_embedding", nonstationary=False, on_divergence="raise").fit(
            y
        ).predict(fh=range(1, 21))

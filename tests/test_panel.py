import sys

import numpy as np
import pandas as pd
import pytest

from dynamix_adapters.panel import ERROR_COLUMN, LongFormat, ModelSpec, forecast_long, forecast_schema
from dynamix_adapters.pipeline import DynaMixPipeline
from dynamix_adapters.weights import tiny_test_checkpoint

COLUMNS = LongFormat("id", "time")
LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def pipeline():
    # Explicit preprocessing: "auto" would validate every candidate per series, which these tests do not need.
    return DynaMixPipeline.from_pretrained(
        tiny_test_checkpoint(), preprocessing="pos_embedding", nonstationary=False, n_samples=8, random_state=7
    )


def long_panel(lengths: dict, start="2024-01-01", freq="h", dims=1) -> pd.DataFrame:
    """Sines of different phases, one per id, each with its own length and start."""
    frames = []
    for k, (name, length) in enumerate(lengths.items()):
        t = np.arange(length)
        frame = pd.DataFrame(
            {"id": name, "time": pd.date_range(start, periods=length, freq=freq) + pd.Timedelta(k, "h")}
        )
        for d in range(dims):
            frame[f"x{d}"] = np.sin(0.3 * t + k + d) + 0.01 * k
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_forecasts_equal_the_per_series_call_whatever_the_batch_size(pipeline):
    frame = long_panel({"b": 70, "a": 40, "c": 55}, dims=2).sample(frac=1.0, random_state=0)  # shuffled rows
    results = [forecast_long(pipeline, frame, 5, COLUMNS, LEVELS, batch_size=size) for size in (1, 2, 512)]
    for other in results[1:]:
        pd.testing.assert_frame_equal(results[0], other)
    result = results[0]
    assert list(result.columns) == [
        "id", "time", "x0", "x0_q0.1", "x0_q0.5", "x0_q0.9", "x1", "x1_q0.1", "x1_q0.5", "x1_q0.9", ERROR_COLUMN,
    ]  # fmt: skip
    assert result["id"].tolist() == ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    assert result[ERROR_COLUMN].isna().all()
    for name, rows in result.groupby("id"):
        context = frame[frame["id"] == name].sort_values("time")
        # C order, as forecast_long holds its rows: the standardization's sums round by memory layout.
        values = np.ascontiguousarray(context[["x0", "x1"]].to_numpy())  # (T, D)
        point = pipeline.predict(values, 5)  # (H, D)
        quantiles, _ = pipeline.predict_quantiles(values, 5, LEVELS)  # (Q, H, D)
        np.testing.assert_array_equal(rows[["x0", "x1"]].to_numpy(), point)
        np.testing.assert_array_equal(rows["x1_q0.9"].to_numpy(), quantiles[2, :, 1])
        expected = pd.date_range(context["time"].iloc[-1], periods=6, freq="h")[1:]
        assert list(rows["time"]) == list(expected)


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        (np.arange(0, 200, 5), [200, 205, 210]),
        (pd.date_range("2020-01-01", periods=40, freq="MS"), list(pd.date_range("2023-05-01", periods=3, freq="MS"))),
        (
            pd.date_range("2024-03-01", periods=40, freq="D", tz="Europe/Berlin"),
            list(pd.date_range("2024-04-10", periods=3, freq="D", tz="Europe/Berlin")),
        ),
    ],
)
def test_future_times_continue_each_ids_spacing(pipeline, times, expected):
    frame = pd.DataFrame({"id": 1, "time": times, "x": np.sin(np.arange(40.0))})
    result = forecast_long(pipeline, frame, 3, COLUMNS)
    assert list(result["time"]) == expected
    assert result["time"].dtype == forecast_schema(frame, COLUMNS)["time"].dtype


def test_short_and_irregular_ids_get_an_error_row_and_the_others_their_forecast(pipeline):
    frame = long_panel({"ok": 40, "short": 1, "gappy": 40})
    frame = frame.drop(frame.index[(frame["id"] == "gappy")][[5, 6]])
    result = forecast_long(pipeline, frame, 4, COLUMNS)
    errors = result.set_index("id")[ERROR_COLUMN]
    assert "'short' has 1" in errors["short"] and "longer history" in errors["short"]
    assert "'gappy'" in errors["gappy"] and "irregular" in errors["gappy"] and "regular grid" in errors["gappy"]
    assert result[result["id"] != "ok"][["time", "x0"]].isna().all().all()
    alone = forecast_long(pipeline, frame[frame["id"] == "ok"], 4, COLUMNS)
    pd.testing.assert_frame_equal(result[result["id"] == "ok"].reset_index(drop=True), alone)


def test_a_diverging_id_becomes_an_error_row(pipeline, monkeypatch):
    frame = long_panel({"a": 40, "b": 40})
    predict = DynaMixPipeline.predict

    def fail_on_b(self, context, horizon, *, names=None, settings=None):
        if "id 'b'" in names:
            raise ValueError("The forecast diverged: id 'b'")
        return predict(self, context, horizon, names=names, settings=settings)

    monkeypatch.setattr(DynaMixPipeline, "predict", fail_on_b)
    result = forecast_long(pipeline, frame, 3, COLUMNS).set_index("id")
    assert result.loc["b", ERROR_COLUMN] == "The forecast diverged: id 'b'"
    assert result.loc["a", ERROR_COLUMN].isna().all() and len(result.loc["a"]) == 3


def test_a_nan_forecast_becomes_an_error_row(pipeline, monkeypatch):
    frame = long_panel({"a": 40, "b": 40})
    predict = DynaMixPipeline.predict

    def nan_for_b(self, context, horizon, *, names=None, settings=None):
        point = predict(self, context, horizon, names=names, settings=settings)  # (H, S, D)
        point[:, names.index("id 'b'")] = np.nan  # as on_divergence="nan" returns a diverged series
        return point

    monkeypatch.setattr(DynaMixPipeline, "predict", nan_for_b)
    result = forecast_long(pipeline, frame, 3, COLUMNS).set_index("id")
    assert "id 'b': the forecast diverged" in result.loc["b", ERROR_COLUMN]
    assert len(result.loc["a"]) == 3


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda f: f.drop(columns="id"), ValueError, "no column 'id'"),
        (lambda f: f.drop(columns="time"), ValueError, "no column 'time'"),
        (lambda f: pd.concat([f, f.iloc[[3]]]), ValueError, "Ids 'a' have duplicate time stamps"),
        (lambda f: f.assign(x0=f["x0"].astype(str)), TypeError, "Value column 'x0' must be real numbers"),
        (lambda f: f.assign(x0=f["x0"].where(f.index != 50)), ValueError, "missing or infinite values (ids 'b')"),
        (lambda f: f.assign(time=f["time"].astype(str)), TypeError, "pd.to_datetime"),
        (lambda f: f.assign(id=f["id"].where(f.index != 2)), ValueError, "Id column 'id' has 1 missing"),
    ],
)
def test_bad_frames_raise_naming_the_problem(pipeline, change, error, message):
    frame = change(long_panel({"a": 40, "b": 40}))
    with pytest.raises(error) as info:
        forecast_long(pipeline, frame, 3, LongFormat("id", "time", ("x0",)))
    assert message in str(info.value)


def test_bad_arguments(pipeline):
    frame = long_panel({"a": 40})
    with pytest.raises(ValueError, match="Quantile levels"):
        forecast_long(pipeline, frame, 3, COLUMNS, quantile_levels=(1.5,))
    with pytest.raises(ValueError, match="batch_size"):
        forecast_long(pipeline, frame, 3, COLUMNS, batch_size=0)
    with pytest.raises(ValueError, match="two columns named 'error'"):
        forecast_long(pipeline, frame.rename(columns={"x0": "error"}), 3, COLUMNS)


def test_empty_frame_gives_the_empty_schema(pipeline):
    frame = long_panel({"a": 40}).iloc[:0]
    result = forecast_long(pipeline, frame, 3, COLUMNS, LEVELS)
    pd.testing.assert_frame_equal(result, forecast_schema(frame, COLUMNS, LEVELS))


def test_model_spec_is_small_and_loads_lazily():
    import pickle

    spec = ModelSpec(tiny_test_checkpoint(), DynaMixPipeline.from_pretrained(tiny_test_checkpoint()).options)
    assert isinstance(spec.model, str) and len(pickle.dumps(spec)) < 1000
    assert spec.seeded().options.random_state is not None
    assert spec.pipeline().model is spec.pipeline().model  # the per-process cache


def test_importing_the_package_does_not_import_dask():
    import subprocess

    code = "import dynamix_adapters, dynamix_adapters.panel, dynamix_adapters.cli, sys; print('dask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"

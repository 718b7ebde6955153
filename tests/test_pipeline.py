"""DynaMixPipeline keeps no per-call state: one pipeline, shared by threads or Dask workers, forecasts as serially."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

import dynamix_adapters.pipeline as pipeline_module
from dynamix_adapters.options import ForecastOptions
from dynamix_adapters.panel import LongFormat, forecast_long
from dynamix_adapters.pipeline import DynaMixPipeline
from dynamix_adapters.transforms.selection import Selection
from dynamix_adapters.weights import load_model

THREADS = 8
CALLS = 32
ROUNDS = 2
HORIZON = 9


def _series(k: int, length: int, dims: int = 1) -> np.ndarray:
    """(length, dims): sines with a trend and noise, different for every k (so auto chooses differently)."""
    rng = np.random.default_rng(k)
    t = np.arange(length)[:, None]
    period = 6 + 3 * (k % 5) + np.arange(dims)
    return np.sin(2 * np.pi * t / period) + 0.01 * (k % 3) * t + 0.1 * rng.standard_normal((length, dims))


def _calls() -> list[tuple[str, tuple, dict]]:
    """CALLS forecast calls (method, args, kwargs) mixing methods, options, layouts and widths."""
    shapes = [
        lambda k: ("predict", (_series(k, 60 + 7 * k),), {}),
        lambda k: ("predict_quantiles", (_series(k, 80 + k),), {"quantile_levels": (0.1, 0.5, 0.9)}),
        lambda k: ("predict_samples", (_series(k, 50 + 3 * k),), {}),
        lambda k: ("sample_paths", (_series(k, 70),), {"n_samples": 5}),
        lambda k: ("predict", (np.stack([_series(k, 90), _series(k + 1, 90)], axis=1),), {}),  # (T, S, D)
        lambda k: ("predict_quantiles", (_series(k, 75, dims=5),), {"quantile_levels": (0.2, 0.8)}),  # wide frame
        lambda k: ("choose_settings", (_series(k, 64, dims=2),), {}),
        lambda k: ("sample_paths", (_series(k, 40, dims=3),), {"n_samples": 3, "initial_x": [0.1, 0.2, 0.3]}),
    ]
    return [shapes[k % len(shapes)](k) for k in range(CALLS)]


def _run(pipeline: DynaMixPipeline, call) -> list:
    method, args, kwargs = call
    if method == "choose_settings":
        return [choice.record() for choice in pipeline.choose_settings(*args)]
    out = getattr(pipeline, method)(*args, HORIZON, **kwargs)
    return list(out) if isinstance(out, tuple) else [out]


def _assert_same(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert repr(a) == repr(b)  # records hold NaN where nothing validated


@pytest.fixture(scope="module")
def shared_pipeline() -> DynaMixPipeline:
    """The bundled weights with the default options ("auto" everything), seeded for reproducibility."""
    return DynaMixPipeline(load_model(None), ForecastOptions(random_state=0, n_samples=20))


def test_eight_threads_sharing_one_pipeline_get_the_serial_forecasts(shared_pipeline, interleaved_threads):
    calls = _calls()
    serial = [_run(shared_pipeline, call) for call in calls]
    barrier = threading.Barrier(THREADS)

    def run(call):
        barrier.wait()  # eight calls start at once, four times a round (CALLS is a multiple of THREADS)
        return _run(shared_pipeline, call)

    for _ in range(ROUNDS):
        with ThreadPoolExecutor(THREADS) as pool:
            parallel = list(pool.map(run, calls))
        for want, got in zip(serial, parallel, strict=True):
            _assert_same(want, got)


class _Frozen(DynaMixPipeline):
    """A pipeline that fails on any attribute assignment after construction."""

    def __setattr__(self, name, value):
        if getattr(self, "_constructed", False):
            raise AssertionError(f"a forecast call set pipeline.{name}")
        super().__setattr__(name, value)


def test_no_attribute_of_the_pipeline_changes_during_a_forecast_call(shared_pipeline):
    pipeline = _Frozen(shared_pipeline.model, shared_pipeline.options, shared_pipeline.backend)
    pipeline._constructed = True
    before = {name: (id(value), copy.deepcopy(value)) for name, value in vars(pipeline).items() if name != "model"}
    weights = {name: tensor.clone() for name, tensor in pipeline.model.state_dict().items()}
    for call in _calls()[:8]:
        _run(pipeline, call)
    after = {name: (id(value), value) for name, value in vars(pipeline).items() if name != "model"}
    assert after.keys() == before.keys()
    for name, (identity, value) in before.items():
        assert after[name][0] == identity and after[name][1] == value, name
    for name, tensor in pipeline.model.state_dict().items():
        assert tensor.equal(weights[name]), name


def test_settings_reach_the_caller_and_skip_a_second_validation(shared_pipeline, monkeypatch):
    from dynamix_adapters.transforms import selection

    context = [_series(3, 90), _series(4, 70)]
    chosen = shared_pipeline.choose_settings(context)
    assert all(isinstance(choice, Selection) and choice.windows == 3 for choice in chosen)
    expected = shared_pipeline.predict_quantiles(context, HORIZON)
    monkeypatch.setattr(selection, "_validate", lambda *a: pytest.fail("settings were given: nothing to validate"))
    _assert_same(list(expected), list(shared_pipeline.predict_quantiles(context, HORIZON, settings=chosen)))
    with pytest.raises(ValueError, match="chosen for another series"):
        shared_pipeline.predict(context[::-1], HORIZON, settings=chosen)
    with pytest.raises(ValueError, match="list of 2 Selections"):
        shared_pipeline.predict(context, HORIZON, settings=chosen[:1])


def _panel(ids: int, offset: int) -> pd.DataFrame:
    frames = [
        pd.DataFrame({"id": f"s{k}", "time": np.arange(40 + 5 * k), "x": _series(k + offset, 40 + 5 * k)[:, 0]})
        for k in range(ids)
    ]
    return pd.concat(frames, ignore_index=True)


def test_forecast_long_on_dask_threads_sharing_one_pipeline_equals_serial(shared_pipeline):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    columns, levels = LongFormat("id", "time"), (0.1, 0.9)
    panels = [_panel(3 + k % 3, 10 * k) for k in range(8)]
    serial = [forecast_long(shared_pipeline, panel, HORIZON, columns, levels) for panel in panels]
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        # One pipeline object per worker, which both of its threads use for every task.
        (remote,) = client.scatter([shared_pipeline], broadcast=True)
        futures = [
            client.submit(forecast_long, remote, panel, HORIZON, columns, levels, pure=False) for panel in panels
        ]
        parallel = client.gather(futures)
    for want, got in zip(serial, parallel, strict=True):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_a_panel_forecast_in_chunks_equals_one_pass(shared_pipeline, monkeypatch):
    """Chunks of a few trajectories (and mixed lengths, a wide frame split into units) change no value."""
    panel = [_series(k, 60 + 5 * k, dims=5) for k in range(5)]
    whole_paths = shared_pipeline.sample_paths(panel, HORIZON, n_samples=4)
    whole_point = shared_pipeline.predict(panel, HORIZON)
    monkeypatch.setattr(pipeline_module, "CHUNK_TRAJECTORIES", 12)  # 3 units a chunk at 4 paths, 12 for points
    np.testing.assert_array_equal(shared_pipeline.sample_paths(panel, HORIZON, n_samples=4), whole_paths)
    np.testing.assert_array_equal(shared_pipeline.predict(panel, HORIZON), whole_point)

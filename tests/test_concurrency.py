"""Threads and repetition: concurrent predicts equal serial ones, the weight cache is thread-safe, memory stays flat.

The thread tests shrink the interpreter's switch interval so that threads interleave
at almost every bytecode; a race that a normal run hits once in thousands of calls
shows up here within a few rounds.
"""

from __future__ import annotations

import gc
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from dynamix_adapters import weights
from dynamix_adapters.weights import load_model, tiny_test_checkpoint

pytest.importorskip("sktime")
pytest.importorskip("darts")

from darts import TimeSeries

from dynamix_adapters import DynaMixForecaster, DynaMixModel

THREADS = 8
ROUNDS = 6
CYCLES = 1000
WARMUP_CYCLES = 100
# Between cycle 100 and 1,000 a run here grows by under 1 MiB; a leaked model or context per
# cycle (tens of KiB or more each) would add tens of MiB.
RSS_NOISE_BYTES = 8 * 2**20


def in_threads(calls: list) -> list:
    """Run the zero-argument calls on THREADS threads, all released at once; results in call order."""
    barrier = threading.Barrier(min(THREADS, len(calls)))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(run, calls))


def assert_same_frames(serial: list, concurrent: list) -> None:
    for expected, got in zip(serial, concurrent, strict=True):
        pd.testing.assert_frame_equal(pd.DataFrame(got), pd.DataFrame(expected), check_exact=True)


def sktime_calls(forecaster) -> list:
    """Eight different questions to one fitted forecaster: horizons, intervals, quantiles, variances."""
    return [
        lambda: forecaster.predict(fh=[1, 2, 3]),
        lambda: forecaster.predict(fh=list(range(1, 41))),
        lambda: forecaster.predict(fh=[5, 17]),
        lambda: forecaster.predict_interval(fh=[1, 2, 3, 4], coverage=0.9),
        lambda: forecaster.predict_interval(fh=list(range(1, 25)), coverage=[0.5, 0.8]),
        lambda: forecaster.predict_quantiles(fh=[2, 9], alpha=[0.1, 0.5, 0.9]),
        lambda: forecaster.predict_var(fh=list(range(1, 12))),
        lambda: forecaster.predict(fh=[7]),
    ]


def panel() -> pd.DataFrame:
    frames = []
    for i, length in enumerate((40, 65, 52)):
        index = pd.MultiIndex.from_product([[f"s{i}"], pd.RangeIndex(length)], names=["id", "t"])
        frames.append(pd.DataFrame({"v": np.sin(0.25 * (i + 1) * np.arange(length)) + i}, index=index))
    return pd.concat(frames)


@pytest.mark.parametrize("data", ["series", "panel"])
def test_eight_threads_predicting_on_one_sktime_forecaster_give_the_serial_results(interleaved_threads, data):
    y = pd.Series(np.sin(0.3 * np.arange(80)), name="v") if data == "series" else panel()
    forecaster = DynaMixForecaster(model=str(tiny_test_checkpoint()), n_samples=15, random_state=3).fit(y)
    calls = sktime_calls(forecaster)
    serial = [call() for call in calls]
    for _ in range(ROUNDS):
        assert_same_frames(serial, in_threads(calls))


def test_threads_on_the_official_weights_give_the_serial_results(official_path, shared_series):
    """Real weights and longer rollouts, so the compiled kernels of several calls overlap in time."""
    y = pd.DataFrame(shared_series("lorenz63")[:600], columns=["x", "y", "z"])
    forecaster = DynaMixForecaster(model=str(official_path), n_samples=20, random_state=0).fit(y)
    calls = sktime_calls(forecaster)
    serial = [call() for call in calls]
    for _ in range(2):
        assert_same_frames(serial, in_threads(calls))


def test_eight_threads_predicting_on_one_darts_model_give_the_serial_results(interleaved_threads):
    """With per-call seeds, threads reproduce the serial forecasts; unpinned calls each take one stream seed."""
    series = TimeSeries.from_values(np.sin(0.3 * np.arange(80)))
    other = TimeSeries.from_values(np.cos(0.2 * np.arange(50)))
    model = DynaMixModel(model=str(tiny_test_checkpoint()), random_state=5).fit(series)
    calls = [
        lambda: model.predict(3, random_state=1),
        lambda: model.predict(40, random_state=2),
        lambda: model.predict(12, num_samples=10, random_state=3),
        lambda: model.predict(5, series=other, random_state=4),
        lambda: model.predict(8, series=[series, other], num_samples=3, random_state=5),
        lambda: model.predict(20, random_state=9),
        lambda: model.predict(1, random_state=6),
        lambda: model.predict(30, num_samples=2, random_state=7),
    ]

    def values(result):
        return [s.all_values() for s in result] if isinstance(result, list) else [result.all_values()]

    serial = [values(call()) for call in calls]
    for _ in range(ROUNDS):
        for expected, got in zip(serial, in_threads([lambda call=call: values(call()) for call in calls]), strict=True):
            for a, b in zip(expected, got, strict=True):
                np.testing.assert_array_equal(a, b)
    # darts' stream: eight concurrent unpinned sampling calls take the next eight seeds, none twice, none lost.
    # The pinned calls above left it untouched, so a twin built alike names those seeds.
    twin = DynaMixModel(model=str(tiny_test_checkpoint()), random_state=5)
    expected_seeds = {twin._next_sampling_seed() for _ in range(8)}
    forecasts = in_threads([lambda: model.predict(4, num_samples=2).all_values() for _ in range(8)])
    assert model._sampling_calls == 8
    assert len({f.tobytes() for f in forecasts}) == len(expected_seeds) == 8
    assert {f.tobytes() for f in forecasts} == {
        model.predict(4, num_samples=2, random_state=s).all_values().tobytes() for s in expected_seeds
    }
    # Unpinned point forecasts draw nothing from the stream: every thread gets the same one.
    points = in_threads([lambda: model.predict(4).values() for _ in range(8)])
    assert len({f.tobytes() for f in points}) == 1 and model._sampling_calls == 8


def test_the_weight_cache_builds_one_model_for_many_threads(tmp_path, interleaved_threads):
    path = tmp_path / "fresh.safetensors"
    shutil.copy(tiny_test_checkpoint(), path)
    others = [tmp_path / f"other{i}.safetensors" for i in range(4)]
    for i, other in enumerate(others):
        shutil.copy(tiny_test_checkpoint(seed=i + 1), other)
    loaded = in_threads([lambda: load_model(path)] * 12 + [lambda other=other: load_model(other) for other in others])
    assert all(model is loaded[0] for model in loaded[:12])
    assert len({id(model) for model in loaded[12:]}) == len(others)
    assert sum(key[0] == str(path) for key in weights._cache) == 1
    for other, model in zip(others, loaded[12:], strict=True):
        assert model is load_model(other)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_growth(cycle) -> int:
    """RSS after CYCLES calls of cycle(i) minus RSS after the first WARMUP_CYCLES."""
    for i in range(WARMUP_CYCLES):
        cycle(i)
    gc.collect()
    start = resident_bytes()
    for i in range(WARMUP_CYCLES, CYCLES):
        cycle(i)
    gc.collect()
    return resident_bytes() - start


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc")
def test_a_thousand_sktime_fit_predict_cycles_do_not_grow_memory():
    y = pd.Series(np.sin(0.3 * np.arange(40)))
    path = str(tiny_test_checkpoint())
    growth = rss_growth(lambda i: DynaMixForecaster(model=path, random_state=i).fit(y).predict(fh=[1, 2, 3, 4, 5]))
    assert growth < RSS_NOISE_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB over {CYCLES - WARMUP_CYCLES} cycles"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc")
def test_a_thousand_darts_fit_predict_cycles_do_not_grow_memory():
    series = TimeSeries.from_values(np.sin(0.3 * np.arange(40)))
    path = str(tiny_test_checkpoint())
    growth = rss_growth(lambda i: DynaMixModel(model=path, random_state=i).fit(series).predict(5, num_samples=2))
    assert growth < RSS_NOISE_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB over {CYCLES - WARMUP_CYCLES} cycles"

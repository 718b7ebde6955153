"""Forecasts on a real two-process Dask cluster equal the single-process ones, however the ids are partitioned."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")
import dask.dataframe as dd
from distributed import Client, LocalCluster

from dynamix_adapters.cli import main
from dynamix_adapters.distributed import forecast_dask, read_long, write_forecast
from dynamix_adapters.options import ForecastOptions
from dynamix_adapters.panel import LongFormat, ModelSpec, forecast_long
from dynamix_adapters.weights import tiny_test_checkpoint

COLUMNS = LongFormat("id", "time")
LEVELS = (0.1, 0.9)
# Explicit preprocessing: "auto" validates every candidate per series, which these tests do not need.
SPEC = ModelSpec(
    str(tiny_test_checkpoint()),
    ForecastOptions(preprocessing="pos_embedding", nonstationary=False, n_samples=6, random_state=11),
)


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    """60 ids of unequal lengths (30 to 89) and starts: sines, noisy oscillators and random walks."""
    rng = np.random.default_rng(0)
    frames = []
    for k in range(60):
        length = 30 + k
        t = np.arange(length)
        kind = k % 3
        values = (
            np.sin(0.2 * t + k)
            if kind == 0
            else np.sin(0.5 * t) * np.exp(-0.01 * t) + 0.1 * rng.standard_normal(length)
            if kind == 1
            else np.cumsum(rng.standard_normal(length))
        )
        start = pd.Timestamp("2024-01-01") + pd.Timedelta(k, "h")
        frames.append(
            pd.DataFrame({"id": f"s{k:02d}", "time": pd.date_range(start, periods=length, freq="h"), "x": values})
        )
    return pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=1)  # rows in no order


@pytest.fixture(scope="module")
def expected(panel) -> pd.DataFrame:
    return forecast_long(SPEC.pipeline(), panel, 6, COLUMNS, LEVELS)


def by_id(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by id and time; ids as plain strings (Dask stores strings in pyarrow); no error column (none)."""
    assert frame["error"].isna().all()
    frame = frame.drop(columns="error").astype({"id": str})
    return frame.sort_values(["id", "time"]).reset_index(drop=True)


def count_model_builds():
    """On a worker: forget loaded models and count how often the weights are read from now on."""
    from dynamix_adapters import weights

    build = weights._build
    weights._cache.clear()
    weights.builds = 0

    def counted(*args):
        weights.builds += 1
        return build(*args)

    weights._build = counted


def test_two_partitionings_on_two_workers_equal_one_process(client, panel, expected):
    client.run(count_model_builds)
    for partitions in (3, 7):
        data = dd.from_pandas(panel, npartitions=partitions, sort=False)
        result = forecast_dask(SPEC, data, 6, COLUMNS, LEVELS, batch_size=4).compute()
        pd.testing.assert_frame_equal(by_id(result), by_id(expected), check_exact=True)
    builds = client.run(lambda: __import__("dynamix_adapters.weights").weights.builds)
    assert sorted(builds.values()) == [1, 1]  # each worker read the weights once for all 10 partitions


def test_parquet_to_parquet_without_a_shuffle(client, panel, expected, tmp_path):
    source, target = tmp_path / "panel", tmp_path / "forecast"
    source.mkdir()
    ordered = panel.sort_values(["id", "time"])
    for part, ids in enumerate(np.array_split(ordered["id"].unique(), 3)):
        ordered[ordered["id"].isin(ids)].to_parquet(source / f"part.{part}.parquet", index=False)
    assert "id" in read_long(str(source), COLUMNS).columns  # by default the id stays a column, shuffled on
    data = dd.read_parquet(source, index="id", calculate_divisions=True)  # sorted by id, files disjoint
    assert data.known_divisions and data.npartitions == 3
    forecasts = forecast_dask(SPEC, data, 6, COLUMNS, LEVELS)
    write_forecast(forecasts, str(target), client)
    pd.testing.assert_frame_equal(by_id(pd.read_parquet(target)), by_id(expected), check_exact=True)
    write_forecast(forecasts, str(tmp_path / "forecast.csv"), client)
    as_csv = pd.read_csv(tmp_path / "forecast.csv", parse_dates=["time"])
    pd.testing.assert_frame_equal(by_id(as_csv), by_id(expected), check_exact=False, rtol=1e-15)


def test_cli_forecasts_a_parquet_dataset_on_the_cluster(client, panel, expected, tmp_path, capsys):
    source, target = tmp_path / "panel", tmp_path / "forecast"
    dd.from_pandas(panel, npartitions=4, sort=False).to_parquet(source, write_index=False)
    args = ["forecast", source, "--id-col", "id", "--time-col", "time", "--horizon", 6, "--model", SPEC.model]
    args += ["--preprocessing", "pos_embedding", "--nonstationary", "false", "--samples", 6, "--seed", 11]
    code = main([str(a) for a in [*args, "--scheduler", client.scheduler.address, "--output", target]])
    assert code == 0, capsys.readouterr().err
    on_cluster = by_id(pd.read_parquet(target))
    assert len(on_cluster) == 60 * 6
    local = tmp_path / "local.parquet"
    assert main([str(a) for a in [*args, "--output", local]]) == 0
    pd.testing.assert_frame_equal(on_cluster, by_id(pd.read_parquet(local)), check_exact=True)


def test_sktime_panel_under_dask_backend_equals_serial(client):
    from dynamix_adapters.sktime_forecaster import DynaMixForecaster

    # More series than one chunk (DEFAULT_BATCH_SIZE), of unequal lengths.
    y = pd.concat(
        {i: pd.DataFrame({"x": np.sin(0.3 * np.arange(30 + i % 7) + i)}) for i in range(600)}, names=["id", "t"]
    )
    forecaster = DynaMixForecaster(model=SPEC.model, preprocessing="pos_embedding", nonstationary=False, n_samples=5)
    forecaster.set_params(random_state=3).fit(y)
    serial = forecaster.predict(fh=[1, 2]), forecaster.predict_quantiles(fh=[1, 2], alpha=[0.1, 0.9])
    forecaster.set_config(**{"backend:parallel": "dask", "backend:parallel:params": {}})
    parallel = forecaster.predict(fh=[1, 2]), forecaster.predict_quantiles(fh=[1, 2], alpha=[0.1, 0.9])
    for one, other in zip(serial, parallel, strict=True):
        pd.testing.assert_frame_equal(one, other, check_exact=True)


def test_bad_input_on_dask(client, panel):
    with pytest.raises(ValueError, match="no column 'id'"):
        forecast_dask(SPEC, dd.from_pandas(panel.drop(columns="id"), npartitions=2), 3, COLUMNS)
    duplicated = pd.concat([panel, panel.iloc[:1]])
    with pytest.raises(ValueError, match="duplicate time stamps"):
        forecast_dask(SPEC, dd.from_pandas(duplicated, npartitions=2), 3, COLUMNS).compute()
    with pytest.raises(TypeError, match="dask DataFrame"):
        forecast_dask(SPEC, panel, 3, COLUMNS)

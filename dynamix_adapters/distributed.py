"""Long-format panels on Dask: every id in one partition, one batched ``forecast_long`` per partition.

::

    read_long(url)            Parquet dataset or CSV, any fsspec URL       -> dask DataFrame
      -> forecast_dask        shuffle by id, map_partitions(forecast_long) -> dask DataFrame (lazy)
      -> write_forecast(url)  Parquet dataset or CSV, on a Client or the default scheduler

The task graph carries a ``ModelSpec`` (the weights' name or path and the options), never the
model: each worker process loads the weights on its first partition through ``load_model``'s
per-process cache and reuses them for every later one. Per-series seeding makes each id's
forecast bit-identical however the ids fall into partitions and workers. Needs the
``distributed`` extra: ``pip install 'dynamix-adapters[distributed]'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import dask.dataframe as dd
import pandas as pd

from .panel import DEFAULT_BATCH_SIZE, LongFormat, ModelSpec, forecast_long, forecast_schema


def read_long(source: str, columns: LongFormat) -> dd.DataFrame:
    """A long-format Parquet dataset (directory, file or glob) or CSV file(s) at any URL Dask reads.

    The id comes back as a column, so ``forecast_dask`` shuffles on it. For a Parquet dataset
    sorted by id whose files hold disjoint id ranges, ``dd.read_parquet(source, index=id_col,
    calculate_divisions=True)`` instead skips the shuffle; that is opt-in because Dask takes the
    divisions from the files' statistics and cannot see an id that straddles two files. Date
    strings in the time column of a CSV are parsed.
    """
    data = dd.read_csv(source) if str(source).lower().endswith(".csv") else dd.read_parquet(source)
    time = data[columns.time_col]
    if not (pd.api.types.is_datetime64_any_dtype(time.dtype) or pd.api.types.is_integer_dtype(time.dtype)):
        data = data.assign(**{columns.time_col: dd.to_datetime(time, format="mixed")})
    return data


def forecast_dask(
    spec: ModelSpec,
    data: dd.DataFrame,
    horizon: int,
    columns: LongFormat,
    quantile_levels: Sequence[float] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dd.DataFrame:
    """``forecast_long`` on every partition of a Dask DataFrame, after putting each id into one partition.

    Parameters
    ----------
    spec : ModelSpec
        The weights (name or path, readable on every worker) and options. A ``random_state`` of
        None is fixed to one fresh seed here, so all partitions of this job share it.
    data : dask.dataframe.DataFrame
        Long format: the id as a column (shuffled on), or as the index with known divisions
        that keep every id in one partition (as after ``set_index``; then no shuffle).
    horizon, columns, quantile_levels, batch_size
        As in ``forecast_long``; ``batch_size`` bounds the ids per pipeline call within a partition.

    Returns
    -------
    dask.dataframe.DataFrame
        Lazy, with ``forecast_long``'s columns; compute it, or write it with ``write_forecast``
        or ``to_parquet``. Partitions hold whole ids, sorted within each partition.

    Examples
    --------
    >>> import dask.dataframe as dd
    >>> import numpy as np
    >>> from dynamix_adapters.options import ForecastOptions
    >>> from dynamix_adapters.weights import tiny_test_checkpoint
    >>> t = np.arange(50)
    >>> frame = pd.DataFrame({"id": np.repeat([1, 2, 3], 50), "t": np.tile(t, 3), "x": np.sin(np.tile(t, 3))})
    >>> spec = ModelSpec(str(tiny_test_checkpoint()), ForecastOptions(random_state=0))
    >>> result = forecast_dask(spec, dd.from_pandas(frame, npartitions=2), 4, LongFormat("id", "t"))
    >>> result.compute(scheduler="sync").sort_values(["id", "t"]).shape
    (12, 4)
    """
    if not isinstance(data, dd.DataFrame):
        raise TypeError(f"data must be a dask DataFrame, got {type(data).__name__}; use forecast_long for pandas.")
    # Indexed by id with known divisions, every id already lies in one partition.
    whole_ids = data.index.name == columns.id_col and data.known_divisions
    if data.index.name == columns.id_col:
        data = data.reset_index()
    meta = forecast_schema(data._meta, columns, quantile_levels)  # checks the columns before any work
    if not whole_ids:
        data = data.shuffle(on=columns.id_col)
    return data.map_partitions(
        _forecast_partition,
        spec.seeded(),
        horizon,
        columns,
        tuple(quantile_levels),
        batch_size,
        meta=meta,
        enforce_metadata=False,
        align_dataframes=False,
    )


def _forecast_partition(partition, spec, horizon, columns, quantile_levels, batch_size) -> pd.DataFrame:
    return forecast_long(spec.pipeline(), partition, horizon, columns, quantile_levels, batch_size)


def write_forecast(forecasts: dd.DataFrame, target: str, client=None, progress: bool = False) -> None:
    """Compute ``forecasts`` and write them: a CSV file if ``target`` ends in .csv, else a Parquet dataset.

    Parameters
    ----------
    forecasts : dask.dataframe.DataFrame
        From ``forecast_dask``.
    target : str
        A path or fsspec URL (e.g. ``s3://bucket/forecasts``) that the workers can write.
    client : distributed.Client, optional
        Where to compute; None uses Dask's default scheduler (the active Client, if any).
    progress : bool
        Show a progress bar: Dask's ``progress`` on a Client, its ``ProgressBar`` otherwise.
    """
    if str(target).lower().endswith(".csv"):
        write = forecasts.to_csv(target, single_file=True, index=False, compute=False)
    else:
        write = forecasts.to_parquet(target, write_index=False, compute=False)
    if client is not None:
        futures = client.compute(write)  # one future (Parquet) or one per file (CSV)
        if progress:
            from distributed import progress as show_progress

            show_progress(futures)
        client.gather(futures)
        return
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            dask.compute(write)
    else:
        dask.compute(write)

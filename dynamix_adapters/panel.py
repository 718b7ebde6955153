"""Long-format panels: forecast a frame of many series (an id, a time and value columns) in batched calls.

A long-format frame holds one row per (id, time) with one or more value columns; each id is
one series, of any length. ``forecast_long`` sorts the frame by id and time, forecasts the ids
``batch_size`` at a time (one pipeline call per batch, so memory stays bounded by the batch,
not the panel), and returns the forecasts in the same long format::

    id, time, x, x_q0.1, x_q0.9, ..., error

with H rows per id at the H time stamps that continue its own spacing. An id that cannot be
forecast (too short for the preprocessing, irregular time steps, a diverging rollout) gets one
row instead, with the time and values missing and the reason in ``error``; the other ids are
unaffected, because a series' forecast never depends on the rest of its batch. Problems of the
frame as a whole (a missing id or time column, non-numeric values, missing values, duplicate
time stamps within an id) raise, naming the problem and the fix.

Per-series seeding makes the result independent of the batch size and of how the ids are
split into frames, so ``distributed`` calls this on every partition of a Dask DataFrame. darts
users forecast a list of ``TimeSeries`` the same way: ``pipeline.predict([s.values() for s in
series], horizon)``, in batches of any size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import pandas as pd

from .options import ForecastOptions
from .pipeline import DynaMixPipeline
from .rollout import seed_entropy
from .weights import load_model

# Series per pipeline call: large enough that the rollout's per-call overhead is negligible, small enough that a
# call with 100 sample paths of horizon 24 holds ~10 MB of paths.
DEFAULT_BATCH_SIZE = 512
ERROR_COLUMN = "error"
SHOWN_IDS = 5


@dataclass(frozen=True)
class LongFormat:
    """Which columns of a long-format frame hold the series id, the time stamp and the values.

    Parameters
    ----------
    id_col : str
        One series per distinct value.
    time_col : str
        Datetimes (naive or time-zone aware) or integers, equally spaced within each id.
    value_cols : tuple of str, optional
        The columns to forecast, jointly as one multivariate series per id; None takes every
        numeric column besides ``id_col`` and ``time_col``.
    """

    id_col: str
    time_col: str
    value_cols: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.value_cols is not None:
            object.__setattr__(self, "value_cols", tuple(self.value_cols))

    def checked_values(self, frame: pd.DataFrame) -> list[str]:
        """The value columns of ``frame``, after checking that every named column exists and holds numbers."""
        missing = [c for c in (self.id_col, self.time_col, *(self.value_cols or ())) if c not in frame.columns]
        if missing:
            raise ValueError(
                f"The frame has no column {missing[0]!r} (columns: {list(frame.columns)}); "
                "name the id, time and value columns with LongFormat(id_col=..., time_col=..., value_cols=...)."
            )
        keys = (self.id_col, self.time_col)
        chosen = self.value_cols or [
            c for c in frame.columns if c not in keys and pd.api.types.is_numeric_dtype(frame[c])
        ]
        if not chosen:
            raise ValueError(f"The frame has no numeric value column besides {list(keys)}; add one or name it.")
        for column in chosen:
            dtype = frame[column].dtype
            if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_complex_dtype(dtype):
                raise TypeError(
                    f"Value column {column!r} must be real numbers, got dtype {dtype}; convert it with "
                    "pd.to_numeric or leave it out of value_cols."
                )
        time_dtype = frame[self.time_col].dtype
        if not (pd.api.types.is_datetime64_any_dtype(time_dtype) or pd.api.types.is_integer_dtype(time_dtype)):
            raise TypeError(
                f"Time column {self.time_col!r} must hold datetimes or integers, got dtype {time_dtype}; "
                "parse date strings with pd.to_datetime first."
            )
        return list(chosen)


@dataclass(frozen=True)
class ModelSpec:
    """A pipeline by name: what a worker process needs to load it, small enough to ship in every task.

    The weights are loaded where ``pipeline()`` is called, through ``load_model``'s per-process
    cache, so a worker reads them once however many tasks it runs.

    Parameters
    ----------
    model : str or None
        A registered weight set or a weights path that every worker can read; None is the default.
    options : ForecastOptions
        Forecasting options.
    backend : str
        Rollout backend, as in ``DynaMixPipeline``.
    device : str
        torch device on the worker.
    """

    model: str | None = None
    options: ForecastOptions = field(default_factory=ForecastOptions)
    backend: str = "auto"
    device: str = "cpu"

    def __post_init__(self):
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))

    def pipeline(self) -> DynaMixPipeline:
        return DynaMixPipeline(load_model(self.model, self.device), self.options, self.backend)

    def seeded(self) -> ModelSpec:
        """The same spec with ``random_state`` fixed to one integer, so every task of a job draws from the same seed.

        None (fresh randomness) and a numpy Generator become one draw made here, once per job.
        """
        seed = seed_entropy(self.options.random_state)
        return ModelSpec(self.model, self.options.replace(random_state=seed), self.backend, self.device)


def long_series(frame: pd.DataFrame, columns: LongFormat) -> tuple[pd.Index, list[np.ndarray]]:
    """The ids of a long frame (sorted) and each id's values (T_id, D) in time order, checked as for a forecast."""
    panel = _Panel.of(frame, columns)
    return panel.ids, np.split(panel.values, panel.offsets[1:-1])


def forecast_long(
    pipeline: DynaMixPipeline,
    frame: pd.DataFrame,
    horizon: int,
    columns: LongFormat,
    quantile_levels: Sequence[float] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> pd.DataFrame:
    """Forecast every id of a long-format frame; the forecasts in long format.

    Parameters
    ----------
    pipeline : DynaMixPipeline
        The model and its options.
    frame : pandas.DataFrame
        One row per (id, time); ids may have different lengths and start times.
    horizon : int
        Steps to forecast per id.
    columns : LongFormat
        The id, time and value columns.
    quantile_levels : sequence of float
        Adds a column ``<value>_q<level>`` per level, from ``options.n_samples`` sample paths.
    batch_size : int
        Ids per pipeline call.

    Returns
    -------
    pandas.DataFrame
        ``id_col``, ``time_col``, per value column the point forecast (named like it) and its
        quantile columns, then ``error``: H rows per forecast id (``error`` missing), sorted by id
        and time, and one row per id that could not be forecast (time and values missing). The
        time column keeps a datetime dtype; integer times become nullable ``Int64``.

    Raises
    ------
    ValueError
        A missing column, missing values, or duplicate time stamps within an id.
    TypeError
        Non-numeric values, or a time column that holds neither datetimes nor integers.

    Examples
    --------
    >>> from dynamix_adapters.weights import tiny_test_checkpoint
    >>> pipeline = DynaMixPipeline.from_pretrained(tiny_test_checkpoint(), n_samples=10, random_state=0)
    >>> t = np.arange(60)
    >>> frame = pd.DataFrame({"id": ["a"] * 60 + ["b"] * 40, "step": np.r_[t, t[:40]], "x": np.sin(np.r_[t, t[:40]])})
    >>> result = forecast_long(pipeline, frame, 3, LongFormat("id", "step"), quantile_levels=(0.1, 0.9))
    >>> list(result.columns)
    ['id', 'step', 'x', 'x_q0.1', 'x_q0.9', 'error']
    >>> result["step"].tolist()
    [60, 61, 62, 40, 41, 42]
    """
    schema = forecast_schema(frame, columns, quantile_levels)
    batches = list(forecast_long_batches(pipeline, frame, horizon, columns, quantile_levels, batch_size))
    return pd.concat([schema, *batches], ignore_index=True) if batches else schema


def forecast_long_batches(
    pipeline: DynaMixPipeline,
    frame: pd.DataFrame,
    horizon: int,
    columns: LongFormat,
    quantile_levels: Sequence[float] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[pd.DataFrame]:
    """``forecast_long`` one batch at a time: a forecast frame per ``batch_size`` ids, e.g. to show progress."""
    schema = forecast_schema(frame, columns, quantile_levels)
    levels = [_quantile_level(q) for q in quantile_levels]
    horizon, batch_size = _positive_int(horizon, "horizon"), _positive_int(batch_size, "batch_size")
    panel = _Panel.of(frame, columns)
    pipeline.check_lengths([], panel.values.shape[1], [])  # context_length against the preprocessing, before any work
    for first in range(0, panel.n_ids, batch_size):
        batch = range(first, min(first + batch_size, panel.n_ids))
        yield _forecast_batch(pipeline, panel, batch, horizon, levels, schema)


def forecast_schema(frame: pd.DataFrame, columns: LongFormat, quantile_levels: Sequence[float] = ()) -> pd.DataFrame:
    """The empty forecast frame, with the columns and dtypes ``forecast_long`` returns for ``frame`` (Dask's meta)."""
    values = columns.checked_values(frame)
    levels = [_quantile_level(q) for q in quantile_levels]
    time_dtype = frame[columns.time_col].dtype
    if pd.api.types.is_datetime64_any_dtype(time_dtype):
        tz = getattr(time_dtype, "tz", None)
        time_dtype = pd.DatetimeTZDtype("ns", tz) if tz is not None else np.dtype("datetime64[ns]")
    else:
        time_dtype = pd.Int64Dtype()
    names = [columns.id_col, columns.time_col]
    for column in values:
        names += [column, *(f"{column}_q{q:g}" for q in levels)]
    names.append(ERROR_COLUMN)
    if len(set(names)) < len(names):
        clash = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"The forecast would have two columns named {clash!r}; rename that input column.")
    dtypes = {columns.id_col: frame[columns.id_col].dtype, columns.time_col: time_dtype, ERROR_COLUMN: object}
    return pd.DataFrame({name: pd.Series(dtype=dtypes.get(name, np.float64)) for name in names})


@dataclass(frozen=True)
class _Panel:
    """A long frame sorted by id and time, as flat arrays: id n holds rows offsets[n]:offsets[n + 1]."""

    ids: pd.Index  # (n_ids,) in sorted order
    offsets: np.ndarray  # (n_ids + 1,)
    values: np.ndarray  # (rows, D) float64
    stamps: np.ndarray  # (rows,) int64: the integer times, or nanoseconds since the epoch (UTC)
    tz: object  # the time zone of datetime stamps, or None
    datetime: bool
    value_cols: list[str]
    time_col: str

    @classmethod
    def of(cls, frame: pd.DataFrame, columns: LongFormat) -> _Panel:
        value_cols = columns.checked_values(frame)
        id_values, time_values = frame[columns.id_col], frame[columns.time_col]
        codes, ids = pd.factorize(id_values, sort=True)
        if (codes < 0).any():
            raise ValueError(
                f"Id column {columns.id_col!r} has {int((codes < 0).sum())} missing values; drop or fill those rows."
            )
        datetime = pd.api.types.is_datetime64_any_dtype(time_values.dtype)
        tz = getattr(time_values.dtype, "tz", None)
        if time_values.isna().any():
            raise ValueError(
                f"Time column {columns.time_col!r} has missing values (ids {_shown(ids[codes[time_values.isna()]])}); "
                "drop those rows or fill them."
            )
        stamps = pd.DatetimeIndex(time_values).as_unit("ns").asi8 if datetime else time_values.to_numpy(dtype=np.int64)
        order = np.lexsort((stamps, codes))
        codes, stamps = codes[order], stamps[order]
        values = np.column_stack(
            [frame[c].to_numpy(dtype=np.float64, na_value=np.nan)[order] for c in value_cols]
        ).reshape(len(frame), len(value_cols))
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            raise ValueError(
                f"Value columns {value_cols} hold missing or infinite values (ids {_shown(ids[codes[bad]])}); "
                "fill or drop them before forecasting."
            )
        duplicated = np.flatnonzero((codes[1:] == codes[:-1]) & (stamps[1:] == stamps[:-1]))
        if len(duplicated):
            raise ValueError(
                f"Ids {_shown(ids[codes[duplicated]])} have duplicate time stamps in {columns.time_col!r}; keep one "
                f"row per id and time, e.g. frame.groupby([{columns.id_col!r}, {columns.time_col!r}]).mean()."
            )
        offsets = np.searchsorted(codes, np.arange(len(ids) + 1))
        return cls(ids, offsets, values, stamps, tz, datetime, value_cols, columns.time_col)

    @property
    def n_ids(self) -> int:
        return len(self.ids)

    def future_stamps(self, n: int, horizon: int) -> np.ndarray:
        """(H,) int64 stamps after id n's last one, continuing its spacing; a ValueError when it has none."""
        stamps = self.stamps[self.offsets[n] : self.offsets[n + 1]]
        steps = np.diff(stamps)
        if len(steps) and steps.min() == steps.max():
            return stamps[-1] + steps[0] * np.arange(1, horizon + 1)
        # Calendar frequencies (months, or days across a daylight-saving change) vary in nanoseconds.
        if self.datetime and len(stamps) >= 3:
            index = pd.DatetimeIndex(stamps.view("M8[ns]"))
            if self.tz is not None:
                index = index.tz_localize("UTC").tz_convert(self.tz)
            freq = pd.infer_freq(index)
            if freq is not None:
                return pd.date_range(index[-1], periods=horizon + 1, freq=freq)[1:].as_unit("ns").asi8
        if not len(steps):
            raise ValueError("a single observation has no time step to continue")
        low, high = (steps.min(), steps.max())
        if self.datetime:
            low, high = pd.Timedelta(int(low)), pd.Timedelta(int(high))
        raise ValueError(
            f"its time steps in {self.time_col!r} are irregular (from {low} to {high}), but DynaMix forecasts "
            "equally spaced observations; resample it to a regular grid"
        )

    def times(self, stamps: np.ndarray, dtype) -> pd.Series:
        """int64 stamps (with missing ones at the int64 minimum, which is NaT) as the forecast's time column."""
        missing = stamps == np.iinfo(np.int64).min
        if not self.datetime:
            return pd.Series(pd.arrays.IntegerArray(stamps, missing), dtype=dtype)
        index = pd.DatetimeIndex(stamps.view("M8[ns]"))
        return pd.Series(index.tz_localize("UTC").tz_convert(self.tz) if self.tz is not None else index)


def _forecast_batch(
    pipeline: DynaMixPipeline, panel: _Panel, batch: range, horizon: int, levels: list[float], schema: pd.DataFrame
) -> pd.DataFrame:
    """The forecast rows of ids ``batch``: H per forecast id, one per id that failed."""
    dims = panel.values.shape[1]
    series, names, futures, errors = {}, {}, {}, {}
    for n in batch:
        ident = panel.ids[n]
        name = f"id {(ident.item() if isinstance(ident, np.generic) else ident)!r}"  # id 7, not id np.int64(7)
        rows = panel.values[panel.offsets[n] : panel.offsets[n + 1]]
        try:
            pipeline.check_lengths([len(rows)], dims, [name])  # its message names the id
        except ValueError as err:
            errors[n] = str(err)
            continue
        try:
            futures[n] = panel.future_stamps(n, horizon)
        except ValueError as err:
            errors[n] = f"{name}: {err}."
            continue
        series[n], names[n] = rows, name
    forecasts = _predict(pipeline, series, names, horizon, levels, errors)  # n -> (1 + Q, H, D)
    for n in [n for n, values in forecasts.items() if not np.isfinite(values).all()]:
        del forecasts[n]  # on_divergence="nan" returns NaN for a diverged series instead of raising
        errors[n] = f"{names[n]}: the forecast diverged (on_divergence='nan' returned NaN)."

    # One row per failed id, H rows per forecast id, in id order: (R,) stamps and (R, (1 + Q) * D) values.
    counts = np.array([horizon if n in forecasts else 1 for n in batch])
    starts = np.concatenate([[0], np.cumsum(counts)])
    stamps = np.full(starts[-1], np.iinfo(np.int64).min)
    values = np.full((starts[-1], (1 + len(levels)) * dims), np.nan)
    messages = np.full(starts[-1], None, dtype=object)
    for position, n in enumerate(batch):
        rows = slice(starts[position], starts[position + 1])
        if n in forecasts:
            stamps[rows] = futures[n]
            # (1 + Q, H, D) -> (H, D, 1 + Q): per value column its point forecast, then its quantiles.
            values[rows] = forecasts[n].transpose(1, 2, 0).reshape(horizon, -1)
        else:
            messages[rows] = errors[n]
    ids = panel.ids.take(np.repeat(np.asarray(batch), counts))
    id_col, time_col = schema.columns[:2]
    result = pd.DataFrame(values, columns=schema.columns[2:-1])
    result.insert(0, id_col, pd.Series(ids, dtype=schema[id_col].dtype))
    result.insert(1, time_col, panel.times(stamps, schema[time_col].dtype))
    result[ERROR_COLUMN] = messages
    return result


def _predict(pipeline, series: dict, names: dict, horizon: int, levels: list[float], errors: dict) -> dict:
    """Forecasts n -> (1 + Q, H, D) (point, then quantiles) of ``series``; failures go to ``errors``.

    One call for the whole batch; if it fails, one call per series, so a single diverging or
    unrepresentable series becomes an error row instead of failing its batch. Per-series
    seeding makes both give the same numbers.
    """
    if not series:
        return {}
    keys = list(series)
    try:
        stacked = _predict_stacked(pipeline, [series[n] for n in keys], [names[n] for n in keys], horizon, levels)
        return {n: stacked[:, :, s] for s, n in enumerate(keys)}
    except ValueError:
        if len(keys) == 1:
            raise
    forecasts = {}
    for n in keys:
        try:
            forecasts |= _predict(pipeline, {n: series[n]}, names, horizon, levels, errors)
        except ValueError as err:
            errors[n] = str(err)
    return forecasts


def _predict_stacked(pipeline, series: list[np.ndarray], names: list[str], horizon: int, levels) -> np.ndarray:
    """(1 + Q, H, S, D): the point forecast and the quantiles of each series, from one choice of settings."""
    chosen = pipeline.choose_settings(series)
    point = pipeline.predict(series, horizon, names=names, settings=chosen)[None]  # (1, H, S, D)
    if not levels:
        return point
    quantiles, _ = pipeline.predict_quantiles(series, horizon, levels, names=names, settings=chosen)  # (Q, H, S, D)
    return np.concatenate([point, quantiles])


def forecast_chunks_parallel(
    spec: ModelSpec,
    method: str,
    contexts: list[np.ndarray],
    horizon: int,
    names: list[str],
    parallel: dict,
    settings: list | None = None,
) -> np.ndarray:
    """``spec.pipeline().<method>(contexts, horizon)``, in chunks through sktime's ``parallelize``.

    Parameters
    ----------
    spec : ModelSpec
        The pipeline to load where each chunk runs; its seed is fixed here once, so the result
        equals one serial call whatever the backend and however the chunks are split.
    method : str
        "predict" (H, S, D) or "predict_samples" (P, H, S, D).
    contexts, names : list
        The (T_s, D) series and their labels for errors.
    horizon : int
        Steps to forecast.
    parallel : dict
        sktime's ``backend`` ("dask", "loky", "ray", ...) and ``backend_params``.
    settings : list of Selection, optional
        What ``choose_settings`` returned for ``contexts``; they travel with their chunks, so
        no worker validates again. None: each chunk chooses its own.

    Returns
    -------
    numpy.ndarray
        What ``method`` returns for all series, the series on axis -2.
    """
    from sktime.utils.parallel import parallelize

    size = DEFAULT_BATCH_SIZE
    chunks = [
        (contexts[a : a + size], names[a : a + size], None if settings is None else settings[a : a + size])
        for a in range(0, len(contexts), size)
    ]
    meta = {"spec": spec.seeded(), "method": method, "horizon": horizon}
    return np.concatenate(list(parallelize(_forecast_chunk, chunks, meta=meta, **parallel)), axis=-2)


def _forecast_chunk(chunk: tuple[list[np.ndarray], list[str], list | None], meta: dict) -> np.ndarray:
    contexts, names, settings = chunk
    return getattr(meta["spec"].pipeline(), meta["method"])(contexts, meta["horizon"], names=names, settings=settings)


def _quantile_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, Real) or not 0 <= level <= 1:
        raise ValueError(f"Quantile levels must be numbers in [0, 1], got {level!r}.")
    return float(level)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def _shown(ids) -> str:
    """The first few distinct ids, and how many more there are."""
    unique = list(dict.fromkeys(ids))
    more = f" and {len(unique) - SHOWN_IDS} more" if len(unique) > SHOWN_IDS else ""
    return ", ".join(repr(i) for i in unique[:SHOWN_IDS]) + more

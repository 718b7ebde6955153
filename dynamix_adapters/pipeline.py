"""DynaMixPipeline: a loaded DynaMix model plus its forecasting options.

One forecast call flows one way::

    context (T, N) | (T, S, N) | list of (T_s, N)
      -> input transform   series list, checked and trimmed to ``context_length``
      -> select            "auto" options: each series' setting by in-context validation (selection.py)
      -> encode            one BatchEncoding of all series (trend, scaler, embedding or split), as arrays
      -> RolloutBatch      left-padded contexts, starts, per-trajectory noise streams
      -> rollout           (H, B, N) in model space, on the numba or torch backend
      -> decode            the BatchEncoding inverts each series' own transforms, for all at once
      -> calibrate         validated series: sample paths spread to the validation error (calibration.py)
      -> output transform  (P, H, [S,] N) in the caller's layout

Random draws come from streams keyed by (seed, series content, path), so a series gets
the same forecast whatever else is in the batch, in any partition or process.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch

from .engine import (
    DivergenceError,
    DivergenceWarning,
    RolloutBatch,
    check_backend,
    check_divergence,
    diverged_steps,
    rollout,
)
from .model import DynaMix
from .noise import content_key, seed_entropy
from .options import AUTO, ForecastOptions
from .selection import Selection, select
from .transforms.encoding import BatchEncoding
from .transforms.preprocessing import EMBEDDINGS, min_context_length
from .weights import load_model

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SeriesInput:
    """The context as a list of (T_s, D) float64 arrays, and how the caller shaped it."""

    series: list[np.ndarray]
    layout: str  # "single" (T, D), "batch" (T, S, D) or "list"

    @classmethod
    def of(cls, context) -> SeriesInput:
        if isinstance(context, (list, tuple)):
            if not context:
                raise ValueError("context is an empty list; pass at least one series.")
            series = [as_float_array(c, f"context[{i}]") for i, c in enumerate(context)]
            for i, s in enumerate(series):
                if s.ndim != 2:
                    raise ValueError(f"context[{i}] must be 2-D (T, N_data), got shape {s.shape}.")
            if len({s.shape[1] for s in series}) > 1:
                raise ValueError(f"All series need the same number of dims, got {[s.shape[1] for s in series]}.")
            return cls(series, "list")
        array = as_float_array(context, "context")
        if array.ndim == 2:
            return cls([array], "single")
        if array.ndim == 3:
            return cls([np.ascontiguousarray(array[:, s, :]) for s in range(array.shape[1])], "batch")
        raise ValueError(
            f"context must have 2 dims (T_C, N_data) or 3 dims (T_C, S, N_data), got shape {array.shape}. "
            "Reshape a 1-D series with x[:, None]."
        )

    def output(self, values: np.ndarray) -> np.ndarray:
        """values (..., H, S, D) -> the caller's layout: (..., H, D) for a single series."""
        return values[..., 0, :] if self.layout == "single" else values


class DynaMixPipeline:
    """Zero-shot DynaMix forecasts: a loaded model, its ``ForecastOptions`` and a rollout backend.

    Parameters
    ----------
    model : DynaMix
        A loaded model; see :meth:`from_pretrained` to load one by name or path.
    options : ForecastOptions, optional
        Forecasting options; defaults to ``ForecastOptions()``.
    backend : str
        Rollout implementation: "auto" or a name from ``engine.BACKENDS``.

    Examples
    --------
    >>> import numpy as np
    >>> from dynamix_adapters.model import Architecture, DynaMix
    >>> pipeline = DynaMixPipeline(DynaMix(Architecture(M=8, N=3, J=2, P=1)), ForecastOptions(random_state=0))
    >>> context = np.sin(np.linspace(0, 20, 200))[:, None]
    >>> pipeline.predict(context, 5).shape
    (5, 1)
    >>> quantiles, mean = pipeline.predict_quantiles(context, 5, quantile_levels=(0.1, 0.9))
    >>> quantiles.shape, mean.shape
    ((2, 5, 1), (5, 1))
    """

    def __init__(self, model: DynaMix, options: ForecastOptions | None = None, backend: str = "auto"):
        self.model = model
        self.options = options or ForecastOptions()
        self.backend = check_backend(backend)
        # What "auto" chose per series in the latest forecast (selection.Selection.record() reads it).
        self.selections: list[Selection] = []

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike | None = None, device: str = "cpu", backend: str = "auto", **options
    ) -> DynaMixPipeline:
        """Load weights (a registered name, a weights file, or None for the default) once per process.

        ``options`` are :class:`ForecastOptions` fields, validated before any weights are read.
        """
        checked = ForecastOptions(**options)
        return cls(load_model(name_or_path, device), checked, backend)

    def with_options(self, **changes) -> DynaMixPipeline:
        """The same model with some options changed (cheap: the model is shared, not copied)."""
        return type(self)(self.model, self.options.replace(**changes), self.backend)

    def min_context_length(self, n_dims: int) -> int:
        """Shortest history these options can forecast a series with ``n_dims`` dims from."""
        # "auto" falls back to the default embedding on contexts too short to validate.
        preprocessing = EMBEDDINGS[0] if self.options.preprocessing == AUTO else self.options.preprocessing
        return min_context_length(preprocessing, n_dims, self.model.arch.N)

    def check_lengths(self, lengths: Sequence[int], n_dims: int, names: Sequence[str]) -> None:
        """Raise a ValueError naming the first series too short to forecast with these options."""
        needed, preprocessing = self.min_context_length(n_dims), self.options.preprocessing
        context_length = self.options.context_length
        if context_length is not None and context_length < needed:
            raise ValueError(
                f"context_length={context_length} is shorter than the {needed} observations that "
                f"preprocessing={preprocessing!r} needs for {n_dims}-dim series; "
                f"raise context_length to at least {needed}."
            )
        for length, name in zip(lengths, names, strict=True):
            if length < needed:
                alternative = ", or preprocessing='pos_embedding', which needs 2" if needed > 2 else ""
                raise ValueError(
                    f"DynaMix needs at least {needed} observations per series with "
                    f"preprocessing={preprocessing!r}, but {name} has {length}. "
                    f"Pass a longer history{alternative}."
                )

    def choose_settings(self, context) -> list[dict]:
        """What "auto" picks for each series of ``context``, without forecasting (any horizon gets the same).

        One ``Selection.record()`` per series (preprocessing, nonstationary, validation windows
        and MASE); with explicit options, those options. Also kept in ``self.selections``.
        """
        series = [self.options.trim(s) for s in SeriesInput.of(context).series]
        entropy = seed_entropy(self.options.random_state)
        self.selections = select(self, series, entropy, False)
        return [choice.record() for choice in self.selections]

    def sample_paths(self, context, horizon: int, n_samples: int | None = None, *, names=None, initial_x=None):
        """Sample paths (n_samples, H, [S,] D) in data scale; ``n_samples`` defaults to the options'.

        ``names`` label the series in errors (default "series 0", ...). ``initial_x`` starts
        the rollout there instead of at the last context frame: (k,) or (S, k), k <= D, in
        data scale; missing model dims come from the context frame nearest to it.
        """
        inputs = SeriesInput.of(context)
        n_paths = positive_int(self.options.n_samples if n_samples is None else n_samples, "n_samples")
        paths = self._forecast(inputs.series, horizon, n_paths, names, initial_x)
        return inputs.output(paths)

    def predict(self, context, horizon: int, *, names=None) -> np.ndarray:
        """Point forecast (H, [S,] D), as ``options.point_forecast`` says."""
        inputs = SeriesInput.of(context)
        if self.options.point_forecast == "path":
            return inputs.output(self._forecast(inputs.series, horizon, 1, names, None)[0])
        samples = self._samples(inputs.series, horizon, names)
        point = np.median(samples, axis=0) if self.options.point_forecast == "median" else samples.mean(axis=0)
        return inputs.output(point)

    def predict_quantiles(self, context, horizon: int, quantile_levels=DEFAULT_QUANTILES, *, names=None):
        """Quantiles (Q, H, [S,] D) and mean (H, [S,] D) over ``options.n_samples`` sample paths."""
        inputs = SeriesInput.of(context)
        samples = self._samples(inputs.series, horizon, names)
        quantiles = np.quantile(samples, list(quantile_levels), axis=0)
        return inputs.output(quantiles), inputs.output(samples.mean(axis=0))

    def predict_samples(self, context, horizon: int, *, names=None) -> np.ndarray:
        """The ``options.n_samples`` sample paths behind quantiles, variances and median/mean point forecasts.

        With ``point_forecast="path"`` path 0 of the same draw is the point forecast, so these
        are paths 1..n_samples: the point forecast is never one of its own samples.
        """
        inputs = SeriesInput.of(context)
        return inputs.output(self._samples(inputs.series, horizon, names))

    def _samples(self, series: list[np.ndarray], horizon: int, names) -> np.ndarray:
        extra = 1 if self.options.point_forecast == "path" else 0
        return self._forecast(series, horizon, self.options.n_samples + extra, names, None)[extra:]

    def _forecast(self, series: list[np.ndarray], horizon: int, n_paths: int, names, initial_x) -> np.ndarray:
        """encode -> rollout -> decode: (n_paths, H, S, D) in data scale."""
        horizon = positive_int(horizon, "horizon")
        series = [self.options.trim(s) for s in series]
        self._check_shortest(series)
        labels = list(names) if names is not None else [f"series {s}" for s in range(len(series))]
        starts = initial_points(
            initial_x, len(series), series[0].shape[1], self.model.arch.N, self.options.nonstationary is True
        )
        entropy = seed_entropy(self.options.random_state)
        self.selections = select(self, series, entropy, starts is not None)
        encoding = BatchEncoding.fit(
            series,
            [choice.preprocessing for choice in self.selections],
            [choice.nonstationary for choice in self.selections],
            standardize=self.options.standardize,
            model_dims=self.model.arch.N,
            entropy=entropy,
            starts=starts,
        )
        batch = self._batch(encoding, labels, n_paths, entropy)
        observed = rollout(self.model, batch, horizon, self.backend)  # (H, P*U, N)
        diverged = self._diverged_series(observed, batch, encoding)
        paths = encoding.decode(observed.reshape(horizon, n_paths, -1, self.model.arch.N))  # (P, H, S, D)
        paths[:, :, diverged] = np.nan
        self._check_overflow(paths, labels, diverged)
        return self._calibrate(paths, series, entropy) if n_paths > 1 else paths

    def _calibrate(self, paths: np.ndarray, series: list[np.ndarray], entropy: int) -> np.ndarray:
        """paths (P, H, S, D): each validated series' paths spread to its validation error (calibration.py)."""
        for s, (x, choice) in enumerate(zip(series, self.selections, strict=True)):
            if choice.spread is not None:
                # Keyed by the series' values like its paths' streams, so batching never changes the draws.
                rng = np.random.default_rng([entropy, content_key(x), 0, 1])
                paths[:, :, s] = choice.spread.apply(paths[:, :, s], x.std(axis=0), rng)
        return paths

    def _diverged_series(self, observed: np.ndarray, batch: RolloutBatch, encoding: BatchEncoding) -> list[int]:
        """Series with a diverged trajectory: an error under on_divergence="raise", else a warning naming them."""
        try:
            check_divergence(observed, batch)
        except DivergenceError as error:
            if self.options.on_divergence == "raise":
                raise
            warnings.warn(f"{error} Returning NaN for {', '.join(error.labels)}.", DivergenceWarning, stacklevel=4)
            bad = diverged_steps(observed, batch) >= 0  # (B,)
            return np.unique(encoding.job_of_unit[batch.unit[bad]]).tolist()
        return []

    def _check_overflow(self, paths: np.ndarray, labels: list[str], diverged: list[int]) -> None:
        """Finite model output can still overflow on the way back to data scale: raise, or NaN and warn."""
        nonstationary = any(choice.nonstationary for choice in self.selections)
        kept = np.setdiff1d(np.arange(paths.shape[2]), diverged)
        try:
            raise_if_overflowed(paths[:, :, kept], [labels[s] for s in kept], nonstationary)
        except DivergenceError as error:
            if self.options.on_divergence == "raise":
                raise
            overflowed = [s for s in kept if not np.isfinite(paths[:, :, s]).all()]
            warnings.warn(f"{error} Returning NaN for it.", DivergenceWarning, stacklevel=4)
            paths[:, :, overflowed] = np.nan

    def _check_shortest(self, series: list[np.ndarray]) -> None:
        dims = series[0].shape[1]
        shortest, needed = min(len(s) for s in series), self.min_context_length(dims)
        if shortest < needed:
            raise ValueError(
                f"context has {shortest} time steps, but preprocessing={self.options.preprocessing!r} with {dims} "
                f"dims needs at least {needed}. Pass a longer context."
            )

    def _batch(self, encoding: BatchEncoding, labels: list[str], n_paths: int, entropy: int) -> RolloutBatch:
        """All units of all series, left-padded, with ``n_paths`` trajectories per unit (path-major)."""
        dims = encoding.mean.shape[1]
        unit_labels = [f"{label} (dim {d})" for label in labels for d in range(dims)] if encoding.split else labels
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
            starts = encoding.starts.astype(np.float32)
        context = encoding.context  # float32 already
        self._raise_if_unrepresentable(context, starts, unit_labels)
        streams = [np.random.default_rng([entropy, key, path + 1]) for path in range(n_paths) for key in encoding.keys]
        units = len(encoding.keys)
        return RolloutBatch(
            context=context,
            valid_from=encoding.valid_from,
            x0=np.tile(starts, (n_paths, 1)),
            unit=np.tile(np.arange(units), n_paths),
            streams=streams,
            labels=tuple(unit_labels),
        )

    def _raise_if_unrepresentable(self, context: np.ndarray, starts: np.ndarray, unit_labels: list[str]) -> None:
        """The model computes in float32: a preprocessed context or start beyond its range cannot be forecast."""
        bad = ~(np.isfinite(context).all(axis=(1, 2)) & np.isfinite(starts).all(axis=1))
        if not bad.any():
            return
        if self.options.nonstationary:
            fix = "the nonstationary transform (Box-Cox and trend) blew the series up; use nonstationary=False"
        elif not self.options.standardize:
            fix = "values this large need standardize=True"
        else:
            fix = "rescale the data (or initial_x) towards unit scale"
        raise ValueError(
            f"After preprocessing, {unit_labels[int(np.argmax(bad))]} exceeds the float32 range the model "
            f"computes in: {fix}."
        )


def as_float_array(value, name: str) -> np.ndarray:
    """value as a finite float64 array, else a TypeError or ValueError naming the problem."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}.")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got dtype {array.dtype}.")
    array = np.ascontiguousarray(array, dtype=np.float64)  # the memory order must not change a rounding
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    if not np.all(np.isfinite(array)):
        bad = "NaN" if np.isnan(array).any() else "inf"
        raise ValueError(f"{name} contains {bad}; fill or drop missing and infinite values before forecasting.")
    return array


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def initial_points(initial_x, n_series: int, dims: int, model_dims: int, nonstationary: bool) -> np.ndarray | None:
    """initial_x as (S, k) data-scale starts, or None; a ValueError names what does not fit."""
    if initial_x is None:
        return None
    if nonstationary:
        raise ValueError("initial_x cannot be combined with nonstationary=True; drop one of them.")
    points = as_float_array(initial_x, "initial_x")
    if points.ndim == 1:
        points = np.broadcast_to(points, (n_series, len(points)))
    if points.ndim != 2 or points.shape[0] != n_series:
        raise ValueError(f"initial_x must be (k,) or ({n_series}, k) for {n_series} series, got shape {points.shape}.")
    k, split = points.shape[1], dims > model_dims
    if k > dims or (split and k != dims):
        allowed = f"exactly {dims}" if split else f"1 to {dims}"
        raise ValueError(f"initial_x has {k} dims, but the context has {dims}; give {allowed} dims.")
    return points


def raise_if_overflowed(paths: np.ndarray, labels: list[str], nonstationary: bool) -> None:
    """paths (P, H, S, D) in data scale: finite model output can still overflow on the way back."""
    finite = np.isfinite(paths).all(axis=(0, 3))  # (H, S)
    if finite.all():
        return
    step, s = np.argwhere(~finite)[0]
    cause = (
        "extrapolating the nonstationary trend and Box-Cox transform; use a shorter horizon or nonstationary=False"
        if nonstationary
        else "scaling back to the data's range; rescale the data towards unit scale"
    )
    raise DivergenceError(f"The forecast of {labels[s]} overflowed at step {step + 1} while {cause}.", (labels[s],))

"""DynaMixPipeline: a loaded DynaMix model plus its forecasting options.

One forecast call flows one way::

    context (T, N) | (T, S, N) | list of (T_s, N)
      -> input transform   series list, checked and trimmed to ``context_length``
      -> units             each series, or each dim of a series wider than the model (ForecastUnits)
      -> select            "auto" options: each unit's setting by in-context validation (transforms/selection.py)
      -> encode            one BatchEncoding of all units (trend, scaler, embedding), as arrays
      -> RolloutBatch      left-padded contexts, starts (calibrated units: perturbed per path,
                           transforms/calibration.py), per-trajectory noise stream keys
      -> rollout           (H, B, N) in model space, on the numba or torch backend
      -> decode            the BatchEncoding inverts each unit's own transforms, for all at once
      -> calibrate         validated units: spread matched to the validation error on the
                           validated horizon, the model's own beyond (transforms/calibration.py)
      -> output transform  (P, H, [S,] N) in the caller's layout

Random draws come from streams keyed by (seed, series content, path), so a series gets
the same forecast whatever else is in the batch, in any partition or process.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from numbers import Integral

import numpy as np
import torch

from .model import DynaMix
from .options import AUTO, ForecastOptions
from .rollout import (
    DivergenceError,
    DivergenceWarning,
    RolloutBatch,
    check_backend,
    check_divergence,
    content_key,
    diverged_steps,
    rollout,
    seed_entropy,
    stream_keys,
)
from .transforms.calibration import Spreads, match_spreads, perturbed_starts
from .transforms.encoding import BatchEncoding
from .transforms.preprocessing import EMBEDDINGS, min_context_length
from .transforms.selection import Selection, select
from .weights import load_model

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Trajectories encoded, rolled out and decoded together (bench_pipeline.py: at 4,096 series, one pass cost
# 1.3-2x the per-series time of chunks of 1,024, most of the difference in page faults of its temporaries).
CHUNK_TRAJECTORIES = 1024


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
            by_series = np.ascontiguousarray(array.transpose(1, 0, 2))  # one copy, not one per series
            return cls(list(by_series), "batch")
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
        Rollout implementation: "auto" or a name from ``rollout.BACKENDS``.

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

    def choose_settings(self, context) -> list[Selection]:
        """What "auto" picks for each series of ``context``, without forecasting (any horizon gets the same).

        One :class:`~dynamix_adapters.transforms.selection.Selection` per series (``record()`` gives
        preprocessing, nonstationary, validation windows and MASE as plain data); with explicit
        options, those options. Pass the list as ``settings`` to the forecast methods on the
        same context to forecast with these choices without validating again.
        """
        series = [self.options.trim(s) for s in SeriesInput.of(context).series]
        units = ForecastUnits.of(series, None, None, self.model.arch.N)
        return units.group(select(self, units.series, seed_entropy(self.options.random_state), False))

    def sample_paths(
        self, context, horizon: int, n_samples: int | None = None, *, names=None, initial_x=None, settings=None
    ):
        """Sample paths (n_samples, H, [S,] D) in data scale; ``n_samples`` defaults to the options'.

        ``names`` label the series in errors (default "series 0", ...). ``initial_x`` starts
        the rollout there instead of at the last context frame: (k,) or (S, k), k <= D, in
        data scale; missing model dims come from the context frame nearest to it. ``settings``
        is what :meth:`choose_settings` returned for this context (default: choose now).
        """
        inputs = SeriesInput.of(context)
        n_paths = positive_int(self.options.n_samples if n_samples is None else n_samples, "n_samples")
        paths = self._forecast(inputs.series, horizon, n_paths, names, initial_x, settings)
        return inputs.output(paths)

    def predict(self, context, horizon: int, *, names=None, settings=None) -> np.ndarray:
        """Point forecast (H, [S,] D), as ``options.point_forecast`` says."""
        inputs = SeriesInput.of(context)
        if self.options.point_forecast == "path":
            return inputs.output(self._forecast(inputs.series, horizon, 1, names, None, settings)[0])
        samples = self._samples(inputs.series, horizon, names, settings)
        point = np.median(samples, axis=0) if self.options.point_forecast == "median" else samples.mean(axis=0)
        return inputs.output(point)

    def predict_quantiles(self, context, horizon: int, quantile_levels=DEFAULT_QUANTILES, *, names=None, settings=None):
        """Quantiles (Q, H, [S,] D) and mean (H, [S,] D) over ``options.n_samples`` sample paths."""
        inputs = SeriesInput.of(context)
        samples = self._samples(inputs.series, horizon, names, settings)
        quantiles = np.quantile(samples, list(quantile_levels), axis=0)
        return inputs.output(quantiles), inputs.output(samples.mean(axis=0))

    def predict_samples(self, context, horizon: int, *, names=None, settings=None) -> np.ndarray:
        """The ``options.n_samples`` sample paths behind quantiles, variances and median/mean point forecasts.

        With ``point_forecast="path"`` these are paths 1..n_samples of a draw whose path 0 has
        the point forecast's gating noise: the point forecast is never one of its own samples
        (for a calibrated series it also starts unperturbed, at the last observation).
        """
        inputs = SeriesInput.of(context)
        return inputs.output(self._samples(inputs.series, horizon, names, settings))

    def _samples(self, series: list[np.ndarray], horizon: int, names, settings) -> np.ndarray:
        extra = 1 if self.options.point_forecast == "path" else 0
        return self._forecast(series, horizon, self.options.n_samples + extra, names, None, settings)[extra:]

    def _forecast(self, series: list[np.ndarray], horizon: int, n_paths: int, names, initial_x, settings) -> np.ndarray:
        """select -> encode -> rollout -> decode -> calibrate: (n_paths, H, S, D) in data scale.

        Everything the call computes stays in locals (the pipeline keeps no per-call state), so
        threads may share one pipeline.
        """
        horizon = positive_int(horizon, "horizon")
        series = [self.options.trim(s) for s in series]
        self._check_shortest(series)
        labels = list(names) if names is not None else [f"series {s}" for s in range(len(series))]
        starts = initial_points(
            initial_x, len(series), series[0].shape[1], self.model.arch.N, self.options.nonstationary is True
        )
        units = ForecastUnits.of(series, labels, starts, self.model.arch.N)
        entropy = seed_entropy(self.options.random_state)
        if settings is None:
            choices = select(self, units.series, entropy, starts is not None)
        else:
            choices = checked_settings(settings, units, starts is not None)
        # In chunks of about CHUNK_TRAJECTORIES trajectories: a whole panel at once spends more time
        # faulting in its temporaries than computing them. Every unit's forecast is its own.
        size = max(1, CHUNK_TRAJECTORIES // n_paths)
        chunks = [
            self._forecast_units(units.take(a, a + size), choices[a : a + size], horizon, n_paths, entropy)
            for a in range(0, len(units.series), size)
        ]
        return units.merge(np.concatenate(chunks, axis=2))

    def _forecast_units(
        self, units: ForecastUnits, choices: list[Selection], horizon: int, n_paths: int, entropy: int
    ) -> np.ndarray:
        """encode -> rollout -> decode -> calibrate ``units`` with their ``choices``: (n_paths, H, U, d)."""
        encoding = BatchEncoding.fit(
            units.series,
            [choice.preprocessing for choice in choices],
            [choice.nonstationary for choice in choices],
            standardize=self.options.standardize,
            model_dims=self.model.arch.N,
            entropy=entropy,
            starts=None if units.starts[0] is None else np.stack(units.starts),
            keys=_chosen_keys(choices),
        )
        batch = self._batch(encoding, units.labels, n_paths, entropy)
        spreads = None  # a point forecast's one path is never calibrated
        if n_paths > 1:
            stationary = [not choice.nonstationary for choice in choices]
            spreads = Spreads.fit([choice.validation_errors for choice in choices], stationary)
        calibrated = spreads is not None and bool(spreads.fitted.any())
        if calibrated:
            context_std = np.stack([x.std(axis=0) for x in units.series])  # (U, d), each series' own reduction
            batch = replace(batch, x0=perturbed_starts(batch.x0, encoding, spreads, context_std, entropy))
        observed = rollout(self.model, batch, horizon, self.backend)  # (H, P*U, N)
        diverged = self._diverged_units(observed, batch)
        paths = encoding.decode(observed.reshape(horizon, n_paths, -1, self.model.arch.N))  # (P, H, U, d)
        paths[:, :, diverged] = np.nan
        self._check_overflow(paths, units.labels, diverged, any(choice.nonstationary for choice in choices))
        if calibrated:
            paths = match_spreads(paths, spreads, context_std)
        return paths

    def _diverged_units(self, observed: np.ndarray, batch: RolloutBatch) -> list[int]:
        """Units with a diverged trajectory: an error under on_divergence="raise", else a warning naming them."""
        try:
            check_divergence(observed, batch)
        except DivergenceError as error:
            if self.options.on_divergence == "raise":
                raise
            warnings.warn(f"{error} Returning NaN for {', '.join(error.labels)}.", DivergenceWarning, stacklevel=4)
            bad = diverged_steps(observed, batch) >= 0  # (B,)
            return sorted(set(batch.unit[bad].tolist()))
        return []

    def _check_overflow(self, paths: np.ndarray, labels: list[str], diverged: list[int], nonstationary: bool) -> None:
        """Finite model output can still overflow on the way back to data scale: raise, or NaN and warn."""
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
        """The encoding's units (named by ``labels``), left-padded, with ``n_paths`` trajectories each (path-major)."""
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
            starts = encoding.starts.astype(np.float32)
        self._raise_if_unrepresentable(encoding.context, starts, labels)  # the context is float32 already
        return RolloutBatch(
            context=encoding.context,
            valid_from=encoding.valid_from,
            x0=np.tile(starts, (n_paths, 1)),
            unit=np.tile(np.arange(len(encoding.keys)), n_paths),
            streams=stream_keys(entropy, list(encoding.keys), n_paths),
            labels=tuple(labels),
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


def _chosen_keys(choices: list[Selection]) -> list[int] | None:
    """The content keys the choices were made on (select and checked_settings hashed each unit), or None."""
    keys = [choice.key for choice in choices]
    return None if None in keys else keys


def checked_settings(settings, units: ForecastUnits, stationary_only: bool) -> list[Selection]:
    """Per unit, ``settings`` from ``choose_settings`` if they belong to these series, else a ValueError."""
    choices = list(settings)
    n_series = len(units.series) // units.dims if units.split else len(units.series)
    per_dim = not units.split or all(len(choice.dims) == units.dims for choice in choices)
    if len(choices) != n_series or not all(isinstance(choice, Selection) for choice in choices) or not per_dim:
        raise ValueError(
            f"settings must be the list of {n_series} Selections that choose_settings returned for this context; "
            "call pipeline.choose_settings(context) and pass its result."
        )
    choices = [dim for choice in choices for dim in choice.dims] if units.split else choices
    for u, (x, choice) in enumerate(zip(units.series, choices, strict=True)):
        if choice.key is not None and choice.key != content_key(x):
            raise ValueError(
                f"settings for {units.labels[u]} were chosen for another series (after context_length); "
                "call choose_settings on this context."
            )
        if stationary_only and choice.nonstationary:
            raise ValueError("initial_x cannot be combined with settings that chose nonstationary=True.")
    return choices


@dataclass(frozen=True)
class ForecastUnits:
    """What a forecast selects, encodes and rolls out: the series, or each dim of series wider than the model.

    Nothing couples the dims of a series with more dims than the model, so each is its own
    unit: it gets its own validated setting and spread, and the same forecast alone as in a
    wide frame.
    """

    series: list[np.ndarray]  # (T, d) per unit
    labels: list[str]
    starts: list[np.ndarray | None]  # (d,) data-scale start per unit, or None
    split: bool  # each series was split into its ``dims`` dims
    dims: int

    @classmethod
    def of(cls, series: list[np.ndarray], labels, starts: np.ndarray | None, model_dims: int) -> ForecastUnits:
        labels = labels or [f"series {s}" for s in range(len(series))]
        dims = series[0].shape[1]
        if dims <= model_dims:
            return cls(series, labels, [None] * len(series) if starts is None else list(starts), False, dims)
        return cls(
            [x[:, [d]] for x in series for d in range(dims)],
            [f"{label} (dim {d})" for label in labels for d in range(dims)],
            [None] * (len(series) * dims) if starts is None else list(starts.reshape(-1, 1)),
            True,
            dims,
        )

    def take(self, first: int, stop: int) -> ForecastUnits:
        """Units first..stop-1 (the merge of the whole stays with the full ``ForecastUnits``)."""
        return replace(
            self, series=self.series[first:stop], labels=self.labels[first:stop], starts=self.starts[first:stop]
        )

    def merge(self, paths: np.ndarray) -> np.ndarray:
        """paths (P, H, U, d) per unit -> (P, H, S, D) per series."""
        if not self.split:
            return paths
        return paths.reshape(*paths.shape[:2], -1, self.dims)

    def group(self, choices: list[Selection]) -> list[Selection]:
        """Per-unit Selections -> one per series (a split series' holds its dims')."""
        if not self.split:
            return choices
        return [Selection.per_dim(choices[i : i + self.dims]) for i in range(0, len(choices), self.dims)]


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

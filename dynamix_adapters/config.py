"""ForecastConfig: the modelling options that the sktime and darts adapters share.

The adapters keep their constructor arguments untouched (as sktime and darts
require) and build a ``ForecastConfig`` from them when they fit. Everything that
models (context trimming, sampling, the point forecast) happens here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from numbers import Integral

import numpy as np

from .forecast import as_series_list, forecast_paths
from .model import DynaMix
from .preprocessing import check_preprocessing, min_context_length
from .weights import load_model, resolve

POINT_FORECASTS = ("path", "median", "mean")


@dataclass(frozen=True)
class ForecastConfig:
    """Modelling options for zero-shot DynaMix forecasts.

    Parameters
    ----------
    model : str or None
        Registered weight-set name or path to a weights file; None means the default model.
    context_length : int or None
        Use only the last ``context_length`` observations; None uses all history.
        Cost grows linearly with it: every forecast step attends over the whole context.
    preprocessing : str
        Embedding for series with fewer dims than the model: "pos_embedding",
        "delay_embedding", "delay_embedding_random" or "zero_embedding".
    standardize : bool
        Z-score each series and dim over its context.
    nonstationary : bool
        Remove a Box-Cox transform and a power-law trend, restored on output.
    n_samples : int
        Monte-Carlo sample paths for intervals, quantiles and variances.
    point_forecast : str
        "path" (one seeded model trajectory), "median" or "mean" of ``n_samples`` paths.
    random_state : int or None
        Seed for all random draws.
    device : str
        torch device of the model.

    Examples
    --------
    >>> config = ForecastConfig(preprocessing="zero_embedding", n_samples=10)
    >>> config.trim(list(range(5)))
    [0, 1, 2, 3, 4]
    """

    model: str | None = None
    context_length: int | None = None
    preprocessing: str = "pos_embedding"
    standardize: bool = True
    nonstationary: bool = False
    n_samples: int = 100
    point_forecast: str = "path"
    random_state: int | None = None
    device: str = "cpu"

    def __post_init__(self):
        check_preprocessing(self.preprocessing)
        if self.point_forecast not in POINT_FORECASTS:
            raise ValueError(f"Unknown point_forecast {self.point_forecast!r}; choose one of {POINT_FORECASTS}.")
        for name in ("context_length", "n_samples"):
            value = getattr(self, name)
            if value is None and name == "context_length":
                continue
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {self.context_length}.")
        if self.model is not None:
            resolve(self.model)

    @classmethod
    def from_params(cls, params: dict) -> ForecastConfig:
        """Build from an estimator's parameters, ignoring the ones that are not modelling options."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})

    def load(self) -> DynaMix:
        return load_model(self.model, self.device)

    def min_context_length(self, n_dims: int) -> int:
        """Shortest history this configuration can forecast from."""
        return min_context_length(self.preprocessing, n_dims, self.load().arch.N)

    def check_lengths(self, lengths: list[int], n_dims: int, names: list[str]) -> None:
        """Raise a ValueError naming the first series too short to forecast with this configuration."""
        needed = self.min_context_length(n_dims)
        if self.context_length is not None and self.context_length < needed:
            raise ValueError(
                f"context_length={self.context_length} is shorter than the {needed} observations that "
                f"preprocessing={self.preprocessing!r} needs for {n_dims}-dim series; "
                f"raise context_length to at least {needed}."
            )
        for length, name in zip(lengths, names, strict=True):
            if length < needed:
                alternative = ", or preprocessing='pos_embedding', which needs 2" if needed > 2 else ""
                raise ValueError(
                    f"DynaMix needs at least {needed} observations per series with "
                    f"preprocessing={self.preprocessing!r}, but {name} has {length}. "
                    f"Pass a longer history{alternative}."
                )

    def trim(self, series: np.ndarray) -> np.ndarray:
        return series if self.context_length is None else series[-self.context_length :]

    def sample(self, contexts, horizon: int, n_samples: int | None, random_state=None, names=None) -> np.ndarray:
        """Forecast sample paths for a list of (T_s, D) contexts: (n_paths, H, S, D).

        With ``point_forecast="path"`` and ``n_samples=None`` one path is drawn. All
        paths of all series go through the model in one batched rollout. ``names``
        label the series in divergence errors.
        """
        series, _ = as_series_list(list(contexts))
        return forecast_paths(
            self.load(),
            [self.trim(s) for s in series],
            horizon,
            n_paths=n_samples or 1,
            preprocessing=self.preprocessing,
            standardize=self.standardize,
            nonstationary=self.nonstationary,
            initial_x=None,
            random_state=self.random_state if random_state is None else random_state,
            names=names,
        )

    def predict(self, contexts, horizon: int, with_samples: bool = False, random_state=None, names=None):
        """Point forecast (H, S, D) and, if asked, the sample paths (n_samples, H, S, D)."""
        if self.point_forecast == "path" and not with_samples:
            return self.sample(contexts, horizon, None, random_state, names)[0], None
        extra = 1 if self.point_forecast == "path" else 0
        paths = self.sample(contexts, horizon, self.n_samples + extra, random_state, names)
        samples = paths[extra:]
        if self.point_forecast == "path":
            point = paths[0]
        elif self.point_forecast == "median":
            point = np.median(samples, axis=0)
        else:
            point = samples.mean(axis=0)
        return point, (samples if with_samples else None)

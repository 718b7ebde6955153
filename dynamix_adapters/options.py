"""ForecastOptions: the forecasting options, as plain data, written out once.

The pipeline, both adapters and the CLI take these options. Construction only
validates; nothing here touches files, weights or the network. ``OPTIONS_DOC`` is
the one description of every option; the adapters' docstrings include it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from numbers import Integral

import numpy as np

from .preprocessing import check_preprocessing

POINT_FORECASTS = ("path", "median", "mean")


@dataclass(frozen=True)
class ForecastOptions:
    """How DynaMix forecasts a series: context, preprocessing, sampling and seed.

    See ``OPTIONS_DOC`` (below, and in the adapters' docstrings) for each option.

    Examples
    --------
    >>> options = ForecastOptions(preprocessing="zero_embedding", n_samples=10)
    >>> options.replace(n_samples=20).n_samples
    20
    """

    context_length: int | None = None
    preprocessing: str = "pos_embedding"
    standardize: bool = True
    nonstationary: bool = False
    n_samples: int = 100
    point_forecast: str = "path"
    random_state: int | None = None

    def __post_init__(self):
        check_preprocessing(self.preprocessing)
        if self.point_forecast not in POINT_FORECASTS:
            raise ValueError(f"Unknown point_forecast {self.point_forecast!r}; choose one of {POINT_FORECASTS}.")
        if self.context_length is not None:
            _check_int(self.context_length, "context_length", 1)
            if self.context_length < 2:
                raise ValueError(f"context_length must be at least 2, got {self.context_length}.")
        _check_int(self.n_samples, "n_samples", 1)
        seed = self.random_state
        if seed is not None and not isinstance(seed, np.random.Generator):
            _check_int(seed, "random_state", 0)
        for name in ("standardize", "nonstationary"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def pick(cls, params: dict) -> dict:
        """The forecasting options among an estimator's parameters."""
        return {k: v for k, v in params.items() if k in cls.names()}

    def replace(self, **changes) -> ForecastOptions:
        return type(self)(**{**asdict(self), **changes})

    def trim(self, series):
        """The last ``context_length`` observations of a (T, D) series (all of it when None)."""
        return series if self.context_length is None else series[-self.context_length :]


def _check_int(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


# The numpydoc description of every option, shared by DynaMixForecaster and DynaMixModel.
OPTIONS_DOC = """\
    model : str or None, default=None
        A registered weight set (see ``dynamix_adapters.known_models()``) or a path to a
        ``.safetensors`` or official ``.bson`` file. None is ``dynamix_adapters.DEFAULT_MODEL``,
        the weights bundled in the package (no network). Resolved and loaded at fit, once
        per process; never at construction.
    context_length : int or None, default=None
        Condition on the last ``context_length`` observations of each series; None uses all
        history. Every forecast step attends over the whole context, so time grows linearly
        with it. Longer contexts show the model more of the attractor it forecasts from.
    preprocessing : str, default="pos_embedding"
        How series with fewer dims than the model (3) are embedded: "pos_embedding",
        "delay_embedding", "delay_embedding_random" or "zero_embedding". Series with more
        dims are forecast one dim at a time.
    standardize : bool, default=True
        Z-score each series and dim over its context, and undo it on the forecast.
    nonstationary : bool, default=False
        Remove a Box-Cox transform and a power-law trend before forecasting, and restore them
        on the forecast; for trending series.
    n_samples : int, default=100
        Monte-Carlo sample paths behind intervals, quantiles, variances and a "median" or
        "mean" point forecast, drawn as one batch.
    point_forecast : str, default="path"
        What a point forecast is. "path" is one seeded model trajectory: it keeps the
        attractor's long-term statistics (geometry, power spectrum), which DynaMix is built to
        reproduce, at 1/``n_samples`` the cost. "median" of the sample paths is the MAE-optimal
        short-horizon forecast, but on a chaotic system it decays towards the attractor's
        centre once the paths decorrelate; "mean" is its MSE-optimal counterpart.
    random_state : int or None, default=None
        Seeds every random draw. A series' draws depend only on the seed and its own values,
        never on the other series in a batch. None draws fresh randomness on every call.
    device : str, default="cpu"
        torch device of the model, e.g. "cuda"."""

# Options the adapters take besides ForecastOptions: they choose the pipeline, not a forecast.
PIPELINE_PARAMS = {"model": None, "device": "cpu"}

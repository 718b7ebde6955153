"""ForecastOptions: the forecasting options, as plain data, written out once.

The pipeline, both adapters and the CLI take these options. Construction only
validates; nothing here touches files, weights or the network. ``OPTIONS_DOC`` is
the one description of every option; the adapters' docstrings include it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from numbers import Integral

import numpy as np

from .transforms.preprocessing import check_preprocessing

POINT_FORECASTS = ("path", "median", "mean")
DIVERGENCE_POLICIES = ("raise", "nan")
# Chosen per series by in-context validation (transforms/selection.py), which also calibrates the spread.
AUTO = "auto"


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
    preprocessing: str = AUTO
    standardize: bool = True
    nonstationary: bool | str = AUTO
    n_samples: int = 100
    point_forecast: str = "path"
    random_state: int | None = None
    on_divergence: str = "raise"

    def __post_init__(self):
        if self.preprocessing != AUTO:
            check_preprocessing(self.preprocessing)
        if self.point_forecast not in POINT_FORECASTS:
            raise ValueError(f"Unknown point_forecast {self.point_forecast!r}; choose one of {POINT_FORECASTS}.")
        if self.context_length is not None:
            _check_int(self.context_length, "context_length", 1)
            if self.context_length < 2:
                raise ValueError(f"context_length must be at least 2, got {self.context_length}.")
        _check_int(self.n_samples, "n_samples", 1)
        if self.on_divergence not in DIVERGENCE_POLICIES:
            raise ValueError(f"Unknown on_divergence {self.on_divergence!r}; choose one of {DIVERGENCE_POLICIES}.")
        seed = self.random_state
        if seed is not None and not isinstance(seed, np.random.Generator):
            _check_int(seed, "random_state", 0)
        for name in ("standardize", "nonstationary"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)) and not (name == "nonstationary" and value == AUTO):
                allowed = "True, False or 'auto'" if name == "nonstationary" else "True or False"
                raise ValueError(f"{name} must be {allowed}, got {value!r}.")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def pick(cls, params: dict) -> dict:
        """The forecasting options among an estimator's parameters."""
        return {k: v for k, v in params.items() if k in cls.names()}

    def replace(self, **changes) -> ForecastOptions:
        # dataclasses.replace copies no field (asdict deep-copies them all) and still validates the result.
        return replace(self, **changes)

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
    preprocessing : str, default="auto"
        How series with fewer dims than the model (3) are embedded: "pos_embedding",
        "delay_embedding", "delay_embedding_random" or "zero_embedding". Series with more
        dims are forecast one dim at a time (each dim embedded, and chosen for, as its own
        series). "auto" chooses per series (per dim of a wider one) by in-context
        validation: 3 overlapping windows at the end of the context (each min(16, T/5)
        steps, whatever the horizon, so a forecast's first steps never change with how far
        it reaches) are forecast from the history before them with "delay_embedding",
        "pos_embedding" and "delay_embedding_random", and the one with the lowest
        validation MASE (mean absolute error over the mean one-step change) is kept;
        another must beat "delay_embedding" by 10% to replace it. A series with as many
        dims as the model needs no embedding. The choice is reported
        (``DynaMixPipeline.choose_settings``, sktime ``get_fitted_params()``, darts
        ``selections_``, the CLI's log).
    standardize : bool, default=True
        Z-score each series and dim over its context, and undo it on the forecast.
    nonstationary : bool or "auto", default="auto"
        Remove a Box-Cox transform and a power-law trend before forecasting, and restore them
        on the forecast; for trending series. "auto" validates both, as ``preprocessing``
        does; the transform must beat the best stationary candidate by 25% to be kept.
        With either option "auto", the same validation forecasts calibrate the sample paths
        behind intervals, quantiles, variances and "median"/"mean" point forecasts: each
        path starts from the last observation perturbed by the one-step validation error and
        stays a trajectory of the model; on the validated horizon the spread around the
        median is set to the validation error, beyond it the spread is the model's own (see
        ``calibration``). Contexts
        too short for validation (fewer than 10 observations before the first window) get
        pos_embedding, stationary, and the model's own, uncalibrated spread. With both
        options explicit, forecasts are exactly those of earlier versions, uncalibrated.
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
        never on the other series in a batch (see "Randomness" below for repeated calls).
    on_divergence : str, default="nan"
        What happens when a forecast diverges (its state leaves 10 times its context's range
        and does not come back). "nan": that series' forecast is NaN, with a
        ``DivergenceWarning`` naming it, and every other series, window or grid point
        completes, as comparison workflows (backtests, grid searches, panels) need. "raise":
        a ``DivergenceError`` naming the series and step stops the call (the core's default).
    device : str, default="cpu"
        torch device of the model, e.g. "cuda"."""

# Adapter parameters that are not ForecastOptions fields (model, device) or default differently (on_divergence).
ADAPTER_DEFAULTS = {"model": None, "device": "cpu", "on_divergence": "nan"}

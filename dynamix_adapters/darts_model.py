"""DynaMix as a darts ``LocalForecastingModel``.

Importing this module registers :class:`DynaMixModel` as a darts safe global, so
``DynaMixModel.load(path)`` works under darts' restricted unpickler without
``trusted=True``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from numbers import Integral

import numpy as np
from darts import TimeSeries
from darts.models.forecasting.forecasting_model import LocalForecastingModel
from darts.utils.serialization import add_safe_globals
from darts.utils.utils import MAX_NUMPY_SEED_VALUE

from .options import OPTIONS_DOC, ForecastOptions
from .pipeline import DynaMixPipeline

_SEED_LOCK = threading.Lock()


class DynaMixModel(LocalForecastingModel):
    """Zero-shot DynaMix forecasts of dynamical systems as a darts model.

    DynaMix is a pretrained foundation model: ``fit`` only stores the series, and
    ``predict`` forecasts it, or any other series passed as ``series``, without
    training. Uni- and multivariate series work; a list of series is forecast in one
    batched model call (one per number of components). ``num_samples > 1`` returns
    model sample paths, so ``quantile`` and darts' probabilistic metrics apply.

    ``historical_forecasts`` and ``backtest`` accept ``retrain=False``, the fast path:
    fit once (on any series), and every window is forecast from the history before it
    by that one model, instead of a fresh model built and fitted per window; its point
    forecasts are those of ``retrain=True``. With ``retrain=True`` and ``train_length``,
    each window's forecast conditions on the ``train_length`` points the model was
    refitted on: after ``fit(window)``, ``predict(series=history)`` forecasts from the
    window when ``history`` ends with it.

    The torch model is loaded lazily at fit through a per-process cache, once per fitted
    model, and is never pickled: ``save``/``load`` store only the parameters, the training
    series and the random stream's position, and the loaded model finds the weights in
    the cache again.

    Parameters
    ----------
    {options}

    Notes
    -----
    Randomness follows darts' rule for random models (``darts.utils.torch.random_method``).

    - A point forecast (``num_samples=1``, whatever ``point_forecast`` says) is deterministic:
      it depends only on ``random_state``, the options and the input series, so it is the
      same on every call, after ``save``/``load``, and with ``retrain=True`` or
      ``retrain=False`` in ``historical_forecasts`` and ``backtest``. It draws nothing from
      the model's random stream. With ``random_state=None`` it is the point forecast of
      ``random_state=0``: ``retrain=True`` builds a fresh model for every window, and each
      window must still get the forecast of ``retrain=False``.
    - Sample paths (``num_samples > 1``) come from the model's random stream, created at
      construction from ``random_state`` (or, when it is None, from numpy's global
      generator, so ``np.random.seed`` before construction makes a script reproducible).
      Every call that draws samples takes the next seed of the stream: consecutive calls
      differ, ``fit`` does not restart the stream, a fresh model with the same
      ``random_state`` repeats the sequence (its first call equals
      ``predict(..., random_state=random_state)``), and ``save``/``load`` continue it.
      ``predict(..., random_state=k)`` pins one call and leaves the stream where it was.
      Two unseeded models draw different samples.

    Within one call, a series' draws depend only on the seed and its own values, never on
    the other series of a list.

    Examples
    --------
    >>> from dynamix_adapters import DynaMixModel
    >>> model = DynaMixModel(context_length=512, random_state=0)
    >>> model.supports_probabilistic_prediction, model.supports_multivariate
    (True, True)

    With the official weights available:

    >>> from darts.utils.timeseries_generation import sine_timeseries
    >>> series = sine_timeseries(length=200, value_frequency=0.05)
    >>> forecast = model.fit(series).predict(24)  # doctest: +SKIP
    >>> paths = model.predict(24, num_samples=50)  # doctest: +SKIP
    >>> paths.n_samples  # doctest: +SKIP
    50
    >>> backtests = model.historical_forecasts(series, start=0.8, forecast_horizon=12, retrain=False)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | None = None,
        context_length: int | None = None,
        preprocessing: str = "auto",
        standardize: bool = True,
        nonstationary: bool | str = "auto",
        n_samples: int = 100,
        point_forecast: str = "path",
        random_state: int | None = None,
        on_divergence: str = "nan",
        device: str = "cpu",
    ):
        super().__init__(add_encoders=None)
        self.model = model
        self.context_length = context_length
        self.preprocessing = preprocessing
        self.standardize = standardize
        self.nonstationary = nonstationary
        self.n_samples = n_samples
        self.point_forecast = point_forecast
        self.random_state = random_state
        self.on_divergence = on_divergence
        self.device = device
        # Bad options fail here already; the weights are loaded only when first needed,
        # because resolving a registered name may download.
        ForecastOptions(**ForecastOptions.pick(self.model_params))
        # Until a series is seen, assume a univariate one: it needs the longest context.
        self._fit_components = 1
        # darts' random rule: the model's stream of sampling seeds starts here, from random_state or numpy's
        # global generator. Plain data (seed, draws so far), so save/load continue it under darts' restricted
        # unpickler. Point forecasts use random_state (0 when None) and never advance the stream.
        self._stream_seed = int(np.random.randint(0, MAX_NUMPY_SEED_VALUE)) if random_state is None else random_state
        self._sampling_calls = 0
        # One pipeline per model, built at first use (fit at the latest); pickles leave it out.
        self._loaded_pipeline: DynaMixPipeline | None = None

    def __getstate__(self) -> dict:
        # The torch model stays in this process' cache; after loading, the first use finds it there again.
        return {**self.__dict__, "_loaded_pipeline": None}

    @property
    def _pipeline(self) -> DynaMixPipeline:
        """The model (loaded once per process) with this model's options; resolved once per model."""
        if self._loaded_pipeline is None:
            options = ForecastOptions.pick(self.model_params)
            self._loaded_pipeline = DynaMixPipeline.from_pretrained(self.model, self.device, **options)
        return self._loaded_pipeline

    @property
    def supports_multivariate(self) -> bool:
        return True

    @property
    def supports_probabilistic_prediction(self) -> bool:
        return True

    @property
    def supports_transferable_series_prediction(self) -> bool:
        return True

    @property
    def _supports_non_retrainable_historical_forecasts(self) -> bool:
        return True

    @property
    def _target_window_lengths(self) -> tuple[int, int]:
        return self._pipeline.min_context_length(self._fit_components), 0

    def fit(
        self,
        series: TimeSeries,
        past_covariates: TimeSeries | None = None,
        future_covariates: TimeSeries | None = None,
        verbose: bool | None = None,
    ) -> DynaMixModel:
        """Store ``series`` as the context to forecast; nothing is trained.

        Parameters
        ----------
        series : TimeSeries
            A deterministic series without NaN, uni- or multivariate.
        past_covariates, future_covariates : None
            Not supported: DynaMix forecasts from the target alone.
        verbose : bool, optional
            Unused; kept for darts' interface.
        """
        _reject_covariates(past_covariates, future_covariates)
        _observed_values(series, "series")
        self._fit_components = series.n_components
        super().fit(series, verbose=verbose)
        return self

    def predict(
        self,
        n: int,
        series: TimeSeries | Sequence[TimeSeries] | None = None,
        past_covariates: TimeSeries | None = None,
        future_covariates: TimeSeries | None = None,
        num_samples: int = 1,
        verbose: bool | None = None,
        show_warnings: bool = True,
        random_state: int | None = None,
    ) -> TimeSeries | list[TimeSeries]:
        """Forecast ``n`` steps after the end of the fitted series, or of ``series``.

        Parameters
        ----------
        n : int
            Forecast horizon, at least 1.
        series : TimeSeries or list of TimeSeries, optional
            Series to forecast zero-shot instead of the fitted one. A list is batched
            through the model and returns a list.
        past_covariates, future_covariates : None
            Not supported: DynaMix forecasts from the target alone.
        num_samples : int
            1 returns the point forecast chosen by ``point_forecast``, the same on every call;
            more returns that many model sample paths as a stochastic series, drawn with the
            next seed of the model's random stream.
        verbose, show_warnings : bool
            Unused; kept for darts' interface.
        random_state : int, optional
            Seed for this call only; the model's random stream does not advance.

        Returns
        -------
        TimeSeries or list of TimeSeries
            Indexed after each input series, with its components and static covariates.
        """
        _reject_covariates(past_covariates, future_covariates)
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}.")
        if isinstance(num_samples, bool) or not isinstance(num_samples, Integral) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
        super().predict(n, num_samples)
        if random_state is None:
            random_state = self._point_seed() if num_samples == 1 else self._next_sampling_seed()
        if series is None or isinstance(series, TimeSeries):
            return self._forecast([self._context_of(series)], n, num_samples, random_state, ["series"])[0]
        if not isinstance(series, Sequence) or not series:
            raise TypeError("series must be a TimeSeries or a non-empty list of TimeSeries.")
        names = [f"series[{i}]" for i in range(len(series))]
        return self._forecast(list(series), n, num_samples, random_state, names)

    def _point_seed(self) -> int:
        """The seed of every point forecast: fixed even unseeded, as each retrain=True window is a fresh model."""
        return 0 if self.random_state is None else self.random_state

    def _next_sampling_seed(self) -> int:
        """The next seed of the model's stream: the first is the stream's seed itself, then derived ones."""
        with _SEED_LOCK:  # concurrent predicts each take their own seed of the stream
            calls, self._sampling_calls = self._sampling_calls, self._sampling_calls + 1
        seed = self._stream_seed
        return seed if calls == 0 else int(np.random.default_rng([seed, calls]).integers(2**63))

    def _context_of(self, series: TimeSeries | None) -> TimeSeries:
        """The fitted series when ``series`` only extends it backwards in time, else ``series``.

        darts' ``train_length`` refits on a window and then passes the whole history to
        ``predict``; for a zero-shot model the window it was fitted on is the context.
        """
        fitted = self.training_series
        if series is None:
            return fitted
        tail = len(fitted)
        if (
            len(series) > tail
            and series.n_components == fitted.n_components
            and series.time_index[-tail:].equals(fitted.time_index)
            and np.array_equal(series.values(copy=False)[-tail:], fitted.values(copy=False), equal_nan=True)
        ):
            return fitted
        return series

    def _forecast(
        self, inputs: list[TimeSeries], n: int, num_samples: int, random_state: int, names: list[str]
    ) -> list[TimeSeries]:
        pipeline = self._pipeline.with_options(random_state=random_state)
        contexts = [_observed_values(s, name) for s, name in zip(inputs, names, strict=True)]
        for context, name in zip(contexts, names, strict=True):
            pipeline.check_lengths([len(context)], context.shape[1], [name])
        # The core batches series of one width; its random streams depend on each series
        # alone, so splitting by width changes no forecast.
        by_width: dict[int, list[int]] = {}
        for i, context in enumerate(contexts):
            by_width.setdefault(context.shape[1], []).append(i)
        values: list[np.ndarray] = [np.empty(0)] * len(inputs)
        selections: list[dict] = [{}] * len(inputs)
        for members in by_width.values():
            batch = [contexts[i] for i in members]
            labels = [names[i] for i in members]
            chosen = pipeline.choose_settings(batch)
            if num_samples == 1:
                point = pipeline.predict(batch, n, names=labels, settings=chosen)  # (H, S, D)
                for k, i in enumerate(members):
                    values[i] = point[:, k, :]
            else:
                paths = pipeline.sample_paths(batch, n, num_samples, names=labels, settings=chosen)  # (P, H, S, D)
                for k, i in enumerate(members):
                    values[i] = paths[:, :, k, :].transpose(1, 2, 0)
            for k, i in enumerate(members):
                selections[i] = chosen[k].record()
        # What "auto" chose per series of the latest predict (transforms/selection.py): preprocessing, nonstationary.
        self.selections_ = selections
        return [self._build_forecast_series(v, input_series=s) for v, s in zip(values, inputs, strict=True)]


DynaMixModel.__doc__ = DynaMixModel.__doc__.replace("    {options}", OPTIONS_DOC)


def _reject_covariates(past_covariates, future_covariates) -> None:
    for name, value in (("past_covariates", past_covariates), ("future_covariates", future_covariates)):
        if value is not None:
            raise ValueError(
                f"DynaMixModel does not use {name}: it forecasts from the target series alone. "
                f"Drop the {name} argument, or stack the covariates into the target as extra components."
            )


def _observed_values(series, name: str) -> np.ndarray:
    """The (T, D) values of a deterministic, gap-free series, else a clear error."""
    if not isinstance(series, TimeSeries):
        raise TypeError(f"{name} must be a darts TimeSeries, got {type(series).__name__}.")
    if not series.is_deterministic:
        raise ValueError(
            f"{name} is stochastic ({series.n_samples} samples), but DynaMix forecasts from one observed path. "
            f"Pass a deterministic series, e.g. {name}.median()."
        )
    values = series.values(copy=False)
    missing = np.isnan(values).any(axis=1)
    if missing.any():
        raise ValueError(
            f"{name} contains NaN ({int(missing.sum())} time steps, first at {series.time_index[missing.argmax()]}). "
            f"Fill the gaps first, e.g. with darts.utils.missing_values.fill_missing_values({name})."
        )
    return values


# darts' restricted unpickler loads only allow-listed classes.
add_safe_globals([DynaMixModel])

"""DynaMix as an sktime forecaster: zero-shot point, interval, quantile and variance forecasts."""

from __future__ import annotations

import hashlib
import threading
from typing import ClassVar

import numpy as np
import pandas as pd
from sktime.forecasting.base import BaseForecaster

from .options import OPTIONS_DOC, ForecastOptions
from .pipeline import DynaMixPipeline
from .training.finetune import FinetuneConfig, finetune
from .weights import DEFAULT_MODEL


class DynaMixForecaster(BaseForecaster):
    """Zero-shot DynaMix forecaster for dynamical systems.

    DynaMix is a pretrained mixture of almost-linear RNN experts whose gating attends
    over the context, so ``fit`` trains nothing: it loads the weights (once per process)
    and stores the history, and every forecast is a rollout conditioned on it. Series,
    multivariate frames, panels and hierarchies are supported; all series of a panel go
    through the model as one batch, whatever their lengths.

    Parameters
    ----------
    {options}

    Attributes
    ----------
    model_name_ : str
        The weight set actually used (the registered name or the path).
    n_parameters_ : int
        Parameter count of the loaded model.
    embedding_ : str
        The embedding applied to the fitted series, given their number of dims ("per series"
        when "auto" chose different ones across a panel: see ``preprocessing_``).
    pretrained_model_ : DynaMix
        After ``pretrain(y_panel)``: the weights fine-tuned on the panel (``training.finetune``),
        which ``fit`` and ``predict`` then use; kept by refits and clones, dropped by ``reset``.
    pretrain_summary_ : dict
        After ``pretrain``: held-out error before and after, best epoch, seconds.

    Notes
    -----
    Randomness follows sktime's convention, not darts' stream: ``predict`` and the interval
    methods have no side effects, so a seeded forecaster gives the same point forecasts and
    the same intervals, quantiles and variances on every call, after pickling, in clones
    and refits. With ``random_state=None`` every call draws fresh noise.
    ``predict_proba`` is skpro's ``Empirical`` over the same sample paths as
    ``predict_quantiles``, ``predict_interval`` and ``predict_var``.

    The forecaster keeps its own copy of the history, which ``update`` extends, so it sets
    sktime's ``remember_data`` config to False (and sktime 1.2 does not warn about it).

    Examples
    --------
    >>> from sktime.datasets import load_airline
    >>> from dynamix_adapters import DynaMixForecaster
    >>> y = load_airline()
    >>> forecaster = DynaMixForecaster(nonstationary=True, random_state=0)  # doctest: +SKIP
    >>> forecaster.fit(y)  # doctest: +SKIP
    DynaMixForecaster(nonstationary=True, random_state=0)
    >>> y_pred = forecaster.predict(fh=[1, 2, 3])  # doctest: +SKIP
    >>> intervals = forecaster.predict_interval(fh=[1, 2, 3], coverage=0.9)  # doctest: +SKIP

    Offline, with a tiny random checkpoint instead of the official weights:

    >>> from dynamix_adapters.weights import tiny_test_checkpoint
    >>> tiny = DynaMixForecaster(model=str(tiny_test_checkpoint()), n_samples=20, random_state=0)
    >>> tiny.fit(y).predict(fh=[1, 2, 3]).shape
    (3,)
    """

    # sktime 1.2 warns at every construction that remember_data's default flips in 1.3. The forecaster
    # keeps its own copy of the context (extended in _update), so the base's copy in _y is not needed.
    _config: ClassVar[dict] = {"remember_data": False}

    _tags: ClassVar[dict] = {
        "authors": ["dynamix-adapters developers"],
        "maintainers": ["dynamix-adapters developers"],
        "python_dependencies": ["torch", "safetensors"],
        "y_inner_mtype": ["pd.DataFrame", "pd-multiindex", "pd_multiindex_hier"],
        "capability:multivariate": True,
        "capability:exogenous": False,
        "capability:insample": False,
        "capability:pred_int": True,
        "capability:pred_int:insample": False,
        "capability:update": True,
        "capability:missing_values": False,
        "capability:unequal_length": True,
        "capability:random_state": True,
        "capability:pretrain": True,
        "property:randomness": "derandomized",
        "requires-fh-in-fit": False,
    }

    def __init__(
        self,
        model=None,
        context_length=None,
        preprocessing="auto",
        standardize=True,
        nonstationary="auto",
        n_samples=100,
        point_forecast="path",
        random_state=None,
        on_divergence="nan",
        device="cpu",
    ):
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
        super().__init__()
        # sktime's base data pool, unused here; it exists (empty) for a user who sets remember_data=True after all.
        self._y = self._X = None

    # sktime's predict methods write fh to the instance (self._fh) and read it back, so two threads
    # predicting different horizons could swap them; checking fh under one lock keeps each its own.
    _fh_lock: ClassVar[threading.Lock] = threading.Lock()

    def _check_fh(self, fh, pred_int=False):
        with self._fh_lock:
            return super()._check_fh(fh, pred_int=pred_int)

    def _fit(self, y, X, fh):
        # sktime's fit starts with reset(), which drops the previous fit's pipeline: the options may have changed.
        net = self._pipeline.model
        self._instances, self._series = _split_instances(y)
        self._index_names = list(y.index.names)
        self._columns = y.columns
        # An irregular index is the more basic problem: name it even when y is also too short.
        self._track_cutoffs()
        self._check_lengths(self._instances, self._series)
        self.model_name_ = str(self.model or DEFAULT_MODEL)
        self.n_parameters_ = net.parameter_count()
        self._choose_settings()
        return self

    def _choose_settings(self) -> None:
        """Choose each stored series' "auto" settings (transforms/selection.py) once, for any horizon.

        Every forecast until the next fit, update or pretrain reuses them, so a default
        ``fit`` then ``predict`` validates once, not twice. Writes ``_settings`` and the
        fitted parameters that report them.
        """
        pipeline = self._pipeline
        self._settings = pipeline.choose_settings(self._contexts())
        self.selection_ = [choice.record() for choice in self._settings]
        self.preprocessing_, self.nonstationary_ = _per_series(self.selection_, self._instances is None)
        chosen = {record["preprocessing"] for record in self.selection_}
        embedding = chosen.pop() if len(chosen) == 1 else "per series"
        self.embedding_ = _embedding_used(embedding, len(self._columns), pipeline.model.arch.N)

    @property
    def _pipeline(self) -> DynaMixPipeline:
        """The model (loaded once per process) with this forecaster's options; resolved once per fit.

        After ``pretrain``, the fine-tuned weights (``pretrained_model_``) instead of ``model``.
        """
        if getattr(self, "_loaded_pipeline", None) is None:
            options = ForecastOptions.pick(self.get_params(deep=False))
            tuned = getattr(self, "pretrained_model_", None)
            if tuned is not None:
                self._loaded_pipeline = DynaMixPipeline(tuned, ForecastOptions(**options))
            else:
                self._loaded_pipeline = DynaMixPipeline.from_pretrained(self.model, self.device, **options)
        return self._loaded_pipeline

    def __getstate__(self) -> dict:
        # Never pickled with the forecaster: the torch model stays in this process' cache, and the
        # unpickled forecaster's first use finds it in its own process' cache (or rebuilds it around
        # ``pretrained_model_``, which is pickled: it is the forecaster's state).
        return {**self.__dict__, "_loaded_pipeline": None, "_context_arrays": None}

    def _pretrain(self, y, X=None, fh=None):
        """Fine-tune the weights on every series of the panel ``y`` (see ``training.finetune``).

        Starts from ``model`` and keeps the weights that forecast the held-out end of the
        panel's series best, the starting weights included; ``fit`` and ``predict`` then use
        them. Sets ``pretrained_model_`` (the tuned DynaMix) and ``pretrain_summary_``.
        """
        return self._finetune_on(y, self._pipeline)

    def _pretrain_update(self, y, X=None, fh=None):
        """Fine-tune further on a new panel, starting from the weights the last ``pretrain`` left."""
        return self._finetune_on(y, self._pipeline)

    def _finetune_on(self, y, start: DynaMixPipeline):
        _, frames = _split_instances(y)
        seed = self.random_state if isinstance(self.random_state, int) else 0
        config = FinetuneConfig(seed=seed)
        result = finetune(start, [frame.to_numpy(dtype=np.float64) for frame in frames], config, progress=False)
        self.pretrained_model_ = result.model
        self.pretrain_summary_ = result.summary()
        self._loaded_pipeline = None  # the next use wraps the tuned weights
        if getattr(self, "_series", None) is not None:  # already fitted: the tuned weights choose again
            self._choose_settings()
        return self

    def _update(self, y, X=None, update_params=True):
        # A zero-shot model has no parameters to refit: whatever update_params says, the
        # new observations extend the context the next forecast conditions on.
        new_instances, new_series = _split_instances(y)
        if self._instances is None:
            instances, series = None, [_extend(self._series[0], new_series[0])]
        else:
            instances, series = list(self._instances), list(self._series)
            position = {key: i for i, key in enumerate(instances)}
            for key, frame in zip(new_instances, new_series, strict=True):
                if key in position:
                    series[position[key]] = _extend(series[position[key]], frame)
                else:
                    instances.append(key)
                    series.append(frame)
        self._check_lengths(instances, series)
        self._instances, self._series = instances, series
        self._track_cutoffs()
        self._choose_settings()  # the contexts changed: so may the choices
        return self

    def _update_predict_single(self, y, fh, X=None, update_params=True):
        # sktime's default calls the public update with y already converted to the inner DataFrame, which
        # makes the forecaster remember a DataFrame and return one from then on; the inner calls keep y's type.
        self._update(y, X, update_params=update_params)
        return self._predict(fh, X)

    def _predict(self, fh, X=None):
        steps, index = self._horizon(fh)
        point = self._panel_forecast("predict", int(steps.max()))  # (H, S, D)
        return self._frame(point, steps, index, self._columns)

    def _predict_quantiles(self, fh, X, alpha):
        steps, index = self._horizon(fh)
        samples = self._panel_forecast("predict_samples", int(steps.max()))  # (P, H, S, D)
        quantiles = np.quantile(samples, alpha, axis=0)  # (A, H, S, D)
        # Columns are (variable, alpha) with alpha varying fastest.
        values = quantiles.transpose(1, 2, 3, 0).reshape(*quantiles.shape[1:3], -1)
        return self._frame(values, steps, index, self._get_columns("predict_quantiles", alpha=alpha))

    def _predict_var(self, fh, X=None, cov=False):
        steps, index = self._horizon(fh)
        samples = self._panel_forecast("predict_samples", int(steps.max()))  # (P, H, S, D)
        return self._frame(samples.var(axis=0), steps, index, self._columns)

    def _predict_proba(self, fh, X, marginal=True):
        """skpro's Empirical distribution over the sample paths behind ``predict_quantiles``."""
        from skpro.distributions import Empirical

        steps, index = self._horizon(fh)
        samples = self._panel_forecast("predict_samples", int(steps.max()))  # (P, H, S, D)
        paths = [self._frame(path, steps, index, self._columns) for path in samples]  # one (rows, D) frame per path
        spl = pd.concat(paths, keys=range(len(paths)), names=["sample"])
        return Empirical(spl, index=index, columns=self._columns)

    def _panel_forecast(self, method: str, horizon: int) -> np.ndarray:
        """``pipeline.<method>`` over all series; a panel goes in chunks through sktime's ``backend:parallel``."""
        backend = self.get_config()["backend:parallel"]
        # Fine-tuned weights live in this process only, so a pretrained forecaster forecasts here.
        if backend is None or self._instances is None or getattr(self, "pretrained_model_", None) is not None:
            return getattr(self._pipeline, method)(
                self._contexts(), horizon, names=self._labels(), settings=self._settings
            )
        from .panel import ModelSpec, forecast_chunks_parallel

        # The workers load the weights by name through their own cache; only the name and options travel.
        options = ForecastOptions(**ForecastOptions.pick(self.get_params(deep=False)))
        parallel = {"backend": backend, "backend_params": self.get_config()["backend:parallel:params"]}
        spec = ModelSpec(self.model, options, device=self.device)
        return forecast_chunks_parallel(
            spec, method, self._contexts(), horizon, self._labels(), parallel, self._settings
        )

    def _contexts(self) -> list[np.ndarray]:
        """The stored series as float64 arrays, converted once per fit or update (each forecast reuses them)."""
        converted = getattr(self, "_context_arrays", None)
        if converted is None or converted[0] is not self._series:
            converted = (self._series, [frame.to_numpy(dtype=np.float64) for frame in self._series])
            self._context_arrays = converted
        return converted[1]

    def _labels(self) -> list[str]:
        """How errors name each series: y itself, or a panel instance by its key."""
        if self._instances is None:
            return ["y"]
        return [f"series {key[0] if len(key) == 1 else key!r}" for key in self._instances]

    def _horizon(self, fh):
        """Steps ahead (S, F) of each series for fh, and the forecast index."""
        cutoffs = [self.cutoff] if self._instances is None else self._series_cutoffs
        # sktime's fh conversions cost ~0.4 ms each; series that end together share theirs, so they run once
        # per distinct cutoff (a panel has one or a few), not once per series.
        converted, per_series = {}, []
        for cutoff in cutoffs:
            key = (cutoff[0], getattr(cutoff, "freq", None))
            if key not in converted:
                converted[key] = (fh.to_relative(cutoff).to_numpy(), fh.to_absolute_index(cutoff))
            per_series.append(converted[key])
        offsets = np.stack([relative for relative, _ in per_series]).astype(int)
        # sktime counts an integer fh in index units; the model counts observations.
        spacing = np.array(self._spacings)[:, None]
        if np.any(offsets % spacing):
            bad = int(np.nonzero((offsets % spacing).any(axis=1))[0][0])
            raise ValueError(
                f"fh {offsets[bad].tolist()} falls between the observations of {self._labels()[bad]}: its integer "
                f"index advances by {self._spacings[bad]} per observation, so count fh in multiples of that."
            )
        steps = offsets // spacing
        times = [absolute for _, absolute in per_series]
        if self._instances is None:
            return steps, times[0]
        return steps, _panel_index(self._instances, times, self._index_names)

    def _frame(self, values: np.ndarray, steps: np.ndarray, index: pd.Index, columns) -> pd.DataFrame:
        """Pick each series' fh rows from values (H, S, ...) and stack them series after series."""
        picked = values[steps - 1, np.arange(len(steps))[:, None]]  # (S, F, ...): series s at its own steps
        return pd.DataFrame(picked.reshape(len(index), -1), index=index, columns=columns)

    def _track_cutoffs(self) -> None:
        """Each panel series forecasts from its own last observation, as when sktime loops over a panel.

        Also checks that every series is equally spaced, the one thing a step-by-step model needs of an index.
        """
        labels = self._labels()
        if self._instances is None:
            self._spacings = [_observation_spacing(self._series[0].index, labels[0])]
            if isinstance(self.cutoff, pd.DatetimeIndex) and self.cutoff.freq is None:
                raise ValueError(_IRREGULAR_TIMES.format(which="y"))
            return
        # A panel's series usually share their time index: each distinct one is checked once.
        checked: dict[tuple, tuple[int, pd.Index]] = {}
        per_series = []
        for key, frame, label in zip(self._instances, self._series, labels, strict=True):
            identity = _index_identity(frame.index)
            if identity not in checked:
                checked[identity] = (_observation_spacing(frame.index, label), _series_cutoff(frame.index, key))
            per_series.append(checked[identity])
        self._spacings = [spacing for spacing, _ in per_series]
        self._series_cutoffs = [cutoff for _, cutoff in per_series]
        # sktime's panel-wide cutoff (the latest of these) drops the frequency of a
        # DatetimeIndex, and then rejects every absolute fh; give it back the common one.
        if isinstance(self.cutoff, pd.DatetimeIndex) and self.cutoff.freq is None:
            freqs = {cutoff.freq for cutoff in self._series_cutoffs}
            if len(freqs) == 1:
                self._set_cutoff(pd.DatetimeIndex(self.cutoff, freq=freqs.pop()))

    def _check_lengths(self, instances: list[tuple] | None, series: list[pd.DataFrame]) -> None:
        names = ["y"] if instances is None else [f"series {key} of y" for key in instances]
        self._pipeline.check_lengths([len(frame) for frame in series], len(self._columns), names)

    @classmethod
    def get_test_params(cls, parameter_set="default"):
        """Two tiny offline configurations on a random 3-dim checkpoint in the temp directory.

        Parameters
        ----------
        parameter_set : str, default="default"
            Name of the set of test parameters; only "default" exists.

        Returns
        -------
        params : list of dict
            Parameters for test instances.
        """
        from .weights import tiny_test_checkpoint

        model = str(tiny_test_checkpoint())
        return [
            {"model": model, "n_samples": 20, "random_state": 0},
            {
                "model": model,
                "context_length": 40,
                "preprocessing": "zero_embedding",
                "point_forecast": "median",
                "n_samples": 10,
                "random_state": 1,
            },
        ]


DynaMixForecaster.__doc__ = DynaMixForecaster.__doc__.replace("    {options}", OPTIONS_DOC)


def _split_instances(y: pd.DataFrame) -> tuple[list[tuple] | None, list[pd.DataFrame]]:
    """Instance keys (None for a single series) and one time-indexed frame per series, in y's order.

    A panel whose instances each occupy one run of rows (as sktime's mtypes store them) with
    columns of one dtype is cut into views of its values: pandas' groupby and ``droplevel``
    cost about 200 us a series, the views about 25. Other panels go through groupby.
    """
    if not isinstance(y.index, pd.MultiIndex):
        return None, [y]
    levels = list(range(y.index.nlevels - 1))
    instance_codes = y.index.codes[:-1]
    changed = np.zeros(len(y), dtype=bool)
    changed[:1] = True
    for codes in instance_codes:
        changed[1:] |= codes[1:] != codes[:-1]
    starts = np.flatnonzero(changed)
    keys = [
        tuple(level[codes[start]] for level, codes in zip(y.index.levels[:-1], instance_codes, strict=True))
        for start in starts.tolist()
    ]
    complete = all((codes >= 0).all() for codes in y.index.codes)  # no missing level value
    if complete and len(set(keys)) == len(keys) and y.dtypes.nunique() == 1:
        # Each series' times as droplevel makes them (the time level taken at its codes: a regular
        # range keeps its frequency), its values a view of one copy (later edits of y change nothing).
        values, times, time_codes = y.to_numpy(copy=True), y.index.levels[-1], y.index.codes[-1]
        bounds = zip(starts.tolist(), [*starts[1:].tolist(), len(y)], strict=True)
        frames = [
            pd.DataFrame(values[a:b], index=times.take(time_codes[a:b]), columns=y.columns, copy=False)
            for a, b in bounds
        ]
        return keys, frames
    keys, frames = [], []
    for key, frame in y.groupby(level=levels if len(levels) > 1 else 0, sort=False):
        keys.append(key if isinstance(key, tuple) else (key,))
        frames.append(frame.droplevel(levels))
    return keys, frames


def _extend(history: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """history continued by new; where both have a time point, the new value wins."""
    return pd.concat([history[~history.index.isin(new.index)], new]).sort_index()


_IRREGULAR_TIMES = (
    "Cannot infer the frequency of {which}: its DatetimeIndex is irregular or shorter than 3. DynaMix "
    "forecasts equally spaced observations; give it a regular DatetimeIndex (e.g. y.asfreq('D') and fill the "
    "gaps), a PeriodIndex, or a RangeIndex."
)


def _panel_index(instances: list[tuple], times: list[pd.Index], names: list) -> pd.MultiIndex:
    """The (instance..., time) index of a panel forecast: each instance's key repeated over its own times."""
    counts = [len(series_times) for series_times in times]
    keys = pd.MultiIndex.from_tuples(instances).repeat(counts)
    stacked = times[0].append(times[1:]) if len(times) > 1 else times[0]
    arrays = [keys.get_level_values(level) for level in range(keys.nlevels)]
    return pd.MultiIndex.from_arrays([*arrays, stacked], names=names)


def _index_identity(index: pd.Index) -> tuple:
    """Equal for equal time indexes (type, dtype, frequency and every value), in a few microseconds."""
    values = index.asi8 if isinstance(index, (pd.DatetimeIndex, pd.PeriodIndex)) else index.to_numpy()
    data = values.tobytes() if values.dtype != object else repr(values.tolist()).encode()
    freq = getattr(index, "freqstr", None)
    return type(index), str(index.dtype), freq, len(index), hashlib.blake2b(data, digest_size=16).digest()


def _series_cutoff(index: pd.Index, key: tuple) -> pd.Index:
    """The last time point of one panel series, with the frequency its panel level does not carry."""
    cutoff = index[-1:]
    if not isinstance(index, pd.DatetimeIndex) or index.freq is not None:
        return cutoff
    freq = pd.infer_freq(index) if len(index) >= 3 else None
    if freq is None:
        raise ValueError(_IRREGULAR_TIMES.format(which=f"series {key}"))
    return pd.DatetimeIndex(cutoff, freq=freq)


def _observation_spacing(index: pd.Index, label: str) -> int:
    """Index units per observation: the common gap of an integer index, 1 for any other index."""
    if not pd.api.types.is_integer_dtype(index) or len(index) < 2:
        return 1
    gaps = np.unique(np.diff(index.to_numpy()))
    if len(gaps) > 1:
        raise ValueError(
            f"The integer index of {label} is irregular (gaps from {gaps[0]} to {gaps[-1]}), but DynaMix forecasts "
            "equally spaced observations. Resample to a regular grid, or drop the index with reset_index(drop=True)."
        )
    return int(gaps[0])


def _embedding_used(preprocessing: str, n_dims: int, model_dims: int) -> str:
    if n_dims == model_dims:
        return "none"
    if n_dims < model_dims:
        return preprocessing
    return f"{preprocessing}, each of the {n_dims} dims forecast as its own series"


def _per_series(records: list[dict], single: bool) -> tuple:
    """(preprocessing, nonstationary) chosen: values for one series, lists (by instance) for a panel."""
    preprocessing = [r["preprocessing"] for r in records]
    nonstationary = [r["nonstationary"] for r in records]
    return (preprocessing[0], nonstationary[0]) if single else (preprocessing, nonstationary)

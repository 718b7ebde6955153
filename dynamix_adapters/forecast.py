"""``forecast``: one call from a context to a forecast, for scripts and notebooks.

A thin convenience over :class:`~dynamix_adapters.pipeline.DynaMixPipeline`, which
does the work and is the object to keep when forecasting repeatedly.
"""

from __future__ import annotations

import numpy as np

from .model import DynaMix
from .options import ForecastOptions
from .pipeline import DynaMixPipeline, positive_int
from .weights import load_model


def forecast(model, context, horizon: int, *, n_samples: int | None = None, initial_x=None, **options) -> np.ndarray:
    """Forecast ``horizon`` steps after ``context`` with a DynaMix model, zero-shot.

    Parameters
    ----------
    model : DynaMix, str, path or None
        A loaded model, a registered name, a weights path, or None for the default.
    context : array-like
        numpy or torch, shaped (T_C, N_data) or (T_C, S, N_data); or a list of S
        arrays (T_s, N_data) of different lengths.
    horizon : int
        Steps to forecast, at least 1.
    n_samples : int, optional
        If given, draw this many sample paths and return them on a leading axis.
    initial_x : array-like, optional
        Start the rollout here instead of at the last context frame: (k,) or (S, k)
        with k <= N_data, in data scale; missing model dims are taken from the
        context frame nearest to it.
    **options
        :class:`~dynamix_adapters.options.ForecastOptions` fields (``preprocessing``,
        ``standardize``, ``nonstationary``, ``random_state``, ``context_length``), and
        ``backend``: "auto" or a name from ``rollout.BACKENDS``.

    Returns
    -------
    numpy.ndarray
        (H, N_data) or (H, S, N_data), with (n_samples,) in front when sampling.
        Always finite.

    Raises
    ------
    ValueError
        For bad input, with the fix in the message.
    TypeError
        For non-numeric or complex input.
    DivergenceError
        A ValueError, when any trajectory diverges. Policy: stop and raise, never
        clamp. A rollout has diverged when its state turns non-finite or exceeds
        ``rollout.dispatch.EXPLOSION_FACTOR`` (10) times the largest magnitude of its context in
        the model's standardized space (at least 10); from there DynaMix does not
        return to the attractor, so every later value would be meaningless. The
        message, also logged as a warning, names each diverged series and its first
        bad step.

    Examples
    --------
    >>> import numpy as np
    >>> from dynamix_adapters import forecast
    >>> from dynamix_adapters.model import Architecture, DynaMix
    >>> tiny = DynaMix(Architecture(M=8, N=3, J=2, P=1))
    >>> context = np.sin(np.linspace(0, 20, 200))[:, None]
    >>> forecast(tiny, context, 5, random_state=0).shape
    (5, 1)
    """
    backend = options.pop("backend", "auto")
    pipeline = DynaMixPipeline(
        model if isinstance(model, DynaMix) else load_model(model), ForecastOptions(**options), backend
    )
    paths = pipeline.sample_paths(
        context, horizon, 1 if n_samples is None else positive_int(n_samples, "n_samples"), initial_x=initial_x
    )
    return paths[0] if n_samples is None else paths

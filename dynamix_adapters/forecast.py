"""Zero-shot forecasting: data -> preprocessing -> batched rollout -> data scale.

Data flows per series (each (T_s, D)): optional Box-Cox and trend removal, then
per-dim standardization, then an embedding to the model's N dims (or, when D > N,
a split into D univariate series), then one batched rollout for all series and
sample paths together, and finally the inverse transforms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from numbers import Integral

import numpy as np
import torch

from .engine import DivergenceError, rollout
from .model import DynaMix
from .preprocessing import Scaler, TrendTransform, check_preprocessing, embed, min_context_length
from .weights import load_model


def forecast(
    model,
    context,
    horizon: int,
    *,
    preprocessing: str = "pos_embedding",
    standardize: bool = True,
    nonstationary: bool = False,
    initial_x=None,
    random_state=None,
    n_samples: int | None = None,
    backend: str = "auto",
) -> np.ndarray:
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
    preprocessing : str
        How series with fewer dims than the model are embedded: "pos_embedding",
        "delay_embedding", "delay_embedding_random" or "zero_embedding".
    standardize : bool
        Z-score each series and dim over time before the model sees it.
    nonstationary : bool
        Remove a Box-Cox transform and a power-law trend first, and restore them on output.
    initial_x : array-like, optional
        Start the rollout here instead of at the last context frame: (k,) or (S, k)
        with k <= N_data, in data scale; missing model dims are taken from the
        context frame nearest to it.
    random_state : int, numpy Generator or None
        Seeds every random draw (gating noise, random lags).
    n_samples : int, optional
        If given, draw this many sample paths and return them on a leading axis.
    backend : str
        Rollout implementation: "auto" or a name from ``engine.BACKENDS``.

    Returns
    -------
    numpy.ndarray
        (H, N_data) or (H, S, N_data), with (n_samples,) in front when sampling.

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
    net = model if isinstance(model, DynaMix) else load_model(model)
    series, layout = as_series_list(context)
    paths = forecast_paths(
        net,
        series,
        horizon,
        n_paths=1 if n_samples is None else _positive_int(n_samples, "n_samples"),
        preprocessing=preprocessing,
        standardize=standardize,
        nonstationary=nonstationary,
        initial_x=initial_x,
        random_state=random_state,
        backend=backend,
    )  # (P, H, S, D)
    if layout == "single":
        paths = paths[:, :, 0, :]
    return paths[0] if n_samples is None else paths


def as_series_list(context) -> tuple[list[np.ndarray], str]:
    """Split a context into a list of (T_s, D) float64 arrays; also return its layout."""
    if isinstance(context, (list, tuple)):
        if not context:
            raise ValueError("context is an empty list; pass at least one series.")
        series = [_as_float_array(c, f"context[{i}]") for i, c in enumerate(context)]
        for i, s in enumerate(series):
            if s.ndim != 2:
                raise ValueError(f"context[{i}] must be 2-D (T, N_data), got shape {s.shape}.")
        if len({s.shape[1] for s in series}) > 1:
            raise ValueError(f"All series need the same number of dims, got {[s.shape[1] for s in series]}.")
        return series, "list"
    array = _as_float_array(context, "context")
    if array.ndim == 2:
        return [array], "single"
    if array.ndim == 3:
        return [array[:, s, :] for s in range(array.shape[1])], "batch"
    raise ValueError(
        f"context must have 2 dims (T_C, N_data) or 3 dims (T_C, S, N_data), got shape {array.shape}. "
        "Reshape a 1-D series with x[:, None]."
    )


def _as_float_array(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}.")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got dtype {array.dtype}.")
    array = array.astype(np.float64)
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    if not np.all(np.isfinite(array)):
        bad = "NaN" if np.isnan(array).any() else "inf"
        raise ValueError(f"{name} contains {bad}; fill or drop missing and infinite values before forecasting.")
    return array


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def forecast_paths(
    net: DynaMix,
    series: Sequence[np.ndarray],
    horizon: int,
    *,
    n_paths: int,
    preprocessing: str,
    standardize: bool,
    nonstationary: bool,
    initial_x,
    random_state,
    backend: str = "auto",
) -> np.ndarray:
    """Forecast a list of (T_s, D) series; returns (n_paths, H, S, D) in data scale.

    Random draws come from streams keyed by (seed, series content, path), so a
    series gets the same forecast whatever else is in the batch and wherever it sits.
    """
    horizon = _positive_int(horizon, "horizon")
    check_preprocessing(preprocessing)
    n_model = net.arch.N
    dims = series[0].shape[1]
    shortest = min(len(s) for s in series)
    needed = min_context_length(preprocessing, dims, n_model)
    if shortest < needed:
        raise ValueError(
            f"context has {shortest} time steps, but preprocessing={preprocessing!r} with {dims} dims "
            f"needs at least {needed}. Pass a longer context."
        )
    starts = _initial_points(initial_x, len(series), dims, n_model, nonstationary)
    split = dims > n_model

    entropy = seed_entropy(random_state)
    units, unit_x0, unit_keys, transforms = [], [], [], []
    for s, x in enumerate(series):
        trends = [TrendTransform.fit(x[:, d]) for d in range(dims)] if nonstationary else None
        level = np.column_stack([t.transform(x[:, d]) for d, t in enumerate(trends)]) if trends else x
        scaler = Scaler.fit(level, standardize)
        scaled = scaler.transform(level)
        transforms.append((trends, scaler, Scaler.fit(x).constant, x[-1]))
        pieces = [scaled[:, [d]] for d in range(dims)] if split else [scaled]
        for d, piece in enumerate(pieces):
            # Keyed by the raw values this unit forecasts: a series (or a split-off dim) gets
            # the same draws alone, in any batch, at any position.
            key = content_key(x[:, [d]] if split else x)
            embedded, _ = embed(piece, preprocessing, n_model, np.random.default_rng([entropy, key, 0]))
            units.append(embedded)
            unit_keys.append(key)
            start = None
            if starts is not None:
                given = (starts[s] - scaler.mean[: starts.shape[1]]) / scaler.std[: starts.shape[1]]
                start = given[[d]] if split else given
            unit_x0.append(_complete_start(embedded, start))

    length = max(len(u) for u in units)
    context = np.zeros((len(units), length, n_model), dtype=np.float32)
    for u, frames in enumerate(units):
        context[u, length - len(frames) :] = frames
    valid_from = np.array([length - len(u) for u in units])
    x0 = np.tile(np.stack(unit_x0), (n_paths, 1))
    unit = np.tile(np.arange(len(units)), n_paths)
    streams = [np.random.default_rng([entropy, key, path + 1]) for path in range(n_paths) for key in unit_keys]

    observed = rollout(net, context, valid_from, x0, unit, horizon, streams, backend)  # (H, P*U, N)
    _raise_if_diverged(observed, len(units), dims if split else 1)
    observed = observed.reshape(horizon, n_paths, len(series), -1, n_model)
    scaled = observed[..., 0] if split else observed[:, :, :, 0, :dims]  # (H, P, S, D)
    out = np.empty((n_paths, horizon, len(series), dims))
    for s, (trends, scaler, constant, last) in enumerate(transforms):
        values = scaler.inverse(scaled[:, :, s, :].astype(np.float64))  # (H, P, D)
        if trends:
            values = np.stack([t.inverse(values[..., d]) for d, t in enumerate(trends)], axis=-1)
        values[..., constant] = last[constant]
        out[:, :, s, :] = values.transpose(1, 0, 2)
    _raise_if_diverged(out.transpose(1, 0, 2, 3).reshape(horizon, -1, dims), len(series), 1)
    return out


def seed_entropy(random_state) -> int:
    """A non-negative integer seed from an int, a numpy Generator, or None (fresh entropy)."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if isinstance(random_state, bool) or not isinstance(random_state, Integral) or random_state < 0:
        raise ValueError(f"random_state must be None, a non-negative int or a numpy Generator, got {random_state!r}.")
    return int(random_state)


def content_key(x: np.ndarray) -> int:
    """A stable 64-bit key of an array's shape and values, the same in every process."""
    digest = hashlib.blake2b(repr(x.shape).encode() + np.ascontiguousarray(x).tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def _initial_points(initial_x, n_series: int, dims: int, n_model: int, nonstationary: bool) -> np.ndarray | None:
    if initial_x is None:
        return None
    if nonstationary:
        raise ValueError("initial_x cannot be combined with nonstationary=True; drop one of them.")
    points = _as_float_array(initial_x, "initial_x")
    if points.ndim == 1:
        points = np.broadcast_to(points, (n_series, len(points)))
    if points.ndim != 2 or points.shape[0] != n_series:
        raise ValueError(f"initial_x must be (k,) or ({n_series}, k) for {n_series} series, got shape {points.shape}.")
    k = points.shape[1]
    if k > dims or (dims > n_model and k != dims):
        allowed = f"exactly {dims}" if dims > n_model else f"1 to {dims}"
        raise ValueError(f"initial_x has {k} dims, but the context has {dims}; give {allowed} dims.")
    return points


def _complete_start(embedded: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    """The rollout's first observation: the last frame, or ``start`` completed from the nearest frame."""
    if start is None:
        return embedded[-1]
    k = len(start)
    nearest = embedded[np.argmin(((embedded[:, :k] - start) ** 2).sum(axis=1))]
    return np.concatenate([start, nearest[k:]])


def _raise_if_diverged(values: np.ndarray, n_units: int, units_per_series: int) -> None:
    """values (H, P*U, ...): name the first series and step that left the finite range."""
    finite = np.isfinite(values).reshape(values.shape[0], values.shape[1], -1).all(axis=2)
    if finite.all():
        return
    step, trajectory = np.argwhere(~finite)[0]
    series = (trajectory % n_units) // units_per_series
    raise DivergenceError(
        f"The forecast of series {series} diverged (non-finite values) at step {step + 1}. "
        "Try standardize=True, a different preprocessing, or a shorter horizon."
    )

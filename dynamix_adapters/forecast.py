"""Zero-shot forecasting: data -> preprocessing -> batched rollout -> data scale.

Data flows per series (each (T_s, D)): optional Box-Cox and trend removal, then
per-dim standardization, then an embedding to the model's N dims (or, when D > N,
a split into D univariate series), then one batched rollout for all series and
sample paths together, and finally the inverse transforms.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from numbers import Integral

import numpy as np
import torch

from .engine import DivergenceError, rollout
from .model import DynaMix
from .preprocessing import Scaler, TrendTransform, check_preprocessing, embed, min_context_length
from .weights import load_model

logger = logging.getLogger(__name__)

# A rollout whose state leaves this many times its context's largest magnitude (in the
# model's standardized space) has diverged. With the official weights, forecasts of the
# published series stay within 1.1 times it, and 271 of 272 non-diverging random series
# within 4.7 times; a diverging state grows exponentially, so it crosses the bound within a
# few dozen steps of leaving the attractor, long before float32 overflows (docs/reliability.md).
EXPLOSION_FACTOR = 10.0
SCAN_STEPS = 4096


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
        ``EXPLOSION_FACTOR`` (10) times the largest magnitude of its context in the
        model's standardized space (at least 10); from there DynaMix does not return
        to the attractor, so every later value would be meaningless. The message,
        also logged as a warning, names each diverged series and its first bad step.

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
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Forecast a list of (T_s, D) series; returns (n_paths, H, S, D) in data scale.

    Random draws come from streams keyed by (seed, series content, path), so a
    series gets the same forecast whatever else is in the batch and wherever it sits.
    ``names`` label the series in divergence errors (default "series 0", "series 1", ...).
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

    labels = list(names) if names is not None else [f"series {s}" for s in range(len(series))]
    unit_labels = [f"{labels[s]} (dim {d})" for s in range(len(series)) for d in range(dims)] if split else labels
    length = max(len(u) for u in units)
    context = np.zeros((len(units), length, n_model), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by the check below
        for u, frames in enumerate(units):
            context[u, length - len(frames) :] = frames
        starts_32 = np.stack(unit_x0).astype(np.float32)
    _raise_if_unrepresentable(context, starts_32, unit_labels, nonstationary, standardize)
    valid_from = np.array([length - len(u) for u in units])
    x0 = np.tile(np.stack(unit_x0), (n_paths, 1))
    unit = np.tile(np.arange(len(units)), n_paths)
    streams = [np.random.default_rng([entropy, key, path + 1]) for path in range(n_paths) for key in unit_keys]

    observed = rollout(net, context, valid_from, x0, unit, horizon, streams, backend)  # (H, P*U, N)
    _raise_if_diverged(observed, context, valid_from, x0, unit, unit_labels)
    observed = observed.reshape(horizon, n_paths, len(series), -1, n_model)
    scaled = observed[..., 0] if split else observed[:, :, :, 0, :dims]  # (H, P, S, D)
    out = np.empty((n_paths, horizon, len(series), dims))
    for s, (trends, scaler, constant, last) in enumerate(transforms):
        values = scaler.inverse(scaled[:, :, s, :].astype(np.float64))  # (H, P, D)
        if trends:
            values = np.stack([t.inverse(values[..., d]) for d, t in enumerate(trends)], axis=-1)
        values[..., constant] = last[constant]
        out[:, :, s, :] = values.transpose(1, 0, 2)
    _raise_if_overflowed(out, labels, nonstationary)
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


def _raise_if_unrepresentable(context, starts, unit_labels: list[str], nonstationary: bool, standardize: bool):
    """The model computes in float32: a preprocessed context or start beyond its range cannot be forecast."""
    bad = ~(np.isfinite(context).all(axis=(1, 2)) & np.isfinite(starts).all(axis=1))
    if not bad.any():
        return
    if nonstationary:
        fix = "the nonstationary transform (Box-Cox and trend) blew the series up; use nonstationary=False"
    elif not standardize:
        fix = "values this large need standardize=True"
    else:
        fix = "rescale the data (or initial_x) towards unit scale"
    raise ValueError(
        f"After preprocessing, {unit_labels[int(np.argmax(bad))]} exceeds the float32 range the model "
        f"computes in: {fix}."
    )


def _raise_if_diverged(observed, context, valid_from, x0, unit, unit_labels: list[str]) -> None:
    """Stop at the first non-finite or exploding step of any trajectory (see ``forecast``), naming its series.

    observed (H, B, N) in model space; trajectory b rolls unit ``unit[b]`` from ``x0[b]``.
    """
    radius = np.array([np.abs(frames[start:]).max() for frames, start in zip(context, valid_from, strict=True)])
    limit = EXPLOSION_FACTOR * np.maximum(np.maximum(radius[unit], np.abs(x0).max(axis=1)), 1.0)  # (B,)
    first_bad = np.full(len(unit), -1)
    for start in range(0, len(observed), SCAN_STEPS):  # in chunks: no (H, B, N) temporary
        peak = np.abs(observed[start : start + SCAN_STEPS]).max(axis=2)  # (k, B); NaN stays NaN
        bad = ~(peak <= limit)
        new = (first_bad < 0) & bad.any(axis=0)
        first_bad[new] = start + bad[:, new].argmax(axis=0)
    if np.all(first_bad < 0):
        return
    problems = {}
    for b in np.argsort(np.where(first_bad < 0, len(observed), first_bad), kind="stable"):
        step, label = first_bad[b], unit_labels[unit[b]]
        if step < 0 or label in problems:
            continue
        values = observed[step, b]
        size = "non-finite" if not np.isfinite(values).all() else f"{np.abs(values).max():.3g} > bound {limit[b]:.3g}"
        problems[label] = f"{label} at step {step + 1} ({size})"
    message = (
        f"The forecast diverged: {'; '.join(problems.values())}. Its standardized state passed "
        f"{EXPLOSION_FACTOR:g} times its context's largest value and does not come back, so no forecast is returned. "
        "Usual causes: an outlier at the end of the context, a very short or untypical context, or "
        "standardize=False; remove the outlier, pass a longer context, or keep standardize=True."
    )
    # Logged as well: a backtest that catches the error (e.g. sktime's error_score=nan) keeps the trace.
    logger.warning(message)
    raise DivergenceError(message)


def _raise_if_overflowed(out: np.ndarray, labels: list[str], nonstationary: bool) -> None:
    """out (P, H, S, D) in data scale: finite model output can still overflow on the way back."""
    finite = np.isfinite(out).all(axis=(0, 3))  # (H, S)
    if finite.all():
        return
    step, s = np.argwhere(~finite)[0]
    cause = (
        "extrapolating the nonstationary trend and Box-Cox transform; use a shorter horizon or nonstationary=False"
        if nonstationary
        else "scaling back to the data's range; rescale the data towards unit scale"
    )
    raise DivergenceError(f"The forecast of {labels[s]} overflowed at step {step + 1} while {cause}.")

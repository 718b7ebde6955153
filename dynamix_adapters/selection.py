"""In-context validation: pick each series' preprocessing and calibrate its spread.

With ``preprocessing="auto"`` or ``nonstationary="auto"`` the pipeline holds out the last
``VALIDATION_WINDOWS`` windows of each context (rolling origins, each ``step`` long with
``step = min(T // (VALIDATION_WINDOWS + 2), MAX_VALIDATION_STEPS)``, origins ``step //
VALIDATION_WINDOWS`` apart, the last one ``step`` before the end: overlapping, so the
validation contexts stay close to the real one), forecasts each window from the context
before it with every candidate setting, and keeps the candidate with the lowest
validation error. All series, candidates and windows go through the model in one batched
rollout of ``VALIDATION_PATHS`` paths each.

The error is a MASE: the mean absolute error of the validation path, scaled by the mean
absolute one-step change of the validation context, averaged over windows and dims.
Candidates are tried in order (``AUTO_EMBEDDINGS``, reference first, each without and
then with the non-stationary transform); a later one must beat the best earlier one by
``MARGIN`` to be kept, so a transform that extrapolates a trend has to earn its place.
A candidate that diverges (or overflows back in data space) in any
window is disqualified. Series with as many dims as the model need no embedding: only the
non-stationary transform is chosen, and the record says ``embedding="none"``.

The validation errors of the chosen candidate give the forecast's spread per horizon
step (:mod:`.calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .calibration import Spread
from .transforms.encoding import SeriesEncoding
from .engine import diverged_steps, rollout
from .options import AUTO, ForecastOptions
from .transforms.preprocessing import EMBEDDINGS, min_context_length

VALIDATION_WINDOWS = 3
# One path per candidate and window: the error then also holds the paths' own noise, which the
# calibrated spread should cover, and validation costs one trajectory per unit.
VALIDATION_PATHS = 1
# Shortest validation context: below it neither the embeddings' period and lag estimates nor a
# Box-Cox fit mean anything, and validation is skipped.
MIN_VALIDATION_CONTEXT = 10
# A candidate must beat the earlier ones by this share of their validation MASE. A few windows of
# a short series rank near-equal candidates at random (on Track B's lynx and sunspots all of them
# score 2-3 and the pick was noise); 10% keeps the reference unless another is clearly better.
MARGIN = 0.10
# Candidate embeddings, reference first: delay_embedding is Track B's best single fixed setting
# (median MASE 1.15 with the official weights). zero_embedding is left out: its 1-D state cannot
# oscillate, and it was the worst variant on every track (Track B median MASE 1.79).
AUTO_EMBEDDINGS = ("delay_embedding", "pos_embedding", "delay_embedding_random")
# The non-stationary transform must beat the best stationary candidate by more: with a 10% margin it
# won by chance on 18% of Track A's chaotic cases and raised the official weights' median D_stsp by
# 10%, while on trending series it wins by a factor of 2 or more (airline, co2).
NONSTATIONARY_MARGIN = 0.25
# The windows do not depend on the horizon asked for: a forecast's first steps then never change
# with how far it reaches (sktime's fh subsets, backtests). Capped for cost; past the validation
# horizon the calibrated spread extrapolates (calibration.py).
MAX_VALIDATION_STEPS = 16


@dataclass(frozen=True)
class Selection:
    """What auto chose for one series, and what it measured.

    ``errors`` maps each candidate (``"pos_embedding"``, ``"pos_embedding + nonstationary"``,
    ...) to its validation MASE (inf: diverged). ``windows`` is 0 when the context was too
    short to validate: the defaults (``pos_embedding``, stationary) are used, uncalibrated.
    """

    preprocessing: str
    nonstationary: bool
    embedding: str  # the preprocessing, or "none" for series with as many dims as the model
    windows: int = 0
    validation_horizon: int = 0
    errors: dict[str, float] = field(default_factory=dict)
    spread: Spread | None = None

    def options(self, base: ForecastOptions) -> ForecastOptions:
        return base.replace(preprocessing=self.preprocessing, nonstationary=self.nonstationary)

    def record(self) -> dict:
        """The choice as plain data, for logs, tables and ``get_fitted_params``."""
        return {
            "preprocessing": self.embedding,
            "nonstationary": self.nonstationary,
            "validation_windows": self.windows,
            "validation_mase": self.errors.get(_label(self.preprocessing, self.nonstationary), np.nan),
        }


def candidates(options: ForecastOptions, dims: int, model_dims: int, stationary_only: bool) -> list[tuple[str, bool]]:
    """(preprocessing, nonstationary) pairs to validate, simplest first."""
    if options.preprocessing != AUTO:
        embeddings = [options.preprocessing]
    elif dims == model_dims:
        embeddings = [AUTO_EMBEDDINGS[0]]  # no embedding happens: one stands for all
    else:
        embeddings = list(AUTO_EMBEDDINGS)
    flags = [False, True] if options.nonstationary == AUTO and not stationary_only else [options.nonstationary is True]
    return [(embedding, flag) for flag in flags for embedding in embeddings]


def select(pipeline, series: list[np.ndarray], entropy: int, stationary_only: bool) -> list[Selection]:
    """One Selection per series; without "auto" options, the options themselves (nothing runs)."""
    options, model_dims = pipeline.options, pipeline.model.arch.N
    dims = series[0].shape[1]
    embedding = "none" if dims == model_dims else None
    if AUTO not in (options.preprocessing, options.nonstationary):
        fixed = Selection(options.preprocessing, options.nonstationary, embedding or options.preprocessing)
        return [fixed] * len(series)
    pairs = candidates(options, dims, model_dims, stationary_only)
    plans = [_plan(x, pairs, model_dims) for x in series]
    errors = _validate(pipeline, series, plans, entropy)
    return [_choose(plan, error, embedding) for plan, error in zip(plans, errors, strict=True)]


@dataclass(frozen=True)
class _Plan:
    """The validation windows of one series and the candidates that can forecast from them."""

    step: int
    cuts: tuple[int, ...]  # validation origins: forecast x[cut : cut + step] from x[:cut]
    pairs: tuple[tuple[str, bool], ...]


def _plan(x: np.ndarray, pairs: list[tuple[str, bool]], model_dims: int) -> _Plan:
    length = len(x)
    step = min(length // (VALIDATION_WINDOWS + 2), MAX_VALIDATION_STEPS)
    spacing = max(1, step // VALIDATION_WINDOWS)
    cuts = tuple(length - step - k * spacing for k in range(VALIDATION_WINDOWS - 1, -1, -1)) if step >= 1 else ()
    if not cuts or cuts[0] < MIN_VALIDATION_CONTEXT:
        return _Plan(0, (), ())
    usable = tuple(p for p in pairs if min_context_length(p[0], x.shape[1], model_dims) <= cuts[0])
    return _Plan(step, cuts, usable)


def _validate(pipeline, series: list[np.ndarray], plans: list[_Plan], entropy: int) -> list[np.ndarray]:
    """Per series, (candidates, windows) MASE and (candidates, windows, step, D) standardized errors.

    Every series, candidate and window is one unit of a single batched rollout.
    """
    jobs, encodings = [], []
    for s, (x, plan) in enumerate(zip(series, plans, strict=True)):
        for c, (embedding, flag) in enumerate(plan.pairs):
            options = pipeline.options.replace(preprocessing=embedding, nonstationary=flag)
            for k, cut in enumerate(plan.cuts):
                encoding = SeriesEncoding.fit(x[:cut], options, pipeline.model.arch.N, entropy)
                if all(np.isfinite(unit.frames).all() and np.isfinite(unit.start).all() for unit in encoding.units):
                    jobs.append((s, c, k))
                    encodings.append(encoding)
    results = [_empty_result(plan, x.shape[1]) for x, plan in zip(series, plans, strict=True)]
    if not jobs:
        return results
    labels = [f"validation {job}" for job in jobs]
    batch = pipeline._batch(encodings, labels, VALIDATION_PATHS, entropy)
    length = max(plan.step for plan in plans)
    observed = rollout(pipeline.model, batch, length, pipeline.backend)  # (L, P*U, N)
    diverged = (diverged_steps(observed, batch) >= 0).reshape(VALIDATION_PATHS, -1).any(axis=0)  # (U,)
    observed = observed.reshape(length, VALIDATION_PATHS, -1, pipeline.model.arch.N)
    first = np.cumsum([0] + [len(e.units) for e in encodings])
    for j, ((s, c, k), encoding) in enumerate(zip(jobs, encodings, strict=True)):
        if diverged[first[j] : first[j + 1]].any():
            continue
        plan, x = plans[s], series[s]
        with np.errstate(all="ignore"):
            paths = encoding.decode(observed[: plan.step, :, first[j] : first[j + 1]])  # (P, step, D)
        _score(results[s], (c, k), x[: plan.cuts[k]], paths, x[plan.cuts[k] : plan.cuts[k] + plan.step])
    return results


def _empty_result(plan: _Plan, dims: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (len(plan.pairs), len(plan.cuts))
    return np.full(shape, np.inf), np.full((*shape, plan.step, dims), np.nan)


def _score(result, where: tuple[int, int], context: np.ndarray, paths: np.ndarray, truth: np.ndarray) -> None:
    """Write one window's MASE and standardized errors of the median path into result."""
    point = np.median(paths, axis=0)  # (step, D)
    if not np.isfinite(point).all():
        return
    scale = np.abs(np.diff(context, axis=0)).mean(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    result[0][where] = float((np.abs(point - truth) / scale).mean())
    std = context.std(axis=0)
    result[1][where] = (truth - point) / np.where(std > 0, std, 1.0)


def _choose(plan: _Plan, result: tuple[np.ndarray, np.ndarray], embedding: str | None) -> Selection:
    """The simplest candidate within MARGIN of the best; the defaults when nothing validated."""
    mase, errors = result
    mean = mase.mean(axis=1) if mase.size else np.array([])
    if not np.isfinite(mean).any():
        return Selection(EMBEDDINGS[0], False, embedding or EMBEDDINGS[0])
    best = 0 if np.isfinite(mean[0]) else int(np.argmax(np.isfinite(mean)))
    for c in range(best + 1, len(mean)):
        margin = NONSTATIONARY_MARGIN if plan.pairs[c][1] and not plan.pairs[best][1] else MARGIN
        if mean[c] < mean[best] * (1 - margin):
            best = c
    chosen, flag = plan.pairs[best]
    return Selection(
        preprocessing=chosen,
        nonstationary=flag,
        embedding=embedding or chosen,
        windows=len(plan.cuts),
        validation_horizon=plan.step,
        errors={_label(*pair): float(m) for pair, m in zip(plan.pairs, mean, strict=True)},
        spread=Spread.fit(errors[best], stationary=not flag),
    )


def _label(preprocessing: str, nonstationary: bool) -> str:
    return preprocessing + (" + nonstationary" if nonstationary else "")

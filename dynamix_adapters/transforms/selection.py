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

import functools
from dataclasses import dataclass, field, replace

import numpy as np

from ..options import AUTO, ForecastOptions
from ..rollout import content_key, diverged_steps, rollout
from .calibration import Spreads
from .encoding import BatchEncoding
from .preprocessing import EMBEDDINGS, min_context_length

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
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Validation jobs (series x candidates x windows) encoded and rolled out together: enough to fill the
# batched kernel's tiles, few enough that the temporaries stay off the page-fault path (pipeline.py).
VALIDATION_CHUNK_JOBS = 2048


@dataclass(frozen=True)
class Selection:
    """What auto chose for one series, and what it measured.

    ``errors`` maps each candidate (``"pos_embedding"``, ``"pos_embedding + nonstationary"``,
    ...) to its validation MASE (inf: diverged). ``windows`` is 0 when the context was too
    short to validate: the defaults (``pos_embedding``, stationary) are used, uncalibrated.
    ``validation_errors`` (windows, step, D) are the chosen candidate's standardized errors,
    from which a forecast of sample paths fits the spread (``Spreads.fit``, all units
    at once; a point forecast never does); None leaves the sample paths uncalibrated.
    ``spread`` is that fit for this series alone.
    """

    preprocessing: str
    nonstationary: bool
    embedding: str  # the preprocessing, or "none" for series with as many dims as the model
    windows: int = 0
    validation_horizon: int = 0
    errors: dict[str, float] = field(default_factory=dict)
    validation_errors: np.ndarray | None = field(default=None, compare=False, repr=False)
    key: int | None = None  # content key of the context it was chosen on; None for explicit options
    dims: tuple[Selection, ...] = ()  # a series forecast dim by dim: each dim's own Selection

    @functools.cached_property
    def spread(self) -> Spreads | None:
        """The calibration's error scale per horizon step, as a forecast fits it (one unit); None: uncalibrated."""
        if self.validation_errors is None:
            return None
        spreads = Spreads.fit([self.validation_errors], [not self.nonstationary])
        return spreads if spreads.fitted[0] else None

    @classmethod
    def per_dim(cls, dims: list[Selection]) -> Selection:
        """A series with more dims than the model, each dim forecast (and chosen for) as its own series."""
        preprocessing, nonstationary = _common([d.preprocessing for d in dims]), any(d.nonstationary for d in dims)
        return cls(preprocessing, nonstationary, _common([d.embedding for d in dims]), dims=tuple(dims))

    def record(self) -> dict:
        """The choice as plain data, for logs, tables and ``get_fitted_params``.

        A series forecast dim by dim says "per dim" where its dims chose differently, and
        lists each dim's record under ``"dims"``.
        """
        if self.dims:
            records = [d.record() for d in self.dims]
            return {
                "preprocessing": _common([r["preprocessing"] for r in records]),
                "nonstationary": _common([r["nonstationary"] for r in records]),
                "validation_windows": min(r["validation_windows"] for r in records),
                "validation_mase": float(np.mean([r["validation_mase"] for r in records])),
                "dims": records,
            }
        return {
            "preprocessing": self.embedding,
            "nonstationary": self.nonstationary,
            "validation_windows": self.windows,
            "validation_mase": self.errors.get(_label(self.preprocessing, self.nonstationary), np.nan),
        }


def _common(values: list):
    """The value all entries share, else "per dim"."""
    return values[0] if all(v == values[0] for v in values) else "per dim"


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
    jobs_per_series = len(pairs) * VALIDATION_WINDOWS * VALIDATION_PATHS
    size = max(1, VALIDATION_CHUNK_JOBS // jobs_per_series)
    lengths = np.array([len(x) for x in series])
    plans = _Plans.of(np.unique(lengths), dims, pairs, model_dims)  # windows and candidates depend on the length only
    chosen = []
    for first in range(0, len(series), size):  # in chunks: each series' choice is its own
        chunk = series[first : first + size]
        plan_row = plans.index(lengths[first : first + size])
        scores = _validate(pipeline, chunk, plans, plan_row, entropy, jobs_per_series)
        chosen += _choose(chunk, plans, plan_row, scores, embedding)
    return chosen


@dataclass(frozen=True)
class _Plans:
    """The validation windows of every distinct series length, and the candidates that can forecast from them.

    Row p is the plan of series of length ``lengths[p]``: forecast ``x[cut : cut + step]``
    from ``x[:cut]`` for each of its ``n_cuts`` origins; ``usable`` marks the candidates
    (of ``pairs``) whose embedding fits in the shortest validation context. A plan with no
    origins (a series too short to validate) uses the defaults, uncalibrated.
    """

    lengths: np.ndarray  # (P,) sorted
    steps: np.ndarray  # (P,)
    cuts: np.ndarray  # (P, VALIDATION_WINDOWS), valid where k < n_cuts
    n_cuts: np.ndarray  # (P,) 0 or VALIDATION_WINDOWS
    usable: np.ndarray  # (P, C) bool
    pairs: tuple[tuple[str, bool], ...]  # (C,) every candidate, simplest first

    @classmethod
    def of(cls, lengths: np.ndarray, dims: int, pairs: list[tuple[str, bool]], model_dims: int) -> _Plans:
        step = np.minimum(lengths // (VALIDATION_WINDOWS + 2), MAX_VALIDATION_STEPS)
        spacing = np.maximum(1, step // VALIDATION_WINDOWS)
        back = np.arange(VALIDATION_WINDOWS - 1, -1, -1)  # origins in time order, the last one step before the end
        cuts = lengths[:, None] - step[:, None] - back[None, :] * spacing[:, None]
        valid = (step >= 1) & (cuts[:, 0] >= MIN_VALIDATION_CONTEXT)
        shortest = np.array([min_context_length(p, dims, model_dims) for p, _ in pairs])
        usable = valid[:, None] & (shortest[None, :] <= cuts[:, :1])
        n_cuts = np.where(valid, VALIDATION_WINDOWS, 0)
        return cls(lengths, np.where(valid, step, 0), cuts, n_cuts, usable, tuple(pairs))

    def index(self, lengths: np.ndarray) -> np.ndarray:
        """The plan row of each series of these lengths."""
        return np.searchsorted(self.lengths, lengths)


def _validate(
    pipeline, series: list[np.ndarray], plans: _Plans, plan_row: np.ndarray, entropy: int, jobs_per_series: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per series, (S, C, windows) MASE and (S, C, windows, step, D) standardized errors.

    Entries of candidates a series cannot use, and of windows it does not have, stay inf
    (MASE) and NaN (errors). Every series, candidate and window is one job of a single batch
    encoding and one unit of a single batched rollout; decoding and scoring are array
    operations over all of them.
    """
    dims = series[0].shape[1]
    usable, n_cuts, steps = plans.usable[plan_row], plans.n_cuts[plan_row], plans.steps[plan_row]  # (S, C), (S,), (S,)
    owner = np.repeat(np.arange(len(series)), n_cuts)  # (W,) the series of each validation window
    window = np.arange(len(owner)) - np.repeat(np.cumsum(n_cuts) - n_cuts, n_cuts)  # (W,) k of each window
    cuts = plans.cuts[plan_row[owner], window].astype(np.int64)  # (W,)
    job_window, job_pair = np.nonzero(usable[owner])  # (J,) one job per window and candidate
    mase = np.full((len(series), len(plans.pairs), VALIDATION_WINDOWS), np.inf)
    errors = np.full((*mase.shape, max(steps.max(initial=0), 1), dims), np.nan)
    if len(job_window):
        windows, jobs = (owner, window, cuts, steps), (job_window, job_pair)
        _score_jobs(pipeline, series, entropy, windows, jobs, plans.pairs, (mase, errors), jobs_per_series)
    return mase, errors


def _score_jobs(pipeline, series, entropy, windows, jobs, pairs, out, jobs_per_series: int) -> None:
    """Encode, roll out, decode and score every (window, candidate) job; write MASE and errors into out."""
    owner, window, cuts, steps = windows
    job_window, job_pair = jobs
    model_dims = pipeline.model.arch.N
    contexts = [series[s][:cut] for s, cut in zip(owner.tolist(), cuts.tolist(), strict=True)]
    encoding = BatchEncoding.fit(
        contexts,
        np.array([embedding for embedding, _ in pairs], dtype=object)[job_pair],
        np.array([flag for _, flag in pairs], dtype=bool)[job_pair],
        standardize=pipeline.options.standardize,
        model_dims=model_dims,
        entropy=entropy,
        source=job_window,
    )
    # A job whose context or start leaves float32 (a blown-up non-stationary transform) is disqualified;
    # its units roll out from zeros, and their noise, keyed by content, leaves every other unit's as it was.
    with np.errstate(invalid="ignore"):  # NaN compares False: not representable either
        unit_ok = np.isfinite(encoding.context).all(axis=(1, 2)) & (np.abs(encoding.starts).max(axis=1) <= FLOAT32_MAX)
    if not unit_ok.all():
        encoding = replace(
            encoding,
            context=np.where(unit_ok[:, None, None], encoding.context, 0.0),
            starts=np.where(unit_ok[:, None], encoding.starts, 0.0),
        )
    job_series, job_k = owner[job_window].tolist(), window[job_window].tolist()
    labels = [f"validation ({s}, {c}, {k})" for s, c, k in zip(job_series, job_pair.tolist(), job_k, strict=True)]
    batch = pipeline._batch(encoding, labels, VALIDATION_PATHS, entropy)
    length = int(steps.max())
    # "auto" picks the kernel by what validation rolls out per series (every candidate and window), never by
    # the batch: a series' choice is the same alone and in a panel.
    observed = rollout(pipeline.model, batch, length, pipeline.backend, paths_per_series=jobs_per_series)  # (L, P*U, N)
    unit_ok &= ~(diverged_steps(observed, batch) >= 0).reshape(VALIDATION_PATHS, -1).any(axis=0)
    job_ok = unit_ok  # one unit per job
    with np.errstate(all="ignore"):
        paths = encoding.decode(observed.reshape(length, VALIDATION_PATHS, -1, model_dims))  # (P, L, J, D)
    point = np.median(paths, axis=0).transpose(1, 0, 2)  # (J, L, D)
    truth, scale, spread = _window_statistics(series, windows, length)
    job_steps = steps[owner[job_window]]
    in_window = np.arange(length)[None, :] < job_steps[:, None]  # (J, L)
    point = np.where(in_window[:, :, None], point, 0.0)
    target = np.where(in_window[:, :, None], truth[job_window], 0.0)
    job_ok &= np.isfinite(point).all(axis=(1, 2))
    scaled_error = np.abs(point - target) / scale[job_window][:, None, :]
    # A running sum, read at each job's own last step: numpy's pairwise sum would group a window's errors
    # differently when other series in the chunk pad it to a longer validation horizon.
    running = np.cumsum(scaled_error.sum(axis=2), axis=1)  # (J, L)
    job_mase = running[np.arange(len(job_steps)), job_steps - 1] / (job_steps * point.shape[2])
    standardized = np.where(in_window[:, :, None], (target - point) / spread[job_window][:, None, :], np.nan)
    s, c, k = owner[job_window][job_ok], job_pair[job_ok], window[job_window][job_ok]
    out[0][s, c, k] = job_mase[job_ok]
    out[1][s, c, k] = standardized[job_ok][:, : out[1].shape[3]]


def _window_statistics(series, windows, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per validation window: truth (W, length, D) (NaN past its step), MASE scale and standard deviation (W, D).

    The scale is the mean absolute one-step change of the window's context; zero scales and
    deviations count as 1.
    """
    owner, window, cuts, steps = windows
    dims = series[0].shape[1]
    truth = np.full((len(owner), length, dims), np.nan)
    scale, spread = np.empty((len(owner), dims)), np.empty((len(owner), dims))
    lengths = np.array([len(x) for x in series])
    for size in np.unique(lengths[owner]):  # series of one length share their windows' cuts and steps
        members = np.nonzero(lengths[owner] == size)[0]  # windows of such series
        for k in np.unique(window[members]):
            rows = members[window[members] == k]
            cut, step = int(cuts[rows[0]]), int(steps[owner[rows[0]]])
            values = np.stack([series[s] for s in owner[rows]])  # (n, T, D)
            context = values[:, :cut]
            scale[rows] = np.abs(np.diff(context, axis=1)).mean(axis=1)
            spread[rows] = context.std(axis=1)
            truth[rows, :step] = values[:, cut : cut + step]
    return truth, np.where(scale > 0, scale, 1.0), np.where(spread > 0, spread, 1.0)


def _choose(
    series: list[np.ndarray], plans: _Plans, plan_row: np.ndarray, scores: tuple[np.ndarray, np.ndarray], embedding
) -> list[Selection]:
    """Per series, the simplest candidate within MARGIN of the best; the defaults where nothing validated."""
    mase, errors = scores
    n_cuts, steps = plans.n_cuts[plan_row], plans.steps[plan_row]
    in_window = np.arange(VALIDATION_WINDOWS)[None, None, :] < n_cuts[:, None, None]
    # Windows a series does not have add 0 after its own: the same sum as over its windows alone.
    mean = np.where(in_window, mase, 0.0).sum(axis=2) / np.maximum(n_cuts, 1)[:, None]  # (S, C)
    mean = np.where(plans.usable[plan_row], mean, np.inf)
    validated = np.isfinite(mean).any(axis=1)
    best = np.argmax(np.isfinite(mean), axis=1)  # the first finite candidate
    flags = np.array([flag for _, flag in plans.pairs])
    rows = np.arange(len(series))
    for c in range(1, len(plans.pairs)):  # in order: a later candidate must beat the best earlier one
        margin = np.where(flags[c] & ~flags[best], NONSTATIONARY_MARGIN, MARGIN)
        best = np.where((c > best) & (mean[:, c] < mean[rows, best] * (1 - margin)), c, best)
    labels = [_label(*pair) for pair in plans.pairs]
    chosen_errors = errors[rows, best]  # (S, windows, step, D)
    selections = []
    for s, x in enumerate(series):  # one object per series is the result; everything above is over the chunk
        key = content_key(x)
        if not validated[s]:
            selections.append(Selection(EMBEDDINGS[0], False, embedding or EMBEDDINGS[0], key=key))
            continue
        preprocessing, nonstationary = plans.pairs[best[s]]
        selections.append(
            Selection(
                preprocessing=preprocessing,
                nonstationary=nonstationary,
                embedding=embedding or preprocessing,
                windows=int(n_cuts[s]),
                validation_horizon=int(steps[s]),
                errors={labels[c]: float(mean[s, c]) for c in np.nonzero(plans.usable[plan_row[s]])[0].tolist()},
                validation_errors=chosen_errors[s, : n_cuts[s], : steps[s]].copy(),
                key=key,
            )
        )
    return selections


def _label(preprocessing: str, nonstationary: bool) -> str:
    return preprocessing + (" + nonstationary" if nonstationary else "")

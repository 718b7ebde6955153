"""BatchEncoding: many series on their way into the model's space and back, as arrays.

Encode J jobs, each a (T, D) series in data space (D <= N: the pipeline splits wider
series into one unit per dim first) with its own embedding and non-stationary flag:
optional Box-Cox and power-law trend removal per dim, per-dim standardization, then an
embedding to the model's N dims. Series are grouped by length (a handful of groups), and
every statistic, fit and embedding runs once per group over all of its rows; jobs that
share a series and a flag share its trend fit and scaling. Each job is one rollout unit.

The result is the rollout's input (every unit's context, left-padded, its first valid
frame, its first observation and its content key) plus what ``decode`` needs to invert
exactly the transforms each job applied, in reverse order, for all jobs at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..rollout import content_key
from .preprocessing import Scaler, autocorrelation, embedding_columns, random_lags
from .trend import TrendFit


@dataclass(frozen=True)
class BatchEncoding:
    """The transforms of J jobs, each one rollout unit."""

    context: np.ndarray  # (U, L, N) float32 embedded contexts, aligned to their end, zeros before valid_from
    valid_from: np.ndarray  # (U,) index of each unit's first real frame
    starts: np.ndarray  # (U, N) float64 each unit's first observation
    keys: tuple[int, ...]  # (U,) content key of the raw values a unit forecasts: seeds its random streams
    mean: np.ndarray  # (J, D) scaler, in the (possibly detrended) level space
    std: np.ndarray  # (J, D)
    constant: np.ndarray  # (J, D) dims constant in data space: forecast as their last value
    last: np.ndarray  # (J, D) last observation in data space
    nonstationary: np.ndarray  # (J,) bool
    trend: TrendFit | None  # rows (j, d) of the nonstationary jobs, job-major

    @classmethod
    def fit(
        cls,
        series: list[np.ndarray],
        preprocessing,
        nonstationary,
        *,
        standardize: bool,
        model_dims: int,
        entropy: int,
        source=None,
        starts: np.ndarray | None = None,
        keys: list[int] | None = None,
    ) -> BatchEncoding:
        """Encode job j = series[source[j]] (T_j, D) with ``preprocessing[j]`` and ``nonstationary[j]``.

        ``source`` defaults to one job per series. ``starts`` (J, k) in data scale replace
        the last frame as each job's first state (stationary jobs only). ``keys`` are the
        series' content keys (``rollout.content_key``) where the caller already has them.
        """
        source = np.arange(len(series)) if source is None else np.asarray(source, dtype=np.int64)
        methods = np.asarray(preprocessing, dtype=object).reshape(-1)
        flags = np.asarray(nonstationary, dtype=bool).reshape(-1)
        dims = series[0].shape[1]
        if dims > model_dims:
            raise ValueError(f"A unit has at most {model_dims} dims, got {dims}: split wider series (ForecastUnits).")
        lengths = np.array([len(x) for x in series])
        # A level is a (series, flag) pair: the values the scaler and the embeddings see.
        levels, level_of_job = np.unique(source * 2 + flags, return_inverse=True)
        level_source, level_flag = levels // 2, levels % 2 == 1
        n_levels = len(levels)
        mean, std = np.empty((n_levels, dims)), np.empty((n_levels, dims))
        trend_rows = np.full(n_levels, -1)  # each nonstationary level's first row in ``fits``
        fits, scaled_groups, group_of_level, row_of_level = [], {}, np.empty(n_levels, int), np.empty(n_levels, int)
        constant, last = np.empty((len(series), dims), dtype=bool), np.empty((len(series), dims))
        used = np.unique(source)
        for length in np.unique(lengths[used]):  # a handful of distinct lengths
            members = used[lengths[used] == length]
            raw = np.stack([series[s] for s in members])  # (n, T, D)
            constant[members] = Scaler.fit(raw).constant
            last[members] = raw[:, -1]
            mine = np.nonzero(lengths[level_source] == length)[0]
            values = raw[np.searchsorted(members, level_source[mine])]
            flagged = level_flag[mine]
            if flagged.any():
                rows = values[flagged].transpose(0, 2, 1).reshape(-1, length)  # (n_flagged * D, T)
                fit, detrended = TrendFit.fit(rows)
                values[flagged] = detrended.reshape(-1, dims, length).transpose(0, 2, 1)
                trend_rows[mine[flagged]] = sum(len(f.lam) for f in fits) + dims * np.arange(flagged.sum())
                fits.append(fit)
            scaler = Scaler.fit(values, standardize)
            mean[mine], std[mine] = scaler.mean, scaler.std
            scaled_groups[length] = scaler.transform(values)
            group_of_level[mine], row_of_level[mine] = length, np.arange(len(mine))

        unit_keys = _unit_keys(series, source) if keys is None else [keys[s] for s in source.tolist()]
        key_array = np.array(unit_keys, dtype=np.uint64)
        if starts is not None:
            starts = (starts - mean[level_of_job, : starts.shape[1]]) / std[level_of_job, : starts.shape[1]]
        pieces = []  # (units, their scaled rows (n, T, d), embedding columns (n, T, N - d), first valid frame (n,))
        for length, scaled in scaled_groups.items():
            in_group = group_of_level[level_of_job] == length
            # pos_embedding and delay_embedding read the same autocorrelation: computed once per row that needs it.
            acf = np.empty(scaled.shape[:2])
            reads = in_group & np.isin(methods, ("pos_embedding", "delay_embedding"))
            needed_rows = np.unique(row_of_level[level_of_job[reads]])
            acf[needed_rows] = autocorrelation(scaled[needed_rows, :, -1], length - 1)
            for method in np.unique(methods[in_group]):  # a few embeddings
                jobs = np.nonzero(in_group & (methods == method))[0]
                rows = row_of_level[level_of_job[jobs]]
                needed = model_dims - scaled.shape[2]
                lags = random_lags(entropy, key_array[jobs], needed) if method == "delay_embedding_random" else None
                columns, first = embedding_columns(scaled[rows], method, model_dims, lags, acf[rows])
                pieces.append((jobs, scaled[rows], columns, first))
        context, valid_from, unit_starts = _left_pad(pieces, len(source), model_dims, starts)
        trend = None
        if level_flag.any():
            every = TrendFit.concatenate(fits)
            jobs = np.nonzero(flags)[0]
            trend = every.take((trend_rows[level_of_job[jobs]][:, None] + np.arange(dims)).reshape(-1))
        return cls(
            context=context,
            valid_from=valid_from,
            starts=unit_starts,
            keys=tuple(unit_keys),
            mean=mean[level_of_job],
            std=std[level_of_job],
            constant=constant[source],
            last=last[source],
            nonstationary=flags,
            trend=trend,
        )

    def decode(self, observed: np.ndarray) -> np.ndarray:
        """observed (H, P, U, N) in model space -> (P, H, J, D) in data space."""
        steps, paths = observed.shape[:2]
        dims = self.mean.shape[1]
        scaled = observed[:, :, :, :dims]
        values = scaled.astype(np.float64) * self.std + self.mean  # (H, P, J, D)
        if self.trend is not None:
            rows = values[:, :, self.nonstationary].transpose(2, 3, 0, 1).reshape(-1, steps, paths)
            restored = self.trend.inverse(rows).reshape(-1, dims, steps, paths).transpose(2, 3, 0, 1)
            values[:, :, self.nonstationary] = restored
        values = np.where(self.constant, self.last, values)
        return values.transpose(1, 0, 2, 3)


def _unit_keys(series: list[np.ndarray], source: np.ndarray) -> list[int]:
    """Content keys of the raw values each job forecasts, one hash per distinct series used."""
    # Keyed by the raw values: a series (or a dim split off a wider one) gets the same draws alone, in any
    # batch, at any position, in any process. blake2b costs about a microsecond a series.
    keys = {s: content_key(series[s]) for s in np.unique(source).tolist()}
    return [keys[s] for s in source.tolist()]


def _left_pad(pieces, n_units: int, model_dims: int, given: np.ndarray | None):
    """Write each group's rows and embedding columns at the end of one (U, L, N) float32 array.

    Frames before a unit's first valid frame are zeros. Also returns each unit's first
    valid frame (U,) and its first observation (U, N) in float64: its last frame, or
    ``given`` (U, k) completed from the frame nearest to it.
    """
    width = max(rows.shape[1] - first.min() for _, rows, _, first in pieces)
    context = np.zeros((n_units, width, model_dims), dtype=np.float32)  # the model computes in float32
    valid_from = np.empty(n_units, dtype=np.int64)
    starts = np.empty((n_units, model_dims))
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: the pipeline names the series
        for units, rows, columns, first in pieces:
            length, dims = rows.shape[1:]
            # A delay embedding's first frames are undefined: zeroed in the piece's own arrays (copies made
            # for it by the caller) before they are written.
            for lost in np.unique(first[first > 0]).tolist():
                rows[first == lost, :lost] = 0.0
                columns[first == lost, :lost] = 0.0
            skipped = max(0, length - width)  # frames before every unit's first: never valid
            # A run of consecutive units (the usual group) is written through a view: no fancy-index scatter.
            target = slice(units[0], units[-1] + 1) if len(units) and np.all(np.diff(units) == 1) else units
            context[target, width - length + skipped :, :dims] = rows[:, skipped:]
            context[target, width - length + skipped :, dims:] = columns[:, skipped:]
            valid_from[units] = width - (length - first)
            frame = np.full(len(units), length - 1)
            if given is not None:
                k = given.shape[1]
                distance = ((rows[:, :, :k] - given[units][:, None, :]) ** 2).sum(axis=2)  # (n, T)
                distance[np.arange(length)[None, :] < first[:, None]] = np.inf
                frame = np.argmin(distance, axis=1)
            picked = np.arange(len(units))
            starts[units] = np.concatenate([rows[picked, frame], columns[picked, frame]], axis=1)
            if given is not None:
                starts[units, :k] = given[units]
    return context, valid_from, starts

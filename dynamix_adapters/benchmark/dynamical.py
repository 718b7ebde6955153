"""Track A: long-term statistics on three-dimensional chaotic dysts systems.

Every case is one standardized trajectory of one system from one initial condition,
integrated with DOP853 (rtol = atol = 1e-9) by the training corpus' own generator, so
the benchmark and the corpus share one definition of a trajectory. Its first
``context_length`` points are the context, the next ``horizon`` points the truth.
Each model forecasts the whole horizon from the context alone and is scored with the
paper's metrics: D_stsp (attractor geometry), D_H (power spectra) and MASE over the
first 10 steps.

The systems are :data:`dynamix_adapters.training.HELD_OUT_SYSTEMS` plus every other
chaotic 3-D system the bundled weights were not trained on, read from the training
package at run time, minus the Lorenz, Chua and SprottM families (the reproduction
tests' systems).

>>> dominant_period(np.sin(2 * np.pi * np.arange(400) / 25)[:, None])
25
>>> seasonal_naive(np.arange(6.0)[:, None], 4, period=3).ravel()
array([3., 4., 5., 3.])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..forecast import forecast
from ..metrics import mase, power_spectrum_distance, state_space_divergence
from ..rollout import DivergenceError

logger = logging.getLogger(__name__)

DATA_SEED = 2024
FORECAST_SEED = 0
MASE_STEPS = 10
METRICS = ("D_stsp", "D_H", "MASE")
WARMUP_CONTEXT = 200
WARMUP_HORIZON = 50

Forecaster = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Case:
    system: str
    initial_condition: int
    context: np.ndarray  # (T_C, 3), standardized
    truth: np.ndarray  # (H, 3)


def benchmark_systems() -> list[str]:
    """Held-out systems first, then the other chaotic 3-D systems outside the training corpus."""
    from ..training import HELD_OUT_SYSTEMS, training_systems
    from ..training.corpus import EXCLUDED_NAME_FRAGMENTS, three_dimensional_systems

    trained = set(training_systems())
    candidates = [*HELD_OUT_SYSTEMS, *(s for s in three_dimensional_systems() if s not in trained)]
    return [
        name
        for name in dict.fromkeys(candidates)
        if not any(fragment in name.lower() for fragment in EXCLUDED_NAME_FRAGMENTS) and _is_chaotic(name)
    ]


def _is_chaotic(name: str) -> bool:
    from dysts import flows

    exponent = getattr(flows, name)().maximum_lyapunov_estimated
    return exponent is not None and exponent > 0


def build_cases(
    systems: list[str],
    initial_conditions: int,
    context_length: int,
    horizon: int,
    points_per_period: int,
    cache_dir: Path | None,
    workers: int = 1,
    progress: Callable[[], None] = lambda: None,
) -> tuple[list[Case], list[str]]:
    """Integrate every (system, initial condition); also return the cases that had no bounded trajectory.

    Trajectories are cached in ``cache_dir`` (keyed by every setting that shapes them) and
    integrated in ``workers`` processes; integration is not part of any model's time.
    """
    jobs = [(system, index) for system in systems for index in range(initial_conditions)]
    length = context_length + horizon
    arguments = [(system, index, length, points_per_period, cache_dir) for system, index in jobs]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_trajectory, *a) for a in arguments]
            for _ in as_completed(futures):
                progress()
            trajectories = [f.result() for f in futures]
    else:
        trajectories = []
        for a in arguments:
            trajectories.append(_trajectory(*a))
            progress()
    cases, skipped = [], []
    for (system, index), trajectory in zip(jobs, trajectories, strict=True):
        if trajectory is None:
            logger.warning("skipping %s, initial condition %d: no bounded trajectory", system, index)
            skipped.append(f"{system} #{index}")
            continue
        cases.append(Case(system, index, trajectory[:context_length], trajectory[context_length:]))
    return cases, skipped


def _trajectory(name: str, index: int, length: int, points_per_period: int, cache_dir: Path | None):
    from ..training.corpus import CorpusConfig, generate_trajectory

    path = None
    if cache_dir is not None:
        path = cache_dir / f"{name}-ic{index}-n{length}-ppp{points_per_period}-seed{DATA_SEED}.npy"
        if path.is_file():
            return np.load(path)
    config = CorpusConfig(seed=DATA_SEED, points_per_period=(points_per_period, points_per_period), workers=1)
    trajectory = generate_trajectory(name, index, length, config)
    if trajectory is not None and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, trajectory)
    return trajectory


def dominant_period(context: np.ndarray) -> int:
    """The period (in steps) of the highest peak of the context's power spectra, summed over dims."""
    z = (context - context.mean(axis=0)) / np.where(context.std(axis=0) > 0, context.std(axis=0), 1.0)
    power = (np.abs(np.fft.rfft(z, axis=0)) ** 2).sum(axis=1)
    frequencies = np.fft.rfftfreq(len(context))
    peak = 1 + int(np.argmax(power[1:]))
    return int(np.clip(round(1.0 / frequencies[peak]), 2, len(context) // 2))


def seasonal_naive(context: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """Repeat the context's last ``period`` steps."""
    cycle = context[-period:]
    return np.tile(cycle, (int(np.ceil(horizon / period)), 1))[:horizon]


def _per_dimension(model_class) -> Forecaster:
    def run(context: np.ndarray, horizon: int) -> np.ndarray:
        return np.column_stack(
            [model_class(season_length=1).forecast(y=context[:, d], h=horizon)["mean"] for d in range(context.shape[1])]
        )

    return run


def _dynamix(weights: str) -> Forecaster:
    def run(context: np.ndarray, horizon: int) -> np.ndarray:
        return forecast(weights, context, horizon, random_state=FORECAST_SEED)

    return run


def models(weight_sets: list[str]) -> dict[str, Forecaster]:
    """Every Track A model by its table name."""
    from statsforecast.models import AutoARIMA, AutoETS

    table: dict[str, Forecaster] = {f"DynaMix ({name})": _dynamix(name) for name in weight_sets}
    table["AutoARIMA (per dim)"] = _per_dimension(AutoARIMA)
    table["AutoETS (per dim)"] = _per_dimension(AutoETS)
    table["Naive (last value)"] = lambda context, horizon: np.repeat(context[-1:], horizon, axis=0)
    table["Seasonal naive (dominant period)"] = lambda context, horizon: seasonal_naive(
        context, horizon, dominant_period(context)
    )
    return table


def score(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """The three metrics; a forecast with no point inside the true range gets D_stsp = inf."""
    d_stsp = state_space_divergence(truth, predicted)
    return {
        "D_stsp": np.inf if np.isnan(d_stsp) else d_stsp,
        "D_H": power_spectrum_distance(truth, predicted),
        "MASE": mase(truth, predicted, steps=MASE_STEPS),
    }


def run_track(
    cases: list[Case],
    table: dict[str, Forecaster],
    keep_forecasts_for: set[str],
    progress: Callable[[], None] = lambda: None,
) -> tuple[list[dict], dict[tuple[str, str], np.ndarray]]:
    """Forecast and score every case with every model.

    Returns one row per (case, model) and the forecasts of initial condition 0 of the
    systems in ``keep_forecasts_for`` (for the plots). Each model first forecasts once,
    untimed, so one-off compilation (numba, statsforecast) is not charged to a case.
    A model that fails on a case (a diverged rollout, a solver error) scores inf there.
    """
    for forecaster in table.values():
        forecaster(cases[0].context[-WARMUP_CONTEXT:], WARMUP_HORIZON)
    rows, kept = [], {}
    for case in cases:
        for name, forecaster in table.items():
            start = time.perf_counter()
            try:
                predicted = np.asarray(forecaster(case.context, len(case.truth)), dtype=float)
                status = "ok"
            except (DivergenceError, ValueError, np.linalg.LinAlgError) as err:
                predicted, status = None, f"failed: {type(err).__name__}"
                logger.warning("%s failed on %s #%d: %s", name, case.system, case.initial_condition, err)
            seconds = time.perf_counter() - start
            if predicted is not None and not np.all(np.isfinite(predicted)):
                predicted, status = None, "failed: non-finite forecast"
            metrics = dict.fromkeys(METRICS, np.inf) if predicted is None else score(case.truth, predicted)
            rows.append(
                {
                    "system": case.system,
                    "initial_condition": case.initial_condition,
                    "model": name,
                    **metrics,
                    "seconds": seconds,
                    "status": status,
                }
            )
            if predicted is not None and case.initial_condition == 0 and case.system in keep_forecasts_for:
                kept[(case.system, name)] = predicted
            progress()
    return rows, kept

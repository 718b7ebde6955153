"""The pretraining corpus: standardized trajectories of three-dimensional dysts systems.

Each trajectory starts from a randomly perturbed initial condition, drops a
transient, and is standardized per dim over its whole length. Its first
``context_length`` points are the context segment the model attends to; the rest
is where training sequences are drawn from, so a sequence never overlaps its context.

The systems the benchmarks score on never enter the corpus: Lorenz-like systems,
Chua's circuits and SprottM (the published test series), and :data:`HELD_OUT_SYSTEMS`.

>>> "Lorenz" in training_systems() or "Chua" in training_systems()
False
>>> set(HELD_OUT_SYSTEMS) & set(training_systems())
set()
"""

from __future__ import annotations

import logging
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Benchmark systems kept out of training; the first VALIDATION_SIZE double as validation systems.
HELD_OUT_SYSTEMS = (
    "Halvorsen",
    "SprottB",
    "Rucklidge",
    "Rossler",
    "Aizawa",
    "Thomas",
    "ChenLee",
    "Dadras",
    "NoseHoover",
    "SprottK",
    "Arneodo",
    "GenesioTesi",
    "ShimizuMorioka",
    "Sakarya",
    "Chen",
    "Finance",
    "Hadley",
    "BurkeShaw",
    "Coullet",
    "NewtonLiepnik",
    "SprottD",
    "WangSun",
)
VALIDATION_SIZE = 3
# Name fragments of the published test systems (lorenz63, chua, sprottM): every variant is excluded.
EXCLUDED_NAME_FRAGMENTS = ("lorenz", "chua", "sprottm")
ODE_TOLERANCE = 1e-9
STANDARDIZED_BOUND = 50.0
MAX_ATTEMPTS = 4
# Some perturbed starts escape or turn stiff; the integrator gives up on them after this many steps.
MAX_SOLVER_STEPS = 50_000
RAW_BOUND = 1e6


def validation_systems() -> tuple[str, ...]:
    return HELD_OUT_SYSTEMS[:VALIDATION_SIZE]


def three_dimensional_systems() -> list[str]:
    """All autonomous three-dimensional dysts flows, sorted by name."""
    flows, names = _dysts()
    systems = []
    for name in names:
        system = getattr(flows, name)()
        if len(system.ic) == 3 and not system.nonautonomous:
            systems.append(name)
    return sorted(systems)


def training_systems() -> list[str]:
    """The systems the corpus is built from: 3-D dysts flows minus the excluded and held-out ones."""
    held_out = set(HELD_OUT_SYSTEMS)
    return [
        name
        for name in three_dimensional_systems()
        if name not in held_out and not any(fragment in name.lower() for fragment in EXCLUDED_NAME_FRAGMENTS)
    ]


def _dysts():
    try:
        from dysts import flows
        from dysts.systems import get_attractor_list
    except ImportError as err:
        raise ImportError("Building the training corpus needs dysts: pip install 'dynamix-adapters[training]'") from err
    return flows, get_attractor_list()


@dataclass(frozen=True)
class CorpusConfig:
    """How the corpus is generated; the same config and seed give the same corpus."""

    seed: int = 0
    trajectories_per_system: int = 4
    context_length: int = 500
    training_length: int = 1500
    transient_periods: float = 5.0
    points_per_period: tuple[int, int] = (40, 300)  # log-uniform sampling density range
    initial_condition_spread: float = 0.2
    validation_context_length: int = 500
    validation_horizon: int = 1000
    systems: tuple[str, ...] | None = None  # None: every training system
    workers: int = 2

    def __post_init__(self):
        low, high = self.points_per_period
        if not 4 <= low <= high:
            raise ValueError(
                f"points_per_period must be (low, high) with 4 <= low <= high, got {self.points_per_period}"
            )
        for name in ("trajectories_per_system", "context_length", "training_length", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"CorpusConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Corpus:
    """Standardized trajectories, split into context segments and training segments."""

    contexts: np.ndarray  # (K, T_C, 3) float32
    sequences: np.ndarray  # (K, T_train, 3) float32
    systems: np.ndarray  # (K,) system name of each trajectory
    validation_contexts: np.ndarray  # (V, T_C_val, 3)
    validation_targets: np.ndarray  # (V, H_val, 3)
    validation_systems: np.ndarray  # (V,)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **asdict(self))
        return path

    @classmethod
    def load(cls, path: Path) -> Corpus:
        with np.load(path) as data:
            return cls(**{key: data[key] for key in data.files})


def build_corpus(config: CorpusConfig) -> Corpus:
    """Integrate every (system, initial condition) pair of ``config``; skipped pairs are logged."""
    systems = list(config.systems) if config.systems is not None else training_systems()
    forbidden = set(HELD_OUT_SYSTEMS) | {s for s in systems if any(f in s.lower() for f in EXCLUDED_NAME_FRAGMENTS)}
    if forbidden & set(systems):
        raise ValueError(f"The corpus may not contain held-out or test systems: {sorted(forbidden & set(systems))}")
    length = config.context_length + config.training_length
    jobs = [(name, k, length, config) for name in systems for k in range(config.trajectories_per_system)]
    jobs += [
        (name, 0, config.validation_context_length + config.validation_horizon, config) for name in validation_systems()
    ]
    if config.workers > 1:
        with ProcessPoolExecutor(config.workers) as pool:
            results = list(pool.map(_trajectory_job, jobs, chunksize=4))
    else:
        results = [_trajectory_job(job) for job in jobs]
    n_training = len(jobs) - VALIDATION_SIZE
    training = [(job[0], x) for job, x in zip(jobs[:n_training], results[:n_training], strict=True) if x is not None]
    skipped = sorted({job[0] for job, x in zip(jobs, results, strict=True) if x is None})
    if skipped:
        logger.warning("no usable trajectory for some initial conditions of: %s", ", ".join(skipped))
    validation = results[n_training:]
    if not training or any(v is None for v in validation):
        raise RuntimeError("corpus generation produced no training data or failed on a validation system")
    stacked = np.stack([x for _, x in training]).astype(np.float32)
    split = config.validation_context_length
    held = np.stack(validation).astype(np.float32)
    return Corpus(
        contexts=stacked[:, : config.context_length],
        sequences=stacked[:, config.context_length :],
        systems=np.array([name for name, _ in training]),
        validation_contexts=held[:, :split],
        validation_targets=held[:, split:],
        validation_systems=np.array(validation_systems()),
    )


def load_or_build(config: CorpusConfig, cache_dir: Path) -> Corpus:
    """The corpus for ``config``, generated once and cached as .npz under ``cache_dir``."""
    # The system list is part of the key: changing HELD_OUT_SYSTEMS must not reuse a stale corpus.
    digest = zlib.crc32(repr((sorted(asdict(config).items()), training_systems(), HELD_OUT_SYSTEMS)).encode())
    path = Path(cache_dir) / f"corpus-{digest:08x}.npz"
    if path.is_file():
        logger.info("using the cached corpus %s", path)
        return Corpus.load(path)
    logger.info("building the corpus (cached at %s)", path)
    return Corpus.load(build_corpus(config).save(path))


def _trajectory_job(job) -> np.ndarray | None:
    name, index, length, config = job
    return generate_trajectory(name, index, length, config)


def generate_trajectory(name: str, index: int, length: int, config: CorpusConfig) -> np.ndarray | None:
    """One standardized (length, 3) trajectory of system ``name``; None if no attempt stays bounded."""
    flows, _ = _dysts()
    system = getattr(flows, name)()
    rng = np.random.default_rng([config.seed, zlib.crc32(name.encode()), index])
    base = np.asarray(system.ic, dtype=np.float64)
    low, high = config.points_per_period
    for _ in range(MAX_ATTEMPTS):
        density = round(float(np.exp(rng.uniform(np.log(low), np.log(high)))))
        start = base * (1.0 + config.initial_condition_spread * rng.standard_normal(3))
        start += 0.01 * rng.standard_normal(3)
        transient = int(config.transient_periods * density)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                raw = system.make_trajectory(
                    transient + length,
                    pts_per_period=density,
                    init_cond=start,
                    method="DOP853",
                    rtol=ODE_TOLERANCE,
                    atol=ODE_TOLERANCE,
                    events=[_StepBudget(MAX_SOLVER_STEPS), _escaped],
                )
            except (ValueError, RuntimeError, OverflowError, ZeroDivisionError):
                raw = None
        if raw is None or np.shape(raw) != (transient + length, 3) or not np.all(np.isfinite(raw)):
            continue
        x = raw[transient:]
        std = x.std(axis=0)
        if np.any(std < 1e-6 * np.maximum(1.0, np.abs(x).max(axis=0))):
            continue  # settled on a fixed point in some dim
        x = (x - x.mean(axis=0)) / std
        if np.abs(x).max() < STANDARDIZED_BOUND:
            return x
    return None


class _StepBudget:
    """A terminal solver event that fires after ``steps`` steps (counted, so the cut-off is deterministic)."""

    terminal = True

    def __init__(self, steps: int):
        self.remaining = steps

    def __call__(self, t, y) -> float:
        self.remaining -= 1
        return float(self.remaining)


def _escaped(t, y) -> float:
    return RAW_BOUND - float(np.max(np.abs(y)))


_escaped.terminal = True

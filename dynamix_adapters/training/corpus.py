"""The pretraining corpus: long standardized trajectories of three-dimensional dysts systems.

As in the authors' recipe, each corpus system contributes one long trajectory from
dysts' default initial condition at a fixed 50 points per dominant period,
standardized per dim over its whole length. Training windows (context plus sequence)
are cut from these trajectories at random by the trainer.

The systems the benchmarks score on never enter the corpus: Lorenz-like systems,
Chua's circuits and SprottM (the published test series), and :data:`HELD_OUT_SYSTEMS`.
The authors' corpus contains 8 of our held-out systems and LorenzBounded; those are
dropped and replaced by other 3-D dysts systems (:data:`SUBSTITUTE_SYSTEMS`).

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
# The authors' 34 trajectories (30 systems, four in a second regime), minus our held-out systems, the
# Lorenz family (LorenzBounded) and ForcedBrusselator, which dysts marks non-autonomous: 22 remain.
AUTHORS_KEPT_SYSTEMS = (
    "AnishchenkoAstakhov",
    "BelousovZhabotinsky",
    "Blasius",
    "CaTwoPlus",
    "CaTwoPlus[eps=10,beta=0.5]",
    "Colpitts",
    "LuChenCheng",
    "QiChen",
    "RayleighBenard",
    "RabinovichFabrikant",
    "RikitakeDynamo",
    "SaltonSea",
    "SprottE",
    "SprottH",
    "SprottJ",
    "SprottJerk",
    "SprottN",
    "CellularNeuralNetwork",
    "HastingsPowell",
    "ExcitableCell",
    "GlycolyticOscillation",
)
# Stand-ins for the 12 dropped trajectories, to keep ~34: chaotic 3-D flows of the same kinds as the
# dropped ones (Rossler-, Sprott- and Chen/Lorenz-like), none of them held out or excluded.
SUBSTITUTE_SYSTEMS = (
    "SprottA",
    "SprottC",
    "SprottF",
    "SprottG",
    "SprottO",
    "SprottQ",
    "SprottR",
    "SprottS",
    "LuChen",
    "Bouali2",
    "MooreSpiegel",
    "HindmarshRose",
    "Laser",
)
CORPUS_SYSTEMS = AUTHORS_KEPT_SYSTEMS + SUBSTITUTE_SYSTEMS
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
    """The distinct dysts systems of the corpus, sorted (parameter regimes collapse to their system)."""
    return sorted({parse_entry(entry)[0] for entry in CORPUS_SYSTEMS})


def _dysts():
    try:
        from dysts import flows
        from dysts.systems import get_attractor_list
    except ImportError as err:
        raise ImportError("Building the training corpus needs dysts: pip install 'dynamix-adapters[training]'") from err
    return flows, get_attractor_list()


@dataclass(frozen=True)
class CorpusConfig:
    """How the corpus is generated; the same config and seed give the same corpus.

    ``points_per_period`` and ``initial_condition_spread`` also define the benchmark's
    held-out trajectories (:func:`generate_trajectory`), so they keep their meaning.
    """

    seed: int = 0
    trajectory_length: int = 40_000  # points per corpus trajectory, standardized over all of them
    transient_periods: float = 5.0
    points_per_period: tuple[int, int] = (50, 50)  # (low, high): log-uniform sampling density range
    # Points per period of the corpus trajectories, each system integrated once at each;
    # None: the lower end of points_per_period only (the authors' single density).
    corpus_densities: tuple[int, ...] | None = None
    initial_condition_spread: float = 0.2  # held-out and validation trajectories only
    validation_context_length: int = 1000
    validation_horizon: int = 2000
    systems: tuple[str, ...] | None = None  # None: CORPUS_SYSTEMS; "Name" or "Name[key=value,...]"
    workers: int = 2

    def __post_init__(self):
        low, high = self.points_per_period
        if not 4 <= low <= high:
            raise ValueError(
                f"points_per_period must be (low, high) with 4 <= low <= high, got {self.points_per_period}"
            )
        if self.corpus_densities is not None and not all(d >= 4 for d in self.corpus_densities):
            raise ValueError(f"corpus_densities must all be >= 4 points per period, got {self.corpus_densities}")
        for name in ("trajectory_length", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"CorpusConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def densities(self) -> tuple[int, ...]:
        """Points per period of the corpus trajectories, first the one a trajectory gets by default."""
        return self.corpus_densities or (self.points_per_period[0],)


@dataclass(frozen=True)
class Corpus:
    """Standardized long trajectories to draw training windows from, plus the validation cases."""

    trajectories: np.ndarray  # (K, T, 3) float32
    systems: np.ndarray  # (K,) system entry of each trajectory
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


def parse_entry(entry: str) -> tuple[str, dict[str, float]]:
    """``"Name[key=value,...]"`` -> (name, parameter overrides).

    >>> parse_entry("Rossler[a=0.05,c=6.0]")
    ('Rossler', {'a': 0.05, 'c': 6.0})
    """
    name, _, rest = entry.partition("[")
    if not rest:
        return name, {}
    pairs = (item.split("=") for item in rest.rstrip("]").split(","))
    return name, {key.strip(): float(value) for key, value in pairs}


def build_corpus(config: CorpusConfig) -> Corpus:
    """Integrate every corpus system from its default initial condition; failed systems are logged and skipped."""
    entries = list(config.systems) if config.systems is not None else list(CORPUS_SYSTEMS)
    names = [parse_entry(entry)[0] for entry in entries]
    forbidden = set(HELD_OUT_SYSTEMS) | {s for s in names if any(f in s.lower() for f in EXCLUDED_NAME_FRAGMENTS)}
    if forbidden & set(names):
        raise ValueError(f"The corpus may not contain held-out or test systems: {sorted(forbidden & set(names))}")
    jobs = [(entry, config, density) for entry in entries for density in config.densities]
    with ProcessPoolExecutor(config.workers) if config.workers > 1 else _Inline() as pool:
        results = list(pool.map(_corpus_job, jobs))
        validation = list(pool.map(_validation_job, [(name, config) for name in validation_systems()]))
    outcomes = list(zip(jobs, results, strict=True))
    kept = [(entry, x) for (entry, _, _), x in outcomes if x is not None]
    skipped = [f"{entry} at {density} points per period" for (entry, _, density), x in outcomes if x is None]
    if skipped:
        logger.warning("no usable trajectory for: %s", ", ".join(skipped))
    if not kept or any(v is None for v in validation):
        raise RuntimeError("corpus generation produced no training data or failed on a validation system")
    held = np.stack(validation).astype(np.float32)
    split = config.validation_context_length
    return Corpus(
        trajectories=np.stack([x for _, x in kept]).astype(np.float32),
        systems=np.array([entry for entry, _ in kept]),
        validation_contexts=held[:, :split],
        validation_targets=held[:, split:],
        validation_systems=np.array(validation_systems()),
    )


def load_or_build(config: CorpusConfig, cache_dir: Path) -> Corpus:
    """The corpus for ``config``, generated once and cached as .npz under ``cache_dir``."""
    # The system lists are part of the key: changing them must not reuse a stale corpus.
    digest = zlib.crc32(repr((sorted(asdict(config).items()), CORPUS_SYSTEMS, HELD_OUT_SYSTEMS)).encode())
    path = Path(cache_dir) / f"corpus-{digest:08x}.npz"
    if path.is_file():
        logger.info("using the cached corpus %s", path)
        return Corpus.load(path)
    logger.info("building the corpus (cached at %s)", path)
    return Corpus.load(build_corpus(config).save(path))


class _Inline:
    """A stand-in for a process pool that maps in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, func, items):
        return map(func, items)


def _corpus_job(job) -> np.ndarray | None:
    return corpus_trajectory(*job)


def _validation_job(job) -> np.ndarray | None:
    name, config = job
    length = config.validation_context_length + config.validation_horizon
    return generate_trajectory(name, 0, length, config)


def corpus_trajectory(entry: str, config: CorpusConfig, density: int | None = None) -> np.ndarray | None:
    """The standardized (trajectory_length, 3) corpus trajectory of ``entry``; None if it does not stay bounded.

    As the authors did: dysts' default initial condition without perturbation, a fixed
    sampling density (``density``; None: the config's first, ``CorpusConfig.densities``), standardized per dim over
    the whole trajectory. A short transient is dropped in case the default start lies
    off the attractor.
    """
    flows, _ = _dysts()
    name, overrides = parse_entry(entry)
    system = getattr(flows, name)()
    unknown = sorted(set(overrides) - set(system.params))
    if unknown:
        raise ValueError(f"{name} has no parameter(s) {unknown}; it has {sorted(system.params)}")
    system.transform_params(lambda key, value, system: np.asarray(overrides.get(key, value)))
    density = config.densities[0] if density is None else density
    transient = int(config.transient_periods * density)
    raw = _integrate(system, np.asarray(system.ic, dtype=np.float64), transient + config.trajectory_length, density)
    return None if raw is None else _standardized(raw[transient:])


def generate_trajectory(name: str, index: int, length: int, config: CorpusConfig) -> np.ndarray | None:
    """One standardized (length, 3) trajectory of ``name`` from a seeded, perturbed start; None if none stays bounded.

    The benchmarks' held-out series and the validation cases come from here: the start
    is the default initial condition scaled by ``1 + initial_condition_spread * N(0, 1)``
    per dim, the density is log-uniform in ``points_per_period``.
    """
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
        raw = _integrate(system, start, transient + length, density)
        x = None if raw is None else _standardized(raw[transient:])
        if x is not None:
            return x
    return None


def _integrate(system, start: np.ndarray, length: int, density: int) -> np.ndarray | None:
    """``length`` points of ``system`` at ``density`` points per period (DOP853); None if it fails or escapes."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            raw = system.make_trajectory(
                length,
                pts_per_period=density,
                init_cond=start,
                method="DOP853",
                rtol=ODE_TOLERANCE,
                atol=ODE_TOLERANCE,
                events=[_StepBudget(MAX_SOLVER_STEPS * max(1, length // 10_000)), _escaped],
            )
        except (ValueError, RuntimeError, OverflowError, ZeroDivisionError):
            return None
    if raw is None or np.shape(raw) != (length, 3) or not np.all(np.isfinite(raw)):
        return None
    return np.asarray(raw, dtype=np.float64)


def _standardized(x: np.ndarray) -> np.ndarray | None:
    """x (T, 3) with mean 0 and std 1 per dim; None if a dim settled on a fixed point or the result is extreme."""
    std = x.std(axis=0)
    if np.any(std < 1e-6 * np.maximum(1.0, np.abs(x).max(axis=0))):
        return None
    x = (x - x.mean(axis=0)) / std
    return x if np.abs(x).max() < STANDARDIZED_BOUND else None


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

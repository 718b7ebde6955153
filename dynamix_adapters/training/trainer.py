"""Pretraining DynaMix from scratch: the authors' recipe, backpropagation through time with sparse forcing.

One update draws a batch of random windows from the corpus trajectories. A window of
``sequence_offset + sequence_length`` points (550) gives a clean context (its first
``context_length`` = 500 points) and a training sequence (its points 450-549: the
last 50 of the context and the next 50) with Gaussian noise on the sequence only.
The model runs ``sequence_length - 1`` steps from the sequence's first point, the
observed dims are reset to the noisy data every ``teacher_forcing_interval`` steps,
and the loss is the MSE on the observed dims plus
``sigma_regularization * mean(exp(-|sigma| / sigma_scale))``. The gating query uses a
detached z (``detach_query``), each parameter array's gradient is clipped to norm
``gradient_clip`` on its own, and RAdam's learning rate decays exponentially from
``learning_rate`` to ``final_learning_rate`` over the run, once per epoch. With
``warmup_epochs`` the rate also ramps up linearly from a tenth over those first epochs.
It was tried against the early rollbacks of v0.5's recipe (4 of 9 runs rolled back near
the peak rate); over three seeds it neither prevented them nor helped the benchmark
(v0.6 model card), so no shipped recipe uses it.

The forward and backward pass run either as one compiled kernel (``backend =
"fused"``, see ``fused.py``) or with torch autograd (``"torch"``, the reference).
An update whose loss or gradient is not finite, or whose rollout's latent state
passed ``max_latent``, is skipped. After ``max_consecutive_skips`` skipped updates in
a row the run rolls back to the last epoch that ended on an accepted update (model
and optimizer state), with the learning rate multiplied by ``rollback_factor`` from
then on. Without the rollback, one bad update can leave weights whose hidden dims
blow up on every sequence, and every later update is skipped: the first 5e-3 run of
v0.3 stalled that way at update ~5,050. With a rollback on every skip (v0.3's
setting, ``max_consecutive_skips = 1``) a single bad batch lowers the rate for good:
v0.3 ended 8x below its schedule after three of them.

The attention and expert temperatures are kept at or above ``tau1_floor`` and
``tau2_floor`` after every update: v0.3's blow-up came right after |tau1| fell from
0.07 to 0.017 (near-hard attention), and pilots saw tau2 fall to 0.005.

Runs are seeded and resumable: a checkpoint holds the model, optimizer, learning
rate schedule, random generator, update count and training time, and a resumed run
continues bit for bit where the checkpoint left off.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..forecast import forecast
from ..metrics import mase, power_spectrum_distance, state_space_divergence
from ..model import Architecture, DynaMix
from ..rollout import DivergenceError
from ..weights import save_model
from .corpus import Corpus, CorpusConfig, load_or_build
from .fused import loss_and_gradients
from .initialization import authors_initialization
from .reference import rollout_loss

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "training_log.csv"
LOG_FIELDS = (
    "epoch",
    "update",
    "loss",
    "mse",
    "sigma_penalty",
    "learning_rate",
    "train_seconds",
    "skipped_updates",
    "rollbacks",
    "largest_latent",
    "largest_gradient_norm",
    "tau1",
    "tau2",
    "D_stsp",
    "D_H",
    "MASE",
)
BACKENDS = ("fused", "torch")
INITIALIZATIONS = ("authors", "default")
# Parameters the recipe keeps at zero and never trains (the authors' gating MLP has no biases).
FROZEN = ("gating_network.mlp_layer1.bias", "gating_network.mlp_layer2.bias")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that determines a training run; read from a TOML file with :meth:`from_toml`.

    >>> config = TrainingConfig.from_dict({"name": "tiny", "architecture": {"M": 8, "J": 2, "P": 1}})
    >>> config.architecture
    Architecture(M=8, N=3, J=2, P=1)
    >>> config.total_updates, config.window_length
    (100000, 550)
    """

    name: str = "dynamix-3d-adapters"
    seed: int = 0
    threads: int = 1
    architecture: Architecture = field(default_factory=Architecture)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    epochs: int = 2000
    batches_per_epoch: int = 50
    batch_size: int = 16
    context_length: int = 500
    sequence_length: int = 100
    sequence_offset: int = 450  # where the sequence starts within the window
    teacher_forcing_interval: int = 10
    input_noise: float = 0.05  # on the sequence only; the context stays clean
    detach_query: bool = True
    initialization: str = "authors"
    sigma_regularization: float = 0.1
    sigma_scale: float = 0.01
    learning_rate: float = 5e-3
    final_learning_rate: float = 1e-5
    warmup_epochs: int = 0  # linear ramp from learning_rate / 10 over these first epochs (0: none)
    gradient_clip: float = 10.0  # per parameter array
    backend: str = "fused"
    max_latent: float = 1e3  # a rollout whose |z| passes this counts as diverged (the data is standardized)
    rollback_factor: float = 0.5  # learning rate multiplier after each rollback
    max_consecutive_skips: int = 1  # skipped updates in a row that trigger a rollback
    tau1_floor: float = 0.0  # lower bound on |softmax_temp1| after each update (0: none)
    tau2_floor: float = 0.0  # lower bound on |softmax_temp2| after each update (0: none)
    validate_every: int = 25  # epochs
    checkpoint_every: int = 5  # epochs

    def __post_init__(self):
        positive = (
            "threads",
            "epochs",
            "batches_per_epoch",
            "batch_size",
            "teacher_forcing_interval",
            "max_consecutive_skips",
        )
        for name in (*positive, "validate_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.sequence_length < 2 or self.context_length < 2 or self.sequence_offset < 0:
            raise ValueError("need sequence_length >= 2, context_length >= 2 and sequence_offset >= 0")
        if self.window_length > self.corpus.trajectory_length:
            raise ValueError(
                f"a window of context_length/sequence_offset + sequence_length = {self.window_length} points does "
                f"not fit in corpus.trajectory_length = {self.corpus.trajectory_length}"
            )
        if not 0 < self.final_learning_rate <= self.learning_rate:
            raise ValueError("need 0 < final_learning_rate <= learning_rate")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"need 0 <= warmup_epochs < epochs, got {self.warmup_epochs} and {self.epochs}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.initialization not in INITIALIZATIONS:
            raise ValueError(f"initialization must be one of {INITIALIZATIONS}, got {self.initialization!r}")
        if self.tau1_floor < 0 or self.tau2_floor < 0:
            raise ValueError("tau1_floor and tau2_floor must be >= 0")
        if self.architecture.N != 3:
            raise ValueError(f"the corpus is three-dimensional, so architecture.N must be 3, got {self.architecture.N}")

    @property
    def total_updates(self) -> int:
        return self.epochs * self.batches_per_epoch

    @property
    def window_length(self) -> int:
        return max(self.context_length, self.sequence_offset + self.sequence_length)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> TrainingConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Training config {path} does not exist.")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingConfig:
        """Build from nested dicts: top-level fields, ``[architecture]``, ``[corpus]`` and ``[training]``."""
        data = dict(data)
        flat = {**data.pop("training", {})}
        architecture = Architecture(**_known(Architecture, data.pop("architecture", {}), "architecture"))
        corpus_fields = _known(CorpusConfig, data.pop("corpus", {}), "corpus")
        for key in ("points_per_period", "corpus_densities", "systems"):
            if corpus_fields.get(key) is not None:
                corpus_fields[key] = tuple(corpus_fields[key])
        flat.update(data)
        top = _known(cls, flat, "training")
        return cls(**top, architecture=architecture, corpus=CorpusConfig(**corpus_fields))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["architecture"] = asdict(self.architecture)
        return data


def _known(kind, values: dict, section: str) -> dict:
    names = {f.name for f in fields(kind)} - {"architecture", "corpus"}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in [{section}]; allowed: {sorted(names)}")
    return dict(values)


def initial_model(config: TrainingConfig) -> DynaMix:
    """The untrained network of ``config``, seeded; its MLP biases are zero."""
    model = DynaMix(config.architecture)
    generator = torch.Generator().manual_seed(config.seed)
    if config.initialization == "authors":
        authors_initialization(model, generator)
    else:
        model.reset_parameters(generator)
    return model


@dataclass(frozen=True)
class Batch:
    """One training batch; the same arrays feed either backend."""

    context: np.ndarray  # (B, T_C, N) clean
    sequence: np.ndarray  # (B, L, N) with input noise: initial state, forcing signal and target
    noise: np.ndarray  # (B, L - 1, N) standard normal gating noise


def sample_batch(trajectories: np.ndarray, config: TrainingConfig, rng: np.random.Generator) -> Batch:
    """Random windows of ``trajectories`` (K, T, N), uniformly over trajectories and start points."""
    count, length, _ = trajectories.shape
    window = config.window_length
    which = rng.integers(count, size=config.batch_size)
    start = rng.integers(length - window + 1, size=config.batch_size)
    windows = trajectories[which[:, None], start[:, None] + np.arange(window)]  # (B, window, N)
    return batch_from_windows(windows, config, rng)


def batch_from_windows(windows: np.ndarray, config: TrainingConfig, rng: np.random.Generator) -> Batch:
    """Cut windows (B, window_length, N) into a clean context and a noisy sequence, and draw the gating noise."""
    count, _, n = windows.shape
    sequence = windows[:, config.sequence_offset : config.sequence_offset + config.sequence_length]
    shape = (count, config.sequence_length, n)
    noisy = (sequence + config.input_noise * rng.standard_normal(shape)).astype(np.float32)
    noise = rng.standard_normal((count, config.sequence_length - 1, n)).astype(np.float32)
    return Batch(np.ascontiguousarray(windows[:, : config.context_length], dtype=np.float32), noisy, noise)


def sigma_penalty(model: DynaMix, config: TrainingConfig) -> torch.Tensor:
    """mean(exp(-|sigma| / sigma_scale)): keeps the gating noise from collapsing to zero."""
    return torch.mean(torch.exp(-model.gating_network.sigma.abs() / config.sigma_scale))


def compute_gradients(model: DynaMix, batch: Batch, config: TrainingConfig) -> tuple[float, float, float]:
    """Fill every parameter's ``.grad`` with the gradient of the loss; returns (MSE, penalty, largest |z|)."""
    model.zero_grad(set_to_none=False)
    if config.backend == "fused":
        mse, largest, gradients = loss_and_gradients(
            model, batch.context, batch.sequence, batch.noise, config.teacher_forcing_interval, config.detach_query
        )
        for name, parameter in model.named_parameters():
            parameter.grad.copy_(torch.from_numpy(gradients[name]))
    else:
        loss, largest_tensor = rollout_loss(
            model,
            torch.from_numpy(batch.context),
            torch.from_numpy(batch.sequence),
            torch.from_numpy(batch.noise),
            config.teacher_forcing_interval,
            config.detach_query,
        )
        loss.backward()
        mse, largest = loss.item(), largest_tensor.item()
    penalty = sigma_penalty(model, config)
    (config.sigma_regularization * penalty).backward()
    return mse, penalty.item(), largest


def floor_temperatures(model: DynaMix, config: TrainingConfig) -> None:
    """Keep |softmax_temp1| >= ``tau1_floor`` and |softmax_temp2| >= ``tau2_floor``, signs unchanged."""
    gating = model.gating_network
    with torch.no_grad():
        for temperature, floor in (
            (gating.softmax_temp1, config.tau1_floor),
            (gating.softmax_temp2, config.tau2_floor),
        ):
            sign = torch.where(temperature < 0, -1.0, 1.0)
            temperature.copy_(sign * temperature.abs().clamp_min(floor))


def clip_per_array(parameters: list[torch.nn.Parameter], limit: float) -> float:
    """Scale each gradient array to L2 norm <= ``limit`` on its own; returns the largest norm before clipping."""
    largest = 0.0
    for parameter in parameters:
        norm = float(torch.linalg.vector_norm(parameter.grad))
        if not norm <= largest:  # NaN sticks
            largest = norm
        if norm > limit:
            parameter.grad.mul_(limit / norm)
    return largest


def validate(model: DynaMix, corpus: Corpus, seed: int) -> dict[str, float]:
    """Median D_stsp, D_H and MASE of free-running forecasts on the validation systems."""
    contexts = list(corpus.validation_contexts.astype(np.float64))
    targets = corpus.validation_targets
    frozen = copy.deepcopy(model).eval().requires_grad_(False)  # forecasting backends expect inference weights
    try:
        predicted = forecast(frozen, contexts, targets.shape[1], random_state=seed)  # (H, V, N)
    except DivergenceError:
        return {"D_stsp": math.nan, "D_H": math.nan, "MASE": math.nan}
    scores = {"D_stsp": [], "D_H": [], "MASE": []}
    for v, truth in enumerate(targets):
        scores["D_stsp"].append(state_space_divergence(truth, predicted[:, v]))
        scores["D_H"].append(power_spectrum_distance(truth, predicted[:, v]))
        scores["MASE"].append(mase(truth, predicted[:, v]))
    return {key: float(np.median(values)) for key, values in scores.items()}


class Trainer:
    """A resumable training run writing checkpoints, a CSV log and the final weights to ``output_dir``.

    >>> import tempfile
    >>> config = TrainingConfig.from_dict({"architecture": {"M": 8, "J": 2, "P": 1}})
    >>> trainer = Trainer(config, tempfile.mkdtemp())
    >>> trainer.update
    0
    """

    def __init__(
        self, config: TrainingConfig, output_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None
    ):
        self.config = config
        self.output_dir = Path(output_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.output_dir / "cache"
        self.model = initial_model(config)
        for name, parameter in self.model.named_parameters():
            parameter.grad = torch.zeros_like(parameter)
            parameter.requires_grad_(name not in FROZEN)
        self.trained = [p for name, p in self.model.named_parameters() if name not in FROZEN]
        self.optimizer = torch.optim.RAdam(self.trained, lr=config.learning_rate)
        gamma = (config.final_learning_rate / config.learning_rate) ** (1.0 / config.epochs)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=gamma)
        if config.warmup_epochs:
            # Both schedulers multiply the current rate, so a rollback's lower rate carries through the ramp.
            warmup = torch.optim.lr_scheduler.LinearLR(
                self.optimizer, start_factor=0.1, total_iters=config.warmup_epochs
            )
            self.scheduler = torch.optim.lr_scheduler.ChainedScheduler([warmup, self.scheduler])
        self.rng = np.random.default_rng(config.seed + 1)
        self.update = 0
        self.train_seconds = 0.0
        self.rollbacks = 0
        self.consecutive_skips = 0
        self.snapshot = self._snapshot()

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    @property
    def weights_path(self) -> Path:
        return self.output_dir / f"{self.config.name}.safetensors"

    def save_checkpoint(self) -> Path:
        state = {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": json.dumps(self.rng.bit_generator.state),  # its 128-bit integers survive as JSON text
            "update": self.update,
            "train_seconds": self.train_seconds,
            "rollbacks": self.rollbacks,
            "consecutive_skips": self.consecutive_skips,
            "snapshot": self.snapshot,
        }
        partial = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(self.checkpoint_path)  # atomic: a crash never leaves a half-written checkpoint
        return self.checkpoint_path

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, weights_only=True)
        if state["config"] != self.config.to_dict():
            raise ValueError(
                f"{self.checkpoint_path} was written with a different config; use another --output or drop --resume."
            )
        with torch.no_grad():
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.update = int(state["update"])
        self.train_seconds = float(state["train_seconds"])
        self.rollbacks = int(state["rollbacks"])
        self.consecutive_skips = int(state["consecutive_skips"])
        self.snapshot = state["snapshot"]

    def _snapshot(self) -> dict:
        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})

    def roll_back(self) -> None:
        """Restore the last snapshot and lower the learning rate by ``rollback_factor`` for the rest of the run."""
        with torch.no_grad():
            self.model.load_state_dict(self.snapshot["model"])
        self.optimizer.load_state_dict(self.snapshot["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] *= self.config.rollback_factor
        self.snapshot = self._snapshot()  # the lowered rate holds after a later rollback too
        self.rollbacks += 1

    def step(self, batch: Batch) -> tuple[float, float, float, float] | None:
        """One update from ``batch``: (MSE, penalty, largest |z|, largest gradient norm), None if skipped."""
        mse, penalty, largest = compute_gradients(self.model, batch, self.config)
        norm = clip_per_array(self.trained, self.config.gradient_clip)
        if not (math.isfinite(mse) and math.isfinite(norm) and largest <= self.config.max_latent):
            return None
        self.optimizer.step()
        floor_temperatures(self.model, self.config)
        return mse, penalty, largest, norm

    def run(self, resume: bool = False, progress: bool = True, until_epoch: int | None = None) -> Path | None:
        """Train to ``config.epochs`` (continuing from the checkpoint if ``resume``); returns the weights file.

        With ``until_epoch``, stop after that epoch with a checkpoint and return None,
        so a long run can be split over several sessions.
        """
        config = self.config
        last_update = (
            config.total_updates
            if until_epoch is None
            else min(config.total_updates, until_epoch * config.batches_per_epoch)
        )
        torch.set_num_threads(config.threads)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_path.is_file():
            self.load_checkpoint()
            logger.info("resuming from update %d of %d", self.update, config.total_updates)
        elif self.checkpoint_path.is_file():
            raise FileExistsError(
                f"{self.checkpoint_path} exists; pass --resume to continue it or choose another --output."
            )
        self._truncate_log()
        corpus = load_or_build(config.corpus, self.cache_dir)
        bar = tqdm(
            total=config.total_updates,
            initial=self.update,
            disable=not progress,
            mininterval=5.0,
            file=sys.stderr,
            desc=config.name,
        )
        totals = np.zeros(3)  # mse, penalty, accepted updates
        extremes = np.zeros(2)  # largest |z|, largest gradient norm
        started = time.perf_counter()
        rollbacks_before_epoch = self.rollbacks
        while self.update < last_update:
            result = self.step(sample_batch(corpus.trajectories, config, self.rng))
            if result is not None:
                totals += (result[0], result[1], 1)
                extremes = np.maximum(extremes, result[2:])
                self.consecutive_skips = 0
            else:
                self.consecutive_skips += 1
                if self.consecutive_skips >= config.max_consecutive_skips:
                    self.roll_back()
                    self.consecutive_skips = 0
            self.update += 1
            bar.update()
            if self.update % config.batches_per_epoch == 0:
                self.scheduler.step()
                self.train_seconds += time.perf_counter() - started
                epoch = self.update // config.batches_per_epoch
                # An epoch whose every update was skipped logs NaN, not a misleading zero loss.
                mean_mse, mean_penalty = totals[:2] / totals[2] if totals[2] else (math.nan, math.nan)
                bar.set_postfix(loss=f"{mean_mse + config.sigma_regularization * mean_penalty:.4f}", refresh=False)
                validation = {}
                if epoch % config.validate_every == 0 or self.update == config.total_updates:
                    validation = validate(self.model, corpus, config.seed)
                gating = self.model.gating_network
                self._log(
                    epoch,
                    mean_mse,
                    mean_penalty,
                    {
                        "skipped_updates": config.batches_per_epoch - int(totals[2]),
                        "rollbacks": self.rollbacks,
                        "largest_latent": float(extremes[0]),
                        "largest_gradient_norm": float(extremes[1]),
                        "tau1": abs(gating.softmax_temp1.item()),
                        "tau2": abs(gating.softmax_temp2.item()),
                        **validation,
                    },
                )
                # Only a clean epoch becomes the state a rollback restores: an epoch with skipped updates
                # can end on weights that diverge on most batches (a broad-corpus pilot snapshotted such
                # weights and then rolled back to them 200 times).
                if self.rollbacks == rollbacks_before_epoch and totals[2] == config.batches_per_epoch:
                    self.snapshot = self._snapshot()
                if epoch % config.checkpoint_every == 0 or self.update == last_update:
                    self.save_checkpoint()
                totals[:] = 0.0
                extremes[:] = 0.0
                rollbacks_before_epoch = self.rollbacks
                started = time.perf_counter()
        bar.close()
        if self.update < config.total_updates:
            self.save_checkpoint()
            return None
        save_model(self.model, self.weights_path)
        logger.info("wrote %s after %.0f s of training", self.weights_path, self.train_seconds)
        return self.weights_path

    def _log(self, epoch: int, mse: float, penalty: float, values: dict[str, float]) -> None:
        path = self.output_dir / LOG_NAME
        new = not path.is_file()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(
                {
                    "epoch": epoch,
                    "update": self.update,
                    "loss": mse + self.config.sigma_regularization * penalty,
                    "mse": mse,
                    "sigma_penalty": penalty,
                    "learning_rate": self.scheduler.get_last_lr()[0],
                    "train_seconds": round(self.train_seconds, 1),
                    **values,
                }
            )

    def _truncate_log(self) -> None:
        """Drop log rows newer than the checkpoint, so a resumed run does not log epochs twice."""
        path = self.output_dir / LOG_NAME
        if not path.is_file():
            return
        with path.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["update"]) <= self.update]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

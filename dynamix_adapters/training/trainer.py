"""Pretraining DynaMix from scratch: backpropagation through time with sparse teacher forcing.

One update draws a random batch of training sequences, each with the context
segment of its own trajectory, rolls the model through the sequence with
``DynaMix.step`` and resets the observed dims to the (noisy) data every
``teacher_forcing_interval`` steps. The loss is the MSE on the observed dims plus
``sigma_regularization * mean(exp(-|sigma| / sigma_scale))``, which keeps the
gating noise from collapsing to zero.

A sequence whose free-running stretch blew up must neither dominate the update nor
stop training. Its MSE is capped: a sequence above ``max_loss`` enters the loss
scaled down to ``max_loss`` (its gradient keeps the direction that shrinks the
blow-up), a non-finite one is dropped, and an update whose gradient is non-finite is
skipped. Skipping whole batches instead stalls a run for good: once a few sequences
per batch explode, every batch is skipped and the weights never change again (a
batch-64 run at learning rate 5e-3 stopped learning after about 900 updates). The log
counts capped sequences per epoch.

Runs are seeded and resumable: a checkpoint holds the model, optimizer, learning
rate schedule, random generator, update count and training time, and a resumed run
continues bit for bit where the checkpoint left off.
"""

from __future__ import annotations

import copy
import csv
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

from ..engine import DivergenceError
from ..forecast import forecast
from ..metrics import mase, power_spectrum_distance, state_space_divergence
from ..model import Architecture, DynaMix
from ..weights import save_model
from .corpus import Corpus, CorpusConfig, load_or_build

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
    "capped_sequences",
    "skipped_updates",
    "D_stsp",
    "D_H",
    "MASE",
)


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that determines a training run; read from a TOML file with :meth:`from_toml`.

    >>> config = TrainingConfig.from_dict({"name": "tiny", "architecture": {"M": 8, "J": 2, "P": 1}})
    >>> config.architecture
    Architecture(M=8, N=3, J=2, P=1)
    >>> config.total_updates
    100000
    """

    name: str = "dynamix-3d-adapters"
    seed: int = 0
    threads: int = 1
    architecture: Architecture = field(default_factory=Architecture)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    epochs: int = 2000
    batches_per_epoch: int = 50
    batch_size: int = 16
    sequence_length: int = 100
    teacher_forcing_interval: int = 10
    input_noise: float = 0.05
    sigma_regularization: float = 0.1
    sigma_scale: float = 0.01
    learning_rate: float = 5e-3
    final_learning_rate: float = 1e-5
    gradient_clip: float = 10.0
    max_loss: float = 10.0  # a sequence's MSE above this is scaled down to it
    validate_every: int = 10  # epochs
    checkpoint_every: int = 5  # epochs

    def __post_init__(self):
        positive = ("threads", "epochs", "batches_per_epoch", "batch_size", "teacher_forcing_interval")
        for name in (*positive, "validate_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 2 <= self.sequence_length <= self.corpus.training_length:
            raise ValueError(
                f"sequence_length must lie in [2, corpus.training_length={self.corpus.training_length}], "
                f"got {self.sequence_length}"
            )
        if not 0 < self.final_learning_rate <= self.learning_rate:
            raise ValueError("need 0 < final_learning_rate <= learning_rate")
        if self.architecture.N != 3:
            raise ValueError(f"the corpus is three-dimensional, so architecture.N must be 3, got {self.architecture.N}")

    @property
    def total_updates(self) -> int:
        return self.epochs * self.batches_per_epoch

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
        for key in ("points_per_period", "systems"):
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
    model = DynaMix(config.architecture)
    model.reset_parameters(torch.Generator().manual_seed(config.seed))
    return model


def sample_batch(corpus_tensors, batch_size: int, length: int, generator: torch.Generator):
    """Random (context (B, T_C, N), sequence (B, length, N)) pairs, each from one trajectory."""
    contexts, sequences = corpus_tensors
    trajectory = torch.randint(len(sequences), (batch_size,), generator=generator)
    start = torch.randint(sequences.shape[1] - length + 1, (batch_size,), generator=generator)
    steps = start[:, None] + torch.arange(length)
    return contexts[trajectory], sequences[trajectory[:, None], steps]


def teacher_forcing_loss(
    model: DynaMix,
    context: torch.Tensor,  # (B, T_C, N)
    sequence: torch.Tensor,  # (B, L, N)
    config: TrainingConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE on the observed dims per sequence (B,), sigma penalty) of one sparsely teacher-forced rollout."""
    n = model.arch.N
    batch, length, _ = sequence.shape
    noisy_context = context + config.input_noise * torch.randn(context.shape, generator=generator)
    noisy_sequence = sequence + config.input_noise * torch.randn(sequence.shape, generator=generator)
    gating_noise = torch.randn((length - 1, batch, n), generator=generator)
    keys = noisy_context[:, :-1]
    encodings = model.gating_network.encode(noisy_context)
    z = model.initial_state(noisy_sequence[:, 0])
    experts = model.expert_stack()
    predictions = []
    for t in range(1, length):
        z = model.step(z, keys, encodings, gating_noise[t - 1], experts=experts)
        predictions.append(z[:, :n])
        if t % config.teacher_forcing_interval == 0:
            z = torch.cat([noisy_sequence[:, t], z[:, n:]], dim=-1)
    mse = torch.mean((torch.stack(predictions, dim=1) - sequence[:, 1:]) ** 2, dim=(1, 2))  # (B,)
    penalty = torch.mean(torch.exp(-model.gating_network.sigma.abs() / config.sigma_scale))
    return mse, penalty


def capped_mse(per_sequence: torch.Tensor, max_loss: float) -> tuple[torch.Tensor | None, int]:
    """Batch MSE from per-sequence MSEs (B,) with blown-up sequences capped; and how many were capped.

    A finite sequence above ``max_loss`` is scaled by ``max_loss / its value`` (held
    constant), so it contributes ``max_loss`` and the gradient of ``max_loss * log(mse)``;
    a non-finite one is dropped. None when no sequence is finite.

    >>> mse, capped = capped_mse(torch.tensor([1.0, 40.0, float("nan")]), max_loss=10.0)
    >>> round(mse.item(), 3), capped
    (5.5, 2)
    """
    finite = torch.isfinite(per_sequence)
    values = per_sequence[finite]
    scale = (max_loss / values.detach()).clamp(max=1.0)
    capped = int((~finite).sum()) + int((scale < 1.0).sum())
    if values.numel() == 0:
        return None, capped
    return torch.mean(values * scale), capped


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
        self.optimizer = torch.optim.RAdam(self.model.parameters(), lr=config.learning_rate)
        gamma = (config.final_learning_rate / config.learning_rate) ** (1.0 / config.total_updates)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=gamma)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.update = 0
        self.train_seconds = 0.0

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
            "generator": self.generator.get_state(),
            "update": self.update,
            "train_seconds": self.train_seconds,
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
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.update = int(state["update"])
        self.train_seconds = float(state["train_seconds"])

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
        tensors = (torch.from_numpy(corpus.contexts), torch.from_numpy(corpus.sequences))
        bar = tqdm(
            total=config.total_updates,
            initial=self.update,
            disable=not progress,
            mininterval=5.0,
            file=sys.stderr,
            desc=config.name,
        )
        totals = np.zeros(4)  # mse, penalty, accepted updates, capped sequences
        started = time.perf_counter()
        while self.update < last_update:
            context, sequence = sample_batch(tensors, config.batch_size, config.sequence_length, self.generator)
            per_sequence, penalty = teacher_forcing_loss(self.model, context, sequence, config, self.generator)
            mse, capped = capped_mse(per_sequence, config.max_loss)
            totals[3] += capped
            if mse is not None:
                self.optimizer.zero_grad(set_to_none=True)
                (mse + config.sigma_regularization * penalty).backward()
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.gradient_clip)
                if torch.isfinite(norm):
                    self.optimizer.step()
                    totals[:3] += (mse.item(), penalty.item(), 1)
            self.scheduler.step()
            self.update += 1
            bar.update()
            if self.update % config.batches_per_epoch == 0:
                self.train_seconds += time.perf_counter() - started
                epoch = self.update // config.batches_per_epoch
                mean_mse, mean_penalty = totals[:2] / max(totals[2], 1.0)
                counts = {
                    "capped_sequences": int(totals[3]),
                    "skipped_updates": config.batches_per_epoch - int(totals[2]),
                }
                bar.set_postfix(loss=f"{mean_mse + config.sigma_regularization * mean_penalty:.4f}", refresh=False)
                validation = {}
                if epoch % config.validate_every == 0 or self.update == config.total_updates:
                    validation = validate(self.model, corpus, config.seed)
                self._log(epoch, mean_mse, mean_penalty, counts, validation)
                if epoch % config.checkpoint_every == 0 or self.update == last_update:
                    self.save_checkpoint()
                totals[:] = 0.0
                started = time.perf_counter()
        bar.close()
        if self.update < config.total_updates:
            self.save_checkpoint()
            return None
        save_model(self.model, self.weights_path)
        logger.info("wrote %s after %.0f s of training", self.weights_path, self.train_seconds)
        return self.weights_path

    def _log(
        self, epoch: int, mse: float, penalty: float, counts: dict[str, int], validation: dict[str, float]
    ) -> None:
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
                    **counts,
                    **validation,
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

"""Fine-tuning a loaded DynaMix on a user's own series, with pretraining's windows, loss and optimizer.

The series are first mapped into the model's N dims exactly as a forecast maps its
context (``transforms.BatchEncoding``: trend removal, per-dim scaling, embedding or split into
univariate units), once for every setting an "auto" forecast may choose. Each
unit's frames then play the part of a corpus trajectory: a window gives a clean
context and a noisy sequence (the last ``ahead`` points of the context and the next
``ahead``), the loss is pretraining's sparsely forced rollout MSE plus the sigma
penalty (``trainer.compute_gradients``), gradients are clipped per array and RAdam
steps with an exponentially decaying learning rate, as in pretraining.

The last part of every unit is held out: training windows end before it, and
validation windows forecast its points freely (no forcing) from the context before
each of them. The validation MSE is measured before the first update and after every
epoch; the weights with the lowest one, the starting weights included, are the
result, and training stops after ``patience`` epochs without improvement. So the
result never scores worse than the start on the held-out windows.

A lower short-term error can come with a worse attractor: on a chaotic trajectory, a
few updates that sharpen the next 50 steps can distort the long-run geometry. On units
of at least ``LONG_RUN_FRAMES`` frames, an epoch therefore also has to keep the
state-space divergence (``metrics.state_space_divergence``) between the unit's frames
and long free runs from the start of its held-out part at or below the starting
weights' to count as an improvement. And on every run, an epoch must not let more
free runs of ``STABILITY_STEPS`` steps from the validation contexts diverge (by the
forecast's own criterion, ``rollout.dispatch.EXPLOSION_FACTOR``) than the starting weights do:
weights tuned on short windows can be unstable beyond them, and a diverged forecast is
returned as NaN.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..metrics import state_space_divergence
from ..model import DynaMix
from ..pipeline import DynaMixPipeline, ForecastUnits, SeriesInput
from ..rollout import seed_entropy
from ..rollout.dispatch import EXPLOSION_FACTOR
from ..transforms.encoding import BatchEncoding
from ..transforms.preprocessing import min_context_length
from ..transforms.selection import candidates
from ..weights import save_model
from .reference import rollout_loss, rollout_predictions
from .trainer import FROZEN, TrainingConfig, batch_from_windows, clip_per_array, compute_gradients, floor_temperatures

logger = logging.getLogger(__name__)

MIN_AHEAD = 2
MIN_UNIT_FRAMES = 10  # a held-out part of 2 and a training part of 8: a context of 4 and 2 steps ahead
MAX_VALIDATION_WINDOWS = 512
# The long-run check (see the module docstring): units of at least LONG_RUN_FRAMES frames, at most
# MAX_LONG_RUN_UNITS of them, each free-running LONG_RUN_STEPS steps from LONG_RUN_PATHS noise draws.
LONG_RUN_FRAMES = 1000
MAX_LONG_RUN_UNITS = 8
LONG_RUN_STEPS = 2000
LONG_RUN_PATHS = 4
# The stability check: free runs this long from (at most this many of) the validation contexts.
STABILITY_STEPS = 100
MAX_STABILITY_RUNS = 32


@dataclass(frozen=True)
class FinetuneConfig:
    """How a fine-tuning run samples, steps and stops; the loss settings are pretraining's.

    >>> FinetuneConfig().learning_rate
    0.003
    >>> FinetuneConfig(epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: FinetuneConfig.epochs must be >= 1, got 0
    """

    epochs: int = 60
    batches_per_epoch: int = 10
    batch_size: int = 16
    # 300x the rate pretraining ended at, tuned on Track B's histories (docs/benchmarks.md); the
    # early stopping and its guards keep what does not help the held-out part from reaching the result.
    learning_rate: float = 3e-3
    final_learning_rate: float = 3e-4
    patience: int = 12  # epochs without a better held-out score before stopping
    context_length: int = 500  # the longest context of a window
    forecast_length: int = 50  # the most steps after the context a window's loss covers
    forecast_share: float = 1 / 6  # ... and at most this share of the shortest series' training part
    validation_fraction: float = 0.3  # of each unit's frames, held out for early stopping
    teacher_forcing_interval: int = 10
    input_noise: float = 0.05
    sigma_regularization: float = 0.1
    gradient_clip: float = 10.0
    tau1_floor: float = 0.03
    tau2_floor: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batches_per_epoch", "batch_size", "patience", "teacher_forcing_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.context_length < 2 * MIN_AHEAD or self.forecast_length < MIN_AHEAD:
            raise ValueError(f"need context_length >= {2 * MIN_AHEAD} and forecast_length >= {MIN_AHEAD}")
        if not 0 < self.final_learning_rate <= self.learning_rate:
            raise ValueError("need 0 < final_learning_rate <= learning_rate")
        if not 0 < self.forecast_share <= 0.25:
            raise ValueError(f"forecast_share must lie in (0, 0.25], got {self.forecast_share}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction}")


@dataclass(frozen=True)
class Geometry:
    """Window sizes of one run: ``context`` points of context, then ``ahead`` forecast steps."""

    context: int
    ahead: int
    held_out: tuple[int, ...]  # per unit: frames at its end that no training window reaches

    @classmethod
    def of(cls, lengths: list[int], config: FinetuneConfig) -> Geometry:
        """Sizes for units of these lengths (each at least ``MIN_UNIT_FRAMES``).

        A unit holds out ``validation_fraction`` of its frames, but keeps at least
        ``MIN_UNIT_FRAMES - MIN_AHEAD`` for training, so the shortest units still train.
        """
        held = [
            max(MIN_AHEAD, min(math.ceil(config.validation_fraction * n), n - MIN_UNIT_FRAMES + MIN_AHEAD))
            for n in lengths
        ]
        shortest = min(n - h for n, h in zip(lengths, held, strict=True))
        share = max(MIN_AHEAD, int(shortest * config.forecast_share + 1e-9))
        ahead = min(config.forecast_length, config.context_length // 2, share)
        context = min(config.context_length, (shortest - ahead) * 2 // 3)
        return cls(context, ahead, tuple(max(h, ahead) for h in held))

    def training_config(self, config: FinetuneConfig, backend: str) -> TrainingConfig:
        """Pretraining's settings for this geometry: sequence = last ``ahead`` context points + the next ``ahead``."""
        return TrainingConfig(
            batch_size=config.batch_size,
            context_length=self.context,
            sequence_length=2 * self.ahead,
            sequence_offset=self.context - self.ahead,
            teacher_forcing_interval=config.teacher_forcing_interval,
            input_noise=config.input_noise,
            sigma_regularization=config.sigma_regularization,
            learning_rate=config.learning_rate,
            final_learning_rate=config.final_learning_rate,
            gradient_clip=config.gradient_clip,
            backend=backend,
            tau1_floor=config.tau1_floor,
            tau2_floor=config.tau2_floor,
        )


@dataclass
class FinetuneResult:
    """The fine-tuned model and how it got there."""

    pipeline: DynaMixPipeline  # the fine-tuned model with the options and backend it was tuned through
    start_score: float  # held-out MSE of the starting weights
    best_score: float  # held-out MSE of ``model``: never above start_score
    best_epoch: int  # 0 when no epoch beat the start
    epochs_run: int
    seconds: float
    n_units: int
    n_validation_windows: int
    geometry: Geometry
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, validation_mse

    @property
    def model(self) -> DynaMix:
        return self.pipeline.model

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fine-tuned weights as safetensors in the official key layout (loads back with ``model=path``)."""
        return save_model(self.model, path)

    def summary(self) -> dict:
        """Plain numbers for logs and ``get_pretrained_params``."""
        return {
            "start_validation_mse": self.start_score,
            "best_validation_mse": self.best_score,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "seconds": round(self.seconds, 2),
            "units": self.n_units,
            "validation_windows": self.n_validation_windows,
            "context": self.geometry.context,
            "ahead": self.geometry.ahead,
        }


@dataclass(frozen=True)
class Frames:
    """All units' model-space frames, concatenated, with where each unit starts and how many frames it trains on."""

    values: np.ndarray  # (sum of lengths, N) float32
    offsets: np.ndarray  # (U,)
    lengths: np.ndarray  # (U,)

    @classmethod
    def of(cls, units: list[np.ndarray]) -> Frames:
        lengths = np.array([len(u) for u in units])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return cls(np.concatenate(units).astype(np.float32), offsets, lengths)

    def gather(self, unit: np.ndarray, start: np.ndarray, length: int) -> np.ndarray:
        """Windows (B, length, N) of ``unit`` from ``start`` (both (B,))."""
        return self.values[(self.offsets[unit] + start)[:, None] + np.arange(length)]


def encode_units(pipeline: DynaMixPipeline, series: list[np.ndarray]) -> list[np.ndarray]:
    """Each series in model space as its forecasts may see it: the frames (T', N) of each unit under each setting.

    A series wider than the model is split into one unit per dim, as a forecast splits it
    (``pipeline.ForecastUnits``). With "auto" options a forecast may pick any candidate
    setting (``selection.candidates``) for a unit, and may pick another one once the
    weights change; so every unit is encoded with every candidate its length allows, all
    in one ``BatchEncoding``, and the tuned model learns them all. Encodings that leave
    float range (a trend extrapolated off a short series) are skipped.
    """
    options, model_dims = pipeline.options, pipeline.model.arch.N
    units = ForecastUnits.of([options.trim(s) for s in series], None, None, model_dims).series
    dims = units[0].shape[1]
    jobs = [
        (u, preprocessing, nonstationary)
        for u, x in enumerate(units)
        for preprocessing, nonstationary in candidates(options, dims, model_dims, stationary_only=False)
        if len(x) >= min_context_length(preprocessing, dims, model_dims)
    ]
    if not jobs:
        return []
    source, methods, flags = zip(*jobs, strict=True)
    with np.errstate(all="ignore"):
        encoding = BatchEncoding.fit(
            units,
            methods,
            flags,
            standardize=options.standardize,
            model_dims=model_dims,
            entropy=seed_entropy(options.random_state),
            source=source,
        )
    frames = [encoding.context[j, first:] for j, first in enumerate(encoding.valid_from)]
    return [f for f in frames if len(f) >= 2 and np.isfinite(f).all()]


def finetune(
    pipeline: DynaMixPipeline, series, config: FinetuneConfig | None = None, progress: bool = True
) -> FinetuneResult:
    """Fine-tune ``pipeline.model`` on ``series``; the result holds a pipeline with the tuned model.

    Parameters
    ----------
    pipeline : DynaMixPipeline
        The starting weights, and the options that say how series enter the model (as in
        a forecast: scaling, trend, embedding, "auto" choices). It is left untouched.
    series : list of array-like
        Series (T_s,) or (T_s, D), any lengths, all with the same D.
    config : FinetuneConfig, optional
        Sampling, optimizer and early-stopping settings.
    progress : bool
        Show a tqdm progress bar.

    Examples
    --------
    >>> import numpy as np
    >>> from dynamix_adapters.model import Architecture, DynaMix
    >>> start = DynaMixPipeline(DynaMix(Architecture(M=8, N=3, J=2, P=1)))
    >>> waves = [np.sin(np.arange(200) / (3 + s)) for s in range(3)]
    >>> result = finetune(start, waves, FinetuneConfig(epochs=2, batches_per_epoch=2), progress=False)
    >>> result.best_score <= result.start_score
    True
    """
    config = config or FinetuneConfig()
    started = time.perf_counter()
    arrays = [np.asarray(x)[:, None] if np.ndim(x) == 1 else x for x in series] if isinstance(series, list) else series
    units = encode_units(pipeline, SeriesInput.of(arrays).series)
    kept = [u for u in units if len(u) >= MIN_UNIT_FRAMES]
    if not kept:
        raise ValueError(
            f"Every series is shorter than the {MIN_UNIT_FRAMES} points fine-tuning needs for a context, a forecast "
            "window and a held-out part (delay embeddings take a few points more); pass longer series."
        )
    if len(kept) < len(units):
        warnings.warn(
            f"{len(units) - len(kept)} of {len(units)} encoded series are shorter than {MIN_UNIT_FRAMES} points "
            "(delay embeddings lose a few); fine-tuning leaves them out.",
            stacklevel=2,
        )
    frames = Frames.of(kept)
    geometry = Geometry.of(frames.lengths.tolist(), config)
    model = _trainable_copy(pipeline.model)
    backend = "fused" if _zero_biases(model) else "torch"
    training = geometry.training_config(config, backend)
    validation = validation_batch(frames, geometry, config.seed)
    trained = [p for name, p in model.named_parameters() if name not in FROZEN]
    optimizer = torch.optim.RAdam(trained, lr=config.learning_rate, foreach=True)  # one kernel for all arrays
    gamma = (config.final_learning_rate / config.learning_rate) ** (1.0 / config.epochs)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    rng = np.random.default_rng([config.seed, 1])
    # Window starts per unit (Geometry leaves every unit at least one); windows are drawn uniformly over all.
    trainable = frames.lengths - np.array(geometry.held_out) - training.window_length + 1
    weights = trainable / trainable.sum()

    long_runs = LongRuns.of(frames, geometry, config.seed)
    stability = StabilityRuns.of(validation, config.seed)
    start_score, start_diverged = validation_mse(model, validation), stability.diverged(model)
    start_divergence = long_runs.divergence(model) if long_runs else 0.0
    best_score, best_epoch, best_state = start_score, 0, copy.deepcopy(model.state_dict())
    history, stale, epoch = [], 0, 0
    bar = tqdm(total=config.epochs * config.batches_per_epoch, disable=not progress, file=sys.stderr, desc="fine-tune")
    for epoch in range(1, config.epochs + 1):
        losses = []
        for _ in range(config.batches_per_epoch):
            unit = rng.choice(len(weights), size=config.batch_size, p=weights)
            start = np.floor(rng.random(config.batch_size) * trainable[unit]).astype(int)
            batch = batch_from_windows(frames.gather(unit, start, training.window_length), training, rng)
            mse, penalty, largest = compute_gradients(model, batch, training)
            norm = clip_per_array(trained, training.gradient_clip)
            if math.isfinite(mse) and math.isfinite(norm) and largest <= training.max_latent:
                optimizer.step()
                floor_temperatures(model, training)
                losses.append(mse + training.sigma_regularization * penalty)
            bar.update()
        scheduler.step()
        score = validation_mse(model, validation)
        history.append(
            {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else math.nan, "validation_mse": score}
        )
        bar.set_postfix(validation=f"{score:.4g}", best=f"{best_score:.4g}", refresh=False)
        if (
            score < best_score
            and stability.diverged(model) <= start_diverged
            and (long_runs is None or long_runs.divergence(model) <= start_divergence)
        ):
            best_score, best_epoch, best_state, stale = score, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    with torch.no_grad():
        model.load_state_dict(best_state)
    model.eval().requires_grad_(False)
    result = FinetuneResult(
        DynaMixPipeline(model, pipeline.options, pipeline.backend),
        start_score,
        best_score,
        best_epoch,
        epoch,
        time.perf_counter() - started,
        len(frames.lengths),
        len(validation[0]),
        geometry,
        history,
    )
    logger.info("fine-tuned: %s", result.summary())
    return result


def validation_batch(frames: Frames, geometry: Geometry, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out windows: contexts (V, context, N), sequences (V, ahead + 1, N) from the last context point, noise.

    Origins lie in each unit's held-out part, ``ceil(ahead / 2)`` apart; with more than
    ``MAX_VALIDATION_WINDOWS`` in all, an evenly spaced subset of them.
    """
    context, ahead = geometry.context, geometry.ahead
    stride = 1
    units, origins = [], []
    for u, (length, held) in enumerate(zip(frames.lengths, geometry.held_out, strict=True)):
        first = max(length - held, context)
        for origin in range(length - ahead, first - 1, -stride):
            units.append(u)
            origins.append(origin)
    units, origins = np.array(units), np.array(origins)
    if len(units) > MAX_VALIDATION_WINDOWS:
        keep = np.linspace(0, len(units) - 1, MAX_VALIDATION_WINDOWS).round().astype(int)
        units, origins = units[keep], origins[keep]
    windows = frames.gather(units, origins - context, context + ahead)
    noise = np.random.default_rng([seed, 2]).standard_normal((len(units), ahead, windows.shape[2]))
    return (
        torch.from_numpy(np.ascontiguousarray(windows[:, :context])),
        torch.from_numpy(np.ascontiguousarray(windows[:, context - 1 :])),
        torch.from_numpy(noise.astype(np.float32)),
    )


@dataclass(frozen=True)
class StabilityRuns:
    """Free runs of ``STABILITY_STEPS`` steps from validation contexts, and the bound each must stay within."""

    context: torch.Tensor  # (R, context, N)
    start: torch.Tensor  # (R, STABILITY_STEPS + 1, N): the first row starts the run, the rest is never read
    noise: torch.Tensor  # (R, STABILITY_STEPS, N)
    limit: torch.Tensor  # (R,)

    @classmethod
    def of(cls, validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor], seed: int) -> StabilityRuns:
        context = validation[0]
        keep = np.linspace(0, len(context) - 1, min(len(context), MAX_STABILITY_RUNS)).round().astype(int)
        context = context[keep]
        start = torch.zeros((len(keep), STABILITY_STEPS + 1, context.shape[2]))
        start[:, 0] = context[:, -1]
        noise = np.random.default_rng([seed, 4]).standard_normal(start[:, 1:].shape).astype(np.float32)
        limit = EXPLOSION_FACTOR * context.abs().amax(dim=(1, 2)).clamp_min(1.0)
        return cls(context, start, torch.from_numpy(noise), limit)

    def diverged(self, model: DynaMix) -> int:
        """How many runs pass their bound or turn non-finite."""
        with torch.no_grad():
            runs, _ = rollout_predictions(model, self.context, self.start, self.noise, interval=STABILITY_STEPS + 1)
        peak = runs.abs().amax(dim=(1, 2))
        return int((~(peak <= self.limit)).sum())


@dataclass(frozen=True)
class LongRuns:
    """Free runs from the start of the held-out part of long units, and each unit's frames to compare them with."""

    context: torch.Tensor  # (R, context, N), LONG_RUN_PATHS rows per unit
    start: torch.Tensor  # (R, LONG_RUN_STEPS + 1, N): the first row starts the run, the rest is never read
    noise: torch.Tensor  # (R, LONG_RUN_STEPS, N)
    truths: tuple[np.ndarray, ...]  # per unit: its frames

    @classmethod
    def of(cls, frames: Frames, geometry: Geometry, seed: int) -> LongRuns | None:
        held = np.array(geometry.held_out)
        units = np.flatnonzero(frames.lengths >= max(LONG_RUN_FRAMES, geometry.context + held.max()))
        if not len(units):
            return None
        units = units[np.linspace(0, len(units) - 1, min(len(units), MAX_LONG_RUN_UNITS)).round().astype(int)]
        runs = np.repeat(units, LONG_RUN_PATHS)
        origins = frames.lengths[runs] - held[runs]
        context = frames.gather(runs, origins - geometry.context, geometry.context)
        start = np.zeros((len(runs), LONG_RUN_STEPS + 1, context.shape[2]), np.float32)
        start[:, 0] = context[:, -1]
        noise = np.random.default_rng([seed, 3]).standard_normal(start[:, 1:].shape).astype(np.float32)
        truths = tuple(frames.gather(np.array([u]), np.zeros(1, int), frames.lengths[u])[0] for u in units)
        return cls(torch.from_numpy(context), torch.from_numpy(start), torch.from_numpy(noise), truths)

    def divergence(self, model: DynaMix) -> float:
        """Mean over units of the divergence of its pooled runs from its frames (inf if not finite)."""
        with torch.no_grad():
            runs, _ = rollout_predictions(model, self.context, self.start, self.noise, interval=LONG_RUN_STEPS + 1)
        pooled = runs.numpy().reshape(len(self.truths), -1, runs.shape[2])  # all paths of a unit in one histogram
        value = float(np.mean([state_space_divergence(t, r) for t, r in zip(self.truths, pooled, strict=True)]))
        return value if math.isfinite(value) else math.inf


def validation_mse(model: DynaMix, validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
    """MSE of free-running forecasts over the held-out windows (inf if any diverged)."""
    context, sequence, noise = validation
    with torch.no_grad():
        mse, _ = rollout_loss(model, context, sequence, noise, interval=sequence.shape[1])
    value = float(mse)
    return value if math.isfinite(value) else math.inf


def _trainable_copy(model: DynaMix) -> DynaMix:
    """A float32 CPU copy with gradients on and ``.grad`` allocated (the loaded model stays read-only)."""
    tuned = copy.deepcopy(model).float().cpu().train()
    for name, parameter in tuned.named_parameters():
        parameter.requires_grad_(name not in FROZEN)
        parameter.grad = torch.zeros_like(parameter)
    return tuned


def _zero_biases(model: DynaMix) -> bool:
    """The fused kernel assumes the recipe's bias-free gating MLP."""
    gating = model.gating_network
    return all(float(layer.bias.detach().abs().max()) == 0 for layer in (gating.mlp_layer1, gating.mlp_layer2))


def with_overrides(config: FinetuneConfig | None, **changes) -> FinetuneConfig:
    """``config`` (default: ``FinetuneConfig()``) with the non-None ``changes`` applied."""
    return replace(config or FinetuneConfig(), **{k: v for k, v in changes.items() if v is not None})

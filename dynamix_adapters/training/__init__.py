"""Reproducible pretraining of DynaMix on a dysts corpus, and export of the result as package weights.

Run ``python -m dynamix_adapters.training --config <file.toml>`` (or ``dynamix-adapters train``);
the recipe of the bundled weights is ``configs/<bundled model name>.toml`` in this folder
(see :func:`shipped_config`).
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from importlib import resources
from pathlib import Path

from ..weights import BUNDLED_MODEL, PACKAGE_WEIGHTS_DIR, save_model
from .corpus import HELD_OUT_SYSTEMS, CorpusConfig, build_corpus, training_systems, validation_systems
from .trainer import Trainer, TrainingConfig

__all__ = [
    "HELD_OUT_SYSTEMS",
    "CorpusConfig",
    "Trainer",
    "TrainingConfig",
    "build_corpus",
    "export_weights",
    "main",
    "shipped_config",
    "training_systems",
    "validation_systems",
]

SHIPPED_CONFIG = f"{BUNDLED_MODEL}.toml"


def shipped_config() -> Path:
    """Path of the config that produced the bundled weights."""
    return Path(str(resources.files(__package__) / "configs" / SHIPPED_CONFIG))


def export_weights(weights: str | Path, destination: str | Path = PACKAGE_WEIGHTS_DIR) -> Path:
    """Copy a trained ``.safetensors`` file into ``destination`` (default: the package's weights folder).

    The file is re-read and re-validated first, so only a loadable weight set in the
    official key layout is ever exported.
    """
    from ..weights import load_model, save_model

    source = Path(weights)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    return save_model(load_model(source), destination / source.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamix-adapters train",
        description="Train DynaMix from scratch on a dysts corpus (seeded and resumable).",
    )
    parser.add_argument("--config", required=True, type=Path, help="training config (TOML)")
    parser.add_argument(
        "--output", type=Path, help="run folder for checkpoints, log and weights (default: outputs/training/<name>)"
    )
    parser.add_argument("--cache-dir", type=Path, help="where the generated corpus is cached (default: <output>/cache)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    parser.add_argument(
        "--finalize",
        nargs="?",
        const=PACKAGE_WEIGHTS_DIR,
        type=Path,
        metavar="DIR",
        help="after training (or at --until-epoch), copy the weights into DIR (default: the package's weights folder)",
    )
    parser.add_argument(
        "--until-epoch",
        type=int,
        metavar="E",
        help="stop after epoch E with a checkpoint (continue later with --resume)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (TOML syntax), e.g. training.detach_query=false; repeatable",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def config_with_overrides(path: Path, overrides: list[str]) -> TrainingConfig:
    """The config in ``path`` with ``SECTION.KEY=VALUE`` overrides applied (VALUE in TOML syntax).

    >>> config = config_with_overrides(shipped_config(), ["training.detach_query=false", "name='ablation'"])
    >>> config.detach_query, config.name
    (False, 'ablation')
    """
    data = tomllib.loads(Path(path).read_text())
    for override in overrides:
        key, equals, value = override.partition("=")
        if not equals:
            raise ValueError(f"--set {override!r}: expected SECTION.KEY=VALUE, e.g. training.epochs=3000")
        try:
            parsed = tomllib.loads(f"value = {value}")["value"]
        except tomllib.TOMLDecodeError:
            raise ValueError(
                f"--set {override!r}: {value!r} is not a TOML value; quote strings, e.g. name='ablation'"
            ) from None
        *sections, leaf = key.strip().split(".")
        table = data
        for section in sections:
            table = table.setdefault(section, {})
        table[leaf] = parsed
    return TrainingConfig.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dynamix-adapters train``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = TrainingConfig.from_toml(args.config) if not args.set else config_with_overrides(args.config, args.set)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.error(str(err))
    output = args.output or Path("outputs") / "training" / config.name
    trainer = Trainer(config, output, cache_dir=args.cache_dir)
    weights = trainer.run(resume=args.resume, progress=not args.no_progress, until_epoch=args.until_epoch)
    if args.finalize is not None:
        if weights is None:  # stopped by --until-epoch: export the weights as they are at that epoch
            weights = save_model(trainer.model, trainer.weights_path)
            logging.getLogger(__name__).warning("exporting a run stopped at update %d", trainer.update)
        logging.getLogger(__name__).info("exported %s", export_weights(weights, args.finalize))
    return 0

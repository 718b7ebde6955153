"""Pretraining: corpus rules, the teacher-forced loss, seeded and resumable runs, and the weights they export."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

pytest.importorskip("dysts")

from dynamix_adapters.training import (
    HELD_OUT_SYSTEMS,
    Trainer,
    TrainingConfig,
    main,
    shipped_config,
    training_systems,
    validation_systems,
)
from dynamix_adapters.training.corpus import (
    Corpus,
    CorpusConfig,
    build_corpus,
    generate_trajectory,
    three_dimensional_systems,
)
from dynamix_adapters.training.trainer import LOG_NAME, sample_batch, teacher_forcing_loss
from dynamix_adapters.weights import OFFICIAL_MODEL, load_model, read_state_dict

TINY = {
    "name": "tiny",
    "seed": 3,
    "architecture": {"M": 8, "J": 2, "P": 1},
    "corpus": {
        "systems": ["SprottA", "Bouali"],
        "trajectories_per_system": 2,
        "context_length": 40,
        "training_length": 60,
        "transient_periods": 2.0,
        "points_per_period": [20, 40],
        "validation_context_length": 40,
        "validation_horizon": 30,
        "workers": 1,
    },
    "training": {
        "epochs": 4,
        "batches_per_epoch": 3,
        "batch_size": 4,
        "sequence_length": 21,
        "validate_every": 2,
        "checkpoint_every": 1,
    },
}


@pytest.fixture(scope="module")
def tiny_config() -> TrainingConfig:
    return TrainingConfig.from_dict(TINY)


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory, tiny_config):
    """One cached tiny corpus for every run in this module."""
    from dynamix_adapters.training.corpus import load_or_build

    cache = tmp_path_factory.mktemp("corpus-cache")
    load_or_build(tiny_config.corpus, cache)
    return cache


def final_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in trainer.model.state_dict().items()}


def test_training_systems_exclude_test_and_held_out_systems():
    systems = training_systems()
    assert len(HELD_OUT_SYSTEMS) >= 12
    assert set(HELD_OUT_SYSTEMS) <= set(three_dimensional_systems())
    assert not set(HELD_OUT_SYSTEMS) & set(systems)
    assert not [s for s in systems if "lorenz" in s.lower() or "chua" in s.lower() or s == "SprottM"]
    assert len(systems) >= 50
    assert set(validation_systems()) <= set(HELD_OUT_SYSTEMS)


def test_corpus_refuses_held_out_systems():
    with pytest.raises(ValueError, match="held-out"):
        build_corpus(CorpusConfig(systems=("Rossler",), workers=1))


def test_trajectories_are_seeded_and_standardized():
    config = CorpusConfig(seed=5, transient_periods=2.0, points_per_period=(30, 30))
    first = generate_trajectory("SprottA", 0, 200, config)
    np.testing.assert_array_equal(first, generate_trajectory("SprottA", 0, 200, config))
    np.testing.assert_allclose(first.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(first.std(axis=0), 1.0, atol=1e-9)
    other = generate_trajectory("SprottA", 1, 200, config)
    assert not np.allclose(first, other)


def test_corpus_splits_context_from_training_segment(tiny_config, corpus_cache):
    from dynamix_adapters.training.corpus import load_or_build

    corpus = load_or_build(tiny_config.corpus, corpus_cache)
    assert isinstance(corpus, Corpus)
    assert corpus.contexts.shape == (4, 40, 3)
    assert corpus.sequences.shape == (4, 60, 3)
    assert corpus.validation_contexts.shape == (3, 40, 3)
    assert corpus.validation_targets.shape == (3, 30, 3)
    assert sorted(set(corpus.systems)) == ["Bouali", "SprottA"]
    # The context segment and the training segment are consecutive pieces of one standardized trajectory.
    whole = np.concatenate([corpus.contexts, corpus.sequences], axis=1)
    np.testing.assert_allclose(whole.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(whole.std(axis=1), 1.0, atol=1e-4)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Unknown key"):
        TrainingConfig.from_dict({"training": {"epoch": 3}})
    with pytest.raises(ValueError, match="sequence_length"):
        TrainingConfig.from_dict({"training": {"sequence_length": 5000}})
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        TrainingConfig.from_toml(bad)


def test_shipped_config_follows_the_published_recipe():
    from dynamix_adapters.weights import BUNDLED_MODEL

    config = TrainingConfig.from_toml(shipped_config())
    assert config.name == BUNDLED_MODEL  # the run writes <name>.safetensors, the file the registry ships
    assert config.architecture.M == 30 and config.architecture.J == 10 and config.architecture.P == 2
    assert config.teacher_forcing_interval == 10
    assert (config.input_noise, config.sigma_regularization, config.gradient_clip) == (0.05, 0.1, 10.0)
    assert (config.learning_rate, config.final_learning_rate) == (3e-3, 1e-5)
    assert config.batch_size == 64 and config.sequence_length == 100
    assert config.corpus.systems is None


def test_teacher_forcing_loss_trains_every_parameter(tiny_config):
    from dynamix_adapters.training.trainer import initial_model

    model = initial_model(tiny_config)
    generator = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 12, 120)
    wave = torch.stack([torch.sin(t), torch.cos(t), torch.sin(2 * t)], dim=-1)
    segments = (wave[None, :40].repeat(4, 1, 1), wave[None, 40:].repeat(4, 1, 1))
    context, sequence = sample_batch(segments, 4, 21, generator)
    mse, penalty = teacher_forcing_loss(model, context, sequence, tiny_config, generator)
    assert mse.shape == (4,)
    (mse.mean() + tiny_config.sigma_regularization * penalty).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    # The penalty is mean(exp(-|sigma| / 0.01)): with sigma at its initial 0.1 it is exp(-10).
    assert math.isclose(penalty.item(), math.exp(-10), rel_tol=1e-5)


def test_teacher_forcing_resets_the_observed_dims(tiny_config):
    """With forcing every step, each prediction starts from the data, so the loss is the one-step loss."""
    from dataclasses import replace

    from dynamix_adapters.training.trainer import initial_model

    model = initial_model(tiny_config)
    every_step = replace(tiny_config, teacher_forcing_interval=1, input_noise=0.0)
    generator = torch.Generator().manual_seed(1)
    context, sequence = torch.randn(2, 30, 3), torch.randn(2, 8, 3)
    forced, _ = teacher_forcing_loss(model, context, sequence, every_step, generator)
    generator = torch.Generator().manual_seed(1)
    torch.randn(context.shape, generator=generator)
    torch.randn(sequence.shape, generator=generator)
    noise = torch.randn((7, 2, 3), generator=generator)
    encodings = model.gating_network.encode(context)
    z = model.initial_state(sequence[:, 0])
    errors = []
    for t in range(1, 8):
        z = model.step(z, context[:, :-1], encodings, noise[t - 1])
        errors.append((z[:, :3] - sequence[:, t]) ** 2)
        z = torch.cat([sequence[:, t], z[:, 3:]], dim=-1)
    assert torch.allclose(forced, torch.stack(errors).mean(dim=(0, 2)))


def test_runs_are_seeded_and_log_every_epoch(tmp_path, tiny_config, corpus_cache):
    first = Trainer(tiny_config, tmp_path / "a", cache_dir=corpus_cache)
    weights = first.run(progress=False)
    second = Trainer(tiny_config, tmp_path / "b", cache_dir=corpus_cache)
    second.run(progress=False)
    for key, value in final_state(first).items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert not torch.equal(first.model.B, Trainer(tiny_config, tmp_path / "c").model.B)

    with (tmp_path / "a" / LOG_NAME).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert [bool(row["D_stsp"]) for row in rows] == [False, True, False, True]
    assert all(math.isfinite(float(row["loss"])) for row in rows)
    assert math.isclose(float(rows[-1]["learning_rate"]), tiny_config.final_learning_rate, rel_tol=1e-6)

    state, declared = read_state_dict(weights)
    assert declared == tiny_config.architecture
    assert set(state) == set(first.model.state_dict())


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_config, corpus_cache):
    straight = Trainer(tiny_config, tmp_path / "straight", cache_dir=corpus_cache)
    straight.run(progress=False)

    interrupted = Trainer(tiny_config, tmp_path / "split", cache_dir=corpus_cache)
    assert interrupted.run(progress=False, until_epoch=2) is None
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_config, tmp_path / "split", cache_dir=corpus_cache).run(progress=False)
    resumed = Trainer(tiny_config, tmp_path / "split", cache_dir=corpus_cache)
    resumed.run(resume=True, progress=False)
    assert resumed.update == tiny_config.total_updates
    for key, value in final_state(straight).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with (tmp_path / "split" / LOG_NAME).open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3, 4]


def test_exploding_sequences_are_capped_and_training_goes_on(tmp_path, tiny_config, corpus_cache):
    from dataclasses import replace

    from dynamix_adapters.training.trainer import initial_model

    strict = replace(tiny_config, max_loss=1e-12)  # every sequence counts as blown up
    trainer = Trainer(strict, tmp_path, cache_dir=corpus_cache)
    trainer.run(progress=False)
    initial = initial_model(strict).state_dict()
    assert any(not torch.equal(value, trainer.model.state_dict()[key]) for key, value in initial.items())
    with (tmp_path / LOG_NAME).open() as handle:
        rows = list(csv.DictReader(handle))
    per_epoch = strict.batches_per_epoch * strict.batch_size
    assert [int(row["capped_sequences"]) for row in rows] == [per_epoch] * 4
    assert [int(row["skipped_updates"]) for row in rows] == [0] * 4


def test_capped_mse_bounds_each_sequence_and_drops_non_finite_ones():
    from dynamix_adapters.training.trainer import capped_mse

    per_sequence = torch.tensor([0.5, 1e6, float("inf"), float("nan")], requires_grad=True)
    mse, capped = capped_mse(per_sequence, max_loss=10.0)
    assert capped == 3 and math.isclose(mse.item(), (0.5 + 10.0) / 2)
    mse.backward()
    assert torch.equal(per_sequence.grad[2:], torch.zeros(2))
    assert math.isclose(per_sequence.grad[1].item(), 10.0 / 1e6 / 2, rel_tol=1e-6)
    assert capped_mse(torch.tensor([float("nan")]), 10.0) == (None, 1)


def test_resume_refuses_a_different_config(tmp_path, tiny_config, corpus_cache):
    from dataclasses import replace

    Trainer(tiny_config, tmp_path, cache_dir=corpus_cache).run(progress=False, until_epoch=1)
    with pytest.raises(ValueError, match="different config"):
        Trainer(replace(tiny_config, seed=4), tmp_path, cache_dir=corpus_cache).run(resume=True, progress=False)


def test_command_trains_and_exports_loadable_weights(tmp_path, corpus_cache):
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        'name = "tiny"\nseed = 3\n[architecture]\nM = 8\nJ = 2\nP = 1\n[corpus]\n'
        'systems = ["SprottA", "Bouali"]\ntrajectories_per_system = 2\ncontext_length = 40\ntraining_length = 60\n'
        "transient_periods = 2.0\npoints_per_period = [20, 40]\nvalidation_context_length = 40\n"
        "validation_horizon = 30\nworkers = 1\n[training]\nepochs = 4\nbatches_per_epoch = 3\nbatch_size = 4\n"
        "sequence_length = 21\nvalidate_every = 2\ncheckpoint_every = 1\n"
    )
    assert TrainingConfig.from_toml(config_file) == TrainingConfig.from_dict(TINY)
    exported = tmp_path / "package-weights"
    argv = ["--config", str(config_file), "--output", str(tmp_path / "run"), "--cache-dir", str(corpus_cache)]
    assert main([*argv, "--no-progress", "--finalize", str(exported)]) == 0
    model = load_model(exported / "tiny.safetensors")
    assert model.arch == TrainingConfig.from_dict(TINY).architecture
    trained = load_model(tmp_path / "run" / "tiny.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key


def test_official_model_stays_registered():
    from dynamix_adapters.weights import REGISTRY

    assert OFFICIAL_MODEL in REGISTRY


def test_bundled_weight_set_resolves_from_the_package_folder(tmp_path, monkeypatch):
    from dynamix_adapters import weights
    from dynamix_adapters.model import DynaMix

    monkeypatch.delenv(weights.MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(weights, "PACKAGE_WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing from the package"):
        weights.resolve(weights.BUNDLED_MODEL)
    shipped = DynaMix()
    shipped.reset_parameters(torch.Generator().manual_seed(7))
    weights.save_model(shipped, tmp_path / f"{weights.BUNDLED_MODEL}.safetensors")
    loaded = load_model(weights.BUNDLED_MODEL)
    assert torch.equal(loaded.B, shipped.B)


def test_default_model_is_shipped_when_it_is_the_bundled_one():
    from dynamix_adapters import weights

    if weights.DEFAULT_MODEL != weights.BUNDLED_MODEL:
        pytest.skip("the bundled weights are not the default model yet")
    path, _ = weights.resolve(None)
    assert path.parent == weights.PACKAGE_WEIGHTS_DIR
    assert load_model(None).parameter_count() == 10256

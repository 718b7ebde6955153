"""Pretraining: corpus rules, the teacher-forced loss, seeded and resumable runs, and the weights they export."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

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
    CORPUS_SYSTEMS,
    Corpus,
    CorpusConfig,
    build_corpus,
    corpus_trajectory,
    generate_trajectory,
    three_dimensional_systems,
)
from dynamix_adapters.training.trainer import LOG_NAME, initial_model, sample_batch
from dynamix_adapters.weights import OFFICIAL_MODEL, load_model, read_state_dict

TINY = {
    "name": "tiny",
    "seed": 3,
    "architecture": {"M": 8, "J": 2, "P": 1},
    "corpus": {
        "systems": ["SprottA", "Bouali"],
        "trajectory_length": 400,
        "transient_periods": 2.0,
        "points_per_period": [20, 20],
        "validation_context_length": 40,
        "validation_horizon": 30,
        "workers": 1,
    },
    "training": {
        "epochs": 4,
        "batches_per_epoch": 3,
        "batch_size": 4,
        "context_length": 50,
        "sequence_length": 21,
        "sequence_offset": 40,
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
    assert set(systems) <= set(three_dimensional_systems())
    assert len(CORPUS_SYSTEMS) == 34  # the authors' trajectory count
    assert set(validation_systems()) <= set(HELD_OUT_SYSTEMS)


def test_corpus_refuses_held_out_systems():
    with pytest.raises(ValueError, match="held-out"):
        build_corpus(CorpusConfig(systems=("Rossler",), workers=1))
    with pytest.raises(ValueError, match="held-out"):
        build_corpus(CorpusConfig(systems=("LorenzBounded",), workers=1))


def test_trajectories_are_seeded_and_standardized():
    config = CorpusConfig(seed=5, transient_periods=2.0, points_per_period=(30, 30))
    first = generate_trajectory("SprottA", 0, 200, config)
    np.testing.assert_array_equal(first, generate_trajectory("SprottA", 0, 200, config))
    np.testing.assert_allclose(first.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(first.std(axis=0), 1.0, atol=1e-9)
    other = generate_trajectory("SprottA", 1, 200, config)
    assert not np.allclose(first, other)


def test_corpus_trajectories_start_at_the_default_and_honour_parameter_regimes():
    config = CorpusConfig(trajectory_length=300, transient_periods=1.0, points_per_period=(50, 50))
    default = corpus_trajectory("Rossler", config)
    np.testing.assert_array_equal(default, corpus_trajectory("Rossler", config))
    np.testing.assert_allclose(default.std(axis=0), 1.0, atol=1e-9)
    other_regime = corpus_trajectory("Rossler[a=0.05,b=0.05,c=6.0]", config)
    assert other_regime is not None and not np.allclose(default, other_regime)
    with pytest.raises(ValueError, match="no parameter"):
        corpus_trajectory("SprottA[a=1.2]", config)


def test_corpus_holds_long_standardized_trajectories(tiny_config, corpus_cache):
    from dynamix_adapters.training.corpus import load_or_build

    corpus = load_or_build(tiny_config.corpus, corpus_cache)
    assert isinstance(corpus, Corpus)
    assert corpus.trajectories.shape == (2, 400, 3)
    assert corpus.validation_contexts.shape == (3, 40, 3)
    assert corpus.validation_targets.shape == (3, 30, 3)
    assert list(corpus.systems) == ["SprottA", "Bouali"]
    np.testing.assert_allclose(corpus.trajectories.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(corpus.trajectories.std(axis=1), 1.0, atol=1e-4)


def test_corpus_integrates_every_system_at_each_density(tiny_config):
    config = replace(tiny_config.corpus, systems=("SprottA",), corpus_densities=(20, 40))
    corpus = build_corpus(config)
    assert corpus.trajectories.shape == (2, 400, 3)
    assert list(corpus.systems) == ["SprottA", "SprottA"]
    for trajectory, density in zip(corpus.trajectories, (20, 40), strict=True):
        expected = corpus_trajectory("SprottA", config, density).astype(np.float32)
        np.testing.assert_array_equal(trajectory, expected)
    assert not np.allclose(corpus.trajectories[0], corpus.trajectories[1])
    config = TrainingConfig.from_dict({**TINY, "corpus": {**TINY["corpus"], "corpus_densities": [20, 40]}})
    assert config.corpus.corpus_densities == (20, 40)
    with pytest.raises(ValueError, match="corpus_densities"):
        CorpusConfig(corpus_densities=(50, 2))


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Unknown key"):
        TrainingConfig.from_dict({"training": {"epoch": 3}})
    with pytest.raises(ValueError, match="trajectory_length"):
        TrainingConfig.from_dict({"training": {"sequence_length": 50_000}})
    with pytest.raises(ValueError, match="backend"):
        TrainingConfig.from_dict({"training": {"backend": "jax"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        TrainingConfig.from_toml(bad)


def test_shipped_config_follows_the_authors_recipe():
    from dynamix_adapters.weights import BUNDLED_MODEL

    config = TrainingConfig.from_toml(shipped_config())
    assert config.name == BUNDLED_MODEL  # the run writes <name>.safetensors, the file the registry ships
    assert config.architecture.M == 30 and config.architecture.J == 10 and config.architecture.P == 2
    assert config.teacher_forcing_interval == 10
    assert (config.input_noise, config.sigma_regularization, config.gradient_clip) == (0.05, 0.1, 10.0)
    assert (config.learning_rate, config.final_learning_rate) == (5e-3, 1e-5)
    assert (config.context_length, config.sequence_length, config.sequence_offset) == (500, 100, 450)
    assert config.corpus.points_per_period == (50, 50) and config.corpus.systems is None
    assert config.corpus.corpus_densities == (50, 100)  # the authors' density, and twice as fine
    # 1.5x the authors' data volume: 2.4 M sequences.
    assert config.total_updates * config.batch_size == 2_400_000
    assert config.detach_query and config.initialization == "authors"


def test_every_packaged_config_loads_and_is_named_after_its_file():
    configs = sorted(shipped_config().parent.glob("*.toml"))
    assert len(configs) >= 6  # v0.3-v0.6 and the ablations
    for path in configs:
        assert TrainingConfig.from_toml(path).name == path.stem, path.name


def test_batches_are_windows_with_a_clean_context_and_a_noisy_overlapping_sequence(tiny_config):
    from dataclasses import replace

    trajectories = np.random.default_rng(0).standard_normal((3, 200, 3)).astype(np.float32)
    batch = sample_batch(trajectories, tiny_config, np.random.default_rng(1))
    assert batch.context.shape == (4, 50, 3) and batch.sequence.shape == (4, 21, 3) and batch.noise.shape == (4, 20, 3)
    clean = sample_batch(trajectories, replace(tiny_config, input_noise=0.0), np.random.default_rng(1))
    np.testing.assert_array_equal(clean.context, batch.context)  # the noise never touches the context
    # The sequence starts at the window's point 40: its first 10 points are the context's last 10.
    np.testing.assert_array_equal(clean.sequence[:, :10], clean.context[:, 40:])
    assert 0.02 < np.std(batch.sequence - clean.sequence) < 0.08


def test_authors_initialization_matches_the_recipe(tiny_config):
    from dynamix_adapters.model import DynaMix
    from dynamix_adapters.training.initialization import authors_initialization

    model = authors_initialization(DynaMix(), torch.Generator().manual_seed(0))
    a = torch.stack([e.A for e in model.experts]).detach()
    assert 0.35 < a.mean() < 0.5 and a.min() > 0.2 and a.max() < 0.8
    gating = model.gating_network
    assert torch.equal(gating.D, torch.cat([torch.eye(3), torch.zeros(3, 27)], dim=1))
    assert gating.softmax_temp1.item() == pytest.approx(0.1) and gating.softmax_temp2.item() == pytest.approx(0.1)
    assert torch.allclose(gating.sigma, torch.full((3,), 0.05))
    assert not gating.mlp_layer1.bias.any() and not gating.mlp_layer2.bias.any()
    assert torch.equal(model.B[:, :3], torch.eye(3)) and model.B[:, 3:].abs().max() < 0.45
    assert initial_model(tiny_config).gating_network.softmax_temp2.item() == pytest.approx(0.1)


def test_forcing_every_step_gives_the_one_step_loss(tiny_config):
    from dynamix_adapters.training.reference import rollout_loss

    model = initial_model(tiny_config)
    torch.manual_seed(1)
    context, sequence, noise = torch.randn(2, 30, 3), torch.randn(2, 8, 3), torch.randn(2, 7, 3)
    forced, _ = rollout_loss(model, context, sequence, noise, interval=1)
    encodings = model.gating_network.encode(context)
    z, errors = model.initial_state(sequence[:, 0]), []
    for t in range(1, 8):
        z = model.step(z, context[:, :-1], encodings, noise[:, t - 1])
        errors.append((z[:, :3] - sequence[:, t]) ** 2)
        z = torch.cat([sequence[:, t], z[:, 3:]], dim=-1)  # only the observed dims are reset
    assert torch.allclose(forced, torch.stack(errors).mean(), rtol=1e-5)


def test_backends_train_the_same_weights(tmp_path, tiny_config, corpus_cache):
    from dataclasses import replace

    fused = Trainer(tiny_config, tmp_path / "fused", cache_dir=corpus_cache)
    fused.run(progress=False)
    reference = Trainer(replace(tiny_config, backend="torch"), tmp_path / "torch", cache_dir=corpus_cache)
    reference.run(progress=False)
    for key, value in final_state(fused).items():
        torch.testing.assert_close(value, reference.model.state_dict()[key], rtol=1e-4, atol=1e-6)


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


def test_warmup_ramps_the_rate_up_then_decays_it_and_resumes_bit_for_bit(tmp_path, tiny_config, corpus_cache):
    config = replace(tiny_config, warmup_epochs=2)
    straight = Trainer(config, tmp_path / "straight", cache_dir=corpus_cache)
    assert math.isclose(straight.optimizer.param_groups[0]["lr"], config.learning_rate / 10)
    straight.run(progress=False)
    with (tmp_path / "straight" / LOG_NAME).open() as handle:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(handle)]
    gamma = (config.final_learning_rate / config.learning_rate) ** (1 / config.epochs)
    # After epoch e the ramp is at 0.1 + 0.9 * min(e, 2) / 2 of the decayed rate.
    expected = [config.learning_rate * gamma**epoch * (0.1 + 0.9 * min(epoch, 2) / 2) for epoch in (1, 2, 3, 4)]
    assert rates == pytest.approx(expected, rel=1e-6)

    split = Trainer(config, tmp_path / "split", cache_dir=corpus_cache)
    split.run(progress=False, until_epoch=1)  # stops inside the ramp
    resumed = Trainer(config, tmp_path / "split", cache_dir=corpus_cache)
    resumed.run(resume=True, progress=False)
    for key, value in final_state(straight).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="warmup_epochs"):
        replace(tiny_config, warmup_epochs=4)


def test_resume_refuses_a_different_config(tmp_path, tiny_config, corpus_cache):
    from dataclasses import replace

    Trainer(tiny_config, tmp_path, cache_dir=corpus_cache).run(progress=False, until_epoch=1)
    with pytest.raises(ValueError, match="different config"):
        Trainer(replace(tiny_config, seed=4), tmp_path, cache_dir=corpus_cache).run(resume=True, progress=False)


def test_command_trains_and_exports_loadable_weights(tmp_path, corpus_cache):
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        'name = "tiny"\nseed = 3\n[architecture]\nM = 8\nJ = 2\nP = 1\n[corpus]\n'
        'systems = ["SprottA", "Bouali"]\ntrajectory_length = 400\ntransient_periods = 2.0\n'
        "points_per_period = [20, 20]\nvalidation_context_length = 40\nvalidation_horizon = 30\nworkers = 1\n"
        "[training]\nepochs = 4\nbatches_per_epoch = 3\nbatch_size = 4\ncontext_length = 50\n"
        "sequence_length = 21\nsequence_offset = 40\nvalidate_every = 2\ncheckpoint_every = 1\n"
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("name=ablation", "quote strings"),
        ("training.epochs", "expected SECTION.KEY=VALUE"),
        ("training.epoch=3000", "Unknown key"),
        ("training.warmup_epochs=-1", "warmup_epochs"),
    ],
)
def test_command_names_a_bad_override_without_a_traceback(override, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(shipped_config()), "--set", override])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


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


def test_diverged_updates_roll_back_and_lower_the_learning_rate(tmp_path, tiny_config, corpus_cache):
    from dataclasses import replace

    strict = replace(tiny_config, max_latent=1e-6)  # every rollout counts as diverged
    trainer = Trainer(strict, tmp_path, cache_dir=corpus_cache)
    trainer.run(progress=False)
    for key, value in initial_model(strict).state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[key]), key
    assert trainer.rollbacks == strict.total_updates
    with (tmp_path / LOG_NAME).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["skipped_updates"]) for row in rows] == [strict.batches_per_epoch] * 4
    assert math.isnan(float(rows[0]["mse"]))
    assert trainer.optimizer.param_groups[0]["lr"] < strict.final_learning_rate


def test_a_stopped_run_exports_its_weights_at_that_epoch(tmp_path, corpus_cache):
    from dynamix_adapters.training import config_with_overrides

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        'name = "tiny"\nseed = 3\n[architecture]\nM = 8\nJ = 2\nP = 1\n[corpus]\n'
        'systems = ["SprottA", "Bouali"]\ntrajectory_length = 400\ntransient_periods = 2.0\n'
        "points_per_period = [20, 20]\nvalidation_context_length = 40\nvalidation_horizon = 30\nworkers = 1\n"
        "[training]\nepochs = 4\nbatches_per_epoch = 3\nbatch_size = 4\ncontext_length = 50\n"
        "sequence_length = 21\nsequence_offset = 40\nvalidate_every = 2\ncheckpoint_every = 1\n"
    )
    assert config_with_overrides(config_file, []) == TrainingConfig.from_dict(TINY)
    assert config_with_overrides(config_file, ["training.detach_query=false"]).detach_query is False
    run = tmp_path / "run"
    stopped = Trainer(TrainingConfig.from_dict(TINY), run, cache_dir=corpus_cache)
    stopped.run(progress=False, until_epoch=2)
    exported = tmp_path / "package-weights"
    argv = ["--config", str(config_file), "--output", str(run), "--cache-dir", str(corpus_cache), "--no-progress"]
    assert main([*argv, "--resume", "--until-epoch", "2", "--finalize", str(exported)]) == 0
    model = load_model(exported / "tiny.safetensors")
    for key, value in stopped.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_isolated_diverged_updates_are_skipped_without_a_rollback(tmp_path, tiny_config, corpus_cache):
    from dataclasses import replace

    strict = replace(tiny_config, max_latent=1e-6, max_consecutive_skips=5)  # every update diverges
    trainer = Trainer(strict, tmp_path, cache_dir=corpus_cache)
    trainer.run(progress=False)
    assert trainer.rollbacks == strict.total_updates // 5
    assert trainer.consecutive_skips == strict.total_updates % 5
    assert trainer.optimizer.param_groups[0]["lr"] > strict.final_learning_rate * strict.rollback_factor ** (
        trainer.rollbacks + 1
    )


def test_only_a_clean_epoch_becomes_the_rollback_snapshot(tmp_path, tiny_config, corpus_cache):
    from dataclasses import replace

    class SkipsOneUpdate(Trainer):
        """Counts the first update of the second epoch as diverged (without touching the weights)."""

        def step(self, batch):
            if self.update == self.config.batches_per_epoch:
                return None
            return super().step(batch)

    config = replace(tiny_config, max_consecutive_skips=5)
    clean = Trainer(config, tmp_path / "clean", cache_dir=corpus_cache)
    clean.run(progress=False, until_epoch=1)
    skipping = SkipsOneUpdate(config, tmp_path / "skipping", cache_dir=corpus_cache)
    skipping.run(progress=False, until_epoch=2)
    assert skipping.rollbacks == 0
    after_first_epoch = final_state(clean)
    snapshot = skipping.snapshot["model"]
    assert all(torch.equal(snapshot[key], value) for key, value in after_first_epoch.items())
    assert not all(torch.equal(skipping.model.state_dict()[key], value) for key, value in after_first_epoch.items())


def test_temperatures_stay_above_their_floors(tmp_path, tiny_config, corpus_cache):
    from dataclasses import replace

    floored = replace(tiny_config, tau1_floor=0.5, tau2_floor=2.0)  # above both initial values (0.1)
    trainer = Trainer(floored, tmp_path, cache_dir=corpus_cache)
    trainer.run(progress=False)
    gating = trainer.model.gating_network
    assert abs(gating.softmax_temp1.item()) >= 0.5
    assert abs(gating.softmax_temp2.item()) >= 2.0
    with (tmp_path / LOG_NAME).open() as handle:
        rows = list(csv.DictReader(handle))
    assert all(float(row["tau1"]) >= 0.5 and float(row["tau2"]) >= 2.0 for row in rows)


def test_floors_and_skips_default_to_the_v03_recipe():
    config = TrainingConfig()
    assert (config.max_consecutive_skips, config.tau1_floor, config.tau2_floor) == (1, 0.0, 0.0)

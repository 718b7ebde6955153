import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from dynamix_adapters import load_model, weights
from dynamix_adapters.weights import OFFICIAL_MODEL, save_model
from dynamix_adapters.weights.julia_checkpoint import CheckpointError, load_julia_checkpoint

from .conftest import OFFICIAL_BSON, make_tiny_model, require_shared


def test_bson_and_safetensors_hold_identical_tensors(official_path):
    require_shared(OFFICIAL_BSON)
    from_bson, arch = load_julia_checkpoint(OFFICIAL_BSON)
    from_safetensors = load_file(official_path)
    assert arch == {"M": 30, "N": 3, "J": 10, "P": 2}
    assert from_bson.keys() == from_safetensors.keys()
    for key, value in from_safetensors.items():
        np.testing.assert_array_equal(from_bson[key], value, err_msg=key)


def test_bson_kernel_is_flipped(official_path):
    require_shared(OFFICIAL_BSON)
    raw = load_julia_checkpoint(OFFICIAL_BSON)[0]["gating_network.conv.weight"]
    reference = load_file(official_path)["gating_network.conv.weight"]
    assert not np.array_equal(raw[..., ::-1], reference)


def test_load_model_from_both_formats_gives_same_forecast(official_path):
    require_shared(OFFICIAL_BSON)
    a, b = load_model(official_path), load_model(OFFICIAL_BSON)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert not any(p.requires_grad for p in a.parameters())


def test_named_model_from_model_dir(official_path, monkeypatch):
    monkeypatch.setenv(weights.MODEL_DIR_ENV, str(official_path.parent))
    model = load_model(OFFICIAL_MODEL)
    assert model.arch.M == 30 and model.parameter_count() == 10_256
    assert load_model(OFFICIAL_MODEL) is model, "the per-process cache returns the same module"


def _write_tiny_checkpoint(folder: Path) -> tuple[Path, Path]:
    model = make_tiny_model(seed=3, M=9, N=3, J=2, P=1)
    tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    weights_path = folder / "dynamix-3d-alrnn-v1.0.safetensors"
    save_file(tensors, weights_path)
    config_path = folder / "config_3d-alrnn-v1.0.json"
    config_path.write_text(json.dumps({"architecture": {"M": 9, "N": 3, "Experts": 2, "P": 1, "hidden_dim": 2}}))
    return weights_path, config_path


def test_hub_download_path_offline(tmp_path, monkeypatch):
    import huggingface_hub

    weights_path, config_path = _write_tiny_checkpoint(tmp_path)
    requests = []

    def fake_download(repo_id, filename, **kwargs):
        requests.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.delenv(weights.MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = load_model(OFFICIAL_MODEL)
    assert requests == [("DurstewitzLab/dynamix", weights_path.name), ("DurstewitzLab/dynamix", config_path.name)]
    assert (model.arch.M, model.arch.J, model.arch.P) == (9, 2, 1), "architecture read from the config json"


def test_hub_cache_is_used_before_download(tmp_path, monkeypatch):
    import huggingface_hub

    _write_tiny_checkpoint(tmp_path)
    monkeypatch.delenv(weights.MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **k: str(tmp_path / name))

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    assert load_model(OFFICIAL_MODEL).arch.M == 9


def test_offline_and_uncached_error_says_how_to_supply_weights(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.delenv(weights.MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(FileNotFoundError, match="DYNAMIX_MODEL_DIR") as info:
        load_model(OFFICIAL_MODEL)
    assert "huggingface-cli download DurstewitzLab/dynamix" in str(info.value)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="Unknown model 'dynamix-9000'"):
        load_model("dynamix-9000")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("/nonexistent/weights.safetensors")


def test_saved_model_round_trips_with_metadata(tmp_path):
    model = make_tiny_model(M=7, N=3, J=3, P=2)
    path = save_model(model, tmp_path / "tiny.safetensors")
    loaded = load_model(path)
    assert loaded.arch == model.arch
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_shape_mismatch_names_the_key(tmp_path):
    tensors = {k: v.numpy() for k, v in make_tiny_model().state_dict().items()}
    tensors["gating_network.D"] = np.zeros((3, 5), np.float32)
    save_file(tensors, tmp_path / "bad.safetensors", metadata={"M": "8", "N": "3", "J": "2", "P": "1"})
    with pytest.raises(CheckpointError, match=r"gating_network\.D"):
        load_model(tmp_path / "bad.safetensors")


def test_truncated_bson_is_a_clear_error(tmp_path):
    require_shared(OFFICIAL_BSON)
    broken = tmp_path / "broken.bson"
    broken.write_bytes(OFFICIAL_BSON.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="BSON"):
        load_model(broken)

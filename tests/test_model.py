import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dynamix_adapters.model import Architecture, DynaMix

OFFICIAL_KEYS = {
    "experts.0.A": (30,),
    "experts.9.W": (30, 30),
    "experts.5.h": (30,),
    "gating_network.conv.weight": (3, 3, 2),
    "gating_network.conv.bias": (3,),
    "gating_network.softmax_temp1": (1,),
    "gating_network.D": (3, 30),
    "gating_network.mlp_layer1.weight": (10, 33),
    "gating_network.mlp_layer1.bias": (10,),
    "gating_network.mlp_layer2.weight": (10, 10),
    "gating_network.mlp_layer2.bias": (10,),
    "gating_network.softmax_temp2": (1,),
    "gating_network.sigma": (3,),
    "B": (3, 30),
}


def test_state_dict_matches_official_layout():
    state = DynaMix().state_dict()
    assert len(state) == 3 * 10 + 11
    for key, shape in OFFICIAL_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(v.numel() for v in state.values()) == 10_256


def test_official_file_loads_strictly(official_path):
    model = DynaMix()
    model.load_state_dict(load_file(official_path), strict=True)
    assert model.parameter_count() == 10_256


@pytest.mark.parametrize("sizes", [dict(M=5, N=2, J=1, P=0), dict(M=12, N=4, J=3, P=3)])
def test_configurable_sizes_step(sizes):
    model = DynaMix(Architecture(**sizes))
    batch, frames = 4, 7
    context = torch.randn(batch, frames, sizes["N"])
    keys, encodings = context[:, :-1], model.gating_network.encode(context)
    z = model.initial_state(torch.randn(batch, sizes["N"]))
    nxt = model.step(z, keys, encodings, torch.randn(batch, sizes["N"]))
    assert nxt.shape == (batch, sizes["M"])
    assert torch.isfinite(nxt).all()


def test_step_matches_the_written_equations():
    torch.manual_seed(0)
    model = DynaMix(Architecture(M=6, N=2, J=3, P=2))
    context = torch.randn(1, 5, 2)
    z = torch.randn(1, 6)
    eps = torch.randn(1, 2)
    g = model.gating_network
    q = model_q = g.D @ z[0] + g.sigma * eps[0]
    frames = context[0]
    attention = torch.softmax(-(frames[:-1] - q).abs().sum(-1) / g.softmax_temp1.abs(), 0)
    weight, bias = g.conv.weight, g.conv.bias
    enc = torch.stack([bias + weight[:, :, 0] @ frames[k] + weight[:, :, 1] @ frames[k + 1] for k in range(4)])
    emb = attention @ enc
    hidden = torch.relu(g.mlp_layer1.weight @ torch.cat([emb, z[0]]))
    w = torch.softmax(-(g.mlp_layer2.weight @ hidden) / g.softmax_temp2.abs(), 0)
    phi = torch.cat([z[0, :4], torch.relu(z[0, 4:])])
    expected = sum(w[j] * (e.A * z[0] + e.W @ phi + e.h) for j, e in enumerate(model.experts))
    got = model.step(z, context[:, :-1], g.encode(context), eps)[0]
    assert torch.allclose(got, expected, atol=1e-5)
    stacked = model.step(z, context[:, :-1], g.encode(context), eps, experts=model.expert_stack())[0]
    assert torch.equal(stacked, got)
    assert model_q.shape == (2,)


def test_initial_state_keeps_the_observation():
    model = DynaMix().requires_grad_(False)
    x = torch.randn(5, 3)
    z0 = model.initial_state(x)
    assert torch.equal(z0[:, :3], x)
    assert np.allclose(z0[:, 3:].numpy(), (x @ model.B)[:, 3:].numpy())


def test_architecture_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="M >= N \\+ P"):
        Architecture(M=3, N=3, J=2, P=2)
    with pytest.raises(ValueError, match="non-negative integer"):
        Architecture(M=-1)

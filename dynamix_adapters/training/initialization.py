"""The authors' initialization of a DynaMix network, for training only.

Inference never calls this: :meth:`DynaMix.reset_parameters` keeps its own
initialization, and loaded weights overwrite either. Compared with it, the authors
start from contractive experts (diagonal A with mean ~0.43 instead of ~0.9), tiny
gating weights, an exact read-out D = [I 0] and equal temperatures 0.1, which is
what keeps learning rate 5e-3 stable (see the v0.3 model card).
"""

from __future__ import annotations

import torch

from ..model import DynaMix

EXPERT_W_STD = 0.01
MLP_WEIGHT_STD = 0.01
INITIAL_TEMPERATURE = 0.1
INITIAL_SIGMA = 0.05


@torch.no_grad()
def authors_initialization(model: DynaMix, generator: torch.Generator) -> DynaMix:
    """Initialize ``model`` in place as the authors' trainer does; returns it.

    Parameters
    ----------
    model : DynaMix
        The network to initialize.
    generator : torch.Generator
        Source of every random draw, so the same seed gives the same network.

    Returns
    -------
    DynaMix
        ``model``.

    Notes
    -----
    - Expert A: the diagonal of ``R^T R / M + I`` (R standard normal, M x M) divided by
      that matrix's largest eigenvalue, one R per expert: entries ~0.27-0.69, mean ~0.43.
    - Expert W ~ N(0, 0.01^2), h = 0.
    - Conv kernel Glorot uniform, conv bias 0; MLP weights ~ N(0, 0.01^2), MLP biases 0
      (the trainer keeps them at zero and never updates them).
    - D = [I_N 0], both temperatures 0.1, sigma 0.05.
    - B = [I_N  L^T] with L Glorot uniform: z0[N:] = L x.
    """
    arch = model.arch
    m, n = arch.M, arch.N
    for expert in model.experts:
        r = torch.randn(m, m, generator=generator, dtype=torch.float64)
        s = r.T @ r / m + torch.eye(m, dtype=torch.float64)
        expert.A.copy_(torch.diagonal(s) / torch.linalg.eigvalsh(s).max())
        expert.W.normal_(0.0, EXPERT_W_STD, generator=generator)
        expert.h.zero_()
    gating = model.gating_network
    _glorot_uniform(gating.conv.weight, fan_in=n * 2, fan_out=n * 2, generator=generator)
    gating.conv.bias.zero_()
    for layer in (gating.mlp_layer1, gating.mlp_layer2):
        layer.weight.normal_(0.0, MLP_WEIGHT_STD, generator=generator)
        layer.bias.zero_()
    gating.softmax_temp1.fill_(INITIAL_TEMPERATURE)
    gating.softmax_temp2.fill_(INITIAL_TEMPERATURE)
    gating.D.zero_()
    gating.D[:, :n] = torch.eye(n)
    gating.sigma.fill_(INITIAL_SIGMA)
    model.B.zero_()
    model.B[:, :n] = torch.eye(n)
    _glorot_uniform(model.B[:, n:], fan_in=n, fan_out=m - n, generator=generator)
    return model


def _glorot_uniform(tensor: torch.Tensor, fan_in: int, fan_out: int, generator: torch.Generator) -> None:
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    tensor.uniform_(-bound, bound, generator=generator)

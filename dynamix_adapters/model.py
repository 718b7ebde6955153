"""The DynaMix network: a mixture of almost-linear RNN experts gated by attention over a context.

Sizes: N observed dims, M latent dims, J experts, P ReLU units per expert. The
``state_dict`` keys and shapes are exactly the official layout, so the published
safetensors file loads with ``strict=True``.

One step, for a batch of B trajectories (z: B x M, context c: B x T x N)::

    q = D z + sigma * eps                       # gating query, eps ~ N(0, I_N)
    a = softmax_k(-|c_k - q|_1 / |tau1|)        # attention over frames 1..T-1
    g = sum_k a_k e_k,  e_k = conv(c)_k         # context embedding (N)
    w = softmax(-(W2 relu(W1 [g; z])) / |tau2|) # expert weights (J)
    z' = sum_j w_j (A_j * z + W_j phi(z) + h_j) # phi: ReLU on the last P entries
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Sizes of a DynaMix network; the official model is ``Architecture(M=30, N=3, J=10, P=2)``."""

    M: int = 30
    N: int = 3
    J: int = 10
    P: int = 2

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Architecture.{name} must be a non-negative integer, got {value!r}")
        if self.N < 1 or self.J < 1 or self.M < self.N + self.P:
            raise ValueError(f"Architecture needs N >= 1, J >= 1 and M >= N + P, got {self}")


class Expert(nn.Module):
    """One almost-linear RNN: f(z) = A * z + W phi(z) + h."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(latent_dim))
        self.W = nn.Parameter(torch.empty(latent_dim, latent_dim))
        self.h = nn.Parameter(torch.empty(latent_dim))


class GatingNetwork(nn.Module):
    """Attention over the context plus a small MLP that weights the experts."""

    def __init__(self, arch: Architecture):
        super().__init__()
        n, m, j = arch.N, arch.M, arch.J
        self.conv = nn.Conv1d(n, n, kernel_size=2)
        self.softmax_temp1 = nn.Parameter(torch.empty(1))
        self.D = nn.Parameter(torch.empty(n, m))
        self.mlp_layer1 = nn.Linear(n + m, j)
        self.mlp_layer2 = nn.Linear(j, j)
        self.softmax_temp2 = nn.Parameter(torch.empty(1))
        self.sigma = nn.Parameter(torch.empty(n))

    def encode(self, context: torch.Tensor) -> torch.Tensor:
        """Context (B, T, N) -> frame encodings e (B, T-1, N); independent of the latent state."""
        return self.conv(context.transpose(1, 2)).transpose(1, 2)

    def forward(
        self,
        z: torch.Tensor,  # (B, M)
        keys: torch.Tensor,  # (B, T-1, N): context frames 1..T-1
        encodings: torch.Tensor,  # (B, T-1, N)
        noise: torch.Tensor,  # (B, N) standard normal draws
        key_mask: torch.Tensor | None = None,  # (B, T-1) True where a frame is padding
    ) -> torch.Tensor:
        query = z @ self.D.T + self.sigma * noise  # (B, N)
        distance = (keys - query[:, None, :]).abs().sum(-1)  # (B, T-1)
        scores = -distance / self.softmax_temp1.abs()
        if key_mask is not None:
            scores = scores.masked_fill(key_mask, float("-inf"))
        attention = torch.softmax(scores, dim=-1)  # (B, T-1)
        embedding = torch.einsum("bt,btn->bn", attention, encodings)  # (B, N)
        hidden = torch.relu(self.mlp_layer1(torch.cat([embedding, z], dim=-1)))  # (B, J)
        return torch.softmax(-self.mlp_layer2(hidden) / self.softmax_temp2.abs(), dim=-1)  # (B, J)


class DynaMix(nn.Module):
    """The DynaMix foundation model.

    >>> model = DynaMix(Architecture(M=8, N=3, J=2, P=1))
    >>> z = model.initial_state(torch.zeros(4, 3))
    >>> tuple(z.shape)
    (4, 8)
    """

    def __init__(self, arch: Architecture | None = None):
        super().__init__()
        self.arch = arch or Architecture()
        self.experts = nn.ModuleList(Expert(self.arch.M) for _ in range(self.arch.J))
        self.gating_network = GatingNetwork(self.arch)
        self.B = nn.Parameter(torch.empty(self.arch.N, self.arch.M))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random initialization: stable experts (A near 0.9, small W) and an identity read-in."""
        arch = self.arch
        for expert in self.experts:
            expert.A.uniform_(0.8, 0.95, generator=generator)
            expert.W.normal_(0.0, 0.1 / arch.M**0.5, generator=generator)
            expert.h.zero_()
        gating = self.gating_network
        for layer in (gating.conv, gating.mlp_layer1, gating.mlp_layer2):
            layer.weight.normal_(0.0, 1.0 / layer.weight[0].numel() ** 0.5, generator=generator)
            layer.bias.zero_()
        gating.softmax_temp1.fill_(0.1)
        gating.softmax_temp2.fill_(1.0)
        gating.D.normal_(0.0, 0.1, generator=generator)
        gating.D[:, : arch.N] += torch.eye(arch.N)
        gating.sigma.fill_(0.1)
        self.B.normal_(0.0, 0.1, generator=generator)
        self.B[:, : arch.N] = torch.eye(arch.N)

    def expert_stack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Experts as stacked tensors: A (J, M), W (J, M, M), h (J, M)."""
        return (
            torch.stack([e.A for e in self.experts]),
            torch.stack([e.W for e in self.experts]),
            torch.stack([e.h for e in self.experts]),
        )

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """Observation x (B, N) -> latent z0 (B, M), with z0[:, :N] = x exactly."""
        z = x @ self.B
        return torch.cat([x, z[:, self.arch.N :]], dim=-1)

    def step(
        self,
        z: torch.Tensor,  # (B, M)
        keys: torch.Tensor,  # (B, T-1, N)
        encodings: torch.Tensor,  # (B, T-1, N)
        noise: torch.Tensor,  # (B, N)
        key_mask: torch.Tensor | None = None,
        experts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One latent step z -> z' (B, M).

        ``experts`` takes :meth:`expert_stack` computed once per rollout, so a backpropagated
        rollout builds and differentiates the stacked experts once rather than at every step.
        """
        weights = self.gating_network(z, keys, encodings, noise, key_mask)  # (B, J)
        a, w, h = experts if experts is not None else self.expert_stack()
        m, p = self.arch.M, self.arch.P
        phi = torch.cat([z[:, : m - p], torch.relu(z[:, m - p :])], dim=-1)  # (B, M)
        experts = a * z[:, None, :] + torch.einsum("jmk,bk->bjm", w, phi) + h  # (B, J, M)
        return torch.einsum("bj,bjm->bm", weights, experts)

    @property
    def device(self) -> torch.device:
        return self.B.device

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

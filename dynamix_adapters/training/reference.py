"""The training loss by torch autograd: the reference the fused kernel (``fused.py``) is checked against.

One batch element is a clean context (T_C, N) and a noisy sequence (L, N): the
sequence gives the initial state, the forcing signal and the loss target. The model
runs L - 1 steps; each step's pre-forcing observed dims enter the MSE, and every
``interval`` steps the observed dims are replaced by the data (no gradient flows
through the replaced components).

During training the gating query is computed from a detached copy of z (the
authors' stop-gradient): the backward term through the sharp L1 softmax otherwise
grows with training and drives the blow-ups seen at learning rate 5e-3. What the
step computes is unchanged; only its gradient differs, so inference is unaffected.
"""

from __future__ import annotations

import torch

from ..model import DynaMix


def rollout_loss(
    model: DynaMix,
    context: torch.Tensor,  # (B, T_C, N) clean
    sequence: torch.Tensor,  # (B, L, N) noisy: initial state, forcing signal and target
    noise: torch.Tensor,  # (B, L - 1, N) standard normal gating noise
    interval: int,
    detach_query: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch MSE on the observed dims and the largest |z| of any step, for one sparsely forced rollout.

    Parameters
    ----------
    model : DynaMix
        The network; its MLP biases are used as they are (the trainer keeps them at zero).
    context, sequence, noise : torch.Tensor
        One batch, shapes as annotated.
    interval : int
        Force the observed dims every ``interval`` steps.
    detach_query : bool
        Compute the gating query from a detached z (the authors' recipe).

    Returns
    -------
    mse : torch.Tensor
        Scalar mean over batch, steps and observed dims.
    largest : torch.Tensor
        Scalar, the largest absolute latent entry reached (no gradient).
    """
    predictions, largest = rollout_predictions(model, context, sequence, noise, interval, detach_query)
    return torch.mean((predictions - sequence[:, 1:]) ** 2), largest


def rollout_predictions(
    model: DynaMix,
    context: torch.Tensor,
    sequence: torch.Tensor,
    noise: torch.Tensor,
    interval: int,
    detach_query: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-forcing observed dims of every step (B, L - 1, N) and the largest |z|, as in :func:`rollout_loss`."""
    n = model.arch.N
    gating = model.gating_network
    keys = context[:, :-1]  # (B, T_C - 1, N)
    encodings = gating.encode(context)  # (B, T_C - 1, N)
    a, w, h = model.expert_stack()
    m, p = model.arch.M, model.arch.P
    z = model.initial_state(sequence[:, 0])  # (B, M)
    predictions, largest = [], torch.zeros(())
    for t in range(1, sequence.shape[1]):
        source = z.detach() if detach_query else z
        query = source @ gating.D.T + gating.sigma * noise[:, t - 1]  # (B, N)
        scores = -(keys - query[:, None, :]).abs().sum(-1) / gating.softmax_temp1.abs()  # (B, T_C - 1)
        embedding = torch.einsum("bt,btn->bn", torch.softmax(scores, dim=-1), encodings)  # (B, N)
        hidden = torch.relu(gating.mlp_layer1(torch.cat([embedding, z], dim=-1)))  # (B, J)
        weights = torch.softmax(-gating.mlp_layer2(hidden) / gating.softmax_temp2.abs(), dim=-1)  # (B, J)
        phi = torch.cat([z[:, : m - p], torch.relu(z[:, m - p :])], dim=-1)  # (B, M)
        experts = a * z[:, None, :] + torch.einsum("jmk,bk->bjm", w, phi) + h  # (B, J, M)
        z = torch.einsum("bj,bjm->bm", weights, experts)
        largest = torch.maximum(largest, z.detach().abs().max())
        predictions.append(z[:, :n])
        if t % interval == 0:
            z = torch.cat([sequence[:, t], z[:, n:]], dim=-1)
    return torch.stack(predictions, dim=1), largest

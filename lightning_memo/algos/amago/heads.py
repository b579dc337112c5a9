"""The actor and critic heads of the off-policy recipe, their Polyak targets, and the ensemble layer.

Shapes: ``*`` leading dims (``[B, T]`` in training, ``[N]`` when acting), ``D`` the sequence-model
width, ``C`` critics, ``G`` discount factors, ``A`` discrete actions.

Every head reads the same sequence-model output ``h [*, D]``; all discount factors are computed at
once (the extra cost is only in the last layers).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from lightning_memo.algos.amago.popart import PopArt


class EnsembleLinear(nn.Module):
    """``C`` independent linear layers in one batched matmul: ``[*, C, d_in] -> [*, C, d_out]``.

    Hand-written because it is one einsum; TorchRL's ``MultiAgentMLP`` does the same through ``vmap``
    but speaks of agents, and tensordict's ``EnsembleModule`` needs TensorDicts in and out.
    """

    def __init__(self, copies: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default initialisation, per copy
        self.weight = nn.Parameter(torch.empty(copies, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(copies, d_out).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("...ci,cio->...co", x, self.weight) + self.bias


def _mlp(d_in: int, d_out: int, hidden: int, layers: int, copies: int | None = None) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` with ReLU; an ensemble of ``copies`` when given."""
    linear = nn.Linear if copies is None else lambda i, o: EnsembleLinear(copies, i, o)
    dims = [d_in] + [hidden] * layers
    blocks: list[nn.Module] = []
    for i, o in zip(dims[:-1], dims[1:]):
        blocks += [linear(i, o), nn.ReLU()]
    return nn.Sequential(*blocks, linear(dims[-1], d_out))


class MultiGammaActor(nn.Module):
    """``h [*, D]`` -> logits ``[*, G, A]``: one categorical policy per discount factor."""

    def __init__(self, d_model: int, num_actions: int, num_gammas: int, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.num_actions, self.num_gammas = num_actions, num_gammas
        self.net = _mlp(d_model, num_gammas * num_actions, hidden, layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h).unflatten(-1, (self.num_gammas, self.num_actions))


class CriticEnsemble(nn.Module):
    """``h [*, D]`` -> raw Q values ``[*, C, G, A]`` (a Q for every action and discount factor, from
    each of ``C`` critics). "Raw": PopArt's affine layer turns them into normalised values."""

    def __init__(
        self, d_model: int, num_actions: int, num_gammas: int, num_critics: int = 4, hidden: int = 256, layers: int = 2
    ) -> None:
        super().__init__()
        self.num_actions, self.num_gammas, self.num_critics = num_actions, num_gammas, num_critics
        self.net = _mlp(d_model, num_gammas * num_actions, hidden, layers, copies=num_critics)

    def forward(self, h: Tensor) -> Tensor:
        x = h.unsqueeze(-2).expand(*h.shape[:-1], self.num_critics, h.shape[-1])
        return self.net(x).unflatten(-1, (self.num_gammas, self.num_actions))


class AmagoHeads(nn.Module):
    """Actor, critic ensemble, PopArt and the Polyak target copies of actor and critics.

    Args:
        d_model: width of the sequence-model output.
        num_actions: ``A``.
        gammas: the discount factors (``G`` of them), one output of every head each.
        num_critics: ``C``, the ensemble size.
        hidden, layers: width and depth of each head's MLP.
        popart_beta, popart_init_std: see :class:`PopArt`.
    """

    def __init__(
        self,
        d_model: int,
        num_actions: int,
        gammas: tuple[float, ...],
        num_critics: int = 4,
        hidden: int = 256,
        layers: int = 2,
        popart_beta: float = 5e-4,
        popart_init_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.register_buffer("gammas", torch.tensor(gammas, dtype=torch.float32))
        self.actor = MultiGammaActor(d_model, num_actions, len(gammas), hidden, layers)
        self.critic = CriticEnsemble(d_model, num_actions, len(gammas), num_critics, hidden, layers)
        self.popart = PopArt(len(gammas), popart_beta, popart_init_std)
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)

    def q_values(self, h: Tensor, critic: nn.Module | None = None) -> Tensor:
        """Normalised Q ``[*, C, G, A]`` from ``critic`` (default: the online ensemble)."""
        critic = self.critic if critic is None else critic
        return self.popart(critic(h), action_dim=True)

    def frozen_q_values(self, h: Tensor) -> Tensor:
        """Normalised Q ``[*, C, G, A]`` on ``h.detach()`` through the critic's parameters detached: the
        actor's ``-Q`` term moves neither the critics nor the sequence model."""
        params = {name: p.detach() for name, p in self.critic.named_parameters()}
        raw = torch.func.functional_call(self.critic, params, (h.detach(),))
        return self.popart(raw, action_dim=True)

    @torch.no_grad()
    def update_targets(self, tau: float) -> None:
        """Polyak averaging ``target <- (1 - tau) target + tau online`` for actor and critics.

        Hand-written: TorchRL's ``SoftUpdate`` expects a ``LossModule`` holding ``target_*`` parameters.
        """
        for target, online in ((self.target_actor, self.actor), (self.target_critic, self.critic)):
            for t, o in zip(target.parameters(), online.parameters()):
                t.lerp_(o, tau)

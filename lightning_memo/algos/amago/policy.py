"""AmagoPolicy: a MemoPolicy's encoder and memory with the off-policy heads.

Shapes: ``N`` environments, ``t``/``L`` steps, ``D`` the memory width, ``G`` discount factors, ``A``
discrete actions.

It keeps :class:`~lightning_memo.policy.MemoPolicy`'s face (``act``, ``refresh``, ``reset``), so the
shared trial collector and the cache refresh drive it unchanged; what differs is :meth:`heads`:

* the acting distribution is ``(1 - epsilon) * pi + epsilon * uniform`` with ``pi`` the actor of the
  acting discount factor: sampling it is epsilon-greedy exploration (the greedy part samples ``pi``),
  and the stored ``action_log_prob`` is the behaviour policy's;
* the value is ``V(s) = E_pi[Q(s, .)]`` of the acting discount factor in the original reward scale
  (the ensemble's mean), what the refresh writes into the trial history.

Training reads :meth:`features` (one sequence pass) and applies every head of ``amago`` to it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tensordict import TensorDictBase
from torch import Tensor

from lightning_memo.algos.amago.heads import AmagoHeads
from lightning_memo.policy import EPISODE_START_KEY, IS_INIT_KEY, MemoPolicy, flag


class AmagoPolicy(MemoPolicy):
    """Encoder -> memory -> :class:`AmagoHeads` (multi-discount actor, critic ensemble, PopArt, targets).

    Build it from a :class:`MemoPolicy` with :meth:`from_policy` (its encoder and memory are shared, its
    actor/critic heads are not used). ``epsilon`` (set by the trainer before each step) is the
    exploration rate of :meth:`act`.

    Args:
        policy: the policy whose encoder and memory this one uses.
        gammas: the discount factors of every head.
        act_gamma: the discount factor whose actor acts (one of ``gammas``).
        **head_options: ``num_critics``, ``hidden``, ``layers``, ``popart_beta``, ``popart_init_std`` of
            :class:`AmagoHeads`.
    """

    def __init__(self, policy: MemoPolicy, gammas: Sequence[float], act_gamma: float, **head_options: Any) -> None:
        super().__init__(policy.memory, policy.num_actions, policy.observation_keys, encoder=policy.encoder)
        del self.actor_head, self.critic_head  # MemoPolicy's linear heads: replaced by the off-policy heads
        if act_gamma not in gammas:
            raise ValueError(f"act_gamma={act_gamma} must be one of the discount factors {list(gammas)}.")
        self.act_gamma_index = list(gammas).index(act_gamma)
        self.amago = AmagoHeads(self.memory.d_model, self.num_actions, tuple(gammas), **head_options)
        self.epsilon = 0.0

    @property
    def device(self) -> torch.device:
        return self.amago.gammas.device

    def features(self, td: TensorDictBase) -> Tensor:
        """Sequence mode over ``td [B, L]`` -> memory output ``h [B, L, D]`` (what every head reads)."""
        td = td.to(self.device) if td.device != self.device else td
        return self.memory.forward_sequence(
            self.embed(td), flag(td, IS_INIT_KEY), episode_start=flag(td, EPISODE_START_KEY)
        )

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``h [*, D]`` -> (behaviour logits ``[*, A]``, ``V(s) [*]``) for the acting discount factor."""
        g = self.act_gamma_index
        logits = self.amago.actor(h)[..., g, :].float()
        q = self.amago.popart.denormalize(self.amago.q_values(h).mean(-3), action_dim=True)[..., g, :].float()
        probs = logits.softmax(-1)
        value = (probs * q).sum(-1)
        if self.epsilon > 0:
            probs = (1.0 - self.epsilon) * probs + self.epsilon / self.num_actions
            logits = probs.log()
        return logits, value

    def torchrl_modules(self):
        raise NotImplementedError(
            "AmagoPolicy has no TorchRL actor/value views (its heads are multi-discount and ensembled); "
            "use act() / features()."
        )


"""Loss pieces of the off-policy recipe as pure functions on tensors (each tested on its own).

Shapes: ``B`` sampled sequences of ``T`` steps, ``C`` critics, ``G`` discount factors, ``A`` discrete
actions. ``mask [B, T]`` marks real steps (padding is false); every loss is a mean over masked steps.

:func:`amago_loss` composes them into the one scalar the optimiser sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_memo.algos.amago.heads import AmagoHeads
from lightning_memo.algos.losses import masked_mean


def _next_step(x: Tensor) -> Tensor:
    """``[B, T, *]`` -> the same shape with row ``t`` holding step ``t + 1`` (the last row zero/false)."""
    return torch.cat((x[:, 1:], torch.zeros_like(x[:, :1])), dim=1)


def min_of_random_pair(q: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Elementwise min over 2 distinct critics drawn at random: ``[*, C, G, A] -> [*, G, A]``."""
    pair = torch.randperm(q.shape[-3], generator=generator, device="cpu")[:2].to(q.device)
    return q.index_select(-3, pair).min(dim=-3).values


def td_targets(
    rewards: Tensor, terminal: Tensor, gammas: Tensor, next_q: Tensor, next_logits: Tensor
) -> Tensor:
    """One-step TD targets in the original scale, ``[B, T, G]``.

    ``y[t] = r[t] + gamma * (1 - terminal[t]) * sum_a pi(a | s[t+1]) Q(s[t+1], a)`` per discount factor.
    ``rewards``, ``terminal`` ``[B, T]``; ``gammas [G]``; ``next_q [B, T, G, A]`` (original scale) and
    ``next_logits [B, T, G, A]`` are already aligned to the next step (row ``t`` holds step ``t+1``).
    """
    next_v = (next_logits.softmax(-1) * next_q).sum(-1)  # [B, T, G]
    not_done = (~terminal).to(next_v.dtype).unsqueeze(-1)
    return rewards.unsqueeze(-1) + gammas * not_done * next_v


def critic_loss(q: Tensor, actions: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean squared TD error of every critic and discount factor on the taken action.

    ``q [B, T, C, G, A]`` and ``targets [B, T, G]`` normalised; ``actions [B, T]`` long.
    """
    B, T, C, G, _ = q.shape
    q_taken = q.gather(-1, actions.reshape(B, T, 1, 1, 1).expand(B, T, C, G, 1)).squeeze(-1)  # [B, T, C, G]
    return masked_mean((q_taken - targets.unsqueeze(2)).pow(2), mask)


def actor_loss(
    logits_detached: Tensor,
    logits: Tensor,
    q: Tensor,
    actions: Tensor,
    mask: Tensor,
    pg_coef: float = 1.0,
    bc_coef: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """``pg_coef * -E_pi[Q] + bc_coef * filtered BC`` -> (loss, the -Q term, the BC term).

    ``logits_detached [B, T, G, A]``: the actor on the detached sequence output (the ``-Q`` term trains
    the actor only); ``logits [B, T, G, A]``: the actor on the live output (the BC term also trains the
    sequence model); ``q [B, T, G, A]``: normalised Q from a frozen copy of the critics;
    ``actions [B, T]`` the replayed actions. BC weight is 1 where ``Q(s, a) - V(s) > 0`` with
    ``V(s) = E_pi[Q(s, .)]``, else 0.
    """
    probs = logits_detached.softmax(-1)
    expected_q = (probs * q).sum(-1)  # [B, T, G]
    index = actions[..., None, None].expand(*q.shape[:-1], 1)
    advantage = q.gather(-1, index).squeeze(-1) - expected_q.detach()
    weight = (advantage > 0).to(q.dtype)
    log_prob = F.log_softmax(logits, -1).gather(-1, index).squeeze(-1)
    pg = masked_mean(-expected_q, mask)
    bc = masked_mean(-weight * log_prob, mask)
    return pg_coef * pg + bc_coef * bc, pg, bc


def amago_loss(
    heads: AmagoHeads,
    h: Tensor,
    actions: Tensor,
    rewards: Tensor,
    terminal: Tensor,
    mask: Tensor,
    critic_coef: float = 10.0,
    bc_coef: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """The one scalar ``actor + critic_coef * critic`` from one sequence-model output.

    ``h [B, T, D]`` (live, carries gradients into the sequence model); ``actions``, ``rewards``
    (already scaled), ``terminal``, ``mask`` ``[B, T]``. Returns (loss, TD targets ``[B, T, G]`` in the
    original scale, their mask ``[B, T]``, stats); the caller updates PopArt with the targets after the
    optimiser step. Q statistics and the policy entropy are for the last (largest) discount factor; Q in the
    original scale.
    """
    # targets: target actor and min of 2 random target critics at s[t+1], original scale
    with torch.no_grad():
        h_fixed = h.detach()
        target_q = min_of_random_pair(heads.q_values(h_fixed, heads.target_critic))
        next_q = _next_step(heads.popart.denormalize(target_q, action_dim=True))
        next_logits = _next_step(heads.target_actor(h_fixed))
        targets = td_targets(rewards, terminal, heads.gammas, next_q, next_logits)
        td_mask = mask & (_next_step(mask) | terminal)  # no next state and not terminal: no target
    q = heads.q_values(h)
    c_loss = critic_loss(q, actions, heads.popart.normalize(targets), td_mask)

    # the actor's Q: the ensemble mean, through frozen critics on the detached sequence output
    logits = heads.actor(h)
    q_frozen = heads.frozen_q_values(h).mean(-3)
    a_loss, pg, bc = actor_loss(heads.actor(h.detach()), logits, q_frozen, actions, mask, 1.0, bc_coef)
    loss = a_loss + critic_coef * c_loss
    with torch.no_grad():
        log_pi = F.log_softmax(logits[..., -1, :], -1)
        q_taken = heads.popart.denormalize(q.mean(-3), action_dim=True)
        q_taken = q_taken.gather(-1, actions[..., None, None].expand(*q_taken.shape[:-1], 1)).squeeze(-1)
        stats = {
            "loss": loss.detach(),
            "critic_loss": c_loss.detach(),
            "actor_loss": a_loss.detach(),
            "actor_pg_loss": pg.detach(),
            "actor_bc_loss": bc.detach(),
            "q_mean": masked_mean(q_taken[..., -1], mask),
            "q_max": q_taken[..., -1][mask].max() if mask.any() else torch.tensor(0.0),
            "td_target_mean": masked_mean(targets[..., -1], td_mask),
            "entropy": masked_mean(-(log_pi.exp() * log_pi).sum(-1), mask),
        }
    return loss, targets, td_mask, stats

"""PPO pieces as small pure functions on tensors (tested on their own).

Shapes: ``N`` environments (sequences), ``t`` steps of the trial prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchrl.objectives.value.functional import generalized_advantage_estimate

from lightning_memo.algos.losses import masked_mean


def trial_gae(
    rewards: Tensor,
    values: Tensor,
    bootstrap: Tensor,
    episode_end: Tensor,
    trial_end: Tensor,
    gamma: float = 0.99,
    lmbda: float = 0.95,
    cut_episodes: bool = True,
) -> tuple[Tensor, Tensor]:
    """GAE over a trial prefix -> (advantages ``[N, t]``, returns ``[N, t]``).

    ``rewards``, ``values`` ``[N, t]``; ``bootstrap [N]`` is ``V(s_t)`` for the state after the prefix;
    ``episode_end``/``trial_end`` ``[N, t]`` bool mark the steps that end an inner episode / the trial.
    With ``cut_episodes`` an inner-episode end is treated as terminal (no bootstrap across it, trace
    cut); otherwise only the trial end is (RL^2-style). TorchRL's functional GAE does the recursion:
    its ``terminated`` flag drops the bootstrap and its ``done`` flag cuts the trace.
    """
    end = trial_end | episode_end if cut_episodes else trial_end
    next_values = torch.cat((values[:, 1:], bootstrap[:, None]), dim=1)
    adv, ret = generalized_advantage_estimate(
        gamma,
        lmbda,
        values.unsqueeze(-1),
        next_values.unsqueeze(-1),
        rewards.unsqueeze(-1),
        done=end.unsqueeze(-1),
        terminated=end.unsqueeze(-1),
        time_dim=-2,
    )
    return adv.squeeze(-1), ret.squeeze(-1)


def clipped_policy_loss(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate -> (loss, clip fraction, approx. KL), all masked means over ``mask``.

    ``loss = -mean(min(r A, clip(r, 1-c, 1+c) A))`` with ``r = exp(log_prob - old_log_prob)``;
    approx. KL is ``mean((r - 1) - log r)``.
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
    loss = -masked_mean(surrogate, mask)
    with torch.no_grad():
        clip_frac = masked_mean(((ratio - 1.0).abs() > clip).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, clip_frac, approx_kl


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = None
) -> Tensor:
    """``0.5 * mean((V - R)^2)``; with ``clip`` the PPO2 clipped variant ``0.5 * mean(max(...))``."""
    err = (values - returns).pow(2)
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.max(err, (clipped - returns).pow(2))
    return 0.5 * masked_mean(err, mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var(R - V) / Var(R)`` over the masked entries (nan when ``Var(R) = 0``)."""
    v, r = values[mask], returns[mask]
    var_r = r.var(unbiased=False)
    return 1.0 - (r - v).var(unbiased=False) / var_r if var_r > 0 else torch.tensor(float("nan"))

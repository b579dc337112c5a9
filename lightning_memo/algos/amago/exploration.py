"""Epsilon-greedy exploration annealed at two levels ("bilevel"): within each trial and over training.

At training progress ``p = min(env_steps / anneal_steps, 1)`` the trial's first step explores with
``eps_first = lerp(first_start, first_end, p)`` and its last step with
``eps_last = lerp(last_start, last_end, p)``; steps in between interpolate linearly in the trial time.
Early trials explore a lot everywhere; late trials explore a little, and less toward the trial's end,
where the agent should exploit what it found earlier in the trial.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bilevel_epsilon(
    step: Tensor | int,
    trial_len: int,
    env_steps: int,
    anneal_steps: int,
    first: tuple[float, float] = (1.0, 0.05),
    last: tuple[float, float] = (0.8, 0.01),
) -> Tensor:
    """Exploration rate for trial step(s) ``step`` (``0 .. trial_len - 1``, any shape) after
    ``env_steps`` env steps of training. ``first``/``last``: (start, end of training) rates at the
    trial's first/last step."""
    progress = min(env_steps / anneal_steps, 1.0) if anneal_steps > 0 else 1.0
    eps_first = first[0] + (first[1] - first[0]) * progress
    eps_last = last[0] + (last[1] - last[0]) * progress
    within = torch.as_tensor(step, dtype=torch.float32) / max(trial_len - 1, 1)
    return eps_first + (eps_last - eps_first) * within


def epsilon_greedy(
    actions: Tensor, num_actions: int, epsilon: Tensor | float, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each of ``actions [N]`` by a uniform random action with probability ``epsilon``
    (a float or ``[N]``)."""
    epsilon = torch.as_tensor(epsilon, dtype=torch.float32, device=actions.device)
    explore = torch.rand(actions.shape, generator=generator, device=actions.device) < epsilon
    random_actions = torch.randint(num_actions, actions.shape, generator=generator, device=actions.device)
    return torch.where(explore, random_actions, actions)

"""Trial collection over a batched TorchRL env, window by window, keeping the trial history.

One trial = ``trial_len`` steps of ``N`` envs. :class:`TrialCollector` starts a trial (seeded reset,
empty memory), collects windows of ``U`` steps with the policy in step mode (the memory cache lives in
the policy and carries over between windows and across updates), and keeps the whole prefix as one
``[N, t]`` tensordict: observations, flags, ``action``, ``action_log_prob``, ``state_value`` and the
``("next", ...)`` entries (``reward``, ``done``, ``episode_end``, ...). The refresh re-encodes it.

Why not ``torchrl.collectors.Collector``: it resets finished envs inside the batch that ends a trial
(with whatever RNG state the env has), so trial starts can neither be seeded from the trial index
(needed for an exact resume from a trial-boundary checkpoint, and for distinct seeds per DDP rank) nor
line up with the memory reset, and the refresh needs to overwrite values of earlier batches it no longer
holds. The piece it lacks is small: a seeded reset per trial plus ``EnvBase.rollout`` per window.
The policy's TorchRL modules still work with ``Collector`` for ordinary use (see the tests).
"""

from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

from lightning_memo.policy import LOG_PROB_KEY, VALUE_KEY, MemoPolicy


class TrialCollector:
    """Runs trials of ``trial_len`` steps on ``env`` (batch ``[N]``) with ``policy.act``.

    ``seed``/``rank``/``world_size`` set the env seed of each trial: trial ``k`` on rank ``r`` reseeds
    with ``seed + (k * world_size + r) * N`` (env ``i`` adds ``i``), so every (trial, rank, env) differs
    and a resumed run replays the same tasks.
    """

    def __init__(
        self, env: EnvBase, policy: MemoPolicy, trial_len: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if len(env.batch_size) != 1:
            raise ValueError(f"TrialCollector needs a batched env with batch_size [N]; got {list(env.batch_size)}.")
        self.env = env
        self.policy = policy
        self.trial_len = trial_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_envs = env.batch_size[0]
        self.history: TensorDictBase | None = None  # [N, t], the trial so far
        self.pending: TensorDictBase | None = None  # [N], the state the next step acts on
        # called as hook(env, td) on the state each step acts on, before acting (e.g. to grab frames)
        self.step_hooks: list[Callable[[EnvBase, TensorDictBase], None]] = []

    @property
    def t(self) -> int:
        """Steps collected in the current trial."""
        return 0 if self.history is None else self.history.shape[1]

    def trial_seed(self, trial_index: int) -> int:
        return self.seed + (trial_index * self.world_size + self.rank) * self.num_envs

    def start_trial(self, trial_index: int) -> None:
        """Seeded reset of every env, empty memory, empty history."""
        self.env.set_seed(self.trial_seed(trial_index))
        self.pending = self.env.reset()
        self.policy.reset(self.num_envs)
        self.history = None

    @torch.no_grad()
    def collect(self, steps: int) -> TensorDictBase:
        """Act for ``steps`` more steps (policy in eval mode); returns the new window ``[N, steps]``."""
        if self.pending is None:
            raise RuntimeError("call start_trial() before collect().")
        if self.t + steps > self.trial_len:
            raise ValueError(f"collecting {steps} steps at t={self.t} would pass trial_len={self.trial_len}.")
        was_training = self.policy.training
        self.policy.eval()
        try:
            window = self.env.rollout(
                steps,
                self._act_with_hooks if self.step_hooks else self.policy.act,
                auto_reset=False,
                tensordict=self.pending,
                break_when_any_done=False,
                return_contiguous=True,
                trust_policy=True,  # a plain callable td -> td; no wrapping or spec checks
            )
        finally:
            self.policy.train(was_training)
        self.pending = step_mdp(window[:, -1], exclude_action=True)
        self.history = window if self.history is None else torch.cat((self.history, window), dim=1)
        return window

    def _act_with_hooks(self, td: TensorDictBase) -> TensorDictBase:
        for hook in self.step_hooks:
            hook(self.env, td)
        return self.policy.act(td)

    def prefix_with_pending(self) -> TensorDictBase:
        """The history plus the pending state as a last step, ``[N, t+1]`` (policy inputs only)."""
        keys = [k for k in self.pending.keys(True, True) if k in self.history.keys(True, True)]
        return torch.cat((self.history.select(*keys), self.pending.select(*keys).unsqueeze(1)), dim=1)

    def overwrite(self, values: torch.Tensor, log_probs: torch.Tensor | None = None) -> None:
        """Replace the stored ``state_value`` (and optionally ``action_log_prob``) of the prefix, ``[N, t]``."""
        self.history.set(VALUE_KEY, values.to(self.history.get(VALUE_KEY).dtype))
        if log_probs is not None:
            self.history.set(LOG_PROB_KEY, log_probs.to(self.history.get(LOG_PROB_KEY).dtype))

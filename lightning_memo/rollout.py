"""Trial collection over a batched TorchRL env, shared by every algorithm, and what a trial history tells.

One trial = ``trial_len`` steps of ``N`` envs (fewer where an episodic trial ends early). :class:`TrialCollector` starts a trial (seeded reset,
empty memory), collects windows of ``U`` steps with the policy in step mode (the memory cache lives in
the policy and carries over between windows and across updates), and writes them into a trial history
``[N, T]`` allocated once: observations, flags, ``action``, ``action_log_prob``, ``state_value`` and the
``("next", ...)`` entries (``reward``, ``done``, ``episode_end``, ...). ``history`` is the prefix
``[N, t]`` collected so far (a view); the cache refresh re-encodes it and overwrites its values.

Why not ``torchrl.collectors.Collector``: it resets finished envs inside the batch that ends a trial
(with whatever RNG state the env has), so trial starts can neither be seeded from the trial index
(needed for an exact resume from a trial-boundary checkpoint, and for distinct seeds per DDP rank) nor
line up with the memory reset, and the refresh needs to overwrite values of earlier batches it no longer
holds. The piece it lacks is small: a seeded reset per trial plus ``EnvBase.rollout`` per window
(written out in :meth:`TrialCollector.collect`, the same steps with less bookkeeping).
The policy's TorchRL modules still work with ``Collector`` for ordinary use (see the tests).
"""

from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

from lightning_memo.envs._common import env_attribute  # noqa: F401  (importable from here too)
from lightning_memo.policy import EPISODE_START_KEY, LOG_PROB_KEY, VALUE_KEY, MemoPolicy, NonFiniteError, evaluating, flag


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
        self.trial_index: int | None = None
        self.t = 0  # steps collected in the current trial
        self._step = 0  # the step being acted on (names the step in errors)
        self.pending: TensorDictBase | None = None  # [N], the state the next step acts on
        self._buffer: TensorDictBase | None = None  # [N, trial_len], allocated by the first window
        # called as hook(env, td) on the state each step acts on, before acting (e.g. to grab frames)
        self.step_hooks: list[Callable[[EnvBase, TensorDictBase], None]] = []

    @property
    def history(self) -> TensorDictBase | None:
        """The trial so far, ``[N, t]`` (a view of the trial buffer; ``None`` before the first window)."""
        return None if self._buffer is None else self._buffer[:, : self.t]

    def trial_seed(self, trial_index: int) -> int:
        """Seed of trial ``trial_index`` on this rank: ``seed + (trial_index * world_size + rank) * num_envs``,
        so env rows, ranks and trials never share a seed."""
        return self.seed + (trial_index * self.world_size + self.rank) * self.num_envs

    def start_trial(self, trial_index: int) -> None:
        """Seeded reset of every env, empty memory, empty history."""
        self.env.set_seed(self.trial_seed(trial_index))
        self.pending = self.env.reset()
        self.policy.reset(self.num_envs)
        self.trial_index, self.t = trial_index, 0

    @property
    def trial_over(self) -> bool:
        """Whether the current trial has ended: ``trial_len`` steps, or the env's ``done`` on every row
        (an episodic trial whose rows have all ended)."""
        if self.pending is None:
            return False
        return self.t >= self.trial_len or bool(self.pending.get("done").all())

    @torch.no_grad()
    def collect(self, steps: int) -> TensorDictBase:
        """Act for ``steps`` more steps (policy in eval mode); returns the new window ``[N, steps]``.

        A trial that ends earlier (``done``, which trial envs set on every row at once: an episodic trial
        whose rows have all ended) stops there: the window is then shorter, and empty once the trial is over.

        The loop is ``EnvBase.rollout(auto_reset=False, break_when_any_done=True)`` written out: the same
        ``env.step`` and next-state step per step, without the rollout's per-step copy, policy wrapping and
        done-key walk (at small widths that bookkeeping costs as much as the env itself); it stops at the
        first ``done`` (trial envs set ``done``, ``terminated`` and ``truncated`` together). The policy acts
        under ``torch.inference_mode`` (acting builds no graph; what it writes reaches the history through
        the stacking copy below, so the history holds no inference tensors).
        """
        if self.pending is None:
            raise RuntimeError("call start_trial() before collect().")
        if self.t + steps > self.trial_len:
            raise ValueError(f"collecting {steps} steps at t={self.t} would pass trial_len={self.trial_len}.")
        if self.trial_over:
            return self.history[:, self.t : self.t]
        self._step = self.t
        # TorchRL's cached step_mdp and its transforms' post-step hooks, as its rollout calls them
        next_state, hooks = self.env._step_mdp, self.env._post_step_mdp_hooks
        td, taken = self.pending, []
        with evaluating(self.policy):
            for i in range(steps):
                td = self.env.step(self._act(td))
                next_td = next_state(td)
                if hooks is not None:
                    td, next_td = hooks(td, next_td)
                taken.append(td)
                if i == steps - 1:
                    break
                td = next_td
                if bool(td.get("done").any()):  # the trial's end (every row's done at once), without a reset
                    break
        window = torch.stack(taken, dim=1).refine_names(..., "time")  # as rollout names it
        steps = window.shape[1]  # fewer where the trial ended
        self.pending = step_mdp(window[:, -1], exclude_action=True)
        if self._buffer is None:
            self._buffer = window[:, :1].expand(self.num_envs, self.trial_len).clone()
        self._buffer[:, self.t : self.t + steps] = window
        self.t += steps
        return window

    def _act(self, td: TensorDictBase) -> TensorDictBase:
        for hook in self.step_hooks:
            hook(self.env, td)
        try:
            with torch.inference_mode():
                self.policy.act(td, with_logits=False)  # logits are not stored: nothing reads them
        except NonFiniteError as err:
            raise NonFiniteError(f"{err} at trial step {self._step}") from None
        self._step += 1
        return td

    def prefix_with_pending(self) -> TensorDictBase:
        """The history plus the pending state as a last step, ``[N, t+1]`` (policy inputs only)."""
        history = self.history
        keys = [k for k in self.pending.keys(True, True) if k in history.keys(True, True)]
        return torch.cat((history.select(*keys), self.pending.select(*keys).unsqueeze(1)), dim=1)

    def overwrite(self, values: Tensor, log_probs: Tensor | None = None) -> None:
        """Replace the stored ``state_value`` (and optionally ``action_log_prob``) of the prefix, ``[N, t]``."""
        for key, new in ((VALUE_KEY, values), (LOG_PROB_KEY, log_probs)):
            if new is not None:
                stored = self._buffer.get(key)
                stored[:, : self.t] = new.to(stored.dtype)


def shuffled_episode_order(episode_start: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A time permutation ``[N, t]`` per row that shuffles the completed inner episodes.

    ``episode_start [N, t]`` bool (t=0 counts as a start). The episode still running at ``t`` (the last
    one) stays last, so the refreshed cache ends with the steps the agent is in; each episode keeps its
    internal order. ``history[row, perm[row]]`` is the shuffled context.
    """
    starts = episode_start.clone()
    starts[:, 0] = True
    N, t = starts.shape
    perms = []
    for row in range(N):
        bounds = starts[row].nonzero().squeeze(1).tolist() + [t]
        episodes = [torch.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        done, current = episodes[:-1], episodes[-1]
        order = torch.randperm(len(done), generator=generator).tolist()
        perms.append(torch.cat([done[i] for i in order] + [current]))
    return torch.stack(perms).to(episode_start.device)


def with_shuffled_episodes(history: TensorDictBase, generator: torch.Generator | None = None) -> tuple[TensorDictBase, Tensor]:
    """``history [N, t]`` with its completed inner episodes in a random order, and the permutation."""
    perm = shuffled_episode_order(flag(history, EPISODE_START_KEY), generator)
    N, t = perm.shape
    rows = torch.arange(N, device=perm.device)[:, None].expand(N, t)
    context = history[rows, perm]
    context.set("is_init", history.get("is_init"))  # the trial start stays at t=0
    return context, perm


def env_steps(window: TensorDictBase) -> int:
    """The env steps of ``window`` ``[N, t]``: the steps of rows that were stepped (root ``active``,
    for episodic trials), else all ``N * t``."""
    active = flag(window, "active")
    return window.numel() if active is None else int(active.sum())


def episode_stats(history: TensorDictBase, max_episodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per inner-episode index ``k < max_episodes``: sums of return and length over the envs where
    episode ``k`` ended inside the trial, and their count; three float tensors ``[max_episodes]``.
    Steps of rows that were not stepped (root ``active`` false: an episodic row after its end) are
    no episode's."""
    N, T = history.shape
    reward = history.get(("next", "reward")).reshape(N, T).float()
    index = history.get("episode_index").reshape(N, T)
    end = flag(history, ("next", "episode_end"))
    active = flag(history, "active")
    out = torch.zeros(3, max_episodes)
    for k in range(max_episodes):
        in_k = index == k if active is None else (index == k) & active
        completed = (in_k & end).any(1)
        out[0, k] = (reward * in_k).sum(1)[completed].sum()
        out[1, k] = in_k.sum(1)[completed].float().sum()
        out[2, k] = completed.float().sum()
    return out[0], out[1], out[2]


def trial_metrics(history: TensorDictBase, max_episodes: int = 10) -> dict[str, float]:
    """Trial statistics from a history ``[N, T]``: mean ``return``, ``successes`` and ``spl`` where the
    env reports them, and ``episode_return/k``, ``episode_len/k`` per completed inner episode ``k``."""
    N, T = history.shape
    keys = history.keys(True, True)
    out = {"return": float(history.get(("next", "reward")).reshape(N, T).float().sum(1).mean())}
    if ("next", "success") in keys:
        out["successes"] = float(flag(history, ("next", "success")).float().sum(1).mean())
    if ("next", "spl") in keys:
        end = flag(history, ("next", "episode_end"))
        spl = history.get(("next", "spl")).reshape(N, T).float()
        out["spl"] = float(spl[end].mean()) if end.any() else 0.0
    if "episode_index" in keys:
        returns, lengths, counts = episode_stats(history, max_episodes)
        for k in range(max_episodes):
            if counts[k] > 0:
                out[f"episode_return/{k}"] = float(returns[k] / counts[k])
                out[f"episode_len/{k}"] = float(lengths[k] / counts[k])
    return out

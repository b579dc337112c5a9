"""Any gymnasium or TorchRL task as a batched trial env: ``N`` rows, flat observations, the flags the trainers read.

The rows come from a gymnasium id or factory (:class:`~lightning_memo.envs.gym_rows.GymRows`: one
gymnasium env per row) or from a TorchRL env
(:class:`~lightning_memo.envs.torchrl_rows.TorchRLRows`: ``GymEnv(...)`` is one row, a
``SerialEnv``/``ParallelEnv`` one row per worker). Both step only the rows they are given, so the
two kinds of trial (``mode``) work the same on either:

* ``"episodic"`` (default; standard POMDP tasks): exactly one episode per trial. A row whose episode
  ended is masked: it is no longer stepped (its action is ignored, its reward is 0, its observation
  stays the last one) and its ``active`` flag is false; the trial ends when every row has ended, or
  after ``trial_len`` steps (a cap).
* ``"meta"``: a budget of ``trial_len`` steps; an episode that ends (terminated or truncated) restarts
  in the same step, which returns the new episode's first observation with ``episode_start`` (as
  Dark-Key-To-Door's ``"memo"`` version).

Outputs: ``observation`` float32 ``[N, D]``, ``active`` bool ``[N, 1]`` (the observation belongs to a
running episode, so the action taken on it is stepped: the loss mask), and the flags of
:class:`~lightning_memo.envs._common.TrialEnv`; ``success`` is the env's success report at an episode
end (see the rows' modules), false where it has none.

Seeding as the built-in tasks: row ``i`` owns a numpy Generator seeded ``seed + i`` and draws from it
the seed of each trial's first ``reset``; restarts within a trial continue the env's own stream.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import gymnasium as gym
import torch
from tensordict import TensorDictBase
from torchrl.data import Categorical, Unbounded
from torchrl.envs import EnvBase

from lightning_memo.envs._common import TrialEnv, check_choice
from lightning_memo.envs.gym_rows import GymRows, is_gym_id, make_gym  # noqa: F401  (is_gym_id, make_gym: importable here)
from lightning_memo.envs.torchrl_rows import TorchRLRows

MODES = ("episodic", "meta")
EPISODIC_CAP = 1000  # steps of an episodic trial when neither the env nor the caller states a length


class GymTrialEnv(TrialEnv):
    """``N`` rows of a gymnasium or TorchRL task as one batched trial env (see the module docstring).

    Args:
        env: a gymnasium id (``"CartPole-v1"``, ``"popgym-RepeatPreviousEasy-v0"``, ...), a factory
            returning a ``gymnasium.Env`` (called once per row), or a TorchRL env: unbatched
            (``GymEnv("CartPole-v1")``, one row) or a ``SerialEnv``/``ParallelEnv`` of unbatched envs
            (one row per worker).
        num_envs: rows of a gymnasium source (default 1); a TorchRL env brings its own (leave unset).
        trial_len: the step budget (``"meta"``, required) or cap (``"episodic"``; default the env's own
            episode limit, else ``EPISODIC_CAP`` with a warning).
        mode: ``"episodic"`` or ``"meta"``.
        observation_key: the observation entry to use (a gymnasium Dict key, ``"image"`` for MiniGrid ids;
            or a key of the TorchRL env's observation spec); default all of it, flattened.
        make_kwargs: keyword arguments of ``gymnasium.make`` (or of the factory).
    """

    def __init__(
        self,
        env: str | Callable[..., gym.Env] | EnvBase,
        num_envs: int | None = None,
        trial_len: int | None = None,
        mode: str = "episodic",
        observation_key: str | None = None,
        device: Any = None,
        seed: int | None = None,
        **make_kwargs: Any,
    ):
        mode = check_choice("mode", mode, MODES)
        if isinstance(env, EnvBase):
            if make_kwargs:
                raise TypeError(
                    f"unexpected arguments {sorted(make_kwargs)}: they go to gymnasium.make, and a TorchRL env is "
                    "built already (pass them to GymEnv)."
                )
            rows = TorchRLRows(env, num_envs, observation_key)
        else:
            rows = GymRows(env, 1 if num_envs is None else num_envs, observation_key, make_kwargs)
        self.num_actions = rows.num_actions
        super().__init__(rows.num_envs, _trial_len(rows, trial_len, mode), device, seed)
        self.mode, self.rows = mode, rows
        n = self.num_envs
        self._make_specs(
            {"observation": Unbounded((n, rows.dim), dtype=torch.float32, device=self.device)},
            active=Categorical(2, shape=(n, 1), dtype=torch.bool, device=self.device),
        )
        # the trial state, on the CPU (outputs are moved to the env's device)
        self._obs = torch.zeros(n, rows.dim)
        self._active = torch.zeros(n, dtype=torch.bool)
        self._ep_index = torch.zeros(n, dtype=torch.int64)
        self._trial_t = torch.zeros(n, dtype=torch.int64)

    @property
    def envs(self) -> list[gym.Env] | EnvBase:
        """The rows' envs: a list of gymnasium envs, or the TorchRL env."""
        return self.rows.envs

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        rows = self._reset_rows(tensordict)
        seeds = [int(self.rngs[i].integers(2**31)) for i in rows.tolist()]
        self._obs[rows] = self.rows.reset(rows, seeds)
        self._active[rows], self._ep_index[rows], self._trial_t[rows] = True, 0, 0
        return self._reset_output({"observation": self._obs.clone()}, self._ep_index, active=self._active)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = self._action(tensordict).cpu()
        n = self.num_envs
        reward = torch.zeros(n)
        start, end, success = (torch.zeros(n, dtype=torch.bool) for _ in range(3))
        rows = self._active.nonzero().squeeze(-1)  # only running episodes are stepped
        if len(rows):
            self._obs[rows], reward[rows], end[rows], success[rows] = self.rows.step(rows, actions[rows])
        ended = end.nonzero().squeeze(-1)
        if len(ended) and self.mode == "meta":
            self._obs[ended] = self.rows.restart(ended)
            start[ended] = True
            self._ep_index[ended] += 1
        elif len(ended):
            self._active[ended] = False
        self._trial_t += 1
        done = self._trial_t >= self.trial_len
        if self.mode == "episodic" and not self._active.any():
            done[:] = True
        return self._output(
            {"observation": self._obs.clone()}, episode_start=start, episode_index=self._ep_index, success=success,
            episode_end=end, done=done, active=self._active, reward=reward,
        )

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close the rows' envs, then this one."""
        if hasattr(self, "rows"):
            self.rows.close()
        super().close(raise_if_closed=raise_if_closed)


def _trial_len(rows: GymRows | TorchRLRows, trial_len: int | None, mode: str) -> int:
    """The trial's step budget (meta) or cap (episodic)."""
    if trial_len is not None:
        return trial_len
    if mode == "meta":
        raise ValueError(f"mode='meta' needs trial_len= (the step budget over which episodes of {rows.name} restart).")
    if rows.episode_limit is None:
        warnings.warn(
            f"{rows.name} states no episode limit: episodic trials are capped at {EPISODIC_CAP} steps. Pass trial_len= "
            "to set the cap.",
            stacklevel=3,
        )
        return EPISODIC_CAP
    return rows.episode_limit

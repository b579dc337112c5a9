"""Per-step trial features that turn any TorchRL env into a meta-RL trial.

:class:`TrialFeatures` adds, for batch shape ``[*B]`` and ``A`` discrete actions:

* ``prev_action`` float ``[*B, A]``: one-hot of the previous action; all ones at the trial start;
* ``prev_reward`` float ``[*B, 1]``: the previous reward (0 at the trial start);
* ``trial_time`` float ``[*B, 1]``: steps since the trial start / ``trial_len``;
* ``reset_flag`` float ``[*B, 1]``: 1 on the first observation of an inner episode (the env's
  ``episode_start`` when it has one, else only at the trial start).

:func:`make_trial_env` composes it with TorchRL's ``InitTracker`` (``is_init``: true only at the trial
start, i.e. after ``reset``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, OneHot, Unbounded
from torchrl.envs import Compose, EnvBase, InitTracker, Transform, TransformedEnv

from lightning_memo.envs._common import env_attribute

TRIAL_FEATURE_KEYS = ("prev_action", "prev_reward", "trial_time", "reset_flag")


class EpisodeStartAtReset(Transform):
    """Adds ``episode_start`` bool ``[*B, 1]``: true after ``reset`` only (one inner episode per trial).

    For third-party envs, whose episodes are the trials.
    """

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        shape = (*tensordict_reset.batch_size, 1)
        tensordict_reset.set("episode_start", torch.ones(shape, dtype=torch.bool, device=tensordict_reset.device))
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        shape = (*next_tensordict.batch_size, 1)
        next_tensordict.set("episode_start", torch.zeros(shape, dtype=torch.bool, device=next_tensordict.device))
        return next_tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        """Adds ``episode_start`` (bool ``[*, 1]``)."""
        observation_spec["episode_start"] = Categorical(
            2, shape=(*observation_spec.shape, 1), dtype=torch.bool, device=observation_spec.device
        )
        return observation_spec


class TrialFeatures(Transform):
    """The trial features of the module docstring, for ``num_actions`` discrete actions.

    Actions may be integer indices (``[*B]`` or ``[*B, 1]``) or one-hot ``[*B, A]``.
    """

    def __init__(self, num_actions: int, trial_len: int, action_key: str = "action"):
        if num_actions < 1 or trial_len < 1:
            raise ValueError(f"num_actions and trial_len must be >= 1, got {num_actions} and {trial_len}.")
        super().__init__(in_keys=[], out_keys=list(TRIAL_FEATURE_KEYS))
        self.num_actions = int(num_actions)
        self.trial_len = int(trial_len)
        self.action_key = action_key
        self._one_hot_spec: bool | None = None

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        # values for every row: TorchRL keeps the old ones of rows that are not being reset
        shape, device = tensordict_reset.batch_size, tensordict_reset.device
        ones = torch.ones((*shape, 1), device=device)
        tensordict_reset.set("prev_action", torch.ones((*shape, self.num_actions), device=device))
        tensordict_reset.set("prev_reward", torch.zeros_like(ones))
        tensordict_reset.set("trial_time", torch.zeros_like(ones))
        tensordict_reset.set("reset_flag", ones)
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        prev_time = tensordict.get("trial_time", None)
        if prev_time is None:
            raise KeyError('TrialFeatures needs "trial_time" in the step input: start from env.reset().')
        steps = torch.round(prev_time * self.trial_len) + 1  # exact integer count, no drift
        episode_start = next_tensordict.get("episode_start", None)
        reset_flag = torch.zeros_like(prev_time) if episode_start is None else episode_start.to(prev_time.dtype)
        next_tensordict.set("prev_action", self._one_hot(tensordict.get(self.action_key), tensordict.batch_dims))
        next_tensordict.set("prev_reward", next_tensordict.get("reward").to(prev_time.dtype).reshape(prev_time.shape))
        next_tensordict.set("trial_time", steps / self.trial_len)
        next_tensordict.set("reset_flag", reset_flag)
        return next_tensordict

    def _one_hot(self, action: torch.Tensor, batch_dims: int) -> torch.Tensor:
        if self._one_hot_spec is None:  # looked up once: `parent` is rebuilt on every access
            spec = self.parent.full_action_spec[self.action_key] if self.parent is not None else None
            self._one_hot_spec = isinstance(spec, OneHot)
        if self._one_hot_spec or action.dtype.is_floating_point or action.dtype == torch.bool:
            if action.shape[-1] != self.num_actions:
                raise ValueError(f"one-hot actions must have {self.num_actions} entries, got {tuple(action.shape)}.")
            return action.float()
        if action.ndim == batch_dims + 1 and action.shape[-1] == 1:
            action = action.squeeze(-1)
        return torch.nn.functional.one_hot(action.long(), self.num_actions).float()

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        """Adds ``prev_action`` ``[*, A]``, ``prev_reward``, ``trial_time`` and ``reset_flag`` ``[*, 1]``."""
        shape, device = observation_spec.shape, observation_spec.device
        observation_spec["prev_action"] = Bounded(0.0, 1.0, shape=(*shape, self.num_actions), device=device)
        observation_spec["prev_reward"] = Unbounded(shape=(*shape, 1), device=device)
        observation_spec["trial_time"] = Unbounded(shape=(*shape, 1), device=device)
        observation_spec["reset_flag"] = Bounded(0.0, 1.0, shape=(*shape, 1), device=device)
        return observation_spec


def num_discrete_actions(env: EnvBase) -> int:
    """The number of actions of an env with a ``Categorical`` or ``OneHot`` action spec."""
    spec = env.action_spec
    if isinstance(spec, (Categorical, OneHot)):
        return int(spec.space.n)
    raise TypeError(f"trial features need a discrete action spec (Categorical or OneHot), got {type(spec).__name__}.")


def make_trial_env(
    base_env: EnvBase,
    trial_len: int | None = None,
    num_actions: int | None = None,
    transforms: Sequence[Transform] = (),
) -> TransformedEnv:
    """``TransformedEnv(base_env, Compose(InitTracker(), TrialFeatures(...), *transforms))``.

    ``trial_len`` defaults to ``base_env.trial_len`` and ``num_actions`` to the action spec's size.

    Example::

        env = make_trial_env(DarkKeyToDoorEnv(num_envs=8, size=5, episode_len=20, trial_len=200))
        td = env.reset()  # is_init, prev_action (all ones), prev_reward, trial_time, reset_flag, ...
    """
    if trial_len is None:
        trial_len = env_attribute(base_env, "trial_len")
        if trial_len is None:
            raise ValueError(
                f"{type(base_env).__name__} has no trial_len attribute: pass trial_len=, or first make it a trial env "
                "with lightning_memo.envs.GymTrialEnv(env, trial_len=...) (episode flags, restarts, masks)."
            )
    if num_actions is None:
        num_actions = num_discrete_actions(base_env)
    return TransformedEnv(base_env, Compose(InitTracker(), TrialFeatures(num_actions, trial_len), *transforms))

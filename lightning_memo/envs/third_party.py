"""POPGym and MiniGrid memory tasks as batched trial envs: thin uses of :class:`GymTrialEnv`.

Each returns ``make_trial_env(GymTrialEnv(...))``: ``observation`` (the gymnasium observation flattened
to float32), ``active``, the trial flags, ``is_init`` and the trial features of
:mod:`lightning_memo.envs.transforms`; actions are integer indices (MultiDiscrete action spaces are
flattened to one ``Discrete``). One episode is one trial unless ``mode="meta"``. Example::

    from lightning_memo.envs import make_minigrid_env, make_popgym_env

    env = make_popgym_env("RepeatPreviousEasy", num_envs=32)  # or "popgym-RepeatPreviousEasy-v0"
    rollout = env.rollout(100)                                 # [32, T]: observation, prev_action, ...
    env = make_minigrid_env("MiniGrid-MemoryS7-v0")
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from torchrl.envs import TransformedEnv

from lightning_memo.envs.gym_rows import episode_limit
from lightning_memo.envs.gym_trial import GymTrialEnv
from lightning_memo.envs.transforms import make_trial_env


def wrap_gym_trial_env(env: gym.Env, trial_len: int | None = None, device: Any = None) -> TransformedEnv:
    """One gymnasium env (an instance) as a one-row episodic trial env with the trial features.

    ``trial_len`` (the denominator of ``trial_time``) defaults to the env's episode limit.
    """
    trial_len = trial_len or episode_limit(env)
    if trial_len is None:
        raise ValueError(f"{env} does not state its episode length: pass trial_len=.")
    return make_trial_env(GymTrialEnv(lambda: env, trial_len=trial_len, device=device))


def make_popgym_env(name: str, num_envs: int = 1, trial_len: int | None = None, **kwargs: Any) -> TransformedEnv:
    """A POPGym task (``"RepeatPreviousEasy"`` or ``"popgym-RepeatPreviousEasy-v0"``) as a trial env.

    ``kwargs``: ``mode``, ``device``, ``seed`` of :class:`GymTrialEnv`, the rest to ``gymnasium.make``.
    """
    env_id = name if name.startswith("popgym-") else f"popgym-{name}-v0"
    return make_trial_env(GymTrialEnv(env_id, num_envs, trial_len, **kwargs))


def make_minigrid_env(name: str, num_envs: int = 1, trial_len: int | None = None, **kwargs: Any) -> TransformedEnv:
    """A MiniGrid task (e.g. ``"MiniGrid-MemoryS7-v0"``) as a trial env on its 7x7x3 image view.

    The ``"image"`` entry (the default for MiniGrid ids) leaves out the text mission; ``kwargs`` as for
    :func:`make_popgym_env`.
    """
    return make_trial_env(GymTrialEnv(name, num_envs, trial_len, **kwargs))

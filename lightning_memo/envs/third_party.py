"""POPGym and MiniGrid memory tasks as TorchRL trial envs (spec/envs.md §3).

Each gymnasium episode is one trial. The returned env (batch size ``[]``) has ``observation`` (the
gymnasium observation flattened to float32), ``episode_start`` (true after reset only), ``is_init``
and the trial features of :mod:`lightning_memo.envs.transforms`; actions are integer indices
(MultiDiscrete action spaces are flattened to one ``Discrete``). Example::

    from lightning_memo.envs import make_popgym_env, make_minigrid_env

    env = make_popgym_env("RepeatPreviousEasy")  # or "popgym-RepeatPreviousEasy-v0"
    rollout = env.rollout(100)                    # observation, prev_action, is_init, ...
    env = make_minigrid_env("MiniGrid-MemoryS7-v0")

Several copies run in parallel with TorchRL's ``SerialEnv``/``ParallelEnv`` (``lambda:
make_popgym_env(...)``), or apply ``make_trial_env`` to a ``ParallelEnv`` of plain ``GymEnv``s.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from torchrl.envs import Compose, GymWrapper, InitTracker, TransformedEnv

from lightning_memo.envs.transforms import EpisodeStartAtReset, TrialFeatures


class FlatFloatObservation(gym.ObservationWrapper):
    """Any gymnasium observation (Discrete, Tuple, Box, ...) as a flat float32 vector (one-hot for discrete parts)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        flat = gym.spaces.flatten_space(env.observation_space)
        if not isinstance(flat, gym.spaces.Box):
            raise TypeError(f"cannot flatten observation space {env.observation_space} to a vector.")
        self.observation_space = gym.spaces.Box(
            flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32
        )

    def observation(self, observation: Any) -> np.ndarray:
        return gym.spaces.flatten(self.env.observation_space, observation).astype(np.float32)


class FlatDiscreteAction(gym.ActionWrapper):
    """A ``MultiDiscrete(nvec)`` action space as one ``Discrete(prod(nvec))``."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._nvec = np.asarray(env.action_space.nvec)
        self.action_space = gym.spaces.Discrete(int(np.prod(self._nvec)))

    def action(self, action: Any) -> np.ndarray:
        return np.array(np.unravel_index(int(action), self._nvec), dtype=np.int64)


def _episode_limit(env: gym.Env) -> int | None:
    """The env's own episode length, where it says one (gymnasium spec, POPGym or MiniGrid attributes)."""
    if env.spec is not None and env.spec.max_episode_steps:
        return env.spec.max_episode_steps
    for attr in ("max_episode_length", "episode_length", "max_steps"):
        value = getattr(env.unwrapped, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def wrap_gym_trial_env(env: gym.Env, trial_len: int | None = None, device: Any = None) -> TransformedEnv:
    """A gymnasium env as a TorchRL trial env (see the module docstring).

    ``trial_len`` (the denominator of ``trial_time``) defaults to the env's episode limit.
    """
    trial_len = trial_len or _episode_limit(env)
    if trial_len is None:
        raise ValueError(f"{env} does not state its episode length: pass trial_len=.")
    if isinstance(env.action_space, gym.spaces.MultiDiscrete):
        env = FlatDiscreteAction(env)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise TypeError(f"trial envs need discrete actions, got {env.action_space}.")
    env = FlatFloatObservation(env)
    base = GymWrapper(env, categorical_action_encoding=True, device=device)
    features = TrialFeatures(int(env.action_space.n), trial_len)
    return TransformedEnv(base, Compose(EpisodeStartAtReset(), InitTracker(), features))


def make_popgym_env(name: str, trial_len: int | None = None, device: Any = None, **kwargs: Any) -> TransformedEnv:
    """A POPGym task (``"RepeatPreviousEasy"`` or ``"popgym-RepeatPreviousEasy-v0"``) as a trial env.

    ``kwargs`` go to ``gymnasium.make``.
    """
    try:
        import popgym  # noqa: F401  (registers the popgym-* ids)
    except ImportError as err:
        raise ImportError('make_popgym_env needs POPGym: pip install popgym (or "lightning_memo[dev]").') from err
    env_id = name if name.startswith("popgym-") else f"popgym-{name}-v0"
    return wrap_gym_trial_env(gym.make(env_id, **kwargs), trial_len, device)


def make_minigrid_env(name: str, trial_len: int | None = None, device: Any = None, **kwargs: Any) -> TransformedEnv:
    """A MiniGrid task (e.g. ``"MiniGrid-MemoryS7-v0"``) as a trial env on its 7x7x3 image view.

    ``ImgObsWrapper`` drops the text mission (which TorchRL's wrapper cannot hold); ``kwargs`` go to
    ``gymnasium.make``.
    """
    try:
        import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
        from minigrid.wrappers import ImgObsWrapper
    except ImportError as err:
        raise ImportError('make_minigrid_env needs MiniGrid: pip install minigrid (or "lightning_memo[dev]").') from err
    return wrap_gym_trial_env(ImgObsWrapper(gym.make(name, **kwargs)), trial_len, device)

"""The rows of a :class:`~lightning_memo.envs.GymTrialEnv` built from a gymnasium id or factory.

``N`` gymnasium envs, one per row, each made from the id (``gymnasium.make``, importing POPGym or
MiniGrid for their ids) or by calling the factory. Observations of Discrete (one-hot), Box,
MultiBinary, MultiDiscrete, Tuple and Dict spaces are flattened with ``gymnasium.spaces.flatten``;
``observation_key`` first selects one entry of a Dict space (e.g. MiniGrid's ``"image"``, leaving out
its text mission). Actions: Discrete, or MultiDiscrete as one Discrete over all combinations.

The rows are stepped in a Python loop. Not a gymnasium vector env: episodic trials step only the rows
whose episode is still running, and a vector env steps every sub-env (with ``autoreset_mode=DISABLED``
it asserts that none has ended; the other modes restart them). ``SyncVectorEnv`` is the same Python
loop, so nothing is lost; for worker processes, pass a TorchRL ``ParallelEnv`` to ``GymTrialEnv``.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torchrl.envs import EnvBase

from lightning_memo.envs._common import check_int

PACKAGES = {"popgym-": "popgym", "MiniGrid-": "minigrid", "BabyAI-": "minigrid"}  # id prefix -> registering package
DEFAULT_KEYS = {"MiniGrid-": "image", "BabyAI-": "image"}  # id prefix -> observation_key (drops the text mission)


def is_gym_id(name: str) -> bool:
    """Whether ``name`` is a registered gymnasium id, importing POPGym or MiniGrid first for theirs."""
    for prefix, package in PACKAGES.items():
        if name.startswith(prefix) and name not in gym.registry:
            try:
                importlib.import_module(package)
            except ImportError as err:
                raise ImportError(f"{name} needs the {package} package: pip install {package}.") from err
    return name in gym.registry


def make_gym(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)``, or a ``ValueError`` with close matches for an unknown id."""
    if not is_gym_id(env_id):
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"{env_id!r} is not a registered gymnasium id{hint}. Register it with gymnasium.register, or "
            "import the package that does before building the env."
        )
    return gym.make(env_id, **kwargs)


def episode_limit(env: gym.Env) -> int | None:
    """The env's own episode length, where it says one (gymnasium spec, POPGym or MiniGrid attributes)."""
    if env.spec is not None and env.spec.max_episode_steps:
        return env.spec.max_episode_steps
    for attr in ("max_episode_length", "episode_length", "max_steps"):
        value = getattr(env.unwrapped, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def observation_flattener(space: gym.Space, key: str | None = None) -> tuple[Callable[[Any], np.ndarray], int]:
    """``(observation -> float32 [D], D)`` for ``space`` (its ``key`` entry when given)."""
    if key is not None:
        if not isinstance(space, gym.spaces.Dict) or key not in space.spaces:
            raise ValueError(f"observation_key={key!r} needs a Dict observation space with that key; got {space}.")
        space, select = space[key], lambda obs: obs[key]
    else:
        select = lambda obs: obs  # noqa: E731
    try:
        flat = gym.spaces.flatten_space(space)
    except (NotImplementedError, TypeError, ValueError):
        flat = None
    if not isinstance(flat, gym.spaces.Box):
        raise TypeError(
            f"cannot flatten the observation space {space} to a vector (Text, Sequence and Graph parts have no "
            "fixed size). Select a Dict entry with observation_key=, or wrap the env in a "
            "gymnasium.ObservationWrapper that returns a Box."
        )
    return lambda obs: gym.spaces.flatten(space, select(obs)).astype(np.float32), int(flat.shape[0])


def action_converter(space: gym.Space) -> tuple[Callable[[int], Any], int]:
    """``(index -> env action, number of actions)`` for a Discrete or MultiDiscrete action space."""
    if isinstance(space, gym.spaces.Discrete):
        return lambda a: a + int(space.start), int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = space.nvec.ravel()
        return lambda a: (np.array(np.unravel_index(a, nvec)) + space.start.ravel()).reshape(space.shape), int(nvec.prod())
    raise TypeError(
        f"trial envs support Discrete and MultiDiscrete action spaces; got {space}. Continuous (Box) and other "
        "actions are not supported: discretize them with a gymnasium.ActionWrapper."
    )


class GymRows:
    """``num_envs`` gymnasium envs from ``source`` (an id or a factory, called once per row with ``make_kwargs``).

    ``reset``, ``restart`` and ``step`` take the row indices ``rows`` (int64 ``[R]``) and return CPU
    tensors of those rows: observations float32 ``[R, dim]``; ``step`` also rewards ``[R]`` and the
    episode-end and success flags ``[R]`` (``info["is_success"]`` or ``info["success"]`` at an end).
    """

    def __init__(
        self, source: str | Callable[..., gym.Env], num_envs: int, observation_key: str | None, make_kwargs: dict
    ):
        if observation_key is None and isinstance(source, str):
            observation_key = next((k for p, k in DEFAULT_KEYS.items() if source.startswith(p)), None)
        self.envs = [_make_one(source, make_kwargs) for _ in range(check_int("num_envs", num_envs))]
        self.num_envs = num_envs
        first = self.envs[0]
        self._flatten, self.dim = observation_flattener(first.observation_space, observation_key)
        self._to_env, self.num_actions = action_converter(first.action_space)
        self.episode_limit, self.name = episode_limit(first), str(first)

    def reset(self, rows: Tensor, seeds: list[int]) -> Tensor:
        """Start the episodes of ``rows``, row ``rows[j]`` reset with ``seed=seeds[j]``."""
        return self._stack([self.envs[i].reset(seed=s)[0] for i, s in zip(rows.tolist(), seeds)])

    def restart(self, rows: Tensor) -> Tensor:
        """New episodes for ``rows``, continuing each env's random stream."""
        return self._stack([self.envs[i].reset()[0] for i in rows.tolist()])

    def step(self, rows: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Step ``rows`` with ``actions`` ``[R]``."""
        observations, rewards, ends, successes = [], [], [], []
        for i, a in zip(rows.tolist(), actions.tolist()):
            obs, reward, terminated, truncated, info = self.envs[i].step(self._to_env(a))
            end = bool(terminated or truncated)
            observations.append(obs)
            rewards.append(float(reward))
            ends.append(end)
            successes.append(end and bool(info.get("is_success", info.get("success", False))))
        return self._stack(observations), torch.tensor(rewards), torch.tensor(ends), torch.tensor(successes)

    def _stack(self, observations: list) -> Tensor:
        return torch.as_tensor(np.stack([self._flatten(obs) for obs in observations]))

    def close(self) -> None:
        """Close every row's env."""
        for env in self.envs:
            env.close()


def _make_one(source: str | Callable[..., gym.Env], kwargs: dict) -> gym.Env:
    """One gymnasium env from an id or a factory, with errors that name the fix."""
    if isinstance(source, str):
        return make_gym(source, **kwargs)
    if isinstance(source, gym.Env) or not callable(source):
        raise TypeError(
            f"GymTrialEnv needs a gymnasium id, a factory that returns a new env per row (e.g. lambda: "
            f"gymnasium.make(...)) or a TorchRL env; got {source!r}."
        )
    try:
        env = source(**kwargs)
    except Exception as err:
        raise RuntimeError(
            f"the env factory {source!r} raised {type(err).__name__}: {err}. Fix the factory (it is called once "
            "per row, with the extra keyword arguments), or pass a gymnasium id."
        ) from err
    if isinstance(env, EnvBase):
        raise TypeError(
            "the env factory returned a TorchRL env: pass the TorchRL env itself, SerialEnv(N, factory) or "
            "ParallelEnv(N, factory) for N rows (a factory is for gymnasium envs)."
        )
    if not isinstance(env, gym.Env):
        raise TypeError(f"the env factory returned a {type(env).__name__}, not a gymnasium.Env.")
    return env

"""Any gymnasium task as a batched trial env: ``N`` copies, flat observations, the flags the trainers read.

Two kinds of trial (``mode``):

* ``"episodic"`` (default; standard POMDP tasks): exactly one episode per trial. A row whose episode
  ended is masked: it is no longer stepped (its action is ignored, its reward is 0, its observation
  stays the last one) and its ``active`` flag is false; the trial ends when every row has ended, or
  after ``trial_len`` steps (a cap).
* ``"meta"``: a budget of ``trial_len`` steps; an episode that ends (terminated or truncated) restarts
  in the same step, which returns the new episode's first observation with ``episode_start`` (as
  Dark-Key-To-Door's ``"memo"`` version).

Outputs: ``observation`` float32 ``[N, D]``, ``active`` bool ``[N, 1]`` (the observation belongs to a
running episode, so the action taken on it is stepped: the loss mask), and the flags of
:class:`~lightning_memo.envs._common.TrialEnv`; ``success`` is ``info["is_success"]`` (or
``info["success"]``) at an episode end, false where the env reports neither.

Observations of Discrete (one-hot), Box, MultiBinary, MultiDiscrete, Tuple and Dict spaces are
flattened with ``gymnasium.spaces.flatten``; ``observation_key`` first selects one entry of a Dict space
(e.g. MiniGrid's ``"image"``, leaving out its text mission). Actions: Discrete, or MultiDiscrete as one
Discrete over all combinations.

Seeding as the built-in tasks: row ``i`` owns a numpy Generator seeded ``seed + i`` and draws from it
the seed of each trial's first ``reset``; restarts within a trial continue the env's own stream.

The rows are stepped in a Python loop, as gymnasium's ``SyncVectorEnv`` would; its autoreset would
have to be undone for the episodic mask, so it is not used.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Categorical, Unbounded
from torchrl.envs import EnvBase

from lightning_memo.envs._common import TrialEnv, check_choice, check_int

MODES = ("episodic", "meta")
EPISODIC_CAP = 1000  # steps of an episodic trial when neither the env nor the caller states a length
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


class GymTrialEnv(TrialEnv):
    """``num_envs`` copies of a gymnasium task as one batched trial env (see the module docstring).

    Args:
        env: a gymnasium id (``"CartPole-v1"``, ``"popgym-RepeatPreviousEasy-v0"``, ...) or a factory
            returning a ``gymnasium.Env``, called once per row.
        trial_len: the step budget (``"meta"``, required) or cap (``"episodic"``; default the env's own
            episode limit, else ``EPISODIC_CAP`` with a warning).
        mode: ``"episodic"`` or ``"meta"``.
        observation_key: the Dict entry to use as the observation (``"image"`` for MiniGrid ids).
        make_kwargs: keyword arguments of ``gymnasium.make`` (or of the factory).
    """

    def __init__(
        self,
        env: str | Callable[..., gym.Env],
        num_envs: int = 1,
        trial_len: int | None = None,
        mode: str = "episodic",
        observation_key: str | None = None,
        device: Any = None,
        seed: int | None = None,
        **make_kwargs: Any,
    ):
        mode = check_choice("mode", mode, MODES)
        if observation_key is None and isinstance(env, str):
            observation_key = next((k for p, k in DEFAULT_KEYS.items() if env.startswith(p)), None)
        envs = [_make_one(env, make_kwargs) for _ in range(check_int("num_envs", num_envs))]
        trial_len = _trial_len(envs[0], trial_len, mode)
        self._flatten, dim = observation_flattener(envs[0].observation_space, observation_key)
        self._to_env, self.num_actions = action_converter(envs[0].action_space)
        super().__init__(num_envs, trial_len, device, seed)
        self.mode, self.envs = mode, envs
        n = self.num_envs
        self._make_specs(
            {"observation": Unbounded((n, dim), dtype=torch.float32, device=self.device)},
            active=Categorical(2, shape=(n, 1), dtype=torch.bool, device=self.device),
        )
        self._obs = np.zeros((n, dim), np.float32)
        self._active = np.zeros(n, bool)
        self._ep_index = np.zeros(n, np.int64)
        self._trial_t = np.zeros(n, np.int64)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        for i in self._reset_rows(tensordict).tolist():
            obs, _ = self.envs[i].reset(seed=int(self.rngs[i].integers(2**31)))
            self._obs[i] = self._flatten(obs)
            self._active[i], self._ep_index[i], self._trial_t[i] = True, 0, 0
        return self._reset_output(self._observe(), self._tensor(self._ep_index), active=self._tensor(self._active))

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = self._action(tensordict).tolist()
        n = self.num_envs
        reward = np.zeros(n, np.float32)
        start, end, success = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        for i in np.flatnonzero(self._active).tolist():
            obs, reward[i], terminated, truncated, info = self.envs[i].step(self._to_env(actions[i]))
            end[i] = terminated or truncated
            success[i] = end[i] and bool(info.get("is_success", info.get("success", False)))
            if end[i] and self.mode == "meta":
                obs, _ = self.envs[i].reset()
                start[i], self._ep_index[i] = True, self._ep_index[i] + 1
            elif end[i]:
                self._active[i] = False
            self._obs[i] = self._flatten(obs)
        self._trial_t += 1
        done = self._trial_t >= self.trial_len
        if self.mode == "episodic" and not self._active.any():
            done[:] = True
        t = self._tensor
        return self._output(
            self._observe(), episode_start=t(start), episode_index=t(self._ep_index), success=t(success),
            episode_end=t(end), done=t(done), active=t(self._active), reward=t(reward),
        )

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x.copy(), device=self.device)

    def _observe(self) -> dict[str, torch.Tensor]:
        return {"observation": self._tensor(self._obs)}

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close every row's gymnasium env, then this one."""
        for env in getattr(self, "envs", []):
            env.close()
        super().close(raise_if_closed=raise_if_closed)


def _make_one(source: str | Callable[..., gym.Env], kwargs: dict) -> gym.Env:
    """One gymnasium env from an id or a factory, with errors that name the fix."""
    if isinstance(source, str):
        return make_gym(source, **kwargs)
    if isinstance(source, EnvBase):
        raise TypeError(
            "GymTrialEnv takes a gymnasium id or a factory of gymnasium envs, not a TorchRL env; pass the id "
            "(or lambda: gymnasium.make(...)) the TorchRL env wraps."
        )
    if isinstance(source, gym.Env) or not callable(source):
        raise TypeError(
            f"GymTrialEnv needs a gymnasium id or a factory that returns a new env per row (e.g. lambda: "
            f"gymnasium.make(...)); got {source!r}."
        )
    try:
        env = source(**kwargs)
    except Exception as err:
        raise RuntimeError(
            f"the env factory {source!r} raised {type(err).__name__}: {err}. Fix the factory (it is called once "
            "per row, with the extra keyword arguments), or pass a gymnasium id."
        ) from err
    if not isinstance(env, gym.Env):
        raise TypeError(f"the env factory returned a {type(env).__name__}, not a gymnasium.Env.")
    return env


def _trial_len(env: gym.Env, trial_len: int | None, mode: str) -> int:
    """The trial's step budget (meta) or cap (episodic)."""
    if trial_len is not None:
        return trial_len
    if mode == "meta":
        raise ValueError(f"mode='meta' needs trial_len= (the step budget over which episodes of {env} restart).")
    limit = episode_limit(env)
    if limit is None:
        warnings.warn(
            f"{env} states no episode limit: episodic trials are capped at {EPISODIC_CAP} steps. Pass trial_len= "
            "to set the cap.",
            stacklevel=3,
        )
        return EPISODIC_CAP
    return limit

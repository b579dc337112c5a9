"""What every task shares: argument checks, per-row seeding, the trial flags and specs, the gymnasium face.

A task is written once, as a :class:`TrialEnv` (``N`` trials as tensors); its gymnasium class is a
:class:`TrialGym` over that env with one row.
"""

from __future__ import annotations

import numbers
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Bounded, Categorical, Composite, TensorSpec, Unbounded
from torchrl.envs import EnvBase, TransformedEnv

FLAG_KEYS = ("episode_start", "episode_index", "episode_end", "success")


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum``, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_float(name: str, value: object, minimum: float | None = None) -> float:
    """``value`` as a finite float (``>= minimum`` when given), else a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
    return float(value)


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}.")
    return value


def gym_action(action: object, num_actions: int) -> int:
    """A gymnasium ``Discrete(num_actions)`` action (int or 0-d/1-element array) as an int."""
    arr = np.asarray(action)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"action must be one integer in [0, {num_actions}), got {action!r} "
            f"(shape {arr.shape}, dtype {arr.dtype})."
        )
    a = int(arr.reshape(()))
    if not 0 <= a < num_actions:
        raise ValueError(f"action must be in [0, {num_actions}), got {a}.")
    return a


def env_attribute(env: EnvBase, name: str, default: Any = None) -> Any:
    """``env.<name>`` from ``env`` or the env it wraps (through ``TransformedEnv.base_env``).

    Looks only at attributes the env object or its class defines: batched envs (``SerialEnv``) forward
    unknown names to their workers, which recurses before the env has started.
    """
    while env is not None:
        if name in getattr(env, "__dict__", {}) or hasattr(type(env), name):
            return getattr(env, name)
        env = env.base_env if isinstance(env, TransformedEnv) else None
    return default


def env_rngs(seed: int | None, num_envs: int) -> list[np.random.Generator]:
    """One numpy Generator per env; env ``i`` gets ``seed + i``, as a gymnasium env reset with that seed.

    ``seed=None`` draws fresh OS entropy (no global RNG is touched).
    """
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    seed = check_int("seed", seed, minimum=0)
    return [np.random.default_rng(seed + i) for i in range(num_envs)]


class TrialEnv(EnvBase):
    """``num_envs`` trials of a task as one TorchRL env (``batch_size=[N]``), with the flags every task emits.

    Besides the task's observations (``observation_keys``), reset and step outputs hold
    ``episode_start`` (the observation is the first of an inner episode), ``episode_index`` (int64, its
    ordinal in the trial), ``episode_end`` and ``success`` (the step ended an inner episode / did so
    successfully) and ``done = terminated = truncated`` (the trial end), all ``[N, 1]``; a step adds
    ``reward`` float32 ``[N, 1]``. Action: ``Categorical(num_actions)`` integers ``[N]``. Row ``i``
    draws its trials from ``rngs[i]``, a numpy Generator seeded ``seed + i``.

    A task sets ``num_actions`` and ``observation_keys``, calls :meth:`_make_specs`, and writes
    ``_reset`` / ``_step`` with :meth:`_reset_rows`, :meth:`_action` and :meth:`_output`.
    """

    num_actions: int
    observation_keys: tuple[str, ...] = ("observation",)

    def __init__(self, num_envs: int, trial_len: int, device: Any = None, seed: int | None = None):
        num_envs = check_int("num_envs", num_envs)
        super().__init__(device=device, batch_size=[num_envs])
        self.num_envs = num_envs
        self.trial_len = check_int("trial_len", trial_len)
        self.rngs = env_rngs(seed, num_envs)

    def _box(self, low: float, high: float, dim: int) -> Bounded:
        """A float32 ``[N, dim]`` spec with bounds ``[low, high]``."""
        return Bounded(low, high, shape=(*self.batch_size, dim), dtype=torch.float32, device=self.device)

    def _make_specs(self, observations: dict[str, TensorSpec], **extra: TensorSpec) -> None:
        """Specs of the task's ``observations`` and ``extra`` outputs (``[N, ...]``), the flags and the action."""
        shape, dev = self.batch_size, self.device
        flag = lambda: Categorical(2, shape=(*shape, 1), dtype=torch.bool, device=dev)  # noqa: E731
        self.observation_spec = Composite(
            **observations,
            episode_start=flag(),
            episode_index=Unbounded((*shape, 1), dtype=torch.int64, device=dev),
            success=flag(),
            episode_end=flag(),
            **extra,
            shape=shape,
            device=dev,
        )
        self.action_spec = Categorical(self.num_actions, shape=shape, dtype=torch.int64, device=dev)
        self.reward_spec = Unbounded((*shape, 1), dtype=torch.float32, device=dev)
        self.done_spec = Composite(done=flag(), terminated=flag(), truncated=flag(), shape=shape, device=dev)

    def _set_seed(self, seed: int | None) -> None:
        self.rngs = env_rngs(seed, self.num_envs)

    def _reset_rows(self, tensordict: TensorDictBase | None) -> Tensor:
        """Indices (int64, CPU) of the rows to reset: those of the ``_reset`` mask, else all."""
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None:
            return torch.arange(self.num_envs)
        return mask.reshape(-1).cpu().nonzero().squeeze(-1)

    def _action(self, tensordict: TensorDictBase) -> Tensor:
        """The step's integer actions ``[N]`` (``[N, 1]`` accepted), checked for shape and range."""
        n, num_actions = self.num_envs, self.num_actions
        action = tensordict.get("action", None)
        if action is None:
            raise KeyError('the input tensordict has no "action" entry.')
        if action.dtype.is_floating_point or action.dtype == torch.bool:
            raise ValueError(
                f"actions must be integer indices of shape [{n}] (Categorical spec, not one-hot); "
                f"got dtype {action.dtype} and shape {tuple(action.shape)}."
            )
        if action.shape == (n, 1):
            action = action.squeeze(-1)
        if action.shape != (n,):
            raise ValueError(f"actions must have shape [{n}] (one integer per env), got {tuple(action.shape)}.")
        if bool(((action < 0) | (action >= num_actions)).any()):
            raise ValueError(f"actions must be in [0, {num_actions}), got {action.tolist()}.")
        return action.long()

    def _output(
        self,
        observations: dict[str, Tensor],
        *,
        episode_start: Tensor,
        episode_index: Tensor,
        success: Tensor,
        episode_end: Tensor,
        done: Tensor,
        **extra: Tensor,
    ) -> TensorDictBase:
        """The ``observations`` plus the flags and ``extra`` entries, each given as ``[N]`` and stored ``[N, 1]``."""
        entries = dict(observations)
        flags = dict(episode_start=episode_start, episode_index=episode_index, success=success, episode_end=episode_end)
        for key, value in {**flags, **extra}.items():
            entries[key] = value.reshape(self.num_envs, 1).clone()  # a copy: the state changes in place
        done = done.reshape(self.num_envs, 1)
        entries.update(done=done, terminated=done.clone(), truncated=done.clone())
        return TensorDict(entries, batch_size=self.batch_size, device=self.device)

    def _reset_output(self, observations: dict[str, Tensor], episode_index: Tensor, **extra: Tensor) -> TensorDictBase:
        """:meth:`_output` of a trial start: ``episode_start`` everywhere, no ends, no success."""
        false = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return self._output(
            observations, episode_start=~false, episode_index=episode_index, success=false, episode_end=false,
            done=false, **extra,
        )


def _space(spec: TensorSpec) -> gym.spaces.Box:
    """The gymnasium ``Box`` of one row of a ``[N, D]`` spec."""
    if isinstance(spec, Bounded):
        low, high = spec.space.low[0].cpu().numpy(), spec.space.high[0].cpu().numpy()
    else:
        low, high = np.full(spec.shape[1:], -np.inf), np.full(spec.shape[1:], np.inf)
    return gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)


class TrialGym(gym.Env):
    """The gymnasium face of a :class:`TrialEnv` with one row: one trial per ``reset``, numpy in and out.

    ``reset(seed=s)`` seeds ``np_random``, and the row draws its trials from it, so row ``i`` of the
    batched env built with ``seed=s`` plays the trials of this env reset with ``seed=s + i``.
    Observation: a ``Box``, or a ``Dict`` of them when the task has several observation keys; action
    ``Discrete(num_actions)``; ``terminated`` and ``truncated`` are true at the trial end; ``info`` holds
    the flags named in ``info_keys`` as Python scalars.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}
    info_keys: tuple[str, ...] = FLAG_KEYS

    def __init__(self, batched: TrialEnv, render_mode: str | None = None):
        if batched.num_envs != 1:
            raise ValueError(f"the gymnasium face needs a batched env with num_envs=1, got {batched.num_envs}.")
        self.batched = batched
        self.render_mode = check_choice("render_mode", render_mode, (None, "rgb_array"))
        spaces = {key: _space(batched.observation_spec[key]) for key in batched.observation_keys}
        self.observation_space = spaces["observation"] if list(spaces) == ["observation"] else gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Discrete(batched.num_actions)
        self._td: TensorDictBase | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.batched.rngs = [self.np_random]
        self._td = self.batched.reset(self._reset_input(options or {}))
        return self._observation(), self._info()

    def _reset_input(self, options: dict) -> TensorDictBase | None:
        """The batched reset input for ``options`` (a task accepting options overrides this)."""
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options, got {sorted(options)}.")
        return None

    def step(self, action: Any):
        if self._td is None or bool(self._td["done"]):
            raise RuntimeError("the trial is over (or never started): call reset() first.")
        a = gym_action(action, self.batched.num_actions)
        self._td["action"] = torch.tensor([a], device=self.batched.device)
        self._td = self.batched.step(self._td)["next"]
        over = bool(self._td["done"])
        return self._observation(), float(self._td["reward"]), over, over, self._info()

    def _observation(self) -> np.ndarray | dict[str, np.ndarray]:
        values = {key: self._td[key][0].cpu().numpy() for key in self.batched.observation_keys}
        return values["observation"] if isinstance(self.observation_space, gym.spaces.Box) else values

    def _info(self) -> dict[str, Any]:
        return {key: self._td[key].item() for key in self.info_keys}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None or self._td is None:
            return None
        return self.batched.render_frame(0)

"""Helpers shared by the environments: argument and action checks (clear errors naming the fix), seeding."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor


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


def batched_action(action: Tensor | None, num_envs: int, num_actions: int) -> Tensor:
    """Integer actions ``[N]`` (or ``[N, 1]``) checked for shape and range; returns ``[N]`` long."""
    if action is None:
        raise KeyError('the input tensordict has no "action" entry.')
    if action.dtype.is_floating_point or action.dtype == torch.bool:
        raise ValueError(
            f"actions must be integer indices of shape [{num_envs}] (Categorical spec, not one-hot); "
            f"got dtype {action.dtype} and shape {tuple(action.shape)}."
        )
    if action.shape == (num_envs, 1):
        action = action.squeeze(-1)
    if action.shape != (num_envs,):
        raise ValueError(
            f"actions must have shape [{num_envs}] (one integer per env), got {tuple(action.shape)}."
        )
    if bool(((action < 0) | (action >= num_actions)).any()):
        raise ValueError(f"actions must be in [0, {num_actions}), got {action.tolist()}.")
    return action.long()


def env_rngs(seed: int | None, num_envs: int) -> list[np.random.Generator]:
    """One numpy Generator per env; env ``i`` gets ``seed + i``, as a gymnasium env reset with that seed.

    ``seed=None`` draws fresh OS entropy (no global RNG is touched).
    """
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    seed = check_int("seed", seed, minimum=0)
    return [np.random.default_rng(seed + i) for i in range(num_envs)]

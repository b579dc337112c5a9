"""One table of the built-in tasks: :func:`make_env` for configs, and the gymnasium ids registered from it.

Any other registered gymnasium id goes through :class:`~lightning_memo.envs.gym_trial.GymTrialEnv`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass
from typing import Any

import gymnasium

from lightning_memo.envs._common import TrialEnv, TrialGym
from lightning_memo.envs.dark_key_to_door import DarkKeyToDoorEnv, DarkKeyToDoorGym
from lightning_memo.envs.gym_rows import is_gym_id
from lightning_memo.envs.gym_trial import GymTrialEnv
from lightning_memo.envs.habitat import HabitatObjNavEnv
from lightning_memo.envs.objnav_grid import ObjNavGridEnv, ObjNavGridGym

# make_env's own arguments: not task options
COMMON_ARGS = ("num_envs", "trial_len", "device", "seed")


@dataclass(frozen=True)
class EnvEntry:
    """A task: its batched env and, where it has one, its gymnasium face and id."""

    batched: type[TrialEnv]
    """The batched env class (``[N]`` trials as tensors), what training uses."""
    gym: type[TrialGym] | None = None
    """Its gymnasium class (one trial, numpy), if any."""
    gym_id: str | None = None
    """The gymnasium id registered for ``gym``, if any."""


ENVS: dict[str, EnvEntry] = {
    "dark_key_to_door": EnvEntry(DarkKeyToDoorEnv, DarkKeyToDoorGym, "lightning_memo/DarkKeyToDoor-v0"),
    "objnav_grid": EnvEntry(ObjNavGridEnv, ObjNavGridGym, "lightning_memo/ObjNavGrid-v0"),
    "objnav_habitat": EnvEntry(HabitatObjNavEnv),
}
ENV_NAMES = tuple(ENVS)
GYM_IDS = {e.gym_id: f"{e.gym.__module__}:{e.gym.__name__}" for e in ENVS.values() if e.gym_id}


def register_gym_ids() -> None:
    """Register the gymnasium ids of the table (options are ``gymnasium.make`` keyword arguments)."""
    for gym_id, entry_point in GYM_IDS.items():
        if gym_id not in gymnasium.registry:
            gymnasium.register(id=gym_id, entry_point=entry_point)


def env_options(cls: type) -> tuple[list[str], list[str]]:
    """``(options, required)``: the keyword arguments of ``cls`` besides :data:`COMMON_ARGS`.

    A ``**config`` catch-all stands for the fields of the class's ``config_cls`` dataclass.
    """
    options, required = [], []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:  # after self
        if p.kind == p.VAR_KEYWORD:
            options += [f.name for f in dataclasses.fields(cls.config_cls)]
        elif p.kind != p.VAR_POSITIONAL:
            options.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return [o for o in options if o not in COMMON_ARGS], [r for r in required if r not in COMMON_ARGS]


def make_env(
    name: str, *, num_envs: int, trial_len: int, device: Any = "cpu", seed: int = 0, **kwargs: Any
) -> TrialEnv:
    """The batched env of the task ``name`` (``batch_size=[num_envs]``, no trial-feature transforms).

    ``name`` is one of :data:`ENV_NAMES`, whose ``kwargs`` are the task's options (e.g. ``size``,
    ``episode_len`` for ``"dark_key_to_door"``), or any registered gymnasium id (``"CartPole-v1"``,
    ``"popgym-RepeatPreviousEasy-v0"``, ``"MiniGrid-MemoryS7-v0"``: POPGym and MiniGrid are imported on
    demand) as a :class:`GymTrialEnv`, whose ``kwargs`` are ``mode``, ``observation_key`` and the
    ``gymnasium.make`` arguments. Apply :func:`~lightning_memo.envs.transforms.make_trial_env` for the
    policy's trial features.

    Raises:
        ValueError: an unknown ``name`` (with close matches), or a bad option value.
        TypeError: an unknown or missing option (naming the valid ones).
        ImportError: ``"objnav_habitat"`` without habitat installed (with the install command).
    """
    if name not in ENVS:
        if is_gym_id(name):
            return GymTrialEnv(name, num_envs=num_envs, trial_len=trial_len, device=device, seed=seed, **kwargs)
        close = difflib.get_close_matches(name, [*ENV_NAMES, *gymnasium.registry], n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown env {name!r}{hint}; choose one of {list(ENV_NAMES)} or a registered gymnasium id."
        )
    cls = ENVS[name].batched
    options, required = env_options(cls)
    bad = sorted(set(kwargs) - set(options))
    if bad:
        raise TypeError(f"env {name!r} has no option {', '.join(bad)}; its options are {options}.")
    missing = [r for r in required if r not in kwargs]
    if missing:
        raise TypeError(f"env {name!r} needs the option {', '.join(missing)}; its options are {options}.")
    return cls(num_envs=num_envs, trial_len=trial_len, device=device, seed=seed, **kwargs)

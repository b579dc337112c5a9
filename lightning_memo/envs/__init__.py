"""Environments: Dark-Key-To-Door, ObjNavGrid (+ the habitat backend), any gymnasium or TorchRL task, trial features.

``make_env(name, num_envs=..., trial_len=...)`` builds a task by name from one table (``ENV_NAMES``),
which also registers the gymnasium ids ``lightning_memo/DarkKeyToDoor-v0`` and
``lightning_memo/ObjNavGrid-v0`` on import (their options are ``gymnasium.make`` keyword arguments);
any other registered gymnasium id becomes a :class:`GymTrialEnv`, which also adapts gymnasium factories
and TorchRL envs (``GymEnv``, ``SerialEnv``, ``ParallelEnv``).
"""

from lightning_memo.envs.dark_key_to_door import DarkKeyToDoorEnv, DarkKeyToDoorGym
from lightning_memo.envs.gym_trial import GymTrialEnv
from lightning_memo.envs.habitat import HabitatObjNavEnv
from lightning_memo.envs.objnav_grid import ObjNavGridConfig, ObjNavGridEnv, ObjNavGridGym
from lightning_memo.envs.registry import ENV_NAMES, GYM_IDS, make_env, register_gym_ids
from lightning_memo.envs.render import render_dktd, render_objnav, save_trial
from lightning_memo.envs.third_party import make_minigrid_env, make_popgym_env
from lightning_memo.envs.transforms import (
    TRIAL_FEATURE_KEYS,
    EpisodeStartAtReset,
    TrialFeatures,
    make_trial_env,
)

register_gym_ids()

__all__ = [
    "DarkKeyToDoorEnv",
    "DarkKeyToDoorGym",
    "ENV_NAMES",
    "EpisodeStartAtReset",
    "GYM_IDS",
    "GymTrialEnv",
    "HabitatObjNavEnv",
    "ObjNavGridConfig",
    "ObjNavGridEnv",
    "ObjNavGridGym",
    "TRIAL_FEATURE_KEYS",
    "TrialFeatures",
    "make_env",
    "make_minigrid_env",
    "make_popgym_env",
    "make_trial_env",
    "render_dktd",
    "render_objnav",
    "save_trial",
]

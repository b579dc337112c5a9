"""Environments: Dark-Key-To-Door, ObjNavGrid (+ the habitat backend), trial features, third-party tasks.

Importing this package registers the gymnasium ids ``lightning_memo/DarkKeyToDoor-v0`` and
``lightning_memo/ObjNavGrid-v0`` (their options are ``gymnasium.make`` keyword arguments).
"""

import gymnasium

from lightning_memo.envs.dark_key_to_door import DarkKeyToDoorEnv, DarkKeyToDoorGym
from lightning_memo.envs.habitat import HabitatObjNavEnv
from lightning_memo.envs.objnav_grid import ObjNavGridConfig, ObjNavGridEnv, ObjNavGridGym
from lightning_memo.envs.render import render_dktd, render_objnav, save_trial
from lightning_memo.envs.third_party import make_minigrid_env, make_popgym_env
from lightning_memo.envs.transforms import (
    TRIAL_FEATURE_KEYS,
    EpisodeStartAtReset,
    TrialFeatures,
    make_trial_env,
)

GYM_IDS = {
    "lightning_memo/DarkKeyToDoor-v0": "lightning_memo.envs.dark_key_to_door:DarkKeyToDoorGym",
    "lightning_memo/ObjNavGrid-v0": "lightning_memo.envs.objnav_grid:ObjNavGridGym",
}
for _id, _entry_point in GYM_IDS.items():
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry_point)

__all__ = [
    "DarkKeyToDoorEnv",
    "DarkKeyToDoorGym",
    "EpisodeStartAtReset",
    "GYM_IDS",
    "HabitatObjNavEnv",
    "ObjNavGridConfig",
    "ObjNavGridEnv",
    "ObjNavGridGym",
    "TRIAL_FEATURE_KEYS",
    "TrialFeatures",
    "make_minigrid_env",
    "make_popgym_env",
    "make_trial_env",
    "render_dktd",
    "render_objnav",
    "save_trial",
]

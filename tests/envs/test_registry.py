import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from lightning_memo.envs import ENV_NAMES, GYM_IDS, DarkKeyToDoorEnv, DarkKeyToDoorGym, make_env, make_trial_env
from lightning_memo.envs._common import TrialGym
from lightning_memo.envs.registry import ENVS

HAVE_HABITAT = all(importlib.util.find_spec(m) is not None for m in ("habitat", "habitat_sim"))


@pytest.mark.parametrize(
    "name, kwargs",
    [("dark_key_to_door", dict(size=5, episode_len=4)), ("objnav_grid", dict(size=9, num_categories=2))],
)
def test_make_env_builds_the_batched_task(name, kwargs):
    env = make_env(name, num_envs=3, trial_len=12, seed=4, **kwargs)
    assert isinstance(env, ENVS[name].batched) and env.batch_size == (3,) and env.trial_len == 12
    assert "prev_action" not in env.observation_spec.keys()  # no trial features: the caller adds them
    again = make_env(name, num_envs=3, trial_len=12, seed=4, **kwargs)
    for key in env.observation_keys:
        torch.testing.assert_close(env.reset()[key], again.reset()[key])  # same seed, same trials
    check_env_specs(make_trial_env(env))


def test_gymnasium_ids_come_from_the_same_table():
    assert ENV_NAMES == ("dark_key_to_door", "objnav_grid", "objnav_habitat")
    table = {e.gym_id: e.gym for e in ENVS.values() if e.gym_id}
    assert set(GYM_IDS) == set(table) == {"lightning_memo/DarkKeyToDoor-v0", "lightning_memo/ObjNavGrid-v0"}
    for gym_id, cls in table.items():
        assert gym_id in gym.registry and type(gym.make(gym_id, trial_len=10).unwrapped) is cls


def test_unknown_name_lists_names_and_close_matches():
    with pytest.raises(ValueError, match="dark_key_to_door") as err:
        make_env("dark_key_door", num_envs=1, trial_len=5)
    assert "did you mean 'dark_key_to_door'" in str(err.value) and "objnav_habitat" in str(err.value)


def test_bad_options_name_the_key_and_the_valid_ones():
    with pytest.raises(TypeError, match="sise") as err:
        make_env("dark_key_to_door", num_envs=1, trial_len=5, sise=5)
    assert "'size'" in str(err.value) and "'episode_len'" in str(err.value)
    with pytest.raises(TypeError, match="view_depth"):  # objnav options are the config fields
        make_env("objnav_grid", num_envs=1, trial_len=5, depth=3)
    with pytest.raises(ValueError, match="size"):  # a known option with a bad value
        make_env("dark_key_to_door", num_envs=1, trial_len=5, size=1)


@pytest.mark.skipif(HAVE_HABITAT, reason="habitat is installed here")
def test_habitat_without_habitat_names_the_install():
    with pytest.raises(ImportError, match='pip install "lightning_memo\\[habitat\\]"'):
        make_env("objnav_habitat", num_envs=1, trial_len=5, config="objectnav.yaml")
    with pytest.raises(TypeError, match="config"):
        make_env("objnav_habitat", num_envs=1, trial_len=5)


def test_batched_reset_with_fixed_tasks_and_gym_options():
    env = DarkKeyToDoorEnv(num_envs=2, size=5, seed=0)
    task = torch.tensor([[[1, 1], [3, 1], [1, 3]], [[0, 0], [4, 4], [2, 2]]])
    td = env.reset(TensorDict(task=task, batch_size=[2]))
    torch.testing.assert_close(env._task, task)
    np.testing.assert_allclose(td["observation"].numpy(), [[0.2, 0.2, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="task"):
        env.reset(TensorDict(task=task + 5, batch_size=[2]))
    gym_env = DarkKeyToDoorGym(size=5)
    with pytest.raises(ValueError, match="task"):
        gym_env.reset(seed=0, options={"layout": task[0].tolist()})
    with pytest.raises(ValueError, match="num_envs=1"):
        TrialGym(DarkKeyToDoorEnv(num_envs=2))

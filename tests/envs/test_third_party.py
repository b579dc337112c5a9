import gymnasium as gym
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from lightning_memo.envs import TRIAL_FEATURE_KEYS, make_minigrid_env, make_popgym_env
from lightning_memo.envs.third_party import wrap_gym_trial_env



def check_trial_rollout(env, obs_dim, num_actions, steps=None):
    check_env_specs(env)
    data = env.rollout(1000)[0]  # the one row; stops at the env's own end: one trial
    assert data["next", "done"][-1].item() and not data["next", "done"][:-1].any()
    assert steps is None or data.shape == (steps,)
    assert data["observation"].shape[1:] == (obs_dim,) and data["observation"].dtype == torch.float32
    for key in (*TRIAL_FEATURE_KEYS, "is_init", "episode_start"):
        assert key in data.keys() and ("next", key) in data.keys(True)
    assert data["is_init"][0].item() and not data["is_init"][1:].any()
    assert data["episode_start"][0].item() and not data["next", "episode_start"].any()
    assert (data["prev_action"][0] == 1).all() and data["prev_action"].shape[-1] == num_actions
    one_hot = torch.nn.functional.one_hot(data["action"], num_actions).float()
    torch.testing.assert_close(data["next", "prev_action"], one_hot)
    torch.testing.assert_close(data["next", "prev_reward"], data["next", "reward"])
    return data


def test_popgym_repeat_previous():
    pytest.importorskip("popgym")
    env = make_popgym_env("RepeatPreviousEasy")
    data = check_trial_rollout(env, obs_dim=4, num_actions=4, steps=51)
    assert data["next", "trial_time"][-1].item() == pytest.approx(1.0)  # trial_len = its 51 steps
    assert ((data["observation"] == 0) | (data["observation"] == 1)).all()  # one-hot cards


def test_popgym_multidiscrete_actions_are_flattened():
    pytest.importorskip("popgym")
    env = make_popgym_env("popgym-BattleshipEasy-v0")
    assert env.action_spec.space.n == 64
    data = check_trial_rollout(env, obs_dim=2, num_actions=64)
    assert data.shape[0] <= 64  # ends early if every ship is hit


def test_minigrid_memory():
    pytest.importorskip("minigrid")
    env = make_minigrid_env("MiniGrid-MemoryS7-v0")
    env.set_seed(0)
    data = check_trial_rollout(env, obs_dim=7 * 7 * 3, num_actions=7)
    assert data.shape[0] <= 245 and data["observation"].max() > 1  # raw MiniGrid codes, not one-hot


def test_an_env_without_an_episode_limit_needs_trial_len():
    pytest.importorskip("popgym")
    with pytest.raises(ValueError, match="trial_len"):
        wrap_gym_trial_env(gym.make("popgym-HigherLowerEasy-v0"))
    env = wrap_gym_trial_env(gym.make("popgym-HigherLowerEasy-v0"), trial_len=52)
    assert env.reset()["trial_time"].item() == 0

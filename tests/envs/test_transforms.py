import gymnasium as gym
import pytest
import torch
from torchrl.envs import GymWrapper, InitTracker, TransformedEnv, Compose
from torchrl.envs.utils import check_env_specs

from lightning_memo.envs import (
    TRIAL_FEATURE_KEYS,
    DarkKeyToDoorEnv,
    ObjNavGridEnv,
    TrialFeatures,
    make_trial_env,
)


def rollout(env, steps, actions):
    """``steps`` of ``step_and_maybe_reset``; returns the stacked step outputs and the reset output."""
    td = env.reset()
    first, outs = td.clone(), []
    for t in range(steps):
        td["action"] = actions[t]
        out, td = env.step_and_maybe_reset(td)
        outs.append(out)
    return first, torch.stack(outs)


def test_trial_features_over_two_trials():
    base = DarkKeyToDoorEnv(num_envs=3, size=3, episode_len=3, trial_len=7, seed=0)
    env = make_trial_env(base)
    assert TRIAL_FEATURE_KEYS == ("prev_action", "prev_reward", "trial_time", "reset_flag")
    actions = torch.randint(0, 5, (14, 3), generator=torch.Generator().manual_seed(0))
    first, data = rollout(env, 14, actions)
    assert (first["prev_action"] == 1).all() and (first["prev_reward"] == 0).all()
    assert (first["trial_time"] == 0).all() and (first["reset_flag"] == 1).all() and first["is_init"].all()
    nxt = data["next"]
    torch.testing.assert_close(nxt["prev_action"], torch.nn.functional.one_hot(actions, 5).float())
    torch.testing.assert_close(nxt["prev_reward"], nxt["reward"])
    torch.testing.assert_close(nxt["reset_flag"], nxt["episode_start"].float())
    steps = torch.arange(1, 15).remainder(7).where(torch.arange(1, 15).remainder(7) > 0, 7)
    torch.testing.assert_close(nxt["trial_time"][:, 0, 0], steps / 7)
    assert nxt["episode_start"].any() and not nxt["is_init"].any()
    # the root of step t is the observation before the action: is_init only at t = 0 and after the trial end
    assert data["is_init"][:, :, 0].all(-1).tolist() == [t in (0, 7) for t in range(14)]
    assert (data["prev_action"][7] == 1).all() and (data["trial_time"][7] == 0).all()
    assert not data["is_init"][1:7].any() and not data["is_init"][8:].any()


def test_env_without_episode_start_flags_the_trial_start_only():
    base = GymWrapper(gym.make("CartPole-v1"), categorical_action_encoding=True)
    env = TransformedEnv(base, Compose(InitTracker(), TrialFeatures(num_actions=2, trial_len=500)))
    check_env_specs(env)
    data = env.rollout(5, break_when_any_done=False)
    assert data["reset_flag"][0].item() == 1 and (data["next", "reset_flag"] == 0).all()
    torch.testing.assert_close(data["next", "trial_time"].squeeze(-1), torch.arange(1, 6) / 500)


def test_one_hot_actions_are_accepted():
    base = GymWrapper(gym.make("CartPole-v1"))  # one-hot actions
    env = TransformedEnv(base, TrialFeatures(num_actions=2, trial_len=10))
    data = env.rollout(3)
    torch.testing.assert_close(data["next", "prev_action"], data["action"].float())


def test_partial_reset_keeps_the_other_envs_features():
    env = make_trial_env(DarkKeyToDoorEnv(num_envs=2, size=4, trial_len=50, seed=1))
    td = env.reset()
    for _ in range(4):
        td["action"] = torch.tensor([1, 3])
        td = env.step(td)["next"]
    kept = td.select(*TRIAL_FEATURE_KEYS)[1].clone()
    td["_reset"] = torch.tensor([[True], [False]])
    out = env.reset(td)
    assert out["is_init"].squeeze(-1).tolist() == [True, False]
    assert (out["prev_action"][0] == 1).all() and out["trial_time"][0].item() == 0
    assert (out.select(*TRIAL_FEATURE_KEYS)[1] == kept).all()


@pytest.mark.parametrize("base", [
    lambda: DarkKeyToDoorEnv(num_envs=2, size=4, episode_len=3, trial_len=6, seed=0),
    lambda: ObjNavGridEnv(num_envs=2, size=9, num_categories=2, trial_len=6, seed=0),
])
def test_specs_of_trial_envs(base):
    env = make_trial_env(base())
    check_env_specs(env)
    td = env.reset()
    n = env.action_spec.space.n
    assert td["prev_action"].shape == (2, n) and td["trial_time"].shape == (2, 1)


def test_make_trial_env_needs_a_trial_len_and_discrete_actions():
    base = GymWrapper(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="trial_len"):
        make_trial_env(base)
    with pytest.raises(TypeError, match="discrete"):
        make_trial_env(GymWrapper(gym.make("Pendulum-v1")), trial_len=10)
    with pytest.raises(ValueError, match="num_actions"):
        TrialFeatures(num_actions=0, trial_len=5)

"""GymTrialEnv over TorchRL envs: GymEnv (one row), SerialEnv/ParallelEnv (a row per worker)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.data import Categorical, MultiCategorical, NonTensor
from torchrl.envs import GymEnv, GymWrapper, SerialEnv, StepCounter, TransformedEnv
from torchrl.envs.libs.gym import default_info_dict_reader
from torchrl.envs.utils import check_env_specs

from lightning_memo.envs import DarkKeyToDoorEnv, GymTrialEnv, make_trial_env
from lightning_memo.envs.torchrl_rows import leaf_flattener
from tests.envs.test_gym_trial import SPACES, Countdown, run


class Strict(Countdown):
    """A Countdown that refuses to be stepped after its episode ended."""

    def reset(self, *, seed=None, options=None):
        self.over = False
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.over:
            raise RuntimeError("stepped after the episode ended")
        obs, reward, terminated, truncated, info = super().step(action)
        self.over = terminated
        return obs, reward, terminated, truncated, {"is_success": np.array(info["is_success"])}  # TorchRL reads arrays


def strict_worker():
    env = GymWrapper(Strict("box"))
    env.set_info_dict_reader(default_info_dict_reader(["is_success"]))
    return env


def serial(n=4, make=strict_worker):
    return SerialEnv(n, make)


def test_one_gym_env_is_one_row_with_its_episode_limit():
    env = GymTrialEnv(GymEnv("CartPole-v1"), seed=0)
    assert (env.num_envs, env.trial_len, env.num_actions) == (1, 500, 2)  # CartPole-v1's limit
    check_env_specs(make_trial_env(env))
    data = env.rollout(600)  # stops at the trial end: the one episode's end
    t = data.shape[1]
    assert t < 500 and data["next", "episode_end"][0, -1].all() and data["next", "done"][0, -1].all()
    assert data["active"].all() and not data["next", "active"][0, -1].any()
    assert (data["next", "reward"] == 1).all()
    # OneHot (TorchRL's default) and Categorical action specs take the same integer actions
    one_hot = GymTrialEnv(GymEnv("CartPole-v1"), seed=0)
    categorical = GymTrialEnv(GymEnv("CartPole-v1", categorical_action_encoding=True), seed=0)
    torch.testing.assert_close(run(one_hot, 8, action=0)[1]["observation"], run(categorical, 8, action=0)[1]["observation"])


def test_serial_env_episodic_rows_are_masked_not_stepped():
    env = GymTrialEnv(serial(), trial_len=20, seed=2)
    check_env_specs(make_trial_env(env))
    first = env.reset()
    lengths = first["observation"][:, 0].long().tolist()  # Countdown shows its episode length
    assert len(set(lengths)) > 1
    _, data = run(env, max(lengths), td=first)  # Strict raises if a row were stepped after its end
    for i, length in enumerate(lengths):
        rows = data[:, i]
        assert rows["episode_end"][..., 0].tolist() == [t == length - 1 for t in range(max(lengths))]
        assert rows["active"][..., 0].tolist() == [t < length - 1 for t in range(max(lengths))]
        assert rows["reward"][length:].eq(0).all() and rows["reward"][:length].eq(1).all()
        assert (rows["observation"][length - 1 :] == rows["observation"][length - 1]).all()  # frozen
    assert data["success"].sum() == 4  # the info reader's is_success, at each end
    assert data["done"][-1].all() and not data["done"][:-1].any()


def test_serial_env_meta_mode_restarts_rows_in_the_same_step():
    env = GymTrialEnv(serial(3), trial_len=15, mode="meta", seed=1)
    first, data = run(env, 15)
    assert first["episode_start"].all() and (first["episode_index"] == 0).all()
    end, start = data["episode_end"][..., 0], data["episode_start"][..., 0]
    assert end.any() and torch.equal(end, start)
    assert torch.equal(data["episode_index"][..., 0], torch.cumsum(end.long(), 0))
    assert (data["observation"][..., 1][end] == 0).all()  # the new episode's first observation (t = 0)
    assert data["active"].all() and (data["reward"] == 1).all()
    assert data["done"][..., 0].tolist() == [[False] * 3] * 14 + [[True] * 3]


def test_transforms_inside_workers_keep_their_state():
    env = GymTrialEnv(SerialEnv(2, lambda: TransformedEnv(GymWrapper(Strict("box")), StepCounter())), trial_len=9, seed=0)
    td = env.reset()
    lengths = td["observation"][:, 0].long()
    _, data = run(env, int(lengths.max()), td=td)
    assert (data["active"].sum(0).squeeze(-1) == lengths - 1).all()


def test_trials_are_seeded():
    def trial(seed):
        env = GymTrialEnv(serial(3), trial_len=12, mode="meta", seed=seed)
        env.set_seed(seed)
        return run(env, 12)[1]["observation"]

    torch.testing.assert_close(trial(3), trial(3))
    assert not torch.equal(trial(3), trial(4))


@pytest.mark.parametrize("space", ["discrete", "box", "multibinary", "dict"])  # GymWrapper has no Tuple spaces
def test_each_space_is_flattened_as_on_the_gymnasium_path(space):
    inner = Countdown(space)
    env = GymTrialEnv(GymWrapper(inner), trial_len=6, mode="meta", seed=0)
    assert env.observation_spec["observation"].shape == (1, SPACES[space][1])
    td = env.reset()
    for _ in range(4):
        expected = gym.spaces.flatten(inner.observation_space, inner.obs()).astype(np.float32)
        np.testing.assert_array_equal(td["observation"][0].numpy(), expected)
        td["action"] = torch.ones(1, dtype=torch.int64)
        td = env.step(td)["next"]


def test_categorical_leaves_become_one_hots_and_text_is_refused():
    flatten, dim = leaf_flattener(Categorical(4, shape=(2,)), batch_dims=1)
    assert dim == 4
    torch.testing.assert_close(flatten(torch.tensor([3, 0])), torch.eye(4)[[3, 0]])
    flatten, dim = leaf_flattener(MultiCategorical([3, 2], shape=(1, 2)), batch_dims=1)
    assert dim == 5
    torch.testing.assert_close(flatten(torch.tensor([[2, 1]])), torch.tensor([[0.0, 0, 1, 0, 1]]))
    with pytest.raises(TypeError, match="cannot flatten.*observation_key"):
        leaf_flattener(NonTensor(shape=(1,)), batch_dims=1)  # e.g. a text mission


def test_bad_torchrl_envs_name_the_fix():
    with pytest.raises(TypeError, match="already a trial env.*make_trial_env"):
        GymTrialEnv(DarkKeyToDoorEnv(num_envs=2))
    with pytest.raises(ValueError, match="batch_size.*SerialEnv"):
        GymTrialEnv(GymEnv("CartPole-v1", num_envs=2))  # a gymnasium vector env steps every row
    with pytest.raises(ValueError, match="transforms inside each worker"):
        GymTrialEnv(TransformedEnv(serial(2), StepCounter()))
    with pytest.raises(ValueError, match="brings its own rows"):
        GymTrialEnv(GymEnv("CartPole-v1"), num_envs=3)
    with pytest.raises(TypeError, match="ActionDiscretizer"):
        GymTrialEnv(GymEnv("Pendulum-v1"))
    with pytest.raises(TypeError, match="SerialEnv"):
        GymTrialEnv(lambda: GymEnv("CartPole-v1"))  # a factory of TorchRL envs
    with pytest.raises(ValueError, match="observation_key='pixels'"):
        GymTrialEnv(GymEnv("CartPole-v1"), observation_key="pixels")
    with pytest.raises(TypeError, match="pass them to GymEnv"):
        GymTrialEnv(GymEnv("CartPole-v1"), max_episode_steps=10)
    with pytest.warns(UserWarning, match="capped"):
        GymTrialEnv(serial(2))  # a SerialEnv does not show its workers' episode limit

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from lightning_memo.envs import DarkKeyToDoorEnv, GymTrialEnv, make_env, make_trial_env
from lightning_memo.envs.gym_trial import EPISODIC_CAP

SPACES = {
    "discrete": (gym.spaces.Discrete(8), 8),
    "box": (gym.spaces.Box(0.0, 10.0, (2,)), 2),
    "multibinary": (gym.spaces.MultiBinary(3), 3),
    "tuple": (gym.spaces.Tuple((gym.spaces.Discrete(8), gym.spaces.Box(0.0, 10.0, (1,)))), 9),
    "dict": (gym.spaces.Dict(a=gym.spaces.Discrete(8), b=gym.spaces.Box(0.0, 10.0, (1,))), 9),
}


class Countdown(gym.Env):
    """Episodes of ``length`` steps, ``length`` drawn from ``np_random`` in [2, 5]; reward = action;
    ``is_success`` when the last action is 1. Records the seeds it was reset with."""

    def __init__(self, space: str = "box"):
        self.kind = space
        self.observation_space = SPACES[space][0] if isinstance(space, str) else space
        self.action_space = gym.spaces.Discrete(2)
        self.seeds, self.t, self.length = [], 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seeds.append(seed)
        self.length, self.t = int(self.np_random.integers(2, 6)), 0
        return self.obs(), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        return self.obs(), float(action), end, False, {"is_success": end and action == 1}

    def obs(self):
        return {
            "discrete": self.length,
            "box": np.array([self.length, self.t], np.float32),
            "multibinary": np.array([(self.length >> b) & 1 for b in range(3)], np.int8),
            "tuple": (self.length, np.array([self.t], np.float32)),
            "dict": {"a": self.length, "b": np.array([self.t], np.float32)},
        }.get(self.kind, 0)


def run(env, steps, action=1, td=None):
    """``steps`` steps of constant ``action`` from ``td`` (default: a reset); returns (start, stacked step outputs)."""
    td = env.reset() if td is None else td
    first, outs = td.clone(), []
    for _ in range(steps):
        td["action"] = torch.full((env.num_envs,), action)
        td = env.step(td)["next"]
        outs.append(td.clone())
    return first, torch.stack(outs)


@pytest.mark.parametrize("space", list(SPACES))
def test_each_space_is_flattened(space):
    env = GymTrialEnv(lambda: Countdown(space), num_envs=2, trial_len=6, mode="meta", seed=0)
    assert env.observation_spec["observation"].shape == (2, SPACES[space][1])
    check_env_specs(make_trial_env(env))
    td = env.reset()
    for i, inner in enumerate(env.envs):
        expected = gym.spaces.flatten(inner.observation_space, inner.obs())
        np.testing.assert_array_equal(td["observation"][i].numpy(), expected.astype(np.float32))
    if space == "discrete":
        assert (td["observation"].sum(-1) == 1).all()  # one-hot


def test_dict_entry_selected_by_key():
    env = GymTrialEnv(lambda: Countdown("dict"), num_envs=1, trial_len=5, observation_key="b", mode="meta")
    td = env.reset()
    assert td["observation"].shape == (1, 1) and td["observation"].item() == 0  # b = [t]
    with pytest.raises(ValueError, match="observation_key='c'"):
        GymTrialEnv(lambda: Countdown("dict"), trial_len=5, observation_key="c")


def test_meta_mode_restarts_episodes_in_the_same_step():
    env = GymTrialEnv(lambda: Countdown("box"), num_envs=3, trial_len=15, mode="meta", seed=1)
    first, data = run(env, 15)
    assert first["episode_start"].all() and (first["episode_index"] == 0).all() and first["active"].all()
    end, start = data["episode_end"][..., 0], data["episode_start"][..., 0]
    assert end.any() and torch.equal(end, start)  # every end restarts at once
    assert torch.equal(data["success"][..., 0], end)  # action 1 at every end
    index = torch.cumsum(end.long(), 0)
    assert torch.equal(data["episode_index"][..., 0], index)
    assert (data["observation"][..., 1][end] == 0).all()  # the new episode's first observation (t = 0)
    assert data["active"].all() and (data["reward"] == 1).all()
    assert data["done"][..., 0].tolist() == [[False] * 3] * 14 + [[True] * 3]


def test_episodic_mode_masks_rows_that_ended():
    env = GymTrialEnv(lambda: Countdown("box"), num_envs=4, trial_len=20, seed=2)
    td = env.reset()
    lengths = [inner.length for inner in env.envs]
    assert len(set(lengths)) > 1  # rows end at different steps
    _, data = run(env, max(lengths), td=td)
    for i, length in enumerate(lengths):
        rows = data[:, i]
        assert rows["episode_end"][..., 0].tolist() == [t == length - 1 for t in range(max(lengths))]
        assert rows["active"][..., 0].tolist() == [t < length - 1 for t in range(max(lengths))]
        assert rows["reward"][length:].eq(0).all() and rows["reward"][:length].eq(1).all()
        assert (rows["observation"][length - 1 :] == rows["observation"][length - 1]).all()  # frozen
        assert env.envs[i].t == length  # not stepped after its end
    assert not data["episode_start"].any() and data["success"].sum() == 4
    assert data["done"][-1].all() and not data["done"][:-1].any()  # all rows ended: the trial ends


def test_episodic_cap_ends_the_trial():
    env = GymTrialEnv(lambda: Countdown("box"), num_envs=2, trial_len=1)
    _, data = run(env, 1)
    assert data["done"].all() and data["active"].all()  # cut off mid-episode


def test_trials_are_seeded_per_row_like_the_builtin_envs():
    env = GymTrialEnv(lambda: Countdown("box"), num_envs=2, trial_len=9, mode="meta", seed=5)
    again = GymTrialEnv(lambda: Countdown("box"), num_envs=2, trial_len=9, mode="meta", seed=5)
    torch.testing.assert_close(run(env, 9)[1]["observation"], run(again, 9)[1]["observation"])
    env.reset()
    for i, inner in enumerate(env.envs):
        rng = np.random.default_rng(5 + i)
        trial_seeds = [s for s in inner.seeds if s is not None]
        assert trial_seeds == [int(rng.integers(2**31)), int(rng.integers(2**31))]
        assert None in inner.seeds  # restarts within a trial continue the env's stream


def test_make_env_takes_any_gymnasium_id():
    env = make_env("CartPole-v1", num_envs=2, trial_len=30, mode="meta", max_episode_steps=10)
    assert isinstance(env, GymTrialEnv) and env.num_actions == 2 and env.trial_len == 30
    check_env_specs(make_trial_env(env))
    _, data = run(env, 30, action=0)
    assert data["episode_end"][..., 0].any(0).all()  # every row restarted at least once
    episodic = make_env("CartPole-v1", num_envs=2, trial_len=600)
    assert episodic.mode == "episodic"
    with pytest.raises(ValueError, match="CartPole-v1"):
        make_env("CartPol-v1", num_envs=1, trial_len=5)


@pytest.mark.parametrize("name, dim", [("popgym-RepeatPreviousEasy-v0", 4), ("MiniGrid-MemoryS7-v0", 147)])
def test_make_env_imports_popgym_and_minigrid(name, dim):
    pytest.importorskip(name.split("-")[0].lower())
    env = make_env(name, num_envs=2, trial_len=300)
    assert env.observation_spec["observation"].shape == (2, dim)
    check_env_specs(make_trial_env(env))


def test_bad_input_names_the_fix():
    with pytest.raises(TypeError, match="Discrete and MultiDiscrete.*ActionWrapper"):
        GymTrialEnv("Pendulum-v1", trial_len=10)
    with pytest.raises(TypeError, match="cannot flatten.*observation_key"):
        GymTrialEnv(lambda: Countdown(gym.spaces.Sequence(gym.spaces.Discrete(3))), trial_len=10)
    with pytest.raises(ValueError, match="not a registered gymnasium id.*CartPole-v1"):
        GymTrialEnv("CartPole-v9", trial_len=10)

    def broken():
        raise OSError("no display")

    with pytest.raises(RuntimeError, match="factory.*OSError: no display.*Fix the factory"):
        GymTrialEnv(broken, trial_len=10)
    with pytest.raises(TypeError, match="not a TorchRL env"):
        GymTrialEnv(DarkKeyToDoorEnv(), trial_len=10)
    with pytest.raises(TypeError, match="new env per row"):
        GymTrialEnv(Countdown(), trial_len=10)
    with pytest.raises(ValueError, match="trial_len"):
        GymTrialEnv(lambda: Countdown(), mode="meta")
    with pytest.warns(UserWarning, match="capped"):
        env = GymTrialEnv(lambda: Countdown())  # states no episode limit
    assert env.trial_len == EPISODIC_CAP

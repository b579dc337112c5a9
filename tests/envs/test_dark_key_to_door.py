import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torchrl.envs.utils import check_env_specs

import lightning_memo.envs  # noqa: F401  (registers the gymnasium ids)
from lightning_memo.envs import DarkKeyToDoorEnv, DarkKeyToDoorGym

UP, LEFT, DOWN, RIGHT, NOOP = range(5)
TASK = [[1, 1], [3, 1], [1, 3]]  # start, key, door as (x, y)


def make(version="memo", **kw):
    env = DarkKeyToDoorGym(size=5, episode_len=10, trial_len=60, version=version, **kw)
    obs, info = env.reset(seed=0, options={"task": TASK})
    return env, obs, info


def walk(env, actions):
    return [env.step(a) for a in actions]


def test_key_then_door_memo_restarts_in_the_same_step():
    env, obs, info = make()
    np.testing.assert_allclose(obs, [0.2, 0.2, 0.0, 0.0])
    assert info["episode_start"] and info["episode_index"] == 0
    (o1, r1, *_), (o2, r2, *_), (o3, r3, *_) = walk(env, [RIGHT, RIGHT, RIGHT])
    assert (r1, r2, r3) == (0.0, 1.0, 0.0)  # key on the 2nd step; standing on it again gives nothing
    np.testing.assert_allclose(o2, [0.6, 0.2, 1.0, 0.2])
    np.testing.assert_allclose(o3, [0.8, 0.2, 1.0, 0.3])
    out = walk(env, [LEFT, LEFT, LEFT, DOWN, DOWN])
    obs, reward, terminated, truncated, info = out[-1]
    assert reward == 1.0 and info["success"] and info["episode_end"] and info["episode_start"]
    assert info["episode_index"] == 1 and not (terminated or truncated)
    np.testing.assert_allclose(obs, [0.2, 0.2, 0.0, 0.0])  # back at the start: the door is never seen
    assert [o[1] for o in out[:-1]] == [0.0] * 4


def test_timeout_memo_is_episode_len_plus_one_steps():
    env, *_ = make()
    out = walk(env, [NOOP] * 11)
    times = [o[0][3] for o in out]
    np.testing.assert_allclose(times[:10], np.arange(1, 11) / 10)  # observed up to 1.0
    assert not any(o[4]["episode_end"] for o in out[:10])
    obs, _, _, _, info = out[10]
    assert info["episode_end"] and not info["success"] and info["episode_start"]
    np.testing.assert_allclose(obs, [0.2, 0.2, 0.0, 0.0])


def test_amago_version_shows_the_door_then_spends_a_step_restarting():
    env, *_ = make(version="amago")
    out = walk(env, [RIGHT, RIGHT, LEFT, LEFT, DOWN, DOWN])
    obs, reward, _, _, info = out[-1]
    assert reward == 1.0 and info["success"] and info["episode_end"] and not info["episode_start"]
    np.testing.assert_allclose(obs, [0.2, 0.6, 1.0, 0.6])  # on the door, key held
    obs, reward, _, _, info = env.step(RIGHT)  # ignored
    assert reward == 0.0 and info["episode_start"] and not info["episode_end"] and info["episode_index"] == 1
    np.testing.assert_allclose(obs, [0.2, 0.2, 0.0, 0.0])


def test_amago_version_times_out_after_episode_len_steps():
    env, *_ = make(version="amago")
    out = walk(env, [NOOP] * 11)
    assert [o[4]["episode_end"] for o in out] == [False] * 9 + [True, False]
    assert out[9][0][3] == 1.0 and out[10][4]["episode_start"]


def test_moves_clip_at_the_border_and_light_observation():
    env, *_ = make(dark=False)
    obs = walk(env, [UP, UP, UP, LEFT, LEFT])[-1][0]
    np.testing.assert_allclose(obs, [0.0, 0.0, 0.0, 0.5, 0.2, 0.6, 0.6, 0.2])  # + door, key


def test_trial_end_sets_terminated_and_truncated_once():
    env = DarkKeyToDoorGym(size=5, episode_len=3, trial_len=7)
    env.reset(seed=1)
    flags = [env.step(NOOP)[2:4] for _ in range(7)]
    assert flags == [(False, False)] * 6 + [(True, True)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(NOOP)


def test_seeding_goes_through_np_random():
    a, b = DarkKeyToDoorGym(), DarkKeyToDoorGym()
    a.reset(seed=7)
    b.reset(seed=7)
    np.testing.assert_array_equal(a.task, b.task)
    rng = np.random.default_rng(7)  # what gymnasium's np_random is for seed 7
    np.testing.assert_array_equal(a.task, rng.integers(0, 9, size=(3, 2)))
    a.reset()  # the next trial continues the stream
    np.testing.assert_array_equal(a.task, rng.integers(0, 9, size=(3, 2)))


def test_gymnasium_checks_and_registration():
    check_env(gym.make("lightning_memo/DarkKeyToDoor-v0", size=5, episode_len=5, trial_len=20).unwrapped)
    env = gym.make("lightning_memo/DarkKeyToDoor-v0", size=6, episode_len=7, trial_len=30, dark=False, version="amago")
    inner = env.unwrapped
    assert (inner.size, inner.episode_len, inner.trial_len, inner.dark, inner.version) == (6, 7, 30, False, "amago")
    assert env.observation_space.shape == (8,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=1), "size"),
        (dict(episode_len=0), "episode_len"),
        (dict(trial_len=-3), "trial_len"),
        (dict(version="v2"), "version"),
        (dict(render_mode="human"), "render_mode"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DarkKeyToDoorGym(**kwargs)


def test_bad_actions_raise():
    env, *_ = make()
    for bad in (5, -1, 1.5, np.array([1, 2])):
        with pytest.raises(ValueError, match="action"):
            env.step(bad)
    batched = DarkKeyToDoorEnv(num_envs=3, seed=0)
    td = batched.reset()
    for bad in (torch.tensor([0, 1, 5]), torch.zeros(3, 5), torch.zeros(3, 2, dtype=torch.long)):
        td["action"] = bad
        with pytest.raises(ValueError, match="action"):
            batched.step(td)
    with pytest.raises(ValueError, match="num_envs"):
        DarkKeyToDoorEnv(num_envs=0)


@pytest.mark.parametrize("version", ["memo", "amago"])
@pytest.mark.parametrize("dark", [True, False])
def test_batched_equals_gymnasium_step_by_step(version, dark):
    n, seed, kw = 5, 11, dict(size=4, episode_len=5, trial_len=40, dark=dark, version=version)
    batched = DarkKeyToDoorEnv(num_envs=n, seed=seed, **kw)
    gyms = [DarkKeyToDoorGym(**kw) for _ in range(n)]
    td = batched.reset()
    obs = np.stack([g.reset(seed=seed + i)[0] for i, g in enumerate(gyms)])
    np.testing.assert_array_equal(td["observation"].numpy(), obs)
    rng = np.random.default_rng(0)
    checked = {"success": 0, "episode_end": 0, "done": 0}
    for _ in range(100):  # two and a half trials, with auto-resets
        actions = rng.integers(0, 5, n)
        td["action"] = torch.as_tensor(actions)
        out, td = batched.step_and_maybe_reset(td)
        steps = [g.step(int(a)) for g, a in zip(gyms, actions)]
        nxt = out["next"]
        np.testing.assert_array_equal(nxt["observation"].numpy(), np.stack([s[0] for s in steps]))
        np.testing.assert_array_equal(nxt["reward"].squeeze(-1).numpy(), [s[1] for s in steps])
        np.testing.assert_array_equal(nxt["terminated"].squeeze(-1).numpy(), [s[2] for s in steps])
        np.testing.assert_array_equal(nxt["truncated"].squeeze(-1).numpy(), [s[3] for s in steps])
        for key in ("episode_start", "episode_index", "episode_end", "success"):
            np.testing.assert_array_equal(nxt[key].squeeze(-1).numpy(), [s[4][key] for s in steps])
        for key in ("success", "episode_end", "done"):
            checked[key] += int(nxt[key].sum())
        if steps[0][2]:
            obs = np.stack([g.reset()[0] for g in gyms])
            np.testing.assert_array_equal(td["observation"].numpy(), obs)
            assert td["episode_start"].all() and (td["episode_index"] == 0).all()
    assert all(v > 0 for v in checked.values()), checked


def test_partial_reset_only_touches_the_masked_envs():
    env = DarkKeyToDoorEnv(num_envs=2, size=6, seed=3)
    td = env.reset()
    for _ in range(3):
        td["action"] = torch.tensor([RIGHT, DOWN])
        td = env.step(td)["next"]
    kept = td["observation"][0].clone()
    td["_reset"] = torch.tensor([[False], [True]])
    out = env.reset(td)
    torch.testing.assert_close(out["observation"][0], kept)
    second = DarkKeyToDoorGym(size=6)
    second.reset(seed=4)
    np.testing.assert_array_equal(out["observation"][1].numpy(), second.reset()[0])  # its 2nd trial
    assert env._trial_t.tolist() == [3, 0]


def test_torchrl_specs():
    check_env_specs(DarkKeyToDoorEnv(num_envs=4, size=5, episode_len=4, trial_len=10, seed=0))
    check_env_specs(DarkKeyToDoorEnv(num_envs=1, dark=False, version="amago", seed=0))
    env = DarkKeyToDoorEnv(num_envs=3, seed=0)
    assert env.observation_keys == ("observation",) and env.action_spec.shape == (3,)
    assert env.action_spec.space.n == 5 and env.batch_size == (3,)


def test_layout_knowing_agent_earns_about_100_per_trial():
    """An agent that knows the layout earns about 99 per trial at 9x9 / 50 / 500."""
    env = DarkKeyToDoorEnv(num_envs=1024, seed=0)
    td, total = env.reset(), torch.zeros(1024)
    for _ in range(500):
        goal = torch.where(env._has_key[:, None], env._task[:, 2], env._task[:, 1])
        dx, dy = (goal - env._pos).unbind(-1)
        action = torch.full((1024,), NOOP)
        for cond, a in ((dy > 0, DOWN), (dy < 0, UP), (dx > 0, RIGHT), (dx < 0, LEFT)):
            action = torch.where(cond, a, action)
        td["action"] = action
        out, td = env.step_and_maybe_reset(td)
        total += out["next", "reward"].squeeze(-1)
    assert out["next", "done"].all()
    assert 94 < total.mean().item() < 107

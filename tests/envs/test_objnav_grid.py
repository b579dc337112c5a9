from collections import deque

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torchrl.envs.utils import check_env_specs

import lightning_memo.envs  # noqa: F401  (registers the gymnasium ids)
from lightning_memo.envs import ObjNavGridEnv, ObjNavGridGym
from lightning_memo.envs import objnav_house as oh
from lightning_memo.envs.objnav_grid import FORWARD, LEFT, OBSERVATION_KEYS, RIGHT, STOP
from tests.envs.objnav_agents import ScriptedAgent, run_trial

SMALL = dict(size=11, num_categories=3, episode_len=25, trial_len=60)


def bfs(free: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Reference BFS (queue based) from ``sources [S, S]`` over ``free``; -1 where unreachable."""
    dist = np.full(free.shape, -1)
    queue = deque(map(tuple, np.argwhere(sources)))
    for cell in queue:
        dist[cell] = 0
    while queue:
        r, c = queue.popleft()
        for dr, dc in oh.FORWARD:
            n = (r + dr, c + dc)
            if free[n] and dist[n] < 0:
                dist[n] = dist[r, c] + 1
                queue.append(n)
    return dist


@pytest.mark.parametrize("size, k, per", [(9, 2, 1), (13, 5, 2), (17, 8, 1), (25, 20, 1)])
def test_houses_are_connected_with_every_category_and_correct_distances(size, k, per):
    geom = oh.view_geometry(4)
    rng = np.random.default_rng(size)
    for _ in range(3):
        house = oh.generate_house(rng, size, k, per, geom, 1.5, 50)
        grid, free = house.grid, house.grid == oh.FREE
        assert (grid[[0, -1]] == oh.WALL).all() and (grid[:, [0, -1]] == oh.WALL).all()
        one = np.zeros_like(free)
        one.flat[np.flatnonzero(free)[0]] = True
        assert (bfs(free, one)[free] >= 0).all()  # one connected component
        counts = np.bincount(grid[grid >= oh.OBJECT] - oh.OBJECT, minlength=k)
        assert counts.tolist() == [per] * k
        cells = np.argwhere(free)  # brute force: every free cell, every heading
        codes = oh.window_codes(oh.pad_grid(grid, 4), cells[:, None], np.arange(4)[None], geom)
        visible = oh.visible(codes, geom)
        table = house.views[cells[:, 0], cells[:, 1]]
        np.testing.assert_array_equal(table, np.where(visible, codes, oh.UNSEEN))
        close = visible & (geom.distance <= 1.5)
        for cat in range(k):
            sees = (close & (codes == oh.OBJECT + cat)).any(axis=(1, 2))
            np.testing.assert_array_equal(house.goal[cat][cells[:, 0], cells[:, 1]], sees)
        dist = oh.geodesic_distances(free[None], house.goal[None])[0]
        for cat in range(k):
            assert house.goal[cat].any() and not house.goal[cat][~free].any()
            np.testing.assert_array_equal(dist[cat][free], bfs(free, house.goal[cat])[free])
        target, r, c, h = house.episodes.T
        assert free[r, c].all() and not house.goal[target, r, c].any() and set(h) <= {0, 1, 2, 3}


def test_view_wedge_and_occlusion():
    geom = oh.view_geometry(3)
    grid = np.full((9, 9), oh.FREE)
    grid[[0, -1]] = grid[:, [0, -1]] = oh.WALL
    grid[5, 4] = oh.WALL  # two cells ahead of an agent at (7, 4) facing north
    grid[4, 4] = oh.OBJECT  # right behind that wall: hidden
    grid[6, 5] = oh.OBJECT + 1  # ahead-right, in the wedge: seen (objects do not block sight)
    grid[5, 6] = oh.OBJECT + 2  # behind the object at (6, 5): still seen
    grid[7, 6] = oh.OBJECT  # beside the agent, outside the 90 degree wedge
    codes = oh.window_codes(oh.pad_grid(grid, 3), np.array([7, 4]), np.array(0), geom)
    cells = np.array([7, 4]) + geom.offsets[0]
    seen = {tuple(c): int(code) for c, code, v in zip(cells.tolist(), codes, oh.visible(codes, geom)) if v}
    assert seen[(5, 4)] == oh.WALL and (4, 4) not in seen and (3, 4) not in seen
    assert seen[(6, 5)] == oh.OBJECT + 1 and seen[(5, 6)] == oh.OBJECT + 2 and (7, 6) not in seen
    assert (7, 4) in seen and (7, 5) not in seen  # own cell only on the agent's row
    # facing east from (7, 4): the row ahead is free up to the object at (7, 6)
    codes = oh.window_codes(oh.pad_grid(grid, 3), np.array([7, 4]), np.array(1), geom)
    cells = np.array([7, 4]) + geom.offsets[1]
    seen = {tuple(c): int(code) for c, code, v in zip(cells.tolist(), codes, oh.visible(codes, geom)) if v}
    assert seen[(7, 6)] == oh.OBJECT and seen[(7, 5)] == oh.FREE


def test_observation_layout_matches_the_state():
    env = ObjNavGridGym(**SMALL)
    obs, info = env.reset(seed=3)
    assert info["episode_start"] and info["episode_index"] == 0
    h, w, c = env.config.view_shape
    view = obs["view"].reshape(h * w, c).T  # [C, V]
    codes = oh.window_codes(oh.pad_grid(env.grid, 4), env.pos, np.array(env.heading), env.geom)
    visible = oh.visible(codes, env.geom)
    np.testing.assert_array_equal(view[0], visible)
    np.testing.assert_array_equal(view[1], visible & (codes == oh.WALL))
    for k in range(3):
        np.testing.assert_array_equal(view[2 + k], visible & (codes == oh.OBJECT + k))
    assert view[0, (h - 1) * w + w // 2] == 1  # the agent's own cell, bottom centre
    np.testing.assert_array_equal(obs["target"], np.eye(3)[env.target])
    np.testing.assert_allclose(obs["gps"], [env.pos[1] / 11, env.pos[0] / 11])
    np.testing.assert_array_equal(obs["heading"], oh.FORWARD[env.heading][::-1])


def test_rewards_success_and_spl_follow_the_rules():
    cfg = dict(size=13, num_categories=4, episode_len=40, trial_len=250)
    env = ObjNavGridGym(**cfg)
    agent, rng = ScriptedAgent(remember=True), np.random.default_rng(0)
    env.reset(seed=5)
    agent.reset_trial()
    start, seen = True, {"success": 0, "failed_stop": 0, "timeout": 0}
    for _ in range(250):
        action = agent.act(env, start) if rng.random() < 0.8 else int(rng.integers(4))
        d_before, target, ep_t = env.goal_distance, env.target, env.episode_steps
        visible_target = ((env.geom.distance <= 1.5) & (env.seen == oh.OBJECT + target)).any()
        ahead = env.pos + oh.FORWARD[env.heading]
        moved = action == FORWARD and env.grid[tuple(ahead)] == oh.FREE
        d_after = env.distances[target, ahead[0], ahead[1]] if moved else d_before
        _, reward, _, _, info = env.step(action)
        success = action == STOP and visible_target
        assert info["success"] == success
        assert info["episode_end"] == (action == STOP or ep_t + 1 == 40)
        assert reward == pytest.approx(-0.003 + 0.25 * (d_before - d_after) + 2.0 * success)
        assert 0 <= info["spl"] <= 1 and (info["spl"] > 0) == success
        if info["episode_end"]:
            assert env.episode_steps == 0 and env.path_length == 0 and info["episode_start"]
            seen["success" if success else "failed_stop" if action == STOP else "timeout"] += 1
        start = info["episode_start"]
    assert all(v > 0 for v in seen.values()), seen


def test_moves_turns_and_blocking():
    env = ObjNavGridGym(**SMALL)
    env.reset(seed=0)
    heading = env.heading
    env.step(LEFT)
    assert env.heading == (heading + 3) % 4
    env.step(RIGHT)
    env.step(RIGHT)
    assert env.heading == (heading + 1) % 4
    for _ in range(12):  # walk into whatever is ahead: stops in front of it
        pos = env.pos.copy()
        env.step(FORWARD)
        ahead = pos + oh.FORWARD[env.heading]
        expected = ahead if env.grid[tuple(ahead)] == oh.FREE else pos
        np.testing.assert_array_equal(env.pos, expected)


def test_remembering_where_objects_were_seen_pays_off():
    """A memoryless policy is clearly worse: same explorer, forgetting object sightings each episode."""
    env = ObjNavGridGym(trial_len=300)  # default 17x17 houses, 8 categories, 100-step episodes
    results = {}
    for remember in (True, False):
        episodes = []
        for seed in range(3):
            _, infos = run_trial(env, ScriptedAgent(remember), seed)
            episodes.append([i for i in infos if i["episode_end"]])
        results[remember] = episodes
    for mem, fgt in zip(results[True], results[False]):
        assert mem[0]["spl"] == fgt[0]["spl"]  # identical first episode: nothing to remember yet
        assert np.mean([e["spl"] for e in mem]) > np.mean([e["spl"] for e in fgt])
        assert len(mem) > len(fgt)  # more episodes solved in the same step budget
    spl = {r: np.mean([e["spl"] for eps in results[r] for e in eps[1:]]) for r in results}
    assert spl[True] > 0.85 and spl[True] - spl[False] > 0.2, spl


def test_batched_equals_gymnasium_step_by_step():
    n, seed = 3, 21
    batched = ObjNavGridEnv(num_envs=n, seed=seed, **SMALL)
    gyms = [ObjNavGridGym(**SMALL) for _ in range(n)]
    agents = [ScriptedAgent(remember=i != 1) for i in range(n)]
    td = batched.reset()
    obs = [g.reset(seed=seed + i)[0] for i, g in enumerate(gyms)]
    starts = [True] * n
    for a in agents:
        a.reset_trial()
    rng = np.random.default_rng(1)
    counts = {"success": 0, "episode_end": 0, "done": 0}
    for _ in range(2 * SMALL["trial_len"] + 10):
        for key in OBSERVATION_KEYS:
            np.testing.assert_array_equal(td[key].numpy(), np.stack([o[key] for o in obs]), err_msg=key)
        actions = [
            a.act(g, s) if rng.random() < 0.85 else int(rng.integers(4)) for a, g, s in zip(agents, gyms, starts)
        ]
        td["action"] = torch.tensor(actions)
        out, td = batched.step_and_maybe_reset(td)
        steps = [g.step(a) for g, a in zip(gyms, actions)]
        nxt = out["next"]
        np.testing.assert_array_equal(nxt["reward"].squeeze(-1).numpy(), np.float32([s[1] for s in steps]))
        np.testing.assert_array_equal(nxt["done"].squeeze(-1).numpy(), [s[2] for s in steps])
        for key in ("episode_start", "episode_index", "episode_end", "success"):
            np.testing.assert_array_equal(nxt[key].squeeze(-1).numpy(), [s[4][key] for s in steps], err_msg=key)
        np.testing.assert_array_equal(nxt["spl"].squeeze(-1).numpy(), np.float32([s[4]["spl"] for s in steps]))
        for key in counts:
            counts[key] += int(nxt[key].sum())
        obs, starts = [s[0] for s in steps], [s[4]["episode_start"] for s in steps]
        if steps[0][2]:
            obs, starts = [g.reset()[0] for g in gyms], [True] * n
            for a in agents:
                a.reset_trial()
    assert all(v > 0 for v in counts.values()), counts


def test_gymnasium_checks_and_registration():
    check_env(gym.make("lightning_memo/ObjNavGrid-v0", **SMALL).unwrapped)
    env = gym.make("lightning_memo/ObjNavGrid-v0", size=13, num_categories=5, view_depth=3, trial_len=40)
    assert env.unwrapped.config.size == 13
    assert env.observation_space["view"].shape == (4 * 7 * 7,)
    assert env.observation_space["target"].shape == (5,)


def test_torchrl_specs_and_keys():
    env = ObjNavGridEnv(num_envs=4, seed=0, **SMALL)
    check_env_specs(env)
    assert env.observation_keys == ("view", "target", "gps", "heading") and env.view_shape == (5, 9, 5)
    td = env.reset()
    assert td["view"].shape == (4, 5 * 9 * 5) and td["view"].dtype == torch.float32
    assert td["episode_start"].all() and td["episode_index"].dtype == torch.int64
    assert env.action_spec.space.n == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=4), "size"),
        (dict(num_categories=0), "num_categories"),
        (dict(success_radius=5.0), "success_radius"),
        (dict(success_radius=0.5), "success_radius"),
        (dict(view_depth=0), "view_depth"),
        (dict(episode_len=0), "episode_len"),
        (dict(slack_reward=float("nan")), "slack_reward"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjNavGridGym(**kwargs)
    with pytest.raises(ValueError, match=match):
        ObjNavGridEnv(**kwargs)


def test_too_many_objects_and_bad_actions_raise():
    with pytest.raises(ValueError, match="fewer objects"):
        ObjNavGridGym(size=7, num_categories=20).reset(seed=0)
    env = ObjNavGridGym(**SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(4)
    batched = ObjNavGridEnv(num_envs=2, seed=0, **SMALL)
    td = batched.reset()
    td["action"] = torch.tensor([0, 7])
    with pytest.raises(ValueError, match="action"):
        batched.step(td)

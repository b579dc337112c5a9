"""ObjNavGrid: the task structure of ExtObjNav (spec/envs.md §2) on procedurally generated grid houses.

A trial is ``trial_len`` steps in one house (drawn per trial, see :mod:`objnav_house`): ``K`` object
categories stand in its rooms. Each inner episode draws a target category and a start pose; the
agent must find an instance and call STOP near it. Actions: 0 stop, 1 forward, 2 turn left,
3 turn right (moving into a wall or an object does nothing).

Observation (separate keys, all float32):

* ``view`` ``[(D+1) * (2D+1) * C]``: the egocentric wedge (see :mod:`objnav_house`), channels
  ``C = 2 + K``: visible, wall, one per category (all zero where not visible), flattened from
  ``view_shape = (D+1, 2D+1, C)`` (farthest row first, channels last);
* ``target`` ``[K]`` one-hot; ``gps`` ``[2]`` = ``(col, row) / size`` in the house frame (the same in
  every inner episode of a trial); ``heading`` ``[2]`` = the facing direction ``(dcol, drow)``.

Reward per step: ``slack_reward + progress_reward * (d_before - d_after) + success_reward * success``,
``d`` the BFS distance (cells) to the nearest goal viewpoint of the target: a free cell from which
some heading sees a target instance within ``success_radius``. Success: STOP while a target instance
is visible within ``success_radius``. STOP ends the inner episode either way; so does reaching
``episode_len`` steps. The next episode starts in the same step (its first observation is returned).
``spl = success * d0 / max(d0, path)``, ``d0`` the start distance, ``path`` the cells moved.

Env ``i`` of ``ObjNavGridEnv(seed=s)`` plays exactly the trials of ``ObjNavGridGym`` reset with
``seed=s + i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from lightning_memo.envs import objnav_house as oh
from lightning_memo.envs._common import batched_action, check_choice, check_float, check_int, env_rngs, gym_action

STOP, FORWARD, LEFT, RIGHT = range(4)
NUM_ACTIONS = 4
OBSERVATION_KEYS = ("view", "target", "gps", "heading")


@dataclass(frozen=True)
class ObjNavGridConfig:
    """The task knobs shared by :class:`ObjNavGridGym` and :class:`ObjNavGridEnv` (validated)."""

    size: int = 17
    num_categories: int = 8
    objects_per_category: int = 1
    view_depth: int = 4
    success_radius: float = 1.5
    episode_len: int = 100
    trial_len: int = 1000
    slack_reward: float = -0.003
    progress_reward: float = 0.25
    success_reward: float = 2.0

    def __post_init__(self):
        check_int("size", self.size, minimum=oh.MIN_ROOM + 2)
        if self.size > 128:
            raise ValueError(f"size must be <= 128 (distances are int16), got {self.size}.")
        if check_int("num_categories", self.num_categories) > oh.MAX_CATEGORIES:
            raise ValueError(f"num_categories must be <= {oh.MAX_CATEGORIES}, got {self.num_categories}.")
        check_int("objects_per_category", self.objects_per_category)
        check_int("view_depth", self.view_depth)
        radius = check_float("success_radius", self.success_radius, minimum=1.0)
        if radius > self.view_depth:
            raise ValueError(
                f"success_radius ({radius}) must be <= view_depth ({self.view_depth}): "
                "success needs the target in view."
            )
        check_int("episode_len", self.episode_len)
        check_int("trial_len", self.trial_len)
        for name in ("slack_reward", "progress_reward", "success_reward"):
            check_float(name, getattr(self, name))

    @property
    def view_shape(self) -> tuple[int, int, int]:
        """``(rows, cols, channels)`` of ``view``: the window, farthest row first, channels last."""
        return self.view_depth + 1, 2 * self.view_depth + 1, 2 + self.num_categories

    def channel_table(self) -> np.ndarray:
        """float32 ``[K + 3, C]``: the view channels of each cell code + 1 (row 0: not visible)."""
        table = np.zeros((self.num_categories + 3, 2 + self.num_categories), np.float32)
        table[1:, 0] = 1.0  # visible
        table[oh.WALL + 1, 1] = 1.0
        table[oh.OBJECT + 1 :, 2:] = np.eye(self.num_categories)
        return table

    def new_house(self, rng: np.random.Generator, geom: oh.ViewGeometry) -> oh.House:
        """One trial's house with ``trial_len + 1`` pre-drawn inner episodes (the most a trial can start)."""
        return oh.generate_house(
            rng, self.size, self.num_categories, self.objects_per_category, geom,
            self.success_radius, self.trial_len + 1,
        )


class ObjNavGridGym(gym.Env):
    """One ObjNavGrid trial per ``reset`` (gymnasium API, seeded through ``np_random``).

    Observation ``Dict(view, target, gps, heading)``, action ``Discrete(4)``; ``info`` holds
    ``episode_start``, ``episode_index``, ``episode_end``, ``success``, ``spl``. Keyword arguments are
    the fields of :class:`ObjNavGridConfig`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, render_mode: str | None = None, **config: Any):
        self.config = cfg = ObjNavGridConfig(**config)
        self.render_mode = check_choice("render_mode", render_mode, (None, "rgb_array"))
        self.geom = oh.view_geometry(cfg.view_depth)
        h, w, c = cfg.view_shape
        k = cfg.num_categories
        self.observation_space = gym.spaces.Dict(
            view=gym.spaces.Box(0.0, 1.0, (h * w * c,), np.float32),
            target=gym.spaces.Box(0.0, 1.0, (k,), np.float32),
            gps=gym.spaces.Box(0.0, 1.0, (2,), np.float32),
            heading=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        )
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self._close = self.geom.distance <= cfg.success_radius
        self._channels = cfg.channel_table()
        self.house: oh.House | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        cfg = self.config
        self.house = cfg.new_house(self.np_random, self.geom)
        free = self.house.grid == oh.FREE
        self.dist = oh.geodesic_distances(free[None], self.house.goal[None])[0]
        self._ep_index, self._trial_t = 0, 0
        self._start_episode()
        return self._obs(), self._info(start=True, end=False, success=False, spl=0.0)

    def _start_episode(self) -> None:
        target, r, c, h = self.house.episodes[self._ep_index].tolist()
        self.target, self.pos, self.heading = target, np.array([r, c]), h
        self._ep_t, self._path = 0, 0
        self._d0 = self._d = int(self.dist[target, r, c])

    @property
    def seen(self) -> np.ndarray:
        """Codes of the window cells from the current pose, ``UNSEEN`` where hidden: int8 ``[V]``."""
        return self.house.views[self.pos[0], self.pos[1], self.heading]

    def step(self, action: Any):
        if self.house is None or self._trial_t >= self.config.trial_len:
            raise RuntimeError("the trial is over (or never started): call reset() first.")
        cfg, a = self.config, gym_action(action, NUM_ACTIONS)
        success = False
        if a == STOP:
            success = bool((self._close & (self.seen == oh.OBJECT + self.target)).any())
        elif a == FORWARD:
            ahead = self.pos + oh.FORWARD[self.heading]
            if self.house.grid[tuple(ahead)] == oh.FREE:
                self.pos, self._path = ahead, self._path + 1
        else:
            self.heading = (self.heading + (3 if a == LEFT else 1)) % 4
        d = int(self.dist[self.target, self.pos[0], self.pos[1]])
        reward = cfg.slack_reward + cfg.progress_reward * (self._d - d) + cfg.success_reward * success
        self._d, self._ep_t, self._trial_t = d, self._ep_t + 1, self._trial_t + 1
        end = a == STOP or self._ep_t >= cfg.episode_len
        spl = success * self._d0 / max(self._d0, self._path) if end else 0.0
        if end:
            self._ep_index += 1
            self._start_episode()
        over = self._trial_t >= cfg.trial_len
        return self._obs(), reward, over, over, self._info(start=end, end=end, success=success, spl=spl)

    def _obs(self) -> dict[str, np.ndarray]:
        k = self.config.num_categories
        forward = oh.FORWARD[self.heading]
        return {
            "view": self._channels[self.seen + 1].ravel(),
            "target": np.eye(k, dtype=np.float32)[self.target],
            "gps": (self.pos[::-1] / self.config.size).astype(np.float32),
            "heading": forward[::-1].astype(np.float32),
        }

    def _info(self, start: bool, end: bool, success: bool, spl: float) -> dict:
        return {
            "episode_start": start,
            "episode_index": self._ep_index,
            "episode_end": end,
            "success": success,
            "spl": float(spl),
        }

    def visible_cells(self) -> np.ndarray:
        """World ``(row, col)`` of the cells visible now, int64 ``[M, 2]``."""
        return self.pos + self.geom.offsets[self.heading][self.seen != oh.UNSEEN]

    def render(self) -> np.ndarray | None:
        if self.render_mode is None or self.house is None:
            return None
        from lightning_memo.envs.render import render_objnav

        return render_objnav(self.house.grid, self.pos, self.heading, self.target, self.visible_cells())


class ObjNavGridEnv(EnvBase):
    """``num_envs`` ObjNavGrid trials as tensors (TorchRL ``EnvBase``, ``batch_size=[N]``).

    Reset/step outputs: ``view``/``target``/``gps``/``heading`` (float32, see the module docstring;
    listed in ``observation_keys``), ``episode_start`` bool ``[N, 1]``, ``episode_index`` int64
    ``[N, 1]``; after a step also ``reward`` float32 ``[N, 1]``, ``success``/``episode_end`` bool
    ``[N, 1]``, ``spl`` float32 ``[N, 1]`` (valid where ``episode_end``) and
    ``done``/``terminated``/``truncated`` (the trial end only). Action: ``Categorical(4)`` integers
    ``[N]``. Houses are built per env at reset with a numpy Generator seeded ``seed + i``; steps are
    tensor ops. Other keyword arguments are the fields of :class:`ObjNavGridConfig`.
    """

    observation_keys = OBSERVATION_KEYS
    num_actions = NUM_ACTIONS

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str | None = None,
        seed: int | None = None,
        **config: Any,
    ):
        num_envs = check_int("num_envs", num_envs)
        super().__init__(device=device, batch_size=[num_envs])
        self.num_envs = num_envs
        self.config = cfg = ObjNavGridConfig(**config)
        self.trial_len = cfg.trial_len
        self.view_shape = cfg.view_shape
        self._rngs = env_rngs(seed, num_envs)
        self._make_specs()
        geom = self.geom = oh.view_geometry(cfg.view_depth)
        n, dev, s, v = num_envs, self.device, cfg.size, geom.offsets.shape[1]
        tensor = lambda x, dtype=torch.long: torch.as_tensor(x, dtype=dtype, device=dev)  # noqa: E731
        # small lookup tables: a step is mostly index_select/gather (faster than advanced indexing)
        self._window = tensor(np.arange(v))
        self._step_offsets = tensor(oh.FORWARD[:, 0] * s + oh.FORWARD[:, 1])  # [4] in flat cells
        self._turns = tensor([0, 0, 3, 1])  # heading change per action
        self._heading_vec = tensor(oh.FORWARD[:, ::-1].copy(), torch.float32)  # [4, 2] (dcol, drow)
        rows, cols = np.divmod(np.arange(s * s), s)
        self._gps = tensor(np.stack([cols, rows], 1) / s, torch.float32)  # [S * S, 2]
        self._targets = torch.eye(cfg.num_categories, device=dev)
        self._channels = tensor(cfg.channel_table(), torch.float32)  # [K + 3, C]
        self._close = tensor(geom.distance <= cfg.success_radius, torch.bool)
        self._grid = torch.full((n, s * s), oh.WALL, dtype=torch.long, device=dev)
        self._views = torch.zeros(n, s * s * 4 * v, dtype=torch.uint8, device=dev)  # code + 1
        self._seen = torch.zeros(n, v, dtype=torch.uint8, device=dev)  # the current rows of _views
        self._dist = torch.zeros(n, cfg.num_categories * s * s, dtype=torch.long, device=dev)
        self._episodes = torch.zeros(n, cfg.trial_len + 1, 4, dtype=torch.long, device=dev)
        zeros = lambda: torch.zeros(n, dtype=torch.long, device=dev)  # noqa: E731
        self._cell, self._heading, self._target = zeros(), zeros(), zeros()  # cell: row * size + col
        self._ep_index, self._ep_t, self._trial_t = zeros(), zeros(), zeros()
        self._d, self._d0, self._path = zeros(), zeros(), zeros()

    def _make_specs(self) -> None:
        shape, dev, cfg = self.batch_size, self.device, self.config
        h, w, c = cfg.view_shape
        flag = dict(n=2, shape=(*shape, 1), dtype=torch.bool, device=dev)
        box = lambda lo, dim: Bounded(lo, 1.0, shape=(*shape, dim), dtype=torch.float32, device=dev)  # noqa: E731
        self.observation_spec = Composite(
            view=box(0.0, h * w * c),
            target=box(0.0, cfg.num_categories),
            gps=box(0.0, 2),
            heading=box(-1.0, 2),
            episode_start=Categorical(**flag),
            episode_index=Unbounded((*shape, 1), dtype=torch.int64, device=dev),
            success=Categorical(**flag),
            episode_end=Categorical(**flag),
            spl=box(0.0, 1),
            shape=shape,
            device=dev,
        )
        self.action_spec = Categorical(NUM_ACTIONS, shape=shape, dtype=torch.int64, device=dev)
        self.reward_spec = Unbounded((*shape, 1), dtype=torch.float32, device=dev)
        self.done_spec = Composite(
            done=Categorical(**flag), terminated=Categorical(**flag), truncated=Categorical(**flag),
            shape=shape, device=dev,
        )

    def _set_seed(self, seed: int | None) -> None:
        self._rngs = env_rngs(seed, self.num_envs)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        mask = torch.ones(self.num_envs, dtype=torch.bool) if mask is None else mask.reshape(-1).cpu()
        idx = mask.nonzero().squeeze(-1).tolist()
        if idx:
            self._load_houses(idx)
        false = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        zero = torch.zeros(self.num_envs, 1, dtype=torch.float32, device=self.device)
        return self._output(~false, false, false, zero, false)

    def _load_houses(self, idx: list[int]) -> None:
        """New houses (one loop over the envs being reset) and their first inner episodes."""
        cfg = self.config
        houses = [cfg.new_house(self._rngs[i], self.geom) for i in idx]
        grids = np.stack([h.grid for h in houses])
        dist = oh.geodesic_distances(grids == oh.FREE, np.stack([h.goal for h in houses]))
        as_t = lambda x: torch.as_tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
        i = as_t(idx)
        self._grid.index_copy_(0, i, as_t(grids).flatten(1))
        views = torch.as_tensor(np.stack([h.views for h in houses]) + 1, dtype=torch.uint8, device=self.device)
        self._views.index_copy_(0, i, views.flatten(1))
        self._dist.index_copy_(0, i, as_t(dist).flatten(1))
        self._episodes.index_copy_(0, i, as_t(np.stack([h.episodes for h in houses])))
        new = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device).index_fill_(0, i, True)
        self._ep_index, self._trial_t = self._ep_index.masked_fill(new, 0), self._trial_t.masked_fill(new, 0)
        self._start_episodes(new)

    def _start_episodes(self, which: torch.Tensor) -> None:
        """Load the next pre-drawn inner episode where ``which [N]`` is true."""
        ep = self._episodes.gather(1, self._ep_index[:, None, None].expand(-1, 1, 4)).squeeze(1)
        target, row, col, heading = ep.unbind(-1)
        cell = row * self.config.size + col
        d0 = self._distance(target, cell)
        self._target = torch.where(which, target, self._target)
        self._cell = torch.where(which, cell, self._cell)
        self._heading = torch.where(which, heading, self._heading)
        self._d0 = torch.where(which, d0, self._d0)
        self._d = torch.where(which, d0, self._d)
        self._path = torch.where(which, 0, self._path)
        self._ep_t = torch.where(which, 0, self._ep_t)

    def _distance(self, target: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self._dist.gather(1, (target * self.config.size**2 + cell)[:, None]).squeeze(1)

    def _see(self) -> torch.Tensor:
        """View-table rows of the current poses: uint8 ``[N, V]`` codes + 1 (0 where hidden)."""
        v = self._window.numel()
        return self._views.gather(1, (self._cell * 4 + self._heading)[:, None] * v + self._window)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        cfg = self.config
        action = batched_action(tensordict.get("action", None), self.num_envs, NUM_ACTIONS)
        stop, forward = action == STOP, action == FORWARD
        hits = self._close & (self._seen == (oh.OBJECT + 1 + self._target)[:, None])
        success = stop & hits.any(-1)
        ahead = self._cell + self._step_offsets.index_select(0, self._heading)
        moves = forward & (self._grid.gather(1, ahead[:, None]).squeeze(1) == oh.FREE)
        self._cell = torch.where(moves, ahead, self._cell)
        self._path = self._path + moves
        self._heading = (self._heading + self._turns.index_select(0, action)) % 4
        d = self._distance(self._target, self._cell)
        # float64 in the same order as the gymnasium class, so the two agree exactly
        reward = cfg.slack_reward + cfg.progress_reward * (self._d - d).double() + cfg.success_reward * success.double()
        self._d, self._ep_t, self._trial_t = d, self._ep_t + 1, self._trial_t + 1
        end = stop | (self._ep_t >= cfg.episode_len)
        spl = torch.zeros(self.num_envs, 1, device=self.device)
        if bool(end.any()):
            spl = torch.where(end, success.double() * self._d0 / torch.maximum(self._d0, self._path), 0.0)
            spl = spl.float()[:, None]
            self._ep_index = self._ep_index + end
            self._start_episodes(end)
        done = (self._trial_t >= cfg.trial_len)[:, None]
        out = self._output(end[:, None], success[:, None], end[:, None], spl, done)
        out.set("reward", reward.float()[:, None])
        return out

    def _output(self, episode_start, success, episode_end, spl, done) -> TensorDictBase:
        """Observations of the current poses plus the given ``[N, 1]`` entries."""
        self._seen = self._see()
        view = self._channels.index_select(0, self._seen.flatten().long()).view(self.num_envs, -1)
        return TensorDict(
            {
                "view": view,
                "target": self._targets.index_select(0, self._target),
                "gps": self._gps.index_select(0, self._cell),
                "heading": self._heading_vec.index_select(0, self._heading),
                "episode_start": episode_start,
                "episode_index": self._ep_index[:, None].clone(),
                "success": success,
                "episode_end": episode_end,
                "spl": spl,
                "done": done,
                "terminated": done.clone(),
                "truncated": done.clone(),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def render_frame(self, index: int = 0) -> np.ndarray:
        """An RGB ``uint8 [H, W, 3]`` picture of env ``index`` (see :func:`render.render_objnav`)."""
        from lightning_memo.envs.render import render_objnav

        size = self.config.size
        grid = self._grid[index].view(size, size).cpu().numpy()
        row, col = divmod(int(self._cell[index]), size)
        heading = int(self._heading[index])
        visible = (self._seen[index] > 0).cpu().numpy()
        cells = np.array([row, col]) + self.geom.offsets[heading][visible]
        return render_objnav(grid, (row, col), heading, int(self._target[index]), cells)

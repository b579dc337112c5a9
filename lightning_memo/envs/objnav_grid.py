"""ObjNavGrid: the task structure of ExtObjNav on procedurally generated grid houses.

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

:class:`ObjNavGridGym` is :class:`ObjNavGridEnv` with one row, so env ``i`` of ``ObjNavGridEnv(seed=s)``
plays exactly the trials of ``ObjNavGridGym`` reset with ``seed=s + i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from lightning_memo.envs import objnav_house as oh
from lightning_memo.envs._common import FLAG_KEYS, TrialEnv, TrialGym, check_float, check_int

STOP, FORWARD, LEFT, RIGHT = range(4)
NUM_ACTIONS = 4
OBSERVATION_KEYS = ("view", "target", "gps", "heading")


@dataclass(frozen=True)
class ObjNavGridConfig:
    """The task knobs shared by :class:`ObjNavGridGym` and :class:`ObjNavGridEnv` (validated)."""

    size: int = 17
    """Side of the square house in cells, outer walls included; 5 to 128."""
    num_categories: int = 8
    """K: object categories (the target is one of them); 1 to 100."""
    objects_per_category: int = 1
    """Instances of each category placed per house; >= 1."""
    view_depth: int = 4
    """D: rows of the egocentric view ahead of the agent (a 90 degree wedge, occluded by walls); >= 1."""
    success_radius: float = 1.5
    """STOP succeeds with a visible target instance within this many cells; 1 to ``view_depth``."""
    episode_len: int = 100
    """Steps an inner episode lasts at most; >= 1."""
    trial_len: int = 1000
    """Steps of a trial (inner episodes in the same house); >= 1."""
    slack_reward: float = -0.003
    """Reward of every step."""
    progress_reward: float = 0.25
    """Reward per cell the BFS distance to the nearest goal viewpoint shrinks (negative when it grows)."""
    success_reward: float = 2.0
    """Reward of a successful STOP."""

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


class ObjNavGridEnv(TrialEnv):
    """``num_envs`` ObjNavGrid trials as tensors (TorchRL ``EnvBase``, ``batch_size=[N]``).

    Outputs: ``view``/``target``/``gps``/``heading`` (float32, see the module docstring; listed in
    ``observation_keys``), the flags of :class:`~lightning_memo.envs._common.TrialEnv` and ``spl``
    float32 ``[N, 1]`` (valid where ``episode_end``). Action: ``Categorical(4)`` integers ``[N]``.
    Houses are built per env at reset with a numpy Generator seeded ``seed + i``; steps are tensor ops.
    Other keyword arguments are the fields of :class:`ObjNavGridConfig`.
    """

    observation_keys = OBSERVATION_KEYS
    num_actions = NUM_ACTIONS
    config_cls = ObjNavGridConfig

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str | None = None,
        seed: int | None = None,
        **config: Any,
    ):
        cfg = ObjNavGridConfig(**config)
        super().__init__(num_envs, cfg.trial_len, device, seed)
        self.config, self.view_shape = cfg, cfg.view_shape
        h, w, c = cfg.view_shape
        self._make_specs(
            dict(
                view=self._box(0.0, 1.0, h * w * c),
                target=self._box(0.0, 1.0, cfg.num_categories),
                gps=self._box(0.0, 1.0, 2),
                heading=self._box(-1.0, 1.0, 2),
            ),
            spl=self._box(0.0, 1.0, 1),
        )
        geom = self.geom = oh.view_geometry(cfg.view_depth)
        n, dev, s, v = self.num_envs, self.device, cfg.size, geom.offsets.shape[1]
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

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        idx = self._reset_rows(tensordict).tolist()
        if idx:
            self._load_houses(idx)
        spl = torch.zeros(self.num_envs, device=self.device)
        return self._reset_output(self._observe(), self._ep_index, spl=spl)

    def _load_houses(self, idx: list[int]) -> None:
        """New houses (one loop over the envs being reset) and their first inner episodes."""
        cfg = self.config
        houses = [cfg.new_house(self.rngs[i], self.geom) for i in idx]
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

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        cfg = self.config
        action = self._action(tensordict)
        stop, forward = action == STOP, action == FORWARD
        hits = self._close & (self._seen == (oh.OBJECT + 1 + self._target)[:, None])
        success = stop & hits.any(-1)
        ahead = self._cell + self._step_offsets.index_select(0, self._heading)
        moves = forward & (self._grid.gather(1, ahead[:, None]).squeeze(1) == oh.FREE)
        self._cell = torch.where(moves, ahead, self._cell)
        self._path = self._path + moves
        self._heading = (self._heading + self._turns.index_select(0, action)) % 4
        d = self._distance(self._target, self._cell)
        reward = cfg.slack_reward + cfg.progress_reward * (self._d - d).double() + cfg.success_reward * success.double()
        self._d, self._ep_t, self._trial_t = d, self._ep_t + 1, self._trial_t + 1
        end = stop | (self._ep_t >= cfg.episode_len)
        spl = torch.zeros(self.num_envs, device=self.device)
        if bool(end.any()):
            spl = torch.where(end, success.double() * self._d0 / torch.maximum(self._d0, self._path), 0.0).float()
            self._ep_index = self._ep_index + end
            self._start_episodes(end)
        return self._output(
            self._observe(), episode_start=end, episode_index=self._ep_index, success=success, episode_end=end,
            done=self._trial_t >= cfg.trial_len, spl=spl, reward=reward.float(),
        )

    def _observe(self) -> dict[str, torch.Tensor]:
        """The observations of the current poses (and the view-table rows they read, kept in ``_seen``)."""
        v = self._window.numel()
        self._seen = self._views.gather(1, (self._cell * 4 + self._heading)[:, None] * v + self._window)
        view = self._channels.index_select(0, self._seen.flatten().long()).view(self.num_envs, -1)
        return {
            "view": view,
            "target": self._targets.index_select(0, self._target),
            "gps": self._gps.index_select(0, self._cell),
            "heading": self._heading_vec.index_select(0, self._heading),
        }

    def visible_cells(self, index: int = 0) -> np.ndarray:
        """World ``(row, col)`` of the cells env ``index`` sees now, int64 ``[M, 2]``."""
        row, col = divmod(int(self._cell[index]), self.config.size)
        visible = (self._seen[index] > 0).cpu().numpy()
        return np.array([row, col]) + self.geom.offsets[int(self._heading[index])][visible]

    def render_frame(self, index: int = 0) -> np.ndarray:
        """An RGB ``uint8 [H, W, 3]`` picture of env ``index`` (see :func:`render.render_objnav`)."""
        from lightning_memo.envs.render import render_objnav

        size = self.config.size
        grid = self._grid[index].view(size, size).cpu().numpy()
        pos = divmod(int(self._cell[index]), size)
        return render_objnav(grid, pos, int(self._heading[index]), int(self._target[index]), self.visible_cells(index))


def _row_state(name: str, doc: str) -> property:
    """A read-only ``int`` property: the one row of the batched env's state tensor ``name``."""
    return property(lambda self: int(getattr(self.batched, name)[0]), doc=doc)


class ObjNavGridGym(TrialGym):
    """One ObjNavGrid trial per ``reset`` (gymnasium API, seeded through ``np_random``).

    :class:`ObjNavGridEnv` with one row. Observation ``Dict(view, target, gps, heading)``, action
    ``Discrete(4)``; ``info`` holds ``episode_start``, ``episode_index``, ``episode_end``, ``success``,
    ``spl``. Keyword arguments are the fields of :class:`ObjNavGridConfig`. The read-only properties
    below show the current state (the house, the pose, what the view sees) to scripted agents.
    """

    info_keys = (*FLAG_KEYS, "spl")

    def __init__(self, render_mode: str | None = None, **config: Any):
        super().__init__(ObjNavGridEnv(1, **config), render_mode)
        self.config, self.geom = self.batched.config, self.batched.geom

    @property
    def grid(self) -> np.ndarray:
        """The house: cell codes int64 ``[S, S]`` (``objnav_house.FREE``, ``WALL``, ``OBJECT + k``)."""
        return self.batched._grid[0].view(self.config.size, self.config.size).cpu().numpy()

    @property
    def distances(self) -> np.ndarray:
        """BFS distances (cells) to the goal viewpoints of each category, int64 ``[K, S, S]``."""
        s = self.config.size
        return self.batched._dist[0].view(self.config.num_categories, s, s).cpu().numpy()

    @property
    def pos(self) -> np.ndarray:
        """The agent's cell ``(row, col)``, int64 ``[2]``."""
        return np.array(divmod(int(self.batched._cell[0]), self.config.size))

    @property
    def seen(self) -> np.ndarray:
        """Codes of the view window cells from the current pose, ``UNSEEN`` where hidden: int8 ``[V]``."""
        return self.batched._seen[0].cpu().numpy().astype(np.int8) - 1

    heading = _row_state("_heading", "0..3 = north, east, south, west.")
    target = _row_state("_target", "The target category of this inner episode.")
    goal_distance = _row_state("_d", "The BFS distance from the agent's cell to the target's nearest goal viewpoint.")
    episode_steps = _row_state("_ep_t", "Steps taken in this inner episode.")
    path_length = _row_state("_path", "Cells moved in this inner episode.")

    def visible_cells(self) -> np.ndarray:
        """World ``(row, col)`` of the cells visible now, int64 ``[M, 2]``."""
        return self.batched.visible_cells(0)

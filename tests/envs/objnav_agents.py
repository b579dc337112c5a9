"""Scripted ObjNavGrid agents: one that remembers where it saw objects, one that forgets each episode.

Both know which cells are walkable (a floor plan) but learn object categories only from what their
view shows; the forgetful one clears that knowledge at every inner-episode start.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from lightning_memo.envs import objnav_house as oh
from lightning_memo.envs.objnav_grid import FORWARD, LEFT, RIGHT, STOP, ObjNavGridGym


def _bfs_path(free: np.ndarray, start: tuple[int, int], goals: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Shortest 4-connected path (excluding ``start``) to the nearest goal; [] if none or at one."""
    if start in goals:
        return []
    parent = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for dr, dc in oh.FORWARD:
            nxt = (cell[0] + dr, cell[1] + dc)
            if free[nxt] and nxt not in parent:
                parent[nxt] = cell
                if nxt in goals:
                    path = [nxt]
                    while parent[path[-1]] != start:
                        path.append(parent[path[-1]])
                    return path[::-1]
                queue.append(nxt)
    return []


def _turn_towards(heading: int, want: int) -> int:
    return LEFT if (want - heading) % 4 == 3 else RIGHT


class ScriptedAgent:
    """Explore to the nearest unseen cell until a target instance is known, then go to it and STOP."""

    def __init__(self, remember: bool):
        self.remember = remember

    def reset_trial(self) -> None:
        self.objects: dict[tuple[int, int], int] = {}
        self.seen: set[tuple[int, int]] = set()

    def act(self, env: ObjNavGridGym, episode_start: bool) -> int:
        if episode_start and not self.remember:
            self.reset_trial()
        pos, heading = (int(env.pos[0]), int(env.pos[1])), env.heading
        cells = [tuple(c) for c in env.visible_cells().tolist()]
        codes = env.seen[env.seen != oh.UNSEEN]  # what the view shows, in the same order
        self.seen.update(cells)
        for cell, code in zip(cells, codes.tolist()):
            if code >= oh.OBJECT:
                self.objects[cell] = code - oh.OBJECT
        close = env.geom.distance <= env.config.success_radius
        if (close & (env.seen == oh.OBJECT + env.target)).any():
            return STOP
        free = env.grid == oh.FREE
        known = [cell for cell, k in self.objects.items() if k == env.target]
        if known:
            beside = {(r + dr, c + dc) for r, c in known for dr, dc in oh.FORWARD if free[r + dr, c + dc]}
            path = _bfs_path(free, pos, beside)
            if not path:  # next to it: face it
                r, c = next((r, c) for r, c in known if abs(r - pos[0]) + abs(c - pos[1]) == 1)
                want = next(h for h in range(4) if tuple(oh.FORWARD[h]) == (r - pos[0], c - pos[1]))
                return _turn_towards(heading, want)
        else:
            unseen = {tuple(c) for c in np.argwhere(free).tolist()} - self.seen
            path = _bfs_path(free, pos, unseen)
            if not path:
                return LEFT
        step = (path[0][0] - pos[0], path[0][1] - pos[1])
        want = next(h for h in range(4) if tuple(oh.FORWARD[h]) == step)
        return FORWARD if want == heading else _turn_towards(heading, want)


def run_trial(env: ObjNavGridGym, agent: ScriptedAgent, seed: int) -> tuple[list[int], list[dict]]:
    """One trial; returns the actions taken and the ``info`` of each step."""
    env.reset(seed=seed)
    agent.reset_trial()
    actions, infos, start, over = [], [], True, False
    while not over:
        action = agent.act(env, start)
        _, _, over, _, info = env.step(action)
        actions.append(action)
        infos.append(info)
        start = info["episode_start"]
    return actions, infos

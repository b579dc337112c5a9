"""Procedural multi-room houses, the egocentric view geometry and BFS geodesics for ObjNavGrid (numpy).

Coordinates are ``(row, col)``; headings 0..3 = north, east, south, west (north is row - 1). A grid
holds cell codes: ``FREE``, ``WALL`` or ``OBJECT + k`` for an instance of category ``k``. Objects
block movement but not sight; walls block both.

The view is a wedge in front of the agent: cells at forward distance ``f = 0..D`` and lateral offset
``l = -D..D`` (right positive) with ``|l| <= f`` (a 90 degree field of view), stored in a window of
``(D + 1) x (2D + 1)`` cells, row ``D - f`` and column ``l + D`` (farthest row first). A cell is
visible when it is in the wedge and no wall lies on the line between it and the agent. Each house
carries its view table: what every free cell sees in every heading, so a step is a lookup.

Everything random here draws from the ``np.random.Generator`` it is given, in a fixed order, so the
gymnasium and batched envs build the same houses from the same seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FREE, WALL, OBJECT = 0, 1, 2
UNSEEN = -1  # view-table entry of a window cell that is not visible
MAX_CATEGORIES = 100  # codes fit in int8
FORWARD = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int64)  # (drow, dcol) per heading
MIN_ROOM, MAX_ROOM = 3, 7  # room interior side lengths the splitter aims for


@dataclass(frozen=True)
class ViewGeometry:
    """Fixed egocentric window data; ``V = (D + 1) * (2D + 1)`` window cells."""

    depth: int
    """D: rows of the window ahead of the agent."""
    offsets: np.ndarray
    """int64 [4, V, 2]: world (drow, dcol) of each window cell per heading."""
    between: np.ndarray
    """int64 [V, B]: cells strictly between the agent and v (padded with V)."""
    cone: np.ndarray
    """bool [V]: inside the 90 degree wedge."""
    distance: np.ndarray
    """float64 [V]: Euclidean distance to the agent's cell."""


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def view_geometry(depth: int) -> ViewGeometry:
    """The window of a view ``depth`` cells deep (see the module docstring for the layout)."""
    rows, cols = depth + 1, 2 * depth + 1
    f = (depth - np.arange(rows))[:, None].repeat(cols, 1).ravel()
    l = (np.arange(cols) - depth)[None, :].repeat(rows, 0).ravel()
    right = FORWARD[[1, 2, 3, 0]]
    offsets = f[None, :, None] * FORWARD[:, None, :] + l[None, :, None] * right[:, None, :]
    index = {(fi, li): v for v, (fi, li) in enumerate(zip(f.tolist(), l.tolist()))}
    lines = []
    for fv, lv in zip(f.tolist(), l.tolist()):
        t = np.linspace(0.0, 1.0, 4 * max(abs(fv), abs(lv)) + 1)[1:-1]
        cells = set(zip(_round_half_away(t * fv).tolist(), _round_half_away(t * lv).tolist()))
        lines.append(sorted(index[c] for c in cells - {(0, 0), (fv, lv)}))
    between = np.full((f.size, max(map(len, lines))), f.size, np.int64)
    for v, line in enumerate(lines):
        between[v, : len(line)] = line
    return ViewGeometry(depth, offsets, between, np.abs(l) <= f, np.hypot(f, l))


def visible(codes: np.ndarray, geom: ViewGeometry) -> np.ndarray:
    """Visibility ``bool [..., V]`` of window cells with codes ``[..., V]``."""
    walls = np.concatenate([codes == WALL, np.zeros_like(codes[..., :1], bool)], -1)  # index V: no wall
    return geom.cone & ~walls[..., geom.between].any(-1)


def window_codes(padded: np.ndarray, rc: np.ndarray, heading: np.ndarray, geom: ViewGeometry) -> np.ndarray:
    """Codes ``[..., V]`` seen from cells ``rc [..., 2]`` facing ``heading [...]``.

    ``padded`` is the grid with ``geom.depth`` extra wall cells on each side.
    """
    side = padded.shape[1]
    cells = rc[..., None, :] + geom.offsets[heading] + geom.depth
    return padded.ravel().take(cells[..., 0] * side + cells[..., 1])  # flat take: cheaper than 2-D indexing


def pad_grid(grid: np.ndarray, depth: int) -> np.ndarray:
    return np.pad(grid, depth, constant_values=WALL)


@dataclass
class House:
    """One trial's house: layout, view table, goal viewpoints and the pre-drawn inner episodes."""

    grid: np.ndarray
    """int64 [S, S]: cell codes."""
    views: np.ndarray
    """int8 [S, S, 4, V]: codes seen from each cell and heading, UNSEEN if hidden."""
    goal: np.ndarray
    """bool [K, S, S]: from here, some heading sees category k within the radius."""
    episodes: np.ndarray
    """int64 [E, 4]: target, row, col, heading of inner episode e."""


def view_table(grid: np.ndarray, geom: ViewGeometry) -> np.ndarray:
    """``int8 [S, S, 4, V]``: window codes seen from every free cell in every heading (else UNSEEN)."""
    size = grid.shape[0]
    views = np.full((size, size, 4, geom.offsets.shape[1]), UNSEEN, np.int8)
    free = np.argwhere(grid == FREE)
    codes = window_codes(pad_grid(grid, geom.depth), free[:, None, :], np.arange(4)[None, :], geom)
    views[free[:, 0], free[:, 1]] = np.where(visible(codes, geom), codes, UNSEEN)
    return views


def _touches(mask: np.ndarray) -> np.ndarray:
    """Cells with a 4-neighbour in ``mask`` (``bool [S, S]``)."""
    out = np.zeros_like(mask)
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _split_rooms(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``[S, S]`` and door mask: outer walls plus recursive wall lines with one door each."""
    grid = np.full((size, size), WALL, np.int64)
    grid[1:-1, 1:-1] = FREE
    door = np.zeros((size, size), bool)
    stack = [(1, 1, size - 2, size - 2)]  # inclusive interior bounds r0, c0, r1, c1
    while stack:
        r0, c0, r1, c1 = stack.pop()
        h, w = r1 - r0 + 1, c1 - c0 + 1
        # a wall line must not end in front of an existing door
        rows = [r for r in range(r0 + MIN_ROOM, r1 - MIN_ROOM + 1) if not (door[r, c0 - 1] or door[r, c1 + 1])]
        cols = [c for c in range(c0 + MIN_ROOM, c1 - MIN_ROOM + 1) if not (door[r0 - 1, c] or door[r1 + 1, c])]
        if not (rows or cols) or (max(h, w) <= MAX_ROOM and rng.random() < 0.5):
            continue
        horizontal = bool(rows) and (not cols or h > w or (h == w and rng.random() < 0.5))
        if horizontal:
            r = rows[rng.integers(len(rows))]
            grid[r, c0 : c1 + 1] = WALL
            d = (r, c0 + rng.integers(w))
            stack += [(r0, c0, r - 1, c1), (r + 1, c0, r1, c1)]
        else:
            c = cols[rng.integers(len(cols))]
            grid[r0 : r1 + 1, c] = WALL
            d = (r0 + rng.integers(h), c)
            stack += [(r0, c0, r1, c - 1), (r0, c + 1, r1, c1)]
        grid[d], door[d] = FREE, True
    return grid, door


_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # around a cell, in order


def _keeps_connected(free: np.ndarray, r: int, c: int) -> bool:
    """Whether blocking free cell ``(r, c)`` keeps the free cells connected.

    True when the free cells of its 8-ring that touch it (4-adjacent) lie in one run along the ring:
    any path through the cell can then go around it.
    """
    ring = [bool(free[r + dr, c + dc]) for dr, dc in _RING]
    if all(ring):
        return True
    runs_touching = 0
    for i in range(8):
        if ring[i] and not ring[i - 1]:  # a run of free ring cells starts at i
            j, touches = i, False
            while ring[j % 8]:
                touches |= j % 2 == 1  # odd ring positions are the 4-neighbours
                j += 1
            runs_touching += touches
    return runs_touching == 1


def goal_viewpoints(views: np.ndarray, geom: ViewGeometry, num_categories: int, radius: float) -> np.ndarray:
    """``bool [K, S, S]``: cells from which some heading sees an instance of k within ``radius``."""
    close = views[..., np.flatnonzero(geom.distance <= radius)]  # [S, S, 4, window cells in reach]
    r, c, _, _ = hits = np.nonzero(close >= OBJECT)
    goal = np.zeros((num_categories, *views.shape[:2]), bool)
    goal[close[hits] - OBJECT, r, c] = True
    return goal


def generate_house(
    rng: np.random.Generator,
    size: int,
    num_categories: int,
    objects_per_category: int,
    geom: ViewGeometry,
    success_radius: float,
    num_episodes: int,
) -> House:
    """A house with every category present and reachable, and ``num_episodes`` inner episodes.

    Objects stand against walls, away from doors, and never where they would cut the free cells
    apart (so every free cell can reach every goal).
    """
    grid, door = _split_rooms(rng, size)
    spots = rng.permutation(np.flatnonzero((grid == FREE) & _touches(grid == WALL) & ~door & ~_touches(door)))
    placed, free = grid.copy(), grid == FREE
    spot = iter(spots.tolist())
    for k in np.repeat(np.arange(num_categories), objects_per_category).tolist():
        for cell in spot:
            r, c = divmod(cell, size)
            if _keeps_connected(free, r, c):
                placed[r, c], free[r, c] = OBJECT + k, False
                break
        else:
            raise ValueError(
                f"a {size}x{size} house has no room for {num_categories} x {objects_per_category} "
                "objects; use a larger size or fewer objects."
            )
    views = view_table(placed, geom)
    goal = goal_viewpoints(views, geom, num_categories, success_radius)
    if not ((free & ~goal).any(axis=(1, 2)) & goal.any(axis=(1, 2))).all():
        raise ValueError(
            f"a {size}x{size} house leaves a category without a viewpoint or a start cell "
            f"at success_radius={success_radius}; use a larger size or a smaller radius."
        )
    return House(placed, views, goal, _draw_episodes(rng, placed, goal, num_episodes))


def _draw_episodes(rng: np.random.Generator, grid: np.ndarray, goal: np.ndarray, n: int) -> np.ndarray:
    """``[n, 4]`` (target, row, col, heading): uniform target, start uniform over non-goal free cells."""
    targets = rng.integers(goal.shape[0], size=n)
    u = rng.random(n)
    headings = rng.integers(4, size=n)
    allowed = ((grid == FREE) & ~goal).reshape(goal.shape[0], -1)  # [K, S * S]
    cells = np.argsort(~allowed, axis=1, kind="stable")  # row k: its allowed cells first, in order
    starts = cells[targets, (u * allowed.sum(1)[targets]).astype(np.int64)]
    rows, cols = np.divmod(starts, grid.shape[1])
    return np.stack([targets, rows, cols, headings], axis=1)


def geodesic_distances(free: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """BFS step counts ``int16 [B, K, S, S]`` to the nearest goal cell over 4-connected free cells.

    ``free [B, S, S]``, ``goal [B, K, S, S]``; unreachable (and blocked) cells get ``S * S``.
    Relaxation over whole arrays, one sweep per BFS layer (int16 keeps the sweeps cheap).
    """
    far = free.shape[-1] * free.shape[-2]
    blocked = np.where(free, 0, far).astype(np.int16)[:, None]
    dist = np.where(goal, 0, far).astype(np.int16)
    while True:
        step, best = dist + np.int16(1), dist.copy()
        np.minimum(best[..., 1:, :], step[..., :-1, :], out=best[..., 1:, :])
        np.minimum(best[..., :-1, :], step[..., 1:, :], out=best[..., :-1, :])
        np.minimum(best[..., :, 1:], step[..., :, :-1], out=best[..., :, 1:])
        np.minimum(best[..., :, :-1], step[..., :, 1:], out=best[..., :, :-1])
        np.maximum(best, blocked, out=best)
        if np.array_equal(best, dist):
            return dist
        dist = best

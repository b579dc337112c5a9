"""Pictures for people: RGB frames of both tasks and trial GIFs / PNG strips.

Frames are ``uint8 [H, W, 3]`` numpy arrays drawn with numpy alone; only :func:`save_trial` needs
Pillow (imported when called).
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np

from lightning_memo.envs.objnav_house import FORWARD, OBJECT, WALL

FLOOR = (236, 236, 228)
GRID_LINE = (205, 205, 198)
WALL_RGB = (60, 60, 70)
AGENT = (220, 40, 40)
KEY = (235, 185, 20)
DOOR = (120, 72, 30)
START = (70, 150, 220)
SEEN = (255, 236, 150)


def category_colors(k: int) -> np.ndarray:
    """``uint8 [k, 3]`` distinct colours (evenly spaced hues)."""
    rgb = [colorsys.hsv_to_rgb((i / max(k, 1) + 0.55) % 1.0, 0.75, 0.85) for i in range(k)]
    return (np.array(rgb) * 255).astype(np.uint8).reshape(k, 3)


def _canvas(rows: int, cols: int, cell: int, bar: int) -> np.ndarray:
    img = np.empty((bar + rows * cell, cols * cell, 3), np.uint8)
    img[:] = FLOOR
    img[bar::cell, :] = GRID_LINE
    img[bar:, ::cell] = GRID_LINE
    return img


def _fill(img: np.ndarray, r: int, c: int, cell: int, bar: int, rgb, margin: int = 0) -> None:
    y, x = bar + r * cell, c * cell
    img[y + margin : y + cell - margin, x + margin : x + cell - margin] = rgb


def _outline(img: np.ndarray, r: int, c: int, cell: int, bar: int, rgb, width: int = 2) -> None:
    y, x = bar + r * cell, c * cell
    for sl in (np.s_[y : y + width, x : x + cell], np.s_[y + cell - width : y + cell, x : x + cell],
               np.s_[y : y + cell, x : x + width], np.s_[y : y + cell, x + cell - width : x + cell]):
        img[sl] = rgb


def _shape_mask(cell: int, heading: int | None) -> np.ndarray:
    """``bool [cell, cell]``: a triangle pointing along ``heading`` (0..3 = N, E, S, W) or a disc."""
    u = (np.arange(cell) + 0.5) / cell - 0.5
    y, x = np.meshgrid(u, u, indexing="ij")
    if heading is None:
        return x**2 + y**2 <= 0.33**2
    fy, fx = FORWARD[heading]
    ahead, side = fy * y + fx * x, fx * y - fy * x  # coordinates along and across the heading
    return (ahead >= -0.35) & (ahead <= 0.4) & (np.abs(side) <= (0.4 - ahead) * 0.5)


def _stamp(img: np.ndarray, r: int, c: int, cell: int, bar: int, rgb, heading: int | None = None) -> None:
    y, x = bar + r * cell, c * cell
    img[y : y + cell, x : x + cell][_shape_mask(cell, heading)] = rgb


def render_dktd(
    size: int,
    pos: Sequence[int],
    key: Sequence[int],
    door: Sequence[int],
    start: Sequence[int],
    has_key: bool,
    cell: int = 24,
) -> np.ndarray:
    """Dark-Key-To-Door from above: start (blue outline), key (gold, until taken), door (brown),
    agent (red disc). The top bar is gold while the agent holds the key. Cells are ``(x, y)``."""
    bar = cell // 3
    img = _canvas(size, size, cell, bar)
    img[:bar] = KEY if has_key else (150, 150, 150)
    _fill(img, door[1], door[0], cell, bar, DOOR, margin=2)
    if not has_key:
        _fill(img, key[1], key[0], cell, bar, KEY, margin=cell // 4)
    _outline(img, start[1], start[0], cell, bar, START)
    _stamp(img, pos[1], pos[0], cell, bar, AGENT)
    return img


def render_objnav(
    grid: np.ndarray,
    pos: Sequence[int],
    heading: int,
    target: int | None = None,
    visible: np.ndarray | None = None,
    cell: int = 16,
) -> np.ndarray:
    """An ObjNavGrid house from above: walls, objects (one colour per category, the target's framed
    in red), the visible cells (pale yellow) and the agent (red triangle along its heading). The top
    bar shows the target's colour. ``grid [S, S]`` cell codes, ``pos = (row, col)``, ``visible [M, 2]``."""
    grid = np.asarray(grid)
    k = max(int(grid.max()) - OBJECT + 1, (target or 0) + 1, 1)
    colors = category_colors(k)
    bar = cell // 2
    img = _canvas(*grid.shape, cell, bar)
    img[:bar] = colors[target] if target is not None else (150, 150, 150)
    for r, c in np.asarray(visible if visible is not None else np.zeros((0, 2)), dtype=np.int64):
        if grid[r, c] != WALL:
            _fill(img, r, c, cell, bar, SEEN, margin=1)
    for r, c in np.argwhere(grid == WALL):
        _fill(img, r, c, cell, bar, WALL_RGB)
    for r, c in np.argwhere(grid >= OBJECT):
        category = int(grid[r, c]) - OBJECT
        _fill(img, r, c, cell, bar, colors[category], margin=2)
        if category == target:
            _outline(img, r, c, cell, bar, AGENT)
    _stamp(img, pos[0], pos[1], cell, bar, AGENT, heading)
    return img


def save_trial(frames: Sequence[np.ndarray], path: str | Path, fps: int = 8, columns: int = 10) -> Path:
    """Save frames as an animated ``.gif`` or a ``.png`` contact sheet (``columns`` frames a row)."""
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("save_trial needs Pillow: pip install pillow") from err
    path = Path(path)
    if not frames:
        raise ValueError("save_trial got no frames.")
    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    if len({f.shape for f in frames}) != 1:
        raise ValueError("all frames must have the same shape.")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    elif suffix == ".png":
        h, w, _ = frames[0].shape
        cols = min(columns, len(frames))
        rows = -(-len(frames) // cols)
        sheet = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
        for i, f in enumerate(frames):
            y, x = (i // cols) * (h + 2), (i % cols) * (w + 2)
            sheet[y : y + h, x : x + w] = f
        Image.fromarray(sheet).save(path)
    else:
        raise ValueError(f"save_trial writes .gif or .png, got {path.name!r}.")
    return path

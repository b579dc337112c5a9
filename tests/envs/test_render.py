import numpy as np
import pytest

from lightning_memo.envs import (
    DarkKeyToDoorEnv,
    DarkKeyToDoorGym,
    ObjNavGridEnv,
    ObjNavGridGym,
    render_dktd,
    render_objnav,
    save_trial,
)
from lightning_memo.envs import render as rd
from lightning_memo.envs.objnav_house import OBJECT, WALL


def pixel(img, row, col, cell, bar):
    """The colour at the centre of a cell."""
    return tuple(img[bar + row * cell + cell // 2, col * cell + cell // 2])


def test_dktd_frame_shows_agent_key_door():
    img = render_dktd(5, pos=(1, 2), key=(3, 0), door=(4, 4), start=(0, 0), has_key=False, cell=20)
    assert img.shape == (20 // 3 + 100, 100, 3) and img.dtype == np.uint8
    bar = 20 // 3
    assert pixel(img, 2, 1, 20, bar) == rd.AGENT  # (x, y) = (1, 2)
    assert pixel(img, 0, 3, 20, bar) == rd.KEY and pixel(img, 4, 4, 20, bar) == rd.DOOR
    assert pixel(img, 3, 3, 20, bar) == rd.FLOOR and tuple(img[0, 0]) != rd.KEY
    held = render_dktd(5, pos=(1, 2), key=(3, 0), door=(4, 4), start=(0, 0), has_key=True, cell=20)
    assert tuple(held[0, 0]) == rd.KEY and pixel(held, 0, 3, 20, bar) == rd.FLOOR


def test_objnav_frame_shows_walls_objects_view_and_agent():
    grid = np.full((6, 6), 0)
    grid[[0, -1]] = grid[:, [0, -1]] = WALL
    grid[1, 2], grid[4, 4] = OBJECT, OBJECT + 1
    img = render_objnav(grid, pos=(3, 2), heading=0, target=1, visible=np.array([[2, 2], [1, 2]]), cell=16)
    bar, colors = 8, rd.category_colors(2)
    assert img.shape == (bar + 96, 96, 3)
    assert pixel(img, 0, 0, 16, bar) == rd.WALL_RGB and pixel(img, 2, 2, 16, bar) == rd.SEEN
    assert pixel(img, 1, 2, 16, bar) == tuple(colors[0]) and pixel(img, 4, 4, 16, bar) == tuple(colors[1])
    assert tuple(img[bar + 4 * 16, 4 * 16]) == rd.AGENT  # the target is framed
    assert tuple(img[0, 0]) == tuple(colors[1])  # target colour in the bar
    tip, tail = img[bar + 3 * 16 + 3, 2 * 16 + 8], img[bar + 3 * 16 + 12, 2 * 16 + 2]
    assert tuple(tip) == rd.AGENT and tuple(tail) != rd.AGENT  # a triangle pointing north


def test_gym_and_batched_frames_agree():
    gym_env = DarkKeyToDoorGym(render_mode="rgb_array", size=5)
    gym_env.reset(seed=4)
    batched = DarkKeyToDoorEnv(num_envs=2, size=5, seed=3)
    batched.reset()
    np.testing.assert_array_equal(gym_env.render(), batched.render_frame(1))
    assert DarkKeyToDoorGym().render() is None  # no render_mode
    nav = ObjNavGridGym(render_mode="rgb_array", size=11, num_categories=3)
    nav.reset(seed=8)
    nav_batched = ObjNavGridEnv(num_envs=1, size=11, num_categories=3, seed=8)
    nav_batched.reset()
    np.testing.assert_array_equal(nav.render(), nav_batched.render_frame(0))


def test_save_trial_gif_and_png(tmp_path):
    from PIL import Image

    env = ObjNavGridGym(render_mode="rgb_array", size=11, num_categories=3)
    env.reset(seed=0)
    frames = [env.render()] + [env.step(a)[0] is not None and env.render() for a in (1, 2, 1, 3, 1)]
    gif = save_trial(frames, tmp_path / "trial.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 6 and im.size == frames[0].shape[1::-1]
    png = save_trial(frames, tmp_path / "trial.png", columns=4)
    h, w, _ = frames[0].shape
    with Image.open(png) as im:
        assert im.size == (4 * (w + 2), 2 * (h + 2))
    with pytest.raises(ValueError, match=".gif or .png"):
        save_trial(frames, tmp_path / "trial.mp4")
    with pytest.raises(ValueError, match="no frames"):
        save_trial([], tmp_path / "x.png")

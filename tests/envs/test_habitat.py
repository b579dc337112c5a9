import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from lightning_memo.envs import habitat as hb

HAVE_HABITAT = all(importlib.util.find_spec(m) is not None for m in ("habitat", "habitat_sim"))
NO_HABITAT = "habitat-sim/habitat-lab not installed: see docs/habitat.md"


class PooledRGBEncoder(torch.nn.Module):
    """A tiny stand-in encoder for smoke tests: RGB ``uint8 [N, H, W, 3]`` average-pooled to ``[N, 3 * grid**2]``."""

    def __init__(self, grid: int = 8):
        super().__init__()
        self.grid = grid
        self.out_dim = 3 * grid * grid

    @torch.no_grad()
    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb.permute(0, 3, 1, 2).float() / 255.0
        return torch.nn.functional.adaptive_avg_pool2d(x, self.grid).flatten(1)


def habitat_obs(goal=3, channels=3, size=256):
    """An observation dict as habitat-lab's ObjectNav task returns it (RGB sensor, objectgoal)."""
    rng = np.random.default_rng(0)
    return {
        "rgb": rng.integers(0, 256, (size, size, channels), dtype=np.uint8),
        "depth": rng.random((size, size, 1), dtype=np.float32),
        "objectgoal": np.array([goal], dtype=np.int64),
        "gps": np.zeros(2, np.float32),
        "compass": np.zeros(1, np.float32),
    }


@pytest.mark.skipif(HAVE_HABITAT, reason="habitat is installed here")
def test_missing_habitat_names_the_fix():
    for make in (hb.require_habitat, lambda: hb.HabitatObjNavEnv(config="objectnav.yaml")):
        with pytest.raises(ImportError) as err:
            make()
        message = str(err.value)
        assert 'pip install "lightning_memo[habitat]"' in message
        assert "conda install habitat-sim" in message and "docs/habitat.md" in message
        assert "habitat-sim" in message and "habitat-lab" in message


def test_convert_observation_of_habitat_shapes():
    obs = habitat_obs(goal=3)
    rgb, target = hb.convert_observation(obs, num_categories=20)
    assert rgb.shape == (256, 256, 3) and rgb.dtype == torch.uint8
    assert torch.equal(rgb, torch.from_numpy(obs["rgb"]))
    assert target.shape == (20,) and target[3] == 1 and target.sum() == 1
    rgba = habitat_obs(channels=4)
    rgb, _ = hb.convert_observation(rgba, 20)
    assert rgb.shape == (256, 256, 3)
    head = {"head_rgb": obs["rgb"], "objectgoal": obs["objectgoal"]}
    rgb, _ = hb.convert_observation(head, 20, hb.HabitatKeys(rgb="head_rgb"))
    with pytest.raises(KeyError, match="HabitatKeys"):
        hb.convert_observation(head, 20)
    with pytest.raises(ValueError, match="num_categories"):
        hb.convert_observation(habitat_obs(goal=25), 20)


def test_ground_pose_from_agent_state():
    xy, heading = hb.ground_pose([1.0, 0.5, -2.0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(xy, [1.0, 2.0])
    np.testing.assert_allclose(heading, [0.0, 1.0], atol=1e-12)  # identity faces -z = +y here
    for theta in (math.pi / 2, math.pi, -math.pi / 4):  # a left turn by theta about +y
        q = [math.cos(theta / 2), 0.0, math.sin(theta / 2), 0.0]
        _, heading = hb.ground_pose([0, 0, 0], q)
        np.testing.assert_allclose(heading, [-math.sin(theta), math.cos(theta)], atol=1e-12)


def test_step_outcome_from_habitat_measures():
    reward, success, spl, distance = hb.step_outcome({"distance_to_goal": 2.75, "success": 0.0, "spl": 0.0}, 3.0)
    assert reward == pytest.approx(-0.003 + 0.25) and not success and distance == 2.75
    reward, success, spl, _ = hb.step_outcome({"distance_to_goal": 0.5, "success": 1.0, "spl": 0.8}, 0.5)
    assert reward == pytest.approx(-0.003 + 2.0) and success and spl == 0.8
    with pytest.raises(KeyError, match="spl"):
        hb.step_outcome({"distance_to_goal": 1.0, "success": 0.0}, 1.0)


def test_pooled_encoder_shapes():
    encoder = PooledRGBEncoder(grid=4)
    rgb = torch.stack([hb.convert_observation(habitat_obs(), 20)[0]] * 2)
    features = encoder(rgb)
    assert features.shape == (2, encoder.out_dim) == (2, 48)
    assert 0 <= features.min() and features.max() <= 1


@pytest.mark.habitat
@pytest.mark.skipif(not HAVE_HABITAT, reason=NO_HABITAT)
def test_real_habitat_rollout():
    config = os.environ.get("LIGHTNING_MEMO_HABITAT_CONFIG")
    if not config:
        pytest.skip("set LIGHTNING_MEMO_HABITAT_CONFIG to an ObjectNav config with its data downloaded")
    from torchrl.envs.utils import check_env_specs

    env = hb.HabitatObjNavEnv(config, encoder=PooledRGBEncoder(), num_envs=1, trial_len=20, seed=0)
    check_env_specs(env)
    data = env.rollout(20, break_when_any_done=False)  # TorchRL stacks time last: [1, 20]
    assert data["next", "done"][0, -1].item() and data["view"].shape == (1, 20, 192)

"""Habitat backend for ExtObjNav: habitat-lab episodes as ObjNavGrid-shaped trials.

Needs habitat-sim (conda) and habitat-lab (``pip install "lightning_memo[habitat]"``) plus scene and
episode data; see ``docs/habitat.md``. Nothing here imports habitat at module import time.

Keys match :class:`~lightning_memo.envs.objnav_grid.ObjNavGridEnv`: ``view`` (the frozen visual
encoder's feature of the RGB frame), ``target`` (one-hot category), ``gps`` (metres in the trial's
house frame: the ground-plane position relative to the trial's first start, the same for every inner
episode), ``heading`` (facing direction in that frame), ``episode_start``, ``episode_index``; after a
step ``reward``, ``success``, ``spl``, ``episode_end``, ``done``. Actions: the 6 habitat navigation
actions in habitat's default order (``ACTIONS``). Reward: ``slack + (d_before - d_after) + 2 *
success`` with ``d`` habitat's ``distance_to_goal`` measure; success and SPL are habitat's measures.

The observation and metric conversions are plain functions, tested without habitat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.data import Unbounded

from lightning_memo.envs._common import TrialEnv, check_int

ACTIONS = ("stop", "move_forward", "turn_left", "turn_right", "look_up", "look_down")
DOCS = "docs/habitat.md (https://github.com/lightning-memo/lightning_memo/blob/main/docs/habitat.md)"
INSTALL = (
    'pip install "lightning_memo[habitat]"  (habitat-lab), and habitat-sim from conda: '
    "conda install habitat-sim withbullet headless -c conda-forge -c aihabitat"
)


def require_habitat() -> Any:
    """Import and return ``habitat`` (habitat-lab), or raise an ImportError naming what is missing."""
    missing = []
    for module, package in (("habitat_sim", "habitat-sim"), ("habitat", "habitat-lab")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(
            f"the habitat backend needs {' and '.join(missing)}, which is not installed. Install with: "
            f"{INSTALL}. Scenes (HSSD) and episodes are separate downloads: see {DOCS}."
        )
    import habitat

    return habitat


@dataclass(frozen=True)
class HabitatKeys:
    """Names of the habitat observations used (``head_rgb`` for the Fetch head camera in habitat 3)."""

    rgb: str = "rgb"
    """The RGB camera observation (``head_rgb`` for the Fetch head camera in habitat 3)."""
    goal: str = "objectgoal"
    """The target-category observation (an integer category id)."""


def ground_pose(position: Sequence[float], rotation_wxyz: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Habitat agent state (y-up ``position [3]``, quaternion ``(w, x, y, z)``) to the ground plane.

    Returns ``(xy [2], heading [2])`` in a frame with ``x`` = habitat ``x`` and ``y`` = habitat ``-z``
    (habitat's agents face ``-z`` at identity, so identity heads ``(0, 1)``; turning left is
    counter-clockwise).
    """
    w, x, y, z = (float(v) for v in rotation_wxyz)
    # third column of the rotation matrix, negated: the image of the forward axis (0, 0, -1)
    fx = -2 * (x * z + w * y)
    fz = -(1 - 2 * (x * x + y * y))
    heading = np.array([fx, -fz])
    heading /= max(np.linalg.norm(heading), 1e-8)
    return np.array([position[0], -position[2]], dtype=np.float64), heading


def convert_observation(
    obs: Mapping[str, np.ndarray], num_categories: int, keys: HabitatKeys = HabitatKeys()
) -> tuple[Tensor, Tensor]:
    """One habitat observation dict to ``(rgb uint8 [H, W, 3], target one-hot float32 [K])``.

    ``obs[keys.rgb]`` is ``uint8 [H, W, 3]`` (an alpha channel is dropped); ``obs[keys.goal]`` the
    category id, shape ``[1]``.
    """
    for key in (keys.rgb, keys.goal):
        if key not in obs:
            raise KeyError(f"habitat observation has no {key!r}; it has {sorted(obs)}. Set HabitatKeys.")
    rgb = torch.as_tensor(np.asarray(obs[keys.rgb])[..., :3], dtype=torch.uint8)
    goal = int(np.asarray(obs[keys.goal]).reshape(-1)[0])
    if not 0 <= goal < num_categories:
        raise ValueError(f"goal category {goal} is outside num_categories={num_categories}.")
    return rgb, torch.nn.functional.one_hot(torch.tensor(goal), num_categories).float()


def step_outcome(
    metrics: Mapping[str, Any], prev_distance: float, slack_reward: float = -0.003, success_reward: float = 2.0
) -> tuple[float, bool, float, float]:
    """``(reward, success, spl, distance)`` from habitat's measures after a step.

    Needs the ``distance_to_goal``, ``success`` and ``spl`` measures in the task config.
    """
    missing = {"distance_to_goal", "success", "spl"} - set(metrics)
    if missing:
        raise KeyError(f"habitat metrics lack {sorted(missing)}: add those measures to the task config.")
    distance = float(metrics["distance_to_goal"])
    success = bool(metrics["success"])
    reward = slack_reward + (prev_distance - distance) + success_reward * success
    return reward, success, float(metrics["spl"]), distance


def load_vc1_encoder(device: Any = None) -> torch.nn.Module:
    """The frozen VC-1 ViT-B encoder (768-d CLS feature) from ``vc_models`` (eai-vc)."""
    try:
        from vc_models.models.vit import model_utils
    except ImportError as err:
        raise ImportError(
            "VC-1 needs the eai-vc package: pip install "
            "'git+https://github.com/facebookresearch/eai-vc.git#subdirectory=vc_models'; "
            f"see {DOCS}. Any module mapping uint8 [N, H, W, 3] to [N, F] works as encoder=."
        ) from err
    model, out_dim, transform, _ = model_utils.load_model(model_utils.VC1_BASE_NAME)

    class VC1(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.out_dim = model.eval().requires_grad_(False), out_dim

        @torch.no_grad()
        def forward(self, rgb: Tensor) -> Tensor:
            return self.model(transform(rgb.permute(0, 3, 1, 2).float() / 255.0))

    return VC1().to(device)


class HabitatObjNavEnv(TrialEnv):
    """``num_envs`` habitat-lab envs stepped in turn as one TorchRL env (``batch_size=[N]``).

    A trial is ``trial_len`` steps; inner episodes are the habitat episodes that follow one another
    (configure the dataset iterator so consecutive episodes stay in one house, see the docs). When
    habitat ends an episode (STOP or its step limit), the next one starts in the same step.

    Args:
        config: a habitat config path (``habitat.get_config``) or a loaded config.
        encoder: maps RGB ``uint8 [N, H, W, 3]`` to features ``[N, F]``; needs ``out_dim``.
        num_categories: size of the ``target`` one-hot (20 YCB categories in the paper).
    """

    observation_keys = ("view", "target", "gps", "heading")
    num_actions = len(ACTIONS)

    def __init__(
        self,
        config: Any,
        encoder: Callable[[Tensor], Tensor] | None = None,
        num_envs: int = 1,
        num_categories: int = 20,
        trial_len: int = 4096,
        slack_reward: float = -0.003,
        success_reward: float = 2.0,
        keys: HabitatKeys = HabitatKeys(),
        overrides: Sequence[str] = (),
        device: Any = None,
        seed: int | None = None,
    ):
        habitat = require_habitat()
        super().__init__(num_envs, trial_len, device, seed)
        if isinstance(config, str):
            config = habitat.get_config(config, overrides=list(overrides))
        self.encoder = encoder if encoder is not None else load_vc1_encoder(device)
        self.num_categories = check_int("num_categories", num_categories)
        self.slack_reward, self.success_reward, self.keys = slack_reward, success_reward, keys
        self._envs = [habitat.Env(config=config) for _ in range(self.num_envs)]
        if seed is not None:
            self._set_seed(seed)
        shape, dev = self.batch_size, self.device
        self._make_specs(
            dict(
                view=Unbounded((*shape, int(self.encoder.out_dim)), device=dev),
                target=self._box(0.0, 1.0, self.num_categories),
                gps=Unbounded((*shape, 2), device=dev),
                heading=self._box(-1.0, 1.0, 2),
            ),
            spl=self._box(0.0, 1.0, 1),
        )
        n = self.num_envs
        self._origin = np.zeros((n, 2))
        self._distance = np.zeros(n)
        self._ep_index = np.zeros(n, dtype=np.int64)
        self._trial_t = np.zeros(n, dtype=np.int64)
        self._obs: list[Mapping[str, np.ndarray]] = [{} for _ in range(n)]

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            for i, env in enumerate(self._envs):
                env.seed(seed + i)

    def _start_episode(self, i: int, new_trial: bool) -> None:
        self._obs[i] = self._envs[i].reset()
        if new_trial:
            self._origin[i] = self._pose(i)[0]
        self._distance[i] = float(self._envs[i].get_metrics()["distance_to_goal"])

    def _pose(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        import quaternion  # numpy-quaternion, a habitat-sim dependency

        state = self._envs[i].sim.get_agent_state()
        return ground_pose(state.position, quaternion.as_float_array(state.rotation))

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        for i in self._reset_rows(tensordict).tolist():
            self._start_episode(i, new_trial=True)
            self._ep_index[i], self._trial_t[i] = 0, 0
        return self._reset_output(self._observe(), self._tensor(self._ep_index), spl=self._tensor(np.zeros(self.num_envs)))

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        n = self.num_envs
        reward, spl = np.zeros(n), np.zeros(n)
        success, end = np.zeros(n, bool), np.zeros(n, bool)
        for i, a in enumerate(self._action(tensordict).tolist()):
            env = self._envs[i]
            self._obs[i] = env.step(a)
            reward[i], success[i], spl_i, self._distance[i] = step_outcome(
                env.get_metrics(), self._distance[i], self.slack_reward, self.success_reward
            )
            end[i] = env.episode_over
            if end[i]:
                spl[i] = spl_i
                self._ep_index[i] += 1
                self._start_episode(i, new_trial=False)
        self._trial_t += 1
        t = self._tensor
        return self._output(
            self._observe(), episode_start=t(end), episode_index=t(self._ep_index), success=t(success),
            episode_end=t(end), done=t(self._trial_t >= self.trial_len), spl=t(spl, torch.float32),
            reward=t(reward, torch.float32),
        )

    def _tensor(self, x: np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
        return torch.as_tensor(x, dtype=dtype, device=self.device)

    def _observe(self) -> dict[str, Tensor]:
        rgb, target, gps, heading = [], [], [], []
        for i in range(self.num_envs):
            frame, onehot = convert_observation(self._obs[i], self.num_categories, self.keys)
            xy, head = self._pose(i)
            rgb.append(frame)
            target.append(onehot)
            gps.append(xy - self._origin[i])
            heading.append(head)
        return {
            "view": self.encoder(torch.stack(rgb).to(self.device)).float(),
            "target": torch.stack(target).to(self.device),
            "gps": self._tensor(np.stack(gps), torch.float32),
            "heading": self._tensor(np.stack(heading), torch.float32),
        }

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close every habitat env, then this one."""
        for env in getattr(self, "_envs", []):
            env.close()
        super().close(raise_if_closed=raise_if_closed)

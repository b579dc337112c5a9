"""Dark-Key-To-Door (spec/envs.md §1): a gymnasium class and a batched TorchRL env of the same task.

An empty ``size x size`` grid; a task = (start, key, door) cells drawn uniformly and independently
per trial. Actions: up ``(0,-1)``, left ``(-1,0)``, down ``(0,1)``, right ``(1,0)``, no-op; moves are
clipped to the grid. After moving: holding the key on the door gives +1 and ends the inner episode
(success); else standing on the key without it gives +1 and the key. Observation ``[x/size, y/size,
has_key, t_episode/episode_len]`` (``dark``); the light variant appends ``[door_x, door_y, key_x,
key_y] / size``. Inner episodes restart at the start without the key; the trial is a budget of
``trial_len`` steps, after which ``terminated`` (and ``truncated``) are true.

Two boundary behaviours (``version``):

* ``"memo"`` (default; AMAGO's original ``RoomKeyDoor`` with same-step soft resets, as in the Memo
  paper): the step that ends an inner episode already returns the restarted observation (so the door
  cell is never observed), and an episode times out after ``episode_len + 1`` steps (an off-by-one
  kept from the reference).
* ``"amago"`` (AMAGO's current ``RoomKeyDoor``): the ending step returns the final observation
  (door cell included, time ``episode_len/episode_len`` on a timeout after ``episode_len`` steps); the
  next step ignores its action, gives 0 reward and returns the restarted observation.

Inner-episode facts: ``episode_start`` (this observation is the first of an inner episode),
``episode_index`` (its ordinal in the trial), ``episode_end`` and ``success`` (the step ended an inner
episode / did so on the door). A trial that runs out mid-episode does not set ``episode_end``.

Env ``i`` of ``DarkKeyToDoorEnv(seed=s)`` plays exactly the trials of ``DarkKeyToDoorGym`` reset with
``seed=s + i``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from lightning_memo.envs._common import batched_action, check_choice, check_int, env_rngs, gym_action

VERSIONS = ("memo", "amago")
NUM_ACTIONS = 5
DIRECTIONS = np.array([[0, -1], [-1, 0], [0, 1], [1, 0], [0, 0]], dtype=np.int64)  # (dx, dy)


def check_config(size: int, episode_len: int, trial_len: int, version: str) -> tuple[int, int, int, str]:
    """Validated ``(size, episode_len, trial_len, version)``."""
    return (
        check_int("size", size, minimum=2),
        check_int("episode_len", episode_len),
        check_int("trial_len", trial_len),
        check_choice("version", version, VERSIONS),
    )


def sample_task(rng: np.random.Generator, size: int) -> np.ndarray:
    """One task: int64 ``[3, 2]`` rows start, key, door as ``(x, y)``, uniform and independent."""
    return rng.integers(0, size, size=(3, 2))


class DarkKeyToDoorGym(gym.Env):
    """One Dark-Key-To-Door trial per ``reset`` (gymnasium API, seeded through ``np_random``).

    Observation ``float32 [4]`` (``[8]`` when ``dark=False``), action ``Discrete(5)``. ``info`` holds
    ``episode_start``, ``episode_index``, ``episode_end``, ``success`` and ``has_key``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(
        self,
        size: int = 9,
        episode_len: int = 50,
        trial_len: int = 500,
        dark: bool = True,
        version: str = "memo",
        render_mode: str | None = None,
    ):
        self.size, self.episode_len, self.trial_len, self.version = check_config(
            size, episode_len, trial_len, version
        )
        self.dark = bool(dark)
        self.render_mode = check_choice("render_mode", render_mode, (None, "rgb_array"))
        self.observation_space = gym.spaces.Box(0.0, 1.0, (4 if self.dark else 8,), np.float32)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self._task: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A new trial; ``options={"task": [[sx, sy], [kx, ky], [dx, dy]]}`` fixes its layout."""
        super().reset(seed=seed)
        self._task = sample_task(self.np_random, self.size)
        if options and "task" in options:
            task = np.asarray(options["task"], dtype=np.int64)
            if task.shape != (3, 2) or task.min() < 0 or task.max() >= self.size:
                raise ValueError(
                    f"options['task'] must be (start, key, door) cells in [0, {self.size}), got {task.tolist()}."
                )
            self._task = task
        self._pos = self._task[0].copy()
        self._has_key = False
        self._ep_t = 0
        self._ep_index = 0
        self._trial_t = 0
        self._restart_next = False  # "amago" version: the next step is the restart step
        return self._obs(), self._info(start=True, end=False, success=False)

    def step(self, action: Any):
        if self._task is None or self._trial_t >= self.trial_len:
            raise RuntimeError("the trial is over (or never started): call reset() first.")
        a = gym_action(action, NUM_ACTIONS)
        start, key, door = self._task
        reward, success, end, restart = 0.0, False, False, False
        if self._restart_next:
            self._restart_next, restart = False, True
        else:
            self._pos = np.clip(self._pos + DIRECTIONS[a], 0, self.size - 1)
            self._ep_t += 1
            if self._has_key and (self._pos == door).all():
                reward, success = 1.0, True
            elif not self._has_key and (self._pos == key).all():
                reward, self._has_key = 1.0, True
            limit = self.episode_len + (1 if self.version == "memo" else 0)
            end = success or self._ep_t >= limit
            if end and self.version == "memo":
                restart = True
            elif end:
                self._restart_next = True
        if restart:
            self._pos, self._has_key, self._ep_t = start.copy(), False, 0
            self._ep_index += 1
        self._trial_t += 1
        over = self._trial_t >= self.trial_len
        return self._obs(), reward, over, over, self._info(start=restart, end=end, success=success)

    def _obs(self) -> np.ndarray:
        obs = [*(self._pos / self.size), float(self._has_key), self._ep_t / self.episode_len]
        if not self.dark:
            obs += [*(self._task[2] / self.size), *(self._task[1] / self.size)]
        return np.asarray(obs, dtype=np.float32)

    def _info(self, start: bool, end: bool, success: bool) -> dict:
        return {
            "episode_start": start,
            "episode_index": self._ep_index,
            "episode_end": end,
            "success": success,
            "has_key": self._has_key,
        }

    def render(self) -> np.ndarray | None:
        if self.render_mode is None or self._task is None:
            return None
        from lightning_memo.envs.render import render_dktd

        start, key, door = self._task
        return render_dktd(self.size, self._pos, key, door, start, self._has_key)


class DarkKeyToDoorEnv(EnvBase):
    """``num_envs`` Dark-Key-To-Door trials as tensors (TorchRL ``EnvBase``, ``batch_size=[N]``).

    Reset/step outputs: ``observation`` float32 ``[N, 4]`` (``[N, 8]`` light), ``episode_start`` bool
    ``[N, 1]``, ``episode_index`` int64 ``[N, 1]``; after a step also ``reward`` float32 ``[N, 1]``,
    ``success``/``episode_end`` bool ``[N, 1]`` and ``done``/``terminated``/``truncated`` ``[N, 1]``
    (true at the trial end only). Action: ``Categorical(5)`` integers ``[N]``. Tasks are drawn per env
    with a numpy Generator seeded ``seed + i`` (at reset only; steps are pure tensor ops).
    """

    observation_keys = ("observation",)
    num_actions = NUM_ACTIONS

    def __init__(
        self,
        num_envs: int = 1,
        size: int = 9,
        episode_len: int = 50,
        trial_len: int = 500,
        dark: bool = True,
        version: str = "memo",
        device: torch.device | str | None = None,
        seed: int | None = None,
    ):
        num_envs = check_int("num_envs", num_envs)
        super().__init__(device=device, batch_size=[num_envs])
        self.num_envs = num_envs
        self.size, self.episode_len, self.trial_len, self.version = check_config(
            size, episode_len, trial_len, version
        )
        self.dark = bool(dark)
        self._limit = self.episode_len + (1 if self.version == "memo" else 0)
        self._make_specs()
        self._rngs = env_rngs(seed, num_envs)
        n, dev = num_envs, self.device
        self._dirs = torch.as_tensor(DIRECTIONS, device=dev)
        scale = [self.size, self.size, 1, self.episode_len] + [self.size] * (0 if self.dark else 4)
        self._obs_scale = torch.tensor(scale, dtype=torch.float64, device=dev)
        self._task = torch.zeros(n, 3, 2, dtype=torch.long, device=dev)  # start, key, door
        self._pos = torch.zeros(n, 2, dtype=torch.long, device=dev)
        self._has_key = torch.zeros(n, dtype=torch.bool, device=dev)
        self._ep_t = torch.zeros(n, dtype=torch.long, device=dev)
        self._ep_index = torch.zeros(n, dtype=torch.long, device=dev)
        self._trial_t = torch.zeros(n, dtype=torch.long, device=dev)
        self._restart_next = torch.zeros(n, dtype=torch.bool, device=dev)

    def _make_specs(self) -> None:
        shape, dev = self.batch_size, self.device
        flag = dict(n=2, shape=(*shape, 1), dtype=torch.bool, device=dev)
        self.observation_spec = Composite(
            observation=Bounded(0.0, 1.0, shape=(*shape, 4 if self.dark else 8), dtype=torch.float32, device=dev),
            episode_start=Categorical(**flag),
            episode_index=Unbounded((*shape, 1), dtype=torch.int64, device=dev),
            success=Categorical(**flag),
            episode_end=Categorical(**flag),
            shape=shape,
            device=dev,
        )
        self.action_spec = Categorical(NUM_ACTIONS, shape=shape, dtype=torch.int64, device=dev)
        self.reward_spec = Unbounded((*shape, 1), dtype=torch.float32, device=dev)
        self.done_spec = Composite(
            done=Categorical(**flag),
            terminated=Categorical(**flag),
            truncated=Categorical(**flag),
            shape=shape,
            device=dev,
        )

    def _set_seed(self, seed: int | None) -> None:
        self._rngs = env_rngs(seed, self.num_envs)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        mask = torch.ones(self.num_envs, dtype=torch.bool) if mask is None else mask.reshape(-1).cpu()
        idx = mask.nonzero().squeeze(-1)
        tasks = [sample_task(self._rngs[i], self.size) for i in idx.tolist()]
        idx = idx.to(self.device)
        if tasks:
            self._task.index_copy_(0, idx, torch.as_tensor(np.stack(tasks), device=self.device))
        self._pos.index_copy_(0, idx, self._task[:, 0].index_select(0, idx))
        for state in (self._has_key, self._restart_next, self._ep_t, self._ep_index, self._trial_t):
            state.index_fill_(0, idx, 0)
        false = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        return self._output(
            episode_start=torch.ones_like(false), success=false, episode_end=false, done=false
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = batched_action(tensordict.get("action", None), self.num_envs, NUM_ACTIONS)
        start, key, door = self._task.unbind(1)
        restart_now = self._restart_next
        moving = ~restart_now
        step = self._dirs.index_select(0, action)  # not advanced indexing: slow on busy CPUs
        pos = torch.where(moving[:, None], (self._pos + step).clamp(0, self.size - 1), self._pos)
        ep_t = self._ep_t + moving.long()
        success = moving & self._has_key & (pos == door).all(-1)
        pickup = moving & ~self._has_key & (pos == key).all(-1)
        has_key = self._has_key | pickup
        end = success | (moving & (ep_t >= self._limit))
        if self.version == "memo":
            restart = end
        else:
            restart, self._restart_next = restart_now, end
        self._pos = torch.where(restart[:, None], start, pos)
        self._has_key = has_key & ~restart
        self._ep_t = torch.where(restart, 0, ep_t)
        self._ep_index = self._ep_index + restart.long()
        self._trial_t = self._trial_t + 1
        done = (self._trial_t >= self.trial_len)[:, None]
        out = self._output(
            episode_start=restart[:, None], success=success[:, None], episode_end=end[:, None], done=done
        )
        out.set("reward", (success | pickup).float()[:, None])
        return out

    def _output(self, episode_start, success, episode_end, done) -> TensorDictBase:
        """The observation entries of the current state plus the given flags (all ``[N, 1]``)."""
        values = [self._pos, self._has_key[:, None].long(), self._ep_t[:, None]]
        if not self.dark:
            values += [self._task[:, 2], self._task[:, 1]]
        # float64 then float32, exactly as the gymnasium class computes it
        obs = (torch.cat(values, -1).double() / self._obs_scale).float()
        return TensorDict(
            {
                "observation": obs,
                "episode_start": episode_start,
                "episode_index": self._ep_index[:, None].clone(),
                "success": success,
                "episode_end": episode_end,
                "done": done,
                "terminated": done.clone(),
                "truncated": done.clone(),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def render_frame(self, index: int = 0) -> np.ndarray:
        """An RGB ``uint8 [H, W, 3]`` picture of env ``index`` (see :func:`render.render_dktd`)."""
        from lightning_memo.envs.render import render_dktd

        start, key, door = self._task[index].cpu().numpy()
        pos = self._pos[index].cpu().numpy()
        return render_dktd(self.size, pos, key, door, start, bool(self._has_key[index]))

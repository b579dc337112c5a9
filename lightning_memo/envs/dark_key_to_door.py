"""Dark-Key-To-Door: the rules as a batched TorchRL env, and its gymnasium face.

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

Inner-episode facts: ``episode_start``, ``episode_index``, ``episode_end`` and ``success`` (see
:class:`~lightning_memo.envs._common.TrialEnv`). A trial that runs out mid-episode does not set
``episode_end``.

:class:`DarkKeyToDoorGym` is :class:`DarkKeyToDoorEnv` with one row, so env ``i`` of
``DarkKeyToDoorEnv(seed=s)`` plays exactly the trials of ``DarkKeyToDoorGym`` reset with ``seed=s + i``.
"""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from lightning_memo.envs._common import TrialEnv, TrialGym, check_choice, check_int

VERSIONS = ("memo", "amago")
NUM_ACTIONS = 5
DIRECTIONS = np.array([[0, -1], [-1, 0], [0, 1], [1, 0], [0, 0]], dtype=np.int64)  # (dx, dy)


def sample_task(rng: np.random.Generator, size: int) -> np.ndarray:
    """One task: int64 ``[3, 2]`` rows start, key, door as ``(x, y)``, uniform and independent."""
    return rng.integers(0, size, size=(3, 2))


class DarkKeyToDoorEnv(TrialEnv):
    """``num_envs`` Dark-Key-To-Door trials as tensors (TorchRL ``EnvBase``, ``batch_size=[N]``).

    Outputs: ``observation`` float32 ``[N, 4]`` (``[N, 8]`` light) and the flags of
    :class:`~lightning_memo.envs._common.TrialEnv`. Action: ``Categorical(5)`` integers ``[N]``. Tasks
    are drawn per env at reset with a numpy Generator seeded ``seed + i`` (steps are pure tensor ops);
    a reset input with ``task`` int64 ``[N, 3, 2]`` (start, key, door as ``(x, y)``) fixes the layouts
    of the rows being reset instead (the Generators advance as usual).
    """

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
        super().__init__(num_envs, trial_len, device, seed)
        self.size = check_int("size", size, minimum=2)
        self.episode_len = check_int("episode_len", episode_len)
        self.version = check_choice("version", version, VERSIONS)
        self.dark = bool(dark)
        self._limit = self.episode_len + (1 if self.version == "memo" else 0)
        self._make_specs({"observation": self._box(0.0, 1.0, 4 if self.dark else 8)})
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
        self._restart_next = torch.zeros(n, dtype=torch.bool, device=dev)  # "amago": the next step restarts

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        idx = self._reset_rows(tensordict)
        tasks = [sample_task(self.rngs[i], self.size) for i in idx.tolist()]
        idx = idx.to(self.device)
        if tasks:
            fixed = None if tensordict is None else tensordict.get("task", None)
            new = torch.as_tensor(np.stack(tasks), device=self.device)
            if fixed is not None:
                new = self._check_task(fixed).index_select(0, idx)
            self._task.index_copy_(0, idx, new)
        self._pos.index_copy_(0, idx, self._task[:, 0].index_select(0, idx))
        for state in (self._has_key, self._restart_next, self._ep_t, self._ep_index, self._trial_t):
            state.index_fill_(0, idx, 0)
        return self._reset_output(self._observe(), self._ep_index)

    def _check_task(self, task: torch.Tensor) -> torch.Tensor:
        if task.shape != (self.num_envs, 3, 2) or task.dtype.is_floating_point or task.min() < 0 or task.max() >= self.size:
            raise ValueError(
                f"task must hold (start, key, door) cells (x, y) in [0, {self.size}) per env, shape "
                f"[{self.num_envs}, 3, 2]; got {task.tolist()}."
            )
        return task.to(self.device, torch.long)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = self._action(tensordict)
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
        return self._output(
            self._observe(), episode_start=restart, episode_index=self._ep_index, success=success,
            episode_end=end, done=self._trial_t >= self.trial_len, reward=(success | pickup).float(),
        )

    def _observe(self) -> dict[str, torch.Tensor]:
        values = [self._pos, self._has_key[:, None].long(), self._ep_t[:, None]]
        if not self.dark:
            values += [self._task[:, 2], self._task[:, 1]]
        # float64 then float32: the same rounding as numpy's float64 arithmetic
        return {"observation": (torch.cat(values, -1).double() / self._obs_scale).float()}

    def render_frame(self, index: int = 0) -> np.ndarray:
        """An RGB ``uint8 [H, W, 3]`` picture of env ``index`` (see :func:`render.render_dktd`)."""
        from lightning_memo.envs.render import render_dktd

        start, key, door = self._task[index].cpu().numpy()
        pos = self._pos[index].cpu().numpy()
        return render_dktd(self.size, pos, key, door, start, bool(self._has_key[index]))


class DarkKeyToDoorGym(TrialGym):
    """One Dark-Key-To-Door trial per ``reset`` (gymnasium API, seeded through ``np_random``).

    :class:`DarkKeyToDoorEnv` with one row. Observation ``float32 [4]`` (``[8]`` when ``dark=False``),
    action ``Discrete(5)``. ``info`` holds ``episode_start``, ``episode_index``, ``episode_end``,
    ``success`` and ``has_key``. ``reset(options={"task": [[sx, sy], [kx, ky], [dx, dy]]})`` fixes the
    trial's layout.
    """

    def __init__(
        self,
        size: int = 9,
        episode_len: int = 50,
        trial_len: int = 500,
        dark: bool = True,
        version: str = "memo",
        render_mode: str | None = None,
    ):
        env = DarkKeyToDoorEnv(1, size, episode_len, trial_len, dark, version)
        super().__init__(env, render_mode)
        self.size, self.episode_len, self.trial_len, self.dark, self.version = size, episode_len, trial_len, dark, version

    @property
    def task(self) -> np.ndarray:
        """This trial's start, key and door cells, int64 ``[3, 2]`` as ``(x, y)``."""
        return self.batched._task[0].cpu().numpy()

    def _reset_input(self, options: dict) -> TensorDictBase | None:
        if set(options) - {"task"}:
            raise ValueError(f"DarkKeyToDoorGym.reset takes options 'task' only, got {sorted(options)}.")
        if "task" not in options:
            return None
        return TensorDict(task=torch.as_tensor(np.asarray(options["task"]))[None], batch_size=[1])

    def _info(self) -> dict:
        return {**super()._info(), "has_key": bool(self.batched._has_key[0])}

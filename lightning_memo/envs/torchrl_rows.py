"""The rows of a :class:`~lightning_memo.envs.GymTrialEnv` built from a TorchRL env.

An unbatched env (``GymEnv("CartPole-v1")``, ``batch_size=[]``) is one row; a ``SerialEnv`` or
``ParallelEnv`` of unbatched envs (``batch_size=[N]``) is one row per worker. Only rows still running
are stepped, with TorchRL's partial steps (a ``"_step"`` mask: the other workers are not called), and
an episode is restarted with a partial reset (a ``"_reset"`` mask), so the trial modes of
``GymTrialEnv`` work as on gymnasium envs. Other batched envs (``GymEnv(..., num_envs=N)``, a
gymnasium vector env inside) step every row at once, which would step episodes that have ended, so
they are refused, as is a ``TransformedEnv`` around a batched env (TorchRL transforms do not all take
partial steps: put them inside each worker).

Observations: every leaf of the observation spec (or the ``observation_key`` one) flattened to float32
and concatenated; ``Categorical`` and ``MultiCategorical`` leaves become one-hots (as gymnasium's
``flatten`` does for ``Discrete``). Actions: a ``OneHot`` or ``Categorical`` spec (TorchRL's forms of
a gymnasium ``Discrete``). ``success`` is the env's ``is_success`` or ``success`` entry where it has
one (e.g. through ``GymWrapper.set_info_dict_reader``).

Seeding: a trial's reset seeds the env with ``env.set_seed(s)`` (``s`` drawn from row 0's
Generator), which TorchRL spreads over the workers; restarts within a trial continue the env's
streams. So the same trial seed replays the same trials, but a row does not play the trials of a
one-row env seeded ``seed + i`` (the gymnasium path does).
"""

from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.data import Binary, Categorical, MultiCategorical, MultiOneHot, OneHot, TensorSpec
from torchrl.envs import EnvBase, GymWrapper, TransformedEnv
from torchrl.envs.batched_envs import BatchedEnvBase
from torchrl.envs.utils import step_mdp

from lightning_memo.envs.gym_rows import episode_limit

INFO_KEYS = ("is_success", "success")  # read as the success flag, not flattened into the observation
NUMERIC = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # besides floats


def _base(env: EnvBase) -> EnvBase:
    """The env under any number of ``TransformedEnv`` layers."""
    while isinstance(env, TransformedEnv):
        env = env.base_env
    return env


def leaf_flattener(spec: TensorSpec, batch_dims: int) -> tuple[Callable[[Tensor], Tensor], int]:
    """``(value [B, *shape] -> float32 [B, d], d)`` for one observation leaf of a TorchRL spec."""
    one_hot = torch.nn.functional.one_hot
    if isinstance(spec, MultiCategorical):  # indices -> one one-hot per index
        nvec = [int(n) for n in spec.nvec.reshape(-1)]
        return lambda x: torch.cat([one_hot(v.long(), n) for v, n in zip(x.flatten(1).unbind(-1), nvec)], -1).float(), sum(nvec)
    if isinstance(spec, Categorical) and not isinstance(spec, Binary):  # an index -> a one-hot
        n, size = int(spec.space.n), int(spec.shape[batch_dims:].numel())
        return lambda x: one_hot(x.reshape(x.shape[0], -1).long(), n).flatten(1).float(), n * size
    if spec.dtype is None or spec.dtype.is_complex or (spec.dtype not in NUMERIC and not spec.dtype.is_floating_point):
        raise TypeError(
            f"cannot flatten a {type(spec).__name__} observation (dtype {spec.dtype}) to a vector: pick a numeric entry with observation_key=, "
            "or add a TorchRL transform (inside each worker) that turns it into one."
        )
    return lambda x: x.reshape(x.shape[0], -1).float(), int(spec.shape[batch_dims:].numel())


def action_encoder(spec: TensorSpec) -> tuple[Callable[[Tensor], Tensor], int]:
    """``(indices [*B] -> the env's action, number of actions)`` for a OneHot or Categorical action spec."""
    if isinstance(spec, OneHot) and not isinstance(spec, MultiOneHot):
        n = int(spec.space.n)
        return lambda a: torch.nn.functional.one_hot(a, n).to(spec.dtype).reshape(spec.shape), n
    if isinstance(spec, Categorical) and not isinstance(spec, (MultiCategorical, Binary)):
        return lambda a: a.to(spec.dtype).reshape(spec.shape), int(spec.space.n)
    raise TypeError(
        f"trial envs support one discrete action (a OneHot or Categorical spec); the TorchRL env's action spec is "
        f"{type(spec).__name__} {list(spec.shape)}. Discretize continuous actions with torchrl.envs.ActionDiscretizer, or pass the gymnasium id "
        "(MultiDiscrete actions are supported there)."
    )


class TorchRLRows:
    """The rows of a TorchRL ``env`` (see the module docstring); ``observation_key`` picks one observation entry.

    ``reset``, ``restart`` and ``step`` take the row indices ``rows`` (int64 ``[R]``) and return CPU
    tensors of those rows: observations float32 ``[R, dim]``; ``step`` also rewards ``[R]`` and the
    episode-end and success flags ``[R]``.
    """

    def __init__(self, env: EnvBase, num_envs: int | None = None, observation_key: str | tuple | None = None):
        keys = set(env.observation_spec.keys(True, True))
        if "episode_end" in keys or "episode_start" in keys:
            raise TypeError(
                f"{type(env).__name__} is already a trial env (it emits 'episode_end' / 'episode_start'): train on it "
                "as it is (wrapped with make_trial_env). GymTrialEnv adapts a gymnasium env or a plain TorchRL env, "
                "not a TorchRL env that is a trial env already; for N rows build it with num_envs=N (e.g. "
                "make_popgym_env(name, num_envs=N)) rather than a SerialEnv of one-row trial envs."
            )
        batch = tuple(env.batch_size)
        if len(batch) == 1 and isinstance(env, BatchedEnvBase):
            self.num_envs = batch[0]
        elif len(batch) != 0:
            raise ValueError(
                f"{type(env).__name__} has batch_size {list(batch)}; GymTrialEnv takes an unbatched TorchRL env (one "
                "row) or a SerialEnv/ParallelEnv of unbatched envs (one row per worker: they step and reset one "
                "worker at a time, which episodic trials need). Build SerialEnv(N, lambda: GymEnv(id)) or "
                "ParallelEnv(N, ...) with any transforms inside each worker, or pass the gymnasium id with num_envs=N."
            )
        else:
            self.num_envs = 1
        if num_envs is not None and num_envs != self.num_envs:
            raise ValueError(
                f"num_envs={num_envs} but the TorchRL env has {self.num_envs} row(s): a TorchRL env brings its own "
                "rows. For N rows pass SerialEnv(N, make_env) or ParallelEnv(N, make_env), and leave num_envs unset."
            )
        self.env = self.envs = env
        self.batched = len(batch) == 1
        self._state: TensorDictBase | None = None  # the env's latest state (its next step's input)
        self._flatten, self.dim = self._observation_flattener(observation_key)
        if len(env.action_keys) != 1:
            raise TypeError(f"trial envs take one action; the TorchRL env has {env.action_keys}.")
        self._encode, self.num_actions = action_encoder(env.action_spec)
        gym_env = _base(env)
        # GymWrapper forwards spec and unwrapped to the gymnasium env it wraps
        self.episode_limit = episode_limit(gym_env) if isinstance(gym_env, GymWrapper) else None
        self.name = type(env).__name__  # not an attribute lookup: a SerialEnv forwards those to its workers

    def _observation_flattener(self, key: str | tuple | None) -> tuple[Callable[[TensorDictBase], Tensor], int]:
        spec, dims = self.env.observation_spec, len(self.env.batch_size)
        leaves = [k for k in spec.keys(True, True) if k not in INFO_KEYS]
        if key is not None:
            if key not in leaves:
                raise ValueError(f"observation_key={key!r} is not an observation of the TorchRL env; it has {leaves}.")
            leaves = [key]
        parts = [(k, *leaf_flattener(spec[k], dims)) for k in leaves]
        dim = sum(d for _, _, d in parts)
        return lambda td: torch.cat([fn(td.get(k)) for k, fn, _ in parts], -1), dim

    def _rows(self, td: TensorDictBase, rows: Tensor) -> TensorDictBase:
        """``td`` as ``[num_envs]`` on the CPU, indexed by ``rows``."""
        td = td if self.batched else td.unsqueeze(0)
        return td.to("cpu")[rows]

    def _keep(self, state: TensorDictBase, rows: Tensor) -> None:
        """Take ``rows`` of ``state`` as the env's state (the input of its next step: transforms such as
        ``StepCounter`` carry their state in it)."""
        if self._state is None or not self.batched:
            self._state = state
        else:
            self._state[rows] = state[rows]

    def reset(self, rows: Tensor, seeds: list[int]) -> Tensor:
        """Start the episodes of ``rows``; a reset of every row first seeds the env with ``seeds[0]``."""
        if len(rows) < self.num_envs:
            return self.restart(rows)
        self.env.set_seed(seeds[0])
        self._state = self.env.reset()
        return self._flatten(self._rows(self._state, rows))

    def restart(self, rows: Tensor) -> Tensor:
        """New episodes for ``rows`` (a partial reset), continuing the env's random streams."""
        td = None
        if self.batched:
            td = self._state.clone()
            td["_reset"] = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=td.device).index_fill_(0, rows, True)
        self._keep(self.env.reset(td), rows)
        return self._flatten(self._rows(self._state, rows))

    def step(self, rows: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Step ``rows`` with ``actions`` ``[R]`` (other workers are not called)."""
        full = torch.zeros(self.num_envs, dtype=torch.int64).index_copy_(0, rows, actions.cpu())
        td = self._state.clone()
        td["action"] = self._encode(full if self.batched else full[0]).to(td.device)
        if self.batched and len(rows) < self.num_envs:
            td["_step"] = torch.zeros(self.num_envs, dtype=torch.bool, device=td.device).index_fill_(0, rows, True)
        td = self.env.step(td)
        self._keep(step_mdp(td, exclude_action=True), rows)
        out = self._rows(td.get("next"), rows)
        end = out.get("done").reshape(-1).bool()
        success = next((out.get(k).reshape(-1).bool() for k in INFO_KEYS if k in out.keys()), torch.zeros_like(end))
        return self._flatten(out), out.get("reward").reshape(-1).float(), end, success & end

    def close(self) -> None:
        """Close the TorchRL env."""
        self.env.close(raise_if_closed=False)


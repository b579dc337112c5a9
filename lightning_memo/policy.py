"""MemoPolicy: observation encoder -> sequence memory -> actor and critic heads.

Shapes: ``N`` environments, ``T``/``t`` steps, ``D`` the memory width, ``A`` discrete actions.

The policy calls its memory through the tensor API only:

* acting: :meth:`MemoPolicy.act` on a ``[N]`` tensordict -> ``memory.step`` against the cache;
* updating: :meth:`MemoPolicy.evaluate` on a ``[N, t]`` trial prefix -> ``memory.forward_sequence``;
* after an update: :meth:`MemoPolicy.refresh` on the stored prefix -> ``memory.refresh`` (cache rebuilt
  under the new weights) plus one eval-mode sequence pass that returns the fresh values/logits.

For TorchRL code (``Collector``, ``GAE``, ``ClipPPOLoss``) :meth:`MemoPolicy.torchrl_modules` builds an
``ActorValueOperator`` over the same parameters (no copies).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torch import Tensor, nn
from torch.distributions import Categorical

from lightning_memo.nn.base import SequenceMemory

ACTION_KEY = "action"
LOG_PROB_KEY = "action_log_prob"  # TorchRL's default sample_log_prob key (ClipPPOLoss, GAE)
VALUE_KEY = "state_value"
LOGITS_KEY = "logits"
EMBED_KEY = "embed"
MEMORY_KEY = "memory"
IS_INIT_KEY = "is_init"
EPISODE_START_KEY = "episode_start"


class FlatObsEncoder(nn.Module):
    """MLP over the flattened, concatenated observation tensors -> ``[*, d_model]``.

    ``obs_shapes`` are the per-environment shapes of the observation keys (trailing dims flattened).
    """

    def __init__(self, obs_shapes: Sequence[Sequence[int]], d_model: int, hidden: int = 128) -> None:
        super().__init__()
        self.obs_shapes = [tuple(s) for s in obs_shapes]
        in_dim = sum(math.prod(s) for s in self.obs_shapes)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, d_model))

    def forward(self, *obs: Tensor) -> Tensor:
        flat = []
        for o, shape in zip(obs, self.obs_shapes):
            batch = o.shape[: o.dim() - len(shape)]
            flat.append(o.reshape(*batch, -1).to(self.net[0].weight.dtype))
        return self.net(torch.cat(flat, dim=-1))


class MemoPolicy(nn.Module):
    """Encoder -> ``memory`` (any :class:`SequenceMemory`) -> actor (``A`` logits) and critic heads.

    Args:
        memory: the sequence memory (e.g. ``make_memory("memo", d_model=64, ...)``).
        num_actions: size of the discrete action space.
        observation_keys: tensordict keys the encoder reads (in this order).
        obs_shapes: per-environment shape of each observation key (for the default encoder).
        encoder: replaces the default MLP. An ``nn.Module`` is called with the observation tensors as
            positional arguments and returns ``[*, D]``; a ``TensorDictModuleBase`` is called with the
            tensordict and must write ``"embed"``.
        hidden: hidden width of the default encoder.
    """

    def __init__(
        self,
        memory: SequenceMemory,
        num_actions: int,
        observation_keys: Sequence[str],
        obs_shapes: Sequence[Sequence[int]] | None = None,
        encoder: nn.Module | None = None,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        if not isinstance(memory, SequenceMemory):
            raise TypeError(f"memory must be a SequenceMemory (see make_memory); got {type(memory).__name__}.")
        if not isinstance(num_actions, int) or num_actions < 2:
            raise ValueError(f"num_actions must be an integer >= 2, got {num_actions!r}.")
        if not observation_keys:
            raise ValueError("observation_keys must name at least one observation key.")
        if encoder is None:
            if obs_shapes is None or len(obs_shapes) != len(observation_keys):
                raise ValueError(
                    "the default encoder needs obs_shapes, one shape per observation key; build the policy "
                    "with MemoPolicy.from_env(env, memory) or pass encoder=..."
                )
            encoder = FlatObsEncoder(obs_shapes, memory.d_model, hidden)
        self.observation_keys = list(observation_keys)
        self.num_actions = num_actions
        self.encoder = encoder
        self.memory = memory
        self.actor_head = nn.Linear(memory.d_model, num_actions)
        self.critic_head = nn.Linear(memory.d_model, 1)
        nn.init.orthogonal_(self.actor_head.weight, gain=0.01)
        nn.init.zeros_(self.actor_head.bias)
        nn.init.orthogonal_(self.critic_head.weight, gain=1.0)
        nn.init.zeros_(self.critic_head.bias)

    @classmethod
    def from_env(
        cls,
        env,
        memory: SequenceMemory,
        observation_keys: Sequence[str] | None = None,
        encoder: nn.Module | None = None,
        hidden: int = 128,
    ) -> "MemoPolicy":
        """Read observation shapes and the action count from a TorchRL env's specs (validated)."""
        if observation_keys is None:
            observation_keys = list(getattr(env, "observation_keys", None) or ["observation"])
        spec = env.full_observation_spec
        batch_dims = len(env.batch_size)
        shapes = []
        for key in observation_keys:
            if key not in spec.keys(True, True):
                raise ValueError(
                    f"observation key {key!r} is not in the env's observation spec "
                    f"{sorted(map(str, spec.keys(True, True)))}; fix policy observation_keys."
                )
            shapes.append(tuple(spec[key].shape[batch_dims:]))
        action_spec = env.full_action_spec[ACTION_KEY] if ACTION_KEY in env.full_action_spec.keys() else None
        n = getattr(getattr(action_spec, "space", None), "n", None)
        if action_spec is None or n is None or action_spec.dtype.is_floating_point:
            raise ValueError(
                f"MemoPolicy supports discrete actions (a Categorical 'action' spec); the env has "
                f"{type(action_spec).__name__ if action_spec is not None else 'no action key'}. Continuous "
                "actions are not implemented yet."
            )
        return cls(memory, int(n), observation_keys, shapes, encoder=encoder, hidden=hidden)

    # ------------------------------------------------------------ tensor API
    def embed(self, td: TensorDictBase) -> Tensor:
        """Encode the observation keys of ``td`` (``[N]`` or ``[N, t]``) -> ``[*td.batch_size, D]``."""
        if isinstance(self.encoder, TensorDictModuleBase):
            return self.encoder(td.copy()).get(EMBED_KEY)
        return self.encoder(*[td.get(k) for k in self.observation_keys])

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Memory output ``[*, D]`` -> (logits ``[*, A]``, value ``[*]``)."""
        return self.actor_head(h), self.critic_head(h).squeeze(-1)

    def reset(self, num_envs: int) -> None:
        """Start ``num_envs`` empty memory rows (a new trial)."""
        self.memory.reset_cache(num_envs)

    @property
    def device(self) -> torch.device:
        return self.actor_head.weight.device

    @torch.no_grad()
    def act(self, td: TensorDictBase, deterministic: bool = False) -> TensorDictBase:
        """One step for ``td [N]``: writes ``action [N]``, ``action_log_prob [N]``, ``state_value [N]``,
        ``logits [N, A]`` (on ``td``'s device). Advances the memory cache by one step."""
        inputs = td.to(self.device) if td.device != self.device else td
        x = self.embed(inputs)
        h = self.memory.step(x, _flag(inputs, IS_INIT_KEY), _flag(inputs, EPISODE_START_KEY))
        logits, value = self.heads(h)
        dist = Categorical(logits=logits.float())
        action = logits.argmax(-1) if deterministic else dist.sample()
        out = {ACTION_KEY: action, LOG_PROB_KEY: dist.log_prob(action), VALUE_KEY: value.float(), LOGITS_KEY: logits.float()}
        for key, value in out.items():
            td.set(key, value.to(td.device) if td.device is not None else value)
        return td

    def evaluate(self, td: TensorDictBase, segment_len: int | None = None) -> tuple[Tensor, Tensor]:
        """Sequence mode over a trial prefix ``td [N, t]`` -> (logits ``[N, t, A]``, values ``[N, t]``).

        In training mode the memory draws its own (randomised) segment length unless one is given.
        """
        td = td.to(self.device) if td.device != self.device else td
        x = self.embed(td)
        h = self.memory.forward_sequence(
            x, _flag(td, IS_INIT_KEY), segment_len=segment_len, episode_start=_flag(td, EPISODE_START_KEY)
        )
        return self.heads(h)

    @torch.no_grad()
    def refresh(self, td: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Flush the cache and rebuild it from the prefix ``td [N, t]`` under the current weights.

        Returns fresh (logits ``[N, t, A]``, values ``[N, t]``) from an eval-mode sequence pass (fixed
        segment length, no layer drop), used to overwrite stale stored values.
        """
        was_training = self.training
        self.eval()
        try:
            td = td.to(self.device) if td.device != self.device else td
            x = self.embed(td)
            is_init, episode_start = _flag(td, IS_INIT_KEY), _flag(td, EPISODE_START_KEY)
            self.memory.refresh(x, is_init, episode_start)
            h = self.memory.forward_sequence(x, is_init, episode_start=episode_start)
            logits, values = self.heads(h)
        finally:
            self.train(was_training)
        return logits.float(), values.float()

    # ------------------------------------------------------------ TorchRL face
    def torchrl_modules(self) -> tuple[TensorDictModuleBase, TensorDictModuleBase, TensorDictModuleBase]:
        """TorchRL views over these parameters: ``(actor_value, actor, critic)``.

        ``actor_value`` is an ``ActorValueOperator`` (one memory call computes both heads): use it when
        acting, since every call in step mode advances the cache. ``actor`` is a ``ProbabilisticActor``
        (Categorical over ``logits``) and ``critic`` a ``ValueOperator``; under
        ``torchrl.modules.set_recurrent_mode(True)`` they run sequence mode on ``[N, T]`` tensordicts,
        which is what ``ClipPPOLoss`` and ``GAE`` need.
        """
        from torchrl.modules import ActorValueOperator, ProbabilisticActor, ValueOperator

        if isinstance(self.encoder, TensorDictModuleBase):
            encode = self.encoder
        else:
            encode = TensorDictModule(self.encoder, in_keys=self.observation_keys, out_keys=[EMBED_KEY])
        if list(self.memory.in_keys) != [EMBED_KEY, IS_INIT_KEY] or list(self.memory.out_keys) != [MEMORY_KEY]:
            raise ValueError(
                f"torchrl_modules expects the memory's default keys in_keys=['embed', 'is_init'], "
                f"out_keys=['memory']; got {self.memory.in_keys} -> {self.memory.out_keys}."
            )
        common = TensorDictSequential(encode, self.memory)
        actor = ProbabilisticActor(
            TensorDictModule(self.actor_head, in_keys=[MEMORY_KEY], out_keys=[LOGITS_KEY]),
            in_keys=[LOGITS_KEY],
            distribution_class=Categorical,
            return_log_prob=True,
            log_prob_key=LOG_PROB_KEY,
        )
        critic = ValueOperator(_ValueHead(self.critic_head), in_keys=[MEMORY_KEY])
        actor_value = ActorValueOperator(common, actor, critic)
        return actor_value, actor_value.get_policy_operator(), actor_value.get_value_operator()


class _ValueHead(nn.Module):
    """The critic head as a ``[*, D] -> [*, 1]`` module (TorchRL stores values with a trailing 1)."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, h: Tensor) -> Tensor:
        return self.head(h)


def _flag(td: TensorDictBase, key: str) -> Tensor | None:
    """A bool flag of ``td`` without its trailing singleton (``[N,1] -> [N]``, ``[N,t,1] -> [N,t]``)."""
    flag = td.get(key, None)
    if flag is None:
        return None
    if flag.dim() == td.batch_dims + 1 and flag.shape[-1] == 1:
        flag = flag.squeeze(-1)
    return flag.bool()

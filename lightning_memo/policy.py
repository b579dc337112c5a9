"""MemoPolicy: observation encoder -> sequence memory -> actor and critic heads.

Shapes: ``N`` environments, ``T``/``t`` steps, ``D`` the memory width, ``A`` discrete actions.

The policy calls its memory through the tensor API only:

* acting: :meth:`MemoPolicy.act` on a ``[N]`` tensordict -> ``memory.step`` against the cache;
* updating: :meth:`MemoPolicy.evaluate` on a ``[N, t]`` trial prefix -> ``memory.forward_sequence``
  (or on the steps after a prefix that :meth:`MemoPolicy.encode_prefix` cached, ``past=...``);
* after an update: :meth:`MemoPolicy.refresh` on the stored prefix -> ``memory.refresh``, one pass that
  rebuilds the cache under the new weights and gives the fresh values/logits.

Values and log-probs are one number per step in the tensor API and the trial history (``[N]``,
``[N, t]``, like ``action``). Only the TorchRL views of :meth:`MemoPolicy.torchrl_modules` write
``state_value`` with TorchRL's trailing 1 (``[*, 1]``), which ``GAE`` and ``ClipPPOLoss`` expect.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torch import Tensor, nn
from torch.distributions import Categorical

from lightning_memo.nn.base import Cache, SequenceMemory

ACTION_KEY = "action"
LOG_PROB_KEY = "action_log_prob"  # TorchRL's default sample_log_prob key (ClipPPOLoss, GAE)
VALUE_KEY = "state_value"
LOGITS_KEY = "logits"
EMBED_KEY = "embed"
MEMORY_KEY = "memory"
IS_INIT_KEY = "is_init"
EPISODE_START_KEY = "episode_start"
# trial bookkeeping the trainers and metrics read; never policy inputs unless listed explicitly
BOOKKEEPING_KEYS = (IS_INIT_KEY, EPISODE_START_KEY, "episode_end", "episode_index", "success", "spl", "active")
# trial features that carry the previous step (one step of memory): left out of a memoryless control
PREVIOUS_STEP_KEYS = ("prev_action", "prev_reward")


class NonFiniteError(FloatingPointError):
    """A NaN or inf where training cannot go on; the message names the key and where it appeared."""


def flag(td: TensorDictBase, key) -> Tensor | None:
    """A bool flag of ``td`` without its trailing singleton (``[N,1] -> [N]``, ``[N,t,1] -> [N,t]``)."""
    value = td.get(key, None)
    if value is None:
        return None
    if value.dim() == td.batch_dims + 1 and value.shape[-1] == 1:
        value = value.squeeze(-1)
    return value.bool()


def discrete_action_count(env) -> int:
    """``n`` of the env's ``Categorical(n)`` ``"action"`` spec; a clear error for anything else."""
    spec = env.full_action_spec[ACTION_KEY] if ACTION_KEY in env.full_action_spec.keys() else None
    n = getattr(getattr(spec, "space", None), "n", None)
    if spec is None or n is None or spec.dtype.is_floating_point:
        found = type(spec).__name__ if spec is not None else "no 'action' key"
        raise ValueError(
            f"MemoPolicy supports discrete actions (a Categorical 'action' spec); the env has {found}. "
            "Continuous actions are not implemented yet."
        )
    return int(n)


def categorical_action(logits: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
    """An action ``[N]`` drawn from ``Categorical(logits=logits [N, A])`` (its mode with ``deterministic``)
    and its log-probability ``[N]``.

    The same operations, in the same order and from the same RNG draws, as ``dist.sample()`` and
    ``dist.log_prob(action)`` of that distribution, without building it: at width 64 the distribution
    object costs as much as the sampling itself, every step (tests/test_policy_sampling.py checks that
    they agree bit for bit).
    """
    log_pmf = logits - logits.logsumexp(-1, keepdim=True)  # Categorical's normalised logits
    if deterministic:
        action = logits.argmax(-1)
    else:
        action = torch.multinomial(log_pmf.softmax(-1), 1, True).squeeze(-1)
    return action, log_pmf.gather(-1, action.unsqueeze(-1)).squeeze(-1)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block, its previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


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
        for i, (o, shape) in enumerate(zip(obs, self.obs_shapes)):
            if tuple(o.shape[o.dim() - len(shape):]) != shape:
                raise ValueError(
                    f"observation {i} has shape {tuple(o.shape)}, but the encoder was built for [*, "
                    f"{', '.join(map(str, shape))}]; is this tensordict from the env the policy was built for?"
                )
            flat.append(o.reshape(*o.shape[: o.dim() - len(shape)], -1).to(self.net[0].weight.dtype))
        return self.net(torch.cat(flat, dim=-1))


class PopArtHead(nn.Linear):
    """Critic head with PopArt value normalisation: ``[*, D] -> [*, 1]`` values in reward units.

    The linear layer predicts values in normalised units; ``forward`` returns ``mean + std * linear(h)``.
    :meth:`update` moves the running statistics of the value targets toward a new batch and rescales the
    layer so that every output stays exactly the same (PopArt's "preserving outputs precisely"), so
    stored values and the memory cache stay valid; :meth:`normalize` maps values and targets to the units
    the layer learns in, where the value loss is computed. The statistics are a debiased exponential
    moving average over updates (weight ``beta`` per update, as Adam's moments). Never updated (mean 0,
    std 1), it is a plain ``nn.Linear``.
    """

    def __init__(self, in_features: int, min_std: float = 1e-2) -> None:
        super().__init__(in_features, 1)
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.register_buffer("moments", torch.zeros(3, dtype=torch.float64))  # EMA of [x, x^2] and its weight

    def forward(self, h: Tensor) -> Tensor:
        return super().forward(h) * self.std + self.mean

    def normalize(self, values: Tensor) -> Tensor:
        """Values in reward units -> the normalised units of the linear layer."""
        return (values - self.mean) / self.std

    @torch.no_grad()
    def update(self, batch_moments: Tensor, beta: float) -> None:
        """Fold in a batch of targets given as ``[mean(x), mean(x^2)]`` with weight ``beta`` in (0, 1];
        every output of the head stays the same.

        A batch with non-finite moments is skipped (the loss that uses it reports the problem).
        """
        if not bool(torch.isfinite(batch_moments).all()):
            return
        new = torch.cat((batch_moments.double().reshape(2), self.moments.new_ones(1)))
        self.moments.mul_(1.0 - beta).add_(beta * new)
        mean_x, mean_sq = self.moments[:2] / self.moments[2]
        mean = mean_x.float()
        std = (mean_sq - mean_x**2).clamp(min=0.0).sqrt().float().clamp(min=self.min_std)
        self.weight.mul_(self.std / std)
        self.bias.mul_(self.std).add_(self.mean - mean).div_(std)
        self.mean.copy_(mean)
        self.std.copy_(std)


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
        self.critic_head = PopArtHead(memory.d_model)
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
        previous_step: bool = True,
    ) -> "MemoPolicy":
        """Read observation shapes and the action count from a TorchRL env's specs (validated).

        Without ``observation_keys`` the policy reads every observation entry except the trial
        bookkeeping (``BOOKKEEPING_KEYS``: ``is_init``, ``episode_start``, ``episode_end``, ...), and,
        with ``previous_step=False``, except ``prev_action`` and ``prev_reward`` (``PREVIOUS_STEP_KEYS``:
        they carry one step of memory, so a memoryless control should not read them).
        """
        spec = env.full_observation_spec
        available = list(spec.keys(True, True))
        if observation_keys is None:
            skip = BOOKKEEPING_KEYS + (() if previous_step else PREVIOUS_STEP_KEYS)
            observation_keys = [k for k in available if k not in skip]
            if not observation_keys:
                raise ValueError(f"the env has no observation entries besides bookkeeping ({available}).")
        shapes = []
        for key in observation_keys:
            if key not in available:
                raise ValueError(
                    f"observation key {key!r} is not in the env's observation spec "
                    f"{sorted(map(str, available))}; fix policy observation_keys."
                )
            shapes.append(tuple(spec[key].shape[len(env.batch_size):]))
        return cls(memory, discrete_action_count(env), observation_keys, shapes, encoder=encoder, hidden=hidden)

    # ------------------------------------------------------------ tensor API
    def embed(self, td: TensorDictBase) -> Tensor:
        """Encode the observation keys of ``td`` (``[N]`` or ``[N, t]``) -> ``[*td.batch_size, D]``."""
        if isinstance(self.encoder, TensorDictModuleBase):
            return self.encoder(td.copy()).get(EMBED_KEY)
        obs = [td.get(k, None) for k in self.observation_keys]  # (not a key listing: that costs more, every step)
        if any(o is None for o in obs):
            missing = [k for k, o in zip(self.observation_keys, obs) if o is None]
            raise ValueError(
                f"the tensordict has no {missing}, which the policy reads (observation_keys="
                f"{self.observation_keys}); it has {sorted(map(str, td.keys(True, True)))}. Is it from the env "
                "the policy was built for?"
            )
        return self.encoder(*obs)

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Memory output ``[*, D]`` -> (logits ``[*, A]``, value ``[*]``)."""
        return self.actor_head(h), self.critic_head(h).squeeze(-1)

    def reset(self, num_envs: int) -> None:
        """Start ``num_envs`` empty memory rows (a new trial)."""
        self.memory.reset_cache(num_envs)

    @property
    def device(self) -> torch.device:
        return self.actor_head.weight.device

    def _inputs(self, td: TensorDictBase) -> TensorDictBase:
        return td.to(self.device) if td.device != self.device else td

    @torch.no_grad()
    def act(self, td: TensorDictBase, deterministic: bool = False, with_logits: bool = True) -> TensorDictBase:
        """One step for ``td [N]``: writes ``action [N]``, ``action_log_prob [N]``, ``state_value [N]`` and,
        with ``with_logits``, ``logits [N, A]`` (on ``td``'s device). Advances the memory cache by one step.

        Raises :class:`NonFiniteError` naming the observation key when the logits are not finite.
        """
        inputs = self._inputs(td)
        h = self.memory.step(self.embed(inputs), flag(inputs, IS_INIT_KEY), flag(inputs, EPISODE_START_KEY))
        logits, value = self.heads(h)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteError(self._non_finite_source(inputs))
        action, log_prob = categorical_action(logits.float(), deterministic)
        out = {ACTION_KEY: action, LOG_PROB_KEY: log_prob, VALUE_KEY: value.float()}
        if with_logits:
            out[LOGITS_KEY] = logits.float()
        for key, tensor in out.items():
            td.set(key, tensor.to(td.device) if td.device is not None else tensor)
        return td

    @torch.no_grad()
    def peek_value(self, td: TensorDictBase) -> Tensor:
        """``V(s)`` ``[N]`` for the states ``td [N]`` the policy would act on next, from a copy of the
        memory cache (one eval-mode step; the cache itself does not advance)."""
        inputs = self._inputs(td)
        with evaluating(self):
            h = self.memory.step(
                self.embed(inputs), flag(inputs, IS_INIT_KEY), flag(inputs, EPISODE_START_KEY),
                cache=self.memory.cache_state(),
            )
            return self.heads(h)[1].float()

    def evaluate(
        self, td: TensorDictBase, segment_len: int | None = None, past: Cache | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sequence mode over a trial prefix ``td [N, t]`` -> (logits ``[N, t, A]``, values ``[N, t]``).

        In training mode the memory draws its own (randomised) segment length unless one is given.
        With ``past`` (from :meth:`encode_prefix`), ``td [N, n]`` holds the steps right after that
        prefix, which they attend to without re-encoding it (no gradient reaches it).
        """
        td = self._inputs(td)
        h = self.memory.forward_sequence(
            self.embed(td), flag(td, IS_INIT_KEY), segment_len=segment_len, episode_start=flag(td, EPISODE_START_KEY),
            past=past,
        )
        return self.heads(h)

    @torch.no_grad()
    def encode_prefix(self, td: TensorDictBase) -> Cache:
        """The memory's cache after the prefix ``td [N, t]`` under the current weights, for
        ``evaluate(..., past=...)``; one eval-mode pass without gradients (the acting cache is untouched)."""
        td = self._inputs(td)
        with evaluating(self):
            return self.memory.encode_prefix(self.embed(td), flag(td, IS_INIT_KEY), flag(td, EPISODE_START_KEY))

    @torch.no_grad()
    def refresh(self, td: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Flush the cache and rebuild it from the prefix ``td [N, t]`` under the current weights.

        One eval-mode pass (fixed segment length, no layer drop) that also returns the fresh (logits
        ``[N, t, A]``, values ``[N, t]``) used to overwrite stale stored values.
        """
        td = self._inputs(td)
        with evaluating(self):
            h = self.memory.refresh(self.embed(td), flag(td, IS_INIT_KEY), flag(td, EPISODE_START_KEY))
            logits, values = self.heads(h)
        return logits.float(), values.float()

    def _non_finite_source(self, td: TensorDictBase) -> str:
        for key in self.observation_keys:
            value = td.get(key, None)
            if value is not None and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                rows = (~torch.isfinite(value.reshape(value.shape[0], -1))).any(-1).nonzero().flatten().tolist()
                return f"non-finite values in observation {key!r} (env rows {rows})"
        return "non-finite policy output while the observations are finite (NaN/inf inside the memory or the weights)"

    # ------------------------------------------------------------ TorchRL face
    def torchrl_modules(self) -> tuple[TensorDictModuleBase, TensorDictModuleBase, TensorDictModuleBase]:
        """TorchRL views over these parameters: ``(actor_value, actor, critic)``.

        ``actor_value`` is an ``ActorValueOperator`` (one memory call computes both heads): use it when
        acting, since every call in step mode advances the cache. ``actor`` is a ``ProbabilisticActor``
        (Categorical over ``logits``) and ``critic`` a ``ValueOperator`` writing ``state_value [*, 1]``;
        under ``torchrl.modules.set_recurrent_mode(True)`` they run sequence mode on ``[N, T]``
        tensordicts, which is what ``ClipPPOLoss`` and ``GAE`` need.
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
        critic = ValueOperator(self.critic_head, in_keys=[MEMORY_KEY])  # [*, D] -> state_value [*, 1]
        actor_value = ActorValueOperator(common, actor, critic)
        return actor_value, actor_value.get_policy_operator(), actor_value.get_value_operator()

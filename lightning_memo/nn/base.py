"""The interface every sequence memory shares: a tensor API, a cache API and a TorchRL (TensorDict) face.

Shapes: ``B`` batch rows (environments), ``T`` steps, ``D`` model width (``d_model``).

* ``forward_sequence(x[B,T,D], is_init[B,T]) -> [B,T,D]`` -- training (sequence) mode.
* ``step(x[B,D], is_init[B], *, cache=None) -> [B,D]`` -- acting (step) mode against the module's
  cache, or against a caller's cache from ``new_cache(B)``.
* ``refresh(history[B,t,D], is_init[B,t]) -> [B,t,D]`` -- rebuild the module's cache from a trial
  prefix under the current weights (so stepping on continues exactly as sequence mode would) and
  return the outputs of that pass.
* ``encode_prefix(history[B,t,D], is_init[B,t]) -> Cache`` -- the same pass into a new cache (the
  module's own is untouched); ``forward_sequence(x[B,n,D], past=cache)`` then runs sequence mode over
  the ``n`` steps right after that prefix, attending to it without re-encoding it (and without
  gradients into it): PPO's ``ppo.prefix_gradients=false``.

``is_init`` marks trial starts (memory is emptied there). ``episode_start`` marks inner-episode
starts; a memory built with ``inter_episode_attention=False`` (the no-IEA ablation) also resets there.

A memory subclass sets ``config_cls`` (a dataclass with ``validate()``, ``d_model`` and
``inter_episode_attention``), builds its layers in ``_build(config)`` and implements
``_sequence``/``_step``/``_refresh``/``new_cache`` on inputs where the resets are already resolved
(one trial per row), so the packing of trials lives here once; ``_sequence_from`` (sequence mode
continuing a cache) is optional.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Protocol, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor

from lightning_memo.nn.trials import TrialIndex, pack_trials, unpack_trials


class Cache(Protocol):
    """What a memory carries from step to step, per row (``KVCache``, ``StateCache``)."""

    batch_size: int

    def reset_rows(self, rows: Tensor) -> None:
        """Empty the rows where ``rows`` ``[B]`` (bool) is true."""

    def tokens(self) -> Tensor:
        """Tokens (or state vectors) held per row, ``[B]`` long."""

    def nbytes(self) -> int:
        """Bytes held."""

    def allocated_nbytes(self) -> int:
        """Bytes of storage allocated."""

    def clone(self) -> Cache:
        """A detached copy."""

    def select(self, rows: Tensor) -> Cache:
        """A detached copy of the rows ``rows`` (long indices or a bool mask ``[B]``), in that order."""


class StateCache:
    """A fixed-size per-row state: tensors ``[n, B, D]`` (GRU ``h``; LSTM ``h, c``; none for no memory)."""

    def __init__(self, batch_size: int, states: tuple[Tensor, ...] = ()) -> None:
        self.batch_size = batch_size
        self.states = states

    def reset_rows(self, rows: Tensor) -> None:
        """Zero the state of the rows where ``rows`` ``[B]`` (bool) is true."""
        self.states = tuple(s.masked_fill(rows[None, :, None], 0.0) for s in self.states)

    def tokens(self) -> Tensor:
        """State vectors held per row (``n``, the same for every row), ``[B]`` long."""
        held = sum(s.shape[0] for s in self.states)
        device = self.states[0].device if self.states else None
        return torch.full((self.batch_size,), held, dtype=torch.long, device=device)

    def nbytes(self) -> int:
        """Bytes of the state tensors (held = allocated)."""
        return sum(s.numel() * s.element_size() for s in self.states)

    allocated_nbytes = nbytes

    def clone(self) -> StateCache:
        """A detached copy."""
        return StateCache(self.batch_size, tuple(s.detach().clone() for s in self.states))

    def select(self, rows: Tensor) -> StateCache:
        """A detached copy of the rows ``rows`` (long indices or a bool mask ``[B]``), in that order."""
        states = tuple(s.detach()[:, rows] for s in self.states)
        return StateCache(int(rows.sum()) if rows.dtype == torch.bool else rows.numel(), states)


def config_from_kwargs(config_cls: type, config: Any, kwargs: dict, memory_name: str) -> Any:
    """Build ``config_cls`` from a config object or keyword arguments, naming unknown keys."""
    if config is not None and kwargs:
        raise TypeError(f"pass either config= or keyword arguments to {memory_name}, not both.")
    if config is None:
        names = {f.name for f in fields(config_cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"{memory_name} got unknown argument(s) {unknown}; valid names: {sorted(names)}.")
        config = config_cls(**kwargs)
    elif not isinstance(config, config_cls):  # e.g. an omegaconf DictConfig
        config = config_from_kwargs(config_cls, None, dict(config), memory_name)
    config.validate()
    return config


def same_in_every_row(counts: Tensor, what: str) -> int:
    """The one value of ``counts [B]`` (every row of a past must hold the same layout), as an int."""
    low, high = torch.stack(torch.aminmax(counts)).tolist()
    if low != high:
        raise ValueError(
            f"forward_sequence(past=...) needs every row of past to hold the same number of {what} (rows of one "
            f"trial history do); got {low} to {high}."
        )
    return low


class SequenceMemory(TensorDictModuleBase):
    """Base class: one constructor, validation, reset handling, the cache and the TensorDict face.

    Build with keyword arguments (``MemoMemory(d_model=64, segment_len=32)``) or a config object
    (``MemoMemory(config=MemoConfig(...))``, also an omegaconf ``DictConfig``).

    TensorDict face: reads ``in_keys = [embed, is_init]`` (plus ``episode_start`` when present) and
    writes ``out_keys = [memory]``. Under TorchRL's ``set_recurrent_mode(True)`` the tensordict is
    ``[B, T]`` and sequence mode runs; otherwise it is ``[B]`` (or ``[]``) and one step is taken.
    """

    config_cls: type

    def __init__(
        self,
        config: Any = None,
        *,
        in_keys: Sequence[str] | None = None,
        out_keys: Sequence[str] | None = None,
        episode_start_key: str = "episode_start",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        in_keys = list(in_keys) if in_keys is not None else ["embed", "is_init"]
        out_keys = list(out_keys) if out_keys is not None else ["memory"]
        if len(in_keys) != 2 or len(out_keys) != 1:
            raise ValueError(
                f"in_keys must be [embedding_key, is_init_key] and out_keys [output_key]; got "
                f"in_keys={in_keys}, out_keys={out_keys}."
            )
        self.in_keys, self.out_keys, self.episode_start_key = in_keys, out_keys, episode_start_key
        self.config = config_from_kwargs(self.config_cls, config, kwargs, type(self).__name__)
        self.d_model: int = self.config.d_model
        self.inter_episode_attention: bool = self.config.inter_episode_attention
        self._cache: Cache | None = None
        self._build(self.config)

    # ----------------------------------------------------------------- tensor API
    def forward_sequence(
        self, x: Tensor, is_init: Tensor | None = None, segment_len: int | None = None,
        episode_start: Tensor | None = None, past: Cache | None = None
    ) -> Tensor:
        """Sequence mode. ``x [B,T,D]``, ``is_init/episode_start [B,T] bool`` -> ``[B,T,D]``.

        With ``past`` (a cache from :meth:`encode_prefix`), row ``b`` of ``x`` is the steps right after
        the prefix encoded in row ``b`` of ``past``: they attend to it as stepping would, and no gradient
        reaches it. No trial may start in ``x`` then (``is_init`` false everywhere), and the memory must
        attend across inner episodes (see :meth:`past_support`).
        """
        self._check_x(x, rank=3, name="x")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(
                f"x has shape {tuple(x.shape)}: sequence mode needs at least one row and one step (B, T >= 1)."
            )
        if past is not None:
            return self._continue(x, is_init, segment_len, episode_start, past)
        trials, episode_start, index = self._pack(x, is_init, episode_start)
        out = self._sequence(trials, segment_len=segment_len, episode_start=episode_start)
        return out if index is None else unpack_trials(out, index, x.shape[:2])

    @torch.no_grad()
    def step(
        self,
        x: Tensor,
        is_init: Tensor | None = None,
        episode_start: Tensor | None = None,
        *,
        cache: Cache | None = None,
    ) -> Tensor:
        """Step mode. ``x [B,D]``, ``is_init/episode_start [B] bool`` -> ``[B,D]``.

        Steps against ``cache`` (from :meth:`new_cache`) when given, else against the module's own.
        Acting only: no autograd graph is built (the cache would otherwise chain every step of a
        rollout into one graph). Train with :meth:`forward_sequence`.
        """
        self._check_x(x, rank=2, name="x")
        batch = x.shape[0]
        is_init = self._check_flags(is_init, (batch,), "is_init") if is_init is not None else None
        episode_start = (
            self._check_flags(episode_start, (batch,), "episode_start") if episode_start is not None else None
        )
        if cache is None:
            if self.cache_batch_size() != batch:
                if is_init is None or not bool(is_init.all()):
                    raise RuntimeError(
                        f"step() got a batch of {batch} rows but the cache holds {self.cache_batch_size()}: call "
                        f"reset_cache({batch}) first, or pass is_init=True for every row."
                    )
                self.reset_cache(batch)
            cache = self._cache
        elif cache.batch_size != batch:
            raise ValueError(
                f"step() got a batch of {batch} rows for a cache of {cache.batch_size}; use new_cache({batch})."
            )
        reset = is_init
        if not self.inter_episode_attention and episode_start is not None:
            reset = episode_start if reset is None else reset | episode_start
        if reset is not None and bool(reset.any()):
            cache.reset_rows(reset)
        return self._step(x, cache, episode_start)

    @torch.no_grad()
    def refresh(self, history: Tensor, is_init: Tensor | None = None, episode_start: Tensor | None = None) -> Tensor:
        """Flush the cache, rebuild it from ``history [B,t,D]`` (a trial prefix) under current weights,
        and return the outputs ``[B,t,D]`` of that pass (eval ``forward_sequence`` over ``history``).

        Runs in the eval semantics (fixed segment length, no layer drop), whatever the module mode.
        """
        self._cache, out = self._encode_history(history, is_init, episode_start, outputs=True)
        return out

    @torch.no_grad()
    def encode_prefix(
        self, history: Tensor, is_init: Tensor | None = None, episode_start: Tensor | None = None
    ) -> Cache:
        """A new cache holding ``history [B,t,D]`` (a trial prefix) under the current weights, for
        ``forward_sequence(x, past=...)`` or ``step(x, cache=...)``; the module's own cache is untouched.

        The same pass as :meth:`refresh` (eval semantics: fixed segment length, no layer drop; no
        gradients), without installing the result.
        """
        return self._encode_history(history, is_init, episode_start, outputs=False)[0]

    def _encode_history(
        self, history: Tensor, is_init: Tensor | None, episode_start: Tensor | None, outputs: bool
    ) -> tuple[Cache, Tensor | None]:
        """The cache after ``history [B,t,D]`` and, if ``outputs``, the outputs ``[B,t,D]`` of that (eval) pass."""
        self._check_x(history, rank=3, name="history")
        B, t = history.shape[:2]
        cache = self.new_cache(B)
        if t == 0:
            return cache, history.new_zeros(B, 0, self.d_model) if outputs else None
        trials, episode_start, index = self._pack(history, is_init, episode_start)
        if index is None:
            lengths = torch.full((B,), t, dtype=torch.long, device=history.device)
            last = torch.arange(B, device=history.device)
        else:
            lengths, last = index.lengths, index.last
        out = self._refresh(trials, lengths, episode_start, last, cache, outputs)
        if out is None or index is None:
            return cache, out
        return cache, unpack_trials(out, index, history.shape[:2])

    def past_support(self) -> str | None:
        """Why sequence mode from a past (``forward_sequence(past=...)``) cannot run on this memory, as the
        end of a sentence starting with that name ("... is not implemented for X"), or ``None`` when it can."""
        if type(self)._sequence_from is SequenceMemory._sequence_from:
            return f"is not implemented for {type(self).__name__} (it has no _sequence_from)"
        if not self.inter_episode_attention:
            return (
                "supports memories with inter-episode attention only; this one resets at every inner-episode "
                "start (inter_episode_attention=False, the no-IEA ablation)"
            )
        return None

    def _continue(
        self, x: Tensor, is_init: Tensor | None, segment_len: int | None, episode_start: Tensor | None, past: Cache
    ) -> Tensor:
        """``forward_sequence(x, ..., past=past)``: checks, then :meth:`_sequence_from`."""
        if not self.inter_episode_attention:
            raise ValueError(
                f"forward_sequence(past=...) {self.past_support()}; encode the whole prefix instead "
                "(forward_sequence without past; in PPO ppo.prefix_gradients=true)."
            )
        B, n = x.shape[:2]
        if past.batch_size != B:
            raise ValueError(
                f"forward_sequence(past=...) got x with {B} rows but past holds {past.batch_size}; row b of x "
                "continues row b of past (select the rows with past.select(rows))."
            )
        if is_init is not None and bool(self._check_flags(is_init, (B, n), "is_init").any()):
            raise ValueError(
                "forward_sequence(past=...): is_init is true inside x, but a new trial cannot continue a past; "
                "run that trial without past."
            )
        if episode_start is not None:
            episode_start = self._check_flags(episode_start, (B, n), "episode_start")
        return self._sequence_from(x, past, segment_len, episode_start)  # base: NotImplementedError

    # ------------------------------------------------------------------ cache API
    def reset_cache(self, batch_size: int) -> None:
        """Drop the module's cache and start ``batch_size`` empty rows."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self._cache = self.new_cache(batch_size)

    def cache_state(self) -> Cache | None:
        """A detached copy of the module's cache (everything needed to continue stepping)."""
        return None if self._cache is None else self._cache.clone()

    def load_cache_state(self, state: Cache) -> None:
        """Continue from ``state`` (from :meth:`cache_state` or :meth:`new_cache`); a copy is kept."""
        self._cache = state.clone()

    def cache_batch_size(self) -> int:
        """Rows in the module's cache (0 before the first reset)."""
        return 0 if self._cache is None else self._cache.batch_size

    def cache_nbytes(self) -> int:
        """Bytes of state the module's cache holds now (all rows)."""
        return 0 if self._cache is None else self._cache.nbytes()

    def cache_allocated_nbytes(self) -> int:
        """Bytes of storage the module's cache has allocated (at least :meth:`cache_nbytes`)."""
        return 0 if self._cache is None else self._cache.allocated_nbytes()

    def memory_tokens(self) -> Tensor:
        """Tokens (or state vectors) the module's cache holds per row now, ``[B]`` long."""
        return torch.zeros(0, dtype=torch.long) if self._cache is None else self._cache.tokens()

    # -------------------------------------------------------- for subclasses
    def _build(self, config: Any) -> None:
        """Create the layers from the validated ``config``."""
        raise NotImplementedError

    def new_cache(self, batch_size: int) -> Cache:
        """An empty cache of ``batch_size`` rows, independent of the module's own."""
        raise NotImplementedError

    def _sequence(self, x: Tensor, segment_len: int | None, episode_start: Tensor | None) -> Tensor:
        """Sequence mode on ``x [B,T,D]`` where every row is one trial starting at t=0."""
        raise NotImplementedError

    def _sequence_from(
        self, x: Tensor, past: Cache, segment_len: int | None, episode_start: Tensor | None
    ) -> Tensor:
        """Sequence mode on ``x [B,n,D]``, row ``b`` the steps right after those held in row ``b`` of
        ``past`` (no trial starts in ``x``); no gradient may reach ``past``."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot continue a past in sequence mode (forward_sequence(past=...)): it "
            "does not implement _sequence_from."
        )

    def _step(self, x: Tensor, cache: Cache, episode_start: Tensor | None) -> Tensor:
        """One step on ``x [B,D]`` against ``cache``; rows needing a reset were already reset."""
        raise NotImplementedError

    def _refresh(
        self, x: Tensor, lengths: Tensor, episode_start: Tensor | None, last: Tensor, cache: Cache, outputs: bool
    ) -> Tensor | None:
        """Sequence mode (eval) on ``x [N,L,D]`` (row i one trial of ``lengths[i]`` steps) -> ``[N,L,D]``
        (``None`` when ``outputs`` is false: only the cache is wanted); also fills the empty ``cache`` row b
        from trial ``last[b]``."""
        raise NotImplementedError

    def _no_segment_len(self, segment_len: int | None) -> None:
        if segment_len is not None:
            raise ValueError(f"segment_len applies to segment memories (memo, ac, rmt), not {type(self).__name__}.")

    # ------------------------------------------------------------ TorchRL face
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The TorchRL face: ``in_keys`` -> ``out_keys``; sequence mode under ``set_recurrent_mode(True)``
        (``[B, T]`` tensordicts), else one step against the module's cache."""
        from torchrl.modules.tensordict_module.rnn import recurrent_mode

        embed_key, init_key = self.in_keys
        x = tensordict.get(embed_key)
        is_init = tensordict.get(init_key, None)
        episode_start = tensordict.get(self.episode_start_key, None)
        if is_init is not None and is_init.shape[-1:] == (1,) and is_init.dim() == x.dim():
            is_init = is_init.squeeze(-1)
        if episode_start is not None and episode_start.shape[-1:] == (1,) and episode_start.dim() == x.dim():
            episode_start = episode_start.squeeze(-1)
        if recurrent_mode():
            if x.dim() != 3:
                raise ValueError(
                    f"recurrent mode expects a [B, T] tensordict with '{embed_key}' of shape [B, T, D]; got "
                    f"{tuple(x.shape)}. Collect whole sequences, or leave recurrent mode for one step."
                )
            out = self.forward_sequence(x, is_init, episode_start=episode_start)
        else:
            single = x.dim() == 1
            if single:
                x = x.unsqueeze(0)
                is_init = is_init.reshape(1) if is_init is not None else None
                episode_start = episode_start.reshape(1) if episode_start is not None else None
            if x.dim() != 2:
                raise ValueError(
                    f"step mode expects '{embed_key}' of shape [B, D]; got {tuple(x.shape)}. For [B, T, D] "
                    "inputs wrap the call in torchrl.modules.set_recurrent_mode(True)."
                )
            out = self.step(x, is_init, episode_start=episode_start)
            if single:
                out = out.squeeze(0)
        tensordict.set(self.out_keys[0], out)
        return tensordict

    # ------------------------------------------------------------- validation
    def _check_x(self, x: Tensor, rank: int, name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() != rank:
            want = "[B, T, D]" if rank == 3 else "[B, D]"
            raise ValueError(f"{name} must have shape {want} (rank {rank}); got shape {tuple(x.shape)}.")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{name} has width {x.shape[-1]} but the memory has d_model={self.d_model}; project the "
                "embedding to d_model first (MemoPolicy's encoder does this)."
            )
        param = next(self.parameters(), None)
        if param is not None:
            if x.device != param.device:
                raise ValueError(
                    f"{name} is on {x.device} but the memory is on {param.device}; move one of them (.to(...))."
                )
            if not x.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}.")
            if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
                raise TypeError(
                    f"{name} has dtype {x.dtype} but the memory's parameters are {param.dtype}; cast one of "
                    "them, or run under torch.autocast."
                )

    @staticmethod
    def _check_flags(flags: Tensor, shape: tuple, name: str) -> Tensor:
        if not isinstance(flags, Tensor):
            raise TypeError(f"{name} must be a bool tensor of shape {tuple(shape)}, got {type(flags).__name__}.")
        if tuple(flags.shape) == tuple(shape) + (1,):
            flags = flags.squeeze(-1)
        if tuple(flags.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(flags.shape)}.")
        if flags.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor; got {flags.dtype} (use .bool()).")
        return flags

    def _pack(
        self, x: Tensor, is_init: Tensor | None, episode_start: Tensor | None
    ) -> tuple[Tensor, Tensor | None, TrialIndex | None]:
        """``x [B,T,D]`` as one trial per row (packed at restarts; index ``None`` if nothing to pack)."""
        shape = tuple(x.shape[:2])
        resets = torch.zeros(shape, dtype=torch.bool, device=x.device)
        resets[:, 0] = True
        if is_init is not None:
            resets |= self._check_flags(is_init, shape, "is_init")
        if episode_start is not None:
            episode_start = self._check_flags(episode_start, shape, "episode_start")
            if not self.inter_episode_attention:
                resets |= episode_start
        if not resets[:, 1:].any():
            return x, episode_start, None
        (trials, episode_start), index = pack_trials(resets, x, episode_start)
        return trials, episode_start, index

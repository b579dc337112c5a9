"""The interface every sequence memory shares: a tensor API and a TorchRL (TensorDict) face.

Shapes: ``B`` batch rows (environments), ``T`` steps, ``D`` model width (``d_model``).

* ``forward_sequence(x[B,T,D], is_init[B,T]) -> [B,T,D]`` -- training (sequence) mode.
* ``step(x[B,D], is_init[B]) -> [B,D]`` -- acting (step) mode against a cache held in the module.
* ``refresh(history[B,t,D], is_init[B,t])`` -- rebuild the cache from a trial prefix under the
  current weights, so stepping on continues exactly as sequence mode would.

``is_init`` marks trial starts (memory is emptied there). ``episode_start`` marks inner-episode
starts; a memory built with ``inter_episode_attention=False`` (the no-IEA ablation) also resets there.
Subclasses implement ``_sequence``/``_step``/``_refresh`` on inputs where the reset logic has already
been resolved, so the packing of trials lives here once.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor

from lightning_memo.nn.cache import KVCache
from lightning_memo.nn.trials import last_trial, pack_trials, unpack_trials


def config_from_kwargs(config_cls: type, config: Any, kwargs: dict, memory_name: str) -> Any:
    """Build ``config_cls`` from a config object or keyword arguments, naming unknown keys."""
    if config is not None and kwargs:
        raise TypeError(f"pass either config= or keyword arguments to {memory_name}, not both.")
    if config is None:
        names = {f.name for f in fields(config_cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(
                f"{memory_name} got unknown argument(s) {unknown}; valid names: {sorted(names)}."
            )
        config = config_cls(**kwargs)
    elif not isinstance(config, config_cls):  # e.g. an omegaconf DictConfig
        config = config_from_kwargs(config_cls, None, dict(config), memory_name)
    config.validate()
    return config


class SequenceMemory(TensorDictModuleBase):
    """Base class: validation, reset handling and the TensorDict face of a sequence memory.

    TensorDict face: reads ``in_keys = [embed, is_init]`` (plus ``episode_start`` when present) and
    writes ``out_keys = [memory]``. Under TorchRL's ``set_recurrent_mode(True)`` the tensordict is
    ``[B, T]`` and sequence mode runs; otherwise it is ``[B]`` (or ``[]``) and one step is taken.
    """

    def __init__(
        self,
        d_model: int,
        *,
        inter_episode_attention: bool = True,
        in_keys: Sequence[str] | None = None,
        out_keys: Sequence[str] | None = None,
        episode_start_key: str = "episode_start",
    ) -> None:
        super().__init__()
        in_keys = list(in_keys) if in_keys is not None else ["embed", "is_init"]
        out_keys = list(out_keys) if out_keys is not None else ["memory"]
        if len(in_keys) != 2 or len(out_keys) != 1:
            raise ValueError(
                f"in_keys must be [embedding_key, is_init_key] and out_keys [output_key]; got "
                f"in_keys={in_keys}, out_keys={out_keys}."
            )
        self.in_keys = in_keys
        self.out_keys = out_keys
        self.episode_start_key = episode_start_key
        self.d_model = d_model
        self.inter_episode_attention = inter_episode_attention

    # ----------------------------------------------------------------- tensor API
    def forward_sequence(
        self,
        x: Tensor,
        is_init: Tensor | None = None,
        segment_len: int | None = None,
        episode_start: Tensor | None = None,
    ) -> Tensor:
        """Sequence mode. ``x [B,T,D]``, ``is_init/episode_start [B,T] bool`` -> ``[B,T,D]``."""
        self._check_x(x, rank=3, name="x")
        resets = self._resets(x, is_init, episode_start)
        if episode_start is not None:
            episode_start = self._check_flags(episode_start, x.shape[:2], "episode_start")
        if not resets[:, 1:].any():  # one trial per row: nothing to pack
            return self._sequence(x, segment_len=segment_len, episode_start=episode_start)
        packed, index = pack_trials(resets, x, episode_start)
        out = self._sequence(packed[0], segment_len=segment_len, episode_start=packed[1])
        return unpack_trials(out, index, x.shape[:2])

    @torch.no_grad()
    def step(self, x: Tensor, is_init: Tensor | None = None, episode_start: Tensor | None = None) -> Tensor:
        """Step mode. ``x [B,D]``, ``is_init/episode_start [B] bool`` -> ``[B,D]``.

        Acting only: no autograd graph is built (the cache would otherwise chain every step of a
        rollout into one graph). Train with :meth:`forward_sequence`.
        """
        self._check_x(x, rank=2, name="x")
        batch = x.shape[0]
        is_init = self._check_flags(is_init, (batch,), "is_init") if is_init is not None else None
        episode_start = (
            self._check_flags(episode_start, (batch,), "episode_start") if episode_start is not None else None
        )
        if self.cache_batch_size() != batch:
            if is_init is None or not bool(is_init.all()):
                raise RuntimeError(
                    f"step() got a batch of {batch} rows but the cache holds {self.cache_batch_size()}: call "
                    f"reset_cache({batch}) first, or pass is_init=True for every row."
                )
            self.reset_cache(batch)
        reset = is_init
        if not self.inter_episode_attention and episode_start is not None:
            reset = episode_start if reset is None else reset | episode_start
        if reset is not None and bool(reset.any()):
            self._reset_rows(reset)
        return self._step(x, episode_start=episode_start)

    @torch.no_grad()
    def refresh(
        self, history: Tensor, is_init: Tensor | None = None, episode_start: Tensor | None = None
    ) -> None:
        """Flush the cache and rebuild it from ``history [B,t,D]`` (a trial prefix) under current weights.

        Runs in the eval semantics (fixed segment length, no layer drop), whatever the module mode.
        """
        self._check_x(history, rank=3, name="history")
        if history.shape[1] == 0:
            self.reset_cache(history.shape[0])
            return
        resets = self._resets(history, is_init, episode_start)
        if episode_start is not None:
            episode_start = self._check_flags(episode_start, history.shape[:2], "episode_start")
        x, lengths, episode_start = last_trial(resets, history, episode_start)
        self._refresh(x, lengths, episode_start=episode_start)

    # -------------------------------------------------------- for subclasses
    def _sequence(self, x: Tensor, segment_len: int | None, episode_start: Tensor | None) -> Tensor:
        """Sequence mode on ``x [B,T,D]`` where every row is one trial starting at t=0."""
        raise NotImplementedError

    def _step(self, x: Tensor, episode_start: Tensor | None) -> Tensor:
        """One step on ``x [B,D]``; rows needing a reset were already reset."""
        raise NotImplementedError

    def _refresh(self, x: Tensor, lengths: Tensor, episode_start: Tensor | None) -> None:
        """Rebuild the cache from ``x [B,t,D]``: row b is one trial of ``lengths[b]`` steps (left-aligned)."""
        raise NotImplementedError

    def _reset_rows(self, rows: Tensor) -> None:
        """Empty the cache of the rows where ``rows [B]`` is true."""
        raise NotImplementedError

    def reset_cache(self, batch_size: int) -> None:
        """Drop the cache and start ``batch_size`` empty rows."""
        raise NotImplementedError

    def cache_batch_size(self) -> int:
        """Rows in the cache now (0 before the first reset)."""
        raise NotImplementedError

    def cache_nbytes(self) -> int:
        """Bytes of state the cache holds now (all rows)."""
        raise NotImplementedError

    def memory_tokens(self) -> Tensor:
        """Tokens (or state slots) held per row now, ``[B]`` long."""
        raise NotImplementedError

    # ------------------------------------------------------------ TorchRL face
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
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

    def _resets(self, x: Tensor, is_init: Tensor | None, episode_start: Tensor | None) -> Tensor:
        """Where the memory restarts, ``[B,T]`` bool (t=0 always, plus is_init, plus episodes if no IEA)."""
        shape = x.shape[:2]
        resets = torch.zeros(shape, dtype=torch.bool, device=x.device)
        if is_init is not None:
            resets |= self._check_flags(is_init, tuple(shape), "is_init")
        if episode_start is not None and not self.inter_episode_attention:
            resets |= self._check_flags(episode_start, tuple(shape), "episode_start")
        resets[:, 0] = True
        return resets


class CachedMemory(SequenceMemory):
    """A Transformer memory that acts through a :class:`~lightning_memo.nn.cache.KVCache`.

    Subclasses set ``self.config`` (with ``n_layers``, ``n_heads``, ``d_model``) and name in
    ``row_counters`` their per-row long tensors ``[B]``, which start at 0 and reset with their row.
    """

    row_counters: tuple[str, ...] = ()
    _cache: KVCache | None = None

    def reset_cache(self, batch_size: int) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        cfg = self.config
        device = next(self.parameters()).device
        self._cache = KVCache(cfg.n_layers, batch_size, cfg.n_heads, cfg.d_model // cfg.n_heads, device)
        for name in self.row_counters:
            setattr(self, name, torch.zeros(batch_size, dtype=torch.long, device=device))

    def cache_batch_size(self) -> int:
        return 0 if self._cache is None else self._cache.batch_size

    def cache_nbytes(self) -> int:
        return 0 if self._cache is None else self._cache.nbytes()

    def memory_tokens(self) -> Tensor:
        if self._cache is None:
            return torch.zeros(0, dtype=torch.long)
        return self._cache.lengths.clone()

    def _reset_rows(self, rows: Tensor) -> None:
        self._cache.reset_rows(rows)
        for name in self.row_counters:
            getattr(self, name)[rows] = 0

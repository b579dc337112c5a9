"""Memo: a Transformer that writes ``summary_len`` summary tokens every ``segment_len`` steps.

Sequence mode (training), per chunk ``C_i`` of ``L`` steps the attention window is ``[M | C_i | E]``
with positions restarting at 0 each window: memory ``0..m-1``, observations ``m..``, queries last.
Observations of earlier chunks are visible only through the memory ``M`` (the bottleneck). The
normed outputs at the queries become the summary ``S_i``, appended to ``M`` as input tokens.

A memory token only sees older memory tokens and always sits at the same position, so its per-layer
keys/values are the same in every later window: each summary is encoded once (older memory as KV
prefix) and its K/V reused as the prefix of later chunks -- the same function and gradients as
re-encoding ``[M | C_i | E]`` per window, with far fewer tokens through the layers.

Step mode (acting) keeps, per row, ``[memory K/V | current segment K/V]`` in a :class:`KVCache`;
at a segment end the queries run, the segment is dropped and the summary is encoded as memory.

Options: ``tbptt_segments=k`` gives the AC (truncated-gradient) baseline; ``max_memory_tokens`` bounds
the memory (oldest summaries evicted; ``position_policy`` "rebase" rotates kept keys so positions
restart at 0, "grow" keeps growing positions as in the paper's streaming evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_memo.nn.backbone import PrefixKV, Transformer, TransformerConfig, _positive, apply_rope
from lightning_memo.nn.base import SequenceMemory, config_from_kwargs
from lightning_memo.nn.cache import KVCache

POSITION_POLICIES = ("rebase", "grow")


@dataclass
class MemoConfig(TransformerConfig):
    """Memo's settings (backbone sizes plus the memory). Usable as an omegaconf structured config."""

    segment_len: int = 256  # l_seg: steps per segment
    summary_len: int = 32  # l_sum: summary tokens written per segment
    randomize_segments: bool = True  # draw the segment length per training forward call
    segment_jitter: float = 0.2  # L = int(l_seg * (1 - j + 2j*u)), u ~ U[0,1)
    summary_init_scale: float = 0.02  # std of the summary-query embeddings at init
    max_memory_tokens: Optional[int] = None  # streaming cap on memory tokens (None: unbounded)
    position_policy: str = "rebase"  # after eviction: "rebase" or "grow"
    tbptt_segments: Optional[int] = None  # AC baseline: gradients cut every k segments (None: full BPTT)
    inter_episode_attention: bool = True  # False: memory resets at every inner-episode start (no-IEA)

    def validate(self) -> None:
        super().validate()
        _positive(segment_len=self.segment_len, summary_len=self.summary_len)
        if not 0.0 <= self.segment_jitter < 1.0:
            raise ValueError(f"segment_jitter must be in [0, 1), got {self.segment_jitter}.")
        if self.summary_init_scale <= 0:
            raise ValueError(f"summary_init_scale must be > 0, got {self.summary_init_scale}.")
        if self.max_memory_tokens is not None and (
            not isinstance(self.max_memory_tokens, int) or self.max_memory_tokens < self.summary_len
        ):
            raise ValueError(
                f"max_memory_tokens must be an integer >= summary_len={self.summary_len} (one summary), "
                f"or None for no cap; got {self.max_memory_tokens!r}."
            )
        if self.position_policy not in POSITION_POLICIES:
            raise ValueError(f"position_policy must be one of {POSITION_POLICIES}, got {self.position_policy!r}.")
        if self.tbptt_segments is not None:
            _positive(tbptt_segments=self.tbptt_segments)


class _MemoryKV:
    """The memory part during a sequence-mode pass: per-layer K/V ``[B,H,m,Dh]`` and position offset."""

    def __init__(self, n_layers: int) -> None:
        self.kv: list[Optional[tuple[Tensor, Tensor]]] = [None] * n_layers
        self.length = 0
        self.offset = 0

    def append(self, new: list) -> None:
        self.kv = [
            n if old is None else (None if n is None else (torch.cat((old[0], n[0]), 2), torch.cat((old[1], n[1]), 2)))
            for old, n in zip(self.kv, new)
        ]

    def detach(self) -> None:
        self.kv = [None if kv is None else (kv[0].detach(), kv[1].detach()) for kv in self.kv]

    def evict_front(self, count: int, rebase: bool, rope_base: float) -> None:
        def cut(kv):
            if kv is None:
                return None
            k, v = kv[0][:, :, count:], kv[1][:, :, count:]
            if rebase:
                k = apply_rope(k, torch.full((k.shape[2],), -count, device=k.device), rope_base)
            return k, v

        self.kv = [cut(kv) for kv in self.kv]
        self.length -= count
        if not rebase:
            self.offset += count


# Called per chunk in refresh with (chunk index, memory before the chunk, the chunk's K/V per layer),
# and once after the loop with (number of chunks, final memory, None).
ChunkHook = Callable[[int, _MemoryKV, list], None]


class MemoMemory(SequenceMemory):
    """Memo as a TorchRL module. Build with ``MemoMemory(d_model=..., segment_len=..., ...)`` or
    ``MemoMemory(config=MemoConfig(...))``; see :class:`MemoConfig` for every option.

    Tensor API: ``forward_sequence(x[B,T,D]) -> [B,T,D]``, ``step(x[B,D]) -> [B,D]``,
    ``refresh(history[B,t,D])``, ``reset_cache(B)``, ``cache_nbytes()``, ``memory_tokens()``.
    """

    def __init__(
        self,
        config: MemoConfig | None = None,
        *,
        in_keys: Sequence[str] | None = None,
        out_keys: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        cfg = config_from_kwargs(MemoConfig, config, kwargs, type(self).__name__)
        super().__init__(
            cfg.d_model, inter_episode_attention=cfg.inter_episode_attention, in_keys=in_keys, out_keys=out_keys
        )
        self.config = cfg
        self.transformer = Transformer(cfg)
        self.summary_queries = nn.Parameter(torch.randn(cfg.summary_len, cfg.d_model) * cfg.summary_init_scale)
        self.last_segment_len: int | None = None  # the L used by the latest sequence-mode call
        self._cache: KVCache | None = None
        self._memory_len: Tensor | None = None  # [B] memory tokens per row (the rest is segment)

    # ------------------------------------------------------------ sequence mode
    def draw_segment_len(self) -> int:
        """``l_seg`` in eval mode or without randomisation, else ``int(l_seg * (1 - j + 2j*u))``."""
        cfg = self.config
        if not (self.training and cfg.randomize_segments):
            return cfg.segment_len
        u = torch.rand(()).item()
        return max(1, int(cfg.segment_len * (1.0 - cfg.segment_jitter + 2.0 * cfg.segment_jitter * u)))

    def _sequence(self, x: Tensor, segment_len: int | None, episode_start: Tensor | None) -> Tensor:
        L = segment_len if segment_len is not None else self.draw_segment_len()
        _positive(segment_len=L)
        self.last_segment_len = L
        return self._run_chunks(x, L, self.transformer.draw_layer_skips())

    def _run_chunks(
        self, x: Tensor, L: int, skip: list[bool] | None, hook: ChunkHook | None = None, final_summary: bool = False
    ) -> Tensor:
        """Chunk loop over ``x [B,T,D]`` (every row a trial from t=0); returns ``[B,T,D]``.

        ``hook`` sees each chunk's memory and K/V (refresh); ``final_summary`` also summarises a full
        last chunk (so the memory after the whole input exists, again for refresh).
        """
        cfg, tf = self.config, self.transformer
        B, T, _ = x.shape
        queries = self.summary_queries.to(x.dtype).expand(B, -1, -1)
        memory = _MemoryKV(cfg.n_layers)
        outputs = []
        for i, start in enumerate(range(0, T, L)):
            if cfg.tbptt_segments is not None and i > 0 and i % cfg.tbptt_segments == 0:
                memory.detach()  # AC: no gradient crosses this segment boundary
            chunk = x[:, start : start + L]
            n = chunk.shape[1]
            summarise = n == L and (start + L < T or final_summary)
            tokens = torch.cat((chunk, queries), dim=1) if summarise else chunk
            pos = memory.offset + memory.length + torch.arange(tokens.shape[1], device=x.device)
            window = PrefixKV(memory.kv, cfg.n_layers)
            h = tf(tokens, pos, window, skip)
            outputs.append(h[:, :n])
            if hook is not None:
                hook(i, memory, window.new)
            if summarise:
                self._write_summary(memory, h[:, n:], skip)
        if hook is not None:
            hook(len(outputs), memory, None)  # rows that end exactly after the last full chunk
        return torch.cat(outputs, dim=1)

    def _write_summary(self, memory: _MemoryKV, summary: Tensor, skip: list[bool] | None) -> None:
        """Encode ``summary [B,l_sum,D]`` once, older memory as prefix, and append its K/V to ``memory``."""
        cfg = self.config
        pos = memory.offset + memory.length + torch.arange(cfg.summary_len, device=summary.device)
        encoder = PrefixKV(memory.kv, cfg.n_layers)
        self.transformer(summary, pos, encoder, skip, kv_only=True)
        memory.append(encoder.new)
        memory.length += cfg.summary_len
        if cfg.max_memory_tokens is not None and memory.length > cfg.max_memory_tokens:
            excess = memory.length - cfg.max_memory_tokens
            evict = -(-excess // cfg.summary_len) * cfg.summary_len  # whole summaries
            memory.evict_front(evict, cfg.position_policy == "rebase", cfg.rope_base)

    # ---------------------------------------------------------------- step mode
    def reset_cache(self, batch_size: int) -> None:
        _positive(batch_size=batch_size)
        cfg = self.config
        device = self.summary_queries.device
        self._cache = KVCache(cfg.n_layers, batch_size, cfg.n_heads, cfg.d_model // cfg.n_heads, device)
        self._memory_len = torch.zeros(batch_size, dtype=torch.long, device=device)

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
        self._memory_len[rows] = 0

    def _step(self, x: Tensor, episode_start: Tensor | None) -> Tensor:
        cache = self._cache
        pos = cache.positions(1)
        h = self.transformer(x[:, None], pos, cache.source())
        cache.advance(1)
        full = (cache.lengths - self._memory_len) == self.config.segment_len
        if bool(full.any()):
            self._close_segments(full.nonzero().squeeze(1))
        return h[:, 0]

    def _close_segments(self, rows: Tensor) -> None:
        """For ``rows`` whose segment is complete: summarise, drop the segment, store the summary."""
        cfg, cache, tf = self.config, self._cache, self.transformer
        queries = self.summary_queries.expand(rows.shape[0], -1, -1)
        summary = tf(queries, cache.positions(cfg.summary_len, rows), cache.source(rows))
        cache.lengths[rows] = self._memory_len[rows]  # drop the segment
        tf(summary, cache.positions(cfg.summary_len, rows), cache.source(rows), kv_only=True)
        cache.advance(cfg.summary_len, rows)
        self._memory_len[rows] += cfg.summary_len
        if cfg.max_memory_tokens is not None:
            excess = (self._memory_len[rows] - cfg.max_memory_tokens).clamp(min=0)
            evict = (excess + cfg.summary_len - 1) // cfg.summary_len * cfg.summary_len
            over = evict > 0
            if bool(over.any()):
                cache.evict_front(rows[over], evict[over], cfg.position_policy == "rebase", cfg.rope_base)
                self._memory_len[rows[over]] -= evict[over]

    # ------------------------------------------------------------------ refresh
    def _refresh(self, x: Tensor, lengths: Tensor, episode_start: Tensor | None) -> None:
        L = self.config.segment_len
        self.reset_cache(x.shape[0])
        done_chunks, in_segment = lengths // L, lengths % L

        def capture(i: int, memory: _MemoryKV, chunk_kv: list | None) -> None:
            rows = (done_chunks == i).nonzero().squeeze(1)
            if rows.numel():
                self._load_rows(rows, memory, chunk_kv, in_segment[rows])

        self._run_chunks(x, L, skip=None, hook=capture, final_summary=True)

    def _load_rows(self, rows: Tensor, memory: _MemoryKV, chunk_kv: list | None, seg_len: Tensor) -> None:
        """Load ``memory`` plus the first ``seg_len`` tokens of ``chunk_kv`` into the cache rows ``rows``."""
        cache, m = self._cache, memory.length
        for layer in range(self.config.n_layers):
            parts = [p for p in (memory.kv[layer], chunk_kv[layer] if chunk_kv else None) if p is not None]
            if not parts:
                continue
            k = torch.cat([p[0][rows] for p in parts], 2)
            v = torch.cat([p[1][rows] for p in parts], 2)
            cache._reserve(k.shape[2], k)
            cache.k[layer][rows, :, : k.shape[2]] = k.to(cache.k[layer].dtype)
            cache.v[layer][rows, :, : v.shape[2]] = v.to(cache.v[layer].dtype)
        cache.lengths[rows] = m + seg_len
        cache.offsets[rows] = memory.offset
        self._memory_len[rows] = m

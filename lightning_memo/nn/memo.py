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
from typing import Optional, Sequence

import torch
from torch import Tensor

from lightning_memo.nn.backbone import PrefixKV
from lightning_memo.nn.base import config_from_kwargs
from lightning_memo.nn.segments import MemoryKV, SegmentConfig, SegmentMemory

POSITION_POLICIES = ("rebase", "grow")


@dataclass
class MemoConfig(SegmentConfig):
    """Memo's settings (backbone, segments, streaming). Usable as an omegaconf structured config."""

    max_memory_tokens: Optional[int] = None  # streaming cap on memory tokens (None: unbounded)
    position_policy: str = "rebase"  # after eviction: "rebase" or "grow"

    def validate(self) -> None:
        super().validate()
        if self.max_memory_tokens is not None and (
            not isinstance(self.max_memory_tokens, int) or self.max_memory_tokens < self.summary_len
        ):
            raise ValueError(
                f"max_memory_tokens must be an integer >= summary_len={self.summary_len} (one summary), "
                f"or None for no cap; got {self.max_memory_tokens!r}."
            )
        if self.position_policy not in POSITION_POLICIES:
            raise ValueError(f"position_policy must be one of {POSITION_POLICIES}, got {self.position_policy!r}.")


class MemoMemory(SegmentMemory):
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
        super().__init__(config_from_kwargs(MemoConfig, config, kwargs, type(self).__name__), in_keys, out_keys)

    def _write_summary(self, memory: MemoryKV, summary: Tensor, skip: list[bool] | None) -> None:
        """Encode ``summary`` once, older memory as prefix, at positions ``m..m+l_sum-1``; append it."""
        cfg = self.config
        pos = memory.offset + memory.length + torch.arange(cfg.summary_len, device=summary.device)
        encoder = PrefixKV(memory.kv, cfg.n_layers)
        self.transformer(summary, pos, encoder, skip, kv_only=True)
        memory.append(encoder.new)
        memory.length += cfg.summary_len
        if cfg.max_memory_tokens is not None and memory.length > cfg.max_memory_tokens:
            evict = _whole_summaries(memory.length - cfg.max_memory_tokens, cfg.summary_len)
            memory.evict_front(evict, cfg.position_policy == "rebase", cfg.rope_base)

    def _write_summary_rows(self, rows: Tensor, summary: Tensor) -> None:
        cfg, cache = self.config, self._cache
        cache.lengths[rows] = self._memory_len[rows]  # drop the segment
        self.transformer(summary, cache.positions(cfg.summary_len, rows), cache.source(rows), kv_only=True)
        cache.advance(cfg.summary_len, rows)
        self._memory_len[rows] += cfg.summary_len
        if cfg.max_memory_tokens is not None:
            evict = _whole_summaries((self._memory_len[rows] - cfg.max_memory_tokens).clamp(min=0), cfg.summary_len)
            over = evict > 0
            if bool(over.any()):
                cache.evict_front(rows[over], evict[over], cfg.position_policy == "rebase", cfg.rope_base)
                self._memory_len[rows[over]] -= evict[over]


def _whole_summaries(excess, summary_len: int):
    """``excess`` tokens rounded up to whole summaries (int or tensor)."""
    return (excess + summary_len - 1) // summary_len * summary_len

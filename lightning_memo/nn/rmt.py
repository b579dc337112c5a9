"""RMT: a Recurrent Memory Transformer, Memo's segment loop with the memory *replaced* each segment.

Sequence mode, per chunk ``C_i`` of ``L`` steps the window is ``[M | C_i | E]`` with positions
restarting at 0: memory ``0..m-1`` (``m = summary_len``, 0 for the first chunk), observations after
it, the summary queries ``E`` last (only when ``C_i`` is full). The normed outputs at the queries are
``S_i`` and the next memory is ``M <- S_i``. Gradients flow through the whole recurrence (BPTT).

Memory tokens are causal among themselves, so their keys/values are those of ``M`` encoded alone at
positions ``0..m-1``: each memory is encoded once and used as the KV prefix of its chunk. Step mode
does exactly the same through a :class:`KVCache` (``[memory | segment]`` per row; at a segment end the
queries run, everything is dropped and the new memory is encoded from position 0), so acting and
training compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from lightning_memo.nn.backbone import PrefixKV
from lightning_memo.nn.base import config_from_kwargs
from lightning_memo.nn.segments import MemoryKV, SegmentConfig, SegmentMemory


@dataclass
class RMTConfig(SegmentConfig):
    """RMT's settings: backbone sizes plus the segment recurrence; ``summary_len`` is the memory size."""


class RMTMemory(SegmentMemory):
    """RMT as a TorchRL module: ``RMTMemory(d_model=..., segment_len=..., summary_len=...)``.
    See :class:`RMTConfig`. Cache per row: ``summary_len`` memory tokens plus the current segment."""

    def __init__(
        self,
        config: RMTConfig | None = None,
        *,
        in_keys: Sequence[str] | None = None,
        out_keys: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(config_from_kwargs(RMTConfig, config, kwargs, type(self).__name__), in_keys, out_keys)

    def _write_summary(self, memory: MemoryKV, summary: Tensor, skip: list[bool] | None) -> None:
        """``M <- S_i``: encode the summary alone at positions ``0..l_sum-1``."""
        cfg = self.config
        encoder = PrefixKV(None, cfg.n_layers)
        self.transformer(summary, torch.arange(cfg.summary_len, device=summary.device), encoder, skip, kv_only=True)
        memory.kv, memory.length = encoder.new, cfg.summary_len

    def _write_summary_rows(self, rows: Tensor, summary: Tensor) -> None:
        cfg, cache = self.config, self._cache
        cache.lengths[rows] = 0  # drop the old memory and the segment
        self.transformer(summary, cache.positions(cfg.summary_len, rows), cache.source(rows), kv_only=True)
        cache.advance(cfg.summary_len, rows)
        self._memory_len[rows] = cfg.summary_len

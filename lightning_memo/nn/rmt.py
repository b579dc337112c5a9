"""RMT: a Recurrent Memory Transformer, Memo's segment loop with the memory *replaced* each segment.

Sequence mode, per chunk ``C_i`` of ``L`` steps the window is ``[M | C_i | E]`` with positions
restarting at 0: memory ``0..m-1`` (``m = summary_len``, 0 for the first chunk), observations after
it, the summary queries ``E`` last (only when ``C_i`` is full). The normed outputs at the queries are
``S_i`` and the next memory is ``M <- S_i``. Gradients flow through the whole recurrence (BPTT).

Memory tokens are causal among themselves, so their keys/values are those of ``M`` encoded alone at
positions ``0..m-1``: each memory is encoded once and used as the KV prefix of its chunk. Step mode
does exactly the same through the cache (``[memory | segment]`` per row; at a segment end the whole
row is dropped and the new memory is encoded from position 0), so acting and training compute the
same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_memo.nn.backbone import KVCache
from lightning_memo.nn.memo import MemoMemory, MemoryKV, SegmentConfig


@dataclass
class RMTConfig(SegmentConfig):
    """RMT's settings: backbone sizes plus the segment recurrence; ``summary_len`` is the memory size."""


class RMTMemory(MemoMemory):
    """RMT as a TorchRL module: ``RMTMemory(d_model=..., segment_len=..., summary_len=...)``.
    See :class:`RMTConfig`. Cache per row: ``summary_len`` memory tokens plus the current segment."""

    config_cls = RMTConfig

    def _cache_bound(self) -> int:
        """Slots a row can need: the memory, a full segment and the queries."""
        return self.config.segment_len + 2 * self.config.summary_len

    def _write_summary(self, memory: MemoryKV, summary: Tensor, skip: list[bool] | None) -> None:
        """``M <- S_i``: encode the summary alone at positions ``0..l_sum-1``."""
        memory.clear()
        self._append_summary(memory, summary, skip)

    def _write_summary_rows(self, cache: KVCache, rows: Tensor, summary: Tensor) -> None:
        """Drop the old memory and the segment of ``rows``; the summary is the new memory."""
        self._append_summary_rows(cache, rows, summary, keep=torch.zeros_like(rows))

"""What Memo and RMT share: segments of ``segment_len`` steps, each closed by ``summary_len`` queries.

Sequence mode: per chunk ``C_i`` of ``L`` steps the attention window is ``[M | C_i | E]`` with
positions restarting at 0 in every window (memory ``0..m-1``, observations ``m..``, queries last;
queries only after a full chunk). The normed outputs at the queries are the summary ``S_i``. What
becomes of it is the subclass's business (:meth:`SegmentMemory._write_summary`): Memo appends it to
the memory, RMT replaces the memory with it. Memory tokens only attend to older memory tokens, so
their keys/values are computed once, when the summary is stored, and reused as the KV prefix of the
following chunks.

Step mode keeps, per row, ``[memory K/V | current segment K/V]`` in a :class:`KVCache`; when a row's
segment is complete the queries run against it and the subclass stores the summary
(:meth:`SegmentMemory._write_summary_rows`). ``refresh`` runs the sequence-mode loop with the fixed
``segment_len`` and loads each row's memory and partial segment into the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_memo.nn.backbone import PrefixKV, Transformer, TransformerConfig, _positive, apply_rope
from lightning_memo.nn.base import CachedMemory

LayerKV = list[Optional[tuple[Tensor, Tensor]]]  # per layer (k, v) [B,H,n,Dh]; None for a skipped layer


@dataclass
class SegmentConfig(TransformerConfig):
    """Backbone sizes plus the segment recurrence shared by Memo and RMT."""

    segment_len: int = 256  # l_seg: steps per segment
    summary_len: int = 32  # l_sum: summary tokens written per segment
    randomize_segments: bool = True  # draw the segment length per training forward call
    segment_jitter: float = 0.2  # L = int(l_seg * (1 - j + 2j*u)), u ~ U[0,1)
    summary_init_scale: float = 0.02  # std of the summary-query embeddings at init
    tbptt_segments: Optional[int] = None  # gradients cut every k segments (None: full BPTT; k: the AC baseline)
    inter_episode_attention: bool = True  # False: memory resets at every inner-episode start (no-IEA)

    def validate(self) -> None:
        super().validate()
        _positive(segment_len=self.segment_len, summary_len=self.summary_len)
        if not 0.0 <= self.segment_jitter < 1.0:
            raise ValueError(f"segment_jitter must be in [0, 1), got {self.segment_jitter}.")
        if self.summary_init_scale <= 0:
            raise ValueError(f"summary_init_scale must be > 0, got {self.summary_init_scale}.")
        if self.tbptt_segments is not None:
            _positive(tbptt_segments=self.tbptt_segments)


class MemoryKV:
    """The memory during a sequence-mode pass: per-layer K/V ``[B,H,m,Dh]``, length ``m``, position offset."""

    def __init__(self, n_layers: int) -> None:
        self.kv: LayerKV = [None] * n_layers
        self.length = 0
        self.offset = 0

    def append(self, new: LayerKV) -> None:
        self.kv = [
            n if old is None or n is None else (torch.cat((old[0], n[0]), 2), torch.cat((old[1], n[1]), 2))
            for old, n in zip(self.kv, new)
        ]

    def detach(self) -> None:
        self.kv = [None if kv is None else (kv[0].detach(), kv[1].detach()) for kv in self.kv]

    def evict_front(self, count: int, rebase: bool, rope_base: float) -> None:
        """Drop the first ``count`` tokens; ``rebase`` rotates the rest back to positions from 0."""

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


# Called per chunk with (chunk index, memory before the chunk, the chunk's K/V per layer), and once
# after the loop with (number of chunks, final memory, None).
ChunkHook = Callable[[int, MemoryKV, Optional[LayerKV]], None]


class SegmentMemory(CachedMemory):
    """Base of Memo and RMT: the chunk loop, step mode and refresh. See the module docstring."""

    row_counters = ("_memory_len",)  # [B] memory tokens per row; the rest of the row is the segment

    def __init__(self, cfg: SegmentConfig, in_keys: Sequence[str] | None, out_keys: Sequence[str] | None) -> None:
        super().__init__(
            cfg.d_model, inter_episode_attention=cfg.inter_episode_attention, in_keys=in_keys, out_keys=out_keys
        )
        self.config = cfg
        self.transformer = Transformer(cfg)
        self.summary_queries = nn.Parameter(torch.randn(cfg.summary_len, cfg.d_model) * cfg.summary_init_scale)
        self.last_segment_len: int | None = None  # the L used by the latest sequence-mode call

    # --------------------------------------------------------- for subclasses
    def _write_summary(self, memory: MemoryKV, summary: Tensor, skip: list[bool] | None) -> None:
        """Sequence mode: store ``summary [B,l_sum,D]`` in ``memory`` (encoding its K/V)."""
        raise NotImplementedError

    def _write_summary_rows(self, rows: Tensor, summary: Tensor) -> None:
        """Step mode: drop the segment of ``rows`` and store ``summary [r,l_sum,D]`` in their cache."""
        raise NotImplementedError

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
        memory = MemoryKV(cfg.n_layers)
        outputs = []
        for i, start in enumerate(range(0, T, L)):
            if cfg.tbptt_segments is not None and i > 0 and i % cfg.tbptt_segments == 0:
                memory.detach()  # truncated BPTT: no gradient crosses this segment boundary
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

    # ---------------------------------------------------------------- step mode
    def _step(self, x: Tensor, episode_start: Tensor | None) -> Tensor:
        cache = self._cache
        h = self.transformer(x[:, None], cache.positions(1), cache.source())
        cache.advance(1)
        full = (cache.lengths - self._memory_len) == self.config.segment_len
        if bool(full.any()):
            rows = full.nonzero().squeeze(1)
            queries = self.summary_queries.expand(rows.shape[0], -1, -1)
            summary = self.transformer(queries, cache.positions(self.config.summary_len, rows), cache.source(rows))
            self._write_summary_rows(rows, summary)
        return h[:, 0]

    # ------------------------------------------------------------------ refresh
    def _refresh(self, x: Tensor, lengths: Tensor, episode_start: Tensor | None) -> None:
        L = self.config.segment_len
        self.reset_cache(x.shape[0])
        done_chunks, in_segment = lengths // L, lengths % L

        def capture(i: int, memory: MemoryKV, chunk_kv: LayerKV | None) -> None:
            rows = (done_chunks == i).nonzero().squeeze(1)
            if rows.numel():
                self._load_rows(rows, memory, chunk_kv, in_segment[rows])

        self._run_chunks(x, L, skip=None, hook=capture, final_summary=True)

    def _load_rows(self, rows: Tensor, memory: MemoryKV, chunk_kv: LayerKV | None, seg_len: Tensor) -> None:
        """Load ``memory`` plus the first ``seg_len`` tokens of ``chunk_kv`` into the cache rows ``rows``."""
        cache = self._cache
        source = cache.source(rows)  # writes from slot 0: the rows are empty after reset_cache
        for layer in range(self.config.n_layers):
            parts = [p[layer] for p in (memory.kv, chunk_kv) if p is not None and p[layer] is not None]
            if parts:
                source(layer, torch.cat([p[0][rows] for p in parts], 2), torch.cat([p[1][rows] for p in parts], 2))
        cache.lengths[rows] = memory.length + seg_len
        cache.offsets[rows] = memory.offset
        self._memory_len[rows] = memory.length

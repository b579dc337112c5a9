"""Memo: a Transformer that writes ``summary_len`` summary tokens every ``segment_len`` steps.

Sequence mode (training), per chunk ``C_i`` of ``L`` steps the attention window is ``[M | C_i | E]``
with positions restarting at 0 each window: memory ``0..m-1``, observations ``m..``, queries last.
Observations of earlier chunks are visible only through the memory ``M`` (the bottleneck). The
normed outputs at the queries become the summary ``S_i``, appended to ``M`` as input tokens.

A memory token only sees older memory tokens and always sits at the same position, so its per-layer
keys/values are the same in every later window: each summary is encoded once (older memory as KV
prefix) and its K/V reused as the prefix of later chunks -- the same function and gradients as
re-encoding ``[M | C_i | E]`` per window, with far fewer tokens through the layers.

Step mode (acting) keeps, per row, ``[memory K/V | current segment K/V]`` in a
:class:`~lightning_memo.nn.backbone.KVCache` (counters ``"memory"``: the memory tokens at the front,
``"segments"``: segments summarised so far); at a segment end the queries run, the segment is dropped
and the summary is encoded as memory. ``refresh`` runs the sequence-mode loop with the fixed
``segment_len`` and loads each row's memory and partial segment into the cache. Sequence mode from
such a cache (``forward_sequence(x, past=cache)``) starts the loop from its memory and partial
segment: the first chunk completes that segment, the rest are chunked as usual.

The segment recurrence here is shared with RMT (:mod:`lightning_memo.nn.rmt`), which only changes
what a summary does to the memory. Options: ``tbptt_segments=k`` gives the AC (truncated-gradient)
baseline; ``inter_episode_attention=False`` the no-IEA ablation; ``max_memory_tokens`` bounds the
memory (oldest summaries evicted; ``position_policy`` "rebase" rotates kept keys so positions restart
at 0, "grow" keeps growing positions as in the paper's streaming evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from lightning_memo.nn.backbone import (
    KVCache,
    LayerKV,
    PrefixKV,
    Transformer,
    TransformerConfig,
    drop_front,
    positive,
)
from lightning_memo.nn.base import SequenceMemory, same_in_every_row

POSITION_POLICIES = ("rebase", "grow")


@dataclass
class SegmentConfig(TransformerConfig):
    """Backbone sizes plus the segment recurrence shared by Memo and RMT."""

    segment_len: int = 256
    """`l_seg`: steps per segment; a summary is written after each. Positive."""

    summary_len: int = 32
    """`l_sum`: summary tokens written per segment (RMT: the memory size). Positive."""

    randomize_segments: bool = True
    """Draw the segment length per training forward call (see `segment_jitter`); eval mode, step mode and `refresh`
    always use `segment_len`."""

    segment_jitter: float = 0.2
    """`j`: training draws `L = int(l_seg * (1 - j + 2j*u))`, `u ~ U[0, 1)`. In [0, 1)."""

    summary_init_scale: float = 0.02
    """Standard deviation of the summary-query embeddings at init. > 0."""

    tbptt_segments: Optional[int] = None
    """`None`: gradients through every summary (Memo). `k` (positive): the memory is detached every `k` segments
    (the AC baseline)."""

    inter_episode_attention: bool = True
    """`False`: the memory resets at every inner-episode start, like at `is_init` (the no-IEA ablation)."""

    def validate(self) -> None:
        super().validate()
        positive(segment_len=self.segment_len, summary_len=self.summary_len)
        if not 0.0 <= self.segment_jitter < 1.0:
            raise ValueError(f"segment_jitter must be in [0, 1), got {self.segment_jitter}.")
        if self.summary_init_scale <= 0:
            raise ValueError(f"summary_init_scale must be > 0, got {self.summary_init_scale}.")
        if self.tbptt_segments is not None:
            positive(tbptt_segments=self.tbptt_segments)


@dataclass
class MemoConfig(SegmentConfig):
    """Memo's settings (backbone, segments, streaming). Usable as an omegaconf structured config."""

    max_memory_tokens: Optional[int] = None
    """Streaming cap on memory tokens: the oldest whole summaries are evicted beyond it. `None` (unbounded) or an
    integer >= `summary_len`."""

    position_policy: str = "rebase"
    """After an eviction: `"rebase"` rotates the kept keys back so positions stay within what training saw (exact
    for RoPE); `"grow"` keeps positions growing (the paper's streaming evaluation)."""

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


class MemoryKV:
    """The memory during a sequence-mode pass: per-layer K/V ``[B,H,m,Dh]``, length ``m``, position offset.
    Appending concatenates, so autograd sees every summary."""

    def __init__(self, n_layers: int) -> None:
        self.kv: LayerKV = [None] * n_layers
        self.length = 0
        self.offset = 0

    def append(self, new: LayerKV, count: int) -> None:
        """``M <- [M | new]``: ``count`` tokens' K/V per layer (``None`` for a skipped layer)."""
        self.kv = [
            n if old is None or n is None else (torch.cat((old[0], n[0]), 2), torch.cat((old[1], n[1]), 2))
            for old, n in zip(self.kv, new)
        ]
        self.length += count

    def clear(self) -> None:
        self.kv, self.length = [None] * len(self.kv), 0

    def detach(self) -> None:
        self.kv = [None if kv is None else (kv[0].detach(), kv[1].detach()) for kv in self.kv]

    def evict_front(self, count: int, rebase: bool, rope_base: float) -> None:
        """Drop the first ``count`` tokens; ``rebase`` rotates the rest back to positions from 0."""

        def cut(kv: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor] | None:
            if kv is None:
                return None
            counts = torch.full((kv[0].shape[0],), count, device=kv[0].device)
            k, v = drop_front(kv[0], kv[1], counts, rebase, rope_base)
            return k[:, :, : self.length - count], v[:, :, : self.length - count]

        self.kv = [cut(kv) for kv in self.kv]
        self.length -= count
        if not rebase:
            self.offset += count


class CachedMemoryKV(MemoryKV):
    """The memory of a pass without gradients (refresh) kept in slots ``0..m-1`` of a :class:`KVCache`
    whose rows are the pass's rows: summaries are written in place, so no second copy of the memory
    exists and the cache is ready when the pass ends."""

    def __init__(self, cache: KVCache) -> None:
        self.cache, self.length, self.offset = cache, 0, 0

    @property
    def kv(self) -> LayerKV:
        if self.length == 0:
            return [None] * self.cache.n_layers
        return [self.cache.held(layer, 0, self.length) for layer in range(self.cache.n_layers)]

    def append(self, new: LayerKV, count: int) -> None:
        for layer, kv in enumerate(new):
            if kv is not None:
                self.cache.write(layer, self.length, *kv)
        self.length += count
        self.cache.lengths.fill_(self.length)

    def clear(self) -> None:
        self.length = 0
        self.cache.lengths.zero_()

    def detach(self) -> None:
        pass  # no graph to cut

    def evict_front(self, count: int, rebase: bool, rope_base: float) -> None:
        rows = torch.arange(self.cache.batch_size, device=self.cache.lengths.device)
        self.cache.evict_front(rows, torch.full_like(rows, count), rebase, rope_base)
        self.length -= count
        if not rebase:
            self.offset += count


@dataclass
class SegmentPast:
    """Where a sequence-mode pass starts when it continues a cache: the memory, the K/V of the ``held``
    tokens of the segment in progress (``None`` when none), and the segments summarised before."""

    memory: MemoryKV
    segment: LayerKV | None
    held: int
    segments: int


# Called per chunk with (chunk index, its first step, its outputs [B,n,D], the memory before its summary,
# its K/V per layer), and once after the loop with (number of chunks, T, None, final memory, None).
ChunkHook = Callable[[int, int, Optional[Tensor], MemoryKV, Optional[LayerKV]], None]


def _join(a: LayerKV | None, b: LayerKV | None) -> LayerKV | None:
    """Per layer ``[a | b]`` along the tokens (either may be ``None``, or hold ``None`` layers)."""
    if a is None or b is None:
        return a if b is None else b
    return [
        x if y is None else y if x is None else (torch.cat((x[0], y[0]), 2), torch.cat((x[1], y[1]), 2))
        for x, y in zip(a, b)
    ]


class MemoMemory(SequenceMemory):
    """Memo as a TorchRL module. Build with ``MemoMemory(d_model=..., segment_len=..., ...)`` or
    ``MemoMemory(config=MemoConfig(...))``; see :class:`MemoConfig` for every option.

    Tensor API: ``forward_sequence(x[B,T,D]) -> [B,T,D]``, ``step(x[B,D]) -> [B,D]``,
    ``refresh(history[B,t,D]) -> [B,t,D]``, ``reset_cache(B)``, ``new_cache(B)``, ``cache_nbytes()``.
    """

    config_cls = MemoConfig

    def _build(self, cfg: SegmentConfig) -> None:
        self.transformer = Transformer(cfg)
        self.summary_queries = nn.Parameter(torch.randn(cfg.summary_len, cfg.d_model) * cfg.summary_init_scale)

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty per-row KV cache of ``batch_size`` rows with counters per row: ``memory`` (tokens at the
        front of the row) and ``segments`` (summarised so far)."""
        return self.transformer.new_cache(batch_size, counters=("memory", "segments"), bound=self._cache_bound())

    def _cache_bound(self) -> int | None:
        """Slots a row can need: the memory cap, a full segment and the queries (None: no cap)."""
        cfg = self.config
        if cfg.max_memory_tokens is None:
            return None
        return cfg.max_memory_tokens + cfg.segment_len + cfg.summary_len

    # ------------------------------------------------------------ sequence mode
    def segment_len_for(self, segment_len: int | None = None) -> int:
        """The segment length a sequence-mode call uses: ``segment_len`` if given, else ``l_seg`` in
        eval mode or without randomisation, else a draw ``int(l_seg * (1 - j + 2j*u))``."""
        cfg = self.config
        if segment_len is not None:
            positive(segment_len=segment_len)
            return segment_len
        if not (self.training and cfg.randomize_segments):
            return cfg.segment_len
        u = torch.rand(()).item()
        return max(1, int(cfg.segment_len * (1.0 - cfg.segment_jitter + 2.0 * cfg.segment_jitter * u)))

    def _sequence(self, x: Tensor, segment_len: int | None, episode_start: Tensor | None) -> Tensor:
        return self._run_chunks(x, self.segment_len_for(segment_len), self.transformer.draw_layer_skips())

    def _run_chunks(
        self,
        x: Tensor,
        L: int,
        skip: list[bool] | None,
        hook: ChunkHook | None = None,
        final_summary: bool = False,
        past: SegmentPast | None = None,
        hook_kv: frozenset[int] = frozenset(),
    ) -> Tensor | None:
        """Chunk loop over ``x [B,T,D]`` (every row a trial from t=0, or continuing ``past``); returns ``[B,T,D]``.

        ``hook`` sees each chunk's outputs and memory (refresh), and the K/V of the chunks in ``hook_kv``;
        the outputs go to it instead (the loop returns ``None``). ``final_summary`` also summarises a full
        last chunk (so the memory after the whole input exists, again for refresh). With ``past`` the
        loop starts from its memory, and when it holds ``p`` tokens of a segment the first chunk is the
        ``segment_len - p`` steps that complete that segment (attending to memory and held tokens).
        """
        cfg, tf = self.config, self.transformer
        B, T, _ = x.shape
        queries = self.summary_queries.to(x.dtype).expand(B, -1, -1)
        memory = MemoryKV(cfg.n_layers) if past is None else past.memory
        segment, held = (None, 0) if past is None else (past.segment, past.held)
        done = 0 if past is None else past.segments
        outputs, start, i = [], 0, 0
        while start < T:
            if cfg.tbptt_segments is not None and done + i > 0 and (done + i) % cfg.tbptt_segments == 0:
                memory.detach()  # truncated BPTT: no gradient crosses this segment boundary
            size = cfg.segment_len - held if held else L  # the steps that end this chunk's segment
            chunk = x[:, start : start + size]
            n = chunk.shape[1]
            summarise = n == size and (start + n < T or final_summary)
            tokens = torch.cat((chunk, queries), dim=1) if summarise else chunk
            pos = memory.offset + memory.length + held + torch.arange(tokens.shape[1], device=x.device)
            window = PrefixKV(_join(memory.kv, segment), cfg.n_layers, record=i in hook_kv)
            h = tf(tokens, pos, window, skip)
            if hook is None:
                outputs.append(h[:, :n])
            else:
                hook(i, start, h[:, :n], memory, window.new if i in hook_kv else None)
            if summarise:
                self._write_summary(memory, h[:, n:], skip)
            segment, held = None, 0
            start, i = start + n, i + 1
        if hook is not None:
            hook(i, T, None, memory, None)  # rows that end exactly after the last full chunk
            return None
        return torch.cat(outputs, dim=1)

    def _sequence_from(
        self, x: Tensor, past: KVCache, segment_len: int | None, episode_start: Tensor | None
    ) -> Tensor:
        """The chunk loop from the memory and partial segment held in ``past`` (the same layout in every
        row: rows of one trial history have the same length)."""
        cfg = self.config
        m = same_in_every_row(past.counters["memory"], "memory tokens")
        held = same_in_every_row(past.lengths, "tokens") - m
        memory = MemoryKV(cfg.n_layers)
        memory.length, memory.offset = m, same_in_every_row(past.offsets, "position offsets")
        if m:
            memory.kv = [past.held(layer, 0, m) for layer in range(cfg.n_layers)]
        segment = [past.held(layer, m, m + held) for layer in range(cfg.n_layers)] if held else None
        start = SegmentPast(memory, segment, held, same_in_every_row(past.counters["segments"], "segments"))
        L = self.segment_len_for(segment_len)
        return self._run_chunks(x, L, self.transformer.draw_layer_skips(), past=start)

    def _append_summary(self, memory: MemoryKV, summary: Tensor, skip: list[bool] | None) -> None:
        """Encode ``summary [B,l_sum,D]`` once, the memory as prefix, at positions ``m..m+l_sum-1``."""
        cfg = self.config
        pos = memory.offset + memory.length + torch.arange(cfg.summary_len, device=summary.device)
        encoder = PrefixKV(memory.kv, cfg.n_layers)
        self.transformer(summary, pos, encoder, skip, kv_only=True)
        memory.append(encoder.new, cfg.summary_len)

    def _write_summary(self, memory: MemoryKV, summary: Tensor, skip: list[bool] | None) -> None:
        """Sequence mode: ``M <- [M | S_i]``, then evict the oldest summaries over the cap."""
        cfg = self.config
        self._append_summary(memory, summary, skip)
        if cfg.max_memory_tokens is not None and memory.length > cfg.max_memory_tokens:
            evict = _whole_summaries(memory.length - cfg.max_memory_tokens, cfg.summary_len)
            memory.evict_front(evict, cfg.position_policy == "rebase", cfg.rope_base)

    # ---------------------------------------------------------------- step mode
    def _step(self, x: Tensor, cache: KVCache, episode_start: Tensor | None) -> Tensor:
        cfg, tf = self.config, self.transformer
        h = tf(x[:, None], cache.positions(1), cache.source(1))
        cache.advance(1)
        full = (cache.lengths - cache.counters["memory"]) == cfg.segment_len
        if bool(full.any()):
            rows = full.nonzero().squeeze(1)
            queries = self.summary_queries.expand(rows.shape[0], -1, -1)
            summary = tf(queries, cache.positions(cfg.summary_len, rows), cache.source(cfg.summary_len, rows))
            self._write_summary_rows(cache, rows, summary)
            cache.counters["segments"][rows] += 1
            cache.trim()
        return h[:, 0]

    def _append_summary_rows(self, cache: KVCache, rows: Tensor, summary: Tensor, keep: Tensor) -> None:
        """Cut ``rows`` to their first ``keep [r]`` tokens and encode ``summary [r,l_sum,D]`` after them."""
        cfg = self.config
        cache.lengths[rows] = keep
        pos, source = cache.positions(cfg.summary_len, rows), cache.source(cfg.summary_len, rows)
        self.transformer(summary, pos, source, kv_only=True)
        cache.advance(cfg.summary_len, rows)
        cache.counters["memory"][rows] = keep + cfg.summary_len

    def _write_summary_rows(self, cache: KVCache, rows: Tensor, summary: Tensor) -> None:
        """Step mode: drop the segment of ``rows``, append the summary, evict over the cap."""
        cfg, memory = self.config, cache.counters["memory"]
        self._append_summary_rows(cache, rows, summary, keep=memory[rows])
        if cfg.max_memory_tokens is not None:
            evict = _whole_summaries((memory[rows] - cfg.max_memory_tokens).clamp(min=0), cfg.summary_len)
            over = evict > 0
            if bool(over.any()):
                cache.evict_front(rows[over], evict[over], cfg.position_policy == "rebase", cfg.rope_base)
                memory[rows[over]] -= evict[over]

    # ------------------------------------------------------------------ refresh
    def _refresh(
        self, x: Tensor, lengths: Tensor, episode_start: Tensor | None, last: Tensor, cache: KVCache, outputs: bool
    ) -> Tensor | None:
        """The chunk loop (fixed ``segment_len``) with the memory written in place into a cache: ``cache``
        itself when every row is one trial (the usual refresh), else a cache of the packed trials from
        which each row's last trial is copied once its last chunk is done. The outputs go into one tensor.
        The pass holds the cache, the outputs and one chunk's activations."""
        cfg = self.config
        L, (N, T) = cfg.segment_len, x.shape[:2]
        direct = N == cache.batch_size and bool((lengths == T).all())
        record = cache if direct else self.new_cache(N)
        if record.bound is None:  # a capped memory reserves its bound anyway
            record.expect(T // L * cfg.summary_len + T % L)  # the memory and partial segment after T steps
        out = x.new_empty(N, T, self.d_model) if outputs else None
        done_chunks, in_segment = lengths[last] // L, lengths[last] % L

        def capture(i: int, start: int, h: Tensor | None, memory: MemoryKV, chunk_kv: LayerKV | None) -> None:
            if out is not None and h is not None:
                out[:, start : start + h.shape[1]] = h
            rows = (done_chunks == i).nonzero().squeeze(1)
            if not rows.numel():
                return
            m, held, trials = memory.length, int(in_segment[rows].max()), last[rows]
            for layer in range(cfg.n_layers):
                segment = None if chunk_kv is None or not held else [kv[:, :, :held] for kv in chunk_kv[layer]]
                if direct:  # the memory is in place: add the segment in progress after it
                    if segment is not None:
                        cache.write(layer, m, *segment)
                    continue
                parts = [kv for kv in (record.held(layer, 0, m) if m else None, segment) if kv is not None]
                if parts:
                    cache.fill(rows, layer, *(torch.cat([p[j][trials] for p in parts], 2) for j in (0, 1)))
            cache.lengths[rows] = m + in_segment[rows]
            cache.offsets[rows] = memory.offset
            cache.counters["memory"][rows] = m
            cache.counters["segments"][rows] = i

        empty = SegmentPast(CachedMemoryKV(record), None, 0, 0)
        ends_mid_segment = frozenset(done_chunks[in_segment > 0].tolist())  # the chunks whose K/V a row keeps
        self._run_chunks(x, L, skip=None, hook=capture, final_summary=True, past=empty, hook_kv=ends_mid_segment)
        return out


def _whole_summaries(excess: int | Tensor, summary_len: int) -> int | Tensor:
    """``excess`` tokens rounded up to whole summaries (int or tensor)."""
    return (excess + summary_len - 1) // summary_len * summary_len

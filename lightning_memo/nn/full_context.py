"""FCT: a full-context Transformer (causal attention over the whole trial), the ReLIC baseline.

Sequence mode runs the trial through the shared :class:`Transformer` with causal attention; step mode
keeps every step's keys/values in a :class:`KVCache` (counters ``"episode_step"``, ``"episode"``). Options:

* ``position_recipe="rope"``: RoPE on the trial step ``t``.
  ``position_recipe="relic"`` (ReLIC): a learned absolute embedding of the step inside the current
  inner episode is added to the input, and RoPE is driven by the inner-episode ordinal (0, 1, ...).
  Inner episodes start where ``episode_start`` is true (t=0 of a trial is always episode 0, step 0).
* ``sink_kv=True``: one learned key per layer and head with a zero value, visible to every query.
* ``window=W`` (streaming FCT): each step attends to itself and the ``W-1`` steps before it (plus the
  sink). Steps that left the window are evicted ``evict_block`` at a time (evicting shifts the whole
  cache, so doing it every step would cost ``O(W)`` copies per step); the cache holds at most
  ``W + evict_block - 1`` steps. ``position_policy`` says what positions do after an eviction:
  ``"grow"`` (the paper's: positions keep growing) or ``"rebase"`` (kept keys are rotated back so
  positions restart at 0; RoPE recipe, no sink). Both compute the same function, as RoPE scores
  depend on relative positions only.

Sequence mode with a sink or a window attends chunk by chunk (:class:`~lightning_memo.nn.backbone.Band`):
no ``[T, T]`` mask is built, and a window's cost is ``O(T * window)``; step mode is ``O(cache)`` per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_memo.nn.backbone import (
    Band,
    KVCache,
    KVSource,
    PrefixKV,
    Transformer,
    TransformerConfig,
    drop_front,
    positive,
)
from lightning_memo.nn.base import SequenceMemory, same_in_every_row

POSITION_RECIPES = ("rope", "relic")
POSITION_POLICIES = ("grow", "rebase")
PREFILL_BLOCK = 256  # steps per block of a refresh (chunked prefill); its transient is one block's work


@dataclass
class FCTConfig(TransformerConfig):
    """FCT's settings (backbone sizes plus positions, sink and window)."""

    position_recipe: str = "rope"
    """`"rope"`: RoPE on the trial step. `"relic"`: a learned step-in-episode embedding added to the input and RoPE
    on the inner-episode ordinal (needs `episode_start`)."""

    max_episode_len: int = 1024
    """`relic` only: rows of the step-in-episode embedding; later steps share the last row. Positive."""

    embed_init_scale: float = 0.02
    """`relic` only: standard deviation of that embedding at init. > 0."""

    sink_kv: bool = False
    """A learned key with a zero value per layer and head that every query may attend to."""

    window: Optional[int] = None
    """Streaming: each step attends to itself and the `window - 1` steps before it. `None`: the whole trial; else
    positive."""

    evict_block: int = 256
    """Streaming: steps evicted at once; the cache holds fewer than `window + evict_block` tokens. Positive."""

    position_policy: str = "grow"
    """After a window eviction: `"grow"` (the paper's) keeps positions growing; `"rebase"` rotates the kept keys
    back below `window` (only with `position_recipe="rope"` and no sink)."""

    inter_episode_attention: bool = True
    """`False`: the cache resets at every inner-episode start (the no-IEA ablation)."""

    def validate(self) -> None:
        super().validate()
        if self.position_recipe not in POSITION_RECIPES:
            raise ValueError(f"position_recipe must be one of {POSITION_RECIPES}, got {self.position_recipe!r}.")
        positive(max_episode_len=self.max_episode_len)
        if self.embed_init_scale <= 0:
            raise ValueError(f"embed_init_scale must be > 0, got {self.embed_init_scale}.")
        if self.window is not None:
            positive(window=self.window)
        positive(evict_block=self.evict_block)
        if self.position_policy not in POSITION_POLICIES:
            raise ValueError(f"position_policy must be one of {POSITION_POLICIES}, got {self.position_policy!r}.")
        if self.position_policy == "rebase" and self.position_recipe != "rope":
            raise ValueError(
                "position_policy='rebase' needs position_recipe='rope' (ReLIC's RoPE runs on episode "
                "ordinals, which eviction does not shift); use position_policy='grow'."
            )
        if self.position_policy == "rebase" and self.sink_kv:
            raise ValueError(
                "position_policy='rebase' with sink_kv=True would change the function (the sink key has no "
                "position, so its score depends on the query's absolute rotation); use position_policy='grow'."
            )


def episode_positions(
    episode_start: Tensor | None,
    shape: tuple[int, int],
    device: torch.device,
    past: KVCache | None = None,
) -> tuple[Tensor, Tensor]:
    """Step inside the inner episode and episode ordinal, both ``[B,T]`` long, for one trial per row.

    ``episode_start [B,T]`` marks inner-episode starts; t=0 always starts episode 0, unless the rows
    continue the steps held in ``past`` (then they go on from its ``episode_step``/``episode`` counters,
    as stepping would).
    """
    B, T = shape
    t = torch.arange(T, device=device).expand(B, T)
    zeros = torch.zeros(B, dtype=torch.long, device=device)
    step0 = zeros if past is None else past.counters["episode_step"]
    episode0 = zeros if past is None else past.counters["episode"]
    fresh = torch.ones(B, dtype=torch.bool, device=device) if past is None else (past.lengths + past.offsets) == 0
    if episode_start is None:
        return step0[:, None] + t, episode0[:, None].expand(B, T).clone()
    starts = episode_start.clone()
    starts[:, 0] &= ~fresh  # a trial's first step is step 0 of episode 0 whatever the flag
    ordinal = episode0[:, None] + starts.long().cumsum(1)
    last_start = torch.where(starts, t, torch.full_like(t, -1)).cummax(1).values
    return torch.where(last_start >= 0, t - last_start, step0[:, None] + t), ordinal


class SinkKV:
    """Wraps a KV source and prepends a sink slot: key ``sink_keys[layer] [H,Dh]``, value zero,
    visible to every query."""

    def __init__(self, inner: KVSource, sink_keys: Tensor) -> None:
        self.inner = inner
        self.sink_keys = sink_keys

    def __call__(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | Band | None]:
        keys, values, mask = self.inner(layer, k, v)
        sink = self.sink_keys[layer].to(keys.dtype)[None, :, None, :].expand(keys.shape[0], -1, 1, -1)
        keys = torch.cat((sink, keys), dim=2)
        values = torch.cat((torch.zeros_like(sink), values), dim=2)
        if isinstance(mask, Tensor):
            mask = F.pad(mask, (1, 0), value=True)
        elif isinstance(mask, Band):
            mask = Band(mask.window, mask.lead + 1, mask.past)
        elif k.shape[2] > 1:  # causal among the new tokens (no prefix in sequence mode)
            mask = Band(None, lead=1)
        return keys, values, mask  # None stays None: one new token sees every key


class FullContextMemory(SequenceMemory):
    """FCT as a TorchRL module: ``FullContextMemory(d_model=..., position_recipe="relic", sink_kv=True)``.
    See :class:`FCTConfig`. Cache per row: keys/values of the last ``t`` steps (streaming: of fewer
    than ``window + evict_block``; after ``refresh`` of ``min(t, window)``)."""

    config_cls = FCTConfig

    def _build(self, cfg: FCTConfig) -> None:
        self.transformer = Transformer(cfg)
        head_dim = cfg.d_model // cfg.n_heads
        self.sink_keys = nn.Parameter(torch.randn(cfg.n_layers, cfg.n_heads, head_dim)) if cfg.sink_kv else None
        self.step_embedding = (
            nn.Parameter(torch.randn(cfg.max_episode_len, cfg.d_model) * cfg.embed_init_scale)
            if cfg.position_recipe == "relic"
            else None
        )

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty per-row KV cache of ``batch_size`` rows (bounded and reserved once when streaming)."""
        cfg = self.config
        bound = None if cfg.window is None else cfg.window + cfg.evict_block - 1  # slots a streaming row can need
        return self.transformer.new_cache(batch_size, counters=("episode_step", "episode"), bound=bound)

    def _inputs(self, x: Tensor, pos: Tensor, episode_step: Tensor, episode: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens and RoPE positions for ``x [B,n,D]``: trial positions ``pos``, or ReLIC's recipe."""
        if self.step_embedding is None:
            return x, pos
        # steps past the table share its last row (padding of packed trials can run past it too)
        index = episode_step.clamp(max=self.config.max_episode_len - 1)
        return x + self.step_embedding[index].to(x.dtype), episode

    def _source(self, inner: KVSource) -> KVSource:
        return inner if self.sink_keys is None else SinkKV(inner, self.sink_keys)

    # ------------------------------------------------------------ sequence mode
    def _sequence(self, x: Tensor, segment_len: int | None, episode_start: Tensor | None) -> Tensor:
        self._no_segment_len(segment_len)
        B, T, _ = x.shape
        episode_step, episode = episode_positions(episode_start, (B, T), x.device)
        tokens, pos = self._inputs(x, torch.arange(T, device=x.device), episode_step, episode)
        causal = PrefixKV(None, self.config.n_layers, self.config.window, record=False)
        return self.transformer(tokens, pos, self._source(causal), self.transformer.draw_layer_skips())

    def _sequence_from(
        self, x: Tensor, past: KVCache, segment_len: int | None, episode_start: Tensor | None
    ) -> Tensor:
        """Sequence mode over ``x [B,n,D]`` after the steps held in ``past``: the new steps attend to the
        held keys/values (the last ``window - 1`` of them with a window) at positions that go on from
        the held ones; step-in-episode and ordinal go on from the cache's counters (ReLIC)."""
        self._no_segment_len(segment_len)
        B, n, _ = x.shape
        held = same_in_every_row(past.lengths, "steps")
        start = past.lengths + past.offsets  # the position of each row's next step
        episode_step, episode = episode_positions(episode_start, (B, n), x.device, past)
        tokens, pos = self._inputs(x, start[:, None] + torch.arange(n, device=x.device), episode_step, episode)
        prefix = [past.held(layer, 0, held) for layer in range(self.config.n_layers)] if held else None
        source = PrefixKV(prefix, self.config.n_layers, self.config.window, record=False)
        return self.transformer(tokens, pos, self._source(source), self.transformer.draw_layer_skips())

    # ---------------------------------------------------------------- step mode
    def _step(self, x: Tensor, cache: KVCache, episode_start: Tensor | None) -> Tensor:
        cfg = self.config
        episode_step, episode = cache.counters["episode_step"], cache.counters["episode"]
        if episode_start is not None:  # a new inner episode (not at a trial start, which is episode 0)
            new = episode_start & ((cache.lengths + cache.offsets) > 0)
            episode += new.long()
            episode_step.masked_fill_(new, 0)
        if cfg.window is not None:
            full = cache.lengths >= cfg.window + cfg.evict_block - 1
            if bool(full.any()):  # keep the window's last window-1 steps
                rows = full.nonzero().squeeze(1)
                count = cache.lengths[rows] - cfg.window + 1
                cache.evict_front(rows, count, cfg.position_policy == "rebase", cfg.rope_base)
        tokens, pos = self._inputs(x[:, None], cache.positions(1), episode_step[:, None], episode[:, None])
        h = self.transformer(tokens, pos, self._source(cache.source(1, window=cfg.window)))
        cache.advance(1)
        episode_step += 1
        return h[:, 0]

    # ------------------------------------------------------------------ refresh
    def _refresh(
        self, x: Tensor, lengths: Tensor, episode_start: Tensor | None, last: Tensor, cache: KVCache, outputs: bool
    ) -> Tensor | None:
        """Chunked prefill: the trials go through the stack ``PREFILL_BLOCK`` steps at a time, each block
        writing its keys/values into a cache and attending to what it holds (stepping, a block per call).
        The pass needs that cache plus one block's activations: no record of the whole trial, no copy.
        One trial per row (the usual refresh) is encoded straight into ``cache``; packed trials go into a
        cache of their own, and each row's last trial is copied out once the block holding its end is done.
        """
        cfg = self.config
        N, T, _ = x.shape
        episode_step, episode = episode_positions(episode_start, (N, T), x.device)
        direct = N == cache.batch_size and bool((lengths == T).all())
        record = cache if direct else self.new_cache(N)
        if record.bound is None:  # (a window's bound is reserved anyway)
            record.expect(T)
        ends = lengths[last]  # the step each cache row's trial ends at
        out = x.new_empty(N, T, self.d_model) if outputs else None
        block = PREFILL_BLOCK if cfg.window is None else min(PREFILL_BLOCK, cfg.evict_block)
        for start in range(0, T, block):
            n = min(block, T - start)
            if cfg.window is not None:  # keep the window's last window-1 steps, as stepping does
                self._evict_beyond(record, cfg.window - 1)
            steps = slice(start, start + n)
            tokens, pos = self._inputs(x[:, steps], record.positions(n), episode_step[:, steps], episode[:, steps])
            h = self.transformer(tokens, pos, self._source(record.source(n, window=cfg.window)), kv_only=not outputs)
            record.advance(n)
            if out is not None:
                out[:, steps] = h
            ending = ((ends > start) & (ends <= start + n)).nonzero().squeeze(1)
            if not direct and ending.numel():
                self._copy_trials(record, cache, ending, last[ending], ends[ending], start + n)
        if direct and cfg.window is not None:
            self._evict_beyond(cache, cfg.window)  # the refreshed cache holds min(t, window) steps
        cache.counters["episode_step"].copy_(episode_step[last, ends - 1] + 1)
        cache.counters["episode"].copy_(episode[last, ends - 1])
        return out

    def _evict_beyond(self, cache: KVCache, keep: int) -> None:
        """Drop the oldest steps of every row beyond its last ``keep`` (rows hold the same number here)."""
        count = (cache.lengths - keep).clamp(min=0)
        if bool(count.any()):
            rows = torch.arange(cache.batch_size, device=count.device)
            cache.evict_front(rows, count, self.config.position_policy == "rebase", self.config.rope_base)

    def _copy_trials(
        self, record: KVCache, cache: KVCache, rows: Tensor, trials: Tensor, ends: Tensor, encoded: int
    ) -> None:
        """Rows ``rows`` of ``cache`` take the last ``min(end, window)`` steps of the trials ``trials`` of
        ``record``, which end at steps ``ends`` (every record row holds its first ``encoded`` steps, padding
        included, the last of them in its last slot)."""
        cfg = self.config
        kept = ends if cfg.window is None else ends.clamp(max=cfg.window)
        stop = record.lengths[trials] - (encoded - ends)  # the slot after each trial's last step
        first, n, rebase = stop - kept, int(kept.max()), cfg.position_policy == "rebase"
        for layer in range(cfg.n_layers):
            k, v = record.held(layer, 0, int(stop.max()))
            k, v = drop_front(k[trials], v[trials], first, rebase, cfg.rope_base)
            cache.fill(rows, layer, k[:, :, :n], v[:, :, :n])
        cache.lengths[rows] = kept
        cache.offsets[rows] = 0 if rebase else record.offsets[trials] + first

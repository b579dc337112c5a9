"""Per-row key/value storage for step mode.

Every row (environment) holds its own token sequence: slots ``0 .. lengths[b]-1`` are valid, and a
token's slot equals its position (plus ``offsets[b]`` when positions keep growing after eviction).
Memo lays a row out as ``[memory tokens | current segment]``: dropping the segment is a truncation,
evicting the oldest summaries is a shift. Storage grows geometrically as rows get longer and is never
sized to a whole trial; :meth:`KVCache.nbytes` counts the tokens held.

Shapes: ``k/v[layer]`` are ``[B, H, capacity, Dh]``; ``lengths``/``offsets`` are ``[B]`` long.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memo.nn.backbone import apply_rope


class KVCache:
    def __init__(self, n_layers: int, batch_size: int, n_heads: int, head_dim: int, device: torch.device) -> None:
        self.n_layers, self.n_heads, self.head_dim = n_layers, n_heads, head_dim
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.offsets = torch.zeros(batch_size, dtype=torch.long, device=device)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    def nbytes(self) -> int:
        """Bytes of the keys and values of all valid tokens (all rows, all layers)."""
        if not self.k:
            return 0
        per_token = 2 * self.n_layers * self.n_heads * self.head_dim * self.k[0].element_size()
        return int(self.lengths.sum()) * per_token

    def reset_rows(self, rows: Tensor) -> None:
        """Empty the rows where ``rows [B]`` (bool) is true."""
        self.lengths[rows] = 0
        self.offsets[rows] = 0

    def _reserve(self, needed: int, like: Tensor) -> None:
        """Make room for ``needed`` slots, growing by at least half the current capacity."""
        if self.k and needed <= self.capacity:
            return
        old_cap = self.capacity
        new_cap = max(needed, old_cap + old_cap // 2, 16)
        for store in (self.k, self.v):
            for layer in range(self.n_layers):
                grown = like.new_zeros(self.batch_size, self.n_heads, new_cap, self.head_dim)
                if old_cap:
                    grown[:, :, :old_cap] = store[layer]
                    store[layer] = grown
                else:
                    store.append(grown)

    def source(self, rows: Tensor | None = None) -> "CacheKV":
        """A KV source writing new tokens after each row's valid slots (call :meth:`advance` to keep them)."""
        return CacheKV(self, rows)

    def advance(self, n: int, rows: Tensor | None = None) -> None:
        if rows is None:
            self.lengths += n
        else:
            self.lengths[rows] += n

    def positions(self, n: int, rows: Tensor | None = None) -> Tensor:
        """Positions ``[b, n]`` of the next ``n`` tokens of the given rows."""
        start = self.lengths + self.offsets
        if rows is not None:
            start = start[rows]
        return start[:, None] + torch.arange(n, device=start.device)

    def evict_front(self, rows: Tensor, count: Tensor, rebase: bool, rope_base: float) -> None:
        """Drop the first ``count[i]`` slots of row ``rows[i]`` (index tensors).

        With ``rebase`` the remaining keys are rotated by ``-count`` so positions restart at 0 (exact
        for RoPE); otherwise ``offsets`` grow so new tokens keep increasing positions.
        """
        cap = self.capacity
        slots = torch.arange(cap, device=count.device)
        src = (slots[None, :] + count[:, None]).clamp(max=cap - 1)  # [r, cap]
        index = src[:, None, :, None].expand(-1, self.n_heads, -1, self.head_dim)
        for layer in range(self.n_layers):
            k = self.k[layer][rows].gather(2, index)
            if rebase:
                k = apply_rope(k, -count[:, None].expand(-1, cap), rope_base)
            self.k[layer][rows] = k
            self.v[layer][rows] = self.v[layer][rows].gather(2, index)
        self.lengths[rows] -= count
        if not rebase:
            self.offsets[rows] += count


class CacheKV:
    """KV source over a :class:`KVCache`: new tokens are written at slots ``lengths[b] + i`` and
    attend to every valid slot of their row plus earlier new tokens."""

    def __init__(self, cache: KVCache, rows: Tensor | None) -> None:
        self.cache = cache
        self.rows = rows

    def __call__(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cache, rows = self.cache, self.rows
        n = k.shape[2]
        lengths = cache.lengths if rows is None else cache.lengths[rows]
        span = int(lengths.max()) + n
        cache._reserve(span, k)
        slots = lengths[:, None] + torch.arange(n, device=k.device)  # [b, n]
        row_idx = (torch.arange(cache.batch_size, device=k.device) if rows is None else rows)[:, None]
        # advanced indices around a slice put the indexed dims first: target is [b, n, H, Dh]
        cache.k[layer][row_idx, :, slots] = k.transpose(1, 2).to(cache.k[layer].dtype)
        cache.v[layer][row_idx, :, slots] = v.transpose(1, 2).to(cache.v[layer].dtype)
        if rows is None:
            keys, values = cache.k[layer][:, :, :span], cache.v[layer][:, :, :span]
        else:
            keys, values = cache.k[layer][rows, :, :span], cache.v[layer][rows, :, :span]
        visible = torch.arange(span, device=k.device)[None, None, :] <= slots[:, :, None]  # [b, n, span]
        return keys, values, visible[:, None]

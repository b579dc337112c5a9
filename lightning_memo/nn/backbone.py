"""The Transformer every memory shares, and the two places its keys/values come from.

``h += Attn(RMSNorm(h)); h += MLP(RMSNorm(h))``, a final RMSNorm after the last block. Attention has
no biases; rotary embeddings (rotate-half, base 10000) are applied to queries and keys, and keys are
handed to the KV source *after* rotation, so cached keys never need re-rotating.

Every attention layer calls a KV source ``(layer, k_new, v_new) -> (k_all, v_all, mask)``:

* :class:`PrefixKV` (sequence mode): a fixed prefix plus causal attention among the new tokens;
* :class:`CacheKV` over a :class:`KVCache` (step mode): per-row stored tokens plus the new ones.

Shapes: ``x [B,n,D]``, ``pos [B,n]`` or ``[n]``, ``k/v [B,H,n,Dh]``. ``mask`` is one of (see :func:`attend`):
a bool tensor broadcastable to ``[B,H,n,S]`` (True = may attend); ``None``, causal with the new tokens
last among the keys (so plain causal when ``S == n``, no masking at all for one new token); or a
:class:`Band` (a sliding window and/or always-visible lead keys, attended chunk by chunk without a
``[n, S]`` mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVSource = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor, "Tensor | Band | None"]]
Rope = tuple[Tensor, Tensor]  # (cos, cos), (-sin, sin) [B,n,1,Dh] or [n,1,Dh] (token-major: broadcast over heads)
LayerKV = list[Optional[tuple[Tensor, Tensor]]]  # per layer (k, v) [B,H,n,Dh]; None for a skipped layer


@dataclass
class TransformerConfig:
    """Backbone sizes. Reference: 4 layers, 8 heads, width 256, MLP 1024 (~4.2M parameters with Memo)."""

    d_model: int = 256
    """Width of every token (and of the memory's input and output). Positive; divisible by `n_heads`."""

    n_layers: int = 4
    """Transformer blocks. Positive."""

    n_heads: int = 8
    """Attention heads. Must divide `d_model`, with an even head width `d_model / n_heads` (RoPE)."""

    mlp_ratio: float = 4.0
    """Hidden width of the gated MLP, as a multiple of `d_model`. > 0."""

    activation: str = "gelu"
    """Gate nonlinearity of the MLP: `"gelu"` or `"silu"`."""

    layer_drop: float = 0.0
    """Probability of skipping a whole block in a training forward call (one draw per call and block). In [0, 1); 0
    disables it."""

    rope_base: float = 10000.0
    """Base of the rotary position embedding's frequencies. > 1."""

    norm_eps: float = 1e-6
    """Epsilon of the RMSNorm layers."""

    def validate(self) -> None:
        positive(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads)
        if self.d_model % self.n_heads:
            divisors = [d for d in range(1, self.d_model + 1) if self.d_model % d == 0]
            near = min(divisors, key=lambda d: abs(d - self.n_heads))
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}; pick e.g. n_heads={near}.")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"head width d_model/n_heads={self.d_model // self.n_heads} must be even for rotary embeddings."
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}.")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}.")
        if not 0.0 <= self.layer_drop < 1.0:
            raise ValueError(f"layer_drop is a probability in [0, 1), got {self.layer_drop}.")
        if self.rope_base <= 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}.")


_ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


def positive(**values: int) -> None:
    """Raise naming the first argument that is not a positive integer."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """``x * rsqrt(mean(x^2) + eps) * weight`` over the last dimension (one fused kernel; under autocast
        the weight is cast to ``x``'s bfloat16, as the fused kernel needs one dtype)."""
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)


# ------------------------------------------------------------------------------------------ RoPE
@lru_cache(maxsize=None)
def _inv_freq(half: int, base: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    return base ** (-torch.arange(half, device=device, dtype=dtype) / half)


def rope_tables(pos: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> Rope:
    """Full-width tables ``(cos, cos)`` and ``(-sin, sin)`` of positions ``pos [B,n]`` or ``[n]`` for heads
    of width ``head_dim``, cast to ``dtype``, shaped ``[B,n,1,Dh]`` / ``[n,1,Dh]`` for token-major tensors
    ``[B,n,H,Dh]`` (built once per forward call, shared by every layer).

    float64 inputs get float64 angles so that the float64 parity oracles can be tight.
    """
    angle_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    angles = pos.to(angle_dtype)[..., None] * _inv_freq(head_dim // 2, base, pos.device, angle_dtype)
    angles = angles.unsqueeze(-2)  # broadcast over heads
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rotate(x: Tensor, rope: Rope) -> Tensor:
    """Rotate token-major ``x [B,n,H,Dh]`` by the tables of :func:`rope_tables` (rotate-half convention):
    ``(x1 cos - x2 sin, x2 cos + x1 sin)`` for the halves ``x1, x2``, as ``x * cos + (x2, x1) * (-sin, sin)``
    (the same products and sums, bit for bit, in four operations instead of eight)."""
    cos, sin = rope
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


def apply_rope(x: Tensor, pos: Tensor, base: float) -> Tensor:
    """Rotate ``x [B,H,n,Dh]`` to positions ``pos [B,n]`` or ``[n]``."""
    return rotate(x.transpose(1, 2), rope_tables(pos, x.shape[-1], base, x.dtype)).transpose(1, 2)


def drop_front(k: Tensor, v: Tensor, count: Tensor, rebase: bool, rope_base: float) -> tuple[Tensor, Tensor]:
    """Drop the first ``count[b]`` tokens of each row of ``k/v [B,H,n,Dh]``, shifting the rest to slot 0.

    With ``rebase`` the kept keys are rotated by ``-count`` so their positions restart at 0 (exact for
    RoPE: scores depend on relative positions only). The last ``count[b]`` slots of a row are junk.
    """
    B, H, n, Dh = k.shape
    source = (torch.arange(n, device=k.device) + count[:, None]).clamp(max=n - 1)  # [B, n]
    index = source[:, None, :, None].expand(B, H, n, Dh)
    k, v = k.gather(2, index), v.gather(2, index)
    if rebase:
        k = apply_rope(k, -count[:, None].expand(B, n), rope_base)
    return k, v


# ------------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class Band:
    """Visibility of ``n`` new tokens: causal, at most ``window - 1`` steps back (``None``: no limit),
    over ``past`` earlier tokens and the new ones, after ``lead`` keys every query sees (e.g. a sink).
    Keys ``[lead | past | new]``."""

    window: int | None
    lead: int = 0
    past: int = 0


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | Band | None, chunk: int = 512) -> Tensor:
    """Attention of ``q [B,H,n,Dh]`` over ``k/v [B,H,S,Dh]`` under ``mask`` (see the module doc).

    A :class:`Band` is attended ``chunk`` queries at a time over the keys their band reaches, so the
    largest mask is ``[chunk, lead + chunk + window]`` instead of ``[n, S]`` (same function: the keys
    left out are exactly the masked ones). One unmasked query per row over a long CPU cache (a step) is
    attended with matrix products (see :func:`_one_query_by_products`).
    """
    n = q.shape[2]
    if isinstance(mask, Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if mask is None and n == 1 and _one_query_by_products(q, k):
        return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v
    if mask is None or mask == Band(None):  # plain causal: the kernel needs no mask
        return F.scaled_dot_product_attention(q, k, v, is_causal=n > 1)
    lead, window, past = mask.lead, mask.window, mask.past
    outputs = []
    for start in range(past, past + n, chunk):  # query i sits at key lead + i of [lead | past | new]
        stop = min(start + chunk, past + n)
        first = 0 if window is None else max(0, start - window + 1)
        if first == 0:  # the lead keys and those the band reaches are one slice (no copy)
            keys, values = k[:, :, : lead + stop], v[:, :, : lead + stop]
        else:
            keys, values = k[:, :, lead + first : lead + stop], v[:, :, lead + first : lead + stop]
            if lead:
                keys, values = torch.cat((k[:, :, :lead], keys), 2), torch.cat((v[:, :, :lead], values), 2)
        query, key = torch.arange(start, stop, device=q.device)[:, None], torch.arange(first, stop, device=q.device)
        visible = key <= query if window is None else (key <= query) & (key > query - window)  # bool, no [n, S] lags
        visible = F.pad(visible, (lead, 0), value=True)
        outputs.append(F.scaled_dot_product_attention(q[:, :, start - past : stop - past], keys, values, attn_mask=visible))
    return torch.cat(outputs, dim=2)


ONE_QUERY_PRODUCTS_MIN_KEYS = 256


def _one_query_by_products(q: Tensor, k: Tensor) -> bool:
    """Whether one query per row is attended with two batched matrix-vector products and a softmax
    instead of ``scaled_dot_product_attention``: on a CPU, in float32/float64, over at least
    ``ONE_QUERY_PRODUCTS_MIN_KEYS`` keys. There the products read a step's cache 1.1-1.3x faster than
    the kernel does (measured at batch 8-16, 4-8 heads, 300-16k keys; below ~256 keys the kernel wins).
    The same function; on a GPU the kernel's decoding path is the faster one."""
    cpu_float = q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
    return cpu_float and k.shape[2] >= ONE_QUERY_PRODUCTS_MIN_KEYS


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _qkv(self, x: Tensor) -> Tensor:
        """Projections of ``x [B,n,D]``, token-major ``[B,n,3H,Dh]`` (heads of q, then k, then v)."""
        B, n, _ = x.shape
        return self.qkv(x).view(B, n, 3 * self.n_heads, self.head_dim)

    def keys_values(self, x: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
        """Rotated keys and values of ``x`` only (used when a layer's output is not needed)."""
        H, qkv = self.n_heads, self._qkv(x)
        return rotate(qkv[:, :, H : 2 * H], rope).transpose(1, 2), qkv[:, :, 2 * H :].transpose(1, 2)

    def forward(self, x: Tensor, rope: Rope, kv: KVSource, layer: int) -> Tensor:
        H, qkv = self.n_heads, self._qkv(x)
        q, k = rotate(qkv[:, :, : 2 * H], rope).transpose(1, 2).split(H, dim=1)  # queries and keys rotated at once
        keys, values, mask = kv(layer, k, qkv[:, :, 2 * H :].transpose(1, 2))
        y = attend(q, keys, values, mask)
        B, _, n, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, n, -1))


class GatedMLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.gate_up = nn.Linear(cfg.d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)
        self.act = _ACTIVATIONS[cfg.activation]

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = GatedMLP(cfg)

    def forward(self, h: Tensor, rope: Rope, kv: KVSource, layer: int) -> Tensor:
        h = h + self.attn(self.attn_norm(h), rope, kv, layer)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    """The block stack plus final norm. ``forward(x[B,n,D], pos, kv) -> [B,n,D]`` (normed outputs)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def draw_layer_skips(self) -> list[bool] | None:
        """One layer-drop draw per block for a whole forward call (training only)."""
        if not self.training or self.cfg.layer_drop == 0.0:
            return None
        return (torch.rand(len(self.blocks)) < self.cfg.layer_drop).tolist()

    def new_cache(self, batch_size: int, counters: Sequence[str] = (), bound: int | None = None) -> KVCache:
        """An empty :class:`KVCache` of ``batch_size`` rows for this stack."""
        cfg = self.cfg
        device = self.norm.weight.device
        return KVCache(cfg.n_layers, batch_size, cfg.n_heads, cfg.d_model // cfg.n_heads, device, counters, bound)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        kv: KVSource,
        skip: list[bool] | None = None,
        kv_only: bool = False,
    ) -> Tensor | None:
        """Run the stack. With ``kv_only`` the last block only hands its keys/values to ``kv``
        (for tokens whose outputs are never read, e.g. memory tokens) and ``None`` is returned."""
        # the tables in the dtype the projections come out in (autocast's, e.g. bfloat16), so rotated keys
        # keep it: caches then hold that dtype, not float32 that attention would cast down on every read
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        rope = rope_tables(pos, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base, dtype)
        h = x
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if skip is not None and skip[i]:
                continue
            if kv_only and i == last:
                kv(i, *block.attn.keys_values(block.attn_norm(h), rope))
                return None
            h = block(h, rope, kv, i)
        return None if kv_only else self.norm(h)


# ------------------------------------------------------------------------ sequence-mode source
class PrefixKV:
    """KV source for sequence mode: every new token sees the whole prefix plus earlier new tokens
    (only the last ``window`` tokens of ``[prefix | new]``, itself included, when ``window`` is given).

    ``prefix`` is one ``(k, v)`` pair ``[B,H,P,Dh]`` per layer (``None`` entries or ``P == 0`` mean no
    prefix). The new tokens' keys/values are recorded in ``self.new`` (per layer) for the caller, unless
    ``record`` is false (a record keeps every layer's projections alive until the caller drops it).
    """

    def __init__(self, prefix: LayerKV | None, n_layers: int, window: int | None = None, record: bool = True) -> None:
        self.prefix = prefix
        self.window = window
        self.record = record
        self.new: LayerKV = [None] * n_layers
        self.mask: Tensor | None = None  # built once, shared by the layers (the prefix is as long in each)

    def __call__(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | Band | None]:
        if self.record:
            self.new[layer] = (k, v)
        prefix = self.prefix[layer] if self.prefix is not None else None
        if prefix is None or prefix[0].shape[2] == 0:
            return k, v, None if self.window is None else Band(self.window)
        pk, pv = prefix
        n, P = k.shape[2], pk.shape[2]
        if self.window is not None:
            mask = Band(self.window, past=P)
        else:
            if self.mask is None or self.mask.shape != (n, P + n):
                self.mask = torch.ones(n, P + n, dtype=torch.bool, device=k.device).tril(diagonal=P)
            mask = self.mask
        return torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2), mask


# ---------------------------------------------------------------------------- step-mode cache
class KVCache:
    """Per-row keys/values for step mode, plus the per-row counters of the memory that owns it.

    Row ``b`` holds tokens in slots ``0 .. lengths[b]-1``; a token's position is its slot plus
    ``offsets[b]`` (which grows when tokens are evicted without rebasing). ``counters`` are named
    per-row long tensors ``[B]`` of the owning memory (e.g. Memo's memory tokens at the front of the
    row); like ``lengths`` they reset with their row. Storage ``kv [layers, 2, B, H, capacity, Dh]``
    follows what is held: it grows by 10% at a time and :meth:`trim` gives back what a drop freed, so
    it stays within 10% of the longest row; a cache with a known ``bound`` reserves it once instead.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        device: torch.device,
        counters: Sequence[str] = (),
        bound: int | None = None,
    ) -> None:
        positive(batch_size=batch_size)
        self.n_layers, self.n_heads, self.head_dim, self.bound = n_layers, n_heads, head_dim, bound
        self.kv: Tensor | None = None  # allocated on the first write, in the dtype of the keys written
        self.expected = 0  # slots the next growth makes room for at once (see expect)
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.lengths, self.offsets = zeros, zeros.clone()
        self.counters = {name: zeros.clone() for name in counters}

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        return 0 if self.kv is None else self.kv.shape[4]

    def tokens(self) -> Tensor:
        """Tokens held per row, ``[B]``."""
        return self.lengths.clone()

    def nbytes(self) -> int:
        """Bytes of the keys and values of the tokens held (all rows, all layers)."""
        if self.kv is None:
            return 0
        per_token = 2 * self.n_layers * self.n_heads * self.head_dim * self.kv.element_size()
        return int(self.lengths.sum()) * per_token

    def allocated_nbytes(self) -> int:
        """Bytes of the storage allocated for keys and values."""
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()

    def reset_rows(self, rows: Tensor) -> None:
        """Empty the rows where ``rows [B]`` (bool) is true."""
        for counter in (self.lengths, self.offsets, *self.counters.values()):
            counter.masked_fill_(rows, 0)

    def clone(self) -> KVCache:
        """A detached copy."""
        copy = KVCache(self.n_layers, self.batch_size, self.n_heads, self.head_dim, self.lengths.device, (), self.bound)
        copy.kv = None if self.kv is None else self.kv.detach().clone()
        copy.lengths, copy.offsets = self.lengths.clone(), self.offsets.clone()
        copy.counters = {name: c.clone() for name, c in self.counters.items()}
        return copy

    def select(self, rows: Tensor) -> KVCache:
        """A detached copy of the rows ``rows`` (long indices or a bool mask ``[B]``), in that order."""
        lengths = self.lengths[rows]
        copy = KVCache(self.n_layers, lengths.shape[0], self.n_heads, self.head_dim, lengths.device, (), self.bound)
        copy.kv = None if self.kv is None else self.kv.detach()[:, :, rows]
        copy.lengths, copy.offsets = lengths, self.offsets[rows]
        copy.counters = {name: c[rows] for name, c in self.counters.items()}
        return copy

    def held(self, layer: int, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Keys and values ``[B,H,stop-start,Dh]`` of slots ``start .. stop-1`` of every row (detached)."""
        kv = self.kv.detach()[layer, :, :, :, start:stop]
        return kv[0], kv[1]

    def expect(self, slots: int) -> None:
        """Let the next growth make room for ``slots`` per row at once (a refresh knows how much it will hold:
        growing by 10% at a time would copy the storage again and again)."""
        self.expected = slots

    def reserve(self, needed: int, like: Tensor) -> None:
        """Make room for ``needed`` slots per row (the bound, or what was expected, at once if known; else
        +10% or more)."""
        if needed > self.capacity:
            self._resize(max(needed, self.bound or 0, self.expected, self.capacity + self.capacity // 10), like)
            self.expected = 0

    def trim(self) -> None:
        """Give back storage beyond 10% over the longest row (unbounded caches; e.g. after a segment drop)."""
        if self.kv is None or self.bound is not None:
            return
        longest = int(self.lengths.max())
        if self.capacity > longest + longest // 10:
            self._resize(longest + longest // 10, self.kv)

    def _resize(self, capacity: int, like: Tensor) -> None:
        # zeros, not empty: masked-out values still enter the attention product (0 * NaN would be NaN)
        resized = like.new_zeros(self.n_layers, 2, self.batch_size, self.n_heads, capacity, self.head_dim)
        if self.kv is not None:
            kept = min(capacity, self.capacity)
            resized[..., :kept, :] = self.kv[..., :kept, :]
        self.kv = resized

    def positions(self, n: int, rows: Tensor | None = None) -> Tensor:
        """Positions ``[b, n]`` of the next ``n`` tokens of the given rows."""
        start = self.lengths + self.offsets
        if rows is not None:
            start = start[rows]
        return start[:, None] + torch.arange(n, device=start.device)

    def source(self, n: int, rows: Tensor | None = None, window: int | None = None) -> CacheKV:
        """A KV source for ``n`` new tokens of ``rows`` (all rows if ``None``); see :class:`CacheKV`."""
        return CacheKV(self, n, rows, window)

    def advance(self, n: int | Tensor, rows: Tensor | None = None) -> None:
        """Keep the ``n`` tokens just written after the valid slots of ``rows``."""
        if rows is None:
            self.lengths += n
        else:
            self.lengths[rows] += n

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> None:
        """Write ``k/v [B,H,n,Dh]`` into slots ``start..start+n-1`` of every row (set ``lengths`` afterwards)."""
        stop = start + k.shape[2]
        self.reserve(stop, k)
        self.kv[layer, 0, :, :, start:stop] = k.to(self.kv.dtype)
        self.kv[layer, 1, :, :, start:stop] = v.to(self.kv.dtype)

    def fill(self, rows: Tensor, layer: int, k: Tensor, v: Tensor) -> None:
        """Write ``k/v [r,H,n,Dh]`` into slots ``0..n-1`` of ``rows`` (set ``lengths`` afterwards)."""
        self.reserve(k.shape[2], k)
        self.kv[layer, 0, rows, :, : k.shape[2]] = k.to(self.kv.dtype)
        self.kv[layer, 1, rows, :, : v.shape[2]] = v.to(self.kv.dtype)

    def evict_front(self, rows: Tensor, count: Tensor, rebase: bool, rope_base: float) -> None:
        """Drop the first ``count[i]`` tokens of row ``rows[i]`` (see :func:`drop_front`); without
        ``rebase`` the row's ``offsets`` grow so new tokens keep increasing positions."""
        for layer in range(self.n_layers):
            kv = self.kv[layer, :, rows]
            self.kv[layer, 0, rows], self.kv[layer, 1, rows] = drop_front(kv[0], kv[1], count, rebase, rope_base)
        self.lengths[rows] -= count
        if not rebase:
            self.offsets[rows] += count


class CacheKV:
    """KV source over a :class:`KVCache`: the ``n`` new tokens of each row are written at slots
    ``lengths[b] + i`` and attend to every valid slot of their row plus earlier new tokens (only to the
    last ``window`` slots, themselves included, when ``window`` is given). Slots and mask are computed
    once for all layers, with one host sync per call. When all rows hold the same number of tokens (the
    usual lockstep rollout, or a chunked prefill) the new tokens are written with a plain slice, one new
    token per row needs no mask (it sees exactly the slots read), and several get a :class:`Band` (the
    same causal band in every row; :func:`attend` builds its mask a query chunk at a time)."""

    def __init__(self, cache: KVCache, n: int, rows: Tensor | None, window: int | None) -> None:
        if rows is not None and rows.numel() == cache.batch_size and bool((rows == torch.arange(rows.numel(), device=rows.device)).all()):
            rows = None  # every row in order (e.g. all summarise at once): no gathered copy of the cache
        lengths = cache.lengths if rows is None else cache.lengths[rows]
        self.cache, self.rows = cache, rows
        shortest, longest = torch.stack(torch.aminmax(lengths)).tolist()
        self.span = longest + n  # slots any of these rows reads
        self.start = longest if shortest == longest and rows is None else None  # every row writes here
        self.first = 0 if window is None or self.start is None else max(0, longest - window + 1)
        if self.start is not None:  # one new token sees slots first .. span-1, all of what is read
            self.mask = None if n == 1 else Band(window, past=self.start - self.first)
        else:
            self.slots = lengths[:, None] + torch.arange(n, device=lengths.device)  # [b, n]
            lag = self.slots[:, :, None] - torch.arange(self.first, self.span, device=lengths.device)  # [b,n,read]
            visible = lag >= 0 if window is None else (lag >= 0) & (lag < window)
            self.mask = visible[:, None]
            self.row_index = (torch.arange(cache.batch_size, device=lengths.device) if rows is None else rows)[:, None]

    def __call__(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | Band | None]:
        cache = self.cache
        cache.reserve(self.span, k)
        kv = cache.kv[layer]
        if self.start is not None:
            kv[0, :, :, self.start : self.span] = k.to(kv.dtype)
            kv[1, :, :, self.start : self.span] = v.to(kv.dtype)
        else:  # advanced indices around a slice put the indexed dims first: the target is [b, n, H, Dh]
            kv[0][self.row_index, :, self.slots] = k.transpose(1, 2).to(kv.dtype)
            kv[1][self.row_index, :, self.slots] = v.transpose(1, 2).to(kv.dtype)
        read = slice(self.first, self.span)
        kv = kv[:, :, :, read] if self.rows is None else kv[:, self.rows, :, read]
        return kv[0], kv[1], self.mask

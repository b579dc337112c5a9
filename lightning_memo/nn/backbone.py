"""The Transformer every memory shares: pre-norm blocks, RMSNorm, RoPE attention over a KV prefix.

``h += Attn(RMSNorm(h)); h += MLP(RMSNorm(h))``, a final RMSNorm after the last block. Attention has
no biases; rotary embeddings (rotate-half, base 10000) are applied to queries and keys, and keys are
handed to the KV source *after* rotation, so cached keys never need re-rotating.

Where the keys come from is the caller's business: every attention layer calls a ``KVSource``
``(layer, k_new, v_new) -> (k_all, v_all, mask)`` with the new tokens' keys/values. The sequence
mode uses :class:`PrefixKV` (a fixed prefix plus causal new tokens); the step mode uses the cache
of :mod:`lightning_memo.nn.cache`. Shapes: ``x [B,n,D]``, ``pos [B,n]`` or ``[n]``,
``k/v [B,H,n,Dh]``, ``mask`` bool broadcastable to ``[B,H,n,S]`` (True = may attend) or ``None``
for plain causal attention among the new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVSource = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor, Optional[Tensor]]]


@dataclass
class TransformerConfig:
    """Backbone sizes. Reference: 4 layers, 8 heads, width 256, MLP 1024 (~4.2M parameters with Memo)."""

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    mlp_ratio: float = 4.0
    activation: str = "gelu"  # gate nonlinearity: "gelu" or "silu"
    layer_drop: float = 0.0  # probability of skipping a whole block in training (one draw per call)
    rope_base: float = 10000.0
    norm_eps: float = 1e-6

    def validate(self) -> None:
        _positive(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must divide d_model={self.d_model}; pick e.g. n_heads="
                f"{_divisor_near(self.d_model, self.n_heads)}."
            )
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


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - k))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def apply_rope(x: Tensor, pos: Tensor, base: float) -> Tensor:
    """Rotate ``x [B,H,n,Dh]`` to positions ``pos [B,n]`` or ``[n]`` (rotate-half convention)."""
    half = x.shape[-1] // 2
    # float64 inputs get float64 angles so that the float64 parity oracles can be tight.
    angle_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=angle_dtype) / half)
    angles = pos.to(angle_dtype)[..., None] * inv_freq  # [B,n,half] or [n,half]
    if angles.dim() == 3:
        angles = angles[:, None]  # broadcast over heads
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.rope_base = cfg.rope_base
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _heads(self, t: Tensor) -> Tensor:
        B, n, _ = t.shape
        return t.view(B, n, self.n_heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotated keys and values of ``x`` only (used when a layer's output is not needed)."""
        _, k, v = self.qkv(x).chunk(3, dim=-1)
        return apply_rope(self._heads(k), pos, self.rope_base), self._heads(v)

    def forward(self, x: Tensor, pos: Tensor, kv: KVSource, layer: int) -> Tensor:
        q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = apply_rope(q, pos, self.rope_base), apply_rope(k, pos, self.rope_base)
        keys, values, mask = kv(layer, k, v)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None)
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

    def forward(self, h: Tensor, pos: Tensor, kv: KVSource, layer: int) -> Tensor:
        h = h + self.attn(self.attn_norm(h), pos, kv, layer)
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
        h = x
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if skip is not None and skip[i]:
                continue
            if kv_only and i == last:
                k, v = block.attn.keys_values(block.attn_norm(h), pos)
                kv(i, k, v)
                return None
            h = block(h, pos, kv, i)
        return None if kv_only else self.norm(h)


class PrefixKV:
    """KV source for sequence mode: every new token sees the whole prefix plus earlier new tokens.

    ``prefix`` is one ``(k, v)`` pair ``[B,H,P,Dh]`` per layer (``None`` entries or ``P == 0`` mean no
    prefix). The new tokens' keys/values are recorded in ``self.new`` (per layer) for the caller.
    """

    def __init__(self, prefix: list[tuple[Tensor, Tensor] | None] | None, n_layers: int) -> None:
        self.prefix = prefix
        self.new: list[tuple[Tensor, Tensor] | None] = [None] * n_layers

    def __call__(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        self.new[layer] = (k, v)
        prefix = self.prefix[layer] if self.prefix is not None else None
        if prefix is None or prefix[0].shape[2] == 0:
            return k, v, None
        pk, pv = prefix
        n, P = k.shape[2], pk.shape[2]
        mask = torch.ones(n, P + n, dtype=torch.bool, device=k.device).tril(diagonal=P)
        return torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2), mask

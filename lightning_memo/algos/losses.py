"""Loss pieces every algorithm shares."""

from __future__ import annotations

from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x [*M, *]`` over the entries where ``mask [*M]`` (bool) is true, and all trailing dims
    of ``x`` beyond the mask's (a ``[B, T]`` mask over ``[B, T, C, G]`` values: every critic and discount)."""
    m = mask.reshape(*mask.shape, *([1] * (x.dim() - mask.dim()))).expand_as(x).to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)

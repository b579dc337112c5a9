"""FLOP formulas for the benchmarks: ``torch.utils.flop_counter``'s, plus the CPU attention kernels it lacks.

``flop_registry`` (torch 2.13) has formulas for the CUDA attention kernels only, so on a CPU every
``scaled_dot_product_attention`` call would count as zero FLOPs and the FLOP rates and ratios would
leave attention out. The formulas added here are torch's own for attention (``sdpa_flop_count`` and its
backward), applied to the CPU flash kernel, scaled for a causal call to the query/key pairs it computes
(the kernel skips the blocks above the diagonal; about half of a square call). A call with a mask tensor
counts every pair: the kernel computes them all.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _causal_share(queries: int, keys: int, is_causal: bool) -> float:
    """Share of the query/key pairs a call computes (query i sees keys 0..i when causal)."""
    if not is_causal:
        return 1.0
    seen = sum(min(i + 1, keys) for i in range(queries)) if queries != keys else queries * (queries + 1) // 2
    return seen / (queries * keys)


def _cpu_attention(query, key, value, dropout_p=0.0, is_causal=False, *, out_val=None, **kwargs) -> int:
    share = _causal_share(query.shape[-2], key.shape[-2], is_causal)
    return int(sdpa_flop_count(query.shape, key.shape, value.shape) * share)


def _cpu_attention_backward(
    grad_out, query, key, value, out, logsumexp, dropout_p=0.0, is_causal=False, *, out_val=None, **kwargs
) -> int:
    share = _causal_share(query.shape[-2], key.shape[-2], is_causal)
    return int(sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape) * share)


# op overload packet -> function(*args, out_val=..., **kwargs) -> FLOPs, for tensors as the op received them
FLOP_FORMULAS = {
    **flop_registry,
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


class FlopCount(TorchDispatchMode):
    """FLOPs of the ops in ``FLOP_FORMULAS`` run while active (matrix products and attention, forward and
    backward): ``with FlopCount() as count: ...; count.total``; ``count.ops`` counts every aten op.

    Hand-written because ``FlopCounterMode``'s module tracker hooks autograd and fails on the no-grad
    acting steps; this keeps only the per-op formulas.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.ops = 0  # every aten op dispatched (views and no-op casts included), forward and backward

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        formula = FLOP_FORMULAS.get(func.overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out

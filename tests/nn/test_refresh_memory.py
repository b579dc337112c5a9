"""Refresh and prefix encoding build nothing quadratic in the trial length: no ``[B, t, t]`` mask or score
matrix, at any t (at the paper's scale such a tensor is gigabytes: 17 GB for an FCT cache at 32k steps)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lightning_memo.nn.registry import make_memory

B, T, D = 2, 2048, 8
VARIANTS = {
    "memo": ("memo", dict(segment_len=64, summary_len=8)),
    "memo-streaming": ("memo", dict(segment_len=64, summary_len=8, max_memory_tokens=32)),
    "rmt": ("rmt", dict(segment_len=64, summary_len=8)),
    "fct": ("fct", {}),
    "fct-relic-sink": ("fct", dict(position_recipe="relic", sink_kv=True)),
    "fct-window": ("fct", dict(window=128)),
}


class LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an op returns while active."""

    numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def largest_tensor(memory, method: str, t: int) -> int:
    torch.manual_seed(1)
    x = torch.randn(B, t, D)
    episode_start = torch.zeros(B, t, dtype=torch.bool)
    episode_start[:, ::100] = True
    with LargestTensor() as largest:
        getattr(memory, method)(x, episode_start=episode_start)
    return largest.numel


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("method", ["refresh", "encode_prefix"])
def test_no_tensor_grows_with_the_square_of_the_trial(variant, method):
    """Doubling t at most doubles the largest tensor (a [t, t] mask or score matrix would quadruple), and
    at t = 2048 it is at most half a single [t, t] mask (chunked attention's masks are [512, <= t + 1])."""
    name, kwargs = VARIANTS[variant]
    torch.manual_seed(0)
    memory = make_memory(name, d_model=D, n_heads=2, n_layers=2, mlp_ratio=2.0, **kwargs).eval()
    small, large = largest_tensor(memory, method, T), largest_tensor(memory, method, 2 * T)
    assert large <= 2.05 * small, (variant, small, large)
    assert small <= T * T // 2, (variant, small)

"""Refresh and prefix encoding build nothing quadratic in the trial length (no ``[B, t, t]`` mask or score
matrix: at the paper's scale such a tensor is gigabytes, 17 GB for an FCT cache at 32k steps), and their
peak memory is the cache they build, the outputs ``refresh`` returns and one block's working set."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lightning_memo.nn.registry import make_memory
from tests.nn.spy import peak_bytes

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
    """The most elements of any new tensor an op returns while active (views of existing ones are free)."""

    numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
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


# ------------------------------------------------------------------------------------ peak memory
# Small, yet wide enough that a row of keys/values outweighs a row of an attention mask (which has no batch or
# width dimension): a batch of 4, width 64, 4 layers.
WIDE = dict(d_model=64, n_heads=2, n_layers=4, mlp_ratio=1.0)
SEGMENTS = dict(segment_len=256, summary_len=32)
FCT_VARIANTS = {"fct": {}, "fct-relic-sink": dict(position_recipe="relic", sink_kv=True), "fct-window": dict(window=1024)}
SEGMENT_VARIANTS = {
    "memo": ("memo", SEGMENTS),
    "memo-streaming": ("memo", dict(SEGMENTS, max_memory_tokens=128)),  # evicting from t = 1,280 on
    "rmt": ("rmt", SEGMENTS),
}


def peaks(memory, t: int) -> dict:
    """Peak bytes of ``refresh`` and ``encode_prefix`` over a batch of 4 trials of ``t`` steps, with the bytes
    of what each builds (the cache's storage, the outputs)."""
    torch.manual_seed(1)
    x = torch.randn(4, t, WIDE["d_model"])
    refresh, out = peak_bytes(lambda: memory.refresh(x))
    encode, cache = peak_bytes(lambda: memory.encode_prefix(x))
    assert cache.allocated_nbytes() == memory.cache_allocated_nbytes()
    return dict(refresh=refresh, encode=encode, cache=cache.allocated_nbytes(), outputs=out.numel() * out.element_size())


@pytest.mark.parametrize("variant", sorted(FCT_VARIANTS))
def test_fct_refresh_peaks_within_twice_its_cache(variant):
    """The chunked prefill holds the cache plus one block: at most 2x the cache (plus the outputs refresh returns).
    A [B, t, t] bool mask would add 2x the cache here, a record of every step's K/V copied into the cache 1x."""
    torch.manual_seed(0)
    memory = make_memory("fct", **WIDE, **FCT_VARIANTS[variant]).eval()
    got = peaks(memory, 4096)
    assert got["encode"] <= 2 * got["cache"], got
    assert got["refresh"] <= 2 * got["cache"] + got["outputs"], got


@pytest.mark.parametrize("variant", sorted(SEGMENT_VARIANTS))
def test_segment_memory_refresh_peak_grows_with_what_it_builds(variant):
    """Beyond the cache and the outputs, a segment memory's refresh holds one chunk's working set, which barely
    grows with t (the layer being run holds a copy of its memory keys, and the chunk's mask has a column per
    memory token): from t to 4t the peak grows by at most 1.5x what the cache and outputs grow by (a [t, t] mask
    would add 15 times its size at t), and a capped memory's peak of encode_prefix does not grow at all."""
    name, kwargs = SEGMENT_VARIANTS[variant]
    torch.manual_seed(0)
    memory = make_memory(name, **WIDE, **kwargs).eval()
    short, long = peaks(memory, 2048), peaks(memory, 8192)
    built = long["cache"] - short["cache"]
    assert long["encode"] - short["encode"] <= 1.5 * built + 0.01 * short["encode"], (short, long)
    grown = built + long["outputs"] - short["outputs"]
    assert long["refresh"] - short["refresh"] <= 1.5 * grown, (short, long)



def test_a_lockstep_summary_write_reads_the_cache_in_place():
    """When every row summarises at the same step (a lockstep rollout) the queries read the cache through
    slices: no op returns a copy of the keys/values they read (picking all rows by index copied them)."""
    torch.manual_seed(0)
    # a cap the memory never reaches: the cache reserves its bound once (no regrowth or trim in the step)
    memory = make_memory("memo", d_model=16, n_heads=2, n_layers=1, segment_len=8, summary_len=2, max_memory_tokens=64)
    x = torch.randn(4, 80, 16)
    cache = memory.eval().new_cache(4)
    for t in range(79):  # the next step ends the 10th segment in every row
        memory.step(x[:, t], cache=cache)
    with LargestTensor() as largest:
        memory.step(x[:, 79], cache=cache)
    assert cache.tokens().tolist() == [20] * 4 and cache.capacity == 64 + 8 + 2
    read = 2 * 4 * 2 * (18 + 8 + 2) * 8  # K and V, 4 rows, 2 heads, memory + segment + queries, head width 8
    assert largest.numel < read / 2, (largest.numel, read)

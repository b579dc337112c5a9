"""FCT specifics: ReLIC positions, Sink-KV, streaming window (parity is in test_registry.py)."""

import pytest
import torch

from lightning_memo.nn.full_context import FullContextMemory, episode_positions

TINY = dict(d_model=8, n_heads=2, n_layers=2, mlp_ratio=2.0)


def fct(seed: int = 0, **kwargs) -> FullContextMemory:
    torch.manual_seed(seed)
    return FullContextMemory(**TINY, **kwargs).double().eval()


def steps(memory, x, episode_start=None):
    memory.reset_cache(x.shape[0])
    flags = torch.zeros(x.shape[:2], dtype=torch.bool) if episode_start is None else episode_start
    return torch.stack([memory.step(x[:, t], episode_start=flags[:, t]) for t in range(x.shape[1])], 1)


def test_episode_positions():
    es = torch.tensor([[True, False, True, False, False, True], [False, True, False, False, False, False]])
    step, ordinal = episode_positions(es, (2, 6), torch.device("cpu"))
    assert step.tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4]]
    assert ordinal.tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]]


def test_relic_uses_episode_boundaries():
    memory = fct(position_recipe="relic")
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    es = torch.zeros(2, 9, dtype=torch.bool)
    es[:, 4] = True
    with torch.no_grad():
        with_episodes = memory.forward_sequence(x, episode_start=es)
        without = memory.forward_sequence(x)
    assert torch.equal(with_episodes[:, :4], without[:, :4])
    assert (with_episodes[:, 4:] - without[:, 4:]).abs().min() > 1e-6  # new step embedding and RoPE ordinal
    assert (steps(memory, x, es) - with_episodes).abs().max() < 1e-10


def test_relic_steps_past_the_table_share_its_last_row():
    memory = fct(position_recipe="relic", max_episode_len=4)
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        out = memory.forward_sequence(x)
        memory.step_embedding[3] += 1.0
        moved = memory.forward_sequence(x)
    assert torch.equal(out[:, :3], moved[:, :3])
    assert (out[:, 3:] - moved[:, 3:]).abs().amax(-1).min() > 1e-6
    assert (steps(memory, x) - moved).abs().max() < 1e-10


def test_sink_is_attended_and_learned():
    memory = fct(sink_kv=True)
    plain = fct(sink_kv=False)
    plain.load_state_dict({k: v for k, v in memory.state_dict().items() if k != "sink_keys"})
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    out = memory.forward_sequence(x)
    assert (out - plain.forward_sequence(x)).abs().max() > 1e-6
    out.sum().backward()
    assert memory.sink_keys.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", ["grow", "rebase"])
def test_streaming_equals_plain_while_window_covers_trial(policy):
    window = 6
    plain, streaming = fct(), fct(window=window, position_policy=policy)
    streaming.load_state_dict(plain.state_dict())
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    with torch.no_grad():
        full, windowed = steps(plain, x), steps(streaming, x)
        sequence = streaming.forward_sequence(x)
    assert (windowed[:, :window] - full[:, :window]).abs().max() < 1e-10
    assert (windowed[:, window:] - full[:, window:]).abs().min() > 1e-8  # truncation starts
    assert (windowed - sequence).abs().max() < 1e-10


def test_streaming_cache_is_bounded():
    memory = fct(window=5, sink_kv=True, evict_block=1)
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    memory.reset_cache(2)
    sizes = []
    with torch.no_grad():
        for t in range(40):
            memory.step(x[:, t])
            sizes.append(memory.cache_nbytes())
    assert memory.memory_tokens().tolist() == [5, 5]
    assert max(sizes) == sizes[4] == sizes[-1]
    assert memory.cache_state().offsets.tolist() == [35, 35]  # "grow": positions keep increasing


def test_rebase_and_grow_compute_the_same_function():
    grow, rebase = fct(window=4, evict_block=3), fct(window=4, position_policy="rebase", evict_block=2)
    rebase.load_state_dict(grow.state_dict())
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    with torch.no_grad():
        assert (steps(grow, x) - steps(rebase, x)).abs().max() < 1e-10
    assert rebase.cache_state().offsets.tolist() == [0, 0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"position_recipe": "relic", "position_policy": "rebase"}, "needs position_recipe='rope'"),
        ({"sink_kv": True, "position_policy": "rebase"}, "use position_policy='grow'"),
        ({"window": 0}, "window must be a positive integer"),
        ({"window": 8, "evict_block": 0}, "evict_block must be a positive integer"),
        ({"position_policy": "shift"}, r"position_policy must be one of \('grow', 'rebase'\)"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FullContextMemory(**TINY, **kwargs)


@pytest.mark.parametrize("window, lead", [(5, 0), (5, 1), (None, 1), (40, 2)])
def test_banded_attention_equals_the_dense_mask(window, lead):
    """Chunked Band attention (several chunks) is the same function as one dense [n, lead + n] mask."""
    from lightning_memo.nn.backbone import Band, attend

    torch.manual_seed(0)
    n = 50
    q = torch.randn(2, 3, n, 4, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 3, lead + n, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    lag = torch.arange(n)[:, None] - torch.arange(n)
    visible = (lag >= 0) & (lag < (window or n))
    dense = torch.cat((torch.ones(n, lead, dtype=torch.bool), visible), 1)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    banded = attend(q, k, v, Band(window, lead), chunk=8)
    torch.testing.assert_close(banded, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(banded.square().sum(), (q, k, v))
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), (q, k, v))):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("keys", [255, 256, 700])
def test_one_query_attention_by_products_equals_the_kernel(keys):
    """One query per row over many keys (a step on a long CPU cache) is attended with matrix products
    instead of the kernel: the same function, on a strided slice of a cache as a step reads it."""
    from lightning_memo.nn.backbone import ONE_QUERY_PRODUCTS_MIN_KEYS, attend

    torch.manual_seed(0)
    storage = torch.randn(2, 3, 2, keys + 9, 4, dtype=torch.float64)  # spare slots, as a cache has
    q = torch.randn(3, 2, 1, 4, dtype=torch.float64)
    k, v = storage[0, :, :, :keys], storage[1, :, :, :keys]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attend(q, k, v, None), expected, rtol=0, atol=1e-14)
    assert ONE_QUERY_PRODUCTS_MIN_KEYS <= 700  # the last case takes the products


def test_steps_past_the_products_threshold_equal_the_sequence():
    """FCT's steps attend by products once the cache holds enough keys; step == sequence still."""
    memory = fct()
    x = torch.randn(2, 300, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = memory.forward_sequence(x)
    torch.testing.assert_close(steps(memory, x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kwargs", [dict(window=16), dict(sink_kv=True), dict(window=16, sink_kv=True)])
def test_windowed_and_sink_sequence_mode_builds_no_square_mask(kwargs):
    """A [T, T] bool mask at T = 2048 would be 4 MiB; chunked attention builds at most [chunk, T]."""
    from torch.utils._pytree import tree_flatten
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestBool(TorchDispatchMode):
        nbytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.bool:
                    self.nbytes = max(self.nbytes, t.numel())
            return out

    T = 2048
    memory = fct(**kwargs).float()
    with torch.no_grad(), LargestBool() as largest:
        memory.forward_sequence(torch.randn(1, T, 8))
    assert largest.nbytes < T * T // 2

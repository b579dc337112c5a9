"""The Memo oracles (see docs/memo.md), each one a test that fails if the mechanism breaks."""

import pytest
import torch

from lightning_memo.nn import MemoMemory
from lightning_memo.nn.memo import MemoConfig
from tests.nn.naive_memo import naive_memo_sequence
from tests.nn.spy import record_segment_lens

D, SEG, SUM = 16, 4, 2
TOL = dict(atol=1e-10, rtol=0)


def make_memo(seed: int = 0, **overrides) -> MemoMemory:
    torch.manual_seed(seed)
    kwargs = dict(d_model=D, n_layers=2, n_heads=2, segment_len=SEG, summary_len=SUM, summary_init_scale=1.0)
    kwargs.update(overrides)
    return MemoMemory(**kwargs).double().eval()


def run_steps(memo: MemoMemory, x: torch.Tensor, is_init: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
    """Step through ``x[:, start:]``; the cache must already hold the prefix when ``start > 0``."""
    B, T, _ = x.shape
    if is_init is None:
        is_init = torch.zeros(B, T, dtype=torch.bool)
        is_init[:, 0] = True
    if start == 0:
        memo.reset_cache(B)
    return torch.stack([memo.step(x[:, t], is_init[:, t]) for t in range(start, T)], dim=1)


def randn(*shape, seed=1):
    """Random float64 inputs of shape ``shape + (D,)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, D, generator=g, dtype=torch.float64)


# --- oracle 1: sequence mode == step mode ------------------------------------------------------
@pytest.mark.parametrize("segments,remainder", [(0, 3), (1, 0), (2, 1), (3, 3), (5, 2)])
@pytest.mark.parametrize("batch", [1, 3])
def test_step_equals_sequence(segments, remainder, batch):
    memo = make_memo()
    x = randn(batch, segments * SEG + remainder)
    if x.shape[1] == 0:
        pytest.skip("empty sequence")
    torch.testing.assert_close(run_steps(memo, x), memo.forward_sequence(x), **TOL)


def test_step_equals_sequence_rows_at_different_phases_with_resets():
    memo = make_memo()
    B, T = 4, 29
    x = randn(B, T, seed=2)
    is_init = torch.zeros(B, T, dtype=torch.bool)
    is_init[:, 0] = True
    is_init[1, 3] = True  # row 1 restarts mid-segment
    is_init[2, [5, 17]] = True  # row 2 twice
    is_init[3, 8] = True  # row 3 restarts on a segment boundary
    seq = memo.forward_sequence(x, is_init)
    torch.testing.assert_close(run_steps(memo, x, is_init), seq, **TOL)
    # each trial equals that trial on its own: nothing leaks across is_init
    torch.testing.assert_close(seq[2, 5:17], memo.forward_sequence(x[2:3, 5:17])[0], **TOL)


def test_step_equals_sequence_with_streaming_cap_both_position_policies():
    for policy in ("rebase", "grow"):
        memo = make_memo(max_memory_tokens=3 * SUM, position_policy=policy)
        x = randn(2, 9 * SEG + 2, seed=3)
        torch.testing.assert_close(run_steps(memo, x), memo.forward_sequence(x), **TOL)


# --- oracle 2: the parity check is sensitive to a wrong cache -----------------------------------
def test_wrong_cache_breaks_step_sequence_parity():
    memo = make_memo()
    x = randn(2, 5 * SEG + 2, seed=4)
    expected = memo.forward_sequence(x)
    t0 = 4 * SEG
    memo.refresh(x[:, :t0])
    torch.testing.assert_close(run_steps(memo, x, start=t0), expected[:, t0:], **TOL)
    memo.refresh(x[:, :t0])
    # keep only the last summary: drop the older memory tokens (a plausible implementation bug)
    cache = memo.cache_state()
    rows = torch.arange(2)
    cache.evict_front(rows, torch.full((2,), 3 * SUM), rebase=True, rope_base=memo.config.rope_base)
    cache.counters["memory"] -= 3 * SUM
    memo.load_cache_state(cache)
    wrong = run_steps(memo, x, start=t0)
    assert (wrong - expected[:, t0:]).abs().max() > 1e-3


# --- oracle 3: cached-memory training path == naive re-encode path ------------------------------
@pytest.mark.parametrize("T,L", [(7, 4), (16, 4), (23, 5), (30, 3)])
def test_cached_path_equals_naive_path_values_and_gradients(T, L):
    memo = make_memo()
    memo_naive = make_memo()
    memo_naive.load_state_dict(memo.state_dict())
    x = randn(3, T, seed=5).requires_grad_(True)
    x_naive = x.detach().clone().requires_grad_(True)
    fast = memo.forward_sequence(x, segment_len=L)
    slow = naive_memo_sequence(memo_naive, x_naive, L)
    torch.testing.assert_close(fast, slow, **TOL)
    weights = torch.randn_like(fast)
    (fast * weights).sum().backward()
    (slow * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_naive.grad, **TOL)
    for (name, p), q in zip(memo.named_parameters(), memo_naive.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=lambda m: f"{name}: {m}")
    assert memo.summary_queries.grad.abs().sum() > 0  # gradients reach the summaries


def test_gradients_flow_through_every_summary():
    memo = make_memo()
    x = randn(1, 6 * SEG + 1, seed=7).requires_grad_(True)
    memo.forward_sequence(x)[:, -1].sum().backward()
    per_segment = x.grad[0, : 6 * SEG].abs().reshape(6, SEG, D).sum(dim=(1, 2))
    assert (per_segment > 0).all()  # the first segment still gets gradient through 6 summaries


# --- oracle 4: refresh after a parameter change ----------------------------------------------
@pytest.mark.parametrize("t0", [1, 3, SEG, 2 * SEG, 2 * SEG + 3, 4 * SEG])
def test_refresh_then_step_equals_sequence_with_new_weights(t0):
    memo = make_memo()
    B, T = 3, 4 * SEG + 2
    x = randn(B, T, seed=8)
    run_steps(memo, x[:, :t0])  # cache built under the old weights
    with torch.no_grad():
        for p in memo.parameters():
            p.add_(0.1 * torch.randn_like(p))
    expected = memo.forward_sequence(x)
    stale = run_steps(memo, x, start=t0) if t0 < T else None
    memo.refresh(x[:, :t0])
    torch.testing.assert_close(run_steps(memo, x, start=t0), expected[:, t0:], **TOL)
    assert stale is not None and (stale - expected[:, t0:]).abs().max() > 1e-3  # the flush mattered


def test_refresh_uses_fixed_segment_length_even_in_training_mode():
    memo = make_memo(randomize_segments=True)
    x = randn(2, 3 * SEG + 1, seed=9)
    expected = memo.forward_sequence(x)
    memo.train()
    memo.refresh(x[:, : 2 * SEG + 1])
    memo.eval()
    torch.testing.assert_close(run_steps(memo, x, start=2 * SEG + 1), expected[:, 2 * SEG + 1 :], **TOL)


def test_refresh_with_rows_of_different_trial_lengths():
    memo = make_memo()
    B, T = 3, 3 * SEG + 3
    x = randn(B, T, seed=10)
    is_init = torch.zeros(B, T, dtype=torch.bool)
    is_init[:, 0] = True
    is_init[1, 2] = True
    is_init[2, SEG + 3] = True
    expected = memo.forward_sequence(x, is_init)
    t0 = 2 * SEG + 3
    memo.refresh(x[:, :t0], is_init[:, :t0])
    torch.testing.assert_close(run_steps(memo, x, is_init, start=t0), expected[:, t0:], **TOL)


# --- oracle 5: position ids -------------------------------------------------------------------
def record_positions(memo):
    calls = []
    forward = memo.transformer.forward

    def spy(x, pos, kv, skip=None, kv_only=False):
        calls.append((x.shape[1], pos.reshape(-1, pos.shape[-1])[0].tolist(), kv_only))
        return forward(x, pos, kv, skip, kv_only)

    memo.transformer.forward = spy
    return calls


def test_position_ids_restart_every_window():
    memo = make_memo()
    calls = record_positions(memo)
    memo.forward_sequence(randn(1, 3 * SEG + 2), segment_len=SEG)
    windows = [c for c in calls if not c[2]]
    encodes = [c for c in calls if c[2]]
    for i, (n, pos, _) in enumerate(windows):
        m = i * SUM
        chunk = min(SEG, 3 * SEG + 2 - i * SEG)
        queries = SUM if chunk == SEG else 0
        # memory occupies 0..m-1, observations m.., queries after them
        assert pos == list(range(m, m + chunk + queries))
    assert [pos for _, pos, _ in encodes] == [list(range(i * SUM, (i + 1) * SUM)) for i in range(3)]


def test_step_mode_positions():
    memo = make_memo()
    calls = record_positions(memo)
    run_steps(memo, randn(1, 2 * SEG + 1))
    obs = [pos[0] for n, pos, kv_only in calls if n == 1]
    assert obs == [0, 1, 2, 3, SUM, SUM + 1, SUM + 2, SUM + 3, 2 * SUM]


# --- oracle 6: information bottleneck -----------------------------------------------------------
def test_earlier_segments_reach_later_outputs_only_through_summaries(monkeypatch):
    memo = make_memo()
    x = randn(1, 3 * SEG, seed=11)
    x2 = x.clone()
    x2[:, 1] += 1.0  # perturb an observation of the first segment
    changed = (memo.forward_sequence(x) - memo.forward_sequence(x2)).abs()
    assert changed[:, 1:SEG].max() > 1e-3 and changed[:, SEG:].max() > 1e-3
    # cut the summaries' dependence on their segment: later outputs must not move at all
    write = MemoMemory._write_summary
    monkeypatch.setattr(MemoMemory, "_write_summary", lambda self, mem, s, skip: write(self, mem, s.detach() * 0, skip))
    cut = (memo.forward_sequence(x) - memo.forward_sequence(x2)).abs()
    assert cut[:, 1:SEG].max() > 1e-3
    assert cut[:, SEG:].max() == 0.0
    # the naive oracle agrees: with constant summaries the outputs after segment 0 are equal
    zero = lambda s: s * 0
    naive = (naive_memo_sequence(memo, x, SEG, zero) - naive_memo_sequence(memo, x2, SEG, zero)).abs()
    assert naive[:, SEG:].max() == 0.0


# --- oracle 7: segment randomisation --------------------------------------------------------------
def test_segment_length_randomisation_range_and_mode():
    memo = MemoMemory(d_model=8, n_layers=1, n_heads=2, segment_len=100, summary_len=4)
    x = torch.randn(1, 3, 8)
    used = record_segment_lens(memo)
    memo.train()
    for _ in range(300):
        memo.forward_sequence(x)
    drawn = set(used)
    assert min(drawn) >= 80 and max(drawn) <= 120
    assert min(drawn) < 90 and max(drawn) > 110  # both sides of l_seg are drawn
    memo.forward_sequence(x, segment_len=37)
    assert used[-1] == 37
    memo.eval()
    memo.forward_sequence(x)
    assert used[-1] == 100
    fixed = MemoMemory(d_model=8, n_layers=1, n_heads=2, segment_len=100, summary_len=4, randomize_segments=False)
    fixed_used = record_segment_lens(fixed)
    fixed.train()
    fixed.forward_sequence(x)
    assert fixed_used[-1] == 100


# --- oracle 8: cache bytes ------------------------------------------------------------------------
def test_cache_bytes_follow_the_formula():
    memo = make_memo()
    B, T = 2, 6 * SEG + 3
    x = randn(B, T, seed=12)
    memo.reset_cache(B)
    per_token = 2 * 2 * D * 8  # K and V, 2 layers, width D, float64
    for t in range(T):
        memo.step(x[:, t], torch.full((B,), t == 0))
        steps = t + 1
        tokens = SUM * (steps // SEG) + steps % SEG
        assert memo.memory_tokens().tolist() == [tokens] * B
        assert memo.cache_nbytes() == B * tokens * per_token


def test_streaming_cache_is_bounded_and_large_cap_equals_plain():
    cap = 3 * SUM
    memo = make_memo(max_memory_tokens=cap)
    x = randn(2, 20 * SEG, seed=13)
    memo.reset_cache(2)
    peak = 0
    for t in range(x.shape[1]):
        memo.step(x[:, t], torch.full((2,), t == 0))
        peak = max(peak, int(memo.memory_tokens().max()))
    assert peak <= cap + SEG - 1
    per_token = 2 * 2 * D * 8  # K and V, 2 layers, width D, float64
    slots = memo.cache_allocated_nbytes() // (2 * per_token)  # allocated slots per row
    assert slots <= cap + SEG + SUM + 16  # storage bounded too, whatever the horizon
    plain = make_memo()
    big = make_memo(max_memory_tokens=1000 * SUM)
    torch.testing.assert_close(run_steps(big, x[:, :50]), run_steps(plain, x[:, :50]), **TOL)
    small = run_steps(memo, x[:, :50])
    assert (small - run_steps(plain, x[:, :50])).abs().max() > 1e-6  # the cap does bite


def test_rebased_positions_stay_bounded_grow_positions_do_not():
    for policy, bounded in (("rebase", True), ("grow", False)):
        memo = make_memo(max_memory_tokens=2 * SUM, position_policy=policy)
        calls = record_positions(memo)
        run_steps(memo, randn(1, 12 * SEG))
        top = max(max(pos) for _, pos, _ in calls)
        assert (top < 2 * SUM + SEG + SUM) == bounded


# --- configuration and bad input -----------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(segment_len=0), "segment_len"),
        (dict(summary_len=-1), "summary_len"),
        (dict(d_model=10, n_heads=4), "n_heads"),
        (dict(layer_drop=1.5), "layer_drop"),
        (dict(max_memory_tokens=1), "max_memory_tokens"),
        (dict(position_policy="shift"), "position_policy"),
        (dict(segment_jitter=2.0), "segment_jitter"),
        (dict(activation="tanh"), "activation"),
        (dict(sgment_len=4), "sgment_len"),
    ],
)
def test_invalid_config_names_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MemoMemory(**{**dict(d_model=16, n_heads=2), **kwargs})


def test_config_object_and_omegaconf():
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.structured(MemoConfig), {"d_model": 32, "n_heads": 4, "segment_len": 8})
    memo = MemoMemory(config=cfg)
    assert memo.config.d_model == 32 and memo.config.segment_len == 8
    with pytest.raises(TypeError, match="not both"):
        MemoMemory(config=MemoConfig(), d_model=8)


def test_bad_inputs_raise_clear_errors():
    memo = make_memo()
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        memo.forward_sequence(randn(3))
    with pytest.raises(ValueError, match="d_model=16"):
        memo.forward_sequence(torch.randn(1, 3, D + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        memo.forward_sequence(torch.randn(1, 3, D))
    with pytest.raises(ValueError, match="meta"):
        memo.forward_sequence(torch.randn(1, 3, D, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="is_init must have shape"):
        memo.forward_sequence(randn(2, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        memo.forward_sequence(randn(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        memo.step(randn(2, 3))
    with pytest.raises(RuntimeError, match="reset_cache"):
        memo.step(randn(2))  # no cache yet and no is_init
    memo.reset_cache(2)
    with pytest.raises(RuntimeError, match="reset_cache"):
        memo.step(randn(3), torch.tensor([True, False, True]))


# --- layer drop --------------------------------------------------------------------------------------
def test_layer_drop_skips_the_same_blocks_for_a_whole_call():
    memo = make_memo(n_layers=2, layer_drop=0.5)
    one_block = make_memo(n_layers=1)
    one_block.summary_queries.data.copy_(memo.summary_queries.data)
    one_block.transformer.blocks[0].load_state_dict(memo.transformer.blocks[1].state_dict())
    one_block.transformer.norm.load_state_dict(memo.transformer.norm.state_dict())
    x = randn(2, 3 * SEG + 1, seed=14)
    memo.train()
    memo.transformer.draw_layer_skips = lambda: [True, False]  # as if block 0 were dropped this call
    dropped = memo.forward_sequence(x, segment_len=SEG)
    torch.testing.assert_close(dropped, one_block.forward_sequence(x), **TOL)
    memo.eval()
    del memo.transformer.draw_layer_skips
    assert memo.transformer.draw_layer_skips() is None  # never in eval mode
    assert (memo.forward_sequence(x) - dropped).abs().max() > 1e-3


@pytest.mark.parametrize("policy", ["rebase", "grow"])
def test_refresh_with_streaming_cap_equals_streaming_sequence(policy):
    memo = make_memo(max_memory_tokens=2 * SUM, position_policy=policy)
    x = randn(2, 7 * SEG + 3, seed=15)
    expected = memo.forward_sequence(x)
    for t0 in (5 * SEG, 5 * SEG + 2):
        memo.refresh(x[:, :t0])
        torch.testing.assert_close(run_steps(memo, x, start=t0), expected[:, t0:], **TOL)

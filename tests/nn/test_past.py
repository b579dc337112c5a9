"""Sequence mode from a cached prefix: ``forward_sequence(x[:, s:], past=encode_prefix(x[:, :s]))``.

The oracle: it equals the last steps of one pass over the whole input, for every memory and option,
at a segment boundary, mid-segment and after one step (float64, eval mode, 1e-10). Plus gradients
(the window's inputs get exactly the gradients of the full pass, nothing reaches the prefix), the
module's own cache left alone, row selection, and the errors.
"""

import pytest
import torch

from lightning_memo.nn import SequenceMemory, make_memory
from lightning_memo.nn.base import StateCache
from lightning_memo.nn.memoryless import MemorylessConfig
from tests.nn.test_registry import SEG, TINY, VARIANTS, build, inputs

PAST_VARIANTS = {
    **{name: spec for name, spec in VARIANTS.items() if spec[1].get("inter_episode_attention", True)},
    "memo-cap-rebase": ("memo", {**TINY, **SEG, "max_memory_tokens": 4}),
    "memo-cap-grow": ("memo", {**TINY, **SEG, "max_memory_tokens": 4, "position_policy": "grow"}),
    "ac-1": ("ac", {**TINY, **SEG, "tbptt_segments": 1}),
    "fct-window-sink": ("fct", {**TINY, "window": 5, "sink_kv": True, "evict_block": 2}),
    "fct-relic": ("fct", {**TINY, "position_recipe": "relic", "max_episode_len": 16}),
}
NO_IEA = [name for name, spec in VARIANTS.items() if not spec[1].get("inter_episode_attention", True)]
B, T = 3, 23
STARTS = [1, 4, 6, 8, 13, 22]  # one step; a segment boundary (segment_len 4) or mid-segment; the window 1 step
TOL = 1e-10


def one_trial(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [B,T,8]`` with one trial per row (as in a PPO history) and random inner-episode starts."""
    x, is_init, episode_start = inputs(B, T, seed=seed)
    is_init[:, 1:] = False
    return x, is_init, episode_start


def build_past(variant: str, seed: int = 0) -> SequenceMemory:
    torch.manual_seed(seed)
    name, kwargs = PAST_VARIANTS[variant]
    return make_memory(name, **kwargs).double().eval()


@pytest.mark.parametrize("variant", list(PAST_VARIANTS))
def test_sequence_from_a_cached_prefix_equals_one_pass(variant):
    memory = build_past(variant)
    x, is_init, episode_start = one_trial()
    with torch.no_grad():
        full = memory.forward_sequence(x, is_init, episode_start=episode_start)
        for s in STARTS:
            past = memory.encode_prefix(x[:, :s], is_init[:, :s], episode_start[:, :s])
            got = memory.forward_sequence(x[:, s:], episode_start=episode_start[:, s:], past=past)
            assert (got - full[:, s:]).abs().max() < TOL, f"continued at s={s}"


@pytest.mark.parametrize("variant", ["memo", "memo-cap-grow", "rmt", "fct-relic-sink", "fct-window-grow", "gru"])
def test_sequence_from_a_past_continues_in_pieces(variant):
    """A past built by stepping, continued twice: the first window ends mid-segment, the second goes on."""
    memory = build_past(variant)
    x, is_init, episode_start = one_trial(seed=3)
    with torch.no_grad():
        full = memory.forward_sequence(x, is_init, episode_start=episode_start)
        cache = memory.new_cache(B)
        for t in range(6):
            memory.step(x[:, t], is_init[:, t], episode_start[:, t], cache=cache)
        got = memory.forward_sequence(x[:, 6:], episode_start=episode_start[:, 6:], past=cache)
        assert (got - full[:, 6:]).abs().max() < TOL
        past = memory.encode_prefix(x[:, :17], is_init[:, :17], episode_start[:, :17])
        got = memory.forward_sequence(x[:, 17:], episode_start=episode_start[:, 17:], past=past.select(torch.arange(B)))
        assert (got - full[:, 17:]).abs().max() < TOL


@pytest.mark.parametrize("variant", ["memo", "ac", "rmt", "fct", "fct-relic-sink", "gru", "lstm", "none"])
def test_gradients_reach_the_window_and_the_weights_not_the_prefix(variant):
    memory = build_past(variant)
    x, is_init, episode_start = one_trial(seed=4)
    s = 6
    weights = torch.randn(B, T - s, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    prefix, window = x[:, :s].clone().requires_grad_(True), x[:, s:].clone().requires_grad_(True)
    past = memory.encode_prefix(prefix, is_init[:, :s], episode_start[:, :s])
    held = past.states if isinstance(past, StateCache) else (past.kv,)
    assert not any(t.requires_grad for t in held)  # the past is detached
    out = memory.forward_sequence(window, episode_start=episode_start[:, s:], past=past)
    (out * weights).sum().backward()
    assert prefix.grad is None  # nothing reaches the prefix inputs
    for name, p in memory.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name  # every weight learns from the window
    # the window's inputs get exactly their gradient of one pass (the prefix does not depend on them)
    whole = x.clone().requires_grad_(True)
    full = memory.forward_sequence(whole, is_init, episode_start=episode_start)
    (full[:, s:] * weights).sum().backward()
    assert (window.grad - whole.grad[:, s:]).abs().max() < TOL
    assert whole.grad[:, :s].abs().sum() > 0 or variant == "none"  # ... which one pass also sends to the prefix


@pytest.mark.parametrize("variant", ["memo", "fct-window-rebase", "gru"])
def test_encode_prefix_leaves_the_module_cache_alone(variant):
    memory = build_past(variant)
    x, is_init, episode_start = one_trial(seed=6)
    with torch.no_grad():
        expected = memory.forward_sequence(x, is_init, episode_start=episode_start)
        memory.reset_cache(B)
        got = [memory.step(x[:, t], is_init[:, t], episode_start[:, t]) for t in range(7)]
        tokens = memory.memory_tokens()
        memory.encode_prefix(x[:, :15].flip(0), is_init[:, :15], episode_start[:, :15])  # other rows, other length
        assert torch.equal(memory.memory_tokens(), tokens)
        got += [memory.step(x[:, t], is_init[:, t], episode_start[:, t]) for t in range(7, T)]
    assert (torch.stack(got, 1) - expected).abs().max() < TOL


def test_kv_cache_select_picks_rows():
    memory = build_past("memo-cap-grow")
    x, is_init, episode_start = one_trial(seed=7)
    past = memory.encode_prefix(x[:, :19], is_init[:, :19], episode_start[:, :19])  # evicted: offsets > 0
    past.lengths[1] -= 1  # make the rows distinguishable
    past.counters["segments"][2] = 9
    for rows in (torch.tensor([2, 0]), torch.tensor([False, True, True])):
        picked = past.select(rows)
        index = rows.nonzero().squeeze(1) if rows.dtype == torch.bool else rows
        assert picked.batch_size == len(index)
        assert torch.equal(picked.kv, past.kv[:, :, index])
        assert torch.equal(picked.lengths, past.lengths[index]) and torch.equal(picked.offsets, past.offsets[index])
        for name, counter in past.counters.items():
            assert torch.equal(picked.counters[name], counter[index]), name
    assert int(past.offsets[0]) > 0
    picked.kv.zero_()
    picked.lengths.zero_()
    assert past.kv.abs().sum() > 0 and int(past.lengths[1]) > 0  # a copy


def test_state_cache_select_picks_rows():
    memory = build_past("lstm")
    x, is_init, episode_start = one_trial(seed=8)
    past = memory.encode_prefix(x[:, :5], is_init[:, :5], episode_start[:, :5])
    picked = past.select(torch.tensor([2, 0]))
    assert picked.batch_size == 2 and len(picked.states) == 2
    for mine, theirs in zip(picked.states, past.states):
        assert torch.equal(mine, theirs[:, [2, 0]])
    empty = StateCache(3).select(torch.tensor([True, False, True]))  # the memoryless control's cache
    assert empty.batch_size == 2 and empty.states == ()


def test_errors_name_the_problem():
    memory = build_past("memo")
    x = one_trial(seed=9)[0]
    past = memory.encode_prefix(x[:, :6])
    with pytest.raises(ValueError, match="x with 2 rows but past holds 3"):
        memory.forward_sequence(x[:2, 6:], past=past)
    flags = torch.zeros(B, T - 6, dtype=torch.bool)
    flags[1, 4] = True
    with pytest.raises(ValueError, match="new trial cannot continue a past"):
        memory.forward_sequence(x[:, 6:], flags, past=past)
    memory.forward_sequence(x[:, 6:], torch.zeros_like(flags), past=past)  # false everywhere is fine
    past.lengths[0] -= 1
    with pytest.raises(ValueError, match="same number of tokens"):
        memory.forward_sequence(x[:, 6:], past=past)
    for variant in NO_IEA:
        no_iea = build(variant)
        with pytest.raises(ValueError, match="inter-episode attention only.*prefix_gradients=true"):
            no_iea.forward_sequence(x[:, 6:], past=no_iea.encode_prefix(x[:, :6]))
        assert "no-IEA" in no_iea.past_support()
    assert memory.past_support() is None


class _NoPast(SequenceMemory):
    """A memory without sequence mode from a past (a user's own, say)."""

    config_cls = MemorylessConfig

    def _build(self, cfg):
        self.net = torch.nn.Linear(cfg.d_model, cfg.d_model)

    def new_cache(self, batch_size):
        return StateCache(batch_size)

    def _sequence(self, x, segment_len, episode_start):
        return self.net(x)

    def _refresh(self, x, lengths, episode_start, last, cache, outputs):
        return self.net(x)


def test_a_memory_without_sequence_from_says_so():
    memory = _NoPast(d_model=8)
    x = torch.randn(2, 5, 8)
    with pytest.raises(NotImplementedError, match="_NoPast cannot continue a past.*_sequence_from"):
        memory.forward_sequence(x[:, 2:], past=memory.encode_prefix(x[:, :2]))
    assert "_NoPast" in memory.past_support()

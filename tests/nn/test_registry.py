"""``make_memory`` and the oracles every memory must pass: step == sequence, refresh, cache bytes."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode

from lightning_memo.nn import make_memory
from lightning_memo.nn import MEMORIES, SequenceMemory

TINY = dict(d_model=8, n_heads=2, n_layers=2, mlp_ratio=2.0)
SEG = dict(segment_len=4, summary_len=2)
VARIANTS = {
    "memo": ("memo", {**TINY, **SEG}),
    "memo-noiea": ("memo", {**TINY, **SEG, "inter_episode_attention": False}),
    "ac": ("ac", {**TINY, **SEG}),
    "fct": ("fct", TINY),
    "fct-relic-sink": ("fct", {**TINY, "position_recipe": "relic", "sink_kv": True, "max_episode_len": 16}),
    "fct-window-grow": ("fct", {**TINY, "window": 3, "sink_kv": True, "evict_block": 1}),
    "fct-window-block": ("fct", {**TINY, "window": 3, "evict_block": 4, "position_recipe": "relic"}),
    "fct-window-rebase": ("fct", {**TINY, "window": 5, "position_policy": "rebase", "evict_block": 3}),
    "fct-relic-noiea": ("fct", {**TINY, "position_recipe": "relic", "inter_episode_attention": False}),
    "rmt": ("rmt", {**TINY, **SEG}),
    "rmt-noiea": ("rmt", {**TINY, **SEG, "inter_episode_attention": False}),
    "gru": ("gru", {"d_model": 8}),
    "lstm": ("lstm", {"d_model": 8, "n_layers": 2}),
    "none": ("none", {"d_model": 8}),
}
TOL = 1e-10


def build(variant: str, seed: int = 0) -> SequenceMemory:
    torch.manual_seed(seed)
    name, kwargs = VARIANTS[variant]
    return make_memory(name, **kwargs).double().eval()


def inputs(B: int, T: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``x [B,T,8]``, trial starts at different phases per row, inner-episode starts."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 8, generator=g, dtype=torch.float64)
    is_init = torch.zeros(B, T, dtype=torch.bool)
    is_init[:, 0] = True
    for b in range(1, B):  # row b restarts its trial at t = 2b+1 (and every 9 steps after)
        is_init[b, 2 * b + 1 :: 9] = True
    episode_start = torch.rand(B, T, generator=g) < 0.25
    return x, is_init, episode_start


def run_steps(memory: SequenceMemory, x, is_init, episode_start, t0: int = 0) -> torch.Tensor:
    return torch.stack([memory.step(x[:, t], is_init[:, t], episode_start[:, t]) for t in range(t0, x.shape[1])], 1)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("B,T", [(1, 1), (1, 8), (3, 11), (2, 14)])
def test_step_matches_sequence(variant, B, T):
    memory = build(variant)
    x, is_init, episode_start = inputs(B, T)
    with torch.no_grad():
        expected = memory.forward_sequence(x, is_init, episode_start=episode_start)
        memory.reset_cache(B)
        got = run_steps(memory, x, is_init, episode_start)
    assert (got - expected).abs().max() < TOL


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_refresh_then_step_matches_sequence(variant):
    memory = build(variant)
    x, is_init, episode_start = inputs(3, 14, seed=2)
    for t0 in (1, 4, 7, 8, 13):
        with torch.no_grad():  # new weights: refresh must rebuild everything under them
            for p in memory.parameters():
                p.add_(0.05 * torch.randn_like(p))
            expected = memory.forward_sequence(x, is_init, episode_start=episode_start)
            memory.refresh(x[:, :t0], is_init[:, :t0], episode_start[:, :t0])
            got = run_steps(memory, x, is_init, episode_start, t0)
        assert (got - expected[:, t0:]).abs().max() < TOL, f"refresh at t0={t0}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_refresh_returns_eval_sequence_outputs(variant):
    memory = build(variant)
    x, is_init, episode_start = inputs(3, 14, seed=3)
    with torch.no_grad():
        expected = memory.forward_sequence(x, is_init, episode_start=episode_start)
        memory.train()  # refresh runs the eval semantics whatever the mode
        for t0 in (1, 5, 8, 14):
            got = memory.refresh(x[:, :t0], is_init[:, :t0], episode_start[:, :t0])
            assert got.shape == (3, t0, 8)
            assert (got - expected[:, :t0]).abs().max() < TOL, f"refresh at t0={t0}"
        empty = memory.refresh(x[:, :0])
    assert empty.shape == (3, 0, 8) and memory.cache_batch_size() == 3


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_caller_cache_does_not_disturb_the_module_cache(variant):
    memory = build(variant)
    x, is_init, episode_start = inputs(2, 14)
    other, other_init, other_start = inputs(3, 14, seed=5)
    with torch.no_grad():
        memory.reset_cache(2)
        alone = run_steps(memory, x, is_init, episode_start)
        memory.reset_cache(2)
        cache = memory.new_cache(3)
        interleaved, side = [], []
        for t in range(14):
            interleaved.append(memory.step(x[:, t], is_init[:, t], episode_start[:, t]))
            side.append(memory.step(other[:, t], other_init[:, t], other_start[:, t], cache=cache))
        memory.reset_cache(3)
        own = run_steps(memory, other, other_init, other_start)
    assert torch.equal(torch.stack(interleaved, 1), alone)
    assert torch.equal(torch.stack(side, 1), own)  # the caller's cache steps as the module's own would
    with pytest.raises(ValueError, match="new_cache"):
        memory.step(x[:, 0], cache=cache)  # 2 rows against a cache of 3


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cache_state_round_trip(variant):
    memory = build(variant)
    x, is_init, episode_start = inputs(2, 14)
    with torch.no_grad():
        memory.reset_cache(2)
        run_steps(memory, x[:, :6], is_init[:, :6], episode_start[:, :6])
        state = memory.cache_state()
        first = run_steps(memory, x, is_init, episode_start, 6)
        for _ in range(2):  # loading keeps a copy: the state itself is never stepped
            memory.load_cache_state(state)
            assert torch.equal(run_steps(memory, x, is_init, episode_start, 6), first)
    assert memory.cache_allocated_nbytes() >= memory.cache_nbytes()


def expected_tokens(variant: str, t: int) -> int:
    """Tokens (state vectors for GRU/LSTM) held per row after t steps of one trial."""
    name, kw = VARIANTS[variant]
    if name in ("memo", "ac"):
        return kw["summary_len"] * (t // kw["segment_len"]) + t % kw["segment_len"]
    if name == "rmt":
        return (kw["summary_len"] if t >= kw["segment_len"] else 0) + t % kw["segment_len"]
    if name == "fct":
        window = kw.get("window")
        return t if window is None or t < window else window + (t - window) % kw["evict_block"]
    if name == "none":
        return 0
    return kw.get("n_layers", 1) * (2 if name == "lstm" else 1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cache_bytes_follow_formula(variant):
    memory = build(variant)
    x, _, _ = inputs(2, 15)
    no_flags = torch.zeros(2, 15, dtype=torch.bool)
    memory.reset_cache(2)
    d, elt = 8, x.element_size()
    name, kw = VARIANTS[variant]
    per_token = d * elt if name in ("gru", "lstm", "none") else 2 * kw["n_layers"] * d * elt  # K and V per layer
    with torch.no_grad():
        for t in range(1, 16):
            memory.step(x[:, t - 1], no_flags[:, t - 1], no_flags[:, t - 1])
            tokens = expected_tokens(variant, t)
            assert memory.memory_tokens().tolist() == [tokens, tokens], f"t={t}"
            assert memory.cache_nbytes() == 2 * tokens * per_token, f"t={t}"


@pytest.mark.parametrize("variant", [v for v, (name, _) in VARIANTS.items() if name not in ("gru", "lstm", "none")])
def test_autocast_caches_hold_the_autocast_dtype(variant):
    """Under bfloat16 autocast (``trainer.precision=bf16-mixed``) the keys/values a cache holds are bfloat16,
    half the bytes of float32, stepped and refreshed (float32 keys would be cast down by attention on
    every read), and the steps stay near the float32 ones."""
    torch.manual_seed(0)
    name, kwargs = VARIANTS[variant]
    memory = make_memory(name, **kwargs).eval()
    x, is_init, episode_start = inputs(2, 14)
    x = x.float()
    bytes_of = {}
    with torch.no_grad():
        for precision in ("32", "bf16"):
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
            with autocast:
                memory.reset_cache(2)
                out = run_steps(memory, x, is_init, episode_start).float()
                stepped = memory.cache_nbytes()
                memory.refresh(x, is_init, episode_start)
            bytes_of[precision] = (stepped, memory.cache_nbytes(), out)
    assert bytes_of["32"][0] > 0 and bytes_of["bf16"][0] * 2 == bytes_of["32"][0]
    assert bytes_of["bf16"][1] * 2 == bytes_of["32"][1]
    assert (bytes_of["bf16"][2] - bytes_of["32"][2]).abs().max() < 0.03  # 0.004-0.0075 seen


@pytest.mark.parametrize("variant", ["gru", "lstm"])
def test_recurrent_memories_run_in_float32_under_autocast(variant):
    """Under bfloat16 autocast an encoder hands a recurrent memory bfloat16 inputs: it runs its RNN in
    float32 (a float32 state; no dtype clash), stepped, refreshed and in sequence mode, as without autocast."""
    torch.manual_seed(0)
    name, kwargs = VARIANTS[variant]
    memory = make_memory(name, **kwargs).eval()
    x = inputs(2, 9)[0].bfloat16()
    with torch.no_grad():
        expected = memory.forward_sequence(x.float())
        memory.reset_cache(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stepped = torch.stack([memory.step(x[:, t]) for t in range(9)], 1)
            assert all(s.dtype == torch.float32 for s in memory.cache_state().states)
            memory.refresh(x)
            sequence = memory.forward_sequence(x)
    assert (stepped - expected).abs().max() < 1e-5 and (sequence - expected).abs().max() < 1e-5


def test_memo_allocates_within_ten_percent_of_what_it_holds():
    memory = build("memo")
    seg = VARIANTS["memo"][1]["segment_len"]
    x, _, _ = inputs(2, 12 * seg)
    memory.reset_cache(2)
    with torch.no_grad():
        for t in range(x.shape[1]):
            memory.step(x[:, t])
            if t + 1 >= seg:
                assert memory.cache_allocated_nbytes() <= 1.1 * memory.cache_nbytes(), f"t={t + 1}"
        for t in (seg, 3 * seg + 1, 7 * seg + 3):
            memory.refresh(x[:, :t])
            assert memory.cache_allocated_nbytes() <= 1.1 * memory.cache_nbytes(), f"refresh t={t}"


@pytest.mark.parametrize(
    "variant, bound",
    [
        ("rmt", lambda kw: kw["segment_len"] + 2 * kw["summary_len"]),
        ("memo-stream", lambda kw: kw["max_memory_tokens"] + kw["segment_len"] + kw["summary_len"]),
        ("fct-window-block", lambda kw: kw["window"] + kw["evict_block"] - 1),
    ],
)
def test_streaming_caches_reserve_their_bound_once(variant, bound):
    name, kwargs = (VARIANTS | {"memo-stream": ("memo", {**TINY, **SEG, "max_memory_tokens": 4})})[variant]
    torch.manual_seed(0)
    memory = make_memory(name, **kwargs).double().eval()
    x, _, _ = inputs(2, 40)
    per_slot = 2 * 2 * kwargs["n_layers"] * 8 * 8  # 2 rows, K and V per layer, width 8, float64
    memory.reset_cache(2)
    with torch.no_grad():
        for t in range(40):
            memory.step(x[:, t])
            assert memory.cache_allocated_nbytes() == bound(kwargs) * per_slot, f"t={t + 1}"


@pytest.mark.parametrize("variant", ["memo", "fct-relic-sink", "rmt", "gru"])
def test_tensordict_face(variant):
    memory = build(variant)
    x, is_init, episode_start = inputs(2, 9)
    td = TensorDict({"embed": x, "is_init": is_init[..., None], "episode_start": episode_start[..., None]}, [2, 9])
    with torch.no_grad():
        with set_recurrent_mode(True):
            seq = memory(td.clone())["memory"]
        memory.reset_cache(2)
        steps = torch.stack([memory(td[:, t].clone())["memory"] for t in range(9)], 1)
    assert (seq - memory.forward_sequence(x, is_init, episode_start=episode_start)).abs().max() < TOL
    assert (steps - seq).abs().max() < TOL


def test_names_and_defaults():
    assert set(MEMORIES) == {"memo", "fct", "rmt", "ac", "gru", "lstm", "none"}
    assert make_memory("ac", **TINY).config.tbptt_segments == 2
    assert make_memory("ac", **TINY, tbptt_segments=3).config.tbptt_segments == 3
    assert make_memory("memo", **TINY).config.tbptt_segments is None
    cfg = MEMORIES["rmt"].config_cls(**TINY, summary_len=8)
    assert make_memory("rmt", cfg).config.summary_len == 8
    assert make_memory("fct", {"d_model": 16, "n_heads": 4}).config.n_heads == 4  # a mapping (e.g. omegaconf)


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown memory 'transformer'.*'fct'.*'memo'"):
        make_memory("transformer")
    with pytest.raises(TypeError, match=r"\['segment_len'\].*valid names: \['d_model', 'inter_episode_attention', 'n_layers'\]"):
        make_memory("gru", d_model=8, segment_len=4)
    with pytest.raises(TypeError, match=r"\['max_memory_tokens'\].*valid names"):
        make_memory("rmt", max_memory_tokens=64)
    with pytest.raises(TypeError, match=r"\['summary_len'\].*valid names"):
        make_memory("fct", summary_len=32)
    with pytest.raises(ValueError, match="position_recipe must be one of"):
        make_memory("fct", position_recipe="alibi")
    with pytest.raises(ValueError, match="needs tbptt_segments"):
        make_memory("ac", tbptt_segments=None)
    with pytest.raises(ValueError, match="n_layers must be a positive integer"):
        make_memory("lstm", n_layers=0)
    with pytest.raises(ValueError, match="segment_len applies to segment memories"):
        make_memory("gru", d_model=8).forward_sequence(torch.randn(1, 3, 8), segment_len=2)


def test_memoryless_control_sees_only_its_own_step():
    memory = build("none")
    x, _, _ = inputs(2, 6)
    perturbed = x.clone()
    perturbed[:, :5] += 1.0  # every step but the last
    with torch.no_grad():
        out, out_perturbed = memory.forward_sequence(x), memory.forward_sequence(perturbed)
    assert (out[:, 5] - out_perturbed[:, 5]).abs().max() == 0.0
    assert (out[:, :5] - out_perturbed[:, :5]).abs().max() > 1e-3

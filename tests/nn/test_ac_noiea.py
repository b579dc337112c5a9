"""AC (truncated BPTT) and no-IEA (reset at inner-episode starts), both built through make_memory."""

import pytest
import torch

from lightning_memo.nn import make_memory

TINY = dict(d_model=8, n_heads=2, n_layers=2, mlp_ratio=2.0)
SEG = dict(segment_len=4, summary_len=2)


def pair(seed: int = 0):
    torch.manual_seed(seed)
    memo = make_memory("memo", **TINY, **SEG).double()
    ac = make_memory("ac", **TINY, **SEG).double()  # tbptt_segments=2
    ac.load_state_dict(memo.state_dict())
    return memo, ac


def test_ac_forward_equals_memo_forward():
    memo, ac = pair()
    x = torch.randn(3, 23, 8, dtype=torch.float64)
    assert torch.equal(memo.forward_sequence(x, segment_len=4), ac.forward_sequence(x, segment_len=4))
    memo.eval(), ac.eval()
    memo.reset_cache(3), ac.reset_cache(3)
    assert torch.equal(memo.step(x[:, 0]), ac.step(x[:, 0]))


def chunk_gradients(memory, x, L):
    """``g[i, j]``: total |d outputs of chunk i / d inputs of chunk j|."""
    n = x.shape[1] // L
    g = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        x_ = x.clone().requires_grad_(True)
        memory.forward_sequence(x_, segment_len=L)[:, i * L : (i + 1) * L].sum().backward()
        g[i] = x_.grad.abs().reshape(x.shape[0], n, L, -1).sum(dim=(0, 2, 3))
    return g


def test_ac_cuts_gradients_beyond_k_segments_memo_does_not():
    memo, ac = pair()
    L, k = 4, ac.config.tbptt_segments
    x = torch.randn(2, 6 * L, 8, dtype=torch.float64)
    g_memo, g_ac = chunk_gradients(memo, x, L), chunk_gradients(ac, x, L)
    for i in range(6):
        for j in range(i):  # earlier chunks only (causal: later ones are zero for both)
            assert g_memo[i, j] > 0, (i, j)
            if j // k < i // k:  # j lies in an earlier k-block than i
                assert g_ac[i, j] == 0, (i, j)
            else:
                assert g_ac[i, j] > 0, (i, j)


NOIEA = {
    "memo": {**TINY, **SEG},
    "fct": TINY,
    "fct-relic": {**TINY, "position_recipe": "relic", "sink_kv": True},
    "rmt": {**TINY, **SEG},
    "gru": {"d_model": 8},
}


@pytest.mark.parametrize("variant", list(NOIEA))
def test_no_iea_forgets_everything_before_an_episode_start(variant):
    name = variant.split("-")[0]
    torch.manual_seed(0)
    memory = make_memory(name, **NOIEA[variant], inter_episode_attention=False).double().eval()
    with_iea = make_memory(name, **NOIEA[variant]).double().eval()
    with_iea.load_state_dict(memory.state_dict())
    x = torch.randn(2, 15, 8, dtype=torch.float64)
    episode_start = torch.zeros(2, 15, dtype=torch.bool)
    episode_start[:, 9] = True
    perturbed = x.clone()
    perturbed[:, :9] += torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        for m, depends in ((memory, False), (with_iea, True)):
            a = m.forward_sequence(x, episode_start=episode_start)[:, 9:]
            b = m.forward_sequence(perturbed, episode_start=episode_start)[:, 9:]
            assert ((a - b).abs().max() > 1e-6) == depends
            if not depends:
                assert (a - b).abs().max() < 1e-12
                m.reset_cache(2)  # step mode forgets too
                for t in range(15):
                    out = m.step(perturbed[:, t], episode_start=episode_start[:, t])
                assert (out - a[:, -1]).abs().max() < 1e-10

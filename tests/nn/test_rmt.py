"""RMT specifics: training and acting agree, memory is replaced (bounded), BPTT through the recurrence."""

import torch

from lightning_memo.nn.rmt import RMTMemory
from tests.nn.spy import record_segment_lens

KW = dict(d_model=8, n_heads=2, n_layers=2, mlp_ratio=2.0, segment_len=4, summary_len=3)


class ReferenceStyleRMT(RMTMemory):
    """The reference's acting path: the new memory is encoded with the *old* memory as KV prefix."""

    def _write_summary_rows(self, cache, rows, summary):
        cfg, tf = self.config, self.transformer
        old = cache.counters["memory"][rows]
        cache.lengths[rows] = old  # the old memory stays visible while the new one is encoded ...
        tf(summary, cache.positions(cfg.summary_len, rows), cache.source(cfg.summary_len, rows), kv_only=True)
        cache.advance(cfg.summary_len, rows)
        cache.evict_front(rows, old, rebase=True, rope_base=cfg.rope_base)  # ... then it is replaced
        cache.counters["memory"][rows] = cfg.summary_len


def act(memory, x):
    memory.reset_cache(x.shape[0])
    return torch.stack([memory.step(x[:, t]) for t in range(x.shape[1])], 1)


def test_training_and_acting_compute_the_same_function():
    torch.manual_seed(0)
    ours = RMTMemory(**KW).double().eval()
    reference = ReferenceStyleRMT(**KW).double().eval()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4 * 3 + 2, 8, dtype=torch.float64)
    with torch.no_grad():
        train = ours.forward_sequence(x)
        assert (act(ours, x) - train).abs().max() < 1e-10
        mismatch = (act(reference, x) - train).abs().amax(dim=(0, 2))
    assert mismatch[:8].max() < 1e-10  # first two segments: no memory re-encoding yet
    assert mismatch[8:].min() > 1e-6  # from the third segment the reference's acting path drifts


def test_memory_is_replaced_and_bounded():
    torch.manual_seed(0)
    memory = RMTMemory(**KW).double().eval()
    x = torch.randn(2, 30, 8, dtype=torch.float64)
    memory.reset_cache(2)
    held = []
    with torch.no_grad():
        for t in range(30):
            memory.step(x[:, t])
            held.append(int(memory.memory_tokens()[0]))
    assert held[:4] == [1, 2, 3, 3]  # the 4th step closes the segment: memory of 3 tokens
    assert held[4:8] == [4, 5, 6, 3]
    assert max(held) == KW["summary_len"] + KW["segment_len"] - 1


def test_gradients_flow_through_the_recurrence():
    torch.manual_seed(0)
    memory = RMTMemory(**KW).double().eval()
    x = torch.randn(1, 14, 8, dtype=torch.float64, requires_grad=True)
    memory.forward_sequence(x)[:, 12:].sum().backward()
    per_step = x.grad.abs().sum(-1)[0]
    assert (per_step[:4] > 0).all()  # three segments back, only through the memory


def test_segment_length_randomised_in_training_only():
    torch.manual_seed(0)
    memory = RMTMemory(**{**KW, "segment_len": 10}).double()
    x = torch.randn(1, 25, 8, dtype=torch.float64)
    used = record_segment_lens(memory)
    for _ in range(30):
        memory.forward_sequence(x)
    drawn = set(used)
    assert min(drawn) >= 8 and max(drawn) <= 12 and len(drawn) > 1
    memory.eval()
    memory.forward_sequence(x)
    assert used[-1] == 10

"""GRU/LSTM baselines: TorchRL modules behind the SequenceMemory interface (parity in test_registry.py)."""

import pytest
import torch
from torchrl.modules import GRUModule, LSTMModule

from lightning_memo.nn import make_memory


@pytest.mark.parametrize("name, module_cls, states", [("gru", GRUModule, 1), ("lstm", LSTMModule, 2)])
def test_built_on_torchrl_modules(name, module_cls, states):
    memory = make_memory(name, d_model=12, n_layers=3)
    assert isinstance(memory.module, module_cls)
    assert memory.rnn.input_size == memory.rnn.hidden_size == 12 and memory.rnn.num_layers == 3
    memory.reset_cache(5)
    assert memory.cache_nbytes() == states * 3 * 5 * 12 * 4
    assert memory.memory_tokens().tolist() == [states * 3] * 5


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_mid_row_trial_start_resets_state(name):
    torch.manual_seed(0)
    memory = make_memory(name, d_model=8, n_layers=2).double()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    is_init = torch.zeros(2, 10, dtype=torch.bool)
    is_init[0, 6] = True
    out = memory.forward_sequence(x, is_init)
    fresh = memory.forward_sequence(x[:1, 6:])
    assert (out[:1, 6:] - fresh).abs().max() < 1e-12
    assert (out[1:, 6:] - fresh).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_gradients_through_time(name):
    torch.manual_seed(0)
    memory = make_memory(name, d_model=8).double()
    x = torch.randn(1, 20, 8, dtype=torch.float64, requires_grad=True)
    memory.forward_sequence(x)[:, -1].sum().backward()
    assert x.grad[0, 0].abs().sum() > 0

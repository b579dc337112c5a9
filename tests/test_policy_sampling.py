"""The acting fast path samples exactly what ``torch.distributions.Categorical`` samples."""

import pytest
import torch
from torch.distributions import Categorical

from lightning_memo.policy import categorical_action


@pytest.mark.parametrize("num_actions", [2, 5, 17])
def test_categorical_action_is_categorical_bit_for_bit(num_actions):
    for seed in range(50):
        logits = torch.randn(8, num_actions, generator=torch.Generator().manual_seed(seed)) * (seed % 6)
        logits[0, 0] = -1e9  # a (nearly) masked action
        torch.manual_seed(seed)
        dist = Categorical(logits=logits)
        expected = dist.sample()
        torch.manual_seed(seed)
        action, log_prob = categorical_action(logits)
        assert torch.equal(action, expected)
        assert torch.equal(log_prob, dist.log_prob(expected))
        after = torch.randn(3)  # the same RNG draws: the stream goes on alike
        torch.manual_seed(seed)
        dist.sample()
        assert torch.equal(after, torch.randn(3))

        mode, mode_log_prob = categorical_action(logits, deterministic=True)
        assert torch.equal(mode, logits.argmax(-1)) and torch.equal(mode_log_prob, dist.log_prob(mode))

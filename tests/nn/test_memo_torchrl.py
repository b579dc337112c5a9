"""MemoMemory's TensorDict face: TensorDictSequential, recurrent mode, a real TorchRL Collector."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.modules import set_recurrent_mode

from lightning_memo.nn import MemoMemory

D = 16


def make_stack(obs_dim: int):
    torch.manual_seed(0)
    memo = MemoMemory(d_model=D, n_layers=2, n_heads=2, segment_len=4, summary_len=2).eval()
    encoder = TensorDictModule(nn.Linear(obs_dim, D), in_keys=["observation"], out_keys=["embed"])
    return memo, TensorDictSequential(encoder, memo)


def test_recurrent_mode_sequence_equals_steps_through_tensordicts():
    memo, stack = make_stack(obs_dim=3)
    B, T = 2, 11
    obs = torch.randn(B, T, 3)
    is_init = torch.zeros(B, T, 1, dtype=torch.bool)
    is_init[:, 0] = True
    is_init[1, 6] = True
    with set_recurrent_mode(True):
        seq = stack(TensorDict({"observation": obs, "is_init": is_init}, batch_size=[B, T]))["memory"]
    steps = [
        stack(TensorDict({"observation": obs[:, t], "is_init": is_init[:, t]}, batch_size=[B]))["memory"]
        for t in range(T)
    ]
    torch.testing.assert_close(torch.stack(steps, 1), seq, atol=1e-5, rtol=1e-5)
    assert stack.in_keys == ["observation", "is_init"] and "memory" in stack.out_keys


def test_custom_keys_and_wrong_rank_error():
    memo = MemoMemory(d_model=D, n_heads=2, segment_len=4, summary_len=2, in_keys=["h", "first"], out_keys=["z"])
    td = TensorDict({"h": torch.randn(3, D), "first": torch.ones(3, 1, dtype=torch.bool)}, batch_size=[3])
    assert memo(td)["z"].shape == (3, D)
    with pytest.raises(ValueError, match="set_recurrent_mode"):
        memo(TensorDict({"h": torch.randn(3, 5, D)}, batch_size=[3]))
    with pytest.raises(ValueError, match="in_keys"):
        MemoMemory(d_model=D, n_heads=2, in_keys=["only_one"])


def test_inside_a_torchrl_collector_with_a_real_env():
    from torchrl.collectors import Collector
    from torchrl.envs import Compose, GymEnv, InitTracker, StepCounter, TransformedEnv

    env = TransformedEnv(GymEnv("CartPole-v1", categorical_action_encoding=True), Compose(InitTracker(), StepCounter()))
    env.set_seed(0)
    memo, stack = make_stack(obs_dim=4)
    head = TensorDictModule(nn.Linear(D, 2), in_keys=["memory"], out_keys=["logits"])
    act = TensorDictModule(lambda logits: logits.argmax(-1), in_keys=["logits"], out_keys=["action"])
    policy = TensorDictSequential(stack, head, act)
    collector = Collector(env, policy, frames_per_batch=120, total_frames=120)
    batch = next(iter(collector))
    collector.shutdown()
    assert batch.shape == (120,)
    is_init = batch["is_init"].squeeze(-1)
    assert is_init[0] and is_init[1:].any()  # several CartPole episodes, each a trial
    # what the memory produced while acting equals sequence mode over the collected trajectory
    with torch.no_grad():
        replay = memo.forward_sequence(batch["embed"][None], is_init[None])[0]
    torch.testing.assert_close(batch["memory"], replay, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 0, D), (0, 5, D)])
def test_forward_sequence_on_empty_input_names_the_shape(shape):
    memo = MemoMemory(d_model=D, n_heads=2, segment_len=4, summary_len=2)
    with pytest.raises(ValueError, match=r"at least one row and one step"):
        memo.forward_sequence(torch.randn(*shape))

"""MemoPolicy: spec checks, step/sequence agreement, custom encoders, the TorchRL face."""

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Bounded
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from lightning_memo.nn.registry import make_memory
from lightning_memo.policy import MemoPolicy
from tests.scripts.tiny import TRIAL_FEATURE_KEYS, env_factory, tiny_policy

KEYS = ["observation", *TRIAL_FEATURE_KEYS]


def _rollout(policy, env, steps):
    policy.reset(env.batch_size[0])
    return env.rollout(steps, policy.act, auto_reset=True, break_when_any_done=False, trust_policy=True)


@pytest.mark.parametrize("memory", ["memo", "gru"])
def test_step_mode_matches_sequence_mode(memory):
    env = env_factory(num_envs=3)(0)
    policy = tiny_policy(env, memory).eval()
    td = _rollout(policy, env, 20)  # 20 steps: two full Memo segments of 8 plus 4
    logits, values = policy.evaluate(td)
    torch.testing.assert_close(logits, td["logits"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(values, td["state_value"], atol=1e-5, rtol=1e-4)
    assert td["action"].shape == (3, 20) and td["action_log_prob"].shape == (3, 20)


def test_from_env_reads_specs_and_rejects_mismatches():
    env = env_factory()(0)
    policy = tiny_policy(env)
    assert policy.num_actions == 5 and policy.observation_keys == KEYS
    with pytest.raises(ValueError, match="not in the env's observation spec"):
        MemoPolicy.from_env(env, make_memory("gru", d_model=16), observation_keys=["pixels"])
    env.action_spec = Bounded(-1.0, 1.0, shape=(*env.batch_size, 2))
    with pytest.raises(ValueError, match="discrete actions"):
        MemoPolicy.from_env(env, make_memory("gru", d_model=16))
    with pytest.raises(TypeError, match="SequenceMemory"):
        MemoPolicy(nn.GRU(4, 4), 5, ["observation"], [(4,)])
    with pytest.raises(ValueError, match="obs_shapes"):
        MemoPolicy(make_memory("gru", d_model=16), 5, ["observation"])


def test_custom_encoders():
    env = env_factory(num_envs=2)(0)
    obs_dim = env.observation_spec["observation"].shape[-1]
    plain = MemoPolicy(make_memory("gru", d_model=16), 5, ["observation"], encoder=nn.Linear(obs_dim, 16))
    td = _rollout(plain, env, 5)
    assert td["logits"].shape == (2, 5, 5)
    td_encoder = TensorDictModule(nn.Linear(obs_dim, 16), in_keys=["observation"], out_keys=["embed"])
    policy = MemoPolicy(make_memory("gru", d_model=16), 5, ["observation"], encoder=td_encoder)
    td = _rollout(policy, env, 5)
    logits, _ = policy.eval().evaluate(td)
    torch.testing.assert_close(logits, td["logits"], atol=1e-5, rtol=1e-4)


def test_torchrl_modules_with_collector_gae_and_clip_ppo_loss():
    env = env_factory(num_envs=2)(0)
    policy = tiny_policy(env)
    actor_value, actor, critic = policy.torchrl_modules()
    assert sum(p.numel() for p in actor_value.parameters()) == sum(p.numel() for p in policy.parameters())
    policy.reset(2)
    collector = Collector(env, actor_value, frames_per_batch=2 * 16, total_frames=2 * 16)
    batch = next(iter(collector))
    collector.shutdown()
    assert batch.shape == (2, 16) and "action_log_prob" in batch.keys() and "state_value" in batch.keys()
    with set_recurrent_mode(True):  # sequence mode over the collected [N, T] batch
        GAE(gamma=0.99, lmbda=0.95, value_network=critic, shifted=True)(batch)
        loss_module = ClipPPOLoss(actor, critic)
        losses = loss_module(batch)
    total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
    total.backward()
    assert torch.isfinite(total)
    assert policy.memory.transformer.blocks[0].attn.qkv.weight.grad is not None

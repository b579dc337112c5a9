"""MemoPPO wiring: env/policy checks before training, counters, LR schedule, logged metrics."""

import pytest
import torch

from lightning_memo.algos.ppo import MemoPPO, check_env_policy
from lightning_memo.callbacks import TrialMetrics
from lightning_memo.envs.dark_key_to_door import DarkKeyToDoorEnv
from lightning_memo.nn.registry import make_memory
from lightning_memo.policy import MemoPolicy
from tests.scripts.tiny import env_factory, tiny_module, tiny_policy, tiny_ppo, tiny_trainer


def test_env_policy_mismatches_are_named():
    env = env_factory(num_envs=2)(0)
    policy = tiny_policy(env)
    with pytest.raises(ValueError, match="num_minibatches"):
        check_env_policy(env, policy, tiny_ppo(num_minibatches=4))
    with pytest.raises(ValueError, match="trial_len"):
        check_env_policy(env, policy, tiny_ppo(trial_len=80))
    bare = DarkKeyToDoorEnv(num_envs=2, size=4, episode_len=8, trial_len=40)
    with pytest.raises(ValueError, match="make_trial_env"):
        check_env_policy(bare, MemoPolicy.from_env(bare, make_memory("gru", d_model=8)), tiny_ppo(num_minibatches=1))
    wrong_actions = MemoPolicy(make_memory("gru", d_model=8), 3, ["observation"], [(4,)])
    with pytest.raises(ValueError, match="5 actions"):
        check_env_policy(env, wrong_actions, tiny_ppo(num_minibatches=1))


def test_one_run_counts_and_logs():
    module = tiny_module(num_trials=2, grad_accumulation=2)
    trainer = tiny_trainer([TrialMetrics()], max_epochs=2)
    trainer.fit(module)
    cfg = module.cfg
    assert module.trial_index == 2 and module.env_steps == 2 * 4 * 40
    assert trainer.global_step == 2 * cfg.optimizer_steps_per_trial == 2 * 4 * 2 * 1
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/approx_kl", "train/clip_fraction", "train/entropy", "train/lr",
                "trial/return", "trial/episode_len/0", "trial/cache_bytes_per_env", "env_steps"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert float(metrics["train/lr"]) == pytest.approx(0.0, abs=1e-9)  # cosine ends at min_lr_ratio = 0


def test_memory_state_does_not_leak_between_trials():
    module = tiny_module(num_trials=1)
    tiny_trainer().fit(module)
    module.collector.start_trial(5)
    assert int(module.policy.memory.memory_tokens().sum()) == 0

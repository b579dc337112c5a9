"""Tiny envs, policies and PPO configs shared by the training tests (seconds on 2 CPU cores)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_memo.algos.ppo import MemoPPO, PPOConfig
from lightning_memo.envs.dark_key_to_door import DarkKeyToDoorEnv
from lightning_memo.envs.transforms import TRIAL_FEATURE_KEYS, make_trial_env
from lightning_memo.nn.registry import make_memory
from lightning_memo.policy import MemoPolicy

TRIAL_LEN = 40
torch.set_num_threads(1)  # tiny models: one thread is fastest and avoids oversubscribing shared cores


def env_factory(num_envs: int = 4, trial_len: int = TRIAL_LEN):
    def make(seed: int):
        return make_trial_env(DarkKeyToDoorEnv(num_envs=num_envs, size=4, episode_len=8, trial_len=trial_len, seed=seed))

    return make


def tiny_policy(env, memory: str = "memo", **kwargs) -> MemoPolicy:
    defaults = {"memo": dict(n_layers=1, n_heads=2, segment_len=8, summary_len=2), "gru": {}}
    mem = make_memory(memory, d_model=16, **{**defaults.get(memory, {}), **kwargs})
    return MemoPolicy.from_env(env, mem, observation_keys=["observation", *TRIAL_FEATURE_KEYS], hidden=16)


def tiny_ppo(num_trials: int = 2, **overrides) -> PPOConfig:
    base = dict(trial_len=TRIAL_LEN, update_every=10, epochs=2, num_minibatches=2, num_trials=num_trials, warmup_steps=2)
    return PPOConfig(**{**base, **overrides})


def tiny_module(memory: str = "memo", num_envs: int = 4, seed: int = 0, **ppo) -> MemoPPO:
    pl.seed_everything(seed, verbose=False)
    factory = env_factory(num_envs)
    policy = tiny_policy(factory(seed), memory)
    return MemoPPO(policy, factory, tiny_ppo(**ppo), seed=seed)


def tiny_trainer(callbacks=(), max_epochs: int = 1, **kwargs) -> pl.Trainer:
    """A quiet CPU Trainer; one epoch per trial, so ``max_epochs`` should be the module's ``num_trials``."""
    opts = dict(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )
    return pl.Trainer(callbacks=list(callbacks), **{**opts, **kwargs})

"""Training algorithms as LightningModules (PPO with partial updates; losses as pure functions)."""

from lightning_memo.algos.losses import clipped_policy_loss, explained_variance, masked_mean, trial_gae, value_loss
from lightning_memo.algos.ppo import MemoPPO, PPOConfig, check_env_policy, warmup_cosine

__all__ = [
    "MemoPPO",
    "PPOConfig",
    "check_env_policy",
    "clipped_policy_loss",
    "explained_variance",
    "masked_mean",
    "trial_gae",
    "value_loss",
    "warmup_cosine",
]

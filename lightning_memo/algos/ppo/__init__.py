"""PPO with partial updates and cache refresh: the LightningModule (``module.py``) and its losses (``losses.py``)."""

from lightning_memo.algos.ppo.losses import clipped_policy_loss, explained_variance, trial_gae, value_loss
from lightning_memo.algos.ppo.module import MemoPPO, PPOConfig, check_env_policy, warmup_cosine

__all__ = [
    "MemoPPO", "PPOConfig", "check_env_policy", "clipped_policy_loss", "explained_variance", "trial_gae", "value_loss",
    "warmup_cosine",
]

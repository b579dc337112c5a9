"""Training algorithms as LightningModules over the shared trial loop (``base.TrialModule``).

``ppo/``: PPO with partial updates and cache refresh (the ReLIC recipe), its losses as pure functions.
``amago/``: the off-policy recipe (AMAGO-style): replayed trials, a multi-discount critic ensemble.
``losses.py``: the loss pieces both share.
"""

from lightning_memo.algos.amago import AmagoConfig, MemoAmago
from lightning_memo.algos.base import TrialModule
from lightning_memo.algos.losses import masked_mean
from lightning_memo.algos.ppo import (
    MemoPPO,
    PPOConfig,
    check_env_policy,
    clipped_policy_loss,
    explained_variance,
    trial_gae,
    value_loss,
    warmup_cosine,
)

__all__ = [
    "AmagoConfig", "MemoAmago", "MemoPPO", "PPOConfig", "TrialModule", "check_env_policy", "clipped_policy_loss",
    "explained_variance", "masked_mean", "trial_gae", "value_loss", "warmup_cosine",
]

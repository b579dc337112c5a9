"""lightning_memo: memory-efficient Transformer policies for RL (Memo), on TorchRL and Lightning."""

from lightning_memo.nn import MemoConfig, MemoMemory, SequenceMemory, make_memory
from lightning_memo.policy import MemoPolicy
from lightning_memo.rollout import TrialCollector
from lightning_memo.algos import AmagoConfig, MemoAmago, MemoPPO, PPOConfig, TrialModule
from lightning_memo.callbacks import (
    CacheRefresh,
    EnvStepProgressBar,
    EvaluationCallback,
    RolloutVideo,
    TrialCallback,
    TrialMetrics,
)
from lightning_memo.config import ConfigError, RunConfig, config_from_dict, load_config
from lightning_memo.train import train
# evaluate stays in lightning_memo.evaluate (not imported here): `python -m lightning_memo.evaluate` runs it
from lightning_memo import envs  # registers the gymnasium ids lightning_memo/DarkKeyToDoor-v0, ObjNavGrid-v0

__version__ = "0.1.0"

__all__ = [
    "AmagoConfig", "CacheRefresh", "ConfigError", "EnvStepProgressBar", "EvaluationCallback", "MemoAmago",
    "MemoConfig", "MemoMemory", "MemoPPO", "MemoPolicy", "PPOConfig", "RolloutVideo", "RunConfig", "SequenceMemory",
    "TrialCallback", "TrialCollector", "TrialMetrics", "TrialModule", "config_from_dict", "envs",
    "load_config", "make_memory", "train", "__version__",
]

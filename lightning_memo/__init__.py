"""lightning_memo: memory-efficient Transformer policies for RL (Memo), on TorchRL and Lightning."""

from lightning_memo.nn import MemoConfig, MemoMemory, SequenceMemory, make_memory
from lightning_memo.policy import MemoPolicy
from lightning_memo.rollout import TrialCollector
from lightning_memo.algos import MemoPPO, PPOConfig, TrialModule
from lightning_memo.callbacks import CacheRefresh, EnvStepProgressBar, RolloutVideo, TrialCallback, TrialMetrics
from lightning_memo.config import ConfigError, RunConfig, load_config
from lightning_memo.train import train
from lightning_memo import envs  # registers the gymnasium ids lightning_memo/DarkKeyToDoor-v0, ObjNavGrid-v0

__version__ = "0.1.0"

__all__ = [
    "CacheRefresh", "ConfigError", "EnvStepProgressBar", "MemoConfig", "MemoMemory", "MemoPPO", "MemoPolicy",
    "PPOConfig", "RolloutVideo", "RunConfig", "SequenceMemory", "TrialCallback", "TrialCollector", "TrialMetrics",
    "TrialModule", "envs", "load_config", "make_memory", "train", "__version__",
]

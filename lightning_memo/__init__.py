"""lightning_memo: memory-efficient Transformer policies for RL (Memo), on TorchRL and Lightning."""

from lightning_memo.nn import MemoConfig, MemoMemory, SequenceMemory, make_memory
from lightning_memo.policy import MemoPolicy
from lightning_memo.collect import TrialCollector
from lightning_memo.algos import MemoPPO, PPOConfig
from lightning_memo.callbacks import CacheRefresh, EnvStepProgressBar, RolloutVideo, TrialCallback, TrialMetrics
from lightning_memo.config import RunConfig, load_config, train
from lightning_memo import envs  # registers the gymnasium ids lightning_memo/DarkKeyToDoor-v0, ObjNavGrid-v0

__version__ = "0.1.0"

__all__ = [
    "CacheRefresh", "EnvStepProgressBar", "MemoConfig", "MemoMemory", "MemoPPO", "MemoPolicy", "PPOConfig",
    "RolloutVideo", "RunConfig", "SequenceMemory", "TrialCallback", "TrialCollector", "TrialMetrics", "envs",
    "load_config", "make_memory", "train", "__version__",
]

"""lightning_memo: memory-efficient Transformer policies for RL (Memo), on TorchRL and Lightning."""

from lightning_memo.nn import MemoConfig, MemoMemory, SequenceMemory

__version__ = "0.1.0"

__all__ = ["MemoConfig", "MemoMemory", "SequenceMemory", "__version__"]
from lightning_memo.nn import make_memory

__all__ += ["make_memory"]
from lightning_memo.policy import MemoPolicy
from lightning_memo.collect import TrialCollector
from lightning_memo.algos import MemoPPO, PPOConfig
from lightning_memo.callbacks import CacheRefresh, EnvStepProgressBar, TrialCallback, TrialMetrics
from lightning_memo.config import RunConfig, load_config, train

__all__ += ["MemoPolicy", "TrialCollector", "MemoPPO", "PPOConfig", "CacheRefresh", "EnvStepProgressBar"]
__all__ += ["TrialCallback", "TrialMetrics", "RunConfig", "load_config", "train"]

"""lightning_memo: memory-efficient Transformer policies for RL (Memo), on TorchRL and Lightning."""

from lightning_memo.nn import MemoConfig, MemoMemory, SequenceMemory

__version__ = "0.1.0"

__all__ = ["MemoConfig", "MemoMemory", "SequenceMemory", "__version__"]

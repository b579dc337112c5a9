"""Sequence memories: pure PyTorch modules with a TensorDict face; they know nothing of RL."""

from lightning_memo.nn.backbone import Transformer, TransformerConfig
from lightning_memo.nn.base import SequenceMemory
from lightning_memo.nn.memo import MemoConfig, MemoMemory

__all__ = ["MemoConfig", "MemoMemory", "SequenceMemory", "Transformer", "TransformerConfig"]

"""Sequence memories: pure PyTorch modules with a TensorDict face; they know nothing of RL."""

from lightning_memo.nn.backbone import Transformer, TransformerConfig
from lightning_memo.nn.base import SequenceMemory
from lightning_memo.nn.memo import MemoConfig, MemoMemory

__all__ = ["MemoConfig", "MemoMemory", "SequenceMemory", "Transformer", "TransformerConfig"]
from lightning_memo.nn.full_context import FCTConfig, FullContextMemory
from lightning_memo.nn.recurrent import GRUMemory, LSTMMemory, RecurrentConfig
from lightning_memo.nn.registry import MEMORIES, make_memory
from lightning_memo.nn.rmt import RMTConfig, RMTMemory

__all__ += [
    "FCTConfig", "FullContextMemory", "GRUMemory", "LSTMMemory", "MEMORIES", "RMTConfig", "RMTMemory",
    "RecurrentConfig", "make_memory",
]

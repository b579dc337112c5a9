"""Sequence memories: pure PyTorch modules with a TensorDict face; they know nothing of RL."""

from lightning_memo.nn.backbone import Transformer, TransformerConfig
from lightning_memo.nn.base import CachedMemory, SequenceMemory
from lightning_memo.nn.full_context import FCTConfig, FullContextMemory
from lightning_memo.nn.memo import MemoConfig, MemoMemory
from lightning_memo.nn.memoryless import MemorylessConfig, MemorylessMemory
from lightning_memo.nn.recurrent import GRUMemory, LSTMMemory, RecurrentConfig
from lightning_memo.nn.registry import MEMORIES, make_memory
from lightning_memo.nn.rmt import RMTConfig, RMTMemory
from lightning_memo.nn.segments import SegmentConfig, SegmentMemory

__all__ = [
    "CachedMemory", "FCTConfig", "FullContextMemory", "GRUMemory", "LSTMMemory", "MEMORIES", "MemoConfig",
    "MemoMemory", "MemorylessConfig", "MemorylessMemory", "RMTConfig", "RMTMemory", "RecurrentConfig",
    "SegmentConfig", "SegmentMemory", "SequenceMemory", "Transformer", "TransformerConfig", "make_memory",
]

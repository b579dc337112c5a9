"""Sequence memories: pure PyTorch modules with a TensorDict face; they know nothing of RL."""

from lightning_memo.nn.backbone import KVCache, Transformer, TransformerConfig
from lightning_memo.nn.base import SequenceMemory, StateCache
from lightning_memo.nn.full_context import FCTConfig, FullContextMemory
from lightning_memo.nn.memo import MemoConfig, MemoMemory, SegmentConfig
from lightning_memo.nn.memoryless import MemorylessConfig, MemorylessMemory
from lightning_memo.nn.recurrent import GRUMemory, LSTMMemory, RecurrentConfig
from lightning_memo.nn.registry import MEMORIES, make_memory
from lightning_memo.nn.rmt import RMTConfig, RMTMemory

__all__ = [
    "FCTConfig", "FullContextMemory", "GRUMemory", "KVCache", "LSTMMemory", "MEMORIES", "MemoConfig", "MemoMemory",
    "MemorylessConfig", "MemorylessMemory", "RMTConfig", "RMTMemory", "RecurrentConfig", "SegmentConfig",
    "SequenceMemory", "StateCache", "Transformer", "TransformerConfig", "make_memory",
]

"""Build any sequence memory by name: ``make_memory("memo" | "ac" | "fct" | "rmt" | "gru" | "lstm" | "none", ...)``.

Keyword names are shared across memories where they mean the same thing (``d_model``, ``n_layers``,
``segment_len``, ``summary_len``, ``position_policy``, ``inter_episode_attention``, ...); a keyword
that does not apply to the chosen memory is an error listing the ones that do.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

from lightning_memo.nn.base import SequenceMemory
from lightning_memo.nn.full_context import FullContextMemory
from lightning_memo.nn.memo import MemoMemory
from lightning_memo.nn.memoryless import MemorylessMemory
from lightning_memo.nn.recurrent import GRUMemory, LSTMMemory
from lightning_memo.nn.rmt import RMTMemory


class MemorySpec(NamedTuple):
    """A registered memory name: its class and the keyword defaults the name implies."""

    cls: type[SequenceMemory]
    """The memory class built for this name."""

    defaults: Mapping[str, Any] = {}
    """Keyword defaults that make this name differ from the class default (e.g. ``ac``: ``tbptt_segments=2``)."""

    @property
    def config_cls(self) -> type:
        return self.cls.config_cls


MEMORIES: dict[str, MemorySpec] = {
    "memo": MemorySpec(MemoMemory),
    "ac": MemorySpec(MemoMemory, {"tbptt_segments": 2}),
    "fct": MemorySpec(FullContextMemory),
    "rmt": MemorySpec(RMTMemory),
    "gru": MemorySpec(GRUMemory),
    "lstm": MemorySpec(LSTMMemory),
    "none": MemorySpec(MemorylessMemory),  # the memoryless control
}


def make_memory(
    name: str,
    config: Any = None,
    *,
    in_keys: Sequence[str] | None = None,
    out_keys: Sequence[str] | None = None,
    **kwargs: Any,
) -> SequenceMemory:
    """The memory called ``name`` built from keyword arguments (or a config object / mapping).

    ``make_memory("ac", segment_len=64)`` is Memo with ``tbptt_segments=2``; any keyword overrides
    the name's defaults.
    """
    if name not in MEMORIES:
        raise ValueError(f"unknown memory {name!r}; valid names: {sorted(MEMORIES)}.")
    spec = MEMORIES[name]
    if isinstance(config, spec.config_cls):
        if kwargs:
            raise TypeError(f"pass either config= or keyword arguments to make_memory({name!r}), not both.")
        memory = spec.cls(config, in_keys=in_keys, out_keys=out_keys)
    else:
        if config is not None:  # a mapping, e.g. an omegaconf DictConfig
            kwargs = {**dict(config), **kwargs}
        memory = spec.cls(in_keys=in_keys, out_keys=out_keys, **{**spec.defaults, **kwargs})
    if name == "ac" and memory.config.tbptt_segments is None:
        raise ValueError("make_memory('ac') needs tbptt_segments >= 1 (the AC truncation); use 'memo' for full BPTT.")
    return memory

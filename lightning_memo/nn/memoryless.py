"""The memoryless control: a per-step MLP behind the memory interface, so "no memory" is one config value.

Every output depends on its own step's input only; the cache holds nothing. Comparing a policy against
the same policy with ``make_memory("none")`` isolates what its memory is worth.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lightning_memo.nn.backbone import positive
from lightning_memo.nn.base import SequenceMemory, StateCache


@dataclass
class MemorylessConfig:
    """The memoryless control's sizes: a per-step MLP of width `d_model`."""

    d_model: int = 256
    """Input and output width. Positive."""

    mlp_ratio: float = 1.0
    """Hidden width of the per-step MLP as a multiple of `d_model`. > 0."""

    inter_episode_attention: bool = True
    """Accepted for a uniform interface; nothing is carried across steps either way."""

    def validate(self) -> None:
        positive(d_model=self.d_model)
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}.")


class MemorylessMemory(SequenceMemory):
    """``x [*, D] -> MLP(x) [*, D]`` step by step, in both modes."""

    config_cls = MemorylessConfig

    def _build(self, cfg: MemorylessConfig) -> None:
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.net = nn.Sequential(nn.Linear(cfg.d_model, hidden), nn.Tanh(), nn.Linear(hidden, cfg.d_model))

    def new_cache(self, batch_size: int) -> StateCache:
        """An empty (stateless) cache of ``batch_size`` rows."""
        positive(batch_size=batch_size)
        return StateCache(batch_size)

    def _sequence(self, x: Tensor, segment_len: int | None, episode_start: Tensor | None) -> Tensor:
        return self.net(x)

    def _sequence_from(
        self, x: Tensor, past: StateCache, segment_len: int | None, episode_start: Tensor | None
    ) -> Tensor:
        return self._sequence(x, segment_len, episode_start)  # nothing is carried over

    def _step(self, x: Tensor, cache: StateCache, episode_start: Tensor | None) -> Tensor:
        return self.net(x)

    def _refresh(
        self, x: Tensor, lengths: Tensor, episode_start: Tensor | None, last: Tensor, cache: StateCache, outputs: bool
    ) -> Tensor | None:
        return self.net(x) if outputs else None

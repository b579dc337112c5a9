"""The memoryless control: a per-step MLP behind the memory interface, so "no memory" is one config value.

Every output depends on its own step's input only; there is no cache. Comparing a policy against the
same policy with ``make_memory("none")`` isolates what its memory is worth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from lightning_memo.nn.backbone import _positive
from lightning_memo.nn.base import SequenceMemory, config_from_kwargs


@dataclass
class MemorylessConfig:
    d_model: int = 256
    mlp_ratio: float = 1.0  # hidden width = mlp_ratio * d_model

    def validate(self) -> None:
        _positive(d_model=self.d_model)
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}.")


class MemorylessMemory(SequenceMemory):
    """``x [*, D] -> MLP(x) [*, D]`` step by step, in both modes."""

    def __init__(
        self,
        config: MemorylessConfig | None = None,
        *,
        in_keys: Sequence[str] | None = None,
        out_keys: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        cfg = config_from_kwargs(MemorylessConfig, config, kwargs, type(self).__name__)
        super().__init__(cfg.d_model, in_keys=in_keys, out_keys=out_keys)
        self.config = cfg
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.net = nn.Sequential(nn.Linear(cfg.d_model, hidden), nn.Tanh(), nn.Linear(hidden, cfg.d_model))
        self._batch_size = 0

    def _sequence(self, x: Tensor, segment_len: int | None, episode_start: Tensor | None) -> Tensor:
        return self.net(x)

    def _step(self, x: Tensor, episode_start: Tensor | None) -> Tensor:
        return self.net(x)

    def _refresh(self, x: Tensor, lengths: Tensor, episode_start: Tensor | None) -> None:
        self._batch_size = x.shape[0]

    def _reset_rows(self, rows: Tensor) -> None:
        pass

    def reset_cache(self, batch_size: int) -> None:
        _positive(batch_size=batch_size)
        self._batch_size = batch_size

    def cache_batch_size(self) -> int:
        return self._batch_size

    def cache_nbytes(self) -> int:
        return 0

    def memory_tokens(self) -> Tensor:
        return torch.zeros(self._batch_size, dtype=torch.long)

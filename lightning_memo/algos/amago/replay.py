"""Replay of whole trials: a TorchRL ``ReplayBuffer`` whose items are trials ``[T]``.

Shapes: ``N`` trials added at once, ``T`` steps per trial, ``B`` sampled rows, ``L`` the window length
(``L = T`` when sampling whole trials).

Storage is ``LazyTensorStorage`` (in RAM) or, given a directory, ``LazyMemmapStorage`` (memory-mapped
files, for buffers larger than RAM). Sampling is uniform over stored trials (``RandomSampler``, with
replacement; TorchRL's prioritised sampler needs a C++ extension and the recipe does not use it). Each
sampled row is a whole trial, or a window of ``L`` consecutive steps at a uniform start, returned with
its start so a reader knows where in the trial it begins. Randomness comes from the global torch RNG,
so a run that restores that RNG (the trainers' checkpoints do) samples the same rows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, RandomSampler, ReplayBuffer


class TrialReplay:
    """A FIFO buffer of up to ``capacity`` trials, sampled uniformly as whole trials or windows.

    Args:
        capacity: the most trials kept (the oldest are overwritten first).
        window: ``L``, steps per sampled row; ``None`` samples whole trials.
        memmap_dir: keep the trials in memory-mapped files under this directory instead of RAM.
    """

    def __init__(self, capacity: int, window: int | None = None, memmap_dir: str | Path | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1 trial, got {capacity}.")
        if window is not None and window < 1:
            raise ValueError(f"replay window must be >= 1 step or None (whole trials), got {window}.")
        if memmap_dir is None:
            storage = LazyTensorStorage(capacity)
        else:
            storage = LazyMemmapStorage(capacity, scratch_dir=memmap_dir)
        self.buffer = ReplayBuffer(storage=storage, sampler=RandomSampler())
        self.capacity, self.window = capacity, window

    def __len__(self) -> int:
        """Trials stored."""
        return len(self.buffer)

    def extend(self, trials: TensorDictBase) -> None:
        """Add ``N`` whole trials, ``trials [N, T]`` (every trial of the buffer has the same ``T``)."""
        if trials.batch_dims != 2:
            raise ValueError(f"extend() takes trials with batch_size [N, T]; got {list(trials.batch_size)}.")
        if self.window is not None and self.window > trials.shape[1]:
            raise ValueError(f"replay window={self.window} is longer than the trials ({trials.shape[1]} steps).")
        self.buffer.extend(trials)

    def sample(self, batch_size: int) -> tuple[TensorDictBase, Tensor]:
        """``batch_size`` rows drawn uniformly (with replacement) -> (rows ``[B, L]``, starts ``[B]``):
        row ``i`` is steps ``starts[i] .. starts[i] + L - 1`` of one stored trial."""
        if len(self) == 0:
            raise RuntimeError("the replay buffer is empty; add trials with extend() before sampling.")
        trials = self.buffer.sample(batch_size)  # [B, T]
        B, T = trials.shape
        if self.window is None or self.window == T:
            return trials, torch.zeros(B, dtype=torch.long)
        starts = torch.randint(T - self.window + 1, (B,))
        steps = starts[:, None] + torch.arange(self.window)
        return trials[torch.arange(B)[:, None], steps], starts

    def save(self, path: str | Path) -> None:
        """Write the stored trials and the write cursor under the directory ``path`` (created)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.buffer.dumps(path)

    def load(self, path: str | Path) -> None:
        """Restore what :meth:`save` wrote (into a buffer built with the same arguments)."""
        self.buffer.loads(path)

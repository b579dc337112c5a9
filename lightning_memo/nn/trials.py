"""Re-arranging ``[B, T]`` batches so that every row is one trial starting at t=0.

A row of a training batch may hold several trials (``is_init`` true mid-row). The memories are
written for the simple case (one trial per row, memory empty at t=0), so mid-row restarts are handled
by cutting rows at their restarts and packing the pieces as new rows, padded at the end (padding after
the last real step never influences a causal model's real outputs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class TrialIndex(NamedTuple):
    """Where each packed step came from (the inverse map of :func:`pack_trials`)."""

    rows: Tensor
    """``[N, L]`` source row of each packed step."""

    times: Tensor
    """``[N, L]`` source time of each packed step."""

    valid: Tensor
    """``[N, L]`` false on padding."""

    lengths: Tensor
    """``[N]`` steps of each packed trial."""

    last: Tensor
    """``[B]`` the packed row holding each source row's last trial."""


def _trial_bounds(resets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row, start and length of every trial; ``resets [B,T]`` is true at trial starts (t=0 included)."""
    rows, starts = resets.nonzero(as_tuple=True)  # row-major order: trials of a row are consecutive
    T = resets.shape[1]
    next_start = torch.full_like(starts, T)
    same_row = rows[1:] == rows[:-1]
    next_start[:-1] = torch.where(same_row, starts[1:], torch.full_like(starts[1:], T))
    return rows, starts, next_start - starts


def pack_trials(resets: Tensor, *tensors: Tensor | None) -> tuple[list[Tensor | None], TrialIndex]:
    """Cut ``[B,T,...]`` tensors at ``resets`` into ``[N,L,...]`` (one trial per row, zero padded)."""
    rows, starts, lengths = _trial_bounds(resets)
    L = int(lengths.max())
    offsets = torch.arange(L, device=resets.device)
    valid = offsets < lengths[:, None]
    times = (starts[:, None] + offsets).clamp(max=resets.shape[1] - 1)
    row_grid = rows[:, None].expand_as(times)
    packed = []
    for t in tensors:
        if t is None:
            packed.append(None)
            continue
        p = t[row_grid, times]
        mask = valid.reshape(valid.shape + (1,) * (p.dim() - 2))
        packed.append(torch.where(mask, p, torch.zeros((), dtype=p.dtype, device=p.device)))
    last = torch.zeros(resets.shape[0], dtype=torch.long, device=resets.device)
    last.scatter_reduce_(0, rows, torch.arange(rows.shape[0], device=rows.device), "amax")
    return packed, TrialIndex(row_grid, times, valid, lengths, last)


def unpack_trials(packed: Tensor, index: TrialIndex, shape: torch.Size) -> Tensor:
    """Inverse of :func:`pack_trials` for an output ``[N,L,...]`` -> ``[B,T,...]``."""
    out = packed.new_zeros(tuple(shape) + packed.shape[2:])
    out[index.rows[index.valid], index.times[index.valid]] = packed[index.valid]
    return out

"""PopArt: value targets normalised with running statistics, one set per discount factor.

Shapes: ``G`` discount factors; ``*`` any leading dims, the last one is ``G`` (or ``G`` then ``A``,
see :meth:`PopArt.forward`).

The critic's raw output ``x`` goes through an affine layer ``w * x + b`` (one ``w``, ``b`` per discount
factor) and is read as a *normalised* value; ``sigma * (w x + b) + mu`` is the value in the original
scale. TD targets are normalised with the same ``mu``/``sigma`` before the regression. When the running
statistics move, ``w`` and ``b`` are rescaled so that the original-scale outputs do not change (the
"preserve outputs" half of PopArt, van Hasselt et al. 2016). ``w``/``b`` are buffers, not trained.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


class PopArt(nn.Module):
    """Running mean/std of value targets per discount factor, with the output-preserving affine layer.

    Args:
        num_gammas: ``G``, the number of discount factors (one statistic each).
        beta: step size of the running first/second moments.
        init_std: the starting ``sigma`` (``mu`` starts at 0).
        min_std: lower bound on ``sigma`` (avoids dividing by ~0 while the targets are constant).
    """

    def __init__(self, num_gammas: int, beta: float = 5e-4, init_std: float = 1.0, min_std: float = 1e-4) -> None:
        super().__init__()
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"PopArt beta must be in (0, 1], got {beta}.")
        self.beta, self.min_std = beta, min_std
        self.register_buffer("mu", torch.zeros(num_gammas))  # running E[y]
        self.register_buffer("nu", torch.full((num_gammas,), float(init_std) ** 2))  # running E[y^2]
        self.register_buffer("w", torch.ones(num_gammas))
        self.register_buffer("b", torch.zeros(num_gammas))

    @property
    def sigma(self) -> Tensor:
        """``[G]`` running standard deviation."""
        return (self.nu - self.mu.pow(2)).clamp(min=self.min_std**2).sqrt()

    def _per_gamma(self, stat: Tensor, action_dim: bool) -> Tensor:
        return stat[:, None] if action_dim else stat

    def forward(self, x: Tensor, normalized: bool = True, action_dim: bool = False) -> Tensor:
        """Raw critic output ``x`` ``[*, G]`` (``[*, G, A]`` with ``action_dim``) -> normalised values,
        or values in the original scale when ``normalized=False``."""
        w, b = self._per_gamma(self.w, action_dim), self._per_gamma(self.b, action_dim)
        out = w * x + b
        if normalized:
            return out
        return self.denormalize(out, action_dim)

    def normalize(self, y: Tensor, action_dim: bool = False) -> Tensor:
        """Original-scale values ``[*, G]`` (or ``[*, G, A]``) -> normalised."""
        return (y - self._per_gamma(self.mu, action_dim)) / self._per_gamma(self.sigma, action_dim)

    def denormalize(self, y: Tensor, action_dim: bool = False) -> Tensor:
        """Normalised values ``[*, G]`` (or ``[*, G, A]``) -> original scale."""
        return y * self._per_gamma(self.sigma, action_dim) + self._per_gamma(self.mu, action_dim)

    @torch.no_grad()
    def update(
        self, targets: Tensor, mask: Tensor | None = None, reduce: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        """Move the statistics toward the batch of original-scale ``targets [*, G]`` (entries where
        ``mask [*]`` is true), then rescale ``w``, ``b`` so that ``forward(x, normalized=False)`` is
        unchanged for every ``x``. ``reduce`` averages the batch moments ``[2, G]`` over processes
        (e.g. the DDP ranks), so every rank keeps the same statistics."""
        flat = targets.reshape(-1, targets.shape[-1]).float()
        if mask is not None:
            flat = flat[mask.reshape(-1)]
        if flat.numel() == 0:
            return
        moments = torch.stack((flat.mean(0), flat.pow(2).mean(0)))  # [2, G]: E[y], E[y^2]
        if reduce is not None:
            moments = reduce(moments)
        old_mu, old_sigma = self.mu.clone(), self.sigma
        self.mu.lerp_(moments[0], self.beta)
        self.nu.lerp_(moments[1], self.beta)
        new_sigma = self.sigma
        # sigma' (w' x + b') + mu' = sigma (w x + b) + mu  for all x
        self.w.mul_(old_sigma / new_sigma)
        self.b.copy_((old_sigma * self.b + old_mu - self.mu) / new_sigma)

"""GRU / LSTM baselines behind the :class:`SequenceMemory` interface (TorchRL's recurrent modules).

The state is the hidden state (``h``, plus ``c`` for the LSTM), each ``[n_layers, B, d_model]``;
``refresh`` recomputes it from the history under the current weights. Input and hidden width are both
``d_model``, so the recurrent memory is a drop-in replacement for a Transformer memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence
from torchrl.modules import GRUModule, LSTMModule

from lightning_memo.nn.backbone import _positive
from lightning_memo.nn.base import SequenceMemory, config_from_kwargs


@dataclass
class RecurrentConfig:
    """GRU/LSTM sizes: ``d_model`` is the input and hidden width, ``n_layers`` stacked layers."""

    d_model: int = 256
    n_layers: int = 1
    inter_episode_attention: bool = True  # False: state resets at every inner-episode start (no-IEA)

    def validate(self) -> None:
        _positive(d_model=self.d_model, n_layers=self.n_layers)


class _RecurrentMemory(SequenceMemory):
    """Shared body of :class:`GRUMemory` and :class:`LSTMMemory`; ``_state`` is a tuple of ``[L,B,D]``.

    The parameters live in TorchRL's ``GRUModule``/``LSTMModule`` (``self.module``), but we call its
    underlying ``torch.nn`` RNN directly: :class:`SequenceMemory` already does the trial packing at
    ``is_init`` and the TensorDict face, and keeps the state inside the module (like the KV caches of
    the Transformer memories) rather than in ``recurrent_state`` keys of the tensordict.
    """

    _n_states: int  # hidden-state tensors: 1 (GRU) or 2 (LSTM)

    def __init__(
        self,
        config: RecurrentConfig | None = None,
        *,
        in_keys: Sequence[str] | None = None,
        out_keys: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        cfg = config_from_kwargs(RecurrentConfig, config, kwargs, type(self).__name__)
        super().__init__(
            cfg.d_model, inter_episode_attention=cfg.inter_episode_attention, in_keys=in_keys, out_keys=out_keys
        )
        self.config = cfg
        self.module = self._make_module(cfg)
        self._state: tuple[Tensor, ...] | None = None

    def _make_module(self, cfg: RecurrentConfig) -> nn.Module:
        raise NotImplementedError

    @property
    def rnn(self) -> nn.RNNBase:
        """The ``torch.nn.GRU``/``LSTM`` (batch first) inside the TorchRL module."""
        raise NotImplementedError

    def _pack_state(self, state: tuple[Tensor, ...]):
        return state[0] if len(state) == 1 else state

    def _unpack_state(self, state) -> tuple[Tensor, ...]:
        return (state,) if isinstance(state, Tensor) else tuple(state)

    def _sequence(self, x: Tensor, segment_len: int | None, episode_start: Tensor | None) -> Tensor:
        if segment_len is not None:
            raise ValueError(f"segment_len applies to segment memories (memo, ac, rmt), not {type(self).__name__}.")
        return self.rnn(x)[0]

    def _step(self, x: Tensor, episode_start: Tensor | None) -> Tensor:
        out, state = self.rnn(x[:, None], self._pack_state(self._state))
        self._state = self._unpack_state(state)
        return out[:, 0]

    def _refresh(self, x: Tensor, lengths: Tensor, episode_start: Tensor | None) -> None:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        self._state = self._unpack_state(self.rnn(packed)[1])  # h_n at each row's own length

    def _reset_rows(self, rows: Tensor) -> None:
        self._state = tuple(s.masked_fill(rows[None, :, None], 0.0) for s in self._state)

    def reset_cache(self, batch_size: int) -> None:
        _positive(batch_size=batch_size)
        cfg, weight = self.config, self.rnn.weight_ih_l0
        zeros = weight.new_zeros(cfg.n_layers, batch_size, cfg.d_model)
        self._state = tuple(zeros.clone() for _ in range(self._n_states))

    def cache_batch_size(self) -> int:
        return 0 if self._state is None else self._state[0].shape[1]

    def cache_nbytes(self) -> int:
        return 0 if self._state is None else sum(s.numel() * s.element_size() for s in self._state)

    def memory_tokens(self) -> Tensor:
        """State vectors per row: ``n_layers`` (GRU) or ``2 * n_layers`` (LSTM), constant in time."""
        if self._state is None:
            return torch.zeros(0, dtype=torch.long)
        n, device = self._state[0].shape[1], self._state[0].device
        return torch.full((n,), self._n_states * self.config.n_layers, dtype=torch.long, device=device)


class GRUMemory(_RecurrentMemory):
    """GRU baseline: ``GRUMemory(d_model=256, n_layers=1)``; state ``h [n_layers, B, d_model]``."""

    _n_states = 1

    def _make_module(self, cfg: RecurrentConfig) -> nn.Module:
        return GRUModule(
            input_size=cfg.d_model, hidden_size=cfg.d_model, num_layers=cfg.n_layers,
            in_key="embed", out_key="memory",
        )

    @property
    def rnn(self) -> nn.RNNBase:
        return self.module.gru


class LSTMMemory(_RecurrentMemory):
    """LSTM baseline: ``LSTMMemory(d_model=256, n_layers=1)``; state ``h, c [n_layers, B, d_model]``."""

    _n_states = 2

    def _make_module(self, cfg: RecurrentConfig) -> nn.Module:
        return LSTMModule(
            input_size=cfg.d_model, hidden_size=cfg.d_model, num_layers=cfg.n_layers,
            in_key="embed", out_key="memory",
        )

    @property
    def rnn(self) -> nn.RNNBase:
        return self.module.lstm

"""GRU / LSTM baselines behind the :class:`SequenceMemory` interface (TorchRL's recurrent modules).

The cache is the hidden state (``h``, plus ``c`` for the LSTM), each ``[n_layers, B, d_model]``;
``refresh`` recomputes it from the history under the current weights, and sequence mode from a past
starts the RNN from its state. Input and hidden width are both ``d_model``, so the recurrent memory is
a drop-in replacement for a Transformer memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torchrl.modules import GRUModule, LSTMModule

from lightning_memo.nn.backbone import positive
from lightning_memo.nn.base import SequenceMemory, StateCache


@dataclass
class RecurrentConfig:
    """GRU/LSTM sizes: ``d_model`` is the input and hidden width, ``n_layers`` stacked layers."""

    d_model: int = 256
    """Input and hidden width. Positive."""

    n_layers: int = 1
    """Stacked recurrent layers. Positive."""

    inter_episode_attention: bool = True
    """`False`: the hidden state resets at every inner-episode start (the no-IEA ablation)."""

    def validate(self) -> None:
        positive(d_model=self.d_model, n_layers=self.n_layers)


class _RecurrentMemory(SequenceMemory):
    """Shared body of :class:`GRUMemory` and :class:`LSTMMemory`.

    The parameters live in TorchRL's ``GRUModule``/``LSTMModule`` (``self.module``), but we call its
    underlying ``torch.nn`` RNN directly: :class:`SequenceMemory` already does the trial packing at
    ``is_init`` and the TensorDict face, and keeps the state in a cache object (like the KV caches of
    the Transformer memories) rather than in ``recurrent_state`` keys of the tensordict.
    """

    config_cls = RecurrentConfig
    module_cls: type[GRUModule] | type[LSTMModule]

    def _build(self, cfg: RecurrentConfig) -> None:
        self.module = self.module_cls(
            input_size=cfg.d_model, hidden_size=cfg.d_model, num_layers=cfg.n_layers, in_key="embed", out_key="memory"
        )

    @property
    def rnn(self) -> nn.RNNBase:
        """The ``torch.nn.GRU``/``LSTM`` (batch first) inside the TorchRL module."""
        return self.module.lstm if isinstance(self.module, LSTMModule) else self.module.gru

    def new_cache(self, batch_size: int) -> StateCache:
        """A zero hidden state (``h``; ``h, c`` for the LSTM) of ``batch_size`` rows."""
        positive(batch_size=batch_size)
        zeros = self.rnn.weight_ih_l0.new_zeros(self.config.n_layers, batch_size, self.config.d_model)
        return StateCache(batch_size, (zeros, zeros.clone()) if isinstance(self.rnn, nn.LSTM) else (zeros,))

    def _in_dtype(self, x: Tensor) -> Tensor:
        """``x`` in the RNN's dtype (an autocast encoder hands over bfloat16)."""
        return x.to(self.rnn.weight_ih_l0.dtype)

    def _run(self, x: Tensor | PackedSequence, state=None):
        """The RNN in its own dtype (float32) even under autocast (``bf16-mixed``): an autocast recurrence
        would meet a bfloat16 input with a float32 state, and a bfloat16 state would round at every step of
        a long trial; the recurrent baselines are cheap enough to run in full precision."""
        with torch.autocast(self.rnn.weight_ih_l0.device.type, enabled=False):
            return self.rnn(x, state) if state is not None else self.rnn(x)

    def _sequence(self, x: Tensor, segment_len: int | None, episode_start: Tensor | None) -> Tensor:
        self._no_segment_len(segment_len)
        return self._run(self._in_dtype(x))[0]

    def _sequence_from(
        self, x: Tensor, past: StateCache, segment_len: int | None, episode_start: Tensor | None
    ) -> Tensor:
        self._no_segment_len(segment_len)
        return self._run(self._in_dtype(x), _rnn_state(tuple(s.detach() for s in past.states)))[0]

    def _step(self, x: Tensor, cache: StateCache, episode_start: Tensor | None) -> Tensor:
        out, state = self._run(self._in_dtype(x[:, None]), _rnn_state(cache.states))
        cache.states = tuple(state) if isinstance(state, tuple) else (state,)
        return out[:, 0]

    def _refresh(
        self, x: Tensor, lengths: Tensor, episode_start: Tensor | None, last: Tensor, cache: StateCache, outputs: bool
    ) -> Tensor | None:
        packed = pack_padded_sequence(self._in_dtype(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self._run(packed)
        state = tuple(state) if isinstance(state, tuple) else (state,)
        cache.states = tuple(s[:, last] for s in state)  # h_n at each trial's own length
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0] if outputs else None


class GRUMemory(_RecurrentMemory):
    """GRU baseline: ``GRUMemory(d_model=256, n_layers=1)``; state ``h [n_layers, B, d_model]``."""

    module_cls = GRUModule


class LSTMMemory(_RecurrentMemory):
    """LSTM baseline: ``LSTMMemory(d_model=256, n_layers=1)``; state ``h, c [n_layers, B, d_model]``."""

    module_cls = LSTMModule


def _rnn_state(states: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, Tensor]:
    """A :class:`StateCache`'s tensors as the RNN takes them: ``(h, c)`` for an LSTM, ``h`` for a GRU."""
    return states if len(states) == 2 else states[0]

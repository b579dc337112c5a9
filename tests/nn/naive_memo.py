"""The reference formulation of Memo's sequence mode, used only as a test oracle.

Every window ``[S_0 .. S_{i-1} | C_i | E]`` is re-encoded from its input tokens with plain causal
attention and positions 0.. -- the literal reading of the paper, with no K/V reuse.
"""

import torch

from lightning_memo.nn.backbone import PrefixKV


def naive_memo_sequence(memo, x: torch.Tensor, segment_len: int, summary_hook=None) -> torch.Tensor:
    """Outputs ``[B,T,D]`` of ``memo`` on ``x [B,T,D]`` (one trial per row) with segment length ``L``."""
    tf = memo.transformer
    B, T, D = x.shape
    queries = memo.summary_queries.expand(B, -1, -1)
    summaries = x.new_zeros(B, 0, D)
    outputs = []
    for start in range(0, T, segment_len):
        chunk = x[:, start : start + segment_len]
        n, m = chunk.shape[1], summaries.shape[1]
        full = n == segment_len
        tokens = torch.cat([summaries, chunk] + ([queries] if full else []), dim=1)
        h = tf(tokens, torch.arange(tokens.shape[1]), PrefixKV(None, len(tf.blocks)))
        outputs.append(h[:, m : m + n])
        if full:
            new = h[:, m + n :]
            summaries = torch.cat([summaries, summary_hook(new) if summary_hook else new], dim=1)
    return torch.cat(outputs, dim=1)

"""Draw the mechanism figures of the docs from the package itself, so they stay true to the code.

    python docs/figures/make_figures.py        # writes docs/figures/*.png (needs matplotlib)

* ``memo_attention.png``: which earlier steps each output of a small Memo reads, measured as the
  gradient of output ``t`` with respect to input ``s``. With gradients cut at every segment boundary
  (``tbptt_segments=1``) only the steps a token attends to directly remain; with full gradients the
  older segments appear too, but only through the summaries.
* ``cache_tokens.png``: tokens held in the step-mode cache per environment, stepped for real, for
  Memo, streaming Memo and the full-context Transformer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lightning_memo.nn import make_memory

OUT = Path(__file__).parent
SEGMENT, SUMMARY, WIDTH = 6, 2, 16


def influence(truncate: bool, steps: int = 24) -> torch.Tensor:
    """``[T, T]``: ``|d out_t / d x_s|`` of a small Memo in eval mode (rows t, columns s)."""
    torch.manual_seed(0)
    memo = make_memory(
        "memo", d_model=WIDTH, n_layers=2, n_heads=2, segment_len=SEGMENT, summary_len=SUMMARY,
        tbptt_segments=1 if truncate else None,
    ).eval()
    x = torch.randn(1, steps, WIDTH, dtype=torch.float64, requires_grad=True)
    out = memo.double().forward_sequence(x)
    rows = []
    for t in range(steps):
        (grad,) = torch.autograd.grad(out[0, t].sum(), x, retain_graph=True)
        rows.append(grad[0].norm(dim=-1))
    return torch.stack(rows)


def cache_tokens(steps: int = 300) -> dict[str, list[int]]:
    """Tokens each memory's cache holds after every step (one environment)."""
    kinds = {
        "full context (fct)": dict(name="fct"),
        f"memo (l_seg={4 * SEGMENT}, l_sum={2 * SUMMARY})": dict(name="memo"),
        "streaming memo (max_memory_tokens=16)": dict(name="memo", max_memory_tokens=16),
    }
    curves = {}
    for label, kw in kinds.items():
        name = kw.pop("name")
        extra = dict(segment_len=4 * SEGMENT, summary_len=2 * SUMMARY) if name == "memo" else {}
        memory = make_memory(name, d_model=WIDTH, n_layers=1, n_heads=2, **extra, **kw).eval()
        memory.reset_cache(1)
        held = []
        for _ in range(steps):
            memory.step(torch.randn(1, WIDTH))
            held.append(int(memory.memory_tokens()[0]))
        curves[label] = held
    return curves


def main() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("the figures need matplotlib: pip install matplotlib")

    direct, full = influence(truncate=True), influence(truncate=False)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharey=True)
    for ax, grid, title in (
        (axes[0], direct, "attended directly\n(summaries' gradient cut)"),
        (axes[1], full, "all influence\n(through the summaries too)"),
    ):
        ax.imshow((grid > 0).float().numpy(), cmap="Blues", vmin=0, vmax=1.4, origin="upper")
        for b in range(SEGMENT, grid.shape[0], SEGMENT):
            ax.axhline(b - 0.5, color="tab:orange", lw=1)
            ax.axvline(b - 0.5, color="tab:orange", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("input step s")
    axes[0].set_ylabel("output step t")
    fig.suptitle(
        f"Memo, segment_len={SEGMENT}, summary_len={SUMMARY}: output t reads the steps of its own segment "
        "directly,\nolder segments only through their summaries (orange lines: segment ends)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(OUT / "memo_attention.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, held in cache_tokens().items():
        ax.plot(range(1, len(held) + 1), held, label=label)
    ax.set_xlabel("step t")
    ax.set_ylabel("tokens in the cache (per env)")
    ax.set_title("What the step-mode cache holds (measured by stepping each memory)", fontsize=10)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "cache_tokens.png", dpi=110)
    plt.close(fig)
    print(f"wrote {OUT / 'memo_attention.png'} and {OUT / 'cache_tokens.png'}")


if __name__ == "__main__":
    main()

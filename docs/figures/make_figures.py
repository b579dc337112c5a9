"""Draw the mechanism figures of the docs from the package itself, so they stay true to the code.

    python docs/figures/make_figures.py        # writes docs/figures/*.png (needs matplotlib)

* ``memo_attention.png``: which earlier steps each output of a small Memo reads, measured as the
  gradient of output ``t`` with respect to input ``s``. With gradients cut at every segment boundary
  (``tbptt_segments=1``) only the steps a token attends to directly remain; with full gradients the
  older segments appear too, but only through the summaries.
* ``cache_tokens.png``: tokens held in the step-mode cache per environment, stepped for real, for
  Memo, streaming Memo and the full-context Transformer.
* ``memo_cache.png``: what a small Memo's step-mode cache holds after every step, read from the cache
  itself: summaries (the memory) and the steps of the current segment.
* ``envs.png``: a frame of each task, drawn by the envs' own renderers.
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


def cache_contents(steps: int = 20) -> list[tuple[int, int]]:
    """``(memory tokens, segment tokens)`` held after each step by a small Memo (one environment)."""
    torch.manual_seed(0)
    memo = make_memory("memo", d_model=WIDTH, n_layers=1, n_heads=2, segment_len=SEGMENT, summary_len=SUMMARY)
    memo.eval().reset_cache(1)
    held = []
    for _ in range(steps):
        memo.step(torch.randn(1, WIDTH))
        total, memory = int(memo.memory_tokens()[0]), int(memo.cache_state().counters["memory"][0])
        held.append((memory, total - memory))
    return held


def env_frames() -> list:
    """A Dark-Key-To-Door frame (lit, after a few moves) and an ObjNavGrid frame, as RGB arrays."""
    from lightning_memo.envs import DarkKeyToDoorGym, ObjNavGridGym

    dktd = DarkKeyToDoorGym(size=7, episode_len=20, trial_len=200, render_mode="rgb_array")
    dktd.reset(seed=3)
    for action in (0, 3, 3):
        dktd.step(action)
    objnav = ObjNavGridGym(render_mode="rgb_array")
    objnav.reset(seed=0)
    return [dktd.render(), objnav.render()]


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
    from matplotlib.patches import Rectangle

    held = cache_contents()
    slots = max(m for m, _ in held) + SEGMENT + 1
    fig, ax = plt.subplots(figsize=(7.2, 7.4))
    for t, (memory, segment) in enumerate(held):
        for j in range(memory):
            ax.add_patch(Rectangle((j, t), 0.95, 0.9, color="tab:orange"))
            if j % SUMMARY == 0:
                ax.text(j + SUMMARY / 2 - 0.05, t + 0.48, f"S{j // SUMMARY}", ha="center", va="center", fontsize=7)
        for j in range(segment):
            step = t - segment + 1 + j
            ax.add_patch(Rectangle((memory + 1 + j, t), 0.95, 0.9, color="tab:blue", alpha=0.75))
            ax.text(memory + 1.45 + j, t + 0.48, str(step), ha="center", va="center", fontsize=7, color="white")
    ax.set_xlim(0, slots)
    ax.set_ylim(len(held), 0)
    ax.set_aspect("equal")
    ax.set_yticks([t + 0.45 for t in range(len(held))], [str(t) for t in range(len(held))], fontsize=7)
    ax.set_xticks([])
    ax.set_ylabel("after step t")
    ax.set_title(
        f"Memo's step-mode cache (segment_len={SEGMENT}, summary_len={SUMMARY}), read after every step.\n"
        "Orange: summaries S_i (the memory); blue: the current segment's steps.\n"
        "Step t+1 attends to row t and to itself.",
        fontsize=9,
    )
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(OUT / "memo_cache.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    titles = ("Dark-Key-To-Door: start, key, door, agent",
              "ObjNavGrid: rooms, objects, the view (yellow)")
    for ax, frame, title in zip(axes, env_frames(), titles):
        ax.imshow(frame)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT / "envs.png", dpi=110)
    plt.close(fig)
    print(f"wrote {', '.join(str(OUT / n) for n in ('memo_attention.png', 'cache_tokens.png', 'memo_cache.png', 'envs.png'))}")


if __name__ == "__main__":
    main()

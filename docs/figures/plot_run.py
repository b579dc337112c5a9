"""Plot a run's learning curve from its ``metrics.csv``.

    python docs/figures/plot_run.py runs/dark_key_to_door/version_0 curve.png

Left: the trial return per trial. Right: the length of the first inner episode (exploring) against
the mean of episodes 3-5 (the agent remembers where the key and door are): the gap is in-context
learning. Needs matplotlib.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def read_trials(run_dir: Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` that carry a trial's metrics, as floats."""
    with open(run_dir / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("trial/return")]
    return [{k: float(v) for k, v in row.items() if v != ""} for row in rows]


def main(run_dir: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_trials(Path(run_dir))
    trials = [int(r["epoch"]) for r in rows]
    later = [sum(r[f"trial/episode_len/{k}"] for k in (3, 4, 5)) / 3 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(trials, [r["trial/return"] for r in rows], marker=".")
    axes[0].set(xlabel="trial", ylabel="trial return", title="return per trial")
    axes[1].plot(trials, [r["trial/episode_len/0"] for r in rows], marker=".", label="episode 0")
    axes[1].plot(trials, later, marker=".", label="episodes 3-5 (mean)")
    axes[1].set(xlabel="trial", ylabel="steps", title="inner-episode length")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out} ({len(rows)} trials)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python docs/figures/plot_run.py RUN_DIR OUT.png")
    main(sys.argv[1], sys.argv[2])

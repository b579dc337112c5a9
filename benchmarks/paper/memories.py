"""Comparison 1: every memory on Dark-Key-To-Door and on a long-range recall task (POPGym RepeatPrevious).

Memo, FCT (full context), RMT (replaced memory), AC (Memo with gradients truncated after 2 segments),
no-IEA (Memo whose memory resets at every inner episode), GRU and the memoryless control, each trained
with PPO for the same number of trials and seeds, then evaluated greedily on held-out trials at the
training length. Reports the mean trial return and the cache bytes per env at the trial end, with 95%
intervals over seeds.

    python benchmarks/paper/memories.py [--smoke | --paper] [--seeds 3] [--jobs 2] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    EvalSpec, RunSpec, aggregate, bars, collect, markdown_table, parse_args, pyplot, write_report,
)

VARIANTS = ("memo", "fct", "rmt", "ac", "noiea", "gru", "none")
TASKS = ("dkd", "recall")
TASK_TITLES = {"dkd": "Dark-Key-To-Door", "recall": "RepeatPrevious (recall)"}


def main(argv=None) -> list[dict]:
    args = parse_args(__doc__.splitlines()[0], argv)
    out = args.out / "memories"
    jobs = [(RunSpec(task, v, seed), [EvalSpec("T")]) for task in TASKS for v in VARIANTS for seed in range(args.seeds)]
    rows = collect(jobs, args.size, args.runs, out / "results.csv", args.jobs)
    agg = aggregate(rows, ["task", "variant"], ["return", "cache_bytes_per_env"])
    table = markdown_table(agg, ["task", "variant"], {"return": "{:.2f}".format, "cache_bytes_per_env": _kib})
    plt = pyplot()
    fig = None
    if plt is not None:
        fig, axes = plt.subplots(2, len(TASKS), figsize=(5 * len(TASKS), 6.5), squeeze=False)
        for col, task in enumerate(TASKS):
            part = [r for r in agg if r["task"] == task]
            labels = [r["variant"] for r in part]
            bars(axes[0, col], labels, part, "return")
            axes[0, col].set_title(f"{TASK_TITLES[task]}: trial return")
            bars(axes[1, col], labels, part, "cache_bytes_per_env", log=True)
            axes[1, col].set_title("cache bytes per env at the trial end")
    title = f"Memories compared ({args.size.name} size, mean ± 95% interval over seeds)"
    write_report(out, "memories", table, fig, title)
    return rows


def _kib(nbytes: float) -> str:
    return f"{nbytes / 1024:.1f} KiB"


if __name__ == "__main__":
    main()

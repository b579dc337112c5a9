"""Comparison 3: Memo's ablations on Dark-Key-To-Door.

* summary length ``l_sum`` in {l_seg/16, l_seg/8, l_seg/4} (l_seg/8 is the default Memo of comparison 1);
* segment randomisation (the segment length drawn within +-20% per training forward) on and off, at l_seg/8.

Evaluated greedily on held-out trials at the training length: mean trial return and cache bytes per env.

    python benchmarks/paper/ablations.py [--smoke | --paper] [--seeds 3] [--jobs 2] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    EvalSpec, RunSpec, aggregate, bars, collect, markdown_table, parse_args, pyplot, write_report,
)


def variants(segment_len: int) -> dict[str, str]:
    """Label -> run variant; the l_seg/8 summary with randomisation is plain ``memo``."""
    return {
        "l_sum = l_seg/16": f"memo-lsum{segment_len // 16}",
        "l_sum = l_seg/8": "memo",
        "l_sum = l_seg/4": f"memo-lsum{segment_len // 4}",
        "randomisation off (l_seg/8)": "memo-norand",
    }


def main(argv=None) -> list[dict]:
    args = parse_args(__doc__.splitlines()[0], argv)
    out = args.out / "ablations"
    labels = variants(args.size.tasks["dkd"].segment_len)
    jobs = [(RunSpec("dkd", v, seed), [EvalSpec("T")]) for v in labels.values() for seed in range(args.seeds)]
    rows = collect(jobs, args.size, args.runs, out / "results.csv", args.jobs)
    by_variant = {v: label for label, v in labels.items()}
    for r in rows:
        r["ablation"] = by_variant[r["variant"]]
    agg = sorted(aggregate(rows, ["ablation", "variant"], ["return", "cache_bytes_per_env"]),
                 key=lambda r: list(labels).index(r["ablation"]))
    table = markdown_table(agg, ["ablation", "variant"], {
        "return": "{:.2f}".format, "cache_bytes_per_env": lambda b: f"{b / 1024:.1f} KiB"})
    plt = pyplot()
    fig = None
    if plt is not None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        bars(left, [r["ablation"] for r in agg], agg, "return")
        left.set_title("trial return")
        bars(right, [r["ablation"] for r in agg], agg, "cache_bytes_per_env")
        right.set_title("cache bytes per env at the trial end")
    title = f"Memo ablations ({args.size.name} size, mean ± 95% interval over seeds)"
    write_report(out, "ablations", table, fig, title)
    return rows


if __name__ == "__main__":
    main()

"""Comparison 2: length generalisation and streaming caches on Dark-Key-To-Door.

Memo and FCT trained at trial length T (the runs of comparison 1, shared) are evaluated on held-out trials
of T, 2T, 4T and 8T steps with:

* full caches (Memo keeps every summary, FCT every step);
* streaming Memo: ``max_memory_tokens`` = the memory Memo holds at the end of a training trial
  (``l_sum * floor(T / l_seg)``), the oldest summaries evicted beyond it;
* streaming FCT: a sliding ``window`` of T steps (the training length), evicted ``l_seg`` steps at a time.

Return is reported per 100 steps (trials of different lengths compare), with the peak cache per env.

    python benchmarks/paper/length.py [--smoke | --paper] [--seeds 3] [--jobs 2] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    EvalSpec, RunSpec, aggregate, collect, load_config, markdown_table, parse_args, pyplot, run_overrides, write_report,
)

MULTIPLIERS = (1, 2, 4, 8)
SETTINGS = (("memo", "full"), ("memo", "streaming"), ("fct", "full"), ("fct", "streaming"))


def evaluations(variant: str, streaming: bool, T: int, segment_len: int, summary_len: int) -> list[EvalSpec]:
    """The evaluation settings of one model: every multiple of T, full or streaming (Memo: the memory of a
    training trial's end; FCT: a window of T steps, evicted ``l_seg`` steps at a time)."""
    if variant == "memo":
        cap = (("max_memory_tokens", summary_len * (T // segment_len)),)
    else:
        cap = (("window", T), ("evict_block", segment_len))
    return [
        EvalSpec(f"{'streaming' if streaming else 'full'}-x{m}", (("trial_len", m * T), *(cap if streaming else ())))
        for m in MULTIPLIERS
    ]


def main(argv=None) -> list[dict]:
    args = parse_args(__doc__.splitlines()[0], argv)
    out = args.out / "length"
    config, overrides = run_overrides(RunSpec("dkd", "memo", 0), args.size, args.runs)
    cfg = load_config(config, overrides)
    T, memo = cfg.env.trial_len, cfg.memories["memo"]
    jobs = [
        (RunSpec("dkd", variant, seed), [
            e for streaming in (False, True)
            for e in evaluations(variant, streaming, T, memo["segment_len"], memo["summary_len"])
        ])
        for variant in ("memo", "fct") for seed in range(args.seeds)
    ]
    rows = collect(jobs, args.size, args.runs, out / "results.csv", args.jobs)
    for r in rows:
        r["mode"], r["multiplier"] = r["setting"].split("-x")[0], int(float(r["setting"].split("-x")[1]))
    agg = aggregate(rows, ["variant", "mode", "multiplier"], ["return_per_100_steps", "peak_cache_bytes_per_env"])
    table = markdown_table(agg, ["variant", "mode", "multiplier"], {
        "return_per_100_steps": "{:.2f}".format, "peak_cache_bytes_per_env": lambda b: f"{b / 1024:.1f} KiB"})
    plt = pyplot()
    fig = None
    if plt is not None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for variant, mode in SETTINGS:
            part = [r for r in agg if r["variant"] == variant and r["mode"] == mode]
            part.sort(key=lambda r: r["multiplier"])
            xs = [r["multiplier"] for r in part]
            for ax, metric in ((left, "return_per_100_steps"), (right, "peak_cache_bytes_per_env")):
                ys = [r[metric] for r in part]
                ax.plot(xs, ys, marker="o", label=f"{variant} {mode}")
                cis = [0.0 if r[f"{metric}_ci"] != r[f"{metric}_ci"] else r[f"{metric}_ci"] for r in part]
                ax.fill_between(xs, [y - c for y, c in zip(ys, cis)], [y + c for y, c in zip(ys, cis)], alpha=0.2)
        for ax, label in ((left, "return per 100 steps"), (right, "peak cache bytes per env")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(MULTIPLIERS, [f"{m}T" for m in MULTIPLIERS])
            ax.set_xlabel(f"evaluation trial length (T = {T})")
            ax.set_ylabel(label)
        right.set_yscale("log")
        left.legend()
    write_report(out, "length", table, fig, f"Length generalisation and streaming ({args.size.name} size, T = {T})")
    return rows


if __name__ == "__main__":
    main()

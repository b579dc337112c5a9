"""Peak memory of one ``refresh`` against the cache it builds, per memory and trial length.

    python benchmarks/bench_refresh.py
    python benchmarks/bench_refresh.py --memories fct memo --lengths 4096 8192 16384 --d-model 32

Each (memory, t) runs in a fresh process (the peak resident set size of a process only grows), which
builds the memory and the input, refreshes once at a short length to warm up, then refreshes at ``t``:
the growth of the peak RSS over that refresh is what it needed beyond the model and the input.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, torch
from lightning_memo.nn.registry import make_memory
torch.set_num_threads(1)
name, t, kwargs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
memory = make_memory(name, **kwargs).eval()
x = torch.randn(2, t, kwargs["d_model"])
memory.refresh(x[:, :64])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
memory.refresh(x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({"peak": peak, "cache": memory.cache_allocated_nbytes()}))
"""


def measure(name: str, t: int, kwargs: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, str(t), json.dumps(kwargs)],
        capture_output=True, text=True, check=True, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", nargs="+", default=["fct", "memo"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--segment-len", type=int, default=256)
    parser.add_argument("--summary-len", type=int, default=32)
    args = parser.parse_args()
    print(f"refresh of a batch of 2, d_model={args.d_model}, {args.layers} layers, {args.heads} heads, MLP ratio 1, fp32")
    print("| memory | t | cache built | peak growth | peak / cache |\n|---|---:|---:|---:|---:|")
    for name in args.memories:
        kwargs = dict(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, mlp_ratio=1.0)
        if name in ("memo", "ac", "rmt"):
            kwargs.update(segment_len=args.segment_len, summary_len=args.summary_len)
        for t in args.lengths:
            r = measure(name, t, kwargs)
            mib = 2**20
            print(f"| {name} | {t:,} | {r['cache'] / mib:.1f} MiB | {r['peak'] / mib:.1f} MiB | {r['peak'] / r['cache']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()

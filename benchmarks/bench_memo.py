"""Memo's training path and cache size at the reference size (4 layers, 8 heads, d 256, MLP 1024,
l_seg 256, l_sum 32).

1. Forward+backward time of sequence mode on T-step sequences: the cached-memory path (each summary
   encoded once, its K/V reused) against the naive path that re-encodes ``[M | C | E]`` per window
   (the test oracle in ``tests/nn/naive_memo.py``), with the tokens each pushes through the layers.
2. Step-mode cache bytes per row at 4,096 and 32,000 steps, and at the last step of the segments
   they open (where the current segment is fullest), the cache rebuilt with ``refresh`` and read with
   ``cache_nbytes`` (held) and ``cache_allocated_nbytes`` (storage), against a full-context
   Transformer's cache of ``t`` tokens.

Denormal floats (tiny gradients of a mean loss) slow CPU matrix products by an order of magnitude
and would swamp the comparison, so the script flushes them to zero (``torch.set_flush_denormal``).

    python benchmarks/bench_memo.py            # the reference run
    python benchmarks/bench_memo.py --quick    # a small smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the naive oracle under tests/

from lightning_memo.nn import MemoMemory  # noqa: E402
from tests.nn.naive_memo import naive_memo_sequence  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tokens_through_layers(T: int, seg: int, summ: int, naive: bool) -> int:
    chunks = -(-T // seg)
    total = 0
    for i in range(chunks):
        n = min(seg, T - i * seg)
        last = i == chunks - 1
        if naive:
            total += i * summ + n + (0 if last else summ)
        else:
            total += n + (0 if last else 2 * summ)  # window (chunk + queries) + the summary encode
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (1: steadiest on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = dict(d_model=256, n_layers=4, n_heads=8, mlp_ratio=4.0, segment_len=256, summary_len=32)
    horizons = (4096, 4096 + 255, 32000, 32000 + 255)
    if args.quick:
        size = dict(d_model=64, n_layers=2, n_heads=4, mlp_ratio=4.0, segment_len=64, summary_len=8)
        args.steps, horizons = 512, (512, 512 + 63, 4032, 4032 + 63)
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    memo = MemoMemory(**size).eval()  # eval: fixed l_seg so both paths do the same work
    x = torch.randn(args.batch, args.steps, size["d_model"])
    seg, summ = size["segment_len"], size["summary_len"]

    def fwd_bwd(path):
        def run():
            memo.zero_grad(set_to_none=True)
            out = memo.forward_sequence(x, segment_len=seg) if path == "cached" else naive_memo_sequence(memo, x, seg)
            out.square().mean().backward()

        return run

    print(f"Memo sequence mode, forward+backward, B={args.batch}, T={args.steps}, size={size}")
    rows = []
    for path in ("cached", "naive"):
        rows.append((path, tokens_through_layers(args.steps, seg, summ, path == "naive"), timed(fwd_bwd(path), args.repeats)))
    naive_time = rows[1][2]
    print(f"{'path':<8} {'tokens':>8} {'seconds':>9} {'speed-up':>9}")
    for path, tokens, seconds in rows:
        print(f"{path:<8} {tokens:>8} {seconds:>9.3f} {naive_time / seconds:>8.2f}x")

    print("\nStep-mode cache per row (float32), Memo vs a full-context cache of t tokens")
    per_token = 2 * size["n_layers"] * size["d_model"] * 4
    print(f"{'steps':>7} {'memo tokens':>12} {'memo MiB':>9} {'alloc MiB':>10} {'full MiB':>9} {'ratio':>7}")
    with torch.no_grad():
        for t in horizons:
            memo.refresh(torch.randn(1, t, size["d_model"]))
            tokens = int(memo.memory_tokens()[0])
            memo_bytes, alloc, full_bytes = memo.cache_nbytes(), memo.cache_allocated_nbytes(), t * per_token
            assert tokens == summ * (t // seg) + t % seg
            print(f"{t:>7} {tokens:>12} {memo_bytes / 2**20:>9.2f} {alloc / 2**20:>10.2f} {full_bytes / 2**20:>9.2f} "
                  f"{full_bytes / memo_bytes:>6.2f}x")


if __name__ == "__main__":
    main()

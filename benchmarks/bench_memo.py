"""Memo's training path and cache size at the reference size (4 layers, 8 heads, d 256, MLP 1024,
l_seg 256, l_sum 32).

1. Forward+backward time of sequence mode on T-step sequences: the cached-memory path (each summary
   encoded once, its K/V reused) against the naive path that re-encodes ``[M | C | E]`` per window
   (the test oracle in ``tests/nn/naive_memo.py``), and a full-context Transformer (FCT) of the same
   size, with the tokens and FLOPs each pushes through the layers and the achieved FLOP rate.
2. Step-mode cache bytes per row at 4,096 and 32,000 steps, and at the last step of the segments
   they open (where the current segment is fullest), the cache rebuilt with ``refresh`` and read with
   ``cache_nbytes`` (held) and ``cache_allocated_nbytes`` (storage), against a full-context
   Transformer's cache of ``t`` tokens; the ratios are full / held and full / allocated (what the
   saving is in memory actually reserved).

Denormal floats (tiny gradients of a mean loss) slow CPU matrix products by an order of magnitude
and would swamp the comparison, so the script flushes them to zero (``torch.set_flush_denormal``).

    python benchmarks/bench_memo.py            # the reference run
    python benchmarks/bench_memo.py --quick    # a small smoke run
    python benchmarks/bench_memo.py --device cuda --batch 16    # on a GPU (bfloat16 autocast by default there)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the naive oracle under tests/

from benchmarks.flops import FlopCount  # noqa: E402
from lightning_memo.nn import FullContextMemory, MemoMemory  # noqa: E402
from tests.nn.naive_memo import naive_memo_sequence  # noqa: E402


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after a warm-up, waiting for the device."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default=None, help="default: bf16-mixed on cuda, else 32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32")
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16-mixed" else contextlib.nullcontext
    )
    size = dict(d_model=256, n_layers=4, n_heads=8, mlp_ratio=4.0, segment_len=256, summary_len=32)
    horizons = (4096, 4096 + 255, 32000, 32000 + 255)
    if args.quick:
        size = dict(d_model=64, n_layers=2, n_heads=4, mlp_ratio=4.0, segment_len=64, summary_len=8)
        args.steps, horizons = 512, (512, 512 + 63, 4032, 4032 + 63)
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    memo = MemoMemory(**size).to(device).eval()  # eval: fixed l_seg so both paths do the same work
    x = torch.randn(args.batch, args.steps, size["d_model"], device=device)
    seg, summ = size["segment_len"], size["summary_len"]

    fct_size = {k: v for k, v in size.items() if k not in ("segment_len", "summary_len")}
    fct = FullContextMemory(**fct_size).to(device).eval()

    def fwd_bwd(path):
        def run():
            model = fct if path == "fct" else memo
            model.zero_grad(set_to_none=True)
            with autocast():
                if path == "cached":
                    out = memo.forward_sequence(x, segment_len=seg)
                elif path == "naive":
                    out = naive_memo_sequence(memo, x, seg)
                else:
                    out = fct.forward_sequence(x)
            out.float().square().mean().backward()

        return run

    def flops(fn) -> int:
        with FlopCount() as counter:
            fn()
        return counter.total

    print(f"Memo sequence mode, forward+backward, B={args.batch}, T={args.steps}, size={size}, {device}, "
          f"{torch.get_num_threads()} torch thread(s), precision {precision}, torch {torch.__version__}")
    print("FLOPs counted with torch.utils.flop_counter's formulas plus the CPU attention kernel's (benchmarks/flops.py;")
    print("matrix products and attention, forward and backward; a causal call counts the pairs it computes);")
    print("'x fct time' / 'x fct flops': FCT's value over this path's (the speed-up, and the speed-up the FLOPs allow)")
    rows = []
    for path in ("cached", "naive", "fct"):
        run = fwd_bwd(path)
        rows.append((path, tokens_through_layers(args.steps, seg, summ, path == "naive") if path != "fct" else args.steps,
                     flops(run), timed(run, args.repeats, device)))
    naive_time, (_, _, fct_flops, fct_time) = rows[1][3], rows[2]
    print(f"{'path':<8} {'tokens':>8} {'GFLOP':>8} {'seconds':>9} {'GFLOP/s':>8} {'x naive':>8} {'x fct time':>10} "
          f"{'x fct flops':>11}")
    for path, tokens, n_flops, seconds in rows:
        print(f"{path:<8} {tokens:>8} {n_flops / 1e9:>8.1f} {seconds:>9.3f} {n_flops / seconds / 1e9:>8.1f} "
              f"{naive_time / seconds:>7.2f}x {fct_time / seconds:>9.2f}x {fct_flops / n_flops:>10.2f}x")
    side = 1024 if device.type == "cpu" else 8192  # large enough to reach a GPU's rate
    a = torch.randn(side, side, device=device, dtype=torch.bfloat16 if precision == "bf16-mixed" else torch.float32)
    matmul = timed(lambda: a @ a, 5, device)
    print(f"matrix product rate ({side}^3, {a.dtype}, same run): {2 * side**3 / matmul / 1e9:.1f} GFLOP/s")

    element = 2 if precision == "bf16-mixed" else 4  # the cache holds the dtype of the keys written
    print(f"\nStep-mode cache per row ({'bfloat16' if element == 2 else 'float32'}), Memo vs a full-context cache of t tokens")
    per_token = 2 * size["n_layers"] * size["d_model"] * element
    print(f"{'steps':>7} {'memo tokens':>12} {'memo MiB':>9} {'alloc MiB':>10} {'full MiB':>9} {'held ratio':>10} "
          f"{'alloc ratio':>11}")
    with torch.no_grad(), autocast():
        for t in horizons:
            memo.refresh(torch.randn(1, t, size["d_model"], device=device))
            tokens = int(memo.memory_tokens()[0])
            memo_bytes, alloc, full_bytes = memo.cache_nbytes(), memo.cache_allocated_nbytes(), t * per_token
            assert tokens == summ * (t // seg) + t % seg
            print(f"{t:>7} {tokens:>12} {memo_bytes / 2**20:>9.2f} {alloc / 2**20:>10.2f} {full_bytes / 2**20:>9.2f} "
                  f"{full_bytes / memo_bytes:>9.2f}x {full_bytes / alloc:>10.2f}x")


if __name__ == "__main__":
    main()

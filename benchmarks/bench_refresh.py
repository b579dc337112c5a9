"""Peak memory of ``refresh`` and ``encode_prefix`` against what they build, per memory and trial length.

    python benchmarks/bench_refresh.py                                   # the paper's model size, batch 16
    python benchmarks/bench_refresh.py --lengths 4096 16384 --batch 4 --d-model 64 --heads 2
    python benchmarks/bench_refresh.py --device cuda --lengths 2048 8192 32768   # bfloat16 autocast there

The peak is the most bytes of tensor storage the call held at once beyond what existed before it, counted
from the allocations and frees ``torch.profiler`` records (``profile_memory=True``): exact and repeatable,
unlike a process's resident set size. *cache* is the storage of the cache built (allocated, not just held),
*outputs* the ``[B, t, D]`` that ``refresh`` returns (``encode_prefix`` returns none). Prints a Markdown table.
On CUDA the peak is the caching allocator's (``torch.cuda.max_memory_allocated`` beyond what was allocated
before the call), and the calls run under ``torch.autocast(bfloat16)`` unless ``--precision 32``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_memo.nn.registry import make_memory  # noqa: E402
from tests.nn.spy import peak_bytes  # noqa: E402

VARIANTS = {
    "fct": ("fct", {}),
    "fct-window1024": ("fct", dict(window=1024)),
    "memo": ("memo", {}),
    "memo-stream768": ("memo", dict(max_memory_tokens=768)),
    "rmt": ("rmt", {}),
}


def device_peak_bytes(fn, device: torch.device) -> tuple[int, object]:
    """:func:`peak_bytes` on the CPU; on CUDA the allocator's peak beyond what was allocated before ``fn()``."""
    if device.type != "cuda":
        return peak_bytes(fn)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--mlp-ratio", type=float, default=4.0)
    parser.add_argument("--segment-len", type=int, default=256)
    parser.add_argument("--summary-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default=None, help="default: bf16-mixed on cuda, else 32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32")
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16-mixed" else contextlib.nullcontext
    )
    print(f"batch {args.batch}, d_model {args.d_model}, {args.layers} layers, {args.heads} heads, MLP ratio "
          f"{args.mlp_ratio:g}, l_seg {args.segment_len}, l_sum {args.summary_len}, {device}, precision {precision}, "
          f"torch {torch.__version__}")
    print("| memory | t | cache | outputs | refresh peak | / (cache + outputs) | encode_prefix peak | / cache |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    mib = 2**20
    for variant in args.memories:
        name, kwargs = VARIANTS[variant]
        if name != "fct":
            kwargs = dict(kwargs, segment_len=args.segment_len, summary_len=args.summary_len)
        torch.manual_seed(0)
        memory = make_memory(name, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                             mlp_ratio=args.mlp_ratio, **kwargs).to(device).eval()
        for t in args.lengths:
            x = torch.randn(args.batch, t, args.d_model, device=device)
            with autocast():
                refresh, out = device_peak_bytes(lambda: memory.refresh(x), device)
                encode, cache = device_peak_bytes(lambda: memory.encode_prefix(x), device)
            built, outputs = cache.allocated_nbytes(), out.numel() * out.element_size()
            del out, cache
            print(f"| {variant} | {t:,} | {built / mib:.1f} MiB | {outputs / mib:.1f} MiB | {refresh / mib:.1f} MiB | "
                  f"{refresh / (built + outputs):.2f} | {encode / mib:.1f} MiB | {encode / built:.2f} |", flush=True)


if __name__ == "__main__":
    main()

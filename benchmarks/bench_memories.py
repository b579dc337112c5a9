"""Cache bytes per row and step-mode latency vs horizon for every memory, in one table (ratios vs FCT).

Reference size (4 layers, 8 heads, d 256, MLP 1024; Memo/RMT l_seg 256, l_sum 32), batch 16, float32.
Memories: memo, fct, rmt, streaming memo (``max_memory_tokens=768``: 24 summaries + one segment ~ the
paper's 1,024-token budget), streaming fct (``window=6000``, the paper's budget), gru (4 layers).

What is measured, per memory and horizon H (steps of one trial so far):

* **cache/row**: ``cache_nbytes() / batch`` after H steps -- Memo ``l_sum*floor(H/l_seg) + H mod l_seg``
  tokens (streaming: memory capped), RMT ``l_sum + H mod l_seg``, FCT ``H`` (streaming: ``window``),
  each token ``2 * n_layers * d * 4`` bytes; GRU its hidden state.
* **step**: median wall time of one ``step()`` of the whole batch over ``--steps`` steps taken from the
  state at H (after one untimed warm-up step). The horizons are multiples of ``l_seg``, so these steps
  are ordinary ones: Memo's/RMT's once-per-segment summary write (and streaming Memo's eviction) and
  streaming FCT's block eviction (every ``evict_block=256`` steps) are not among them.

Reaching H by stepping (or by ``refresh()``, which is ``O(H^2)`` for FCT) takes far too long on a small
CPU, so by default each cache is *filled*: every row gets random keys/values of exactly the shape the
memory holds at H (Memo/RMT: memory plus current segment), which is all a step's cost depends on; the
GRU's state has the same size at every H. ``--exact`` builds the state with ``refresh()`` on random
history instead (the faithful route, for a GPU). ``--quick`` runs small horizons and batch and checks
that the filled caches have the same sizes as refreshed ones.

    python benchmarks/bench_memories.py [--quick] [--exact] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import torch

from lightning_memo.nn import make_memory
from lightning_memo.nn import FullContextMemory, GRUMemory, MemoMemory, RMTMemory, SequenceMemory

REFERENCE = dict(d_model=256, n_layers=4, n_heads=8, mlp_ratio=4.0)
SEGMENTS = dict(segment_len=256, summary_len=32)
MEMORIES = {
    "memo": ("memo", {**REFERENCE, **SEGMENTS}),
    "fct": ("fct", REFERENCE),
    "rmt": ("rmt", {**REFERENCE, **SEGMENTS}),
    "memo-stream768": ("memo", {**REFERENCE, **SEGMENTS, "max_memory_tokens": 768}),
    "fct-stream6000": ("fct", {**REFERENCE, "window": 6000}),
    "gru": ("gru", {"d_model": 256, "n_layers": 4}),
}


def held_tokens(memory: SequenceMemory, H: int) -> tuple[int, int]:
    """(memory tokens, newest tokens) a Transformer memory holds per row after H steps of one trial."""
    cfg = memory.config
    if isinstance(memory, FullContextMemory):
        return 0, min(H, cfg.window or H)
    L, S = cfg.segment_len, cfg.summary_len
    if isinstance(memory, RMTMemory):
        return (S if H >= L else 0), H % L
    m = S * (H // L)
    if cfg.max_memory_tokens is not None and m > cfg.max_memory_tokens:  # whole summaries evicted
        m -= -(-(m - cfg.max_memory_tokens) // S) * S
    return m, H % L


def fill(memory: SequenceMemory, H: int, batch: int, spare: int) -> None:
    """Put ``memory`` in the state it has after H steps, with random contents (see the module doc)."""
    memory.reset_cache(batch)
    if isinstance(memory, GRUMemory):
        return  # fixed-size state
    m, n = held_tokens(memory, H)
    cache, cfg = memory.new_cache(batch), memory.config
    head_dim = cfg.d_model // cfg.n_heads
    like = next(memory.parameters())
    cache.reserve(m + n + spare, like)  # no regrowth while timing
    rows = torch.arange(batch, device=like.device)
    for layer in range(cfg.n_layers):
        kv = torch.randn(2, batch, cfg.n_heads, m + n, head_dim, dtype=like.dtype, device=like.device)
        cache.fill(rows, layer, kv[0], kv[1])
    cache.lengths.fill_(m + n)
    if isinstance(memory, MemoMemory):  # Memo and RMT: the first m tokens are memory
        cache.counters["memory"].fill_(m)
    elif cfg.position_policy == "grow":
        cache.offsets.fill_(H - n)
    memory.load_cache_state(cache)


def build(memory: SequenceMemory, H: int, batch: int, exact: bool, spare: int, device: str) -> None:
    if exact:
        memory.refresh(torch.randn(batch, H, memory.d_model, device=device))
    else:
        fill(memory, H, batch, spare)


def time_steps(memory: SequenceMemory, batch: int, steps: int, device: str) -> float:
    """Median seconds per step over ``steps`` steps (after one warm-up step)."""
    xs = torch.randn(steps + 1, batch, memory.d_model, device=device)
    times = []
    for i, x in enumerate(xs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        memory.step(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="horizons 256/1024, batch 4; check fill == refresh sizes")
    parser.add_argument("--exact", action="store_true", help="build each state with refresh() (slow on CPU)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per point")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--horizons", type=int, nargs="+", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (1: steadiest on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    horizons = args.horizons or ([256, 1024] if args.quick else [1024, 4096, 16384, 32768])
    batch = args.batch or (4 if args.quick else 16)
    torch.manual_seed(0)

    rows = {}  # (memory, H) -> (bytes per row, seconds per step)
    for label, (name, kwargs) in MEMORIES.items():
        memory = make_memory(name, **kwargs).to(args.device).eval()
        for H in horizons:
            build(memory, H, batch, args.exact, args.steps + 2, args.device)
            if args.quick and not args.exact:  # the filled cache has the refreshed one's size
                filled = memory.cache_nbytes()
                memory.refresh(torch.randn(batch, H, memory.d_model, device=args.device))
                assert memory.cache_nbytes() == filled, (label, H, memory.cache_nbytes(), filled)
                fill(memory, H, batch, args.steps + 2)
            nbytes = memory.cache_nbytes() / batch
            rows[label, H] = (nbytes, time_steps(memory, batch, args.steps, args.device))
            print(f"  {label:15s} H={H:6d}: {nbytes / 2**20:8.2f} MiB/row, {rows[label, H][1] * 1e3:8.2f} ms/step",
                  file=sys.stderr, flush=True)
        del memory
        gc.collect()

    threads = torch.get_num_threads() if args.device == "cpu" else args.device
    how = "refresh()" if args.exact else "filled cache"
    print(f"\nbatch {batch}, float32, {args.device} ({threads} threads), state at H: {how}; "
          f"median of {args.steps} steps. x = FCT's value / this memory's value.\n")
    header = f"| {'memory':15s} | {'H':>6s} | {'cache/row':>11s} | {'vs fct':>7s} | {'step ms':>8s} | {'vs fct':>7s} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for label in MEMORIES:
        for H in horizons:
            nbytes, sec = rows[label, H]
            fct_bytes, fct_sec = rows["fct", H]
            size = f"{nbytes / 2**20:.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"
            print(f"| {label:15s} | {H:6d} | {size:>11s} | {fct_bytes / nbytes:6.1f}x | {sec * 1e3:8.2f} | "
                  f"{fct_sec / sec:6.1f}x |")


if __name__ == "__main__":
    main()

"""Step-mode latency and cache bytes (held and allocated) vs horizon for every memory, with the floors
each step is measured against taken in the same run.

Reference size (4 layers, 8 heads, d 256, MLP 1024; Memo/RMT l_seg 256, l_sum 32), batch 16.
Memories: memo, fct, rmt, streaming memo (``max_memory_tokens=768``: 24 summaries + one segment ~ the
paper's 1,024-token budget), streaming fct (``window=6000``, the paper's budget), gru (4 layers).

Per memory and horizon H, the timed steps are steps ``H - steps/2 .. H + steps/2 - 1`` of one trial, so
at the default horizons (multiples of ``l_seg``) they straddle a segment end: **median** is an ordinary
step, **slowest** the one that also writes Memo's/RMT's summary (or evicts a streaming block when one
falls in the window). The state before them is either

* **stepped**: reached by real ``step()`` calls from an empty cache, so summary writes, evictions and
  storage growth all happened as in a rollout (used for H <= ``--step-max``), or
* **filled**: random keys/values of exactly the shape the memory holds there (memory plus current
  segment), storage reserved to that size plus the timed steps (so no timed step regrows it, and
  *alloc/held* of a filled row is not the growth policy's); what a step costs depends only on that shape. Stepping to
  32k on a small CPU takes hours (FCT's steps grow with t), so larger H are filled and labelled so.
  ``--both`` also fills at the stepped horizons, to show the two side by side.

Columns: bytes held and allocated per row (``cache_nbytes``, ``cache_allocated_nbytes``); the step
times; **bw floor**: the time to read once the keys/values the step attends to plus the weights (a
``sum`` over the cache's own storage and the parameters, timed interleaved with the steps, so both see
the same machine load); **x floor** = median step / bw floor; **x fct** = FCT's median step / this one.
A first table puts the step on an empty cache against the **weight-read floor** (reading the
parameters once) and the **matmul floor** (the model's linear layers alone on a batch-``B`` input).

    python benchmarks/bench_memories.py [--quick] [--threads N] [--device cuda] [--step-max H] [--both]

On CUDA the steps run under ``torch.autocast(bfloat16)`` (``--precision bf16-mixed``, the default
there; caches then hold bfloat16) and every horizon is stepped unless ``--step-max`` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from typing import Callable

import torch

from lightning_memo.nn import KVCache, MemoMemory, SequenceMemory, make_memory

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


class Clock:
    """Wall times that wait for the device (CUDA runs asynchronously)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def held_shape(memory: SequenceMemory, H: int) -> tuple[int, int, int]:
    """(memory tokens, newest tokens, position offset) a Transformer memory holds per row after H steps."""
    cfg = memory.config
    if not isinstance(memory, MemoMemory):  # FCT: the last min(H, window) steps (the refreshed layout)
        kept = min(H, cfg.window or H)
        return 0, kept, (H - kept if cfg.position_policy == "grow" else 0)
    L, S = cfg.segment_len, cfg.summary_len
    if type(memory) is not MemoMemory:  # RMT: the last summary only
        return (S if H >= L else 0), H % L, 0
    m = S * (H // L)
    offset = 0
    if cfg.max_memory_tokens is not None and m > cfg.max_memory_tokens:  # whole summaries evicted
        evicted = -(-(m - cfg.max_memory_tokens) // S) * S
        m -= evicted
        offset = evicted if cfg.position_policy == "grow" else 0
    return m, H % L, offset


def filled_cache(memory: SequenceMemory, H: int, batch: int, dtype: torch.dtype, device: str, spare: int) -> object:
    """A cache in the state of step H with random contents (see the module doc); storage: what is held
    plus ``spare`` slots and, for a segment memory, its summary queries, so that no timed step (a summary
    write included) regrows it."""
    cache = memory.new_cache(batch)
    if not isinstance(cache, KVCache):
        return cache  # GRU: a fixed-size state
    m, n, offset = held_shape(memory, H)
    cfg = memory.config
    like = torch.empty(0, dtype=dtype, device=device)
    queries = cfg.summary_len if isinstance(memory, MemoMemory) else 0
    cache.reserve(m + n + spare + queries, like)
    rows = torch.arange(batch, device=device)
    for layer in range(cfg.n_layers):
        kv = torch.randn(2, batch, cfg.n_heads, m + n, cfg.d_model // cfg.n_heads, dtype=dtype, device=device)
        cache.fill(rows, layer, kv[0], kv[1])
    cache.lengths.fill_(m + n)
    cache.offsets.fill_(offset)
    if "memory" in cache.counters:
        cache.counters["memory"].fill_(m)
    if "episode_step" in cache.counters:
        cache.counters["episode_step"].fill_(H)
    return cache


def read_floor(memory: SequenceMemory, cache: object) -> Callable[[], object]:
    """Reads once what a step must read: the keys/values of the held slots (the cache's own storage)
    and every parameter."""
    params = list(memory.parameters())

    def read() -> None:
        for p in params:
            p.sum()
        if isinstance(cache, KVCache) and cache.kv is not None:
            span = int(cache.lengths.max())
            window = getattr(memory.config, "window", None)
            first = 0 if window is None else max(0, span - window)
            cache.kv[..., first:span, :].sum()

    return read


def matmul_floor(memory: SequenceMemory, batch: int, device: str) -> Callable[[], object]:
    """The model's linear layers alone, on one token per row (what a step computes at the least)."""
    linears = [m for m in memory.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch, 1, m.in_features, device=device) for m in linears]
    if not linears:  # recurrent: the GRU's input and hidden products
        rnn = next(m for m in memory.modules() if isinstance(m, torch.nn.RNNBase))
        weights = [w for name, w in rnn.named_parameters() if name.startswith("weight")]
        inputs = [torch.randn(batch, w.shape[1], device=device) for w in weights]
        return lambda: [x @ w.T for x, w in zip(inputs, weights)]
    return lambda: [m(x) for m, x in zip(linears, inputs)]


def timed_steps(memory, cache, xs, clock, floor) -> tuple[list[float], list[float]]:
    """Step through ``xs [steps, B, D]`` against ``cache``, timing each step and, between steps, the floor."""
    steps, floors = [], []
    for x in xs:
        steps.append(clock(lambda: memory.step(x, cache=cache)))
        floors.append(clock(floor))
    return steps, floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="horizons 256/512, batch 4, stepped: a smoke run")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per point (straddling H)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--horizons", type=int, nargs="+", default=None)
    parser.add_argument("--memories", nargs="+", default=list(MEMORIES), choices=list(MEMORIES))
    parser.add_argument("--step-max", type=int, default=None, help="step (not fill) up to this H (cpu: 1024)")
    parser.add_argument("--both", action="store_true", help="also fill at the stepped horizons")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default=None, help="cuda: bf16-mixed")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (1: steadiest on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    precision = args.precision or ("bf16-mixed" if cuda else "32")
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    horizons = args.horizons or ([256, 512] if args.quick else [1024, 4096, 16384, 32768])
    batch = args.batch or (4 if args.quick else 16)
    step_max = args.step_max if args.step_max is not None else (max(horizons) if cuda or args.quick else 1024)
    clock = Clock(args.device)
    autocast = (
        (lambda: torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16))
        if precision == "bf16-mixed" else contextlib.nullcontext
    )
    torch.manual_seed(0)
    where = f"{args.device}, {torch.get_num_threads()} CPU threads, precision {precision}, batch {batch}"
    print(f"# bench_memories: {where}, torch {torch.__version__}", flush=True)

    empty, rows = {}, []
    for label in args.memories:
        name, kwargs = MEMORIES[label]
        memory = make_memory(name, **kwargs).to(args.device).eval()
        d, half = memory.d_model, args.steps // 2
        with autocast():
            cache = memory.new_cache(batch)  # the empty-cache step: steps 0 .. steps-1
            xs = torch.randn(args.steps + 1, batch, d, device=args.device)
            memory.step(xs[0], cache=memory.new_cache(batch))  # warm-up
            steps, weights = timed_steps(memory, cache, xs[1:], clock, read_floor(memory, None))
            _, matmuls = timed_steps(memory, memory.new_cache(batch), xs[1:], clock, matmul_floor(memory, batch, args.device))
            empty[label] = tuple(statistics.median(v) for v in (steps, weights, matmuls))
            for H in horizons:
                states = []
                if H <= step_max:
                    states.append("stepped")
                if H > step_max or args.both:
                    states.append("filled")
                for state in states:
                    start = max(0, H - half)
                    if state == "stepped":
                        cache = memory.new_cache(batch)
                        for x in torch.randn(start, batch, d, device=args.device):
                            memory.step(x, cache=cache)
                    else:
                        cache = filled_cache(memory, start, batch, dtype, args.device, spare=args.steps)
                    held, alloc = cache.nbytes() / batch, cache.allocated_nbytes() / batch
                    xs = torch.randn(args.steps, batch, d, device=args.device)
                    steps, floors = timed_steps(memory, cache, xs, clock, read_floor(memory, cache))
                    point = (label, H, state, held, alloc, statistics.median(steps), max(steps), statistics.median(floors))
                    rows.append(point)
                    print(f"  {label:15s} H={H:6d} {state:7s}: {held / 2**20:8.2f} MiB/row held, {alloc / 2**20:8.2f} "
                          f"allocated, step {point[5] * 1e3:8.2f} ms, floor {point[7] * 1e3:8.2f} ms",
                          file=sys.stderr, flush=True)
                    del cache
        del memory

    print("\n## Step on an empty cache (steps 1..{}) against the weights\n".format(args.steps))
    print("| memory | step ms | weight-read floor ms | x | matmul floor ms | x |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, (step, weights, matmuls) in empty.items():
        print(f"| {label} | {step * 1e3:.2f} | {weights * 1e3:.3f} | {step / weights:.1f} | {matmuls * 1e3:.2f} | "
              f"{step / matmuls:.1f} |")

    fct = {(H, state): step for label, H, state, *_, step, _, _ in rows if label == "fct"}
    print(f"\n## Step at horizon H ({where}; median and slowest of {args.steps} steps straddling H)\n")
    print("| memory | H | state | held/row | alloc/row | alloc/held | step ms | slowest ms | bw floor ms | x floor "
          "| x fct |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, H, state, held, alloc, step, slowest, floor in rows:
        size = lambda b: f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.1f} KiB"  # noqa: E731
        vs_fct = fct.get((H, state))
        print(f"| {label} | {H} | {state} | {size(held)} | {size(alloc)} | {alloc / held:.2f} | {step * 1e3:.2f} | "
              f"{slowest * 1e3:.2f} | {floor * 1e3:.2f} | {step / floor:.2f} | "
              f"{'-' if vs_fct is None else f'{vs_fct / step:.1f}'} |")


if __name__ == "__main__":
    main()

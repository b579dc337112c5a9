"""Throughput of the full PPO loop (collection + partial updates + refresh), env steps per second.

    python benchmarks/bench_training.py                     # memo, fct, gru on Dark-Key-To-Door 9x9/50/500
    python benchmarks/bench_training.py --memories memo gru --trials 3 --num-envs 16
    python benchmarks/bench_training.py --learning 400      # + the learning curves (Memo vs. memoryless)
    python benchmarks/bench_training.py --d-model 256 --layers 4 --heads 8   # the paper's model size
    python benchmarks/bench_training.py --prefix-gradients true   # only the default (gradients through the prefix)
    python benchmarks/bench_training.py --memories memo --phases  # + where a trial goes (time and aten ops per phase)
    python benchmarks/bench_training.py --device cuda --d-model 256 --layers 4 --heads 8   # on a GPU, bf16-mixed

Each memory runs with ``ppo.prefix_gradients`` true (the default: every forward re-encodes the prefix with
gradients) and false (the prefix encoded once per update, the forwards over the window only), one after the
other, and the table gives the env steps/s ratio false/true (``--prefix-gradients true|false`` runs one).

Every memory runs at the same width (``--d-model``; ``--layers``/``--heads`` override the config's
depth and heads) and the same PPO settings, one after another in this process; the first trial of each
is a warm-up and is not timed. That first trial runs under a FLOP counter (``torch.utils.flop_counter``'s
formulas plus the CPU attention kernel's, ``benchmarks/flops.py``: matrix products and attention, forward and
backward, counted over the query/key pairs a kernel computes), so the table also shows the loop's achieved FLOP rate against the rate of a plain 1024^3 matrix
product measured in the same run: the fraction of its FLOP bound the loop reaches. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.flops import FlopCount  # noqa: E402
from lightning_memo.callbacks import TrialCallback  # noqa: E402
from lightning_memo.config import load_config  # noqa: E402
from lightning_memo.train import build, fit  # noqa: E402


PHASES = ("acting", "env steps", "collection, other", "partial updates", "last update", "refresh", "other")


class _TrialTimer(TrialCallback):
    """Wall time of each trial (training_step), the cache size at its end, the FLOPs of the first, and
    where a trial goes: seconds per phase over the timed trials, aten ops per phase in the first."""

    def __init__(self, cuda: bool = False) -> None:
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)  # CUDA runs asynchronously
        self.times: list[float] = []
        self.cache_bytes: list[float] = []
        self.flops = 0
        self._counter: FlopCount | None = None
        self.seconds = dict.fromkeys(PHASES, 0.0)  # summed over the timed trials
        self.ops = dict.fromkeys(PHASES, 0)  # the warm-up trial's

    def _time(self, owner, name: str, phase) -> None:
        """Wrap ``owner.name`` (an instance attribute shadows the method) to add its time and ops to a phase
        (``phase``: a name, or a function of the call's arguments giving one)."""
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            label = phase(*args, **kwargs) if callable(phase) else phase
            self.sync()
            ops, start = self._counter.ops if self._counter else 0, time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.sync()
                if self._counter is not None:
                    self.ops[label] += self._counter.ops - ops
                elif self.times:
                    self.seconds[label] += time.perf_counter() - start

        setattr(owner, name, timed)

    def _install(self, pl_module) -> None:
        collector = pl_module.collector
        self._time(collector, "_act", "acting")
        self._time(collector.env, "step", "env steps")
        self._time(pl_module, "collect", "collection, other")  # minus acting and env steps (below)
        self._time(pl_module, "update", lambda window_start, bootstrap=True: "partial updates" if bootstrap else "last update")
        self._time(pl_module, "refresh_cache", "refresh")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.times:  # the warm-up trial: count its FLOPs (the counter slows it; it is not timed)
            self._install(pl_module)
            self._counter = FlopCount()
            self._counter.__enter__()
        self.sync()
        self._t0 = time.perf_counter()

    def on_trial_end(self, trainer, pl_module, collector) -> None:
        self.cache_bytes.append(pl_module.policy.memory.cache_nbytes() / collector.num_envs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.sync()
        elapsed = time.perf_counter() - self._t0
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops, self.ops["other"], self._counter = self._counter.total, self._counter.ops, None
        else:
            self.seconds["other"] += elapsed
        self.times.append(elapsed)

    def breakdown(self) -> dict[str, tuple[float, int]]:
        """Phase -> (seconds per timed trial, aten ops in the warm-up trial); the phases add up to the trial."""
        seconds, ops = dict(self.seconds), dict(self.ops)
        for table in (seconds, ops):  # collect's own share excludes the acting and env steps inside it
            table["collection, other"] -= table["acting"] + table["env steps"]
            table["other"] -= sum(v for k, v in table.items() if k != "other")
        trials = max(1, len(self.times) - 1)
        return {k: (seconds[k] / trials, ops[k]) for k in PHASES}


def matmul_rate(device: str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """FLOP/s of a square matrix product on ``device`` now (best of ``repeats``): 1024^3 on a CPU, 8192^3 on a
    GPU (large enough to reach its rate), in ``dtype`` (bfloat16 for bf16-mixed runs)."""
    cuda = device.startswith("cuda")
    side = 8192 if cuda else 1024
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    a = torch.randn(side, side, device=device, dtype=dtype)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


def bench(memory: str, prefix_gradients: bool, args: argparse.Namespace, log_dir: str) -> dict:
    overrides = [
        f"memory={memory}", f"policy.d_model={args.d_model}", f"env.num_envs={args.num_envs}",
        "env.kwargs.size=9", "env.kwargs.episode_len=50", "env.trial_len=500", f"ppo.update_every={args.update_every}",
        f"ppo.num_trials={args.trials + 1}", f"ppo.prefix_gradients={str(prefix_gradients).lower()}",
        f"memories.memo.segment_len={args.segment_len}", f"memories.memo.summary_len={args.summary_len}",
        f"trainer.log_dir={log_dir}", "trainer.enable_progress_bar=false", "trainer.checkpoint_every=0",
        "trainer.loggers=[]", f"trainer.run_name={memory}-prefix-gradients-{str(prefix_gradients).lower()}",
    ]
    if memory != "none" and args.layers is not None:
        overrides.append(f"memories.{memory}.n_layers={args.layers}")
    if memory in ("memo", "ac", "rmt", "fct") and args.heads is not None:
        overrides.append(f"memories.{memory}.n_heads={args.heads}")
    cuda = args.device.startswith("cuda")
    if cuda:  # the env stays on the CPU; Lightning moves the policy and runs the trial under its precision
        overrides += ["trainer.accelerator=gpu", "trainer.devices=1"]
    overrides.append(f"trainer.precision={args.precision}")
    cfg = load_config("dark_key_to_door", overrides)
    timer = _TrialTimer(cuda)
    run = build(cfg, [timer])
    fit(run)
    policy = run.module.policy
    timed = timer.times[1:]  # the first trial warms up
    steps = cfg.env.num_envs * cfg.env.trial_len
    rate = matmul_rate(args.device, torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32)
    return {
        "gflops_per_s": timer.flops / (sum(timed) / len(timed)) / 1e9,
        "matmul_gflops_per_s": rate / 1e9,
        "memory": memory,
        "prefix_gradients": prefix_gradients,
        "params": sum(p.numel() for p in policy.parameters()),
        "steps_per_s": steps * len(timed) / sum(timed),
        "s_per_trial": sum(timed) / len(timed),
        "cache_kib": timer.cache_bytes[-1] / 1024,
        "phases": timer.breakdown(),
    }


def print_phases(rows: list[dict]) -> None:
    """Seconds per trial and aten ops per phase, and the time per op: where a trial goes."""
    print("\nWhere a trial goes: seconds per timed trial; aten ops (views and casts included, forward and backward) "
          "counted in the warm-up trial; microseconds per op")
    print("| memory | prefix_gradients | phase | s/trial | share | aten ops | us/op |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        total = sum(sec for sec, _ in r["phases"].values())
        for phase, (sec, ops) in r["phases"].items():
            per_op = f"{sec / ops * 1e6:.1f}" if ops > 0 else "-"
            print(f"| {r['memory']} | {str(r['prefix_gradients']).lower()} | {phase} | {sec:.3f} | {sec / total:.0%} | "
                  f"{ops:,} | {per_op} |")


def learning_curves(trials: int, log_dir: str, every: int = 25) -> None:
    from tests.scripts.learning import LEARNING_OVERRIDES, run

    curves = {name: run(name, trials, log_dir, extra=LEARNING_OVERRIDES) for name in ("memo", "none")}
    print(f"\nLearning curves, Dark-Key-To-Door 5x5/20/200 (mean over {every}-trial bins, 16 envs x 200 steps/trial)")
    print("| trials | memo return | memoryless return | memo ep0 len | memo ep5 len |")
    print("|---|---|---|---|---|")
    for start in range(0, trials, every):
        def mean(name, key):
            vals = [float(r[key]) for r in curves[name][start : start + every] if r.get(key)]
            return f"{sum(vals) / len(vals):.2f}" if vals else "-"

        print(f"| {start}-{start + every - 1} | {mean('memo', 'trial/return')} | {mean('none', 'trial/return')} | "
              f"{mean('memo', 'trial/episode_len/0')} | {mean('memo', 'trial/episode_len/5')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", nargs="+", default=["memo", "fct", "gru"])
    parser.add_argument("--trials", type=int, default=2, help="timed trials per memory (after one warm-up)")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=None, help="memory depth (default: the config's)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: the config's)")
    parser.add_argument("--update-every", type=int, default=100)
    parser.add_argument("--segment-len", type=int, default=50)
    parser.add_argument("--summary-len", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the policy; the env stays on the CPU)")
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default=None, help="default: bf16-mixed on cuda, else 32")
    parser.add_argument("--prefix-gradients", choices=("true", "false", "both"), default="both",
                        help="ppo.prefix_gradients of the runs (both: each memory with true, then false)")
    parser.add_argument("--phases", action="store_true", help="also print where a trial goes (time and aten ops per phase)")
    parser.add_argument("--learning", type=int, default=0, help="also run the learning curves for this many trials")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.precision = args.precision or ("bf16-mixed" if args.device.startswith("cuda") else "32")
    settings = {"true": [True], "false": [False], "both": [True, False]}[args.prefix_gradients]
    with tempfile.TemporaryDirectory() as log_dir:
        rows = [bench(m, pg, args, log_dir) for m in args.memories for pg in settings]
        print(f"\nFull PPO loop on Dark-Key-To-Door 9x9/50/500, {args.num_envs} envs, d_model={args.d_model}, "
              f"layers={args.layers or 'config'}, heads={args.heads or 'config'}, U={args.update_every}, "
              f"torch threads={torch.get_num_threads()}, {torch.__version__}, {args.device}, precision {args.precision}")
        print("| memory | prefix_gradients | params | env steps/s | vs. true | s/trial | cache KiB/env at trial end "
              "| GFLOP/s | matmul GFLOP/s | of FLOP bound |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        baseline = {r["memory"]: r["steps_per_s"] for r in rows if r["prefix_gradients"]}
        for r in rows:
            ratio = f"{r['steps_per_s'] / baseline[r['memory']]:.2f}x" if r["memory"] in baseline else "-"
            print(f"| {r['memory']} | {str(r['prefix_gradients']).lower()} | {r['params']:,} | {r['steps_per_s']:.0f} | "
                  f"{ratio} | {r['s_per_trial']:.2f} | {r['cache_kib']:.1f} | {r['gflops_per_s']:.2f} | "
                  f"{r['matmul_gflops_per_s']:.1f} | {r['gflops_per_s'] / r['matmul_gflops_per_s']:.1%} |")
        if args.phases:
            print_phases(rows)
        if args.learning:
            learning_curves(args.learning, log_dir)


if __name__ == "__main__":
    main()

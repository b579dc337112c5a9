"""Learning curves: a recipe on a named task with several memories and seeds.

    python benchmarks/learning.py cartpole                         # PPO, memo/gru/none, 200k env steps, seeds 0 1 2
    python benchmarks/learning.py repeat_previous --steps 500000 --seeds 0 1
    python benchmarks/learning.py cartpole --memories gru --workers 1 -- ppo.lr=3e-4   # extra overrides
    python benchmarks/learning.py dkd_amago                        # off-policy Memo vs memoryless, 1M env steps
    python benchmarks/learning.py dkd_amago --memories memo fct rmt none --seeds 0 1 2
    python benchmarks/learning.py dkd9_amago --seeds 0 --memories memo   # the paper's 9x9/50/500 setting

A task is a packaged config plus overrides (``TASKS``): the gymnasium tasks train PPO on ``gym``, the
``dkd*_amago`` tasks the off-policy recipe on ``dark_key_to_door`` (its ``amago`` section). Each run is
``examples/train.py config=<config>`` in its own process with one torch thread, at most ``--workers`` at
once, under ``<runs>/<task>/<memory>_s<seed>/v0`` (``--runs``, default ``runs/learning``; its log
``<task>/logs/<memory>_s<seed>.log`` there).
Runs that reached the budget are skipped and interrupted ones resume from their last checkpoint, so
re-running the same command finishes the job (an off-policy run resumes exactly: its replay is saved
beside the checkpoints). Writes ``curves.csv`` (mean, std, min and max over seeds of the trial return,
binned by env steps), ``summary.csv`` and ``curves.png`` under ``<out>/<task>/``, and prints the table:
mean trial return over the last 20% of the budget (episode return for CartPole; for POPGym the mean
episodic return, whose maximum is 1; for Dark-Key-To-Door the return of the whole trial).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Task:
    """A packaged config, its overrides, and the task's default budget and memories."""

    config: str
    overrides: tuple[str, ...]
    steps: int = 200_000
    memories: tuple[str, ...] = ("memo", "gru", "none")


POPGYM = ("env.trial_len=52", "ppo.update_every=26")
# the off-policy recipe stops at trainer.max_env_steps (--steps): nothing in it depends on num_trials
AMAGO = ("algo=amago", "amago.num_trials=1000000")
DKD9 = ("env.kwargs.size=9", "env.kwargs.episode_len=50", "env.trial_len=500")
TASKS = {
    "cartpole": Task("gym", ("env.name=CartPole-v1",)),
    "repeat_previous": Task("gym", ("env.name=popgym-RepeatPreviousEasy-v0", *POPGYM)),
    "count_recall": Task("gym", ("env.name=popgym-CountRecallEasy-v0", *POPGYM)),
    "minigrid_memory": Task("gym", ("env.name=MiniGrid-MemoryS7-v0", "env.trial_len=250", "ppo.update_every=50")),
    "dkd_amago": Task("dark_key_to_door", AMAGO, 1_000_000, ("memo", "none")),
    "dkd9_amago": Task("dark_key_to_door", (*AMAGO, *DKD9), 2_000_000, ("memo", "none")),
}
BINS = 40  # points of a curve
LAST = 0.2  # fraction of the budget the table averages over


def run_dir(runs: Path, task: str, memory: str, seed: int) -> Path:
    return runs / task / f"{memory}_s{seed}" / "v0"


def read_trials(path: Path) -> list[tuple[float, float]]:
    """(env_steps, trial return) per trial of a run's metrics.csv (empty when there is none)."""
    if not path.is_file():
        return []
    rows = list(csv.DictReader(open(path)))
    return [(float(r["env_steps"]), float(r["trial/return"])) for r in rows if r.get("env_steps") and r.get("trial/return")]


def launch(task: str, memory: str, seed: int, steps: int, runs: Path, extra: list[str]) -> str:
    """Train one run to ``steps`` env steps (skip when done, resume when interrupted); a status line."""
    directory = run_dir(runs, task, memory, seed)
    trials = read_trials(directory / "metrics.csv")
    if trials and trials[-1][0] >= steps:
        return f"{directory}: done ({trials[-1][0]:.0f} env steps)"
    resume = ["trainer.resume=last"] if (directory / "checkpoints" / "last.ckpt").is_file() else []
    spec = TASKS[task]
    args = [
        f"config={spec.config}", *spec.overrides, f"memory={memory}", f"seed={seed}", f"trainer.max_env_steps={steps}",
        "trainer.torch_threads=1",
        f"trainer.log_dir={runs / task}", f"trainer.run_name={memory}_s{seed}", "trainer.version=v0",
        "trainer.enable_progress_bar=false", "trainer.loggers=[csv]", *resume, *extra,
    ]
    log = runs / task / "logs" / f"{memory}_s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "a") as f:
        code = subprocess.call([sys.executable, str(ROOT / "examples" / "train.py"), *args], stdout=f, stderr=f, env=env)
    return f"{directory}: {'finished' if code == 0 else f'failed (exit {code}), see {log}'}"


def binned(trials: list[tuple[float, float]], steps: int) -> list[float | None]:
    """Mean trial return per env-step bin (None where a bin has no trial)."""
    sums, counts = [0.0] * BINS, [0] * BINS
    for s, r in trials:
        b = min(int(s / steps * BINS), BINS - 1)
        sums[b] += r
        counts[b] += 1
    return [sums[b] / counts[b] if counts[b] else None for b in range(BINS)]


def read_imported(path: Path | None) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """Per-trial rows (columns ``memory, seed, env_steps, return``) of runs trained by another script:
    ``{memory: {seed: [(env_steps, return), ...]}}`` (empty without a path)."""
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {}
    if path is not None:
        for r in csv.DictReader(open(path)):
            runs.setdefault(r["memory"], {}).setdefault(int(r["seed"]), []).append((float(r["env_steps"]), float(r["return"])))
    return runs


def summarise(task: str, memories: list[str], seeds: list[int], steps: int, runs: Path, out: Path,
              imported: Path | None = None) -> list[dict]:
    """Write curves.csv, summary.csv and curves.png under ``out/task``; return the summary rows."""
    curves, summary = [], []
    extra = read_imported(imported)
    memories = [*memories, *(f"{m} (imported)" for m in extra)]
    for memory in memories:
        if memory.endswith(" (imported)"):
            trials = extra[memory.removesuffix(" (imported)")]
        else:
            trials = {seed: read_trials(run_dir(runs, task, memory, seed) / "metrics.csv") for seed in seeds}
        finals = [statistics.mean(r for s, r in t if s > (1 - LAST) * steps) for t in trials.values()
                  if any(s > (1 - LAST) * steps for s, _ in t)]
        summary.append({
            "task": task, "memory": memory, "seeds": len(finals), "env_steps": steps,
            "last20_mean": statistics.mean(finals) if finals else float("nan"),
            "last20_std": statistics.pstdev(finals) if finals else float("nan"),
            "last20_min": min(finals, default=float("nan")), "last20_max": max(finals, default=float("nan")),
        })
        per_seed = [binned(t, steps) for t in trials.values() if t]
        for b in range(BINS):
            values = [c[b] for c in per_seed if c[b] is not None]
            if values:
                curves.append({
                    "memory": memory, "env_steps": (b + 1) * steps / BINS, "mean": statistics.mean(values),
                    "std": statistics.pstdev(values), "min": min(values), "max": max(values), "seeds": len(values),
                })
    for name, rows in (("curves.csv", curves), ("summary.csv", summary)):
        if rows:
            with open(out / task / name, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    plot(task, curves, memories, out / task / "curves.png")
    return summary


def plot(task: str, curves: list[dict], memories: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for memory in memories:
        rows = [r for r in curves if r["memory"] == memory]
        if rows:
            x = [r["env_steps"] for r in rows]
            ax.plot(x, [r["mean"] for r in rows], label=f"{memory} ({max(r['seeds'] for r in rows)} seeds)")
            ax.fill_between(x, [r["min"] for r in rows], [r["max"] for r in rows], alpha=0.2)
    ax.set(xlabel="env steps", ylabel="trial return (mean; band: min-max over seeds)", title=task)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--steps", type=int, help="env-step budget per run (default: the task's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--memories", nargs="+", help="default: the task's")
    parser.add_argument("--workers", type=int, default=2, help="runs at once (one torch thread each)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning", help="CSV and PNG")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "learning", help="run directories and logs")
    parser.add_argument("--summary-only", action="store_true", help="write the plot and table from existing runs")
    parser.add_argument("--import-runs", type=Path, help="CSV of per-trial rows (memory, seed, env_steps, return) "
                        "of runs trained by another script, tabled and plotted as '<memory> (imported)'")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides (after --)")
    args = parser.parse_args()
    spec = TASKS[args.task]
    args.steps = args.steps or spec.steps
    args.memories = args.memories or list(spec.memories)
    (args.out / args.task).mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        jobs = [(m, s) for s in args.seeds for m in args.memories]
        with ThreadPoolExecutor(max_workers=args.workers) as pool:  # threads only wait on the processes
            futures = [pool.submit(launch, args.task, m, s, args.steps, args.runs, args.overrides) for m, s in jobs]
            for future in futures:
                print(future.result(), flush=True)
    summary = summarise(args.task, args.memories, args.seeds, args.steps, args.runs, args.out, args.import_runs)
    print(f"\n{args.task}: mean trial return over the last {LAST:.0%} of {args.steps} env steps")
    print(f"{'memory':<16} {'seeds':>5} {'mean':>8} {'std':>7} {'min':>8} {'max':>8}")
    for r in summary:
        print(f"{r['memory']:<16} {r['seeds']:>5} {r['last20_mean']:>8.3f} {r['last20_std']:>7.3f} "
              f"{r['last20_min']:>8.3f} {r['last20_max']:>8.3f}")


if __name__ == "__main__":
    main()

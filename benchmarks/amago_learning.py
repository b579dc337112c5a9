"""Learning curves of the off-policy recipe (MemoAmago) on Dark-Key-To-Door, several seeds and memories.

    python benchmarks/amago_learning.py                                   # memo and memoryless, 3 seeds, 1M env steps
    python benchmarks/amago_learning.py --memories memo none fct rmt --seeds 0 1 2 --workers 2
    python benchmarks/amago_learning.py --size 9 --episode-len 50 --trial-len 500 --env-steps 2000000  # paper's
    python benchmarks/amago_learning.py --env-steps 20000 --seeds 0 --memories memo   # a smoke run (minutes)

Every (memory, seed) run is its own process with one torch thread (``--workers`` at a time); the env,
memory and policy come from the packaged ``dark_key_to_door`` config, the recipe from ``AmagoConfig``
with the options below. Writes ``<out>/curves.csv`` (one row per trial and run), ``<out>/curves.png``
(mean and min/max over seeds per memory, if matplotlib is installed) and prints the mean trial return
over the last 10% of each run as a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIELDS = ["memory", "seed", "trial", "env_steps", "return", "successes", "updates", "seconds"]


def run(job: tuple[str, int, dict]) -> list[dict]:
    """One training run; returns one row per trial."""
    memory, seed, opts = job
    import lightning.pytorch as pl
    import torch

    from lightning_memo.algos.amago import AmagoConfig, MemoAmago
    from lightning_memo.callbacks import TrialCallback
    from lightning_memo.config import load_config
    from lightning_memo.train import make_env, make_policy

    torch.set_num_threads(1)
    cfg = load_config("dark_key_to_door", [
        f"memory={memory}", f"seed={seed}", f"env.num_envs={opts['num_envs']}", f"env.trial_len={opts['trial_len']}",
        f"env.kwargs.size={opts['size']}", f"env.kwargs.episode_len={opts['episode_len']}",
        f"policy.d_model={opts['d_model']}",
    ])
    pl.seed_everything(seed, verbose=False)
    env = make_env(cfg)
    policy = make_policy(cfg, env)
    trials = math.ceil(opts["env_steps"] / (opts["num_envs"] * opts["trial_len"]))
    amago = AmagoConfig(
        trial_len=opts["trial_len"], update_every=opts["update_every"],
        updates_per_env_step=opts["updates_per_env_step"],
        batch_size=opts["batch_size"], replay_capacity=opts["replay_capacity"], reward_scale=opts["reward_scale"],
        head_hidden=opts["head_hidden"], lr=opts["lr"], eps_anneal_steps=opts["eps_anneal_steps"], num_trials=trials,
        save_replay=False,
    )
    module = MemoAmago(policy, env, amago, seed=seed)
    rows: list[dict] = []
    start = time.perf_counter()

    class Record(TrialCallback):
        def on_trial_end(self, trainer, m, collector):
            metrics = m.last_trial or {}
            rows.append({
                "memory": memory, "seed": seed, "trial": m.trial_index, "env_steps": m.env_steps,
                "return": metrics.get("return", float("nan")), "successes": metrics.get("successes", float("nan")),
                "updates": m.num_updates, "seconds": round(time.perf_counter() - start, 1),
            })
            if m.trial_index % 25 == 0 or m.trial_index == trials:
                recent = [r["return"] for r in rows[-25:]]
                print(f"[{memory} seed {seed}] trial {m.trial_index}/{trials}, {m.env_steps} env steps, "
                      f"return (last 25) {sum(recent) / len(recent):.1f}, {rows[-1]['seconds']:.0f}s", flush=True)

    trainer = pl.Trainer(
        max_epochs=trials, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
    )
    trainer.fit(module)
    return rows


def _run_rows(rows: list[dict], memory: str, seed: int) -> list[dict]:
    """The rows of one run, in trial order."""
    return sorted((r for r in rows if r["memory"] == memory and r["seed"] == seed), key=lambda r: r["trial"])


def plot(rows: list[dict], path: Path, title: str, window: int) -> bool:
    """Mean (line) and min/max (band) over seeds of the smoothed trial return, per memory."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for memory in dict.fromkeys(r["memory"] for r in rows):
        seeds = sorted({r["seed"] for r in rows if r["memory"] == memory})
        curves = []
        for seed in seeds:
            run_rows = _run_rows(rows, memory, seed)
            returns = np.array([r["return"] for r in run_rows], dtype=float)
            kernel = np.ones(min(window, len(returns))) / min(window, len(returns))
            curves.append((np.array([r["env_steps"] for r in run_rows]), np.convolve(returns, kernel, mode="valid")))
        n = min(len(c[1]) for c in curves)
        steps, ys = curves[0][0][-n:], np.stack([c[1][:n] for c in curves])
        ax.plot(steps, ys.mean(0), label=f"{memory} ({len(seeds)} seeds)")
        ax.fill_between(steps, ys.min(0), ys.max(0), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"trial return (mean of {window} trials)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--memories", nargs="+", default=["memo", "none"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--env-steps", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one torch thread each)")
    p.add_argument("--size", type=int, default=5)
    p.add_argument("--episode-len", type=int, default=20)
    p.add_argument("--trial-len", type=int, default=200)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--update-every", type=int, default=50)
    p.add_argument("--updates-per-env-step", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--replay-capacity", type=int, default=2000)
    p.add_argument("--reward-scale", type=float, default=100.0)
    p.add_argument("--head-hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eps-anneal-steps", type=int, default=500_000)
    p.add_argument("--smooth", type=int, default=20, help="trials per point of the plotted curve")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/amago_dark_key_to_door"))
    args = p.parse_args(argv)
    opts = {k: v for k, v in vars(args).items() if k not in ("memories", "seeds", "workers", "out", "smooth")}
    jobs = [(m, s, opts) for m in args.memories for s in args.seeds]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with mp.get_context("spawn").Pool(min(args.workers, len(jobs))) as pool:
        for result in pool.imap_unordered(run, jobs):
            rows += result
            with open(args.out / "curves.csv", "w", newline="") as f:  # rewritten after every finished run
                writer = csv.DictWriter(f, FIELDS)
                writer.writeheader()
                writer.writerows(rows)
    title = f"MemoAmago, Dark-Key-To-Door {args.size}x{args.size}/{args.episode_len}/{args.trial_len}"
    png = args.out / "curves.png"
    drawn = plot(rows, png, title, args.smooth)
    print(f"curves: {args.out / 'curves.csv'}" + (f", {png}" if drawn else " (no matplotlib: no PNG)"))
    print("\n| memory | seeds | env steps | mean trial return, last 10% of trials |\n|---|---|---|---|")
    for memory in args.memories:
        finals = []
        for seed in args.seeds:
            run_rows = _run_rows(rows, memory, seed)
            tail = run_rows[-max(1, len(run_rows) // 10):]
            finals.append(sum(r["return"] for r in tail) / len(tail))
        mean = sum(finals) / len(finals)
        spread = (sum((f - mean) ** 2 for f in finals) / len(finals)) ** 0.5
        print(f"| {memory} | {len(finals)} | {args.env_steps} | {mean:.1f} ± {spread:.1f} |")


if __name__ == "__main__":
    main()

"""Environment steps per second: gymnasium classes vs batched TorchRL envs, both tasks, N = 1, 16, 256.

* **gymnasium**: ``gymnasium.vector.SyncVectorEnv`` of N ``DarkKeyToDoorGym`` / ``ObjNavGridGym``
  (each the batched env with one row behind the gymnasium API, stepped one after another;
  auto-reset in the same step): what a library that loops over gymnasium envs gets.
* **batched**: one ``DarkKeyToDoorEnv`` / ``ObjNavGridEnv`` with ``num_envs=N`` stepped through
  ``step_and_maybe_reset`` (TorchRL's collector loop; auto-reset at the trial end).

Each cell times one whole trial (``trial_len`` steps of uniformly random actions after an untimed
reset), so it includes exactly one trial reset per env: new tasks for Dark-Key-To-Door, new houses
with their BFS distance maps for ObjNavGrid. Steps/s counts env steps: ``N * trial_len / seconds``.
Configurations: the paper's Dark-Key-To-Door (9x9, episodes 50, trials 500) and the default ObjNavGrid
(17x17 houses, 8 categories, episodes 100, trials 1000).

    python benchmarks/bench_envs.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_memo.envs import (  # noqa: E402
    DarkKeyToDoorEnv,
    DarkKeyToDoorGym,
    ObjNavGridEnv,
    ObjNavGridGym,
)

TASKS = {
    "Dark-Key-To-Door": (DarkKeyToDoorGym, DarkKeyToDoorEnv, dict(size=9, episode_len=50, trial_len=500), 5),
    "ObjNavGrid": (ObjNavGridGym, ObjNavGridEnv, dict(trial_len=1000), 4),
}


def gym_steps_per_second(cls, config: dict, n: int, num_actions: int, seed: int = 0) -> float:
    envs = gym.vector.SyncVectorEnv(
        [lambda: cls(**config)] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    envs.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, num_actions, (config["trial_len"], n))
    start = time.perf_counter()
    for a in actions:
        envs.step(a)
    return n * len(actions) / (time.perf_counter() - start)


def batched_steps_per_second(cls, config: dict, n: int, num_actions: int, seed: int = 0) -> float:
    env = cls(num_envs=n, seed=seed, **config)
    td = env.reset()
    actions = torch.randint(0, num_actions, (config["trial_len"], n), generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for a in actions:
        td["action"] = a
        _, td = env.step_and_maybe_reset(td)
    return n * len(actions) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short trials (a smoke run; numbers not comparable)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (1: steadiest on a shared box)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 256])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (gym_cls, batched_cls, config, num_actions) in TASKS.items():
        if args.quick:
            config = {**config, "trial_len": 50}
        for n in args.sizes:
            g = gym_steps_per_second(gym_cls, config, n, num_actions)
            b = batched_steps_per_second(batched_cls, config, n, num_actions)
            rows.append((name, n, g, b))
            print(f"{name} N={n}: gymnasium {g:,.0f}/s, batched {b:,.0f}/s", flush=True)
    print(f"\nenv steps per second, one trial per cell, CPU, {torch.get_num_threads()} torch thread(s)\n")
    print("| task             |   N | gymnasium steps/s | batched steps/s | batched / gymnasium |")
    print("|------------------|----:|------------------:|----------------:|--------------------:|")
    for name, n, g, b in rows:
        print(f"| {name:16s} | {n:3d} | {g:17,.0f} | {b:15,.0f} | {b / g:18.1f}x |")


if __name__ == "__main__":
    main()

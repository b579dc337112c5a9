"""The learning check: PPO on Dark-Key-To-Door 5x5 / 20 / 200 with Memo vs. a memoryless core.

    python tests/scripts/learning.py memo 400 /tmp/learn     # memory, trials, log dir [, key=value ...]

Writes ``<log dir>/<memory>/metrics.csv`` and prints one line per trial. Used by
tests/algos/test_learning.py (``pytest -m learning``) and benchmarks/bench_training.py.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from lightning_memo.config import load_config
from lightning_memo.train import train

# A one-layer Memo (4 segments of 50 steps per trial, 4 summary tokens), two updates per trial (one
# partial + refresh, one full). Measured on this task (docs/training.md): 16 minibatches of one env each
# with a constant LR (128 optimiser steps per trial instead of 8) and gamma = 0.9 learned the most;
# with GAE cut at inner episodes, gamma is what makes a shorter episode (the payoff of memory) worth more.
LEARNING_OVERRIDES = [
    "memories.memo.n_layers=1", "memories.memo.segment_len=50", "memories.memo.summary_len=4",
    "ppo.update_every=100", "ppo.num_minibatches=16", "ppo.lr=3e-4", "ppo.min_lr_ratio=1.0", "ppo.gamma=0.9",
    "ppo.cut_episodes=true", "ppo.normalize_advantages=true",
]


def run(memory: str, num_trials: int, log_dir: str, seed: int = 0, extra: list[str] | None = None) -> list[dict]:
    """Train ``memory`` (``"none"``: the memoryless control) for ``num_trials``; returns the per-trial rows."""
    overrides = [
        f"ppo.num_trials={num_trials}", f"trainer.log_dir={log_dir}", f"trainer.run_name={memory}",
        "trainer.enable_progress_bar=false", "trainer.torch_threads=1", "trainer.checkpoint_every=0",
        "trainer.loggers=[csv]", f"seed={seed}", *(extra or []),
    ]
    train(load_config("dark_key_to_door", [f"memory={memory}", *overrides]))
    return read_rows(log_dir, memory)


def read_rows(log_dir: str | Path, memory: str) -> list[dict]:
    """The per-trial rows (those with a ``trial/return``) of the latest run of ``memory`` under ``log_dir``."""
    runs = sorted((Path(log_dir) / memory).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    with open(runs[-1] / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("trial/return")]


if __name__ == "__main__":
    name, trials, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    for row in run(name, trials, out, extra=[*LEARNING_OVERRIDES, *sys.argv[4:]]):
        print(row["step"], row["trial/return"], row.get("trial/episode_len/0"), row.get("trial/episode_len/3"))

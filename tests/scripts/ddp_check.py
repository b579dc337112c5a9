"""Launched by tests/test_examples.py as ``fabric run --devices 2 --accelerator cpu tests/scripts/ddp_check.py
out=DIR key=value ...``: trains the Dark-Key-To-Door config, then each rank saves its weights and counters."""

import sys
from pathlib import Path

import torch

from lightning_memo.config import load_config
from lightning_memo.train import train

args = sys.argv[1:]
out = Path(next(a for a in args if a.startswith("out=")).split("=", 1)[1])
cfg = load_config("dark_key_to_door", [a for a in args if not a.startswith("out=")])
trainer, module = train(cfg)
torch.save(
    {
        "state_dict": module.policy.state_dict(),
        "trial_index": module.trial_index,
        "env_steps": module.env_steps,
        "world_size": trainer.world_size,
        "first_obs": module.collector.history["observation"][:, 0].clone(),
    },
    out / f"rank{trainer.global_rank}.pt",
)

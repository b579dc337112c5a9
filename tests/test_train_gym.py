"""Any registered gymnasium id through the config and CLI route: CartPole, a POPGym id, bad ids and kwargs."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_memo.config import ConfigError, load_config
from lightning_memo.train import build, train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "env.num_envs=2", "ppo.epochs=1", "ppo.num_minibatches=1", "policy.d_model=16", "policy.hidden=16",
    "memories.memo.segment_len=10", "trainer.torch_threads=1", "trainer.enable_progress_bar=false",
    "trainer.max_env_steps=150",
]


def test_cartpole_from_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples/train.py"), "env.name=CartPole-v1", *TINY, f"trainer.log_dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "gym" / "version_0" / "metrics.csv")))
    steps = [float(r["env_steps"]) for r in rows if r.get("env_steps")]
    returns = [float(r["trial/return"]) for r in rows if r.get("trial/return")]
    assert steps[-1] >= 150 and len(steps) == len(returns) >= 2  # the budget stops the run after that trial
    assert all(r >= 8 for r in returns)  # CartPole pays 1 per step; no episode is shorter than 8 steps


def test_popgym_id_trains_and_the_control_reads_no_previous_step(tmp_path):
    cfg = load_config("gym", [
        "env.name=popgym-RepeatPreviousEasy-v0", "env.trial_len=52", "ppo.update_every=26", "memory=none", *TINY,
        f"trainer.log_dir={tmp_path}",
    ])
    trainer, module = train(cfg)
    assert module.policy.observation_keys == ["observation", "trial_time", "reset_flag"]
    assert module.env_steps >= 150 and module.trial_index >= 2
    assert module.collector.t == 51  # the episode's 51 steps, then every row has ended
    assert -1.0 <= float(trainer.callback_metrics["trial/return"]) <= 1.0  # POPGym returns lie in [-1, 1]


@pytest.mark.parametrize("memory, previous_step, reads", [("none", True, True), ("gru", None, True), ("gru", False, False)])
def test_previous_step_switch(memory, previous_step, reads, tmp_path):
    overrides = [f"memory={memory}", *TINY, f"trainer.log_dir={tmp_path}"]
    if previous_step is not None:
        overrides.append(f"policy.previous_step={str(previous_step).lower()}")
    run = build(load_config("gym", overrides))
    keys = run.module.policy.observation_keys
    assert ("prev_action" in keys and "prev_reward" in keys) == reads and "active" not in keys


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["env.name=CartPol-v1"], "CartPole-v1"),
        (["env.kwargs.mode=episodes"], "env.kwargs.mode"),
        (["trainer.max_env_steps=0"], "trainer.max_env_steps"),
        (["policy.previous_step=false", "policy.observation_keys=[observation,prev_action]"], "policy.previous_step"),
    ],
)
def test_bad_gym_settings_name_the_fix(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_config("gym", overrides)


def test_unknown_make_argument_fails_before_training(tmp_path):
    cfg = load_config("gym", [*TINY, "env.kwargs.no_such_option=1", f"trainer.log_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="env.kwargs"):
        train(cfg)
    assert not (tmp_path / "gym").exists()

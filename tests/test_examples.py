"""The example scripts: CLI overrides, memory by name, bad configs, resume, two-process DDP via `fabric run`."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_memo.config import ConfigError, load_config
from lightning_memo.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "env.num_envs=2", "env.trial_len=40", "env.kwargs.episode_len=10", "ppo.update_every=20", "ppo.epochs=1",
    "ppo.num_minibatches=1", "ppo.num_trials=2", "policy.d_model=16", "policy.hidden=16",
    "memories.memo.segment_len=8", "trainer.torch_threads=1", "trainer.enable_progress_bar=false",
]


def _run(args, tmp_path, launcher=(sys.executable,), timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_dark_key_to_door_cli(tmp_path):
    args = [*TINY, "trainer.enable_progress_bar=true", "trainer.video_every=2", f"trainer.log_dir={tmp_path}"]
    proc = _run([str(ROOT / "examples/dark_key_to_door.py"), *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "dark_key_to_door" / "version_0"  # the first run of this run name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert any(r.get("trial/return") for r in rows) and any(r.get("train/loss") for r in rows)
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert "env steps" in proc.stdout + proc.stderr  # the progress bar counts env steps
    assert list(run.glob("events.out.tfevents.*"))
    assert [p.name for p in (run / "videos").iterdir()] == ["trial_00000.gif"]  # every 2nd of 2 trials


def test_bad_config_on_the_command_line_fails_before_training(tmp_path):
    proc = _run([str(ROOT / "examples/dark_key_to_door.py"), "ppo.update_every=7", f"trainer.log_dir={tmp_path}"], tmp_path)
    assert proc.returncode != 0 and "ppo.update_every" in proc.stderr
    assert not (tmp_path / "dark_key_to_door").exists()


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["memory=nope"], "memory='nope'"),
        (["ppo.update_every=7"], "ppo.update_every"),
        (["ppo.trial_len=100"], "ppo.trial_len"),
        (["memories.memo.segment_len=0"], "memories.memo"),
        (["memories.memo.n_layer=2"], "memories.memo"),
        (["trainer.precision=fp8"], "trainer.precision"),
        (["trainer.loggers=[wandb]"], "trainer.loggers"),
        (["trainer.video_every=-1"], "trainer.video_every"),
        (["ppo.num_minibatches=4", "env.num_envs=2"], "ppo.num_minibatches"),
        (["unknown_key=1"], "unknown_key"),
        (["ppo.epochs=four"], "ppo.epochs"),
        (["env.name=atari"], "env.name"),
        (["memory"], "key=value"),
    ],
)
def test_bad_configs_name_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        load_config("dark_key_to_door", overrides)


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["env.kwargs.size=1"], "size"),
        (["env.kwargs.sizes=5"], "env.kwargs"),
        (["policy.observation_keys=[pixels]"], "pixels"),
    ],
)
def test_incompatible_env_and_policy_fail_before_training(overrides, named, tmp_path):
    cfg = load_config("dark_key_to_door", [*TINY, *overrides, f"trainer.log_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=named):
        train(cfg)
    assert not (tmp_path / "dark_key_to_door").exists()


def test_habitat_backend_without_habitat_names_it(tmp_path):
    try:
        import habitat  # noqa: F401

        pytest.skip("habitat-lab is installed here")
    except ImportError:
        pass
    cfg = load_config(
        "extobjnav", ["env.name=objnav_habitat", "env.kwargs.config=objectnav.yaml", f"trainer.log_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="habitat"):
        train(cfg)


def test_memory_by_name_and_resume(tmp_path):
    cfg = load_config("dark_key_to_door", [*TINY, "memory=gru", "ppo.num_trials=1", f"trainer.log_dir={tmp_path}"])
    _, first = train(cfg)
    assert type(first.policy.memory).__name__ == "GRUMemory" and first.trial_index == 1
    cfg = load_config("dark_key_to_door", [*TINY, "memory=gru", "trainer.resume=last", f"trainer.log_dir={tmp_path}"])
    _, resumed = train(cfg)
    assert resumed.trial_index == 2 and resumed.env_steps == 2 * first.env_steps


def test_extobjnav_grid_example(tmp_path):
    tiny = [o for o in TINY if not o.startswith("env.kwargs")]
    cfg = load_config("extobjnav", [*tiny, "env.kwargs.episode_len=20", "env.kwargs.size=9", f"trainer.log_dir={tmp_path}"])
    _, module = train(cfg)
    assert module.trial_index == 2 and "return" in module.last_trial


def test_two_process_ddp_through_fabric_run(tmp_path):
    fabric = Path(sys.executable).parent / "fabric"
    proc = _run(
        ["run", "--devices", "2", "--accelerator", "cpu", str(ROOT / "tests/scripts/ddp_check.py"),
         f"out={tmp_path}", *TINY, "ppo.num_minibatches=2", "ppo.grad_accumulation=2",  # exercises no_sync
         f"trainer.log_dir={tmp_path}"],
        tmp_path,
        launcher=(str(fabric),),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["trial_index"] == r1["trial_index"] == 2  # both ranks trained every trial
    assert r0["env_steps"] == r1["env_steps"] == 2 * 2 * 2 * 40  # counted over both ranks
    assert not torch.equal(r0["first_obs"], r1["first_obs"])  # each rank its own env seeds
    for k, v in r0["state_dict"].items():
        torch.testing.assert_close(v, r1["state_dict"][k], rtol=0, atol=0, msg=k)  # gradients averaged

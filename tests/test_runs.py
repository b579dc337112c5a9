"""Run directories, resume, the command line's answers to bad input, a clean console, DDP of the example."""

import csv
import re
import sys
from pathlib import Path

import pytest
import torch

from lightning_memo.config import ConfigError, load_config
from lightning_memo.train import main, make_loggers, train
from tests.test_examples import ROOT, TINY, _run

EXAMPLE = str(ROOT / "examples/dark_key_to_door.py")


def _cfg(tmp_path, *overrides):
    return load_config("dark_key_to_door", [*TINY, "trainer.loggers=[csv]", f"trainer.log_dir={tmp_path}", *overrides])


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("trial/return")]


def test_each_run_its_own_version_and_resume_appends(tmp_path):
    train(_cfg(tmp_path, "ppo.num_trials=1"))
    train(_cfg(tmp_path, "ppo.num_trials=1", "memory=gru"))
    root = tmp_path / "dark_key_to_door"
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]
    saved = load_config(str(root / "version_1" / "config.yaml"))
    assert saved.memory == "gru" and saved.ppo.num_trials == 1  # the resolved config, loadable as is
    ckpt = torch.load(root / "version_1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["run_config"]["memory"] == "gru"

    # resume=last picks the newest run (gru) and continues it in its directory; more trials is a safe change
    trainer, module = train(_cfg(tmp_path, "ppo.num_trials=3", "memory=gru", "trainer.resume=last"))
    assert module.trial_index == 3
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]  # no new directory
    assert len(_rows(root / "version_1")) == 3  # the first trial's row is kept, two appended
    assert len(_rows(root / "version_0")) == 1  # the other run is untouched
    assert sorted(p.name for p in (root / "version_1" / "checkpoints").iterdir()) == ["last.ckpt", "trial-epoch=2.ckpt"]


def test_resume_refuses_incompatible_settings_naming_the_keys(tmp_path):
    train(_cfg(tmp_path, "ppo.num_trials=1", "memory=gru"))
    with pytest.raises(ConfigError, match=r"memory: 'gru' -> 'memo'"):
        train(_cfg(tmp_path, "trainer.resume=last"))  # a Memo run must not load the GRU checkpoint
    with pytest.raises(ConfigError, match=r"policy.d_model: 16 -> 32"):
        train(_cfg(tmp_path, "memory=gru", "policy.d_model=32", "trainer.resume=last"))
    with pytest.raises(ConfigError, match=r"env.kwargs.size"):
        train(_cfg(tmp_path, "memory=gru", "env.kwargs.size=6", "trainer.resume=last"))
    # logging and trial-count changes are safe
    _, module = train(_cfg(tmp_path, "memory=gru", "trainer.resume=last", "trainer.checkpoint_every=2"))
    assert module.trial_index == 2


def test_bad_resume_values_name_the_file_and_the_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="no last.ckpt"):
        _cfg(tmp_path, "trainer.resume=last")  # nothing to resume: an error, not a silent fresh start
    train(_cfg(tmp_path, "ppo.num_trials=1"))
    last = tmp_path / "dark_key_to_door" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"did you mean 'last'\?.*last.ckpt"):
        _cfg(tmp_path, "trainer.resume=lats")  # at validation, listing what exists
    with pytest.raises(ConfigError, match=r"nope.ckpt.*last.ckpt"):
        _cfg(tmp_path, f"trainer.resume={tmp_path / 'nope.ckpt'}")
    corrupt = last.with_name("corrupt.ckpt")
    corrupt.write_bytes(last.read_bytes()[:2000])
    with pytest.raises(ConfigError, match=r"cannot read checkpoint .*corrupt.ckpt.*truncated.*last.ckpt"):
        train(_cfg(tmp_path, f"trainer.resume={corrupt}"))
    rows = _rows(last.parents[1])
    assert len(rows) == 1  # failed resumes lose nothing


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["trainer.max_epochs=3"], "ppo.num_trials"),
        (["trainer.gradient_clip_val=1.0"], "ppo.max_grad_norm"),
        (["trainer.accelerater=cpu"], "did you mean 'accelerator'"),
        (["trainer.precision=fp8"], "one of .*'bf16-mixed'"),
        (["trainer.log_every_n_steps=often"], "trainer.log_every_n_steps"),
        (["trainer.run_name=a/b"], "trainer.run_name"),
        (["ppo.refresh=maybe"], "ppo.refresh"),
        (["env.kwargs.dark=maybe"], "env.kwargs.dark='maybe' is not a valid dark_key_to_door dark; expected bool"),
        (["env.name=dark_key_to_dor"], "did you mean 'dark_key_to_door'"),
    ],
)
def test_trainer_and_strict_values_are_checked(tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named):
        _cfg(tmp_path, *overrides)


def test_log_dir_that_is_a_file_is_rejected(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="trainer.log_dir"):
        load_config("dark_key_to_door", [f"trainer.log_dir={tmp_path / 'file'}"])


def test_lightning_trainer_arguments_pass_through(tmp_path):
    trainer, _ = train(_cfg(tmp_path, "ppo.num_trials=1", "trainer.log_every_n_steps=5", "trainer.enable_model_summary=false"))
    assert trainer.log_every_n_steps == 5


def test_csv_only_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as in an install without it
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    cfg = load_config("dark_key_to_door", [f"trainer.log_dir={tmp_path}"])
    assert [type(lg).__name__ for lg in make_loggers(cfg, "version_0")] == ["AppendingCSVLogger"]
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        load_config("dark_key_to_door", ["trainer.loggers=[tensorboard]"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main("dark_key_to_door", [*TINY, f"trainer.log_dir={tmp_path}", "env.kwargs.sizes=5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: env.kwargs")
    with pytest.raises(ConfigError):
        main("dark_key_to_door", [*TINY, f"trainer.log_dir={tmp_path}", "env.kwargs.sizes=5", "--debug"])
    assert not (tmp_path / "dark_key_to_door").exists()


def test_cli_subprocess_one_line_and_debug_traceback(tmp_path):
    proc = _run([EXAMPLE, "trainer.resume=lats", f"trainer.log_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "trainer.resume='lats'" in proc.stderr
    proc = _run([EXAMPLE, "trainer.resume=lats", f"trainer.log_dir={tmp_path}", "--debug"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_clean_console(tmp_path):
    args = [*TINY, "ppo.num_trials=3", "trainer.enable_progress_bar=true", f"trainer.log_dir={tmp_path}"]
    proc = _run([EXAMPLE, *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, err = proc.stdout, proc.stderr
    run_dir = tmp_path / "dark_key_to_door" / "version_0"
    assert out.splitlines()[0] == f"run directory: {run_dir} (new run)"
    assert re.fullmatch(rf"3 trials, 240 env steps \(\d+/s\); last trial return [\d.]+; run directory {run_dir}", out.splitlines()[-1])
    assert "env steps: 100%" in err and "240/240" in err
    assert not re.search(r"-\d[\d.]*\s*(it|step)/s", err)  # no negative rates
    for noise in ("Epoch", "Tip", "GPU available", "deprecated", "Warning", "LeafSpec"):
        assert noise not in out + err, noise


def test_example_under_fabric_run(tmp_path):
    fabric = Path(sys.executable).parent / "fabric"
    proc = _run(["run", "--devices", "2", "--accelerator", "cpu", EXAMPLE, *TINY, f"trainer.log_dir={tmp_path}"],
                tmp_path, launcher=(str(fabric),), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "dark_key_to_door"
    assert [p.name for p in root.iterdir()] == ["version_0"]  # one run directory for both ranks
    assert len(_rows(root / "version_0")) == 2
    assert (root / "version_0" / "checkpoints" / "last.ckpt").exists() and (root / "version_0" / "config.yaml").exists()
    assert "320 env steps" in proc.stdout  # 2 trials x 2 envs x 40 steps x 2 ranks, summarised once

"""``algo=amago`` through the run config and the CLI: a tiny run, exact resume, refusals and clear errors,
the evaluation callback from ``trainer.eval_every``, and ``config_from_dict``."""

import csv

import pytest
import torch

from lightning_memo.algos import MemoAmago, MemoPPO
from lightning_memo.callbacks import CacheRefresh, EvaluationCallback
from lightning_memo.config import ConfigError, config_from_dict, load_config, to_dict
from lightning_memo.evaluate import evaluate
from lightning_memo.train import train
from tests.test_examples import ROOT, TINY, _run

AMAGO = [
    "algo=amago", "amago.update_every=20", "amago.updates_per_env_step=0.05", "amago.batch_size=2",
    "amago.head_hidden=16", "amago.head_layers=1", "amago.replay_capacity=8", "amago.eps_anneal_steps=400",
    "amago.num_trials=2",
]


def _cfg(tmp_path, *overrides):
    return load_config("dark_key_to_door", [*TINY, *AMAGO, "trainer.loggers=[csv]", f"trainer.log_dir={tmp_path}",
                                            *overrides])


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_packaged_config_holds_the_off_policy_recipe():
    cfg = load_config("dark_key_to_door", ["algo=amago"])
    a = cfg.amago
    assert cfg.algorithm is a and a.trial_len == cfg.env.trial_len == 200  # follows env.trial_len
    env = (cfg.env.num_envs, cfg.env.kwargs["size"], cfg.env.kwargs["episode_len"])
    assert env == (16, 5, 20) and cfg.policy.d_model == 64
    recipe = (a.update_every, a.updates_per_env_step, a.batch_size, a.replay_capacity, a.reward_scale, a.head_hidden,
              a.lr, a.eps_anneal_steps, a.num_trials)
    assert recipe == (50, 0.01, 16, 2000, 100.0, 64, 3e-4, 500_000, 313)
    assert a.num_trials * cfg.env.num_envs * cfg.env.trial_len >= 1_000_000
    assert load_config("dark_key_to_door").algo == "ppo"  # PPO stays the default


def test_cli_trains_amago_with_evaluation(tmp_path):
    args = [*TINY, *AMAGO, "trainer.eval_every=1", "trainer.enable_progress_bar=true", f"trainer.log_dir={tmp_path}"]
    proc = _run([str(ROOT / "examples/dark_key_to_door.py"), *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "dark_key_to_door" / "version_0"
    rows = _rows(run)
    for key in ("trial/return", "train/critic_loss", "train/actor_loss", "train/q_mean", "train/q_max",
                "train/td_target_mean", "eval/return", "eval/cache_bytes_per_env", "eval/episode_return/0"):
        assert any(r.get(key) for r in rows), key
    assert sum(bool(r.get("eval/return")) for r in rows) == 2  # every trial (eval_every=1) of 2
    assert "env steps" in proc.stdout + proc.stderr  # the env-step progress bar
    assert "LazyTensorStorage" not in proc.stdout + proc.stderr  # TorchRL's info lines stay quiet
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["run_config"]["algo"] == "amago" and ckpt["memo_amago"]["trial_index"] == 2
    assert [p.name for p in (run / "checkpoints" / "replay").iterdir()] == ["trial-2-rank0"]


def test_resumed_amago_run_matches_an_uninterrupted_one(tmp_path):
    _, reference = train(_cfg(tmp_path / "ref", "amago.num_trials=3"))
    assert isinstance(reference, MemoAmago) and reference.num_updates > 0
    _, first = train(_cfg(tmp_path / "run", "amago.num_trials=2"))  # stopped between trials, as a kill would
    assert any(isinstance(cb, CacheRefresh) for cb in first.trainer.callbacks)
    _, resumed = train(_cfg(tmp_path / "run", "amago.num_trials=3", "trainer.resume=last"))
    assert resumed.trial_index == 3 and resumed.num_updates == reference.num_updates
    for (k, a), b in zip(reference.policy.state_dict().items(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)  # weights, Polyak targets, PopArt statistics
    ref_replay, res_replay = reference.replay.buffer[:], resumed.replay.buffer[:]
    for key in ref_replay.keys(True, True):
        assert torch.equal(ref_replay[key], res_replay[key]), key
    runs = (tmp_path / "ref/dark_key_to_door/version_0", tmp_path / "run/dark_key_to_door/version_0")
    returns = [[r["trial/return"] for r in _rows(run) if r.get("trial/return")] for run in runs]
    assert returns[0] == returns[1] and len(returns[0]) == 3  # the appended log continues the same run


def test_resume_refuses_another_algo(tmp_path):
    train(load_config("dark_key_to_door", [*TINY, "ppo.num_trials=1", "trainer.loggers=[csv]",
                                           f"trainer.log_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"algo: 'ppo' -> 'amago'"):
        train(_cfg(tmp_path, "trainer.resume=last"))


def test_resume_refuses_replay_shape_and_ignores_the_unused_section(tmp_path):
    train(_cfg(tmp_path, "amago.num_trials=1"))
    with pytest.raises(ConfigError, match=r"amago.replay_capacity: 8 -> 16"):
        train(_cfg(tmp_path, "amago.replay_capacity=16", "trainer.resume=last"))
    with pytest.warns(UserWarning, match=r"amago.lr: 0.0003 -> 0.001"):  # a learning setting: allowed, named
        _, module = train(_cfg(tmp_path, "amago.lr=1e-3", "ppo.lr=5.0", "amago.num_trials=2", "trainer.resume=last"))
    assert module.trial_index == 2


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["algo=sac"], r"algo='sac' is unknown; choose one of ppo .*, amago"),
        (["algo=amagoo"], r"did you mean 'amago'"),
        (["algo=amago", "amago.update_every=7"], r"amago.update_every: must divide trial_len=200"),
        (["algo=amago", "amago.trial_len=100"], r"amago.trial_len=100 differs from env.trial_len=200"),
        (["amago.update_evry=10"], r"amago.update_evry is not a setting of amago \(did you mean 'update_every'\?\)"),
        (["amago.batch_size=two"], r"amago.batch_size"),
        (["algo=amago", "amago.act_gamma=0.5"], r"amago.act_gamma"),
        (["trainer.eval_every=-1"], r"trainer.eval_every"),
        (["trainer.eval_trials=0"], r"trainer.eval_trials"),
    ],
)
def test_bad_algo_settings_name_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_config("dark_key_to_door", overrides)


def test_unused_algorithm_section_is_not_checked():
    cfg = load_config("dark_key_to_door", ["algo=amago", "ppo.update_every=7"])  # ppo: not this run's
    assert cfg.algo == "amago"


def test_amago_on_episodic_trials_names_the_fix(tmp_path):
    cfg = load_config("gym", ["algo=amago", "env.trial_len=40", "amago.update_every=20", "env.num_envs=2",
                              f"trainer.log_dir={tmp_path}", "trainer.loggers=[csv]"])
    with pytest.raises(ConfigError, match=r"episodic.*env.kwargs.mode=meta"):
        train(cfg)


def test_eval_every_adds_the_evaluation_callback(tmp_path):
    trainer, module = train(load_config("dark_key_to_door", [
        *TINY, "trainer.eval_every=2", "trainer.eval_trials=1", "trainer.eval_greedy=false", "trainer.loggers=[csv]",
        f"trainer.log_dir={tmp_path}",
    ]))
    assert isinstance(module, MemoPPO)
    callback = next(cb for cb in trainer.callbacks if isinstance(cb, EvaluationCallback))
    assert (callback.every, callback.num_trials, callback.greedy) == (2, 1, False)
    rows = _rows(tmp_path / "dark_key_to_door" / "version_0")
    assert [r["epoch"] for r in rows if r.get("eval/return")] == ["1"]  # after trial 2 of 2 only
    assert callback.last["cache_bytes_per_env"] > 0


def test_config_from_dict_round_trips_and_validates():
    cfg = load_config("dark_key_to_door", ["algo=amago", "trainer.precision=bf16-mixed"])
    again = config_from_dict(to_dict(cfg))
    assert again == cfg and again.trainer.lightning["precision"] == "bf16-mixed"
    with pytest.raises(ConfigError, match=r"amago.update_every: must divide"):
        config_from_dict({**to_dict(cfg), "amago": {"update_every": 7}}, "a checkpoint")
    old = to_dict(load_config("dark_key_to_door"))
    del old["algo"], old["amago"]  # a checkpoint written before algo existed
    assert config_from_dict(old).algo == "ppo"


def test_evaluate_an_amago_checkpoint(tmp_path):
    train(_cfg(tmp_path, "amago.num_trials=1"))
    result = evaluate(tmp_path / "dark_key_to_door" / "version_0", num_trials=1)
    assert result.summary["trial_len"] == 40 and result.summary["cache_bytes_per_env"] > 0
    assert len(result.trials) == 2  # one row per env


def test_no_refresh_warning_names_the_amago_section(tmp_path):
    with pytest.warns(UserWarning, match=r"amago\.refresh=true"):
        train(_cfg(tmp_path, "amago.refresh=false", "amago.num_trials=1"))

"""MemoAmago on the shared trial loop: a tiny Dark-Key-To-Door run, exploration inside the trial,
refresh parity after an update round, kill-and-resume, config and env errors."""

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_memo.algos.amago import AmagoConfig, MemoAmago, bilevel_epsilon
from lightning_memo.callbacks import CacheRefresh, TrialCallback, TrialMetrics
from tests.scripts.tiny import TRIAL_LEN, env_factory, tiny_policy, tiny_trainer


def tiny_amago_cfg(**overrides) -> AmagoConfig:
    # 4 envs x 10 steps x 0.05 = 2 gradient steps per update round, 4 rounds per trial
    base = dict(trial_len=TRIAL_LEN, update_every=10, updates_per_env_step=0.05, batch_size=3, num_trials=3,
                replay_capacity=6, head_hidden=16, head_layers=1, eps_anneal_steps=400, reward_scale=100.0)
    return AmagoConfig(**{**base, **overrides})


def tiny_amago(seed: int = 0, **overrides) -> MemoAmago:
    pl.seed_everything(seed, verbose=False)
    factory = env_factory(4)
    return MemoAmago(tiny_policy(factory(seed)), factory, tiny_amago_cfg(**overrides), seed=seed)


def test_tiny_run_end_to_end():
    module = tiny_amago()
    trainer = tiny_trainer([TrialMetrics()], max_epochs=3)
    trainer.fit(module)
    assert module.trial_index == 3 and module.env_steps == 3 * 4 * TRIAL_LEN
    assert len(module.replay) == 6  # 12 trials collected (3 x 4 envs), capacity 6
    # trial 0 has an empty replay: no updates; trials 1 and 2: 4 rounds x 2 steps
    assert module.num_updates == 16 and trainer.global_step == 16
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/critic_loss", "train/actor_loss", "train/actor_bc_loss", "train/q_mean",
                "train/q_max", "train/td_target_mean", "train/entropy", "train/popart_sigma", "train/lr",
                "train/epsilon_first_step", "trial/return", "trial/episode_len/0", "trial/cache_bytes_per_env",
                "env_steps"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert any(isinstance(cb, CacheRefresh) for cb in trainer.callbacks)
    # the Polyak targets moved toward the critics but are not the critics
    heads = module.policy.amago
    for t, o in zip(heads.target_critic.parameters(), heads.critic.parameters()):
        assert not torch.equal(t, o)
    assert module.policy.epsilon == 0.0  # exploration only while collecting


class _RecordEpsilon(TrialCallback):
    """Registers a collector step hook after the module's: the exploration rate each step acted with."""

    def on_trial_start(self, trainer, module, collector):
        self.rates, self.env_steps = [], module.env_steps
        if self._record not in collector.step_hooks:
            collector.step_hooks.append(self._record)
        self.module = module

    def _record(self, env, td):
        self.rates.append(self.module.policy.epsilon)


def test_exploration_anneals_within_the_trial():
    module = tiny_amago(num_trials=1, update_every=40)
    probe = _RecordEpsilon()
    tiny_trainer([probe], max_epochs=1).fit(module)
    expected = bilevel_epsilon(torch.arange(TRIAL_LEN), TRIAL_LEN, 0, 400, (1.0, 0.05), (0.8, 0.01))
    torch.testing.assert_close(torch.tensor(probe.rates), expected)
    assert probe.rates[0] == pytest.approx(1.0) and probe.rates[-1] == pytest.approx(0.8)


class _CheckRefresh(TrialCallback):
    """After CacheRefresh: one step from the cache equals the last position of a fresh sequence pass."""

    def __init__(self):
        self.checked = 0

    def on_policy_update(self, trainer, module, collector):
        self.stale = copy.deepcopy(module.policy)  # runs before CacheRefresh: the cache as it acted

    def check(self, module, collector):
        prefix = collector.prefix_with_pending()
        with torch.no_grad():
            logits_seq, values_seq = copy.deepcopy(module.policy).eval().evaluate(prefix)
            stepped = copy.deepcopy(module.policy).eval().act(collector.pending.clone())
            stale = self.stale.eval().act(collector.pending.clone())
        torch.testing.assert_close(stepped["logits"], logits_seq[:, -1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(stepped["state_value"], values_seq[:, -1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(collector.history.get("state_value"), values_seq[:, :-1], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(stale["logits"], logits_seq[:, -1], atol=1e-4)  # the old cache was stale
        self.checked += 1


class _AfterRefresh(TrialCallback):
    def __init__(self, probe):
        self.probe = probe

    def on_policy_update(self, trainer, module, collector):
        self.probe.check(module, collector)


def test_refresh_parity_inside_the_loop():
    module = tiny_amago(num_trials=2)
    probe = _CheckRefresh()
    # the Trainer's CacheRefresh replaces the module's default, between the two probes
    tiny_trainer([probe, CacheRefresh(), _AfterRefresh(probe)], max_epochs=2).fit(module)
    assert probe.checked == 3  # trial 1's update rounds but the last (trial 0 has no replay yet)


class _Killed(Exception):
    pass


class _KillMidTrial(TrialCallback):
    def on_policy_update(self, trainer, module, collector):
        if module.trial_index == 2 and collector.t >= 20:
            raise _Killed


def _trainer(path, callbacks=()):
    ckpt = ModelCheckpoint(dirpath=path, every_n_epochs=1, save_last=True)
    return tiny_trainer([ckpt, *callbacks], enable_checkpointing=True, max_epochs=3)


def test_killed_run_resumes_exactly(tmp_path):
    reference = tiny_amago()
    _trainer(tmp_path / "ref").fit(reference)

    killed = tiny_amago()
    with pytest.raises(_Killed):
        _trainer(tmp_path / "run", [_KillMidTrial()]).fit(killed)
    assert killed.trial_index == 2
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    assert ckpt["memo_amago"]["trial_index"] == 2 and ckpt["memo_amago"]["num_updates"] == 8
    assert [p.name for p in (tmp_path / "run" / "replay").iterdir()] == ["trial-2-rank0"]  # beside, newest only

    resumed = tiny_amago()
    torch.manual_seed(123)  # a different RNG state and init: everything must come from the checkpoint
    with torch.no_grad():
        for p in resumed.policy.parameters():
            p.add_(torch.randn_like(p))
    _trainer(tmp_path / "run").fit(resumed, ckpt_path=tmp_path / "run" / "last.ckpt")
    assert resumed.trial_index == 3 and resumed.num_updates == reference.num_updates == 16
    for (k, a), b in zip(reference.policy.state_dict().items(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)  # weights, targets, PopArt statistics
    ref_trials, res_trials = reference.replay.buffer[:], resumed.replay.buffer[:]
    for key in ref_trials.keys(True, True):
        assert torch.equal(ref_trials[key], res_trials[key]), key


def test_resume_without_replay_snapshot_warns(tmp_path):
    module = tiny_amago(num_trials=1, save_replay=False)
    _trainer(tmp_path).fit(module)
    assert not (tmp_path / "replay").exists()
    resumed = tiny_amago(num_trials=2, save_replay=False)
    with pytest.warns(UserWarning, match="empty replay"):
        _trainer(tmp_path).fit(resumed, ckpt_path=tmp_path / "last.ckpt")


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(update_every=15), "amago.update_every"),
        (dict(act_gamma=0.5), "amago.act_gamma"),
        (dict(num_critics=1), "amago.num_critics"),
        (dict(replay_window=100), "amago.replay_window"),
        (dict(eps_first=[1.0]), "amago.eps_first"),
        (dict(gammas=[0.9, 1.5]), "amago.gammas"),
        (dict(tau=0.0), "amago.tau"),
        (dict(batch_size=0), "amago.batch_size"),
        (dict(learning_starts=10, replay_capacity=5), "amago.learning_starts"),
        (dict(reward_scale=-1.0), "amago.reward_scale"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        tiny_amago_cfg(**overrides).validate()


def test_env_mismatch_is_named():
    module = tiny_amago(trial_len=80, update_every=10)
    with pytest.raises(ValueError, match="trial_len"):
        tiny_trainer(max_epochs=1).fit(module)


DDP_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.strategies import DDPStrategy

    from tests.algos.test_amago_module import tiny_amago

    module = tiny_amago(num_trials=2)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module)
    torch.save(
        {"state_dict": module.policy.state_dict(), "replay": module.replay.buffer[:]["observation"].clone(),
         "env_steps": module.env_steps, "updates": module.num_updates},
        Path(sys.argv[1]) / f"rank{trainer.global_rank}.pt",
    )
""")


def test_ddp_ranks_share_weights_and_keep_their_own_replay(tmp_path):
    script = tmp_path / "ddp_amago.py"
    script.write_text(DDP_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a["env_steps"] == b["env_steps"] == 2 * 2 * 4 * TRIAL_LEN  # all ranks' env steps
    assert a["updates"] == b["updates"] == 8
    for k, v in a["state_dict"].items():  # weights, Polyak targets and PopArt statistics agree
        torch.testing.assert_close(v, b["state_dict"][k], rtol=0, atol=0, msg=k)
    assert not torch.equal(a["replay"], b["replay"])  # each rank's own envs and replay

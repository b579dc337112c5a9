"""Checkpoint at trial boundaries; a run killed mid-trial resumes exactly from its last checkpoint."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_memo.callbacks import TrialCallback
from tests.scripts.tiny import tiny_module, tiny_trainer


class _Killed(Exception):
    pass


class _KillMidTrial(TrialCallback):
    def __init__(self, trial: int):
        self.trial = trial

    def on_policy_update(self, trainer, module, collector):
        if module.trial_index == self.trial and collector.t >= 20:
            raise _Killed  # like a kill: the run stops without further checkpoints


class _AtResume(TrialCallback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if not hasattr(self, "params"):
            self.params = {k: v.clone() for k, v in module.policy.state_dict().items()}
            self.counters = (module.trial_index, module.env_steps, trainer.global_step, batch)
            self.lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.opt_steps = trainer.optimizers[0].state[next(iter(module.policy.parameters()))]["step"].item()


def _trainer(tmp_path, callbacks=()):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_last=True)  # one epoch = one trial
    return tiny_trainer([ckpt, *callbacks], enable_checkpointing=True, max_epochs=3)


def test_killed_run_resumes_exactly(tmp_path):
    kw = dict(num_trials=3, epochs=1)  # 4 updates x 1 epoch x 2 minibatches = 8 optimiser steps per trial
    assert tiny_module(**kw).cfg.optimizer_steps_per_trial == 8

    reference = tiny_module(**kw)
    _trainer(tmp_path / "ref").fit(reference)

    killed = tiny_module(**kw)
    trainer = _trainer(tmp_path / "run", [_KillMidTrial(trial=2)])
    with pytest.raises(_Killed):
        trainer.fit(killed)  # interrupted inside trial 2 (the third)
    assert killed.trial_index == 2
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    assert ckpt["memo_ppo"]["trial_index"] == 2 and ckpt["global_step"] == 16

    resumed = tiny_module(**kw)
    with torch.no_grad():  # a different init: the weights must come from the checkpoint
        for p in resumed.policy.parameters():
            p.add_(torch.randn_like(p))
    probe = _AtResume()
    _trainer(tmp_path / "run", [probe]).fit(resumed, ckpt_path=tmp_path / "run" / "last.ckpt")
    assert probe.counters == (2, 2 * 4 * 40, 16, 2)
    assert probe.opt_steps == 16
    saved = {k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items()}
    for k, v in probe.params.items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert resumed.trial_index == 3 and resumed.env_steps == reference.env_steps
    # RNG, optimiser, scheduler and env seeds restored: the resumed run ends where the uninterrupted one did
    for (k, a), b in zip(reference.policy.state_dict().items(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert torch.isfinite(torch.tensor(float(resumed.trainer.callback_metrics["train/loss"])))

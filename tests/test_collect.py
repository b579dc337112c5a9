"""TrialCollector: windows, history, seeding per trial and rank, value overwrite."""

import pytest
import torch

from lightning_memo.rollout import TrialCollector
from tests.scripts.tiny import TRIAL_LEN, env_factory, tiny_policy


def _collector(seed=0, rank=0, world_size=1):
    env = env_factory(num_envs=3)(seed)
    return TrialCollector(env, tiny_policy(env), TRIAL_LEN, seed=seed, rank=rank, world_size=world_size)


def test_windows_build_the_trial_history():
    c = _collector()
    c.start_trial(0)
    w = c.collect(10)
    assert w.shape == (3, 10) and c.t == 10
    c.collect(10)
    h = c.history
    assert h.shape == (3, 20)
    assert h["is_init"][:, 0].all() and not h["is_init"][:, 1:].any()
    for key in ("action", "action_log_prob", "state_value", ("next", "reward"), ("next", "episode_end"), "episode_start"):
        assert key in h.keys(True, True), key
    # the pending state is the "next" of the last step
    torch.testing.assert_close(c.pending["observation"], h["next", "observation"][:, -1])
    assert c.prefix_with_pending().shape == (3, 21)
    c.collect(20)
    assert h["next", "done"][:, :-1].sum() == 0 and c.history["next", "done"][:, -1].all()
    with pytest.raises(ValueError, match="trial_len"):
        c.collect(1)


def test_trials_are_seeded_by_index_and_rank():
    def first_obs(trial, rank=0):  # the start cell is part of the task
        c = _collector(rank=rank, world_size=2)
        c.start_trial(trial)
        return c.pending["observation"].clone()

    task0, again, task1, other_rank = first_obs(0), first_obs(0), first_obs(1), first_obs(0, rank=1)
    assert torch.equal(task0, again)
    assert not torch.equal(task0, task1) and not torch.equal(task0, other_rank)


def test_overwrite_values_and_log_probs():
    c = _collector()
    c.start_trial(0)
    c.collect(10)
    c.overwrite(torch.zeros(3, 10), torch.ones(3, 10))
    assert c.history["state_value"].abs().sum() == 0 and (c.history["action_log_prob"] == 1).all()
    with pytest.raises(RuntimeError, match="start_trial"):
        _collector().collect(1)

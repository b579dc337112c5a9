"""The cache refresh inside the training loop, episode shuffling, trial metrics, the progress bar."""

import copy

import numpy as np
import pytest
import torch

from lightning_memo.algos.ppo import MemoPPO
from lightning_memo.callbacks import CacheRefresh, EnvStepProgressBar, TrialCallback, TrialMetrics
from lightning_memo.envs import GymTrialEnv, make_trial_env
from lightning_memo.rollout import shuffled_episode_order, trial_metrics
from lightning_memo.train import EnvStepBudget
from tests.scripts.tiny import tiny_module, tiny_policy, tiny_ppo, tiny_trainer


class _Snapshot(TrialCallback):
    """Before the refresh: keep the policy as it acted (stale cache) and the stored values."""

    def on_policy_update(self, trainer, module, collector):
        self.stale_policy = copy.deepcopy(module.policy)
        self.stale_values = collector.history.get("state_value").clone()


class _CheckRefresh(TrialCallback):
    """After the refresh: cache and values equal a fresh sequence pass with the new weights."""

    def __init__(self, snapshot):
        self.snapshot = snapshot
        self.checked = 0

    def on_policy_update(self, trainer, module, collector):
        policy = module.policy
        prefix = collector.prefix_with_pending()  # [N, t+1]: history plus the state acted on next
        fresh = copy.deepcopy(policy).eval()
        with torch.no_grad():
            logits_seq, values_seq = fresh.evaluate(prefix)
            # one step from the refreshed cache == the last position of the sequence pass
            stepped = copy.deepcopy(policy).eval().act(collector.pending.clone())
            stale = self.snapshot.stale_policy.eval().act(collector.pending.clone())
        torch.testing.assert_close(stepped["logits"], logits_seq[:, -1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(stepped["state_value"], values_seq[:, -1], atol=1e-5, rtol=1e-4)
        # stored values overwritten with the new weights' values
        stored = collector.history.get("state_value")
        torch.testing.assert_close(stored, values_seq[:, :-1], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(stored, self.snapshot.stale_values)
        # sensitivity: the cache from before the update would have been stale
        assert not torch.allclose(stale["state_value"], values_seq[:, -1], atol=1e-4)
        self.checked += 1


def test_refresh_parity_inside_the_loop():
    module = tiny_module(num_trials=1, refresh=False)
    snapshot = _Snapshot()
    check = _CheckRefresh(snapshot)
    tiny_trainer([snapshot, CacheRefresh(), check]).fit(module)
    assert check.checked == module.cfg.updates_per_trial - 1  # every partial update, not the final one


def test_refresh_callback_added_by_default():
    module = tiny_module(num_trials=1)
    trainer = tiny_trainer()
    trainer.fit(module)
    assert any(isinstance(cb, CacheRefresh) for cb in trainer.callbacks)


def test_shuffled_episode_order_keeps_current_episode_last():
    starts = torch.tensor([[1, 0, 0, 1, 0, 1, 0, 0, 1, 0]], dtype=torch.bool)
    perm = shuffled_episode_order(starts, torch.Generator().manual_seed(3))
    assert sorted(perm[0].tolist()) == list(range(10))
    assert perm[0, -2:].tolist() == [8, 9]  # the running episode stays at the end, in order
    episodes = {(0, 1, 2), (3, 4), (5, 6, 7)}
    rest, found = perm[0, :-2].tolist(), set()
    while rest:
        ep = next(e for e in episodes if tuple(rest[: len(e)]) == e)
        found.add(ep)
        rest = rest[len(ep):]
    assert found == episodes


def test_refresh_with_shuffle_and_log_probs_runs():
    module = tiny_module(num_trials=1, shuffle_episodes=True, refresh_log_probs=True)
    tiny_trainer([TrialMetrics()]).fit(module)
    assert module.trial_index == 1 and "return" in module.last_trial


def test_trial_metrics_by_episode_index():
    from tensordict import TensorDict

    # one env, 6 steps: episode 0 = steps 0-1 (ends with success), episode 1 = steps 2-5 (ends), none after
    reward = torch.tensor([[0, 1, 0, 1, 0, 1]], dtype=torch.float32)[..., None]
    end = torch.tensor([[0, 1, 0, 0, 0, 1]], dtype=torch.bool)[..., None]
    index = torch.tensor([[0, 0, 1, 1, 1, 1]])[..., None]
    td = TensorDict(
        {"episode_index": index, "next": {"reward": reward, "episode_end": end, "success": end.clone()}},
        batch_size=[1, 6],
    )
    m = trial_metrics(td)
    assert m["return"] == 3.0 and m["successes"] == 2.0
    assert m["episode_len/0"] == 2.0 and m["episode_len/1"] == 4.0
    assert m["episode_return/0"] == 1.0 and m["episode_return/1"] == 2.0


class _FirstObservation(TrialCallback):
    """Keeps the first observation of every trial, taken when on_trial_start fires."""

    def __init__(self):
        self.seen = []

    def on_trial_start(self, trainer, module, collector):
        self.seen.append(collector.pending.get("observation").clone())


def test_rollout_video_records_the_training_trials_without_changing_them(tmp_path):
    from PIL import Image

    from lightning_memo.callbacks import RolloutVideo

    plain = tiny_module(num_trials=3)
    tiny_trainer(max_epochs=3).fit(plain)
    video, first = RolloutVideo(every=2, dirpath=tmp_path), _FirstObservation()
    module = tiny_module(num_trials=3)
    tiny_trainer([video, first], max_epochs=3).fit(module)
    # trials 0 and 2 recorded, one frame per step plus the reset, from env 0 of those very trials
    assert [p.name for p in video.saved] == ["trial_00000.gif", "trial_00002.gif"]
    assert Image.open(video.saved[-1]).n_frames > 1
    assert len(video.frames) == module.cfg.trial_len + 1
    np.testing.assert_array_equal(video.frames[-1], module.collector.env.base_env.render_frame(0))  # where it ended
    assert len(first.seen) == 3 and all(o.shape[0] == 4 for o in first.seen)
    # recording is read-only: same trials, same weights as the run without the callback
    for (name, a), b in zip(plain.policy.state_dict().items(), module.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert module.collector.step_hooks == []


def test_rollout_video_names_a_missing_renderer():
    from lightning_memo.callbacks import _renderer

    with pytest.raises(TypeError, match="render_frame"):
        _renderer(object())


class _BarTotal(EnvStepProgressBar):
    """Keeps the total the bar was drawn with."""

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.drawn_total = self.bar.total


def test_progress_bar_total_is_the_env_step_budget():
    def total(module, callbacks):
        trainer = tiny_trainer(callbacks, max_epochs=module.num_trials, enable_progress_bar=True)
        trainer.fit(module)
        return callbacks[0].drawn_total

    assert total(tiny_module(num_trials=1), [_BarTotal()]) == 1 * 40 * 4  # fixed trials: num_trials x T x N
    assert total(tiny_module(num_trials=3), [_BarTotal(), EnvStepBudget(100)]) == 100  # the CLI's budget
    assert total(tiny_module(num_trials=3), [_BarTotal(max_env_steps=200)]) == 200
    episodic = MemoPPO(*_cartpole(), tiny_ppo(trial_len=200, update_every=20, num_trials=1), seed=0)
    assert total(episodic, [_BarTotal()]) is None  # trials end early: no total without a budget
    episodic = MemoPPO(*_cartpole(), tiny_ppo(trial_len=200, update_every=20, num_trials=1), seed=0)
    assert total(episodic, [_BarTotal(), EnvStepBudget(150)]) == 150


def _cartpole():
    env = make_trial_env(GymTrialEnv("CartPole-v1", num_envs=4, trial_len=200, seed=0))
    return tiny_policy(env, "gru"), env

"""MemoPPO wiring: env/policy checks before training, counters, LR schedule, logged metrics."""

import copy
import math

import lightning.pytorch as pl
import pytest
import torch

from lightning_memo.algos.ppo import MemoPPO, check_env_policy
from lightning_memo.callbacks import TrialMetrics
from lightning_memo.envs.dark_key_to_door import DarkKeyToDoorEnv
from lightning_memo.nn.registry import make_memory
from lightning_memo.policy import MemoPolicy
from tests.scripts.tiny import TRIAL_LEN, env_factory, tiny_module, tiny_policy, tiny_ppo, tiny_trainer


def test_env_policy_mismatches_are_named():
    env = env_factory(num_envs=2)(0)
    policy = tiny_policy(env)
    with pytest.raises(ValueError, match="num_minibatches"):
        check_env_policy(env, policy, tiny_ppo(num_minibatches=4))
    with pytest.raises(ValueError, match="trial_len"):
        check_env_policy(env, policy, tiny_ppo(trial_len=80))
    bare = DarkKeyToDoorEnv(num_envs=2, size=4, episode_len=8, trial_len=40)
    with pytest.raises(ValueError, match="make_trial_env"):
        check_env_policy(bare, MemoPolicy.from_env(bare, make_memory("gru", d_model=8)), tiny_ppo(num_minibatches=1))
    wrong_actions = MemoPolicy(make_memory("gru", d_model=8), 3, ["observation"], [(4,)])
    with pytest.raises(ValueError, match="5 actions"):
        check_env_policy(env, wrong_actions, tiny_ppo(num_minibatches=1))


def test_one_run_counts_and_logs():
    module = tiny_module(num_trials=2, grad_accumulation=2)
    trainer = tiny_trainer([TrialMetrics()], max_epochs=2)
    trainer.fit(module)
    cfg = module.cfg
    assert module.trial_index == 2 and module.env_steps == 2 * 4 * 40
    assert trainer.global_step == 2 * cfg.optimizer_steps_per_trial == 2 * 4 * 2 * 1
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/approx_kl", "train/clip_fraction", "train/entropy", "train/lr",
                "trial/return", "trial/episode_len/0", "trial/cache_bytes_per_env", "env_steps"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert float(metrics["train/lr"]) == pytest.approx(0.0, abs=1e-9)  # cosine ends at min_lr_ratio = 0


def test_memory_state_does_not_leak_between_trials():
    module = tiny_module(num_trials=1)
    tiny_trainer().fit(module)
    module.collector.start_trial(5)
    assert int(module.policy.memory.memory_tokens().sum()) == 0


def _episodic_module(trial_len: int = 60, update_every: int = 20, **ppo) -> MemoPPO:
    from lightning_memo.envs import GymTrialEnv, make_trial_env

    torch.manual_seed(0)
    env = make_trial_env(GymTrialEnv("CartPole-v1", num_envs=4, trial_len=trial_len, seed=0))
    policy = tiny_policy(env, "gru")
    cfg = tiny_ppo(trial_len=trial_len, update_every=update_every, **ppo)
    return MemoPPO(policy, env, cfg, seed=0)


def test_episodic_trial_counts_active_steps_and_stops_when_all_rows_end():
    module = _episodic_module(trial_len=200, update_every=20, num_trials=1)
    tiny_trainer(max_epochs=1).fit(module)
    history = module.collector.history
    active = history.get("active").squeeze(-1)
    t = history.shape[1]
    assert t < 200 and t % 20 != 0  # random CartPole episodes end early; the trial stops at the last end
    assert bool(history.get(("next", "done"))[:, -1].all()) and not bool(history.get(("next", "done"))[:, :-1].any())
    assert module.env_steps == int(active.sum()) < 4 * t  # rows that ended are not env steps
    assert not bool(active[:, -1].all())  # rows that ended earlier were idle at the end


def test_inactive_steps_carry_no_loss():
    module = _episodic_module(num_trials=1, normalize_advantages=True)
    tiny_trainer(max_epochs=1).fit(module)
    history = module.collector.history
    active = history.get("active").squeeze(-1)
    assert not bool(active.all())
    opt, sched = module.optimizers(), module.lr_schedulers()
    saved = [copy.deepcopy(x.state_dict()) for x in (module.policy, opt.optimizer, sched)]

    def update() -> dict:
        for x, state in zip((module.policy, opt.optimizer, sched), saved):
            x.load_state_dict(copy.deepcopy(state))
        torch.manual_seed(1)
        return module.update(window_start=0, bootstrap=False)

    before = update()
    idle = ~active
    history.get("action")[idle] = 1 - history.get("action")[idle]  # in place: the trial buffer
    history.get("action_log_prob")[idle] = -5.0
    history.get("state_value")[idle] = 1e3
    history.get(("next", "reward"))[idle] = 1e3
    assert bool((module.collector.history.get("state_value")[idle] == 1e3).all())  # the update reads these
    after = update()
    assert after == pytest.approx(before, rel=1e-5, abs=1e-6)


def test_last_trial_reports_an_episodic_trial_that_ended_early():
    module = _episodic_module(trial_len=200, update_every=20, num_trials=1)
    tiny_trainer(max_epochs=1).fit(module)
    history = module.collector.history
    assert history.shape[1] < 200  # ended before trial_len
    lengths = history.get("active").squeeze(-1).sum(1).float()
    metrics = module.last_trial
    assert metrics["return"] == pytest.approx(float(history.get(("next", "reward")).sum() / 4))
    assert metrics["episode_len/0"] == pytest.approx(float(lengths.mean()))


def test_lr_schedule_spans_env_steps_when_lr_env_steps_is_set():
    module = tiny_module(num_trials=2, lr_env_steps=640, warmup_steps=2)
    trainer = tiny_trainer(max_epochs=2)
    trainer.fit(module)
    assert module.env_steps == 320  # half the schedule: the cosine is at its midpoint, whatever the trials
    assert float(trainer.callback_metrics["train/lr"]) == pytest.approx(module.cfg.lr * 0.5)
    assert module.lr_multiplier(0) == pytest.approx(0.5) and module.lr_multiplier(1) == pytest.approx(1.0)  # warm-up
    for steps, multiplier in ((0, 1.0), (160, 0.5 * (1 + math.cos(math.pi / 4))), (640, 0.0), (10**6, 0.0)):
        module.env_steps = steps
        assert module.lr_multiplier(50) == pytest.approx(multiplier)
    module.cfg.min_lr_ratio = 0.1
    assert module.lr_multiplier(50) == pytest.approx(0.1)  # decays to lr * min_lr_ratio
    for bad in (0, -5, 2.5, True, "1000"):
        with pytest.raises(ValueError, match="ppo.lr_env_steps"):
            tiny_ppo(lr_env_steps=bad).validate()
    tiny_ppo(lr_env_steps=None).validate()


def test_torchrl_envs_reach_memo_ppo_through_gym_trial_env():
    from torchrl.envs import GymEnv, SerialEnv

    from lightning_memo.envs import GymTrialEnv, make_trial_env
    from lightning_memo.rollout import env_attribute

    pytest.importorskip("popgym")
    raw = SerialEnv(2, lambda: GymEnv("popgym-RepeatPreviousEasy-v0"))
    assert env_attribute(raw, "trial_len") is None and raw.is_closed  # no RecursionError; not started
    cfg = tiny_ppo(trial_len=52, update_every=26, num_minibatches=1, num_trials=1)
    env = make_trial_env(GymTrialEnv(raw, trial_len=52, seed=0))
    policy = tiny_policy(env, "gru")
    with pytest.raises(ValueError, match="no trial_len.*GymTrialEnv"):
        make_trial_env(raw)
    with pytest.raises(ValueError, match="not a trial env.*GymTrialEnv"):  # the report, now naming the fix
        check_env_policy(make_trial_env(SerialEnv(2, lambda: GymEnv("popgym-RepeatPreviousEasy-v0")), 52), policy, cfg)
    check_env_policy(env, policy, cfg)
    module = MemoPPO(policy, env, cfg, seed=0)
    tiny_trainer(max_epochs=1).fit(module)
    assert module.collector.history.shape == (2, 51)  # POPGym's Easy episodes: 51 steps, then the trial ends
    assert module.env_steps == 2 * 51 and "return" in module.last_trial


def _recording(evaluate, lengths: list):
    """``evaluate`` that also appends the number of steps each call reads to ``lengths``."""

    def spy(td, segment_len=None, past=None):
        lengths.append(td.shape[1])
        return evaluate(td, segment_len, past)

    return spy


def _update_twice(module: MemoPPO, window_start: int) -> dict[bool, tuple[dict, list]]:
    """``module.update`` from the same state with ``prefix_gradients`` true and false: the stats and the
    lengths of the sequences each forward read."""
    opt, sched = module.optimizers(), module.lr_schedulers()
    saved = [copy.deepcopy(x.state_dict()) for x in (module.policy, opt.optimizer, sched)]
    evaluate = module.policy.evaluate
    results = {}
    for prefix_gradients in (True, False):
        for x, state in zip((module.policy, opt.optimizer, sched), saved):
            x.load_state_dict(copy.deepcopy(state))
        lengths = []
        module.policy.evaluate = _recording(evaluate, lengths)
        module.cfg.prefix_gradients = prefix_gradients
        torch.manual_seed(1)
        results[prefix_gradients] = module.update(window_start=window_start, bootstrap=False), lengths
    module.policy.evaluate = evaluate
    return results


@pytest.mark.parametrize("memory", ["memo", "fct", "gru"])
def test_window_only_update_computes_the_same_first_losses(memory):
    """One epoch, one minibatch: the loss pieces are those of the first forward, which the cached prefix
    reproduces (train mode, segment randomisation off); the forwards read the window only."""
    pl.seed_everything(0, verbose=False)
    env = env_factory(4)(0)
    kwargs = {"randomize_segments": False} if memory == "memo" else {}
    if memory == "fct":
        kwargs = {"n_layers": 1, "n_heads": 2, "position_recipe": "relic", "sink_kv": True}
    module = MemoPPO(tiny_policy(env, memory, **kwargs), env, tiny_ppo(num_trials=1, epochs=1, num_minibatches=1))
    tiny_trainer(max_epochs=1).fit(module)
    results = _update_twice(module, window_start=27)  # mid-segment (segment_len 8)
    (full, full_lengths), (window, window_lengths) = results[True], results[False]
    assert full_lengths == [TRIAL_LEN] and window_lengths == [TRIAL_LEN - 27]
    for key in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance"):
        assert window[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key
    # the trial's last update (window_start = 0) is a full pass either way
    results = _update_twice(module, window_start=0)
    assert results[True][1] == results[False][1] == [TRIAL_LEN]
    assert results[False][0] == pytest.approx(results[True][0], rel=1e-6)


@pytest.mark.parametrize("memory", ["memo", "gru"])
def test_window_only_training_runs(memory):
    module = tiny_module(memory, num_trials=2, prefix_gradients=False)
    trainer = tiny_trainer(max_epochs=2)
    trainer.fit(module)
    assert module.trial_index == 2 and module.env_steps == 2 * 4 * TRIAL_LEN
    for key in ("train/loss", "train/entropy", "train/approx_kl"):
        assert torch.isfinite(trainer.callback_metrics[key]), key


@pytest.mark.parametrize("memory", ["memo", "fct"])
def test_window_only_updates_reuse_the_refresh_cache(memory):
    """prefix_gradients=false: a partial update takes the cache the refresh after the previous update built
    (the same pass over the same prefix under the same weights) instead of encoding the prefix again, and
    trains exactly as with a fresh encode_prefix: the same losses and weights."""

    def train(reuse: bool):
        module = tiny_module(memory, num_trials=2, prefix_gradients=False)
        module.reuse_refreshed_prefix = reuse
        encoded, stats = [], []
        encode_prefix, update = module.policy.encode_prefix, module.update
        module.policy.encode_prefix = lambda td: (encoded.append(td.shape[1]), encode_prefix(td))[1]
        module.update = lambda *a, **k: (stats.append(update(*a, **k)), stats[-1])[1]
        tiny_trainer(max_epochs=2).fit(module)
        return encoded, stats, module.policy.state_dict()

    (fresh_encoded, fresh_stats, fresh_weights), (encoded, stats, weights) = train(False), train(True)
    assert fresh_encoded == [10, 20] * 2 and encoded == []  # update_every=10, trial_len=40: the last update is full
    assert stats == fresh_stats
    for key, value in fresh_weights.items():
        assert torch.equal(weights[key], value), key


def test_window_only_updates_refuse_memories_that_cannot_continue_a_past():
    from lightning_memo.config import load_config
    from lightning_memo.nn.memoryless import MemorylessConfig
    from tests.nn.test_past import _NoPast

    env = env_factory(num_envs=2)(0)
    cfg = tiny_ppo(num_minibatches=1, prefix_gradients=False)
    for kwargs in ({}, {"inter_episode_attention": False}):
        policy = tiny_policy(env, "memo", **kwargs)
        check_env_policy(env, policy, tiny_ppo(num_minibatches=1))  # the default needs nothing
        if kwargs:
            with pytest.raises(ValueError, match="inter-episode attention only.*set ppo.prefix_gradients=true"):
                check_env_policy(env, policy, cfg)
        else:
            check_env_policy(env, policy, cfg)
    policy = MemoPolicy.from_env(env, _NoPast(config=MemorylessConfig(d_model=8)))
    with pytest.raises(ValueError, match="ppo.prefix_gradients=false .* not implemented for _NoPast"):
        check_env_policy(env, policy, cfg)
    assert load_config("dark_key_to_door", ["ppo.prefix_gradients=false"]).ppo.prefix_gradients is False

"""Bad input inside the loop gets a clear answer: non-finite values, a foreign tensordict, bookkeeping keys,
unstarted batched envs; the refresh choices (every k, flush only, none) and the trial history."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torchrl.envs import GymEnv, SerialEnv, Transform

from lightning_memo.algos.ppo import MemoPPO, check_env_policy
from lightning_memo.callbacks import CacheRefresh
from lightning_memo.nn.registry import make_memory
from lightning_memo.policy import MemoPolicy, NonFiniteError
from lightning_memo.rollout import env_attribute
from tests.scripts.tiny import env_factory, tiny_module, tiny_policy, tiny_ppo, tiny_trainer


class _NaNObservation(Transform):
    """Writes NaN into env row 1's observation after ``at`` steps of trial ``trial``."""

    def __init__(self, at: int, trial: int = 0):
        super().__init__()
        self.at, self.trial, self.resets, self.steps = at, trial, -1, 0

    def _reset(self, tensordict, tensordict_reset):
        self.resets, self.steps = self.resets + 1, 0
        return tensordict_reset

    def _step(self, tensordict, next_tensordict):
        self.steps += 1
        if self.resets == self.trial and self.steps == self.at:
            next_tensordict["observation"][1] = float("nan")
        return next_tensordict


def _module_with_nan(at: int, trial: int = 0) -> MemoPPO:
    make = env_factory()

    def factory(seed):
        env = make(seed)
        env.append_transform(_NaNObservation(at, trial))
        return env

    torch.manual_seed(0)
    return MemoPPO(tiny_policy(make(0)), factory, tiny_ppo(num_trials=2), seed=0)


def test_nan_observation_names_key_step_trial_and_last_checkpoint(tmp_path):
    module = _module_with_nan(at=17, trial=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_last=True)
    trainer = tiny_trainer([ckpt], enable_checkpointing=True, max_epochs=2)
    with pytest.raises(NonFiniteError) as err:
        trainer.fit(module)
    message = str(err.value)
    for part in ("observation 'observation'", "env rows [1]", "trial 1", "step 17", str(tmp_path / "last.ckpt")):
        assert part in message, (part, message)


def test_nan_inside_the_memory_is_named():
    module = tiny_module(num_trials=1)
    with torch.no_grad():
        next(module.policy.memory.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"observations are finite.*inside the memory.*trial step \d+ \(trial 0, .*none saved yet"):
        tiny_trainer().fit(module)


def test_non_finite_loss_and_gradient_are_named():
    module = tiny_module(num_trials=1)
    with torch.no_grad():
        module.policy.critic_head.bias.fill_(float("inf"))  # acting is fine (logits finite), values are not
    with pytest.raises(NonFiniteError, match=r"non-finite \w+ .*PPO update at trial step 10 \(trial 0, optimiser step 0\)"):
        tiny_trainer().fit(module)
    module = tiny_module(num_trials=1)
    module.policy.actor_head.weight.register_hook(lambda g: g * float("nan"))
    with pytest.raises(NonFiniteError, match=r"non-finite gradient of policy.actor_head.weight"):
        tiny_trainer().fit(module)


def test_act_on_another_envs_tensordict():
    env = env_factory(num_envs=2)(0)
    policy = tiny_policy(env).eval()
    policy.reset(2)
    td = env.reset()
    with pytest.raises(ValueError, match=r"has no \['prev_action'\].*from the env the policy was built for"):
        policy.act(td.exclude("prev_action"))
    wrong = td.clone()
    wrong["observation"] = torch.zeros(2, 7)
    with pytest.raises(ValueError, match=r"observation 0 has shape \(2, 7\).*\[\*, 4\]"):
        policy.act(wrong)
    with pytest.raises(RuntimeError, match="reset_cache"):
        policy.act(env_factory(num_envs=3)(0).reset().exclude("is_init"))


def test_from_env_without_keys_skips_bookkeeping():
    env = env_factory()(0)
    policy = MemoPolicy.from_env(env, make_memory("gru", d_model=8))
    assert policy.observation_keys == ["observation", "prev_action", "prev_reward", "trial_time", "reset_flag"]


def test_unstarted_serial_env_is_checked_without_recursion():
    env = SerialEnv(2, lambda: GymEnv("CartPole-v1"))
    assert env_attribute(env, "trial_len") is None
    policy = MemoPolicy(make_memory("gru", d_model=8), 2, ["observation"], [(4,)])
    with pytest.raises(ValueError, match="make_trial_env"):
        check_env_policy(env, policy, tiny_ppo(num_minibatches=1))


class _CountRefreshes:
    def __init__(self, module):
        self.calls, self.refresh = [], module.refresh_cache

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        self.refresh(**kwargs)


def test_cache_refresh_every_k_and_flush_only():
    module = tiny_module(num_trials=1)  # 4 updates per trial: 3 partial
    module.refresh_cache = counter = _CountRefreshes(module)
    mine = CacheRefresh(every=2)
    trainer = tiny_trainer([mine])
    trainer.fit(module)
    assert len(counter.calls) == 1  # after the 2nd partial update only
    assert [cb for cb in trainer.callbacks if isinstance(cb, CacheRefresh)] == [mine]  # the user's choice stays

    class _Tokens(CacheRefresh):  # flush only: the memory is empty after each partial update
        def on_policy_update(self, trainer, module, collector):
            super().on_policy_update(trainer, module, collector)
            self.tokens = int(module.policy.memory.memory_tokens().sum())

    module = tiny_module(num_trials=1)
    flush = _Tokens(flush_only=True)
    tiny_trainer([flush]).fit(module)
    assert flush.tokens == 0
    with pytest.raises(ValueError, match="every"):
        CacheRefresh(every=0)


def test_no_refresh_warns_about_the_stale_cache():
    module = tiny_module(num_trials=1, refresh=False)
    with pytest.warns(UserWarning, match="stale|old weights"):
        tiny_trainer().fit(module)


def test_trial_history_is_written_in_place_and_metrics_come_from_the_module():
    module = tiny_module(num_trials=1)
    tiny_trainer().fit(module)  # no TrialMetrics callback
    assert "return" in module.last_trial and "episode_len/0" in module.last_trial
    c = module.collector
    c.start_trial(1)
    c.collect(10)
    first = c.history["observation"].data_ptr()
    c.collect(10)
    assert c.history["observation"].data_ptr() == first and c.history.shape == (4, 20)
    assert "logits" not in c.history.keys()  # nothing reads them, so they are not stored

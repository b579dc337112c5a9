"""TrialCollector: windows, history, seeding per trial and rank, value overwrite, episodic trials."""

import pytest
import torch

from lightning_memo.envs import GymTrialEnv, make_trial_env
from lightning_memo.rollout import TrialCollector, env_steps, episode_stats, trial_metrics
from tests.envs.test_gym_trial import Countdown
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


def _episodic_env(num_envs=4, trial_len=20, seed=2):
    return GymTrialEnv(lambda: Countdown("box"), num_envs=num_envs, trial_len=trial_len, seed=seed)


def test_episode_stats_leave_out_the_idle_steps_of_episodic_rows():
    env = _episodic_env()
    lengths = env.reset()["observation"][:, 0]  # Countdown shows its episode length
    assert len(set(lengths.tolist())) > 1  # shorter rows idle until the longest ends
    env.set_seed(2)
    history = env.rollout(20)  # one trial: stops when every row has ended
    returns, steps, counts = episode_stats(history, max_episodes=1)
    assert int(counts[0]) == 4 and history.shape[1] == int(lengths.max())
    assert float(steps[0]) == float(lengths.sum())
    assert float(returns[0]) == float(history["next", "reward"].sum())
    assert trial_metrics(history)["episode_len/0"] == pytest.approx(float(lengths.mean()))


def test_collect_stops_where_an_episodic_trial_ends():
    env = make_trial_env(_episodic_env())
    c = TrialCollector(env, tiny_policy(env), trial_len=20, seed=2)
    c.start_trial(0)
    lengths = c.pending["observation"][:, 0]
    assert not c.trial_over
    window = c.collect(10)  # every Countdown episode lasts at most 5 steps
    assert window.shape == (4, int(lengths.max())) and c.t == window.shape[1] and c.trial_over
    assert env_steps(window) == int(lengths.sum()) < window.numel()  # idle rows are no env steps
    assert c.pending["done"].all() and c.history["next", "done"][:, -1].all()
    assert c.collect(5).shape == (4, 0) and c.t == window.shape[1]  # nothing more to collect


def _rollout_reference(env, policy, seed, windows):
    """The trial as ``EnvBase.rollout`` collects it (what ``TrialCollector.collect`` writes out by hand)."""
    from torchrl.envs.utils import step_mdp

    from lightning_memo.policy import evaluating

    env.set_seed(seed)
    pending = env.reset()
    policy.reset(env.batch_size[0])
    out = []
    with torch.no_grad(), evaluating(policy):
        for steps in windows:
            if pending["done"].all():
                break
            w = env.rollout(steps, lambda td: policy.act(td, with_logits=False), auto_reset=False, tensordict=pending,
                            break_when_any_done=True, return_contiguous=True, trust_policy=True)
            out.append(w)
            pending = step_mdp(w[:, -1], exclude_action=True)
    return torch.cat(out, 1)


@pytest.mark.parametrize("episodic", [False, True])
def test_collect_matches_torchrl_rollout(episodic):
    """The hand-written step loop of collect gives the trial TorchRL's rollout gives (same actions from
    the same RNG state, same entries), and the history holds no inference-mode tensors."""
    if episodic:
        make_env, trial_len, seed, windows = (lambda: make_trial_env(_episodic_env())), 20, 2, (3, 3, 3, 3)
    else:
        make_env, trial_len, seed, windows = (lambda: env_factory(num_envs=3)(0)), TRIAL_LEN, 0, (10, 10, 20)
    env = make_env()
    torch.manual_seed(0)
    policy = tiny_policy(env)
    state = policy.state_dict()
    c = TrialCollector(env, policy, trial_len, seed=seed)
    torch.manual_seed(1)
    c.start_trial(0)
    for steps in windows:
        c.collect(steps)
    got = c.history

    env = make_env()
    policy = tiny_policy(env)
    policy.load_state_dict(state)
    torch.manual_seed(1)
    expected = _rollout_reference(env, policy, c.trial_seed(0), windows)
    assert got.shape == expected.shape and got.names == expected.names
    assert sorted(map(str, got.keys(True, True))) == sorted(map(str, expected.keys(True, True)))
    for key in expected.keys(True, True):
        assert torch.equal(got[key], expected[key]), key
        assert not got[key].is_inference(), key

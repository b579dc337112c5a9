"""Off-policy pieces against hand-computed values on tiny tensors: PopArt, TD targets, critic and
actor losses, Polyak targets, exploration schedule, trial replay."""

import math

import pytest
import torch
from tensordict import TensorDict

from lightning_memo.algos.amago import (
    AmagoHeads,
    PopArt,
    TrialReplay,
    actor_loss,
    amago_loss,
    bilevel_epsilon,
    critic_loss,
    epsilon_greedy,
    min_of_random_pair,
    td_targets,
)


# ------------------------------------------------------------------ PopArt
def test_popart_statistics_update_by_hand():
    popart = PopArt(num_gammas=2, beta=0.5, init_std=1.0)
    # gamma 0 sees targets 2, 4 (mean 3, mean square 10); gamma 1 sees 0, 0
    popart.update(torch.tensor([[2.0, 0.0], [4.0, 0.0]]))
    torch.testing.assert_close(popart.mu, torch.tensor([1.5, 0.0]))  # 0.5 * 0 + 0.5 * 3
    torch.testing.assert_close(popart.nu, torch.tensor([5.5, 0.5]))  # 0.5 * 1 + 0.5 * 10; 0.5 * 1 + 0
    sigma = torch.tensor([math.sqrt(5.5 - 1.5**2), math.sqrt(0.5)])
    torch.testing.assert_close(popart.sigma, sigma)
    # w' = w * old_sigma / new_sigma; b' = (old_sigma * b + old_mu - new_mu) / new_sigma, old sigma 1
    torch.testing.assert_close(popart.w, 1.0 / sigma)
    torch.testing.assert_close(popart.b, torch.tensor([-1.5, 0.0]) / sigma)
    torch.testing.assert_close(popart.normalize(torch.tensor([1.5, 1.0])), torch.tensor([0.0, 1.0]) / sigma)


def test_popart_update_leaves_unnormalised_outputs_unchanged():
    torch.manual_seed(0)
    popart = PopArt(num_gammas=3, beta=0.3, init_std=2.0)
    x = torch.randn(5, 3, 4)  # raw critic outputs [*, G, A]
    for scale in (1.0, 50.0, 0.01):
        before_norm = popart(x, action_dim=True)
        before = popart(x, normalized=False, action_dim=True)
        popart.update(scale * torch.randn(64, 3) + 10.0)
        after = popart(x, normalized=False, action_dim=True)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-4 * scale)
        assert not torch.allclose(popart(x, action_dim=True), before_norm)  # the normalised view did move
    torch.testing.assert_close(popart.denormalize(popart.normalize(x[:, :, 0])), x[:, :, 0])


def test_popart_update_ignores_masked_entries():
    popart = PopArt(num_gammas=1, beta=1.0)
    popart.update(torch.tensor([[[3.0], [1000.0]]]), mask=torch.tensor([[True, False]]))
    torch.testing.assert_close(popart.mu, torch.tensor([3.0]))


# ------------------------------------------------------------- TD targets
def test_td_targets_by_hand():
    gammas = torch.tensor([0.5, 0.9])
    rewards = torch.tensor([[1.0, 2.0]])
    terminal = torch.tensor([[False, True]])
    # next-step Q [B, T, G, A] and target-actor logits; row 0 holds step 1
    next_q = torch.tensor([[[[2.0, 4.0], [0.0, 10.0]], [[7.0, 7.0], [7.0, 7.0]]]])
    next_logits = torch.zeros(1, 2, 2, 2)
    next_logits[0, 0, 1] = torch.tensor([0.0, math.log(3.0)])  # pi = (1/4, 3/4) for gamma 0.9
    y = td_targets(rewards, terminal, gammas, next_q, next_logits)
    # gamma .5: 1 + .5 * (2 + 4) / 2 = 2.5; gamma .9: 1 + .9 * (0/4 + 10 * 3/4) = 7.75; terminal: r only
    torch.testing.assert_close(y, torch.tensor([[[2.5, 7.75], [2.0, 2.0]]]))


def test_min_of_random_pair_draws_two_distinct_critics():
    q = torch.arange(1.0, 5.0).reshape(4, 1, 1)  # critic c predicts c + 1
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([min_of_random_pair(q, gen).squeeze() for _ in range(3000)])
    # min over a uniformly drawn pair of {1,2,3,4}: 1 in 3/6 pairs, 2 in 2/6, 3 in 1/6, never 4
    freq = torch.stack([(draws == v).float().mean() for v in (1.0, 2.0, 3.0, 4.0)])
    torch.testing.assert_close(freq, torch.tensor([3 / 6, 2 / 6, 1 / 6, 0.0]), atol=0.03, rtol=0)


def test_critic_loss_by_hand():
    # [B=1, T=2, C=2, G=1, A=2]; step 0 action 1: critics say 3 and 5, target 4 -> errors 1, 1
    q = torch.tensor([[[[[1.0, 3.0]], [[2.0, 5.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]]])
    actions = torch.tensor([[1, 0]])
    targets = torch.tensor([[[4.0], [100.0]]])
    mask = torch.tensor([[True, False]])  # step 1's huge error is masked out
    torch.testing.assert_close(critic_loss(q, actions, targets, mask), torch.tensor(1.0))
    # both steps: step 1's critics say 0 for action 0, target 100 -> errors 10^4 twice; mean of 4 entries
    both = torch.tensor([[True, True]])
    torch.testing.assert_close(critic_loss(q, actions, targets, both), torch.tensor((1 + 1 + 1e4 + 1e4) / 4))


def test_actor_loss_by_hand():
    # [B=1, T=2, G=1, A=2]; pi(detached) uniform, Q = (1, 3): E_pi Q = 2 at both steps
    logits_detached = torch.zeros(1, 2, 1, 2, requires_grad=True)
    logits = torch.tensor([0.0, math.log(3.0)]).expand(1, 2, 1, 2).clone().requires_grad_(True)
    q = torch.tensor([1.0, 3.0]).expand(1, 2, 1, 2)
    actions = torch.tensor([[1, 0]])  # advantages 3 - 2 = 1 (cloned) and 1 - 2 = -1 (filtered out)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, pg, bc = actor_loss(logits_detached, logits, q, actions, mask, pg_coef=1.0, bc_coef=0.1)
    torch.testing.assert_close(pg, torch.tensor(-2.0))
    torch.testing.assert_close(bc, torch.tensor(-math.log(0.75) / 2))  # pi(1) = 3/4 at step 0, weight 0 at step 1
    torch.testing.assert_close(loss, torch.tensor(-2.0 - 0.1 * math.log(0.75) / 2))
    loss.backward()
    # d(-E_pi Q)/d logit_1 = -pi_1 (Q_1 - E Q) = -.5 * 1 per step, averaged over 2 steps
    torch.testing.assert_close(logits_detached.grad[0, :, 0], torch.tensor([[0.25, -0.25], [0.25, -0.25]]))
    # BC only where the advantage is positive: d(-0.1 log pi_1)/d logits = 0.1 (pi - onehot) / 2
    torch.testing.assert_close(logits.grad[0, 0, 0], 0.05 * torch.tensor([0.25, -0.25]))
    torch.testing.assert_close(logits.grad[0, 1, 0], torch.zeros(2))


# ------------------------------------------------------------------ heads
def _heads(**kw) -> AmagoHeads:
    torch.manual_seed(0)
    return AmagoHeads(d_model=6, num_actions=3, gammas=(0.5, 0.9, 0.99), num_critics=4, hidden=8, layers=1, **kw)


def test_heads_shapes():
    heads = _heads()
    h = torch.randn(2, 5, 6)
    assert heads.actor(h).shape == (2, 5, 3, 3)
    assert heads.q_values(h).shape == (2, 5, 4, 3, 3)
    # the critics of the ensemble differ
    q = heads.q_values(h)
    assert not torch.allclose(q[:, :, 0], q[:, :, 1])


def test_polyak_update_by_hand():
    heads = _heads()
    with torch.no_grad():
        for p in heads.critic.parameters():
            p.fill_(1.0)
        for p in heads.target_critic.parameters():
            p.fill_(0.0)
    heads.update_targets(tau=0.003)
    heads.update_targets(tau=0.003)
    for p in heads.target_critic.parameters():  # 0.003 + 0.997 * 0.003
        torch.testing.assert_close(p, torch.full_like(p, 0.003 + 0.997 * 0.003))
    assert all(not p.requires_grad for p in heads.target_critic.parameters())
    # the target actor tracks the actor the same way: after a step it sits between its old value and the actor's
    old = [p.clone() for p in heads.target_actor.parameters()]
    heads.update_targets(tau=0.5)
    for t, o, a in zip(heads.target_actor.parameters(), old, heads.actor.parameters()):
        torch.testing.assert_close(t, 0.5 * (o + a))


def test_amago_loss_targets_and_gradients():
    heads = _heads(popart_init_std=2.0)
    with torch.no_grad():  # make every target critic the same, so the random pair does not matter
        for p in heads.target_critic.parameters():
            p.copy_(p[:1].expand_as(p))
        heads.popart.mu.fill_(1.0)
    h = torch.randn(2, 4, 6, requires_grad=True)
    actions = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0], [1.0, 0.0, 0.0, 0.0]])
    terminal = torch.tensor([[False, False, False, True], [False, False, False, False]])
    mask = torch.ones(2, 4, dtype=torch.bool)
    loss, targets, td_mask, stats = amago_loss(heads, h, actions, rewards, terminal, mask, critic_coef=10.0)

    # targets by hand: r + gamma * (1 - done) * E_{pi_target} [Q_target(s', .)] in the original scale
    with torch.no_grad():
        q_next = heads.popart.denormalize(heads.q_values(h[:, 1:], heads.target_critic)[:, :, 0], action_dim=True)
        v_next = (heads.target_actor(h[:, 1:]).softmax(-1) * q_next).sum(-1)  # [B, T-1, G]
    gammas = torch.tensor([0.5, 0.9, 0.99])
    torch.testing.assert_close(targets[:, :3], rewards[:, :3, None] + gammas * v_next)
    torch.testing.assert_close(targets[0, 3], torch.full((3,), 2.0))  # terminal: reward only
    # the last step of row 1 has no next state and is not terminal: no TD target there
    assert td_mask.tolist() == [[True] * 4, [True, True, True, False]]
    torch.testing.assert_close(loss, stats["actor_loss"] + 10.0 * stats["critic_loss"])

    loss.backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert all(p.grad is None for p in heads.target_critic.parameters())
    assert all(p.grad is None for p in heads.target_actor.parameters())
    assert all(p.grad.abs().sum() > 0 for p in heads.critic.parameters())


def test_actor_q_term_moves_neither_critic_nor_sequence_output():
    heads = _heads()
    h = torch.randn(1, 3, 6, requires_grad=True)
    q = heads.frozen_q_values(h).mean(-3)
    pg = -(heads.actor(h.detach()).softmax(-1) * q).sum(-1).mean()
    pg.backward()
    assert h.grad is None
    assert all(p.grad is None for p in heads.critic.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.actor.parameters())


# ------------------------------------------------------------ exploration
def test_bilevel_epsilon_by_hand():
    steps = torch.tensor([0, 5, 10])
    kw = dict(trial_len=11, anneal_steps=100, first=(1.0, 0.05), last=(0.8, 0.01))
    torch.testing.assert_close(bilevel_epsilon(steps, env_steps=0, **kw), torch.tensor([1.0, 0.9, 0.8]))
    # half-way through the anneal: first 1 - .95/2 = .525, last .8 - .79/2 = .405
    torch.testing.assert_close(bilevel_epsilon(steps, env_steps=50, **kw), torch.tensor([0.525, 0.465, 0.405]))
    torch.testing.assert_close(bilevel_epsilon(steps, env_steps=10**6, **kw), torch.tensor([0.05, 0.03, 0.01]))


def test_epsilon_greedy_rates():
    gen = torch.Generator().manual_seed(0)
    greedy = torch.zeros(20000, dtype=torch.long)
    assert torch.equal(epsilon_greedy(greedy, 4, 0.0, gen), greedy)
    uniform = epsilon_greedy(greedy, 4, 1.0, gen)
    freq = torch.bincount(uniform, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.full((4,), 0.25), atol=0.015, rtol=0)
    # epsilon .4 changes an action with probability .4 * 3/4
    changed = (epsilon_greedy(greedy, 4, 0.4, gen) != 0).float().mean()
    assert abs(changed.item() - 0.3) < 0.015
    # per-env epsilon
    eps = torch.tensor([0.0, 1.0]).repeat(10000)
    out = epsilon_greedy(greedy, 4, eps, gen)
    assert (out[0::2] == 0).all() and (out[1::2] != 0).float().mean() > 0.7


# ----------------------------------------------------------------- replay
def _trials(first_id: int, n: int, T: int) -> TensorDict:
    """Trial ``k`` stores ``obs = 100 * k + step`` so a sampled row tells which trial and steps it holds."""
    ids = torch.arange(first_id, first_id + n)
    obs = 100 * ids[:, None] + torch.arange(T)
    return TensorDict({"obs": obs, "next": {"reward": obs.float().unsqueeze(-1)}}, batch_size=[n, T])


def test_replay_returns_whole_trials():
    replay = TrialReplay(capacity=5)
    replay.extend(_trials(0, 3, 6))
    replay.extend(_trials(3, 4, 6))  # 7 trials into 5 slots: trials 0 and 1 are overwritten
    assert len(replay) == 5
    torch.manual_seed(0)
    rows, starts = replay.sample(64)
    assert rows.shape == (64, 6) and torch.equal(starts, torch.zeros(64, dtype=torch.long))
    ids = rows["obs"][:, 0] // 100
    assert torch.equal(rows["obs"], 100 * ids[:, None] + torch.arange(6))  # whole trials, from step 0
    assert torch.equal(rows["next", "reward"].squeeze(-1), rows["obs"].float())
    assert set(ids.tolist()) == {2, 3, 4, 5, 6}


def test_replay_windows_carry_their_start():
    replay = TrialReplay(capacity=4, window=3)
    replay.extend(_trials(0, 4, 8))
    torch.manual_seed(0)
    rows, starts = replay.sample(200)
    assert rows.shape == (200, 3)
    ids = rows["obs"][:, 0] // 100
    assert torch.equal(rows["obs"], 100 * ids[:, None] + starts[:, None] + torch.arange(3))
    assert set(starts.tolist()) == set(range(6))  # every start 0 .. T - L is drawn


def test_replay_bad_input():
    with pytest.raises(ValueError, match="capacity"):
        TrialReplay(capacity=0)
    replay = TrialReplay(capacity=2, window=10)
    with pytest.raises(ValueError, match="window=10"):
        replay.extend(_trials(0, 1, 5))
    with pytest.raises(RuntimeError, match="empty"):
        TrialReplay(capacity=2).sample(1)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        TrialReplay(capacity=2).extend(_trials(0, 1, 5)[0])


@pytest.mark.parametrize("memmap", [False, True])
def test_replay_save_load_resumes_sampling(tmp_path, memmap):
    kw = dict(capacity=3, window=2)
    replay = TrialReplay(**kw, memmap_dir=tmp_path / "scratch" if memmap else None)
    replay.extend(_trials(0, 2, 4))
    replay.extend(_trials(2, 2, 4))  # wraps: the write cursor is saved too
    replay.save(tmp_path / "replay")
    restored = TrialReplay(**kw, memmap_dir=tmp_path / "scratch2" if memmap else None)
    restored.load(tmp_path / "replay")
    assert len(restored) == 3
    torch.manual_seed(1)
    a, sa = replay.sample(16)
    torch.manual_seed(1)
    b, sb = restored.sample(16)
    assert torch.equal(a["obs"], b["obs"]) and torch.equal(sa, sb)
    replay.extend(_trials(4, 1, 4))
    restored.extend(_trials(4, 1, 4))  # the next write lands in the same slot
    torch.manual_seed(2)
    a, _ = replay.sample(16)
    torch.manual_seed(2)
    b, _ = restored.sample(16)
    assert torch.equal(a["obs"], b["obs"])

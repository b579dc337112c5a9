"""PPO pieces against hand-computed values on tiny tensors."""

import math

import pytest
import torch

from lightning_memo.algos.losses import masked_mean
from lightning_memo.algos.ppo.losses import clipped_policy_loss, explained_variance, trial_gae, value_loss
from lightning_memo.algos.ppo import PPOConfig, warmup_cosine
from lightning_memo.policy import PopArtHead


def _gae_inputs():
    rewards = torch.tensor([[1.0, 0.0, 1.0]])
    values = torch.full((1, 3), 0.5)
    bootstrap = torch.tensor([0.5])
    episode_end = torch.tensor([[False, True, False]])
    trial_end = torch.zeros(1, 3, dtype=torch.bool)
    return rewards, values, bootstrap, episode_end, trial_end


def test_gae_cut_at_inner_episode():
    # gamma 0.9, lambda 0.8: delta_2 = 1 + .45 - .5 = .95; step 1 ends an episode: delta_1 = 0 - .5,
    # trace cut; adv_0 = .95 + .72 * (-.5) = .59
    adv, ret = trial_gae(*_gae_inputs(), gamma=0.9, lmbda=0.8, cut_episodes=True)
    torch.testing.assert_close(adv, torch.tensor([[0.59, -0.5, 0.95]]))
    torch.testing.assert_close(ret, adv + 0.5)


def test_gae_across_episodes():
    # no cut: delta_1 = 0 + .45 - .5 = -.05; adv_1 = -.05 + .72 * .95 = .634; adv_0 = .95 + .72 * .634
    adv, _ = trial_gae(*_gae_inputs(), gamma=0.9, lmbda=0.8, cut_episodes=False)
    torch.testing.assert_close(adv, torch.tensor([[0.95 + 0.72 * 0.634, 0.634, 0.95]]))


def test_gae_trial_end_drops_bootstrap():
    rewards, values, bootstrap, _, trial_end = _gae_inputs()
    trial_end[0, 2] = True
    adv, _ = trial_gae(rewards, values, torch.tensor([100.0]), torch.zeros_like(trial_end), trial_end, 0.9, 0.8)
    assert adv[0, 2].item() == pytest.approx(0.5)  # 1 - 0.5, the bootstrap of 100 is ignored


def test_clipped_policy_loss_and_window_mask():
    ratios = torch.tensor([1.5, 0.5, 1.5, 0.5, 3.0])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1000.0])
    mask = torch.tensor([True, True, True, True, False])  # the last step is outside the loss window
    old = torch.zeros(5)
    loss, clip_frac, kl = clipped_policy_loss(ratios.log(), old, adv, mask, clip=0.2)
    # surrogates: min(1.5, 1.2)=1.2, min(.5, .8)=.5, min(-1.5, -1.2)=-1.5, min(-.5, -.8)=-.8
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 1.5 - 0.8) / 4)
    assert clip_frac.item() == 1.0
    expected_kl = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.5, 0.5)) / 4
    assert kl.item() == pytest.approx(expected_kl, rel=1e-5)


def test_masked_steps_get_no_gradient():
    log_prob = torch.zeros(4, requires_grad=True)
    mask = torch.tensor([False, False, True, True])
    loss, _, _ = clipped_policy_loss(log_prob, torch.zeros(4), torch.ones(4), mask)
    loss.backward()
    assert log_prob.grad[:2].abs().sum() == 0 and log_prob.grad[2:].abs().sum() > 0


def test_value_loss_plain_and_clipped():
    v, old, ret = torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([3.0])
    mask = torch.tensor([True])
    assert value_loss(v, old, ret, mask).item() == pytest.approx(0.5)
    # clipped prediction 1.5 -> (1.5 - 3)^2 = 2.25 beats (2 - 3)^2 = 1
    assert value_loss(v, old, ret, mask, clip=0.5).item() == pytest.approx(1.125)


def test_masked_mean_and_explained_variance():
    x = torch.tensor([1.0, 3.0, 100.0])
    mask = torch.tensor([True, True, False])
    assert masked_mean(x, mask).item() == 2.0
    r = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(r, r, torch.ones(3, dtype=torch.bool)).item() == pytest.approx(1.0)


def test_masked_mean_broadcasts_a_step_mask_over_trailing_dims():
    x = torch.arange(12.0).reshape(1, 3, 2, 2)  # [B, T, C, G]
    mask = torch.tensor([[True, False, True]])  # [B, T]
    assert masked_mean(x, mask).item() == (0 + 1 + 2 + 3 + 8 + 9 + 10 + 11) / 8
    assert masked_mean(x, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0  # nothing masked in: 0, not nan


def test_warmup_cosine():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20, min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "override, key",
    [
        (dict(update_every=7), "ppo.update_every"),
        (dict(num_minibatches=3, grad_accumulation=2), "ppo.grad_accumulation"),
        (dict(gamma=1.5), "ppo.gamma"),
        (dict(epochs=0), "ppo.epochs"),
        (dict(value_clip=-1.0), "ppo.value_clip"),
        (dict(value_norm_beta=0.0), "ppo.value_norm_beta"),
        (dict(reward_scale=0.0), "ppo.reward_scale"),
    ],
)
def test_ppo_config_errors_name_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        PPOConfig(**{"trial_len": 40, "update_every": 10, **override}).validate()


def test_popart_statistics_against_hand_computed_values():
    head = PopArtHead(3)
    head.update(torch.tensor([2.0, 14.0 / 3.0]), beta=0.5)  # targets [1, 2, 3]: mean 2, E[x^2] 14/3
    assert float(head.mean) == pytest.approx(2.0) and float(head.std) == pytest.approx(math.sqrt(2.0 / 3.0))
    head.update(torch.tensor([5.0, 25.0]), beta=0.5)  # weights 0.25 and 0.5 on the two batches, debiased by 0.75
    mean, mean_sq = (0.25 * 2.0 + 0.5 * 5.0) / 0.75, (0.25 * 14.0 / 3.0 + 0.5 * 25.0) / 0.75
    assert float(head.mean) == pytest.approx(mean)
    assert float(head.std) == pytest.approx(math.sqrt(mean_sq - mean**2), rel=1e-5)
    assert float(head.normalize(torch.tensor(mean + float(head.std)))) == pytest.approx(1.0)
    head.update(torch.tensor([float("nan"), 1.0]), beta=0.5)  # skipped
    assert float(head.mean) == pytest.approx(mean)


def test_popart_update_preserves_outputs():
    torch.manual_seed(0)
    head = PopArtHead(8)
    h = torch.randn(5, 8)
    for moments in ([10.0, 150.0], [-3.0, 12.0], [200.0, 41000.0]):
        before = head(h)
        head.update(torch.tensor(moments), beta=0.3)
        torch.testing.assert_close(head(h), before, rtol=1e-5, atol=1e-4)
    assert float(head.std) > 1.0  # the statistics did move


def test_popart_off_is_a_plain_linear():
    head = PopArtHead(4)
    h = torch.randn(3, 4)
    torch.testing.assert_close(head(h), torch.nn.functional.linear(h, head.weight, head.bias))
    torch.testing.assert_close(head.normalize(h), h)

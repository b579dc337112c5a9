"""MemoPPO: PPO with partial updates and cache refresh (the ReLIC recipe Memo was trained with).

One training step = one trial of ``T = trial_len`` steps on ``N`` envs (:class:`TrialModule`):

1. ``start_trial()``: seeded env reset, empty memory.
2. Every ``U = update_every`` steps: collect ``U`` steps in step mode, then :meth:`MemoPPO.update`:
   GAE over the prefix ``[0, t)`` (bootstrapped with the current ``V(s_t)``, cut at inner episodes),
   ``epochs`` passes over minibatches of whole env sequences; each forward reads the whole prefix in
   sequence mode (segment randomisation on) and the loss is masked to the new window ``[t-U, t)``;
   the last update of the trial covers all ``T`` steps. With ``prefix_gradients=false`` a partial
   update encodes the prefix ``[0, t-U)`` once without gradients and the forwards run over the window
   only, attending to that cache. In episodic trials (envs with a root ``active``
   flag) steps of rows whose episode has ended (not stepped) carry no loss and are not env steps, and
   the trial stops at the step where its last row ends (its last update covers that prefix). Gradients
   are accumulated over ``grad_accumulation`` minibatches, clipped to ``max_grad_norm``, Adam steps,
   and the LR schedule (linear warm-up, cosine decay) steps with it.
3. After every update but the trial's last, the ``on_policy_update`` hook: the :class:`CacheRefresh`
   callback calls ``refresh_cache()`` (cache and stored values rebuilt under the new weights).
4. ``end_trial()``: counters, ``on_trial_end`` (trial metrics).

Value normalisation is PopArt (``value_norm``, on by default): the critic head
(:class:`~lightning_memo.policy.PopArtHead`) learns in units of running statistics of the value
targets and is rescaled when they change, so values in reward units (stored, bootstrapped, refreshed)
never jump. PopArt rather than dividing targets by running statistics alone, because partial updates
keep values computed before an update (in the trial history and the memory's bootstrap) and GAE mixes
them with fresh ones: only an output-preserving rescale keeps both on the same scale. ``reward_scale``
multiplies the rewards the update sees (not the logged returns).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
from torch.distributions import Categorical
from torchrl.envs import EnvBase

from lightning_memo.algos.base import EnvSource, TrialModule, require
from lightning_memo.algos.ppo.losses import clipped_policy_loss, explained_variance, masked_mean, trial_gae, value_loss
from lightning_memo.callbacks import CacheRefresh
from lightning_memo.nn.base import Cache
from lightning_memo.policy import ACTION_KEY, LOG_PROB_KEY, VALUE_KEY, MemoPolicy, discrete_action_count, flag
from lightning_memo.rollout import env_attribute


@dataclass
class PPOConfig:
    """PPO with partial updates. Defaults follow the reference recipe."""

    trial_len: int = 4096
    """T: steps per trial (must match the env's ``trial_len``); an integer >= 1."""
    update_every: int = 256
    """U: steps between partial updates; must divide ``trial_len``."""
    epochs: int = 4
    """Passes over the trial prefix per update; >= 1."""
    num_minibatches: int = 1
    """The env sequences are split into this many minibatches per epoch (at most the number of envs)."""
    grad_accumulation: int = 1
    """Minibatches per optimiser step; must divide ``num_minibatches``."""
    gamma: float = 0.99
    """Discount, in [0, 1]."""
    lmbda: float = 0.95
    """GAE lambda, in [0, 1]."""
    cut_episodes: bool = True
    """Cut GAE at inner-episode ends (false: bootstrap across them, RL^2-style; an episodic row's end is
    terminal either way)."""
    normalize_advantages: bool = False
    """Normalise advantages over the update's loss mask."""
    value_norm: bool = True
    """PopArt: the critic learns normalised targets, so raw rewards of any scale work."""
    value_norm_beta: float = 0.02
    """Weight of each update's targets in PopArt's running statistics, in (0, 1]."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this in the update (returns are logged unscaled); > 0."""
    clip_eps: float = 0.2
    """PPO's ratio clip; > 0."""
    value_coef: float = 0.5
    """Weight of the value loss; >= 0."""
    value_clip: Optional[float] = None
    """Clipped-value loss when set (e.g. 0.2; in normalised units with ``value_norm``); > 0 or null."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus; >= 0."""
    max_grad_norm: float = 0.2
    """Gradient-norm clip; > 0."""
    lr: float = 4e-4
    """Adam's peak learning rate; > 0."""
    adam_eps: float = 1e-5
    """Adam's epsilon; > 0."""
    warmup_steps: int = 100
    """Optimiser steps of linear LR warm-up; >= 0."""
    min_lr_ratio: float = 0.0
    """The cosine decays the LR to ``lr * min_lr_ratio`` (1.0: constant after warm-up); in [0, 1]."""
    num_trials: int = 100
    """Trials per rank; the LR schedule spans them unless ``lr_env_steps`` is set."""
    lr_env_steps: Optional[int] = None
    """When set, the LR's cosine spans this many env steps (all ranks) instead of ``num_trials``: the
    budget of runs whose trials vary in length (episodic tasks); an integer >= 1 or null."""
    refresh: bool = True
    """Add ``CacheRefresh`` (re-encode the trial after each partial update); false warns: stale cache."""
    refresh_log_probs: bool = False
    """Also overwrite the stored behaviour log-probs at a refresh."""
    shuffle_episodes: bool = False
    """Shuffle the completed inner episodes before a refresh (ReLIC's option)."""
    prefix_gradients: bool = True
    """Partial updates backpropagate through the whole prefix ``[0, t)`` (the reference). ``false``: a
    partial update encodes the prefix ``[0, t-U)`` once, without gradients, under the weights at the
    update's start (eval semantics), and every minibatch of every epoch runs only the new window
    ``[t-U, t)`` attending to that cache: faster, but no gradient from the window's losses reaches the
    prefix tokens or earlier summaries (truncated backprop at the window boundary) and the prefix
    keys/values stay those of the update's starting weights across its epochs. The trial's last update
    is a full pass either way. Needs a memory with inter-episode attention and sequence mode from a
    past (every registered one but the no-IEA ablation)."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming ``ppo.<key>`` for a setting that cannot work."""
        for key in ("trial_len", "update_every", "epochs", "num_minibatches", "grad_accumulation", "num_trials"):
            v = getattr(self, key)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"ppo.{key}: must be an integer >= 1, got {v!r}.")
        require(self.warmup_steps >= 0, f"ppo.warmup_steps: must be >= 0, got {self.warmup_steps}.")
        require(
            self.lr_env_steps is None
            or (isinstance(self.lr_env_steps, int) and not isinstance(self.lr_env_steps, bool) and self.lr_env_steps >= 1),
            f"ppo.lr_env_steps: must be an integer >= 1 or null (the schedule spans num_trials), got {self.lr_env_steps!r}.",
        )
        divisor = max(d for d in range(1, min(self.trial_len, self.update_every) + 1) if self.trial_len % d == 0)
        require(
            self.trial_len % self.update_every == 0,
            f"ppo.update_every: must divide trial_len={self.trial_len}, got {self.update_every} (e.g. {divisor}).",
        )
        require(
            self.num_minibatches % self.grad_accumulation == 0,
            f"ppo.grad_accumulation: must divide num_minibatches={self.num_minibatches}, got {self.grad_accumulation}.",
        )
        for key in ("gamma", "lmbda", "min_lr_ratio"):
            require(0.0 <= getattr(self, key) <= 1.0, f"ppo.{key}: must be in [0, 1], got {getattr(self, key)}.")
        require(0.0 < self.value_norm_beta <= 1.0, f"ppo.value_norm_beta: must be in (0, 1], got {self.value_norm_beta}.")
        for key in ("clip_eps", "lr", "adam_eps", "max_grad_norm", "reward_scale"):
            require(getattr(self, key) > 0, f"ppo.{key}: must be > 0, got {getattr(self, key)}.")
        for key in ("value_coef", "entropy_coef"):
            require(getattr(self, key) >= 0, f"ppo.{key}: must be >= 0, got {getattr(self, key)}.")
        require(self.value_clip is None or self.value_clip > 0, "ppo.value_clip: must be > 0 or null (no clipping).")

    @property
    def updates_per_trial(self) -> int:
        return self.trial_len // self.update_every

    @property
    def optimizer_steps_per_trial(self) -> int:
        return self.updates_per_trial * self.epochs * (self.num_minibatches // self.grad_accumulation)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MemoPPO(TrialModule):
    """PPO with partial updates and cache refresh over batched trials.

    Args:
        policy: a :class:`MemoPolicy`.
        env: a batched env ``[N]`` with the trial features applied, or a factory ``seed -> env``
            (called once per rank in ``setup``).
        cfg: :class:`PPOConfig`.
        seed: base seed for the env trials (ranks and trials get distinct seeds).
    """

    state_key = "memo_ppo"

    def __init__(self, policy: MemoPolicy, env: EnvSource, cfg: PPOConfig, seed: int = 0):
        cfg.validate()
        super().__init__(policy, env, cfg.trial_len, cfg.num_trials, seed)
        self.automatic_optimization = False
        self.cfg = cfg
        # prefix_gradients=false: the cache the last refresh built, kept for the next partial update's prefix
        self.reuse_refreshed_prefix = True
        self._refreshed_prefix: tuple[tuple[int, int, int], Cache] | None = None

    def check_env(self, env: EnvBase) -> None:
        check_env_policy(env, self.policy, self.cfg)

    def default_cache_refresh(self) -> CacheRefresh | None:
        cfg = self.cfg
        return CacheRefresh(refresh_log_probs=cfg.refresh_log_probs, shuffle_episodes=cfg.shuffle_episodes) if cfg.refresh else None

    def configure_optimizers(self):
        cfg = self.cfg
        # foreach: one multi-tensor kernel per Adam op instead of a loop over the parameters (the same
        # arithmetic; torch picks it by default on GPUs only)
        opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps, foreach=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_multiplier)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def lr_multiplier(self, step: int) -> float:
        """Warm-up over optimiser steps, then cosine decay over ``num_trials`` trials or, when
        ``lr_env_steps`` is set, over env steps (episodic trials vary in length, so their budget is
        env steps)."""
        cfg = self.cfg
        if cfg.lr_env_steps is None:
            total = cfg.num_trials * cfg.optimizer_steps_per_trial
            return warmup_cosine(step, cfg.warmup_steps, total, cfg.min_lr_ratio)
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, self.env_steps / cfg.lr_env_steps)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    # ------------------------------------------------------------- one trial
    def training_step(self, batch: int, batch_idx: int) -> None:
        U, T = self.cfg.update_every, self.cfg.trial_len
        self.start_trial()
        for t in range(U, T + 1, U):
            window_start = self.collector.t
            self.collect(U)  # fewer steps (none) where this rank's episodic trial has ended
            last = t == T or self.trial_over()
            stats = self.update(window_start=0 if last else window_start, bootstrap=not last)
            if last:
                break
            self.call_trial_hook("on_policy_update")  # CacheRefresh: self.refresh_cache()
        self.end_trial()
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, sync_dist=True)
        self.log("env_steps", float(self.env_steps), on_step=True)

    def update(self, window_start: int, bootstrap: bool = True) -> dict[str, float]:
        """One PPO update on the prefix ``[0, t)``, loss on ``[window_start, t)``; returns mean stats."""
        cfg, policy, collector = self.cfg, self.policy, self.collector
        history = collector.history.to(self.device)  # envs may live on another device than the model
        N, t = history.shape
        # 1. advantages over the whole prefix, bootstrapped with V(s_t) (one step from the live cache)
        last_value = policy.peek_value(collector.pending) if bootstrap else torch.zeros(N, device=self.device)
        values = history.get(VALUE_KEY).float()
        episode_end, trial_end = flag(history, ("next", "episode_end")), flag(history, ("next", "done"))
        next_active = flag(history, ("next", "active"))
        if next_active is not None:  # an episodic row that ended is terminal even when GAE crosses episodes
            trial_end = trial_end | (episode_end & ~next_active)
        advantages, returns = trial_gae(
            history.get(("next", "reward")).reshape(N, t).float() * cfg.reward_scale,
            values,
            last_value.to(values.device),
            episode_end,
            trial_end,
            cfg.gamma,
            cfg.lmbda,
            cfg.cut_episodes,
        )
        # the loss mask: the new window, without the steps of rows that were not stepped
        window = torch.zeros(N, t, dtype=torch.bool, device=history.device)
        window[:, window_start:] = True
        active = flag(history, "active")
        if active is not None:
            window &= active
        if cfg.normalize_advantages and window.any():
            advantages = (advantages - advantages[window].mean()) / (advantages[window].std() + 1e-8)
        head = policy.critic_head
        if cfg.value_norm:
            targets = returns[window].double()
            sums = torch.stack((targets.sum(), targets.pow(2).sum(), targets.new_tensor(targets.numel())))
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")  # every rank: the same statistics
            if sums[2] > 0:
                head.update(sums[:2] / sums[2], cfg.value_norm_beta)
        old_log_prob = history.get(LOG_PROB_KEY).float()
        actions = history.get(ACTION_KEY).reshape(N, t)

        # 2. prefix_gradients=false: the prefix once, without gradients; the forwards then cover the window only
        past = None
        if not cfg.prefix_gradients and window_start > 0:
            past = self._take_refreshed_prefix(window_start)
            if past is None:
                past = policy.encode_prefix(history[:, :window_start])
            history, actions, old_log_prob, values, advantages, returns, window = (
                x[:, window_start:] for x in (history, actions, old_log_prob, values, advantages, returns, window)
            )

        # 3. epochs over minibatches of whole env sequences
        opt, sched = self.optimizers(), self.lr_schedulers()
        policy.train()
        sums: dict[str, float] = {}
        n_mb = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(N, device=history.device)
            for i, idx in enumerate(order.tensor_split(cfg.num_minibatches)):
                logits, new_values = policy.evaluate(history[idx], past=None if past is None else past.select(idx))
                dist = Categorical(logits=logits.float())
                mask = window[idx]
                pg_loss, clip_frac, approx_kl = clipped_policy_loss(
                    dist.log_prob(actions[idx]), old_log_prob[idx], advantages[idx], mask, cfg.clip_eps
                )
                # in the critic's normalised units (identity without value_norm): a loss scale free of the rewards'
                v_loss = value_loss(
                    head.normalize(new_values.float()), head.normalize(values[idx]), head.normalize(returns[idx]),
                    mask, cfg.value_clip,
                )
                entropy = masked_mean(dist.entropy(), mask)
                loss = pg_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
                terms = {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy, "loss": loss,
                         "clip_fraction": clip_frac, "approx_kl": approx_kl}
                for k, v in terms.items():  # the first non-finite term names the problem
                    value = float(v.detach())
                    if not math.isfinite(value):
                        raise self.non_finite(f"non-finite {k} ({value}) in the PPO update at trial step {t}")
                    sums[k] = sums.get(k, 0.0) + value
                step_now = (i + 1) % cfg.grad_accumulation == 0
                # accumulate locally; DDP all-reduces once, in the backward that precedes the step
                with nullcontext() if step_now else _no_backward_sync(self.trainer.strategy):
                    self.manual_backward(loss / cfg.grad_accumulation)
                if step_now:
                    self._check_gradients(t)
                    self.clip_gradients(opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
                    opt.step()
                    opt.zero_grad()
                    sched.step()
                n_mb += 1
        stats = {k: v / n_mb for k, v in sums.items()}
        stats["explained_variance"] = float(explained_variance(values, returns, window))
        stats["lr"] = sched.get_last_lr()[0]
        return stats

    @torch.no_grad()
    def refresh_cache(self, shuffle_episodes: bool = False, refresh_log_probs: bool = False) -> None:
        """:meth:`TrialModule.refresh_cache`; with ``prefix_gradients=false`` it also keeps a copy of the
        cache it built, which is ``policy.encode_prefix(history)`` (the same eval pass over the same steps
        under the same encoder and memory weights), for the next partial update's prefix."""
        super().refresh_cache(shuffle_episodes=shuffle_episodes, refresh_log_probs=refresh_log_probs)
        self._refreshed_prefix = None
        if not self.cfg.prefix_gradients and not shuffle_episodes and self.reuse_refreshed_prefix:
            self._refreshed_prefix = (self._prefix_tag(self.collector.t), self.policy.memory.cache_state())

    def _prefix_tag(self, t: int) -> tuple[int, int, int]:
        """(trial, prefix length, optimiser steps): a kept cache is valid for a prefix with the same tag
        (same steps, no weight change since; PopArt rescales only the critic head, which no cache holds)."""
        return self.trial_index, t, self.trainer.global_step

    def _take_refreshed_prefix(self, t: int) -> Cache | None:
        """The kept refresh cache if it encodes the prefix ``[0, t)`` under the current weights (used once)."""
        kept, self._refreshed_prefix = self._refreshed_prefix, None
        return kept[1] if kept is not None and kept[0] == self._prefix_tag(t) else None

    def _check_gradients(self, t: int) -> None:
        """Stop on a NaN/inf gradient, naming the first parameter that has one (before clipping, which
        would spread it to all; 16-bit mixed precision skips such steps by design, so it is not checked)."""
        if str(self.trainer.precision) == "16-mixed":
            return
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
            name = next(n for n, p in self.policy.named_parameters() if p.grad is not None and not p.grad.isfinite().all())
            raise self.non_finite(f"non-finite gradient of policy.{name} in the PPO update at trial step {t}")


def _no_backward_sync(strategy):
    """The strategy's "skip the gradient all-reduce" context (DDP's ``no_sync``); a no-op on one device."""
    block = getattr(strategy, "block_backward_sync", None)
    return block() if block is not None else nullcontext()


def check_env_policy(env: EnvBase, policy: MemoPolicy, cfg: PPOConfig) -> None:
    """Fail before training when the env and the policy/config do not fit together, naming the problem."""
    problem = policy.memory.past_support()
    if not cfg.prefix_gradients and problem is not None:
        raise ValueError(
            f"ppo.prefix_gradients=false runs sequence mode from a cached prefix, which {problem}; set "
            "ppo.prefix_gradients=true (or choose another memory)."
        )
    if len(env.batch_size) != 1:
        raise ValueError(
            f"the env must be batched with batch_size [N]; got {list(env.batch_size)}. Build N rows in one env "
            "(e.g. make_popgym_env(name, num_envs=N), not a SerialEnv of one-row trial envs), or pass a "
            "SerialEnv/ParallelEnv of plain envs through lightning_memo.envs.GymTrialEnv."
        )
    obs_keys = set(env.full_observation_spec.keys(True, True))
    missing = [k for k in ("episode_start", "episode_end") if k not in obs_keys]
    if missing:
        raise ValueError(
            f"the env has no {' or '.join(map(repr, missing))} flag: it is not a trial env. Turn a gymnasium or "
            "TorchRL env (GymEnv, SerialEnv, ParallelEnv, ...) into one with "
            "make_trial_env(lightning_memo.envs.GymTrialEnv(env, trial_len=...)), or emit the flags of "
            "docs/envs.md's batched contract from your env."
        )
    if "is_init" not in obs_keys:
        raise ValueError(
            "the env has no 'is_init' entry; wrap it with lightning_memo.envs.transforms.make_trial_env "
            "(InitTracker + trial features)."
        )
    if env.batch_size[0] < cfg.num_minibatches:
        raise ValueError(
            f"ppo.num_minibatches={cfg.num_minibatches} exceeds the env's {env.batch_size[0]} envs (minibatches are "
            "whole env sequences); lower ppo.num_minibatches or use more envs."
        )
    missing = [k for k in policy.observation_keys if k not in obs_keys]
    if missing:
        raise ValueError(f"the policy reads observation keys {missing} the env does not produce ({sorted(map(str, obs_keys))}).")
    n = discrete_action_count(env)
    if n != policy.num_actions:
        raise ValueError(f"the env has {n} actions but the policy's actor head has {policy.num_actions}.")
    trial_len = env_attribute(env, "trial_len")
    if trial_len is not None and trial_len != cfg.trial_len:
        raise ValueError(f"ppo.trial_len={cfg.trial_len} but the env's trial_len is {trial_len}; set them equal.")

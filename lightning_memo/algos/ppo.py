"""MemoPPO: the ReLIC recipe (spec/training.md §1) as a LightningModule with manual optimisation.

One Lightning epoch = one training "batch" = one trial (``Trainer(max_epochs=cfg.num_trials)``; more
trials later = a larger ``max_epochs`` and ``ckpt_path``). Inside :meth:`MemoPPO.training_step`:

1. ``collector.start_trial(k)``: seeded env reset, empty memory; callbacks get ``on_trial_start``.
2. Every ``U = update_every`` steps: collect ``U`` steps in step mode, then :meth:`MemoPPO.update`:
   GAE over the prefix ``[0, t)`` (bootstrapped with the current ``V(s_t)``, cut at inner episodes),
   ``epochs`` passes over minibatches of whole env sequences; each forward reads the whole prefix in
   sequence mode (segment randomisation on) and the loss is masked to the new window ``[t-U, t)``;
   the last update of the trial covers all ``T`` steps. Gradients are accumulated over
   ``grad_accumulation`` minibatches, clipped to ``max_grad_norm``, Adam steps, the LR schedule
   (linear warm-up, cosine decay) steps with it.
3. After every update except the trial's last, callbacks get ``on_policy_update`` (the
   :class:`~lightning_memo.callbacks.CacheRefresh` callback, added by :meth:`configure_callbacks`,
   rebuilds the memory cache and overwrites the stale values there).
4. At the trial end callbacks get ``on_trial_end`` (trial metrics) and counters advance.

Checkpoints are taken between trials (env state is not saved; the next trial is a seeded reset), and
carry the counters and RNG states so a resumed run continues exactly.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from torchrl.envs import EnvBase

from lightning_memo.algos.losses import clipped_policy_loss, explained_variance, masked_mean, trial_gae, value_loss
from lightning_memo.collect import TrialCollector
from lightning_memo.policy import ACTION_KEY, LOG_PROB_KEY, VALUE_KEY, MemoPolicy


@dataclass
class PPOConfig:
    """PPO with partial updates. Defaults follow the reference recipe (spec/training.md §1)."""

    trial_len: int = 4096  # T: steps per trial (must match the env)
    update_every: int = 256  # U: steps between partial updates; must divide trial_len
    epochs: int = 4
    num_minibatches: int = 1  # env sequences are split into this many minibatches per epoch
    grad_accumulation: int = 1  # minibatches per optimiser step; must divide num_minibatches
    gamma: float = 0.99
    lmbda: float = 0.95
    cut_episodes: bool = True  # GAE cut at inner-episode ends (False: bootstrap across, RL^2-style)
    normalize_advantages: bool = False
    clip_eps: float = 0.2
    value_coef: float = 0.5
    value_clip: Optional[float] = None  # clipped-value loss when set (e.g. 0.2)
    entropy_coef: float = 0.01
    max_grad_norm: float = 0.2
    lr: float = 4e-4
    adam_eps: float = 1e-5
    warmup_steps: int = 100  # optimiser steps of linear warm-up
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    num_trials: int = 100  # trials per rank; the LR schedule spans them
    refresh: bool = True  # add the CacheRefresh callback (flush + re-encode after each partial update)
    refresh_log_probs: bool = False  # also overwrite stored behaviour log-probs at refresh
    shuffle_episodes: bool = False  # shuffle completed inner episodes before the refresh (ReLIC option)

    def validate(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"ppo.{key}: {msg}")

        for key in ("trial_len", "update_every", "epochs", "num_minibatches", "grad_accumulation", "num_trials"):
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key, f"must be an integer >= 1, got {v!r}.")
        need(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}.")
        need(
            self.trial_len % self.update_every == 0,
            "update_every",
            f"must divide trial_len={self.trial_len}, got {self.update_every} "
            f"(e.g. {_divisor_below(self.trial_len, self.update_every)}).",
        )
        need(
            self.num_minibatches % self.grad_accumulation == 0,
            "grad_accumulation",
            f"must divide num_minibatches={self.num_minibatches}, got {self.grad_accumulation}.",
        )
        for key in ("gamma", "lmbda"):
            need(0.0 <= getattr(self, key) <= 1.0, key, f"must be in [0, 1], got {getattr(self, key)}.")
        for key in ("clip_eps", "lr", "adam_eps", "max_grad_norm"):
            need(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}.")
        for key in ("value_coef", "entropy_coef"):
            need(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}.")
        need(self.value_clip is None or self.value_clip > 0, "value_clip", "must be > 0 or null (no clipping).")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}.")

    @property
    def updates_per_trial(self) -> int:
        return self.trial_len // self.update_every

    @property
    def optimizer_steps_per_trial(self) -> int:
        return self.updates_per_trial * self.epochs * (self.num_minibatches // self.grad_accumulation)


def _divisor_below(n: int, k: int) -> int:
    return max(d for d in range(1, max(1, min(n, k)) + 1) if n % d == 0)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _TrialTicks(IterableDataset):
    """One item per epoch: the index of the next trial (read when the epoch starts, i.e. after a
    checkpoint restore), nothing once ``num_trials`` are done. Train with ``max_epochs=num_trials``."""

    def __init__(self, module: "MemoPPO") -> None:
        self.module = module

    def __iter__(self) -> Iterator[int]:
        index = self.module.trial_index
        return iter([index] if index < self.module.cfg.num_trials else [])


class MemoPPO(pl.LightningModule):
    """PPO with partial updates and cache refresh over batched trials.

    Args:
        policy: a :class:`MemoPolicy`.
        env_factory: ``seed -> EnvBase`` (batch ``[N]``, trial features applied); called once per rank
            in :meth:`setup` so each rank has its own envs.
        cfg: :class:`PPOConfig`.
        seed: base seed for the env trials (ranks and trials get distinct seeds).
    """

    def __init__(self, policy: MemoPolicy, env_factory: Callable[[int], EnvBase], cfg: PPOConfig, seed: int = 0):
        super().__init__()
        cfg.validate()
        self.automatic_optimization = False
        self.policy = policy
        self.env_factory = env_factory
        self.cfg = cfg
        self.seed = seed
        self.collector: TrialCollector | None = None
        self.trial_index = 0  # trials finished on this rank
        self.env_steps = 0  # env steps over all ranks
        self.last_trial: dict = {}  # metrics of the latest trial (set by callbacks/tests read it)

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        if self.collector is None:
            env = self.env_factory(self.seed)
            check_env_policy(env, self.policy, self.cfg)
            self.collector = TrialCollector(
                env, self.policy, self.cfg.trial_len, self.seed, self.global_rank, self.trainer.world_size
            )

    def configure_callbacks(self):
        from lightning_memo.callbacks import CacheRefresh

        if not self.cfg.refresh:
            return []
        return [CacheRefresh(refresh_log_probs=self.cfg.refresh_log_probs, shuffle_episodes=self.cfg.shuffle_episodes)]

    def train_dataloader(self) -> DataLoader:
        # its own generator: creating the iterator must not draw from the global torch RNG (restored
        # from the checkpoint), or a resumed run would sample differently from an uninterrupted one
        return DataLoader(_TrialTicks(self), batch_size=None, generator=torch.Generator())

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        total = cfg.num_trials * cfg.optimizer_steps_per_trial
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total, cfg.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------- one trial
    def training_step(self, batch: int, batch_idx: int) -> None:
        cfg, collector = self.cfg, self.collector
        collector.start_trial(self.trial_index)
        self._call_callbacks("on_trial_start", collector)
        stats: dict[str, float] = {}
        for t in range(cfg.update_every, cfg.trial_len + 1, cfg.update_every):
            collector.collect(cfg.update_every)
            self.env_steps += collector.num_envs * cfg.update_every * self.trainer.world_size
            last = t == cfg.trial_len
            stats = self.update(collector, window_start=0 if last else t - cfg.update_every, bootstrap=not last)
            if not last:
                self._call_callbacks("on_policy_update", collector)
        self.trial_index += 1
        self._call_callbacks("on_trial_end", collector)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, sync_dist=True)
        self.log("env_steps", float(self.env_steps), on_step=True, prog_bar=True)
        return None

    def update(self, collector: TrialCollector, window_start: int, bootstrap: bool = True) -> dict[str, float]:
        """One PPO update on the prefix ``[0, t)``, loss on ``[window_start, t)``; returns mean stats."""
        cfg, policy = self.cfg, self.policy
        history = collector.history.to(self.device)  # envs may live on another device than the model
        N, t = history.shape
        # 1. advantages over the whole prefix, bootstrapped with V(s_t) under the current weights
        if bootstrap:
            with torch.no_grad():
                last_value = _eval_values(policy, collector.prefix_with_pending())[:, -1]
        else:
            last_value = torch.zeros(N, device=history.device)
        values = history.get(VALUE_KEY).float()
        advantages, returns = trial_gae(
            history.get(("next", "reward")).reshape(N, t).float(),
            values,
            last_value.float(),
            history.get(("next", "episode_end")).reshape(N, t),
            history.get(("next", "done")).reshape(N, t),
            cfg.gamma,
            cfg.lmbda,
            cfg.cut_episodes,
        )
        window = torch.zeros(N, t, dtype=torch.bool, device=history.device)
        window[:, window_start:] = True
        if cfg.normalize_advantages:
            advantages = (advantages - advantages[window].mean()) / (advantages[window].std() + 1e-8)
        old_log_prob = history.get(LOG_PROB_KEY).float()
        actions = history.get(ACTION_KEY).reshape(N, t)

        # 2. epochs over minibatches of whole env sequences
        opt, sched = self.optimizers(), self.lr_schedulers()
        policy.train()
        sums: dict[str, float] = {}
        n_mb = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(N, device=history.device)
            for i, idx in enumerate(order.tensor_split(cfg.num_minibatches)):
                logits, new_values = policy.evaluate(history[idx])
                dist = torch.distributions.Categorical(logits=logits.float())
                mask = window[idx]
                pg_loss, clip_frac, approx_kl = clipped_policy_loss(
                    dist.log_prob(actions[idx]), old_log_prob[idx], advantages[idx], mask, cfg.clip_eps
                )
                v_loss = value_loss(new_values.float(), values[idx], returns[idx], mask, cfg.value_clip)
                entropy = masked_mean(dist.entropy(), mask)
                loss = pg_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
                step_now = (i + 1) % cfg.grad_accumulation == 0
                # accumulate locally; DDP all-reduces once, in the backward that precedes the step
                with nullcontext() if step_now else _no_backward_sync(self.trainer.strategy):
                    self.manual_backward(loss / cfg.grad_accumulation)
                if step_now:
                    self.clip_gradients(opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
                    opt.step()
                    opt.zero_grad()
                    sched.step()
                for k, v in (("loss", loss), ("policy_loss", pg_loss), ("value_loss", v_loss),
                             ("entropy", entropy), ("clip_fraction", clip_frac), ("approx_kl", approx_kl)):
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                n_mb += 1
        stats = {k: v / n_mb for k, v in sums.items()}
        stats["explained_variance"] = float(explained_variance(values, returns, window))
        stats["lr"] = sched.get_last_lr()[0]
        return stats

    # --------------------------------------------------------- callback hooks
    def _call_callbacks(self, hook: str, collector: TrialCollector) -> None:
        """Dispatch a trial hook (``on_trial_start``, ``on_policy_update``, ``on_trial_end``) to the callbacks."""
        for cb in self.trainer.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self.trainer, self, collector)

    # ------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["memo_ppo"] = {
            "trial_index": self.trial_index,
            "env_steps": self.env_steps,
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["memo_ppo"]
        self.trial_index = state["trial_index"]
        self.env_steps = state["env_steps"]
        torch.set_rng_state(state["rng"]["torch"])
        name, keys, pos, has_gauss, gauss = state["rng"]["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(state["rng"]["python"])


def _no_backward_sync(strategy):
    """The strategy's "skip the gradient all-reduce" context (DDP's ``no_sync``); a no-op on one device."""
    block = getattr(strategy, "block_backward_sync", None)
    return block() if block is not None else nullcontext()


def _numpy_rng_state() -> tuple:
    """numpy's global RNG state with plain Python types (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, keys.tolist(), int(pos), int(has_gauss), float(gauss)


def _eval_values(policy: MemoPolicy, td) -> torch.Tensor:
    """Values ``[N, t]`` of a prefix in eval mode (fixed segment length), no cache change."""
    was_training = policy.training
    policy.eval()
    try:
        return policy.evaluate(td)[1].float()
    finally:
        policy.train(was_training)


def check_env_policy(env: EnvBase, policy: MemoPolicy, cfg: PPOConfig) -> None:
    """Fail before training when the env and the policy/config do not fit together, naming the problem."""
    if len(env.batch_size) != 1:
        raise ValueError(f"the env must be batched with batch_size [N]; got {list(env.batch_size)}.")
    if env.batch_size[0] < cfg.num_minibatches:
        raise ValueError(
            f"ppo.num_minibatches={cfg.num_minibatches} exceeds the env's {env.batch_size[0]} envs (minibatches are "
            "whole env sequences); lower ppo.num_minibatches or use more envs."
        )
    obs_keys = set(env.full_observation_spec.keys(True, True))
    missing = [k for k in policy.observation_keys if k not in obs_keys]
    if missing:
        raise ValueError(f"the policy reads observation keys {missing} the env does not produce ({sorted(map(str, obs_keys))}).")
    for key in ("is_init", "episode_start"):
        if key not in obs_keys:
            raise ValueError(
                f"the env has no {key!r} entry; wrap it with lightning_memo.envs.transforms.make_trial_env "
                "(InitTracker + trial features)."
            )
    for key in ("episode_end",):
        if key not in obs_keys:
            raise ValueError(f"the env has no {key!r} flag; MemoPPO cuts GAE at inner episodes and needs it.")
    action_spec = env.full_action_spec[ACTION_KEY]
    n = getattr(getattr(action_spec, "space", None), "n", None)
    if n is None:
        raise ValueError(f"MemoPPO supports discrete (Categorical) actions; the env's action spec is {type(action_spec).__name__}.")
    if n != policy.num_actions:
        raise ValueError(f"the env has {n} actions but the policy's actor head has {policy.num_actions}.")
    trial_len = getattr(env, "trial_len", None)
    base = getattr(env, "base_env", None)
    trial_len = trial_len if trial_len is not None else getattr(base, "trial_len", None)
    if trial_len is not None and trial_len != cfg.trial_len:
        raise ValueError(f"ppo.trial_len={cfg.trial_len} but the env's trial_len is {trial_len}; set them equal.")

"""MemoAmago: the off-policy recipe (AMAGO-style) as a LightningModule on the shared trial loop.

One training step = one trial of ``T = trial_len`` steps on ``N`` envs (:class:`TrialModule`):

1. ``start_trial()``: seeded env reset, empty memory.
2. Every ``U = update_every`` steps: collect ``U`` steps in step mode (KV cache), exploring
   epsilon-greedily with the bilevel schedule; then, once the replay holds ``learning_starts`` trials,
   :meth:`MemoAmago.update` runs ``updates_per_env_step * N * U`` gradient steps (the fraction carries
   over), each on ``batch_size`` trials (or windows) sampled uniformly from the replay: one sequence
   forward, every head on its output, one scalar loss ``actor + critic_coef * critic``, Adam, then
   PopArt statistics and Polyak targets. After an update the ``on_policy_update`` hook lets
   :class:`CacheRefresh` re-encode the trial so far under the new weights (as in PPO).
3. ``end_trial()``: the whole trial ``[N, T]`` goes into the replay; counters, trial metrics.

Checkpoints (between trials) carry the counters and RNG states (the base) plus the update credit, and
the replay is written beside them (``<checkpoint dir>/replay/trial-<k>-rank<r>``, the newest only),
so a resumed run continues exactly. Without a snapshot (``save_replay=false`` or deleted) a resumed
run starts from an empty replay and waits ``learning_starts`` trials again: it trains on, but no
longer matches the uninterrupted run.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
from lightning.pytorch.utilities import rank_zero_warn
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

from lightning_memo.algos.amago.exploration import bilevel_epsilon
from lightning_memo.algos.amago.losses import amago_loss
from lightning_memo.algos.amago.policy import AmagoPolicy
from lightning_memo.algos.amago.replay import TrialReplay
from lightning_memo.algos.base import EnvSource, TrialModule, require
from lightning_memo.callbacks import CacheRefresh
from lightning_memo.policy import ACTION_KEY, EPISODE_START_KEY, IS_INIT_KEY, MemoPolicy, discrete_action_count, flag
from lightning_memo.rollout import env_attribute


@dataclass
class AmagoConfig:
    """The off-policy recipe. The ensemble size, ``tau``, the discount factors and the loss weights are
    the recipe's; the schedule, replay and head sizes are this package's defaults (CPU configs shrink
    ``head_hidden``)."""

    trial_len: int = 500
    """T: steps per trial; must equal the env's (in a run config it follows ``env.trial_len``)."""
    update_every: int = 100
    """U: steps between update rounds inside a trial; must divide ``trial_len``."""
    updates_per_env_step: float = 0.05
    """Gradient steps per env step of this rank (>= 0; the fraction carries over to the next round)."""
    batch_size: int = 16
    """Trials (or windows) per gradient step (>= 1)."""
    learning_starts: int = 1
    """Trials in the replay before updates start (>= 1, at most ``replay_capacity``)."""
    replay_capacity: int = 2000
    """Trials kept per rank (first in, first out)."""
    replay_window: Optional[int] = None
    """Steps per sampled row, in ``[2, trial_len]``; null: whole trials."""
    replay_memmap_dir: Optional[str] = None
    """Keep the replay memory-mapped under this directory (for buffers larger than RAM); null: in RAM."""
    save_replay: bool = True
    """Write the replay beside each checkpoint, so a resumed run continues exactly."""
    gammas: List[float] = field(default_factory=lambda: [0.1, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999])
    """The discount factors every head computes at once, each in ``[0, 1)``."""
    act_gamma: float = 0.999
    """The discount factor whose actor acts (one of ``gammas``)."""
    num_critics: int = 4
    """Critics in the ensemble (>= 2: TD targets take the min of 2 drawn at random)."""
    tau: float = 0.003
    """Polyak step of the target actor and critics, in ``(0, 1]``."""
    critic_coef: float = 10.0
    """Weight of the critic loss in ``actor + critic_coef * critic``."""
    bc_coef: float = 0.1
    """Weight of the advantage-filtered behaviour cloning in the actor loss."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this in the TD targets (> 0; 100 on Dark-Key-To-Door)."""
    head_hidden: int = 256
    """Hidden width of the actor and critic heads."""
    head_layers: int = 2
    """Hidden layers of the actor and critic heads (>= 0)."""
    popart_beta: float = 5e-4
    """Weight of each update's TD targets in PopArt's running statistics, in ``(0, 1]``."""
    popart_init_std: float = 1.0
    """PopArt's initial standard deviation (> 0)."""
    lr: float = 3e-4
    """Adam learning rate."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    warmup_steps: int = 0
    """Gradient steps of linear learning-rate warm-up (0: none)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this norm."""
    eps_anneal_steps: int = 500_000
    """Env steps (all ranks) over which exploration anneals from the first to the second rates."""
    eps_first: List[float] = field(default_factory=lambda: [1.0, 0.05])
    """Epsilon at a trial's first step: ``[at the start of training, after eps_anneal_steps]``."""
    eps_last: List[float] = field(default_factory=lambda: [0.8, 0.01])
    """Epsilon at a trial's last step: ``[at the start of training, after eps_anneal_steps]``."""
    num_trials: int = 100
    """Trials per rank (one Lightning epoch each)."""
    refresh: bool = True
    """Add :class:`CacheRefresh` (re-encode the trial after each update round); false warns: a stale cache."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming ``amago.<key>`` for a setting that cannot work."""
        for key in ("trial_len", "update_every", "batch_size", "replay_capacity", "num_critics", "num_trials",
                    "head_hidden", "learning_starts"):
            v = getattr(self, key)
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
            require(ok, f"amago.{key}: must be an integer >= 1, got {v!r}.")
        for key in ("head_layers", "warmup_steps", "eps_anneal_steps"):
            v = getattr(self, key)
            require(isinstance(v, int) and v >= 0, f"amago.{key}: must be an integer >= 0, got {v!r}.")
        require(
            self.trial_len % self.update_every == 0,
            f"amago.update_every: must divide trial_len={self.trial_len}, got {self.update_every}.",
        )
        require(
            self.num_critics >= 2,
            f"amago.num_critics: TD targets take the min of 2 critics; need >= 2, got {self.num_critics}.",
        )
        require(
            self.learning_starts <= self.replay_capacity,
            f"amago.learning_starts={self.learning_starts} exceeds replay_capacity={self.replay_capacity}: "
            "updates would never start.",
        )
        require(
            self.replay_window is None or 2 <= self.replay_window <= self.trial_len,
            f"amago.replay_window: must be null (whole trials) or in [2, trial_len={self.trial_len}], "
            f"got {self.replay_window}.",
        )
        require(len(self.gammas) >= 1 and all(0.0 <= g < 1.0 for g in self.gammas),
                f"amago.gammas: must be a non-empty list of discount factors in [0, 1), got {list(self.gammas)}.")
        require(
            self.act_gamma in self.gammas,
            f"amago.act_gamma={self.act_gamma} must be one of amago.gammas {list(self.gammas)}.",
        )
        require(0.0 < self.tau <= 1.0, f"amago.tau: must be in (0, 1], got {self.tau}.")
        require(0.0 < self.popart_beta <= 1.0, f"amago.popart_beta: must be in (0, 1], got {self.popart_beta}.")
        for key in ("updates_per_env_step", "critic_coef", "bc_coef"):
            require(getattr(self, key) >= 0, f"amago.{key}: must be >= 0, got {getattr(self, key)}.")
        for key in ("reward_scale", "lr", "adam_eps", "max_grad_norm", "popart_init_std"):
            require(getattr(self, key) > 0, f"amago.{key}: must be > 0, got {getattr(self, key)}.")
        for key in ("eps_first", "eps_last"):
            v = list(getattr(self, key))
            require(len(v) == 2 and all(0.0 <= e <= 1.0 for e in v),
                    f"amago.{key}: must be [start, end] exploration rates in [0, 1], got {v}.")


class MemoAmago(TrialModule):
    """Off-policy actor-critic over replayed trials, acting in step mode with the memory cache.

    Args:
        policy: a :class:`MemoPolicy`; its encoder and memory become the shared sequence model of an
            :class:`AmagoPolicy` (``self.policy``), its actor/critic heads are not used.
        env: a batched env ``[N]`` with the trial features applied, or a factory ``seed -> env``.
        cfg: :class:`AmagoConfig`.
        seed: base seed for the env trials (ranks and trials get distinct seeds).
    """

    state_key = "memo_amago"
    config_section = "amago"  # the run config's section of this algorithm (named in warnings)

    def __init__(self, policy: MemoPolicy, env: EnvSource, cfg: AmagoConfig, seed: int = 0) -> None:
        cfg.validate()
        super().__init__(amago_policy(policy, cfg), env, cfg.trial_len, cfg.num_trials, seed)
        self.automatic_optimization = False
        self.cfg = cfg
        self.replay: TrialReplay | None = None  # built per rank in setup
        self.update_credit = 0.0  # fractional gradient steps carried to the next round
        self.num_updates = 0  # gradient steps taken
        self._trial_step = 0  # the step the exploration hook is about to act on

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.replay is None:
            memmap = self.cfg.replay_memmap_dir
            memmap = None if memmap is None else Path(memmap) / f"rank{self.global_rank}"
            self.replay = TrialReplay(self.cfg.replay_capacity, self.cfg.replay_window, memmap)
        if self._explore not in self.collector.step_hooks:
            self.collector.step_hooks.append(self._explore)

    def check_env(self, env: EnvBase) -> None:
        obs_keys = set(env.full_observation_spec.keys(True, True))
        if "active" in obs_keys:
            raise ValueError(
                "MemoAmago replays trials of trial_len steps on every row; this env's trials are episodic (rows "
                "end at different steps: an 'active' flag). Use env.kwargs.mode=meta (restarted episodes fill "
                "the trial) or algo=ppo."
            )
        missing = [k for k in (*self.policy.observation_keys, IS_INIT_KEY, EPISODE_START_KEY) if k not in obs_keys]
        if missing:
            raise ValueError(
                f"the env has no {missing} (the policy reads them); build it with "
                "lightning_memo.envs.transforms.make_trial_env and the policy from the same env."
            )
        n = discrete_action_count(env)
        if n != self.policy.num_actions:
            raise ValueError(f"the env has {n} actions but the policy was built for {self.policy.num_actions}.")
        trial_len = env_attribute(env, "trial_len")
        if trial_len is not None and trial_len != self.cfg.trial_len:
            raise ValueError(
                f"amago.trial_len={self.cfg.trial_len} but the env's trial_len is {trial_len}; set them equal."
            )

    def default_cache_refresh(self) -> CacheRefresh | None:
        return CacheRefresh() if self.cfg.refresh else None

    def configure_optimizers(self):
        cfg = self.cfg
        params = [p for p in self.policy.parameters() if p.requires_grad]  # not the Polyak targets
        opt = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)
        warmup = max(cfg.warmup_steps, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------- one trial
    def training_step(self, batch: int, batch_idx: int) -> None:
        U, T = self.cfg.update_every, self.cfg.trial_len
        self.start_trial()
        self._trial_step = 0
        stats: dict[str, float] = {}
        for t in range(U, T + 1, U):
            self.collect(U)
            self.policy.epsilon = 0.0  # explore only while collecting
            steps = self.updates_due(U)
            if steps:
                stats = self.update(steps)
                if t < T:
                    self.call_trial_hook("on_policy_update")  # CacheRefresh: self.refresh_cache()
        self.replay.extend(self.trial_record(self.collector.history))
        self.end_trial()
        stats["epsilon_first_step"] = self.exploration_rate(0)
        stats["replay_trials"] = float(len(self.replay))
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, sync_dist=True)
        self.log("env_steps", float(self.env_steps), on_step=True)

    def exploration_rate(self, step: int) -> float:
        """Exploration rate at trial step ``step`` after ``env_steps`` env steps (bilevel schedule)."""
        cfg = self.cfg
        first, last = tuple(cfg.eps_first), tuple(cfg.eps_last)
        return float(bilevel_epsilon(step, cfg.trial_len, self.env_steps, cfg.eps_anneal_steps, first, last))

    def _explore(self, env: EnvBase, td: TensorDictBase) -> None:
        """Collector step hook: the exploration rate of the step about to be acted on."""
        self.policy.epsilon = self.exploration_rate(self._trial_step)
        self._trial_step += 1

    def updates_due(self, steps: int) -> int:
        """Gradient steps owed for ``steps`` more steps of the ``N`` envs (0 until the replay is warm)."""
        if len(self.replay) < self.cfg.learning_starts:
            return 0
        self.update_credit += self.cfg.updates_per_env_step * self.collector.num_envs * steps
        due = math.floor(self.update_credit)
        self.update_credit -= due
        return due

    def trial_record(self, history: TensorDictBase) -> TensorDictBase:
        """What the replay keeps of a trial ``[N, T]``: policy inputs, flags, action, reward, terminal."""
        keys = [*self.policy.observation_keys, IS_INIT_KEY, EPISODE_START_KEY, ACTION_KEY, ("next", "reward")]
        return history.select(*keys, terminal_key(history))

    # ----------------------------------------------------------------- update
    def update(self, num_steps: int) -> dict[str, float]:
        """``num_steps`` gradient steps on replayed trials; returns the mean of each statistic."""
        cfg, policy = self.cfg, self.policy
        heads = policy.amago
        opt, sched = self.optimizers(), self.lr_schedulers()
        policy.train()
        sums: dict[str, float] = {}
        for _ in range(num_steps):
            batch, _ = self.replay.sample(cfg.batch_size)
            batch = batch.to(self.device)
            B, L = batch.shape
            terminal = flag(batch, terminal_key(batch))
            rewards = batch.get(("next", "reward")).reshape(B, L).float() * cfg.reward_scale
            mask = torch.ones(B, L, dtype=torch.bool, device=self.device)  # trials are never padded here
            h = policy.features(batch)  # the one sequence-model forward
            loss, targets, td_mask, stats = amago_loss(
                heads, h, batch.get(ACTION_KEY).reshape(B, L), rewards, terminal, mask, cfg.critic_coef, cfg.bc_coef
            )
            for k, v in stats.items():
                value = float(v)
                if not math.isfinite(value):
                    raise self.non_finite(f"non-finite {k} ({value}) in the off-policy update")
                sums[k] = sums.get(k, 0.0) + value
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            sched.step()
            heads.popart.update(targets, td_mask, reduce=self._mean_over_ranks)
            heads.update_targets(cfg.tau)
            self.num_updates += 1
        stats = {k: v / num_steps for k, v in sums.items()}
        stats["popart_mu"] = float(heads.popart.mu[policy.act_gamma_index])
        stats["popart_sigma"] = float(heads.popart.sigma[policy.act_gamma_index])
        stats["lr"] = sched.get_last_lr()[0]
        stats["updates"] = float(self.num_updates)
        return stats

    def _mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(x, reduce_op="mean") if self.trainer.world_size > 1 else x

    # ------------------------------------------------------------ checkpoint
    def replay_snapshot_root(self) -> Path:
        """The folder of the replay snapshots: ``replay/`` beside the checkpoints."""
        ckpt = self.trainer.checkpoint_callback
        return Path(getattr(ckpt, "dirpath", None) or self.trainer.default_root_dir) / "replay"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint[self.state_key]
        state["update_credit"], state["num_updates"] = self.update_credit, self.num_updates
        state["replay_dir"] = str(self.replay_snapshot_root().resolve()) if self.cfg.save_replay else None
        if not self.cfg.save_replay:
            return
        path = self.replay_snapshot_root() / _snapshot_name(self.trial_index, self.global_rank)
        if not path.exists():  # Lightning may write several files (last.ckpt, trial-k.ckpt) per trial
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.replay.save(tmp)
            tmp.rename(path)  # a kill while writing leaves no half snapshot under the final name
        for old in path.parent.glob(_snapshot_name("*", self.global_rank)):  # keep the newest only
            if old != path:
                shutil.rmtree(old, ignore_errors=True)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint[self.state_key]
        self.update_credit, self.num_updates = state["update_credit"], state["num_updates"]
        root = state["replay_dir"]
        path = None if root is None else Path(root) / _snapshot_name(self.trial_index, self.global_rank)
        if path is not None and path.exists():
            self.replay.load(path)
        else:
            rank_zero_warn(
                f"no replay snapshot for this checkpoint ({path or 'amago.save_replay was false'}): resuming with an "
                f"empty replay (updates wait for amago.learning_starts={self.cfg.learning_starts} trials); the run "
                "no longer matches an uninterrupted one."
            )


def amago_policy(policy: MemoPolicy, cfg: AmagoConfig) -> AmagoPolicy:
    """``policy``'s encoder and memory with the off-policy heads ``cfg`` describes (what :class:`MemoAmago`
    trains, and what its checkpoints' ``policy.*`` weights load into)."""
    return AmagoPolicy(
        policy, cfg.gammas, cfg.act_gamma, num_critics=cfg.num_critics, hidden=cfg.head_hidden,
        layers=cfg.head_layers, popart_beta=cfg.popart_beta, popart_init_std=cfg.popart_init_std,
    )


def terminal_key(td: TensorDictBase) -> tuple[str, str]:
    """The flag that ends bootstrapping: ``("next", "terminated")`` when the env writes it, else ``done``.
    Inner-episode ends are not terminal: values bootstrap across them to the trial's end."""
    return ("next", "terminated") if ("next", "terminated") in td.keys(True, True) else ("next", "done")


def _snapshot_name(trial_index: int | str, rank: int) -> str:
    return f"trial-{trial_index}-rank{rank}"

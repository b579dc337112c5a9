"""Callbacks at named points of the trial loop.

Besides Lightning's hooks, the trainers (:class:`~lightning_memo.algos.base.TrialModule`) call three
trial hooks on every callback that defines them (see :class:`TrialCallback`):

* ``on_trial_start(trainer, module, collector)`` after the trial's seeded reset, before the first step:
  :class:`RolloutVideo` starts recording here;
* ``on_policy_update(trainer, module, collector)`` after every partial update (weights changed, the
  trial goes on): :class:`CacheRefresh` decides here whether to call ``module.refresh_cache()``;
* ``on_trial_end(trainer, module, collector)`` after the trial's final update: :class:`TrialMetrics`
  logs return/success/SPL overall and by inner-episode index; :class:`EvaluationCallback` runs held-out
  evaluation trials on a cache of its own.

Callbacks talk to the module through its public methods and counters (``refresh_cache``,
``flush_cache``, ``trial_index``, ``env_steps``, ``num_trials``, ``trial_len``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from tqdm.auto import tqdm

from lightning_memo.rollout import TrialCollector, env_attribute, episode_stats, trial_metrics


class TrialCallback(Callback):
    """A Lightning callback with the trial hooks of MemoPPO (no-ops here)."""

    def on_trial_start(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        """After the trial's seeded reset, before its first step."""

    def on_policy_update(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        """After a partial update, before acting resumes."""

    def on_trial_end(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        """After the last update of a trial; ``collector.history`` holds the whole trial ``[N, T]``."""


class CacheRefresh(TrialCallback):
    """When and how the memory cache is brought up to date after a partial update (the KV-cache flush).

    Weights change at every update, so the cached keys/values and the stored value estimates are stale.
    By default, after every partial update, the module's ``refresh_cache()`` re-encodes the trial so far
    under the new weights (fixed segment length) and overwrites the stored values; with
    ``refresh_log_probs`` also the behaviour log-probs (default: kept, as in the reference); with
    ``shuffle_episodes`` the completed inner episodes are re-encoded in a random order (ReLIC's option).

    Args:
        every: refresh after every ``every``-th partial update of a trial (in between, acting goes on
            with a stale cache: cheaper, less exact).
        flush_only: empty the cache instead of re-encoding (``flush_cache()``): acting goes on from an
            empty memory and the stored values stay as they were.
    """

    def __init__(
        self, every: int = 1, flush_only: bool = False, refresh_log_probs: bool = False, shuffle_episodes: bool = False
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"CacheRefresh: every must be an integer >= 1 (partial updates), got {every!r}.")
        self.every, self.flush_only = every, flush_only
        self.refresh_log_probs, self.shuffle_episodes = refresh_log_probs, shuffle_episodes
        self._updates = 0

    def on_trial_start(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        self._updates = 0

    def on_policy_update(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        self._updates += 1
        if self._updates % self.every:
            return
        if self.flush_only:
            pl_module.flush_cache()
        else:
            pl_module.refresh_cache(shuffle_episodes=self.shuffle_episodes, refresh_log_probs=self.refresh_log_probs)


class TrialMetrics(TrialCallback):
    """Logs per trial: mean return, successes, SPL (where the env reports it) and, per inner-episode
    index ``k < max_episodes``, the mean return and length of completed episodes (in-context improvement).
    Metrics are averaged over envs and reduced across ranks.
    """

    def __init__(self, max_episodes: int = 10) -> None:
        self.max_episodes = max_episodes

    def on_trial_end(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        history = collector.history
        totals = trial_metrics(history, max_episodes=0)  # per-episode keys below, reduced
        pl_module.log_dict({f"trial/{k}": v for k, v in totals.items()}, on_step=True, sync_dist=True)
        # per-episode means over every rank's completed episodes: sums and counts reduced first, so all
        # ranks log the same keys (a rank may have finished fewer episodes)
        stats = torch.stack(episode_stats(history, self.max_episodes))
        stats = trainer.strategy.reduce(stats.to(pl_module.device), reduce_op="sum")
        returns, lengths, counts = stats.cpu()
        for k in range(self.max_episodes):
            if counts[k] > 0:
                pl_module.log(f"trial/episode_return/{k}", float(returns[k] / counts[k]), on_step=True)
                pl_module.log(f"trial/episode_len/{k}", float(lengths[k] / counts[k]), on_step=True)
        memory = pl_module.policy.memory
        pl_module.log("trial/cache_bytes_per_env", memory.cache_nbytes() / max(1, collector.num_envs), on_step=True)


class RolloutVideo(TrialCallback):
    """Saves every ``every``-th training trial of env ``env_index`` (rank 0) as ``trial_<k>.gif``.

    The ``trial_len + 1`` frames are the states the agent acted on while collecting, plus the final
    one (no extra rollout, so training is unchanged), drawn by the env's ``render_frame(index)`` (the
    batched Dark-Key-To-Door and ObjNavGrid envs have one). ``dirpath`` defaults to
    ``<trainer.log_dir>/videos``. Needs Pillow.
    """

    def __init__(self, every: int = 50, env_index: int = 0, dirpath: str | Path | None = None, fps: int = 8) -> None:
        if every < 1:
            raise ValueError(f"RolloutVideo: every must be >= 1 trial, got {every}.")
        self.every, self.env_index, self.dirpath, self.fps = every, env_index, dirpath, fps
        self.frames: list[np.ndarray] = []
        self.saved: list[Path] = []
        self._trial: int | None = None
        self._render = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise ImportError("RolloutVideo writes GIFs with Pillow: pip install pillow (or lightning_memo[dev]).") from None
        if self.dirpath is None:  # trainer.log_dir is a collective under DDP: every rank reads it here
            self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "videos"

    def on_trial_start(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        if trainer.global_rank != 0 or pl_module.trial_index % self.every:
            return
        if not 0 <= self.env_index < collector.num_envs:
            raise ValueError(f"RolloutVideo: env_index={self.env_index} but the env has {collector.num_envs} envs.")
        self._render = _renderer(collector.env)
        self._trial = pl_module.trial_index
        self.frames = []
        collector.step_hooks.append(self._grab)  # one frame per step, of the state acted on

    def _grab(self, env, td) -> None:
        self.frames.append(self._render(self.env_index))

    def on_trial_end(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        if self._trial is None:
            return
        from lightning_memo.envs.render import save_trial

        collector.step_hooks.remove(self._grab)
        self.frames.append(self._render(self.env_index))  # and where the trial ended
        root = Path(self.dirpath)
        root.mkdir(parents=True, exist_ok=True)
        self.saved.append(save_trial(self.frames, root / f"trial_{self._trial:05d}.gif", fps=self.fps))
        self._trial = None  # self.frames keeps the last recording until the next one starts


def _renderer(env):
    """``env``'s ``render_frame(index)``, looked up through TorchRL transforms."""
    render = env_attribute(env, "render_frame")
    if render is None:
        raise TypeError(
            "RolloutVideo needs an env with render_frame(index) -> uint8 [H, W, 3] (DarkKeyToDoorEnv and "
            "ObjNavGridEnv have one); add that method to your env or drop the callback."
        )
    return render


class EvaluationCallback(TrialCallback):
    """Every ``every`` training trials, ``num_trials`` evaluation trials on held-out seeds, logged as
    ``eval/return``, ``eval/successes``, ``eval/spl``, ``eval/episode_return/k``, ``eval/cache_bytes_per_env``
    and ``eval/step_ms`` beside the training metrics.

    The evaluation runs on the training env between trials (the next training trial reseeds and resets it)
    and steps a cache of its own (``memory.new_cache``); sampled actions (``greedy=False``) use a generator
    of their own. So training goes on exactly as without the callback. Seeds: see
    :func:`lightning_memo.evaluate.held_out_seed` (rank ``r`` of ``W`` evaluates its own share).
    """

    def __init__(self, every: int = 50, num_trials: int = 1, greedy: bool = True, max_episodes: int = 10) -> None:
        for name, value in (("every", every), ("num_trials", num_trials)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EvaluationCallback: {name} must be an integer >= 1, got {value!r}.")
        self.every, self.num_trials, self.greedy, self.max_episodes = every, num_trials, greedy, max_episodes
        self.generator = torch.Generator()
        self.last: dict[str, float] = {}  # the latest evaluation's metrics (this rank)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.generator.manual_seed(pl_module.seed + trainer.global_rank)

    def on_trial_end(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        if pl_module.trial_index % self.every:
            return
        from lightning_memo.evaluate import held_out_seed, run_trials, summarize, trial_rows

        rank, world = trainer.global_rank, trainer.world_size
        seeds = lambda j: held_out_seed(pl_module.seed, j, collector.num_envs, rank, world)  # noqa: E731
        record = run_trials(
            pl_module.policy, collector.env, pl_module.trial_len, self.num_trials, seeds, self.greedy, self.generator
        )
        self.last = {k: v for k, v in summarize(trial_rows(record, seeds)).items() if k != "return_std"}
        pl_module.log_dict({f"eval/{k}": v for k, v in self.last.items()}, on_step=True, sync_dist=True)
        stats = torch.stack([torch.stack(episode_stats(h, self.max_episodes)) for h in record.histories]).sum(0)
        returns, _, counts = trainer.strategy.reduce(stats.to(pl_module.device), reduce_op="sum").cpu()
        for k in range(self.max_episodes):
            if counts[k] > 0:
                pl_module.log(f"eval/episode_return/{k}", float(returns[k] / counts[k]), on_step=True)


class EnvStepProgressBar(ProgressBar):
    """One progress bar for the whole run, in env steps over all ranks (drawn on rank 0).

    The total is the run's env-step budget: ``max_env_steps`` when given, else that of a callback on the
    Trainer with a ``max_env_steps`` attribute (the CLI's ``EnvStepBudget``). Without a budget it is
    ``num_trials x trial_len x N x world_size``, except for envs whose trials may end early (a root
    ``active`` flag: episodic trials), where the bar shows the count and rate without a total. A resumed
    run starts the bar at the steps already done and counts its rate from there. It moves after every
    update; the postfix shows the last trial's mean return and the last loss when they are logged.
    """

    def __init__(self, max_env_steps: int | None = None) -> None:
        super().__init__()
        self.max_env_steps = max_env_steps
        self._enabled = True
        self.bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def total(self, trainer: Trainer, pl_module: LightningModule) -> int | None:
        """The bar's total: the env-step budget, else the trials' steps when they are fixed, else ``None``."""
        budgets = [self.max_env_steps] if self.max_env_steps else []
        budgets += [cb.max_env_steps for cb in trainer.callbacks if cb is not self and getattr(cb, "max_env_steps", None)]
        fixed = "active" not in pl_module.collector.env.observation_spec.keys()
        if fixed:
            budgets.append(pl_module.num_trials * pl_module.trial_len * pl_module.collector.num_envs * trainer.world_size)
        return min(budgets) if budgets else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._enabled:
            return
        self.bar = tqdm(
            total=self.total(trainer, pl_module), initial=pl_module.env_steps, desc="env steps", unit="step",
            dynamic_ncols=True, file=sys.stderr,
        )

    def _advance(self, pl_module: LightningModule) -> None:
        if self.bar is not None:
            self.bar.update(pl_module.env_steps - self.bar.n)

    def on_policy_update(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        self._advance(pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.bar is None:
            return
        metrics = trainer.callback_metrics
        postfix = {name: f"{float(metrics[key]):.3g}" for name, key in (("return", "trial/return"), ("loss", "train/loss"))
                   if key in metrics}
        self.bar.set_postfix(postfix, refresh=False)
        self._advance(pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

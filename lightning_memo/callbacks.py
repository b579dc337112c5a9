"""Callbacks at named points of the trial loop.

Besides Lightning's hooks, :class:`~lightning_memo.algos.ppo.MemoPPO` calls three trial hooks on every
callback that defines them (see :class:`TrialCallback`):

* ``on_trial_start(trainer, module, collector)`` after the trial's seeded reset, before the first step:
  :class:`RolloutVideo` starts recording here;
* ``on_policy_update(trainer, module, collector)`` after every partial update (weights changed, the
  trial goes on): :class:`CacheRefresh` rebuilds the memory cache and the stale values here;
* ``on_trial_end(trainer, module, collector)`` after the trial's final update: :class:`TrialMetrics`
  logs return/success/SPL overall and by inner-episode index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import Tensor

from lightning_memo.collect import TrialCollector
from lightning_memo.policy import ACTION_KEY


class TrialCallback(Callback):
    """A Lightning callback with the trial hooks of MemoPPO (no-ops here)."""

    def on_trial_start(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        """After the trial's seeded reset, before its first step."""

    def on_policy_update(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        """After a partial update, before acting resumes."""

    def on_trial_end(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        """After the last update of a trial; ``collector.history`` holds the whole trial ``[N, T]``."""


def shuffled_episode_order(episode_start: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A time permutation ``[N, t]`` per row that shuffles the completed inner episodes.

    ``episode_start [N, t]`` bool (t=0 counts as a start). The episode still running at ``t`` (the last
    one) stays last, so the refreshed cache ends with the steps the agent is in; each episode keeps its
    internal order. ``history[row, perm[row]]`` is the shuffled context.
    """
    starts = episode_start.clone()
    starts[:, 0] = True
    N, t = starts.shape
    perms = []
    for row in range(N):
        bounds = starts[row].nonzero().squeeze(1).tolist() + [t]
        episodes = [torch.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        done, current = episodes[:-1], episodes[-1]
        order = torch.randperm(len(done), generator=generator).tolist()
        perms.append(torch.cat([done[i] for i in order] + [current]))
    return torch.stack(perms).to(episode_start.device)


class CacheRefresh(TrialCallback):
    """The KV-cache flush-and-recompute after every partial update (spec/memo.md §4).

    Re-encodes the stored prefix under the new weights (``policy.refresh``: fixed segment length, no
    randomisation), rebuilding the memory cache, and overwrites the stored values; with
    ``refresh_log_probs`` also the behaviour log-probs (default: kept, as in the reference). With
    ``shuffle_episodes`` the completed inner episodes are re-encoded in a random order (ReLIC's
    option); the stored values are mapped back to their steps.
    """

    def __init__(self, refresh_log_probs: bool = False, shuffle_episodes: bool = False, seed: int = 0) -> None:
        self.refresh_log_probs = refresh_log_probs
        self.shuffle_episodes = shuffle_episodes
        self.generator = torch.Generator().manual_seed(seed)

    def on_policy_update(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        history = collector.history
        if self.shuffle_episodes:
            perm = shuffled_episode_order(_flat(history, "episode_start"), self.generator)
            context = _gather_time(history, perm)
            context.set("is_init", history.get("is_init"))  # the trial start stays at t=0
        else:
            perm, context = None, history
        logits, values = (x.to(history.device) for x in pl_module.policy.refresh(context))
        log_probs = None
        if self.refresh_log_probs:
            actions = context.get(ACTION_KEY).reshape(values.shape)
            log_probs = torch.distributions.Categorical(logits=logits).log_prob(actions)
        if perm is not None:
            inverse = perm.argsort(dim=1)
            values = values.gather(1, inverse)
            log_probs = None if log_probs is None else log_probs.gather(1, inverse)
        collector.overwrite(values, log_probs)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.generator.set_state(state_dict["generator"])


class TrialMetrics(TrialCallback):
    """Logs per trial: mean return, successes, SPL (where the env reports it) and, per inner-episode
    index ``k < max_episodes``, the mean return and length of completed episodes (in-context improvement).
    Metrics are averaged over envs and reduced across ranks. The latest values are kept in
    ``pl_module.last_trial``.
    """

    def __init__(self, max_episodes: int = 10) -> None:
        self.max_episodes = max_episodes

    def on_trial_end(self, trainer: Trainer, pl_module: LightningModule, collector: TrialCollector) -> None:
        history = collector.history
        metrics = trial_metrics(history, self.max_episodes)
        pl_module.last_trial = metrics
        totals = {k: v for k, v in metrics.items() if not k.startswith("episode_")}
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
        cache = pl_module.policy.memory
        pl_module.log("trial/cache_bytes_per_env", cache.cache_nbytes() / max(1, collector.num_envs), on_step=True)


def episode_stats(history, max_episodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per inner-episode index ``k < max_episodes``: sums of return and length over the envs where
    episode ``k`` ended inside the trial, and their count; three float tensors ``[max_episodes]``."""
    N, T = history.shape
    reward = history.get(("next", "reward")).reshape(N, T).float()
    index = history.get("episode_index").reshape(N, T)
    end = _flat(history, ("next", "episode_end"))
    out = torch.zeros(3, max_episodes)
    for k in range(max_episodes):
        in_k = index == k
        completed = (in_k & end).any(1)
        out[0, k] = (reward * in_k).sum(1)[completed].sum()
        out[1, k] = in_k.sum(1)[completed].float().sum()
        out[2, k] = completed.float().sum()
    return out[0], out[1], out[2]


def trial_metrics(history, max_episodes: int = 10) -> dict[str, float]:
    """Trial statistics from a history ``[N, T]`` (see :class:`TrialMetrics`)."""
    N, T = history.shape
    reward = history.get(("next", "reward")).reshape(N, T).float()
    out = {"return": float(reward.sum(1).mean())}
    if ("next", "success") in history.keys(True, True):
        out["successes"] = float(_flat(history, ("next", "success")).float().sum(1).mean())
    if ("next", "spl") in history.keys(True, True):
        end = _flat(history, ("next", "episode_end"))
        spl = history.get(("next", "spl")).reshape(N, T).float()
        out["spl"] = float(spl[end].mean()) if end.any() else 0.0
    if "episode_index" in history.keys():
        returns, lengths, counts = episode_stats(history, max_episodes)
        for k in range(max_episodes):
            if counts[k] > 0:
                out[f"episode_return/{k}"] = float(returns[k] / counts[k])
                out[f"episode_len/{k}"] = float(lengths[k] / counts[k])
    return out


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
        root = Path(self.dirpath) if self.dirpath is not None else Path(trainer.log_dir or trainer.default_root_dir) / "videos"
        root.mkdir(parents=True, exist_ok=True)
        self.saved.append(save_trial(self.frames, root / f"trial_{self._trial:05d}.gif", fps=self.fps))
        self._trial = None  # self.frames keeps the last recording until the next one starts


def _renderer(env):
    """``env``'s ``render_frame(index)``, looked up through TorchRL transforms (``base_env``)."""
    while env is not None and not hasattr(env, "render_frame"):
        env = getattr(env, "base_env", None)
    if env is None:
        raise TypeError(
            "RolloutVideo needs an env with render_frame(index) -> uint8 [H, W, 3] (DarkKeyToDoorEnv and "
            "ObjNavGridEnv have one); add that method to your env or drop the callback."
        )
    return env.render_frame


class EnvStepProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar counting environment steps (all ranks) instead of trials."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        per_trial = pl_module.cfg.trial_len * pl_module.collector.num_envs * trainer.world_size
        self.train_progress_bar.reset(total=pl_module.cfg.num_trials * per_trial)
        # Lightning restarts the bar every epoch (= trial): start it at the running total, and count
        # the rate from there (tqdm subtracts `initial`)
        self.train_progress_bar.initial = self.train_progress_bar.n = pl_module.env_steps
        self.train_progress_bar.set_description("env steps")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.train_progress_bar.n = pl_module.env_steps
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
        self.train_progress_bar.refresh()


def _flat(history, key) -> Tensor:
    """A ``[N, t, 1]`` flag of the history as ``[N, t]`` bool."""
    N, t = history.shape
    return history.get(key).reshape(N, t).bool()


def _gather_time(history, perm: Tensor):
    """``history`` with its time axis permuted per row by ``perm [N, t]``."""
    N, t = perm.shape
    rows = torch.arange(N, device=perm.device)[:, None].expand(N, t)
    return history[rows, perm]

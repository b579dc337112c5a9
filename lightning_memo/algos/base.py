"""What every trainer shares: one trial per training step over a :class:`TrialCollector`.

:class:`TrialModule` is the LightningModule base of the algorithms (``algos/ppo``, ``algos/amago``). It
owns the trial loop's bookkeeping, so an algorithm's ``training_step`` reads top to bottom::

    self.start_trial()                       # seeded reset, empty memory; hook on_trial_start
    self.collect(U)                          # U steps in step mode, appended to the trial history
    last = self.trial_over()                 # on every rank (episodic trials may end before trial_len)
    ... update on self.collector.history ...
    self.call_trial_hook("on_policy_update") # unless last; CacheRefresh calls self.refresh_cache() here
    self.end_trial()                         # counters; hook on_trial_end

One Lightning epoch = one trial (``Trainer(max_epochs=num_trials)``): the dataloader yields the index of
the next trial, read when the epoch starts, i.e. after a checkpoint restore. Checkpoints are taken
between trials and carry the counters and the RNG states, so a resumed run continues exactly (env state
is not saved: the next trial is a seeded reset).
"""

from __future__ import annotations

import random
import time
from typing import Callable, Iterator, Union

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.distributions import Categorical
from torch.utils.data import DataLoader, IterableDataset
from torchrl.envs import EnvBase

from lightning_memo.callbacks import CacheRefresh
from lightning_memo.policy import ACTION_KEY, MemoPolicy, NonFiniteError
from lightning_memo.rollout import TrialCollector, env_steps, trial_metrics, with_shuffled_episodes

EnvSource = Union[EnvBase, Callable[[int], EnvBase]]


def require(ok: bool, message: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error(message)`` unless ``ok``: the one validation helper of the configs."""
    if not ok:
        raise error(message)


class _TrialTicks(IterableDataset):
    """One item per epoch: the index of the next trial, nothing once ``num_trials`` are done."""

    def __init__(self, module: "TrialModule") -> None:
        self.module = module

    def __iter__(self) -> Iterator[int]:
        index = self.module.trial_index
        return iter([index] if index < self.module.num_trials else [])


class TrialModule(pl.LightningModule):
    """Base of the trainers: trials of ``trial_len`` steps on the env, ``num_trials`` per rank.

    Args:
        policy: the [`MemoPolicy`][lightning_memo.policy.MemoPolicy] being trained.
        env: a batched env (``[N]``, trial features applied; used as is on every rank) or a factory
            ``seed -> env`` called once per rank in `setup`.
        trial_len: steps per trial.
        num_trials: trials per rank.
        seed: base seed of the env trials (ranks and trials get distinct seeds) and of the episode
            shuffling at refresh.
    """

    state_key = "trial_state"  # where on_save_checkpoint stores the counters and RNG states
    config_section = "ppo"  # the run config's section of this algorithm (named in warnings)

    def __init__(self, policy: MemoPolicy, env: EnvSource, trial_len: int, num_trials: int, seed: int = 0) -> None:
        super().__init__()
        self.policy = policy
        self.trial_len, self.num_trials, self.seed = trial_len, num_trials, seed
        # a given env lives in the collector (not an attribute: an EnvBase is an nn.Module, and would
        # join this module's state_dict and devices)
        self.env_factory = None if isinstance(env, EnvBase) else env
        self.collector = TrialCollector(env, policy, trial_len, seed) if isinstance(env, EnvBase) else None
        self.trial_index = 0  # trials finished on this rank
        self.env_steps = 0  # env steps over all ranks
        self.shuffle_generator = torch.Generator().manual_seed(seed)  # episode order at refresh
        self._clock = (0, time.perf_counter())  # (env_steps, time) when fitting started

    def check_env(self, env: EnvBase) -> None:
        """Raise ``ValueError`` when ``env`` and the policy/config do not fit (algorithms override)."""

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Build this rank's env from the factory (when one was given) and check it against the policy."""
        if self.collector is None:
            self.collector = TrialCollector(self.env_factory(self.seed), self.policy, self.trial_len, self.seed)
        self.check_env(self.collector.env)
        self.collector.rank, self.collector.world_size = self.global_rank, self.trainer.world_size

    def on_train_start(self) -> None:
        """Start the env-steps-per-second clock (after a checkpoint restore)."""
        self._clock = (self.env_steps, time.perf_counter())  # after a checkpoint restore

    def steps_per_second(self) -> float:
        """Env steps (all ranks) per second since fitting started."""
        steps, start = self._clock
        return (self.env_steps - steps) / max(time.perf_counter() - start, 1e-9)

    def train_dataloader(self) -> DataLoader:
        """One tick per trial: Lightning's epoch loop runs one `training_step` (one trial) per epoch."""
        # its own generator: creating the iterator must not draw from the global torch RNG (restored
        # from the checkpoint), or a resumed run would sample differently from an uninterrupted one
        return DataLoader(_TrialTicks(self), batch_size=None, generator=torch.Generator())

    def configure_callbacks(self) -> list:
        """The default :class:`CacheRefresh` (unless the Trainer already has one: a user's swap wins)."""
        if any(isinstance(cb, CacheRefresh) for cb in self.trainer.callbacks):
            return []
        refresh = self.default_cache_refresh()
        if refresh is None:
            rank_zero_warn(
                f"{type(self).__name__} runs without a CacheRefresh callback: after every partial update the "
                "policy keeps acting on a memory cache (and stored values) computed with the old weights. "
                f"Set {self.config_section}.refresh=true, or add CacheRefresh(every=k) / CacheRefresh(flush_only=True) to the Trainer."
            )
            return []
        return [refresh]

    def default_cache_refresh(self) -> CacheRefresh | None:
        """The refresh callback of the recipe (``None``: no refresh)."""
        return CacheRefresh()

    # ------------------------------------------------------------ the trial
    def start_trial(self) -> None:
        """Seeded reset of the envs and an empty memory for trial ``trial_index``; ``on_trial_start``."""
        self.collector.start_trial(self.trial_index)
        self.call_trial_hook("on_trial_start")

    def collect(self, steps: int):
        """``steps`` more steps of the trial (step mode); returns the window ``[N, steps]`` (shorter, or
        empty, where the trial ended: see ``TrialCollector.collect``). ``env_steps`` grows by the steps
        every rank's envs took (not the idle steps of episodic rows that have ended)."""
        try:
            window = self.collector.collect(steps)
        except NonFiniteError as err:
            raise self.non_finite(str(err)) from None
        stepped = torch.tensor(float(env_steps(window)), device=self.device)
        self.env_steps += int(self.trainer.strategy.reduce(stepped, reduce_op="sum"))
        return window

    def trial_over(self) -> bool:
        """Whether the current trial has ended on every rank (an episodic trial may end early on some)."""
        over = torch.tensor(float(self.collector.trial_over), device=self.device)
        return bool(self.trainer.strategy.reduce(over, reduce_op="mean") == 1.0)

    def end_trial(self) -> None:
        """Count the trial; ``on_trial_end`` (the whole trial is in ``collector.history``)."""
        self.trial_index += 1
        self.call_trial_hook("on_trial_end")

    def call_trial_hook(self, hook: str) -> None:
        """Call ``hook(trainer, module, collector)`` on every callback that defines it."""
        for cb in self.trainer.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self.trainer, self, self.collector)

    @property
    def last_trial(self) -> dict[str, float]:
        """Metrics of the latest finished trial on this rank (see ``rollout.trial_metrics``); ``{}`` before
        the first one ends and while the next one runs."""
        c = self.collector
        if c is None or not c.trial_over or self.trial_index == 0:
            return {}
        return trial_metrics(c.history)

    # --------------------------------------------------------- cache refresh
    @torch.no_grad()
    def refresh_cache(self, shuffle_episodes: bool = False, refresh_log_probs: bool = False) -> None:
        """Rebuild the memory cache from the trial so far under the current weights, in one pass that
        also overwrites the stored values (and, with ``refresh_log_probs``, the behaviour log-probs).

        With ``shuffle_episodes`` the completed inner episodes are re-encoded in a random order (ReLIC's
        option; the running episode stays last) and the fresh values are mapped back to their steps.
        """
        history = self.collector.history
        if shuffle_episodes:
            context, perm = with_shuffled_episodes(history, self.shuffle_generator)
        else:
            context, perm = history, None
        logits, values = (x.to(history.device) for x in self.policy.refresh(context))
        log_probs = None
        if refresh_log_probs:
            actions = context.get(ACTION_KEY).reshape(values.shape)
            log_probs = Categorical(logits=logits).log_prob(actions)
        if perm is not None:
            inverse = perm.argsort(dim=1)
            values = values.gather(1, inverse)
            log_probs = None if log_probs is None else log_probs.gather(1, inverse)
        self.collector.overwrite(values, log_probs)

    def flush_cache(self) -> None:
        """Empty the memory cache without re-encoding (acting goes on from an empty memory)."""
        self.policy.reset(self.collector.num_envs)

    # ------------------------------------------------------------- failures
    def non_finite(self, what: str) -> NonFiniteError:
        """The error for a NaN/inf in ``what``, naming the trial, the optimiser step and the last checkpoint."""
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        return NonFiniteError(
            f"{what} (trial {self.trial_index}, optimiser step {self.trainer.global_step}); the run stops here. "
            f"Last good checkpoint: {ckpt}"
        )

    # ------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the trial and env-step counters and the torch, numpy and python RNG states."""
        checkpoint[self.state_key] = {
            "trial_index": self.trial_index,
            "env_steps": self.env_steps,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_rng_state(),
                "python": random.getstate(),
                "shuffle": self.shuffle_generator.get_state(),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore what `on_save_checkpoint` stored, so the run continues exactly."""
        state = checkpoint[self.state_key]
        self.trial_index = state["trial_index"]
        self.env_steps = state["env_steps"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(rng["python"])
        self.shuffle_generator.set_state(rng["shuffle"])


def _numpy_rng_state() -> tuple:
    """numpy's global RNG state with plain Python types (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, keys.tolist(), int(pos), int(has_gauss), float(gauss)

"""Wiring and the command line: build a run from a validated config, once, and fit it.

:func:`build` makes the env (once: the same env object is handed to the module), the memory and the
policy (once), the training module of ``algo`` (:class:`MemoPPO` or :class:`MemoAmago`: the same env,
policy and callbacks for both), checks that they fit, resolves the run directory
``<log_dir>/<run_name>/<version>/`` (a new ``version_<k>``, or the directory of the checkpoint being
resumed, after checking that the checkpoint's config is compatible), and makes the ``lightning.Trainer``
from ``trainer.*``.
:func:`train` builds and fits; :func:`main` is the examples' command line.

A run directory holds ``config.yaml`` (the resolved config, also stored in every checkpoint),
``metrics.csv`` (appended to on resume), TensorBoard events, ``checkpoints/`` and ``videos/``.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Sequence

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lightning_memo.algos import MemoAmago, MemoPPO, TrialModule
from lightning_memo.callbacks import EnvStepProgressBar, EvaluationCallback, RolloutVideo, TrialMetrics
from lightning_memo.config import (
    ConfigError,
    RunConfig,
    check,
    find_checkpoint,
    load_config,
    read_checkpoint,
    resume_changes,
    tensorboard_available,
    to_dict,
    to_yaml,
)
from lightning_memo.policy import MemoPolicy, NonFiniteError

CONFIG_FILE = "config.yaml"
MODULES = {"ppo": MemoPPO, "amago": MemoAmago}  # algo -> its LightningModule (config.ALGOS names them)
DEBUG_ENV = "LIGHTNING_MEMO_DEBUG"  # =1: tracebacks instead of one-line errors (as --debug)
# warnings Lightning and torch raise on the package's own, deliberate use (one process, one batch per epoch)
QUIET_WARNINGS = (
    r".*LeafSpec.*is deprecated",
    r".*does not have many workers",
    r".*smaller than the logging interval",
    r"Checkpoint directory .* exists and is not empty",  # a resumed run continues in its directory
)


@dataclass
class Run:
    """A built run: the module and Trainer, its directory and version, the checkpoint it resumes."""

    cfg: RunConfig
    module: TrialModule
    trainer: pl.Trainer
    dir: Path
    version: str
    checkpoint: Path | None


# ---------------------------------------------------------------------------- build
def make_env(cfg: RunConfig, device: str = "cpu"):
    """The configured batched env (``[env.num_envs]``) with ``is_init`` and the trial features."""
    from lightning_memo.envs import make_env as make_base_env
    from lightning_memo.envs.transforms import make_trial_env

    name = cfg.env.name
    try:
        base = make_base_env(
            name, num_envs=cfg.env.num_envs, trial_len=cfg.env.trial_len, device=device, seed=cfg.seed, **cfg.env.kwargs
        )
    except ImportError as err:  # a backend whose package or data is missing (habitat)
        raise ConfigError(f"env.name={name} cannot start: {err} Or use env.name=objnav_grid (the CPU grid house).") from None
    except TypeError as err:
        raise ConfigError(f"env.kwargs: {err}") from None
    except ValueError as err:
        raise ConfigError(f"env.kwargs / env: {err}") from None
    return make_trial_env(base)


def make_policy(cfg: RunConfig, env) -> MemoPolicy:
    """A :class:`MemoPolicy` for ``env`` with the configured memory (``d_model = policy.d_model``)."""
    from lightning_memo.nn.registry import make_memory

    kwargs = {**dict(cfg.memories.get(cfg.memory) or {}), "d_model": cfg.policy.d_model}
    try:
        memory = make_memory(cfg.memory, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"memories.{cfg.memory}: {err}") from None
    previous_step = cfg.policy.previous_step if cfg.policy.previous_step is not None else cfg.memory != "none"
    try:
        return MemoPolicy.from_env(
            env, memory, observation_keys=cfg.policy.observation_keys, hidden=cfg.policy.hidden, previous_step=previous_step
        )
    except ValueError as err:
        raise ConfigError(f"policy: {err}") from None


def build(cfg: RunConfig, callbacks: Sequence[Callback] = ()) -> Run:
    """Everything of a run from a config made by :func:`load_config`; nothing is written yet."""
    if cfg.trainer.torch_threads:
        torch.set_num_threads(cfg.trainer.torch_threads)
    pl.seed_everything(cfg.seed, verbose=False)
    env = make_env(cfg)
    module = MODULES[cfg.algo](make_policy(cfg, env), env, cfg.algorithm, seed=cfg.seed)
    try:
        module.check_env(env)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    run_dir, checkpoint = resolve_run_dir(cfg, module)
    with quiet_lightning():
        trainer = make_trainer(cfg, run_dir, list(callbacks))
    return Run(cfg, module, trainer, run_dir, run_dir.name, checkpoint)


def resolve_run_dir(cfg: RunConfig, module: TrialModule) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume). A new run takes ``trainer.version`` or the next
    ``version_<k>``; a resumed run continues in its checkpoint's run directory, once the checkpoint
    is readable, holds this model and was trained with compatible settings."""
    t = cfg.trainer
    root = Path(t.log_dir) / t.run_name
    if t.resume is None:
        version = t.version or next_version(root)
        check(
            rank_zero_only.rank != 0 or not (root / version / CONFIG_FILE).exists(),  # other ranks never write
            f"trainer.version={version}: {root / version} already holds a run; resume it with trainer.resume=last "
            "or choose another version.",
        )
        return root / version, None
    path = find_checkpoint(t)
    check_resumable(read_checkpoint(path, t), cfg, module, path)
    run_dir = path.parent.parent
    if path.parent.name != "checkpoints" or not (run_dir / CONFIG_FILE).is_file():  # a checkpoint from elsewhere
        run_dir = root / (t.version or next_version(root))
    return run_dir, path


def next_version(root: Path) -> str:
    """``version_<k>`` with ``k`` one past the highest existing under ``root``."""
    taken = [int(m.group(1)) for p in (root.iterdir() if root.is_dir() else []) if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return f"version_{max(taken, default=-1) + 1}"


def check_resumable(checkpoint: dict, cfg: RunConfig, module: TrialModule, path: Path) -> None:
    """Refuse a checkpoint of another algorithm, model or env setting, naming what differs."""
    saved = checkpoint.get("run_config")
    if saved is not None:
        refused, allowed = resume_changes(saved, to_dict(cfg))
        check(
            not refused,
            f"trainer.resume: {path} was trained with other settings: {'; '.join(refused)}. Resume with the "
            "checkpoint's settings, or drop trainer.resume to start a new run.",
        )
        if allowed:
            rank_zero_warn(f"resuming {path} with changed settings: {'; '.join(allowed)}")
    check(
        module.state_key in checkpoint,
        f"trainer.resume: {path} is not a {type(module).__name__} checkpoint of lightning_memo (no "
        f"{module.state_key!r} entry); algo={cfg.algo} resumes only its own runs.",
    )
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
    differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    check(not differ, f"trainer.resume: {path} holds another model ({len(differ)} tensors differ, e.g. {differ[:3]}).")


def _launcher_devices(cfg: RunConfig) -> tuple[Any, Any]:
    """(accelerator, devices): from ``fabric run`` / torchrun's environment when launched by one."""
    args = cfg.trainer.lightning
    accelerator, devices = args.get("accelerator", "auto"), args.get("devices", "auto")
    if os.environ.get("LT_CLI_USED") == "1" or "LOCAL_WORLD_SIZE" in os.environ:
        devices = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LT_DEVICES", devices)))
        accelerator = os.environ.get("LT_ACCELERATOR", accelerator)
    return accelerator, devices


def make_loggers(cfg: RunConfig, version: str) -> list:
    """CSV (appending) and TensorBoard loggers writing to the run directory."""
    t = cfg.trainer
    names = t.loggers if t.loggers is not None else ["csv", *(["tensorboard"] if tensorboard_available() else [])]
    loggers = []
    if "csv" in names:
        loggers.append(AppendingCSVLogger(t.log_dir, name=t.run_name, version=version))
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(t.log_dir, name=t.run_name, version=version, default_hp_metric=False))
    return loggers


def make_trainer(cfg: RunConfig, run_dir: Path, callbacks: List[Callback]) -> pl.Trainer:
    """The ``lightning.Trainer``: ``trainer.*`` Lightning arguments as given, plus the package's loggers,
    checkpoints, metrics, progress bar, evaluation (``trainer.eval_every``) and (with ``devices > 1``) DDP."""
    t = cfg.trainer
    args = {"log_every_n_steps": 1, "num_sanity_val_steps": 0, "enable_model_summary": False, **t.lightning}
    accelerator, devices = _launcher_devices(cfg)
    args.update(accelerator=accelerator, devices=devices)
    count = len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) else 1
    if args.get("strategy", "auto") == "auto" and count > 1:
        # find_unused_parameters: Memo's summary queries are unused while the prefix is one segment long
        args["strategy"] = DDPStrategy(
            find_unused_parameters=True, process_group_backend="gloo" if accelerator == "cpu" else None
        )
    own = [TrialMetrics(t.max_logged_episodes), RunConfigRecorder(to_dict(cfg))]
    if args.setdefault("enable_progress_bar", True):
        own.append(EnvStepProgressBar())
    if t.video_every:
        own.append(RolloutVideo(every=t.video_every, dirpath=run_dir / "videos"))
    if t.eval_every:
        own.append(EvaluationCallback(t.eval_every, t.eval_trials, t.eval_greedy, t.max_logged_episodes))
    if t.max_env_steps:
        own.append(EnvStepBudget(t.max_env_steps))
    if t.checkpoint_every:
        own.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="trial-{epoch}",
                every_n_epochs=t.checkpoint_every,  # one epoch = one trial
                save_last=True,
                save_top_k=1,
                enable_version_counter=False,  # the run directory is this run's: last.ckpt is overwritten
            )
        )
    try:
        return pl.Trainer(
            **args,
            max_epochs=cfg.algorithm.num_trials,  # one epoch per trial
            logger=make_loggers(cfg, run_dir.name) or False,
            callbacks=own + callbacks,
            enable_checkpointing=bool(t.checkpoint_every),
            default_root_dir=str(run_dir),
        )
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise ConfigError(f"trainer: {err}") from None


class EnvStepBudget(Callback):
    """Stop fitting after the trial that reaches ``max_env_steps`` env steps (``trainer.max_env_steps``);
    a resumed run that has already reached it does not train."""

    def __init__(self, max_env_steps: int) -> None:
        self.max_env_steps = max_env_steps

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.env_steps >= self.max_env_steps:
            trainer.should_stop = True

    on_train_start = on_train_epoch_end = _check


class RunConfigRecorder(Callback):
    """The resolved run config in every checkpoint (``checkpoint["run_config"]``) and in the loggers'
    hyperparameters (``hparams.yaml``, TensorBoard's HPARAMS)."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["run_config"] = self.config


class _AppendingWriter(ExperimentWriter):
    # Lightning's writer deletes an existing metrics.csv (a resumed run would lose its rows): keep the
    # file and continue under its header (new columns rewrite it with every row kept)
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to the run's ``metrics.csv`` instead of replacing it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's and TorchRL's info lines (devices, tips, replay storage) and the warnings of
    ``QUIET_WARNINGS`` silenced."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "torchrl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ------------------------------------------------------------------------------ run
def fit(run: Run) -> None:
    """Write the run directory's config, fit, and print the start line and a one-line summary (rank 0)."""
    zero = rank_zero_only.rank == 0
    if zero:
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / CONFIG_FILE).write_text(to_yaml(run.cfg))
        origin = f"resuming {run.checkpoint}" if run.checkpoint else "new run"
        print(f"run directory: {run.dir} ({origin})", flush=True)
    with quiet_lightning():
        run.trainer.fit(run.module, ckpt_path=run.checkpoint)
    if zero:
        module = run.module
        rate = module.steps_per_second()
        last = module.last_trial.get("return")
        result = f"; last trial return {last:.2f}" if last is not None else ""
        print(f"{module.trial_index} trials, {module.env_steps} env steps ({rate:.0f}/s){result}; run directory {run.dir}")


def train(cfg: RunConfig, callbacks: Sequence[Callback] = ()) -> tuple[pl.Trainer, TrialModule]:
    """Build a run from ``cfg`` (from :func:`load_config`) and fit it; returns ``(trainer, module)``."""
    run = build(cfg, callbacks)
    fit(run)
    return run.trainer, run.module


USAGE = "usage: python {script} [config=<name or path.yaml>] [key=value ...] [--debug]"


def main(default_config: str, argv: List[str] | None = None) -> tuple[pl.Trainer, TrialModule]:
    """Command-line entry: ``python script.py [config=path.yaml] key=value ... [--debug]``.

    A config, checkpoint or non-finite-value error prints one line and exits with status 2 (1 for a
    non-finite value); ``--debug`` or ``LIGHTNING_MEMO_DEBUG=1`` shows the traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE.format(script=Path(sys.argv[0]).name) + f"\ndefault config: {default_config}")
        raise SystemExit(0)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV) == "1"
    args = [a for a in args if a != "--debug"]
    config = default_config
    overrides = []
    for a in args:
        if a.startswith("config="):
            config = a.split("=", 1)[1]
        else:
            overrides.append(a)
    try:
        return train(load_config(config, overrides))
    except (ConfigError, NonFiniteError) as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2 if isinstance(err, ConfigError) else 1) from None


__all__ = ["EnvStepBudget", "Run", "build", "fit", "main", "make_env", "make_policy", "make_trainer", "train"]

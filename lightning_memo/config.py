"""Structured run configs (omegaconf) and the builders the examples share.

A run config is :class:`RunConfig`: ``seed``, ``memory`` (a name from the memory registry) with per-memory
keyword arguments under ``memories.<name>``, ``env``, ``policy``, ``ppo`` and ``trainer``. Load one
with :func:`load_config` (a YAML under ``lightning_memo/configs/`` or a path, plus ``key=value``
overrides), then :func:`train` builds env, policy, :class:`~lightning_memo.algos.ppo.MemoPPO` and the
Lightning ``Trainer`` and fits.

Every setting is checked before training starts; errors name the key and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_memo.algos.ppo import PPOConfig

CONFIG_DIR = Path(__file__).parent / "configs"
ENV_NAMES = ("dark_key_to_door", "objnav_grid", "objnav_habitat")
LOGGERS = ("csv", "tensorboard")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "64-true")


class ConfigError(ValueError):
    """A run config that cannot work; the message names the key and the fix."""


@dataclass
class EnvConfig:
    name: str = "dark_key_to_door"  # one of ENV_NAMES
    num_envs: int = 8  # envs per rank
    trial_len: int = 200  # steps per trial
    kwargs: Dict[str, Any] = field(default_factory=dict)  # forwarded to the env class (size, episode_len, ...)


@dataclass
class PolicyConfig:
    d_model: int = 64  # memory width (overrides memories.<name>.d_model)
    hidden: int = 128  # hidden width of the default MLP encoder
    observation_keys: Optional[List[str]] = None  # default: the env's observation keys + trial features


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1  # processes; under `fabric run` taken from the launcher
    strategy: str = "auto"  # "auto" (ddp when devices > 1) or a Lightning strategy name
    precision: str = "auto"  # "auto": 32-true on CPU, bf16-mixed on GPU
    log_dir: str = "runs"
    run_name: str = "memo"
    loggers: List[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    checkpoint_every: int = 1  # trials between checkpoints (0: none)
    resume: Optional[str] = None  # a checkpoint path, or "last"
    progress_bar: bool = True
    torch_threads: Optional[int] = None  # torch.set_num_threads (tiny models on shared CPUs: 1)
    max_logged_episodes: int = 10  # inner-episode indices with their own metrics
    video_every: int = 0  # save every k-th training trial of env 0 as a GIF under <run>/videos (0: off)


@dataclass
class RunConfig:
    seed: int = 0
    memory: str = "memo"
    memories: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per memory name: its keyword arguments
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def load_config(name_or_path: str, overrides: List[str] | None = None) -> RunConfig:
    """``RunConfig`` from a packaged YAML (``"dark_key_to_door"``) or a YAML path, plus ``key=value``
    overrides; validated (:func:`validate_config`)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        packaged = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config {name_or_path!r} not found; use a YAML path or one of {packaged}.")
    bad = [o for o in overrides or [] if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"command-line overrides must look like key=value (e.g. memory=gru); got {bad}.")
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(RunConfig), OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides or []))
        )
        cfg: RunConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config ({path.name} + overrides): {err}") from None
    validate_config(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the key for anything that cannot work."""
    from lightning_memo.nn.registry import MEMORIES

    if cfg.memory not in MEMORIES:
        raise ConfigError(f"memory={cfg.memory!r} is not a registered memory; choose one of {sorted(MEMORIES)}.")
    if cfg.env.name not in ENV_NAMES:
        raise ConfigError(f"env.name={cfg.env.name!r} is unknown; choose one of {list(ENV_NAMES)}.")
    for key in ("num_envs", "trial_len"):
        value = getattr(cfg.env, key)
        if value < 1:
            raise ConfigError(f"env.{key} must be >= 1, got {value}.")
    if cfg.ppo.trial_len != cfg.env.trial_len:
        raise ConfigError(
            f"ppo.trial_len={cfg.ppo.trial_len} differs from env.trial_len={cfg.env.trial_len}; leave ppo.trial_len "
            "as ${env.trial_len} or set both."
        )
    try:
        cfg.ppo.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.env.num_envs < cfg.ppo.num_minibatches:
        raise ConfigError(
            f"ppo.num_minibatches={cfg.ppo.num_minibatches} exceeds env.num_envs={cfg.env.num_envs} (minibatches are "
            "whole env sequences); lower ppo.num_minibatches or raise env.num_envs."
        )
    if cfg.policy.d_model < 1 or cfg.policy.hidden < 1:
        raise ConfigError("policy.d_model and policy.hidden must be >= 1.")
    t = cfg.trainer
    if t.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={t.precision!r}; choose one of {list(PRECISIONS)}.")
    unknown = sorted(set(t.loggers) - set(LOGGERS))
    if unknown:
        raise ConfigError(f"trainer.loggers has unknown entries {unknown}; choose from {list(LOGGERS)}.")
    if t.devices < 1:
        raise ConfigError(f"trainer.devices must be >= 1, got {t.devices}.")
    if t.torch_threads is not None and t.torch_threads < 1:
        raise ConfigError(f"trainer.torch_threads must be >= 1 or null (torch's default), got {t.torch_threads}.")
    if t.checkpoint_every < 0:
        raise ConfigError(f"trainer.checkpoint_every must be >= 0 (0: no checkpoints), got {t.checkpoint_every}.")
    if t.video_every < 0:
        raise ConfigError(f"trainer.video_every must be >= 0 (0: no videos), got {t.video_every}.")
    make_memory_from(cfg)  # unknown or invalid memory arguments fail here, named


# --------------------------------------------------------------------------- builders
def make_memory_from(cfg: RunConfig):
    """The memory ``cfg.memory`` with ``cfg.memories[cfg.memory]`` and ``d_model = policy.d_model``."""
    from lightning_memo.nn.registry import make_memory

    kwargs = {**dict(cfg.memories.get(cfg.memory, {}) or {}), "d_model": cfg.policy.d_model}
    try:
        return make_memory(cfg.memory, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"memories.{cfg.memory}: {err}") from None


def make_env_factory(cfg: RunConfig, device: str = "cpu") -> Callable[[int], Any]:
    """``seed -> env``: the configured batched env with InitTracker and the trial features."""
    from lightning_memo.envs.transforms import make_trial_env

    def factory(seed: int):
        if cfg.env.name == "dark_key_to_door":
            from lightning_memo.envs.dark_key_to_door import DarkKeyToDoorEnv as cls
        elif cfg.env.name == "objnav_grid":
            from lightning_memo.envs.objnav_grid import ObjNavGridEnv as cls
        else:
            from lightning_memo.envs.habitat import HabitatObjNavEnv as cls
        try:
            base = cls(num_envs=cfg.env.num_envs, trial_len=cfg.env.trial_len, device=device, seed=seed, **cfg.env.kwargs)
        except ImportError as err:  # the habitat backend without habitat-lab / its data
            raise ConfigError(
                f"env.name={cfg.env.name} cannot start: {err} Or use env.name=objnav_grid (the CPU grid house)."
            ) from None
        except TypeError as err:
            raise ConfigError(f"env.kwargs: {err}") from None
        except ValueError as err:
            raise ConfigError(f"env.kwargs / env: {err}") from None
        return make_trial_env(base)

    return factory


def make_policy(cfg: RunConfig, env):
    """A :class:`~lightning_memo.policy.MemoPolicy` for ``env`` with the configured memory."""
    from lightning_memo.envs.transforms import TRIAL_FEATURE_KEYS
    from lightning_memo.policy import MemoPolicy

    keys = cfg.policy.observation_keys
    if keys is None:
        base = getattr(env, "base_env", env)
        keys = list(getattr(base, "observation_keys", ["observation"])) + list(TRIAL_FEATURE_KEYS)
    try:
        return MemoPolicy.from_env(env, make_memory_from(cfg), observation_keys=keys, hidden=cfg.policy.hidden)
    except ValueError as err:
        raise ConfigError(f"policy: {err}") from None


def _launcher_devices(cfg: RunConfig) -> tuple[str, int]:
    """(accelerator, devices): from ``fabric run`` / torchrun's environment when launched by one."""
    if os.environ.get("LT_CLI_USED") == "1" or "LOCAL_WORLD_SIZE" in os.environ:
        devices = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LT_DEVICES", cfg.trainer.devices)))
        return os.environ.get("LT_ACCELERATOR", cfg.trainer.accelerator), devices
    return cfg.trainer.accelerator, cfg.trainer.devices


def make_trainer(cfg: RunConfig, extra_callbacks: list | None = None):
    """The Lightning ``Trainer``: strategy, precision, loggers, checkpoints and the env-step progress bar."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_memo.callbacks import EnvStepProgressBar, RolloutVideo, TrialMetrics

    t = cfg.trainer
    accelerator, devices = _launcher_devices(cfg)
    strategy: Any = t.strategy
    if strategy == "auto" and devices > 1:
        # find_unused_parameters: Memo's summary queries are unused while the prefix is one segment long
        strategy = DDPStrategy(
            find_unused_parameters=True, process_group_backend="gloo" if accelerator == "cpu" else None
        )
    precision = t.precision
    if precision == "auto":
        precision = "32-true" if accelerator == "cpu" else "bf16-mixed"
    run_dir = Path(t.log_dir) / t.run_name
    loggers = []
    if "csv" in t.loggers:
        loggers.append(CSVLogger(t.log_dir, name=t.run_name, version=""))
    if "tensorboard" in t.loggers:
        loggers.append(TensorBoardLogger(t.log_dir, name=t.run_name, version="", default_hp_metric=False))
    callbacks = [TrialMetrics(t.max_logged_episodes)]
    if t.progress_bar:
        callbacks.append(EnvStepProgressBar())
    if t.video_every:
        callbacks.append(RolloutVideo(every=t.video_every, dirpath=run_dir / "videos"))
    if t.checkpoint_every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="trial-{epoch}",
                every_n_epochs=t.checkpoint_every,  # one epoch = one trial
                save_last=True,
                save_top_k=1,
            )
        )
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        max_epochs=cfg.ppo.num_trials,  # one epoch per trial
        logger=loggers or False,
        callbacks=callbacks + list(extra_callbacks or []),
        enable_checkpointing=bool(t.checkpoint_every),
        enable_progress_bar=t.progress_bar,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        enable_model_summary=False,
    )


def train(cfg: RunConfig, extra_callbacks: list | None = None):
    """Build everything from ``cfg`` and fit; returns ``(trainer, module)``."""
    import lightning.pytorch as pl
    import torch

    from lightning_memo.algos.ppo import MemoPPO, check_env_policy

    validate_config(cfg)
    if cfg.trainer.torch_threads:
        torch.set_num_threads(cfg.trainer.torch_threads)
    pl.seed_everything(cfg.seed, verbose=False)
    env_factory = make_env_factory(cfg)
    probe = env_factory(cfg.seed)  # specs only: fail on env/policy mismatches before the Trainer starts
    policy = make_policy(cfg, probe)
    try:
        check_env_policy(probe, policy, cfg.ppo)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    module = MemoPPO(policy, env_factory, cfg.ppo, seed=cfg.seed)
    trainer = make_trainer(cfg, extra_callbacks)
    trainer.fit(module, ckpt_path=cfg.trainer.resume)
    return trainer, module


def main(default_config: str, argv: List[str] | None = None):
    """Command-line entry: ``python script.py [config=path.yaml] key=value ...``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    config = default_config
    rest = []
    for a in args:
        if a.startswith("config="):
            config = a.split("=", 1)[1]
        else:
            rest.append(a)
    trainer, module = train(load_config(config, rest))
    if trainer.is_global_zero:
        last = module.last_trial.get("return")
        summary = f"last trial return {float(last):.2f}; " if last is not None else ""
        print(f"{module.trial_index} trials, {module.env_steps} env steps; {summary}logs in {trainer.log_dir}")
    return trainer, module


__all__ = [
    "ConfigError",
    "EnvConfig",
    "PolicyConfig",
    "RunConfig",
    "TrainerConfig",
    "load_config",
    "make_env_factory",
    "make_policy",
    "make_trainer",
    "train",
    "validate_config",
]

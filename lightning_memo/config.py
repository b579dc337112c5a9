"""Run configs: the schema (omegaconf structured dataclasses), loading, and validation, once.

A run config is :class:`RunConfig`: ``seed``, ``algo`` (``ppo`` or ``amago``) with each algorithm's
settings under its own section (``ppo``, ``amago``), ``memory`` (a name from the memory registry) with
per-memory keyword arguments under ``memories.<name>``, ``env``, ``policy`` and ``trainer``. Under
``trainer`` the package's own keys are :class:`TrainerConfig`'s; every other ``trainer.<key>`` is an
argument of ``lightning.Trainer`` (``accelerator``, ``devices``, ``precision``, ``strategy``, ...),
checked against its signature and passed straight through.

:func:`load_config` reads a YAML (a packaged name or a path) plus ``key=value`` overrides and validates
everything that can be checked without building anything: errors are :class:`ConfigError` naming the
key and the fix; :func:`config_from_dict` does the same for plain data (a checkpoint's saved config).
:mod:`lightning_memo.train` builds and runs it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

from omegaconf import II, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lightning_memo.algos.amago import AmagoConfig
from lightning_memo.algos.base import require
from lightning_memo.algos.ppo import PPOConfig
from lightning_memo.policy import PREVIOUS_STEP_KEYS

CONFIG_DIR = Path(__file__).parent / "configs"
LOGGERS = ("csv", "tensorboard")
# algo -> what it is (the run config's section of the same name holds its settings)
ALGOS = {"ppo": "on-policy PPO, the ReLIC recipe", "amago": "off-policy actor-critic, the AMAGO recipe"}
"""The values of ``RunConfig.algo``, each with what it trains."""
# lightning.Trainer arguments the package sets itself, and the key that controls each
OWNED_TRAINER_ARGS = {
    "max_epochs": "ppo.num_trials or amago.num_trials (one epoch is one trial)",
    "logger": "trainer.loggers",
    "callbacks": "train(cfg, callbacks=[...]) in Python",
    "enable_checkpointing": "trainer.checkpoint_every (0: no checkpoints)",
    "default_root_dir": "trainer.log_dir and trainer.run_name",
    "gradient_clip_val": "ppo.max_grad_norm or amago.max_grad_norm",
    "accumulate_grad_batches": "ppo.grad_accumulation",
}
# settings a resumed run may change silently: how long it trains and how it logs
RESUME_SAFE = ("ppo.num_trials", "amago.num_trials", "trainer.")
# algorithm settings a resumed run must keep: they shape the model, the trial or the saved replay
RESUME_FIXED = (
    "ppo.trial_len", "amago.trial_len", "amago.gammas", "amago.num_critics", "amago.head_hidden", "amago.head_layers",
    "amago.replay_capacity", "amago.replay_window", "amago.replay_memmap_dir",
)


class ConfigError(ValueError):
    """A run config that cannot work; the message names the key and the fix."""


check = partial(require, error=ConfigError)


@dataclass
class EnvConfig:
    """The training env: ``env.num_envs`` rows of trials of ``env.trial_len`` steps."""

    name: str = "dark_key_to_door"
    """A name of ``lightning_memo.envs.ENV_NAMES`` or a registered gymnasium id."""
    num_envs: int = 8
    """Envs per rank (>= 1)."""
    trial_len: int = 200
    """Steps per trial (>= 1); for a gymnasium id's episodic trials, the cap (>= its episode limit)."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Forwarded to the env: a task's options (``size``, ``episode_len``, ...), or for a gymnasium id
    ``GymTrialEnv``'s ``mode`` and ``observation_key`` plus the ``gymnasium.make`` arguments."""


@dataclass
class PolicyConfig:
    """The policy around the memory: its encoder and what it reads."""

    d_model: int = 64
    """Memory width (>= 1; overrides ``memories.<name>.d_model``)."""
    hidden: int = 128
    """Hidden width of the default MLP encoder (>= 1)."""
    observation_keys: Optional[List[str]] = None
    """The observation entries the policy reads; null: every entry except the trial bookkeeping."""
    previous_step: Optional[bool] = None
    """Read ``prev_action`` and ``prev_reward`` (they hold one step of memory); null: yes, except for
    ``memory=none``."""


@dataclass
class TrainerConfig:
    """The package's own run settings; other ``trainer.*`` keys are ``lightning.Trainer`` arguments."""

    log_dir: str = "runs"
    """Root of the run directories."""
    run_name: str = "memo"
    """Runs go to ``<log_dir>/<run_name>/<version>/``."""
    version: Optional[str] = None
    """The run directory's name; null: the next ``version_<k>``."""
    loggers: Optional[List[str]] = None
    """Some of ``csv``, ``tensorboard``; null: csv, plus tensorboard when it is installed."""
    checkpoint_every: int = 1
    """Trials between checkpoints (0: none)."""
    resume: Optional[str] = None
    """``last`` (the latest run of ``run_name``, or of ``version``) or a ``.ckpt`` path; null: a new run."""
    torch_threads: Optional[int] = None
    """``torch.set_num_threads`` (tiny models on shared CPUs: 1); null: torch's default."""
    max_env_steps: Optional[int] = None
    """Stop after the trial that reaches this many env steps (all ranks); null: after ``num_trials``."""
    max_logged_episodes: int = 10
    """Inner-episode indices with their own metrics (``trial/episode_return/<k>``, ...)."""
    video_every: int = 0
    """Save every k-th training trial of env 0 as a GIF under ``<run>/videos`` (0: off)."""
    eval_every: int = 0
    """Evaluate every k-th trial on held-out seeds with a cache of its own, logged as ``eval/*`` (0: off;
    :class:`~lightning_memo.callbacks.EvaluationCallback`)."""
    eval_trials: int = 1
    """Evaluation trials (of ``env.num_envs`` envs) per evaluation (>= 1)."""
    eval_greedy: bool = True
    """Evaluate with the most likely action (false: sampled, from a generator of the evaluation's own)."""
    lightning: Dict[str, Any] = field(default_factory=dict)
    """The ``lightning.Trainer`` arguments (filled by loading: every other ``trainer.<key>``)."""


@dataclass
class RunConfig:
    """A whole run: what :func:`load_config` returns and :func:`lightning_memo.train.train` runs."""

    seed: int = 0
    """Base seed of the weights, the env trials and the sampling."""
    algo: str = "ppo"
    """The training algorithm: ``ppo`` (on-policy) or ``amago`` (off-policy); its settings are the section
    of the same name."""
    memory: str = "memo"
    """A name of the memory registry (``memo``, ``fct``, ``rmt``, ``ac``, ``gru``, ``lstm``, ``none``, ...)."""
    memories: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Per memory name: its keyword arguments (only the one named by ``memory`` is used)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """The env."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The policy around the memory."""
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(trial_len=II("env.trial_len")))
    """PPO's settings (``algo=ppo``); ``ppo.trial_len`` follows ``env.trial_len`` unless set."""
    amago: AmagoConfig = field(default_factory=lambda: AmagoConfig(trial_len=II("env.trial_len")))
    """The off-policy recipe's settings (``algo=amago``); ``amago.trial_len`` follows ``env.trial_len``
    unless set."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Run settings and ``lightning.Trainer`` arguments."""

    @property
    def algorithm(self) -> Union[PPOConfig, AmagoConfig]:
        """The settings of the algorithm ``algo`` names (``self.ppo`` or ``self.amago``)."""
        return getattr(self, self.algo)


# ------------------------------------------------------------------------------ load
def load_config(name_or_path: str, overrides: List[str] | None = None) -> RunConfig:
    """``RunConfig`` from a packaged YAML (``"dark_key_to_door"``) or a YAML path, plus ``key=value``
    overrides; validated (:func:`validate_config`)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        packaged = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config {name_or_path!r} not found; use a YAML path or one of {packaged}.")
    overrides = list(overrides or [])
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"command-line overrides must look like key=value (e.g. memory=gru); got {bad}.")
    source = f"{path.name} + overrides"
    try:
        raw = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides)), resolve=True)
    except OmegaConfBaseException as err:
        raise _config_error(err, source) from None
    return config_from_dict(raw, source)


def config_from_dict(data: dict, source: str = "the given dict") -> RunConfig:
    """A validated ``RunConfig`` from plain data shaped like a YAML config (``lightning.Trainer`` arguments
    under ``trainer`` beside the package's own keys), e.g. a checkpoint's ``run_config`` (:func:`to_dict`).
    ``source`` names where the data came from in error messages."""
    raw = OmegaConf.to_container(OmegaConf.create(data), resolve=True)  # a copy, interpolations resolved
    trainer = raw.get("trainer") or {}
    own = {f.name for f in fields(TrainerConfig)} - {"lightning"}
    raw["trainer"] = {k: v for k, v in trainer.items() if k in own}
    raw["trainer"]["lightning"] = {k: v for k, v in trainer.items() if k not in own}
    try:
        cfg: RunConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), raw))
    except OmegaConfBaseException as err:
        raise _config_error(err, source) from None
    validate_config(cfg)
    return cfg


def _config_error(err: OmegaConfBaseException, source: str) -> ConfigError:
    """omegaconf's error as one line naming the key; an unknown key lists the section's keys."""
    full_key = getattr(err, "full_key", None)
    section = getattr(err, "object_type", None)
    if isinstance(err, ConfigKeyError) and full_key and section is not None and dataclasses.is_dataclass(section):
        names = [f.name for f in fields(section) if f.name != "lightning"]
        where = f"a setting of {full_key.rpartition('.')[0]}" if "." in full_key else "a top-level key"
        return ConfigError(
            f"{full_key} is not {where}{_close(str(err.key), names)}; valid keys: {', '.join(names)} ({source})."
        )
    key = f"{full_key}: " if full_key else ""
    return ConfigError(f"{key}{str(getattr(err, 'msg', err)).splitlines()[0]} ({source})")


def to_dict(cfg: RunConfig) -> dict:
    """The config as plain data, with the ``lightning.Trainer`` arguments back under ``trainer``."""
    data = OmegaConf.to_container(OmegaConf.structured(cfg))
    data["trainer"].update(data["trainer"].pop("lightning"))
    return data


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(to_dict(cfg))


# ------------------------------------------------------------------------ validation
def validate_config(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the key for anything that cannot work."""
    from lightning_memo.nn.registry import MEMORIES

    check(cfg.memory in MEMORIES, f"memory={cfg.memory!r} is not a registered memory; choose one of {sorted(MEMORIES)}.")
    check(
        cfg.algo in ALGOS,
        f"algo={cfg.algo!r} is unknown{_close(cfg.algo, ALGOS)}; choose one of "
        + ", ".join(f"{name} ({what})" for name, what in ALGOS.items()) + ".",
    )
    _validate_env(cfg)
    for key in ("num_envs", "trial_len"):
        check(getattr(cfg.env, key) >= 1, f"env.{key} must be >= 1, got {getattr(cfg.env, key)}.")
    _validate_trainer(cfg.trainer)  # before the algorithm: its settings may interpolate trainer keys
    _validate_algorithm(cfg)
    check(cfg.policy.d_model >= 1 and cfg.policy.hidden >= 1, "policy.d_model and policy.hidden must be >= 1.")
    leaky = [k for k in (cfg.policy.observation_keys or []) if k in PREVIOUS_STEP_KEYS]
    check(
        cfg.policy.previous_step is not False or not leaky,
        f"policy.previous_step=false but policy.observation_keys lists {leaky}; drop one of the two settings.",
    )
    _validate_memory_args(cfg)


def _validate_algorithm(cfg: RunConfig) -> None:
    """The section of ``algo`` (the other algorithm's section is not used, and not checked)."""
    algo, section = cfg.algo, cfg.algorithm
    check(
        section.trial_len == cfg.env.trial_len,
        f"{algo}.trial_len={section.trial_len} differs from env.trial_len={cfg.env.trial_len}; drop {algo}.trial_len "
        "(it follows env.trial_len) or set both.",
    )
    try:
        section.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if algo == "ppo":
        check(
            cfg.env.num_envs >= cfg.ppo.num_minibatches,
            f"ppo.num_minibatches={cfg.ppo.num_minibatches} exceeds env.num_envs={cfg.env.num_envs} (minibatches are "
            "whole env sequences); lower ppo.num_minibatches or raise env.num_envs.",
        )


def _validate_env(cfg: RunConfig) -> None:
    """``env.name``: a built-in task or a registered gymnasium id; ``env.kwargs`` of a built-in task
    checked against the types of its options (their names and values are checked when it is built)."""
    import gymnasium

    from lightning_memo.envs.gym_trial import MODES, is_gym_id
    from lightning_memo.envs.registry import ENV_NAMES, ENVS

    name = cfg.env.name
    if name not in ENVS:
        try:
            known = is_gym_id(name)
        except ImportError as err:
            raise ConfigError(f"env.name={name!r}: {err}") from None
        check(known, f"env.name={name!r} is unknown{_close(name, [*ENV_NAMES, *gymnasium.registry])}; choose one of "
                     f"{list(ENV_NAMES)} or a registered gymnasium id (POPGym's popgym-*, MiniGrid's MiniGrid-* "
                     "are imported on demand).")
        mode = cfg.env.kwargs.get("mode", "episodic")
        check(mode in MODES, f"env.kwargs.mode={mode!r} is not a trial mode; choose one of {list(MODES)}.")
        key = cfg.env.kwargs.get("observation_key")
        check(key is None or isinstance(key, str), f"env.kwargs.observation_key={key!r} must be a Dict entry's name.")
        return
    cls = ENVS[name].batched
    types = {**_type_hints(getattr(cls, "config_cls", None)), **_type_hints(cls.__init__)}
    for key, value in cfg.env.kwargs.items():
        if key in types:
            check(_matches(value, types[key]), f"env.kwargs.{key}={value!r} is not a valid {name} {key}; expected "
                                               f"{_describe(types[key])}.")


def _type_hints(obj: Any) -> dict:
    try:
        return typing.get_type_hints(obj) if obj is not None else {}
    except (NameError, TypeError):  # annotations that do not resolve: nothing to check against
        return {}


def _validate_memory_args(cfg: RunConfig) -> None:
    """``memories.<memory>`` checked through the memory's config class (no module is built)."""
    from lightning_memo.nn.base import config_from_kwargs
    from lightning_memo.nn.registry import MEMORIES

    spec = MEMORIES[cfg.memory]
    kwargs = {**spec.defaults, **dict(cfg.memories.get(cfg.memory) or {}), "d_model": cfg.policy.d_model}
    try:
        config_from_kwargs(spec.config_cls, None, kwargs, cfg.memory)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"memories.{cfg.memory}: {err}") from None


def _validate_trainer(t: TrainerConfig) -> None:
    import lightning.pytorch as pl

    loggers = t.loggers or []
    unknown = sorted(set(loggers) - set(LOGGERS))
    check(not unknown, f"trainer.loggers has unknown entries {unknown}; choose from {list(LOGGERS)}.")
    if "tensorboard" in loggers:
        check(tensorboard_available(), "trainer.loggers includes tensorboard, which is not installed: pip install tensorboard.")
    for key in ("checkpoint_every", "video_every", "max_logged_episodes", "eval_every"):
        check(getattr(t, key) >= 0, f"trainer.{key} must be >= 0 (0: off), got {getattr(t, key)}.")
    for key in ("torch_threads", "max_env_steps"):
        value = getattr(t, key)
        check(value is None or value >= 1, f"trainer.{key} must be >= 1 or null, got {value}.")
    check(t.eval_trials >= 1, f"trainer.eval_trials must be >= 1, got {t.eval_trials}.")
    log_dir = Path(t.log_dir)
    check(not log_dir.exists() or log_dir.is_dir(), f"trainer.log_dir={t.log_dir!r} exists and is not a directory.")
    for key in ("run_name", "version"):
        value = getattr(t, key)
        check(value is None or (value and "/" not in value and value not in (".", "..")),
                f"trainer.{key}={value!r} must be a plain directory name.")
    params = inspect.signature(pl.Trainer.__init__).parameters
    for key, value in t.lightning.items():
        check(key not in OWNED_TRAINER_ARGS, f"trainer.{key} is set by lightning_memo; use {OWNED_TRAINER_ARGS.get(key)}.")
        check(
            key in params and key != "self",
            f"trainer.{key} is neither a lightning_memo trainer key nor a lightning.Trainer argument"
            f"{_close(key, [*params, *(f.name for f in fields(TrainerConfig))])}.",
        )
        check(
            _matches(value, params[key].annotation),
            f"trainer.{key}={value!r} is not a valid lightning.Trainer {key}; expected {_describe(params[key].annotation)}.",
        )
    if t.resume is not None:
        find_checkpoint(t)


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
    return True


# omegaconf checks the package's own keys; the lightning.Trainer arguments are checked against its
# signature's annotations here (a small matcher: jsonargparse, which LightningCLI uses, is not a dependency)
def _matches(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (Any, inspect.Parameter.empty):
        return True
    if origin is Union:
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this matcher does not read: lightning.Trainer will judge the value


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _close(word: str, candidates) -> str:
    match = difflib.get_close_matches(word, [str(c) for c in candidates], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ----------------------------------------------------------------------------- resume
def checkpoints_under(t: TrainerConfig) -> list[Path]:
    """Every ``.ckpt`` of the runs named ``run_name``, newest first."""
    root = Path(t.log_dir) / t.run_name
    found = list(root.glob("*/checkpoints/*.ckpt")) if root.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_checkpoint(t: TrainerConfig) -> Path:
    """The checkpoint ``trainer.resume`` names: ``"last"`` is the newest ``last.ckpt`` of ``run_name``
    (of ``version`` when set); otherwise an existing file. Errors list the checkpoints that exist."""
    existing = checkpoints_under(t)
    listing = (
        "checkpoints that exist: " + ", ".join(str(p) for p in existing[:8]) + (" ..." if len(existing) > 8 else "")
        if existing else f"no checkpoints exist under {Path(t.log_dir) / t.run_name}"
    )
    if t.resume == "last":
        last = [p for p in existing if p.name == "last.ckpt" and (t.version is None or p.parent.parent.name == t.version)]
        where = f"{Path(t.log_dir) / t.run_name}" + (f"/{t.version}" if t.version else "")
        check(bool(last), f"trainer.resume=last, but there is no last.ckpt under {where} ({listing}); drop trainer.resume to start a new run.")
        return last[0]
    path = Path(t.resume)
    if not path.is_file():
        hint = _close(t.resume, ["last", *map(str, existing)])
        raise ConfigError(f"trainer.resume={t.resume!r} is neither 'last' nor an existing checkpoint file{hint}; {listing}.")
    return path


def read_checkpoint(path: Path, t: TrainerConfig) -> dict:
    """The checkpoint at ``path`` (tensors memory-mapped), or a :class:`ConfigError` naming the file."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises several kinds for a truncated or foreign file
        others = [str(p) for p in checkpoints_under(t) if p.resolve() != path.resolve()]
        raise ConfigError(
            f"trainer.resume: cannot read checkpoint {path} ({str(err).splitlines()[0]}); it is truncated or not a "
            f"checkpoint. Other checkpoints: {', '.join(others[:8]) or 'none'}."
        ) from None


def resume_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """Keys whose value differs between a checkpoint's config and this one (both as :func:`to_dict`
    writes them): (refused, allowed).

    Refused: the algorithm, the model, the env and the seed (``algo``, ``memory``, ``memories.<memory>``,
    ``policy.*``, ``env.*``, ``seed``) and the algorithm settings of ``RESUME_FIXED`` (trial length, head
    sizes, replay shape). Allowed: ``<algo>.num_trials`` and ``trainer.*`` silently, the algorithm's other
    settings (learning rate, epochs, ...) with a warning. Settings of memories and algorithms not in use
    are ignored (a checkpoint from before ``algo`` existed is a PPO one).
    """
    old, new = _flatten(saved), _flatten(current)
    old.setdefault("algo", "ppo")
    memory, algo = new.get("memory"), new.get("algo", "ppo")
    refused, allowed = [], []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key) or key.startswith(RESUME_SAFE):
            continue
        if key.startswith("memories.") and not key.startswith(f"memories.{memory}."):
            continue
        section = next((name for name in ALGOS if key.startswith(f"{name}.")), None)
        if section is not None and section != algo:
            continue
        change = f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        (allowed if section is not None and key not in RESUME_FIXED else refused).append(change)
    return refused, allowed


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


__all__ = [
    "ALGOS", "ConfigError", "EnvConfig", "PolicyConfig", "RunConfig", "TrainerConfig", "config_from_dict",
    "find_checkpoint", "load_config", "read_checkpoint", "resume_changes", "to_dict", "to_yaml", "validate_config",
]

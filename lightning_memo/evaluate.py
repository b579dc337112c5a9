"""Evaluate a trained checkpoint on held-out trials: return, success and SPL by inner-episode index,
cache bytes and step latency, optionally on longer trials than training and with a streaming cache.

    python -m lightning_memo.evaluate runs/dark_key_to_door/version_0/checkpoints/last.ckpt \\
        num_trials=8 trial_len=800 max_memory_tokens=32 gif=true

In Python: ``evaluate(path, num_trials=8, trial_len=800)`` returns an :class:`Evaluation`.

* **Its own cache**: every trial steps ``memory.step(..., cache=c)`` on a cache from ``memory.new_cache(N)``;
  the module's cache (a training trial's) is never read or written. Sampled actions draw from a generator
  of their own, so the global RNG (and a training run around an evaluation) is untouched.
* **Held-out seeds**: training trial ``k`` of rank ``r`` reseeds the env with
  ``seed + (k * world_size + r) * N`` (row ``i`` adds ``i``), i.e. seeds in ``[seed, seed + 10^9)`` for any
  run under a billion env-trials. Evaluation trial ``j`` uses ``seed + EVAL_SEED_OFFSET + (j * world_size
  + r) * N`` (``EVAL_SEED_OFFSET = 10^9``), so the two never meet.
* **Longer trials**: ``trial_len`` sets the env's step budget; the ``trial_time`` feature keeps the training
  scale (steps / training ``trial_len``), so it passes 1 beyond the training length instead of slowing down.
* **Streaming**: ``max_memory_tokens`` (Memo, AC: the oldest summaries are evicted beyond it), ``window``
  and ``evict_block`` (FCT: a sliding window of recent steps, evicted so many at a time) and
  ``position_policy`` are memory config fields: the memory is
  rebuilt with them changed and the checkpoint's weights are loaded strictly (they hold no parameters).
"""

from __future__ import annotations

import csv
import difflib
import inspect
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

from lightning_memo.config import ConfigError, RunConfig, config_from_dict, load_config, to_dict
from lightning_memo.policy import EPISODE_START_KEY, IS_INIT_KEY, MemoPolicy, NonFiniteError, evaluating, flag
from lightning_memo.rollout import env_attribute, episode_stats, trial_metrics

EVAL_SEED_OFFSET = 10**9  # evaluation seeds start here (above the base seed); training stays below
# the memory config fields an evaluation may change (they hold no parameters)
STREAMING_KEYS = ("max_memory_tokens", "window", "evict_block", "position_policy")


def held_out_seed(seed: int, trial: int, num_envs: int, rank: int = 0, world_size: int = 1) -> int:
    """The env seed of evaluation trial ``trial`` on ``rank`` (row ``i`` adds ``i``); disjoint from training's."""
    return seed + EVAL_SEED_OFFSET + (trial * world_size + rank) * num_envs


# ------------------------------------------------------------------------------ trials
@dataclass
class TrialRecord:
    """What :func:`run_trials` saw, per trial: the history ``[N, T_j]`` (``T_j`` steps until the trial
    ended), the cache bytes per env after each step ``[T_j]`` and the wall time of each policy step in
    ms ``[T_j]``."""

    histories: list[TensorDictBase]
    cache_bytes: list[torch.Tensor]
    step_ms: list[torch.Tensor]
    frames: list = field(default_factory=list)  # env 0 of the first trial, when recorded


def act_on_cache(
    policy: MemoPolicy, td: TensorDictBase, cache, greedy: bool, generator: torch.Generator
) -> TensorDictBase:
    """One step of ``td [N]`` against ``cache`` (not the module's); writes ``action [N]``.

    Greedy takes the most likely action; otherwise it samples with ``generator`` (CPU), never the global RNG.
    """
    inputs = td.to(policy.device) if td.device != policy.device else td
    flags = flag(inputs, IS_INIT_KEY), flag(inputs, EPISODE_START_KEY)
    h = policy.memory.step(policy.embed(inputs), *flags, cache=cache)
    logits = policy.heads(h)[0].float()
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError("non-finite policy output during evaluation (NaN/inf in the observations or the weights)")
    if greedy:
        action = logits.argmax(-1)
    else:
        action = torch.multinomial(torch.softmax(logits.cpu(), -1), 1, generator=generator).squeeze(-1)
    td.set("action", action.to(td.device if td.device is not None else action.device))
    return td


@torch.no_grad()
def run_trials(
    policy: MemoPolicy,
    env: EnvBase,
    trial_len: int,
    num_trials: int,
    seeds: Callable[[int], int],
    greedy: bool = True,
    generator: torch.Generator | None = None,
    record_frames: bool = False,
) -> TrialRecord:
    """``num_trials`` trials of at most ``trial_len`` steps on ``env`` (batch ``[N]``; a trial env's rows end
    their trial together), trial ``j`` reseeded with ``seeds(j)``, each on a fresh cache of its own; the
    policy in eval mode. ``record_frames``: env 0 of the first trial through the env's ``render_frame``."""
    num_envs = env.batch_size[0]
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    render = env_attribute(env, "render_frame") if record_frames else None
    if record_frames and render is None:
        raise TypeError("gif=true needs an env with render_frame(index) (Dark-Key-To-Door, ObjNavGrid); drop gif.")
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    record = TrialRecord([], [], [])
    with evaluating(policy):
        for j in range(num_trials):
            env.set_seed(seeds(j))
            cache = policy.memory.new_cache(num_envs)
            cache_bytes, step_ms = [], []

            def step(td: TensorDictBase) -> TensorDictBase:
                if render is not None and j == 0:
                    record.frames.append(render(0))
                start = time.perf_counter()
                act_on_cache(policy, td, cache, greedy, generator)
                sync()
                step_ms.append((time.perf_counter() - start) * 1e3)
                cache_bytes.append(cache.nbytes() / num_envs)
                return td

            # stops at the trial end (done), which no reset follows
            history = env.rollout(trial_len, step, auto_reset=True, break_when_any_done=True, return_contiguous=True,
                                  trust_policy=True)
            if render is not None and j == 0:
                record.frames.append(render(0))  # where the trial ended
            record.histories.append(history)
            record.cache_bytes.append(torch.tensor(cache_bytes))
            record.step_ms.append(torch.tensor(step_ms))
    return record


# ----------------------------------------------------------------------------- metrics
def episode_table(histories: Sequence[TensorDictBase]) -> list[dict[str, float]]:
    """Per inner-episode index ``k`` over every completed episode of every trial: ``count``, mean
    ``return``, ``length``, ``success`` rate and ``spl`` (where the env reports them)."""
    ends = [flag(h, ("next", "episode_end")) for h in histories]
    if not histories or "episode_index" not in histories[0].keys() or ends[0] is None:
        return []
    K = 1 + max(int(h.get("episode_index").max()) for h in histories)
    totals = torch.stack([torch.stack(episode_stats(h, K)) for h in histories]).sum(0)  # [3, K]
    keys = histories[0].keys(True, True)
    outcomes = {}
    for name in ("success", "spl"):
        if ("next", name) in keys:
            sums = torch.zeros(K)
            for h, end in zip(histories, ends):
                value = h.get(("next", name)).reshape(end.shape).float()
                index = h.get("episode_index").reshape(end.shape)
                sums += torch.bincount(index[end], weights=value[end], minlength=K)[:K].float()
            outcomes[name] = sums
    rows = []
    for k in range(K):
        count = float(totals[2, k])
        if count == 0:
            continue
        row = {"episode": k, "count": count, "return": float(totals[0, k]) / count,
               "length": float(totals[1, k]) / count}
        row.update({name: float(sums[k]) / count for name, sums in outcomes.items()})
        rows.append(row)
    return rows


def trial_rows(record: TrialRecord, seeds: Callable[[int], int]) -> list[dict[str, float]]:
    """One row per (trial, env): seed, ``return``, ``successes``, ``spl``, final and peak cache bytes per env,
    mean step latency (ms, whole batch)."""
    rows = []
    for j, history in enumerate(record.histories):
        for i in range(history.shape[0]):
            metrics = trial_metrics(history[i : i + 1], max_episodes=0)
            rows.append({
                "trial": j, "env": i, "seed": seeds(j) + i, **metrics,
                "cache_bytes_per_env": float(record.cache_bytes[j][-1]),
                "peak_cache_bytes_per_env": float(record.cache_bytes[j].max()),
                "step_ms": float(record.step_ms[j].mean()),
            })
    return rows


def summarize(trials: list[dict[str, float]]) -> dict[str, float]:
    """Means over the trial rows of every numeric metric (and ``return_std``)."""
    keys = [k for k in trials[0] if k not in ("trial", "env", "seed")]
    out = {k: sum(r[k] for r in trials) / len(trials) for k in keys}
    returns = torch.tensor([r["return"] for r in trials], dtype=torch.float64)
    out["return_std"] = float(returns.std()) if len(trials) > 1 else 0.0
    return out


# -------------------------------------------------------------------------- checkpoint
def load_checkpoint(path: str | Path) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    """(run config, policy state_dict) of a checkpoint written by a ``lightning_memo`` run.

    ``path`` may be a ``.ckpt`` file or a run directory (its ``checkpoints/last.ckpt``). The config is the
    one saved in the checkpoint (else the run directory's ``config.yaml``); errors name the fix.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if not path.is_file():
        nearby = sorted(str(p) for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
        raise ConfigError(
            f"checkpoint {path} does not exist; pass a .ckpt file or a run directory"
            + (f" (found here: {', '.join(nearby[:8])})." if nearby else " (e.g. runs/<run_name>/version_0).")
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several kinds for a truncated or foreign file
        raise ConfigError(
            f"cannot read checkpoint {path} ({str(err).splitlines()[0]}); it is truncated or not a checkpoint. "
            "Use another checkpoint of the run (checkpoints/last.ckpt or trial-epoch=<k>.ckpt)."
        ) from None
    saved = ckpt.get("run_config") if isinstance(ckpt, dict) else None
    yaml_file = path.parent.parent / "config.yaml"
    if saved is None and not yaml_file.is_file():
        raise ConfigError(
            f"{path} holds no run config (checkpoint['run_config']) and there is no config.yaml in {yaml_file.parent}; "
            "evaluate checkpoints written by lightning_memo's train (python examples/... or lightning_memo.train)."
        )
    state = {k[len("policy."):]: v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith("policy.")}
    if not state:
        raise ConfigError(
            f"{path} has no policy weights (state_dict entries 'policy.*'); is it a lightning_memo checkpoint?"
        )
    if saved is None:
        return load_config(str(yaml_file), ["trainer.resume=null"]), state
    # resume cleared: it names another run's file
    return config_from_dict({**saved, "trainer": {**saved.get("trainer", {}), "resume": None}}, str(path)), state


def with_memory_settings(cfg: RunConfig, **settings: Any) -> RunConfig:
    """``cfg`` with the memory config fields ``settings`` (``None`` values ignored) changed; an error
    names the memories that have a field this one lacks."""
    from lightning_memo.nn.registry import MEMORIES

    settings = {k: v for k, v in settings.items() if v is not None}
    if not settings:
        return cfg
    names = {f.name for f in fields(MEMORIES[cfg.memory].config_cls)}
    for key in settings:
        if key not in names:
            having = sorted(m for m, spec in MEMORIES.items() if key in {f.name for f in fields(spec.config_cls)})
            raise ConfigError(
                f"{key} applies to the memories {having}; this checkpoint's memory is {cfg.memory!r}. Drop {key}."
            )
    data = to_dict(cfg)
    data["memories"][cfg.memory] = {**(data["memories"].get(cfg.memory) or {}), **settings}
    return config_from_dict(data, "the checkpoint's config with " + ", ".join(f"{k}={v}" for k, v in settings.items()))


def build_policy(cfg: RunConfig, state: dict[str, torch.Tensor], env: EnvBase) -> MemoPolicy:
    """The run's policy for ``env`` (``train.make_policy``; with ``algo=amago`` inside the off-policy
    heads, which act greedily or sample the acting discount factor's actor) with the checkpoint's
    weights, loaded strictly."""
    from lightning_memo.algos.amago import amago_policy
    from lightning_memo.train import make_policy

    policy = make_policy(cfg, env)
    if cfg.algo == "amago":
        policy = amago_policy(policy, cfg.amago)
    expected = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    if differ:
        raise ConfigError(
            f"the checkpoint's weights do not fit the policy its config builds ({len(differ)} tensors differ, e.g. "
            f"{differ[:3]}); a setting that changes the model cannot be applied at evaluation."
        )
    policy.load_state_dict(state)
    return policy


def eval_env(cfg: RunConfig, trial_len: int, num_envs: int) -> EnvBase:
    """The run's env (``train.make_env``) with ``trial_len`` steps per trial and ``num_envs`` rows; the
    ``trial_time`` feature keeps the training scale (steps / ``cfg.env.trial_len``)."""
    from lightning_memo.envs.transforms import make_trial_env
    from lightning_memo.train import make_env

    cfg_eval = replace(cfg, env=replace(cfg.env, trial_len=trial_len, num_envs=num_envs))
    return make_trial_env(make_env(cfg_eval).base_env, trial_len=cfg.env.trial_len)


# --------------------------------------------------------------------------- evaluate
@dataclass
class Evaluation:
    """An evaluation's results: ``summary`` (means over trial rows, plus the settings), ``episodes`` (per
    inner-episode index), ``trials`` (per trial and env), ``cache_curve`` (bytes per env after each step of
    the first trial) and the ``files`` written."""

    summary: dict[str, Any]
    episodes: list[dict[str, float]]
    trials: list[dict[str, float]]
    cache_curve: list[float]
    files: dict[str, Path] = field(default_factory=dict)


def evaluate(
    checkpoint: str | Path,
    num_trials: int = 4,
    trial_len: int | None = None,
    greedy: bool = True,
    seed: int | None = None,
    max_memory_tokens: int | None = None,
    window: int | None = None,
    evict_block: int | None = None,
    position_policy: str | None = None,
    num_envs: int | None = None,
    gif: bool = False,
    out_dir: str | Path | None = None,
    device: str = "cpu",
) -> Evaluation:
    """Evaluate ``checkpoint`` on ``num_trials`` held-out trials of ``num_envs`` envs (default: training's).

    Args:
        trial_len: steps per trial (default: training's; longer tests length generalisation).
        greedy: the most likely action (else sampled, with a generator seeded from ``seed``).
        seed: base of the held-out seeds (default: the run's ``seed``); see :func:`held_out_seed`.
        max_memory_tokens, window, evict_block, position_policy: streaming settings of the memory (Memo's cap;
            FCT's window and how many steps it evicts at once; positions after an eviction).
        gif: save env 0 of the first trial as ``trial.gif`` (needs Pillow and a renderable env).
        out_dir: where ``trials.csv``, ``episodes.csv``, ``evaluation.png`` (and the GIF) go; ``None``
            writes nothing.
    """
    for name, value in (("num_trials", num_trials), ("trial_len", trial_len), ("num_envs", num_envs)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}.")
    cfg, state = load_checkpoint(checkpoint)
    cfg = with_memory_settings(
        cfg, max_memory_tokens=max_memory_tokens, window=window, evict_block=evict_block,
        position_policy=position_policy,
    )
    trial_len = trial_len or cfg.env.trial_len
    seed = cfg.seed if seed is None else seed
    env = eval_env(cfg, trial_len, num_envs or cfg.env.num_envs)
    policy = build_policy(cfg, state, env).to(device)
    seeds = lambda j: held_out_seed(seed, j, env.batch_size[0])  # noqa: E731
    record = run_trials(
        policy, env, trial_len, num_trials, seeds, greedy, torch.Generator().manual_seed(seed), record_frames=gif
    )
    trials = trial_rows(record, seeds)
    summary = {
        "memory": cfg.memory, "train_trial_len": cfg.env.trial_len, "trial_len": trial_len, "num_trials": num_trials,
        "num_envs": env.batch_size[0], "greedy": greedy, "seed": seed, "max_memory_tokens": max_memory_tokens,
        "window": window, "evict_block": evict_block, **summarize(trials),
    }
    result = Evaluation(summary, episode_table(record.histories), trials, record.cache_bytes[0].tolist())
    if out_dir is not None:
        result.files = write_outputs(result, Path(out_dir), record.frames if gif else None)
    return result


def write_outputs(result: Evaluation, out_dir: Path, frames: list | None = None) -> dict[str, Path]:
    """``trials.csv``, ``episodes.csv``, ``evaluation.png`` (when matplotlib is installed) and ``trial.gif``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"trials": write_csv(out_dir / "trials.csv", result.trials)}
    if result.episodes:
        files["episodes"] = write_csv(out_dir / "episodes.csv", result.episodes)
    plot = plot_evaluation(result, out_dir / "evaluation.png")
    if plot is not None:
        files["plot"] = plot
    if frames:
        from lightning_memo.envs.render import save_trial

        files["gif"] = save_trial(frames, out_dir / "trial.gif")
    return files


def write_csv(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a CSV with the union of their keys as header (first-seen order)."""
    header = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_evaluation(result: Evaluation, path: Path) -> Path | None:
    """Return (and success) by inner-episode index, and cache KiB per env over the first trial."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        message = "matplotlib is not installed: no evaluation.png (pip install matplotlib); the CSVs are written."
        print(message, file=sys.stderr)
        return None
    s = result.summary
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if result.episodes:
        ks = [r["episode"] for r in result.episodes]
        left.plot(ks, [r["return"] for r in result.episodes], marker="o", label="return")
        if "success" in result.episodes[0]:
            left.plot(ks, [r["success"] for r in result.episodes], marker="s", label="success")
        left.set_xlabel("inner episode")
        left.legend()
    left.set_title(f"{s['memory']}, T={s['trial_len']} (trained at {s['train_trial_len']}): return {s['return']:.2f}")
    right.plot([b / 1024 for b in result.cache_curve])
    right.set_xlabel("step")
    right.set_ylabel("cache KiB per env")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------- CLI
USAGE = (
    "usage: python -m lightning_memo.evaluate <checkpoint.ckpt or run directory> [key=value ...]\n"
    "keys: num_trials, trial_len, greedy, seed, max_memory_tokens, window, evict_block, position_policy, num_envs, "
    "gif, out_dir, device"
)


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments as :func:`evaluate` keyword arguments (values parsed as YAML scalars)."""
    import yaml  # omegaconf's own dependency

    params = [p for p in inspect.signature(evaluate).parameters if p != "checkpoint"]
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"arguments after the checkpoint must look like key=value (e.g. num_trials=8); got {arg!r}."
            )
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {key!r}{hint}; valid keys: {', '.join(params)}.")
        out[key] = yaml.safe_load(value) if value else None
    return out


def main(argv: Sequence[str] | None = None) -> Evaluation:
    """``python -m lightning_memo.evaluate CKPT key=value ...``; writes next to the run by default."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    try:
        kwargs = parse_overrides(args[1:])
        if kwargs.get("out_dir") is None:
            kwargs["out_dir"] = default_out_dir(Path(args[0]), kwargs)
        result = evaluate(args[0], **kwargs)
    except (ConfigError, NonFiniteError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    s = result.summary
    print(
        f"{s['memory']}: {s['num_trials']} trials x {s['num_envs']} envs of {s['trial_len']} steps: return "
        f"{s['return']:.2f} (std {s['return_std']:.2f}), cache {s['cache_bytes_per_env'] / 1024:.1f} KiB/env "
        f"(peak {s['peak_cache_bytes_per_env'] / 1024:.1f}), {s['step_ms']:.2f} ms/step; "
        f"wrote {result.files['trials'].parent}"
    )
    return result


def default_out_dir(checkpoint: Path, kwargs: dict) -> Path:
    """``<run dir>/evaluation/<settings>`` (next to the checkpoint's ``checkpoints/`` folder)."""
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent.parent
    parts = [f"{k}{kwargs[k]}" for k in ("trial_len", *STREAMING_KEYS) if kwargs.get(k) is not None]
    return run_dir / "evaluation" / ("_".join(parts) or "default")


if __name__ == "__main__":
    main()

"""What the three paper comparisons share: sizes, the runs (trained once, resumed when re-run, shared
between comparisons), evaluation rows saved to a CSV as they come, means with 95% intervals, tables, plots.

Layout under ``--out`` (default ``benchmarks/paper/results/<size>``)::

    runs/<task>-<variant>-s<seed>/v0/     lightning_memo run directories (config, metrics, checkpoints)
    <comparison>/results.csv               one row per (run, evaluation setting)
    <comparison>/table.md, <comparison>/<comparison>.png

A row already in ``results.csv`` is never recomputed, so a re-run with complete data only re-makes the
table and the plot from the CSV; a run whose checkpoint is short of its trials resumes from it.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for running the scripts from anywhere

import torch  # noqa: E402

from lightning_memo.config import load_config  # noqa: E402
from lightning_memo.evaluate import evaluate, write_csv  # noqa: E402

TRANSFORMERS = ("memo", "ac", "rmt", "fct")  # memories with a Transformer backbone
SEGMENTED = ("memo", "ac", "rmt")  # memories with segment_len / summary_len


@dataclass(frozen=True)
class Task:
    """A base config (packaged name or YAML path) and its overrides at one size."""

    config: str
    overrides: tuple[str, ...]
    segment_len: int  # l_seg of the segment memories (l_sum = l_seg / 8 unless a variant says otherwise)


@dataclass(frozen=True)
class Size:
    """One scale of every comparison."""

    name: str
    seeds: int
    eval_trials: int
    backbone: tuple[str, ...]  # policy width and Transformer sizes, for every memory
    tasks: dict = field(default_factory=dict)  # task name -> Task
    device: str = "cpu"  # where evaluations run


CPU_BACKBONE = ("policy.d_model=64", "policy.hidden=64", "trainer.torch_threads=1", "trainer.accelerator=cpu") + tuple(
    f"memories.{m}.{k}={v}" for m in TRANSFORMERS for k, v in (("n_layers", 1), ("n_heads", 2))
)
# the learning check's recipe (docs/training.md): 16 one-env minibatches, constant lr 3e-4, gamma 0.9
CPU_PPO = ("ppo.num_minibatches=16", "ppo.lr=3e-4", "ppo.min_lr_ratio=1.0", "ppo.gamma=0.9", "ppo.cut_episodes=true",
           "ppo.normalize_advantages=true")

SIZES = {
    # seconds: proves every path runs; the numbers mean nothing
    "smoke": Size("smoke", seeds=1, eval_trials=1, backbone=(
        "policy.d_model=16", "policy.hidden=16", "trainer.torch_threads=1", "trainer.accelerator=cpu",
        *(f"memories.{m}.{k}={v}" for m in TRANSFORMERS for k, v in (("n_layers", 1), ("n_heads", 2)))),
        tasks={
            "dkd": Task("dark_key_to_door", ("env.num_envs=2", "env.trial_len=32", "env.kwargs.size=4",
                                             "env.kwargs.episode_len=8", "ppo.update_every=16", "ppo.epochs=1",
                                             "ppo.num_minibatches=1", "ppo.num_trials=1"), segment_len=16),
            "recall": Task(str(HERE / "recall.yaml"), ("env.name=popgym-RepeatPreviousEasy-v0", "env.num_envs=2",
                                                       "env.trial_len=52", "ppo.update_every=26", "ppo.epochs=1",
                                                       "ppo.num_minibatches=1", "ppo.num_trials=1"), segment_len=16),
        }),
    # the default: about 60 minutes for the memories comparison on 2 CPU cores with --jobs 2 (from measured
    # times of 2-trial runs: 4-9 s per Dark-Key-To-Door trial, 3-5 s per recall trial on a busy core)
    "cpu": Size("cpu", seeds=3, eval_trials=4, backbone=CPU_BACKBONE, tasks={
        "dkd": Task("dark_key_to_door", ("env.num_envs=16", "env.trial_len=200", "ppo.update_every=100",
                                         "ppo.num_trials=40", *CPU_PPO), segment_len=32),
        "recall": Task(str(HERE / "recall.yaml"), ("env.num_envs=16", "ppo.num_trials=40", *CPU_PPO), segment_len=32),
    }),
    # the reference model (4 layers, 8 heads, d 256, MLP 1024; l_seg 256, l_sum 32) and ReLIC's 4,096-step
    # trials on Dark-Key-To-Door 9x9/50, evaluated up to 32k steps; for a GPU
    "paper": Size("paper", seeds=3, eval_trials=4, backbone=(
        "policy.d_model=256", "policy.hidden=256", "trainer.accelerator=gpu", "trainer.precision=bf16-mixed",
        *(f"memories.{m}.{k}={v}" for m in TRANSFORMERS for k, v in (("n_layers", 4), ("n_heads", 8)))),
        tasks={
            "dkd": Task("dark_key_to_door", (
                "env.num_envs=20", "env.trial_len=4096", "env.kwargs.size=9", "env.kwargs.episode_len=50",
                "ppo.update_every=256", "ppo.num_minibatches=4", "ppo.lr=4e-4", "ppo.max_grad_norm=0.2",
                "ppo.num_trials=400"), segment_len=256),
            "recall": Task(str(HERE / "recall.yaml"), (
                "env.name=popgym-RepeatPreviousHard-v0", "env.num_envs=20", "env.trial_len=156", "ppo.update_every=78",
                "ppo.num_minibatches=4", "ppo.num_trials=2000"), segment_len=32),
        }, device="cuda"),
}


# ------------------------------------------------------------------------------ variants
def variant_overrides(variant: str, segment_len: int) -> list[str]:
    """Config overrides of a named variant: a memory name (``memo``, ``fct``, ``rmt``, ``ac``, ``gru``,
    ``none``), ``noiea`` (Memo without inter-episode attention), ``memo-lsum<k>`` (Memo with ``l_sum = k``)
    or ``memo-norand`` (no segment randomisation). Segment memories get ``l_seg`` and ``l_sum = l_seg/8``."""
    base, _, option = variant.partition("-")
    memory = "memo" if base == "noiea" else base
    out = [f"memory={memory}"]
    if memory in SEGMENTED:
        out += [f"memories.{memory}.segment_len={segment_len}", f"memories.{memory}.summary_len={segment_len // 8}"]
    if base == "noiea":
        out.append("memories.memo.inter_episode_attention=false")
    if option.startswith("lsum"):
        out.append(f"memories.memo.summary_len={int(option[4:])}")
    elif option == "norand":
        out.append("memories.memo.randomize_segments=false")
    elif option:
        raise ValueError(f"unknown variant option {option!r} in {variant!r}; use lsum<k> or norand.")
    return out


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``<task>-<variant>-s<seed>``."""

    task: str
    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-{self.variant}-s{self.seed}"


def run_overrides(spec: RunSpec, size: Size, runs_root: Path) -> tuple[str, list[str]]:
    """(base config, overrides) of ``spec`` at ``size``, writing under ``runs_root/<name>/v0``."""
    task = size.tasks[spec.task]
    return task.config, [
        *size.backbone, *task.overrides, *variant_overrides(spec.variant, task.segment_len), f"seed={spec.seed}",
        f"trainer.log_dir={runs_root}", f"trainer.run_name={spec.name}", "trainer.version=v0",
        "trainer.enable_progress_bar=false", "trainer.loggers=[csv]", "trainer.checkpoint_every=1",
    ]


def ensure_trained(spec: RunSpec, size: Size, runs_root: Path) -> Path:
    """Train ``spec`` unless its ``last.ckpt`` has all its trials (resuming from it when short); the checkpoint."""
    from lightning_memo.train import train

    config, overrides = run_overrides(spec, size, runs_root)
    run_dir = runs_root / spec.name / "v0"
    last = run_dir / "checkpoints" / "last.ckpt"
    cfg = load_config(config, overrides)
    if last.is_file():
        done = torch.load(last, map_location="cpu", weights_only=False, mmap=True)["memo_ppo"]["trial_index"]
        if done >= cfg.ppo.num_trials:
            return last
        print(f"{spec.name}: resuming at trial {done} of {cfg.ppo.num_trials}", flush=True)
        cfg = load_config(config, [*overrides, "trainer.resume=last"])
    elif run_dir.exists():  # a run stopped before its first checkpoint: nothing to resume
        shutil.rmtree(run_dir)
    train(cfg)
    return last


# ------------------------------------------------------------------------- evaluations
@dataclass(frozen=True)
class EvalSpec:
    """An evaluation setting of a run: a label and :func:`lightning_memo.evaluate.evaluate` arguments."""

    label: str
    kwargs: tuple[tuple[str, Any], ...] = ()


def train_and_evaluate(spec: RunSpec, size: Size, runs_root: Path, evals: Sequence[EvalSpec]) -> list[dict]:
    """Train (or resume) ``spec``, then one result row per evaluation setting (means over held-out trials)."""
    if size.device == "cpu":
        torch.set_num_threads(1)  # one core per run
    checkpoint = ensure_trained(spec, size, runs_root)
    rows = []
    for ev in evals:
        result = evaluate(checkpoint, num_trials=size.eval_trials, device=size.device, **dict(ev.kwargs))
        s = result.summary
        rows.append({
            "task": spec.task, "variant": spec.variant, "seed": spec.seed, "setting": ev.label,
            "trial_len": s["trial_len"], "train_trial_len": s["train_trial_len"], "return": s["return"],
            "return_per_100_steps": 100 * s["return"] / s["trial_len"], "successes": s.get("successes", ""),
            "cache_bytes_per_env": s["cache_bytes_per_env"], "peak_cache_bytes_per_env": s["peak_cache_bytes_per_env"],
            "step_ms": s["step_ms"],
        })
    return rows


def row_key(task: str, variant: str, seed: Any, setting: str) -> tuple:
    """What identifies a result row (a seed may read back as a float, e.g. ``0.0``)."""
    return task, variant, int(float(seed)), setting


def read_rows(path: Path) -> list[dict]:
    """The rows of a results CSV (numbers as numbers), ``[]`` when it does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _number(value: str) -> Any:
    """An int or float when ``value`` spells one (so a rewritten CSV keeps ``0``, not ``0.0``), else the string."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def collect(
    jobs: Sequence[tuple[RunSpec, Sequence[EvalSpec]]], size: Size, runs_root: Path, csv_path: Path, workers: int = 1
) -> list[dict]:
    """Run the (run, evaluations) jobs whose rows are not in ``csv_path`` yet (``workers`` processes at once),
    appending each job's rows to the CSV as it finishes; all rows."""
    rows = read_rows(csv_path)
    done = {row_key(r["task"], r["variant"], r["seed"], r["setting"]) for r in rows}
    todo = []
    for spec, evals in jobs:
        missing = [e for e in evals if row_key(spec.task, spec.variant, spec.seed, e.label) not in done]
        if missing:
            todo.append((spec, missing))
    if not todo:
        print(f"all {len(rows)} rows are in {csv_path}: no training, re-making the table and plot", flush=True)
        return rows

    def save(new: list[dict]) -> None:
        rows.extend(new)
        write_csv(csv_path, rows)

    csv_path.parent.mkdir(parents=True, exist_ok=True)
    if workers <= 1:
        for spec, evals in todo:
            save(train_and_evaluate(spec, size, runs_root, evals))
    else:  # one run per process (spawned: no forked torch threads)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(train_and_evaluate, spec, size, runs_root, evals) for spec, evals in todo]
            for future in as_completed(futures):
                save(future.result())
    return rows


# --------------------------------------------------------------------------- statistics
# two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (hand-written: scipy is not a dependency)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); the half-width is nan for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, (T975[n - 2] if n - 1 <= len(T975) else 1.960) * sd / math.sqrt(n)


def aggregate(rows: Iterable[dict], keys: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Rows grouped by ``keys`` (first-seen order): ``n`` seeds and ``<metric>`` / ``<metric>_ci`` /
    ``<metric>_values`` (the seeds' own values) per metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip(keys, key), n=len(members))
        for m in metrics:
            row[f"{m}_values"] = [float(r[m]) for r in members]
            row[m], row[f"{m}_ci"] = mean_ci(row[f"{m}_values"])
        out.append(row)
    return out


def markdown_table(agg: Sequence[dict], keys: Sequence[str], metrics: dict[str, Callable[[float], str]]) -> str:
    """``agg`` as a markdown table: the keys, ``n``, and ``mean ± ci`` per metric (formatted by its function)."""
    head = [*keys, "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in agg:
        cells = [str(r[k]) for k in keys] + [str(r["n"])]
        for m, fmt in metrics.items():
            ci = r[f"{m}_ci"]
            cells.append(fmt(r[m]) + ("" if math.isnan(ci) else f" ± {fmt(ci)}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot (Agg backend), or ``None`` with a message when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib); the CSV and table are written.")
        return None
    return plt


def bars(ax, labels: Sequence[str], agg: Sequence[dict], metric: str, log: bool = False) -> None:
    """A bar per row of ``agg`` (the mean) with its 95% interval as an error bar and each seed as a dot."""
    errors = [0.0 if math.isnan(r[f"{metric}_ci"]) else r[f"{metric}_ci"] for r in agg]
    ax.bar(range(len(agg)), [r[metric] for r in agg], yerr=errors, capsize=3, color="#4c72b0")
    for i, r in enumerate(agg):
        values = r.get(f"{metric}_values", [])
        ax.scatter([i] * len(values), values, s=12, color="black", zorder=3)
    ax.set_xticks(range(len(agg)), labels, rotation=30, ha="right")
    if log:
        ax.set_yscale("log")


def write_report(out_dir: Path, name: str, table: str, fig, title: str) -> None:
    """``table.md`` (with the command that made it) and ``<name>.png``."""
    command = "python benchmarks/paper/" + Path(sys.argv[0]).name + " " + " ".join(sys.argv[1:])
    (out_dir / "table.md").write_text(f"# {title}\n\n`{command.strip()}`\n\n{table}")
    if fig is not None:
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=110)
    print(f"{title}\n{table}wrote {out_dir / 'table.md'}" + (f" and {out_dir / (name + '.png')}" if fig else ""))


# -------------------------------------------------------------------------------- CLI
def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--smoke`` / ``--paper`` (default: the CPU size), ``--seeds``, ``--jobs``, ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--smoke", action="store_true", help="seconds-long run of every path (numbers mean nothing)")
    scale.add_argument("--paper", action="store_true", help="the reference model sizes, for a GPU")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: 3; smoke: 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each (2 on 2 cores)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results root (default: benchmarks/paper/results/<size>)")
    args = parser.parse_args(argv)
    args.size = SIZES["smoke" if args.smoke else "paper" if args.paper else "cpu"]
    args.seeds = args.seeds or args.size.seeds
    args.out = args.out or HERE / "results" / args.size.name
    args.runs = args.out / "runs"
    return args

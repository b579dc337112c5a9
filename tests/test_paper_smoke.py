"""The paper comparisons (benchmarks/paper): the shared statistics and run naming, one script's --smoke run
end to end, and the re-run that re-makes the table and plot from the saved CSV without training."""

import importlib.util
import math
import sys

import pytest

from tests.test_examples import ROOT

PAPER = ROOT / "benchmarks" / "paper"


sys.path.insert(0, str(PAPER))  # the scripts import their shared module as `common`
common = importlib.import_module("common")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"paper_{name}", PAPER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mean_and_95_interval():
    mean, half = common.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(half, 4.303 / math.sqrt(3))  # sd 1, t(0.975, df 2)
    assert math.isnan(common.mean_ci([5.0])[1])
    agg = common.aggregate(
        [{"v": "a", "x": 1.0}, {"v": "b", "x": 4.0}, {"v": "a", "x": 3.0}], ["v"], ["x"]
    )
    assert [(r["v"], r["n"], r["x"], r["x_values"]) for r in agg] == [("a", 2, 2.0, [1.0, 3.0]), ("b", 1, 4.0, [4.0])]
    table = common.markdown_table(agg, ["v"], {"x": "{:.1f}".format})
    assert "| a | 2 | 2.0 ± 12.7 |" in table and "| b | 1 | 4.0 |" in table


def test_variants_name_their_settings():
    assert common.variant_overrides("noiea", 32) == [
        "memory=memo", "memories.memo.segment_len=32", "memories.memo.summary_len=4",
        "memories.memo.inter_episode_attention=false",
    ]
    assert common.variant_overrides("memo-lsum2", 32)[-1] == "memories.memo.summary_len=2"
    assert common.variant_overrides("gru", 32) == ["memory=gru"]
    with pytest.raises(ValueError, match="unknown variant option"):
        common.variant_overrides("memo-fast", 32)
    # every variant of every size makes a valid config
    for size in common.SIZES.values():
        for task in size.tasks:
            for variant in ("memo", "fct", "rmt", "ac", "noiea", "gru", "none", "memo-norand", "memo-lsum2"):
                config, overrides = common.run_overrides(common.RunSpec(task, variant, 0), size, ROOT / "unused")
                common.load_config(config, overrides)


def test_length_streaming_settings():
    length = _load("length")
    full = length.evaluations("memo", False, 200, 32, 4)
    assert [dict(e.kwargs) for e in full] == [{"trial_len": m * 200} for m in (1, 2, 4, 8)]
    memo = dict(length.evaluations("memo", True, 200, 32, 4)[-1].kwargs)
    fct = dict(length.evaluations("fct", True, 200, 32, 4)[-1].kwargs)
    assert memo == {"trial_len": 1600, "max_memory_tokens": 24}  # 6 summaries of 4: a training trial's memory
    assert fct == {"trial_len": 1600, "window": 200, "evict_block": 32}


def test_ablations_smoke_then_replot_from_csv(tmp_path, monkeypatch):
    ablations = _load("ablations")
    rows = ablations.main(["--smoke", "--out", str(tmp_path)])
    assert sorted(r["variant"] for r in rows) == ["memo", "memo-lsum1", "memo-lsum4", "memo-norand"]
    out = tmp_path / "ablations"
    assert (out / "results.csv").is_file() and (out / "ablations.png").is_file()
    assert "l_sum = l_seg/16" in (out / "table.md").read_text()
    assert (tmp_path / "runs" / "dkd-memo-s0" / "v0" / "checkpoints" / "last.ckpt").is_file()
    (out / "ablations.png").unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("a re-run with complete data must not train or evaluate")

    monkeypatch.setattr(common, "train_and_evaluate", no_training)
    again = ablations.main(["--smoke", "--out", str(tmp_path)])
    assert len(again) == len(rows) and (out / "ablations.png").is_file()


def test_a_run_short_of_its_trials_resumes(tmp_path):
    spec, size = common.RunSpec("dkd", "gru", 0), common.SIZES["smoke"]
    last = common.ensure_trained(spec, size, tmp_path)
    mtime = last.stat().st_mtime_ns
    assert common.ensure_trained(spec, size, tmp_path) == last and last.stat().st_mtime_ns == mtime  # complete: kept
    longer = common.Size(size.name, size.seeds, size.eval_trials, size.backbone, {
        "dkd": common.Task(size.tasks["dkd"].config, (*size.tasks["dkd"].overrides, "ppo.num_trials=2"), 16)})
    common.ensure_trained(spec, longer, tmp_path)
    import torch

    assert torch.load(last, weights_only=False)["memo_ppo"]["trial_index"] == 2

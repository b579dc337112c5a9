"""Evaluation of a checkpoint: held-out seeds, its own cache, longer trials, streaming, files, bad input;
and the evaluation callback, which must leave training bit-identical."""

import csv

import pytest
import torch

from lightning_memo.callbacks import EvaluationCallback
from lightning_memo.config import ConfigError, load_config
from lightning_memo.evaluate import (
    EVAL_SEED_OFFSET, build_policy, eval_env, evaluate, held_out_seed, load_checkpoint, main, parse_overrides,
    run_trials,
)
from lightning_memo.train import train
from tests.scripts.tiny import tiny_module, tiny_trainer
from tests.test_examples import TINY


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny Memo run and a tiny FCT run (one trial each): their last.ckpt."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for memory in ("memo", "fct"):
        cfg = load_config("dark_key_to_door", [
            *TINY, "ppo.num_trials=1", f"memory={memory}", "trainer.loggers=[csv]", f"trainer.log_dir={root}",
            f"trainer.run_name={memory}",
        ])
        train(cfg)
        out[memory] = root / memory / "version_0" / "checkpoints" / "last.ckpt"
    return out


def test_held_out_seeds_are_disjoint_from_training_seeds():
    module = tiny_module(num_trials=1)
    collector_seeds = {module.seed + (k * 2 + r) * 4 + i for k in range(1000) for r in range(2) for i in range(4)}
    eval_seeds = {held_out_seed(module.seed, j, 4, r, 2) + i for j in range(10) for r in range(2) for i in range(4)}
    assert not collector_seeds & eval_seeds and min(eval_seeds) == EVAL_SEED_OFFSET


def test_evaluate_writes_csv_plot_and_gif(checkpoints, tmp_path):
    result = evaluate(checkpoints["memo"], num_trials=2, out_dir=tmp_path, gif=True)
    s = result.summary
    assert s["trial_len"] == 40 and s["num_envs"] == 2 and s["memory"] == "memo"
    assert len(result.trials) == 4  # 2 trials x 2 envs
    assert {r["seed"] for r in result.trials} == {EVAL_SEED_OFFSET + j * 2 + i for j in range(2) for i in range(2)}
    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert len(rows) == 4 and float(rows[0]["return"]) == result.trials[0]["return"]
    assert abs(s["return"] - sum(r["return"] for r in result.trials) / 4) < 1e-9
    episodes = list(csv.DictReader(open(tmp_path / "episodes.csv")))
    assert episodes and {"episode", "count", "return", "length", "success"} <= set(episodes[0])
    # every completed inner episode is counted once: the per-episode returns add up to the trial returns
    # minus what the unfinished last episodes earned
    completed = sum(float(e["count"]) * float(e["return"]) for e in episodes)
    assert completed <= sum(r["return"] for r in result.trials) + 1e-6
    assert (tmp_path / "evaluation.png").stat().st_size > 0 and (tmp_path / "trial.gif").stat().st_size > 0
    assert s["cache_bytes_per_env"] > 0 and s["step_ms"] > 0


def test_evaluate_is_reproducible(checkpoints):
    for greedy in (True, False):  # sampling draws from a generator seeded by the evaluation seed
        a = evaluate(checkpoints["memo"], num_trials=1, greedy=greedy)
        b = evaluate(checkpoints["memo"], num_trials=1, greedy=greedy)
        assert [r["return"] for r in a.trials] == [r["return"] for r in b.trials]
        assert a.cache_curve == b.cache_curve


def test_own_cache_leaves_the_module_cache_untouched(checkpoints):
    cfg, state = load_checkpoint(checkpoints["memo"])
    env = eval_env(cfg, cfg.env.trial_len, 2)
    policy = build_policy(cfg, state, env)
    td = env.reset()
    policy.reset(2)
    for _ in range(5):  # a training trial in progress: the module cache holds 5 steps
        td = env.step(policy.act(td))["next"]
    before = policy.memory.cache_state()
    tokens = policy.memory.memory_tokens().clone()
    run_trials(policy, env, 20, 2, lambda j: held_out_seed(0, j, 2))
    assert torch.equal(policy.memory.memory_tokens(), tokens)
    x = torch.randn(2, cfg.policy.d_model)
    expected = policy.memory.step(x, cache=before.clone())
    torch.testing.assert_close(policy.memory.step(x, cache=policy.memory.cache_state()), expected, rtol=0, atol=0)


def test_longer_trials_and_streaming_caches(checkpoints):
    full = evaluate(checkpoints["memo"], num_trials=1, trial_len=160)
    capped = evaluate(checkpoints["memo"], num_trials=1, trial_len=160, max_memory_tokens=4)
    assert full.summary["trial_len"] == 160 and len(full.cache_curve) == 160
    # Memo with l_seg 8, l_sum 4 and a cap of one summary: the cache stays bounded
    assert capped.summary["peak_cache_bytes_per_env"] < full.summary["peak_cache_bytes_per_env"]
    assert max(capped.cache_curve[80:]) == max(capped.cache_curve[40:80])  # flat once the cap is reached
    fct = evaluate(checkpoints["fct"], num_trials=1, trial_len=320)
    fct_window = evaluate(checkpoints["fct"], num_trials=1, trial_len=320, window=40)  # evicts 256 steps at a time
    assert fct.cache_curve[-1] == 8 * fct.cache_curve[39]  # full context grows with every step
    assert fct_window.summary["peak_cache_bytes_per_env"] < fct.summary["peak_cache_bytes_per_env"]
    # a cap above the horizon changes nothing
    loose = evaluate(checkpoints["memo"], num_trials=1, trial_len=160, max_memory_tokens=1000)
    assert [r["return"] for r in loose.trials] == [r["return"] for r in full.trials]


def test_bad_input_names_the_fix(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate(tmp_path / "nope.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(checkpoints["memo"].read_bytes()[:1000])
    with pytest.raises(ConfigError, match="truncated or not a checkpoint"):
        evaluate(corrupt)
    with pytest.raises(ConfigError, match=r"window applies to the memories \['fct'\]"):
        evaluate(checkpoints["memo"], window=10)
    with pytest.raises(ConfigError, match="max_memory_tokens must be"):
        evaluate(checkpoints["memo"], max_memory_tokens=1)
    with pytest.raises(ConfigError, match="num_trials must be an integer"):
        evaluate(checkpoints["memo"], num_trials=0)
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(["trial_len"])
    cfg, state = load_checkpoint(checkpoints["memo"])
    wider = load_config("dark_key_to_door", [*TINY, "policy.d_model=32"])
    with pytest.raises(ConfigError, match="weights do not fit"):
        build_policy(wider, state, eval_env(cfg, 40, 2))


def test_cli_writes_next_to_the_run(checkpoints, capsys):
    main([str(checkpoints["memo"]), "num_trials=1", "trial_len=80", "greedy=false"])
    out_dir = checkpoints["memo"].parents[1] / "evaluation" / "trial_len80"
    assert (out_dir / "trials.csv").is_file() and (out_dir / "evaluation.png").is_file()
    assert "return" in capsys.readouterr().out


def test_cli_error_is_one_line(checkpoints, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(checkpoints["memo"]), "num_trails=2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "did you mean 'num_trials'" in err and len(err.strip().splitlines()) == 1


def test_evaluation_callback_logs_and_leaves_training_bit_identical():
    plain = tiny_module(num_trials=3)
    tiny_trainer(max_epochs=3).fit(plain)
    evaluation = EvaluationCallback(every=2, num_trials=1, greedy=False)
    module = tiny_module(num_trials=3)
    trainer = tiny_trainer([evaluation], max_epochs=3)
    trainer.fit(module)
    assert "eval/return" in trainer.callback_metrics and "eval/cache_bytes_per_env" in trainer.callback_metrics
    assert evaluation.last["cache_bytes_per_env"] > 0
    for (name, a), b in zip(plain.policy.state_dict().items(), module.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert module.last_trial == plain.last_trial  # the training trials themselves were the same


def test_evaluation_callback_rejects_bad_settings():
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        EvaluationCallback(every=0)

"""benchmarks/bench_training.py's trial breakdown: the phases it times and counts are disjoint and cover the
trial (no phase counted inside another, nothing left negative)."""

import argparse

from benchmarks import bench_training


def test_the_phases_of_a_trial_split_it_without_overlap(tmp_path):
    args = argparse.Namespace(
        d_model=16, num_envs=2, update_every=100, trials=1, segment_len=50, summary_len=8, layers=None, heads=None,
        device="cpu", precision="32",
    )
    row = bench_training.bench("memo", False, args, str(tmp_path))
    phases = row["phases"]
    assert list(phases) == list(bench_training.PHASES)
    # every phase ran (4 partial updates and refreshes, the last update, 500 acting and env steps) ...
    for phase in ("acting", "env steps", "partial updates", "last update", "refresh"):
        seconds, ops = phases[phase]
        assert seconds > 0 and ops > 0, phase
    # ... and what is left after taking the nested phases out of their callers is not negative
    for phase in ("collection, other", "other"):
        seconds, ops = phases[phase]
        assert seconds >= 0 and ops >= 0, phase
    assert abs(sum(seconds for seconds, _ in phases.values()) - row["s_per_trial"]) < 1e-6

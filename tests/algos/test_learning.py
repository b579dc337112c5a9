"""Learning check (``pytest -m learning``, minutes): Memo learns Dark-Key-To-Door 5x5 / 20 / 200 in context.

Memo's mean trial return over the last trials must beat the same PPO with a memoryless core by >= 1.5x,
and within Memo's trials the later inner episodes must be shorter than the first one (it remembers where
the key and door are). The two runs go in parallel processes (one thread each). Curves:
``python benchmarks/bench_training.py --memories --learning 400``, or docs/training.md.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts.learning import read_rows

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 400  # x 16 envs x 200 steps = 1.28M env steps per run
LAST = 50  # trials averaged at the end


def _mean(rows, key):
    vals = [float(r[key]) for r in rows if r.get(key)]
    return sum(vals) / len(vals)


@pytest.mark.learning
def test_memo_beats_memoryless_and_improves_in_context(tmp_path):
    script = ROOT / "tests" / "scripts" / "learning.py"
    runs = {
        name: subprocess.Popen([sys.executable, str(script), name, str(TRIALS), str(tmp_path)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name in ("memo", "none")
    }
    for name, proc in runs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, f"the {name} run failed:\n{err[-3000:]}"
    memo, none = read_rows(tmp_path, "memo")[-LAST:], read_rows(tmp_path, "none")[-LAST:]
    memo_return, none_return = _mean(memo, "trial/return"), _mean(none, "trial/return")
    print(f"mean trial return over the last {LAST} trials: memo {memo_return:.2f}, memoryless {none_return:.2f}")
    assert memo_return >= 1.5 * none_return
    first = _mean(memo, "trial/episode_len/0")
    later = sum(_mean(memo, f"trial/episode_len/{k}") for k in range(3, 6)) / 3
    print(f"memo inner-episode length: first {first:.2f}, episodes 3-5 {later:.2f}")
    assert later < first

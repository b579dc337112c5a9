"""Every ```python block of the docs and the README runs as written.

Each block runs alone, in a fresh interpreter in a temporary directory (so runs/ and GIFs land there),
with one torch thread. A block that cannot run here is preceded by ``<!-- no-test: reason -->`` and is
skipped with that reason. Shell blocks are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"(?P<marker><!--\s*no-test:\s*(?P<reason>.*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```", re.M | re.S)


def python_blocks() -> list:
    params = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start("code")].count("\n")
            name = f"{page.relative_to(ROOT)}:{line}"
            marks = [pytest.mark.skip(reason=match.group("reason"))] if match.group("marker") else []
            params.append(pytest.param(match.group("code"), id=name, marks=marks))
    return params


def test_blocks_were_found():
    assert len(python_blocks()) >= 10


@pytest.mark.parametrize("code", python_blocks())
def test_python_block_runs(code: str, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    # the examples/ paths of the docs resolve from the temporary directory too
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    result = subprocess.run(
        [sys.executable, "-c", "import torch; torch.set_num_threads(1)\n" + code],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"the block failed:\n{code}\n--- stderr ---\n{result.stderr[-4000:]}"


PUBLIC_PACKAGES = ["lightning_memo", "lightning_memo.nn", "lightning_memo.envs", "lightning_memo.algos",
                   "lightning_memo.algos.amago", "lightning_memo.config", "lightning_memo.train"]


def test_reference_documents_every_public_name():
    """Each name in a package's ``__all__`` has a ``::: path`` entry in docs/reference/ (any path to it)."""
    import importlib

    documented = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        for path in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M):
            module_path, _, name = path.rpartition(".")
            try:
                documented.add(id(getattr(importlib.import_module(module_path), name)))
            except (ImportError, AttributeError):
                documented.add(id(importlib.import_module(path)))
    missing = [
        f"{package}.{name}"
        for package in PUBLIC_PACKAGES
        for name in importlib.import_module(package).__all__
        if not name.startswith("__") and not isinstance(getattr(importlib.import_module(package), name), type(re))
        and id(getattr(importlib.import_module(package), name)) not in documented
    ]
    assert not missing, f"add a `::: name` entry to a page of docs/reference/ for: {missing}"


def test_training_page_lists_every_ppo_setting_with_its_default():
    """docs/training.md's `ppo.*` tables name every PPOConfig field once, with the dataclass default."""
    from dataclasses import MISSING, fields

    from lightning_memo.algos import PPOConfig

    rows = re.findall(r"^\| `ppo\.(\w+)` \| `([^`]*)` \|", (ROOT / "docs" / "training.md").read_text(), re.M)
    documented = dict(rows)
    assert len(documented) == len(rows), "a ppo.* key is listed twice in docs/training.md"
    literals = {"true": True, "false": False, "null": None}
    expected = {f.name: f.default for f in fields(PPOConfig) if f.default is not MISSING}
    assert sorted(documented) == sorted(expected), "docs/training.md's ppo.* tables and PPOConfig's fields differ"
    for name, text in documented.items():
        value = literals[text] if text in literals else float(text)
        assert value == expected[name], f"docs/training.md: ppo.{name} default is {text}, PPOConfig says {expected[name]!r}"

"""Every file in examples/ runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    # the checkout under test, not whichever one the editable install points at (a worktree's examples
    # would otherwise import the main checkout's bitpress)
    root = str(path.parent.parent)
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, BITPRESS_QUIET="1", PYTHONWARNINGS="ignore", PYTHONPATH=pythonpath)
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, f"{path.name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), f"{path.name} printed nothing"

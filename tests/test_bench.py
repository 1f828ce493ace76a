"""The benchmarks run end to end at their --smoke size and print their ratio lines."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, ratio", [("score.py", "ssrl/naive"),
                                           ("cluster.py", "ssrl/sklearn")])
def test_bench_smoke(script, ratio):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"^ratio: {ratio} = \d+\.\d+", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^summary: ", proc.stdout, re.MULTILINE), proc.stdout

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


def test_score_smoke_times_the_bootstrap():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "score.py"), "--smoke"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for n in (1, 2):
        assert re.search(rf"^bootstrap: 40 speaker replicates, {n} thread\(s\): \d+\.\d+ s "
                         r"\(\d+\.\d+ CPU s\)$", proc.stdout, re.MULTILINE), proc.stdout
    # the vectorised replicates are the naive ones (same draws, same EER to rounding)
    diff = re.search(r"^naive bootstrap: .* \(max \|EER diff\| (\S+) over 2\)$", proc.stdout,
                     re.MULTILINE)
    assert diff and float(diff.group(1)) < 1e-9, proc.stdout
    assert re.search(r"^ratio: bootstrap/naive = \d+\.\d+", proc.stdout, re.MULTILINE)

"""The training-step and data-loading benchmarks run end to end at smoke size (no timings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, f"bench/{script}", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def train_out() -> str:
    return _run("train_step.py")


def test_train_step_smoke_reports_both_steps(train_out: str):
    assert "== SSRL step: ecapa_tiny, batch 8, K 50" in train_out
    assert "== DINO step: ecapa_tiny, batch 8, 2 x 2 s" in train_out
    ratios = re.findall(r"^ratio: optimised/fp32 = (\d+\.\d+)", train_out, flags=re.M)
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios)
    # One row per path, one column per phase; on CPU there is no MFU to compute.
    rows = re.findall(r"^(fp32|optimised)\s+((?:\d+(?:\.\d+)?\s+){9})n/a$", train_out, flags=re.M)
    assert [r[0] for r in rows] == ["fp32", "optimised", "fp32", "optimised"]


def test_train_step_counts_model_flops(train_out: str):
    """FLOPs are counted (not timed), so their order is a fixed property of the shapes."""
    per_utt = re.findall(r"= (\d+\.\d+) GFLOP per utterance", train_out)
    assert len(per_utt) == 2
    # The DINO step (2 x 2 s + 4 x 1 s student crops, fwd+bwd) costs more than SSRL's
    # (1 s student fwd+bwd, 2 s teacher forward).
    assert float(per_utt[1]) > float(per_utt[0]) > 0


def test_dataload_smoke_prints_ratios():
    out = _run("dataload.py")
    assert re.search(r"^ratio: 1 workers / 0 workers \(cpu aug\) = \d+\.\d+$", out, flags=re.M)
    assert re.search(r"^ratio: gpu aug / cpu aug ", out, flags=re.M)
    assert re.search(r"^ratio: front end \(both views\) / loader \(0 workers\) = \d+\.\d+$",
                     out, flags=re.M)
    assert re.search(r"^cpu aug, 0 workers\s+\d+\.\d+$", out, flags=re.M)

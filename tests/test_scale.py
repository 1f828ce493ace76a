"""bench/scale.py runs every part at smoke size and reports each figure and the projection
(structure and counted quantities only, never timings)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N_STATE, K = 10_000, 8000  # the smoke size of the per-utterance state


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("scale") / "scale.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "bench/scale.py", "--smoke", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_every_part_prints_its_ratio(run):
    out, _ = run
    for fmt in ("wav", "flac", "m4a"):
        assert re.search(rf"^ratio: store {fmt} ssrl/reference per core = \d+\.\d+", out, re.M)
    for recipe in ("ssrl", "dino"):
        assert re.search(rf"^ratio: pipeline \({recipe} views\) ssrl/reference per core = "
                         r"\d+\.\d+", out, re.M)
    for ref in ("faiss", "sklearn"):
        assert re.search(rf"^ratio: kmeans ssrl/{ref} = \d+\.\d+", out, re.M)
    assert re.search(r"^  E \(20,000 trials\): scoring \+ EER/minDCF \d+\.\d+ s, intervals",
                     out, re.M)
    assert re.search(r"^summary: on 16 cores the slowest stage the workflow waits for on the "
                     r"CPU is .+ \(\d+(\.\d+)? (s|min|h)\)$", out, re.M)


def test_projection_covers_every_stage_on_three_core_counts(run):
    out, results = run
    stages = [row["stage"] for row in results["projection"]]
    for stage in ("prepare", "store train (VoxCeleb2 m4a)", "  before: previous path (m4a)",
                  "store test (VoxCeleb1 wav)", "DINO data loading", "DINO on one GPU",
                  "SSRL data loading", "SSRL on one GPU", "k-means 1.09 M x 512 -> 8000",
                  "embed train set", "embed test set", "score O + E + H"):
        assert any(s.startswith(stage) for s in stages), stage
    for row in results["projection"]:
        assert set(row["wall"]) == {"2", "16", "32"} and row["kind"] in (
            "cpu", "before", "feed", "gpu", "gpu-on-cpu")
        assert row["wall"]["2"] >= row["wall"]["16"] >= row["wall"]["32"] > 0
        assert re.search(rf"^  {re.escape(row['stage'])}\s+\S+ (s|min|h)\s", out, re.M)
    before = next(r for r in results["projection"] if r["stage"].startswith("  before"))
    assert before["wall"]["2"] == before["wall"]["32"]  # the previous path used one process


def test_counted_quantities(run):
    _, results = run
    for fmt in ("wav", "flac", "m4a"):
        store = results["store"][fmt]
        assert store["files"] == 40 and store["ref_files"] == 12
        # int16 at 16 kHz: 115.2 MB per hour (hours are rounded to the millisecond)
        assert store["bytes"]["shards"] / store["hours"] == pytest.approx(115.2e6, rel=1e-4)
    # labels, recorded labels (int64), p_clean, losses, initial labels (float32 / int32),
    # a queue of 5 int32 per utterance, one bool per cluster
    assert results["state"]["total"] == N_STATE * (8 + 8 + 4 + 4 + 4 + 5 * 4) + K
    # ecapa_tiny's forward cost per frame is a property of the model, not of the machine
    assert 1e5 < results["embed"]["flops_per_frame"] < 1e6

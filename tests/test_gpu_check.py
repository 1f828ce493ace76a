"""bench/gpu_check.sh as far as a CPU takes it: every part at smoke size, one summary in
markdown and JSON; and the summary's parsing of the GPU figures, fed by the benchmarks' own
report code (no GPU needed, no timing asserted)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_summary  # noqa: E402
import train_step  # noqa: E402

PARTS = ["env", "gpu_tests", "train", "kmeans", "compile", "dataload", "workflow"]


def test_cpu_smoke_writes_one_summary(tmp_path: Path):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("GPU_CHECK_CPU_SMOKE", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-smoke", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "cpu-smoke" and summary["budget"] == 480
    assert [p["name"] for p in summary["parts"]] == PARTS
    status = {p["name"]: p["status"] for p in summary["parts"]}
    assert status == {**dict.fromkeys(PARTS, "ok"), "compile": "skipped"}, summary["parts"]
    lines = {p["name"]: p["lines"] for p in summary["parts"]}
    assert any("passed" in x and "1 skipped" in x for x in lines["gpu_tests"])
    assert any(x.startswith("ratio: optimised/fp32") for x in lines["train"])
    assert any(x.startswith("ratio: ssrl/sklearn") for x in lines["kmeans"])
    assert any("dry-run" in x for x in lines["workflow"])
    # on a CPU nothing is measured against the goals
    assert [g["met"] for g in summary["goals"]] == [None, None]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert md.startswith("# GPU check (cpu-smoke)\n")
    assert "| compile | skipped (CPU smoke" in md and "| SSRL step bf16 MFU" in md
    for part in PARTS:
        assert (tmp_path / "out" / f"{part}.log").is_file() or part == "compile"


def _train_step_report(mfu_pct: float) -> str:
    """What bench/train_step.py prints for an SSRL step on a GPU at `mfu_pct` % MFU."""
    flops, batch, peak = 21_600_000_000_000, 480, 989.0
    total = flops / (mfu_pct / 100 * peak * 1e12)
    phases = dict.fromkeys(train_step.PHASES, total / len(train_step.PHASES))
    results = {path: {"phases": phases, "total": total * k, "utt_per_s": batch / (total * k),
                      "mem": 50_000.0, "mem_kind": "GPU alloc"}
               for path, k in (("fp32", 4.0), ("optimised", 1.0))}
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        train_step.report("SSRL step: ecapa_c1024, batch 480, K 8000, cuda", results, flops,
                          batch, peak, torch.device("cuda"))
    return text.getvalue()


def test_summary_reads_the_gpu_figures(tmp_path: Path):
    (tmp_path / "train.log").write_text(_train_step_report(34.0))
    (tmp_path / "kmeans.log").write_text(
        "ssrl GPU: n=1092009 71.20 s to stop (30 iterations, converged=False), 2.373 "
        "s/iteration, NMI 0.9123\nGPU/CPU assignment agreement on 50000 points: 0.99998\n")
    (tmp_path / "env.log").write_text("NVIDIA H200, 143771 MiB, 570.1\n16 CPU cores\ntorch x\n")
    (tmp_path / "parts.tsv").write_text(
        "env\tok\t0\t2\tenv.log\ntrain\tok\t0\t90\ttrain.log\n"
        "compile\ttimeout\t124\t150\tcompile.log\nkmeans\tok\t0\t80\tkmeans.log\n")
    gpu_summary.main([str(tmp_path), "--mode", "gpu", "--seconds", "330", "--budget", "480"])
    s = json.loads((tmp_path / "summary.json").read_text())
    ssrl = s["figures"]["train"]["SSRL step"]
    assert ssrl["optimised"]["mfu_pct"] == 34.0 and ssrl["fp32"]["mfu_pct"] == 8.5
    assert s["figures"]["compile"] == {}  # a part that timed out without a table
    assert s["figures"]["kmeans"]["seconds"] == 71.2
    assert s["figures"]["kmeans"]["agreement"] == 0.99998
    assert [(g["value"], g["met"]) for g in s["goals"]] == [(34.0, True), (71.2, False)]
    md = (tmp_path / "summary.md").read_text()
    assert "| compile | timeout | 150 |" in md and "| 34 | yes |" in md

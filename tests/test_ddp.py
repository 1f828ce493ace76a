"""SSRL under `torchrun` with 2 gloo processes on CPU: every process must hold the same
per-utterance state (labels, queue, p_clean, active clusters) and the same student weights,
and the result must match a single-process run over the same global batches.

gloo has no SyncBatchNorm, so on CPU each process normalises its half of the batch with its own
statistics; through Adam (whose first steps move every weight by about the learning rate,
whatever the gradient's size) that alone decorrelates the 1- and 2-process weights. Both runs
here therefore freeze BatchNorm to its running statistics: what remains to compare is exactly
what DDP must get right (data split, gradient averaging, gathered labels, queue, GMM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, smoke_job, ssrl_env, write_job

pytestmark = pytest.mark.slow

# Runs `python -m ssrl ssrl ...` in each torchrun process, with checkpoints written by every
# rank (rank<r>_e<epoch>_s<step>.pt) instead of rank 0 only, so the ranks can be compared.
RANK_DUMPS = """\
import os, sys
from pathlib import Path

import torch

import ssrl.training.checkpoints
from ssrl.cli import main

_save = ssrl.training.checkpoints.Checkpoints.save


def save_every_rank(self, state):
    rank = int(os.environ.get("RANK", "0"))
    torch.save(state, Path(sys.argv[1]) / f"rank{rank}_e{state['epoch']}_s{state['step']}.pt")
    _save(self, state)


def frozen_batch_norm(self, x):
    return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                          self.bias, False, 0.0, self.eps)


ssrl.training.checkpoints.Checkpoints.save = save_every_rank
torch.nn.modules.batchnorm._BatchNorm.forward = frozen_batch_norm
sys.exit(main(sys.argv[2:]))
"""
PER_UTT = ("labels", "p_clean", "active", "recorded_label", "recorded_loss")


def ssrl_cmd(job: Path, smoke, out: Path) -> list[str]:
    r = smoke.results
    return ["ssrl", "--job", str(job), "--train", str(r / "store/train"),
            "--noise", str(r / "store/noise"), "--rir", str(r / "store/rir"),
            "--init", str(r / "seed0/dino/model.pt"),
            "--labels", str(r / "seed0/cluster/dino_k6/labels.npz"), "--out", str(out)]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(smoke_run, tmp_path_factory):
    """(folder of the 2-process run, its rank dumps, folder of the 1-process run, its dumps)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = smoke_job(smoke_run, "seed0/ssrl/noisy_label_modeling~True_scale~32.0", tmp, {
        "runtime": {"device": "cpu"},
        "ssrl": {"epochs": 3, "steps_per_epoch": 2, "batch_size": 8, "hold_epochs": 2,
                 "queue_len": 3, "record_from_epoch": 0}})
    job = write_job(cfg, tmp / "job.json")
    script = tmp / "rank_dumps.py"
    script.write_text(RANK_DUMPS)
    dumps, dumps1 = tmp / "dumps", tmp / "dumps1"
    dumps.mkdir()
    dumps1.mkdir()
    env = ssrl_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9")  # unreachable: buffered
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(dumps),
         *ssrl_cmd(job, smoke_run, tmp / "two")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-5000:]
    one = subprocess.run([sys.executable, str(script), str(dumps1),
                          *ssrl_cmd(job, smoke_run, tmp / "one")],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    return tmp / "two", dumps, tmp / "one", dumps1


def test_every_rank_holds_the_same_state(runs):
    _, dumps, _, _ = runs
    names = sorted(p.name[len("rank0_"):] for p in dumps.glob("rank0_*.pt"))
    assert names == ["e1_s0.pt", "e2_s0.pt", "e3_s0.pt"]  # epoch ends
    assert sorted(p.name[len("rank1_"):] for p in dumps.glob("rank1_*.pt")) == names
    for name in names:
        r0, r1 = load(dumps / f"rank0_{name}"), load(dumps / f"rank1_{name}")
        for key in (*PER_UTT, *(k for k in r0 if k.startswith("queue."))):
            assert torch.equal(r0[key].nan_to_num(-7.0), r1[key].nan_to_num(-7.0)), (name, key)
        params = [k for k in r0["student"] if "running_" not in k and "num_batches" not in k]
        assert all(torch.equal(r0["student"][k], r1["student"][k]) for k in params), name
        assert [{k: v for k, v in row.items() if k != "seconds"} for row in r0["history"]] == [
            {k: v for k, v in row.items() if k != "seconds"} for row in r1["history"]]
    last = load(dumps / "rank0_e3_s0.pt")
    assert last["labels"].shape == (16,) and (last["p_clean"] < 1).any()  # the GMM ran


def test_two_processes_match_one_over_the_same_global_batches(runs, smoke_run):
    two, dumps, one, dumps1 = runs
    with np.load(two / "labels.npz") as a, np.load(one / "labels.npz") as b:
        assert np.array_equal(a["labels"], b["labels"])
    c2, c1 = load(dumps / "rank0_e3_s0.pt"), load(dumps1 / "rank0_e3_s0.pt")
    assert torch.equal(c2["labels"], c1["labels"]) and torch.equal(c2["active"], c1["active"])
    assert torch.allclose(c2["p_clean"], c1["p_clean"], atol=1e-3), (c2["p_clean"], c1["p_clean"])
    e2, e1 = load(two / "model.pt")["encoder"], load(one / "model.pt")["encoder"]
    assert list(e2) == list(e1)
    # Summation order differs (two halves vs one batch); Adam turns that into a full step for
    # the few weights whose gradient is ~0, so compare the updates as a whole, and mostly
    # weight by weight. (Per-process BatchNorm gives cosine ~0.5 and thousands apart.)
    e0 = load(smoke_run.results / "seed0/dino/model.pt")["encoder"]
    u2, u1 = (torch.cat([(e[k] - e0[k]).flatten() for k in e1]) for e in (e2, e1))
    assert torch.nn.functional.cosine_similarity(u2, u1, dim=0) > 0.9999
    assert ((u2 - u1).abs() > 1e-5).float().mean() < 0.01
    h2, h1 = (json.loads((d / "history.json").read_text()) for d in (two, one))
    assert [r["n_clusters"] for r in h2] == [r["n_clusters"] for r in h1]
    assert [r["loss"] for r in h2] == pytest.approx([r["loss"] for r in h1], rel=1e-4)


def test_only_rank_0_writes_outputs_and_tracks(runs):
    two, dumps, _, _ = runs
    state = json.loads((two / "mlflow_run.json").read_text())
    assert state["run_name"] == "ssrl-full-seed0"
    records = [json.loads(line) for line in (two / "mlflow_buffer.jsonl").read_text().splitlines()]
    assert [r["op"] for r in records].count("end") == 1
    assert [r["op"] for r in records].count("params") == 1

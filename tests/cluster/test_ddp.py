"""DINO and SSRL under `torchrun` with 2 gloo processes on CPU, launched as the workflow's rules
launch them (`torchrun --standalone --nproc_per_node=2 -m ssrl <stage>`, runtime.gpus_per_job
2): every process holds the same state (weights, the BatchNorm statistics of student and
teacher, per-utterance labels, queue, p_clean), the result matches one process over the same
global batches, and a run killed mid-epoch resumes to the uninterrupted run's result, bit for
bit.

Part of `make test-cluster` (the torchrun road; 247 s alone on 2 idle cores, with its smoke
workflow run), not of `make test`.

BatchNorm normalises over the global batch (`GlobalBatchNorm`: gloo on CPU has no
`nn.SyncBatchNorm`), and DDP does not broadcast buffers (which broke DINO's several student
forwards per step). So 1 and 2 processes differ only in the order of floating-point sums
(two halves, then an all-reduce, against one batch); the tolerances below bound what that
leaves after a few optimiser steps."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# tests/conftest.py (its `smoke_run` fixture reaches this folder; its helpers are imported by
# path, as `conftest` here names tests/cluster/conftest.py)
_spec = importlib.util.spec_from_file_location("ssrl_test_support",
                                               Path(__file__).parents[1] / "conftest.py")
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)
REPO, _descendants, smoke_job, ssrl_env, write_job = (
    support.REPO, support._descendants, support.smoke_job, support.ssrl_env, support.write_job)

pytestmark = pytest.mark.slow

# Runs `python -m ssrl <stage> ...` in each process, with checkpoints written by every rank
# (rank<r>_e<epoch>_s<step>.pt, `_final` for the finished state) so the ranks can be compared.
RANK_DUMPS = """\
import os, sys
from pathlib import Path

import torch

import ssrl.training.checkpoints as ck
from ssrl.cli import main

_save, _finish = ck.Checkpoints.save, ck.Checkpoints.finish


def dump(state, tag=""):
    rank = int(os.environ.get("RANK", "0"))
    name = f"rank{rank}_e{state['epoch']}_s{state['step']}{tag}.pt"
    torch.save(state, Path(sys.argv[1]) / name)


def save_every_rank(self, state):
    if not state.get("finished"):
        dump(state)
    _save(self, state)


def finish_every_rank(self, state):
    dump(state, "_final")
    _finish(self, state)


ck.Checkpoints.save, ck.Checkpoints.finish = save_every_rank, finish_every_rank
sys.exit(main(sys.argv[2:]))
"""
PER_UTT = ("labels", "p_clean", "active", "recorded_label", "recorded_loss")
SSRL_JOB = "seed0/ssrl/noisy_label_modeling~True_scale~32.0"
LABELS = "seed0/cluster/dino_k6/labels.npz"
CHANGES = {
    "dino": {"runtime": {"device": "cpu", "checkpoint_every_steps": 1},
             "dino": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 8}},
    "ssrl": {"runtime": {"device": "cpu", "checkpoint_every_steps": 1},
             "ssrl": {"epochs": 3, "steps_per_epoch": 2, "batch_size": 8, "hold_epochs": 2,
                      "queue_len": 3, "record_from_epoch": 0}},
}
TORCHRUN = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2"]


def stage_args(stage: str, job: Path, smoke, out: Path) -> list[str]:
    """The rule's arguments after `-m ssrl` (stage1.smk / stage2.smk)."""
    r = smoke.results
    args = [stage, "--job", str(job), "--train", str(r / "store/train"),
            "--noise", str(r / "store/noise"), "--rir", str(r / "store/rir")]
    if stage == "ssrl":
        args += ["--init", str(r / "seed0/dino/model.pt"),
                 "--labels", str(r / LABELS)]
    return [*args, "--out", str(out)]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def run(cmd: list[str], log: Path) -> None:
    env = ssrl_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9")  # unreachable: buffered
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=400, check=False)
    assert done.returncode == 0, log.read_text()[-5000:]


class Runs:
    """One stage run three ways on the same job: 2 processes and 1 process (every rank's
    checkpoints dumped), and 2 processes through the rule's command, killed mid-epoch and
    rerun."""

    def __init__(self, stage: str, smoke, tmp: Path) -> None:
        name = "seed0/dino" if stage == "dino" else SSRL_JOB
        self.stage, self.tmp = stage, tmp
        self.job = write_job(smoke_job(smoke, name, tmp, CHANGES[stage]), tmp / "job.json")
        script = tmp / "rank_dumps.py"
        script.write_text(RANK_DUMPS)
        self.two, self.one, self.cut = tmp / "two", tmp / "one", tmp / "cut"
        self.dumps2, self.dumps1 = tmp / "dumps2", tmp / "dumps1"
        for d in (self.dumps2, self.dumps1):
            d.mkdir()
        run([*TORCHRUN, str(script), str(self.dumps2),
             *stage_args(stage, self.job, smoke, self.two)], tmp / "two.log")
        run([sys.executable, str(script), str(self.dumps1),
             *stage_args(stage, self.job, smoke, self.one)], tmp / "one.log")
        rule = [*TORCHRUN, "-m", "ssrl", *stage_args(stage, self.job, smoke, self.cut)]
        self.killed_at = kill_group_mid_epoch(rule, self.cut / "checkpoint/last.pt",
                                              tmp / "cut.log")
        run(rule, tmp / "resume.log")


def kill_group_mid_epoch(cmd: list[str], ckpt: Path, log: Path) -> tuple[int, int]:
    """Start `cmd` (torchrun) and SIGKILL it and its workers once the checkpoint is inside an
    epoch (> 0), as a node lost mid-epoch. All of them are frozen (SIGSTOP) while the
    checkpoint is read, so the position returned is the one the rerun resumes from. (torchrun
    starts its workers in sessions of their own: they are found as its descendants.)"""
    env = ssrl_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)

    def signal_all(sig: int) -> None:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"training ended before it was killed:\n{log.read_text()[-3000:]}")
            if ckpt.exists():
                workers = _descendants(proc.pid)
                signal_all(signal.SIGSTOP)
                try:
                    state = load(ckpt)
                except (OSError, RuntimeError, EOFError):
                    state = None
                if state and state["step"] > 0 and state["epoch"] >= 1:
                    signal_all(signal.SIGKILL)
                    proc.wait(timeout=30)
                    for pid in workers:  # gone, not merely orphaned
                        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                            time.sleep(0.05)
                    return state["epoch"], state["step"]
                signal_all(signal.SIGCONT)
            time.sleep(0.02)
        pytest.fail("no mid-epoch checkpoint appeared")
    finally:
        if proc.poll() is None:
            signal_all(signal.SIGKILL)
            proc.wait(timeout=30)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def dino(smoke_run, tmp_path_factory) -> Runs:
    return Runs("dino", smoke_run, tmp_path_factory.mktemp("ddp_dino"))


@pytest.fixture(scope="module")
def ssrl(smoke_run, tmp_path_factory) -> Runs:
    return Runs("ssrl", smoke_run, tmp_path_factory.mktemp("ddp_ssrl"))


def rank_names(dumps: Path, rank: int) -> list[str]:
    return sorted(p.name.split("_", 1)[1] for p in dumps.glob(f"rank{rank}_*.pt"))


def assert_ranks_equal(r0: dict, r1: dict, name: str) -> None:
    """Every tensor either process would resume from, compared bit for bit."""
    for part in ("student", "teacher"):
        assert list(r0[part]) == list(r1[part])
        for key in r0[part]:  # parameters and every BatchNorm buffer
            assert torch.equal(r0[part][key], r1[part][key]), (name, part, key)
    for key in (*PER_UTT, "center", *(k for k in r0 if k.startswith("queue."))):
        if key in r0:
            assert torch.equal(r0[key].nan_to_num(-7.0), r1[key].nan_to_num(-7.0)), (name, key)
    without = [{k: v for k, v in row.items() if k != "seconds"} for row in r0["history"]]
    assert without == [{k: v for k, v in row.items() if k != "seconds"}
                       for row in r1["history"]]


@pytest.mark.parametrize("stage", ["dino", "ssrl"])
def test_every_rank_holds_the_same_state(stage, request):
    runs: Runs = request.getfixturevalue(stage)
    names = rank_names(runs.dumps2, 0)
    assert names == rank_names(runs.dumps2, 1)
    steps = 3 if stage == "dino" else 2
    epochs = 2 if stage == "dino" else 3
    assert len(names) == epochs * steps  # every step, the last one as the finished state
    assert f"e{epochs}_s0_final.pt" in names
    for name in names:
        assert_ranks_equal(load(runs.dumps2 / f"rank0_{name}"),
                           load(runs.dumps2 / f"rank1_{name}"), name)
    bn = [k for k in load(runs.dumps2 / f"rank0_{names[-1]}")["teacher"] if "running_var" in k]
    assert bn  # the comparison covered BatchNorm statistics


def updates(e: dict, e0: dict, keys: list[str]) -> torch.Tensor:
    return torch.cat([(e[k].float() - e0[k].float()).flatten() for k in keys])


@pytest.mark.parametrize("stage", ["dino", "ssrl"])
def test_two_processes_match_one_over_the_same_global_batches(stage, request):
    runs: Runs = request.getfixturevalue(stage)
    h2, h1 = (json.loads((d / "history.json").read_text()) for d in (runs.two, runs.one))
    first2, first1 = (load(d / "rank0_e0_s1.pt") for d in (runs.dumps2, runs.dumps1))
    if stage == "dino":  # SGD: after one step everything agrees to rounding, BatchNorm
        # statistics included: the global batch is split, normalised and averaged exactly. (Adam's
        # first step moves a weight whose gradient is ~0 by a full lr either way: not for SSRL.)
        for part in ("student", "teacher"):
            for key, value in first1[part].items():
                assert torch.allclose(first2[part][key].double(), value.double(), rtol=1e-5,
                                      atol=1e-6), (part, key)
    # Later steps amplify rounding (DINO's 0.04 teacher temperature sharpens every difference,
    # Adam normalises tiny gradients): measured on the smoke stores, 2 processes end 1.8e-5
    # (DINO loss) and 0.4 % (DINO student update; SSRL 0.16 %) from 1 process, as close as 1
    # process with 2 BLAS threads is to 1 process with 1 thread (3.7e-4, 0.3 %). Per-process
    # BatchNorm, as before, ended at cosine ~0.5.
    assert [r["loss"] for r in h2] == pytest.approx([r["loss"] for r in h1], rel=1e-3, abs=0)
    final = f"rank0_e{len(h1)}_s0_final.pt"
    s2, s1 = load(runs.dumps2 / final), load(runs.dumps1 / final)
    for part in ("student", "teacher"):
        keys = [k for k in s1[part] if s1[part][k].is_floating_point()]
        u2, u1 = updates(s2[part], first1[part], keys), updates(s1[part], first1[part], keys)
        assert torch.nn.functional.cosine_similarity(u2, u1, dim=0) > 0.9998, part
        assert (u2 - u1).norm() < 0.02 * u1.norm(), part
    e2, e1 = load(runs.two / "model.pt")["encoder"], load(runs.one / "model.pt")["encoder"]
    assert list(e2) == list(e1)
    if stage == "ssrl":
        with np.load(runs.two / "labels.npz") as a, np.load(runs.one / "labels.npz") as b:
            assert np.array_equal(a["labels"], b["labels"])
        c2, c1 = (load(d / "rank0_e3_s0_final.pt") for d in (runs.dumps2, runs.dumps1))
        assert torch.equal(c2["active"], c1["active"])
        assert torch.allclose(c2["p_clean"], c1["p_clean"], atol=1e-3)
        assert [r["n_clusters"] for r in h2] == [r["n_clusters"] for r in h1]


@pytest.mark.parametrize("stage", ["dino", "ssrl"])
def test_two_processes_killed_mid_epoch_resume_bit_exactly(stage, request):
    runs: Runs = request.getfixturevalue(stage)
    epoch, step = runs.killed_at
    log = (runs.tmp / "resume.log").read_text()
    assert f"resuming {'DINO' if stage == 'dino' else 'ssrl'} at epoch {epoch} step {step}" in log
    assert "2 processes" in log  # the world size, in the job's log
    e2, ec = load(runs.two / "model.pt")["encoder"], load(runs.cut / "model.pt")["encoder"]
    assert list(e2) == list(ec)
    assert [k for k in e2 if not torch.equal(e2[k], ec[k])] == []
    h2, hc = (json.loads((d / "history.json").read_text()) for d in (runs.two, runs.cut))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in h2] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in hc]
    if stage == "ssrl":
        with np.load(runs.two / "labels.npz") as a, np.load(runs.cut / "labels.npz") as b:
            assert np.array_equal(a["labels"], b["labels"])
            assert np.array_equal(a["centroids"], b["centroids"])


def test_only_rank_0_writes_outputs_and_tracks(ssrl):
    state = json.loads((ssrl.two / "mlflow_run.json").read_text())
    assert state["run_name"] == "ssrl-full-seed0"
    records = [json.loads(line)
               for line in (ssrl.two / "mlflow_buffer.jsonl").read_text().splitlines()]
    assert [r["op"] for r in records].count("end") == 1
    # one process's params: the requested ones at the start, then what ran (device, bf16,
    # momentum after the lag), each key once
    params = [r["params"] for r in records if r["op"] == "params"]
    assert len(params) == 2 and not set(params[0]) & set(params[1])
    assert params[1]["runtime.device"] == "cpu"

"""Faults a long run meets: a killed training job, the MLflow server going away, a full disk, a
crashing ablation variant. Training runs use the stores of the shared smoke workflow run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import smoke_job, snakemake, ssrl_env, write_job
from test_tracking import MlflowServer

from ssrl.files import OutputError, atomic_dir, atomic_path
from ssrl.tracking.mlflow_run import BUFFER_FILE, STATE_FILE, replay_buffer

DEAD_URI = "http://127.0.0.1:9"  # discard port: nothing answers, records are buffered


SSRL_JOB = "seed0/ssrl/noisy_label_modeling~True_scale~32.0"


def train_cmd(stage: str, cfg: dict, smoke, out: Path) -> list[str]:
    """`python -m ssrl dino|ssrl ...` as the workflow's rules call it, on the smoke stores, with
    the job config `cfg` written next to `out`."""
    r = smoke.results
    job = write_job(cfg, out.parent / f"{out.name}.{len(list(out.parent.glob('*.json')))}.json")
    cmd = [sys.executable, "-m", "ssrl", stage, "--job", str(job), "--train",
           str(r / "store/train"), "--noise", str(r / "store/noise"), "--rir",
           str(r / "store/rir"), "--out", str(out)]
    if stage == "ssrl":
        cmd += ["--init", str(r / "seed0/dino/model.pt"),
                "--labels", str(r / "seed0/cluster/dino_k6/labels.npz")]
    return cmd


def job(stage: str, smoke, results: Path, changes: dict | None = None) -> dict:
    return smoke_job(smoke, "seed0/dino" if stage == "dino" else SSRL_JOB, results, changes)


def start(cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                env=ssrl_env(**{"MLFLOW_TRACKING_URI": DEAD_URI, **env}))


def finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]


def kill_when(proc: subprocess.Popen, ckpt: Path, log: Path, ready, what: str) -> dict:
    """SIGKILL `proc` as soon as its last checkpoint satisfies `ready(state)`, and return that
    state. The process is frozen (SIGSTOP) while its checkpoint is read, so the state returned
    is the one it will resume from."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed:\n{log.read_text()[-3000:]}")
        if ckpt.exists():
            proc.send_signal(signal.SIGSTOP)
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError):
                state = None
            if state and ready(state):
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(timeout=30) == -signal.SIGKILL
                return state
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no {what} checkpoint appeared")


def kill_mid_epoch(proc: subprocess.Popen, ckpt: Path, log: Path,
                   min_epoch: int) -> tuple[int, int]:
    """SIGKILL `proc` inside an epoch >= min_epoch; the (epoch, step) it will resume from."""
    state = kill_when(proc, ckpt, log, lambda s: s["step"] > 0 and s["epoch"] >= min_epoch,
                      "mid-epoch")
    return state["epoch"], state["step"]


def encoder_of(model: Path) -> dict[str, torch.Tensor]:
    return torch.load(model, map_location="cpu", weights_only=True)["encoder"]


def assert_same_encoder(a: Path, b: Path) -> None:
    ea, eb = encoder_of(a), encoder_of(b)
    assert list(ea) == list(eb)
    different = [k for k in ea if not torch.equal(ea[k], eb[k])]
    assert different == []


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# --- a training job killed with SIGKILL resumes to the same result ----------------------------
@pytest.mark.parametrize("stage", ["dino", "ssrl"])
def test_sigkill_then_rerun_gives_the_uninterrupted_result(stage, smoke_run, tmp_path):
    cfg = job(stage, smoke_run, tmp_path, {
        "runtime": {"checkpoint_every_steps": 1, "device": "cpu"},
        "dino": {"epochs": 2, "steps_per_epoch": 3},
        "ssrl": {"epochs": 3, "steps_per_epoch": 4, "batch_size": 8, "hold_epochs": 2,
                 "record_from_epoch": 0}} if stage == "ssrl" else {
        "runtime": {"checkpoint_every_steps": 1, "device": "cpu"},
        "dino": {"epochs": 2, "steps_per_epoch": 3}})
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    ref_proc = start(train_cmd(stage, cfg, smoke_run, ref), tmp_path / "ref.log")
    proc = start(train_cmd(stage, cfg, smoke_run, cut), tmp_path / "cut.log")
    # SSRL: killed inside an epoch where the teacher records labels (per-utterance state)
    epoch, step = kill_mid_epoch(proc, cut / "checkpoint" / "last.pt", tmp_path / "cut.log",
                                 min_epoch=1 if stage == "ssrl" else 0)
    assert not (cut / "model.pt").exists()
    finish(start(train_cmd(stage, cfg, smoke_run, cut), tmp_path / "resume.log"),
           tmp_path / "resume.log")
    finish(ref_proc, tmp_path / "ref.log")

    assert f"resuming {'DINO' if stage == 'dino' else 'ssrl'} at epoch {epoch} step {step}" in (
        tmp_path / "resume.log").read_text()
    assert_same_encoder(ref / "model.pt", cut / "model.pt")
    history = [json.loads((d / "history.json").read_text()) for d in (ref, cut)]
    assert without_seconds(history[0]) == without_seconds(history[1])
    assert len(history[0]) == (2 if stage == "dino" else 3)
    # a finished job keeps its final resume point, marked finished, without the optimiser
    final = torch.load(cut / "checkpoint/last.pt", map_location="cpu", weights_only=True)
    assert final["finished"] and "optimizer" not in final and final["step"] == 0
    assert final["epoch"] == len(history[0])
    assert sorted(p.name for p in (cut / "checkpoint").iterdir()) == ["last.pt"]
    if stage == "ssrl":
        with np.load(ref / "labels.npz") as a, np.load(cut / "labels.npz") as b:
            assert np.array_equal(a["labels"], b["labels"])
            assert np.array_equal(a["centroids"], b["centroids"])
    # the tracking records of both sessions are kept for one run (the server is down); the
    # killed session never ended it
    ops = Counter(json.loads(line)["op"] for line in (cut / BUFFER_FILE).read_text().splitlines())
    assert ops["end"] == 1


# --- killed after training, before its outputs were accepted: no second training -----------
def kill_when_finished(proc: subprocess.Popen, ckpt: Path, log: Path) -> None:
    """SIGKILL `proc` once its checkpoint says training is over (its outputs are being
    written, or about to be): a job that overran its time limit in the wrap-up."""
    kill_when(proc, ckpt, log, lambda s: bool(s.get("finished")), "finished")


@pytest.mark.parametrize("stage", ["dino", "ssrl"])
def test_killed_after_training_reruns_without_training(stage, smoke_run, tmp_path):
    """Killed once training was over but before the workflow accepted the outputs (Snakemake
    then deletes whatever outputs there are): the rerun writes them from the finished
    checkpoint, with no training step, equal to an uninterrupted run's."""
    cfg = job(stage, smoke_run, tmp_path, {
        "runtime": {"device": "cpu"}, "dino": {"epochs": 2, "steps_per_epoch": 2},
        "ssrl": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 8}})
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    finish(start(train_cmd(stage, cfg, smoke_run, ref), tmp_path / "ref.log"),
           tmp_path / "ref.log")
    proc = start(train_cmd(stage, cfg, smoke_run, cut), tmp_path / "cut.log")
    kill_when_finished(proc, cut / "checkpoint" / "last.pt", tmp_path / "cut.log")
    outputs = ["model.pt", "history.json", "compute.json"] + (["labels.npz"] if stage == "ssrl"
                                                              else [])
    for name in outputs:  # what Snakemake does with a failed job's outputs
        (cut / name).unlink(missing_ok=True)
    finish(start(train_cmd(stage, cfg, smoke_run, cut), tmp_path / "rerun.log"),
           tmp_path / "rerun.log")
    log = (tmp_path / "rerun.log").read_text()
    assert log.count("finished training in an earlier run (epoch 2") == 1, log
    assert "epoch 1/2" not in log and "epoch 2/2" not in log and "resuming" not in log
    assert all((cut / name).is_file() for name in outputs)
    assert_same_encoder(ref / "model.pt", cut / "model.pt")
    history = [json.loads((d / "history.json").read_text()) for d in (ref, cut)]
    assert without_seconds(history[0]) == without_seconds(history[1])
    if stage == "ssrl":
        with np.load(ref / "labels.npz") as a, np.load(cut / "labels.npz") as b:
            assert np.array_equal(a["labels"], b["labels"])
            assert np.array_equal(a["centroids"], b["centroids"])


# --- a changed config never resumes the old checkpoint or the old MLflow run ----------------
@pytest.mark.parametrize("stage, change", [("dino", {"dino": {"lr": 0.05}}),
                                           ("ssrl", {"ssrl": {"margin": 0.3}})])
def test_changed_value_starts_over_with_a_new_run(stage, change, smoke_run, tmp_path):
    """Finish a job; change one training value; rerun it the way Snakemake does (same output
    folder): it must train from scratch (no "resuming"), give other weights than before and
    exactly those of a fresh run with the new value, and open a new MLflow run. The same goes
    for a job killed mid-way whose checkpoint carries the old config."""
    base = {"runtime": {"checkpoint_every_steps": 1, "device": "cpu"},
            "dino": {"epochs": 2, "steps_per_epoch": 2},
            "ssrl": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 8}}
    old = job(stage, smoke_run, tmp_path, base)
    new = job(stage, smoke_run, tmp_path, {**base, **{k: {**base.get(k, {}), **v}
                                                      for k, v in change.items()}})
    work, fresh = tmp_path / "work", tmp_path / "fresh"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finish(start(train_cmd(stage, old, smoke_run, work), tmp_path / "a.log",
                 MLFLOW_TRACKING_URI=uri), tmp_path / "a.log")
    first_run = json.loads((work / STATE_FILE).read_text())["run_id"]
    first = encoder_of(work / "model.pt")
    finish(start(train_cmd(stage, new, smoke_run, work), tmp_path / "b.log",
                 MLFLOW_TRACKING_URI=uri), tmp_path / "b.log")
    finish(start(train_cmd(stage, new, smoke_run, fresh), tmp_path / "c.log"),
           tmp_path / "c.log")
    assert "resuming" not in (tmp_path / "b.log").read_text()
    assert any(not torch.equal(first[k], v) for k, v in encoder_of(work / "model.pt").items())
    assert_same_encoder(work / "model.pt", fresh / "model.pt")
    second_run = json.loads((work / STATE_FILE).read_text())["run_id"]
    assert second_run != first_run
    client = mlflow.MlflowClient(uri)
    [(section, values)] = change.items()
    [(key, value)] = values.items()
    assert client.get_run(second_run).data.params[f"{section}.{key}"] == str(value)
    assert client.get_run(first_run).data.params[f"{section}.{key}"] != str(value)
    assert not any(k.startswith("changed_param") for k in client.get_run(second_run).data.tags)

    # killed with the old values, rerun with the new ones: the old checkpoint is not used
    killed = tmp_path / "killed"
    proc = start(train_cmd(stage, old, smoke_run, killed), tmp_path / "d.log")
    kill_mid_epoch(proc, killed / "checkpoint" / "last.pt", tmp_path / "d.log", min_epoch=0)
    finish(start(train_cmd(stage, new, smoke_run, killed), tmp_path / "e.log"),
           tmp_path / "e.log")
    log = (tmp_path / "e.log").read_text()
    assert "resuming" not in log and "was written for another config" in log
    assert_same_encoder(killed / "model.pt", fresh / "model.pt")


# --- the MLflow server: over HTTP, and gone during training -----------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("server"))
    try:
        yield srv
    finally:
        srv.stop()


def test_training_over_http_and_through_a_server_outage(server, smoke_run, tmp_path,
                                                        monkeypatch):
    cfg = job("dino", smoke_run, tmp_path, {"job": {"experiment": "faults"},
                                            "runtime": {"device": "cpu"},
                                            "dino": {"epochs": 2, "steps_per_epoch": 1}})
    server.start()
    up, down = tmp_path / "up", tmp_path / "down"
    proc = start(train_cmd("dino", cfg, smoke_run, up), tmp_path / "up.log",
                 MLFLOW_TRACKING_URI=server.uri)
    finish(proc, tmp_path / "up.log")
    assert not (up / BUFFER_FILE).exists()
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", server.uri)
        runs = mlflow.search_runs(experiment_names=["faults"])
    assert list(runs["tags.mlflow.runName"]) == ["dino-seed0"]
    assert list(runs["status"]) == ["FINISHED"]
    assert runs.iloc[0]["params.dino.epochs"] == "2"
    client = mlflow.MlflowClient(server.uri)
    up_id = json.loads((up / STATE_FILE).read_text())["run_id"]
    assert up_id == runs.iloc[0]["run_id"]
    assert [m.step for m in client.get_metric_history(up_id, "loss")] == [1, 2]

    server.stop()
    proc = start(train_cmd("dino", cfg, smoke_run, down), tmp_path / "down.log",
                 MLFLOW_TRACKING_URI=server.uri)
    finish(proc, tmp_path / "down.log")  # training does not care that the server is gone
    assert (down / "model.pt").is_file()
    assert f"{down / BUFFER_FILE}" in (tmp_path / "down.log").read_text()
    ops = [json.loads(line)["op"] for line in (down / BUFFER_FILE).read_text().splitlines()]
    assert ops[0] == "tags" and ops[-1] == "end" and "params" in ops and "metrics" in ops

    server.start()
    assert replay_buffer(down)
    assert not (down / BUFFER_FILE).exists()
    down_id = json.loads((down / STATE_FILE).read_text())["run_id"]
    run = client.get_run(down_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "dino-seed0"
    assert run.data.params["dino.steps_per_epoch"] == "1"
    assert run.data.tags["stage"] == "dino"
    losses = [row["loss"] for row in json.loads((down / "history.json").read_text())]
    assert [(m.step, m.value) for m in client.get_metric_history(down_id, "loss")] == [
        (1, pytest.approx(losses[0])), (2, pytest.approx(losses[1]))]
    assert run.data.metrics["compute/epochs"] == 2.0
    experiment = client.get_experiment_by_name("faults").experiment_id
    assert len(client.search_runs([experiment])) == 2


def test_workflow_job_tracks_to_the_server_over_http(server, smoke_run, tmp_path):
    """A job of the smoke workflow itself, run by Snakemake with MLFLOW_TRACKING_URI pointing
    at the live server: its run arrives over HTTP with params, tags and metrics. (In a copy of
    the shared smoke run: forcing DINO again would leave its downstream outdated there.)"""
    import shutil

    workdir = shutil.copytree(smoke_run.dir, tmp_path / "wf")
    server.start()
    target = smoke_run.results.relative_to(smoke_run.dir) / "seed0" / "dino" / "model.pt"
    proc = snakemake(workdir, str(target), "--forcerun", "dino",
                     "--cores", "2", "--configfile", "config/smoke.yaml", "overrides.yaml",
                     MLFLOW_TRACKING_URI=server.uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["dino-seed0"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "dino"
    assert run.data.params["dino.epochs"] == "1" and run.data.metrics["compute/epochs"] == 1.0
    state = json.loads((workdir / target.parent / STATE_FILE).read_text())
    assert state["tracking_uri"] == server.uri


# --- disk full, unwritable output -------------------------------------------------------------
def test_disk_full_on_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "table.txt"
    target.parent.mkdir()
    target.write_text("old\n")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError) as err, atomic_path(target) as tmp:
        tmp.write_text("new\n")
    assert str(err.value) == (f"{target}: could not write output (No space left on device); "
                              "nothing was kept")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.txt"]

    store = tmp_path / "out" / "store"
    with pytest.raises(OutputError, match="No space left on device"), atomic_dir(store) as d:
        (d / "shard.bin").write_bytes(b"x" * 100)
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.txt"]


def test_disk_full_while_writing(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(OutputError) as err, atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value).startswith(f"{target}: could not write output (No space left")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_unwritable_place(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputError) as err, atomic_path(blocker / "x.json"):
        pytest.fail("must not get a temporary path")
    assert str(err.value).startswith(f"{blocker / 'x.json'}: could not write output (")


def test_cli_store_into_an_unwritable_place(tmp_path, make_wav):
    data = tmp_path / "data"
    make_wav(data / "a.wav", 1.0)
    (data / "wav.scp").write_text("a a.wav\n")
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be\n")
    out = blocker / "store" / "train"
    proc = subprocess.run([sys.executable, "-m", "ssrl", "wave-store", "--data", str(data),
                           "--out", str(out)], capture_output=True, text=True, timeout=120,
                          env=ssrl_env(), check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"ssrl wave-store: error: {out}: could not write output (Not a directory); "
        "nothing was kept"]
    assert blocker.read_text() == "a file where the results folder should be\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "results"]


def test_disk_full_while_dino_saves_is_one_line(smoke_run, tmp_path):
    """Issue 19: DINO's `torch.save` on a full disk gave a multi-line traceback. Files may
    grow to half a model file here (RLIMIT_FSIZE, as on a nearly full disk): the first
    checkpoint cannot be written, the job stops with one line naming it, nothing half-written
    is left, and the MLflow run (buffered: the server is down) ends FAILED."""
    import resource

    size = (smoke_run.results / "seed0" / "dino" / "model.pt").stat().st_size

    def nearly_full() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    out = tmp_path / "dino"
    cmd = train_cmd("dino", job("dino", smoke_run, tmp_path), smoke_run, out)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env=ssrl_env(MLFLOW_TRACKING_URI=DEAD_URI), preexec_fn=nearly_full)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ssrl dino: error")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0])
    assert errors[0].startswith(f"ssrl dino: error: {out}/")
    assert errors[0].endswith(".pt: could not write output (File too large); nothing was kept")
    assert not [p for p in out.rglob("*.tmp")] and not (out / "model.pt").exists()
    assert [r for r in (json.loads(line) for line in
                        (out / BUFFER_FILE).read_text().splitlines())
            if r["op"] == "end"][-1]["status"] == "FAILED"


# --- a crashing ablation variant (the shared smoke run, with --keep-going) ---------------------
def test_crashing_variant_does_not_stop_the_others(smoke_run):
    crashed = smoke_run.crashed
    assert crashed.returncode == 1
    log = crashed.stdout + crashed.stderr
    assert "Error in rule ssrl:" in log
    assert log.count("Error in rule") == 1
    crash_log = (smoke_run.results / "logs" / "seed0"
                 / "ssrl_noisy_label_modeling~True_scale~1e+39.log")
    assert "loss is nan at epoch 0 step 0" in crash_log.read_text()
    assert not (smoke_run.results / "seed0/ssrl/noisy_label_modeling~True_scale~1e+39"
                / "model.pt").exists()
    # --keep-going: everything else finished, and the tables say which one failed
    assert sorted(smoke_run.after_crash) == ["tables/partial/ablation.md",
                                             "tables/partial/main.md"]
    ablation = smoke_run.after_crash["tables/partial/ablation.md"].split("## Paired")[0]
    status = {line.split("|")[1].strip(): line.rstrip(" |").rsplit("|", 1)[-1].strip()
              for line in ablation.splitlines() if line.startswith("| ") and "variant" not in line}
    assert status == {"full": "ok", "no_nlm": "ok", "crash": "failed"}
    main = smoke_run.after_crash["tables/partial/main.md"]
    assert "| SSRL |" in main and "failed" not in main.split("## Paired")[0]


def test_rerun_after_fixing_the_variant_redoes_only_that_variant(smoke_run):
    fixed = smoke_run.fixed
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    log = fixed.stdout + fixed.stderr
    rules = Counter(line.split()[-1].rstrip(":") for line in log.splitlines()
                    if line.startswith(("rule ", "localrule ")))
    assert rules == {"job_config": 2, "ssrl": 1, "embed_test": 1, "score": 1, "tables": 1,
                     "plots": 1, "all": 1}  # the new variant's config and the report's
    assert "wildcards: seed=0, noisy_label_modeling=True, scale=24.0" in log
    ablation = (smoke_run.results / "tables" / "ablation.md").read_text()
    assert "failed" not in ablation and "| crash | 1 | True | 24.0 |" in ablation
    assert not (smoke_run.results / "tables" / "partial").exists()
    assert not (smoke_run.results / "plots" / "partial").exists()
